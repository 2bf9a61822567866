//! Versions: the library version (equal to Cargo.toml's, checked by a test)
//! and the ABI version that bindings compare on load.

use std::ffi::c_char;

/// Major version of moth (`MAJOR.MINOR.PATCH`, as in Cargo.toml).
pub const MOTH_VERSION_MAJOR: u32 = 0;
/// Minor version of moth.
pub const MOTH_VERSION_MINOR: u32 = 1;
/// Patch version of moth.
pub const MOTH_VERSION_PATCH: u32 = 0;

/// Version of the C ABI described by this header. It changes whenever a
/// function, type, struct layout or enumeration value changes
/// incompatibly; bindings compare `moth_abi_version()` with it on load.
pub const MOTH_ABI_VERSION: u32 = 1;

static VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");

/// The library's version, `"MAJOR.MINOR.PATCH"`, as a static NUL-terminated
/// string (do not free it).
#[no_mangle]
pub extern "C" fn moth_version() -> *const c_char {
    ffi_boundary!("moth_version", value = std::ptr::null(), {
        Ok(VERSION.as_ptr().cast::<c_char>())
    })
}

/// The ABI version of the loaded library; compare it with
/// `MOTH_ABI_VERSION` from the header a program was compiled with.
#[no_mangle]
pub extern "C" fn moth_abi_version() -> u32 {
    ffi_boundary!("moth_abi_version", value = 0, { Ok(MOTH_ABI_VERSION) })
}
