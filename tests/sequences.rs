//! Unrolling semantics: directions, variable lengths, and errors instead of panics.

use rnn_runtime::nalgebra::{DMatrix, DVector};
use rnn_runtime::prelude::*;
use rnn_runtime::{BufferSpec, ParamMut, ParamRef, SequenceGrads, Tape};
use rnn_suite::bench_cells::Mgu;

mod common;
use common::ColahLstm;

fn random(rows: usize, cols: usize, rng: &mut Rng) -> DMatrix<f64> {
    DMatrix::from_fn(rows, cols, |_, _| rng.range(-1.0, 1.0))
}

/// The columns of step t, for sequences `b` of a full batch.
fn step_columns(m: &DMatrix<f64>, batch: usize, t: usize) -> DMatrix<f64> {
    m.columns(t * batch, batch).into_owned()
}

#[test]
fn reverse_equals_forward_over_the_reversed_sequence() {
    let mut rng = Rng::seed(1);
    let cell: LstmCell<f64> = LstmCell::new(3, 4, &mut rng);
    let (len, batch) = (5, 2);
    let steps = Steps::full(len, batch).unwrap();
    let x = random(3, len * batch, &mut rng);
    let mut reversed = x.clone();
    for t in 0..len {
        reversed
            .columns_mut((len - 1 - t) * batch, batch)
            .copy_from(&step_columns(&x, batch, t));
    }
    let back = forward(&cell, &steps, &[&x], None, Direction::Reverse).unwrap();
    let fwd = forward(&cell, &steps, &[&reversed], None, Direction::Forward).unwrap();
    for t in 0..len {
        let diff = (step_columns(&back.output, batch, t)
            - step_columns(&fwd.output, batch, len - 1 - t))
        .abs()
        .max();
        assert!(diff < 1e-12, "step {t}: {diff}");
    }
    assert!((&back.final_states[1] - &fwd.final_states[1]).abs().max() < 1e-12);
}

/// A batch of 3 unrolls as one part; of 11, as two (sharing the threads out), each
/// writing its outputs into its own columns of the batch's, at steps where the second
/// part has fewer sequences or none.
#[test]
fn each_sequence_of_a_variable_length_batch_runs_as_if_alone() {
    rnn_runtime::set_threads(2).unwrap();
    let three = Steps::from_sorted_lengths(&[4, 3, 1]).unwrap();
    assert_eq!(three.batch_sizes(), &[3, 2, 2, 1]);
    runs_as_if_alone(&[4, 3, 1]);
    runs_as_if_alone(&[7, 6, 6, 5, 4, 4, 3, 2, 2, 1, 1]);
}

fn runs_as_if_alone(lengths: &[usize]) {
    let mut rng = Rng::seed(2);
    let cell: GruCell<f64> = GruCell::new(2, 3, &mut rng);
    let steps = Steps::from_sorted_lengths(lengths).unwrap();
    let x = random(2, steps.columns(), &mut rng);
    let h0 = random(3, lengths.len(), &mut rng);
    let d_out = random(3, steps.columns(), &mut rng);
    let d_final = random(3, lengths.len(), &mut rng);
    for direction in [Direction::Forward, Direction::Reverse] {
        let mut batch = forward(
            &cell,
            &steps,
            &[&x],
            Some(std::slice::from_ref(&h0)),
            direction,
        )
        .unwrap();
        // The batch's gradients (its parts' on two threads, added together) are the
        // sum of each sequence's alone.
        let grads = batch
            .backward(&cell, Some(&d_out), &[Some(&d_final)])
            .unwrap();
        let mut summed = cell.zero_grads();
        for (b, &len) in lengths.iter().enumerate() {
            // Sequence b alone: its column at each of its steps.
            let cols: Vec<usize> = (0..len).map(|t| steps.step(t).0 + b).collect();
            let alone_x = DMatrix::from_fn(2, len, |i, t| x[(i, cols[t])]);
            let alone_h0 = h0.columns(b, 1).into_owned();
            let mut alone = forward(
                &cell,
                &Steps::full(len, 1).unwrap(),
                &[&alone_x],
                Some(&[alone_h0]),
                direction,
            )
            .unwrap();
            for (t, &c) in cols.iter().enumerate() {
                let diff = (batch.output.column(c) - alone.output.column(t))
                    .abs()
                    .max();
                assert!(diff < 1e-12, "{direction:?} sequence {b} step {t}: {diff}");
            }
            let diff = (batch.final_states[0].column(b) - alone.final_states[0].column(0))
                .abs()
                .max();
            assert!(
                diff < 1e-12,
                "{direction:?}: final state of sequence {b} is not its state at its own last step"
            );
            let alone_d_out = DMatrix::from_fn(3, len, |i, t| d_out[(i, cols[t])]);
            let alone_d_final = d_final.columns(b, 1).into_owned();
            let alone_grads = alone
                .backward_into(
                    &cell,
                    Some(&alone_d_out),
                    &[Some(&alone_d_final)],
                    InputGrads::Compute,
                    &mut summed,
                )
                .unwrap();
            for (t, &c) in cols.iter().enumerate() {
                let diff = (grads.inputs[0].column(c) - alone_grads.inputs[0].column(t))
                    .abs()
                    .max();
                assert!(
                    diff < 1e-12,
                    "{direction:?} sequence {b} step {t}: input gradient off by {diff}"
                );
            }
            let diff = (grads.initial_states[0].column(b)
                - alone_grads.initial_states[0].column(0))
            .abs()
            .max();
            assert!(
                diff < 1e-12,
                "{direction:?} sequence {b}: initial state gradient off by {diff}"
            );
        }
        for (batched, alone) in grads.params.parameters().iter().zip(summed.parameters()) {
            for (p, q) in batched.values.iter().zip(alone.values) {
                assert!(
                    (p - q).abs() < 1e-12,
                    "{direction:?} `{}`: the batch's gradient {p} is not the sequences' sum {q}",
                    batched.name
                );
            }
        }
    }
}

