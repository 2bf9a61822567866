//! Checkpoint container: round trips, bit-exact tensors, header checks,
//! mutation fuzzing, atomic replacement and writers killed mid-write.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use moth::io::container::*;
use moth::io::tensor_codec::{SavedKind, SavedTensor};
use moth::Error;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// Marsaglia xorshift64: deterministic, no dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct State {
    tensors: Vec<SavedTensor>,
    matrices: Vec<Vec<Vec<f64>>>,
    step: u64,
    name: String,
    flag: Option<u32>,
}

fn f32_tensor(shape: &[i64], values: &[f32]) -> SavedTensor {
    SavedTensor {
        kind: SavedKind::Float,
        shape: shape.to_vec(),
        data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

fn sample_state() -> State {
    State {
        tensors: vec![
            f32_tensor(&[2, 3], &[1.0, -0.0, f32::NAN, 1e-45, -2.5, f32::INFINITY]),
            SavedTensor {
                kind: SavedKind::Int64,
                shape: vec![3],
                data: [7i64, -1, i64::MAX]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            },
            SavedTensor {
                kind: SavedKind::Bool,
                shape: vec![4],
                data: vec![1, 0, 0, 1],
            },
        ],
        matrices: vec![
            vec![vec![1.0, 2.0], vec![3.0, -4.5]],
            vec![vec![f64::MIN_POSITIVE, f64::MAX, -0.0]],
        ],
        step: 123_456_789_012,
        name: "mnist-hardening".to_owned(),
        flag: Some(42),
    }
}

fn checkpoint_message(e: Error) -> String {
    match e {
        Error::Checkpoint(m) => m,
        other => panic!("expected a checkpoint rejection, got {other:?}"),
    }
}

/// Offsets of the header fields for a file written by this moth.
fn payload_offset() -> usize {
    8 + 4 + 2 + MOTH_VERSION.len() + 1 + 8 + 4
}

/// Rewrites the payload of a valid checkpoint, fixing its length and CRC so
/// that only bincode decoding can reject it.
fn with_payload(valid: &[u8], payload: &[u8]) -> Vec<u8> {
    let off = payload_offset();
    let mut out = valid[..off].to_vec();
    out[off - 12..off - 4].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    let crc = checksum(FORMAT_VERSION, &out[..off - 4], payload);
    out[off - 4..off].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

#[test]
fn state_round_trips_through_bytes_and_files() {
    let state = sample_state();
    let bytes = encode(PayloadKind::Session, &state).unwrap();
    // Bit patterns survive (NaN != NaN, so compare the raw data too).
    let back: State = decode(PayloadKind::Session, &bytes).unwrap();
    assert_eq!(back.tensors, state.tensors);
    assert_eq!(back.step, state.step);
    assert_eq!(back.name, state.name);
    for (a, b) in back
        .matrices
        .iter()
        .flatten()
        .zip(state.matrices.iter().flatten())
    {
        let a: Vec<u64> = a.iter().map(|v| v.to_bits()).collect();
        let b: Vec<u64> = b.iter().map(|v| v.to_bits()).collect();
        assert_eq!(a, b);
    }
    // Deterministic encoding.
    assert_eq!(encode(PayloadKind::Session, &back).unwrap(), bytes);

    let header = parse_header(&bytes).unwrap();
    assert_eq!(header.format_version, FORMAT_VERSION);
    assert_eq!(header.moth_version, MOTH_VERSION);
    assert_eq!(header.kind, PayloadKind::Session);
    assert_eq!(header.payload_offset, payload_offset());
    assert_eq!(header.payload_len as usize, bytes.len() - payload_offset());

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.ckpt");
    save(&path, PayloadKind::Trainer, &state).unwrap();
    let loaded: State = load(&path, PayloadKind::Trainer).unwrap();
    assert_eq!(loaded.tensors, state.tensors);
    let e = load::<State>(&path, PayloadKind::Session).unwrap_err();
    let m = checkpoint_message(e);
    assert!(m.contains("payload kind mismatch"), "{m}");
    assert!(m.contains("state.ckpt"), "{m}");

    match load::<State>(&dir.path().join("missing.ckpt"), PayloadKind::Session) {
        Err(Error::Io { context, .. }) => assert!(context.contains("missing.ckpt"), "{context}"),
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

#[test]
fn header_fields_are_checked_in_order_with_clear_messages() {
    let state = sample_state();
    let valid = encode(PayloadKind::Session, &state).unwrap();
    let off = payload_offset();
    let reason = |bytes: &[u8]| {
        checkpoint_message(decode::<State>(PayloadKind::Session, bytes).unwrap_err())
    };

    assert!(reason(&[]).contains("truncated header"));
    assert!(reason(&valid[..20]).contains("truncated header"));
    assert!(reason(&valid[..off - 1]).contains("truncated header"));

    let mut b = valid.clone();
    b[0] = b'X';
    assert!(reason(&b).contains("not a moth checkpoint"));

    let mut b = valid.clone();
    b[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    assert_eq!(
        reason(&b),
        format!(
            "format version {}, this moth reads versions 2 to {FORMAT_VERSION}",
            FORMAT_VERSION + 1
        )
    );

    let mut b = valid.clone();
    b[12..14].copy_from_slice(&u16::MAX.to_le_bytes());
    assert!(reason(&b).contains("truncated header"));

    let mut b = valid.clone();
    b[14] = 0xff;
    assert!(reason(&b).contains("not UTF-8"));

    let mut b = valid.clone();
    b[off - 13] = PayloadKind::Trainer.to_byte();
    assert!(reason(&b).contains("payload kind mismatch"));
    b[off - 13] = 9;
    assert!(reason(&b).contains("unknown payload kind 9"));

    assert!(reason(&valid[..valid.len() - 1]).contains("truncated payload"));
    let mut b = valid.clone();
    b.push(0);
    assert!(reason(&b).contains("trailing bytes"));

    let mut b = valid.clone();
    let last = b.len() - 1;
    b[last] ^= 1;
    assert!(reason(&b).starts_with("checksum mismatch: file corrupted"));

    // Valid CRC, but the payload is not a State.
    let b = with_payload(&valid, &[1, 2, 3]);
    assert!(reason(&b).contains("does not decode"));

    // Valid CRC, a State followed by extra payload bytes.
    let mut payload = valid[off..].to_vec();
    payload.extend_from_slice(&[0, 0]);
    assert!(reason(&with_payload(&valid, &payload)).contains("ends after"));

    // Valid CRC, the tensor data length prefix set to a huge value: refused
    // by the limit before anything is allocated.
    let small = State {
        tensors: vec![SavedTensor {
            kind: SavedKind::Uint8,
            shape: vec![2],
            data: vec![5, 6],
        }],
        matrices: vec![],
        step: 0,
        name: String::new(),
        flag: None,
    };
    let valid_small = encode(PayloadKind::Session, &small).unwrap();
    let payload = &valid_small[off..];
    // tensors len 1, kind 7 (Uint8), shape [2] (zigzag 4), data len 2 and bytes.
    assert_eq!(&payload[..7], &[1, 7, 1, 4, 2, 5, 6]);
    let mut huge = payload[..4].to_vec();
    huge.push(253);
    huge.extend_from_slice(&(1u64 << 40).to_le_bytes());
    huge.extend_from_slice(&payload[5..]);
    let m = reason(&with_payload(&valid_small, &huge));
    assert!(m.contains("more memory than the payload"), "{m}");
}

#[test]
fn limit_does_not_reject_varint_heavy_payloads() {
    // bincode charges 8 bytes per u64 even when its varint takes one byte, so
    // a limit equal to the payload length would refuse this valid state.
    let values: Vec<u64> = (0..10_000).map(|i| i % 200).collect();
    let bytes = encode(PayloadKind::Session, &values).unwrap();
    assert!(bytes.len() < 11_000);
    let back: Vec<u64> = decode(PayloadKind::Session, &bytes).unwrap();
    assert_eq!(back, values);
    let tiny: Vec<u128> = vec![1; 4096];
    let bytes = encode(PayloadKind::Session, &tiny).unwrap();
    assert_eq!(
        decode::<Vec<u128>>(PayloadKind::Session, &bytes).unwrap(),
        tiny
    );
}

fn round_trip(t: &Tensor) -> (SavedTensor, Tensor) {
    let saved = SavedTensor::from_tensor(t).unwrap();
    let bytes = encode(PayloadKind::Session, &saved).unwrap();
    let back: SavedTensor = decode(PayloadKind::Session, &bytes).unwrap();
    assert_eq!(back, saved);
    let rebuilt = back.to_tensor(Device::Cpu).unwrap();
    assert_eq!(rebuilt.kind(), t.kind());
    assert_eq!(rebuilt.size(), t.size());
    assert_eq!(SavedTensor::from_tensor(&rebuilt).unwrap(), saved);
    (saved, rebuilt)
}

#[test]
fn tensors_round_trip_bit_exactly() {
    // f32: quiet NaN with payload, signalling NaN, -0.0, denormals, infinities.
    let bits: Vec<u32> = vec![
        0x7fc0_1234,
        0xffa0_0001,
        0x8000_0000,
        0x0000_0001,
        0x807f_ffff,
        0x7f80_0000,
        0x3f80_0000,
        0xc2f6_e979,
    ];
    let data: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
    let t = Tensor::from_data_size(&data, &[2, 4], Kind::Float);
    let (saved, rebuilt) = round_trip(&t);
    assert_eq!(saved.data, data);
    let mut out = vec![0f32; 8];
    rebuilt.copy_data(&mut out, 8);
    let out_bits: Vec<u32> = out.iter().map(|v| v.to_bits()).collect();
    assert_eq!(out_bits, bits);

    // Non-contiguous view: the transpose is saved in its logical order.
    let tt = t.tr();
    let (saved_t, _) = round_trip(&tt);
    assert_eq!(saved_t.shape, vec![4, 2]);
    let expected: Vec<u8> = [0, 4, 1, 5, 2, 6, 3, 7]
        .iter()
        .flat_map(|&i: &usize| bits[i].to_le_bytes())
        .collect();
    assert_eq!(saved_t.data, expected);

    // f64 with NaN payload, -0.0 and a denormal.
    let dbits: Vec<u64> = vec![
        0x7ff8_0000_dead_beef,
        0x8000_0000_0000_0000,
        1,
        0x4009_21fb_5444_2d18,
    ];
    let ddata: Vec<u8> = dbits.iter().flat_map(|b| b.to_le_bytes()).collect();
    let (saved, _) = round_trip(&Tensor::from_data_size(&ddata, &[4], Kind::Double));
    assert_eq!(saved.data, ddata);

    // Raw 16-bit floats: bf16 and f16 NaN payloads and -0.0.
    let hbits: Vec<u16> = vec![0x7fc1, 0x8000, 0x0001, 0x3f80, 0xff81, 0x7c01];
    let hdata: Vec<u8> = hbits.iter().flat_map(|b| b.to_le_bytes()).collect();
    for kind in [Kind::BFloat16, Kind::Half] {
        let (saved, _) = round_trip(&Tensor::from_data_size(&hdata, &[3, 2], kind));
        assert_eq!(saved.data, hdata);
    }

    let (saved, _) = round_trip(&Tensor::from_slice(&[i64::MIN, -1, 0, i64::MAX]));
    assert_eq!(saved.kind, SavedKind::Int64);
    let (saved, _) = round_trip(&Tensor::from_slice(&[i32::MIN, 7, i32::MAX]));
    assert_eq!(saved.kind, SavedKind::Int);
    let (saved, _) = round_trip(&Tensor::from_slice(&[-128i8, 0, 127]));
    assert_eq!(saved.data, vec![0x80, 0, 0x7f]);
    let (saved, _) = round_trip(&Tensor::from_slice(&[0u8, 1, 254, 255]).reshape([2, 2]));
    assert_eq!(saved.data, vec![0, 1, 254, 255]);
    let (saved, _) = round_trip(&Tensor::from_slice(&[true, false, true]));
    assert_eq!(saved.data, vec![1, 0, 1]);

    // Scalars and empty tensors.
    let (saved, _) = round_trip(&Tensor::from(2.5f32));
    assert!(saved.shape.is_empty());
    assert_eq!(saved.data, 2.5f32.to_le_bytes().to_vec());
    let (saved, _) = round_trip(&Tensor::zeros([0, 3], (Kind::Float, Device::Cpu)));
    assert!(saved.data.is_empty());

    // On a GPU (when there is one): from_tensor copies to the CPU first and
    // to_tensor puts the result back, bit for bit.
    if tch::Cuda::is_available() {
        let gpu = Device::Cuda(0);
        let saved = SavedTensor::from_tensor(&t.to_device(gpu).tr()).unwrap();
        assert_eq!(saved, saved_t);
        let back = saved.to_tensor(gpu).unwrap();
        assert_eq!(back.device(), gpu);
        assert_eq!(SavedTensor::from_tensor(&back).unwrap(), saved_t);
    }

    // Unsupported kinds are refused, not converted.
    let e = SavedTensor::from_tensor(&Tensor::zeros([2], (Kind::Int16, Device::Cpu))).unwrap_err();
    assert!(checkpoint_message(e).contains("cannot be checkpointed"));
}

#[test]
fn invalid_saved_tensors_are_refused() {
    let bad = |kind: SavedKind, shape: Vec<i64>, data: Vec<u8>| {
        let t = SavedTensor { kind, shape, data };
        checkpoint_message(t.to_tensor(Device::Cpu).unwrap_err())
    };
    assert!(bad(SavedKind::Float, vec![2], vec![0; 7]).contains("needs 8 data bytes"));
    assert!(bad(SavedKind::Float, vec![2], vec![0; 9]).contains("needs 8 data bytes"));
    assert!(bad(SavedKind::Float, vec![-1, -4], vec![0; 16]).contains("negative dimension"));
    assert!(bad(SavedKind::Float, vec![i64::MAX, 2], vec![]).contains("overflows"));
    assert!(bad(SavedKind::Double, vec![i64::MAX], vec![]).contains("too large"));
    assert!(bad(SavedKind::Uint8, vec![1 << 40], vec![0; 4]).contains("needs"));
    assert!(bad(SavedKind::Bool, vec![2], vec![1, 2]).contains("not 0 or 1"));
}

fn check_mutation(
    original: &[u8],
    mutated: &[u8],
    state: &State,
    crc_fixed: bool,
    counts: &mut [usize; 3],
) {
    match decode::<State>(PayloadKind::Session, mutated) {
        Err(Error::Checkpoint(_)) => counts[0] += 1,
        Err(other) => panic!("mutation rejected with a non-checkpoint error: {other:?}"),
        Ok(value) => {
            if mutated == original {
                counts[1] += 1;
                assert_eq!(value.tensors, state.tensors);
                assert_eq!(value.step, state.step);
            } else if crc_fixed {
                // A payload rewritten with a matching CRC may well be another
                // valid state; it must still rebuild or refuse its tensors.
                counts[2] += 1;
                for t in &value.tensors {
                    if let Ok(rebuilt) = t.to_tensor(Device::Cpu) {
                        assert_eq!(&SavedTensor::from_tensor(&rebuilt).unwrap(), t);
                    }
                }
            } else {
                // The CRC covers every byte of a format 3 file.
                panic!("a corrupted checkpoint was accepted");
            }
        }
    }
}

#[test]
fn mutated_checkpoints_are_rejected_without_panicking() {
    let state = sample_state();
    let valid = encode(PayloadKind::Session, &state).unwrap();
    let off = payload_offset();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    // rejected, identical, crc-fixed accepted
    let mut counts = [0usize; 3];
    let mut tried = 0usize;

    // Every truncation.
    for len in 0..valid.len() {
        check_mutation(&valid, &valid[..len], &state, false, &mut counts);
        tried += 1;
    }
    // Random single-byte changes (some leave the byte unchanged).
    for _ in 0..3000 {
        let mut b = valid.clone();
        let i = rng.below(b.len());
        b[i] = if rng.below(4) == 0 {
            rng.next() as u8
        } else {
            b[i] ^ (1 << rng.below(8))
        };
        check_mutation(&valid, &b, &state, false, &mut counts);
        tried += 1;
    }
    // Random multi-byte changes.
    for _ in 0..1000 {
        let mut b = valid.clone();
        for _ in 0..2 + rng.below(8) {
            let i = rng.below(b.len());
            b[i] = rng.next() as u8;
        }
        check_mutation(&valid, &b, &state, false, &mut counts);
        tried += 1;
    }
    // Header length fields set to huge or off-by-one values.
    let huge64 = [
        u64::MAX,
        u64::MAX / 2,
        1 << 40,
        1 << 31,
        (1 << 30) + 1,
        0,
        1,
    ];
    for v in huge64.iter().copied().chain([
        (valid.len() - off) as u64 + 1,
        (valid.len() - off) as u64 - 1,
    ]) {
        let mut b = valid.clone();
        b[off - 12..off - 4].copy_from_slice(&v.to_le_bytes());
        check_mutation(&valid, &b, &state, false, &mut counts);
        let mut longer = b.clone();
        longer.resize(longer.len() + 64, 0);
        check_mutation(&valid, &longer, &state, false, &mut counts);
        tried += 2;
    }
    for v in [u16::MAX, 0x8000, 0, 1, MOTH_VERSION.len() as u16 + 1] {
        let mut b = valid.clone();
        b[12..14].copy_from_slice(&v.to_le_bytes());
        check_mutation(&valid, &b, &state, false, &mut counts);
        tried += 1;
    }
    // Payload changes with a recomputed CRC, so that bincode sees them.
    let payload = &valid[off..];
    for _ in 0..1000 {
        let mut p = payload.to_vec();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(p.len());
            p[i] = rng.next() as u8;
        }
        if rng.below(3) == 0 {
            p.truncate(rng.below(p.len()));
        }
        check_mutation(&valid, &with_payload(&valid, &p), &state, true, &mut counts);
        tried += 1;
    }
    // Huge varint length prefixes (u64 and u32 markers) inside the payload.
    for _ in 0..500 {
        let mut p = payload.to_vec();
        let i = rng.below(p.len());
        let mut huge = p[..i].to_vec();
        if rng.below(2) == 0 {
            huge.push(253);
            huge.extend_from_slice(&(rng.next() | (1 << 62)).to_le_bytes());
        } else {
            huge.push(252);
            huge.extend_from_slice(&((rng.next() as u32) | (1 << 31)).to_le_bytes());
        }
        huge.extend_from_slice(&p.split_off(i + 1));
        check_mutation(
            &valid,
            &with_payload(&valid, &huge),
            &state,
            true,
            &mut counts,
        );
        tried += 1;
    }

    println!(
        "checkpoint fuzz: {tried} mutations tried, {} rejected, {} identical and decoded equal, \
         {} re-checksummed payloads accepted as other valid states",
        counts[0], counts[1], counts[2]
    );
    assert!(tried >= 5000);
    assert_eq!(counts.iter().sum::<usize>(), tried);
    assert!(counts[0] > tried * 9 / 10);
}

fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp."))
        .collect()
}

#[test]
fn atomic_write_replaces_content_and_leaves_no_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.ckpt");
    write_atomic(&path, b"first content, longer than the second").unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"first content, longer than the second"
    );
    write_atomic(&path, b"second").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"second");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("a.ckpt")]);

    // A failing write (missing directory) reports the path, leaves nothing.
    let missing = dir.path().join("no/such/dir/b.ckpt");
    match write_atomic(&missing, b"x") {
        Err(Error::Io { context, .. }) => assert!(context.contains("b.ckpt"), "{context}"),
        other => panic!("expected an I/O error, got {other:?}"),
    }
    // Renaming onto a directory fails after the temp file was written: it
    // must be cleaned up.
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("keep"), b"k").unwrap();
    assert!(write_atomic(&sub, b"x").is_err());
    assert!(temp_files(dir.path()).is_empty());
    assert!(sub.join("keep").exists());
}

