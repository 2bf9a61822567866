//! Classifiers: the [`Classifier`] abstraction that inversion and hardening
//! need, moth's built-in CNNs, and TorchScript models exported from PyTorch.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

use crate::{Error, Result};

/// What moth needs from a model: logits for a batch in `[0,1]` pixel space,
/// with gradients flowing back to the input, and a train/eval switch.
///
/// Inversion runs the model in eval mode and takes gradients only with
/// respect to trigger parameters; the training step runs it in train mode.
pub trait Classifier {
    /// Logits `[n, classes]` for inputs `[n, C, H, W]` in `[0, 1]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
    /// Switches between training (true) and evaluation (false) behaviour
    /// (BatchNorm statistics, dropout).
    fn set_train(&mut self, train: bool) -> Result<()>;
    /// Device holding the parameters; inputs are moved there.
    fn device(&self) -> Device;
    /// How a loss on the logits reaches the input: through libtorch's
    /// autograd (the default), or, for a model outside libtorch (host
    /// callbacks, another framework), through [`Classifier::input_grad`].
    /// See [`crate::torch::gradient`].
    fn backprop(&self) -> Backprop {
        Backprop::Autograd
    }
    /// For a [`Backprop::InputGrad`] model: the vector-Jacobian product
    /// `dL/dx = J(x)^T g` for inputs `x` `[n, C, H, W]` and
    /// `g = dL/dlogits` `[n, classes]`, without gradients of its own.
    fn input_grad(&self, _x: &Tensor, _grad_logits: &Tensor) -> Result<Tensor> {
        Err(Error::Unsupported(
            "this model computes input gradients through autograd, not on request".into(),
        ))
    }
}

/// How gradients reach a classifier's input (see [`Classifier::backprop`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backprop {
    /// The logits carry a libtorch graph back to the input.
    Autograd,
    /// The logits carry no graph; the model answers
    /// [`Classifier::input_grad`] instead.
    InputGrad,
}

/// Fails with an I/O error when the folder `path` would be written in does
/// not exist (libtorch reports that as a failure of its own, with a C++
/// backtrace).
fn check_folder_of(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => return Ok(()),
    };
    let writing = || format!("writing {}", path.display());
    let meta = std::fs::metadata(dir).map_err(|e| Error::io(writing(), e))?;
    if !meta.is_dir() {
        return Err(Error::io(
            writing(),
            std::io::Error::from_raw_os_error(libc::ENOTDIR),
        ));
    }
    Ok(())
}

/// The built-in architectures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Arch {
    /// Two conv blocks and two dense layers for 1x28x28 inputs (Fashion-MNIST).
    Cnn28,
    /// Three conv blocks and two dense layers for 3x32x32 inputs (CIFAR-like).
    Cnn32,
}

impl Arch {
    /// The architecture's name in user-facing text.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Cnn28 => "cnn28",
            Arch::Cnn32 => "cnn32",
        }
    }

    /// Input shape `[C, H, W]` the architecture expects.
    pub fn input_shape(self) -> [i64; 3] {
        match self {
            Arch::Cnn28 => [1, 28, 28],
            Arch::Cnn32 => [3, 32, 32],
        }
    }

    /// Per-channel normalisation applied inside the model, after stamping.
    fn normalisation(self) -> (Vec<f32>, Vec<f32>) {
        match self {
            Arch::Cnn28 => (vec![0.2860], vec![0.3530]),
            Arch::Cnn32 => (vec![0.4914, 0.4822, 0.4465], vec![0.2470, 0.2435, 0.2616]),
        }
    }

    fn channels(self) -> Vec<i64> {
        match self {
            Arch::Cnn28 => vec![16, 32],
            Arch::Cnn32 => vec![32, 64, 128],
        }
    }
}

/// Builds the layers of a built-in CNN. tch's layer builders have no
/// fallible form, so they run under [`catch_tch_panic`].
fn build_net(p: &nn::Path, arch: Arch, num_classes: i64) -> Result<nn::SequentialT> {
    let [c, _, _] = arch.input_shape();
    let (mean, std) = arch.normalisation();
    let mean = Tensor::f_from_slice(&mean)?
        .f_reshape([1, c, 1, 1])?
        .f_to_device(p.device())?;
    let std = Tensor::f_from_slice(&std)?
        .f_reshape([1, c, 1, 1])?
        .f_to_device(p.device())?;
    catch_tch_panic("building the built-in CNN", || {
        layers(p, arch, num_classes, mean, std)
    })
}

