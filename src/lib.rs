//! Support shared by the workspace's examples, integration tests and benches.

pub mod bench_cells;
pub mod parity;
pub mod progress;

use std::process::ExitCode;

/// An example's exit: success, or `error: …` on stderr (the error's `Display`, not its
/// `Debug` as `main` returning `Result` would print) and a failure code. Examples report
/// a failed self-check the same way.
pub fn exit(result: Result<(), Box<dyn std::error::Error>>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
