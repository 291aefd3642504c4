//! Layers of any cell: stacked, bidirectional, with dropout between layers, over padded
//! (time-major or `batch_first`) or packed batches, with initial and final states laid
//! out as PyTorch lays out `h_0` and `h_n`.
//!
//! States of all layers and directions sit side by side: for state k, a matrix
//! (state size, L·D·B) whose column `(l·D + d)·B + b` is layer l, direction d, sequence
//! b; PyTorch's (L·D, B, H) read in our layout.

use std::borrow::Cow;

use nalgebra::DMatrix;

use crate::inference::{infer, Inference};
use crate::pack::{transpose_batch, PackedSequence};
use crate::params::{prefixed, prefixed_mut};
use crate::sequence::{forward, Direction, InputGrads, SequenceGrads, Steps, Trajectory};
use crate::threads::each_in_parallel;
use crate::{ensure, Cell, Init, ParamMut, ParamRef, Parameters, Result, Rng, Scalar};

/// How cells are arranged into layers.
#[derive(Clone, Debug, PartialEq)]
pub struct RecurrentConfig {
    /// Stacked layers; layer l + 1 reads layer l's output.
    pub num_layers: usize,
    /// A second cell per layer reads each sequence backwards; the outputs are
    /// concatenated, forward first.
    pub bidirectional: bool,
    /// The probability of zeroing each output of a layer but the last, in training.
    pub dropout: f64,
    /// Padded inputs and outputs are (B, T, F) rather than (T, B, F).
    pub batch_first: bool,
}

impl Default for RecurrentConfig {
    /// PyTorch's defaults: one layer, one direction, no dropout, time-major.
    fn default() -> Self {
        RecurrentConfig {
            num_layers: 1,
            bidirectional: false,
            dropout: 0.0,
            batch_first: false,
        }
    }
}

/// Whether dropout is active, and whether the run keeps what backward reads.
pub enum Mode<'a> {
    /// Evaluation: no dropout; the run can be differentiated (training without
    /// dropout, or gradients of an evaluation).
    Eval,
    /// Training: dropout between layers, drawn from the generator.
    Train(&'a mut Rng),
    /// Inference, as under PyTorch's `torch.no_grad()`: no dropout, and nothing kept
    /// for backward ([`infer`]), so the run takes less time and memory;
    /// its `backward` is an error.
    Infer,
}

/// Cells in layers and directions: `layers[l][d]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Recurrent<C> {
    layers: Vec<Vec<C>>,
    config: RecurrentConfig,
}

/// Where a run's columns come from, to give results back in the same layout.
#[derive(Clone, Debug)]
enum Layout {
    Padded { batch: usize, batch_first: bool },
    Packed,
}

/// A forward pass through all layers: differentiable, unless it ran with [`Mode::Infer`].
pub struct RecurrentRun<T: Scalar> {
    /// In the input's layout: padded like it, or the packed data.
    pub output: DMatrix<T>,
    /// Per state of the cell, (state size, L·D·B), in the batch's original order.
    pub final_states: Vec<DMatrix<T>>,
    /// `output`'s shape, which its gradient must have (whoever moves `output` out).
    output_shape: (usize, usize),
    layout: Layout,
    steps: Steps,
    order: Vec<usize>,
    runs: Vec<Vec<Trajectory<T>>>,
    /// The dropout mask applied to each layer's output, scaled by 1 / (1 - p).
    masks: Vec<Option<DMatrix<T>>>,
}

/// Gradients of a loss with respect to everything a [`RecurrentRun`] read.
#[derive(Clone, Debug)]
pub struct RecurrentGrads<T: Scalar, G> {
    /// `layers[l][d]`: the gradients of that cell's parameters.
    pub layers: Vec<Vec<G>>,
    /// In the input's layout; with no rows when the pass skipped it
    /// ([`InputGrads::Skip`]).
    pub input: DMatrix<T>,
    /// Per state, (state size, L·D·B), like the initial states.
    pub initial_states: Vec<DMatrix<T>>,
}

