//! Stage 4: sizes. Every vector's size and every matrix's (rows, cols) is inferred by
//! unification from the sizes of the inputs and states; concatenation adds sizes. A
//! conflict is an error at the expression, naming both sizes.

use proc_macro2::Span;

use crate::ctxt::Ctxt;
use crate::ir::{CellIr, NodeId, Op};
use crate::size::Size;

/// The inferred sizes of a cell.
#[derive(Clone, Debug)]
pub struct Shapes {
    /// The size of each node's vector; `None` for scalars (literals and what is computed
    /// from literals alone).
    pub nodes: Vec<Option<Size>>,
    /// Each parameter's (rows, cols); `cols` is `None` for a vector parameter.
    pub params: Vec<(Size, Option<Size>)>,
}

impl Shapes {
    pub fn size(&self, node: NodeId) -> &Size {
        self.nodes[node].as_ref().expect("a vector node")
    }

    pub fn is_scalar(&self, node: NodeId) -> bool {
        self.nodes[node].is_none()
    }
}

/// Union-find over size variables, each class optionally bound to a size.
struct Unifier {
    parent: Vec<usize>,
    bound: Vec<Option<Size>>,
}

impl Unifier {
    fn fresh(&mut self) -> usize {
        self.parent.push(self.parent.len());
        self.bound.push(None);
        self.parent.len() - 1
    }

    fn find(&mut self, v: usize) -> usize {
        let mut root = v;
        while self.parent[root] != root {
            root = self.parent[root];
        }
        self.parent[v] = root;
        root
    }

    fn get(&mut self, v: usize) -> Option<Size> {
        let root = self.find(v);
        self.bound[root].clone()
    }

    /// Joins two classes; on conflict returns both sizes (a's, b's).
    fn unify(&mut self, a: usize, b: usize) -> Result<(), (Size, Size)> {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra == rb {
            return Ok(());
        }
        match (self.bound[ra].clone(), self.bound[rb].clone()) {
            (Some(sa), Some(sb)) if sa != sb => return Err((sa, sb)),
            (sa, sb) => {
                self.parent[rb] = ra;
                self.bound[ra] = sa.or(sb);
            }
        }
        Ok(())
    }

    fn bind(&mut self, v: usize, size: Size) -> Result<(), Size> {
        let root = self.find(v);
        match &self.bound[root] {
            Some(existing) if *existing != size => Err(existing.clone()),
            _ => {
                self.bound[root] = Some(size);
                Ok(())
            }
        }
    }
}