/// The layers of [`build_net`]; the closures are the ops between them.
fn layers(
    p: &nn::Path,
    arch: Arch,
    num_classes: i64,
    mean: Tensor,
    std: Tensor,
) -> nn::SequentialT {
    let [c, h, _] = arch.input_shape();
    let mut seq = nn::seq_t().add_fn(move |x| (x - &mean) / &std);
    let conv_cfg = nn::ConvConfig {
        padding: 1,
        ..Default::default()
    };
    let mut in_c = c;
    let mut side = h;
    for (i, out_c) in arch.channels().into_iter().enumerate() {
        seq = seq
            .add(nn::conv2d(p / format!("conv{i}"), in_c, out_c, 3, conv_cfg))
            .add(nn::batch_norm2d(
                p / format!("bn{i}"),
                out_c,
                Default::default(),
            ))
            .add_fn(|x| x.relu().max_pool2d_default(2));
        in_c = out_c;
        side /= 2;
    }
    let hidden = if arch == Arch::Cnn28 { 128 } else { 256 };
    seq.add_fn(|x| x.flatten(1, -1))
        .add(nn::linear(
            p / "fc0",
            in_c * side * side,
            hidden,
            Default::default(),
        ))
        .add_fn(|x| x.relu())
        .add_fn_t(|x, train| x.dropout(0.25, train))
        .add(nn::linear(
            p / "fc1",
            hidden,
            num_classes,
            Default::default(),
        ))
}

enum Body {
    Builtin(Arch, nn::SequentialT),
    Script(tch::TrainableCModule),
}

/// A trainable model: one of the built-in CNNs or a TorchScript module.
/// Its parameters live in a `VarStore`, so moth's own optimiser trains both.
pub struct Model {
    vs: nn::VarStore,
    body: Body,
    train: bool,
    num_classes: i64,
    input_shape: [i64; 3],
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("kind", &self.describe())
            .field("num_classes", &self.num_classes)
            .field("input_shape", &self.input_shape)
            .finish()
    }
}

/// How a built-in model is stored: its architecture, class names and
/// every variable of its VarStore (BatchNorm statistics included).
#[derive(Serialize, Deserialize)]
struct SavedModel {
    arch: Arch,
    classes: Vec<String>,
    variables: Vec<(String, crate::io::tensor_codec::SavedTensor)>,
}

/// A complete copy of a model's state, for run checkpoints: built-in models
/// as their variables, TorchScript models as the whole serialised module
/// (buffers such as BatchNorm statistics are not parameters, so the module
/// itself is stored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ModelState {
    /// A built-in CNN.
    Builtin {
        /// Architecture.
        arch: Arch,
        /// Class names.
        classes: Vec<String>,
        /// Every variable, name-sorted.
        variables: Vec<(String, crate::io::tensor_codec::SavedTensor)>,
    },
    /// A TorchScript module.
    TorchScript {
        /// The module as `torch.jit.save` writes it.
        #[serde(with = "serde_bytes")]
        module: Vec<u8>,
        /// `[C, H, W]` of its inputs.
        input_shape: [i64; 3],
    },
}

impl Model {
    /// Captures the model's complete state.
    pub fn snapshot(&self, classes: &[String]) -> Result<ModelState> {
        match &self.body {
            Body::Builtin(arch, _) => Ok(ModelState::Builtin {
                arch: *arch,
                classes: classes.to_vec(),
                variables: self.variables_saved()?,
            }),
            Body::Script(m) => {
                let dir =
                    tempfile::tempdir().map_err(|e| Error::io("creating a temporary folder", e))?;
                let path = dir.path().join("module.pt");
                m.save(&path)?;
                let module =
                    std::fs::read(&path).map_err(|e| Error::io("reading the saved module", e))?;
                Ok(ModelState::TorchScript {
                    module,
                    input_shape: self.input_shape,
                })
            }
        }
    }

