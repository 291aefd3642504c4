//! Unrolling any cell over a batch of sequences, and backpropagation through time.
//!
//! Layout: features down the columns, one column per (step, sequence). Step `t` covers
//! the columns `offset(t)..offset(t) + batch_size(t)`; sequences are ordered longest
//! first, so the sequences still running at a step are always the first ones. A batch of
//! equal lengths is the time-major (T, B, I) tensor read as an (I, T·B) matrix; a packed
//! batch is PyTorch's `PackedSequence.data` with its `batch_sizes`.

use std::ops::Range;
use std::sync::Arc;

use nalgebra::DMatrix;

use crate::copies::copy_run;
use crate::tape::WeightPacks;
use crate::threads::each_in_parallel;
use crate::{ensure, BufferSpec, Cell, Parameters, Result, Scalar, Tape};

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
        self.order_of(0..len)
    }

    /// The steps of `range` in the order this direction runs them.
    pub(crate) fn order_of(self, range: Range<usize>) -> Box<dyn Iterator<Item = usize>> {
        match self {
            Direction::Forward => Box::new(range),
            Direction::Reverse => Box::new(range.rev()),
        }
    }
}

/// Whether a backward pass computes the gradients of the inputs.
///
/// A layer that reads data (one-hot characters, features: what PyTorch would hold in a
/// tensor without `requires_grad`) needs only the parameters' gradients. Skipping the
/// inputs' saves, for a cell that reads its input through a matrix, the GEMM
/// `Wᵀ · dz` over all steps: about a ninth of an LSTM's forward and backward.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InputGrads {
    /// Compute them (a layer or an embedding below needs them).
    #[default]
    Compute,
    /// Skip them: [`SequenceGrads::inputs`] is empty.
    Skip,
}

/// A forward pass that can be differentiated: its outputs, and the tape that the
/// backward pass reads.
pub struct Trajectory<T: Scalar> {
    /// The batch in parts that ran on threads of their own (one part for small
    /// batches), each with its tape.
    shards: Vec<ShardRun<T>>,
    steps: Steps,
    direction: Direction,
    /// Which cell ran forward: its type's name and its sizes.
    cell: (&'static str, Vec<usize>),
    /// The output state at every step: (output size, columns).
    pub output: DMatrix<T>,
    /// Each state after the last step of each sequence: (state size, batch).
    pub final_states: Vec<DMatrix<T>>,
}

/// What the parts of a backward pass give together: the input and state gradients of
/// all parts, and the parameter gradients of each part that made its own.
type MergedParts<T, G> = (SequenceGrads<T, ()>, Vec<Option<G>>);

/// The gradients of a loss with respect to everything a forward pass read.
pub struct SequenceGrads<T: Scalar, G> {
    /// Of the cell's parameters.
    pub params: G,
    /// Per input, (input size, columns); empty when the pass was asked to skip them
    /// ([`InputGrads::Skip`]).
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
    check_run(cell, steps, inputs, initial_states)?;
    let spec = C::SPEC;
    let batch = steps.batch();
    // Each part of the batch unrolls on a thread of its own (one part for a small
    // batch), reading its columns of the inputs straight into its tape and writing its
    // outputs straight into the batch's.
    let specs = cell.tape_buffers();
    let packs = WeightPacks::new(&specs);
    let mut output = DMatrix::zeros(cell.output_size(), steps.columns());
    let shards = shards(steps);
    let outputs = split_by_shard(steps, &shards, output.as_mut_slice(), cell.output_size());
    let results = each_in_parallel(shards.into_iter().zip(outputs).collect(), |(shard, out)| {
        let (tape, finals) = unroll(
            cell,
            steps,
            &shard,
            inputs,
            initial_states,
            direction,
            &specs,
            Arc::clone(&packs),
            out,
        );
        (ShardRun { shard, tape }, finals)
    });
    let (shards, finals): (Vec<ShardRun<T>>, Vec<Vec<DMatrix<T>>>) = results.into_iter().unzip();
    let final_states = batch_states(
        cell,
        batch,
        shards.iter().map(|run| &run.shard).zip(finals).collect(),
    );
    let ran = (spec.name, cell.dims().to_vec());
    Ok(Trajectory {
        shards,
        steps: steps.clone(),
        direction,
        cell: ran,
        output,
        final_states,
    })
}

/// Checks a run's inputs and initial states against the cell and the batch.
pub(crate) fn check_run<T: Scalar, C: Cell<T>>(
    cell: &C,
    steps: &Steps,
    inputs: &[&DMatrix<T>],
    initial_states: Option<&[DMatrix<T>]>,
) -> Result<()> {
    let spec = C::SPEC;
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
        }
    }
    Ok(())
}

