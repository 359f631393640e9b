//! The leader's live subtask view, served to every replica: [`GrpcRuntimeSource`] answers from this replica's
//! [`LeaderServices`] when it leads, and otherwise asks the leader's `GetJobRuntime` with `local_only` set (so the
//! leader never forwards the question again). One lazily connected channel per replica is reused.

use std::sync::Arc;
use std::time::Duration;

use super::convert;
use super::pb::job_manager_client::JobManagerClient;
use super::pb::GetJobRuntimeRequest;
use super::taskmanager::Channels;
use crate::dispatcher::RuntimeSource;
use crate::leader::runtime::JobRuntime;
use crate::leader::LeaderServices;
use crate::taskmanager::protocol::BoxFuture;

/// Live subtask figures from this replica's leader services or from the leader's.
pub struct GrpcRuntimeSource {
    services: Arc<LeaderServices>,
    channels: Channels,
}

impl GrpcRuntimeSource {
    /// A source over this replica's leader services.
    pub fn new(services: Arc<LeaderServices>) -> Self {
        Self { services, channels: Channels::default() }
    }
}

impl RuntimeSource for GrpcRuntimeSource {
    fn local(&self, job_id: &str) -> Option<JobRuntime> {
        self.services.job_runtime(job_id)
    }

    fn fetch(&self, api_addr: &str, job_id: &str, timeout: Duration) -> BoxFuture<Result<Option<JobRuntime>, String>> {
        let channel = self.channels.get(api_addr).map_err(|e| e.to_string());
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
