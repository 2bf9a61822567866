# Hardening sessions: moth's resumable state machine, driven one training
# batch at a time by the caller's own training loop.

"""
    Session(cfg, num_classes, (c, h, w))
    load_session(path; num_classes=0, shape=(0, 0, 0))
    Session(bytes::Vector{UInt8}; num_classes=0, shape=(0, 0, 0))

A hardening session for a model of `num_classes` classes and inputs of
shape `(c, h, w)` (C order, as in `[n, c, h, w]`). Calls on one session
are serialised (by a Julia lock, and by moth's own mutex), so several tasks
may share it. Its failures carry the session's own last message, which
does not depend on the OS thread a task runs on. Free it with `close` (or
leave it to the garbage collector).
"""
mutable struct Session
    @atomic ptr::Ptr{moth_session}
    lock::ReentrantLock
    logs::LogBox
    function Session(ptr::Ptr{moth_session})
        s = new(ptr, ReentrantLock(), LogBox())
        finalizer(free!, s)
        return s
    end
end

# The finalizer runs when nothing can reach the session, so nobody holds
# its lock; `close` takes the lock, so it waits for a call in progress.
function free!(s::Session)
    p = @atomicswap s.ptr = Ptr{moth_session}(C_NULL)
    p == C_NULL || GC.@preserve s @ccall libmoth().moth_session_free(p::Ptr{moth_session})::Cvoid
    return nothing
end

Base.close(s::Session) = lock(() -> free!(s), s.lock)
Base.isopen(s::Session) = (@atomic s.ptr) != C_NULL

# Runs `f(ptr)`, a call on the session returning a status, under the
# session's lock. A failure's message is read from the session before the
# lock is released (no other call can replace it); log messages the call
# produced are handed to the logger afterwards, on this task, outside the
# lock. Failures throw; success and flow signals return the status.
function with_session(f, s::Session)
    status = Int32(0)
    message = ""
    logs = nothing
    lock(s.lock)
    try
        p = @atomic s.ptr
        p == C_NULL && throw(closed_error("Session"))
        status = f(p)
        status == MOTH_STATUS_OK || (message = session_message(s, p))
        logs = take_logs!(s.logs)
    finally
        unlock(s.lock)
    end
    deliver(s.logs, logs)
    status < 0 && throw(MothError(status, message))
    return status
end

function session_message(s::Session, p::Ptr{moth_session})
    read_string(_ -> "") do buf, len, needed
        GC.@preserve s needed @ccall libmoth().moth_session_last_error(p::Ptr{moth_session}, buf::Ptr{UInt8}, len::Csize_t, needed::Ref{Csize_t})::Int32
    end
end

"""
    last_error(s::Session) -> String

The message of the last call on this session that did not succeed (empty
when none failed).
"""
last_error(s::Session) = lock(s.lock) do
    p = @atomic s.ptr
    p == C_NULL && throw(closed_error("Session"))
    session_message(s, p)
end

function Session(cfg::Config, num_classes::Integer, shape::NTuple{3,Integer})
    c, h, w = Int64.(shape)
    out = Ref{Ptr{moth_session}}(C_NULL)
    st = GC.@preserve cfg out @ccall libmoth().moth_session_new(handle(cfg)::Ptr{moth_config}, num_classes::Csize_t, c::Int64, h::Int64, w::Int64, out::Ref{Ptr{moth_session}})::Int32
    check(st)
    return Session(out[])
end

"""
    load_session(path; num_classes=0, shape=(0, 0, 0)) -> Session

Loads a checkpoint written by `save`. With `num_classes > 0` it must have
been made for that class count and input shape (`MothError(:checkpoint)`
otherwise, as for a corrupted or truncated file).
"""
function load_session(path::AbstractString; num_classes::Integer=0, shape::NTuple{3,Integer}=(0, 0, 0))
    c, h, w = Int64.(shape)
    out = Ref{Ptr{moth_session}}(C_NULL)
    st = GC.@preserve path out @ccall libmoth().moth_session_load(path::Cstring, num_classes::Csize_t, c::Int64, h::Int64, w::Int64, out::Ref{Ptr{moth_session}})::Int32
    check(st)
    return Session(out[])