#[test]
fn bad_input_is_an_error_naming_the_sizes() {
    let mut rng = Rng::seed(3);
    let cell: LstmCell<f64> = LstmCell::new(3, 4, &mut rng);
    let steps = Steps::full(2, 2).unwrap();
    let message = |r: Result<_, Error>| {
        r.map(|_: rnn_runtime::Trajectory<f64>| ())
            .unwrap_err()
            .to_string()
    };

    let wide = DMatrix::zeros(5, 4);
    let m = message(forward(&cell, &steps, &[&wide], None, Direction::Forward));
    assert!(m.contains("(3, 4)") && m.contains("(5, 4)"), "{m}");

    let x = DMatrix::zeros(3, 4);
    let bad_state = vec![DMatrix::zeros(4, 2), DMatrix::zeros(4, 3)];
    let m = message(forward(
        &cell,
        &steps,
        &[&x],
        Some(&bad_state),
        Direction::Forward,
    ));
    assert!(
        m.contains("`c`") && m.contains("(4, 2)") && m.contains("(4, 3)"),
        "{m}"
    );

    let m = message(forward(&cell, &steps, &[], None, Direction::Forward));
    assert!(m.contains("1 inputs but 0"), "{m}");

    assert!(Steps::full(0, 2)
        .unwrap_err()
        .to_string()
        .contains("length is 0"));
    assert!(Steps::full(3, 0)
        .unwrap_err()
        .to_string()
        .contains("empty batch"));
    assert!(Steps::from_sorted_lengths(&[2, 3])
        .unwrap_err()
        .to_string()
        .contains("sorted"));
    assert!(Steps::from_sorted_lengths(&[2, 0])
        .unwrap_err()
        .to_string()
        .contains("length 0"));
    assert!(Steps::from_batch_sizes(vec![2, 3])
        .unwrap_err()
        .to_string()
        .contains("non-increasing"));

    let mut run = forward(&cell, &steps, &[&x], None, Direction::Forward).unwrap();
    let err = run
        .backward(&cell, Some(&DMatrix::zeros(4, 3)), &[])
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("(4, 4)") && err.contains("(4, 3)"), "{err}");

    let other: LstmCell<f64> = LstmCell::new(3, 5, &mut rng);
    let err = run
        .backward(&other, None, &[])
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("[3, 4]") && err.contains("[3, 5]"), "{err}");
}

/// A cell whose backward pass is off by a little: `gradcheck` must notice.
#[derive(Clone)]
struct Miscalculated(RnnTanhCell<f64>);

impl Parameters<f64> for Miscalculated {
    fn parameters(&self) -> Vec<ParamRef<'_, f64>> {
        self.0.parameters()
    }
    fn parameters_mut(&mut self) -> Vec<ParamMut<'_, f64>> {
        self.0.parameters_mut()
    }
}

impl Cell<f64> for Miscalculated {
    type Grads = <RnnTanhCell<f64> as Cell<f64>>::Grads;
    const SPEC: &'static rnn_runtime::CellSpec = <RnnTanhCell<f64> as Cell<f64>>::SPEC;
    fn dims(&self) -> &[usize] {
        self.0.dims()
    }
    fn with_dims(dims: &[usize], init: &Init, rng: &mut Rng) -> Result<Self, Error> {
        RnnTanhCell::with_dims(dims, init, rng).map(Miscalculated)
    }
    fn zero_grads(&self) -> Self::Grads {
        self.0.zero_grads()
    }
    fn tape_buffers(&self) -> Vec<BufferSpec> {
        self.0.tape_buffers()
    }
    fn prepare(&self, tape: &mut Tape<f64>) {
        self.0.prepare(tape)
    }
    fn step_forward(&self, tape: &mut Tape<f64>, off: usize, n: usize) {
        self.0.step_forward(tape, off, n)
    }
    fn step_backward(&self, tape: &mut Tape<f64>, off: usize, n: usize, grads: &mut Self::Grads) {
        self.0.step_backward(tape, off, n, grads)
    }
    fn finish_backward(&self, tape: &mut Tape<f64>, grads: &mut Self::Grads) {
        self.0.finish_backward(tape, grads);
        grads.b_hh[0] *= 1.001;
    }
}

