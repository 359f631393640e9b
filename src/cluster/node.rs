//! One replica: its Raft node, its applied state, its peers, and its leadership.
//!
//! [`ReplicaNode::start`] is the composition root of the replicated core. Everything that touches the
//! outside world is injected: the storage [`Engine`], the [`PeerTransport`] to the other replicas and
//! the wall [`Clock`]. The listeners belong to the API layer, which serves [`ReplicaNode`]'s peer and
//! client calls over whatever connections it is given. So the same node code runs in real processes
//! (sled, tonic over TCP, the OS clock) and can run in a deterministic simulation.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::error::InitializeError;
use openraft::error::RaftError;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::clock::Clock;
use super::config::NodeConfig;
use super::error::ClusterError;
use super::leadership::{watch_leadership, LeaderSupervisor};
use super::proposer::Proposer;
use crate::raft::{
    open_stores, Engine, Network, Node, NodeId, PeerTransport, Raft, RaftMetrics, StateHandle, StoreError,
};

/// Why a replica could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The data dir could not be opened or read.
    #[error(transparent)]
    Storage(#[from] StoreError),
    /// openraft refused to start.
    #[error("raft failed to start: {0}")]
    Raft(String),
}

/// One replica's own view of its Raft state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// The replica.
    pub node_id: NodeId,
    /// Its addresses.
    pub node: Node,
    /// Leader, Follower, Candidate, Learner or Shutdown.
    pub state: String,
    /// Its current term.
    pub term: u64,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// Index of its last log entry.
    pub last_log_index: u64,
    /// Term of its last log entry.
    pub last_log_term: u64,
    /// The commit index it knows of.
    pub committed_index: u64,
    /// The last index applied to its state machine.
    pub applied_index: u64,
    /// The last index covered by its snapshot.
    pub snapshot_index: u64,
    /// The last index purged from its log.
    pub purged_index: u64,
    /// True while its leader-only services run.
    pub leader_services_active: bool,
    /// How many times this process has started its leader-only services.
    pub leader_activations: u64,
    /// Bytes its storage engine occupies on disk.
    pub data_dir_bytes: u64,
    /// Milliseconds since it last heard from a leader (0 on the leader).
    pub ms_since_leader_contact: Option<u64>,
    /// Its failure domain, if configured.
    pub zone: Option<String>,
}

/// A running replica.
pub struct ReplicaNode {
    /// This replica's id.
    pub id: NodeId,
    pub(super) config: NodeConfig,
    pub(super) raft: Raft,
    pub(super) proposer: Proposer,
    pub(super) state: StateHandle,
    pub(super) transport: Arc<dyn PeerTransport>,
    pub(super) clock: Arc<dyn Clock>,
    engine: Arc<dyn Engine>,
    committed: Arc<AtomicU64>,
    supervisor: Arc<LeaderSupervisor>,
    last_leader_contact: Mutex<Option<Instant>>,
}

impl ReplicaNode {
    /// Opens the data in `engine`, starts Raft, bootstraps a fresh cluster from `config.peers`, and starts
    /// watching leadership.
    pub async fn start(
        config: NodeConfig,
        engine: Arc<dyn Engine>,
        transport: Arc<dyn PeerTransport>,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, StartError> {
        config.validate().map_err(StartError::Config)?;
        let raft_config = Arc::new(config.raft_config().map_err(StartError::Config)?);
        let (log_store, state_machine) = open_stores(engine.clone(), config.compaction.log_cache_bytes)?;
        let committed = log_store.committed_index();
        let state = state_machine.handle();
        let raft = Raft::new(config.id, raft_config, Network::new(transport.clone()), log_store, state_machine)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        let node = Arc::new(Self {
            id: config.id,
            config,
            proposer: Proposer::start(raft.clone()),
            raft,
            state,
            transport,
            clock,
            engine,
            committed,
            supervisor: Arc::default(),
            last_leader_contact: Mutex::new(None),
        });
        node.bootstrap_if_fresh().await?;
        tokio::spawn(super::campaign::campaign_when_leader_is_silent(node.clone()));
        tokio::spawn(watch_leadership(
            node.raft.clone(),
            node.id,
            node.config.timing.leader_lease,
            node.config.timing.heartbeat / 2,
            node.supervisor.clone(),
        ));
        Ok(node)
    }

    /// Forms the cluster from the configured peers if this replica has never been part of one.
    ///
    /// Every replica of a fresh cluster does this with the same peer list, which openraft allows: they
    /// all write the same membership as entry 0, and one of them wins the first election. A replica
    /// that already has state skips it, so a restart never re-bootstraps.
    async fn bootstrap_if_fresh(&self) -> Result<(), StartError> {
        if self.raft.is_initialized().await.map_err(|e| StartError::Raft(e.to_string()))? {
            return Ok(());
        }
        let members: BTreeMap<NodeId, Node> = self.config.peers.clone();
        match self.raft.initialize(members).await {
            Ok(()) => {
                tracing::info!(members = ?self.config.peers.keys(), "bootstrapped a fresh cluster");
                Ok(())
            }
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(StartError::Raft(format!("bootstrap failed: {e}"))),
        }
    }

    /// The Raft handle.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Read access to the applied state.
    pub fn state(&self) -> &StateHandle {
        &self.state
    }

    /// The wall clock commands are stamped with.
    pub fn clock(&self) -> &dyn Clock {
        &*self.clock
    }

    /// The leader-only services' supervisor.
    pub fn supervisor(&self) -> &Arc<LeaderSupervisor> {
        &self.supervisor
    }

    /// The configuration the replica started with.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// A copy of the latest Raft metrics.
    pub fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow().clone()
    }

