//! The `moth` command-line program: train a base model, measure class
//! distances, harden a model, inspect checkpoints.

mod heatmap;

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use heatmap::{HeatmapSpec, Scale};
use moth::algo::distance::{self, DistanceMatrix, Samples};
use moth::config::DistanceConfig;
use moth::io::dataset::{Dataset, Split};
use moth::torch::device::DeviceChoice;
use moth::torch::model::{self, Arch, Classifier, Model};
use moth::torch::train::{self, Optimizer, OptimizerConfig};

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
    /// Print what a checkpoint (run.ckpt or a session checkpoint) holds.
    Inspect(InspectArgs),
    /// Compare hardening methods (and bounds) with the same training budget
    /// and distance protocol; prints one table.
    Bench(BenchArgs),
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    common: Common,
    /// Base model (trained first when the default is missing).
    #[arg(long, default_value = "runs/base/model.moth")]
    model: PathBuf,
    /// Variants as method:bounds, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "moth:fixed,universal:fixed,pairwise:fixed,asymmetric:fixed"
    )]
    variants: Vec<String>,
    /// Epochs after the warm-up, the same for every variant.
    #[arg(long, default_value_t = 0.25)]
    epochs: f64,
    /// Distance measurements per run (evenly spaced; the last at the end).
    #[arg(long, default_value_t = 3)]
    points: usize,
    /// Test samples per class for the distances.
    #[arg(long, default_value_t = 16)]
    samples: usize,
    /// Inversion steps per direction for the distances.
    #[arg(long, default_value_t = 100)]
    steps: usize,
    /// Session settings as JSON, as for `harden`.
    #[arg(long, value_name = "JSON")]
    session_config: Option<String>,
    /// Output folder for bench.json and bench.md.
    #[arg(long, default_value = "runs/bench")]
    out: PathBuf,
}

#[derive(Args)]
struct InspectArgs {
    /// The checkpoint file.
    path: PathBuf,
}

#[derive(Args, Clone)]
struct Common {
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Folder holding the Fashion-MNIST IDX files.
    #[arg(long, default_value = moth::io::dataset::FASHION_MNIST_DIR)]
    data: PathBuf,
    /// Seed for every random choice.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Which model to work on.
#[derive(Args, Clone)]
struct ModelArgs {
    /// A moth model file, or a TorchScript `.pt` (with --input-shape). The
    /// default model is trained first when missing.
    #[arg(long = "model", default_value = "runs/base/model.moth")]
    path: PathBuf,
    /// `C,H,W` of a TorchScript model's inputs.
    #[arg(long, value_parser = parse_shape)]
    input_shape: Option<[i64; 3]>,
}

/// How class distances are measured.
#[derive(Args, Clone)]
struct ProtocolArgs {
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
    /// Train on the first N images only (quick experiments).
    #[arg(long)]
    limit: Option<usize>,
}

#[derive(Args)]
struct DistanceArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    protocol: ProtocolArgs,
    /// Output folder for distances.json and heatmap.png.
    #[arg(long, default_value = "runs/distance")]
    out: PathBuf,
}

#[derive(Args)]
struct HardenArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    model: ModelArgs,
    /// moth, universal, pairwise or asymmetric.
    #[arg(long, default_value = "moth")]
    method: moth::session::Method,
    /// Epochs over the training data after the warm-up (reference: 2).
    /// Default: 2 on CUDA, 1 on the CPU.
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
    #[command(flatten)]
    protocol: ProtocolArgs,
    /// Skip the distance measurements (only harden).
    #[arg(long)]
    no_distance: bool,
    /// Output folder: hardened model, report.json, heatmaps, run.ckpt.
    #[arg(long, default_value = "runs/harden")]
    out: PathBuf,
    /// Write DIR/run.ckpt every this many steps (0: only at the end and on
    /// Ctrl-C / SIGTERM).
    #[arg(long, default_value_t = 50)]
    checkpoint_every: u64,
    /// Continue the interrupted run whose folder is DIR (other options are
    /// taken from its checkpoint).
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    /// Session settings as JSON (any subset of SessionConfig), applied
    /// before --method, --seed, --bounds and --max-drop.
    #[arg(long, value_name = "JSON")]
    session_config: Option<String>,
    /// Testing aid: checkpoint and exit (status 130) after this step, as if
    /// interrupted.
    #[arg(long, hide = true)]
    stop_after_step: Option<u64>,
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