/// Infers every size; `None` when a conflict or ambiguity was reported to `cx`.
pub fn infer(cx: &Ctxt, ir: &CellIr) -> Option<Shapes> {
    let graph = &ir.graph;
    let syms = &ir.syms;
    let mut u = Unifier {
        parent: Vec::new(),
        bound: Vec::new(),
    };
    // One variable per node (unused for scalars) and per parameter dimension.
    let node_var: Vec<usize> = (0..graph.len()).map(|_| u.fresh()).collect();
    let param_var: Vec<(usize, usize)> = ir.params.iter().map(|_| (u.fresh(), u.fresh())).collect();
    let mut scalar = vec![false; graph.len()];
    let mut concats: Vec<NodeId> = Vec::new();
    let text = |id: NodeId| graph.nodes[id].text.clone();
    // The i-th operand of a node as the user wrote it there.
    let written = |id: NodeId, i: usize, operand: NodeId| {
        ir.written
            .get(&id)
            .and_then(|w| w.get(i).cloned())
            .unwrap_or_else(|| text(operand))
    };
    let show = |size: &Size| size.display(syms).to_string();
    let mut failed = false;
    let mut fail = |span: Span, message: String| {
        cx.error_at(span, message);
        failed = true;
    };

    for (id, node) in graph.nodes.iter().enumerate() {
        let v = node_var[id];
        match &node.op {
            Op::Input(k) => u
                .bind(v, Size::symbol(ir.inputs[*k].sym))
                .expect("fresh variable"),
            Op::State(k) => u
                .bind(v, Size::symbol(ir.states[*k].sym))
                .expect("fresh variable"),
            Op::Param(p) => u.unify(v, param_var[*p].0).expect("unbound variables"),
            Op::Lit(_) => scalar[id] = true,
            Op::Call(_, a) | Op::Neg(a) => {
                scalar[id] = scalar[*a];
                u.unify(v, node_var[*a]).ok();
            }
            Op::Bin(op, a, b) => match (scalar[*a], scalar[*b]) {
                (true, true) => scalar[id] = true,
                (true, false) => u.unify(v, node_var[*b]).expect("fresh variable"),
                (false, true) => u.unify(v, node_var[*a]).expect("fresh variable"),
                (false, false) => {
                    if let Err((sa, sb)) = u.unify(node_var[*a], node_var[*b]) {
                        fail(
                            node.span,
                            format!(
                                "`{}`: `{}` has size {} but `{}` has size {}; `{}` needs equal sizes",
                                node.text,
                                written(id, 0, *a),
                                show(&sa),
                                written(id, 1, *b),
                                show(&sb),
                                op.symbol()
                            ),
                        );
                    }
                    u.unify(v, node_var[*a]).ok();
                }
            },
            Op::Gemm { blocks, vec } => {
                let (rows, cols) = param_var[blocks[0].mat];
                if scalar[*vec] {
                    fail(
                        node.span,
                        format!(
                            "`{}`: a matrix multiplies a vector, not the scalar `{}`",
                            node.text,
                            written(id, 1, *vec)
                        ),
                    );
                } else if let Err((sm, sv)) = u.unify(cols, node_var[*vec]) {
                    let name = &ir.params[blocks[0].mat].name;
                    fail(
                        node.span,
                        format!(
                            "`{}`: `{name}` has {} columns but `{}` has size {}",
                            node.text,
                            show(&sm),
                            written(id, 1, *vec),
                            show(&sv)
                        ),
                    );
                }
                u.unify(v, rows).expect("fresh variable");
            }
            Op::Concat(parts) => {
                for (i, part) in parts.iter().enumerate().filter(|(_, p)| scalar[**p]) {
                    fail(
                        node.span,
                        format!(
                            "`{}`: cannot concatenate the scalar `{}`",
                            node.text,
                            written(id, i, *part)
                        ),
                    );
                }
                concats.push(id);
            }
            other => unreachable!("backward op {other:?} before autodiff"),
        }
    }
    for (k, &new) in ir.new_states.iter().enumerate() {
        let state = &ir.states[k];
        let (span, text) = &ir.assignments[k];
        if scalar[new] {
            fail(
                *span,
                format!(
                    "state `{}` is assigned the scalar `{text}`; a state is a vector",
                    state.name
                ),
            );
        } else if let Err(found) = u.bind(node_var[new], Size::symbol(state.sym)) {
            fail(
                *span,
                format!(
                    "state `{}` has size {} but is assigned `{text}` of size {}",
                    state.name,
                    syms[state.sym],
                    show(&found)
                ),
            );
        }
    }
    solve_concats(
        &mut u,
        &concats,
        graph,
        &node_var,
        &mut |span, message| fail(span, message),
        syms,
    );
    if failed {
        return None;
    }

    // Every size must now be known; an unknown one is an ambiguity in the equations.
    let mut nodes = Vec::with_capacity(graph.len());
    for (id, node) in graph.nodes.iter().enumerate() {
        if scalar[id] {
            nodes.push(None);
            continue;
        }
        match u.get(node_var[id]) {
            Some(size) => nodes.push(Some(size)),
            None => {
                cx.error_at(
                    node.span,
                    format!(
                        "cannot infer the size of `{}`; nothing in the equations determines it",
                        node.text
                    ),
                );
                return None;
            }
        }
    }
    let mut params = Vec::with_capacity(ir.params.len());
    for (p, decl) in ir.params.iter().enumerate() {
        let (rows, cols) = param_var[p];
        let rows = u.get(rows);
        let cols = if decl.is_matrix {
            u.get(cols).map(Some)
        } else {
            Some(None)
        };
        match (rows, cols) {
            (Some(rows), Some(cols)) => params.push((rows, cols)),
            _ => {
                cx.error_at(
                    decl.span,
                    format!(
                        "cannot infer the shape of `{}`; nothing in the equations determines it",
                        decl.name
                    ),
                );
                return None;
            }
        }
    }
    Some(Shapes { nodes, params })
}

