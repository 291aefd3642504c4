use rnn_runtime::prelude::*;

#[recurrent]
fn cell(x: Input, h: State<P>, c: State) {
    c = tanh(W * x + c);
    h = c;
}

fn main() {}
