//! The functions of the equation language and their derivatives, as the generated
//! code calls them. Each derivative takes the value that `rnn-macros`' function table
//! says it is computed from: the function's output, or for `softplus` its input.

use crate::Scalar;

/// σ(x) = 1 / (1 + e⁻ˣ).
#[inline(always)]
pub fn sigmoid<T: Scalar>(x: T) -> T {
    T::one() / (T::one() + (-x).fast_exp())
}

/// σ'(x) from y = σ(x).
#[inline(always)]
pub fn sigmoid_deriv<T: Scalar>(y: T) -> T {
    y * (T::one() - y)
}

/// tanh(x).
#[inline(always)]
pub fn tanh<T: Scalar>(x: T) -> T {
    x.fast_tanh()
}

/// tanh'(x) from y = tanh(x).
#[inline(always)]
pub fn tanh_deriv<T: Scalar>(y: T) -> T {
    T::one() - y * y
}

/// max(x, 0).
#[inline(always)]
pub fn relu<T: Scalar>(x: T) -> T {
    if x > T::zero() {
        x
    } else {
        T::zero()
    }
}

/// relu'(x) from y = relu(x) (0 at the kink, as PyTorch).
#[inline(always)]
pub fn relu_deriv<T: Scalar>(y: T) -> T {
    if y > T::zero() {
        T::one()
    } else {
        T::zero()
    }
}

/// eˣ.
#[inline(always)]
pub fn exp<T: Scalar>(x: T) -> T {
    x.fast_exp()
}

/// exp'(x) from y = exp(x).
#[inline(always)]
pub fn exp_deriv<T: Scalar>(y: T) -> T {
    y
}

/// log(1 + eˣ), without overflow for large x.
#[inline(always)]
pub fn softplus<T: Scalar>(x: T) -> T {
    let positive = if x > T::zero() { x } else { T::zero() };
    positive + (-x.abs()).exp().ln_1p()
}

/// softplus'(x) = σ(x), from x itself.
#[inline(always)]
pub fn softplus_deriv<T: Scalar>(x: T) -> T {
    sigmoid(x)
}

/// x.
#[inline(always)]
pub fn identity<T: Scalar>(x: T) -> T {
    x
}

/// 1.
#[inline(always)]
pub fn identity_deriv<T: Scalar>(_y: T) -> T {
    T::one()
}
