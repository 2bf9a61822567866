//! Per-session log callbacks. moth never installs a global `log` logger in
//! a host program: each session sends its own messages (step summaries,
//! accuracy verdicts, checkpoints, errors) to the callback set on it,
//! synchronously, on the thread that made the call.

use std::cell::Cell;
use std::ffi::{c_char, c_void};
use std::sync::Arc;

use super::status::c_message;

/// Severity of a log message (the `log` crate's levels).
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum moth_log_level {
    /// A call failed (the message is also the session's last error).
    Error = 1,
    /// Something the caller should know about.
    Warn = 2,
    /// One line per step, accuracy verdicts, checkpoints.
    Info = 3,
    /// Details.
    Debug = 4,
    /// Very fine details.
    Trace = 5,
}

/// A log callback: `message` is a NUL-terminated UTF-8 string borrowed for
/// the duration of the call (copy it to keep it). Called synchronously on
/// the thread that made the moth call, never from another thread. It must
/// not throw (C++) or unwind, and must not call back into the same session
/// (such a call returns `MOTH_STATUS_BUSY`).
pub type moth_log_fn = Option<
    unsafe extern "C" fn(level: moth_log_level, message: *const c_char, user_data: *mut c_void),
>;

/// Frees caller user data when moth no longer needs it (a callback was
/// replaced, or its session or classifier was freed).
pub type moth_free_fn = Option<unsafe extern "C" fn(user_data: *mut c_void)>;

thread_local! {
    /// Whether this thread is running a log callback.
    static IN_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

/// A caller's log callback with its user data; frees the user data when the
/// last reference is dropped.
pub struct LogSink {
    func: unsafe extern "C" fn(moth_log_level, *const c_char, *mut c_void),
    user: *mut c_void,
    free: moth_free_fn,
}

// SAFETY: moth only calls the callback on the thread making the current
// call, serialised by the session mutex; sharing the pointer between
// threads is what the C contract allows (a session may move between
// threads, one call at a time).
unsafe impl Send for LogSink {}
// SAFETY: as above.
unsafe impl Sync for LogSink {}

impl LogSink {
    /// A sink calling `func` with `user`, freeing `user` with `free`.
    pub fn new(
        func: unsafe extern "C" fn(moth_log_level, *const c_char, *mut c_void),
        user: *mut c_void,
        free: moth_free_fn,
    ) -> Arc<Self> {
        Arc::new(LogSink { func, user, free })
    }

    /// Sends one message. A message produced while this thread is already
    /// inside a log callback (the callback called moth, which failed) is
    /// dropped, so that a callback can never recurse without end.
    pub fn emit(&self, level: moth_log_level, message: &str) {
        if IN_CALLBACK.with(Cell::get) {
            return;
        }
        let c = c_message(message);
        IN_CALLBACK.with(|f| f.set(true));
        // SAFETY: the caller registered `func` for exactly this use; the
        // message outlives the call.
        unsafe { (self.func)(level, c.as_ptr(), self.user) };
        IN_CALLBACK.with(|f| f.set(false));
    }
}

impl Drop for LogSink {
    fn drop(&mut self) {
        if let Some(free) = self.free {
            // SAFETY: the caller asked moth to free `user` with `free` once.
            unsafe { free(self.user) };
        }
    }
}
