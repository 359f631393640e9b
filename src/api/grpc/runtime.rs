//! The leader's live subtask view, served to every replica: [`GrpcRuntimeSource`] answers from this replica's
//! [`LeaderServices`] when it leads, and otherwise asks the leader's `GetJobRuntime` with `local_only` set (so the
//! leader never forwards the question again). One lazily connected channel per replica is reused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use super::convert;
use super::pb::job_manager_client::JobManagerClient;
use super::pb::GetJobRuntimeRequest;
use crate::dispatcher::RuntimeSource;
use crate::leader::runtime::JobRuntime;
use crate::leader::LeaderServices;
use crate::taskmanager::protocol::BoxFuture;

/// Live subtask figures from this replica's leader services or from the leader's.
pub struct GrpcRuntimeSource {
    services: Arc<LeaderServices>,
    channels: Mutex<HashMap<String, Channel>>,
}

impl GrpcRuntimeSource {
    /// A source over this replica's leader services.
    pub fn new(services: Arc<LeaderServices>) -> Self {
        Self { services, channels: Mutex::new(HashMap::new()) }
    }

    fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("bad address {addr}: {e}"))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}

impl RuntimeSource for GrpcRuntimeSource {
    fn local(&self, job_id: &str) -> Option<JobRuntime> {
        self.services.job_runtime(job_id)
    }

    fn fetch(&self, api_addr: &str, job_id: &str, timeout: Duration) -> BoxFuture<Result<Option<JobRuntime>, String>> {
        let channel = self.channel(api_addr);
        let request = GetJobRuntimeRequest { job_id: job_id.to_string(), local_only: true };
        Box::pin(async move {
            let mut client = JobManagerClient::new(channel?);
            let mut request = tonic::Request::new(request);
            request.set_timeout(timeout);
            let reply =
                client.get_job_runtime(request).await.map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
            let reply = reply.into_inner();
            Ok(reply.leading.then(|| convert::job_runtime_from(reply.subtasks)))
        })
    }
}
