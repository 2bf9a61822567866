//! The C++ wrapper (bindings/cpp/moth.hpp) compiles with strict warnings and
//! behaves as documented: tests/cpp/wrapper.cpp, built against libtorch and
//! `libmoth.so`, checks integer settings of every type, moved-from objects,
//! an undefined forward result, why `harden` gave no batch, and the
//! wrappers of set_train, save, accuracy, config_json, dtype and device.
//! Run `cargo build --release` first: the program links the library cargo
//! built last.

use std::path::PathBuf;
use std::process::Command;

mod native;
use native::*;

const STRICT: [&str; 5] = ["-std=c++17", "-Wall", "-Wextra", "-Wpedantic", "-Werror"];

fn work() -> PathBuf {
    scratch_dir("cpp_wrapper")
}

/// Compiles `source` (C++17, strict warnings, no libtorch) to an object
/// file: whether it compiled, and the compiler's messages.
fn compiles(name: &str, source: &str) -> (bool, String) {
    let file = work().join(format!("{name}.cpp"));
    std::fs::write(&file, source).unwrap();
    let (ok, _, err) = run(Command::new("g++")
        .args(STRICT)
        .args(["-DMOTH_HPP_NO_TORCH", "-I"])
        .arg(root().join("include"))
        .arg("-I")
        .arg(root().join("bindings/cpp"))
        .args(["-c", "-o", "/dev/null"])
        .arg(&file));
    (ok, err)
}

#[test]
fn config_set_takes_unsigned_integers_and_refuses_bools() {
    let (ok, err) = compiles(
        "set_unsigned",
        "#include \"moth.hpp\"\n#include <cstddef>\n#include <cstdint>\n\
         void f(moth::Config &c, std::size_t n) {\n\
           c.set(\"max_steps\", uint64_t{30});\n  c.set(\"accuracy_every\", 10u);\n\
           c.set(\"pairs_per_step\", n);\n  c.set(\"period\", 3);\n\
           c.set(\"seed\", int64_t{-1});\n  c.set(\"portion\", 0.5f);\n\
           c.set(\"method\", \"moth\");\n  c.set(\"method\", std::string(\"moth\"));\n}\n",
    );
    assert!(ok, "Config::set overloads:\n{err}");
    let (ok, err) = compiles(
        "set_bool",
        "#include \"moth.hpp\"\nvoid f(moth::Config &c) { c.set(\"portion\", true); }\n",
    );
    assert!(
        !ok && err.contains("deleted"),
        "a bool must not compile:\n{err}"
    );
}

/// Compiles and links tests/cpp/wrapper.cpp; the object file is cached on
/// the sources' mtimes (a libtorch C++ compile takes 20-60 s here).
fn wrapper_program() -> PathBuf {
    let lib = libmoth();
    let obj = work().join("wrapper.o");
    let bin = work().join("wrapper");
    let sources = [
        root().join("tests/cpp/wrapper.cpp"),
        root().join("bindings/cpp/moth.hpp"),
        root().join("include/moth.h"),
    ];
    let inc = libtorch_root().join("include");
    if mtime(&obj) <= newest(&sources) {
        let (ok, out, err) = run(Command::new("g++")
            .args(STRICT)
            .args(["-O1", "-D_GLIBCXX_USE_CXX11_ABI=1", "-c", "-isystem"])
            .arg(&inc)
            .arg("-isystem")
            .arg(inc.join("torch/csrc/api/include"))
            .arg("-I")
            .arg(root().join("include"))
            .arg("-I")
            .arg(root().join("bindings/cpp"))
            .arg(root().join("tests/cpp/wrapper.cpp"))
            .arg("-o")
            .arg(&obj));
        assert!(ok, "compiling tests/cpp/wrapper.cpp failed:\n{out}{err}");
    }
    let torch = libtorch_root().join("lib");
    let dir = lib.parent().unwrap();
    let (ok, out, err) = run(Command::new("g++")
        .arg(&obj)
        .arg("-L")
        .arg(dir)
        .arg("-L")
        .arg(&torch)
        .arg(format!("-Wl,-rpath,{}:{}", dir.display(), torch.display()))
        .args(["-lmoth", "-ltorch_cpu", "-lc10", "-lz", "-o"])
        .arg(&bin));
    assert!(ok, "linking the wrapper checks failed:\n{out}{err}");
    bin
}

#[test]
fn wrapper_behaves_as_documented() {
    let bin = wrapper_program();
    let (ok, out, err) = run(Command::new(&bin).arg(work()));
    println!("{out}");
    assert!(ok, "tests/cpp/wrapper.cpp failed:\n{out}\n{err}");
    for check in [
        "config_set_takes_every_integer_type",
        "moved_from_objects_say_so",
        "an_undefined_forward_result_is_named",
        "harden_says_why_there_is_no_batch",
        "new_wrappers_reach_the_c_api",
    ] {
        assert!(
            out.contains(&format!("ok {check}\n")),
            "{check} did not run:\n{out}\n{err}"
        );
    }
}

/// Distances, host-buffer classifiers and the trainer through the wrapper
/// (tests/cpp/product.cpp, compiled without libtorch's headers).
#[test]
fn wrapper_measures_distances_hosts_models_and_trains() {
    let bin = work().join("product");
    let src = root().join("tests/cpp/product.cpp");
    let sources = [
        src.clone(),
        root().join("bindings/cpp/moth.hpp"),
        root().join("bindings/cpp/moth_distance.hpp"),
        root().join("bindings/cpp/moth_trainer.hpp"),
        root().join("include/moth.h"),
        libmoth(),
    ];
    if mtime(&bin) <= newest(&sources) {
        let dir = lib_dir();
        let (ok, out, err) = run(Command::new("g++")
            .args(STRICT)
            .args(["-O1", "-DMOTH_HPP_NO_TORCH", "-I"])
            .arg(root().join("include"))
            .arg("-I")
            .arg(root().join("bindings/cpp"))
            .arg(&src)
            .arg("-L")
            .arg(&dir)
            .arg(format!("-Wl,-rpath,{}", dir.display()))
            .args(["-lmoth", "-o"])
            .arg(&bin));
        assert!(ok, "compiling tests/cpp/product.cpp failed:\n{out}{err}");
    }
    let twin = work().join("twin");
    std::fs::create_dir_all(&twin).unwrap();
    twin::twin_files(&twin);
    let trainable = work().join("fmnist_scripted.pt");
    tch::set_num_threads(1);
    trainable_fashion_model(&trainable);
    let (ok, out, err) = run(Command::new(&bin).arg(&twin).arg(&trainable));
    println!("{out}");
    assert!(ok, "tests/cpp/product.cpp failed:\n{out}\n{err}");
    assert!(
        out.contains("C++ host twin: ") && out.ends_with("ok\n"),
        "{out}"
    );
}
