//! Runs every PyTorch reference fixture in a folder and says how close the library
//! comes, in f64.
//!
//! Run: `cargo run --release --example pytorch_parity -- tests/fixtures/pytorch`
//!
//! Prints `PASS <name> <worst relative error>` or `FAIL <name>: <reason>` per file, then
//! `N passed, M failed`; exits 1 when anything failed.

use std::path::PathBuf;

use rnn_suite::parity::{check, Fixture};

/// Results computed in f64 must match PyTorch's to this relative error.
const TOLERANCE: f64 = 1e-9;

fn main() {
    let Some(dir) = std::env::args().nth(1).map(PathBuf::from) else {
        eprintln!("usage: pytorch_parity DIR");
        std::process::exit(2);
    };
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect(),
        Err(e) => {
            eprintln!("cannot read `{}`: {e}", dir.display());
            std::process::exit(2);
        }
    };
    files.sort();
    let (mut passed, mut failed) = (0, 0);
    for path in &files {
        let stem = path
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let result = Fixture::load(path).and_then(|fixture| {
            let name = fixture.name.clone();
            check::<f64>(&fixture).map(|r| (name, r))
        });
        match result {
            Ok((name, (error, _))) if error <= TOLERANCE => {
                passed += 1;
                println!("PASS {name} {error:.3e}");
            }
            Ok((name, (error, what))) => {
                failed += 1;
                println!("FAIL {name}: {what} differs by {error:.3e} (tolerance {TOLERANCE:e})");
            }
            Err(e) => {
                failed += 1;
                println!("FAIL {stem}: {e}");
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
