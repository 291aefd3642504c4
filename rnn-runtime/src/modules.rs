//! Modules around the recurrent layers: `Linear`, `Embedding`, `Dropout`, and sampling
//! from logits. Each has a forward pass, a backward pass returning its gradients (named
//! as its parameters) and the input's, and PyTorch's parameter names and defaults.
//! Layout: features down the columns, one column per sample.

use nalgebra::{DMatrix, DVector};

use crate::recurrent::Mode;
use crate::scalar::{gemm, Strided};
use crate::{ensure, Error, ParamMut, ParamRef, Parameters, Result, Rng, Scalar};

/// `torch.nn.Linear`: `y = W x + b`, `weight` (out, in).
#[derive(Clone, Debug, PartialEq)]
pub struct Linear<T> {
    /// (out_features, in_features).
    pub weight: DMatrix<T>,
    /// (out_features), when the layer has a bias.
    pub bias: Option<DVector<T>>,
}

/// Gradients of a [`Linear`]'s parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearGrads<T> {
    /// Like `weight`.
    pub weight: DMatrix<T>,
    /// Like `bias`.
    pub bias: Option<DVector<T>>,
}

impl<T: Scalar> Linear<T> {
    /// Weights and bias from U(-1/√in, 1/√in), as PyTorch initialises them.
    pub fn new(in_features: usize, out_features: usize, bias: bool, rng: &mut Rng) -> Linear<T> {
        let bound = if in_features == 0 {
            0.0
        } else {
            1.0 / (in_features as f64).sqrt()
        };
        let mut draw = || T::of(rng.range(-bound, bound));
        let weight = DMatrix::from_fn(out_features, in_features, |_, _| draw());
        let bias = bias.then(|| DVector::from_fn(out_features, |_, _| draw()));
        Linear { weight, bias }
    }

    /// (out, N) from (in, N).
    pub fn forward(&self, input: &DMatrix<T>) -> Result<DMatrix<T>> {
        ensure!(
            input.nrows() == self.weight.ncols(),
            "Linear: the input has {} features but the layer takes {} (input is {:?})",
            input.nrows(),
            self.weight.ncols(),
            input.shape()
        );
        let mut out = product((&self.weight, false), (input, false));
        if let Some(bias) = &self.bias {
            for mut column in out.column_iter_mut() {
                column += bias;
            }
        }
        Ok(out)
    }

    /// The parameters' gradients and the input's, from the output's gradient.
    pub fn backward(
        &self,
        input: &DMatrix<T>,
        d_output: &DMatrix<T>,
    ) -> Result<(LinearGrads<T>, DMatrix<T>)> {
        let mut grads = self.zero_grads();
        let d_input = self.backward_into(input, d_output, &mut grads)?;
        Ok((grads, d_input))
    }

    /// Zero gradients shaped as the parameters, for
    /// [`backward_into`](Self::backward_into) to add into, kept from pass to pass.
    pub fn zero_grads(&self) -> LinearGrads<T> {
        LinearGrads {
            weight: DMatrix::zeros(self.weight.nrows(), self.weight.ncols()),
            bias: self.bias.as_ref().map(|b| DVector::zeros(b.len())),
        }
    }

    /// [`backward`](Self::backward), adding the parameters' gradients into `grads` (as
    /// PyTorch adds into each `.grad`) instead of returning fresh ones; returns the
    /// input's gradient.
    pub fn backward_into(
        &self,
        input: &DMatrix<T>,
        d_output: &DMatrix<T>,
        grads: &mut LinearGrads<T>,
    ) -> Result<DMatrix<T>> {
        ensure!(
            d_output.shape() == (self.weight.nrows(), input.ncols()),
            "Linear: the output gradient is {:?} but the output is {:?}",
            d_output.shape(),
            (self.weight.nrows(), input.ncols())
        );
        let bias_len = |bias: &Option<DVector<T>>| bias.as_ref().map(DVector::len);
        ensure!(
            grads.weight.shape() == self.weight.shape()
                && bias_len(&grads.bias) == bias_len(&self.bias),
            "Linear: the gradients given are for a weight of {:?} and a bias of {:?}, but the layer has {:?} and {:?}",
            grads.weight.shape(),
            bias_len(&grads.bias),
            self.weight.shape(),
            bias_len(&self.bias)
        );
        product_into(
            (d_output, false),
            (input, true),
            T::one(),
            &mut grads.weight,
        );
        if let Some(bias) = &mut grads.bias {
            for column in d_output.column_iter() {
                *bias += column;
            }
        }
        Ok(product((&self.weight, true), (d_output, false)))
    }
}

