//! The vocabulary of the replicated log: the commands replicas agree on, the responses and errors that applying them
//! produces, and the bytes they are stored as.
//!
//! Every change to the cluster's state (jobs, JobMaster epochs, TaskManagers, slot leases, checkpoints) is a
//! [`Command`] appended to the Raft log and then applied by every replica to its own
//! [`ClusterState`](super::state::ClusterState). Replicas must end
//! up bit-for-bit identical, so a command carries everything its application depends on: ids are chosen by the
//! proposer (job ids are 32 lowercase hex chars), and times are the proposer's wall clock in unix milliseconds
//! (`*_at_ms` fields). Applying a command never reads a clock, a random source or the environment.
//!
//! A command that cannot be applied yields a [`DeterministicError`]. "Deterministic" is the point: every replica
//! reaches the same verdict from the same log prefix, so the error is part of the replicated outcome rather than a
//! local failure. It therefore carries only data from the command and the state, and its message tells a person what
//! to do about it.
//!
//! # On-disk format
//!
//! Commands are encoded with bincode's standard configuration (see [`encode`]): variable-length integers, and an enum
//! variant is written as its *index*, not its name. Struct fields are written in declaration order, without names.
//! Log entries outlive binaries: a replica upgraded mid-log must still read what an older one wrote. Hence:
//!
//! * [`Command`] variants are append-only: never reorder, remove or reuse one. A new command goes at the end.
//! * The fields of an existing variant or type are frozen: never reorder, add, remove or retype one. Renaming is
//!   harmless (names are not stored). A command that needs more data is a new variant.
//! * No serde attributes that make the encoding depend on the value (`skip_serializing_if`, `untagged`, `flatten`):
//!   bincode is not self-describing and cannot decode them.
//!
//! [`Response`] and [`DeterministicError`] are not stored in the log, but they cross the wire between replicas of
//! possibly different versions (a follower forwarding a proposal to the leader), so they follow the same rules. The
//! golden tests at the bottom of this file pin the bytes of one example per variant; if one fails, the format changed,
//! and that is a bug unless [`COMMAND_FORMAT_VERSION`] was deliberately bumped with a migration.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Position of an entry in the Raft log.
pub type LogIndex = u64;
/// A job's id: 32 lowercase hex chars, chosen by the proposer (so a retried submission can be recognised).
pub type JobId = String;
/// A TaskManager's id, chosen by the TaskManager when it registers.
pub type TaskManagerId = String;
/// The JobMaster epoch of a job: bumped each time a JobMaster is (re)elected for it; 0 = no JobMaster yet.
pub type Epoch = u64;
/// A checkpoint id, allocated per job from 1 upwards; 0 means "none".
pub type CheckpointId = u64;
/// A replica's id (the Raft node id).
pub use super::types::NodeId;

/// Version of the encoding written by [`encode`] for log entries and snapshots. The storage layer records it next to
/// the bytes; bump it only for a change that the append-only rules of this module cannot express, together with a
/// migration that reads the previous version.
pub const COMMAND_FORMAT_VERSION: u8 = 1;

/// Longest metadata key a job may carry, in bytes.
pub const MAX_METADATA_KEY_BYTES: usize = 256;
/// Largest metadata value a job may carry, in bytes. Metadata lives in every replica's memory and every snapshot.
pub const MAX_METADATA_VALUE_BYTES: usize = 64 * 1024;
/// Most metadata keys one job may carry.
pub const MAX_METADATA_KEYS_PER_JOB: usize = 1024;
/// Most status changes kept per job; older ones are dropped first.
pub const MAX_STATUS_HISTORY: usize = 64;
/// Most slots one TaskManager may offer.
pub const MAX_SLOTS_PER_TASK_MANAGER: u32 = 4096;
/// Upper bound for a job's `max_retained_checkpoints`.
pub const MAX_RETAINED_CHECKPOINTS: u32 = 1000;
/// Longest job name, idempotency key, job id or TaskManager id, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// Longest file system path a command may carry (a savepoint to dispose), in bytes.
pub const MAX_PATH_BYTES: usize = 4096;

/// One task slot: the `index`-th slot (from 0) of TaskManager `tm`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SlotId {
    /// The TaskManager offering the slot.
    pub tm: TaskManagerId,
    /// Slot number on that TaskManager, below its slot count.
    pub index: u32,
}

impl SlotId {
    /// The `index`-th slot of TaskManager `tm`.
    pub fn new(tm: impl Into<TaskManagerId>, index: u32) -> Self {
        Self { tm: tm.into(), index }
    }
}

impl fmt::Display for SlotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.tm, self.index)
    }
}

/// Flink's job status names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobStatus {
    /// The job was accepted and its JobMaster is being set up.
    Initializing,
    /// The job exists but no task has been scheduled yet.
    Created,
    /// Some tasks are scheduled or running.
    Running,
    /// The job failed and is waiting for its tasks to stop.
    Failing,
    /// The job failed for good. Terminal.
    Failed,
    /// Cancellation was requested; the JobMaster is stopping the tasks.
    Cancelling,
    /// The job was cancelled. Terminal.
    Canceled,
    /// Every task finished successfully. Terminal.
    Finished,
    /// The job is being restarted after a failure.
    Restarting,
    /// The JobMaster lost leadership; the job waits for a new one.
    Suspended,
    /// A new JobMaster is reconciling with tasks that survived its predecessor.
    Reconciling,
}

impl JobStatus {
    /// Every status, in declaration order.
    pub const ALL: [JobStatus; 11] = [
        Self::Initializing,
        Self::Created,
        Self::Running,
        Self::Failing,
        Self::Failed,
        Self::Cancelling,
        Self::Canceled,
        Self::Finished,
        Self::Restarting,
        Self::Suspended,
        Self::Reconciling,
    ];

