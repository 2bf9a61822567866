//! `moth_session_set_collective`: a data-parallel hook given as C callbacks
//! runs on every step, its failures become `MOTH_STATUS_COLLECTIVE` with the
//! session unchanged, bad hooks are refused, and the user data is freed
//! exactly once on every path.

use std::ffi::c_void;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicUsize, Ordering};

mod common;
use common::ffi::*;
use common::labelled_batch;
use moth::ffi::collective::*;

/// What the callbacks share: how often they ran, a status to fail with.
struct Hook {
    calls: AtomicUsize,
    fail_with: i32,
    freed: &'static AtomicUsize,
}

/// One rank alone: the sum over the ranks is the rank's own values.
unsafe extern "C" fn all_reduce(_v: *mut f32, _n: usize, user: *mut c_void) -> i32 {
    // SAFETY: `user` is the Hook this test registered.
    let h = unsafe { &*(user as *const Hook) };
    h.calls.fetch_add(1, Ordering::SeqCst);
    h.fail_with
}

unsafe extern "C" fn broadcast(_b: *mut u8, _n: usize, user: *mut c_void) -> i32 {
    // SAFETY: as above.
    let h = unsafe { &*(user as *const Hook) };
    h.calls.fetch_add(1, Ordering::SeqCst);
    h.fail_with
}

unsafe extern "C" fn free_hook(user: *mut c_void) {
    // SAFETY: made by Box::into_raw below, freed once by moth.
    let h = unsafe { Box::from_raw(user as *mut Hook) };
    h.freed.fetch_add(1, Ordering::SeqCst);
}

fn hook(rank: i32, world: i32, fail_with: i32, freed: &'static AtomicUsize) -> moth_collective {
    moth_collective {
        rank,
        world_size: world,
        all_reduce_sum: Some(all_reduce),
        broadcast: Some(broadcast),
        user_data: Box::into_raw(Box::new(Hook {
            calls: AtomicUsize::new(0),
            fail_with,
            freed,
        })) as *mut c_void,
        free_user_data: Some(free_hook),
    }
}

#[test]
fn a_one_rank_hook_runs_on_every_step_and_is_freed_with_the_session() {
    static FREED: AtomicUsize = AtomicUsize::new(0);
    let s = session(QUICK);
    let clf = classifier();
    let h = hook(0, 1, 0, &FREED);
    let user = h.user_data as *const Hook;
    // SAFETY: live session, valid struct.
    assert_eq!(unsafe { moth_session_set_collective(s, &h) }, S::Ok);
    for seed in 0..4 {
        let (x, y) = labelled_batch(6, seed);
        assert_eq!(harden(s, clf, &x, &y), S::Ok, "{}", session_error(s));
    }
    // SAFETY: moth keeps the user data alive until the session is freed.
    let calls = unsafe { (*user).calls.load(Ordering::SeqCst) };
    assert!(calls > 4, "{calls} collectives in 4 steps");
    assert_eq!(FREED.load(Ordering::SeqCst), 0);
    // SAFETY: handles made above.
    unsafe {
        moth_session_free(s);
        moth_classifier_free(clf);
    }
    assert_eq!(FREED.load(Ordering::SeqCst), 1);
}

#[test]
fn a_failing_callback_fails_the_step_and_changes_nothing() {
    static FREED: AtomicUsize = AtomicUsize::new(0);
    let s = session(QUICK);
    let clf = classifier();
    let h = hook(0, 1, 7, &FREED);
    // SAFETY: live session, valid struct.
    assert_eq!(unsafe { moth_session_set_collective(s, &h) }, S::Ok);
    let (x, y) = labelled_batch(6, 1);
    assert_eq!(harden(s, clf, &x, &y), S::Collective);
    let msg = session_error(s);
    assert!(msg.contains("callback returned 7"), "{msg}");
    assert_eq!(step_of(s), 0);
    // Clearing the hook frees its user data at once and the session runs on.
    // SAFETY: live session; NULL clears.
    assert_eq!(
        unsafe { moth_session_set_collective(s, std::ptr::null()) },
        S::Ok
    );
    assert_eq!(FREED.load(Ordering::SeqCst), 1);
    assert_eq!(harden(s, clf, &x, &y), S::Ok, "{}", session_error(s));
    // SAFETY: handles made above.
    unsafe {
        moth_session_free(s);
        moth_classifier_free(clf);
    }
}

#[test]
fn bad_hooks_are_refused_and_their_user_data_freed() {
    static FREED: AtomicUsize = AtomicUsize::new(0);
    let s = session(QUICK);
    let outside = hook(2, 2, 0, &FREED);
    // SAFETY: live session, valid struct.
    let st = unsafe { moth_session_set_collective(s, &outside) };
    expect(st, S::InvalidArgument, "rank 2 of world size 2");
    let mut missing = hook(0, 2, 0, &FREED);
    missing.broadcast = None;
    // SAFETY: as above.
    let st = unsafe { moth_session_set_collective(s, &missing) };
    expect(st, S::NullPointer, "broadcast");
    assert_eq!(FREED.load(Ordering::SeqCst), 2);
    let late = hook(0, 1, 0, &FREED);
    // SAFETY: a NULL session is refused; the user data is freed all the same.
    let st = unsafe { moth_session_set_collective(null_mut(), &late) };
    assert_eq!(st, S::NullPointer);
    assert_eq!(FREED.load(Ordering::SeqCst), 3);
    // SAFETY: made above.
    unsafe { moth_session_free(s) };
}
