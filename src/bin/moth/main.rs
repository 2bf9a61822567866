//! The `moth` command-line program: train a base model, measure class
//! distances, harden a model, inspect checkpoints, compare methods.
//!
//! A thin shell over the library: this file dispatches, sets up logging and
//! Ctrl-C handling, and maps outcomes to exit codes; each command has its
//! own file.

mod args;
mod bench;
mod check;
mod data;
mod distance;
mod figures;
mod harden;
mod inspect;
mod pair_curves;
mod plot;
mod progress;
mod report;
mod train;
mod variant;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};

use clap::Parser;

use args::{Cli, Command};

/// Exit status of a command that failed.
const EXIT_ERROR: i32 = 1;
/// Exit status of a run stopped by Ctrl-C / SIGTERM (or `--stop-after-step`).
pub const EXIT_INTERRUPTED: i32 = 130;

/// Why a command did not finish.
pub enum Failure {
    /// An error, printed as `moth: error: ...` (exit status 1).
    Error(moth::Error),
    /// Stopped on request; the message says what was kept (exit status 130).
    Stopped(String),
}

impl From<moth::Error> for Failure {
    fn from(e: moth::Error) -> Self {
        Failure::Error(e)
    }
}

impl Failure {
    /// Adds a line to a stop message (errors are left as they are).
    pub fn with_note(self, note: &str) -> Failure {
        match self {
            Failure::Stopped(msg) => Failure::Stopped(format!("{msg}\n{note}")),
            e => e,
        }
    }
}

/// What a command returns.
pub type Outcome<T = ()> = Result<T, Failure>;

/// Set by the first Ctrl-C / SIGTERM; the long loops look at it.
static INTERRUPTED: LazyLock<Arc<AtomicBool>> = LazyLock::new(|| Arc::new(AtomicBool::new(false)));

/// Whether Ctrl-C / SIGTERM has been received.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// The first SIGINT / SIGTERM sets [`interrupted`]; a second one exits at
/// once with status 130. (The shutdown hook is registered first, so on the
/// first signal it still sees the flag unset.)
fn install_signal_handlers() -> moth::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    use signal_hook::flag;
    for sig in [SIGINT, SIGTERM] {
        flag::register_conditional_shutdown(sig, EXIT_INTERRUPTED, Arc::clone(&INTERRUPTED))
            .and_then(|_| flag::register(sig, Arc::clone(&INTERRUPTED)))
            .map_err(|e| moth::Error::io("installing the Ctrl-C handler", e))?;
    }
    Ok(())
}

/// Prints a stop message and exits with status 130 (for the places that
/// cannot return, such as a library progress callback).
pub fn exit_stopped(message: &str) -> ! {
    println!("{message}");
    std::process::exit(EXIT_INTERRUPTED)
}

fn run(command: Command) -> Outcome {
    if !matches!(command, Command::Inspect(_)) {
        install_signal_handlers()?;
    }
    match command {
        Command::Train(a) => train::run(&a).map_err(Failure::from),
        Command::Distance(a) => distance::run(&a),
        Command::Harden(a) => harden::run(&a),
        Command::Inspect(a) => inspect::run(&a.path).map_err(Failure::from),
        Command::Bench(a) => bench::run(&a),
    }
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        tch::set_num_threads(n);
    }
    match run(cli.command) {
        Ok(()) => {}
        Err(Failure::Stopped(message)) => exit_stopped(&message),
        Err(Failure::Error(e)) => {
            eprintln!("moth: error: {e}");
            std::process::exit(EXIT_ERROR);
        }
    }
}
