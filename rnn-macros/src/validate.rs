//! Stage 2: names and structure. Every mistake is recorded with its span; the later
//! stages run only on a cell that passed.

use std::collections::{HashMap, HashSet};

use syn::Ident;

use crate::ctxt::Ctxt;
use crate::func::{self, Func};
use crate::parse::{ArgKind, BinOp, CellAst, Expr, Stmt};

/// What a name in an expression refers to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Binding {
    Input(usize),
    State(usize),
}

/// A parameter's kind follows the case of its first letter, as papers write them.
pub fn is_matrix_name(name: &str) -> bool {
    name.chars().next().is_some_and(char::is_uppercase)
}

pub fn validate(cx: &Ctxt, cell: &CellAst) {
    let mut args: HashMap<String, Binding> = HashMap::new();
    let (mut inputs, mut states) = (0, 0);
    for arg in &cell.args {
        let binding = match arg.kind {
            ArgKind::Input => {
                inputs += 1;
                Binding::Input(inputs - 1)
            }
            ArgKind::State => {
                states += 1;
                Binding::State(states - 1)
            }
        };
        if args.insert(arg.name.to_string(), binding).is_some() {
            cx.error_spanned_by(&arg.name, format!("duplicate argument `{}`", arg.name));
        }
    }
    // With an argument in error, its kind is unknown: it may be the missing one.
    if inputs == 0 && cell.broken_args == 0 {
        cx.error_spanned_by(
            &cell.name,
            "a cell needs at least one input, as in `x: Input`",
        );
    }
    if states == 0 && cell.broken_args == 0 {
        cx.error_spanned_by(
            &cell.name,
            "a cell needs at least one state, as in `h: State`",
        );
    }
    if let Some(output) = &cell.output {
        if args
            .get(&output.to_string())
            .is_none_or(|b| !matches!(b, Binding::State(_)))
        {
            cx.error_spanned_by(
                output,
                format!(
                    "`output = {output}` does not name a state of `{}`",
                    cell.name
                ),
            );
        }
    }

    let defined_later: HashSet<String> = cell
        .stmts
        .iter()
        .filter(|stmt| matches!(stmt, Stmt::Let { .. }))
        .map(|stmt| stmt.name().to_string())
        .collect();
    // A statement whose value had errors still defines or assigns its name.
    let mut locals: HashSet<String> = cell
        .broken_stmts
        .iter()
        .map(|n| n.to_string())
        .filter(|n| !args.contains_key(n))
        .collect();
    let mut assigned: HashMap<String, Ident> = cell
        .broken_stmts
        .iter()
        .filter(|n| args.contains_key(&n.to_string()))
        .map(|n| (n.to_string(), n.clone()))
        .collect();
    for stmt in &cell.stmts {
        check_expr(cx, stmt.value(), &args, &locals, &defined_later);
        let name = stmt.name();
        let key = name.to_string();
        match stmt {
            Stmt::Let { .. } => {
                if args.contains_key(&key) {
                    cx.error_spanned_by(
                        name,
                        format!("`let {name}` shadows the argument `{name}`"),
                    );
                } else if !locals.insert(key) {
                    cx.error_spanned_by(name, format!("gate `{name}` is defined twice"));
                }
            }
            Stmt::Assign { .. } => match args.get(&key) {
                Some(Binding::State(_)) => {
                    if assigned.insert(key, name.clone()).is_some() {
                        cx.error_spanned_by(
                            name,
                            format!(
                                "state `{name}` is assigned twice; each state is assigned once"
                            ),
                        );
                    }
                }
                Some(_) => cx.error_spanned_by(
                    name,
                    format!("cannot assign to input `{name}`; only states are assigned"),
                ),
                None if locals.contains(&key) => cx.error_spanned_by(
                    name,
                    format!("cannot assign to gate `{name}`; only states are assigned"),
                ),
                None => cx.error_spanned_by(
                    name,
                    format!("cannot assign to `{name}`: it is not a state of the cell"),
                ),
            },
        }
    }
    for arg in cell.args.iter().filter(|arg| arg.kind == ArgKind::State) {
        if !assigned.contains_key(&arg.name.to_string()) {
            cx.error_spanned_by(
                &arg.name,
                format!(
                    "state `{}` is never assigned; write `{} = ...;`",
                    arg.name, arg.name
                ),
            );
        }
    }
    check_dead_gates(cx, cell);
}

