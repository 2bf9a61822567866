//! A hostile host (issue 11, "never crash the host"): forward callbacks
//! whose logits do not depend on the input, are NaN, have another class
//! count, or are moth's own input handle; after each refusal the host's own
//! autograd still works on the same thread and the session is unchanged.
//! The C program tests/c/hostile.c calls every export with NULL, freed,
//! foreign-type and wrong-phase arguments, built with AddressSanitizer and
//! UBSan, and again under valgrind; tests/c/hostile_product.c does the same
//! for distances, host classifiers and the trainer (sanitizers only).
//! libmoth.so exports the C API only.
//!
//! Run `cargo build --release --lib` first: the C program links the
//! library cargo built last.

use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::ptr::null_mut;
use std::time::Instant;

use tch::{Kind, Tensor};

mod common;
mod native;
use common::ffi::*;
use common::{labelled_batch, three_class_model, Linear, PIXELS};
use native::*;

/// How the test's forward callback misbehaves.
#[derive(Clone, Copy)]
enum Forward {
    /// Logits from the model's bias only: a graph, but none reaching the input.
    ParametersOnly,
    /// The model's logits, detached.
    Detached,
    /// The model's logits times NaN.
    Nan,
    /// Logits for this many classes (the session has three).
    Classes(i64),
    /// Stores moth's own input handle as the logits.
    StoreInput,
}

struct Hostile {
    model: Linear,
    bias: Tensor,
    how: Forward,
}

fn logits(h: &Hostile, x: &Tensor) -> Tensor {
    let n = x.size()[0];
    match h.how {
        Forward::ParametersOnly => h.bias.unsqueeze(0).expand([n, 3], false) * 2.0,
        Forward::Detached => moth::torch::model::Classifier::forward(&h.model, x)
            .unwrap()
            .detach(),
        Forward::Nan => moth::torch::model::Classifier::forward(&h.model, x).unwrap() * f64::NAN,
        Forward::Classes(k) => x
            .flatten(1, -1)
            .matmul(&Tensor::ones([PIXELS, k], (Kind::Float, tch::Device::Cpu))),
        Forward::StoreInput => unreachable!("handled by the callback"),
    }
}

unsafe extern "C" fn hostile_forward(
    user: *mut c_void,
    input: *const moth_tensor,
    logits_out: *mut *mut moth_tensor,
) -> i32 {
    // SAFETY: `user` is the Hostile registered with the classifier.
    let h = unsafe { &*(user as *const Hostile) };
    if let Forward::StoreInput = h.how {
        // SAFETY: a valid out-pointer; what is stored is the point of the test.
        unsafe { *logits_out = input.cast_mut() };
        return 0;
    }
    let mut y = logits(h, &to_tch(input));
    // SAFETY: a live at::Tensor; moth takes its own reference.
    unsafe { moth_tensor_from_at_tensor(y.as_mut_ptr().cast(), logits_out) as i32 }
}

unsafe extern "C" fn free_hostile(user: *mut c_void) {
    // SAFETY: the Box leaked in `hostile_classifier`.
    drop(unsafe { Box::from_raw(user as *mut Hostile) });
}

fn hostile_classifier(how: Forward) -> *mut moth_classifier {
    init();
    let h = Box::new(Hostile {
        model: three_class_model(),
        bias: Tensor::from_slice(&[0f32, 1.0, 2.0]).set_requires_grad(true),
        how,
    });
    let mut c = null_mut();
    // SAFETY: valid callbacks and out-pointer.
    let st = unsafe {
        moth_classifier_from_callback(
            Some(hostile_forward),
            None,
            Box::into_raw(h).cast(),
            Some(free_hostile),
            CPU,
            &mut c,
        )
    };
    assert_eq!(st, S::Ok);
    c
}

/// The host's own autograd on this thread: grad mode on, and a backward
/// pass on a small tensor gives the right gradient.
#[track_caller]
fn host_backward_works() {
    assert!(moth::torch::grad::is_enabled(), "grad mode was left off");
    let x = Tensor::from_slice(&[1f32, 2.0, 3.0]).set_requires_grad(true);
    (&x * &x).sum(Kind::Float).backward();
    let g = Vec::<f32>::try_from(&x.grad()).unwrap();
    assert_eq!(g, vec![2.0, 4.0, 6.0]);
}

