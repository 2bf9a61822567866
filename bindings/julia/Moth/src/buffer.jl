# moth's byte buffers (checkpoints in memory): copied into a Julia vector
# and freed at once.

function take_buffer!(b::Ptr{moth_buffer})
    try
        data = Ref{Ptr{UInt8}}(C_NULL)
        len = Ref{Csize_t}(0)
        st = GC.@preserve data len @ccall libmoth().moth_buffer_data(b::Ptr{moth_buffer}, data::Ref{Ptr{UInt8}}, len::Ref{Csize_t})::Int32
        check(st)
        return copy(unsafe_wrap(Array, data[], Int(len[])))
    finally
        GC.@preserve b @ccall libmoth().moth_buffer_free(b::Ptr{moth_buffer})::Cvoid
    end
end