/// Each state of the whole batch from the parts' final states.
pub(crate) fn batch_states<T: Scalar, C: Cell<T>>(
    cell: &C,
    batch: usize,
    mut parts: Vec<(&Shard, Vec<DMatrix<T>>)>,
) -> Vec<DMatrix<T>> {
    if parts.len() == 1 {
        return parts.pop().expect("one part").1;
    }
    let mut finals: Vec<DMatrix<T>> = (0..C::SPEC.states.len())
        .map(|k| DMatrix::zeros(cell.state_size(k), batch))
        .collect();
    for (shard, part_finals) in parts {
        for (all, part) in finals.iter_mut().zip(&part_finals) {
            shard
                .batch_columns_mut(all)
                .copy_from_slice(part.as_slice());
        }
    }
    finals
}

/// Below this many sequences a batch unrolls on one thread: splitting would cost more
/// than it saves.
const MIN_SHARD_BATCH: usize = 4;

/// Sequences `start..start + steps.batch()` of a batch, as a batch of their own.
#[derive(Clone, Debug)]
pub(crate) struct Shard {
    start: usize,
    pub(crate) steps: Steps,
}

/// A shard's forward pass: what its backward pass reads.
struct ShardRun<T: Scalar> {
    shard: Shard,
    tape: Tape<T>,
}

/// The batch split into as many parts as there are cores (at most), each of at least
/// `MIN_SHARD_BATCH` sequences; one part when the batch is small. Sequences keep their
/// order, so a part of a sorted (packed) batch is sorted.
pub(crate) fn shards(steps: &Steps) -> Vec<Shard> {
    let batch = steps.batch();
    let parts = crate::threads::threads()
        .min(batch / MIN_SHARD_BATCH)
        .max(1);
    if parts == 1 {
        return vec![Shard {
            start: 0,
            steps: steps.clone(),
        }];
    }
    (0..parts)
        .map(|p| {
            let (start, end) = (p * batch / parts, (p + 1) * batch / parts);
            let sizes: Vec<usize> = steps
                .batch_sizes()
                .iter()
                .map(|&n| n.min(end).saturating_sub(start))
                .take_while(|&n| n > 0)
                .collect();
            Shard {
                start,
                steps: Steps::from_batch_sizes(sizes).expect("a part of a valid batch is valid"),
            }
        })
        .collect()
}

impl Shard {
    pub(crate) fn batch(&self) -> usize {
        self.steps.batch()
    }

    /// The shard's columns of a per-batch matrix (initial or final states).
    fn batch_columns<'a, T: Scalar>(&self, all: &'a DMatrix<T>) -> &'a [T] {
        let rows = all.nrows();
        &all.as_slice()[self.start * rows..(self.start + self.batch()) * rows]
    }

    /// The same, to be changed.
    fn batch_columns_mut<'a, T: Scalar>(&self, all: &'a mut DMatrix<T>) -> &'a mut [T] {
        let rows = all.nrows();
        &mut all.as_mut_slice()[self.start * rows..(self.start + self.batch()) * rows]
    }

    /// Step `t`'s columns of a per-column matrix of the whole batch: the shard's
    /// sequences are consecutive columns of each step.
    fn step_columns<'a, T: Scalar>(
        &self,
        steps: &Steps,
        all: &'a [T],
        rows: usize,
        t: usize,
    ) -> &'a [T] {
        let (off, _) = steps.step(t);
        let n = self.steps.batch_sizes()[t];
        &all[(off + self.start) * rows..(off + self.start + n) * rows]
    }

    /// Puts the shard's per-column matrix back in the batch's columns.
    fn scatter<T: Scalar>(&self, steps: &Steps, part: &DMatrix<T>, all: &mut DMatrix<T>) {
        let rows = part.nrows();
        let (part, all) = (part.as_slice(), all.as_mut_slice());
        for t in 0..self.steps.len() {
            let (off, _) = steps.step(t);
            let (part_off, n) = self.steps.step(t);
            all[(off + self.start) * rows..(off + self.start + n) * rows]
                .copy_from_slice(&part[part_off * rows..(part_off + n) * rows]);
        }
    }
}

