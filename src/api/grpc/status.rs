//! The one mapping from the crate's errors to gRPC statuses.
//!
//! Codes follow gRPC's guidance: a client mistake is INVALID_ARGUMENT or NOT_FOUND; a command the
//! state machine refused is FAILED_PRECONDITION; no leader or no quorum is UNAVAILABLE (retry later);
//! a write whose outcome is unknown is DEADLINE_EXCEEDED (it may still take effect). The stable error
//! code of a refused command travels in the `jm-error-code` metadata entry.

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::cluster::ClusterError;
use crate::dispatcher::DispatchError;
use crate::failpoint::FailpointError;

impl From<FailpointError> for Status {
    fn from(e: FailpointError) -> Self {
        match e {
            FailpointError::NotCompiled => Status::failed_precondition(e.to_string()),
            FailpointError::Unknown { .. } | FailpointError::InvalidAction { .. } => {
                Status::invalid_argument(e.to_string())
            }
        }
    }
}

impl From<DispatchError> for Status {
    fn from(e: DispatchError) -> Self {
        match e {
            DispatchError::InvalidSpec { .. } | DispatchError::InvalidArgument { .. } => {
                Status::invalid_argument(e.to_string())
            }
            DispatchError::JobNotFound { .. }
            | DispatchError::SavepointNotFound { .. }
            | DispatchError::SavepointPathNotFound { .. }
            | DispatchError::DisposalNotFound { .. } => Status::not_found(e.to_string()),
            DispatchError::SavepointInUse { .. } => Status::failed_precondition(e.to_string()),
            DispatchError::Cluster(c) => c.into(),
        }
    }
}

impl From<ClusterError> for Status {
    fn from(e: ClusterError) -> Self {
        let message = e.to_string();
        match e {
            ClusterError::Rejected(d) => {
                let code = if d.is_not_found() { Code::NotFound } else { Code::FailedPrecondition };
                let mut status = Status::new(code, message);
                if let Ok(v) = MetadataValue::try_from(d.code()) {
                    status.metadata_mut().insert("jm-error-code", v);
                }
                status
            }
            ClusterError::NoLeader { .. }
            | ClusterError::NoQuorum { .. }
            | ClusterError::NotLeader { .. }
            | ClusterError::Timeout { .. }
            | ClusterError::ShuttingDown => Status::unavailable(message),
            ClusterError::Indeterminate { .. } => Status::deadline_exceeded(message),
            ClusterError::Fatal { .. } => Status::internal(message),
        }
    }
}
