//! Layers over any cell: stacked, bidirectional, packed with unsorted lengths, dropout;
//! gradients against finite differences; bad input as errors naming the sizes.

use std::collections::BTreeMap;

use rnn_runtime::nalgebra::DMatrix;
use rnn_runtime::nn::{GruConfig, LstmConfig};
use rnn_runtime::prelude::*;
use rnn_runtime::recurrent::{Mode, Recurrent, RecurrentConfig};
use rnn_runtime::{pack_padded_sequence, save_safetensors, ParamSet, Tensor};

/// LSTM with peephole connections: a cell no built-in offers.
#[recurrent]
fn peephole(x: Input, h: State, c: State) {
    let i = sigmoid(W_i * x + U_i * h + p_i * c + b_i);
    let f = sigmoid(W_f * x + U_f * h + p_f * c + b_f);
    c = f * c + i * tanh(W_c * x + U_c * h + b_c);
    let o = sigmoid(W_o * x + U_o * h + p_o * c + b_o);
    h = o * tanh(c);
}

fn random(rows: usize, cols: usize, rng: &mut Rng) -> DMatrix<f64> {
    DMatrix::from_fn(rows, cols, |_, _| rng.range(-1.0, 1.0))
}

/// Law: the gradients of a stacked, bidirectional, packed run of a custom cell, with
/// dropout between layers (a fixed seed draws the same mask each time), equal central
/// finite differences for every parameter, input and initial state.
#[test]
fn stacked_bidirectional_packed_layers_of_a_custom_cell_have_exact_gradients() {
    let mut rng = Rng::seed(11);
    let config = RecurrentConfig {
        num_layers: 2,
        bidirectional: true,
        dropout: 0.3,
        batch_first: false,
    };
    let mut net: Recurrent<Peephole<f64>> = Recurrent::new(
        &[3, 4],
        config,
        &Init::Uniform {
            low: -0.5,
            high: 0.5,
        },
        &mut rng,
    )
    .unwrap();
    let lengths = [2, 4, 3];
    let padded = random(3, 4 * 3, &mut rng);
    let packed = pack_padded_sequence(&padded, &lengths, false, false).unwrap();
    let states: Vec<DMatrix<f64>> = (0..2).map(|_| random(4, 2 * 2 * 3, &mut rng)).collect();
    let w_out = random(8, packed.data.ncols(), &mut rng);
    let w_final: Vec<DMatrix<f64>> = (0..2).map(|_| random(4, 12, &mut rng)).collect();

    let loss = |net: &Recurrent<Peephole<f64>>, data: &DMatrix<f64>, states: &[DMatrix<f64>]| {
        let run = net
            .forward_packed(
                &packed.with_data(data.clone()),
                Some(states),
                Mode::Train(&mut Rng::seed(5)),
            )
            .unwrap();
        run.output.dot(&w_out)
            + run
                .final_states
                .iter()
                .zip(&w_final)
                .map(|(s, w)| s.dot(w))
                .sum::<f64>()
    };
    let mut run = net
        .forward_packed(&packed, Some(&states), Mode::Train(&mut Rng::seed(5)))
        .unwrap();
    let grads = run
        .backward(&net, Some(&w_out), &[Some(&w_final[0]), Some(&w_final[1])])
        .unwrap();

    let eps = 1e-6;
    let mut worst = 0.0f64;
    let mut record = |analytic: f64, plus: f64, minus: f64| {
        let numeric = (plus - minus) / (2.0 * eps);
        worst = worst.max((analytic - numeric).abs() / 1f64.max(analytic.abs()));
    };
    let analytic: Vec<(String, Vec<f64>)> = grads
        .parameters()
        .iter()
        .map(|p| (p.name.clone(), p.values.to_vec()))
        .collect();
    for (name, values) in &analytic {
        for (i, a) in values.iter().enumerate() {
            let nudge = |net: &mut Recurrent<Peephole<f64>>, by: f64| {
                let mut params = net.parameters_mut();
                params.iter_mut().find(|p| p.name == *name).unwrap().values[i] += by;
            };
            nudge(&mut net, eps);
            let plus = loss(&net, &packed.data, &states);
            nudge(&mut net, -2.0 * eps);
            let minus = loss(&net, &packed.data, &states);
            nudge(&mut net, eps);
            record(*a, plus, minus);
        }
    }
    let mut data = packed.data.clone();
    for i in 0..data.len() {
        data[i] += eps;
        let plus = loss(&net, &data, &states);
        data[i] -= 2.0 * eps;
        let minus = loss(&net, &data, &states);
        data[i] += eps;
        record(grads.input[i], plus, minus);
    }
    let mut states = states;
    for k in 0..2 {
        for i in 0..states[k].len() {
            states[k][i] += eps;
            let plus = loss(&net, &packed.data, &states);
            states[k][i] -= 2.0 * eps;
            let minus = loss(&net, &packed.data, &states);
            states[k][i] += eps;
            record(grads.initial_states[k][i], plus, minus);
        }
    }
    assert!(worst < 1e-6, "worst relative error {worst:e}");
    assert_eq!(
        analytic.len(),
        2 * 2 * 15,
        "every parameter of every layer and direction"
    );
}

