//! Records the history as the run goes: clients and the nemesis append invocations and completions from many tasks;
//! the order of the recorded events is the order the harness observed them, and times come from one monotonic clock
//! started with the run (or, in the simulation, from its virtual clock: [`Recorder::with_clock`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::Value;

use crate::history::{Op, OpType};

/// The process id the nemesis records its fault windows under (`f` = `nemesis`).
pub const NEMESIS_PROCESS: u64 = u64::MAX;

/// A shared, append-only history.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Inner>,
}

/// Nanoseconds since the run started.
pub type TimeSource = Arc<dyn Fn() -> u64 + Send + Sync>;

struct Inner {
    clock: TimeSource,
    ops: Mutex<Vec<Op>>,
    next_process: AtomicU64,
}

/// An invocation awaiting its completion.
#[derive(Debug, Clone)]
pub struct Pending {
    process: u64,
    f: String,
    key: Option<String>,
    node: Option<u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// An empty history whose clock starts now.
    pub fn new() -> Self {
        let start = Instant::now();
        Self::with_clock(Arc::new(move || start.elapsed().as_nanos() as u64))
    }

    /// An empty history timed by `clock` (the simulation's virtual time, so a replayed seed records the same times).
    pub fn with_clock(clock: TimeSource) -> Self {
        Self { inner: Arc::new(Inner { clock, ops: Mutex::new(Vec::new()), next_process: AtomicU64::new(0) }) }
    }

    /// A fresh logical process id (a client whose last operation was indeterminate gets a new one).
    pub fn new_process(&self) -> u64 {
        self.inner.next_process.fetch_add(1, Ordering::Relaxed)
    }

    /// Nanoseconds since the run started.
    pub fn now_ns(&self) -> u64 {
        (self.inner.clock)()
    }

    fn push(&self, mut op: Op) {
        let mut ops = self.inner.ops.lock().unwrap_or_else(|p| p.into_inner());
        op.index = ops.len();
        op.time_ns = self.now_ns();
        ops.push(op);
    }

    /// Records an invocation.
    pub fn invoke(&self, process: u64, f: &str, key: Option<String>, value: Value, node: Option<u64>) -> Pending {
        self.push(Op {
            index: 0,
            process,
            op_type: OpType::Invoke,
            f: f.to_string(),
            key: key.clone(),
            value,
            time_ns: 0,
            node,
            error: None,
        });
        Pending { process, f: f.to_string(), key, node }
    }

    /// Records the completion of `pending`.
    pub fn complete(&self, pending: Pending, op_type: OpType, value: Value, error: Option<String>) {
        self.push(Op {
            index: 0,
            process: pending.process,
            op_type,
            f: pending.f,
            key: pending.key,
            value,
            time_ns: 0,
            node: pending.node,
            error,
        });
    }

    /// Records a nemesis event (`phase` is "start" or "stop").
    pub fn nemesis(&self, phase: &str, fault: &str) {
        let pending = self.invoke(NEMESIS_PROCESS, "nemesis", Some(fault.to_string()), serde_json::json!(phase), None);
        self.complete(pending, OpType::Info, serde_json::json!(phase), None);
    }

    /// A copy of the history so far.
    pub fn snapshot(&self) -> Vec<Op> {
        self.inner.ops.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_timed_by_the_given_clock() {
        let now = Arc::new(AtomicU64::new(5_000));
        let clock = now.clone();
        let recorder = Recorder::with_clock(Arc::new(move || clock.load(Ordering::Relaxed)));
        let pending = recorder.invoke(1, "read", Some("k".into()), Value::Null, Some(2));
        now.store(9_000, Ordering::Relaxed);
        recorder.complete(pending, OpType::Ok, serde_json::json!(3), None);
        let times: Vec<u64> = recorder.snapshot().iter().map(|op| op.time_ns).collect();
        assert_eq!(times, vec![5_000, 9_000]);
        assert_eq!(recorder.now_ns(), 9_000);
    }
}
