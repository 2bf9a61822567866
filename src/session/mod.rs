//! The hardening session: MOTH's state machine, driven one training step at
//! a time by whoever owns the model (DESIGN.md "The session is sans-IO").
//!
//! The session holds only hardening state: the scheduler's matrices, the
//! trigger cache, the bounds, the current pair and period, counters, its own
//! seeded RNG and its configuration. Each [`Session::harden_batch`] call runs
//! the phase's inversion on the caller's model, stamps the chosen samples
//! (labels unchanged) and returns them; the caller trains on them.
//! A call that fails leaves the session exactly as it was: all work is done
//! on a copy of the state, committed only on success.

use std::collections::BTreeMap;
use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::algo::bounds::Bounds;
use crate::algo::cache::TriggerCache;
use crate::algo::collective::{Agreement, Collective};
use crate::algo::scheduler::{Pair, Scheduler};
use crate::algo::trigger::Trigger;
use crate::error::{InputKind, PhaseKind};
use crate::torch::model::Classifier;
use crate::torch::stream::{CudaStream, StreamScope};
use crate::{Error, Result};

pub mod checkpoint;
mod config;
mod data_parallel;
mod phase;
mod recovery;
mod step;
#[cfg(test)]
mod stream_tests;
mod validate;

pub use config::{Method, Preset, SessionConfig};
pub use phase::{DoneReason, Phase};
use step::StepContext;
pub use validate::MAX_INPUT_VALUES;

/// The largest class count a session accepts: its four N x N matrices and
/// N(N-1) cached triggers grow quadratically.
pub const MAX_CLASSES: usize = 4096;

/// The model the session hardens, as far as the session needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSpec {
    /// Number of classes.
    pub num_classes: usize,
    /// `[C, H, W]` of one input.
    pub input_shape: [i64; 3],
}

/// What one direction of a step produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectionReport {
    /// Victim class (its samples were stamped); `None` for a universal
    /// trigger, whose victims are all other classes.
    pub victim: Option<usize>,
    /// Target class (the trigger flips victims to it).
    pub target: usize,
    /// Trigger size (`C * sum(mask)`; 0 when the inversion failed).
    pub size: f64,
    /// Whether the ASR bound was reached.
    pub reached: bool,
    /// The stamping bound it was compared with.
    pub bound: f64,
    /// Samples stamped with it.
    pub stamped: usize,
}

/// The outcome of one [`Session::harden_batch`] call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// 0-based index of this step.
    pub step: u64,
    /// The phase the step ran in.
    pub phase: Phase,
    /// Per generated trigger.
    pub directions: Vec<DirectionReport>,
    /// Inversion steps (passes over the inversion set) used.
    pub inversion_steps: usize,
    /// Wall time of the call, seconds.
    pub seconds: f64,
}

/// The stamped batch (same device, shape and order as the input; labels are
/// unchanged) and the step's report.
#[derive(Debug)]
pub struct Hardened {
    /// Inputs to train on.
    pub inputs: Tensor,
    /// What happened.
    pub report: StepReport,
}

/// The answer to an accuracy report.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum AccuracyVerdict {
    /// The first report: recorded as the baseline.
    Baseline,
    /// Within the bound: the caller should keep this model as the latest good one.
    WithinBound {
        /// Baseline minus this accuracy.
        drop: f64,
    },
    /// Beyond the bound: the session is done; the caller should return to
    /// the last model that was within the bound.
    Exceeded {
        /// Baseline minus this accuracy.
        drop: f64,
    },
    /// Beyond the bound, and the session recovers (`recover_steps`): it
    /// hands back clean batches until accuracy is back; the caller keeps
    /// training this model and does not record it as a good one.
    Recovering {
        /// Baseline minus this accuracy.
        drop: f64,
    },
}

/// The bookkeeping of one pair of the current period; checkpointed as it
/// is (see `checkpoint.rs` for the checks on loading).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Period {
    /// The pair hardened.
    pair: Pair,
    /// Sizes of each direction (`source -> target`, `target -> source`) so far.
    sizes: [Vec<f64>; 2],
    /// Running initial value of each direction.
    init: [Option<Trigger>; 2],
    /// A direction failed earlier in this period.
    failed: bool,
}

