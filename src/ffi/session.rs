//! `moth_session`: the hardening session (`crate::session::Session`) behind a
//! per-session mutex, with its last error, last step report and log callback.
//! Each function mirrors one method of the Rust API.

use std::ffi::{c_char, c_void};
use std::sync::Arc;

use parking_lot::Mutex;

use super::boundary::{init_out, out, ErrorRecord, Guarded, Zeroable};
use super::classifier::moth_classifier;
use super::config::{moth_config, write_json};
use super::handle::{handle, into_handle, release, Handle};
use super::log::{moth_free_fn, moth_log_fn, moth_log_level, LogSink};
use super::report::*;
use super::status::{c_message, moth_status, write_c_string, FfiError, FfiResult};
use super::tensor::moth_tensor;
use crate::session::{AccuracyVerdict, Phase, Session, SessionSpec, StepReport};
use crate::torch::stream::CudaStream;

/// The mutable part of a session handle, behind its mutex.
pub(crate) struct SessionState {
    pub(crate) session: Session,
    last_report: Option<StepReport>,
}

/// A hardening session (opaque). Create with `moth_session_new` or
/// `moth_session_load`, free with `moth_session_free`. Thread safety: a
/// session may be used from any thread; concurrent calls on one session are
/// serialised by its mutex (a call waits for the one in progress). A call
/// from inside a callback that the same session invoked returns
/// `MOTH_STATUS_BUSY`. Its last error is kept on the handle, so it survives
/// a runtime moving the caller between threads.
pub struct moth_session {
    pub(super) state: Guarded<SessionState>,
    last_error: Mutex<std::ffi::CString>,
    log: Mutex<Option<Arc<LogSink>>>,
}

impl Handle for moth_session {
    const TAG: u64 = u64::from_be_bytes(*b"mothSESS");
    const WHAT: &'static str = "session";
}

impl moth_session {
    pub(super) fn new(session: Session) -> Self {
        moth_session {
            state: Guarded::new(
                "session",
                SessionState {
                    session,
                    last_report: None,
                },
            ),
            last_error: Mutex::new(Default::default()),
            log: Mutex::new(None),
        }
    }

    /// Sends a message to the log callback, if one is set. The callback runs
    /// without the log mutex held, so it may replace the callback.
    pub fn log(&self, level: moth_log_level, message: &str) {
        self.log_with(level, || message.to_string());
    }

    /// Like [`moth_session::log`], building the message only when a
    /// callback is set.
    pub(super) fn log_with(&self, level: moth_log_level, message: impl FnOnce() -> String) {
        let sink = self.log.lock().clone();
        if let Some(sink) = sink {
            sink.emit(level, &message());
        }
    }
}

impl ErrorRecord for moth_session {
    fn is_poisoned(&self) -> bool {
        self.state.is_poisoned()
    }

    /// Stores a failed call's message and sends it to the log callback
    /// (flow signals at info level). The session stays locked while the
    /// callback runs, as for every other message, so that a call on the
    /// session from inside its own log callback gets `Busy`. (When the lock
    /// cannot be had, poisoned or held further up this thread, the message
    /// is still sent: nothing can change the session then.)
    fn record_error(&self, status: moth_status, message: &str) {
        *self.last_error.lock() = c_message(message);
        let level = if (status as i32) < 0 {
            moth_log_level::Error
        } else {
            moth_log_level::Info
        };
        let _held = self.state.lock();
        self.log(level, message);
    }
}

fn describe_phase(p: Phase) -> String {
    p.to_string()
}

/// The one-line summary logged after each step.
fn summarise(r: &StepReport) -> String {
    let dirs: Vec<String> = r
        .directions
        .iter()
        .map(|d| {
            let from = d.victim.map_or("*".to_string(), |v| v.to_string());
            format!(
                "{from}->{} size {:.2} {} stamped {}",
                d.target,
                d.size,
                if d.reached { "reached" } else { "failed" },
                d.stamped
            )
        })
        .collect();
    format!(
        "step {} ({}): {}; {} inversion steps, {:.3} s",
        r.step,
        describe_phase(r.phase),
        if dirs.is_empty() {
            "too few samples of the pair, batch unchanged".to_string()
        } else {
            dirs.join("; ")
        },
        r.inversion_steps,
        r.seconds
    )
}

