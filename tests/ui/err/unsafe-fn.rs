use rnn_runtime::prelude::*;

#[recurrent]
unsafe fn cell(x: Input, h: State) {
    h = tanh(U * h);
}

fn main() {}
