//! Losses: free functions from predictions and targets to the loss and its gradient with
//! respect to the predictions. Shapes are (features, columns), the library's layout.

use nalgebra::DMatrix;

use crate::{ensure, Result, Scalar};

/// How a loss reduces its elements.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reduction {
    /// The mean over all elements (PyTorch's default).
    #[default]
    Mean,
    /// The sum over all elements.
    Sum,
}

/// A reduced loss and its gradient with respect to the input.
#[derive(Clone, Debug)]
pub struct Loss<T: Scalar> {
    /// The reduced loss.
    pub value: T,
    /// Same shape as the input.
    pub grad: DMatrix<T>,
}

/// Mean squared error `(input - target)²`, reduced. Input and target have the same
/// shape, any shape.
pub fn mse_loss<T: Scalar>(
    input: &DMatrix<T>,
    target: &DMatrix<T>,
    reduction: Reduction,
) -> Result<Loss<T>> {
    ensure!(
        input.shape() == target.shape(),
        "mse_loss: input is {:?} but target is {:?}; they must have the same shape",
        input.shape(),
        target.shape()
    );
    let diff = input - target;
    let sum = diff.iter().fold(T::zero(), |acc, d| acc + *d * *d);
    let two = T::of(2.0);
    let (value, scale) = match reduction {
        Reduction::Sum => (sum, two),
        Reduction::Mean => {
            let count = T::of(input.len().max(1) as f64);
            (sum / count, two / count)
        }
    };
    Ok(Loss {
        value,
        grad: diff * scale,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mse_value_and_gradient() {
        let input = DMatrix::from_row_slice(2, 2, &[1.0, 2.0, 3.0, 4.0]);
        let target = DMatrix::from_row_slice(2, 2, &[1.0, 0.0, 0.0, 4.0]);
        let mean = mse_loss(&input, &target, Reduction::Mean).unwrap();
        assert_eq!(mean.value, (4.0 + 9.0) / 4.0);
        assert_eq!(
            mean.grad,
            DMatrix::from_row_slice(2, 2, &[0.0, 1.0, 1.5, 0.0])
        );
        let sum = mse_loss(&input, &target, Reduction::Sum).unwrap();
        assert_eq!(sum.value, 13.0);
        let err = mse_loss(&input, &DMatrix::zeros(3, 2), Reduction::Sum).unwrap_err();
        assert!(
            err.to_string().contains("(2, 2)") && err.to_string().contains("(3, 2)"),
            "{err}"
        );
    }
}
