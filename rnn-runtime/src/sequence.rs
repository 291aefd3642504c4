//! Unrolling any cell over a batch of sequences, and backpropagation through time.
//!
//! Layout: features down the columns, one column per (step, sequence). Step `t` covers
//! the columns `offset(t)..offset(t) + batch_size(t)`; sequences are ordered longest
//! first, so the sequences still running at a step are always the first ones. A batch of
//! equal lengths is the time-major (T, B, I) tensor read as an (I, T·B) matrix; a packed
//! batch is PyTorch's `PackedSequence.data` with its `batch_sizes`.

use nalgebra::DMatrix;

use crate::{ensure, Cell, Result, Scalar, Tape};

/// How many sequences run at each step, and where each step's columns start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Steps {
    batch_sizes: Vec<usize>,
    offsets: Vec<usize>,
    columns: usize,
}

impl Steps {
    /// `batch` sequences of `seq_len` steps each.
    pub fn full(seq_len: usize, batch: usize) -> Result<Steps> {
        ensure!(
            batch > 0,
            "empty batch: a batch needs at least one sequence"
        );
        ensure!(seq_len > 0, "empty sequences: the sequence length is 0");
        Steps::from_batch_sizes(vec![batch; seq_len])
    }

    /// From PyTorch's `batch_sizes`: how many sequences are still running at each step
    /// (positive, never increasing).
    pub fn from_batch_sizes(batch_sizes: Vec<usize>) -> Result<Steps> {
        ensure!(
            !batch_sizes.is_empty(),
            "empty sequences: `batch_sizes` is empty"
        );
        ensure!(batch_sizes[0] > 0, "empty batch: `batch_sizes[0]` is 0");
        for (t, pair) in batch_sizes.windows(2).enumerate() {
            ensure!(
                pair[1] <= pair[0] && pair[1] > 0,
                "`batch_sizes` must be positive and non-increasing, but step {} has {} after {}",
                t + 1,
                pair[1],
                pair[0]
            );
        }
        let mut offsets = Vec::with_capacity(batch_sizes.len());
        let mut columns = 0;
        for &n in &batch_sizes {
            offsets.push(columns);
            columns += n;
        }
        Ok(Steps {
            batch_sizes,
            offsets,
            columns,
        })
    }

    /// From each sequence's length, longest first.
    pub fn from_sorted_lengths(lengths: &[usize]) -> Result<Steps> {
        ensure!(!lengths.is_empty(), "empty batch: no lengths given");
        for (b, pair) in lengths.windows(2).enumerate() {
            ensure!(
                pair[1] <= pair[0],
                "lengths must be sorted longest first, but sequence {} has length {} after {}",
                b + 1,
                pair[1],
                pair[0]
            );
        }
        ensure!(
            lengths[lengths.len() - 1] > 0,
            "sequence {} has length 0",
            lengths.len() - 1
        );
        let batch_sizes = (0..lengths[0])
            .map(|t| lengths.iter().filter(|&&len| len > t).count())
            .collect();
        Steps::from_batch_sizes(batch_sizes)
    }

    /// The number of steps (the longest sequence's length).
    pub fn len(&self) -> usize {
        self.batch_sizes.len()
    }

    /// Never: a `Steps` has at least one step.
    pub fn is_empty(&self) -> bool {
        self.batch_sizes.is_empty()
    }

    /// The number of sequences.
    pub fn batch(&self) -> usize {
        self.batch_sizes[0]
    }

    /// The number of (step, sequence) columns.
    pub fn columns(&self) -> usize {
        self.columns
    }

    /// How many sequences run at each step.
    pub fn batch_sizes(&self) -> &[usize] {
        &self.batch_sizes
    }

    /// (first column, number of sequences) of step `t`.
    pub fn step(&self, t: usize) -> (usize, usize) {
        (self.offsets[t], self.batch_sizes[t])
    }
}

