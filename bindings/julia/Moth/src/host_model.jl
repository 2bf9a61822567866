# Classifiers whose model is Julia code (Flux, Lux, hand-written): moth
# calls a forward and an input-gradient function through host-buffer
# callbacks (`moth_classifier_from_host`), so that it can invert triggers on
# a model it cannot see. The gradient is a vector-Jacobian product: for a
# Flux model, `Zygote.pullback(model, x)[2](dy)[1]`.
#
# The callbacks run in the middle of a moth call, on the calling thread.
# The trampolines below wrap the user's functions so that no exception
# unwinds into moth (it becomes MOTH_STATUS_CALLBACK with the exception's
# text), and calls that may invoke them run in a sticky task (`pinned`), so
# that a user function that yields cannot move moth's frames to another OS
# thread.

"""The Julia side of a host classifier: what the trampolines call."""
mutable struct HostModel
    forward::Any
    input_grad::Any
    set_train::Any
    num_classes::Int
end

"""
    Classifier(forward, input_grad; num_classes, set_train=nothing)

A classifier whose model is Julia code. `forward(x)` gets a batch
`x::Array{Float32,4}` of size (W, H, C, N) (pixels in [0, 1]; moth's memory,
valid during the call only: do not keep or change it) and returns the
logits as a (num_classes, N) matrix (Flux's layout). `input_grad(x, dy)`
gets the same batch and the gradient `dy` (num_classes, N) of moth's loss
with respect to the logits, and returns the gradient with respect to `x`
(size (W, H, C, N)) of the same forward computation in evaluation mode.
`set_train(train::Bool)` switches training/evaluation behaviour (BatchNorm,
dropout); without it the model has none. With Flux and Zygote:

    clf = Classifier(x -> model(x), (x, dy) -> Zygote.pullback(model, x)[2](dy)[1];
                     num_classes=10, set_train=t -> t ? Flux.trainmode!(model) : Flux.testmode!(model))

moth calls these on the CPU; training the model is the caller's (moth's
`Trainer` trains TorchScript models only).
"""
function Classifier(forward, input_grad; num_classes::Integer, set_train=nothing)
    model = HostModel(forward, input_grad, set_train, Int(num_classes))
    out = Ref{Ptr{moth_classifier}}(C_NULL)
    forward_fn = HOST_FORWARD[]
    grad_fn = HOST_INPUT_GRAD[]
    train_fn = set_train === nothing ? C_NULL : HOST_SET_TRAIN[]
    user_data = pointer_from_objref(model)
    # Julia keeps `model` alive as the classifier's `keep` (no free function).
    st = GC.@preserve model out @ccall libmoth().moth_classifier_from_host(forward_fn::Ptr{Cvoid}, grad_fn::Ptr{Cvoid}, train_fn::Ptr{Cvoid}, user_data::Ptr{Cvoid}, C_NULL::Ptr{Cvoid}, num_classes::Csize_t, out::Ref{Ptr{moth_classifier}})::Int32
    check(st)
    return Classifier(out[], model)
end

is_host(c::Classifier) = c.keep isa HostModel

# Runs `f()` in a task that cannot migrate between threads, when the
# current one could (a `Threads.@spawn` task). moth's frames and its
# thread-local state then stay on one OS thread even if a Julia callback
# yields.
function pinned(f)
    current_task().sticky && return f()
    t = @async f()
    try
        return fetch(t)
    catch e
        e isa TaskFailedException && throw(e.task.exception)
        rethrow()
    end
end

# Leaves the exception's text for moth to report (MOTH_STATUS_CALLBACK).
function callback_failed(e)
    try
        message = replace(sprint(showerror, e), '\0' => ' ')
        GC.@preserve message @ccall libmoth().moth_callback_set_error(message::Cstring)::Int32
    catch
    end
    return Int32(1)
end

function copy_result!(dest::Array, y, what::AbstractString)
    size(y) == size(dest) ||
        throw(DimensionMismatch("$what returned an array of size $(size(y)); moth expects $(size(dest))"))
    copyto!(dest, y)
    return dest
end

function host_forward(user_data::Ptr{Cvoid}, input::Ptr{Float32}, n::Csize_t, c::Csize_t, h::Csize_t,
                      w::Csize_t, logits_out::Ptr{Float32}, num_classes::Csize_t)::Int32
    try
        model = unsafe_pointer_to_objref(user_data)::HostModel
        x = unsafe_wrap(Array, input, (Int(w), Int(h), Int(c), Int(n)))
        out = unsafe_wrap(Array, logits_out, (Int(num_classes), Int(n)))
        copy_result!(out, model.forward(x), "forward")
        return Int32(0)
    catch e
        return callback_failed(e)
    end
end

function host_input_grad(user_data::Ptr{Cvoid}, input::Ptr{Float32}, n::Csize_t, c::Csize_t, h::Csize_t,
                         w::Csize_t, grad_logits::Ptr{Float32}, num_classes::Csize_t,
                         grad_input::Ptr{Float32})::Int32
    try
        model = unsafe_pointer_to_objref(user_data)::HostModel
        dims = (Int(w), Int(h), Int(c), Int(n))
        x = unsafe_wrap(Array, input, dims)
        dy = unsafe_wrap(Array, grad_logits, (Int(num_classes), Int(n)))
        out = unsafe_wrap(Array, grad_input, dims)
        copy_result!(out, model.input_grad(x, dy), "input_grad")
        return Int32(0)
    catch e
        return callback_failed(e)
    end
end

function host_set_train(user_data::Ptr{Cvoid}, train::Bool)::Int32
    try
        model = unsafe_pointer_to_objref(user_data)::HostModel
        model.set_train(train)
        return Int32(0)
    catch e
        return callback_failed(e)
    end
end

const HOST_FORWARD = Ref{Ptr{Cvoid}}(C_NULL)
const HOST_INPUT_GRAD = Ref{Ptr{Cvoid}}(C_NULL)
const HOST_SET_TRAIN = Ref{Ptr{Cvoid}}(C_NULL)

function init_host_callbacks!()
    HOST_FORWARD[] = @cfunction(host_forward, Int32, (Ptr{Cvoid}, Ptr{Float32}, Csize_t, Csize_t, Csize_t, Csize_t, Ptr{Float32}, Csize_t))  # moth_host_forward_fn
    HOST_INPUT_GRAD[] = @cfunction(host_input_grad, Int32, (Ptr{Cvoid}, Ptr{Float32}, Csize_t, Csize_t, Csize_t, Csize_t, Ptr{Float32}, Csize_t, Ptr{Float32}))  # moth_host_input_grad_fn
    HOST_SET_TRAIN[] = @cfunction(host_set_train, Int32, (Ptr{Cvoid}, Bool))  # moth_set_train_fn
    return nothing
end
