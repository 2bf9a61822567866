//! The K-arm pair scheduler (paper section IV-C): prior-selection matrix
//! `univ` from the warm-up, post-selection matrix `diff` from the distance
//! changes each period brought, and the choice rule that blends them.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::Error;

/// An ordered class pair: triggers flip `source` samples to `target` and
/// back. The period hardens both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Pair {
    /// Row of the chosen score entry.
    pub source: usize,
    /// Column of the chosen score entry.
    pub target: usize,
}

/// Scheduler settings (reference defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Probability of picking a uniformly random pair (exploration).
    pub explore: f64,
    /// `alpha = min(alpha_rate * s, 1)`, `s` = steps since warm-up ended.
    pub alpha_rate: f64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            explore: 0.3,
            alpha_rate: 0.1 / 100.0,
        }
    }
}

impl SchedulerConfig {
    /// Checks the values.
    pub fn validate(&self) -> crate::Result<()> {
        crate::config::unit_interval("scheduler.explore", self.explore)?;
        crate::config::non_negative("scheduler.alpha_rate", self.alpha_rate)
    }
}

/// The scheduler's statistics: all `N x N`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scheduler {
    /// Prior scores from the warm-up: `univ[i][t]` = mean loss reduction of
    /// class `i` samples under the universal trigger of `t`.
    pub univ: Vec<Vec<f64>>,
    /// Latest (period-averaged) trigger size per direction.
    pub size: Vec<Vec<f64>>,
    /// Post-selection score: smoothed relative change of the size.
    pub diff: Vec<Vec<f64>>,
    /// How often each pair was chosen (symmetric).
    pub count: Vec<Vec<f64>>,
}

fn square(n: usize) -> Vec<Vec<f64>> {
    vec![vec![0.0; n]; n]
}

impl Scheduler {
    /// All-zero matrices for `n` classes.
    pub fn new(n: usize) -> Self {
        Scheduler {
            univ: square(n),
            size: square(n),
            diff: square(n),
            count: square(n),
        }
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.univ.len()
    }

    /// Records the warm-up result of direction `i -> t`.
    pub fn record_warmup(&mut self, i: usize, t: usize, prior: f64, size: f64) {
        self.univ[i][t] = prior;
        self.size[i][t] = size;
        self.diff[i][t] = size;
    }

    /// Ends the warm-up: `diff /= max(diff)` (left alone when all are 0).
    pub fn finish_warmup(&mut self) {
        let max = self.diff.iter().flatten().copied().fold(0.0, f64::max);
        if max > 0.0 {
            self.diff.iter_mut().flatten().for_each(|v| *v /= max);
        }
    }

    /// Blended score of entry `(i, j)` with weight `alpha` on the post matrix.
    pub fn score(&self, i: usize, j: usize, alpha: f64) -> f64 {
        (1.0 - alpha) * (self.univ[i][j] + self.univ[j][i])
            + alpha * (self.diff[i][j] + self.diff[j][i])
    }

    /// Chooses the next pair: with probability `explore` a uniformly random
    /// unordered pair, else the arg-max of the blended score (first maximum
    /// in row-major order). Counts the choice.
    pub fn choose<R: Rng>(
        &mut self,
        cfg: &SchedulerConfig,
        steps_since_warmup: u64,
        rng: &mut R,
    ) -> Pair {
        let n = self.classes();
        let pair = if rng.random::<f64>() < cfg.explore {
            let a = rng.random_range(0..n);
            let mut b = rng.random_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            Pair {
                source: a,
                target: b,
            }
        } else {
            let alpha = (cfg.alpha_rate * steps_since_warmup as f64).min(1.0);
            self.argmax(alpha)
        };
        self.count[pair.source][pair.target] += 1.0;
        self.count[pair.target][pair.source] += 1.0;
        pair
    }

    fn argmax(&self, alpha: f64) -> Pair {
        let n = self.classes();
        let mut best = (
            f64::NEG_INFINITY,
            Pair {
                source: 0,
                target: 1,
            },
        );
        for i in 0..n {
            for j in 0..n {
                if i != j {
                    let s = self.score(i, j, alpha);
                    if s > best.0 {
                        best = (
                            s,
                            Pair {
                                source: i,
                                target: j,
                            },
                        );
                    }
                }
            }
        }
        best.1
    }

