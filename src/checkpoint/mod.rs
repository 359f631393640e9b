//! Checkpoints: the coordinator's bookkeeping and the checkpoint storage layout.
//!
//! A checkpoint is Flink's consistent snapshot of a running job: the JobMaster triggers it, every task snapshots
//! its state into the shared checkpoint directory and acknowledges, and once all have, the JobMaster writes the
//! checkpoint's `_metadata` and commits it through Raft (`CompleteCheckpoint`). Only then is it *completed*: a
//! restart or a new leader restores from the latest completed checkpoint in the replicated state. Savepoints are
//! the same mechanism, triggered by a user and written under a directory the user owns.
//!
//! This module owns two pure pieces the JobMaster drives:
//!
//! * [`coordinator`]: one job's bookkeeping ([`Coordinator`]): when the next periodic checkpoint is due (interval,
//!   min pause, one in flight at a time), which tasks acknowledged, timeouts and declines, how many consecutive
//!   failures the job tolerates, and the history shown by the REST API. No I/O, no clock of its own: time is passed
//!   in, so it is tested on tokio's paused clock.
//! * [`storage`]: the directory layout (`<dir>/<job>/chk-<id>/_metadata`, `savepoint-<job>-<id>`) and the
//!   metadata file, written atomically so that a directory with `_metadata` is always a whole checkpoint.
//!
//! It also owns savepoint disposal ([`disposal`]): the checks a disposal request must pass, and the leader-only
//! service that deletes the directories of requested disposals and commits their outcome.
//!
//! What it does not own: allocating checkpoint ids and committing checkpoints (Raft commands, proposed by the
//! JobMaster), talking to TaskManagers (the JobMaster), and discarding superseded checkpoints beyond `retained`
//! (the JobMaster, after the commit, with [`storage::discard`]).
//!
//! The coordinator lives on the leader only and is rebuilt from the replicated state after a failover: pending
//! checkpoints of the old leader are lost (their ids are never reused, and their late acknowledgements are
//! ignored), and [`Coordinator::trigger_soon`] gets the adopted job a fresh checkpoint promptly.

pub mod coordinator;
pub mod disposal;
pub mod storage;

pub use coordinator::{
    AckOutcome, CheckpointConfig, CheckpointKind, CheckpointRecord, CheckpointRecordStatus, CheckpointStats,
    Coordinator, FailureVerdict, PendingCheckpoint, TaskAck, TaskKey,
};
pub use storage::{CheckpointMetadata, StateHandle, StorageError, VertexMetadata, METADATA_FILE};
