//! One forward pass whose loss is later differentiated with respect to
//! parameters upstream of the model's input (a trigger's mask and pattern),
//! whichever way the model provides gradients ([`Backprop`]).
//!
//! An autograd model needs nothing: the loss's graph runs through the
//! logits into the input. A model outside libtorch (host callbacks, Flux,
//! JAX, ONNX Runtime) returns plain logits and a vector-Jacobian product on
//! request. For it the logits become a leaf of the graph; the backward pass
//! first takes `g = dL/dlogits` at that leaf, asks the model for
//! `dL/dx = J^T g` of the very input it saw, and then differentiates the
//! surrogate `L + sum(x * stop_grad(dL/dx))`: its gradient with respect to
//! anything upstream of `x` is exactly the chain rule's `(dx/dθ)^T dL/dx`,
//! plus whatever `L` depends on directly (the mask's L1 term), since the
//! leaf cuts `L`'s own path through the logits.

use tch::Tensor;

use crate::torch::model::{Backprop, Classifier};
use crate::{Error, Result};

/// The logits of one forward pass, ready for [`ForwardPass::backward`].
pub struct ForwardPass {
    logits: Tensor,
    /// The input, kept for the surrogate of an input-gradient model.
    input: Option<Tensor>,
}

impl ForwardPass {
    /// Runs `model` on `x` (which may carry a graph to the parameters that
    /// will be differentiated).
    pub fn run(model: &dyn Classifier, x: &Tensor) -> Result<Self> {
        match model.backprop() {
            Backprop::Autograd => Ok(ForwardPass {
                logits: model.forward(x)?,
                input: None,
            }),
            Backprop::InputGrad => {
                let plain = crate::torch::grad::no_grad(|| model.forward(&x.f_detach()?))?;
                Ok(ForwardPass {
                    logits: plain.f_detach()?.f_set_requires_grad(true)?,
                    input: Some(x.shallow_clone()),
                })
            }
        }
    }

    /// The logits `[n, classes]`, to build the loss from.
    pub fn logits(&self) -> &Tensor {
        &self.logits
    }

    /// Whether the logits can pass a gradient on towards the input.
    pub fn reaches_input(&self) -> bool {
        self.input.is_some() || self.logits.requires_grad()
    }

    /// The gradients of `loss` (a scalar built from [`ForwardPass::logits`]
    /// and possibly from `params` directly) with respect to `params`. An
    /// entry is undefined where no path leads to that parameter.
    pub fn backward(
        &self,
        model: &dyn Classifier,
        loss: &Tensor,
        params: &[&Tensor],
    ) -> Result<Vec<Tensor>> {
        let Some(x) = &self.input else {
            return Ok(Tensor::f_run_backward(&[loss], params, false, false)?);
        };
        // Keep the graph: the surrogate below runs through `loss` again.
        let g = Tensor::f_run_backward(&[loss], &[&self.logits], true, false)?
            .pop()
            .filter(Tensor::defined)
            .ok_or_else(|| Error::input("the loss does not depend on the model's logits"))?;
        let gx = crate::torch::grad::no_grad(|| model.input_grad(&x.f_detach()?, &g))?;
        if gx.size() != x.size() {
            return Err(Error::Callback(format!(
                "the input gradient has shape {:?}, the input {:?}",
                gx.size(),
                x.size()
            )));
        }
        let gx = gx
            .f_to_device(x.device())?
            .f_to_kind(x.kind())?
            .f_detach()?;
        let surrogate = loss.f_add(&x.f_mul(&gx)?.f_sum(x.kind())?)?;
        Ok(Tensor::f_run_backward(&[&surrogate], params, false, false)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// `logits = x W^T` on flattened inputs, either through autograd or
    /// with its hand-written vector-Jacobian product `g W`.
    struct Linear {
        w: Tensor,
        by_request: bool,
    }

    impl Classifier for Linear {
        fn forward(&self, x: &Tensor) -> Result<Tensor> {
            Ok(x.f_flatten(1, -1)?.f_matmul(&self.w.f_tr()?)?)
        }
        fn set_train(&mut self, _: bool) -> Result<()> {
            Ok(())
        }
        fn device(&self) -> Device {
            Device::Cpu
        }
        fn backprop(&self) -> Backprop {
            if self.by_request {
                Backprop::InputGrad
            } else {
                Backprop::Autograd
            }
        }
        fn input_grad(&self, x: &Tensor, g: &Tensor) -> Result<Tensor> {
            Ok(g.f_matmul(&self.w)?.f_view_as(x)?)
        }
    }

    #[test]
    fn the_surrogate_gives_the_chain_rule_gradients_of_an_upstream_parameter() {
        let w = Tensor::f_from_slice(&[0.5f32, -1.0, 2.0, 0.25, 1.5, -0.5, 0.0, 1.0])
            .unwrap()
            .f_view([2, 4])
            .unwrap();
        let x0 = Tensor::f_from_slice(&[0.1f32, 0.2, 0.3, 0.4])
            .unwrap()
            .f_view([1, 1, 2, 2])
            .unwrap();
        let grads = |by_request: bool| {
            let model = Linear {
                w: w.shallow_clone(),
                by_request,
            };
            let theta = Tensor::f_full([1, 1, 2, 2], 0.3, (Kind::Float, Device::Cpu))
                .unwrap()
                .f_set_requires_grad(true)
                .unwrap();
            let x = x0.f_mul(&theta.f_sigmoid().unwrap()).unwrap();
            let pass = ForwardPass::run(&model, &x).unwrap();
            assert!(pass.reaches_input());
            let target = Tensor::f_from_slice(&[1i64]).unwrap();
            let loss = pass
                .logits()
                .f_cross_entropy_loss::<Tensor>(&target, None, tch::Reduction::Mean, -100, 0.0)
                .unwrap()
                .f_add(&theta.f_sum(Kind::Float).unwrap().f_mul_scalar(0.1).unwrap())
                .unwrap();
            let g = pass.backward(&model, &loss, &[&theta]).unwrap();
            Vec::<f32>::try_from(&g[0].f_flatten(0, -1).unwrap()).unwrap()
        };
        let (autograd, by_request) = (grads(false), grads(true));
        for (a, b) in autograd.iter().zip(&by_request) {
            assert!((a - b).abs() < 1e-6, "{autograd:?} vs {by_request:?}");
        }
        assert!(autograd.iter().any(|v| (v - 0.1).abs() > 1e-3));
    }
}
