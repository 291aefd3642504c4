//! Variable-length batches, with PyTorch's semantics: `pack_padded_sequence`,
//! `pad_packed_sequence`, `pack_sequence`, `pad_sequence`.
//!
//! A padded batch of `B` sequences of up to `T` steps and `F` features is a matrix
//! (F, T·B) whose column `t·B + b` is step t of sequence b (time-major, PyTorch's
//! (T, B, F)), or with `batch_first` a matrix (F, B·T) whose column `b·T + t` is
//! (PyTorch's (B, T, F)). A packed batch holds the valid steps only, longest sequences
//! first, step by step: its `data` is (F, Σ lengths).

use nalgebra::DMatrix;

use crate::sequence::Steps;
use crate::{ensure, Error, Result, Scalar};

/// A batch of sequences of different lengths, packed as PyTorch packs them.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedSequence<T: Scalar> {
    /// (features, Σ lengths): step 0 of every sequence, then step 1 of those that
    /// have one, and so on, longest sequences first.
    pub data: DMatrix<T>,
    /// How many sequences have each step.
    pub batch_sizes: Vec<usize>,
    /// `sorted_indices[i]` is the original index of the i-th longest sequence; `None`
    /// when the batch was given sorted (`enforce_sorted`).
    pub sorted_indices: Option<Vec<usize>>,
    /// The inverse permutation: where each original sequence is in the sorted order.
    pub unsorted_indices: Option<Vec<usize>>,
}

impl<T: Scalar> PackedSequence<T> {
    /// The time layout of the packed data.
    pub fn steps(&self) -> Result<Steps> {
        Steps::from_batch_sizes(self.batch_sizes.clone())
    }

    /// The number of sequences.
    pub fn batch(&self) -> usize {
        self.batch_sizes.first().copied().unwrap_or(0)
    }

    /// Each sequence's length, in the original order.
    pub fn lengths(&self) -> Vec<usize> {
        let sorted: Vec<usize> = (0..self.batch())
            .map(|i| self.batch_sizes.iter().filter(|&&n| n > i).count())
            .collect();
        match &self.unsorted_indices {
            Some(unsorted) => unsorted.iter().map(|&i| sorted[i]).collect(),
            None => sorted,
        }
    }

    /// The same batch with other data of the same layout (a layer's output, a gradient).
    pub fn with_data(&self, data: DMatrix<T>) -> PackedSequence<T> {
        PackedSequence {
            data,
            ..self.clone()
        }
    }

    /// `sorted_indices`, or the identity.
    pub fn order(&self) -> Vec<usize> {
        self.sorted_indices
            .clone()
            .unwrap_or_else(|| (0..self.batch()).collect())
    }
}

/// Sequences sorted longest first: (sorted_indices, unsorted_indices). Ties keep their
/// order, as PyTorch's sort does.
fn sort_by_length(lengths: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let mut sorted: Vec<usize> = (0..lengths.len()).collect();
    sorted.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]));
    let mut unsorted = vec![0; lengths.len()];
    for (position, &original) in sorted.iter().enumerate() {
        unsorted[original] = position;
    }
    (sorted, unsorted)
}

/// The column of step t of sequence b in a padded batch.
fn padded_column(t: usize, b: usize, seq_len: usize, batch: usize, batch_first: bool) -> usize {
    if batch_first {
        b * seq_len + t
    } else {
        t * batch + b
    }
}

