//! The session's settings: the hardening method and every hyper-parameter,
//! with the reference defaults.

use serde::{Deserialize, Serialize};

use crate::algo::bounds::BoundsConfig;
use crate::algo::scheduler::SchedulerConfig;
use crate::algo::warmup::WarmupConfig;
use crate::config::{InversionBudget, InversionConfig};
use crate::{Error, Result};

/// Which hardening method the session runs after the warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Method {
    /// MOTH: scheduled pairs, symmetric (two-sided) generation, trigger reuse.
    Moth,
    /// Baseline: universal triggers only, one target after the other.
    Universal,
    /// Baseline: every pair in turn, full two-sided generation each step, no
    /// scheduler and no trigger reuse.
    Pairwise,
    /// Baseline: scheduled pairs, but one direction per step.
    Asymmetric,
}

impl Method {
    /// The name users type (`moth`, `universal`, `pairwise`, `asymmetric`).
    pub fn name(self) -> &'static str {
        match self {
            Method::Moth => "moth",
            Method::Universal => "universal",
            Method::Pairwise => "pairwise",
            Method::Asymmetric => "asymmetric",
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "moth" => Ok(Method::Moth),
            "universal" => Ok(Method::Universal),
            "pairwise" => Ok(Method::Pairwise),
            "asymmetric" => Ok(Method::Asymmetric),
            _ => Err(Error::Config(format!(
                "unknown method '{s}' (expected moth, universal, pairwise or asymmetric)"
            ))),
        }
    }
}

/// Everything a session needs to know, with the reference defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// Hardening method.
    pub method: Method,
    /// Seed of the session's RNG (every random choice it makes).
    pub seed: u64,
    /// Optimiser of every inversion.
    pub inversion: InversionConfig,
    /// Warm-up settings.
    pub warmup: WarmupConfig,
    /// Budget of the first step of a period (and after a failure).
    pub first: InversionBudget,
    /// Budget of the later steps of a period.
    pub later: InversionBudget,
    /// Training steps per pair (period length).
    pub period: usize,
    /// Fraction of the smaller class's batch samples that get stamped.
    pub portion: f64,
    /// Stamp at least this many samples per direction when the batch has
    /// them (0 = the portion alone decides, as in the reference).
    pub stamp_at_least: usize,
    /// Disjoint pairs hardened together in each period (1 = the paper's
    /// one pair at a time; `N/2` covers every class of the batch).
    pub pairs_per_step: usize,
    /// Pair scheduler.
    pub scheduler: SchedulerConfig,
    /// Stamping bounds.
    pub bounds: BoundsConfig,
    /// Training steps (warm-up included) after which the session is done; 0 = no limit.
    pub max_steps: u64,
    /// Ask for a clean-accuracy report every this many steps (and once before
    /// the first step, as the baseline); 0 = never.
    pub accuracy_every: u64,
    /// Stop when accuracy falls more than this below the baseline (0.01 = 1 point).
    pub max_accuracy_drop: f64,
    /// Recovery instead of stopping: when a check finds accuracy beyond the
    /// bound, train clean (no inversion, no stamping) for up to this many
    /// steps, and resume hardening once a check is within half the bound;
    /// stop only when that does not happen in time. 0 = the paper's rule:
    /// stop at the bound.
    pub recover_steps: u64,
}

/// A named set of settings: the session's here, the training loop's in
/// `moth::runner::RunConfig::for_preset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Preset {
    /// moth's default, chosen by measurement (README, "Results"): several
    /// disjoint pairs per step, more samples stamped, a shorter warm-up,
    /// inversions that stop once they stop improving, one inversion per
    /// period whose triggers the later steps reuse, and recovery (clean
    /// training) instead of stopping at the first bound crossing.
    #[default]
    Default,
    /// The authors' published settings, kept exactly.
    Reference,
}

impl Preset {
    /// `default` or `reference`, as users type it.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Default => "default",
            Preset::Reference => "reference",
        }
    }

    /// The session settings of this preset.
    pub fn session_config(self) -> SessionConfig {
        match self {
            Preset::Default => SessionConfig::moth_default(),
            Preset::Reference => SessionConfig::reference(),
        }
    }
}

impl std::fmt::Display for Preset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Preset {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "default" => Ok(Preset::Default),
            "reference" => Ok(Preset::Reference),
            _ => Err(Error::Config(format!(
                "unknown preset '{s}' (expected default or reference)"
            ))),
        }
    }
}

impl Default for SessionConfig {
    /// The default preset ([`Preset::Default`]).
    fn default() -> Self {
        Self::moth_default()
    }
}

