//! The write and read paths, and the one place where requests are forwarded to the leader.
//!
//! Writes: [`ReplicaNode::write`] proposes a [`Command`] through the leader, wherever it is called.
//! On the leader it proposes locally; on a follower it forwards the command over the peer transport
//! ([`PeerCall::Forward`]) and the leader proposes it. Across a leader change it retries until the
//! write deadline, but only where that is safe:
//!
//! * the command certainly did not reach a log (no leader known, the peer was unreachable, the leader
//!   refused because it is no longer leader or lost its quorum): retry;
//! * the command may be in a log (a timeout after it was sent): retry only if the command is
//!   idempotent ([`retry_is_safe`]), else report [`ClusterError::Indeterminate`].
//!
//! A leader that has not heard from a quorum within its lease refuses to propose at all, so a write
//! to a cluster without quorum fails with a clear error and leaves nothing half-written.
//!
//! A forwarded write or read-index call carries the id of the client request it serves ([`super::request_id`]):
//! the leader serves it inside a `request{node_id, request_id}` span and logs one line per forwarded write (its
//! command, log index and latency; job-metadata puts at debug, being the bulk write), so the request can be
//! followed from the follower's log to the leader's. The id travels beside the payload, not in [`ForwardRequest`].
//!
//! Reads: [`ReplicaNode::read_barrier`] makes a read linearizable (read-index): the leader confirms
//! it still leads with a round of heartbeats and returns its commit index; the serving replica waits
//! until it has applied that index, then reads its own state. A stale read skips the barrier and
//! reports how far behind it may be.

use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::Instrument;

use super::error::ClusterError;
use super::node::ReplicaNode;
use super::request_id;
use crate::raft::network::call_peer;
use crate::raft::{Command, NodeId, PeerCall, Response, TransportError};

/// The longest pause between two attempts at a write (a new leader usually cuts it short).
const MAX_RETRY_BACKOFF: Duration = Duration::from_millis(50);

/// A committed, applied write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    /// The write's log index.
    pub index: u64,
    /// The leader that committed it.
    pub leader: NodeId,
    /// What applying it returned.
    pub response: Response,
}

/// A forwarded write, as it travels to the leader.
///
/// Its encoding is frozen like a command's (see [`crate::raft::command`]): followers and leaders of different
/// versions exchange it, and bincode cannot skip an unknown field or default a missing one (`#[serde(default)]`
/// does not help). What else a forwarded write needs, like the request id, travels as peer-call metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardRequest {
    /// The command.
    pub command: Command,
    /// How long the leader may spend on it, in milliseconds.
    pub budget_ms: u64,
}

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Read-index through the leader.
    Linearizable,
    /// Whatever this replica has applied.
    Stale,
}

/// What a read was served from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadInfo {
    /// The replica that served it.
    pub served_by: NodeId,
    /// The consistency it was served with.
    pub consistency: Consistency,
    /// The replica's applied index when it read.
    pub applied_index: u64,
    /// Linearizable: the leader's commit index it waited for.
    pub read_index: u64,
    /// Stale: milliseconds since the replica last heard from a leader.
    pub ms_since_leader_contact: Option<u64>,
    /// Stale: entries the replica holds but has not applied.
    pub unapplied_entries: u64,
}

/// The least time worth spending on another attempt: one with less could not reach the leader and come back, and
/// a timeout would only add an unknown outcome.
const MIN_ATTEMPT_BUDGET: Duration = Duration::from_millis(20);

/// True if applying `command` twice has the same effect as applying it once, so a write whose outcome
/// is unknown may be retried.
pub fn retry_is_safe(command: &Command) -> bool {
    match command {
        // The idempotency key makes a second submit return the first job.
        Command::SubmitJob { .. } => true,
        // Cancelling a cancelled job, recording the same terminal result or moving to the status the job
        // already has: all no-ops the second time. (Not a metadata put: with other writers in between, a late
        // second copy would bring an overwritten value back, which no linearizable register allows.)
        Command::CancelJob { .. }
        | Command::RecordJobResult { .. }
        | Command::TransitionJobStatus { .. }
        | Command::RegisterTaskManager { .. }
        // The request id makes a second request find the first.
        | Command::RequestSavepoint { .. } => true,
        // These allocate (an epoch, a checkpoint id) or may fail on the second try: the caller decides.
        _ => false,
    }
}

