//! TorchScript models load, invert and measure like the model they came
//! from. The module is made here by tracing a built-in CNN (the same path a
//! PyTorch user takes with `torch.jit.trace` and `torch.jit.save`).

use moth::algo::distance::{self, Samples};
use moth::config::{DistanceConfig, InversionBudget};
use moth::io::dataset::Dataset;
use moth::torch::model::{Arch, Classifier, Model};
use tch::{CModule, Device, Kind, Tensor};

fn traced_copy(model: &mut Model, dir: &std::path::Path) -> std::path::PathBuf {
    model.set_trainable(false);
    let model = &*model;
    let example = Tensor::rand([2, 1, 28, 28], (Kind::Float, Device::Cpu));
    let mut forward = |inputs: &[Tensor]| vec![model.forward(&inputs[0]).unwrap()];
    let module =
        CModule::create_by_tracing("MothCnn", "forward", &[example], &mut forward).unwrap();
    let path = dir.join("model.pt");
    module.save(&path).unwrap();
    path
}

#[test]
fn torchscript_model_measures_like_its_source() {
    tch::manual_seed(3);
    let mut source = Model::builtin(Arch::Cnn28, 10, Device::Cpu).unwrap();
    source.set_train(false).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = traced_copy(&mut source, dir.path());
    let mut scripted = Model::torchscript(&path, [1, 28, 28], Device::Cpu).unwrap();
    assert_eq!(
        scripted.num_classes(),
        10,
        "class count read from a probe pass"
    );
    assert!(scripted.is_torchscript());
    let x = Tensor::rand([5, 1, 28, 28], (Kind::Float, Device::Cpu));
    let a = source.forward(&x).unwrap();
    let b = scripted.forward(&x).unwrap();
    assert!(a.allclose(&b, 1e-5, 1e-5, false), "same logits");

    // Synthetic 10-class data: the distance code only needs labelled images.
    tch::manual_seed(4);
    let images = Tensor::rand([40, 1, 28, 28], (Kind::Float, Device::Cpu));
    let labels = Tensor::arange(40, (Kind::Int64, Device::Cpu)).remainder(10);
    let data = Dataset {
        images,
        labels,
        classes: (0..10).map(|i| format!("c{i}")).collect(),
    };
    let cfg = DistanceConfig {
        samples_per_class: 4,
        budget: InversionBudget {
            steps: 10,
            ..DistanceConfig::paper().budget
        },
        seeds: vec![0],
        ..DistanceConfig::paper()
    };
    let da = distance::measure(
        &mut source,
        Samples {
            images: &data.images,
            labels: data.labels_vec(),
            classes: &data.classes,
        },
        &cfg,
        &mut |_| {},
    )
    .unwrap();
    let db = distance::measure(
        &mut scripted,
        Samples {
            images: &data.images,
            labels: data.labels_vec(),
            classes: &data.classes,
        },
        &cfg,
        &mut |_| {},
    )
    .unwrap();
    for (ra, rb) in da.values.iter().zip(&db.values) {
        for (va, vb) in ra.iter().zip(rb) {
            assert!((va - vb).abs() <= 1e-3 * va.abs().max(1.0), "{va} vs {vb}");
        }
    }
    // Saved back as TorchScript and loaded again.
    let again = dir.path().join("again.pt");
    scripted.save(&again, &[]).unwrap();
    let reloaded = Model::torchscript(&again, [1, 28, 28], Device::Cpu).unwrap();
    assert!(reloaded
        .forward(&x)
        .unwrap()
        .allclose(&b, 1e-6, 1e-6, false));
}

#[test]
fn broken_torchscript_files_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.pt");
    std::fs::write(&bad, b"not a module").unwrap();
    let e = Model::torchscript(&bad, [1, 28, 28], Device::Cpu).unwrap_err();
    assert!(
        e.to_string().contains("bad.pt") && e.to_string().contains("TorchScript"),
        "{e}"
    );
    tch::manual_seed(3);
    let mut source = Model::builtin(Arch::Cnn28, 10, Device::Cpu).unwrap();
    source.set_train(false).unwrap();
    let path = traced_copy(&mut source, dir.path());
    let e = Model::torchscript(&path, [3, 32, 32], Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("probe forward"), "{e}");
    let e = Model::load(&path, None, Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("input shape"), "{e}");
}
