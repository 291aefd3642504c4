//! How many threads a forward or backward pass may use.
//!
//! Parallelism comes from splitting a batch into parts that unroll on rayon's worker
//! threads (see `sequence`): each part runs single-threaded kernels, so the threads
//! never outnumber the cores. A batch too small to split runs on the calling thread,
//! which shares its large products with a helper on a second core (see `helper`). (matrixmultiply's own threading is off: inside two
//! parts it would run four threads on two cores, measured slower than either alone.)

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use rayon::prelude::*;

/// The count `set_threads` chose; 0 means every core.
static THREADS: AtomicUsize = AtomicUsize::new(0);

/// Sets how many threads forward and backward passes use (by default, every core).
/// With one, nothing runs beside the calling thread: no parts of a batch on other
/// threads, and no helper thread for a small batch's products.
pub fn set_threads(threads: usize) -> crate::Result<()> {
    crate::ensure!(
        threads > 0,
        "the thread count must be positive, not {threads}"
    );
    THREADS.store(threads, Ordering::Relaxed);
    Ok(())
}

thread_local! {
    /// This thread's share of the threads, when work running beside it took the rest.
    static SHARE: Cell<usize> = const { Cell::new(0) };
}

/// The threads a pass may use.
pub(crate) fn threads() -> usize {
    let share = SHARE.with(Cell::get);
    if share > 0 {
        return share;
    }
    match THREADS.load(Ordering::Relaxed) {
        0 => cores(),
        n => n,
    }
}

/// The cores this process may use, asked once: `available_parallelism` reads the
/// cgroup's CPU quota from /sys on every call: when each pass asked, the tiny LSTM's
/// forward pass took 0.103 ms, against 0.043 ms asking once.
pub(crate) fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// `work` applied to each item, the items on rayon's threads when more than one
/// thread is allowed (the two directions of a bidirectional layer), each sharing out
/// the allowed threads so that together they use no more.
pub(crate) fn each_in_parallel<I: Send, R: Send>(
    items: Vec<I>,
    work: impl Fn(I) -> R + Sync,
) -> Vec<R> {
    let allowed = threads();
    if items.len() < 2 || allowed < 2 {
        return items.into_iter().map(work).collect();
    }
    let share = (allowed / items.len()).max(1);
    // The parts want every worker: a helper spinning on one would leave them one.
    crate::helper::retire();
    // rayon's workers stay alive between passes: waking one took about 60 µs here,
    // spawning a thread 170 µs, and a pass of the small LSTM starts two such parts.
    items
        .into_par_iter()
        .with_max_len(1)
        .map(|item| {
            let _share = ShareGuard::set(share);
            work(item)
        })
        .collect()
}

/// This thread's share while the guard lives; the share it had before, after (also
/// when the work panics, so that a worker thread never keeps a stale share).
struct ShareGuard(usize);

impl ShareGuard {
    fn set(share: usize) -> ShareGuard {
        ShareGuard(SHARE.with(|s| s.replace(share)))
    }
}

impl Drop for ShareGuard {
    fn drop(&mut self) {
        SHARE.with(|s| s.set(self.0));
    }
}