impl<C> Recurrent<C> {
    /// Layers of new cells: `dims` are layer 0's sizes (in the order of the cell's
    /// size symbols); later layers read `D ×` the output size.
    pub fn new<T: Scalar>(
        dims: &[usize],
        config: RecurrentConfig,
        init: &Init,
        rng: &mut Rng,
    ) -> Result<Self>
    where
        C: Cell<T>,
    {
        ensure!(config.num_layers > 0, "`num_layers` must be at least 1");
        let directions = if config.bidirectional { 2 } else { 1 };
        let mut layers = Vec::with_capacity(config.num_layers);
        let mut dims = dims.to_vec();
        for _ in 0..config.num_layers {
            let layer = (0..directions)
                .map(|_| C::with_dims(&dims, init, rng))
                .collect::<Result<Vec<C>>>()?;
            let input_symbol = C::SPEC.inputs.first().map_or(0, |input| input.size);
            dims[input_symbol] = directions * layer[0].output_size();
            layers.push(layer);
        }
        Recurrent::from_layers(layers, config)
    }

    /// Layers of given cells, checked to fit: one input per cell, each layer reading
    /// what the one below outputs.
    pub fn from_layers<T: Scalar>(layers: Vec<Vec<C>>, config: RecurrentConfig) -> Result<Self>
    where
        C: Cell<T>,
    {
        let spec = C::SPEC;
        ensure!(
            spec.inputs.len() == 1,
            "layers need cells with one input, but `{}` has {}",
            spec.name,
            spec.inputs.len()
        );
        let directions = if config.bidirectional { 2 } else { 1 };
        ensure!(
            layers.len() == config.num_layers,
            "{} layers of cells given for `num_layers` = {}",
            layers.len(),
            config.num_layers
        );
        ensure!(
            (0.0..1.0).contains(&config.dropout),
            "`dropout` must be in [0, 1), but is {}",
            config.dropout
        );
        for (l, layer) in layers.iter().enumerate() {
            ensure!(
                layer.len() == directions,
                "layer {l} has {} cells but {directions} directions",
                layer.len()
            );
            for (d, cell) in layer.iter().enumerate() {
                ensure!(
                    cell.dims() == layer[0].dims(),
                    "layer {l}: the cells of both directions must have the same sizes"
                );
                if l > 0 {
                    let expected = directions * layers[l - 1][0].output_size();
                    ensure!(
                        cell.input_size(0) == expected,
                        "layer {l} direction {d} reads inputs of size {} but layer {} outputs {expected}",
                        cell.input_size(0),
                        l - 1
                    );
                }
            }
        }
        Ok(Recurrent { layers, config })
    }

    /// The arrangement of the layers.
    pub fn config(&self) -> &RecurrentConfig {
        &self.config
    }

    /// `layers()[l][d]`.
    pub fn layers(&self) -> &[Vec<C>] {
        &self.layers
    }

    /// The cells, to change them (their sizes must stay).
    pub fn layers_mut(&mut self) -> &mut [Vec<C>] {
        &mut self.layers
    }

    /// 1, or 2 when bidirectional.
    pub fn directions(&self) -> usize {
        self.layers[0].len()
    }

    /// Zero gradients of every cell, `[l][d]`: for [`RecurrentRun::backward_into`] to
    /// add into, kept from pass to pass, and for an optimizer to read (they are named
    /// as the layers' parameters).
    pub fn zero_grads<T: Scalar>(&self) -> LayerGrads<C::Grads>
    where
        C: Cell<T>,
    {
        LayerGrads(
            self.layers
                .iter()
                .map(|layer| layer.iter().map(Cell::zero_grads).collect())
                .collect(),
        )
    }

    /// `l0`, `l0_reverse`, ... as PyTorch suffixes its parameter names.
    pub fn part_name(layer: usize, direction: usize) -> String {
        if direction == 0 {
            format!("l{layer}")
        } else {
            format!("l{layer}_reverse")
        }
    }

