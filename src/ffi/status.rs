//! The status code every C function returns, the error value the C layer
//! carries internally, and the thread-local last-error message.

use std::cell::RefCell;
use std::ffi::{c_char, CString};

use crate::error::{InputKind, PhaseKind};
use crate::Error;

/// What a moth C function reports. `0` is success, positive values are flow
/// signals a step-driven caller acts on (nothing failed, but the call did not
/// do its work), negative values are failures. Codes are never reused: a
/// retired code stays reserved.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum moth_status {
    /// Success.
    Ok = 0,
    /// Flow signal: the session is done; nothing was hardened.
    Done = 1,
    /// Flow signal: the session waits for a clean-accuracy report
    /// (`moth_session_report_accuracy`) before its next step.
    AccuracyWanted = 2,
    /// Flow signal: the caller's progress callback asked the computation
    /// to stop (`moth_distance_measure`); nothing was produced.
    Cancelled = 3,
    /// A required pointer argument was NULL.
    NullPointer = -1,
    /// A string argument was not valid UTF-8.
    InvalidUtf8 = -2,
    /// An argument is out of its allowed range (an unknown enumeration value,
    /// a negative dimension, a size that overflows, ...).
    InvalidArgument = -3,
    /// A configuration value or JSON document was rejected.
    InvalidConfig = -4,
    /// Input data was rejected (none of the more precise input codes applies).
    InvalidInput = -5,
    /// A tensor has the wrong shape (batch and labels disagree, the input
    /// shape differs from the session's, an empty batch).
    WrongShape = -6,
    /// A tensor has the wrong element type (labels must be integers, pixels
    /// floating point).
    WrongDtype = -7,
    /// A label is outside `[0, num_classes)`.
    LabelOutOfRange = -8,
    /// Tensor values are outside their domain (pixels outside `[0, 1]`,
    /// NaN or infinite values, an accuracy outside `[0, 1]`).
    InvalidValue = -9,
    /// The call is not allowed in the session's current phase.
    Phase = -10,
    /// A checkpoint was refused (another format version, corrupted,
    /// truncated, or made for another model).
    Checkpoint = -11,
    /// An operating-system I/O error.
    Io = -12,
    /// A file could not be parsed (a TorchScript module, a dataset), or a
    /// value could not be serialised (a configuration to JSON).
    Format = -13,
    /// The requested device could not be used.
    Device = -14,
    /// libtorch reported an error.
    Torch = -15,
    /// A caller-supplied callback failed: it returned a non-zero status, or
    /// a forward callback returned 0 without storing logits, or with logits
    /// that gradients cannot flow through (detached, or computed with
    /// autograd off).
    Callback = -16,
    /// A caller buffer is too small; the needed size was written.
    BufferTooSmall = -17,
    /// A panic (a bug in moth) was caught at the boundary. When it happened
    /// while a session or classifier was in use, that object is poisoned.
    Panic = -18,
    /// The object was poisoned by an earlier panic; free it.
    Poisoned = -19,
    /// The object is in use by a call further up this thread's stack (for
    /// example a callback calling back into the session that invoked it).
    Busy = -20,
    /// The operation is not supported by this build or machine (CUDA or
    /// CUDA streams in a process without CUDA).
    Unsupported = -21,
    /// A handle argument is not a live handle of the expected type: it was
    /// freed already, or it is a handle of another type (a tensor passed as
    /// a session). See the header's preamble for what moth cannot detect.
    InvalidHandle = -22,
    /// The model's outputs cannot be used: a trigger inversion diverged on
    /// NaN or infinite logits, or a step would have put non-finite values
    /// into the session (which is then unchanged).
    ModelOutput = -23,
    /// The data-parallel ranks could not agree: a collective callback
    /// failed (a timeout in the trainer's process group, say), the ranks
    /// are out of step, or the session was hardened by another number of
    /// ranks. The session is unchanged; stop every rank.
    Collective = -24,
}

/// Every status, for tests and for `moth_status_name`.
pub(crate) const ALL_STATUSES: [moth_status; 28] = [
    moth_status::Ok,
    moth_status::Done,
    moth_status::AccuracyWanted,
    moth_status::Cancelled,
    moth_status::NullPointer,
    moth_status::InvalidUtf8,
    moth_status::InvalidArgument,
    moth_status::InvalidConfig,
    moth_status::InvalidInput,
    moth_status::WrongShape,
    moth_status::WrongDtype,
    moth_status::LabelOutOfRange,
    moth_status::InvalidValue,
    moth_status::Phase,
    moth_status::Checkpoint,
    moth_status::Io,
    moth_status::Format,
    moth_status::Device,
    moth_status::Torch,
    moth_status::Callback,
    moth_status::BufferTooSmall,
    moth_status::Panic,
    moth_status::Poisoned,
    moth_status::Busy,
    moth_status::Unsupported,
    moth_status::InvalidHandle,
    moth_status::ModelOutput,
    moth_status::Collective,
];

