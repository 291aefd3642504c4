//! Adagrad (Duchi et al.), as `torch.optim.Adagrad`.

use std::collections::BTreeMap;

use super::{optimizer_state, Optimizer, ParamState};
use crate::Scalar;

/// Adagrad with PyTorch's defaults: lr 0.01, eps 1e-10.
#[derive(Clone, Debug)]
pub struct Adagrad<T> {
    /// The learning rate.
    pub lr: f64,
    /// The learning rate at step k is `lr / (1 + (k - 1) · lr_decay)`.
    pub lr_decay: f64,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
    /// The starting value of the sum of squared gradients.
    pub initial_accumulator_value: f64,
    /// Added to the denominator, for stability.
    pub eps: f64,
    /// Per parameter: `sum`.
    pub state: BTreeMap<String, ParamState<T>>,
}

impl<T: Scalar> Adagrad<T> {
    /// Adagrad at learning rate `lr` with PyTorch's other defaults.
    pub fn new(lr: f64) -> Adagrad<T> {
        Adagrad {
            lr,
            lr_decay: 0.0,
            weight_decay: 0.0,
            initial_accumulator_value: 0.0,
            eps: 1e-10,
            state: BTreeMap::new(),
        }
    }
}

impl<T: Scalar> Optimizer<T> for Adagrad<T> {
    fn update(&self, param: &mut [T], grad: &[T], state: &mut ParamState<T>) {
        state.step += 1;
        let clr = T::of(self.lr / (1.0 + (state.step - 1) as f64 * self.lr_decay));
        let (wd, eps) = (T::of(self.weight_decay), T::of(self.eps));
        let sum = state.buffer("sum", param.len(), T::of(self.initial_accumulator_value));
        for i in 0..param.len() {
            let g = grad[i] + wd * param[i];
            sum[i] += g * g;
            param[i] -= clr * g / (sum[i].sqrt() + eps);
        }
    }

    optimizer_state!();
}
