//! The paper's Fig. 6 from `moth bench` histories: the trigger sizes of one
//! pair, both directions, step by step, under symmetric (MOTH) and
//! asymmetric hardening side by side. The pair is the one the symmetric
//! run hardened most often, so its curves have the most points.

use std::collections::BTreeMap;

use moth::runner::StepRecord;

use crate::plot::curves::{Panel, Series};

/// The (victim, target) sizes a history recorded for the directions of
/// `pair`, as (step, size) points per direction; failed generations
/// (size 0, bound not reached) are left out.
fn direction_points(history: &[StepRecord], pair: (usize, usize)) -> [Vec<(f64, f64)>; 2] {
    let mut out = [Vec::new(), Vec::new()];
    for rec in history {
        for d in rec.directions.iter().filter(|d| d.reached) {
            let Some(victim) = d.victim else { continue };
            let i = match (victim, d.target) {
                (v, t) if (v, t) == pair => 0,
                (v, t) if (t, v) == pair => 1,
                _ => continue,
            };
            out[i].push((rec.step as f64, d.size));
        }
    }
    out
}

/// The unordered pair with the most hardened steps in `history`, as
/// (smaller class, larger class).
fn busiest_pair(history: &[StepRecord]) -> Option<(usize, usize)> {
    let mut count: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    for d in history.iter().flat_map(|r| &r.directions) {
        if let Some(v) = d.victim {
            *count.entry((v.min(d.target), v.max(d.target))).or_default() += 1;
        }
    }
    count
        .into_iter()
        .max_by_key(|&(p, n)| (n, std::cmp::Reverse(p)))
        .map(|(p, _)| p)
}

/// The two panels of Fig. 6, or None when the symmetric run hardened no
/// pair.
pub fn figure(
    symmetric: &[StepRecord],
    asymmetric: &[StepRecord],
    classes: &[String],
) -> Option<(String, Vec<Panel>)> {
    let pair = busiest_pair(symmetric)?;
    let name = |c: usize| classes.get(c).cloned().unwrap_or_else(|| c.to_string());
    let (a, b) = (name(pair.0), name(pair.1));
    let panel = |title: &str, history: &[StepRecord]| {
        let [ab, ba] = direction_points(history, pair);
        Panel {
            title: title.to_string(),
            y_desc: "trigger size C·Σm".to_string(),
            series: vec![
                Series {
                    label: format!("{a} -> {b}"),
                    points: ab,
                },
                Series {
                    label: format!("{b} -> {a}"),
                    points: ba,
                },
            ],
        }
    };
    let title = format!("trigger size per step, pair {a} / {b}");
    Some((
        title,
        vec![
            panel("symmetric (moth)", symmetric),
            panel("asymmetric", asymmetric),
        ],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use moth::session::{DirectionReport, Phase};

    fn dir(victim: usize, target: usize, size: f64) -> DirectionReport {
        DirectionReport {
            victim: Some(victim),
            target,
            size,
            reached: size > 0.0,
            bound: 0.0,
            stamped: 1,
        }
    }

    fn rec(step: u64, directions: Vec<DirectionReport>) -> StepRecord {
        StepRecord {
            step,
            phase: Phase::Done {
                reason: moth::session::DoneReason::StepBudget,
            },
            directions,
            loss: 0.0,
            accuracy: None,
            seconds: 0.0,
            harden_seconds: 0.0,
        }
    }

    #[test]
    fn the_busiest_pair_is_plotted_with_both_directions_in_step_order() {
        let sym = vec![
            rec(0, vec![dir(1, 2, 3.0), dir(2, 1, 4.0)]),
            rec(1, vec![dir(2, 1, 5.0), dir(1, 2, 6.0), dir(0, 3, 1.0)]),
            rec(2, vec![dir(1, 2, 0.0)]),
        ];
        let asym = vec![rec(5, vec![dir(2, 1, 7.0)]), rec(6, vec![dir(1, 2, 2.0)])];
        let classes: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        let (title, panels) = figure(&sym, &asym, &classes).unwrap();
        assert!(title.contains("b / c"), "{title}");
        assert_eq!(panels[0].series[0].label, "b -> c");
        assert_eq!(panels[0].series[0].points, vec![(0.0, 3.0), (1.0, 6.0)]);
        assert_eq!(panels[0].series[1].points, vec![(0.0, 4.0), (1.0, 5.0)]);
        assert_eq!(panels[1].series[0].points, vec![(6.0, 2.0)]);
        assert_eq!(panels[1].series[1].points, vec![(5.0, 7.0)]);
    }

    #[test]
    fn no_pair_no_figure() {
        assert!(figure(&[rec(0, vec![])], &[], &[]).is_none());
    }
}
