//! `moth_classifier`: the model a session hardens, either a TorchScript
//! module moth loads (`Model::torchscript`) or a caller's forward callback,
//! which lets a C++ trainer keep its own `torch::nn::Module`.

use std::cell::RefCell;
use std::ffi::{c_char, c_void};
use std::path::Path;

use tch::{Device, Tensor};

use super::boundary::{c_str, init_out, out, Guarded};
use super::handle::{handle, into_handle, release, Handle, Lent};
use super::host_classifier::HostClassifier;
use super::log::moth_free_fn;
use super::status::{moth_status, FfiError};
use super::tensor::{device_of, moth_device, moth_tensor};
use crate::torch::model::{Backprop, Classifier, Model};
use crate::{Error, Result};

/// Forward callback: compute logits `[n, classes]` for `input`
/// (`[n, C, H, W]` floats in `[0, 1]`, on the classifier's device) such that
/// gradients flow from the logits back to the input (do not detach, do not
/// run under no-grad). Store a new tensor handle in `*logits_out` (moth takes
/// ownership and frees it) and return 0; return any non-zero value to fail
/// (moth then returns `MOTH_STATUS_CALLBACK`; call `moth_callback_set_error`
/// first to say why). `input` is borrowed for the duration of the call:
/// storing it in `*logits_out` is refused with `MOTH_STATUS_CALLBACK`, and
/// so is anything else that is not a live tensor handle (which moth then
/// leaves alone).
/// Called synchronously on the thread that called moth, with the session
/// and this classifier locked; it must not throw (C++) or unwind. Inside it,
/// call only `moth_tensor_*` functions and `moth_callback_set_error`: a call
/// on the invoking session or classifier returns `MOTH_STATUS_BUSY`, and
/// waiting on objects other threads hold could deadlock.
///
/// C++: `at::Tensor x = *static_cast<at::Tensor*>(p)` with `p` from
/// `moth_tensor_to_at_tensor(input, &p)`, then
/// `at::Tensor y = module->forward(x);` and
/// `moth_tensor_from_at_tensor(&y, logits_out)`.
pub type moth_forward_fn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        input: *const moth_tensor,
        logits_out: *mut *mut moth_tensor,
    ) -> i32,
>;

/// Switches the caller's model between training (`train = true`) and
/// evaluation behaviour (BatchNorm statistics, dropout). moth sets
/// evaluation mode for its inversions; the caller's own training loop sets
/// training mode again. Returns 0, or non-zero to fail.
pub type moth_set_train_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, train: bool) -> i32>;

thread_local! {
    /// Message a callback left with `moth_callback_set_error`.
    static CALLBACK_MESSAGE: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// A classifier implemented by caller callbacks.
pub(crate) struct CallbackClassifier {
    forward: unsafe extern "C" fn(*mut c_void, *const moth_tensor, *mut *mut moth_tensor) -> i32,
    set_train: moth_set_train_fn,
    user: *mut c_void,
    free: moth_free_fn,
    device: Device,
}

/// Forgets any message a callback left on this thread (before calling one).
pub(super) fn clear_callback_message() {
    CALLBACK_MESSAGE.with(|m| m.borrow_mut().take());
}

/// The error of callback `what` that returned `status`, with the message
/// it left with `moth_callback_set_error`, if any.
pub(super) fn callback_failure(what: &str, status: i32) -> Error {
    let detail = CALLBACK_MESSAGE
        .with(|m| m.borrow_mut().take())
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    Error::Callback(format!("{what} callback returned status {status}{detail}"))
}

impl CallbackClassifier {
    fn fail(&self, what: &str, status: i32) -> Error {
        callback_failure(what, status)
    }
}

impl Drop for CallbackClassifier {
    fn drop(&mut self) {
        if let Some(free) = self.free {
            // SAFETY: the caller asked moth to free `user` with `free` once.
            unsafe { free(self.user) };
        }
    }
}

impl Classifier for CallbackClassifier {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        CALLBACK_MESSAGE.with(|m| m.borrow_mut().take());
        let input = Lent::new(moth_tensor::new(x.shallow_clone()));
        let mut logits: *mut moth_tensor = std::ptr::null_mut();
        // Gradients must flow from the logits back to an input that wants
        // them (the inversion's backward pass; libtorch crashes rather than
        // fails on a graph that does not reach the input).
        let wants_grad = x.requires_grad() && crate::torch::grad::is_enabled();
        let status = {
            // Whatever grad mode the callback leaves behind, moth's is back
            // when it returns.
            let _grad = crate::torch::grad::GradGuard::keep();
            // SAFETY: the caller registered `forward` for this use; `input`
            // outlives the call and `logits` is a valid out-pointer.
            unsafe { (self.forward)(self.user, input.as_ptr(), &mut logits) }
        };
        let owned = take_logits(logits, &input)?;
        if status != 0 {
            return Err(self.fail("forward", status));
        }
        let logits = owned.ok_or_else(|| {
            Error::Callback("forward callback returned 0 but left logits_out NULL".into())
        })?;
        if wants_grad && !logits.tensor.requires_grad() {
            return Err(Error::Callback(
                "forward callback returned logits that do not require gradients \
                 (detached, or computed with autograd off); gradients must flow \
                 from the logits back to the input"
                    .into(),
            ));
        }
        Ok(logits.tensor)
    }

    fn set_train(&mut self, train: bool) -> Result<()> {
        if let Some(f) = self.set_train {
            CALLBACK_MESSAGE.with(|m| m.borrow_mut().take());
            // SAFETY: the caller registered `f` for this use.
            let status = unsafe { f(self.user, train) };
            if status != 0 {
                return Err(self.fail("set_train", status));
            }
        }
        Ok(())
    }

    fn device(&self) -> Device {
        self.device
    }
}

