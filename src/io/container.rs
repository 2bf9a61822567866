//! The on-disk checkpoint container and tensor serialisation.
//!
//! A checkpoint file is a small fixed header followed by one bincode payload:
//!
//! | bytes | field                                              |
//! |-------|----------------------------------------------------|
//! | 8     | magic `b"MOTHCKPT"`                                |
//! | 4     | format version, u32 little endian ([`FORMAT_VERSION`]) |
//! | 2 + n | moth version that wrote the file: u16 LE length, UTF-8 |
//! | 1     | payload kind ([`PayloadKind`])                     |
//! | 8     | payload length, u64 little endian                  |
//! | 4     | CRC32, u32 little endian: of every header byte before it, then of the payload |
//! | len   | the payload: `bincode::config::standard()` serde encoding |
//!
//! Nothing follows the payload. Format 3 is what this moth writes; it still
//! reads format 2, whose layout is the same but whose CRC32 covers the
//! payload only (so a damaged moth version string went unnoticed there).
//! [`decode`] checks every field in that order and says which one is wrong;
//! it never panics, whatever the input. [`read_checkpoint`] reads a file
//! header first and then exactly the payload the header announces, so a
//! device, a FIFO or a huge file is refused before its content is read.
//! [`write_atomic`] replaces a file so that a reader (or a process restarted
//! after a crash) sees either the old or the new content, never a mix.
//!
//! Tensors travel as [`SavedTensor`]: kind, shape and the raw little-endian
//! bytes of the elements, which round-trips bit-exactly (NaN payloads, -0.0,
//! denormals included).

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bincode::config;
use bincode::error::DecodeError;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The eight bytes every checkpoint file starts with.
pub const MAGIC: [u8; 8] = *b"MOTHCKPT";

/// The container format version this moth writes. Format 4 has format 3's
/// layout; its session payload carries the configuration's `recover_steps`.
pub const FORMAT_VERSION: u32 = 4;

/// The format version before the current one: the same container, whose
/// session payload has the configuration without `recover_steps`.
pub const NO_RECOVERY_VERSION: u32 = 3;

/// The older format version this moth still reads: the same layout, with a
/// CRC32 of the payload only.
pub const PAYLOAD_CRC_VERSION: u32 = 2;

/// The moth version written into every checkpoint header.
pub const MOTH_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The largest payload, in bytes, that [`encode`] writes and [`decode`]
/// accepts (1 GiB). It is also the largest memory budget bincode may charge
/// while decoding.
pub const MAX_PAYLOAD_LEN: usize = 1 << 30;

/// Header length without the moth version string: magic, format version,
/// version-string length, payload kind, payload length, checksum.
const FIXED_HEADER_LEN: usize = 8 + 4 + 2 + 1 + 8 + 4;

/// bincode 2 charges each decoded value its in-memory size against the
/// limit, not its encoded size: a one-byte varint `u128` is charged 16
/// bytes, a one-byte `u64` or length prefix 8. A valid payload of `n` bytes
/// is therefore charged at most `16 * n`, and the limit for a payload is that
/// rounded up to a power of two (at least 64 KiB, at most
/// [`MAX_PAYLOAD_LEN`]). A corrupted length prefix can thus make the decoder
/// reserve at most 32 times the payload length before it notices the data is
/// missing, never more than 1 GiB.
const CLAIM_FACTOR: usize = 16;

/// What a checkpoint holds; stored in the header so that a file of one kind
/// cannot be loaded as the other.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PayloadKind {
    /// A hardening session's state.
    Session = 1,
    /// The command-line trainer's model and optimiser state.
    Trainer = 2,
    /// A built-in model's architecture, class names and variables.
    Model = 3,
    /// A C ABI trainer's model and optimiser state (`moth_trainer_save`).
    Training = 4,
}

impl PayloadKind {
    /// The header byte for this kind.
    pub fn to_byte(self) -> u8 {
        self as u8
    }

    /// The kind a header byte stands for, if any.
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(PayloadKind::Session),
            2 => Some(PayloadKind::Trainer),
            3 => Some(PayloadKind::Model),
            4 => Some(PayloadKind::Training),
            _ => None,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            PayloadKind::Session => "session",
            PayloadKind::Trainer => "trainer",
            PayloadKind::Model => "model",
            PayloadKind::Training => "training state",
        }
    }
}

impl std::fmt::Display for PayloadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

/// The parsed header of a checkpoint whose header fields are all valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The container format version, from [`PAYLOAD_CRC_VERSION`] to
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// The moth version that wrote the file.
    pub moth_version: String,
    /// What the payload holds.
    pub kind: PayloadKind,
    /// The payload length in bytes.
    pub payload_len: u64,
    /// The CRC32 recorded by the writer (of the header and the payload, or
    /// of the payload only in format 2).
    pub checksum: u32,
    /// Where the payload starts in the file.
    pub payload_offset: usize,
}

