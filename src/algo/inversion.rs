//! Trigger inversion (Neural Cleanse style), docs/algorithm.md section 2: one
//! optimiser that serves all three uses (universal warm-up triggers, the
//! two-sided generation of Algorithm 1, and distance measurement).
//!
//! Several *directions* are optimised at once. Each direction owns a trigger,
//! a target label, a cost, a cost schedule and a best trigger, and reads its
//! samples from one of the task's sample sets. Their losses are summed; since
//! a trigger only touches its own direction's samples and Adam is
//! element-wise, the joint run equals separate runs, but every mini-batch is
//! one forward pass over all directions. Per-step statistics stay on the
//! device and are read once per step (one host synchronisation per step).

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Reduction, Tensor};

use crate::algo::collective::Agreement;
use crate::algo::cost_schedule::CostSchedule;
use crate::algo::trigger::{from_param, stamp, to_param, Trigger};
use crate::config::{InversionBudget, InversionConfig};
use crate::torch::gradient::ForwardPass;
use crate::torch::model::Classifier;
use crate::torch::train::{adam_update, AdamRule};
use crate::{Error, Result};

/// One direction of an inversion task: flip the samples of `sets[set]` to
/// `target`, starting from `init` (random when `None`).
#[derive(Debug)]
pub struct Direction {
    /// Index of the sample set this direction reads.
    pub set: usize,
    /// Target label.
    pub target: i64,
    /// Initial trigger (e.g. from the cache).
    pub init: Option<Trigger>,
}

/// What to invert and for how long.
#[derive(Debug)]
pub struct InversionTask<'a> {
    /// Sample sets, each `[n, C, H, W]` in `[0,1]`; directions index them.
    pub sets: &'a [Tensor],
    /// The directions optimised jointly.
    pub directions: Vec<Direction>,
    /// Steps, initial cost and ASR bound.
    pub budget: InversionBudget,
    /// Record each sample's cross-entropy before the first step and under
    /// the best trigger (the warm-up's prior scores need them).
    pub record_sample_losses: bool,
}

/// The result of one direction.
#[derive(Debug)]
pub struct DirectionOutcome {
    /// The best trigger; all zero when the bound was never reached.
    pub trigger: Trigger,
    /// Whether any step reached the ASR bound.
    pub reached: bool,
    /// Size of `trigger` (`C * sum(mask)`); 0 on failure.
    pub size: f64,
    /// ASR of the step that produced the best trigger (0 on failure).
    pub asr: f64,
    /// The cost when the run ended.
    pub final_cost: f64,
    /// Inversion steps actually run (fewer than the budget when the run
    /// stopped early).
    pub steps: usize,
    /// Per-sample cross-entropy with the initial trigger (when recorded).
    pub sample_loss_start: Vec<f64>,
    /// Per-sample cross-entropy with the best trigger (when recorded and reached).
    pub sample_loss_best: Vec<f64>,
}

/// Mini-batch layout of a task: every mini-batch takes `width` positions of
/// every direction; a direction with fewer samples than `width` has its
/// surplus positions weighted 0.
struct Layout {
    width: i64,
    batches: i64,
    counts: Vec<i64>,
    offsets: Vec<i64>,
    /// This process's rank when the inversion is data-parallel.
    rank: Option<usize>,
}

impl Layout {
    fn new(task: &InversionTask, cfg: &InversionConfig) -> Result<Self> {
        let (counts, offsets) = counts_and_offsets(task)?;
        if let Some(k) = counts.iter().position(|&n| n == 0) {
            let set = task.directions[k].set;
            return Err(Error::input(format!("sample set {set} is empty")));
        }
        let max_n = counts.iter().copied().max().unwrap_or(0);
        let width = (cfg.batch_size as i64).min(max_n);
        let batches = (max_n + width - 1) / width;
        Ok(Layout {
            width,
            batches,
            counts,
            offsets,
            rank: None,
        })
    }

