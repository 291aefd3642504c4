use rnn_runtime::prelude::*;

#[recurrent]
fn cell(x: Input, h: State) {
    h = tanh(vec![1.0] + h);
}

fn main() {}
