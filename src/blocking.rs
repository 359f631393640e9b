//! Blocking work (file I/O, fsyncs, encoding a large snapshot, a replica's disk writes) kept off the async runtime:
//! on tokio's blocking pool, or on a thread of its own for the disk writer. A thread can also ask for all of it to
//! run inline instead ([`run_inline_on_this_thread`]): the deterministic simulation (`jepsen/tests/sim.rs`) does,
//! because it runs every simulated host on one thread, and a real thread's timing would decide how much virtual
//! time the work takes, and with it the rest of the run.
//!
//! Invariant: inline mode belongs to the thread that set it and is never set by `jm` itself; a real replica or
//! TaskManager inlining its disk work would stall every task of its runtime behind a slow disk.

use std::cell::Cell;
use std::panic::AssertUnwindSafe;

thread_local! {
    static INLINE: Cell<bool> = const { Cell::new(false) };
}

/// From now on, blocking work started from this thread runs inline, on the caller's task. For deterministic
/// simulations only (see the module doc).
pub fn run_inline_on_this_thread() {
    INLINE.with(|inline| inline.set(true));
}

/// Whether blocking work started from this thread runs inline.
pub fn inline() -> bool {
    INLINE.with(Cell::get)
}

/// The blocking work panicked.
#[derive(Debug, thiserror::Error)]
#[error("blocking work panicked: {0}")]
pub struct Panicked(String);

/// Runs `work` on the blocking pool (inline if this thread asked for it) and returns its result.
pub async fn run<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, Panicked> {
    if inline() {
        return std::panic::catch_unwind(AssertUnwindSafe(work)).map_err(|p| Panicked(panic_message(&*p)));
    }
    tokio::task::spawn_blocking(work).await.map_err(|e| Panicked(e.to_string()))
}

/// Starts `work` on the blocking pool and does not wait for it (inline, it is done when this returns).
pub fn detach(work: impl FnOnce() + Send + 'static) {
    if inline() {
        work();
    } else {
        tokio::task::spawn_blocking(work);
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    match (payload.downcast_ref::<&str>(), payload.downcast_ref::<String>()) {
        (Some(s), _) => (*s).to_string(),
        (_, Some(s)) => s.clone(),
        _ => "a panic without a message".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn inline_work_runs_on_this_thread_and_pool_work_does_not() {
        let here = std::thread::current().id();
        assert_ne!(run(move || std::thread::current().id()).await.unwrap(), here);
        run_inline_on_this_thread();
        assert_eq!(run(move || std::thread::current().id()).await.unwrap(), here);
        let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ran.clone();
        detach(move || flag.store(true, std::sync::atomic::Ordering::Relaxed));
        assert!(ran.load(std::sync::atomic::Ordering::Relaxed), "inline detached work is done on return");
    }

    #[tokio::test]
    async fn a_panic_is_an_error_in_both_modes() {
        let pooled = run(|| panic!("pool boom")).await.unwrap_err();
        assert!(pooled.to_string().contains("panicked"), "{pooled}");
        run_inline_on_this_thread();
        let inline = run(|| panic!("inline boom")).await.unwrap_err();
        assert!(inline.to_string().contains("inline boom"), "{inline}");
    }
}
