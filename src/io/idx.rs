//! The IDX array format (MNIST, Fashion-MNIST), gzip or plain.

use std::io::Read;
use std::path::Path;

use crate::{Error, Result};

/// A parsed IDX array: its dimensions and raw bytes (element type u8).
#[derive(Debug, Clone, PartialEq)]
pub struct IdxArray {
    /// Dimension sizes, outermost first.
    pub dims: Vec<usize>,
    /// Row-major element bytes.
    pub data: Vec<u8>,
}

/// Checks the header at the start of `bytes`: the dimensions, the header's
/// length and the element count.
fn parse_header(bytes: &[u8], path: &Path) -> Result<(Vec<usize>, usize, usize)> {
    let bad = |m: String| Error::format(path, m);
    if bytes.len() < 4 {
        return Err(bad(format!("truncated IDX header ({} bytes)", bytes.len())));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad(
            "not an IDX file (magic must start with two zero bytes)".into(),
        ));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!(
            "unsupported IDX element type 0x{:02x} (only unsigned byte, 0x08)",
            bytes[2]
        )));
    }
    let ndim = bytes[3] as usize;
    if ndim == 0 {
        return Err(bad("IDX file declares zero dimensions".into()));
    }
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(bad(format!(
            "truncated IDX header: {ndim} dimensions need {header} bytes"
        )));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize)
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(format!("IDX dimensions {dims:?} overflow")))?;
    Ok((dims, header, count))
}

/// Parses an IDX byte stream whose element type is unsigned byte (0x08), the
/// only type MNIST-family files use. `path` only labels errors.
pub fn parse_idx(bytes: &[u8], path: &Path) -> Result<IdxArray> {
    let bad = |m: String| Error::format(path, m);
    let (dims, header, count) = parse_header(bytes, path)?;
    let body = &bytes[header..];
    if body.len() < count {
        return Err(bad(format!(
            "truncated IDX data: dimensions {dims:?} need {count} bytes, file has {}",
            body.len()
        )));
    }
    if body.len() > count {
        return Err(bad(format!(
            "IDX file has {} trailing bytes after dimensions {dims:?}",
            body.len() - count
        )));
    }
    Ok(IdxArray {
        dims,
        data: body.to_vec(),
    })
}

/// Reads an IDX file, transparently gunzipping it when it starts with the
/// gzip magic (so both `x.idx` and `x.idx.gz` work).
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let raw =
        std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::format(path, format!("corrupt gzip stream: {e}")))?;
        out
    } else {
        raw
    };
    parse_idx(&bytes, path)
}

/// The dimensions of an IDX file (gzip or plain) from its header alone:
/// what a caller needs before it reads the data.
pub fn read_idx_dims(path: &Path) -> Result<Vec<usize>> {
    let open = || {
        std::fs::File::open(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))
    };
    let mut magic = [0u8; 2];
    let gz = open()?.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
    let reader: Box<dyn Read> = match gz {
        true => Box::new(flate2::read::GzDecoder::new(open()?)),
        false => Box::new(open()?),
    };
    // At most 255 dimensions: 4 + 4 * 255 bytes of header.
    let mut head = Vec::new();
    reader
        .take(4 + 4 * 255)
        .read_to_end(&mut head)
        .map_err(|e| Error::format(path, format!("corrupt gzip stream: {e}")))?;
    parse_header(&head, path).map(|(dims, _, _)| dims)
}
