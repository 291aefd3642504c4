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

/// [`RnnTanhCell`] without biases, as `nn.RNN(bias=False)`.
#[recurrent]
pub fn rnn_tanh_cell_no_bias(x: Input, h: State) {
    h = tanh(W_ih * x + W_hh * h);
}

/// [`RnnReluCell`] without biases, as `nn.RNN(nonlinearity="relu", bias=False)`.
#[recurrent]
pub fn rnn_relu_cell_no_bias(x: Input, h: State) {
    h = relu(W_ih * x + W_hh * h);
}

/// [`LstmCell`] without biases, as `nn.LSTM(bias=False)`.
#[recurrent]
pub fn lstm_cell_no_bias(x: Input, h: State, c: State) {
    let i = sigmoid(W_ii * x + W_hi * h);
    let f = sigmoid(W_if * x + W_hf * h);
    let g = tanh(W_ig * x + W_hg * h);
    let o = sigmoid(W_io * x + W_ho * h);
    c = f * c + i * g;
    h = o * tanh(c);
}

/// LSTM with a projected hidden state of size P, as `nn.LSTM(proj_size=P)`:
/// `h = W_hr (o * tanh(c))`.
#[recurrent]
pub fn lstm_proj_cell(x: Input, h: State<P>, c: State) {
    let i = sigmoid(W_ii * x + b_ii + W_hi * h + b_hi);
    let f = sigmoid(W_if * x + b_if + W_hf * h + b_hf);
    let g = tanh(W_ig * x + b_ig + W_hg * h + b_hg);
    let o = sigmoid(W_io * x + b_io + W_ho * h + b_ho);
    c = f * c + i * g;
    h = W_hr * (o * tanh(c));
}

/// [`LstmProjCell`] without biases, as `nn.LSTM(proj_size=P, bias=False)`.
#[recurrent]
pub fn lstm_proj_cell_no_bias(x: Input, h: State<P>, c: State) {
    let i = sigmoid(W_ii * x + W_hi * h);
    let f = sigmoid(W_if * x + W_hf * h);
    let g = tanh(W_ig * x + W_hg * h);
    let o = sigmoid(W_io * x + W_ho * h);
    c = f * c + i * g;
    h = W_hr * (o * tanh(c));
}

/// [`GruCell`] without biases, as `nn.GRU(bias=False)`.
#[recurrent]
pub fn gru_cell_no_bias(x: Input, h: State) {
    let r = sigmoid(W_ir * x + W_hr * h);
    let z = sigmoid(W_iz * x + W_hz * h);
    let n = tanh(W_in * x + r * (W_hn * h));
    h = (1.0 - z) * n + z * h;
}

/// How a cell's parameters make up PyTorch's tensors: each PyTorch tensor (without its
/// `_l0` suffix) stacks these parameters by rows, in PyTorch's gate order.
pub trait TorchNames {
    /// (PyTorch name, our parameters stacked in it).
    const TENSORS: &'static [(&'static str, &'static [&'static str])];
}

const RNN: &[(&str, &[&str])] = &[
    ("weight_ih", &["W_ih"]),
    ("weight_hh", &["W_hh"]),
    ("bias_ih", &["b_ih"]),
    ("bias_hh", &["b_hh"]),
];
const RNN_NO_BIAS: &[(&str, &[&str])] = &[("weight_ih", &["W_ih"]), ("weight_hh", &["W_hh"])];
const LSTM: &[(&str, &[&str])] = &[
    ("weight_ih", &["W_ii", "W_if", "W_ig", "W_io"]),
    ("weight_hh", &["W_hi", "W_hf", "W_hg", "W_ho"]),
    ("bias_ih", &["b_ii", "b_if", "b_ig", "b_io"]),
    ("bias_hh", &["b_hi", "b_hf", "b_hg", "b_ho"]),
];
const LSTM_NO_BIAS: &[(&str, &[&str])] = &[
    ("weight_ih", &["W_ii", "W_if", "W_ig", "W_io"]),
    ("weight_hh", &["W_hi", "W_hf", "W_hg", "W_ho"]),
];
const LSTM_PROJ: &[(&str, &[&str])] = &[
    ("weight_ih", &["W_ii", "W_if", "W_ig", "W_io"]),
    ("weight_hh", &["W_hi", "W_hf", "W_hg", "W_ho"]),
    ("bias_ih", &["b_ii", "b_if", "b_ig", "b_io"]),
    ("bias_hh", &["b_hi", "b_hf", "b_hg", "b_ho"]),
    ("weight_hr", &["W_hr"]),
];
const LSTM_PROJ_NO_BIAS: &[(&str, &[&str])] = &[
    ("weight_ih", &["W_ii", "W_if", "W_ig", "W_io"]),
    ("weight_hh", &["W_hi", "W_hf", "W_hg", "W_ho"]),
    ("weight_hr", &["W_hr"]),
];
const GRU: &[(&str, &[&str])] = &[
    ("weight_ih", &["W_ir", "W_iz", "W_in"]),
    ("weight_hh", &["W_hr", "W_hz", "W_hn"]),
    ("bias_ih", &["b_ir", "b_iz", "b_in"]),
    ("bias_hh", &["b_hr", "b_hz", "b_hn"]),
];
const GRU_NO_BIAS: &[(&str, &[&str])] = &[
    ("weight_ih", &["W_ir", "W_iz", "W_in"]),
    ("weight_hh", &["W_hr", "W_hz", "W_hn"]),
];

macro_rules! torch_names {
    ($($cell:ident => $tensors:expr;)*) => {
        $(impl<T> TorchNames for $cell<T> {
            const TENSORS: &'static [(&'static str, &'static [&'static str])] = $tensors;
        })*
    };
}

torch_names! {
    RnnTanhCell => RNN;
    RnnReluCell => RNN;
    LstmCell => LSTM;
    LstmProjCell => LSTM_PROJ;
    GruCell => GRU;
    RnnTanhCellNoBias => RNN_NO_BIAS;
    RnnReluCellNoBias => RNN_NO_BIAS;
    LstmCellNoBias => LSTM_NO_BIAS;
    LstmProjCellNoBias => LSTM_PROJ_NO_BIAS;
    GruCellNoBias => GRU_NO_BIAS;
}
