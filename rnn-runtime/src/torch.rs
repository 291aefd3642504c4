//! PyTorch interop: the parameters of layers of built-in cells under PyTorch's names
//! and shapes (`weight_ih_l0`, `bias_hh_l1_reverse`, `weight_hr_l0`), gates stacked by
//! rows in PyTorch's order.

use std::collections::BTreeMap;

use crate::cells::TorchNames;
use crate::recurrent::{Recurrent, RecurrentGrads};
use crate::tensor_io::Tensor;
use crate::{Cell, Error, Parameters, Result, Scalar};

/// `weight_ih` of layer 1, reverse direction: `weight_ih_l1_reverse`.
pub fn torch_name(base: &str, layer: usize, direction: usize) -> String {
    let suffix = if direction == 1 { "_reverse" } else { "" };
    format!("{base}_l{layer}{suffix}")
}

/// Whether the cell's parameter `name` is a vector.
fn is_vector<T: Scalar, C: Cell<T>>(name: &str) -> bool {
    C::SPEC
        .params
        .iter()
        .find(|p| p.name == name)
        .is_some_and(|p| p.cols.is_none())
}

/// One cell's parameters (or gradients) as PyTorch tensors.
fn cell_tensors<T: Scalar, C: Cell<T> + TorchNames>(
    params: &dyn Parameters<T>,
    layer: usize,
    direction: usize,
) -> Vec<(String, Tensor<T>)> {
    let all = params.parameters();
    C::TENSORS
        .iter()
        .map(|(base, gates)| {
            let blocks: Vec<_> = gates
                .iter()
                .map(|g| {
                    all.iter()
                        .find(|p| p.name == *g)
                        .expect("the table names the cell's parameters")
                })
                .collect();
            let rows: usize = blocks.iter().map(|b| b.shape.0).sum();
            let cols = blocks[0].shape.1;
            let mut data = Vec::with_capacity(rows * cols);
            for block in &blocks {
                for r in 0..block.shape.0 {
                    data.extend((0..cols).map(|c| block.values[c * block.shape.0 + r]));
                }
            }
            let shape = if is_vector::<T, C>(gates[0]) {
                vec![rows]
            } else {
                vec![rows, cols]
            };
            (torch_name(base, layer, direction), Tensor { shape, data })
        })
        .collect()
}

impl<C> Recurrent<C> {
    /// Every parameter as PyTorch names and shapes it (`nn.LSTM.state_dict()`).
    pub fn torch_tensors<T: Scalar>(&self) -> Vec<(String, Tensor<T>)>
    where
        C: Cell<T> + TorchNames,
    {
        let mut out = Vec::new();
        for (l, layer) in self.layers().iter().enumerate() {
            for (d, cell) in layer.iter().enumerate() {
                out.extend(cell_tensors::<T, C>(cell, l, d));
            }
        }
        out
    }

    /// Gradients (of these layers' parameters) under PyTorch's names and shapes.
    pub fn torch_grads<T: Scalar>(
        &self,
        grads: &RecurrentGrads<T, C::Grads>,
    ) -> Vec<(String, Tensor<T>)>
    where
        C: Cell<T> + TorchNames,
    {
        let mut out = Vec::new();
        for (l, layer) in grads.layers.iter().enumerate() {
            for (d, g) in layer.iter().enumerate() {
                out.extend(cell_tensors::<T, C>(g, l, d));
            }
        }
        out
    }

    /// Sets every parameter from tensors named and shaped as PyTorch's. Every expected
    /// tensor must be there with its exact shape, and nothing else; otherwise nothing is
    /// changed and the error names each tensor, its expected and its found shape.
    pub fn load_torch_tensors<T: Scalar>(
        &mut self,
        tensors: &BTreeMap<String, Tensor<T>>,
    ) -> Result<()>
    where
        C: Cell<T> + TorchNames,
    {
        let expected = self.torch_tensors::<T>();
        let mut problems = Vec::new();
        for (name, tensor) in &expected {
            match tensors.get(name) {
                None => problems.push(format!(
                    "missing tensor `{name}` of shape {:?}",
                    tensor.shape
                )),
                Some(found) if found.shape != tensor.shape => problems.push(format!(
                    "tensor `{name}` has shape {:?} but {:?} was expected",
                    found.shape, tensor.shape
                )),
                Some(_) => {}
            }
        }
        for name in tensors.keys() {
            if !expected.iter().any(|(n, _)| n == name) {
                problems.push(format!("unexpected tensor `{name}`"));
            }
        }
        if !problems.is_empty() {
            return Err(Error::new(problems.join("; ")));
        }
        for (l, layer) in self.layers_mut().iter_mut().enumerate() {
            for (d, cell) in layer.iter_mut().enumerate() {
                let mut params = cell.parameters_mut();
                for (base, gates) in C::TENSORS {
                    let tensor = &tensors[&torch_name(base, l, d)];
                    let mut at = 0;
                    for gate in gates.iter() {
                        let param = params
                            .iter_mut()
                            .find(|p| p.name == *gate)
                            .expect("the table names the cell's parameters");
                        let (rows, cols) = param.shape;
                        for r in 0..rows {
                            for c in 0..cols {
                                param.values[c * rows + r] = tensor.data[at + r * cols + c];
                            }
                        }
                        at += rows * cols;
                    }
                }
            }
        }
        Ok(())
    }
}
