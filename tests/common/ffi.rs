//! What the C ABI tests (tests/c_abi_*.rs) share: handles made through the
//! exported functions, the three-class model of [`super::three_class_model`]
//! behind a C forward callback (with switches for the failure tests),
//! labelled batches, and the last-error getters.
//!
//! Everything goes through `moth::ffi`, the functions a C caller links
//! against, called directly from Rust.
// Each test binary uses another part of what is re-exported here.
#![allow(unused_imports)]

use std::cell::Cell;
use std::ffi::{c_char, c_void, CStr, CString};
use std::path::PathBuf;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicUsize, Ordering};

pub use moth::ffi::buffer::*;
pub use moth::ffi::checkpoint::*;
pub use moth::ffi::classifier::*;
pub use moth::ffi::config::*;
pub use moth::ffi::log::*;
pub use moth::ffi::report::*;
pub use moth::ffi::session::*;
pub use moth::ffi::status::*;
pub use moth::ffi::tensor::*;
pub use moth::ffi::version::*;
use moth::torch::model::Classifier;
use tch::Tensor;

pub use super::{labelled_batch, PIXELS, SIDE};

pub type S = moth_status;

/// One libtorch thread in this test process: tests run two at a time on
/// two cores, and OpenMP workers spinning against each other (or against
/// another build) made runs 5-10x slower. Example programs get
/// OMP_NUM_THREADS=1 for the same reason.
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| tch::set_num_threads(1));
}

/// Scratch folder for compiled examples, models and checkpoints
/// (`target/c_abi`, shared by the C ABI test binaries).
pub fn work_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("c_abi");
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn cstring(s: &str) -> CString {
    CString::new(s).unwrap()
}

pub fn thread_error() -> String {
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

pub fn session_error(s: *const moth_session) -> String {
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
pub fn expect(st: S, want: S, needle: &str) {
    assert_eq!(st, want, "last error: {}", thread_error());
    if !needle.is_empty() {
        let msg = thread_error();
        assert!(msg.contains(needle), "'{msg}' should mention '{needle}'");
    }
}

pub const CPU: moth_device = moth_device {
    type_: MOTH_DEVICE_TYPE_CPU,
    index: 0,
};

/// The user data of the Rust forward callback: the fixed linear classifier
/// of [`super::three_class_model`] on 1x4x4 images with three classes
/// (class 1 fires on pixel 0, class 2 on pixels 12..16), plus switches for
/// the failure tests.
pub struct LinearCallbacks {
    pub model: super::Linear,
    /// Fail with this status (after `moth_callback_set_error`).
    pub fail_with: Option<i32>,
    /// Return 0 without storing logits.
    pub null_logits: bool,
    /// Switch grad mode off (and leave it off) before answering.
    pub grad_off: bool,
    /// Call `moth_session_step` on this session from inside the callback.
    pub reenter: *mut moth_session,
    /// What that call returned.
    pub reenter_status: Cell<Option<S>>,
    pub calls: AtomicUsize,
    pub train_calls: AtomicUsize,
}

impl LinearCallbacks {
    pub fn new() -> Box<LinearCallbacks> {
        Box::new(LinearCallbacks {
            model: super::three_class_model(),
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

pub unsafe extern "C" fn linear_forward(
    user: *mut c_void,
    input: *const moth_tensor,
    logits_out: *mut *mut moth_tensor,
) -> i32 {
    // SAFETY: `user` is the LinearCallbacks registered with the classifier.
    let m = unsafe { &*(user as *const LinearCallbacks) };
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
    let Ok(mut y) = m.model.forward(&x) else {
        return -1;
    };
    // SAFETY: `y` is a live at::Tensor; moth takes its own reference.
    unsafe { moth_tensor_from_at_tensor(y.as_mut_ptr().cast(), logits_out) as i32 }
}

pub unsafe extern "C" fn linear_set_train(user: *mut c_void, _train: bool) -> i32 {
    // SAFETY: as above.
    let m = unsafe { &*(user as *const LinearCallbacks) };
    m.train_calls.fetch_add(1, Ordering::Relaxed);
    0
}

/// How many LinearCallbacks moth freed.
pub static FREED: AtomicUsize = AtomicUsize::new(0);

pub unsafe extern "C" fn free_linear(user: *mut c_void) {
    FREED.fetch_add(1, Ordering::Relaxed);
    // SAFETY: the Box leaked in `classifier_with`.
    drop(unsafe { Box::from_raw(user as *mut LinearCallbacks) });
}

/// A callback classifier over a LinearCallbacks (moth frees it).
pub fn classifier_with(m: Box<LinearCallbacks>) -> *mut moth_classifier {
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

pub fn classifier() -> *mut moth_classifier {
    classifier_with(LinearCallbacks::new())
}

pub fn tensor(t: &Tensor) -> *mut moth_tensor {
    init();
    let mut t = t.shallow_clone();
    let mut out = null_mut();
    // SAFETY: live tensor, valid out-pointer.
    let st = unsafe { moth_tensor_from_at_tensor(t.as_mut_ptr().cast(), &mut out) };
    assert_eq!(st, S::Ok);
    out
}

pub fn to_tch(t: *const moth_tensor) -> Tensor {
    let mut p = null_mut();
    // SAFETY: live handle.
    assert_eq!(unsafe { moth_tensor_to_at_tensor(t, &mut p) }, S::Ok);
    // SAFETY: the at::Tensor inside the handle.
    unsafe { Tensor::clone_from_ptr(p.cast()) }
}

pub fn config(json: &str) -> *mut moth_config {
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
pub const QUICK: &str = r#"{"seed": 5, "accuracy_every": 0, "portion": 0.5,
    "warmup": {"budget": {"steps": 20}}, "first": {"steps": 10}, "later": {"steps": 5}}"#;

pub fn session(json: &str) -> *mut moth_session {
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
pub fn harden(s: *mut moth_session, clf: *mut moth_classifier, x: &Tensor, y: &Tensor) -> S {
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

pub fn step_of(s: *const moth_session) -> u64 {
    let mut n = u64::MAX;
    // SAFETY: live session.
    assert_eq!(unsafe { moth_session_step(s, &mut n) }, S::Ok);
    n
}