/// The session's checkpoint bytes (its whole state).
fn state_bytes(s: *const moth_session) -> Vec<u8> {
    let mut b = null_mut();
    // SAFETY: live session, valid out-pointer; the buffer is freed here.
    unsafe {
        assert_eq!(moth_session_to_buffer(s, &mut b), S::Ok);
        let (mut data, mut len) = (std::ptr::null(), 0);
        assert_eq!(moth_buffer_data(b, &mut data, &mut len), S::Ok);
        let bytes = std::slice::from_raw_parts(data, len).to_vec();
        moth_buffer_free(b);
        bytes
    }
}

/// One step with a misbehaving classifier: its status, the session's
/// message, and the state before and after.
fn step_with(how: Forward) -> (S, String, bool, *mut moth_session) {
    let s = session(QUICK);
    let clf = hostile_classifier(how);
    let (x, y) = labelled_batch(4, 1);
    let before = state_bytes(s);
    let st = harden(s, clf, &x, &y);
    let msg = session_error(s);
    let unchanged = state_bytes(s) == before && step_of(s) == 0;
    // SAFETY: made above.
    unsafe { moth_classifier_free(clf) };
    (st, msg, unchanged, s)
}

#[test]
fn logits_that_do_not_depend_on_the_input_are_refused() {
    for (how, want, needle) in [
        (
            Forward::ParametersOnly,
            S::InvalidInput,
            "do not depend on its input",
        ),
        (Forward::Detached, S::Callback, "do not require gradients"),
    ] {
        let (st, msg, unchanged, s) = step_with(how);
        assert_eq!(st, want, "{msg}");
        assert!(msg.contains(needle), "{msg}");
        assert!(unchanged, "the session changed");
        host_backward_works();
        // SAFETY: made by step_with.
        unsafe { moth_session_free(s) };
    }
}

#[test]
fn nan_logits_fail_the_step_and_the_session_still_saves_and_loads() {
    let (st, msg, unchanged, s) = step_with(Forward::Nan);
    assert_eq!(st, S::ModelOutput, "{msg}");
    assert!(msg.contains("non-finite"), "{msg}");
    assert!(!msg.contains("invalid input"), "{msg}");
    assert!(unchanged, "the session changed");
    host_backward_works();
    let path = scratch_dir("c_abi_hostile").join("after-nan.ckpt");
    let p = cstring(path.to_str().unwrap());
    let before = state_bytes(s);
    // SAFETY: live session, valid path and out-pointer.
    unsafe {
        assert_eq!(
            moth_session_save(s, p.as_ptr()),
            S::Ok,
            "{}",
            session_error(s)
        );
        let mut back = null_mut();
        let st = moth_session_load(p.as_ptr(), 3, 1, common::SIDE, common::SIDE, &mut back);
        assert_eq!(st, S::Ok, "{}", thread_error());
        assert_eq!(step_of(back), 0);
        // The same state, but for the environment each writes (the same here).
        assert_eq!(state_bytes(back), before);
        // And it still hardens with a sane model.
        let clf = classifier();
        let (x, y) = labelled_batch(4, 1);
        assert_eq!(harden(back, clf, &x, &y), S::Ok, "{}", session_error(back));
        moth_classifier_free(clf);
        moth_session_free(back);
        moth_session_free(s);
    }
}

#[test]
fn another_class_count_is_refused_before_the_state_changes() {
    for k in [2, 4] {
        let (st, msg, unchanged, s) = step_with(Forward::Classes(k));
        assert_eq!(st, S::WrongShape, "{k} logits: {msg}");
        assert!(msg.contains("made for 3 classes"), "{msg}");
        assert!(unchanged, "the session changed");
        host_backward_works();
        // SAFETY: made by step_with.
        unsafe { moth_session_free(s) };
    }
}

#[test]
fn a_callback_that_returns_its_input_handle_is_refused() {
    let (st, msg, unchanged, s) = step_with(Forward::StoreInput);
    assert_eq!(st, S::Callback, "{msg}");
    assert!(msg.contains("input handle"), "{msg}");
    assert!(unchanged);
    host_backward_works();
    // SAFETY: made by step_with.
    unsafe { moth_session_free(s) };
}