/// A per-column matrix of the whole batch (`rows` values a column) cut into each
/// shard's columns of each step: element `s` holds shard `s`'s, one slice per step of
/// its own. The shards write their outputs there, rather than into matrices of their
/// own copied into the batch's afterwards: for the large LSTM those were 26 MB of
/// fresh memory (two shards' 13 MB) and a 26 MB copy per forward pass.
pub(crate) fn split_by_shard<'a, T>(
    steps: &Steps,
    shards: &[Shard],
    mut all: &'a mut [T],
    rows: usize,
) -> Vec<Vec<&'a mut [T]>> {
    let mut parts: Vec<Vec<&'a mut [T]>> = shards
        .iter()
        .map(|shard| Vec::with_capacity(shard.steps.len()))
        .collect();
    for &n in steps.batch_sizes() {
        let (mut step, rest) = std::mem::take(&mut all).split_at_mut(n * rows);
        all = rest;
        // Shards hold consecutive sequences, and a step's columns are its sequences.
        for (shard, part) in shards.iter().zip(&mut parts) {
            let taken = shard
                .steps
                .batch_sizes()
                .get(part.len())
                .copied()
                .unwrap_or(0);
            if taken > 0 {
                let (columns, later) = std::mem::take(&mut step).split_at_mut(taken * rows);
                part.push(columns);
                step = later;
            }
        }
    }
    parts
}

/// A part of a batch unrolled: its tape and its final states.
type Unrolled<T> = (Tape<T>, Vec<DMatrix<T>>);

/// Runs `cell` over one shard of checked inputs and states (of the whole batch, laid
/// out by `all_steps`) on a fresh tape of the cell's buffers (`specs`, sharing
/// `packs`), writing the output of its step t into `output[t]`: the tape and the
/// shard's final states.
#[allow(clippy::too_many_arguments)]
fn unroll<T: Scalar, C: Cell<T>>(
    cell: &C,
    all_steps: &Steps,
    shard: &Shard,
    inputs: &[&DMatrix<T>],
    initial_states: Option<&[DMatrix<T>]>,
    direction: Direction,
    specs: &[BufferSpec],
    packs: Arc<WeightPacks>,
    mut output: Vec<&mut [T]>,
) -> Unrolled<T> {
    let steps = &shard.steps;
    // Input gradients: a cell that never reads an input never writes its gradient.
    let mut tape = Tape::sharing_packs(
        specs,
        steps.columns(),
        steps.batch(),
        packs,
        C::SPEC.roles.d_inputs,
    );
    shard.start_states(C::SPEC.roles.state, &mut tape, initial_states);
    let every_step = 0..steps.len();
    shard.run_steps(
        cell,
        &mut tape,
        all_steps,
        inputs,
        every_step,
        direction,
        &mut output,
    );
    let final_states = shard.final_states(cell, &tape);
    (tape, final_states)
}

impl Shard {
    /// The shard's initial states, from the batch's, into the tape's `state_buffers`
    /// (which start at zero, the default).
    pub(crate) fn start_states<T: Scalar>(
        &self,
        state_buffers: &[usize],
        tape: &mut Tape<T>,
        initial_states: Option<&[DMatrix<T>]>,
    ) {
        if let Some(states) = initial_states {
            for (&buffer, state) in state_buffers.iter().zip(states) {
                tape.buffer_mut(buffer)
                    .copy_from_slice(self.batch_columns(state));
            }
        }
    }

