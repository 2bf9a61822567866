//! One training step of each phase: the warm-up step, the steps of an
//! orthogonalisation period and its end, and the baselines' steps.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use super::{
    DirectionReport, DoneReason, Method, Period, Phase, SessionConfig, SessionSpec, State,
};
use crate::algo::collective::Agreement;
use crate::algo::inversion::DirectionOutcome;
use crate::algo::trigger::Trigger;
use crate::algo::two_sided::{self, Side};
use crate::algo::warmup::{self, WarmupConfig};
use crate::labels::{positions_except, positions_of};
use crate::torch::model::Classifier;
use crate::{Error, Result};

/// What one step works on and produces.
pub(super) struct StepContext<'a> {
    pub(super) cfg: &'a SessionConfig,
    pub(super) spec: SessionSpec,
    pub(super) model: &'a mut dyn Classifier,
    pub(super) x: &'a Tensor,
    pub(super) labels: &'a [i64],
    pub(super) stamped: Tensor,
    pub(super) reports: Vec<DirectionReport>,
    pub(super) inversion_steps: usize,
    /// The ranks' agreement in a data-parallel run.
    pub(super) shared: Option<&'a mut Agreement>,
    /// Per-class sample counts of the whole batch (all ranks) in a
    /// data-parallel run, outside warm-up.
    pub(super) global_counts: Option<Vec<usize>>,
}

