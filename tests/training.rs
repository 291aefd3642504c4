//! The training toolkit: loss gradients against finite differences; models composed
//! with `#[derive(Parameters)]`; checkpoints that round-trip bit for bit, and training
//! resumed from one that continues exactly as if uninterrupted.

use std::collections::BTreeMap;
use std::path::PathBuf;

use proptest::prelude::{prop_assert, proptest, ProptestConfig, TestCaseError};
use rnn_runtime::checkpoint::{checkpoint_metadata, load_checkpoint, save_checkpoint};
use rnn_runtime::modules::{Embedding, EmbeddingGrads, Linear, LinearGrads};
use rnn_runtime::nalgebra::DMatrix;
use rnn_runtime::nn::{Gru, GruConfig};
use rnn_runtime::prelude::*;
use rnn_runtime::recurrent::Mode;
use rnn_runtime::ParamSet;

fn matrix(rows: usize, cols: usize, rng: &mut Rng, scale: f64) -> DMatrix<f64> {
    DMatrix::from_fn(rows, cols, |_, _| rng.range(-scale, scale))
}

/// Law: the gradient of every loss (any options, any reduction, weighted through
/// `weighted_grad` for `none`) equals central finite differences of its value.
fn check_loss(
    f: &dyn Fn(&DMatrix<f64>) -> rnn_runtime::loss::Loss<f64>,
    input: &DMatrix<f64>,
    upstream: &DMatrix<f64>,
) -> Result<(), TestCaseError> {
    let loss = f(input);
    let scalar = |l: &rnn_runtime::loss::Loss<f64>| {
        if l.values.shape() == (1, 1) {
            l.value
        } else {
            l.values.dot(upstream)
        }
    };
    let grad = if loss.values.shape() == (1, 1) {
        loss.grad.clone()
    } else {
        loss.weighted_grad(upstream).unwrap()
    };
    let eps = 1e-6;
    let mut x = input.clone();
    for i in 0..x.len() {
        x[i] += eps;
        let plus = scalar(&f(&x));
        x[i] -= 2.0 * eps;
        let minus = scalar(&f(&x));
        x[i] += eps;
        let numeric = (plus - minus) / (2.0 * eps);
        prop_assert!(
            (grad[i] - numeric).abs() <= 1e-6 * (1.0 + numeric.abs()),
            "element {i}: {} vs {numeric}",
            grad[i]
        );
    }
    Ok(())
}

fn reduction(r: u8) -> Reduction {
    [Reduction::Mean, Reduction::Sum, Reduction::None][r as usize % 3]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn class_losses(classes in 2usize..6, n in 1usize..6, r in 0u8..3, smoothing in 0.0f64..0.5, weighted: bool, seed: u64) {
        let mut rng = Rng::seed(seed);
        let input = matrix(classes, n, &mut rng, 3.0);
        let mut targets: Vec<i64> = (0..n).map(|_| rng.below(classes) as i64).collect();
        targets[0] = 0; // never all ignored: the mean would be 0 / 0
        if n > 1 { targets[n - 1] = 1; }
        let options = ClassLoss {
            weight: weighted.then(|| (0..classes).map(|_| rng.range(0.2, 2.0)).collect()),
            ignore_index: 1,
            label_smoothing: smoothing,
            reduction: reduction(r),
        };
        let upstream = matrix(1, n, &mut rng, 1.0);
        check_loss(&|x| cross_entropy(x, &targets, &options).unwrap(), &input, &upstream)?;
        let nll_options = ClassLoss { label_smoothing: 0.0, ..options.clone() };
        check_loss(&|x| nll_loss(x, &targets, &nll_options).unwrap(), &input, &upstream)?;
    }

    #[test]
    fn elementwise_losses(rows in 1usize..5, cols in 1usize..5, r in 0u8..3, seed: u64) {
        let mut rng = Rng::seed(seed);
        let input = matrix(rows, cols, &mut rng, 4.0);
        let target = DMatrix::from_fn(rows, cols, |_, _| rng.uniform());
        let upstream = matrix(rows, cols, &mut rng, 1.0);
        check_loss(&|x| mse_loss(x, &target, reduction(r)).unwrap(), &input, &upstream)?;
        check_loss(&|x| bce_with_logits(x, &target, reduction(r)).unwrap(), &input, &upstream)?;
    }
}

