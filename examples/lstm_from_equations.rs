//! An LSTM declared from the equations of the PyTorch docs, trained from scratch to
//! memorise a sentence, as the seed notebook does with `nn.LSTM`: one-hot characters in,
//! the cell's output compared by MSE with the next character's one-hot, Adam at 0.01.
//!
//! Run: `cargo run --release --example lstm_from_equations [-- --epochs 1000 --seed 42]`
//!
//! Far longer runs can lose the sentence again: at a constant learning rate Adam's loss
//! jumps late in training, here (seed 42, `--epochs 20000`: 0.0115 at epoch 17500, 4.87
//! at 17600, the sentence garbled at the end) as in PyTorch (`nn.LSTM` with the same
//! data, loss and optimizer: three seeds of three jumped tenfold or more, after 3000 to
//! 16000 epochs, and one ended garbled at 20000; `benches/others/torch_long_adam.py`).

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use rnn_runtime::prelude::*;
use rnn_runtime::sequence::Trajectory;
use rnn_suite::progress::Progress;

/// Long short-term memory, as the PyTorch docs write it.
#[recurrent]
pub fn lstm(x: Input, h: State, c: State) {
    let i = sigmoid(W_ii * x + b_ii + W_hi * h + b_hi);
    let f = sigmoid(W_if * x + b_if + W_hf * h + b_hf);
    let g = tanh(W_ig * x + b_ig + W_hg * h + b_hg);
    let o = sigmoid(W_io * x + b_io + W_ho * h + b_ho);
    c = f * c + i * g;
    h = o * tanh(c);
}

const TEXT: &str = "hello pytorch. how long can a rnn cell remember? show me your limit!";
/// The notebook's alphabet; its last two symbols mark the start and the end.
const CHARS: &str = "abcdefghijklmnopqrstuvwxyz ?!.,:;01";

#[derive(Parser)]
#[command(about = "An LSTM from its equations memorises a sentence")]
struct Args {
    /// Training epochs (one Adam step on the whole sentence each).
    #[arg(long, default_value_t = 1000)]
    epochs: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 0.01)]
    lr: f64,
    /// Seed of the initialisation.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

fn main() -> ExitCode {
    rnn_suite::exit(run(&Args::parse()))
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let alphabet: Vec<char> = CHARS.chars().collect();
    let symbols = alphabet.len();
    let (start, end) = (symbols - 2, symbols - 1);
    let mut ids = vec![start];
    for ch in TEXT.chars() {
        ids.push(
            alphabet
                .iter()
                .position(|&a| a == ch)
                .ok_or_else(|| format!("`{ch}` is not in the alphabet"))?,
        );
    }
    ids.push(end);

    // One sequence: the inputs are every symbol but the last, the targets every one but
    // the first. One column per step.
    let steps = Steps::full(ids.len() - 1, 1)?;
    let one_hot = |ids: &[usize]| {
        DMatrix::from_fn(
            symbols,
            ids.len(),
            |i, j| if ids[j] == i { 1.0f32 } else { 0.0 },
        )
    };
    let inputs = one_hot(&ids[..ids.len() - 1]);
    let targets = one_hot(&ids[1..]);

    let mut rng = Rng::seed(args.seed);
    let mut cell: Lstm = Lstm::new(symbols, symbols, &mut rng);
    let mut adam = Adam::new(args.lr);
    println!(
        "{} parameters; {} steps of one-hot inputs over {symbols} symbols",
        cell.num_parameters(),
        steps.len()
    );

    let progress = Progress::new(args.epochs, "epochs");
    let began = Instant::now();
    // Gradients kept from epoch to epoch, as PyTorch keeps each `.grad`: cleared, then
    // added into by each backward pass, with nothing allocated.
    let mut grads = cell.zero_grads();
    for epoch in 0..args.epochs {
        let mut run: Trajectory<f32> =
            forward(&cell, &steps, &[&inputs], None, Direction::Forward)?;
        // The notebook sums one MSE (mean over the symbols) per step.
        let loss = mse_loss(&run.output, &targets, Reduction::Sum)?;
        let scale = 1.0 / symbols as f32;
        // One-hot data: the input's gradient is never needed.
        let d_output = loss.grad * scale;
        grads.fill_zero();
        run.backward_into(&cell, Some(&d_output), &[], InputGrads::Skip, &mut grads)?;
        adam.step(&mut cell, &grads)?;
        if epoch % 100 == 0 || epoch + 1 == args.epochs {
            progress.log(format!("epoch {epoch:4}  loss {:.4}", loss.value * scale));
        }
        progress.tick(format!("loss {:.4}", loss.value * scale));
    }
    progress.finish();
    let elapsed = began.elapsed();
    println!(
        "trained {} epochs in {:.2} s ({:.2} ms per epoch)",
        args.epochs,
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e3 / args.epochs.max(1) as f64
    );

    // Greedy decoding: the most likely symbol at each step, reading the true sentence.
    let run = infer(&cell, &steps, &[&inputs], None, Direction::Forward)?;
    let predicted: Vec<usize> = run
        .output
        .column_iter()
        .map(|column| column.argmax().0)
        .collect();
    let decoded: String = predicted
        .iter()
        .take_while(|&&id| id != end)
        .map(|&id| alphabet[id])
        .collect();
    println!("decoded: {decoded}");
    if decoded != TEXT || predicted.last() != Some(&end) {
        return Err(format!(
            "the decoded text differs from the original:\n  expected: {TEXT}\n  decoded:  {decoded}"
        )
        .into());
    }
    println!("the cell remembers the whole sentence");
    Ok(())
}
