//! Trigger inversion on a tiny model whose distances are known.

mod common;

use common::*;
use moth::algo::inversion::{invert, Direction, InversionTask};
use moth::algo::trigger::Trigger;
use moth::config::{InversionBudget, InversionConfig};
use tch::{Device, Kind, Tensor};

fn budget(steps: usize) -> InversionBudget {
    InversionBudget {
        steps,
        init_cost: 1e-3,
        asr_bound: 0.9,
    }
}

#[test]
fn inverted_distances_match_the_construction() {
    let mut model = three_class_model();
    let x = dark_images(20, 1);
    let task = InversionTask {
        sets: std::slice::from_ref(&x),
        directions: vec![
            Direction {
                set: 0,
                target: 1,
                init: None,
            },
            Direction {
                set: 0,
                target: 2,
                init: None,
            },
        ],
        budget: budget(300),
        record_sample_losses: false,
    };
    let out = invert(&mut model, &task, &InversionConfig::default(), 3).unwrap();
    assert!(
        out.iter().all(|o| o.reached),
        "both directions reach the bound"
    );
    // 0 -> 1 needs mask*pattern > 0.5 on pixel 0 alone: a size near 0.5.
    let (d1, d2) = (out[0].size, out[1].size);
    assert!(d1 > 0.3 && d1 < 1.5, "0->1 distance {d1}");
    // 0 -> 2 needs four pixels at about 0.5: about 2.
    assert!(d2 > 1.5 && d2 < 4.5, "0->2 distance {d2}");
    assert!(
        d2 > d1 * 1.5,
        "the four-pixel direction is farther: {d1} vs {d2}"
    );
    // The mask mass sits on the pixels the model reads.
    let m1: Vec<f32> = out[0].trigger.mask.flatten(0, -1).try_into().unwrap();
    assert!(
        m1[0] > 0.3 && m1[0] / out[0].size as f32 > 0.6,
        "mask of 0->1: {m1:?}"
    );
    // The stamped samples really are classified as the target.
    let pred = moth::torch::model::Classifier::forward(&model, &out[1].trigger.stamp(&x).unwrap())
        .unwrap()
        .argmax(-1, false);
    let asr = pred
        .eq(2)
        .to_kind(Kind::Double)
        .mean(Kind::Double)
        .double_value(&[]);
    assert!(asr >= 0.9, "ASR {asr}");
}

#[test]
fn unreachable_target_fails_with_a_zero_trigger() {
    let mut model = three_class_model();
    // Class 2 can never win when its bias is hugely negative.
    model.b = Tensor::from_slice(&[0f32, -10.0, -1e6]);
    let x = dark_images(8, 2);
    let task = InversionTask {
        sets: std::slice::from_ref(&x),
        directions: vec![Direction {
            set: 0,
            target: 2,
            init: None,
        }],
        budget: budget(30),
        record_sample_losses: true,
    };
    let out = invert(&mut model, &task, &InversionConfig::default(), 0).unwrap();
    assert!(!out[0].reached);
    assert_eq!(out[0].size, 0.0);
    assert!(out[0].trigger.is_zero().unwrap());
    assert_eq!(out[0].sample_loss_start.len(), 8, "start losses recorded");
    assert!(out[0].sample_loss_best.is_empty(), "no best, no end losses");
}

