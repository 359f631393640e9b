//! The Raft log: openraft's v2 `RaftLogStorage`, kept in memory for reads and written behind to an
//! [`Engine`] by the [`DiskWriter`].
//!
//! Durability is the point of this file:
//!
//! * `append` records the entries in memory (so openraft can replicate them at once), queues one
//!   atomic engine batch, and hands openraft's append callback to the disk writer, which calls it only
//!   after the batch is flushed. Appends queued while a flush runs share the next one.
//! * `save_vote` returns only after the vote is flushed: a replica must never vote twice in a term.
//! * `truncate` and `purge` are single batches on the engine. `purge` records the new purge point in the
//!   same batch that deletes the entries, so the log on disk is always `(purged, last]` with no gap,
//!   even after a crash.
//! * `save_committed` is written without a flush: openraft treats it as a hint that lets a restarted
//!   replica re-apply committed entries before serving; losing it costs only re-learning the commit index.
//!
//! Memory: the newest entries stay decoded in memory, up to [`LogStore::open`]'s byte budget. Older ones
//! are dropped from memory once they are both committed (never truncated again) and durable (readable
//! from the engine), and are read back from the engine when a lagging follower needs them.
//!
//! Records are stored as a format-version byte followed by bincode: see [`STORAGE_FORMAT_VERSION`].

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, StorageIOError};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::command::{decode, encode};
use super::disk_writer::DiskWriter;
use super::storage::{Engine, StoreError};
use super::types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// Version of everything this replica writes to its data dir. A replica refuses a data dir written
/// with another version instead of misreading it. Snapshots are bincode, which writes struct fields in order and
/// without names, so any field added to the state changes the format (a golden test in `state.rs` pins it).
/// Version 2 added the job runtime fields (exceptions, restarts, deployment, savepoint requests) to the snapshot;
/// version 3 added the savepoint disposals. No release ever wrote version 1 or 2, so there is no migration.
pub const STORAGE_FORMAT_VERSION: u8 = 3;

/// Default memory budget for log entries kept decoded in memory.
pub const DEFAULT_LOG_CACHE_BYTES: usize = 8 * 1024 * 1024;

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

fn read_meta<T: DeserializeOwned>(engine: &dyn Engine, key: &[u8], what: &str) -> Result<Option<T>, StoreError> {
    engine.get(key)?.map(|bytes| decode_record(what, &bytes)).transpose()
}

fn read_err(subject: ErrorSubject<u64>, e: StoreError) -> StorageError {
    StorageIOError::new(subject, ErrorVerb::Read, openraft::AnyError::new(&e)).into()
}

fn write_err(subject: ErrorSubject<u64>, e: StoreError) -> StorageError {
    StorageIOError::new(subject, ErrorVerb::Write, openraft::AnyError::new(&e)).into()
}

/// The log as this replica knows it, in memory.
#[derive(Default)]
struct Tail {
    /// The newest entries, with their encoded size.
    entries: BTreeMap<u64, (Entry, usize)>,
    /// Sum of the encoded sizes in `entries`.
    bytes: usize,
    /// Entries up to this index were dropped from memory (they are durable on the engine).
    evicted_through: Option<u64>,
    /// Id of the last entry in the log (or the purge point when the log is empty).
    last: Option<LogId>,
    /// The last purged log id.
    purged: Option<LogId>,
    /// The last saved vote.
    vote: Option<Vote>,
    /// The last saved commit point.
    committed: Option<LogId>,
}

struct Shared {
    engine: Arc<dyn Engine>,
    writer: DiskWriter,
    tail: Mutex<Tail>,
    /// Every entry below this index is known to be flushed to the engine.
    durable_below: Arc<AtomicU64>,
    /// Bumped by every truncation, so that a flush callback of entries appended before it does not
    /// vouch for the entries appended after it at the same indexes.
    truncations: Arc<AtomicU64>,
    /// The commit index, shared for status reports.
    committed: Arc<AtomicU64>,
    /// Memory budget of `tail.entries`.
    budget: usize,
}

/// The Raft log of one replica. Cheap to clone: clones share everything.
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

