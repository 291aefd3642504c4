//! Adam (Kingma & Ba) and AdamW (Loshchilov & Hutter), as `torch.optim.Adam`/`AdamW`.

use std::collections::BTreeMap;

use super::{optimizer_state, Optimizer, ParamState};
use crate::Scalar;

/// Adam with PyTorch's defaults: betas (0.9, 0.999), eps 1e-8, no weight decay.
#[derive(Clone, Debug)]
pub struct Adam<T> {
    /// The learning rate.
    pub lr: f64,
    /// The decay rates of the first and second moments.
    pub betas: (f64, f64),
    /// Added to the denominator, for stability.
    pub eps: f64,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
    /// Use the maximum of past second moments (Reddi et al.).
    pub amsgrad: bool,
    /// Per parameter: `exp_avg`, `exp_avg_sq` (and `max_exp_avg_sq`).
    pub state: BTreeMap<String, ParamState<T>>,
}

/// AdamW: Adam with the weight decay applied to the parameter, not the gradient;
/// PyTorch's defaults: betas (0.9, 0.999), eps 1e-8, weight decay 0.01.
#[derive(Clone, Debug)]
pub struct AdamW<T> {
    /// The learning rate.
    pub lr: f64,
    /// The decay rates of the first and second moments.
    pub betas: (f64, f64),
    /// Added to the denominator, for stability.
    pub eps: f64,
    /// Decoupled decay: each step multiplies the parameter by `1 - lr · weight_decay`.
    pub weight_decay: f64,
    /// Use the maximum of past second moments.
    pub amsgrad: bool,
    /// Per parameter: `exp_avg`, `exp_avg_sq` (and `max_exp_avg_sq`).
    pub state: BTreeMap<String, ParamState<T>>,
}

impl<T: Scalar> Adam<T> {
    /// Adam with learning rate `lr` and PyTorch's other defaults.
    pub fn new(lr: f64) -> Adam<T> {
        Adam {
            lr,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            amsgrad: false,
            state: BTreeMap::new(),
        }
    }
}

impl<T: Scalar> AdamW<T> {
    /// AdamW with learning rate `lr` and PyTorch's other defaults.
    pub fn new(lr: f64) -> AdamW<T> {
        AdamW {
            lr,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.01,
            amsgrad: false,
            state: BTreeMap::new(),
        }
    }
}

/// What Adam's update needs; AdamW's has no L2 term.
struct Hyper {
    lr: f64,
    betas: (f64, f64),
    eps: f64,
    amsgrad: bool,
    l2: f64,
}

/// The moments' update and the step, shared by Adam and AdamW.
fn adam_step<T: Scalar>(h: Hyper, param: &mut [T], grad: &[T], state: &mut ParamState<T>) {
    let Hyper {
        lr,
        betas: (beta1, beta2),
        eps,
        amsgrad,
        l2,
    } = h;
    state.step += 1;
    let n = param.len();
    let bias_correction1 = 1.0 - beta1.powi(state.step as i32);
    let bias_correction2_sqrt = T::of((1.0 - beta2.powi(state.step as i32)).sqrt());
    let step_size = T::of(lr / bias_correction1);
    let (b1, b2, one, eps, l2) = (T::of(beta1), T::of(beta2), T::one(), T::of(eps), T::of(l2));
    let mut m = std::mem::take(state.buffer("exp_avg", n, T::zero()));
    let mut v = std::mem::take(state.buffer("exp_avg_sq", n, T::zero()));
    let mut v_max = if amsgrad {
        std::mem::take(state.buffer("max_exp_avg_sq", n, T::zero()))
    } else {
        Vec::new()
    };
    for i in 0..n {
        let g = grad[i] + l2 * param[i];
        m[i] = b1 * m[i] + (one - b1) * g;
        v[i] = b2 * v[i] + (one - b2) * g * g;
        let second = if amsgrad {
            if v[i] > v_max[i] {
                v_max[i] = v[i];
            }
            v_max[i]
        } else {
            v[i]
        };
        param[i] -= step_size * m[i] / (second.sqrt() / bias_correction2_sqrt + eps);
    }
    state.buffers.insert("exp_avg".into(), m);
    state.buffers.insert("exp_avg_sq".into(), v);
    if amsgrad {
        state.buffers.insert("max_exp_avg_sq".into(), v_max);
    }
}

impl<T: Scalar> Optimizer<T> for Adam<T> {
    fn update(&self, param: &mut [T], grad: &[T], state: &mut ParamState<T>) {
        let h = Hyper {
            lr: self.lr,
            betas: self.betas,
            eps: self.eps,
            amsgrad: self.amsgrad,
            l2: self.weight_decay,
        };
        adam_step(h, param, grad, state);
    }

    optimizer_state!();
}

impl<T: Scalar> Optimizer<T> for AdamW<T> {
    fn update(&self, param: &mut [T], grad: &[T], state: &mut ParamState<T>) {
        let decay = T::of(1.0 - self.lr * self.weight_decay);
        for p in param.iter_mut() {
            *p *= decay;
        }
        let h = Hyper {
            lr: self.lr,
            betas: self.betas,
            eps: self.eps,
            amsgrad: self.amsgrad,
            l2: 0.0,
        };
        adam_step(h, param, grad, state);
    }

    optimizer_state!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ParamMut, ParamRef, Parameters};

    struct One(Vec<f64>);

    impl Parameters<f64> for One {
        fn parameters(&self) -> Vec<ParamRef<'_, f64>> {
            vec![ParamRef::new("w", &self.0, (self.0.len(), 1))]
        }
        fn parameters_mut(&mut self) -> Vec<ParamMut<'_, f64>> {
            let len = self.0.len();
            vec![ParamMut::new("w", &mut self.0, (len, 1))]
        }
    }

    #[test]
    fn first_step_moves_each_parameter_by_lr_against_its_gradient_sign() {
        // With bias correction, Adam's first step is lr * g / (|g| + eps).
        let mut param = One(vec![1.0, -2.0]);
        let grad = One(vec![0.5, -3.0]);
        let mut adam = Adam::new(0.1);
        adam.step(&mut param, &grad).unwrap();
        assert!(
            (param.0[0] - 0.9).abs() < 1e-6 && (param.0[1] + 1.9).abs() < 1e-6,
            "{:?}",
            param.0
        );
        assert_eq!(adam.state["w"].step, 1);
    }

    #[test]
    fn mismatched_gradients_are_an_error() {
        let mut param = One(vec![1.0]);
        let err = Adam::new(0.1)
            .step(&mut param, &One(vec![1.0, 2.0]))
            .unwrap_err();
        assert!(
            err.to_string().contains("(2, 1)") && err.to_string().contains("(1, 1)"),
            "{err}"
        );
    }
}