    /// Runs a padded batch of `batch` sequences of equal length (layout per
    /// `batch_first`); `initial_states` default to zeros.
    pub fn forward<T: Scalar>(
        &self,
        input: &DMatrix<T>,
        batch: usize,
        initial_states: Option<&[DMatrix<T>]>,
        mode: Mode<'_>,
    ) -> Result<RecurrentRun<T>>
    where
        C: Cell<T>,
    {
        ensure!(
            batch > 0,
            "empty batch: a batch needs at least one sequence"
        );
        ensure!(
            input.ncols().is_multiple_of(batch) && input.ncols() > 0,
            "a padded batch of {batch} sequences needs a positive multiple of {batch} columns, but the input has {}",
            input.ncols()
        );
        let batch_first = self.config.batch_first;
        // The first layer reads the caller's input where it is already time-major.
        let data = if batch_first {
            Cow::Owned(transpose_batch(input, batch, true)?)
        } else {
            Cow::Borrowed(input)
        };
        let steps = Steps::full(input.ncols() / batch, batch)?;
        self.run(
            data,
            steps,
            (0..batch).collect(),
            Layout::Padded { batch, batch_first },
            initial_states,
            mode,
        )
    }

    /// Runs a packed batch: each sequence stops at its own length, its final state is the
    /// state at its own last step, and the reverse direction reads it from there.
    pub fn forward_packed<T: Scalar>(
        &self,
        input: &PackedSequence<T>,
        initial_states: Option<&[DMatrix<T>]>,
        mode: Mode<'_>,
    ) -> Result<RecurrentRun<T>>
    where
        C: Cell<T>,
    {
        let steps = input.steps()?;
        ensure!(
            input.data.ncols() == steps.columns(),
            "packed `data` has {} columns but `batch_sizes` sum to {}",
            input.data.ncols(),
            steps.columns()
        );
        let order = input.order();
        ensure!(
            order.len() == steps.batch(),
            "{} sorted indices for a batch of {}",
            order.len(),
            steps.batch()
        );
        self.run(
            Cow::Borrowed(&input.data),
            steps,
            order,
            Layout::Packed,
            initial_states,
            mode,
        )
    }

    fn run<T: Scalar>(
        &self,
        data: Cow<'_, DMatrix<T>>,
        steps: Steps,
        order: Vec<usize>,
        layout: Layout,
        initial_states: Option<&[DMatrix<T>]>,
        mut mode: Mode<'_>,
    ) -> Result<RecurrentRun<T>>
    where
        C: Cell<T>,
    {
        let spec = C::SPEC;
        let first = &self.layers[0][0];
        ensure!(
            data.nrows() == first.input_size(0),
            "`{}` layers read inputs of size {} but the input has {} features",
            spec.name,
            first.input_size(0),
            data.nrows()
        );
        let (batch, directions, n_layers) = (steps.batch(), self.directions(), self.layers.len());
        if let Some(states) = initial_states {
            self.check_states(states, batch, "initial state")?;
        }
        let inferring = matches!(mode, Mode::Infer);
        let mut x = data;
        let mut runs = Vec::with_capacity(n_layers);
        let mut masks = Vec::with_capacity(n_layers);
        let mut final_states: Vec<DMatrix<T>> = (0..spec.states.len())
            .map(|k| DMatrix::zeros(first.state_size(k), n_layers * directions * batch))
            .collect();
        for (l, layer) in self.layers.iter().enumerate() {
            // The directions are independent: each runs on a thread of its own.
            let mut layer_runs =
                each_in_parallel(layer.iter().enumerate().collect(), |(d, cell)| {
                    let part = l * directions + d;
                    let init: Option<Vec<DMatrix<T>>> = initial_states.map(|states| {
                        states
                            .iter()
                            .map(|s| gather(s, part, batch, &order))
                            .collect()
                    });
                    let direction = if d == 0 {
                        Direction::Forward
                    } else {
                        Direction::Reverse
                    };
                    if inferring {
                        infer(cell, &steps, &[&x], init.as_deref(), direction)
                            .map(DirectionRun::Inferred)
                    } else {
                        forward(cell, &steps, &[&x], init.as_deref(), direction)
                            .map(DirectionRun::Taped)
                    }
                })
                .into_iter()
                .collect::<Result<Vec<_>>>()?;
            for (d, run) in layer_runs.iter().enumerate() {
                for (k, state) in run.final_states().iter().enumerate() {
                    scatter(
                        &mut final_states[k],
                        state,
                        l * directions + d,
                        batch,
                        &order,
                    );
                }
            }
            let mut out = stack_rows(
                layer_runs
                    .iter_mut()
                    .map(DirectionRun::take_output)
                    .collect(),
            );
            let dropout = self.config.dropout;
            let mask = match &mut mode {
                Mode::Train(rng) if dropout > 0.0 && l + 1 < n_layers => {
                    let keep = T::of(1.0 / (1.0 - dropout));
                    let mask = DMatrix::from_fn(out.nrows(), out.ncols(), |_, _| {
                        if rng.uniform() < dropout {
                            T::zero()
                        } else {
                            keep
                        }
                    });
                    out.component_mul_assign(&mask);
                    Some(mask)
                }
                _ => None,
            };
            masks.push(mask);
            if !inferring {
                runs.push(
                    layer_runs
                        .into_iter()
                        .filter_map(DirectionRun::taped)
                        .collect(),
                );
            }
            x = Cow::Owned(out);
        }
        let output = match layout {
            Layout::Padded {
                batch,
                batch_first: true,
            } => transpose_batch(&x, batch, false)?,
            _ => x.into_owned(),
        };
        Ok(RecurrentRun {
            output_shape: output.shape(),
            output,
            final_states,
            layout,
            steps,
            order,
            runs,
            masks,
        })
    }

