//! Checking a cell's analytic gradients against central finite differences, in f64.

use nalgebra::DMatrix;

use crate::sequence::{forward, Direction, Steps};
use crate::{Cell, Init, Parameters, Result, Rng};

/// The worst relative error between `C`'s analytic gradients and central finite
/// differences, over every parameter, input and initial state, for a cell of sizes
/// `dims` (in the order of `C::SPEC.size_symbols`) on `batch` random sequences of
/// `seq_len` steps, everything drawn from `seed`.
///
/// The loss is a random weighting of the outputs and the final states, so every
/// gradient path is exercised. The error of an element is
/// `|analytic - numeric| / max(1, |analytic|, |numeric|)`: relative for large
/// gradients, absolute for small ones, where finite differences carry no more digits.
pub fn gradcheck<C: Cell<f64>>(
    dims: &[usize],
    batch: usize,
    seq_len: usize,
    seed: u64,
) -> Result<f64> {
    gradcheck_steps::<C>(
        dims,
        &Steps::full(seq_len, batch)?,
        Direction::Forward,
        seed,
    )
}

/// [`gradcheck`] over any batch layout (variable lengths) and direction.
pub fn gradcheck_steps<C: Cell<f64>>(
    dims: &[usize],
    steps: &Steps,
    direction: Direction,
    seed: u64,
) -> Result<f64> {
    let mut rng = Rng::seed(seed);
    let hidden = dims.get(1).copied().unwrap_or(1);
    let mut cell = C::with_dims(dims, &Init::pytorch_default(hidden), &mut rng)?;
    let mut random =
        |rows: usize, cols: usize| DMatrix::from_fn(rows, cols, |_, _| rng.range(-1.0, 1.0));
    let inputs: Vec<DMatrix<f64>> = (0..C::SPEC.inputs.len())
        .map(|k| random(cell.input_size(k), steps.columns()))
        .collect();
    let states: Vec<DMatrix<f64>> = (0..C::SPEC.states.len())
        .map(|k| random(cell.state_size(k), steps.batch()))
        .collect();
    let w_output = random(cell.output_size(), steps.columns());
    let w_final: Vec<DMatrix<f64>> = states
        .iter()
        .map(|s| random(s.nrows(), s.ncols()))
        .collect();

    let loss = |cell: &C, inputs: &[DMatrix<f64>], states: &[DMatrix<f64>]| -> Result<f64> {
        let refs: Vec<&DMatrix<f64>> = inputs.iter().collect();
        let run = forward(cell, steps, &refs, Some(states), direction)?;
        let finals: f64 = run
            .final_states
            .iter()
            .zip(&w_final)
            .map(|(s, w)| s.dot(w))
            .sum();
        Ok(run.output.dot(&w_output) + finals)
    };

    let refs: Vec<&DMatrix<f64>> = inputs.iter().collect();
    let mut run = forward(&cell, steps, &refs, Some(&states), direction)?;
    let d_final: Vec<Option<&DMatrix<f64>>> = w_final.iter().map(Some).collect();
    let grads = run.backward(&cell, Some(&w_output), &d_final)?;

    let eps = 1e-6;
    let mut worst: f64 = 0.0;
    let mut record = |analytic: f64, plus: f64, minus: f64| {
        let numeric = (plus - minus) / (2.0 * eps);
        let error = (analytic - numeric).abs() / 1f64.max(analytic.abs()).max(numeric.abs());
        worst = worst.max(error);
    };

    let analytic_params: Vec<Vec<f64>> = grads
        .params
        .parameters()
        .iter()
        .map(|p| p.values.to_vec())
        .collect();
    for (p, analytic) in analytic_params.iter().enumerate() {
        for (i, a) in analytic.iter().enumerate() {
            let at = |delta: f64, cell: &mut C| cell.parameters_mut()[p].values[i] += delta;
            at(eps, &mut cell);
            let plus = loss(&cell, &inputs, &states)?;
            at(-2.0 * eps, &mut cell);
            let minus = loss(&cell, &inputs, &states)?;
            at(eps, &mut cell);
            record(*a, plus, minus);
        }
    }
    let mut inputs = inputs;
    for k in 0..inputs.len() {
        for i in 0..inputs[k].len() {
            inputs[k][i] += eps;
            let plus = loss(&cell, &inputs, &states)?;
            inputs[k][i] -= 2.0 * eps;
            let minus = loss(&cell, &inputs, &states)?;
            inputs[k][i] += eps;
            record(grads.inputs[k][i], plus, minus);
        }
    }
    let mut states = states;
    for k in 0..states.len() {
        for i in 0..states[k].len() {
            states[k][i] += eps;
            let plus = loss(&cell, &inputs, &states)?;
            states[k][i] -= 2.0 * eps;
            let minus = loss(&cell, &inputs, &states)?;
            states[k][i] += eps;
            record(grads.initial_states[k][i], plus, minus);
        }
    }
    Ok(worst)
}
