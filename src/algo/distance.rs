//! Class distance (docs/algorithm.md section 5): the size of the smallest trigger
//! that flips samples of class `a` to class `b`, for all `N x (N-1)` directed
//! pairs. All targets of one source class are inverted together, so that one
//! forward pass serves every direction of that source.

use std::ops::ControlFlow;
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::algo::inversion::{invert, Direction, InversionTask};
use crate::algo::trigger::Trigger;
use crate::config::DistanceConfig;
use crate::labels::per_class_indices;
use crate::torch::model::Classifier;
use crate::{Error, Result};

/// A directed class-distance matrix; `values[a][b]` is the distance a -> b.
/// The diagonal is 0; a direction whose inversion never reached the ASR bound
/// under any seed is 0 too and listed in `failed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DistanceMatrix {
    /// Class names, in label order.
    pub classes: Vec<String>,
    /// Distances, rows = source (victim), columns = target.
    pub values: Vec<Vec<f64>>,
    /// Directed pairs with no successful inversion.
    pub failed: Vec<(usize, usize)>,
    /// The protocol that produced it.
    pub protocol: String,
    /// Wall time of the measurement, seconds.
    pub seconds: f64,
}

/// What a security review asks of a before/after pair of matrices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The `k` smallest measured distances before, `(source, target, value)`.
    pub smallest_before: Vec<(usize, usize, f64)>,
    /// The `k` smallest measured distances after.
    pub smallest_after: Vec<(usize, usize, f64)>,
    /// Directions measured both times whose distance shrank: `(source,
    /// target, before, after)`, most shrunk first.
    pub shrunk: Vec<(usize, usize, f64, f64)>,
    /// Per source class, the mean relative enlargement of its directions
    /// (0 for a class with none measured both times).
    pub per_class: Vec<f64>,
    /// Spearman rank correlation of the directions measured both times:
    /// near 1 when hardening kept the order of close and far pairs.
    pub rank_correlation: f64,
    /// The `k` closest directions before against the `k` farthest.
    pub close_far: CloseFar,
}

/// Mean distances of the `k` closest and the `k` farthest directions (as
/// ranked before hardening), before and after: a genuine enlargement keeps
/// close pairs closer than far ones, and an artefact of the measurement
/// would move both alike.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CloseFar {
    /// Directions in each group.
    pub k: usize,
    /// Mean of the closest, before and after.
    pub close: (f64, f64),
    /// Mean of the farthest, before and after.
    pub far: (f64, f64),
}

/// Progress of a measurement, reported after every source class.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Directed pairs measured so far (over all seeds).
    pub done: usize,
    /// Directed pairs to measure (over all seeds).
    pub total: usize,
    /// Seconds since the start.
    pub elapsed: f64,
}

