//! The TextRNN notebook: predict the third word of six three-word sentences from the
//! first two, with an Elman RNN declared from its equation, a linear output layer on
//! the last step, cross-entropy and Adam.
//!
//! Run: `cargo run --release --example text_rnn [-- --epochs 500 --seed 1]`

use std::process::ExitCode;

use clap::Parser;
use rnn_runtime::modules::Linear;
use rnn_runtime::nalgebra::DMatrix;
use rnn_runtime::prelude::*;
use rnn_suite::progress::Progress;

/// An Elman RNN cell, as `nn.RNN` computes it.
#[recurrent]
pub fn elman(x: Input, h: State) {
    h = tanh(W_ih * x + b_ih + W_hh * h + b_hh);
}

const SENTENCES: [&str; 6] = [
    "i like dog",
    "i love coffee",
    "i hate milk",
    "you like cat",
    "you love milk",
    "you hate coffee",
];

#[derive(Parser)]
#[command(about = "TextRNN: the third word of each sentence from the first two")]
struct Args {
    /// Training epochs (full passes over the six sentences).
    #[arg(long, default_value_t = 500)]
    epochs: usize,
    /// Hidden size.
    #[arg(long, default_value_t = 5)]
    hidden: usize,
    /// Seed of the initialisation.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() -> ExitCode {
    rnn_suite::exit(run(&Args::parse()))
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut vocabulary: Vec<&str> = SENTENCES.iter().flat_map(|s| s.split(' ')).collect();
    vocabulary.sort_unstable();
    vocabulary.dedup();
    let id = |word: &str| {
        vocabulary
            .iter()
            .position(|w| *w == word)
            .expect("a word of the sentences")
    };
    let words: Vec<Vec<usize>> = SENTENCES
        .iter()
        .map(|s| s.split(' ').map(id).collect())
        .collect();
    let (classes, batch) = (vocabulary.len(), SENTENCES.len());

    // Two steps of one-hot words, time-major: column t·B + b is word t of sentence b.
    let steps = Steps::full(2, batch)?;
    let inputs = DMatrix::from_fn(classes, 2 * batch, |i, col| {
        if words[col % batch][col / batch] == i {
            1.0f32
        } else {
            0.0
        }
    });
    let targets: Vec<i64> = words.iter().map(|w| w[2] as i64).collect();

    let mut rng = Rng::seed(args.seed);
    let mut rnn: Elman = Elman::new(classes, args.hidden, &mut rng);
    let mut head: Linear<f32> = Linear::new(args.hidden, classes, true, &mut rng);
    let mut rnn_adam = Adam::new(0.01);
    let mut head_adam = Adam::new(0.01);

    let progress = Progress::new(args.epochs, "epochs");
    let mut loss_value = f32::NAN;
    for epoch in 0..args.epochs {
        let mut run = forward(&rnn, &steps, &[&inputs], None, Direction::Forward)?;
        // The notebook classifies from the last step's output only.
        let last = run.output.columns(batch, batch).into_owned();
        let logits = head.forward(&last)?;
        let loss = cross_entropy(&logits, &targets, &ClassLoss::default())?;
        let (head_grads, d_last) = head.backward(&last, &loss.grad)?;
        let mut d_output = DMatrix::zeros(args.hidden, 2 * batch);
        d_output.columns_mut(batch, batch).copy_from(&d_last);
        // One-hot words: the input's gradient is never needed.
        let grads = run.backward_with(&rnn, Some(&d_output), &[], InputGrads::Skip)?;
        rnn_adam.step(&mut rnn, &grads.params)?;
        head_adam.step(&mut head, &head_grads)?;
        loss_value = loss.value;
        if (epoch + 1) % 100 == 0 {
            progress.log(format!("epoch {:4}  cost = {loss_value:.6}", epoch + 1));
        }
        progress.tick(format!("cost {loss_value:.4}"));
    }
    progress.finish();

    let run = forward(&rnn, &steps, &[&inputs], None, Direction::Forward)?;
    let logits = head.forward(&run.output.columns(batch, batch).into_owned())?;
    let mut wrong = 0;
    for (b, sentence) in SENTENCES.iter().enumerate() {
        let predicted = logits.column(b).argmax().0;
        let prompt: Vec<&str> = sentence.split(' ').take(2).collect();
        let verdict = if predicted == words[b][2] {
            ""
        } else {
            "  (wrong)"
        };
        wrong += usize::from(!verdict.is_empty());
        println!("{} -> {}{verdict}", prompt.join(" "), vocabulary[predicted]);
    }
    println!("final cost {loss_value:.6}");
    if wrong > 0 {
        return Err(format!("{wrong} of {batch} predictions are wrong").into());
    }
    Ok(())
}
