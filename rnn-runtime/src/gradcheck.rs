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
///
/// A cell with a kink (`relu`) has a point where the derivative jumps; a step of 1e-6 to
/// either side may cross it, and the central difference then averages two slopes. An
/// element whose difference at 1e-6 disagrees is therefore measured again at 1e-7 and
/// 1e-8, and keeps its best agreement: a smooth function gives the same derivative at
/// every step, so a wrong gradient disagrees at all three, while a kink within 1e-6 of
/// the point is rarely within 1e-8 of it.
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

    let mut worst: f64 = 0.0;
    let analytic_params: Vec<Vec<f64>> = grads
        .params
        .parameters()
        .iter()
        .map(|p| p.values.to_vec())
        .collect();
    for (p, analytic) in analytic_params.iter().enumerate() {
        for (i, a) in analytic.iter().enumerate() {
            let error = disagreement(*a, |delta| {
                let original = cell.parameters()[p].values[i];
                cell.parameters_mut()[p].values[i] = original + delta;
                let value = loss(&cell, &inputs, &states);
                cell.parameters_mut()[p].values[i] = original;
                value
            })?;
            worst = worst.max(error);
        }
    }
    let mut inputs = inputs;
    let mut states = states;
    worst = worst.max(worst_over(&mut inputs, &grads.inputs, |inputs| {
        loss(&cell, inputs, &states)
    })?);
    worst = worst.max(worst_over(&mut states, &grads.initial_states, |states| {
        loss(&cell, &inputs, states)
    })?);
    Ok(worst)
}

/// The worst [`disagreement`] over every element of `values` (the inputs or the
/// initial states), each moved in turn, against its gradient in `analytic`.
fn worst_over(
    values: &mut [DMatrix<f64>],
    analytic: &[DMatrix<f64>],
    loss: impl Fn(&[DMatrix<f64>]) -> Result<f64>,
) -> Result<f64> {
    let mut worst: f64 = 0.0;
    for k in 0..values.len() {
        for i in 0..values[k].len() {
            let error = disagreement(analytic[k][i], |delta| {
                let original = values[k][i];
                values[k][i] = original + delta;
                let value = loss(values);
                values[k][i] = original;
                value
            })?;
            worst = worst.max(error);
        }
    }
    Ok(worst)
}

/// Steps of the central differences, the first tried first: see [`gradcheck`] on kinks.
const STEPS: [f64; 3] = [1e-6, 1e-7, 1e-8];

/// Below this, the difference at one step is taken as agreement and no smaller step is
/// tried: the bound `tests/sequences.rs` holds a smooth cell to at the first step.
const AGREEMENT: f64 = 1e-8;

/// How far `analytic` is from the central difference of `loss_at` (the loss with the
/// element moved by the given amount), at the step of [`STEPS`] where they agree best.
fn disagreement(analytic: f64, mut loss_at: impl FnMut(f64) -> Result<f64>) -> Result<f64> {
    let mut best = f64::INFINITY;
    for eps in STEPS {
        let numeric = (loss_at(eps)? - loss_at(-eps)?) / (2.0 * eps);
        let error = (analytic - numeric).abs() / 1f64.max(analytic.abs()).max(numeric.abs());
        best = best.min(error);
        if best <= AGREEMENT {
            break;
        }
    }
    Ok(best)
}
