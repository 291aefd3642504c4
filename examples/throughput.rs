//! How fast cells declared from their equations run: forward over a whole sequence, and
//! forward + backward (loss = the sum of all outputs), per cell and size.
//!
//! Run: `cargo run --release --example throughput -- [--json] [--sizes tiny,small,medium,large]
//! [--cells lstm,gru,rnn_tanh,peephole_lstm,mgu] [--threads N]`; a size may also be
//! given as `TxBxIxH` (`--sizes 70x4x128x128`).
//!
//! Forward is [`infer`]: nothing kept for backward, as the PyTorch benchmark times its
//! forward under `torch.no_grad()`; forward + backward runs [`forward`], which keeps the
//! tape, and then its backward pass.
//!
//! Times are medians of repeated runs after warm-up (runs under 2 ms timed in batches,
//! each sample a batch's mean), in milliseconds; GFLOP/s counts
//! 2·G·H·(I+H)·B·T forward FLOPs (G = 4 LSTM, 3 GRU, 1 RNN) and 3x that for forward +
//! backward, as the team's PyTorch benchmark (`bench/torch_bench.py`) does. Backward
//! computes the gradients of the parameters, not of the input, which is data (in the
//! PyTorch benchmark a tensor without `requires_grad`); `--input-grads` adds them.
//!
//! On a processor with AMX, the large sizes' products run on its tiles (see the
//! README's Speed section); `RNN_AMX=0` in the environment keeps them on the f32
//! kernels, to compare the two on one machine.

use std::time::{Duration, Instant};

use clap::Parser;
use rnn_runtime::nalgebra::DMatrix;
use rnn_runtime::prelude::*;
use rnn_suite::bench_cells::{gates, shape, Mgu, PeepholeLstm};

#[derive(Parser)]
#[command(about = "Times forward and forward+backward of cells declared with #[recurrent]")]
struct Args {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Comma-separated sizes: tiny, small, medium, large, or TxBxIxH (70x4x128x128).
    #[arg(long, default_value = "tiny,small,medium,large")]
    sizes: String,
    /// Comma-separated cells: lstm, gru, rnn_tanh, peephole_lstm, mgu.
    #[arg(long, default_value = "lstm,gru,rnn_tanh,peephole_lstm,mgu")]
    cells: String,
    /// Threads to use (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Compute the input's gradient in backward too.
    #[arg(long)]
    input_grads: bool,
}

struct Row {
    size: String,
    cell: String,
    fwd_ms: f64,
    fwdbwd_ms: f64,
    flops: f64,
}

/// The least time of the warm-up runs before each timing: with two runs only, the first
/// cell timed in a process (the tiny LSTM, 0.05 ms a run) ran 5-10% slower than the
/// same cell timed again after it (session 19, `benches/README.md`).
const WARM_UP: Duration = Duration::from_millis(50);

/// The least time of one timed sample: runs shorter than this are timed in batches
/// (each sample the mean of its batch). Timed one by one, the tiny cells' 30-50 µs
/// runs gave medians 20% apart from one process to the next (session 20).
const SAMPLE: Duration = Duration::from_millis(2);

/// The median time of one run, in milliseconds, over `reps` samples after warm-up.
fn median_ms(reps: usize, mut run: impl FnMut()) -> f64 {
    let began = Instant::now();
    let mut warm_up_runs = 0u32;
    while warm_up_runs < 2 || began.elapsed() < WARM_UP {
        run();
        warm_up_runs += 1;
    }
    let per_run = began.elapsed() / warm_up_runs;
    let batch = (SAMPLE.as_secs_f64() / per_run.as_secs_f64())
        .ceil()
        .max(1.0) as u32;
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let began = Instant::now();
            for _ in 0..batch {
                run();
            }
            began.elapsed().as_secs_f64() * 1e3 / f64::from(batch)
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn time_cell<C: Cell<f32>>(
    t: usize,
    b: usize,
    i: usize,
    h: usize,
    reps: usize,
    input_grads: InputGrads,
) -> Result<(f64, f64), Error> {
    let mut rng = Rng::seed(0);
    let cell = C::with_dims(&[i, h], &Init::pytorch_default(h), &mut rng)?;
    let steps = Steps::full(t, b)?;
    let x = DMatrix::from_fn(i, steps.columns(), |_, _| rng.normal() as f32);
    let ones = DMatrix::from_element(cell.output_size(), steps.columns(), 1.0f32);
    // Forward as PyTorch's script times it, under `torch.no_grad()`: nothing kept for
    // backward.
    let fwd = median_ms(reps, || {
        infer(&cell, &steps, &[&x], None, Direction::Forward).expect("valid sizes");
    });
    let fwdbwd = median_ms(reps, || {
        let mut run = forward(&cell, &steps, &[&x], None, Direction::Forward).expect("valid sizes");
        run.backward_with(&cell, Some(&ones), &[], input_grads)
            .expect("valid sizes");
    });
    Ok((fwd, fwdbwd))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if let Some(threads) = args.threads {
        rnn_runtime::set_threads(threads)?;
    }
    let input_grads = if args.input_grads {
        InputGrads::Compute
    } else {
        InputGrads::Skip
    };
    let mut rows = Vec::new();
    for size in args.sizes.split(',') {
        let (t, b, i, h) = shape(size)?;
        let reps = if size == "large" { 3 } else { 10 };
        for cell in args.cells.split(',') {
            let g = gates(cell).ok_or_else(|| format!("unknown cell `{cell}`"))?;
            let (fwd_ms, fwdbwd_ms) = match cell {
                "lstm" => time_cell::<LstmCell<f32>>(t, b, i, h, reps, input_grads)?,
                "gru" => time_cell::<GruCell<f32>>(t, b, i, h, reps, input_grads)?,
                "rnn_tanh" => time_cell::<RnnTanhCell<f32>>(t, b, i, h, reps, input_grads)?,
                "peephole_lstm" => time_cell::<PeepholeLstm<f32>>(t, b, i, h, reps, input_grads)?,
                _ => time_cell::<Mgu<f32>>(t, b, i, h, reps, input_grads)?,
            };
            let flops = (2 * g * h * (i + h) * b * t) as f64;
            let row = Row {
                size: size.to_string(),
                cell: cell.to_string(),
                fwd_ms,
                fwdbwd_ms,
                flops,
            };
            if !args.json {
                println!(
                    "{:7} {:14} fwd {:10.3} ms ({:7.2} GF/s)  fwd+bwd {:10.3} ms ({:7.2} GF/s)",
                    row.size,
                    row.cell,
                    row.fwd_ms,
                    row.flops / row.fwd_ms / 1e6,
                    row.fwdbwd_ms,
                    3.0 * row.flops / row.fwdbwd_ms / 1e6
                );
            }
            rows.push(row);
        }
    }
    if args.json {
        let rows: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{{\"size\": \"{}\", \"cell\": \"{}\", \"fwd_ms\": {:.4}, \"fwdbwd_ms\": {:.4}, \"fwd_gflops\": {:.3}, \"fwdbwd_gflops\": {:.3}}}",
                    r.size,
                    r.cell,
                    r.fwd_ms,
                    r.fwdbwd_ms,
                    r.flops / r.fwd_ms / 1e6,
                    3.0 * r.flops / r.fwdbwd_ms / 1e6
                )
            })
            .collect();
        println!("{{\"rows\": [{}]}}", rows.join(", "));
    }
    Ok(())
}
