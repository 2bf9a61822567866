//! What the tests that build native programs against `libmoth.so` share
//! (tests/c_abi_*.rs, tests/go_binding.rs): where the repository, libtorch and
//! the freshly built library are, and a TorchScript model to harden.
#![allow(dead_code)]

pub mod twin;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;

use tch::{Device, Kind, Tensor};

pub mod ranks;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The libtorch in use (its `include/` and `lib/`): $LIBTORCH, which
/// .cargo/config.toml sets to .libtorch.
pub fn libtorch_root() -> PathBuf {
    let dir = std::env::var_os("LIBTORCH")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".libtorch"));
    let dir = if dir.is_relative() {
        root().join(dir)
    } else {
        dir
    };
    dir.canonicalize().unwrap_or(dir)
}

/// Runs `cmd` with one OpenMP thread (programs beside a test process on a
/// small machine slow each other down otherwise): whether it succeeded, its
/// stdout and its stderr. Panics when it cannot be started.
pub fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `target/release`.
pub fn release_dir() -> PathBuf {
    root().join("target").join("release")
}

/// A scratch folder under target/ for one test binary's products.
pub fn scratch_dir(name: &str) -> PathBuf {
    let d = root().join("target").join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn mtime(p: &Path) -> SystemTime {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Newest modification time of the files (recursively) under `paths`.
pub fn newest(paths: &[PathBuf]) -> SystemTime {
    let mut best = SystemTime::UNIX_EPOCH;
    for p in paths {
        if p.is_dir() {
            let children: Vec<PathBuf> = std::fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            best = best.max(newest(&children));
        } else {
            best = best.max(mtime(p));
        }
    }
    best
}

/// The folder holding the newest `libmoth.so`: `cargo build --release`
/// writes target/release/, while `cargo test --release` relinks the cdylib
/// in target/release/deps/ without copying it up.
pub fn lib_dir() -> PathBuf {
    let candidates = [release_dir(), release_dir().join("deps")];
    candidates
        .iter()
        .filter(|d| d.join("libmoth.so").exists())
        .max_by_key(|d| mtime(&d.join("libmoth.so")))
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "no libmoth.so under {}: run `cargo build --release --lib`",
                release_dir().display()
            )
        })
}

/// The `libmoth.so` native programs link against. One older than src/
/// (another change is being built) is used anyway, with a warning: a test
/// must not run cargo itself (cargo holds the build lock while tests run).
pub fn libmoth() -> PathBuf {
    let so = lib_dir().join("libmoth.so");
    if mtime(&so) < newest(&[root().join("src")]) {
        eprintln!(
            "warning: {} is older than src/; run `cargo build --release --lib`",
            so.display()
        );
    }
    so
}

/// A TorchScript classifier for Fashion-MNIST (1x28x28 -> 10 logits) at
/// `path`, made once and kept: moth's built-in CNN trained for one epoch on
/// 2000 images, then traced (no Python needed).
pub fn fashion_model(path: &Path) {
    if path.exists() {
        return;
    }
    use moth::io::dataset::{Dataset, Split};
    use moth::torch::model::{Arch, Classifier, Model};
    use moth::torch::train::{fit, Optimizer, OptimizerConfig};
    tch::manual_seed(0);
    let data = Dataset::fashion_mnist(None, Split::Train)
        .unwrap()
        .balanced_subset(200)
        .unwrap();
    let mut model = Model::builtin(Arch::Cnn28, 10, Device::Cpu).unwrap();
    let mut opt = Optimizer::new(OptimizerConfig::pretraining(), &model).unwrap();
    fit(&mut model, &mut opt, &data, 1, 64, 0, &mut |_, _, _, _| {}).unwrap();
    model.set_train(false).unwrap();
    // Traced weights become constants, which must not require gradients.
    for (_, p) in model.parameters() {
        let _ = p.shallow_clone().set_requires_grad(false);
    }
    let probe = Tensor::zeros([2, 1, 28, 28], (Kind::Float, Device::Cpu));
    let traced = tch::CModule::create_by_tracing("FashionCnn", "forward", &[probe], &mut |x| {
        vec![model.forward(&x[0]).unwrap()]
    })
    .unwrap();
    // Written aside and renamed, so that a run killed halfway leaves no
    // truncated model for the next one.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    traced.save(&tmp).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The TorchScript Fashion-MNIST classifier the C and C++ examples harden
/// ([`fashion_model`] at target/c_abi/fmnist_cnn.pt, made once per process
/// at most, kept between runs).
pub fn example_model() -> PathBuf {
    static MODEL: OnceLock<PathBuf> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            tch::set_num_threads(1);
            let path = scratch_dir("c_abi").join("fmnist_cnn.pt");
            fashion_model(&path);
            path
        })
        .clone()
}

