//! The replicated core: one Raft log, shared by three or five replicas, holding everything a new leader
//! needs to take over.
//!
//! The layers, bottom up:
//!
//! * [`storage`]: a small ordered key-value trait ([`Engine`]) with a sled engine for real replicas and a
//!   memory engine for tests and simulations;
//! * [`lossy`]: [`LossyEngine`], a test-only wrapper that keeps writes in memory until a flush, so a crash loses
//!   exactly what was not yet flushed;
//! * [`disk_writer`]: the one thread that writes to the engine, in order, with group-committed flushes;
//! * [`log_store`]: the Raft log, in memory for reads and written behind to the engine;
//! * [`command`]: the replicated [`Command`]s, an append-only on-disk format, and their results;
//! * [`state`]: [`ClusterState`] and its pure, deterministic `apply`: no clock, no randomness, no I/O;
//!   time and ids travel in the commands, so every replica computes the same state from the same log;
//! * [`state_machine`]: the adapter that lets openraft drive `apply`, build and install snapshots;
//! * [`network`]: openraft's network over an injected [`PeerTransport`];
//! * [`types`]: the openraft type configuration, declared once.
//!
//! Errors are split by determinism, as in toyDB: a [`DeterministicError`] is the outcome of applying a
//! command (every replica reaches it, the command is still in the log, nothing changed); a
//! [`StoreError`] is local and non-deterministic, and a replica that meets one stops rather than
//! diverge.

pub mod command;
pub mod disk_writer;
pub mod log_store;
pub mod lossy;
pub mod network;
pub mod state;
pub mod state_machine;
pub mod storage;
pub mod types;

use std::sync::Arc;

pub use command::{
    CheckpointId, Command, DeterministicError, Epoch, JobId, JobStatus, LogIndex, Response, SlotId, TaskManagerId,
};
pub use disk_writer::DiskWriter;
pub use log_store::{LogStore, DEFAULT_LOG_CACHE_BYTES};
pub use lossy::LossyEngine;
pub use network::{Network, PeerCall, PeerTransport, TransportError};
pub use state::ClusterState;
pub use state_machine::{SmData, StateHandle, StateMachineStore};
pub use storage::{Engine, MemoryEngine, SledEngine, StoreError};
pub use types::{ApplyResult, LogId, Node, NodeId, Raft, RaftMetrics, TypeConfig};

/// Opens the log store and the state machine of one replica on `engine`, sharing one disk writer;
/// at most `log_cache_bytes` of log entries stay decoded in memory.
pub fn open_stores(
    engine: Arc<dyn Engine>,
    log_cache_bytes: usize,
) -> Result<(LogStore, StateMachineStore), StoreError> {
    log_store::check_format(&*engine)?;
    let writer = DiskWriter::start(engine.clone())?;
    let state_machine = StateMachineStore::open(engine.clone(), writer.clone())?;
    Ok((LogStore::open(engine, writer, log_cache_bytes)?, state_machine))
}
