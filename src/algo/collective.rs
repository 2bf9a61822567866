//! Data-parallel agreement (docs/algorithm.md section 10): when a trainer
//! runs one session per rank, each on its own shard of every batch, the
//! sessions agree through the trainer's own collective (its process group:
//! Gloo, NCCL, MPI). moth builds no networking; it only asks for two
//! operations, which the trainer implements with what it already has.

use tch::{Device, Kind, Tensor};

use crate::{Error, Result};

/// The trainer's collective for one rank. Every rank makes the same calls
/// in the same order, with buffers of the same length.
pub trait Collective: Send {
    /// This process's rank, in `0..world_size()`.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn world_size(&self) -> usize;
    /// Replaces `values` on every rank by their element-wise sum over all
    /// ranks. Every rank must receive the same bits (ring, tree and
    /// reduce-then-broadcast all-reduces of Gloo, NCCL and MPI do).
    fn all_reduce_sum(&mut self, values: &mut [f32]) -> Result<()>;
    /// Replaces `bytes` on every rank by rank 0's bytes (same length on
    /// every rank).
    fn broadcast(&mut self, bytes: &mut [u8]) -> Result<()>;
}

/// Tags are kept below 2^12 so that `world_size * tag` stays exact in f32
/// for up to 4096 ranks.
const TAG_PERIOD: u64 = 4096;

/// A session's collective together with the number of calls made so far;
/// every call carries a tag that tells out-of-step ranks (one skipped a
/// collective, or the hook returned without communicating) from agreeing ones.
pub struct Agreement {
    hook: Box<dyn Collective>,
    calls: u64,
}

impl std::fmt::Debug for Agreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rank {} of {} ({} collectives)",
            self.hook.rank(),
            self.hook.world_size(),
            self.calls
        )
    }
}

impl Agreement {
    /// Wraps a hook after checking its rank and world size.
    pub fn new(hook: Box<dyn Collective>) -> Result<Self> {
        let (rank, world) = (hook.rank(), hook.world_size());
        if world == 0 || rank >= world || world > TAG_PERIOD as usize {
            return Err(Error::Collective(format!(
                "the collective hook says rank {rank} of {world}: the rank must be below the \
                 world size, which must be 1 to {TAG_PERIOD}"
            )));
        }
        Ok(Agreement { hook, calls: 0 })
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.hook.rank()
    }

    /// The number of ranks.
    pub fn world_size(&self) -> usize {
        self.hook.world_size()
    }

    /// Collective calls made through this agreement so far (each
    /// [`Agreement::sum`] is one; each [`Agreement::broadcast_bytes`] is two).
    pub fn calls(&self) -> u64 {
        self.calls
    }

    fn failed(&self, what: &str, e: Error) -> Error {
        let why = match e {
            Error::Collective(m) => m,
            other => other.to_string(),
        };
        Error::Collective(format!(
            "{what} (collective #{} on rank {} of {}) failed: {why}",
            self.calls,
            self.rank(),
            self.world_size()
        ))
    }

    /// Sums `values` over all ranks, in place. Two tag values ride along:
    /// the call number and the length, which every rank must share; a sum
    /// that is not `world_size` times this rank's tags means the ranks are
    /// out of step, and is an error rather than a silently wrong trigger.
    pub fn sum(&mut self, values: &mut Vec<f32>) -> Result<()> {
        self.calls += 1;
        let tag = (self.calls % TAG_PERIOD) as f32 + 1.0;
        let len = (values.len() as u64 % TAG_PERIOD) as f32 + 1.0;
        values.extend([tag, len]);
        let outcome = self.hook.all_reduce_sum(values);
        let got = [values.pop(), values.pop()];
        outcome.map_err(|e| self.failed("all-reduce", e))?;
        let w = self.world_size() as f32;
        let want = [Some(w * len), Some(w * tag)];
        if got != want {
            return Err(Error::Collective(format!(
                "all-reduce #{} on rank {} of {}: the ranks are out of step (a rank skipped or \
                 added a collective, called it with another length, or the hook returned \
                 without summing over all ranks); tags summed to {:?}, expected {:?}",
                self.calls,
                self.rank(),
                self.world_size(),
                [got[1].unwrap_or(f32::NAN), got[0].unwrap_or(f32::NAN)],
                [want[1].unwrap_or(f32::NAN), want[0].unwrap_or(f32::NAN)],
            )));
        }
        Ok(())
    }

    /// Sums tensors over all ranks in one call (their values travel through
    /// the host as f32); returns them in the same shapes and on `device`.
    pub fn sum_tensors(&mut self, tensors: &[&Tensor], device: Device) -> Result<Vec<Tensor>> {
        let mut host = Vec::new();
        for t in tensors {
            let flat = t
                .f_detach()?
                .f_to_kind(Kind::Float)?
                .f_to_device(Device::Cpu)?
                .f_flatten(0, -1)?;
            host.extend(Vec::<f32>::try_from(&flat)?);
        }
        self.sum(&mut host)?;
        let mut out = Vec::with_capacity(tensors.len());
        let mut at = 0;
        for t in tensors {
            let n = t.numel();
            out.push(
                Tensor::f_from_slice(&host[at..at + n])?
                    .f_view(t.size().as_slice())?
                    .f_to_device(device)?,
            );
            at += n;
        }
        Ok(out)
    }

