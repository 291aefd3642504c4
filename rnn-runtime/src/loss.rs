//! Losses: free functions from predictions and targets to the loss and its gradient with
//! respect to the predictions, with PyTorch's semantics. Shapes are in the library's
//! layout, features down the columns: PyTorch's (N, C) is (C, N) here, one column per
//! sample.

use nalgebra::DMatrix;

use crate::{ensure, Error, Result, Scalar};

/// How a loss reduces its elements.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reduction {
    /// The mean (PyTorch's default; a weighted mean for weighted losses).
    #[default]
    Mean,
    /// The sum.
    Sum,
    /// No reduction: a value per sample (or per element).
    None,
}

/// A loss and its gradient with respect to the input.
#[derive(Clone, Debug)]
pub struct Loss<T: Scalar> {
    /// The reduced loss; with `Reduction::None`, the sum of `values`.
    pub value: T,
    /// With `Reduction::None`, per sample (1, N) or per element (like the input);
    /// otherwise (1, 1) holding `value`.
    pub values: DMatrix<T>,
    /// The gradient of `value` with respect to the input, shaped like the input.
    pub grad: DMatrix<T>,
}

impl<T: Scalar> Loss<T> {
    /// The gradient of `Σ values ∘ upstream` (the chain rule through an unreduced loss).
    pub fn weighted_grad(&self, upstream: &DMatrix<T>) -> Result<DMatrix<T>> {
        ensure!(
            upstream.shape() == self.values.shape(),
            "the upstream gradient is {:?} but the loss values are {:?}",
            upstream.shape(),
            self.values.shape()
        );
        let mut grad = self.grad.clone();
        if upstream.shape() == grad.shape() {
            grad.component_mul_assign(upstream);
        } else {
            for (mut column, w) in grad.column_iter_mut().zip(upstream.iter().cycle()) {
                column *= *w;
            }
        }
        Ok(grad)
    }

    fn reduced(value: T, grad: DMatrix<T>) -> Loss<T> {
        Loss {
            value,
            values: DMatrix::from_element(1, 1, value),
            grad,
        }
    }
}

/// Log-softmax down each column, stable for large logits (log-sum-exp).
pub fn log_softmax<T: Scalar>(logits: &DMatrix<T>) -> DMatrix<T> {
    let mut out = logits.clone();
    let classes = out.nrows();
    if classes == 0 {
        return out;
    }
    // On each column's slice, with the exponential that vectorises: over nalgebra's
    // column iterators with libm's `exp`, cross-entropy took 5% of the Shakespeare
    // example's training step (65 classes, 6400 samples).
    for column in out.as_mut_slice().chunks_exact_mut(classes) {
        let max = max_in_lanes(column);
        let lse = max + sum_of_exp_below(column, max).ln();
        for v in column.iter_mut() {
            *v -= lse;
        }
    }
    out
}

/// Σ e^(v − max) over a column (see `fold_in_lanes`).
fn sum_of_exp_below<T: Scalar>(column: &[T], max: T) -> T {
    fold_in_lanes(column, T::zero(), |acc, v| acc + (v - max).fast_exp(), plus)
}

/// Σ v over a column (see `fold_in_lanes`).
fn sum_in_lanes<T: Scalar>(column: &[T]) -> T {
    fold_in_lanes(column, T::zero(), plus, plus)
}

fn plus<T: Scalar>(a: T, b: T) -> T {
    a + b
}

/// The largest value of a non-empty column (see `fold_in_lanes`); a NaN first value
/// makes it NaN, as a running maximum from the first value would.
fn max_in_lanes<T: Scalar>(column: &[T]) -> T {
    let larger = |max: T, v: T| if v > max { v } else { max };
    fold_in_lanes(column, column[0], larger, larger)
}