end

function Session(data::Vector{UInt8}; num_classes::Integer=0, shape::NTuple{3,Integer}=(0, 0, 0))
    c, h, w = Int64.(shape)
    out = Ref{Ptr{moth_session}}(C_NULL)
    st = GC.@preserve data out @ccall libmoth().moth_session_from_buffer(data::Ptr{UInt8}, length(data)::Csize_t, num_classes::Csize_t, c::Int64, h::Int64, w::Int64, out::Ref{Ptr{moth_session}})::Int32
    check(st)
    return Session(out[])
end

"""
    save(s::Session, path)

Writes a checkpoint of the whole hardening state, atomically. The model
and its optimiser are the caller's to save.
"""
function save(s::Session, path::AbstractString)
    with_session(s) do p
        GC.@preserve s path @ccall libmoth().moth_session_save(p::Ptr{moth_session}, path::Cstring)::Int32
    end
    return nothing
end

"""
    to_bytes(s::Session) -> Vector{UInt8}

The checkpoint's bytes (`Session(bytes)` restores it).
"""
function to_bytes(s::Session)
    buffer = Ref{Ptr{moth_buffer}}(C_NULL)
    with_session(s) do p
        GC.@preserve s buffer @ccall libmoth().moth_session_to_buffer(p::Ptr{moth_session}, buffer::Ref{Ptr{moth_buffer}})::Int32
    end
    return take_buffer!(buffer[])
end

"""
    HardenResult

What `harden_batch!` returns: `status` is `:ok` (then `stamped` holds the
batch to train on, with the same labels, and `report` the step's report),
`:done` (the session finished) or `:accuracy_wanted` (report the clean
accuracy with `report_accuracy!`, then pass the batch again); for the two
flow signals nothing was done and `stamped`/`report` are `nothing`.
"""
struct HardenResult{A}
    status::Symbol
    stamped::Union{Nothing,A}
    report::Union{Nothing,StepReport}
end

"""
    harden_batch!(s, clf, x::Array{Float32,4}, y::Vector{Int64}) -> HardenResult
    harden_batch!(s, clf, x::Tensor, y::Tensor) -> HardenResult{Tensor}

One hardening step on a batch: `x` of size (W, H, C, N) (Flux's WHCN; the
C-order [N, C, H, W] tensor, passed without a Julia-side copy), pixels in
[0, 1]; `y` the N labels, 0-based class indices (`y .- 1` for Flux's
1-based `onecold`). Failures (`MothError`: `:wrong_shape`,
`:label_out_of_range`, `:invalid_value`, ...) leave the session unchanged.
"""
function harden_batch!(s::Session, clf::Classifier, x::Tensor, y::Tensor)
    out = Ref{Ptr{moth_tensor}}(C_NULL)
    report = Ref{moth_step_report}()
    call() = with_session(s) do p
        st = GC.@preserve s clf x y out @ccall libmoth().moth_session_harden_batch(p::Ptr{moth_session}, handle(clf)::Ptr{moth_classifier}, handle(x)::Ptr{moth_tensor}, handle(y)::Ptr{moth_tensor}, out::Ref{Ptr{moth_tensor}})::Int32
        st == MOTH_STATUS_OK || return st
        # Under the same lock, so that the report is this step's.
        GC.@preserve s report @ccall libmoth().moth_session_last_report(p::Ptr{moth_session}, report::Ref{moth_step_report})::Int32
    end
    # A Julia model's callbacks run inside this call: keep it on one thread.
    status = is_host(clf) ? pinned(call) : call()
    status == MOTH_STATUS_OK || return HardenResult{Tensor}(status_symbol(status), nothing, nothing)
    return HardenResult{Tensor}(:ok, Tensor(out[]), StepReport(report[]))
end

