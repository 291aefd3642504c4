//! PyTorch-shaped recurrent modules over the built-in cells: `nn::Rnn`, `nn::Lstm`,
//! `nn::Gru`, with PyTorch's arguments and defaults, outputs shaped as PyTorch's
//! (output, h_n, c_n), and weights read and written under PyTorch's names.
//!
//! Shapes in the library's layout (features down the columns): a padded input of
//! PyTorch's (T, B, I) is (I, T·B), with `batch_first` (B, T, I) is (I, B·T); `h_0` and
//! `h_n` of PyTorch's (L·D, B, H) are (H, L·D·B).
//!
//! ```
//! use rnn_runtime::nn::LstmConfig;
//! use rnn_runtime::prelude::*;
//! use rnn_runtime::recurrent::Mode;
//!
//! # fn main() -> Result<(), rnn_runtime::Error> {
//! let config = LstmConfig { num_layers: 2, bidirectional: true, ..LstmConfig::new(3, 5) };
//! let lstm = config.init::<f32>(&mut Rng::seed(0))?;
//! let x = DMatrix::zeros(3, 7 * 4); // 7 steps, batch of 4
//! let out = lstm.forward(&x, 4, None, Mode::Eval)?;
//! assert_eq!(out.output.shape(), (2 * 5, 7 * 4)); // (T, B, D·H)
//! assert_eq!(out.h_n.shape(), (5, 2 * 2 * 4)); // (L·D, B, H)
//! // As under `torch.no_grad()`: the same values, nothing kept for backward.
//! let inferred = lstm.forward(&x, 4, None, Mode::Infer)?;
//! assert_eq!(inferred.output, out.output);
//! assert!(lstm.torch_tensors().iter().any(|(name, _)| name == "weight_hh_l1_reverse"));
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use nalgebra::DMatrix;

use crate::cells::{
    GruCell, GruCellNoBias, LstmCell, LstmCellNoBias, LstmProjCell, LstmProjCellNoBias,
    RnnReluCell, RnnReluCellNoBias, RnnTanhCell, RnnTanhCellNoBias,
};
use crate::pack::PackedSequence;
use crate::recurrent::{LayerGrads, Mode, Recurrent, RecurrentConfig, RecurrentRun};
use crate::tensor_io::{load_safetensors, save_safetensors, Tensor};
use crate::{
    ensure, Cell, Error, Init, InputGrads, ParamMut, ParamRef, ParamSet, Parameters, Result, Rng,
    Scalar,
};

/// The nonlinearity of an Elman RNN.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Nonlinearity {
    #[default]
    /// tanh (PyTorch's default).
    Tanh,
    /// relu.
    Relu,
}

/// `torch.nn.RNN`'s arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct RnnConfig {
    /// Features of each input step.
    pub input_size: usize,
    /// Features of the hidden state.
    pub hidden_size: usize,
    /// Stacked layers (1).
    pub num_layers: usize,
    /// tanh or relu (tanh).
    pub nonlinearity: Nonlinearity,
    /// Whether the layers have biases (true).
    pub bias: bool,
    /// Padded inputs and outputs are (B, T, F) (false).
    pub batch_first: bool,
    /// Dropout on the outputs of each layer but the last, in training (0).
    pub dropout: f64,
    /// A reverse direction per layer (false).
    pub bidirectional: bool,
}

/// `torch.nn.LSTM`'s arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct LstmConfig {
    /// Features of each input step.
    pub input_size: usize,
    /// Features of the cell state (and of the hidden state without projection).
    pub hidden_size: usize,
    /// Stacked layers (1).
    pub num_layers: usize,
    /// Whether the layers have biases (true).
    pub bias: bool,
    /// Padded inputs and outputs are (B, T, F) (false).
    pub batch_first: bool,
    /// Dropout on the outputs of each layer but the last, in training (0).
    pub dropout: f64,
    /// A reverse direction per layer (false).
    pub bidirectional: bool,
    /// When positive, the hidden state is projected to this size (0).
    pub proj_size: usize,
}

