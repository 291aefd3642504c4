//! Helpers for the passes' unit tests: run the front of the pipeline on `quote!` input.

use proc_macro2::TokenStream;
use proptest::prelude::*;
use quote::quote;

use crate::compile::{analyse, Compiled};
use crate::ctxt::Ctxt;
use crate::ir::CellIr;
use crate::shape::Shapes;

/// The LSTM as the PyTorch docs write it, the cell most tests look at.
pub fn lstm() -> TokenStream {
    quote! {
        fn lstm(x: Input, h: State, c: State) {
            let i = sigmoid(W_ii * x + b_ii + W_hi * h + b_hi);
            let f = sigmoid(W_if * x + b_if + W_hf * h + b_hf);
            let g = tanh(W_ig * x + b_ig + W_hg * h + b_hg);
            let o = sigmoid(W_io * x + b_io + W_ho * h + b_ho);
            c = f * c + i * g;
            h = o * tanh(c);
        }
    }
}

/// The optimised forward IR of a valid cell (panics with the errors otherwise).
pub fn compile_ir(item: TokenStream) -> (CellIr, Shapes) {
    let compiled = compile_full(item);
    (truncate(&compiled), compiled.shapes)
}

/// A cell whose hoisted sums hold two biases, none, one, and one read elsewhere too.
pub fn mixed_biases() -> TokenStream {
    quote! {
        fn mixed(x: Input, h: State) {
            let a = sigmoid(W_a * x + b_a + c_a + U_a * h);
            let g = tanh(W_g * x + U_g * h);
            let e = W_e * x + b_e;
            let q = W_q * x + b_q;
            let r = q + b_r;
            h = a * g + tanh(e + U_e * h) * e + sigmoid(r + U_r * h) * q;
        }
    }
}

/// Every stage up to differentiation, for a valid cell.
pub fn compile_full(item: TokenStream) -> Compiled {
    let cx = Ctxt::new();
    let ast = crate::parse::parse(&cx, quote!(), item).expect("a fn");
    let compiled = analyse(&cx, &ast);
    if let Err(error) = cx.check() {
        let messages: Vec<String> = error.into_iter().map(|e| e.to_string()).collect();
        panic!("cell did not compile: {messages:#?}");
    }
    compiled.expect("no errors")
}

/// The forward part of a differentiated graph.
fn truncate(compiled: &Compiled) -> CellIr {
    let mut ir = compiled.ir.clone();
    ir.graph.nodes.truncate(compiled.backward.first);
    ir
}

/// Random expressions of size H over every operation of the language.
pub fn expr_h(locals: &'static [&'static str]) -> impl Strategy<Value = String> {
    let mut leaves: Vec<&'static str> = vec!["h", "c", "b1", "b2", "(U1 * x)", "(U2 * x)"];
    leaves.extend_from_slice(locals);
    let leaf = proptest::sample::select(leaves).prop_map(str::to_string);
    leaf.prop_recursive(4, 24, 2, |inner| {
        let func = proptest::sample::select(vec![
            "sigmoid", "tanh", "relu", "exp", "softplus", "identity",
        ]);
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} + {b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} - {b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} * {b})")),
            inner.clone().prop_map(|a| format!("(-{a})")),
            inner.clone().prop_map(|a| format!("(0.5 * {a})")),
            inner.clone().prop_map(|a| format!("(1.0 - {a})")),
            (func, inner.clone()).prop_map(|(f, a)| format!("{f}({a})")),
            inner.clone().prop_map(|a| format!("(W1 * {a})")),
            inner.clone().prop_map(|a| format!("(W2 * tanh({a}))")),
            inner.clone().prop_map(|a| format!("(V1 * [{a}, x])")),
            (inner.clone(), inner).prop_map(|(a, b)| format!("(V2 * [x, {a}, {b}])")),
        ]
    })
}

/// Fixes every parameter's shape (a generated cell may leave one ambiguous) while
/// adding nothing to the value.
pub const ANCHOR: &str = "0.0 * (b1 + b2 + (U1 * x) + (U2 * x) + (W1 * h) + (W2 * h) + (V1 * [h, x]) + (V2 * [x, h, h]))";

pub fn random_values(len: usize, seed: &mut u64) -> Vec<f64> {
    (0..len)
        .map(|_| {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((*seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 1.2
        })
        .collect()
}

/// A random cell over every operation: a gate, then the cell state, then the hidden
/// state, each a random expression.
pub fn random_cell() -> impl Strategy<Value = String> {
    (expr_h(&[]), expr_h(&["g"]), expr_h(&["g", "c"])).prop_map(|(gate, cell_update, hidden_update)| {
        format!(
            "fn random(x: Input, h: State, c: State) {{ let g = {gate}; c = g + {cell_update} + {ANCHOR}; h = {hidden_update}; }}"
        )
    })
}
