//! Leadership: the one place that decides whether this replica acts as leader, and starts and stops the
//! leader-only services accordingly (Nomad's `establishLeadership` / `revokeLeadership`).
//!
//! A replica acts as leader only when all of these hold (see [`decide`]):
//!
//! 1. Raft says it is the leader;
//! 2. it has applied an entry of its own term. openraft commits a blank entry when a leader is elected,
//!    so this means the new leader has committed in its term and applied everything before it: the
//!    replicated state it rebuilds its services from is complete;
//! 3. it has applied every entry its log held when it took over. openraft restores a leader that restarts
//!    within its term (its vote was committed) without a new election and without a new blank entry, and
//!    with a commit index it persisted lazily; its blank entry of condition 2 is old, and entries after it
//!    may hold acknowledged writes it has not re-applied yet. The chaos suite caught a read after a restart
//!    of every replica returning a value older than an acknowledged write; reads now wait for this verdict
//!    too ([`ReplicaNode::serve_read_index`](super::ReplicaNode::serve_read_index));
//! 4. it heard from a quorum within its lease ([`Timing::leader_lease`](super::config::Timing)). A
//!    leader cut off from the majority keeps the Raft role until it sees a higher term, but it must not
//!    act: another replica may already have been elected.
//!
//! The [`LeaderSupervisor`] publishes the decision on a watch channel ([`LeaderSupervisor::subscribe`]):
//! `Some(term)` while services should run, `None` once they must stop. Services (the ResourceManager and
//! the JobMasters) subscribe and stop at once when it turns to `None`. The watcher
//! re-evaluates on every metrics change and at least every half heartbeat, so an expired lease is
//! noticed even when nothing else happens.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use tokio::sync::watch;

use crate::raft::{NodeId, Raft, RaftMetrics};

/// Whether this replica should act as leader, and why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Run the leader-only services for this term.
    Lead {
        /// The Raft term.
        term: u64,
    },
    /// Do not run them.
    Follow {
        /// Why, for the log line.
        reason: &'static str,
    },
}

/// Decides from Raft's metrics whether this replica acts as leader. Pure, so it is tested directly.
///
/// `log_at_takeover` is the last log index this process saw when it found itself leader of the current term. A
/// leader normally starts with a fresh election and a blank entry of its term; but openraft also restores a leader
/// that restarts within its term (its vote was committed), without a new blank entry and with a commit index it
/// may have to re-learn. Requiring everything in its log at takeover to be applied covers both: nothing committed
/// before its leadership can be missing from what its services and reads see.
pub fn decide(id: NodeId, m: &RaftMetrics, lease: Duration, log_at_takeover: u64) -> Verdict {
    if m.state != ServerState::Leader || m.current_leader != Some(id) {
        return Verdict::Follow { reason: "not the Raft leader" };
    }
    let applied_own_term = m.last_applied.is_some_and(|l| l.leader_id.term == m.current_term);
    if !applied_own_term {
        return Verdict::Follow { reason: "has not yet applied an entry of its own term" };
    }
    if m.last_applied.map_or(0, |l| l.index) < log_at_takeover {
        return Verdict::Follow { reason: "has not yet applied the entries its log held when it took over" };
    }
    match m.millis_since_quorum_ack {
        Some(ms) if u128::from(ms) <= lease.as_millis() => Verdict::Lead { term: m.current_term },
        Some(_) => Verdict::Follow { reason: "leader lease expired: no quorum heard from within the lease" },
        None => Verdict::Follow { reason: "no quorum acknowledgement yet" },
    }
}

/// Starts and stops the leader-only services and counts it.
#[derive(Debug)]
pub struct LeaderSupervisor {
    tx: watch::Sender<Option<u64>>,
    activations: AtomicU64,
}

impl Default for LeaderSupervisor {
    fn default() -> Self {
        Self { tx: watch::channel(None).0, activations: AtomicU64::new(0) }
    }
}

impl LeaderSupervisor {
    /// `Some(term)` while the leader-only services should run; services watch this and stop at `None`.
    pub fn subscribe(&self) -> watch::Receiver<Option<u64>> {
        self.tx.subscribe()
    }

    /// The term the services run for, if they run.
    pub fn active_term(&self) -> Option<u64> {
        *self.tx.borrow()
    }

    /// How many times the services have been started by this process.
    pub fn activations(&self) -> u64 {
        self.activations.load(Ordering::Relaxed)
    }

    fn enable(&self, term: u64) {
        if self.active_term() == Some(term) {
            return;
        }
        self.activations.fetch_add(1, Ordering::Relaxed);
        tracing::info!(term, "leader services started: this replica now acts as leader");
        self.tx.send_replace(Some(term));
    }

