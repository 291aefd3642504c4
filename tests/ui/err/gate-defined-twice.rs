use rnn_runtime::prelude::*;

#[recurrent]
fn cell(x: Input, h: State) {
    let g = sigmoid(W * x);
    let g = tanh(g);
    h = g * h;
}

fn main() {}
