//! Where a session stands, and the words every front end uses for it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::algo::scheduler::Pair;

/// Why a session finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DoneReason {
    /// The configured number of steps was reached.
    StepBudget,
    /// Clean accuracy fell more than the bound below the baseline.
    AccuracyBound,
    /// Recovery (`recover_steps`) ran out of clean steps before accuracy
    /// came back within half the bound. Last so that older checkpoints,
    /// which number the variants before it, still read.
    RecoveryExhausted,
}

/// Where the session stands: what its next step will do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Warm-up: the universal trigger of `target` is generated next.
    Warmup {
        /// Target class.
        target: usize,
    },
    /// Orthogonalisation: step `step_in_period` of hardening `pair`.
    Orthogonalize {
        /// The scheduled pair.
        pair: Pair,
        /// 0-based step within the period.
        step_in_period: usize,
    },
    /// Universal baseline: the universal trigger of `target` is regenerated.
    Universal {
        /// Target class.
        target: usize,
    },
    /// Finished; no further hardening.
    Done {
        /// Why.
        reason: DoneReason,
    },
    /// Recovery (`recover_steps`): accuracy fell beyond the bound, so the
    /// next step trains on the clean batch; hardening resumes with a new
    /// period once a check is within half the bound.
    Recover {
        /// Clean steps taken since the bound was crossed.
        since: u64,
    },
}

impl DoneReason {
    /// A short name (`step-budget`, `accuracy-bound`, `recovery-exhausted`)
    /// for reports and JSON.
    pub fn name(self) -> &'static str {
        match self {
            DoneReason::StepBudget => "step-budget",
            DoneReason::AccuracyBound => "accuracy-bound",
            DoneReason::RecoveryExhausted => "recovery-exhausted",
        }
    }
}

impl fmt::Display for DoneReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DoneReason::StepBudget => "the step budget is spent",
            DoneReason::AccuracyBound => "accuracy fell below the bound",
            DoneReason::RecoveryExhausted => {
                "accuracy did not recover within the clean steps allowed"
            }
        })
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Phase::Warmup { target } => write!(f, "warm-up, target {target}"),
            Phase::Orthogonalize {
                pair,
                step_in_period,
            } => write!(
                f,
                "orthogonalize {}<->{}, period step {}",
                pair.source,
                pair.target,
                step_in_period + 1
            ),
            Phase::Universal { target } => write!(f, "universal, target {target}"),
            Phase::Done { reason } => write!(f, "done: {reason}"),
            Phase::Recover { since } => write!(f, "recovery, clean step {}", since + 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_read_as_words_not_debug_text() {
        let p = Phase::Orthogonalize {
            pair: Pair {
                source: 3,
                target: 7,
            },
            step_in_period: 0,
        };
        assert_eq!(p.to_string(), "orthogonalize 3<->7, period step 1");
        let done = Phase::Done {
            reason: DoneReason::AccuracyBound,
        };
        assert_eq!(done.to_string(), "done: accuracy fell below the bound");
        assert_eq!(DoneReason::StepBudget.name(), "step-budget");
        assert_eq!(DoneReason::RecoveryExhausted.name(), "recovery-exhausted");
        assert!(!format!("{}", Phase::Warmup { target: 2 }).contains('{'));
        assert_eq!(
            Phase::Recover { since: 0 }.to_string(),
            "recovery, clean step 1"
        );
    }
}
