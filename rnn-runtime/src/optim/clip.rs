//! Gradient clipping by the norm of all gradients taken as one vector.

use crate::{ensure, Parameters, Result, Scalar};

/// Which norm.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NormType {
    /// Σ |g|.
    L1,
    /// √(Σ g²).
    L2,
    /// max |g|.
    Inf,
}

/// Scales all gradients together so that their norm is at most `max_norm`, as
/// `torch.nn.utils.clip_grad_norm_` (coefficient `max_norm / (norm + 1e-6)`, capped at
/// 1); returns the norm before clipping.
pub fn clip_grad_norm<T: Scalar>(
    grads: &mut dyn Parameters<T>,
    max_norm: f64,
    norm_type: NormType,
) -> Result<f64> {
    ensure!(
        max_norm >= 0.0,
        "`max_norm` must not be negative, but is {max_norm}"
    );
    let mut params = grads.parameters_mut();
    let total = match norm_type {
        NormType::L1 => params
            .iter()
            .flat_map(|p| p.values.iter())
            .map(|g| g.as_f64().abs())
            .sum::<f64>(),
        NormType::L2 => {
            // The norm of the norms, as PyTorch computes it.
            let norms: Vec<f64> = params
                .iter()
                .map(|p| {
                    p.values
                        .iter()
                        .map(|g| g.as_f64() * g.as_f64())
                        .sum::<f64>()
                        .sqrt()
                })
                .collect();
            norms.iter().map(|n| n * n).sum::<f64>().sqrt()
        }
        NormType::Inf => params
            .iter()
            .flat_map(|p| p.values.iter())
            .map(|g| g.as_f64().abs())
            .fold(0.0, f64::max),
    };
    let coef = T::of((max_norm / (total + 1e-6)).min(1.0));
    for p in params.iter_mut() {
        for g in p.values.iter_mut() {
            *g *= coef;
        }
    }
    Ok(total)
}