/// The outcome of one attempt at a write.
enum Attempt {
    /// The command certainly did not take effect: try again.
    NotApplied(ClusterError),
    /// The command may have taken effect.
    Unknown(ClusterError),
    /// Final: do not try again.
    Final(ClusterError),
}

impl ReplicaNode {
    /// Proposes `command` through the leader and returns once it is committed and applied.
    #[tracing::instrument(level = "debug", skip_all, fields(command = command.name()))]
    pub async fn write(&self, command: Command) -> Result<Written, ClusterError> {
        let deadline = Instant::now() + self.config.timing.write_timeout;
        let retry_safe = retry_is_safe(&command);
        // Once an attempt may have taken effect, a later definite-looking error (no leader, no quorum) no longer
        // tells the truth about the write: the caller must hear that the outcome is unknown.
        let mut maybe_applied = false;
        let mut backoff = Duration::from_millis(10);
        loop {
            let budget = deadline.saturating_duration_since(Instant::now());
            let leader_seen = self.current_leader();
            let attempt = match leader_seen {
                Some(leader) if leader == self.id => self.propose_as_leader(command.clone(), budget).await,
                Some(leader) => self.forward_to(leader, command.clone(), budget).await,
                None => Err(Attempt::NotApplied(ClusterError::NoLeader {
                    detail: format!(
                        "replica {} knows no leader; an election may be under way or a majority of the {} replicas may be down",
                        self.id,
                        self.members().len()
                    ),
                })),
            };
            let error = match attempt {
                Ok(written) => return Ok(written),
                Err(Attempt::Final(e)) => return Err(e),
                Err(Attempt::Unknown(e)) if !retry_safe => {
                    return Err(ClusterError::Indeterminate { detail: e.to_string() })
                }
                Err(Attempt::Unknown(e)) => {
                    maybe_applied = true;
                    e
                }
                Err(Attempt::NotApplied(e)) => e,
            };
            if Instant::now() + backoff + MIN_ATTEMPT_BUDGET >= deadline {
                return Err(match error {
                    e @ ClusterError::Indeterminate { .. } => e,
                    e if maybe_applied => ClusterError::Indeterminate {
                        detail: format!("an earlier attempt may have taken effect, and then: {e}"),
                    },
                    e => e,
                });
            }
            tracing::debug!(%error, ?backoff, "write not served yet; retrying");
            self.wait_for_new_leader(leader_seen, backoff).await;
            backoff = (backoff * 2).min(MAX_RETRY_BACKOFF);
        }
    }

    /// Waits until this replica learns of a leader other than `seen`, or `max` passes: a retry is
    /// pointless before either.
    async fn wait_for_new_leader(&self, seen: Option<NodeId>, max: Duration) {
        let mut metrics = self.raft.metrics();
        let changed = metrics.wait_for(|m| m.current_leader.is_some() && m.current_leader != seen);
        let _ = tokio::time::timeout(max, changed).await;
    }

    /// Serves a write forwarded by a follower: one attempt, never forwarded again. Runs in the span of the
    /// request it serves, and logs its outcome there.
    pub async fn serve_forwarded(&self, request: ForwardRequest) -> Result<Written, ClusterError> {
        let command = request.command.name();
        let bulk = matches!(request.command, Command::PutJobMetadata { .. });
        let started = std::time::Instant::now();
        async move {
            let result = self.serve_forwarded_once(request).await;
            let latency_ms = request_id::latency_ms(started);
            match &result {
                Ok(w) if bulk => tracing::debug!(command, index = w.index, latency_ms, "served a forwarded write"),
                Ok(w) => tracing::info!(command, index = w.index, latency_ms, "served a forwarded write"),
                Err(error) => tracing::info!(command, %error, latency_ms, "refused or failed a forwarded write"),
            }
            result
        }
        .instrument(request_id::peer_span(self.id))
        .await
    }

    async fn serve_forwarded_once(&self, request: ForwardRequest) -> Result<Written, ClusterError> {
        let budget = Duration::from_millis(request.budget_ms).min(self.config.timing.write_timeout);
        match self.current_leader() {
            Some(leader) if leader == self.id => {}
            leader => return Err(ClusterError::NotLeader { leader }),
        }
        match self.propose_as_leader(request.command, budget).await {
            Ok(w) => Ok(w),
            Err(Attempt::NotApplied(e)) | Err(Attempt::Final(e)) => Err(e),
            Err(Attempt::Unknown(e)) => Err(ClusterError::Indeterminate { detail: e.to_string() }),
        }
    }

