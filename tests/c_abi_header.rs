//! The C header (`include/moth.h`): it is what cbindgen generates from
//! src/ffi/ with cbindgen.toml, its version defines equal Cargo.toml's, and
//! it compiles as C99 and C++17 (with the C++ wrapper, with and without
//! libtorch's headers), alone and included twice.
//!
//! Maintenance: `cargo test --release --test c_abi_header -- --ignored regenerate_header`
//! rewrites include/moth.h (scripts/gen-header.sh does that).

use std::ffi::CStr;
use std::process::Command;

mod common;
mod native;
use common::ffi::*;
use native::*;

fn generate_header() -> String {
    let cfg = cbindgen::Config::from_file(root().join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_config(cfg)
        .with_src(root().join("src/ffi/mod.rs"))
        .generate()
        .expect("cbindgen failed on src/ffi");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn header_is_current() {
    let want = generate_header();
    let have = std::fs::read_to_string(root().join("include/moth.h")).unwrap_or_default();
    if want != have {
        let line = want
            .lines()
            .zip(have.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| want.lines().count().min(have.lines().count()));
        panic!(
            "include/moth.h is not what cbindgen generates from src/ffi (first difference at line {}: \
             generated {:?}, checked in {:?}); run scripts/gen-header.sh",
            line + 1,
            want.lines().nth(line),
            have.lines().nth(line)
        );
    }
}

/// Rewrites include/moth.h (run by scripts/gen-header.sh).
#[test]
#[ignore]
fn regenerate_header() {
    std::fs::create_dir_all(root().join("include")).unwrap();
    std::fs::write(root().join("include/moth.h"), generate_header()).unwrap();
}

fn header_define(header: &str, name: &str) -> u32 {
    header
        .lines()
        .find_map(|l| l.strip_prefix(&format!("#define {name} ")))
        .unwrap_or_else(|| panic!("{name} not defined in moth.h"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn header_version_equals_cargo_version() {
    let h = std::fs::read_to_string(root().join("include/moth.h")).unwrap();
    let cargo = [
        env!("CARGO_PKG_VERSION_MAJOR"),
        env!("CARGO_PKG_VERSION_MINOR"),
        env!("CARGO_PKG_VERSION_PATCH"),
    ]
    .map(|v| v.parse::<u32>().unwrap());
    let header = [
        header_define(&h, "MOTH_VERSION_MAJOR"),
        header_define(&h, "MOTH_VERSION_MINOR"),
        header_define(&h, "MOTH_VERSION_PATCH"),
    ];
    assert_eq!(header, cargo, "bump MOTH_VERSION_* in src/ffi/version.rs");
    // SAFETY: static NUL-terminated string.
    let v = unsafe { CStr::from_ptr(moth_version()) }.to_str().unwrap();
    assert_eq!(v, env!("CARGO_PKG_VERSION"));
    assert_eq!(moth_abi_version(), MOTH_ABI_VERSION);
    assert_eq!(header_define(&h, "MOTH_ABI_VERSION"), MOTH_ABI_VERSION);
}

fn compiler_check(compiler: &str, args: &[&str], source: &str, ext: &str) -> (bool, String) {
    let dir = work_dir();
    let file = dir.join(format!(
        "check_{}_{}.{ext}",
        compiler.replace('+', "x"),
        source.len()
    ));
    std::fs::write(&file, source).unwrap();
    let (ok, _, err) = run(Command::new(compiler)
        .args(args)
        .arg("-I")
        .arg(root().join("include"))
        .arg("-I")
        .arg(root().join("bindings/cpp"))
        // -c rather than -fsyntax-only: GCC reports unused results later.
        .args(["-c", "-o", "/dev/null"])
        .arg(&file));
    (ok, err)
}

#[test]
fn header_compiles_as_c99_and_cpp17_alone_and_twice() {
    let strict = ["-Wall", "-Wextra", "-Wpedantic", "-Werror"];
    let c99: Vec<&str> = ["-std=c99"].iter().chain(&strict).copied().collect();
    let cpp17: Vec<&str> = ["-std=c++17"].iter().chain(&strict).copied().collect();
    let once = "#include \"moth.h\"\nint main(void) { return MOTH_STATUS_OK; }\n";
    let twice = "#include \"moth.h\"\n#include \"moth.h\"\nint main(void) { return 0; }\n";
    for (src, what) in [(once, "alone"), (twice, "twice")] {
        let (ok, err) = compiler_check("gcc", &c99, src, "c");
        assert!(ok, "moth.h {what} as C99:\n{err}");
        let (ok, err) = compiler_check("g++", &cpp17, src, "cpp");
        assert!(ok, "moth.h {what} as C++17:\n{err}");
    }
    // The C++ wrapper, without libtorch's headers, alone and twice.
    let hpp =
        "#include \"moth.hpp\"\n#include \"moth.hpp\"\nint main() { moth::Config c; return 0; }\n";
    let (ok, err) = compiler_check("g++", &cpp17, hpp, "cpp");
    assert!(ok, "moth.hpp as C++17:\n{err}");
    // With libtorch's headers: the at::Tensor interop and callback trampolines.
    let inc = libtorch_root().join("include");
    let torch_args: Vec<String> = cpp17
        .iter()
        .map(|s| s.to_string())
        .chain([
            "-isystem".to_string(),
            inc.display().to_string(),
            "-isystem".to_string(),
            inc.join("torch/csrc/api/include").display().to_string(),
        ])
        .collect();
    let torch_args: Vec<&str> = torch_args.iter().map(String::as_str).collect();
    let with_torch =
        "#include <ATen/core/Tensor.h>\n#include \"moth.hpp\"\n#include \"moth.hpp\"\n\
        int main() {\n  auto c = moth::Classifier::from_forward(\n\
        [](const at::Tensor &x) { return x; }, nullptr);\n  (void)c;\n  return 0;\n}\n";
    let (ok, err) = compiler_check("g++", &torch_args, with_torch, "cpp");
    assert!(ok, "moth.hpp with libtorch as C++17:\n{err}");
    // Ignoring a status is a warning (an error with -Werror).
    let ignored = "#include \"moth.h\"\nint main(void) { moth_config_new(NULL); return 0; }\n";
    let (ok, err) = compiler_check("gcc", &c99, ignored, "c");
    assert!(!ok && err.contains("warn_unused_result"), "{err}");
}
