//! Session checkpoints: a resumed session equals an uninterrupted one, a
//! golden file keeps loading, and damaged files are refused without panics.

mod common;

use common::*;
use moth::io::container::{checksum, parse_header, FORMAT_VERSION};
use moth::session::{Method, Session, SessionConfig, SessionSpec};
use moth::Error;

fn config() -> SessionConfig {
    small_config(Method::Moth, 21, 30, 20, 8)
}

fn spec() -> SessionSpec {
    three_class_spec()
}

/// Runs steps `from..to` on `s`, returning every output and report.
fn drive(s: &mut Session, from: u64, to: u64) -> Vec<(tch::Tensor, String)> {
    let mut model = three_class_model();
    (from..to)
        .map(|step| {
            let (x, y) = labelled_batch(10, 100 + step as i64);
            let h = s.harden_batch(&mut model, &x, &y).unwrap();
            (
                h.inputs,
                format!("{:?} {:?}", h.report.phase, h.report.directions),
            )
        })
        .collect()
}

fn state_of(s: &Session) -> String {
    format!(
        "{:?} {} {:?} {:?} {:?}",
        s.phase(),
        s.step(),
        s.scheduler(),
        s.bounds(),
        s.accuracy()
    )
}

#[test]
fn resumed_session_equals_uninterrupted_one() {
    const TOTAL: u64 = 10;
    let mut straight = Session::new(config(), spec()).unwrap();
    let reference = drive(&mut straight, 0, TOTAL);
    let reference_bytes_state = state_of(&straight);
    // k = 1: inside the warm-up; 3: warm-up just ended (period boundary);
    // 4 and 5: mid-period; 6: period boundary.
    for k in [1u64, 3, 4, 5, 6] {
        let mut first = Session::new(config(), spec()).unwrap();
        let head = drive(&mut first, 0, k);
        let bytes = first.to_bytes().unwrap();
        drop(first);
        let mut resumed = Session::from_bytes(&bytes, Some(spec())).unwrap();
        assert_eq!(resumed.step(), k);
        let tail = drive(&mut resumed, k, TOTAL);
        for (i, ((a, ra), (b, rb))) in reference.iter().zip(head.iter().chain(&tail)).enumerate() {
            assert_eq!(ra, rb, "report of step {i} after resuming at {k}");
            assert!(
                a.equal(b),
                "stamped batch of step {i} after resuming at {k}"
            );
        }
        assert_eq!(
            state_of(&resumed),
            reference_bytes_state,
            "final state after resuming at {k}"
        );
        // The caches hold bit-identical triggers.
        for ((ka, (sa, ta)), (kb, (sb, tb))) in straight.cache().iter().zip(resumed.cache().iter())
        {
            assert_eq!((ka, sa), (kb, sb));
            assert_eq!(ta, tb);
        }
    }
}

#[test]
fn checkpoint_for_another_model_is_refused_with_the_reason() {
    let s = Session::new(config(), spec()).unwrap();
    let bytes = s.to_bytes().unwrap();
    let e = Session::from_bytes(
        &bytes,
        Some(SessionSpec {
            num_classes: 10,
            ..spec()
        }),
    )
    .unwrap_err();
    assert!(e.to_string().contains("3 classes, the model has 10"), "{e}");
    let e = Session::from_bytes(
        &bytes,
        Some(SessionSpec {
            input_shape: [3, 4, 4],
            ..spec()
        }),
    )
    .unwrap_err();
    assert!(e.to_string().contains("inputs"), "{e}");
    assert!(Session::from_bytes(&bytes, None).is_ok());
}

#[test]
fn save_and_load_through_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.ckpt");
    let mut s = Session::new(config(), spec()).unwrap();
    drive(&mut s, 0, 4);
    s.save(&path).unwrap();
    let back = Session::load(&path, Some(spec())).unwrap();
    assert_eq!(state_of(&back), state_of(&s));
    let e = Session::load(&dir.path().join("missing"), None).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn damaged_session_checkpoints_are_refused_without_panicking() {
    let mut s = Session::new(config(), spec()).unwrap();
    drive(&mut s, 0, 5);
    let good = s.to_bytes().unwrap();
    let header = parse_header(&good).unwrap();
    let off = header.payload_offset;
    let mut rng = 0x9e3779b97f4a7c15u64;
    let (mut tried, mut rejected, mut accepted) = (0, 0, 0);
    // Every truncation (cheap: most are refused by length checks).
    for len in (0..good.len()).step_by(7) {
        tried += 1;
        assert!(Session::from_bytes(&good[..len], None).is_err());
        rejected += 1;
    }
    // Random byte damage, with the checksum fixed up half of the time so
    // that the payload decoder and the state validation see it.
    for i in 0..3000 {
        let mut b = good.clone();
        for _ in 0..(1 + xorshift(&mut rng) % 3) {
            let at = off + (xorshift(&mut rng) as usize) % (b.len() - off);
            b[at] ^= 1 << (xorshift(&mut rng) % 8);
        }
        if i % 2 == 0 {
            let crc = checksum(header.format_version, &b[..off - 4], &b[off..]);
            b[off - 4..off].copy_from_slice(&crc.to_le_bytes());
        }
        tried += 1;
        match Session::from_bytes(&b, Some(spec())) {
            Err(_) => rejected += 1,
            Ok(restored) => {
                // A mutation that still decodes must be a coherent session.
                assert!(restored.scheduler().validate(3).is_ok());
                accepted += 1;
            }
        }
    }
    println!("{tried} damaged session checkpoints: {rejected} rejected, {accepted} decoded to a valid state");
    assert!(rejected > tried / 2);
}

