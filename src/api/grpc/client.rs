//! [`ClusterClient`]: a client of the job manager API that may be pointed at any replicas.
//!
//! It connects to the first replica that accepts a connection, in the order given, and moves on to
//! the next when a replica cannot be reached. It does not retry requests a replica answered: the
//! replica has already retried across leader changes, and its answer (even an error) stands.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::pb::job_manager_client::JobManagerClient;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// None of the replicas could be reached.
    #[error("no replica reachable at {addrs}: {last}")]
    Unreachable {
        /// The addresses tried.
        addrs: String,
        /// The last connection error.
        last: String,
    },
    /// A replica answered with an error.
    #[error("{}", .0.message())]
    Status(Status),
}

impl ClientError {
    /// The gRPC code, if a replica answered.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Status(s) => Some(s.code()),
            ClientError::Unreachable { .. } => None,
        }
    }
}

/// A client of the job manager API.
#[derive(Clone)]
pub struct ClusterClient {
    addrs: Vec<String>,
    connect_timeout: Duration,
    request_timeout: Duration,
}

impl ClusterClient {
    /// A client of the replicas at `addrs` (`host:port`).
    pub fn new(addrs: Vec<String>) -> Self {
        Self { addrs, connect_timeout: Duration::from_secs(1), request_timeout: Duration::from_secs(30) }
    }

    /// Sets how long one request may take.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The addresses, in the order they are tried.
    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    /// A connection to the first reachable replica, and its address.
    pub async fn connect(&self) -> Result<(String, JobManagerClient<Channel>), ClientError> {
        let mut last = String::from("no address given");
        for addr in &self.addrs {
            match self.connect_to(addr).await {
                Ok(client) => return Ok((addr.clone(), client)),
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        Err(ClientError::Unreachable { addrs: self.addrs.join(","), last })
    }

    /// A connection to one replica.
    pub async fn connect_to(&self, addr: &str) -> Result<JobManagerClient<Channel>, String> {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("bad address: {e}"))?
            .connect_timeout(self.connect_timeout)
            .timeout(self.request_timeout)
            .tcp_nodelay(true);
        let channel = endpoint.connect().await.map_err(|e| error_chain(&e))?;
        Ok(JobManagerClient::new(channel).max_decoding_message_size(64 * 1024 * 1024))
    }

    /// Runs `call` against the first reachable replica; if the connection breaks before the replica
    /// answers, tries the next one.
    pub async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(JobManagerClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut last = String::from("no address given");
        for addr in &self.addrs {
            let client = match self.connect_to(addr).await {
                Ok(c) => c,
                Err(e) => {
                    last = format!("{addr}: {e}");
                    continue;
                }
            };
            match call(client).await {
                Ok(reply) => return Ok(reply.into_inner()),
                Err(s) if s.code() == Code::Unavailable && is_transport_failure(&s) => {
                    last = format!("{addr}: {}", s.message());
                }
                Err(s) => return Err(ClientError::Status(s)),
            }
        }
        Err(ClientError::Unreachable { addrs: self.addrs.join(","), last })
    }
}

fn is_transport_failure(s: &Status) -> bool {
    // A status the replica itself produced carries our own message; a broken connection is reported
    // by tonic with a transport error as its source.
    std::error::Error::source(s).is_some()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
