//! The built-in cells against PyTorch: forward outputs, final states and every gradient
//! of the one-layer `nn.RNN`/`nn.LSTM`/`nn.GRU` fixtures, in f64 and in f32.

mod common;

use common::{relative_error, Fixture};
use rnn_runtime::nalgebra::DMatrix;
use rnn_runtime::prelude::*;
use rnn_runtime::sequence::Trajectory;

/// Which of our parameters hold the row blocks (gates) of each PyTorch tensor.
type Layout = &'static [(&'static str, &'static [&'static str])];

const RNN: Layout = &[
    ("weight_ih_l0", &["W_ih"]),
    ("weight_hh_l0", &["W_hh"]),
    ("bias_ih_l0", &["b_ih"]),
    ("bias_hh_l0", &["b_hh"]),
];
const LSTM: Layout = &[
    ("weight_ih_l0", &["W_ii", "W_if", "W_ig", "W_io"]),
    ("weight_hh_l0", &["W_hi", "W_hf", "W_hg", "W_ho"]),
    ("bias_ih_l0", &["b_ii", "b_if", "b_ig", "b_io"]),
    ("bias_hh_l0", &["b_hi", "b_hf", "b_hg", "b_ho"]),
];
const GRU: Layout = &[
    ("weight_ih_l0", &["W_ir", "W_iz", "W_in"]),
    ("weight_hh_l0", &["W_hr", "W_hz", "W_hn"]),
    ("bias_ih_l0", &["b_ir", "b_iz", "b_in"]),
    ("bias_hh_l0", &["b_hr", "b_hz", "b_hn"]),
];

fn cast<T: Scalar>(m: &DMatrix<f64>) -> DMatrix<T> {
    m.map(T::of)
}

fn back<T: Scalar>(values: &[T]) -> Vec<f64> {
    values.iter().map(|v| v.as_f64()).collect()
}

/// Our parameters (or gradients) in the row-major layout of PyTorch's tensor `key`.
fn pytorch_layout<T: Scalar>(params: &dyn Parameters<T>, gates: &[&str]) -> Vec<f64> {
    let all = params.parameters();
    let blocks: Vec<_> = gates
        .iter()
        .map(|g| all.iter().find(|p| p.name == *g).expect("parameter"))
        .collect();
    let mut out = Vec::new();
    for block in blocks {
        let (rows, cols) = block.shape;
        for r in 0..rows {
            for c in 0..cols {
                out.push(block.values[c * rows + r].as_f64());
            }
        }
    }
    out
}

