//! The control protocol between TaskManagers and the cluster, as plain serde types: what a TaskManager sends to a
//! replica ([`ToJobManager`]) and what the leader's ResourceManager and JobMasters send to a TaskManager
//! ([`ToTaskManager`]).
//!
//! The messages travel bincode-encoded inside a one-method gRPC service (see `api::grpc::taskmanager`), like the
//! Raft peer messages: this is an internal protocol between binaries of the same version, not a public API, and
//! keeping it as Rust types lets the JobMaster and the TaskManager be tested without a network.
//!
//! # Fencing
//!
//! Every command to a TaskManager that concerns a job carries a [`FencingToken`]: the Raft term of the leader that
//! sends it and the JobMaster epoch granted to the job under that term. A TaskManager remembers, per job, the newest
//! token it accepted and refuses older ones ([`FromTaskManager::Fenced`]). A new leader grants a new epoch before it
//! talks to any TaskManager, so once a TaskManager has heard from it, nothing a deposed leader sends is obeyed.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use super::runtime::{SubtaskStatus, TaskEvent, TaskState};
use crate::raft::{Epoch, JobId, TaskManagerId};

/// (Raft term, job epoch) of the JobMaster issuing a command. Ordered by term, then epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FencingToken {
    /// Term of the leader the JobMaster runs on.
    pub term: u64,
    /// The job's JobMaster epoch.
    pub epoch: Epoch,
}

impl std::fmt::Display for FencingToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "(term {}, epoch {})", self.term, self.epoch)
    }
}

/// One deployment (a job attempt's component) running on a TaskManager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentReport {
    /// The job.
    pub job_id: JobId,
    /// The deployment attempt.
    pub attempt: u32,
    /// The newest fencing token the TaskManager accepted for the job.
    pub token: FencingToken,
    /// Its subtasks.
    pub subtasks: Vec<SubtaskStatus>,
}

impl TaskEvent {
    /// The job the event is about.
    pub fn job_id(&self) -> &str {
        match self {
            Self::StateChanged { job_id, .. }
            | Self::CheckpointAcked { job_id, .. }
            | Self::CheckpointDeclined { job_id, .. } => job_id,
        }
    }
}

/// A TaskManager's request to a replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToJobManager {
    /// Registers (or re-registers) the TaskManager. Any replica accepts it: it is a replicated write.
    Register {
        /// The TaskManager's id (kept in its data dir across restarts).
        tm_id: TaskManagerId,
        /// Where it serves [`ToTaskManager`] calls.
        address: String,
        /// Its slot count.
        slots: u32,
        /// Its failure domain.
        zone: Option<String>,
    },
    /// Liveness and the full list of what runs there. Only the leader accepts it.
    Heartbeat {
        /// The TaskManager.
        tm_id: TaskManagerId,
        /// Every deployment it runs.
        deployments: Vec<DeploymentReport>,
    },
    /// Task state changes and checkpoint acknowledgements. Only the leader accepts them.
    TaskEvents {
        /// The TaskManager.
        tm_id: TaskManagerId,
        /// The events, oldest first.
        events: Vec<TaskEvent>,
    },
}

/// A replica's answer to a [`ToJobManager`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromJobManager {
    /// The registration is committed.
    Registered {
        /// The replica's Raft term.
        term: u64,
    },
    /// The heartbeat was taken.
    HeartbeatAck {
        /// The leader's term.
        term: u64,
        /// False if the leader does not know the TaskManager: it must register again.
        known: bool,
        /// Deployments the TaskManager must cancel: the leader knows them as stale (an older attempt, or a job that
        /// ended). Each with the token to cancel them under.
        cancel: Vec<(JobId, u32, FencingToken)>,
    },
    /// The events were delivered to their JobMasters (events of jobs without a JobMaster here are dropped).
    EventsAccepted,
    /// This replica does not run the leader services; try `leader_api` if known.
    NotLeader {
        /// The client API address of the leader, if known.
        leader_api: Option<String>,
    },
    /// The request was refused.
    Error {
        /// Why, for the log.
        message: String,
    },
}

/// What a savepoint barrier asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavepointTarget {
    /// Directory the subtasks write their state to.
    pub dir: String,
    /// Whether the job stops after it.
    pub terminate: bool,
}

