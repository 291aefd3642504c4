//! glibc's allocator in a training loop. Each pass hands the caller fresh matrices (the
//! layers' outputs, the gradients), megabytes each, and frees the last pass's. glibc
//! gives freed memory at the top of its heap back to the system once more than a
//! threshold has gathered there, and serves allocations above another threshold from
//! fresh mappings; either way the next pass's matrices are faulted in page by page. In
//! the Shakespeare example's training step (two GRU layers of 128, 32 × 200
//! characters) that was 5000 page faults a step and 13-17% of its time.
//!
//! [`keep_freed_memory`] raises both thresholds, as an application may (the same as
//! setting `MALLOC_MMAP_THRESHOLD_` and `MALLOC_TRIM_THRESHOLD_`). The library never
//! calls it itself: the settings are the whole process's.

/// Allocations up to this size come from the heap: the most that glibc's own dynamic
/// threshold rises to on 64-bit systems.
const MMAP_THRESHOLD: i32 = 32 << 20;
/// Free memory kept at the top of the heap before glibc gives it back.
const TRIM_THRESHOLD: i32 = 256 << 20;

/// Asks glibc's allocator to keep freed memory for the next allocations: blocks of up
/// to 32 MiB come from the heap, and up to 256 MiB of freed memory stays there instead
/// of going back to the system. A training loop's passes then reuse the last pass's
/// memory instead of faulting in new pages: the Shakespeare example's training step
/// took 59 ms with it against 70-73 without (session 24, `benches/README.md`).
///
/// Returns whether the allocator took both settings: false where the C library is not
/// glibc, where this does nothing.
///
/// ```
/// // At the start of a training program, before the first pass.
/// let kept = rnn_runtime::keep_freed_memory();
/// assert_eq!(kept, cfg!(all(target_os = "linux", target_env = "gnu")));
/// ```
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // glibc's `mallopt` parameters (malloc.h).
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // SAFETY: `mallopt` only sets the allocator's tunables (under its own lock),
        // and returns 1 when it took the value, 0 when it did not.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
