//! Support shared by the workspace's examples, integration tests and benches.

pub mod bench_cells;
pub mod parity;
pub mod progress;