/// Which way the time loop runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the first step to the last.
    Forward,
    /// Each sequence read from its own last step back to its first.
    Reverse,
}

impl Direction {
    fn order(self, len: usize) -> Box<dyn Iterator<Item = usize>> {
        match self {
            Direction::Forward => Box::new(0..len),
            Direction::Reverse => Box::new((0..len).rev()),
        }
    }
}

/// A forward pass that can be differentiated: its outputs, and the tape that the
/// backward pass reads.
pub struct Trajectory<T: Scalar> {
    tape: Tape<T>,
    steps: Steps,
    direction: Direction,
    /// Which cell ran forward: its type's name and its sizes.
    cell: (&'static str, Vec<usize>),
    /// The output state at every step: (output size, columns).
    pub output: DMatrix<T>,
    /// Each state after the last step of each sequence: (state size, batch).
    pub final_states: Vec<DMatrix<T>>,
}

/// The gradients of a loss with respect to everything a forward pass read.
pub struct SequenceGrads<T: Scalar, G> {
    /// Of the cell's parameters.
    pub params: G,
    /// Per input, (input size, columns).
    pub inputs: Vec<DMatrix<T>>,
    /// Per state, (state size, batch).
    pub initial_states: Vec<DMatrix<T>>,
}

/// Runs `cell` over the sequences: `inputs[k]` holds input k for every column;
/// `initial_states` (each (state size, batch)) default to zeros.
pub fn forward<T: Scalar, C: Cell<T>>(
    cell: &C,
    steps: &Steps,
    inputs: &[&DMatrix<T>],
    initial_states: Option<&[DMatrix<T>]>,
    direction: Direction,
) -> Result<Trajectory<T>> {
    let spec = C::SPEC;
    let roles = &spec.roles;
    ensure!(
        inputs.len() == spec.inputs.len(),
        "`{}` takes {} inputs but {} were given",
        spec.name,
        spec.inputs.len(),
        inputs.len()
    );
    for (k, input) in inputs.iter().enumerate() {
        let (rows, cols) = input.shape();
        let expected = cell.input_size(k);
        ensure!(
            rows == expected && cols == steps.columns(),
            "input `{}` of `{}` must be ({expected}, {}) (input size, columns) but is ({rows}, {cols})",
            spec.inputs[k].name,
            spec.name,
            steps.columns()
        );
    }
    let batch = steps.batch();
    let mut tape = Tape::new(&cell.tape_buffers(), steps.columns(), batch);
    for (k, input) in inputs.iter().enumerate() {
        tape.buffer_mut(roles.inputs[k])
            .copy_from_slice(input.as_slice());
    }
    if let Some(states) = initial_states {
        ensure!(
            states.len() == spec.states.len(),
            "`{}` has {} states but {} initial states were given",
            spec.name,
            spec.states.len(),
            states.len()
        );
        for (k, state) in states.iter().enumerate() {
            let expected = (cell.state_size(k), batch);
            ensure!(
                state.shape() == expected,
                "initial state `{}` of `{}` must be {:?} (state size, batch) but is {:?}",
                spec.states[k].name,
                spec.name,
                expected,
                state.shape()
            );
            tape.buffer_mut(roles.state[k])
                .copy_from_slice(state.as_slice());
        }
    }
    cell.prepare(&mut tape);
    let out = spec.output;
    let out_rows = cell.output_size();
    let mut output = DMatrix::zeros(out_rows, steps.columns());
    for t in direction.order(steps.len()) {
        let (off, n) = steps.step(t);
        for k in 0..spec.states.len() {
            tape.copy(
                (roles.state[k], 0, 0),
                (roles.prev[k], 0, off),
                cell.state_size(k),
                n,
            );
        }
        cell.step_forward(&mut tape, off, n);
        let now = &tape.buffer(roles.state[out])[..out_rows * n];
        output.as_mut_slice()[off * out_rows..(off + n) * out_rows].copy_from_slice(now);
    }
    let final_states = (0..spec.states.len())
        .map(|k| DMatrix::from_column_slice(cell.state_size(k), batch, tape.buffer(roles.state[k])))
        .collect();
    let ran = (spec.name, cell.dims().to_vec());
    Ok(Trajectory {
        tape,
        steps: steps.clone(),
        direction,
        cell: ran,
        output,
        final_states,
    })
}

impl<T: Scalar> Trajectory<T> {
    /// The batch layout of the forward pass.
    pub fn steps(&self) -> &Steps {
        &self.steps
    }

