//! A TorchScript model with real parameters (written by a small libtorch
//! C++ program, as `torch.jit.script` would) is trained by `moth train`-style
//! hardening, saved back as TorchScript, and resumes exactly.

use std::path::Path;
use std::process::Command;

use moth::torch::model::{Classifier, Model};
use tch::{Device, Kind, Tensor};

mod native;
use native::scripted_model;

const MOTH: &str = env!("CARGO_BIN_EXE_moth");
const SMALL: &str = r#"{"warmup":{"budget":{"steps":10,"init_cost":0.001,"asr_bound":0.99}},
 "first":{"steps":8,"init_cost":0.001,"asr_bound":0.9},
 "later":{"steps":4,"init_cost":0.01,"asr_bound":0.9},"accuracy_every":5}"#;

fn moth(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(MOTH)
        .args(args)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `moth harden` on the TorchScript model at `model`, tiny budgets, no distances.
fn harden_args(model: &str) -> Vec<&str> {
    vec![
        "harden",
        "--model",
        model,
        "--input-shape",
        "1,28,28",
        "--epochs",
        "0.02",
        "--no-distance",
        "--session-config",
        SMALL,
        "--device",
        "cpu",
    ]
}

fn parameters(path: &Path) -> Vec<(String, Tensor)> {
    Model::torchscript(path, [1, 28, 28], Device::Cpu)
        .unwrap()
        .parameters()
}

#[test]
fn torchscript_model_is_hardened_saved_back_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.pt");
    scripted_model(&model);
    let m = model.to_str().unwrap();
    let before = parameters(&model);
    assert_eq!(before.len(), 4, "w1, b1, w2, b2 are trainable parameters");
    let common = harden_args(m);
    let straight = dir.path().join("straight");
    let mut args = common.to_vec();
    args.extend(["--out", straight.to_str().unwrap()]);
    let (code, out) = moth(&args);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("TorchScript module") && out.contains("hardened.pt"),
        "{out}"
    );
    // The default preset's clean statistics give way for TorchScript.
    assert!(
        out.contains("BatchNorm running statistics: from the stamped batches (a TorchScript"),
        "{out}"
    );
    let hardened = straight.join("hardened.pt");
    let after = parameters(&hardened);
    let changed = before
        .iter()
        .zip(&after)
        .any(|((_, a), (_, b))| !a.equal(b));
    assert!(changed, "training updated the TorchScript parameters");
    // It is still a working TorchScript classifier.
    let reloaded = Model::torchscript(&hardened, [1, 28, 28], Device::Cpu).unwrap();
    let logits = reloaded
        .forward(&Tensor::rand([3, 1, 28, 28], (Kind::Float, Device::Cpu)))
        .unwrap();
    assert_eq!(logits.size(), vec![3, 10]);

    // Interrupted and resumed: the module travels whole in run.ckpt.
    let split = dir.path().join("split");
    let mut args = common.to_vec();
    args.extend(["--out", split.to_str().unwrap(), "--stop-after-step", "13"]);
    let (code, out) = moth(&args);
    assert_eq!(code, Some(130), "{out}");
    let (code, out) = moth(&["harden", "--resume", split.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}");
    let resumed = parameters(&split.join("hardened.pt"));
    for ((na, a), (nb, b)) in after.iter().zip(&resumed) {
        assert_eq!(na, nb);
        assert!(a.equal(b), "parameter {na} equal after resume");
    }
}

#[test]
fn clean_statistics_on_a_torchscript_model_is_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.pt");
    scripted_model(&model);
    let out_dir = dir.path().join("run");
    let mut args = harden_args(model.to_str().unwrap());
    args.extend(["--clean-statistics", "--out", out_dir.to_str().unwrap()]);
    let (code, out) = moth(&args);
    assert_ne!(code, Some(0), "{out}");
    assert!(
        out.contains("clean statistics need a built-in model"),
        "{out}"
    );
    assert!(!out.contains("panicked"), "{out}");
    assert!(!out_dir.join("run.ckpt").exists());
}
