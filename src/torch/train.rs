//! moth's own training step and optimisers (SGD with momentum / Nesterov,
//! Adam), whose state is kept as named tensors so that a checkpoint can save
//! and restore it exactly (tch's built-in optimisers cannot export theirs).

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Reduction, Tensor};

use crate::io::dataset::BatchSource;
use crate::io::tensor_codec::SavedTensor;
use crate::torch::model::{Classifier, Model};
use crate::{Error, Result};

/// Which update rule the optimiser applies.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum OptimizerKind {
    /// Stochastic gradient descent with (optionally Nesterov) momentum.
    Sgd {
        /// Momentum factor.
        momentum: f64,
        /// Nesterov momentum.
        nesterov: bool,
    },
    /// Adam.
    Adam {
        /// First-moment decay.
        beta1: f64,
        /// Second-moment decay.
        beta2: f64,
    },
}

/// Optimiser settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OptimizerConfig {
    /// Update rule.
    pub kind: OptimizerKind,
    /// Learning rate.
    pub lr: f64,
    /// L2 weight decay added to the gradient.
    pub weight_decay: f64,
}

impl OptimizerConfig {
    /// The hardening default of the reference: SGD lr 1e-4, momentum 0.9, Nesterov.
    pub fn hardening() -> Self {
        OptimizerConfig {
            kind: OptimizerKind::Sgd {
                momentum: 0.9,
                nesterov: true,
            },
            lr: 1e-4,
            weight_decay: 0.0,
        }
    }

    /// What `moth train` uses to train a base model from scratch.
    pub fn pretraining() -> Self {
        OptimizerConfig {
            kind: OptimizerKind::Adam {
                beta1: 0.9,
                beta2: 0.999,
            },
            lr: 1e-3,
            weight_decay: 0.0,
        }
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        crate::config::positive("optimizer.lr", self.lr)?;
        crate::config::non_negative("optimizer.weight_decay", self.weight_decay)?;
        match self.kind {
            OptimizerKind::Sgd { momentum, .. } => {
                crate::config::unit_interval("optimizer.momentum", momentum)
            }
            OptimizerKind::Adam { beta1, beta2 } => {
                crate::config::unit_interval("optimizer.beta1", beta1)?;
                crate::config::unit_interval("optimizer.beta2", beta2)
            }
        }
    }
}

/// Adam's hyper-parameters.
#[derive(Debug, Clone, Copy)]
pub struct AdamRule {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
}

/// The new moments and the update to subtract from the parameter.
#[derive(Debug)]
pub struct AdamStep {
    /// First moment after this step.
    pub m: Tensor,
    /// Second moment after this step.
    pub v: Tensor,
    /// `lr * m_hat / (sqrt(v_hat) + 1e-8)`.
    pub update: Tensor,
}

/// One Adam step (Kingma and Ba) with gradient `g`, the moments `m`, `v`
/// before it and the 1-based step count `t`. The one implementation that
/// both trigger inversion and model training use; call it without grad.
pub fn adam_update(
    rule: &AdamRule,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    t: i32,
) -> Result<AdamStep> {
    let m = m
        .f_mul_scalar(rule.beta1)?
        .f_add(&g.f_mul_scalar(1.0 - rule.beta1)?)?;
    let v = v
        .f_mul_scalar(rule.beta2)?
        .f_add(&g.f_square()?.f_mul_scalar(1.0 - rule.beta2)?)?;
    let denom = v
        .f_div_scalar(1.0 - rule.beta2.powi(t))?
        .f_sqrt()?
        .f_add_scalar(1e-8)?;
    let update = m
        .f_div(&denom)?
        .f_mul_scalar(rule.lr / (1.0 - rule.beta1.powi(t)))?;
    Ok(AdamStep { m, v, update })
}

/// An optimiser over a model's trainable parameters (in name order).
#[derive(Debug)]
pub struct Optimizer {
    cfg: OptimizerConfig,
    /// One or two state tensors per parameter (momentum; or Adam's moments).
    state: Vec<Vec<Tensor>>,
    steps: u64,
}

