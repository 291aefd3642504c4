//! Every `rnn` and `pack` fixture of PyTorch's (stacked, bidirectional, packed,
//! batch_first, proj_size, no bias; forward values and every gradient) matches, in f64
//! to 1e-9 and in f32 to 1e-4, relative to the largest magnitude compared; every
//! `loss`, `optim` and `clip` fixture matches in f64 to 1e-9.

use std::path::{Path, PathBuf};

use rnn_suite::parity::{check, Fixture};

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pytorch");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

fn layer_and_pack_fixtures() -> Vec<Fixture> {
    fixtures()
        .iter()
        .map(|p| Fixture::load(p).unwrap())
        .filter(|f| matches!(f.meta.get("kind").map(String::as_str), Some("rnn" | "pack")))
        .collect()
}

#[test]
fn all_layer_and_pack_fixtures_match_in_f64_and_f32() {
    let fixtures = layer_and_pack_fixtures();
    assert_eq!(fixtures.len(), 32, "the 32 public rnn and pack fixtures");
    let mut failures = Vec::new();
    for fixture in &fixtures {
        match check::<f64>(fixture) {
            Ok((error, _)) if error <= 1e-9 => {}
            Ok((error, what)) => {
                failures.push(format!("{} f64: {what} off by {error:e}", fixture.name))
            }
            Err(e) => failures.push(format!("{} f64: {e}", fixture.name)),
        }
        match check::<f32>(fixture) {
            Ok((error, _)) if error <= 1e-4 => {}
            Ok((error, what)) => {
                failures.push(format!("{} f32: {what} off by {error:e}", fixture.name))
            }
            Err(e) => failures.push(format!("{} f32: {e}", fixture.name)),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn all_loss_optimizer_and_clipping_fixtures_match_in_f64() {
    let fixtures: Vec<Fixture> = fixtures()
        .iter()
        .map(|p| Fixture::load(p).unwrap())
        .filter(|f| {
            matches!(
                f.meta.get("kind").map(String::as_str),
                Some("loss" | "optim" | "clip")
            )
        })
        .collect();
    assert_eq!(
        fixtures.len(),
        21,
        "the 21 public loss, optim and clip fixtures"
    );
    let failures: Vec<String> = fixtures
        .iter()
        .filter_map(|fixture| match check::<f64>(fixture) {
            Ok((error, _)) if error <= 1e-9 => None,
            Ok((error, what)) => Some(format!("{}: {what} off by {error:e}", fixture.name)),
            Err(e) => Some(format!("{}: {e}", fixture.name)),
        })
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn a_changed_weight_breaks_parity() {
    let mut fixture = Fixture::load(
        &fixtures()
            .into_iter()
            .find(|p| p.ends_with("lstm_packed_2layer_bidir.safetensors"))
            .unwrap(),
    )
    .unwrap();
    fixture
        .tensors
        .get_mut("param.weight_hh_l1_reverse")
        .unwrap()
        .data[5] += 1e-3;
    let (error, what) = check::<f64>(&fixture).unwrap();
    assert!(
        error > 1e-6,
        "a changed weight went unnoticed ({what}: {error:e})"
    );
}

#[test]
fn swapped_gates_break_parity() {
    // Gates i and f swapped in PyTorch's stacked weight: our gate order must be i, f, g, o.
    let mut fixture = Fixture::load(
        &fixtures()
            .into_iter()
            .find(|p| p.ends_with("lstm_1layer.safetensors"))
            .unwrap(),
    )
    .unwrap();
    let w = fixture.tensors.get_mut("param.weight_ih_l0").unwrap();
    let (rows, cols) = (w.shape[0] / 4, w.shape[1]);
    let (i, f) = w.data.split_at_mut(rows * cols);
    i.swap_with_slice(&mut f[..rows * cols]);
    assert!(check::<f64>(&fixture).unwrap().0 > 1e-3);
}
