//! The execution plan that `schedule` produces and `expand` turns into code: tape
//! buffers, stacked weights, and four programs of stages (GEMMs, copies, fused loops).

use crate::func::Func;
use crate::ir::{Block, NodeId};
use crate::parse::BinOp;
use crate::size::Size;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Program {
    Prepare,
    StepForward,
    StepBackward,
    Finish,
}

impl Program {
    pub fn is_step(self) -> bool {
        matches!(self, Program::StepForward | Program::StepBackward)
    }
}

/// The columns of a tape buffer.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Cols {
    /// One column per (step, sequence): indexed by the step's column offset.
    Steps,
    /// One column per sequence of the batch: the current step's values only.
    Batch,
    /// A stacked weight matrix.
    Fixed(Size),
}

#[derive(Clone, Debug)]
pub struct Buffer {
    pub rows: Size,
    pub cols: Cols,
    /// What it holds, for the generated code's comments and for debugging.
    pub what: String,
}

/// Rows `row..` of a buffer.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Loc {
    pub buf: usize,
    pub row: Size,
}

impl Loc {
    pub fn at(buf: usize) -> Loc {
        Loc {
            buf,
            row: Size::zero(),
        }
    }

    pub fn offset(&self, by: &Size) -> Loc {
        Loc {
            buf: self.buf,
            row: self.row.plus(by),
        }
    }
}

/// Matrix blocks stacked by rows into one buffer, built from the parameters before the
/// time loop, so that all gates' products with one vector are one GEMM.
#[derive(Clone, Debug)]
pub struct Stack {
    pub blocks: Vec<Block>,
    pub buf: usize,
}

#[derive(Clone, Debug)]
pub enum Stage {
    /// `dst = stack * src`, or `stackᵀ * src`; with `accumulate`, added to `dst`; with
    /// `biases`, added onto them (the product's other rows onto zeros).
    Gemm {
        stack: usize,
        transpose: bool,
        src: Loc,
        dst: Loc,
        accumulate: bool,
        biases: Vec<Biases>,
    },
    Copy {
        src: Loc,
        dst: Loc,
        rows: Size,
    },
    Zero {
        dst: Loc,
        rows: Size,
    },
    /// Every column of `dst` = vector parameter `param` (for a GEMM that reads it).
    Broadcast {
        param: usize,
        dst: Loc,
    },
    Kernel(Kernel),
}

/// The sum of vector parameters `params` (in their order), which rows `row..` of a
/// product start from in every column: the biases of a hoisted sum `W·x + b + b'`
/// (see `schedule::BiasFold`).
#[derive(Clone, Debug, PartialEq)]
pub struct Biases {
    pub row: Size,
    pub params: Vec<usize>,
}

/// One fused loop over `rows` × the program's columns.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub rows: Size,
    pub body: Vec<KStmt>,
}

impl Kernel {
    /// Whether running the body again for rows it has done leaves every value as it
    /// was: no value it writes is one it reads (at the same block of the same buffer),
    /// and it accumulates no gradient.
    pub fn rows_can_rerun(&self) -> bool {
        let mut loads: Vec<&Loc> = Vec::new();
        let mut stores: Vec<&Loc> = Vec::new();
        for stmt in &self.body {
            match stmt {
                KStmt::Store { dst, .. } => stores.push(dst),
                KStmt::Accumulate { .. } => return false,
                KStmt::Let { .. } => {}
            }
            loads.extend(stmt.operands().into_iter().filter_map(|o| match o {
                Operand::Load(l) => Some(l),
                _ => None,
            }));
        }
        !stores
            .iter()
            .any(|s| loads.iter().any(|l| l.buf == s.buf && l.row == s.row))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Operand {
    /// A value computed earlier in the same loop iteration.
    Local(NodeId),
    Load(Loc),
    /// A vector parameter, indexed by row.
    Param(usize),
    Lit(f64),
}

#[derive(Clone, Debug)]
pub enum KOp {
    Call(Func, Operand),
    Deriv(Func, Operand),
    Neg(Operand),
    Bin(BinOp, Operand, Operand),
}

#[derive(Clone, Debug)]
pub enum KStmt {
    Let {
        id: NodeId,
        op: KOp,
    },
    Store {
        value: Operand,
        dst: Loc,
    },
    /// The gradient of vector parameter `param` gains the value (summed over columns).
    Accumulate {
        param: usize,
        value: Operand,
    },
}

impl KStmt {
    /// The operands the statement reads, in order.
    pub fn operands(&self) -> Vec<&Operand> {
        match self {
            KStmt::Let { op, .. } => match op {
                KOp::Call(_, a) | KOp::Deriv(_, a) | KOp::Neg(a) => vec![a],
                KOp::Bin(_, a, b) => vec![a, b],
            },
            KStmt::Store { value, .. } | KStmt::Accumulate { value, .. } => vec![value],
        }
    }
}

/// After the loop: the parameter blocks that one product stacks (each its gates' rows
/// of `dz`, one after another) gain `dz · vᵀ` over all steps, `v` having `cols` rows.
/// One product for the stack, not one per block: a block's rows rarely fill whole
/// kernel panels (35 of 64 for the notebooks' LSTM), the stack's nearly always do.
#[derive(Clone, Debug)]
pub struct WeightGrad {
    pub dz: Loc,
    pub v: Loc,
    pub cols: Size,
    /// Distinct parameters (the generated code borrows each gradient once).
    pub blocks: Vec<GradBlock>,
    /// Vector parameters whose gradients are rows of `dz` summed over all steps (the
    /// biases of the product's gates), gathered while the product packs `dz`.
    pub sums: Vec<GradSum>,
}

/// The gradient of vector parameter `param` gains rows `row..` of a weight gradient's
/// dz (from its first row), summed over all steps.
#[derive(Clone, Debug)]
pub struct GradSum {
    pub param: usize,
    pub row: Size,
}

/// The gradient of parameter `param`, columns `col_start..col_start + cols` of it,
/// gains `rows` rows of a stacked weight gradient.
#[derive(Clone, Debug)]
pub struct GradBlock {
    pub param: usize,
    pub col_start: Size,
    pub rows: Size,
}

/// The tape buffers that the runtime fills and reads, per input and per state.
#[derive(Clone, Debug, Default)]
pub struct Roles {
    pub inputs: Vec<usize>,
    pub d_inputs: Vec<usize>,
    pub prev: Vec<usize>,
    pub state: Vec<usize>,
    pub d_state: Vec<usize>,
    pub d_prev: Vec<usize>,
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub buffers: Vec<Buffer>,
    pub stacks: Vec<Stack>,
    pub roles: Roles,
    pub prepare: Vec<Stage>,
    pub step_forward: Vec<Stage>,
    pub step_backward: Vec<Stage>,
    pub finish: Vec<Stage>,
    pub weight_grads: Vec<WeightGrad>,
}
