use rnn_runtime::prelude::*;

#[recurrent]
fn cell(x: Input, h: State) {
    h = (W * x).tanh();
}

fn main() {}