#[test]
fn libtorch_messages_are_short_and_not_internal_errors() {
    init();
    let bad = scratch_dir("c_abi_hostile").join("not-a-model.pt");
    std::fs::write(&bad, vec![b'x'; 4096]).unwrap();
    let p = cstring(bad.to_str().unwrap());
    let mut c = null_mut();
    // SAFETY: valid string and out-pointer.
    let st = unsafe { moth_classifier_from_torchscript(p.as_ptr(), 1, 4, 4, CPU, &mut c) };
    assert_eq!(st, S::Format);
    let msg = thread_error();
    assert!(msg.len() < 1300, "{} bytes: {msg}", msg.len());
    for noise in ["Internal torch error", "frame #", "Exception raised from"] {
        assert!(!msg.contains(noise), "{msg}");
    }
    host_backward_works();
    // A folder is not a model: an I/O error, not a parse error.
    let dir = cstring(scratch_dir("c_abi_hostile").to_str().unwrap());
    // SAFETY: as above.
    let st = unsafe { moth_classifier_from_torchscript(dir.as_ptr(), 1, 4, 4, CPU, &mut c) };
    expect(st, S::Io, "Is a directory");
}

#[test]
fn devices_without_a_moth_device_are_not_called_mps() {
    let e = moth_device_of(tch::Device::Mps).unwrap_err();
    assert_eq!(e.status, S::Unsupported);
    assert!(!e.message.contains("Mps"), "{}", e.message);
    assert!(e.message.contains("meta"), "{}", e.message);
}

/// Float64 batches come back as float64 (and half as half), not float32.
#[test]
fn the_stamped_batch_keeps_the_element_type_of_the_input() {
    let s = session(QUICK);
    let clf = classifier();
    let (x, y) = labelled_batch(4, 1);
    for kind in [Kind::Double, Kind::Half] {
        let (xt, yt) = (tensor(&x.to_kind(kind)), tensor(&y));
        let mut out = null_mut();
        // SAFETY: live handles.
        unsafe {
            let st = moth_session_harden_batch(s, clf, xt, yt, &mut out);
            assert_eq!(st, S::Ok, "{}", session_error(s));
            assert_eq!(to_tch(out).kind(), kind);
            moth_tensor_free(out);
            moth_tensor_free(xt);
            moth_tensor_free(yt);
        }
    }
    // SAFETY: made above.
    unsafe {
        moth_classifier_free(clf);
        moth_session_free(s);
    }
}

/// Names of the functions declared in include/moth.h.
fn header_functions() -> Vec<String> {
    let header = std::fs::read_to_string(root().join("include/moth.h")).unwrap();
    let mut names: Vec<String> = header
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with('/') && !l.starts_with('#'))
        .filter(|l| !l.starts_with("typedef") && !l.starts_with('}'))
        .filter_map(|l| {
            let before = &l[..l.find('(')?];
            let name = &before[before.rfind([' ', '*'])? + 1..];
            name.starts_with("moth_").then(|| name.to_string())
        })
        .collect();
    names.sort();
    names
}

#[test]
fn libmoth_exports_the_c_api_and_nothing_else() {
    let lib = libmoth();
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&lib)
        .output()
        .expect("nm (binutils) is needed");
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    // Lines are "address type name"; T/t are functions, others data.
    let mut functions = Vec::new();
    let mut others = Vec::new();
    for line in table.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [_, kind, name] = f[..] else { continue };
        if kind.eq_ignore_ascii_case("t") || kind.eq_ignore_ascii_case("w") {
            functions.push(name.to_string());
        } else {
            others.push(name.to_string());
        }
    }
    let foreign: Vec<&String> = functions
        .iter()
        .filter(|n| !n.starts_with("moth_"))
        .collect();
    assert!(
        foreign.is_empty(),
        "exported besides the C API: {foreign:?}"
    );
    assert!(others.is_empty(), "exported data symbols: {others:?}");
    functions.sort();
    assert_eq!(
        functions,
        header_functions(),
        "exports vs header declarations"
    );
}

/// Compiles tests/c/hostile.c with `flags`, into `name` (cached on the
/// sources' and the library's mtimes).
fn hostile_program(name: &str, flags: &[&str]) -> PathBuf {
    let bin = scratch_dir("c_abi_hostile").join(name);
    compile_c(&root().join("tests/c/hostile.c"), &bin, flags, &[]);
    bin
}