/// Accuracy bookkeeping.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AccuracyState {
    /// The first reported accuracy.
    pub baseline: Option<f64>,
    /// The latest reported accuracy.
    pub last: Option<f64>,
    /// A report is due before the next step.
    pub pending: bool,
}

/// The warm-up's inversion pool, one `[k, C, H, W]` CPU tensor per class.
/// Its tensors are only ever replaced, never written in place, so a clone
/// may share them.
#[derive(Debug)]
struct Pool(Vec<Tensor>);

impl Clone for Pool {
    fn clone(&self) -> Self {
        Pool(self.0.iter().map(Tensor::shallow_clone).collect())
    }
}

/// The complete mutable state of a session.
#[derive(Debug, Clone)]
struct State {
    phase: Phase,
    step: u64,
    orth_steps: u64,
    scheduler: Scheduler,
    cache: TriggerCache,
    universal: BTreeMap<usize, Trigger>,
    bounds: Bounds,
    /// One entry per pair of the current period (a matching of disjoint
    /// pairs, the phase's pair first); empty outside orthogonalisation.
    periods: Vec<Period>,
    pool: Pool,
    rng: ChaCha8Rng,
    accuracy: AccuracyState,
    pairwise_next: usize,
    /// Ranks that took the steps so far (1 for one process).
    world_size: usize,
}

/// A resumable MOTH hardening session. See the module documentation.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    spec: SessionSpec,
    state: State,
    /// Where the checkpoint this session was loaded from was written.
    resumed_from: Option<crate::session::checkpoint::RunEnvironment>,
    /// The caller's CUDA stream for this session's work: a binding to this
    /// process, so never checkpointed.
    stream: Option<CudaStream>,
    /// The trainer's collective in a data-parallel run: a binding to this
    /// process too.
    shared: Option<Agreement>,
}

impl Session {
    /// A new session for a model with `spec`, starting in warm-up.
    pub fn new(config: SessionConfig, spec: SessionSpec) -> Result<Self> {
        config.validate()?;
        spec.validate()?;
        let n = spec.num_classes;
        let [_, h, w] = spec.input_shape;
        let c = spec.input_shape[0];
        let state = State {
            phase: Phase::Warmup { target: 0 },
            step: 0,
            orth_steps: 0,
            scheduler: Scheduler::new(n),
            cache: TriggerCache::new(),
            universal: BTreeMap::new(),
            bounds: Bounds::new(&config.bounds, n, spec.input_shape),
            periods: Vec::new(),
            pool: Pool(
                (0..n)
                    .map(|_| Tensor::zeros([0, c, h, w], (Kind::Float, Device::Cpu)))
                    .collect(),
            ),
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            accuracy: AccuracyState {
                pending: config.accuracy_every > 0,
                ..Default::default()
            },
            pairwise_next: 0,
            world_size: 1,
        };
        Ok(Session {
            config,
            spec,
            state,
            resumed_from: None,
            stream: None,
            shared: None,
        })
    }

    /// For a session loaded from a checkpoint: the environment it was
    /// written in (thread count, libtorch, CPU), so that a caller can match it.
    pub fn resumed_from(&self) -> Option<&crate::session::checkpoint::RunEnvironment> {
        self.resumed_from.as_ref()
    }

    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// The model description the session was made for.
    pub fn spec(&self) -> SessionSpec {
        self.spec
    }

    /// Runs this session's hardening calls on `stream` (made current, with
    /// its device, for each call and restored afterwards), or, with `None`,
    /// on whatever stream is current on the calling thread. The model must
    /// live on the stream's device. Not saved in checkpoints: set it again
    /// after loading one.
    pub fn set_cuda_stream(&mut self, stream: Option<CudaStream>) {
        self.stream = stream;
    }

    /// The stream set with [`Session::set_cuda_stream`].
    pub fn cuda_stream(&self) -> Option<CudaStream> {
        self.stream
    }

