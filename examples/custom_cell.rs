//! Cells that no built-in layer offers, each declared in a few lines of equations and
//! trained on the same task next to the runtime's built-in LSTM: recall the symbol seen
//! `delay` steps ago, from a stream of random one-hot symbols. For each cell: the
//! training loss, accuracy on fresh sequences, time per epoch, and the worst error of
//! its analytic gradients against finite differences.
//!
//! Run: `cargo run --release --example custom_cell [-- --epochs 300 --delay 4]`

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use rnn_runtime::modules::{Linear, LinearGrads};
use rnn_runtime::prelude::*;
use rnn_runtime::sequence::SequenceGrads;
use rnn_suite::progress::Progress;

/// LSTM with peephole connections (Gers & Schmidhuber, 2000): the gates also read the
/// cell state, elementwise.
#[recurrent]
pub fn peephole_lstm(x: Input, h: State, c: State) {
    let i = sigmoid(W_i * x + U_i * h + p_i * c + b_i);
    let f = sigmoid(W_f * x + U_f * h + p_f * c + b_f);
    let g = tanh(W_g * x + U_g * h + b_g);
    c = f * c + i * g;
    let o = sigmoid(W_o * x + U_o * h + p_o * c + b_o);
    h = o * tanh(c);
}

/// Minimal gated unit (Zhou et al., 2016): one gate both forgets and resets.
#[recurrent]
pub fn mgu(x: Input, h: State) {
    let f = sigmoid(W_f * x + U_f * h + b_f);
    let n = tanh(W_n * x + U_n * (f * h) + b_n);
    h = (1 - f) * h + f * n;
}

/// LSTM with coupled input and forget gates (Greff et al., 2017): what is forgotten
/// is replaced, `i = 1 - f`, one gate fewer.
#[recurrent]
pub fn cifg_lstm(x: Input, h: State, c: State) {
    let f = sigmoid(W_f * x + U_f * h + b_f);
    let g = tanh(W_g * x + U_g * h + b_g);
    let o = sigmoid(W_o * x + U_o * h + b_o);
    c = f * c + (1 - f) * g;
    h = o * tanh(c);
}

/// Update-gate RNN (Collins et al., 2017): a vanilla RNN's candidate, let in by one
/// gate, with no reset.
#[recurrent]
pub fn ugrnn(x: Input, h: State) {
    let n = tanh(W_n * x + U_n * h + b_n);
    let g = sigmoid(W_g * x + U_g * h + b_g);
    h = g * h + (1 - g) * n;
}

#[derive(Parser)]
#[command(about = "Custom cells from equations, trained next to the built-in LSTM")]
struct Args {
    /// Training epochs (one Adam step on a fresh batch each).
    #[arg(long, default_value_t = 400)]
    epochs: usize,
    /// How many steps back the symbol to recall is.
    #[arg(long, default_value_t = 4)]
    delay: usize,
    /// Distinct symbols.
    #[arg(long, default_value_t = 8)]
    symbols: usize,
    /// Steps per sequence.
    #[arg(long, default_value_t = 24)]
    steps: usize,
    /// Sequences per batch.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Hidden size.
    #[arg(long, default_value_t = 32)]
    hidden: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 0.01)]
    lr: f64,
    /// The accuracy on fresh sequences every cell must reach.
    #[arg(long, default_value_t = 0.95)]
    accuracy: f64,
    /// Seed of initialisation and data.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// A batch of the recall task: one-hot inputs (time-major) and, from step `delay` on,
/// the symbol `delay` steps back as the target (before it, nothing to recall: ignored).
struct Task {
    inputs: DMatrix<f32>,
    targets: Vec<i64>,
}

impl Task {
    fn draw(args: &Args, batch: usize, rng: &mut Rng) -> Task {
        let columns = args.steps * batch;
        let symbols: Vec<usize> = (0..columns).map(|_| rng.below(args.symbols)).collect();
        let inputs = DMatrix::from_fn(args.symbols, columns, |r, col| {
            f32::from(u8::from(symbols[col] == r))
        });
        let targets = (0..columns)
            .map(|col| match (col / batch).checked_sub(args.delay) {
                Some(t) => symbols[t * batch + col % batch] as i64,
                None => -100,
            })
            .collect();
        Task { inputs, targets }
    }
}

/// What one cell achieved.
struct Outcome {
    loss: f32,
    accuracy: f64,
    per_epoch: Duration,
    gradcheck: f64,
}

