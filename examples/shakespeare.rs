//! The Shakespeare char-RNN notebook: a character model of Tiny Shakespeare (embedding,
//! two recurrent layers declared from their equations, a linear decoder; cross-entropy,
//! Adam, random chunks of 200 characters in batches). It prints samples at temperature
//! 0.8 as it trains, reports the loss on a held-out tenth of the text (which must fall
//! below 2.0 nats per character), saves and loads checkpoints, generates from them, and
//! plots its loss curve.
//!
//! Run: `cargo run --release --example shakespeare [-- --cell gru --save model.safetensors --plot loss.png]`
//! then `cargo run --release --example shakespeare -- --load model.safetensors --generate 500 --prime "ROMEO:"`

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use rnn_runtime::checkpoint::{checkpoint_metadata, load_checkpoint, save_checkpoint};
use rnn_runtime::data::{window_batch, window_starts, WindowOrder};
use rnn_runtime::modules::{sample, Embedding, EmbeddingGrads, Linear, LinearGrads, Sampling};
use rnn_runtime::prelude::*;
use rnn_runtime::recurrent::{LayerGrads, Mode, Recurrent, RecurrentConfig};
use rnn_runtime::{clip_grad_norm, NormType};
use rnn_suite::progress::Progress;

/// The notebook's vanilla RNN (`nn.RNN`, tanh).
#[recurrent]
pub fn elman(x: Input, h: State) {
    h = tanh(W_ih * x + b_ih + W_hh * h + b_hh);
}

/// The gated recurrent unit, as `nn.GRU` computes it.
#[recurrent]
pub fn gru(x: Input, h: State) {
    let r = sigmoid(W_ir * x + b_ir + W_hr * h + b_hr);
    let z = sigmoid(W_iz * x + b_iz + W_hz * h + b_hz);
    let n = tanh(W_in * x + b_in + r * (W_hn * h + b_hn));
    h = (1 - z) * n + z * h;
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

/// Tiny Shakespeare, shipped in the repository and built into the binary.
const CORPUS: &str = include_str!("data/tinyshakespeare.txt");
/// The font of the loss plot's labels.
const FONT: &[u8] = include_bytes!("data/DejaVuSans.ttf");

#[derive(Clone, Copy, PartialEq, Debug, ValueEnum)]
enum CellKind {
    Rnn,
    Gru,
    Lstm,
}

#[derive(Parser)]
#[command(about = "A character-level language model of Tiny Shakespeare")]
struct Args {
    /// The recurrent cell.
    #[arg(long, value_enum, default_value = "gru")]
    cell: CellKind,
    /// Recurrent layers.
    #[arg(long, default_value_t = 2)]
    layers: usize,
    /// Hidden size.
    #[arg(long, default_value_t = 128)]
    hidden: usize,
    /// Embedding size.
    #[arg(long, default_value_t = 70)]
    embedding: usize,
    /// Training steps, each on a batch of random chunks (default: 0 after `--load`).
    #[arg(long)]
    steps: Option<usize>,
    /// Chunks per batch.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Characters per chunk.
    #[arg(long, default_value_t = 200)]
    chunk: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 0.005)]
    lr: f64,
    /// Gradients are clipped to this L2 norm.
    #[arg(long, default_value_t = 5.0)]
    clip: f64,
    /// Steps between samples and held-out estimates.
    #[arg(long, default_value_t = 50)]
    report_every: usize,
    /// The held-out loss (nats per character) training must reach.
    #[arg(long, default_value_t = 2.0)]
    max_loss: f64,
    /// Save model and optimizer here after training (written atomically).
    #[arg(long)]
    save: Option<PathBuf>,
    /// Start from this checkpoint (its cell and sizes override the flags).
    #[arg(long)]
    load: Option<PathBuf>,
    /// Characters to generate at the end.
    #[arg(long, default_value_t = 0)]
    generate: usize,
    /// Sampling temperature.
    #[arg(long, default_value_t = 0.8)]
    temperature: f64,
    /// Text the generation continues.
    #[arg(long, default_value = "\n")]
    prime: String,
    /// Write the loss curves as a PNG here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Seed of initialisation, chunks and sampling.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// The corpus's characters, sorted; a character's id is its index.
struct Vocabulary(Vec<char>);

impl Vocabulary {
    fn of(text: &str) -> Vocabulary {
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        Vocabulary(chars)
    }