    /// The leader this replica knows of, without copying the metrics (the write path asks on every call).
    pub fn current_leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// The current members and their addresses.
    pub fn members(&self) -> BTreeMap<NodeId, Node> {
        let m = self.metrics();
        m.membership_config.nodes().map(|(id, n)| (*id, n.clone())).collect()
    }

    /// Notes that a leader just contacted this replica (called by the peer service on append entries).
    pub fn note_leader_contact(&self) {
        *self.last_leader_contact.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// Milliseconds since a leader last contacted this replica; 0 on the leader itself.
    pub fn ms_since_leader_contact(&self) -> Option<u64> {
        if self.metrics().current_leader == Some(self.id) {
            return Some(0);
        }
        let last = *self.last_leader_contact.lock().unwrap_or_else(|p| p.into_inner());
        last.map(|t| t.elapsed().as_millis() as u64)
    }

    /// Milliseconds since this replica last heard from a leader other than itself: on a new leader, how long the
    /// cluster went without one, as far as this replica saw.
    pub fn ms_since_other_leader_contact(&self) -> Option<u64> {
        let last = *self.last_leader_contact.lock().unwrap_or_else(|p| p.into_inner());
        last.map(|t| t.elapsed().as_millis() as u64)
    }

    /// This replica's own status.
    pub fn local_status(&self) -> ReplicaStatus {
        let m = self.metrics();
        let index = |l: Option<crate::raft::LogId>| l.map_or(0, |l| l.index);
        ReplicaStatus {
            node_id: self.id,
            node: self.members().remove(&self.id).or_else(|| self.config.own_node().cloned()).unwrap_or_default(),
            state: format!("{:?}", m.state),
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index.unwrap_or(0),
            last_log_term: self.raft.data_metrics().borrow().last_log.map_or(0, |l| l.leader_id.term),
            committed_index: self.committed.load(Ordering::Relaxed).max(index(m.last_applied)),
            applied_index: index(m.last_applied),
            snapshot_index: index(m.snapshot),
            purged_index: index(m.purged),
            leader_services_active: self.supervisor.active_term().is_some(),
            leader_activations: self.supervisor.activations(),
            data_dir_bytes: self.engine.size_on_disk(),
            ms_since_leader_contact: self.ms_since_leader_contact(),
            zone: self.config.zone.clone(),
        }
    }

    /// Builds a snapshot now covering everything applied, waits for it, and returns
    /// `(snapshot index, purged index)`. Raft purges the log below the snapshot (keeping the configured
    /// tail) right after.
    pub async fn compact(&self, timeout: std::time::Duration) -> Result<(u64, u64), ClusterError> {
        let target = self.metrics().last_applied.map_or(0, |l| l.index);
        self.raft.trigger().snapshot().await.map_err(|e| ClusterError::Fatal { detail: e.to_string() })?;
        let keep = self.config.compaction.keep_below_snapshot;
        let m = self
            .raft
            .wait(Some(timeout))
            .metrics(
                |m| {
                    let snap = m.snapshot.map_or(0, |l| l.index);
                    let purged = m.purged.map_or(0, |l| l.index);
                    snap >= target && (snap <= keep || purged + keep >= snap)
                },
                "snapshot and purge",
            )
            .await
            .map_err(|e| ClusterError::Timeout { detail: format!("compaction did not finish: {e}") })?;
        Ok((m.snapshot.map_or(0, |l| l.index), m.purged.map_or(0, |l| l.index)))
    }

    /// Stops Raft: no more votes, appends or applies. Idempotent.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::debug!(error = %e, "raft shutdown");
        }
        if let Err(e) = self.engine.flush() {
            tracing::warn!(error = %e, "final flush failed");
        }
    }
}