    fn check_states<T: Scalar>(&self, states: &[DMatrix<T>], batch: usize, what: &str) -> Result<()>
    where
        C: Cell<T>,
    {
        let spec = C::SPEC;
        ensure!(
            states.len() == spec.states.len(),
            "`{}` has {} states but {} {what}s were given",
            spec.name,
            spec.states.len(),
            states.len()
        );
        let parts = self.layers.len() * self.directions();
        for (k, state) in states.iter().enumerate() {
            let expected = (self.layers[0][0].state_size(k), parts * batch);
            ensure!(
                state.shape() == expected,
                "{what} `{}` must be {:?} (state size, layers × directions × batch = {} × {batch}) but is {:?}",
                spec.states[k].name,
                expected,
                parts,
                state.shape()
            );
        }
        Ok(())
    }
}

/// One direction of one layer, run for backward or for inference.
enum DirectionRun<T: Scalar> {
    Taped(Trajectory<T>),
    Inferred(Inference<T>),
}

impl<T: Scalar> DirectionRun<T> {
    /// The output, moved out (backward does not read it): a layer's output is
    /// megabytes, which a copy would allocate and fault in afresh on every pass.
    fn take_output(&mut self) -> DMatrix<T> {
        let output = match self {
            DirectionRun::Taped(run) => &mut run.output,
            DirectionRun::Inferred(run) => &mut run.output,
        };
        std::mem::replace(output, DMatrix::zeros(0, 0))
    }

    fn final_states(&self) -> &[DMatrix<T>] {
        match self {
            DirectionRun::Taped(run) => &run.final_states,
            DirectionRun::Inferred(run) => &run.final_states,
        }
    }

    fn taped(self) -> Option<Trajectory<T>> {
        match self {
            DirectionRun::Taped(run) => Some(run),
            DirectionRun::Inferred(_) => None,
        }
    }
}

/// The (size, B) block of layer-direction `part`, columns in sorted order.
fn gather<T: Scalar>(
    states: &DMatrix<T>,
    part: usize,
    batch: usize,
    order: &[usize],
) -> DMatrix<T> {
    DMatrix::from_fn(states.nrows(), batch, |i, b| {
        states[(i, part * batch + order[b])]
    })
}

/// Writes a (size, B) block in sorted order back to its place in original order.
fn scatter<T: Scalar>(
    states: &mut DMatrix<T>,
    block: &DMatrix<T>,
    part: usize,
    batch: usize,
    order: &[usize],
) {
    for (b, &original) in order.iter().enumerate() {
        states.set_column(part * batch + original, &block.column(b));
    }
}