fn spec_of(num_classes: usize, c: i64, h: i64, w: i64) -> SessionSpec {
    SessionSpec {
        num_classes,
        input_shape: [c, h, w],
    }
}

/// The expected spec of a checkpoint: `num_classes == 0` means "any".
pub(super) fn expected_spec(num_classes: usize, c: i64, h: i64, w: i64) -> Option<SessionSpec> {
    (num_classes != 0).then(|| spec_of(num_classes, c, h, w))
}

/// Creates a session for a model with `num_classes` classes and inputs of
/// shape `[c, h, w]`, starting in warm-up. The configuration is copied.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_session_new(
    config: *const moth_config,
    num_classes: usize,
    c: i64,
    h: i64,
    w: i64,
    out_session: *mut *mut moth_session,
) -> moth_status {
    ffi_boundary!("moth_session_new", {
        init_out(out_session);
        let o = out(out_session, "out_session")?;
        let cfg = handle(config, "config")?;
        let session = Session::new(cfg.config.clone(), spec_of(num_classes, c, h, w))?;
        *o = into_handle(moth_session::new(session));
        Ok(())
    })
}

/// Frees a session (and its log callback's user data).
/// `moth_session_free(NULL)` does nothing. No other call may be using the
/// session.
#[no_mangle]
pub unsafe extern "C" fn moth_session_free(session: *mut moth_session) {
    ffi_boundary!("moth_session_free", void, {
        drop(release(session, "session")?);
        Ok(())
    })
}

/// Runs one hardening step on the batch `x` (`[n, C, H, W]` floating-point
/// pixels in `[0, 1]`) with labels `y` (`[n]` integers): the phase's
/// inversion on `classifier` (in evaluation mode), then stamping. On success
/// `*stamped_out` receives a new tensor (same device, shape, element type
/// and order as `x`; labels are unchanged) to train on; free it with
/// `moth_tensor_free`.
/// The step report is then available from `moth_session_last_report`. The
/// step runs with autograd on, also when called from inside the caller's
/// no-grad scope; the calling thread's grad mode is restored on return.
///
/// Flow signals (nothing was done, the session is unchanged):
/// `MOTH_STATUS_DONE` once the session finished, and
/// `MOTH_STATUS_ACCURACY_WANTED` when a clean-accuracy report is due
/// (`moth_session_report_accuracy`). Failures leave the session unchanged:
/// `MOTH_STATUS_WRONG_SHAPE`, `MOTH_STATUS_WRONG_DTYPE`,
/// `MOTH_STATUS_LABEL_OUT_OF_RANGE`, `MOTH_STATUS_INVALID_VALUE` (pixels
/// outside `[0, 1]`, NaN), `MOTH_STATUS_WRONG_SHAPE` also for a classifier
/// whose logits are not `[n, num_classes]` (another class count than the
/// session's), `MOTH_STATUS_INVALID_INPUT` for a classifier whose logits do
/// not depend on its input, `MOTH_STATUS_CALLBACK` (the forward callback
/// failed, returned detached logits, or stored its own `input` handle),
/// `MOTH_STATUS_MODEL_OUTPUT` (NaN or infinite logits made the inversion
/// diverge or would have put non-finite values into the session),
/// `MOTH_STATUS_INVALID_HANDLE`, `MOTH_STATUS_TORCH`, ...
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_session_harden_batch(
    session: *mut moth_session,
    classifier: *mut moth_classifier,
    x: *const moth_tensor,
    y: *const moth_tensor,
    stamped_out: *mut *mut moth_tensor,
) -> moth_status {
    ffi_boundary!("moth_session_harden_batch", session = session, {
        init_out(stamped_out);
        let o = out(stamped_out, "stamped_out")?;
        let s = handle(session, "session")?;
        let clf = handle(classifier, "classifier")?;
        let x = &handle(x, "x")?.tensor;
        let y = &handle(y, "y")?.tensor;
        let mut st = s.state.lock()?;
        let mut model = clf.body.lock()?;
        // The inversions need autograd, whatever mode the host's thread is
        // in (a C++ trainer may call from inside its own no-grad scope); the
        // boundary gives the host its mode back.
        let _grad = crate::torch::grad::GradGuard::set(true);
        let hardened = st.session.harden_batch(&mut *model, x, y)?;
        drop(model);
        s.log_with(moth_log_level::Info, || summarise(&hardened.report));
        st.last_report = Some(hardened.report);
        *o = into_handle(moth_tensor::new(hardened.inputs));
        Ok(())
    })
}