/// Runs the hostile program (with `prefix` before it, e.g. valgrind);
/// returns its stdout and stderr after checking it passed.
fn run_hostile(prefix: &[String], bin: &Path, env: &[(&str, &str)]) -> (String, String) {
    let model = example_model();
    let scratch = scratch_dir("c_abi_hostile");
    let mut cmd = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    cmd.arg(&model).arg(&scratch);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let t = Instant::now();
    let (ok, out, err) = run(&mut cmd);
    println!("{out}({:.1} s)", t.elapsed().as_secs_f64());
    assert!(ok, "hostile.c failed:\n{out}\n{err}");
    assert!(out.contains(" checks, 0 failed"), "{out}\n{err}");
    (out, err)
}

/// Built with AddressSanitizer and UBSan. libasan comes first in the
/// program's library list because the program itself is instrumented (no
/// LD_PRELOAD needed); libtorch and libmoth.so are not instrumented, so
/// ASan checks the program's own accesses and every malloc/free of the
/// process (double frees, frees of foreign pointers). Leak checking stays
/// on: what LeakSanitizer finds unreachable at exit counts as an error.
#[test]
fn hostile_c_program_under_address_and_undefined_sanitizers() {
    let bin = hostile_program(
        "hostile-asan",
        &["-fsanitize=address,undefined", "-fno-omit-frame-pointer"],
    );
    let (_, err) = run_hostile(
        &[],
        &bin,
        &[
            (
                "ASAN_OPTIONS",
                "halt_on_error=1:abort_on_error=0:exitcode=86",
            ),
            (
                "UBSAN_OPTIONS",
                "halt_on_error=1:print_stacktrace=1:exitcode=87",
            ),
        ],
    );
    // moth writes nothing to the host's stderr.
    assert!(err.trim().is_empty(), "stderr: {err}");
}

/// The exports of distances, host classifiers and the trainer
/// (tests/c/hostile_product.c), with AddressSanitizer and UBSan as above.
#[test]
fn hostile_calls_of_distances_host_models_and_trainers_fail_cleanly() {
    let bin = scratch_dir("c_abi_hostile").join("hostile-product-asan");
    compile_c(
        &root().join("tests/c/hostile_product.c"),
        &bin,
        &["-fsanitize=address,undefined", "-fno-omit-frame-pointer"],
        &[],
    );
    let (ok, out, err) = run(Command::new(&bin)
        .arg(example_model())
        .arg(scratch_dir("c_abi_hostile"))
        .env(
            "ASAN_OPTIONS",
            "halt_on_error=1:abort_on_error=0:exitcode=86",
        )
        .env(
            "UBSAN_OPTIONS",
            "halt_on_error=1:print_stacktrace=1:exitcode=87",
        ));
    println!("{out}");
    assert!(ok, "hostile_product.c failed:\n{out}\n{err}");
    assert!(out.contains(" checks, 0 failed"), "{out}\n{err}");
    assert!(err.trim().is_empty(), "stderr: {err}");
}

/// Under valgrind's memcheck: no invalid reads or writes (the handle checks
/// read only memory moth owns, a freed handle's included) and no definitely
/// or indirectly lost blocks.
#[test]
fn hostile_c_program_under_valgrind() {
    let has_valgrind = Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_valgrind {
        eprintln!("valgrind not installed: skipped");
        return;
    }
    let bin = hostile_program("hostile", &[]);
    let log = scratch_dir("c_abi_hostile").join("valgrind.log");
    let prefix: Vec<String> = [
        "valgrind",
        "--error-exitcode=1",
        "--leak-check=full",
        "--errors-for-leak-kinds=definite,indirect",
        "--show-leak-kinds=definite,indirect",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        format!(
            "--suppressions={}",
            root().join("tests/c/valgrind.supp").display()
        ),
        format!("--log-file={}", log.display()),
    ])
    .collect();
    run_hostile(&prefix, &bin, &[]);
    let report = std::fs::read_to_string(&log).unwrap_or_default();
    let summary: Vec<&str> = report
        .lines()
        .filter(|l| l.contains("ERROR SUMMARY") || l.contains("definitely lost"))
        .collect();
    println!("{summary:?}");
    assert!(report.contains("ERROR SUMMARY: 0 errors"), "{report}");
}
