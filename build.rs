//! Embeds an rpath to the libtorch in use, so that `moth` and `libmoth.so`
//! start without LD_LIBRARY_PATH. Writes nothing into the source tree.
use std::path::PathBuf;

fn main() {
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
