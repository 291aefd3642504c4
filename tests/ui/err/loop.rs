use rnn_runtime::prelude::*;

#[recurrent]
fn cell(x: Input, h: State) {
    for _ in 0..2 {}
    h = tanh(U * h);
}

fn main() {}
