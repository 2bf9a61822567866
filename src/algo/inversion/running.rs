//! Early stop, direction by direction (docs/algorithm.md section 2).
//!
//! A joint inversion optimises many directions at once, but each one
//! converges on its own schedule. A direction stops once it has a trigger
//! that reached the ASR bound and has not found a smaller one for
//! `patience` steps: from then on its best trigger is final and its samples
//! leave the forward pass, so a step costs only the directions still
//! running. The run ends when every direction has stopped, which is the
//! step a single inversion of the slowest direction would end at.

use tch::{Device, Tensor};

use crate::Result;

/// Which directions of a joint inversion are still optimised.
pub(super) struct Running {
    patience: usize,
    since_improved: Vec<usize>,
    stopped: Vec<bool>,
    steps: Vec<usize>,
}

impl Running {
    /// All `k` directions running; `patience` 0 never stops one early.
    pub(super) fn new(k: usize, patience: usize) -> Self {
        Running {
            patience,
            since_improved: vec![0; k],
            stopped: vec![false; k],
            steps: vec![0; k],
        }
    }

    /// Whether direction `i` is still optimised.
    pub(super) fn is_running(&self, i: usize) -> bool {
        !self.stopped[i]
    }

    /// The steps direction `i` took part in.
    pub(super) fn steps(&self, i: usize) -> usize {
        self.steps[i]
    }

    /// Whether every direction has stopped.
    pub(super) fn all_stopped(&self) -> bool {
        self.stopped.iter().all(|&s| s)
    }

    /// Counts one step: `improved[i]` says whether direction `i` found a
    /// smaller trigger; `best_l1[i]` is finite once it holds one that
    /// reached the bound.
    pub(super) fn record(&mut self, improved: &[bool], best_l1: &[f64]) {
        for i in 0..self.stopped.len() {
            if self.stopped[i] {
                continue;
            }
            self.steps[i] += 1;
            self.since_improved[i] = if improved[i] {
                0
            } else {
                self.since_improved[i] + 1
            };
            self.stopped[i] = self.patience > 0
                && best_l1[i].is_finite()
                && self.since_improved[i] >= self.patience;
        }
    }

    /// The indices of the running directions, or `None` while all run (the
    /// step then uses the whole tensors, exactly as without early stop).
    pub(super) fn rows(&self, device: Device) -> Result<Option<Tensor>> {
        if !self.stopped.iter().any(|&s| s) {
            return Ok(None);
        }
        let rows: Vec<i64> = (0..self.stopped.len() as i64)
            .filter(|&i| !self.stopped[i as usize])
            .collect();
        Ok(Some(Tensor::f_from_slice(&rows)?.f_to_device(device)?))
    }
}

/// The rows of `t` (along dimension 0) that `rows` selects; all of `t` when
/// `rows` is `None`.
pub(super) fn select(t: &Tensor, rows: Option<&Tensor>) -> Result<Tensor> {
    Ok(match rows {
        None => t.shallow_clone(),
        Some(r) => t.f_index_select(0, r)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_direction_stops_after_its_own_patience() {
        let mut r = Running::new(2, 2);
        // Direction 0 has a best and stalls; direction 1 keeps improving.
        r.record(&[true, true], &[1.0, 1.0]);
        r.record(&[false, true], &[1.0, 1.0]);
        assert!(r.is_running(0));
        r.record(&[false, true], &[1.0, 1.0]);
        assert!(!r.is_running(0));
        assert!(r.is_running(1));
        assert_eq!((r.steps(0), r.steps(1)), (3, 3));
        assert!(!r.all_stopped());
        let rows = r.rows(Device::Cpu).unwrap().unwrap();
        assert_eq!(Vec::<i64>::try_from(&rows).unwrap(), vec![1]);
        r.record(&[false, false], &[1.0, 1.0]);
        r.record(&[false, false], &[1.0, 1.0]);
        assert!(r.all_stopped());
        assert_eq!((r.steps(0), r.steps(1)), (3, 5));
    }

    #[test]
    fn no_direction_stops_without_a_trigger_or_with_patience_zero() {
        let mut r = Running::new(1, 1);
        for _ in 0..5 {
            r.record(&[false], &[f64::INFINITY]);
        }
        assert!(r.is_running(0), "a direction without a trigger runs on");
        let mut r = Running::new(1, 0);
        for _ in 0..5 {
            r.record(&[false], &[1.0]);
        }
        assert!(r.is_running(0));
        assert!(r.rows(Device::Cpu).unwrap().is_none());
    }
}
