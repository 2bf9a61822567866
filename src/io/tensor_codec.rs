//! Tensors as dtype + shape + raw bytes: bit-exact, device-independent, and
//! checked on the way back in.

use serde::{Deserialize, Serialize};

use crate::io::container::reject;
use crate::Result;

/// The element types a [`SavedTensor`] can hold.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SavedKind {
    /// 32-bit float.
    Float,
    /// 64-bit float.
    Double,
    /// IEEE 16-bit float.
    Half,
    /// bfloat16.
    BFloat16,
    /// 64-bit signed integer.
    Int64,
    /// 32-bit signed integer.
    Int,
    /// 8-bit signed integer.
    Int8,
    /// 8-bit unsigned integer.
    Uint8,
    /// Boolean, one byte per element (0 or 1).
    Bool,
}

impl SavedKind {
    /// The libtorch element kind.
    pub fn to_kind(self) -> tch::Kind {
        match self {
            SavedKind::Float => tch::Kind::Float,
            SavedKind::Double => tch::Kind::Double,
            SavedKind::Half => tch::Kind::Half,
            SavedKind::BFloat16 => tch::Kind::BFloat16,
            SavedKind::Int64 => tch::Kind::Int64,
            SavedKind::Int => tch::Kind::Int,
            SavedKind::Int8 => tch::Kind::Int8,
            SavedKind::Uint8 => tch::Kind::Uint8,
            SavedKind::Bool => tch::Kind::Bool,
        }
    }

    /// The saved kind for a libtorch kind, if it can be saved.
    pub fn from_kind(kind: tch::Kind) -> Option<Self> {
        Some(match kind {
            tch::Kind::Float => SavedKind::Float,
            tch::Kind::Double => SavedKind::Double,
            tch::Kind::Half => SavedKind::Half,
            tch::Kind::BFloat16 => SavedKind::BFloat16,
            tch::Kind::Int64 => SavedKind::Int64,
            tch::Kind::Int => SavedKind::Int,
            tch::Kind::Int8 => SavedKind::Int8,
            tch::Kind::Uint8 => SavedKind::Uint8,
            tch::Kind::Bool => SavedKind::Bool,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn element_size(self) -> usize {
        match self {
            SavedKind::Float | SavedKind::Int => 4,
            SavedKind::Double | SavedKind::Int64 => 8,
            SavedKind::Half | SavedKind::BFloat16 => 2,
            SavedKind::Int8 | SavedKind::Uint8 | SavedKind::Bool => 1,
        }
    }
}

/// A tensor as plain data: element kind, shape and the elements' raw bytes
/// in row-major order (native byte order, little endian on every platform
/// moth runs on). Round-trips bit-exactly.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SavedTensor {
    /// Element type.
    pub kind: SavedKind,
    /// Dimensions; empty for a scalar.
    pub shape: Vec<i64>,
    /// `numel * element_size` bytes of element data.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// The element count of `shape`, or why it is not a valid shape.
fn checked_numel(shape: &[i64]) -> std::result::Result<usize, String> {
    let mut numel: usize = 1;
    for &d in shape {
        let d = usize::try_from(d).map_err(|_| format!("negative dimension in shape {shape:?}"))?;
        numel = numel
            .checked_mul(d)
            .ok_or_else(|| format!("element count of shape {shape:?} overflows"))?;
    }
    if numel > i64::MAX as usize {
        return Err(format!("element count of shape {shape:?} overflows"));
    }
    Ok(numel)
}

impl SavedTensor {
    /// Copies a tensor's kind, shape and data. Works for tensors on any
    /// device and for non-contiguous tensors; fails for element kinds that
    /// [`SavedKind`] does not cover.
    pub fn from_tensor(tensor: &tch::Tensor) -> Result<Self> {
        let kind = tensor.f_kind()?;
        let saved_kind = SavedKind::from_kind(kind)
            .ok_or_else(|| reject(format!("tensors of kind {kind:?} cannot be checkpointed")))?;
        let cpu = tensor.f_contiguous()?.f_to_device(tch::Device::Cpu)?;
        let shape = cpu.size();
        let numel = checked_numel(&shape).map_err(reject)?;
        let len = numel
            .checked_mul(saved_kind.element_size())
            .ok_or_else(|| reject(format!("tensor of shape {shape:?} is too large")))?;
        let mut data = vec![0u8; len];
        cpu.f_copy_data_u8(&mut data, numel)?;
        Ok(SavedTensor {
            kind: saved_kind,
            shape,
            data,
        })
    }

    /// The number of elements the shape describes, checked.
    pub fn numel(&self) -> Result<usize> {
        checked_numel(&self.shape).map_err(reject)
    }

    /// Rebuilds the tensor on `device`. Refuses (with [`Error::Checkpoint`])
    /// a negative or overflowing shape, data whose length is not the element
    /// count times the element size, and bool data other than 0 and 1.
    pub fn to_tensor(&self, device: tch::Device) -> Result<tch::Tensor> {
        let numel = self.numel()?;
        let expected = numel
            .checked_mul(self.kind.element_size())
            .ok_or_else(|| reject(format!("tensor of shape {:?} is too large", self.shape)))?;
        if self.data.len() != expected {
            return Err(reject(format!(
                "{:?} tensor of shape {:?} needs {} data bytes, the checkpoint holds {}",
                self.kind,
                self.shape,
                expected,
                self.data.len()
            )));
        }
        if self.kind == SavedKind::Bool {
            if let Some(b) = self.data.iter().find(|&&b| b > 1) {
                return Err(reject(format!("bool tensor holds byte {b}, not 0 or 1")));
            }
        }
        let t = tch::Tensor::f_from_data_size(&self.data, &self.shape, self.kind.to_kind())?;
        if device == tch::Device::Cpu {
            Ok(t)
        } else {
            Ok(t.f_to_device(device)?)
        }
    }
}

/// `#[serde(with = "serde_tensor")]` for a `tch::Tensor` field: the tensor
/// travels as a [`SavedTensor`] (the same bytes as a `SavedTensor` field)
/// and comes back on the CPU. What the values must satisfy is the owner's
/// to check after decoding.
pub mod serde_tensor {
    use serde::{de, ser, Deserialize, Deserializer, Serialize, Serializer};

    use super::SavedTensor;

    /// Serialises `tensor` as its [`SavedTensor`].
    pub fn serialize<S: Serializer>(tensor: &tch::Tensor, s: S) -> Result<S::Ok, S::Error> {
        SavedTensor::from_tensor(tensor)
            .map_err(ser::Error::custom)?
            .serialize(s)
    }

    /// Deserialises a [`SavedTensor`] into a CPU tensor.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<tch::Tensor, D::Error> {
        SavedTensor::deserialize(d)?
            .to_tensor(tch::Device::Cpu)
            .map_err(de::Error::custom)
    }
}
