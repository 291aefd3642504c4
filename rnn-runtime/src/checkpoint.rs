//! Checkpoints: a model's parameters and its optimizer's state in one safetensors file,
//! with metadata (the step, the configuration). Written atomically, so an interrupted
//! save leaves the previous checkpoint intact; a truncated or corrupt file is an error.

use std::collections::BTreeMap;
use std::path::Path;

use crate::optim::states_from_tensors;
use crate::tensor_io::{load_safetensors, save_safetensors, Tensor};
use crate::{Error, Optimizer, Parameters, Result, Scalar};

/// Saves `model`'s parameters (`model.<name>`, PyTorch's row-major layout) and
/// `optimizer`'s state (`optim.<name>.<buffer>`), with `metadata`.
pub fn save_checkpoint<T: Scalar>(
    path: &Path,
    model: &dyn Parameters<T>,
    optimizer: &dyn Optimizer<T>,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let mut tensors: Vec<(String, Tensor<T>)> = model
        .parameters()
        .into_iter()
        .map(|p| {
            let (rows, cols) = p.shape;
            let data = (0..rows)
                .flat_map(|r| (0..cols).map(move |c| (r, c)))
                .map(|(r, c)| p.values[c * rows + r])
                .collect();
            (
                format!("model.{}", p.name),
                Tensor {
                    shape: vec![rows, cols],
                    data,
                },
            )
        })
        .collect();
    tensors.extend(
        optimizer
            .state_tensors()
            .into_iter()
            .map(|(name, t)| (format!("optim.{name}"), t)),
    );
    save_safetensors(path, &tensors, metadata)
}

/// The metadata [`save_checkpoint`] wrote, read without restoring anything: what a
/// program needs to build the model (its sizes, its vocabulary) before loading into it.
pub fn checkpoint_metadata(path: &Path) -> Result<BTreeMap<String, String>> {
    let (_, metadata) = load_safetensors::<f64>(path)?;
    Ok(metadata)
}

/// Restores what [`save_checkpoint`] wrote into `model` and `optimizer`; returns the
/// metadata. Every parameter must be there with its shape; otherwise nothing changes.
pub fn load_checkpoint<T: Scalar>(
    path: &Path,
    model: &mut dyn Parameters<T>,
    optimizer: &mut dyn Optimizer<T>,
) -> Result<BTreeMap<String, String>> {
    let (tensors, metadata) = load_safetensors::<T>(path)?;
    let context = |e: Error| e.context(format!("loading checkpoint `{}`", path.display()));
    let mut params = model.parameters_mut();
    let mut problems = Vec::new();
    for p in &params {
        match tensors.get(&format!("model.{}", p.name)) {
            None => problems.push(format!(
                "missing parameter `{}` of shape {:?}",
                p.name, p.shape
            )),
            Some(t) if t.shape != [p.shape.0, p.shape.1] => problems.push(format!(
                "parameter `{}` has shape {:?} but {:?} was expected",
                p.name,
                t.shape,
                [p.shape.0, p.shape.1]
            )),
            Some(_) => {}
        }
    }
    let known: Vec<String> = params.iter().map(|p| format!("model.{}", p.name)).collect();
    for name in tensors
        .keys()
        .filter(|n| n.starts_with("model.") && !known.contains(n))
    {
        problems.push(format!(
            "unexpected parameter `{}`",
            &name["model.".len()..]
        ));
    }
    if !problems.is_empty() {
        return Err(context(Error::new(problems.join("; "))));
    }
    let state: BTreeMap<String, Tensor<T>> = tensors
        .iter()
        .filter_map(|(name, t)| {
            name.strip_prefix("optim.")
                .map(|n| (n.to_string(), t.clone()))
        })
        .collect();
    let restored = states_from_tensors(&state).map_err(context)?;
    for p in params.iter_mut() {
        let t = &tensors[&format!("model.{}", p.name)];
        let (rows, cols) = p.shape;
        for r in 0..rows {
            for c in 0..cols {
                p.values[c * rows + r] = t.data[r * cols + c];
            }
        }
    }
    *optimizer.states_mut() = restored;
    Ok(metadata)
}