/// Written by moth before the CRC covered the header (format 2): still read.
const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/session-v2.ckpt");
/// Written by moth before recovery (format 3): still read.
const GOLDEN_V3: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/session-v3.ckpt");
/// Written by this moth (format 4).
const GOLDEN_V4: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/session-v4.ckpt");
/// Written by moth before multi-pair periods (format 1): refused by name.
const GOLDEN_V1: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/session-v1.ckpt");

#[test]
fn a_checkpoint_of_the_previous_format_is_refused_with_its_version() {
    let bytes = std::fs::read(GOLDEN_V1).expect("tests/golden/session-v1.ckpt is committed");
    let e = Session::from_bytes(&bytes, Some(spec())).unwrap_err();
    assert!(matches!(e, Error::Checkpoint(_)), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("format version 1") && msg.contains("versions 2 to 4"),
        "{msg}"
    );
}

/// A committed golden file must keep loading: a change of the format
/// needs a new FORMAT_VERSION and a new golden file.
fn check_golden(path: &str) {
    let bytes = std::fs::read(path).expect("the golden file is committed");
    let s = Session::from_bytes(&bytes, Some(spec())).unwrap();
    assert_eq!(s.step(), 5);
    assert_eq!(s.config().seed, 21);
    assert!(matches!(
        s.phase(),
        moth::session::Phase::Orthogonalize { .. }
    ));
    assert!(s.cache().len() >= 4);
    // Resuming from it works.
    let mut s = s;
    drive(&mut s, 5, 7);
    assert_eq!(s.step(), 7);
}

#[test]
fn golden_checkpoint_still_loads() {
    check_golden(GOLDEN);
}

/// A format 3 file gets the configuration's fields of its time and the
/// paper's stopping rule (no recovery).
#[test]
fn golden_v3_checkpoint_loads_without_recovery() {
    let bytes = std::fs::read(GOLDEN_V3).unwrap();
    assert_eq!(parse_header(&bytes).unwrap().format_version, 3);
    check_golden(GOLDEN_V3);
    let s = Session::from_bytes(&bytes, Some(spec())).unwrap();
    assert_eq!(s.config().recover_steps, 0);
}

#[test]
fn golden_v4_checkpoint_loads() {
    let bytes = std::fs::read(GOLDEN_V4).unwrap();
    assert_eq!(parse_header(&bytes).unwrap().format_version, FORMAT_VERSION);
    check_golden(GOLDEN_V4);
    let s = Session::from_bytes(&bytes, Some(spec())).unwrap();
    assert_eq!(s.config().recover_steps, 7, "the field format 4 added");
}

/// Every single-byte change of a format 3 or 4 file, anywhere (the moth
/// version string in the header included), is refused as a damaged
/// checkpoint.
#[test]
fn any_single_byte_change_of_a_v3_or_v4_file_is_detected() {
    for path in [GOLDEN_V3, GOLDEN_V4] {
        every_byte_change_is_refused(path);
    }
}

fn every_byte_change_is_refused(path: &str) {
    let good = std::fs::read(path).unwrap();
    for i in 0..good.len() {
        for change in [0x01u8, 0x80, 0xff] {
            let mut b = good.clone();
            b[i] ^= change;
            let e = Session::from_bytes(&b, Some(spec()));
            assert!(
                matches!(e, Err(Error::Checkpoint(_))),
                "byte {i} ^ {change:#04x} of {} was not detected",
                good.len()
            );
        }
    }
    println!(
        "{} single-byte changes of {path}: all refused",
        good.len() * 3
    );
}

/// Writes the golden file of the current format (run by hand with --ignored
/// when the format version changes).
#[test]
#[ignore]
fn regenerate_golden_checkpoint() {
    let cfg = SessionConfig {
        recover_steps: 7,
        ..config()
    };
    let mut s = Session::new(cfg, spec()).unwrap();
    drive(&mut s, 0, 5);
    s.save(std::path::Path::new(GOLDEN_V4)).unwrap();
}
