//! `moth train` and `moth harden` end to end on the data a PyTorch user has:
//! an image folder tree of colour PNGs (a 3-channel model trained, measured
//! and hardened), a NumPy `.npz` archive, and the errors a bad tree gets.
//! All data is generated here, small enough for runs of seconds.

use std::path::Path;
use std::process::Command;

const MOTH: &str = env!("CARGO_BIN_EXE_moth");

/// Small budgets so that a hardening run takes seconds.
const SMALL: &str = r#"{"warmup":{"budget":{"steps":10,"init_cost":0.001,"asr_bound":0.99}},
 "first":{"steps":6,"init_cost":0.001,"asr_bound":0.9},
 "later":{"steps":4,"init_cost":0.01,"asr_bound":0.9},"accuracy_every":2}"#;

/// Runs moth on the CPU with one libtorch thread (`--threads` is global:
/// `inspect` takes it too).
fn moth(args: &[&str]) -> std::process::Output {
    let device: &[&str] = match args.first() {
        Some(&"inspect") => &[],
        _ => &["--device", "cpu"],
    };
    Command::new(MOTH)
        .args(args)
        .args(device)
        .args(["--threads", "1"])
        .env("RUST_LOG", "warn")
        .env("OMP_NUM_THREADS", "1")
        .output()
        .expect("moth runs")
}

fn ok(args: &[&str]) -> String {
    let out = moth(args);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "moth {args:?} failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn fails(args: &[&str]) -> String {
    let out = moth(args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert!(
        err.contains("moth: error") && !err.contains("panicked"),
        "{err}"
    );
    err
}

/// A pseudo-random byte stream of this test's own.
fn noise(seed: u32) -> impl FnMut() -> u8 {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    move || {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        (s >> 24) as u8
    }
}

/// Class `k` of three: a noisy image whose channel `k` is bright.
fn colour_pixels(k: usize, side: u32, seed: u32) -> Vec<u8> {
    let mut rnd = noise(seed);
    (0..side * side * 3)
        .map(|i| {
            let base = if i as usize % 3 == k { 170 } else { 40 };
            base + rnd() % 60
        })
        .collect()
}

const COLOURS: [&str; 3] = ["red", "green", "blue"];

/// `ROOT/{train,test}/{red,green,blue}/*.png`, 3x`side`x`side`.
fn colour_tree(root: &Path, side: u32, train: usize, test: usize) -> String {
    for (split, n) in [("train", train), ("test", test)] {
        for (k, class) in COLOURS.iter().enumerate() {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                let seed = (k * 1000 + i + if split == "test" { 500 } else { 0 }) as u32;
                let img =
                    image::RgbImage::from_raw(side, side, colour_pixels(k, side, seed)).unwrap();
                img.save(dir.join(format!("{i:03}.png"))).unwrap();
            }
        }
    }
    root.to_str().unwrap().to_string()
}

