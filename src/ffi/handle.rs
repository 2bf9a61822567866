//! Handles: how moth hands objects to C and recognises them when they come
//! back. Each handle's allocation starts with a tag, a `u64` that names its
//! type while it lives and is overwritten when it is freed, as SQLite does
//! with its connection magic. Every export checks the tag before it touches
//! the object, so a handle freed twice, used after its free, or passed as a
//! handle of another type gives `MOTH_STATUS_INVALID_HANDLE` instead of
//! undefined behaviour.
//!
//! A freed handle's memory is not given back to the allocator at once: it
//! waits in a bounded quarantine (the last [`QUARANTINE_LEN`] freed
//! handles), so the tag that says "freed" is still there, in memory moth
//! owns, when a late call reads it. What stays undefined: a handle used
//! after its memory left the quarantine and was reused, and pointers that
//! moth never made.

use std::alloc::Layout;
use std::collections::VecDeque;
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::status::{moth_status, FfiError, FfiResult};

/// A type handed to C as an opaque handle.
pub(crate) trait Handle: Sized + 'static {
    /// The tag of a live handle of this type (distinct per type).
    const TAG: u64;
    /// What the type is called in messages ("session").
    const WHAT: &'static str;
}

/// The tag of a freed handle, of any type.
const FREED: u64 = u64::from_be_bytes(*b"moth-rip");

/// The tags of every handle type, for messages that name the type a
/// wrong handle has.
const KNOWN: [(u64, &str); 8] = [
    (super::session::moth_session::TAG, "session"),
    (
        super::distance::moth_distance_config::TAG,
        "distance config",
    ),
    (
        super::distance::moth_distance_result::TAG,
        "distance result",
    ),
    (super::trainer::moth_trainer::TAG, "trainer"),
    (super::config::moth_config::TAG, "config"),
    (super::classifier::moth_classifier::TAG, "classifier"),
    (super::tensor::moth_tensor::TAG, "tensor"),
    (super::buffer::moth_buffer::TAG, "buffer"),
];

/// How many freed handles keep their memory (and so their "freed" tag).
/// Shells hold no value any more; the largest, a session's, is a few
/// hundred bytes.
const QUARANTINE_LEN: usize = 1024;

/// What C's handle pointer points to: the tag first, then the value.
#[repr(C)]
pub(crate) struct Tagged<T> {
    tag: AtomicU64,
    value: ManuallyDrop<T>,
}

/// The memory of a freed handle, its value already dropped.
struct Shell {
    ptr: *mut u8,
    layout: Layout,
}

// SAFETY: a shell is plain memory that no one else refers to legitimately;
// it is only ever deallocated, from whichever thread evicts it.
unsafe impl Send for Shell {}

static QUARANTINE: Mutex<VecDeque<Shell>> = Mutex::new(VecDeque::new());

/// Keeps a freed handle's memory for a while; gives back the oldest.
fn quarantine(shell: Shell) {
    let evicted = {
        let mut q = QUARANTINE.lock();
        q.push_back(shell);
        (q.len() > QUARANTINE_LEN).then(|| q.pop_front()).flatten()
    };
    if let Some(old) = evicted {
        // SAFETY: `old` was allocated by `Box::new` with exactly this layout
        // (see `into_handle`) and its value was moved out before.
        unsafe { std::alloc::dealloc(old.ptr, old.layout) };
    }
}

/// Moves `value` to the heap, tagged, and hands ownership to C.
pub(crate) fn into_handle<T: Handle>(value: T) -> *mut T {
    let b = Box::new(Tagged {
        tag: AtomicU64::new(T::TAG),
        value: ManuallyDrop::new(value),
    });
    Box::into_raw(b).cast()
}

/// Why `tag`, found where a `T` handle was expected, is not one.
fn wrong_tag<T: Handle>(tag: u64, name: &str) -> FfiError {
    let found = if tag == FREED {
        "a handle that was already freed".to_string()
    } else if let Some((_, what)) = KNOWN.iter().find(|(t, _)| *t == tag) {
        format!("a {what} handle")
    } else {
        "not a moth handle".to_string()
    };
    FfiError::new(
        moth_status::InvalidHandle,
        format!(
            "argument '{name}' must be a live {} handle: {found}",
            T::WHAT
        ),
    )
}

