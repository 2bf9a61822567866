# Class distances: moth's measurement of the smallest trigger that flips
# each class to each other one (`moth_distance_*`), the same function as
# `moth distance`.

"""
    DistanceConfig(preset="quick")

A distance protocol: `"quick"` (32 samples per class, 200 steps, seed 0),
`"confirm"` (64, 600, seeds 0 and 1) or `"paper"` (100, 1000, seeds 0-2).
Change it with `set_samples!`, `set_steps!`, `set_seeds!`,
`set_init_cost!`, `set_asr_bound!`, `merge_json!`; read it with `json`.
"""
mutable struct DistanceConfig
    @atomic ptr::Ptr{moth_distance_config}
    function DistanceConfig(ptr::Ptr{moth_distance_config})
        d = new(ptr)
        finalizer(free!, d)
        return d
    end
end

function DistanceConfig(preset::AbstractString="quick")
    out = Ref{Ptr{moth_distance_config}}(C_NULL)
    st = GC.@preserve preset out @ccall libmoth().moth_distance_config_new(preset::Cstring, out::Ref{Ptr{moth_distance_config}})::Int32
    check(st)
    return DistanceConfig(out[])
end

function free!(d::DistanceConfig)
    p = @atomicswap d.ptr = Ptr{moth_distance_config}(C_NULL)
    p == C_NULL || GC.@preserve d @ccall libmoth().moth_distance_config_free(p::Ptr{moth_distance_config})::Cvoid
    return nothing
end

Base.close(d::DistanceConfig) = free!(d)
Base.isopen(d::DistanceConfig) = (@atomic d.ptr) != C_NULL

function handle(d::DistanceConfig)
    p = @atomic d.ptr
    p == C_NULL && throw(closed_error("DistanceConfig"))
    return p
end

"Sets the samples inverted per source class (at least 1)."
function set_samples!(d::DistanceConfig, samples_per_class::Integer)
    check(GC.@preserve d @ccall libmoth().moth_distance_config_set_samples(handle(d)::Ptr{moth_distance_config}, samples_per_class::Csize_t)::Int32)
    return d
end

"Sets the inversion steps per direction (at least 1)."
function set_steps!(d::DistanceConfig, steps::Integer)
    check(GC.@preserve d @ccall libmoth().moth_distance_config_set_steps(handle(d)::Ptr{moth_distance_config}, steps::Csize_t)::Int32)
    return d
end

"Sets the seeds; a distance is the smallest over the seeds that reached the bound."
function set_seeds!(d::DistanceConfig, seeds::AbstractVector{<:Integer})
    values = Vector{UInt64}(seeds)
    check(GC.@preserve d values @ccall libmoth().moth_distance_config_set_seeds(handle(d)::Ptr{moth_distance_config}, values::Ptr{UInt64}, length(values)::Csize_t)::Int32)
    return d
end

"Sets the initial weight of the mask-size term (>= 0)."
function set_init_cost!(d::DistanceConfig, init_cost::Real)
    check(GC.@preserve d @ccall libmoth().moth_distance_config_set_init_cost(handle(d)::Ptr{moth_distance_config}, Float64(init_cost)::Float64)::Int32)
    return d
end

"Sets the attack success rate a trigger must reach (in [0, 1])."
function set_asr_bound!(d::DistanceConfig, asr_bound::Real)
    check(GC.@preserve d @ccall libmoth().moth_distance_config_set_asr_bound(handle(d)::Ptr{moth_distance_config}, Float64(asr_bound)::Float64)::Int32)
    return d
end

function merge_json!(d::DistanceConfig, json::AbstractString)
    check(GC.@preserve d json @ccall libmoth().moth_distance_config_set_json(handle(d)::Ptr{moth_distance_config}, json::Cstring)::Int32)
    return d
end

json(d::DistanceConfig) = read_string(check) do buf, len, needed
    GC.@preserve d needed @ccall libmoth().moth_distance_config_to_json(handle(d)::Ptr{moth_distance_config}, buf::Ptr{UInt8}, len::Csize_t, needed::Ref{Csize_t})::Int32
end

"""
    DistanceResult

A measurement: `distance_matrix`, `trigger`, `input_shape`, `json`.
Read-only; free it with `close` (or leave it to the garbage collector).
"""
mutable struct DistanceResult
    @atomic ptr::Ptr{moth_distance_result}
    function DistanceResult(ptr::Ptr{moth_distance_result})
        r = new(ptr)
        finalizer(free!, r)
        return r
    end
end

function free!(r::DistanceResult)
    p = @atomicswap r.ptr = Ptr{moth_distance_result}(C_NULL)
    p == C_NULL || GC.@preserve r @ccall libmoth().moth_distance_result_free(p::Ptr{moth_distance_result})::Cvoid
    return nothing
end

Base.close(r::DistanceResult) = free!(r)
Base.isopen(r::DistanceResult) = (@atomic r.ptr) != C_NULL

function handle(r::DistanceResult)
    p = @atomic r.ptr
    p == C_NULL && throw(closed_error("DistanceResult"))
    return p
end

# The progress function and what it threw, for the trampoline.
mutable struct ProgressBox
    f::Any
    error::Any
end

# Called after each source class of each seed. The user's function runs
# inside the measurement (so that progress is live), in a sticky task; it
# must not unwind (caught here: the measurement stops and the exception is
# rethrown after it) and should not yield (printing with `Core.print` does
# not; `println` to a pipe or `@info` may).
function distance_progress(user_data::Ptr{Cvoid}, done::Csize_t, total::Csize_t)::Int32
    try
        box = unsafe_pointer_to_objref(user_data)::ProgressBox
        try
            return box.f(Int(done), Int(total)) === false ? Int32(1) : Int32(0)
        catch e
            box.error = e
            return Int32(1)
        end
    catch
        return Int32(1)
    end