/// `a · b`, each read transposed in place where asked, by the crate's strided product.
/// nalgebra's `transpose()` copies value by value first (in the Shakespeare example's
/// training step, that copy took as long as the product), its `tr_mul` takes a dot
/// product per value, and a view with swapped strides would be unsound in its
/// small-matrix path (nalgebra issue #1616).
fn product<T: Scalar>(a: (&DMatrix<T>, bool), b: (&DMatrix<T>, bool)) -> DMatrix<T> {
    let rows = if a.1 { a.0.ncols() } else { a.0.nrows() };
    let cols = if b.1 { b.0.nrows() } else { b.0.ncols() };
    let mut c = DMatrix::zeros(rows, cols);
    product_into(a, b, T::zero(), &mut c);
    c
}

/// `c = a · b + beta · c`, as [`product`] reads `a` and `b`; `c` is already the
/// product's shape (the callers' checks make it so, and `gemm` asserts it).
fn product_into<T: Scalar>(
    (a, a_transposed): (&DMatrix<T>, bool),
    (b, b_transposed): (&DMatrix<T>, bool),
    beta: T,
    c: &mut DMatrix<T>,
) {
    let view = |m: &DMatrix<T>, transposed: bool| {
        let whole = Strided::column_major(m.nrows(), 0, 0, m.nrows(), m.ncols());
        if transposed {
            whole.t()
        } else {
            whole
        }
    };
    let (av, bv, cv) = (view(a, a_transposed), view(b, b_transposed), view(c, false));
    gemm(
        a.as_slice(),
        av,
        b.as_slice(),
        bv,
        beta,
        c.as_mut_slice(),
        cv,
    );
}

/// `torch.nn.Embedding`: a column of `weight` per index. PyTorch's weight
/// (num_embeddings, dim) is (dim, num_embeddings) here.
#[derive(Clone, Debug, PartialEq)]
pub struct Embedding<T> {
    /// (embedding_dim, num_embeddings): column i embeds index i.
    pub weight: DMatrix<T>,
    /// This index embeds to zeros and its embedding gets no gradient.
    pub padding_idx: Option<usize>,
}

/// The gradient of an [`Embedding`]'s weight.
#[derive(Clone, Debug, PartialEq)]
pub struct EmbeddingGrads<T> {
    /// Like `weight`.
    pub weight: DMatrix<T>,
}

impl<T: Scalar> Embedding<T> {
    /// Embeddings from N(0, 1), as PyTorch initialises them; the padding index's is zero.
    pub fn new(
        num_embeddings: usize,
        embedding_dim: usize,
        padding_idx: Option<usize>,
        rng: &mut Rng,
    ) -> Result<Embedding<T>> {
        if let Some(p) = padding_idx {
            ensure!(
                p < num_embeddings,
                "padding_idx {p} is not an index of {num_embeddings} embeddings"
            );
        }
        let mut weight =
            DMatrix::from_fn(embedding_dim, num_embeddings, |_, _| T::of(rng.normal()));
        if let Some(p) = padding_idx {
            weight.column_mut(p).fill(T::zero());
        }
        Ok(Embedding {
            weight,
            padding_idx,
        })
    }

    /// (dim, ids.len()): the embedding of each index.
    pub fn forward(&self, ids: &[usize]) -> Result<DMatrix<T>> {
        self.check_ids(ids)?;
        Ok(DMatrix::from_fn(self.weight.nrows(), ids.len(), |i, j| {
            self.weight[(i, ids[j])]
        }))
    }

    /// An error naming the first index past the table.
    fn check_ids(&self, ids: &[usize]) -> Result<()> {
        let n = self.weight.ncols();
        match ids.iter().enumerate().find(|(_, &id)| id >= n) {
            Some((at, id)) => Err(Error::new(format!(
                "Embedding: index {id} at position {at} is not below num_embeddings {n}"
            ))),
            None => Ok(()),
        }
    }

    /// The weight's gradient from the output's; the padding index gets none.
    pub fn backward(&self, ids: &[usize], d_output: &DMatrix<T>) -> Result<EmbeddingGrads<T>> {
        let mut grads = self.zero_grads();
        self.backward_into(ids, d_output, &mut grads)?;
        Ok(grads)
    }

    /// A zero gradient shaped as the weight, for
    /// [`backward_into`](Self::backward_into) to add into, kept from pass to pass.
    pub fn zero_grads(&self) -> EmbeddingGrads<T> {
        EmbeddingGrads {
            weight: DMatrix::zeros(self.weight.nrows(), self.weight.ncols()),
        }
    }

