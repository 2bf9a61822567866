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

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::bounds::{Bounds, BoundsConfig};
use crate::cache::TriggerCache;
use crate::config::{InversionBudget, InversionConfig};
use crate::error::InputKind;
use crate::inversion::DirectionOutcome;
use crate::model::Classifier;
use crate::scheduler::{Pair, Scheduler, SchedulerConfig};
use crate::stream::{CudaStream, StreamScope};
use crate::trigger::Trigger;
use crate::two_sided::{self, Side};
use crate::warmup::{self, WarmupConfig};
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
}

impl Default for SessionConfig {
    fn default() -> Self {
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
            scheduler: SchedulerConfig::default(),
            bounds: BoundsConfig::default(),
            max_steps: 0,
            accuracy_every: 10,
            max_accuracy_drop: 0.01,
        }
    }
}

impl SessionConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        self.inversion.validate()?;
        self.warmup.validate()?;
        crate::config::validate_budget("first", &self.first)?;
        crate::config::validate_budget("later", &self.later)?;
        if self.period == 0 {
            return Err(Error::Config("period must be at least 1".into()));
        }
        crate::config::unit_interval("portion", self.portion)?;
        self.scheduler.validate()?;
        self.bounds.validate()?;
        crate::config::unit_interval("max_accuracy_drop", self.max_accuracy_drop)
    }
}

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

/// Why a session finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DoneReason {
    /// The configured number of steps was reached.
    StepBudget,
    /// Clean accuracy fell more than the bound below the baseline.
    AccuracyBound,
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
}

/// The bookkeeping of the current period.
#[derive(Debug, Clone, Default)]
pub(crate) struct Period {
    /// Sizes of each direction (`source -> target`, `target -> source`) so far.
    pub sizes: [Vec<f64>; 2],
    /// Running initial value of each direction.
    pub init: [Option<Trigger>; 2],
    /// A direction failed earlier in this period.
    pub failed: bool,
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
pub(crate) struct Pool(pub Vec<Tensor>);

impl Clone for Pool {
    fn clone(&self) -> Self {
        Pool(self.0.iter().map(Tensor::shallow_clone).collect())
    }
}

/// The complete mutable state of a session.
#[derive(Debug, Clone)]
pub(crate) struct State {
    pub phase: Phase,
    pub step: u64,
    pub orth_steps: u64,
    pub scheduler: Scheduler,
    pub cache: TriggerCache,
    pub universal: BTreeMap<usize, Trigger>,
    pub bounds: Bounds,
    pub period: Period,
    pub pool: Pool,
    pub rng: ChaCha8Rng,
    pub accuracy: AccuracyState,
    pub pairwise_next: usize,
}

/// A resumable MOTH hardening session. See the module documentation.
#[derive(Debug)]
pub struct Session {
    pub(crate) config: SessionConfig,
    pub(crate) spec: SessionSpec,
    pub(crate) state: State,
    /// Where the checkpoint this session was loaded from was written.
    pub(crate) resumed_from: Option<crate::session_checkpoint::RunEnvironment>,
    /// The caller's CUDA stream for this session's work: a binding to this
    /// process, so never checkpointed.
    pub(crate) stream: Option<CudaStream>,
}

impl Session {
    /// A new session for a model with `spec`, starting in warm-up.
    pub fn new(config: SessionConfig, spec: SessionSpec) -> Result<Self> {
        config.validate()?;
        if spec.num_classes < 2 || spec.num_classes > MAX_CLASSES {
            return Err(Error::Config(format!(
                "need between 2 and {MAX_CLASSES} classes, got {}",
                spec.num_classes
            )));
        }
        if spec.input_shape.iter().any(|&d| d <= 0) {
            return Err(Error::Config(format!(
                "input shape {:?} must be positive",
                spec.input_shape
            )));
        }
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
            period: Period::default(),
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
        };
        Ok(Session {
            config,
            spec,
            state,
            resumed_from: None,
            stream: None,
        })
    }

