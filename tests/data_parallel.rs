//! Data-parallel sessions (docs/algorithm.md section 10): two ranks in two
//! threads, each with its own session and half of every batch, agree through
//! an in-memory collective: same reports step by step, byte-identical
//! checkpoints; a checkpoint records the world size; a hook that skips a
//! collective gives a clear error on both ranks instead of a hang.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::*;
use moth::algo::collective::Collective;
use moth::session::{Method, Session, SessionConfig};
use moth::Error;
use tch::{Kind, Tensor};

/// What a rank posted for one collective call.
enum Post {
    Floats(Vec<f32>),
    Bytes(Vec<u8>),
}

/// The meeting point of the ranks: contributions by call number.
struct Hub {
    world: usize,
    timeout: Duration,
    posts: Mutex<HashMap<u64, Vec<Option<Post>>>>,
    arrived: Condvar,
}

/// One rank's hook on a [`Hub`]; `skip_call` makes it return at once,
/// without communicating, on that all-reduce (counted from 1).
struct Rank {
    hub: Arc<Hub>,
    rank: usize,
    call: u64,
    all_reduces: u64,
    skip_call: Option<u64>,
    /// Collectives and bytes sent, for the cost figures.
    sent: Arc<Mutex<(u64, u64)>>,
}

impl Rank {
    /// Posts `post` for this rank's next call and waits for the posts of
    /// the ranks in `from`, then hands them to `read`.
    fn meet<T>(
        &mut self,
        post: Post,
        from: std::ops::Range<usize>,
        read: impl FnOnce(&[Option<Post>]) -> T,
    ) -> moth::Result<T> {
        self.call += 1;
        let call = self.call;
        let hub = &self.hub;
        let mut posts = hub.posts.lock().unwrap();
        posts
            .entry(call)
            .or_insert_with(|| (0..hub.world).map(|_| None).collect())[self.rank] = Some(post);
        hub.arrived.notify_all();
        let deadline = Instant::now() + hub.timeout;
        loop {
            let slots = &posts[&call];
            if slots[from.clone()].iter().all(Option::is_some) {
                let out = read(slots);
                return Ok(out);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Collective(format!(
                    "timed out after {:?} waiting for the other ranks",
                    hub.timeout
                )));
            }
            posts = hub.arrived.wait_timeout(posts, left).unwrap().0;
        }
    }
}

impl Collective for Rank {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.hub.world
    }
    fn all_reduce_sum(&mut self, values: &mut [f32]) -> moth::Result<()> {
        self.all_reduces += 1;
        if self.skip_call == Some(self.all_reduces) {
            return Ok(());
        }
        let mut s = self.sent.lock().unwrap();
        s.0 += 1;
        s.1 += 4 * values.len() as u64;
        drop(s);
        let world = self.hub.world;
        let sum = self.meet(Post::Floats(values.to_vec()), 0..world, |slots| {
            // Summed in rank order on every rank: the same bits everywhere.
            let mut sum = vec![0f32; values.len()];
            for p in slots {
                if let Some(Post::Floats(v)) = p {
                    sum.iter_mut().zip(v).for_each(|(a, b)| *a += b);
                }
            }
            sum
        })?;
        values.copy_from_slice(&sum);
        Ok(())
    }
    fn broadcast(&mut self, bytes: &mut [u8]) -> moth::Result<()> {
        let mut s = self.sent.lock().unwrap();
        s.0 += 1;
        s.1 += bytes.len() as u64;
        drop(s);
        let root = self.meet(Post::Bytes(bytes.to_vec()), 0..1, |slots| match &slots[0] {
            Some(Post::Bytes(b)) => Some(b.clone()),
            _ => None,
        })?;
        let root = root.ok_or_else(|| Error::Collective("rank 0 did not broadcast".into()))?;
        if root.len() != bytes.len() {
            return Err(Error::Collective("broadcast lengths differ".into()));
        }
        bytes.copy_from_slice(&root);
        Ok(())
    }
}

fn hub(world: usize, timeout: Duration) -> Arc<Hub> {
    Arc::new(Hub {
        world,
        timeout,
        posts: Mutex::new(HashMap::new()),
        arrived: Condvar::new(),
    })
}

fn config() -> SessionConfig {
    let mut c = small_config(Method::Moth, 5, 30, 20, 8);
    c.portion = 0.4;
    c
}

