//! The `moth` command-line program: train a base model, measure class
//! distances, harden a model, inspect checkpoints.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use moth::config::DistanceConfig;
use moth::data::{Dataset, Split};
use moth::device::DeviceChoice;
use moth::distance::{self, DistanceMatrix};
use moth::heatmap::{self, HeatmapSpec, Scale};
use moth::model::{self, Arch, Classifier, Model};
use moth::train::{self, Optimizer, OptimizerConfig};

#[derive(Parser)]
#[command(
    name = "moth",
    version,
    about = "MOTH model orthogonalisation: measure and enlarge class distances of image classifiers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train the built-in CNN on Fashion-MNIST and save it.
    Train(TrainArgs),
    /// Measure all directed class distances of a model.
    Distance(DistanceArgs),
    /// Harden a model with MOTH (or a baseline) and report the distances
    /// before and after.
    Harden(HardenArgs),
}

#[derive(Args, Clone)]
struct Common {
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Folder holding the Fashion-MNIST IDX files.
    #[arg(long, default_value = moth::data::FASHION_MNIST_DIR)]
    data: PathBuf,
    /// Seed for every random choice.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    common: Common,
    /// Where to write the model.
    #[arg(long, default_value = "runs/base/model.moth")]
    out: PathBuf,
    /// Training epochs.
    #[arg(long, default_value_t = 5)]
    epochs: usize,
    /// Mini-batch size.
    #[arg(long, default_value_t = 128)]
    batch: usize,
}

#[derive(Args)]
struct DistanceArgs {
    #[command(flatten)]
    common: Common,
    /// Model to measure: a moth model file, or a TorchScript `.pt` (with
    /// --input-shape). The default model is trained first when missing.
    #[arg(long, default_value = "runs/base/model.moth")]
    model: PathBuf,
    /// `C,H,W` of a TorchScript model's inputs.
    #[arg(long, value_parser = parse_shape)]
    input_shape: Option<[i64; 3]>,
    /// quick (default on CPU: 32 samples/class, 200 steps, 1 seed) or paper
    /// (100 samples/class, 1000 steps, 3 seeds; default on CUDA).
    #[arg(long)]
    protocol: Option<Protocol>,
    /// Override: test samples per class.
    #[arg(long)]
    samples: Option<usize>,
    /// Override: inversion steps per direction.
    #[arg(long)]
    steps: Option<usize>,
    /// Override: seeds, comma-separated.
    #[arg(long, value_delimiter = ',')]
    seeds: Option<Vec<u64>>,
    /// Output folder for distances.json and heatmap.png.
    #[arg(long, default_value = "runs/distance")]
    out: PathBuf,
}