/// `RecurrentRun::backward_into` adds each cell's gradients into the ones it is given:
/// into zeros, `backward`'s to the bit, with the input's and initial states'; a second
/// pass, the sum of the two; gradients of a model of another shape are an error.
#[test]
fn layer_gradients_are_added_into_kept_ones() {
    let mut rng = Rng::seed(21);
    let config = RecurrentConfig {
        num_layers: 2,
        bidirectional: true,
        dropout: 0.0,
        batch_first: false,
    };
    let init = Init::Uniform {
        low: -0.5,
        high: 0.5,
    };
    let net: Recurrent<Peephole<f64>> =
        Recurrent::new(&[3, 4], config.clone(), &init, &mut rng).unwrap();
    let lengths = [5, 2, 4];
    let padded = random(3, 5 * 3, &mut rng);
    let packed = pack_padded_sequence(&padded, &lengths, false, false).unwrap();
    let d_outs = [
        random(8, packed.data.ncols(), &mut rng),
        random(8, packed.data.ncols(), &mut rng),
    ];
    let fresh: Vec<_> = d_outs
        .iter()
        .map(|d| {
            let mut run = net.forward_packed(&packed, None, Mode::Eval).unwrap();
            run.backward(&net, Some(d), &[]).unwrap()
        })
        .collect();
    let mut kept = net.zero_grads();
    let mut run = net.forward_packed(&packed, None, Mode::Eval).unwrap();
    let rest = run
        .backward_into(&net, Some(&d_outs[0]), &[], InputGrads::Compute, &mut kept)
        .unwrap();
    assert!(rest.layers.is_empty());
    assert_eq!(rest.input, fresh[0].input);
    assert_eq!(rest.initial_states, fresh[0].initial_states);
    let values = |layers: &[Vec<PeepholeGrads<f64>>]| -> Vec<f64> {
        let cells = layers.iter().flatten();
        cells
            .flat_map(|g| g.parameters().into_iter().flat_map(|p| p.values.to_vec()))
            .collect()
    };
    let bits = |v: Vec<f64>| -> Vec<u64> { v.into_iter().map(f64::to_bits).collect() };
    assert!(bits(values(&kept)) == bits(values(&fresh[0].layers)));
    // Named as the layers' parameters, kept gradients drive an optimizer as
    // `backward`'s do.
    let names = |p: &dyn Parameters<f64>| -> Vec<String> {
        p.parameters().into_iter().map(|p| p.name).collect()
    };
    assert_eq!(names(&kept), names(&net));
    let (mut from_kept, mut from_fresh) = (net.clone(), net.clone());
    Sgd::new(0.1).step(&mut from_kept, &kept).unwrap();
    Sgd::new(0.1).step(&mut from_fresh, &fresh[0]).unwrap();
    assert!(from_kept == from_fresh && from_kept != net);
    let mut run = net.forward_packed(&packed, None, Mode::Eval).unwrap();
    run.backward_into(&net, Some(&d_outs[1]), &[], InputGrads::Skip, &mut kept)
        .unwrap();
    let (a, b) = (values(&fresh[0].layers), values(&fresh[1].layers));
    for ((t, a), b) in values(&kept).iter().zip(&a).zip(&b) {
        assert!((t - (a + b)).abs() <= 1e-12, "{t} is not {a} + {b}");
    }
    let one_layer = RecurrentConfig {
        num_layers: 1,
        ..config
    };
    let other: Recurrent<Peephole<f64>> =
        Recurrent::new(&[3, 4], one_layer, &init, &mut rng).unwrap();
    let mut run = net.forward_packed(&packed, None, Mode::Eval).unwrap();
    let message =
        match run.backward_into(&net, None, &[], InputGrads::Skip, &mut other.zero_grads()) {
            Ok(_) => panic!("another model's gradients were taken"),
            Err(e) => e.to_string(),
        };
    assert!(
        message.contains("1 layers") && message.contains("2 × 2"),
        "{message}"
    );
}