impl LogStore {
    /// Opens the log on `engine`, loading the newest entries (up to `budget` bytes) into memory; writes
    /// go through `writer`.
    pub fn open(engine: Arc<dyn Engine>, writer: DiskWriter, budget: usize) -> Result<Self, StoreError> {
        let vote: Option<Vote> = read_meta(&*engine, KEY_VOTE, "vote")?;
        let committed: Option<LogId> = read_meta(&*engine, KEY_COMMITTED, "committed log id")?;
        let purged: Option<LogId> = read_meta(&*engine, KEY_PURGED, "purged log id")?;
        let mut tail = Tail { vote, committed, purged, last: purged, ..Default::default() };
        let (from, to) = log_range(Bound::Unbounded, Bound::Unbounded);
        for (_, bytes) in engine.scan(from, to)? {
            let entry: Entry = decode_record("log entry", &bytes)?;
            tail.last = Some(entry.log_id);
            tail.bytes += bytes.len();
            tail.entries.insert(entry.log_id.index, (entry, bytes.len()));
        }
        let durable_below = tail.last.map_or(0, |l| l.index + 1);
        let shared = Shared {
            engine,
            writer,
            durable_below: Arc::new(AtomicU64::new(durable_below)),
            truncations: Arc::default(),
            committed: Arc::new(AtomicU64::new(committed.map_or(0, |c| c.index))),
            tail: Mutex::new(tail),
            budget,
        };
        let store = Self { shared: Arc::new(shared) };
        store.evict(&mut store.tail());
        Ok(store)
    }

    /// The commit index openraft last reported to this store, shared for status reports.
    pub fn committed_index(&self) -> Arc<AtomicU64> {
        self.shared.committed.clone()
    }

    fn tail(&self) -> MutexGuard<'_, Tail> {
        // The tail is only mutated under the lock by code that cannot panic midway.
        self.shared.tail.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops the oldest entries from memory while over budget, but only those that can be read back from
    /// the engine (durable) and will never be truncated (committed).
    fn evict(&self, tail: &mut Tail) {
        let durable_below = self.shared.durable_below.load(Ordering::Acquire);
        let Some(committed) = tail.committed.map(|c| c.index) else { return };
        while tail.bytes > self.shared.budget {
            match tail.entries.first_key_value() {
                Some((&index, _)) if index <= committed && index < durable_below => {
                    if let Some((_, size)) = tail.entries.remove(&index) {
                        tail.bytes -= size;
                        tail.evicted_through = Some(index);
                    }
                }
                _ => break,
            }
        }
    }

    fn log_id_at(&self, tail: &Tail, index: u64) -> Result<Option<LogId>, StoreError> {
        if let Some((entry, _)) = tail.entries.get(&index) {
            return Ok(Some(entry.log_id));
        }
        if tail.purged.is_some_and(|p| p.index == index) {
            return Ok(tail.purged);
        }
        match self.shared.engine.get(&log_key(index))? {
            Some(bytes) => Ok(Some(decode_record::<Entry>("log entry", &bytes)?.log_id)),
            None => Ok(None),
        }
    }