#[derive(Args)]
struct HardenArgs {
    #[command(flatten)]
    common: Common,
    /// Model to harden (moth model file, or TorchScript `.pt` with
    /// --input-shape). The default model is trained first when missing.
    #[arg(long, default_value = "runs/base/model.moth")]
    model: PathBuf,
    /// `C,H,W` of a TorchScript model's inputs.
    #[arg(long, value_parser = parse_shape)]
    input_shape: Option<[i64; 3]>,
    /// moth, universal, pairwise or asymmetric.
    #[arg(long, default_value = "moth")]
    method: moth::session::Method,
    /// Epochs over the training data after the warm-up (reference: 2).
    /// Default: 2 on CUDA, 0.5 on the CPU.
    #[arg(long)]
    epochs: Option<f64>,
    /// Training batch size.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Stamping bound: fixed (the C*H*W/4 cap) or growing (per pair).
    #[arg(long, default_value = "fixed")]
    bounds: BoundsArg,
    /// Stop when clean accuracy drops by more than this many points.
    #[arg(long, default_value_t = 1.0)]
    max_drop: f64,
    /// Distance protocol, as for `moth distance`.
    #[arg(long)]
    protocol: Option<Protocol>,
    /// Override: test samples per class for the distances.
    #[arg(long)]
    samples: Option<usize>,
    /// Override: inversion steps per direction for the distances.
    #[arg(long)]
    steps: Option<usize>,
    /// Override: distance seeds, comma-separated.
    #[arg(long, value_delimiter = ',')]
    seeds: Option<Vec<u64>>,
    /// Skip the distance measurements (only harden).
    #[arg(long)]
    no_distance: bool,
    /// Output folder: hardened model, report.json, heatmaps.
    #[arg(long, default_value = "runs/harden")]
    out: PathBuf,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum BoundsArg {
    Fixed,
    Growing,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Protocol {
    Quick,
    Paper,
}

fn parse_shape(s: &str) -> Result<[i64; 3], String> {
    let v: Vec<i64> = s
        .split(',')
        .map(|p| {
            p.trim()
                .parse::<i64>()
                .map_err(|e| format!("bad shape '{s}': {e}"))
        })
        .collect::<Result<_, _>>()?;
    match v.as_slice() {
        [c, h, w] if *c > 0 && *h > 0 && *w > 0 => Ok([*c, *h, *w]),
        _ => Err(format!(
            "shape must be C,H,W with positive values, got '{s}'"
        )),
    }
}

fn bar(total: u64, template: &str) -> ProgressBar {
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(a) => run_train(&a).map(|_| ()),
        Command::Distance(a) => run_distance(&a).map(|_| ()),
        Command::Harden(a) => run_harden(&a).map(|_| ()),
    };
    if let Err(e) = result {
        eprintln!("moth: error: {e}");
        std::process::exit(1);
    }
}

fn run_train(a: &TrainArgs) -> moth::Result<Model> {
    let device = a.common.device.resolve()?;
    let train_set = Dataset::fashion_mnist(Some(&a.common.data), Split::Train)?;
    let test_set = Dataset::fashion_mnist(Some(&a.common.data), Split::Test)?;
    train_base_model(
        &train_set,
        &test_set,
        device,
        a.epochs,
        a.batch,
        a.common.seed,
        &a.out,
    )
}

fn train_base_model(
    train_set: &Dataset,
    test_set: &Dataset,
    device: tch::Device,
    epochs: usize,
    batch: usize,
    seed: u64,
    out: &Path,
) -> moth::Result<Model> {
    println!(
        "training the built-in CNN on Fashion-MNIST ({} images, {epochs} epochs, batch {batch}, {device:?})",
        train_set.len()
    );
    tch::manual_seed(seed as i64);
    let mut model = Model::builtin(Arch::Cnn28, train_set.num_classes() as i64, device)?;
    let mut opt = Optimizer::new(OptimizerConfig::pretraining(), &model)?;
    let steps = train_set.len().div_ceil(batch) * epochs;
    let pb = bar(
        steps as u64,
        "{msg} [{bar:30}] {pos}/{len} steps, ETA {eta}",
    );
    let start = Instant::now();
    train::fit(
        &mut model,
        &mut opt,
        train_set,
        epochs,
        batch,
        seed,
        &mut |e, i, total, loss| {
            pb.set_position((e * total + i) as u64);
            pb.set_message(format!("epoch {}/{epochs} loss {loss:.3}", e + 1));
        },
    )?;
    pb.finish_and_clear();
    let acc = model::accuracy(&mut model, &test_set.images, &test_set.labels, 512)?;
    println!(
        "trained in {:.1} s: test accuracy {:.2}% on {} images",
        start.elapsed().as_secs_f64(),
        100.0 * acc,
        test_set.len()
    );
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| moth::Error::io(format!("creating {}", dir.display()), e))?;
    }
    model.save(out, &train_set.classes)?;
    println!("model written to {}", out.display());
    Ok(model)
}

/// Loads the model, training the default one first when it does not exist yet.
fn load_or_train(
    path: &Path,
    common: &Common,
    shape: Option<[i64; 3]>,
) -> moth::Result<(Model, Vec<String>)> {
    let device = common.device.resolve()?;
    if !path.exists() && path == Path::new("runs/base/model.moth") {
        println!(
            "{} does not exist: training the default model first",
            path.display()
        );
        let train_set = Dataset::fashion_mnist(Some(&common.data), Split::Train)?;
        let test_set = Dataset::fashion_mnist(Some(&common.data), Split::Test)?;
        let m = train_base_model(&train_set, &test_set, device, 5, 128, common.seed, path)?;
        return Ok((m, train_set.classes.clone()));
    }
    Model::load(path, shape, device)
}

