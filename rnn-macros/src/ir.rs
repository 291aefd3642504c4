//! Stage 3: the cell as an SSA graph of typed operations. Every node keeps the span and
//! text of the expression it came from, for errors. Nodes are hash-consed, so building
//! a graph twice over the same operands shares them (common subexpressions).

use std::collections::HashMap;

use proc_macro2::Span;

use crate::func::Func;
use crate::parse::{ArgKind, BinOp, CellAst, Expr, Stmt};
use crate::size::Size;
use crate::validate::is_matrix_name;

pub type NodeId = usize;

/// A column block of a matrix parameter: `W` whole, or `W[:, start..start+len]` after
/// `W * [h, x]` is split into `W_h * h + W_x * x`.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Block {
    pub mat: usize,
    pub cols: Option<(Size, Size)>,
}

/// One operation. Forward operations come from the equations; the last group is
/// introduced by `autodiff` for the backward pass.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Op {
    /// `x`: input `k` at the current step.
    Input(usize),
    /// `h` read before its assignment: state `k` as the previous step left it.
    State(usize),
    /// `b_ii`: a vector parameter.
    Param(usize),
    /// `0.5`: a scalar literal (the bits of an f64, so that ops can be hashed).
    Lit(u64),
    /// `sigmoid(a)`
    Call(Func, NodeId),
    /// `-a`
    Neg(NodeId),
    /// `a + b`, `a - b`, `a * b`: elementwise, a scalar operand broadcasts.
    Bin(BinOp, NodeId, NodeId),
    /// `W * v`; after `optimize`, `[W_i; W_f; ...] * v`: the blocks stacked by rows.
    Gemm { blocks: Vec<Block>, vec: NodeId },
    /// `[a, b]`
    Concat(Vec<NodeId>),
    /// Rows `start..start+len` of `of` (the members of a stacked `Gemm`).
    Slice { of: NodeId, start: Size, len: Size },
    /// Backward: the gradient arriving at state `k`'s new value from later steps and
    /// from the loss.
    AdjState(usize),
    /// Backward: f'(x), computed from `f`'s output or input as `Func::deriv_from` says.
    Deriv(Func, NodeId),
    /// Backward: `[W_i; W_f; ...]ᵀ * dz`.
    GemmT { blocks: Vec<Block>, vec: NodeId },
    /// Backward: a vector of zeros.
    Zeros(Size),
    /// Backward: the gradient of a hoisted (step-independent) value, gathered from the
    /// time loop, where node `src` computes it at each step.
    Bridge(NodeId),
}

impl Op {
    pub fn operands(&self) -> Vec<NodeId> {
        match self {
            Op::Input(_)
            | Op::State(_)
            | Op::Param(_)
            | Op::Lit(_)
            | Op::AdjState(_)
            | Op::Zeros(_) => vec![],
            Op::Call(_, a) | Op::Neg(a) | Op::Deriv(_, a) | Op::Bridge(a) => vec![*a],
            Op::Bin(_, a, b) => vec![*a, *b],
            Op::Gemm { vec, .. } | Op::GemmT { vec, .. } => vec![*vec],
            Op::Slice { of, .. } => vec![*of],
            Op::Concat(parts) => parts.clone(),
        }
    }

    pub fn lit(value: f64) -> Op {
        Op::Lit(value.to_bits())
    }
}

#[derive(Clone, Debug)]
pub struct Node {
    pub op: Op,
    pub span: Span,
    /// The source text, for error messages.
    pub text: String,
}

/// Nodes in topological order: every operand precedes its users.
#[derive(Clone, Default)]
pub struct Graph {
    pub nodes: Vec<Node>,
    index: HashMap<Op, NodeId>,
}

impl Graph {
    /// Adds `op`, or returns the node that already computes it.
    pub fn add(&mut self, op: Op, span: Span, text: impl Into<String>) -> NodeId {
        if let Some(&id) = self.index.get(&op) {
            return id;
        }
        debug_assert!(
            op.operands().iter().all(|&o| o < self.nodes.len()),
            "operand after user"
        );
        let id = self.nodes.len();
        self.index.insert(op.clone(), id);
        self.nodes.push(Node {
            op,
            span,
            text: text.into(),
        });
        id
    }