/// A progress bar on a terminal; elsewhere (CI logs, pipes) one plain line
/// every 30 seconds, so that long runs still show where they are.
struct Progress {
    bar: ProgressBar,
    plain: bool,
    start: Instant,
    last_line: std::cell::Cell<f64>,
    message: std::cell::RefCell<String>,
}

impl Progress {
    fn set_length(&self, len: u64) {
        self.bar.set_length(len);
    }

    fn set_message(&self, msg: String) {
        if self.plain {
            *self.message.borrow_mut() = msg;
        } else {
            self.bar.set_message(msg);
        }
    }

    fn set_position(&self, pos: u64) {
        self.bar.set_position(pos);
        if !self.plain {
            return;
        }
        let t = self.start.elapsed().as_secs_f64();
        if t - self.last_line.get() >= 30.0 {
            self.last_line.set(t);
            let len = self.bar.length().unwrap_or(0);
            let eta = if pos > 0 && len > pos {
                t / pos as f64 * (len - pos) as f64
            } else {
                0.0
            };
            eprintln!(
                "  {pos}/{len} after {t:.0} s, ETA {eta:.0} s {}",
                self.message.borrow()
            );
        }
    }

    fn finish_and_clear(&self) {
        self.bar.finish_and_clear();
    }
}

fn bar(total: u64, template: &str) -> Progress {
    use std::io::IsTerminal;
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    Progress {
        bar: pb,
        plain: !std::io::stderr().is_terminal(),
        start: Instant::now(),
        last_line: std::cell::Cell::new(0.0),
        message: std::cell::RefCell::new(String::new()),
    }
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(a) => run_train(&a).map(|_| ()),
        Command::Distance(a) => run_distance(&a).map(|_| ()),
        Command::Harden(a) => run_harden(&a).map(|_| ()),
        Command::Inspect(a) => run_inspect(&a.path),
        Command::Bench(a) => run_bench(&a),
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

impl ProtocolArgs {
    fn config(&self, device: tch::Device) -> DistanceConfig {
        let protocol = self.protocol.unwrap_or(if device.is_cuda() {
            Protocol::Paper
        } else {
            Protocol::Quick
        });
        let mut cfg = match protocol {
            Protocol::Quick => DistanceConfig::quick(),
            Protocol::Paper => DistanceConfig::paper(),
        };
        if let Some(s) = self.samples {
            cfg.samples_per_class = s;
        }
        if let Some(s) = self.steps {
            cfg.budget.steps = s;
        }
        if let Some(s) = &self.seeds {
            cfg.seeds = s.clone();
        }
        cfg
    }
}

fn run_distance(a: &DistanceArgs) -> moth::Result<DistanceMatrix> {
    let (mut model, classes) = load_or_train(&a.model.path, &a.common, a.model.input_shape)?;
    let mut test_set = Dataset::fashion_mnist(Some(&a.common.data), Split::Test)?;
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
    let m = distance::measure(
        model,
        Samples {
            images: &data.images,
            labels: data.labels_vec(),
            classes: &data.classes,
        },
        cfg,
        &mut |p| {
            pb.set_length(p.total as u64);
            pb.set_position(p.done as u64);
        },
    )?;
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
    let json = serde_json::to_string_pretty(m).map_err(|e| moth::Error::input(e.to_string()))?;
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

/// What `--resume` needs besides the run checkpoint: the settings that
/// shape the final report and the "before" half of it.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct HardenNotes {
    model: String,
    method: String,
    no_distance: bool,
    distance: DistanceConfig,
    accuracy_before: f64,
    before: Option<DistanceMatrix>,
    seconds_before_hardening: f64,
    harden_seconds_so_far: f64,
}

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

#[allow(unsafe_code)]
fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

fn run_harden(a: &HardenArgs) -> moth::Result<()> {
    use moth::runner::HardenRun;

    let wall = Instant::now();
    let train_set = Dataset::fashion_mnist(Some(&a.common.data), Split::Train)?;
    let mut test_set = Dataset::fashion_mnist(Some(&a.common.data), Split::Test)?;
    let (mut run, mut notes, out) = match &a.resume {
        Some(dir) => {
            let path = dir.join("run.ckpt");
            let bytes = moth::io::container::read_file(&path)?;
            let device = a.common.device.resolve()?;
            let (run, extra) = HardenRun::resume(&bytes, device, &train_set, &test_set)?;
            let notes: HardenNotes = serde_json::from_str(&extra).map_err(|e| {
                moth::Error::Checkpoint(format!("{}: bad run notes: {e}", path.display()))
            })?;
            pin_threads(&run.session);
            println!(
                "resuming {} from {} at step {} of {} ({:?})",
                notes.model,
                path.display(),
                run.session.step(),
                run.session.config().max_steps,
                run.session.phase()
            );
            (run, notes, dir.clone())
        }
        None => {
            let (run, notes) = start_harden(a, &train_set, &mut test_set)?;
            (run, notes, a.out.clone())
        }
    };
    if let Some(b) = &notes.before {
        test_set.classes = b.classes.clone();
    }
    std::fs::create_dir_all(&out)
        .map_err(|e| moth::Error::io(format!("creating {}", out.display()), e))?;
    install_signal_handlers();
    println!(
        "hardening loop started at step {} of {} (Ctrl-C checkpoints and stops; checkpoint every {} steps)",
        run.session.step(),
        run.session.config().max_steps,
        a.checkpoint_every
    );
    let loop_start = Instant::now();
    let total = run.session.config().max_steps;
    let pb = bar(
        total,
        "{msg}\n[{bar:30}] step {pos}/{len}, {elapsed} elapsed, ETA {eta}",
    );
    pb.set_position(run.session.step());
    let ckpt = out.join("run.ckpt");
    let save = |run: &HardenRun, notes: &HardenNotes, spent: f64| -> moth::Result<()> {
        let notes = HardenNotes {
            harden_seconds_so_far: spent,
            ..notes.clone()
        };
        let extra = serde_json::to_string(&notes).map_err(|e| moth::Error::input(e.to_string()))?;
        moth::io::container::write_atomic(&ckpt, &run.checkpoint(&extra)?)
    };
    let spent_before = notes.harden_seconds_so_far;
    while run.step()? {
        let s = run.session.step();
        pb.set_position(s);
        if let Some(r) = run.history.last() {
            pb.set_message(step_message(r, &run.session));
        }
        let spent = spent_before + loop_start.elapsed().as_secs_f64();
        let interrupted = INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst);
        let stop_here = a.stop_after_step == Some(s);
        if interrupted || stop_here || (a.checkpoint_every > 0 && s % a.checkpoint_every == 0) {
            save(&run, &notes, spent)?;
        }
        if interrupted || stop_here {
            pb.finish_and_clear();
            println!(
                "{} at step {s}: checkpoint written to {}\nresume with: moth harden --resume {}",
                if interrupted {
                    "interrupted"
                } else {
                    "stopped"
                },
                ckpt.display(),
                out.display()
            );
            std::process::exit(130);
        }
    }
    pb.finish_and_clear();
    notes.harden_seconds_so_far = spent_before + loop_start.elapsed().as_secs_f64();
    save(&run, &notes, notes.harden_seconds_so_far)?;
    finish_harden(run, notes, &test_set, &train_set.classes, &out, wall)
}

