//! A classifier from any framework: two callbacks on plain host float
//! buffers, `forward(x) -> logits` and `input_grad(x, dL/dlogits) -> dL/dx`
//! (a vector-Jacobian product, which Zygote, JAX, ONNX Runtime training and
//! hand-written models all provide). moth computes `dL/dlogits` itself and
//! carries the returned `dL/dx` on to the trigger (`crate::torch::gradient`),
//! so inversion, warm-up, hardening and distances work with such a model.

use std::ffi::c_void;

use tch::{Device, Kind, Tensor};

use super::boundary::{init_out, out, Guarded};
use super::classifier::moth_set_train_fn;
use super::classifier::{
    callback_failure, clear_callback_message, moth_classifier, ClassifierBody,
};
use super::handle::into_handle;
use super::log::moth_free_fn;
use super::status::{moth_status, FfiError};
use crate::torch::model::{Backprop, Classifier};
use crate::{Error, Result};

/// Host forward callback: write the logits of the `n` inputs at `input`
/// into `logits_out`, row-major `[n, num_classes]` (`logits_out[i *
/// num_classes + k]` is input `i`'s logit for class `k`; `n * num_classes`
/// floats). `input` holds `n * c * h * w` floats in `[0, 1]`, NCHW
/// row-major (`input[((i * c + ch) * h + y) * w + x]`); a Julia
/// `Array{Float32,4}` of size `(w, h, c, n)` (Flux's WHCN layout) is the
/// same memory, so `unsafe_wrap(Array, input, (w, h, c, n))` reads it with
/// no copy. Both buffers belong to moth and are valid only during the call:
/// copy what you keep. Return 0, or non-zero to fail
/// (`MOTH_STATUS_CALLBACK`; `moth_callback_set_error` first says why).
/// Called on the thread that called moth, with the classifier locked; it
/// must not unwind or throw, and may call only `moth_callback_set_error`.
pub type moth_host_forward_fn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        input: *const f32,
        n: usize,
        c: usize,
        h: usize,
        w: usize,
        logits_out: *mut f32,
        num_classes: usize,
    ) -> i32,
>;

/// Host input-gradient callback (a vector-Jacobian product): for the `n`
/// inputs at `input` (layout as `moth_host_forward_fn`) and the gradient
/// `grad_logits` of moth's loss with respect to their logits (`[n,
/// num_classes]` row-major), write `dL/dinput = J(input)^T grad_logits`
/// into `grad_input` (`n * c * h * w` floats, the layout of `input`). The
/// model is in evaluation mode; compute the gradient of the forward pass
/// as `moth_host_forward_fn` computes it for the same input. Buffers,
/// status and threading as for `moth_host_forward_fn`.
pub type moth_host_input_grad_fn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        input: *const f32,
        n: usize,
        c: usize,
        h: usize,
        w: usize,
        grad_logits: *const f32,
        num_classes: usize,
        grad_input: *mut f32,
    ) -> i32,
>;

type ForwardFn = unsafe extern "C" fn(
    *mut c_void,
    *const f32,
    usize,
    usize,
    usize,
    usize,
    *mut f32,
    usize,
) -> i32;
type InputGradFn = unsafe extern "C" fn(
    *mut c_void,
    *const f32,
    usize,
    usize,
    usize,
    usize,
    *const f32,
    usize,
    *mut f32,
) -> i32;

/// A classifier implemented by host-buffer callbacks (CPU only).
pub(crate) struct HostClassifier {
    forward: ForwardFn,
    input_grad: InputGradFn,
    set_train: moth_set_train_fn,
    user: *mut c_void,
    free: moth_free_fn,
    num_classes: usize,
}

impl Drop for HostClassifier {
    fn drop(&mut self) {
        if let Some(free) = self.free {
            // SAFETY: the caller asked moth to free `user` with `free` once.
            unsafe { free(self.user) };
        }
    }
}

/// `x` as contiguous host floats with its `[n, c, h, w]` dimensions.
fn host_input(x: &Tensor) -> Result<(Vec<f32>, [usize; 4])> {
    let s = x.size();
    let dims: [usize; 4] = match s.as_slice() {
        [n, c, h, w] => [*n as usize, *c as usize, *h as usize, *w as usize],
        _ => {
            return Err(Error::input(format!(
                "inputs must be [n, C, H, W], got {s:?}"
            )))
        }
    };
    let flat = x
        .f_detach()?
        .f_to_device(Device::Cpu)?
        .f_to_kind(Kind::Float)?
        .f_contiguous()?
        .f_flatten(0, -1)?;
    Ok((Vec::<f32>::try_from(&flat)?, dims))
}

/// Fails when a callback wrote a NaN or an infinity.
fn finite(what: &str, v: &[f32]) -> Result<()> {
    if v.iter().all(|x| x.is_finite()) {
        Ok(())
    } else {
        Err(Error::Model(format!(
            "the {what} callback wrote NaN or infinite values"
        )))
    }
}