    pub fn op(&self, id: NodeId) -> &Op {
        &self.nodes[id].op
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }
}

/// A named argument of the cell and the size symbol of its vectors.
#[derive(Clone, Debug)]
pub struct Var {
    pub name: String,
    pub sym: usize,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct ParamDecl {
    pub name: String,
    pub is_matrix: bool,
    pub span: Span,
}

/// The cell after `ir::build`: its graph and what the graph's leaves and roots mean.
#[derive(Clone)]
pub struct CellIr {
    pub graph: Graph,
    /// Size symbols; `I` and `H` first, then the annotated ones in order of appearance.
    pub syms: Vec<String>,
    pub inputs: Vec<Var>,
    pub states: Vec<Var>,
    pub params: Vec<ParamDecl>,
    /// The node assigned to each state: its new value.
    pub new_states: Vec<NodeId>,
    /// Each state's assignment as written (the span and text of its right-hand side).
    pub assignments: Vec<(Span, String)>,
    /// The operands of each node as the equations wrote them (`f` rather than its
    /// definition), for messages; filled by `build` only.
    pub written: HashMap<NodeId, Vec<String>>,
    /// The state that is the cell's output.
    pub output: usize,
    /// The equations as written, one per statement, for the docs.
    pub equations: Vec<String>,
}

pub const INPUT_SYM: usize = 0;
pub const HIDDEN_SYM: usize = 1;

/// Builds the graph of a validated cell.
pub fn build(cell: &CellAst) -> CellIr {
    let mut syms = vec!["I".to_string(), "H".to_string()];
    let mut sym_of = |size: &Option<syn::Ident>, default: usize| match size {
        None => default,
        Some(name) => {
            let name = name.to_string();
            syms.iter().position(|s| *s == name).unwrap_or_else(|| {
                syms.push(name);
                syms.len() - 1
            })
        }
    };
    let mut inputs = Vec::new();
    let mut states = Vec::new();
    for arg in &cell.args {
        let var = |sym| Var {
            name: arg.name.to_string(),
            sym,
            span: arg.name.span(),
        };
        match arg.kind {
            ArgKind::Input => inputs.push(var(sym_of(&arg.size, INPUT_SYM))),
            ArgKind::State => states.push(var(sym_of(&arg.size, HIDDEN_SYM))),
        }
    }
    let mut builder = Builder {
        graph: Graph::default(),
        env: HashMap::new(),
        params: Vec::new(),
        written: HashMap::new(),
    };
    for (k, input) in inputs.iter().enumerate() {
        let id = builder.graph.add(Op::Input(k), input.span, &input.name);
        builder.env.insert(input.name.clone(), id);
    }
    for (k, state) in states.iter().enumerate() {
        let id = builder.graph.add(Op::State(k), state.span, &state.name);
        builder.env.insert(state.name.clone(), id);
    }
    let mut new_states = vec![usize::MAX; states.len()];
    let mut assignments = vec![(Span::call_site(), String::new()); states.len()];
    let mut equations = Vec::new();
    for stmt in &cell.stmts {
        let value = builder.expr(stmt.value());
        let name = stmt.name().to_string();
        if let Stmt::Assign { .. } = stmt {
            let k = states
                .iter()
                .position(|s| s.name == name)
                .expect("validated: assigned a state");
            new_states[k] = value;
            assignments[k] = (stmt.value().span(), stmt.value().to_text());
        }
        builder.env.insert(name, value);
        equations.push(stmt.to_text());
    }
    let output = cell
        .output
        .as_ref()
        .and_then(|name| states.iter().position(|s| *name == s.name))
        .unwrap_or(0);
    CellIr {
        graph: builder.graph,
        syms,
        inputs,
        states,
        params: builder.params,
        new_states,
        assignments,
        written: builder.written,
        output,
        equations,
    }
}

struct Builder {
    graph: Graph,
    env: HashMap<String, NodeId>,
    params: Vec<ParamDecl>,
    written: HashMap<NodeId, Vec<String>>,
}

impl Builder {
    fn param(&mut self, ident: &syn::Ident) -> usize {
        let name = ident.to_string();
        self.params
            .iter()
            .position(|p| p.name == name)
            .unwrap_or_else(|| {
                self.params.push(ParamDecl {
                    is_matrix: is_matrix_name(&name),
                    name,
                    span: ident.span(),
                });
                self.params.len() - 1
            })
    }

