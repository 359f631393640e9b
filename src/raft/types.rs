//! The openraft type configuration, declared once, and short aliases for the generic openraft types.
//!
//! Everything else in the crate names `raft::Entry`, `raft::LogId`, `raft::Raft` instead of spelling out
//! `openraft::Entry<TypeConfig>`. The node record ([`Node`]) is what membership stores about each replica:
//! the address its Raft peer service listens on and the address of its client API.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use super::command::{Command, DeterministicError, Response};

/// A replica's id in the Raft group. Chosen by the operator, stable for the life of the replica.
pub type NodeId = u64;

/// What an applied entry returns to its proposer: `None` for Raft's own entries (blank, membership),
/// `Some(result)` for a [`Command`]. A command that fails deterministically is still applied (it
/// advances `last_index`); its error travels back to the client here.
pub type ApplyResult = Option<Result<Response, DeterministicError>>;

/// What the replicated log knows about one replica.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// `host:port` of the replica's Raft peer service (append entries, vote, snapshots, forwarding).
    pub raft_addr: String,
    /// `host:port` of the replica's client gRPC API.
    pub api_addr: String,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "raft={} api={}", self.raft_addr, self.api_addr)
    }
}

openraft::declare_raft_types!(
    /// The one openraft type configuration of the job manager.
    pub TypeConfig:
        D = Command,
        R = ApplyResult,
        NodeId = NodeId,
        Node = Node,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft handle.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id: (leader id, index).
pub type LogId = openraft::LogId<NodeId>;
/// A vote.
pub type Vote = openraft::Vote<NodeId>;
/// Membership as stored with the index that introduced it.
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
/// A snapshot with its data.
pub type Snapshot = openraft::Snapshot<TypeConfig>;
/// openraft's storage error.
pub type StorageError = openraft::StorageError<NodeId>;
/// openraft's metrics.
pub type RaftMetrics = openraft::RaftMetrics<NodeId, Node>;