#[test]
fn gradcheck_catches_a_wrong_gradient() {
    let right = gradcheck::<RnnTanhCell<f64>>(&[2, 3], 2, 3, 5).unwrap();
    let wrong = gradcheck::<Miscalculated>(&[2, 3], 2, 3, 5).unwrap();
    assert!(right < 1e-8, "{right}");
    assert!(
        wrong > 1e-5,
        "a 0.1% error in one gradient went unnoticed: {wrong}"
    );
}

/// The largest difference between two sets of values, relative to their largest value.
fn relative_error(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(1e-3_f64, |m, v| m.max(v.abs()));
    got.iter()
        .zip(want)
        .map(|(g, w)| (*g as f64 - w).abs())
        .fold(0.0, f64::max)
        / scale
}

fn to_f32(m: &DMatrix<f64>) -> DMatrix<f32> {
    m.map(|v| v as f32)
}

/// A batch large enough to run in parts on several threads, of uneven lengths, in f32
/// (the packed per-step kernel, with partial panels and partial column blocks) gives
/// what the f64 computation gives: outputs, final states and every gradient.
#[test]
fn a_large_f32_batch_matches_f64_in_every_value_and_gradient() {
    let lengths = [9, 9, 8, 8, 7, 7, 6, 5, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 1];
    f32_matches_f64(37, &lengths);
}

/// As above, for the kernels' other paths: a hidden size of whole panels (each gate's
/// weight gradient straight from its rows of the stacked product) and a batch of one
/// (the one-column products, forward and transposed, both ways).
#[test]
fn f32_matches_f64_with_whole_panels_and_with_a_batch_of_one() {
    let lengths = [9, 9, 8, 8, 7, 7, 6, 5, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 1];
    f32_matches_f64(32, &lengths);
    f32_matches_f64(35, &[12]);
    f32_matches_f64(64, &[7]);
    // (The transposed one-column product as dot products at 35 and 64, through the
    // packed transpose at 32.)
    f32_matches_f64(32, &[6]);
}

/// A batch of 64 sequences (32 a part on two threads) with recurrent weights of 590 K
/// values (the LSTM) and 529 K (the GRU): where the processor has AMX, their products
/// forward and backward run on the tiles, whose split into bf16 parts must keep f32's
/// precision (`packed::amx`).
#[test]
fn a_batch_on_amx_tiles_matches_f64() {
    let lengths: Vec<usize> = (0..64).map(|s| 6 - s / 11).collect();
    f32_matches_f64(384, &lengths);
    f32_matches_f64_for::<GruCell<f32>, GruCell<f64>>(420, &lengths);
}

fn f32_matches_f64(hidden: usize, lengths: &[usize]) {
    f32_matches_f64_for::<LstmCell<f32>, LstmCell<f64>>(hidden, lengths);
}

/// `f32_matches_f64` for a cell of any states: C32 and C64 are the one cell in f32 and
/// f64, given the same parameters.
fn f32_matches_f64_for<C32: Cell<f32>, C64: Cell<f64>>(hidden: usize, lengths: &[usize]) {
    let mut rng = Rng::seed(7);
    let input = 5;
    let init = Init::pytorch_default(hidden);
    let cell64 = C64::with_dims(&[input, hidden], &init, &mut rng).unwrap();
    let mut cell32 = C32::with_dims(&[input, hidden], &init, &mut rng).unwrap();
    for (to, from) in cell32.parameters_mut().into_iter().zip(cell64.parameters()) {
        for (t, f) in to.values.iter_mut().zip(from.values) {
            *t = *f as f32;
        }
    }
    let steps = Steps::from_sorted_lengths(lengths).unwrap();
    let batch = lengths.len();
    let x = random(input, steps.columns(), &mut rng);
    let state_count = C64::SPEC.states.len();
    let states: Vec<DMatrix<f64>> = (0..state_count)
        .map(|k| random(cell64.state_size(k), batch, &mut rng))
        .collect();
    let d_out = random(cell64.output_size(), steps.columns(), &mut rng);
    let d_h = random(cell64.state_size(0), batch, &mut rng);
    for direction in [Direction::Forward, Direction::Reverse] {
        let mut run64 = forward(&cell64, &steps, &[&x], Some(&states), direction).unwrap();
        let states32: Vec<DMatrix<f32>> = states.iter().map(to_f32).collect();
        let mut run32 =
            forward(&cell32, &steps, &[&to_f32(&x)], Some(&states32), direction).unwrap();
        let mut compared = vec![(
            "output",
            relative_error(run32.output.as_slice(), run64.output.as_slice()),
        )];
        for k in 0..state_count {
            compared.push((
                "a final state",
                relative_error(
                    run32.final_states[k].as_slice(),
                    run64.final_states[k].as_slice(),
                ),
            ));
        }
        // The first state's gradient given, the others' none.
        let mut d_states64: Vec<Option<&DMatrix<f64>>> = vec![None; state_count];
        d_states64[0] = Some(&d_h);
        let g64 = run64.backward(&cell64, Some(&d_out), &d_states64).unwrap();
        let d_h32 = to_f32(&d_h);
        let mut d_states32: Vec<Option<&DMatrix<f32>>> = vec![None; state_count];
        d_states32[0] = Some(&d_h32);
        let g32 = run32
            .backward(&cell32, Some(&to_f32(&d_out)), &d_states32)
            .unwrap();
        for (p32, p64) in g32.params.parameters().iter().zip(g64.params.parameters()) {
            compared.push(("a parameter", relative_error(p32.values, p64.values)));
        }
        compared.push((
            "d x",
            relative_error(g32.inputs[0].as_slice(), g64.inputs[0].as_slice()),
        ));
        for k in 0..state_count {
            compared.push((
                "d initial state",
                relative_error(
                    g32.initial_states[k].as_slice(),
                    g64.initial_states[k].as_slice(),
                ),
            ));
        }
        for (what, error) in compared {
            assert!(
                error < 1e-4,
                "{}: hidden {hidden}, batch {batch}, {direction:?}: {what} off by {error:e}",
                std::any::type_name::<C32>()
            );
        }
    }
}