impl DistanceMatrix {
    /// Number of classes.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True for a matrix with no class.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The successfully measured off-diagonal distances.
    pub fn measured(&self) -> impl Iterator<Item = (usize, usize, f64)> + '_ {
        self.values.iter().enumerate().flat_map(move |(a, row)| {
            row.iter()
                .enumerate()
                .filter(move |&(b, &v)| a != b && v > 0.0)
                .map(move |(b, &v)| (a, b, v))
        })
    }

    /// Mean of the measured distances (0 when none).
    pub fn mean(&self) -> f64 {
        let (s, n) = self
            .measured()
            .fold((0.0, 0usize), |(s, n), (_, _, v)| (s + v, n + 1));
        if n == 0 {
            0.0
        } else {
            s / n as f64
        }
    }

    /// The directions measured both here and in `after`, as
    /// `(source, target, before, after)`.
    fn measured_in_both<'a>(
        &'a self,
        after: &'a DistanceMatrix,
    ) -> impl Iterator<Item = (usize, usize, f64, f64)> + 'a {
        self.measured().filter_map(move |(a, b, before)| {
            let v = after.values.get(a).and_then(|r| r.get(b)).copied();
            v.filter(|&v| v > 0.0).map(|v| (a, b, before, v))
        })
    }

    /// Relative enlargement of `after` over `self`: the mean over directed
    /// pairs measured in both of `(after - before) / before`.
    pub fn enlargement(&self, after: &DistanceMatrix) -> f64 {
        let mut sum = 0.0;
        let mut n = 0usize;
        for (_, _, before, v) in self.measured_in_both(after) {
            sum += (v - before) / before;
            n += 1;
        }
        if n == 0 {
            0.0
        } else {
            sum / n as f64
        }
    }

    /// The `k` smallest measured distances, smallest first.
    pub fn smallest(&self, k: usize) -> Vec<(usize, usize, f64)> {
        let mut all: Vec<_> = self.measured().collect();
        all.sort_by(|x, y| x.2.total_cmp(&y.2));
        all.truncate(k);
        all
    }

    /// Smallest distances, shrunk directions and per-class enlargement of
    /// `after` against `self`.
    pub fn change(&self, after: &DistanceMatrix, k: usize) -> Change {
        let n = self.len();
        let (mut sum, mut count) = (vec![0.0; n], vec![0usize; n]);
        let mut shrunk = Vec::new();
        for (a, b, before, v) in self.measured_in_both(after) {
            sum[a] += (v - before) / before;
            count[a] += 1;
            if v < before {
                shrunk.push((a, b, before, v));
            }
        }
        shrunk.sort_by(|x, y| (x.3 / x.2).total_cmp(&(y.3 / y.2)));
        let both: Vec<(f64, f64)> = self
            .measured_in_both(after)
            .map(|(_, _, b, a)| (b, a))
            .collect();
        Change {
            rank_correlation: spearman(&both),
            close_far: close_far(&both, k),
            smallest_before: self.smallest(k),
            smallest_after: after.smallest(k),
            shrunk,
            per_class: sum
                .iter()
                .zip(count)
                .map(|(s, c)| if c > 0 { s / c as f64 } else { 0.0 })
                .collect(),
        }
    }

    /// Element-wise `after - before`, for the difference heatmap.
    pub fn difference(&self, after: &DistanceMatrix) -> Vec<Vec<f64>> {
        self.values
            .iter()
            .zip(&after.values)
            .map(|(r0, r1)| r0.iter().zip(r1).map(|(b, a)| a - b).collect())
            .collect()
    }

    /// The matrix as an aligned text table with class names.
    pub fn to_table(&self) -> String {
        let short: Vec<String> = self
            .classes
            .iter()
            .map(|c| c.chars().take(10).collect())
            .collect();
        let mut out = format!("{:>12}", "from \\ to");
        for c in &short {
            out.push_str(&format!("{c:>11}"));
        }
        out.push('\n');
        for (a, row) in self.values.iter().enumerate() {
            out.push_str(&format!("{:>12}", short[a]));
            for (b, v) in row.iter().enumerate() {
                let cell = if a == b {
                    "-".to_string()
                } else if *v <= 0.0 {
                    "fail".to_string()
                } else {
                    format!("{v:.1}")
                };
                out.push_str(&format!("{cell:>11}"));
            }
            out.push('\n');
        }
        out
    }
}

/// Ranks of `v` (0-based, ties get their mean rank).
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
            j += 1;
        }
        for &o in &order[i..=j] {
            r[o] = (i + j) as f64 / 2.0;
        }
        i = j + 1;
    }
    r
}

/// Spearman's rank correlation of the (x, y) pairs (0 for fewer than two
/// or a constant side).
fn spearman(pairs: &[(f64, f64)]) -> f64 {
    let (x, y): (Vec<f64>, Vec<f64>) = pairs.iter().copied().unzip();
    let (rx, ry) = (ranks(&x), ranks(&y));
    let n = pairs.len() as f64;
    let mean = (n - 1.0) / 2.0;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in rx.iter().zip(&ry) {
        sxy += (a - mean) * (b - mean);
        sxx += (a - mean) * (a - mean);
        syy += (b - mean) * (b - mean);
    }
    if sxx == 0.0 || syy == 0.0 {
        0.0
    } else {
        sxy / (sxx * syy).sqrt()
    }
}

/// The close/far comparison of (before, after) pairs, ranked by before.
fn close_far(pairs: &[(f64, f64)], k: usize) -> CloseFar {
    let mut sorted = pairs.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let k = k.min(sorted.len() / 2);
    let mean = |s: &[(f64, f64)]| {
        let n = s.len().max(1) as f64;
        (
            s.iter().map(|p| p.0).sum::<f64>() / n,
            s.iter().map(|p| p.1).sum::<f64>() / n,
        )
    };
    CloseFar {
        k,
        close: mean(&sorted[..k]),
        far: mean(&sorted[sorted.len() - k..]),
    }
}

/// Labelled samples to measure on (a held-out set): `images` `[n, C, H, W]`
/// floats in `[0,1]` on the CPU, `labels[i]` the class of image `i`, and one
/// name per class.
#[derive(Debug)]
pub struct Samples<'a> {
    /// Images, `[n, C, H, W]`.
    pub images: &'a Tensor,
    /// Class of each image.
    pub labels: Vec<i64>,
    /// Class names, in label order.
    pub classes: &'a [String],
}

