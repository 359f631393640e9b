//! The Dispatcher: the entry point for jobs. It validates a job spec before anything is written, turns
//! client requests into replicated commands (stamped with the proposer's clock and a fresh job id), and
//! serves job reads at the consistency the client asks for.
//!
//! Every client API (gRPC now, REST later) calls this, so validation and id generation live in one
//! place. It runs on every replica: writes go through [`ReplicaNode::write`], which forwards to the
//! leader.

pub mod spec;

use std::sync::Arc;

use rand::Rng;

pub use spec::{parse_spec, JobSpec, MAX_SPEC_BYTES};

use crate::cluster::{ClusterError, Consistency, ReadInfo, ReplicaNode, Written};
use crate::raft::command::MAX_METADATA_VALUE_BYTES;
use crate::raft::state::Job;
use crate::raft::{Command, JobId, JobStatus, Response};

/// Why the Dispatcher refused or could not serve a request.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The job spec is invalid; `field` names the offending field.
    #[error("invalid job spec: {field}: {reason}")]
    InvalidSpec {
        /// Path of the offending field, e.g. `checkpoints.retained`.
        field: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A request argument is invalid.
    #[error("invalid argument {field}: {reason}")]
    InvalidArgument {
        /// The argument.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// No such job.
    #[error("job {job_id} not found")]
    JobNotFound {
        /// The id asked for.
        job_id: String,
    },
    /// The cluster could not serve it.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// The outcome of a submit.
#[derive(Debug, Clone)]
pub struct Submitted {
    /// The job's id.
    pub job_id: JobId,
    /// False when the idempotency key had already created the job.
    pub created: bool,
    /// Where it was committed.
    pub written: Written,
}

/// Turns client requests into commands and reads.
#[derive(Clone)]
pub struct Dispatcher {
    node: Arc<ReplicaNode>,
}

/// A fresh job id: 32 lowercase hex characters, like Flink's JobID.
pub fn new_job_id() -> JobId {
    format!("{:032x}", rand::thread_rng().gen::<u128>())
}

/// Checks that `job_id` looks like a job id, so a typo gets a clear error rather than "not found".
pub fn check_job_id(job_id: &str) -> Result<(), DispatchError> {
    if job_id.len() == 32 && job_id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(())
    } else {
        Err(DispatchError::InvalidArgument {
            field: "job_id",
            reason: format!("{job_id:?} is not a job id (32 lowercase hex characters)"),
        })
    }
}

impl Dispatcher {
    /// A dispatcher on `node`.
    pub fn new(node: Arc<ReplicaNode>) -> Self {
        Self { node }
    }

    /// The replica it runs on.
    pub fn node(&self) -> &Arc<ReplicaNode> {
        &self.node
    }

    /// Validates and submits a job spec. A retry with the same `idempotency_key` returns the job the
    /// first submission created.
    #[tracing::instrument(level = "debug", skip(self, spec))]
    pub async fn submit(&self, spec: &[u8], idempotency_key: &str) -> Result<Submitted, DispatchError> {
        let parsed = parse_spec(spec)?;
        let key = idempotency_key.trim();
        if key.is_empty() || key.len() > 256 {
            return Err(DispatchError::InvalidArgument {
                field: "idempotency_key",
                reason: "must be 1 to 256 bytes; pick a fresh random one per logical submission".into(),
            });
        }
        let command = Command::SubmitJob {
            job_id: new_job_id(),
            idempotency_key: key.to_string(),
            name: parsed.name,
            spec_json: parsed.canonical_json,
            max_retained_checkpoints: parsed.retained_checkpoints,
            submitted_at_ms: self.node.clock().now_ms(),
        };
        let written = self.node.write(command).await?;
        match &written.response {
            Response::JobSubmitted { job_id, created } => {
                Ok(Submitted { job_id: job_id.clone(), created: *created, written: written.clone() })
            }
            other => Err(unexpected(other)),
        }
    }

    /// Cancels a job; returns its status afterwards (CANCELED, or CANCELLING while tasks stop).
    pub async fn cancel(&self, job_id: &str) -> Result<(JobStatus, Written), DispatchError> {
        check_job_id(job_id)?;
        let command = Command::CancelJob { job_id: job_id.to_string(), at_ms: self.node.clock().now_ms() };
        let written = self.node.write(command).await?;
        match &written.response {
            Response::JobCancelled { status, .. } => Ok((*status, written.clone())),
            other => Err(unexpected(other)),
        }
    }

    /// One job.
    pub async fn get(&self, job_id: &str, consistency: Consistency) -> Result<(Job, ReadInfo), DispatchError> {
        check_job_id(job_id)?;
        let read = self.node.read_barrier(consistency).await?;
        let job = self.node.state().read(|s| s.cluster.jobs.get(job_id).cloned());
        job.map(|j| (j, read)).ok_or_else(|| DispatchError::JobNotFound { job_id: job_id.to_string() })
    }

    /// Every job, newest first, passed through `f` while the state is locked (to copy only what is
    /// needed).
    pub async fn list<T>(
        &self,
        consistency: Consistency,
        f: impl Fn(&Job) -> T,
    ) -> Result<(Vec<T>, ReadInfo), DispatchError> {
        let read = self.node.read_barrier(consistency).await?;
        let mut jobs: Vec<(u64, T)> =
            self.node.state().read(|s| s.cluster.jobs.values().map(|j| (j.submitted_index, f(j))).collect());
        jobs.sort_by_key(|j| std::cmp::Reverse(j.0));
        Ok((jobs.into_iter().map(|(_, t)| t).collect(), read))
    }

    /// Sets one metadata entry of a job.
    pub async fn put_metadata(&self, job_id: &str, key: &str, value: Vec<u8>) -> Result<Written, DispatchError> {
        check_job_id(job_id)?;
        if value.len() > MAX_METADATA_VALUE_BYTES {
            return Err(DispatchError::InvalidArgument {
                field: "value",
                reason: format!("{} bytes; at most {MAX_METADATA_VALUE_BYTES}", value.len()),
            });
        }
        let command = Command::PutJobMetadata {
            job_id: job_id.to_string(),
            key: key.to_string(),
            value,
            at_ms: self.node.clock().now_ms(),
        };
        Ok(self.node.write(command).await?)
    }

    /// Reads one metadata entry of a job.
    pub async fn get_metadata(
        &self,
        job_id: &str,
        key: &str,
        consistency: Consistency,
    ) -> Result<(Option<Vec<u8>>, ReadInfo), DispatchError> {
        check_job_id(job_id)?;
        let read = self.node.read_barrier(consistency).await?;
        let value = self.node.state().read(|s| s.cluster.jobs.get(job_id).map(|j| j.metadata.get(key).cloned()));
        match value {
            Some(v) => Ok((v, read)),
            None => Err(DispatchError::JobNotFound { job_id: job_id.to_string() }),
        }
    }
}

fn unexpected(response: &Response) -> DispatchError {
    DispatchError::Cluster(ClusterError::Fatal { detail: format!("unexpected response {response:?}") })
}
