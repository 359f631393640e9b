//! Prompt elections: when the leader has gone silent, the follower with the most complete log stands
//! for election at once instead of waiting for its random timer.
//!
//! openraft elects a new leader when a follower's timer runs out (its lease plus a random election
//! timeout). If the first follower to time out lacks entries the others have, they refuse it, and the
//! election waits for another timer, which doubles the failover time. Here every follower checks, each
//! heartbeat interval, whether it has heard from a leader within the lease; once it has not, it asks
//! the other replicas for their status, and if none of them hears from a leader either and none holds
//! a more complete log, it asks openraft to campaign now ([`should_campaign`]). Equal logs go to the
//! lowest id, so two followers do not split the vote.
//!
//! Safety is Raft's, not ours: any replica may stand for election at any time. Voters still refuse a
//! candidate while their own lease on the old leader runs, so a follower cut off alone cannot depose a
//! leader the others still hear from.

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;

use super::node::{ReplicaNode, ReplicaStatus};
use crate::raft::NodeId;

/// What a follower knows when deciding whether to campaign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerView {
    /// The peer.
    pub id: NodeId,
    /// Its last log id as (term, index).
    pub last_log: (u64, u64),
    /// Whether it has heard from a leader within the lease.
    pub hears_leader: bool,
}

/// Whether replica `me`, whose last log id is `mine`, should campaign now, given the peers that
/// answered. Pure, so it is tested directly.
pub fn should_campaign(me: NodeId, mine: (u64, u64), peers: &[PeerView], members: usize) -> bool {
    // Without a majority (this replica and the peers that answered) there is no election to win.
    if (peers.len() + 1) * 2 <= members {
        return false;
    }
    peers.iter().all(|p| !p.hears_leader && (p.last_log < mine || (p.last_log == mine && me < p.id)))
}

fn hears_leader(status: &ReplicaStatus, lease: Duration) -> bool {
    status.ms_since_leader_contact.is_some_and(|ms| u128::from(ms) <= lease.as_millis())
}

/// Runs until the Raft node stops.
pub async fn campaign_when_leader_is_silent(node: Arc<ReplicaNode>) {
    let lease = node.config.timing.election_max;
    let tick = node.config.timing.heartbeat;
    let mut metrics = node.raft.metrics();
    loop {
        tokio::time::sleep(tick).await;
        let (state, running) = {
            let m = metrics.borrow_and_update();
            (m.state, m.running_state.is_ok())
        };
        if !running {
            return;
        }
        if !matches!(state, ServerState::Follower | ServerState::Candidate) {
            continue;
        }
        let silent = node.ms_since_leader_contact().is_none_or(|ms| u128::from(ms) > lease.as_millis());
        if !silent {
            continue;
        }
        let mine = node.local_status();
        let peers: Vec<PeerView> = node
            .peer_statuses(tick * 2)
            .await
            .into_iter()
            .map(|s| PeerView {
                id: s.node_id,
                last_log: (s.last_log_term, s.last_log_index),
                hears_leader: hears_leader(&s, lease),
            })
            .collect();
        let members = node.members().len();
        if should_campaign(node.id, (mine.last_log_term, mine.last_log_index), &peers, members) {
            tracing::info!(
                last_log_index = mine.last_log_index,
                "leader silent and this replica has the most complete log: campaigning now"
            );
            if let Err(e) = node.raft.trigger().elect().await {
                tracing::debug!(error = %e, "could not trigger an election");
                return;
            }
            // Give the election a moment before considering another.
            tokio::time::sleep(lease).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: NodeId, last_log: (u64, u64), hears_leader: bool) -> PeerView {
        PeerView { id, last_log, hears_leader }
    }

    #[test]
    fn the_most_complete_log_campaigns() {
        assert!(should_campaign(1, (3, 10), &[peer(2, (3, 9), false)], 3));
        assert!(!should_campaign(2, (3, 9), &[peer(1, (3, 10), false)], 3));
        // A higher last term beats a longer log.
        assert!(!should_campaign(1, (2, 50), &[peer(2, (3, 9), false)], 3));
    }

    #[test]
    fn equal_logs_go_to_the_lowest_id() {
        assert!(should_campaign(1, (3, 10), &[peer(2, (3, 10), false)], 3));
        assert!(!should_campaign(2, (3, 10), &[peer(1, (3, 10), false)], 3));
    }

    #[test]
    fn nobody_campaigns_while_a_peer_still_hears_the_leader() {
        assert!(!should_campaign(1, (3, 10), &[peer(2, (3, 9), true)], 3));
    }

    #[test]
    fn nobody_campaigns_without_a_reachable_majority() {
        assert!(!should_campaign(1, (3, 10), &[], 3));
        assert!(!should_campaign(1, (3, 10), &[peer(2, (3, 9), false)], 5));
        assert!(should_campaign(1, (3, 10), &[peer(2, (3, 9), false), peer(3, (3, 1), false)], 5));
    }
}