    /// Whether the job is over for good (FAILED, CANCELED or FINISHED).
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Failed | Self::Canceled | Self::Finished)
    }

    /// Flink's upper-case name, e.g. "RUNNING".
    pub fn as_flink_str(self) -> &'static str {
        match self {
            Self::Initializing => "INITIALIZING",
            Self::Created => "CREATED",
            Self::Running => "RUNNING",
            Self::Failing => "FAILING",
            Self::Failed => "FAILED",
            Self::Cancelling => "CANCELLING",
            Self::Canceled => "CANCELED",
            Self::Finished => "FINISHED",
            Self::Restarting => "RESTARTING",
            Self::Suspended => "SUSPENDED",
            Self::Reconciling => "RECONCILING",
        }
    }

    /// Parses Flink's upper-case name; the inverse of [`JobStatus::as_flink_str`].
    pub fn from_flink_str(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_flink_str() == s)
    }

    /// Whether a JobMaster may move a job from `self` to `to` with `TransitionJobStatus`, following Flink's
    /// `JobStatus` state machine. Terminal statuses are never reachable here: they are only set by
    /// `RecordJobResult`, which also records the outcome. CANCELLING leads nowhere but to CANCELED, via the same path.
    pub fn can_transition_to(self, to: JobStatus) -> bool {
        match self {
            Self::Initializing => matches!(to, Self::Created),
            Self::Created => {
                matches!(to, Self::Running | Self::Failing | Self::Cancelling | Self::Reconciling | Self::Suspended)
            }
            Self::Running => matches!(to, Self::Failing | Self::Restarting | Self::Cancelling | Self::Suspended),
            Self::Failing => matches!(to, Self::Restarting | Self::Cancelling),
            Self::Restarting => matches!(to, Self::Running | Self::Created | Self::Cancelling | Self::Suspended),
            Self::Reconciling => matches!(to, Self::Running | Self::Failing | Self::Cancelling | Self::Suspended),
            Self::Suspended => matches!(to, Self::Created | Self::Reconciling | Self::Running),
            Self::Cancelling | Self::Failed | Self::Canceled | Self::Finished => false,
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_flink_str())
    }
}

/// A checkpoint that every task acknowledged, as reported by the job's JobMaster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletedCheckpoint {
    /// The id allocated by `AllocateCheckpointId`.
    pub id: CheckpointId,
    /// When the JobMaster triggered it.
    pub trigger_at_ms: u64,
    /// When the last acknowledgement arrived.
    pub completed_at_ms: u64,
    /// Where its metadata is stored (e.g. an object store URL); a restore starts from here.
    pub external_path: String,
    /// Total size of the checkpointed state.
    pub state_size_bytes: u64,
}

/// A savepoint taken for a job. Unlike checkpoints, savepoints are owned by the user and never discarded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Savepoint {
    /// The checkpoint id the savepoint was taken under.
    pub checkpoint_id: CheckpointId,
    /// Where the savepoint is stored.
    pub path: String,
    /// When it completed.
    pub at_ms: u64,
}

/// The slots one connected component of a job's graph was deployed to (all on one TaskManager for now).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployedComponent {
    /// Ids of the component's vertices.
    pub vertices: Vec<String>,
    /// The slots its subtasks run in; subtask slice `i` (subtask `i` of every vertex) runs in `slots[i]`.
    pub slots: Vec<SlotId>,
}

/// How a requested savepoint ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SavepointOutcome {
    /// The savepoint completed; it is also added to the job's savepoints.
    Completed {
        /// The savepoint.
        savepoint: Savepoint,
    },
    /// It could not be taken.
    Failed {
        /// Why, for the user.
        error: String,
    },
}

/// How the disposal of a savepoint ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DisposalOutcome {
    /// The savepoint's directory is gone (deleted now, or already before).
    Disposed,
    /// It could not be deleted.
    Failed {
        /// Why, for the user (the file system's error).
        message: String,
    },
}

// ---------------------------------------------------------------------------------------------------------------------
// THE COMMAND ENUM IS AN ON-DISK FORMAT. bincode writes the *index* of the variant, so:
//
//   * NEVER reorder variants.
//   * NEVER remove a variant, even one no longer proposed: old log entries and snapshots still contain it.
//   * NEVER reuse a variant (or its index) for a different meaning.
//   * NEVER change the fields of an existing variant (order, number or types).
//   * New commands go at the END, with a golden test of their own.
//
// Breaking any of these makes replicas misread their own logs after an upgrade, which is silent state divergence.
// ---------------------------------------------------------------------------------------------------------------------