/// Packs a padded batch (see the module docs for its layout) of `lengths.len()`
/// sequences. With `enforce_sorted`, the lengths must be sorted longest first;
/// otherwise the sequences are sorted, and the permutation is kept.
pub fn pack_padded_sequence<T: Scalar>(
    padded: &DMatrix<T>,
    lengths: &[usize],
    batch_first: bool,
    enforce_sorted: bool,
) -> Result<PackedSequence<T>> {
    let batch = lengths.len();
    ensure!(batch > 0, "pack_padded_sequence: empty batch (no lengths)");
    ensure!(
        padded.ncols().is_multiple_of(batch),
        "pack_padded_sequence: a padded batch of {batch} sequences needs a multiple of {batch} columns, but has {}",
        padded.ncols()
    );
    let seq_len = padded.ncols() / batch;
    for (b, &len) in lengths.iter().enumerate() {
        ensure!(len > 0, "pack_padded_sequence: sequence {b} has length 0");
        ensure!(len <= seq_len, "pack_padded_sequence: sequence {b} has length {len} but the padded batch has {seq_len} steps");
    }
    let (sorted, unsorted) = if enforce_sorted {
        if let Some(b) = (1..batch).find(|&b| lengths[b] > lengths[b - 1]) {
            return Err(Error::new(format!(
                "pack_padded_sequence: lengths must be sorted longest first with `enforce_sorted`, but sequence {b} has length {} after {}",
                lengths[b],
                lengths[b - 1]
            )));
        }
        ((0..batch).collect(), (0..batch).collect())
    } else {
        sort_by_length(lengths)
    };
    let sorted_lengths: Vec<usize> = sorted.iter().map(|&b| lengths[b]).collect();
    let steps = Steps::from_sorted_lengths(&sorted_lengths)?;
    let mut data = DMatrix::zeros(padded.nrows(), steps.columns());
    for t in 0..steps.len() {
        let (off, n) = steps.step(t);
        for (i, &b) in sorted.iter().take(n).enumerate() {
            data.set_column(
                off + i,
                &padded.column(padded_column(t, b, seq_len, batch, batch_first)),
            );
        }
    }
    let (sorted_indices, unsorted_indices) = if enforce_sorted {
        (None, None)
    } else {
        (Some(sorted), Some(unsorted))
    };
    Ok(PackedSequence {
        data,
        batch_sizes: steps.batch_sizes().to_vec(),
        sorted_indices,
        unsorted_indices,
    })
}

/// Unpacks to a padded batch in the original order, `padding_value` past each
/// sequence's length, `total_length` steps (at least the longest length; by default
/// exactly it). Returns the batch and each sequence's length.
pub fn pad_packed_sequence<T: Scalar>(
    packed: &PackedSequence<T>,
    batch_first: bool,
    padding_value: T,
    total_length: Option<usize>,
) -> Result<(DMatrix<T>, Vec<usize>)> {
    let steps = packed.steps()?;
    ensure!(
        packed.data.ncols() == steps.columns(),
        "pad_packed_sequence: `data` has {} columns but `batch_sizes` sum to {}",
        packed.data.ncols(),
        steps.columns()
    );
    let batch = steps.batch();
    let seq_len = total_length.unwrap_or(steps.len());
    ensure!(
        seq_len >= steps.len(),
        "pad_packed_sequence: `total_length` is {seq_len} but the longest sequence has {} steps",
        steps.len()
    );
    let order = packed.order();
    ensure!(
        order.len() == batch,
        "pad_packed_sequence: {} sorted indices for a batch of {batch}",
        order.len()
    );
    let mut padded = DMatrix::from_element(packed.data.nrows(), seq_len * batch, padding_value);
    for t in 0..steps.len() {
        let (off, n) = steps.step(t);
        for (i, &b) in order.iter().take(n).enumerate() {
            padded.set_column(
                padded_column(t, b, seq_len, batch, batch_first),
                &packed.data.column(off + i),
            );
        }
    }
    Ok((padded, packed.lengths()))
}

/// Packs sequences given one by one, each (features, its length).
pub fn pack_sequence<T: Scalar>(
    sequences: &[DMatrix<T>],
    enforce_sorted: bool,
) -> Result<PackedSequence<T>> {
    let lengths: Vec<usize> = sequences.iter().map(|s| s.ncols()).collect();
    let padded = pad_sequence(sequences, false, T::zero())?;
    pack_padded_sequence(&padded, &lengths, false, enforce_sorted)
}

/// Pads sequences given one by one, each (features, its length), to the longest.
pub fn pad_sequence<T: Scalar>(
    sequences: &[DMatrix<T>],
    batch_first: bool,
    padding_value: T,
) -> Result<DMatrix<T>> {
    ensure!(!sequences.is_empty(), "pad_sequence: no sequences");
    let features = sequences[0].nrows();
    for (b, s) in sequences.iter().enumerate() {
        ensure!(
            s.nrows() == features,
            "pad_sequence: sequence {b} has {} features but sequence 0 has {features}",
            s.nrows()
        );
    }
    let batch = sequences.len();
    let seq_len = sequences.iter().map(|s| s.ncols()).max().unwrap_or(0);
    let mut padded = DMatrix::from_element(features, seq_len * batch, padding_value);
    for (b, s) in sequences.iter().enumerate() {
        for t in 0..s.ncols() {
            padded.set_column(
                padded_column(t, b, seq_len, batch, batch_first),
                &s.column(t),
            );
        }
    }
    Ok(padded)
}

