//! Test-only: runs a `Plan` over a batch of variable-length sequences in f64, exactly as
//! the runtime runs generated code (tape buffers, the unrolling loop, BPTT), so that
//! property tests can check the scheduler on random cells without compiling them.

use crate::compile::Compiled;
use crate::func::Func;
use crate::parse::BinOp;
use crate::plan::{Cols, KOp, KStmt, Loc, Operand, Plan, Stage};

pub struct Exec<'a> {
    c: &'a Compiled,
    plan: &'a Plan,
    dims: Vec<usize>,
    /// Sequences running at each step, and where each step's columns start.
    batch_sizes: Vec<usize>,
    offsets: Vec<usize>,
    columns: usize,
    bufs: Vec<Vec<f64>>,
    /// Whether the finish program's input-only stages run (the runtime's
    /// `InputGrads::Compute`).
    pub input_grads: bool,
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
            input_grads: true,
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
        let finish: Vec<Stage> = plan
            .finish
            .iter()
            .zip(crate::input_only::finish_input_only(plan))
            .filter(|(_, input_only)| self.input_grads || !input_only)
            .map(|(stage, _)| stage.clone())
            .collect();
        self.stages(&finish, false, 0, columns, params, &mut grads);
        for w in &plan.weight_grads {
            // The biases' sums, column by column as the packing adds them.
            for sum in &w.sums {
                let row = sum.row.eval(&self.dims);
                for i in 0..grads[sum.param].len() {
                    for t in 0..columns {
                        grads[sum.param][i] +=
                            self.bufs[w.dz.buf][self.at(&w.dz, false, 0, t, row + i)];
                    }
                }
            }
            let cols = w.cols.eval(&self.dims);
            let mut first = 0;
            for block in &w.blocks {
                let rows = block.rows.eval(&self.dims);
                let param_rows = self.c.shapes.params[block.param].0.eval(&self.dims);
                let start = block.col_start.eval(&self.dims);
                for i in 0..rows {
                    for c in 0..cols {
                        let sum: f64 = (0..columns)
                            .map(|t| {
                                self.bufs[w.dz.buf][self.at(&w.dz, false, 0, t, first + i)]
                                    * self.bufs[w.v.buf][self.at(&w.v, false, 0, t, c)]
                            })
                            .sum();
                        grads[block.param][(start + c) * param_rows + i] += sum;
                    }
                }
                first += rows;
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
                    accumulate,
                    biases,
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
                            if !biases.is_empty() {
                                // The rows' biases added to the product in the graph's
                                // order, `(W·x + b) + b'` (the kernels start from the
                                // biases instead: a rounding apart, which the tape's
                                // tests allow for).
                                let biased = biases.iter().find_map(|b| {
                                    let row = b.row.eval(&self.dims);
                                    let len = params[b.params[0]].len();
                                    (row..row + len).contains(&i).then(|| {
                                        b.params
                                            .iter()
                                            .fold(sum, |acc, p| acc + params[*p][i - row])
                                    })
                                });
                                self.bufs[dst.buf][at] = biased.unwrap_or(sum);
                            } else if *accumulate {
                                self.bufs[dst.buf][at] += sum;
                            } else {
                                self.bufs[dst.buf][at] = sum;
                            }
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

#[cfg(test)]
mod tests {
    //! Law: a random cell's plan, run over a batch of variable-length sequences as
    //! the runtime runs it, gives each sequence the outputs that the IR interpreter
    //! gives it step by step, and gradients equal to finite differences of the plan's
    //! own forward pass.

    use super::Exec;
    use crate::interp::{eval, Env};
    use crate::test_util::{compile_full, random_cell, random_values};
    use proptest::prelude::*;

    fn check(source: &str, mut lengths: Vec<usize>, seed: u64) -> Result<(), TestCaseError> {
        let compiled = compile_full(source.parse().expect("generated source lexes"));
        let plan = crate::schedule::schedule(&compiled);
        let (ir, shapes) = (&compiled.ir, &compiled.shapes);
        let dims = vec![2, 3];
        lengths.sort_unstable_by(|a, b| b.cmp(a));
        let batch = lengths.len();
        let batch_sizes: Vec<usize> = (0..lengths[0])
            .map(|t| lengths.iter().filter(|&&l| l > t).count())
            .collect();
        let columns: usize = lengths.iter().sum();
        let mut seed = seed;
        let params: Vec<Vec<f64>> = shapes
            .params
            .iter()
            .map(|(r, c)| {
                random_values(
                    r.eval(&dims) * c.as_ref().map_or(1, |c| c.eval(&dims)),
                    &mut seed,
                )
            })
            .collect();
        let inputs = vec![random_values(2 * columns, &mut seed)];
        let n_states = ir.states.len();
        let initial: Vec<Vec<f64>> = (0..n_states)
            .map(|_| random_values(3 * batch, &mut seed))
            .collect();
        let d_output = random_values(3 * columns, &mut seed);
        let d_final: Vec<Vec<f64>> = (0..n_states)
            .map(|_| random_values(3 * batch, &mut seed))
            .collect();
        let mut exec = Exec::new(&compiled, &plan, dims.clone(), batch_sizes.clone());
        let results = exec.run(&params, &inputs, &initial, &d_output, &d_final);

        // Without the input-only stages, every other gradient is the same to the bit.
        let mut exec = Exec::new(&compiled, &plan, dims.clone(), batch_sizes.clone());
        exec.input_grads = false;
        let without = exec.run(&params, &inputs, &initial, &d_output, &d_final);
        let bits = |values: &[Vec<f64>]| -> Vec<Vec<u64>> {
            values
                .iter()
                .map(|v| v.iter().map(|x| x.to_bits()).collect())
                .collect()
        };
        prop_assert_eq!(
            bits(&without.d_params),
            bits(&results.d_params),
            "{}",
            source
        );
        prop_assert_eq!(
            bits(&without.d_initial),
            bits(&results.d_initial),
            "{}",
            source
        );

        // Forward: each sequence through the interpreter, step by step.
        let offsets: Vec<usize> = batch_sizes
            .iter()
            .scan(0, |acc, n| {
                let off = *acc;
                *acc += n;
                Some(off)
            })
            .collect();
        for (b, &len) in lengths.iter().enumerate() {
            let mut states: Vec<Vec<f64>> = initial
                .iter()
                .map(|s| s[b * 3..b * 3 + 3].to_vec())
                .collect();
            for (t, offset) in offsets.iter().enumerate().take(len) {
                let col = offset + b;
                let env = Env {
                    dims: dims.clone(),
                    inputs: vec![inputs[0][col * 2..col * 2 + 2].to_vec()],
                    states: states.clone(),
                    params: params.clone(),
                    adj_states: vec![vec![0.0; 3]; n_states],
                };
                let values = eval(ir, shapes, &env);
                states = ir
                    .new_states
                    .iter()
                    .map(|&n| values[n].vector().to_vec())
                    .collect();
                // Exponentials compounding over steps may overflow; there is
                // nothing to compare then.
                prop_assume!(states.iter().flatten().all(|v| v.is_finite()));
                let ours = &results.output[col * 3..col * 3 + 3];
                for (o, e) in ours.iter().zip(&states[ir.output]) {
                    prop_assert!(
                        (o - e).abs() <= 1e-12 * (1.0 + e.abs()),
                        "sequence {b} step {t}: {o} vs {e}\n{source}"
                    );
                }
            }
            for (k, state) in states.iter().enumerate() {
                prop_assert_eq!(&results.final_states[k][b * 3..b * 3 + 3], state.as_slice());
            }
        }

        // Backward: finite differences of the plan's own forward pass, where they
        // carry enough digits (exponentials compounding over steps can make the loss
        // too large for them).
        let loss = |params: &[Vec<f64>], inputs: &[Vec<f64>], initial: &[Vec<f64>]| {
            let mut exec = Exec::new(&compiled, &plan, dims.clone(), batch_sizes.clone());
            let r = exec.run(params, inputs, initial, &d_output, &d_final);
            let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
            dot(&r.output, &d_output)
                + r.final_states
                    .iter()
                    .zip(&d_final)
                    .map(|(s, d)| dot(s, d))
                    .sum::<f64>()
        };
        // (Up to 1e4, cells whose `exp` compounds over the steps amplified the
        // forward's rounding into the differences, 1.4e-5 of a derivative at losses
        // of 3e3-7e3, beyond any tolerance that still catches a wrong gradient.)
        prop_assume!(loss(&params, &inputs, &initial).abs() < 1e2);
        // The derivative by the five-point stencil (error of order eps⁴), from the loss
        // with the value moved by ±eps and ±2·eps, and the largest of those losses.
        // The central difference's error (order eps²) was 1.8e-5 of dV2 where `exp`
        // compounded over the steps (9.29017 against 9.29034).
        let stencil = |eps: f64, loss_at: &mut dyn FnMut(f64) -> f64| {
            let [l2, l1, m1, m2] = [2.0, 1.0, -1.0, -2.0].map(|k| loss_at(k * eps));
            let numeric = (-l2 + 8.0 * l1 - 8.0 * m1 + m2) / (12.0 * eps);
            (
                numeric,
                [l2, l1, m1, m2].iter().fold(0.0f64, |a, l| a.max(l.abs())),
            )
        };
        // Beside the relative tolerance, the rounding of the losses themselves, which
        // grows with the loss: losses of -4452 and -7030 whose true derivative in U2 is
        // zero (`U2 * x - U2 * x`, and the rest times 0.0) differed by 1.4 and 31 ulp
        // between the two sides (rounding compounded through `exp` over the steps),
        // 3.2e-6 and 1.4e-5 as derivatives, and failed a tolerance of 1e-6 that ignored
        // it. A wrong gradient is off by far more.
        // (That rounding, divided by the step: 4e-9 of the largest loss at a step of
        // 1e-6.)
        let close = |analytic: f64, eps: f64, (numeric, size): (f64, f64)| {
            (analytic - numeric).abs()
                <= 1e-6 * (1.0 + numeric.abs().max(analytic.abs())) + 4e-15 / eps * size
        };
        // A `relu` kink within 2·eps of the value bends the stencil's losses (`relu(0.5
        // * b1 + c)`: db1 1.17957 against 1.17774): a value whose derivative disagrees
        // at a step of 1e-6 is measured again at 1e-7 and 1e-8, as `gradcheck` does in
        // the runtime. A smooth loss agrees at the first step; a wrong gradient at
        // none.
        const STEPS: [f64; 3] = [1e-6, 1e-7, 1e-8];
        // Every value the loss depends on (the parameters, the inputs, the initial
        // states), each against its analytic gradient.
        let mut values = [params, inputs, initial];
        let analytic = [&results.d_params, &results.d_inputs, &results.d_initial];
        let name = |group: usize, k: usize, i: usize| match group {
            0 => format!("d{}[{i}]", ir.params[k].name),
            1 => format!("d input {k}[{i}]"),
            _ => format!("d state {k}[{i}]"),
        };
        for group in 0..values.len() {
            for k in 0..values[group].len() {
                for i in 0..values[group][k].len() {
                    let at = values[group][k][i];
                    let mut numeric_at = |eps: f64| {
                        stencil(eps, &mut |d| {
                            values[group][k][i] = at + d;
                            let [params, inputs, initial] = &values;
                            let l = loss(params, inputs, initial);
                            values[group][k][i] = at;
                            l
                        })
                    };
                    let analytic = analytic[group][k][i];
                    let numeric = numeric_at(STEPS[0]);
                    let agrees = close(analytic, STEPS[0], numeric)
                        || STEPS[1..]
                            .iter()
                            .any(|&eps| close(analytic, eps, numeric_at(eps)));
                    prop_assert!(
                        agrees,
                        "{}: {analytic} against finite differences {}\n{source}",
                        name(group, k, i),
                        numeric.0
                    );
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]
        #[test]
        fn the_plan_runs_random_cells_exactly(
            source in random_cell(),
            lengths in proptest::collection::vec(1usize..=4, 1..=3),
            seed in any::<u64>(),
        ) {
            check(&source, lengths, seed)?;
        }
    }

    /// Biases that start the projection (see `schedule::BiasFold`), in every
    /// arrangement: the plan's values and gradients are the graph's.
    #[test]
    fn the_plan_runs_a_projection_onto_its_biases() {
        let source = crate::test_util::mixed_biases().to_string();
        check(&source, vec![3, 2], 5).unwrap();
    }

    #[test]
    fn the_bias_free_gru_reads_a_stacked_product_in_backward() {
        check(
            "fn gru(x: Input, h: State) {
                let r = sigmoid(W_ir * x + W_hr * h);
                let z = sigmoid(W_iz * x + W_hz * h);
                let n = tanh(W_in * x + r * (W_hn * h));
                h = (1.0 - z) * n + z * h;
            }",
            vec![3, 2],
            1,
        )
        .unwrap();
    }
}
