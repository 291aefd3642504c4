use rnn_runtime::prelude::*;

#[recurrent]
async fn cell(x: Input, h: State) {
    h = tanh(U * h);
}

fn main() {}
