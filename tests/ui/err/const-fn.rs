use rnn_runtime::prelude::*;

#[recurrent]
const fn cell(x: Input, h: State) {
    h = tanh(U * h);
}

fn main() {}