/// The smallest trigger found for one direction: what the distance of
/// `source -> target` measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FoundTrigger {
    /// Victim class.
    pub source: usize,
    /// Target class.
    pub target: usize,
    /// The trigger (on the CPU).
    pub trigger: Trigger,
}

/// Measures every directed class distance of `model` on `samples`.
/// `on_progress` is called after each source class of each seed.
pub fn measure(
    model: &mut dyn Classifier,
    samples: Samples<'_>,
    cfg: &DistanceConfig,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<DistanceMatrix> {
    measure_with_triggers(model, samples, cfg, on_progress).map(|(m, _)| m)
}

/// [`measure`], also returning the smallest trigger of every direction
/// that reached the ASR bound (for checks such as
/// [`crate::algo::stamped_accuracy`]).
pub fn measure_with_triggers(
    model: &mut dyn Classifier,
    samples: Samples<'_>,
    cfg: &DistanceConfig,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<(DistanceMatrix, Vec<FoundTrigger>)> {
    measure_pairs(model, samples, cfg, None, &mut |p| {
        on_progress(p);
        ControlFlow::Continue(())
    })
}

/// The one measurement behind every other (the CLI's `moth distance`, the
/// C ABI's `moth_distance_measure`): the distances of the directed `pairs`
/// `(source, target)` (every off-diagonal pair when `None`) and the
/// smallest trigger of each that reached the ASR bound. Pairs left out
/// read 0 in the matrix and are not listed as failed. All chosen targets
/// of one source are inverted together, so a pair's value depends on
/// which other targets of its source were chosen (they share the run's
/// random draws), but never on other sources. `on_progress` is called
/// after each source class of each seed; `ControlFlow::Break` stops the
/// measurement there with [`Error::Cancelled`].
pub fn measure_pairs(
    model: &mut dyn Classifier,
    samples: Samples<'_>,
    cfg: &DistanceConfig,
    pairs: Option<&[(usize, usize)]>,
    on_progress: &mut dyn FnMut(Progress) -> ControlFlow<()>,
) -> Result<(DistanceMatrix, Vec<FoundTrigger>)> {
    cfg.validate()?;
    let n = samples.classes.len();
    if n < 2 {
        return Err(Error::input("distance needs at least two classes"));
    }
    if samples.images.size().first() != Some(&(samples.labels.len() as i64)) {
        return Err(Error::input(format!(
            "{} labels for images of shape {:?}",
            samples.labels.len(),
            samples.images.size()
        )));
    }
    let wanted = chosen_pairs(n, pairs)?;
    let start = Instant::now();
    let by_class = per_class_indices(&samples.labels, n, usize::MAX);
    if let Some(empty) = (0..n).find(|&a| by_class[a].is_empty() && wanted[a].iter().any(|&w| w)) {
        return Err(Error::input(format!(
            "class {} ({}) has no sample",
            empty, samples.classes[empty]
        )));
    }
    let mut best = vec![vec![0.0f64; n]; n];
    let mut found: Vec<Vec<Option<Trigger>>> = vec![vec![None; n]; n];
    let per_seed: usize = wanted.iter().flatten().filter(|&&w| w).count();
    let total = cfg.seeds.len() * per_seed;
    let mut done = 0;
    for &seed in &cfg.seeds {
        for a in 0..n {
            let targets: Vec<usize> = (0..n).filter(|&b| wanted[a][b]).collect();
            if targets.is_empty() {
                continue;
            }
            let mut pool = by_class[a].clone();
            // Each seed draws its own samples, so that seeds vary both the
            // starting trigger and the images it must flip.
            pool.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ ((a as u64) << 32)));
            pool.truncate(cfg.samples_per_class);
            let chosen = samples
                .images
                .f_index_select(0, &Tensor::f_from_slice(&pool)?)?;
            let directions = targets
                .iter()
                .map(|&b| Direction {
                    set: 0,
                    target: b as i64,
                    init: None,
                })
                .collect();
            let task = InversionTask {
                sets: std::slice::from_ref(&chosen),
                directions,
                budget: cfg.budget,
                record_sample_losses: false,
            };
            let outcomes = invert(
                model,
                &task,
                &cfg.inversion,
                seed.wrapping_mul(7919).wrapping_add(a as u64),
            )?;
            for (&b, o) in targets.iter().zip(outcomes) {
                if o.reached && (best[a][b] == 0.0 || o.size < best[a][b]) {
                    best[a][b] = o.size;
                    found[a][b] = Some(o.trigger.to_device(tch::Device::Cpu)?);
                }
            }
            done += targets.len();
            let flow = on_progress(Progress {
                done,
                total,
                elapsed: start.elapsed().as_secs_f64(),
            });
            if flow.is_break() {
                return Err(Error::Cancelled(format!(
                    "the distance measurement was stopped after {done} of {total} pairs"
                )));
            }
        }
    }
    let failed = (0..n)
        .flat_map(|a| (0..n).map(move |b| (a, b)))
        .filter(|&(a, b)| wanted[a][b] && best[a][b] == 0.0)
        .collect();
    let matrix = DistanceMatrix {
        classes: samples.classes.to_vec(),
        values: best,
        failed,
        protocol: cfg.describe(),
        seconds: start.elapsed().as_secs_f64(),
    };
    let triggers = found
        .into_iter()
        .enumerate()
        .flat_map(|(source, row)| {
            row.into_iter().enumerate().filter_map(move |(target, t)| {
                t.map(|trigger| FoundTrigger {
                    source,
                    target,
                    trigger,
                })
            })
        })
        .collect();
    Ok((matrix, triggers))
}

