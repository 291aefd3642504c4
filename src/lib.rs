//! Support shared by the workspace's examples and integration tests.

pub mod parity;