    /// Steps `range` of the shard, in `direction`'s order, on `tape`, whose per-step
    /// buffers hold those steps' columns from their first: their inputs gathered from
    /// the batch's, the cell's `prepare` over them, then each step, its output written
    /// into `output[t]`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run_steps<T: Scalar, C: Cell<T>>(
        &self,
        cell: &C,
        tape: &mut Tape<T>,
        all_steps: &Steps,
        inputs: &[&DMatrix<T>],
        range: Range<usize>,
        direction: Direction,
        output: &mut [&mut [T]],
    ) {
        let spec = C::SPEC;
        let roles = &spec.roles;
        let steps = &self.steps;
        let first = steps.step(range.start).0;
        for (k, input) in inputs.iter().enumerate() {
            let rows = input.nrows();
            let part = tape.buffer_mut(roles.inputs[k]);
            for t in range.clone() {
                let (off, n) = steps.step(t);
                let at = (off - first) * rows;
                part[at..at + n * rows].copy_from_slice(self.step_columns(
                    all_steps,
                    input.as_slice(),
                    rows,
                    t,
                ));
            }
        }
        cell.prepare(tape);
        let out = spec.output;
        let out_rows = cell.output_size();
        for t in direction.order_of(range) {
            let (off, n) = steps.step(t);
            let off = off - first;
            for k in 0..spec.states.len() {
                tape.copy(
                    (roles.state[k], 0, 0),
                    (roles.prev[k], 0, off),
                    cell.state_size(k),
                    n,
                );
            }
            cell.step_forward(tape, off, n);
            copy_run(output[t], &tape.buffer(roles.state[out])[..out_rows * n]);
        }
    }

    /// The shard's states now, as matrices of its batch.
    pub(crate) fn final_states<T: Scalar, C: Cell<T>>(
        &self,
        cell: &C,
        tape: &Tape<T>,
    ) -> Vec<DMatrix<T>> {
        let batch = self.batch();
        (0..C::SPEC.states.len())
            .map(|k| {
                DMatrix::from_column_slice(
                    cell.state_size(k),
                    batch,
                    tape.buffer(C::SPEC.roles.state[k]),
                )
            })
            .collect()
    }
}

