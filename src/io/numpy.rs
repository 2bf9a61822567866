//! NumPy arrays: one `.npz` archive holding `x_train`, `y_train`, `x_test`
//! and `y_test` (the Keras convention, `np.savez(path, x_train=..., ...)`),
//! or a folder holding those four as `.npy` files.
//!
//! Images are `[n, H, W]` (one channel), or `[n, C, H, W]` / `[n, H, W, C]`
//! with C = 1 or 3; the layout is given (`nchw`, `nhwc`) or inferred from
//! where the channel axis can be, and refused when both readings fit.
//! Pixels are uint8 (divided by 255) or float32/float64 already in
//! `[0, 1]`: normalisation belongs inside the model, after stamping
//! (docs/algorithm.md section 1), so normalised data is refused. Labels are
//! any integer type. Arrays are read whole (a compressed archive cannot be
//! read per batch).

use std::io::Read;
use std::path::Path;

use npyz::{NpyFile, Order, TypeChar};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::io::dataset::Split;
use crate::{Error, Result};

/// Where the channel axis of a 4-D image array is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layout {
    /// `[n, C, H, W]` (PyTorch's).
    Nchw,
    /// `[n, H, W, C]` (NumPy images, TensorFlow's).
    Nhwc,
}

impl Layout {
    /// `nchw` or `nhwc`.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Nchw => "nchw",
            Layout::Nhwc => "nhwc",
        }
    }

    /// The layout `[n, a, b, c]` can be read in: the given one, else the
    /// only one whose channel axis holds 1 or 3.
    pub fn of(dims: [u64; 4], given: Option<Layout>) -> std::result::Result<Layout, String> {
        let is_channels = |d: u64| d == 1 || d == 3;
        let fits = |l: Layout| match l {
            Layout::Nchw => is_channels(dims[1]),
            Layout::Nhwc => is_channels(dims[3]),
        };
        match given {
            Some(l) if fits(l) => Ok(l),
            Some(l) => Err(format!(
                "images of shape {dims:?} read as {} have no channel axis of 1 or 3",
                l.name()
            )),
            None => match (fits(Layout::Nchw), fits(Layout::Nhwc)) {
                (true, false) => Ok(Layout::Nchw),
                (false, true) => Ok(Layout::Nhwc),
                (true, true) => Err(format!(
                    "images of shape {dims:?} could be NCHW or NHWC: say which with --layout"
                )),
                (false, false) => Err(format!(
                    "images of shape {dims:?} have no channel axis of 1 or 3 (first or last)"
                )),
            },
        }
    }
}

/// The array names of a split.
fn names(split: Split) -> (&'static str, &'static str) {
    match split {
        Split::Train => ("x_train", "y_train"),
        Split::Test => ("x_test", "y_test"),
    }
}

/// One split read from NumPy arrays.
pub struct NumpySplit {
    /// `[n, C, H, W]` float in `[0, 1]`.
    pub images: Tensor,
    /// Labels, in sample order.
    pub labels: Vec<i64>,
    /// The layout the images were read in (None for 3-D arrays).
    pub layout: Option<Layout>,
    /// What the file held, in words (`uint8 [60000, 28, 28]`).
    pub stored: String,
}

/// Reads a split from an `.npz` archive or a folder of `.npy` files.
pub fn read_split(path: &Path, split: Split, layout: Option<Layout>) -> Result<NumpySplit> {
    let (x, y) = names(split);
    let (images, labels) = if path.is_dir() {
        let open = |name: &str| -> Result<NpyFile<std::io::BufReader<std::fs::File>>> {
            let p = path.join(format!("{name}.npy"));
            let f = std::fs::File::open(&p)
                .map_err(|e| Error::io(format!("reading {}", p.display()), e))?;
            NpyFile::new(std::io::BufReader::new(f))
                .map_err(|e| Error::format(&p, format!("not a NumPy array: {e}")))
        };
        (
            read_array(open(x)?, &path.join(format!("{x}.npy")))?,
            read_array(open(y)?, &path.join(format!("{y}.npy")))?,
        )
    } else {
        let mut npz = npyz::npz::NpzArchive::open(path)
            .map_err(|e| Error::format(path, format!("not a NumPy .npz archive: {e}")))?;
        let mut member = |name: &str| -> Result<Array> {
            let held: Vec<String> = npz.array_names().map(str::to_string).collect();
            let file = npz
                .by_name(name)
                .map_err(|e| Error::format(path, format!("reading array {name}: {e}")))?
                .ok_or_else(|| {
                    Error::format(
                        path,
                        format!(
                            "has no array {name} (it holds {}; expected x_train, y_train, x_test, y_test)",
                            held.join(", ")
                        ),
                    )
                })?;
            read_array(file, &path.join(name))
        };
        (member(x)?, member(y)?)
    };
    to_split(images, labels, layout, path)
}