function harden_batch!(s::Session, clf::Classifier, x::Array{T,4}, y::Vector{Int64}) where {T<:Union{Float32,Float64}}
    xt = Tensor(x)
    yt = Tensor(y)
    try
        r = harden_batch!(s, clf, xt, yt)
        r.status === :ok || return HardenResult{Array{T,4}}(r.status, nothing, nothing)
        stamped = Array{T,4}(undef, size(x))
        try
            copy_into!(stamped, r.stamped)
        finally
            close(r.stamped)
        end
        return HardenResult{Array{T,4}}(:ok, stamped, r.report)
    finally
        close(xt)
        close(yt)
    end
end

harden_batch!(s::Session, clf::Classifier, x::AbstractArray{<:Real,4}, y::AbstractVector{<:Integer}) =
    harden_batch!(s, clf, Array{Float32,4}(x), Vector{Int64}(y))

"""
    last_report(s) -> StepReport

The report of the last successful `harden_batch!` (`MothError(:phase)`
before the first).
"""
function last_report(s::Session)
    report = Ref{moth_step_report}()
    with_session(s) do p
        GC.@preserve s report @ccall libmoth().moth_session_last_report(p::Ptr{moth_session}, report::Ref{moth_step_report})::Int32
    end
    return StepReport(report[])
end

"""
    wants_accuracy(s) -> Bool

Whether a clean-accuracy report is due before the next step.
"""
function wants_accuracy(s::Session)
    out = Ref{Bool}(false)
    with_session(s) do p
        GC.@preserve s out @ccall libmoth().moth_session_wants_accuracy(p::Ptr{moth_session}, out::Ref{Bool})::Int32
    end
    return out[]
end

"""
    report_accuracy!(s, accuracy) -> (verdict, drop)

Reports the clean accuracy (in [0, 1]) of the current model when one is
due. `verdict` is `:baseline` (the first report), `:within_bound` or
`:exceeded` (the session is done: go back to the last model within the
bound) or `:recovering` (beyond the bound, and the session hands back clean
batches until accuracy is back: keep training this model, but do not keep it
as a good one); `drop` is the baseline minus this accuracy.
"""
function report_accuracy!(s::Session, accuracy::Real)
    verdict = Ref{Int32}(0)
    drop = Ref{Float64}(0)
    with_session(s) do p
        GC.@preserve s verdict drop @ccall libmoth().moth_session_report_accuracy(p::Ptr{moth_session}, Float64(accuracy)::Float64, verdict::Ref{Int32}, drop::Ref{Float64})::Int32
    end
    return (VERDICTS[verdict[]], drop[])
end

"""
    phase(s) -> Phase

What the session's next step does.
"""
function phase(s::Session)
    out = Ref{moth_phase}()
    with_session(s) do p
        GC.@preserve s out @ccall libmoth().moth_session_phase(p::Ptr{moth_session}, out::Ref{moth_phase})::Int32
    end
    return Phase(out[])
end

"""
    step(s) -> Int

The number of steps completed (a method of `Base.step`: a function of our
own named `step` would clash with Base's in every program using both).
"""
function Base.step(s::Session)
    out = Ref{UInt64}(0)
    with_session(s) do p
        GC.@preserve s out @ccall libmoth().moth_session_step(p::Ptr{moth_session}, out::Ref{UInt64})::Int32
    end
    return Int(out[])
end

"""
    isdone(s) -> Bool
"""
function isdone(s::Session)
    out = Ref{Bool}(false)
    with_session(s) do p
        GC.@preserve s out @ccall libmoth().moth_session_is_done(p::Ptr{moth_session}, out::Ref{Bool})::Int32
    end
    return out[]
end

"""
    accuracy(s) -> AccuracyState

The accuracy bookkeeping: baseline, last report (each `nothing` until
reported), whether a report is pending.
"""
function accuracy(s::Session)
    out = Ref{moth_accuracy}()
    with_session(s) do p
        GC.@preserve s out @ccall libmoth().moth_session_accuracy(p::Ptr{moth_session}, out::Ref{moth_accuracy})::Int32
    end
    return AccuracyState(out[])
end

"""
    spec(s) -> Spec

The class count and input shape the session was made for.
"""
function spec(s::Session)
    out = Ref{moth_spec}()
    with_session(s) do p
        GC.@preserve s out @ccall libmoth().moth_session_spec(p::Ptr{moth_session}, out::Ref{moth_spec})::Int32
    end
    return Spec(out[])