    /// Makes this session one rank of a data-parallel run (docs/algorithm.md
    /// section 10): every rank drives its own session, with the same
    /// configuration (or checkpoint), on its own shard of each batch, and the
    /// sessions agree through `hook`, the trainer's collective. `None` makes
    /// it a single process again. Not saved in checkpoints: set it again
    /// after loading one. A session that took steps with N ranks continues
    /// only with N (a checkpoint records N).
    pub fn set_collective(&mut self, hook: Option<Box<dyn Collective>>) -> Result<()> {
        let shared = hook.map(Agreement::new).transpose()?;
        self.check_world(shared.as_ref().map_or(1, Agreement::world_size))?;
        self.shared = shared;
        Ok(())
    }

    /// The number of ranks that took this session's steps (1 for one process).
    pub fn world_size(&self) -> usize {
        self.state.world_size
    }

    /// Collective calls this session made since its hook was set (0 without one).
    pub fn collective_calls(&self) -> u64 {
        self.shared.as_ref().map_or(0, Agreement::calls)
    }

    fn check_world(&self, world: usize) -> Result<()> {
        if self.state.step > 0 && world != self.state.world_size {
            let with = |n: usize| match n {
                1 => "one process".to_string(),
                n => format!("{n} data-parallel ranks"),
            };
            return Err(Error::Collective(format!(
                "this session took {} steps with {}; it cannot continue with {} (the ranks' \
                 shards, warm-up pool and sample counts would no longer match what it learnt)",
                self.state.step,
                with(self.state.world_size),
                with(world)
            )));
        }
        Ok(())
    }

    /// What the next step will do.
    pub fn phase(&self) -> Phase {
        self.state.phase
    }

    /// Steps completed.
    pub fn step(&self) -> u64 {
        self.state.step
    }

    /// The scheduler's matrices.
    pub fn scheduler(&self) -> &Scheduler {
        &self.state.scheduler
    }

    /// The trigger cache.
    pub fn cache(&self) -> &TriggerCache {
        &self.state.cache
    }

    /// The bounds.
    pub fn bounds(&self) -> &Bounds {
        &self.state.bounds
    }

    /// Accuracy bookkeeping (baseline, last, pending).
    pub fn accuracy(&self) -> &AccuracyState {
        &self.state.accuracy
    }

    /// Whether the session waits for a clean-accuracy report before its next step.
    pub fn wants_accuracy(&self) -> bool {
        self.state.accuracy.pending
    }

    /// True once the session finished.
    pub fn is_done(&self) -> bool {
        matches!(self.state.phase, Phase::Done { .. })
    }

    /// Takes the clean accuracy (in `[0,1]`) of the current model, when one
    /// is due. The first report is the baseline.
    pub fn report_accuracy(&mut self, accuracy: f64) -> Result<AccuracyVerdict> {
        if !self.state.accuracy.pending {
            return Err(Error::phase(
                PhaseKind::Other,
                "no accuracy report is due (see wants_accuracy)",
            ));
        }
        if !(accuracy.is_finite() && (0.0..=1.0).contains(&accuracy)) {
            return Err(Error::input_of(
                InputKind::InvalidValue,
                format!("accuracy must be in [0, 1], got {accuracy}"),
            ));
        }
        let acc = &mut self.state.accuracy;
        acc.pending = false;
        acc.last = Some(accuracy);
        let Some(base) = acc.baseline else {
            acc.baseline = Some(accuracy);
            return Ok(AccuracyVerdict::Baseline);
        };
        let drop = base - accuracy;
        Ok(self.state.judge_accuracy(&self.config, drop))
    }