/// Copies the report of the last successful `moth_session_harden_batch`
/// call on this handle. `MOTH_STATUS_PHASE` when no step has run since the
/// handle was created or loaded.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_session_last_report(
    session: *const moth_session,
    out_report: *mut moth_step_report,
) -> moth_status {
    ffi_boundary!("moth_session_last_report", session = session, {
        init_out(out_report);
        let o = out(out_report, "out_report")?;
        let s = handle(session, "session")?;
        let st = s.state.lock()?;
        let r = st.last_report.as_ref().ok_or_else(|| {
            FfiError::new(
                moth_status::Phase,
                "no step has run on this session handle yet",
            )
        })?;
        *o = report_to_c(r);
        Ok(())
    })
}

/// Writes whether the session waits for a clean-accuracy report before its
/// next step (always true before the first step when `accuracy_every > 0`:
/// the baseline).
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_session_wants_accuracy(
    session: *const moth_session,
    out_wanted: *mut bool,
) -> moth_status {
    ffi_boundary!("moth_session_wants_accuracy", session = session, {
        read_into(
            session,
            out_wanted,
            "out_wanted",
            |s| Ok(s.wants_accuracy()),
        )
    })
}

/// Reports the clean accuracy (in `[0, 1]`) of the caller's current model,
/// when one is due. The first report is the baseline. `*out_verdict`
/// receives the verdict; `out_drop` (may be NULL) the baseline minus this
/// accuracy (0 for the baseline). `MOTH_VERDICT_EXCEEDED` means the session
/// is now done: return to the last model that was within the bound.
/// `MOTH_STATUS_PHASE` when no report is due, `MOTH_STATUS_INVALID_VALUE`
/// for an accuracy outside `[0, 1]`.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_session_report_accuracy(
    session: *mut moth_session,
    accuracy: f64,
    out_verdict: *mut moth_verdict,
    out_drop: *mut f64,
) -> moth_status {
    ffi_boundary!("moth_session_report_accuracy", session = session, {
        init_out(out_verdict);
        init_out(out_drop);
        let o = out(out_verdict, "out_verdict")?;
        let s = handle(session, "session")?;
        let mut st = s.state.lock()?;
        let verdict = st.session.report_accuracy(accuracy)?;
        let (v, drop) = match verdict {
            AccuracyVerdict::Baseline => (moth_verdict::Baseline, 0.0),
            AccuracyVerdict::WithinBound { drop } => (moth_verdict::WithinBound, drop),
            AccuracyVerdict::Exceeded { drop } => (moth_verdict::Exceeded, drop),
            AccuracyVerdict::Recovering { drop } => (moth_verdict::Recovering, drop),
        };
        s.log_with(moth_log_level::Info, || {
            format!(
                "accuracy {accuracy:.4} at step {}: {verdict:?}",
                st.session.step()
            )
        });
        *o = v;
        if !out_drop.is_null() {
            // SAFETY: non-NULL out-parameter (C contract).
            unsafe { *out_drop = drop };
        }
        Ok(())
    })
}

/// Writes the session's phase: what its next step will do.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_session_phase(
    session: *const moth_session,
    out_phase: *mut moth_phase,
) -> moth_status {
    ffi_boundary!("moth_session_phase", session = session, {
        read_into(session, out_phase, "out_phase", |s| {
            Ok(phase_to_c(s.phase()))
        })
    })
}

/// Writes the number of steps completed.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_session_step(
    session: *const moth_session,
    out_step: *mut u64,
) -> moth_status {
    ffi_boundary!("moth_session_step", session = session, {
        read_into(session, out_step, "out_step", |s| Ok(s.step()))
    })
}

/// Writes whether the session finished.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_session_is_done(
    session: *const moth_session,
    out_done: *mut bool,
) -> moth_status {
    ffi_boundary!("moth_session_is_done", session = session, {
        read_into(session, out_done, "out_done", |s| Ok(s.is_done()))
    })
}

