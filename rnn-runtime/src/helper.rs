//! The second core for a pass that runs on one thread: a batch too small to split into
//! parts (the notebooks' batch of one) still has large products, the input projection
//! before the time loop and the weight gradients after it, and `in_two` runs half of
//! such a product on a helper thread.
//!
//! The helper is a job on one of rayon's workers that spins, waiting for work, for up
//! to `LINGER` after its last task, then returns the worker to the pool. Waking a
//! sleeping worker took about 60 µs on the machine this was measured on, as long as a
//! whole pass of the tiny LSTM, so a helper that slept between tasks would arrive too
//! late for every one of them (the same reason OpenMP's threads spin before they sleep).
//!
//! Whoever posts a task never waits for the helper to arrive: a task nobody has taken
//! when the poster's own half is done is taken back and run by the poster. The results
//! do not depend on which thread ran which half, only the time does. A helper that
//! keeps its posters waiting (its core busy with another program) is left alone for a
//! while (`Ledger`).

use std::any::Any;
use std::cell::UnsafeCell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long the helper spins after its last task before it returns its worker. A
/// training step of a small model (forward, backward, the optimizer's update) posts
/// several tasks well within this.
const LINGER: Duration = Duration::from_millis(1);

/// What the helper's tasks saved their posters is reckoned over windows of this many
/// tasks: a window that saved nothing (its helper's core busy with another program)
/// makes posters run both halves themselves for `BACK_OFF`.
const WINDOW: u32 = 16;
const BACK_OFF: Duration = Duration::from_millis(50);

/// The states of the helper's one task slot.
const FREE: u8 = 0;
/// A poster is writing the task, or taking it back.
const HELD: u8 = 1;
/// A task waits for the helper.
const POSTED: u8 = 2;
/// The helper runs the task.
const RUNNING: u8 = 3;
/// The helper finished the task; its poster frees the slot.
const DONE: u8 = 4;