/// Cells of other layouts in f32 and f64, on the same paths: the GRU; an MGU, whose
/// two gates' dz (the gradients of two recurrent products) the loops store straight
/// into the input projection's stack, where its weight gradients read them; and an
/// LSTM whose stacks the runtime packs from column ranges of its parameters.
#[test]
fn other_cells_in_f32_match_f64() {
    let lengths = [9, 9, 8, 8, 7, 7, 6, 5, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 1];
    for hidden in [35, 32] {
        f32_matches_f64_for::<Mgu<f32>, Mgu<f64>>(hidden, &lengths);
        f32_matches_f64_for::<Mgu<f32>, Mgu<f64>>(hidden, &[12]);
        f32_matches_f64_for::<GruCell<f32>, GruCell<f64>>(hidden, &lengths);
        f32_matches_f64_for::<GruCell<f32>, GruCell<f64>>(hidden, &[12]);
        f32_matches_f64_for::<ColahLstm<f32>, ColahLstm<f64>>(hidden, &lengths);
        f32_matches_f64_for::<ColahLstm<f32>, ColahLstm<f64>>(hidden, &[12]);
    }
}

/// A pass of one column (one step of one sequence), and a pass of up to four columns
/// whose stacked weights are large, reads the weights where the parameters lie, where
/// longer passes pack them (`reads_in_place` in `tape.rs`): a short pass gives, alone,
/// the outputs, final states and input gradients it gives beside two more sequences,
/// for cells whose stacks are whole parameters (the LSTM, the GRU, the MGU) and column
/// ranges of them (Colah's LSTM), in f32, at 35 hidden units (small stacks: one column
/// in place) and 130 (every stack in place up to four columns).
#[test]
fn short_passes_compute_what_they_compute_in_a_longer_batch() {
    for hidden in [35, 130] {
        for (steps, batch) in [(1, 1), (1, 4), (2, 2), (4, 1), (3, 1)] {
            alone_matches_batched::<LstmCell<f32>>(hidden, steps, batch);
            alone_matches_batched::<Mgu<f32>>(hidden, steps, batch);
            alone_matches_batched::<ColahLstm<f32>>(hidden, steps, batch);
            alone_matches_batched::<GruCell<f32>>(hidden, steps, batch);
        }
    }
}

fn alone_matches_batched<C: Cell<f32>>(hidden: usize, steps: usize, batch: usize) {
    let (input, more) = (5, 2);
    let mut rng = Rng::seed((steps * 10 + batch) as u64);
    let cell = C::with_dims(&[input, hidden], &Init::pytorch_default(hidden), &mut rng).unwrap();
    let wide = batch + more;
    let x_wide = to_f32(&random(input, steps * wide, &mut rng));
    let d_out_wide = to_f32(&random(cell.output_size(), steps * wide, &mut rng));
    // The first `batch` sequences of the wide batch, step by step.
    let first = |m: &DMatrix<f32>| {
        let mut out = DMatrix::zeros(m.nrows(), steps * batch);
        for t in 0..steps {
            out.columns_mut(t * batch, batch)
                .copy_from(&m.columns(t * wide, batch));
        }
        out
    };
    let run = |x: &DMatrix<f32>, d_out: &DMatrix<f32>, b: usize| {
        let mut pass = forward(
            &cell,
            &Steps::full(steps, b).unwrap(),
            &[x],
            None,
            Direction::Forward,
        )
        .unwrap();
        let grads = pass.backward(&cell, Some(d_out), &[]).unwrap();
        let states: Vec<DMatrix<f32>> = pass
            .final_states
            .iter()
            .map(|s| s.columns(0, batch).into_owned())
            .collect();
        (pass.output, states, grads.inputs[0].clone())
    };
    let (out_alone, states_alone, dx_alone) = run(&first(&x_wide), &first(&d_out_wide), batch);
    let (out_wide, states_wide, dx_wide) = run(&x_wide, &d_out_wide, wide);
    let close = |what: &str, got: &DMatrix<f32>, want: &DMatrix<f32>| {
        let want: DMatrix<f64> = want.map(f64::from);
        let error = relative_error(got.as_slice(), want.as_slice());
        assert!(
            error < 1e-5,
            "{}, {hidden} hidden, {steps} steps × {batch}: {what} off by {error:e}",
            std::any::type_name::<C>()
        );
    };
    close("the output", &out_alone, &first(&out_wide));
    for (alone, wide) in states_alone.iter().zip(&states_wide) {
        close("a final state", alone, wide);
    }
    close("the input's gradient", &dx_alone, &first(&dx_wide));
}

