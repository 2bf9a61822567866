//! CUDA streams from the session's side: every hardening call runs on the
//! session's stream, including the caller's own forward passes, and leaves
//! the caller's stream as it found it.

use std::ffi::c_void;

use crate::config::InversionBudget;
use crate::session::{Session, SessionConfig, SessionSpec};
use crate::torch::model::Classifier;
use crate::torch::stream::CudaStream;
use crate::torch::sys::fake;
use crate::{Error, Result};
use std::cell::RefCell;
use tch::{Device, Kind, Tensor};

const STREAM: usize = 0x7000;
const CALLER: usize = 0x5000;

/// A linear 3-class model that notes the fake current stream of device 1
/// at every forward pass.
struct Recording {
    w: Tensor,
    seen: RefCell<Vec<usize>>,
}

impl Classifier for Recording {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.seen.borrow_mut().push(fake::current_stream(1));
        Ok(x.f_flatten(1, -1)?.f_matmul(&self.w.tr())?)
    }
    fn set_train(&mut self, _: bool) -> Result<()> {
        Ok(())
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
}

/// Values in `[-1, 1)` from a generator of the test's own: libtorch's
/// global one is shared with tests on other threads (and reseeded by
/// every session step), so two draws could differ.
fn values(len: usize, seed: u64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f32> = (0..len).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
    Tensor::from_slice(&v)
}

fn model() -> Recording {
    Recording {
        w: values(48, 3).view([3, 16]),
        seen: RefCell::new(Vec::new()),
    }
}

fn session() -> Session {
    let mut cfg = SessionConfig {
        accuracy_every: 0,
        portion: 0.5,
        ..SessionConfig::default()
    };
    cfg.warmup.budget = InversionBudget {
        steps: 3,
        ..cfg.warmup.budget
    };
    let spec = SessionSpec {
        num_classes: 3,
        input_shape: [1, 4, 4],
    };
    Session::new(cfg, spec).unwrap()
}

fn batch() -> (Tensor, Tensor) {
    let x = (values(192, 4).view([12, 1, 4, 4]) + 1.0) / 2.0;
    let y = Tensor::arange(12, (Kind::Int64, Device::Cpu)).remainder(3);
    (x, y)
}

#[test]
fn hardening_runs_on_the_session_stream_and_restores_the_callers() {
    let stream = CudaStream::with_api(&fake::API, 1, STREAM as *mut c_void).unwrap();
    let (x, y) = batch();
    let mut plain = session();
    let mut bound = session();
    bound.set_cuda_stream(Some(stream));
    assert_eq!(bound.cuda_stream(), Some(stream));
    fake::set_current(1, CALLER);

    let mut m = model();
    let a = plain.harden_batch(&mut m, &x, &y).unwrap();
    assert!(m.seen.borrow().iter().all(|&s| s == CALLER));

    let mut m = model();
    let b = bound.harden_batch(&mut m, &x, &y).unwrap();
    let seen = m.seen.borrow();
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|&s| s == STREAM), "{seen:x?}");
    assert_eq!(fake::current_stream(1), CALLER);
    assert_eq!(fake::current_device(), 0);
    assert_eq!(fake::live_guards(), 0);
    // The stream changes where work runs, never what it computes.
    assert!(a.inputs.equal(&b.inputs));
    assert_eq!(plain.step(), bound.step());
}

#[test]
fn a_failed_call_restores_the_callers_stream_and_keeps_the_state() {
    let stream = CudaStream::with_api(&fake::API, 1, STREAM as *mut c_void).unwrap();
    let mut s = session();
    s.set_cuda_stream(Some(stream));
    fake::set_current(1, CALLER);
    let (x, _) = batch();
    let bad = Tensor::full([12], 9, (Kind::Int64, Device::Cpu));
    let e = s.harden_batch(&mut model(), &x, &bad).unwrap_err();
    assert!(e.to_string().contains("out of range"), "{e}");
    assert_eq!(fake::current_stream(1), CALLER);
    assert_eq!(fake::live_guards(), 0);
    assert_eq!(s.step(), 0);
}

#[test]
fn a_model_on_another_device_is_refused_before_any_work() {
    struct Elsewhere;
    impl Classifier for Elsewhere {
        fn forward(&self, _: &Tensor) -> Result<Tensor> {
            panic!("must not run")
        }
        fn set_train(&mut self, _: bool) -> Result<()> {
            Ok(())
        }
        fn device(&self) -> Device {
            Device::Cuda(0)
        }
    }
    let stream = CudaStream::with_api(&fake::API, 1, STREAM as *mut c_void).unwrap();
    let mut s = session();
    s.set_cuda_stream(Some(stream));
    let (x, y) = batch();
    let e = s.harden_batch(&mut Elsewhere, &x, &y).unwrap_err();
    assert!(matches!(e, Error::Device(_)), "{e:?}");
    assert!(e.to_string().contains("clear the session's stream"), "{e}");
    assert_eq!(fake::live_guards(), 0);
    s.set_cuda_stream(None);
    assert_eq!(s.cuda_stream(), None);
}
