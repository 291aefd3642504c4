//! The part-of-speech tagger of PyTorch's sequence-models tutorial: word embeddings, an
//! LSTM declared from its equations, a linear layer to tag space, log-softmax and NLL,
//! trained with SGD on two sentences. `--cell gru` answers the notebook's question of
//! how a GRU does on the same task.
//!
//! Run: `cargo run --release --example pos_tagger [-- --cell gru --epochs 300]`

use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use rnn_runtime::modules::{Embedding, EmbeddingGrads, Linear, LinearGrads};
use rnn_runtime::prelude::*;
use rnn_runtime::recurrent::{Mode, Recurrent, RecurrentConfig, RecurrentGrads};
use rnn_suite::progress::Progress;

/// Long short-term memory, as the notebook's `nn.LSTM` computes it.
#[recurrent]
pub fn lstm(x: Input, h: State, c: State) {
    let i = sigmoid(W_ii * x + b_ii + W_hi * h + b_hi);
    let f = sigmoid(W_if * x + b_if + W_hf * h + b_hf);
    let g = tanh(W_ig * x + b_ig + W_hg * h + b_hg);
    let o = sigmoid(W_io * x + b_io + W_ho * h + b_ho);
    c = f * c + i * g;
    h = o * tanh(c);
}

/// The gated recurrent unit, as `nn.GRU` computes it.
#[recurrent]
pub fn gru(x: Input, h: State) {
    let r = sigmoid(W_ir * x + b_ir + W_hr * h + b_hr);
    let z = sigmoid(W_iz * x + b_iz + W_hz * h + b_hz);
    let n = tanh(W_in * x + b_in + r * (W_hn * h + b_hn));
    h = (1 - z) * n + z * h;
}

const TAGS: [&str; 3] = ["DET", "NN", "V"];
const TRAINING: [(&str, &str); 2] = [
    ("The dog ate the apple", "DET NN V DET NN"),
    ("Everybody read that book", "NN V DET NN"),
];

#[derive(Clone, Copy, ValueEnum)]
enum CellKind {
    Lstm,
    Gru,
}

#[derive(Parser)]
#[command(about = "An LSTM (or GRU) part-of-speech tagger on the tutorial's two sentences")]
struct Args {
    /// The recurrent cell.
    #[arg(long, value_enum, default_value = "lstm")]
    cell: CellKind,
    /// Training epochs (passes over both sentences, one SGD step per sentence).
    #[arg(long, default_value_t = 300)]
    epochs: usize,
    /// SGD learning rate.
    #[arg(long, default_value_t = 0.1)]
    lr: f64,
    /// Embedding size.
    #[arg(long, default_value_t = 6)]
    embedding: usize,
    /// Hidden size.
    #[arg(long, default_value_t = 6)]
    hidden: usize,
    /// Seed of the initialisation.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Embedding, recurrent layer, linear layer to tag scores.
#[derive(Parameters)]
struct Tagger<C> {
    embed: Embedding<f32>,
    rnn: Recurrent<C>,
    head: Linear<f32>,
}

/// The tagger's gradients, named as its parameters.
#[derive(Parameters)]
struct TaggerGrads<G> {
    embed: EmbeddingGrads<f32>,
    rnn: RecurrentGrads<f32, G>,
    head: LinearGrads<f32>,
}

impl<C: Cell<f32>> Tagger<C> {
    fn new(args: &Args, words: usize, rng: &mut Rng) -> Result<Self, Error> {
        Ok(Tagger {
            embed: Embedding::new(words, args.embedding, None, rng)?,
            rnn: Recurrent::new(
                &[args.embedding, args.hidden],
                RecurrentConfig::default(),
                &Init::pytorch_default(args.hidden),
                rng,
            )?,
            head: Linear::new(args.hidden, TAGS.len(), true, rng),
        })
    }

    /// Log-probabilities of each tag (rows) for each word (columns).
    fn tag_scores(&self, ids: &[usize]) -> Result<DMatrix<f32>, Error> {
        let x = self.embed.forward(ids)?;
        let run = self.rnn.forward(&x, 1, None, Mode::Infer)?;
        Ok(log_softmax(&self.head.forward(&run.output)?))
    }

