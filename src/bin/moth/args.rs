//! The command line: clap structs, the option groups the commands share,
//! and the helpers that turn options into library settings.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use moth::algo::bounds::BoundsMode;
use moth::config::DistanceConfig;
use moth::io::data_source::DataOptions;
use moth::io::numpy::Layout;
use moth::session::{Preset, SessionConfig};
use moth::torch::device::DeviceChoice;

/// Where `train` writes, and where the other commands look for (and first
/// train, when it is missing) the base model.
pub const DEFAULT_MODEL: &str = "runs/base/model.moth";

/// Help of every `--session-config`: the keys it takes (a macro, so that
/// each command can `concat!` its own last sentence).
macro_rules! session_config_help {
    () => {
        "Session settings as JSON: any subset of the top-level keys method, seed, \
         inversion, warmup, first, later, period, portion, stamp_at_least, \
         pairs_per_step, scheduler, bounds, \
         max_steps, accuracy_every, max_accuracy_drop, recover_steps; nested objects may be \
         partial, e.g. '{\"first\":{\"steps\":10}}'."
    };
}

#[derive(Parser)]
#[command(
    name = "moth",
    version,
    about = "MOTH model orthogonalisation: measure and enlarge class distances of image classifiers"
)]
pub struct Cli {
    /// libtorch CPU threads for this command [default: OMP_NUM_THREADS, else
    /// one per core]. A resumed run keeps the count it started with.
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(i32).range(1..))]
    pub threads: Option<i32>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Train a built-in CNN (cnn28 for 1x28x28 images, cnn32 for 3x32x32)
    /// on the data and save it.
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

#[derive(Args, Clone)]
pub struct Common {
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// The data, its format detected: a folder of Fashion-MNIST-style IDX
    /// files, a folder with train/<class>/ and test/<class>/ folders of PNG
    /// or JPEG images, a NumPy .npz archive (x_train, y_train, x_test,
    /// y_test) or a folder of those four as .npy files [default:
    /// /usr/share/datasets/fashion-mnist; with `harden --resume`, the run's].
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[command(flatten)]
    pub data_options: DataArgs,
    /// Seed for every random choice.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// How to read the data.
#[derive(Args, Clone)]
pub struct DataArgs {
    /// Class names, one per line in label order [default: the image
    /// folders' names; Fashion-MNIST's for IDX; the label numbers for NumPy].
    #[arg(long, value_name = "FILE")]
    pub classes: Option<PathBuf>,
    /// Where 4-D NumPy images keep their channels [default: inferred from
    /// the axis of size 1 or 3, and printed].
    #[arg(long)]
    pub layout: Option<LayoutArg>,
    /// Resize every image of an image folder tree to HxW (e.g. 32x32)
    /// [default: the first image's size; other sizes are refused].
    #[arg(long, value_name = "HxW", value_parser = parse_size)]
    pub image_size: Option<(u32, u32)>,
    /// Read the training images of an image folder tree batch by batch even
    /// when they fit in memory (automatic above 2 GiB of decoded pixels; the
    /// test images are always read whole).
    #[arg(long)]
    pub stream: bool,
}

/// `--layout`.
#[derive(Clone, Copy, ValueEnum)]
pub enum LayoutArg {
    /// [n, C, H, W] (PyTorch).
    Nchw,
    /// [n, H, W, C] (NumPy images, TensorFlow).
    Nhwc,
}

impl DataArgs {
    /// The library's reading options.
    pub fn options(&self) -> DataOptions {
        DataOptions {
            classes_file: self.classes.clone(),
            layout: self.layout.map(|l| match l {
                LayoutArg::Nchw => Layout::Nchw,
                LayoutArg::Nhwc => Layout::Nhwc,
            }),
            image_size: self.image_size,
            stream: self.stream,
        }
    }
}

/// `HxW` (e.g. `32x32`), both positive.
pub fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let parts: Vec<&str> = s.split(['x', 'X']).collect();
    match parts.as_slice() {
        [h, w] => match (h.trim().parse::<u32>(), w.trim().parse::<u32>()) {
            (Ok(h), Ok(w)) if h > 0 && w > 0 => Ok((h, w)),
            _ => Err(format!("size must be HxW with positive numbers, got '{s}'")),
        },
        _ => Err(format!("size must be HxW (e.g. 32x32), got '{s}'")),
    }
}