/// CPU results are bit-identical only with the thread count the run started
/// with: the CLI owns its process, so it pins it.
fn pin_threads(session: &moth::session::Session) {
    if let Some(env) = session.resumed_from() {
        let now = tch::get_num_threads();
        if env.threads > 0 && env.threads != now {
            println!(
                "pinning libtorch to {} threads as in the interrupted run (was {now})",
                env.threads
            );
            tch::set_num_threads(env.threads);
        }
    }
}

/// The `--session-config` JSON (any `SessionConfig` field), or the defaults.
fn parse_session_config(json: Option<&str>) -> moth::Result<moth::session::SessionConfig> {
    let defaults = moth::session::SessionConfig::default();
    match json {
        Some(json) => defaults
            .with_json(json)
            .map_err(|e| moth::Error::Config(format!("--session-config: {e}"))),
        None => Ok(defaults),
    }
}

fn session_config(a: &HardenArgs) -> moth::Result<moth::session::SessionConfig> {
    use moth::algo::bounds::BoundsMode;
    let mut cfg = parse_session_config(a.session_config.as_deref())?;
    cfg.method = a.method;
    cfg.seed = a.common.seed;
    cfg.max_accuracy_drop = a.max_drop / 100.0;
    cfg.bounds.mode = match a.bounds {
        BoundsArg::Fixed => BoundsMode::Fixed,
        BoundsArg::Growing => BoundsMode::Growing,
    };
    cfg.validate()?;
    Ok(cfg)
}

