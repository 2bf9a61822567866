//! Checks of what a caller hands a session: batches, labels, and the
//! outputs of its model.

use tch::{Device, Kind, Tensor};

use super::{SessionSpec, MAX_CLASSES};
use crate::error::InputKind;
use crate::torch::model::{Backprop, Classifier};
use crate::{Error, Result};

/// The most input values (`C * H * W`) a session accepts: triggers and
/// their sizes are computed over them, and beyond this the products that
/// size tensors overflow long before memory runs out.
pub const MAX_INPUT_VALUES: i64 = 1 << 28;

impl SessionSpec {
    /// Checks the class count (2 to [`MAX_CLASSES`]) and the input shape
    /// (every dimension positive, `C * H * W` at most [`MAX_INPUT_VALUES`]).
    pub fn validate(&self) -> Result<()> {
        if self.num_classes < 2 || self.num_classes > MAX_CLASSES {
            return Err(Error::Config(format!(
                "need between 2 and {MAX_CLASSES} classes, got {}",
                self.num_classes
            )));
        }
        let [c, h, w] = self.input_shape;
        if c <= 0 || h <= 0 || w <= 0 {
            return Err(Error::Config(format!(
                "input shape {c}x{h}x{w}: every dimension must be positive"
            )));
        }
        match c.checked_mul(h).and_then(|ch| ch.checked_mul(w)) {
            Some(v) if v <= MAX_INPUT_VALUES => Ok(()),
            _ => Err(Error::Config(format!(
                "input shape {c}x{h}x{w} has more than {MAX_INPUT_VALUES} values"
            ))),
        }
    }

    /// Checks a batch against the session's spec with a single host read;
    /// returns the labels.
    pub(super) fn validate_batch(&self, x: &Tensor, y: &Tensor) -> Result<Vec<i64>> {
        let [c, h, w] = self.input_shape;
        let xs = x.size();
        if xs.len() != 4 || xs[1..] != [c, h, w] {
            return Err(Error::input_of(
                InputKind::WrongShape,
                format!("batch must be [n, {c}, {h}, {w}], got {xs:?}"),
            ));
        }
        if xs[0] == 0 {
            return Err(Error::input_of(InputKind::WrongShape, "batch is empty"));
        }
        if !x.is_floating_point() {
            return Err(Error::input_of(
                InputKind::WrongDtype,
                format!("batch must hold floating-point pixels, got {:?}", x.kind()),
            ));
        }
        if y.size() != [xs[0]] {
            return Err(Error::input_of(
                InputKind::WrongShape,
                format!("labels must be [{}], got {:?}", xs[0], y.size()),
            ));
        }
        if !matches!(
            y.kind(),
            Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8
        ) {
            return Err(Error::input_of(
                InputKind::WrongDtype,
                format!("labels must be integers, got {:?}", y.kind()),
            ));
        }
        let finite = x.f_isfinite()?.f_all()?.f_to_kind(Kind::Double)?;
        let stats = Tensor::f_stack(
            &[
                finite.f_to_device(Device::Cpu)?,
                x.f_min()?
                    .f_to_kind(Kind::Double)?
                    .f_to_device(Device::Cpu)?,
                x.f_max()?
                    .f_to_kind(Kind::Double)?
                    .f_to_device(Device::Cpu)?,
            ],
            0,
        )?;
        let stats = Vec::<f64>::try_from(&stats)?;
        if stats[0] != 1.0 {
            return Err(Error::input_of(
                InputKind::InvalidValue,
                "batch holds NaN or infinite values",
            ));
        }
        if stats[1] < 0.0 || stats[2] > 1.0 {
            return Err(Error::input_of(
                InputKind::InvalidValue,
                format!(
                    "pixels must be in [0, 1] (normalise inside the model), found [{}, {}]",
                    stats[1], stats[2]
                ),
            ));
        }
        let labels = Vec::<i64>::try_from(&y.f_to_kind(Kind::Int64)?.f_to_device(Device::Cpu)?)?;
        let n = self.num_classes as i64;
        if let Some(bad) = labels.iter().find(|&&l| l < 0 || l >= n) {
            return Err(Error::input_of(
                InputKind::LabelOutOfRange,
                format!("label {bad} out of range for {n} classes"),
            ));
        }
        Ok(labels)
    }
}

/// The caller's model as a step sees it: every forward pass must return
/// `[n, num_classes]` logits for `n` inputs. A model for another class
/// count would otherwise fail inside libtorch (a target beyond its logits)
/// or, with more logits, be hardened against the wrong classes.
pub(super) struct CheckedModel<'a> {
    pub(super) inner: &'a mut dyn Classifier,
    pub(super) num_classes: usize,
}

impl Classifier for CheckedModel<'_> {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let logits = self.inner.forward(x)?;
        let (n, k) = (x.size().first().copied().unwrap_or(0), self.num_classes);
        let got = logits.size();
        if got != [n, k as i64] {
            return Err(Error::input_of(
                InputKind::WrongShape,
                format!(
                    "the model returned logits of shape {got:?} for {n} inputs; the session \
                     was made for {k} classes, so they must be [{n}, {k}]"
                ),
            ));
        }
        Ok(logits)
    }

    fn set_train(&mut self, train: bool) -> Result<()> {
        self.inner.set_train(train)
    }

    fn device(&self) -> Device {
        self.inner.device()
    }

    fn backprop(&self) -> Backprop {
        self.inner.backprop()
    }

    fn input_grad(&self, x: &Tensor, grad_logits: &Tensor) -> Result<Tensor> {
        self.inner.input_grad(x, grad_logits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_refused_the_same_way_whatever_the_order_and_never_overflow() {
        let spec = |input_shape| SessionSpec {
            num_classes: 3,
            input_shape,
        };
        let big = 1i64 << 32;
        for shape in [[0, big, big], [big, big, 0], [big, big, big], [-1, 4, 4]] {
            let e = spec(shape).validate().unwrap_err();
            assert!(matches!(e, Error::Config(_)), "{shape:?}: {e}");
        }
        assert!(spec([big, big, 1])
            .validate()
            .unwrap_err()
            .to_string()
            .contains("more than"));
        assert!(spec([1, 28, 28]).validate().is_ok());
        let classes = SessionSpec {
            num_classes: 1,
            input_shape: [1, 2, 2],
        };
        assert!(classes.validate().is_err());
    }
}
