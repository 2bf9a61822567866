//! The hardening session's state machine on a tiny model with known
//! distances: every transition, the rejected inputs and determinism.

mod common;

use common::*;
use moth::session::{
    AccuracyVerdict, DoneReason, Method, Phase, Session, SessionConfig, SessionSpec,
};
use moth::Error;
use tch::{Kind, Tensor};

fn small_config(method: Method) -> SessionConfig {
    common::small_config(method, 5, 40, 30, 10)
}

fn spec() -> SessionSpec {
    three_class_spec()
}

fn snapshot(s: &Session) -> String {
    format!(
        "{:?} {} {:?} {:?} {} {:?}",
        s.phase(),
        s.step(),
        s.scheduler(),
        s.bounds(),
        s.cache().len(),
        s.accuracy()
    )
}

#[test]
fn warmup_visits_every_target_then_orthogonalises() {
    let mut model = three_class_model();
    let mut s = Session::new(small_config(Method::Moth), spec()).unwrap();
    let (x, y) = labelled_batch(10, 1);
    for t in 0..3 {
        assert_eq!(s.phase(), Phase::Warmup { target: t });
        let h = s.harden_batch(&mut model, &x, &y).unwrap();
        assert_eq!(h.report.phase, Phase::Warmup { target: t });
        assert_eq!(h.report.directions.len(), 1);
        assert_eq!(h.report.directions[0].victim, None);
        assert_eq!(h.inputs.size(), x.size());
    }
    let sch = s.scheduler();
    // Warm-up filled univ / size / diff for every direction i -> t with i != t
    // whose universal trigger was found, and normalised diff by its maximum.
    let max_diff = sch.diff.iter().flatten().copied().fold(0.0, f64::max);
    assert!(
        (max_diff - 1.0).abs() < 1e-12,
        "diff normalised: {:?}",
        sch.diff
    );
    assert!(sch.size[0][1] > 0.0 && sch.size[0][2] > 0.0);
    assert_eq!(sch.size[1][1], 0.0);
    assert!(s.cache().get(0, 1).is_some());
    match s.phase() {
        Phase::Orthogonalize {
            pair,
            step_in_period: 0,
        } => assert_ne!(pair.source, pair.target),
        p => panic!("expected orthogonalisation, got {p:?}"),
    }
}

#[test]
fn period_runs_three_steps_with_two_sided_generation_and_stamps_true_labels() {
    let mut model = three_class_model();
    let mut s = Session::new(small_config(Method::Moth), spec()).unwrap();
    let (x, y) = labelled_batch(10, 2);
    for _ in 0..3 {
        s.harden_batch(&mut model, &x, &y).unwrap();
    }
    let Phase::Orthogonalize { pair, .. } = s.phase() else {
        panic!()
    };
    let counted = s.scheduler().count[pair.source][pair.target];
    assert_eq!(counted, 1.0);
    for k in 0..3 {
        assert_eq!(
            s.phase(),
            Phase::Orthogonalize {
                pair,
                step_in_period: k
            }
        );
        let h = s.harden_batch(&mut model, &x, &y).unwrap();
        let dirs = &h.report.directions;
        assert_eq!(dirs.len(), 2, "both directions generated");
        assert_eq!(dirs[0].victim, Some(pair.source));
        assert_eq!(dirs[1].victim, Some(pair.target));
        // Only stamped samples of the victim classes differ from the input.
        let changed = h.inputs.ne_tensor(&x).flatten(1, -1).any_dim(1, false);
        let changed_labels: Vec<i64> = y.masked_select(&changed).try_into().unwrap();
        let stamped: usize = dirs.iter().map(|d| d.stamped).sum();
        assert!(changed_labels.len() <= stamped);
        assert!(changed_labels
            .iter()
            .all(|&l| l == pair.source as i64 || l == pair.target as i64));
        for d in dirs {
            assert!(d.stamped == 0 || d.stamped == 2, "portion 0.2 of 10 = 2");
        }
        if k == 0 {
            assert_eq!(
                h.report.inversion_steps, 30,
                "first step of a period: long budget"
            );
        } else if dirs.iter().all(|d| d.reached) {
            assert_eq!(h.report.inversion_steps, 10, "later steps: short budget");
        }
    }
    // After the period a new pair is scheduled and the sizes were updated.
    assert!(matches!(
        s.phase(),
        Phase::Orthogonalize {
            step_in_period: 0,
            ..
        }
    ));
    assert!(s.scheduler().size[pair.source][pair.target] > 0.0);
}

