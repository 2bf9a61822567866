//! The warm-up (paper section IV-C): one universal trigger per target class,
//! inverted on a fixed pool of samples of every other class. The loss drop it
//! causes per source class is the prior score the scheduler starts from.

use tch::Tensor;

use crate::algo::inversion::{invert, Direction, DirectionOutcome, InversionTask};
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
/// the target's own are skipped) and computes the prior scores.
pub fn universal_trigger(
    model: &mut dyn Classifier,
    pool: &[Tensor],
    target: usize,
    init: Option<Trigger>,
    cfg: &WarmupConfig,
    inversion: &InversionConfig,
    seed: u64,
) -> Result<Universal> {
    let sources: Vec<usize> = (0..pool.len())
        .filter(|&i| i != target && pool[i].size()[0] > 0)
        .collect();
    if sources.is_empty() {
        return Err(crate::Error::input(format!(
            "warm-up for class {target}: no samples of any other class seen yet"
        )));
    }
    let parts: Vec<&Tensor> = sources.iter().map(|&i| &pool[i]).collect();
    let samples = Tensor::f_cat(&parts, 0)?;
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
    let outcome = invert(model, &task, inversion, seed)?
        .pop()
        .ok_or_else(|| crate::Error::input("inversion returned no outcome"))?;
    let prior = prior_scores(
        pool.len(),
        &owners,
        &outcome.sample_loss_start,
        &outcome.sample_loss_best,
    );
    Ok(Universal { outcome, prior })
}

/// Per class mean of `(start - end) / start` (0 where start is 0). With no
/// recorded end (the inversion failed) every score is 0.
pub fn prior_scores(n: usize, owners: &[usize], start: &[f64], end: &[f64]) -> Vec<f64> {
    let mut sum = vec![0.0; n];
    let mut count = vec![0usize; n];
    if end.len() != start.len() {
        return sum;
    }
    for ((&i, &s), &e) in owners.iter().zip(start).zip(end) {
        sum[i] += if s != 0.0 { (s - e) / s } else { 0.0 };
        count[i] += 1;
    }
    sum.iter()
        .zip(count)
        .map(|(s, c)| if c > 0 { s / c as f64 } else { 0.0 })
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