/// `torch.nn.GRU`'s arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct GruConfig {
    /// Features of each input step.
    pub input_size: usize,
    /// Features of the hidden state.
    pub hidden_size: usize,
    /// Stacked layers (1).
    pub num_layers: usize,
    /// Whether the layers have biases (true).
    pub bias: bool,
    /// Padded inputs and outputs are (B, T, F) (false).
    pub batch_first: bool,
    /// Dropout on the outputs of each layer but the last, in training (0).
    pub dropout: f64,
    /// A reverse direction per layer (false).
    pub bidirectional: bool,
}

impl RnnConfig {
    /// PyTorch's defaults for these sizes.
    pub fn new(input_size: usize, hidden_size: usize) -> Self {
        RnnConfig {
            input_size,
            hidden_size,
            num_layers: 1,
            nonlinearity: Nonlinearity::Tanh,
            bias: true,
            batch_first: false,
            dropout: 0.0,
            bidirectional: false,
        }
    }

    /// The module, its parameters drawn as PyTorch draws them.
    pub fn init<T: Scalar>(&self, rng: &mut Rng) -> Result<Rnn<T>> {
        let layout = layout(
            self.num_layers,
            self.bidirectional,
            self.dropout,
            self.batch_first,
        );
        let dims = [self.input_size, self.hidden_size];
        let init = Init::pytorch_default(self.hidden_size);
        let layers = match (self.nonlinearity, self.bias) {
            (Nonlinearity::Tanh, true) => {
                BuiltinLayers::RnnTanh(Recurrent::new(&dims, layout, &init, rng)?)
            }
            (Nonlinearity::Tanh, false) => {
                BuiltinLayers::RnnTanhNoBias(Recurrent::new(&dims, layout, &init, rng)?)
            }
            (Nonlinearity::Relu, true) => {
                BuiltinLayers::RnnRelu(Recurrent::new(&dims, layout, &init, rng)?)
            }
            (Nonlinearity::Relu, false) => {
                BuiltinLayers::RnnReluNoBias(Recurrent::new(&dims, layout, &init, rng)?)
            }
        };
        Ok(Rnn {
            config: self.clone(),
            layers,
        })
    }
}

impl LstmConfig {
    /// PyTorch's defaults for these sizes.
    pub fn new(input_size: usize, hidden_size: usize) -> Self {
        LstmConfig {
            input_size,
            hidden_size,
            num_layers: 1,
            bias: true,
            batch_first: false,
            dropout: 0.0,
            bidirectional: false,
            proj_size: 0,
        }
    }

    /// The module, its parameters drawn as PyTorch draws them.
    pub fn init<T: Scalar>(&self, rng: &mut Rng) -> Result<Lstm<T>> {
        ensure!(
            self.proj_size < self.hidden_size || self.proj_size == 0,
            "`proj_size` ({}) must be smaller than `hidden_size` ({})",
            self.proj_size,
            self.hidden_size
        );
        let layout = layout(
            self.num_layers,
            self.bidirectional,
            self.dropout,
            self.batch_first,
        );
        let init = Init::pytorch_default(self.hidden_size);
        let plain = [self.input_size, self.hidden_size];
        let projected = [self.input_size, self.hidden_size, self.proj_size];
        let layers = match (self.proj_size > 0, self.bias) {
            (false, true) => BuiltinLayers::Lstm(Recurrent::new(&plain, layout, &init, rng)?),
            (false, false) => {
                BuiltinLayers::LstmNoBias(Recurrent::new(&plain, layout, &init, rng)?)
            }
            (true, true) => {
                BuiltinLayers::LstmProj(Recurrent::new(&projected, layout, &init, rng)?)
            }
            (true, false) => {
                BuiltinLayers::LstmProjNoBias(Recurrent::new(&projected, layout, &init, rng)?)
            }
        };
        Ok(Lstm {
            config: self.clone(),
            layers,
        })
    }
}

