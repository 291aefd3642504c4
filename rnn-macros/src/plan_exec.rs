//! Test-only: runs a `Plan` over a batch of variable-length sequences in f64, exactly as
//! the runtime runs generated code (tape buffers, the unrolling loop, BPTT), so that
//! property tests can check the scheduler on random cells without compiling them.

use crate::compile::Compiled;
use crate::func::Func;
use crate::parse::BinOp;
use crate::schedule::{Cols, KOp, KStmt, Loc, Operand, Plan, Stage};

pub struct Exec<'a> {
    c: &'a Compiled,
    plan: &'a Plan,
    dims: Vec<usize>,
    /// Sequences running at each step, and where each step's columns start.
    batch_sizes: Vec<usize>,
    offsets: Vec<usize>,
    columns: usize,
    bufs: Vec<Vec<f64>>,
}

/// The results of a forward and a backward pass.
pub struct Results {
    pub output: Vec<f64>,
    pub final_states: Vec<Vec<f64>>,
    pub d_params: Vec<Vec<f64>>,
    pub d_inputs: Vec<Vec<f64>>,
    pub d_initial: Vec<Vec<f64>>,
}

impl<'a> Exec<'a> {
    pub fn new(c: &'a Compiled, plan: &'a Plan, dims: Vec<usize>, batch_sizes: Vec<usize>) -> Self {
        let mut offsets = Vec::new();
        let mut columns = 0;
        for &n in &batch_sizes {
            offsets.push(columns);
            columns += n;
        }
        Exec {
            c,
            plan,
            dims,
            batch_sizes,
            offsets,
            columns,
            bufs: Vec::new(),
        }
    }

    fn rows(&self, buf: usize) -> usize {
        self.plan.buffers[buf].rows.eval(&self.dims)
    }

    fn col0(&self, buf: usize, step: bool, off: usize) -> usize {
        if step && self.plan.buffers[buf].cols == Cols::Steps {
            off
        } else {
            0
        }
    }

    fn at(&self, loc: &Loc, step: bool, off: usize, c: usize, j: usize) -> usize {
        (self.col0(loc.buf, step, off) + c) * self.rows(loc.buf) + loc.row.eval(&self.dims) + j
    }

    /// Forward and backward, with `d_output` and `d_final` the loss's gradients.
    pub fn run(
        &mut self,
        params: &[Vec<f64>],
        inputs: &[Vec<f64>],
        initial: &[Vec<f64>],
        d_output: &[f64],
        d_final: &[Vec<f64>],
    ) -> Results {
        let (plan, ir) = (self.plan, &self.c.ir);
        let batch = self.batch_sizes[0];
        self.bufs = plan
            .buffers
            .iter()
            .map(|b| {
                let cols = match &b.cols {
                    Cols::Steps => self.columns,
                    Cols::Batch => batch,
                    Cols::Fixed(cols) => cols.eval(&self.dims),
                };
                vec![0.0; b.rows.eval(&self.dims) * cols]
            })
            .collect();
        let mut grads: Vec<Vec<f64>> = params.iter().map(|p| vec![0.0; p.len()]).collect();
        for (k, input) in inputs.iter().enumerate() {
            self.bufs[plan.roles.inputs[k]].copy_from_slice(input);
        }
        for (k, state) in initial.iter().enumerate() {
            self.bufs[plan.roles.state[k]].copy_from_slice(state);
        }
        for stack in &plan.stacks {
            let (ld, cols) = (
                self.rows(stack.buf),
                self.bufs[stack.buf].len() / self.rows(stack.buf),
            );
            let mut row = 0;
            for block in &stack.blocks {
                let (rows, _) = &self.c.shapes.params[block.mat];
                let rows = rows.eval(&self.dims);
                let start = block.cols.as_ref().map_or(0, |(s, _)| s.eval(&self.dims));
                for c in 0..cols {
                    for r in 0..rows {
                        self.bufs[stack.buf][c * ld + row + r] =
                            params[block.mat][(start + c) * rows + r];
                    }
                }
                row += rows;
            }
        }
        let columns = self.columns;
        self.stages(&plan.prepare, false, 0, columns, params, &mut grads);
        let out = ir.output;
        let out_rows = ir.states[out].sym;
        let out_rows = self.dims[out_rows];
        let mut output = vec![0.0; out_rows * columns];
        for t in 0..self.batch_sizes.len() {
            let (off, n) = (self.offsets[t], self.batch_sizes[t]);
            for k in 0..ir.states.len() {
                let rows = self.dims[ir.states[k].sym];
                let now = self.bufs[plan.roles.state[k]][..rows * n].to_vec();
                self.bufs[plan.roles.prev[k]][off * rows..(off + n) * rows].copy_from_slice(&now);
            }
            self.stages(&plan.step_forward, true, off, n, params, &mut grads);
            output[off * out_rows..(off + n) * out_rows]
                .copy_from_slice(&self.bufs[plan.roles.state[out]][..out_rows * n]);
        }
        let final_states: Vec<Vec<f64>> = plan
            .roles
            .state
            .iter()
            .map(|&b| self.bufs[b].clone())
            .collect();
        for (k, d) in d_final.iter().enumerate() {
            self.bufs[plan.roles.d_state[k]].copy_from_slice(d);
        }
        for t in (0..self.batch_sizes.len()).rev() {
            let (off, n) = (self.offsets[t], self.batch_sizes[t]);
            for i in 0..out_rows * n {
                self.bufs[plan.roles.d_state[out]][i] += d_output[off * out_rows + i];
            }
            self.stages(&plan.step_backward, true, off, n, params, &mut grads);
            for k in 0..ir.states.len() {
                let rows = self.dims[ir.states[k].sym];
                let prev = self.bufs[plan.roles.d_prev[k]][..rows * n].to_vec();
                self.bufs[plan.roles.d_state[k]][..rows * n].copy_from_slice(&prev);
            }
        }
        self.stages(&plan.finish, false, 0, columns, params, &mut grads);
        for w in &plan.weight_grads {
            let (rows, cols) = (w.rows.eval(&self.dims), w.cols.eval(&self.dims));
            let param_rows = self.c.shapes.params[w.param].0.eval(&self.dims);
            let start = w.col_start.eval(&self.dims);
            for i in 0..rows {
                for c in 0..cols {
                    let sum: f64 = (0..columns)
                        .map(|t| {
                            self.bufs[w.dz.buf][self.at(&w.dz, false, 0, t, i)]
                                * self.bufs[w.v.buf][self.at(&w.v, false, 0, t, c)]
                        })
                        .sum();
                    grads[w.param][(start + c) * param_rows + i] += sum;
                }
            }
        }
        Results {
            output,
            final_states,
            d_params: grads,
            d_inputs: plan
                .roles
                .d_inputs
                .iter()
                .map(|&b| self.bufs[b].clone())
                .collect(),
            d_initial: plan
                .roles
                .d_state
                .iter()
                .map(|&b| self.bufs[b].clone())
                .collect(),
        }
    }