/// The LSTM's equations, written out with nalgebra, one step at a time.
fn plain_lstm(
    cell: &LstmCell<f64>,
    x: &DMatrix<f64>,
    batch: usize,
) -> (DMatrix<f64>, DMatrix<f64>) {
    let hidden = cell.W_hi.nrows();
    let sigmoid = |m: DMatrix<f64>| m.map(|v| 1.0 / (1.0 + (-v).exp()));
    let gate = |w: &DMatrix<f64>,
                b_x: &DVector<f64>,
                u: &DMatrix<f64>,
                b_h: &DVector<f64>,
                x: &DMatrix<f64>,
                h: &DMatrix<f64>| {
        let mut z = w * x + u * h;
        for mut column in z.column_iter_mut() {
            column += b_x + b_h;
        }
        z
    };
    let (mut h, mut c) = (DMatrix::zeros(hidden, batch), DMatrix::zeros(hidden, batch));
    let mut output = DMatrix::zeros(hidden, x.ncols());
    for t in 0..x.ncols() / batch {
        let x_t = step_columns(x, batch, t);
        let i = sigmoid(gate(
            &cell.W_ii, &cell.b_ii, &cell.W_hi, &cell.b_hi, &x_t, &h,
        ));
        let f = sigmoid(gate(
            &cell.W_if, &cell.b_if, &cell.W_hf, &cell.b_hf, &x_t, &h,
        ));
        let g = gate(&cell.W_ig, &cell.b_ig, &cell.W_hg, &cell.b_hg, &x_t, &h).map(f64::tanh);
        let o = sigmoid(gate(
            &cell.W_io, &cell.b_io, &cell.W_ho, &cell.b_ho, &x_t, &h,
        ));
        c = f.component_mul(&c) + i.component_mul(&g);
        h = o.component_mul(&c.map(f64::tanh));
        output.columns_mut(t * batch, batch).copy_from(&h);
    }
    (output, c)
}

/// The fused loops run a column's rows in windows of 32, 16 and 8 rows and the rest,
/// the last window again where the loop allows it: at every hidden size up to 72 each
/// row is computed, once, as the equations say.
#[test]
fn fused_loops_cover_every_row_at_every_hidden_size() {
    let (input, batch, steps) = (3, 2, 4);
    for hidden in 1..=72 {
        let mut rng = Rng::seed(hidden as u64);
        let cell: LstmCell<f64> = LstmCell::new(input, hidden, &mut rng);
        let x = random(input, batch * steps, &mut rng);
        let run = forward(
            &cell,
            &Steps::full(steps, batch).unwrap(),
            &[&x],
            None,
            Direction::Forward,
        )
        .unwrap();
        let (output, c) = plain_lstm(&cell, &x, batch);
        assert!(
            (&run.output - &output).amax() < 1e-6,
            "hidden {hidden}: output"
        );
        assert!(
            (&run.final_states[1] - &c).amax() < 1e-6,
            "hidden {hidden}: c"
        );
    }
}

/// A cell that never reads its input: the input's gradient is never written.
#[recurrent]
pub fn input_free(x: Input, h: State) {
    h = tanh(U * h + b);
}

/// A cell with a concatenation and a gate that reads another gate: more buffer kinds.
#[recurrent]
pub fn concat_mgu(x: Input, h: State) {
    let f = sigmoid(W_f * [h, x] + b_f);
    h = (1.0 - f) * h + f * tanh(W_c * [f * h, x] + b_c);
}

/// Everything one forward and backward pass returns, flattened.
fn run_values<C: Cell<f32>>(
    cell: &C,
    steps: &Steps,
    x: &DMatrix<f32>,
    states: Option<&[DMatrix<f32>]>,
    d_out: &DMatrix<f32>,
    direction: Direction,
) -> Vec<f32> {
    let mut run = forward(cell, steps, &[x], states, direction).unwrap();
    let grads = run.backward(cell, Some(d_out), &[]).unwrap();
    let mut values = run.output.as_slice().to_vec();
    for state in &run.final_states {
        values.extend_from_slice(state.as_slice());
    }
    for p in grads.params.parameters() {
        values.extend_from_slice(p.values);
    }
    values.extend_from_slice(grads.inputs[0].as_slice());
    for state in &grads.initial_states {
        values.extend_from_slice(state.as_slice());
    }
    values
}

