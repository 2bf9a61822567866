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
