//! Tiny models and data whose class distances are known by construction.
#![allow(dead_code)]

pub mod ffi;

use moth::config::InversionBudget;
use moth::session::{Method, SessionConfig, SessionSpec};
use moth::torch::model::Classifier;
use tch::{Device, Kind, Tensor};

/// A fixed linear classifier on flattened inputs: `logits = x W^T + b`.
pub struct Linear {
    pub w: Tensor,
    pub b: Tensor,
    pub train: bool,
}

impl Classifier for Linear {
    fn forward(&self, x: &Tensor) -> moth::Result<Tensor> {
        Ok(x.flatten(1, -1).matmul(&self.w.tr()) + &self.b)
    }
    fn set_train(&mut self, train: bool) -> moth::Result<()> {
        self.train = train;
        Ok(())
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
}

pub const SIDE: i64 = 4;
pub const PIXELS: i64 = SIDE * SIDE;

/// Three classes on 1x4x4 images. Class 0 is the default (bias 0); class 1
/// fires when pixel 0 is bright (one pixel of trigger needed); class 2 fires
/// when pixels 12..16 are all bright (four pixels needed).
pub fn three_class_model() -> Linear {
    let mut w = vec![0f32; 3 * PIXELS as usize];
    w[PIXELS as usize] = 20.0; // class 1 <- pixel 0
    for p in 12..16 {
        w[2 * PIXELS as usize + p] = 5.0; // class 2 <- pixels 12..15
    }
    Linear {
        w: Tensor::from_slice(&w).reshape([3, PIXELS]),
        b: Tensor::from_slice(&[0f32, -10.0, -10.0]),
        train: false,
    }
}

/// `len` values uniform in `[0, 1)` from a generator of this test's own.
/// Not libtorch's global generator: the tests of one binary run on parallel
/// threads, and sessions reseed that generator at every step, so a
/// `manual_seed` + `rand` pair here could be interleaved with another
/// test's and draw different data from run to run.
pub fn uniform(len: usize, seed: i64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed as u64);
    (0..len).map(|_| rng.random::<f32>()).collect()
}

/// `n` dark, slightly noisy images of class 0.
pub fn dark_images(n: i64, seed: i64) -> Tensor {
    let noise = uniform((n * PIXELS) as usize, seed);
    Tensor::from_slice(&noise).view([n, 1, SIDE, SIDE]) * 0.05
}

/// A labelled batch for the session tests: images that the three-class
/// model classifies as their label, `per_class` of each.
pub fn labelled_batch(per_class: i64, seed: i64) -> (Tensor, Tensor) {
    let x0 = dark_images(3 * per_class, seed);
    let ones = Tensor::ones([per_class], (Kind::Float, Device::Cpu));
    // class 1: pixel 0 bright; class 2: pixels 12..15 bright
    let x1 = x0.narrow(0, per_class, per_class).copy();
    x1.view([per_class, PIXELS])
        .narrow(1, 0, 1)
        .copy_(&ones.view([per_class, 1]));
    let x2 = x0.narrow(0, 2 * per_class, per_class).copy();
    x2.view([per_class, PIXELS])
        .narrow(1, 12, 4)
        .copy_(&Tensor::ones([per_class, 4], (Kind::Float, Device::Cpu)));
    let x = Tensor::cat(&[x0.narrow(0, 0, per_class), x1, x2], 0);
    let y = Tensor::cat(
        &[
            Tensor::zeros([per_class], (Kind::Int64, Device::Cpu)),
            Tensor::ones([per_class], (Kind::Int64, Device::Cpu)),
            Tensor::full([per_class], 2, (Kind::Int64, Device::Cpu)),
        ],
        0,
    );
    (x, y)
}

/// A session configuration with tiny budgets for the three-class model:
/// batches of 10 per class, portion 0.2 stamps 2 samples per direction.
pub fn small_config(
    method: Method,
    seed: u64,
    warmup: usize,
    first: usize,
    later: usize,
) -> SessionConfig {
    let mut cfg = SessionConfig {
        method,
        seed,
        accuracy_every: 0,
        portion: 0.2,
        ..SessionConfig::reference()
    };
    cfg.warmup.budget = InversionBudget {
        steps: warmup,
        ..cfg.warmup.budget
    };
    cfg.first = InversionBudget {
        steps: first,
        ..cfg.first
    };
    cfg.later = InversionBudget {
        steps: later,
        ..cfg.later
    };
    cfg
}

/// The session spec of the three-class model.
pub fn three_class_spec() -> SessionSpec {
    SessionSpec {
        num_classes: 3,
        input_shape: [1, SIDE, SIDE],
    }
}