    /// For a session loaded from a checkpoint: the environment it was
    /// written in (thread count, libtorch, CPU), so that a caller can match it.
    pub fn resumed_from(&self) -> Option<&crate::session_checkpoint::RunEnvironment> {
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
            return Err(Error::Phase(
                "no accuracy report is due (see wants_accuracy)".into(),
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
        if drop > self.config.max_accuracy_drop {
            self.state.phase = Phase::Done {
                reason: DoneReason::AccuracyBound,
            };
            Ok(AccuracyVerdict::Exceeded { drop })
        } else {
            Ok(AccuracyVerdict::WithinBound { drop })
        }
    }

    /// Runs one hardening step on the batch `x` (`[n, C, H, W]` floats in
    /// `[0,1]`) with labels `y` (`[n]` integers): the phase's inversion on
    /// `model` (in eval mode), then stamping. Returns the inputs to train on
    /// with the unchanged labels `y`. On error the session is unchanged.
    pub fn harden_batch(
        &mut self,
        model: &mut dyn Classifier,
        x: &Tensor,
        y: &Tensor,
    ) -> Result<Hardened> {
        if let Phase::Done { reason } = self.state.phase {
            return Err(Error::Phase(format!(
                "the session is done ({reason:?}); nothing left to harden"
            )));
        }
        if self.state.accuracy.pending {
            return Err(Error::Phase(
                "the session is waiting for a clean-accuracy report (report_accuracy) before the next step".into(),
            ));
        }
        let _scope = self.enter_stream(model.device())?;
        let labels = self.validate_batch(x, y)?;
        let start = Instant::now();
        let mut next = self.state.clone();
        let device = model.device();
        let xd = x.f_to_device(device)?.f_to_kind(Kind::Float)?;
        next.add_to_pool(&self.config, x, &labels)?;
        let phase = next.phase;
        let mut ctx = StepContext {
            cfg: &self.config,
            spec: self.spec,
            model,
            x: &xd,
            labels: &labels,
            stamped: xd.f_detach()?.copy(),
            reports: Vec::new(),
            inversion_steps: 0,
        };
        match phase {
            Phase::Warmup { target } => next.warmup_step(&mut ctx, target)?,
            Phase::Orthogonalize {
                pair,
                step_in_period,
            } => next.orthogonalize_step(&mut ctx, pair, step_in_period)?,
            Phase::Universal { target } => next.universal_step(&mut ctx, target)?,
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
        let inputs = stamped.f_to_device(x.device())?;
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

    /// Checks a batch against the session's spec with a single host read;
    /// returns the labels.
    fn validate_batch(&self, x: &Tensor, y: &Tensor) -> Result<Vec<i64>> {
        let [c, h, w] = self.spec.input_shape;
        let xs = x.size();
        if xs.len() != 4 || xs[1..] != [c, h, w] {
            return Err(Error::input_of(
                InputKind::WrongShape,
                format!("batch must be [n, {c}, {h}, {w}], got {xs:?}"),
            ));
        }
        if xs[0] == 0 {
            return Err(Error::input_of(InputKind::WrongShape, "batch is empty"));
        }
        if !x.is_floating_point() {
            return Err(Error::input_of(
                InputKind::WrongDtype,
                format!("batch must hold floating-point pixels, got {:?}", x.kind()),
            ));
        }
        if y.size() != [xs[0]] {
            return Err(Error::input_of(
                InputKind::WrongShape,
                format!("labels must be [{}], got {:?}", xs[0], y.size()),
            ));
        }
        if !matches!(
            y.kind(),
            Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8
        ) {
            return Err(Error::input_of(
                InputKind::WrongDtype,
                format!("labels must be integers, got {:?}", y.kind()),
            ));
        }
        let finite = x.f_isfinite()?.f_all()?.f_to_kind(Kind::Double)?;
        let stats = Tensor::f_stack(
            &[
                finite.f_to_device(Device::Cpu)?,
                x.f_min()?
                    .f_to_kind(Kind::Double)?
                    .f_to_device(Device::Cpu)?,
                x.f_max()?
                    .f_to_kind(Kind::Double)?
                    .f_to_device(Device::Cpu)?,
            ],
            0,
        )?;
        let stats = Vec::<f64>::try_from(&stats)?;
        if stats[0] != 1.0 {
            return Err(Error::input_of(
                InputKind::InvalidValue,
                "batch holds NaN or infinite values",
            ));
        }
        if stats[1] < 0.0 || stats[2] > 1.0 {
            return Err(Error::input_of(
                InputKind::InvalidValue,
                format!(
                    "pixels must be in [0, 1] (normalise inside the model), found [{}, {}]",
                    stats[1], stats[2]
                ),
            ));
        }
        let labels = Vec::<i64>::try_from(&y.f_to_kind(Kind::Int64)?.f_to_device(Device::Cpu)?)?;
        let n = self.spec.num_classes as i64;
        if let Some(bad) = labels.iter().find(|&&l| l < 0 || l >= n) {
            return Err(Error::input_of(
                InputKind::LabelOutOfRange,
                format!("label {bad} out of range for {n} classes"),
            ));
        }
        Ok(labels)
    }
}

/// What one step works on and produces.
struct StepContext<'a> {
    cfg: &'a SessionConfig,
    spec: SessionSpec,
    model: &'a mut dyn Classifier,
    x: &'a Tensor,
    labels: &'a [i64],
    stamped: Tensor,
    reports: Vec<DirectionReport>,
    inversion_steps: usize,
}

impl StepContext<'_> {
    fn positions(&self, class: usize) -> Vec<i64> {
        (0..self.labels.len() as i64)
            .filter(|&i| self.labels[i as usize] == class as i64)
            .collect()
    }

    fn samples(&self, positions: &[i64]) -> Result<Tensor> {
        let idx = Tensor::f_from_slice(positions)?.f_to_device(self.x.device())?;
        Ok(self.x.f_index_select(0, &idx)?)
    }

    /// Stamps `trigger` on the samples at `positions` of the output batch.
    fn stamp(&mut self, trigger: &Trigger, positions: &[i64]) -> Result<()> {
        if positions.is_empty() {
            return Ok(());
        }
        let idx = Tensor::f_from_slice(positions)?.f_to_device(self.x.device())?;
        let t = trigger.to_device(self.x.device())?;
        let stamped = t.stamp(&self.x.f_index_select(0, &idx)?)?;
        let _ = self.stamped.f_index_copy_(0, &idx, &stamped)?;
        Ok(())
    }
}

fn pick<R: Rng>(rng: &mut R, from: &[i64], count: usize) -> Vec<i64> {
    let mut v = from.to_vec();
    v.shuffle(rng);
    v.truncate(count);
    v.sort_unstable();
    v
}

fn cpu_trigger(t: &Trigger) -> Result<Trigger> {
    t.to_device(Device::Cpu)
}

impl State {
    /// Keeps up to `pool_per_class` samples of every class from the first
    /// batches: the warm-up's fixed inversion pool.
    fn add_to_pool(&mut self, cfg: &SessionConfig, x: &Tensor, labels: &[i64]) -> Result<()> {
        let want = cfg.warmup.pool_per_class as i64;
        for (class, pool) in self.pool.0.iter_mut().enumerate() {
            let have = pool.size()[0];
            if have >= want {
                continue;
            }
            let idx: Vec<i64> = (0..labels.len() as i64)
                .filter(|&i| labels[i as usize] == class as i64)
                .take((want - have) as usize)
                .collect();
            if !idx.is_empty() {
                let add = x
                    .f_index_select(0, &Tensor::f_from_slice(&idx)?.f_to_device(x.device())?)?
                    .f_to_device(Device::Cpu)?
                    .f_to_kind(Kind::Float)?;
                *pool = Tensor::f_cat(&[&*pool, &add], 0)?;
            }
        }
        Ok(())
    }

    fn warmup_step(&mut self, ctx: &mut StepContext, target: usize) -> Result<()> {
        let device = ctx.model.device();
        let pool = self
            .pool
            .0
            .iter()
            .map(|p| p.f_to_device(device))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let init = self.universal.get(&target).cloned();
        let seed = self.rng.random();
        let u = warmup::universal_trigger(
            ctx.model,
            &pool,
            target,
            init,
            &ctx.cfg.warmup,
            &ctx.cfg.inversion,
            seed,
        )?;
        ctx.inversion_steps += ctx.cfg.warmup.budget.steps;
        let trigger = cpu_trigger(&u.outcome.trigger)?;
        let size = u.outcome.size;
        let stamped =
            self.stamp_universal(ctx, target, &trigger, size, ctx.cfg.warmup.stamp_ratio)?;
        for i in (0..ctx.spec.num_classes).filter(|&i| i != target) {
            self.scheduler.record_warmup(i, target, u.prior[i], size);
            self.bounds.seed(&ctx.cfg.bounds, i, target, size);
            if u.outcome.reached {
                self.cache.put(i, target, trigger.clone(), size);
            }
        }
        if u.outcome.reached {
            self.universal.insert(target, trigger);
        }
        ctx.reports.push(DirectionReport {
            victim: None,
            target,
            size,
            reached: u.outcome.reached,
            bound: self.bounds.cap,
            stamped,
        });
        Ok(())
    }

    /// Stamps a universal trigger on a random `ratio` of the batch samples
    /// not of `target` (when under the cap). Returns how many were stamped.
    fn stamp_universal(
        &mut self,
        ctx: &mut StepContext,
        target: usize,
        trigger: &Trigger,
        size: f64,
        ratio: f64,
    ) -> Result<usize> {
        if !(size > 0.0 && size < self.bounds.cap) {
            return Ok(0);
        }
        let others: Vec<i64> = (0..ctx.labels.len() as i64)
            .filter(|&i| ctx.labels[i as usize] != target as i64)
            .collect();
        let chosen = pick(
            &mut self.rng,
            &others,
            (others.len() as f64 * ratio).floor() as usize,
        );
        ctx.stamp(trigger, &chosen)?;
        Ok(chosen.len())
    }

    fn universal_step(&mut self, ctx: &mut StepContext, target: usize) -> Result<()> {
        let device = ctx.model.device();
        let per_class = (0..ctx.spec.num_classes)
            .map(|c| {
                let pos = ctx.positions(c);
                if pos.is_empty() {
                    Ok(Tensor::f_zeros(
                        [
                            0,
                            ctx.spec.input_shape[0],
                            ctx.spec.input_shape[1],
                            ctx.spec.input_shape[2],
                        ],
                        (Kind::Float, device),
                    )?)
                } else {
                    ctx.samples(&pos)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let others_present = per_class
            .iter()
            .enumerate()
            .any(|(c, t)| c != target && t.size()[0] > 0);
        if !others_present {
            return Ok(()); // the batch holds only the target class: train on it clean
        }
        let init = self.universal.get(&target).cloned();
        let budget = if init.is_some() {
            ctx.cfg.later
        } else {
            ctx.cfg.first
        };
        let wcfg = WarmupConfig {
            budget,
            ..ctx.cfg.warmup.clone()
        };
        let seed = self.rng.random();
        let u = warmup::universal_trigger(
            ctx.model,
            &per_class,
            target,
            init,
            &wcfg,
            &ctx.cfg.inversion,
            seed,
        )?;
        ctx.inversion_steps += budget.steps;
        let trigger = cpu_trigger(&u.outcome.trigger)?;
        let stamped = self.stamp_universal(
            ctx,
            target,
            &trigger,
            u.outcome.size,
            ctx.cfg.warmup.stamp_ratio,
        )?;
        if u.outcome.reached {
            self.universal.insert(target, trigger);
        }
        ctx.reports.push(DirectionReport {
            victim: None,
            target,
            size: u.outcome.size,
            reached: u.outcome.reached,
            bound: self.bounds.cap,
            stamped,
        });
        Ok(())
    }

    fn orthogonalize_step(
        &mut self,
        ctx: &mut StepContext,
        pair: Pair,
        step_in_period: usize,
    ) -> Result<()> {
        let cfg = ctx.cfg;
        let (s, t) = (pair.source, pair.target);
        let pos = [ctx.positions(s), ctx.positions(t)];
        let n = (pos[0].len().min(pos[1].len()) as f64 * cfg.portion).floor() as usize;
        if n == 0 {
            return Ok(()); // too few samples of the pair: train on the clean batch
        }
        let restart = step_in_period == 0 || self.period.failed || cfg.method == Method::Pairwise;
        let budget = if restart { cfg.first } else { cfg.later };
        if self.period.failed {
            self.period.failed = false;
        }
        // Which directions this step generates: 0 = s -> t, 1 = t -> s.
        let dirs: Vec<usize> = match cfg.method {
            Method::Asymmetric => vec![self.rng.random_range(0..2)],
            _ => vec![0, 1],
        };
        let samples = [ctx.samples(&pos[0])?, ctx.samples(&pos[1])?];
        let ends = [(s, t), (t, s)];
        let sides = dirs
            .iter()
            .map(|&d| Side {
                samples: &samples[d],
                victim: ends[d].0,
                target: ends[d].1,
                init: self.period.init[d].clone(),
            })
            .collect();
        let seed = self.rng.random();
        let outcomes = two_sided::generate(ctx.model, sides, budget, &cfg.inversion, seed)?;
        ctx.inversion_steps += budget.steps;
        for (&d, o) in dirs.iter().zip(&outcomes) {
            self.apply_direction(ctx, d, ends[d], &pos[d], n, o)?;
        }
        Ok(())
    }

    /// Stamps, caches and records one generated direction.
    fn apply_direction(
        &mut self,
        ctx: &mut StepContext,
        d: usize,
        (victim, target): (usize, usize),
        positions: &[i64],
        n: usize,
        o: &DirectionOutcome,
    ) -> Result<()> {
        let cfg = ctx.cfg;
        let bound = self.bounds.limit(&cfg.bounds, victim, target);
        let mut stamped = 0;
        if o.reached {
            let trigger = cpu_trigger(&o.trigger)?;
            if self.bounds.allows(&cfg.bounds, victim, target, o.size) {
                let chosen = pick(&mut self.rng, positions, n);
                ctx.stamp(&trigger, &chosen)?;
                stamped = chosen.len();
            }
            if cfg.method != Method::Pairwise {
                self.cache.offer(victim, target, &trigger, o.size);
                self.period.init[d] = Some(trigger);
            }
        } else {
            self.period.failed = true;
        }
        self.period.sizes[d].push(o.size);
        ctx.reports.push(DirectionReport {
            victim: Some(victim),
            target,
            size: o.size,
            reached: o.reached,
            bound,
            stamped,
        });
        Ok(())
    }

    /// Advances counters and the phase after a successful step.
    fn finish_step(&mut self, cfg: &SessionConfig) {
        let n = self.scheduler.classes();
        self.step += 1;
        self.phase = match self.phase {
            Phase::Warmup { target } if target + 1 < n => Phase::Warmup { target: target + 1 },
            Phase::Warmup { .. } => {
                self.scheduler.finish_warmup();
                self.start_hardening(cfg)
            }
            Phase::Orthogonalize {
                pair,
                step_in_period,
            } => {
                self.orth_steps += 1;
                if step_in_period + 1 < cfg.period && cfg.method != Method::Pairwise {
                    Phase::Orthogonalize {
                        pair,
                        step_in_period: step_in_period + 1,
                    }
                } else {
                    self.end_period(cfg, pair);
                    self.start_hardening(cfg)
                }
            }
            Phase::Universal { target } => {
                self.orth_steps += 1;
                Phase::Universal {
                    target: (target + 1) % n,
                }
            }
            done @ Phase::Done { .. } => done,
        };
        let budget_spent = cfg.max_steps > 0 && self.step >= cfg.max_steps;
        if budget_spent {
            self.phase = Phase::Done {
                reason: DoneReason::StepBudget,
            };
        }
        // The final model is checked too, so that the result is always a
        // model known to be within the accuracy bound.
        if cfg.accuracy_every > 0 && (self.step % cfg.accuracy_every == 0 || budget_spent) {
            self.accuracy.pending = true;
        }
        // Reseed libtorch from the session's RNG so that whatever the trainer
        // draws next (dropout) is reproducible from the session state alone.
        tch::manual_seed(self.rng.random::<i64>());
    }

    /// The first phase of a new period (or of the universal baseline).
    fn start_hardening(&mut self, cfg: &SessionConfig) -> Phase {
        if cfg.method == Method::Universal {
            return Phase::Universal { target: 0 };
        }
        let pair = match cfg.method {
            Method::Pairwise => self.next_pairwise(),
            _ => self
                .scheduler
                .choose(&cfg.scheduler, self.orth_steps, &mut self.rng),
        };
        self.period = Period::default();
        if cfg.method != Method::Pairwise {
            self.period.init = [
                self.cache.get(pair.source, pair.target).cloned(),
                self.cache.get(pair.target, pair.source).cloned(),
            ];
        }
        Phase::Orthogonalize {
            pair,
            step_in_period: 0,
        }
    }

    /// Pairwise baseline: the unordered pairs in a fixed cycle.
    fn next_pairwise(&mut self) -> Pair {
        let n = self.scheduler.classes();
        let pairs: Vec<Pair> = (0..n)
            .flat_map(|a| {
                (a + 1..n).map(move |b| Pair {
                    source: a,
                    target: b,
                })
            })
            .collect();
        let p = pairs[self.pairwise_next % pairs.len()];
        self.pairwise_next = (self.pairwise_next + 1) % pairs.len();
        self.scheduler.count[p.source][p.target] += 1.0;
        self.scheduler.count[p.target][p.source] += 1.0;
        p
    }

    fn end_period(&mut self, cfg: &SessionConfig, pair: Pair) {
        let avg = |v: &[f64]| {
            let ok: Vec<f64> = v.iter().copied().filter(|&s| s > 0.0).collect();
            if ok.is_empty() {
                0.0
            } else {
                ok.iter().sum::<f64>() / ok.len() as f64
            }
        };
        let (st, ts) = (avg(&self.period.sizes[0]), avg(&self.period.sizes[1]));
        self.scheduler.end_period(pair, st, ts);
        self.bounds.grow(&cfg.bounds, pair.source, pair.target, st);
        self.bounds.grow(&cfg.bounds, pair.target, pair.source, ts);
    }
}
