//! The inversion's optimiser state.

use tch::Tensor;

use crate::config::InversionConfig;
use crate::torch::train::{adam_update, AdamRule};
use crate::Result;

/// Adam state for the two parameter tensors of a task (the update rule
/// is the training optimiser's, [`adam_update`]).
pub(super) struct Adam {
    m: [Tensor; 2],
    v: [Tensor; 2],
    t: i32,
}

impl Adam {
    pub(super) fn new(params: [&Tensor; 2]) -> Result<Self> {
        let z = |p: &Tensor| p.f_zeros_like();
        Ok(Adam {
            m: [z(params[0])?, z(params[1])?],
            v: [z(params[0])?, z(params[1])?],
            t: 0,
        })
    }

    pub(super) fn step(
        &mut self,
        params: [&mut Tensor; 2],
        grads: &[Tensor],
        cfg: &InversionConfig,
    ) -> Result<()> {
        self.t += 1;
        let rule = AdamRule {
            lr: cfg.lr,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
        };
        crate::torch::grad::no_grad(|| -> Result<()> {
            for (i, p) in params.into_iter().enumerate() {
                let step = adam_update(&rule, &grads[i], &self.m[i], &self.v[i], self.t)?;
                self.m[i] = step.m;
                self.v[i] = step.v;
                let _ = p.f_sub_(&step.update)?;
            }
            Ok(())
        })
    }
}