/// The `nn` modules keep gradients too: into zeros, `backward_with`'s parameter
/// gradients to the bit, with the same input and initial-state gradients; a second
/// pass adds its own; the kept set is named as the module's parameters, so an
/// optimizer takes it; another cell's gradients are an error that names both.
#[test]
fn module_gradients_are_added_into_kept_ones() {
    let mut rng = Rng::seed(23);
    let config = LstmConfig {
        num_layers: 2,
        bidirectional: true,
        ..LstmConfig::new(3, 4)
    };
    let lstm = config.init::<f64>(&mut rng).unwrap();
    let x = random(3, 5 * 2, &mut rng);
    let (h0, c0) = (
        random(4, 2 * 2 * 2, &mut rng),
        random(4, 2 * 2 * 2, &mut rng),
    );
    let d_outs = [random(8, 10, &mut rng), random(8, 10, &mut rng)];
    let d_h = random(4, 8, &mut rng);
    let pass = || {
        lstm.forward(&x, 2, Some((&h0, Some(&c0))), Mode::Eval)
            .unwrap()
    };
    let fresh: Vec<_> = d_outs
        .iter()
        .map(|d| {
            let mut out = pass();
            lstm.backward_with(&mut out, Some(d), Some(&d_h), None, InputGrads::Compute)
                .unwrap()
        })
        .collect();
    let mut kept = lstm.zero_grads();
    let rest = lstm
        .backward_into(
            &mut pass(),
            (Some(&d_outs[0]), Some(&d_h), None),
            InputGrads::Compute,
            &mut kept,
        )
        .unwrap();
    assert_eq!(ParamSet::from_parameters(&kept), fresh[0].params);
    assert_eq!(rest.input, fresh[0].input);
    assert_eq!((&rest.h_0, &rest.c_0), (&fresh[0].h_0, &fresh[0].c_0));
    assert!(rest.params.entries.is_empty() && rest.torch.is_empty());
    let (mut from_kept, mut from_fresh) = (lstm.clone(), lstm.clone());
    Sgd::new(0.1).step(&mut from_kept, &kept).unwrap();
    Sgd::new(0.1)
        .step(&mut from_fresh, &fresh[0].params)
        .unwrap();
    assert!(from_kept == from_fresh && from_kept != lstm);
    lstm.backward_into(
        &mut pass(),
        (Some(&d_outs[1]), Some(&d_h), None),
        InputGrads::Skip,
        &mut kept,
    )
    .unwrap();
    let sums = fresh[0].params.entries.iter().zip(&fresh[1].params.entries);
    for (kept, ((_, _, a), (_, _, b))) in kept.parameters().iter().zip(sums) {
        for ((t, a), b) in kept.values.iter().zip(a).zip(b) {
            assert!(
                (t - (a + b)).abs() <= 1e-12,
                "{}: {t} is not {a} + {b}",
                kept.name
            );
        }
    }
    let gru = GruConfig::new(3, 4).init::<f64>(&mut rng).unwrap();
    let message = match lstm.backward_into(
        &mut pass(),
        (Some(&d_outs[0]), None, None),
        InputGrads::Skip,
        &mut gru.zero_grads(),
    ) {
        Ok(_) => panic!("a GRU's gradients were taken"),
        Err(e) => e.to_string(),
    };
    assert!(
        message.contains("`Gru`") && message.contains("`Lstm`"),
        "{message}"
    );
}

