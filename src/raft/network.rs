//! Raft's network, written against an injected [`PeerTransport`] rather than a concrete RPC library.
//!
//! openraft asks for a connection per peer ([`Network`] / [`PeerConnection`]); each call is encoded
//! with bincode, handed to the transport as one of the [`PeerCall`]s, and the peer's reply decoded
//! back. The real transport (tonic gRPC, with one reused HTTP/2 channel per peer) lives in
//! `api::grpc::peer`; a test or a deterministic simulation can plug in its own. The same transport
//! carries the cluster's own replica-to-replica calls (forwarded writes, read index, node status),
//! kept apart from the client API.
//!
//! Snapshots travel in chunks: openraft's default `full_snapshot` splits the snapshot into
//! `InstallSnapshot` calls of `snapshot_max_chunk_size` bytes and the receiver reassembles them.
//!
//! Error mapping: a transport that could not reach the peer reports [`TransportError::Unreachable`]
//! (openraft then backs off); anything else (timeout, broken connection) is a network error after
//! which openraft simply retries.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable as UnreachableError,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::command::{decode, encode};
use super::types::{Node, NodeId, Raft, TypeConfig};

/// The replica-to-replica calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerCall {
    /// Raft append entries (also the heartbeat).
    AppendEntries,
    /// Raft vote request.
    Vote,
    /// One chunk of a snapshot.
    InstallSnapshot,
    /// A client write forwarded from a follower to the leader.
    Forward,
    /// A read index request: the leader confirms its leadership and returns its commit point.
    ReadIndex,
    /// The replica's own view of its Raft state, for cluster status.
    NodeStatus,
}

/// Why a peer call failed in transport.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// The peer could not be reached; the request was not delivered.
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    /// No reply within the deadline; the request may or may not have been processed.
    #[error("peer call timed out after {0:?}")]
    Timeout(Duration),
    /// The call failed after it may have been delivered.
    #[error("peer call failed: {0}")]
    Failed(String),
}

impl TransportError {
    /// True if the peer certainly did not process the request.
    pub fn not_delivered(&self) -> bool {
        matches!(self, TransportError::Unreachable(_))
    }
}

/// A boxed future, as returned by [`PeerTransport::call`].
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Delivers a peer call's encoded payload to `target` and returns its encoded reply.
pub trait PeerTransport: Send + Sync + 'static {
    /// Sends `payload` as `call` to the replica `target` at `node`; at most `timeout`.
    fn call(
        &self,
        target: NodeId,
        node: &Node,
        call: PeerCall,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<Result<Vec<u8>, TransportError>>;
}

/// Sends a typed request over `transport` and decodes the typed reply.
pub async fn call_peer<Req: Serialize, Resp: DeserializeOwned>(
    transport: &dyn PeerTransport,
    target: NodeId,
    node: &Node,
    call: PeerCall,
    request: &Req,
    timeout: Duration,
) -> Result<Resp, TransportError> {
    let reply = transport.call(target, node, call, encode(request), timeout).await?;
    decode(&reply).map_err(|e| TransportError::Failed(format!("undecodable reply to {call:?}: {e}")))
}

/// openraft's network factory over a [`PeerTransport`].
#[derive(Clone)]
pub struct Network {
    transport: Arc<dyn PeerTransport>,
}

impl Network {
    /// A network that sends through `transport`.
    pub fn new(transport: Arc<dyn PeerTransport>) -> Self {
        Self { transport }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerConnection {
        PeerConnection { target, node: node.clone(), transport: self.transport.clone() }
    }
}

/// openraft's connection to one peer.
pub struct PeerConnection {
    target: NodeId,
    node: Node,
    transport: Arc<dyn PeerTransport>,
}

impl PeerConnection {
    async fn send<Req, Resp, E>(
        &self,
        call: PeerCall,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Node, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let reply: Result<Resp, RaftError<NodeId, E>> =
            call_peer(&*self.transport, self.target, &self.node, call, request, option.hard_ttl()).await.map_err(
                |e| match e {
                    TransportError::Unreachable(_) => RPCError::Unreachable(UnreachableError::new(&e)),
                    _ => RPCError::Network(NetworkError::new(&e)),
                },
            )?;
        reply.map_err(|e| RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.send(PeerCall::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>> {
        self.send(PeerCall::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.send(PeerCall::Vote, &rpc, &option).await
    }
}

/// Why an incoming peer call could not be served.
#[derive(Debug, thiserror::Error)]
pub enum PeerCallError {
    /// The payload does not decode: a peer of an incompatible version, or garbage.
    #[error("undecodable {call:?} request: {reason}")]
    BadRequest {
        /// The call.
        call: PeerCall,
        /// Why decoding failed.
        reason: String,
    },
}

fn decode_request<T: DeserializeOwned>(call: PeerCall, payload: &[u8]) -> Result<T, PeerCallError> {
    decode(payload).map_err(|reason| PeerCallError::BadRequest { call, reason })
}

/// Decodes the request, runs `serve` on it, and encodes what it returns.
async fn decode_then<Req, Resp, F, Fut>(call: PeerCall, payload: &[u8], serve: F) -> Result<Vec<u8>, PeerCallError>
where
    Req: DeserializeOwned,
    Resp: Serialize,
    F: FnOnce(Req) -> Fut,
    Fut: Future<Output = Resp>,
{
    let request = decode_request(call, payload)?;
    Ok(encode(&serve(request).await))
}

/// Serves an incoming Raft call (append entries, vote, snapshot chunk) on the local `raft`, returning
/// the encoded `Result` the sending [`PeerConnection`] expects. The cluster's own calls are not Raft's
/// and are refused here.
pub async fn serve_raft_call(raft: &Raft, call: PeerCall, payload: &[u8]) -> Result<Vec<u8>, PeerCallError> {
    match call {
        PeerCall::AppendEntries => decode_then(call, payload, |r| raft.append_entries(r)).await,
        PeerCall::Vote => decode_then(call, payload, |r| raft.vote(r)).await,
        PeerCall::InstallSnapshot => decode_then(call, payload, |r| raft.install_snapshot(r)).await,
        PeerCall::Forward | PeerCall::ReadIndex | PeerCall::NodeStatus => {
            Err(PeerCallError::BadRequest { call, reason: "not a Raft call".into() })
        }
    }
}