/// A posted task: a closure on its poster's stack, which the poster outlives (it
/// takes the task back, or waits until the helper is done with it, before returning).
struct Task(*mut (dyn FnMut() + Send + 'static));

struct Helper {
    state: AtomicU8,
    /// Written by a poster holding the slot (`HELD`), read by the helper after taking
    /// the task (`POSTED` → `RUNNING`).
    task: UnsafeCell<Option<Task>>,
    /// A panic of the task on the helper's thread, for its poster to resume.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    /// Whether a helper job is live on a worker.
    serving: AtomicBool,
    /// Set when the pool's workers are wanted for parts of a pass: the helper leaves.
    retire: AtomicBool,
    /// What its tasks saved of late.
    ledger: Ledger,
}

/// The time the helper's tasks saved their posters in the current window, and until
/// when posters leave the helper alone.
struct Ledger {
    tasks: AtomicU32,
    saved_ns: AtomicI64,
    /// Whether `until` holds a time: checked without the lock at every post.
    backing_off: AtomicBool,
    until: Mutex<Option<Instant>>,
}

impl Ledger {
    const fn new() -> Ledger {
        Ledger {
            tasks: AtomicU32::new(0),
            saved_ns: AtomicI64::new(0),
            backing_off: AtomicBool::new(false),
            until: Mutex::new(None),
        }
    }

    /// Books a task the helper ran: its poster's own half took `own` (about what the
    /// other half would have taken it), and then it waited `waited` for the helper. A
    /// window that saved nothing starts a back-off from `now`.
    fn book(&self, own: Duration, waited: Duration, now: Instant) {
        let nanos = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        let saved = nanos(own).saturating_sub(nanos(waited));
        let total = self
            .saved_ns
            .fetch_add(saved, Ordering::Relaxed)
            .saturating_add(saved);
        if self.tasks.fetch_add(1, Ordering::Relaxed) + 1 < WINDOW {
            return;
        }
        self.tasks.store(0, Ordering::Relaxed);
        self.saved_ns.store(0, Ordering::Relaxed);
        if total <= 0 {
            *self.until.lock().unwrap_or_else(|e| e.into_inner()) = Some(now + BACK_OFF);
            self.backing_off.store(true, Ordering::Release);
        }
    }

    /// Whether posters leave the helper alone at `now`.
    fn backing_off(&self, now: impl FnOnce() -> Instant) -> bool {
        if !self.backing_off.load(Ordering::Acquire) {
            return false;
        }
        let mut until = self.until.lock().unwrap_or_else(|e| e.into_inner());
        match *until {
            Some(end) if now() < end => true,
            _ => {
                *until = None;
                self.backing_off.store(false, Ordering::Release);
                false
            }
        }
    }
}

// SAFETY: `task` is only accessed by the one thread that the state machine gives it to:
// the poster in `HELD`, the helper in `RUNNING`, each after an acquiring exchange that
// pairs with the releasing store of the thread before it.
unsafe impl Sync for Helper {}

static HELPER: Helper = Helper {
    state: AtomicU8::new(FREE),
    task: UnsafeCell::new(None),
    panic: Mutex::new(None),
    serving: AtomicBool::new(false),
    retire: AtomicBool::new(false),
    ledger: Ledger::new(),
};

/// Runs `mine` on this thread and `theirs` on the helper thread, when helping is
/// `allowed`, the helper has not been backing off (`Ledger`), and it is free (no
/// other thread's task in its slot); otherwise `theirs` after `mine`, here. `theirs` runs exactly once
/// either way; a panic in either is resumed here, after both are done with their data.
pub(crate) fn in_two<A: FnOnce(), B: FnOnce() + Send>(mine: A, theirs: B) {
    if !allowed()
        || HELPER.ledger.backing_off(Instant::now)
        || HELPER
            .state
            .compare_exchange(FREE, HELD, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
    {
        mine();
        theirs();
        return;
    }
    let mut theirs = Some(theirs);
    let mut call = || {
        if let Some(theirs) = theirs.take() {
            theirs();
        }
    };
    let task: *mut (dyn FnMut() + Send + '_) = &mut call;
    // SAFETY: only the lifetime changes; `Posted` does not return (nor unwind past
    // this frame) while the helper may still run the task.
    let task: *mut (dyn FnMut() + Send + 'static) = unsafe { std::mem::transmute(task) };
    // SAFETY: this thread holds the slot.
    unsafe { *HELPER.task.get() = Some(Task(task)) };
    HELPER.state.store(POSTED, Ordering::Release);
    let posted = Posted;
    summon();
    let began = Instant::now();
    mine();
    let done = Instant::now();
    if posted.finish() {
        return call();
    }
    let now = Instant::now();
    HELPER.ledger.book(done - began, now - done, now);
}

/// Whether this thread may post to the helper: more than one thread allowed, and
/// cores for them (on one core, a spinning helper would take its time from the
/// poster), and this thread not one of rayon's workers (whose passes are parts of a
/// batch, with a core each).
pub(crate) fn allowed() -> bool {
    use crate::threads::{cores, threads};
    threads() >= 2 && cores() >= 2 && rayon::current_thread_index().is_none()
}

/// A posted task's claim on its poster's frame: dropped (also when `mine` panics), it
/// takes the task back or waits for the helper to finish it.
struct Posted;

impl Posted {
    /// True when the task was taken back (its poster must run it); false when the
    /// helper ran it. Resumes the task's panic.
    fn finish(self) -> bool {
        let taken_back = settle();
        std::mem::forget(self);
        if !taken_back {
            let payload = HELPER
                .panic
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            HELPER.state.store(FREE, Ordering::Release);
            if let Some(payload) = payload {
                panic::resume_unwind(payload);
            }
        }
        taken_back
    }
}

impl Drop for Posted {
    fn drop(&mut self) {
        if !settle() {
            HELPER
                .panic
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            HELPER.state.store(FREE, Ordering::Release);
        }
    }
}

/// Takes the posted task back (true: the slot is free again), or waits until the
/// helper has finished it (false: the slot stays `DONE` for the caller to free).
fn settle() -> bool {
    if HELPER
        .state
        .compare_exchange(POSTED, HELD, Ordering::Acquire, Ordering::Relaxed)
        .is_ok()
    {
        // SAFETY: this thread holds the slot again.
        unsafe { *HELPER.task.get() = None };
        HELPER.state.store(FREE, Ordering::Release);
        return true;
    }
    while HELPER.state.load(Ordering::Acquire) != DONE {
        std::hint::spin_loop();
    }
    false
}

/// Starts a helper job on rayon's pool unless one is live.
fn summon() {
    if !HELPER.serving.swap(true, Ordering::AcqRel) {
        HELPER.retire.store(false, Ordering::Relaxed);
        rayon::spawn(serve);
    }
}

/// Sends the helper away, so that the pool's workers all run the parts of a pass that
/// `threads::each_in_parallel` hands them.
pub(crate) fn retire() {
    if HELPER.serving.load(Ordering::Relaxed) {
        HELPER.retire.store(true, Ordering::Relaxed);
    }
}

/// The helper job: runs posted tasks until it has had none for `LINGER`, or is retired.
fn serve() {
    let mut last = Instant::now();
    let mut spins = 0u32;
    while !HELPER.retire.load(Ordering::Relaxed) {
        if HELPER.state.load(Ordering::Relaxed) == POSTED
            && HELPER
                .state
                .compare_exchange(POSTED, RUNNING, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            // SAFETY: this thread took the task; its poster waits for `DONE`.
            let task = unsafe { (*HELPER.task.get()).take() }.expect("a posted task");
            // SAFETY: the closure lives on its poster's frame until `DONE`.
            let ran = panic::catch_unwind(AssertUnwindSafe(|| unsafe { (*task.0)() }));
            if let Err(payload) = ran {
                *HELPER.panic.lock().unwrap_or_else(|e| e.into_inner()) = Some(payload);
            }
            HELPER.state.store(DONE, Ordering::Release);
            last = Instant::now();
            continue;
        }
        std::hint::spin_loop();
        spins = spins.wrapping_add(1);
        // The clock every 256 spins: reading it costs more than a spin.
        if spins.is_multiple_of(256) && last.elapsed() > LINGER {
            break;
        }
    }
    HELPER.serving.store(false, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn both_halves_run_once_whoever_runs_them() {
        for _ in 0..2000 {
            let (mine, theirs) = (AtomicUsize::new(0), AtomicUsize::new(0));
            let mut out = [0u64; 2];
            let (left, right) = out.split_at_mut(1);
            in_two(
                || {
                    mine.fetch_add(1, Ordering::Relaxed);
                    left[0] = 3;
                },
                || {
                    theirs.fetch_add(1, Ordering::Relaxed);
                    right[0] = 4;
                },
            );
            assert_eq!((mine.into_inner(), theirs.into_inner()), (1, 1));
            assert_eq!(out, [3, 4]);
        }
    }

    #[test]
    fn a_window_of_tasks_that_saved_nothing_leaves_the_helper_alone_for_a_while() {
        let ledger = Ledger::new();
        let t0 = Instant::now();
        let us = Duration::from_micros;
        // A window that saved time: 15 tasks of 2 µs saved, one that waited 20 µs.
        for _ in 1..WINDOW {
            ledger.book(us(3), us(1), t0);
        }
        ledger.book(us(3), us(20), t0);
        assert!(!ledger.backing_off(|| t0), "the window saved 13 µs");
        // One that lost time: the helper stopped once for 100 µs.
        ledger.book(us(3), us(100), t0);
        for _ in 2..WINDOW {
            ledger.book(us(3), us(1), t0);
        }
        assert!(!ledger.backing_off(|| t0), "the window is not yet complete");
        ledger.book(us(3), us(1), t0);
        assert!(ledger.backing_off(|| t0 + BACK_OFF / 2));
        // Over when its time is up, and the next window starts from nothing.
        assert!(!ledger.backing_off(|| t0 + BACK_OFF));
        assert!(!ledger.backing_off(|| t0));
        ledger.book(us(1), us(50), t0);
        assert!(!ledger.backing_off(|| t0));
    }

    #[test]
    fn a_panic_of_the_helpers_half_reaches_its_poster() {
        // Helpers from many posts, so that some of them run on the helper's thread.
        let mut panics = 0;
        for _ in 0..200 {
            let caught = panic::catch_unwind(|| {
                in_two(
                    || std::thread::sleep(Duration::from_micros(50)),
                    || panic!("the helper's half"),
                )
            });
            let payload = caught.expect_err("the half panicked");
            assert_eq!(payload.downcast_ref::<&str>(), Some(&"the helper's half"));
            panics += 1;
        }
        assert_eq!(panics, 200);
        // The slot is free again: both halves run.
        let ran = AtomicUsize::new(0);
        in_two(
            || {
                ran.fetch_add(1, Ordering::Relaxed);
            },
            || {
                ran.fetch_add(1, Ordering::Relaxed);
            },
        );
        assert_eq!(ran.into_inner(), 2);
    }
}
