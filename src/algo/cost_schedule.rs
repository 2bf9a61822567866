//! The cost schedule of a trigger inversion (docs/algorithm.md section 2):
//! the weight of the mask-size term rises after a run of successes and falls
//! after a run of failures, so the optimiser trades attack success against
//! trigger size.

use crate::config::InversionConfig;

/// The cost schedule of one direction (patience counters, docs/algorithm.md §2).
#[derive(Debug, Clone, PartialEq)]
pub struct CostSchedule {
    /// Current weight of the mask L1 term.
    pub cost: f64,
    init_cost: f64,
    up: usize,
    down: usize,
    zero_hits: usize,
}

impl CostSchedule {
    /// Starts at `init_cost`.
    pub fn new(init_cost: f64) -> Self {
        CostSchedule {
            cost: init_cost,
            init_cost,
            up: 0,
            down: 0,
            zero_hits: 0,
        }
    }

    /// Updates after a step whose ASR did (`reached`) or did not reach the bound.
    pub fn update(&mut self, reached: bool, cfg: &InversionConfig) {
        if self.cost == 0.0 {
            // A zero cost cannot be scaled; once the bound holds for a whole
            // patience window the initial cost is brought back.
            self.zero_hits = if reached { self.zero_hits + 1 } else { 0 };
            if self.zero_hits >= cfg.patience {
                self.cost = if self.init_cost > 0.0 {
                    self.init_cost
                } else {
                    1e-3
                };
                self.zero_hits = 0;
                self.up = 0;
                self.down = 0;
            }
            return;
        }
        if reached {
            self.up += 1;
            self.down = 0;
        } else {
            self.up = 0;
            self.down += 1;
        }
        if self.up >= cfg.patience {
            self.up = 0;
            self.cost *= cfg.cost_factor;
        } else if self.down >= cfg.patience {
            self.down = 0;
            self.cost /= cfg.cost_factor.powf(1.5);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::InversionConfig;

    #[test]
    fn cost_rises_after_patience_successes_and_falls_after_failures() {
        let cfg = InversionConfig::default();
        let mut s = CostSchedule::new(1e-3);
        for _ in 0..9 {
            s.update(true, &cfg);
        }
        assert_eq!(s.cost, 1e-3);
        s.update(true, &cfg);
        assert!((s.cost - 1.5e-3).abs() < 1e-15);
        for _ in 0..10 {
            s.update(false, &cfg);
        }
        assert!((s.cost - 1.5e-3 / 1.5f64.powf(1.5)).abs() < 1e-15);
        // A success in between resets the failure counter.
        let before = s.cost;
        for _ in 0..9 {
            s.update(false, &cfg);
        }
        s.update(true, &cfg);
        for _ in 0..9 {
            s.update(false, &cfg);
        }
        assert_eq!(s.cost, before);
    }

    #[test]
    fn zero_cost_comes_back_to_initial_after_patience() {
        let cfg = InversionConfig::default();
        let mut s = CostSchedule::new(0.0);
        for _ in 0..9 {
            s.update(true, &cfg);
        }
        assert_eq!(s.cost, 0.0);
        s.update(true, &cfg);
        assert!(s.cost > 0.0);
    }
}
