//! The C ABI (`src/ffi`, `include/moth.h`): the header is current and
//! compiles, every export runs inside the panic boundary, the C and C++
//! examples build and run against `libmoth.so` (the C one under valgrind
//! too), and the exported functions behave as documented when called
//! directly from Rust: NULL pointers, wrong shapes, dtypes and labels, wrong
//! phases, invalid configuration, callbacks that fail or re-enter, panics,
//! checkpoints, logging and several threads on one session.
//!
//! Maintenance: `cargo test --release --test c_abi -- --ignored regenerate_header`
//! rewrites include/moth.h (scripts/gen-header.sh does that);
//! `cargo test --release --test c_abi -- --ignored --nocapture overhead`
//! measures the cost of a call through the C ABI against the Rust API.

use std::cell::Cell;
use std::ffi::{c_char, c_void, CStr, CString};
use std::path::PathBuf;
use std::process::Command;
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use moth::ffi::buffer::*;
use moth::ffi::classifier::*;
use moth::ffi::config::*;
use moth::ffi::log::*;
use moth::ffi::session::*;
use moth::ffi::status::*;
use moth::ffi::tensor::*;
use moth::ffi::version::*;
use tch::{Device, Kind, Tensor};

mod common;
mod native;
use native::*;

type S = moth_status;

// ---------------------------------------------------------------- helpers

/// One libtorch thread in this test process: tests run two at a time on
/// two cores, and OpenMP workers spinning against each other (or against
/// another build) made runs 5-10x slower. Example programs get
/// OMP_NUM_THREADS=1 for the same reason.
fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| tch::set_num_threads(1));
}

/// Scratch folder for compiled examples, models and checkpoints.
fn work_dir() -> PathBuf {
    scratch_dir("c_abi")
}

