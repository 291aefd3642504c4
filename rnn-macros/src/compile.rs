//! The pipeline: each stage's errors are collected; a stage runs only when the ones
//! before it succeeded, and on error the user's type is still emitted.

use proc_macro2::TokenStream;

use crate::autodiff::{self, Backward};
use crate::ctxt::Ctxt;
use crate::ir::{self, CellIr};
use crate::parse::{self, CellAst};
use crate::shape::{self, Shapes};
use crate::{expand, optimize, schedule, validate};

/// A cell through every stage up to code generation.
pub struct Compiled {
    pub ir: CellIr,
    pub shapes: Shapes,
    pub backward: Backward,
}

/// The attribute's entry point: generated code, or the errors and a fallback type.
pub fn compile(attr: TokenStream, item: TokenStream) -> TokenStream {
    let cx = Ctxt::new();
    let Some(ast) = parse::parse(&cx, attr, item) else {
        return cx
            .check()
            .expect_err("parse reported why it returned nothing")
            .to_compile_error();
    };
    match analyse(&cx, &ast) {
        Some(compiled) if !cx.has_errors() => {
            cx.check().expect("no errors");
            let plan = schedule::schedule(&compiled);
            expand::expand(&ast, &compiled, &plan)
        }
        _ => {
            let errors = cx
                .check()
                .expect_err("analysis failed with errors")
                .to_compile_error();
            let fallback = expand::fallback(&ast);
            quote::quote!(#fallback #errors)
        }
    }
}

/// Validation, the IR, sizes, optimisation and differentiation; `None` after errors.
pub fn analyse(cx: &Ctxt, ast: &CellAst) -> Option<Compiled> {
    validate::validate(cx, ast);
    if cx.has_errors() {
        return None;
    }
    let ir = ir::build(ast);
    let shapes = shape::infer(cx, &ir)?;
    let (mut ir, mut shapes) = optimize::run(ir, shapes);
    let backward = autodiff::differentiate(&mut ir, &mut shapes);
    Some(Compiled {
        ir,
        shapes,
        backward,
    })
}