/// Writes the accuracy bookkeeping (baseline, last report, pending).
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_session_accuracy(
    session: *const moth_session,
    out_accuracy: *mut moth_accuracy,
) -> moth_status {
    ffi_boundary!("moth_session_accuracy", session = session, {
        read_into(session, out_accuracy, "out_accuracy", |s| {
            let a = s.accuracy();
            Ok(moth_accuracy {
                has_baseline: a.baseline.is_some(),
                baseline: a.baseline.unwrap_or(0.0),
                has_last: a.last.is_some(),
                last: a.last.unwrap_or(0.0),
                pending: a.pending,
            })
        })
    })
}

/// Writes the model description the session was made for.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_session_spec(
    session: *const moth_session,
    out_spec: *mut moth_spec,
) -> moth_status {
    ffi_boundary!("moth_session_spec", session = session, {
        read_into(session, out_spec, "out_spec", |s| {
            let sp = s.spec();
            Ok(moth_spec {
                num_classes: sp.num_classes,
                c: sp.input_shape[0],
                h: sp.input_shape[1],
                w: sp.input_shape[2],
            })
        })
    })
}

/// Writes the session's configuration as JSON (the `moth_config_to_json`
/// form; buffer rules as there).
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_session_config_json(
    session: *const moth_session,
    buf: *mut c_char,
    len: usize,
    needed: *mut usize,
) -> moth_status {
    ffi_boundary!("moth_session_config_json", session = session, {
        init_out(needed);
        let st = handle(session, "session")?.state.lock()?;
        write_json(st.session.config(), buf, len, needed)
    })
}

/// Copies one `N x N` scheduler matrix (N = number of classes), row-major,
/// into `out` of `len` doubles (at least N*N, else
/// `MOTH_STATUS_BUFFER_TOO_SMALL`). `which` is a `MOTH_MATRIX_*` value.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_session_matrix(
    session: *const moth_session,
    which: moth_matrix_kind,
    out_values: *mut f64,
    len: usize,
) -> moth_status {
    ffi_boundary!("moth_session_matrix", session = session, {
        let st = handle(session, "session")?.state.lock()?;
        let sch = st.session.scheduler();
        let m = match which {
            MOTH_MATRIX_UNIV => &sch.univ,
            MOTH_MATRIX_SIZE => &sch.size,
            MOTH_MATRIX_DIFF => &sch.diff,
            MOTH_MATRIX_COUNT => &sch.count,
            other => {
                return Err(FfiError::invalid(format!(
                    "unknown matrix {other} (expected one of the MOTH_MATRIX_* values)"
                )))
            }
        };
        let n = m.len();
        if len < n * n {
            return Err(FfiError::new(
                moth_status::BufferTooSmall,
                format!("{len} doubles is too small for a {n}x{n} matrix"),
            ));
        }
        if out_values.is_null() {
            return Err(FfiError::null("out_values"));
        }
        for (i, row) in m.iter().enumerate() {
            // SAFETY: `out_values` holds `len >= n*n` doubles (C contract);
            // each row has `n` values.
            unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), out_values.add(i * n), n) };
        }
        Ok(())
    })
}

/// Copies the message of the last call on this session that did not return
/// `MOTH_STATUS_OK` into `buf` (same buffer rules as `moth_last_error`;
/// empty when none did). Never changes the stored message. Usable from
/// inside a log callback, and while another thread is in a call.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_session_last_error(
    session: *const moth_session,
    buf: *mut c_char,
    len: usize,
    needed: *mut usize,
) -> moth_status {
    ffi_boundary!("moth_session_last_error", quiet, {
        init_out(needed);
        let s = handle(session, "session")?;
        let msg = s.last_error.lock();
        // SAFETY: forwarded C contract of the buffer arguments.
        unsafe { write_c_string(msg.as_bytes_with_nul(), buf, len, needed) }
    })
}