fn distance_config(
    protocol: Option<Protocol>,
    samples: Option<usize>,
    steps: Option<usize>,
    seeds: &Option<Vec<u64>>,
    device: tch::Device,
) -> DistanceConfig {
    let protocol = protocol.unwrap_or(if device.is_cuda() {
        Protocol::Paper
    } else {
        Protocol::Quick
    });
    let mut cfg = match protocol {
        Protocol::Quick => DistanceConfig::quick(),
        Protocol::Paper => DistanceConfig::paper(),
    };
    if let Some(s) = samples {
        cfg.samples_per_class = s;
    }
    if let Some(s) = steps {
        cfg.budget.steps = s;
    }
    if let Some(s) = seeds {
        cfg.seeds = s.clone();
    }
    cfg
}

fn run_distance(a: &DistanceArgs) -> moth::Result<DistanceMatrix> {
    let (mut model, classes) = load_or_train(&a.model, &a.common, a.input_shape)?;
    let mut test_set = Dataset::fashion_mnist(Some(&a.common.data), Split::Test)?;
    if classes.len() == test_set.num_classes() {
        test_set.classes = classes;
    }
    let cfg = distance_config(a.protocol, a.samples, a.steps, &a.seeds, model.device());
    println!(
        "measuring class distances of {} ({})",
        a.model.display(),
        model.describe()
    );
    println!("protocol: {}", cfg.describe());
    let m = measure_with_progress(&mut model, &test_set, &cfg)?;
    print_matrix(&m);
    write_distance_outputs(&m, &a.out, "class distances")?;
    Ok(m)
}

fn measure_with_progress(
    model: &mut Model,
    data: &Dataset,
    cfg: &DistanceConfig,
) -> moth::Result<DistanceMatrix> {
    let pb = bar(
        0,
        "distances [{bar:30}] {pos}/{len} pairs, {elapsed} elapsed, ETA {eta}",
    );
    let m = distance::measure(model, data, cfg, &mut |p| {
        pb.set_length(p.total as u64);
        pb.set_position(p.done as u64);
    })?;
    pb.finish_and_clear();
    Ok(m)
}

fn print_matrix(m: &DistanceMatrix) {
    println!("{}", m.to_table());
    println!(
        "mean distance {:.2} over {} measured pairs ({} failed), measured in {:.1} s",
        m.mean(),
        m.measured().count(),
        m.failed.len(),
        m.seconds
    );
}

fn write_distance_outputs(m: &DistanceMatrix, dir: &Path, title: &str) -> moth::Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| moth::Error::io(format!("creating {}", dir.display()), e))?;
    let json = serde_json::to_string_pretty(m).map_err(|e| moth::Error::Input(e.to_string()))?;
    let jpath = dir.join("distances.json");
    std::fs::write(&jpath, json)
        .map_err(|e| moth::Error::io(format!("writing {}", jpath.display()), e))?;
    let hpath = dir.join("heatmap.png");
    heatmap::write_png(
        &hpath,
        &m.values,
        &HeatmapSpec {
            title,
            labels: &m.classes,
            scale: Scale::Sequential,
            cell_px: 48,
        },
    )?;
    println!("wrote {} and {}", jpath.display(), hpath.display());
    Ok(())
}