#[test]
fn atomic_writes_get_the_permissions_of_a_plain_create() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain");
    std::fs::File::create(&plain).unwrap();
    let path = dir.path().join("a.ckpt");
    write_atomic(&path, b"x").unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), mode(&plain));
}

/// The pid of a process that has exited (and been reaped).
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[test]
fn a_write_removes_temp_files_of_dead_writers_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.ckpt");
    let dead = dead_pid();
    let me = std::process::id();
    let stale = [
        format!(".a.ckpt.tmp.{dead}.0"),
        format!(".a.ckpt.tmp.{dead}.7"),
    ];
    let kept = [
        format!(".a.ckpt.tmp.{me}.999"),  // a live writer's (ours)
        format!(".b.ckpt.tmp.{dead}.0"),  // another checkpoint's
        "a.ckpt.tmp.notes".to_string(),   // not a temp file name
        format!(".a.ckpt.tmp.x{dead}.0"), // not a pid
    ];
    for n in stale.iter().chain(&kept) {
        std::fs::write(dir.path().join(n), b"partial").unwrap();
    }
    write_atomic(&path, b"content").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"content");
    for n in &stale {
        assert!(!dir.path().join(n).exists(), "{n} should be gone");
    }
    for n in &kept {
        assert!(dir.path().join(n).exists(), "{n} should stay");
    }
}

