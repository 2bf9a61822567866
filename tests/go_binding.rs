//! The Go binding (`bindings/go`) and the Go example (`examples/go`),
//! built with cgo against the freshly built `libmoth.so` and run here:
//! `go test` on the package with a TorchScript model (no test may skip),
//! `go vet` and `gofmt` on both, and the example on Fashion-MNIST.
//!
//! The Go toolchain runs offline and hermetically: no proxy, no module
//! downloads (the binding has no dependencies), its build cache and
//! temporary files under target/go_binding/, the user's Go settings
//! ignored. `./scripts/setup.sh` installs Go (Debian's golang-go).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

mod native;
use native::*;

/// Scratch folder: the model, the Go caches, the example's binary.
fn work_dir() -> PathBuf {
    scratch_dir("go_binding")
}

/// The `go` command, or a failure that says how to get it: the binding is
/// part of what CI checks, so a missing toolchain must not pass silently.
fn go() -> &'static str {
    static CHECKED: OnceLock<()> = OnceLock::new();
    CHECKED.get_or_init(|| {
        let ok = Command::new("go")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "`go` is not on PATH: run ./scripts/setup.sh (it installs golang-go), \
             or install Go 1.19 or later"
        );
    });
    "go"
}

/// A `go` command in `dir` with an environment of our own: offline, caches
/// under target/, cgo pointed at the freshly built library. The rpaths let
/// the test binary find libmoth.so and, should libmoth.so's own rpath not
/// reach it, libtorch.
fn go_command(dir: &Path, args: &[&str]) -> Command {
    let lib = lib_dir();
    let torch = libtorch_root().join("lib");
    let scratch = work_dir();
    for sub in ["gocache", "gopath", "gotmp"] {
        std::fs::create_dir_all(scratch.join(sub)).unwrap();
    }
    let mut cmd = Command::new(go());
    cmd.current_dir(dir)
        .args(args)
        .env_remove("GOTOOLCHAIN")
        .env_remove("GOFLAGS")
        .env_remove("GOROOT")
        .env("GOENV", "off")
        .env("GOWORK", "off")
        .env("GO111MODULE", "on")
        .env("GOPROXY", "off")
        .env("GOSUMDB", "off")
        .env("GOCACHE", scratch.join("gocache"))
        .env("GOPATH", scratch.join("gopath"))
        .env("GOTMPDIR", scratch.join("gotmp"))
        .env("PKG_CONFIG_PATH", pkg_config_dir())
        .env("CGO_ENABLED", "1")
        .env("CGO_CFLAGS", "-O2 -g")
        .env(
            "CGO_LDFLAGS",
            format!(
                "-L{lib} -Wl,-rpath,{lib} -Wl,-rpath,{torch}",
                lib = lib.display(),
                torch = torch.display()
            ),
        );
    cmd
}

/// A folder holding the moth.pc that scripts/gen-pc.sh writes for the
/// freshly built library: cgo finds moth.h and libmoth.so through it
/// (`#cgo pkg-config: moth`), as it would for a user of the package.
fn pkg_config_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = work_dir().join("pkgconfig");
        let (ok, out, err) = run(Command::new(root().join("scripts/gen-pc.sh"))
            .arg(&dir)
            .arg(lib_dir())
            .env("LIBTORCH", libtorch_root()));
        assert!(ok, "scripts/gen-pc.sh failed:\n{out}{err}");
        dir
    })
    .clone()
}

/// Whether `cmd` succeeded, and its stdout and stderr together.
fn output(cmd: &mut Command) -> (bool, String) {
    let (ok, out, err) = run(cmd);
    (ok, out + &err)
}

/// The TorchScript Fashion-MNIST classifier the Go tests harden, kept in
/// target/go_binding/ across runs.
fn fashion_model_path() -> PathBuf {
    static MODEL: OnceLock<PathBuf> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            tch::set_num_threads(1);
            let path = work_dir().join("fmnist_cnn.pt");
            fashion_model(&path);
            path
        })
        .clone()
}

/// A TorchScript classifier with module parameters (which moth's trainer
/// can train; a traced model's weights are constants), kept across runs.
fn trainable_model_path() -> PathBuf {
    static MODEL: OnceLock<PathBuf> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            tch::set_num_threads(1);
            let path = work_dir().join("fmnist_scripted.pt");
            trainable_fashion_model(&path);
            path
        })
        .clone()
}

/// The twin network's files (tests/native/twin.rs) for the Go model test.
fn twin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = work_dir().join("twin");
        std::fs::create_dir_all(&dir).unwrap();
        native::twin::twin_files(&dir);
        dir
    })
    .clone()
}

/// The tests of bindings/go/*_test.go. Every one must run and pass: a
/// skip (no model) or a test that disappeared fails this test.
const GO_TESTS: &[&str] = &[
    "TestVersionAndABI",
    "TestStatusNamesAndKinds",
    "TestConfig",
    "TestTensors",
    "TestLoadTorchScriptFailures",
    "TestClassifierForwardSaveAndReload",
    "TestHardenBatchAdvancesAndEndsAtTheStepBudget",
    "TestAccuracyProtocol",
    "TestFailedStepsCarryTheirStatusAndChangeNothing",
    "TestCheckpointResumeIsBitExact",
    "TestCorruptCheckpointsAreRefused",
    "TestWarmupFillsThePriorMatrix",
    "TestGoroutinesGetTheirOwnErrors",
    "TestClosedHandlesFailCleanly",
    "TestCUDAStream",
    "TestNULBytesAreRefused",
    "TestNilReceiversAreSafe",
    "TestDistancesOfAGoModelEqualItsTorchScriptTwin",
    "TestDistanceProtocolProgressPairsAndCancel",
    "TestTrainerCheckpointResumeIsBitExact",
];

