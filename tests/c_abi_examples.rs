//! The C and C++ examples build against `libmoth.so` and run: the C one
//! directly, through pkg-config and CMake, and under valgrind; the C++
//! trainer, and its CUDA path compiles. Run `cargo build --release` first:
//! the programs link the library cargo built last.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

mod common;
mod native;
use common::ffi::*;
use native::ranks::*;
use native::*;

/// Compiles the C example (cached on source mtimes).
fn c_example() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = work_dir().join("harden");
        compile_c(&root().join("examples/c/harden.c"), &bin, &[], &["-lz"]);
        bin
    })
    .clone()
}

#[test]
fn c_example_runs() {
    let bin = c_example();
    let model = example_model();
    let ckpt = work_dir().join("harden-c.ckpt");
    let t = Instant::now();
    let (ok, out, err) = run(Command::new(&bin)
        .arg(&model)
        .args([
            "--images",
            "400",
            "--batch",
            "64",
            "--steps",
            "14",
            "--checkpoint",
        ])
        .arg(&ckpt));
    println!("{out}\n{err}\n({:.1} s)", t.elapsed().as_secs_f64());
    assert!(ok, "harden failed:\n{out}\n{err}");
    for needle in [
        "moth 0.",
        "loaded 400 Fashion-MNIST images",
        "accuracy ",
        "step 0 warmup target 0 | -1->0 size",
        "step 9 warmup target 9",
        "step 10 orthogonalize pair ",
        "checkpoint: saved at step 7, resumed at step 7",
        "session done after 14 steps",
        "pairs chosen",
        "ok",
    ] {
        assert!(out.contains(needle), "output lacks '{needle}':\n{out}");
    }
    assert!(
        err.contains("[moth info] step 13 ("),
        "log callback output:\n{err}"
    );
}

