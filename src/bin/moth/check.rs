//! Checks made before a command's first forward pass, so that a model that
//! cannot work on the data is refused with a message naming both, instead of
//! failing somewhere inside libtorch or producing meaningless results.

use std::path::Path;

use moth::io::dataset::Dataset;
use moth::torch::model::{Classifier, Model};

/// How many images the finiteness probe runs the model on.
const PROBE_IMAGES: i64 = 64;

fn shape_text(s: [i64; 3]) -> String {
    format!("{}x{}x{}", s[0], s[1], s[2])
}

/// Refuses a model whose input shape or class count differs from the data's.
pub fn model_fits_data(
    model: &Model,
    model_path: &Path,
    data: &Dataset,
    data_dir: &Path,
) -> moth::Result<()> {
    let (want, have) = (model.input_shape(), data.input_shape());
    let (classes, labels) = (model.num_classes(), data.num_classes() as i64);
    if want == have && classes == labels {
        return Ok(());
    }
    Err(moth::Error::Config(format!(
        "the model {} ({}) takes {} inputs and predicts {classes} classes, \
         but the data in {} has {} images and {labels} classes",
        model_path.display(),
        model.describe(),
        shape_text(want),
        data_dir.display(),
        shape_text(have),
    )))
}

/// Refuses a model whose logits on the first images of `data` are not all
/// finite: every trigger inversion on it would fail.
/// The probe runs in eval mode (in training mode it would move BatchNorm
/// statistics), where the measurements that follow run too.
pub fn outputs_are_finite(
    model: &mut Model,
    model_path: &Path,
    data: &Dataset,
) -> moth::Result<()> {
    model.set_train(false)?;
    let n = PROBE_IMAGES.min(data.len() as i64);
    let x = data.images.f_narrow(0, 0, n)?.f_to(model.device())?;
    let logits = tch::no_grad(|| model.forward(&x))?;
    let finite = logits.f_isfinite()?.f_all()?;
    if bool::try_from(&finite)? {
        return Ok(());
    }
    Err(moth::Error::input(format!(
        "the outputs of the model {} on {n} test images are not finite (NaN or infinite \
         logits): its class distances cannot be measured",
        model_path.display()
    )))
}

/// Both checks: the model fits the data and its outputs on it are finite.
pub fn model_suits_data(
    model: &mut Model,
    model_path: &Path,
    data: &Dataset,
    data_dir: &Path,
) -> moth::Result<()> {
    model_fits_data(model, model_path, data, data_dir)?;
    outputs_are_finite(model, model_path, data)
}