    fn encode(&self, text: &str) -> Result<Vec<usize>, String> {
        text.chars()
            .map(|ch| {
                self.0
                    .binary_search(&ch)
                    .map_err(|_| format!("character {ch:?} is not in the model's vocabulary"))
            })
            .collect()
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

/// Embedding, recurrent layers, decoder to one logit per character.
#[derive(Parameters)]
struct CharModel<C> {
    embed: Embedding<f32>,
    rnn: Recurrent<C>,
    head: Linear<f32>,
}

/// The model's gradients, kept from step to step (as PyTorch keeps each `.grad`) and
/// cleared before each: named as the model's parameters, for clipping and Adam.
#[derive(Parameters)]
struct CharModelGrads<G> {
    embed: EmbeddingGrads<f32>,
    rnn: LayerGrads<G>,
    head: LinearGrads<f32>,
}

/// The sizes a model is built from; kept in its checkpoint.
#[derive(Clone, Debug, PartialEq)]
struct Sizes {
    cell: CellKind,
    layers: usize,
    hidden: usize,
    embedding: usize,
}

impl Sizes {
    fn metadata(&self, vocabulary: &Vocabulary, step: usize) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("cell".into(), format!("{:?}", self.cell).to_lowercase()),
            ("layers".into(), self.layers.to_string()),
            ("hidden".into(), self.hidden.to_string()),
            ("embedding".into(), self.embedding.to_string()),
            ("vocabulary".into(), vocabulary.0.iter().collect()),
            ("step".into(), step.to_string()),
        ])
    }

    fn from_metadata(
        meta: &BTreeMap<String, String>,
    ) -> Result<(Sizes, Vocabulary, usize), String> {
        let get = |key: &str| {
            meta.get(key).ok_or_else(|| {
                format!("the checkpoint has no `{key}` entry: was it written by this example?")
            })
        };
        let number = |key: &str| -> Result<usize, String> {
            get(key)?
                .parse()
                .map_err(|e| format!("the checkpoint's `{key}` is not a number: {e}"))
        };
        let cell = CellKind::from_str(get("cell")?, true)?;
        let sizes = Sizes {
            cell,
            layers: number("layers")?,
            hidden: number("hidden")?,
            embedding: number("embedding")?,
        };
        Ok((
            sizes,
            Vocabulary(get("vocabulary")?.chars().collect()),
            number("step")?,
        ))
    }
}

impl<C: Cell<f32>> CharModel<C> {
    fn new(sizes: &Sizes, vocabulary: usize, rng: &mut Rng) -> Result<Self, Error> {
        let config = RecurrentConfig {
            num_layers: sizes.layers,
            ..RecurrentConfig::default()
        };
        Ok(CharModel {
            embed: Embedding::new(vocabulary, sizes.embedding, None, rng)?,
            rnn: Recurrent::new(
                &[sizes.embedding, sizes.hidden],
                config,
                &Init::pytorch_default(sizes.hidden),
                rng,
            )?,
            head: Linear::new(sizes.hidden, vocabulary, true, rng),
        })
    }

    /// Logits for time-major `ids` of `batch` sequences, and the final states.
    fn logits(
        &self,
        ids: &[usize],
        batch: usize,
        states: Option<&[DMatrix<f32>]>,
    ) -> Result<(DMatrix<f32>, Vec<DMatrix<f32>>), Error> {
        let x = self.embed.forward(ids)?;
        let run = self.rnn.forward(&x, batch, states, Mode::Infer)?;
        Ok((self.head.forward(&run.output)?, run.final_states))
    }

    /// Zero gradients for `train_step` to fill.
    fn zero_grads(&self) -> CharModelGrads<C::Grads> {
        CharModelGrads {
            embed: self.embed.zero_grads(),
            rnn: self.rnn.zero_grads(),
            head: self.head.zero_grads(),
        }
    }

    /// One clipped Adam step on a batch of windows, its gradients gathered in `grads`;
    /// returns its mean loss.
    fn train_step(
        &mut self,
        (ids, targets, batch): (&[usize], &[i64], usize),
        clip: f64,
        adam: &mut Adam<f32>,
        grads: &mut CharModelGrads<C::Grads>,
    ) -> Result<f32, Error> {
        let x = self.embed.forward(ids)?;
        let mut run = self.rnn.forward(&x, batch, None, Mode::Eval)?;
        let logits = self.head.forward(&run.output)?;
        let loss = cross_entropy(&logits, targets, &ClassLoss::default())?;
        grads.fill_zero();
        let d_hidden = self
            .head
            .backward_into(&run.output, &loss.grad, &mut grads.head)?;
        let rest = run.backward_into(
            &self.rnn,
            Some(&d_hidden),
            &[],
            InputGrads::Compute,
            &mut grads.rnn,
        )?;
        self.embed
            .backward_into(ids, &rest.input, &mut grads.embed)?;
        clip_grad_norm(grads, clip, NormType::L2)?;
        adam.step(self, grads)?;
        Ok(loss.value)
    }