impl GruConfig {
    /// PyTorch's defaults for these sizes.
    pub fn new(input_size: usize, hidden_size: usize) -> Self {
        GruConfig {
            input_size,
            hidden_size,
            num_layers: 1,
            bias: true,
            batch_first: false,
            dropout: 0.0,
            bidirectional: false,
        }
    }

    /// The module, its parameters drawn as PyTorch draws them.
    pub fn init<T: Scalar>(&self, rng: &mut Rng) -> Result<Gru<T>> {
        let layout = layout(
            self.num_layers,
            self.bidirectional,
            self.dropout,
            self.batch_first,
        );
        let dims = [self.input_size, self.hidden_size];
        let init = Init::pytorch_default(self.hidden_size);
        let layers = if self.bias {
            BuiltinLayers::Gru(Recurrent::new(&dims, layout, &init, rng)?)
        } else {
            BuiltinLayers::GruNoBias(Recurrent::new(&dims, layout, &init, rng)?)
        };
        Ok(Gru {
            config: self.clone(),
            layers,
        })
    }
}

fn layout(
    num_layers: usize,
    bidirectional: bool,
    dropout: f64,
    batch_first: bool,
) -> RecurrentConfig {
    RecurrentConfig {
        num_layers,
        bidirectional,
        dropout,
        batch_first,
    }
}

/// Layers of one of the built-in cells.
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum BuiltinLayers<T> {
    RnnTanh(Recurrent<RnnTanhCell<T>>),
    RnnTanhNoBias(Recurrent<RnnTanhCellNoBias<T>>),
    RnnRelu(Recurrent<RnnReluCell<T>>),
    RnnReluNoBias(Recurrent<RnnReluCellNoBias<T>>),
    Lstm(Recurrent<LstmCell<T>>),
    LstmNoBias(Recurrent<LstmCellNoBias<T>>),
    LstmProj(Recurrent<LstmProjCell<T>>),
    LstmProjNoBias(Recurrent<LstmProjCellNoBias<T>>),
    Gru(Recurrent<GruCell<T>>),
    GruNoBias(Recurrent<GruCellNoBias<T>>),
}

/// The gradients of a module's parameters, kept from pass to pass: what a module's
/// `zero_grads` makes and its `backward_into` adds into, one variant per cell as in
/// [`BuiltinLayers`]. They are named as the module's parameters (`l0.W_ii`), so
/// clipping and the optimizers take them.
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum BuiltinGrads<T: Scalar> {
    RnnTanh(LayerGrads<<RnnTanhCell<T> as Cell<T>>::Grads>),
    RnnTanhNoBias(LayerGrads<<RnnTanhCellNoBias<T> as Cell<T>>::Grads>),
    RnnRelu(LayerGrads<<RnnReluCell<T> as Cell<T>>::Grads>),
    RnnReluNoBias(LayerGrads<<RnnReluCellNoBias<T> as Cell<T>>::Grads>),
    Lstm(LayerGrads<<LstmCell<T> as Cell<T>>::Grads>),
    LstmNoBias(LayerGrads<<LstmCellNoBias<T> as Cell<T>>::Grads>),
    LstmProj(LayerGrads<<LstmProjCell<T> as Cell<T>>::Grads>),
    LstmProjNoBias(LayerGrads<<LstmProjCellNoBias<T> as Cell<T>>::Grads>),
    Gru(LayerGrads<<GruCell<T> as Cell<T>>::Grads>),
    GruNoBias(LayerGrads<<GruCellNoBias<T> as Cell<T>>::Grads>),
}

