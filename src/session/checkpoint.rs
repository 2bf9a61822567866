//! Checkpoint and resume of a hardening session: the complete state
//! (configuration, phase, counters, scheduler matrices, trigger cache,
//! bounds, period bookkeeping, warm-up pool, RNG state) as a checkpoint file
//! of kind [`PayloadKind::Session`]. Loading validates everything before a
//! session is built, so a bad file never yields a half-restored session.

use std::collections::BTreeMap;
use std::path::Path;

use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::algo::bounds::Bounds;
use crate::algo::cache::TriggerCache;
use crate::algo::scheduler::{Pair, Scheduler};
use crate::algo::trigger::Trigger;
use crate::io::container::{self, PayloadKind};
use crate::io::tensor_codec::SavedTensor;
use crate::session::{
    AccuracyState, Period, Phase, Pool, Session, SessionConfig, SessionSpec, State,
};
use crate::{Error, Result};

/// Where a session ran: CPU results are bit-identical only with the same
/// libtorch build, thread count and instruction set, so a checkpoint
/// records them and a resume warns when they differ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunEnvironment {
    /// moth version that wrote the checkpoint.
    pub moth_version: String,
    /// libtorch version moth was built against.
    pub libtorch: String,
    /// libtorch intra-op thread count.
    pub threads: i32,
    /// Widest x86 vector extension of the CPU (or the ATEN_CPU_CAPABILITY override).
    pub cpu_capability: String,
}

impl RunEnvironment {
    /// The environment of this process.
    pub fn current() -> Self {
        RunEnvironment {
            moth_version: container::MOTH_VERSION.to_string(),
            libtorch: LIBTORCH_VERSION.to_string(),
            threads: tch::get_num_threads(),
            cpu_capability: cpu_capability(),
        }
    }

    /// Human-readable differences from `other` (empty when identical).
    pub fn differences(&self, other: &RunEnvironment) -> Vec<String> {
        let mut d = Vec::new();
        if self.libtorch != other.libtorch {
            d.push(format!("libtorch {} vs {}", self.libtorch, other.libtorch));
        }
        if self.threads != other.threads {
            d.push(format!(
                "{} vs {} libtorch threads",
                self.threads, other.threads
            ));
        }
        if self.cpu_capability != other.cpu_capability {
            d.push(format!(
                "CPU capability {} vs {}",
                self.cpu_capability, other.cpu_capability
            ));
        }
        d
    }
}

/// The libtorch version tch 0.24 is built for.
pub const LIBTORCH_VERSION: &str = "2.11.0";

fn cpu_capability() -> String {
    if let Ok(v) = std::env::var("ATEN_CPU_CAPABILITY") {
        return v;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "avx512".into();
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return "avx2".into();
        }
    }
    "default".into()
}

/// A decoded trigger, checked against the session's input shape and
/// [`Trigger::new`]'s rules.
fn checked_trigger(t: Trigger, spec: &SessionSpec) -> Result<Trigger> {
    let [c, h, w] = spec.input_shape;
    if t.mask.size() != [1, h, w] || t.pattern.size() != [c, h, w] {
        return Err(Error::Checkpoint(format!(
            "cached trigger has shapes {:?}/{:?}, the session's inputs are {:?}",
            t.mask.size(),
            t.pattern.size(),
            spec.input_shape
        )));
    }
    Trigger::new(t.mask, t.pattern).map_err(|e| Error::Checkpoint(format!("cached trigger: {e}")))
}

/// A trigger the session holds, checked like a decoded one.
fn check_trigger(t: &Trigger, spec: &SessionSpec) -> Result<()> {
    let view = Trigger {
        mask: t.mask.shallow_clone(),
        pattern: t.pattern.shallow_clone(),
    };
    checked_trigger(view, spec).map(drop)
}

/// A period's pair names two classes of the session; its sizes are finite.
fn check_period_values(p: &Period, spec: &SessionSpec) -> Result<()> {
    let n = spec.num_classes;
    let Pair { source, target } = p.pair;
    if source >= n || target >= n || source == target {
        return Err(bad(format!(
            "period pair {source}<->{target} is not two classes of {n}"
        )));
    }
    if p.sizes.iter().flatten().any(|v| !v.is_finite()) {
        return Err(bad("period sizes hold a non-finite value"));
    }
    Ok(())
}

/// A decoded period pair, checked: two classes of the session, finite
/// sizes, valid triggers.
fn checked_period(p: Period, spec: &SessionSpec) -> Result<Period> {
    check_period_values(&p, spec)?;
    let [a, b] = p.init;
    let check = |t: Option<Trigger>| t.map(|t| checked_trigger(t, spec)).transpose();
    Ok(Period {
        init: [check(a)?, check(b)?],
        ..p
    })
}