    /// Mean cross-entropy (nats per character) over `ids`, read as consecutive windows
    /// of `chunk` characters, 64 windows at a time.
    fn held_out_loss(&self, ids: &[usize], chunk: usize) -> Result<f64, Error> {
        let starts = window_starts(
            ids.len(),
            chunk,
            WindowOrder::Consecutive,
            &mut Rng::seed(0),
        )?;
        let (mut total, mut count) = (0.0, 0usize);
        for group in starts.chunks(64) {
            let (inputs, targets) = window_batch(ids, group, chunk)?;
            let (logits, _) = self.logits(&inputs, group.len(), None)?;
            let options = ClassLoss {
                reduction: Reduction::Sum,
                ..ClassLoss::default()
            };
            total += f64::from(cross_entropy(&logits, &targets, &options)?.value);
            count += targets.len();
        }
        Ok(total / count as f64)
    }

    /// `length` characters continuing `prime`, each drawn at `temperature`.
    fn generate(
        &self,
        vocabulary: &Vocabulary,
        prime: &str,
        length: usize,
        temperature: f64,
        rng: &mut Rng,
    ) -> Result<String, Box<dyn std::error::Error>> {
        let prime_ids = vocabulary.encode(prime)?;
        if prime_ids.is_empty() {
            return Err("--prime must have at least one character".into());
        }
        let (mut logits, mut states) = self.logits(&prime_ids, 1, None)?;
        let mut text = String::with_capacity(length);
        for _ in 0..length {
            let last = logits.column(logits.ncols() - 1);
            let id = sample(last.as_slice(), Sampling::Temperature(temperature), rng)?;
            text.push(vocabulary.0[id]);
            (logits, states) = self.logits(&[id], 1, Some(&states))?;
        }
        Ok(text)
    }
}

/// Loss curves: per training step, and the held-out estimates.
#[derive(Default)]
struct Curves {
    train: Vec<(f64, f64)>,
    held_out: Vec<(f64, f64)>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Every training step frees megabytes of matrices and allocates as many: kept by
    // the allocator, they are not faulted in anew at each step.
    rnn_runtime::keep_freed_memory();
    rnn_suite::exit(dispatch(&args))
}

/// Builds (or loads) the model of the right cell, then runs.
fn dispatch(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let loaded = match &args.load {
        Some(path) => Some(Sizes::from_metadata(&checkpoint_metadata(path)?)?),
        None => None,
    };
    let cell = loaded
        .as_ref()
        .map_or(args.cell, |(sizes, _, _)| sizes.cell);
    match cell {
        CellKind::Rnn => run::<Elman<f32>>(args, loaded),
        CellKind::Gru => run::<Gru<f32>>(args, loaded),
        CellKind::Lstm => run::<Lstm<f32>>(args, loaded),
    }
}

fn run<C: Cell<f32>>(
    args: &Args,
    loaded: Option<(Sizes, Vocabulary, usize)>,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut rng = Rng::seed(args.seed);
    let mut adam = Adam::new(args.lr);
    let (sizes, vocabulary, mut model, first_step) = match (loaded, &args.load) {
        (Some((sizes, vocabulary, step)), Some(path)) => {
            let mut model = CharModel::<C>::new(&sizes, vocabulary.len(), &mut rng)?;
            load_checkpoint(path, &mut model, &mut adam)?;
            println!(
                "loaded {}: {:?} × {} layers, hidden {}, embedding {}, after {step} steps",
                path.display(),
                sizes.cell,
                sizes.layers,
                sizes.hidden,
                sizes.embedding
            );
            (sizes, vocabulary, model, step)
        }
        _ => {
            let sizes = Sizes {
                cell: args.cell,
                layers: args.layers,
                hidden: args.hidden,
                embedding: args.embedding,
            };
            let vocabulary = Vocabulary::of(CORPUS);
            let model = CharModel::<C>::new(&sizes, vocabulary.len(), &mut rng)?;
            (sizes, vocabulary, model, 0)
        }
    };
    let steps = args
        .steps
        .unwrap_or(if args.load.is_some() { 0 } else { 200 });
    if steps > 0 {
        train(
            args,
            &sizes,
            &vocabulary,
            &mut model,
            &mut adam,
            first_step,
            steps,
            &mut rng,
        )?;
    }
    if let Some(path) = &args.save {
        save_checkpoint(
            path,
            &model,
            &adam,
            &sizes.metadata(&vocabulary, first_step + steps),
        )?;
        println!("saved {}", path.display());
    }
    if args.generate > 0 {
        let text = model.generate(
            &vocabulary,
            &args.prime,
            args.generate,
            args.temperature,
            &mut rng,
        )?;
        println!("{}{text}", args.prime);
    }
    Ok(())
}

