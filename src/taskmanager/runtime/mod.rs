//! The task runtime: runs the subtasks of a job's vertices on a TaskManager (Flink's `Task` and `StreamTask`).
//!
//! A [`Deployment`] is what a TaskManager runs for one attempt of one job: every subtask of the vertices it was
//! given (whole connected components, so all data exchange is local). Each subtask runs its vertex's operator chain
//! on one tokio task (task chaining); subtasks exchange [`StreamElement`](record::StreamElement)s — records,
//! watermarks, checkpoint barriers, end of input — over bounded channels, one per (upstream subtask, downstream
//! subtask) pair, so a slow consumer backpressures its producers all the way to the sources.
//!
//! Files:
//! * `record.rs`: records and stream elements; `partition.rs`: key groups and the stable key hash;
//! * `expr.rs`: the expression language of `map` and `filter` (Rhai expressions over the record's fields);
//! * `sources.rs`, `operators.rs`, `sinks.rs`: the operators; `channel.rs`: input gates and output routing;
//! * `subtask.rs`: one subtask's loop, barrier alignment and checkpoints; `state.rs`: snapshot files and restore
//!   planning; `deployment.rs`: building and spawning a deployment and the control API.
//!
//! What it owns: the subtasks' lifecycle (DEPLOYING → INITIALIZING → RUNNING → FINISHED / CANCELED / FAILED,
//! each transition reported as a [`TaskEvent`]), operator state, the state files of checkpoints and savepoints
//! (`<dir>/<vertex>-<subtask>.state`), and the part files of `file` sinks. What it does not own: deciding when to
//! checkpoint, when a checkpoint is complete, or when to restart — that is the JobMaster's checkpoint coordinator,
//! which calls [`Deployment::trigger_checkpoint`], collects the acks, writes the checkpoint's metadata and then
//! calls [`Deployment::notify_checkpoint_complete`].
//!
//! Invariants:
//! * Exactly once: checkpoints use aligned barriers (Flink's exactly-once mode), every operator's state is in the
//!   snapshot, and the file sink commits a part file only when the checkpoint that covers its records completes;
//!   a restore commits what the restored checkpoint had pending and deletes everything written after it.
//! * A failure never hangs the deployment: a failing subtask reports FAILED and cancels every other subtask of the
//!   deployment (they report CANCELED); the JobMaster restarts the whole job from its latest checkpoint.
//! * Nothing panics on bad input: bad records, expressions, state files or I/O become typed errors
//!   ([`RuntimeError`]) that fail a subtask or the deployment's start with a message naming vertex and operator.
//!
//! Caveats:
//! * CANCELING is visible in [`Deployment::status`] only; the events of a cancelled subtask are its earlier states
//!   and then CANCELED.
//! * The events channel is the subtasks' only way out: if nobody drains it, subtasks stop at their next transition
//!   or acknowledgement (backpressure, not loss).
//! * Subtasks that finished are acknowledged from their final snapshot; a checkpoint coordinator expecting an ack
//!   from every subtask of the job gets one as long as the deployment exists.
//! * See `sinks.rs` for the file sink's end-of-input commit and `operators.rs` for watermark caveats.

mod channel;
mod deployment;
pub mod expr;
pub mod operators;
pub mod partition;
pub mod record;
pub mod sinks;
pub mod sources;
pub mod state;
mod subtask;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use deployment::Deployment;
pub use expr::{ExprEngine, ExprError};
pub use operators::OperatorError;
pub use record::Record;

use crate::jobgraph::{JobGraph, OperatorSpec};

/// What to run: some vertices of one attempt of one job.
#[derive(Debug, Clone)]
pub struct DeploymentSpec {
    /// The job.
    pub job_id: String,
    /// Deployment attempt; appears in in-progress sink file names.
    pub attempt: u32,
    /// The job graph.
    pub graph: Arc<JobGraph>,
    /// Indexes into `graph.vertices` deployed here, all subtasks of each; they must form whole connected
    /// components (every edge of a deployed vertex leads to a deployed vertex).
    pub vertices: Vec<usize>,
    /// A completed checkpoint's or savepoint's directory to restore from.
    pub restore: Option<PathBuf>,
    /// This job's checkpoint base directory; checkpoint N goes to `checkpoint_dir/chk-N`.
    pub checkpoint_dir: PathBuf,
}

