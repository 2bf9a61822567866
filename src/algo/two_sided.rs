//! Two-sided backdoor generation (paper Algorithm 1): for a pair `(a, b)`,
//! the trigger `a -> b` and the trigger `b -> a` are optimised jointly on
//! the batch's samples of both classes, so that hardening pushes the
//! decision boundary from both sides at once (symmetric hardening).

use tch::Tensor;

use crate::algo::collective::Agreement;
use crate::algo::inversion::{invert_shared, Direction, DirectionOutcome, InversionTask};
use crate::algo::trigger::Trigger;
use crate::config::{InversionBudget, InversionConfig};
use crate::torch::model::Classifier;
use crate::Result;

/// One direction to generate: samples of `victim` flipped to `target`.
#[derive(Debug)]
pub struct Side<'a> {
    /// Victim class samples `[n, C, H, W]`.
    pub samples: &'a Tensor,
    /// Victim class.
    pub victim: usize,
    /// Target class.
    pub target: usize,
    /// Initial trigger.
    pub init: Option<Trigger>,
}

/// Generates the triggers of the given sides jointly: two sides for the
/// symmetric generation, one for the asymmetric baseline. With `shared`,
/// the samples are this rank's and the triggers are the ranks' common ones.
pub fn generate(
    model: &mut dyn Classifier,
    sides: Vec<Side<'_>>,
    budget: InversionBudget,
    cfg: &InversionConfig,
    seed: u64,
    shared: Option<&mut Agreement>,
) -> Result<Vec<DirectionOutcome>> {
    let sets: Vec<Tensor> = sides.iter().map(|s| s.samples.shallow_clone()).collect();
    let directions = sides
        .into_iter()
        .enumerate()
        .map(|(i, s)| Direction {
            set: i,
            target: s.target as i64,
            init: s.init,
        })
        .collect();
    let task = InversionTask {
        sets: &sets,
        directions,
        budget,
        record_sample_losses: false,
    };
    invert_shared(model, &task, cfg, seed, shared)
}