/// `step` folded over a column in eight partial results, one per lane of eight
/// values, and the last values into a ninth; `combine` then folds the partial results
/// into one. So the loop vectorises: a single running result would chain every step
/// on the one before (65 dependent additions or comparisons for a column of 65
/// classes). With one running result each, the maximum and the gradient's column sum
/// made cross-entropy over 65 × 6400 logits take 2.1-2.3 ms (session 25).
#[inline(always)]
fn fold_in_lanes<T: Scalar>(
    column: &[T],
    start: T,
    step: impl Fn(T, T) -> T,
    combine: impl Fn(T, T) -> T,
) -> T {
    let mut lanes = [start; 8];
    let mut chunks = column.chunks_exact(lanes.len());
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = step(*lane, v);
        }
    }
    let rest = chunks
        .remainder()
        .iter()
        .fold(start, |acc, &v| step(acc, v));
    lanes.iter().fold(rest, |acc, &lane| combine(acc, lane))
}

/// The gradient of a loss with respect to the logits, from its gradient with respect to
/// `log_probs = log_softmax(logits)`: `d_logits = d − softmax · Σ d` per column. With
/// [`nll_loss`] this is the backward of PyTorch's `log_softmax` + `NLLLoss` pair.
pub fn log_softmax_backward<T: Scalar>(
    log_probs: &DMatrix<T>,
    d_log_probs: &DMatrix<T>,
) -> Result<DMatrix<T>> {
    ensure!(
        log_probs.shape() == d_log_probs.shape(),
        "log_softmax_backward: the gradient is {:?} but the log-probabilities are {:?}",
        d_log_probs.shape(),
        log_probs.shape()
    );
    let mut d_logits = d_log_probs.clone();
    let classes = d_logits.nrows().max(1);
    let columns = d_logits
        .as_mut_slice()
        .chunks_exact_mut(classes)
        .zip(log_probs.as_slice().chunks_exact(classes));
    for (column, lp) in columns {
        let total = sum_in_lanes(column);
        for (d, &l) in column.iter_mut().zip(lp) {
            *d -= l.fast_exp() * total;
        }
    }
    Ok(d_logits)
}

/// Softmax down each column.
pub fn softmax<T: Scalar>(logits: &DMatrix<T>) -> DMatrix<T> {
    log_softmax(logits).map(|v| v.fast_exp())
}

/// Options of [`cross_entropy`] and [`nll_loss`], with PyTorch's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassLoss<T> {
    /// A weight per class.
    pub weight: Option<Vec<T>>,
    /// Samples with this target count for nothing (PyTorch: -100).
    pub ignore_index: i64,
    /// Cross-entropy only: the target mixes this much of the uniform distribution.
    pub label_smoothing: f64,
    /// Mean, sum or none.
    pub reduction: Reduction,
}

impl<T> Default for ClassLoss<T> {
    fn default() -> Self {
        ClassLoss {
            weight: None,
            ignore_index: -100,
            label_smoothing: 0.0,
            reduction: Reduction::Mean,
        }
    }
}

/// Cross-entropy of logits (C, N) against class indices (N): log-softmax, then NLL,
/// with class weights, `ignore_index` and label smoothing as PyTorch defines them (the
/// weighted mean divides by the summed weights of the targets not ignored).
pub fn cross_entropy<T: Scalar>(
    logits: &DMatrix<T>,
    targets: &[i64],
    options: &ClassLoss<T>,
) -> Result<Loss<T>> {
    ensure!(
        (0.0..=1.0).contains(&options.label_smoothing),
        "`label_smoothing` must be in [0, 1], but is {}",
        options.label_smoothing
    );
    let log_probs = log_softmax(logits);
    class_loss(&log_probs, targets, options, true)
}

/// Negative log-likelihood of log-probabilities (C, N) against class indices (N), with
/// class weights and `ignore_index` (no label smoothing).
pub fn nll_loss<T: Scalar>(
    log_probs: &DMatrix<T>,
    targets: &[i64],
    options: &ClassLoss<T>,
) -> Result<Loss<T>> {
    ensure!(
        options.label_smoothing == 0.0,
        "nll_loss has no label smoothing; use cross_entropy"
    );
    class_loss(log_probs, targets, options, false)
}