/// A command from the leader to a TaskManager. Each carries the sender's fencing token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToTaskManager {
    /// Runs every subtask of the named vertices of a job.
    Deploy {
        /// Fencing token of the JobMaster.
        token: FencingToken,
        /// The job.
        job_id: JobId,
        /// The deployment attempt.
        attempt: u32,
        /// The job's spec, canonical JSON.
        spec_json: String,
        /// Ids of the vertices deployed here (whole connected components).
        vertices: Vec<String>,
        /// Checkpoint or savepoint directory to restore from.
        restore: Option<String>,
        /// The job's checkpoint base directory.
        checkpoint_dir: String,
    },
    /// Cancels the job's deployment with this attempt (or every attempt when `None`).
    Cancel {
        /// Fencing token of the JobMaster.
        token: FencingToken,
        /// The job.
        job_id: JobId,
        /// The attempt, or all.
        attempt: Option<u32>,
    },
    /// Injects a checkpoint barrier at the job's sources.
    TriggerCheckpoint {
        /// Fencing token of the JobMaster.
        token: FencingToken,
        /// The job.
        job_id: JobId,
        /// The deployment attempt.
        attempt: u32,
        /// The checkpoint id.
        checkpoint_id: u64,
        /// Trigger time, unix ms.
        timestamp_ms: u64,
        /// Set for a savepoint.
        savepoint: Option<SavepointTarget>,
    },
    /// Tells the job's tasks a checkpoint completed (sinks commit) or was aborted.
    NotifyCheckpoint {
        /// Fencing token of the JobMaster.
        token: FencingToken,
        /// The job.
        job_id: JobId,
        /// The deployment attempt.
        attempt: u32,
        /// The checkpoint id.
        checkpoint_id: u64,
        /// True when it completed, false when aborted.
        completed: bool,
    },
    /// A new JobMaster introduces itself: the TaskManager accepts the newer token and reports what it runs of the
    /// job, without stopping anything.
    Reconcile {
        /// Fencing token of the new JobMaster.
        token: FencingToken,
        /// The job.
        job_id: JobId,
    },
}

impl ToTaskManager {
    /// The job and token of the command.
    pub fn fencing(&self) -> (&str, FencingToken) {
        match self {
            Self::Deploy { job_id, token, .. }
            | Self::Cancel { job_id, token, .. }
            | Self::TriggerCheckpoint { job_id, token, .. }
            | Self::NotifyCheckpoint { job_id, token, .. }
            | Self::Reconcile { job_id, token } => (job_id, *token),
        }
    }

    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Deploy { .. } => "deploy",
            Self::Cancel { .. } => "cancel",
            Self::TriggerCheckpoint { .. } => "trigger_checkpoint",
            Self::NotifyCheckpoint { .. } => "notify_checkpoint",
            Self::Reconcile { .. } => "reconcile",
        }
    }
}

/// A TaskManager's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromTaskManager {
    /// Done.
    Ok,
    /// The job's deployments on this TaskManager (the answer to `Reconcile`).
    Deployments(Vec<DeploymentReport>),
    /// The command carries a token older than one already accepted for the job.
    Fenced {
        /// The newest token accepted.
        newest: FencingToken,
    },
    /// The command failed.
    Error {
        /// Why.
        message: String,
    },
}

/// Why a gateway call failed in transport.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// Could not reach the peer.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// No answer in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// Anything else.
    #[error("{0}")]
    Failed(String),
}

/// A boxed future, as the gateways return.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The leader's way to reach TaskManagers (implemented over gRPC in `api::grpc::taskmanager`).
pub trait TaskExecutorGateway: Send + Sync + 'static {
    /// Sends `request` to the TaskManager at `address`, waiting at most `timeout`.
    fn call(
        &self,
        address: &str,
        request: ToTaskManager,
        timeout: Duration,
    ) -> BoxFuture<Result<FromTaskManager, GatewayError>>;
}

/// A TaskManager's way to reach replicas (implemented over gRPC in `api::grpc::taskmanager`).
pub trait JobManagerGateway: Send + Sync + 'static {
    /// Sends `request` to the replica whose client API is at `address`, waiting at most `timeout`.
    fn call(
        &self,
        address: &str,
        request: ToJobManager,
        timeout: Duration,
    ) -> BoxFuture<Result<FromJobManager, GatewayError>>;
}

/// What serves [`ToTaskManager`] calls: the TaskManager process (behind the gRPC `TaskExecutor` service).
pub trait TaskExecutorHandler: Send + Sync + 'static {
    /// Handles one command.
    fn handle(&self, request: ToTaskManager) -> BoxFuture<FromTaskManager>;
}

/// What serves [`ToJobManager`] calls on a replica (behind the client API's `TaskManagerCall`).
pub trait JobManagerHandler: Send + Sync + 'static {
    /// Handles one request.
    fn handle(&self, request: ToJobManager) -> BoxFuture<FromJobManager>;
}
