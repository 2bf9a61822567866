# A session's log messages, through moth's log callback.
#
# moth calls the callback synchronously, on the thread that made the call,
# in the middle of that call (with the session locked). The trampoline
# below only copies the message into the session's box: it allocates but
# never yields, throws nothing and calls nothing else. The Julia function
# the user set runs later, when the moth call has returned, on the same
# task. Why not call it directly from C:
# - a callback running on a thread Julia does not know crashes Julia before
#   1.9 and is unsafe in general; moth never does that, but the callback
#   must also not yield: a task that yields inside a callback may resume on
#   another OS thread while moth's frames (its thread-local state, the
#   session lock) stay below it, and any printing, logging or locking can
#   yield;
# - an exception must never unwind through moth's frames;
# - the user's function may call moth again, even on the same session,
#   which from inside the callback would get MOTH_STATUS_BUSY.
# (`set_logger!` is in session.jl: its signature needs the Session type.)

"""A session's log messages waiting for delivery, and the function they go to."""
mutable struct LogBox
    messages::Vector{Tuple{Symbol,String}}
    sink::Union{Nothing,Function}
end

LogBox() = LogBox(Tuple{Symbol,String}[], nothing)

const LOG_LEVELS = Dict{Int32,Symbol}(
    MOTH_LOG_LEVEL_ERROR => :error,
    MOTH_LOG_LEVEL_WARN => :warn,
    MOTH_LOG_LEVEL_INFO => :info,
    MOTH_LOG_LEVEL_DEBUG => :debug,
    MOTH_LOG_LEVEL_TRACE => :trace,
)

function log_trampoline(level::Int32, message::Cstring, user_data::Ptr{Cvoid})::Cvoid
    try
        box = unsafe_pointer_to_objref(user_data)::LogBox
        push!(box.messages, (get(LOG_LEVELS, level, :info), unsafe_string(message)))
    catch
        # Nothing may unwind into moth; a message that cannot be copied is dropped.
    end
    return nothing
end

# Made in __init__: a C function pointer does not survive precompilation.
const LOG_TRAMPOLINE = Ref{Ptr{Cvoid}}(C_NULL)

init_callbacks!() =
    LOG_TRAMPOLINE[] = @cfunction(log_trampoline, Cvoid, (Int32, Cstring, Ptr{Cvoid}))  # moth_log_fn

function take_logs!(box::LogBox)
    isempty(box.messages) && return nothing
    out = box.messages
    box.messages = Tuple{Symbol,String}[]
    return out
end

function deliver(box::LogBox, logs)
    logs === nothing && return
    sink = box.sink
    sink === nothing && return
    for (level, message) in logs
        sink(level, message)
    end
end