/// [`config`] with inversion mini-batches that hold two copies of every
/// sample set, so that both runs of the copies test take one mini-batch.
fn wide_config() -> SessionConfig {
    let mut c = config();
    c.inversion.batch_size = 64;
    c
}

/// Rank `rank` of `world`'s share of step `step`'s batch: every
/// `world`-th sample (so class counts differ between ranks), or, when
/// `copies`, the whole batch.
fn shard(step: u64, rank: usize, world: usize, copies: bool) -> (Tensor, Tensor) {
    let (x, y) = labelled_batch(7, 300 + step as i64);
    if copies {
        return (x, y);
    }
    let idx = Tensor::arange_start_step(
        rank as i64,
        x.size()[0],
        world as i64,
        (Kind::Int64, tch::Device::Cpu),
    );
    (x.index_select(0, &idx), y.index_select(0, &idx))
}

/// What must agree between ranks in a step report (stamped counts are
/// each rank's own).
fn agreed(r: &moth::session::StepReport) -> String {
    let dirs: Vec<String> = r
        .directions
        .iter()
        .map(|d| {
            format!(
                "{:?}->{} {} {} {}",
                d.victim, d.target, d.size, d.reached, d.bound
            )
        })
        .collect();
    format!("{} {} {}", r.step, r.phase, dirs.join(", "))
}

struct RankRun {
    reports: Vec<String>,
    sizes: Vec<Vec<f64>>,
    stamped: Vec<usize>,
    bytes: Vec<u8>,
    calls: u64,
}

/// Drives `steps` steps of rank `rank`'s session.
fn run_rank(
    h: Arc<Hub>,
    rank: usize,
    steps: u64,
    copies: bool,
    sent: Arc<Mutex<(u64, u64)>>,
) -> RankRun {
    let world = h.world;
    let cfg = if copies { wide_config() } else { config() };
    let mut s = Session::new(cfg, three_class_spec()).unwrap();
    s.set_collective(Some(Box::new(Rank {
        hub: h,
        rank,
        call: 0,
        all_reduces: 0,
        skip_call: None,
        sent,
    })))
    .unwrap();
    let mut model = three_class_model();
    let mut run = RankRun {
        reports: Vec::new(),
        sizes: Vec::new(),
        stamped: Vec::new(),
        bytes: Vec::new(),
        calls: 0,
    };
    for step in 0..steps {
        let (x, y) = shard(step, rank, world, copies);
        let h = s.harden_batch(&mut model, &x, &y).unwrap();
        run.reports.push(agreed(&h.report));
        run.sizes
            .push(h.report.directions.iter().map(|d| d.size).collect());
        run.stamped
            .push(h.report.directions.iter().map(|d| d.stamped).sum());
    }
    run.bytes = s.to_bytes().unwrap();
    run.calls = s.collective_calls();
    run
}

fn run_world(world: usize, steps: u64, copies: bool) -> (Vec<RankRun>, (u64, u64)) {
    let h = hub(world, Duration::from_secs(60));
    let sent = Arc::new(Mutex::new((0, 0)));
    let runs = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                let (h, sent) = (h.clone(), sent.clone());
                scope.spawn(move || run_rank(h, rank, steps, copies, sent))
            })
            .collect();
        handles.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let sent = *sent.lock().unwrap();
    (runs, sent)
}

#[test]
fn two_ranks_agree_step_by_step_and_write_the_same_checkpoint() {
    const STEPS: u64 = 9; // 3 warm-up steps, then two periods and more
    let (runs, sent) = run_world(2, STEPS, false);
    for (step, (a, b)) in runs[0].reports.iter().zip(&runs[1].reports).enumerate() {
        assert_eq!(a, b, "step {step}");
    }
    assert!(
        runs[0].bytes == runs[1].bytes,
        "the ranks' checkpoints differ"
    );
    // Both ranks stamped samples of their own (the pair inverted on the
    // union of their samples).
    assert!(runs.iter().all(|r| r.stamped.iter().sum::<usize>() > 0));
    let loaded = Session::from_bytes(&runs[0].bytes, Some(three_class_spec())).unwrap();
    assert_eq!(loaded.world_size(), 2);
    assert_eq!(loaded.step(), STEPS);
    println!(
        "2 ranks, {STEPS} steps: {} collectives per rank, {} collectives and {} bytes sent \
         by both ranks together",
        runs[0].calls, sent.0, sent.1
    );
    for r in &runs[0].reports {
        println!("  {r}");
    }
}