    /// The post-selection update at the end of a period, with the period's
    /// mean sizes of both directions (0 = no successful inversion). A
    /// direction without a measured size in the period is left unchanged.
    pub fn end_period(&mut self, pair: Pair, avg_st: f64, avg_ts: f64) {
        let (s, t) = (pair.source, pair.target);
        if self.size[s][t] == 0.0 || self.size[t][s] == 0.0 {
            for (i, j, avg) in [(s, t, avg_st), (t, s, avg_ts)] {
                if avg > 0.0 {
                    self.size[i][j] = avg;
                }
            }
            return;
        }
        for (i, j, avg) in [(s, t, avg_st), (t, s, avg_ts)] {
            if avg > 0.0 {
                self.diff[i][j] =
                    (self.diff[i][j] + (avg - self.size[i][j]) / self.size[i][j]) / 2.0;
                self.size[i][j] = avg;
            }
        }
    }

    /// Checks dimensions and finiteness (used when loading checkpoints).
    pub fn validate(&self, n: usize) -> crate::Result<()> {
        for (name, m) in [
            ("univ", &self.univ),
            ("size", &self.size),
            ("diff", &self.diff),
            ("count", &self.count),
        ] {
            if m.len() != n || m.iter().any(|r| r.len() != n) {
                return Err(Error::Checkpoint(format!(
                    "scheduler matrix {name} is not {n}x{n}"
                )));
            }
            if m.iter().flatten().any(|v| !v.is_finite()) {
                return Err(Error::Checkpoint(format!(
                    "scheduler matrix {name} holds a non-finite value"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn warmup_normalises_diff_by_its_max() {
        let mut s = Scheduler::new(3);
        s.record_warmup(0, 1, 0.5, 10.0);
        s.record_warmup(2, 1, 0.1, 40.0);
        s.finish_warmup();
        assert_eq!(s.diff[0][1], 0.25);
        assert_eq!(s.diff[2][1], 1.0);
        assert_eq!(s.size[2][1], 40.0);
    }

    #[test]
    fn greedy_choice_uses_prior_then_post_matrix() {
        let mut s = Scheduler::new(3);
        s.univ[0][2] = 0.9; // prior favours {0,2}
        s.diff[1][2] = 5.0; // post favours {1,2}
        let greedy = SchedulerConfig {
            explore: 0.0,
            ..Default::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        assert_eq!(
            s.choose(&greedy, 0, &mut rng),
            Pair {
                source: 0,
                target: 2
            }
        );
        // alpha = min(0.001 * 1000, 1) = 1: only diff counts.
        assert_eq!(
            s.choose(&greedy, 1000, &mut rng),
            Pair {
                source: 1,
                target: 2
            }
        );
        assert_eq!(s.count[0][2], 1.0);
        assert_eq!(s.count[2][0], 1.0);
        assert_eq!(s.count[2][1], 1.0);
        // alpha = 0.5 mixes: {0,2} 0.45, {1,2} 2.5
        assert!((s.score(0, 2, 0.5) - 0.45).abs() < 1e-12);
    }

    #[test]
    fn exploration_picks_distinct_classes_uniformly() {
        let mut s = Scheduler::new(4);
        let explore = SchedulerConfig {
            explore: 1.0,
            ..Default::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..400 {
            let p = s.choose(&explore, 0, &mut rng);
            assert_ne!(p.source, p.target);
            seen.insert((p.source, p.target));
        }
        assert_eq!(seen.len(), 12, "all ordered pairs appear");
        let total: f64 = s.count.iter().flatten().sum();
        assert_eq!(total, 800.0);
    }

    #[test]
    fn period_update_sets_sizes_first_then_smooths_relative_change() {
        let mut s = Scheduler::new(2);
        let p = Pair {
            source: 0,
            target: 1,
        };
        s.end_period(p, 10.0, 20.0);
        assert_eq!((s.size[0][1], s.size[1][0]), (10.0, 20.0));
        assert_eq!(s.diff[0][1], 0.0, "first branch does not touch diff");
        s.end_period(p, 15.0, 10.0);
        assert!((s.diff[0][1] - 0.25).abs() < 1e-12); // (0 + 0.5) / 2
        assert!((s.diff[1][0] + 0.25).abs() < 1e-12); // (0 - 0.5) / 2
        assert_eq!((s.size[0][1], s.size[1][0]), (15.0, 10.0));
        // A failed direction (avg 0) changes nothing and never divides by zero.
        s.end_period(p, 0.0, 20.0);
        assert_eq!(s.size[0][1], 15.0);
        assert!(s.diff.iter().flatten().all(|v| v.is_finite()));
    }
}