/// Both class losses are linear in the log-probabilities: L = Σ a[c, n] · lp[c, n]. The
/// gradient through log-softmax is then a[k, n] - softmax[k, n] · Σ_c a[c, n].
fn class_loss<T: Scalar>(
    log_probs: &DMatrix<T>,
    targets: &[i64],
    options: &ClassLoss<T>,
    through_softmax: bool,
) -> Result<Loss<T>> {
    let (classes, n) = log_probs.shape();
    ensure!(
        targets.len() == n,
        "{n} samples (columns) but {} targets",
        targets.len()
    );
    let weight: Vec<T> = match &options.weight {
        Some(w) => {
            ensure!(
                w.len() == classes,
                "{} class weights for {classes} classes",
                w.len()
            );
            w.clone()
        }
        None => vec![T::one(); classes],
    };
    let mut kept = Vec::with_capacity(n);
    for (i, &t) in targets.iter().enumerate() {
        if t == options.ignore_index {
            kept.push(None);
        } else if t < 0 || t as usize >= classes {
            return Err(Error::new(format!(
                "target {t} of sample {i} is not a class in 0..{classes} (nor `ignore_index` {})",
                options.ignore_index
            )));
        } else {
            kept.push(Some(t as usize));
        }
    }
    let eps = options.label_smoothing;
    let smooth = T::of(eps / classes as f64);
    let keep = T::of(1.0 - eps);
    // Per sample: the NLL term and the smoothing term, unreduced.
    let mut nll = vec![T::zero(); n];
    let mut smoothing = vec![T::zero(); n];
    for (i, target) in kept.iter().enumerate() {
        if let Some(t) = *target {
            nll[i] = -weight[t] * log_probs[(t, i)];
            if eps > 0.0 {
                smoothing[i] =
                    -(0..classes).fold(T::zero(), |acc, c| acc + weight[c] * log_probs[(c, i)]);
            }
        }
    }
    let denominator = kept
        .iter()
        .flatten()
        .fold(T::zero(), |acc, &t| acc + weight[t]);
    let scale = match options.reduction {
        Reduction::Mean => T::one() / denominator,
        Reduction::Sum | Reduction::None => T::one(),
    };
    let per_sample: Vec<T> = (0..n)
        .map(|i| keep * nll[i] + smooth * smoothing[i])
        .collect();
    let mut grad = DMatrix::zeros(classes, n);
    // (With no classes every target was ignored: there is nothing to write.)
    let columns = grad
        .as_mut_slice()
        .chunks_exact_mut(classes.max(1))
        .zip(log_probs.as_slice().chunks_exact(classes.max(1)));
    for (target, (column, lp)) in kept.iter().zip(columns) {
        let Some(t) = *target else { continue };
        column[t] -= keep * weight[t] * scale;
        if eps > 0.0 {
            for (g, &w) in column.iter_mut().zip(&weight) {
                *g -= smooth * w * scale;
            }
        }
        if through_softmax {
            let total = sum_in_lanes(column);
            for (g, &l) in column.iter_mut().zip(lp) {
                *g -= l.fast_exp() * total;
            }
        }
    }
    let sum = per_sample.iter().fold(T::zero(), |acc, v| acc + *v);
    Ok(match options.reduction {
        Reduction::None => Loss {
            value: sum,
            values: DMatrix::from_row_slice(1, n, &per_sample),
            grad,
        },
        Reduction::Sum => Loss::reduced(sum, grad),
        Reduction::Mean => Loss::reduced(sum * scale, grad),
    })
}

