//! Helpers for the passes' unit tests: run the front of the pipeline on `quote!` input.

use proc_macro2::TokenStream;
use quote::quote;

use crate::compile::{analyse, Compiled};
use crate::ctxt::Ctxt;
use crate::ir::CellIr;
use crate::shape::Shapes;

/// The optimised forward IR of a valid cell (panics with the errors otherwise).
pub fn compile_ir(item: TokenStream) -> (CellIr, Shapes) {
    let compiled = compile_full(item);
    (truncate(&compiled), compiled.shapes)
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
