//! What the commands print and write: distance matrices (table,
//! distances.json, heatmap), and the before/after report of `harden`
//! (summary, report.json, heatmaps).

use std::path::Path;

use moth::algo::distance::DistanceMatrix;
use moth::io::dataset::Dataset;
use moth::torch::model::{self, Model};

use moth::algo::stamped_accuracy::StampedAccuracy;

/// A device as users write it: `cpu`, `cuda:0`, ...
pub fn device_name(device: tch::Device) -> String {
    match device {
        tch::Device::Cpu => "cpu".into(),
        tch::Device::Cuda(n) => format!("cuda:{n}"),
        tch::Device::Mps => "mps".into(),
        tch::Device::Vulkan => "vulkan".into(),
    }
}

/// The matrix as a table, with its mean.
pub fn print_matrix(m: &DistanceMatrix) {
    println!("{}", m.to_table());
    println!(
        "mean distance {:.2} over {} measured pairs ({} failed), measured in {:.1} s",
        m.mean(),
        m.measured().count(),
        m.failed.len(),
        m.seconds
    );
}

pub fn create_dir(dir: &Path) -> moth::Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| moth::Error::io(format!("creating {}", dir.display()), e))
}

/// Writes `value` as pretty JSON to `path`.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> moth::Result<()> {
    let json = serde_json::to_string_pretty(value)
        .map_err(|e| moth::Error::encode(path.display().to_string(), e))?;
    std::fs::write(path, json)
        .map_err(|e| moth::Error::io(format!("writing {}", path.display()), e))
}

/// DIR/distances.json and DIR/heatmap.png (and .svg).
pub fn write_distance_outputs(m: &DistanceMatrix, dir: &Path, title: &str) -> moth::Result<()> {
    create_dir(dir)?;
    let jpath = dir.join("distances.json");
    write_json(&jpath, m)?;
    let hpath = crate::figures::distance_heatmap(m, title, &dir.join("heatmap"))?;
    println!(
        "wrote {} and {} (and .svg)",
        jpath.display(),
        hpath.display()
    );
    Ok(())
}

/// The result of a `harden` run, as written to report.json.
#[derive(serde::Serialize)]
pub struct HardenReport {
    /// `moth`, `universal`, `pairwise` or `asymmetric`.
    pub method: String,
    pub model: String,
    /// `cpu`, `cuda:N`.
    pub device: String,
    pub steps: u64,
    /// Where the session ended, in words.
    pub final_phase: String,
    /// `step-budget`, `accuracy-bound` or `recovery-exhausted` (null when
    /// the run is not done).
    pub done_reason: Option<String>,
    pub accuracy_before: f64,
    pub accuracy_after: f64,
    pub enlargement: Option<f64>,
    pub mean_before: Option<f64>,
    pub mean_after: Option<f64>,
    pub harden_seconds: f64,
    pub wall_seconds: f64,
    pub protocol: String,
    pub before: Option<DistanceMatrix>,
    pub after: Option<DistanceMatrix>,
    /// Smallest distances, shrunk directions, per-class enlargement.
    pub change: Option<moth::algo::distance::Change>,
    /// Accuracy on test samples stamped with the base model's triggers:
    /// on the base model, then on the hardened one.
    pub stamped: Option<(StampedAccuracy, StampedAccuracy)>,
    /// Where the hardening time went.
    pub time_split: moth::runner::TimeSplit,
    pub session_config: moth::session::SessionConfig,
    pub pair_counts: Vec<Vec<f64>>,
    pub history: Vec<moth::runner::StepRecord>,
}

/// Clean accuracy of `model` on the whole test set.
pub fn test_accuracy(model: &mut Model, test_set: &Dataset) -> moth::Result<f64> {
    model::accuracy(
        model,
        &test_set.images,
        &test_set.labels,
        model::ACCURACY_BATCH,
    )
}

