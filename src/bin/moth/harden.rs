//! `moth harden`: distances before, the hardening loop (checkpointed,
//! stoppable with Ctrl-C, resumable), distances after, the report.

use std::path::{Path, PathBuf};
use std::time::Instant;

use moth::algo::distance::DistanceMatrix;
use moth::config::DistanceConfig;
use moth::io::data_source::DataSource;
use moth::io::dataset::{BatchSource, Dataset, Split};
use moth::runner::{HardenRun, RunConfig, StepRecord};
use moth::session::{Phase, Preset, Session, SessionConfig};
use moth::torch::model::{Classifier, Model};

use crate::args::{check_batch, preset_session_config, HardenArgs};
use crate::data::DataId;
use crate::distance::{measure_keeping_triggers, measure_with_progress, stamped_accuracy};
use crate::progress::{bar, Progress};
use crate::report::{
    create_dir, device_name, print_matrix, test_accuracy, write_harden_report, HardenReport,
};
use crate::{Failure, Outcome};
use moth::algo::distance::FoundTrigger;
use moth::algo::stamped_accuracy::StampedAccuracy;

/// What `--resume` needs besides the run checkpoint: the settings that
/// shape the final report and the "before" half of it.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct HardenNotes {
    model: String,
    /// The data the run started on; a resumed run continues on it.
    data: DataId,
    method: String,
    no_distance: bool,
    distance: DistanceConfig,
    accuracy_before: f64,
    before: Option<DistanceMatrix>,
    /// The base model's triggers and its accuracy on samples they stamp.
    before_triggers: Vec<FoundTrigger>,
    stamped_before: Option<StampedAccuracy>,
    seconds_before_hardening: f64,
    harden_seconds_so_far: f64,
}

/// The data of a run: the training split (perhaps read per batch) and
/// the test split in memory.
struct Data {
    train: Box<dyn BatchSource>,
    test: Dataset,
}

/// A run checkpoint read for `--resume`, with the notes already decoded
/// (they say which data to load).
struct Stored {
    dir: PathBuf,
    path: PathBuf,
    bytes: Vec<u8>,
    notes: HardenNotes,
}

pub fn run(a: &HardenArgs) -> Outcome {
    let wall = Instant::now();
    // Settings first: a typo must not cost a model training.
    let session_cfg = match a.resume {
        Some(_) => None,
        None => Some(session_config(a)?),
    };
    let stored = match &a.resume {
        Some(dir) => Some(read_run(dir)?),
        None => {
            refuse_to_overwrite(a)?;
            None
        }
    };
    let source = match &stored {
        Some(s) => s.notes.data.resume_source(a.common.data.as_deref())?,
        None => crate::data::open(&a.common)?,
    };
    if source.streams_training()? {
        println!("the training images are read from their files batch by batch");
    }
    let mut data = Data {
        train: source.training()?,
        test: source.load(Split::Test)?,
    };
    let (mut run, mut notes, out) = match (stored, session_cfg) {
        (Some(stored), _) => resume(a, stored, data.train.as_ref(), &data.test)?,
        (None, Some(cfg)) => {
            let (run, notes) = start(a, cfg, &source, data.train.as_ref(), &mut data.test)?;
            (run, notes, a.out.clone())
        }
        (None, None) => unreachable!("a new run has its settings"),
    };
    if let Some(b) = &notes.before {
        data.test.classes = b.classes.clone();
    }
    create_dir(&out)?;
    let ckpt = out.join("run.ckpt");
    notes.harden_seconds_so_far = harden_loop(&mut run, &notes, a, &out)?;
    save(&run, &notes, &ckpt)?;
    finish(run, notes, &data, &out, wall)
}

/// A new run would overwrite the checkpoint of an earlier one in `--out`
/// (perhaps hours of an interrupted run): only with `--force`.
fn refuse_to_overwrite(a: &HardenArgs) -> moth::Result<()> {
    let ckpt = a.out.join("run.ckpt");
    if a.force || !ckpt.exists() {
        return Ok(());
    }
    Err(moth::Error::Config(format!(
        "{} already holds a run ({}): continue it with `moth harden --resume {}`, \
         or pass --force to start a new run over it",
        a.out.display(),
        ckpt.display(),
        a.out.display()
    )))
}

