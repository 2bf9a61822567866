//! `moth train`: the built-in CNN on Fashion-MNIST; also the default model
//! the other commands train first when it is missing.

use std::path::Path;
use std::time::Instant;

use moth::io::dataset::{Dataset, Split};
use moth::torch::model::{self, Arch, Model};
use moth::torch::train::{self, Optimizer, OptimizerConfig};

use crate::args::{check_batch, Common, TrainArgs, DEFAULT_MODEL};
use crate::progress::bar;
use crate::report::device_name;

/// Epochs and batch size of the default model.
const DEFAULT_EPOCHS: usize = 5;
const DEFAULT_BATCH: usize = 128;

/// What to train and where to write it.
struct Plan<'a> {
    epochs: usize,
    batch: usize,
    seed: u64,
    out: &'a Path,
}

pub fn run(a: &TrainArgs) -> moth::Result<()> {
    check_batch(a.batch)?;
    let device = a.common.device.resolve()?;
    let data = a.common.data_dir();
    let train_set = limited(Dataset::fashion_mnist(Some(&data), Split::Train)?, a.limit)?;
    let test_set = Dataset::fashion_mnist(Some(&data), Split::Test)?;
    check_builtin_fits(&train_set, &data)?;
    let plan = Plan {
        epochs: a.epochs,
        batch: a.batch,
        seed: a.common.seed,
        out: &a.out,
    };
    train_base_model(&train_set, &test_set, device, &plan).map(|_| ())
}

/// The first `limit` samples of `data` (all of them without a limit).
fn limited(data: Dataset, limit: Option<usize>) -> moth::Result<Dataset> {
    match limit {
        None => Ok(data),
        Some(0) => Err(moth::Error::Config("--limit must be at least 1".into())),
        Some(n) if n >= data.len() => Ok(data),
        Some(n) => data.select(&(0..n as i64).collect::<Vec<_>>()),
    }
}

/// The built-in CNN takes 1x28x28 images: other data is refused before
/// training starts.
fn check_builtin_fits(data: &Dataset, dir: &Path) -> moth::Result<()> {
    let (want, have) = (Arch::Cnn28.input_shape(), data.input_shape());
    if want == have {
        return Ok(());
    }
    Err(moth::Error::Config(format!(
        "the built-in CNN takes {}x{}x{} images, the data in {} has {}x{}x{} images",
        want[0],
        want[1],
        want[2],
        dir.display(),
        have[0],
        have[1],
        have[2]
    )))
}

/// Loads the model, training the default one first when it does not exist
/// yet. That training is announced on stderr with the absolute path: run
/// from another folder, the relative default path points somewhere new.
pub fn load_or_train(
    path: &Path,
    common: &Common,
    shape: Option<[i64; 3]>,
) -> moth::Result<(Model, Vec<String>)> {
    let device = common.device.resolve()?;
    if !path.exists() && path == Path::new(DEFAULT_MODEL) {
        let data = common.data_dir();
        let train_set = Dataset::fashion_mnist(Some(&data), Split::Train)?;
        let test_set = Dataset::fashion_mnist(Some(&data), Split::Test)?;
        check_builtin_fits(&train_set, &data)?;
        let shown = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        eprintln!(
            "moth: no model at {}: training the default model there first \
             ({DEFAULT_EPOCHS} epochs on the {} images in {}; --model picks another)",
            shown.display(),
            train_set.len(),
            data.display()
        );
        let plan = Plan {
            epochs: DEFAULT_EPOCHS,
            batch: DEFAULT_BATCH,
            seed: common.seed,
            out: path,
        };
        let m = train_base_model(&train_set, &test_set, device, &plan)?;
        return Ok((m, train_set.classes.clone()));
    }
    Model::load(path, shape, device)
}

fn train_base_model(
    train_set: &Dataset,
    test_set: &Dataset,
    device: tch::Device,
    plan: &Plan,
) -> moth::Result<Model> {
    let (epochs, batch) = (plan.epochs, plan.batch);
    println!(
        "training the built-in CNN on Fashion-MNIST ({} images, {epochs} epochs, batch {batch}, {})",
        train_set.len(),
        device_name(device)
    );
    tch::manual_seed(plan.seed as i64);
    let mut model = Model::builtin(Arch::Cnn28, train_set.num_classes() as i64, device)?;
    let start = Instant::now();
    fit(&mut model, train_set, plan)?;
    let acc = model::accuracy(
        &mut model,
        &test_set.images,
        &test_set.labels,
        model::ACCURACY_BATCH,
    )?;
    println!(
        "trained in {:.1} s: test accuracy {:.2}% on {} images",
        start.elapsed().as_secs_f64(),
        100.0 * acc,
        test_set.len()
    );
    save(&model, plan.out, &train_set.classes)?;
    Ok(model)
}

/// The library's training loop with a progress bar; Ctrl-C stops it (no
/// model is written then).
fn fit(model: &mut Model, train_set: &Dataset, plan: &Plan) -> moth::Result<()> {
    let mut opt = Optimizer::new(OptimizerConfig::pretraining(), model)?;
    let steps = train_set.len().div_ceil(plan.batch) * plan.epochs;
    let pb = bar(
        steps as u64,
        "{msg} [{bar:30}] {pos}/{len} steps, ETA {eta}",
    );
    let epochs = plan.epochs;
    train::fit(
        model,
        &mut opt,
        train_set,
        epochs,
        plan.batch,
        plan.seed,
        &mut |e, i, total, loss| {
            if crate::interrupted() {
                pb.finish_and_clear();
                crate::exit_stopped(&format!(
                    "interrupted in epoch {} of {epochs}: no model written",
                    e + 1
                ));
            }
            pb.set_position((e * total + i) as u64);
            pb.set_message(format!("epoch {}/{epochs} loss {loss:.3}", e + 1));
        },
    )?;
    pb.finish_and_clear();
    Ok(())
}

fn save(model: &Model, out: &Path, classes: &[String]) -> moth::Result<()> {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| moth::Error::io(format!("creating {}", dir.display()), e))?;
    }
    model.save(out, classes)?;
    println!("model written to {}", out.display());
    Ok(())
}
