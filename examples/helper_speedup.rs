//! What the helper thread gains where a pass runs on one thread (batches of 1 to 7):
//! forward + backward of the LSTM and the GRU, on one thread and with the helper,
//! alternated in one process (20 rounds, the other core's load changing between
//! processes more than between rounds), the best and the median round of each.
//!
//! Run: `cargo run --release --example helper_speedup -- [TxBxIxH ...]` (default: the
//! sizes in `benches/README.md`).

use std::time::Instant;

use rnn_runtime::nalgebra::DMatrix;
use rnn_runtime::prelude::*;
use rnn_suite::bench_cells::{shape, Shape};

fn pass<C: Cell<f32>>(cell: &C, steps: &Steps, x: &DMatrix<f32>, ones: &DMatrix<f32>) {
    let mut run = forward(cell, steps, &[x], None, Direction::Forward).expect("valid sizes");
    run.backward_with(cell, Some(ones), &[], InputGrads::Skip)
        .expect("valid sizes");
}

/// One thread's and the helper's rounds, in ms a pass, sorted.
fn rounds<C: Cell<f32>>((t, b, i, h): Shape) -> Result<[Vec<f64>; 2], Error> {
    let mut rng = Rng::seed(0);
    let cell = C::with_dims(&[i, h], &Init::pytorch_default(h), &mut rng)?;
    let steps = Steps::full(t, b)?;
    let x = DMatrix::from_fn(i, steps.columns(), |_, _| rng.normal() as f32);
    let ones = DMatrix::from_element(cell.output_size(), steps.columns(), 1.0f32);
    // About 20 M multiply-adds of forward per round.
    let reps = (20_000_000 / (t * b * h * (i + h))).clamp(3, 200);
    let mut times = [Vec::new(), Vec::new()];
    for round in 0..20 {
        let threads = 1 + round % 2;
        rnn_runtime::set_threads(threads)?;
        pass(&cell, &steps, &x, &ones);
        let began = Instant::now();
        for _ in 0..reps {
            pass(&cell, &steps, &x, &ones);
        }
        times[threads - 1].push(began.elapsed().as_secs_f64() * 1e3 / reps as f64);
    }
    for t in &mut times {
        t.sort_by(f64::total_cmp);
    }
    Ok(times)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut sizes: Vec<Shape> = std::env::args()
        .skip(1)
        .map(|s| shape(&s))
        .collect::<Result<_, _>>()?;
    if sizes.is_empty() {
        sizes = [35, 128, 256, 512].map(|h| (70, 1, h, h)).to_vec();
        sizes.extend([(70, 2, 128, 128), (70, 4, 128, 128), (70, 4, 256, 256)]);
    }
    println!("cell  size           one thread (best, median)  with the helper         best/best");
    for size in sizes {
        for (name, [one, two]) in [
            ("lstm", rounds::<LstmCell<f32>>(size)?),
            ("gru", rounds::<GruCell<f32>>(size)?),
        ] {
            let (t, b, i, h) = size;
            println!(
                "{name:5} {:14} {:9.3} {:9.3} ms        {:9.3} {:9.3} ms     {:.2}",
                format!("{t}x{b}x{i}x{h}"),
                one[0],
                one[one.len() / 2],
                two[0],
                two[two.len() / 2],
                two[0] / one[0]
            );
        }
    }
    Ok(())
}
