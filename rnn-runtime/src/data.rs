//! Feeding the layers: shuffled mini-batches of variable-length sequences (padded or
//! packed, optionally sorted by length), and training windows cut from one long text
//! or series for language modelling. Batches are copied once, into the batch matrix.

use nalgebra::DMatrix;

use crate::pack::PackedSequence;
use crate::{ensure, Result, Rng, Scalar};

/// How a dataset is cut into batches.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchConfig {
    /// Sequences per batch.
    pub batch_size: usize,
    /// Reshuffle the order of sequences (drawn from the RNG).
    pub shuffle: bool,
    /// Within each batch, longest sequence first (what packing wants).
    pub sort_by_length: bool,
    /// Drop a last batch smaller than `batch_size`.
    pub drop_last: bool,
}

/// The batches, as lists of dataset indices, for sequences of the given lengths.
pub fn batch_indices(
    lengths: &[usize],
    config: &BatchConfig,
    rng: &mut Rng,
) -> Result<Vec<Vec<usize>>> {
    ensure!(config.batch_size > 0, "`batch_size` must be positive");
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    if config.shuffle {
        rng.shuffle(&mut order);
    }
    let mut batches: Vec<Vec<usize>> = order
        .chunks(config.batch_size)
        .map(<[usize]>::to_vec)
        .collect();
    if config.drop_last && batches.last().is_some_and(|b| b.len() < config.batch_size) {
        batches.pop();
    }
    if config.sort_by_length {
        for batch in &mut batches {
            // Stable: equal lengths keep the shuffled order.
            batch.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]));
        }
    }
    Ok(batches)
}

/// Sequences `indices` of a dataset of (features, length) matrices, packed (each
/// value copied once, straight into the packed data).
pub fn packed_batch<T: Scalar>(
    dataset: &[DMatrix<T>],
    indices: &[usize],
) -> Result<PackedSequence<T>> {
    let sequences = select(dataset, indices)?;
    let lengths: Vec<usize> = sequences.iter().map(|s| s.ncols()).collect();
    // Longest first; ties keep their order, as PyTorch's sort does.
    let mut sorted: Vec<usize> = (0..sequences.len()).collect();
    sorted.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]));
    let sorted_lengths: Vec<usize> = sorted.iter().map(|&i| lengths[i]).collect();
    let steps = crate::sequence::Steps::from_sorted_lengths(&sorted_lengths)?;
    let mut data = DMatrix::zeros(sequences[0].nrows(), steps.columns());
    for t in 0..steps.len() {
        let (off, n) = steps.step(t);
        for (i, &s) in sorted.iter().take(n).enumerate() {
            data.set_column(off + i, &sequences[s].column(t));
        }
    }
    let mut unsorted = vec![0; sorted.len()];
    for (position, &original) in sorted.iter().enumerate() {
        unsorted[original] = position;
    }
    Ok(PackedSequence {
        data,
        batch_sizes: steps.batch_sizes().to_vec(),
        sorted_indices: Some(sorted),
        unsorted_indices: Some(unsorted),
    })
}

/// Sequences `indices`, padded with zeros to the longest (each value copied once);
/// with their lengths.
pub fn padded_batch<T: Scalar>(
    dataset: &[DMatrix<T>],
    indices: &[usize],
    batch_first: bool,
) -> Result<(DMatrix<T>, Vec<usize>)> {
    let sequences = select(dataset, indices)?;
    let lengths: Vec<usize> = sequences.iter().map(|s| s.ncols()).collect();
    let (batch, seq_len) = (sequences.len(), lengths.iter().copied().max().unwrap_or(0));
    let mut padded = DMatrix::zeros(sequences[0].nrows(), seq_len * batch);
    for (b, sequence) in sequences.iter().enumerate() {
        for t in 0..sequence.ncols() {
            let column = if batch_first {
                b * seq_len + t
            } else {
                t * batch + b
            };
            padded.set_column(column, &sequence.column(t));
        }
    }
    Ok((padded, lengths))
}

/// The chosen sequences, borrowed, all with the same number of features.
fn select<'a, T: Scalar>(
    dataset: &'a [DMatrix<T>],
    indices: &[usize],
) -> Result<Vec<&'a DMatrix<T>>> {
    ensure!(!indices.is_empty(), "an empty batch: no sequence indices");
    let sequences: Vec<&DMatrix<T>> = indices
        .iter()
        .map(|&i| {
            dataset.get(i).ok_or_else(|| {
                crate::Error::new(format!(
                    "index {i} is not in a dataset of {} sequences",
                    dataset.len()
                ))
            })
        })
        .collect::<Result<_>>()?;
    let features = sequences[0].nrows();
    for (&i, s) in indices.iter().zip(&sequences) {
        ensure!(
            s.nrows() == features,
            "sequence {i} has {} features but sequence {} has {features}",
            s.nrows(),
            indices[0]
        );
        ensure!(s.ncols() > 0, "sequence {i} is empty");
    }
    Ok(sequences)
}

