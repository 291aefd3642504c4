//! Checking the library against PyTorch's reference fixtures (format:
//! `tests/fixtures/README.md`): one safetensors file per case, its kind and
//! configuration in the metadata.

use std::collections::BTreeMap;
use std::path::Path;

use rnn_runtime::nalgebra::DMatrix;
use rnn_runtime::nn::{GruConfig, LstmConfig, Nonlinearity, RnnConfig, RnnOutput};
use rnn_runtime::recurrent::Mode;
use rnn_runtime::{
    load_safetensors, pack_padded_sequence, pad_packed_sequence, Error, Result, Rng, Scalar, Tensor,
};

/// A fixture: tensors (in f64, as stored) and metadata.
pub struct Fixture {
    pub name: String,
    pub tensors: BTreeMap<String, Tensor<f64>>,
    pub meta: BTreeMap<String, String>,
}

impl Fixture {
    pub fn load(path: &Path) -> Result<Fixture> {
        let (tensors, meta) = load_safetensors::<f64>(path)?;
        let name = meta.get("name").cloned().unwrap_or_else(|| {
            path.file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        });
        Ok(Fixture {
            name,
            tensors,
            meta,
        })
    }

    pub fn meta(&self, key: &str) -> Result<&str> {
        self.meta
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| Error::new(format!("metadata has no `{key}`")))
    }

    pub fn usize(&self, key: &str) -> Result<usize> {
        let value = self.meta(key)?;
        value
            .parse()
            .map_err(|_| Error::new(format!("metadata `{key}` = {value} is not a count")))
    }

    pub fn bool(&self, key: &str) -> Result<bool> {
        match self.meta(key)? {
            "true" => Ok(true),
            "false" => Ok(false),
            other => Err(Error::new(format!(
                "metadata `{key}` = {other} is not true or false"
            ))),
        }
    }

    pub fn tensor(&self, key: &str) -> Result<&Tensor<f64>> {
        self.tensors
            .get(key)
            .ok_or_else(|| Error::new(format!("no tensor `{key}`")))
    }

    pub fn has(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    /// A tensor whose last dimension is the features, in the library's layout:
    /// (..., F) row-major is (F, everything else) column-major.
    pub fn features<T: Scalar>(&self, key: &str) -> Result<DMatrix<T>> {
        let t = self.tensor(key)?;
        let features = *t
            .shape
            .last()
            .ok_or_else(|| Error::new(format!("`{key}` has no dimensions")))?;
        let columns = t.data.len().checked_div(features).unwrap_or(0);
        Ok(DMatrix::from_iterator(
            features,
            columns,
            t.data.iter().map(|v| T::of(*v)),
        ))
    }

    pub fn integers(&self, key: &str) -> Result<Vec<usize>> {
        Ok(self.tensor(key)?.data.iter().map(|v| *v as usize).collect())
    }
}

/// The error of `actual` relative to the largest magnitude of `expected`.
pub fn relative_error(actual: impl IntoIterator<Item = f64>, expected: &[f64]) -> Result<f64> {
    let actual: Vec<f64> = actual.into_iter().collect();
    if actual.len() != expected.len() {
        return Err(Error::new(format!(
            "{} values where {} were expected",
            actual.len(),
            expected.len()
        )));
    }
    let scale = expected
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs()))
        .max(f64::MIN_POSITIVE);
    Ok(actual
        .iter()
        .zip(expected)
        .fold(0.0f64, |m, (a, e)| m.max((a - e).abs()))
        / scale)
}

/// The largest relative error over named comparisons, which names the worst.
struct Worst {
    error: f64,
    what: String,
}

impl Worst {
    fn new() -> Self {
        Worst {
            error: 0.0,
            what: String::new(),
        }
    }

    fn compare<T: Scalar>(&mut self, what: &str, actual: &[T], expected: &[f64]) -> Result<()> {
        let error = relative_error(actual.iter().map(|v| v.as_f64()), expected)
            .map_err(|e| e.context(what))?;
        if error > self.error || self.what.is_empty() {
            self.error = error;
            self.what = what.to_string();
        }
        Ok(())
    }
}

/// Runs one fixture in precision `T`; the worst relative error and where it was.
pub fn check<T: Scalar>(fixture: &Fixture) -> Result<(f64, String)> {
    match fixture.meta("kind")? {
        "rnn" => check_rnn::<T>(fixture),
        "pack" => check_pack::<T>(fixture),
        other => Err(Error::new(format!("kind `{other}` is not supported yet"))),
    }
}

fn check_pack<T: Scalar>(fx: &Fixture) -> Result<(f64, String)> {
    let batch_first = fx.bool("batch_first")?;
    let padded = fx.features::<T>("padded")?;
    let lengths = fx.integers("lengths")?;
    let packed = pack_padded_sequence(&padded, &lengths, batch_first, false)?;
    for (what, ours, theirs) in [
        (
            "batch_sizes",
            packed.batch_sizes.clone(),
            fx.integers("batch_sizes")?,
        ),
        (
            "sorted_indices",
            packed.sorted_indices.clone().unwrap_or_default(),
            fx.integers("sorted_indices")?,
        ),
        (
            "unsorted_indices",
            packed.unsorted_indices.clone().unwrap_or_default(),
            fx.integers("unsorted_indices")?,
        ),
    ] {
        if ours != theirs {
            return Err(Error::new(format!(
                "{what} is {ours:?} but PyTorch has {theirs:?}"
            )));
        }
    }
    let mut worst = Worst::new();
    worst.compare("data", packed.data.as_slice(), &fx.tensor("data")?.data)?;
    // Unpacking restores every valid step.
    let (back, back_lengths) = pad_packed_sequence(&packed, batch_first, T::zero(), None)?;
    if back_lengths != lengths {
        return Err(Error::new(format!(
            "pad_packed_sequence gave lengths {back_lengths:?} for {lengths:?}"
        )));
    }
    let repacked = pack_padded_sequence(&back, &lengths, batch_first, false)?;
    worst.compare(
        "pad_packed_sequence round trip",
        repacked.data.as_slice(),
        &fx.tensor("data")?.data,
    )?;
    Ok((worst.error, worst.what))
}

