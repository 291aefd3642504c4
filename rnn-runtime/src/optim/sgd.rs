//! Stochastic gradient descent, as `torch.optim.SGD`.

use std::collections::BTreeMap;

use super::{optimizer_state, Optimizer, ParamState};
use crate::Scalar;

/// SGD with PyTorch's defaults: no momentum, dampening or weight decay.
#[derive(Clone, Debug)]
pub struct Sgd<T> {
    /// The learning rate.
    pub lr: f64,
    /// Momentum factor.
    pub momentum: f64,
    /// Dampening of the momentum's new term (not on the first step, as PyTorch).
    pub dampening: f64,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// Per parameter: `momentum_buffer`.
    pub state: BTreeMap<String, ParamState<T>>,
}

impl<T: Scalar> Sgd<T> {
    /// Plain SGD at learning rate `lr`.
    pub fn new(lr: f64) -> Sgd<T> {
        Sgd {
            lr,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
            state: BTreeMap::new(),
        }
    }
}

impl<T: Scalar> Optimizer<T> for Sgd<T> {
    fn update(&self, param: &mut [T], grad: &[T], state: &mut ParamState<T>) {
        let (lr, wd, momentum, dampening) = (
            T::of(self.lr),
            T::of(self.weight_decay),
            T::of(self.momentum),
            T::of(self.dampening),
        );
        let first = state.step == 0;
        state.step += 1;
        let n = param.len();
        let mut buf = if self.momentum != 0.0 {
            std::mem::take(state.buffer("momentum_buffer", n, T::zero()))
        } else {
            Vec::new()
        };
        for i in 0..n {
            let mut g = grad[i] + wd * param[i];
            if self.momentum != 0.0 {
                buf[i] = if first {
                    g
                } else {
                    momentum * buf[i] + (T::one() - dampening) * g
                };
                g = if self.nesterov {
                    g + momentum * buf[i]
                } else {
                    buf[i]
                };
            }
            param[i] -= lr * g;
        }
        if self.momentum != 0.0 {
            state.buffers.insert("momentum_buffer".into(), buf);
        }
    }

    optimizer_state!();
}
