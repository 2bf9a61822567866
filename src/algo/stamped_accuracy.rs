//! Whether hardening removed the natural backdoors it was measured on, not
//! just moved them: the clean-label accuracy of a model on test samples
//! stamped with the triggers found on the model before hardening. On the
//! model they were found on, those triggers flip most samples (accuracy
//! near `1 - ASR`); on a hardened model that really moved its class
//! boundaries, the same stamps should leave most samples in their class.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::algo::distance::{FoundTrigger, Samples};
use crate::labels::per_class_indices;
use crate::torch::model::Classifier;
use crate::{Error, Result};

/// Accuracy on stamped samples, over the directions checked.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StampedAccuracy {
    /// Directions (triggers) checked.
    pub directions: usize,
    /// Samples stamped per direction (at most; fewer where a class has
    /// fewer).
    pub samples_per_class: usize,
    /// Mean over directions of the fraction of stamped samples still
    /// classified as their true class.
    pub mean: f64,
    /// The smallest such fraction.
    pub worst: f64,
}

/// Stamps up to `per_class` samples of each trigger's source class with it
/// and measures how many `model` still assigns to that class. The model is
/// switched to evaluation mode, as for a clean accuracy.
pub fn stamped_accuracy(
    model: &mut dyn Classifier,
    samples: &Samples<'_>,
    triggers: &[FoundTrigger],
    per_class: usize,
) -> Result<StampedAccuracy> {
    let n = samples.classes.len();
    if triggers.is_empty() || per_class == 0 {
        return Err(Error::input(
            "stamped accuracy needs at least one trigger and one sample per class",
        ));
    }
    model.set_train(false)?;
    let by_class = per_class_indices(&samples.labels, n, per_class);
    let mut fractions = Vec::with_capacity(triggers.len());
    for t in triggers {
        let idx = by_class
            .get(t.source)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| Error::input(format!("no sample of class {} to stamp", t.source)))?;
        let x = samples
            .images
            .f_index_select(0, &Tensor::f_from_slice(idx)?)?;
        fractions.push(kept_in_class(model, &x, t)?);
    }
    let mean = fractions.iter().sum::<f64>() / fractions.len() as f64;
    let worst = fractions.iter().copied().fold(f64::INFINITY, f64::min);
    Ok(StampedAccuracy {
        directions: triggers.len(),
        samples_per_class: per_class,
        mean,
        worst,
    })
}

/// The fraction of `x` (all of class `t.source`) that `model` still puts in
/// that class once stamped with `t`'s trigger.
fn kept_in_class(model: &mut dyn Classifier, x: &Tensor, t: &FoundTrigger) -> Result<f64> {
    let device = model.device();
    let trigger = t.trigger.to_device(device)?;
    crate::torch::grad::no_grad(|| {
        let stamped = trigger.stamp(&x.f_to_device(device)?)?;
        let pred = model.forward(&stamped)?.f_argmax(-1, false)?;
        let kept = pred
            .f_eq(t.source as i64)?
            .f_sum(Kind::Int64)?
            .f_int64_value(&[])?;
        Ok(kept as f64 / x.size()[0] as f64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::trigger::Trigger;
    use tch::Device;

    /// Class 1 when the top-left pixel is bright, else class 0.
    struct Corner;
    impl Classifier for Corner {
        fn forward(&self, x: &Tensor) -> Result<Tensor> {
            let p = x.f_select(1, 0)?.f_select(1, 0)?.f_select(1, 0)?;
            Ok(Tensor::f_stack(
                &[p.f_neg()?.f_add_scalar(0.5)?, p.f_sub_scalar(0.5)?],
                1,
            )?)
        }
        fn set_train(&mut self, _: bool) -> Result<()> {
            Ok(())
        }
        fn device(&self) -> Device {
            Device::Cpu
        }
    }

    fn corner_trigger(value: f64) -> Trigger {
        let opts = (Kind::Float, Device::Cpu);
        let mask = Tensor::zeros([1, 2, 2], opts);
        let _ = mask.get(0).get(0).get(0).fill_(1.0);
        Trigger::new(mask, Tensor::full([1, 2, 2], value, opts)).unwrap()
    }

    #[test]
    fn a_trigger_that_flips_scores_zero_and_a_harmless_one_scores_one() {
        let images = Tensor::zeros([6, 1, 2, 2], (Kind::Float, Device::Cpu));
        let classes = vec!["dark".to_string(), "bright".to_string()];
        let samples = Samples {
            images: &images,
            labels: vec![0; 6],
            classes: &classes,
        };
        let flips = FoundTrigger {
            source: 0,
            target: 1,
            trigger: corner_trigger(1.0),
        };
        let harmless = FoundTrigger {
            source: 0,
            target: 1,
            trigger: corner_trigger(0.0),
        };
        let r = stamped_accuracy(&mut Corner, &samples, std::slice::from_ref(&flips), 4).unwrap();
        assert_eq!((r.mean, r.worst, r.directions), (0.0, 0.0, 1));
        let r = stamped_accuracy(&mut Corner, &samples, &[flips, harmless], 4).unwrap();
        assert_eq!((r.mean, r.worst, r.directions), (0.5, 0.0, 2));
        assert!(stamped_accuracy(&mut Corner, &samples, &[], 4).is_err());
        let none_of_class_1 = FoundTrigger {
            source: 1,
            target: 0,
            trigger: corner_trigger(0.0),
        };
        assert!(stamped_accuracy(&mut Corner, &samples, &[none_of_class_1], 4).is_err());
    }
}
