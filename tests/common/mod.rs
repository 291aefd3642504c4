//! Cells shared by more than one test file (each file in `tests/` is a crate of its own).

use rnn_runtime::prelude::*;

/// Colah's form: gates over the concatenation [h, x], which the compiler splits by
/// columns, so that the stacks hold column ranges of the parameters (the recurrent
/// stack their first `H` columns, the input's the rest).
#[recurrent]
pub fn colah_lstm(x: Input, h: State, c: State) {
    let f = sigmoid(W_f * [h, x] + b_f);
    let i = sigmoid(W_i * [h, x] + b_i);
    let g = tanh(W_c * [h, x] + b_c);
    c = f * c + i * g;
    let o = sigmoid(W_o * [h, x] + b_o);
    h = o * tanh(c);
}