/// `wanted[a][b]`: whether the directed pair `a -> b` is measured.
fn chosen_pairs(n: usize, pairs: Option<&[(usize, usize)]>) -> Result<Vec<Vec<bool>>> {
    let Some(pairs) = pairs else {
        return Ok((0..n).map(|a| (0..n).map(|b| a != b).collect()).collect());
    };
    if pairs.is_empty() {
        return Err(Error::input("no pair to measure"));
    }
    let mut wanted = vec![vec![false; n]; n];
    for &(a, b) in pairs {
        if a >= n || b >= n || a == b {
            return Err(Error::input(format!(
                "pair ({a}, {b}) is not a directed pair of two of the {n} classes"
            )));
        }
        wanted[a][b] = true;
    }
    Ok(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(values: Vec<Vec<f64>>) -> DistanceMatrix {
        DistanceMatrix {
            classes: (0..values.len()).map(|i| i.to_string()).collect(),
            values,
            failed: vec![],
            protocol: String::new(),
            seconds: 0.0,
        }
    }

    #[test]
    fn mean_and_enlargement_skip_failures_and_diagonal() {
        let before = m(vec![
            vec![0.0, 10.0, 0.0],
            vec![20.0, 0.0, 5.0],
            vec![4.0, 8.0, 0.0],
        ]);
        assert!((before.mean() - 47.0 / 5.0).abs() < 1e-12);
        let after = m(vec![
            vec![0.0, 20.0, 7.0],
            vec![30.0, 0.0, 0.0],
            vec![4.0, 16.0, 0.0],
        ]);
        // pairs measured in both: (0,1) +100%, (1,0) +50%, (2,0) 0%, (2,1) +100%
        assert!((before.enlargement(&after) - 2.5 / 4.0).abs() < 1e-12);
        assert_eq!(before.difference(&after)[0][1], 10.0);
        let c = before.change(&after, 2);
        assert_eq!(c.smallest_before, vec![(2, 0, 4.0), (1, 2, 5.0)]);
        assert_eq!(c.smallest_after[0], (2, 0, 4.0));
        assert!(c.shrunk.is_empty());
        assert!((c.per_class[1] - 0.5).abs() < 1e-12 && (c.per_class[2] - 0.5).abs() < 1e-12);
        let shrinking = m(vec![
            vec![0.0, 5.0, 0.0],
            vec![20.0, 0.0, 5.0],
            vec![4.0, 8.0, 0.0],
        ]);
        assert_eq!(before.change(&shrinking, 1).shrunk, vec![(0, 1, 10.0, 5.0)]);
        let table = before.to_table();
        assert!(table.contains("fail") && table.contains("10.0"));
    }

    #[test]
    fn rank_correlation_and_close_far_follow_the_order_of_pairs() {
        let kept = [(1.0, 2.0), (2.0, 3.0), (3.0, 9.0), (4.0, 10.0)];
        assert!((spearman(&kept) - 1.0).abs() < 1e-12);
        let reversed = [(1.0, 4.0), (2.0, 3.0), (3.0, 2.0), (4.0, 1.0)];
        assert!((spearman(&reversed) + 1.0).abs() < 1e-12);
        assert_eq!(spearman(&[(1.0, 1.0)]), 0.0);
        assert_eq!(ranks(&[3.0, 1.0, 3.0]), vec![1.5, 0.0, 1.5]);
        let cf = close_far(&kept, 1);
        assert_eq!((cf.k, cf.close, cf.far), (1, (1.0, 2.0), (4.0, 10.0)));
        let cf = close_far(&kept, 5);
        assert_eq!((cf.k, cf.close, cf.far), (2, (1.5, 2.5), (3.5, 9.5)));
    }
}