/// The directions' outputs one above the other (the one direction's, as it is).
fn stack_rows<T: Scalar>(mut blocks: Vec<DMatrix<T>>) -> DMatrix<T> {
    if blocks.len() == 1 {
        return blocks.pop().expect("one block");
    }
    let rows = blocks.iter().map(|b| b.nrows()).sum();
    let mut out = DMatrix::zeros(rows, blocks[0].ncols());
    let mut row = 0;
    for block in blocks {
        out.rows_mut(row, block.nrows()).copy_from(&block);
        row += block.nrows();
    }
    out
}

impl<T: Scalar> RecurrentRun<T> {
    /// Backpropagation through all layers for the loss whose gradients with respect to
    /// the output (in the output's layout) and the final states are given. `model` must
    /// be the one that ran forward.
    pub fn backward<C: Cell<T>>(
        &mut self,
        model: &Recurrent<C>,
        d_output: Option<&DMatrix<T>>,
        d_final_states: &[Option<&DMatrix<T>>],
    ) -> Result<RecurrentGrads<T, C::Grads>> {
        self.backward_with(model, d_output, d_final_states, InputGrads::Compute)
    }

    /// [`backward`](Self::backward), computing the gradient of the input only if
    /// `input_grads` asks for it (the layers above the first always pass theirs down).
    pub fn backward_with<C: Cell<T>>(
        &mut self,
        model: &Recurrent<C>,
        d_output: Option<&DMatrix<T>>,
        d_final_states: &[Option<&DMatrix<T>>],
        input_grads: InputGrads,
    ) -> Result<RecurrentGrads<T, C::Grads>> {
        self.backward_layers(model, d_output, d_final_states, input_grads, None)
    }

    /// [`backward_with`](Self::backward_with), adding each cell's parameter gradients
    /// into `grads[l][d]` (as [`Recurrent::zero_grads`] makes them, kept from pass to
    /// pass: see [`Trajectory::backward_into`]) instead of returning fresh ones; the
    /// returned gradients hold the input's and the initial states', with `layers`
    /// empty.
    pub fn backward_into<C: Cell<T>>(
        &mut self,
        model: &Recurrent<C>,
        d_output: Option<&DMatrix<T>>,
        d_final_states: &[Option<&DMatrix<T>>],
        input_grads: InputGrads,
        grads: &mut [Vec<C::Grads>],
    ) -> Result<RecurrentGrads<T, ()>> {
        let directions = model.directions();
        ensure!(
            grads.len() == model.layers.len() && grads.iter().all(|g| g.len() == directions),
            "the gradients given are for {} layers × {:?} directions, but the model has {} × {directions}",
            grads.len(),
            grads.iter().map(Vec::len).collect::<Vec<_>>(),
            model.layers.len()
        );
        let all =
            self.backward_layers(model, d_output, d_final_states, input_grads, Some(grads))?;
        Ok(RecurrentGrads {
            layers: Vec::new(),
            input: all.input,
            initial_states: all.initial_states,
        })
    }

