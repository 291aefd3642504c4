use rnn_runtime::prelude::*;

#[recurrent]
fn cell(h: State) {
    h = tanh(U * h);
}

fn main() {}
