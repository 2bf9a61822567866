//! Triggers (backdoors): a mask shared by all channels and a pattern, the
//! stamping function and the trigger size (docs/algorithm.md section 1).

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::InputKind;
use crate::{Error, Result};

/// The `e` of the tanh parametrisation; keeps `atanh` finite at 0 and 1.
pub const TANH_EPS: f64 = 1e-7;

/// A static backdoor: `T(x) = clip((1 - m) * x + m * p, 0, 1)`. It
/// serialises as its two tensors; a decoded trigger is on the CPU and not
/// yet checked (pass it through [`Trigger::new`]).
#[derive(Debug, Serialize, Deserialize)]
pub struct Trigger {
    /// `[1, H, W]`, values in `[0, 1]`.
    #[serde(with = "crate::io::tensor_codec::serde_tensor")]
    pub mask: Tensor,
    /// `[C, H, W]`, values in `[0, 1]`.
    #[serde(with = "crate::io::tensor_codec::serde_tensor")]
    pub pattern: Tensor,
}

impl Clone for Trigger {
    fn clone(&self) -> Self {
        Trigger {
            mask: self.mask.copy(),
            pattern: self.pattern.copy(),
        }
    }
}

impl PartialEq for Trigger {
    fn eq(&self, other: &Self) -> bool {
        self.mask.size() == other.mask.size()
            && self.pattern.size() == other.pattern.size()
            && self.mask.equal(&other.mask)
            && self.pattern.equal(&other.pattern)
    }
}

impl Trigger {
    /// Builds a trigger after checking shapes (`[1,H,W]` and `[C,H,W]`) and that
    /// every value lies in `[0, 1]`.
    pub fn new(mask: Tensor, pattern: Tensor) -> Result<Self> {
        let (ms, ps) = (mask.size(), pattern.size());
        if ms.len() != 3 || ps.len() != 3 || ms[0] != 1 || ms[1..] != ps[1..] {
            return Err(Error::input_of(InputKind::WrongShape, format!(
                "trigger mask must be [1,H,W] and pattern [C,H,W] with the same H,W; got {ms:?} and {ps:?}"
            )));
        }
        for (name, t) in [("mask", &mask), ("pattern", &pattern)] {
            let lo = t.f_min()?.double_value(&[]);
            let hi = t.f_max()?.double_value(&[]);
            if !(lo >= 0.0 && hi <= 1.0) {
                return Err(Error::input_of(
                    InputKind::InvalidValue,
                    format!("trigger {name} values must lie in [0,1], found [{lo}, {hi}]"),
                ));
            }
        }
        Ok(Trigger {
            mask: mask.f_to_kind(Kind::Float)?,
            pattern: pattern.f_to_kind(Kind::Float)?,
        })
    }

    /// The all-zero trigger: what a failed generation returns. Stamping it is
    /// the identity.
    pub fn zeros(shape: [i64; 3], device: Device) -> Result<Self> {
        let [c, h, w] = shape;
        Ok(Trigger {
            mask: Tensor::f_zeros([1, h, w], (Kind::Float, device))?,
            pattern: Tensor::f_zeros([c, h, w], (Kind::Float, device))?,
        })
    }

    /// Input shape `[C, H, W]` this trigger applies to.
    pub fn input_shape(&self) -> [i64; 3] {
        let p = self.pattern.size();
        [p[0], p[1], p[2]]
    }

    /// Trigger size: `C * sum(m)`, the L1 norm of the channel-broadcast mask.
    pub fn size(&self) -> Result<f64> {
        let sum = self.mask.f_sum(Kind::Double)?.f_double_value(&[])?;
        Ok(self.input_shape()[0] as f64 * sum)
    }

    /// True for the all-zero trigger of a failed generation.
    pub fn is_zero(&self) -> Result<bool> {
        let sum = self
            .mask
            .f_abs()?
            .f_sum(Kind::Double)?
            .f_double_value(&[])?;
        Ok(sum == 0.0)
    }

    /// Applies the trigger to a batch `[n, C, H, W]`.
    pub fn stamp(&self, x: &Tensor) -> Result<Tensor> {
        stamp(x, &self.mask, &self.pattern)
    }

    /// Moves the trigger to a device.
    pub fn to_device(&self, device: Device) -> Result<Trigger> {
        Ok(Trigger {
            mask: self.mask.f_to_device(device)?,
            pattern: self.pattern.f_to_device(device)?,
        })
    }
}

