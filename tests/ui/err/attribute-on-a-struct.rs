use rnn_runtime::prelude::*;

#[recurrent]
struct Cell {
    h: f32,
}

fn main() {}
