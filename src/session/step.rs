//! One training step of each phase: the warm-up step, the steps of an
//! orthogonalisation period and its end, and the baselines' steps.

use rand::seq::SliceRandom;
use rand::Rng;
use tch::{Device, Kind, Tensor};

use super::{
    DirectionReport, DoneReason, Method, Period, Phase, SessionConfig, SessionSpec, State,
};
use crate::algo::inversion::DirectionOutcome;
use crate::algo::scheduler::Pair;
use crate::algo::trigger::Trigger;
use crate::algo::two_sided::{self, Side};
use crate::algo::warmup::{self, WarmupConfig};
use crate::labels::{positions_except, positions_of};
use crate::torch::model::Classifier;
use crate::Result;

/// What one step works on and produces.
pub(crate) struct StepContext<'a> {
    pub cfg: &'a SessionConfig,
    pub spec: SessionSpec,
    pub model: &'a mut dyn Classifier,
    pub x: &'a Tensor,
    pub labels: &'a [i64],
    pub stamped: Tensor,
    pub reports: Vec<DirectionReport>,
    pub inversion_steps: usize,
}

impl StepContext<'_> {
    fn positions(&self, class: usize) -> Vec<i64> {
        positions_of(self.labels, class)
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
    pub(crate) fn add_to_pool(
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

    pub(crate) fn warmup_step(&mut self, ctx: &mut StepContext, target: usize) -> Result<()> {
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
        let others = positions_except(ctx.labels, target);
        let chosen = pick(
            &mut self.rng,
            &others,
            (others.len() as f64 * ratio).floor() as usize,
        );
        ctx.stamp(trigger, &chosen)?;
        Ok(chosen.len())
    }

    pub(crate) fn universal_step(&mut self, ctx: &mut StepContext, target: usize) -> Result<()> {
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

    pub(crate) fn orthogonalize_step(
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
    pub(crate) fn finish_step(&mut self, cfg: &SessionConfig) {
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
