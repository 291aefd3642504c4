//! Stage 1: from syn's syntax tree to the cell's own AST, rejecting Rust that is not
//! part of the equation language with an error at its span.

use proc_macro2::{Span, TokenStream};
use syn::parse::Parser;
use syn::spanned::Spanned;
use syn::{Attribute, Expr as SynExpr, FnArg, Ident, Pat, Stmt as SynStmt, Type, Visibility};

use crate::ctxt::Ctxt;

/// A cell as written: `fn name(args) { statements }` plus the attribute's options.
pub struct CellAst {
    pub name: Ident,
    pub vis: Visibility,
    /// The user's own attributes (doc comments, `#[allow]`s) kept for the struct.
    pub attrs: Vec<Attribute>,
    pub args: Vec<Arg>,
    pub stmts: Vec<Stmt>,
    /// `#[recurrent(output = name)]`
    pub output: Option<Ident>,
    /// Statements whose value had errors: the names they define or assign still count
    /// as defined or assigned, so that one mistake is reported once.
    pub broken_stmts: Vec<Ident>,
    /// Arguments that had errors: the cell's inputs and states are then not all known.
    pub broken_args: usize,
}

/// `x: Input`, `h: State<P>`.
pub struct Arg {
    pub name: Ident,
    pub kind: ArgKind,
    /// The annotated size symbol, `P` in `State<P>`.
    pub size: Option<Ident>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ArgKind {
    Input,
    State,
}

pub enum Stmt {
    /// `let i = expr;`
    Let { name: Ident, value: Expr },
    /// `c = expr;`
    Assign { name: Ident, value: Expr },
}

/// An expression of the equation language.
#[derive(Clone, Debug)]
pub enum Expr {
    /// `x`, `W_ii`, `i`: an argument, a local or a parameter.
    Ident(Ident),
    /// `1.0`, `2`
    Lit(f64, Span),
    /// `-a`
    Neg(Box<Expr>, Span),
    /// `a + b`, `a - b`, `a * b`
    Binary(BinOp, Box<Expr>, Box<Expr>, Span),
    /// `sigmoid(a)`
    Call(Ident, Vec<Expr>, Span),
    /// `[h, x]`
    Concat(Vec<Expr>, Span),
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
        }
    }
}

impl Expr {
    pub fn span(&self) -> Span {
        match self {
            Expr::Ident(ident) => ident.span(),
            Expr::Lit(_, span)
            | Expr::Neg(_, span)
            | Expr::Binary(_, _, _, span)
            | Expr::Call(_, _, span)
            | Expr::Concat(_, span) => *span,
        }
    }

    /// The expression as a paper would print it, with only the parentheses it needs.
    pub fn to_text(&self) -> String {
        self.text_at(0)
    }

    fn text_at(&self, parent_precedence: u8) -> String {
        let (text, precedence) = match self {
            Expr::Ident(ident) => (ident.to_string(), 3),
            Expr::Lit(value, _) => (format_literal(*value), 3),
            Expr::Neg(inner, _) => (format!("-{}", inner.text_at(3)), 2),
            Expr::Binary(op, lhs, rhs, _) => {
                let precedence = if *op == BinOp::Mul { 1 } else { 0 };
                // Left-associative: the right operand needs parentheses at equal precedence.
                let text = format!(
                    "{} {} {}",
                    lhs.text_at(precedence),
                    op.symbol(),
                    rhs.text_at(precedence + 1)
                );
                (text, precedence)
            }
            Expr::Call(func, args, _) => {
                let args: Vec<String> = args.iter().map(Expr::to_text).collect();
                (format!("{func}({})", args.join(", ")), 3)
            }
            Expr::Concat(parts, _) => {
                let parts: Vec<String> = parts.iter().map(Expr::to_text).collect();
                (format!("[{}]", parts.join(", ")), 3)
            }
        };
        if precedence < parent_precedence {
            format!("({text})")
        } else {
            text
        }
    }
}

/// Shortest text that reads back as the same literal (`1.0`, `0.5`).
pub fn format_literal(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.1}")
    } else {
        format!("{value}")
    }
}

impl Stmt {
    pub fn name(&self) -> &Ident {
        match self {
            Stmt::Let { name, .. } | Stmt::Assign { name, .. } => name,
        }
    }

    pub fn value(&self) -> &Expr {
        match self {
            Stmt::Let { value, .. } | Stmt::Assign { value, .. } => value,
        }
    }

