//! Stage 7b: which stages after the backward loop serve only the inputs' gradients.
//!
//! When a cell reads its input through a matrix (`W_ii * x`), the input's gradient is
//! one GEMM over all steps after the loop (`W_iᵀ · dz`): a third of the input
//! projection's cost, and about a ninth of a whole LSTM forward and backward. A layer
//! that reads data (one-hot characters, or any tensor PyTorch would not give
//! `requires_grad`) never needs it, so the runtime can skip those stages. A stage is
//! skipped only if nothing else reads what it writes: it accumulates no parameter
//! gradient, and every buffer it writes is an input's gradient or is read only by
//! stages that are skipped too.

use crate::plan::{KStmt, Operand, Plan, Stage};

/// Per stage of `plan.finish`, whether it serves only the inputs' gradients.
pub fn finish_input_only(plan: &Plan) -> Vec<bool> {
    let input_grads = &plan.roles.d_inputs;
    let written: Vec<Vec<usize>> = plan.finish.iter().map(writes).collect();
    // What must be right once the finish program has run: every buffer the runtime
    // reads (all but the inputs' gradients), and the operands of the weight gradients.
    // A buffer that only the finish program fills and reads is needed when a needed
    // stage reads it, found walking backwards.
    let mut needed: Vec<bool> = (0..plan.buffers.len())
        .map(|b| !input_grads.contains(&b))
        .collect();
    for &b in written.iter().flatten() {
        if !is_role(plan, b) {
            needed[b] = false;
        }
    }
    for w in &plan.weight_grads {
        needed[w.dz.buf] = true;
        needed[w.v.buf] = true;
    }
    let mut input_only = vec![false; plan.finish.len()];
    for (k, stage) in plan.finish.iter().enumerate().rev() {
        let accumulates = matches!(stage, Stage::Kernel(kernel)
            if kernel.body.iter().any(|s| matches!(s, KStmt::Accumulate { .. })));
        if accumulates || written[k].iter().any(|&b| needed[b]) {
            for b in reads(stage) {
                needed[b] = true;
            }
        } else {
            input_only[k] = true;
        }
    }
    input_only
}

/// Whether the runtime reads or fills `buf` itself (inputs, states, their gradients).
fn is_role(plan: &Plan, buf: usize) -> bool {
    let r = &plan.roles;
    [
        &r.inputs,
        &r.d_inputs,
        &r.prev,
        &r.state,
        &r.d_state,
        &r.d_prev,
    ]
    .iter()
    .any(|bufs| bufs.contains(&buf))
}

/// The buffers a stage writes.
fn writes(stage: &Stage) -> Vec<usize> {
    match stage {
        Stage::Gemm { dst, .. }
        | Stage::Copy { dst, .. }
        | Stage::Zero { dst, .. }
        | Stage::Broadcast { dst, .. } => vec![dst.buf],
        Stage::Kernel(kernel) => kernel
            .body
            .iter()
            .filter_map(|s| match s {
                KStmt::Store { dst, .. } => Some(dst.buf),
                _ => None,
            })
            .collect(),
    }
}

/// The buffers a stage reads (a stacked weight counts as its buffer).
fn reads(stage: &Stage) -> Vec<usize> {
    fn load(o: &Operand) -> Option<usize> {
        match o {
            Operand::Load(l) => Some(l.buf),
            _ => None,
        }
    }
    match stage {
        Stage::Gemm {
            src,
            dst,
            accumulate,
            ..
        } => {
            // Adding to `dst` reads it.
            let mut read = vec![src.buf];
            if *accumulate {
                read.push(dst.buf);
            }
            read
        }
        Stage::Copy { src, .. } => vec![src.buf],
        Stage::Zero { .. } | Stage::Broadcast { .. } => Vec::new(),
        Stage::Kernel(kernel) => kernel
            .body
            .iter()
            .flat_map(KStmt::operands)
            .filter_map(load)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use crate::plan::Stage;
    use crate::schedule::schedule;
    use crate::test_util::{compile_full, lstm};
    use quote::quote;

    /// The stages marked input-only, as (is a transposed GEMM, marked) pairs.
    fn marked(plan: &crate::plan::Plan) -> Vec<(bool, bool)> {
        plan.finish
            .iter()
            .zip(super::finish_input_only(plan))
            .map(|(s, m)| {
                (
                    matches!(
                        s,
                        Stage::Gemm {
                            transpose: true,
                            ..
                        }
                    ),
                    m,
                )
            })
            .collect()
    }

    #[test]
    fn the_lstm_skips_exactly_its_input_gemm() {
        let plan = schedule(&compile_full(lstm()));
        // The transposed GEMM that writes dx is skipped (the hoisted biases' gradients
        // are summed while the weight gradients pack dz: no loop is left).
        assert_eq!(marked(&plan), [(true, true)], "{:#?}", plan.finish);
    }

    #[test]
    fn a_gemm_that_a_parameter_gradient_reads_is_kept() {
        // `p * x` is hoisted; p's gradient reads `Wᵀ dz`, which dx reads too.
        let plan = schedule(&compile_full(quote! {
            fn cell(x: Input, h: State) {
                h = tanh(W * (p * x) + U * h);
            }
        }));
        assert!(
            plan.finish.iter().any(|s| matches!(
                s,
                Stage::Gemm {
                    transpose: true,
                    ..
                }
            )),
            "{:#?}",
            plan.finish
        );
        assert!(
            super::finish_input_only(&plan).iter().all(|&only| !only),
            "{:#?}",
            plan.finish
        );
    }
}
