//! The plain C structs a session reports through: its phase, the last step
//! report with its directions, accuracy bookkeeping, the model spec and the
//! matrix kinds, and their conversion from the Rust types.

use super::boundary::Zeroable;
use crate::session::{DirectionReport, DoneReason, Phase, StepReport};

/// What the session's next step does (`moth_phase.kind`).
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum moth_phase_kind {
    /// Warm-up: the universal trigger of `target` is generated next.
    Warmup = 0,
    /// Orthogonalisation of the pair `source`/`target`, step
    /// `step_in_period` of its period.
    Orthogonalize = 1,
    /// Universal baseline method: the universal trigger of `target`.
    Universal = 2,
    /// Finished (`done_reason` says why); no further hardening.
    Done = 3,
    /// Recovery (`recover_steps`): accuracy fell beyond the bound; the next
    /// step hands back the clean batch. `step_in_period` counts the clean
    /// steps taken so far.
    Recover = 4,
}

/// Why a session finished.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum moth_done_reason {
    /// Not finished.
    None = 0,
    /// The configured number of steps (`max_steps`) was reached.
    StepBudget = 1,
    /// Clean accuracy fell more than `max_accuracy_drop` below the baseline.
    AccuracyBound = 2,
    /// Recovery (`recover_steps`) ran out of clean steps before accuracy
    /// came back within half of `max_accuracy_drop`.
    RecoveryExhausted = 3,
}

/// A session phase.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct moth_phase {
    /// Which phase.
    pub kind: moth_phase_kind,
    /// Target class (warm-up, universal, orthogonalise); 0 when done.
    pub target: usize,
    /// Source class of the pair (orthogonalise only; 0 otherwise).
    pub source: usize,
    /// 0-based step within the pair's period (orthogonalise only).
    pub step_in_period: usize,
    /// Why the session finished (`MOTH_DONE_REASON_NONE` unless done).
    pub done_reason: moth_done_reason,
}

// SAFETY: integers and enums whose 0 value is a variant.
unsafe impl Zeroable for moth_phase {}

/// What one generated trigger did in a step.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct moth_direction {
    /// Victim class whose samples were stamped, or -1 for a universal
    /// trigger (its victims are all other classes).
    pub victim: i64,
    /// Target class the trigger flips victims to.
    pub target: usize,
    /// Trigger size (`C * sum(mask)`; 0 when the inversion failed).
    pub size: f64,
    /// Whether the inversion reached its attack-success bound.
    pub reached: bool,
    /// The stamping bound the size was compared with.
    pub bound: f64,
    /// Samples stamped with it.
    pub stamped: usize,
}

/// Maximum number of directions one step reports.
pub const MOTH_MAX_DIRECTIONS: usize = 2;

/// The report of the last `moth_session_harden_batch` call.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct moth_step_report {
    /// 0-based index of the step.
    pub step: u64,
    /// The phase the step ran in.
    pub phase: moth_phase,
    /// Valid entries of `directions` (0 when the batch held too few samples
    /// of the pair to harden, 1 for warm-up/universal/asymmetric, 2 for a
    /// two-sided step).
    pub num_directions: usize,
    /// Per generated trigger.
    pub directions: [moth_direction; MOTH_MAX_DIRECTIONS],
    /// Inversion steps (passes over the inversion set) used.
    pub inversion_steps: usize,
    /// Wall time of the call, seconds.
    pub seconds: f64,
}

// SAFETY: integers, floats, bools and enums whose 0 value is a variant.
unsafe impl Zeroable for moth_step_report {}

/// The answer to an accuracy report.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum moth_verdict {
    /// No verdict (the out-parameter's value when the call failed).
    None = 0,
    /// The first report, recorded as the baseline.
    Baseline = 1,
    /// Within the bound: keep this model as the latest good one.
    WithinBound = 2,
    /// Beyond the bound: the session is done; return to the last model
    /// that was within the bound.
    Exceeded = 3,
    /// Beyond the bound, and the session recovers (`recover_steps`): keep
    /// training this model on the clean batches it hands back; do not
    /// record it as a good one.
    Recovering = 4,
}