end

"""
    config_json(s) -> String

The session's configuration as JSON.
"""
function config_json(s::Session)
    text = ""
    with_session(s) do p
        failed = MOTH_STATUS_OK
        text = read_string(st -> (failed = st; "")) do buf, len, needed
            GC.@preserve s needed @ccall libmoth().moth_session_config_json(p::Ptr{moth_session}, buf::Ptr{UInt8}, len::Csize_t, needed::Ref{Csize_t})::Int32
        end
        failed
    end
    return text
end

"""
    matrix(s, which) -> Matrix{Float64}

One N x N scheduler matrix, `which` one of `:univ` (warm-up prior scores),
`:size` (latest trigger size per direction), `:diff` (post-selection
score), `:count` (how often each pair was chosen). `m[i+1, t+1]` is the
entry of source class `i`, target class `t` (moth's classes are 0-based).
"""
function matrix(s::Session, which::Symbol)
    kind = get(MATRICES, which) do
        throw(ArgumentError("matrix kind must be one of $(collect(keys(MATRICES))), not :$which"))
    end
    n = spec(s).num_classes
    values = Vector{Float64}(undef, n * n)
    with_session(s) do p
        GC.@preserve s values @ccall libmoth().moth_session_matrix(p::Ptr{moth_session}, kind::Int32, values::Ptr{Float64}, length(values)::Csize_t)::Int32
    end
    # C's row-major [i][t] read column-major is its transpose.
    return permutedims(reshape(values, n, n))
end

"""
    set_cuda_stream!(s, device::Integer, stream::Ptr{Cvoid})

Runs the session's steps on the caller's CUDA stream (a `cudaStream_t`) of
CUDA device `device`; `C_NULL` clears it. `MothError(:unsupported)` in a
process without CUDA.
"""
function set_cuda_stream!(s::Session, device::Integer, stream::Ptr{Cvoid})
    with_session(s) do p
        GC.@preserve s @ccall libmoth().moth_session_set_cuda_stream(p::Ptr{moth_session}, Int32(device)::Int32, stream::Ptr{Cvoid})::Int32
    end
    return s
end

"""
    cuda_stream(s) -> (device, stream)

The stream set with `set_cuda_stream!`, or `(-1, C_NULL)`.
"""
function cuda_stream(s::Session)
    device = Ref{Int32}(0)
    stream = Ref{Ptr{Cvoid}}(C_NULL)
    with_session(s) do p
        GC.@preserve s device stream @ccall libmoth().moth_session_cuda_stream(p::Ptr{moth_session}, device::Ref{Int32}, stream::Ref{Ptr{Cvoid}})::Int32
    end
    return (Int(device[]), stream[])
end

"""
    set_logger!(s, f) -> s
    set_logger!(s, nothing) -> s

Sends the session's log messages (one info line per step, accuracy
verdicts, checkpoint saves, and every failed call's message at error level)
to `f(level::Symbol, message::String)`, `level` one of `:error`, `:warn`,
`:info`, `:debug`, `:trace`. `f` runs on the calling task right after each
moth call on the session returns, with that call's messages in order, so
it may do anything, including calls on the session. `nothing` removes it.
Example: `set_logger!(s, (level, msg) -> @info msg)`.
"""
function set_logger!(s::Session, f::Union{Nothing,Function})
    box = s.logs
    callback = f === nothing ? C_NULL : LOG_TRAMPOLINE[]
    # The box lives as long as the session (a field of it), and moth calls
    # back only during calls on the session, so a plain pointer to it is
    # safe; Julia keeps ownership (no free function).
    user_data = f === nothing ? C_NULL : pointer_from_objref(box)
    with_session(s) do p
        st = GC.@preserve s box @ccall libmoth().moth_session_set_log_callback(p::Ptr{moth_session}, callback::Ptr{Cvoid}, user_data::Ptr{Cvoid}, C_NULL::Ptr{Cvoid})::Int32
        st == MOTH_STATUS_OK && (box.sink = f)
        st
    end
    return s
end
