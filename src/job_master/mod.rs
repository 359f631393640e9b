//! JobMasters: one per live job, on the leader only, each on its own tokio task.
//!
//! A JobMaster drives one job from the replicated state: it takes a fresh epoch through Raft
//! ([`Command::GrantJobMasterEpoch`](crate::raft::Command)), then either **adopts** the tasks its predecessor left
//! running (the normal case after a leader failover: nothing restarts) or **deploys** a new attempt: slots from the
//! ResourceManager, the deployment recorded through Raft, then `Deploy` to the TaskManagers. It tracks its subtasks'
//! states, runs the job's checkpoint coordinator, applies the restart strategy on failures, and serves cancel,
//! savepoint and stop-with-savepoint requests, which arrive as replicated commands it reads from the state.
//!
//! # Invariants
//!
//! * Everything a JobMaster commits carries its epoch, and everything it sends to a TaskManager carries its
//!   [`FencingToken`](crate::taskmanager::protocol::FencingToken) (term, epoch). A newer JobMaster for the same job
//!   (on this or a later leader) makes every one of them fail, and the JobMaster exits on the first such refusal.
//! * Slots are leased and the deployment is recorded through Raft before a single task is deployed, so a successor
//!   always knows what may be running and where.
//! * A checkpoint counts as completed only once `CompleteCheckpoint` is committed; only then are tasks told, and
//!   only then do two-phase-commit sinks publish their output. (The test-only failpoint `checkpoint-after-commit`,
//!   [`crate::failpoint`], crashes the replica between the commit and the notification, savepoints included.)
//! * A job that reached a terminal status is never deployed again.
//!
//! # Isolation
//!
//! JobMasters share nothing but the ResourceManager's allocation lock and the Raft proposer (which batches their
//! writes). Every call to a TaskManager has a timeout, so a slow TaskManager stalls only the jobs running on it.
//!
//! # Caveats
//!
//! The restart strategy's memory of recent failures is rebuilt from the replicated exception history (bounded), so
//! a failure-rate window longer than that history undercounts after a failover.

mod master;
pub mod restart;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

pub use master::run_job_master;

use crate::cluster::ReplicaNode;
use crate::raft::{JobId, TaskManagerId};
use crate::resource_manager::ResourceManager;
use crate::taskmanager::protocol::{DeploymentReport, TaskEvent, TaskExecutorGateway};

/// JobMaster settings, shared by every JobMaster of a leader.
#[derive(Debug, Clone)]
pub struct JobMasterConfig {
    /// Default checkpoint storage directory (a job's spec may override it).
    pub checkpoint_dir: PathBuf,
    /// Default directory savepoints are written under.
    pub savepoint_dir: PathBuf,
    /// Timeout of each call to a TaskManager.
    pub rpc_timeout: Duration,
    /// How long a job waits for enough free slots before that counts as a failure (Flink's slot.request.timeout).
    pub slot_request_timeout: Duration,
    /// How long a deployed TaskManager may go without reporting a deployment before it counts as lost.
    pub deployment_grace: Duration,
}

/// What a JobMaster is told from outside.
#[derive(Debug, Clone)]
pub enum JobMasterMessage {
    /// A task event from a TaskManager.
    TaskEvent(TaskEvent),
    /// A TaskManager's heartbeat report of one of the job's deployments.
    Report {
        /// The reporting TaskManager.
        tm_id: TaskManagerId,
        /// The deployment as it reported it.
        report: DeploymentReport,
    },
    /// A TaskManager that should run the job's current deployment did not report it.
    Missing {
        /// The TaskManager.
        tm_id: TaskManagerId,
    },
}

/// Everything a JobMaster needs from the leader it runs on.
pub struct JobMasterContext {
    /// The replica.
    pub node: Arc<ReplicaNode>,
    /// The leader's term.
    pub term: u64,
    /// The leader's ResourceManager.
    pub rm: Arc<ResourceManager>,
    /// The way to TaskManagers.
    pub gateway: Arc<dyn TaskExecutorGateway>,
    /// Settings.
    pub config: JobMasterConfig,
}

/// Capacity of a JobMaster's inbox; events beyond it are dropped (heartbeats re-report states).
pub const INBOX_CAPACITY: usize = 4096;

/// The inboxes of the JobMasters running on this leader, by job.
#[derive(Default)]
pub struct JobMasterRegistry {
    inboxes: Mutex<HashMap<JobId, mpsc::Sender<JobMasterMessage>>>,
}

impl JobMasterRegistry {
    fn inboxes(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, mpsc::Sender<JobMasterMessage>>> {
        self.inboxes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a JobMaster's inbox; returns false if one runs already.
    pub fn insert(&self, job_id: &str, inbox: mpsc::Sender<JobMasterMessage>) -> bool {
        let mut inboxes = self.inboxes();
        if inboxes.get(job_id).is_some_and(|tx| !tx.is_closed()) {
            return false;
        }
        inboxes.insert(job_id.to_string(), inbox);
        true
    }

    /// Whether a JobMaster runs for the job.
    pub fn contains(&self, job_id: &str) -> bool {
        self.inboxes().get(job_id).is_some_and(|tx| !tx.is_closed())
    }

    /// Forgets JobMasters that exited.
    pub fn prune(&self) {
        self.inboxes().retain(|_, tx| !tx.is_closed());
    }

    /// How many JobMasters run.
    pub fn len(&self) -> usize {
        self.inboxes().values().filter(|tx| !tx.is_closed()).count()
    }

    /// Whether none runs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Delivers a message to the job's JobMaster without waiting; false if there is none or its inbox is full.
    pub fn deliver(&self, job_id: &str, message: JobMasterMessage) -> bool {
        let inbox = self.inboxes().get(job_id).cloned();
        inbox.is_some_and(|tx| tx.try_send(message).is_ok())
    }
}
