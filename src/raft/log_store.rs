//! The Raft log on an [`Engine`]: openraft's v2 `RaftLogStorage`.
//!
//! Durability is the point of this file:
//!
//! * `append` writes the batch in one atomic engine write and hands the append callback to the
//!   [`Flusher`], a thread that group-commits: it takes every callback queued so far, flushes the engine
//!   once, and only then reports those entries durable. Several concurrent appends share one fsync.
//! * `save_vote` returns only after the vote is flushed: a replica must never vote twice in a term.
//! * `truncate` and `purge` are single batches. `purge` records the new purge point in the same batch
//!   that deletes the entries, so the log is always `(purged, last]` with no gap, even after a crash.
//! * `save_committed` is written without a flush: openraft treats it as a hint that lets a restarted
//!   replica re-apply committed entries before serving; losing it costs only re-learning the commit index.
//!
//! Entries are stored as a format-version byte followed by bincode: see [`STORAGE_FORMAT_VERSION`].

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, StorageIOError};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::command::{decode, encode};
use super::storage::{Engine, StoreError};
use super::types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// Version of everything this replica writes to its data dir. A replica refuses a data dir written
/// with another version instead of misreading it.
pub const STORAGE_FORMAT_VERSION: u8 = 1;

const KEY_VOTE: &[u8] = b"meta/vote";
const KEY_COMMITTED: &[u8] = b"meta/committed";
const KEY_PURGED: &[u8] = b"meta/purged";
const KEY_FORMAT: &[u8] = b"meta/format";
const LOG_PREFIX: &[u8] = b"log/";

fn log_key(index: u64) -> Vec<u8> {
    let mut key = LOG_PREFIX.to_vec();
    key.extend_from_slice(&index.to_be_bytes());
    key
}

fn log_range(from: Bound<u64>, to: Bound<u64>) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let map = |b: Bound<u64>, open_end: bool| match b {
        Bound::Included(i) => Bound::Included(log_key(i)),
        Bound::Excluded(i) => Bound::Excluded(log_key(i)),
        // The prefix "log0" sorts right after every "log/<8 bytes>" key.
        Bound::Unbounded if open_end => Bound::Excluded(b"log0".to_vec()),
        Bound::Unbounded => Bound::Included(LOG_PREFIX.to_vec()),
    };
    (map(from, false), map(to, true))
}

/// Encodes a stored record: format version byte, then bincode.
pub(crate) fn encode_record<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![STORAGE_FORMAT_VERSION];
    out.extend(encode(value));
    out
}

/// Decodes a stored record written by [`encode_record`].
pub(crate) fn decode_record<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    let corrupted = |reason: String| StoreError::Corrupted { what: what.to_string(), reason };
    match bytes.split_first() {
        Some((&STORAGE_FORMAT_VERSION, body)) => decode(body).map_err(corrupted),
        Some((v, _)) => Err(corrupted(format!("format version {v}, this binary reads {STORAGE_FORMAT_VERSION}"))),
        None => Err(corrupted("empty record".into())),
    }
}

/// Checks (or stamps, on a fresh engine) the data dir's format version.
pub fn check_format(engine: &dyn Engine) -> Result<(), StoreError> {
    match engine.get(KEY_FORMAT)? {
        None => {
            engine.write(vec![(KEY_FORMAT.to_vec(), Some(vec![STORAGE_FORMAT_VERSION]))])?;
            engine.flush()
        }
        Some(v) if v == [STORAGE_FORMAT_VERSION] => Ok(()),
        Some(v) => Err(StoreError::Corrupted {
            what: "data dir format".into(),
            reason: format!("written as version {v:?}, this binary reads version {STORAGE_FORMAT_VERSION}"),
        }),
    }
}

fn read_err(subject: ErrorSubject<u64>, e: StoreError) -> StorageError {
    StorageIOError::new(subject, ErrorVerb::Read, openraft::AnyError::new(&e)).into()
}

fn write_err(subject: ErrorSubject<u64>, e: StoreError) -> StorageError {
    StorageIOError::new(subject, ErrorVerb::Write, openraft::AnyError::new(&e)).into()
}

/// Group commit: one thread that flushes the engine for every request queued since its last flush.
#[derive(Clone)]
pub struct Flusher {
    tx: mpsc::Sender<FlushRequest>,
}

enum FlushRequest {
    /// Report a log append durable through openraft's callback.
    Append(LogFlushed<TypeConfig>),
    /// Wake a waiter.
    Wait(tokio::sync::oneshot::Sender<Result<(), String>>),
}