/// Hands `$then` the variants of [`BuiltinLayers`] and [`BuiltinGrads`], which share
/// their names, with `$args`: the one list the matches below are made from.
macro_rules! each_builtin {
    ($then:ident! $args:tt) => {
        $then! {
            [RnnTanh RnnTanhNoBias RnnRelu RnnReluNoBias Lstm LstmNoBias LstmProj
             LstmProjNoBias Gru GruNoBias] $args
        }
    };
}

/// `match $value { $enum::V($x) => $body, ... }` over every variant.
macro_rules! match_each {
    ([$($v:ident)*] ($enum:ident, $value:expr, $x:ident, $body:expr)) => {
        match $value {
            $($enum::$v($x) => $body,)*
        }
    };
}

/// Layers and gradients of the same variant, else `$other`.
macro_rules! match_pairs {
    ([$($v:ident)*] ($layers:expr, $grads:expr, $net:ident, $g:ident, $body:expr, $other:expr)) => {
        match ($layers, $grads) {
            $((BuiltinLayers::$v($net), BuiltinGrads::$v($g)) => $body,)*
            _ => $other,
        }
    };
}

/// The gradients' variant of the layers' variant, from `$net` bound to the layers.
macro_rules! match_zero_grads {
    ([$($v:ident)*] ($layers:expr, $net:ident, $body:expr)) => {
        match $layers {
            $(BuiltinLayers::$v($net) => BuiltinGrads::$v($body),)*
        }
    };
}

/// The variant's name.
macro_rules! match_name {
    ([$($v:ident)*] ($enum:ident, $value:expr)) => {
        match $value {
            $($enum::$v(_) => stringify!($v),)*
        }
    };
}

/// Runs `$body` with `$net` bound to the layers, whatever their cell.
macro_rules! with_layers {
    ($layers:expr, $net:ident => $body:expr) => {
        each_builtin!(match_each!(BuiltinLayers, $layers, $net, $body))
    };
}

/// Runs `$body` with `$g` bound to the kept gradients, whatever their cell.
macro_rules! with_grads {
    ($grads:expr, $g:ident => $body:expr) => {
        each_builtin!(match_each!(BuiltinGrads, $grads, $g, $body))
    };
}

impl<T: Scalar> Parameters<T> for BuiltinGrads<T> {
    fn parameters(&self) -> Vec<ParamRef<'_, T>> {
        with_grads!(self, g => g.parameters())
    }

    fn parameters_mut(&mut self) -> Vec<ParamMut<'_, T>> {
        with_grads!(self, g => g.parameters_mut())
    }
}

/// A module's results, shaped as PyTorch's: (output, h_n, c_n).
pub struct RnnOutput<T: Scalar> {
    /// Padded like the input, (D·H_out, T·B) or (D·H_out, B·T); or packed data.
    pub output: DMatrix<T>,
    /// (H_out, L·D·B).
    pub h_n: DMatrix<T>,
    /// (H, L·D·B), for an LSTM.
    pub c_n: Option<DMatrix<T>>,
    run: RecurrentRun<T>,
}

/// The gradients of a loss with respect to a module's (output, h_n, c_n); `None` where
/// the loss does not read it.
pub type OutputGrads<'a, T> = (
    Option<&'a DMatrix<T>>,
    Option<&'a DMatrix<T>>,
    Option<&'a DMatrix<T>>,
);

/// Gradients of a loss with respect to a module's parameters, input and initial states.
pub struct ModuleGrads<T: Scalar> {
    /// Named as the module's parameters (`l0.W_ii`), for optimizers.
    pub params: ParamSet<T>,
    /// The same gradients under PyTorch's names and shapes (`weight_ih_l0`).
    pub torch: Vec<(String, Tensor<T>)>,
    /// Like the input; with no rows when the pass skipped it ([`InputGrads::Skip`]).
    pub input: DMatrix<T>,
    /// Like `h_0`.
    pub h_0: DMatrix<T>,
    /// Like `c_0`, for an LSTM.
    pub c_0: Option<DMatrix<T>>,
}