/// A character model: embedding, a GRU, a linear decoder.
#[derive(Parameters, Clone, PartialEq, Debug)]
struct CharModel {
    embed: Embedding<f64>,
    rnn: Gru<f64>,
    head: Linear<f64>,
    #[parameters(skip)]
    vocabulary: usize,
}

/// Its gradients, named as its parameters.
#[derive(Parameters)]
struct CharModelGrads {
    embed: EmbeddingGrads<f64>,
    rnn: ParamSet<f64>,
    head: LinearGrads<f64>,
}

impl CharModel {
    fn new(rng: &mut Rng) -> CharModel {
        let config = GruConfig {
            num_layers: 2,
            dropout: 0.2,
            ..GruConfig::new(4, 6)
        };
        CharModel {
            embed: Embedding::new(7, 4, None, rng).unwrap(),
            rnn: config.init(rng).unwrap(),
            head: Linear::new(6, 7, true, rng),
            vocabulary: 7,
        }
    }

    /// One training step on time-major ids (batch `batch`): the loss.
    fn train_step(
        &mut self,
        ids: &[usize],
        targets: &[i64],
        batch: usize,
        optimizer: &mut dyn Optimizer<f64>,
        rng: &mut Rng,
    ) -> f64 {
        let x = self.embed.forward(ids).unwrap();
        let mut out = self.rnn.forward(&x, batch, None, Mode::Train(rng)).unwrap();
        let logits = self.head.forward(&out.output).unwrap();
        let loss = cross_entropy(&logits, targets, &ClassLoss::default()).unwrap();
        let (head, d_hidden) = self.head.backward(&out.output, &loss.grad).unwrap();
        let rnn = self
            .rnn
            .backward(&mut out, Some(&d_hidden), None, None)
            .unwrap();
        let embed = self.embed.backward(ids, &rnn.input).unwrap();
        let mut grads = CharModelGrads {
            embed,
            rnn: rnn.params,
            head,
        };
        rnn_runtime::clip_grad_norm(&mut grads, 1.0, rnn_runtime::NormType::L2).unwrap();
        optimizer.step(self, &grads).unwrap();
        loss.value
    }
}

fn data(step: usize) -> (Vec<usize>, Vec<i64>) {
    let ids: Vec<usize> = (0..12).map(|i| (i * 3 + step) % 7).collect();
    let targets = ids.iter().map(|&i| ((i + 1) % 7) as i64).collect();
    (ids, targets)
}

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("rnn-training-{}-{name}", std::process::id()))
}

#[test]
fn derived_parameters_are_named_by_field() {
    let model = CharModel::new(&mut Rng::seed(1));
    let names: Vec<String> = model.parameters().into_iter().map(|p| p.name).collect();
    assert!(names.contains(&"embed.weight".to_string()), "{names:?}");
    assert!(names.contains(&"rnn.l1.W_hn".to_string()), "{names:?}");
    assert!(names.contains(&"head.bias".to_string()), "{names:?}");
    assert!(!names.iter().any(|n| n.contains("vocabulary")));
}

#[test]
fn training_learns_and_the_checkpoint_keeps_its_metadata() {
    let mut rng = Rng::seed(2);
    let mut model = CharModel::new(&mut rng);
    let mut adam = Adam::new(0.01);
    let (ids, targets) = data(0);
    let first = model.train_step(&ids, &targets, 3, &mut adam, &mut rng);
    let mut last = first;
    for _ in 0..60 {
        last = model.train_step(&ids, &targets, 3, &mut adam, &mut rng);
    }
    assert!(
        last < first * 0.5,
        "the loss fell from {first} only to {last}"
    );

    let path = temp("metadata.safetensors");
    let meta = BTreeMap::from([
        ("step".to_string(), "61".to_string()),
        ("config".to_string(), "gru 2x6".to_string()),
    ]);
    save_checkpoint(&path, &model, &adam, &meta).unwrap();
    assert_eq!(checkpoint_metadata(&path).unwrap(), meta);
    let mut restored = CharModel::new(&mut Rng::seed(99));
    let mut restored_adam = Adam::new(0.01);
    assert_eq!(
        load_checkpoint(&path, &mut restored, &mut restored_adam).unwrap(),
        meta
    );
    std::fs::remove_file(&path).unwrap();
}

