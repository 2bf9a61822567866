//! The built-in CNN as a library user sees it.

use moth::torch::model::{Arch, Classifier, Model};
use moth::Error;
use tch::{Device, Kind, Tensor};

#[test]
fn the_builtin_cnn_refuses_batches_it_cannot_take_without_panicking() {
    let model = Model::builtin(Arch::Cnn28, 10, Device::Cpu).unwrap();
    let cases = [
        Tensor::zeros([2, 3, 32, 32], (Kind::Float, Device::Cpu)),
        Tensor::zeros([2, 1, 28], (Kind::Float, Device::Cpu)),
        Tensor::zeros([2, 1, 28, 28], (Kind::Int64, Device::Cpu)),
    ];
    for x in &cases {
        match model.forward(x) {
            Err(e @ Error::Input(_)) => {
                assert!(e.to_string().contains("built-in CNN"), "{e}")
            }
            Err(other) => panic!("{:?}: expected an input error, got {other}", x.size()),
            Ok(_) => panic!("{:?}: accepted", x.size()),
        }
    }
    assert_eq!(model.describe(), "built-in cnn28 CNN for 1x28x28 inputs");
    let ok = Tensor::zeros([2, 1, 28, 28], (Kind::Float, Device::Cpu));
    assert_eq!(model.forward(&ok).unwrap().size(), [2, 10]);
}

/// Running statistics of `model`, copied out.
fn statistics_of(model: &Model) -> Vec<Tensor> {
    let stats = model.statistics().unwrap();
    assert!(!stats.is_empty(), "the built-in CNN has BatchNorm layers");
    stats.iter().map(|(_, t)| t.detach().copy()).collect()
}

#[test]
fn clean_statistics_follow_the_clean_batch_whatever_was_stamped() {
    use moth::torch::train::{train_step, train_step_clean_statistics, Optimizer, OptimizerConfig};
    tch::manual_seed(7);
    let clean = Tensor::rand([16, 1, 28, 28], (Kind::Float, Device::Cpu));
    let labels = Tensor::arange(16, (Kind::Int64, Device::Cpu)).remainder(10);
    let stamped = [clean.ones_like(), clean.zeros_like()];
    // A vanishing learning rate leaves the weights as they are, so only the
    // statistics can tell the three models apart.
    let cfg = OptimizerConfig {
        lr: 1e-30,
        ..OptimizerConfig::hardening()
    };
    let base = Model::builtin(Arch::Cnn28, 10, Device::Cpu).unwrap();
    let saved = base.variables_saved().unwrap();
    let fresh = || {
        let mut m = Model::builtin(Arch::Cnn28, 10, Device::Cpu).unwrap();
        m.restore_variables(&saved).unwrap();
        let opt = Optimizer::new(cfg, &m).unwrap();
        (m, opt)
    };
    let mut after_clean_statistics = Vec::new();
    for x in &stamped {
        let (mut m, mut opt) = fresh();
        tch::manual_seed(1);
        let _loss = train_step_clean_statistics(&mut m, &mut opt, x, &clean, &labels).unwrap();
        after_clean_statistics.push(statistics_of(&m));
    }
    let (mut plain, mut opt) = fresh();
    tch::manual_seed(1);
    let _loss = train_step(&mut plain, &mut opt, &stamped[0], &labels).unwrap();
    let plain = statistics_of(&plain);
    for (a, b) in after_clean_statistics[0]
        .iter()
        .zip(&after_clean_statistics[1])
    {
        assert!(a.equal(b), "the stamped batch leaked into the statistics");
    }
    let moved = after_clean_statistics[0]
        .iter()
        .zip(&plain)
        .any(|(a, b)| !a.allclose(b, 1e-6, 1e-6, false));
    assert!(
        moved,
        "a plain step on the stamped batch gives other statistics"
    );
    let before = statistics_of(&base);
    let updated = after_clean_statistics[0]
        .iter()
        .zip(&before)
        .any(|(a, b)| !a.allclose(b, 1e-6, 1e-6, false));
    assert!(updated, "the clean batch updates the statistics");
}