/// Writes a small TorchScript classifier with real parameters (1x28x28 ->
/// 10 logits, untrained) to `out`, as `torch.jit.script` would: the libtorch
/// C++ program tests/cpp/make_scripted.cpp, built once per source change
/// (Python's torch is not installed here).
pub fn scripted_model(out: &Path) {
    let src = root().join("tests/cpp/make_scripted.cpp");
    let work = scratch_dir("torchscript_harden");
    let bin = work.join("make_scripted");
    if mtime(&bin) <= mtime(&src) {
        let torch = libtorch_root();
        let inc = torch.join("include");
        let lib = torch.join("lib");
        let (ok, o, e) = run(Command::new("g++")
            .args(["-std=c++17", "-O0", "-w", "-D_GLIBCXX_USE_CXX11_ABI=1"])
            .arg(&src)
            .arg("-I")
            .arg(&inc)
            .arg("-I")
            .arg(inc.join("torch/csrc/api/include"))
            .arg("-L")
            .arg(&lib)
            .arg(format!("-Wl,-rpath,{}", lib.display()))
            .args(["-Wl,--no-as-needed", "-ltorch_cpu", "-lc10", "-o"])
            .arg(&bin));
        assert!(ok, "compiling tests/cpp/make_scripted.cpp failed:\n{o}{e}");
    }
    let (ok, o, e) = run(Command::new(&bin).arg(out));
    assert!(ok, "make_scripted failed:\n{o}{e}");
}

/// A trainable TorchScript Fashion-MNIST classifier at `path`, made once and
/// kept: [`scripted_model`] (whose parameters are module parameters, unlike
/// a traced model's constants) trained for one epoch on 2000 images.
pub fn trainable_fashion_model(path: &Path) {
    if path.exists() {
        return;
    }
    use moth::io::dataset::{Dataset, Split};
    use moth::torch::model::{Classifier, Model};
    use moth::torch::train::{fit, Optimizer, OptimizerConfig};
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    scripted_model(&tmp);
    let data = Dataset::fashion_mnist(None, Split::Train)
        .unwrap()
        .balanced_subset(200)
        .unwrap();
    let mut model = Model::torchscript(&tmp, [1, 28, 28], Device::Cpu).unwrap();
    let mut opt = Optimizer::new(OptimizerConfig::pretraining(), &model).unwrap();
    fit(&mut model, &mut opt, &data, 1, 64, 0, &mut |_, _, _, _| {}).unwrap();
    model.set_train(false).unwrap();
    model.save(&tmp, &[]).unwrap();
    // Renamed when complete, so that a run killed halfway leaves no
    // truncated model for the next one.
    std::fs::rename(&tmp, path).unwrap();
}

/// Compiles the C program `src` against include/moth.h and `libmoth.so`
/// (strict C99, warnings are errors, `-O1 -g`, an rpath to the library)
/// into `bin`, with `flags` before the source and `libs` after `-lmoth`.
/// Skipped when `bin` is newer than the source, the header and the library.
pub fn compile_c(src: &Path, bin: &Path, flags: &[&str], libs: &[&str]) {
    let lib = libmoth();
    let inputs = [
        src.to_path_buf(),
        root().join("include/moth.h"),
        lib.clone(),
    ];
    if mtime(bin) > newest(&inputs) {
        return;
    }
    let lib_dir = lib.parent().unwrap();
    let (ok, out, err) = run(Command::new("gcc")
        .args([
            "-std=c99",
            "-Wall",
            "-Wextra",
            "-Wpedantic",
            "-Werror",
            "-O1",
            "-g",
        ])
        .args(flags)
        .arg(src)
        .arg("-I")
        .arg(root().join("include"))
        .arg("-L")
        .arg(lib_dir)
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .arg("-lmoth")
        .args(libs)
        .arg("-o")
        .arg(bin));
    assert!(ok, "compiling {} failed:\n{out}{err}", src.display());
}