impl Common {
    /// The data folder: `--data`, or the default one.
    pub fn data_dir(&self) -> PathBuf {
        self.data
            .clone()
            .unwrap_or_else(|| moth::io::dataset::FASHION_MNIST_DIR.into())
    }
}

/// Which model to work on.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// A moth model file, or a TorchScript `.pt` (with --input-shape). The
    /// default model is trained first when missing.
    #[arg(long = "model", default_value = DEFAULT_MODEL)]
    pub path: PathBuf,
    /// `C,H,W` of a TorchScript model's inputs.
    #[arg(long, value_parser = parse_shape)]
    pub input_shape: Option<[i64; 3]>,
}

/// How class distances are measured.
#[derive(Args, Clone)]
pub struct ProtocolArgs {
    /// quick (default on CPU: 32 samples/class, 200 steps, 1 seed), confirm
    /// (64 samples/class, 600 steps, 2 seeds: checks a quick result) or
    /// paper (100 samples/class, 1000 steps, 3 seeds; default on CUDA).
    #[arg(long)]
    pub protocol: Option<Protocol>,
    /// Override: test samples per class.
    #[arg(long)]
    pub samples: Option<usize>,
    /// Override: inversion steps per direction.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Override: seeds, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub seeds: Option<Vec<u64>>,
}

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub common: Common,
    /// Built-in network: cnn28 (1x28x28 inputs) or cnn32 (3x32x32) [default:
    /// the one whose input shape is the data's].
    #[arg(long)]
    pub arch: Option<ArchArg>,
    /// Where to write the model.
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub out: PathBuf,
    /// Training epochs.
    #[arg(long, default_value_t = 5)]
    pub epochs: usize,
    /// Mini-batch size.
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Train on the first N training images only (quick experiments); the
    /// test accuracy is still measured on the whole test set.
    #[arg(long)]
    pub limit: Option<usize>,
}

#[derive(Args)]
pub struct DistanceArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub protocol: ProtocolArgs,
    /// Output folder for distances.json and heatmap.png.
    #[arg(long, default_value = "runs/distance")]
    pub out: PathBuf,
}