    /// [`backward`](Self::backward), adding the weight's gradient into `grads` (as
    /// PyTorch adds into `.grad`) instead of returning a fresh one.
    pub fn backward_into(
        &self,
        ids: &[usize],
        d_output: &DMatrix<T>,
        grads: &mut EmbeddingGrads<T>,
    ) -> Result<()> {
        ensure!(
            d_output.shape() == (self.weight.nrows(), ids.len()),
            "Embedding: the output gradient is {:?} but the output is {:?}",
            d_output.shape(),
            (self.weight.nrows(), ids.len())
        );
        ensure!(
            grads.weight.shape() == self.weight.shape(),
            "Embedding: the gradient given is {:?} but the weight is {:?}",
            grads.weight.shape(),
            self.weight.shape()
        );
        self.check_ids(ids)?;
        for (j, &id) in ids.iter().enumerate() {
            if Some(id) != self.padding_idx {
                let mut column = grads.weight.column_mut(id);
                column += d_output.column(j);
            }
        }
        Ok(())
    }
}

/// `torch.nn.Dropout`: in training, zeroes each element with probability `p` and
/// scales the others by 1 / (1 - p); in evaluation, the identity.
#[derive(Clone, Debug, PartialEq)]
pub struct Dropout {
    /// The probability of zeroing an element.
    pub p: f64,
}

impl Dropout {
    /// Dropout with probability `p` in [0, 1).
    pub fn new(p: f64) -> Result<Dropout> {
        ensure!(
            (0.0..1.0).contains(&p),
            "dropout probability must be in [0, 1), but is {p}"
        );
        Ok(Dropout { p })
    }

    /// The output and the mask that made it (`None` in evaluation).
    pub fn forward<T: Scalar>(
        &self,
        input: &DMatrix<T>,
        mode: Mode<'_>,
    ) -> (DMatrix<T>, Option<DMatrix<T>>) {
        match mode {
            Mode::Train(rng) if self.p > 0.0 => {
                let keep = T::of(1.0 / (1.0 - self.p));
                let mask = DMatrix::from_fn(input.nrows(), input.ncols(), |_, _| {
                    if rng.uniform() < self.p {
                        T::zero()
                    } else {
                        keep
                    }
                });
                (input.component_mul(&mask), Some(mask))
            }
            _ => (input.clone(), None),
        }
    }

    /// The input's gradient from the output's, through the forward pass's mask.
    pub fn backward<T: Scalar>(
        &self,
        mask: Option<&DMatrix<T>>,
        d_output: &DMatrix<T>,
    ) -> DMatrix<T> {
        match mask {
            Some(mask) => d_output.component_mul(mask),
            None => d_output.clone(),
        }
    }
}

/// How to pick the next symbol from logits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampling {
    /// The most likely.
    Greedy,
    /// From softmax(logits / temperature).
    Temperature(f64),
    /// From the `k` most likely, at a temperature.
    TopK {
        /// How many candidates.
        k: usize,
        /// The temperature among them.
        temperature: f64,
    },
}

/// An index drawn from `logits` as `how` says.
pub fn sample<T: Scalar>(logits: &[T], how: Sampling, rng: &mut Rng) -> Result<usize> {
    ensure!(!logits.is_empty(), "cannot sample from empty logits");
    let values: Vec<f64> = logits.iter().map(|v| v.as_f64()).collect();
    ensure!(
        values.iter().all(|v| !v.is_nan()),
        "cannot sample from logits containing NaN"
    );
    let argmax = |candidates: &[usize]| {
        *candidates
            .iter()
            .max_by(|&&a, &&b| values[a].total_cmp(&values[b]))
            .expect("non-empty")
    };
    let all: Vec<usize> = (0..values.len()).collect();
    let (candidates, temperature) = match how {
        Sampling::Greedy => return Ok(argmax(&all)),
        Sampling::Temperature(t) => (all, t),
        Sampling::TopK { k, temperature } => {
            ensure!(k > 0, "top-k sampling needs k > 0");
            let mut sorted = all;
            sorted.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
            sorted.truncate(k);
            (sorted, temperature)
        }
    };
    ensure!(
        temperature >= 0.0,
        "the temperature must not be negative, but is {temperature}"
    );
    if temperature == 0.0 {
        return Ok(argmax(&candidates));
    }
    let max = candidates
        .iter()
        .map(|&i| values[i])
        .fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = candidates
        .iter()
        .map(|&i| ((values[i] - max) / temperature).exp())
        .collect();
    let mut draw = rng.uniform() * weights.iter().sum::<f64>();
    for (&i, w) in candidates.iter().zip(&weights) {
        if draw < *w {
            return Ok(i);
        }
        draw -= w;
    }
    Ok(*candidates.last().expect("non-empty"))
}