    fn expr(&mut self, expr: &Expr) -> NodeId {
        let text = expr.to_text();
        let span = expr.span();
        let op = match expr {
            Expr::Ident(ident) => {
                if let Some(&id) = self.env.get(&ident.to_string()) {
                    return id;
                }
                Op::Param(self.param(ident))
            }
            Expr::Lit(value, _) => Op::lit(*value),
            Expr::Neg(inner, _) => Op::Neg(self.expr(inner)),
            Expr::Binary(BinOp::Mul, lhs, rhs, _) if self.is_matrix_param(lhs) => {
                let Expr::Ident(ident) = &**lhs else {
                    unreachable!("checked by is_matrix_param")
                };
                let mat = self.param(ident);
                let vec = self.expr(rhs);
                Op::Gemm {
                    blocks: vec![Block { mat, cols: None }],
                    vec,
                }
            }
            Expr::Binary(op, lhs, rhs, _) => {
                let lhs = self.expr(lhs);
                let rhs = self.expr(rhs);
                Op::Bin(*op, lhs, rhs)
            }
            Expr::Call(name, args, _) => {
                let func = Func::from_name(&name.to_string()).expect("validated: known function");
                Op::Call(func, self.expr(&args[0]))
            }
            Expr::Concat(parts, _) => Op::Concat(parts.iter().map(|p| self.expr(p)).collect()),
        };
        let id = self.graph.add(op, span, text);
        let operands: Vec<String> = match expr {
            Expr::Binary(_, lhs, rhs, _) => vec![lhs.to_text(), rhs.to_text()],
            Expr::Concat(parts, _) | Expr::Call(_, parts, _) => {
                parts.iter().map(Expr::to_text).collect()
            }
            Expr::Neg(inner, _) => vec![inner.to_text()],
            _ => Vec::new(),
        };
        self.written.entry(id).or_insert(operands);
        id
    }

    fn is_matrix_param(&self, expr: &Expr) -> bool {
        matches!(expr, Expr::Ident(ident) if !self.env.contains_key(&ident.to_string()) && is_matrix_name(&ident.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctxt::Ctxt;
    use quote::quote;

    fn build_ir(item: proc_macro2::TokenStream) -> CellIr {
        let cx = Ctxt::new();
        let cell = crate::parse::parse(&cx, quote!(), item).unwrap();
        cx.check().unwrap();
        build(&cell)
    }

    #[test]
    fn a_statement_after_an_assignment_reads_the_new_value() {
        let ir = build_ir(quote! {
            fn cell(x: Input, h: State, c: State) {
                let before = tanh(c);
                c = before + x;
                h = tanh(c);
            }
        });
        let Op::Call(_, read_by_h) = ir.graph.op(ir.new_states[0]) else {
            panic!("h = tanh(..)")
        };
        assert_eq!(*read_by_h, ir.new_states[1], "h reads the new c");
        let Op::Bin(_, before, _) = ir.graph.op(ir.new_states[1]) else {
            panic!("c = .. + x")
        };
        let Op::Call(_, read_by_gate) = ir.graph.op(*before) else {
            panic!("before = tanh(c)")
        };
        assert_eq!(
            *ir.graph.op(*read_by_gate),
            Op::State(1),
            "the gate before the assignment reads the old c"
        );
    }

    #[test]
    fn parameters_by_case_and_shared_subexpressions() {
        let ir = build_ir(quote! {
            fn cell(x: Input, h: State) {
                let a = sigmoid(W * x + b);
                let same = sigmoid(W * x + b);
                h = a * same + U * h;
            }
        });
        let params: Vec<(&str, bool)> = ir
            .params
            .iter()
            .map(|p| (p.name.as_str(), p.is_matrix))
            .collect();
        assert_eq!(params, vec![("W", true), ("b", false), ("U", true)]);
        let sigmoids = ir
            .graph
            .nodes
            .iter()
            .filter(|n| matches!(n.op, Op::Call(..)))
            .count();
        assert_eq!(sigmoids, 1, "the repeated gate is one node");
        assert_eq!(ir.syms, vec!["I", "H"]);
        assert_eq!(ir.equations[2], "h = a * same + U * h");
    }
}