/// Skipping the input's gradient in a stacked bidirectional layer still passes every
/// upper layer's input gradient down: the parameters' and initial states' gradients
/// are those of the full pass, to the bit, and the input's gradient has no rows.
#[test]
fn a_layer_over_data_skips_only_the_input_gradient() {
    let mut rng = Rng::seed(4);
    let config = LstmConfig {
        num_layers: 2,
        bidirectional: true,
        batch_first: true,
        ..LstmConfig::new(3, 5)
    };
    let lstm = config.init::<f64>(&mut rng).unwrap();
    let (len, batch) = (6, 3);
    let x = random(3, len * batch, &mut rng);
    let d_out = random(10, len * batch, &mut rng);
    let d_h = random(5, 2 * 2 * batch, &mut rng);
    let mut out = lstm.forward(&x, batch, None, Mode::Eval).unwrap();
    let all = lstm
        .backward(&mut out, Some(&d_out), Some(&d_h), None)
        .unwrap();
    let mut out = lstm.forward(&x, batch, None, Mode::Eval).unwrap();
    let skipped = lstm
        .backward_with(&mut out, Some(&d_out), Some(&d_h), None, InputGrads::Skip)
        .unwrap();
    assert_eq!(all.input.shape(), (3, len * batch));
    assert_eq!(skipped.input.shape(), (0, len * batch));
    assert!(all.input.iter().any(|v| *v != 0.0));
    let bits = |g: &rnn_runtime::nn::ModuleGrads<f64>| -> Vec<u64> {
        let params = g.params.parameters();
        let values = params.iter().flat_map(|p| p.values.iter());
        let states = g.h_0.iter().chain(g.c_0.iter().flatten());
        values.chain(states).map(|v| v.to_bits()).collect()
    };
    assert!(bits(&all) == bits(&skipped));
}

/// `Mode::Infer` keeps nothing for backward and computes what `Mode::Eval` computes, bit
/// for bit in f32: stacked, bidirectional, over a packed batch of unsorted lengths
/// (sequences long enough to run in several chunks), with initial states, for the
/// LSTM module and for layers of a custom cell. Dropout does not apply.
#[test]
fn inference_computes_what_evaluation_computes_and_keeps_nothing_for_backward() {
    let mut rng = Rng::seed(8);
    let lstm = LstmConfig {
        num_layers: 2,
        bidirectional: true,
        dropout: 0.5,
        ..LstmConfig::new(24, 96)
    }
    .init::<f32>(&mut rng)
    .unwrap();
    let lengths = [60, 7, 45, 60, 1];
    let batch = lengths.len();
    let padded = DMatrix::from_fn(24, 60 * batch, |_, _| rng.range(-1.0, 1.0) as f32);
    let packed = pack_padded_sequence(&padded, &lengths, false, false).unwrap();
    let h0 = DMatrix::from_fn(96, 2 * 2 * batch, |_, _| rng.range(-1.0, 1.0) as f32);
    let c0 = DMatrix::from_fn(96, 2 * 2 * batch, |_, _| rng.range(-1.0, 1.0) as f32);
    let eval = lstm
        .forward_packed(&packed, Some((&h0, Some(&c0))), Mode::Eval)
        .unwrap();
    let mut inferred = lstm
        .forward_packed(&packed, Some((&h0, Some(&c0))), Mode::Infer)
        .unwrap();
    let bits = |m: &DMatrix<f32>| m.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
    assert!(bits(&eval.output) == bits(&inferred.output));
    assert!(bits(&eval.h_n) == bits(&inferred.h_n));
    assert!(bits(eval.c_n.as_ref().unwrap()) == bits(inferred.c_n.as_ref().unwrap()));
    let d_out = DMatrix::from_element(eval.output.nrows(), eval.output.ncols(), 1.0f32);
    let message = match lstm.backward(&mut inferred, Some(&d_out), None, None) {
        Ok(_) => panic!("backward of an inference run gave gradients"),
        Err(e) => e.to_string(),
    };
    assert!(message.contains("Mode::Infer"), "{message}");

    let config = RecurrentConfig {
        num_layers: 2,
        bidirectional: true,
        dropout: 0.0,
        batch_first: true,
    };
    let init = Init::pytorch_default(40);
    let net: Recurrent<Peephole<f32>> = Recurrent::new(&[24, 40], config, &init, &mut rng).unwrap();
    let x = DMatrix::from_fn(24, 50 * 3, |_, _| rng.range(-1.0, 1.0) as f32);
    let eval = net.forward(&x, 3, None, Mode::Eval).unwrap();
    let inferred = net.forward(&x, 3, None, Mode::Infer).unwrap();
    assert!(bits(&eval.output) == bits(&inferred.output));
    for (a, b) in eval.final_states.iter().zip(&inferred.final_states) {
        assert!(bits(a) == bits(b));
    }
}

