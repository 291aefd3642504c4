//! The `#[recurrent]` attribute: a recurrent cell's equations, as a paper writes them,
//! compiled into a struct with fused forward and analytic backward code.
//!
//! Use it through `rnn_runtime`, which re-exports it and documents the language. The
//! compiler runs in pipeline order: `parse` → `validate` → `ir` → `shape` →
//! `optimize` → `autodiff` → `schedule` (into a `plan`, whose input-only stages
//! `input_only` marks) → `expand`.

mod autodiff;
mod compile;
mod ctxt;
mod derive;
mod expand;
mod func;
mod input_only;
#[cfg(test)]
mod interp;
mod ir;
mod optimize;
mod parse;
mod plan;
#[cfg(test)]
mod plan_exec;
mod schedule;
mod shape;
mod size;
#[cfg(test)]
mod test_util;
mod validate;

/// Declares a recurrent cell from its equations; see `rnn_runtime` for the language.
#[proc_macro_attribute]
pub fn recurrent(
    attr: proc_macro::TokenStream,
    item: proc_macro::TokenStream,
) -> proc_macro::TokenStream {
    compile::compile(attr.into(), item.into()).into()
}

/// Derives `rnn_runtime::Parameters` for a struct of parts that have parameters: each
/// field's parameters under `field.name`; `#[parameters(skip)]` leaves a field out.
#[proc_macro_derive(Parameters, attributes(parameters))]
pub fn derive_parameters(input: proc_macro::TokenStream) -> proc_macro::TokenStream {
    derive::parameters(input.into()).into()
}
