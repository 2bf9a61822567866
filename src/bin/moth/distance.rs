//! `moth distance`, and the measurement with progress that `harden` and
//! `bench` use too.

use moth::algo::distance::{self, DistanceMatrix, FoundTrigger, Samples};
use moth::algo::stamped_accuracy::StampedAccuracy;
use moth::config::DistanceConfig;
use moth::io::dataset::{Dataset, Split};
use moth::torch::model::{Classifier, Model};

use crate::args::DistanceArgs;
use crate::progress::{bar, hidden, Progress};
use crate::report::{print_matrix, write_distance_outputs};
use crate::{Failure, Outcome};

pub fn run(a: &DistanceArgs) -> Outcome {
    let source = crate::data::open(&a.common)?;
    let (mut model, classes) =
        crate::train::load_or_train(&a.model.path, &a.common, a.model.input_shape)?;
    let mut test_set = source.load(Split::Test)?;
    crate::check::model_suits_data(&mut model, &a.model.path, &test_set, source.path())?;
    if classes.len() == test_set.num_classes() {
        test_set.classes = classes;
    }
    let cfg = a.protocol.config(model.device());
    println!(
        "measuring class distances of {} ({})",
        a.model.path.display(),
        model.describe()
    );
    println!("protocol: {}", cfg.describe());
    let m = measure_with_progress(&mut model, &test_set, &cfg)?;
    print_matrix(&m);
    write_distance_outputs(&m, &a.out, "class distances")?;
    Ok(())
}

/// All class distances of `model` on `data`, with a progress bar.
pub fn measure_with_progress(
    model: &mut Model,
    data: &Dataset,
    cfg: &DistanceConfig,
) -> Outcome<DistanceMatrix> {
    measure_keeping_triggers(model, data, cfg).map(|(m, _)| m)
}

/// [`measure_with_progress`], also returning each direction's trigger.
pub fn measure_keeping_triggers(
    model: &mut Model,
    data: &Dataset,
    cfg: &DistanceConfig,
) -> Outcome<(DistanceMatrix, Vec<FoundTrigger>)> {
    let pb = bar(
        0,
        "distances [{bar:30}] {pos}/{len} pairs, {elapsed} elapsed, ETA {eta}",
    );
    let m = measure(model, data, cfg, &pb);
    pb.finish_and_clear();
    m
}

/// Test samples per class stamped by [`stamped_accuracy`].
const STAMPED_PER_CLASS: usize = 200;

/// The clean-label accuracy of `model` on test samples stamped with
/// `triggers` (found on the base model).
pub fn stamped_accuracy(
    model: &mut Model,
    data: &Dataset,
    triggers: &[FoundTrigger],
) -> moth::Result<StampedAccuracy> {
    moth::algo::stamped_accuracy::stamped_accuracy(
        model,
        &samples(data),
        triggers,
        STAMPED_PER_CLASS,
    )
}

fn samples(data: &Dataset) -> Samples<'_> {
    Samples {
        images: &data.images,
        labels: data.labels_vec(),
        classes: &data.classes,
    }
}

/// All class distances of `model` on `data`, showing nothing.
pub fn measure_quietly(
    model: &mut Model,
    data: &Dataset,
    cfg: &DistanceConfig,
) -> Outcome<DistanceMatrix> {
    measure(model, data, cfg, &hidden()).map(|(m, _)| m)
}

/// The library's measurement. It cannot be stopped half-way: Ctrl-C is
/// noticed after each source class (and announced), and the measurement
/// is then refused once it returns (a second Ctrl-C exits at once).
fn measure(
    model: &mut Model,
    data: &Dataset,
    cfg: &DistanceConfig,
    pb: &Progress,
) -> Outcome<(DistanceMatrix, Vec<FoundTrigger>)> {
    let mut announced = false;
    // The same core function as the C ABI's moth_distance_measure.
    let m = distance::measure_pairs(model, samples(data), cfg, None, &mut |p| {
        pb.set_length(p.total as u64);
        pb.set_position(p.done as u64);
        if !announced && crate::interrupted() {
            announced = true;
            pb.note("interrupted: stopping when this distance measurement ends (Ctrl-C again to quit now)");
        }
        std::ops::ControlFlow::Continue(())
    })?;
    if crate::interrupted() {
        return Err(Failure::Stopped(
            "interrupted while measuring class distances".into(),
        ));
    }
    Ok(m)
}
