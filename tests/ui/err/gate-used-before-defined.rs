use rnn_runtime::prelude::*;

#[recurrent]
fn cell(x: Input, h: State) {
    h = g * h;
    let g = sigmoid(W * x);
}

fn main() {}