#[test]
fn dropout_applies_in_training_only() {
    let mut rng = Rng::seed(1);
    let config = GruConfig {
        num_layers: 3,
        dropout: 0.5,
        ..GruConfig::new(2, 16)
    };
    let gru = config.init::<f64>(&mut rng).unwrap();
    let x = random(2, 5 * 2, &mut rng);
    let eval = gru.forward(&x, 2, None, Mode::Eval).unwrap().output;
    assert_eq!(
        eval,
        gru.forward(&x, 2, None, Mode::Eval).unwrap().output,
        "no randomness in eval"
    );
    let a = gru
        .forward(&x, 2, None, Mode::Train(&mut Rng::seed(1)))
        .unwrap()
        .output;
    let b = gru
        .forward(&x, 2, None, Mode::Train(&mut Rng::seed(2)))
        .unwrap()
        .output;
    assert_ne!(a, eval);
    assert_ne!(a, b);
    let single = GruConfig {
        dropout: 0.5,
        ..GruConfig::new(2, 16)
    }
    .init::<f64>(&mut Rng::seed(1))
    .unwrap();
    let once = single
        .forward(&x, 2, None, Mode::Train(&mut Rng::seed(3)))
        .unwrap()
        .output;
    assert_eq!(
        once,
        single.forward(&x, 2, None, Mode::Eval).unwrap().output,
        "no dropout after the last layer"
    );
}