    /// The layout of one rank of a data-parallel inversion (section 10):
    /// the number of mini-batches comes from the ranks' summed sample
    /// counts, as if one process held them all; each rank spreads its own
    /// samples (possibly none) over that many mini-batches.
    fn shared(task: &InversionTask, cfg: &InversionConfig, s: &mut Agreement) -> Result<Self> {
        let (counts, offsets) = counts_and_offsets(task)?;
        let (batches, width) = s.mini_batches(&counts, cfg.batch_size as i64)?;
        Ok(Layout {
            width,
            batches,
            counts,
            offsets,
            rank: Some(s.rank()),
        })
    }

    /// `[K, width]` weights: 1 for a real sample position, 0 for padding.
    fn weights(&self, device: Device) -> Result<Tensor> {
        let w: Vec<f32> = self
            .counts
            .iter()
            .flat_map(|&n| {
                (0..self.width).map(move |i| if n >= self.width || i < n { 1.0 } else { 0.0 })
            })
            .collect();
        Ok(Tensor::f_from_slice(&w)?
            .f_view([self.counts.len() as i64, self.width])?
            .f_to_device(device)?)
    }

    /// `[K, batches * width]` indices into the concatenated sets, a fresh
    /// shuffle of each direction's samples, wrapped around where short.
    /// Drawn on the host from the run's own RNG, so results never depend on
    /// libtorch's global generator (which other threads may reseed).
    /// A data-parallel rank shuffles its own samples with a generator of
    /// its own (one draw of the shared one, on the rank's ChaCha stream):
    /// how many draws a shuffle takes depends on the rank's sample count,
    /// and the shared generator must stay the same on every rank.
    fn shuffled_indices(&self, rng: &mut ChaCha8Rng, device: Device) -> Result<Tensor> {
        let mut own;
        let rng = match self.rank {
            None => rng,
            Some(rank) => {
                own = ChaCha8Rng::seed_from_u64(rng.random());
                own.set_stream(rank as u64);
                &mut own
            }
        };
        let total = (self.batches * self.width) as usize;
        let mut all = Vec::with_capacity(total * self.counts.len());
        for (&n, &off) in self.counts.iter().zip(&self.offsets) {
            if n == 0 {
                // A rank without samples of this direction: weight-0 positions.
                all.extend(std::iter::repeat(0).take(total));
                continue;
            }
            let mut perm: Vec<i64> = (off..off + n).collect();
            perm.shuffle(rng);
            all.extend((0..total).map(|p| perm[p % n as usize]));
        }
        Ok(Tensor::f_from_slice(&all)?
            .f_view([self.counts.len() as i64, total as i64])?
            .f_to_device(device)?)
    }
}

/// Each direction's sample count and the offset of its set in the
/// concatenated sets.
fn counts_and_offsets(task: &InversionTask) -> Result<(Vec<i64>, Vec<i64>)> {
    let set_sizes: Vec<i64> = task.sets.iter().map(|s| s.size()[0]).collect();
    let mut offsets = Vec::with_capacity(task.directions.len());
    let mut counts = Vec::with_capacity(task.directions.len());
    for d in &task.directions {
        let n = *set_sizes.get(d.set).ok_or_else(|| {
            Error::input(format!(
                "direction names sample set {} of {}",
                d.set,
                set_sizes.len()
            ))
        })?;
        offsets.push(set_sizes[..d.set].iter().sum());
        counts.push(n);
    }
    Ok((counts, offsets))
}

/// Uniform values in `[lo, hi)` of the given shape, from the run's RNG.
fn uniform(
    rng: &mut ChaCha8Rng,
    shape: &[i64],
    lo: f32,
    hi: f32,
    device: Device,
) -> Result<Tensor> {
    let n: i64 = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
    Ok(Tensor::f_from_slice(&v)?
        .f_view(shape)?
        .f_to_device(device)?)
}

/// Adam state for the two parameter tensors of a task (the update rule
/// is the training optimiser's, [`adam_update`]).
struct Adam {
    m: [Tensor; 2],
    v: [Tensor; 2],
    t: i32,
}

impl Adam {
    fn new(params: [&Tensor; 2]) -> Result<Self> {
        let z = |p: &Tensor| p.f_zeros_like();
        Ok(Adam {
            m: [z(params[0])?, z(params[1])?],
            v: [z(params[0])?, z(params[1])?],
            t: 0,
        })
    }

