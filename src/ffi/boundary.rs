//! The boundary every exported function body runs inside: it catches panics
//! (a panic escaping `extern "C"` aborts the caller's process), turns errors
//! into a status plus a stored message, and helpers for the pointer
//! arguments (NULL checks, out-parameter zeroing, UTF-8).
//!
//! The per-object lock [`Guarded`] lives here too: it serialises concurrent
//! calls, reports a re-entrant call from a callback as `Busy` instead of
//! deadlocking, and poisons its object when a panic unwinds through a call
//! that held it.

use std::any::Any;
use std::cell::Cell;
use std::ffi::{c_char, CStr};
use std::ops::{Deref, DerefMut};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Once;

use parking_lot::{Mutex, MutexGuard};

use super::handle::{handle, Handle};
use super::status::{moth_status, set_thread_error, FfiError, FfiResult};
use crate::torch::grad::GradGuard;

/// Runs the body of an exported function inside the boundary. Forms:
///
/// - `ffi_boundary!("name", { body })`: the body returns `FfiResult<()>`,
///   the function returns `moth_status`;
/// - `ffi_boundary!("name", session = s, { body })`: same, and failures are
///   also recorded on the session `s` (a `*const moth_session`, may be NULL);
/// - `ffi_boundary!("name", quiet, { body })`: same, but a failure is not
///   recorded anywhere (the last-error getters must not overwrite the
///   message they return);
/// - `ffi_boundary!("name", value = fallback, { body })`: the body returns
///   `FfiResult<T>` and the function returns `T`, or `fallback` on failure
///   (for the few functions that return a value, not a status);
/// - `ffi_boundary!("name", void, { body })`: the body returns `FfiResult<()>`
///   and the function returns nothing (the `_free` functions).
///
/// A test (`tests/c_abi_boundary.rs`) checks that every `extern "C"` function's body
/// is exactly one invocation of this macro.
macro_rules! ffi_boundary {
    ($name:literal, session = $s:expr, $body:block) => {
        $crate::ffi::boundary::run_status(
            $name,
            Some($crate::ffi::boundary::recorder($s)),
            false,
            || -> $crate::ffi::status::FfiResult<()> { $body },
        )
    };
    ($name:literal, quiet, $body:block) => {
        $crate::ffi::boundary::run_status(
            $name,
            None,
            true,
            || -> $crate::ffi::status::FfiResult<()> { $body },
        )
    };
    ($name:literal, value = $fallback:expr, $body:block) => {
        $crate::ffi::boundary::run_value($name, $fallback, || $body)
    };
    ($name:literal, void, $body:block) => {
        $crate::ffi::boundary::run_value($name, (), || -> $crate::ffi::status::FfiResult<()> {
            $body
        })
    };
    ($name:literal, $body:block) => {
        $crate::ffi::boundary::run_status(
            $name,
            None,
            false,
            || -> $crate::ffi::status::FfiResult<()> { $body },
        )
    };
}

/// An object that keeps a record of the failures of calls made on it (the
/// session handle: its last error and log callback), and that a panic can
/// poison. The boundary knows objects only through this trait, so that it
/// depends on no handle type.
pub(crate) trait ErrorRecord {
    /// Whether a panic poisoned the object.
    fn is_poisoned(&self) -> bool;
    /// Stores a failed call's status and message on the object.
    fn record_error(&self, status: moth_status, message: &str);
}

/// The handle pointer `p` as the boundary sees it: NULL when it is NULL or
/// not a live handle of its type (the body then reports why), so that a
/// failure is never recorded through a bad pointer.
pub(crate) fn recorder<T: ErrorRecord + Handle>(p: *const T) -> *const dyn ErrorRecord {
    match handle(p, "") {
        Ok(r) => r as *const T,
        Err(_) => std::ptr::null::<T>(),
    }
}

/// The text of a panic payload.
fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_string()
    }
}

/// Runs `f` with panics caught and with the thread's grad mode restored
/// afterwards, whatever `f` did to it, before any of the caller's callbacks
/// see the outcome (a C++ host whose thread was left with autograd off
/// crashes on its next backward pass).
fn guarded<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    install_quiet_panic_hook();
    let _grad = GradGuard::keep();
    let _inside = Inside::enter();
    catch_unwind(AssertUnwindSafe(f))
}

