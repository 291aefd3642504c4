use rnn_runtime::prelude::*;

#[recurrent]
fn cell(x: Input, h: State) -> f32 {
    h = tanh(U * h);
}

fn main() {}
