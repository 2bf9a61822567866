//! `moth_buffer`: bytes moth made (a serialised session, see
//! `moth_session_to_buffer`) handed to C, read in place and freed by moth.

use super::boundary::{init_out, out};
use super::handle::{handle, release, Handle};
use super::status::moth_status;

/// An owned byte buffer made by moth (a checkpoint). Read it with
/// `moth_buffer_data`, free it with `moth_buffer_free`.
pub struct moth_buffer {
    bytes: Vec<u8>,
}

impl Handle for moth_buffer {
    const TAG: u64 = u64::from_be_bytes(*b"mothBUFF");
    const WHAT: &'static str = "buffer";
}

impl moth_buffer {
    /// A buffer owning `bytes`.
    pub(crate) fn new(bytes: Vec<u8>) -> Self {
        moth_buffer { bytes }
    }
}

/// Writes the buffer's start and length. The bytes stay valid, unchanged,
/// until `moth_buffer_free`.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_buffer_data(
    buffer: *const moth_buffer,
    out_data: *mut *const u8,
    out_len: *mut usize,
) -> moth_status {
    ffi_boundary!("moth_buffer_data", {
        init_out(out_data);
        init_out(out_len);
        let d = out(out_data, "out_data")?;
        let l = out(out_len, "out_len")?;
        let b = handle(buffer, "buffer")?;
        *d = b.bytes.as_ptr();
        *l = b.bytes.len();
        Ok(())
    })
}

/// Frees a buffer. `moth_buffer_free(NULL)` does nothing.
#[no_mangle]
pub unsafe extern "C" fn moth_buffer_free(buffer: *mut moth_buffer) {
    ffi_boundary!("moth_buffer_free", void, {
        drop(release(buffer, "buffer")?);
        Ok(())
    })
}
