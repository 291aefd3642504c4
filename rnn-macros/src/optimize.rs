//! Stage 5: rewrites that make the generated code fast without changing what it
//! computes. Each pass rebuilds the graph, which drops dead nodes and, through
//! hash-consing, merges common subexpressions.
//!
//! - `fold_scalars`: literal arithmetic is done at compile time.
//! - `split_concat_products`: `W * [h, x]` becomes `W[:, ..H] * h + W[:, H..] * x`, so
//!   that the input half can be hoisted out of the time loop.
//! - `hoist_sums`: a sum's terms that depend only on inputs and parameters are added
//!   first, so that their partial sum is computed for all steps before the loop.
//! - `stack_products`: the products of several matrices with the same vector become one
//!   stacked product (one GEMM), the way PyTorch stacks `weight_ih` as i, f, g, o.

use std::collections::HashMap;

use crate::ir::{Block, CellIr, Graph, NodeId, Op};
use crate::parse::BinOp;
use crate::shape::Shapes;
use crate::size::Size;

pub fn run(ir: CellIr, shapes: Shapes) -> (CellIr, Shapes) {
    let (ir, shapes) = fold_scalars(&ir, &shapes);
    let (ir, shapes) = split_concat_products(&ir, &shapes);
    let (ir, shapes) = hoist_sums(&ir, &shapes);
    // Hoisting may bring literal terms together (`1.0 + 1.0`): fold them, so that every
    // scalar is a literal, as the scheduler expects. The rebuild also drops the sums
    // that hoisting reordered.
    let (ir, shapes) = fold_scalars(&ir, &shapes);
    stack_products(&ir, &shapes)
}

/// Whether each node changes from step to step (depends on a state). The others are
/// computed once for all steps.
pub fn dynamic_nodes(graph: &Graph) -> Vec<bool> {
    let mut dynamic = vec![false; graph.len()];
    for (id, node) in graph.nodes.iter().enumerate() {
        dynamic[id] = match &node.op {
            Op::State(_) | Op::AdjState(_) => true,
            // The gathered gradient of a hoisted value is used after the loop.
            Op::Bridge(_) => false,
            op => op.operands().iter().any(|o| dynamic[*o]),
        };
    }
    dynamic
}

/// A graph under reconstruction: old node ids map to new ones.
pub struct Rebuild<'a> {
    pub old: &'a CellIr,
    pub old_shapes: &'a Shapes,
    pub ir: CellIr,
    pub shapes: Shapes,
    pub map: Vec<NodeId>,
}

impl Rebuild<'_> {
    pub fn add(&mut self, op: Op, like: NodeId) -> NodeId {
        let node = &self.old.graph.nodes[like];
        self.shapes
            .add(&mut self.ir, op, node.span, node.text.clone())
    }

    pub fn size(&self, new: NodeId) -> Option<&Size> {
        self.shapes.nodes[new].as_ref()
    }
}