    /// Backpropagation through time for the loss whose gradients with respect to the
    /// output and the final states are given (`None`: the loss does not read it). `cell`
    /// must be the cell that ran the forward pass.
    pub fn backward<C: Cell<T>>(
        &mut self,
        cell: &C,
        d_output: Option<&DMatrix<T>>,
        d_final_states: &[Option<&DMatrix<T>>],
    ) -> Result<SequenceGrads<T, C::Grads>> {
        let spec = C::SPEC;
        let roles = &spec.roles;
        let batch = self.steps.batch();
        ensure!(
            self.cell.0 == spec.name && self.cell.1 == cell.dims(),
            "backward needs the cell that ran forward: `{}` with sizes {:?}, but was given `{}` with sizes {:?}",
            self.cell.0,
            self.cell.1,
            spec.name,
            cell.dims()
        );
        ensure!(
            d_final_states.is_empty() || d_final_states.len() == spec.states.len(),
            "`{}` has {} states but {} final-state gradients were given",
            spec.name,
            spec.states.len(),
            d_final_states.len()
        );
        if let Some(d) = d_output {
            ensure!(
                d.shape() == self.output.shape(),
                "the output gradient must be {:?} like the output but is {:?}",
                self.output.shape(),
                d.shape()
            );
        }
        for k in 0..spec.states.len() {
            let buf = self.tape.buffer_mut(roles.d_state[k]);
            match d_final_states.get(k).copied().flatten() {
                Some(d) => {
                    let expected = (cell.state_size(k), batch);
                    ensure!(
                        d.shape() == expected,
                        "the gradient of final state `{}` must be {:?} but is {:?}",
                        spec.states[k].name,
                        expected,
                        d.shape()
                    );
                    buf.copy_from_slice(d.as_slice());
                }
                None => buf.fill(T::zero()),
            }
        }
        let mut grads = cell.zero_grads();
        let out = spec.output;
        let out_rows = cell.output_size();
        let order: Vec<usize> = self.direction.order(self.steps.len()).collect();
        for &t in order.iter().rev() {
            let (off, n) = self.steps.step(t);
            if let Some(d) = d_output {
                let from = &d.as_slice()[off * out_rows..(off + n) * out_rows];
                for (acc, g) in self
                    .tape
                    .buffer_mut(roles.d_state[out])
                    .iter_mut()
                    .zip(from)
                {
                    *acc += *g;
                }
            }
            cell.step_backward(&mut self.tape, off, n, &mut grads);
            for k in 0..spec.states.len() {
                self.tape.copy(
                    (roles.d_prev[k], 0, 0),
                    (roles.d_state[k], 0, 0),
                    cell.state_size(k),
                    n,
                );
            }
        }
        cell.finish_backward(&mut self.tape, &mut grads);
        let columns = self.steps.columns();
        let inputs = (0..spec.inputs.len())
            .map(|k| {
                DMatrix::from_column_slice(
                    cell.input_size(k),
                    columns,
                    self.tape.buffer(roles.d_inputs[k]),
                )
            })
            .collect();
        let initial_states = (0..spec.states.len())
            .map(|k| {
                DMatrix::from_column_slice(
                    cell.state_size(k),
                    batch,
                    self.tape.buffer(roles.d_state[k]),
                )
            })
            .collect();
        Ok(SequenceGrads {
            params: grads,
            inputs,
            initial_states,
        })
    }
}
