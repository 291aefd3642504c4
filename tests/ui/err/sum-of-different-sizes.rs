use rnn_runtime::prelude::*;

#[recurrent]
fn cell(x: Input, h: State) {
    h = h + x;
}

fn main() {}