    /// One SGD step on one sentence; returns its loss.
    fn train_step(
        &mut self,
        ids: &[usize],
        tags: &[i64],
        sgd: &mut Sgd<f32>,
    ) -> Result<f32, Error> {
        let x = self.embed.forward(ids)?;
        let mut run = self.rnn.forward(&x, 1, None, Mode::Eval)?;
        let logits = self.head.forward(&run.output)?;
        let log_probs = log_softmax(&logits);
        let loss = nll_loss(&log_probs, tags, &ClassLoss::default())?;
        let d_logits = log_softmax_backward(&log_probs, &loss.grad)?;
        let (head, d_hidden) = self.head.backward(&run.output, &d_logits)?;
        let rnn = run.backward(&self.rnn, Some(&d_hidden), &[])?;
        let embed = self.embed.backward(ids, &rnn.input)?;
        sgd.step(self, &TaggerGrads { embed, rnn, head })?;
        Ok(loss.value)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    rnn_suite::exit(match args.cell {
        CellKind::Lstm => run::<Lstm<f32>>(&args),
        CellKind::Gru => run::<Gru<f32>>(&args),
    })
}

/// Trains, reports, and fails if any word of the training sentences is mis-tagged.
fn run<C: Cell<f32>>(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    // Words get ids in order of first appearance, as the tutorial's `word_to_ix`.
    let mut vocabulary: Vec<&str> = Vec::new();
    for (sentence, _) in TRAINING {
        for word in sentence.split(' ') {
            if !vocabulary.contains(&word) {
                vocabulary.push(word);
            }
        }
    }
    let encode = |sentence: &str| -> Vec<usize> {
        sentence
            .split(' ')
            .map(|w| {
                vocabulary
                    .iter()
                    .position(|v| *v == w)
                    .expect("a known word")
            })
            .collect()
    };
    let tag_ids = |tags: &str| -> Vec<i64> {
        tags.split(' ')
            .map(|t| TAGS.iter().position(|v| *v == t).expect("a known tag") as i64)
            .collect()
    };
    let data: Vec<(Vec<usize>, Vec<i64>)> = TRAINING
        .iter()
        .map(|(sentence, tags)| (encode(sentence), tag_ids(tags)))
        .collect();

    let mut rng = Rng::seed(args.seed);
    let mut model: Tagger<C> = Tagger::new(args, vocabulary.len(), &mut rng)?;
    let mut sgd = Sgd::new(args.lr);
    let (first, first_tags) = (&data[0].0, TRAINING[0].0);
    println!(
        "{} tagger, {} words, tags {TAGS:?}",
        C::SPEC.name,
        vocabulary.len()
    );
    println!("tag scores of \"{first_tags}\" before training (rows: words, columns: log-probabilities of DET NN V):");
    print_scores(&model.tag_scores(first)?, first_tags);

    let progress = Progress::new(args.epochs, "epochs");
    for epoch in 0..args.epochs {
        let mut total = 0.0;
        for (ids, tags) in &data {
            total += model.train_step(ids, tags, &mut sgd)?;
        }
        if (epoch + 1) % 50 == 0 {
            progress.log(format!(
                "epoch {:4}  loss {:.4}",
                epoch + 1,
                total / data.len() as f32
            ));
        }
        progress.tick(format!("loss {:.4}", total / data.len() as f32));
    }
    progress.finish();

    println!("tag scores of \"{first_tags}\" after training:");
    print_scores(&model.tag_scores(first)?, first_tags);
    let mut wrong = 0;
    for ((sentence, expected), (ids, _)) in TRAINING.iter().zip(&data) {
        let scores = model.tag_scores(ids)?;
        let predicted: Vec<&str> = scores
            .column_iter()
            .map(|column| TAGS[column.argmax().0])
            .collect();
        let expected: Vec<&str> = expected.split(' ').collect();
        let misses = predicted
            .iter()
            .zip(&expected)
            .filter(|(p, e)| p != e)
            .count();
        wrong += misses;
        let verdict = if misses == 0 { "" } else { "  (wrong)" };
        println!("{sentence} -> {}{verdict}", predicted.join(" "));
    }
    if wrong > 0 {
        return Err(format!("{wrong} words were tagged wrongly").into());
    }
    Ok(())
}

fn print_scores(scores: &DMatrix<f32>, sentence: &str) {
    for (word, column) in sentence.split(' ').zip(scores.column_iter()) {
        let values: Vec<String> = column.iter().map(|v| format!("{v:8.4}")).collect();
        println!("  {word:<10}{}", values.join(""));
    }
}
