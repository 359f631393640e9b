//! The client API service, `jobmanager.v1.JobManager`: protobuf in, Dispatcher call, protobuf out.
//!
//! Every call runs in a `request{node_id, request_id, rpc}` span and [`request_id::scope`]: the id is the caller's
//! `x-request-id` metadata if it sent a sane one (printable ASCII, at most 64 characters), else a fresh one, and is
//! echoed in the reply's (or error's) `x-request-id` metadata. Writes forwarded to the leader carry it, so the
//! leader's log lines for the call share it. One line per call at completion, with its gRPC code and latency: at
//! info for control-plane writes (submit, cancel, savepoints, compaction), at debug for reads, job-metadata puts
//! and TaskManager calls when they succeed (they come at high rates: polling, benchmarks, heartbeats), at info for
//! a client error and at warn for a server-side one.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

use super::convert;
use super::pb;
use super::pb::job_manager_server::{JobManager, JobManagerServer};
use super::taskmanager::{decode_job_manager_request, encode_job_manager_reply};
use super::MAX_CLIENT_MESSAGE_BYTES;
use crate::cluster::request_id;
use crate::dispatcher::Dispatcher;
use crate::taskmanager::protocol::JobManagerHandler;

/// The client API service of one replica.
pub struct JobManagerService {
    dispatcher: Dispatcher,
    task_managers: Arc<dyn JobManagerHandler>,
}

/// The client API service, ready to be added to a tonic server. Requests above
/// [`MAX_CLIENT_MESSAGE_BYTES`] are refused by tonic with OUT_OF_RANGE before they are decoded.
pub fn server(
    dispatcher: Dispatcher,
    task_managers: Arc<dyn JobManagerHandler>,
) -> JobManagerServer<JobManagerService> {
    JobManagerServer::new(JobManagerService { dispatcher, task_managers })
        .max_decoding_message_size(MAX_CLIENT_MESSAGE_BYTES)
        .max_encoding_message_size(64 * 1024 * 1024)
}

/// How a call's completion is logged when it succeeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loud {
    /// A control-plane write: info.
    Write,
    /// A read, a bulk write or a TaskManager call: debug.
    Quiet,
}

impl JobManagerService {
    fn id(&self) -> u64 {
        self.dispatcher.node().id
    }

    /// Serves one call with `handler` in the request's span and id scope, logs its completion, and echoes the id.
    async fn traced<Req, Rep, Fut>(
        &self,
        rpc: &'static str,
        loud: Loud,
        request: Request<Req>,
        handler: impl FnOnce(Req) -> Fut,
    ) -> Result<Response<Rep>, Status>
    where
        Fut: Future<Output = Result<Response<Rep>, Status>>,
    {
        let supplied = request.metadata().get(request_id::HEADER).and_then(|v| v.to_str().ok());
        let id = request_id::from_client(supplied);
        let span = tracing::info_span!("request", node_id = self.id(), request_id = %id, rpc);
        let started = Instant::now();
        let served = async move {
            let outcome = handler(request.into_inner()).await;
            let latency_ms = request_id::latency_ms(started);
            match &outcome {
                Ok(_) if loud == Loud::Write => tracing::info!(code = "OK", latency_ms, "request finished"),
                Ok(_) => tracing::debug!(code = "OK", latency_ms, "request finished"),
                Err(s) if server_side(s.code()) => {
                    tracing::warn!(code = ?s.code(), error = s.message(), latency_ms, "request failed")
                }
                Err(s) => tracing::info!(code = ?s.code(), error = s.message(), latency_ms, "request failed"),
            }
            outcome
        };
        let outcome = request_id::scope(id.clone(), served).instrument(span).await;
        let echo: Option<MetadataValue<Ascii>> = id.parse().ok();
        match (outcome, echo) {
            (Ok(mut reply), Some(echo)) => {
                reply.metadata_mut().insert(request_id::HEADER, echo);
                Ok(reply)
            }
            (Err(mut status), Some(echo)) => {
                status.metadata_mut().insert(request_id::HEADER, echo);
                Err(status)
            }
            (outcome, None) => outcome,
        }
    }
}

/// True for the codes that say the server, not the request, is at fault.
fn server_side(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::Internal | Code::Unknown | Code::DeadlineExceeded | Code::DataLoss)
}

#[tonic::async_trait]
impl JobManager for JobManagerService {
    async fn submit_job(&self, request: Request<pb::SubmitJobRequest>) -> Result<Response<pb::SubmitJobReply>, Status> {
        self.traced("SubmitJob", Loud::Write, request, |r| async move {
            let submitted = self.dispatcher.submit(&r.spec, &r.idempotency_key).await?;
            Ok(Response::new(pb::SubmitJobReply {
                job_id: submitted.job_id,
                created: submitted.created,
                write: Some(convert::write_info(self.id(), &submitted.written)),
            }))
        })
        .await
    }