fn check<T: Scalar, C: Cell<T>>(name: &str, layout: Layout, tolerance: f64) {
    let fx = Fixture::load(name);
    let (input_size, hidden) = (fx.meta_usize("input_size"), fx.meta_usize("hidden_size"));
    let (seq_len, batch) = (fx.meta_usize("seq_len"), fx.meta_usize("batch"));
    let mut cell = C::with_dims(
        &[input_size, hidden],
        &Init::Constant(0.0),
        &mut Rng::seed(0),
    )
    .unwrap();
    for (key, gates) in layout {
        let tensor = fx.values(&format!("param.{key}"));
        let mut at = 0;
        for gate in gates.iter() {
            let mut params = cell.parameters_mut();
            let param = params
                .iter_mut()
                .find(|p| p.name == *gate)
                .expect("parameter");
            let (rows, cols) = param.shape;
            for r in 0..rows {
                for c in 0..cols {
                    param.values[c * rows + r] = T::of(tensor[at + r * cols + c]);
                }
            }
            at += rows * cols;
        }
        assert_eq!(
            at,
            tensor.len(),
            "{name}: {key} has {} values, the gates {} ",
            tensor.len(),
            at
        );
    }
    let steps = Steps::full(seq_len, batch).unwrap();
    let input = cast::<T>(&fx.features("input"));
    let mut initial = vec![cast::<T>(&fx.features("h0"))];
    if fx.has("c0") {
        initial.push(cast::<T>(&fx.features("c0")));
    }
    let mut run: Trajectory<T> =
        forward(&cell, &steps, &[&input], Some(&initial), Direction::Forward).unwrap();
    let mut worst: Vec<(String, f64)> = Vec::new();
    let mut compare = |what: &str, actual: Vec<f64>, expected: &[f64]| {
        worst.push((what.to_string(), relative_error(&actual, expected)))
    };
    compare("output", back(run.output.as_slice()), fx.values("output"));
    compare(
        "h_n",
        back(run.final_states[0].as_slice()),
        fx.values("h_n"),
    );
    if fx.has("c_n") {
        compare(
            "c_n",
            back(run.final_states[1].as_slice()),
            fx.values("c_n"),
        );
    }
    let d_output = cast::<T>(&fx.features("wout.output"));
    let d_h = cast::<T>(&fx.features("wout.h_n"));
    let d_c = fx
        .has("wout.c_n")
        .then(|| cast::<T>(&fx.features("wout.c_n")));
    let mut d_final = vec![Some(&d_h)];
    if let Some(d_c) = &d_c {
        d_final.push(Some(d_c));
    }
    let grads = run.backward(&cell, Some(&d_output), &d_final).unwrap();
    for (key, gates) in layout {
        compare(
            &format!("grad.{key}"),
            pytorch_layout(&grads.params, gates),
            fx.values(&format!("grad.{key}")),
        );
    }
    compare(
        "grad.input",
        back(grads.inputs[0].as_slice()),
        fx.values("grad.input"),
    );
    compare(
        "grad.h0",
        back(grads.initial_states[0].as_slice()),
        fx.values("grad.h0"),
    );
    if fx.has("grad.c0") {
        compare(
            "grad.c0",
            back(grads.initial_states[1].as_slice()),
            fx.values("grad.c0"),
        );
    }
    for (what, error) in &worst {
        assert!(
            *error <= tolerance,
            "{name} ({}): {what} differs from PyTorch by {error:e} (tolerance {tolerance:e})",
            std::any::type_name::<T>()
        );
    }
}

#[test]
fn rnn_tanh_matches_pytorch() {
    check::<f64, RnnTanhCell<f64>>("rnn_tanh_1layer", RNN, 1e-9);
    check::<f32, RnnTanhCell<f32>>("rnn_tanh_1layer", RNN, 1e-4);
}

#[test]
fn rnn_relu_matches_pytorch() {
    check::<f64, RnnReluCell<f64>>("rnn_relu_1layer", RNN, 1e-9);
    check::<f32, RnnReluCell<f32>>("rnn_relu_1layer", RNN, 1e-4);
}

#[test]
fn lstm_matches_pytorch() {
    check::<f64, LstmCell<f64>>("lstm_1layer", LSTM, 1e-9);
    check::<f32, LstmCell<f32>>("lstm_1layer", LSTM, 1e-4);
}

#[test]
fn gru_matches_pytorch() {
    check::<f64, GruCell<f64>>("gru_1layer", GRU, 1e-9);
    check::<f32, GruCell<f32>>("gru_1layer", GRU, 1e-4);
}

/// The guard on the guard: a perturbed parameter must break parity.
#[test]
fn a_wrong_weight_is_caught() {
    let result = std::panic::catch_unwind(|| {
        const SWAPPED: Layout = &[
            ("weight_ih_l0", &["W_ii", "W_ig", "W_if", "W_io"]),
            ("weight_hh_l0", &["W_hi", "W_hf", "W_hg", "W_ho"]),
            ("bias_ih_l0", &["b_ii", "b_if", "b_ig", "b_io"]),
            ("bias_hh_l0", &["b_hi", "b_hf", "b_hg", "b_ho"]),
        ];
        check::<f64, LstmCell<f64>>("lstm_1layer", SWAPPED, 1e-9);
    });
    assert!(
        result.is_err(),
        "swapping two gates' weights went unnoticed"
    );
}
