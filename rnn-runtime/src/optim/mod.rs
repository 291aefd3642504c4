//! Optimizers, exactly as `torch.optim` computes them. Each updates one parameter at a
//! time from (parameter, gradient, its own state); [`Optimizer::step`] walks the named
//! parameters and pairs them with the gradients of the same names. Their state is a
//! step count and named buffers per parameter, inspectable and saveable.

mod adagrad;
mod adam;
mod clip;
mod rmsprop;
pub mod schedule;
mod sgd;

use std::collections::BTreeMap;

pub use self::adagrad::Adagrad;
pub use self::adam::{Adam, AdamW};
pub use self::clip::{clip_grad_norm, NormType};
pub use self::rmsprop::RmsProp;
pub use self::sgd::Sgd;

use crate::params::pair_with_grads;
use crate::tensor_io::Tensor;
use crate::{ensure, Error, Parameters, Result, Scalar};

/// One parameter's optimizer state: steps taken and named buffers (`exp_avg`,
/// `momentum_buffer`, ...), each as long as the parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamState<T> {
    /// Updates made.
    pub step: u64,
    /// The optimizer's per-element buffers, by name.
    pub buffers: BTreeMap<String, Vec<T>>,
}

impl<T: Scalar> ParamState<T> {
    /// The buffer `name`, created filled with `init` on first use.
    pub fn buffer(&mut self, name: &str, len: usize, init: T) -> &mut Vec<T> {
        self.buffers
            .entry(name.to_string())
            .or_insert_with(|| vec![init; len])
    }
}

/// Updates parameters from their gradients.
pub trait Optimizer<T: Scalar> {
    /// One parameter's update from its gradient and its state.
    fn update(&self, param: &mut [T], grad: &[T], state: &mut ParamState<T>);

    /// The state of every parameter updated so far, by name.
    fn states(&self) -> &BTreeMap<String, ParamState<T>>;

    /// The states, to restore or reset them.
    fn states_mut(&mut self) -> &mut BTreeMap<String, ParamState<T>>;

    /// The current learning rate.
    fn lr(&self) -> f64;

    /// Changes the learning rate (for schedules).
    fn set_lr(&mut self, lr: f64);

    /// Updates every parameter from the gradient of the same name. Nothing changes if
    /// names or shapes do not match.
    fn step(&mut self, params: &mut dyn Parameters<T>, grads: &dyn Parameters<T>) -> Result<()> {
        let pairs = pair_with_grads(params.parameters_mut(), grads.parameters())?;
        for (param, _) in &pairs {
            if let Some(state) = self.states().get(&param.name) {
                for (buffer, values) in &state.buffers {
                    ensure!(
                        values.len() == param.values.len(),
                        "optimizer state `{}.{buffer}` has {} values but the parameter has {}",
                        param.name,
                        values.len(),
                        param.values.len()
                    );
                }
            }
        }
        for (param, grad) in pairs {
            let mut state = self.states_mut().remove(&param.name).unwrap_or(ParamState {
                step: 0,
                buffers: BTreeMap::new(),
            });
            self.update(param.values, grad, &mut state);
            self.states_mut().insert(param.name, state);
        }
        Ok(())
    }

    /// The state as tensors, `<param>.<buffer>` and `<param>.step`, for a checkpoint.
    fn state_tensors(&self) -> Vec<(String, Tensor<T>)> {
        let mut out = Vec::new();
        for (name, state) in self.states() {
            out.push((
                format!("{name}.step"),
                Tensor {
                    shape: vec![],
                    data: vec![T::of(state.step as f64)],
                },
            ));
            for (buffer, values) in &state.buffers {
                out.push((
                    format!("{name}.{buffer}"),
                    Tensor {
                        shape: vec![values.len()],
                        data: values.clone(),
                    },
                ));
            }
        }
        out
    }

    /// Restores the state written by [`Optimizer::state_tensors`]; on error nothing
    /// changes.
    fn load_state_tensors(&mut self, tensors: &BTreeMap<String, Tensor<T>>) -> Result<()> {
        *self.states_mut() = states_from_tensors(tensors)?;
        Ok(())
    }
}

/// Per-parameter states from the tensors [`Optimizer::state_tensors`] wrote.
pub fn states_from_tensors<T: Scalar>(
    tensors: &BTreeMap<String, Tensor<T>>,
) -> Result<BTreeMap<String, ParamState<T>>> {
    let mut states: BTreeMap<String, ParamState<T>> = BTreeMap::new();
    for (key, tensor) in tensors {
        if let Some(name) = key.strip_suffix(".step") {
            let step = tensor
                .data
                .first()
                .ok_or_else(|| Error::new(format!("optimizer state `{key}` is empty")))?
                .as_f64();
            ensure!(
                step >= 0.0 && step.fract() == 0.0,
                "optimizer state `{key}` = {step} is not a step count"
            );
            states
                .entry(name.to_string())
                .or_insert_with(|| ParamState {
                    step: 0,
                    buffers: BTreeMap::new(),
                })
                .step = step as u64;
        }
    }
    for (key, tensor) in tensors {
        if key.ends_with(".step") {
            continue;
        }
        let (name, buffer) = states
            .keys()
            .find_map(|n| {
                key.strip_prefix(n.as_str())
                    .and_then(|rest| rest.strip_prefix('.'))
                    .map(|b| (n.clone(), b.to_string()))
            })
            .ok_or_else(|| {
                Error::new(format!(
                    "optimizer state `{key}` belongs to no parameter with a step count"
                ))
            })?;
        states
            .get_mut(&name)
            .expect("found above")
            .buffers
            .insert(buffer, tensor.data.clone());
    }
    Ok(states)
}

/// The optimizer fields and trait methods every optimizer shares.
macro_rules! optimizer_state {
    () => {
        fn states(&self) -> &std::collections::BTreeMap<String, $crate::optim::ParamState<T>> {
            &self.state
        }

        fn states_mut(
            &mut self,
        ) -> &mut std::collections::BTreeMap<String, $crate::optim::ParamState<T>> {
            &mut self.state
        }

        fn lr(&self) -> f64 {
            self.lr
        }

        fn set_lr(&mut self, lr: f64) {
            self.lr = lr;
        }
    };
}
pub(crate) use optimizer_state;
