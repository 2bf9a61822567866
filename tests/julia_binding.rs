//! The Julia package (`bindings/julia/Moth`) and its example
//! (`examples/julia`), checked without a Julia runtime: every `ccall`/
//! `@ccall`, `@cfunction`, C-mirroring struct and constant against
//! include/moth.h (tests/julia_check/), and every export wrapped or listed
//! as deliberately left out. The checker's own tests below seed the
//! mistakes it must catch (argument order, `Int` for `Int32`, a missing
//! export, ...) on small inline snippets, so that CI shows it can fail.
//!
//! Where `julia` is on PATH, the package's test suite also runs
//! (`julia --project=bindings/julia/Moth bindings/julia/Moth/test/runtests.jl`)
//! against the freshly built libmoth.so; elsewhere (this project's CI: Julia
//! is not in the package registries it reaches) that test says it skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

mod julia_check;
mod native;
use julia_check::check;
use native::*;

/// The `.jl` files under `dir`, as (path relative to the repository, text).
fn julia_files(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "jl") {
                let rel = p.strip_prefix(root()).unwrap_or(&p).display().to_string();
                out.push((rel, std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_foreign_call_matches_the_header() {
    let header = std::fs::read_to_string(root().join("include/moth.h")).unwrap();
    let binding = julia_files(&root().join("bindings/julia"));
    let examples = julia_files(&root().join("examples/julia"));
    assert!(
        binding.iter().any(|(p, _)| p.ends_with("Moth.jl")),
        "no bindings/julia/Moth/src/Moth.jl"
    );
    let r = check(&header, &binding, &examples);
    println!(
        "checked {} files: {} foreign calls, {} @cfunctions, {} structs, {} constants; \
         {} exports wrapped, {} left out on purpose",
        binding.len() + examples.len(),
        r.calls,
        r.cfunctions,
        r.structs,
        r.constants,
        r.wrapped.len(),
        r.not_wrapped
    );
    assert!(
        r.errors.is_empty(),
        "the Julia binding disagrees with include/moth.h:\n  {}",
        r.errors.join("\n  ")
    );
}

/// Julia syntax of every `.jl` file (tests/julia_check/syntax.py, with
/// tree-sitter's Julia grammar), where python3 has the `tree_sitter_julia`
/// module (PyPI `tree-sitter-julia`); elsewhere it says it skipped.
#[test]
fn julia_sources_parse_where_tree_sitter_julia_is_installed() {
    let has = Command::new("python3")
        .args(["-c", "import tree_sitter, tree_sitter_julia"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has {
        println!(
            "skipped: python3 has no tree_sitter_julia module \
             (pip install tree-sitter tree-sitter-julia)"
        );
        return;
    }
    let mut files: Vec<String> = julia_files(&root().join("bindings/julia"))
        .into_iter()
        .chain(julia_files(&root().join("examples/julia")))
        .map(|(path, _)| path)
        .collect();
    files.sort();
    let (ok, out, err) = run(Command::new("python3")
        .arg(root().join("tests/julia_check/syntax.py"))
        .args(&files)
        .current_dir(root()));
    println!("{out}");
    assert!(ok, "Julia syntax errors:\n{out}{err}");
}

/// Runs the package's tests where Julia is installed.
#[test]
fn julia_package_tests_pass_where_julia_is_installed() {
    let found = Command::new("julia")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        println!(
            "skipped: `julia` is not on PATH (Julia is not in the package registries this \
             project's CI reaches); the signature check above ran instead"
        );
        return;
    }
    let model = scratch_dir("julia_binding").join("fmnist_cnn.pt");
    let trainable = scratch_dir("julia_binding").join("fmnist_scripted.pt");
    tch::set_num_threads(1);
    fashion_model(&model);
    // Module parameters, which moth's trainer can train (a traced model's
    // weights are constants).
    trainable_fashion_model(&trainable);
    let depot: PathBuf = scratch_dir("julia_binding").join("depot");
    let (ok, out, err) = run(Command::new("julia")
        .arg("--project=bindings/julia/Moth")
        .arg("--startup-file=no")
        // Two threads, so that the tests of tasks moving between threads mean something.
        .arg("--threads=2")
        .arg("bindings/julia/Moth/test/runtests.jl")
        .current_dir(root())
        .env("JULIA_DEPOT_PATH", &depot)
        .env("JULIA_PKG_OFFLINE", "true")
        .env("MOTH_LIBRARY", libmoth())
        .env("MOTH_TEST_MODEL", &model)
        .env("MOTH_TEST_TRAINABLE", &trainable));
    println!("{out}{err}");
    assert!(ok, "the Julia package's tests failed:\n{out}{err}");
}

/// The parser reads the real header as C sees it.
#[test]
fn the_header_parser_reads_moth_h() {
    use julia_check::c_header::{parse, CType, Typedef};
    let h = parse(&std::fs::read_to_string(root().join("include/moth.h")).unwrap());
    let f = h
        .function("moth_session_harden_batch")
        .expect("harden_batch");
    let names: Vec<&str> = f.params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["session", "classifier", "x", "y", "stamped_out"]);
    assert_eq!(f.ret, CType::Named("moth_status".into()));
    assert_eq!(h.resolve(&f.ret), CType::Named("int32_t".into()));
    let Some(Typedef::Struct(fields)) = h.typedefs.get("moth_step_report") else {
        panic!("moth_step_report is not a struct");
    };
    let directions = fields.iter().find(|f| f.name == "directions").unwrap();
    assert_eq!(
        directions.ty,
        CType::Array(Box::new(CType::Named("moth_direction".into())), 2)
    );
    assert!(matches!(
        h.typedefs.get("moth_session"),
        Some(Typedef::Opaque)
    ));
    assert!(
        matches!(h.typedefs.get("moth_log_fn"), Some(Typedef::FnPtr { params, .. }) if params.len() == 3)
    );
    assert_eq!(h.constants.get("MOTH_STATUS_MODEL_OUTPUT"), Some(&-23));
    assert_eq!(h.constants.get("MOTH_ABI_VERSION"), Some(&1));
    // `extern "C" {` is C++ only; the C declarations are all there.
    assert!(h.functions.len() > 40, "{} functions", h.functions.len());
}

/// The checker's own tests: a small header, a Julia binding of it that
/// passes, and the same binding with one mistake seeded each time.
mod seeded_mistakes {
    use super::check;

    const HEADER: &str = r#"
#include <stdint.h>
/* A comment with a fake declaration: int moth_fake(void); */
#if defined(__GNUC__) || defined(__clang__)
#define MOTH_MUST_USE __attribute__((warn_unused_result))
#else
#define MOTH_MUST_USE
#endif
#define MOTH_ABI_VERSION 1
enum moth_status
#if defined(__cplusplus) || __STDC_VERSION__ >= 202311L
  : int32_t
#endif // C23 and C++ only
 {
    MOTH_STATUS_OK = 0,
    MOTH_STATUS_NULL_POINTER = -1,
};
#ifndef __cplusplus
#if __STDC_VERSION__ >= 202311L
typedef enum moth_status moth_status;
#else
typedef int32_t moth_status;
#endif
#endif
typedef struct moth_config moth_config;
typedef struct {
    int32_t type;
    int32_t index;
} moth_device;
typedef void (*moth_log_fn)(int32_t level, const char *message, void *user_data);
#ifdef __cplusplus
extern "C" {
#endif
MOTH_MUST_USE moth_status moth_config_new(moth_config **out_config);
MOTH_MUST_USE
moth_status moth_config_set_int(moth_config *config, const char *key, int64_t value);
moth_status moth_session_new(const moth_config *config, size_t num_classes, int64_t c,
                             int64_t h, int64_t w, moth_device device);
MOTH_MUST_USE moth_status moth_last_error(char *buf, size_t len, size_t *needed);
const char *moth_status_name(int32_t status);
uint32_t moth_abi_version(void);
#ifdef __cplusplus
}
#endif
"#;

    const GOOD: &str = r#"
const MOTH_ABI_VERSION = UInt32(1)
const MOTH_STATUS_OK = Int32(0)
const MOTH_STATUS_NULL_POINTER = Int32(-1)
mutable struct moth_config end
struct moth_device
    kind::Int32
    index::Int32
end
const NOT_WRAPPED = Dict{Symbol,String}(
    :moth_abi_version => "read by the loader",
)
function new_config()
    out = Ref{Ptr{moth_config}}(C_NULL)
    st = GC.@preserve out @ccall libmoth().moth_config_new(out::Ref{Ptr{moth_config}})::Int32
end
set_int(cfg, key, value) = GC.@preserve cfg key begin
    x = [1, 2][end]
    @ccall libmoth().moth_config_set_int(cfg::Ptr{moth_config}, key::Cstring, value::Int64)::Int32
end
function session(cfg, n, c, h, w, device)
    GC.@preserve cfg ccall((:moth_session_new, libmoth()), Int32,
        (Ptr{moth_config}, Csize_t, Int64, Int64, Int64, moth_device),
        cfg, Csize_t(n), c, h, w, device)
end
message(buf, len, needed) = GC.@preserve buf needed @ccall libmoth().moth_last_error(buf::Ptr{UInt8}, len::Csize_t, needed::Ref{Csize_t})::Int32
status_name(code) = unsafe_string(@ccall libmoth().moth_status_name(code::Int32)::Cstring)
log_fn() = @cfunction(on_log, Cvoid, (Int32, Cstring, Ptr{Cvoid}))  # moth_log_fn
# Not a call, in a comment: @ccall libmoth().moth_nope()::Cvoid
#= nor in a block comment: @ccall libmoth().moth_nope()::Cvoid =#
s = "nor in a string: $(f("@ccall libmoth().moth_nope()::Cvoid")) 'x' $(x)"
"#;

    fn julia(text: &str) -> Vec<(String, String)> {
        vec![("Fake.jl".to_string(), text.to_string())]
    }

    /// The errors of GOOD with `from` replaced by `to` (which must occur).
    fn errors_with(from: &str, to: &str) -> Vec<String> {
        assert!(GOOD.contains(from), "the seed `{from}` is not in GOOD");
        check(HEADER, &julia(&GOOD.replacen(from, to, 1)), &[]).errors
    }

    /// Asserts that one of `errors` contains every one of `needles`.
    fn caught(errors: &[String], needles: &[&str]) {
        assert!(
            errors.iter().any(|e| needles.iter().all(|n| e.contains(n))),
            "no error contains {needles:?}; errors: {errors:#?}"
        );
    }

    #[test]
    fn the_correct_binding_passes() {
        let r = check(HEADER, &julia(GOOD), &[]);
        assert!(r.errors.is_empty(), "{:#?}", r.errors);
        assert_eq!(r.calls, 5);
        assert_eq!(r.wrapped.len(), 5);
        assert_eq!(r.not_wrapped, 1);
        assert_eq!((r.structs, r.constants, r.cfunctions), (1, 3, 1));
    }

    #[test]
    fn swapped_arguments_of_different_types() {
        let e = errors_with(
            "cfg::Ptr{moth_config}, key::Cstring, value::Int64",
            "cfg::Ptr{moth_config}, value::Int64, key::Cstring",
        );
        caught(
            &e,
            &[
                "moth_config_set_int argument 2 (`key`",
                "Julia `Int64`, expected `Cstring`",
            ],
        );
        caught(
            &e,
            &[
                "argument 3 (`value`",
                "Julia `Cstring`, expected `Int64 or Clonglong`",
            ],
        );
        caught(
            &e,
            &["argument 2 is `key` in C, but the Julia call passes `value`"],
        );
    }

    #[test]
    fn swapped_arguments_of_the_same_type() {
        let e = errors_with("Csize_t(n), c, h, w, device", "Csize_t(n), h, c, w, device");
        caught(
            &e,
            &["moth_session_new argument 3 is `c` in C, but the Julia call passes `h`"],
        );
        caught(
            &e,
            &["argument 4 is `h` in C, but the Julia call passes `c`"],
        );
    }

    #[test]
    fn int_for_int32() {
        let e = errors_with("code::Int32", "code::Int");
        caught(
            &e,
            &[
                "moth_status_name argument 1",
                "Julia `Int`, expected `Int32 or Cint`",
            ],
        );
        let e = errors_with(")::Int32\nend\nset_int", ")::Int\nend\nset_int");
        caught(
            &e,
            &["moth_config_new returns C `moth_status`: Julia `Int`, expected `Int32 or Cint`"],
        );
    }

    #[test]
    fn uint64_for_size_t_and_cstring_for_a_buffer() {
        let e = errors_with("len::Csize_t, needed", "len::UInt64, needed");
        caught(&e, &["moth_last_error argument 2 (`len`, C `size_t`): Julia `UInt64`, expected `Csize_t`"]);
        let e = errors_with("buf::Ptr{UInt8}", "buf::Cstring");
        caught(
            &e,
            &[
                "moth_last_error argument 1 (`buf`, C `char *`)",
                "expected `Ptr{UInt8}`",
            ],
        );
    }

    #[test]
    fn a_missing_export() {
        let e = errors_with("    :moth_abi_version => \"read by the loader\",\n", "");
        caught(
            &e,
            &["moth_abi_version is exported by include/moth.h but has no Julia wrapper"],
        );
        let e = errors_with("\"read by the loader\"", "\"\"");
        caught(&e, &["moth_abi_version is in NOT_WRAPPED without a reason"]);
        let e = errors_with(
            "status_name(code) = unsafe_string(@ccall libmoth().moth_status_name(code::Int32)::Cstring)",
            "",
        );
        caught(
            &e,
            &["moth_status_name is exported by include/moth.h but has no Julia wrapper"],
        );
    }

    #[test]
    fn stale_or_contradicting_not_wrapped_entries() {
        let e = errors_with(
            "    :moth_abi_version",
            "    :moth_gone => \"removed\",\n    :moth_abi_version",
        );
        caught(
            &e,
            &["NOT_WRAPPED lists `moth_gone`, which is not in include/moth.h"],
        );
        let e = errors_with(
            "    :moth_abi_version",
            "    :moth_status_name => \"why\",\n    :moth_abi_version",
        );
        caught(
            &e,
            &["moth_status_name is listed in NOT_WRAPPED but the binding calls it"],
        );
    }

    #[test]
    fn a_function_the_header_does_not_have() {
        let e = errors_with("moth_config_set_int(cfg", "moth_config_set_integer(cfg");
        caught(
            &e,
            &["`moth_config_set_integer` is not a function of include/moth.h"],
        );
    }

    #[test]
    fn argument_counts() {
        let e = errors_with(", value::Int64)::Int32", ")::Int32");
        caught(
            &e,
            &["moth_config_set_int takes 3 arguments in C, the Julia call declares 2"],
        );
        let e = errors_with("h, w, device)\nend", "h, w)\nend");
        caught(&e, &["moth_session_new: 6 argument types but 5 values"]);
    }

    #[test]
    fn pointee_types() {
        let e = errors_with("out::Ref{Ptr{moth_config}}", "out::Ref{Ptr{Cvoid}}");
        caught(
            &e,
            &[
                "moth_config_new argument 1",
                "expected `Ref{Ptr{moth_config}}`",
            ],
        );
        let e = errors_with("out::Ref{Ptr{moth_config}}", "out::Ptr{moth_config}");
        caught(&e, &["moth_config_new argument 1", "expected `Ptr{Ptr{"]);
        let e = errors_with("mutable struct moth_config end\n", "");
        caught(&e, &["declared as `mutable struct moth_config end`"]);
    }

    #[test]
    fn struct_mirrors() {
        let e = errors_with("    kind::Int32\n", "    kind::Int64\n");
        caught(
            &e,
            &["struct moth_device field 1 (`type`, C `int32_t`): Julia `kind::Int64`"],
        );
        let e = errors_with("struct moth_device", "mutable struct moth_device");
        caught(
            &e,
            &["struct moth_device is passed by value, so it must be an immutable"],
        );
        let e = errors_with("    index::Int32\n", "");
        caught(&e, &["struct moth_device has 2 fields in C, 1 in Julia"]);
    }

    #[test]
    fn constants() {
        let e = errors_with("NULL_POINTER = Int32(-1)", "NULL_POINTER = Int32(-2)");
        caught(
            &e,
            &["const MOTH_STATUS_NULL_POINTER = -2, but include/moth.h says -1"],
        );
        let e = errors_with("const MOTH_STATUS_OK = Int32(0)\n", "");
        caught(
            &e,
            &["MOTH_STATUS_OK (= 0 in include/moth.h) has no Julia `const MOTH_STATUS_OK`"],
        );
    }

    #[test]
    fn a_call_outside_gc_preserve() {
        let e = errors_with("st = GC.@preserve out @ccall", "st = @ccall");
        caught(
            &e,
            &["moth_config_new takes a pointer, but the call is not inside `GC.@preserve`"],
        );
    }

    #[test]
    fn callbacks() {
        let e = errors_with(
            "(Int32, Cstring, Ptr{Cvoid}))",
            "(Int64, Cstring, Ptr{Cvoid}))",
        );
        caught(
            &e,
            &["moth_log_fn argument 1 (`level`, C `int32_t`): Julia `Int64`"],
        );
        let e = errors_with("(Int32, Cstring, Ptr{Cvoid}))", "(Int32, Cstring))");
        caught(
            &e,
            &["moth_log_fn takes 3 arguments in C, the @cfunction declares 2"],
        );
        let e = errors_with("  # moth_log_fn", "");
        caught(
            &e,
            &["@cfunction without a comment naming the C callback type"],
        );
        let e = errors_with("Cvoid, (Int32, Cstring", "Int32, (Int32, Cstring");
        caught(
            &e,
            &["moth_log_fn returns C `void`: Julia `Int32`, expected `Cvoid`"],
        );
    }
}
