use rnn_runtime::prelude::*;

#[recurrent]
fn cell(x: Input, h: State) {
    let g = tanh(W * x);
    g = g;
    h = g * h;
}

fn main() {}