/// A change to the cluster state, replicated through the Raft log and applied by every replica.
///
/// Commands issued by a job's JobMaster carry the JobMaster's `epoch`; one with an outdated epoch is rejected, which
/// is how a deposed JobMaster is fenced off after a new one was granted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Submits a new job, in status CREATED without a JobMaster. Retrying with the same idempotency key is harmless.
    SubmitJob {
        /// Id of the new job, chosen by the proposer.
        job_id: JobId,
        /// Client-chosen key identifying the submission across retries.
        idempotency_key: String,
        /// Human-readable job name; non-empty.
        name: String,
        /// The job's specification (its JobGraph), as JSON; opaque to the state machine.
        spec_json: String,
        /// How many completed checkpoints to keep; older ones are discarded.
        max_retained_checkpoints: u32,
        /// When the client submitted the job.
        submitted_at_ms: u64,
    },
    /// Requests cancellation of a job (a client command: no epoch).
    CancelJob {
        /// The job to cancel.
        job_id: JobId,
        /// When cancellation was requested.
        at_ms: u64,
    },
    /// Moves a job to a non-terminal status, on behalf of its JobMaster.
    TransitionJobStatus {
        /// The job.
        job_id: JobId,
        /// Epoch of the JobMaster issuing the command.
        epoch: Epoch,
        /// The new status.
        to: JobStatus,
        /// When the transition happened.
        at_ms: u64,
        /// Why, e.g. the failure that caused FAILING.
        reason: Option<String>,
    },
    /// Grants a new JobMaster epoch for a job, fencing off the previous JobMaster.
    GrantJobMasterEpoch {
        /// The job.
        job_id: JobId,
        /// Raft term of the leader that granted it (the JobMaster runs on that leader).
        leader_term: u64,
        /// When it was granted.
        at_ms: u64,
    },
    /// Registers a TaskManager and its slots, or updates a known one (e.g. after a restart).
    RegisterTaskManager {
        /// The TaskManager's id.
        tm_id: TaskManagerId,
        /// Where it listens for RPCs.
        address: String,
        /// How many slots it offers, 1..=[`MAX_SLOTS_PER_TASK_MANAGER`].
        slots: u32,
        /// Failure domain, for spreading a job's slots.
        zone: Option<String>,
        /// When it registered.
        at_ms: u64,
    },
    /// Removes a TaskManager (shut down or declared dead); its slot leases are released.
    UnregisterTaskManager {
        /// The TaskManager's id.
        tm_id: TaskManagerId,
        /// When it was removed.
        at_ms: u64,
        /// Why, e.g. "heartbeat timeout".
        reason: String,
    },
    /// Leases slots to a job, on behalf of its JobMaster. All or nothing.
    LeaseSlots {
        /// The job.
        job_id: JobId,
        /// Epoch of the JobMaster issuing the command.
        epoch: Epoch,
        /// The slots wanted; distinct, non-empty.
        slots: Vec<SlotId>,
        /// When they were leased.
        at_ms: u64,
    },
    /// Returns slots held by a job, on behalf of its JobMaster. All or nothing.
    ReleaseSlots {
        /// The job.
        job_id: JobId,
        /// Epoch of the JobMaster issuing the command.
        epoch: Epoch,
        /// The slots to return; distinct, non-empty, all held by the job.
        slots: Vec<SlotId>,
        /// When they were released.
        at_ms: u64,
    },
    /// Allocates the job's next checkpoint id, which is never handed out again.
    AllocateCheckpointId {
        /// The job.
        job_id: JobId,
        /// Epoch of the JobMaster issuing the command.
        epoch: Epoch,
        /// When the id was allocated.
        at_ms: u64,
    },
    /// Records a completed checkpoint, discarding the oldest ones beyond the job's retention.
    CompleteCheckpoint {
        /// The job.
        job_id: JobId,
        /// Epoch of the JobMaster issuing the command.
        epoch: Epoch,
        /// The checkpoint; its id must be allocated and newer than the latest completed one.
        checkpoint: CompletedCheckpoint,
    },
    /// Records a savepoint of a job.
    RecordSavepoint {
        /// The job.
        job_id: JobId,
        /// Epoch of the JobMaster issuing the command.
        epoch: Epoch,
        /// The savepoint; its checkpoint id must be allocated.
        savepoint: Savepoint,
    },
    /// Records a job's final outcome, making it terminal and releasing its slots.
    RecordJobResult {
        /// The job.
        job_id: JobId,
        /// Epoch of the JobMaster issuing the command.
        epoch: Epoch,
        /// FAILED, CANCELED or FINISHED.
        status: JobStatus,
        /// When the job ended.
        at_ms: u64,
        /// The failure, for FAILED.
        error: Option<String>,
    },
    /// Stores a small key/value pair on a job (e.g. for a client or an operator tool). Allowed on terminal jobs.
    PutJobMetadata {
        /// The job.
        job_id: JobId,
        /// Non-empty key of at most [`MAX_METADATA_KEY_BYTES`].
        key: String,
        /// Value of at most [`MAX_METADATA_VALUE_BYTES`].
        value: Vec<u8>,
        /// When it was stored.
        at_ms: u64,
    },
    /// Several commands proposed together as one log entry (the leader batches concurrent client writes to
    /// amortize the cost of an entry). They are applied in order, each with its own outcome; a batch never
    /// fails as a whole. A batch inside a batch is refused.
    Batch {
        /// The commands, in the order they are applied.
        commands: Vec<Command>,
    },
    /// Records a failure of a running job (a task or TaskManager failed, or resources are missing), and whether the
    /// JobMaster restarts the job because of it. Kept in the job's bounded exception history.
    RecordJobFailure {
        /// The job.
        job_id: JobId,
        /// Epoch of the JobMaster issuing the command.
        epoch: Epoch,
        /// When the failure was noticed.
        at_ms: u64,
        /// What failed, for the user.
        error: String,
        /// Whether the job is restarted because of it (counted in the job's restarts).
        restarting: bool,
    },
    /// Records where a deployment attempt of a job runs, on behalf of its JobMaster, before any task is deployed.
    /// A later JobMaster adopts the running tasks of exactly this deployment.
    RecordDeployment {
        /// The job.
        job_id: JobId,
        /// Epoch of the JobMaster issuing the command.
        epoch: Epoch,
        /// The attempt number; greater than any earlier attempt of the job.
        attempt: u32,
        /// One entry per connected component; every slot must be leased to the job.
        components: Vec<DeployedComponent>,
        /// The checkpoint or savepoint directory the attempt restores from, if any.
        restored_from: Option<String>,
        /// The job's checkpoint directory for this attempt: where its tasks write checkpoint state.
        checkpoint_dir: String,
        /// When it was deployed.
        at_ms: u64,
    },
    /// Asks the job's JobMaster for a savepoint (a client command: no epoch). Retrying with the same request id is
    /// harmless.
    RequestSavepoint {
        /// The job.
        job_id: JobId,
        /// Client-chosen id of the request (Flink's trigger id), 1 to 256 bytes.
        request_id: String,
        /// Directory under which the savepoint is written; the cluster's default when absent.
        target_dir: Option<String>,
        /// Stop the job once the savepoint completed (Flink's stop-with-savepoint).
        terminate: bool,
        /// When it was requested.
        at_ms: u64,
    },
    /// Records how a requested savepoint ended, on behalf of the job's JobMaster.
    ResolveSavepointRequest {
        /// The job.
        job_id: JobId,
        /// Epoch of the JobMaster issuing the command.
        epoch: Epoch,
        /// The request.
        request_id: String,
        /// Its outcome.
        outcome: SavepointOutcome,
        /// When it ended.
        at_ms: u64,
    },
    /// Asks the leader to delete a savepoint's (or retained checkpoint's) directory (Flink's savepoint disposal; a
    /// client command: no epoch). The dispatcher checked the path before proposing it; a request id is used once.
    RequestSavepointDisposal {
        /// Dispatcher-chosen id of the request (Flink's trigger id), 1 to 256 bytes.
        request_id: String,
        /// The directory to delete, 1 to [`MAX_PATH_BYTES`] bytes.
        path: String,
        /// The job that recorded this savepoint, if one did.
        job_id: Option<JobId>,
        /// When it was requested.
        at_ms: u64,
    },
    /// Records how a savepoint disposal ended, on behalf of the leader that carried it out.
    ResolveSavepointDisposal {
        /// The request.
        request_id: String,
        /// Its outcome.
        outcome: DisposalOutcome,
        /// When it ended.
        at_ms: u64,
    },
    /// Records that a new leader started its leader-only services: the cluster's history of failovers, for
    /// `/cluster` and the dashboard. Proposed once per term by that leader; a term not after the last recorded one
    /// is refused, so a deposed leader cannot rewrite the history.
    RecordLeaderChange {
        /// The leader's term.
        term: u64,
        /// The leader.
        leader: NodeId,
        /// When it took over, on its clock.
        at_ms: u64,
        /// How long it had not heard from any leader when it took over (the cluster's time without a working leader,
        /// as it saw it); `None` if it never heard from one since it started.
        leaderless_ms: Option<u64>,
    },
    // New variants go here, at the end. Read the comment above the enum first.
}

