# Where libmoth is: `MOTH_LIBRARY`, or the library that `cargo build
# --release` leaves in this repository. Found once, in `__init__`, and
# checked there: a library of another ABI version is refused before any
# other call.

using Base.Libc.Libdl: dlopen, dlext

const LIBRARY = Ref{String}("")

# The library component of every foreign call. Julia evaluates it when a
# call first runs and may cache the result, which is right: the path never
# changes after `__init__`.
libmoth() = LIBRARY[]

function find_library()
    env = get(ENV, "MOTH_LIBRARY", "")
    if !isempty(env)
        isfile(env) || error("MOTH_LIBRARY is $(repr(env)), which is not a file")
        return abspath(env)
    end
    # src/ -> Moth/ -> julia/ -> bindings/ -> the repository
    repo = normpath(joinpath(@__DIR__, "..", "..", "..", ".."))
    built = joinpath(repo, "target", "release", "libmoth." * dlext)
    isfile(built) && return built
    error("libmoth not found: set MOTH_LIBRARY to the path of libmoth.$dlext, " *
          "or build it in the repository with `cargo build --release` (looked for $built)")
end

function load_library!()
    path = find_library()
    # dlopen first, so that a library that cannot load (a missing libtorch)
    # fails with the loader's message instead of a failed symbol lookup.
    dlopen(path)
    LIBRARY[] = path
    found = @ccall libmoth().moth_abi_version()::UInt32
    if found != MOTH_ABI_VERSION
        LIBRARY[] = ""
        error("$path has C ABI version $found, but this package was written for version " *
              "$MOTH_ABI_VERSION (include/moth.h); use the Moth package of that library's checkout")
    end
    return path
end

"""
    version() -> String

The loaded library's version, `"MAJOR.MINOR.PATCH"`.
"""
version() = unsafe_string(@ccall libmoth().moth_version()::Cstring)

"""
    abi_version() -> UInt32

The loaded library's C ABI version (equal to `MOTH_ABI_VERSION` once the
package has loaded).
"""
abi_version() = @ccall libmoth().moth_abi_version()::UInt32

"""
    library_path() -> String

The path of the libmoth the package loaded.
"""
library_path() = LIBRARY[]