/// An optimiser's state, for checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimizerState {
    /// Settings.
    pub cfg: OptimizerConfig,
    /// Steps taken.
    pub steps: u64,
    /// Per parameter, its state tensors.
    pub state: Vec<Vec<SavedTensor>>,
}

impl Optimizer {
    /// A fresh optimiser for `model`.
    pub fn new(cfg: OptimizerConfig, model: &Model) -> Result<Self> {
        cfg.validate()?;
        let per = match cfg.kind {
            OptimizerKind::Sgd { .. } => 1,
            OptimizerKind::Adam { .. } => 2,
        };
        let state = model
            .parameters()
            .iter()
            .map(|(_, p)| {
                (0..per)
                    .map(|_| Ok(p.f_zeros_like()?))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Optimizer {
            cfg,
            state,
            steps: 0,
        })
    }

    /// Settings in use.
    pub fn config(&self) -> &OptimizerConfig {
        &self.cfg
    }

    /// Updates applied so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Applies one update with the gradients of `loss`.
    pub fn step(&mut self, model: &Model, loss: &Tensor) -> Result<()> {
        let params: Vec<Tensor> = model.parameters().into_iter().map(|(_, p)| p).collect();
        if params.len() != self.state.len() {
            return Err(Error::input("optimizer was built for another model"));
        }
        let grads = Tensor::f_run_backward(&[loss], &params, false, false)?;
        self.steps += 1;
        let cfg = self.cfg;
        crate::torch::grad::no_grad(|| -> Result<()> {
            for ((p, g), st) in params.iter().zip(grads).zip(self.state.iter_mut()) {
                let g = if cfg.weight_decay > 0.0 {
                    g.f_add(&p.f_mul_scalar(cfg.weight_decay)?)?
                } else {
                    g
                };
                let update = match cfg.kind {
                    OptimizerKind::Sgd { momentum, nesterov } => {
                        let buf = if self.steps == 1 {
                            g.copy()
                        } else {
                            st[0].f_mul_scalar(momentum)?.f_add(&g)?
                        };
                        st[0].f_copy_(&buf)?;
                        if nesterov {
                            g.f_add(&buf.f_mul_scalar(momentum)?)?
                        } else {
                            buf
                        }
                        .f_mul_scalar(cfg.lr)?
                    }
                    OptimizerKind::Adam { beta1, beta2 } => {
                        let rule = AdamRule {
                            lr: cfg.lr,
                            beta1,
                            beta2,
                        };
                        let step = adam_update(&rule, &g, &st[0], &st[1], self.steps as i32)?;
                        st[0].f_copy_(&step.m)?;
                        st[1].f_copy_(&step.v)?;
                        step.update
                    }
                };
                let mut p = p.shallow_clone();
                let _ = p.f_sub_(&update)?;
            }
            Ok(())
        })
    }

    /// Exports the state for a checkpoint.
    pub fn save_state(&self) -> Result<OptimizerState> {
        let state = self
            .state
            .iter()
            .map(|v| {
                v.iter()
                    .map(SavedTensor::from_tensor)
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(OptimizerState {
            cfg: self.cfg,
            steps: self.steps,
            state,
        })
    }

    /// Rebuilds an optimiser for `model` from saved state.
    pub fn restore(saved: &OptimizerState, model: &Model) -> Result<Self> {
        let mut opt = Optimizer::new(saved.cfg, model)?;
        if saved.state.len() != opt.state.len() {
            return Err(Error::Checkpoint(format!(
                "optimizer state has {} parameters, the model {}",
                saved.state.len(),
                opt.state.len()
            )));
        }
        for (dst, src) in opt.state.iter_mut().zip(&saved.state) {
            if dst.len() != src.len() {
                return Err(Error::Checkpoint(
                    "optimizer state kind does not match".into(),
                ));
            }
            for (d, s) in dst.iter_mut().zip(src) {
                let t = s.to_tensor(d.device())?;
                if t.size() != d.size() {
                    return Err(Error::Checkpoint(format!(
                        "optimizer state shape {:?} does not match parameter {:?}",
                        t.size(),
                        d.size()
                    )));
                }
                *d = t;
            }
        }
        opt.steps = saved.steps;
        Ok(opt)
    }
}

/// One training step on `(x, y)` with the true labels: cross-entropy, model in
/// train mode. Returns the loss (left on the device; read it when needed).
pub fn train_step(
    model: &mut Model,
    opt: &mut Optimizer,
    x: &Tensor,
    y: &Tensor,
) -> Result<Tensor> {
    model.set_train(true)?;
    let device = model.device();
    let logits = model.forward(&x.f_to_device(device)?)?;
    let loss = logits.f_cross_entropy_loss::<Tensor>(
        &y.f_to_device(device)?,
        None,
        Reduction::Mean,
        -100,
        0.0,
    )?;
    opt.step(model, &loss)?;
    Ok(loss.f_detach()?)
}

/// A training step on the stamped batch `x` whose BatchNorm running
/// statistics follow the clean batch `clean` instead: the statistics are
/// put back after the step and updated by a gradient-free forward of the
/// clean samples. Stamped samples then shape the weights but not the
/// normalisation that clean inputs meet at test time.
pub fn train_step_clean_statistics(
    model: &mut Model,
    opt: &mut Optimizer,
    x: &Tensor,
    clean: &Tensor,
    y: &Tensor,
) -> Result<Tensor> {
    let stats = model.statistics()?;
    let saved = stats
        .iter()
        .map(|(_, t)| {
            let mut copy = t.f_empty_like()?;
            copy.f_copy_(t)?;
            Ok(copy)
        })
        .collect::<Result<Vec<_>>>()?;
    let loss = train_step(model, opt, x, y)?;
    let device = model.device();
    crate::torch::grad::no_grad(|| -> Result<()> {
        for ((_, t), s) in stats.iter().zip(&saved) {
            t.shallow_clone().f_copy_(s)?;
        }
        let _updated_statistics = model.forward(&clean.f_to_device(device)?)?;
        Ok(())
    })?;
    Ok(loss)
}

/// Mini-batch order of one epoch: a seeded shuffle of `0..n` cut into
/// batches of `batch` (the last one may be smaller).
pub fn epoch_batches(n: usize, batch: usize, seed: u64) -> Vec<Vec<i64>> {
    let mut idx: Vec<i64> = (0..n as i64).collect();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    idx.chunks(batch.max(1)).map(|c| c.to_vec()).collect()
}

/// Gathers the samples at `indices` of a dataset (read from its files
/// when it streams).
pub fn gather(data: &dyn BatchSource, indices: &[i64]) -> Result<(Tensor, Tensor)> {
    data.gather(indices)
}

/// Trains `model` for `epochs` on `data` (plain training, used to build a
/// base model). `on_step(epoch, step, steps_per_epoch, loss)` reports progress.
pub fn fit(
    model: &mut Model,
    opt: &mut Optimizer,
    data: &dyn BatchSource,
    epochs: usize,
    batch: usize,
    seed: u64,
    on_step: &mut dyn FnMut(usize, usize, usize, f64),
) -> Result<()> {
    for epoch in 0..epochs {
        let batches = epoch_batches(data.len(), batch, seed.wrapping_add(epoch as u64));
        let total = batches.len();
        for (i, b) in batches.iter().enumerate() {
            tch::manual_seed(
                seed.wrapping_mul(1_000_003)
                    .wrapping_add((epoch * total + i) as u64) as i64,
            );
            let (x, y) = gather(data, b)?;
            let loss = train_step(model, opt, &x, &y)?;
            if i % 20 == 0 || i + 1 == total {
                on_step(
                    epoch,
                    i + 1,
                    total,
                    loss.f_to_kind(Kind::Double)?.double_value(&[]),
                );
            }
        }
    }
    model.set_train(false)
}
