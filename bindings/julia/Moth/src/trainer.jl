# Training steps with moth's optimisers (`moth_trainer_*`), for TorchScript
# classifiers: the Julia loop drives data and bookkeeping, moth updates the
# model. A trainer checkpoint holds the model and the optimiser state; with
# the session's checkpoint at the same step, loading both resumes a run bit
# for bit.

"""
    Trainer(clf; optimizer="hardening")

moth's optimiser bound to the TorchScript classifier `clf`: `"hardening"`
(SGD, lr 1e-4, Nesterov momentum 0.9), `"pretraining"` (Adam, lr 1e-3) or
a complete JSON object. The trainer keeps `clf` alive (moth requires the
classifier to outlive its trainer). `MothError(:unsupported)` for a Julia
(host) classifier: train those with your own framework.
"""
mutable struct Trainer
    @atomic ptr::Ptr{moth_trainer}
    classifier::Classifier
    function Trainer(ptr::Ptr{moth_trainer}, classifier::Classifier)
        t = new(ptr, classifier)
        finalizer(free!, t)
        return t
    end
end

function Trainer(clf::Classifier; optimizer::AbstractString="hardening")
    out = Ref{Ptr{moth_trainer}}(C_NULL)
    st = GC.@preserve clf optimizer out @ccall libmoth().moth_trainer_new(handle(clf)::Ptr{moth_classifier}, optimizer::Cstring, out::Ref{Ptr{moth_trainer}})::Int32
    check(st)
    return Trainer(out[], clf)
end

function free!(t::Trainer)
    p = @atomicswap t.ptr = Ptr{moth_trainer}(C_NULL)
    p == C_NULL || GC.@preserve t @ccall libmoth().moth_trainer_free(p::Ptr{moth_trainer})::Cvoid
    return nothing
end

Base.close(t::Trainer) = free!(t)
Base.isopen(t::Trainer) = (@atomic t.ptr) != C_NULL

function handle(t::Trainer)
    p = @atomic t.ptr
    p == C_NULL && throw(closed_error("Trainer"))
    return p
end

"""
    train_step!(tr, x, y) -> Float64

One optimiser step on batch `x` (size (W, H, C, N), usually the stamped
batch of `harden_batch!`) with the true labels `y` (0-based): cross-entropy
in training mode, one update, evaluation mode again. Returns the batch's
mean loss before the update. A wrong shape or labels out of range change
nothing (`MothError`).
"""
function train_step!(tr::Trainer, x::Tensor, y::Tensor)
    loss = Ref{Float64}(0)
    check(GC.@preserve tr x y loss @ccall libmoth().moth_trainer_step(handle(tr)::Ptr{moth_trainer}, handle(x)::Ptr{moth_tensor}, handle(y)::Ptr{moth_tensor}, loss::Ref{Float64})::Int32)
    return loss[]
end

function train_step!(tr::Trainer, x::AbstractArray{<:Real,4}, y::AbstractVector{<:Integer})
    xt = Tensor(Array{Float32,4}(x))
    yt = Tensor(Vector{Int64}(y))
    try
        return train_step!(tr, xt, yt)
    finally
        close(xt)
        close(yt)
    end
end

"""
    steps(tr) -> Int

The number of steps the trainer took (counted across checkpoints).
"""
function steps(tr::Trainer)
    out = Ref{UInt64}(0)
    check(GC.@preserve tr out @ccall libmoth().moth_trainer_steps(handle(tr)::Ptr{moth_trainer}, out::Ref{UInt64})::Int32)
    return Int(out[])
end

"""
    save(tr::Trainer, path)

Writes the model (the whole TorchScript module) and the optimiser state,
atomically.
"""
function save(tr::Trainer, path::AbstractString)
    check(GC.@preserve tr path @ccall libmoth().moth_trainer_save(handle(tr)::Ptr{moth_trainer}, path::Cstring)::Int32)
    return nothing
end

function to_bytes(tr::Trainer)
    buffer = Ref{Ptr{moth_buffer}}(C_NULL)
    check(GC.@preserve tr buffer @ccall libmoth().moth_trainer_to_buffer(handle(tr)::Ptr{moth_trainer}, buffer::Ref{Ptr{moth_buffer}})::Int32)
    return take_buffer!(buffer[])
end

"""
    load_trainer(clf, path) -> Trainer
    Trainer(clf, bytes::Vector{UInt8}) -> Trainer

Restores a trainer checkpoint: `clf` (a TorchScript classifier for the same
input shape and class count) takes the saved parameters and buffers, and
the trainer the saved optimiser state. `MothError(:io)` for a missing file,
`:checkpoint` for a corrupted one or one of another kind (the classifier is
then unchanged).
"""
function load_trainer(clf::Classifier, path::AbstractString)
    out = Ref{Ptr{moth_trainer}}(C_NULL)
    check(GC.@preserve clf path out @ccall libmoth().moth_trainer_load(handle(clf)::Ptr{moth_classifier}, path::Cstring, out::Ref{Ptr{moth_trainer}})::Int32)
    return Trainer(out[], clf)
end

function Trainer(clf::Classifier, data::Vector{UInt8})
    out = Ref{Ptr{moth_trainer}}(C_NULL)
    check(GC.@preserve clf data out @ccall libmoth().moth_trainer_from_buffer(handle(clf)::Ptr{moth_classifier}, data::Ptr{UInt8}, length(data)::Csize_t, out::Ref{Ptr{moth_trainer}})::Int32)
    return Trainer(out[], clf)
end