    /// `i = sigmoid(...)` as the rustdoc shows it.
    pub fn to_text(&self) -> String {
        format!("{} = {}", self.name(), self.value().to_text())
    }
}

/// Parses `#[recurrent(...)]`'s options and the item. Returns `None` only when the item is
/// not a fn at all (there is then no cell to speak of); other mistakes are recorded in
/// `cx` and parsing continues, so all of them are reported together.
pub fn parse(cx: &Ctxt, attr: TokenStream, item: TokenStream) -> Option<CellAst> {
    let output = parse_options(cx, attr);
    let item_fn = match syn::parse2::<syn::ItemFn>(item.clone()) {
        Ok(item_fn) => item_fn,
        Err(_) => {
            let span = item
                .clone()
                .into_iter()
                .next()
                .map_or(Span::call_site(), |t| t.span());
            cx.error_at(
                span,
                "`#[recurrent]` applies to a `fn` that states a cell's equations",
            );
            return None;
        }
    };
    check_signature(cx, &item_fn.sig);
    let parsed_args: Vec<Option<Arg>> = item_fn
        .sig
        .inputs
        .iter()
        .map(|arg| parse_arg(cx, arg))
        .collect();
    let broken_args = parsed_args.iter().filter(|a| a.is_none()).count();
    let mut stmts = Vec::new();
    let mut broken_stmts = Vec::new();
    for stmt in &item_fn.block.stmts {
        match parse_stmt(cx, stmt) {
            Ok(stmt) => stmts.push(stmt),
            Err(Some(name)) => broken_stmts.push(name),
            Err(None) => {}
        }
    }
    Some(CellAst {
        name: item_fn.sig.ident.clone(),
        vis: item_fn.vis.clone(),
        attrs: item_fn.attrs.clone(),
        args: parsed_args.into_iter().flatten().collect(),
        stmts,
        output,
        broken_stmts,
        broken_args,
    })
}

fn parse_options(cx: &Ctxt, attr: TokenStream) -> Option<Ident> {
    let mut output = None;
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("output") {
            let value = meta.value()?;
            let name: Ident = value.parse().map_err(|error| {
                syn::Error::new(
                    error.span(),
                    "malformed `output`: expected `output = <state name>`",
                )
            })?;
            if output.is_some() {
                return Err(meta.error("`output` is given twice"));
            }
            output = Some(name);
            Ok(())
        } else {
            let name = meta
                .path
                .get_ident()
                .map_or_else(|| "?".to_string(), |i| i.to_string());
            Err(meta.error(format!(
                "unknown option `{name}`; expected `output = <state name>`"
            )))
        }
    });
    if let Err(error) = parser.parse2(attr) {
        cx.push(error);
    }
    output
}

fn check_signature(cx: &Ctxt, sig: &syn::Signature) {
    if let Some(token) = &sig.constness {
        cx.error_spanned_by(token, "a cell cannot be a `const fn`");
    }
    if let Some(token) = &sig.asyncness {
        cx.error_spanned_by(token, "a cell cannot be an `async fn`");
    }
    if let Some(token) = &sig.unsafety {
        cx.error_spanned_by(token, "a cell cannot be an `unsafe fn`");
    }
    if let Some(abi) = &sig.abi {
        cx.error_spanned_by(abi, "a cell cannot have an `extern` ABI");
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        cx.error_spanned_by(
            &sig.generics,
            "a cell cannot be generic; sizes are inferred or written as `State<P>`",
        );
    }
    if let Some(variadic) = &sig.variadic {
        cx.error_spanned_by(variadic, "a cell cannot be variadic");
    }
    if let syn::ReturnType::Type(_, ty) = &sig.output {
        cx.error_spanned_by(ty, "a cell has no return type; its states are its results");
    }
}

fn parse_arg(cx: &Ctxt, arg: &FnArg) -> Option<Arg> {
    let typed = match arg {
        FnArg::Typed(typed) => typed,
        FnArg::Receiver(receiver) => {
            cx.error_spanned_by(receiver, "a cell takes no `self`");
            return None;
        }
    };
    let name = match &*typed.pat {
        Pat::Ident(pat) if pat.by_ref.is_none() && pat.subpat.is_none() => {
            if let Some(token) = &pat.mutability {
                cx.error_spanned_by(
                    token,
                    "cell arguments are not `mut`; a state is assigned as `h = ...`",
                );
            }
            pat.ident.clone()
        }
        other => {
            cx.error_spanned_by(other, "a cell argument is a plain name, as in `x: Input`");
            return None;
        }
    };
    let (kind, size) = parse_arg_type(cx, &typed.ty)?;
    Some(Arg { name, kind, size })
}

