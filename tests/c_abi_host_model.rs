//! Models from any framework: one small tanh network, traced to TorchScript
//! and written in C with hand-written input gradients (tests/c/twin.c, as
//! `moth_classifier_from_host` callbacks), gives the same distances,
//! triggers and hardening steps through the C ABI. The C program also
//! prints the cost of one inversion step on either path. Run `cargo build
//! --release` first: the program links the library cargo built last.

use std::process::Command;

mod native;
use native::twin::*;
use native::*;

#[test]
fn a_c_model_with_hand_written_gradients_equals_its_torchscript_twin() {
    tch::set_num_threads(1);
    let work = scratch_dir("c_abi_host_model");
    let bin = work.join("twin");
    compile_c(&root().join("tests/c/twin.c"), &bin, &[], &["-lm"]);
    let dir = tempfile::tempdir().unwrap();
    let files = twin_files(dir.path());
    let (ok, out, err) = run(Command::new(&bin).args(&files).args([
        (CLASSES * PER_CLASS).to_string(),
        SIDE.to_string(),
        HIDDEN.to_string(),
        CLASSES.to_string(),
    ]));
    println!("{out}");
    assert!(ok, "the twin program failed:\n{out}\n{err}");
    for needle in [
        "logits max difference",
        "ratio",
        "hardening: max relative",
        "\nok",
    ] {
        assert!(out.contains(needle), "output lacks '{needle}':\n{out}");
    }
}
