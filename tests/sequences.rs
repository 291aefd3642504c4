//! Unrolling semantics: directions, variable lengths, and errors instead of panics.

use rnn_runtime::nalgebra::DMatrix;
use rnn_runtime::prelude::*;
use rnn_runtime::{BufferSpec, ParamMut, ParamRef, Tape};

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

#[test]
fn each_sequence_of_a_variable_length_batch_runs_as_if_alone() {
    let mut rng = Rng::seed(2);
    let cell: GruCell<f64> = GruCell::new(2, 3, &mut rng);
    let lengths = [4, 3, 1];
    let steps = Steps::from_sorted_lengths(&lengths).unwrap();
    assert_eq!(steps.batch_sizes(), &[3, 2, 2, 1]);
    let x = random(2, steps.columns(), &mut rng);
    let h0 = random(3, 3, &mut rng);
    for direction in [Direction::Forward, Direction::Reverse] {
        let batch = forward(
            &cell,
            &steps,
            &[&x],
            Some(std::slice::from_ref(&h0)),
            direction,
        )
        .unwrap();
        for (b, &len) in lengths.iter().enumerate() {
            // Sequence b alone: its column at each of its steps.
            let cols: Vec<usize> = (0..len).map(|t| steps.step(t).0 + b).collect();
            let alone_x = DMatrix::from_fn(2, len, |i, t| x[(i, cols[t])]);
            let alone_h0 = h0.columns(b, 1).into_owned();
            let alone = forward(
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
