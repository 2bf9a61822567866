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

impl Pair {
    /// Direction `d` as `(victim, target)`: 0 is `source -> target`, 1 the
    /// way back.
    pub fn direction(self, d: usize) -> (usize, usize) {
        if d == 0 {
            (self.source, self.target)
        } else {
            (self.target, self.source)
        }
    }

    /// Whether the two pairs share a class.
    pub fn overlaps(self, other: Pair) -> bool {
        [self.source, self.target].contains(&other.source)
            || [self.source, self.target].contains(&other.target)
    }
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

/// A uniformly random unordered pair of distinct classes from `free`
/// (at least two), as `(source, target)` in draw order.
fn random_pair<R: Rng>(free: &[usize], rng: &mut R) -> Pair {
    let a = rng.random_range(0..free.len());
    let mut b = rng.random_range(0..free.len() - 1);
    if b >= a {
        b += 1;
    }
    Pair {
        source: free[a],
        target: free[b],
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
        self.choose_matching(cfg, steps_since_warmup, rng, 1)[0]
    }

    /// Chooses up to `k` pairs that share no class (a matching), one after
    /// the other by the rule of [`Scheduler::choose`], each among the classes
    /// not taken yet. With `k = 1` this is exactly `choose`: the same draws
    /// from `rng` and the same pair. Counts every choice.
    pub fn choose_matching<R: Rng>(
        &mut self,
        cfg: &SchedulerConfig,
        steps_since_warmup: u64,
        rng: &mut R,
        k: usize,
    ) -> Vec<Pair> {
        let alpha = (cfg.alpha_rate * steps_since_warmup as f64).min(1.0);
        let mut free: Vec<usize> = (0..self.classes()).collect();
        let mut pairs = Vec::new();
        while pairs.len() < k.max(1) && free.len() >= 2 {
            let pair = if rng.random::<f64>() < cfg.explore {
                random_pair(&free, rng)
            } else {
                self.argmax(alpha, &free)
            };
            free.retain(|&c| c != pair.source && c != pair.target);
            self.count_choice(pair);
            pairs.push(pair);
        }
        pairs
    }

    /// The `index`-th unordered pair `(a, b)`, `a < b`, in row-major order,
    /// cycling (the pairwise baseline's schedule). Counts the choice.
    pub fn cycle_pair(&mut self, index: usize) -> Pair {
        let n = self.classes();
        let total = n * (n - 1) / 2;
        let mut i = index % total;
        let mut a = 0;
        while i >= n - 1 - a {
            i -= n - 1 - a;
            a += 1;
        }
        let pair = Pair {
            source: a,
            target: a + 1 + i,
        };
        self.count_choice(pair);
        pair
    }

    fn count_choice(&mut self, pair: Pair) {
        self.count[pair.source][pair.target] += 1.0;
        self.count[pair.target][pair.source] += 1.0;
    }

    fn argmax(&self, alpha: f64, free: &[usize]) -> Pair {
        let mut best = (
            f64::NEG_INFINITY,
            Pair {
                source: free[0],
                target: free[1],
            },
        );
        for &i in free {
            for &j in free {
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

    /// The old single-pair rule, written out, to hold `choose` to it.
    fn reference_choice<R: Rng>(
        s: &Scheduler,
        cfg: &SchedulerConfig,
        steps: u64,
        rng: &mut R,
    ) -> Pair {
        let n = s.classes();
        if rng.random::<f64>() < cfg.explore {
            let a = rng.random_range(0..n);
            let mut b = rng.random_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            return Pair {
                source: a,
                target: b,
            };
        }
        let alpha = (cfg.alpha_rate * steps as f64).min(1.0);
        let mut best = (
            f64::NEG_INFINITY,
            Pair {
                source: 0,
                target: 1,
            },
        );
        for i in 0..n {
            for j in (0..n).filter(|&j| j != i) {
                if s.score(i, j, alpha) > best.0 {
                    best = (
                        s.score(i, j, alpha),
                        Pair {
                            source: i,
                            target: j,
                        },
                    );
                }
            }
        }
        best.1
    }

    fn random_scores(n: usize, seed: u64) -> Scheduler {
        let mut s = Scheduler::new(n);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for i in 0..n {
            for j in 0..n {
                s.univ[i][j] = rng.random();
                s.diff[i][j] = rng.random();
            }
        }
        s
    }

    #[test]
    fn a_matching_of_one_is_the_single_pair_rule() {
        let cfg = SchedulerConfig::default();
        let mut s = random_scores(10, 3);
        let (mut r1, mut r2) = (ChaCha8Rng::seed_from_u64(9), ChaCha8Rng::seed_from_u64(9));
        for step in 0..300 {
            let want = reference_choice(&s, &cfg, step, &mut r1);
            assert_eq!(s.choose(&cfg, step, &mut r2), want, "step {step}");
        }
        assert_eq!(
            r1.random::<u64>(),
            r2.random::<u64>(),
            "same number of draws"
        );
    }

    #[test]
    fn matchings_are_disjoint_and_cover_every_class_when_even() {
        let cfg = SchedulerConfig::default();
        let mut s = random_scores(10, 4);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for step in 0..200 {
            let m = s.choose_matching(&cfg, step, &mut rng, 5);
            assert_eq!(m.len(), 5);
            let mut seen: Vec<usize> = m.iter().flat_map(|p| [p.source, p.target]).collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..10).collect::<Vec<_>>(), "step {step}: {m:?}");
        }
        assert_eq!(s.count.iter().flatten().sum::<f64>(), 2.0 * 5.0 * 200.0);
        // More pairs than classes allow: as many as fit.
        let mut odd = random_scores(5, 6);
        assert_eq!(odd.choose_matching(&cfg, 0, &mut rng, 9).len(), 2);
        // The greedy first pair is the global arg-max.
        let greedy = SchedulerConfig {
            explore: 0.0,
            ..cfg
        };
        let mut g = random_scores(10, 7);
        let first = reference_choice(&g, &greedy, 0, &mut rng);
        assert_eq!(g.choose_matching(&greedy, 0, &mut rng, 5)[0], first);
    }

    #[test]
    fn the_pairwise_cycle_visits_every_unordered_pair_once_per_round() {
        let mut s = Scheduler::new(5);
        let round: Vec<Pair> = (0..10).map(|i| s.cycle_pair(i)).collect();
        let mut set: Vec<(usize, usize)> = round.iter().map(|p| (p.source, p.target)).collect();
        set.sort_unstable();
        set.dedup();
        assert_eq!(set.len(), 10);
        assert!(round.iter().all(|p| p.source < p.target));
        assert_eq!(
            round[0],
            Pair {
                source: 0,
                target: 1
            }
        );
        assert_eq!(
            round[4],
            Pair {
                source: 1,
                target: 2
            }
        );
        assert_eq!(s.cycle_pair(10), round[0]);
        assert_eq!(s.count[0][1], 2.0);
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
