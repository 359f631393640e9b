//! The Dispatcher: the entry point for jobs. It validates a job spec before anything is written, turns
//! client requests into replicated commands (stamped with the proposer's clock and a fresh job id), and
//! serves job reads at the consistency the client asks for. It also checks savepoint disposals before they are
//! committed (the path holds a checkpoint or savepoint no live job depends on; see [`crate::checkpoint::disposal`]).
//!
//! Every client API (gRPC now, REST later) calls this, so validation and id generation live in one
//! place. Ids come from the dispatcher's own generator, seeded from the OS, or from a seed in the deterministic
//! simulation ([`Dispatcher::with_id_seed`]), where ids decide the order of maps the leader walks. It runs on every replica: writes go through [`ReplicaNode::write`], which forwards to the
//! leader.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub use crate::jobgraph::MAX_SPEC_BYTES;

use crate::checkpoint::disposal::PathUses;
use crate::checkpoint::storage::{self, Found};
use crate::cluster::{ClusterError, Consistency, ReadInfo, ReplicaNode, Written};
use crate::jobgraph::{self, SpecError};
use crate::leader::runtime::JobRuntime;
use crate::raft::command::{MAX_METADATA_VALUE_BYTES, MAX_PATH_BYTES};
use crate::raft::state::{Job, SavepointDisposal, SavepointRequest, TaskManagerInfo};
use crate::raft::{Command, JobId, JobStatus, Response};
use crate::taskmanager::protocol::BoxFuture;

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
    /// No such savepoint request.
    #[error("job {job_id} has no savepoint request {request_id}")]
    SavepointNotFound {
        /// The job.
        job_id: String,
        /// The request id asked for.
        request_id: String,
    },
    /// Nothing is at the path of a savepoint to dispose of.
    #[error("no savepoint or checkpoint at {path}: the path does not exist on replica {replica}")]
    SavepointPathNotFound {
        /// The path asked for.
        path: String,
        /// The replica that looked.
        replica: u64,
    },
    /// A job that is still going depends on the savepoint to dispose of.
    #[error(
        "cannot dispose of {path}: job {job_id}, which is {status}, depends on it ({role}); \
         dispose of it once the job ended"
    )]
    SavepointInUse {
        /// The path asked for.
        path: String,
        /// The job.
        job_id: String,
        /// Its status.
        status: JobStatus,
        /// What the path is to the job.
        role: &'static str,
    },
    /// No such savepoint disposal.
    #[error("there is no savepoint disposal {request_id} (only the {max} most recent are kept)")]
    DisposalNotFound {
        /// The request id asked for.
        request_id: String,
        /// How many disposals are kept.
        max: usize,
    },
    /// The cluster could not serve it.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

impl From<SpecError> for DispatchError {
    fn from(e: SpecError) -> Self {
        DispatchError::InvalidSpec { field: e.field, reason: e.reason }
    }
}

/// A fresh savepoint request id (Flink's trigger id): 32 lowercase hex characters.
pub fn new_request_id() -> String {
    request_id_from(rand::thread_rng().gen())
}

fn request_id_from(bits: u128) -> String {
    format!("{bits:032x}")
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
    runtime: Option<Arc<dyn RuntimeSource>>,
    /// Where job and request ids come from.
    ids: Arc<Mutex<StdRng>>,
}

/// Where live subtask figures come from: the leader's [`RuntimeView`](crate::leader::runtime::RuntimeView), locally
/// or through the leader's client API (implemented over gRPC in `api::grpc`).
pub trait RuntimeSource: Send + Sync + 'static {
    /// The job's live view, if this replica runs the leader services now (`None` otherwise).
    fn local(&self, job_id: &str) -> Option<JobRuntime>;
    /// Asks the replica whose client API is at `api_addr` for its local view: `Ok(None)` if it does not run the
    /// leader services (yet).
    fn fetch(&self, api_addr: &str, job_id: &str, timeout: Duration) -> BoxFuture<Result<Option<JobRuntime>, String>>;
}

/// A fresh job id: 32 lowercase hex characters, like Flink's JobID.
pub fn new_job_id() -> JobId {
    job_id_from(rand::thread_rng().gen())
}

