# Session configurations.

"""
    Config(; preset="default")

A session configuration holding a preset's settings (`"default"`, moth's,
or `"reference"`, the paper authors'). Change it with `cfg["key"] = value`
(dotted keys: `cfg["warmup.budget.steps"] = 50`), `merge_json!` and
`set_preset!`; read it with `json(cfg)`. A session copies its
configuration, so a config may be changed or closed once the session
exists. Not for use by two tasks at once (moth's rule for configs).
"""
mutable struct Config
    @atomic ptr::Ptr{moth_config}
    function Config(ptr::Ptr{moth_config})
        c = new(ptr)
        finalizer(free!, c)
        return c
    end
end

function Config(; preset::Union{Nothing,AbstractString}=nothing)
    out = Ref{Ptr{moth_config}}(C_NULL)
    st = GC.@preserve out @ccall libmoth().moth_config_new(out::Ref{Ptr{moth_config}})::Int32
    check(st)
    cfg = Config(out[])
    preset === nothing || set_preset!(cfg, preset)
    return cfg
end

function free!(c::Config)
    p = @atomicswap c.ptr = Ptr{moth_config}(C_NULL)
    p == C_NULL || GC.@preserve c @ccall libmoth().moth_config_free(p::Ptr{moth_config})::Cvoid
    return nothing
end

Base.close(c::Config) = free!(c)
Base.isopen(c::Config) = (@atomic c.ptr) != C_NULL

function handle(c::Config)
    p = @atomic c.ptr
    p == C_NULL && throw(closed_error("Config"))
    return p
end

# Strings go to C as `Cstring`, which refuses a Julia string holding a NUL
# byte (ArgumentError) instead of letting C cut it short.

"""
    merge_json!(cfg, json) -> cfg

Merges a JSON object into the configuration: keys present replace values,
nested objects merge key by key. `MothError(:invalid_config)` for unknown
keys, wrong types or bad values, the configuration then unchanged.
"""
function merge_json!(cfg::Config, json::AbstractString)
    st = GC.@preserve cfg json @ccall libmoth().moth_config_set_json(handle(cfg)::Ptr{moth_config}, json::Cstring)::Int32
    check(st)
    return cfg
end

"""
    set_preset!(cfg, name) -> cfg

Replaces every setting with those of preset `"default"` or `"reference"`.
"""
function set_preset!(cfg::Config, preset::AbstractString)
    st = GC.@preserve cfg preset @ccall libmoth().moth_config_set_preset(handle(cfg)::Ptr{moth_config}, preset::Cstring)::Int32
    check(st)
    return cfg
end

"""
    cfg[key] = value

Sets one setting by its dotted key: integers (`Unsigned` ones through the
unsigned setter, for the whole range of `"seed"`), floats, strings or
symbols (`cfg["method"] = :Asymmetric`), and `Bool`s (through JSON: the C
API has no boolean setter).
"""
function Base.setindex!(cfg::Config, value::Bool, key::AbstractString)
    json = foldr((k, inner) -> "{\"$(escape_json(k))\": $inner}", split(key, '.'); init=string(value))
    merge_json!(cfg, json)
end

function Base.setindex!(cfg::Config, value::Unsigned, key::AbstractString)
    st = GC.@preserve cfg key @ccall libmoth().moth_config_set_uint(handle(cfg)::Ptr{moth_config}, key::Cstring, UInt64(value)::UInt64)::Int32
    check(st)
    return cfg
end

function Base.setindex!(cfg::Config, value::Integer, key::AbstractString)
    st = GC.@preserve cfg key @ccall libmoth().moth_config_set_int(handle(cfg)::Ptr{moth_config}, key::Cstring, Int64(value)::Int64)::Int32
    check(st)
    return cfg
end

function Base.setindex!(cfg::Config, value::AbstractFloat, key::AbstractString)
    st = GC.@preserve cfg key @ccall libmoth().moth_config_set_double(handle(cfg)::Ptr{moth_config}, key::Cstring, Float64(value)::Float64)::Int32
    check(st)
    return cfg
end

function Base.setindex!(cfg::Config, value::Union{AbstractString,Symbol}, key::AbstractString)
    text = string(value)
    st = GC.@preserve cfg key text @ccall libmoth().moth_config_set_string(handle(cfg)::Ptr{moth_config}, key::Cstring, text::Cstring)::Int32
    check(st)
    return cfg
end

escape_json(s::AbstractString) = replace(s, '\\' => "\\\\", '"' => "\\\"")

"""
    json(cfg) -> String

The whole configuration (every setting, defaults included) as JSON.
"""
function json(cfg::Config)
    text = read_string(check) do buf, len, needed
        GC.@preserve cfg needed @ccall libmoth().moth_config_to_json(handle(cfg)::Ptr{moth_config}, buf::Ptr{UInt8}, len::Csize_t, needed::Ref{Csize_t})::Int32
    end
    return text
end