fn parse_arg_type(cx: &Ctxt, ty: &Type) -> Option<(ArgKind, Option<Ident>)> {
    const EXPECTED: &str = "expected `Input`, `Input<E>`, `State` or `State<P>`";
    let Type::Path(path) = ty else {
        cx.error_spanned_by(ty, format!("unknown kind of argument; {EXPECTED}"));
        return None;
    };
    let segment = match (path.qself.as_ref(), path.path.segments.len()) {
        (None, 1) => &path.path.segments[0],
        _ => {
            cx.error_spanned_by(ty, format!("unknown kind of argument; {EXPECTED}"));
            return None;
        }
    };
    let kind = match segment.ident.to_string().as_str() {
        "Input" => ArgKind::Input,
        "State" => ArgKind::State,
        other => {
            cx.error_spanned_by(
                &segment.ident,
                format!("unknown kind of argument `{other}`; {EXPECTED}"),
            );
            return None;
        }
    };
    let size = match &segment.arguments {
        syn::PathArguments::None => None,
        syn::PathArguments::AngleBracketed(generic) if generic.args.len() == 1 => {
            match &generic.args[0] {
                syn::GenericArgument::Type(Type::Path(size))
                    if size.qself.is_none() && size.path.get_ident().is_some() =>
                {
                    size.path.get_ident().cloned()
                }
                other => {
                    cx.error_spanned_by(other, "a size is a single name, as in `State<P>`");
                    return None;
                }
            }
        }
        other => {
            cx.error_spanned_by(other, "a size is a single name, as in `State<P>`");
            return None;
        }
    };
    Some((kind, size))
}

/// A statement, or when it has errors the name it defines or assigns (if it has one).
fn parse_stmt(cx: &Ctxt, stmt: &SynStmt) -> Result<Stmt, Option<Ident>> {
    match stmt {
        SynStmt::Local(local) => {
            let name = match &local.pat {
                Pat::Ident(pat)
                    if pat.by_ref.is_none() && pat.subpat.is_none() && pat.mutability.is_none() =>
                {
                    pat.ident.clone()
                }
                Pat::Type(typed) => {
                    cx.error_spanned_by(&typed.ty, "a gate needs no type; its size is inferred");
                    return Err(match &*typed.pat {
                        Pat::Ident(pat) => Some(pat.ident.clone()),
                        _ => None,
                    });
                }
                other => {
                    cx.error_spanned_by(
                        other,
                        "a gate is bound to a plain name, as in `let i = ...`",
                    );
                    return Err(None);
                }
            };
            let Some(init) = &local.init else {
                cx.error_spanned_by(local, format!("`let {name}` needs a value"));
                return Err(Some(name));
            };
            if let Some((_, diverge)) = &init.diverge {
                cx.error_spanned_by(
                    diverge,
                    "`let ... else` is not part of the equation language",
                );
                return Err(Some(name));
            }
            match parse_expr(cx, &init.expr) {
                Some(value) => Ok(Stmt::Let { name, value }),
                None => Err(Some(name)),
            }
        }
        SynStmt::Expr(SynExpr::Assign(assign), _) => {
            let name = match plain_ident(&assign.left) {
                Some(name) => name,
                None => {
                    let other = &assign.left;
                    cx.error_spanned_by(other, "only a state can be assigned, as in `h = ...`");
                    return Err(None);
                }
            };
            match parse_expr(cx, &assign.right) {
                Some(value) => Ok(Stmt::Assign { name, value }),
                None => Err(Some(name)),
            }
        }
        SynStmt::Expr(SynExpr::Return(ret), _) => {
            cx.error_spanned_by(ret, "a cell does not `return`; assign its states instead");
            Err(None)
        }
        SynStmt::Expr(expr, _) => {
            match describe(expr) {
                Some(what) => cx.error_spanned_by(expr, format!("{what} not allowed in a cell")),
                None => {
                    cx.error_spanned_by(expr, "a statement is `let name = ...;` or `state = ...;`")
                }
            }
            Err(None)
        }
        SynStmt::Item(item) => {
            cx.error_spanned_by(item, "items are not allowed inside a cell");
            Err(None)
        }
        SynStmt::Macro(mac) => {
            cx.error_spanned_by(mac, "macros are not allowed inside a cell");
            Err(None)
        }
    }
}

