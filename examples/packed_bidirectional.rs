//! The packing notebook: ten token sequences of different lengths, embedded and run
//! through LSTM and GRU layers declared from their equations, packed so that each
//! sequence stops at its own length: one layer forward, then two layers bidirectional.
//! Prints each result's shape next to PyTorch's and checks what packing promises:
//! padded positions of the output are zero, and each final state is the state at its
//! own sequence's last step (the same as running that sequence alone).
//!
//! Run: `cargo run --release --example packed_bidirectional [-- --hidden 512]`

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use rnn_runtime::modules::Embedding;
use rnn_runtime::pack::{pack_padded_sequence, pad_packed_sequence};
use rnn_runtime::prelude::*;
use rnn_runtime::recurrent::{Mode, Recurrent, RecurrentConfig};
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

/// The notebook's ten sequences of token ids (0 is padding and appears in none).
const DATA: [&[usize]; 10] = [
    &[
        85, 14, 80, 34, 99, 20, 31, 65, 53, 86, 3, 58, 30, 4, 11, 6, 50, 71, 74, 13,
    ],
    &[62, 76, 79, 66, 32],
    &[93, 77, 16, 67, 46, 74, 24, 70],
    &[19, 83, 88, 22, 57, 40, 75, 82, 4, 46],
    &[70, 28, 30, 24, 76, 84, 92, 76, 77, 51, 7, 20, 82, 94, 57],
    &[
        58, 13, 40, 61, 88, 18, 92, 89, 8, 14, 61, 67, 49, 59, 45, 12, 47, 5,
    ],
    &[
        22, 5, 21, 84, 39, 6, 9, 84, 36, 59, 32, 30, 69, 70, 82, 56, 1,
    ],
    &[94, 21, 79, 24, 3, 86],
    &[80, 80, 33, 63, 34, 63],
    &[
        87, 32, 79, 65, 2, 96, 43, 80, 85, 20, 41, 52, 95, 50, 35, 96, 24, 80,
    ],
];
const VOCABULARY: usize = 100;
const PAD: usize = 0;