/// Backpropagation through one shard's tape, from checked gradients of the whole
/// batch (laid out by `all_steps`): the parameters' gradients added into `grads`, and
/// the shard's gradients of the inputs (in the shard's layout) and initial states.
#[allow(clippy::too_many_arguments)]
fn unroll_backward<T: Scalar, C: Cell<T>>(
    cell: &C,
    run: &mut ShardRun<T>,
    all_steps: &Steps,
    direction: Direction,
    d_output: Option<&DMatrix<T>>,
    d_final_states: &[Option<&DMatrix<T>>],
    input_grads: InputGrads,
    grads: &mut C::Grads,
) -> SequenceGrads<T, ()> {
    let spec = C::SPEC;
    let roles = &spec.roles;
    let (shard, tape) = (&run.shard, &mut run.tape);
    let steps = &shard.steps;
    let batch = steps.batch();
    for k in 0..spec.states.len() {
        let buf = tape.buffer_mut(roles.d_state[k]);
        match d_final_states.get(k).copied().flatten() {
            Some(d) => buf.copy_from_slice(shard.batch_columns(d)),
            None => buf.fill(T::zero()),
        }
    }
    let out = spec.output;
    let out_rows = cell.output_size();
    let order: Vec<usize> = direction.order(steps.len()).collect();
    for &t in order.iter().rev() {
        let (off, n) = steps.step(t);
        if let Some(d) = d_output {
            let from = shard.step_columns(all_steps, d.as_slice(), out_rows, t);
            for (acc, g) in tape.buffer_mut(roles.d_state[out]).iter_mut().zip(from) {
                *acc += *g;
            }
        }
        cell.step_backward(tape, off, n, grads);
        for k in 0..spec.states.len() {
            // The step wrote the gradient before it for its n columns (the generated
            // code stores it whole, or zeroes it): where that is the whole batch, the
            // buffers trade places instead of copying. Where it is not, the other
            // columns keep the gradient of sequences not in this step.
            if n == batch {
                tape.move_buffer(roles.d_prev[k], roles.d_state[k]);
            } else {
                tape.copy(
                    (roles.d_prev[k], 0, 0),
                    (roles.d_state[k], 0, 0),
                    cell.state_size(k),
                    n,
                );
            }
        }
    }
    let wanted = input_grads == InputGrads::Compute;
    tape.set_input_grads(wanted);
    cell.finish_backward(tape, grads);
    tape.release_gradient_operands();
    let columns = steps.columns();
    let inputs = (0..spec.inputs.len())
        .filter(|_| wanted)
        .map(|k| {
            DMatrix::from_column_slice(cell.input_size(k), columns, tape.buffer(roles.d_inputs[k]))
        })
        .collect();
    let initial_states = (0..spec.states.len())
        .map(|k| {
            DMatrix::from_column_slice(cell.state_size(k), batch, tape.buffer(roles.d_state[k]))
        })
        .collect();
    SequenceGrads {
        params: (),
        inputs,
        initial_states,
    }
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
        self.backward_with(cell, d_output, d_final_states, InputGrads::Compute)
    }

    /// [`backward`](Self::backward), computing the inputs' gradients only if
    /// `input_grads` asks for them; every other gradient is the same to the bit.
    pub fn backward_with<C: Cell<T>>(
        &mut self,
        cell: &C,
        d_output: Option<&DMatrix<T>>,
        d_final_states: &[Option<&DMatrix<T>>],
        input_grads: InputGrads,
    ) -> Result<SequenceGrads<T, C::Grads>> {
        let (rest, own) = self.backward_parts(cell, d_output, d_final_states, input_grads, None)?;
        // Each part made its own gradients: the first part's gain the others'.
        let mut own = own.into_iter().flatten();
        let mut params = own.next().expect("the first part's gradients");
        for other in own {
            add_grads(&mut params, &other);
        }
        Ok(SequenceGrads {
            params,
            inputs: rest.inputs,
            initial_states: rest.initial_states,
        })
    }

    /// [`backward_with`](Self::backward_with), adding the parameters' gradients into
    /// `grads` (as PyTorch adds into each parameter's `.grad`) instead of returning
    /// fresh ones: the inputs' and initial states' gradients are returned, with
    /// `params` empty. Gradients kept from one pass to the next cost no allocation: a
    /// pass of one step over 512 hidden units spent two thirds of its time faulting in
    /// fresh gradients wherever the allocator had returned the last pass's to the system
    /// (`benches/README.md`, session 23). `grads` must be the cell's (as
    /// [`Cell::zero_grads`] makes them); zero them between passes for one pass's
    /// gradients alone. Added into zeros, the gradients are `backward_with`'s, to the
    /// bit.
    ///
    /// ```
    /// use rnn_runtime::prelude::*;
    ///
    /// let mut rng = Rng::seed(2);
    /// let cell = LstmCell::<f32>::with_dims(&[3, 4], &Init::pytorch_default(4), &mut rng)?;
    /// let steps = Steps::full(5, 1)?;
    /// let x = DMatrix::from_element(3, steps.columns(), 0.5);
    /// let d_output = DMatrix::from_element(4, steps.columns(), 1.0);
    /// let mut grads = cell.zero_grads(); // kept from pass to pass
    /// for _ in 0..3 {
    ///     grads.fill_zero();
    ///     let mut run = forward(&cell, &steps, &[&x], None, Direction::Forward)?;
    ///     run.backward_into(&cell, Some(&d_output), &[], InputGrads::Skip, &mut grads)?;
    /// }
    /// let fresh = forward(&cell, &steps, &[&x], None, Direction::Forward)?
    ///     .backward_with(&cell, Some(&d_output), &[], InputGrads::Skip)?;
    /// assert_eq!(grads.W_hi, fresh.params.W_hi);
    /// # Ok::<(), rnn_runtime::Error>(())
    /// ```
    pub fn backward_into<C: Cell<T>>(
        &mut self,
        cell: &C,
        d_output: Option<&DMatrix<T>>,
        d_final_states: &[Option<&DMatrix<T>>],
        input_grads: InputGrads,
        grads: &mut C::Grads,
    ) -> Result<SequenceGrads<T, ()>> {
        check_grads(cell, grads)?;
        let (rest, own) = self.backward_parts(
            cell,
            d_output,
            d_final_states,
            input_grads,
            Some(&mut *grads),
        )?;
        for other in own.iter().flatten() {
            add_grads(grads, other);
        }
        Ok(rest)
    }

    /// The checks and the parts' backward passes of `backward_with` and
    /// `backward_into`: the inputs' and initial states' gradients of the whole batch,
    /// and per part the parameters' gradients it made, if it made its own. The first
    /// part adds into `into` where given; every other part, and the first without
    /// `into`, into gradients it makes on its own thread. (Made on the calling thread,
    /// side by side in its allocator's arena, the small and medium MGU's passes took
    /// 1.16-1.2 times as long: likely the two parts' bias gradients, which both
    /// threads add into at every step, sharing cache lines.)
    fn backward_parts<C: Cell<T>>(
        &mut self,
        cell: &C,
        d_output: Option<&DMatrix<T>>,
        d_final_states: &[Option<&DMatrix<T>>],
        input_grads: InputGrads,
        mut into: Option<&mut C::Grads>,
    ) -> Result<MergedParts<T, C::Grads>> {
        let spec = C::SPEC;
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
            // From the cell and the steps: the layers move `output` out of the runs
            // they keep.
            let expected = (cell.output_size(), self.steps.columns());
            ensure!(
                d.shape() == expected,
                "the output gradient must be {expected:?} like the output but is {:?}",
                d.shape()
            );
        }
        for (k, d) in d_final_states.iter().enumerate() {
            if let Some(d) = d {
                let expected = (cell.state_size(k), batch);
                ensure!(
                    d.shape() == expected,
                    "the gradient of final state `{}` must be {:?} but is {:?}",
                    spec.states[k].name,
                    expected,
                    d.shape()
                );
            }
        }
        // Each shard's backward pass on its own thread, reading its columns of the
        // gradients straight from the batch's.
        let (direction, steps) = (self.direction, &self.steps);
        let runs: Vec<(&mut ShardRun<T>, Option<&mut C::Grads>)> = self
            .shards
            .iter_mut()
            .enumerate()
            .map(|(k, run)| (run, if k == 0 { into.take() } else { None }))
            .collect();
        let (mut parts, own): (Vec<_>, Vec<_>) = each_in_parallel(runs, |(run, into)| {
            let mut own = None;
            let grads = match into {
                Some(grads) => grads,
                None => own.insert(cell.zero_grads()),
            };
            let part = unroll_backward(
                cell,
                run,
                steps,
                direction,
                d_output,
                d_final_states,
                input_grads,
                grads,
            );
            (part, own)
        })
        .into_iter()
        .unzip();
        if parts.len() == 1 {
            return Ok((parts.pop().expect("one part"), own));
        }
        // The parts' gradients of the inputs and initial states put together in the
        // batch's columns.
        let wanted = input_grads == InputGrads::Compute;
        let mut inputs: Vec<DMatrix<T>> = (0..spec.inputs.len())
            .filter(|_| wanted)
            .map(|k| DMatrix::zeros(cell.input_size(k), steps.columns()))
            .collect();
        let mut initial_states: Vec<DMatrix<T>> = (0..spec.states.len())
            .map(|k| DMatrix::zeros(cell.state_size(k), batch))
            .collect();
        for (run, part) in self.shards.iter().zip(parts) {
            for (all, p) in inputs.iter_mut().zip(&part.inputs) {
                run.shard.scatter(steps, p, all);
            }
            for (all, p) in initial_states.iter_mut().zip(&part.initial_states) {
                run.shard
                    .batch_columns_mut(all)
                    .copy_from_slice(p.as_slice());
            }
        }
        Ok((
            SequenceGrads {
                params: (),
                inputs,
                initial_states,
            },
            own,
        ))
    }
}