impl<T: Scalar> ModuleGrads<T> {
    /// The gradients, with the initial states' split into `h_0` and `c_0`.
    fn new(
        params: ParamSet<T>,
        torch: Vec<(String, Tensor<T>)>,
        input: DMatrix<T>,
        initial_states: Vec<DMatrix<T>>,
    ) -> ModuleGrads<T> {
        let mut initial = initial_states.into_iter();
        let h_0 = initial.next().expect("a cell has a state");
        ModuleGrads {
            params,
            torch,
            input,
            h_0,
            c_0: initial.next(),
        }
    }
}

impl<T: Scalar> BuiltinLayers<T> {
    fn states(initial: Option<(&DMatrix<T>, Option<&DMatrix<T>>)>) -> Option<Vec<DMatrix<T>>> {
        initial.map(|(h, c)| std::iter::once(h.clone()).chain(c.cloned()).collect())
    }

    fn check_state_count(&self, initial: Option<(&DMatrix<T>, Option<&DMatrix<T>>)>) -> Result<()> {
        let is_lstm = matches!(
            self,
            BuiltinLayers::Lstm(_)
                | BuiltinLayers::LstmNoBias(_)
                | BuiltinLayers::LstmProj(_)
                | BuiltinLayers::LstmProjNoBias(_)
        );
        if let Some((_, c)) = initial {
            ensure!(
                c.is_some() == is_lstm,
                "{}",
                if is_lstm {
                    "an LSTM needs both `h_0` and `c_0`"
                } else {
                    "only an LSTM takes `c_0`"
                }
            );
        }
        Ok(())
    }

    fn finish(mut run: RecurrentRun<T>) -> RnnOutput<T> {
        let mut states = run.final_states.iter().cloned();
        let h_n = states.next().expect("a cell has a state");
        RnnOutput {
            // Moved, not copied: backward does not read it.
            output: std::mem::replace(&mut run.output, DMatrix::zeros(0, 0)),
            h_n,
            c_n: states.next(),
            run,
        }
    }

    /// Runs a padded batch of `batch` sequences.
    pub fn forward(
        &self,
        input: &DMatrix<T>,
        batch: usize,
        initial: Option<(&DMatrix<T>, Option<&DMatrix<T>>)>,
        mode: Mode<'_>,
    ) -> Result<RnnOutput<T>> {
        self.check_state_count(initial)?;
        let states = Self::states(initial);
        let run = with_layers!(self, net => net.forward(input, batch, states.as_deref(), mode))?;
        Ok(Self::finish(run))
    }

    /// Runs a packed batch.
    pub fn forward_packed(
        &self,
        input: &PackedSequence<T>,
        initial: Option<(&DMatrix<T>, Option<&DMatrix<T>>)>,
        mode: Mode<'_>,
    ) -> Result<RnnOutput<T>> {
        self.check_state_count(initial)?;
        let states = Self::states(initial);
        let run = with_layers!(self, net => net.forward_packed(input, states.as_deref(), mode))?;
        Ok(Self::finish(run))
    }

    /// Backpropagation for the loss whose gradients with respect to the output and the
    /// final states are given (`None`: the loss does not read it).
    pub fn backward(
        &self,
        out: &mut RnnOutput<T>,
        d_output: Option<&DMatrix<T>>,
        d_h_n: Option<&DMatrix<T>>,
        d_c_n: Option<&DMatrix<T>>,
    ) -> Result<ModuleGrads<T>> {
        self.backward_with(out, d_output, d_h_n, d_c_n, InputGrads::Compute)
    }