impl Flusher {
    /// Starts the flushing thread; it ends when the last [`Flusher`] handle is dropped.
    pub fn start(engine: Arc<dyn Engine>) -> Self {
        let (tx, rx) = mpsc::channel::<FlushRequest>();
        std::thread::Builder::new()
            .name("jm-log-flush".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    let result = engine.flush().map_err(|e| e.to_string());
                    for request in batch {
                        match request {
                            FlushRequest::Append(cb) => {
                                cb.log_io_completed(result.clone().map_err(std::io::Error::other));
                            }
                            FlushRequest::Wait(tx) => {
                                let _ = tx.send(result.clone());
                            }
                        }
                    }
                }
            })
            .expect("spawning the log flush thread");
        Self { tx }
    }

    fn after_flush(&self, cb: LogFlushed<TypeConfig>) -> Result<(), StoreError> {
        self.tx.send(FlushRequest::Append(cb)).map_err(|_| StoreError::Io("log flush thread stopped".into()))
    }

    /// Returns once everything written before the call is durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx.send(FlushRequest::Wait(tx)).map_err(|_| StoreError::Io("log flush thread stopped".into()))?;
        rx.await.map_err(|_| StoreError::Io("log flush thread stopped".into()))?.map_err(StoreError::Io)
    }
}

/// The Raft log of one replica. Cheap to clone: clones share the engine and the flusher.
#[derive(Clone)]
pub struct LogStore {
    engine: Arc<dyn Engine>,
    flusher: Flusher,
    committed: Arc<AtomicU64>,
}

impl LogStore {
    /// A log store over `engine`, flushed by `flusher` (shared with the state machine).
    pub fn new(engine: Arc<dyn Engine>, flusher: Flusher) -> Self {
        Self { engine, flusher, committed: Arc::default() }
    }

    /// The commit index openraft last reported to this store, shared for status reports.
    pub fn committed_index(&self) -> Arc<AtomicU64> {
        self.committed.clone()
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &[u8], what: &str) -> Result<Option<T>, StoreError> {
        self.engine.get(key)?.map(|bytes| decode_record(what, &bytes)).transpose()
    }

    fn last_purged(&self) -> Result<Option<LogId>, StoreError> {
        self.read_meta(KEY_PURGED, "purged log id")
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId>, StoreError> {
        let (from, to) = log_range(Bound::Unbounded, Bound::Unbounded);
        match self.engine.last_in(from, to)? {
            None => Ok(None),
            Some((_, bytes)) => Ok(Some(decode_record::<Entry>("log entry", &bytes)?.log_id)),
        }
    }

    fn entries_in(&self, from: Bound<u64>, to: Bound<u64>) -> Result<Vec<Entry>, StoreError> {
        let (from, to) = log_range(from, to);
        self.engine.scan(from, to)?.iter().map(|(_, v)| decode_record("log entry", v)).collect()
    }

    fn remove_entries(
        &self,
        from: Bound<u64>,
        to: Bound<u64>,
        extra: Option<(Vec<u8>, Vec<u8>)>,
    ) -> Result<(), StoreError> {
        let (from, to) = log_range(from, to);
        let mut batch: Vec<_> = self.engine.scan_keys(from, to)?.into_iter().map(|k| (k, None)).collect();
        // The purge point goes in the same batch as the deletion: a crash leaves both or neither.
        if let Some((k, v)) = extra {
            batch.push((k, Some(v)));
        }
        self.engine.write(batch)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.entries_in(range.start_bound().cloned(), range.end_bound().cloned())
            .map_err(|e| read_err(ErrorSubject::Logs, e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.last_purged().map_err(|e| read_err(ErrorSubject::Logs, e))?;
        let last_log_id = self.last_entry_log_id().map_err(|e| read_err(ErrorSubject::Logs, e))?.or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let write = |e| write_err(ErrorSubject::Vote, e);
        self.engine.write(vec![(KEY_VOTE.to_vec(), Some(encode_record(vote)))]).map_err(write)?;
        self.flusher.flush().await.map_err(write)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_meta(KEY_VOTE, "vote").map_err(|e| read_err(ErrorSubject::Vote, e))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.committed.store(committed.map_or(0, |c| c.index), Ordering::Relaxed);
        let value = committed.map(|c| encode_record(&c));
        self.engine.write(vec![(KEY_COMMITTED.to_vec(), value)]).map_err(|e| write_err(ErrorSubject::Store, e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed: Option<LogId> =
            self.read_meta(KEY_COMMITTED, "committed log id").map_err(|e| read_err(ErrorSubject::Store, e))?;
        self.committed.store(committed.map_or(0, |c| c.index), Ordering::Relaxed);
        Ok(committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let batch: Vec<_> = entries.into_iter().map(|e| (log_key(e.log_id.index), Some(encode_record(&e)))).collect();
        self.engine.write(batch).map_err(|e| write_err(ErrorSubject::Logs, e))?;
        self.flusher.after_flush(callback).map_err(|e| write_err(ErrorSubject::Logs, e))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(since = %log_id, "truncating the log");
        self.remove_entries(Bound::Included(log_id.index), Bound::Unbounded, None)
            .map_err(|e| write_err(ErrorSubject::Logs, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(upto = %log_id, "purging the log");
        let purged = (KEY_PURGED.to_vec(), encode_record(&log_id));
        self.remove_entries(Bound::Unbounded, Bound::Included(log_id.index), Some(purged))
            .map_err(|e| write_err(ErrorSubject::Logs, e))
    }
}
