# Tensors: moth's handles to libtorch tensors, made from and copied back
# into Julia arrays.
#
# Layout: Julia arrays are column-major, libtorch's are row-major (C order).
# The same memory read both ways has its dimensions reversed, so a Julia
# `Array{Float32,4}` of size (W, H, C, N), Flux's WHCN, is exactly an NCHW
# C-order tensor: it is handed to moth as it is, with the shape reversed,
# and no Julia-side permutation or copy. (moth copies the bytes into its
# own tensor; that copy is the C function's.)

"""
    Device(kind, index)

Where a tensor or model lives: `Moth.CPU`, or `cuda(i)` for CUDA device `i`.
"""
struct Device
    kind::Symbol  # :cpu or :cuda
    index::Int
end

const CPU = Device(:cpu, 0)
cuda(index::Integer=0) = Device(:cuda, index)

function c_device(d::Device)
    kind = d.kind === :cpu ? MOTH_DEVICE_TYPE_CPU :
           d.kind === :cuda ? MOTH_DEVICE_TYPE_CUDA :
           throw(ArgumentError("device kind must be :cpu or :cuda, not :$(d.kind)"))
    return moth_device(kind, Int32(d.index))
end

julia_device(d::moth_device) =
    Device(d.kind == MOTH_DEVICE_TYPE_CUDA ? :cuda : :cpu, Int(d.index))

"The element types a tensor can have."
const Element = Union{Float32,Float64,Int64,Int32,UInt8}

c_dtype(::Type{Float32}) = MOTH_DTYPE_FLOAT32
c_dtype(::Type{Float64}) = MOTH_DTYPE_FLOAT64
c_dtype(::Type{Int64}) = MOTH_DTYPE_INT64
c_dtype(::Type{Int32}) = MOTH_DTYPE_INT32
c_dtype(::Type{UInt8}) = MOTH_DTYPE_UINT8

function julia_dtype(code::Integer)
    code == MOTH_DTYPE_FLOAT32 && return Float32
    code == MOTH_DTYPE_FLOAT64 && return Float64
    code == MOTH_DTYPE_INT64 && return Int64
    code == MOTH_DTYPE_INT32 && return Int32
    code == MOTH_DTYPE_UINT8 && return UInt8
    throw(MothError(:wrong_dtype, MOTH_STATUS_WRONG_DTYPE, "unknown moth_dtype $code"))
end

"""
    Tensor(a::Array; device=Moth.CPU)

A moth tensor holding a copy of `a`, with the dimensions reversed: a Julia
array of size (W, H, C, N) becomes the C-order tensor [N, C, H, W]. Free it
with `close` (or leave it to the garbage collector).
"""
mutable struct Tensor
    @atomic ptr::Ptr{moth_tensor}
    function Tensor(ptr::Ptr{moth_tensor})
        t = new(ptr)
        finalizer(free!, t)
        return t
    end
end

# `close` and the finalizer both end here; the swap makes the free happen
# once whichever comes first (and if both race).
function free!(t::Tensor)
    p = @atomicswap t.ptr = Ptr{moth_tensor}(C_NULL)
    p == C_NULL || GC.@preserve t @ccall libmoth().moth_tensor_free(p::Ptr{moth_tensor})::Cvoid
    return nothing
end

Base.close(t::Tensor) = free!(t)
Base.isopen(t::Tensor) = (@atomic t.ptr) != C_NULL

function handle(t::Tensor)
    p = @atomic t.ptr
    p == C_NULL && throw(closed_error("Tensor"))
    return p
end

function Tensor(a::Array{T}; device::Device=CPU) where {T<:Element}
    shape = Int64[reverse(size(a))...]
    out = Ref{Ptr{moth_tensor}}(C_NULL)
    st = GC.@preserve a shape out @ccall libmoth().moth_tensor_from_buffer(a::Ptr{Cvoid}, c_dtype(T)::Int32, shape::Ptr{Int64}, length(shape)::Csize_t, c_device(device)::moth_device, out::Ref{Ptr{moth_tensor}})::Int32
    check(st)
    return Tensor(out[])