    /// [`backward`](Self::backward), computing the input's gradient only if
    /// `input_grads` asks for it.
    pub fn backward_with(
        &self,
        out: &mut RnnOutput<T>,
        d_output: Option<&DMatrix<T>>,
        d_h_n: Option<&DMatrix<T>>,
        d_c_n: Option<&DMatrix<T>>,
        input_grads: InputGrads,
    ) -> Result<ModuleGrads<T>> {
        let d_final = [d_h_n, d_c_n];
        let states = out.run.final_states.len();
        with_layers!(self, net => {
            let grads = out.run.backward_with(net, d_output, &d_final[..states], input_grads)?;
            let torch = net.torch_grads(&grads);
            let params = ParamSet::from_parameters(&grads);
            Ok(ModuleGrads::new(params, torch, grads.input, grads.initial_states))
        })
    }

    /// Zero gradients of every parameter, for [`backward_into`](Self::backward_into) to
    /// add into, kept from pass to pass.
    pub fn zero_grads(&self) -> BuiltinGrads<T> {
        each_builtin!(match_zero_grads!(self, net, net.zero_grads()))
    }

    /// [`backward_with`](Self::backward_with), adding the parameters' gradients into
    /// `grads` (made by [`zero_grads`](Self::zero_grads)) instead of returning fresh
    /// ones, as PyTorch adds into each `.grad`. The gradients returned are the input's
    /// and the initial states'; their `params` and `torch` are empty.
    pub fn backward_into(
        &self,
        out: &mut RnnOutput<T>,
        (d_output, d_h_n, d_c_n): OutputGrads<'_, T>,
        input_grads: InputGrads,
        grads: &mut BuiltinGrads<T>,
    ) -> Result<ModuleGrads<T>> {
        let d_final = [d_h_n, d_c_n];
        let states = out.run.final_states.len();
        let (ours, theirs) = (
            each_builtin!(match_name!(BuiltinLayers, self)),
            each_builtin!(match_name!(BuiltinGrads, &*grads)),
        );
        each_builtin!(match_pairs!(
            self,
            grads,
            net,
            kept,
            {
                let rest =
                    out.run
                        .backward_into(net, d_output, &d_final[..states], input_grads, kept)?;
                let no_params = ParamSet {
                    entries: Vec::new(),
                };
                Ok(ModuleGrads::new(
                    no_params,
                    Vec::new(),
                    rest.input,
                    rest.initial_states,
                ))
            },
            Err(Error::new(format!(
            "the gradients given are for `{theirs}` layers, but the module's layers are `{ours}`"
        )))
        ))
    }

    /// Every parameter as PyTorch names and shapes it.
    pub fn torch_tensors(&self) -> Vec<(String, Tensor<T>)> {
        with_layers!(self, net => net.torch_tensors())
    }

    /// Sets every parameter from PyTorch-named tensors (see
    /// [`Recurrent::load_torch_tensors`]).
    pub fn load_torch_tensors(&mut self, tensors: &BTreeMap<String, Tensor<T>>) -> Result<()> {
        with_layers!(self, net => net.load_torch_tensors(tensors))
    }
}

impl<T: Scalar> Parameters<T> for BuiltinLayers<T> {
    fn parameters(&self) -> Vec<ParamRef<'_, T>> {
        with_layers!(self, net => net.parameters())
    }

    fn parameters_mut(&mut self) -> Vec<ParamMut<'_, T>> {
        with_layers!(self, net => net.parameters_mut())
    }
}