    fn step(
        &mut self,
        params: [&mut Tensor; 2],
        grads: &[Tensor],
        cfg: &InversionConfig,
    ) -> Result<()> {
        self.t += 1;
        let rule = AdamRule {
            lr: cfg.lr,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
        };
        crate::torch::grad::no_grad(|| -> Result<()> {
            for (i, p) in params.into_iter().enumerate() {
                let step = adam_update(&rule, &grads[i], &self.m[i], &self.v[i], self.t)?;
                self.m[i] = step.m;
                self.v[i] = step.v;
                let _ = p.f_sub_(&step.update)?;
            }
            Ok(())
        })
    }
}

/// Initial `[K,1,H,W]` mask and `[K,C,H,W]` pattern: the given triggers, or
/// uniform random values.
fn initial_values(
    task: &InversionTask,
    shape: [i64; 3],
    rng: &mut ChaCha8Rng,
    device: Device,
) -> Result<(Tensor, Tensor)> {
    let [c, h, w] = shape;
    let mut masks = Vec::new();
    let mut patterns = Vec::new();
    for d in &task.directions {
        match &d.init {
            Some(t) if t.input_shape() == shape => {
                masks.push(t.mask.f_to_device(device)?);
                patterns.push(t.pattern.f_to_device(device)?);
            }
            Some(t) => {
                return Err(Error::input(format!(
                    "initial trigger for {:?} inputs, task has {:?}",
                    t.input_shape(),
                    shape
                )))
            }
            None => {
                masks.push(uniform(rng, &[1, h, w], 0.0, 1.0, device)?);
                patterns.push(uniform(rng, &[c, h, w], 0.0, 1.0, device)?);
            }
        }
    }
    Ok((Tensor::f_stack(&masks, 0)?, Tensor::f_stack(&patterns, 0)?))
}

/// Cross-entropy of every sample of every direction under the given
/// `[K,...]` masks and patterns, without gradients.
fn sample_losses(
    model: &dyn Classifier,
    task: &InversionTask,
    masks: &Tensor,
    patterns: &Tensor,
    which: &[bool],
) -> Result<Vec<Vec<f64>>> {
    let device = model.device();
    crate::torch::grad::no_grad(|| {
        task.directions
            .iter()
            .enumerate()
            .map(|(k, d)| {
                if !which[k] {
                    return Ok(Vec::new());
                }
                let k = k as i64;
                let x = task.sets[d.set].f_to_device(device)?;
                if x.size()[0] == 0 {
                    return Ok(Vec::new()); // a data-parallel rank without samples
                }
                let stamped = stamp(&x, &masks.f_get(k)?, &patterns.f_get(k)?)?;
                let n = x.size()[0];
                let y = Tensor::f_full([n], d.target, (Kind::Int64, device))?;
                let ce = model.forward(&stamped)?.f_cross_entropy_loss::<Tensor>(
                    &y,
                    None,
                    Reduction::None,
                    -100,
                    0.0,
                )?;
                Ok(Vec::<f64>::try_from(
                    &ce.f_to_kind(Kind::Double)?.f_to_device(Device::Cpu)?,
                )?)
            })
            .collect()
    })
}

fn validate_task(task: &InversionTask) -> Result<[i64; 3]> {
    let first = task
        .sets
        .first()
        .ok_or_else(|| Error::input("inversion task has no sample set"))?;
    let s = first.size();
    if s.len() != 4 {
        return Err(Error::input(format!(
            "sample sets must be [n, C, H, W], got {s:?}"
        )));
    }
    for set in task.sets {
        if set.size()[1..] != s[1..] {
            return Err(Error::input(format!(
                "sample sets disagree on shape: {:?} vs {:?}",
                set.size(),
                s
            )));
        }
    }
    if task.directions.is_empty() {
        return Err(Error::input("inversion task has no direction"));
    }
    Ok([s[1], s[2], s[3]])
}

/// The error of a model whose logits have no autograd path back to its input.
fn independent_of_input() -> Error {
    Error::input(
        "the model's logits do not depend on its input (detached, constant, or computed \
         from its parameters only), so no trigger can be inverted",
    )
}