/// Writes DIR/report.json and the heatmaps, and prints the summary.
pub fn write_harden_report(r: &HardenReport, dir: &Path) -> moth::Result<()> {
    let path = dir.join("report.json");
    write_json(&path, r)?;
    if let (Some(b), Some(a)) = (&r.before, &r.after) {
        crate::figures::before_after(b, a, dir)?;
    }
    crate::figures::write_hardening_curve(&r.history, dir)?;
    print_summary(r, &path);
    Ok(())
}

fn print_summary(r: &HardenReport, path: &Path) {
    println!("\n=== MOTH report ({}) ===", r.method);
    println!(
        "clean accuracy: {:.2}% -> {:.2}% ({:+.2} points)",
        100.0 * r.accuracy_before,
        100.0 * r.accuracy_after,
        100.0 * (r.accuracy_after - r.accuracy_before)
    );
    if let (Some(mb), Some(ma), Some(e)) = (r.mean_before, r.mean_after, r.enlargement) {
        println!(
            "mean class distance: {mb:.2} -> {ma:.2}; relative enlargement {:+.1}%",
            100.0 * e
        );
        println!("distance protocol: {}", r.protocol);
    }
    if let (Some(c), Some(b)) = (&r.change, &r.before) {
        print_change(c, &b.classes);
    }
    if let Some((b, a)) = &r.stamped {
        println!(
            "accuracy on test samples stamped with the base model's {} triggers ({} per class): base model {:.1}% (worst direction {:.1}%), hardened {:.1}% (worst {:.1}%)",
            b.directions,
            b.samples_per_class,
            100.0 * b.mean,
            100.0 * b.worst,
            100.0 * a.mean,
            100.0 * a.worst
        );
    }
    println!(
        "hardening steps: {} ({}), {:.1} s; whole run {:.1} s",
        r.steps, r.final_phase, r.harden_seconds, r.wall_seconds
    );
    let t = &r.time_split;
    println!(
        "hardening time: warm-up inversions {:.1} s, later inversions {:.1} s, training and accuracy checks {:.1} s",
        t.warmup_hardening, t.later_hardening, t.training
    );
    println!(
        "wrote {} (and the figures: before/after/difference heatmaps, class_means, hardening; PNG and SVG)",
        path.display()
    );
}

/// The smallest distances, the directions that shrank and the per-class
/// enlargement, with class names.
fn print_change(c: &moth::algo::distance::Change, classes: &[String]) {
    let name = |i: usize| classes.get(i).map_or("?", String::as_str);
    let list = |v: &[(usize, usize, f64)]| {
        v.iter()
            .map(|&(a, b, d)| format!("{} -> {} {d:.1}", name(a), name(b)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("smallest distances before: {}", list(&c.smallest_before));
    println!("smallest distances after:  {}", list(&c.smallest_after));
    if c.shrunk.is_empty() {
        println!("no measured direction shrank");
    } else {
        let shown: Vec<String> = c
            .shrunk
            .iter()
            .take(5)
            .map(|&(a, b, x, y)| format!("{} -> {} {x:.1} -> {y:.1}", name(a), name(b)))
            .collect();
        println!(
            "{} direction(s) shrank: {}",
            c.shrunk.len(),
            shown.join(", ")
        );
    }
    let per: Vec<String> = c
        .per_class
        .iter()
        .enumerate()
        .map(|(i, e)| format!("{} {:+.0}%", name(i), 100.0 * e))
        .collect();
    println!("mean enlargement per source class: {}", per.join(", "));
    let cf = &c.close_far;
    println!(
        "the {} closest directions before: mean {:.1} -> {:.1}; the {} farthest: {:.1} -> {:.1}; rank correlation before/after {:.2}",
        cf.k, cf.close.0, cf.close.1, cf.k, cf.far.0, cf.far.1, c.rank_correlation
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_read_as_users_write_them() {
        assert_eq!(device_name(tch::Device::Cpu), "cpu");
        assert_eq!(device_name(tch::Device::Cuda(0)), "cuda:0");
        assert_eq!(device_name(tch::Device::Cuda(3)), "cuda:3");
    }
}