/// Tapes reuse the buffers of finished tapes without clearing the per-step ones, on
/// the grounds that generated code writes before it reads. Here a pass over NaN inputs
/// leaves NaN in every reused buffer; the passes after it must be bit for bit the
/// passes before it, for several cells, packed batches split across threads, both
/// directions, with and without initial states. The poisoning runs the cell itself,
/// the cell with NaN parameters (which fill its stacked weights, never cleared either),
/// and a vanilla RNN of the same sizes, whose buffers the cell may then reuse.
fn leftover_buffers_change_nothing<C: Cell<f32>>(dims: &[usize]) {
    leftover_buffers_change_nothing_at::<C>(dims, &[7, 7, 6, 5, 5, 4, 3, 3, 2, 1, 1]);
}

/// `leftover_buffers_change_nothing` over sequences of `lengths`.
fn leftover_buffers_change_nothing_at<C: Cell<f32>>(dims: &[usize], lengths: &[usize]) {
    let mut rng = Rng::seed(11);
    let cell = C::with_dims(dims, &Init::pytorch_default(dims[1]), &mut rng).unwrap();
    let rnn: RnnTanhCell<f32> = RnnTanhCell::new(dims[0], cell.state_size(0), &mut rng);
    let steps = Steps::from_sorted_lengths(lengths).unwrap();
    let columns = steps.columns();
    let batch = lengths.len();
    let x = DMatrix::from_fn(dims[0], columns, |_, _| rng.range(-1.0, 1.0) as f32);
    let d_out = DMatrix::from_fn(cell.output_size(), columns, |_, _| {
        rng.range(-1.0, 1.0) as f32
    });
    let states: Vec<DMatrix<f32>> = (0..C::SPEC.states.len())
        .map(|k| {
            DMatrix::from_fn(cell.state_size(k), batch, |_, _| {
                rng.range(-1.0, 1.0) as f32
            })
        })
        .collect();
    let nan_x = DMatrix::from_element(dims[0], columns, f32::NAN);
    let nan_d = DMatrix::from_element(cell.output_size(), columns, f32::NAN);
    let mut nan_cell = cell.clone();
    for param in nan_cell.parameters_mut() {
        param.values.fill(f32::NAN);
    }
    for direction in [Direction::Forward, Direction::Reverse] {
        for initial in [None, Some(states.as_slice())] {
            let before = run_values(&cell, &steps, &x, initial, &d_out, direction);
            assert!(before.iter().all(|v| v.is_finite()));
            let rnn_states = initial.map(|s| [s[0].clone()]);
            let rnn_nan_d = DMatrix::from_element(cell.state_size(0), columns, f32::NAN);
            let rnn_initial = rnn_states.as_ref().map(|s| &s[..]);
            run_values(&rnn, &steps, &nan_x, rnn_initial, &rnn_nan_d, direction);
            let poisoned = run_values(&cell, &steps, &nan_x, initial, &nan_d, direction);
            assert!(
                poisoned.iter().any(|v| v.is_nan()),
                "the poisoning pass made no NaN"
            );
            let poisoned = run_values(&nan_cell, &steps, &x, initial, &d_out, direction);
            assert!(
                poisoned.iter().any(|v| v.is_nan()),
                "the pass with NaN parameters made no NaN"
            );
            let after = run_values(&cell, &steps, &x, initial, &d_out, direction);
            let same = before
                .iter()
                .zip(&after)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "`{}` {direction:?} (initial states: {}): a reused buffer changed the result",
                C::SPEC.name,
                initial.is_some()
            );
            // With the pooled buffers freed, the next pass starts on fresh memory.
            rnn_runtime::release_pooled_buffers();
            let fresh = run_values(&cell, &steps, &x, initial, &d_out, direction);
            assert!(
                before
                    .iter()
                    .zip(&fresh)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "`{}` {direction:?}: a pass after `release_pooled_buffers` differs",
                C::SPEC.name
            );
        }
    }
}

#[test]
fn reused_tape_buffers_change_nothing() {
    leftover_buffers_change_nothing::<LstmCell<f32>>(&[5, 9]);
    leftover_buffers_change_nothing::<GruCell<f32>>(&[5, 9]);
    leftover_buffers_change_nothing::<RnnTanhCell<f32>>(&[5, 9]);
    leftover_buffers_change_nothing::<rnn_runtime::cells::LstmProjCell<f32>>(&[5, 9, 4]);
    leftover_buffers_change_nothing::<ConcatMgu<f32>>(&[5, 9]);
    leftover_buffers_change_nothing::<InputFree<f32>>(&[5, 9]);
    // Passes whose products read the weights in place and add block after block into
    // buffers that hold a finished pass's values: one column, and four columns of
    // large stacks.
    leftover_buffers_change_nothing_at::<LstmCell<f32>>(&[5, 9], &[1]);
    leftover_buffers_change_nothing_at::<ConcatMgu<f32>>(&[5, 9], &[1]);
    leftover_buffers_change_nothing_at::<ColahLstm<f32>>(&[5, 9], &[1]);
    leftover_buffers_change_nothing_at::<LstmCell<f32>>(&[5, 70], &[2, 2]);
    leftover_buffers_change_nothing_at::<ColahLstm<f32>>(&[5, 70], &[2, 1]);
}

