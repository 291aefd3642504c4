//! Parameters visited by name: how optimizers, gradient clipping and checkpoints reach
//! every parameter of a cell or a model, and its gradient of the same name.

/// A parameter's values (column-major) under its name.
pub struct ParamRef<'a, T> {
    /// The name, prefixed by the parts that contain it.
    pub name: String,
    /// The values, column-major.
    pub values: &'a [T],
    /// (rows, cols); a vector is (len, 1).
    pub shape: (usize, usize),
}

/// A parameter's values, to be changed.
pub struct ParamMut<'a, T> {
    /// The name, prefixed by the parts that contain it.
    pub name: String,
    /// The values, column-major.
    pub values: &'a mut [T],
    /// (rows, cols); a vector is (len, 1).
    pub shape: (usize, usize),
}

impl<'a, T> ParamRef<'a, T> {
    /// A named view of a parameter.
    pub fn new(name: impl Into<String>, values: &'a [T], shape: (usize, usize)) -> Self {
        ParamRef {
            name: name.into(),
            values,
            shape,
        }
    }
}

impl<'a, T> ParamMut<'a, T> {
    /// A named, mutable view of a parameter.
    pub fn new(name: impl Into<String>, values: &'a mut [T], shape: (usize, usize)) -> Self {
        ParamMut {
            name: name.into(),
            values,
            shape,
        }
    }
}

/// Anything with named parameters: a cell, its gradients, a model made of both.
///
/// A model composed of parts lists its parts' parameters with a prefix each (see
/// [`prefixed`]), so names stay unique: `encoder.W_ii`, `decoder.weight`.
pub trait Parameters<T> {
    /// Every parameter, by name.
    fn parameters(&self) -> Vec<ParamRef<'_, T>>;
    /// Every parameter, by name, to be changed.
    fn parameters_mut(&mut self) -> Vec<ParamMut<'_, T>>;

    /// The number of scalars in all parameters.
    fn num_parameters(&self) -> usize {
        self.parameters().iter().map(|p| p.values.len()).sum()
    }

    /// Sets every value to zero: gradients kept from pass to pass (see
    /// `Trajectory::backward_into`), before a pass whose gradients alone they should
    /// hold, as PyTorch's `zero_grad` clears each `.grad`.
    fn fill_zero(&mut self)
    where
        T: Copy + Default,
    {
        for param in self.parameters_mut() {
            param.values.fill(T::default());
        }
    }
}

/// A part's parameters renamed `prefix.name`.
pub fn prefixed<'a, T>(prefix: &str, params: Vec<ParamRef<'a, T>>) -> Vec<ParamRef<'a, T>> {
    params
        .into_iter()
        .map(|p| ParamRef {
            name: format!("{prefix}.{}", p.name),
            ..p
        })
        .collect()
}

/// A part's parameters renamed `prefix.name`, to be changed.
pub fn prefixed_mut<'a, T>(prefix: &str, params: Vec<ParamMut<'a, T>>) -> Vec<ParamMut<'a, T>> {
    params
        .into_iter()
        .map(|p| ParamMut {
            name: format!("{prefix}.{}", p.name),
            ..p
        })
        .collect()
}

/// Each parameter with its gradient, paired by name; an error if the two sets differ
/// in names or shapes.
pub fn pair_with_grads<'p, 'g, T>(
    params: Vec<ParamMut<'p, T>>,
    grads: Vec<ParamRef<'g, T>>,
) -> crate::Result<Vec<(ParamMut<'p, T>, &'g [T])>> {
    let mut grads: std::collections::HashMap<String, ParamRef<'g, T>> =
        grads.into_iter().map(|g| (g.name.clone(), g)).collect();
    let mut pairs = Vec::with_capacity(params.len());
    for param in params {
        let Some(grad) = grads.remove(&param.name) else {
            return Err(crate::Error::new(format!(
                "no gradient for parameter `{}`",
                param.name
            )));
        };
        crate::ensure!(
            grad.shape == param.shape,
            "gradient of `{}` has shape {:?} but the parameter has shape {:?}",
            param.name,
            grad.shape,
            param.shape
        );
        pairs.push((param, grad.values));
    }
    if let Some(extra) = grads.keys().next() {
        return Err(crate::Error::new(format!(
            "gradient `{extra}` belongs to no parameter"
        )));
    }
    Ok(pairs)
}

/// Named values owned: gradients gathered from any [`Parameters`], or an optimizer's
/// per-parameter state. Names and shapes are those of the parameters they came from.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSet<T> {
    /// (name, shape, values column-major).
    pub entries: Vec<(String, (usize, usize), Vec<T>)>,
}

impl<T: Clone> ParamSet<T> {
    /// A copy of every parameter of `params`.
    pub fn from_parameters(params: &dyn Parameters<T>) -> ParamSet<T> {
        ParamSet {
            entries: params
                .parameters()
                .into_iter()
                .map(|p| (p.name, p.shape, p.values.to_vec()))
                .collect(),
        }
    }
}

impl<T> Parameters<T> for ParamSet<T> {
    fn parameters(&self) -> Vec<ParamRef<'_, T>> {
        self.entries
            .iter()
            .map(|(name, shape, values)| ParamRef::new(name.clone(), values, *shape))
            .collect()
    }

    fn parameters_mut(&mut self) -> Vec<ParamMut<'_, T>> {
        self.entries
            .iter_mut()
            .map(|(name, shape, values)| ParamMut::new(name.clone(), values, *shape))
            .collect()
    }
}

/// A list of parts: `0.weight`, `1.weight`, ...
impl<T, P: Parameters<T>> Parameters<T> for Vec<P> {
    fn parameters(&self) -> Vec<ParamRef<'_, T>> {
        self.iter()
            .enumerate()
            .flat_map(|(i, p)| prefixed(&i.to_string(), p.parameters()))
            .collect()
    }

    fn parameters_mut(&mut self) -> Vec<ParamMut<'_, T>> {
        self.iter_mut()
            .enumerate()
            .flat_map(|(i, p)| prefixed_mut(&i.to_string(), p.parameters_mut()))
            .collect()
    }
}

/// A part that may be absent has no parameters then.
impl<T, P: Parameters<T>> Parameters<T> for Option<P> {
    fn parameters(&self) -> Vec<ParamRef<'_, T>> {
        self.as_ref().map_or_else(Vec::new, P::parameters)
    }

    fn parameters_mut(&mut self) -> Vec<ParamMut<'_, T>> {
        self.as_mut().map_or_else(Vec::new, P::parameters_mut)
    }
}