/// The serialised form of a session; `C` is the configuration's form
/// (older formats stored fewer fields).
#[derive(Serialize, Deserialize)]
struct SavedSession<C = SessionConfig> {
    environment: RunEnvironment,
    config: C,
    spec: SessionSpec,
    phase: Phase,
    step: u64,
    orth_steps: u64,
    scheduler: Scheduler,
    cache: Vec<(usize, usize, f64, Trigger)>,
    universal: Vec<(usize, Trigger)>,
    bounds: Bounds,
    periods: Vec<Period>,
    pool: Vec<SavedTensor>,
    rng: ChaCha8Rng,
    accuracy: AccuracyState,
    pairwise_next: usize,
}

/// What a checkpoint of a data-parallel session adds after the session: the
/// number of ranks that took its steps. A single process writes no such
/// part, so its checkpoints are those of moth before data parallelism, and
/// a moth of that time refuses a data-parallel one (its payload would not
/// be consumed) rather than resuming it as one process. The rank is not
/// recorded: the ranks' sessions agree, so every rank writes the same
/// bytes and any rank's file resumes any rank.
#[derive(Serialize, Deserialize)]
struct DataParallel {
    world_size: u64,
}

impl Session {
    /// Serialises the whole session state into checkpoint bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let s = &self.state;
        let saved = SavedSession {
            environment: RunEnvironment::current(),
            config: self.config.clone(),
            spec: self.spec,
            phase: s.phase,
            step: s.step,
            orth_steps: s.orth_steps,
            scheduler: s.scheduler.clone(),
            cache: s
                .cache
                .iter()
                .map(|(&(v, t), (size, trig))| (v, t, *size, trig.clone()))
                .collect(),
            universal: s
                .universal
                .iter()
                .map(|(&t, trig)| (t, trig.clone()))
                .collect(),
            bounds: s.bounds.clone(),
            periods: s.periods.clone(),
            pool: s
                .pool
                .0
                .iter()
                .map(SavedTensor::from_tensor)
                .collect::<Result<_>>()?,
            rng: s.rng.clone(),
            accuracy: s.accuracy.clone(),
            pairwise_next: s.pairwise_next,
        };
        if s.world_size == 1 {
            return container::encode(PayloadKind::Session, &saved);
        }
        let dp = DataParallel {
            world_size: s.world_size as u64,
        };
        container::encode(PayloadKind::Session, &(saved, dp))
    }

    /// Rebuilds a session from checkpoint bytes. With `expected`, refuses a
    /// checkpoint made for another class count or input shape.
    pub fn from_bytes(bytes: &[u8], expected: Option<SessionSpec>) -> Result<Session> {
        if container::parse_header(bytes)?.format_version <= container::NO_RECOVERY_VERSION {
            // Formats 2 and 3 predate recovery and data parallelism.
            let old: SavedSession<ConfigV3> = container::decode(PayloadKind::Session, bytes)?;
            return restore(old.upgrade(), expected);
        }
        let (saved, world_size) =
            match container::decode::<SavedSession>(PayloadKind::Session, bytes) {
                Ok(saved) => (saved, 1),
                Err(single) => {
                    // Only a payload with the data-parallel part decodes both
                    // ways short of the end; report the plain failure otherwise.
                    let (saved, dp) = container::decode::<(SavedSession, DataParallel)>(
                        PayloadKind::Session,
                        bytes,
                    )
                    .map_err(|_| single)?;
                    if !(2..=4096).contains(&dp.world_size) {
                        return Err(bad(format!(
                            "the checkpoint records {} data-parallel ranks",
                            dp.world_size
                        )));
                    }
                    (saved, dp.world_size as usize)
                }
            };
        let mut session = restore(saved, expected)?;
        session.state.world_size = world_size;
        Ok(session)
    }

    /// Saves the session atomically to `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        container::write_atomic(path, &self.to_bytes()?)
    }

    /// Loads a session saved with [`Session::save`].
    pub fn load(path: &Path, expected: Option<SessionSpec>) -> Result<Session> {
        let bytes = container::read_checkpoint(path)?;
        Self::from_bytes(&bytes, expected).map_err(|e| match e {
            Error::Checkpoint(m) => Error::Checkpoint(format!("{}: {m}", path.display())),
            other => other,
        })
    }
}

fn bad(msg: impl Into<String>) -> Error {
    Error::Checkpoint(msg.into())
}

fn check_spec(saved: &SessionSpec, expected: Option<SessionSpec>) -> Result<()> {
    saved
        .validate()
        .map_err(|e| bad(format!("invalid model description: {e}")))?;
    if let Some(e) = expected {
        if e.num_classes != saved.num_classes {
            return Err(bad(format!(
                "checkpoint is for {} classes, the model has {}",
                saved.num_classes, e.num_classes
            )));
        }
        if e.input_shape != saved.input_shape {
            return Err(bad(format!(
                "checkpoint is for inputs {:?}, the model takes {:?}",
                saved.input_shape, e.input_shape
            )));
        }
    }
    Ok(())
}

