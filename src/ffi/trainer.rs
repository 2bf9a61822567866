//! `moth_trainer`: the training half of the hardening loop over C, for
//! TorchScript classifiers, with moth's own optimisers
//! (`crate::torch::trainer::Trainer`) and checkpoints of model and optimiser
//! that resume bit for bit.

use std::ffi::c_char;
use std::path::Path;

use super::boundary::{c_str, init_out, out, Guarded};
use super::buffer::moth_buffer;
use super::classifier::{moth_classifier, ClassifierBody};
use super::handle::{handle, into_handle, release, Handle};
use super::status::{moth_status, FfiError, FfiResult};
use super::tensor::moth_tensor;
use crate::torch::model::{Classifier, Model};
use crate::torch::train::OptimizerConfig;
use crate::torch::trainer::Trainer;
use crate::Error;

/// The mutable part of a trainer handle.
struct TrainerState {
    trainer: Trainer,
    classifier: *const moth_classifier,
}

/// A trainer (opaque): moth's optimiser bound to one TorchScript
/// classifier, which must outlive it (a step after the classifier was freed
/// gives `MOTH_STATUS_INVALID_HANDLE`). Create with `moth_trainer_new` or
/// `moth_trainer_load`, free with `moth_trainer_free`. Calls on one trainer
/// are serialised by its mutex.
pub struct moth_trainer {
    state: Guarded<TrainerState>,
}

impl moth_trainer {
    /// A trainer bound to `classifier`, behind its lock.
    fn new(trainer: Trainer, classifier: *const moth_classifier) -> Self {
        moth_trainer {
            state: Guarded::new(
                "trainer",
                TrainerState {
                    trainer,
                    classifier,
                },
            ),
        }
    }
}

impl Handle for moth_trainer {
    const TAG: u64 = u64::from_be_bytes(*b"mothTRNR");
    const WHAT: &'static str = "trainer";
}

/// The optimiser settings a `moth_trainer_new` argument names.
fn optimizer_of(spec: Option<&str>) -> FfiResult<OptimizerConfig> {
    let cfg = match spec {
        None | Some("hardening") => OptimizerConfig::hardening(),
        Some("pretraining") => OptimizerConfig::pretraining(),
        Some(json) => serde_json::from_str(json).map_err(|e| {
            FfiError::new(
                moth_status::InvalidConfig,
                format!(
                    "optimizer must be \"hardening\", \"pretraining\" or a complete JSON \
                     object such as {{\"kind\":{{\"Adam\":{{\"beta1\":0.9,\"beta2\":0.999}}}},\
                     \"lr\":0.001,\"weight_decay\":0}}: {e}"
                ),
            )
        })?,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// Runs `f` on the model of a TorchScript classifier handle.
fn with_model<T>(
    classifier: *const moth_classifier,
    f: impl FnOnce(&mut Model) -> FfiResult<T>,
) -> FfiResult<T> {
    let clf = handle(classifier, "classifier")?;
    let mut body = clf.body.lock()?;
    match &mut *body {
        ClassifierBody::Model(m) => f(m),
        _ => Err(FfiError::new(
            moth_status::Unsupported,
            "moth trains TorchScript classifiers only; a callback classifier's model is the \
             caller's to train (on the stamped batch, with the true labels)",
        )),
    }
}

/// Creates a trainer for the TorchScript `classifier` (see
/// `moth_classifier_from_torchscript`). `optimizer` names the optimiser:
/// NULL or `"hardening"` (SGD, lr 1e-4, Nesterov momentum 0.9: the
/// reference's hardening setting), `"pretraining"` (Adam, lr 1e-3), or a
/// complete JSON object, e.g.
/// `{"kind":{"Sgd":{"momentum":0.9,"nesterov":false}},"lr":0.01,"weight_decay":0}`.
/// `MOTH_STATUS_INVALID_CONFIG` for anything else,
/// `MOTH_STATUS_UNSUPPORTED` for a callback classifier,
/// `MOTH_STATUS_INVALID_INPUT` for a module without trainable parameters (a
/// traced module, whose weights are constants).
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_trainer_new(
    classifier: *mut moth_classifier,
    optimizer: *const c_char,
    out_trainer: *mut *mut moth_trainer,
) -> moth_status {
    ffi_boundary!("moth_trainer_new", {
        init_out(out_trainer);
        let o = out(out_trainer, "out_trainer")?;
        let spec = if optimizer.is_null() {
            None
        } else {
            Some(c_str(optimizer, "optimizer")?)
        };
        let cfg = optimizer_of(spec)?;
        let trainer = with_model(classifier, |m| Ok(Trainer::new(cfg, m)?))?;
        *o = into_handle(moth_trainer::new(trainer, classifier));
        Ok(())
    })
}

/// Frees a trainer (not its classifier). `moth_trainer_free(NULL)` does
/// nothing.
#[no_mangle]
pub unsafe extern "C" fn moth_trainer_free(trainer: *mut moth_trainer) {
    ffi_boundary!("moth_trainer_free", void, {
        drop(release(trainer, "trainer")?);
        Ok(())
    })
}

/// One training step on the batch `x` (`[n, C, H, W]` float pixels in
/// `[0, 1]`, typically the stamped batch of `moth_session_harden_batch`)
/// with labels `y` (`[n]` integers, the true labels): cross-entropy with the
/// model in training mode, one optimiser update, then evaluation mode
/// again. `*out_loss` (may be NULL) receives the batch's mean loss before
/// the update. A batch of the wrong shape or labels out of range change
/// nothing (`MOTH_STATUS_WRONG_SHAPE`, `MOTH_STATUS_LABEL_OUT_OF_RANGE`).
/// The step does not seed libtorch's random generator: a module with
/// dropout draws from it.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_trainer_step(
    trainer: *mut moth_trainer,
    x: *const moth_tensor,
    y: *const moth_tensor,
    out_loss: *mut f64,
) -> moth_status {
    ffi_boundary!("moth_trainer_step", {
        init_out(out_loss);
        let t = handle(trainer, "trainer")?;
        let x = &handle(x, "x")?.tensor;
        let y = &handle(y, "y")?.tensor;
        let mut st = t.state.lock()?;
        let st = &mut *st;
        // Training needs autograd whatever the host thread's mode; the
        // boundary gives the host its mode back.
        let _grad = crate::torch::grad::GradGuard::set(true);
        let loss = with_model(st.classifier, |m| {
            let x = x.f_to_device(m.device())?;
            Ok(st.trainer.step(m, &x, y)?)
        })?;
        if !out_loss.is_null() {
            // SAFETY: non-NULL out-parameter (C contract).
            unsafe { *out_loss = loss };
        }
        Ok(())
    })
}

/// Writes the number of steps the trainer took (counted across
/// checkpoints).
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_trainer_steps(
    trainer: *const moth_trainer,
    out_steps: *mut u64,
) -> moth_status {
    ffi_boundary!("moth_trainer_steps", {
        init_out(out_steps);
        let o = out(out_steps, "out_steps")?;
        *o = handle(trainer, "trainer")?.state.lock()?.trainer.steps();
        Ok(())
    })
}

/// Saves the classifier's model (the whole TorchScript module, parameters
/// and buffers) and the optimiser's state to a checkpoint file at `path`,
/// atomically. Save the session beside it (`moth_session_save`) at the same
/// step: loading both resumes the run bit for bit.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_trainer_save(
    trainer: *const moth_trainer,
    path: *const c_char,
) -> moth_status {
    ffi_boundary!("moth_trainer_save", {
        let t = handle(trainer, "trainer")?;
        let path = c_str(path, "path")?;
        let st = t.state.lock()?;
        with_model(st.classifier, |m| {
            Ok(st.trainer.save(m, Path::new(path))?)
        })
    })
}

