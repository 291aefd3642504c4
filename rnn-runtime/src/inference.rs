//! Inference: a cell run over a batch of sequences with nothing kept for a backward
//! pass, as PyTorch runs a module under `torch.no_grad()`.
//!
//! [`forward`](crate::forward) keeps every step's values on its tape, for backward to
//! read: for the large LSTM of the benches (100 steps of 64 sequences, 1024 hidden
//! units) some 400 MB a pass. Evaluation and sampling need only each step's output and
//! the states it hands on. [`infer`] runs the sequence in chunks of steps on one tape
//! whose per-step buffers hold one chunk: the values a step writes and the next step
//! reads stay in cache, and the memory a pass takes is a chunk's, however long the
//! sequence. Each chunk's input terms are still one product over its steps, as a whole
//! pass's are. The outputs and final states are those of `forward`: to the bit in
//! f32, to rounding in f64 (whose products' order of sums moves with a product's
//! number of columns, which a chunk changes).

use std::ops::Range;
use std::sync::Arc;

use nalgebra::DMatrix;

use crate::cell::{BufferCols, BufferSpec};
use crate::sequence::{batch_states, check_run, shards, split_by_shard};
use crate::tape::WeightPacks;
use crate::threads::each_in_parallel;
use crate::{Cell, Direction, Result, Scalar, Steps, Tape};

/// What an inference pass gives: the outputs and the final states.
#[derive(Clone, Debug, PartialEq)]
pub struct Inference<T: Scalar> {
    /// The output state at every step: (output size, columns).
    pub output: DMatrix<T>,
    /// Each state after the last step of each sequence: (state size, batch).
    pub final_states: Vec<DMatrix<T>>,
}

/// Runs `cell` over the sequences as [`forward`](crate::forward) does, with the same
/// arguments and the same outputs and final states, keeping nothing for backward.
///
/// ```
/// use rnn_runtime::prelude::*;
/// use rnn_runtime::{infer, forward};
///
/// let mut rng = Rng::seed(1);
/// let cell = LstmCell::<f32>::with_dims(&[3, 5], &Init::pytorch_default(5), &mut rng)?;
/// let steps = Steps::full(4, 2)?; // 4 steps of 2 sequences
/// let x = DMatrix::from_fn(3, steps.columns(), |r, c| (r + c) as f32 / 10.0);
/// let run = infer(&cell, &steps, &[&x], None, Direction::Forward)?;
/// let taped = forward(&cell, &steps, &[&x], None, Direction::Forward)?;
/// assert_eq!(run.output, taped.output);
/// assert_eq!(run.final_states, taped.final_states);
/// # Ok::<(), rnn_runtime::Error>(())
/// ```
pub fn infer<T: Scalar, C: Cell<T>>(
    cell: &C,
    steps: &Steps,
    inputs: &[&DMatrix<T>],
    initial_states: Option<&[DMatrix<T>]>,
    direction: Direction,
) -> Result<Inference<T>> {
    check_run(cell, steps, inputs, initial_states)?;
    let specs = cell.tape_buffers();
    let per_column = per_column(&specs);
    // As in `forward`: each part of the batch on a thread of its own, all reading one
    // packing of the weights, each writing its outputs into the batch's.
    let packs = WeightPacks::new(&specs);
    let mut output = DMatrix::zeros(cell.output_size(), steps.columns());
    let shards = shards(steps);
    let outputs = split_by_shard(steps, &shards, output.as_mut_slice(), cell.output_size());
    let finals = each_in_parallel(shards.iter().zip(outputs).collect(), |(shard, mut out)| {
        let mut chunks = chunks(&shard.steps, per_column);
        let room = chunks
            .iter()
            .map(|chunk| columns_of(&shard.steps, chunk))
            .max()
            .unwrap_or(0);
        // Nothing is zeroed but the states: every per-step value a chunk reads, its
        // `prepare` and its steps wrote first.
        let mut tape = Tape::sharing_packs(&specs, room, shard.batch(), Arc::clone(&packs), &[]);
        shard.start_states(C::SPEC.roles.state, &mut tape, initial_states);
        if direction == Direction::Reverse {
            chunks.reverse();
        }
        for chunk in chunks {
            tape.set_columns(columns_of(&shard.steps, &chunk));
            shard.run_steps(cell, &mut tape, steps, inputs, chunk, direction, &mut out);
        }
        shard.final_states(cell, &tape)
    });
    let final_states = batch_states(cell, steps.batch(), shards.iter().zip(finals).collect());
    Ok(Inference {
        output,
        final_states,
    })
}

/// The values a column of the per-step buffers holds, over all of them.
fn per_column(specs: &[BufferSpec]) -> usize {
    specs
        .iter()
        .filter(|spec| spec.cols == BufferCols::Steps)
        .map(|spec| spec.rows)
        .sum()
}