fn job_id_from(bits: u128) -> JobId {
    format!("{bits:032x}")
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
        Self { node, runtime: None, ids: Arc::new(Mutex::new(StdRng::from_entropy())) }
    }

    /// The same dispatcher, drawing its ids from `seed`: a deterministic simulation replays them. Never in a real
    /// cluster, where two replicas seeded alike would hand out the same job id.
    pub fn with_id_seed(mut self, seed: u64) -> Self {
        self.ids = Arc::new(Mutex::new(StdRng::seed_from_u64(seed)));
        self
    }

    fn fresh_bits(&self) -> u128 {
        self.ids.lock().unwrap_or_else(|p| p.into_inner()).gen()
    }

    /// The same dispatcher, serving live subtask figures from `runtime`.
    pub fn with_runtime(mut self, runtime: Arc<dyn RuntimeSource>) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// The replica it runs on.
    pub fn node(&self) -> &Arc<ReplicaNode> {
        &self.node
    }

    /// Validates and submits a job spec. A retry with the same `idempotency_key` returns the job the
    /// first submission created.
    #[tracing::instrument(level = "debug", skip(self, spec))]
    pub async fn submit(&self, spec: &[u8], idempotency_key: &str) -> Result<Submitted, DispatchError> {
        let graph = jobgraph::parse(spec)?;
        let key = idempotency_key.trim();
        if key.is_empty() || key.len() > 256 {
            return Err(DispatchError::InvalidArgument {
                field: "idempotency_key",
                reason: "must be 1 to 256 bytes; pick a fresh random one per logical submission".into(),
            });
        }
        let command = Command::SubmitJob {
            job_id: job_id_from(self.fresh_bits()),
            idempotency_key: key.to_string(),
            name: graph.spec.name.clone(),
            max_retained_checkpoints: graph.spec.checkpoints.retained,
            spec_json: graph.canonical_json,
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

impl Dispatcher {
    /// Asks the job's JobMaster for a savepoint (stopping the job after it when `terminate`); returns the request
    /// id to poll with [`Dispatcher::get_savepoint`]. A retry with the same `request_id` finds the first request.
    pub async fn trigger_savepoint(
        &self,
        job_id: &str,
        target_dir: Option<String>,
        terminate: bool,
        request_id: Option<String>,
    ) -> Result<(String, Written), DispatchError> {
        check_job_id(job_id)?;
        let request_id =
            request_id.filter(|r| !r.trim().is_empty()).unwrap_or_else(|| request_id_from(self.fresh_bits()));
        let target_dir = target_dir.filter(|d| !d.trim().is_empty());
        if let Some(dir) = &target_dir {
            if !std::path::Path::new(dir).is_absolute() {
                return Err(DispatchError::InvalidArgument {
                    field: "target_dir",
                    reason: format!("{dir:?} is relative; give an absolute directory shared by the TaskManagers"),
                });
            }
        }
        let command = Command::RequestSavepoint {
            job_id: job_id.to_string(),
            request_id: request_id.clone(),
            target_dir,
            terminate,
            at_ms: self.node.clock().now_ms(),
        };
        let written = self.node.write(command).await?;
        match &written.response {
            Response::SavepointRequested { .. } => Ok((request_id, written.clone())),
            other => Err(unexpected(other)),
        }
    }

    /// A savepoint request and its outcome so far.
    pub async fn get_savepoint(
        &self,
        job_id: &str,
        request_id: &str,
        consistency: Consistency,
    ) -> Result<(SavepointRequest, ReadInfo), DispatchError> {
        let (job, read) = self.get(job_id, consistency).await?;
        match job.savepoint_requests.get(request_id) {
            Some(request) => Ok((request.clone(), read)),
            None => {
                Err(DispatchError::SavepointNotFound { job_id: job_id.to_string(), request_id: request_id.to_string() })
            }
        }
    }

    /// Checks that `path` holds a savepoint (or retained checkpoint) that no job still going depends on, and asks the
    /// leader to delete it; returns the request id to poll with [`Dispatcher::get_savepoint_disposal`].
    pub async fn dispose_savepoint(&self, path: &str) -> Result<(String, Written), DispatchError> {
        let invalid = |reason: String| DispatchError::InvalidArgument { field: "savepoint-path", reason };
        if path.trim().is_empty() {
            return Err(invalid("is empty; give the savepoint's directory, as `jm job savepoint` printed it".into()));
        }
        if path.len() > MAX_PATH_BYTES {
            return Err(invalid(format!("is {} bytes; at most {MAX_PATH_BYTES} allowed", path.len())));
        }
        if !std::path::Path::new(path).is_absolute() {
            return Err(invalid(format!("{path:?} is relative; give the savepoint's absolute directory")));
        }
        // The state must include every job submitted before this request, or a job restoring from the savepoint
        // could slip through the check.
        self.node.read_barrier(Consistency::Linearizable).await?;
        let uses = self.node.state().read(|s| PathUses::of(&s.cluster));
        let owned = path.to_string();
        let checked = crate::blocking::run(move || {
            let found = storage::inspect(std::path::Path::new(&owned));
            found.map(|found| (found, uses.check(&owned, storage::same_dir)))
        })
        .await
        .map_err(|e| DispatchError::Cluster(ClusterError::Fatal { detail: format!("path check: {e}") }))?;
        let job_id = match checked {
            Err(e) => return Err(invalid(e.to_string())),
            Ok((Found::Nothing, _)) => {
                return Err(DispatchError::SavepointPathNotFound { path: path.to_string(), replica: self.node.id })
            }
            Ok((Found::NotCompleted, _)) => {
                return Err(invalid(format!(
                    "{path} is not a completed savepoint or checkpoint: it is no directory holding {}",
                    storage::METADATA_FILE
                )))
            }
            Ok((Found::Completed, Err(in_use))) => {
                return Err(DispatchError::SavepointInUse {
                    path: path.to_string(),
                    job_id: in_use.job_id,
                    status: in_use.status,
                    role: in_use.role,
                })
            }
            Ok((Found::Completed, Ok(job_id))) => job_id,
        };
        let request_id = request_id_from(self.fresh_bits());
        let command = Command::RequestSavepointDisposal {
            request_id: request_id.clone(),
            path: path.to_string(),
            job_id,
            at_ms: self.node.clock().now_ms(),
        };
        let written = self.node.write(command).await?;
        match &written.response {
            Response::SavepointDisposalRequested { .. } => Ok((request_id, written.clone())),
            other => Err(unexpected(other)),
        }
    }

    /// A savepoint disposal and its outcome so far.
    pub async fn get_savepoint_disposal(
        &self,
        request_id: &str,
        consistency: Consistency,
    ) -> Result<(SavepointDisposal, ReadInfo), DispatchError> {
        let read = self.node.read_barrier(consistency).await?;
        let disposal = self.node.state().read(|s| s.cluster.savepoint_disposals.get(request_id).cloned());
        disposal.map(|d| (d, read)).ok_or_else(|| DispatchError::DisposalNotFound {
            request_id: request_id.to_string(),
            max: crate::raft::state::MAX_SAVEPOINT_DISPOSALS,
        })
    }

    /// Registered TaskManagers with their free slot counts.
    pub async fn task_managers(
        &self,
        consistency: Consistency,
    ) -> Result<(Vec<(TaskManagerInfo, u32)>, ReadInfo), DispatchError> {
        let read = self.node.read_barrier(consistency).await?;
        let tms = self.node.state().read(|s| {
            s.cluster
                .task_managers
                .values()
                .map(|tm| {
                    let leased = s.cluster.slot_leases.keys().filter(|slot| slot.tm == tm.id).count() as u32;
                    (tm.clone(), tm.slots.saturating_sub(leased))
                })
                .collect()
        });
        Ok((tms, read))
    }

    /// Every slot lease (slot, holder, epoch), from one read of the applied state.
    pub async fn slot_leases(
        &self,
        consistency: Consistency,
    ) -> Result<(Vec<(crate::raft::SlotId, crate::raft::state::SlotLease)>, ReadInfo), DispatchError> {
        let read = self.node.read_barrier(consistency).await?;
        let leases = self
            .node
            .state()
            .read(|s| s.cluster.slot_leases.iter().map(|(slot, lease)| (slot.clone(), lease.clone())).collect());
        Ok((leases, read))
    }

    /// The leader's live view of a job's subtasks: asked locally when this replica leads, of the leader otherwise,
    /// waiting (bounded by the write timeout) through an election or a leader that has not started its services.
    /// The job must exist (a linearizable read checks it); a job without running tasks has an empty view.
    pub async fn job_runtime(&self, job_id: &str) -> Result<JobRuntime, DispatchError> {
        self.get(job_id, Consistency::Linearizable).await?;
        self.job_runtime_unchecked(job_id).await
    }

    /// [`Dispatcher::job_runtime`] without checking that the job exists.
    pub async fn job_runtime_unchecked(&self, job_id: &str) -> Result<JobRuntime, DispatchError> {
        let Some(source) = &self.runtime else { return Ok(JobRuntime::default()) };
        let deadline = tokio::time::Instant::now() + self.node.config().timing.write_timeout;
        let mut last_error = String::from("no leader known");
        loop {
            if let Some(runtime) = source.local(job_id) {
                return Ok(runtime);
            }
            let leader = self.node.current_leader().filter(|id| *id != self.node.id);
            if let Some(addr) = leader.and_then(|id| self.node.members().get(&id).map(|n| n.api_addr.clone())) {
                let budget = deadline.saturating_duration_since(tokio::time::Instant::now());
                match source.fetch(&addr, job_id, budget.min(Duration::from_secs(2))).await {
                    Ok(Some(runtime)) => return Ok(runtime),
                    Ok(None) => last_error = format!("the leader at {addr} has not started its services yet"),
                    Err(e) => last_error = format!("cannot reach the leader at {addr}: {e}"),
                }
            }
            if tokio::time::Instant::now() + RUNTIME_RETRY >= deadline {
                return Err(DispatchError::Cluster(ClusterError::NoLeader {
                    detail: format!("live task figures are served by the leader; {last_error}"),
                }));
            }
            tokio::time::sleep(RUNTIME_RETRY).await;
        }
    }

    /// This replica's own leader view of a job (`None` when it does not run the leader services), never asking
    /// another replica: what a follower's [`RuntimeSource::fetch`] is answered with.
    pub fn local_job_runtime(&self, job_id: &str) -> Option<JobRuntime> {
        self.runtime.as_ref().and_then(|source| source.local(job_id))
    }
}

/// Pause between attempts to reach the leader's live view.
const RUNTIME_RETRY: Duration = Duration::from_millis(50);

fn unexpected(response: &Response) -> DispatchError {
    DispatchError::Cluster(ClusterError::Fatal { detail: format!("unexpected response {response:?}") })
}