#[derive(Args)]
pub struct HardenArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Settings preset: `default` (moth's, chosen by measurement) or
    /// `reference` (the authors' settings, exactly).
    #[arg(long, default_value = "default")]
    pub preset: Preset,
    /// moth, universal, pairwise or asymmetric.
    #[arg(long, default_value = "moth")]
    pub method: moth::session::Method,
    /// Epochs over the training data after the warm-up, at most (the run
    /// stops earlier at the accuracy bound). Default: the preset's (2 for
    /// `default`; for `reference` 2 on CUDA, 1 on the CPU).
    #[arg(long)]
    pub epochs: Option<f64>,
    /// Training batch size.
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Stamping bound: fixed (the C*H*W/4 cap) or growing (per pair).
    #[arg(long, default_value = "fixed")]
    pub bounds: BoundsArg,
    /// Stop when clean accuracy drops by more than this many points.
    #[arg(long, default_value_t = 1.0)]
    pub max_drop: f64,
    #[command(flatten)]
    pub protocol: ProtocolArgs,
    /// Skip the distance measurements (only harden).
    #[arg(long)]
    pub no_distance: bool,
    /// Keep BatchNorm running statistics on the clean samples of each batch
    /// (`--clean-statistics` or `=on` / `=off`). Default: on for the
    /// default preset with a built-in model, off for the reference preset
    /// and for TorchScript models (whose buffers are not reachable).
    #[arg(
        long,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "on",
        value_parser = clap::builder::BoolishValueParser::new(),
        value_name = "on|off"
    )]
    pub clean_statistics: Option<bool>,
    /// Output folder: hardened model, report.json, heatmaps, run.ckpt.
    #[arg(long, default_value = "runs/harden")]
    pub out: PathBuf,
    /// Write run.ckpt into the --out folder (with --resume: into that run's
    /// folder) every this many steps (0: only at the end and on Ctrl-C /
    /// SIGTERM).
    #[arg(long, default_value_t = 50)]
    pub checkpoint_every: u64,
    /// Continue the interrupted run whose folder is DIR (other options are
    /// taken from its checkpoint).
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// Start a new run even when the --out folder holds one (its run.ckpt
    /// is overwritten).
    #[arg(long, conflicts_with = "resume")]
    pub force: bool,
    #[arg(long, value_name = "JSON", help = concat!(session_config_help!(),
        " Applied before --method, --seed, --bounds and --max-drop."))]
    pub session_config: Option<String>,
    /// Testing aid: checkpoint and exit (status 130) after this step, as if
    /// interrupted.
    #[arg(long, hide = true)]
    pub stop_after_step: Option<u64>,
}

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub common: Common,
    /// Base model (trained first when the default is missing).
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: PathBuf,
    /// Settings preset every variant starts from (`default` or `reference`).
    #[arg(long, default_value = "default")]
    pub preset: Preset,
    /// Variants, comma-separated: `METHOD[:BOUNDS][+KEY=VALUE...]`. KEY is
    /// `preset`, `lr` (training learning rate), `epochs`, `clean_statistics`
    /// (1: BatchNorm statistics from clean samples only, 0: from the
    /// stamped batches; default: the preset's), or any dotted
    /// session-config key with a JSON value, e.g.
    /// `moth:fixed+preset=reference` or `moth+pairs_per_step=5+portion=0.5`.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "moth:fixed,universal:fixed,pairwise:fixed,asymmetric:fixed"
    )]
    pub variants: Vec<String>,
    /// Epochs after the warm-up, the same for every variant.
    #[arg(long, default_value_t = 0.25)]
    pub epochs: f64,
    /// Distance measurements per run (evenly spaced; the last at the end).
    #[arg(long, default_value_t = 3)]
    pub points: usize,
    /// Test samples per class for the distances.
    #[arg(long, default_value_t = 16)]
    pub samples: usize,
    /// Inversion steps per direction for the distances.
    #[arg(long, default_value_t = 100)]
    pub steps: usize,
    #[arg(long, value_name = "JSON", help = concat!(session_config_help!(),
        " Each variant's method and bounds, and --seed, are applied on top."))]
    pub session_config: Option<String>,
    /// Output folder for bench.json and bench.md.
    #[arg(long, default_value = "runs/bench")]
    pub out: PathBuf,
}

#[derive(Args)]
pub struct InspectArgs {
    /// The checkpoint file.
    pub path: PathBuf,
}

/// `--arch`.
#[derive(Clone, Copy, ValueEnum)]
pub enum ArchArg {
    /// Two conv blocks, for 1x28x28 images (Fashion-MNIST-like).
    Cnn28,
    /// Three conv blocks, for 3x32x32 images (CIFAR-like).
    Cnn32,
}

