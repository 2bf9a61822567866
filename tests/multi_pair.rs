//! Multi-pair hardening: each period hardens a matching of disjoint pairs,
//! every direction of every pair is inverted and stamped (labels are never
//! touched), and a session saved in the middle of a period resumes
//! bit-exactly.

mod common;

use common::{uniform, Linear, PIXELS, SIDE};
use moth::session::{Phase, Session, SessionConfig, SessionSpec};
use std::collections::BTreeSet;
use tch::{Device, Kind, Tensor};

const CLASSES: i64 = 6;

/// Class 0 is the default; class `c > 0` fires when pixel `c - 1` is
/// bright, so every direction has a small trigger.
fn six_class_model() -> Linear {
    let mut w = vec![0f32; (CLASSES * PIXELS) as usize];
    for c in 1..CLASSES {
        w[(c * PIXELS + c - 1) as usize] = 20.0;
    }
    let mut b = vec![-10f32; CLASSES as usize];
    b[0] = 0.0;
    Linear {
        w: Tensor::from_slice(&w).reshape([CLASSES, PIXELS]),
        b: Tensor::from_slice(&b),
        train: false,
    }
}

/// `per_class` images of every class, each classified as its label.
fn batch(per_class: i64, seed: i64) -> (Tensor, Tensor) {
    let n = CLASSES * per_class;
    let noise = uniform((n * PIXELS) as usize, seed);
    let x = Tensor::from_slice(&noise).view([n, PIXELS]) * 0.05;
    let mut labels = Vec::new();
    for c in 0..CLASSES {
        for i in 0..per_class {
            if c > 0 {
                let _ = x.get(c * per_class + i).get(c - 1).fill_(1.0);
            }
            labels.push(c);
        }
    }
    (x.view([n, 1, SIDE, SIDE]), Tensor::from_slice(&labels))
}

fn spec() -> SessionSpec {
    SessionSpec {
        num_classes: CLASSES as usize,
        input_shape: [1, SIDE, SIDE],
    }
}

fn config(pairs: usize) -> SessionConfig {
    let mut cfg = common::small_config(moth::session::Method::Moth, 11, 30, 20, 8);
    cfg.pairs_per_step = pairs;
    cfg.portion = 0.5;
    cfg
}

/// The pairs a step worked on, from its report: (victim, target) per direction.
fn directions(h: &moth::session::Hardened) -> Vec<(usize, usize)> {
    h.report
        .directions
        .iter()
        .map(|d| (d.victim.unwrap(), d.target))
        .collect()
}

#[test]
fn every_period_hardens_a_matching_of_disjoint_pairs_with_true_labels() {
    let mut model = six_class_model();
    let mut s = Session::new(config(3), spec()).unwrap();
    let mut steps = 0;
    let mut lead_pairs = BTreeSet::new();
    for step in 0..(CLASSES as u64 + 9) {
        let (x, y) = batch(8, step as i64);
        let phase = s.phase();
        let h = s.harden_batch(&mut model, &x, &y).unwrap();
        let Phase::Orthogonalize { pair, .. } = phase else {
            continue;
        };
        steps += 1;
        lead_pairs.insert((pair.source, pair.target));
        let dirs = directions(&h);
        assert_eq!(dirs.len(), 6, "3 pairs x 2 directions: {dirs:?}");
        assert_eq!(
            dirs[0],
            (pair.source, pair.target),
            "the phase's pair first"
        );
        // Directions come in (a -> b, b -> a) couples over disjoint classes
        // that together cover all six.
        let mut classes = Vec::new();
        for couple in dirs.chunks(2) {
            assert_eq!(couple[0], (couple[1].1, couple[1].0));
            classes.extend([couple[0].0, couple[0].1]);
        }
        classes.sort_unstable();
        assert_eq!(classes, (0..CLASSES as usize).collect::<Vec<_>>());
        // Only victims' samples change, as many as reported, each stamped
        // under its own direction; the labels are the caller's, untouched.
        let changed = h.inputs.ne_tensor(&x).flatten(1, -1).any_dim(1, false);
        let ys: Vec<i64> = y.try_into().unwrap();
        let changed: Vec<bool> = changed.try_into().unwrap();
        for d in &h.report.directions {
            let victim = d.victim.unwrap() as i64;
            let n = ys
                .iter()
                .zip(&changed)
                .filter(|(&l, &c)| l == victim && c)
                .count();
            assert!(
                n <= d.stamped,
                "class {victim}: {n} changed, {} stamped",
                d.stamped
            );
            if d.reached && d.size > 0.0 && d.size < d.bound {
                assert_eq!(d.stamped, 4, "portion 0.5 of 8");
            }
        }
    }
    assert_eq!(steps, 9);
    assert!(!lead_pairs.is_empty());
    // Every choice of every pair was counted, symmetrically.
    let count = &s.scheduler().count;
    let total: f64 = count.iter().flatten().sum();
    // Three periods ran and the fourth was chosen when the third ended.
    assert_eq!(
        total,
        2.0 * 3.0 * 4.0,
        "4 matchings x 3 pairs, both entries"
    );
}