fn run_harden(a: &HardenArgs) -> moth::Result<()> {
    use moth::bounds::BoundsMode;
    use moth::runner::{HardenRun, RunConfig};
    use moth::session::SessionConfig;

    let wall = Instant::now();
    let (model, classes) = load_or_train(&a.model, &a.common, a.input_shape)?;
    let train_set = Dataset::fashion_mnist(Some(&a.common.data), Split::Train)?;
    let mut test_set = Dataset::fashion_mnist(Some(&a.common.data), Split::Test)?;
    if classes.len() == test_set.num_classes() {
        test_set.classes = classes.clone();
    }
    let device = model.device();
    let dcfg = distance_config(a.protocol, a.samples, a.steps, &a.seeds, device);
    let mut session_cfg = SessionConfig {
        method: a.method,
        seed: a.common.seed,
        max_accuracy_drop: a.max_drop / 100.0,
        ..SessionConfig::default()
    };
    session_cfg.bounds.mode = match a.bounds {
        BoundsArg::Fixed => BoundsMode::Fixed,
        BoundsArg::Growing => BoundsMode::Growing,
    };
    let run_cfg = RunConfig {
        epochs: a.epochs.unwrap_or(if device.is_cuda() { 2.0 } else { 0.5 }),
        batch: a.batch,
        ..RunConfig::default()
    };
    println!(
        "hardening {} ({}) with {:?}, {} epoch(s) after warm-up, batch {}, bounds {:?}, device {device:?}",
        a.model.display(),
        model.describe(),
        a.method,
        run_cfg.epochs,
        run_cfg.batch,
        session_cfg.bounds.mode
    );
    let mut base = model;
    let acc_before = model::accuracy(&mut base, &test_set.images, &test_set.labels, 500)?;
    println!("clean test accuracy before: {:.2}%", 100.0 * acc_before);
    let before = if a.no_distance {
        None
    } else {
        println!("distances before hardening ({})", dcfg.describe());
        let m = measure_with_progress(&mut base, &test_set, &dcfg)?;
        print_matrix(&m);
        Some(m)
    };

    let harden_start = Instant::now();
    let mut run = HardenRun::new(base, session_cfg, run_cfg, &train_set, &test_set)?;
    let total = run.session.config().max_steps;
    let pb = bar(
        total,
        "{msg}\n[{bar:30}] step {pos}/{len}, {elapsed} elapsed, ETA {eta}",
    );
    run.run(&mut |r, s| {
        pb.set_position(s.step());
        pb.set_message(step_message(r, s));
    })?;
    pb.finish_and_clear();
    let harden_seconds = harden_start.elapsed().as_secs_f64();
    println!(
        "hardening stopped after {} steps in {:.1} s: {:?}{}",
        run.session.step(),
        harden_seconds,
        run.session.phase(),
        if run.restored_last_good() {
            " (returned to the last model within the accuracy bound)"
        } else {
            ""
        }
    );
    let acc_after = model::accuracy(&mut run.model, &test_set.images, &test_set.labels, 500)?;
    println!(
        "clean test accuracy after: {:.2}% (change {:+.2} points)",
        100.0 * acc_after,
        100.0 * (acc_after - acc_before)
    );
    std::fs::create_dir_all(&a.out)
        .map_err(|e| moth::Error::io(format!("creating {}", a.out.display()), e))?;
    let ext = if run.model.is_torchscript() {
        "pt"
    } else {
        "moth"
    };
    let model_path = a.out.join(format!("hardened.{ext}"));
    run.model.save(&model_path, &train_set.classes)?;
    println!("hardened model written to {}", model_path.display());

    let after = match &before {
        None => None,
        Some(_) => {
            println!("distances after hardening ({})", dcfg.describe());
            let m = measure_with_progress(&mut run.model, &test_set, &dcfg)?;
            print_matrix(&m);
            Some(m)
        }
    };
    let report = HardenReport {
        method: format!("{:?}", a.method),
        model: a.model.display().to_string(),
        device: format!("{device:?}"),
        steps: run.session.step(),
        final_phase: format!("{:?}", run.session.phase()),
        accuracy_before: acc_before,
        accuracy_after: acc_after,
        enlargement: before
            .as_ref()
            .zip(after.as_ref())
            .map(|(b, a)| b.enlargement(a)),
        mean_before: before.as_ref().map(DistanceMatrix::mean),
        mean_after: after.as_ref().map(DistanceMatrix::mean),
        harden_seconds,
        wall_seconds: wall.elapsed().as_secs_f64(),
        protocol: dcfg.describe(),
        before,
        after,
        session_config: run.session.config().clone(),
        pair_counts: run.session.scheduler().count.clone(),
        history: run.history.clone(),
    };
    write_harden_report(&report, &a.out)?;
    Ok(())
}

