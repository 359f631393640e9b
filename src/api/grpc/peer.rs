//! The peer service and [`GrpcTransport`], the gRPC [`PeerTransport`] between replicas.
//!
//! One lazily connected HTTP/2 channel per peer address is kept and reused for every call (tonic
//! multiplexes concurrent calls on it). Each call carries its own deadline, sized by openraft (the
//! heartbeat-based TTL) or by the cluster layer (the write budget).
//!
//! How a channel reaches its endpoint is injectable ([`GrpcTransport::with_connector`]): by default a lazily
//! connected TCP channel; the deterministic simulation (`jepsen/tests/sim.rs`) dials its simulated network instead,
//! so the same transport code runs there.
//!
//! A call made while serving a client request (a forwarded write, a read-index call) carries that request's id as
//! `x-request-id` metadata ([`request_id`]); the receiving replica serves it in the same request scope, so both
//! replicas log the same `request_id`. Replicas that do not know the key ignore it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

use super::peer_pb::raft_peer_client::RaftPeerClient;
use super::peer_pb::raft_peer_server::{RaftPeer, RaftPeerServer};
use super::peer_pb::PeerPayload;
use super::{Connector, MAX_PEER_MESSAGE_BYTES};
use crate::cluster::{request_id, ReplicaNode};
use crate::raft::network::BoxFuture;
use crate::raft::{Node, NodeId, PeerCall, PeerTransport, TransportError};

/// How long to wait for a TCP connection to a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Sends peer calls over gRPC.
#[derive(Default)]
pub struct GrpcTransport {
    channels: Mutex<HashMap<String, Channel>>,
    /// Addresses to dial instead of a peer's advertised Raft address (`jm server --peer-via`).
    via: HashMap<NodeId, String>,
    /// Opens the channels; `None`: a lazily connected TCP channel.
    connector: Option<Connector>,
}

impl GrpcTransport {
    /// A transport with no connections yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The same transport, dialing peer `id` at `via[id]` instead of its advertised address: for a proxy between
    /// replicas (the chaos suite's partitions) or a NAT. Membership and what other replicas see do not change.
    pub fn with_dial_via(mut self, via: HashMap<NodeId, String>) -> Self {
        self.via = via;
        self
    }

    /// The same transport, opening its channels with `connector` (given the configured endpoint) instead of over
    /// TCP: a simulated network, or any other stream.
    pub fn with_connector(mut self, connector: Connector) -> Self {
        self.connector = Some(connector);
        self
    }

    fn channel(&self, addr: &str) -> Result<Channel, TransportError> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| TransportError::Unreachable(format!("bad peer address {addr}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        let channel = match &self.connector {
            Some(connect) => connect(&endpoint),
            None => endpoint.connect_lazy(),
        };
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}

fn transport_error(status: Status, timeout: Duration) -> TransportError {
    match status.code() {
        Code::DeadlineExceeded | Code::Cancelled => TransportError::Timeout(timeout),
        // tonic reports a failed TCP connect as Unavailable: the request never left.
        Code::Unavailable if is_connect_failure(&status) => TransportError::Unreachable(status.message().to_string()),
        _ => TransportError::Failed(format!("{:?}: {}", status.code(), status.message())),
    }
}

fn is_connect_failure(status: &Status) -> bool {
    let mut text = status.message().to_lowercase();
    let mut source = std::error::Error::source(status);
    while let Some(s) = source {
        text.push_str(&s.to_string().to_lowercase());
        source = s.source();
    }
    text.contains("connect") || text.contains("refused")
}

impl PeerTransport for GrpcTransport {
    fn call(
        &self,
        target: NodeId,
        node: &Node,
        call: PeerCall,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<Result<Vec<u8>, TransportError>> {
        let channel = self.channel(self.via.get(&target).unwrap_or(&node.raft_addr));
        // Read here, in the caller's task: the returned future may be polled anywhere.
        let request_id = request_id::current().and_then(|id| id.parse::<MetadataValue<Ascii>>().ok());
        Box::pin(async move {
            let mut client = RaftPeerClient::new(channel?)
                .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES);
            let mut request = Request::new(PeerPayload { data: payload });
            request.set_timeout(timeout);
            if let Some(id) = request_id {
                request.metadata_mut().insert(request_id::HEADER, id);
            }
            let reply = tokio::time::timeout(timeout, async {
                match call {
                    PeerCall::AppendEntries => client.append_entries(request).await,
                    PeerCall::Vote => client.vote(request).await,
                    PeerCall::InstallSnapshot => client.install_snapshot(request).await,
                    PeerCall::Forward => client.forward(request).await,
                    PeerCall::ReadIndex => client.read_index(request).await,
                    PeerCall::NodeStatus => client.node_status(request).await,
                }
            })
            .await
            .map_err(|_| TransportError::Timeout(timeout))?;
            reply.map(|r| r.into_inner().data).map_err(|s| transport_error(s, timeout))
        })
    }
}

/// The peer service of one replica.
pub struct PeerService {
    node: Arc<ReplicaNode>,
}

/// The peer service, ready to be added to a tonic server.
pub fn server(node: Arc<ReplicaNode>) -> RaftPeerServer<PeerService> {
    RaftPeerServer::new(PeerService { node })
        .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES)
}

impl PeerService {
    async fn serve(&self, call: PeerCall, request: Request<PeerPayload>) -> Result<Response<PeerPayload>, Status> {
        let id = request.metadata().get(request_id::HEADER).and_then(|v| v.to_str().ok());
        let id = id.filter(|id| request_id::is_valid(id)).map(str::to_string);
        let payload = request.into_inner().data;
        let served = match id {
            Some(id) => request_id::scope(id, self.node.serve_peer_call(call, &payload)).await,
            None => self.node.serve_peer_call(call, &payload).await,
        };
        match served {
            Ok(data) => Ok(Response::new(PeerPayload { data })),
            Err(e) => Err(Status::invalid_argument(e.to_string())),
        }
    }
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn append_entries(&self, r: Request<PeerPayload>) -> Result<Response<PeerPayload>, Status> {
        self.serve(PeerCall::AppendEntries, r).await
    }
    async fn vote(&self, r: Request<PeerPayload>) -> Result<Response<PeerPayload>, Status> {
        self.serve(PeerCall::Vote, r).await
    }
    async fn install_snapshot(&self, r: Request<PeerPayload>) -> Result<Response<PeerPayload>, Status> {
        self.serve(PeerCall::InstallSnapshot, r).await
    }
    async fn forward(&self, r: Request<PeerPayload>) -> Result<Response<PeerPayload>, Status> {
        self.serve(PeerCall::Forward, r).await
    }
    async fn read_index(&self, r: Request<PeerPayload>) -> Result<Response<PeerPayload>, Status> {
        self.serve(PeerCall::ReadIndex, r).await
    }
    async fn node_status(&self, r: Request<PeerPayload>) -> Result<Response<PeerPayload>, Status> {
        self.serve(PeerCall::NodeStatus, r).await
    }
}
