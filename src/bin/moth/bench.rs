//! `moth bench`: every variant (method and bounds) hardens the same base
//! model with the same budget; distances are measured at evenly spaced
//! points; one table (bench.md) and bench.json.

use std::time::Instant;

use moth::algo::distance::DistanceMatrix;
use moth::config::{DistanceConfig, InversionBudget};
use moth::io::dataset::{Dataset, Split};
use moth::runner::HardenRun;
use moth::session::{Method, Preset};
use moth::torch::model::{Classifier, Model};

use crate::args::BenchArgs;
use crate::distance::{measure_quietly, measure_with_progress};
use crate::progress::bar;
use crate::report::{create_dir, device_name, test_accuracy, write_json};
use crate::variant::{self, Variant};
use crate::{Failure, Outcome};

#[derive(serde::Serialize)]
struct BenchRow {
    variant: String,
    /// Whether it ran the reference preset.
    reference: bool,
    enlargement: f64,
    accuracy_before: f64,
    accuracy_after: f64,
    harden_seconds: f64,
    steps: u64,
    /// (hardening seconds, enlargement) at each measurement point.
    curve: Vec<(f64, f64)>,
    after: DistanceMatrix,
    /// Every step's triggers, for the Fig. 6 curves.
    /// Where the hardening time went.
    time_split: moth::runner::TimeSplit,
    #[serde(skip)]
    history: Vec<moth::runner::StepRecord>,
    #[serde(skip)]
    method: Method,
}

/// What a variant's hardening loop measured.
struct Hardened {
    /// Hardening seconds (distance measurements excluded).
    spent: f64,
    /// (hardening seconds, enlargement) at each measurement point.
    curve: Vec<(f64, f64)>,
    /// The distances at the last point.
    after: DistanceMatrix,
}

/// What every variant shares.
struct Bench<'a> {
    a: &'a BenchArgs,
    device: tch::Device,
    train_set: Dataset,
    test_set: Dataset,
    dcfg: DistanceConfig,
    accuracy_before: f64,
    before: DistanceMatrix,
}

/// Each `--variants` entry, parsed and validated.
fn bench_variants(a: &BenchArgs) -> moth::Result<Vec<Variant>> {
    a.variants.iter().map(|v| variant::parse(a, v)).collect()
}

/// The distance protocol of every measurement.
fn distance_config(a: &BenchArgs) -> DistanceConfig {
    DistanceConfig {
        samples_per_class: a.samples,
        budget: InversionBudget {
            steps: a.steps,
            ..DistanceConfig::paper().budget
        },
        seeds: vec![a.common.seed],
        ..DistanceConfig::paper()
    }
}

pub fn run(a: &BenchArgs) -> Outcome {
    // Settings first: a typo must not cost a model training.
    let variants = bench_variants(a)?;
    let bench = prepare(a)?;
    let mut rows = Vec::new();
    for v in variants {
        rows.push(bench.run_variant(&v)?);
    }
    bench.write(&rows)?;
    Ok(())
}

/// The base model's accuracy and distances.
fn prepare(a: &BenchArgs) -> Outcome<Bench<'_>> {
    let source = crate::data::open(&a.common)?;
    let (mut base, classes) = crate::train::load_or_train(&a.model, &a.common, None)?;
    let train_set = source.load(Split::Train)?;
    let mut test_set = source.load(Split::Test)?;
    crate::check::model_suits_data(&mut base, &a.model, &test_set, source.path())?;
    test_set.classes = classes;
    let dcfg = distance_config(a);
    println!(
        "bench: {} epoch(s) after warm-up per variant (unless it sets epochs), distances: {}",
        a.epochs,
        dcfg.describe()
    );
    let accuracy_before = test_accuracy(&mut base, &test_set)?;
    let before = measure_with_progress(&mut base, &test_set, &dcfg)?;
    println!(
        "before: accuracy {:.2}%, mean distance {:.2}",
        100.0 * accuracy_before,
        before.mean()
    );
    Ok(Bench {
        a,
        device: base.device(),
        train_set,
        test_set,
        dcfg,
        accuracy_before,
        before,
    })
}

/// `points` step numbers evenly spaced over `total`, the last one `total`.
fn measurement_points(total: u64, points: usize) -> Vec<u64> {
    let n = points.max(1) as u64;
    (1..=n).map(|i| total * i / n).collect()
}

