//! A session as one rank of a data-parallel run (docs/algorithm.md section
//! 10): what a step shares with the other ranks besides the inversions'
//! gradients. The warm-up pool is rank 0's, the class counts that decide
//! which pairs are inverted are the whole batch's, and after each step the
//! ranks compare a digest of the state that must agree.

use serde::Serialize;
use tch::{Kind, Tensor};

use super::{DirectionReport, Phase, Pool, SessionConfig, SessionSpec, State};
use crate::algo::bounds::Bounds;
use crate::algo::collective::Agreement;
use crate::algo::scheduler::Scheduler;
use crate::{Error, Result};

impl State {
    /// While the warm-up pool is not full, rank 0 fills it from its batch
    /// and sends it to the other ranks, which take it in place of theirs.
    /// Whether it is full is known alike on every rank (the pools agree).
    pub(super) fn add_to_pool_shared(
        &mut self,
        cfg: &SessionConfig,
        spec: &SessionSpec,
        x: &Tensor,
        labels: &[i64],
        shared: &mut Agreement,
    ) -> Result<()> {
        let want = cfg.warmup.pool_per_class as i64;
        if self.pool.0.iter().all(|p| p.size()[0] >= want) {
            return Ok(());
        }
        let root = shared.rank() == 0;
        if root {
            self.add_to_pool(cfg, x, labels)?;
        }
        let bytes = if root {
            encode_pool(&self.pool)?
        } else {
            Vec::new()
        };
        let bytes = shared.broadcast_bytes(bytes)?;
        if !root {
            self.pool = decode_pool(&bytes, spec, want)?;
        }
        Ok(())
    }

    /// Compares a digest of what every rank must hold alike after a step
    /// (phase, counters, scheduler, bounds, generator state, the step's
    /// trigger sizes) with rank 0's, so that ranks that drifted apart stop
    /// with an error instead of stamping different pairs.
    pub(super) fn check_agreement(
        &self,
        shared: &mut Agreement,
        reports: &[DirectionReport],
    ) -> Result<()> {
        let mine = self.digest(reports)?;
        let root = shared.broadcast_bytes(mine.to_le_bytes().to_vec())?;
        if root != mine.to_le_bytes() {
            return Err(Error::Collective(format!(
                "after step {} rank {}'s session differs from rank 0's (digest {mine:08x}, \
                 rank 0 has {}): the ranks were not given the same configuration, seed, \
                 checkpoint or model, or the model's outputs differ between ranks",
                self.step,
                shared.rank(),
                root.iter()
                    .rev()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            )));
        }
        Ok(())
    }

    fn digest(&self, reports: &[DirectionReport]) -> Result<u32> {
        #[derive(Serialize)]
        struct Agreed<'a> {
            phase: Phase,
            step: u64,
            orth_steps: u64,
            scheduler: &'a Scheduler,
            bounds: &'a Bounds,
            rng: &'a rand_chacha::ChaCha8Rng,
            // Stamped counts are left out: each rank stamps its own samples.
            sizes: Vec<(Option<usize>, usize, f64, bool)>,
        }
        let agreed = Agreed {
            phase: self.phase,
            step: self.step,
            orth_steps: self.orth_steps,
            scheduler: &self.scheduler,
            bounds: &self.bounds,
            rng: &self.rng,
            sizes: reports
                .iter()
                .map(|r| (r.victim, r.target, r.size, r.reached))
                .collect(),
        };
        let bytes =
            bincode::serde::encode_to_vec(&agreed, bincode::config::standard()).map_err(|e| {
                Error::Encode {
                    what: "the session digest".into(),
                    message: e.to_string(),
                }
            })?;
        Ok(crc32fast::hash(&bytes))
    }
}

/// Per-class sample counts of the whole batch, over all ranks.
pub(super) fn global_counts(
    shared: &mut Agreement,
    labels: &[i64],
    classes: usize,
) -> Result<Vec<usize>> {
    let mut counts = vec![0f32; classes];
    for &l in labels {
        counts[l as usize] += 1.0;
    }
    shared.sum(&mut counts)?;
    Ok(counts.iter().map(|&c| c as usize).collect())
}

/// The pool as bytes: per class, its sample count (u32) and its values (f32),
/// little endian.
fn encode_pool(pool: &Pool) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for t in &pool.0 {
        let k = t.size()[0] as u32;
        out.extend(k.to_le_bytes());
        let values = Vec::<f32>::try_from(&t.f_contiguous()?.f_flatten(0, -1)?)?;
        out.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    }
    Ok(out)
}

fn decode_pool(bytes: &[u8], spec: &SessionSpec, max_per_class: i64) -> Result<Pool> {
    let [c, h, w] = spec.input_shape;
    let per_sample = (c * h * w) as usize;
    let broken = || Error::Collective("rank 0's warm-up pool arrived damaged".into());
    let mut at = 0;
    let mut pool = Vec::with_capacity(spec.num_classes);
    for _ in 0..spec.num_classes {
        let head = bytes.get(at..at + 4).ok_or_else(broken)?;
        let k = u32::from_le_bytes(head.try_into().map_err(|_| broken())?) as i64;
        at += 4;
        if k > max_per_class {
            return Err(broken());
        }
        let n = k as usize * per_sample * 4;
        let raw = bytes.get(at..at + n).ok_or_else(broken)?;
        at += n;
        let values: Vec<f32> = raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        pool.push(
            Tensor::f_from_slice(&values)?
                .f_view([k, c, h, w])?
                .f_to_kind(Kind::Float)?,
        );
    }
    if at != bytes.len() {
        return Err(broken());
    }
    Ok(Pool(pool))
}
