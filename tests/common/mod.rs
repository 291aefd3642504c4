//! Reading the PyTorch reference fixtures (format: `tests/fixtures/README.md`).

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rnn_runtime::nalgebra::DMatrix;
use safetensors::{Dtype, SafeTensors};

pub fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pytorch")
        .join(format!("{name}.safetensors"))
}

/// One fixture: its metadata and every tensor as (shape, values in f64).
pub struct Fixture {
    pub name: String,
    pub meta: HashMap<String, String>,
    pub tensors: HashMap<String, (Vec<usize>, Vec<f64>)>,
}

impl Fixture {
    pub fn load(name: &str) -> Fixture {
        let bytes = std::fs::read(fixture_path(name))
            .unwrap_or_else(|e| panic!("reading fixture {name}: {e}"));
        let (_, metadata) = SafeTensors::read_metadata(&bytes).expect("safetensors header");
        let meta = metadata.metadata().clone().unwrap_or_default();
        let tensors = SafeTensors::deserialize(&bytes).expect("safetensors");
        let tensors = tensors
            .tensors()
            .into_iter()
            .map(|(key, view)| {
                let values: Vec<f64> = match view.dtype() {
                    Dtype::F64 => view
                        .data()
                        .chunks_exact(8)
                        .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                        .collect(),
                    Dtype::I64 => view
                        .data()
                        .chunks_exact(8)
                        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
                        .collect(),
                    other => panic!("{name}: tensor {key} has dtype {other:?}"),
                };
                (key, (view.shape().to_vec(), values))
            })
            .collect();
        Fixture {
            name: name.to_string(),
            meta,
            tensors,
        }
    }

    pub fn meta_usize(&self, key: &str) -> usize {
        self.meta[key]
            .parse()
            .unwrap_or_else(|_| panic!("{}: metadata {key} = {}", self.name, self.meta[key]))
    }

    pub fn has(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    pub fn shape(&self, key: &str) -> &[usize] {
        &self
            .tensors
            .get(key)
            .unwrap_or_else(|| panic!("{}: no tensor {key}", self.name))
            .0
    }

    pub fn values(&self, key: &str) -> &[f64] {
        &self
            .tensors
            .get(key)
            .unwrap_or_else(|| panic!("{}: no tensor {key}", self.name))
            .1
    }

    /// A row-major (rows, cols) tensor as a matrix.
    pub fn matrix(&self, key: &str) -> DMatrix<f64> {
        let shape = self.shape(key);
        let (rows, cols) = (shape[0], shape.get(1).copied().unwrap_or(1));
        DMatrix::from_row_slice(rows, cols, self.values(key))
    }

    /// A row-major tensor whose last dimension is the features: (..., F) read as the
    /// column-major (F, everything else), the library's layout.
    pub fn features(&self, key: &str) -> DMatrix<f64> {
        let shape = self.shape(key);
        let features = *shape.last().expect("a tensor with dimensions");
        let len = self.values(key).len();
        DMatrix::from_column_slice(features, len / features.max(1), self.values(key))
    }
}

/// max |actual - expected| / max(1e-300, max |expected|): the error relative to the
/// largest magnitude of the tensor compared.
pub fn relative_error(actual: &[f64], expected: &[f64]) -> f64 {
    assert_eq!(
        actual.len(),
        expected.len(),
        "compared tensors differ in length"
    );
    let scale = expected
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs()))
        .max(1e-300);
    actual
        .iter()
        .zip(expected)
        .fold(0.0f64, |m, (a, e)| m.max((a - e).abs()))
        / scale
}
