//! The `moth` program end to end on a small slice of Fashion-MNIST: train,
//! measure distances, harden, interrupt and resume (in new processes), inspect.
//!
//! The tests run in parallel, each starting `moth` processes: one libtorch
//! thread each, since OpenMP pools that spin on the same two cores slow
//! each other down by an order of magnitude.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

const MOTH: &str = env!("CARGO_BIN_EXE_moth");

/// Small budgets so that a hardening run takes seconds.
const SMALL: &str = r#"{"warmup":{"budget":{"steps":15,"init_cost":0.001,"asr_bound":0.99}},
 "first":{"steps":10,"init_cost":0.001,"asr_bound":0.9},
 "later":{"steps":4,"init_cost":0.01,"asr_bound":0.9},"accuracy_every":4}"#;

fn moth(args: &[&str]) -> std::process::Output {
    moth_in(Path::new("."), args)
}

/// Runs moth in `dir`, where its default paths (runs/...) resolve.
fn moth_in(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(MOTH)
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .env("OMP_NUM_THREADS", "1")
        .output()
        .expect("moth runs")
}

fn ok(args: &[&str]) -> String {
    let out = moth(args);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "moth {args:?} failed: {}\n{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn base_model(dir: &Path) -> String {
    let path = dir.join("base.moth");
    let p = path.to_str().unwrap().to_string();
    let out = ok(&[
        "train", "--epochs", "1", "--limit", "3000", "--out", &p, "--device", "cpu",
    ]);
    assert!(out.contains("test accuracy"), "{out}");
    assert!(out.contains("(3000 images"), "--limit is honoured: {out}");
    p
}

/// Sends SIGINT (Ctrl-C) to a child.
fn interrupt(child: &std::process::Child) {
    // SAFETY: plain kill(2) on our own child.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
}

/// Text shows no Rust `Debug` rendering of devices, phases or reasons.
fn assert_plain_names(what: &str, text: &str) {
    for debug in [
        "Cpu",
        "Cuda(",
        "Done {",
        "StepBudget",
        "AccuracyBound",
        "Some(",
        "Cnn28",
    ] {
        assert!(!text.contains(debug), "{what} holds '{debug}':\n{text}");
    }
}