fn start_harden<'d>(
    a: &HardenArgs,
    train_set: &'d Dataset,
    test_set: &mut Dataset,
) -> moth::Result<(moth::runner::HardenRun<'d>, HardenNotes)> {
    use moth::runner::{HardenRun, RunConfig};
    let start = Instant::now();
    // Settings first: a typo must not cost a model training.
    let session_cfg = session_config(a)?;
    let (model, classes) = load_or_train(&a.model.path, &a.common, a.model.input_shape)?;
    if classes.len() == test_set.num_classes() {
        test_set.classes = classes.clone();
    }
    let device = model.device();
    let dcfg = a.protocol.config(device);
    let run_cfg = RunConfig {
        epochs: a.epochs.unwrap_or(if device.is_cuda() { 2.0 } else { 1.0 }),
        batch: a.batch,
        ..RunConfig::default()
    };
    println!(
        "hardening {} ({}) with {:?}, {} epoch(s) after warm-up, batch {}, bounds {:?}, device {device:?}, {} libtorch threads",
        a.model.path.display(),
        model.describe(),
        a.method,
        run_cfg.epochs,
        run_cfg.batch,
        session_cfg.bounds.mode,
        tch::get_num_threads()
    );
    let mut base = model;
    let acc_before = model::accuracy(
        &mut base,
        &test_set.images,
        &test_set.labels,
        model::ACCURACY_BATCH,
    )?;
    println!("clean test accuracy before: {:.2}%", 100.0 * acc_before);
    let before = if a.no_distance {
        None
    } else {
        println!("distances before hardening ({})", dcfg.describe());
        let m = measure_with_progress(&mut base, test_set, &dcfg)?;
        print_matrix(&m);
        Some(m)
    };
    let run = HardenRun::new(base, session_cfg, run_cfg, train_set, test_set)?;
    let notes = HardenNotes {
        model: a.model.path.display().to_string(),
        method: format!("{:?}", a.method),
        no_distance: a.no_distance,
        distance: dcfg,
        accuracy_before: acc_before,
        before,
        seconds_before_hardening: start.elapsed().as_secs_f64(),
        harden_seconds_so_far: 0.0,
    };
    Ok((run, notes))
}

