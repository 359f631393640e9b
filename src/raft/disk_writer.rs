//! The disk writer: one thread that applies every engine write of a replica, in order, and
//! group-commits its flushes.
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
use std::sync::mpsc;
use std::sync::Arc;

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

/// The handle of a replica's disk writer thread. Cheap to clone; the thread ends with the last handle.
#[derive(Clone)]
pub struct DiskWriter {
    tx: mpsc::Sender<Op>,
}

fn stopped() -> StoreError {
    StoreError::Io("the disk writer thread has stopped".into())
}

impl DiskWriter {
    /// Starts the writer thread for `engine`.
    pub fn start(engine: Arc<dyn Engine>) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::channel::<Op>();
        std::thread::Builder::new()
            .name("jm-disk-writer".into())
            .spawn(move || run(&*engine, rx))
            .map_err(|e| StoreError::Io(format!("cannot start the disk writer thread: {e}")))?;
        Ok(Self { tx })
    }

    /// Queues an atomic batch.
    pub fn write(&self, batch: Vec<Change>) -> Result<(), StoreError> {
        self.tx.send(Op::Write(batch)).map_err(|_| stopped())
    }

    /// Queues the removal of every key in `[from, to]` together with `also`, as one atomic batch.
    pub fn remove_range(&self, from: Bound<Vec<u8>>, to: Bound<Vec<u8>>, also: Vec<Change>) -> Result<(), StoreError> {
        self.tx.send(Op::RemoveRange { from, to, also }).map_err(|_| stopped())
    }

    /// Runs `callback` once everything queued before it is durable.
    pub fn on_durable(&self, callback: DurableCallback) -> Result<(), StoreError> {
        self.tx.send(Op::Durable(callback)).map_err(|_| stopped())
    }

    /// Returns once everything queued before the call is durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.on_durable(Box::new(move |r| {
            let _ = tx.send(r);
        }))?;
        rx.await.map_err(|_| stopped())?.map_err(StoreError::Io)
    }
}

fn run(engine: &dyn Engine, rx: mpsc::Receiver<Op>) {
    let mut failed: Option<String> = None;
    while let Ok(first) = rx.recv() {
        let mut callbacks = Vec::new();
        for op in std::iter::once(first).chain(rx.try_iter()) {
            let result = match op {
                Op::Durable(cb) => {
                    callbacks.push(cb);
                    continue;
                }
                _ if failed.is_some() => continue,
                Op::Write(batch) => engine.write(batch),
                Op::RemoveRange { from, to, also } => remove_range(engine, from, to, also),
            };
            if let Err(e) = result {
                tracing::error!(error = %e, "disk write failed; this replica can no longer persist anything");
                failed = Some(e.to_string());
            }
        }
        if callbacks.is_empty() {
            continue;
        }
        if failed.is_none() {
            crate::failpoint::hit(crate::failpoint::DISK_BEFORE_FLUSH);
            if let Err(e) = engine.flush() {
                tracing::error!(error = %e, "disk flush failed; this replica can no longer persist anything");
                failed = Some(e.to_string());
            }
        }
        crate::failpoint::hit(crate::failpoint::DISK_AFTER_FLUSH);
        let outcome = match &failed {
            None => Ok(()),
            Some(e) => Err(e.clone()),
        };
        for cb in callbacks {
            cb(outcome.clone());
        }
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

    #[tokio::test]
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
}
