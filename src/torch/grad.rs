//! libtorch's grad mode, switched by guards that restore it on every path,
//! unwinding included. A C++ host whose thread was left with autograd off
//! crashes on its next backward pass, so moth never uses `tch::no_grad`
//! (which restores the mode only when its closure returns).

use crate::torch::sys::set_grad_enabled;

/// While alive, grad mode is what the guard set; dropping it (also during
/// a panic) restores the mode found when it was made.
#[derive(Debug)]
pub struct GradGuard {
    previous: bool,
}

impl GradGuard {
    /// Sets grad mode to `enabled` until the guard is dropped.
    pub fn set(enabled: bool) -> Self {
        GradGuard {
            previous: set_grad_enabled(enabled),
        }
    }

    /// Keeps the current grad mode: whatever happens while the guard is
    /// alive, the mode is back to today's when it is dropped.
    pub fn keep() -> Self {
        let previous = set_grad_enabled(true);
        set_grad_enabled(previous);
        GradGuard { previous }
    }
}

impl Drop for GradGuard {
    fn drop(&mut self) {
        set_grad_enabled(self.previous);
    }
}

/// Whether autograd records operations on this thread.
pub fn is_enabled() -> bool {
    let previous = set_grad_enabled(true);
    set_grad_enabled(previous);
    previous
}

/// Runs `f` with autograd off, restoring the mode afterwards, also when `f`
/// panics.
pub fn no_grad<T>(f: impl FnOnce() -> T) -> T {
    let _guard = GradGuard::set(false);
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grad_mode_survives_a_panic_inside_no_grad() {
        assert!(is_enabled());
        let r = std::panic::catch_unwind(|| no_grad(|| panic!("inside")));
        assert!(r.is_err());
        assert!(is_enabled(), "a panic must not leave autograd off");
        // tch's own no_grad does leave it off: the reason this module exists.
        let r = std::panic::catch_unwind(|| tch::no_grad(|| panic!("inside")));
        assert!(r.is_err());
        assert!(!is_enabled());
        set_grad_enabled(true);
    }

    #[test]
    fn keep_restores_whatever_the_body_set() {
        let _off = GradGuard::set(false);
        {
            let _keep = GradGuard::keep();
            set_grad_enabled(true);
        }
        assert!(!is_enabled());
        drop(_off);
        assert!(is_enabled());
    }
}
