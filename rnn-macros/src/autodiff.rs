//! Stage 6: reverse-mode differentiation of one step. The backward pass is appended to
//! the same graph as more IR (one rule per op), so that it is optimised, scheduled and
//! interpreted exactly like the forward pass.

use crate::func::DerivFrom;
use crate::ir::{CellIr, NodeId, Op};
use crate::optimize::dynamic_nodes;
use crate::parse::BinOp;
use crate::shape::Shapes;
use crate::size::Size;

/// Where the backward graph's results are.
#[derive(Clone, Debug)]
pub struct Backward {
    /// Nodes from here on belong to the backward pass.
    pub first: NodeId,
    /// The gradient of each state's previous value (`None`: it does not depend on it).
    pub d_states: Vec<Option<NodeId>>,
    /// The gradient of each input.
    pub d_inputs: Vec<Option<NodeId>>,
    /// Vector parameter `p` accumulates the sum over the batch of the node's columns.
    pub vec_grads: Vec<(usize, NodeId)>,
    /// For the `Gemm` node `g = W * v` and the gradient `dz` of its result, every block
    /// of `W` accumulates its rows of `dz · vᵀ`.
    pub mat_grads: Vec<(NodeId, NodeId)>,
}

enum Contribution {
    Whole(NodeId),
    /// The gradient of rows `start..` of a stacked product, from one of its slices.
    Rows(Size, NodeId),
}

pub fn differentiate(ir: &mut CellIr, shapes: &mut Shapes) -> Backward {
    let first = ir.graph.len();
    let mut ad = Ad {
        ir,
        shapes,
        contributions: (0..first).map(|_| Vec::new()).collect(),
    };
    let adj_states: Vec<NodeId> = (0..ad.ir.states.len())
        .map(|k| {
            let span = ad.ir.states[k].span;
            let name = format!("d{}", ad.ir.states[k].name);
            ad.shapes.add(ad.ir, Op::AdjState(k), span, name)
        })
        .collect();
    for (k, &adj) in adj_states.iter().enumerate() {
        let new = ad.ir.new_states[k];
        ad.contributions[new].push(Contribution::Whole(adj));
    }
    let mut backward = Backward {
        first,
        d_states: vec![None; ad.ir.states.len()],
        d_inputs: vec![None; ad.ir.inputs.len()],
        vec_grads: Vec::new(),
        mat_grads: Vec::new(),
    };
    for v in (0..first).rev() {
        let contributions = std::mem::take(&mut ad.contributions[v]);
        if contributions.is_empty() {
            continue;
        }
        let op = ad.ir.graph.op(v).clone();
        if let Op::Param(p) = op {
            // Summed over the batch wherever each part is computed: in the loop or after.
            for part in ad.split_by_phase(v, contributions) {
                backward.vec_grads.push((p, part));
            }
            continue;
        }
        let adj = ad.gather(v, contributions);
        match op {
            Op::Input(k) => backward.d_inputs[k] = Some(adj),
            Op::State(k) => backward.d_states[k] = Some(adj),
            Op::Param(_) | Op::Lit(_) => {}
            Op::Call(func, a) => {
                if ad.is_vector(a) {
                    let grad = if func == crate::func::Func::Identity {
                        adj
                    } else {
                        let at = match func.deriv_from() {
                            DerivFrom::Output => v,
                            DerivFrom::Input => a,
                        };
                        let deriv = ad.add(Op::Deriv(func, at), v);
                        ad.add(Op::Bin(BinOp::Mul, adj, deriv), v)
                    };
                    ad.push(a, grad);
                }
            }
            Op::Neg(a) => {
                let grad = ad.add(Op::Neg(adj), v);
                ad.push(a, grad);
            }
            Op::Bin(BinOp::Add, a, b) => {
                ad.push(a, adj);
                ad.push(b, adj);
            }
            Op::Bin(BinOp::Sub, a, b) => {
                ad.push(a, adj);
                let grad = ad.add(Op::Neg(adj), v);
                ad.push(b, grad);
            }
            Op::Bin(BinOp::Mul, a, b) => {
                if ad.is_vector(a) {
                    let grad = ad.add(Op::Bin(BinOp::Mul, adj, b), v);
                    ad.push(a, grad);
                }
                if ad.is_vector(b) {
                    let grad = ad.add(Op::Bin(BinOp::Mul, adj, a), v);
                    ad.push(b, grad);
                }
            }
            Op::Gemm { blocks, vec } => {
                let grad = ad.add(Op::GemmT { blocks, vec: adj }, v);
                ad.push(vec, grad);
                backward.mat_grads.push((v, adj));
            }
            Op::Concat(parts) => {
                let mut start = Size::zero();
                for part in parts {
                    let len = ad.shapes.size(part).clone();
                    let grad = ad.add(
                        Op::Slice {
                            of: adj,
                            start: start.clone(),
                            len: len.clone(),
                        },
                        v,
                    );
                    ad.push(part, grad);
                    start = start.plus(&len);
                }
            }
            Op::Slice { of, start, .. } => {
                ad.contributions[of].push(Contribution::Rows(start, adj))
            }
            other => unreachable!("backward op {other:?} in the forward graph"),
        }
    }
    backward
}

