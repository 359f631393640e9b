//! The disk writer: one thread that applies every engine write of a replica, in order, and
//! group-commits its flushes.
//!
//! A writer started on a thread that runs blocking work inline ([`crate::blocking`]: the deterministic simulation)
//! gets no thread: its writes and flushes run on the caller's task as they are submitted, and a durability callback
//! fires before `on_durable` returns. The invariants below hold in both modes; inline, the group of a flush is the
//! one callback. A thread's scheduling would otherwise decide how much virtual time passes before a write is
//! durable, and the simulation could not replay a seed.
//!
//! Raft must not wait on the disk in its event loop: a blocking engine call on a tokio worker stalls
//! heartbeats, replication and client requests alike, and sled can block for milliseconds while its
//! own I/O threads rotate buffers. So the log store and the state machine hand their writes to this
//! thread and go on; a caller that needs durability registers a callback ([`DiskWriter::on_durable`])
//! or awaits [`DiskWriter::flush`].
//!
//! Invariants:
//! * writes reach the engine in the order they were submitted (a truncate after an append removes
//!   what the append wrote, never the reverse);
//! * a durability callback fires only after every write submitted before it has been flushed; all
//!   callbacks queued while the previous flush ran share the next flush (group commit);
//! * after the first engine error every later callback reports an error too: a replica whose disk
//!   failed stops (openraft treats a storage error as fatal) rather than acknowledge what it lost.
//!
//! Failpoints (test builds, [`crate::failpoint`]): `disk-before-fsync` fires just before a group's flush, after
//! its writes reached the engine; `disk-after-fsync` just after the flush, before any of the group's callbacks.

use std::ops::Bound;
use std::sync::{mpsc, Arc, Mutex};

use super::storage::{Change, Engine, StoreError};

/// A callback run once earlier writes are durable, with the outcome.
pub type DurableCallback = Box<dyn FnOnce(Result<(), String>) + Send>;

enum Op {
    /// Apply one atomic batch.
    Write(Vec<Change>),
    /// Remove every key in the range and apply `also`, atomically.
    RemoveRange { from: Bound<Vec<u8>>, to: Bound<Vec<u8>>, also: Vec<Change> },
    /// Run the callback after the next flush.
    Durable(DurableCallback),
}

/// The handle of a replica's disk writer. Cheap to clone; a writer thread ends with the last handle.
#[derive(Clone)]
pub struct DiskWriter {
    mode: Mode,
}

#[derive(Clone)]
enum Mode {
    /// Writes go to the writer thread.
    Thread(mpsc::Sender<Op>),
    /// Started on a thread that runs blocking work inline ([`crate::blocking`]): every call runs on the caller's
    /// task, at once. A durability callback flushes and fires before `on_durable` returns.
    Inline(Arc<Inline>),
}

struct Inline {
    engine: Arc<dyn Engine>,
    /// The first engine error; later writes are dropped and callbacks report it, as on the thread.
    failed: Mutex<Option<String>>,
}

fn stopped() -> StoreError {
    StoreError::Io("the disk writer thread has stopped".into())
}

impl DiskWriter {
    /// Starts the writer for `engine`: a thread, unless this thread runs blocking work inline.
    pub fn start(engine: Arc<dyn Engine>) -> Result<Self, StoreError> {
        if crate::blocking::inline() {
            let inline = Inline { engine, failed: Mutex::new(None) };
            return Ok(Self { mode: Mode::Inline(Arc::new(inline)) });
        }
        let (tx, rx) = mpsc::channel::<Op>();
        std::thread::Builder::new()
            .name("jm-disk-writer".into())
            .spawn(move || run(&*engine, rx))
            .map_err(|e| StoreError::Io(format!("cannot start the disk writer thread: {e}")))?;
        Ok(Self { mode: Mode::Thread(tx) })
    }

    /// Queues an atomic batch.
    pub fn write(&self, batch: Vec<Change>) -> Result<(), StoreError> {
        self.submit(Op::Write(batch))
    }

    /// Queues the removal of every key in `[from, to]` together with `also`, as one atomic batch.
    pub fn remove_range(&self, from: Bound<Vec<u8>>, to: Bound<Vec<u8>>, also: Vec<Change>) -> Result<(), StoreError> {
        self.submit(Op::RemoveRange { from, to, also })
    }

    /// Runs `callback` once everything queued before it is durable.
    pub fn on_durable(&self, callback: DurableCallback) -> Result<(), StoreError> {
        self.submit(Op::Durable(callback))
    }

    /// Returns once everything queued before the call is durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.on_durable(Box::new(move |r| {
            let _ = tx.send(r);
        }))?;
        rx.await.map_err(|_| stopped())?.map_err(StoreError::Io)
    }

    fn submit(&self, op: Op) -> Result<(), StoreError> {
        match &self.mode {
            Mode::Thread(tx) => tx.send(op).map_err(|_| stopped()),
            Mode::Inline(inline) => {
                let mut failed = inline.failed.lock().unwrap_or_else(|p| p.into_inner());
                match op {
                    Op::Durable(callback) => {
                        let outcome = flush(&*inline.engine, &mut failed);
                        // Not under the lock: a callback may write again.
                        drop(failed);
                        callback(outcome);
                    }
                    op => apply(&*inline.engine, op, &mut failed),
                }
                Ok(())
            }
        }
    }
}