/// `[a, b]` has size |a| + |b|: solved once enough of the three sizes are known.
fn solve_concats(
    u: &mut Unifier,
    concats: &[NodeId],
    graph: &crate::ir::Graph,
    node_var: &[usize],
    fail: &mut dyn FnMut(Span, String),
    syms: &[String],
) {
    let mut pending: Vec<NodeId> = concats.to_vec();
    loop {
        let before = pending.len();
        pending.retain(|&id| {
            let node = &graph.nodes[id];
            let Op::Concat(parts) = &node.op else { unreachable!() };
            let sizes: Vec<Option<Size>> = parts.iter().map(|p| u.get(node_var[*p])).collect();
            let total = u.get(node_var[id]);
            let unknown: Vec<usize> = (0..parts.len()).filter(|i| sizes[*i].is_none()).collect();
            if unknown.is_empty() {
                let sum = sizes.iter().flatten().fold(Size::zero(), |acc, s| acc.plus(s));
                if let Err(expected) = u.bind(node_var[id], sum.clone()) {
                    fail(
                        node.span,
                        format!(
                            "`{}` has size {} but is used where size {} is needed",
                            node.text,
                            sum.display(syms),
                            expected.display(syms)
                        ),
                    );
                }
                return false;
            }
            if let (Some(total), [missing]) = (total, unknown.as_slice()) {
                let known = sizes.iter().flatten().fold(Size::zero(), |acc, s| acc.plus(s));
                match total.minus(&known) {
                    Some(rest) if !rest.is_zero() => {
                        u.bind(node_var[parts[*missing]], rest).expect("unbound part");
                    }
                    _ => fail(
                        node.span,
                        format!(
                            "`{}` is used where size {} is needed, but its known parts already have size {}",
                            node.text,
                            total.display(syms),
                            known.display(syms)
                        ),
                    ),
                }
                return false;
            }
            true
        });
        if pending.len() == before {
            return;
        }
    }
}

/// The size of `op`'s result from the sizes of its operands: how every pass after
/// inference keeps `Shapes` up to date as it adds nodes.
pub fn propagate(
    ir: &CellIr,
    params: &[(Size, Option<Size>)],
    nodes: &[Option<Size>],
    op: &Op,
) -> Option<Size> {
    let block_cols = |b: &crate::ir::Block| match &b.cols {
        Some((_, len)) => len.clone(),
        None => params[b.mat].1.clone().expect("a matrix parameter"),
    };
    match op {
        Op::Input(k) => Some(Size::symbol(ir.inputs[*k].sym)),
        Op::State(k) | Op::AdjState(k) => Some(Size::symbol(ir.states[*k].sym)),
        Op::Param(p) => Some(params[*p].0.clone()),
        Op::Lit(_) => None,
        Op::Call(_, a) | Op::Neg(a) | Op::Deriv(_, a) | Op::Bridge(a) => nodes[*a].clone(),
        Op::Bin(_, a, b) => nodes[*a].clone().or_else(|| nodes[*b].clone()),
        Op::Gemm { blocks, .. } => Some(
            blocks
                .iter()
                .fold(Size::zero(), |acc, b| acc.plus(&params[b.mat].0)),
        ),
        Op::GemmT { blocks, .. } => Some(block_cols(&blocks[0])),
        Op::Concat(parts) => Some(parts.iter().fold(Size::zero(), |acc, p| {
            acc.plus(nodes[*p].as_ref().expect("vector part"))
        })),
        Op::Slice { len, .. } => Some(len.clone()),
        Op::Zeros(size) => Some(size.clone()),
    }
}

