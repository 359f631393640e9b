//! The client API service, `jobmanager.v1.JobManager`: protobuf in, Dispatcher call, protobuf out.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert;
use super::pb;
use super::pb::job_manager_server::{JobManager, JobManagerServer};
use super::taskmanager::{decode_job_manager_request, encode_job_manager_reply};
use super::MAX_CLIENT_MESSAGE_BYTES;
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

impl JobManagerService {
    fn id(&self) -> u64 {
        self.dispatcher.node().id
    }
}

#[tonic::async_trait]
impl JobManager for JobManagerService {
    async fn submit_job(&self, request: Request<pb::SubmitJobRequest>) -> Result<Response<pb::SubmitJobReply>, Status> {
        let r = request.into_inner();
        let submitted = self.dispatcher.submit(&r.spec, &r.idempotency_key).await?;
        Ok(Response::new(pb::SubmitJobReply {
            job_id: submitted.job_id,
            created: submitted.created,
            write: Some(convert::write_info(self.id(), &submitted.written)),
        }))
    }

    async fn cancel_job(&self, request: Request<pb::CancelJobRequest>) -> Result<Response<pb::CancelJobReply>, Status> {
        let r = request.into_inner();
        let (status, written) = self.dispatcher.cancel(&r.job_id).await?;
        Ok(Response::new(pb::CancelJobReply {
            job_id: r.job_id,
            status: status.as_flink_str().to_string(),
            write: Some(convert::write_info(self.id(), &written)),
        }))
    }

    async fn get_job(&self, request: Request<pb::GetJobRequest>) -> Result<Response<pb::GetJobReply>, Status> {
        let r = request.into_inner();
        let (job, read) = self.dispatcher.get(&r.job_id, convert::consistency(r.consistency)).await?;
        Ok(Response::new(pb::GetJobReply { job: Some(convert::job(&job)), read: Some(convert::read_info(&read)) }))
    }

    async fn list_jobs(&self, request: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsReply>, Status> {
        let r = request.into_inner();
        let (jobs, read) = self.dispatcher.list(convert::consistency(r.consistency), convert::job_summary).await?;
        Ok(Response::new(pb::ListJobsReply { jobs, read: Some(convert::read_info(&read)) }))
    }

    async fn put_job_metadata(
        &self,
        request: Request<pb::PutJobMetadataRequest>,
    ) -> Result<Response<pb::PutJobMetadataReply>, Status> {
        let r = request.into_inner();
        let written = self.dispatcher.put_metadata(&r.job_id, &r.key, r.value).await?;
        Ok(Response::new(pb::PutJobMetadataReply { write: Some(convert::write_info(self.id(), &written)) }))
    }

    async fn get_job_metadata(
        &self,
        request: Request<pb::GetJobMetadataRequest>,
    ) -> Result<Response<pb::GetJobMetadataReply>, Status> {
        let r = request.into_inner();
        let (value, read) =
            self.dispatcher.get_metadata(&r.job_id, &r.key, convert::consistency(r.consistency)).await?;
        Ok(Response::new(pb::GetJobMetadataReply { value, read: Some(convert::read_info(&read)) }))
    }

    async fn cluster_status(
        &self,
        _request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusReply>, Status> {
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
    }

    async fn compact(&self, _request: Request<pb::CompactRequest>) -> Result<Response<pb::CompactReply>, Status> {
        let node = self.dispatcher.node();
        let (snapshot_index, purged_index) = node.compact(std::time::Duration::from_secs(60)).await?;
        Ok(Response::new(pb::CompactReply { served_by: node.id, snapshot_index, purged_index }))
    }

    async fn trigger_savepoint(
        &self,
        request: Request<pb::TriggerSavepointRequest>,
    ) -> Result<Response<pb::TriggerSavepointReply>, Status> {
        let r = request.into_inner();
        let target_dir = Some(r.target_dir);
        let request_id = Some(r.request_id);
        let (request_id, written) =
            self.dispatcher.trigger_savepoint(&r.job_id, target_dir, r.terminate, request_id).await?;
        Ok(Response::new(pb::TriggerSavepointReply {
            request_id,
            write: Some(convert::write_info(self.id(), &written)),
        }))
    }

    async fn get_savepoint(
        &self,
        request: Request<pb::GetSavepointRequest>,
    ) -> Result<Response<pb::GetSavepointReply>, Status> {
        let r = request.into_inner();
        let consistency = convert::consistency(r.consistency);
        let (savepoint, read) = self.dispatcher.get_savepoint(&r.job_id, &r.request_id, consistency).await?;
        Ok(Response::new(convert::savepoint_request(&savepoint, &read)))
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
        let r = request.into_inner();
        let (tms, read) = self.dispatcher.task_managers(convert::consistency(r.consistency)).await?;
        Ok(Response::new(pb::ListTaskManagersReply {
            task_managers: tms.iter().map(|(tm, free)| convert::task_manager(tm, *free)).collect(),
            read: Some(convert::read_info(&read)),
        }))
    }

    async fn task_manager_call(
        &self,
        request: Request<pb::TaskManagerEnvelope>,
    ) -> Result<Response<pb::TaskManagerEnvelope>, Status> {
        let message = decode_job_manager_request(&request.into_inner().payload)?;
        let reply = self.task_managers.handle(message).await;
        Ok(Response::new(pb::TaskManagerEnvelope { payload: encode_job_manager_reply(&reply) }))
    }
}