/// The inversion optimises over the union of the ranks' samples: two
/// ranks that each hold the whole batch (a union of two copies) find what
/// one rank finds on it: means over twice the samples, each rank's half of
/// the mask's L1 term and doubled success counts are exact halvings and
/// doublings, except for gradients so small that halving them rounds
/// (subnormal floats), hence sizes equal to 1e-5. (One process with a hook
/// is the reference: it takes the data-parallel mini-batch layout.)
#[test]
fn two_ranks_holding_copies_find_what_one_rank_finds() {
    const STEPS: u64 = 6;
    let (two, _) = run_world(2, STEPS, true);
    let (one, _) = run_world(1, STEPS, true);
    let pairs = |r: &RankRun| -> Vec<String> {
        r.reports
            .iter()
            .map(|s| s.split(',').next().unwrap().split(' ').take(5).collect())
            .collect()
    };
    assert_eq!(pairs(&two[0]), pairs(&one[0]));
    assert_eq!(two[0].reports, two[1].reports);
    for (step, (a, b)) in two[0].sizes.iter().zip(&one[0].sizes).enumerate() {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-5 * y.abs(), "step {step}: {x} vs {y}");
        }
    }
    assert_eq!(two[0].stamped, one[0].stamped);
}

#[test]
fn a_checkpoint_of_two_ranks_continues_only_with_two() {
    let (runs, _) = run_world(2, 4, false);
    let mut s = Session::from_bytes(&runs[0].bytes, Some(three_class_spec())).unwrap();
    let mut model = three_class_model();
    let (x, y) = labelled_batch(7, 1);
    let e = s.harden_batch(&mut model, &x, &y).unwrap_err();
    assert!(matches!(e, Error::Collective(_)), "{e}");
    assert!(
        e.to_string().contains("2 data-parallel ranks") && e.to_string().contains("one process"),
        "{e}"
    );
    let three = Rank {
        hub: hub(3, Duration::from_secs(1)),
        rank: 0,
        call: 0,
        all_reduces: 0,
        skip_call: None,
        sent: Arc::new(Mutex::new((0, 0))),
    };
    let e = s.set_collective(Some(Box::new(three))).unwrap_err();
    assert!(e.to_string().contains("3 data-parallel ranks"), "{e}");
    assert_eq!(s.step(), 4, "a refused step changes nothing");
}

/// Rank 1's hook skips its 12th all-reduce (it returns at once without
/// communicating): rank 1 sees that its sum holds only its own tags, rank 0
/// waits for rank 1 until the hook's timeout; both fail with a clear error
/// within seconds, and neither session changed.
#[test]
fn a_skipped_all_reduce_fails_on_both_ranks_instead_of_hanging() {
    let h = hub(2, Duration::from_secs(2));
    let start = Instant::now();
    let outcomes: Vec<(String, u64)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|rank| {
                let h = h.clone();
                scope.spawn(move || {
                    let mut s = Session::new(config(), three_class_spec()).unwrap();
                    s.set_collective(Some(Box::new(Rank {
                        hub: h,
                        rank,
                        call: 0,
                        all_reduces: 0,
                        skip_call: (rank == 1).then_some(12),
                        sent: Arc::new(Mutex::new((0, 0))),
                    })))
                    .unwrap();
                    let mut model = three_class_model();
                    for step in 0..3 {
                        let (x, y) = shard(step, rank, 2, false);
                        match s.harden_batch(&mut model, &x, &y) {
                            Ok(_) => continue,
                            Err(e) => {
                                assert!(matches!(e, Error::Collective(_)), "{e}");
                                return (e.to_string(), s.step());
                            }
                        }
                    }
                    panic!("rank {rank} never failed");
                })
            })
            .collect();
        handles.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let took = start.elapsed();
    println!(
        "rank 0: {}\nrank 1: {}\n({took:?})",
        outcomes[0].0, outcomes[1].0
    );
    assert!(outcomes[1].0.contains("out of step"), "{}", outcomes[1].0);
    assert!(outcomes[0].0.contains("timed out"), "{}", outcomes[0].0);
    assert!(took < Duration::from_secs(30), "{took:?}");
    assert_eq!(outcomes[0].1, 0);
    assert_eq!(outcomes[1].1, 0);
}