const WRITER_ENV: &str = "MOTH_CKPT_WRITER_PATH";
const WRITER_READY: &str = "MOTH_CKPT_WRITER_READY";
const WRITER_DEAD: &str = "MOTH_CKPT_WRITER_DEAD";
const KILLS: usize = 100;

fn writer_state(i: u64) -> State {
    let values: Vec<f32> = (0..64 * 1024).map(|k| (k as u64 ^ i) as f32).collect();
    State {
        tensors: vec![f32_tensor(&[64, 1024], &values)],
        matrices: vec![vec![vec![i as f64; 4]; 4]],
        step: i,
        name: format!("writer-{i}"),
        flag: Some(i as u32),
    }
}

/// A writer: saves checkpoints to `path` in a tight loop until killed,
/// announcing its pid after the first completed save.
fn writer_loop(path: &Path, start: u64) -> ! {
    let mut i = start;
    loop {
        if let Err(e) = save(path, PayloadKind::Session, &writer_state(i)) {
            eprintln!("writer: {e}");
            // SAFETY: ends this forked process without running the test
            // harness's code.
            unsafe { libc::_exit(1) };
        }
        if i == start {
            println!("{WRITER_READY} {}", std::process::id());
        }
        i += 1;
    }
}

/// The child process of the crash test (the test binary itself). Starting
/// it loads libtorch, which takes ~0.3 s, so rather than one process per
/// kill it forks one writer per `go` line read on stdin, waits for the
/// writer's death and reports it. Does nothing unless the crash test set
/// the path variable.
#[test]
#[ignore = "child process of killed_writer_never_leaves_a_broken_checkpoint"]
fn checkpoint_writer_child() {
    let Ok(path) = std::env::var(WRITER_ENV) else {
        return;
    };
    let path = Path::new(&path);
    let mut lines = std::io::stdin().lines();
    let mut n = 0u64;
    while let Some(Ok(line)) = lines.next() {
        if line.trim() != "go" {
            break;
        }
        // SAFETY: the writer only saves files and prints; the harness's other
        // thread is blocked waiting for this test and holds no lock.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            writer_loop(path, n * 1_000_000);
        }
        let mut status = 0;
        // SAFETY: waits for the writer forked above.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(r, pid);
        let killed = libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL;
        println!("{WRITER_DEAD} {pid} {killed}");
        n += 1;
    }
}