/// Reads DIR/run.ckpt and its notes.
fn read_run(dir: &Path) -> moth::Result<Stored> {
    let path = dir.join("run.ckpt");
    let bytes = moth::io::container::read_checkpoint(&path)?;
    let notes = HardenRun::notes(&bytes).map_err(|e| named(&path, e))?;
    Ok(Stored {
        dir: dir.to_path_buf(),
        path,
        bytes,
        notes,
    })
}

/// A checkpoint rejection with the file's path in front.
fn named(path: &Path, e: moth::Error) -> moth::Error {
    match e {
        moth::Error::Checkpoint(m) => moth::Error::Checkpoint(format!("{}: {m}", path.display())),
        other => other,
    }
}

/// The session settings: `--session-config`, then the dedicated options.
fn session_config(a: &HardenArgs) -> moth::Result<SessionConfig> {
    check_batch(a.batch)?;
    let mut cfg = preset_session_config(a.preset, a.session_config.as_deref())?;
    cfg.method = a.method;
    cfg.seed = a.common.seed;
    cfg.max_accuracy_drop = a.max_drop / 100.0;
    cfg.bounds.mode = a.bounds.mode();
    cfg.validate()?;
    Ok(cfg)
}

/// Continues the run in DIR from its checkpoint.
fn resume<'d>(
    a: &HardenArgs,
    stored: Stored,
    train_set: &'d dyn BatchSource,
    test_set: &Dataset,
) -> moth::Result<(HardenRun<'d>, HardenNotes, PathBuf)> {
    let device = a.common.device.resolve()?;
    let (run, notes): (HardenRun, HardenNotes) =
        HardenRun::resume(&stored.bytes, device, train_set, test_set)
            .map_err(|e| named(&stored.path, e))?;
    pin_threads(&run.session);
    println!(
        "resuming {} from {} at step {} of {} ({}), on the data in {}",
        notes.model,
        stored.path.display(),
        run.session.step(),
        run.session.config().max_steps,
        run.session.phase(),
        notes.data.dir.display()
    );
    Ok((run, notes, stored.dir))
}

/// CPU results are bit-identical only with the thread count the run started
/// with: the CLI owns its process, so it pins it.
fn pin_threads(session: &Session) {
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

/// A new run: the model, its accuracy and distances before, the runner.
fn start<'d>(
    a: &HardenArgs,
    session_cfg: SessionConfig,
    source: &DataSource,
    train_set: &'d dyn BatchSource,
    test_set: &mut Dataset,
) -> Outcome<(HardenRun<'d>, HardenNotes)> {
    let start = Instant::now();
    let data = DataId::of(source)?;
    let (mut base, classes) =
        crate::train::load_or_train(&a.model.path, &a.common, a.model.input_shape)?;
    crate::check::model_suits_data(&mut base, &a.model.path, test_set, source.path())?;
    if classes.len() == test_set.num_classes() {
        test_set.classes = classes;
    }
    let device = base.device();
    let dcfg = a.protocol.config(device);
    let preset = RunConfig::for_preset(a.preset);
    // The reference's 2 epochs take 12 minutes of a 2-core CPU: there it
    // runs 1 unless asked for more.
    let preset_epochs = match a.preset {
        Preset::Reference if !device.is_cuda() => 1.0,
        _ => preset.epochs,
    };
    let run_cfg = RunConfig {
        epochs: a.epochs.unwrap_or(preset_epochs),
        batch: a.batch,
        ..preset
    }
    .fitted_to(&base, a.clean_statistics);
    print_plan(a, &base, &run_cfg);
    let acc_before = test_accuracy(&mut base, test_set)?;
    println!("clean test accuracy before: {:.2}%", 100.0 * acc_before);
    let (before, before_triggers, stamped_before) = match a.no_distance {
        true => (None, Vec::new(), None),
        false => {
            let (m, triggers) = distances_before(&mut base, test_set, &dcfg)?;
            let stamped = stamped_check(&mut base, test_set, &triggers)?;
            (Some(m), triggers, stamped)
        }
    };
    let run = HardenRun::new(base, session_cfg, run_cfg, train_set, test_set)?;
    let notes = HardenNotes {
        model: a.model.path.display().to_string(),
        data,
        method: a.method.name().to_string(),
        no_distance: a.no_distance,
        distance: dcfg,
        accuracy_before: acc_before,
        before,
        before_triggers,
        stamped_before,
        seconds_before_hardening: start.elapsed().as_secs_f64(),
        harden_seconds_so_far: 0.0,
    };
    Ok((run, notes))
}

