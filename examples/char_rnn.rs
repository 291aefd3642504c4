//! The char-RNN notebooks: a recurrent network memorises one sentence from one-hot
//! characters (MSE against the next character's one-hot vector, Adam), then reproduces
//! it.
//!
//! - `--cell rnn` (default): a vanilla RNN, `h = tanh(W_ih x + W_hh h + b)`, with a
//!   linear output layer, on "hello pytorch. how long can a rnn cell remember?"; it
//!   generates the sentence from the start symbol by feeding its own output back.
//! - `--cell lstm --layers 3 --batch 5`: the notebook's batched 3-layer LSTM, whose output
//!   is its prediction, on "... show me your limit!". Batch element k reads the sentence
//!   from character k on, and the state runs on from one step to the next.
//!
//! Run: `cargo run --release --example char_rnn [-- --cell lstm --layers 3 --batch 5]`

use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use rnn_runtime::modules::{Linear, LinearGrads};
use rnn_runtime::prelude::*;
use rnn_runtime::recurrent::{Mode, Recurrent, RecurrentConfig, RecurrentGrads};
use rnn_suite::progress::Progress;

/// The vanilla RNN of the notebook (`i2h` and `h2h` layers, tanh).
#[recurrent]
pub fn elman(x: Input, h: State) {
    h = tanh(W_ih * x + b_ih + W_hh * h + b_hh);
}

/// Long short-term memory, as `nn.LSTM` computes it.
#[recurrent]
pub fn lstm(x: Input, h: State, c: State) {
    let i = sigmoid(W_ii * x + b_ii + W_hi * h + b_hi);
    let f = sigmoid(W_if * x + b_if + W_hf * h + b_hf);
    let g = tanh(W_ig * x + b_ig + W_hg * h + b_hg);
    let o = sigmoid(W_io * x + b_io + W_ho * h + b_ho);
    c = f * c + i * g;
    h = o * tanh(c);
}

/// The notebooks' alphabet; its last two symbols stand for start and end.
const ALPHABET: &str = "abcdefghijklmnopqrstuvwxyz ?!.,:;01";
const RNN_SENTENCE: &str = "hello pytorch. how long can a rnn cell remember?";
const LSTM_SENTENCE: &str = "hello pytorch. how long can a rnn cell remember? show me your limit!";

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum CellKind {
    /// Vanilla RNN with a linear output layer.
    Rnn,
    /// LSTM whose output is the prediction.
    Lstm,
}

#[derive(Clone, Copy, ValueEnum)]
enum Feed {
    /// The output vector, as the notebook feeds it.
    Raw,
    /// The one-hot vector of the output's most likely symbol.
    Symbol,
}

#[derive(Parser)]
#[command(about = "A char RNN or LSTM memorises a sentence and reproduces it")]
struct Args {
    /// The recurrent cell (and with it, the notebook's variant).
    #[arg(long, value_enum, default_value = "rnn")]
    cell: CellKind,
    /// Stacked layers.
    #[arg(long, default_value_t = 1)]
    layers: usize,
    /// Sequences per batch: batch element k reads the sentence from character k on.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Hidden size (the LSTM's must equal the alphabet's 35 symbols: its output is the prediction).
    #[arg(long, default_value_t = 35)]
    hidden: usize,
    /// Training epochs (one Adam step on the whole sentence each).
    #[arg(long, default_value_t = 1000)]
    epochs: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 0.01)]
    lr: f64,
    /// The sentence, in the alphabet's characters (default: the notebook's for the cell).
    #[arg(long)]
    text: Option<String>,
    /// What generation feeds back: the one-hot vector of the symbol the output names, or
    /// (the notebook's way) the output vector itself, whose small errors compound: the
    /// notebook's own run drifted into "helloreytoec r n r".
    #[arg(long, value_enum, default_value = "symbol")]
    feed: Feed,
    /// Seed of the initialisation.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Recurrent layers and, for the vanilla RNN, a linear output layer.
#[derive(Parameters)]
struct CharModel<C> {
    rnn: Recurrent<C>,
    head: Option<Linear<f32>>,
}

#[derive(Parameters)]
struct CharModelGrads<G> {
    rnn: RecurrentGrads<f32, G>,
    head: Option<LinearGrads<f32>>,
}

impl<C: Cell<f32>> CharModel<C> {
    /// Predictions (symbols × columns) and the final states.
    fn predict(
        &self,
        x: &DMatrix<f32>,
        batch: usize,
        states: Option<&[DMatrix<f32>]>,
    ) -> Result<(DMatrix<f32>, Vec<DMatrix<f32>>), Error> {
        let run = self.rnn.forward(x, batch, states, Mode::Infer)?;
        let prediction = match &self.head {
            Some(head) => head.forward(&run.output)?,
            None => run.output,
        };
        Ok((prediction, run.final_states))
    }