impl Bench<'_> {
    /// Hardens a fresh copy of the base model with `cfg`.
    fn run_variant(&self, variant: &Variant) -> Outcome<BenchRow> {
        let v = variant.name.as_str();
        let (model, _) = Model::load(&self.a.model, None, self.device)?;
        let run_cfg = variant
            .run
            .clone()
            .fitted_to(&model, variant.clean_statistics);
        let mut run = HardenRun::new(
            model,
            variant.session.clone(),
            run_cfg,
            &self.train_set,
            &self.test_set,
        )?;
        let Hardened {
            spent,
            curve,
            after,
        } = self
            .harden(v, &mut run)
            .map_err(|f| f.with_note("bench stopped: nothing written"))?;
        let accuracy_after = test_accuracy(&mut run.model, &self.test_set)?;
        let row = BenchRow {
            variant: v.to_string(),
            reference: variant.preset == Preset::Reference,
            enlargement: curve.last().map_or(0.0, |c| c.1),
            accuracy_before: self.accuracy_before,
            accuracy_after,
            harden_seconds: spent,
            steps: run.session.step(),
            curve,
            after,
            time_split: moth::runner::TimeSplit::of(&run.history),
            history: std::mem::take(&mut run.history),
            method: variant.session.method,
        };
        println!(
            "{v}: enlargement {:+.1}%, accuracy {:+.2} points, {:.1} s hardening, {} steps",
            100.0 * row.enlargement,
            100.0 * (accuracy_after - self.accuracy_before),
            spent,
            row.steps
        );
        Ok(row)
    }

    /// The hardening loop, measuring the distances at the points.
    fn harden(&self, v: &str, run: &mut HardenRun) -> Outcome<Hardened> {
        let total = run.session.config().max_steps;
        let points = measurement_points(total, self.a.points);
        let pb = bar(total, "{msg} [{bar:30}] step {pos}/{len}, ETA {eta}");
        pb.set_message(v.to_string());
        let (mut spent, mut curve, mut after) = (0.0, Vec::new(), self.before.clone());
        loop {
            let t = Instant::now();
            let more = run.step()?;
            spent += t.elapsed().as_secs_f64();
            let s = run.session.step();
            pb.set_position(s);
            if crate::interrupted() {
                pb.finish_and_clear();
                return Err(Failure::Stopped(format!("interrupted in {v} at step {s}")));
            }
            if points.contains(&s) || !more {
                after = measure_quietly(&mut run.model, &self.test_set, &self.dcfg)?;
                curve.push((spent, self.before.enlargement(&after)));
            }
            if !more {
                break;
            }
        }
        pb.finish_and_clear();
        Ok(Hardened {
            spent,
            curve,
            after,
        })
    }

    /// Prints the table; writes bench.json and bench.md.
    fn write(&self, rows: &[BenchRow]) -> moth::Result<()> {
        let table = bench_table(rows, self);
        println!("\n{table}");
        let out = &self.a.out;
        create_dir(out)?;
        write_json(
            &out.join("bench.json"),
            &serde_json::json!({ "before": self.before, "rows": rows }),
        )?;
        std::fs::write(out.join("bench.md"), &table)
            .map_err(|e| moth::Error::io("writing bench.md", e))?;
        println!("wrote {}/bench.json and bench.md", out.display());
        self.write_pair_curves(rows)
    }

    /// pair_curves.png and .svg (the paper's Fig. 6) when the bench ran both MOTH and
    /// the asymmetric baseline: the first row of each.
    fn write_pair_curves(&self, rows: &[BenchRow]) -> moth::Result<()> {
        let find = |m: Method| rows.iter().find(|r| r.method == m);
        let (Some(sym), Some(asym)) = (find(Method::Moth), find(Method::Asymmetric)) else {
            return Ok(());
        };
        let Some((title, panels)) =
            crate::pair_curves::figure(&sym.history, &asym.history, &self.test_set.classes)
        else {
            return Ok(());
        };
        let fig = crate::plot::curves::Lines::new(&title, "step", panels, true)?;
        let path = crate::plot::write(&self.a.out.join("pair_curves"), &fig)?;
        println!("wrote {} ({})", path.display(), title);
        Ok(())
    }
}

/// Hardening time at which a run's enlargement curve first reaches `target`
/// (linear interpolation between measurement points; None if never).
fn time_to_reach(curve: &[(f64, f64)], target: f64) -> Option<f64> {
    let mut prev = (0.0, 0.0);
    for &(t, e) in curve {
        if e >= target {
            let frac = if e > prev.1 {
                (target - prev.1) / (e - prev.1)
            } else {
                1.0
            };
            return Some(prev.0 + frac.clamp(0.0, 1.0) * (t - prev.0));
        }
        prev = (t, e);
    }
    None
}

