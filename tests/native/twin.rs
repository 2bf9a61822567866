//! The twin network of the host-model tests: a one-hidden-layer tanh
//! classifier traced to TorchScript, its weights as raw floats (for the C
//! and Go implementations with hand-written gradients) and random samples.

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use tch::{Device, Kind, Tensor};

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