impl moth_status {
    /// Every status (for tests).
    pub fn all() -> &'static [moth_status] {
        &ALL_STATUSES
    }

    /// The C spelling of the status, as a NUL-terminated static string.
    pub fn name(self) -> &'static [u8] {
        match self {
            moth_status::Ok => b"MOTH_STATUS_OK\0",
            moth_status::Done => b"MOTH_STATUS_DONE\0",
            moth_status::AccuracyWanted => b"MOTH_STATUS_ACCURACY_WANTED\0",
            moth_status::Cancelled => b"MOTH_STATUS_CANCELLED\0",
            moth_status::NullPointer => b"MOTH_STATUS_NULL_POINTER\0",
            moth_status::InvalidUtf8 => b"MOTH_STATUS_INVALID_UTF8\0",
            moth_status::InvalidArgument => b"MOTH_STATUS_INVALID_ARGUMENT\0",
            moth_status::InvalidConfig => b"MOTH_STATUS_INVALID_CONFIG\0",
            moth_status::InvalidInput => b"MOTH_STATUS_INVALID_INPUT\0",
            moth_status::WrongShape => b"MOTH_STATUS_WRONG_SHAPE\0",
            moth_status::WrongDtype => b"MOTH_STATUS_WRONG_DTYPE\0",
            moth_status::LabelOutOfRange => b"MOTH_STATUS_LABEL_OUT_OF_RANGE\0",
            moth_status::InvalidValue => b"MOTH_STATUS_INVALID_VALUE\0",
            moth_status::Phase => b"MOTH_STATUS_PHASE\0",
            moth_status::Checkpoint => b"MOTH_STATUS_CHECKPOINT\0",
            moth_status::Io => b"MOTH_STATUS_IO\0",
            moth_status::Format => b"MOTH_STATUS_FORMAT\0",
            moth_status::Device => b"MOTH_STATUS_DEVICE\0",
            moth_status::Torch => b"MOTH_STATUS_TORCH\0",
            moth_status::Callback => b"MOTH_STATUS_CALLBACK\0",
            moth_status::BufferTooSmall => b"MOTH_STATUS_BUFFER_TOO_SMALL\0",
            moth_status::Panic => b"MOTH_STATUS_PANIC\0",
            moth_status::Poisoned => b"MOTH_STATUS_POISONED\0",
            moth_status::Busy => b"MOTH_STATUS_BUSY\0",
            moth_status::Unsupported => b"MOTH_STATUS_UNSUPPORTED\0",
            moth_status::InvalidHandle => b"MOTH_STATUS_INVALID_HANDLE\0",
            moth_status::ModelOutput => b"MOTH_STATUS_MODEL_OUTPUT\0",
            moth_status::Collective => b"MOTH_STATUS_COLLECTIVE\0",
        }
    }
}

/// A non-OK status with its message: what every C-layer helper returns on
/// failure. The boundary turns it into the returned status and the stored
/// last-error message.
#[derive(Debug, Clone, PartialEq)]
pub struct FfiError {
    /// The status returned to C (never `moth_status::Ok`).
    pub status: moth_status,
    /// Human-readable explanation.
    pub message: String,
}

impl FfiError {
    /// An error with `status` and `message`.
    pub fn new(status: moth_status, message: impl Into<String>) -> Self {
        FfiError {
            status,
            message: message.into(),
        }
    }

    /// A NULL pointer was passed for argument `arg`.
    pub fn null(arg: &str) -> Self {
        Self::new(
            moth_status::NullPointer,
            format!("argument '{arg}' is NULL"),
        )
    }

    /// An argument out of range.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(moth_status::InvalidArgument, message)
    }
}

/// Result of the C layer's helpers.
pub type FfiResult<T> = std::result::Result<T, FfiError>;