/// The most values a chunk's per-step buffers hold (a chunk has at least one step,
/// however many values that takes): 512 KiB of f32, a quarter of a core's L2 here.
/// Measured on the LSTM (`benches/README.md`, session 23): chunks of 64K to 1M values
/// ran within the noise of one another, and 1-7% faster than one chunk of the whole
/// sequence at the small, medium and large sizes.
const CHUNK_VALUES: usize = 1 << 17;

/// The steps in consecutive chunks, each as many steps as fit in `CHUNK_VALUES` at
/// `per_column` values a column (at least one), and at least two columns unless the
/// whole sequence has one: a product of one column runs the one-column kernel, whose
/// sums differ in the last bits from the many-column kernel's that `forward` runs
/// over those columns' input terms. (A last step of one sequence, alone in its chunk,
/// made `infer` differ from `forward` so.) A chunk of one column joins the one before.
fn chunks(steps: &Steps, per_column: usize) -> Vec<Range<usize>> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let (mut values, mut columns) = (0, 0);
    for (t, &n) in steps.batch_sizes().iter().enumerate() {
        let step_values = n * per_column;
        if t > start && columns > 1 && values + step_values > CHUNK_VALUES {
            chunks.push(start..t);
            start = t;
            (values, columns) = (0, 0);
        }
        values += step_values;
        columns += n;
    }
    match chunks.last_mut() {
        Some(before) if columns == 1 => before.end = steps.len(),
        _ => chunks.push(start..steps.len()),
    }
    chunks
}