/// One joint run of two directions (one-pixel 0 -> 1, four-pixel 1 -> 2,
/// from fixed initial triggers) and each direction run alone, under `cfg`.
fn joint_and_alone(
    cfg: &InversionConfig,
    steps: usize,
) -> (
    Vec<moth::algo::inversion::DirectionOutcome>,
    Vec<moth::algo::inversion::DirectionOutcome>,
) {
    let mut model = three_class_model();
    let xa = dark_images(10, 4);
    let xb = dark_images(6, 5);
    let init = |v: f64| {
        Some(
            Trigger::new(
                Tensor::full([1, SIDE, SIDE], v, (Kind::Float, Device::Cpu)),
                Tensor::full([1, SIDE, SIDE], 0.5, (Kind::Float, Device::Cpu)),
            )
            .unwrap(),
        )
    };
    let sets = [xa.shallow_clone(), xb.shallow_clone()];
    let joint = invert(
        &mut model,
        &InversionTask {
            sets: &sets,
            directions: vec![
                Direction {
                    set: 0,
                    target: 1,
                    init: init(0.3),
                },
                Direction {
                    set: 1,
                    target: 2,
                    init: init(0.4),
                },
            ],
            budget: budget(steps),
            record_sample_losses: false,
        },
        cfg,
        9,
    )
    .unwrap();
    let alone = [(&xa, 1, 0.3), (&xb, 2, 0.4)]
        .into_iter()
        .map(|(x, target, v)| {
            invert(
                &mut model,
                &InversionTask {
                    sets: std::slice::from_ref(x),
                    directions: vec![Direction {
                        set: 0,
                        target,
                        init: init(v),
                    }],
                    budget: budget(steps),
                    record_sample_losses: false,
                },
                cfg,
                9,
            )
            .unwrap()
            .remove(0)
        })
        .collect();
    (joint, alone)
}

fn assert_joint_equals_alone(
    joint: &[moth::algo::inversion::DirectionOutcome],
    alone: &[moth::algo::inversion::DirectionOutcome],
) {
    for (i, (j, a)) in joint.iter().zip(alone).enumerate() {
        assert_eq!(a.reached, j.reached);
        assert!(
            (a.size - j.size).abs() < 1e-3 * a.size.max(1.0),
            "direction {i}: alone {} vs joint {}",
            a.size,
            j.size
        );
        assert_eq!(a.steps, j.steps, "direction {i}: steps alone vs joint");
    }
}

#[test]
fn joint_optimisation_equals_separate_runs() {
    let cfg = InversionConfig {
        restart_noise: 0.0,
        ..Default::default()
    };
    let (joint, alone) = joint_and_alone(&cfg, 40);
    assert_joint_equals_alone(&joint, &alone);
    assert!(joint.iter().all(|o| o.steps == 40), "no early stop");
}

#[test]
fn with_early_stop_each_direction_of_a_joint_run_stops_as_it_would_alone() {
    let cfg = InversionConfig {
        restart_noise: 0.0,
        early_stop: 5,
        ..Default::default()
    };
    let (joint, alone) = joint_and_alone(&cfg, 400);
    assert!(
        alone[0].steps != alone[1].steps && alone.iter().all(|o| o.steps < 400),
        "the two directions stop early, at different steps: {} and {}",
        alone[0].steps,
        alone[1].steps
    );
    assert_joint_equals_alone(&joint, &alone);
}

#[test]
fn same_seed_same_result() {
    let run = || {
        let mut model = three_class_model();
        let x = dark_images(12, 6);
        let task = InversionTask {
            sets: std::slice::from_ref(&x),
            directions: vec![Direction {
                set: 0,
                target: 2,
                init: None,
            }],
            budget: budget(50),
            record_sample_losses: false,
        };
        invert(&mut model, &task, &InversionConfig::default(), 11)
            .unwrap()
            .remove(0)
    };
    let (a, b) = (run(), run());
    assert_eq!(a.size, b.size);
    assert_eq!(a.trigger, b.trigger);
}