/// The enlargement every variant is timed to: the reference preset's
/// final one when a variant ran it, else the smaller of MOTH's and
/// Pairwise's.
fn common_enlargement(rows: &[BenchRow]) -> Option<(f64, &'static str)> {
    if let Some(r) = rows.iter().find(|r| r.reference) {
        return Some((r.enlargement, "the reference preset's enlargement"));
    }
    let find = |name: &str| rows.iter().find(|r| r.variant.starts_with(name));
    match (find("moth"), find("pairwise")) {
        (Some(m), Some(p)) => Some((m.enlargement.min(p.enlargement), "min(MOTH, Pairwise)")),
        _ => None,
    }
}

fn bench_table(rows: &[BenchRow], bench: &Bench) -> String {
    let common = common_enlargement(rows);
    let target = common.map(|c| c.0);
    let mut t = format!(
        "| variant | enlargement | accuracy change (points) | hardening time (s) | warm-up / later inversions / training (s) | steps |{}\n|---|---|---|---|---|---|{}\n",
        if target.is_some() { " time to reach the common enlargement (s) |" } else { "" },
        if target.is_some() { "---|" } else { "" }
    );
    for r in rows {
        let reach = target.map(|g| {
            time_to_reach(&r.curve, g).map_or("not reached".to_string(), |s| format!("{s:.1}"))
        });
        let s = &r.time_split;
        t.push_str(&format!(
            "| {} | {:+.1}% | {:+.2} | {:.1} | {:.0} / {:.0} / {:.0} | {} |{}\n",
            r.variant,
            100.0 * r.enlargement,
            100.0 * (r.accuracy_after - r.accuracy_before),
            r.harden_seconds,
            s.warmup_hardening,
            s.later_hardening,
            s.training,
            r.steps,
            reach.map_or(String::new(), |s| format!(" {s} |"))
        ));
    }
    if let Some((g, what)) = common {
        t.push_str(&format!(
            "\nCommon enlargement = {what} = {:+.1}%.\n",
            100.0 * g
        ));
    }
    t.push_str(&protocol_line(rows, bench));
    t
}

fn protocol_line(rows: &[BenchRow], bench: &Bench) -> String {
    let a = bench.a;
    format!(
        "\nProtocol: {} epoch(s) after a {}-step warm-up, seed {}, device {}, {} libtorch threads; distances: {}; {} measurement points per run.\n",
        a.epochs,
        rows.first().map_or(0, |r| r.after.len()),
        a.common.seed,
        device_name(bench.device),
        tch::get_num_threads(),
        bench.dcfg.describe(),
        a.points
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn bench_args(extra: &[&str]) -> BenchArgs {
        let cli = crate::args::Cli::parse_from([&["moth", "bench"], extra].concat());
        match cli.command {
            crate::args::Command::Bench(a) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn variants_parse_with_partial_session_config() {
        let a = bench_args(&[
            "--variants",
            "moth,universal:growing",
            "--session-config",
            r#"{"first":{"steps":10}}"#,
        ]);
        let v = bench_variants(&a).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].name, "moth");
        assert_eq!(v[0].session.method, moth::session::Method::Moth);
        assert_eq!(v[1].session.method, moth::session::Method::Universal);
        assert_eq!(
            v[1].session.bounds.mode,
            moth::algo::bounds::BoundsMode::Growing
        );
        assert!(v.iter().all(|c| c.session.first.steps == 10));
    }

    #[test]
    fn bad_variants_are_refused() {
        for bad in ["moth:wobbly", "nosuch:fixed"] {
            let e = bench_variants(&bench_args(&["--variants", bad])).unwrap_err();
            assert!(e.to_string().contains("invalid configuration"), "{e}");
        }
    }

    #[test]
    fn points_and_time_to_reach() {
        assert_eq!(measurement_points(10, 3), vec![3, 6, 10]);
        assert_eq!(measurement_points(10, 0), vec![10]);
        let curve = [(1.0, 0.1), (2.0, 0.3)];
        assert_eq!(time_to_reach(&curve, 0.2), Some(1.5));
        assert_eq!(time_to_reach(&curve, 0.05), Some(0.5));
        assert_eq!(time_to_reach(&curve, 0.5), None);
    }
}
