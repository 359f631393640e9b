//! The cluster layer: a replica ([`ReplicaNode`]) around the Raft core, with the parts every replica
//! runs and the client APIs build on.
//!
//! * [`node`]: starting a replica from injected storage, transport and clock; bootstrapping a fresh
//!   cluster exactly once; its status;
//! * [`forward`]: the write path (proposed through the leader, forwarded from followers in exactly one
//!   place, retried across leader changes where that is safe) and the read barrier (read-index);
//! * [`proposer`]: batching concurrent writes into one log entry on the leader;
//! * [`peer`]: serving the replica-to-replica calls;
//! * [`campaign`]: prompt elections by the follower with the most complete log when the leader is
//!   silent;
//! * [`leadership`]: deciding when this replica acts as leader and starting/stopping the leader-only
//!   services;
//! * [`request_id`]: the id of the client request being served, carried to the replicas it reaches so their
//!   log lines share it;
//! * [`config`] and [`clock`]: what a replica is given.
//!
//! Nothing here knows gRPC: the API layer carries bytes between [`ReplicaNode`]s through a
//! [`PeerTransport`](crate::raft::PeerTransport) and serves clients by calling into this layer.

pub mod campaign;
pub mod clock;
pub mod config;
pub mod error;
pub mod forward;
pub mod leadership;
pub mod node;
pub mod peer;
pub mod proposer;
pub mod request_id;

pub use clock::{Clock, SystemClock};
pub use config::{Compaction, NodeConfig, Timing};
pub use error::ClusterError;
pub use forward::{retry_is_safe, Consistency, ReadInfo, Written};
pub use leadership::LeaderSupervisor;
pub use node::{ReplicaNode, ReplicaStatus, StartError};