/// Runs the inversion of every direction of `task` on `model` (switched to
/// eval mode). `seed` seeds the run's own RNG, which draws the random initial
/// values, shuffles and restart noise on the host: the same seed gives the
/// same run on the CPU, whatever other threads do with libtorch's generator.
pub fn invert(
    model: &mut dyn Classifier,
    task: &InversionTask,
    cfg: &InversionConfig,
    seed: u64,
) -> Result<Vec<DirectionOutcome>> {
    invert_shared(model, task, cfg, seed, None)
}

/// [`invert`], data-parallel over the ranks of `shared` when it is set
/// (docs/algorithm.md section 10): every rank passes its own samples (a set
/// may be empty on some ranks) and the same seed; each mini-batch's mask
/// and pattern gradients are summed over the ranks, and so are the success
/// counts that decide the best trigger and the cost schedule, so every rank
/// ends with the same triggers, optimised over the union of the samples.
pub fn invert_shared(
    model: &mut dyn Classifier,
    task: &InversionTask,
    cfg: &InversionConfig,
    seed: u64,
    mut shared: Option<&mut Agreement>,
) -> Result<Vec<DirectionOutcome>> {
    let shape = validate_task(task)?;
    crate::config::validate_budget("inversion budget", &task.budget)?;
    model.set_train(false)?;
    // The optimisation needs autograd even when the caller runs with it
    // off (a trainer inside its own no-grad scope); the guard gives the
    // caller its mode back on every path.
    let _grad = crate::torch::grad::GradGuard::set(true);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let device = model.device();
    let k = task.directions.len() as i64;
    let layout = match shared.as_deref_mut() {
        None => Layout::new(task, cfg)?,
        Some(s) => Layout::shared(task, cfg, s)?,
    };
    let world = shared.as_ref().map_or(1, |s| s.world_size());
    let mut all = Tensor::f_cat(task.sets, 0)?
        .f_to_device(device)?
        .f_to_kind(Kind::Float)?;
    if all.size()[0] == 0 {
        // A data-parallel rank without any sample: one image under weight 0.
        all = Tensor::f_zeros([1, shape[0], shape[1], shape[2]], (Kind::Float, device))?;
    }
    let weights = layout.weights(device)?;
    let mut weight_sum = weights.f_sum_dim_intlist(1, false, Kind::Float)?;
    if let Some(s) = shared.as_deref_mut() {
        // Losses are means over the union of the ranks' samples.
        weight_sum = s.sum_tensors(&[&weight_sum], device)?.remove(0);
    }
    let targets: Vec<i64> = task.directions.iter().map(|d| d.target).collect();
    let targets = Tensor::f_from_slice(&targets)?
        .f_to_device(device)?
        .f_repeat_interleave_self_int(layout.width, 0, None)?;

    let (mask0, pattern0) = initial_values(task, shape, &mut rng, device)?;
    let mut tm = to_param(&mask0)?.f_set_requires_grad(true)?;
    let mut tp = to_param(&pattern0)?.f_set_requires_grad(true)?;
    let mut adam = Adam::new([&tm, &tp])?;
    let mut schedules: Vec<CostSchedule> = (0..k)
        .map(|_| CostSchedule::new(task.budget.init_cost))
        .collect();
    let mut best_mask = mask0.f_zeros_like()?;
    let mut best_pattern = pattern0.f_zeros_like()?;
    let mut best_l1 = vec![f64::INFINITY; k as usize];
    let mut best_asr = vec![0.0; k as usize];
    let record = task.record_sample_losses;
    let everything = vec![true; k as usize];
    let loss_start = if record {
        sample_losses(model, task, &mask0, &pattern0, &everything)?
    } else {
        vec![Vec::new(); k as usize]
    };
    let mut loss_best = vec![Vec::new(); k as usize];
    let [c, h, w] = shape;
    let mut steps_run = 0;
    let mut since_improved = 0;

    for _step in 0..task.budget.steps {
        if stalled(cfg.early_stop, since_improved, &best_l1) {
            break;
        }
        steps_run += 1;
        // Each rank adds its share of the mask's L1 term, so that the summed
        // gradient holds it once (division by 1 is exact: one process is
        // unchanged).
        let costs: Vec<f32> = schedules
            .iter()
            .map(|s| (s.cost / world as f64) as f32)
            .collect();
        let costs = Tensor::f_from_slice(&costs)?.f_to_device(device)?;
        let order = layout.shuffled_indices(&mut rng, device)?;
        let mut hits = Tensor::f_zeros([k], (Kind::Float, device))?;
        let mut used = (mask0.shallow_clone(), pattern0.shallow_clone());
        for j in 0..layout.batches {
            let idx = order
                .f_narrow(1, j * layout.width, layout.width)?
                .f_flatten(0, -1)?;
            let xb = all
                .f_index_select(0, &idx)?
                .f_view([k, layout.width, c, h, w])?;
            let m = from_param(&tm)?;
            let p = from_param(&tp)?;
            let stamped = stamp(&xb, &m.f_unsqueeze(1)?, &p.f_unsqueeze(1)?)?.f_view([
                k * layout.width,
                c,
                h,
                w,
            ])?;
            let pass = ForwardPass::run(model, &stamped)?;
            let logits = pass.logits();
            let ce = logits
                .f_cross_entropy_loss::<Tensor>(&targets, None, Reduction::None, -100, 0.0)?
                .f_view([k, layout.width])?;
            let ce_dir = ce
                .f_mul(&weights)?
                .f_sum_dim_intlist(1, false, Kind::Float)?
                .f_div(&weight_sum)?;
            let l1 = m.f_sum_dim_intlist([1, 2, 3].as_slice(), false, Kind::Float)?;
            let loss = ce_dir.f_add(&l1.f_mul(&costs)?)?.f_sum(Kind::Float)?;
            if !pass.reaches_input() {
                // Without a path from the input to the logits the pattern gets
                // no gradient (and libtorch aborts a backward without a graph).
                return Err(independent_of_input());
            }
            let mut grads = pass.backward(model, &loss, &[&tm, &tp])?;
            if grads.iter().any(|g| !g.defined()) {
                // The logits carry a graph (a parameter of the model), but
                // not one that reaches the stamped input: the pattern gets no
                // gradient at all, and the optimiser would fail on it.
                return Err(independent_of_input());
            }
            let hit = crate::torch::grad::no_grad(|| -> Result<Tensor> {
                let ok = logits
                    .f_argmax(-1, false)?
                    .f_eq_tensor(&targets)?
                    .f_to_kind(Kind::Float)?;
                Ok(ok
                    .f_view([k, layout.width])?
                    .f_mul(&weights)?
                    .f_sum_dim_intlist(1, false, Kind::Float)?)
            })?;
            hits = hits.f_add(&hit)?;
            if let Some(s) = shared.as_deref_mut() {
                let last = j + 1 == layout.batches;
                s.sum_gradients(&mut grads, last.then_some(&mut hits), device)?;
            }
            used = (m.f_detach()?, p.f_detach()?);
            adam.step([&mut tm, &mut tp], &grads, cfg)?;
        }
        // The candidate for "best" is the trigger the last mini-batch was
        // evaluated with (before its update), so that a saved trigger is one
        // whose success was observed. One host read per step.
        let (m_end, p_end) = used;
        let asr = hits.f_div(&weight_sum.f_mul_scalar(layout.batches as f64)?)?;
        let l1_end = m_end.f_sum_dim_intlist([1, 2, 3].as_slice(), false, Kind::Float)?;
        let stats = Vec::<f64>::try_from(
            &Tensor::f_cat(&[asr, l1_end], 0)?
                .f_to_kind(Kind::Double)?
                .f_to_device(Device::Cpu)?,
        )?;
        let (asr, l1) = stats.split_at(k as usize);
        let mut improved = vec![false; k as usize];
        for i in 0..k as usize {
            let reached = asr[i] >= task.budget.asr_bound;
            if !l1[i].is_finite() {
                return Err(Error::Model(
                    "the trigger inversion diverged (its mask became non-finite): the \
                     model's logits or their gradients hold NaN or infinite values"
                        .into(),
                ));
            }
            if reached && l1[i] < best_l1[i] {
                improved[i] = true;
                best_l1[i] = l1[i];
                best_asr[i] = asr[i];
            }
            schedules[i].update(reached, cfg);
        }
        since_improved = if improved.iter().any(|&b| b) {
            0
        } else {
            since_improved + 1
        };
        if improved.iter().any(|&b| b) {
            let sel = Tensor::f_from_slice(&improved)?.f_to_device(device)?;
            let sel_m = sel.f_view([k, 1, 1, 1])?;
            best_mask = m_end.f_where_self(&sel_m, &best_mask)?;
            best_pattern = p_end.f_where_self(&sel_m, &best_pattern)?;
            restart_from_best(
                &mut tm,
                &mut tp,
                &best_mask,
                &best_pattern,
                &sel_m,
                cfg.restart_noise,
                &mut rng,
            )?;
            if record {
                let fresh = sample_losses(model, task, &best_mask, &best_pattern, &improved)?;
                for (i, v) in fresh.into_iter().enumerate() {
                    if improved[i] {
                        loss_best[i] = v;
                    }
                }
            }
        }
    }
    let mut out = collect_outcomes(
        shape,
        device,
        best_mask,
        best_pattern,
        best_l1,
        best_asr,
        schedules,
        loss_start,
        loss_best,
    )?;
    out.iter_mut().for_each(|o| o.steps = steps_run);
    Ok(out)
}