/// A cell whose parameter `p` scales the input elementwise: its gradient reads the
/// product `Wᵀ · dz` that the input's gradient reads too.
#[recurrent]
pub fn scaled_input(x: Input, h: State) {
    h = tanh(W * (p * x) + U * h + b);
}

/// The gradients a backward pass returns, as bits, besides the inputs'.
fn gradient_bits<G: Parameters<f32>>(grads: &SequenceGrads<f32, G>) -> Vec<u32> {
    let params = grads.params.parameters();
    let values = params.iter().flat_map(|p| p.values.iter());
    let states = grads.initial_states.iter().flat_map(|s| s.iter());
    values.chain(states).map(|v| v.to_bits()).collect()
}

/// `InputGrads::Skip` leaves out the inputs' gradients and changes no other bit: for
/// cells that read the input through a matrix, elementwise, through a concatenation or
/// not at all, over a packed batch split across threads, in both directions.
fn skipping_input_gradients_changes_nothing_else<C: Cell<f32>>(dims: &[usize]) {
    let mut rng = Rng::seed(12);
    let cell = C::with_dims(dims, &Init::pytorch_default(dims[1]), &mut rng).unwrap();
    let lengths = [9, 8, 8, 6, 5, 5, 4, 3, 3, 2, 1];
    let steps = Steps::from_sorted_lengths(&lengths).unwrap();
    let x = DMatrix::from_fn(dims[0], steps.columns(), |_, _| rng.range(-1.0, 1.0) as f32);
    let d_out = DMatrix::from_fn(cell.output_size(), steps.columns(), |_, _| {
        rng.range(-1.0, 1.0) as f32
    });
    for direction in [Direction::Forward, Direction::Reverse] {
        let mut run = forward(&cell, &steps, &[&x], None, direction).unwrap();
        let all = run.backward(&cell, Some(&d_out), &[]).unwrap();
        let mut run = forward(&cell, &steps, &[&x], None, direction).unwrap();
        let skipped = run
            .backward_with(&cell, Some(&d_out), &[], InputGrads::Skip)
            .unwrap();
        assert_eq!(all.inputs.len(), 1);
        assert!(
            skipped.inputs.is_empty(),
            "`{}`: input gradients returned",
            C::SPEC.name
        );
        assert!(
            gradient_bits(&all) == gradient_bits(&skipped),
            "`{}` {direction:?}: skipping the input gradients changed another gradient",
            C::SPEC.name
        );
    }
}

#[test]
fn skipping_input_gradients_changes_no_other_gradient() {
    skipping_input_gradients_changes_nothing_else::<LstmCell<f32>>(&[5, 9]);
    skipping_input_gradients_changes_nothing_else::<GruCell<f32>>(&[5, 9]);
    skipping_input_gradients_changes_nothing_else::<RnnTanhCell<f32>>(&[5, 9]);
    skipping_input_gradients_changes_nothing_else::<rnn_runtime::cells::LstmProjCell<f32>>(&[
        5, 9, 4,
    ]);
    skipping_input_gradients_changes_nothing_else::<ConcatMgu<f32>>(&[5, 9]);
    skipping_input_gradients_changes_nothing_else::<InputFree<f32>>(&[5, 9]);
    skipping_input_gradients_changes_nothing_else::<ScaledInput<f32>>(&[5, 9]);
}