fn cstring(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn thread_error() -> String {
    let mut buf = vec![0 as c_char; 4096];
    let mut needed = 0;
    // SAFETY: buffer of buf.len() bytes, needed is writable.
    let st = unsafe { moth_last_error(buf.as_mut_ptr(), buf.len(), &mut needed) };
    assert_eq!(st, S::Ok);
    // SAFETY: NUL-terminated by moth.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

fn session_error(s: *const moth_session) -> String {
    let mut buf = vec![0 as c_char; 4096];
    let mut needed = 0;
    // SAFETY: as above.
    let st = unsafe { moth_session_last_error(s, buf.as_mut_ptr(), buf.len(), &mut needed) };
    assert_eq!(st, S::Ok);
    // SAFETY: NUL-terminated by moth.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// Asserts a status and that the thread's last error mentions `needle`.
#[track_caller]
fn expect(st: S, want: S, needle: &str) {
    assert_eq!(st, want, "last error: {}", thread_error());
    if !needle.is_empty() {
        let msg = thread_error();
        assert!(msg.contains(needle), "'{msg}' should mention '{needle}'");
    }
}

const CPU: moth_device = moth_device {
    type_: MOTH_DEVICE_TYPE_CPU,
    index: 0,
};

const SIDE: i64 = 4;
const PIXELS: i64 = SIDE * SIDE;

/// The user data of the Rust forward callback: a fixed linear classifier on
/// 1x4x4 images with three classes (class 1 fires on pixel 0, class 2 on
/// pixels 12..16), plus switches for the failure tests.
struct Linear {
    w: Tensor,
    b: Tensor,
    fail_with: Option<i32>,
    /// Return 0 without storing logits.
    null_logits: bool,
    /// Switch grad mode off (and leave it off) before answering.
    grad_off: bool,
    reenter: *mut moth_session,
    reenter_status: Cell<Option<S>>,
    calls: AtomicUsize,
    train_calls: AtomicUsize,
}

impl Linear {
    fn new() -> Box<Linear> {
        let mut w = vec![0f32; 3 * PIXELS as usize];
        w[PIXELS as usize] = 20.0;
        for p in 12..16 {
            w[2 * PIXELS as usize + p] = 5.0;
        }
        Box::new(Linear {
            w: Tensor::from_slice(&w).reshape([3, PIXELS]),
            b: Tensor::from_slice(&[0f32, -10.0, -10.0]),
            fail_with: None,
            null_logits: false,
            grad_off: false,
            reenter: null_mut(),
            reenter_status: Cell::new(None),
            calls: AtomicUsize::new(0),
            train_calls: AtomicUsize::new(0),
        })
    }
}

unsafe extern "C" fn linear_forward(
    user: *mut c_void,
    input: *const moth_tensor,
    logits_out: *mut *mut moth_tensor,
) -> i32 {
    // SAFETY: `user` is the Linear registered with the classifier.
    let m = unsafe { &*(user as *const Linear) };
    m.calls.fetch_add(1, Ordering::Relaxed);
    if m.grad_off {
        std::mem::forget(moth::torch::grad::GradGuard::set(false));
    }
    if m.null_logits {
        return 0;
    }
    if let Some(code) = m.fail_with {
        // SAFETY: a static C string.
        let _ = unsafe { moth_callback_set_error(c"model exploded".as_ptr()) };
        return code;
    }
    if !m.reenter.is_null() {
        let mut step = 0u64;
        // SAFETY: the session calling us; moth must refuse with BUSY.
        m.reenter_status
            .set(Some(unsafe { moth_session_step(m.reenter, &mut step) }));
    }
    let mut p: *mut c_void = null_mut();
    // SAFETY: `input` is the handle moth lent us.
    if unsafe { moth_tensor_to_at_tensor(input, &mut p) } != S::Ok {
        return -1;
    }
    // SAFETY: `p` is the at::Tensor inside `input`, alive for this call.
    let x = unsafe { Tensor::clone_from_ptr(p.cast()) };
    let mut y = x.flatten(1, -1).matmul(&m.w.tr()) + &m.b;
    // SAFETY: `y` is a live at::Tensor; moth takes its own reference.
    unsafe { moth_tensor_from_at_tensor(y.as_mut_ptr().cast(), logits_out) as i32 }
}

unsafe extern "C" fn linear_set_train(user: *mut c_void, _train: bool) -> i32 {
    // SAFETY: as above.
    let m = unsafe { &*(user as *const Linear) };
    m.train_calls.fetch_add(1, Ordering::Relaxed);
    0
}

static FREED: AtomicUsize = AtomicUsize::new(0);

unsafe extern "C" fn free_linear(user: *mut c_void) {
    FREED.fetch_add(1, Ordering::Relaxed);
    // SAFETY: the Box leaked in `classifier`.
    drop(unsafe { Box::from_raw(user as *mut Linear) });
}

/// A callback classifier over a Linear (moth frees the Linear).
fn classifier_with(m: Box<Linear>) -> *mut moth_classifier {
    init();
    let mut c = null_mut();
    let user = Box::into_raw(m);
    // SAFETY: valid callbacks and out-pointer.
    let st = unsafe {
        moth_classifier_from_callback(
            Some(linear_forward),
            Some(linear_set_train),
            user.cast(),
            Some(free_linear),
            CPU,
            &mut c,
        )
    };
    assert_eq!(st, S::Ok);
    c
}

fn classifier() -> *mut moth_classifier {
    classifier_with(Linear::new())
}

fn tensor(t: &Tensor) -> *mut moth_tensor {
    init();
    let mut t = t.shallow_clone();
    let mut out = null_mut();
    // SAFETY: live tensor, valid out-pointer.
    let st = unsafe { moth_tensor_from_at_tensor(t.as_mut_ptr().cast(), &mut out) };
    assert_eq!(st, S::Ok);
    out
}

fn to_tch(t: *const moth_tensor) -> Tensor {
    let mut p = null_mut();
    // SAFETY: live handle.
    assert_eq!(unsafe { moth_tensor_to_at_tensor(t, &mut p) }, S::Ok);
    // SAFETY: the at::Tensor inside the handle.
    unsafe { Tensor::clone_from_ptr(p.cast()) }
}

/// `per_class` images of each of the three classes, labelled.
fn batch(per_class: i64, seed: i64) -> (Tensor, Tensor) {
    let n = 3 * per_class;
    // Not tch::rand: see common::uniform.
    let x = common::dark_images(n, seed);
    let flat = x.view([n, PIXELS]);
    let _ = flat
        .narrow(0, per_class, per_class)
        .narrow(1, 0, 1)
        .fill_(1.0);
    let _ = flat
        .narrow(0, 2 * per_class, per_class)
        .narrow(1, 12, 4)
        .fill_(1.0);
    let y = Tensor::arange(3, (Kind::Int64, Device::Cpu))
        .repeat_interleave_self_int(per_class, 0, None);
    (x, y)
}

fn config(json: &str) -> *mut moth_config {
    let mut c = null_mut();
    // SAFETY: valid out-pointer and string.
    unsafe {
        assert_eq!(moth_config_new(&mut c), S::Ok);
        let j = cstring(json);
        assert_eq!(
            moth_config_set_json(c, j.as_ptr()),
            S::Ok,
            "{}",
            thread_error()
        );
    }
    c
}

/// Small budgets so that a step on the 3-class model takes milliseconds.
const QUICK: &str = r#"{"seed": 5, "accuracy_every": 0, "portion": 0.5,
    "warmup": {"budget": {"steps": 20}}, "first": {"steps": 10}, "later": {"steps": 5}}"#;

fn session(json: &str) -> *mut moth_session {
    init();
    let c = config(json);
    let mut s = null_mut();
    // SAFETY: valid config and out-pointer.
    let st = unsafe { moth_session_new(c, 3, 1, SIDE, SIDE, &mut s) };
    assert_eq!(st, S::Ok, "{}", thread_error());
    // SAFETY: made above.
    unsafe { moth_config_free(c) };
    s
}

/// One harden_batch call through the C ABI; returns the status and frees
/// the stamped output.
fn harden(s: *mut moth_session, clf: *mut moth_classifier, x: &Tensor, y: &Tensor) -> S {
    let (xt, yt) = (tensor(x), tensor(y));
    let mut out = null_mut();
    // SAFETY: live handles.
    let st = unsafe { moth_session_harden_batch(s, clf, xt, yt, &mut out) };
    if st == S::Ok {
        assert!(!out.is_null());
    } else {
        assert!(out.is_null(), "out-parameter written on failure");
    }
    // SAFETY: handles made above (NULL is fine).
    unsafe {
        moth_tensor_free(out);
        moth_tensor_free(xt);
        moth_tensor_free(yt);
    }
    st
}

fn step_of(s: *const moth_session) -> u64 {
    let mut n = u64::MAX;
    // SAFETY: live session.
    assert_eq!(unsafe { moth_session_step(s, &mut n) }, S::Ok);
    n
}

// ---------------------------------------------------------------- header

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

/// A minimal Rust lexer: the byte ranges of code outside comments, string
/// and char literals are what brace and paren matching may look at.
fn code_mask(src: &[u8]) -> Vec<bool> {
    let mut code = vec![true; src.len()];
    let mut i = 0;
    while i < src.len() {
        let rest = &src[i..];
        let start = i;
        if rest.starts_with(b"//") {
            while i < src.len() && src[i] != b'\n' {
                i += 1;
            }
        } else if rest.starts_with(b"/*") {
            i += 2;
            while i + 1 < src.len() && !(src[i] == b'*' && src[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
        } else if rest.starts_with(b"r#\"") || rest.starts_with(b"r\"") {
            let hashes = rest[1..].iter().take_while(|&&c| c == b'#').count();
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat(b'#').take(hashes))
                .collect();
            i += 2 + hashes;
            while i < src.len() && !src[i..].starts_with(&close) {
                i += 1;
            }
            i += close.len();
        } else if rest[0] == b'"' {
            i += 1;
            while i < src.len() && src[i] != b'"' {
                i += if src[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
        } else if rest[0] == b'\'' && rest.len() > 2 && (rest[2] == b'\'' || rest[1] == b'\\') {
            // a char literal ('x' or '\n'); lifetimes ('a) are left alone
            i += 1;
            while i < src.len() && src[i] != b'\'' {
                i += if src[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
        } else {
            i += 1;
            continue;
        }
        for c in code.iter_mut().take(i.min(src.len())).skip(start) {
            *c = false;
        }
    }
    code
}

/// Position just after the bracket matching the one at `open`.
fn matching(src: &[u8], code: &[bool], open: usize) -> usize {
    let (o, c) = match src[open] {
        b'(' => (b'(', b')'),
        b'{' => (b'{', b'}'),
        other => panic!("not a bracket: {}", other as char),
    };
    let mut depth = 0;
    for i in open..src.len() {
        if !code[i] {
            continue;
        }
        if src[i] == o {
            depth += 1;
        } else if src[i] == c {
            depth -= 1;
            if depth == 0 {
                return i + 1;
            }
        }
    }
    panic!("unbalanced bracket");
}

/// Every `extern "C" fn` defined in src/ffi: (file, name, exported, body).
fn extern_fns() -> Vec<(String, String, bool, String)> {
    let mut found = Vec::new();
    let dir = root().join("src/ffi");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let src = text.as_bytes();
        let code = code_mask(src);
        let needle = "extern \"C\" fn ";
        let mut from = 0;
        while let Some(pos) = text[from..].find(needle).map(|p| p + from) {
            from = pos + needle.len();
            if !code[pos] {
                continue;
            }
            let name: String = text[from..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if name.is_empty() {
                continue; // a function pointer type: `extern "C" fn(`
            }
            let line_start = text[..pos].rfind('\n').map_or(0, |p| p + 1);
            let attrs_start = text[..line_start].trim_end().rfind("\n\n").unwrap_or(0);
            let exported = text[attrs_start..line_start].contains("#[no_mangle]");
            let paren = from + text[from..].find('(').unwrap();
            let params_end = matching(src, &code, paren);
            let brace = params_end + text[params_end..].find('{').unwrap();
            let body_end = matching(src, &code, brace);
            let body = text[brace + 1..body_end - 1].to_string();
            found.push((
                f.file_name().unwrap().to_string_lossy().into_owned(),
                name,
                exported,
                body,
            ));
        }
    }
    found
}

#[test]
fn every_export_runs_inside_the_boundary() {
    let fns = extern_fns();
    assert!(fns.len() > 40, "found only {} functions", fns.len());
    for (file, name, _, body) in &fns {
        let b = body.trim();
        // rustfmt may break the invocation over lines: compare without spaces.
        let squeezed: String = b.chars().filter(|c| !c.is_whitespace()).collect();
        assert!(
            squeezed.starts_with(&format!("ffi_boundary!(\"{name}\",")),
            "{file}: {name} must consist of one ffi_boundary!(\"{name}\", ...) invocation, found: {}",
            &b[..b.len().min(80)]
        );
        let bytes = b.as_bytes();
        let code = code_mask(bytes);
        let open = b.find('(').unwrap();
        let end = matching(bytes, &code, open);
        assert!(
            b[end..].trim().is_empty(),
            "{file}: {name} has code outside its ffi_boundary! invocation: {:?}",
            b[end..].trim()
        );
    }
    // Every #[no_mangle] item is one of those functions, and every exported
    // function is declared in the header.
    let exported: Vec<&String> = fns.iter().filter(|f| f.2).map(|f| &f.1).collect();
    let mut no_mangle = 0;
    for e in std::fs::read_dir(root().join("src/ffi")).unwrap() {
        let t = std::fs::read_to_string(e.unwrap().path()).unwrap();
        no_mangle += t.matches("#[no_mangle]").count();
    }
    assert_eq!(
        no_mangle,
        exported.len(),
        "a #[no_mangle] item is not an extern \"C\" fn"
    );
    let header = std::fs::read_to_string(root().join("include/moth.h")).unwrap();
    let declared = header_functions(&header);
    let mut exported_sorted: Vec<String> = exported.iter().map(|s| s.to_string()).collect();
    exported_sorted.sort();
    assert_eq!(
        declared, exported_sorted,
        "header declarations vs exported functions"
    );
}

/// Names of the functions declared in the header (`... moth_x(` at the
/// start of a declaration, outside comments and typedefs).
fn header_functions(header: &str) -> Vec<String> {
    let mut names: Vec<String> = header
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with('/') && !l.starts_with('#'))
        .filter(|l| !l.starts_with("typedef") && !l.starts_with('}'))
        .filter_map(|l| {
            let open = l.find('(')?;
            let before = &l[..open];
            let start = before.rfind([' ', '*'])? + 1;
            let name = &before[start..];
            name.starts_with("moth_").then(|| name.to_string())
        })
        .collect();
    names.sort();
    names
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

// ---------------------------------------------------------------- examples

/// The TorchScript Fashion-MNIST classifier the examples harden.
fn example_model() -> PathBuf {
    init();
    static MODEL: OnceLock<PathBuf> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let path = work_dir().join("fmnist_cnn.pt");
            fashion_model(&path);
            path
        })
        .clone()
}

/// Compiles the C example (cached on source mtimes).
fn c_example() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let lib = libmoth();
        let bin = work_dir().join("harden");
        let sources = [
            root().join("examples/c/harden.c"),
            root().join("include/moth.h"),
            lib.clone(),
        ];
        if mtime(&bin) > newest(&sources) {
            return bin;
        }
        let (ok, out, err) = run(Command::new("gcc")
            .args([
                "-std=c99",
                "-Wall",
                "-Wextra",
                "-Wpedantic",
                "-Werror",
                "-O1",
                "-g",
            ])
            .arg(root().join("examples/c/harden.c"))
            .arg("-I")
            .arg(root().join("include"))
            .arg("-L")
            .arg(lib.parent().unwrap())
            .arg(format!("-Wl,-rpath,{}", lib.parent().unwrap().display()))
            .args(["-lmoth", "-lz", "-o"])
            .arg(&bin));
        assert!(ok, "compiling examples/c/harden.c failed:\n{out}{err}");
        bin
    })
    .clone()
}

#[test]
fn c_example_runs() {
    let bin = c_example();
    let model = example_model();
    let ckpt = work_dir().join("harden-c.ckpt");
    let t = Instant::now();
    let (ok, out, err) = run(Command::new(&bin)
        .arg(&model)
        .args([
            "--images",
            "400",
            "--batch",
            "64",
            "--steps",
            "14",
            "--checkpoint",
        ])
        .arg(&ckpt));
    println!("{out}\n{err}\n({:.1} s)", t.elapsed().as_secs_f64());
    assert!(ok, "harden failed:\n{out}\n{err}");
    for needle in [
        "moth 0.",
        "loaded 400 Fashion-MNIST images",
        "accuracy ",
        "step 0 warmup target 0 | -1->0 size",
        "step 9 warmup target 9",
        "step 10 orthogonalize pair ",
        "checkpoint: saved at step 7, resumed at step 7",
        "session done after 14 steps",
        "pairs chosen",
        "ok",
    ] {
        assert!(out.contains(needle), "output lacks '{needle}':\n{out}");
    }
    assert!(
        err.contains("[moth info] step 13 ("),
        "log callback output:\n{err}"
    );
}

fn tool_available(name: &str) -> bool {
    Command::new(name)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The one-line builds documented in examples/README.md: the pkg-config
/// file made from cmake/moth.pc.in, and the CMake package in cmake/.
#[test]
fn c_example_builds_with_pkg_config_and_cmake() {
    let lib = libmoth();
    let model = example_model();
    let dir = work_dir().join("pkgconfig");
    std::fs::create_dir_all(&dir).unwrap();
    let template = std::fs::read_to_string(root().join("cmake/moth.pc.in")).unwrap();
    let pc = template
        .replace("@MOTH_ROOT@", root().to_str().unwrap())
        .replace("@TORCH_ROOT@", libtorch_root().to_str().unwrap())
        .replace("@MOTH_VERSION@", env!("CARGO_PKG_VERSION"));
    std::fs::write(dir.join("moth.pc"), pc).unwrap();
    if tool_available("pkg-config") {
        let flags = |args: &[&str]| -> Vec<String> {
            let (ok, out, err) = run(Command::new("pkg-config")
                .env("PKG_CONFIG_PATH", &dir)
                // the library cargo test just linked (see lib_dir)
                .arg(format!(
                    "--define-variable=libdir={}",
                    lib.parent().unwrap().display()
                ))
                .args(args)
                .arg("moth"));
            assert!(ok, "pkg-config failed: {err}");
            out.split_whitespace().map(String::from).collect()
        };
        let (ok, out, _) = run(Command::new("pkg-config")
            .env("PKG_CONFIG_PATH", &dir)
            .args(["--modversion", "moth"]));
        assert!(ok && out.trim() == env!("CARGO_PKG_VERSION"), "{out}");
        let bin = work_dir().join("harden-pkgconfig");
        let (ok, out, err) = run(Command::new("gcc")
            .args(["-std=c99", "-O1"])
            .arg(root().join("examples/c/harden.c"))
            .args(flags(&["--cflags", "--libs"]))
            .args(["-lz", "-o"])
            .arg(&bin));
        assert!(ok, "build with pkg-config failed:\n{out}{err}");
        let (ok, out, err) = run(Command::new(&bin)
            .arg(&model)
            .args([
                "--images",
                "40",
                "--batch",
                "20",
                "--steps",
                "1",
                "--checkpoint",
            ])
            .arg(work_dir().join("harden-pc.ckpt")));
        assert!(ok && out.contains("ok"), "{out}\n{err}");
        assert!(
            !flags(&["--variable=torch_libs"]).is_empty(),
            "torch_libs variable"
        );
    } else {
        eprintln!("pkg-config not installed: pkg-config build skipped");
    }
    if tool_available("cmake") && release_dir().join("libmoth.so").exists() {
        let build = work_dir().join("cmake-c");
        let _ = std::fs::remove_dir_all(&build);
        let (ok, out, err) = run(Command::new("cmake")
            .arg("-S")
            .arg(root().join("examples/c"))
            .arg("-B")
            .arg(&build)
            .arg(format!("-Dmoth_DIR={}", root().join("cmake").display())));
        assert!(ok, "cmake configure failed:\n{out}{err}");
        let (ok, out, err) = run(Command::new("cmake").arg("--build").arg(&build));
        assert!(ok, "cmake build failed:\n{out}{err}");
        assert!(build.join("harden").exists());
    } else {
        eprintln!("cmake or target/release/libmoth.so missing: CMake build skipped");
    }
}

fn valgrind_available() -> bool {
    tool_available("valgrind")
}

/// The C example under valgrind (memcheck): no invalid reads or writes and
/// no definitely-lost blocks, with a short run (valgrind makes libtorch ~50x
/// slower). libtorch's and glibc's own one-time allocations are suppressed
/// by tests/c/valgrind.supp.
#[test]
fn c_example_under_valgrind() {
    if !valgrind_available() {
        eprintln!("valgrind not installed: skipped");
        return;
    }
    let bin = c_example();
    let model = example_model();
    let log = work_dir().join("valgrind.log");
    let t = Instant::now();
    let (ok, out, err) = run(Command::new("valgrind")
        .args([
            "--error-exitcode=99",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite,indirect",
            "--show-leak-kinds=definite,indirect",
        ])
        .arg(format!(
            "--suppressions={}",
            root().join("tests/c/valgrind.supp").display()
        ))
        .arg(format!("--log-file={}", log.display()))
        .arg(&bin)
        .arg(&model)
        .args([
            "--images",
            "40",
            "--batch",
            "20",
            "--steps",
            "2",
            "--config",
            r#"{"warmup": {"budget": {"steps": 1}, "pool_per_class": 1}, "accuracy_every": 2}"#,
            "--checkpoint",
        ])
        .arg(work_dir().join("valgrind.ckpt")));
    let report = std::fs::read_to_string(&log).unwrap_or_default();
    let summary: Vec<&str> = report
        .lines()
        .filter(|l| l.contains("ERROR SUMMARY") || l.contains("definitely lost"))
        .collect();
    println!("{summary:?} ({:.1} s)", t.elapsed().as_secs_f64());
    assert!(
        ok,
        "valgrind found errors (see {}):\n{out}\n{err}\n{}",
        log.display(),
        report
            .lines()
            .rev()
            .take(80)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(out.contains("ok"), "{out}\n{err}");
    assert!(report.contains("ERROR SUMMARY: 0 errors"), "{report}");
}

/// Compiles the C++ trainer: the object file is cached on the sources'
/// mtimes (a libtorch C++ compile takes 20-60 s here), the link redone when
/// the library changed.
fn cpp_example() -> PathBuf {
    let lib = libmoth();
    let obj = work_dir().join("trainer.o");
    let bin = work_dir().join("trainer");
    let sources = [
        root().join("examples/cpp/trainer.cpp"),
        root().join("bindings/cpp/moth.hpp"),
        root().join("include/moth.h"),
    ];
    let torch = libtorch_root().join("lib");
    let inc = libtorch_root().join("include");
    if mtime(&obj) <= newest(&sources) {
        let (ok, out, err) = run(Command::new("g++")
            .args([
                "-std=c++17",
                "-O1",
                "-D_GLIBCXX_USE_CXX11_ABI=1",
                "-w",
                "-c",
            ])
            .arg(root().join("examples/cpp/trainer.cpp"))
            .arg("-I")
            .arg(&inc)
            .arg("-I")
            .arg(inc.join("torch/csrc/api/include"))
            .arg("-I")
            .arg(root().join("include"))
            .arg("-I")
            .arg(root().join("bindings/cpp"))
            .arg("-o")
            .arg(&obj));
        assert!(ok, "compiling examples/cpp/trainer.cpp failed:\n{out}{err}");
    }
    if mtime(&bin) <= mtime(&obj).max(mtime(&lib)) {
        let (ok, out, err) = run(Command::new("g++")
            .arg(&obj)
            .arg("-L")
            .arg(lib.parent().unwrap())
            .arg("-L")
            .arg(&torch)
            .arg(format!(
                "-Wl,-rpath,{}:{}",
                lib.parent().unwrap().display(),
                torch.display()
            ))
            .args(["-lmoth", "-ltorch_cpu", "-lc10", "-lz", "-o"])
            .arg(&bin));
        assert!(ok, "linking the C++ trainer failed:\n{out}{err}");
    }
    bin
}

/// The trainer's CUDA path (`-DMOTH_EXAMPLE_CUDA`: its own stream, handed
/// to moth or made current, and the per-forward stream check) cannot run
/// without a GPU, but it must keep compiling, warning-free, against the
/// libtorch and CUDA runtime headers that `scripts/setup.sh` installs.
#[test]
fn cpp_example_cuda_path_compiles() {
    let cuda = root().join(".cuda-include");
    assert!(
        cuda.join("crt/host_config.h").exists(),
        "{} lacks the CUDA runtime headers: run ./scripts/setup.sh",
        cuda.display()
    );
    let inc = libtorch_root().join("include");
    let (ok, out, err) = run(Command::new("g++")
        .args(["-std=c++17", "-fsyntax-only", "-D_GLIBCXX_USE_CXX11_ABI=1"])
        .args(["-DMOTH_EXAMPLE_CUDA", "-Wall", "-Wextra", "-Werror"])
        .arg("-isystem")
        .arg(&inc)
        .arg("-isystem")
        .arg(inc.join("torch/csrc/api/include"))
        .arg("-isystem")
        .arg(&cuda)
        .arg("-I")
        .arg(root().join("include"))
        .arg("-I")
        .arg(root().join("bindings/cpp"))
        .arg(root().join("examples/cpp/trainer.cpp")));
    assert!(
        ok,
        "the CUDA path of trainer.cpp does not compile:\n{out}{err}"
    );
}

#[test]
fn cpp_example_runs() {
    let t = Instant::now();
    let bin = cpp_example();
    let compiled = t.elapsed().as_secs_f64();
    let prefix = work_dir().join("trainer-ckpt");
    let (ok, out, err) = run(Command::new(&bin)
        .args([
            "--train",
            "640",
            "--test",
            "200",
            "--pretrain-epochs",
            "1",
            "--steps",
            "14",
            "--checkpoint",
        ])
        .arg(&prefix));
    println!(
        "{out}\n{err}\n(compile {compiled:.1} s, run {:.1} s)",
        t.elapsed().as_secs_f64() - compiled
    );
    assert!(ok, "trainer failed:\n{out}\n{err}");
    for needle in [
        "pretrain epoch 0: test accuracy",
        "accuracy ",
        "step 0 warmup target 0",
        "step 10 orthogonalize pair ",
        "checkpoint: saved at step 7, resumed at step 7",
        "session done at step 14",
        "ok",
    ] {
        assert!(out.contains(needle), "output lacks '{needle}':\n{out}");
    }
}

// ---------------------------------------------------------------- Rust-level

#[test]
fn null_pointers_are_refused_with_their_own_status() {
    let s = session(QUICK);
    let clf = classifier();
    let (x, y) = batch(4, 1);
    let (xt, yt) = (tensor(&x), tensor(&y));
    let cfg = config("{}");
    let key = cstring("seed");
    let mut buf = [0 as c_char; 64];
    let mut n = 0usize;
    let mut dummy_t: *mut moth_tensor = null_mut();
    let mut p: *mut c_void = null_mut();
    let mut b = false;
    let mut u = 0u64;
    let mut f = 0f64;
    let mut i = 0i32;
    let shape = [2i64];
    let data = [1f32, 2.0];
    let path = cstring("/nonexistent/x");
    // SAFETY: each call passes live handles except the one NULL under test.
    unsafe {
        let cases: Vec<(S, &str)> = vec![
            (
                moth_last_error(buf.as_mut_ptr(), buf.len(), null_mut()),
                "needed",
            ),
            (moth_config_new(null_mut()), "out_config"),
            (moth_config_set_json(null_mut(), key.as_ptr()), "config"),
            (moth_config_set_json(cfg, null()), "json"),
            (moth_config_set_int(null_mut(), key.as_ptr(), 1), "config"),
            (moth_config_set_int(cfg, null(), 1), "key"),
            (moth_config_set_uint(cfg, null(), 1), "key"),
            (moth_config_set_double(cfg, null(), 1.0), "key"),
            (moth_config_set_string(cfg, key.as_ptr(), null()), "value"),
            (moth_config_set_string(cfg, null(), key.as_ptr()), "key"),
            (
                moth_config_to_json(null(), buf.as_mut_ptr(), buf.len(), &mut n),
                "config",
            ),
            (
                moth_config_to_json(cfg, buf.as_mut_ptr(), buf.len(), null_mut()),
                "needed",
            ),
            (
                moth_tensor_from_buffer(
                    null(),
                    MOTH_DTYPE_FLOAT32,
                    shape.as_ptr(),
                    1,
                    CPU,
                    &mut dummy_t,
                ),
                "data",
            ),
            (
                moth_tensor_from_buffer(
                    data.as_ptr().cast(),
                    MOTH_DTYPE_FLOAT32,
                    null(),
                    1,
                    CPU,
                    &mut dummy_t,
                ),
                "shape",
            ),
            (
                moth_tensor_from_buffer(
                    data.as_ptr().cast(),
                    MOTH_DTYPE_FLOAT32,
                    shape.as_ptr(),
                    1,
                    CPU,
                    null_mut(),
                ),
                "out_tensor",
            ),
            (
                moth_tensor_from_at_tensor(null_mut(), &mut dummy_t),
                "at_tensor",
            ),
            (moth_tensor_from_at_tensor(p, null_mut()), "out_tensor"),
            (moth_tensor_to_at_tensor(null(), &mut p), "tensor"),
            (moth_tensor_to_at_tensor(xt, null_mut()), "out_at_tensor"),
            (
                moth_tensor_copy_to_buffer(null(), buf.as_mut_ptr().cast(), 4),
                "tensor",
            ),
            (moth_tensor_copy_to_buffer(yt, null_mut(), 1000), "out_data"),
            (moth_tensor_shape(null(), null_mut(), 0, &mut n), "tensor"),
            (moth_tensor_shape(xt, null_mut(), 0, null_mut()), "out_ndim"),
            (moth_tensor_shape(xt, null_mut(), 8, &mut n), "shape"),
            (moth_tensor_dtype(null(), &mut i), "tensor"),
            (moth_tensor_dtype(xt, null_mut()), "out_dtype"),
            (moth_tensor_device(null(), null_mut()), "out_device"),
            (
                moth_classifier_from_torchscript(null(), 1, 4, 4, CPU, &mut null_mut()),
                "path",
            ),
            (
                moth_classifier_from_torchscript(path.as_ptr(), 1, 4, 4, CPU, null_mut()),
                "out_classifier",
            ),
            (
                moth_classifier_from_callback(None, None, null_mut(), None, CPU, &mut null_mut()),
                "forward",
            ),
            (
                moth_classifier_from_callback(
                    Some(linear_forward),
                    None,
                    null_mut(),
                    None,
                    CPU,
                    null_mut(),
                ),
                "out_classifier",
            ),
            (moth_classifier_set_train(null_mut(), true), "classifier"),
            (
                moth_classifier_forward(null_mut(), xt, &mut dummy_t),
                "classifier",
            ),
            (moth_classifier_forward(clf, null(), &mut dummy_t), "input"),
            (moth_classifier_forward(clf, xt, null_mut()), "out_logits"),
            (
                moth_classifier_save(null_mut(), path.as_ptr()),
                "classifier",
            ),
            (moth_classifier_save(clf, null()), "path"),
            (
                moth_session_new(null(), 3, 1, 4, 4, &mut null_mut()),
                "config",
            ),
            (moth_session_new(cfg, 3, 1, 4, 4, null_mut()), "out_session"),
            (
                moth_session_harden_batch(null_mut(), clf, xt, yt, &mut dummy_t),
                "session",
            ),
            (
                moth_session_harden_batch(s, null_mut(), xt, yt, &mut dummy_t),
                "classifier",
            ),
            (
                moth_session_harden_batch(s, clf, null(), yt, &mut dummy_t),
                "'x'",
            ),
            (
                moth_session_harden_batch(s, clf, xt, null(), &mut dummy_t),
                "'y'",
            ),
            (
                moth_session_harden_batch(s, clf, xt, yt, null_mut()),
                "stamped_out",
            ),
            (
                moth_session_last_report(null(), &mut std::mem::zeroed()),
                "session",
            ),
            (moth_session_last_report(s, null_mut()), "out_report"),
            (moth_session_wants_accuracy(null(), &mut b), "session"),
            (moth_session_wants_accuracy(s, null_mut()), "out_wanted"),
            (
                moth_session_report_accuracy(null_mut(), 0.5, &mut std::mem::zeroed(), &mut f),
                "session",
            ),
            (
                moth_session_report_accuracy(s, 0.5, null_mut(), &mut f),
                "out_verdict",
            ),
            (
                moth_session_phase(null(), &mut std::mem::zeroed()),
                "session",
            ),
            (moth_session_phase(s, null_mut()), "out_phase"),
            (moth_session_step(null(), &mut u), "session"),
            (moth_session_step(s, null_mut()), "out_step"),
            (moth_session_is_done(null(), &mut b), "session"),
            (moth_session_is_done(s, null_mut()), "out_done"),
            (
                moth_session_accuracy(null(), &mut std::mem::zeroed()),
                "session",
            ),
            (moth_session_accuracy(s, null_mut()), "out_accuracy"),
            (
                moth_session_spec(null(), &mut std::mem::zeroed()),
                "session",
            ),
            (moth_session_spec(s, null_mut()), "out_spec"),
            (
                moth_session_config_json(null(), buf.as_mut_ptr(), buf.len(), &mut n),
                "session",
            ),
            (
                moth_session_config_json(s, buf.as_mut_ptr(), 4096, null_mut()),
                "needed",
            ),
            (
                moth_session_matrix(null(), MOTH_MATRIX_SIZE, [0f64; 9].as_mut_ptr(), 9),
                "session",
            ),
            (
                moth_session_matrix(s, MOTH_MATRIX_SIZE, null_mut(), 9),
                "out_values",
            ),
            (
                moth_session_last_error(s, buf.as_mut_ptr(), buf.len(), null_mut()),
                "",
            ),
            (
                moth_session_set_log_callback(null_mut(), None, null_mut(), None),
                "session",
            ),
            (
                moth_session_set_cuda_stream(null_mut(), 0, null_mut()),
                "session",
            ),
            (
                moth_session_cuda_stream(null(), &mut 0, &mut null_mut()),
                "session",
            ),
            (
                moth_session_cuda_stream(s, null_mut(), &mut null_mut()),
                "out_device",
            ),
            (
                moth_session_cuda_stream(s, &mut 0, null_mut()),
                "out_stream",
            ),
            (moth_buffer_data(null(), &mut null(), &mut n), "buffer"),
            (moth_session_save(null(), path.as_ptr()), "session"),
            (moth_session_save(s, null()), "path"),
            (moth_session_to_buffer(null(), &mut null_mut()), "session"),
            (moth_session_to_buffer(s, null_mut()), "out_buffer"),
            (
                moth_session_load(null(), 3, 1, 4, 4, &mut null_mut()),
                "path",
            ),
            (
                moth_session_load(path.as_ptr(), 3, 1, 4, 4, null_mut()),
                "out_session",
            ),
            (
                moth_session_from_buffer(null(), 10, 3, 1, 4, 4, &mut null_mut()),
                "data",
            ),
            (
                moth_session_from_buffer([0u8].as_ptr(), 1, 3, 1, 4, 4, null_mut()),
                "out_session",
            ),
        ];
        for (k, (st, needle)) in cases.into_iter().enumerate() {
            assert_eq!(st, S::NullPointer, "case {k} ({needle})");
        }
        // Messages name the argument (checked on a few, thread and session).
        expect(
            moth_config_set_json(cfg, null()),
            S::NullPointer,
            "argument 'json' is NULL",
        );
        assert_eq!(moth_session_step(s, null_mut()), S::NullPointer);
        assert!(
            session_error(s).contains("argument 'out_step' is NULL"),
            "{}",
            session_error(s)
        );
        // The buffer getters: `needed` is reported, nothing is written.
        let st = moth_config_to_json(cfg, null_mut(), 0, &mut n);
        assert_eq!(st, S::BufferTooSmall);
        assert!(n > 100, "needed {n}");
        assert_eq!(
            moth_config_to_json(cfg, null_mut(), n, &mut n),
            S::NullPointer
        );
        // Out-parameters are zeroed on entry even when the call fails.
        let mut out_s: *mut moth_session = 0x10 as *mut moth_session;
        assert_eq!(
            moth_session_new(null(), 3, 1, 4, 4, &mut out_s),
            S::NullPointer
        );
        assert!(out_s.is_null());
        let mut out_u = 77u64;
        assert_eq!(moth_session_step(null(), &mut out_u), S::NullPointer);
        assert_eq!(out_u, 0);
        // Freeing NULL does nothing.
        moth_config_free(null_mut());
        moth_session_free(null_mut());
        moth_tensor_free(null_mut());
        moth_classifier_free(null_mut());
        moth_buffer_free(null_mut());

        moth_tensor_free(xt);
        moth_tensor_free(yt);
        moth_config_free(cfg);
        moth_classifier_free(clf);
        moth_session_free(s);
    }
}

#[test]
fn status_names_and_invalid_utf8() {
    // SAFETY: static strings.
    unsafe {
        let name = |st: i32| {
            CStr::from_ptr(moth_status_name(st))
                .to_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(name(0), "MOTH_STATUS_OK");
        assert_eq!(name(-8), "MOTH_STATUS_LABEL_OUT_OF_RANGE");
        assert_eq!(name(12345), "MOTH_STATUS_UNKNOWN");
        let header = std::fs::read_to_string(root().join("include/moth.h")).unwrap();
        for st in moth_status::all() {
            let n = name(*st as i32);
            assert!(
                header.contains(&format!("{n} = {},", *st as i32)),
                "{n} = {} not in the header",
                *st as i32
            );
        }
        let cfg = config("{}");
        let bad = [b's', 0xff, b'd', 0];
        expect(
            moth_config_set_int(cfg, bad.as_ptr().cast(), 1),
            S::InvalidUtf8,
            "argument 'key' is not valid UTF-8",
        );
        moth_config_free(cfg);
    }
}

#[test]
fn config_json_setters_and_errors() {
    let cfg = config("{}");
    let get = || -> serde_json::Value {
        let mut n = 0;
        // SAFETY: size query, then a buffer of that size.
        unsafe {
            assert_eq!(
                moth_config_to_json(cfg, null_mut(), 0, &mut n),
                S::BufferTooSmall
            );
            let mut buf = vec![0 as c_char; n];
            assert_eq!(moth_config_to_json(cfg, buf.as_mut_ptr(), n, &mut n), S::Ok);
            serde_json::from_str(CStr::from_ptr(buf.as_ptr()).to_str().unwrap()).unwrap()
        }
    };
    let defaults = get();
    assert_eq!(defaults["period"], 3);
    assert_eq!(defaults["warmup"]["budget"]["steps"], 500);
    let set_json = |j: &str| {
        let c = cstring(j);
        // SAFETY: live config, valid string.
        unsafe { moth_config_set_json(cfg, c.as_ptr()) }
    };
    // Partial nested documents merge.
    assert_eq!(
        set_json(r#"{"seed": 9, "warmup": {"budget": {"steps": 7}}}"#),
        S::Ok
    );
    let v = get();
    assert_eq!(v["seed"], 9);
    assert_eq!(v["warmup"]["budget"]["steps"], 7);
    assert_eq!(v["warmup"]["budget"]["asr_bound"], 0.99);
    assert_eq!(v["warmup"]["pool_per_class"], 10);
    // Rejections leave the configuration unchanged.
    for (j, needle) in [
        ("{not json", "invalid JSON"),
        (r#"{"bogus": 1}"#, "unknown field `bogus`"),
        (r#"{"warmup": {"bogus": 1}}"#, "unknown field `bogus`"),
        (r#"{"seed": "x"}"#, "invalid type"),
        (r#"{"period": 0}"#, "period must be at least 1"),
        (r#"{"portion": 2.0}"#, "portion must be in [0, 1]"),
        ("[1, 2]", "must be an object"),
    ] {
        expect(set_json(j), S::InvalidConfig, needle);
    }
    assert_eq!(get(), v);
    // Typed setters by dotted key.
    let k = |s: &str| cstring(s);
    // SAFETY: live config and strings.
    unsafe {
        assert_eq!(
            moth_config_set_int(cfg, k("warmup.budget.steps").as_ptr(), 11),
            S::Ok
        );
        assert_eq!(
            moth_config_set_uint(cfg, k("seed").as_ptr(), u64::MAX),
            S::Ok
        );
        assert_eq!(
            moth_config_set_double(cfg, k("portion").as_ptr(), 0.25),
            S::Ok
        );
        assert_eq!(
            moth_config_set_string(cfg, k("method").as_ptr(), k("Universal").as_ptr()),
            S::Ok
        );
        assert_eq!(
            moth_config_set_string(cfg, k("bounds.mode").as_ptr(), k("Growing").as_ptr()),
            S::Ok
        );
        expect(
            moth_config_set_int(cfg, k("nope").as_ptr(), 1),
            S::InvalidConfig,
            "unknown configuration key 'nope'",
        );
        expect(
            moth_config_set_int(cfg, k("warmup").as_ptr(), 1),
            S::InvalidConfig,
            "group of settings",
        );
        expect(
            moth_config_set_int(cfg, k("warmup..steps").as_ptr(), 1),
            S::InvalidConfig,
            "invalid key",
        );
        expect(
            moth_config_set_double(cfg, k("period").as_ptr(), 1.5),
            S::InvalidConfig,
            "period",
        );
        expect(
            moth_config_set_double(cfg, k("portion").as_ptr(), f64::NAN),
            S::InvalidConfig,
            "not a finite number",
        );
        expect(
            moth_config_set_string(cfg, k("method").as_ptr(), k("bogus").as_ptr()),
            S::InvalidConfig,
            "unknown variant",
        );
        expect(
            moth_config_set_int(cfg, k("max_steps").as_ptr(), -1),
            S::InvalidConfig,
            "max_steps",
        );
    }
    let v = get();
    assert_eq!(v["warmup"]["budget"]["steps"], 11);
    assert_eq!(v["seed"], u64::MAX);
    assert_eq!(v["portion"], 0.25);
    assert_eq!(v["method"], "Universal");
    assert_eq!(v["bounds"]["mode"], "Growing");
    // A session copies the configuration; its JSON is the same.
    let mut s = null_mut();
    // SAFETY: live config.
    unsafe {
        assert_eq!(moth_session_new(cfg, 3, 1, 4, 4, &mut s), S::Ok);
        let mut buf = vec![0 as c_char; 4096];
        let mut n = 0;
        assert_eq!(
            moth_session_config_json(s, buf.as_mut_ptr(), buf.len(), &mut n),
            S::Ok
        );
        let sv: serde_json::Value =
            serde_json::from_str(CStr::from_ptr(buf.as_ptr()).to_str().unwrap()).unwrap();
        assert_eq!(sv, v);
        let mut spec = std::mem::zeroed();
        assert_eq!(moth_session_spec(s, &mut spec), S::Ok);
        assert_eq!(
            spec,
            moth_spec {
                num_classes: 3,
                c: 1,
                h: 4,
                w: 4
            }
        );
        moth_session_free(s);
        // Invalid specs are configuration errors.
        expect(
            moth_session_new(cfg, 1, 1, 4, 4, &mut s),
            S::InvalidConfig,
            "between 2 and",
        );
        expect(
            moth_session_new(cfg, 3, 0, 4, 4, &mut s),
            S::InvalidConfig,
            "must be positive",
        );
        moth_config_free(cfg);
    }
}

#[test]
fn tensors_round_trip_and_share_storage() {
    // SAFETY: buffers of the stated sizes, live handles.
    unsafe {
        let shape = [2i64, 3];
        macro_rules! round_trip {
            ($t:ty, $dtype:expr, $vals:expr) => {{
                let vals: [$t; 6] = $vals;
                let mut h = null_mut();
                assert_eq!(
                    moth_tensor_from_buffer(
                        vals.as_ptr().cast(),
                        $dtype,
                        shape.as_ptr(),
                        2,
                        CPU,
                        &mut h
                    ),
                    S::Ok
                );
                let mut back: [$t; 6] = Default::default();
                assert_eq!(
                    moth_tensor_copy_to_buffer(
                        h,
                        back.as_mut_ptr().cast(),
                        std::mem::size_of_val(&back)
                    ),
                    S::Ok
                );
                assert_eq!(back, vals);
                let mut d = -1;
                assert_eq!(moth_tensor_dtype(h, &mut d), S::Ok);
                assert_eq!(d, $dtype);
                expect(
                    moth_tensor_copy_to_buffer(h, back.as_mut_ptr().cast(), 5),
                    S::BufferTooSmall,
                    "too small",
                );
                moth_tensor_free(h);
            }};
        }
        round_trip!(
            f32,
            MOTH_DTYPE_FLOAT32,
            [0.0, -0.0, 1.5, f32::MIN_POSITIVE, 1e30, -7.0]
        );
        round_trip!(f64, MOTH_DTYPE_FLOAT64, [0.0, 1e-300, 2.5, -1.0, 3.0, 4.0]);
        round_trip!(i64, MOTH_DTYPE_INT64, [i64::MIN, -1, 0, 1, 2, i64::MAX]);
        round_trip!(i32, MOTH_DTYPE_INT32, [i32::MIN, -1, 0, 1, 2, i32::MAX]);
        round_trip!(u8, MOTH_DTYPE_UINT8, [0, 1, 2, 127, 128, 255]);

        let data = [1f32; 6];
        let mut h = null_mut();
        expect(
            moth_tensor_from_buffer(data.as_ptr().cast(), 99, shape.as_ptr(), 2, CPU, &mut h),
            S::InvalidArgument,
            "unknown dtype 99",
        );
        expect(
            moth_tensor_from_buffer(
                data.as_ptr().cast(),
                MOTH_DTYPE_FLOAT32,
                [2i64, -3].as_ptr(),
                2,
                CPU,
                &mut h,
            ),
            S::InvalidArgument,
            "negative dimension",
        );
        expect(
            moth_tensor_from_buffer(
                data.as_ptr().cast(),
                MOTH_DTYPE_FLOAT32,
                [i64::MAX, 4].as_ptr(),
                2,
                CPU,
                &mut h,
            ),
            S::InvalidArgument,
            "overflows",
        );
        let bad_device = moth_device { type_: 7, index: 0 };
        expect(
            moth_tensor_from_buffer(
                data.as_ptr().cast(),
                MOTH_DTYPE_FLOAT32,
                shape.as_ptr(),
                2,
                bad_device,
                &mut h,
            ),
            S::InvalidArgument,
            "unknown device type 7",
        );
        if moth::torch::device::cuda_device_count() == 0 {
            let cuda = moth_device {
                type_: MOTH_DEVICE_TYPE_CUDA,
                index: 0,
            };
            expect(
                moth_tensor_from_buffer(
                    data.as_ptr().cast(),
                    MOTH_DTYPE_FLOAT32,
                    shape.as_ptr(),
                    2,
                    cuda,
                    &mut h,
                ),
                S::Unsupported,
                "CUDA is not available",
            );
            expect(
                moth_tensor_from_device_ptr(
                    data.as_ptr().cast(),
                    MOTH_DTYPE_FLOAT32,
                    shape.as_ptr(),
                    2,
                    cuda,
                    &mut h,
                ),
                S::Unsupported,
                "CUDA is not available",
            );
            let mut clf = null_mut();
            expect(
                moth_classifier_from_callback(
                    Some(linear_forward),
                    None,
                    null_mut(),
                    None,
                    cuda,
                    &mut clf,
                ),
                S::Unsupported,
                "CUDA",
            );
        }
        expect(
            moth_tensor_from_device_ptr(
                data.as_ptr().cast(),
                MOTH_DTYPE_FLOAT32,
                shape.as_ptr(),
                2,
                CPU,
                &mut h,
            ),
            S::InvalidArgument,
            "moth_tensor_from_buffer",
        );
        assert!(h.is_null());
        // A scalar (ndim 0, shape NULL) and an empty tensor (data NULL).
        assert_eq!(
            moth_tensor_from_buffer(
                data.as_ptr().cast(),
                MOTH_DTYPE_FLOAT32,
                null(),
                0,
                CPU,
                &mut h
            ),
            S::Ok
        );
        let mut nd = 9;
        assert_eq!(moth_tensor_shape(h, null_mut(), 0, &mut nd), S::Ok);
        assert_eq!(nd, 0);
        moth_tensor_free(h);
        assert_eq!(
            moth_tensor_from_buffer(null(), MOTH_DTYPE_INT64, [0i64, 5].as_ptr(), 2, CPU, &mut h),
            S::Ok
        );
        let mut dims = [0i64; 4];
        assert_eq!(moth_tensor_shape(h, dims.as_mut_ptr(), 4, &mut nd), S::Ok);
        assert_eq!(&dims[..nd], &[0, 5]);
        assert_eq!(
            moth_tensor_shape(h, dims.as_mut_ptr(), 1, &mut nd),
            S::BufferTooSmall
        );
        assert_eq!(nd, 2);
        let mut dev = moth_device { type_: 5, index: 5 };
        assert_eq!(moth_tensor_device(h, &mut dev), S::Ok);
        assert_eq!(dev, CPU);
        moth_tensor_free(h);

        // at::Tensor interop: no copy in either direction.
        let t = Tensor::zeros([3], (Kind::Float, Device::Cpu));
        let h = tensor(&t);
        drop(t.shallow_clone()); // moth's reference is independent of ours
        let back = to_tch(h);
        let _ = back.shallow_clone().fill_(4.0);
        assert_eq!(t.double_value(&[1]), 4.0, "storage is shared");
        moth_tensor_free(h);
        assert_eq!(
            back.double_value(&[2]),
            4.0,
            "our reference outlives the handle"
        );
        let mut undefined = Tensor::new();
        let mut none = null_mut();
        expect(
            moth_tensor_from_at_tensor(undefined.as_mut_ptr().cast(), &mut none),
            S::InvalidArgument,
            "undefined",
        );
        // Element types without a moth_dtype.
        let hb = tensor(&Tensor::zeros([2], (Kind::Bool, Device::Cpu)));
        let mut d = 0;
        expect(moth_tensor_dtype(hb, &mut d), S::WrongDtype, "Bool");
        moth_tensor_free(hb);
    }
}

#[test]
fn wrong_shapes_dtypes_labels_and_values_get_their_codes() {
    let s = session(QUICK);
    let clf = classifier();
    let (x, y) = batch(4, 1);
    let cases: Vec<(Tensor, Tensor, S, &str)> = vec![
        (
            x.view([12, 1, 2, 8]),
            y.shallow_clone(),
            S::WrongShape,
            "batch must be [n, 1, 4, 4]",
        ),
        (
            x.view([12, 16]),
            y.shallow_clone(),
            S::WrongShape,
            "batch must be",
        ),
        (
            x.narrow(0, 0, 0),
            y.narrow(0, 0, 0),
            S::WrongShape,
            "batch is empty",
        ),
        (
            x.shallow_clone(),
            y.narrow(0, 0, 11),
            S::WrongShape,
            "labels must be [12]",
        ),
        (
            x.to_kind(Kind::Int64),
            y.shallow_clone(),
            S::WrongDtype,
            "floating-point",
        ),
        (
            x.shallow_clone(),
            y.to_kind(Kind::Float),
            S::WrongDtype,
            "labels must be integers",
        ),
        (
            x.shallow_clone(),
            y.ones_like() * 3,
            S::LabelOutOfRange,
            "label 3 out of range for 3 classes",
        ),
        (
            x.shallow_clone(),
            y.ones_like() * -1,
            S::LabelOutOfRange,
            "label -1 out of range",
        ),
        (
            x.shallow_clone() * 2.0 + 0.5,
            y.shallow_clone(),
            S::InvalidValue,
            "pixels must be in [0, 1]",
        ),
        (
            x.shallow_clone() / 0.0,
            y.shallow_clone(),
            S::InvalidValue,
            "NaN or infinite",
        ),
    ];
    for (xi, yi, want, needle) in cases {
        let st = harden(s, clf, &xi, &yi);
        assert_eq!(st, want, "{needle}: {}", session_error(s));
        assert!(session_error(s).contains(needle), "{}", session_error(s));
        assert!(thread_error().contains(needle), "{}", thread_error());
    }
    assert_eq!(step_of(s), 0, "failed calls leave the session unchanged");
    assert_eq!(harden(s, clf, &x, &y), S::Ok);
    assert_eq!(step_of(s), 1);
    // SAFETY: live handles.
    unsafe {
        let mut m = [0f64; 9];
        expect(
            moth_session_matrix(s, 9, m.as_mut_ptr(), 9),
            S::InvalidArgument,
            "unknown matrix 9",
        );
        expect(
            moth_session_matrix(s, MOTH_MATRIX_UNIV, m.as_mut_ptr(), 8),
            S::BufferTooSmall,
            "3x3",
        );
        assert_eq!(
            moth_session_matrix(s, MOTH_MATRIX_UNIV, m.as_mut_ptr(), 9),
            S::Ok
        );
        assert!(
            m[3] != 0.0 || m[6] != 0.0,
            "warm-up of target 0 filled column 0: {m:?}"
        );
        moth_classifier_free(clf);
        moth_session_free(s);
    }
}

#[test]
fn phases_flow_signals_and_reports() {
    // accuracy_every > 0: a baseline is due before the first step.
    let s = session(
        r#"{"seed": 1, "accuracy_every": 2, "max_steps": 4, "portion": 0.2,
        "warmup": {"budget": {"steps": 20}}, "first": {"steps": 10}, "later": {"steps": 5}}"#,
    );
    let clf = classifier();
    let (x, y) = batch(4, 2);
    // SAFETY: live handles, valid out-pointers.
    unsafe {
        let mut r: moth_step_report = std::mem::zeroed();
        expect(
            moth_session_last_report(s, &mut r),
            S::Phase,
            "no step has run",
        );
        let mut wanted = false;
        assert_eq!(moth_session_wants_accuracy(s, &mut wanted), S::Ok);
        assert!(wanted);
        assert_eq!(harden(s, clf, &x, &y), S::AccuracyWanted);
        let msg = session_error(s);
        assert!(
            msg.contains("clean-accuracy report is due (moth_session_report_accuracy)"),
            "{msg}"
        );
        assert_eq!(step_of(s), 0);
        let mut v = moth_verdict::Exceeded;
        let mut drop = 5.0;
        expect(
            moth_session_report_accuracy(s, 1.5, &mut v, &mut drop),
            S::InvalidValue,
            "accuracy must be in [0, 1]",
        );
        assert_eq!((v, drop), (moth_verdict::None, 0.0));
        assert_eq!(
            moth_session_report_accuracy(s, 0.9, &mut v, &mut drop),
            S::Ok
        );
        assert_eq!(v, moth_verdict::Baseline);
        expect(
            moth_session_report_accuracy(s, 0.9, &mut v, null_mut()),
            S::Phase,
            "no accuracy report is due (see moth_session_wants_accuracy)",
        );
        assert_eq!(harden(s, clf, &x, &y), S::Ok);
        assert_eq!(moth_session_last_report(s, &mut r), S::Ok);
        assert_eq!(r.step, 0);
        assert_eq!(r.phase.kind, moth_phase_kind::Warmup);
        assert_eq!(r.phase.target, 0);
        assert_eq!(r.num_directions, 1);
        assert_eq!(r.directions[0].victim, -1);
        assert_eq!(r.directions[0].target, 0);
        assert_eq!(r.inversion_steps, 20);
        assert!(r.seconds > 0.0);
        assert_eq!(harden(s, clf, &x, &y), S::Ok);
        assert_eq!(harden(s, clf, &x, &y), S::AccuracyWanted);
        assert_eq!(
            moth_session_report_accuracy(s, 0.5, &mut v, &mut drop),
            S::Ok
        );
        assert_eq!(v, moth_verdict::Exceeded);
        assert!((drop - 0.4).abs() < 1e-12);
        let mut p: moth_phase = std::mem::zeroed();
        assert_eq!(moth_session_phase(s, &mut p), S::Ok);
        assert_eq!(p.kind, moth_phase_kind::Done);
        assert_eq!(p.done_reason, moth_done_reason::AccuracyBound);
        let mut done = false;
        assert_eq!(moth_session_is_done(s, &mut done), S::Ok);
        assert!(done);
        assert_eq!(harden(s, clf, &x, &y), S::Done);
        assert!(session_error(s).contains("the session is done"));
        let mut a: moth_accuracy = std::mem::zeroed();
        assert_eq!(moth_session_accuracy(s, &mut a), S::Ok);
        assert!(a.has_baseline && a.has_last && !a.pending);
        assert_eq!((a.baseline, a.last), (0.9, 0.5));
        moth_session_free(s);
    }
    // The step budget, and the orthogonalisation report after warm-up.
    let s = session(&QUICK.replace(
        "\"accuracy_every\": 0",
        "\"accuracy_every\": 0, \"max_steps\": 5",
    ));
    for _ in 0..5 {
        assert_eq!(harden(s, clf, &x, &y), S::Ok, "{}", session_error(s));
    }
    // SAFETY: live handles.
    unsafe {
        let mut r: moth_step_report = std::mem::zeroed();
        assert_eq!(moth_session_last_report(s, &mut r), S::Ok);
        assert_eq!(r.step, 4);
        assert_eq!(r.phase.kind, moth_phase_kind::Orthogonalize);
        assert_ne!(r.phase.source, r.phase.target);
        assert_eq!(r.num_directions, 2);
        assert_eq!(r.directions[0].victim, r.phase.source as i64);
        assert_eq!(r.directions[0].target, r.phase.target);
        assert_eq!(r.directions[1].victim, r.phase.target as i64);
        let mut p: moth_phase = std::mem::zeroed();
        assert_eq!(moth_session_phase(s, &mut p), S::Ok);
        assert_eq!(
            (p.kind, p.done_reason),
            (moth_phase_kind::Done, moth_done_reason::StepBudget)
        );
        assert_eq!(harden(s, clf, &x, &y), S::Done);
        let mut count = [0f64; 9];
        assert_eq!(
            moth_session_matrix(s, MOTH_MATRIX_COUNT, count.as_mut_ptr(), 9),
            S::Ok
        );
        assert!(count.iter().sum::<f64>() >= 2.0);
        moth_session_free(s);
        moth_classifier_free(clf);
    }
}

#[test]
fn callback_failures_are_reported_and_leave_the_session_unchanged() {
    let s = session(QUICK);
    let mut m = Linear::new();
    m.fail_with = Some(-7);
    let freed_before = FREED.load(Ordering::Relaxed);
    let clf = classifier_with(m);
    let (x, y) = batch(4, 3);
    assert_eq!(harden(s, clf, &x, &y), S::Callback);
    let msg = session_error(s);
    assert!(
        msg.contains("forward callback returned status -7: model exploded"),
        "{msg}"
    );
    assert_eq!(step_of(s), 0);
    // SAFETY: live handles.
    unsafe {
        let xt = tensor(&x);
        let mut logits = null_mut();
        expect(
            moth_classifier_forward(clf, xt, &mut logits),
            S::Callback,
            "model exploded",
        );
        assert!(logits.is_null());
        moth_tensor_free(xt);
        expect(
            moth_classifier_save(clf, cstring("/tmp/x.pt").as_ptr()),
            S::Unsupported,
            "belongs to the caller",
        );
        moth_classifier_free(clf);
    }
    assert_eq!(
        FREED.load(Ordering::Relaxed),
        freed_before + 1,
        "user data freed once"
    );
    // Success without logits is a callback failure too.
    let mut m = Linear::new();
    m.null_logits = true;
    let clf = classifier_with(m);
    assert_eq!(harden(s, clf, &x, &y), S::Callback);
    assert!(
        session_error(s).contains("forward callback returned 0 but left logits_out NULL"),
        "{}",
        session_error(s)
    );
    assert_eq!(step_of(s), 0);
    // SAFETY: live handles.
    unsafe {
        let xt = tensor(&x);
        let mut logits = null_mut();
        expect(
            moth_classifier_forward(clf, xt, &mut logits),
            S::Callback,
            "left logits_out NULL",
        );
        moth_tensor_free(xt);
        moth_classifier_free(clf);
    }
    // A callback calling back into the session that invoked it gets BUSY.
    let mut m = Linear::new();
    m.reenter = s;
    let user: *const Linear = &*m;
    let clf = classifier_with(m);
    assert_eq!(harden(s, clf, &x, &y), S::Ok);
    // SAFETY: the Linear lives until the classifier is freed.
    assert_eq!(unsafe { (*user).reenter_status.get() }, Some(S::Busy));
    // SAFETY: as above.
    assert!(
        unsafe { (*user).train_calls.load(Ordering::Relaxed) } >= 1,
        "set_train(false) called"
    );
    // SAFETY: live handles.
    unsafe {
        moth_classifier_free(clf);
        moth_session_free(s);
    }
}

/// No call leaves the host's thread with another grad mode than it had:
/// failing calls (a callback failing inside the inversion, which runs with
/// autograd on, or inside a no-grad forward), calls whose callback switched
/// autograd off and left it so, and successful steps, with autograd on and
/// off in the host.
#[test]
fn calls_leave_the_hosts_grad_mode_as_it_was() {
    use moth::torch::grad::{is_enabled, GradGuard};
    let s = session(QUICK);
    let (x, y) = batch(4, 6);
    let failing = {
        let mut m = Linear::new();
        m.fail_with = Some(3);
        classifier_with(m)
    };
    let switching = {
        let mut m = Linear::new();
        m.grad_off = true;
        classifier_with(m)
    };
    let plain = classifier();
    for host_mode in [true, false] {
        let _host = GradGuard::set(host_mode);
        // The switching callback's logits do not require gradients, which
        // the inversion refuses.
        for (clf, hardened, want) in [
            (failing, S::Callback, S::Callback),
            (switching, S::Callback, S::Ok),
            (plain, S::Ok, S::Ok),
        ] {
            assert_eq!(harden(s, clf, &x, &y), hardened, "{}", session_error(s));
            assert_eq!(is_enabled(), host_mode, "after harden_batch ({hardened:?})");
            if clf == switching {
                let msg = session_error(s);
                assert!(msg.contains("do not require gradients"), "{msg}");
            }
            let xt = tensor(&x);
            let mut logits = null_mut();
            // SAFETY: live handles.
            let st = unsafe { moth_classifier_forward(clf, xt, &mut logits) };
            assert_eq!(st, want);
            assert_eq!(
                is_enabled(),
                host_mode,
                "after classifier_forward ({want:?})"
            );
            // SAFETY: made above (NULL is fine).
            unsafe {
                moth_tensor_free(logits);
                moth_tensor_free(xt);
            }
        }
        // A call refused before any work (a NULL argument).
        let mut step = 0;
        // SAFETY: NULL session is what is tested.
        assert_eq!(
            unsafe { moth_session_step(null(), &mut step) },
            S::NullPointer
        );
        assert_eq!(is_enabled(), host_mode);
    }
    assert!(is_enabled());
    // SAFETY: live handles.
    unsafe {
        for clf in [failing, switching, plain] {
            moth_classifier_free(clf);
        }
        moth_session_free(s);
    }
}

/// An absurd class count is a configuration error with a message, not a
/// crash (panics themselves are covered by the boundary's unit test, which
/// also checks that a panicked session is poisoned).
#[test]
fn absurd_class_counts_are_refused() {
    let cfg = config("{}");
    let mut s = null_mut();
    // SAFETY: live config.
    let st = unsafe { moth_session_new(cfg, 1usize << 61, 1, 4, 4, &mut s) };
    assert_eq!(st, S::InvalidConfig, "{}", thread_error());
    assert!(s.is_null());
    let msg = thread_error();
    assert!(msg.contains("classes"), "{msg}");
    // SAFETY: live config.
    unsafe { moth_config_free(cfg) };
}

struct LogRecord {
    lines: Mutex<Vec<(moth_log_level, String)>>,
}

unsafe extern "C" fn record_log(level: moth_log_level, msg: *const c_char, user: *mut c_void) {
    // SAFETY: user is a LogRecord; msg a NUL-terminated string.
    let r = unsafe { &*(user as *const LogRecord) };
    let m = unsafe { CStr::from_ptr(msg) }
        .to_string_lossy()
        .into_owned();
    r.lines.lock().unwrap().push((level, m));
}

static LOG_FREED: AtomicUsize = AtomicUsize::new(0);

unsafe extern "C" fn free_log(user: *mut c_void) {
    LOG_FREED.fetch_add(1, Ordering::Relaxed);
    // SAFETY: leaked below.
    drop(unsafe { Box::from_raw(user as *mut LogRecord) });
}

#[test]
fn log_callback_gets_steps_and_errors_and_user_data_is_freed() {
    let s = session(QUICK);
    let clf = classifier();
    let rec = Box::into_raw(Box::new(LogRecord {
        lines: Mutex::new(Vec::new()),
    }));
    // SAFETY: live handles; rec is freed by moth.
    unsafe {
        assert_eq!(
            moth_session_set_log_callback(s, Some(record_log), rec.cast(), Some(free_log)),
            S::Ok
        );
        let (x, y) = batch(4, 4);
        assert_eq!(harden(s, clf, &x, &y), S::Ok);
        assert_eq!(harden(s, clf, &x, &(y.ones_like() * 7)), S::LabelOutOfRange);
        let lines = (*rec).lines.lock().unwrap().clone();
        assert!(
            lines.iter().any(|(l, m)| *l == moth_log_level::Info
                && m.starts_with("step 0 (warm-up, target 0): *->0 size")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|(l, m)| *l == moth_log_level::Error && m.contains("label 7 out of range")),
            "{lines:?}"
        );
        let before = LOG_FREED.load(Ordering::Relaxed);
        assert_eq!(
            moth_session_set_log_callback(s, None, null_mut(), None),
            S::Ok
        );
        assert_eq!(
            LOG_FREED.load(Ordering::Relaxed),
            before + 1,
            "replaced callback's data freed"
        );
        moth_session_free(s);
        moth_classifier_free(clf);
    }
}

#[test]
fn checkpoints_round_trip_through_files_and_buffers() {
    let s = session(QUICK);
    let clf = classifier();
    let (x, y) = batch(4, 5);
    for _ in 0..4 {
        assert_eq!(harden(s, clf, &x, &y), S::Ok);
    }
    let path = work_dir().join(format!("rust-{}.ckpt", std::process::id()));
    let p = cstring(path.to_str().unwrap());
    // SAFETY: live handles, valid buffers.
    unsafe {
        assert_eq!(
            moth_session_save(s, p.as_ptr()),
            S::Ok,
            "{}",
            session_error(s)
        );
        let mut buf = null_mut();
        assert_eq!(moth_session_to_buffer(s, &mut buf), S::Ok);
        let (mut data, mut len) = (null(), 0usize);
        assert_eq!(moth_buffer_data(buf, &mut data, &mut len), S::Ok);
        let bytes = std::slice::from_raw_parts(data, len).to_vec();
        assert!(len > 100);
        moth_buffer_free(buf);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "file and buffer hold the same bytes"
        );

        let mut from_file = null_mut();
        assert_eq!(
            moth_session_load(p.as_ptr(), 3, 1, SIDE, SIDE, &mut from_file),
            S::Ok,
            "{}",
            thread_error()
        );
        let mut from_buf = null_mut();
        assert_eq!(
            moth_session_from_buffer(bytes.as_ptr(), len, 0, 0, 0, 0, &mut from_buf),
            S::Ok
        );
        assert_eq!(step_of(from_file), 4);
        assert_eq!(step_of(from_buf), 4);
        let mut r: moth_step_report = std::mem::zeroed();
        expect(
            moth_session_last_report(from_file, &mut r),
            S::Phase,
            "no step has run",
        );

        // The original and both copies take identical next steps.
        let mut reports = Vec::new();
        for h in [s, from_file, from_buf] {
            assert_eq!(harden(h, clf, &x, &y), S::Ok);
            let mut r: moth_step_report = std::mem::zeroed();
            assert_eq!(moth_session_last_report(h, &mut r), S::Ok);
            r.seconds = 0.0;
            reports.push(r);
        }
        assert_eq!(reports[0], reports[1]);
        assert_eq!(reports[0], reports[2]);

        let mut other = null_mut();
        expect(
            moth_session_load(p.as_ptr(), 4, 1, SIDE, SIDE, &mut other),
            S::Checkpoint,
            "",
        );
        expect(
            moth_session_from_buffer(bytes.as_ptr(), len - 10, 3, 1, SIDE, SIDE, &mut other),
            S::Checkpoint,
            "",
        );
        // An empty buffer (NULL, 0) is a truncated checkpoint, not a NULL.
        expect(
            moth_session_from_buffer(null(), 0, 3, 1, SIDE, SIDE, &mut other),
            S::Checkpoint,
            "",
        );
        assert!(other.is_null());
        let mut corrupted = bytes.clone();
        let mid = corrupted.len() / 2;
        corrupted[mid] ^= 0x55;
        expect(
            moth_session_from_buffer(
                corrupted.as_ptr(),
                corrupted.len(),
                3,
                1,
                SIDE,
                SIDE,
                &mut other,
            ),
            S::Checkpoint,
            "",
        );
        expect(
            moth_session_load(
                cstring("/nonexistent/moth.ckpt").as_ptr(),
                3,
                1,
                4,
                4,
                &mut other,
            ),
            S::Io,
            "/nonexistent/moth.ckpt",
        );
        assert!(other.is_null());
        for h in [s, from_file, from_buf] {
            moth_session_free(h);
        }
        moth_classifier_free(clf);
    }
    let _ = std::fs::remove_file(&path);
}

/// The session's stream as the C getter reports it.
fn stream_of(s: *const moth_session) -> (i32, usize) {
    let (mut device, mut stream) = (7, 0x40 as *mut c_void);
    // SAFETY: live session, valid out-pointers.
    let st = unsafe { moth_session_cuda_stream(s, &mut device, &mut stream) };
    assert_eq!(st, S::Ok);
    (device, stream as usize)
}

#[test]
fn cuda_streams_without_cuda_are_unsupported_and_change_nothing() {
    if moth::torch::device::cuda_device_count() > 0 {
        eprintln!("CUDA present: the stream path is checked by the C++ trainer instead");
        return;
    }
    let s = session(QUICK);
    let clf = classifier();
    let (x, y) = batch(4, 1);
    // SAFETY: live session; the stream value is never dereferenced.
    unsafe {
        assert_eq!(stream_of(s), (-1, 0));
        let fake_stream = 0x1000 as *mut c_void;
        let st = moth_session_set_cuda_stream(s, 0, fake_stream);
        assert_eq!(st, S::Unsupported);
        let msg = session_error(s);
        assert!(
            msg.contains("CUDA streams") && msg.contains("libtorch_cuda.so"),
            "{msg}"
        );
        assert_eq!(stream_of(s), (-1, 0), "a refused stream must not be kept");
        // A negative device is an argument error whatever the machine.
        let st = moth_session_set_cuda_stream(s, -1, fake_stream);
        assert_eq!(st, S::InvalidArgument);
        assert!(session_error(s).contains("device must be >= 0"));
        // NULL clears the setting, which is always possible.
        assert_eq!(moth_session_set_cuda_stream(s, 0, null_mut()), S::Ok);
        assert_eq!(stream_of(s), (-1, 0));
        // The session still hardens on the thread's current stream.
        assert_eq!(harden(s, clf, &x, &y), S::Ok);
        assert_eq!(step_of(s), 1);
        moth_session_free(s);
        moth_classifier_free(clf);
    }
}

struct Shared(*mut moth_session, *mut moth_classifier);
// SAFETY: moth sessions and classifiers are documented as usable from any
// thread, calls serialised by their mutexes: that is what this test checks.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

#[test]
fn several_threads_on_one_session_are_serialised() {
    let s = session(QUICK);
    let clf = classifier();
    let shared = Shared(s, clf);
    let per_thread = 3;
    let threads = 4;
    let ok = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for t in 0..threads {
            let shared = &shared;
            let ok = &ok;
            scope.spawn(move || {
                let (x, y) = batch(4, 10 + t);
                for _ in 0..per_thread {
                    let st = harden(shared.0, shared.1, &x, &y);
                    assert_eq!(st, S::Ok, "{}", session_error(shared.0));
                    ok.fetch_add(1, Ordering::Relaxed);
                    // Queries interleave with other threads' steps.
                    let mut p: moth_phase = unsafe { std::mem::zeroed() };
                    // SAFETY: live session.
                    assert_eq!(unsafe { moth_session_phase(shared.0, &mut p) }, S::Ok);
                    let _ = step_of(shared.0);
                }
            });
        }
    });
    assert_eq!(ok.load(Ordering::Relaxed), threads as usize * per_thread);
    assert_eq!(step_of(s), (threads as usize * per_thread) as u64);
    // SAFETY: live handles.
    unsafe {
        moth_classifier_free(clf);
        moth_session_free(s);
    }
}

// ---------------------------------------------------------------- overhead

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Time per harden_batch call, Rust API against the C ABI, same seed, same
/// model and batch, so both do identical work (checked: identical reports):
/// (1) the traced Fashion-MNIST CNN loaded as TorchScript both ways, with
/// tensors wrapped once, or made from host buffers and copied back each
/// call as a C caller does; (2) a linear model as a Rust `Classifier`
/// against the same model behind a C forward callback; (3) the fixed cost
/// of a trivial call (`moth_session_step` vs `Session::step`). One libtorch
/// thread, alternating order per round, medians. Run with
/// `cargo test --release --test c_abi -- --ignored --nocapture overhead`.
#[test]
#[ignore]
fn overhead_of_the_c_abi() {
    use moth::session::{Session, SessionConfig, SessionSpec};
    use moth::torch::model::{Classifier, Model};

    init(); // one libtorch thread: less noise
    let rounds = 7;
    let steps = 12;
    let json = r#"{"seed": 3, "accuracy_every": 0, "portion": 0.5,
        "warmup": {"budget": {"steps": 3}, "pool_per_class": 4},
        "first": {"steps": 3}, "later": {"steps": 2}}"#;
    // The Rust configuration is the one the C config object holds.
    let rust_cfg = || -> SessionConfig {
        let c = config(json);
        let mut buf = vec![0 as c_char; 8192];
        let mut n = 0;
        // SAFETY: live config, buffer of buf.len() bytes.
        unsafe {
            assert_eq!(
                moth_config_to_json(c, buf.as_mut_ptr(), buf.len(), &mut n),
                S::Ok
            );
            moth_config_free(c);
            serde_json::from_str(CStr::from_ptr(buf.as_ptr()).to_str().unwrap()).unwrap()
        }
    };
    let sizes_of = |r: &moth_step_report| -> Vec<f64> {
        r.directions[..r.num_directions]
            .iter()
            .map(|d| d.size)
            .collect()
    };

    // (1) TorchScript, 10 classes, 64 Fashion-MNIST images per batch.
    let model_path = example_model();
    let data = moth::io::dataset::Dataset::fashion_mnist(None, moth::io::dataset::Split::Train)
        .unwrap()
        .select(&(0..64).collect::<Vec<i64>>())
        .unwrap();
    let (x, y) = (data.images, data.labels);
    let xs: Vec<f32> = Vec::<f32>::try_from(x.flatten(0, -1)).unwrap();
    let ys: Vec<i64> = Vec::<i64>::try_from(&y).unwrap();
    let spec10 = SessionSpec {
        num_classes: 10,
        input_shape: [1, 28, 28],
    };
    let p = cstring(model_path.to_str().unwrap());
    let rust_ts = |sizes: &mut Vec<Vec<f64>>| -> f64 {
        let mut model = Model::torchscript(&model_path, [1, 28, 28], Device::Cpu).unwrap();
        let mut s = Session::new(rust_cfg(), spec10).unwrap();
        let t = Instant::now();
        for _ in 0..steps {
            let h = s.harden_batch(&mut model, &x, &y).unwrap();
            sizes.push(h.report.directions.iter().map(|d| d.size).collect());
        }
        t.elapsed().as_secs_f64() / steps as f64
    };
    let c_ts = |buffers: bool, sizes: &mut Vec<Vec<f64>>| -> f64 {
        // SAFETY: live handles throughout.
        unsafe {
            let mut clf = null_mut();
            assert_eq!(
                moth_classifier_from_torchscript(p.as_ptr(), 1, 28, 28, CPU, &mut clf),
                S::Ok
            );
            let cfg = config(json);
            let mut cs = null_mut();
            assert_eq!(moth_session_new(cfg, 10, 1, 28, 28, &mut cs), S::Ok);
            let (xw, yw) = (tensor(&x), tensor(&y));
            let mut back = vec![0f32; xs.len()];
            let t = Instant::now();
            for _ in 0..steps {
                let (mut xt, mut yt, mut out) = (xw, yw, null_mut());
                if buffers {
                    assert_eq!(
                        moth_tensor_from_buffer(
                            xs.as_ptr().cast(),
                            MOTH_DTYPE_FLOAT32,
                            [64i64, 1, 28, 28].as_ptr(),
                            4,
                            CPU,
                            &mut xt
                        ),
                        S::Ok
                    );
                    assert_eq!(
                        moth_tensor_from_buffer(
                            ys.as_ptr().cast(),
                            MOTH_DTYPE_INT64,
                            [64i64].as_ptr(),
                            1,
                            CPU,
                            &mut yt
                        ),
                        S::Ok
                    );
                }
                assert_eq!(moth_session_harden_batch(cs, clf, xt, yt, &mut out), S::Ok);
                let mut r: moth_step_report = std::mem::zeroed();
                assert_eq!(moth_session_last_report(cs, &mut r), S::Ok);
                sizes.push(sizes_of(&r));
                if buffers {
                    assert_eq!(
                        moth_tensor_copy_to_buffer(out, back.as_mut_ptr().cast(), back.len() * 4),
                        S::Ok
                    );
                    moth_tensor_free(xt);
                    moth_tensor_free(yt);
                }
                moth_tensor_free(out);
            }
            let per_call = t.elapsed().as_secs_f64() / steps as f64;
            moth_session_free(cs);
            moth_tensor_free(xw);
            moth_tensor_free(yw);
            moth_config_free(cfg);
            moth_classifier_free(clf);
            per_call
        }
    };
    let (mut r_t, mut c_t, mut cb_t) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (mut rs, mut cs, mut cbs) = (Vec::new(), Vec::new(), Vec::new());
        if round % 2 == 0 {
            r_t.push(rust_ts(&mut rs));
            c_t.push(c_ts(false, &mut cs));
            cb_t.push(c_ts(true, &mut cbs));
        } else {
            cb_t.push(c_ts(true, &mut cbs));
            c_t.push(c_ts(false, &mut cs));
            r_t.push(rust_ts(&mut rs));
        }
        assert_eq!(rs, cs, "Rust and C sessions did different work");
        assert_eq!(rs, cbs, "Rust and C sessions did different work");
    }
    let (r, c, cb) = (median(r_t), median(c_t), median(cb_t));
    println!(
        "(1) TorchScript CNN, batch 64x1x28x28, {steps} steps x {rounds} rounds, median per call: \
         Rust {:.2} ms | C ABI {:.2} ms (ratio {:.3}, {:+.3} ms) | C ABI + tensors from/to host buffers \
         {:.2} ms (ratio {:.3}, {:+.3} ms)",
        r * 1e3, c * 1e3, c / r, (c - r) * 1e3, cb * 1e3, cb / r, (cb - r) * 1e3
    );

    // (2) The linear model: Rust Classifier against a C forward callback.
    struct RustLinear(Box<Linear>);
    impl Classifier for RustLinear {
        fn forward(&self, x: &Tensor) -> moth::Result<Tensor> {
            Ok(x.flatten(1, -1).matmul(&self.0.w.tr()) + &self.0.b)
        }
        fn set_train(&mut self, _: bool) -> moth::Result<()> {
            Ok(())
        }
        fn device(&self) -> Device {
            Device::Cpu
        }
    }
    let (x, y) = batch(8, 1);
    let spec3 = SessionSpec {
        num_classes: 3,
        input_shape: [1, SIDE, SIDE],
    };
    let steps = 40;
    let rust_lin = || -> f64 {
        let mut m = RustLinear(Linear::new());
        let mut s = Session::new(rust_cfg(), spec3).unwrap();
        let t = Instant::now();
        for _ in 0..steps {
            let _ = s.harden_batch(&mut m, &x, &y).unwrap();
        }
        t.elapsed().as_secs_f64() / steps as f64
    };
    let c_lin = || -> f64 {
        let cs = session(json);
        let clf = classifier();
        let (xt, yt) = (tensor(&x), tensor(&y));
        let t = Instant::now();
        for _ in 0..steps {
            let mut out = null_mut();
            // SAFETY: live handles.
            assert_eq!(
                unsafe { moth_session_harden_batch(cs, clf, xt, yt, &mut out) },
                S::Ok
            );
            // SAFETY: made by moth.
            unsafe { moth_tensor_free(out) };
        }
        let per_call = t.elapsed().as_secs_f64() / steps as f64;
        // SAFETY: live handles.
        unsafe {
            moth_tensor_free(xt);
            moth_tensor_free(yt);
            moth_classifier_free(clf);
            moth_session_free(cs);
        }
        per_call
    };
    let (mut rt, mut ct) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        if round % 2 == 0 {
            rt.push(rust_lin());
            ct.push(c_lin());
        } else {
            ct.push(c_lin());
            rt.push(rust_lin());
        }
    }
    let (r, c) = (median(rt), median(ct));
    println!(
        "(2) linear 3-class model, batch 24x1x4x4, {steps} steps x {rounds} rounds, median per call: \
         Rust Classifier {:.3} ms | C ABI + C forward callback {:.3} ms (ratio {:.3}, {:+.3} ms)",
        r * 1e3, c * 1e3, c / r, (c - r) * 1e3
    );

    // (3) Fixed cost of a call: boundary, pointer checks, mutex.
    let n = 200_000;
    let s = Session::new(rust_cfg(), spec3).unwrap();
    let t = Instant::now();
    let mut acc = 0u64;
    for _ in 0..n {
        acc = acc.wrapping_add(std::hint::black_box(&s).step());
    }
    let rust_ns = t.elapsed().as_secs_f64() / n as f64 * 1e9;
    let cs = session(json);
    let t = Instant::now();
    for _ in 0..n {
        let mut v = 0;
        // SAFETY: live session.
        let _ = unsafe { moth_session_step(std::hint::black_box(cs), &mut v) };
        acc = acc.wrapping_add(v);
    }
    let c_ns = t.elapsed().as_secs_f64() / n as f64 * 1e9;
    // SAFETY: made above.
    unsafe { moth_session_free(cs) };
    println!(
        "(3) trivial call: Session::step {rust_ns:.1} ns | moth_session_step {c_ns:.1} ns ({acc})"
    );
}
