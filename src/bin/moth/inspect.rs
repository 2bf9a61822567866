//! `moth inspect`: what a checkpoint file (run.ckpt, a session checkpoint,
//! a model file) holds.

use std::path::Path;

use moth::io::container::{self, parse_header, PayloadKind};
use moth::runner::RunCheckpoint;
use moth::session::Session;
use moth::torch::model::ModelState;
use moth::torch::train::OptimizerKind;

pub fn run(path: &Path) -> moth::Result<()> {
    let bytes = container::read_checkpoint(path)?;
    let header = parse_header(&bytes)?;
    println!(
        "{}: moth checkpoint format {}, written by moth {}, kind {}, payload {} bytes",
        path.display(),
        header.format_version,
        header.moth_version,
        header.kind,
        header.payload_len
    );
    let session_bytes = match header.kind {
        PayloadKind::Session => bytes,
        PayloadKind::Trainer => {
            let ck = RunCheckpoint::decode(&bytes)?;
            print_run(&ck);
            ck.session
        }
        PayloadKind::Model => {
            println!("a moth model file (no session state)");
            return Ok(());
        }
        PayloadKind::Training => {
            println!("a C trainer's model and optimiser state (no session state)");
            return Ok(());
        }
    };
    let s = Session::from_bytes(&session_bytes, None)?;
    print_session(&s);
    print_scheduler(&s);
    Ok(())
}

/// The runner's part of a run checkpoint.
fn print_run(ck: &RunCheckpoint) {
    let model = match &ck.model {
        ModelState::Builtin {
            arch, variables, ..
        } => format!("built-in {}, {} variables", arch.name(), variables.len()),
        ModelState::TorchScript { module, .. } => {
            format!("TorchScript module, {} bytes", module.len())
        }
    };
    println!(
        "run: {} steps recorded, model {model}, optimizer {} at step {}, {} epochs x batch {}, last good model kept: {}",
        ck.history.len(),
        optimizer_name(ck.optimizer.cfg.kind),
        ck.optimizer.steps,
        ck.run.epochs,
        ck.run.batch,
        ck.last_good.is_some()
    );
}

/// The architecture's name, as `Model::describe` spells it.
fn optimizer_name(kind: OptimizerKind) -> String {
    match kind {
        OptimizerKind::Sgd { momentum, nesterov } => format!(
            "SGD (momentum {momentum}{})",
            if nesterov { ", Nesterov" } else { "" }
        ),
        OptimizerKind::Adam { beta1, beta2 } => format!("Adam (betas {beta1}, {beta2})"),
    }
}

fn percent(v: Option<f64>) -> String {
    v.map_or("none".into(), |a| format!("{:.2}%", 100.0 * a))
}

fn print_session(s: &Session) {
    let (spec, config) = (s.spec(), s.config());
    let [c, h, w] = spec.input_shape;
    println!(
        "session: {} classes, inputs {c}x{h}x{w}, method {}, seed {}",
        spec.num_classes,
        config.method.name(),
        config.seed
    );
    if let Some(env) = s.resumed_from() {
        println!(
            "written on: moth {}, libtorch {}, {} threads, CPU {}",
            env.moth_version, env.libtorch, env.threads, env.cpu_capability
        );
    }
    println!(
        "phase: {}, step {} of {}",
        s.phase(),
        s.step(),
        config.max_steps
    );
    println!(
        "accuracy: baseline {}, last {}, report pending: {}",
        percent(s.accuracy().baseline),
        percent(s.accuracy().last),
        s.accuracy().pending
    );
    println!(
        "trigger cache: {} directions; stamping cap {:.1}",
        s.cache().len(),
        s.bounds().cap
    );
}

fn print_scheduler(s: &Session) {
    let sch = s.scheduler();
    let n = sch.classes();
    let chosen: f64 = sch.count.iter().flatten().sum::<f64>() / 2.0;
    println!("pair choices so far: {chosen}");
    println!("pair counts (symmetric):");
    for row in &sch.count {
        let cells: Vec<String> = row.iter().map(|v| format!("{v:>4}")).collect();
        println!("  {}", cells.join(""));
    }
    let sizes: Vec<f64> = (0..n)
        .flat_map(|a| (0..n).map(move |b| (a, b)))
        .filter(|(a, b)| a != b)
        .map(|(a, b)| sch.size[a][b])
        .filter(|v| *v > 0.0)
        .collect();
    if sizes.is_empty() {
        return;
    }
    let mean = sizes.iter().sum::<f64>() / sizes.len() as f64;
    let max = sizes.iter().copied().fold(0.0, f64::max);
    let min = sizes.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "scheduler sizes: {} directions, mean {mean:.2}, min {min:.2}, max {max:.2}",
        sizes.len()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_words_not_debug_text() {
        let sgd = optimizer_name(OptimizerKind::Sgd {
            momentum: 0.9,
            nesterov: true,
        });
        assert_eq!(sgd, "SGD (momentum 0.9, Nesterov)");
        assert!(!optimizer_name(OptimizerKind::Adam {
            beta1: 0.9,
            beta2: 0.999
        })
        .contains('{'));
        assert_eq!(percent(None), "none");
        assert_eq!(percent(Some(0.8125)), "81.25%");
    }
}