/// `backward_into` adds into the gradients it is given: into zeros, `backward_with`'s
/// gradients bit for bit (one part, and two parts on two threads); into the gradients
/// of another pass, their sum; and gradients of another cell's sizes are an error that
/// names them.
fn gradients_added_into_kept_ones<C: Cell<f32>, C64: Cell<f64>>(dims: &[usize]) {
    for lengths in [&[7, 7, 6, 5, 5, 4, 3, 3, 2][..], &[7][..]] {
        let mut rng = Rng::seed(14);
        let cell = C::with_dims(dims, &Init::pytorch_default(dims[1]), &mut rng).unwrap();
        let steps = Steps::from_sorted_lengths(lengths).unwrap();
        let x = DMatrix::from_fn(dims[0], steps.columns(), |_, _| rng.range(-1.0, 1.0) as f32);
        let d_out = DMatrix::from_fn(cell.output_size(), steps.columns(), |_, _| {
            rng.range(-1.0, 1.0) as f32
        });
        let mut run = forward(&cell, &steps, &[&x], None, Direction::Forward).unwrap();
        let fresh = run.backward(&cell, Some(&d_out), &[]).unwrap();
        let mut kept = cell.zero_grads();
        let mut run = forward(&cell, &steps, &[&x], None, Direction::Forward).unwrap();
        let rest = run
            .backward_into(&cell, Some(&d_out), &[], InputGrads::Compute, &mut kept)
            .unwrap();
        let into = SequenceGrads {
            params: kept,
            inputs: rest.inputs,
            initial_states: rest.initial_states,
        };
        assert!(
            gradient_bits(&fresh) == gradient_bits(&into),
            "`{}` over {lengths:?}: gradients added into zeros differ",
            C::SPEC.name
        );
        assert!(fresh.inputs == into.inputs);

        // Two passes into one set of gradients, in f64: the sum of the two.
        let mut rng = Rng::seed(15);
        let cell = C64::with_dims(dims, &Init::pytorch_default(dims[1]), &mut rng).unwrap();
        let mut random =
            |rows| DMatrix::from_fn(rows, steps.columns(), |_, _| rng.range(-1.0, 1.0));
        let xs = [random(dims[0]), random(dims[0])];
        let d_outs = [random(cell.output_size()), random(cell.output_size())];
        let mut sum = cell.zero_grads();
        let mut each = Vec::new();
        for (x, d_out) in xs.iter().zip(&d_outs) {
            let mut run = forward(&cell, &steps, &[x], None, Direction::Reverse).unwrap();
            run.backward_into(&cell, Some(d_out), &[], InputGrads::Skip, &mut sum)
                .unwrap();
            let mut run = forward(&cell, &steps, &[x], None, Direction::Reverse).unwrap();
            each.push(run.backward(&cell, Some(d_out), &[]).unwrap().params);
        }
        for ((total, a), b) in sum
            .parameters()
            .iter()
            .zip(each[0].parameters())
            .zip(each[1].parameters())
        {
            for ((t, a), b) in total.values.iter().zip(a.values).zip(b.values) {
                assert!(
                    (t - (a + b)).abs() <= 1e-12 * (1.0 + t.abs()),
                    "`{}` `{}`: {t} is not {a} + {b}",
                    C::SPEC.name,
                    total.name
                );
            }
        }
    }
    let mut rng = Rng::seed(16);
    let cell = C::with_dims(dims, &Init::pytorch_default(dims[1]), &mut rng).unwrap();
    let mut wider = dims.to_vec();
    wider[1] += 1;
    let other = C::with_dims(&wider, &Init::pytorch_default(wider[1]), &mut rng).unwrap();
    let steps = Steps::full(3, 2).unwrap();
    let x = DMatrix::from_element(dims[0], steps.columns(), 0.5f32);
    let mut run = forward(&cell, &steps, &[&x], None, Direction::Forward).unwrap();
    let message =
        match run.backward_into(&cell, None, &[], InputGrads::Skip, &mut other.zero_grads()) {
            Ok(_) => panic!("`{}`: another cell's gradients were taken", C::SPEC.name),
            Err(e) => e.to_string(),
        };
    assert!(
        message.contains(&format!("{dims:?}")) && message.contains("not this cell's"),
        "{message}"
    );
}

#[test]
fn backward_into_adds_into_the_gradients_it_is_given() {
    gradients_added_into_kept_ones::<LstmCell<f32>, LstmCell<f64>>(&[5, 9]);
    gradients_added_into_kept_ones::<GruCell<f32>, GruCell<f64>>(&[5, 9]);
    gradients_added_into_kept_ones::<ConcatMgu<f32>, ConcatMgu<f64>>(&[5, 9]);
    gradients_added_into_kept_ones::<ScaledInput<f32>, ScaledInput<f64>>(&[5, 9]);
}

/// A trajectory differentiated twice, for two losses, gives each loss the gradients a
/// fresh forward pass would: nothing a backward pass keeps (packed or transposed
/// operands of the weight gradients) leaks into the next.
#[test]
fn a_second_backward_pass_starts_afresh() {
    let mut rng = Rng::seed(13);
    let cell: LstmCell<f32> = LstmCell::new(5, 9, &mut rng);
    let steps = Steps::from_sorted_lengths(&[6, 6, 5, 4, 4, 3, 2, 2, 1]).unwrap();
    let x = DMatrix::from_fn(5, steps.columns(), |_, _| rng.range(-1.0, 1.0) as f32);
    let losses: Vec<DMatrix<f32>> = (0..2)
        .map(|_| DMatrix::from_fn(9, steps.columns(), |_, _| rng.range(-1.0, 1.0) as f32))
        .collect();
    let mut run = forward(&cell, &steps, &[&x], None, Direction::Forward).unwrap();
    let first = run.backward(&cell, Some(&losses[0]), &[]).unwrap();
    let second = run.backward(&cell, Some(&losses[1]), &[]).unwrap();
    for (d_out, got) in losses.iter().zip([&first, &second]) {
        let mut fresh = forward(&cell, &steps, &[&x], None, Direction::Forward).unwrap();
        let want = fresh.backward(&cell, Some(d_out), &[]).unwrap();
        assert!(
            gradient_bits(got) == gradient_bits(&want),
            "a backward pass saw the last one's values"
        );
    }
}
