use rnn_runtime::prelude::*;

#[recurrent]
fn cell(x: Input, h: State) {
    h = 1.0 - 0.5;
}

fn main() {}
