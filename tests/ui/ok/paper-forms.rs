use rnn_runtime::prelude::*;

/// Colah's LSTM, gates over the concatenation of the state and the input.
#[recurrent]
pub fn colah_lstm(x: Input, h: State, c: State) {
    let f = sigmoid(W_f * [h, x] + b_f);
    let i = sigmoid(W_i * [h, x] + b_i);
    let g = tanh(W_c * [h, x] + b_c);
    c = f * c + i * g;
    let o = sigmoid(W_o * [h, x] + b_o);
    h = o * tanh(c);
}

/// IndRNN: the recurrent weight is a vector, elementwise.
#[recurrent]
pub fn ind_rnn(x: Input, h: State) {
    h = relu(W * x + u * h + b);
}

fn main() -> Result<(), Error> {
    assert!(gradcheck::<ColahLstm<f64>>(&[2, 3], 2, 3, 4)? < 1e-6);
    assert!(gradcheck::<IndRnn<f64>>(&[2, 3], 2, 3, 4)? < 1e-6);
    Ok(())
}