/// The history of a report without its timings.
fn history(dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("report.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut h = v["history"].take();
    for r in h.as_array_mut().unwrap() {
        r.as_object_mut().unwrap().remove("seconds");
        r.as_object_mut().unwrap().remove("harden_seconds");
    }
    h.as_array().unwrap().clone()
}

#[test]
fn distance_matrix_on_fashion_mnist() {
    let dir = tempfile::tempdir().unwrap();
    let model = base_model(dir.path());
    let out_dir = dir.path().join("d");
    let out = ok(&[
        "distance",
        "--model",
        &model,
        "--samples",
        "8",
        "--steps",
        "15",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    for name in [
        "T-shirt/to",
        "Ankle boot",
        "mean distance",
        "8 test samples/class, 15 steps",
    ] {
        assert!(out.contains(name), "missing '{name}' in\n{out}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("distances.json")).unwrap())
            .unwrap();
    let values = json["values"].as_array().unwrap();
    assert_eq!(values.len(), 10);
    let measured = values
        .iter()
        .enumerate()
        .flat_map(|(a, r)| {
            r.as_array()
                .unwrap()
                .iter()
                .enumerate()
                .map(move |(b, v)| (a, b, v.as_f64().unwrap()))
        })
        .filter(|(a, b, v)| a != b && *v > 0.0)
        .count();
    assert!(measured >= 45, "most directions measured: {measured}");
    assert!(
        std::fs::metadata(out_dir.join("heatmap.png"))
            .unwrap()
            .len()
            > 1000
    );
}

#[test]
fn interrupted_and_resumed_run_equals_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let model = base_model(dir.path());
    let straight = dir.path().join("straight");
    let split = dir.path().join("split");
    let common = [
        "harden",
        "--model",
        &model,
        "--epochs",
        "0.02",
        "--no-distance",
        "--session-config",
        SMALL,
        "--device",
        "cpu",
    ];
    let mut args = common.to_vec();
    args.extend(["--out", straight.to_str().unwrap()]);
    let out = ok(&args);
    assert!(out.contains("MOTH report"), "{out}");
    assert!(
        out.contains("BatchNorm running statistics: from each batch's clean samples"),
        "the default preset keeps clean statistics: {out}"
    );
    // Stop inside the orthogonalisation phase (10 warm-up steps, period 3).
    let mut args = common.to_vec();
    args.extend(["--out", split.to_str().unwrap(), "--stop-after-step", "14"]);
    let out = moth(&args);
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inspect = ok(&["inspect", split.join("run.ckpt").to_str().unwrap()]);
    assert!(inspect.contains("step 14 of 20"), "{inspect}");
    let out = ok(&["harden", "--resume", split.to_str().unwrap()]);
    assert!(
        out.contains("resuming") && out.contains("at step 14"),
        "{out}"
    );
    assert_eq!(
        history(&straight),
        history(&split),
        "same steps, sizes, losses and accuracies"
    );
    let a = std::fs::read(straight.join("hardened.moth")).unwrap();
    let b = std::fs::read(split.join("hardened.moth")).unwrap();
    assert!(a == b, "hardened models are bit-identical");
    let inspect = ok(&["inspect", split.join("run.ckpt").to_str().unwrap()]);
    assert!(inspect.contains("phase: done"), "{inspect}");
}

#[test]
fn ctrl_c_checkpoints_and_the_run_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let model = base_model(dir.path());
    let out_dir = dir.path().join("run");
    let mut child = Command::new(MOTH)
        .env("OMP_NUM_THREADS", "1")
        .args([
            "harden",
            "--model",
            &model,
            "--epochs",
            "0.2",
            "--no-distance",
            "--session-config",
            SMALL,
            "--device",
            "cpu",
            "--out",
        ])
        .arg(&out_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap().contains("hardening loop started") {
            break;
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(1500));
    interrupt(&child);
    let rest: Vec<String> = lines.map_while(|l| l.ok()).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("interrupted at step")),
        "{rest:?}"
    );
    let out = ok(&["harden", "--resume", out_dir.to_str().unwrap()]);
    assert!(out.contains("MOTH report"), "{out}");
}

#[test]
fn clear_errors_for_bad_input() {
    let out = moth(&[
        "distance",
        "--model",
        "/nonexistent/model.moth",
        "--device",
        "cpu",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("moth: error") && err.contains("/nonexistent/model.moth"),
        "{err}"
    );
    let out = moth(&["train", "--data", "/nonexistent", "--device", "cpu"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    // Bad settings are refused before the default model would be trained
    // into runs/base/ (which takes minutes and leaves files behind).
    let dir = tempfile::tempdir().unwrap();
    let bad_settings: [&[&str]; 3] = [
        &[
            "harden",
            "--session-config",
            "{\"bogus\":1}",
            "--no-distance",
        ],
        &[
            "harden",
            "--session-config",
            "{\"portion\":1.5}",
            "--no-distance",
        ],
        &["bench", "--variants", "moth:wobbly"],
    ];
    for args in bad_settings {
        let started = std::time::Instant::now();
        let out = moth_in(dir.path(), &[args, &["--device", "cpu"]].concat());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("invalid configuration"), "{args:?}: {err}");
        assert!(
            !dir.path().join("runs").exists(),
            "{args:?} trained a model first"
        );
        assert!(
            started.elapsed().as_secs() < 20,
            "{args:?} took {:?}",
            started.elapsed()
        );
    }
    let bad = dir.path().join("bad.ckpt");
    std::fs::write(&bad, b"MOTHCKPT garbage").unwrap();
    let out = moth(&["inspect", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("checkpoint rejected"));
    let out = moth(&["distance", "--device", "tpu"]);
    assert!(!out.status.success());
}

#[test]
fn report_and_inspect_use_plain_names() {
    let dir = tempfile::tempdir().unwrap();
    let model = base_model(dir.path());
    let out_dir = dir.path().join("run");
    let out = ok(&[
        "harden",
        "--model",
        &model,
        "--epochs",
        "0.02",
        "--samples",
        "2",
        "--steps",
        "5",
        "--session-config",
        SMALL,
        "--device",
        "cpu",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(
        out.contains("device cpu") && out.contains("with moth"),
        "{out}"
    );
    assert!(out.contains("MOTH report (moth)"), "{out}");
    assert_plain_names("harden output", &out);
    let text = std::fs::read_to_string(out_dir.join("report.json")).unwrap();
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["device"], "cpu");
    assert_eq!(report["method"], "moth");
    assert_eq!(report["done_reason"], "step-budget");
    assert!(
        report["final_phase"].as_str().unwrap().starts_with("done"),
        "{}",
        report["final_phase"]
    );
    assert_plain_names("report.json", &text);
    assert!(out.contains("closest directions before"), "{out}");
    assert!(out.contains("hardening time: warm-up inversions"), "{out}");
    let split = &report["time_split"];
    let parts: f64 = ["warmup_hardening", "later_hardening", "training"]
        .iter()
        .map(|k| split[k].as_f64().unwrap())
        .sum();
    let total = report["harden_seconds"].as_f64().unwrap();
    assert!(parts > 0.0 && parts <= total + 0.5, "{split} vs {total}");
    assert!(split["warmup_hardening"].as_f64().unwrap() > 0.0, "{split}");
    let cf = &report["change"]["close_far"];
    assert!(cf["k"].as_u64().unwrap() <= 5, "{cf}");
    // Every direction measured before left a trigger, so the stamped check
    // ran exactly when one was measured.
    let measured = 90 - report["before"]["failed"].as_array().unwrap().len();
    assert_eq!(
        report["stamped"].is_null(),
        measured == 0,
        "{}",
        report["stamped"]
    );
    if measured > 0 {
        assert_eq!(report["stamped"][0]["directions"], measured);
        for side in 0..2 {
            let mean = report["stamped"][side]["mean"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&mean), "{mean}");
        }
        assert!(out.contains("stamped with the base model's"), "{out}");
    }
    for png in ["before.png", "after.png", "difference.png"] {
        assert!(out_dir.join(png).exists(), "{png}");
    }
    let inspect = ok(&["inspect", out_dir.join("run.ckpt").to_str().unwrap()]);
    assert!(inspect.contains("method moth"), "{inspect}");
    assert_plain_names("inspect output", &inspect);
}

#[test]
fn partial_session_config_is_accepted() {
    // A nested object with one key: merged into the defaults. The model
    // path is wrong, so the run fails after the settings were accepted.
    for command in ["harden", "bench"] {
        let out = moth(&[
            command,
            "--session-config",
            r#"{"first":{"steps":10}}"#,
            "--model",
            "/nonexistent/partial.moth",
            "--device",
            "cpu",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{command}: {err}");
        assert!(
            !err.contains("invalid configuration") && err.contains("/nonexistent/partial.moth"),
            "{command}: {err}"
        );
    }
}

#[test]
fn batch_zero_is_refused() {
    let cases: [&[&str]; 2] = [
        &["train", "--batch", "0", "--device", "cpu"],
        &["harden", "--batch", "0", "--no-distance", "--device", "cpu"],
    ];
    for args in cases {
        let dir = tempfile::tempdir().unwrap();
        let out = moth_in(dir.path(), args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("--batch must be at least 1"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(!dir.path().join("runs").exists(), "{args:?} wrote files");
    }
}

#[test]
fn help_lists_session_config_keys_and_checkpoint_folder() {
    for command in ["harden", "bench"] {
        let help = ok(&[command, "--help"]);
        for key in [
            "method",
            "inversion",
            "scheduler",
            "max_steps",
            "max_accuracy_drop",
        ] {
            assert!(help.contains(key), "{command} --help lacks {key}:\n{help}");
        }
    }
    let help = ok(&["harden", "--help"]);
    assert!(help.contains("run.ckpt into the --out folder"), "{help}");
}

#[test]
fn ctrl_c_stops_a_distance_measurement_and_a_second_one_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let model = base_model(dir.path());
    let out_dir = dir.path().join("d");
    let mut child = Command::new(MOTH)
        .env("OMP_NUM_THREADS", "1")
        .env("RUST_LOG", "warn")
        .args([
            "distance",
            "--model",
            &model,
            "--samples",
            "8",
            "--steps",
            "300",
            "--device",
            "cpu",
            "--out",
        ])
        .arg(&out_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in stdout.by_ref() {
        if line.unwrap().starts_with("protocol:") {
            break;
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    interrupt(&child);
    // The measurement notices it after the source class it is on ...
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(|l| l.ok()) {
            let _ = tx.send(line);
        }
    });
    let noticed = rx
        .iter()
        .any(|l| l.contains("interrupted: stopping when this distance measurement ends"));
    assert!(noticed, "the interruption was announced");
    // ... and a second Ctrl-C ends the process at once (unless it is over).
    let started = std::time::Instant::now();
    interrupt(&child);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(started.elapsed().as_secs() < 10, "{:?}", started.elapsed());
    assert!(
        !out_dir.join("distances.json").exists(),
        "no result written"
    );
}

/// Writes an IDX file of unsigned bytes.
fn write_idx(path: &Path, dims: &[u32], data: &[u8]) {
    let mut b = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        b.extend(d.to_be_bytes());
    }
    b.extend(data);
    std::fs::write(path, b).unwrap();
}

/// A tiny Fashion-MNIST-like data folder: `train` and `test` images of
/// `[c, h, w]`, labels cycling through the ten classes.
fn tiny_data(dir: &Path, shape: [u32; 3], train: u32, test: u32) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let [c, h, w] = shape;
    for (prefix, n) in [("train", train), ("t10k", test)] {
        let dims: Vec<u32> = match c {
            1 => vec![n, h, w],
            _ => vec![n, c, h, w],
        };
        let pixels: Vec<u8> = (0..n * c * h * w).map(|i| (i * 37 % 251) as u8).collect();
        write_idx(
            &dir.join(format!("{prefix}-images-idx3-ubyte")),
            &dims,
            &pixels,
        );
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        write_idx(
            &dir.join(format!("{prefix}-labels-idx1-ubyte")),
            &[n],
            &labels,
        );
    }
    dir.to_str().unwrap().to_string()
}

/// An untrained built-in model file (moth's format), written in no time.
fn untrained_model(
    path: &Path,
    arch: moth::torch::model::Arch,
    classes: usize,
    nan: bool,
) -> String {
    let model = moth::torch::model::Model::builtin(arch, classes as i64, tch::Device::Cpu).unwrap();
    if nan {
        tch::no_grad(|| {
            for (_, p) in model.parameters() {
                let _ = p.shallow_clone().fill_(f64::NAN);
            }
        });
    }
    let names: Vec<String> = (0..classes).map(|i| format!("c{i}")).collect();
    model.save(path, &names).unwrap();
    path.to_str().unwrap().to_string()
}

fn fails_cleanly(out: &std::process::Output, what: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{what}: {err}");
    assert!(err.contains("moth: error"), "{what}: {err}");
    assert!(!err.contains("panicked"), "{what}: {err}");
    err
}

#[test]
fn model_and_data_are_checked_before_the_first_forward() {
    use moth::torch::model::Arch;
    let dir = tempfile::tempdir().unwrap();
    let wide = untrained_model(&dir.path().join("wide.moth"), Arch::Cnn32, 10, false);
    let five = untrained_model(&dir.path().join("five.moth"), Arch::Cnn28, 5, false);
    let out = dir.path().join("out").to_str().unwrap().to_string();
    for (model, expected) in [
        (&wide, "takes 3x32x32 inputs and predicts 10 classes"),
        (&five, "takes 1x28x28 inputs and predicts 5 classes"),
    ] {
        let cases: [&[&str]; 3] = [
            &["distance", "--samples", "2", "--steps", "2"],
            &["harden", "--no-distance", "--stop-after-step", "1"],
            &["bench", "--samples", "2", "--steps", "2"],
        ];
        for args in cases {
            let args = [args, &["--model", model, "--device", "cpu", "--out", &out]].concat();
            let err = fails_cleanly(&moth(&args), &format!("{args:?}"));
            assert!(err.contains(expected), "{args:?}: {err}");
            assert!(err.contains(model.as_str()), "{args:?}: {err}");
            assert!(
                err.contains("has 1x28x28 images and 10 classes"),
                "{args:?}: {err}"
            );
        }
    }
    // moth train: the built-in cnn28 takes 1x28x28 images.
    let colour = tiny_data(&dir.path().join("colour"), [3, 32, 32], 20, 20);
    let model = dir.path().join("m.moth");
    let out = moth(&[
        "train",
        "--arch",
        "cnn28",
        "--data",
        &colour,
        "--out",
        model.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    let err = fails_cleanly(&out, "train");
    assert!(
        err.contains("built-in cnn28 takes 1x28x28 images") && err.contains("3x32x32"),
        "{err}"
    );
    assert!(!model.exists());
}

#[test]
fn a_model_with_non_finite_outputs_is_refused() {
    use moth::torch::model::Arch;
    let dir = tempfile::tempdir().unwrap();
    let nan = untrained_model(&dir.path().join("nan.moth"), Arch::Cnn28, 10, true);
    let out_dir = dir.path().join("d");
    let out = moth(&[
        "distance",
        "--model",
        &nan,
        "--samples",
        "2",
        "--steps",
        "5",
        "--device",
        "cpu",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let err = fails_cleanly(&out, "distance");
    assert!(
        err.contains("are not finite") && err.contains(&nan),
        "{err}"
    );
    assert!(!out_dir.join("distances.json").exists());
}

/// A run records its data: resuming it on other data, or on data that
/// changed, is refused; without --data it continues on its own. A new run
/// into its folder is refused without --force.
#[test]
fn a_resumed_run_keeps_its_data_and_a_new_run_keeps_off_it() {
    use moth::torch::model::Arch;
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_data(&dir.path().join("tiny"), [1, 28, 28], 200, 100);
    let model = untrained_model(&dir.path().join("m.moth"), Arch::Cnn28, 10, false);
    let run = dir.path().join("run");
    let run_s = run.to_str().unwrap();
    let new_run = |extra: &[&str]| {
        let common = [
            "harden",
            "--model",
            &model,
            "--data",
            &data,
            "--no-distance",
            "--epochs",
            "0.5",
            "--session-config",
            SMALL,
            "--device",
            "cpu",
            "--out",
            run_s,
        ];
        moth(&[&common[..], extra].concat())
    };
    let out = new_run(&["--stop-after-step", "2"]);
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ckpt = std::fs::read(run.join("run.ckpt")).unwrap();

    // A new run into the folder: refused, the checkpoint untouched.
    let err = fails_cleanly(&new_run(&[]), "new run over an old one");
    assert!(
        err.contains(&format!("moth harden --resume {run_s}")) && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read(run.join("run.ckpt")).unwrap(), ckpt);

    // Other data.
    let out = moth(&[
        "harden",
        "--resume",
        run_s,
        "--data",
        "/usr/share/datasets/fashion-mnist",
    ]);
    let err = fails_cleanly(&out, "resume on other data");
    let tiny = std::fs::canonicalize(&data).unwrap();
    assert!(
        err.contains(&format!("made on the data in {}", tiny.display())),
        "{err}"
    );
    // Changed data.
    let labels = tiny.join("t10k-labels-idx1-ubyte");
    let original = std::fs::read(&labels).unwrap();
    let mut changed = original.clone();
    *changed.last_mut().unwrap() = 0;
    std::fs::write(&labels, &changed).unwrap();
    let err = fails_cleanly(&moth(&["harden", "--resume", run_s]), "changed data");
    assert!(err.contains("changed since this run started"), "{err}");
    assert_eq!(std::fs::read(run.join("run.ckpt")).unwrap(), ckpt);
    // Its own data, found from the checkpoint.
    std::fs::write(&labels, &original).unwrap();
    let out = moth(&["harden", "--resume", run_s, "--stop-after-step", "3"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(130), "{text}");
    assert!(
        text.contains(&format!("on the data in {}", tiny.display())),
        "{text}"
    );
    assert!(text.contains("stopped at step 3"), "{text}");
}

#[test]
fn a_new_run_with_force_starts_over() {
    use moth::torch::model::Arch;
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_data(&dir.path().join("tiny"), [1, 28, 28], 200, 100);
    let model = untrained_model(&dir.path().join("m.moth"), Arch::Cnn28, 10, false);
    let run = dir.path().join("run");
    let args = [
        "harden",
        "--model",
        &model,
        "--data",
        &data,
        "--no-distance",
        "--epochs",
        "0.5",
        "--session-config",
        SMALL,
        "--device",
        "cpu",
        "--out",
        run.to_str().unwrap(),
        "--stop-after-step",
        "1",
    ];
    assert_eq!(moth(&args).status.code(), Some(130));
    let out = moth(&[&args[..], &["--force"]].concat());
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inspect = ok(&["inspect", run.join("run.ckpt").to_str().unwrap()]);
    assert!(inspect.contains("step 1 of"), "{inspect}");
}

#[test]
fn training_the_default_model_is_announced_with_its_absolute_path() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_data(&dir.path().join("tiny"), [1, 28, 28], 100, 50);
    let out = moth_in(
        dir.path(),
        &[
            "distance",
            "--data",
            &data,
            "--samples",
            "2",
            "--steps",
            "2",
            "--device",
            "cpu",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let expected = std::fs::canonicalize(dir.path())
        .unwrap()
        .join("runs/base/model.moth");
    let line = err
        .lines()
        .find(|l| l.contains("training the default model"))
        .unwrap_or_else(|| panic!("not announced on stderr: {err}"));
    assert!(
        line.contains(expected.to_str().unwrap())
            || line.contains(dir.path().join("runs/base/model.moth").to_str().unwrap()),
        "{line}"
    );
    assert!(expected.exists());
}

#[test]
fn limit_zero_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = moth_in(dir.path(), &["train", "--limit", "0", "--device", "cpu"]);
    let err = fails_cleanly(&out, "train --limit 0");
    assert!(err.contains("--limit must be at least 1"), "{err}");
    assert!(!dir.path().join("runs").exists());
}

#[test]
fn ctrl_c_during_the_distances_after_keeps_the_model_and_says_how_to_finish() {
    use moth::torch::model::Arch;
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_data(&dir.path().join("tiny"), [1, 28, 28], 200, 100);
    let model = untrained_model(&dir.path().join("m.moth"), Arch::Cnn28, 10, false);
    let run = dir.path().join("run");
    let mut child = Command::new(MOTH)
        .env("OMP_NUM_THREADS", "1")
        .env("RUST_LOG", "warn")
        .args([
            "harden",
            "--model",
            &model,
            "--data",
            &data,
            "--samples",
            "2",
            "--steps",
            "60",
            "--epochs",
            "0.5",
            "--session-config",
            SMALL,
            "--device",
            "cpu",
            "--out",
        ])
        .arg(&run)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap().starts_with("distances after hardening") {
            break;
        }
    }
    interrupt(&child);
    let rest: Vec<String> = lines.map_while(|l| l.ok()).collect();
    assert_eq!(child.wait().unwrap().code(), Some(130), "{rest:?}");
    let text = rest.join("\n");
    assert!(
        text.contains("interrupted while measuring class distances")
            && text.contains("the hardened model is in")
            && text.contains(&format!("moth harden --resume {}", run.display())),
        "{text}"
    );
    assert!(run.join("hardened.moth").exists());
    assert!(!run.join("report.json").exists());
    let out = ok(&["harden", "--resume", run.to_str().unwrap()]);
    assert!(out.contains("MOTH report"), "{out}");
}
