use rnn_runtime::prelude::*;

#[recurrent]
fn cell(x: Input, h: State) {
    x = tanh(x);
    h = tanh(W * x + U * h);
}

fn main() {}