impl Command {
    /// A stable snake_case name for logs and metrics, e.g. "submit_job".
    pub fn name(&self) -> &'static str {
        match self {
            Self::SubmitJob { .. } => "submit_job",
            Self::CancelJob { .. } => "cancel_job",
            Self::TransitionJobStatus { .. } => "transition_job_status",
            Self::GrantJobMasterEpoch { .. } => "grant_job_master_epoch",
            Self::RegisterTaskManager { .. } => "register_task_manager",
            Self::UnregisterTaskManager { .. } => "unregister_task_manager",
            Self::LeaseSlots { .. } => "lease_slots",
            Self::ReleaseSlots { .. } => "release_slots",
            Self::AllocateCheckpointId { .. } => "allocate_checkpoint_id",
            Self::CompleteCheckpoint { .. } => "complete_checkpoint",
            Self::RecordSavepoint { .. } => "record_savepoint",
            Self::RecordJobResult { .. } => "record_job_result",
            Self::PutJobMetadata { .. } => "put_job_metadata",
            Self::Batch { .. } => "batch",
            Self::RecordJobFailure { .. } => "record_job_failure",
            Self::RecordDeployment { .. } => "record_deployment",
            Self::RequestSavepoint { .. } => "request_savepoint",
            Self::ResolveSavepointRequest { .. } => "resolve_savepoint_request",
            Self::RequestSavepointDisposal { .. } => "request_savepoint_disposal",
            Self::ResolveSavepointDisposal { .. } => "resolve_savepoint_disposal",
            Self::RecordLeaderChange { .. } => "record_leader_change",
        }
    }

    /// The job the command is about, if any (TaskManager commands are about no job).
    pub fn job_id(&self) -> Option<&str> {
        match self {
            Self::SubmitJob { job_id, .. }
            | Self::CancelJob { job_id, .. }
            | Self::TransitionJobStatus { job_id, .. }
            | Self::GrantJobMasterEpoch { job_id, .. }
            | Self::LeaseSlots { job_id, .. }
            | Self::ReleaseSlots { job_id, .. }
            | Self::AllocateCheckpointId { job_id, .. }
            | Self::CompleteCheckpoint { job_id, .. }
            | Self::RecordSavepoint { job_id, .. }
            | Self::RecordJobResult { job_id, .. }
            | Self::PutJobMetadata { job_id, .. }
            | Self::RecordJobFailure { job_id, .. }
            | Self::RecordDeployment { job_id, .. }
            | Self::RequestSavepoint { job_id, .. }
            | Self::ResolveSavepointRequest { job_id, .. } => Some(job_id),
            Self::RequestSavepointDisposal { job_id, .. } => job_id.as_deref(),
            Self::RegisterTaskManager { .. }
            | Self::UnregisterTaskManager { .. }
            | Self::Batch { .. }
            | Self::ResolveSavepointDisposal { .. }
            | Self::RecordLeaderChange { .. } => None,
        }
    }
}