    /// Runs one hardening step on the batch `x` (`[n, C, H, W]` floats in
    /// `[0,1]`) with labels `y` (`[n]` integers): the phase's inversion on
    /// `model` (in eval mode), then stamping. Returns the inputs to train on
    /// (same device, shape and element type as `x`) with the unchanged
    /// labels `y`. On error the session is unchanged.
    pub fn harden_batch(
        &mut self,
        model: &mut dyn Classifier,
        x: &Tensor,
        y: &Tensor,
    ) -> Result<Hardened> {
        if let Phase::Done { reason } = self.state.phase {
            return Err(Error::phase(
                PhaseKind::Done,
                format!("the session is done ({reason}); nothing left to harden"),
            ));
        }
        if self.state.accuracy.pending {
            return Err(Error::phase(
                PhaseKind::AccuracyReportDue,
                "a clean-accuracy report is due (report_accuracy) before the next step",
            ));
        }
        let world = self.shared.as_ref().map_or(1, Agreement::world_size);
        self.check_world(world)?;
        let _scope = self.enter_stream(model.device())?;
        let labels = self.spec.validate_batch(x, y)?;
        let start = Instant::now();
        let mut next = self.state.clone();
        next.world_size = world;
        let device = model.device();
        let xd = x.f_to_device(device)?.f_to_kind(Kind::Float)?;
        let phase = next.phase;
        let mut global_counts = None;
        match self.shared.as_mut() {
            None => next.add_to_pool(&self.config, x, &labels)?,
            Some(s) => {
                next.add_to_pool_shared(&self.config, &self.spec, x, &labels, s)?;
                if !matches!(phase, Phase::Warmup { .. }) {
                    global_counts = Some(data_parallel::global_counts(
                        s,
                        &labels,
                        self.spec.num_classes,
                    )?);
                }
            }
        }
        let mut checked = validate::CheckedModel {
            inner: model,
            num_classes: self.spec.num_classes,
        };
        let mut ctx = StepContext {
            cfg: &self.config,
            spec: self.spec,
            model: &mut checked,
            x: &xd,
            labels: &labels,
            stamped: xd.f_detach()?.copy(),
            reports: Vec::new(),
            inversion_steps: 0,
            shared: self.shared.as_mut(),
            global_counts,
        };
        match phase {
            Phase::Warmup { target } => next.warmup_step(&mut ctx, target)?,
            Phase::Orthogonalize { step_in_period, .. } => {
                next.orthogonalize_step(&mut ctx, step_in_period)?
            }
            Phase::Universal { target } => next.universal_step(&mut ctx, target)?,
            Phase::Recover { .. } => {} // the clean batch is the step
            Phase::Done { .. } => unreachable!("checked above"),
        }
        let StepContext {
            stamped,
            reports,
            inversion_steps,
            ..
        } = ctx;
        let report = StepReport {
            step: next.step,
            phase,
            directions: reports,
            inversion_steps,
            seconds: 0.0,
        };
        next.finish_step(&self.config);
        next.check_invariants(&self.config, &self.spec)
            .map_err(|e| {
                Error::Model(format!(
                    "the step would leave the session in a state that no checkpoint may hold \
                 ({}); the session is unchanged",
                    checkpoint_detail(e)
                ))
            })?;
        if let Some(s) = self.shared.as_mut() {
            next.check_agreement(s, &report.directions)?;
        }
        // The caller gets its own element type back (a float64 or half batch
        // is worked on as float32).
        let inputs = stamped.f_to_device(x.device())?.f_to_kind(x.kind())?;
        self.state = next;
        Ok(Hardened {
            inputs,
            report: StepReport {
                seconds: start.elapsed().as_secs_f64(),
                ..report
            },
        })
    }

    /// Makes the session's stream current for one call, after checking that
    /// the model lives on its device (otherwise the stream would not apply).
    fn enter_stream(&self, model_device: Device) -> Result<Option<StreamScope>> {
        let Some(stream) = self.stream else {
            return Ok(None);
        };
        if model_device != stream.tensor_device() {
            return Err(Error::Device(format!(
                "the session runs on {stream:?}, but the model is on {model_device:?}; \
                 move the model to {:?} or clear the session's stream",
                stream.tensor_device()
            )));
        }
        stream.enter().map(Some)
    }
}

/// The reason of a failed invariant check, without the "checkpoint
/// rejected" prefix (no checkpoint is involved in a step).
fn checkpoint_detail(e: Error) -> String {
    match e {
        Error::Checkpoint(m) => m,
        other => other.to_string(),
    }
}
