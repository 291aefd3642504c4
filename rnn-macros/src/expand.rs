use proc_macro2::TokenStream;
pub fn expand(_a: &crate::parse::CellAst, _c: &crate::compile::Compiled, _p: &()) -> TokenStream { TokenStream::new() }
pub fn fallback(_a: &crate::parse::CellAst) -> TokenStream { TokenStream::new() }