/// Takes ownership of what a forward callback stored in `*logits_out`:
/// nothing, or a live tensor handle of its own. moth's own `input` (which
/// lives on moth's stack) and anything that is not a live tensor handle are
/// refused, and left alone.
fn take_logits(logits: *mut moth_tensor, input: &Lent<moth_tensor>) -> Result<Option<moth_tensor>> {
    if std::ptr::eq(logits, input.as_ptr()) {
        return Err(Error::Callback(
            "forward callback stored its input handle in logits_out; the input is \
             borrowed: store a new tensor handle (moth_tensor_from_at_tensor)"
                .into(),
        ));
    }
    release(logits, "logits_out")
        .map_err(|e| Error::Callback(format!("forward callback: {}", e.message)))
}

/// What a classifier handle holds.
pub(crate) enum ClassifierBody {
    /// A model moth loaded.
    Model(Box<Model>),
    /// Caller callbacks on tensors.
    Callback(CallbackClassifier),
    /// Caller callbacks on host buffers, with their own input gradient.
    Host(HostClassifier),
}

impl ClassifierBody {
    fn inner(&self) -> &dyn Classifier {
        match self {
            ClassifierBody::Model(m) => &**m,
            ClassifierBody::Callback(c) => c,
            ClassifierBody::Host(h) => h,
        }
    }
}

impl Classifier for ClassifierBody {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.inner().forward(x)
    }
    fn set_train(&mut self, train: bool) -> Result<()> {
        match self {
            ClassifierBody::Model(m) => m.set_train(train),
            ClassifierBody::Callback(c) => c.set_train(train),
            ClassifierBody::Host(h) => h.set_train(train),
        }
    }
    fn device(&self) -> Device {
        self.inner().device()
    }
    fn backprop(&self) -> Backprop {
        self.inner().backprop()
    }
    fn input_grad(&self, x: &Tensor, grad_logits: &Tensor) -> Result<Tensor> {
        self.inner().input_grad(x, grad_logits)
    }
}

/// A classifier handle (opaque). Free with `moth_classifier_free`. Calls
/// that use it are serialised by its own mutex; it may be shared by several
/// sessions.
pub struct moth_classifier {
    pub(crate) body: Guarded<ClassifierBody>,
}

impl Handle for moth_classifier {
    const TAG: u64 = u64::from_be_bytes(*b"mothCLAS");
    const WHAT: &'static str = "classifier";
}

/// Loads a TorchScript module (saved with `torch.jit.save`) whose forward
/// takes `[n, c, h, w]` float inputs in `[0, 1]` (normalisation belongs
/// inside the module) and returns logits `[n, classes]`, onto `device`. The
/// class count is read from a probe forward pass. A file that cannot be
/// opened, or a folder, gives `MOTH_STATUS_IO`; one that is not a
/// TorchScript module, or
/// whose forward fails on the probe, `MOTH_STATUS_FORMAT`.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_classifier_from_torchscript(
    path: *const c_char,
    c: i64,
    h: i64,
    w: i64,
    device: moth_device,
    out_classifier: *mut *mut moth_classifier,
) -> moth_status {
    ffi_boundary!("moth_classifier_from_torchscript", {
        init_out(out_classifier);
        let o = out(out_classifier, "out_classifier")?;
        let path = c_str(path, "path")?;
        if c <= 0 || h <= 0 || w <= 0 {
            return Err(FfiError::invalid(format!(
                "input shape [{c}, {h}, {w}] must be positive"
            )));
        }
        let dev = device_of(device)?;
        let model = Model::torchscript(Path::new(path), [c, h, w], dev)?;
        *o = into_handle(moth_classifier {
            body: Guarded::new("classifier", ClassifierBody::Model(Box::new(model))),
        });
        Ok(())
    })
}