/// The outcome of a command that applied successfully. Same format rules as [`Command`]: append-only variants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// A `SubmitJob` was accepted.
    JobSubmitted {
        /// The job's id; for a retried submission, the id of the job the first attempt created.
        job_id: JobId,
        /// False when the idempotency key already existed and nothing was created.
        created: bool,
    },
    /// A `CancelJob` was accepted.
    JobCancelled {
        /// The job.
        job_id: JobId,
        /// CANCELED if the job was cancelled outright, CANCELLING if its JobMaster must still stop it.
        status: JobStatus,
    },
    /// A `TransitionJobStatus` was accepted.
    JobStatusChanged {
        /// The job.
        job_id: JobId,
        /// Its status now.
        status: JobStatus,
    },
    /// A `GrantJobMasterEpoch` was accepted.
    EpochGranted {
        /// The job.
        job_id: JobId,
        /// The new epoch, which the new JobMaster puts in its commands.
        epoch: Epoch,
    },
    /// A `RegisterTaskManager` was accepted.
    TaskManagerRegistered {
        /// The TaskManager.
        tm_id: TaskManagerId,
        /// Leased slots that no longer exist because a re-registration shrank the slot count.
        released: Vec<SlotId>,
    },
    /// An `UnregisterTaskManager` was accepted.
    TaskManagerUnregistered {
        /// The TaskManager.
        tm_id: TaskManagerId,
        /// The leases that went with it, with the job that held each.
        released: Vec<(SlotId, JobId)>,
    },
    /// A `LeaseSlots` was accepted.
    SlotsLeased {
        /// The job.
        job_id: JobId,
        /// The epoch the leases now carry.
        epoch: Epoch,
    },
    /// A `ReleaseSlots` was accepted.
    SlotsReleased {
        /// The job.
        job_id: JobId,
        /// The slots returned.
        released: Vec<SlotId>,
    },
    /// An `AllocateCheckpointId` was accepted.
    CheckpointIdAllocated {
        /// The job.
        job_id: JobId,
        /// The new id.
        checkpoint_id: CheckpointId,
    },
    /// A `CompleteCheckpoint` was accepted.
    CheckpointCompleted {
        /// The job.
        job_id: JobId,
        /// The completed checkpoint.
        checkpoint_id: CheckpointId,
        /// Checkpoints dropped by retention, oldest first; the caller deletes their files.
        discarded: Vec<CompletedCheckpoint>,
    },
    /// A `RecordSavepoint` was accepted.
    SavepointRecorded {
        /// The job.
        job_id: JobId,
        /// The savepoint's checkpoint id.
        checkpoint_id: CheckpointId,
    },
    /// A `RecordJobResult` was accepted (or repeated).
    JobResultRecorded {
        /// The job.
        job_id: JobId,
        /// Its terminal status.
        status: JobStatus,
    },
    /// A `PutJobMetadata` was accepted.
    MetadataPut {
        /// The job.
        job_id: JobId,
        /// The key written.
        key: String,
    },
    /// The outcome of each command of a `Batch`, in order.
    Batch {
        /// One outcome per command.
        results: Vec<Result<Response, DeterministicError>>,
    },
    /// A `RecordJobFailure` was accepted.
    JobFailureRecorded {
        /// The job.
        job_id: JobId,
        /// Restarts of the job so far.
        restarts: u32,
    },
    /// A `RecordDeployment` was accepted.
    DeploymentRecorded {
        /// The job.
        job_id: JobId,
        /// The attempt recorded.
        attempt: u32,
    },
    /// A `RequestSavepoint` was accepted.
    SavepointRequested {
        /// The job.
        job_id: JobId,
        /// The request id.
        request_id: String,
        /// False when a request with this id already existed.
        created: bool,
    },
    /// A `ResolveSavepointRequest` was accepted.
    SavepointRequestResolved {
        /// The job.
        job_id: JobId,
        /// The request id.
        request_id: String,
    },
    /// A `RequestSavepointDisposal` was accepted.
    SavepointDisposalRequested {
        /// The request id.
        request_id: String,
    },
    /// A `ResolveSavepointDisposal` was accepted.
    SavepointDisposalResolved {
        /// The request id.
        request_id: String,
    },
    /// A `RecordLeaderChange` was accepted.
    LeaderChangeRecorded {
        /// The leader's term.
        term: u64,
    },
}

/// Why a command was rejected. Every replica reaches the same verdict, so this is a replicated outcome, not a local
/// failure; a rejected command changes nothing. Same format rules as [`Command`]: append-only variants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum DeterministicError {
    /// No job has this id.
    #[error("job {job_id} does not exist; check the job id")]
    JobNotFound {
        /// The id looked up.
        job_id: JobId,
    },
    /// The job id is used by a submission with another idempotency key.
    #[error(
        "job id {job_id} is already used by a submission with a different idempotency key; submit with a fresh id"
    )]
    JobIdTaken {
        /// The id asked for.
        job_id: JobId,
    },
    /// The job is over and can no longer change this way.
    #[error("job {job_id} is already {status} and can no longer change; submit it again as a new job if needed")]
    JobTerminal {
        /// The job.
        job_id: JobId,
        /// Its terminal status.
        status: JobStatus,
    },
    /// The command comes from a JobMaster that has been replaced.
    #[error("job {job_id} is at epoch {current}; command carries stale epoch {given} (a newer JobMaster took over)")]
    StaleEpoch {
        /// The job.
        job_id: JobId,
        /// Epoch in the command.
        given: Epoch,
        /// The job's epoch.
        current: Epoch,
    },
    /// The command carries an epoch that was never granted.
    #[error("job {job_id} is at epoch {current}; command carries epoch {given}, which was never granted")]
    FutureEpoch {
        /// The job.
        job_id: JobId,
        /// Epoch in the command.
        given: Epoch,
        /// The job's epoch.
        current: Epoch,
    },
    /// Flink's job state machine does not allow this transition.
    #[error("job {job_id} cannot go from {from} to {to} (terminal statuses are set by recording the job's result)")]
    InvalidTransition {
        /// The job.
        job_id: JobId,
        /// Its current status.
        from: JobStatus,
        /// The status asked for.
        to: JobStatus,
    },
    /// No TaskManager has this id.
    #[error("task manager {tm_id} is not registered; it must register (again) first")]
    TaskManagerNotFound {
        /// The id looked up.
        tm_id: TaskManagerId,
    },
    /// The slot index is beyond its TaskManager's slot count.
    #[error("slot {slot} does not exist: its task manager offers {slots} slots, numbered from 0")]
    SlotOutOfRange {
        /// The slot asked for.
        slot: SlotId,
        /// How many slots its TaskManager offers.
        slots: u32,
    },
    /// The slot is leased to another job.
    #[error("slot {slot} is leased to job {held_by}; pick a free slot or wait for that job to release it")]
    SlotUnavailable {
        /// The slot asked for.
        slot: SlotId,
        /// The job holding it.
        held_by: JobId,
    },
    /// The job does not hold the slot it tried to release.
    #[error("slot {slot} is not leased to job {job_id}, so it cannot release it")]
    SlotNotHeld {
        /// The slot.
        slot: SlotId,
        /// The job that tried to release it.
        job_id: JobId,
    },
    /// The checkpoint id was never allocated for this job.
    #[error("checkpoint {checkpoint_id} of job {job_id} was never allocated (highest allocated: {last_allocated})")]
    CheckpointNotAllocated {
        /// The job.
        job_id: JobId,
        /// The id in the command.
        checkpoint_id: CheckpointId,
        /// The highest id allocated so far (0 = none).
        last_allocated: CheckpointId,
    },
    /// A newer checkpoint already completed, so this one is superseded.
    #[error("checkpoint {checkpoint_id} of job {job_id} is not newer than completed checkpoint {latest_completed}")]
    CheckpointOutOfOrder {
        /// The job.
        job_id: JobId,
        /// The id in the command.
        checkpoint_id: CheckpointId,
        /// The newest completed checkpoint.
        latest_completed: CheckpointId,
    },
    /// A job result must be a terminal status.
    #[error("{status} is not a final job status; a job result is FAILED, CANCELED or FINISHED")]
    NotTerminalStatus {
        /// The status given.
        status: JobStatus,
    },
    /// A field of the command is malformed or beyond a limit.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The offending field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl DeterministicError {
    /// A stable snake_case code for clients, logs and metrics, e.g. "stale_epoch".
    pub fn code(&self) -> &'static str {
        match self {
            Self::JobNotFound { .. } => "job_not_found",
            Self::JobIdTaken { .. } => "job_id_taken",
            Self::JobTerminal { .. } => "job_terminal",
            Self::StaleEpoch { .. } => "stale_epoch",
            Self::FutureEpoch { .. } => "future_epoch",
            Self::InvalidTransition { .. } => "invalid_transition",
            Self::TaskManagerNotFound { .. } => "task_manager_not_found",
            Self::SlotOutOfRange { .. } => "slot_out_of_range",
            Self::SlotUnavailable { .. } => "slot_unavailable",
            Self::SlotNotHeld { .. } => "slot_not_held",
            Self::CheckpointNotAllocated { .. } => "checkpoint_not_allocated",
            Self::CheckpointOutOfOrder { .. } => "checkpoint_out_of_order",
            Self::NotTerminalStatus { .. } => "not_terminal_status",
            Self::InvalidArgument { .. } => "invalid_argument",
        }
    }

    /// Whether the command named a job or TaskManager that does not exist (maps to NOT_FOUND in gRPC).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::JobNotFound { .. } | Self::TaskManagerNotFound { .. })
    }

    /// An [`DeterministicError::InvalidArgument`] for `field`.
    pub fn invalid(field: &str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument { field: field.to_string(), reason: reason.into() }
    }
}

