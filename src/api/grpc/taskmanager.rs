//! The TaskManager protocol over gRPC: the `TaskExecutor` service a TaskManager serves, the client API's
//! `TaskManagerCall` method, and the two gateways that send [`ToTaskManager`] / [`ToJobManager`] messages.
//!
//! Messages are the bincode-encoded Rust types of [`crate::taskmanager::protocol`], in one `bytes` field: the
//! protocol is internal, between binaries of the same version. One lazily connected HTTP/2 channel per address is
//! reused for every call; how it connects is injectable (`with_connector`, as for the peer transport), so the
//! deterministic simulation runs TaskManagers on its simulated network.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

use super::pb::job_manager_client::JobManagerClient;
use super::pb::TaskManagerEnvelope;
use super::tm_pb::task_executor_client::TaskExecutorClient;
use super::tm_pb::task_executor_server::{TaskExecutor, TaskExecutorServer};
use super::tm_pb::Envelope;
use super::Connector;
use crate::raft::command::{decode, encode};
use crate::taskmanager::protocol::{
    BoxFuture, FromJobManager, FromTaskManager, GatewayError, JobManagerGateway, TaskExecutorGateway,
    TaskExecutorHandler, ToJobManager, ToTaskManager,
};

/// Largest protocol message (a deploy carries a job spec of up to 1 MiB).
const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;
/// How long to wait for a TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// One reused channel per address (also used for replica-to-replica client calls, `runtime`).
#[derive(Default)]
pub(super) struct Channels {
    channels: Mutex<HashMap<String, Channel>>,
    /// Opens channels some other way than TCP (a simulated network).
    connector: Option<Connector>,
}

impl Channels {
    pub(super) fn get(&self, addr: &str) -> Result<Channel, GatewayError> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| GatewayError::Unreachable(format!("bad address {addr}: {e}")))?
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

fn gateway_error(status: Status, timeout: Duration) -> GatewayError {
    match status.code() {
        Code::DeadlineExceeded | Code::Cancelled => GatewayError::Timeout(timeout),
        Code::Unavailable => GatewayError::Unreachable(status.message().to_string()),
        code => GatewayError::Failed(format!("{code:?}: {}", status.message())),
    }
}

fn decode_reply<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, GatewayError> {
    decode(bytes).map_err(|e| GatewayError::Failed(format!("undecodable reply (version mismatch?): {e}")))
}

fn decode_request<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Status> {
    decode(bytes).map_err(|e| Status::invalid_argument(format!("undecodable TaskManager protocol message: {e}")))
}

fn envelope<T: Serialize>(value: &T) -> Vec<u8> {
    encode(value)
}

/// Sends [`ToTaskManager`] commands to TaskManagers.
#[derive(Default)]
pub struct GrpcTaskExecutorGateway {
    channels: Channels,
}

impl GrpcTaskExecutorGateway {
    /// A gateway with no connections yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The same gateway, opening its channels with `connector` instead of over TCP.
    pub fn with_connector(mut self, connector: Connector) -> Self {
        self.channels.connector = Some(connector);
        self
    }
}

impl TaskExecutorGateway for GrpcTaskExecutorGateway {
    fn call(
        &self,
        address: &str,
        request: ToTaskManager,
        timeout: Duration,
    ) -> BoxFuture<Result<FromTaskManager, GatewayError>> {
        let channel = self.channels.get(address);
        Box::pin(async move {
            let mut client = TaskExecutorClient::new(channel?)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
            let mut grpc_request = Request::new(Envelope { payload: envelope(&request) });
            grpc_request.set_timeout(timeout);
            let reply = tokio::time::timeout(timeout, client.call(grpc_request))
                .await
                .map_err(|_| GatewayError::Timeout(timeout))?
                .map_err(|s| gateway_error(s, timeout))?;
            decode_reply(&reply.into_inner().payload)
        })
    }
}

/// Sends [`ToJobManager`] requests to replicas.
#[derive(Default)]
pub struct GrpcJobManagerGateway {
    channels: Channels,
}

impl GrpcJobManagerGateway {
    /// A gateway with no connections yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The same gateway, opening its channels with `connector` instead of over TCP.
    pub fn with_connector(mut self, connector: Connector) -> Self {
        self.channels.connector = Some(connector);
        self
    }
}

impl JobManagerGateway for GrpcJobManagerGateway {
    fn call(
        &self,
        address: &str,
        request: ToJobManager,
        timeout: Duration,
    ) -> BoxFuture<Result<FromJobManager, GatewayError>> {
        let channel = self.channels.get(address);
        Box::pin(async move {
            let mut client = JobManagerClient::new(channel?)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
            let mut grpc_request = Request::new(TaskManagerEnvelope { payload: envelope(&request) });
            grpc_request.set_timeout(timeout);
            let reply = tokio::time::timeout(timeout, client.task_manager_call(grpc_request))
                .await
                .map_err(|_| GatewayError::Timeout(timeout))?
                .map_err(|s| gateway_error(s, timeout))?;
            decode_reply(&reply.into_inner().payload)
        })
    }
}

/// The `TaskExecutor` service of a TaskManager.
pub struct TaskExecutorService {
    handler: Arc<dyn TaskExecutorHandler>,
}

/// The `TaskExecutor` service, ready to be added to a tonic server.
pub fn task_executor_server(handler: Arc<dyn TaskExecutorHandler>) -> TaskExecutorServer<TaskExecutorService> {
    TaskExecutorServer::new(TaskExecutorService { handler })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

#[tonic::async_trait]
impl TaskExecutor for TaskExecutorService {
    async fn call(&self, request: Request<Envelope>) -> Result<Response<Envelope>, Status> {
        let command: ToTaskManager = decode_request(&request.into_inner().payload)?;
        let reply = self.handler.handle(command).await;
        Ok(Response::new(Envelope { payload: envelope(&reply) }))
    }
}

/// Serves the `TaskExecutor` service on `listener` until `shutdown` resolves.
pub async fn serve_task_executor(
    handler: Arc<dyn TaskExecutorHandler>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    serve_task_executor_on(handler, super::incoming(listener), shutdown).await
}

/// Serves the `TaskExecutor` service on the connections `incoming` yields (any transport) until `shutdown` resolves.
pub async fn serve_task_executor_on<S, IO, E>(
    handler: Arc<dyn TaskExecutorHandler>,
    incoming: S,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error>
where
    S: tokio_stream::Stream<Item = Result<IO, E>>,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + tonic::transport::server::Connected + Unpin + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tonic::transport::Server::builder()
        .add_service(task_executor_server(handler))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// Decodes a `TaskManagerCall` payload, for the client API service.
pub(super) fn decode_job_manager_request(payload: &[u8]) -> Result<ToJobManager, Status> {
    decode_request(payload)
}

/// Encodes a `TaskManagerCall` reply, for the client API service.
pub(super) fn encode_job_manager_reply(reply: &FromJobManager) -> Vec<u8> {
    envelope(reply)
}