/// The module types: a config and layers, with PyTorch's calls.
macro_rules! module {
    ($(#[$doc:meta])* $name:ident, $config:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq)]
        pub struct $name<T = f32> {
            /// The arguments it was made with.
            pub config: $config,
            /// The cells.
            pub layers: BuiltinLayers<T>,
        }

        impl<T: Scalar> $name<T> {
            /// Runs a padded batch of `batch` sequences from `(h_0, c_0)` (zeros by default).
            pub fn forward(&self, input: &DMatrix<T>, batch: usize, initial: Option<(&DMatrix<T>, Option<&DMatrix<T>>)>, mode: Mode<'_>) -> Result<RnnOutput<T>> {
                self.layers.forward(input, batch, initial, mode)
            }

            /// Runs a packed batch from `(h_0, c_0)` (zeros by default).
            pub fn forward_packed(&self, input: &PackedSequence<T>, initial: Option<(&DMatrix<T>, Option<&DMatrix<T>>)>, mode: Mode<'_>) -> Result<RnnOutput<T>> {
                self.layers.forward_packed(input, initial, mode)
            }

            /// Gradients for a loss with the given gradients of (output, h_n, c_n).
            pub fn backward(&self, out: &mut RnnOutput<T>, d_output: Option<&DMatrix<T>>, d_h_n: Option<&DMatrix<T>>, d_c_n: Option<&DMatrix<T>>) -> Result<ModuleGrads<T>> {
                self.layers.backward(out, d_output, d_h_n, d_c_n)
            }

            /// [`backward`](Self::backward) without the input's gradient when
            /// `input_grads` is [`InputGrads::Skip`] (the input is data, as a tensor
            /// without `requires_grad` in PyTorch).
            pub fn backward_with(&self, out: &mut RnnOutput<T>, d_output: Option<&DMatrix<T>>, d_h_n: Option<&DMatrix<T>>, d_c_n: Option<&DMatrix<T>>, input_grads: InputGrads) -> Result<ModuleGrads<T>> {
                self.layers.backward_with(out, d_output, d_h_n, d_c_n, input_grads)
            }

            /// Zero gradients of every parameter, for
            /// [`backward_into`](Self::backward_into) to add into, kept from pass to pass.
            pub fn zero_grads(&self) -> BuiltinGrads<T> {
                self.layers.zero_grads()
            }

            /// [`backward_with`](Self::backward_with), adding the parameters' gradients
            /// into `grads` instead of returning fresh ones (see
            /// [`BuiltinLayers::backward_into`]); the gradients of
            /// (output, h_n, c_n) come as one triple.
            pub fn backward_into(&self, out: &mut RnnOutput<T>, d_outputs: OutputGrads<'_, T>, input_grads: InputGrads, grads: &mut BuiltinGrads<T>) -> Result<ModuleGrads<T>> {
                self.layers.backward_into(out, d_outputs, input_grads, grads)
            }

            /// Every parameter under PyTorch's name and shape.
            pub fn torch_tensors(&self) -> Vec<(String, Tensor<T>)> {
                self.layers.torch_tensors()
            }

            /// Sets every parameter from PyTorch-named tensors; a missing, extra or
            /// misshaped tensor is an error and changes nothing.
            pub fn load_torch_tensors(&mut self, tensors: &BTreeMap<String, Tensor<T>>) -> Result<()> {
                self.layers.load_torch_tensors(tensors)
            }

            /// Writes the weights, PyTorch-named, to a safetensors file (atomically).
            pub fn save_weights(&self, path: &Path) -> Result<()> {
                save_safetensors(path, &self.torch_tensors(), &BTreeMap::new())
            }

            /// Reads PyTorch-named weights (F32 or F64) from a safetensors file.
            pub fn load_weights(&mut self, path: &Path) -> Result<()> {
                let (tensors, _) = load_safetensors(path)?;
                self.load_torch_tensors(&tensors).map_err(|e| e.context(format!("loading `{}`", path.display())))
            }
        }

        impl<T: Scalar> Parameters<T> for $name<T> {
            fn parameters(&self) -> Vec<ParamRef<'_, T>> {
                self.layers.parameters()
            }

            fn parameters_mut(&mut self) -> Vec<ParamMut<'_, T>> {
                self.layers.parameters_mut()
            }
        }
    };
}

module!(
    /// `torch.nn.RNN`: Elman layers with tanh or relu.
    Rnn,
    RnnConfig
);
module!(
    /// `torch.nn.LSTM`, with `proj_size`.
    Lstm,
    LstmConfig
);
module!(
    /// `torch.nn.GRU`.
    Gru,
    GruConfig
);