fn print_plan(a: &HardenArgs, model: &Model, run_cfg: &RunConfig) {
    println!(
        "hardening {} ({}) with {}, {} epoch(s) after warm-up, batch {}, bounds {}, device {}, {} libtorch threads",
        a.model.path.display(),
        model.describe(),
        a.method.name(),
        run_cfg.epochs,
        run_cfg.batch,
        a.bounds.name(),
        device_name(model.device()),
        tch::get_num_threads()
    );
    let statistics = match (run_cfg.clean_statistics, model.is_torchscript()) {
        (true, _) => "from each batch's clean samples",
        (false, true) => {
            "from the stamped batches (a TorchScript model's buffers are not reachable)"
        }
        (false, false) => "from the stamped batches",
    };
    println!("BatchNorm running statistics: {statistics}");
}

fn distances_before(
    model: &mut Model,
    test_set: &Dataset,
    dcfg: &DistanceConfig,
) -> Outcome<(DistanceMatrix, Vec<FoundTrigger>)> {
    println!("distances before hardening ({})", dcfg.describe());
    let (m, triggers) = measure_keeping_triggers(model, test_set, dcfg)
        .map_err(|f| f.with_note("hardening had not started: nothing written"))?;
    print_matrix(&m);
    Ok((m, triggers))
}

/// `model`'s accuracy on test samples stamped with the base model's
/// triggers; None when no direction produced one.
fn stamped_check(
    model: &mut Model,
    test_set: &Dataset,
    triggers: &[FoundTrigger],
) -> moth::Result<Option<StampedAccuracy>> {
    if triggers.is_empty() {
        return Ok(None);
    }
    stamped_accuracy(model, test_set, triggers).map(Some)
}

/// Writes the run checkpoint (atomically) with the notes.
fn save(run: &HardenRun, notes: &HardenNotes, ckpt: &Path) -> moth::Result<()> {
    moth::io::container::write_atomic(ckpt, &run.checkpoint(notes)?)
}

/// Steps until the session is done, checkpointing every
/// `--checkpoint-every` steps; Ctrl-C (or `--stop-after-step`) checkpoints
/// and stops. Returns the hardening seconds, earlier sessions included.
fn harden_loop(
    run: &mut HardenRun,
    notes: &HardenNotes,
    a: &HardenArgs,
    out: &Path,
) -> Outcome<f64> {
    println!(
        "hardening loop started at step {} of {} (Ctrl-C checkpoints and stops; checkpoint every {} steps)",
        run.session.step(),
        run.session.config().max_steps,
        a.checkpoint_every
    );
    let loop_start = Instant::now();
    let spent = || notes.harden_seconds_so_far + loop_start.elapsed().as_secs_f64();
    let ckpt = out.join("run.ckpt");
    let pb = bar(
        run.session.config().max_steps,
        "{msg}\n[{bar:30}] step {pos}/{len}, {elapsed} elapsed, ETA {eta}",
    );
    pb.set_position(run.session.step());
    while run.step()? {
        let s = run.session.step();
        show_step(&pb, run);
        let stop = stop_request(a, s);
        if stop.is_some() || (a.checkpoint_every > 0 && s % a.checkpoint_every == 0) {
            let notes = HardenNotes {
                harden_seconds_so_far: spent(),
                ..notes.clone()
            };
            save(run, &notes, &ckpt)?;
        }
        if let Some(word) = stop {
            pb.finish_and_clear();
            return Err(Failure::Stopped(format!(
                "{word} at step {s}: checkpoint written to {}\nresume with: moth harden --resume {}",
                ckpt.display(),
                out.display()
            )));
        }
    }
    pb.finish_and_clear();
    Ok(spent())
}

/// Why the loop should stop after step `s`, if it should.
fn stop_request(a: &HardenArgs, s: u64) -> Option<&'static str> {
    if crate::interrupted() {
        Some("interrupted")
    } else if a.stop_after_step == Some(s) {
        Some("stopped")
    } else {
        None
    }
}

