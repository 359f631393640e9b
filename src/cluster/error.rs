//! The cluster layer's error: why a write or a read could not be served.

use serde::{Deserialize, Serialize};

use crate::raft::{DeterministicError, NodeId};

/// Why the cluster could not serve a request. Travels between replicas (a forwarded write's outcome),
/// so it is serializable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ClusterError {
    /// The command was applied and the state machine refused it; nothing changed.
    #[error("{0}")]
    Rejected(DeterministicError),
    /// No leader could be found before the deadline.
    #[error("no leader: {detail}")]
    NoLeader {
        /// What this replica saw.
        detail: String,
    },
    /// A leader exists but cannot reach a quorum, so nothing was written.
    #[error("no quorum: {detail}")]
    NoQuorum {
        /// What the leader saw.
        detail: String,
    },
    /// The write may or may not take effect (it reached a leader that did not confirm it in time).
    #[error("outcome unknown: {detail}; the write may still take effect, retry with the same idempotency key")]
    Indeterminate {
        /// What happened.
        detail: String,
    },
    /// This replica is not the leader (only between replicas: a forwarded write met a leader change).
    #[error("replica is not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader this replica knows of.
        leader: Option<NodeId>,
    },
    /// A read could not be confirmed before the deadline.
    #[error("timed out: {detail}")]
    Timeout {
        /// What was being waited for.
        detail: String,
    },
    /// The replica is stopping.
    #[error("replica is shutting down")]
    ShuttingDown,
    /// The replica hit a non-deterministic failure (storage) and stopped its Raft node.
    #[error("replica failed: {detail}")]
    Fatal {
        /// The failure.
        detail: String,
    },
}

impl ClusterError {
    /// True if trying again later (or at another replica) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ClusterError::NoLeader { .. }
                | ClusterError::NoQuorum { .. }
                | ClusterError::NotLeader { .. }
                | ClusterError::Timeout { .. }
                | ClusterError::ShuttingDown
        )
    }
}
