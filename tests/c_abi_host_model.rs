//! Models from any framework: one small tanh network, traced to TorchScript
//! and written in C with hand-written input gradients (tests/c/twin.c, as
//! `moth_classifier_from_host` callbacks), gives the same distances,
//! triggers and hardening steps through the C ABI. The C program also
//! prints the cost of one inversion step on either path. Run `cargo build
//! --release` first: the program links the library cargo built last.

use std::path::{Path, PathBuf};
use std::process::Command;

use rand::{Rng, SeedableRng};
use tch::{Device, Kind, Tensor};

mod native;
use native::*;

pub const SIDE: i64 = 6;
pub const HIDDEN: i64 = 12;
pub const CLASSES: i64 = 4;
pub const PER_CLASS: i64 = 10;

fn floats(rng: &mut rand_chacha::ChaCha8Rng, n: i64, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

fn write_f32(path: &Path, v: &[f32]) {
    std::fs::write(
        path,
        v.iter().flat_map(|x| x.to_ne_bytes()).collect::<Vec<u8>>(),
    )
    .unwrap();
}

/// Writes the twin's files into `dir`: mlp.pt (the network traced),
/// weights.f32 (W1, b1, W2, b2 row-major), images.f32 and labels.i64
/// (`PER_CLASS` random images per class). Returns the paths in that order.
pub fn twin_files(dir: &Path) -> [PathBuf; 4] {
    let pixels = SIDE * SIDE;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let w1 = floats(&mut rng, HIDDEN * pixels, 0.6);
    let b1 = floats(&mut rng, HIDDEN, 0.2);
    let w2 = floats(&mut rng, CLASSES * HIDDEN, 1.5);
    let b2 = floats(&mut rng, CLASSES, 0.2);
    let n = CLASSES * PER_CLASS;
    let images: Vec<f32> = (0..n * pixels)
        .map(|_| rng.random_range(0.0..1.0))
        .collect();
    let labels: Vec<i64> = (0..n).map(|i| i % CLASSES).collect();
    let paths = ["mlp.pt", "weights.f32", "images.f32", "labels.i64"].map(|f| dir.join(f));
    write_f32(
        &paths[1],
        &[w1.clone(), b1.clone(), w2.clone(), b2.clone()].concat(),
    );
    write_f32(&paths[2], &images);
    std::fs::write(
        &paths[3],
        labels
            .iter()
            .flat_map(|x| x.to_ne_bytes())
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let t = |v: &[f32], shape: &[i64]| Tensor::from_slice(v).reshape(shape);
    let (w1, b1) = (t(&w1, &[HIDDEN, pixels]), t(&b1, &[HIDDEN]));
    let (w2, b2) = (t(&w2, &[CLASSES, HIDDEN]), t(&b2, &[CLASSES]));
    let probe = Tensor::zeros([2, 1, SIDE, SIDE], (Kind::Float, Device::Cpu));
    let traced = tch::CModule::create_by_tracing("Twin", "forward", &[probe], &mut |x| {
        let h = (x[0].flatten(1, -1).matmul(&w1.tr()) + &b1).tanh();
        vec![h.matmul(&w2.tr()) + &b2]
    })
    .unwrap();
    traced.save(&paths[0]).unwrap();
    paths
}

#[test]
fn a_c_model_with_hand_written_gradients_equals_its_torchscript_twin() {
    tch::set_num_threads(1);
    let work = scratch_dir("c_abi_host_model");
    let bin = work.join("twin");
    compile_c(&root().join("tests/c/twin.c"), &bin, &[], &["-lm"]);
    let dir = tempfile::tempdir().unwrap();
    let files = twin_files(dir.path());
    let (ok, out, err) = run(Command::new(&bin).args(&files).args([
        (CLASSES * PER_CLASS).to_string(),
        SIDE.to_string(),
        HIDDEN.to_string(),
        CLASSES.to_string(),
    ]));
    println!("{out}");
    assert!(ok, "the twin program failed:\n{out}\n{err}");
    for needle in [
        "logits max difference",
        "ratio",
        "hardening: max relative",
        "\nok",
    ] {
        assert!(out.contains(needle), "output lacks '{needle}':\n{out}");
    }
}