/// The columns of a chunk of steps.
fn columns_of(steps: &Steps, chunk: &Range<usize>) -> usize {
    steps.batch_sizes()[chunk.clone()].iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::cells::{GruCell, LstmCell, LstmProjCell, RnnTanhCell};
    use crate::{forward, Init, Rng};

    /// `infer` gives `forward`'s outputs and final states over `lengths` (longest
    /// first) in both directions, with and without initial states, after a pass over
    /// NaN inputs has left NaN in every buffer the pool hands back: in f32 bit for bit,
    /// in f64 to rounding (its products are matrixmultiply's, whose order of sums may
    /// change with the number of columns, which a chunk changes). The sizes are chosen
    /// so that the sequence runs as `chunks_at_least` chunks at least.
    fn infer_matches_forward<T: Scalar, C: Cell<T>>(
        dims: &[usize],
        lengths: &[usize],
        chunks_at_least: usize,
    ) {
        let mut rng = Rng::seed(23);
        let cell = C::with_dims(dims, &Init::pytorch_default(dims[1]), &mut rng).unwrap();
        let steps = Steps::from_sorted_lengths(lengths).unwrap();
        let per_column = per_column(&cell.tape_buffers());
        // Each part of a batch split across threads has as many chunks as the whole
        // batch at least.
        let chunked = chunks(&steps, per_column).len();
        assert!(
            chunked >= chunks_at_least,
            "`{}` over {lengths:?}: {chunked} chunks, not {chunks_at_least}",
            C::SPEC.name
        );
        let mut random =
            |rows, cols| DMatrix::from_fn(rows, cols, |_, _| T::of(rng.range(-1.0, 1.0)));
        let x = random(dims[0], steps.columns());
        let states: Vec<DMatrix<T>> = (0..C::SPEC.states.len())
            .map(|k| random(cell.state_size(k), steps.batch()))
            .collect();
        let nan_x = DMatrix::from_element(dims[0], steps.columns(), T::of(f64::NAN));
        let exact = std::mem::size_of::<T>() == 4;
        let agree = |a: &DMatrix<T>, b: &DMatrix<T>| {
            a.iter().zip(b.iter()).all(|(p, q)| {
                let (p, q) = (p.as_f64(), q.as_f64());
                p.is_finite()
                    && if exact {
                        p.to_bits() == q.to_bits()
                    } else {
                        (p - q).abs() <= 1e-13
                    }
            })
        };
        for direction in [Direction::Forward, Direction::Reverse] {
            for initial in [None, Some(states.as_slice())] {
                let taped = forward(&cell, &steps, &[&x], initial, direction).unwrap();
                drop(infer(&cell, &steps, &[&nan_x], initial, direction).unwrap());
                let inferred = infer(&cell, &steps, &[&x], initial, direction).unwrap();
                let what = format!(
                    "`{}` in {} bytes, {direction:?} over {lengths:?} (initial states: {})",
                    C::SPEC.name,
                    std::mem::size_of::<T>(),
                    initial.is_some()
                );
                assert!(
                    agree(&taped.output, &inferred.output),
                    "{what}: the outputs differ"
                );
                for (a, b) in taped.final_states.iter().zip(&inferred.final_states) {
                    assert!(agree(a, b), "{what}: the final states differ");
                }
            }
        }
    }

    /// Nine sequences (two parts on two threads) that stop at different steps, some
    /// inside a chunk and some at its end.
    const LENGTHS: [usize; 9] = [48, 48, 45, 33, 30, 30, 17, 4, 1];

    #[test]
    fn chunks_give_what_one_pass_gives() {
        infer_matches_forward::<f32, LstmCell<f32>>(&[6, 100], &LENGTHS, 3);
        infer_matches_forward::<f32, GruCell<f32>>(&[7, 120], &LENGTHS, 3);
        infer_matches_forward::<f32, LstmProjCell<f32>>(&[5, 48, 12], &LENGTHS, 2);
        infer_matches_forward::<f32, RnnTanhCell<f32>>(&[300, 200], &LENGTHS, 3);
        // f64 stacks its weights by copying them into the tape, once for all chunks.
        infer_matches_forward::<f64, LstmCell<f64>>(&[6, 100], &LENGTHS, 3);
        // One sequence: the notebooks' sizes, long enough for two chunks.
        infer_matches_forward::<f32, LstmCell<f32>>(&[35, 35], &[300], 2);
        // 64 sequences (32 a part on two threads) and weights of 590 K values: where
        // the processor has AMX, every product with them runs on the tiles, the
        // chunks' too, though a chunk is a step of fewer than 32 columns.
        let lengths: Vec<usize> = (0..64).map(|s| 12 - s / 6).collect();
        infer_matches_forward::<f32, LstmCell<f32>>(&[384, 384], &lengths, 3);
        // The same weights, a part whose one long sequence ends in steps of one
        // column, whose last step would fill a chunk alone at some of these lengths
        // (at 42 before chunks held two columns at least).
        for long in 40..=44 {
            let lengths = [vec![long], vec![1; 63]].concat();
            infer_matches_forward::<f32, LstmCell<f32>>(&[384, 384], &lengths, 3);
        }
        // One sequence whose input terms, 2048 × 1400 by a chunk's columns, are
        // shared with the helper thread: chunks of 12 steps, the last of 3 columns
        // (1 and 2 before products over all steps kept halves of two columns).
        infer_matches_forward::<f32, LstmCell<f32>>(&[1400, 512], &[27], 3);
    }

    #[test]
    fn chunks_cover_every_step_once_and_hold_at_least_one() {
        let steps = Steps::from_sorted_lengths(&LENGTHS).unwrap();
        for per_column in [1, 1000, 10_000, CHUNK_VALUES, 10 * CHUNK_VALUES] {
            let chunks = chunks(&steps, per_column);
            assert_eq!(chunks[0].start, 0);
            assert_eq!(chunks.last().unwrap().end, steps.len());
            for pair in chunks.windows(2) {
                assert_eq!(pair[0].end, pair[1].start);
            }
            for chunk in &chunks {
                assert!(!chunk.is_empty());
                let values = columns_of(&steps, chunk) * per_column;
                assert!(
                    chunk.len() == 1 || values <= CHUNK_VALUES,
                    "a chunk of {} steps holds {values} values",
                    chunk.len()
                );
            }
        }
        assert_eq!(chunks(&steps, 1).len(), 1);
        assert_eq!(chunks(&steps, 10 * CHUNK_VALUES).len(), steps.len());
    }

    /// No chunk is one column where the sequence has more: a step of one sequence
    /// joins the step before it, at the end and wherever a step alone fills a chunk.
    #[test]
    fn chunks_hold_two_columns_at_least() {
        let steps = Steps::from_sorted_lengths(&[40, 3, 2, 1, 1]).unwrap();
        for per_column in [1, 1000, 10_000, CHUNK_VALUES, 10 * CHUNK_VALUES] {
            let chunks = chunks(&steps, per_column);
            assert_eq!(chunks.last().unwrap().end, steps.len());
            for chunk in &chunks {
                let columns = columns_of(&steps, chunk);
                assert!(
                    columns > 1,
                    "{per_column} a column: {chunk:?} holds {columns}"
                );
            }
        }
        let one = Steps::from_sorted_lengths(&[1]).unwrap();
        assert_eq!(chunks(&one, 10 * CHUNK_VALUES), vec![0..1]);
    }

    #[test]
    fn bad_input_is_an_error_as_in_forward() {
        let mut rng = Rng::seed(1);
        let cell =
            LstmCell::<f32>::with_dims(&[3, 4], &Init::pytorch_default(4), &mut rng).unwrap();
        let steps = Steps::full(5, 2).unwrap();
        let message = infer(
            &cell,
            &steps,
            &[&DMatrix::zeros(3, 9)],
            None,
            Direction::Forward,
        )
        .unwrap_err()
        .to_string();
        assert!(
            message.contains("(3, 10)") && message.contains("(3, 9)"),
            "{message}"
        );
        let h = DMatrix::zeros(4, 3);
        let c = DMatrix::zeros(4, 2);
        let message = infer(
            &cell,
            &steps,
            &[&DMatrix::zeros(3, 10)],
            Some(&[h, c]),
            Direction::Forward,
        )
        .unwrap_err()
        .to_string();
        assert!(
            message.contains("(4, 2)") && message.contains("(4, 3)"),
            "{message}"
        );
    }
}
