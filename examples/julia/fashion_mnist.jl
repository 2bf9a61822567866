# Fashion-MNIST for the Julia examples, read from the gzip IDX files (by
# the `gzip` program: Julia's standard library has no gzip reader) into
# Flux's layout: images as an Array{Float32,4} of size (28, 28, 1, n) in
# [0, 1], labels as a Vector{Int64} of 0-based classes.

const FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

function read_idx(path::AbstractString, magic::Integer)
    isfile(path) || error("$path not found (Debian: apt install dataset-fashion-mnist)")
    bytes = read(`gzip -dc $path`)
    word(i) = Int(ntoh(reinterpret(UInt32, bytes[i:i+3])[1]))
    word(1) == magic || error("$path: not an IDX file of magic $magic")
    return bytes, word(5)
end

"""
    fashion_mnist(dir, split, n) -> (images, labels)

The first `n` images of `split` (`"train"` or `"t10k"`).
"""
function fashion_mnist(dir::AbstractString, split::AbstractString, n::Integer)
    pixels, count = read_idx(joinpath(dir, "$split-images-idx3-ubyte.gz"), 2051)
    labels, _ = read_idx(joinpath(dir, "$split-labels-idx1-ubyte.gz"), 2049)
    n = min(n, count)
    # IDX stores each image row by row: read column-major, that is
    # (column, row, image), i.e. (W, H, N).
    x = reshape(Float32.(pixels[17:16+28*28*n]) ./ 255f0, 28, 28, 1, n)
    y = Int64.(labels[9:8+n])
    return x, y
end

"""
    batches(x, y, size) -> Vector of (x, y) pairs
"""
batches(x, y, size) = [(x[:, :, :, i:min(i + size - 1, end)], y[i:min(i + size - 1, end)])
                       for i in 1:size:length(y)]

"Off-diagonal summary of a distance matrix: (mean, smallest)."
function distance_summary(m::AbstractMatrix)
    off = [m[i, j] for i in axes(m, 1), j in axes(m, 2) if i != j]
    return (sum(off) / length(off), minimum(off))
end
