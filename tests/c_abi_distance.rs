//! Class distances over C: a C program measures a TorchScript model's
//! matrix through include/moth.h and gets, bit for bit, the matrix that
//! `moth distance` writes for the same samples, protocol and seed (both run
//! `moth::algo::distance::measure_pairs`). Run `cargo build --release`
//! first: the program links the library cargo built last.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

mod native;
use native::*;

const MOTH: &str = env!("CARGO_BIN_EXE_moth");

/// Writes an IDX file of unsigned bytes.
fn write_idx(path: &Path, dims: &[usize], data: &[u8]) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(&[0, 0, 0x08, dims.len() as u8]).unwrap();
    for d in dims {
        f.write_all(&(*d as u32).to_be_bytes()).unwrap();
    }
    f.write_all(data).unwrap();
}

/// A Fashion-MNIST test slice of `per_class` images per class as plain IDX
/// files in `dir` (what `moth distance --data dir` reads), and the same
/// images as moth loads them, as raw floats and int64 labels for C.
fn test_slice(dir: &Path, per_class: usize) -> (PathBuf, PathBuf, usize) {
    use moth::io::dataset::{Dataset, Split};
    use moth::io::idx::read_idx;
    let [img, lab] = Dataset::fashion_mnist_files(None, Split::Test).unwrap();
    let (images, labels) = (read_idx(&img).unwrap(), read_idx(&lab).unwrap());
    let mut taken = [0usize; 10];
    let (mut px, mut ls) = (Vec::new(), Vec::new());
    for (i, &l) in labels.data.iter().enumerate() {
        if taken[l as usize] < per_class {
            taken[l as usize] += 1;
            px.extend_from_slice(&images.data[i * 784..(i + 1) * 784]);
            ls.push(l);
        }
    }
    let n = ls.len();
    write_idx(&dir.join("t10k-images-idx3-ubyte"), &[n, 28, 28], &px);
    write_idx(&dir.join("t10k-labels-idx1-ubyte"), &[n], &ls);
    let data = Dataset::fashion_mnist(Some(dir), Split::Test).unwrap();
    let floats = Vec::<f32>::try_from(&data.images.flatten(0, -1)).unwrap();
    let bytes: Vec<u8> = floats.iter().flat_map(|v| v.to_ne_bytes()).collect();
    let f32_path = dir.join("images.f32");
    std::fs::write(&f32_path, bytes).unwrap();
    let label_bytes: Vec<u8> = data
        .labels_vec()
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect();
    let i64_path = dir.join("labels.i64");
    std::fs::write(&i64_path, label_bytes).unwrap();
    (f32_path, i64_path, n)
}

#[test]
fn a_c_program_measures_the_same_matrix_as_moth_distance() {
    let work = scratch_dir("c_abi_distance");
    let bin = work.join("distance");
    compile_c(&root().join("tests/c/distance.c"), &bin, &[], &["-lm"]);
    let model = example_model();
    let data = tempfile::tempdir().unwrap();
    let (images, labels, n) = test_slice(data.path(), 12);
    let (samples, steps, seed) = ("8", "12", "3");

    let out_dir = data.path().join("cli");
    let (ok, out, err) = run(Command::new(MOTH).args([
        "distance",
        "--model",
        model.to_str().unwrap(),
        "--input-shape",
        "1,28,28",
        "--data",
        data.path().to_str().unwrap(),
        "--device",
        "cpu",
        "--protocol",
        "quick",
        "--samples",
        samples,
        "--steps",
        steps,
        "--seeds",
        seed,
        "--out",
        out_dir.to_str().unwrap(),
    ]));
    assert!(ok, "moth distance failed:\n{out}\n{err}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("distances.json")).unwrap())
            .unwrap();
    let cli: Vec<Vec<f64>> = json["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect()
        })
        .collect();

    let (ok, out, err) = run(Command::new(&bin)
        .arg(&model)
        .arg(&images)
        .arg(&labels)
        .args([&n.to_string(), "1", "28", "28", "10", samples, steps, seed]));
    assert!(ok, "the C program failed:\n{out}\n{err}");
    for needle in [
        "cancelled ok",
        "pairs ok",
        "progress 90/90",
        "trigger ok",
        "\nok",
    ] {
        assert!(out.contains(needle), "output lacks '{needle}':\n{out}");
    }
    let c: Vec<Vec<f64>> = out
        .lines()
        .filter_map(|l| l.strip_prefix("row "))
        .map(|l| {
            l.split_once(':')
                .unwrap()
                .1
                .split_whitespace()
                .map(|v| v.parse().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(c.len(), 10, "{out}");
    let measured = c.iter().flatten().filter(|v| **v > 0.0).count();
    assert!(
        measured >= 30,
        "most directions measured: {measured}\n{out}"
    );
    assert_eq!(c, cli, "C matrix vs moth distance");
}