end

const DISTANCE_PROGRESS = Ref{Ptr{Cvoid}}(C_NULL)

init_distance_callbacks!() =
    DISTANCE_PROGRESS[] = @cfunction(distance_progress, Int32, (Ptr{Cvoid}, Csize_t, Csize_t))  # moth_distance_progress_fn

"""
    measure_distances(clf, cfg, images, labels; num_classes, pairs=nothing, progress=nothing)
        -> Union{DistanceResult,Nothing}

Measures the directed class distances of `clf` with protocol `cfg` on
samples `images` (`Array{Float32,4}` of size (W, H, C, n), pixels in [0, 1])
with 0-based `labels::Vector{Int64}`, as `moth distance` does. `pairs`, a
vector of `(source, target)` tuples (0-based), limits the measurement; by
default the full matrix is measured. `progress(done, total)` is called
along the way; returning `false` stops the measurement, and then
`measure_distances` returns `nothing`.
"""
function measure_distances(clf::Classifier, cfg::DistanceConfig, images::AbstractArray{<:Real,4},
                           labels::AbstractVector{<:Integer}; num_classes::Integer,
                           pairs=nothing, progress=nothing)
    x = Tensor(Array{Float32,4}(images))
    y = Tensor(Vector{Int64}(labels))
    flat = pairs === nothing ? Csize_t[] : Csize_t[v for p in pairs for v in p]
    num_pairs = length(flat) ÷ 2
    box = ProgressBox(progress, nothing)
    callback = progress === nothing ? C_NULL : DISTANCE_PROGRESS[]
    user_data = pointer_from_objref(box)
    out = Ref{Ptr{moth_distance_result}}(C_NULL)
    try
        call() = GC.@preserve clf cfg x y flat box out @ccall libmoth().moth_distance_measure(handle(clf)::Ptr{moth_classifier}, handle(cfg)::Ptr{moth_distance_config}, handle(x)::Ptr{moth_tensor}, handle(y)::Ptr{moth_tensor}, num_classes::Csize_t, (num_pairs == 0 ? Ptr{Csize_t}(C_NULL) : pointer(flat))::Ptr{Csize_t}, num_pairs::Csize_t, callback::Ptr{Cvoid}, user_data::Ptr{Cvoid}, out::Ref{Ptr{moth_distance_result}})::Int32
        # The message is read right after the call, in the same task.
        measure() = (st = call(); st < 0 ? throw(MothError(st, thread_message())) : st)
        st = (is_host(clf) || progress !== nothing) ? pinned(measure) : measure()
        box.error === nothing || throw(box.error)
        st == MOTH_STATUS_CANCELLED && return nothing
        return DistanceResult(out[])
    finally
        close(x)
        close(y)
    end
end

"""
    distance_matrix(r) -> Matrix{Float64}

`m[a+1, b+1]` is the distance from class `a` to class `b` (0-based
classes): the size `C * sum(mask)` of the smallest trigger found. 0 on the
diagonal, for pairs not measured, and for pairs that never reached the ASR
bound (`trigger` returns `nothing` for those).
"""
function distance_matrix(r::DistanceResult)
    n = Ref{Csize_t}(0)
    check(GC.@preserve r n @ccall libmoth().moth_distance_result_num_classes(handle(r)::Ptr{moth_distance_result}, n::Ref{Csize_t})::Int32)
    k = Int(n[])
    values = Vector{Float64}(undef, k * k)
    check(GC.@preserve r values @ccall libmoth().moth_distance_result_matrix(handle(r)::Ptr{moth_distance_result}, values::Ptr{Float64}, length(values)::Csize_t)::Int32)
    return permutedims(reshape(values, k, k))
end

"""
    input_shape(r) -> (c, h, w)
"""
function input_shape(r::DistanceResult)
    c, h, w = Ref{Int64}(0), Ref{Int64}(0), Ref{Int64}(0)
    check(GC.@preserve r c h w @ccall libmoth().moth_distance_result_input_shape(handle(r)::Ptr{moth_distance_result}, c::Ref{Int64}, h::Ref{Int64}, w::Ref{Int64})::Int32)
    return (Int(c[]), Int(h[]), Int(w[]))
end

"""
    trigger(r, source, target) -> Union{Nothing,NamedTuple}

The smallest trigger found for `source -> target` (0-based) as
`(mask, pattern)`: `mask` of size (W, H), `pattern` of size (W, H, C), both
in [0, 1]; a stamped image is `(1 .- mask) .* x .+ mask .* pattern`.
`nothing` when the pair was not measured or never reached the bound.
"""
function trigger(r::DistanceResult, source::Integer, target::Integer)
    c, h, w = input_shape(r)
    mask = Array{Float32}(undef, w, h)
    pattern = Array{Float32}(undef, w, h, c)
    found = Ref{Bool}(false)
    check(GC.@preserve r mask pattern found @ccall libmoth().moth_distance_result_trigger(handle(r)::Ptr{moth_distance_result}, source::Csize_t, target::Csize_t, mask::Ptr{Float32}, length(mask)::Csize_t, pattern::Ptr{Float32}, length(pattern)::Csize_t, found::Ref{Bool})::Int32)
    return found[] ? (mask=mask, pattern=pattern) : nothing
end

"""
    json(r::DistanceResult) -> String

The result in the form of `moth distance`'s distances.json.
"""
json(r::DistanceResult) = read_string(check) do buf, len, needed
    GC.@preserve r needed @ccall libmoth().moth_distance_result_to_json(handle(r)::Ptr{moth_distance_result}, buf::Ptr{UInt8}, len::Csize_t, needed::Ref{Csize_t})::Int32
end