/// Mean squared error `(input - target)²`, any shape.
pub fn mse_loss<T: Scalar>(
    input: &DMatrix<T>,
    target: &DMatrix<T>,
    reduction: Reduction,
) -> Result<Loss<T>> {
    ensure!(
        input.shape() == target.shape(),
        "mse_loss: input is {:?} but target is {:?}; they must have the same shape",
        input.shape(),
        target.shape()
    );
    let diff = input - target;
    let elementwise = diff.map(|d| d * d);
    Ok(elementwise_loss(elementwise, diff * T::of(2.0), reduction))
}

/// Binary cross-entropy of logits against targets in [0, 1], any shape:
/// `max(x, 0) - x·y + log(1 + e^-|x|)`, stable for large logits.
pub fn bce_with_logits<T: Scalar>(
    logits: &DMatrix<T>,
    target: &DMatrix<T>,
    reduction: Reduction,
) -> Result<Loss<T>> {
    ensure!(
        logits.shape() == target.shape(),
        "bce_with_logits: logits are {:?} but targets are {:?}; they must have the same shape",
        logits.shape(),
        target.shape()
    );
    let elementwise = logits.zip_map(target, |x, y| {
        let positive = if x > T::zero() { x } else { T::zero() };
        positive - x * y + (-x.abs()).exp().ln_1p()
    });
    let grad = logits.zip_map(target, |x, y| crate::math::sigmoid(x) - y);
    Ok(elementwise_loss(elementwise, grad, reduction))
}