/// Kills the writer server (and the writer it may have running) if the
/// crash test fails half-way.
struct ServerGuard {
    server: std::process::Child,
    writer: Option<libc::pid_t>,
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.writer.take() {
            // SAFETY: plain kill(2) of a pid the server reported.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

#[test]
fn killed_writer_never_leaves_a_broken_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.ckpt");
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    let mut server = Command::new(&exe)
        .args([
            "--ignored",
            "--exact",
            "checkpoint_writer_child",
            "--nocapture",
        ])
        .env(WRITER_ENV, &path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut commands = server.stdin.take().unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let mut guard = ServerGuard {
        server,
        writer: None,
    };
    let mut next_line = |prefix: &str| -> String {
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.trim().to_owned();
            }
        }
        panic!("writer server ended before printing {prefix}");
    };
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let mut survived = 0usize;
    let mut last_step = 0;
    for round in 0..KILLS {
        writeln!(commands, "go").unwrap();
        commands.flush().unwrap();
        // The writer's first save has completed once it reports ready.
        let pid: libc::pid_t = next_line(WRITER_READY).parse().unwrap();
        guard.writer = Some(pid);
        assert!(path.exists());
        std::thread::sleep(Duration::from_micros(rng.below(10_000) as u64));
        // SAFETY: plain kill(2) of the writer the server just forked.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        let dead = next_line(WRITER_DEAD);
        guard.writer = None;
        assert_eq!(dead, format!("{pid} true"), "writer did not die by SIGKILL");

        let state: State = load(&path, PayloadKind::Session)
            .unwrap_or_else(|e| panic!("checkpoint broken after kill {round}: {e}"));
        assert_eq!(state, writer_state(state.step), "content mixes two writes");
        assert!(state.step >= round as u64 * 1_000_000);
        last_step = state.step;
        survived += 1;
    }
    drop(commands);
    let leftovers = temp_files(dir.path()).len();
    println!(
        "crash test: {survived} SIGKILLs survived in {:.1} s, last step {last_step}, \
         {leftovers} orphaned temp files from killed writers",
        started.elapsed().as_secs_f64(),
    );
    assert!(survived >= 50);
    // Each writer's first save removed the files of the writers killed
    // before it: at most the last one's can remain.
    assert!(
        leftovers <= 1,
        "{leftovers} temp files of dead writers remain"
    );
    drop(guard);
}

