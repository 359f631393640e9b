//! The one mapping from the crate's errors to REST responses: Flink's `{"errors": [...]}` body with an HTTP
//! status a client can act on (400 a bad request, 404 an unknown job or path, 409 a request the job's state
//! refuses, 503 no leader or quorum yet: retry, 504 an outcome that is unknown, 500 a replica fault).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::cluster::ClusterError;
use crate::dispatcher::DispatchError;

/// Why a REST request failed.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// No such job, savepoint, TaskManager or path.
    #[error("{0}")]
    NotFound(String),
    /// The dispatcher or the cluster refused or could not serve it.
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
}

impl RestError {
    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Dispatch(e) => dispatch_status(e),
        }
    }
}

fn dispatch_status(e: &DispatchError) -> StatusCode {
    match e {
        DispatchError::InvalidSpec { .. } | DispatchError::InvalidArgument { .. } => StatusCode::BAD_REQUEST,
        DispatchError::JobNotFound { .. }
        | DispatchError::SavepointNotFound { .. }
        | DispatchError::SavepointPathNotFound { .. }
        | DispatchError::DisposalNotFound { .. } => StatusCode::NOT_FOUND,
        DispatchError::SavepointInUse { .. } => StatusCode::CONFLICT,
        DispatchError::Cluster(c) => cluster_status(c),
    }
}

fn cluster_status(e: &ClusterError) -> StatusCode {
    match e {
        ClusterError::Rejected(d) if d.is_not_found() => StatusCode::NOT_FOUND,
        ClusterError::Rejected(_) => StatusCode::CONFLICT,
        ClusterError::NoLeader { .. }
        | ClusterError::NoQuorum { .. }
        | ClusterError::NotLeader { .. }
        | ClusterError::Timeout { .. }
        | ClusterError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        ClusterError::Indeterminate { .. } => StatusCode::GATEWAY_TIMEOUT,
        ClusterError::Fatal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let status = self.status();
        (status, Json(json!({ "errors": [self.to_string()] }))).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::DeterministicError;

    #[test]
    fn statuses_follow_what_the_client_can_do() {
        let spec = DispatchError::InvalidSpec { field: "name".into(), reason: "missing".into() };
        assert_eq!(RestError::from(spec).status(), StatusCode::BAD_REQUEST);
        let missing = DispatchError::JobNotFound { job_id: "x".into() };
        assert_eq!(RestError::from(missing).status(), StatusCode::NOT_FOUND);
        let terminal = DeterministicError::JobTerminal { job_id: "x".into(), status: crate::raft::JobStatus::Failed };
        let refused = DispatchError::Cluster(ClusterError::Rejected(terminal));
        assert_eq!(RestError::from(refused).status(), StatusCode::CONFLICT);
        let gone = DispatchError::SavepointPathNotFound { path: "/sp/1".into(), replica: 1 };
        assert_eq!(RestError::from(gone).status(), StatusCode::NOT_FOUND);
        let in_use = DispatchError::SavepointInUse {
            path: "/sp/1".into(),
            job_id: "x".into(),
            status: crate::raft::JobStatus::Running,
            role: "the savepoint it restores from",
        };
        assert_eq!(RestError::from(in_use).status(), StatusCode::CONFLICT);
        let no_leader = DispatchError::Cluster(ClusterError::NoLeader { detail: "election".into() });
        assert_eq!(RestError::from(no_leader).status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