/// `other`'s gradients added into `total`'s, one parameter per task, on the threads
/// the passes used.
fn add_grads<T: Scalar, G: Parameters<T>>(total: &mut G, other: &G) {
    let pairs: Vec<_> = total
        .parameters_mut()
        .into_iter()
        .zip(other.parameters())
        .collect();
    each_in_parallel(pairs, |(total, p)| {
        for (t, v) in total.values.iter_mut().zip(p.values) {
            *t += *v;
        }
    });
}

/// Checks that `grads` are `cell`'s gradients: its parameters' names and shapes.
fn check_grads<T: Scalar, C: Cell<T>>(cell: &C, grads: &C::Grads) -> Result<()> {
    let (params, grads) = (cell.parameters(), grads.parameters());
    ensure!(
        params.len() == grads.len(),
        "`{}` has {} parameters but the gradients given have {}",
        C::SPEC.name,
        params.len(),
        grads.len()
    );
    for (param, grad) in params.iter().zip(&grads) {
        ensure!(
            param.name == grad.name && param.shape == grad.shape,
            "the gradient of `{}` ({:?}) must be shaped as the parameter, {:?}: the gradients given are not this cell's (`{}` with sizes {:?})",
            grad.name,
            grad.shape,
            param.shape,
            C::SPEC.name,
            cell.dims()
        );
    }
    Ok(())
}
