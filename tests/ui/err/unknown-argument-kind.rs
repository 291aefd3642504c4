use rnn_runtime::prelude::*;

#[recurrent]
fn cell(x: Inptu, h: State) {
    h = tanh(U * h);
}

fn main() {}
