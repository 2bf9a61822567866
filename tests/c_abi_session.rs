//! The exported functions behave as documented when called directly from
//! Rust: configuration setters and JSON, tensors, phases and flow signals,
//! callbacks that fail or re-enter, logging, checkpoints through files and
//! buffers, CUDA streams without CUDA, and several threads on one session.
//!
//! `cargo test --release --test c_abi_session -- --ignored --nocapture overhead`
//! measures the cost of a call through the C ABI against the Rust API.

use std::ffi::{c_char, c_void, CStr};
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use tch::{Device, Kind, Tensor};

mod common;
mod native;
use common::ffi::*;
use native::*;

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
    // A new configuration holds the default preset; the reference preset
    // is one call away, and an unknown preset changes nothing.
    let defaults = get();
    assert_eq!(defaults["period"], 6);
    assert_eq!(defaults["later"]["steps"], 0);
    assert_eq!(defaults["recover_steps"], 200);
    assert_eq!(defaults["pairs_per_step"], 5);
    assert_eq!(defaults["warmup"]["budget"]["steps"], 100);
    let preset = |name: &str| {
        let c = cstring(name);
        // SAFETY: live config, valid string.
        unsafe { moth_config_set_preset(cfg, c.as_ptr()) }
    };
    assert_eq!(preset("reference"), S::Ok);
    let reference = get();
    assert_eq!(reference["warmup"]["budget"]["steps"], 500);
    assert_eq!(reference["pairs_per_step"], 1);
    assert_eq!(reference["portion"], 0.1);
    assert_eq!(reference["recover_steps"], 0);
    assert_eq!(preset("fastest"), S::InvalidConfig);
    assert_eq!(get(), reference);
    // SAFETY: NULL arguments are refused.
    unsafe {
        assert_eq!(
            moth_config_set_preset(cfg, std::ptr::null()),
            S::NullPointer
        );
        assert_eq!(
            moth_config_set_preset(null_mut(), std::ptr::null()),
            S::NullPointer
        );
    }
    assert_eq!(preset("default"), S::Ok);
    assert_eq!(get(), defaults);
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
            "unknown method 'bogus' (expected moth, universal,",
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
fn phases_flow_signals_and_reports() {
    // accuracy_every > 0: a baseline is due before the first step.
    let s = session(
        r#"{"seed": 1, "accuracy_every": 2, "max_steps": 4, "portion": 0.2,
        "warmup": {"budget": {"steps": 20}}, "first": {"steps": 10}, "later": {"steps": 5}}"#,
    );
    let clf = classifier();
    let (x, y) = labelled_batch(4, 2);
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
    let mut m = LinearCallbacks::new();
    m.fail_with = Some(-7);
    let freed_before = FREED.load(Ordering::Relaxed);
    let clf = classifier_with(m);
    let (x, y) = labelled_batch(4, 3);
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
    let mut m = LinearCallbacks::new();
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
    let mut m = LinearCallbacks::new();
    m.reenter = s;
    let user: *const LinearCallbacks = &*m;
    let clf = classifier_with(m);
    assert_eq!(harden(s, clf, &x, &y), S::Ok);
    // SAFETY: the LinearCallbacks live until the classifier is freed.
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
        let (x, y) = labelled_batch(4, 4);
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
    let (x, y) = labelled_batch(4, 5);
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
    let (x, y) = labelled_batch(4, 1);
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
                let (x, y) = labelled_batch(4, 10 + t);
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
/// `cargo test --release --test c_abi_session -- --ignored --nocapture overhead`.
#[test]
#[ignore]
fn overhead_of_the_c_abi() {
    use moth::session::{Session, SessionConfig, SessionSpec};
    use moth::torch::model::Model;

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

    // (2) The linear model: the Rust Classifier (common::Linear) against
    // the same model behind a C forward callback.
    let (x, y) = labelled_batch(8, 1);
    let spec3 = common::three_class_spec();
    let steps = 40;
    let rust_lin = || -> f64 {
        let mut m = common::three_class_model();
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