pub(crate) fn reject(message: impl Into<String>) -> Error {
    Error::Checkpoint(message.into())
}

fn read_u16(bytes: &[u8], at: usize) -> u16 {
    let mut b = [0u8; 2];
    b.copy_from_slice(&bytes[at..at + 2]);
    u16::from_le_bytes(b)
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Parses and checks a checkpoint header: length, magic, format version,
/// moth version string and payload kind byte (any known kind). It does not
/// look at the payload; [`decode`] does the remaining checks.
pub fn parse_header(bytes: &[u8]) -> Result<Header> {
    if bytes.len() < FIXED_HEADER_LEN {
        return Err(reject(format!(
            "truncated header: {} bytes, a checkpoint header has at least {}",
            bytes.len(),
            FIXED_HEADER_LEN
        )));
    }
    if bytes[..8] != MAGIC {
        return Err(reject("not a moth checkpoint (bad magic bytes)"));
    }
    let format_version = read_u32(bytes, 8);
    if !(PAYLOAD_CRC_VERSION..=FORMAT_VERSION).contains(&format_version) {
        return Err(reject(format!(
            "format version {format_version}, this moth reads versions \
             {PAYLOAD_CRC_VERSION} to {FORMAT_VERSION}"
        )));
    }
    let version_len = read_u16(bytes, 12) as usize;
    let header_len = FIXED_HEADER_LEN + version_len;
    if bytes.len() < header_len {
        return Err(reject(format!(
            "truncated header: {} bytes, this header needs {}",
            bytes.len(),
            header_len
        )));
    }
    let moth_version = match std::str::from_utf8(&bytes[14..14 + version_len]) {
        Ok(v) => v.to_owned(),
        Err(_) => return Err(reject("moth version string in the header is not UTF-8")),
    };
    let at = 14 + version_len;
    let kind_byte = bytes[at];
    let kind = PayloadKind::from_byte(kind_byte)
        .ok_or_else(|| reject(format!("unknown payload kind {kind_byte}")))?;
    let payload_len = read_u64(bytes, at + 1);
    let checksum = read_u32(bytes, at + 9);
    Ok(Header {
        format_version,
        moth_version,
        kind,
        payload_len,
        checksum,
        payload_offset: header_len,
    })
}

/// Serialises `value` and wraps it in a checkpoint container of the given
/// kind. Fails when serde refuses the value or the payload exceeds
/// [`MAX_PAYLOAD_LEN`].
pub fn encode<T: Serialize>(kind: PayloadKind, value: &T) -> Result<Vec<u8>> {
    let payload = bincode::serde::encode_to_vec(value, config::standard())
        .map_err(|e| reject(format!("cannot encode the {kind} state: {e}")))?;
    if payload.len() > MAX_PAYLOAD_LEN {
        return Err(reject(format!(
            "the {kind} state encodes to {} bytes, more than the {MAX_PAYLOAD_LEN}-byte limit",
            payload.len()
        )));
    }
    let version = MOTH_VERSION.as_bytes();
    let version_len = u16::try_from(version.len())
        .map_err(|_| reject("moth version string longer than 65535 bytes"))?;
    let mut out = Vec::with_capacity(FIXED_HEADER_LEN + version.len() + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&version_len.to_le_bytes());
    out.extend_from_slice(version);
    out.push(kind.to_byte());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    let crc = checksum(FORMAT_VERSION, &out, &payload);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// The CRC32 a file of `format_version` records, given the header bytes
/// before the checksum field and the payload. Formats 3 and 4 cover both, so that
/// no byte of the file escapes the check.
pub fn checksum(format_version: u32, header: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    if format_version != PAYLOAD_CRC_VERSION {
        hasher.update(header);
    }
    hasher.update(payload);
    hasher.finalize()
}

fn decode_with_limit<T: DeserializeOwned, const LIMIT: usize>(
    payload: &[u8],
) -> std::result::Result<(T, usize), DecodeError> {
    bincode::serde::decode_from_slice(payload, config::standard().with_limit::<LIMIT>())
}

/// Decodes a payload under the smallest limit of the ladder that still lets
/// every valid payload of this length through (see [`CLAIM_FACTOR`]).
fn decode_payload<T: DeserializeOwned>(
    payload: &[u8],
) -> std::result::Result<(T, usize), DecodeError> {
    let budget = payload.len().saturating_mul(CLAIM_FACTOR);
    macro_rules! ladder {
        ($($shift:literal)*) => {
            $(
                if budget <= (1usize << $shift) {
                    return decode_with_limit::<T, { 1usize << $shift }>(payload);
                }
            )*
        };
    }
    ladder!(16 17 18 19 20 21 22 23 24 25 26 27 28 29);
    decode_with_limit::<T, MAX_PAYLOAD_LEN>(payload)
}

/// Checks a checkpoint container and decodes its payload.
///
/// The checks run in this order, each with its own message in
/// [`Error::Checkpoint`]: header long enough, magic bytes, format version,
/// payload kind, payload length against the bytes present (truncated file or
/// trailing bytes), CRC32 (of the header and payload; of the payload only
/// in format 2), then bincode decoding under a memory limit, which
/// must consume the whole payload. Never panics.
pub fn decode<T: DeserializeOwned>(kind: PayloadKind, bytes: &[u8]) -> Result<T> {
    let header = parse_header(bytes)?;
    if header.kind != kind {
        return Err(reject(format!(
            "payload kind mismatch: the file holds a {} checkpoint, a {} checkpoint was expected",
            header.kind, kind
        )));
    }
    let present = (bytes.len() - header.payload_offset) as u64;
    if header.payload_len > present {
        return Err(reject(format!(
            "truncated payload: the header announces {} bytes, the file holds {}",
            header.payload_len, present
        )));
    }
    if header.payload_len < present {
        return Err(reject(format!(
            "{} trailing bytes after the {}-byte payload",
            present - header.payload_len,
            header.payload_len
        )));
    }
    if header.payload_len > MAX_PAYLOAD_LEN as u64 {
        return Err(reject(format!(
            "payload of {} bytes exceeds the {MAX_PAYLOAD_LEN}-byte limit",
            header.payload_len
        )));
    }
    let payload = &bytes[header.payload_offset..];
    let actual = checksum(
        header.format_version,
        &bytes[..header.payload_offset - 4],
        payload,
    );
    if actual != header.checksum {
        return Err(reject(format!(
            "checksum mismatch: file corrupted (recorded {:08x}, computed {:08x})",
            header.checksum, actual
        )));
    }
    let (value, used) = decode_payload::<T>(payload).map_err(|e| {
        let why = match e {
            DecodeError::LimitExceeded => {
                "a length field asks for more memory than the payload can hold".to_owned()
            }
            other => other.to_string(),
        };
        reject(format!(
            "the {kind} state does not decode (written by moth {}): {why}",
            header.moth_version
        ))
    })?;
    if used != payload.len() {
        return Err(reject(format!(
            "the {kind} state ends after {used} of {} payload bytes (written by moth {})",
            payload.len(),
            header.moth_version
        )));
    }
    Ok(value)
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `.<file name>.tmp.`: what every temporary file of `name` starts with,
/// followed by the writer's pid.
fn temp_prefix(name: &std::ffi::OsStr) -> std::ffi::OsString {
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(name);
    prefix.push(".tmp.");
    prefix
}

/// Replaces the file at `path` with `bytes` atomically: writes a temporary
/// file `.<name>.tmp.<pid>.<random>` in the same directory, syncs it,
/// renames it over `path`, then syncs the directory. After a crash `path`
/// holds either its old content or `bytes`. The temporary file is removed
/// when a step before the rename fails (`tempfile` deletes it on drop); one
/// left by a writer that was killed is removed by the next successful write
/// of the same path. The file is created with mode `0o644` (less the
/// umask, which `open` applies), as `File::create` would, rather than
/// `tempfile`'s private `0o600`: a checkpoint is often shared.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().ok_or_else(|| {
        Error::io(
            format!("writing {}", path.display()),
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has no file name"),
        )
    })?;
    let dir = parent_dir(path);
    let mut prefix = temp_prefix(name);
    prefix.push(format!("{}.", std::process::id()));
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .permissions(fs::Permissions::from_mode(0o644))
        .tempfile_in(&dir)
        .map_err(|e| {
            Error::io(
                format!("creating a temporary file to write {}", path.display()),
                e,
            )
        })?;
    let shown = tmp.path().display().to_string();
    tmp.write_all(bytes)
        .map_err(|e| Error::io(format!("writing {shown}"), e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| Error::io(format!("syncing {shown}"), e))?;
    tmp.persist(path)
        .map_err(|e| Error::io(format!("renaming {shown} to {}", path.display()), e.error))?;
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("syncing directory {}", dir.display()), e))?;
    remove_stale_temps(path);
    Ok(())
}