fn check_expr(
    cx: &Ctxt,
    expr: &Expr,
    args: &HashMap<String, Binding>,
    locals: &HashSet<String>,
    defined_later: &HashSet<String>,
) {
    let recurse = |e: &Expr| check_expr(cx, e, args, locals, defined_later);
    match expr {
        Expr::Ident(ident) => {
            let name = ident.to_string();
            if args.contains_key(&name) || locals.contains(&name) {
                return;
            }
            if defined_later.contains(&name) {
                cx.error_spanned_by(ident, format!("gate `{name}` is used before it is defined"));
            } else if let Some(why) = unusable_parameter_name(&name) {
                cx.error_spanned_by(ident, format!("`{name}` cannot name a parameter: {why}"));
            } else if is_matrix_name(&name) {
                cx.error_spanned_by(
                    ident,
                    format!("matrix `{name}` used as a vector; a matrix multiplies a vector, as in `{name} * x`"),
                );
            }
        }
        Expr::Lit(..) => {}
        Expr::Neg(inner, _) => recurse(inner),
        Expr::Binary(op, lhs, rhs, _) => {
            let lhs_matrix = matrix_param(lhs, args, locals, defined_later);
            if let (BinOp::Mul, Some(lhs_matrix)) = (op, lhs_matrix) {
                if let Some(rhs_matrix) = matrix_param(rhs, args, locals, defined_later) {
                    cx.error_spanned_by(
                        rhs_matrix,
                        format!("product of two matrices `{lhs_matrix}` and `{rhs_matrix}`; a matrix multiplies a vector"),
                    );
                } else {
                    recurse(rhs);
                }
                return;
            }
            if let Some(matrix) = lhs_matrix {
                cx.error_spanned_by(
                    matrix,
                    format!("matrix `{matrix}` used with `{}`; a matrix only multiplies a vector, as in `{matrix} * x`", op.symbol()),
                );
            } else {
                recurse(lhs);
            }
            recurse(rhs);
        }
        Expr::Call(name, call_args, _) => {
            match Func::from_name(&name.to_string()) {
                Some(func) if call_args.len() != 1 => cx.error_spanned_by(
                    name,
                    format!(
                        "`{}` takes 1 argument but {} were given",
                        func.name(),
                        call_args.len()
                    ),
                ),
                Some(_) => {}
                None => {
                    let hint = func::closest(&name.to_string()).map_or(String::new(), |f| {
                        format!(" (did you mean `{}`?)", f.name())
                    });
                    cx.error_spanned_by(
                        name,
                        format!(
                            "unknown function `{name}`{hint}; expected one of {}",
                            func::known_names()
                        ),
                    );
                }
            }
            call_args.iter().for_each(recurse);
        }
        Expr::Concat(parts, _) => parts.iter().for_each(recurse),
    }
}

/// Parameters become fields of the generated struct, so their names must be able to.
fn unusable_parameter_name(name: &str) -> Option<&'static str> {
    if matches!(name, "self" | "Self" | "super" | "crate") {
        Some("it is a Rust keyword")
    } else if name.starts_with("__") {
        Some("names starting with `__` are reserved for generated code")
    } else {
        None
    }
}

/// `Some(name)` when `expr` is a bare matrix parameter.
fn matrix_param<'a>(
    expr: &'a Expr,
    args: &HashMap<String, Binding>,
    locals: &HashSet<String>,
    defined_later: &HashSet<String>,
) -> Option<&'a Ident> {
    match expr {
        Expr::Ident(ident) => {
            let name = ident.to_string();
            let is_param = !args.contains_key(&name)
                && !locals.contains(&name)
                && !defined_later.contains(&name);
            (is_param && is_matrix_name(&name)).then_some(ident)
        }
        _ => None,
    }
}

