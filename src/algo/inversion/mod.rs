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

mod adam;
mod layout;
mod running;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Reduction, Tensor};

use adam::Adam;
use layout::Layout;
use running::{select, Running};

use crate::algo::collective::Agreement;
use crate::algo::cost_schedule::CostSchedule;
use crate::algo::trigger::{from_param, stamp, to_param, Trigger};
use crate::config::{InversionBudget, InversionConfig};
use crate::torch::gradient::ForwardPass;
use crate::torch::model::Classifier;
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
    /// Inversion steps this direction took part in (fewer than the budget
    /// when it stopped early; the run lasted as long as its longest
    /// direction).
    pub steps: usize,
    /// Per-sample cross-entropy with the initial trigger (when recorded).
    pub sample_loss_start: Vec<f64>,
    /// Per-sample cross-entropy with the best trigger (when recorded and reached).
    pub sample_loss_best: Vec<f64>,
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
    let targets = Tensor::f_from_slice(&targets)?.f_to_device(device)?;

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
    let mut running = Running::new(k as usize, cfg.early_stop);

    for _step in 0..task.budget.steps {
        if running.all_stopped() {
            break;
        }
        // Only the running directions take part in this step's passes.
        let rows = running.rows(device)?;
        let rows = rows.as_ref();
        let running_targets = select(&targets, rows)?;
        let ka = running_targets.size()[0];
        let step_targets = running_targets.f_repeat_interleave_self_int(layout.width, 0, None)?;
        let step_weights = select(&weights, rows)?;
        let step_weight_sum = select(&weight_sum, rows)?;
        // Each rank adds its share of the mask's L1 term, so that the summed
        // gradient holds it once (division by 1 is exact: one process is
        // unchanged).
        let costs: Vec<f32> = schedules
            .iter()
            .map(|s| (s.cost / world as f64) as f32)
            .collect();
        let costs = select(&Tensor::f_from_slice(&costs)?.f_to_device(device)?, rows)?;
        let order = select(&layout.shuffled_indices(&mut rng, device)?, rows)?;
        let mut hits = Tensor::f_zeros([k], (Kind::Float, device))?;
        let mut used = (mask0.shallow_clone(), pattern0.shallow_clone());
        for j in 0..layout.batches {
            let idx = order
                .f_narrow(1, j * layout.width, layout.width)?
                .f_flatten(0, -1)?;
            let xb = all
                .f_index_select(0, &idx)?
                .f_view([ka, layout.width, c, h, w])?;
            let m_all = from_param(&tm)?;
            let p_all = from_param(&tp)?;
            let (m, p) = (select(&m_all, rows)?, select(&p_all, rows)?);
            let stamped = stamp(&xb, &m.f_unsqueeze(1)?, &p.f_unsqueeze(1)?)?.f_view([
                ka * layout.width,
                c,
                h,
                w,
            ])?;
            let pass = ForwardPass::run(model, &stamped)?;
            let logits = pass.logits();
            let ce = logits
                .f_cross_entropy_loss::<Tensor>(&step_targets, None, Reduction::None, -100, 0.0)?
                .f_view([ka, layout.width])?;
            let ce_dir = ce
                .f_mul(&step_weights)?
                .f_sum_dim_intlist(1, false, Kind::Float)?
                .f_div(&step_weight_sum)?;
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
                    .f_eq_tensor(&step_targets)?
                    .f_to_kind(Kind::Float)?;
                Ok(ok
                    .f_view([ka, layout.width])?
                    .f_mul(&step_weights)?
                    .f_sum_dim_intlist(1, false, Kind::Float)?)
            })?;
            hits = match rows {
                None => hits.f_add(&hit)?,
                Some(r) => hits.f_index_add(0, r, &hit)?,
            };
            if let Some(s) = shared.as_deref_mut() {
                let last = j + 1 == layout.batches;
                s.sum_gradients(&mut grads, last.then_some(&mut hits), device)?;
            }
            used = (m_all.f_detach()?, p_all.f_detach()?);
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
        for i in (0..k as usize).filter(|&i| running.is_running(i)) {
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
        running.record(&improved, &best_l1);
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
    for (i, o) in out.iter_mut().enumerate() {
        o.steps = running.steps(i);
    }
    Ok(out)
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