    /// Rebuilds a model from [`Model::snapshot`].
    pub fn from_snapshot(state: &ModelState, device: Device) -> Result<Self> {
        match state {
            ModelState::Builtin {
                arch,
                classes,
                variables,
            } => {
                let mut m = Self::builtin(*arch, classes.len() as i64, device)?;
                m.restore_variables(variables)?;
                Ok(m)
            }
            ModelState::TorchScript {
                module,
                input_shape,
            } => {
                let dir =
                    tempfile::tempdir().map_err(|e| Error::io("creating a temporary folder", e))?;
                let path = dir.path().join("module.pt");
                std::fs::write(&path, module).map_err(|e| Error::io("writing the module", e))?;
                Self::torchscript(&path, *input_shape, device)
            }
        }
    }

    /// A freshly initialised built-in CNN (weights from libtorch's RNG: call
    /// `tch::manual_seed` first for reproducibility).
    pub fn builtin(arch: Arch, num_classes: i64, device: Device) -> Result<Self> {
        if num_classes < 2 {
            return Err(Error::input(format!(
                "a classifier needs at least 2 classes, got {num_classes}"
            )));
        }
        let vs = nn::VarStore::new(device);
        let net = build_net(&vs.root(), arch, num_classes)?;
        Ok(Model {
            vs,
            body: Body::Builtin(arch, net),
            train: false,
            num_classes,
            input_shape: arch.input_shape(),
        })
    }

    /// Loads a TorchScript module exported from PyTorch (`torch.jit.save`).
    /// `input_shape` is `[C, H, W]` of its inputs, which must be in `[0,1]`
    /// (normalisation belongs inside the module). The class count is read
    /// from one probe forward pass.
    pub fn torchscript(path: &Path, input_shape: [i64; 3], device: Device) -> Result<Self> {
        // libtorch would report a missing file, or a folder, as a parse error.
        let opening = || format!("opening TorchScript model {}", path.display());
        let meta = std::fs::metadata(path).map_err(|e| Error::io(opening(), e))?;
        if meta.is_dir() {
            let e = std::io::Error::from_raw_os_error(libc::EISDIR);
            return Err(Error::io(opening(), e));
        }
        std::fs::File::open(path).map_err(|e| Error::io(opening(), e))?;
        let vs = nn::VarStore::new(device);
        let module = tch::TrainableCModule::load(path, vs.root()).map_err(|e| {
            Error::format(
                path,
                format!(
                    "cannot load TorchScript module: {}",
                    crate::error::torch_message(&e)
                ),
            )
        })?;
        let mut model = Model {
            vs,
            body: Body::Script(module),
            train: false,
            num_classes: 0,
            input_shape,
        };
        model.set_train(false)?;
        let probe = Tensor::f_zeros(
            [1, input_shape[0], input_shape[1], input_shape[2]],
            (Kind::Float, device),
        )?;
        let out = crate::torch::grad::no_grad(|| model.forward(&probe)).map_err(|e| {
            Error::format(
                path,
                format!("probe forward with input shape {input_shape:?} failed: {e}"),
            )
        })?;
        let s = out.size();
        if s.len() != 2 || s[0] != 1 || s[1] < 2 {
            return Err(Error::format(
                path,
                format!("module must return logits [n, classes], returned {s:?}"),
            ));
        }
        model.num_classes = s[1];
        Ok(model)
    }

    /// Loads a model file: `.pt` is TorchScript (needs `input_shape`), anything
    /// else a built-in model written by [`Model::save`].
    pub fn load(
        path: &Path,
        input_shape: Option<[i64; 3]>,
        device: Device,
    ) -> Result<(Self, Vec<String>)> {
        if path.extension().is_some_and(|e| e == "pt" || e == "pth") {
            let shape = input_shape.ok_or_else(|| {
                Error::input(format!(
                    "{}: a TorchScript model needs its input shape",
                    path.display()
                ))
            })?;
            let m = Self::torchscript(path, shape, device)?;
            let names = (0..m.num_classes).map(|i| format!("class {i}")).collect();
            return Ok((m, names));
        }
        let saved: SavedModel =
            crate::io::container::load(path, crate::io::container::PayloadKind::Model)?;
        let mut model = Self::builtin(saved.arch, saved.classes.len() as i64, device)?;
        model.restore_variables(&saved.variables)?;
        Ok((model, saved.classes))
    }