macro_rules! named {
    ($ty:ident { $($field:ident),* } optional { $($opt:ident),* }) => {
        impl<T: Scalar> Parameters<T> for $ty<T> {
            fn parameters(&self) -> Vec<ParamRef<'_, T>> {
                #[allow(unused_mut)]
                let mut all = vec![$(ParamRef::new(stringify!($field), self.$field.as_slice(), self.$field.shape())),*];
                $(if let Some(p) = &self.$opt { all.push(ParamRef::new(stringify!($opt), p.as_slice(), p.shape())); })*
                all
            }

            fn parameters_mut(&mut self) -> Vec<ParamMut<'_, T>> {
                #[allow(unused_mut)]
                let mut all = vec![$({ let shape = self.$field.shape(); ParamMut::new(stringify!($field), self.$field.as_mut_slice(), shape) }),*];
                $(if let Some(p) = &mut self.$opt { let shape = p.shape(); all.push(ParamMut::new(stringify!($opt), p.as_mut_slice(), shape)); })*
                all
            }
        }
    };
}

named!(Linear { weight } optional { bias });
named!(LinearGrads { weight } optional { bias });
named!(Embedding { weight } optional {});
named!(EmbeddingGrads { weight } optional {});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_gradients_match_finite_differences() {
        let mut rng = Rng::seed(3);
        let mut layer: Linear<f64> = Linear::new(3, 2, true, &mut rng);
        let x = DMatrix::from_fn(3, 4, |_, _| rng.range(-1.0, 1.0));
        let w = DMatrix::from_fn(2, 4, |_, _| rng.range(-1.0, 1.0));
        let (grads, dx) = layer.backward(&x, &w).unwrap();
        let loss = |l: &Linear<f64>, x: &DMatrix<f64>| l.forward(x).unwrap().dot(&w);
        let eps = 1e-6;
        for i in 0..layer.weight.len() {
            layer.weight[i] += eps;
            let plus = loss(&layer, &x);
            layer.weight[i] -= 2.0 * eps;
            let minus = loss(&layer, &x);
            layer.weight[i] += eps;
            assert!((grads.weight[i] - (plus - minus) / (2.0 * eps)).abs() < 1e-8);
        }
        let mut x2 = x.clone();
        for i in 0..x.len() {
            x2[i] += eps;
            let plus = loss(&layer, &x2);
            x2[i] -= 2.0 * eps;
            let minus = loss(&layer, &x2);
            x2[i] += eps;
            assert!((dx[i] - (plus - minus) / (2.0 * eps)).abs() < 1e-8);
        }
        assert_eq!(grads.bias.unwrap(), w.column_sum());
        assert!(layer
            .forward(&DMatrix::zeros(4, 1))
            .unwrap_err()
            .to_string()
            .contains("4 features but the layer takes 3"));
    }

    /// Above 5 rows and columns nalgebra hands the products to matrixmultiply, with the
    /// transposed views' strides: the gradients are still the textbook products.
    #[test]
    fn linear_gradients_of_larger_sizes_are_the_transposed_products() {
        let mut rng = Rng::seed(8);
        let layer: Linear<f64> = Linear::new(7, 9, false, &mut rng);
        let x = DMatrix::from_fn(7, 11, |_, _| rng.range(-1.0, 1.0));
        let d_out = DMatrix::from_fn(9, 11, |_, _| rng.range(-1.0, 1.0));
        let (grads, dx) = layer.backward(&x, &d_out).unwrap();
        let close = |a: &DMatrix<f64>, b: &DMatrix<f64>| {
            assert_eq!(a.shape(), b.shape());
            assert!((a - b).amax() < 1e-12, "{a} against {b}");
        };
        close(&grads.weight, &(&d_out * x.transpose()));
        close(&dx, &(layer.weight.transpose() * &d_out));
        assert!(grads.bias.is_none());
    }

    /// Kept gradients: into zeros, `backward`'s to the bit (and the same input
    /// gradient); a second pass adds its own; gradients of another shape, and an index
    /// past the table, are errors that name them.
    #[test]
    fn linear_and_embedding_gradients_add_into_kept_ones() {
        let mut rng = Rng::seed(12);
        let layer: Linear<f64> = Linear::new(7, 9, true, &mut rng);
        let x = DMatrix::from_fn(7, 11, |_, _| rng.range(-1.0, 1.0));
        let d = [0, 1].map(|_| DMatrix::from_fn(9, 11, |_, _| rng.range(-1.0, 1.0)));
        let fresh = d.clone().map(|d| layer.backward(&x, &d).unwrap());
        let mut kept = layer.zero_grads();
        let d_input = layer.backward_into(&x, &d[0], &mut kept).unwrap();
        assert_eq!(kept, fresh[0].0);
        assert_eq!(d_input, fresh[0].1);
        layer.backward_into(&x, &d[1], &mut kept).unwrap();
        let sum = &fresh[0].0.weight + &fresh[1].0.weight;
        assert!((&kept.weight - sum).amax() < 1e-12);
        let sum = fresh[0].0.bias.as_ref().unwrap() + fresh[1].0.bias.as_ref().unwrap();
        assert!((kept.bias.as_ref().unwrap() - sum).amax() < 1e-12);
        let no_bias: Linear<f64> = Linear::new(7, 9, false, &mut rng);
        let m = no_bias
            .backward_into(&x, &d[0], &mut kept)
            .unwrap_err()
            .to_string();
        assert!(m.contains("Some(9)") && m.contains("None"), "{m}");

        let emb: Embedding<f64> = Embedding::new(5, 3, Some(4), &mut rng).unwrap();
        let ids = [0, 2, 2, 4];
        let d = [0, 1].map(|_| DMatrix::from_fn(3, 4, |_, _| rng.range(-1.0, 1.0)));
        let fresh = d.clone().map(|d| emb.backward(&ids, &d).unwrap());
        let mut kept = emb.zero_grads();
        emb.backward_into(&ids, &d[0], &mut kept).unwrap();
        assert_eq!(kept, fresh[0]);
        emb.backward_into(&ids, &d[1], &mut kept).unwrap();
        assert!((&kept.weight - (&fresh[0].weight + &fresh[1].weight)).amax() < 1e-12);
        assert!(kept.weight.column(4).iter().all(|&g| g == 0.0));
        let m = emb
            .backward_into(
                &ids,
                &d[0],
                &mut EmbeddingGrads {
                    weight: DMatrix::zeros(3, 4),
                },
            )
            .unwrap_err()
            .to_string();
        assert!(m.contains("(3, 4)") && m.contains("(3, 5)"), "{m}");
        let m = emb.backward(&[0, 1, 5, 2], &d[0]).unwrap_err().to_string();
        assert!(m.contains("index 5 at position 2"), "{m}");
    }

    #[test]
    fn embedding_padding_gets_zeros_and_no_gradient() {
        let emb: Embedding<f64> = Embedding::new(5, 3, Some(0), &mut Rng::seed(1)).unwrap();
        let out = emb.forward(&[0, 2, 2]).unwrap();
        assert_eq!(
            out.column(0).iter().copied().collect::<Vec<_>>(),
            vec![0.0; 3]
        );
        let grads = emb
            .backward(&[0, 2, 2], &DMatrix::from_element(3, 3, 1.0))
            .unwrap();
        assert_eq!(grads.weight.column(0).sum(), 0.0);
        assert_eq!(grads.weight.column(2).sum(), 6.0);
        assert!(emb
            .forward(&[7])
            .unwrap_err()
            .to_string()
            .contains("index 7"));
    }

    #[test]
    fn sampling_follows_the_temperature() {
        let logits = [1.0f64, 2.0, 0.5];
        let mut rng = Rng::seed(9);
        assert_eq!(sample(&logits, Sampling::Greedy, &mut rng).unwrap(), 1);
        assert_eq!(
            sample(
                &logits,
                Sampling::TopK {
                    k: 1,
                    temperature: 5.0
                },
                &mut rng
            )
            .unwrap(),
            1
        );
        let mut counts = [0usize; 3];
        for _ in 0..20_000 {
            counts[sample(&logits, Sampling::Temperature(1.0), &mut rng).unwrap()] += 1;
        }
        let z: f64 = logits.iter().map(|l| l.exp()).sum();
        for (i, c) in counts.iter().enumerate() {
            let expected = logits[i].exp() / z;
            assert!((*c as f64 / 20_000.0 - expected).abs() < 0.02, "{counts:?}");
        }
        for _ in 0..100 {
            assert_ne!(
                sample(
                    &logits,
                    Sampling::TopK {
                        k: 2,
                        temperature: 1.0
                    },
                    &mut rng
                )
                .unwrap(),
                2
            );
        }
    }
}