/// Trains `C` (with a linear head) on the task and measures it; `C64` is the same cell
/// in f64, for the gradient check.
fn train<C: Cell<f32>, C64: Cell<f64>>(args: &Args, progress: &Progress) -> Result<Outcome, Error> {
    let mut rng = Rng::seed(args.seed);
    let dims = [args.symbols, args.hidden];
    let mut cell = C::with_dims(&dims, &Init::pytorch_default(args.hidden), &mut rng)?;
    let mut head: Linear<f32> = Linear::new(args.hidden, args.symbols, true, &mut rng);
    let (mut cell_adam, mut head_adam) = (Adam::new(args.lr), Adam::new(args.lr));
    let steps = Steps::full(args.steps, args.batch)?;
    let mut loss = f32::NAN;
    let mut training = Duration::ZERO;
    for _ in 0..args.epochs {
        let task = Task::draw(args, args.batch, &mut rng);
        let started = Instant::now();
        let mut run = forward(&cell, &steps, &[&task.inputs], None, Direction::Forward)?;
        let logits = head.forward(&run.output)?;
        let step_loss = cross_entropy(&logits, &task.targets, &ClassLoss::default())?;
        let (head_grads, d_output): (LinearGrads<f32>, _) =
            head.backward(&run.output, &step_loss.grad)?;
        let grads: SequenceGrads<f32, C::Grads> =
            run.backward_with(&cell, Some(&d_output), &[], InputGrads::Skip)?;
        cell_adam.step(&mut cell, &grads.params)?;
        head_adam.step(&mut head, &head_grads)?;
        training += started.elapsed();
        loss = step_loss.value;
        progress.tick(format!("{} loss {loss:.3}", C::SPEC.name));
    }

    // Accuracy on sequences never trained on.
    let test = Task::draw(args, 256, &mut rng);
    let run = infer(
        &cell,
        &Steps::full(args.steps, 256)?,
        &[&test.inputs],
        None,
        Direction::Forward,
    )?;
    let logits = head.forward(&run.output)?;
    let (mut right, mut counted) = (0usize, 0usize);
    for (column, &target) in logits.column_iter().zip(&test.targets) {
        if target >= 0 {
            counted += 1;
            right += usize::from(column.argmax().0 == target as usize);
        }
    }
    Ok(Outcome {
        loss,
        accuracy: right as f64 / counted.max(1) as f64,
        per_epoch: training / args.epochs.max(1) as u32,
        gradcheck: gradcheck::<C64>(&[5, 4], 3, 6, args.seed)?,
    })
}

fn main() -> ExitCode {
    rnn_suite::exit(run(&Args::parse()))
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    if args.delay >= args.steps {
        return Err(format!(
            "--delay {} leaves nothing to recall in sequences of --steps {}",
            args.delay, args.steps
        )
        .into());
    }
    println!(
        "recall the symbol {} steps back ({} symbols, {} steps, batch {}, hidden {}, {} epochs)",
        args.delay, args.symbols, args.steps, args.batch, args.hidden, args.epochs
    );
    let progress = Progress::new(5 * args.epochs, "epochs");
    let results = [
        (
            "LSTM (built-in)",
            train::<LstmCell<f32>, LstmCell<f64>>(args, &progress)?,
        ),
        (
            "peephole LSTM",
            train::<PeepholeLstm<f32>, PeepholeLstm<f64>>(args, &progress)?,
        ),
        (
            "minimal gated unit",
            train::<Mgu<f32>, Mgu<f64>>(args, &progress)?,
        ),
        (
            "coupled-gate LSTM",
            train::<CifgLstm<f32>, CifgLstm<f64>>(args, &progress)?,
        ),
        (
            "update-gate RNN",
            train::<Ugrnn<f32>, Ugrnn<f64>>(args, &progress)?,
        ),
    ];
    progress.finish();

    println!(
        "{:<22}{:>10}{:>10}{:>14}{:>12}",
        "cell", "loss", "accuracy", "ms / epoch", "gradcheck"
    );
    let mut failures = Vec::new();
    for (name, outcome) in &results {
        println!(
            "{name:<22}{:>10.4}{:>9.1}%{:>14.3}{:>12.1e}",
            outcome.loss,
            outcome.accuracy * 100.0,
            outcome.per_epoch.as_secs_f64() * 1e3,
            outcome.gradcheck
        );
        if outcome.accuracy < args.accuracy {
            failures.push(format!(
                "{name} recalls {:.1}% of symbols, below the required {:.1}%",
                outcome.accuracy * 100.0,
                args.accuracy * 100.0
            ));
        }
        if outcome.gradcheck > 1e-6 {
            failures.push(format!(
                "{name}'s gradients differ from finite differences by {:.1e}",
                outcome.gradcheck
            ));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n").into())
    }
}
