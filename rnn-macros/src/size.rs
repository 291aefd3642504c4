//! Symbolic sizes: `H`, `I`, `H + I`, `4H`. Sizes are only known at run time, so the
//! compiler reasons about sums of size symbols with whole coefficients.

use std::collections::BTreeMap;
use std::fmt;

use proc_macro2::TokenStream;
use quote::{format_ident, quote};

/// A sum of size symbols, each with a positive coefficient; the empty sum is 0.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Size(BTreeMap<usize, u32>);

impl Size {
    pub fn zero() -> Size {
        Size::default()
    }

    pub fn symbol(sym: usize) -> Size {
        Size(BTreeMap::from([(sym, 1)]))
    }

    pub fn plus(&self, other: &Size) -> Size {
        let mut sum = self.0.clone();
        for (sym, coef) in &other.0 {
            *sum.entry(*sym).or_insert(0) += coef;
        }
        Size(sum)
    }

    /// `self - other`, when every coefficient stays non-negative.
    pub fn minus(&self, other: &Size) -> Option<Size> {
        let mut diff = self.0.clone();
        for (sym, coef) in &other.0 {
            let left = diff.get(sym).copied().unwrap_or(0).checked_sub(*coef)?;
            if left == 0 {
                diff.remove(sym);
            } else {
                diff.insert(*sym, left);
            }
        }
        Some(Size(diff))
    }

    /// (symbol, coefficient) pairs, symbols in order.
    pub fn terms(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.0.iter().map(|(sym, coef)| (*sym, *coef as usize))
    }

    pub fn is_zero(&self) -> bool {
        self.0.is_empty()
    }

    /// The value for concrete symbol values.
    #[cfg(test)]
    pub fn eval(&self, dims: &[usize]) -> usize {
        self.0
            .iter()
            .map(|(sym, coef)| dims[*sym] * *coef as usize)
            .sum()
    }

    /// `H + I` with the cell's symbol names.
    pub fn display<'a>(&'a self, syms: &'a [String]) -> impl fmt::Display + 'a {
        SizeDisplay { size: self, syms }
    }

    /// Generated code: the size as a `usize` expression over the locals `__dim_<sym>`.
    pub fn tokens(&self, syms: &[String]) -> TokenStream {
        if self.0.is_empty() {
            return quote!(0usize);
        }
        let terms = self.0.iter().map(|(sym, coef)| {
            let dim = format_ident!("__dim_{}", syms[*sym]);
            if *coef == 1 {
                quote!(#dim)
            } else {
                let coef = *coef as usize;
                quote!(#coef * #dim)
            }
        });
        quote!((0usize #(+ #terms)*))
    }
}

struct SizeDisplay<'a> {
    size: &'a Size,
    syms: &'a [String],
}

impl fmt::Display for SizeDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.size.0.is_empty() {
            return write!(f, "0");
        }
        let terms: Vec<String> = self
            .size
            .0
            .iter()
            .map(|(sym, coef)| {
                let name = &self.syms[*sym];
                if *coef == 1 {
                    name.clone()
                } else {
                    format!("{coef}{name}")
                }
            })
            .collect();
        write!(f, "{}", terms.join(" + "))
    }
}

impl fmt::Debug for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let terms: Vec<String> = self
            .0
            .iter()
            .map(|(sym, coef)| format!("{coef}*s{sym}"))
            .collect();
        write!(f, "Size({})", terms.join(" + "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_and_display() {
        let syms = vec!["I".to_string(), "H".to_string()];
        let h = Size::symbol(1);
        let i = Size::symbol(0);
        let four_h = h.plus(&h).plus(&h).plus(&h);
        assert_eq!(four_h.display(&syms).to_string(), "4H");
        assert_eq!(four_h.plus(&i).display(&syms).to_string(), "I + 4H");
        assert_eq!(four_h.plus(&i).minus(&i), Some(four_h.clone()));
        assert_eq!(i.minus(&h), None);
        assert_eq!(four_h.plus(&i).eval(&[3, 5]), 23);
    }
}