struct Ad<'a> {
    ir: &'a mut CellIr,
    shapes: &'a mut Shapes,
    contributions: Vec<Vec<Contribution>>,
}

impl Ad<'_> {
    fn add(&mut self, op: Op, like: NodeId) -> NodeId {
        let node = &self.ir.graph.nodes[like];
        let (span, text) = (node.span, format!("d({})", node.text));
        self.shapes.add(self.ir, op, span, text)
    }

    fn is_vector(&self, id: NodeId) -> bool {
        !self.shapes.is_scalar(id)
    }

    fn push(&mut self, to: NodeId, grad: NodeId) {
        if self.is_vector(to) {
            self.contributions[to].push(Contribution::Whole(grad));
        }
    }

    fn sum(&mut self, terms: &[NodeId], like: NodeId) -> Option<NodeId> {
        let (&first, rest) = terms.split_first()?;
        Some(
            rest.iter()
                .fold(first, |acc, &t| self.add(Op::Bin(BinOp::Add, acc, t), like)),
        )
    }

    /// The contributions summed separately by phase: the ones computed at each step, and
    /// the ones computed once for all steps.
    fn split_by_phase(&mut self, v: NodeId, contributions: Vec<Contribution>) -> Vec<NodeId> {
        let dynamic = dynamic_nodes(&self.ir.graph);
        let whole: Vec<NodeId> = contributions
            .into_iter()
            .map(|c| match c {
                Contribution::Whole(id) => id,
                Contribution::Rows(..) => {
                    unreachable!("only stacked products have row contributions")
                }
            })
            .collect();
        let (changing, fixed): (Vec<NodeId>, Vec<NodeId>) =
            whole.into_iter().partition(|id| dynamic[*id]);
        [self.sum(&changing, v), self.sum(&fixed, v)]
            .into_iter()
            .flatten()
            .collect()
    }

    /// The gradient of node `v`. A hoisted value whose gradient comes (partly) from the
    /// time loop gets a `Bridge`: the loop stores its part for every step, and the rest
    /// of its backward runs once, after the loop, over all steps.
    fn gather(&mut self, v: NodeId, contributions: Vec<Contribution>) -> NodeId {
        if contributions
            .iter()
            .any(|c| matches!(c, Contribution::Rows(..)))
        {
            return self.stack_rows(v, contributions);
        }
        let parts = self.split_by_phase(v, contributions);
        let dynamic = dynamic_nodes(&self.ir.graph);
        if dynamic[v] || !dynamic[parts[0]] {
            return self.sum(&parts, v).expect("at least one contribution");
        }
        let bridge = self.add(Op::Bridge(parts[0]), v);
        let rest: Vec<NodeId> = std::iter::once(bridge)
            .chain(parts[1..].iter().copied())
            .collect();
        self.sum(&rest, v).expect("at least one contribution")
    }

    /// The gradient of a stacked product: its members' gradients stacked in row order,
    /// zeros for a member that receives none.
    fn stack_rows(&mut self, v: NodeId, contributions: Vec<Contribution>) -> NodeId {
        let Op::Gemm { blocks, .. } = self.ir.graph.op(v).clone() else {
            unreachable!("rows of a stacked product")
        };
        let mut parts = Vec::new();
        let mut start = Size::zero();
        for block in &blocks {
            let len = self.shapes.params[block.mat].0.clone();
            let member: Vec<NodeId> = contributions
                .iter()
                .filter_map(|c| match c {
                    Contribution::Rows(s, id) if *s == start => Some(*id),
                    _ => None,
                })
                .collect();
            let part = match self.sum(&member, v) {
                Some(sum) => sum,
                None => self.add(Op::Zeros(len.clone()), v),
            };
            parts.push(part);
            start = start.plus(&len);
        }
        let stacked = self.add(Op::Concat(parts), v);
        let dynamic = dynamic_nodes(&self.ir.graph);
        if dynamic[v] || !dynamic[stacked] {
            stacked
        } else {
            self.add(Op::Bridge(stacked), v)
        }
    }
}

#[cfg(test)]
mod tests {
    //! Law: for L = Σ_k ⟨a_k, s_k'⟩ (a_k random, s_k' state k's new value), the backward
    //! graph's results equal central finite differences of L through the interpreter,
    //! for every input, previous state and parameter, on random cells.

    use super::*;
    use crate::interp::{eval, Env, Value};
    use crate::test_util::{compile_full, lstm, random_cell, random_values};
    use proptest::prelude::*;