/// Early stop: every direction has a trigger that reached the ASR bound,
/// and none improved for `patience` steps (0 = never stop early).
fn stalled(patience: usize, since_improved: usize, best_l1: &[f64]) -> bool {
    patience > 0 && since_improved >= patience && best_l1.iter().all(|l| l.is_finite())
}

/// Restarts the selected directions from their best trigger plus uniform
/// noise, to leave the local minimum they settled in.
fn restart_from_best(
    tm: &mut Tensor,
    tp: &mut Tensor,
    best_mask: &Tensor,
    best_pattern: &Tensor,
    sel: &Tensor,
    noise: f64,
    rng: &mut ChaCha8Rng,
) -> Result<()> {
    crate::torch::grad::no_grad(|| -> Result<()> {
        let mut jitter = |t: &Tensor| -> Result<Tensor> {
            let u = uniform(
                rng,
                &t.size(),
                -(noise as f32),
                noise as f32 + f32::EPSILON,
                t.device(),
            )?;
            to_param(&t.f_add(&u)?)
        };
        let new_m = jitter(best_mask)?.f_where_self(sel, tm)?;
        let new_p = jitter(best_pattern)?.f_where_self(sel, tp)?;
        tm.f_copy_(&new_m)?;
        tp.f_copy_(&new_p)?;
        Ok(())
    })
}

#[allow(clippy::too_many_arguments)]
fn collect_outcomes(
    shape: [i64; 3],
    device: Device,
    best_mask: Tensor,
    best_pattern: Tensor,
    best_l1: Vec<f64>,
    best_asr: Vec<f64>,
    schedules: Vec<CostSchedule>,
    loss_start: Vec<Vec<f64>>,
    loss_best: Vec<Vec<f64>>,
) -> Result<Vec<DirectionOutcome>> {
    let mut out = Vec::with_capacity(best_l1.len());
    for (i, ((l1, start), best)) in best_l1.iter().zip(loss_start).zip(loss_best).enumerate() {
        let reached = l1.is_finite();
        let trigger = if reached {
            Trigger {
                mask: best_mask.f_get(i as i64)?.f_detach()?,
                pattern: best_pattern.f_get(i as i64)?.f_detach()?,
            }
        } else {
            Trigger::zeros(shape, device)?
        };
        out.push(DirectionOutcome {
            size: if reached { trigger.size()? } else { 0.0 },
            trigger,
            reached,
            asr: best_asr[i],
            final_cost: schedules[i].cost,
            steps: 0,
            sample_loss_start: start,
            sample_loss_best: best,
        });
    }
    Ok(out)
}