thread_local! {
    /// How many boundary calls are in progress on this thread (a callback
    /// may call moth again).
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Marks this thread as inside a boundary call while alive.
struct Inside;

impl Inside {
    fn enter() -> Self {
        DEPTH.with(|d| d.set(d.get() + 1));
        Inside
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// The default panic hook prints to stderr even for a panic that the
/// boundary catches and returns as a status with its message; a library
/// must not write to its host's stderr. Installed once per process, the hook
/// stays silent on threads inside a boundary call and hands every other
/// panic to the hook that was there before (the host's, or Rust's default).
fn install_quiet_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if DEPTH.with(Cell::get) == 0 {
                previous(info);
            }
        }));
    });
}

/// Runs `f`, catching panics; returns its status and records failures (on
/// this thread and, when `on` is a non-NULL handle, on that object).
pub(crate) fn run_status<F>(
    name: &'static str,
    on: Option<*const dyn ErrorRecord>,
    quiet: bool,
    f: F,
) -> moth_status
where
    F: FnOnce() -> FfiResult<()>,
{
    // SAFETY: `on` is NULL or a handle whose tag `recorder` checked, passed
    // to this very call and alive until it returns (C contract).
    let on = on.and_then(|p| unsafe { p.as_ref() });
    let err = match guarded(f) {
        Ok(Ok(())) => return moth_status::Ok,
        Ok(Err(e)) => e,
        Err(payload) => {
            let poisoned = on.is_some_and(|o| o.is_poisoned());
            FfiError::new(
                moth_status::Panic,
                format!(
                    "internal error (panic) in {name}: {}{}",
                    panic_message(payload.as_ref()),
                    if poisoned {
                        "; the session is poisoned and must be freed"
                    } else {
                        ""
                    }
                ),
            )
        }
    };
    if !quiet {
        let message = format!("{name}: {}", err.message);
        set_thread_error(&message);
        if let Some(o) = on {
            // Recording must not panic out of the boundary either.
            let _ = catch_unwind(AssertUnwindSafe(|| o.record_error(err.status, &message)));
        }
    }
    err.status
}

/// Runs `f`, catching panics; returns its value, or `fallback` (after
/// recording the message on this thread) when it fails.
pub(crate) fn run_value<T, F>(name: &'static str, fallback: T, f: F) -> T
where
    F: FnOnce() -> FfiResult<T>,
{
    match guarded(f) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            set_thread_error(&format!("{name}: {}", e.message));
            fallback
        }
        Err(payload) => {
            set_thread_error(&format!(
                "{name}: internal error (panic): {}",
                panic_message(payload.as_ref())
            ));
            fallback
        }
    }
}

/// Types whose all-zero bit pattern is a valid value, so an out-parameter
/// of that type can be zeroed on entry.
///
/// # Safety
/// Implement only for types for which all-zero bytes are a valid value.
pub(crate) unsafe trait Zeroable {}

// SAFETY: all-zero is a valid value of each of these.
unsafe impl Zeroable for usize {}
// SAFETY: as above.
unsafe impl Zeroable for u64 {}
// SAFETY: as above.
unsafe impl Zeroable for i64 {}
// SAFETY: as above.
unsafe impl Zeroable for i32 {}
// SAFETY: as above.
unsafe impl Zeroable for f64 {}
// SAFETY: false.
unsafe impl Zeroable for bool {}
// SAFETY: NULL.
unsafe impl<T> Zeroable for *mut T {}
// SAFETY: NULL.
unsafe impl<T> Zeroable for *const T {}

/// Zeroes an out-parameter when it is not NULL.
pub(crate) fn init_out<T: Zeroable>(p: *mut T) {
    if !p.is_null() {
        // SAFETY: `p` is non-NULL and, by the C contract, points to a
        // writable `T`; all-zero is a valid `T` (Zeroable).
        unsafe { std::ptr::write_bytes(p, 0, 1) };
    }
}

/// The out-parameter `p` as a reference, or `NullPointer` naming `name`.
pub(crate) fn out<'a, T>(p: *mut T, name: &str) -> FfiResult<&'a mut T> {
    // SAFETY: non-NULL pointers from C point to a writable, aligned `T`
    // for the duration of the call (C contract).
    unsafe { p.as_mut() }.ok_or_else(|| FfiError::null(name))
}

