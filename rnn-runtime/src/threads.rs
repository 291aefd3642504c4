//! How many threads a forward or backward pass may use.
//!
//! Parallelism comes from splitting a batch into parts that unroll on threads of
//! their own (see `sequence`): each part runs single-threaded kernels, so the threads
//! never outnumber the cores. (matrixmultiply's own threading is off: inside two
//! parts it would run four threads on two cores, measured slower than either alone.)

use std::sync::atomic::{AtomicUsize, Ordering};

/// The count `set_threads` chose; 0 means every core.
static THREADS: AtomicUsize = AtomicUsize::new(0);

/// Sets how many threads forward and backward passes use (by default, every core).
pub fn set_threads(threads: usize) -> crate::Result<()> {
    crate::ensure!(
        threads > 0,
        "the thread count must be positive, not {threads}"
    );
    THREADS.store(threads, Ordering::Relaxed);
    Ok(())
}

/// The threads a pass may use.
pub(crate) fn threads() -> usize {
    match THREADS.load(Ordering::Relaxed) {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}