/// A `let` whose value reaches no state is a mistake: a gate the equations forgot.
/// (Without states, or where a statement had errors, there is nothing to say.)
fn check_dead_gates(cx: &Ctxt, cell: &CellAst) {
    if cell.args.iter().all(|a| a.kind != ArgKind::State) || !cell.broken_stmts.is_empty() {
        return;
    }
    // Gates that reach a state, through any chain of uses, in any order (a use before
    // the definition is its own error).
    let mut live: HashSet<String> = HashSet::new();
    loop {
        let before = live.len();
        for stmt in &cell.stmts {
            let reaches_state = match stmt {
                Stmt::Assign { .. } => true,
                Stmt::Let { name, .. } => live.contains(&name.to_string()),
            };
            if reaches_state {
                collect_idents(stmt.value(), &mut live);
            }
        }
        if live.len() == before {
            break;
        }
    }
    for stmt in &cell.stmts {
        if let Stmt::Let { name, .. } = stmt {
            if !live.contains(&name.to_string()) {
                cx.error_spanned_by(
                    name,
                    format!("gate `{name}` is computed but never reaches a state"),
                );
            }
        }
    }
}

fn collect_idents(expr: &Expr, out: &mut HashSet<String>) {
    match expr {
        Expr::Ident(ident) => {
            out.insert(ident.to_string());
        }
        Expr::Lit(..) => {}
        Expr::Neg(inner, _) => collect_idents(inner, out),
        Expr::Binary(_, lhs, rhs, _) => {
            collect_idents(lhs, out);
            collect_idents(rhs, out);
        }
        Expr::Call(_, args, _) | Expr::Concat(args, _) => {
            args.iter().for_each(|a| collect_idents(a, out))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn errors(item: proc_macro2::TokenStream) -> Vec<String> {
        let cx = Ctxt::new();
        if let Some(cell) = crate::parse::parse(&cx, quote!(), item) {
            validate(&cx, &cell);
        }
        match cx.check() {
            Ok(()) => Vec::new(),
            Err(error) => error.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn accepts_the_lstm() {
        let errs = errors(crate::test_util::lstm());
        assert!(errs.is_empty(), "{errs:?}");
    }

    #[test]
    fn reports_every_mistake_at_once() {
        let errs = errors(quote! {
            fn bad(x: Input, h: State, c: State) {
                let g = sigmod(W * x);
                let dead = tanh(x);
                h = g + later;
                h = x;
                let later = x;
            }
        });
        let joined = errs.join("\n");
        assert!(
            joined.contains("unknown function `sigmod` (did you mean `sigmoid`?)"),
            "{joined}"
        );
        assert!(
            joined.contains("gate `dead` is computed but never reaches a state"),
            "{joined}"
        );
        assert!(
            joined.contains("gate `later` is used before it is defined"),
            "{joined}"
        );
        assert!(joined.contains("state `h` is assigned twice"), "{joined}");
        assert!(joined.contains("state `c` is never assigned"), "{joined}");
    }

    #[test]
    fn parameter_names_must_be_able_to_name_fields() {
        let errs = errors(quote! {
            fn bad(x: Input, h: State) {
                h = tanh(self + __dims + x);
            }
        });
        let joined = errs.join("\n");
        assert!(
            joined.contains("`self` cannot name a parameter: it is a Rust keyword"),
            "{joined}"
        );
        assert!(
            joined.contains(
                "`__dims` cannot name a parameter: names starting with `__` are reserved"
            ),
            "{joined}"
        );
    }

    #[test]
    fn matrices_only_multiply_vectors() {
        let errs = errors(quote! {
            fn bad(x: Input, h: State) {
                h = tanh(W + x) + U * V * x + x * W2;
            }
        });
        let joined = errs.join("\n");
        assert!(joined.contains("matrix `W` used with `+`"), "{joined}");
        assert!(
            joined.contains("product of two matrices `U` and `V`"),
            "{joined}"
        );
        assert!(joined.contains("matrix `W2` used as a vector"), "{joined}");
    }
}