    fn stages(
        &mut self,
        stages: &[Stage],
        step: bool,
        off: usize,
        n: usize,
        params: &[Vec<f64>],
        grads: &mut [Vec<f64>],
    ) {
        for stage in stages {
            match stage {
                Stage::Gemm {
                    stack,
                    transpose,
                    src,
                    dst,
                } => {
                    let s = self.plan.stacks[*stack].buf;
                    let (s_rows, s_cols) = (self.rows(s), self.bufs[s].len() / self.rows(s));
                    let (m, k) = if *transpose {
                        (s_cols, s_rows)
                    } else {
                        (s_rows, s_cols)
                    };
                    for c in 0..n {
                        for i in 0..m {
                            let sum: f64 = (0..k)
                                .map(|kk| {
                                    let w = if *transpose {
                                        self.bufs[s][i * s_rows + kk]
                                    } else {
                                        self.bufs[s][kk * s_rows + i]
                                    };
                                    w * self.bufs[src.buf][self.at(src, step, off, c, kk)]
                                })
                                .sum();
                            let at = self.at(dst, step, off, c, i);
                            self.bufs[dst.buf][at] = sum;
                        }
                    }
                }
                Stage::Copy { src, dst, rows } => {
                    for c in 0..n {
                        for j in 0..rows.eval(&self.dims) {
                            let v = self.bufs[src.buf][self.at(src, step, off, c, j)];
                            let at = self.at(dst, step, off, c, j);
                            self.bufs[dst.buf][at] = v;
                        }
                    }
                }
                Stage::Broadcast { param, dst } => {
                    for c in 0..n {
                        for (j, v) in params[*param].iter().enumerate() {
                            let at = self.at(dst, step, off, c, j);
                            self.bufs[dst.buf][at] = *v;
                        }
                    }
                }
                Stage::Zero { dst, rows } => {
                    for c in 0..n {
                        for j in 0..rows.eval(&self.dims) {
                            let at = self.at(dst, step, off, c, j);
                            self.bufs[dst.buf][at] = 0.0;
                        }
                    }
                }
                Stage::Kernel(kernel) => {
                    let (plan, dims) = (self.plan, self.dims.clone());
                    let address = |l: &Loc, c: usize, j: usize| {
                        let col0 = if step && plan.buffers[l.buf].cols == Cols::Steps {
                            off
                        } else {
                            0
                        };
                        (col0 + c) * plan.buffers[l.buf].rows.eval(&dims) + l.row.eval(&dims) + j
                    };
                    for c in 0..n {
                        for j in 0..kernel.rows.eval(&self.dims) {
                            let mut locals = std::collections::HashMap::new();
                            let value =
                                |o: &Operand,
                                 locals: &std::collections::HashMap<usize, f64>,
                                 bufs: &Vec<Vec<f64>>| match o {
                                    Operand::Local(id) => locals[id],
                                    Operand::Load(l) => bufs[l.buf][address(l, c, j)],
                                    Operand::Param(p) => params[*p][j],
                                    Operand::Lit(v) => *v,
                                };
                            for stmt in &kernel.body {
                                match stmt {
                                    KStmt::Let { id, op } => {
                                        let v = match op {
                                            KOp::Call(f, a) => {
                                                f.eval(value(a, &locals, &self.bufs))
                                            }
                                            KOp::Deriv(f, a) => {
                                                deriv(*f, value(a, &locals, &self.bufs))
                                            }
                                            KOp::Neg(a) => -value(a, &locals, &self.bufs),
                                            KOp::Bin(op, a, b) => {
                                                let (a, b) = (
                                                    value(a, &locals, &self.bufs),
                                                    value(b, &locals, &self.bufs),
                                                );
                                                match op {
                                                    BinOp::Add => a + b,
                                                    BinOp::Sub => a - b,
                                                    BinOp::Mul => a * b,
                                                }
                                            }
                                        };
                                        locals.insert(*id, v);
                                    }
                                    KStmt::Store { value: v, dst } => {
                                        let v = value(v, &locals, &self.bufs);
                                        self.bufs[dst.buf][address(dst, c, j)] = v;
                                    }
                                    KStmt::Accumulate { param, value: v } => {
                                        grads[*param][j] += value(v, &locals, &self.bufs)
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn deriv(f: Func, v: f64) -> f64 {
    f.eval_deriv(v)
}