fn optimizer(kind: u8) -> Box<dyn Optimizer<f64>> {
    match kind % 5 {
        0 => Box::new(Sgd {
            momentum: 0.9,
            nesterov: true,
            weight_decay: 0.01,
            ..Sgd::new(0.05)
        }),
        1 => Box::new(Adam {
            amsgrad: true,
            ..Adam::new(0.01)
        }),
        2 => Box::new(AdamW::new(0.01)),
        3 => Box::new(RmsProp {
            momentum: 0.5,
            centered: true,
            ..RmsProp::new(0.01)
        }),
        _ => Box::new(Adagrad {
            lr_decay: 0.01,
            ..Adagrad::new(0.05)
        }),
    }
}

/// Trains `steps` steps, saving, dropping everything and loading again at `interrupt_at`.
fn train(
    steps: usize,
    interrupt_at: Option<usize>,
    kind: u8,
) -> (CharModel, Vec<(String, rnn_runtime::Tensor<f64>)>) {
    let mut model = CharModel::new(&mut Rng::seed(3));
    let mut opt = optimizer(kind);
    let mut step = 0;
    while step < steps {
        if Some(step) == interrupt_at {
            let path = temp(&format!("resume-{kind}-{step}.safetensors"));
            let meta = BTreeMap::from([("step".to_string(), step.to_string())]);
            save_checkpoint(&path, &model, opt.as_ref(), &meta).unwrap();
            // As a new process would: fresh objects, everything from the checkpoint.
            model = CharModel::new(&mut Rng::seed(1234));
            opt = optimizer(kind);
            let meta = load_checkpoint(&path, &mut model, opt.as_mut()).unwrap();
            step = meta["step"].parse().unwrap();
            std::fs::remove_file(&path).unwrap();
        }
        let (ids, targets) = data(step);
        // Dropout draws from a generator seeded by the step, as a resumable loop does.
        model.train_step(&ids, &targets, 3, opt.as_mut(), &mut Rng::seed(step as u64));
        step += 1;
    }
    (model, opt.state_tensors())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// Law: stopping anywhere, saving a checkpoint and resuming from it gives the same
    /// parameters and optimizer state, bit for bit, as never stopping.
    #[test]
    fn resumed_training_equals_uninterrupted_training(interrupt_at in 1usize..8, kind in 0u8..5) {
        let (straight, straight_state) = train(8, None, kind);
        let (resumed, resumed_state) = train(8, Some(interrupt_at), kind);
        prop_assert!(resumed == straight, "parameters differ after resuming at {interrupt_at}");
        prop_assert!(resumed_state == straight_state, "optimizer state differs after resuming at {interrupt_at}");
    }

    /// Law: a checkpoint restores the model and the optimizer exactly.
    #[test]
    fn a_checkpoint_round_trips_bit_for_bit(steps in 1usize..5, kind in 0u8..5) {
        let (model, state) = train(steps, None, kind);
        let mut opt = optimizer(kind);
        opt.load_state_tensors(&state.iter().cloned().collect()).unwrap();
        let path = temp(&format!("roundtrip-{kind}-{steps}.safetensors"));
        save_checkpoint(&path, &model, opt.as_ref(), &BTreeMap::new()).unwrap();
        let mut restored = CharModel::new(&mut Rng::seed(77));
        let mut restored_opt = optimizer(kind);
        load_checkpoint(&path, &mut restored, restored_opt.as_mut()).unwrap();
        std::fs::remove_file(&path).unwrap();
        prop_assert!(restored == model);
        prop_assert!(restored_opt.state_tensors() == state);
    }
}

#[test]
fn a_bad_checkpoint_is_an_error_and_changes_nothing() {
    let mut rng = Rng::seed(4);
    let mut model = CharModel::new(&mut rng);
    let mut adam = Adam::new(0.01);
    let (ids, targets) = data(0);
    model.train_step(&ids, &targets, 3, &mut adam, &mut rng);
    let path = temp("bad.safetensors");
    save_checkpoint(&path, &model, &adam, &BTreeMap::new()).unwrap();

    let mut other = CharModel::new(&mut Rng::seed(5));
    other.head = Linear::new(6, 5, true, &mut rng);
    let before = other.clone();
    let mut other_adam = Adam::new(0.01);
    let err = load_checkpoint(&path, &mut other, &mut other_adam)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`head.weight` has shape [7, 6] but [5, 6] was expected"),
        "{err}"
    );
    assert_eq!(other, before);
    assert!(other_adam.state.is_empty());

    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_checkpoint(&path, &mut model, &mut adam)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a valid safetensors file"), "{err}");
    std::fs::remove_file(&path).unwrap();
}