/// `clip((1 - m) * x + m * p, 0, 1)`, broadcasting `m` over channels and any
/// leading batch dimensions.
pub fn stamp(x: &Tensor, mask: &Tensor, pattern: &Tensor) -> Result<Tensor> {
    let blended = x
        .f_mul(&mask.f_neg()?.f_add_scalar(1.0)?)?
        .f_add(&mask.f_mul(pattern)?)?;
    Ok(blended.f_clamp(0.0, 1.0)?)
}

/// Maps a value in `[0,1]` to the unconstrained parameter whose
/// `tanh(.)/(2 - e) + 0.5` gives it back.
pub fn to_param(v: &Tensor) -> Result<Tensor> {
    Ok(v.f_clamp(0.0, 1.0)?
        .f_sub_scalar(0.5)?
        .f_mul_scalar(2.0 - TANH_EPS)?
        .f_atanh()?)
}

/// The inverse of [`to_param`]: `tanh(t) / (2 - e) + 0.5`, clamped to
/// `[0, 1]` because in f32 `2 - e` rounds so that a saturated `tanh` lands a
/// hair outside.
pub fn from_param(t: &Tensor) -> Result<Tensor> {
    Ok(t.f_tanh()?
        .f_div_scalar(2.0 - TANH_EPS)?
        .f_add_scalar(0.5)?
        .f_clamp(0.0, 1.0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_blends_and_clips() {
        let x = Tensor::from_slice(&[0.2f32, 0.8, 0.5, 1.0]).reshape([1, 1, 2, 2]);
        let m = Tensor::from_slice(&[0.0f32, 1.0, 0.5, 0.25]).reshape([1, 2, 2]);
        let p = Tensor::from_slice(&[1.0f32, 0.0, 1.0, 0.0]).reshape([1, 2, 2]);
        let y = stamp(&x, &m, &p).unwrap();
        let got: Vec<f32> = y.flatten(0, -1).try_into().unwrap();
        let want = [0.2, 0.0, 0.75, 0.75];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?}");
        }
    }

    #[test]
    fn mask_broadcasts_over_channels_and_size_counts_them() {
        let m = Tensor::ones([1, 2, 2], (Kind::Float, Device::Cpu)).g_mul_scalar(0.5);
        let p = Tensor::ones([3, 2, 2], (Kind::Float, Device::Cpu));
        let t = Trigger::new(m, p).unwrap();
        assert!((t.size().unwrap() - 3.0 * 2.0).abs() < 1e-9);
        let x = Tensor::zeros([4, 3, 2, 2], (Kind::Float, Device::Cpu));
        let y = t.stamp(&x).unwrap();
        assert!((y.mean(Kind::Double).double_value(&[]) - 0.5).abs() < 1e-7);
    }

    #[test]
    fn zero_trigger_is_identity_with_size_zero() {
        let t = Trigger::zeros([1, 3, 3], Device::Cpu).unwrap();
        assert!(t.is_zero().unwrap());
        assert_eq!(t.size().unwrap(), 0.0);
        let x = Tensor::rand([2, 1, 3, 3], (Kind::Float, Device::Cpu));
        assert!(t.stamp(&x).unwrap().equal(&x));
    }

    #[test]
    fn rejects_bad_shapes_and_ranges() {
        let ok_m = Tensor::zeros([1, 2, 2], (Kind::Float, Device::Cpu));
        let p = Tensor::zeros([1, 3, 3], (Kind::Float, Device::Cpu));
        assert!(Trigger::new(ok_m.copy(), p).is_err());
        let big = Tensor::full([1, 2, 2], 1.5, (Kind::Float, Device::Cpu));
        let p = Tensor::zeros([1, 2, 2], (Kind::Float, Device::Cpu));
        assert!(Trigger::new(big, p.copy())
            .unwrap_err()
            .to_string()
            .contains("[0,1]"));
        let nan = Tensor::full([1, 2, 2], f64::NAN, (Kind::Float, Device::Cpu));
        assert!(Trigger::new(nan, p).is_err());
    }

    #[test]
    fn param_round_trip_stays_in_range() {
        let v = Tensor::from_slice(&[0.0f32, 0.25, 0.5, 1.0]);
        let back = from_param(&to_param(&v).unwrap()).unwrap();
        assert!(back.allclose(&v, 1e-5, 1e-6, false));
        let big = from_param(&Tensor::from_slice(&[1e9f32, -1e9])).unwrap();
        assert!(big.min().double_value(&[]) >= 0.0 && big.max().double_value(&[]) <= 1.0);
    }
}