fn show_step(pb: &Progress, run: &HardenRun) {
    pb.set_position(run.session.step());
    if let Some(r) = run.history.last() {
        pb.set_message(step_message(r, &run.session));
    }
}

fn step_message(r: &StepRecord, s: &Session) -> String {
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
        "{}: trigger sizes [{}] (*=stamped), loss {:.3}, held-out acc {acc}",
        r.phase,
        sizes.join(", "),
        r.loss
    )
}

/// Accuracy and distances after, the hardened model and the report.
fn finish(
    mut run: HardenRun,
    notes: HardenNotes,
    data: &Data,
    out: &Path,
    wall: Instant,
) -> Outcome {
    println!(
        "hardening stopped after {} steps ({:.1} s of hardening): {}{}",
        run.session.step(),
        notes.harden_seconds_so_far,
        run.session.phase(),
        if run.restored_last_good() {
            " (returned to the last model within the accuracy bound)"
        } else {
            ""
        }
    );
    let acc_after = test_accuracy(&mut run.model, &data.test)?;
    println!(
        "clean test accuracy after: {:.2}% (change {:+.2} points)",
        100.0 * acc_after,
        100.0 * (acc_after - notes.accuracy_before)
    );
    let model_path = save_hardened(&run.model, out, data.train.classes())?;
    let after = match &notes.before {
        None => None,
        Some(_) => Some(distances_after(
            &mut run.model,
            &data.test,
            &notes,
            out,
            &model_path,
        )?),
    };
    let stamped_after = stamped_check(&mut run.model, &data.test, &notes.before_triggers)?;
    let report = build_report(&run, notes, acc_after, after, stamped_after, wall);
    write_harden_report(&report, out)?;
    Ok(())
}

/// DIR/hardened.moth (or hardened.pt for a TorchScript model).
fn save_hardened(model: &Model, out: &Path, classes: &[String]) -> moth::Result<PathBuf> {
    let ext = if model.is_torchscript() { "pt" } else { "moth" };
    let path = out.join(format!("hardened.{ext}"));
    model.save(&path, classes)?;
    println!("hardened model written to {}", path.display());
    Ok(path)
}

fn distances_after(
    model: &mut Model,
    test_set: &Dataset,
    notes: &HardenNotes,
    out: &Path,
    model_path: &Path,
) -> Outcome<DistanceMatrix> {
    println!("distances after hardening ({})", notes.distance.describe());
    let m = measure_with_progress(model, test_set, &notes.distance).map_err(|f| {
        f.with_note(&format!(
            "the hardened model is in {}; no report written\n\
             to measure the distances after and write the report: moth harden --resume {}",
            model_path.display(),
            out.display()
        ))
    })?;
    print_matrix(&m);
    Ok(m)
}

fn build_report(
    run: &HardenRun,
    notes: HardenNotes,
    accuracy_after: f64,
    after: Option<DistanceMatrix>,
    stamped_after: Option<StampedAccuracy>,
    wall: Instant,
) -> HardenReport {
    let phase = run.session.phase();
    let done_reason = match phase {
        Phase::Done { reason } => Some(reason.name().to_string()),
        _ => None,
    };
    let enlargement = notes
        .before
        .as_ref()
        .zip(after.as_ref())
        .map(|(b, a)| b.enlargement(a));
    let change = notes
        .before
        .as_ref()
        .zip(after.as_ref())
        .map(|(b, a)| b.change(a, 5));
    HardenReport {
        method: run.session.config().method.name().to_string(),
        model: notes.model,
        device: device_name(run.model.device()),
        steps: run.session.step(),
        final_phase: phase.to_string(),
        done_reason,
        accuracy_before: notes.accuracy_before,
        accuracy_after,
        enlargement,
        mean_before: notes.before.as_ref().map(DistanceMatrix::mean),
        mean_after: after.as_ref().map(DistanceMatrix::mean),
        harden_seconds: notes.harden_seconds_so_far,
        wall_seconds: wall.elapsed().as_secs_f64(),
        protocol: notes.distance.describe(),
        before: notes.before,
        after,
        change,
        stamped: notes.stamped_before.zip(stamped_after),
        time_split: moth::runner::TimeSplit::of(&run.history),
        session_config: run.session.config().clone(),
        pair_counts: run.session.scheduler().count.clone(),
        history: run.history.clone(),
    }
}
