//! The warm-up (paper section IV-C): one universal trigger per target class,
//! inverted on a fixed pool of samples of every other class. The loss drop it
//! causes per source class is the prior score the scheduler starts from.

use tch::Tensor;

use crate::algo::collective::Agreement;
use crate::algo::inversion::{invert_shared, Direction, DirectionOutcome, InversionTask};
use crate::algo::trigger::Trigger;
use crate::config::{InversionBudget, InversionConfig};
use crate::torch::model::Classifier;
use crate::Result;

/// Warm-up settings (reference defaults).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WarmupConfig {
    /// Universal inversion budget.
    pub budget: InversionBudget,
    /// Samples per class kept in the inversion pool.
    pub pool_per_class: usize,
    /// Fraction of the batch's non-target samples that get stamped.
    pub stamp_ratio: f64,
}

impl Default for WarmupConfig {
    fn default() -> Self {
        WarmupConfig {
            budget: InversionBudget {
                steps: 500,
                init_cost: 1e-3,
                asr_bound: 0.99,
            },
            pool_per_class: 10,
            stamp_ratio: 0.5,
        }
    }
}

impl WarmupConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        crate::config::validate_budget("warmup.budget", &self.budget)?;
        if self.pool_per_class == 0 {
            return Err(crate::Error::Config(
                "warmup.pool_per_class must be at least 1".into(),
            ));
        }
        crate::config::unit_interval("warmup.stamp_ratio", self.stamp_ratio)
    }
}

/// The universal trigger of one target and the prior score of every class.
#[derive(Debug)]
pub struct Universal {
    /// The inversion outcome (zero trigger on failure).
    pub outcome: DirectionOutcome,
    /// `prior[i]`: mean relative loss drop of class `i` samples (0 for the
    /// target and for classes without pool samples).
    pub prior: Vec<f64>,
}

/// Inverts the universal trigger of `target` on `pool` (per class samples;
/// the target's own are skipped) and computes the prior scores. With
/// `shared`, `pool` holds this rank's samples (possibly none), and the
/// trigger and the prior scores are those of the union of the ranks'.
#[allow(clippy::too_many_arguments)]
pub fn universal_trigger(
    model: &mut dyn Classifier,
    pool: &[Tensor],
    target: usize,
    init: Option<Trigger>,
    cfg: &WarmupConfig,
    inversion: &InversionConfig,
    seed: u64,
    shared: Option<&mut Agreement>,
) -> Result<Universal> {
    let sources: Vec<usize> = (0..pool.len())
        .filter(|&i| i != target && pool[i].size()[0] > 0)
        .collect();
    if sources.is_empty() && shared.is_none() {
        return Err(crate::Error::input(format!(
            "warm-up for class {target}: no samples of any other class seen yet"
        )));
    }
    let parts: Vec<&Tensor> = sources.iter().map(|&i| &pool[i]).collect();
    let samples = match parts.first() {
        Some(_) => Tensor::f_cat(&parts, 0)?,
        // A data-parallel rank without samples still takes part.
        None => pool[target].f_narrow(0, 0, 0)?,
    };
    let owners: Vec<usize> = sources
        .iter()
        .flat_map(|&i| std::iter::repeat(i).take(pool[i].size()[0] as usize))
        .collect();
    let task = InversionTask {
        sets: std::slice::from_ref(&samples),
        directions: vec![Direction {
            set: 0,
            target: target as i64,
            init,
        }],
        budget: cfg.budget,
        record_sample_losses: true,
    };
    let mut shared = shared;
    let outcome = invert_shared(model, &task, inversion, seed, shared.as_deref_mut())?
        .pop()
        .ok_or_else(|| crate::Error::input("inversion returned no outcome"))?;
    let (sum, count) = prior_sums(
        pool.len(),
        &owners,
        &outcome.sample_loss_start,
        &outcome.sample_loss_best,
    );
    let prior = match shared {
        None => means(&sum, &count),
        Some(s) => {
            // Sums and counts over the ranks: the means of the union. Every
            // rank takes the best trigger in the same step, so all ranks
            // have end losses or none do.
            let mut both: Vec<f32> = sum.iter().chain(&count).map(|&v| v as f32).collect();
            s.sum(&mut both)?;
            let (sum, count) = both.split_at(pool.len());
            let sum: Vec<f64> = sum.iter().map(|&v| v as f64).collect();
            let count: Vec<f64> = count.iter().map(|&v| v as f64).collect();
            means(&sum, &count)
        }
    };
    Ok(Universal { outcome, prior })
}

/// Per class mean of `(start - end) / start` (0 where start is 0). With no
/// recorded end (the inversion failed) every score is 0.
pub fn prior_scores(n: usize, owners: &[usize], start: &[f64], end: &[f64]) -> Vec<f64> {
    let (sum, count) = prior_sums(n, owners, start, end);
    means(&sum, &count)
}

/// Per class sum of `(start - end) / start` and sample count (all zero
/// without recorded end losses).
fn prior_sums(n: usize, owners: &[usize], start: &[f64], end: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let mut sum = vec![0.0; n];
    let mut count = vec![0.0; n];
    if end.len() != start.len() {
        return (sum, count);
    }
    for ((&i, &s), &e) in owners.iter().zip(start).zip(end) {
        sum[i] += if s != 0.0 { (s - e) / s } else { 0.0 };
        count[i] += 1.0;
    }
    (sum, count)
}

fn means(sum: &[f64], count: &[f64]) -> Vec<f64> {
    sum.iter()
        .zip(count)
        .map(|(s, &c)| if c > 0.0 { s / c } else { 0.0 })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prior_is_mean_relative_loss_drop_per_class() {
        let owners = [0, 0, 2];
        let start = [2.0, 0.0, 4.0];
        let end = [1.0, 5.0, 1.0];
        let p = prior_scores(3, &owners, &start, &end);
        assert_eq!(p, vec![0.25, 0.0, 0.75]);
        assert_eq!(prior_scores(3, &owners, &start, &[]), vec![0.0; 3]);
    }
}