/// Encodes a command, response, error or snapshot in the on-disk format: bincode, standard configuration.
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Encoding into a Vec cannot fail for this crate's types (structs, enums, strings, integers and collections of
    // known length). A failure means someone added a type whose Serialize impl errors: a bug, not bad input.
    bincode::serde::encode_to_vec(v, bincode::config::standard()).expect("state machine types always encode")
}

/// Decodes what [`encode`] wrote. Trailing bytes are an error: they mean the bytes hold something else than a `T`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let (value, read) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map_err(|e| format!("cannot decode {} bytes: {e}", bytes.len()))?;
    if read != bytes.len() {
        return Err(format!("decoded {read} of {} bytes; {} trailing bytes", bytes.len(), bytes.len() - read));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Asserts that `value` encodes to exactly `expected_hex` and decodes back to itself. A failure here means the
    /// on-disk format changed: read the module documentation before "fixing" the expected bytes.
    #[track_caller]
    fn assert_golden<T: Serialize + DeserializeOwned + PartialEq + fmt::Debug>(value: T, expected_hex: &str) {
        let bytes = encode(&value);
        assert_eq!(hex(&bytes), expected_hex, "encoding of {value:?} changed");
        assert_eq!(decode::<T>(&bytes).as_ref(), Ok(&value));
    }

    const JOB: &str = "0123456789abcdef0123456789abcdef";

    fn job() -> JobId {
        JOB.to_string()
    }

    fn slot(index: u32) -> SlotId {
        SlotId::new("tm-1", index)
    }

    fn checkpoint() -> CompletedCheckpoint {
        CompletedCheckpoint {
            id: 7,
            trigger_at_ms: 1_700_000_000_000,
            completed_at_ms: 1_700_000_000_500,
            external_path: "s3://ckpt/7".to_string(),
            state_size_bytes: 1024,
        }
    }

    #[test]
    fn golden_submit_job() {
        assert_golden(
            Command::SubmitJob {
                job_id: job(),
                idempotency_key: "key-1".to_string(),
                name: "wordcount".to_string(),
                spec_json: "{}".to_string(),
                max_retained_checkpoints: 3,
                submitted_at_ms: 1_700_000_000_000,
            },
            "00203031323334353637383961626364656630313233343536373839616263646566056b65792d3109776f7264636f756e74027b7d03fd0068e5cf8b010000",
        );
    }

    #[test]
    fn golden_cancel_job() {
        assert_golden(
            Command::CancelJob { job_id: job(), at_ms: 1_700_000_000_000 },
            "01203031323334353637383961626364656630313233343536373839616263646566fd0068e5cf8b010000",
        );
    }

    #[test]
    fn golden_transition_job_status() {
        assert_golden(
            Command::TransitionJobStatus {
                job_id: job(),
                epoch: 2,
                to: JobStatus::Running,
                at_ms: 1_700_000_000_000,
                reason: Some("scheduled".to_string()),
            },
            "022030313233343536373839616263646566303132333435363738396162636465660202fd0068e5cf8b01000001097363686564756c6564",
        );
    }

    #[test]
    fn golden_grant_job_master_epoch() {
        assert_golden(
            Command::GrantJobMasterEpoch { job_id: job(), leader_term: 5, at_ms: 1_700_000_000_000 },
            "0320303132333435363738396162636465663031323334353637383961626364656605fd0068e5cf8b010000",
        );
    }

    #[test]
    fn golden_register_task_manager() {
        assert_golden(
            Command::RegisterTaskManager {
                tm_id: "tm-1".to_string(),
                address: "10.0.0.1:6122".to_string(),
                slots: 4,
                zone: Some("a".to_string()),
                at_ms: 1_700_000_000_000,
            },
            "0404746d2d310d31302e302e302e313a3631323204010161fd0068e5cf8b010000",
        );
    }

    #[test]
    fn golden_unregister_task_manager() {
        assert_golden(
            Command::UnregisterTaskManager {
                tm_id: "tm-1".to_string(),
                at_ms: 1_700_000_000_000,
                reason: "heartbeat timeout".to_string(),
            },
            "0504746d2d31fd0068e5cf8b010000116865617274626561742074696d656f7574",
        );
    }

    #[test]
    fn golden_lease_slots() {
        assert_golden(
            Command::LeaseSlots {
                job_id: job(),
                epoch: 2,
                slots: vec![slot(0), slot(3)],
                at_ms: 1_700_000_000_000,
            },
            "06203031323334353637383961626364656630313233343536373839616263646566020204746d2d310004746d2d3103fd0068e5cf8b010000",
        );
    }

    #[test]
    fn golden_release_slots() {
        assert_golden(
            Command::ReleaseSlots { job_id: job(), epoch: 2, slots: vec![slot(3)], at_ms: 1_700_000_000_000 },
            "07203031323334353637383961626364656630313233343536373839616263646566020104746d2d3103fd0068e5cf8b010000",
        );
    }

    #[test]
    fn golden_allocate_checkpoint_id() {
        assert_golden(
            Command::AllocateCheckpointId { job_id: job(), epoch: 2, at_ms: 1_700_000_000_000 },
            "0820303132333435363738396162636465663031323334353637383961626364656602fd0068e5cf8b010000",
        );
    }

    #[test]
    fn golden_complete_checkpoint() {
        assert_golden(
            Command::CompleteCheckpoint {
                job_id: job(),
                epoch: 2,
                checkpoint: checkpoint(),
            },
            "092030313233343536373839616263646566303132333435363738396162636465660207fd0068e5cf8b010000fdf469e5cf8b0100000b73333a2f2f636b70742f37fb0004",
        );
    }

    #[test]
    fn golden_record_savepoint() {
        assert_golden(
            Command::RecordSavepoint {
                job_id: job(),
                epoch: 2,
                savepoint: Savepoint {
                    checkpoint_id: 8,
                    path: "s3://sp/8".to_string(),
                    at_ms: 1_700_000_000_000,
                },
            },
            "0a20303132333435363738396162636465663031323334353637383961626364656602080973333a2f2f73702f38fd0068e5cf8b010000",
        );
    }

    #[test]
    fn golden_record_job_result() {
        assert_golden(
            Command::RecordJobResult {
                job_id: job(),
                epoch: 2,
                status: JobStatus::Failed,
                at_ms: 1_700_000_000_000,
                error: Some("oom".to_string()),
            },
            "0b2030313233343536373839616263646566303132333435363738396162636465660204fd0068e5cf8b01000001036f6f6d",
        );
    }

    #[test]
    fn golden_put_job_metadata() {
        assert_golden(
            Command::PutJobMetadata { job_id: job(), key: "owner".to_string(), value: vec![1, 2, 3], at_ms: 1 },
            "0c203031323334353637383961626364656630313233343536373839616263646566056f776e65720301020301",
        );
    }

    #[test]
    fn golden_batch() {
        assert_golden(
            Command::Batch { commands: vec![Command::CancelJob { job_id: job(), at_ms: 1 }] },
            "0d010120303132333435363738396162636465663031323334353637383961626364656601",
        );
        assert_golden(
            Response::Batch { results: vec![Ok(Response::MetadataPut { job_id: job(), key: "k".to_string() })] },
            "0d01000c203031323334353637383961626364656630313233343536373839616263646566016b",
        );
    }

    #[test]
    fn golden_record_job_failure() {
        assert_golden(
            Command::RecordJobFailure {
                job_id: job(),
                epoch: 2,
                at_ms: 5,
                error: "tm lost".to_string(),
                restarting: true,
            },
            "0e203031323334353637383961626364656630313233343536373839616263646566020507746d206c6f737401",
        );
    }

    #[test]
    fn golden_record_deployment() {
        assert_golden(
            Command::RecordDeployment {
                job_id: job(),
                epoch: 2,
                attempt: 3,
                components: vec![DeployedComponent { vertices: vec!["src".to_string()], slots: vec![slot(0)] }],
                restored_from: Some("/ck/chk-4".to_string()),
                checkpoint_dir: "/ck".to_string(),
                at_ms: 6,
            },
            "0f20303132333435363738396162636465663031323334353637383961626364656602030101037372630104746d2d310001092f636b2f63686b2d34032f636b06",
        );
    }

    #[test]
    fn golden_request_savepoint() {
        assert_golden(
            Command::RequestSavepoint {
                job_id: job(),
                request_id: "r1".to_string(),
                target_dir: None,
                terminate: true,
                at_ms: 7,
            },
            "10203031323334353637383961626364656630313233343536373839616263646566027231000107",
        );
    }

    #[test]
    fn golden_resolve_savepoint_request() {
        let savepoint = Savepoint { checkpoint_id: 4, path: "/sp/1".to_string(), at_ms: 8 };
        assert_golden(
            Command::ResolveSavepointRequest {
                job_id: job(),
                epoch: 2,
                request_id: "r1".to_string(),
                outcome: SavepointOutcome::Completed { savepoint },
                at_ms: 9,
            },
            "11203031323334353637383961626364656630313233343536373839616263646566020272310004052f73702f310809",
        );
        assert_golden(
            Response::SavepointRequested { job_id: job(), request_id: "r1".to_string(), created: true },
            "1020303132333435363738396162636465663031323334353637383961626364656602723101",
        );
    }

    #[test]
    fn golden_request_savepoint_disposal() {
        assert_golden(
            Command::RequestSavepointDisposal {
                request_id: "r1".to_string(),
                path: "/sp/1".to_string(),
                job_id: Some(job()),
                at_ms: 7,
            },
            "12027231052f73702f310120303132333435363738396162636465663031323334353637383961626364656607",
        );
        assert_golden(Response::SavepointDisposalRequested { request_id: "r1".to_string() }, "12027231");
    }

    #[test]
    fn golden_resolve_savepoint_disposal() {
        assert_golden(
            Command::ResolveSavepointDisposal {
                request_id: "r1".to_string(),
                outcome: DisposalOutcome::Failed { message: "denied".to_string() },
                at_ms: 9,
            },
            "13027231010664656e69656409",
        );
        assert_golden(
            Command::ResolveSavepointDisposal {
                request_id: "r1".to_string(),
                outcome: DisposalOutcome::Disposed,
                at_ms: 9,
            },
            "130272310009",
        );
        assert_golden(Response::SavepointDisposalResolved { request_id: "r1".to_string() }, "13027231");
    }

    #[test]
    fn golden_record_leader_change() {
        assert_golden(
            Command::RecordLeaderChange { term: 7, leader: 2, at_ms: 9, leaderless_ms: Some(340) },
            "1407020901fb5401",
        );
        assert_golden(Response::LeaderChangeRecorded { term: 7 }, "1407");
    }

    #[test]
    fn golden_response() {
        assert_golden(
            Response::CheckpointCompleted {
                job_id: job(),
                checkpoint_id: 7,
                discarded: vec![checkpoint()],
            },
            "09203031323334353637383961626364656630313233343536373839616263646566070107fd0068e5cf8b010000fdf469e5cf8b0100000b73333a2f2f636b70742f37fb0004",
        );
        assert_golden(
            Response::TaskManagerUnregistered { tm_id: "tm-1".to_string(), released: vec![(slot(2), job())] },
            "0504746d2d310104746d2d3102203031323334353637383961626364656630313233343536373839616263646566",
        );
    }

    #[test]
    fn golden_error() {
        assert_golden(
            DeterministicError::StaleEpoch { job_id: job(), given: 3, current: 4 },
            "032030313233343536373839616263646566303132333435363738396162636465660304",
        );
        assert_golden(
            DeterministicError::SlotUnavailable { slot: slot(1), held_by: job() },
            "0804746d2d3101203031323334353637383961626364656630313233343536373839616263646566",
        );
    }

    #[test]
    fn golden_job_status_indexes() {
        // Statuses are embedded in commands; their variant indexes are part of the format too.
        let encoded: Vec<String> = JobStatus::ALL.iter().map(|s| hex(&encode(s))).collect();
        let expected: Vec<String> = (0..11u8).map(|i| format!("{i:02x}")).collect();
        assert_eq!(encoded, expected);
    }

    #[test]
    fn decode_rejects_trailing_bytes() {
        let mut bytes = encode(&Command::CancelJob { job_id: job(), at_ms: 1 });
        bytes.push(0);
        let err = decode::<Command>(&bytes).unwrap_err();
        assert!(err.contains("1 trailing bytes"), "{err}");
    }

    #[test]
    fn decode_rejects_garbage_without_panicking() {
        for bytes in [&[][..], &[0xff][..], &[13][..], &[0, 0xff, 0xff, 0xff, 0xff, 0x0f][..]] {
            assert!(decode::<Command>(bytes).is_err(), "{bytes:?}");
        }
    }

    #[test]
    fn flink_names_round_trip() {
        for status in JobStatus::ALL {
            assert_eq!(JobStatus::from_flink_str(status.as_flink_str()), Some(status));
            assert_eq!(status.to_string(), status.as_flink_str());
        }
        assert_eq!(JobStatus::Canceled.as_flink_str(), "CANCELED");
        assert_eq!(JobStatus::from_flink_str("running"), None);
    }

    #[test]
    fn terminal_statuses_are_failed_canceled_finished() {
        let terminal: Vec<JobStatus> = JobStatus::ALL.into_iter().filter(|s| s.is_terminal()).collect();
        assert_eq!(terminal, vec![JobStatus::Failed, JobStatus::Canceled, JobStatus::Finished]);
    }

    #[test]
    fn no_transition_leads_to_or_from_a_terminal_status() {
        for from in JobStatus::ALL {
            for to in JobStatus::ALL {
                if from.is_terminal() || to.is_terminal() {
                    assert!(!from.can_transition_to(to), "{from} -> {to}");
                }
            }
        }
    }

    #[test]
    fn command_names_and_error_codes_are_snake_case() {
        let is_snake = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c == '_');
        let cmd = Command::CancelJob { job_id: job(), at_ms: 1 };
        assert!(is_snake(cmd.name()));
        assert_eq!(cmd.job_id(), Some(JOB));
        let err = DeterministicError::StaleEpoch { job_id: job(), given: 3, current: 4 };
        assert_eq!(err.code(), "stale_epoch");
        assert!(!err.is_not_found());
        assert!(DeterministicError::JobNotFound { job_id: job() }.is_not_found());
    }

    #[test]
    fn error_messages_carry_the_data() {
        let err = DeterministicError::StaleEpoch { job_id: "1f".to_string(), given: 3, current: 4 };
        assert_eq!(
            err.to_string(),
            "job 1f is at epoch 4; command carries stale epoch 3 (a newer JobMaster took over)"
        );
        let err = DeterministicError::SlotOutOfRange { slot: slot(9), slots: 4 };
        assert_eq!(err.to_string(), "slot tm-1#9 does not exist: its task manager offers 4 slots, numbered from 0");
    }
}