#[test]
fn a_session_saved_mid_period_resumes_bit_exactly() {
    let mut model = six_class_model();
    let mut a = Session::new(config(3), spec()).unwrap();
    let stop = CLASSES as u64 + 1; // one step into the first period
    for step in 0..stop {
        let (x, y) = batch(8, 50 + step as i64);
        a.harden_batch(&mut model, &x, &y).unwrap();
    }
    assert!(matches!(
        a.phase(),
        Phase::Orthogonalize {
            step_in_period: 1,
            ..
        }
    ));
    let mut b = Session::from_bytes(&a.to_bytes().unwrap(), Some(spec())).unwrap();
    for step in stop..stop + 7 {
        let (x, y) = batch(8, 50 + step as i64);
        let ha = a.harden_batch(&mut model, &x, &y).unwrap();
        let hb = b.harden_batch(&mut model, &x, &y).unwrap();
        assert!(ha.inputs.equal(&hb.inputs), "step {step}: outputs differ");
        assert_eq!(ha.report.directions, hb.report.directions, "step {step}");
        assert_eq!(ha.report.phase, hb.report.phase);
    }
    assert_eq!(a.scheduler(), b.scheduler());
    assert_eq!(a.to_bytes().unwrap()[64..], b.to_bytes().unwrap()[64..]);
}

#[test]
fn more_pairs_than_classes_allow_take_what_fits_and_one_pair_stays_one() {
    let mut model = six_class_model();
    for (asked, got) in [(1, 1), (9, 3)] {
        let mut s = Session::new(config(asked), spec()).unwrap();
        for step in 0..=CLASSES as u64 {
            let (x, y) = batch(8, 70 + step as i64);
            let h = s.harden_batch(&mut model, &x, &y).unwrap();
            if step == CLASSES as u64 {
                assert_eq!(directions(&h).len(), 2 * got, "asked for {asked}");
            }
        }
    }
    let bad = SessionConfig {
        pairs_per_step: 0,
        ..SessionConfig::reference()
    };
    assert!(bad.validate().is_err());
}

#[test]
fn the_session_never_touches_libtorchs_global_generator() {
    // A trainer's own draws between steps must not depend on moth: seed,
    // harden, draw, and compare with the same draw without moth in between.
    let mut model = six_class_model();
    let mut s = Session::new(config(3), spec()).unwrap();
    let (x, y) = batch(4, 1);
    let draw = |harden: &mut dyn FnMut()| {
        tch::manual_seed(1234);
        harden();
        Tensor::rand([8], (Kind::Float, Device::Cpu))
    };
    let with = draw(&mut || {
        s.harden_batch(&mut model, &x, &y).unwrap();
    });
    let without = draw(&mut || {});
    assert!(with.equal(&without));
}

/// A classifier whose logits ignore the input (a detached output).
struct Detached(Linear);

impl moth::torch::model::Classifier for Detached {
    fn forward(&self, x: &Tensor) -> moth::Result<Tensor> {
        Ok(self.0.forward(x)?.detach())
    }
    fn set_train(&mut self, train: bool) -> moth::Result<()> {
        self.0.set_train(train)
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
}

#[test]
fn hardening_with_autograd_off_or_detached_logits_fails_cleanly() {
    use moth::torch::grad::{is_enabled, GradGuard};
    use moth::torch::model::Classifier;
    let (x, y) = batch(4, 3);
    // A caller inside its own no-grad scope: the step still works and the
    // caller's mode is kept.
    let mut s = Session::new(config(3), spec()).unwrap();
    {
        let _off = GradGuard::set(false);
        s.harden_batch(&mut six_class_model(), &x, &y).unwrap();
        assert!(!is_enabled());
    }
    // Detached logits: a clear error, the session unchanged, grad mode on.
    let mut s = Session::new(config(3), spec()).unwrap();
    let before = s.to_bytes().unwrap();
    let e = s
        .harden_batch(&mut Detached(six_class_model()), &x, &y)
        .unwrap_err();
    assert!(e.to_string().contains("do not depend on its input"), "{e}");
    assert_eq!(s.to_bytes().unwrap()[64..], before[64..]);
    assert!(is_enabled());
    // And a host backward still works on this thread.
    let w = Tensor::ones([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    (&w * 3.0).sum(Kind::Float).backward();
    assert!(w.grad().defined());
    let _ = Detached(six_class_model()).device();
}
