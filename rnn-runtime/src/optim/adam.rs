//! Adam (Kingma & Ba), exactly as `torch.optim.Adam` computes it, with `amsgrad`.

use std::collections::HashMap;

use crate::params::pair_with_grads;
use crate::{ensure, Optimizer, Parameters, Result, Scalar};

/// Adam with PyTorch's defaults: lr 0.001, betas (0.9, 0.999), eps 1e-8.
#[derive(Clone, Debug)]
pub struct Adam<T> {
    /// The learning rate.
    pub lr: f64,
    /// The decay rates of the first and second moments.
    pub betas: (f64, f64),
    /// Added to the denominator, for stability.
    pub eps: f64,
    /// L2 penalty added to the gradient (not decoupled: see AdamW for that).
    pub weight_decay: f64,
    /// Use the maximum of past second moments (Reddi et al.).
    pub amsgrad: bool,
    /// Per parameter, by name.
    pub state: HashMap<String, AdamState<T>>,
}

/// The moments of one parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamState<T> {
    /// Steps taken.
    pub step: u64,
    /// The first moment.
    pub exp_avg: Vec<T>,
    /// The second moment.
    pub exp_avg_sq: Vec<T>,
    /// Only with `amsgrad`.
    pub max_exp_avg_sq: Vec<T>,
}

impl<T: Scalar> AdamState<T> {
    fn zeros(len: usize) -> Self {
        AdamState {
            step: 0,
            exp_avg: vec![T::zero(); len],
            exp_avg_sq: vec![T::zero(); len],
            max_exp_avg_sq: vec![T::zero(); len],
        }
    }
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
            state: HashMap::new(),
        }
    }

    /// One parameter's update.
    fn update(&self, param: &mut [T], grad: &[T], state: &mut AdamState<T>) {
        let (beta1, beta2) = self.betas;
        state.step += 1;
        let bias_correction1 = 1.0 - beta1.powi(state.step as i32);
        let bias_correction2_sqrt = (1.0 - beta2.powi(state.step as i32)).sqrt();
        let step_size = T::of(self.lr / bias_correction1);
        let (b1, b2) = (T::of(beta1), T::of(beta2));
        let (one, eps, wd) = (T::one(), T::of(self.eps), T::of(self.weight_decay));
        let bc2 = T::of(bias_correction2_sqrt);
        for i in 0..param.len() {
            let g = if self.weight_decay != 0.0 {
                grad[i] + wd * param[i]
            } else {
                grad[i]
            };
            let m = b1 * state.exp_avg[i] + (one - b1) * g;
            let v = b2 * state.exp_avg_sq[i] + (one - b2) * g * g;
            state.exp_avg[i] = m;
            state.exp_avg_sq[i] = v;
            let v_used = if self.amsgrad {
                let max = if state.max_exp_avg_sq[i] > v {
                    state.max_exp_avg_sq[i]
                } else {
                    v
                };
                state.max_exp_avg_sq[i] = max;
                max
            } else {
                v
            };
            let denom = v_used.sqrt() / bc2 + eps;
            param[i] -= step_size * m / denom;
        }
    }
}

impl<T: Scalar> Optimizer<T> for Adam<T> {
    fn step(&mut self, params: &mut dyn Parameters<T>, grads: &dyn Parameters<T>) -> Result<()> {
        for (param, grad) in pair_with_grads(params.parameters_mut(), grads.parameters())? {
            let len = param.values.len();
            if let Some(state) = self.state.get(&param.name) {
                ensure!(
                    state.exp_avg.len() == len,
                    "Adam state of `{}` has {} values but the parameter has {len}",
                    param.name,
                    state.exp_avg.len()
                );
            }
            let mut state = self
                .state
                .remove(&param.name)
                .unwrap_or_else(|| AdamState::zeros(len));
            self.update(param.values, grad, &mut state);
            self.state.insert(param.name, state);
        }
        Ok(())
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ParamMut, ParamRef};

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
