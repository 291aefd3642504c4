//! Recurrent cells declared from their equations, with fused forward and analytic
//! backward code generated at compile time.
//!
//! # Example
//!
//! ```
//! use rnn_runtime::prelude::*;
//!
//! /// Long short-term memory, as the PyTorch docs write it.
//! #[recurrent]
//! pub fn lstm(x: Input, h: State, c: State) {
//!     let i = sigmoid(W_ii * x + b_ii + W_hi * h + b_hi);
//!     let f = sigmoid(W_if * x + b_if + W_hf * h + b_hf);
//!     let g = tanh(W_ig * x + b_ig + W_hg * h + b_hg);
//!     let o = sigmoid(W_io * x + b_io + W_ho * h + b_ho);
//!     c = f * c + i * g;
//!     h = o * tanh(c);
//! }
//!
//! # fn main() -> Result<(), rnn_runtime::Error> {
//! let mut rng = Rng::seed(0);
//! let cell: Lstm<f64> = Lstm::new(3, 5, &mut rng);
//! assert_eq!(cell.W_hi.shape(), (5, 5));
//!
//! // 7 steps of a batch of 2: a (3, 7·2) matrix, column t·2 + b for step t, sequence b.
//! let steps = Steps::full(7, 2)?;
//! let x = DMatrix::from_fn(3, steps.columns(), |i, j| ((i + j) as f64).sin());
//! let mut run = forward(&cell, &steps, &[&x], None, Direction::Forward)?;
//! assert_eq!(run.output.shape(), (5, 14));
//!
//! // Backpropagation through time for the loss sum(output).
//! let ones = DMatrix::from_element(5, 14, 1.0);
//! let grads = run.backward(&cell, Some(&ones), &[])?;
//! assert_eq!(grads.params.W_ii.shape(), (5, 3));
//! assert_eq!(grads.inputs[0].shape(), (3, 14));
//!
//! // The analytic gradients agree with finite differences.
//! assert!(gradcheck::<Lstm<f64>>(&[3, 5], 2, 4, 7)? < 1e-6);
//! # Ok(())
//! # }
//! ```
//!
//! # The equation language
//!
//! `#[recurrent]` goes on a `fn` whose arguments are the cell's inputs (`x: Input`, or
//! `x: Input<E>` for an input of its own size `E`) and states (`h: State`, `h: State<P>`).
//! Its body is `let` gates and one assignment per state; a statement after `c = ...`
//! reads the new `c`, one before it the previous `c`. Every other name is a parameter:
//! uppercase initial for a matrix (`W_ii`), lowercase for a vector (`b_ii`, a peephole
//! `p_i`). `M * v` is a matrix-vector product, `a * b` between vectors is elementwise;
//! `+`, `-`, unary `-`, scalar literals (`1.0 - z`) and concatenation `[h, x]` complete
//! the language, with the functions `sigmoid`, `tanh`, `relu`, `exp`, `softplus` and
//! `identity`. Inputs have size `I`, states `H` unless annotated; every other size is
//! inferred. The output is the first state unless `#[recurrent(output = c)]` says
//! otherwise.
//!
//! The macro replaces the fn with `pub struct Lstm<T = f32>` (UpperCamelCase of the
//! name), a field per parameter named as in the equations, `LstmGrads<T>` with the same
//! fields, `Lstm::new(input_size, hidden_size, &mut rng)`, and an impl of [`Cell`].

#![warn(missing_docs)]

// The generated code names everything by absolute path, `::rnn_runtime::...`; this
// makes the same paths work for the built-in cells declared inside this crate.
extern crate self as rnn_runtime;

mod allocator;
mod cell;
pub mod cells;
pub mod checkpoint;
mod copies;
pub mod data;
mod error;
pub mod gradcheck;
mod helper;
mod inference;
pub mod loss;
pub mod math;
pub mod modules;
pub mod nn;
pub mod optim;
pub mod pack;
mod packed;
mod params;
pub mod recurrent;
mod rng;
mod scalar;
pub mod sequence;
mod tape;
pub mod tensor_io;
mod threads;
pub mod torch;

pub use nalgebra;
pub use rnn_macros::{recurrent, Parameters};

pub use crate::allocator::keep_freed_memory;
pub use crate::cell::{
    BufferCols, BufferSpec, Cell, CellSpec, ParamSpec, SizeSpec, TapeRoles, VarSpec,
};
pub use crate::error::{Error, Result};
pub use crate::gradcheck::{gradcheck, gradcheck_steps};
pub use crate::inference::{infer, Inference};
pub use crate::optim::{clip_grad_norm, Adagrad, Adam, AdamW, NormType, Optimizer, RmsProp, Sgd};
pub use crate::pack::{
    pack_padded_sequence, pack_sequence, pad_packed_sequence, pad_sequence, PackedSequence,
};
pub use crate::params::{
    pair_with_grads, prefixed, prefixed_mut, ParamMut, ParamRef, ParamSet, Parameters,
};
pub use crate::recurrent::{
    LayerGrads, Mode, Recurrent, RecurrentConfig, RecurrentGrads, RecurrentRun,
};
pub use crate::rng::{Init, Rng};
pub use crate::scalar::Scalar;
pub use crate::sequence::{forward, Direction, InputGrads, SequenceGrads, Steps, Trajectory};
pub use crate::tape::{release_pooled_buffers, GradBlock, GradSum, StackBlock, Tape};
pub use crate::tensor_io::{load_safetensors, save_safetensors, Tensor};
pub use crate::threads::set_threads;

/// The README's example, compiled and run with the doctests.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// What a cell declaration and its training need in scope.
pub mod prelude {
    pub use crate::cells::{GruCell, LstmCell, RnnReluCell, RnnTanhCell};
    pub use crate::loss::{
        bce_with_logits, cross_entropy, log_softmax, log_softmax_backward, mse_loss, nll_loss,
        softmax, ClassLoss, Reduction,
    };
    pub use crate::nalgebra::{DMatrix, DVector};
    pub use crate::{
        forward, gradcheck, infer, recurrent, Adagrad, Adam, AdamW, Cell, Direction, Error, Init,
        InputGrads, Optimizer, Parameters, RmsProp, Rng, Scalar, Sgd, Steps,
    };
}
