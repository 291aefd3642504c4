use rnn_runtime::prelude::*;

#[recurrent]
fn cell(x: Input) {
    let y = tanh(W * x);
}

fn main() {}