/// A NUL-terminated C string as UTF-8, or `NullPointer` / `InvalidUtf8`.
pub(crate) fn c_str<'a>(p: *const c_char, name: &str) -> FfiResult<&'a str> {
    if p.is_null() {
        return Err(FfiError::null(name));
    }
    // SAFETY: non-NULL and NUL-terminated by the C contract.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str().map_err(|e| {
        FfiError::new(
            moth_status::InvalidUtf8,
            format!("argument '{name}' is not valid UTF-8: {e}"),
        )
    })
}

static NEXT_THREAD_TOKEN: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static THREAD_TOKEN: u64 = NEXT_THREAD_TOKEN.fetch_add(1, Ordering::Relaxed);
}

fn thread_token() -> u64 {
    THREAD_TOKEN.with(|t| *t)
}

/// A value behind a per-object mutex that knows which thread holds it and
/// whether a panic happened while it was held.
pub(crate) struct Guarded<T> {
    what: &'static str,
    data: Mutex<T>,
    owner: AtomicU64,
    poisoned: AtomicBool,
}

impl<T> Guarded<T> {
    /// Wraps `value`; `what` names the object in messages ("session").
    pub fn new(what: &'static str, value: T) -> Self {
        Guarded {
            what,
            data: Mutex::new(value),
            owner: AtomicU64::new(0),
            poisoned: AtomicBool::new(false),
        }
    }

    /// Whether a panic happened while the value was held.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    fn poisoned_error(&self) -> FfiError {
        FfiError::new(
            moth_status::Poisoned,
            format!(
                "this {} was poisoned by an earlier internal error (panic); free it",
                self.what
            ),
        )
    }

    /// Locks the value: waits while another thread uses it, fails with
    /// `Busy` when this thread already holds it (a callback re-entering),
    /// and with `Poisoned` after a panic.
    pub fn lock(&self) -> FfiResult<GuardRef<'_, T>> {
        if self.is_poisoned() {
            return Err(self.poisoned_error());
        }
        let me = thread_token();
        let guard = match self.data.try_lock() {
            Some(g) => g,
            None if self.owner.load(Ordering::Acquire) == me => {
                return Err(FfiError::new(
                    moth_status::Busy,
                    format!(
                        "this {} is in use by a call further up this thread's stack \
                         (a callback may not call back into the object that invoked it)",
                        self.what
                    ),
                ))
            }
            None => self.data.lock(),
        };
        if self.is_poisoned() {
            return Err(self.poisoned_error());
        }
        self.owner.store(me, Ordering::Release);
        Ok(GuardRef {
            guard,
            owner: &self.owner,
            poisoned: &self.poisoned,
        })
    }
}

/// A held [`Guarded`] value. Dropping it during a panic poisons the object.
pub(crate) struct GuardRef<'a, T> {
    guard: MutexGuard<'a, T>,
    owner: &'a AtomicU64,
    poisoned: &'a AtomicBool,
}

impl<T> Drop for GuardRef<'_, T> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.poisoned.store(true, Ordering::Release);
        }
        self.owner.store(0, Ordering::Release);
    }
}