/// Rebuilds the live part of the graph in order. `rewrite` receives each old node's op
/// with its operands already mapped and returns the new node that stands for it.
pub fn rebuild(
    old: &CellIr,
    old_shapes: &Shapes,
    mut rewrite: impl FnMut(&mut Rebuild<'_>, NodeId, Op) -> NodeId,
) -> (CellIr, Shapes) {
    let mut live = vec![false; old.graph.len()];
    for &root in &old.new_states {
        live[root] = true;
    }
    for id in (0..old.graph.len()).rev() {
        if live[id] {
            for operand in old.graph.op(id).operands() {
                live[operand] = true;
            }
        }
    }
    let ir = CellIr {
        graph: Graph::default(),
        new_states: Vec::new(),
        written: Default::default(),
        ..old.clone()
    };
    let shapes = Shapes {
        nodes: Vec::new(),
        params: old_shapes.params.clone(),
    };
    let mut state = Rebuild {
        old,
        old_shapes,
        ir,
        shapes,
        map: vec![usize::MAX; old.graph.len()],
    };
    // Leaves keep their places so that inputs and states stay nodes 0.. in order.
    for id in 0..old.graph.len() {
        if matches!(old.graph.op(id), Op::Input(_) | Op::State(_)) {
            state.map[id] = state.add(old.graph.op(id).clone(), id);
        }
    }
    for (id, &is_live) in live.iter().enumerate() {
        if !is_live || state.map[id] != usize::MAX {
            continue;
        }
        let op = remap(old.graph.op(id), &state.map);
        state.map[id] = rewrite(&mut state, id, op);
    }
    state.ir.new_states = old.new_states.iter().map(|&n| state.map[n]).collect();
    (state.ir, state.shapes)
}

fn remap(op: &Op, map: &[NodeId]) -> Op {
    let m = |id: &NodeId| map[*id];
    match op {
        Op::Call(f, a) => Op::Call(*f, m(a)),
        Op::Neg(a) => Op::Neg(m(a)),
        Op::Deriv(f, a) => Op::Deriv(*f, m(a)),
        Op::Bridge(a) => Op::Bridge(m(a)),
        Op::Bin(op, a, b) => Op::Bin(*op, m(a), m(b)),
        Op::Gemm { blocks, vec } => Op::Gemm {
            blocks: blocks.clone(),
            vec: m(vec),
        },
        Op::GemmT { blocks, vec } => Op::GemmT {
            blocks: blocks.clone(),
            vec: m(vec),
        },
        Op::Slice { of, start, len } => Op::Slice {
            of: m(of),
            start: start.clone(),
            len: len.clone(),
        },
        Op::Concat(parts) => Op::Concat(parts.iter().map(m).collect()),
        leaf => leaf.clone(),
    }
}

fn literal(graph: &Graph, id: NodeId) -> Option<f64> {
    match graph.op(id) {
        Op::Lit(bits) => Some(f64::from_bits(*bits)),
        _ => None,
    }
}

pub fn fold_scalars(ir: &CellIr, shapes: &Shapes) -> (CellIr, Shapes) {
    rebuild(ir, shapes, |rb, old, op| {
        let lit = |id: NodeId| literal(&rb.ir.graph, id);
        let folded = match &op {
            Op::Neg(a) => lit(*a).map(|a| -a),
            Op::Call(f, a) => lit(*a).map(|a| f.eval(a)),
            Op::Bin(bin, a, b) => match (lit(*a), lit(*b)) {
                (Some(a), Some(b)) => Some(match bin {
                    BinOp::Add => a + b,
                    BinOp::Sub => a - b,
                    BinOp::Mul => a * b,
                }),
                _ => None,
            },
            _ => None,
        };
        match folded {
            Some(value) => rb.add(Op::lit(value), old),
            None => rb.add(op, old),
        }
    })
}

pub fn split_concat_products(ir: &CellIr, shapes: &Shapes) -> (CellIr, Shapes) {
    rebuild(ir, shapes, |rb, old, op| {
        let Op::Gemm { blocks, vec } = &op else {
            return rb.add(op, old);
        };
        let parts = flatten_concat(&rb.ir.graph, *vec);
        if parts.len() == 1 {
            return rb.add(op, old);
        }
        let mut start = Size::zero();
        let mut sum: Option<NodeId> = None;
        for part in parts {
            let len = rb.size(part).expect("vector part").clone();
            let block = Block {
                mat: blocks[0].mat,
                cols: Some((start.clone(), len.clone())),
            };
            let product = rb.add(
                Op::Gemm {
                    blocks: vec![block],
                    vec: part,
                },
                old,
            );
            sum = Some(match sum {
                None => product,
                Some(acc) => rb.add(Op::Bin(BinOp::Add, acc, product), old),
            });
            start = start.plus(&len);
        }
        sum.expect("at least two parts")
    })
}

/// The leaves of nested concatenations, in order.
fn flatten_concat(graph: &Graph, id: NodeId) -> Vec<NodeId> {
    match graph.op(id) {
        Op::Concat(parts) => parts
            .iter()
            .flat_map(|p| flatten_concat(graph, *p))
            .collect(),
        _ => vec![id],
    }
}

pub fn hoist_sums(ir: &CellIr, shapes: &Shapes) -> (CellIr, Shapes) {
    rebuild(ir, shapes, |rb, old, op| {
        if !matches!(op, Op::Bin(BinOp::Add | BinOp::Sub, ..)) {
            return rb.add(op, old);
        }
        let mut terms = Vec::new();
        signed_terms(&rb.ir.graph, &op, true, &mut terms);
        let dynamic = dynamic_nodes(&rb.ir.graph);
        let is_vector = |rb: &Rebuild<'_>, id: NodeId| rb.size(id).is_some();
        type Terms = Vec<(bool, NodeId)>;
        let (fixed, changing): (Terms, Terms) = terms.iter().partition(|(_, id)| !dynamic[*id]);
        let hoistable = fixed.iter().any(|(_, id)| is_vector(rb, *id));
        let already_first = fixed.len() == 1 && terms[0] == fixed[0];
        if changing.is_empty() || !hoistable || already_first {
            return rb.add(op, old);
        }
        // The step-independent terms first, then the rest: (a + b) + c - d.
        let mut acc: Option<NodeId> = None;
        for (positive, id) in fixed.into_iter().chain(changing) {
            acc = Some(match (acc, positive) {
                (None, true) => id,
                (None, false) => rb.add(Op::Neg(id), old),
                (Some(a), true) => rb.add(Op::Bin(BinOp::Add, a, id), old),
                (Some(a), false) => rb.add(Op::Bin(BinOp::Sub, a, id), old),
            });
        }
        acc.expect("a sum has terms")
    })
}

/// `a - (b + c)` as `[(+, a), (-, b), (-, c)]`.
fn signed_terms(graph: &Graph, op: &Op, positive: bool, out: &mut Vec<(bool, NodeId)>) {
    match op {
        Op::Bin(BinOp::Add, a, b) => {
            term(graph, *a, positive, out);
            term(graph, *b, positive, out);
        }
        Op::Bin(BinOp::Sub, a, b) => {
            term(graph, *a, positive, out);
            term(graph, *b, !positive, out);
        }
        _ => unreachable!("only sums are flattened"),
    }
}

fn term(graph: &Graph, id: NodeId, positive: bool, out: &mut Vec<(bool, NodeId)>) {
    match graph.op(id) {
        op @ Op::Bin(BinOp::Add | BinOp::Sub, ..) => signed_terms(graph, op, positive, out),
        _ => out.push((positive, id)),
    }
}

pub fn stack_products(ir: &CellIr, shapes: &Shapes) -> (CellIr, Shapes) {
    // The members of each stack: every product with the same vector, in order.
    let mut members: HashMap<NodeId, Vec<Block>> = HashMap::new();
    for node in &ir.graph.nodes {
        if let Op::Gemm { blocks, vec } = &node.op {
            members
                .entry(*vec)
                .or_default()
                .extend(blocks.iter().cloned());
        }
    }
    let mut stacks: HashMap<NodeId, NodeId> = HashMap::new();
    let mut offsets: HashMap<NodeId, Size> = HashMap::new();
    rebuild(ir, shapes, |rb, old, op| {
        let Op::Gemm { blocks, vec } = &op else {
            return rb.add(op, old);
        };
        let old_vec = match rb.old.graph.op(old) {
            Op::Gemm { vec, .. } => *vec,
            _ => unreachable!(),
        };
        let all = &members[&old_vec];
        if all.len() == 1 {
            return rb.add(op, old);
        }
        let stack = *stacks.entry(*vec).or_insert_with(|| {
            rb.add(
                Op::Gemm {
                    blocks: all.clone(),
                    vec: *vec,
                },
                old,
            )
        });
        let start = offsets.get(vec).cloned().unwrap_or_default();
        let len = rb.old_shapes.params[blocks[0].mat].0.clone();
        offsets.insert(*vec, start.plus(&len));
        rb.add(
            Op::Slice {
                of: stack,
                start,
                len,
            },
            old,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{compile_ir, lstm};
    use quote::quote;

    fn ops(ir: &CellIr) -> Vec<String> {
        ir.graph
            .nodes
            .iter()
            .map(|n| format!("{:?}", n.op))
            .collect()
    }

    #[test]
    fn lstm_stacks_four_gates_per_vector_and_hoists_the_biases() {
        let (ir, _) = compile_ir(lstm());
        let gemms: Vec<&Op> = ir
            .graph
            .nodes
            .iter()
            .map(|n| &n.op)
            .filter(|op| matches!(op, Op::Gemm { .. }))
            .collect();
        assert_eq!(gemms.len(), 2, "{:#?}", ops(&ir));
        for gemm in gemms {
            let Op::Gemm { blocks, .. } = gemm else {
                unreachable!()
            };
            assert_eq!(blocks.len(), 4);
        }
        // Each gate's pre-activation is (static part) + (recurrent slice): the biases
        // are added to the input projection, outside the time loop.
        let dynamic = dynamic_nodes(&ir.graph);
        let static_sums = ir
            .graph
            .nodes
            .iter()
            .enumerate()
            .filter(|(id, n)| matches!(n.op, Op::Bin(BinOp::Add, ..)) && !dynamic[*id])
            .count();
        assert_eq!(static_sums, 8, "{:#?}", ops(&ir));
    }

    #[test]
    fn concatenated_products_are_split_by_columns() {
        let (ir, shapes) = compile_ir(quote! {
            fn colah(x: Input, h: State) {
                h = tanh(W * [h, x] + b);
            }
        });
        let blocks: Vec<&Block> = ir
            .graph
            .nodes
            .iter()
            .filter_map(|n| match &n.op {
                Op::Gemm { blocks, .. } => Some(&blocks[0]),
                _ => None,
            })
            .collect();
        assert_eq!(blocks.len(), 2);
        let syms = &ir.syms;
        let (rows, cols) = &shapes.params[blocks[0].mat];
        assert_eq!(rows.display(syms).to_string(), "H");
        assert_eq!(cols.as_ref().unwrap().display(syms).to_string(), "I + H");
        assert!(!ir.graph.nodes.iter().any(|n| matches!(n.op, Op::Concat(_))));
    }

    #[test]
    fn literals_fold() {
        let (ir, _) = compile_ir(quote! {
            fn scaled(x: Input, h: State) {
                h = (2.0 * 0.25 + 0.5) * tanh(W * x) - -(1.0 - 1.0) * h;
            }
        });
        let lits: Vec<f64> = ir
            .graph
            .nodes
            .iter()
            .filter_map(|n| match n.op {
                Op::Lit(bits) => Some(f64::from_bits(bits)),
                _ => None,
            })
            .collect();
        assert!(lits.contains(&1.0), "{lits:?}");
        assert!(
            lits.iter().all(|l| *l == 1.0 || *l == 0.0 || *l == -0.0),
            "{lits:?}"
        );
    }
}
