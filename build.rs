//! Embeds an rpath to the libtorch in use, so that `moth` and `libmoth.so`
//! start without LD_LIBRARY_PATH, and limits libmoth.so's exports to the C
//! API. Writes nothing into the source tree.
use std::path::PathBuf;

fn main() {
    export_only_the_c_api();
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Some(libtorch) = std::env::var_os("LIBTORCH") else {
        return;
    };
    let mut dir = PathBuf::from(libtorch);
    if dir.is_relative() {
        let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
        dir = manifest.join(dir);
    }
    let dir = dir.canonicalize().unwrap_or(dir);
    let lib = dir.join("lib");
    println!("cargo:rustc-env=MOTH_LIBTORCH_LIB={}", lib.display());
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}

/// libmoth.so exports the moth_* functions and nothing else. rustc also
/// exports every `#[no_mangle]` symbol of the dependencies
/// (`tch_read_stream_*`, `bz_internal_error`), which a host may define
/// too, and it names them one by one in its own version script, where a
/// second script's `local: *` cannot hide them. `--exclude-libs,ALL` can:
/// the dependencies come to the linker as archives (rlibs, torch-sys's C++
/// wrapper), moth's own code as object files. tests/c_abi_hostile.rs checks
/// the resulting symbol table.
fn export_only_the_c_api() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,--exclude-libs,ALL");
}