/// The state of a subtask, with Flink's names ([`TaskState::as_flink_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskState {
    /// Created, not yet started.
    Created,
    /// Its tokio task is starting.
    Deploying,
    /// Restoring state and preparing operators (the file sink commits and cleans up here).
    Initializing,
    /// Processing.
    Running,
    /// Ran to the end of its input (or stopped by stop-with-savepoint). Terminal.
    Finished,
    /// Cancellation was requested and is in progress.
    Canceling,
    /// Cancelled. Terminal.
    Canceled,
    /// Failed with an error. Terminal.
    Failed,
}

impl TaskState {
    /// Every state, in declaration order (the order of the `u8` encoding).
    pub const ALL: [TaskState; 8] = [
        TaskState::Created,
        TaskState::Deploying,
        TaskState::Initializing,
        TaskState::Running,
        TaskState::Finished,
        TaskState::Canceling,
        TaskState::Canceled,
        TaskState::Failed,
    ];

    /// Flink's name: `CREATED`, `DEPLOYING`, `INITIALIZING`, `RUNNING`, `FINISHED`, `CANCELING`, `CANCELED`,
    /// `FAILED`.
    pub fn as_flink_str(self) -> &'static str {
        match self {
            TaskState::Created => "CREATED",
            TaskState::Deploying => "DEPLOYING",
            TaskState::Initializing => "INITIALIZING",
            TaskState::Running => "RUNNING",
            TaskState::Finished => "FINISHED",
            TaskState::Canceling => "CANCELING",
            TaskState::Canceled => "CANCELED",
            TaskState::Failed => "FAILED",
        }
    }

    /// Parses Flink's name (as [`TaskState::as_flink_str`] writes it).
    pub fn from_flink_str(text: &str) -> Option<TaskState> {
        Self::ALL.into_iter().find(|s| s.as_flink_str() == text)
    }

    /// Whether the state is final: FINISHED, CANCELED or FAILED.
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskState::Finished | TaskState::Canceled | TaskState::Failed)
    }

    /// Decodes the `u8` form used in atomics; unknown values read as FAILED (never produced).
    fn from_u8(value: u8) -> TaskState {
        Self::ALL.get(usize::from(value)).copied().unwrap_or(TaskState::Failed)
    }
}

/// What a barrier is for.
#[derive(Debug, Clone, PartialEq)]
pub enum BarrierKind {
    /// A periodic checkpoint: state goes to `checkpoint_dir/chk-<id>`.
    Checkpoint,
    /// A savepoint: state goes to `dir`; with `terminate` (stop-with-savepoint) sources stop after the barrier and
    /// the deployment finishes once the savepoint completes.
    Savepoint {
        /// The savepoint directory.
        dir: PathBuf,
        /// Stop the job once the savepoint completes.
        terminate: bool,
    },
}

/// A checkpoint barrier, injected at the sources by [`Deployment::trigger_checkpoint`].
#[derive(Debug, Clone, PartialEq)]
pub struct Barrier {
    /// The checkpoint (or savepoint) id; ids only grow.
    pub checkpoint_id: u64,
    /// When it was triggered, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// Checkpoint or savepoint.
    pub kind: BarrierKind,
}

/// What a deployment reports to its TaskManager, which forwards it to the job's JobMaster as is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskEvent {
    /// A subtask changed state.
    StateChanged {
        /// The job.
        job_id: String,
        /// The deployment attempt.
        attempt: u32,
        /// The vertex id.
        vertex: String,
        /// The subtask index.
        subtask: u32,
        /// The new state.
        state: TaskState,
        /// Why it failed (FAILED only).
        error: Option<String>,
    },
    /// A subtask wrote its state for a checkpoint.
    CheckpointAcked {
        /// The job.
        job_id: String,
        /// The deployment attempt.
        attempt: u32,
        /// The checkpoint.
        checkpoint_id: u64,
        /// The vertex id.
        vertex: String,
        /// The subtask index.
        subtask: u32,
        /// The state file's path.
        handle: String,
        /// The state file's size in bytes.
        state_size: u64,
    },
    /// A subtask could not take part in a checkpoint.
    CheckpointDeclined {
        /// The job.
        job_id: String,
        /// The deployment attempt.
        attempt: u32,
        /// The checkpoint.
        checkpoint_id: u64,
        /// The vertex id.
        vertex: String,
        /// The subtask index.
        subtask: u32,
        /// Why.
        reason: String,
    },
}

