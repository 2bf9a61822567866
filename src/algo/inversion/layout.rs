//! How an inversion task's samples are laid out in mini-batches.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Tensor};

use super::InversionTask;
use crate::algo::collective::Agreement;
use crate::config::InversionConfig;
use crate::{Error, Result};

/// Mini-batch layout of a task: every mini-batch takes `width` positions of
/// every direction; a direction with fewer samples than `width` has its
/// surplus positions weighted 0.
pub(super) struct Layout {
    pub(super) width: i64,
    pub(super) batches: i64,
    counts: Vec<i64>,
    offsets: Vec<i64>,
    /// This process's rank when the inversion is data-parallel.
    rank: Option<usize>,
}

impl Layout {
    pub(super) fn new(task: &InversionTask, cfg: &InversionConfig) -> Result<Self> {
        let (counts, offsets) = counts_and_offsets(task)?;
        if let Some(k) = counts.iter().position(|&n| n == 0) {
            let set = task.directions[k].set;
            return Err(Error::input(format!("sample set {set} is empty")));
        }
        let max_n = counts.iter().copied().max().unwrap_or(0);
        let width = (cfg.batch_size as i64).min(max_n);
        let batches = (max_n + width - 1) / width;
        Ok(Layout {
            width,
            batches,
            counts,
            offsets,
            rank: None,
        })
    }

    /// The layout of one rank of a data-parallel inversion (section 10):
    /// the number of mini-batches comes from the ranks' summed sample
    /// counts, as if one process held them all; each rank spreads its own
    /// samples (possibly none) over that many mini-batches.
    pub(super) fn shared(
        task: &InversionTask,
        cfg: &InversionConfig,
        s: &mut Agreement,
    ) -> Result<Self> {
        let (counts, offsets) = counts_and_offsets(task)?;
        let (batches, width) = s.mini_batches(&counts, cfg.batch_size as i64)?;
        Ok(Layout {
            width,
            batches,
            counts,
            offsets,
            rank: Some(s.rank()),
        })
    }

    /// `[K, width]` weights: 1 for a real sample position, 0 for padding.
    pub(super) fn weights(&self, device: Device) -> Result<Tensor> {
        let w: Vec<f32> = self
            .counts
            .iter()
            .flat_map(|&n| {
                (0..self.width).map(move |i| if n >= self.width || i < n { 1.0 } else { 0.0 })
            })
            .collect();
        Ok(Tensor::f_from_slice(&w)?
            .f_view([self.counts.len() as i64, self.width])?
            .f_to_device(device)?)
    }

    /// `[K, batches * width]` indices into the concatenated sets, a fresh
    /// shuffle of each direction's samples, wrapped around where short.
    /// Drawn on the host from the run's own RNG, so results never depend on
    /// libtorch's global generator (which other threads may reseed).
    /// A data-parallel rank shuffles its own samples with a generator of
    /// its own (one draw of the shared one, on the rank's ChaCha stream):
    /// how many draws a shuffle takes depends on the rank's sample count,
    /// and the shared generator must stay the same on every rank.
    pub(super) fn shuffled_indices(&self, rng: &mut ChaCha8Rng, device: Device) -> Result<Tensor> {
        let mut own;
        let rng = match self.rank {
            None => rng,
            Some(rank) => {
                own = ChaCha8Rng::seed_from_u64(rng.random());
                own.set_stream(rank as u64);
                &mut own
            }
        };
        let total = (self.batches * self.width) as usize;
        let mut all = Vec::with_capacity(total * self.counts.len());
        for (&n, &off) in self.counts.iter().zip(&self.offsets) {
            if n == 0 {
                // A rank without samples of this direction: weight-0 positions.
                all.extend(std::iter::repeat(0).take(total));
                continue;
            }
            let mut perm: Vec<i64> = (off..off + n).collect();
            perm.shuffle(rng);
            all.extend((0..total).map(|p| perm[p % n as usize]));
        }
        Ok(Tensor::f_from_slice(&all)?
            .f_view([self.counts.len() as i64, total as i64])?
            .f_to_device(device)?)
    }
}

/// Each direction's sample count and the offset of its set in the
/// concatenated sets.
fn counts_and_offsets(task: &InversionTask) -> Result<(Vec<i64>, Vec<i64>)> {
    let set_sizes: Vec<i64> = task.sets.iter().map(|s| s.size()[0]).collect();
    let mut offsets = Vec::with_capacity(task.directions.len());
    let mut counts = Vec::with_capacity(task.directions.len());
    for d in &task.directions {
        let n = *set_sizes.get(d.set).ok_or_else(|| {
            Error::input(format!(
                "direction names sample set {} of {}",
                d.set,
                set_sizes.len()
            ))
        })?;
        offsets.push(set_sizes[..d.set].iter().sum());
        counts.push(n);
    }
    Ok((counts, offsets))
}
