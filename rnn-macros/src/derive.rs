//! `#[derive(Parameters)]`: a model's parameters are its fields' parameters, each named
//! with the field's name in front (`encoder.W_ii`), so that optimizers, clipping and
//! checkpoints reach every one without a hand-written list.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{Data, DeriveInput, Fields};

pub fn parameters(input: TokenStream) -> TokenStream {
    match expand(input) {
        Ok(tokens) => tokens,
        Err(error) => error.to_compile_error(),
    }
}

fn expand(input: TokenStream) -> syn::Result<TokenStream> {
    let input: DeriveInput = syn::parse2(input)?;
    let Data::Struct(data) = &input.data else {
        return Err(syn::Error::new_spanned(
            &input.ident,
            "`#[derive(Parameters)]` applies to a struct with named fields",
        ));
    };
    let Fields::Named(fields) = &data.fields else {
        return Err(syn::Error::new_spanned(
            &input.ident,
            "`#[derive(Parameters)]` applies to a struct with named fields",
        ));
    };
    let mut names = Vec::new();
    let mut types = Vec::new();
    for field in &fields.named {
        if skipped(field)? {
            continue;
        }
        names.push(field.ident.clone().expect("named field"));
        types.push(field.ty.clone());
    }
    let name = &input.ident;
    let mut generics = input.generics.clone();
    generics.params.push(syn::parse_quote!(__T));
    let (impl_generics, _, _) = generics.split_for_impl();
    let (_, ty_generics, where_clause) = input.generics.split_for_impl();
    let mut predicates: Vec<TokenStream> = where_clause
        .map(|w| w.predicates.iter().map(|p| quote!(#p)).collect())
        .unwrap_or_default();
    predicates.extend(
        types
            .iter()
            .map(|ty| quote!(#ty: ::rnn_runtime::Parameters<__T>)),
    );
    let labels: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    Ok(quote! {
        const _: () = {
            impl #impl_generics ::rnn_runtime::Parameters<__T> for #name #ty_generics where #(#predicates,)* {
                fn parameters(&self) -> ::std::vec::Vec<::rnn_runtime::ParamRef<'_, __T>> {
                    let mut __all = ::std::vec::Vec::new();
                    #(__all.extend(::rnn_runtime::prefixed(#labels, ::rnn_runtime::Parameters::<__T>::parameters(&self.#names)));)*
                    __all
                }

                fn parameters_mut(&mut self) -> ::std::vec::Vec<::rnn_runtime::ParamMut<'_, __T>> {
                    let mut __all = ::std::vec::Vec::new();
                    #(__all.extend(::rnn_runtime::prefixed_mut(#labels, ::rnn_runtime::Parameters::<__T>::parameters_mut(&mut self.#names)));)*
                    __all
                }
            }
        };
    })
}

/// `#[parameters(skip)]` leaves a field out (a config, a cache).
fn skipped(field: &syn::Field) -> syn::Result<bool> {
    let mut skip = false;
    for attr in field
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("parameters"))
    {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("skip") {
                skip = true;
                Ok(())
            } else {
                Err(meta.error("unknown option; expected `#[parameters(skip)]`"))
            }
        })?;
    }
    Ok(skip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_each_field_and_skips_marked_ones() {
        let out = parameters(quote! {
            struct Model<T> { embed: Embedding<T>, lstm: Lstm<T>, #[parameters(skip)] vocab: Vec<char> }
        })
        .to_string();
        assert!(
            out.contains("\"embed\"") && out.contains("\"lstm\""),
            "{out}"
        );
        assert!(!out.contains("\"vocab\""), "{out}");
        let err = parameters(quote!(
            enum E {
                A,
            }
        ))
        .to_string();
        assert!(err.contains("compile_error"), "{err}");
    }
}