    fn loss(compiled: &Compiled, env: &Env) -> f64 {
        let forward_only = CellIr {
            graph: truncated(compiled),
            ..compiled.ir.clone()
        };
        let values = eval(&forward_only, &compiled.shapes, env);
        compiled
            .ir
            .new_states
            .iter()
            .zip(&env.adj_states)
            .map(|(&s, a)| {
                values[s]
                    .vector()
                    .iter()
                    .zip(a)
                    .map(|(v, a)| v * a)
                    .sum::<f64>()
            })
            .sum()
    }

    use crate::compile::Compiled;
    use crate::ir::Graph;

    fn truncated(compiled: &Compiled) -> Graph {
        let mut graph = compiled.ir.graph.clone();
        graph.nodes.truncate(compiled.backward.first);
        graph
    }

    fn check_cell(source: &str, seed: u64) -> Result<(), TestCaseError> {
        let tokens: proc_macro2::TokenStream = source.parse().expect("generated source lexes");
        let compiled = compile_full(tokens);
        let (ir, shapes, backward) = (&compiled.ir, &compiled.shapes, &compiled.backward);
        let dims = vec![2, 3];
        let mut seed = seed;
        let mut env = Env {
            inputs: vec![random_values(2, &mut seed)],
            states: vec![random_values(3, &mut seed), random_values(3, &mut seed)],
            params: shapes
                .params
                .iter()
                .map(|(rows, cols)| {
                    let len = rows.eval(&dims) * cols.as_ref().map_or(1, |c| c.eval(&dims));
                    random_values(len, &mut seed)
                })
                .collect(),
            adj_states: vec![random_values(3, &mut seed), random_values(3, &mut seed)],
            dims: dims.clone(),
        };
        let values = eval(ir, shapes, &env);
        let vector = |node: Option<NodeId>, len: usize| match node {
            Some(id) => values[id].vector().to_vec(),
            None => vec![0.0; len],
        };
        // Analytic gradients from the backward graph.
        let d_inputs: Vec<Vec<f64>> = backward.d_inputs.iter().map(|n| vector(*n, 2)).collect();
        let d_states: Vec<Vec<f64>> = backward.d_states.iter().map(|n| vector(*n, 3)).collect();
        let mut d_params: Vec<Vec<f64>> = env.params.iter().map(|p| vec![0.0; p.len()]).collect();
        for (p, node) in &backward.vec_grads {
            for (g, v) in d_params[*p].iter_mut().zip(values[*node].vector()) {
                *g += v;
            }
        }
        for (gemm, dz) in &backward.mat_grads {
            let Op::Gemm { blocks, vec } = ir.graph.op(*gemm) else {
                panic!("not a gemm")
            };
            let (v, dz) = (values[*vec].vector(), values[*dz].vector());
            let mut row0 = 0;
            for block in blocks {
                let rows = shapes.params[block.mat].0.eval(&dims);
                let start = block.cols.as_ref().map_or(0, |(s, _)| s.eval(&dims));
                for i in 0..rows {
                    for (c, vc) in v.iter().enumerate() {
                        d_params[block.mat][(start + c) * rows + i] += dz[row0 + i] * vc;
                    }
                }
                row0 += rows;
            }
        }
        let _ = Value::Scalar(0.0);
        // Central differences of the loss.
        let eps = 1e-6;
        let mut compare = |what: &str, analytic: f64, env_at: &mut dyn FnMut(&mut Env, f64)| {
            env_at(&mut env, eps);
            let plus = loss(&compiled, &env);
            env_at(&mut env, -2.0 * eps);
            let minus = loss(&compiled, &env);
            env_at(&mut env, eps);
            let numeric = (plus - minus) / (2.0 * eps);
            let tolerance = 1e-6 * (1.0 + numeric.abs().max(analytic.abs()));
            prop_assert!(
                (numeric - analytic).abs() <= tolerance,
                "{what}: analytic {analytic} vs numeric {numeric} in\n{source}"
            );
            Ok(())
        };
        for (k, d) in d_inputs.iter().enumerate() {
            for (i, a) in d.iter().enumerate() {
                compare(&format!("input {k}[{i}]"), *a, &mut |env, e| {
                    env.inputs[k][i] += e
                })?;
            }
        }
        for (k, d) in d_states.iter().enumerate() {
            for (i, a) in d.iter().enumerate() {
                compare(&format!("state {k}[{i}]"), *a, &mut |env, e| {
                    env.states[k][i] += e
                })?;
            }
        }
        for (p, d) in d_params.iter().enumerate() {
            let name = ir.params[p].name.clone();
            for (i, a) in d.iter().enumerate() {
                compare(&format!("{name}[{i}]"), *a, &mut |env, e| {
                    env.params[p][i] += e
                })?;
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn symbolic_derivative_matches_finite_differences(source in random_cell(), seed in any::<u64>()) {
            check_cell(&source, seed)?;
        }
    }

    #[test]
    fn lstm_gradient_matches_finite_differences() {
        check_cell(&lstm().to_string(), 7).unwrap();
    }
}