/// Sets the session's log callback (NULL removes it); `user_data` is passed
/// to each call and freed with `free_user_data` (may be NULL) when the
/// callback is replaced or the session freed. With `callback == NULL`,
/// `free_user_data(user_data)` is called at once (when the call succeeds).
/// Like every callback moth invokes, the log callback runs with the session
/// locked: a call on the same session from inside it returns
/// `MOTH_STATUS_BUSY` (`moth_session_last_error` excepted). The session sends one info
/// line per step, accuracy verdicts, checkpoint saves, and every failed
/// call's message at error level (flow signals at info level). moth never
/// installs a process-wide logger.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_session_set_log_callback(
    session: *mut moth_session,
    callback: moth_log_fn,
    user_data: *mut c_void,
    free_user_data: moth_free_fn,
) -> moth_status {
    ffi_boundary!("moth_session_set_log_callback", session = session, {
        let s = handle(session, "session")?;
        let _st = s.state.lock()?;
        let sink = match callback {
            Some(f) => Some(LogSink::new(f, user_data, free_user_data)),
            None => {
                // No callback will ever get `user_data`: it is freed now,
                // as the header promises.
                if let Some(free) = free_user_data {
                    // SAFETY: the caller hands `user_data` over to be freed
                    // with `free_user_data`.
                    unsafe { free(user_data) };
                }
                None
            }
        };
        let old = std::mem::replace(&mut *s.log.lock(), sink);
        // The previous user data is freed here, outside the log mutex.
        drop(old);
        Ok(())
    })
}

/// Runs this session's hardening work on the caller's CUDA stream
/// `cuda_stream` (a `cudaStream_t`) of CUDA device `device`: for the
/// duration of each `moth_session_harden_batch` call, moth makes that stream
/// and device current on the calling thread (so every moth kernel, and every
/// forward pass of a callback classifier, runs on it), then restores the
/// stream and device that were current before, whether the call succeeded
/// or not. `cuda_stream == NULL` clears the setting: calls then run on the
/// calling thread's current stream, so a C++ trainer inside its own
/// `c10::cuda::CUDAStreamGuard` needs no call at all.
///
/// The caller keeps the stream alive while the session may use it. The
/// hardened batch is produced on the stream: work on the same stream may use
/// it at once, work on another stream must wait for it (an event). The
/// classifier must live on `cuda:<device>`
/// (`MOTH_STATUS_DEVICE` from `moth_session_harden_batch` otherwise). The
/// setting belongs to this process and is not saved in checkpoints: set it
/// again after `moth_session_load`/`moth_session_from_buffer`.
///
/// Returns `MOTH_STATUS_UNSUPPORTED` in a process without CUDA (CPU-only
/// libtorch or machine) and `MOTH_STATUS_DEVICE` for a device that does not
/// exist or a handle that cannot be a stream (`cudaStreamLegacy`,
/// `cudaStreamPerThread`, a misaligned value); the setting is then unchanged.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_session_set_cuda_stream(
    session: *mut moth_session,
    device: i32,
    cuda_stream: *mut c_void,
) -> moth_status {
    ffi_boundary!("moth_session_set_cuda_stream", session = session, {
        let s = handle(session, "session")?;
        let mut st = s.state.lock()?;
        let stream = if cuda_stream.is_null() {
            None
        } else {
            let device = usize::try_from(device)
                .map_err(|_| FfiError::invalid(format!("device must be >= 0, got {device}")))?;
            Some(CudaStream::external(device, cuda_stream)?)
        };
        st.session.set_cuda_stream(stream);
        Ok(())
    })
}

/// Writes the stream set with `moth_session_set_cuda_stream`: its device and
/// `cudaStream_t`, or `-1` and `NULL` when none is set (calls then run on the
/// calling thread's current stream).
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_session_cuda_stream(
    session: *const moth_session,
    out_device: *mut i32,
    out_stream: *mut *mut c_void,
) -> moth_status {
    ffi_boundary!("moth_session_cuda_stream", session = session, {
        init_out(out_stream);
        let o = out(out_stream, "out_stream")?;
        read_into(session, out_device, "out_device", |s| {
            let stream = s.cuda_stream();
            *o = stream.map_or(std::ptr::null_mut(), |st| st.handle());
            Ok(stream.map_or(-1, |st| st.device() as i32))
        })
    })
}

/// The common shape of the read-only getters: zero the out-parameter,
/// check it and then the session for NULL, lock the session and write what
/// `read` returns.
pub(super) fn read_into<T: Zeroable>(
    session: *const moth_session,
    out_ptr: *mut T,
    out_name: &str,
    read: impl FnOnce(&Session) -> FfiResult<T>,
) -> FfiResult<()> {
    init_out(out_ptr);
    let o = out(out_ptr, out_name)?;
    let st = handle(session, "session")?.state.lock()?;
    *o = read(&st.session)?;
    Ok(())
}
