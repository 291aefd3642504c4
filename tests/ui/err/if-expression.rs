use rnn_runtime::prelude::*;

#[recurrent]
fn cell(x: Input, h: State) {
    h = if true { h } else { x };
}

fn main() {}
