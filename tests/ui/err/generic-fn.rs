use rnn_runtime::prelude::*;

#[recurrent]
fn cell<T>(x: Input, h: State) {
    h = tanh(U * h);
}

fn main() {}