impl From<Error> for FfiError {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::Config(_) => moth_status::InvalidConfig,
            Error::Input(i) => input_status(i.kind),
            Error::Phase(p) => match p.kind {
                PhaseKind::Done => moth_status::Done,
                PhaseKind::AccuracyReportDue => moth_status::AccuracyWanted,
                PhaseKind::Other => moth_status::Phase,
            },
            Error::Format { .. } => moth_status::Format,
            Error::Checkpoint(_) => moth_status::Checkpoint,
            Error::Device(_) => moth_status::Device,
            Error::Unsupported(_) => moth_status::Unsupported,
            Error::Io { .. } => moth_status::Io,
            Error::Torch(_) => moth_status::Torch,
            Error::Callback(_) => moth_status::Callback,
            Error::Collective(_) => moth_status::Collective,
            Error::Model(_) => moth_status::ModelOutput,
            Error::Cancelled(_) => moth_status::Cancelled,
            Error::Encode { .. } => moth_status::Format,
        };
        let message = match &e {
            // The session's phase messages name the method to call next.
            Error::Phase(_) => with_c_names(&e.to_string()),
            _ => e.to_string(),
        };
        FfiError::new(status, message)
    }
}

/// The Rust methods that messages of the core name, and the C function a
/// C caller calls instead.
const C_NAMES: [(&str, &str); 3] = [
    ("harden_batch", "moth_session_harden_batch"),
    ("report_accuracy", "moth_session_report_accuracy"),
    ("wants_accuracy", "moth_session_wants_accuracy"),
];

/// `message` with each whole-word Rust method name of [`C_NAMES`] replaced
/// by its C function ("a report is due (report_accuracy)" becomes "... due
/// (moth_session_report_accuracy)").
fn with_c_names(message: &str) -> String {
    let mut out = String::with_capacity(message.len() + 16);
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        let w = std::mem::take(word);
        match C_NAMES.iter().find(|(rust, _)| *rust == w) {
            Some((_, c)) => out.push_str(c),
            None => out.push_str(&w),
        }
    };
    for ch in message.chars() {
        if ch.is_alphanumeric() || ch == '_' {
            word.push(ch);
        } else {
            flush(&mut word, &mut out);
            out.push(ch);
        }
    }
    flush(&mut word, &mut out);
    out
}

impl From<tch::TchError> for FfiError {
    fn from(e: tch::TchError) -> Self {
        Error::Torch(e).into()
    }
}

/// The status of each kind of input error.
pub fn input_status(kind: InputKind) -> moth_status {
    match kind {
        InputKind::WrongShape => moth_status::WrongShape,
        InputKind::WrongDtype => moth_status::WrongDtype,
        InputKind::LabelOutOfRange => moth_status::LabelOutOfRange,
        InputKind::InvalidValue => moth_status::InvalidValue,
        InputKind::Other => moth_status::InvalidInput,
    }
}

thread_local! {
    /// The message of the last failed call on this thread.
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

/// A C string of `message`; interior NULs (which C cannot carry) become `\0`.
pub(crate) fn c_message(message: &str) -> CString {
    CString::new(message.replace('\0', "\\0")).unwrap_or_default()
}

/// Records `message` as this thread's last error.
pub(crate) fn set_thread_error(message: &str) {
    LAST_ERROR.with(|e| *e.borrow_mut() = Some(c_message(message)));
}

/// Copies this thread's last error into a caller buffer (see
/// [`write_c_string`]).
pub(crate) fn thread_error_into(buf: *mut c_char, len: usize, needed: *mut usize) -> FfiResult<()> {
    LAST_ERROR.with(|e| {
        let e = e.borrow();
        let bytes = e.as_ref().map(|c| c.as_bytes_with_nul()).unwrap_or(b"\0");
        // SAFETY: forwarded caller contract (see the C documentation).
        unsafe { write_c_string(bytes, buf, len, needed) }
    })
}

/// Writes the NUL-terminated `bytes` into the caller's `buf` of `len` bytes.
/// `*needed` (required) receives the size including the NUL in every case;
/// `buf` is written only when it is large enough (it may be NULL when `len`
/// is 0, to query the size). Returns `BufferTooSmall` otherwise.
///
/// # Safety
/// `buf` must be NULL or point to `len` writable bytes; `needed` must be
/// NULL or point to a writable `size_t`.
pub(crate) unsafe fn write_c_string(
    bytes_with_nul: &[u8],
    buf: *mut c_char,
    len: usize,
    needed: *mut usize,
) -> FfiResult<()> {
    if needed.is_null() {
        return Err(FfiError::null("needed"));
    }
    // SAFETY: checked non-NULL above; the caller promises it is writable.
    unsafe { *needed = bytes_with_nul.len() };
    if len < bytes_with_nul.len() {
        return Err(FfiError::new(
            moth_status::BufferTooSmall,
            format!(
                "buffer of {len} bytes is too small: {} needed",
                bytes_with_nul.len()
            ),
        ));
    }
    if buf.is_null() {
        return Err(FfiError::null("buf"));
    }
    // SAFETY: `buf` holds at least `len >= bytes_with_nul.len()` bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes_with_nul.as_ptr(),
            buf.cast::<u8>(),
            bytes_with_nul.len(),
        )
    };
    Ok(())
}