/// The reuse lever (`later.steps = 0`): a period's later steps stamp the
/// triggers its first step found, with no inversion, on the same samples'
/// classes and with the same sizes.
#[test]
fn reuse_stamps_the_first_steps_triggers_without_inverting_again() {
    let mut model = three_class_model();
    let mut cfg = small_config(Method::Moth);
    cfg.later.steps = 0;
    let mut s = Session::new(cfg, spec()).unwrap();
    let (x, y) = labelled_batch(10, 2);
    for _ in 0..3 {
        s.harden_batch(&mut model, &x, &y).unwrap();
    }
    let first = s.harden_batch(&mut model, &x, &y).unwrap();
    assert!(first.report.inversion_steps > 0, "the first step inverts");
    let found: Vec<f64> = first.report.directions.iter().map(|d| d.size).collect();
    let all_reached = first.report.directions.iter().all(|d| d.reached);
    for _ in 1..3 {
        let h = s.harden_batch(&mut model, &x, &y).unwrap();
        if !all_reached {
            break; // a failure sends the next step back to the long budget
        }
        assert_eq!(h.report.inversion_steps, 0, "later steps reuse");
        let sizes: Vec<f64> = h.report.directions.iter().map(|d| d.size).collect();
        assert_eq!(sizes, found, "the same triggers, so the same sizes");
        for (d, f) in h.report.directions.iter().zip(&first.report.directions) {
            assert!(d.reached);
            assert_eq!(d.stamped, f.stamped, "the same bound decision");
        }
    }
}

