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

#[cfg(test)]
mod tests {
    //! Law: the compiler returns tokens (code or errors) for any token stream, and never
    //! panics: random streams, and valid cells with tokens deleted, duplicated, swapped
    //! or replaced.

    use proc_macro2::TokenStream;
    use proptest::prelude::*;

    const VALID: &[&str] = &[
        "fn lstm(x: Input, h: State, c: State) { let i = sigmoid(W_ii * x + b_ii + W_hi * h + b_hi); let f = sigmoid(W_if * x + b_if + W_hf * h + b_hf); let g = tanh(W_ig * x + b_ig + W_hg * h + b_hg); let o = sigmoid(W_io * x + b_io + W_ho * h + b_ho); c = f * c + i * g; h = o * tanh(c); }",
        "fn gru(x: Input, h: State) { let r = sigmoid(W_ir * x + W_hr * h); let z = sigmoid(W_iz * x + W_hz * h); let n = tanh(W_in * x + r * (W_hn * h)); h = (1.0 - z) * n + z * h; }",
        "fn colah(x: Input, e: Input<E>, h: State<P>, c: State) { let f = softplus(W_f * [h, x, e] + b_f); c = f * c - -exp(c); h = R * relu(identity(c)); }",
    ];

    /// Tokens of a cell, one string each (groups flattened to their delimiters).
    fn atoms(source: &str) -> Vec<String> {
        fn walk(stream: TokenStream, out: &mut Vec<String>) {
            for tree in stream {
                match tree {
                    proc_macro2::TokenTree::Group(g) => {
                        let (open, close) = match g.delimiter() {
                            proc_macro2::Delimiter::Parenthesis => ("(", ")"),
                            proc_macro2::Delimiter::Bracket => ("[", "]"),
                            proc_macro2::Delimiter::Brace => ("{", "}"),
                            proc_macro2::Delimiter::None => ("", ""),
                        };
                        out.push(open.to_string());
                        walk(g.stream(), out);
                        out.push(close.to_string());
                    }
                    other => out.push(other.to_string()),
                }
            }
        }
        let mut out = Vec::new();
        walk(source.parse().expect("valid source lexes"), &mut out);
        out
    }

    const VOCABULARY: &[&str] = &[
        "fn", "let", "x", "h", "c", "W", "b", "Input", "State", "<", ">", "P", "=", "+", "-", "*",
        "/", ";", ",", ":", "(", ")", "[", "]", "{", "}", "1.0", "0", "sigmoid", "tanh", "exp",
        "relu", "softplus", "identity", "if", "return", "&", "!", ".", "self", "mut", "async",
        "unsafe", "#", "output", "'a", "\"s\"", "__dims", "T",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1500))]

        #[test]
        fn random_token_streams_never_panic(tokens in proptest::collection::vec(proptest::sample::select(VOCABULARY), 0..40)) {
            let text = tokens.join(" ");
            prop_assert!(std::panic::catch_unwind(|| {
                if let Ok(item) = text.parse::<TokenStream>() {
                    super::compile(TokenStream::new(), item).to_string();
                }
            }).is_ok(), "the compiler panicked on `{text}`");
        }

        #[test]
        fn mutated_cells_never_panic(
            which in 0..VALID.len(),
            edits in proptest::collection::vec((0u8..4, any::<proptest::sample::Index>(), proptest::sample::select(VOCABULARY)), 1..4),
            attr in proptest::sample::select(vec!["", "output = c", "output = x", "output = 3", "outptu = h", "output", "output = h, output = c"]),
        ) {
            let mut tokens = atoms(VALID[which]);
            for (kind, at, token) in edits {
                if tokens.is_empty() { break; }
                let i = at.index(tokens.len());
                match kind {
                    0 => { tokens.remove(i); }
                    1 => { let t = tokens[i].clone(); tokens.insert(i, t); }
                    2 => { let j = (i + 1) % tokens.len(); tokens.swap(i, j); }
                    _ => tokens[i] = token.to_string(),
                }
            }
            let text = tokens.join(" ");
            let outcome = std::panic::catch_unwind(|| {
                if let (Ok(attr), Ok(item)) = (attr.parse::<TokenStream>(), text.parse::<TokenStream>()) {
                    super::compile(attr, item).to_string();
                }
            });
            prop_assert!(outcome.is_ok(), "the compiler panicked on `#[recurrent({attr})] {text}`");
        }
    }

    const NAMES: &[&str] = &[
        "x", "e", "h", "c", "i", "f", "g", "o", "n", "r", "z", "W", "U", "W_ii", "b", "b_f", "p",
        "E", "P", "I", "H", "sigmoid", "tanh", "exp", "relu", "softplus", "identity", "Input",
        "State",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Mutants that stay valid Rust, so they reach every stage of the compiler.
        #[test]
        fn renamed_and_reoperated_cells_never_panic(
            which in 0..VALID.len(),
            edits in proptest::collection::vec((any::<proptest::sample::Index>(), proptest::sample::select(NAMES), proptest::sample::select(vec!["+", "-", "*"])), 1..5),
        ) {
            let mut tokens = atoms(VALID[which]);
            for (at, name, op) in edits {
                let i = at.index(tokens.len());
                let token = &tokens[i];
                if token.chars().next().is_some_and(|ch| ch.is_alphabetic()) && !["fn", "let"].contains(&token.as_str()) {
                    tokens[i] = name.to_string();
                } else if ["+", "-", "*"].contains(&token.as_str()) {
                    tokens[i] = op.to_string();
                }
            }
            let text = tokens.join(" ");
            let outcome = std::panic::catch_unwind(|| {
                if let Ok(item) = text.parse::<TokenStream>() {
                    super::compile(TokenStream::new(), item).to_string();
                }
            });
            prop_assert!(outcome.is_ok(), "the compiler panicked on `{text}`");
        }
    }

    #[test]
    fn valid_cells_compile_without_errors() {
        for source in VALID {
            let out = super::compile(TokenStream::new(), source.parse().unwrap()).to_string();
            assert!(!out.contains("compile_error"), "{source}: {out}");
        }
    }
}