    /// One Adam step on the whole unrolled batch; returns the notebook's loss, the sum
    /// over steps of each step's mean squared error.
    fn train_step(
        &mut self,
        x: &DMatrix<f32>,
        target: &DMatrix<f32>,
        batch: usize,
        adam: &mut Adam<f32>,
    ) -> Result<f32, Error> {
        let mut run = self.rnn.forward(x, batch, None, Mode::Eval)?;
        let prediction = match &self.head {
            Some(head) => head.forward(&run.output)?,
            None => run.output.clone(),
        };
        let loss = mse_loss(&prediction, target, Reduction::Mean)?;
        let steps = (x.ncols() / batch) as f32;
        let d_prediction = loss.grad * steps;
        let (head, d_output) = match &self.head {
            Some(head) => {
                let (grads, d_output) = head.backward(&run.output, &d_prediction)?;
                (Some(grads), d_output)
            }
            None => (None, d_prediction),
        };
        // One-hot data: the input's gradient is never needed.
        let rnn = run.backward_with(&self.rnn, Some(&d_output), &[], InputGrads::Skip)?;
        adam.step(self, &CharModelGrads { rnn, head })?;
        Ok(loss.value * steps)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    rnn_suite::exit(match args.cell {
        CellKind::Rnn => run::<Elman<f32>>(&args),
        CellKind::Lstm => run::<Lstm<f32>>(&args),
    })
}

/// The sentence between the start and end symbols, one-hot: (35, len + 2).
fn one_hot(text: &str) -> Result<DMatrix<f32>, String> {
    let symbols: Vec<char> = ALPHABET.chars().collect();
    let (start, end) = (symbols.len() - 2, symbols.len() - 1);
    let mut ids = vec![start];
    for (i, ch) in text.chars().enumerate() {
        match symbols[..start].iter().position(|&s| s == ch) {
            Some(id) => ids.push(id),
            None => {
                return Err(format!(
                    "character {ch:?} at position {i} of the text is not in the alphabet {:?}",
                    &ALPHABET[..start]
                ))
            }
        }
    }
    ids.push(end);
    Ok(DMatrix::from_fn(symbols.len(), ids.len(), |r, c| {
        f32::from(u8::from(ids[c] == r))
    }))
}

fn one_hot_symbol(symbol: char) -> DMatrix<f32> {
    DMatrix::from_fn(ALPHABET.chars().count(), 1, |r, _| {
        f32::from(u8::from(ALPHABET.chars().nth(r) == Some(symbol)))
    })
}

fn symbol(column: rnn_runtime::nalgebra::DVectorView<'_, f32>) -> char {
    ALPHABET
        .chars()
        .nth(column.argmax().0)
        .expect("a symbol of the alphabet")
}

/// Trains, reproduces the sentence, and fails unless the reproduction is exact.
fn run<C: Cell<f32>>(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let alphabet = ALPHABET.chars().count();
    let text = args.text.clone().unwrap_or_else(|| {
        match args.cell {
            CellKind::Rnn => RNN_SENTENCE,
            CellKind::Lstm => LSTM_SENTENCE,
        }
        .to_string()
    });
    let sequence = one_hot(&text)?;
    let with_head = args.cell == CellKind::Rnn;
    if !with_head && args.hidden != alphabet {
        return Err(format!(
            "the LSTM's output is its prediction, so --hidden must be {alphabet} (the alphabet), not {}",
            args.hidden
        )
        .into());
    }
    // Step t of batch element k reads symbol t + k and predicts symbol t + k + 1.
    let (batch, symbols) = (args.batch, sequence.ncols());
    if batch == 0 || batch >= symbols {
        return Err(format!(
            "--batch must be between 1 and {} (the text's {} symbols less one), not {batch}",
            symbols - 1,
            symbols
        )
        .into());
    }
    let steps = symbols - batch;
    let shifted = |offset: usize| {
        DMatrix::from_fn(alphabet, steps * batch, |r, col| {
            sequence[(r, col / batch + col % batch + offset)]
        })
    };
    let (x, target) = (shifted(0), shifted(1));

    let mut rng = Rng::seed(args.seed);
    let config = RecurrentConfig {
        num_layers: args.layers,
        ..RecurrentConfig::default()
    };
    let rnn = Recurrent::<C>::new(
        &[alphabet, args.hidden],
        config,
        &Init::pytorch_default(args.hidden),
        &mut rng,
    )?;
    let head = with_head.then(|| Linear::new(args.hidden, alphabet, true, &mut rng));
    let mut model = CharModel { rnn, head };
    let mut adam = Adam::new(args.lr);
    println!(
        "{} × {} layer(s), hidden {}, batch {batch}, {steps} steps: \"{text}\"",
        C::SPEC.name,
        args.layers,
        args.hidden
    );

    let progress = Progress::new(args.epochs, "epochs");
    let mut loss = f32::NAN;
    for epoch in 0..args.epochs {
        loss = model.train_step(&x, &target, batch, &mut adam)?;
        if epoch % (args.epochs / 10).max(1) == 0 {
            progress.log(format!("epoch {epoch:5}  loss {loss:.4}"));
        }
        progress.tick(format!("loss {loss:.4}"));
    }
    progress.finish();
    println!("final loss {loss:.4}");

    let reproduced = if batch == 1 {
        // As the notebook generates: from the start symbol, each output is the next input.
        let mut input = sequence.columns(0, 1).into_owned();
        let mut states: Option<Vec<DMatrix<f32>>> = None;
        let mut generated = String::new();
        for _ in 0..text.chars().count() {
            let (output, next) = model.predict(&input, 1, states.as_deref())?;
            let next_symbol = symbol(output.column(0));
            generated.push(next_symbol);
            input = match args.feed {
                Feed::Raw => output,
                Feed::Symbol => one_hot_symbol(next_symbol),
            };
            states = Some(next);
        }
        println!("generated: {generated}");
        generated == text
    } else {
        // As the batched notebook decodes: element 0's prediction at each step, then
        // the whole last batch.
        let (output, _) = model.predict(&x, batch, None)?;
        let mut decoded: String = (0..steps - 1)
            .map(|t| symbol(output.column(t * batch)))
            .collect();
        decoded.extend((0..batch).map(|k| symbol(output.column((steps - 1) * batch + k))));
        println!("decoded: {decoded}");
        decoded.strip_suffix('1') == Some(text.as_str())
    };
    if !reproduced {
        return Err("the network did not reproduce the sentence".into());
    }
    Ok(())
}