fn history_losses(run: &Path) -> Vec<f64> {
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
    report["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["loss"].as_f64().unwrap())
        .collect()
}

#[test]
fn a_colour_model_is_trained_measured_and_hardened_on_an_image_tree() {
    let dir = tempfile::tempdir().unwrap();
    let tree = colour_tree(&dir.path().join("tree"), 32, 20, 6);
    let model = dir.path().join("colour.moth");
    let model_s = model.to_str().unwrap();
    let out = ok(&[
        "train", "--data", &tree, "--arch", "cnn32", "--epochs", "2", "--out", model_s,
    ]);
    for want in [
        "an image folder tree",
        "60 images of 3x32x32",
        "3 classes: blue, green, red",
        "training the built-in cnn32 (60 images",
        "test accuracy",
    ] {
        assert!(out.contains(want), "missing '{want}' in\n{out}");
    }
    let run = dir.path().join("run");
    let out = ok(&[
        "harden",
        "--data",
        &tree,
        "--model",
        model_s,
        "--samples",
        "3",
        "--steps",
        "6",
        "--epochs",
        "0.05",
        "--session-config",
        SMALL,
        "--out",
        run.to_str().unwrap(),
    ]);
    assert!(out.contains("MOTH report"), "{out}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
    assert_eq!(
        report["before"]["classes"],
        serde_json::json!(["blue", "green", "red"])
    );
    // Six directions measured before and after, sizes in units of C * sum(m).
    for half in ["before", "after"] {
        let values = report[half]["values"].as_array().unwrap();
        assert_eq!(values.len(), 3);
        let off_diagonal: Vec<f64> = (0..3)
            .flat_map(|i| (0..3).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| values[i][j].as_f64().unwrap_or(f64::NAN))
            .collect();
        // A size is at most C * H * W = 3072 (the mask covers every pixel
        // of three channels); 0 where the model already predicts the target.
        assert!(
            off_diagonal
                .iter()
                .all(|v| (0.0..=3.0 * 32.0 * 32.0).contains(v)),
            "{half}: {off_diagonal:?}"
        );
        assert!(
            off_diagonal.iter().any(|v| *v > 0.0),
            "{half}: {off_diagonal:?}"
        );
    }
    for plot in ["before.png", "after.png", "difference.svg"] {
        assert!(run.join(plot).is_file(), "{plot} not written");
    }
    // The hardened model is a 3-channel model too.
    let out = ok(&["inspect", run.join("run.ckpt").to_str().unwrap()]);
    assert!(
        out.contains("inputs 3x32x32") && out.contains("built-in cnn32"),
        "{out}"
    );
}

#[test]
fn a_streamed_image_tree_trains_exactly_as_one_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let tree = colour_tree(&dir.path().join("tree"), 32, 10, 3);
    let model = dir.path().join("m.moth");
    ok(&[
        "train",
        "--data",
        &tree,
        "--epochs",
        "1",
        "--out",
        model.to_str().unwrap(),
    ]);
    let harden = |name: &str, extra: &[&str]| {
        let run = dir.path().join(name);
        let common = [
            "harden",
            "--data",
            &tree,
            "--model",
            model.to_str().unwrap(),
            "--no-distance",
            "--epochs",
            "1",
            "--batch",
            "8",
            "--max-drop",
            "100",
            "--session-config",
            SMALL,
            "--out",
            run.to_str().unwrap(),
        ];
        let out = ok(&[&common[..], extra].concat());
        (out, history_losses(&run))
    };
    let (streamed_out, streamed) = harden("streamed", &["--stream"]);
    let (_, in_memory) = harden("memory", &[]);
    assert!(streamed_out.contains("batch by batch"), "{streamed_out}");
    assert_eq!(streamed.len(), 3 + 4, "3 warm-up steps and 30/8 batches");
    assert_eq!(streamed, in_memory);
}

/// Writes an `.npz` archive with uint8 NHWC images of one channel.
fn write_npz(path: &Path, side: u64, train: u64, test: u64) {
    use npyz::WriterBuilder;
    let mut npz = npyz::npz::NpzWriter::create(path).unwrap();
    for (x, y, n, seed) in [
        ("x_train", "y_train", train, 1),
        ("x_test", "y_test", test, 2),
    ] {
        let labels: Vec<i64> = (0..n as i64).map(|i| i % 4).collect();
        let mut rnd = noise(seed);
        let pixels: Vec<u8> = labels
            .iter()
            .flat_map(|&l| {
                let mut img: Vec<u8> = (0..side * side).map(|_| rnd() % 40).collect();
                // Class l: a bright row at height 5 * l.
                for c in 0..side {
                    img[(5 * l as u64 * side + c) as usize] = 230;
                }
                img
            })
            .collect();
        let mut w = npz
            .array::<u8>(x, Default::default())
            .unwrap()
            .default_dtype()
            .shape(&[n, side, side, 1])
            .begin_nd()
            .unwrap();
        w.extend(pixels).unwrap();
        w.finish().unwrap();
        let mut w = npz
            .array::<i64>(y, Default::default())
            .unwrap()
            .default_dtype()
            .shape(&[n])
            .begin_nd()
            .unwrap();
        w.extend(labels).unwrap();
        w.finish().unwrap();
    }
}

#[test]
fn an_npz_archive_is_trained_on_and_hardened() {
    let dir = tempfile::tempdir().unwrap();
    let npz = dir.path().join("data.npz");
    write_npz(&npz, 28, 64, 16);
    let npz_s = npz.to_str().unwrap();
    let names = dir.path().join("names.txt");
    std::fs::write(&names, "top row\nsecond row\nthird row\nfourth row\n").unwrap();
    let names_s = names.to_str().unwrap();
    let model = dir.path().join("m.moth");
    let model_s = model.to_str().unwrap();
    let out = ok(&[
        "train",
        "--data",
        npz_s,
        "--classes",
        names_s,
        "--epochs",
        "1",
        "--out",
        model_s,
    ]);
    for want in [
        "a NumPy .npz archive",
        "x_train |u1 [64, 28, 28, 1], read as NHWC (inferred)",
        "4 classes: top row, second row",
        "training the built-in cnn28 (64 images",
    ] {
        assert!(out.contains(want), "missing '{want}' in\n{out}");
    }
    let run = dir.path().join("run");
    let out = ok(&[
        "harden",
        "--data",
        npz_s,
        "--classes",
        names_s,
        "--model",
        model_s,
        "--samples",
        "2",
        "--steps",
        "4",
        "--epochs",
        "0.05",
        "--session-config",
        SMALL,
        "--out",
        run.to_str().unwrap(),
    ]);
    assert!(
        out.contains("top row -> "),
        "class names in the report: {out}"
    );
    assert!(run.join("hardened.moth").is_file());
    // Without the names file, the classes are the label numbers.
    let out = ok(&[
        "harden",
        "--data",
        npz_s,
        "--model",
        model_s,
        "--no-distance",
        "--epochs",
        "0.05",
        "--session-config",
        SMALL,
        "--out",
        dir.path().join("numbers").to_str().unwrap(),
    ]);
    assert!(out.contains("4 classes: 0, 1, 2, 3"), "{out}");
    // A layout that does not fit is refused.
    let err = fails(&[
        "train", "--data", npz_s, "--layout", "nchw", "--out", model_s,
    ]);
    assert!(err.contains("read as nchw have no channel axis"), "{err}");
}

#[test]
fn a_tree_of_mixed_sizes_is_refused_or_resized() {
    let dir = tempfile::tempdir().unwrap();
    let tree = colour_tree(&dir.path().join("tree"), 32, 2, 1);
    let odd = dir.path().join("tree/train/red/odd.png");
    image::RgbImage::from_pixel(20, 24, image::Rgb([200, 0, 0]))
        .save(&odd)
        .unwrap();
    let model = dir.path().join("m.moth");
    let model_s = model.to_str().unwrap();
    let err = fails(&["train", "--data", &tree, "--epochs", "1", "--out", model_s]);
    assert!(
        err.contains("odd.png") && err.contains("is 24x20") && err.contains("--image-size"),
        "{err}"
    );
    assert!(!model.exists());
    let out = ok(&[
        "train",
        "--data",
        &tree,
        "--image-size",
        "32x32",
        "--epochs",
        "1",
        "--out",
        model_s,
    ]);
    assert!(
        out.contains("7 images of 3x32x32 (all resized to it)"),
        "{out}"
    );
    // No built-in network takes 3x24x24 images.
    let err = fails(&[
        "train",
        "--data",
        &tree,
        "--image-size",
        "24x24",
        "--out",
        model_s,
    ]);
    assert!(
        err.contains("no built-in network takes the 3x24x24 images"),
        "{err}"
    );
}
