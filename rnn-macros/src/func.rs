//! The functions of the equation language, each with its derivative: the one table that
//! parsing, autodiff, the interpreter and code generation all read.

/// An elementwise function `y = f(x)`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Func {
    Sigmoid,
    Tanh,
    Relu,
    Exp,
    Softplus,
    Identity,
}

/// Which value the derivative is computed from: keeping the one backward needs is what
/// decides what the forward pass saves.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DerivFrom {
    /// f'(x) is cheaper from y = f(x) (sigmoid: y(1 - y)).
    Output,
    /// f'(x) needs x itself (softplus: sigmoid(x)).
    Input,
}

pub const ALL: [Func; 6] = [
    Func::Sigmoid,
    Func::Tanh,
    Func::Relu,
    Func::Exp,
    Func::Softplus,
    Func::Identity,
];

impl Func {
    pub fn from_name(name: &str) -> Option<Func> {
        ALL.into_iter().find(|func| func.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Func::Sigmoid => "sigmoid",
            Func::Tanh => "tanh",
            Func::Relu => "relu",
            Func::Exp => "exp",
            Func::Softplus => "softplus",
            Func::Identity => "identity",
        }
    }

    pub fn deriv_from(self) -> DerivFrom {
        match self {
            Func::Softplus => DerivFrom::Input,
            _ => DerivFrom::Output,
        }
    }

    /// f(x) in f64, for the interpreter.
    pub fn eval(self, x: f64) -> f64 {
        match self {
            Func::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            Func::Tanh => x.tanh(),
            Func::Relu => x.max(0.0),
            Func::Exp => x.exp(),
            // log(1 + e^x) without overflow for large x.
            Func::Softplus => x.max(0.0) + (-x.abs()).exp().ln_1p(),
            Func::Identity => x,
        }
    }

    /// f'(x) from the value `deriv_from` names, in f64, for the interpreter.
    #[cfg(test)]
    pub fn eval_deriv(self, v: f64) -> f64 {
        match self {
            Func::Sigmoid => v * (1.0 - v),
            Func::Tanh => 1.0 - v * v,
            Func::Relu => {
                if v > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Func::Exp => v,
            Func::Softplus => Func::Sigmoid.eval(v),
            Func::Identity => 1.0,
        }
    }

    /// The runtime function that computes f, and the one that computes f' from the value
    /// `deriv_from` names (both in `rnn_runtime::math`).
    pub fn runtime_names(self) -> (&'static str, &'static str) {
        match self {
            Func::Sigmoid => ("sigmoid", "sigmoid_deriv"),
            Func::Tanh => ("tanh", "tanh_deriv"),
            Func::Relu => ("relu", "relu_deriv"),
            Func::Exp => ("exp", "exp_deriv"),
            Func::Softplus => ("softplus", "softplus_deriv"),
            Func::Identity => ("identity", "identity_deriv"),
        }
    }
}

/// "`sigmoid`, `tanh`, ..." for error messages.
pub fn known_names() -> String {
    ALL.iter()
        .map(|func| format!("`{}`", func.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The known function closest to a misspelt name, if one is close enough to suggest.
pub fn closest(name: &str) -> Option<Func> {
    ALL.into_iter()
        .map(|func| (edit_distance(name, func.name()), func))
        .filter(|(distance, func)| *distance <= func.name().len().max(3) / 3 + 1)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, func)| func)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(above + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivative_table_matches_finite_differences() {
        for func in ALL {
            for x in [-3.0, -0.7, 0.3, 2.5] {
                let eps = 1e-6;
                let numeric = (func.eval(x + eps) - func.eval(x - eps)) / (2.0 * eps);
                let from = match func.deriv_from() {
                    DerivFrom::Output => func.eval(x),
                    DerivFrom::Input => x,
                };
                let analytic = func.eval_deriv(from);
                assert!(
                    (numeric - analytic).abs() < 1e-6,
                    "{func:?} at {x}: {numeric} vs {analytic}"
                );
            }
        }
    }

    #[test]
    fn suggests_the_closest_name() {
        assert_eq!(closest("sigmod"), Some(Func::Sigmoid));
        assert_eq!(closest("tahn"), Some(Func::Tanh));
        assert_eq!(closest("matmul"), None);
    }
}