/// A subtask's state and counters (also what a TaskManager reports to the leader).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubtaskStatus {
    /// The vertex id.
    pub vertex: String,
    /// The subtask index.
    pub subtask: u32,
    /// Its state.
    pub state: TaskState,
    /// Records that entered the chain (from inputs, or emitted by its source).
    pub records_in: u64,
    /// Records that left the chain (sent downstream, or written by its sink).
    pub records_out: u64,
    /// Time spent processing records (not waiting for input or output), in ms.
    pub busy_ms: u64,
}

/// Why the runtime refused or failed something.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The deployment spec does not fit the graph (unknown vertex, a component split, a bad edge).
    #[error("invalid deployment: {0}")]
    InvalidDeployment(String),
    /// An expression of a `map` or `filter` does not compile.
    #[error("vertex `{vertex}` operator {operator} (`{kind}`): {source}")]
    Expression {
        /// The vertex id.
        vertex: String,
        /// The operator's position in the chain.
        operator: usize,
        /// The operator's name.
        kind: &'static str,
        /// The compile error, naming the expression.
        #[source]
        source: ExprError,
    },
    /// Operator settings the runtime cannot run (a window of size 0, a bad rate, ...).
    #[error("vertex `{vertex}` operator {operator} (`{kind}`): {reason}")]
    Config {
        /// The vertex id.
        vertex: String,
        /// The operator's position in the chain.
        operator: usize,
        /// The operator's name.
        kind: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The state to restore is missing, unreadable or does not fit the job.
    #[error("cannot restore from {}: {reason}", path.display())]
    Restore {
        /// The restore directory or the offending file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An operator failed; the subtask fails.
    #[error("vertex `{vertex}` subtask {subtask} operator {operator} (`{kind}`): {source}")]
    Operator {
        /// The vertex id.
        vertex: String,
        /// The subtask index.
        subtask: u32,
        /// The operator's position in the chain.
        operator: usize,
        /// The operator's name.
        kind: &'static str,
        /// What went wrong.
        #[source]
        source: OperatorError,
    },
    /// A data exchange broke (a peer subtask died).
    #[error("vertex `{vertex}` subtask {subtask}: {reason}")]
    Exchange {
        /// The vertex id.
        vertex: String,
        /// The subtask index.
        subtask: u32,
        /// What happened.
        reason: String,
    },
    /// [`Deployment::trigger_checkpoint`] found no source subtask running.
    #[error("no source subtask is running")]
    NoRunningSource,
    /// A subtask's control queue is full (it is not keeping up with control messages).
    #[error("the control queue of vertex `{vertex}` subtask {subtask} is full")]
    ControlQueueFull {
        /// The vertex id.
        vertex: String,
        /// The subtask index.
        subtask: u32,
    },
    /// The subtask was cancelled (reported as CANCELED, never as an error).
    #[error("canceled")]
    Canceled,
}

/// The name of an operator as written in a spec (`sequence`, `map`, `count`, ...).
pub fn operator_name(spec: &OperatorSpec) -> &'static str {
    match spec {
        OperatorSpec::Sequence(_) => "sequence",
        OperatorSpec::Files(_) => "files",
        OperatorSpec::Map(_) => "map",
        OperatorSpec::Filter(_) => "filter",
        OperatorSpec::KeyBy(_) => "key_by",
        OperatorSpec::Count(_) => "count",
        OperatorSpec::Sum(_) => "sum",
        OperatorSpec::Min(_) => "min",
        OperatorSpec::Max(_) => "max",
        OperatorSpec::Window(_) => "window",
        OperatorSpec::File(_) => "file",
        OperatorSpec::Log(_) => "log",
        OperatorSpec::Blackhole(_) => "blackhole",
    }
}
