//! The cells the speed comparison measures, declared as the team's PyTorch benchmark
//! (`bench/torch_bench.py` in the shared folder) writes them, with its sizes.

use rnn_runtime::recurrent;

/// LSTM with peephole connections on the input, forget and output gates.
#[recurrent]
pub fn peephole_lstm(x: Input, h: State, c: State) {
    let i = sigmoid(W_i * x + b_i + U_i * h + p_i * c);
    let f = sigmoid(W_f * x + b_f + U_f * h + p_f * c);
    let g = tanh(W_g * x + b_g + U_g * h);
    c = f * c + i * g;
    let o = sigmoid(W_o * x + b_o + U_o * h + p_o * c);
    h = o * tanh(c);
}

/// Minimal gated unit (Zhou et al., 2016).
#[recurrent]
pub fn mgu(x: Input, h: State) {
    let f = sigmoid(W_f * x + b_f + U_f * h);
    let n = tanh(W_n * x + b_n + U_n * (f * h));
    h = (1.0 - f) * h + f * n;
}

/// Steps, batch, input size and hidden size: (T, B, I, H).
pub type Shape = (usize, usize, usize, usize);

/// The shape of each size.
pub const SIZES: [(&str, Shape); 4] = [
    ("tiny", (70, 1, 35, 35)),
    ("small", (50, 16, 64, 128)),
    ("medium", (50, 32, 256, 512)),
    ("large", (100, 64, 512, 1024)),
];

/// A size by name, or as `TxBxIxH` (`70x4x128x128`: 70 steps, batch 4, 128 inputs,
/// 128 hidden units).
pub fn shape(size: &str) -> Result<Shape, String> {
    if let Some((_, dims)) = SIZES.iter().find(|(name, _)| *name == size) {
        return Ok(*dims);
    }
    let dims: Vec<usize> = size
        .split('x')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| format!("unknown size `{size}`: a name or TxBxIxH"))?;
    match dims[..] {
        [t, b, i, h] => Ok((t, b, i, h)),
        _ => Err(format!(
            "size `{size}` has {} numbers; TxBxIxH has 4",
            dims.len()
        )),
    }
}

/// The number of gate blocks (G) of each cell, for FLOP counts: 2·G·H·(I+H)·B·T forward.
pub fn gates(cell: &str) -> Option<usize> {
    match cell {
        "lstm" | "peephole_lstm" => Some(4),
        "gru" => Some(3),
        "mgu" => Some(2),
        "rnn_tanh" => Some(1),
        _ => None,
    }
}