#[test]
fn bad_input_is_an_error_naming_the_sizes() {
    let mut rng = Rng::seed(2);
    let config = LstmConfig {
        num_layers: 2,
        bidirectional: true,
        ..LstmConfig::new(3, 4)
    };
    let mut lstm = config.init::<f64>(&mut rng).unwrap();
    let message =
        |r: Result<rnn_runtime::nn::RnnOutput<f64>, Error>| r.map(|_| ()).unwrap_err().to_string();

    let m = message(lstm.forward(&DMatrix::zeros(5, 6), 2, None, Mode::Eval));
    assert!(m.contains("size 3") && m.contains("5 features"), "{m}");
    let m = message(lstm.forward(&DMatrix::zeros(3, 7), 2, None, Mode::Eval));
    assert!(m.contains("multiple of 2") && m.contains("7"), "{m}");
    let m = message(lstm.forward(&DMatrix::zeros(3, 6), 0, None, Mode::Eval));
    assert!(m.contains("empty batch"), "{m}");
    let (h0, c0) = (DMatrix::zeros(4, 8), DMatrix::zeros(4, 6));
    let m = message(lstm.forward(&DMatrix::zeros(3, 6), 2, Some((&h0, Some(&c0))), Mode::Eval));
    assert!(
        m.contains("`c`") && m.contains("(4, 8)") && m.contains("(4, 6)"),
        "{m}"
    );
    let m = message(lstm.forward(&DMatrix::zeros(3, 6), 2, Some((&h0, None)), Mode::Eval));
    assert!(m.contains("`c_0`"), "{m}");

    let padded = DMatrix::<f64>::zeros(3, 8);
    assert!(pack_padded_sequence(&padded, &[4, 0], false, false)
        .unwrap_err()
        .to_string()
        .contains("length 0"));
    assert!(pack_padded_sequence(&padded, &[5, 2], false, false)
        .unwrap_err()
        .to_string()
        .contains("length 5 but the padded batch has 4 steps"));
    assert!(pack_padded_sequence(&padded, &[2, 4], false, true)
        .unwrap_err()
        .to_string()
        .contains("enforce_sorted"));

    // Weights files: missing, misshaped and extra tensors are named with their shapes.
    let dir = std::env::temp_dir().join(format!("rnn-layers-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("weights.safetensors");
    let mut tensors: BTreeMap<String, Tensor<f64>> = lstm.torch_tensors().into_iter().collect();
    tensors.remove("bias_hh_l1");
    tensors.insert(
        "weight_ih_l0".into(),
        Tensor::new(vec![16, 2], vec![0.0; 32]).unwrap(),
    );
    tensors.insert(
        "weight_xx_l9".into(),
        Tensor::new(vec![1], vec![0.0]).unwrap(),
    );
    let before = lstm.clone();
    save_safetensors(
        &path,
        &tensors.into_iter().collect::<Vec<_>>(),
        &BTreeMap::new(),
    )
    .unwrap();
    let m = lstm.load_weights(&path).unwrap_err().to_string();
    assert!(
        m.contains("missing tensor `bias_hh_l1` of shape [16]"),
        "{m}"
    );
    assert!(
        m.contains("`weight_ih_l0` has shape [16, 2] but [16, 3] was expected"),
        "{m}"
    );
    assert!(m.contains("unexpected tensor `weight_xx_l9`"), "{m}");
    assert_eq!(lstm, before, "a failed load changes nothing");
    std::fs::write(&path, b"not a safetensors file").unwrap();
    assert!(lstm
        .load_weights(&path)
        .unwrap_err()
        .to_string()
        .contains("not a valid safetensors file"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The output belongs to the caller, who may move it out of the run (the layers move
/// each direction's out of its own run): backward reads only the shape it had, gives
/// the same gradients, and still names a gradient of the wrong shape.
#[test]
fn backward_does_not_need_the_output_left_in_the_run() {
    let mut rng = Rng::seed(4);
    let net: Recurrent<Peephole<f64>> = Recurrent::new(
        &[3, 4],
        RecurrentConfig {
            num_layers: 2,
            bidirectional: true,
            dropout: 0.0,
            batch_first: true,
        },
        &Init::pytorch_default(4),
        &mut rng,
    )
    .unwrap();
    let x = random(3, 2 * 5, &mut rng);
    let mut kept = net.forward(&x, 2, None, Mode::Eval).unwrap();
    let mut moved = net.forward(&x, 2, None, Mode::Eval).unwrap();
    let output = std::mem::replace(&mut moved.output, DMatrix::zeros(0, 0));
    assert_eq!(output, kept.output);
    let d_output = random(8, 2 * 5, &mut rng);

    let wrong = random(8, 2 * 5 + 1, &mut rng);
    let m = moved
        .backward(&net, Some(&wrong), &[])
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(m.contains("(8, 10)") && m.contains("(8, 11)"), "{m}");
    let from_kept = kept.backward(&net, Some(&d_output), &[]).unwrap();
    let from_moved = moved.backward(&net, Some(&d_output), &[]).unwrap();
    assert_eq!(from_moved.input, from_kept.input);
    assert_eq!(from_moved.initial_states, from_kept.initial_states);
    assert_eq!(
        ParamSet::from_parameters(&from_moved),
        ParamSet::from_parameters(&from_kept)
    );
}

#[test]
fn weights_round_trip_through_a_file_in_f32() {
    let mut rng = Rng::seed(4);
    let config = LstmConfig {
        num_layers: 2,
        proj_size: 2,
        bidirectional: true,
        ..LstmConfig::new(3, 4)
    };
    let lstm = config.init::<f32>(&mut rng).unwrap();
    let mut other = config.init::<f32>(&mut rng).unwrap();
    assert_ne!(lstm, other);
    let path =
        std::env::temp_dir().join(format!("rnn-roundtrip-{}.safetensors", std::process::id()));
    lstm.save_weights(&path).unwrap();
    other.load_weights(&path).unwrap();
    assert_eq!(lstm, other);
    let names: Vec<String> = lstm.torch_tensors().into_iter().map(|(n, _)| n).collect();
    assert!(
        names.contains(&"weight_hr_l1_reverse".to_string()),
        "{names:?}"
    );
    std::fs::remove_file(&path).unwrap();
}