    /// `backward_with`, each cell's parameter gradients added into `into[l][d]` where
    /// given (and none returned), returned fresh where not.
    fn backward_layers<C: Cell<T>>(
        &mut self,
        model: &Recurrent<C>,
        d_output: Option<&DMatrix<T>>,
        d_final_states: &[Option<&DMatrix<T>>],
        input_grads: InputGrads,
        mut into: Option<&mut [Vec<C::Grads>]>,
    ) -> Result<RecurrentGrads<T, C::Grads>> {
        let spec = C::SPEC;
        let (batch, directions) = (self.steps.batch(), model.directions());
        ensure!(
            !self.runs.is_empty(),
            "this run kept nothing for backward: it ran with `Mode::Infer`; run it with `Mode::Eval` or `Mode::Train` to take gradients"
        );
        ensure!(
            self.runs.len() == model.layers.len() && self.runs[0].len() == directions,
            "backward needs the layers that ran forward: {} layers × {} directions, but was given {} × {directions}",
            self.runs.len(),
            self.runs[0].len(),
            model.layers.len()
        );
        ensure!(
            d_final_states.is_empty() || d_final_states.len() == spec.states.len(),
            "`{}` has {} states but {} final-state gradients were given",
            spec.name,
            spec.states.len(),
            d_final_states.len()
        );
        for (k, d) in d_final_states.iter().enumerate() {
            if let Some(d) = d {
                ensure!(
                    d.shape() == self.final_states[k].shape(),
                    "the gradient of final state `{}` must be {:?} but is {:?}",
                    spec.states[k].name,
                    self.final_states[k].shape(),
                    d.shape()
                );
            }
        }
        // The caller's gradient is read where it lies, unless it must be transposed or
        // masked.
        let mut d_x: Option<Cow<'_, DMatrix<T>>> = match d_output {
            Some(d) => {
                ensure!(
                    d.shape() == self.output_shape,
                    "the output gradient must be {:?} like the output but is {:?}",
                    self.output_shape,
                    d.shape()
                );
                Some(match self.layout {
                    Layout::Padded {
                        batch,
                        batch_first: true,
                    } => Cow::Owned(transpose_batch(d, batch, true)?),
                    _ => Cow::Borrowed(d),
                })
            }
            None => None,
        };
        let first = &model.layers[0][0];
        let mut initial_states: Vec<DMatrix<T>> = self
            .final_states
            .iter()
            .map(|s| DMatrix::zeros(s.nrows(), s.ncols()))
            .collect();
        let mut layer_grads: Vec<Vec<C::Grads>> = Vec::with_capacity(model.layers.len());
        for l in (0..model.layers.len()).rev() {
            if let (Some(d), Some(mask)) = (d_x.as_mut(), &self.masks[l]) {
                d.to_mut().component_mul_assign(mask);
            }
            // Each direction's share of the gradients, then their backward passes, each
            // on a thread of its own.
            let layer_into: Vec<Option<&mut C::Grads>> = match into.as_deref_mut() {
                Some(grads) => grads[l].iter_mut().map(Some).collect(),
                None => (0..directions).map(|_| None).collect(),
            };
            let mut row = 0;
            let mut work = Vec::with_capacity(directions);
            for ((d, run), into) in self.runs[l].iter_mut().enumerate().zip(layer_into) {
                let cell = &model.layers[l][d];
                let part = l * directions + d;
                let rows = cell.output_size();
                let d_out = d_x.as_deref().map(|dx| {
                    if directions == 1 {
                        Cow::Borrowed(dx)
                    } else {
                        Cow::Owned(dx.rows(row, rows).into_owned())
                    }
                });
                row += rows;
                let d_final: Vec<Option<DMatrix<T>>> = (0..spec.states.len())
                    .map(|k| {
                        d_final_states
                            .get(k)
                            .copied()
                            .flatten()
                            .map(|s| gather(s, part, batch, &self.order))
                    })
                    .collect();
                work.push((run, cell, d_out, d_final, into));
            }
            let wanted = if l == 0 {
                input_grads
            } else {
                InputGrads::Compute
            };
            let results: Vec<Result<SequenceGrads<T, Option<C::Grads>>>> =
                each_in_parallel(work, |(run, cell, d_out, d_final, into)| {
                    let d_final_refs: Vec<Option<&DMatrix<T>>> =
                        d_final.iter().map(Option::as_ref).collect();
                    // The parameters' gradients added into the caller's, or fresh.
                    let grads = match into {
                        Some(grads) => {
                            let rest = run.backward_into(
                                cell,
                                d_out.as_deref(),
                                &d_final_refs,
                                wanted,
                                grads,
                            )?;
                            SequenceGrads {
                                params: None,
                                inputs: rest.inputs,
                                initial_states: rest.initial_states,
                            }
                        }
                        None => {
                            let all =
                                run.backward_with(cell, d_out.as_deref(), &d_final_refs, wanted)?;
                            SequenceGrads {
                                params: Some(all.params),
                                inputs: all.inputs,
                                initial_states: all.initial_states,
                            }
                        }
                    };
                    Ok(grads)
                });
            let mut grads_l = Vec::with_capacity(directions);
            let mut d_input: Option<DMatrix<T>> = None;
            for (d, grads) in results.into_iter().enumerate() {
                let grads = grads?;
                let part = l * directions + d;
                for (k, state) in grads.initial_states.iter().enumerate() {
                    scatter(&mut initial_states[k], state, part, batch, &self.order);
                }
                if let Some(input) = grads.inputs.into_iter().next() {
                    match &mut d_input {
                        None => d_input = Some(input),
                        Some(acc) => *acc += input,
                    }
                }
                grads_l.extend(grads.params);
            }
            layer_grads.push(grads_l);
            d_x = d_input.map(Cow::Owned);
        }
        layer_grads.reverse();
        let rows = match input_grads {
            InputGrads::Compute => first.input_size(0),
            InputGrads::Skip => 0,
        };
        let d_x = d_x.map_or_else(
            || DMatrix::zeros(rows, self.steps.columns()),
            Cow::into_owned,
        );
        let input = match self.layout {
            Layout::Padded {
                batch,
                batch_first: true,
            } => transpose_batch(&d_x, batch, false)?,
            _ => d_x,
        };
        Ok(RecurrentGrads {
            layers: layer_grads,
            input,
            initial_states,
        })
    }
}