end

Tensor(a::AbstractArray{T}; device::Device=CPU) where {T<:Element} =
    Tensor(Array{T}(a); device)

"""
    tensor_from_device_ptr(ptr, T, dims; device=cuda(0)) -> Tensor

A tensor copied from CUDA device memory at `ptr` (for a CUDA.jl `CuArray`:
`pointer(a)`, inside `GC.@preserve a`), `dims` in Julia order (reversed
into C order like `Tensor`). `MothError(:unsupported)` without CUDA.
"""
function tensor_from_device_ptr(ptr::Ptr, ::Type{T}, dims::Dims; device::Device=cuda(0)) where {T<:Element}
    shape = Int64[reverse(dims)...]
    out = Ref{Ptr{moth_tensor}}(C_NULL)
    device_ptr = Ptr{Cvoid}(ptr)
    st = GC.@preserve shape out @ccall libmoth().moth_tensor_from_device_ptr(device_ptr::Ptr{Cvoid}, c_dtype(T)::Int32, shape::Ptr{Int64}, length(shape)::Csize_t, c_device(device)::moth_device, out::Ref{Ptr{moth_tensor}})::Int32
    check(st)
    return Tensor(out[])
end

"""
    c_shape(t::Tensor) -> Vector{Int64}

The tensor's shape in C order (`[N, C, H, W]`); `size(t)` is its reverse.
"""
function c_shape(t::Tensor)
    shape = Vector{Int64}(undef, 8)
    ndim = Ref{Csize_t}(0)
    while true
        st = GC.@preserve t shape ndim @ccall libmoth().moth_tensor_shape(handle(t)::Ptr{moth_tensor}, shape::Ptr{Int64}, length(shape)::Csize_t, ndim::Ref{Csize_t})::Int32
        if st == MOTH_STATUS_BUFFER_TOO_SMALL
            resize!(shape, ndim[])
            continue
        end
        check(st)
        return shape[1:ndim[]]
    end
end

Base.size(t::Tensor) = Tuple(Int.(reverse(c_shape(t))))
Base.ndims(t::Tensor) = length(c_shape(t))

"""
    dtype(t::Tensor) -> DataType

The tensor's element type (`Float32`, `Float64`, `Int64`, `Int32`, `UInt8`).
"""
function dtype(t::Tensor)
    out = Ref{Int32}(0)
    st = GC.@preserve t out @ccall libmoth().moth_tensor_dtype(handle(t)::Ptr{moth_tensor}, out::Ref{Int32})::Int32
    check(st)
    return julia_dtype(out[])
end

Base.eltype(t::Tensor) = dtype(t)

"""
    device(t::Tensor) -> Device
"""
function device(t::Tensor)
    out = Ref{moth_device}(moth_device(0, 0))
    st = GC.@preserve t out @ccall libmoth().moth_tensor_device(handle(t)::Ptr{moth_tensor}, out::Ref{moth_device})::Int32
    check(st)
    return julia_device(out[])
end

"""
    Array(t::Tensor) -> Array

A copy of the tensor's elements (from any device), dimensions in Julia
order: a C-order [N, C, H, W] tensor becomes an array of size (W, H, C, N).
"""
function Base.Array(t::Tensor)
    a = Array{dtype(t)}(undef, size(t))
    copy_into!(a, t)
    return a
end

# Copies the tensor's elements into `a`, which must have its element type
# and (at least) its size in bytes.
function copy_into!(a::Array, t::Tensor)
    st = GC.@preserve t a @ccall libmoth().moth_tensor_copy_to_buffer(handle(t)::Ptr{moth_tensor}, a::Ptr{Cvoid}, sizeof(a)::Csize_t)::Int32
    check(st)
    return a
end