/// Serialises model and optimiser into a new buffer (the bytes
/// `moth_trainer_save` writes).
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_trainer_to_buffer(
    trainer: *const moth_trainer,
    out_buffer: *mut *mut moth_buffer,
) -> moth_status {
    ffi_boundary!("moth_trainer_to_buffer", {
        init_out(out_buffer);
        let o = out(out_buffer, "out_buffer")?;
        let t = handle(trainer, "trainer")?;
        let st = t.state.lock()?;
        let bytes = with_model(st.classifier, |m| Ok(st.trainer.to_bytes(m)?))?;
        *o = into_handle(moth_buffer::new(bytes));
        Ok(())
    })
}

/// Restores checkpoint bytes into `classifier` (its model is replaced by
/// the saved one, on the classifier's device) and a new trainer bound to
/// it.
fn restore(
    classifier: *mut moth_classifier,
    load: impl FnOnce(tch::Device) -> crate::Result<(Model, Trainer)>,
    o: &mut *mut moth_trainer,
) -> FfiResult<()> {
    let trainer = with_model(classifier, |m| {
        let (model, trainer) = load(m.device())?;
        if model.input_shape() != m.input_shape() || model.num_classes() != m.num_classes() {
            return Err(Error::Checkpoint(format!(
                "the checkpoint holds a model for {:?} inputs and {} classes, the classifier \
                 is for {:?} and {}",
                model.input_shape(),
                model.num_classes(),
                m.input_shape(),
                m.num_classes()
            ))
            .into());
        }
        *m = model;
        Ok(trainer)
    })?;
    *o = into_handle(moth_trainer::new(trainer, classifier));
    Ok(())
}

/// Loads a checkpoint written by `moth_trainer_save`: the TorchScript
/// `classifier` (for the same input shape and class count) takes the saved
/// model's parameters and buffers, and `*out_trainer` receives a trainer
/// with the saved optimiser state, bound to it. A missing file gives
/// `MOTH_STATUS_IO`; a corrupted one or one of another kind (a session
/// checkpoint) `MOTH_STATUS_CHECKPOINT`, and the classifier is unchanged.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_trainer_load(
    classifier: *mut moth_classifier,
    path: *const c_char,
    out_trainer: *mut *mut moth_trainer,
) -> moth_status {
    ffi_boundary!("moth_trainer_load", {
        init_out(out_trainer);
        let o = out(out_trainer, "out_trainer")?;
        let path = c_str(path, "path")?;
        restore(classifier, |d| Trainer::load(Path::new(path), d), o)
    })
}

/// `moth_trainer_load` from the `len` bytes at `data` (made by
/// `moth_trainer_to_buffer`); the caller keeps `data`.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_trainer_from_buffer(
    classifier: *mut moth_classifier,
    data: *const u8,
    len: usize,
    out_trainer: *mut *mut moth_trainer,
) -> moth_status {
    ffi_boundary!("moth_trainer_from_buffer", {
        init_out(out_trainer);
        let o = out(out_trainer, "out_trainer")?;
        if data.is_null() {
            return Err(FfiError::null("data"));
        }
        // SAFETY: non-NULL; the caller promises `len` readable bytes.
        let bytes = unsafe { std::slice::from_raw_parts(data, len) };
        restore(classifier, |d| Trainer::from_bytes(bytes, d), o)
    })
}