#[derive(Parser)]
#[command(about = "Packed variable-length batches through LSTM and GRU layers, checked")]
struct Args {
    /// Embedding size.
    #[arg(long, default_value_t = 256)]
    embedding: usize,
    /// Hidden size.
    #[arg(long, default_value_t = 512)]
    hidden: usize,
    /// Seed of the initialisation.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// PyTorch's name for a shape, `(a, b, c)`.
fn shape(dims: [usize; 3]) -> String {
    format!("({}, {}, {})", dims[0], dims[1], dims[2])
}

/// One configuration's outcome: shape lines and the checks' failures.
struct Report {
    lines: Vec<String>,
    failures: Vec<String>,
}

fn main() -> ExitCode {
    rnn_suite::exit(run(&Args::parse()))
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let lengths: Vec<usize> = DATA.iter().map(|s| s.len()).collect();
    let (batch, longest) = (DATA.len(), *lengths.iter().max().expect("ten sequences"));
    // Time-major ids, padded with PAD: column t·B + b is token t of sequence b.
    let ids: Vec<usize> = (0..longest * batch)
        .map(|col| *DATA[col % batch].get(col / batch).unwrap_or(&PAD))
        .collect();
    let mut rng = Rng::seed(args.seed);
    let embedding: Embedding<f32> = Embedding::new(VOCABULARY, args.embedding, None, &mut rng)?;
    let embedded = embedding.forward(&ids)?;
    println!(
        "{batch} sequences of lengths {lengths:?}, padded to {longest}; embedding {}, hidden {}",
        args.embedding, args.hidden
    );

    let configurations = [(1, false), (2, true)];
    let progress = Progress::new(2 * configurations.len(), "runs");
    let mut failures = Vec::new();
    for (layers, bidirectional) in configurations {
        let config = RecurrentConfig {
            num_layers: layers,
            bidirectional,
            ..RecurrentConfig::default()
        };
        for report in [
            check::<Lstm<f32>>(args, &config, &embedded, &lengths, &mut rng)?,
            check::<Gru<f32>>(args, &config, &embedded, &lengths, &mut rng)?,
        ] {
            for line in report.lines {
                progress.log(line);
            }
            failures.extend(report.failures);
            progress.tick("");
        }
    }
    progress.finish();
    if failures.is_empty() {
        println!(
            "padded positions are zero; every final state is the state at its sequence's length"
        );
        Ok(())
    } else {
        Err(failures.join("\n").into())
    }
}

/// Runs one packed batch through fresh layers of `C` and checks the result.
fn check<C: Cell<f32>>(
    args: &Args,
    config: &RecurrentConfig,
    embedded: &DMatrix<f32>,
    lengths: &[usize],
    rng: &mut Rng,
) -> Result<Report, Error> {
    let (batch, hidden) = (lengths.len(), args.hidden);
    let model: Recurrent<C> = Recurrent::new(
        &[args.embedding, hidden],
        config.clone(),
        &Init::pytorch_default(hidden),
        rng,
    )?;
    let packed = pack_padded_sequence(embedded, lengths, false, false)?;
    let started = Instant::now();
    let run = model.forward_packed(&packed, None, Mode::Eval)?;
    let elapsed = started.elapsed();
    let (output, _) = pad_packed_sequence(&packed.with_data(run.output.clone()), false, 0.0, None)?;

    let directions = model.directions();
    let (layers, steps) = (config.num_layers, output.ncols() / batch);
    let title = format!(
        "{} {layers} layer(s){}",
        C::SPEC.name,
        if config.bidirectional {
            ", bidirectional"
        } else {
            ""
        }
    );
    let mut lines = vec![format!("{title} ({:.1} ms)", elapsed.as_secs_f64() * 1e3)];
    let mut failures = Vec::new();
    // Ours, in PyTorch's (T, B, D·H) and (L·D, B, H) terms, next to what PyTorch gives.
    let mut compare = |name: String, ours: [usize; 3], torch: [usize; 3]| {
        lines.push(format!(
            "  {name:<6} {:<14} PyTorch {}",
            shape(ours),
            shape(torch)
        ));
        if ours != torch {
            failures.push(format!(
                "{title}: {name} is {} but PyTorch's is {}",
                shape(ours),
                shape(torch)
            ));
        }
    };
    compare(
        "output".into(),
        [steps, batch, output.nrows()],
        [longest(lengths), batch, directions * hidden],
    );
    for (k, state) in run.final_states.iter().enumerate() {
        compare(
            format!("{}_n", C::SPEC.states[k].name),
            [state.ncols() / batch, batch, state.nrows()],
            [layers * directions, batch, hidden],
        );
    }

    // Past each sequence's length the output is padding.
    for (b, &length) in lengths.iter().enumerate() {
        for t in length..steps {
            if output.column(t * batch + b).iter().any(|&v| v != 0.0) {
                failures.push(format!(
                    "{title}: sequence {b} (length {length}) has output at padded step {t}"
                ));
            }
        }
    }
    // The last layer's final h is its output at the sequence's last step forward, and
    // at step 0 backward.
    let h_n = &run.final_states[0];
    for (b, &length) in lengths.iter().enumerate() {
        for d in 0..directions {
            let t = if d == 0 { length - 1 } else { 0 };
            let column = ((layers - 1) * directions + d) * batch + b;
            let expected = output.view((d * hidden, t * batch + b), (hidden, 1));
            if h_n.column(column) != expected.column(0) {
                failures.push(format!(
                    "{title}: h_n of sequence {b}, direction {d} is not its output at step {t}"
                ));
            }
        }
    }
    // Every state of every layer equals that of the sequence run alone, unpadded.
    for (b, &length) in lengths.iter().enumerate() {
        let alone_input = DMatrix::from_fn(embedded.nrows(), length, |i, t| {
            embedded[(i, t * batch + b)]
        });
        let alone = model.forward(&alone_input, 1, None, Mode::Infer)?;
        for (k, (packed_state, alone_state)) in
            run.final_states.iter().zip(&alone.final_states).enumerate()
        {
            for part in 0..layers * directions {
                let difference =
                    (packed_state.column(part * batch + b) - alone_state.column(part)).amax();
                if difference > 1e-5 {
                    failures.push(format!(
                        "{title}: state `{}` of sequence {b}, layer·direction {part}, differs from the sequence run alone by {difference:e}",
                        C::SPEC.states[k].name
                    ));
                }
            }
        }
    }
    Ok(Report { lines, failures })
}

fn longest(lengths: &[usize]) -> usize {
    lengths.iter().copied().max().unwrap_or(0)
}