    /// Saves the model: TorchScript models as TorchScript (loadable from
    /// Python with `torch.jit.load`), built-in models as a moth model file.
    pub fn save(&self, path: &Path, classes: &[String]) -> Result<()> {
        match &self.body {
            Body::Script(m) => {
                check_folder_of(path)?;
                m.save(path).map_err(|e| {
                    let why = crate::error::torch_message(&e);
                    Error::format(path, format!("cannot save TorchScript module: {why}"))
                })
            }
            Body::Builtin(arch, _) => {
                let saved = SavedModel {
                    arch: *arch,
                    classes: classes.to_vec(),
                    variables: self.variables_saved()?,
                };
                crate::io::container::save(path, crate::io::container::PayloadKind::Model, &saved)
            }
        }
    }

    /// All variables (parameters and buffers) as name-sorted saved tensors.
    pub fn variables_saved(&self) -> Result<Vec<(String, crate::io::tensor_codec::SavedTensor)>> {
        let mut vars: Vec<_> = self.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars.into_iter()
            .map(|(n, t)| Ok((n, crate::io::tensor_codec::SavedTensor::from_tensor(&t)?)))
            .collect()
    }

    /// Copies saved values into the model's variables, checking names and shapes.
    pub fn restore_variables(
        &mut self,
        saved: &[(String, crate::io::tensor_codec::SavedTensor)],
    ) -> Result<()> {
        let vars = self.vs.variables();
        if vars.len() != saved.len() {
            return Err(Error::Checkpoint(format!(
                "model has {} variables, saved state has {}",
                vars.len(),
                saved.len()
            )));
        }
        for (name, st) in saved {
            let var = vars.get(name).ok_or_else(|| {
                Error::Checkpoint(format!(
                    "saved variable '{name}' does not exist in the model"
                ))
            })?;
            let value = st.to_tensor(self.vs.device())?;
            if value.size() != var.size() {
                return Err(Error::Checkpoint(format!(
                    "variable '{name}' has shape {:?}, saved {:?}",
                    var.size(),
                    value.size()
                )));
            }
            crate::torch::grad::no_grad(|| var.shallow_clone().f_copy_(&value))?;
        }
        Ok(())
    }

    /// Freezes (false) or unfreezes (true) the parameters. A frozen model
    /// can still be inverted (gradients flow to the input) and can be traced
    /// into TorchScript, whose constants must not require gradients.
    pub fn set_trainable(&mut self, trainable: bool) {
        if trainable {
            self.vs.unfreeze()
        } else {
            self.vs.freeze()
        }
    }

    /// The model's running statistics: its BatchNorm `running_mean` and
    /// `running_var` variables, name-sorted. Only
    /// built-in models expose them; a TorchScript module keeps its buffers
    /// out of the VarStore.
    pub fn statistics(&self) -> Result<Vec<(String, Tensor)>> {
        if self.is_torchscript() {
            return Err(Error::Unsupported(
                "clean statistics need a built-in model: a TorchScript module's buffers are not \
                 reachable (turn them off: --clean-statistics=off, or \
                 RunConfig::clean_statistics = false)"
                    .into(),
            ));
        }
        let mut vars: Vec<_> = self
            .vs
            .variables()
            .into_iter()
            .filter(|(n, _)| n.ends_with("running_mean") || n.ends_with("running_var"))
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(vars)
    }

    /// Trainable parameters, in a stable (name-sorted) order.
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        let mut vars: Vec<_> = self
            .vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    /// Number of classes the model predicts.
    pub fn num_classes(&self) -> i64 {
        self.num_classes
    }

    /// `[C, H, W]` of one input.
    pub fn input_shape(&self) -> [i64; 3] {
        self.input_shape
    }

    /// Whether this is a TorchScript model.
    pub fn is_torchscript(&self) -> bool {
        matches!(self.body, Body::Script(_))
    }

