//! The thin async adapter that lets openraft drive the pure [`ClusterState`]: openraft's v2
//! `RaftStateMachine` plus the snapshot builder.
//!
//! What it owns: the in-memory state (the cluster state, the last applied log id, the last membership)
//! behind one lock that the client APIs read through a [`StateHandle`], and the newest snapshot on the
//! engine.
//!
//! Invariants:
//! * apply holds the write lock for a whole batch of entries, so a reader sees the state after some
//!   log index, never half of a batch;
//! * a snapshot is built from a copy taken under the lock and encoded outside it, so applies go on
//!   while a snapshot is written;
//! * a snapshot is durable (flushed) before openraft learns about it, and openraft purges the log only
//!   up to a snapshot it knows about, so a restart never finds a hole between snapshot and log;
//! * a restart restores the newest snapshot and openraft re-applies the committed entries after it
//!   before the replica serves anything, so the applied state never rolls back.
//!
//! Caveat: the whole state is copied for each snapshot. That is cheap for thousands of jobs; a much
//! larger state would want a persistent (structurally shared) map.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder, StorageIOError};

use super::disk_writer::DiskWriter;
use super::log_store::{decode_record, encode_record};
use super::state::ClusterState;
use super::storage::{Engine, StoreError};
use super::types::{ApplyResult, Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

const KEY_SNAPSHOT_META: &[u8] = b"snap/meta";
const KEY_SNAPSHOT_DATA: &[u8] = b"snap/data";

/// What the state machine holds in memory.
#[derive(Debug, Clone, Default)]
pub struct SmData {
    /// The last log id applied (including Raft's own blank and membership entries).
    pub last_applied: Option<LogId>,
    /// The last membership applied.
    pub membership: StoredMembership,
    /// The replicated cluster state.
    pub cluster: ClusterState,
}

/// A cloneable read handle on the applied state, for the client APIs.
#[derive(Clone, Default)]
pub struct StateHandle(Arc<RwLock<SmData>>);

impl StateHandle {
    /// Runs `f` on the current applied state. Keep `f` short: applies wait for it.
    pub fn read<R>(&self, f: impl FnOnce(&SmData) -> R) -> R {
        f(&self.lock_read())
    }

    fn lock_read(&self) -> RwLockReadGuard<'_, SmData> {
        // A poisoned lock means a panic elsewhere while holding it. The data is still consistent:
        // writers only change it through `ClusterState::apply`, which never panics.
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_write(&self) -> RwLockWriteGuard<'_, SmData> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// The state machine store handed to openraft.
pub struct StateMachineStore {
    state: StateHandle,
    engine: Arc<dyn Engine>,
    writer: DiskWriter,
    snapshots_built: Arc<AtomicU64>,
}

fn sm_err(verb: ErrorVerb, e: StoreError) -> StorageError {
    StorageIOError::new(ErrorSubject::StateMachine, verb, openraft::AnyError::new(&e)).into()
}

fn snapshot_err(verb: ErrorVerb, e: StoreError) -> StorageError {
    StorageIOError::new(ErrorSubject::Snapshot(None), verb, openraft::AnyError::new(&e)).into()
}

impl StateMachineStore {
    /// Opens the state machine on `engine`, restoring the newest snapshot if there is one.
    pub fn open(engine: Arc<dyn Engine>, writer: DiskWriter) -> Result<Self, StoreError> {
        let store = Self { state: StateHandle::default(), engine, writer, snapshots_built: Arc::default() };
        if let Some((meta, data)) = store.read_snapshot()? {
            let cluster: ClusterState = decode_record("snapshot data", &data)?;
            *store.state.lock_write() =
                SmData { last_applied: meta.last_log_id, membership: meta.last_membership, cluster };
        }
        Ok(store)
    }

    /// A read handle on the applied state.
    pub fn handle(&self) -> StateHandle {
        self.state.clone()
    }

    fn read_snapshot(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StoreError> {
        let Some(meta) = self.engine.get(KEY_SNAPSHOT_META)? else { return Ok(None) };
        let meta: SnapshotMeta = decode_record("snapshot meta", &meta)?;
        let data = self.engine.get(KEY_SNAPSHOT_DATA)?.ok_or_else(|| StoreError::Corrupted {
            what: "snapshot".into(),
            reason: "snapshot metadata present but its data is missing".into(),
        })?;
        Ok(Some((meta, data)))
    }

    async fn persist_snapshot(&self, meta: &SnapshotMeta, data: Vec<u8>) -> Result<(), StoreError> {
        self.writer.write(vec![
            (KEY_SNAPSHOT_META.to_vec(), Some(encode_record(meta))),
            (KEY_SNAPSHOT_DATA.to_vec(), Some(data)),
        ])?;
        self.writer.flush().await
    }

    fn apply_entry(data: &mut SmData, entry: Entry) -> ApplyResult {
        data.last_applied = Some(entry.log_id);
        match entry.payload {
            EntryPayload::Blank => None,
            EntryPayload::Normal(command) => Some(data.cluster.apply(entry.log_id.index, command)),
            EntryPayload::Membership(membership) => {
                data.membership = StoredMembership::new(Some(entry.log_id), membership);
                None
            }
        }
    }
}

/// Builds snapshots from a copy of the state; runs beside applies.
pub struct SnapshotBuilder {
    store: StateMachineStore,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let started = std::time::Instant::now();
        let copy = self.store.state.read(|s| s.clone());
        let cluster = copy.cluster;
        // Encoding a large state takes milliseconds: off the runtime.
        let data = crate::blocking::run(move || encode_record(&cluster))
            .await
            .map_err(|e| sm_err(ErrorVerb::Read, StoreError::Io(format!("snapshot encoder: {e}"))))?;
        let n = self.store.snapshots_built.fetch_add(1, Ordering::Relaxed) + 1;
        let snapshot_id = match copy.last_applied {
            Some(l) => format!("{}-{}-{n}", l.leader_id.term, l.index),
            None => format!("0-0-{n}"),
        };
        let meta = SnapshotMeta { last_log_id: copy.last_applied, last_membership: copy.membership, snapshot_id };
        self.store.persist_snapshot(&meta, data.clone()).await.map_err(|e| snapshot_err(ErrorVerb::Write, e))?;
        crate::telemetry::SNAPSHOT_SECONDS.observe_duration(started.elapsed());
        crate::telemetry::SNAPSHOT_BYTES.set(data.len() as u64);
        tracing::info!(snapshot = %meta.snapshot_id, bytes = data.len(), "built snapshot");
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok(self.state.read(|s| (s.last_applied, s.membership.clone())))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ApplyResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut data = self.state.lock_write();
        Ok(entries.into_iter().map(|entry| Self::apply_entry(&mut data, entry)).collect())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            store: StateMachineStore {
                state: self.state.clone(),
                engine: self.engine.clone(),
                writer: self.writer.clone(),
                snapshots_built: self.snapshots_built.clone(),
            },
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        crate::telemetry::SNAPSHOT_BYTES.set(data.len() as u64);
        let cluster: ClusterState =
            decode_record("received snapshot", &data).map_err(|e| snapshot_err(ErrorVerb::Read, e))?;
        // Durable first: if we crash after this, the restart finds the new snapshot.
        self.persist_snapshot(meta, data).await.map_err(|e| snapshot_err(ErrorVerb::Write, e))?;
        let mut state = self.state.lock_write();
        *state = SmData { last_applied: meta.last_log_id, membership: meta.last_membership.clone(), cluster };
        tracing::info!(snapshot = %meta.snapshot_id, "installed snapshot from the leader");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let snapshot = self.read_snapshot().map_err(|e| snapshot_err(ErrorVerb::Read, e))?;
        Ok(snapshot.map(|(meta, data)| Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}
