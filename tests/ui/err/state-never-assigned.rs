use rnn_runtime::prelude::*;

#[recurrent]
fn cell(x: Input, h: State, c: State) {
    h = tanh(W * x + U * h + c);
}

fn main() {}