/// Names of the tests `go test -v` reports with `--- <verdict>: Name (..)`.
fn reported(log: &str, verdict: &str) -> Vec<String> {
    let prefix = format!("--- {verdict}: ");
    log.lines()
        .filter_map(|l| l.trim_start().strip_prefix(&prefix))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(String::from)
        .collect()
}

#[test]
fn go_package_tests_pass_with_a_real_model() {
    let model = fashion_model_path();
    let dir = root().join("bindings").join("go");
    let t = Instant::now();
    let (ok, log) = output(
        go_command(
            &dir,
            &["test", "-v", "-count=1", "-timeout", "300s", "./..."],
        )
        .env("MOTH_TEST_MODEL", &model)
        .env("MOTH_TEST_TWIN", twin_dir())
        .env("MOTH_TEST_TRAINABLE", trainable_model_path())
        // Checks at run time that C keeps no Go pointer and gets none that
        // point to Go pointers (cgo's rules); cheap at this size.
        .env("GODEBUG", "cgocheck=2"),
    );
    let secs = t.elapsed().as_secs_f64();
    let passed = reported(&log, "PASS");
    let skipped = reported(&log, "SKIP");
    let failed = reported(&log, "FAIL");
    println!(
        "go test: {} passed, {} skipped, {} failed in {secs:.1} s (build included)",
        passed.len(),
        skipped.len(),
        failed.len()
    );
    assert!(ok, "go test failed:\n{log}");
    assert!(skipped.is_empty(), "Go tests skipped: {skipped:?}\n{log}");
    let missing: Vec<&&str> = GO_TESTS
        .iter()
        .filter(|name| !passed.iter().any(|p| p == *name))
        .collect();
    assert!(
        missing.is_empty(),
        "Go tests that did not run and pass: {missing:?}\n{log}"
    );
    assert!(log.contains("\nok  \tmoth\t"), "{log}");
}

#[test]
fn go_sources_are_vetted_and_formatted() {
    for dir in [root().join("bindings/go"), root().join("examples/go")] {
        let (ok, log) = output(&mut go_command(&dir, &["vet", "./..."]));
        assert!(ok, "go vet in {} failed:\n{log}", dir.display());
    }
    let (ok, goroot) = output(&mut go_command(&root(), &["env", "GOROOT"]));
    assert!(ok, "go env GOROOT: {goroot}");
    let gofmt = Path::new(goroot.trim()).join("bin").join("gofmt");
    let (ok, log) = output(
        Command::new(&gofmt)
            .arg("-l")
            .arg(root().join("bindings/go"))
            .arg(root().join("examples/go")),
    );
    assert!(ok, "{} failed: {log}", gofmt.display());
    assert!(log.trim().is_empty(), "files gofmt would change:\n{log}");
}

#[test]
fn go_example_hardens_fashion_mnist() {
    let model = trainable_model_path();
    let dir = root().join("examples").join("go");
    let bin = work_dir().join("harden-go");
    let (ok, log) = output(go_command(&dir, &["build", "-o"]).arg(&bin).arg("."));
    assert!(ok, "building examples/go failed:\n{log}");
    let t = Instant::now();
    let (ok, log) = output(
        Command::new(&bin)
            .arg("-model")
            .arg(&model)
            .args(["-images", "400", "-batch", "64", "-steps", "14"]),
    );
    println!("{log}\n({:.1} s)", t.elapsed().as_secs_f64());
    assert!(ok, "the Go example failed:\n{log}");
    for needle in [
        "moth 0.",
        "loaded 400 Fashion-MNIST images",
        "distances before: mean ",
        "accuracy ",
        ": baseline (drop 0.0000)",
        "step 0 warmup target 0 | -1->0 size",
        "step 9 warmup target 9",
        "step 10 orthogonalize pair ",
        "| loss ",
        "checkpoint at step 7: session ",
        "step 13 orthogonalize",
        "session done after 14 steps (step budget), 14 training steps",
        "distances after: mean ",
        "resumed at step 7",
        "resumed run equals the uninterrupted run",
        "pairs chosen",
        "\nok\n",
    ] {
        assert!(log.contains(needle), "output lacks '{needle}':\n{log}");
    }
}

/// The package copied out of the repository (as `go mod vendor` or a copy
/// by hand would) still builds: it reaches moth.h and libmoth.so through
/// pkg-config, not through a path relative to this repository.
#[test]
fn a_copy_of_the_go_package_builds_elsewhere() {
    let copy = work_dir().join("copied").join("moth");
    let _ = std::fs::remove_dir_all(&copy);
    std::fs::create_dir_all(&copy).unwrap();
    for entry in std::fs::read_dir(root().join("bindings/go")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if name.ends_with(".go") || name == "go.mod" {
            std::fs::copy(&path, copy.join(&name)).unwrap();
        }
    }
    let (ok, log) = output(&mut go_command(&copy, &["vet", "./..."]));
    assert!(ok, "the copied package does not build:\n{log}");
}
