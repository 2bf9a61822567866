# Classifiers: the model moth inverts triggers on.

"""
    Classifier

A model moth can run: `load_torchscript(path, (c, h, w))` for a TorchScript
module, `Classifier(forward, input_grad; num_classes)` for a Julia model. Calls on one classifier are serialised by moth; it may serve
several sessions. Free it with `close` (or leave it to the garbage
collector).
"""
mutable struct Classifier
    @atomic ptr::Ptr{moth_classifier}
    # Julia objects moth calls back into for this classifier: kept here for
    # as long as the C side may call them.
    keep::Any
    function Classifier(ptr::Ptr{moth_classifier}, keep=nothing)
        c = new(ptr, keep)
        finalizer(free!, c)
        return c
    end
end

function free!(c::Classifier)
    p = @atomicswap c.ptr = Ptr{moth_classifier}(C_NULL)
    p == C_NULL || GC.@preserve c @ccall libmoth().moth_classifier_free(p::Ptr{moth_classifier})::Cvoid
    return nothing
end

Base.close(c::Classifier) = free!(c)
Base.isopen(c::Classifier) = (@atomic c.ptr) != C_NULL

function handle(c::Classifier)
    p = @atomic c.ptr
    p == C_NULL && throw(closed_error("Classifier"))
    return p
end

"""
    load_torchscript(path, (c, h, w); device=Moth.CPU) -> Classifier

Loads a TorchScript module (saved with `torch.jit.save`) whose forward maps
`[n, c, h, w]` floats in [0, 1] to logits `[n, classes]`.
`MothError(:io)` when the file cannot be opened, `:format` when it is not
such a module.
"""
function load_torchscript(path::AbstractString, shape::NTuple{3,Integer}; device::Device=CPU)
    c, h, w = Int64.(shape)
    out = Ref{Ptr{moth_classifier}}(C_NULL)
    st = GC.@preserve path out @ccall libmoth().moth_classifier_from_torchscript(path::Cstring, c::Int64, h::Int64, w::Int64, c_device(device)::moth_device, out::Ref{Ptr{moth_classifier}})::Int32
    check(st)
    return Classifier(out[])
end

"""
    set_train!(clf, train::Bool) -> clf

Switches the model between training and evaluation behaviour.
"""
function set_train!(clf::Classifier, train::Bool)
    call() = check(GC.@preserve clf @ccall libmoth().moth_classifier_set_train(handle(clf)::Ptr{moth_classifier}, train::Bool)::Int32)
    is_host(clf) ? pinned(call) : call()
    return clf
end

"""
    forward(clf, x::Tensor) -> Tensor
    forward(clf, x::Array{Float32,4}) -> Matrix{Float32}

Logits without gradients. For an array of size (W, H, C, N) the result has
size (classes, N), Flux's layout (the C-order [N, classes] reversed).
"""
function forward(clf::Classifier, x::Tensor)
    out = Ref{Ptr{moth_tensor}}(C_NULL)
    call() = check(GC.@preserve clf x out @ccall libmoth().moth_classifier_forward(handle(clf)::Ptr{moth_classifier}, handle(x)::Ptr{moth_tensor}, out::Ref{Ptr{moth_tensor}})::Int32)
    is_host(clf) ? pinned(call) : call()
    return Tensor(out[])
end

function forward(clf::Classifier, x::AbstractArray{<:AbstractFloat,4})
    input = Tensor(x)
    try
        logits = forward(clf, input)
        try
            return Array(logits)
        finally
            close(logits)
        end
    finally
        close(input)
    end
end

"""
    save(clf, path)

Saves a TorchScript classifier (with the training moth did on it) for
`torch.jit.load`. `MothError(:unsupported)` for a callback classifier.
"""
function save(clf::Classifier, path::AbstractString)
    st = GC.@preserve clf path @ccall libmoth().moth_classifier_save(handle(clf)::Ptr{moth_classifier}, path::Cstring)::Int32
    check(st)
    return nothing
end