/// Reduces a loss whose elements and their derivatives are given.
fn elementwise_loss<T: Scalar>(
    elementwise: DMatrix<T>,
    derivative: DMatrix<T>,
    reduction: Reduction,
) -> Loss<T> {
    let sum = elementwise.iter().fold(T::zero(), |acc, v| acc + *v);
    match reduction {
        Reduction::None => Loss {
            value: sum,
            values: elementwise,
            grad: derivative,
        },
        Reduction::Sum => Loss::reduced(sum, derivative),
        Reduction::Mean => {
            let count = T::of(elementwise.len().max(1) as f64);
            Loss::reduced(sum / count, derivative / count)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mse_value_and_gradient() {
        let input = DMatrix::from_row_slice(2, 2, &[1.0, 2.0, 3.0, 4.0]);
        let target = DMatrix::from_row_slice(2, 2, &[1.0, 0.0, 0.0, 4.0]);
        let mean = mse_loss(&input, &target, Reduction::Mean).unwrap();
        assert_eq!(mean.value, (4.0 + 9.0) / 4.0);
        assert_eq!(
            mean.grad,
            DMatrix::from_row_slice(2, 2, &[0.0, 1.0, 1.5, 0.0])
        );
        let sum = mse_loss(&input, &target, Reduction::Sum).unwrap();
        assert_eq!(sum.value, 13.0);
        let err = mse_loss(&input, &DMatrix::zeros(3, 2), Reduction::Sum).unwrap_err();
        assert!(
            err.to_string().contains("(2, 2)") && err.to_string().contains("(3, 2)"),
            "{err}"
        );
    }

    #[test]
    fn log_softmax_then_nll_is_cross_entropy() {
        // 21 classes: two lanes' worth of eight and a remainder in every column's sums.
        let logits = DMatrix::from_fn(21, 3, |i, j| ((i * 3 + j) as f64 * 0.7).sin() * 2.0);
        let targets = [1, 13, 20];
        let log_probs = log_softmax(&logits);
        let nll = nll_loss(&log_probs, &targets, &ClassLoss::default()).unwrap();
        let d_logits = log_softmax_backward(&log_probs, &nll.grad).unwrap();
        let ce = cross_entropy(&logits, &targets, &ClassLoss::default()).unwrap();
        assert!((nll.value - ce.value).abs() < 1e-12);
        assert!((d_logits - ce.grad).amax() < 1e-12);
        let err = log_softmax_backward(&log_probs, &DMatrix::zeros(21, 2)).unwrap_err();
        assert!(err.to_string().contains("(21, 2)"), "{err}");
    }

    /// Against log-sum-exp and softmax written out in f64 with libm's `exp`, over 21
    /// classes (two blocks of the eight partial sums and a remainder) and logits from -40
    /// to 40: f64 to rounding, f32 (whose exponential is the polynomial) to its rounding.
    #[test]
    fn cross_entropy_matches_the_formula_in_both_precisions() {
        let (classes, samples) = (21, 9);
        // Values that f32 holds exactly, so that both precisions see the same logits.
        let logit =
            |i: usize, j: usize| f64::from((((i * 7 + j * 13) as f64 * 0.37).sin() * 40.0) as f32);
        let targets: Vec<i64> = (0..samples as i64).map(|j| (j * 5) % 21).collect();
        let (mut loss, mut grad) = (0.0, DMatrix::<f64>::zeros(classes, samples));
        for j in 0..samples {
            let column: Vec<f64> = (0..classes).map(|i| logit(i, j)).collect();
            let max = column.iter().cloned().fold(f64::MIN, f64::max);
            let lse = max + column.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            let t = targets[j] as usize;
            loss += (lse - column[t]) / samples as f64;
            for i in 0..classes {
                let target = if i == t { 1.0 } else { 0.0 };
                grad[(i, j)] = ((column[i] - lse).exp() - target) / samples as f64;
            }
        }
        let exact = cross_entropy(
            &DMatrix::from_fn(classes, samples, logit),
            &targets,
            &ClassLoss::default(),
        )
        .unwrap();
        assert!((exact.value - loss).abs() < 1e-12 * loss, "{}", exact.value);
        assert!((&exact.grad - &grad).amax() < 1e-15, "{}", exact.grad);
        let fast = cross_entropy(
            &DMatrix::from_fn(classes, samples, |i, j| logit(i, j) as f32),
            &targets,
            &ClassLoss::default(),
        )
        .unwrap();
        assert!(
            (f64::from(fast.value) - loss).abs() < 1e-6 * loss,
            "{} against {loss}",
            fast.value
        );
        let worst = fast
            .grad
            .iter()
            .zip(grad.iter())
            .map(|(&f, &e)| (f64::from(f) - e).abs())
            .fold(0.0, f64::max);
        // f32 rounds log-sum-exp (about 40 here) to 2.4e-6, which moves every
        // probability by as much, relatively, and each gradient (at most 1/9) with it.
        assert!(worst < 1e-6, "{worst:e}");
    }

    #[test]
    fn huge_logits_do_not_overflow() {
        let logits = DMatrix::from_column_slice(3, 1, &[1000.0f32, -1000.0, 999.0]);
        let loss = cross_entropy(&logits, &[2], &ClassLoss::default()).unwrap();
        // log-sum-exp = 1000 + ln(1 + e^-1), so the loss is 1 + ln(1 + e^-1).
        assert!(
            (loss.value - (1.0 + (1.0 + (-1.0f32).exp()).ln())).abs() < 1e-4,
            "{}",
            loss.value
        );
        assert!(loss.grad.iter().all(|g| g.is_finite()));
        let bce = bce_with_logits(
            &DMatrix::from_element(1, 1, 500.0f32),
            &DMatrix::from_element(1, 1, 0.0),
            Reduction::Sum,
        )
        .unwrap();
        assert_eq!(bce.value, 500.0);
    }

    #[test]
    fn a_target_outside_the_classes_is_an_error() {
        let logits = DMatrix::<f64>::zeros(3, 2);
        let err = cross_entropy(&logits, &[0, 3], &ClassLoss::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("target 3 of sample 1") && err.contains("0..3"),
            "{err}"
        );
        assert!(cross_entropy(&logits, &[0], &ClassLoss::default())
            .unwrap_err()
            .to_string()
            .contains("2 samples"));
    }
}