// SAFETY: 0 is moth_verdict::None.
unsafe impl Zeroable for moth_verdict {}

/// Which scheduler matrix `moth_session_matrix` copies: one of the
/// `MOTH_MATRIX_*` values.
pub type moth_matrix_kind = i32;
/// Prior scores from the warm-up (`univ[i][t]`).
pub const MOTH_MATRIX_UNIV: moth_matrix_kind = 0;
/// Latest period-averaged trigger size per direction.
pub const MOTH_MATRIX_SIZE: moth_matrix_kind = 1;
/// Post-selection score (smoothed relative change of the size).
pub const MOTH_MATRIX_DIFF: moth_matrix_kind = 2;
/// How often each pair was chosen (symmetric).
pub const MOTH_MATRIX_COUNT: moth_matrix_kind = 3;

/// Accuracy bookkeeping of a session.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct moth_accuracy {
    /// Whether a baseline was reported.
    pub has_baseline: bool,
    /// The first reported accuracy.
    pub baseline: f64,
    /// Whether any accuracy was reported.
    pub has_last: bool,
    /// The latest reported accuracy.
    pub last: f64,
    /// A report is due before the next step.
    pub pending: bool,
}

// SAFETY: bools and floats.
unsafe impl Zeroable for moth_accuracy {}

/// The model a session was made for.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct moth_spec {
    /// Number of classes.
    pub num_classes: usize,
    /// Channels of one input.
    pub c: i64,
    /// Height of one input.
    pub h: i64,
    /// Width of one input.
    pub w: i64,
}

// SAFETY: integers.
unsafe impl Zeroable for moth_spec {}

pub(crate) fn phase_to_c(p: Phase) -> moth_phase {
    let mut c = moth_phase {
        kind: moth_phase_kind::Warmup,
        target: 0,
        source: 0,
        step_in_period: 0,
        done_reason: moth_done_reason::None,
    };
    match p {
        Phase::Warmup { target } => c.target = target,
        Phase::Orthogonalize {
            pair,
            step_in_period,
        } => {
            c.kind = moth_phase_kind::Orthogonalize;
            c.source = pair.source;
            c.target = pair.target;
            c.step_in_period = step_in_period;
        }
        Phase::Universal { target } => {
            c.kind = moth_phase_kind::Universal;
            c.target = target;
        }
        Phase::Recover { since } => {
            c.kind = moth_phase_kind::Recover;
            c.step_in_period = usize::try_from(since).unwrap_or(usize::MAX);
        }
        Phase::Done { reason } => {
            c.kind = moth_phase_kind::Done;
            c.done_reason = match reason {
                DoneReason::StepBudget => moth_done_reason::StepBudget,
                DoneReason::AccuracyBound => moth_done_reason::AccuracyBound,
                DoneReason::RecoveryExhausted => moth_done_reason::RecoveryExhausted,
            };
        }
    }
    c
}

fn direction_to_c(d: &DirectionReport) -> moth_direction {
    moth_direction {
        victim: d.victim.map_or(-1, |v| v as i64),
        target: d.target,
        size: d.size,
        reached: d.reached,
        bound: d.bound,
        stamped: d.stamped,
    }
}

pub(crate) fn report_to_c(r: &StepReport) -> moth_step_report {
    let empty = moth_direction {
        victim: -1,
        target: 0,
        size: 0.0,
        reached: false,
        bound: 0.0,
        stamped: 0,
    };
    let mut directions = [empty; MOTH_MAX_DIRECTIONS];
    for (slot, d) in directions.iter_mut().zip(&r.directions) {
        *slot = direction_to_c(d);
    }
    moth_step_report {
        step: r.step,
        phase: phase_to_c(r.phase),
        num_directions: r.directions.len().min(MOTH_MAX_DIRECTIONS),
        directions,
        inversion_steps: r.inversion_steps,
        seconds: r.seconds,
    }
}