fn step_message(r: &moth::runner::StepRecord, s: &moth::session::Session) -> String {
    use moth::session::Phase;
    let what = match r.phase {
        Phase::Warmup { target } => format!("warm-up target {target}"),
        Phase::Orthogonalize {
            pair,
            step_in_period,
        } => {
            format!(
                "pair {}<->{} (step {} of period)",
                pair.source,
                pair.target,
                step_in_period + 1
            )
        }
        Phase::Universal { target } => format!("universal target {target}"),
        Phase::Done { .. } => "done".to_string(),
    };
    let sizes: Vec<String> = r
        .directions
        .iter()
        .map(|d| format!("{:.1}{}", d.size, if d.stamped > 0 { "*" } else { "" }))
        .collect();
    let acc = s
        .accuracy()
        .last
        .map(|a| format!("{:.2}%", 100.0 * a))
        .unwrap_or_else(|| "-".into());
    format!(
        "{what}: trigger sizes [{}] (*=stamped), loss {:.3}, held-out acc {acc}",
        sizes.join(", "),
        r.loss
    )
}

#[derive(serde::Serialize)]
struct HardenReport {
    method: String,
    model: String,
    device: String,
    steps: u64,
    final_phase: String,
    accuracy_before: f64,
    accuracy_after: f64,
    enlargement: Option<f64>,
    mean_before: Option<f64>,
    mean_after: Option<f64>,
    harden_seconds: f64,
    wall_seconds: f64,
    protocol: String,
    before: Option<DistanceMatrix>,
    after: Option<DistanceMatrix>,
    session_config: moth::session::SessionConfig,
    pair_counts: Vec<Vec<f64>>,
    history: Vec<moth::runner::StepRecord>,
}

fn write_harden_report(r: &HardenReport, dir: &Path) -> moth::Result<()> {
    let json = serde_json::to_string_pretty(r).map_err(|e| moth::Error::Input(e.to_string()))?;
    let path = dir.join("report.json");
    std::fs::write(&path, json)
        .map_err(|e| moth::Error::io(format!("writing {}", path.display()), e))?;
    if let (Some(b), Some(a)) = (&r.before, &r.after) {
        let spec = |title, scale| HeatmapSpec {
            title,
            labels: &b.classes,
            scale,
            cell_px: 48,
        };
        heatmap::write_png(
            &dir.join("before.png"),
            &b.values,
            &spec("distance before", Scale::Sequential),
        )?;
        heatmap::write_png(
            &dir.join("after.png"),
            &a.values,
            &spec("distance after", Scale::Sequential),
        )?;
        heatmap::write_png(
            &dir.join("difference.png"),
            &b.difference(a),
            &spec("after - before", Scale::Diverging),
        )?;
    }
    println!("\n=== MOTH report ({}) ===", r.method);
    println!(
        "clean accuracy: {:.2}% -> {:.2}% ({:+.2} points)",
        100.0 * r.accuracy_before,
        100.0 * r.accuracy_after,
        100.0 * (r.accuracy_after - r.accuracy_before)
    );
    if let (Some(mb), Some(ma), Some(e)) = (r.mean_before, r.mean_after, r.enlargement) {
        println!(
            "mean class distance: {mb:.2} -> {ma:.2}; relative enlargement {:+.1}%",
            100.0 * e
        );
        println!("distance protocol: {}", r.protocol);
    }
    println!(
        "hardening steps: {} ({}), {:.1} s; whole run {:.1} s",
        r.steps, r.final_phase, r.harden_seconds, r.wall_seconds
    );
    println!(
        "wrote {} (and before/after/difference heatmaps)",
        path.display()
    );
    Ok(())
}