    /// The mini-batch layout of a data-parallel inversion whose directions
    /// have `counts` samples on this rank: the number of mini-batches one
    /// process holding every rank's samples would take (batch size
    /// `batch_size`), and this rank's share of each mini-batch, enough
    /// positions to spread its largest direction over them.
    pub fn mini_batches(&mut self, counts: &[i64], batch_size: i64) -> Result<(i64, i64)> {
        let mut global: Vec<f32> = counts.iter().map(|&n| n as f32).collect();
        self.sum(&mut global)?;
        if let Some(k) = global.iter().position(|&n| n < 1.0) {
            return Err(Error::input(format!(
                "direction {k} of the inversion has no sample on any rank"
            )));
        }
        let max_global = global.iter().fold(0.0f32, |a, &b| a.max(b)) as i64;
        let width_global = batch_size.min(max_global);
        let batches = (max_global + width_global - 1) / width_global;
        let max_local = counts.iter().copied().max().unwrap_or(0);
        Ok((batches, ((max_local + batches - 1) / batches).max(1)))
    }

    /// Sums a mini-batch's gradients over the ranks, in one collective;
    /// with `hits`, the inversion step's success counts travel along.
    pub fn sum_gradients(
        &mut self,
        grads: &mut Vec<Tensor>,
        hits: Option<&mut Tensor>,
        device: Device,
    ) -> Result<()> {
        let mut parts: Vec<&Tensor> = grads.iter().collect();
        if let Some(h) = &hits {
            parts.push(h);
        }
        let mut summed = self.sum_tensors(&parts, device)?;
        if let Some(h) = hits {
            *h = summed
                .pop()
                .ok_or_else(|| Error::Collective("the success counts were lost".into()))?;
        }
        *grads = summed;
        Ok(())
    }

    /// Rank 0's `bytes` on every rank (what other ranks pass is ignored):
    /// the length goes first, through a checked all-reduce, then the bytes.
    pub fn broadcast_bytes(&mut self, bytes: Vec<u8>) -> Result<Vec<u8>> {
        let len = if self.rank() == 0 { bytes.len() } else { 0 };
        if len >= 1 << 48 {
            return Err(Error::Collective(format!(
                "a broadcast of {len} bytes is too long"
            )));
        }
        // Split in 24-bit halves so that f32 holds them exactly.
        let mut l = vec![(len & 0xff_ffff) as f32, (len >> 24) as f32];
        self.sum(&mut l)?;
        let len = l[0] as usize | ((l[1] as usize) << 24);
        let mut buf = if self.rank() == 0 {
            bytes
        } else {
            vec![0u8; len]
        };
        self.calls += 1;
        let outcome = self.hook.broadcast(&mut buf);
        outcome.map_err(|e| self.failed("broadcast", e))?;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hook for one rank of a pretend world whose other ranks all hold
    /// the same values (so a sum is `world` times the local value), or,
    /// when `broken`, returns without communicating.
    struct Mirror {
        world: usize,
        broken: bool,
    }

    impl Collective for Mirror {
        fn rank(&self) -> usize {
            0
        }
        fn world_size(&self) -> usize {
            self.world
        }
        fn all_reduce_sum(&mut self, values: &mut [f32]) -> Result<()> {
            if !self.broken {
                values.iter_mut().for_each(|v| *v *= self.world as f32);
            }
            Ok(())
        }
        fn broadcast(&mut self, _bytes: &mut [u8]) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn sums_pass_their_tags_and_a_silent_hook_is_caught() {
        let mut a = Agreement::new(Box::new(Mirror {
            world: 3,
            broken: false,
        }))
        .unwrap();
        let mut v = vec![1.0, 2.0];
        a.sum(&mut v).unwrap();
        assert_eq!(v, vec![3.0, 6.0]);
        let b = a.broadcast_bytes(vec![7, 8, 9]).unwrap();
        assert_eq!(b, vec![7, 8, 9]);
        assert_eq!(a.calls(), 3);

        let mut silent = Agreement::new(Box::new(Mirror {
            world: 2,
            broken: true,
        }))
        .unwrap();
        let e = silent.sum(&mut vec![1.0]).unwrap_err().to_string();
        assert!(e.contains("out of step"), "{e}");
    }

    #[test]
    fn a_rank_outside_the_world_is_refused() {
        struct Bad;
        impl Collective for Bad {
            fn rank(&self) -> usize {
                2
            }
            fn world_size(&self) -> usize {
                2
            }
            fn all_reduce_sum(&mut self, _: &mut [f32]) -> Result<()> {
                Ok(())
            }
            fn broadcast(&mut self, _: &mut [u8]) -> Result<()> {
                Ok(())
            }
        }
        let e = Agreement::new(Box::new(Bad)).unwrap_err().to_string();
        assert!(e.contains("rank 2 of 2"), "{e}");
    }
}
