//! The figures of `distance` and `harden`, from their results: heatmaps of
//! the distances before and after and of their difference, the per-class
//! mean distance before and after, and the hardening curve of the run's
//! history. Each is written as PNG and SVG.

use std::path::{Path, PathBuf};

use moth::algo::distance::DistanceMatrix;
use moth::runner::StepRecord;
use moth::session::Phase;

use crate::plot::bars::Bars;
use crate::plot::curves::{Lines, Panel, Series};
use crate::plot::heatmap::{Heatmap, Scale};

/// The unit of a class distance (docs/algorithm.md section 1).
pub const SIZE_UNIT: &str = "trigger size C·Σm";

/// `values` with the directions that failed in any of `matrices` set to
/// NaN, drawn grey as "n/a" (a failed direction is stored as 0).
fn without_failed(mut values: Vec<Vec<f64>>, matrices: &[&DistanceMatrix]) -> Vec<Vec<f64>> {
    for &(i, j) in matrices.iter().flat_map(|m| &m.failed) {
        if let Some(v) = values.get_mut(i).and_then(|row| row.get_mut(j)) {
            *v = f64::NAN;
        }
    }
    values
}

/// DIR/STEM.png and .svg: the heatmap of `m`.
pub fn distance_heatmap(m: &DistanceMatrix, title: &str, stem: &Path) -> moth::Result<PathBuf> {
    let values = without_failed(m.values.clone(), &[m]);
    let fig = Heatmap::new(title, &values, &m.classes, Scale::Sequential, SIZE_UNIT)?;
    crate::plot::write(stem, &fig)
}

/// before, after, difference (heatmaps) and class_means (bars) in `dir`.
pub fn before_after(b: &DistanceMatrix, a: &DistanceMatrix, dir: &Path) -> moth::Result<()> {
    distance_heatmap(b, "class distance before hardening", &dir.join("before"))?;
    distance_heatmap(a, "class distance after hardening", &dir.join("after"))?;
    let diff = without_failed(b.difference(a), &[b, a]);
    let fig = Heatmap::new(
        "after - before",
        &diff,
        &b.classes,
        Scale::Diverging,
        "change in trigger size C·Σm",
    )?;
    crate::plot::write(&dir.join("difference"), &fig)?;
    let bars = Bars::new(
        "mean distance from each source class",
        SIZE_UNIT,
        &b.classes,
        vec![
            ("before".into(), row_means(b)),
            ("after".into(), row_means(a)),
        ],
    )?;
    crate::plot::write(&dir.join("class_means"), &bars)?;
    Ok(())
}

/// The mean measured distance from each source class (NaN where none was
/// measured).
fn row_means(m: &DistanceMatrix) -> Vec<f64> {
    let mut sum = vec![(0.0, 0usize); m.classes.len()];
    for (i, _, v) in m.measured() {
        sum[i].0 += v;
        sum[i].1 += 1;
    }
    sum.into_iter()
        .map(|(s, n)| if n > 0 { s / n as f64 } else { f64::NAN })
        .collect()
}

/// The hardening curve: per step, the mean size of the triggers generated
/// (warm-up and pair steps as two lines), and the held-out accuracy at each
/// check. None for an empty history.
pub fn hardening_curve(history: &[StepRecord]) -> Option<Lines> {
    let mut warmup = Vec::new();
    let mut pairs = Vec::new();
    let mut accuracy = Vec::new();
    for r in history {
        let sizes: Vec<f64> = r
            .directions
            .iter()
            .filter(|d| d.reached)
            .map(|d| d.size)
            .collect();
        if !sizes.is_empty() {
            let mean = sizes.iter().sum::<f64>() / sizes.len() as f64;
            match r.phase {
                Phase::Warmup { .. } => warmup.push((r.step as f64, mean)),
                _ => pairs.push((r.step as f64, mean)),
            }
        }
        if let Some(a) = r.accuracy {
            accuracy.push((r.step as f64, 100.0 * a));
        }
    }
    let sizes = Panel {
        title: "mean size of the generated triggers".into(),
        y_desc: SIZE_UNIT.into(),
        series: vec![
            Series {
                label: "warm-up (universal)".into(),
                points: warmup,
            },
            Series {
                label: "hardened pairs".into(),
                points: pairs,
            },
        ],
    };
    let acc = Panel {
        title: "held-out clean accuracy".into(),
        y_desc: "accuracy (%)".into(),
        series: vec![Series {
            label: "accuracy".into(),
            points: accuracy,
        }],
    };
    Lines::new("hardening curve", "step", vec![sizes, acc], false).ok()
}

/// DIR/hardening.png and .svg, when the history has a point to draw.
pub fn write_hardening_curve(history: &[StepRecord], dir: &Path) -> moth::Result<Option<PathBuf>> {
    match hardening_curve(history) {
        Some(fig) => crate::plot::write(&dir.join("hardening"), &fig).map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moth::session::{DirectionReport, DoneReason};

    fn rec(step: u64, phase: Phase, sizes: &[f64], accuracy: Option<f64>) -> StepRecord {
        StepRecord {
            step,
            phase,
            directions: sizes
                .iter()
                .map(|&size| DirectionReport {
                    victim: None,
                    target: 0,
                    size,
                    reached: size > 0.0,
                    bound: 0.0,
                    stamped: 0,
                })
                .collect(),
            loss: 0.0,
            accuracy,
            seconds: 0.0,
            harden_seconds: 0.0,
        }
    }

    #[test]
    fn the_curve_averages_reached_triggers_and_plots_accuracy_in_percent() {
        let done = Phase::Done {
            reason: DoneReason::StepBudget,
        };
        let h = vec![
            rec(0, Phase::Warmup { target: 0 }, &[4.0, 0.0], Some(0.9)),
            rec(1, done, &[2.0, 6.0], None),
            rec(2, done, &[], Some(0.85)),
        ];
        let fig = hardening_curve(&h).unwrap();
        let png = crate::plot::render_png(&fig).unwrap();
        assert!(image::load_from_memory(&png).is_ok());
        assert!(fig.y_range(0).1 >= 4.0 && fig.y_range(1).1 >= 90.0);
        assert!(hardening_curve(&[]).is_none());
    }

    #[test]
    fn row_means_skip_unmeasured_pairs() {
        let m = DistanceMatrix {
            classes: vec!["a".into(), "b".into()],
            values: vec![vec![0.0, 3.0], vec![0.0, 0.0]],
            failed: vec![(1, 0)],
            protocol: String::new(),
            seconds: 0.0,
        };
        let means = row_means(&m);
        assert_eq!(means[0], 3.0);
        assert!(means[1].is_nan());
    }
}
