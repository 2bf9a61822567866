//! A training loop's state for callers outside Rust (the C ABI's
//! `moth_trainer_*`): moth's own optimiser over a [`Model`], one training
//! step on a (stamped) batch with its true labels, and a checkpoint of the
//! model and the optimiser together, so that a resumed run continues bit
//! for bit where the saved one stopped.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::io::container::{self, PayloadKind};
use crate::torch::model::{Model, ModelState};
use crate::torch::train::{train_step, Optimizer, OptimizerConfig, OptimizerState};
use crate::{Error, Result};

/// Trains one model with moth's optimiser.
#[derive(Debug)]
pub struct Trainer {
    opt: Optimizer,
}

/// What a trainer checkpoint holds.
#[derive(Serialize, Deserialize)]
struct TrainingCheckpoint {
    model: ModelState,
    optimizer: OptimizerState,
}

impl Trainer {
    /// A fresh optimiser with settings `cfg` for `model`.
    pub fn new(cfg: OptimizerConfig, model: &Model) -> Result<Self> {
        if model.parameters().is_empty() {
            return Err(Error::input(
                "the model has no trainable parameters (a traced TorchScript module's \
                 weights are constants; script the module, or register its weights as \
                 parameters)",
            ));
        }
        Ok(Trainer {
            opt: Optimizer::new(cfg, model)?,
        })
    }

    /// The optimiser's settings.
    pub fn config(&self) -> &OptimizerConfig {
        self.opt.config()
    }

    /// Steps taken so far (restored from a checkpoint).
    pub fn steps(&self) -> u64 {
        self.opt.steps()
    }

    /// One step on `x` `[n, C, H, W]` (pixels in `[0, 1]`) with labels `y`
    /// `[n]` (integers below the model's class count): cross-entropy in
    /// training mode, one optimiser update. Returns the loss. Inputs that do
    /// not fit are refused before the model or optimiser changes.
    pub fn step(&mut self, model: &mut Model, x: &Tensor, y: &Tensor) -> Result<f64> {
        let [c, h, w] = model.input_shape();
        let n = x.size().first().copied().unwrap_or(0);
        if x.size() != [n, c, h, w] || n == 0 {
            return Err(Error::input_of(
                crate::error::InputKind::WrongShape,
                format!(
                    "the batch must be [n, {c}, {h}, {w}] with n > 0, got {:?}",
                    x.size()
                ),
            ));
        }
        if y.size() != [n] || !matches!(y.kind(), Kind::Int64 | Kind::Int | Kind::Uint8) {
            return Err(Error::input_of(
                crate::error::InputKind::WrongShape,
                format!(
                    "labels must be [{n}] integers, got {:?} {:?}",
                    y.size(),
                    y.kind()
                ),
            ));
        }
        let labels = y.f_to_kind(Kind::Int64)?.f_to_device(Device::Cpu)?;
        let (lo, hi) = (
            labels.f_min()?.int64_value(&[]),
            labels.f_max()?.int64_value(&[]),
        );
        if lo < 0 || hi >= model.num_classes() {
            return Err(Error::input_of(
                crate::error::InputKind::LabelOutOfRange,
                format!(
                    "labels must be in [0, {}), found [{lo}, {hi}]",
                    model.num_classes()
                ),
            ));
        }
        let x = x.f_to_kind(Kind::Float)?;
        let loss = train_step(model, &mut self.opt, &x, &labels)?;
        crate::torch::model::Classifier::set_train(model, false)?;
        let loss = loss.f_to_kind(Kind::Double)?.double_value(&[]);
        if !loss.is_finite() {
            return Err(Error::Model(format!(
                "the training loss is {loss}: the model diverged"
            )));
        }
        Ok(loss)
    }

    /// The checkpoint bytes of `model` and this trainer.
    pub fn to_bytes(&self, model: &Model) -> Result<Vec<u8>> {
        let ck = TrainingCheckpoint {
            model: model.snapshot(&[])?,
            optimizer: self.opt.save_state()?,
        };
        container::encode(PayloadKind::Training, &ck)
    }

    /// Writes [`Trainer::to_bytes`] to `path`, atomically.
    pub fn save(&self, model: &Model, path: &std::path::Path) -> Result<()> {
        container::write_atomic(path, &self.to_bytes(model)?)
    }

    /// The model and trainer of checkpoint bytes, the model on `device`.
    pub fn from_bytes(bytes: &[u8], device: Device) -> Result<(Model, Trainer)> {
        let ck: TrainingCheckpoint = container::decode(PayloadKind::Training, bytes)?;
        let model = Model::from_snapshot(&ck.model, device)?;
        let opt = Optimizer::restore(&ck.optimizer, &model)?;
        Ok((model, Trainer { opt }))
    }

    /// [`Trainer::from_bytes`] of the file at `path`.
    pub fn load(path: &std::path::Path, device: Device) -> Result<(Model, Trainer)> {
        Self::from_bytes(&container::read_checkpoint(path)?, device)
    }
}
