//! Helpers of the data-parallel C++ trainer tests (tests/c_abi_examples.rs):
//! starting ranks, waiting for them with a time limit, and measuring the
//! class distances of the weights the trainer writes.
#![allow(dead_code)]

use std::process::Command;
use std::time::Instant;

/// Arguments of the short trainer runs below.
pub const SHORT_RUN: [&str; 10] = [
    "--train",
    "640",
    "--test",
    "200",
    "--pretrain-epochs",
    "1",
    "--steps",
    "14",
    "--batch",
    "64",
];

/// Starts rank `rank` of a `world`-rank trainer run in `dir`.
pub fn start_rank(
    bin: &std::path::Path,
    dir: &std::path::Path,
    rank: usize,
    world: usize,
    extra: &[&str],
) -> std::process::Child {
    Command::new(bin)
        .args(SHORT_RUN)
        .args([
            "--world-size",
            &world.to_string(),
            "--rank",
            &rank.to_string(),
        ])
        .arg("--store")
        .arg(dir.join("store"))
        .arg("--checkpoint")
        .arg(dir.join(format!("ckpt{rank}")))
        .arg("--weights")
        .arg(dir.join(format!("rank{rank}")))
        .args(extra)
        .env("OMP_NUM_THREADS", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the trainer starts")
}

/// Waits for every rank, killing all of them after `limit` (a hang is a
/// failure, not a stuck CI job). Returns (success, stdout, stderr) per rank.
pub fn wait_ranks(
    ranks: Vec<std::process::Child>,
    limit: std::time::Duration,
) -> Vec<(bool, String, String)> {
    let start = Instant::now();
    let mut ranks: Vec<Option<std::process::Child>> = ranks.into_iter().map(Some).collect();
    let mut done: Vec<Option<(bool, String, String)>> = ranks.iter().map(|_| None).collect();
    while done.iter().any(Option::is_none) {
        for (i, slot) in ranks.iter_mut().enumerate() {
            let finished = slot
                .as_mut()
                .is_some_and(|c| c.try_wait().expect("try_wait").is_some());
            if finished {
                let out = slot.take().unwrap().wait_with_output().unwrap();
                done[i] = Some((
                    out.status.success(),
                    String::from_utf8_lossy(&out.stdout).into_owned(),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                ));
            }
        }
        if start.elapsed() > limit {
            for c in ranks.iter_mut().flatten() {
                let _ = c.kill();
            }
            panic!("the ranks did not finish within {limit:?}: {done:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    done.into_iter().map(Option::unwrap).collect()
}

/// The trainer's `Net` (examples/cpp/trainer.cpp) in tch operations, on the
/// raw float32 weights it writes with `--weights`.
pub struct TrainerNet(Vec<tch::Tensor>);

impl TrainerNet {
    fn load(path: &std::path::Path) -> Self {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let values: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let shapes: [&[i64]; 8] = [
            &[16, 1, 3, 3],
            &[16],
            &[32, 16, 3, 3],
            &[32],
            &[64, 32 * 7 * 7],
            &[64],
            &[10, 64],
            &[10],
        ];
        let mut at = 0;
        let params = shapes
            .iter()
            .map(|s| {
                let n: i64 = s.iter().product();
                let t = tch::Tensor::from_slice(&values[at..at + n as usize]).view(*s);
                at += n as usize;
                t
            })
            .collect();
        assert_eq!(at, values.len(), "{} holds other weights", path.display());
        TrainerNet(params)
    }
}

impl moth::torch::model::Classifier for TrainerNet {
    fn forward(&self, x: &tch::Tensor) -> moth::Result<tch::Tensor> {
        let p = &self.0;
        let x = (x - 0.2860) / 0.3530;
        let x = x
            .f_conv2d(&p[0], Some(&p[1]), [1, 1], [1, 1], [1, 1], 1)?
            .f_relu()?
            .f_max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)?;
        let x = x
            .f_conv2d(&p[2], Some(&p[3]), [1, 1], [1, 1], [1, 1], 1)?
            .f_relu()?
            .f_max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)?;
        let x = x.f_flatten(1, -1)?.f_linear(&p[4], Some(&p[5]))?.f_relu()?;
        Ok(x.f_linear(&p[6], Some(&p[7]))?)
    }
    fn set_train(&mut self, _train: bool) -> moth::Result<()> {
        Ok(())
    }
    fn device(&self) -> tch::Device {
        tch::Device::Cpu
    }
}

/// Class distances among the first four classes of the trainer's weights in
/// `path`, on 16 test images per class with 100 inversion steps (a lighter
/// protocol than `quick`, 12 directions of 90: enough to compare two runs
/// of the same hardening within a CI budget).
pub fn trainer_distances(path: &std::path::Path) -> moth::algo::distance::DistanceMatrix {
    use moth::io::dataset::{Dataset, Split};
    let all = Dataset::fashion_mnist(None, Split::Test).unwrap();
    let labels = all.labels_vec();
    let first: Vec<i64> = (0..labels.len() as i64)
        .filter(|&i| labels[i as usize] < 4)
        .collect();
    let mut test = all.select(&first).unwrap().balanced_subset(16).unwrap();
    test.classes.truncate(4);
    let mut cfg = moth::config::DistanceConfig::quick();
    cfg.samples_per_class = 16;
    cfg.budget.steps = 100;
    let samples = moth::algo::distance::Samples {
        images: &test.images,
        labels: test.labels_vec(),
        classes: &test.classes,
    };
    moth::algo::distance::measure(&mut TrainerNet::load(path), samples, &cfg, &mut |_| {}).unwrap()
}

/// The lines of a rank's output that every rank must print alike.
pub fn agreed_lines(out: &str) -> Vec<&str> {
    out.lines()
        .filter(|l| l.starts_with("agreed step"))
        .collect()
}
