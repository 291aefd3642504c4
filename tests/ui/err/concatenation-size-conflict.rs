use rnn_runtime::prelude::*;

#[recurrent]
fn cell(x: Input, h: State) {
    h = tanh(W * [h, x] + W * h);
}

fn main() {}
