use rnn_runtime::prelude::*;

#[recurrent]
fn cell(x: Input, h: State) {
    h = h / 2.0;
}

fn main() {}