/// Reorders the columns of a padded batch between the time-major and the batch-first
/// layouts.
pub fn transpose_batch<T: Scalar>(
    padded: &DMatrix<T>,
    batch: usize,
    from_batch_first: bool,
) -> Result<DMatrix<T>> {
    ensure!(
        batch > 0 && padded.ncols().is_multiple_of(batch),
        "a padded batch of {batch} sequences cannot have {} columns",
        padded.ncols()
    );
    let seq_len = padded.ncols() / batch;
    let mut out = DMatrix::zeros(padded.nrows(), padded.ncols());
    for t in 0..seq_len {
        for b in 0..batch {
            let from = padded_column(t, b, seq_len, batch, from_batch_first);
            let to = padded_column(t, b, seq_len, batch, !from_batch_first);
            out.set_column(to, &padded.column(from));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three sequences of lengths 2, 3, 1 whose values name (sequence, step).
    fn padded(batch_first: bool) -> DMatrix<f64> {
        let lengths = [2, 3, 1];
        let mut m = DMatrix::zeros(1, 9);
        for (b, &len) in lengths.iter().enumerate() {
            for t in 0..len {
                m[(0, padded_column(t, b, 3, 3, batch_first))] = (10 * b + t) as f64 + 1.0;
            }
        }
        m
    }

    #[test]
    fn packs_sorted_by_length_and_pads_back() {
        for batch_first in [false, true] {
            let packed =
                pack_padded_sequence(&padded(batch_first), &[2, 3, 1], batch_first, false).unwrap();
            assert_eq!(packed.batch_sizes, vec![3, 2, 1]);
            assert_eq!(packed.sorted_indices, Some(vec![1, 0, 2]));
            assert_eq!(packed.unsorted_indices, Some(vec![1, 0, 2]));
            assert_eq!(packed.data.as_slice(), &[11.0, 1.0, 21.0, 12.0, 2.0, 13.0]);
            assert_eq!(packed.lengths(), vec![2, 3, 1]);
            let (back, lengths) = pad_packed_sequence(&packed, batch_first, 0.0, None).unwrap();
            assert_eq!(back, padded(batch_first));
            assert_eq!(lengths, vec![2, 3, 1]);
            let (longer, _) = pad_packed_sequence(&packed, batch_first, -1.0, Some(4)).unwrap();
            assert_eq!(longer.ncols(), 12);
            assert_eq!(longer.iter().filter(|&&v| v == -1.0).count(), 12 - 6);
        }
    }

    #[test]
    fn pack_sequence_and_pad_sequence_agree_with_the_padded_path() {
        let seqs = vec![
            DMatrix::from_row_slice(1, 2, &[1.0, 2.0]),
            DMatrix::from_row_slice(1, 3, &[11.0, 12.0, 13.0]),
            DMatrix::from_row_slice(1, 1, &[21.0]),
        ];
        assert_eq!(pad_sequence(&seqs, false, 0.0).unwrap(), padded(false));
        assert_eq!(pad_sequence(&seqs, true, 0.0).unwrap(), padded(true));
        let packed = pack_sequence(&seqs, false).unwrap();
        assert_eq!(
            packed,
            pack_padded_sequence(&padded(false), &[2, 3, 1], false, false).unwrap()
        );
        let err = pack_sequence(&seqs, true).unwrap_err().to_string();
        assert!(
            err.contains("sorted") && err.contains("length 3 after 2"),
            "{err}"
        );
    }

    #[test]
    fn bad_lengths_are_errors() {
        let m = padded(false);
        let msg = |r: Result<PackedSequence<f64>>| r.unwrap_err().to_string();
        assert!(msg(pack_padded_sequence(&m, &[2, 4, 1], false, false))
            .contains("length 4 but the padded batch has 3 steps"));
        assert!(msg(pack_padded_sequence(&m, &[2, 0, 1], false, false))
            .contains("sequence 1 has length 0"));
        assert!(msg(pack_padded_sequence(&m, &[], false, false)).contains("empty batch"));
        assert!(msg(pack_padded_sequence(&m, &[2, 2], false, false)).contains("multiple of 2"));
        let packed = pack_padded_sequence(&m, &[2, 3, 1], false, false).unwrap();
        assert!(pad_packed_sequence(&packed, false, 0.0, Some(2))
            .unwrap_err()
            .to_string()
            .contains("total_length"));
    }

    #[test]
    fn transposing_twice_is_the_identity() {
        let tm = padded(false);
        let bf = transpose_batch(&tm, 3, false).unwrap();
        assert_eq!(bf, padded(true));
        assert_eq!(transpose_batch(&bf, 3, true).unwrap(), tm);
    }
}
