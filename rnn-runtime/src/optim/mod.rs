//! Optimizers. Each steps one parameter at a time from (parameter, gradient, its own
//! state); [`Optimizer::step`] walks the named parameters and pairs them with the
//! gradients of the same names.

mod adam;

pub use self::adam::{Adam, AdamState};

use crate::{Parameters, Result, Scalar};

/// Updates parameters from their gradients.
pub trait Optimizer<T: Scalar> {
    /// Updates every parameter from its gradient.
    fn step(&mut self, params: &mut dyn Parameters<T>, grads: &dyn Parameters<T>) -> Result<()>;

    /// The current learning rate.
    fn lr(&self) -> f64;

    /// Changes the learning rate (for schedules).
    fn set_lr(&mut self, lr: f64);
}