/// Creates a classifier from caller callbacks. `forward` is required;
/// `set_train` may be NULL (the model has no train/eval difference);
/// `user_data` is passed to both; `free_user_data` (may be NULL) is called
/// with `user_data` once, when the classifier is freed (when this call
/// fails, the caller keeps ownership of `user_data`). `device` is where the model's
/// parameters live: moth moves inputs there before calling `forward`.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_classifier_from_callback(
    forward: moth_forward_fn,
    set_train: moth_set_train_fn,
    user_data: *mut c_void,
    free_user_data: moth_free_fn,
    device: moth_device,
    out_classifier: *mut *mut moth_classifier,
) -> moth_status {
    ffi_boundary!("moth_classifier_from_callback", {
        init_out(out_classifier);
        let o = out(out_classifier, "out_classifier")?;
        let forward = forward.ok_or_else(|| FfiError::null("forward"))?;
        let dev = device_of(device)?;
        *o = into_handle(moth_classifier {
            body: Guarded::new(
                "classifier",
                ClassifierBody::Callback(CallbackClassifier {
                    forward,
                    set_train,
                    user: user_data,
                    free: free_user_data,
                    device: dev,
                }),
            ),
        });
        Ok(())
    })
}

/// Switches the classifier between training and evaluation mode (calls the
/// `set_train` callback, or sets a TorchScript module's mode).
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_classifier_set_train(
    classifier: *mut moth_classifier,
    train: bool,
) -> moth_status {
    ffi_boundary!("moth_classifier_set_train", {
        let clf = handle(classifier, "classifier")?;
        let mut body = clf.body.lock()?;
        Ok(body.set_train(train)?)
    })
}

/// Computes logits for `input` (no gradients) into a new tensor handle, for
/// example to measure clean accuracy with a TorchScript classifier.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_classifier_forward(
    classifier: *mut moth_classifier,
    input: *const moth_tensor,
    out_logits: *mut *mut moth_tensor,
) -> moth_status {
    ffi_boundary!("moth_classifier_forward", {
        init_out(out_logits);
        let o = out(out_logits, "out_logits")?;
        let clf = handle(classifier, "classifier")?;
        let x = &handle(input, "input")?.tensor;
        let body = clf.body.lock()?;
        let logits = crate::torch::grad::no_grad(|| -> Result<Tensor> {
            body.forward(&x.f_to_device(body.device())?)
        })?;
        *o = into_handle(moth_tensor::new(logits));
        Ok(())
    })
}

/// Saves a TorchScript classifier (with any training the caller did through
/// moth) to `path`, loadable from Python with `torch.jit.load`. A callback
/// classifier gives `MOTH_STATUS_UNSUPPORTED` (its model is the caller's);
/// a folder that does not exist, `MOTH_STATUS_IO`.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_classifier_save(
    classifier: *mut moth_classifier,
    path: *const c_char,
) -> moth_status {
    ffi_boundary!("moth_classifier_save", {
        let clf = handle(classifier, "classifier")?;
        let path = c_str(path, "path")?;
        let body = clf.body.lock()?;
        match &*body {
            ClassifierBody::Model(m) => Ok(m.save(Path::new(path), &[])?),
            ClassifierBody::Callback(_) | ClassifierBody::Host(_) => Err(FfiError::new(
                moth_status::Unsupported,
                "a callback classifier's model belongs to the caller; save it there",
            )),
        }
    })
}

/// Frees a classifier (calling its `free_user_data`, if any).
/// `moth_classifier_free(NULL)` does nothing.
#[no_mangle]
pub unsafe extern "C" fn moth_classifier_free(classifier: *mut moth_classifier) {
    ffi_boundary!("moth_classifier_free", void, {
        drop(release(classifier, "classifier")?);
        Ok(())
    })
}

/// Leaves a message for moth to report when the callback running on this
/// thread returns a non-zero status (for example a C++ exception's
/// `what()`). Call it from inside a forward, input_grad or set_train
/// callback, just before returning non-zero. NULL clears it.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn moth_callback_set_error(message: *const c_char) -> moth_status {
    ffi_boundary!("moth_callback_set_error", {
        let m = if message.is_null() {
            None
        } else {
            Some(c_str(message, "message")?.to_string())
        };
        CALLBACK_MESSAGE.with(|c| *c.borrow_mut() = m);
        Ok(())
    })
}
