//! Prints the size and the save/load time of a hardening run's checkpoints.
//!
//! Usage: `cargo run --release --example checkpoint_cost -- runs/harden/run.ckpt`

use std::time::Instant;

use moth::io::container::{self, PayloadKind};
use moth::runner::RunCheckpoint;
use moth::session::Session;

fn main() -> moth::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "runs/harden/run.ckpt".into());
    let bytes = container::read_checkpoint(std::path::Path::new(&path))?;
    let t = Instant::now();
    let run: RunCheckpoint = container::decode(PayloadKind::Trainer, &bytes)?;
    let decode_run = t.elapsed();
    let session = Session::from_bytes(&run.session, None)?;
    let rounds = 20;
    let t = Instant::now();
    let mut encoded = Vec::new();
    for _ in 0..rounds {
        encoded = session.to_bytes()?;
    }
    let save = t.elapsed() / rounds;
    let t = Instant::now();
    for _ in 0..rounds {
        Session::from_bytes(&encoded, None)?;
    }
    let load = t.elapsed() / rounds;
    let dir = tempfile::tempdir().map_err(|e| moth::Error::io("temp dir", e))?;
    let file = dir.path().join("session.ckpt");
    let t = Instant::now();
    for _ in 0..rounds {
        session.save(&file)?;
    }
    let save_file = t.elapsed() / rounds;
    println!(
        "run checkpoint {path}: {} bytes (decoded in {:.1} ms); step {}, {} cached triggers",
        bytes.len(),
        decode_run.as_secs_f64() * 1e3,
        session.step(),
        session.cache().len()
    );
    println!(
        "session checkpoint: {} bytes; to_bytes {:.2} ms, from_bytes (with validation) {:.2} ms, atomic save to a file with fsync {:.2} ms",
        encoded.len(),
        save.as_secs_f64() * 1e3,
        load.as_secs_f64() * 1e3,
        save_file.as_secs_f64() * 1e3
    );
    Ok(())
}