fn finish_harden(
    mut run: moth::runner::HardenRun,
    notes: HardenNotes,
    test_set: &Dataset,
    classes: &[String],
    out: &Path,
    wall: Instant,
) -> moth::Result<()> {
    println!(
        "hardening stopped after {} steps ({:.1} s of hardening): {:?}{}",
        run.session.step(),
        notes.harden_seconds_so_far,
        run.session.phase(),
        if run.restored_last_good() {
            " (returned to the last model within the accuracy bound)"
        } else {
            ""
        }
    );
    let acc_after = model::accuracy(
        &mut run.model,
        &test_set.images,
        &test_set.labels,
        model::ACCURACY_BATCH,
    )?;
    println!(
        "clean test accuracy after: {:.2}% (change {:+.2} points)",
        100.0 * acc_after,
        100.0 * (acc_after - notes.accuracy_before)
    );
    let ext = if run.model.is_torchscript() {
        "pt"
    } else {
        "moth"
    };
    let model_path = out.join(format!("hardened.{ext}"));
    run.model.save(&model_path, classes)?;
    println!("hardened model written to {}", model_path.display());
    let after = match &notes.before {
        None => None,
        Some(_) => {
            println!("distances after hardening ({})", notes.distance.describe());
            let m = measure_with_progress(&mut run.model, test_set, &notes.distance)?;
            print_matrix(&m);
            Some(m)
        }
    };
    let device = run.model.device();
    let report = HardenReport {
        method: notes.method.clone(),
        model: notes.model.clone(),
        device: format!("{device:?}"),
        steps: run.session.step(),
        final_phase: format!("{:?}", run.session.phase()),
        accuracy_before: notes.accuracy_before,
        accuracy_after: acc_after,
        enlargement: notes
            .before
            .as_ref()
            .zip(after.as_ref())
            .map(|(b, a)| b.enlargement(a)),
        mean_before: notes.before.as_ref().map(DistanceMatrix::mean),
        mean_after: after.as_ref().map(DistanceMatrix::mean),
        harden_seconds: notes.harden_seconds_so_far,
        wall_seconds: wall.elapsed().as_secs_f64(),
        protocol: notes.distance.describe(),
        before: notes.before.clone(),
        after,
        session_config: run.session.config().clone(),
        pair_counts: run.session.scheduler().count.clone(),
        history: run.history.clone(),
    };
    write_harden_report(&report, out)
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
    let json = serde_json::to_string_pretty(r).map_err(|e| moth::Error::input(e.to_string()))?;
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

fn run_inspect(path: &Path) -> moth::Result<()> {
    use moth::io::container::{parse_header, PayloadKind};
    let bytes = moth::io::container::read_file(path)?;
    let header = parse_header(&bytes)?;
    println!(
        "{}: moth checkpoint format {}, written by moth {}, kind {}, payload {} bytes",
        path.display(),
        header.format_version,
        header.moth_version,
        header.kind,
        header.payload_len
    );
    let session_bytes = match header.kind {
        PayloadKind::Session => bytes.clone(),
        PayloadKind::Trainer => {
            let ck: moth::runner::RunCheckpoint =
                moth::io::container::decode(PayloadKind::Trainer, &bytes)?;
            let model = match &ck.model {
                model::ModelState::Builtin {
                    arch, variables, ..
                } => {
                    format!("built-in {arch:?}, {} variables", variables.len())
                }
                model::ModelState::TorchScript { module, .. } => {
                    format!("TorchScript module, {} bytes", module.len())
                }
            };
            println!(
                "run: {} steps recorded, model {model}, optimizer {:?} at step {}, {} epochs x batch {}, last good model kept: {}",
                ck.history.len(),
                ck.optimizer.cfg.kind,
                ck.optimizer.steps,
                ck.run.epochs,
                ck.run.batch,
                ck.last_good.is_some()
            );
            ck.session
        }
        PayloadKind::Model => {
            println!("a moth model file (no session state)");
            return Ok(());
        }
    };
    let s = moth::session::Session::from_bytes(&session_bytes, None)?;
    let (spec, config) = (s.spec(), s.config());
    println!(
        "session: {} classes, inputs {:?}, method {:?}, seed {}",
        spec.num_classes, spec.input_shape, config.method, config.seed
    );
    if let Some(env) = s.resumed_from() {
        println!(
            "written on: moth {}, libtorch {}, {} threads, CPU {}",
            env.moth_version, env.libtorch, env.threads, env.cpu_capability
        );
    }
    println!(
        "phase: {:?}, step {} of {}",
        s.phase(),
        s.step(),
        s.config().max_steps
    );
    println!(
        "accuracy: baseline {:?}, last {:?}, report pending: {}",
        s.accuracy().baseline,
        s.accuracy().last,
        s.accuracy().pending
    );
    println!(
        "trigger cache: {} directions; stamping cap {:.1}",
        s.cache().len(),
        s.bounds().cap
    );
    let sch = s.scheduler();
    let n = sch.classes();
    let chosen: f64 = sch.count.iter().flatten().sum::<f64>() / 2.0;
    println!("pair choices so far: {chosen}");
    println!("pair counts (symmetric):");
    for row in &sch.count {
        println!(
            "  {}",
            row.iter()
                .map(|v| format!("{v:>4}"))
                .collect::<Vec<_>>()
                .join("")
        );
    }
    let sizes: Vec<f64> = (0..n)
        .flat_map(|a| (0..n).map(move |b| (a, b)))
        .filter(|(a, b)| a != b)
        .map(|(a, b)| sch.size[a][b])
        .filter(|v| *v > 0.0)
        .collect();
    if !sizes.is_empty() {
        let mean = sizes.iter().sum::<f64>() / sizes.len() as f64;
        let max = sizes.iter().copied().fold(0.0, f64::max);
        let min = sizes.iter().copied().fold(f64::INFINITY, f64::min);
        println!(
            "scheduler sizes: {} directions, mean {mean:.2}, min {min:.2}, max {max:.2}",
            sizes.len()
        );
    }
    Ok(())
}

#[derive(serde::Serialize)]
struct BenchRow {
    variant: String,
    enlargement: f64,
    accuracy_before: f64,
    accuracy_after: f64,
    harden_seconds: f64,
    steps: u64,
    /// (hardening seconds, enlargement) at each measurement point.
    curve: Vec<(f64, f64)>,
    after: DistanceMatrix,
}

/// Hardening time at which a run's enlargement curve first reaches `target`
/// (linear interpolation between measurement points; None if never).
fn time_to_reach(curve: &[(f64, f64)], target: f64) -> Option<f64> {
    let mut prev = (0.0, 0.0);
    for &(t, e) in curve {
        if e >= target {
            let frac = if e > prev.1 {
                (target - prev.1) / (e - prev.1)
            } else {
                1.0
            };
            return Some(prev.0 + frac.clamp(0.0, 1.0) * (t - prev.0));
        }
        prev = (t, e);
    }
    None
}

/// Each `--variants` entry with its session configuration, validated.
fn bench_variants(a: &BenchArgs) -> moth::Result<Vec<(String, moth::session::SessionConfig)>> {
    use moth::algo::bounds::BoundsMode;
    use moth::session::Method;
    let mut out = Vec::new();
    for v in &a.variants {
        let (method, bounds) = v.split_once(':').unwrap_or((v.as_str(), "fixed"));
        let method: Method = method.parse()?;
        let mut cfg = parse_session_config(a.session_config.as_deref())?;
        cfg.method = method;
        cfg.seed = a.common.seed;
        cfg.bounds.mode = match bounds {
            "fixed" => BoundsMode::Fixed,
            "growing" => BoundsMode::Growing,
            other => {
                return Err(moth::Error::Config(format!(
                    "unknown bounds '{other}' in variant '{v}'"
                )))
            }
        };
        cfg.validate()?;
        out.push((v.clone(), cfg));
    }
    Ok(out)
}

fn run_bench(a: &BenchArgs) -> moth::Result<()> {
    use moth::runner::{HardenRun, RunConfig};

    // Settings first: a typo must not cost a model training.
    let variants = bench_variants(a)?;
    let (mut base, classes) = load_or_train(&a.model, &a.common, None)?;
    let device = base.device();
    let train_set = Dataset::fashion_mnist(Some(&a.common.data), Split::Train)?;
    let mut test_set = Dataset::fashion_mnist(Some(&a.common.data), Split::Test)?;
    test_set.classes = classes;
    let dcfg = DistanceConfig {
        samples_per_class: a.samples,
        budget: moth::config::InversionBudget {
            steps: a.steps,
            ..DistanceConfig::paper().budget
        },
        seeds: vec![a.common.seed],
        ..DistanceConfig::paper()
    };
    println!(
        "bench: {} epoch(s) after warm-up per variant, distances: {}",
        a.epochs,
        dcfg.describe()
    );
    let acc_before = model::accuracy(
        &mut base,
        &test_set.images,
        &test_set.labels,
        model::ACCURACY_BATCH,
    )?;
    let before = measure_with_progress(&mut base, &test_set, &dcfg)?;
    println!(
        "before: accuracy {:.2}%, mean distance {:.2}",
        100.0 * acc_before,
        before.mean()
    );
    let mut rows = Vec::new();
    for (v, cfg) in variants {
        let (model, _) = Model::load(&a.model, None, device)?;
        let run_cfg = RunConfig {
            epochs: a.epochs,
            ..RunConfig::default()
        };
        let mut run = HardenRun::new(model, cfg, run_cfg, &train_set, &test_set)?;
        let total = run.session.config().max_steps;
        let points: Vec<u64> = (1..=a.points.max(1) as u64)
            .map(|i| total * i / a.points.max(1) as u64)
            .collect();
        let pb = bar(total, "{msg} [{bar:30}] step {pos}/{len}, ETA {eta}");
        pb.set_message(v.clone());
        let mut spent = 0.0;
        let mut curve = Vec::new();
        let mut after = before.clone();
        loop {
            let t = Instant::now();
            let more = run.step()?;
            spent += t.elapsed().as_secs_f64();
            pb.set_position(run.session.step());
            let s = run.session.step();
            if points.contains(&s) || !more {
                after = distance::measure(
                    &mut run.model,
                    Samples {
                        images: &test_set.images,
                        labels: test_set.labels_vec(),
                        classes: &test_set.classes,
                    },
                    &dcfg,
                    &mut |_| {},
                )?;
                curve.push((spent, before.enlargement(&after)));
            }
            if !more {
                break;
            }
        }
        pb.finish_and_clear();
        let acc_after = model::accuracy(
            &mut run.model,
            &test_set.images,
            &test_set.labels,
            model::ACCURACY_BATCH,
        )?;
        let row = BenchRow {
            variant: v.clone(),
            enlargement: curve.last().map_or(0.0, |c| c.1),
            accuracy_before: acc_before,
            accuracy_after: acc_after,
            harden_seconds: spent,
            steps: run.session.step(),
            curve,
            after,
        };
        println!(
            "{v}: enlargement {:+.1}%, accuracy {:+.2} points, {:.1} s hardening, {} steps",
            100.0 * row.enlargement,
            100.0 * (acc_after - acc_before),
            spent,
            row.steps
        );
        rows.push(row);
    }
    let table = bench_table(&rows, &dcfg, a, device);
    println!("\n{table}");
    std::fs::create_dir_all(&a.out)
        .map_err(|e| moth::Error::io(format!("creating {}", a.out.display()), e))?;
    let json = serde_json::to_string_pretty(&serde_json::json!({ "before": before, "rows": rows }))
        .map_err(|e| moth::Error::input(e.to_string()))?;
    std::fs::write(a.out.join("bench.json"), json)
        .map_err(|e| moth::Error::io("writing bench.json", e))?;
    std::fs::write(a.out.join("bench.md"), &table)
        .map_err(|e| moth::Error::io("writing bench.md", e))?;
    println!("wrote {}/bench.json and bench.md", a.out.display());
    Ok(())
}

fn bench_table(
    rows: &[BenchRow],
    dcfg: &DistanceConfig,
    a: &BenchArgs,
    device: tch::Device,
) -> String {
    let find = |name: &str| rows.iter().find(|r| r.variant.starts_with(name));
    let target = match (find("moth:"), find("pairwise:")) {
        (Some(m), Some(p)) => Some(m.enlargement.min(p.enlargement)),
        _ => None,
    };
    let mut t = format!(
        "| variant | enlargement | accuracy change (points) | hardening time (s) | steps |{}\n|---|---|---|---|---|{}\n",
        if target.is_some() { " time to reach the common enlargement (s) |" } else { "" },
        if target.is_some() { "---|" } else { "" }
    );
    for r in rows {
        let reach = target.map(|g| {
            time_to_reach(&r.curve, g).map_or("not reached".to_string(), |s| format!("{s:.1}"))
        });
        t.push_str(&format!(
            "| {} | {:+.1}% | {:+.2} | {:.1} | {} |{}\n",
            r.variant,
            100.0 * r.enlargement,
            100.0 * (r.accuracy_after - r.accuracy_before),
            r.harden_seconds,
            r.steps,
            reach.map_or(String::new(), |s| format!(" {s} |"))
        ));
    }
    if let Some(g) = target {
        t.push_str(&format!(
            "\nCommon enlargement = min(MOTH, Pairwise) = {:+.1}%.\n",
            100.0 * g
        ));
    }
    t.push_str(&format!(
        "\nProtocol: {} epoch(s) after a {}-step warm-up, seed {}, device {device:?}, {} libtorch threads; distances: {}; {} measurement points per run.\n",
        a.epochs,
        rows.first().map_or(0, |r| r.after.len()),
        a.common.seed,
        tch::get_num_threads(),
        dcfg.describe(),
        a.points
    ));
    t
}
