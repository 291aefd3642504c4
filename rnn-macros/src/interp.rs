//! An interpreter for the IR, on one column in f64: the reference that property tests
//! hold the symbolic derivative (and through it the generated code) to.

use crate::ir::{Block, CellIr, Op};
use crate::parse::BinOp;
use crate::shape::Shapes;

/// Concrete values for one step: sizes, and every leaf of the forward and backward graph.
pub struct Env {
    /// One value per size symbol of the cell.
    pub dims: Vec<usize>,
    pub inputs: Vec<Vec<f64>>,
    pub states: Vec<Vec<f64>>,
    /// Each parameter's values, column-major for matrices.
    pub params: Vec<Vec<f64>>,
    /// The gradient arriving at each state's new value (read by the backward graph).
    pub adj_states: Vec<Vec<f64>>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Scalar(f64),
    Vector(Vec<f64>),
}

impl Value {
    pub fn vector(&self) -> &[f64] {
        match self {
            Value::Vector(v) => v,
            Value::Scalar(_) => panic!("a vector was expected"),
        }
    }
}

/// Evaluates every node of the graph in order.
pub fn eval(ir: &CellIr, shapes: &Shapes, env: &Env) -> Vec<Value> {
    let mut values: Vec<Value> = Vec::with_capacity(ir.graph.len());
    let size = |id: usize| shapes.size(id).eval(&env.dims);
    for (id, node) in ir.graph.nodes.iter().enumerate() {
        let value = match &node.op {
            Op::Input(k) => Value::Vector(env.inputs[*k].clone()),
            Op::State(k) => Value::Vector(env.states[*k].clone()),
            Op::Param(p) => Value::Vector(env.params[*p].clone()),
            Op::AdjState(k) => Value::Vector(env.adj_states[*k].clone()),
            Op::Lit(bits) => Value::Scalar(f64::from_bits(*bits)),
            Op::Zeros(_) => Value::Vector(vec![0.0; size(id)]),
            Op::Bridge(src) => values[*src].clone(),
            Op::Call(func, a) => map(&values[*a], |x| func.eval(x)),
            Op::Deriv(func, a) => map(&values[*a], |x| func.eval_deriv(x)),
            Op::Neg(a) => map(&values[*a], |x| -x),
            Op::Bin(op, a, b) => {
                let f = |x: f64, y: f64| match op {
                    BinOp::Add => x + y,
                    BinOp::Sub => x - y,
                    BinOp::Mul => x * y,
                };
                match (&values[*a], &values[*b]) {
                    (Value::Scalar(x), Value::Scalar(y)) => Value::Scalar(f(*x, *y)),
                    (Value::Scalar(x), Value::Vector(y)) => {
                        Value::Vector(y.iter().map(|y| f(*x, *y)).collect())
                    }
                    (Value::Vector(x), Value::Scalar(y)) => {
                        Value::Vector(x.iter().map(|x| f(*x, *y)).collect())
                    }
                    (Value::Vector(x), Value::Vector(y)) => {
                        Value::Vector(x.iter().zip(y).map(|(x, y)| f(*x, *y)).collect())
                    }
                }
            }
            Op::Gemm { blocks, vec } => {
                let v = values[*vec].vector();
                let mut out = Vec::new();
                for block in blocks {
                    let (rows, cols_total, start) = block_geometry(block, shapes, env);
                    out.extend((0..rows).map(|i| {
                        (0..v.len())
                            .map(|c| env.params[block.mat][(start + c) * rows + i] * v[c])
                            .sum::<f64>()
                    }));
                    let _ = cols_total;
                }
                Value::Vector(out)
            }
            Op::GemmT { blocks, vec } => {
                let dz = values[*vec].vector();
                let cols = size(id);
                let mut out = vec![0.0; cols];
                let mut row0 = 0;
                for block in blocks {
                    let (rows, _, start) = block_geometry(block, shapes, env);
                    for (c, o) in out.iter_mut().enumerate() {
                        *o += (0..rows)
                            .map(|i| env.params[block.mat][(start + c) * rows + i] * dz[row0 + i])
                            .sum::<f64>();
                    }
                    row0 += rows;
                }
                Value::Vector(out)
            }
            Op::Concat(parts) => Value::Vector(
                parts
                    .iter()
                    .flat_map(|p| values[*p].vector().to_vec())
                    .collect(),
            ),
            Op::Slice { of, start, len } => {
                let (start, len) = (start.eval(&env.dims), len.eval(&env.dims));
                Value::Vector(values[*of].vector()[start..start + len].to_vec())
            }
        };
        values.push(value);
    }
    values
}

/// (rows, total columns, first column) of a block of a matrix parameter.
fn block_geometry(block: &Block, shapes: &Shapes, env: &Env) -> (usize, usize, usize) {
    let (rows, cols) = &shapes.params[block.mat];
    let rows = rows.eval(&env.dims);
    let cols = cols.as_ref().expect("a matrix").eval(&env.dims);
    let start = block.cols.as_ref().map_or(0, |(s, _)| s.eval(&env.dims));
    (rows, cols, start)
}

fn map(value: &Value, f: impl Fn(f64) -> f64) -> Value {
    match value {
        Value::Scalar(x) => Value::Scalar(f(*x)),
        Value::Vector(v) => Value::Vector(v.iter().map(|x| f(*x)).collect()),
    }
}