/// Returns the C name of a status (`"MOTH_STATUS_WRONG_SHAPE"`), or
/// `"MOTH_STATUS_UNKNOWN"` for a value that is not a status. The string is
/// static: do not free it.
#[no_mangle]
pub extern "C" fn moth_status_name(status: i32) -> *const c_char {
    ffi_boundary!(
        "moth_status_name",
        value = c"MOTH_STATUS_UNKNOWN".as_ptr(),
        {
            let name = ALL_STATUSES
                .iter()
                .find(|s| **s as i32 == status)
                .map(|s| s.name())
                .unwrap_or(b"MOTH_STATUS_UNKNOWN\0");
            Ok(name.as_ptr().cast::<c_char>())
        }
    )
}

/// Copies the message of the last moth call made on this thread (with or
/// without a handle) that did not return `MOTH_STATUS_OK` (failures and
/// flow signals) into `buf`; successful calls leave it unchanged.
///
/// `*needed` receives the buffer size required, including the terminating
/// NUL, whether or not `buf` was large enough; pass `buf = NULL, len = 0`
/// to query it. The message is written only when `len >= *needed`;
/// otherwise `MOTH_STATUS_BUFFER_TOO_SMALL` is returned. An empty string
/// means no call on this thread has failed. Calling this function never
/// changes the stored message. Prefer `moth_session_last_error` for calls
/// on a session: a thread-local message is lost when a runtime moves the
/// caller between threads (Go goroutines).
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_last_error(
    buf: *mut c_char,
    len: usize,
    needed: *mut usize,
) -> moth_status {
    ffi_boundary!("moth_last_error", quiet, {
        init_out(needed);
        thread_error_into(buf, len, needed)
    })
}

use super::boundary::init_out;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_ordered() {
        let mut codes: Vec<i32> = ALL_STATUSES.iter().map(|s| *s as i32).collect();
        let n = codes.len();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), n);
        for s in ALL_STATUSES {
            let name = std::str::from_utf8(s.name()).unwrap();
            assert!(name.starts_with("MOTH_STATUS_") && name.ends_with('\0'));
        }
    }

    #[test]
    fn phase_messages_name_the_c_functions() {
        assert_eq!(
            with_c_names("a report is due (report_accuracy); see wants_accuracy."),
            "a report is due (moth_session_report_accuracy); see moth_session_wants_accuracy."
        );
        assert_eq!(
            with_c_names("moth_session_report_accuracy or report_accuracy_x"),
            "moth_session_report_accuracy or report_accuracy_x"
        );
        let e = FfiError::from(Error::phase(
            PhaseKind::AccuracyReportDue,
            "a clean-accuracy report is due (report_accuracy) before the next step",
        ));
        assert_eq!(e.status, moth_status::AccuracyWanted);
        assert_eq!(
            e.message,
            "wrong phase: a clean-accuracy report is due (moth_session_report_accuracy) \
             before the next step"
        );
        // Other errors keep their text (a configuration key may look like a
        // method name).
        let e = FfiError::from(Error::Config("harden_batch".into()));
        assert_eq!(e.message, "invalid configuration: harden_batch");
    }

    #[test]
    fn callback_and_encode_errors_have_their_statuses() {
        let e = FfiError::from(Error::Callback("forward callback returned status 3".into()));
        assert_eq!(e.status, moth_status::Callback);
        assert_eq!(e.message, "forward callback returned status 3");
        let json_err = serde_json::from_str::<u8>("x").unwrap_err();
        let e = FfiError::from(Error::encode("the configuration", json_err));
        assert_eq!(e.status, moth_status::Format);
        assert!(
            e.message
                .starts_with("cannot serialise the configuration: "),
            "{}",
            e.message
        );
    }

    /// Each input kind has its own status, none of them OK or a flow signal.
    #[test]
    fn input_kinds_map_to_distinct_failure_codes() {
        let kinds = [
            InputKind::WrongShape,
            InputKind::WrongDtype,
            InputKind::LabelOutOfRange,
            InputKind::InvalidValue,
            InputKind::Other,
        ];
        let mut codes: Vec<i32> = kinds.iter().map(|&k| input_status(k) as i32).collect();
        assert!(codes.iter().all(|&c| c < 0));
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), kinds.len());
        let e = FfiError::from(Error::input_of(InputKind::LabelOutOfRange, "label 9"));
        assert_eq!(e.status, moth_status::LabelOutOfRange);
        assert_eq!(e.message, "invalid input: label 9");
    }
}
