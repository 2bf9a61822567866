//! `moth_collective`: the trainer's collective (its process group) as C
//! callbacks, which make a session one rank of a data-parallel run
//! (`crate::algo::collective::Collective`; docs/algorithm.md section 10).

use std::ffi::c_void;

use super::handle::handle;
use super::log::moth_free_fn;
use super::session::moth_session;
use super::status::{moth_status, FfiError};
use crate::algo::collective::Collective;
use crate::{Error, Result};

/// Sums the `count` floats at `values` element-wise over all ranks, in
/// place (every rank must receive the same bits, as Gloo, NCCL and MPI
/// all-reduces give). Returns 0 on success, anything else on failure.
pub type moth_all_reduce_fn =
    Option<unsafe extern "C" fn(values: *mut f32, count: usize, user_data: *mut c_void) -> i32>;

/// Replaces the `len` bytes at `bytes` on every rank by rank 0's (every
/// rank passes the same `len`). Returns 0 on success, anything else on
/// failure.
pub type moth_broadcast_fn =
    Option<unsafe extern "C" fn(bytes: *mut u8, len: usize, user_data: *mut c_void) -> i32>;

/// The trainer's collective for one rank, as given to
/// `moth_session_set_collective`. moth copies the struct.
#[repr(C)]
pub struct moth_collective {
    /// This process's rank, in `[0, world_size)`.
    pub rank: i32,
    /// The number of ranks.
    pub world_size: i32,
    /// All-reduce (sum) of floats; required.
    pub all_reduce_sum: moth_all_reduce_fn,
    /// Broadcast of bytes from rank 0; required.
    pub broadcast: moth_broadcast_fn,
    /// Passed to both callbacks.
    pub user_data: *mut c_void,
    /// Frees `user_data` when moth no longer needs it (may be NULL).
    pub free_user_data: moth_free_fn,
}

/// A copy of the caller's struct, owning its user data.
struct CCollective {
    rank: usize,
    world: usize,
    all_reduce: moth_all_reduce_fn,
    broadcast: moth_broadcast_fn,
    user: *mut c_void,
    free: moth_free_fn,
}

// SAFETY: the callbacks are only called on the thread making a session
// call, one call at a time (the session mutex); a session may move between
// threads, which the C contract of the callbacks allows.
unsafe impl Send for CCollective {}

impl Drop for CCollective {
    fn drop(&mut self) {
        if let Some(free) = self.free {
            // SAFETY: the caller handed `user` over to be freed with `free`, once.
            unsafe { free(self.user) };
        }
    }
}

fn refused(what: &str, status: i32) -> Error {
    Error::Collective(format!(
        "the {what} callback returned {status} (a timeout or a lost peer in the trainer's \
         process group?)"
    ))
}

impl Collective for CCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&mut self, values: &mut [f32]) -> Result<()> {
        let f = self
            .all_reduce
            .ok_or_else(|| Error::Collective("no all-reduce callback".into()))?;
        // SAFETY: `values` is a live, exclusive buffer of `values.len()`
        // floats for the duration of the call, as the callback's contract says.
        let status = unsafe { f(values.as_mut_ptr(), values.len(), self.user) };
        match status {
            0 => Ok(()),
            s => Err(refused("all-reduce", s)),
        }
    }

    fn broadcast(&mut self, bytes: &mut [u8]) -> Result<()> {
        let f = self
            .broadcast
            .ok_or_else(|| Error::Collective("no broadcast callback".into()))?;
        // SAFETY: as above, for `bytes.len()` bytes.
        let status = unsafe { f(bytes.as_mut_ptr(), bytes.len(), self.user) };
        match status {
            0 => Ok(()),
            s => Err(refused("broadcast", s)),
        }
    }
}

/// Makes the session one rank of a data-parallel run (NULL: a single
/// process again). Every rank drives its own session, made with the same
/// configuration (or loaded from the same checkpoint), on its own shard of
/// each batch, on a model its trainer keeps identical across ranks (DDP);
/// each `moth_session_harden_batch` then calls the callbacks: per inversion
/// mini-batch one all-reduce of the trigger gradients, per step a few more
/// (class counts, a digest of the state that must agree), and broadcasts
/// while the warm-up pool fills. All ranks' sessions hold the same state
/// and write the same checkpoint bytes; the checkpoint records the world
/// size, and a session that took steps with N ranks continues only with N
/// (`MOTH_STATUS_COLLECTIVE` otherwise, here or at the next step).
///
/// The callbacks run with the session locked, on the calling thread, and
/// must not throw (C++) or unwind. moth has no timeout of its own: a
/// callback that cannot complete (a peer gone, ranks out of step) must
/// return non-zero after the process group's timeout rather than block for
/// ever. A failing callback, or ranks found out of step (each all-reduce
/// carries a tag), fail the step with `MOTH_STATUS_COLLECTIVE` and leave the
/// session unchanged; stop every rank then. Not saved in checkpoints: set
/// it again after loading one.
///
/// The struct is copied. moth owns `user_data` from this call on: it is
/// freed with `free_user_data` (when set) when the hook is replaced or
/// cleared, when the session is freed, or at once when this call fails.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_session_set_collective(
    session: *mut moth_session,
    collective: *const moth_collective,
) -> moth_status {
    ffi_boundary!("moth_session_set_collective", session = session, {
        let hook = if collective.is_null() {
            None
        } else {
            // SAFETY: a non-NULL pointer to a `moth_collective` by contract;
            // it is only read.
            let c = unsafe { &*collective };
            // Owning the user data first, so that every failure below frees it.
            let mut hook = CCollective {
                rank: 0,
                world: 0,
                all_reduce: c.all_reduce_sum,
                broadcast: c.broadcast,
                user: c.user_data,
                free: c.free_user_data,
            };
            if hook.all_reduce.is_none() || hook.broadcast.is_none() {
                return Err(FfiError::null("collective->all_reduce_sum/broadcast"));
            }
            let (rank, world) = (c.rank, c.world_size);
            if world < 1 || rank < 0 || rank >= world {
                return Err(FfiError::invalid(format!(
                    "collective: rank {rank} of world size {world}: the world size must be at \
                     least 1 and the rank in [0, world size)"
                )));
            }
            hook.rank = rank as usize;
            hook.world = world as usize;
            Some(Box::new(hook) as Box<dyn Collective>)
        };
        let s = handle(session, "session")?;
        let mut st = s.state.lock()?;
        st.session.set_collective(hook)?;
        Ok(())
    })
}