    /// A short description for reports.
    pub fn describe(&self) -> String {
        match &self.body {
            Body::Builtin(a, _) => {
                let [c, h, w] = a.input_shape();
                format!("built-in {} CNN for {c}x{h}x{w} inputs", a.name())
            }
            Body::Script(_) => "TorchScript module".to_string(),
        }
    }
}

impl Classifier for Model {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.body {
            Body::Builtin(arch, net) => {
                check_builtin_input(*arch, x)?;
                catch_tch_panic("the built-in CNN's forward pass", || {
                    net.forward_t(x, self.train)
                })
            }
            Body::Script(m) => Ok(m.forward_ts(&[x])?),
        }
    }

    fn set_train(&mut self, train: bool) -> Result<()> {
        if let Body::Script(m) = &mut self.body {
            if train {
                m.f_set_train()?
            } else {
                m.f_set_eval()?
            }
        }
        self.train = train;
        Ok(())
    }

    fn device(&self) -> Device {
        self.vs.device()
    }
}

/// Mini-batch size of accuracy evaluations: large enough to keep a GPU
/// busy, small enough for the CPU caches.
pub const ACCURACY_BATCH: i64 = 500;

/// Clean accuracy of `model` (in eval mode) on `images`/`labels`, in `[0,1]`.
pub fn accuracy(
    model: &mut dyn Classifier,
    images: &Tensor,
    labels: &Tensor,
    batch: i64,
) -> Result<f64> {
    model.set_train(false)?;
    let n = images.size()[0];
    if n == 0 {
        return Err(Error::input("accuracy of an empty set"));
    }
    let device = model.device();
    let mut correct = Tensor::f_zeros([], (Kind::Int64, device))?;
    crate::torch::grad::no_grad(|| -> Result<()> {
        let mut start = 0;
        while start < n {
            let len = batch.min(n - start);
            let x = images.f_narrow(0, start, len)?.f_to_device(device)?;
            let y = labels.f_narrow(0, start, len)?.f_to_device(device)?;
            let pred = model.forward(&x)?.f_argmax(-1, false)?;
            correct = correct.f_add(&pred.f_eq_tensor(&y)?.f_sum(Kind::Int64)?)?;
            start += len;
        }
        Ok(())
    })?;
    Ok(correct.f_int64_value(&[])? as f64 / n as f64)
}

/// Runs tch code that has no fallible form (layer builders, the closures of
/// a `SequentialT`), turning a libtorch panic into [`Error::Torch`]. A
/// panic of any other kind is not ours to hide and keeps unwinding.
fn catch_tch_panic<T>(what: &str, f: impl FnOnce() -> T) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|payload| {
        let text = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()));
        match text {
            Some(t) => Error::Torch(tch::TchError::Torch(format!("{what}: {t}"))),
            None => std::panic::resume_unwind(payload),
        }
    })
}

/// Refuses a batch the built-in CNN cannot take before libtorch sees it:
/// `[n, C, H, W]` with the architecture's `[C, H, W]`, floating point.
fn check_builtin_input(arch: Arch, x: &Tensor) -> Result<()> {
    let want = arch.input_shape();
    let size = x.size();
    if size.len() != 4 || size[1..] != want {
        return Err(Error::input(format!(
            "the built-in CNN takes batches of shape [n, {}, {}, {}], got {size:?}",
            want[0], want[1], want[2]
        )));
    }
    if !x.f_is_floating_point()? {
        return Err(Error::input(format!(
            "the built-in CNN takes floating-point pixels, got {:?}",
            x.kind()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_libtorch_panic_becomes_a_torch_error_and_others_keep_unwinding() {
        let e = catch_tch_panic("probing", || panic!("{}", String::from("bad op"))).unwrap_err();
        assert!(matches!(&e, Error::Torch(_)), "{e}");
        assert!(e.to_string().contains("probing: bad op"), "{e}");
        let other = std::panic::catch_unwind(|| {
            let _ = catch_tch_panic("probing", || std::panic::panic_any(7_u8));
        });
        assert!(other.is_err());
    }
}