/// Format 3 covers the whole header with the CRC: no single-byte change
/// anywhere in the file (magic, versions, the moth version string, kind,
/// length, checksum, payload) is accepted.
#[test]
fn every_single_byte_change_is_detected() {
    let valid = encode(PayloadKind::Session, &sample_state()).unwrap();
    let mut tried = 0;
    for i in 0..valid.len() {
        for change in (0..8).map(|bit| 1u8 << bit).chain([0xff]) {
            let mut b = valid.clone();
            b[i] ^= change;
            let e = decode::<State>(PayloadKind::Session, &b);
            assert!(
                matches!(e, Err(Error::Checkpoint(_))),
                "byte {i} ^ {change:#04x} was not detected"
            );
            tried += 1;
        }
    }
    println!(
        "{tried} single-byte changes of a {}-byte file: all rejected",
        valid.len()
    );
}

/// Runs `f` on another thread and fails the test if it takes more than
/// `secs` seconds (a blocked read would otherwise hang the test binary).
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .expect("loading did not return in time")
}

fn io_message(r: moth::Result<State>) -> String {
    match r {
        Err(Error::Io { context, source }) => format!("{context}: {source}"),
        other => panic!("expected an I/O error, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn files_that_are_not_regular_are_refused_without_reading_them() {
    let dir = tempfile::tempdir().unwrap();
    let m = io_message(load(dir.path(), PayloadKind::Session));
    assert!(m.contains("a directory, not a regular file"), "{m}");
    let m = io_message(load(
        &dir.path().join("no/such/dir/run.ckpt"),
        PayloadKind::Session,
    ));
    assert!(m.contains("no/such/dir/run.ckpt"), "{m}");

    // A FIFO without a writer: opening it must not wait for one.
    let fifo = dir.path().join("fifo.ckpt");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let m = io_message(within(10, move || load(&fifo, PayloadKind::Session)));
    assert!(m.contains("a FIFO, not a regular file"), "{m}");

    // A device that never ends: refused before anything is read.
    let m = io_message(within(10, || {
        load(Path::new("/dev/zero"), PayloadKind::Session)
    }));
    assert!(m.contains("/dev/zero") && m.contains("a device"), "{m}");
}

#[test]
fn a_file_whose_size_disagrees_with_its_header_is_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.ckpt");
    let valid = encode(PayloadKind::Session, &sample_state()).unwrap();
    let huge = 8u64 << 30;

    // A sparse 8 GiB file of zeros: its header is checked, nothing more.
    std::fs::File::create(&path).unwrap().set_len(huge).unwrap();
    let t = Instant::now();
    let m = checkpoint_message(load::<State>(&path, PayloadKind::Session).unwrap_err());
    assert!(m.contains("not a moth checkpoint"), "{m}");

    // A valid checkpoint followed by 8 GiB of holes: refused by its size.
    std::fs::write(&path, &valid).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(huge)
        .unwrap();
    let m = checkpoint_message(load::<State>(&path, PayloadKind::Session).unwrap_err());
    assert!(
        m.contains(&format!(
            "the file holds {huge} bytes, its header announces {}",
            valid.len()
        )),
        "{m}"
    );
    assert!(m.contains("big.ckpt"), "{m}");

    // A header announcing more than the payload limit, in a file that holds
    // that much (sparse): refused by the limit, not read.
    let off = payload_offset();
    let mut b = valid[..off].to_vec();
    let announced = MAX_PAYLOAD_LEN as u64 + 1;
    b[off - 12..off - 4].copy_from_slice(&announced.to_le_bytes());
    std::fs::write(&path, &b).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(off as u64 + announced)
        .unwrap();
    let m = checkpoint_message(load::<State>(&path, PayloadKind::Session).unwrap_err());
    assert!(m.contains("exceeds the"), "{m}");
    // Reading 8 GiB would take far longer than this.
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());

    // A short file is still a truncated payload.
    std::fs::write(&path, &valid[..valid.len() - 3]).unwrap();
    let m = checkpoint_message(load::<State>(&path, PayloadKind::Session).unwrap_err());
    assert!(m.contains("the file holds"), "{m}");
}