    async fn cancel_job(&self, request: Request<pb::CancelJobRequest>) -> Result<Response<pb::CancelJobReply>, Status> {
        self.traced("CancelJob", Loud::Write, request, |r| async move {
            let (status, written) = self.dispatcher.cancel(&r.job_id).await?;
            Ok(Response::new(pb::CancelJobReply {
                job_id: r.job_id,
                status: status.as_flink_str().to_string(),
                write: Some(convert::write_info(self.id(), &written)),
            }))
        })
        .await
    }

    async fn get_job(&self, request: Request<pb::GetJobRequest>) -> Result<Response<pb::GetJobReply>, Status> {
        self.traced("GetJob", Loud::Quiet, request, |r| async move {
            let (job, read) = self.dispatcher.get(&r.job_id, convert::consistency(r.consistency)).await?;
            Ok(Response::new(pb::GetJobReply { job: Some(convert::job(&job)), read: Some(convert::read_info(&read)) }))
        })
        .await
    }

    async fn list_jobs(&self, request: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsReply>, Status> {
        self.traced("ListJobs", Loud::Quiet, request, |r| async move {
            let (jobs, read) = self.dispatcher.list(convert::consistency(r.consistency), convert::job_summary).await?;
            Ok(Response::new(pb::ListJobsReply { jobs, read: Some(convert::read_info(&read)) }))
        })
        .await
    }

    async fn put_job_metadata(
        &self,
        request: Request<pb::PutJobMetadataRequest>,
    ) -> Result<Response<pb::PutJobMetadataReply>, Status> {
        self.traced("PutJobMetadata", Loud::Quiet, request, |r| async move {
            let written = self.dispatcher.put_metadata(&r.job_id, &r.key, r.value).await?;
            Ok(Response::new(pb::PutJobMetadataReply { write: Some(convert::write_info(self.id(), &written)) }))
        })
        .await
    }

    async fn get_job_metadata(
        &self,
        request: Request<pb::GetJobMetadataRequest>,
    ) -> Result<Response<pb::GetJobMetadataReply>, Status> {
        self.traced("GetJobMetadata", Loud::Quiet, request, |r| async move {
            let (value, read) =
                self.dispatcher.get_metadata(&r.job_id, &r.key, convert::consistency(r.consistency)).await?;
            Ok(Response::new(pb::GetJobMetadataReply { value, read: Some(convert::read_info(&read)) }))
        })
        .await
    }

    async fn cluster_status(
        &self,
        request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusReply>, Status> {
        self.traced("ClusterStatus", Loud::Quiet, request, |_| async move {
            let node = self.dispatcher.node();
            let members = node.members();
            let statuses = node.cluster_status().await;
            let replicas = statuses
                .iter()
                .map(|(id, s)| convert::replica_status(*id, s.as_ref().map_err(|e| e.to_string()), members.get(id)))
                .collect();
            let m = node.metrics();
            Ok(Response::new(pb::ClusterStatusReply {
                served_by: node.id,
                leader: m.current_leader,
                term: m.current_term,
                replicas,
            }))
        })
        .await
    }

    async fn compact(&self, request: Request<pb::CompactRequest>) -> Result<Response<pb::CompactReply>, Status> {
        self.traced("Compact", Loud::Write, request, |_| async move {
            let node = self.dispatcher.node();
            let (snapshot_index, purged_index) = node.compact(std::time::Duration::from_secs(60)).await?;
            Ok(Response::new(pb::CompactReply { served_by: node.id, snapshot_index, purged_index }))
        })
        .await
    }

    async fn trigger_savepoint(
        &self,
        request: Request<pb::TriggerSavepointRequest>,
    ) -> Result<Response<pb::TriggerSavepointReply>, Status> {
        self.traced("TriggerSavepoint", Loud::Write, request, |r| async move {
            let target_dir = Some(r.target_dir);
            let request_id = Some(r.request_id);
            let (request_id, written) =
                self.dispatcher.trigger_savepoint(&r.job_id, target_dir, r.terminate, request_id).await?;
            Ok(Response::new(pb::TriggerSavepointReply {
                request_id,
                write: Some(convert::write_info(self.id(), &written)),
            }))
        })
        .await
    }

    async fn get_savepoint(
        &self,
        request: Request<pb::GetSavepointRequest>,
    ) -> Result<Response<pb::GetSavepointReply>, Status> {
        self.traced("GetSavepoint", Loud::Quiet, request, |r| async move {
            let consistency = convert::consistency(r.consistency);
            let (savepoint, read) = self.dispatcher.get_savepoint(&r.job_id, &r.request_id, consistency).await?;
            Ok(Response::new(convert::savepoint_request(&savepoint, &read)))
        })
        .await
    }

    async fn dispose_savepoint(
        &self,
        request: Request<pb::DisposeSavepointRequest>,
    ) -> Result<Response<pb::DisposeSavepointReply>, Status> {
        let r = request.into_inner();
        let (request_id, written) = self.dispatcher.dispose_savepoint(&r.path).await?;
        Ok(Response::new(pb::DisposeSavepointReply {
            request_id,
            write: Some(convert::write_info(self.id(), &written)),
        }))
    }

    async fn get_savepoint_disposal(
        &self,
        request: Request<pb::GetSavepointDisposalRequest>,
    ) -> Result<Response<pb::GetSavepointDisposalReply>, Status> {
        let r = request.into_inner();
        let consistency = convert::consistency(r.consistency);
        let (disposal, read) = self.dispatcher.get_savepoint_disposal(&r.request_id, consistency).await?;
        Ok(Response::new(convert::savepoint_disposal(&disposal, &read)))
    }

    async fn list_task_managers(
        &self,
        request: Request<pb::ListTaskManagersRequest>,
    ) -> Result<Response<pb::ListTaskManagersReply>, Status> {
        self.traced("ListTaskManagers", Loud::Quiet, request, |r| async move {
            let (tms, read) = self.dispatcher.task_managers(convert::consistency(r.consistency)).await?;
            Ok(Response::new(pb::ListTaskManagersReply {
                task_managers: tms.iter().map(|(tm, free)| convert::task_manager(tm, *free)).collect(),
                read: Some(convert::read_info(&read)),
            }))
        })
        .await
    }

    async fn list_slot_leases(
        &self,
        request: Request<pb::ListSlotLeasesRequest>,
    ) -> Result<Response<pb::ListSlotLeasesReply>, Status> {
        self.traced("ListSlotLeases", Loud::Quiet, request, |r| async move {
            let (leases, read) = self.dispatcher.slot_leases(convert::consistency(r.consistency)).await?;
            let leases = leases
                .into_iter()
                .map(|(slot, lease)| pb::SlotLease {
                    tm_id: slot.tm,
                    index: slot.index,
                    job_id: lease.job_id,
                    epoch: lease.epoch,
                })
                .collect();
            Ok(Response::new(pb::ListSlotLeasesReply { leases, read: Some(convert::read_info(&read)) }))
        })
        .await
    }

    async fn state_digest(
        &self,
        request: Request<pb::StateDigestRequest>,
    ) -> Result<Response<pb::StateDigestReply>, Status> {
        self.traced("StateDigest", Loud::Quiet, request, |_| async move {
            let node = self.dispatcher.node();
            let (applied_index, digest) =
                node.state().read(|s| (s.last_applied.map_or(0, |l| l.index), s.cluster.digest()));
            Ok(Response::new(pb::StateDigestReply { node_id: self.id(), applied_index, digest }))
        })
        .await
    }

    async fn get_job_runtime(
        &self,
        request: Request<pb::GetJobRuntimeRequest>,
    ) -> Result<Response<pb::GetJobRuntimeReply>, Status> {
        self.traced("GetJobRuntime", Loud::Quiet, request, |r| async move {
            crate::dispatcher::check_job_id(&r.job_id)?;
            let runtime = if r.local_only {
                self.dispatcher.local_job_runtime(&r.job_id)
            } else {
                Some(self.dispatcher.job_runtime(&r.job_id).await?)
            };
            Ok(Response::new(pb::GetJobRuntimeReply {
                leading: runtime.is_some(),
                subtasks: runtime.iter().flat_map(|rt| rt.subtasks.iter().map(convert::subtask_runtime)).collect(),
                served_by: self.id(),
            }))
        })
        .await
    }

    async fn task_manager_call(
        &self,
        request: Request<pb::TaskManagerEnvelope>,
    ) -> Result<Response<pb::TaskManagerEnvelope>, Status> {
        self.traced("TaskManagerCall", Loud::Quiet, request, |r| async move {
            let message = decode_job_manager_request(&r.payload)?;
            let reply = self.task_managers.handle(message).await;
            Ok(Response::new(pb::TaskManagerEnvelope { payload: encode_job_manager_reply(&reply) }))
        })
        .await
    }
}
