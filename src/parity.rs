//! Checking the library against PyTorch's reference fixtures (format:
//! `tests/fixtures/README.md`): one safetensors file per case, its kind and
//! configuration in the metadata.

use std::collections::BTreeMap;
use std::path::Path;

use rnn_runtime::loss::{
    bce_with_logits, cross_entropy, mse_loss, nll_loss, ClassLoss, Loss, Reduction,
};
use rnn_runtime::nalgebra::DMatrix;
use rnn_runtime::nn::{GruConfig, LstmConfig, Nonlinearity, RnnConfig, RnnOutput};
use rnn_runtime::optim::{clip_grad_norm, Adagrad, Adam, AdamW, NormType, Optimizer, RmsProp, Sgd};
use rnn_runtime::recurrent::Mode;
use rnn_runtime::ParamSet;
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

    /// A number, or `default` when the metadata does not set it.
    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.meta.get(key).map(String::as_str) {
            None => Ok(default),
            Some("Infinity") => Ok(f64::INFINITY),
            Some(value) => value
                .parse()
                .map_err(|_| Error::new(format!("metadata `{key}` = {value} is not a number"))),
        }
    }

    /// A flag, or `default` when the metadata does not set it.
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        if self.meta.contains_key(key) {
            self.bool(key)
        } else {
            Ok(default)
        }
    }

    /// A pair written as a JSON list, `[0.8, 0.99]`.
    pub fn pair_or(&self, key: &str, default: (f64, f64)) -> Result<(f64, f64)> {
        let Some(value) = self.meta.get(key) else {
            return Ok(default);
        };
        let numbers: Vec<f64> = value
            .trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .map(|n| n.trim().parse::<f64>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| {
                Error::new(format!(
                    "metadata `{key}` = {value} is not a list of numbers"
                ))
            })?;
        match numbers[..] {
            [a, b] => Ok((a, b)),
            _ => Err(Error::new(format!(
                "metadata `{key}` = {value} is not a pair"
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
        "loss" => check_loss::<T>(fixture),
        "optim" => check_optim::<T>(fixture),
        "clip" => check_clip::<T>(fixture),
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

fn reduction(fx: &Fixture) -> Result<Reduction> {
    match fx.meta("reduction")? {
        "mean" => Ok(Reduction::Mean),
        "sum" => Ok(Reduction::Sum),
        "none" => Ok(Reduction::None),
        other => Err(Error::new(format!(
            "reduction `{other}` is not mean, sum or none"
        ))),
    }
}

fn check_loss<T: Scalar>(fx: &Fixture) -> Result<(f64, String)> {
    let input = fx.features::<T>("input")?;
    let reduction = reduction(fx)?;
    let class_loss = || -> Result<ClassLoss<T>> {
        Ok(ClassLoss {
            weight: if fx.has("weight") {
                Some(
                    fx.tensor("weight")?
                        .data
                        .iter()
                        .map(|v| T::of(*v))
                        .collect(),
                )
            } else {
                None
            },
            ignore_index: fx.f64_or("ignore_index", -100.0)? as i64,
            label_smoothing: fx.f64_or("label_smoothing", 0.0)?,
            reduction,
        })
    };
    let class_targets = || -> Result<Vec<i64>> {
        Ok(fx
            .tensor("target")?
            .data
            .iter()
            .map(|v| *v as i64)
            .collect())
    };
    let loss: Loss<T> = match fx.meta("loss")? {
        "cross_entropy" => cross_entropy(&input, &class_targets()?, &class_loss()?)?,
        "nll" => nll_loss(&input, &class_targets()?, &class_loss()?)?,
        "mse" => mse_loss(&input, &fx.features::<T>("target")?, reduction)?,
        "bce_with_logits" => bce_with_logits(&input, &fx.features::<T>("target")?, reduction)?,
        other => return Err(Error::new(format!("loss `{other}` is not supported"))),
    };
    let mut worst = Worst::new();
    let grad = if reduction == Reduction::None {
        worst.compare("value", loss.values.as_slice(), &fx.tensor("value")?.data)?;
        let w = &fx.tensor("wout.value")?.data;
        let upstream = DMatrix::from_iterator(
            loss.values.nrows(),
            loss.values.ncols(),
            w.iter().map(|v| T::of(*v)),
        );
        loss.weighted_grad(&upstream)?
    } else {
        worst.compare("value", &[loss.value], &fx.tensor("value")?.data)?;
        loss.grad
    };
    worst.compare(
        "grad.input",
        grad.as_slice(),
        &fx.tensor("grad.input")?.data,
    )?;
    Ok((worst.error, worst.what))
}

fn check_optim<T: Scalar>(fx: &Fixture) -> Result<(f64, String)> {
    let lr = fx.f64_or("lr", f64::NAN)?;
    let weight_decay = fx.f64_or("weight_decay", 0.0)?;
    let mut optimizer: Box<dyn Optimizer<T>> = match fx.meta("optimizer")? {
        "SGD" => Box::new(Sgd {
            momentum: fx.f64_or("momentum", 0.0)?,
            dampening: fx.f64_or("dampening", 0.0)?,
            nesterov: fx.bool_or("nesterov", false)?,
            weight_decay,
            ..Sgd::new(lr)
        }),
        "Adam" => Box::new(Adam {
            betas: fx.pair_or("betas", (0.9, 0.999))?,
            eps: fx.f64_or("eps", 1e-8)?,
            amsgrad: fx.bool_or("amsgrad", false)?,
            weight_decay,
            ..Adam::new(lr)
        }),
        "AdamW" => Box::new(AdamW {
            betas: fx.pair_or("betas", (0.9, 0.999))?,
            eps: fx.f64_or("eps", 1e-8)?,
            amsgrad: fx.bool_or("amsgrad", false)?,
            weight_decay: fx.f64_or("weight_decay", 0.01)?,
            ..AdamW::new(lr)
        }),
        "RMSprop" => Box::new(RmsProp {
            alpha: fx.f64_or("alpha", 0.99)?,
            eps: fx.f64_or("eps", 1e-8)?,
            momentum: fx.f64_or("momentum", 0.0)?,
            centered: fx.bool_or("centered", false)?,
            weight_decay,
            ..RmsProp::new(lr)
        }),
        "Adagrad" => Box::new(Adagrad {
            lr_decay: fx.f64_or("lr_decay", 0.0)?,
            initial_accumulator_value: fx.f64_or("initial_accumulator_value", 0.0)?,
            eps: fx.f64_or("eps", 1e-10)?,
            weight_decay,
            ..Adagrad::new(lr)
        }),
        other => return Err(Error::new(format!("optimizer `{other}` is not supported"))),
    };
    let as_set = |t: &Tensor<f64>| ParamSet {
        entries: vec![(
            "p".to_string(),
            (t.data.len(), 1),
            t.data.iter().map(|v| T::of(*v)).collect(),
        )],
    };
    let mut param = as_set(fx.tensor("param.init")?);
    let mut worst = Worst::new();
    for k in 0..fx.usize("steps")? {
        optimizer.step(&mut param, &as_set(fx.tensor(&format!("grad.{k}"))?))?;
        worst.compare(
            &format!("param.{k}"),
            &param.entries[0].2,
            &fx.tensor(&format!("param.{k}"))?.data,
        )?;
    }
    Ok((worst.error, worst.what))
}

fn check_clip<T: Scalar>(fx: &Fixture) -> Result<(f64, String)> {
    let norm_type = match fx.f64_or("norm_type", 2.0)? {
        2.0 => NormType::L2,
        1.0 => NormType::L1,
        n if n.is_infinite() => NormType::Inf,
        other => {
            return Err(Error::new(format!(
                "norm type {other} is not 1, 2 or infinity"
            )))
        }
    };
    let mut grads = ParamSet {
        entries: Vec::new(),
    };
    let mut i = 0;
    while let Ok(t) = fx.tensor(&format!("grad_in.{i}")) {
        grads.entries.push((
            format!("g{i}"),
            (t.data.len(), 1),
            t.data.iter().map(|v| T::of(*v)).collect(),
        ));
        i += 1;
    }
    let total = clip_grad_norm(&mut grads, fx.f64_or("max_norm", f64::NAN)?, norm_type)?;
    let mut worst = Worst::new();
    worst.compare(
        "total_norm",
        &[T::of(total)],
        &fx.tensor("total_norm")?.data,
    )?;
    for (i, (_, _, values)) in grads.entries.iter().enumerate() {
        worst.compare(
            &format!("grad_out.{i}"),
            values,
            &fx.tensor(&format!("grad_out.{i}"))?.data,
        )?;
    }
    Ok((worst.error, worst.what))
}