    fn read(&self, from: Bound<u64>, to: Bound<u64>) -> Result<Vec<Entry>, StoreError> {
        let (cached, evicted_through) = {
            let tail = self.tail();
            let cached: Vec<Entry> = tail.entries.range((from, to)).map(|(_, (e, _))| e.clone()).collect();
            (cached, tail.evicted_through)
        };
        let start = match from {
            Bound::Included(i) => i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let Some(evicted_through) = evicted_through.filter(|e| start <= *e) else {
            return Ok(cached);
        };
        // The front of the range was dropped from memory; it is durable, so read it from the engine.
        let end = match to {
            Bound::Included(t) if t <= evicted_through => Bound::Included(t),
            Bound::Excluded(t) if t <= evicted_through => Bound::Excluded(t),
            _ => Bound::Included(evicted_through),
        };
        let (f, t) = log_range(Bound::Included(start), end);
        let mut entries: Vec<Entry> = self
            .shared
            .engine
            .scan(f, t)?
            .iter()
            .map(|(_, v)| decode_record("log entry", v))
            .collect::<Result<_, _>>()?;
        entries.extend(cached);
        Ok(entries)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.read(range.start_bound().cloned(), range.end_bound().cloned()).map_err(|e| read_err(ErrorSubject::Logs, e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let tail = self.tail();
        Ok(LogState { last_purged_log_id: tail.purged, last_log_id: tail.last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let write = |e| write_err(ErrorSubject::Vote, e);
        self.tail().vote = Some(*vote);
        self.shared.writer.write(vec![(KEY_VOTE.to_vec(), Some(encode_record(vote)))]).map_err(write)?;
        self.shared.writer.flush().await.map_err(write)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.tail().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.shared.committed.store(committed.map_or(0, |c| c.index), Ordering::Relaxed);
        {
            let mut tail = self.tail();
            tail.committed = committed;
            self.evict(&mut tail);
        }
        let value = committed.map(|c| encode_record(&c));
        self.shared.writer.write(vec![(KEY_COMMITTED.to_vec(), value)]).map_err(|e| write_err(ErrorSubject::Store, e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.tail().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = Vec::new();
        let mut last_index = 0;
        {
            let mut tail = self.tail();
            for entry in entries {
                let bytes = encode_record(&entry);
                last_index = entry.log_id.index;
                tail.last = Some(entry.log_id);
                tail.bytes += bytes.len();
                batch.push((log_key(last_index), Some(bytes.clone())));
                if let Some((_, old)) = tail.entries.insert(last_index, (entry, bytes.len())) {
                    tail.bytes -= old;
                }
            }
            self.evict(&mut tail);
        }
        let w = |e| write_err(ErrorSubject::Logs, e);
        self.shared.writer.write(batch).map_err(w)?;
        let durable_below = self.shared.durable_below.clone();
        let truncations = self.shared.truncations.clone();
        let generation = truncations.load(Ordering::Acquire);
        self.shared
            .writer
            .on_durable(Box::new(move |result| {
                if result.is_ok() && truncations.load(Ordering::Acquire) == generation {
                    durable_below.fetch_max(last_index + 1, Ordering::AcqRel);
                }
                callback.log_io_completed(result.map_err(std::io::Error::other));
            }))
            .map_err(w)
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(since = %log_id, "truncating the log");
        let w = |e| write_err(ErrorSubject::Logs, e);
        {
            let mut tail = self.tail();
            self.shared.truncations.fetch_add(1, Ordering::AcqRel);
            self.shared.durable_below.fetch_min(log_id.index, Ordering::AcqRel);
            let removed = tail.entries.split_off(&log_id.index);
            tail.bytes -= removed.values().map(|(_, size)| size).sum::<usize>();
            tail.last = match log_id.index.checked_sub(1) {
                Some(prev) => self.log_id_at(&tail, prev).map_err(w)?.or(tail.purged),
                None => None,
            };
        }
        let (from, to) = log_range(Bound::Included(log_id.index), Bound::Unbounded);
        self.shared.writer.remove_range(from, to, Vec::new()).map_err(w)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(upto = %log_id, "purging the log");
        {
            let mut tail = self.tail();
            let kept = tail.entries.split_off(&(log_id.index + 1));
            let removed = std::mem::replace(&mut tail.entries, kept);
            tail.bytes -= removed.values().map(|(_, size)| size).sum::<usize>();
            tail.purged = Some(log_id);
            if tail.last.is_none_or(|l| l.index < log_id.index) {
                tail.last = Some(log_id);
            }
        }
        // The purge point goes in the same batch as the deletion: a crash leaves both or neither.
        let (from, to) = log_range(Bound::Unbounded, Bound::Included(log_id.index));
        let purged = vec![(KEY_PURGED.to_vec(), Some(encode_record(&log_id)))];
        self.shared.writer.remove_range(from, to, purged).map_err(|e| write_err(ErrorSubject::Logs, e))
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftLogStorageExt;
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::raft::command::Command;
    use crate::raft::storage::MemoryEngine;

    fn entry(index: u64) -> Entry {
        let log_id = LogId::new(CommittedLeaderId::new(1, 1), index);
        let command = Command::CancelJob { job_id: format!("{index:032x}"), at_ms: index };
        Entry { log_id, payload: EntryPayload::Normal(command) }
    }

    fn indexes(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|e| e.log_id.index).collect()
    }

    #[tokio::test]
    async fn entries_beyond_the_memory_budget_are_read_back_from_the_engine() {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::default());
        let writer = DiskWriter::start(engine.clone()).unwrap();
        let mut log = LogStore::open(engine.clone(), writer.clone(), 1000).unwrap();
        log.blocking_append((1..=100).map(entry)).await.unwrap();
        // Nothing is committed yet: nothing may leave memory, whatever the budget.
        assert_eq!(log.tail().entries.len(), 100);
        log.save_committed(Some(entry(60).log_id)).await.unwrap();
        let in_memory = log.tail().entries.len();
        assert!(in_memory < 100 && log.tail().entries.first_key_value().unwrap().0 > &1, "{in_memory} cached");
        // Reads span both: the evicted front from the engine, the rest from memory, in order.
        assert_eq!(indexes(&log.try_get_log_entries(1..101).await.unwrap()), (1..=100).collect::<Vec<_>>());
        assert_eq!(indexes(&log.try_get_log_entries(30..35).await.unwrap()), vec![30, 31, 32, 33, 34]);

        // Truncating uncommitted entries and purging old ones keep memory and disk in step.
        log.truncate(entry(91).log_id).await.unwrap();
        log.purge(entry(10).log_id).await.unwrap();
        writer.flush().await.unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(entry(10).log_id), Some(entry(90).log_id)));

        // Reopened from the engine, the log is the same.
        let mut reopened = LogStore::open(engine, writer, 1000).unwrap();
        let again = reopened.get_log_state().await.unwrap();
        assert_eq!((again.last_purged_log_id, again.last_log_id), (state.last_purged_log_id, state.last_log_id));
        assert_eq!(indexes(&reopened.try_get_log_entries(0..200).await.unwrap()), (11..=90).collect::<Vec<_>>());
        assert_eq!(reopened.read_committed().await.unwrap(), Some(entry(60).log_id));
    }
}