impl StepContext<'_> {
    fn positions(&self, class: usize) -> Vec<i64> {
        positions_of(self.labels, class)
    }

    /// `count` of `from`, chosen with the session's generator. A
    /// data-parallel rank chooses among its own samples with a generator of
    /// its own (one draw of the session's, on the rank's ChaCha stream), so
    /// that the session's generator stays the same on every rank.
    fn pick(&self, rng: &mut ChaCha8Rng, from: &[i64], count: usize) -> Vec<i64> {
        match &self.shared {
            None => pick(rng, from, count),
            Some(s) => {
                let mut own = ChaCha8Rng::seed_from_u64(rng.random());
                own.set_stream(s.rank() as u64);
                pick(&mut own, from, count)
            }
        }
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
    pub(super) fn add_to_pool(
        &mut self,
        cfg: &SessionConfig,
        x: &Tensor,
        labels: &[i64],
    ) -> Result<()> {
        let want = cfg.warmup.pool_per_class as i64;
        for (class, pool) in self.pool.0.iter_mut().enumerate() {
            let have = pool.size()[0];
            if have >= want {
                continue;
            }
            let mut idx = positions_of(labels, class);
            idx.truncate((want - have) as usize);
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

    pub(super) fn warmup_step(&mut self, ctx: &mut StepContext, target: usize) -> Result<()> {
        let device = ctx.model.device();
        // Data-parallel ranks hold the same pool (rank 0's) and each inverts
        // on its share of every class (every world-th sample), so that the
        // union is the pool once.
        let (rank, world) = ctx
            .shared
            .as_ref()
            .map_or((0, 1), |s| (s.rank() as i64, s.world_size() as i64));
        let pool = self
            .pool
            .0
            .iter()
            .map(|p| {
                let p = if world > 1 {
                    p.f_slice(0, rank, p.size()[0], world)?
                } else {
                    p.shallow_clone()
                };
                p.f_to_device(device)
            })
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
            ctx.shared.as_deref_mut(),
        )?;
        ctx.inversion_steps += u.outcome.steps;
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
        if !self.bounds.allows_universal(size) {
            return Ok(0);
        }
        let others = positions_except(ctx.labels, target);
        let chosen = ctx.pick(
            &mut self.rng,
            &others,
            (others.len() as f64 * ratio).floor() as usize,
        );
        ctx.stamp(trigger, &chosen)?;
        Ok(chosen.len())
    }

    pub(super) fn universal_step(&mut self, ctx: &mut StepContext, target: usize) -> Result<()> {
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
        let others_present = match &ctx.global_counts {
            None => per_class
                .iter()
                .enumerate()
                .any(|(c, t)| c != target && t.size()[0] > 0),
            Some(g) => g.iter().enumerate().any(|(c, &n)| c != target && n > 0),
        };
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
            ctx.shared.as_deref_mut(),
        )?;
        ctx.inversion_steps += u.outcome.steps;
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

    /// One step of the current period: every pair of the matching that has
    /// enough samples in the batch is inverted (both directions, or one for
    /// the asymmetric baseline) and stamped. Pairs that need the long budget
    /// (first step of a period, or a failure earlier in it) are inverted
    /// together, the others together, so a step runs at most two joint
    /// inversions whatever the number of pairs.
    pub(super) fn orthogonalize_step(
        &mut self,
        ctx: &mut StepContext,
        step_in_period: usize,
    ) -> Result<()> {
        let cfg = ctx.cfg;
        let mut plans = Vec::new();
        for (index, period) in self.periods.iter_mut().enumerate() {
            let (s, t) = (period.pair.source, period.pair.target);
            let positions = [ctx.positions(s), ctx.positions(t)];
            let n = stamp_count(cfg, positions[0].len().min(positions[1].len()));
            // Data-parallel ranks decide on the whole batch's counts (a rank
            // may then stamp none of its own samples).
            let inverted = match &ctx.global_counts {
                None => n > 0,
                Some(g) => stamp_count(cfg, g[s].min(g[t])) > 0,
            };
            if !inverted {
                continue; // too few samples of the pair: it stays clean this step
            }
            // Which directions: 0 = s -> t, 1 = t -> s.
            let dirs = match cfg.method {
                Method::Asymmetric => vec![self.rng.random_range(0..2)],
                _ => vec![0, 1],
            };
            // Reuse (later.steps = 0) needs triggers this period has found.
            let unfound = cfg.later.steps == 0 && dirs.iter().any(|&d| period.sizes[d].is_empty());
            let restart =
                step_in_period == 0 || period.failed || unfound || cfg.method == Method::Pairwise;
            period.failed = false;
            plans.push(PairPlan {
                index,
                positions,
                n,
                restart,
                dirs,
            });
        }
        let mut outcomes: Vec<Vec<Option<DirectionOutcome>>> =
            plans.iter().map(|_| vec![None, None]).collect();
        for restart in [true, false] {
            self.invert_group(ctx, &plans, restart, &mut outcomes)?;
        }
        for (plan, found) in plans.iter().zip(outcomes) {
            for (d, o) in found.into_iter().enumerate() {
                if let Some(o) = o {
                    self.apply_direction(ctx, plan, d, &o)?;
                }
            }
        }
        Ok(())
    }

    /// Inverts, in one joint optimisation, every planned direction whose
    /// pair has the given budget kind; stores the outcomes by pair and side.
    fn invert_group(
        &mut self,
        ctx: &mut StepContext,
        plans: &[PairPlan],
        restart: bool,
        outcomes: &mut [Vec<Option<DirectionOutcome>>],
    ) -> Result<()> {
        let members: Vec<(usize, usize)> = plans
            .iter()
            .enumerate()
            .filter(|(_, p)| p.restart == restart)
            .flat_map(|(i, p)| p.dirs.iter().map(move |&d| (i, d)))
            .collect();
        if members.is_empty() {
            return Ok(());
        }
        if !restart && ctx.cfg.later.steps == 0 {
            for &(i, d) in &members {
                let init = self.periods[plans[i].index].init[d].clone();
                outcomes[i][d] = Some(reused(init)?);
            }
            return Ok(());
        }
        let budget = if restart {
            ctx.cfg.first
        } else {
            ctx.cfg.later
        };
        let samples = members
            .iter()
            .map(|&(i, d)| ctx.samples(&plans[i].positions[d]))
            .collect::<Result<Vec<_>>>()?;
        let sides = members
            .iter()
            .zip(&samples)
            .map(|(&(i, d), x)| {
                let period = &self.periods[plans[i].index];
                let (victim, target) = period.pair.direction(d);
                Side {
                    samples: x,
                    victim,
                    target,
                    init: period.init[d].clone(),
                }
            })
            .collect();
        let seed = self.rng.random();
        let found = two_sided::generate(
            ctx.model,
            sides,
            budget,
            &ctx.cfg.inversion,
            seed,
            ctx.shared.as_deref_mut(),
        )?;
        ctx.inversion_steps += found.iter().map(|o| o.steps).max().unwrap_or(0);
        for (&(i, d), o) in members.iter().zip(found) {
            outcomes[i][d] = Some(o);
        }
        Ok(())
    }

    /// Stamps, caches and records one generated direction.
    fn apply_direction(
        &mut self,
        ctx: &mut StepContext,
        plan: &PairPlan,
        d: usize,
        o: &DirectionOutcome,
    ) -> Result<()> {
        let cfg = ctx.cfg;
        let period = &mut self.periods[plan.index];
        let (victim, target) = period.pair.direction(d);
        let bound = self.bounds.limit(&cfg.bounds, victim, target);
        let mut stamped = 0;
        if o.reached {
            let trigger = cpu_trigger(&o.trigger)?;
            if self.bounds.allows(&cfg.bounds, victim, target, o.size) {
                let chosen = ctx.pick(&mut self.rng, &plan.positions[d], plan.n);
                ctx.stamp(&trigger, &chosen)?;
                stamped = chosen.len();
            }
            if cfg.method != Method::Pairwise {
                self.cache.offer(victim, target, &trigger, o.size);
                period.init[d] = Some(trigger);
            }
        } else {
            period.failed = true;
        }
        period.sizes[d].push(o.size);
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
    pub(super) fn finish_step(&mut self, cfg: &SessionConfig) {
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
                    self.end_periods(cfg);
                    self.start_hardening(cfg)
                }
            }
            Phase::Universal { target } => {
                self.orth_steps += 1;
                Phase::Universal {
                    target: (target + 1) % n,
                }
            }
            Phase::Recover { since } => Phase::Recover { since: since + 1 },
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
    }

    /// The first phase of a new period (or of the universal baseline).
    pub(super) fn start_hardening(&mut self, cfg: &SessionConfig) -> Phase {
        if cfg.method == Method::Universal {
            return Phase::Universal { target: 0 };
        }
        let pairs = match cfg.method {
            Method::Pairwise => {
                let pair = self.scheduler.cycle_pair(self.pairwise_next);
                self.pairwise_next = self.pairwise_next.wrapping_add(1);
                vec![pair]
            }
            _ => self.scheduler.choose_matching(
                &cfg.scheduler,
                self.orth_steps,
                &mut self.rng,
                cfg.pairs_per_step,
            ),
        };
        let reuse = cfg.method != Method::Pairwise;
        self.periods = pairs
            .iter()
            .map(|&pair| Period {
                pair,
                sizes: [Vec::new(), Vec::new()],
                init: [0, 1].map(|d| {
                    let (v, t) = pair.direction(d);
                    self.cache.get(v, t).filter(|_| reuse).cloned()
                }),
                failed: false,
            })
            .collect();
        Phase::Orthogonalize {
            pair: pairs[0],
            step_in_period: 0,
        }
    }

    /// The post-selection update and bound growth of every pair, with the
    /// period's mean sizes.
    pub(super) fn end_periods(&mut self, cfg: &SessionConfig) {
        for period in &self.periods {
            let pair = period.pair;
            let (st, ts) = (
                mean_success(&period.sizes[0]),
                mean_success(&period.sizes[1]),
            );
            self.scheduler.end_period(pair, st, ts);
            self.bounds.grow(&cfg.bounds, pair.source, pair.target, st);
            self.bounds.grow(&cfg.bounds, pair.target, pair.source, ts);
        }
    }
}

