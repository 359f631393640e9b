//! gRPC: two services on two listeners of every replica, and one on every TaskManager.
//!
//! * `jobmanager.v1.JobManager` ([`service`]): the client API. Writes are forwarded to the leader by
//!   the cluster layer, so any replica serves any request. Its `TaskManagerCall` method carries the
//!   TaskManagers' registrations, heartbeats and task events ([`taskmanager`]).
//! * `jobmanager.peer.v1.RaftPeer` ([`peer`]): replica-to-replica calls carrying bincode payloads, plus
//!   [`GrpcTransport`], the [`PeerTransport`](crate::raft::PeerTransport) that sends them over one
//!   reused HTTP/2 channel per peer.
//! * `jobmanager.taskmanager.v1.TaskExecutor` ([`taskmanager`]): served by each TaskManager, for the
//!   leader's JobMasters (deploy, cancel, checkpoints, reconcile), plus the gateways both sides call with.
//!
//! * `jobmanager.admin.v1.Admin` ([`admin`]): test-only, on the client API's listener: arms the failpoints of a
//!   build with the `failpoints` feature.
//!
//! Protobuf types stay here: [`convert`] turns domain values into messages, [`status`] maps every
//! error to a `tonic::Status` with a message a person can act on. [`client::ClusterClient`] is the
//! client the CLI, the benchmark and the tests use.

pub mod admin;
pub mod client;
pub mod convert;
pub mod peer;
pub mod runtime;
pub mod service;
pub mod status;
pub mod taskmanager;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint};

pub use client::{ClientError, ClusterClient};
pub use peer::GrpcTransport;

use crate::dispatcher::Dispatcher;
use crate::taskmanager::protocol::JobManagerHandler;

/// Generated protobuf types of the client API.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("jobmanager.v1");
}

/// Generated protobuf types of the peer service.
#[allow(missing_docs, clippy::all)]
pub mod peer_pb {
    tonic::include_proto!("jobmanager.peer.v1");
}

/// Generated protobuf types of the admin service.
#[allow(missing_docs, clippy::all)]
pub mod admin_pb {
    tonic::include_proto!("jobmanager.admin.v1");
}

/// Generated protobuf types of the TaskManager service.
#[allow(missing_docs, clippy::all)]
pub mod tm_pb {
    tonic::include_proto!("jobmanager.taskmanager.v1");
}

/// The largest client request accepted (a 1 MiB job spec plus framing).
pub const MAX_CLIENT_MESSAGE_BYTES: usize = 2 * 1024 * 1024;
/// The largest peer message accepted (a batch of log entries or a snapshot chunk).
pub const MAX_PEER_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Opens a channel to an endpoint some other way than TCP (see [`GrpcTransport::with_connector`]), e.g. with
/// [`Endpoint::connect_with_connector_lazy`] over a simulated network. Called in the runtime that uses the channel.
pub type Connector = std::sync::Arc<dyn Fn(&Endpoint) -> Channel + Send + Sync>;

/// Serves the peer service on the `raft` connections and the client API on the `api` connections until
/// `shutdown` resolves. The connection streams are injected: [`incoming`] turns a TCP listener into
/// one, and a simulation can pass its own.
pub async fn serve<R, A, IO, E>(
    dispatcher: Dispatcher,
    task_managers: Arc<dyn JobManagerHandler>,
    raft: R,
    api: A,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error>
where
    R: Stream<Item = Result<IO, E>>,
    A: Stream<Item = Result<IO, E>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let peer_server = tonic::transport::Server::builder()
        .add_service(peer::server(dispatcher.node().clone()))
        .serve_with_incoming_shutdown(raft, stopped(rx.clone()));
    let api_server = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(256)
        .add_service(service::server(dispatcher, task_managers))
        .add_service(admin::server())
        .serve_with_incoming_shutdown(api, stopped(rx));
    tokio::try_join!(peer_server, api_server)?;
    Ok(())
}

/// The connections accepted by a TCP listener, with Nagle's algorithm off: small gRPC replies must
/// leave at once, not wait for the peer's delayed ACK (40 ms on Linux). tonic's own `tcp_nodelay`
/// applies only to listeners it binds itself.
pub fn incoming(listener: TcpListener) -> impl Stream<Item = std::io::Result<TcpStream>> {
    TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}

/// Binds a listener, with an error that names the address.
pub async fn bind(addr: &str) -> Result<TcpListener, String> {
    let parsed: SocketAddr = match addr.parse() {
        Ok(a) => a,
        Err(_) => tokio::net::lookup_host(addr)
            .await
            .map_err(|e| format!("cannot resolve {addr}: {e}"))?
            .next()
            .ok_or_else(|| format!("{addr} resolves to no address"))?,
    };
    TcpListener::bind(parsed).await.map_err(|e| format!("cannot listen on {addr}: {e}"))
}
