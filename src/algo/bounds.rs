//! Optimisation bounds: which generated triggers are stamped.
//!
//! The fixed cap (reference): only triggers smaller than `C*H*W/4` are
//! stamped; larger ones replace the image's content rather than act as a
//! backdoor. The paper also mentions "gradually growing optimisation bounds"
//! without spelling them out; our reading (docs/algorithm.md section 4) is a per
//! direction bound that starts at `growth x` the warm-up distance and grows
//! with the distances the pair reaches, never above the cap.

use serde::{Deserialize, Serialize};

use crate::Result;

/// Which stamping bound is in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BoundsMode {
    /// Only the fixed cap.
    Fixed,
    /// Per-direction bound growing with the reached distance, under the cap.
    Growing,
}

/// Bound settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BoundsConfig {
    /// Fixed or growing.
    pub mode: BoundsMode,
    /// The cap as a fraction of `C*H*W` (reference: 1/4).
    pub cap_fraction: f64,
    /// Growing mode: the bound is `growth x` the largest distance reached.
    pub growth: f64,
}

impl Default for BoundsConfig {
    fn default() -> Self {
        BoundsConfig {
            mode: BoundsMode::Fixed,
            cap_fraction: 0.25,
            growth: 1.5,
        }
    }
}

impl BoundsConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        crate::config::positive("bounds.cap_fraction", self.cap_fraction)?;
        crate::config::unit_interval("bounds.cap_fraction", self.cap_fraction)?;
        if !(self.growth.is_finite() && self.growth >= 1.0) {
            return Err(crate::Error::Config(format!(
                "bounds.growth must be >= 1, got {}",
                self.growth
            )));
        }
        Ok(())
    }
}

/// The bound state of a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bounds {
    /// The fixed cap, `cap_fraction * C*H*W`.
    pub cap: f64,
    /// Growing mode: per direction `[victim][target]` bound.
    pub per_pair: Vec<Vec<f64>>,
}

impl Bounds {
    /// Starting bounds for `n` classes of inputs `[C,H,W]`.
    pub fn new(cfg: &BoundsConfig, n: usize, shape: [i64; 3]) -> Self {
        let cap = cfg.cap_fraction * (shape[0] * shape[1] * shape[2]) as f64;
        Bounds {
            cap,
            per_pair: vec![vec![cap; n]; n],
        }
    }

    /// The bound of `victim -> target` under `cfg`.
    pub fn limit(&self, cfg: &BoundsConfig, victim: usize, target: usize) -> f64 {
        match cfg.mode {
            BoundsMode::Fixed => self.cap,
            BoundsMode::Growing => self.per_pair[victim][target].min(self.cap),
        }
    }

    /// Whether a trigger of `size` may be stamped (a failed, zero trigger never is).
    pub fn allows(&self, cfg: &BoundsConfig, victim: usize, target: usize, size: f64) -> bool {
        size > 0.0 && size < self.limit(cfg, victim, target)
    }

    /// Whether a universal trigger of `size` may be stamped: universal
    /// triggers have no pair, so only the fixed cap applies.
    pub fn allows_universal(&self, size: f64) -> bool {
        size > 0.0 && size < self.cap
    }

    /// Sets the growing bound from the warm-up distance.
    pub fn seed(&mut self, cfg: &BoundsConfig, victim: usize, target: usize, size: f64) {
        self.per_pair[victim][target] = if size > 0.0 {
            (size * cfg.growth).min(self.cap)
        } else {
            self.cap
        };
    }

    /// Raises the growing bound after the pair reached distance `size`.
    pub fn grow(&mut self, cfg: &BoundsConfig, victim: usize, target: usize, size: f64) {
        if size > 0.0 {
            let b = &mut self.per_pair[victim][target];
            *b = b.max(size * cfg.growth).min(self.cap);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_cap_is_a_quarter_of_the_input() {
        let cfg = BoundsConfig::default();
        let b = Bounds::new(&cfg, 2, [1, 28, 28]);
        assert_eq!(b.cap, 196.0);
        assert!(b.allows(&cfg, 0, 1, 195.9));
        assert!(!b.allows(&cfg, 0, 1, 196.0));
        assert!(
            !b.allows(&cfg, 0, 1, 0.0),
            "failed triggers are never stamped"
        );
    }

    #[test]
    fn growing_bound_starts_at_warmup_distance_and_grows_under_cap() {
        let cfg = BoundsConfig {
            mode: BoundsMode::Growing,
            ..Default::default()
        };
        let mut b = Bounds::new(&cfg, 2, [1, 28, 28]);
        b.seed(&cfg, 0, 1, 20.0);
        assert_eq!(b.limit(&cfg, 0, 1), 30.0);
        assert!(!b.allows(&cfg, 0, 1, 31.0));
        b.grow(&cfg, 0, 1, 30.0);
        assert_eq!(b.limit(&cfg, 0, 1), 45.0);
        b.grow(&cfg, 0, 1, 10.0);
        assert_eq!(b.limit(&cfg, 0, 1), 45.0, "never shrinks");
        b.grow(&cfg, 0, 1, 500.0);
        assert_eq!(b.limit(&cfg, 0, 1), 196.0, "capped");
        b.seed(&cfg, 1, 0, 0.0);
        assert_eq!(b.limit(&cfg, 1, 0), 196.0, "failed warm-up leaves the cap");
    }
}