#[test]
fn bad_tasks_are_rejected() {
    let mut model = three_class_model();
    let cfg = InversionConfig::default();
    let x = dark_images(4, 0);
    let empty = Tensor::zeros([0, 1, SIDE, SIDE], (Kind::Float, Device::Cpu));
    let cases: Vec<(Vec<Tensor>, Vec<Direction>)> = vec![
        (
            vec![],
            vec![Direction {
                set: 0,
                target: 1,
                init: None,
            }],
        ),
        (vec![x.shallow_clone()], vec![]),
        (
            vec![x.shallow_clone()],
            vec![Direction {
                set: 3,
                target: 1,
                init: None,
            }],
        ),
        (
            vec![empty],
            vec![Direction {
                set: 0,
                target: 1,
                init: None,
            }],
        ),
        (
            vec![x.view([4, SIDE * SIDE])],
            vec![Direction {
                set: 0,
                target: 1,
                init: None,
            }],
        ),
    ];
    for (sets, directions) in cases {
        let task = InversionTask {
            sets: &sets,
            directions,
            budget: budget(5),
            record_sample_losses: false,
        };
        assert!(invert(&mut model, &task, &cfg, 0).is_err());
    }
    let task = InversionTask {
        sets: std::slice::from_ref(&x),
        directions: vec![Direction {
            set: 0,
            target: 1,
            init: None,
        }],
        budget: budget(0),
        record_sample_losses: false,
    };
    assert!(invert(&mut model, &task, &cfg, 0)
        .unwrap_err()
        .to_string()
        .contains("steps"));
}

/// The three-class model read on 3-channel images: each weight of the grey
/// model spread evenly over the three channels of its pixel, so a colour
/// image with equal channels gets the grey image's logits.
fn colour_three_class_model() -> Linear {
    let grey = three_class_model();
    let w = grey.w.view([3, 1, PIXELS]).repeat([1, 3, 1]) / 3.0;
    Linear {
        w: w.reshape([3, 3 * PIXELS]),
        b: grey.b,
        train: false,
    }
}

#[test]
fn on_three_channels_a_trigger_is_shared_by_the_channels_and_its_size_counts_them() {
    let run = |model: &mut Linear, x: &Tensor| {
        let task = InversionTask {
            sets: std::slice::from_ref(x),
            directions: (1..3)
                .map(|target| Direction {
                    set: 0,
                    target,
                    init: None,
                })
                .collect(),
            budget: budget(300),
            record_sample_losses: false,
        };
        invert(model, &task, &InversionConfig::default(), 3).unwrap()
    };
    let grey_x = dark_images(20, 1);
    let colour_x = grey_x.repeat([1, 3, 1, 1]);
    let grey = run(&mut three_class_model(), &grey_x);
    let mut colour_model = colour_three_class_model();
    let colour = run(&mut colour_model, &colour_x);
    for (g, c) in grey.iter().zip(&colour) {
        assert!(g.reached && c.reached);
        assert_eq!(c.trigger.mask.size(), vec![1, SIDE, SIDE]);
        assert_eq!(c.trigger.pattern.size(), vec![3, SIDE, SIDE]);
        // size = C * sum(m): the same mask mass, counted on three channels.
        let mass = c.trigger.mask.sum(Kind::Double).double_value(&[]);
        assert!(
            (c.size - 3.0 * mass).abs() < 1e-4,
            "{} vs 3 x {mass}",
            c.size
        );
        let ratio = c.size / g.size;
        assert!(
            (2.0..4.0).contains(&ratio),
            "colour {} vs grey {}",
            c.size,
            g.size
        );
    }
    // 0 -> 1 needs pixel 0 at about 0.5 in every channel: 3 x 0.5.
    assert!(
        colour[0].size > 0.9 && colour[0].size < 4.5,
        "{}",
        colour[0].size
    );
    // Stamping blends every channel of a pixel with the one mask value, and
    // the stamped images are classified as the target.
    let stamped = colour[1].trigger.stamp(&colour_x).unwrap();
    let m = &colour[1].trigger.mask;
    let p = &colour[1].trigger.pattern;
    let expected = (colour_x.ones_like() - m) * &colour_x + m * p;
    assert!(stamped.allclose(&expected.clamp(0.0, 1.0), 1e-6, 1e-6, false));
    let pred = moth::torch::model::Classifier::forward(&colour_model, &stamped)
        .unwrap()
        .argmax(-1, false);
    let asr = pred
        .eq(2)
        .to_kind(Kind::Double)
        .mean(Kind::Double)
        .double_value(&[]);
    assert!(asr >= 0.9, "ASR {asr}");
}
