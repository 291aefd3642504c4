use rnn_runtime::prelude::*;

#[recurrent]
fn cell(x: Input, h: State) {
    let unused = sigmoid(W * x);
    h = tanh(U * h + V * x);
}

fn main() {}
