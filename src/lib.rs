//! Examples, integration tests and benches.
