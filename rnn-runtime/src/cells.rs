//! The built-in cells, declared with `#[recurrent]` exactly as a user declares one, in
//! PyTorch's forms and named as PyTorch names its cells.

use crate::recurrent;

/// An Elman RNN cell with tanh, as `torch.nn.RNNCell(nonlinearity="tanh")`.
#[recurrent]
pub fn rnn_tanh_cell(x: Input, h: State) {
    h = tanh(W_ih * x + b_ih + W_hh * h + b_hh);
}

/// An Elman RNN cell with relu, as `torch.nn.RNNCell(nonlinearity="relu")`.
#[recurrent]
pub fn rnn_relu_cell(x: Input, h: State) {
    h = relu(W_ih * x + b_ih + W_hh * h + b_hh);
}

/// Long short-term memory, as `torch.nn.LSTMCell` (gates i, f, g, o).
#[recurrent]
pub fn lstm_cell(x: Input, h: State, c: State) {
    let i = sigmoid(W_ii * x + b_ii + W_hi * h + b_hi);
    let f = sigmoid(W_if * x + b_if + W_hf * h + b_hf);
    let g = tanh(W_ig * x + b_ig + W_hg * h + b_hg);
    let o = sigmoid(W_io * x + b_io + W_ho * h + b_ho);
    c = f * c + i * g;
    h = o * tanh(c);
}

/// Gated recurrent unit, as `torch.nn.GRUCell`: the reset gate applies to
/// `W_hn h + b_hn`, not to h.
#[recurrent]
pub fn gru_cell(x: Input, h: State) {
    let r = sigmoid(W_ir * x + b_ir + W_hr * h + b_hr);
    let z = sigmoid(W_iz * x + b_iz + W_hz * h + b_hz);
    let n = tanh(W_in * x + b_in + r * (W_hn * h + b_hn));
    h = (1.0 - z) * n + z * h;
}