/// Element values of an array, as read.
enum Values {
    U8(Vec<u8>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Int(Vec<i64>),
}

struct Array {
    shape: Vec<u64>,
    values: Values,
    dtype: String,
}

fn read_array<R: Read>(file: NpyFile<R>, path: &Path) -> Result<Array> {
    let bad = |m: String| Error::format(path, m);
    if file.order() == Order::Fortran && file.shape().len() > 1 {
        return Err(bad(
            "is stored in Fortran order: save it with np.ascontiguousarray".into(),
        ));
    }
    let shape = file.shape().to_vec();
    let npyz::DType::Plain(ts) = file.dtype() else {
        return Err(bad("holds structured records, not plain numbers".into()));
    };
    let dtype = ts.to_string();
    let io = |e: std::io::Error| bad(format!("reading the array: {e}"));
    let ints = |v: Vec<i64>| Values::Int(v);
    let values = match (ts.type_char(), ts.size_field()) {
        (TypeChar::Uint, 1) => Values::U8(file.into_vec::<u8>().map_err(io)?),
        (TypeChar::Float, 4) => Values::F32(file.into_vec::<f32>().map_err(io)?),
        (TypeChar::Float, 8) => Values::F64(file.into_vec::<f64>().map_err(io)?),
        (TypeChar::Int, 1) => ints(widen(file.into_vec::<i8>().map_err(io)?)),
        (TypeChar::Int, 2) => ints(widen(file.into_vec::<i16>().map_err(io)?)),
        (TypeChar::Int, 4) => ints(widen(file.into_vec::<i32>().map_err(io)?)),
        (TypeChar::Int, 8) => ints(file.into_vec::<i64>().map_err(io)?),
        (TypeChar::Uint, 2) => ints(widen(file.into_vec::<u16>().map_err(io)?)),
        (TypeChar::Uint, 4) => ints(widen(file.into_vec::<u32>().map_err(io)?)),
        (TypeChar::Uint, 8) => ints(
            file.into_vec::<u64>()
                .map_err(io)?
                .into_iter()
                .map(|v| i64::try_from(v).unwrap_or(i64::MAX))
                .collect(),
        ),
        _ => {
            return Err(bad(format!(
                "has element type {dtype}, which moth does not read"
            )))
        }
    };
    Ok(Array {
        shape,
        values,
        dtype,
    })
}

fn widen<T: Into<i64>>(v: Vec<T>) -> Vec<i64> {
    v.into_iter().map(Into::into).collect()
}

/// The images as `[n, C, H, W]` floats in `[0, 1]`, and the labels.
fn to_split(
    images: Array,
    labels: Array,
    layout: Option<Layout>,
    path: &Path,
) -> Result<NumpySplit> {
    let bad = |m: String| Error::format(path, m);
    let stored = format!("{} {:?}", images.dtype, images.shape);
    let (shape, layout) = match images.shape.as_slice() {
        &[n, h, w] => ([n, 1, h, w], None),
        &[n, a, b, c] => {
            let l = Layout::of([n, a, b, c], layout).map_err(bad)?;
            match l {
                Layout::Nchw => ([n, a, b, c], Some(l)),
                Layout::Nhwc => ([n, c, a, b], Some(l)),
            }
        }
        d => return Err(bad(format!("images must be 3-D or 4-D, have shape {d:?}"))),
    };
    let n = shape[0];
    let labels = match labels.values {
        Values::Int(v) if labels.shape.len() == 1 => v,
        Values::U8(v) if labels.shape.len() == 1 => widen(v),
        _ => {
            return Err(bad(format!(
                "labels must be a 1-D integer array, are {} {:?}",
                labels.dtype, labels.shape
            )))
        }
    };
    if labels.len() as u64 != n {
        return Err(bad(format!("{n} images but {} labels", labels.len())));
    }
    if let Some(bad_label) = labels.iter().find(|&&l| l < 0) {
        return Err(bad(format!("label {bad_label} is negative")));
    }
    let (tensor, range) = match images.values {
        Values::U8(v) => (
            Tensor::f_from_slice(&v)?
                .f_to_kind(Kind::Float)?
                .f_div_scalar(255.0)?,
            None,
        ),
        Values::F32(v) => (
            Tensor::f_from_slice(&v)?,
            Some(min_max(v.iter().map(|&x| f64::from(x)))),
        ),
        Values::F64(v) => (
            Tensor::f_from_slice(&v)?.f_to_kind(Kind::Float)?,
            Some(min_max(v.iter().copied())),
        ),
        Values::Int(_) => {
            return Err(bad(format!(
                "images must be uint8 or float, are {}",
                images.dtype
            )))
        }
    };
    if let Some((lo, hi)) = range {
        if !(lo >= 0.0 && hi <= 1.0) {
            return Err(bad(format!(
                "float pixels must lie in [0, 1], found [{lo}, {hi}]: give moth unnormalised \
                 images (normalisation belongs inside the model)"
            )));
        }
    }
    let dims: Vec<i64> = images.shape.iter().map(|&d| d as i64).collect();
    let tensor = tensor.f_reshape(&dims)?;
    let tensor = match (layout, dims.len()) {
        (Some(Layout::Nhwc), _) => tensor.f_permute([0, 3, 1, 2])?.f_contiguous()?,
        (_, 3) => tensor.f_unsqueeze(1)?,
        _ => tensor,
    };
    debug_assert_eq!(tensor.size(), shape.map(|d| d as i64).to_vec());
    Ok(NumpySplit {
        images: tensor,
        labels,
        layout,
        stored,
    })
}

/// The smallest and largest value; NaN when any value is NaN (so that the
/// range check refuses it).
fn min_max(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        if v.is_nan() || lo.is_nan() {
            (f64::NAN, f64::NAN)
        } else {
            (lo.min(v), hi.max(v))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_inferred_only_when_one_reading_fits() {
        assert_eq!(Layout::of([5, 3, 32, 32], None), Ok(Layout::Nchw));
        assert_eq!(Layout::of([5, 32, 32, 3], None), Ok(Layout::Nhwc));
        assert!(Layout::of([5, 3, 4, 3], None)
            .unwrap_err()
            .contains("--layout"));
        assert_eq!(
            Layout::of([5, 3, 4, 3], Some(Layout::Nhwc)),
            Ok(Layout::Nhwc)
        );
        assert!(Layout::of([5, 32, 32, 3], Some(Layout::Nchw)).is_err());
        assert!(Layout::of([5, 8, 8, 8], None).is_err());
    }
}