/// Where training windows start in a text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowOrder {
    /// `count` windows at random places.
    Random {
        /// How many windows.
        count: usize,
    },
    /// Back to back from the start, as many as fit.
    Consecutive,
}

/// The starts of windows of `len` steps in a text of `total` symbols; each window's
/// targets are the next `len` symbols, so a window needs `len + 1`.
pub fn window_starts(
    total: usize,
    len: usize,
    order: WindowOrder,
    rng: &mut Rng,
) -> Result<Vec<usize>> {
    ensure!(len > 0, "a window needs at least one step");
    ensure!(
        total > len,
        "a text of {total} symbols has no window of {len} steps with targets (it needs {})",
        len + 1
    );
    let last = total - len - 1;
    Ok(match order {
        WindowOrder::Random { count } => (0..count).map(|_| rng.below(last + 1)).collect(),
        WindowOrder::Consecutive => (0..=last).step_by(len).collect(),
    })
}

/// A batch of windows as time-major symbol ids (column t·B + b is step t of window b):
/// the inputs `ids[s..s + len]` and the targets `ids[s + 1..s + len + 1]`.
pub fn window_batch(ids: &[usize], starts: &[usize], len: usize) -> Result<(Vec<usize>, Vec<i64>)> {
    for &s in starts {
        ensure!(
            s + len < ids.len(),
            "a window of {len} steps at {s} runs past the text's {} symbols",
            ids.len()
        );
    }
    let batch = starts.len();
    let mut inputs = Vec::with_capacity(len * batch);
    let mut targets = Vec::with_capacity(len * batch);
    for t in 0..len {
        for &s in starts {
            inputs.push(ids[s + t]);
            targets.push(ids[s + t + 1] as i64);
        }
    }
    Ok((inputs, targets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cover_the_dataset_once_sorted_within() {
        let lengths = [3, 1, 4, 1, 5, 9, 2];
        let config = BatchConfig {
            batch_size: 3,
            shuffle: true,
            sort_by_length: true,
            drop_last: false,
        };
        let batches = batch_indices(&lengths, &config, &mut Rng::seed(1)).unwrap();
        let mut all: Vec<usize> = batches.concat();
        all.sort_unstable();
        assert_eq!(all, (0..7).collect::<Vec<_>>());
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![3, 3, 1]
        );
        for batch in &batches {
            assert!(batch.windows(2).all(|w| lengths[w[0]] >= lengths[w[1]]));
        }
        assert_eq!(
            batches,
            batch_indices(&lengths, &config, &mut Rng::seed(1)).unwrap(),
            "same seed, same batches"
        );
        let dropped = batch_indices(
            &lengths,
            &BatchConfig {
                drop_last: true,
                ..config
            },
            &mut Rng::seed(1),
        )
        .unwrap();
        assert_eq!(dropped.len(), 2);
    }

    #[test]
    fn windows_and_their_shifted_targets() {
        let ids: Vec<usize> = (0..10).collect();
        let starts = window_starts(10, 3, WindowOrder::Consecutive, &mut Rng::seed(0)).unwrap();
        assert_eq!(starts, vec![0, 3, 6]);
        let (inputs, targets) = window_batch(&ids, &[0, 6], 3).unwrap();
        assert_eq!(inputs, vec![0, 6, 1, 7, 2, 8]);
        assert_eq!(targets, vec![1, 7, 2, 8, 3, 9]);
        let random =
            window_starts(10, 3, WindowOrder::Random { count: 50 }, &mut Rng::seed(2)).unwrap();
        assert!(random.iter().all(|&s| s + 3 < 10));
        assert!(
            window_starts(3, 3, WindowOrder::Consecutive, &mut Rng::seed(0))
                .unwrap_err()
                .to_string()
                .contains("needs 4")
        );
    }

    #[test]
    fn packed_and_padded_batches() {
        let dataset: Vec<DMatrix<f64>> = [2, 3, 1]
            .iter()
            .map(|&n| DMatrix::from_element(2, n, n as f64))
            .collect();
        let packed = packed_batch(&dataset, &[1, 0, 2]).unwrap();
        assert_eq!(packed.batch_sizes, vec![3, 2, 1]);
        let chosen = [dataset[1].clone(), dataset[0].clone(), dataset[2].clone()];
        assert_eq!(packed, crate::pack::pack_sequence(&chosen, false).unwrap());
        assert_eq!(
            padded_batch(&dataset, &[1, 0, 2], false).unwrap().0,
            crate::pack::pad_sequence(&chosen, false, 0.0).unwrap()
        );
        let (padded, lengths) = padded_batch(&dataset, &[0, 2], true).unwrap();
        assert_eq!(lengths, vec![2, 1]);
        assert_eq!(padded.shape(), (2, 4));
        assert!(packed_batch(&dataset, &[5])
            .unwrap_err()
            .to_string()
            .contains("index 5"));
    }
}
