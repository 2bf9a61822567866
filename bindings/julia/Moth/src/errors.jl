# Failures as exceptions. A moth call returns a status: 0 is success,
# positive values are flow signals (returned to the caller as symbols,
# never thrown), negative values are failures, thrown as `MothError`.
#
# The message: for a call on a session, moth keeps it on the session
# handle (`moth_session_last_error`), which is what this package reads. A
# Julia task may move to another OS thread whenever it yields, so a
# thread-local message could belong to another task. Calls without a
# session read the thread's message (`moth_last_error`) at once, with no
# yield point between the failed call and the read: a task only changes
# threads when it yields.

"""
    MothError(status, code, message)

A failed moth call: `status` is the status as a symbol (`:wrong_shape` for
`MOTH_STATUS_WRONG_SHAPE`), `code` its C value, `message` moth's text.
"""
struct MothError <: Exception
    status::Symbol
    code::Int32
    message::String
end

MothError(code::Integer, message::AbstractString) =
    MothError(status_symbol(code), Int32(code), String(message))

function Base.showerror(io::IO, e::MothError)
    print(io, "MothError(:", e.status, "): ", isempty(e.message) ? "(no message)" : e.message)
end

"""
    status_symbol(code) -> Symbol

A status value as a symbol: `MOTH_STATUS_WRONG_SHAPE` becomes `:wrong_shape`;
a value that is not a status, `:unknown`.
"""
function status_symbol(code::Integer)
    name = unsafe_string(@ccall libmoth().moth_status_name(Int32(code)::Int32)::Cstring)
    return Symbol(lowercase(chopprefix(name, "MOTH_STATUS_")))
end

# Reads a string through moth's buffer protocol: `fill(buf, len, needed)`
# makes the C call; a first call asks for the size, a second one copies
# (the loop covers a text that grew in between). A failure status goes to
# `fail`, whose result is returned.
function read_string(fill, fail)
    needed = Ref{Csize_t}(0)
    st = fill(Ptr{UInt8}(C_NULL), Csize_t(0), needed)
    while true
        st == MOTH_STATUS_OK && needed[] == 0 && return ""
        st in (MOTH_STATUS_OK, MOTH_STATUS_BUFFER_TOO_SMALL) || return fail(st)
        buf = Vector{UInt8}(undef, needed[])
        st = GC.@preserve buf fill(pointer(buf), Csize_t(length(buf)), needed)
        st == MOTH_STATUS_OK && return String(buf[1:end-1])  # without the NUL
    end
end

# The message of the last failed call on this thread.
function thread_message()
    read_string(_ -> "") do buf, len, needed
        GC.@preserve needed @ccall libmoth().moth_last_error(buf::Ptr{UInt8}, len::Csize_t, needed::Ref{Csize_t})::Int32
    end
end

# Throws for a failure of a call without a session; returns the status.
function check(status::Integer)
    status < 0 && throw(MothError(status, thread_message()))
    return Int32(status)
end

closed_error(what) =
    MothError(:null_pointer, MOTH_STATUS_NULL_POINTER, "this $what was closed")