/// Parses one expression; unsupported syntax is reported and yields `None`.
pub fn parse_expr(cx: &Ctxt, expr: &SynExpr) -> Option<Expr> {
    let span = expr.span();
    match expr {
        SynExpr::Path(path) => match path.path.get_ident() {
            Some(ident) if path.qself.is_none() => Some(Expr::Ident(ident.clone())),
            _ => {
                cx.error_spanned_by(
                    path,
                    "paths are not allowed; name a variable or a parameter",
                );
                None
            }
        },
        SynExpr::Lit(lit) => match &lit.lit {
            syn::Lit::Float(float) => match float.base10_parse::<f64>() {
                Ok(value) => Some(Expr::Lit(value, span)),
                Err(error) => {
                    cx.push(error);
                    None
                }
            },
            syn::Lit::Int(int) => match int.base10_parse::<u64>() {
                Ok(value) => Some(Expr::Lit(value as f64, span)),
                Err(error) => {
                    cx.push(error);
                    None
                }
            },
            other => {
                cx.error_spanned_by(other, "only number literals are allowed");
                None
            }
        },
        SynExpr::Paren(paren) => parse_expr(cx, &paren.expr),
        SynExpr::Group(group) => parse_expr(cx, &group.expr),
        SynExpr::Unary(unary) => match unary.op {
            syn::UnOp::Neg(_) => Some(Expr::Neg(Box::new(parse_expr(cx, &unary.expr)?), span)),
            syn::UnOp::Deref(_) => {
                cx.error_spanned_by(unary, "dereference is not allowed in a cell");
                None
            }
            _ => {
                cx.error_spanned_by(
                    unary,
                    "unsupported operator; expected `+`, `-`, `*` or unary `-`",
                );
                None
            }
        },
        SynExpr::Binary(binary) => {
            let op = match binary.op {
                syn::BinOp::Add(_) => BinOp::Add,
                syn::BinOp::Sub(_) => BinOp::Sub,
                syn::BinOp::Mul(_) => BinOp::Mul,
                other => {
                    let symbol = quote::quote!(#other).to_string();
                    cx.error_spanned_by(
                        other,
                        format!(
                            "unsupported operator `{symbol}`; expected `+`, `-`, `*` or unary `-`"
                        ),
                    );
                    return None;
                }
            };
            let lhs = parse_expr(cx, &binary.left);
            let rhs = parse_expr(cx, &binary.right);
            Some(Expr::Binary(op, Box::new(lhs?), Box::new(rhs?), span))
        }
        SynExpr::Call(call) => {
            let func = match plain_ident(&call.func) {
                Some(func) => func,
                None => {
                    let other = &*call.func;
                    let mut callee = other;
                    while let SynExpr::Paren(inner) = callee {
                        callee = &inner.expr;
                    }
                    match describe(callee) {
                        Some(what) => {
                            cx.error_spanned_by(other, format!("{what} not allowed in a cell"))
                        }
                        None => cx.error_spanned_by(
                            other,
                            "a function is called by its name, as in `sigmoid(a)`",
                        ),
                    }
                    return None;
                }
            };
            let args: Vec<Option<Expr>> = call.args.iter().map(|arg| parse_expr(cx, arg)).collect();
            Some(Expr::Call(
                func,
                args.into_iter().collect::<Option<_>>()?,
                span,
            ))
        }
        SynExpr::Array(array) => {
            if array.elems.is_empty() {
                cx.error_spanned_by(array, "an empty concatenation `[]` has no value");
                return None;
            }
            let parts: Vec<Option<Expr>> = array
                .elems
                .iter()
                .map(|part| parse_expr(cx, part))
                .collect();
            Some(Expr::Concat(
                parts.into_iter().collect::<Option<_>>()?,
                span,
            ))
        }
        other => {
            let what = describe(other).unwrap_or("this expression is");
            cx.error_spanned_by(other, format!("{what} not allowed in a cell"));
            None
        }
    }
}

/// `x`, as opposed to `a::x`, `<T>::x` or any other expression.
fn plain_ident(expr: &SynExpr) -> Option<Ident> {
    match expr {
        SynExpr::Path(path) if path.qself.is_none() => path.path.get_ident().cloned(),
        _ => None,
    }
}

/// Names the Rust construct that the equation language does not have.
fn describe(expr: &SynExpr) -> Option<&'static str> {
    Some(match expr {
        SynExpr::MethodCall(_) => "method calls are",
        SynExpr::If(_) => "`if` is",
        SynExpr::Match(_) => "`match` is",
        SynExpr::ForLoop(_) | SynExpr::While(_) | SynExpr::Loop(_) => "loops are",
        SynExpr::Closure(_) => "closures are",
        SynExpr::Index(_) => "indexing is",
        SynExpr::Macro(_) => "macros are",
        SynExpr::Reference(_) => "references are",
        SynExpr::Return(_) => "`return` is",
        SynExpr::Field(_) => "field access is",
        SynExpr::Tuple(_) => "tuples are",
        SynExpr::Block(_) | SynExpr::Unsafe(_) => "blocks are",
        SynExpr::Cast(_) => "casts are",
        SynExpr::Assign(_) => "assignment inside an expression is",
        SynExpr::Range(_) => "ranges are",
        SynExpr::Struct(_) => "struct literals are",
        SynExpr::Await(_) => "`.await` is",
        SynExpr::Try(_) => "`?` is",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn parse_errors(attr: TokenStream, item: TokenStream) -> Vec<String> {
        let cx = Ctxt::new();
        let _ = parse(&cx, attr, item);
        cx.check()
            .err()
            .map_or_else(Vec::new, |e| e.into_iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn reads_arguments_statements_and_options() {
        let cx = Ctxt::new();
        let cell = parse(
            &cx,
            quote!(output = c),
            quote! {
                /// Docs survive.
                pub fn cell(x: Input, e: Input<E>, h: State<P>, c: State) {
                    let g = tanh(W * [h, x] - -b);
                    c = 1.0 - g * c;
                    h = c;
                }
            },
        )
        .expect("a fn");
        cx.check().unwrap();
        assert_eq!(cell.name, "cell");
        assert_eq!(cell.output.unwrap(), "c");
        assert_eq!(cell.attrs.len(), 1);
        let kinds: Vec<(String, ArgKind, Option<String>)> = cell
            .args
            .iter()
            .map(|a| {
                (
                    a.name.to_string(),
                    a.kind,
                    a.size.as_ref().map(|s| s.to_string()),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("x".into(), ArgKind::Input, None),
                ("e".into(), ArgKind::Input, Some("E".into())),
                ("h".into(), ArgKind::State, Some("P".into())),
                ("c".into(), ArgKind::State, None),
            ]
        );
        let text: Vec<String> = cell.stmts.iter().map(Stmt::to_text).collect();
        assert_eq!(
            text,
            vec!["g = tanh(W * [h, x] - -b)", "c = 1.0 - g * c", "h = c"]
        );
    }

    #[test]
    fn text_keeps_the_parentheses_it_needs() {
        let cx = Ctxt::new();
        let expr = parse_expr(&cx, &syn::parse_quote!((a - (b - c)) * (d + e) - (f * g))).unwrap();
        cx.check().unwrap();
        assert_eq!(expr.to_text(), "(a - (b - c)) * (d + e) - f * g");
    }

    #[test]
    fn rust_outside_the_language_is_rejected_at_its_span() {
        let errors = parse_errors(
            quote!(outptu = h),
            quote! {
                async fn bad<T>(x: Input, h: Stat, self_: &State) -> f32 {
                    let a = x.abs();
                    let b = if x { h } else { x };
                    h = a / b + x[0] + vec![1.0] + &x;
                    return h;
                }
            },
        );
        let all = errors.join("\n");
        for expected in [
            "unknown option `outptu`",
            "a cell cannot be an `async fn`",
            "a cell cannot be generic",
            "a cell has no return type",
            "unknown kind of argument `Stat`",
            "method calls are not allowed in a cell",
            "`if` is not allowed in a cell",
            "unsupported operator `/`",
            "a cell does not `return`",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in\n{all}");
        }
    }

    #[test]
    fn the_attribute_on_anything_but_a_fn_is_an_error() {
        let errors = parse_errors(
            quote!(),
            quote!(
                struct NotACell;
            ),
        );
        assert_eq!(
            errors,
            vec!["`#[recurrent]` applies to a `fn` that states a cell's equations"]
        );
    }
}