/// `later.steps = 0` is the reuse lever; `first.steps = 0` stays an error.
#[test]
fn only_the_later_budget_may_be_zero() {
    let base = small_config(Method::Moth);
    assert!(base.with_json(r#"{"later": {"steps": 0}}"#).is_ok());
    let err = base.with_json(r#"{"first": {"steps": 0}}"#).unwrap_err();
    assert!(err.to_string().contains("first.steps"), "{err}");
}

#[test]
fn rejected_inputs_leave_the_session_unchanged() {
    let mut model = three_class_model();
    let mut s = Session::new(small_config(Method::Moth), spec()).unwrap();
    let (x, y) = labelled_batch(4, 3);
    s.harden_batch(&mut model, &x, &y).unwrap();
    let before = snapshot(&s);
    let nan = x.copy();
    let _ = nan.get(0).fill_(f64::NAN);
    let bright = &x + 2.0;
    let bad_labels = y.copy();
    let _ = bad_labels.get(0).fill_(3);
    let negative = y.copy();
    let _ = negative.get(1).fill_(-1);
    use moth::error::InputKind::*;
    let cases: Vec<(Tensor, Tensor, &str, moth::error::InputKind)> = vec![
        (
            x.view([12, SIDE * SIDE]),
            y.copy(),
            "batch must be",
            WrongShape,
        ),
        (
            x.reshape([12, 1, 2, 8]),
            y.copy(),
            "batch must be",
            WrongShape,
        ),
        (
            x.narrow(0, 0, 0),
            y.narrow(0, 0, 0),
            "batch is empty",
            WrongShape,
        ),
        (nan, y.copy(), "NaN", InvalidValue),
        (bright, y.copy(), "[0, 1]", InvalidValue),
        (
            x.copy(),
            bad_labels,
            "label 3 out of range",
            LabelOutOfRange,
        ),
        (x.copy(), negative, "label -1 out of range", LabelOutOfRange),
        (x.copy(), y.narrow(0, 0, 5), "labels must be", WrongShape),
        (
            x.copy(),
            y.to_kind(Kind::Float),
            "labels must be integers",
            WrongDtype,
        ),
        (
            (&x * 255.0).to_kind(Kind::Uint8),
            y.copy(),
            "floating-point",
            WrongDtype,
        ),
    ];
    for (bx, by, msg, kind) in cases {
        let e = s.harden_batch(&mut model, &bx, &by).unwrap_err();
        match &e {
            Error::Input(i) => assert_eq!(i.kind, kind, "{e}"),
            other => panic!("expected an input error, got {other}"),
        }
        assert!(e.to_string().contains(msg), "'{e}' should mention '{msg}'");
        assert_eq!(snapshot(&s), before, "state unchanged after: {e}");
    }
    // Still usable afterwards.
    s.harden_batch(&mut model, &x, &y).unwrap();
    assert_eq!(s.step(), 2);
}

#[test]
fn accuracy_protocol_and_accuracy_bound() {
    let mut model = three_class_model();
    let cfg = SessionConfig {
        accuracy_every: 2,
        max_accuracy_drop: 0.01,
        ..small_config(Method::Moth)
    };
    let mut s = Session::new(cfg, spec()).unwrap();
    let (x, y) = labelled_batch(4, 4);
    assert!(s.wants_accuracy(), "baseline is asked for first");
    let e = s.harden_batch(&mut model, &x, &y).unwrap_err();
    assert!(matches!(e, Error::Phase(_)), "{e}");
    assert!(s.report_accuracy(1.5).is_err());
    assert!(s.report_accuracy(f64::NAN).is_err());
    assert_eq!(s.report_accuracy(0.90).unwrap(), AccuracyVerdict::Baseline);
    assert!(
        matches!(s.report_accuracy(0.9), Err(Error::Phase(_))),
        "not due"
    );
    s.harden_batch(&mut model, &x, &y).unwrap();
    assert!(!s.wants_accuracy());
    s.harden_batch(&mut model, &x, &y).unwrap();
    assert!(s.wants_accuracy(), "every 2 steps");
    assert!(matches!(
        s.report_accuracy(0.895).unwrap(),
        AccuracyVerdict::WithinBound { .. }
    ));
    s.harden_batch(&mut model, &x, &y).unwrap();
    s.harden_batch(&mut model, &x, &y).unwrap();
    let v = s.report_accuracy(0.88).unwrap();
    assert!(
        matches!(v, AccuracyVerdict::Exceeded { drop } if (drop - 0.02).abs() < 1e-12),
        "{v:?}"
    );
    assert_eq!(
        s.phase(),
        Phase::Done {
            reason: DoneReason::AccuracyBound
        }
    );
    let e = s.harden_batch(&mut model, &x, &y).unwrap_err();
    assert!(
        matches!(e, Error::Phase(_)) && e.to_string().contains("done"),
        "{e}"
    );
}

/// With `recover_steps`, crossing the bound hands back clean batches (no
/// inversion, no stamp) until a check is within half the bound; then a new
/// period starts. A recovery that does not succeed in time ends the
/// session, saying so (`RecoveryExhausted`).
#[test]
fn recovery_trains_clean_until_accuracy_is_back() {
    let mut model = three_class_model();
    let cfg = SessionConfig {
        accuracy_every: 2,
        max_accuracy_drop: 0.01,
        recover_steps: 4,
        ..small_config(Method::Moth)
    };
    let mut s = Session::new(cfg, spec()).unwrap();
    let (x, y) = labelled_batch(4, 4);
    s.report_accuracy(0.90).unwrap();
    for _ in 0..4 {
        s.harden_batch(&mut model, &x, &y).unwrap(); // warm-up (3) and a first period step
        if s.wants_accuracy() {
            s.report_accuracy(0.90).unwrap();
        }
    }
    assert!(matches!(s.phase(), Phase::Orthogonalize { .. }));
    s.harden_batch(&mut model, &x, &y).unwrap();
    while !s.wants_accuracy() {
        s.harden_batch(&mut model, &x, &y).unwrap();
    }
    let v = s.report_accuracy(0.88).unwrap();
    assert!(matches!(v, AccuracyVerdict::Recovering { .. }), "{v:?}");
    assert_eq!(s.phase(), Phase::Recover { since: 0 });
    for k in 0..2 {
        let h = s.harden_batch(&mut model, &x, &y).unwrap();
        assert!(h.report.directions.is_empty() && h.report.inversion_steps == 0);
        assert!(
            h.inputs.equal(&x),
            "a recovery step hands back the clean batch"
        );
        assert_eq!(s.phase(), Phase::Recover { since: k + 1 });
    }
    // Within the bound but not within half of it: keep recovering.
    let v = s.report_accuracy(0.894).unwrap();
    assert!(matches!(v, AccuracyVerdict::WithinBound { .. }), "{v:?}");
    assert_eq!(s.phase(), Phase::Recover { since: 2 });
    s.harden_batch(&mut model, &x, &y).unwrap();
    s.harden_batch(&mut model, &x, &y).unwrap();
    let v = s.report_accuracy(0.897).unwrap();
    assert!(matches!(v, AccuracyVerdict::WithinBound { .. }), "{v:?}");
    match s.phase() {
        Phase::Orthogonalize {
            step_in_period: 0, ..
        } => {}
        p => panic!("hardening resumes with a new period, got {p}"),
    }
    // A second crossing whose recovery runs out of steps ends the session.
    while !s.wants_accuracy() {
        s.harden_batch(&mut model, &x, &y).unwrap();
    }
    s.report_accuracy(0.85).unwrap();
    for _ in 0..2 {
        s.harden_batch(&mut model, &x, &y).unwrap();
        s.harden_batch(&mut model, &x, &y).unwrap();
        let v = s.report_accuracy(0.86).unwrap();
        if s.is_done() {
            assert!(matches!(v, AccuracyVerdict::Exceeded { .. }), "{v:?}");
        } else {
            assert!(matches!(v, AccuracyVerdict::Recovering { .. }), "{v:?}");
        }
    }
    assert_eq!(
        s.phase(),
        Phase::Done {
            reason: DoneReason::RecoveryExhausted
        },
        "4 clean steps did not bring the accuracy back"
    );
}

/// Steps of one period under `cfg`: for each step after the first, the
/// inversion steps it ran and whether it stamped, exactly the directions
/// whose trigger is within its bound.
fn later_steps_of_a_period(cfg: SessionConfig) -> (Session, Vec<(usize, bool)>) {
    let mut model = three_class_model();
    let mut s = Session::new(cfg, spec()).unwrap();
    let (x, y) = labelled_batch(10, 1);
    s.report_accuracy(0.90).unwrap();
    let mut later = Vec::new();
    let mut periods_started = 0;
    while periods_started < 2 {
        let phase = s.phase();
        let h = s.harden_batch(&mut model, &x, &y).unwrap();
        if s.wants_accuracy() {
            s.report_accuracy(0.90).unwrap();
        }
        match phase {
            Phase::Orthogonalize {
                step_in_period: 0, ..
            } => periods_started += 1,
            Phase::Orthogonalize { .. } if periods_started == 1 => {
                let dirs = &h.report.directions;
                let stamped = dirs.iter().any(|d| d.stamped > 0)
                    && dirs.iter().all(|d| (d.stamped > 0) == (d.size <= d.bound));
                later.push((h.report.inversion_steps, stamped));
            }
            _ => {}
        }
    }
    (s, later)
}

/// The default preset inverts once per period and stamps that inversion's
/// triggers in the later steps (the reference inverts at every step), and a
/// bound crossing starts a recovery instead of ending the session.
#[test]
fn the_default_preset_reuses_a_periods_triggers_and_recovers() {
    let shrink = |mut cfg: SessionConfig| {
        cfg.accuracy_every = 2;
        cfg.warmup.budget.steps = 5;
        cfg.first.steps = 40;
        cfg
    };
    let (mut s, later) = later_steps_of_a_period(shrink(SessionConfig::default()));
    assert_eq!(later.len(), SessionConfig::default().period - 1);
    assert!(
        later.iter().all(|&(inv, stamped)| inv == 0 && stamped),
        "later steps reuse and stamp: {later:?}"
    );
    let (_, reference) = later_steps_of_a_period(shrink(SessionConfig::reference()));
    assert!(reference.iter().all(|&(inv, _)| inv > 0), "{reference:?}");

    let mut model = three_class_model();
    let (x, y) = labelled_batch(10, 1);
    while !s.wants_accuracy() {
        s.harden_batch(&mut model, &x, &y).unwrap();
    }
    let v = s.report_accuracy(0.80).unwrap();
    assert!(matches!(v, AccuracyVerdict::Recovering { .. }), "{v:?}");
    assert_eq!(s.phase(), Phase::Recover { since: 0 });
}

/// A session saved during recovery resumes there, bit-exactly.
#[test]
fn a_session_in_recovery_round_trips() {
    let mut model = three_class_model();
    let cfg = SessionConfig {
        accuracy_every: 1,
        recover_steps: 10,
        ..small_config(Method::Moth)
    };
    let mut s = Session::new(cfg, spec()).unwrap();
    let (x, y) = labelled_batch(4, 4);
    s.report_accuracy(0.9).unwrap();
    for _ in 0..4 {
        s.harden_batch(&mut model, &x, &y).unwrap();
        s.report_accuracy(0.9).unwrap();
    }
    s.harden_batch(&mut model, &x, &y).unwrap();
    s.report_accuracy(0.8).unwrap();
    s.harden_batch(&mut model, &x, &y).unwrap();
    assert_eq!(s.phase(), Phase::Recover { since: 1 });
    let bytes = s.to_bytes().unwrap();
    let back = Session::from_bytes(&bytes, None).unwrap();
    assert_eq!(back.phase(), Phase::Recover { since: 1 });
    assert_eq!(back.config().recover_steps, 10);
    assert_eq!(back.to_bytes().unwrap(), bytes);
}

#[test]
fn step_budget_ends_the_session() {
    let mut model = three_class_model();
    let cfg = SessionConfig {
        max_steps: 2,
        ..small_config(Method::Moth)
    };
    let mut s = Session::new(cfg, spec()).unwrap();
    let (x, y) = labelled_batch(4, 5);
    s.harden_batch(&mut model, &x, &y).unwrap();
    s.harden_batch(&mut model, &x, &y).unwrap();
    assert_eq!(
        s.phase(),
        Phase::Done {
            reason: DoneReason::StepBudget
        }
    );
    assert!(s.is_done());
    assert!(s.harden_batch(&mut model, &x, &y).is_err());
    assert_eq!(s.step(), 2);
}

#[test]
fn same_seed_gives_identical_runs() {
    let run = || {
        let mut model = three_class_model();
        let mut s = Session::new(small_config(Method::Moth), spec()).unwrap();
        let (x, y) = labelled_batch(10, 6);
        let mut outs = Vec::new();
        for _ in 0..7 {
            let h = s.harden_batch(&mut model, &x, &y).unwrap();
            outs.push((h.inputs, format!("{:?}", h.report.directions)));
        }
        (outs, snapshot(&s))
    };
    let (a, sa) = run();
    let (b, sb) = run();
    assert_eq!(sa, sb);
    for ((ta, ra), (tb, rb)) in a.iter().zip(&b) {
        assert!(ta.equal(tb));
        assert_eq!(ra, rb);
    }
}

#[test]
fn baselines_follow_their_rules() {
    let (x, y) = labelled_batch(10, 7);
    // Pairwise: fixed cycle of pairs, one step each, long budget every step.
    let mut model = three_class_model();
    let mut s = Session::new(small_config(Method::Pairwise), spec()).unwrap();
    for _ in 0..3 {
        s.harden_batch(&mut model, &x, &y).unwrap();
    }
    let mut pairs = Vec::new();
    for _ in 0..4 {
        let Phase::Orthogonalize {
            pair,
            step_in_period: 0,
        } = s.phase()
        else {
            panic!("{:?}", s.phase())
        };
        pairs.push((pair.source, pair.target));
        let h = s.harden_batch(&mut model, &x, &y).unwrap();
        assert_eq!(h.report.inversion_steps, 30);
    }
    assert_eq!(pairs, vec![(0, 1), (0, 2), (1, 2), (0, 1)]);
    // Asymmetric: one direction per step.
    let mut s = Session::new(small_config(Method::Asymmetric), spec()).unwrap();
    for _ in 0..3 {
        s.harden_batch(&mut model, &x, &y).unwrap();
    }
    for _ in 0..3 {
        let h = s.harden_batch(&mut model, &x, &y).unwrap();
        assert_eq!(h.report.directions.len(), 1);
    }
    // Universal: targets in turn after the warm-up.
    let mut s = Session::new(small_config(Method::Universal), spec()).unwrap();
    for _ in 0..3 {
        s.harden_batch(&mut model, &x, &y).unwrap();
    }
    for t in 0..4 {
        assert_eq!(s.phase(), Phase::Universal { target: t % 3 });
        let h = s.harden_batch(&mut model, &x, &y).unwrap();
        assert!(h.report.directions.iter().all(|d| d.victim.is_none()));
    }
}

#[test]
fn invalid_configurations_are_refused() {
    let bad = [
        SessionConfig {
            period: 0,
            ..Default::default()
        },
        SessionConfig {
            portion: 1.5,
            ..Default::default()
        },
        SessionConfig {
            max_accuracy_drop: f64::NAN,
            ..Default::default()
        },
    ];
    for cfg in bad {
        assert!(matches!(Session::new(cfg, spec()), Err(Error::Config(_))));
    }
    let mut cfg = SessionConfig::default();
    cfg.inversion.lr = -1.0;
    assert!(Session::new(cfg, spec())
        .unwrap_err()
        .to_string()
        .contains("lr"));
    let one_class = SessionSpec {
        num_classes: 1,
        ..spec()
    };
    assert!(Session::new(SessionConfig::default(), one_class).is_err());
    let json = r#"{"method":"Moth","no_such_option":1}"#;
    assert!(
        serde_json::from_str::<SessionConfig>(json).is_err(),
        "unknown options are refused"
    );
}