    fn disable(&self, reason: &str) {
        if let Some(term) = self.active_term() {
            tracing::warn!(term, reason, "leader services stopped");
            self.tx.send_replace(None);
        }
    }
}

/// Watches Raft and keeps the supervisor in step until the Raft node shuts down.
pub async fn watch_leadership(
    raft: Raft,
    id: NodeId,
    lease: Duration,
    tick: Duration,
    supervisor: Arc<LeaderSupervisor>,
) {
    let mut metrics = raft.metrics();
    // (term, last log index) when this process first saw itself leader of that term.
    let mut takeover: Option<(u64, u64)> = None;
    loop {
        let verdict = {
            let m = metrics.borrow_and_update();
            if m.running_state.is_err() {
                supervisor.disable("raft node stopped");
                return;
            }
            let leading = m.state == ServerState::Leader && m.current_leader == Some(id);
            takeover = match takeover {
                Some((term, index)) if leading && term == m.current_term => Some((term, index)),
                _ if leading => Some((m.current_term, m.last_log_index.unwrap_or(0))),
                _ => None,
            };
            decide(id, &m, lease, takeover.map_or(0, |(_, index)| index))
        };
        match verdict {
            Verdict::Lead { term } => supervisor.enable(term),
            Verdict::Follow { reason } => supervisor.disable(reason),
        }
        // Biased, so the deterministic simulation replays (an unbiased select draws from the runtime's RNG).
        tokio::select! {
            biased;
            changed = metrics.changed() => if changed.is_err() {
                supervisor.disable("raft node stopped");
                return;
            },
            _ = tokio::time::sleep(tick) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::{CommittedLeaderId, LogId, Membership, StoredMembership};

    use super::*;
    use crate::raft::Node;

    fn leader_metrics(term: u64, applied_term: u64, quorum_ack_ms: Option<u64>) -> RaftMetrics {
        let mut m = RaftMetrics::new_initial(1);
        m.state = ServerState::Leader;
        m.current_leader = Some(1);
        m.current_term = term;
        m.last_applied = Some(LogId::new(CommittedLeaderId::new(applied_term, 1), 7));
        m.millis_since_quorum_ack = quorum_ack_ms;
        let members = BTreeMap::from([(1, Node::default())]);
        m.membership_config =
            Arc::new(StoredMembership::new(None, Membership::new(vec![BTreeSet::from([1])], members)));
        m
    }

    const LEASE: Duration = Duration::from_millis(300);

    #[test]
    fn a_leader_that_applied_its_own_term_within_its_lease_leads() {
        assert_eq!(decide(1, &leader_metrics(3, 3, Some(20)), LEASE, 0), Verdict::Lead { term: 3 });
    }

    #[test]
    fn a_new_leader_waits_until_it_applied_an_entry_of_its_term() {
        assert!(matches!(decide(1, &leader_metrics(4, 3, Some(20)), LEASE, 0), Verdict::Follow { .. }));
    }

    #[test]
    fn a_leader_restored_within_its_term_waits_until_it_applied_its_whole_log() {
        // Restarted as leader of term 3 with entries up to 40 in its log but only 7 known committed and applied:
        // what it lacks may include acknowledged writes.
        let m = leader_metrics(3, 3, Some(20));
        assert_eq!(m.last_applied.map(|l| l.index), Some(7));
        assert!(matches!(decide(1, &m, LEASE, 40), Verdict::Follow { .. }));
        assert_eq!(decide(1, &m, LEASE, 7), Verdict::Lead { term: 3 });
    }

    #[test]
    fn a_leader_past_its_lease_stops_acting() {
        assert!(matches!(decide(1, &leader_metrics(3, 3, Some(301)), LEASE, 0), Verdict::Follow { .. }));
        assert!(matches!(decide(1, &leader_metrics(3, 3, None), LEASE, 0), Verdict::Follow { .. }));
    }

    #[test]
    fn a_follower_never_leads() {
        let mut m = leader_metrics(3, 3, Some(1));
        m.state = ServerState::Follower;
        m.current_leader = Some(2);
        assert!(matches!(decide(1, &m, LEASE, 0), Verdict::Follow { .. }));
    }

    #[test]
    fn the_supervisor_publishes_start_and_stop_and_counts_activations() {
        let s = LeaderSupervisor::default();
        let rx = s.subscribe();
        s.enable(5);
        s.enable(5);
        assert_eq!(*rx.borrow(), Some(5));
        assert_eq!(s.activations(), 1);
        s.disable("test");
        assert_eq!(*rx.borrow(), None);
        s.enable(6);
        assert_eq!(s.activations(), 2);
    }
}