/// Removes the temporary files that writers of `path` killed mid-write left
/// behind (`.NAME.tmp.PID.N` whose process no longer exists). Temporary files
/// of live processes, this one included, may be writes in progress and stay.
/// Best effort: a file that cannot be listed or removed is left alone. A
/// writer in another PID namespace (a container sharing the folder) looks
/// dead from here; if its temporary file is removed, its rename fails with
/// an error and the checkpoint it would have replaced stays whole.
fn remove_stale_temps(path: &Path) {
    let (Some(name), Ok(entries)) = (path.file_name(), fs::read_dir(parent_dir(path))) else {
        return;
    };
    let prefix = temp_prefix(name).to_string_lossy().into_owned();
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(rest) = file.to_str().and_then(|f| f.strip_prefix(&prefix)) else {
            continue;
        };
        let pid = rest.split('.').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|pid| pid > 0 && !process_exists(pid)) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Whether a process with this id exists (it may belong to another user).
fn process_exists(pid: u32) -> bool {
    // Linux only, like the rest of moth: a live process has a /proc entry.
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Reads a checkpoint file: its header first, then exactly the payload the
/// header announces. Only a regular file is read (a FIFO would block, a
/// device like `/dev/zero` never ends), and a file whose size is not header
/// plus payload, or whose payload exceeds [`MAX_PAYLOAD_LEN`], is refused
/// before the payload is read, so memory stays bounded by the file's own
/// claim. A path that cannot be opened or is not a regular file is an
/// [`Error::Io`] naming the path; a bad header an [`Error::Checkpoint`].
/// [`decode`] checks the checksum and the payload.
pub fn read_checkpoint(path: &Path) -> Result<Vec<u8>> {
    let io = |e| Error::io(format!("reading {}", path.display()), e);
    let named = |m: String| Error::Checkpoint(format!("{}: {m}", path.display()));
    let (mut file, size) = open_regular(path).map_err(io)?;
    let mut bytes = read_at_most(&mut file, FIXED_HEADER_LEN as u64).map_err(io)?;
    if bytes.len() == FIXED_HEADER_LEN && bytes[..8] == MAGIC {
        // The moth version string sits inside the header: fetch the rest.
        let rest = read_u16(&bytes, 12) as u64;
        bytes.extend(read_at_most(&mut file, rest).map_err(io)?);
    }
    let header = parse_header(&bytes).map_err(|e| match e {
        Error::Checkpoint(m) => named(m),
        other => other,
    })?;
    if header.payload_len > MAX_PAYLOAD_LEN as u64 {
        return Err(named(format!(
            "payload of {} bytes exceeds the {MAX_PAYLOAD_LEN}-byte limit",
            header.payload_len
        )));
    }
    let announced = header.payload_offset as u64 + header.payload_len;
    if size != announced {
        return Err(named(format!(
            "the file holds {size} bytes, its header announces {announced} \
             ({}-byte header and {}-byte payload)",
            header.payload_offset, header.payload_len
        )));
    }
    let payload = read_at_most(&mut file, header.payload_len).map_err(io)?;
    bytes.extend(payload);
    // The file may have changed since it was measured: decode sees a short
    // payload as truncated; a longer file is refused here.
    if read_at_most(&mut file, 1).map_err(io)?.len() == 1 {
        return Err(named("the file grew while it was read".to_owned()));
    }
    Ok(bytes)
}

/// Opens `path` for reading if it is a regular file, and returns its size.
fn open_regular(path: &Path) -> std::io::Result<(File, u64)> {
    // Without O_NONBLOCK, opening a FIFO waits for a writer, perhaps forever;
    // the flag changes nothing for a regular file.
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{}, not a regular file", file_type_name(meta.file_type())),
        ));
    }
    Ok((file, meta.len()))
}

fn file_type_name(t: fs::FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

/// Reads up to `limit` bytes (fewer only at the end of the file).
fn read_at_most(file: &mut File, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(limit.min(MAX_PAYLOAD_LEN as u64) as usize);
    Read::take(&mut *file, limit).read_to_end(&mut out)?;
    Ok(out)
}

/// Encodes `value` as a checkpoint of the given kind and writes it to `path`
/// with [`write_atomic`].
pub fn save<T: Serialize>(path: &Path, kind: PayloadKind, value: &T) -> Result<()> {
    let bytes = encode(kind, value)?;
    write_atomic(path, &bytes)
}

/// Reads and decodes the checkpoint at `path`; a rejection names the path.
pub fn load<T: DeserializeOwned>(path: &Path, kind: PayloadKind) -> Result<T> {
    let bytes = read_checkpoint(path)?;
    decode(kind, &bytes).map_err(|e| match e {
        Error::Checkpoint(m) => Error::Checkpoint(format!("{}: {m}", path.display())),
        other => other,
    })
}
