//! Named tensors in safetensors files: how weights travel to and from PyTorch, and
//! how checkpoints are kept. Files are written atomically: a reader sees the old file
//! or the new one, never a half-written one.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::{ensure, Error, Result, Scalar};

/// A tensor in PyTorch's (row-major) layout.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor<T> {
    /// PyTorch's shape.
    pub shape: Vec<usize>,
    /// The values, row-major.
    pub data: Vec<T>,
}

impl<T> Tensor<T> {
    /// A tensor of this shape; the data's length must be the shape's product.
    pub fn new(shape: Vec<usize>, data: Vec<T>) -> Result<Tensor<T>> {
        let expected: usize = shape.iter().product();
        ensure!(
            data.len() == expected,
            "a tensor of shape {shape:?} needs {expected} values but {} were given",
            data.len()
        );
        Ok(Tensor { shape, data })
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory, synced to
/// disk and renamed over the target.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let context = |e: std::io::Error| Error::new(format!("writing `{}`: {e}", path.display()));
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| Error::new(format!("`{}` names no file", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(context(e));
    }
    // The rename is durable once the directory entry is.
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Saves tensors (F32 for an f32 model, F64 for f64) and string metadata.
pub fn save_safetensors<T: Scalar>(
    path: &Path,
    tensors: &[(String, Tensor<T>)],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let single = std::mem::size_of::<T>() == 4;
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, t)| {
            if single {
                t.data
                    .iter()
                    .flat_map(|v| (v.as_f64() as f32).to_le_bytes())
                    .collect()
            } else {
                t.data
                    .iter()
                    .flat_map(|v| v.as_f64().to_le_bytes())
                    .collect()
            }
        })
        .collect();
    let dtype = if single { Dtype::F32 } else { Dtype::F64 };
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, t), b)| {
            Ok((
                name.clone(),
                TensorView::new(dtype, t.shape.clone(), b)
                    .map_err(|e| Error::new(format!("tensor `{name}`: {e}")))?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let info = if metadata.is_empty() {
        None
    } else {
        Some(metadata.clone().into_iter().collect())
    };
    let serialized = safetensors::serialize(views, info)
        .map_err(|e| Error::new(format!("serializing `{}`: {e}", path.display())))?;
    write_atomically(path, &serialized)
}

/// Tensors by name.
pub type NamedTensors<T> = BTreeMap<String, Tensor<T>>;

/// A safetensors file's tensors (F32, F64 or I64, converted to `T`) and metadata.
pub fn load_safetensors<T: Scalar>(
    path: &Path,
) -> Result<(NamedTensors<T>, BTreeMap<String, String>)> {
    let bytes =
        fs::read(path).map_err(|e| Error::new(format!("reading `{}`: {e}", path.display())))?;
    let corrupt = |e: safetensors::SafeTensorError| {
        Error::new(format!(
            "`{}` is not a valid safetensors file: {e}",
            path.display()
        ))
    };
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(corrupt)?;
    let metadata: BTreeMap<String, String> = header
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let file = SafeTensors::deserialize(&bytes).map_err(corrupt)?;
    let mut tensors = BTreeMap::new();
    for (name, view) in file.tensors() {
        let raw = view.data();
        let data: Vec<T> = match view.dtype() {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|b| T::of(f32::from_le_bytes(b.try_into().expect("4 bytes")) as f64))
                .collect(),
            Dtype::F64 => raw
                .chunks_exact(8)
                .map(|b| T::of(f64::from_le_bytes(b.try_into().expect("8 bytes"))))
                .collect(),
            Dtype::I64 => raw
                .chunks_exact(8)
                .map(|b| T::of(i64::from_le_bytes(b.try_into().expect("8 bytes")) as f64))
                .collect(),
            other => {
                return Err(Error::new(format!(
                    "`{}`: tensor `{name}` has dtype {other:?}; expected F32, F64 or I64",
                    path.display()
                )))
            }
        };
        tensors.insert(
            name,
            Tensor {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    Ok((tensors, metadata))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("rnn-runtime-{}-{name}", std::process::id()))
    }

    #[test]
    fn round_trip_is_exact_in_f32_and_f64() {
        let path = temp("round.safetensors");
        let tensors = vec![(
            "a".to_string(),
            Tensor::new(vec![2, 3], vec![0.1f32, -2.5, 3.0, 1e-8, 7.0, 0.3]).unwrap(),
        )];
        let meta = BTreeMap::from([("step".to_string(), "12".to_string())]);
        save_safetensors(&path, &tensors, &meta).unwrap();
        let (back, back_meta) = load_safetensors::<f32>(&path).unwrap();
        assert_eq!(back["a"], tensors[0].1);
        assert_eq!(back_meta, meta);
        let tensors64 = vec![(
            "b".to_string(),
            Tensor::new(vec![2], vec![0.1f64, std::f64::consts::PI]).unwrap(),
        )];
        save_safetensors(&path, &tensors64, &BTreeMap::new()).unwrap();
        assert_eq!(
            load_safetensors::<f64>(&path).unwrap().0["b"],
            tensors64[0].1
        );
        let _ = fs::remove_file(&path);
    }

    #[test]
    fn a_truncated_file_is_a_clear_error_and_no_temporary_file_stays() {
        let path = temp("cut.safetensors");
        let tensors = vec![(
            "a".to_string(),
            Tensor::new(vec![4], vec![1.0f64, 2.0, 3.0, 4.0]).unwrap(),
        )];
        save_safetensors(&path, &tensors, &BTreeMap::new()).unwrap();
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
        let err = load_safetensors::<f64>(&path).unwrap_err().to_string();
        assert!(err.contains("not a valid safetensors file"), "{err}");
        let leftovers = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains("cut.safetensors.tmp")
            })
            .count();
        assert_eq!(leftovers, 0);
        let _ = fs::remove_file(&path);
        assert!(load_safetensors::<f64>(&path)
            .unwrap_err()
            .to_string()
            .contains("reading"));
    }
}
