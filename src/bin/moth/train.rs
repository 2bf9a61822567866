//! `moth train`: a built-in CNN on the data (cnn28 or cnn32, by the images'
//! shape); also the default model the other commands train first when it is
//! missing.

use std::path::Path;
use std::time::Instant;

use moth::io::data_source::DataSource;
use moth::io::dataset::{BatchSource, Dataset, Split};
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
    arch: Arch,
    epochs: usize,
    batch: usize,
    seed: u64,
    out: &'a Path,
}

pub fn run(a: &TrainArgs) -> moth::Result<()> {
    check_batch(a.batch)?;
    let device = a.common.device.resolve()?;
    let source = crate::data::open(&a.common)?;
    let arch = arch_for(a.arch.map(|x| x.arch()), &source)?;
    let whole = source.training()?;
    let train_set = limited(whole.as_ref(), a.limit)?;
    let test_set = source.load(Split::Test)?;
    let plan = Plan {
        arch,
        epochs: a.epochs,
        batch: a.batch,
        seed: a.common.seed,
        out: &a.out,
    };
    train_base_model(&train_set, &test_set, device, &plan).map(|_| ())
}

/// The first `n` samples of a training split.
struct First<'a> {
    data: &'a dyn BatchSource,
    n: usize,
}

impl BatchSource for First<'_> {
    fn len(&self) -> usize {
        self.n
    }
    fn classes(&self) -> &[String] {
        self.data.classes()
    }
    fn input_shape(&self) -> [i64; 3] {
        self.data.input_shape()
    }
    fn gather(&self, indices: &[i64]) -> moth::Result<(tch::Tensor, tch::Tensor)> {
        self.data.gather(indices)
    }
}

/// The first `limit` samples of `data` (all of them without a limit).
fn limited(data: &dyn BatchSource, limit: Option<usize>) -> moth::Result<First<'_>> {
    let n = match limit {
        None => data.len(),
        Some(0) => return Err(moth::Error::Config("--limit must be at least 1".into())),
        Some(n) => n.min(data.len()),
    };
    Ok(First { data, n })
}

/// The built-in network for the data: the one asked for, which must take
/// the data's images, or the one that does.
fn arch_for(asked: Option<Arch>, source: &DataSource) -> moth::Result<Arch> {
    let have = source.input_shape();
    let text = |s: [i64; 3]| format!("{}x{}x{}", s[0], s[1], s[2]);
    let fits = |arch: Arch| arch.input_shape() == have;
    match asked {
        Some(arch) if fits(arch) => Ok(arch),
        Some(arch) => Err(moth::Error::Config(format!(
            "the built-in {} takes {} images, the data in {} has {} images",
            arch.name(),
            text(arch.input_shape()),
            source.path().display(),
            text(have)
        ))),
        None => [Arch::Cnn28, Arch::Cnn32]
            .into_iter()
            .find(|&a| fits(a))
            .ok_or_else(|| {
                moth::Error::Config(format!(
                    "no built-in network takes the {} images in {} (cnn28 takes 1x28x28, \
                     cnn32 3x32x32): resize an image tree with --image-size, or bring a \
                     TorchScript model (--model model.pt --input-shape C,H,W)",
                    text(have),
                    source.path().display()
                ))
            }),
    }
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
        let source = DataSource::open(&common.data_dir(), common.data_options.options())?;
        let arch = arch_for(None, &source)?;
        let train_set = source.training()?;
        let test_set = source.load(Split::Test)?;
        let shown = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        eprintln!(
            "moth: no model at {}: training the default model there first \
             ({DEFAULT_EPOCHS} epochs on the {} images in {}; --model picks another)",
            shown.display(),
            train_set.len(),
            source.path().display()
        );
        let plan = Plan {
            arch,
            epochs: DEFAULT_EPOCHS,
            batch: DEFAULT_BATCH,
            seed: common.seed,
            out: path,
        };
        let m = train_base_model(train_set.as_ref(), &test_set, device, &plan)?;
        return Ok((m, train_set.classes().to_vec()));
    }
    Model::load(path, shape, device)
}

fn train_base_model(
    train_set: &dyn BatchSource,
    test_set: &Dataset,
    device: tch::Device,
    plan: &Plan,
) -> moth::Result<Model> {
    let (epochs, batch) = (plan.epochs, plan.batch);
    println!(
        "training the built-in {} ({} images, {epochs} epochs, batch {batch}, {})",
        plan.arch.name(),
        train_set.len(),
        device_name(device)
    );
    tch::manual_seed(plan.seed as i64);
    let mut model = Model::builtin(plan.arch, train_set.num_classes() as i64, device)?;
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
    save(&model, plan.out, train_set.classes())?;
    Ok(model)
}

/// The library's training loop with a progress bar; Ctrl-C stops it (no
/// model is written then).
fn fit(model: &mut Model, train_set: &dyn BatchSource, plan: &Plan) -> moth::Result<()> {
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