/// Trains for `steps` steps, reporting as it goes; fails if the held-out loss ends
/// above `--max-loss`.
#[allow(clippy::too_many_arguments)]
fn train<C: Cell<f32>>(
    args: &Args,
    sizes: &Sizes,
    vocabulary: &Vocabulary,
    model: &mut CharModel<C>,
    adam: &mut Adam<f32>,
    first_step: usize,
    steps: usize,
    rng: &mut Rng,
) -> Result<(), Box<dyn std::error::Error>> {
    let ids = vocabulary.encode(CORPUS)?;
    // The last tenth is held out; a quick estimate reads its first 20,000 characters.
    let split = ids.len() - ids.len() / 10;
    let (training_ids, held_out) = (&ids[..split], &ids[split..]);
    let estimate = &held_out[..held_out.len().min(20_000)];
    println!(
        "{} × {} layers, hidden {}, embedding {}; {} characters ({} distinct), {} held out",
        C::SPEC.name,
        sizes.layers,
        sizes.hidden,
        sizes.embedding,
        ids.len(),
        vocabulary.len(),
        held_out.len()
    );
    let mut curves = Curves::default();
    let progress = Progress::new(steps, "steps");
    let started = Instant::now();
    // The training steps' own time, without the reports and the final evaluation.
    let mut training = std::time::Duration::ZERO;
    let mut grads = model.zero_grads();
    for step in first_step + 1..=first_step + steps {
        let starts = window_starts(
            training_ids.len(),
            args.chunk,
            WindowOrder::Random { count: args.batch },
            rng,
        )?;
        let (inputs, targets) = window_batch(training_ids, &starts, args.chunk)?;
        let batch = (&inputs[..], &targets[..], args.batch);
        let step_began = Instant::now();
        let loss = model.train_step(batch, args.clip, adam, &mut grads)?;
        training += step_began.elapsed();
        curves.train.push((step as f64, f64::from(loss)));
        if step % args.report_every == 0 {
            let estimate_loss = model.held_out_loss(estimate, args.chunk)?;
            curves.held_out.push((step as f64, estimate_loss));
            let sample = model.generate(vocabulary, "\n", 200, 0.8, rng)?;
            progress.log(format!(
                "step {step:5}  train {loss:.3}  held-out {estimate_loss:.3}  ({:.0} s)\n{}\n{}",
                started.elapsed().as_secs_f64(),
                sample.trim_end(),
                "-".repeat(60)
            ));
        }
        progress.tick(format!("loss {loss:.3}"));
    }
    progress.finish();
    let final_loss = model.held_out_loss(held_out, args.chunk)?;
    curves
        .held_out
        .push(((first_step + steps) as f64, final_loss));
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "held-out loss {final_loss:.3} nats per character after {steps} steps ({seconds:.0} s, {:.0} ms per training step)",
        training.as_secs_f64() * 1e3 / steps.max(1) as f64
    );
    if let Some(path) = &args.plot {
        plot(
            path,
            &curves,
            &format!(
                "{:?} × {}, hidden {}",
                sizes.cell, sizes.layers, sizes.hidden
            ),
        )?;
        println!("wrote the loss curves to {}", path.display());
    }
    if final_loss > args.max_loss {
        return Err(format!(
            "the held-out loss {final_loss:.3} is above {} nats per character",
            args.max_loss
        )
        .into());
    }
    Ok(())
}

/// The training and held-out loss against the step, as a PNG.
fn plot(path: &Path, curves: &Curves, model: &str) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    use plotters::style::{register_font, FontStyle};

    register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| "the bundled font could not be read")?;
    let root = BitMapBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let all = curves.train.iter().chain(&curves.held_out);
    let last_step = all.clone().map(|p| p.0).fold(1.0, f64::max);
    let first_step = all.clone().map(|p| p.0).fold(last_step, f64::min);
    let top = all.map(|p| p.1).fold(0.0, f64::max) * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("Tiny Shakespeare, {model}"), ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(first_step..last_step, 0.0..top)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .x_label_formatter(&|step| format!("{step:.0}"))
        .y_desc("cross-entropy (nats per character)")
        .draw()?;
    chart
        .draw_series(LineSeries::new(curves.train.iter().copied(), &BLUE))?
        .label("training batch")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new(
            curves.held_out.iter().copied(),
            RED.stroke_width(2),
        ))?
        .label("held-out")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
