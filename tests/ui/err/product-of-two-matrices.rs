use rnn_runtime::prelude::*;

#[recurrent]
fn cell(x: Input, h: State) {
    h = tanh(A * B * x);
}

fn main() {}