impl<T> Deref for GuardRef<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for GuardRef<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_status_and_message() {
        let st = run_status("test_fn", None, false, || panic!("boom"));
        assert_eq!(st, moth_status::Panic);
        let mut needed = 0usize;
        let mut buf = vec![0 as c_char; 256];
        let st2 = super::super::status::thread_error_into(buf.as_mut_ptr(), buf.len(), &mut needed);
        assert!(st2.is_ok());
        // SAFETY: written NUL-terminated above.
        let msg = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_str().unwrap();
        assert!(msg.contains("test_fn") && msg.contains("boom"), "{msg}");
        assert_eq!(run_value("v", 7, || -> FfiResult<i32> { panic!("x") }), 7);
    }

    /// A panic caught at the boundary writes nothing to stderr (its message
    /// goes into the status message only); a panic elsewhere in the process
    /// still reaches the hook that was there before. Checked in a child
    /// process, whose stderr is its own.
    #[test]
    fn caught_panics_print_nothing() {
        const CHILD: &str = "MOTH_TEST_PANIC_CHILD";
        if std::env::var_os(CHILD).is_some() {
            let st = run_status("quiet_fn", None, true, || panic!("caught at the boundary"));
            assert_eq!(st, moth_status::Panic);
            let _ = std::panic::catch_unwind(|| panic!("outside any boundary"));
            return;
        }
        let me = std::env::current_exe().unwrap();
        let out = std::process::Command::new(me)
            .args([
                "--exact",
                "ffi::boundary::tests::caught_panics_print_nothing",
            ])
            .args(["--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(!err.contains("caught at the boundary"), "{err}");
        assert!(err.contains("outside any boundary"), "{err}");
    }

    /// Whatever a body does to grad mode before it fails, panics or even
    /// succeeds, the caller's thread gets its own mode back.
    #[test]
    fn the_runners_restore_grad_mode() {
        use crate::torch::grad::{is_enabled, GradGuard};
        let switch_off = || std::mem::forget(GradGuard::set(false));
        for host_mode in [true, false] {
            let _host = GradGuard::set(host_mode);
            let flip = || std::mem::forget(GradGuard::set(!host_mode));
            let st = run_status("panics", None, true, || {
                flip();
                panic!("with grad mode flipped")
            });
            assert_eq!(st, moth_status::Panic);
            assert_eq!(is_enabled(), host_mode, "after a panic");
            let st = run_status("fails", None, true, || {
                flip();
                Err(FfiError::invalid("with grad mode flipped"))
            });
            assert_eq!(st, moth_status::InvalidArgument);
            assert_eq!(is_enabled(), host_mode, "after an error");
            let st = run_status("succeeds", None, true, || {
                flip();
                Ok(())
            });
            assert_eq!(st, moth_status::Ok);
            assert_eq!(is_enabled(), host_mode, "after a success");
            let v = run_value("panics", 1, || -> FfiResult<i32> {
                switch_off();
                panic!("with grad mode off")
            });
            assert_eq!((v, is_enabled()), (1, host_mode));
        }
        assert!(is_enabled());
    }

    #[test]
    fn guard_poisons_on_panic_and_reports_reentry() {
        let g = Guarded::new("thing", 5);
        {
            let _held = g.lock().unwrap();
            assert_eq!(g.lock().err().unwrap().status, moth_status::Busy);
        }
        assert!(g.lock().is_ok());
        let r = catch_unwind(AssertUnwindSafe(|| {
            let _held = g.lock().unwrap();
            panic!("inside");
        }));
        assert!(r.is_err());
        assert!(g.is_poisoned());
        assert_eq!(g.lock().err().unwrap().status, moth_status::Poisoned);
    }
}

#[cfg(test)]
mod poisoning_tests {
    use crate::ffi::config::moth_config_new;
    use crate::ffi::session::*;
    use crate::ffi::status::moth_status;
    use std::ffi::c_char;

    /// A call that panics while it holds the session, as a bug in moth
    /// would: the panic must come back as a status and poison the session.
    unsafe extern "C" fn panics_while_holding(session: *mut moth_session) -> moth_status {
        ffi_boundary!("panics_while_holding", session = session, {
            let st = crate::ffi::handle::handle(session, "session")?
                .state
                .lock()?;
            if st.session.step() == 0 {
                panic!("injected failure");
            }
            Ok(())
        })
    }

    fn last_error(s: *const moth_session) -> String {
        let mut buf = vec![0 as c_char; 1024];
        let mut n = 0;
        // SAFETY: a live session and a buffer of buf.len() bytes.
        let st = unsafe { moth_session_last_error(s, buf.as_mut_ptr(), buf.len(), &mut n) };
        assert_eq!(st, moth_status::Ok);
        // SAFETY: NUL-terminated by moth.
        unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn a_panic_poisons_the_session() {
        // SAFETY: handles made and freed here.
        unsafe {
            let mut cfg = std::ptr::null_mut();
            assert_eq!(moth_config_new(&mut cfg), moth_status::Ok);
            let mut s = std::ptr::null_mut();
            assert_eq!(moth_session_new(cfg, 3, 1, 4, 4, &mut s), moth_status::Ok);
            assert_eq!(panics_while_holding(s), moth_status::Panic);
            let msg = last_error(s);
            assert!(msg.contains("injected failure"), "{msg}");
            assert!(msg.contains("poisoned"), "{msg}");
            let mut step = 7;
            assert_eq!(moth_session_step(s, &mut step), moth_status::Poisoned);
            assert_eq!(step, 0);
            assert!(last_error(s).contains("poisoned by an earlier internal error"));
            let mut p = std::mem::zeroed();
            assert_eq!(moth_session_phase(s, &mut p), moth_status::Poisoned);
            moth_session_free(s);
            crate::ffi::config::moth_config_free(cfg);
        }
    }
}
