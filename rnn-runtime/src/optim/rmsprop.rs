//! RMSprop (Hinton), as `torch.optim.RMSprop`.

use std::collections::BTreeMap;

use super::{optimizer_state, Optimizer, ParamState};
use crate::Scalar;

/// RMSprop with PyTorch's defaults: lr 0.01, alpha 0.99, eps 1e-8.
#[derive(Clone, Debug)]
pub struct RmsProp<T> {
    /// The learning rate.
    pub lr: f64,
    /// Smoothing of the squared-gradient average.
    pub alpha: f64,
    /// Added to the denominator, for stability.
    pub eps: f64,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
    /// Momentum factor.
    pub momentum: f64,
    /// Normalise by the gradient's estimated variance rather than its second moment.
    pub centered: bool,
    /// Per parameter: `square_avg` (and `grad_avg`, `momentum_buffer`).
    pub state: BTreeMap<String, ParamState<T>>,
}

impl<T: Scalar> RmsProp<T> {
    /// RMSprop at learning rate `lr` with PyTorch's other defaults.
    pub fn new(lr: f64) -> RmsProp<T> {
        RmsProp {
            lr,
            alpha: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum: 0.0,
            centered: false,
            state: BTreeMap::new(),
        }
    }
}

impl<T: Scalar> Optimizer<T> for RmsProp<T> {
    fn update(&self, param: &mut [T], grad: &[T], state: &mut ParamState<T>) {
        let (lr, alpha, eps, wd, momentum) = (
            T::of(self.lr),
            T::of(self.alpha),
            T::of(self.eps),
            T::of(self.weight_decay),
            T::of(self.momentum),
        );
        let one = T::one();
        state.step += 1;
        let n = param.len();
        let mut square_avg = std::mem::take(state.buffer("square_avg", n, T::zero()));
        let mut grad_avg = if self.centered {
            std::mem::take(state.buffer("grad_avg", n, T::zero()))
        } else {
            Vec::new()
        };
        let mut buf = if self.momentum > 0.0 {
            std::mem::take(state.buffer("momentum_buffer", n, T::zero()))
        } else {
            Vec::new()
        };
        for i in 0..n {
            let g = grad[i] + wd * param[i];
            square_avg[i] = alpha * square_avg[i] + (one - alpha) * g * g;
            let avg = if self.centered {
                grad_avg[i] = alpha * grad_avg[i] + (one - alpha) * g;
                (square_avg[i] - grad_avg[i] * grad_avg[i]).sqrt() + eps
            } else {
                square_avg[i].sqrt() + eps
            };
            if self.momentum > 0.0 {
                buf[i] = momentum * buf[i] + g / avg;
                param[i] -= lr * buf[i];
            } else {
                param[i] -= lr * g / avg;
            }
        }
        state.buffers.insert("square_avg".into(), square_avg);
        if self.centered {
            state.buffers.insert("grad_avg".into(), grad_avg);
        }
        if self.momentum > 0.0 {
            state.buffers.insert("momentum_buffer".into(), buf);
        }
    }

    optimizer_state!();
}