fn check_rnn<T: Scalar>(fx: &Fixture) -> Result<(f64, String)> {
    let (input_size, hidden_size) = (fx.usize("input_size")?, fx.usize("hidden_size")?);
    let (num_layers, bidirectional, batch_first) = (
        fx.usize("num_layers")?,
        fx.bool("bidirectional")?,
        fx.bool("batch_first")?,
    );
    let (bias, proj_size, packed, batch) = (
        fx.bool("bias")?,
        fx.usize("proj_size")?,
        fx.bool("packed")?,
        fx.usize("batch")?,
    );
    let seq_len = fx.usize("seq_len")?;
    let mut rng = Rng::seed(0);
    let mut module = match fx.meta("mode")? {
        mode @ ("RNN_TANH" | "RNN_RELU") => {
            let nonlinearity = if mode == "RNN_TANH" {
                Nonlinearity::Tanh
            } else {
                Nonlinearity::Relu
            };
            let config = RnnConfig {
                num_layers,
                nonlinearity,
                bias,
                batch_first,
                bidirectional,
                ..RnnConfig::new(input_size, hidden_size)
            };
            config.init::<T>(&mut rng)?.layers
        }
        "LSTM" => {
            let config = LstmConfig {
                num_layers,
                bias,
                batch_first,
                bidirectional,
                proj_size,
                ..LstmConfig::new(input_size, hidden_size)
            };
            config.init::<T>(&mut rng)?.layers
        }
        "GRU" => {
            let config = GruConfig {
                num_layers,
                bias,
                batch_first,
                bidirectional,
                ..GruConfig::new(input_size, hidden_size)
            };
            config.init::<T>(&mut rng)?.layers
        }
        other => {
            return Err(Error::new(format!(
                "mode `{other}` is not RNN_TANH, RNN_RELU, LSTM or GRU"
            )))
        }
    };
    let params: BTreeMap<String, Tensor<T>> = fx
        .tensors
        .iter()
        .filter_map(|(key, t)| {
            key.strip_prefix("param.").map(|name| {
                (
                    name.to_string(),
                    Tensor {
                        shape: t.shape.clone(),
                        data: t.data.iter().map(|v| T::of(*v)).collect(),
                    },
                )
            })
        })
        .collect();
    module.load_torch_tensors(&params)?;

    let input = fx.features::<T>("input")?;
    let h0 = fx.features::<T>("h0")?;
    let c0 = if fx.has("c0") {
        Some(fx.features::<T>("c0")?)
    } else {
        None
    };
    let initial = Some((&h0, c0.as_ref()));
    let lengths = if packed {
        Some(fx.integers("lengths")?)
    } else {
        None
    };
    let mut out: RnnOutput<T> = match &lengths {
        Some(lengths) => module.forward_packed(
            &pack_padded_sequence(&input, lengths, batch_first, false)?,
            initial,
            Mode::Eval,
        )?,
        None => module.forward(&input, batch, initial, Mode::Eval)?,
    };
    // A packed output is compared padded, as PyTorch's fixture holds it.
    let unpack = |data: &DMatrix<T>| -> Result<DMatrix<T>> {
        match &lengths {
            Some(lengths) => {
                let template = pack_padded_sequence(&input, lengths, batch_first, false)?;
                Ok(pad_packed_sequence(
                    &template.with_data(data.clone()),
                    batch_first,
                    T::zero(),
                    Some(seq_len),
                )?
                .0)
            }
            None => Ok(data.clone()),
        }
    };
    let mut worst = Worst::new();
    worst.compare(
        "output",
        unpack(&out.output)?.as_slice(),
        &fx.tensor("output")?.data,
    )?;
    worst.compare("h_n", out.h_n.as_slice(), &fx.tensor("h_n")?.data)?;
    if let Some(c_n) = &out.c_n {
        worst.compare("c_n", c_n.as_slice(), &fx.tensor("c_n")?.data)?;
    }

    let w_output = fx.features::<T>("wout.output")?;
    let d_output = match &lengths {
        Some(lengths) => pack_padded_sequence(&w_output, lengths, batch_first, false)?.data,
        None => w_output,
    };
    let d_h_n = fx.features::<T>("wout.h_n")?;
    let d_c_n = if fx.has("wout.c_n") {
        Some(fx.features::<T>("wout.c_n")?)
    } else {
        None
    };
    let grads = module.backward(&mut out, Some(&d_output), Some(&d_h_n), d_c_n.as_ref())?;
    for (name, tensor) in &grads.torch {
        worst.compare(
            &format!("grad.{name}"),
            &tensor.data,
            &fx.tensor(&format!("grad.{name}"))?.data,
        )?;
    }
    worst.compare(
        "grad.input",
        unpack(&grads.input)?.as_slice(),
        &fx.tensor("grad.input")?.data,
    )?;
    worst.compare("grad.h0", grads.h_0.as_slice(), &fx.tensor("grad.h0")?.data)?;
    if let Some(c_0) = &grads.c_0 {
        worst.compare("grad.c0", c_0.as_slice(), &fx.tensor("grad.c0")?.data)?;
    }
    Ok((worst.error, worst.what))
}
