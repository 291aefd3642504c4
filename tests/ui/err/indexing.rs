use rnn_runtime::prelude::*;

#[recurrent]
fn cell(x: Input, h: State) {
    h = tanh(h[0] * x);
}

fn main() {}