fn tool_available(name: &str) -> bool {
    Command::new(name)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The one-line builds documented in examples/README.md: the pkg-config
/// file made from cmake/moth.pc.in, and the CMake package in cmake/.
#[test]
fn c_example_builds_with_pkg_config_and_cmake() {
    let lib = libmoth();
    let model = example_model();
    let dir = work_dir().join("pkgconfig");
    std::fs::create_dir_all(&dir).unwrap();
    let template = std::fs::read_to_string(root().join("cmake/moth.pc.in")).unwrap();
    let pc = template
        .replace("@MOTH_ROOT@", root().to_str().unwrap())
        .replace("@TORCH_ROOT@", libtorch_root().to_str().unwrap())
        .replace("@MOTH_VERSION@", env!("CARGO_PKG_VERSION"));
    std::fs::write(dir.join("moth.pc"), pc).unwrap();
    if tool_available("pkg-config") {
        let flags = |args: &[&str]| -> Vec<String> {
            let (ok, out, err) = run(Command::new("pkg-config")
                .env("PKG_CONFIG_PATH", &dir)
                // the library cargo test just linked (see lib_dir)
                .arg(format!(
                    "--define-variable=libdir={}",
                    lib.parent().unwrap().display()
                ))
                .args(args)
                .arg("moth"));
            assert!(ok, "pkg-config failed: {err}");
            out.split_whitespace().map(String::from).collect()
        };
        let (ok, out, _) = run(Command::new("pkg-config")
            .env("PKG_CONFIG_PATH", &dir)
            .args(["--modversion", "moth"]));
        assert!(ok && out.trim() == env!("CARGO_PKG_VERSION"), "{out}");
        let bin = work_dir().join("harden-pkgconfig");
        let (ok, out, err) = run(Command::new("gcc")
            .args(["-std=c99", "-O1"])
            .arg(root().join("examples/c/harden.c"))
            .args(flags(&["--cflags", "--libs"]))
            .args(["-lz", "-o"])
            .arg(&bin));
        assert!(ok, "build with pkg-config failed:\n{out}{err}");
        let (ok, out, err) = run(Command::new(&bin)
            .arg(&model)
            .args([
                "--images",
                "40",
                "--batch",
                "20",
                "--steps",
                "1",
                "--checkpoint",
            ])
            .arg(work_dir().join("harden-pc.ckpt")));
        assert!(ok && out.contains("ok"), "{out}\n{err}");
        assert!(
            !flags(&["--variable=torch_libs"]).is_empty(),
            "torch_libs variable"
        );
    } else {
        eprintln!("pkg-config not installed: pkg-config build skipped");
    }
    if tool_available("cmake") && release_dir().join("libmoth.so").exists() {
        let build = work_dir().join("cmake-c");
        let _ = std::fs::remove_dir_all(&build);
        let (ok, out, err) = run(Command::new("cmake")
            .arg("-S")
            .arg(root().join("examples/c"))
            .arg("-B")
            .arg(&build)
            .arg(format!("-Dmoth_DIR={}", root().join("cmake").display())));
        assert!(ok, "cmake configure failed:\n{out}{err}");
        let (ok, out, err) = run(Command::new("cmake").arg("--build").arg(&build));
        assert!(ok, "cmake build failed:\n{out}{err}");
        assert!(build.join("harden").exists());
    } else {
        eprintln!("cmake or target/release/libmoth.so missing: CMake build skipped");
    }
}

fn valgrind_available() -> bool {
    tool_available("valgrind")
}

/// The C example under valgrind (memcheck): no invalid reads or writes and
/// no definitely-lost blocks, with a short run (valgrind makes libtorch ~50x
/// slower). libtorch's and glibc's own one-time allocations are suppressed
/// by tests/c/valgrind.supp.
#[test]
fn c_example_under_valgrind() {
    if !valgrind_available() {
        eprintln!("valgrind not installed: skipped");
        return;
    }
    let bin = c_example();
    let model = example_model();
    let log = work_dir().join("valgrind.log");
    let t = Instant::now();
    let (ok, out, err) = run(Command::new("valgrind")
        .args([
            "--error-exitcode=99",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite,indirect",
            "--show-leak-kinds=definite,indirect",
        ])
        .arg(format!(
            "--suppressions={}",
            root().join("tests/c/valgrind.supp").display()
        ))
        .arg(format!("--log-file={}", log.display()))
        .arg(&bin)
        .arg(&model)
        .args([
            "--images",
            "40",
            "--batch",
            "20",
            "--steps",
            "2",
            "--config",
            r#"{"warmup": {"budget": {"steps": 1}, "pool_per_class": 1}, "accuracy_every": 2}"#,
            "--checkpoint",
        ])
        .arg(work_dir().join("valgrind.ckpt")));
    let report = std::fs::read_to_string(&log).unwrap_or_default();
    let summary: Vec<&str> = report
        .lines()
        .filter(|l| l.contains("ERROR SUMMARY") || l.contains("definitely lost"))
        .collect();
    println!("{summary:?} ({:.1} s)", t.elapsed().as_secs_f64());
    assert!(
        ok,
        "valgrind found errors (see {}):\n{out}\n{err}\n{}",
        log.display(),
        report
            .lines()
            .rev()
            .take(80)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(out.contains("ok"), "{out}\n{err}");
    assert!(report.contains("ERROR SUMMARY: 0 errors"), "{report}");
}

/// Compiles the C++ trainer, with its Gloo data-parallel path: the object
/// file is cached on the sources' mtimes (a libtorch C++ compile takes
/// 20-60 s here), the link redone when the library changed. Once per test
/// binary: the tests that run it share the build.
fn cpp_example() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(build_cpp_example).clone()
}

fn build_cpp_example() -> PathBuf {
    let lib = libmoth();
    let obj = work_dir().join("trainer.o");
    let bin = work_dir().join("trainer");
    let sources = [
        root().join("examples/cpp/trainer.cpp"),
        root().join("bindings/cpp/moth.hpp"),
        root().join("include/moth.h"),
    ];
    let torch = libtorch_root().join("lib");
    let inc = libtorch_root().join("include");
    if mtime(&obj) <= newest(&sources) {
        let (ok, out, err) = run(Command::new("g++")
            .args([
                "-std=c++17",
                "-O1",
                "-D_GLIBCXX_USE_CXX11_ABI=1",
                // Gloo: c10d's headers with Debian's libgloo-dev headers;
                // the process group's code is libtorch's own.
                "-DMOTH_EXAMPLE_GLOO",
                "-DUSE_C10D_GLOO",
                "-w",
                "-c",
            ])
            .arg(root().join("examples/cpp/trainer.cpp"))
            .arg("-I")
            .arg(&inc)
            .arg("-I")
            .arg(inc.join("torch/csrc/api/include"))
            .arg("-I")
            .arg(root().join("include"))
            .arg("-I")
            .arg(root().join("bindings/cpp"))
            .arg("-o")
            .arg(&obj));
        assert!(ok, "compiling examples/cpp/trainer.cpp failed:\n{out}{err}");
    }
    if mtime(&bin) <= mtime(&obj).max(mtime(&lib)) {
        let (ok, out, err) = run(Command::new("g++")
            .arg(&obj)
            .arg("-L")
            .arg(lib.parent().unwrap())
            .arg("-L")
            .arg(&torch)
            .arg(format!(
                "-Wl,-rpath,{}:{}",
                lib.parent().unwrap().display(),
                torch.display()
            ))
            .args(["-lmoth", "-ltorch_cpu", "-lc10", "-lz", "-o"])
            .arg(&bin));
        assert!(ok, "linking the C++ trainer failed:\n{out}{err}");
    }
    bin
}

/// The trainer's CUDA path (`-DMOTH_EXAMPLE_CUDA`: its own stream, handed
/// to moth or made current, and the per-forward stream check) cannot run
/// without a GPU, but it must keep compiling, warning-free, against the
/// libtorch and CUDA runtime headers that `scripts/setup.sh` installs.
#[test]
fn cpp_example_cuda_path_compiles() {
    let cuda = root().join(".cuda-include");
    assert!(
        cuda.join("crt/host_config.h").exists(),
        "{} lacks the CUDA runtime headers: run ./scripts/setup.sh",
        cuda.display()
    );
    let inc = libtorch_root().join("include");
    let (ok, out, err) = run(Command::new("g++")
        .args(["-std=c++17", "-fsyntax-only", "-D_GLIBCXX_USE_CXX11_ABI=1"])
        .args(["-DMOTH_EXAMPLE_CUDA", "-Wall", "-Wextra", "-Werror"])
        .arg("-isystem")
        .arg(&inc)
        .arg("-isystem")
        .arg(inc.join("torch/csrc/api/include"))
        .arg("-isystem")
        .arg(&cuda)
        .arg("-I")
        .arg(root().join("include"))
        .arg("-I")
        .arg(root().join("bindings/cpp"))
        .arg(root().join("examples/cpp/trainer.cpp")));
    assert!(
        ok,
        "the CUDA path of trainer.cpp does not compile:\n{out}{err}"
    );
}

#[test]
fn cpp_example_runs() {
    let t = Instant::now();
    let bin = cpp_example();
    let compiled = t.elapsed().as_secs_f64();
    let prefix = work_dir().join("trainer-ckpt");
    let (ok, out, err) = run(Command::new(&bin)
        .args([
            "--train",
            "640",
            "--test",
            "200",
            "--pretrain-epochs",
            "1",
            "--steps",
            "14",
            "--checkpoint",
        ])
        .arg(&prefix));
    println!(
        "{out}\n{err}\n(compile {compiled:.1} s, run {:.1} s)",
        t.elapsed().as_secs_f64() - compiled
    );
    assert!(ok, "trainer failed:\n{out}\n{err}");
    for needle in [
        "pretrain epoch 0: test accuracy",
        "accuracy ",
        "step 0 warmup target 0",
        "step 10 orthogonalize pair ",
        "checkpoint: saved at step 7, resumed at step 7",
        "session done at step 14",
        "ok",
    ] {
        assert!(out.contains(needle), "output lacks '{needle}':\n{out}");
    }
}

/// Two trainer processes harden one model data-parallel, through a Gloo
/// process group (libtorch's c10d over a FileStore): both sessions choose
/// the same pairs and find the same trigger sizes at every step, end with
/// byte-identical checkpoints, and the ranks' models are identical; the
/// enlargement is close to one process's on the full batches.
#[test]
fn cpp_trainer_two_ranks_agree_through_gloo() {
    let bin = cpp_example();
    let dir = work_dir().join("gloo2");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let t = Instant::now();
    let ranks = (0..2).map(|r| start_rank(&bin, &dir, r, 2, &[])).collect();
    let out = wait_ranks(ranks, std::time::Duration::from_secs(300));
    let two_ranks = t.elapsed().as_secs_f64();
    for (r, (ok, o, e)) in out.iter().enumerate() {
        assert!(ok, "rank {r} failed:\n{o}\n{e}");
    }
    let one_dir = work_dir().join("gloo1");
    let _ = std::fs::remove_dir_all(&one_dir);
    std::fs::create_dir_all(&one_dir).unwrap();
    let t = Instant::now();
    let one = wait_ranks(
        vec![start_rank(&bin, &one_dir, 0, 1, &[])],
        std::time::Duration::from_secs(300),
    );
    let one_rank = t.elapsed().as_secs_f64();
    assert!(
        one[0].0,
        "the one-rank run failed:\n{}\n{}",
        one[0].1, one[0].2
    );

    let (a, b) = (agreed_lines(&out[0].1), agreed_lines(&out[1].1));
    assert_eq!(a.len(), 14, "{}", out[0].1);
    assert_eq!(a, b, "the ranks' step reports differ");
    let read = |d: &std::path::Path, f: &str| std::fs::read(d.join(f)).unwrap();
    assert!(
        read(&dir, "rank0.session") == read(&dir, "rank1.session"),
        "the ranks' session checkpoints differ"
    );
    assert!(
        read(&dir, "rank0.after") == read(&dir, "rank1.after"),
        "the ranks' hardened weights differ"
    );
    // Both runs start from the same pretrained model.
    assert!(read(&dir, "rank0.before") == read(&one_dir, "rank0.before"));
    let cost = out[0]
        .1
        .lines()
        .rfind(|l| l.starts_with("collectives after step"))
        .unwrap_or("")
        .to_string();

    let t = Instant::now();
    let before = trainer_distances(&dir.join("rank0.before"));
    let after_two = trainer_distances(&dir.join("rank0.after"));
    let after_one = trainer_distances(&one_dir.join("rank0.after"));
    let (e2, e1) = (
        before.enlargement(&after_two),
        before.enlargement(&after_one),
    );
    println!(
        "{}\n2 ranks: {cost}\nmean distance {:.2} before; after 2 ranks {:.2} ({:+.1}%), \
         after 1 rank {:+.2} ({:+.1}%)\n(2 ranks {two_ranks:.1} s, 1 rank {one_rank:.1} s, \
         distances {:.1} s)",
        a.join("\n"),
        before.mean(),
        after_two.mean(),
        100.0 * e2,
        after_one.mean(),
        100.0 * e1,
        t.elapsed().as_secs_f64()
    );
    // 14 short steps: hardening moves distances by a few percent, and the
    // two runs stamp different samples (each rank picks among its own), so
    // they agree to the noise of such runs, not to the bit.
    assert!(
        (e2 - e1).abs() <= 0.10,
        "2 ranks {:+.1}% vs 1 rank {:+.1}%",
        100.0 * e2,
        100.0 * e1
    );
}

/// Rank 1's hook skips its 5th all-reduce (returns 0 without calling
/// Gloo): rank 1's moth finds the ranks out of step, rank 0's all-reduce
/// fails when rank 1 leaves (or at the group's timeout); both processes
/// exit with a clear error instead of hanging.
#[test]
fn cpp_trainer_with_a_broken_hook_fails_on_both_ranks() {
    let bin = cpp_example();
    let dir = work_dir().join("gloo-broken");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let t = Instant::now();
    let ranks = (0..2)
        .map(|r| {
            let extra: &[&str] = if r == 1 {
                &["--timeout-ms", "5000", "--break-collective", "5"]
            } else {
                &["--timeout-ms", "5000"]
            };
            start_rank(&bin, &dir, r, 2, extra)
        })
        .collect();
    let out = wait_ranks(ranks, std::time::Duration::from_secs(180));
    println!(
        "rank 0:\n{}\nrank 1:\n{}\n({:.1} s)",
        out[0].2,
        out[1].2,
        t.elapsed().as_secs_f64()
    );
    assert!(!out[0].0 && !out[1].0, "both ranks must fail");
    assert!(
        out[1].2.contains("moth error: MOTH_STATUS_COLLECTIVE") && out[1].2.contains("out of step"),
        "{}",
        out[1].2
    );
    assert!(
        out[0].2.contains("moth error: MOTH_STATUS_COLLECTIVE")
            && out[0].2.contains("all-reduce callback returned 1"),
        "{}",
        out[0].2
    );
}
