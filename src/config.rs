//! Every hyper-parameter of moth, with the reference defaults of docs/algorithm.md.
//!
//! All structs are serde-serialisable (they travel in checkpoints and through
//! the C ABI as JSON) and checked by `validate` before use.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The Adam optimiser and schedule shared by every trigger inversion
/// (docs/algorithm.md section 2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InversionConfig {
    /// Adam learning rate on the tanh parameters.
    pub lr: f64,
    /// Adam first-moment decay.
    pub beta1: f64,
    /// Adam second-moment decay.
    pub beta2: f64,
    /// Mini-batch size of one inversion pass.
    pub batch_size: usize,
    /// Consecutive steps above (below) the ASR bound before the cost is raised (lowered).
    pub patience: usize,
    /// Factor by which the cost is raised; it is lowered by `factor^1.5`.
    pub cost_factor: f64,
    /// Half-width of the uniform noise added when restarting from the best trigger.
    pub restart_noise: f64,
    /// Stop optimising a direction once it has reached the ASR bound and
    /// found no smaller trigger for this many steps; its samples then leave
    /// the forward passes, and the inversion ends when every direction has
    /// stopped (0 = always run the whole budget, as the reference does).
    pub early_stop: usize,
}

impl Default for InversionConfig {
    fn default() -> Self {
        InversionConfig {
            lr: 0.1,
            beta1: 0.5,
            beta2: 0.9,
            batch_size: 32,
            patience: 10,
            cost_factor: 1.5,
            restart_noise: 0.01,
            early_stop: 0,
        }
    }
}

/// One use of the inversion optimiser: how long, from which cost, to which
/// attack success rate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InversionBudget {
    /// Number of passes over the inversion set.
    pub steps: usize,
    /// Initial weight of the mask L1 term.
    pub init_cost: f64,
    /// Attack success rate a trigger must reach to count.
    pub asr_bound: f64,
}

/// How class distances are measured (docs/algorithm.md section 5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistanceConfig {
    /// Test samples per source class.
    pub samples_per_class: usize,
    /// Inversion budget of one direction.
    pub budget: InversionBudget,
    /// Seeds; the result is the element-wise minimum over seeds, ignoring failures.
    pub seeds: Vec<u64>,
    /// Optimiser settings.
    pub inversion: InversionConfig,
}

impl Default for DistanceConfig {
    fn default() -> Self {
        Self::paper()
    }
}

impl DistanceConfig {
    /// The paper's protocol: 100 samples per class, 1000 steps, 3 seeds.
    pub fn paper() -> Self {
        DistanceConfig {
            samples_per_class: 100,
            budget: InversionBudget {
                steps: 1000,
                init_cost: 1e-3,
                asr_bound: 0.9,
            },
            seeds: vec![0, 1, 2],
            inversion: InversionConfig::default(),
        }
    }

    /// A lighter protocol for CPU-only machines: 32 samples (one mini-batch),
    /// 200 steps, 1 seed. Printed with every result it produces.
    pub fn quick() -> Self {
        DistanceConfig {
            samples_per_class: 32,
            budget: InversionBudget {
                steps: 200,
                ..Self::paper().budget
            },
            seeds: vec![0],
            ..Self::paper()
        }
    }

    /// The protocol that confirms a quick result: twice quick's samples
    /// (64 per class), three times its steps (600) and two seeds, 12 times
    /// its cost. An enlargement that is real holds under both.
    pub fn confirm() -> Self {
        DistanceConfig {
            samples_per_class: 64,
            budget: InversionBudget {
                steps: 600,
                ..Self::paper().budget
            },
            seeds: vec![0, 1],
            ..Self::paper()
        }
    }

