//! A replica's configuration, independent of how it was given (flags, environment, TOML file).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::raft::{Node, NodeId};

/// Raft timing. The defaults aim at failover well under a second on a loaded two-core machine: a
/// heartbeat every 50 ms, and an election once a follower has heard nothing for its lease
/// (`election_max`, during which it also refuses to vote for anyone else) plus a random 150 to 300 ms:
/// 450 to 600 ms of silence in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timing {
    /// How often the leader sends heartbeats.
    pub heartbeat: Duration,
    /// A follower waits a random time in `[election_min, election_max)` before it stands for election.
    pub election_min: Duration,
    /// See `election_min`.
    pub election_max: Duration,
    /// How long a client write may wait for a leader and a commit, across retries.
    pub write_timeout: Duration,
    /// A leader that has not heard from a quorum for this long stops acting as leader (its
    /// leader-only services stop and it refuses writes). Defaults to `election_max`: openraft's
    /// followers refuse to vote for another candidate for `election_max` after they last heard from the
    /// leader, and only then wait out their own election timeout, so no other leader can have been
    /// elected sooner. It must not exceed `election_max`.
    pub leader_lease: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(50),
            election_min: Duration::from_millis(150),
            election_max: Duration::from_millis(300),
            write_timeout: Duration::from_secs(5),
            leader_lease: Duration::from_millis(300),
        }
    }
}

/// Log compaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compaction {
    /// Build a snapshot after this many entries since the last one.
    pub snapshot_every: u64,
    /// Entries kept in the log below the snapshot, so a briefly lagging follower catches up from the
    /// log instead of a snapshot.
    pub keep_below_snapshot: u64,
    /// Chunk size of a snapshot sent to a follower.
    pub snapshot_chunk_bytes: usize,
    /// Memory budget for log entries kept decoded in memory; older committed entries are read back from
    /// disk when needed.
    pub log_cache_bytes: usize,
}

impl Default for Compaction {
    fn default() -> Self {
        Self {
            snapshot_every: 10_000,
            keep_below_snapshot: 1_000,
            snapshot_chunk_bytes: 1024 * 1024,
            log_cache_bytes: crate::raft::DEFAULT_LOG_CACHE_BYTES,
        }
    }
}

/// Everything a replica needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This replica's id; must be a key of `peers`.
    pub id: NodeId,
    /// Where this replica keeps its log and snapshots.
    pub data_dir: PathBuf,
    /// The initial members of the cluster (including this replica), with their addresses. Every replica
    /// of a fresh cluster must be given the same list; it is used once, to bootstrap.
    pub peers: BTreeMap<NodeId, Node>,
    /// Raft timing.
    pub timing: Timing,
    /// Log compaction.
    pub compaction: Compaction,
    /// The failure domain (availability zone) this replica runs in, for display.
    pub zone: Option<String>,
}

impl NodeConfig {
    /// This replica's own addresses, from `peers`.
    pub fn own_node(&self) -> Option<&Node> {
        self.peers.get(&self.id)
    }

    /// Checks the configuration for mistakes a person can fix, with a message saying how.
    pub fn validate(&self) -> Result<(), String> {
        if self.own_node().is_none() {
            return Err(format!("node id {} is not in the peer list {:?}", self.id, self.peers.keys()));
        }
        let t = &self.timing;
        if t.heartbeat.is_zero() || t.election_min <= t.heartbeat * 2 {
            return Err(format!(
                "election timeout min ({:?}) must exceed twice the heartbeat interval ({:?})",
                t.election_min, t.heartbeat
            ));
        }
        if t.election_max <= t.election_min {
            return Err(format!(
                "election timeout max ({:?}) must exceed the min ({:?})",
                t.election_max, t.election_min
            ));
        }
        if t.leader_lease > t.election_max {
            return Err(format!(
                "leader lease ({:?}) must not exceed the election timeout max ({:?}): another leader could be elected while this one still acts",
                t.leader_lease, t.election_max
            ));
        }
        if self.compaction.snapshot_every == 0 {
            return Err("snapshot-every must be at least 1".into());
        }
        Ok(())
    }

    /// The openraft configuration for this replica.
    pub fn raft_config(&self) -> Result<openraft::Config, String> {
        let c = openraft::Config {
            cluster_name: "jobmanager".into(),
            heartbeat_interval: self.timing.heartbeat.as_millis() as u64,
            election_timeout_min: self.timing.election_min.as_millis() as u64,
            election_timeout_max: self.timing.election_max.as_millis() as u64,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.compaction.snapshot_every),
            max_in_snapshot_log_to_keep: self.compaction.keep_below_snapshot,
            snapshot_max_chunk_size: self.compaction.snapshot_chunk_bytes as u64,
            // A follower catching up after a restart gets entries in bounded batches.
            max_payload_entries: 1000,
            install_snapshot_timeout: 2000,
            ..Default::default()
        };
        c.validate().map_err(|e| format!("invalid raft configuration: {e}"))
    }
}