/// The tagged object at `p`, after checking that `p` is not NULL and that
/// its tag is `T`'s.
fn checked<'a, T: Handle>(p: *const T, name: &str) -> FfiResult<&'a Tagged<T>> {
    if p.is_null() {
        return Err(FfiError::null(name));
    }
    // SAFETY: a non-NULL handle pointer from C points to memory moth
    // allocated for some handle (C contract), live or quarantined; every
    // handle allocation starts with an AtomicU64 tag.
    let tag = unsafe { &*p.cast::<AtomicU64>() }.load(Ordering::Acquire);
    if tag != T::TAG {
        return Err(wrong_tag::<T>(tag, name));
    }
    // SAFETY: the tag says `p` is a live `Tagged<T>` made by `into_handle`.
    Ok(unsafe { &*p.cast::<Tagged<T>>() })
}

/// The handle `p` as a reference: `NullPointer` for NULL,
/// `InvalidHandle` for a freed handle or one of another type.
pub(crate) fn handle<'a, T: Handle>(p: *const T, name: &str) -> FfiResult<&'a T> {
    checked(p, name).map(|t| &*t.value)
}

/// As [`handle`], for functions that change the object.
pub(crate) fn handle_mut<'a, T: Handle>(p: *mut T, name: &str) -> FfiResult<&'a mut T> {
    checked(p, name)?;
    // SAFETY: checked above to be a live `Tagged<T>`; the C contract says
    // no other call uses a handle that a function changes, as for C's
    // `const`-less pointers.
    let tagged = unsafe { &mut *p.cast::<Tagged<T>>() };
    Ok(&mut tagged.value)
}

/// Takes back ownership of a handle made by [`into_handle`]: NULL gives
/// `None`; a handle of another type or one already freed gives
/// `InvalidHandle` and changes nothing. The handle's tag then says
/// "freed" and its memory waits in the quarantine.
pub(crate) fn release<T: Handle>(p: *mut T, name: &str) -> FfiResult<Option<T>> {
    if p.is_null() {
        return Ok(None);
    }
    let tagged = checked(p, name)?;
    // Only one of two racing frees may win.
    if tagged
        .tag
        .compare_exchange(T::TAG, FREED, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return Err(wrong_tag::<T>(FREED, name));
    }
    let shell = p.cast::<Tagged<T>>();
    // SAFETY: this call won the tag, so it owns the live value and moves it
    // out exactly once; the shell is never read as a `T` again.
    let value = unsafe { ManuallyDrop::take(&mut (*shell).value) };
    quarantine(Shell {
        ptr: shell.cast(),
        layout: Layout::new::<Tagged<T>>(),
    });
    Ok(Some(value))
}

/// A handle that lives on moth's stack for the length of one call (the
/// input lent to a forward callback). Its tag is that of a live handle
/// while it lives; C may read it but must not free or keep it.
pub(crate) struct Lent<T: Handle>(Tagged<T>);

impl<T: Handle> Lent<T> {
    pub(crate) fn new(value: T) -> Self {
        Lent(Tagged {
            tag: AtomicU64::new(T::TAG),
            value: ManuallyDrop::new(value),
        })
    }

    /// The pointer C gets.
    pub(crate) fn as_ptr(&self) -> *const T {
        (&self.0 as *const Tagged<T>).cast()
    }
}

impl<T: Handle> Drop for Lent<T> {
    fn drop(&mut self) {
        self.0.tag.store(FREED, Ordering::Release);
        // SAFETY: dropped once, here; the value is never used afterwards.
        unsafe { ManuallyDrop::drop(&mut self.0.value) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::buffer::moth_buffer;
    use crate::ffi::config::moth_config;

    #[test]
    fn tags_are_distinct() {
        let mut tags: Vec<u64> = KNOWN.iter().map(|(t, _)| *t).collect();
        tags.push(FREED);
        let n = tags.len();
        tags.sort_unstable();
        tags.dedup();
        assert_eq!(tags.len(), n);
    }

    #[test]
    fn freed_and_foreign_handles_are_refused() {
        let b = into_handle(moth_buffer::new(vec![1, 2, 3]));
        assert!(handle(b, "buffer").is_ok());
        let as_config = b.cast::<moth_config>();
        let e = handle(as_config, "config").err().unwrap();
        assert_eq!(e.status, moth_status::InvalidHandle);
        assert!(e.message.contains("a buffer handle"), "{}", e.message);
        assert!(release(as_config, "config").is_err());
        assert!(release(b, "buffer").unwrap().is_some());
        let e = handle(b, "buffer").err().unwrap();
        assert!(e.message.contains("already freed"), "{}", e.message);
        assert_eq!(
            release(b, "buffer").err().unwrap().status,
            moth_status::InvalidHandle
        );
        assert!(release::<moth_buffer>(std::ptr::null_mut(), "b")
            .unwrap()
            .is_none());
    }
}