fn check_phase(phase: &Phase, n: usize) -> Result<()> {
    let ok = match *phase {
        Phase::Warmup { target } | Phase::Universal { target } => target < n,
        Phase::Orthogonalize { pair, .. } => {
            pair.source < n && pair.target < n && pair.source != pair.target
        }
        Phase::Done { .. } | Phase::Recover { .. } => true,
    };
    if ok {
        Ok(())
    } else {
        Err(bad(format!("phase {phase} names a class outside 0..{n}")))
    }
}

/// The decoded period pairs, each checked, and checked as a set.
fn restore_periods(saved: &mut SavedSession, spec: &SessionSpec) -> Result<Vec<Period>> {
    let periods = std::mem::take(&mut saved.periods)
        .into_iter()
        .map(|p| checked_period(p, spec))
        .collect::<Result<Vec<_>>>()?;
    check_period_set(&periods, saved.phase, &saved.config)?;
    Ok(periods)
}

/// The period's pairs: disjoint, no more than configured, the phase's pair
/// first (and none outside orthogonalisation).
fn check_period_set(periods: &[Period], phase: Phase, config: &SessionConfig) -> Result<()> {
    if periods.len() > config.pairs_per_step {
        return Err(bad(format!(
            "{} pairs in the period, the configuration allows {}",
            periods.len(),
            config.pairs_per_step
        )));
    }
    for (i, a) in periods.iter().enumerate() {
        if periods[..i].iter().any(|b| a.pair.overlaps(b.pair)) {
            return Err(bad("the period's pairs share a class"));
        }
    }
    let lead = periods.first().map(|p| p.pair);
    match phase {
        Phase::Orthogonalize { pair, .. } if lead != Some(pair) => {
            Err(bad("the period does not start with the phase's pair"))
        }
        // A session that finished keeps the pairs of its last period.
        Phase::Orthogonalize { .. } | Phase::Done { .. } => Ok(()),
        _ if periods.is_empty() => Ok(()),
        _ => Err(bad("period pairs outside orthogonalisation")),
    }
}

fn check_bounds(bounds: &Bounds, n: usize) -> Result<()> {
    if bounds.per_pair.len() != n || bounds.per_pair.iter().any(|r| r.len() != n) {
        return Err(bad(format!("bounds are not {n}x{n}")));
    }
    let mut values = bounds.per_pair.iter().flatten().chain([&bounds.cap]);
    if values.any(|b| !b.is_finite()) {
        return Err(bad("bounds hold a non-finite value"));
    }
    Ok(())
}

fn check_cache_entry(v: usize, t: usize, size: f64, n: usize) -> Result<()> {
    if v >= n || t >= n || v == t || !size.is_finite() || size < 0.0 {
        return Err(bad(format!(
            "cache entry ({v} -> {t}, size {size}) is invalid"
        )));
    }
    Ok(())
}

fn check_universal_class(t: usize, n: usize) -> Result<()> {
    if t >= n {
        return Err(bad(format!("universal trigger for class {t} of {n}")));
    }
    Ok(())
}

fn check_pool(pool: &[Tensor], spec: &SessionSpec) -> Result<()> {
    let n = spec.num_classes;
    if pool.len() != n {
        return Err(bad(format!(
            "warm-up pool has {} classes, expected {n}",
            pool.len()
        )));
    }
    let [c, h, w] = spec.input_shape;
    for t in pool {
        let s = t.size();
        if s.len() != 4 || s[1..] != [c, h, w] || t.kind() != tch::Kind::Float {
            return Err(bad(format!(
                "warm-up pool tensor {s:?} does not hold [k, {c}, {h}, {w}] floats"
            )));
        }
    }
    Ok(())
}

fn check_accuracy(acc: &AccuracyState) -> Result<()> {
    if [acc.baseline, acc.last]
        .iter()
        .flatten()
        .any(|a| !(0.0..=1.0).contains(a))
    {
        return Err(bad("stored accuracies are outside [0, 1]"));
    }
    Ok(())
}

impl State {
    /// Checks what loading a checkpoint checks, on a state in memory. A step
    /// runs it on its new state before committing it, so that a step never
    /// makes a session that saves but does not load (NaN from a model in the
    /// scheduler's matrices, say).
    pub(super) fn check_invariants(
        &self,
        config: &SessionConfig,
        spec: &SessionSpec,
    ) -> Result<()> {
        let n = spec.num_classes;
        check_phase(&self.phase, n)?;
        self.scheduler.validate(n)?;
        check_bounds(&self.bounds, n)?;
        for (&(v, t), (size, trigger)) in self.cache.iter() {
            check_cache_entry(v, t, *size, n)?;
            check_trigger(trigger, spec)?;
        }
        for (&t, trigger) in &self.universal {
            check_universal_class(t, n)?;
            check_trigger(trigger, spec)?;
        }
        check_pool(&self.pool.0, spec)?;
        for p in &self.periods {
            check_period_values(p, spec)?;
            for t in p.init.iter().flatten() {
                check_trigger(t, spec)?;
            }
        }
        check_period_set(&self.periods, self.phase, config)?;
        check_accuracy(&self.accuracy)
    }
}