/// The outcome of a later step under the reuse lever: the trigger the
/// period found at an earlier step, stamped as it is. It reached the ASR
/// bound when it was found, one or two training steps ago.
fn reused(init: Option<Trigger>) -> Result<DirectionOutcome> {
    let Some(trigger) = init else {
        return Err(Error::Model(
            "reuse without a trigger found in this period".into(),
        ));
    };
    let size = trigger.size()?;
    Ok(DirectionOutcome {
        trigger,
        reached: true,
        size,
        asr: 0.0,
        final_cost: 0.0,
        steps: 0,
        sample_loss_start: Vec::new(),
        sample_loss_best: Vec::new(),
    })
}

/// Mean of the successful (non-zero) sizes; 0 when none.
fn mean_success(v: &[f64]) -> f64 {
    let ok: Vec<f64> = v.iter().copied().filter(|&s| s > 0.0).collect();
    if ok.is_empty() {
        0.0
    } else {
        ok.iter().sum::<f64>() / ok.len() as f64
    }
}

/// Samples to stamp per direction when the smaller class of a pair has
/// `smaller` samples in the batch: the portion of them (rounded down),
/// raised to `stamp_at_least` where the batch has that many.
fn stamp_count(cfg: &SessionConfig, smaller: usize) -> usize {
    let by_portion = (smaller as f64 * cfg.portion).floor() as usize;
    by_portion.max(cfg.stamp_at_least.min(smaller))
}

/// What one pair of the matching does in this step.
struct PairPlan {
    /// Its entry in `State::periods`.
    index: usize,
    /// Batch positions of the pair's source and target classes.
    positions: [Vec<i64>; 2],
    /// Samples stamped per direction.
    n: usize,
    /// Whether it gets the long (first-step) budget.
    restart: bool,
    /// The directions generated (0 = source -> target).
    dirs: Vec<usize>,
}
