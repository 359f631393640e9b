//! Serving the replica-to-replica calls that arrive at this replica, whatever transport carried them.

use std::collections::BTreeMap;
use std::time::Duration;

use tracing::Instrument;

use super::error::ClusterError;
use super::forward::ForwardRequest;
use super::node::{ReplicaNode, ReplicaStatus};
use super::request_id;
use crate::raft::command::{decode, encode};
use crate::raft::network::{call_peer, serve_raft_call, PeerCallError};
use crate::raft::{NodeId, PeerCall};

impl ReplicaNode {
    /// Serves one incoming peer call: decodes the payload, acts, and encodes the reply. The transport runs it in
    /// the [`request_id::scope`] of the request the caller served, if it sent one.
    pub async fn serve_peer_call(&self, call: PeerCall, payload: &[u8]) -> Result<Vec<u8>, PeerCallError> {
        if call == PeerCall::AppendEntries {
            self.note_leader_contact();
        }
        match call {
            PeerCall::Forward => {
                let request: ForwardRequest =
                    decode(payload).map_err(|reason| PeerCallError::BadRequest { call, reason })?;
                Ok(encode(&self.serve_forwarded(request).await))
            }
            PeerCall::ReadIndex => {
                let read_index = async {
                    let read_index = self.serve_read_index().await;
                    tracing::debug!(?read_index, "served a follower's read-index call");
                    read_index
                };
                Ok(encode(&read_index.instrument(request_id::peer_span(self.id)).await))
            }
            PeerCall::NodeStatus => Ok(encode(&self.local_status())),
            PeerCall::AppendEntries | PeerCall::Vote | PeerCall::InstallSnapshot => {
                serve_raft_call(&self.raft, call, payload).await
            }
        }
    }

    /// The status of every other member that answers within `timeout`.
    pub async fn peer_statuses(&self, timeout: Duration) -> Vec<ReplicaStatus> {
        let asks = self.members().into_iter().filter(|(id, _)| *id != self.id).map(|(id, node)| async move {
            call_peer::<_, ReplicaStatus>(&*self.transport, id, &node, PeerCall::NodeStatus, &(), timeout).await.ok()
        });
        futures::future::join_all(asks).await.into_iter().flatten().collect()
    }

    /// Every member's own status, asked in parallel; a replica that does not answer within a short
    /// timeout is reported with the error.
    pub async fn cluster_status(&self) -> BTreeMap<NodeId, Result<ReplicaStatus, ClusterError>> {
        let timeout = Duration::from_millis(500);
        let asks = self.members().into_iter().map(|(id, node)| async move {
            if id == self.id {
                return (id, Ok(self.local_status()));
            }
            let reply: Result<ReplicaStatus, _> =
                call_peer(&*self.transport, id, &node, PeerCall::NodeStatus, &(), timeout).await;
            (id, reply.map_err(|e| ClusterError::Timeout { detail: e.to_string() }))
        });
        futures::future::join_all(asks).await.into_iter().collect()
    }
}
