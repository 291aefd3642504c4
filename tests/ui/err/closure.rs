use rnn_runtime::prelude::*;

#[recurrent]
fn cell(x: Input, h: State) {
    h = (|v| v)(h);
}

fn main() {}