impl<T: Scalar, C: Cell<T>> Parameters<T> for Recurrent<C> {
    fn parameters(&self) -> Vec<ParamRef<'_, T>> {
        layer_parameters(&self.layers)
    }

    fn parameters_mut(&mut self) -> Vec<ParamMut<'_, T>> {
        layer_parameters_mut(&mut self.layers)
    }
}

impl<T: Scalar, G: Parameters<T>> Parameters<T> for RecurrentGrads<T, G> {
    fn parameters(&self) -> Vec<ParamRef<'_, T>> {
        layer_parameters(&self.layers)
    }

    fn parameters_mut(&mut self) -> Vec<ParamMut<'_, T>> {
        layer_parameters_mut(&mut self.layers)
    }
}

/// The gradients of every cell's parameters, `[l][d]`, kept from pass to pass: what
/// [`Recurrent::zero_grads`] makes and [`RecurrentRun::backward_into`] adds into. They
/// are named as the layers name their parameters (`l0.W_ii`, `l0_reverse.W_ii`), so an
/// optimizer or `clip_grad_norm` takes them as it takes [`RecurrentGrads`]; as a list
/// of lists they would be named `0.0.W_ii`, which no parameter is.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerGrads<G>(pub Vec<Vec<G>>);

impl<G> std::ops::Deref for LayerGrads<G> {
    type Target = Vec<Vec<G>>;

    fn deref(&self) -> &Vec<Vec<G>> {
        &self.0
    }
}

impl<G> std::ops::DerefMut for LayerGrads<G> {
    fn deref_mut(&mut self) -> &mut Vec<Vec<G>> {
        &mut self.0
    }
}

impl<T, G: Parameters<T>> Parameters<T> for LayerGrads<G> {
    fn parameters(&self) -> Vec<ParamRef<'_, T>> {
        layer_parameters(&self.0)
    }

    fn parameters_mut(&mut self) -> Vec<ParamMut<'_, T>> {
        layer_parameters_mut(&mut self.0)
    }
}

/// Every part's parameters, `[l][d]`, prefixed as PyTorch suffixes them (`l0`,
/// `l0_reverse`, ...): the cells', and their gradients' alike.
fn layer_parameters<T, P: Parameters<T>>(parts: &[Vec<P>]) -> Vec<ParamRef<'_, T>> {
    let mut all = Vec::new();
    for (l, layer) in parts.iter().enumerate() {
        for (d, part) in layer.iter().enumerate() {
            all.extend(prefixed(
                &Recurrent::<()>::part_name(l, d),
                part.parameters(),
            ));
        }
    }
    all
}

/// `layer_parameters`, to be changed.
fn layer_parameters_mut<T, P: Parameters<T>>(parts: &mut [Vec<P>]) -> Vec<ParamMut<'_, T>> {
    let mut all = Vec::new();
    for (l, layer) in parts.iter_mut().enumerate() {
        for (d, part) in layer.iter_mut().enumerate() {
            all.extend(prefixed_mut(
                &Recurrent::<()>::part_name(l, d),
                part.parameters_mut(),
            ));
        }
    }
    all
}