fn run(engine: &dyn Engine, rx: mpsc::Receiver<Op>) {
    let mut failed: Option<String> = None;
    while let Ok(first) = rx.recv() {
        let mut callbacks = Vec::new();
        for op in std::iter::once(first).chain(rx.try_iter()) {
            match op {
                Op::Durable(cb) => callbacks.push(cb),
                op => apply(engine, op, &mut failed),
            }
        }
        if callbacks.is_empty() {
            continue;
        }
        let outcome = flush(engine, &mut failed);
        for cb in callbacks {
            cb(outcome.clone());
        }
    }
}

/// Applies one write unless an earlier one failed; records the first failure.
fn apply(engine: &dyn Engine, op: Op, failed: &mut Option<String>) {
    if failed.is_some() {
        return;
    }
    let result = match op {
        Op::Write(batch) => engine.write(batch),
        Op::RemoveRange { from, to, also } => remove_range(engine, from, to, also),
        Op::Durable(_) => return,
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "disk write failed; this replica can no longer persist anything");
        *failed = Some(e.to_string());
    }
}

/// Flushes what was applied: the outcome for the callbacks waiting on it.
fn flush(engine: &dyn Engine, failed: &mut Option<String>) -> Result<(), String> {
    if failed.is_none() {
        crate::failpoint::hit(crate::failpoint::DISK_BEFORE_FLUSH);
        if let Err(e) = engine.flush() {
            tracing::error!(error = %e, "disk flush failed; this replica can no longer persist anything");
            *failed = Some(e.to_string());
        }
    }
    crate::failpoint::hit(crate::failpoint::DISK_AFTER_FLUSH);
    match failed {
        None => Ok(()),
        Some(e) => Err(e.clone()),
    }
}

fn remove_range(
    engine: &dyn Engine,
    from: Bound<Vec<u8>>,
    to: Bound<Vec<u8>>,
    also: Vec<Change>,
) -> Result<(), StoreError> {
    let mut batch: Vec<Change> = engine.scan_keys(from, to)?.into_iter().map(|k| (k, None)).collect();
    batch.extend(also);
    engine.write(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::storage::MemoryEngine;

    async fn writes_apply_in_order_and_flush_waits_for_them() {
        let engine = Arc::new(MemoryEngine::default());
        let writer = DiskWriter::start(engine.clone()).unwrap();
        writer.write(vec![(b"a".to_vec(), Some(b"1".to_vec())), (b"b".to_vec(), Some(b"2".to_vec()))]).unwrap();
        writer
            .remove_range(Bound::Included(b"a".to_vec()), Bound::Unbounded, vec![(b"c".to_vec(), Some(vec![3]))])
            .unwrap();
        writer.write(vec![(b"d".to_vec(), Some(b"4".to_vec()))]).unwrap();
        writer.flush().await.unwrap();
        let all = engine.scan(Bound::Unbounded, Bound::Unbounded).unwrap();
        assert_eq!(all, vec![(b"c".to_vec(), vec![3]), (b"d".to_vec(), b"4".to_vec())]);
    }

    #[tokio::test]
    async fn on_a_thread_writes_apply_in_order_and_flush_waits_for_them() {
        assert!(matches!(DiskWriter::start(Arc::new(MemoryEngine::default())).unwrap().mode, Mode::Thread(_)));
        writes_apply_in_order_and_flush_waits_for_them().await;
    }

    #[tokio::test]
    async fn inline_writes_apply_in_order_and_flush_waits_for_them() {
        crate::blocking::run_inline_on_this_thread();
        assert!(matches!(DiskWriter::start(Arc::new(MemoryEngine::default())).unwrap().mode, Mode::Inline(_)));
        writes_apply_in_order_and_flush_waits_for_them().await;
    }

    /// Inline, a callback has fired when `on_durable` returns, and it may write through the same writer (openraft's
    /// callbacks wake tasks that write next; a lock held across the callback would deadlock them).
    #[test]
    fn an_inline_callback_fires_at_once_and_may_write_again() {
        crate::blocking::run_inline_on_this_thread();
        let engine = Arc::new(MemoryEngine::default());
        let writer = DiskWriter::start(engine.clone()).unwrap();
        let fired = Arc::new(Mutex::new(None));
        let (again, seen) = (writer.clone(), fired.clone());
        writer
            .on_durable(Box::new(move |outcome| {
                again.write(vec![(b"k".to_vec(), Some(b"v".to_vec()))]).unwrap();
                *seen.lock().unwrap() = Some(outcome);
            }))
            .unwrap();
        assert_eq!(*fired.lock().unwrap(), Some(Ok(())));
        assert_eq!(engine.get(b"k").unwrap(), Some(b"v".to_vec()));
    }
}