impl Classifier for HostClassifier {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (input, [n, c, h, w]) = host_input(x)?;
        let mut logits = vec![0f32; n * self.num_classes];
        clear_callback_message();
        let status = {
            let _grad = crate::torch::grad::GradGuard::keep();
            // SAFETY: the caller registered `forward` for this use; `input`
            // holds n*c*h*w floats and `logits` n*num_classes, both alive
            // for the call.
            unsafe {
                (self.forward)(
                    self.user,
                    input.as_ptr(),
                    n,
                    c,
                    h,
                    w,
                    logits.as_mut_ptr(),
                    self.num_classes,
                )
            }
        };
        if status != 0 {
            return Err(callback_failure("forward", status));
        }
        finite("forward", &logits)?;
        Ok(Tensor::f_from_slice(&logits)?
            .f_view([n as i64, self.num_classes as i64])?
            .f_to_device(x.device())?)
    }

    fn set_train(&mut self, train: bool) -> Result<()> {
        if let Some(f) = self.set_train {
            clear_callback_message();
            // SAFETY: the caller registered `f` for this use.
            let status = unsafe { f(self.user, train) };
            if status != 0 {
                return Err(callback_failure("set_train", status));
            }
        }
        Ok(())
    }

    fn device(&self) -> Device {
        Device::Cpu
    }

    fn backprop(&self) -> Backprop {
        Backprop::InputGrad
    }

    fn input_grad(&self, x: &Tensor, grad_logits: &Tensor) -> Result<Tensor> {
        let (input, [n, c, h, w]) = host_input(x)?;
        if grad_logits.size() != [n as i64, self.num_classes as i64] {
            return Err(Error::input(format!(
                "logit gradients of shape {:?} for {n} inputs and {} classes",
                grad_logits.size(),
                self.num_classes
            )));
        }
        let g = Vec::<f32>::try_from(
            &grad_logits
                .f_detach()?
                .f_to_device(Device::Cpu)?
                .f_to_kind(Kind::Float)?
                .f_contiguous()?
                .f_flatten(0, -1)?,
        )?;
        let mut gx = vec![0f32; input.len()];
        clear_callback_message();
        let status = {
            let _grad = crate::torch::grad::GradGuard::keep();
            // SAFETY: the caller registered `input_grad` for this use; the
            // buffers hold n*c*h*w, n*num_classes and n*c*h*w floats and
            // live for the call.
            unsafe {
                (self.input_grad)(
                    self.user,
                    input.as_ptr(),
                    n,
                    c,
                    h,
                    w,
                    g.as_ptr(),
                    self.num_classes,
                    gx.as_mut_ptr(),
                )
            }
        };
        if status != 0 {
            return Err(callback_failure("input_grad", status));
        }
        finite("input_grad", &gx)?;
        Ok(Tensor::f_from_slice(&gx)?
            .f_view([n as i64, c as i64, h as i64, w as i64])?
            .f_to_device(x.device())?)
    }
}

/// Creates a classifier from host-buffer callbacks, for a model of any
/// framework (Julia/Flux with Zygote, JAX, ONNX Runtime, hand-written C):
/// `forward` computes logits, `input_grad` the gradient of a loss with
/// respect to the inputs given its gradient with respect to the logits
/// (both required; see `moth_host_forward_fn` and
/// `moth_host_input_grad_fn` for the buffer layouts). `set_train` may be
/// NULL. `num_classes` (at least 2) is the width of the logits. moth calls
/// them on the CPU: inversion asks for one forward and one input gradient
/// per mini-batch. Training such a model is the caller's own (moth hands
/// out the stamped batch; `moth_trainer_*` trains TorchScript models only).
/// `user_data` is passed to every callback and freed with `free_user_data`
/// (may be NULL) when the classifier is freed; when this call fails, the
/// caller keeps it. Free the classifier with `moth_classifier_free`.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_classifier_from_host(
    forward: moth_host_forward_fn,
    input_grad: moth_host_input_grad_fn,
    set_train: moth_set_train_fn,
    user_data: *mut c_void,
    free_user_data: moth_free_fn,
    num_classes: usize,
    out_classifier: *mut *mut moth_classifier,
) -> moth_status {
    ffi_boundary!("moth_classifier_from_host", {
        init_out(out_classifier);
        let o = out(out_classifier, "out_classifier")?;
        let forward = forward.ok_or_else(|| FfiError::null("forward"))?;
        let input_grad = input_grad.ok_or_else(|| FfiError::null("input_grad"))?;
        if num_classes < 2 {
            return Err(FfiError::new(
                moth_status::InvalidArgument,
                format!("num_classes must be at least 2, got {num_classes}"),
            ));
        }
        *o = into_handle(moth_classifier {
            body: Guarded::new(
                "classifier",
                ClassifierBody::Host(HostClassifier {
                    forward,
                    input_grad,
                    set_train,
                    user: user_data,
                    free: free_user_data,
                    num_classes,
                }),
            ),
        });
        Ok(())
    })
}
