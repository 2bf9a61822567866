//! Saving and restoring a `moth_session`: checkpoint files (written
//! atomically) and in-memory buffers with the same bytes.

use std::ffi::c_char;
use std::path::Path;

use super::boundary::{c_str, init_out, out};
use super::buffer::moth_buffer;
use super::handle::{handle, into_handle};
use super::log::moth_log_level;
use super::session::{expected_spec, moth_session, read_into};
use super::status::{moth_status, FfiError, FfiResult};
use crate::session::Session;

/// Saves the session to a checkpoint file at `path`, atomically (a
/// temporary file in the same folder, then a rename). The checkpoint holds
/// the whole hardening state (matrices, triggers, bounds, counters, RNG,
/// configuration); the model and optimiser are the caller's to save.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_session_save(
    session: *const moth_session,
    path: *const c_char,
) -> moth_status {
    ffi_boundary!("moth_session_save", session = session, {
        let s = handle(session, "session")?;
        let path = c_str(path, "path")?;
        let st = s.state.lock()?;
        st.session.save(Path::new(path))?;
        s.log_with(moth_log_level::Info, || {
            format!("saved the session at step {} to {path}", st.session.step())
        });
        Ok(())
    })
}

/// Serialises the session into a new buffer (the checkpoint file's bytes).
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_session_to_buffer(
    session: *const moth_session,
    out_buffer: *mut *mut moth_buffer,
) -> moth_status {
    ffi_boundary!("moth_session_to_buffer", session = session, {
        read_into(session, out_buffer, "out_buffer", |s| {
            let bytes = s.to_bytes()?;
            Ok(into_handle(moth_buffer::new(bytes)))
        })
    })
}

fn loaded(session: crate::Result<Session>, o: &mut *mut moth_session) -> FfiResult<()> {
    *o = into_handle(moth_session::new(session?));
    Ok(())
}

/// Loads a session saved with `moth_session_save`. With `num_classes > 0`
/// the checkpoint must have been made for that class count and input shape
/// `[c, h, w]` (`MOTH_STATUS_CHECKPOINT` otherwise); `num_classes == 0`
/// accepts any (read the spec with `moth_session_spec`). A corrupted,
/// truncated or other-version file gives `MOTH_STATUS_CHECKPOINT`.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_session_load(
    path: *const c_char,
    num_classes: usize,
    c: i64,
    h: i64,
    w: i64,
    out_session: *mut *mut moth_session,
) -> moth_status {
    ffi_boundary!("moth_session_load", {
        init_out(out_session);
        let o = out(out_session, "out_session")?;
        let path = c_str(path, "path")?;
        loaded(
            Session::load(Path::new(path), expected_spec(num_classes, c, h, w)),
            o,
        )
    })
}

/// Restores a session from `len` bytes at `data` (made by
/// `moth_session_to_buffer` or read from a checkpoint file); `num_classes`,
/// `c`, `h`, `w` as for `moth_session_load`. The bytes are not kept.
/// `data` may be NULL only when `len` is 0 (an empty buffer, refused as a
/// truncated checkpoint with `MOTH_STATUS_CHECKPOINT`).
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_session_from_buffer(
    data: *const u8,
    len: usize,
    num_classes: usize,
    c: i64,
    h: i64,
    w: i64,
    out_session: *mut *mut moth_session,
) -> moth_status {
    ffi_boundary!("moth_session_from_buffer", {
        init_out(out_session);
        let o = out(out_session, "out_session")?;
        let bytes: &[u8] = match (data.is_null(), len) {
            (true, 0) => &[],
            (true, _) => return Err(FfiError::null("data")),
            // SAFETY: non-NULL; the caller promises `len` readable bytes.
            (false, _) => unsafe { std::slice::from_raw_parts(data, len) },
        };
        loaded(
            Session::from_bytes(bytes, expected_spec(num_classes, c, h, w)),
            o,
        )
    })
}