impl Shapes {
    /// Adds `op` to the graph of `ir`, recording its size.
    pub fn add(&mut self, ir: &mut CellIr, op: Op, span: Span, text: impl Into<String>) -> NodeId {
        let size = propagate(ir, &self.params, &self.nodes, &op);
        let id = ir.graph.add(op, span, text);
        if id == self.nodes.len() {
            self.nodes.push(size);
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn infer_cell(item: proc_macro2::TokenStream) -> Result<(CellIr, Shapes), Vec<String>> {
        let cx = Ctxt::new();
        let cell = crate::parse::parse(&cx, quote!(), item).unwrap();
        crate::validate::validate(&cx, &cell);
        let ir = crate::ir::build(&cell);
        let shapes = infer(&cx, &ir);
        match cx.check() {
            Ok(()) => Ok((ir, shapes.unwrap())),
            Err(e) => Err(e.into_iter().map(|e| e.to_string()).collect()),
        }
    }

    fn param_shape(ir: &CellIr, shapes: &Shapes, name: &str) -> String {
        let p = ir.params.iter().position(|p| p.name == name).unwrap();
        let (rows, cols) = &shapes.params[p];
        match cols {
            Some(cols) => format!("({}, {})", rows.display(&ir.syms), cols.display(&ir.syms)),
            None => format!("{}", rows.display(&ir.syms)),
        }
    }

    #[test]
    fn infers_matrix_and_vector_shapes() {
        let (ir, shapes) = infer_cell(quote! {
            fn cell(x: Input, e: Input<E>, h: State<P>, c: State) {
                let g = tanh(W * [c, x] + V * e + b);
                c = g * c + p * tanh(U * h);
                h = R * c + q;
            }
        })
        .unwrap();
        assert_eq!(param_shape(&ir, &shapes, "W"), "(H, I + H)");
        assert_eq!(param_shape(&ir, &shapes, "V"), "(H, E)");
        assert_eq!(param_shape(&ir, &shapes, "b"), "H");
        assert_eq!(param_shape(&ir, &shapes, "U"), "(H, P)");
        assert_eq!(param_shape(&ir, &shapes, "R"), "(P, H)");
        assert_eq!(param_shape(&ir, &shapes, "q"), "P");
    }

    #[test]
    fn a_concatenation_part_is_inferred_from_the_total() {
        let (ir, shapes) = infer_cell(quote! {
            fn cell(x: Input, h: State) {
                h = tanh(W * [h, x] + W * [a, x]);
            }
        })
        .unwrap();
        assert_eq!(param_shape(&ir, &shapes, "a"), "H");
        // Here nothing fixes `M`'s columns, so `a` could have any size.
        let errors = infer_cell(quote! {
            fn cell(x: Input, h: State) {
                h = tanh(W * [h, x] + M * [a, h]);
            }
        })
        .map(|_| ())
        .unwrap_err();
        assert!(
            errors.iter().any(|e| e.contains("cannot infer")),
            "{errors:?}"
        );
    }

    #[test]
    fn conflicts_name_both_sizes() {
        let errors = infer_cell(quote! {
            fn cell(x: Input, h: State<P>, c: State) {
                let f = sigmoid(W * x) * c;
                c = f * x;
                h = c;
            }
        })
        .map(|_| ())
        .unwrap_err();
        let all = errors.join("\n");
        assert!(
            all.contains("`f * x`: `f` has size H but `x` has size I"),
            "{all}"
        );
        assert!(
            all.contains("state `h` has size P but is assigned `c` of size H"),
            "{all}"
        );
        assert!(!all.contains("state `c`"), "one mistake, one error: {all}");
    }
}
