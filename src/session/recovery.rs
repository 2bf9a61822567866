//! What a clean-accuracy report decides: keep going, stop at the bound
//! (the paper's rule), or, with `recover_steps`, train clean until the
//! accuracy is back and then harden again.

use super::{AccuracyVerdict, DoneReason, Phase, SessionConfig, State};

/// Hardening resumes once the drop is at most this fraction of the bound,
/// so that it does not cross the bound again at the next check.
pub(crate) const RESUME_FRACTION: f64 = 0.5;

impl State {
    /// The verdict on a report whose accuracy is `drop` below the baseline,
    /// and the phase change it brings.
    pub(super) fn judge_accuracy(&mut self, cfg: &SessionConfig, drop: f64) -> AccuracyVerdict {
        let beyond = drop > cfg.max_accuracy_drop;
        match self.phase {
            Phase::Recover { .. } if drop <= cfg.max_accuracy_drop * RESUME_FRACTION => {
                self.phase = self.start_hardening(cfg);
                AccuracyVerdict::WithinBound { drop }
            }
            Phase::Recover { since } if since >= cfg.recover_steps => {
                self.stop(DoneReason::RecoveryExhausted, beyond, drop)
            }
            Phase::Recover { .. } if beyond => AccuracyVerdict::Recovering { drop },
            Phase::Recover { .. } => AccuracyVerdict::WithinBound { drop },
            Phase::Orthogonalize { .. } | Phase::Universal { .. }
                if beyond && cfg.recover_steps > 0 =>
            {
                // The period's sizes so far are real measurements: they
                // still update the scheduler and the bounds.
                self.end_periods(cfg);
                self.periods.clear();
                self.phase = Phase::Recover { since: 0 };
                AccuracyVerdict::Recovering { drop }
            }
            _ if beyond => self.stop(DoneReason::AccuracyBound, true, drop),
            _ => AccuracyVerdict::WithinBound { drop },
        }
    }

    /// Ends the session for `reason`.
    fn stop(&mut self, reason: DoneReason, beyond: bool, drop: f64) -> AccuracyVerdict {
        self.phase = Phase::Done { reason };
        if beyond {
            AccuracyVerdict::Exceeded { drop }
        } else {
            AccuracyVerdict::WithinBound { drop }
        }
    }
}