fn restore(mut saved: SavedSession, expected: Option<SessionSpec>) -> Result<Session> {
    check_spec(&saved.spec, expected)?;
    saved
        .config
        .validate()
        .map_err(|e| bad(format!("stored configuration is invalid: {e}")))?;
    let spec = saved.spec;
    let n = spec.num_classes;
    check_phase(&saved.phase, n)?;
    saved.scheduler.validate(n)?;
    check_bounds(&saved.bounds, n)?;
    let env = RunEnvironment::current();
    let diffs = saved.environment.differences(&env);
    let environment = saved.environment.clone();
    if !diffs.is_empty() {
        log::warn!(
            "checkpoint written with a different set-up ({}): the resumed run may not be bit-identical to an uninterrupted one",
            diffs.join(", ")
        );
    }
    let mut cache = TriggerCache::new();
    for (v, t, size, trig) in std::mem::take(&mut saved.cache) {
        check_cache_entry(v, t, size, n)?;
        cache.put(v, t, checked_trigger(trig, &spec)?, size);
    }
    let mut universal = BTreeMap::new();
    for (t, trig) in std::mem::take(&mut saved.universal) {
        check_universal_class(t, n)?;
        universal.insert(t, checked_trigger(trig, &spec)?);
    }
    let pool = saved
        .pool
        .iter()
        .map(|p| p.to_tensor(Device::Cpu))
        .collect::<Result<Vec<_>>>()?;
    check_pool(&pool, &spec)?;
    let periods = restore_periods(&mut saved, &spec)?;
    check_accuracy(&saved.accuracy)?;
    let state = State {
        phase: saved.phase,
        step: saved.step,
        orth_steps: saved.orth_steps,
        scheduler: saved.scheduler,
        cache,
        universal,
        bounds: saved.bounds,
        periods,
        pool: Pool(pool),
        rng: saved.rng,
        accuracy: saved.accuracy,
        pairwise_next: saved.pairwise_next,
        world_size: 1,
    };
    Ok(Session {
        config: saved.config,
        spec,
        state,
        resumed_from: Some(environment),
        stream: None,
        shared: None,
    })
}

/// The configuration as formats 2 and 3 stored it: [`SessionConfig`]
/// without `recover_steps`, field for field in the same order.
#[derive(Deserialize)]
struct ConfigV3 {
    method: crate::session::Method,
    seed: u64,
    inversion: crate::config::InversionConfig,
    warmup: crate::algo::warmup::WarmupConfig,
    first: crate::config::InversionBudget,
    later: crate::config::InversionBudget,
    period: usize,
    portion: f64,
    stamp_at_least: usize,
    pairs_per_step: usize,
    scheduler: crate::algo::scheduler::SchedulerConfig,
    bounds: crate::algo::bounds::BoundsConfig,
    max_steps: u64,
    accuracy_every: u64,
    max_accuracy_drop: f64,
}

impl From<ConfigV3> for SessionConfig {
    fn from(c: ConfigV3) -> Self {
        SessionConfig {
            method: c.method,
            seed: c.seed,
            inversion: c.inversion,
            warmup: c.warmup,
            first: c.first,
            later: c.later,
            period: c.period,
            portion: c.portion,
            stamp_at_least: c.stamp_at_least,
            pairs_per_step: c.pairs_per_step,
            scheduler: c.scheduler,
            bounds: c.bounds,
            max_steps: c.max_steps,
            accuracy_every: c.accuracy_every,
            max_accuracy_drop: c.max_accuracy_drop,
            recover_steps: 0, // the paper's rule, the only one then
        }
    }
}

impl SavedSession<ConfigV3> {
    /// The same state in the current form.
    fn upgrade(self) -> SavedSession {
        let SavedSession {
            environment,
            config,
            spec,
            phase,
            step,
            orth_steps,
            scheduler,
            cache,
            universal,
            bounds,
            periods,
            pool,
            rng,
            accuracy,
            pairwise_next,
        } = self;
        SavedSession {
            environment,
            config: config.into(),
            spec,
            phase,
            step,
            orth_steps,
            scheduler,
            cache,
            universal,
            bounds,
            periods,
            pool,
            rng,
            accuracy,
            pairwise_next,
        }
    }
}