    /// A named protocol: `quick`, `confirm` or `paper` (the names of the
    /// CLI's `--protocol`).
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "quick" => Ok(Self::quick()),
            "confirm" => Ok(Self::confirm()),
            "paper" => Ok(Self::paper()),
            other => Err(Error::Config(format!(
                "unknown distance protocol '{other}' (expected quick, confirm or paper)"
            ))),
        }
    }

    /// This protocol with the JSON object `patch` merged in (keys present
    /// replace values, nested objects merge key by key); unknown keys, wrong
    /// types and out-of-range values are refused and `self` is unchanged.
    pub fn with_patch(&self, patch: serde_json::Value) -> Result<Self> {
        if !patch.is_object() {
            return Err(Error::Config("protocol JSON must be an object".into()));
        }
        let mut current = serde_json::to_value(self)
            .map_err(|e| Error::Config(format!("cannot serialise the protocol: {e}")))?;
        merge_json(&mut current, patch);
        let next: DistanceConfig =
            serde_json::from_value(current).map_err(|e| Error::Config(e.to_string()))?;
        next.validate()?;
        Ok(next)
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        if self.samples_per_class == 0 {
            return Err(Error::Config(
                "distance.samples_per_class must be at least 1".into(),
            ));
        }
        if self.seeds.is_empty() {
            return Err(Error::Config(
                "distance.seeds must name at least one seed".into(),
            ));
        }
        validate_budget("distance.budget", &self.budget)?;
        self.inversion.validate()
    }

    /// One-line description of the protocol, printed beside its results.
    pub fn describe(&self) -> String {
        format!(
            "{} test samples/class, {} steps, init cost {}, ASR bound {}, {} seed(s) {:?}, Adam lr {}, batch {}",
            self.samples_per_class,
            self.budget.steps,
            self.budget.init_cost,
            self.budget.asr_bound,
            self.seeds.len(),
            self.seeds,
            self.inversion.lr,
            self.inversion.batch_size
        )
    }
}

/// Merges the JSON `patch` into `base`: objects key by key (recursively),
/// anything else replaced. The partial configurations of the CLI and the C
/// ABI are applied this way.
pub(crate) fn merge_json(base: &mut serde_json::Value, patch: serde_json::Value) {
    use serde_json::Value;
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                match b.get_mut(&k) {
                    Some(slot) if slot.is_object() && v.is_object() => merge_json(slot, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, p) => *b = p,
    }
}

pub(crate) fn unit_interval(name: &str, v: f64) -> Result<()> {
    if v.is_finite() && (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(Error::Config(format!("{name} must be in [0, 1], got {v}")))
    }
}

pub(crate) fn positive(name: &str, v: f64) -> Result<()> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "{name} must be a positive number, got {v}"
        )))
    }
}

pub(crate) fn non_negative(name: &str, v: f64) -> Result<()> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(Error::Config(format!("{name} must be >= 0, got {v}")))
    }
}

/// Checks an inversion budget; `name` prefixes the messages.
pub fn validate_budget(name: &str, b: &InversionBudget) -> Result<()> {
    if b.steps == 0 {
        return Err(Error::Config(format!("{name}.steps must be at least 1")));
    }
    non_negative(&format!("{name}.init_cost"), b.init_cost)?;
    unit_interval(&format!("{name}.asr_bound"), b.asr_bound)
}

impl InversionConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        positive("inversion.lr", self.lr)?;
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return Err(Error::Config(format!(
                "inversion betas must be in [0, 1), got ({}, {})",
                self.beta1, self.beta2
            )));
        }
        if self.batch_size == 0 {
            return Err(Error::Config(
                "inversion.batch_size must be at least 1".into(),
            ));
        }
        if self.patience == 0 {
            return Err(Error::Config(
                "inversion.patience must be at least 1".into(),
            ));
        }
        if !(self.cost_factor.is_finite() && self.cost_factor > 1.0) {
            return Err(Error::Config(format!(
                "inversion.cost_factor must be > 1, got {}",
                self.cost_factor
            )));
        }
        unit_interval("inversion.restart_noise", self.restart_noise)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_confirm_protocol_is_at_least_twice_the_samples_and_three_times_the_steps_of_quick() {
        let (q, c) = (DistanceConfig::quick(), DistanceConfig::confirm());
        assert!(c.samples_per_class >= 2 * q.samples_per_class);
        assert!(c.budget.steps >= 3 * q.budget.steps);
        assert!(c.seeds.len() >= 2);
        assert_eq!(c.budget.asr_bound, q.budget.asr_bound);
        c.validate().unwrap();
        assert!(c.describe().contains("600 steps"), "{}", c.describe());
    }
}