impl SessionConfig {
    /// The default preset: the reference algorithm with the levers that
    /// measured best on the project's benchmark (README, "Results").
    fn moth_default() -> Self {
        let mut cfg = Self::reference();
        cfg.pairs_per_step = DEFAULT_PAIRS;
        cfg.portion = DEFAULT_PORTION;
        cfg.warmup.budget.steps = DEFAULT_WARMUP_STEPS;
        cfg.inversion.early_stop = DEFAULT_EARLY_STOP;
        cfg.period = DEFAULT_PERIOD;
        cfg.later.steps = 0; // reuse: later steps stamp the period's triggers
        cfg.recover_steps = DEFAULT_RECOVER_STEPS;
        cfg
    }

    /// The reference preset: the authors' published defaults, kept exactly
    /// so that their numbers can be reproduced (docs/algorithm.md).
    pub fn reference() -> Self {
        SessionConfig {
            method: Method::Moth,
            seed: 0,
            inversion: InversionConfig::default(),
            warmup: WarmupConfig::default(),
            first: InversionBudget {
                steps: 200,
                init_cost: 1e-3,
                asr_bound: 0.9,
            },
            later: InversionBudget {
                steps: 50,
                init_cost: 1e-2,
                asr_bound: 0.9,
            },
            period: 3,
            portion: 0.1,
            stamp_at_least: 0,
            pairs_per_step: 1,
            scheduler: SchedulerConfig::default(),
            bounds: BoundsConfig::default(),
            max_steps: 0,
            accuracy_every: 10,
            max_accuracy_drop: 0.01,
            recover_steps: 0,
        }
    }
}

/// Disjoint pairs per step in the default preset: enough for ten classes.
const DEFAULT_PAIRS: usize = 5;
/// The default preset's stamping portion.
const DEFAULT_PORTION: f64 = 0.3;
/// The default preset's warm-up inversion budget (the reference's is 500).
const DEFAULT_WARMUP_STEPS: usize = 100;
/// The default preset's early stop of every inversion.
const DEFAULT_EARLY_STOP: usize = 10;
/// The default preset's period: twice the reference's, its later steps
/// reusing the first step's triggers, so a pair costs one inversion.
const DEFAULT_PERIOD: usize = 6;
/// The default preset's recovery: clean steps allowed after a bound crossing.
const DEFAULT_RECOVER_STEPS: u64 = 200;

impl SessionConfig {
    /// This configuration with a partial one merged in: keys present in
    /// `patch` (a JSON object) replace the current values, nested objects are
    /// merged key by key, absent keys keep their values. Unknown keys, wrong
    /// types and out-of-range values are refused; `self` is never changed.
    /// The CLI's `--session-config` and the C ABI's `moth_config_set_json`
    /// both come here.
    pub fn with_patch(&self, patch: serde_json::Value) -> Result<Self> {
        if !patch.is_object() {
            return Err(Error::Config(
                "configuration JSON must be an object".to_string(),
            ));
        }
        let mut current = serde_json::to_value(self)
            .map_err(|e| Error::Config(format!("cannot serialise the configuration: {e}")))?;
        crate::config::merge_json(&mut current, patch);
        let next: SessionConfig =
            serde_json::from_value(current).map_err(|e| Error::Config(e.to_string()))?;
        next.validate()?;
        Ok(next)
    }

    /// [`SessionConfig::with_patch`] from JSON text.
    pub fn with_json(&self, json: &str) -> Result<Self> {
        let patch: serde_json::Value =
            serde_json::from_str(json).map_err(|e| Error::Config(format!("not JSON: {e}")))?;
        self.with_patch(patch)
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        self.inversion.validate()?;
        self.warmup.validate()?;
        crate::config::validate_budget("first", &self.first)?;
        if self.later.steps > 0 {
            // 0 is the reuse lever: later steps stamp the period's trigger as it is.
            crate::config::validate_budget("later", &self.later)?;
        }
        if self.period == 0 {
            return Err(Error::Config("period must be at least 1".into()));
        }
        if self.pairs_per_step == 0 {
            return Err(Error::Config("pairs_per_step must be at least 1".into()));
        }
        crate::config::unit_interval("portion", self.portion)?;
        self.scheduler.validate()?;
        self.bounds.validate()?;
        crate::config::unit_interval("max_accuracy_drop", self.max_accuracy_drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_nested_patch_keeps_the_other_fields() {
        let base = SessionConfig::default();
        let cfg = base.with_json(r#"{"first": {"steps": 10}}"#).unwrap();
        assert_eq!(cfg.first.steps, 10);
        assert_eq!(cfg.first.init_cost, base.first.init_cost);
        assert_eq!(cfg.later, base.later);
        let e = base.with_json(r#"{"frist": 1}"#).unwrap_err();
        assert!(matches!(e, Error::Config(_)), "{e}");
        assert!(base.with_json(r#"{"portion": 2.0}"#).is_err());
        assert!(base.with_json("[1]").is_err());
        assert!(base.with_json("{").is_err());
    }
}