    fn lease_expired(&self) -> Option<String> {
        let lease = self.config.timing.leader_lease;
        let since_quorum_ack = self.raft.metrics().borrow().millis_since_quorum_ack;
        match since_quorum_ack {
            Some(ms) if u128::from(ms) <= lease.as_millis() => None,
            Some(ms) => Some(format!(
                "leader {} has not heard from a majority of the {} replicas for {ms} ms (lease {} ms)",
                self.id,
                self.members().len(),
                lease.as_millis()
            )),
            None => Some(format!("leader {} has not yet heard from a majority", self.id)),
        }
    }

    async fn propose_as_leader(&self, command: Command, budget: Duration) -> Result<Written, Attempt> {
        if let Some(detail) = self.lease_expired() {
            return Err(Attempt::NotApplied(ClusterError::NoQuorum { detail }));
        }
        let started = std::time::Instant::now();
        let proposed = tokio::time::timeout(budget, self.proposer.propose(command)).await;
        crate::telemetry::PROPOSAL_SECONDS.observe_duration(started.elapsed());
        let written = match proposed {
            Err(_) => {
                return Err(Attempt::Unknown(ClusterError::Indeterminate {
                    detail: format!("leader {} did not commit the write within {budget:?}", self.id),
                }))
            }
            Ok(None) => return Err(Attempt::Final(ClusterError::ShuttingDown)),
            Ok(Some(result)) => result,
        };
        match written {
            Ok((index, Ok(response))) => Ok(Written { index, leader: self.id, response }),
            Ok((_, Err(rejected))) => Err(Attempt::Final(ClusterError::Rejected(rejected))),
            // openraft refuses before appending, or after truncating the entry: it is not applied.
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(Attempt::NotApplied(ClusterError::NotLeader { leader: f.leader_id }))
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(Attempt::Final(ClusterError::Fatal { detail: e.to_string() }))
            }
            Err(RaftError::Fatal(f)) => Err(Attempt::Final(fatal(f))),
        }
    }

    async fn forward_to(&self, leader: NodeId, command: Command, budget: Duration) -> Result<Written, Attempt> {
        let Some(node) = self.members().remove(&leader) else {
            return Err(Attempt::NotApplied(ClusterError::NoLeader {
                detail: format!("leader {leader} is not in the membership this replica knows"),
            }));
        };
        let request = ForwardRequest { command, budget_ms: budget.as_millis() as u64 };
        let reply: Result<Result<Written, ClusterError>, TransportError> =
            call_peer(&*self.transport, leader, &node, PeerCall::Forward, &request, budget).await;
        match reply {
            Ok(Ok(written)) => Ok(written),
            Ok(Err(e @ ClusterError::Indeterminate { .. })) => Err(Attempt::Unknown(e)),
            Ok(Err(e)) if e.is_retryable() => Err(Attempt::NotApplied(e)),
            Ok(Err(e)) => Err(Attempt::Final(e)),
            Err(e) if e.not_delivered() => Err(Attempt::NotApplied(ClusterError::NoLeader {
                detail: format!("leader {leader} at {} is unreachable: {e}", node.raft_addr),
            })),
            Err(e) => Err(Attempt::Unknown(ClusterError::Indeterminate {
                detail: format!("forwarding to leader {leader} failed: {e}"),
            })),
        }
    }

    /// Waits until a read on this replica is as fresh as `consistency` asks, and says what it was.
    pub async fn read_barrier(&self, consistency: Consistency) -> Result<ReadInfo, ClusterError> {
        let read_index = match consistency {
            Consistency::Stale => 0,
            Consistency::Linearizable => {
                let read_index = self.leader_read_index().await?;
                self.raft
                    .wait(Some(self.config.timing.write_timeout))
                    .applied_index_at_least(Some(read_index), "linearizable read")
                    .await
                    .map_err(|e| ClusterError::Timeout {
                        detail: format!("replica {} did not apply up to the read index {read_index}: {e}", self.id),
                    })?;
                read_index
            }
        };
        let m = self.metrics();
        let applied_index = m.last_applied.map_or(0, |l| l.index);
        let stale = consistency == Consistency::Stale;
        Ok(ReadInfo {
            served_by: self.id,
            consistency,
            applied_index,
            read_index,
            ms_since_leader_contact: if stale { self.ms_since_leader_contact() } else { None },
            unapplied_entries: if stale { m.last_log_index.unwrap_or(0).saturating_sub(applied_index) } else { 0 },
        })
    }

    /// The index a linearizable read must wait for, from the leader, retrying across a leader change.
    async fn leader_read_index(&self) -> Result<u64, ClusterError> {
        let deadline = Instant::now() + self.config.timing.write_timeout;
        let mut backoff = Duration::from_millis(10);
        loop {
            let leader_seen = self.current_leader();
            let error = match leader_seen {
                Some(leader) if leader == self.id => match self.serve_read_index().await {
                    Ok(index) => return Ok(index),
                    Err(e) => e,
                },
                Some(leader) => match self.members().remove(&leader) {
                    Some(node) => {
                        let budget = deadline.saturating_duration_since(Instant::now());
                        let reply: Result<Result<u64, ClusterError>, TransportError> =
                            call_peer(&*self.transport, leader, &node, PeerCall::ReadIndex, &(), budget).await;
                        match reply {
                            Ok(Ok(index)) => return Ok(index),
                            Ok(Err(e)) if !e.is_retryable() => return Err(e),
                            Ok(Err(e)) => e,
                            Err(e) => ClusterError::NoLeader { detail: format!("leader {leader} unreachable: {e}") },
                        }
                    }
                    None => ClusterError::NoLeader { detail: format!("leader {leader} not in membership") },
                },
                None => ClusterError::NoLeader {
                    detail: format!("replica {} knows no leader to confirm a linearizable read", self.id),
                },
            };
            if Instant::now() + backoff >= deadline {
                return Err(error);
            }
            self.wait_for_new_leader(leader_seen, backoff).await;
            backoff = (backoff * 2).min(MAX_RETRY_BACKOFF);
        }
    }

    /// On the leader: confirms leadership with a quorum and returns the index reads must wait for.
    ///
    /// Only once the leader services run: openraft's read index is the larger of the leader's commit index and its
    /// first entry of the term, and a leader restored within its term after a restart (openraft keeps a committed
    /// vote) starts with an old first entry and a commit index it may still have to re-learn, so the read index
    /// could miss acknowledged writes. The supervisor's verdict requires everything in the leader's log at takeover
    /// to be applied (`leadership::decide`), which closes that gap.
    pub async fn serve_read_index(&self) -> Result<u64, ClusterError> {
        if self.supervisor().active_term().is_none() {
            return Err(ClusterError::NoLeader {
                detail: format!(
                    "replica {} leads but has not yet applied the entries committed before its term; retry shortly",
                    self.id
                ),
            });
        }
        let budget = self.config.timing.write_timeout;
        match tokio::time::timeout(budget, self.raft.get_read_log_id()).await {
            Err(_) => Err(ClusterError::NoQuorum {
                detail: format!("leader {} could not confirm its leadership with a majority", self.id),
            }),
            Ok(Ok((read_log_id, _applied))) => Ok(read_log_id.map_or(0, |l| l.index)),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                Err(ClusterError::NotLeader { leader: f.leader_id })
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)))) => {
                Err(ClusterError::NoQuorum { detail: q.to_string() })
            }
            Ok(Err(RaftError::Fatal(f))) => Err(fatal(f)),
        }
    }
}

fn fatal(f: openraft::error::Fatal<NodeId>) -> ClusterError {
    match f {
        openraft::error::Fatal::Stopped => ClusterError::ShuttingDown,
        other => ClusterError::Fatal { detail: other.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_commands_whose_second_copy_changes_nothing_are_retried() {
        let submit = Command::SubmitJob {
            job_id: "j".into(),
            idempotency_key: "k".into(),
            name: "n".into(),
            max_retained_checkpoints: 1,
            spec_json: "{}".into(),
            submitted_at_ms: 1,
        };
        assert!(retry_is_safe(&submit), "the idempotency key finds the first job");
        // A put retried after other writers overwrote the key would bring the old value back (the chaos suite's
        // register workload checks exactly this): its outcome must be reported as unknown instead.
        let put = Command::PutJobMetadata { job_id: "j".into(), key: "k".into(), value: vec![1], at_ms: 1 };
        assert!(!retry_is_safe(&put));
        assert!(!retry_is_safe(&Command::AllocateCheckpointId { job_id: "j".into(), epoch: 1, at_ms: 1 }));
    }
}