impl ArchArg {
    /// The library's architecture.
    pub fn arch(self) -> moth::torch::model::Arch {
        match self {
            ArchArg::Cnn28 => moth::torch::model::Arch::Cnn28,
            ArchArg::Cnn32 => moth::torch::model::Arch::Cnn32,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BoundsArg {
    Fixed,
    Growing,
}

impl BoundsArg {
    /// `fixed` or `growing`, as a user types it.
    pub fn parse(s: &str) -> Option<BoundsArg> {
        ValueEnum::from_str(s, true).ok()
    }

    /// The name a user types.
    pub fn name(self) -> &'static str {
        match self {
            BoundsArg::Fixed => "fixed",
            BoundsArg::Growing => "growing",
        }
    }

    /// The library's bound mode.
    pub fn mode(self) -> BoundsMode {
        match self {
            BoundsArg::Fixed => BoundsMode::Fixed,
            BoundsArg::Growing => BoundsMode::Growing,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Protocol {
    /// 32 samples per class, 200 steps, 1 seed (the CPU default).
    Quick,
    /// 64 samples, 600 steps, 2 seeds: confirms a quick result.
    Confirm,
    /// The paper's: 100 samples, 1000 steps, 3 seeds (the CUDA default).
    Paper,
}

impl ProtocolArgs {
    /// The distance protocol: the named one (by default quick on the CPU,
    /// paper on CUDA) with the overrides applied.
    pub fn config(&self, device: tch::Device) -> DistanceConfig {
        let protocol = self.protocol.unwrap_or(if device.is_cuda() {
            Protocol::Paper
        } else {
            Protocol::Quick
        });
        let mut cfg = match protocol {
            Protocol::Quick => DistanceConfig::quick(),
            Protocol::Confirm => DistanceConfig::confirm(),
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

pub fn parse_shape(s: &str) -> Result<[i64; 3], String> {
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

/// The `--session-config` JSON (any subset of `SessionConfig`, nested
/// objects partial too) merged into the defaults. Every command that takes
/// `--session-config` comes here.
/// The preset's session settings with the `--session-config` JSON merged in.
pub fn preset_session_config(preset: Preset, json: Option<&str>) -> moth::Result<SessionConfig> {
    let defaults = preset.session_config();
    match json {
        Some(json) => defaults
            .with_json(json)
            .map_err(|e| moth::Error::Config(format!("--session-config: {e}"))),
        None => Ok(defaults),
    }
}

/// Refuses a mini-batch size of 0 (which would otherwise divide by zero).
pub fn check_batch(batch: usize) -> moth::Result<()> {
    if batch == 0 {
        return Err(moth::Error::Config("--batch must be at least 1".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_nested_session_config_is_merged_into_the_defaults() {
        let cfg =
            preset_session_config(Preset::Default, Some(r#"{"first":{"steps":10}}"#)).unwrap();
        let defaults = SessionConfig::default();
        assert_eq!(cfg.first.steps, 10);
        assert_eq!(cfg.first.init_cost, defaults.first.init_cost);
        assert_eq!(cfg.later, defaults.later);
        assert_eq!(
            preset_session_config(Preset::Default, None).unwrap(),
            defaults
        );
    }

    #[test]
    fn bad_session_config_names_the_option() {
        for bad in [r#"{"bogus":1}"#, r#"{"portion":1.5}"#, "not json", "[1]"] {
            let e = preset_session_config(Preset::Default, Some(bad))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("invalid configuration") && e.contains("--session-config"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn session_config_help_lists_every_top_level_key() {
        let keys = serde_json::to_value(SessionConfig::default()).unwrap();
        for key in keys.as_object().unwrap().keys() {
            assert!(session_config_help!().contains(key.as_str()), "{key}");
        }
    }

    #[test]
    fn shapes_and_batches_are_checked() {
        assert_eq!(parse_shape("1, 28,28"), Ok([1, 28, 28]));
        assert!(parse_shape("1,28").is_err());
        assert!(parse_shape("0,28,28").is_err());
        assert!(check_batch(0).is_err());
        assert!(check_batch(1).is_ok());
        assert_eq!(parse_size("32x24"), Ok((32, 24)));
        assert!(parse_size("32").is_err() && parse_size("0x4").is_err());
    }

    #[test]
    fn bounds_names_round_trip() {
        for b in [BoundsArg::Fixed, BoundsArg::Growing] {
            assert_eq!(BoundsArg::parse(b.name()), Some(b));
        }
        assert_eq!(BoundsArg::parse("wobbly"), None);
    }
}
