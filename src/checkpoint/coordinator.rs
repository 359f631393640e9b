//! One job's checkpoint bookkeeping: Flink's `CheckpointCoordinator` without the I/O.
//!
//! The job's JobMaster owns one [`Coordinator`] and drives it. The coordinator decides *when* the next periodic
//! checkpoint is due, tracks which tasks have acknowledged each pending checkpoint, aborts checkpoints that time
//! out or are declined, and keeps the counters and history that the REST API shows. It never talks to a task,
//! never touches the storage and never proposes anything through Raft; the JobMaster does all of that and reports
//! back (`begin` after allocating an id, `completed` or `failed` after the commit).
//!
//! # The life of a checkpoint
//!
//! 1. [`Coordinator::is_trigger_due`] says a periodic checkpoint is due; the JobMaster allocates an id through Raft
//!    and calls [`Coordinator::begin`] (a savepoint is begun the same way, on a user's request).
//! 2. Tasks acknowledge ([`Coordinator::acknowledge`]) or decline ([`Coordinator::decline`]); the JobMaster calls
//!    [`Coordinator::expire`] when [`Coordinator::next_timeout_at`] passes.
//! 3. The last acknowledgement hands the [`PendingCheckpoint`] over ([`AckOutcome::AllAcked`]); the JobMaster writes
//!    the metadata and commits the checkpoint through Raft, then calls [`Coordinator::completed`] or
//!    [`Coordinator::failed`]. Between the hand-over and that call the checkpoint is *committing*.
//!
//! # Invariants
//!
//! * At most one periodic checkpoint is in flight (pending or committing), Flink's default
//!   `max-concurrent-checkpoints: 1`: [`Coordinator::next_trigger_at`] is `None` while one is. Savepoints are not
//!   limited and may run alongside it.
//! * The next periodic trigger is due at `max(last periodic trigger + interval, last completion + min_pause)`; the
//!   first one an interval after the coordinator was created, or at once after [`Coordinator::trigger_soon`].
//! * Checkpoint ids given to [`Coordinator::begin`] strictly increase (they come from the replicated counter).
//! * Only failures of periodic checkpoints (timeout, decline, a refused commit) count toward `tolerable_failed`,
//!   and only consecutive ones: a completed periodic checkpoint resets the count. When the count exceeds
//!   `tolerable_failed` the verdict is [`FailureVerdict::FailJob`] and the count starts again from zero (as Flink's
//!   `CheckpointFailureManager` does), so the restarted job gets the same tolerance. Savepoint failures are reported
//!   to the user and never fail the job; savepoint completions do not reset the count either.
//! * [`Coordinator::abort_all`] (restart, failover, cancel) aborts without counting: those aborts say nothing
//!   about whether the job can checkpoint.
//!
//! # Caveats
//!
//! * Time is tokio's [`Instant`], passed in by the caller, so tests run on a paused clock; wall-clock times
//!   (`*_wall_ms`) are only recorded for display. Where the caller gives no wall time (a decline, an expiry), the
//!   end time is estimated as the trigger's wall time plus the elapsed monotonic time.
//! * The expected tasks of a checkpoint are fixed when it begins; [`Coordinator::set_tasks`] affects later ones only.
//! * A checkpoint begun while the job has no tasks can never be acknowledged; it expires.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::jobgraph::CheckpointSpec;
use crate::telemetry;

/// Most checkpoint records kept in [`CheckpointStats::history`]; older ones are dropped first.
pub const MAX_HISTORY: usize = 100;

/// Timeout of savepoints when checkpointing is disabled (Flink's default checkpoint timeout, 10 minutes).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// How far in the future "never" is when a configured duration overflows the clock.
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 60 * 60);

/// The checkpointing settings the coordinator needs, resolved from a job's [`CheckpointSpec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointConfig {
    /// Time between periodic triggers.
    pub interval: Duration,
    /// A checkpoint (or savepoint) not complete after this long is aborted.
    pub timeout: Duration,
    /// Least time between the completion of one checkpoint and the trigger of the next periodic one.
    pub min_pause: Duration,
    /// Consecutive periodic checkpoint failures tolerated before the job fails over.
    pub tolerable_failed: u32,
}

impl CheckpointConfig {
    /// The settings of `spec`, or `None` when it sets no interval (checkpointing disabled).
    pub fn from_spec(spec: &CheckpointSpec) -> Option<Self> {
        Some(Self {
            interval: spec.interval?.as_duration(),
            timeout: spec.timeout.as_duration(),
            min_pause: spec.min_pause.as_duration(),
            tolerable_failed: spec.tolerable_failed,
        })
    }
}

/// One subtask of the job: the unit that acknowledges a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TaskKey {
    /// The vertex id.
    pub vertex: String,
    /// The subtask index, from 0.
    pub subtask: u32,
}

impl TaskKey {
    /// Subtask `subtask` of vertex `vertex`.
    pub fn new(vertex: impl Into<String>, subtask: u32) -> Self {
        Self { vertex: vertex.into(), subtask }
    }
}

impl fmt::Display for TaskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.vertex, self.subtask)
    }
}

/// What kind of snapshot a checkpoint id was allocated for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CheckpointKind {
    /// A periodic checkpoint, owned by the system and discarded when superseded.
    Checkpoint,
    /// A savepoint requested by a user, owned by the user.
    Savepoint {
        /// The target directory the savepoint is written under.
        dir: String,
        /// Stop the job once the savepoint completes (`jm job stop`).
        terminate: bool,
    },
}

impl CheckpointKind {
    /// Whether this is a savepoint.
    pub fn is_savepoint(&self) -> bool {
        matches!(self, Self::Savepoint { .. })
    }

    /// "checkpoint" or "savepoint", for messages.
    pub fn noun(&self) -> &'static str {
        match self {
            Self::Checkpoint => "checkpoint",
            Self::Savepoint { .. } => "savepoint",
        }
    }
}

/// A task's acknowledgement of a checkpoint: where its state snapshot is and how large it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskAck {
    /// The state handle (a path under the checkpoint directory).
    pub handle: String,
    /// Size of the snapshot in bytes.
    pub state_size: u64,
}

/// A checkpoint that has begun and still waits for acknowledgements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingCheckpoint {
    /// Its id, allocated through Raft.
    pub id: u64,
    /// Checkpoint or savepoint.
    pub kind: CheckpointKind,
    /// When it began (tokio's clock); the timeout counts from here.
    pub triggered_at: Instant,
    /// When it began, in unix milliseconds, for display and the metadata.
    pub trigger_wall_ms: u64,
    /// The acknowledgements received so far.
    pub acks: BTreeMap<TaskKey, TaskAck>,
    /// The tasks that must acknowledge it: the coordinator's tasks when it began.
    pub expected: BTreeSet<TaskKey>,
}

impl PendingCheckpoint {
    /// Total state size acknowledged so far, in bytes.
    pub fn state_size(&self) -> u64 {
        self.acks.values().map(|ack| ack.state_size).fold(0, u64::saturating_add)
    }

    /// Whether every expected task has acknowledged.
    pub fn is_fully_acknowledged(&self) -> bool {
        self.acks.len() == self.expected.len()
    }

    fn record(&self) -> CheckpointRecord {
        CheckpointRecord {
            id: self.id,
            kind: self.kind.clone(),
            status: CheckpointRecordStatus::InProgress,
            trigger_wall_ms: self.trigger_wall_ms,
            end_wall_ms: None,
            duration_ms: None,
            state_size: self.state_size(),
            acked: self.acks.len(),
            expected: self.expected.len(),
            failure: None,
        }
    }

    /// The wall-clock time at `now`, estimated from the trigger's wall time and the monotonic time elapsed since.
    fn wall_ms_at(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.triggered_at).as_millis();
        self.trigger_wall_ms.saturating_add(u64::try_from(elapsed).unwrap_or(u64::MAX))
    }
}

/// What an acknowledgement did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckOutcome {
    /// Nothing: the acknowledgement was late, for an unknown checkpoint, from an unexpected task, or a duplicate.
    Ignored {
        /// Why, for the log.
        reason: String,
    },
    /// Recorded; more are needed.
    Pending {
        /// Acknowledgements received so far.
        acked: usize,
        /// Acknowledgements needed.
        expected: usize,
    },
    /// That was the last one: the checkpoint is no longer pending and is handed over for the commit.
    AllAcked(PendingCheckpoint),
}

/// What a checkpoint failure means for the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureVerdict {
    /// Keep running.
    Tolerated {
        /// Consecutive periodic checkpoint failures so far, this one included if it counted.
        consecutive_failures: u32,
    },
    /// Too many consecutive failures: fail the job over (restart it per its restart strategy).
    FailJob {
        /// Why, for the job's failure cause.
        reason: String,
    },
}

/// Where a checkpoint in the history stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointRecordStatus {
    /// Pending or committing.
    InProgress,
    /// Committed through Raft.
    Completed,
    /// Expired, declined, aborted, or its commit failed.
    Failed,
}

/// One checkpoint or savepoint as the REST API shows it (Flink's checkpoint history entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    /// Its id.
    pub id: u64,
    /// Checkpoint or savepoint.
    pub kind: CheckpointKind,
    /// Where it stands.
    pub status: CheckpointRecordStatus,
    /// When it began, in unix milliseconds.
    pub trigger_wall_ms: u64,
    /// When it completed or failed, in unix milliseconds.
    pub end_wall_ms: Option<u64>,
    /// `end_wall_ms - trigger_wall_ms`, once it ended.
    pub duration_ms: Option<u64>,
    /// State size in bytes: acknowledged so far, or the committed total.
    pub state_size: u64,
    /// Tasks that acknowledged.
    pub acked: usize,
    /// Tasks that had to acknowledge.
    pub expected: usize,
    /// Why it failed.
    pub failure: Option<String>,
}

impl CheckpointRecord {
    /// Marks the record as ended at `end_wall_ms` with `status`.
    fn end(&mut self, status: CheckpointRecordStatus, end_wall_ms: u64) {
        self.status = status;
        self.end_wall_ms = Some(end_wall_ms);
        self.duration_ms = Some(end_wall_ms.saturating_sub(self.trigger_wall_ms));
    }
}

/// Counters and history of one job's checkpoints (Flink's `/jobs/:id/checkpoints`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointStats {
    /// Checkpoints and savepoints begun.
    pub triggered: u64,
    /// Checkpoints and savepoints completed.
    pub completed: u64,
    /// Checkpoints and savepoints that failed, aborts included.
    pub failed: u64,
    /// The checkpoint id and path the job was restored from, if any (set by the JobMaster).
    pub restored_from: Option<(u64, String)>,
    /// The most recent records, newest last, at most [`MAX_HISTORY`].
    pub history: VecDeque<CheckpointRecord>,
    /// The latest completed checkpoint or savepoint.
    pub latest_completed: Option<CheckpointRecord>,
    /// The latest failed checkpoint or savepoint.
    pub latest_failed: Option<CheckpointRecord>,
    /// The latest completed savepoint.
    pub latest_savepoint: Option<CheckpointRecord>,
}

impl CheckpointStats {
    /// The history record of checkpoint `id`, if still kept.
    pub fn record(&self, id: u64) -> Option<&CheckpointRecord> {
        self.history.iter().rev().find(|record| record.id == id)
    }

    /// Replaces the record with the same id, or appends it (dropping the oldest beyond [`MAX_HISTORY`]).
    fn upsert(&mut self, record: CheckpointRecord) {
        if let Some(slot) = self.history.iter_mut().rev().find(|r| r.id == record.id) {
            *slot = record;
            return;
        }
        self.history.push_back(record);
        while self.history.len() > MAX_HISTORY {
            self.history.pop_front();
        }
    }
}

/// One job's checkpoint bookkeeping. See the module documentation.
#[derive(Debug)]
pub struct Coordinator {
    /// Periodic checkpointing settings; `None` when disabled (savepoints still work).
    config: Option<CheckpointConfig>,
    /// The tasks that must acknowledge checkpoints begun from now on.
    tasks: BTreeSet<TaskKey>,
    /// Checkpoints waiting for acknowledgements, by id.
    pending: BTreeMap<u64, PendingCheckpoint>,
    /// Fully acknowledged checkpoints whose commit the caller is doing, by id, with their (in progress) records.
    committing: BTreeMap<u64, CheckpointRecord>,
    /// When the next periodic checkpoint is due, before min_pause is applied.
    scheduled: Instant,
    /// When the last checkpoint or savepoint completed; min_pause counts from here.
    last_completion: Option<Instant>,
    /// The highest id begun; ids must increase.
    last_id: u64,
    /// Consecutive periodic checkpoint failures since the last completion (or the last FailJob).
    consecutive_failures: u32,
    /// Counters and history.
    stats: CheckpointStats,
}

impl Coordinator {
    /// A coordinator for a job whose tasks are `tasks`; the first periodic checkpoint is due an interval after `now`.
    pub fn new(config: Option<CheckpointConfig>, tasks: BTreeSet<TaskKey>, now: Instant) -> Self {
        let scheduled = later(now, config.map(|c| c.interval).unwrap_or_default());
        Self {
            config,
            tasks,
            pending: BTreeMap::new(),
            committing: BTreeMap::new(),
            scheduled,
            last_completion: None,
            last_id: 0,
            consecutive_failures: 0,
            stats: CheckpointStats::default(),
        }
    }

    /// The periodic checkpointing settings, if enabled.
    pub fn config(&self) -> Option<&CheckpointConfig> {
        self.config.as_ref()
    }

    /// The tasks that checkpoints begun from now on expect.
    pub fn tasks(&self) -> &BTreeSet<TaskKey> {
        &self.tasks
    }

    /// Replaces the expected tasks (after a restart or redeploy). Pending checkpoints keep the tasks they began with;
    /// the caller aborts them with [`Coordinator::abort_all`] if they can no longer complete.
    pub fn set_tasks(&mut self, tasks: BTreeSet<TaskKey>) {
        self.tasks = tasks;
    }

    /// Makes the next periodic checkpoint due at `now`, still no earlier than min_pause after the last completion
    /// this coordinator saw. Used when a new leader adopts running tasks, so the job gets a fresh checkpoint soon.
    pub fn trigger_soon(&mut self, now: Instant) {
        self.scheduled = now;
    }

    /// When the next periodic checkpoint is due; `None` when checkpointing is disabled or a periodic checkpoint is
    /// still in flight (pending or committing).
    pub fn next_trigger_at(&self) -> Option<Instant> {
        let config = self.config.as_ref()?;
        if self.periodic_in_flight() {
            return None;
        }
        let after_pause = self.last_completion.map(|done| later(done, config.min_pause));
        Some(after_pause.map_or(self.scheduled, |t| t.max(self.scheduled)))
    }

    /// Whether a periodic checkpoint is due at `now`.
    pub fn is_trigger_due(&self, now: Instant) -> bool {
        self.next_trigger_at().is_some_and(|due| due <= now)
    }

    /// When the earliest pending checkpoint times out, if any is pending: call [`Coordinator::expire`] then.
    pub fn next_timeout_at(&self) -> Option<Instant> {
        let timeout = self.timeout();
        self.pending.values().map(|p| later(p.triggered_at, timeout)).min()
    }

    /// Starts checkpoint `id` (allocated through Raft by the caller) at `now`, expecting every current task.
    ///
    /// Ids must increase; an id not above the last one begun is ignored (and logged), since acknowledgements for it
    /// could not be told apart. A periodic checkpoint restarts the interval from `now`. The caller checks
    /// [`Coordinator::is_trigger_due`] first; `begin` itself does not refuse a second periodic checkpoint.
    pub fn begin(&mut self, id: u64, kind: CheckpointKind, now: Instant, wall_ms: u64) {
        if id <= self.last_id {
            tracing::warn!(id, last_id = self.last_id, "ignoring a checkpoint whose id does not increase");
            return;
        }
        self.last_id = id;
        if kind == CheckpointKind::Checkpoint {
            let interval = self.config.map(|c| c.interval).unwrap_or_default();
            self.scheduled = later(now, interval);
        }
        let pending = PendingCheckpoint {
            id,
            kind,
            triggered_at: now,
            trigger_wall_ms: wall_ms,
            acks: BTreeMap::new(),
            expected: self.tasks.clone(),
        };
        self.stats.triggered += 1;
        self.stats.upsert(pending.record());
        self.pending.insert(id, pending);
    }

    /// Records `task`'s acknowledgement of checkpoint `id`. The last one removes the checkpoint from the pending set
    /// and hands it over; the caller commits it and then calls [`Coordinator::completed`] or
    /// [`Coordinator::failed`].
    pub fn acknowledge(&mut self, id: u64, task: &TaskKey, ack: TaskAck) -> AckOutcome {
        let Some(pending) = self.pending.get_mut(&id) else {
            return AckOutcome::Ignored { reason: self.not_pending_reason(id) };
        };
        if !pending.expected.contains(task) {
            return AckOutcome::Ignored {
                reason: format!("checkpoint {id} does not expect an acknowledgement from {task}"),
            };
        }
        if pending.acks.contains_key(task) {
            return AckOutcome::Ignored { reason: format!("duplicate acknowledgement of checkpoint {id} from {task}") };
        }
        pending.acks.insert(task.clone(), ack);
        let record = pending.record();
        let (acked, expected) = (record.acked, record.expected);
        let done = pending.is_fully_acknowledged();
        self.stats.upsert(record.clone());
        if !done {
            return AckOutcome::Pending { acked, expected };
        }
        match self.pending.remove(&id) {
            Some(pending) => {
                self.committing.insert(id, record);
                AckOutcome::AllAcked(pending)
            }
            None => AckOutcome::Ignored { reason: self.not_pending_reason(id) },
        }
    }

    /// Aborts pending checkpoint `id` because `task` declined it. `None` when `id` is not pending or does not expect
    /// `task` (a stale message); otherwise its kind and what the failure means for the job.
    pub fn decline(
        &mut self,
        id: u64,
        task: &TaskKey,
        reason: &str,
        now: Instant,
    ) -> Option<(CheckpointKind, FailureVerdict)> {
        if !self.pending.get(&id)?.expected.contains(task) {
            return None;
        }
        let pending = self.pending.remove(&id)?;
        let failure = format!("{} {id} declined by {task}: {reason}", pending.kind.noun());
        telemetry::CHECKPOINTS_FAILED.add(1);
        let verdict = self.record_failure(pending.record(), pending.wall_ms_at(now), failure, true);
        Some((pending.kind, verdict))
    }

    /// Aborts every pending checkpoint that has been pending for the timeout or longer, oldest first.
    pub fn expire(&mut self, now: Instant) -> Vec<(u64, CheckpointKind, FailureVerdict)> {
        let timeout = self.timeout();
        let expired: Vec<u64> =
            self.pending.values().filter(|p| later(p.triggered_at, timeout) <= now).map(|p| p.id).collect();
        let mut aborted = Vec::with_capacity(expired.len());
        for id in expired {
            let Some(pending) = self.pending.remove(&id) else { continue };
            let failure = format!("{} {id} expired after {}", pending.kind.noun(), format_duration(timeout));
            let end_wall_ms = pending.wall_ms_at(now);
            telemetry::CHECKPOINTS_FAILED.add(1);
            let verdict = self.record_failure(pending.record(), end_wall_ms, failure, true);
            aborted.push((id, pending.kind, verdict));
        }
        aborted
    }

    /// Records that checkpoint `id`, of `state_size` bytes, was committed through Raft at `now`: it resets the
    /// consecutive failures (for a periodic checkpoint) and starts the min_pause.
    pub fn completed(&mut self, id: u64, now: Instant, wall_ms: u64, state_size: u64) {
        let mut record = match self.take_in_flight(id) {
            Some(record) => record,
            None => self.record_or_placeholder(id, CheckpointKind::Checkpoint, wall_ms),
        };
        match record.status {
            CheckpointRecordStatus::Completed => return,
            // Aborted while committing, and the commit landed after all: it is completed, not failed.
            CheckpointRecordStatus::Failed => {
                self.stats.failed = self.stats.failed.saturating_sub(1);
                if self.stats.latest_failed.as_ref().is_some_and(|failed| failed.id == id) {
                    self.stats.latest_failed = None;
                }
            }
            CheckpointRecordStatus::InProgress => {}
        }
        record.end(CheckpointRecordStatus::Completed, wall_ms);
        record.state_size = state_size;
        let duration_ms = record.duration_ms.unwrap_or(0);
        telemetry::CHECKPOINT_SECONDS.observe_duration(Duration::from_millis(duration_ms));
        telemetry::CHECKPOINT_BYTES.observe(state_size as f64);
        record.failure = None;
        if record.kind == CheckpointKind::Checkpoint {
            self.consecutive_failures = 0;
        } else {
            self.stats.latest_savepoint = Some(record.clone());
        }
        self.last_completion = Some(now);
        self.stats.completed += 1;
        self.stats.latest_completed = Some(record.clone());
        self.stats.upsert(record);
    }

    /// Records that checkpoint `id` failed outside the coordinator's view, e.g. its metadata could not be written or
    /// Raft refused the commit. It counts toward the tolerable failures if it is a periodic checkpoint that was in
    /// flight, or one never begun (a trigger that failed); a checkpoint already aborted by
    /// [`Coordinator::abort_all`] does not count again. The coordinator's own record of the kind wins over `kind`,
    /// which only describes a checkpoint it never saw; `now` is not needed (`wall_ms` is what the record shows).
    pub fn failed(
        &mut self,
        id: u64,
        kind: CheckpointKind,
        reason: &str,
        _now: Instant,
        wall_ms: u64,
    ) -> FailureVerdict {
        let in_flight = self.take_in_flight(id);
        let counted = in_flight.is_some() || id > self.last_id;
        let record = match in_flight {
            Some(record) => record,
            None => self.record_or_placeholder(id, kind, wall_ms),
        };
        if record.status != CheckpointRecordStatus::InProgress {
            // Already ended (completed, or aborted and now failing once more): nothing new to report.
            return FailureVerdict::Tolerated { consecutive_failures: self.consecutive_failures };
        }
        let failure = format!("{} {id} failed: {reason}", record.kind.noun());
        telemetry::CHECKPOINTS_FAILED.add(1);
        self.record_failure(record, wall_ms, failure, counted)
    }

    /// Aborts every pending checkpoint (restart, failover, cancel) without counting toward the tolerable failures;
    /// returns their ids, ascending, so the caller can tell the tasks. Committing checkpoints are not aborted (their
    /// commit may still land), but no longer block periodic triggers, and a later failure of theirs is not counted.
    pub fn abort_all(&mut self, reason: &str, wall_ms: u64) -> Vec<u64> {
        self.committing.clear();
        let pending = std::mem::take(&mut self.pending);
        let mut ids = Vec::with_capacity(pending.len());
        for (id, checkpoint) in pending {
            let failure = format!("{} {id} aborted: {reason}", checkpoint.kind.noun());
            self.record_failure(checkpoint.record(), wall_ms, failure, false);
            telemetry::CHECKPOINTS_ABORTED.add(1);
            ids.push(id);
        }
        ids
    }

    /// Ids of the checkpoints waiting for acknowledgements, ascending.
    pub fn pending_ids(&self) -> Vec<u64> {
        self.pending.keys().copied().collect()
    }

    /// Pending checkpoint `id`, if it is pending.
    pub fn pending(&self, id: u64) -> Option<&PendingCheckpoint> {
        self.pending.get(&id)
    }

    /// Consecutive periodic checkpoint failures so far.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// Records which checkpoint the job was restored from, for the stats.
    pub fn set_restored_from(&mut self, id: u64, path: impl Into<String>) {
        self.stats.restored_from = Some((id, path.into()));
    }

    /// Counters and history.
    pub fn stats(&self) -> &CheckpointStats {
        &self.stats
    }

    /// The timeout of checkpoints and savepoints.
    fn timeout(&self) -> Duration {
        self.config.map_or(DEFAULT_TIMEOUT, |c| c.timeout)
    }

    /// Whether a periodic checkpoint is pending or committing.
    fn periodic_in_flight(&self) -> bool {
        let periodic = |kind: &CheckpointKind| *kind == CheckpointKind::Checkpoint;
        self.pending.values().any(|p| periodic(&p.kind))
            || self.committing.values().any(|record| periodic(&record.kind))
    }

    /// Removes checkpoint `id` from the pending or committing set, returning its record.
    fn take_in_flight(&mut self, id: u64) -> Option<CheckpointRecord> {
        if let Some(record) = self.committing.remove(&id) {
            return Some(record);
        }
        self.pending.remove(&id).map(|pending| pending.record())
    }

    /// The history record of `id`, or a stand-in for a checkpoint this coordinator never saw begin (e.g. one begun
    /// by the previous leader).
    fn record_or_placeholder(&self, id: u64, kind: CheckpointKind, wall_ms: u64) -> CheckpointRecord {
        self.stats.record(id).cloned().unwrap_or(CheckpointRecord {
            id,
            kind,
            status: CheckpointRecordStatus::InProgress,
            trigger_wall_ms: wall_ms,
            end_wall_ms: None,
            duration_ms: None,
            state_size: 0,
            acked: 0,
            expected: 0,
            failure: None,
        })
    }

    /// Records a failed checkpoint and, if it `counts`, decides whether the job must fail over.
    fn record_failure(
        &mut self,
        mut record: CheckpointRecord,
        end_wall_ms: u64,
        failure: String,
        counts: bool,
    ) -> FailureVerdict {
        record.end(CheckpointRecordStatus::Failed, end_wall_ms);
        record.failure = Some(failure.clone());
        let periodic = record.kind == CheckpointKind::Checkpoint;
        self.stats.failed += 1;
        self.stats.latest_failed = Some(record.clone());
        self.stats.upsert(record);
        if !counts || !periodic {
            return FailureVerdict::Tolerated { consecutive_failures: self.consecutive_failures };
        }
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let tolerable = self.config.map_or(0, |c| c.tolerable_failed);
        if self.consecutive_failures <= tolerable {
            return FailureVerdict::Tolerated { consecutive_failures: self.consecutive_failures };
        }
        let consecutive = std::mem::take(&mut self.consecutive_failures);
        FailureVerdict::FailJob {
            reason: format!("exceeded tolerable checkpoint failures ({consecutive} > {tolerable}): {failure}"),
        }
    }

    /// Why an acknowledgement for `id` finds no pending checkpoint.
    fn not_pending_reason(&self, id: u64) -> String {
        if self.committing.contains_key(&id) {
            format!("checkpoint {id} is already fully acknowledged")
        } else if id <= self.last_id {
            format!("checkpoint {id} is no longer pending (completed, expired or aborted)")
        } else {
            format!("checkpoint {id} was never triggered")
        }
    }
}

/// `t + d`, or far in the future when that overflows the clock (a huge configured duration means "never").
fn later(t: Instant, d: Duration) -> Instant {
    t.checked_add(d).unwrap_or_else(|| t + FAR_FUTURE)
}

/// A duration the way a spec writes it: `500ms`, `10s`, `1min`, `2h`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0s".to_string(),
        _ if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        _ if ms % 60_000 == 0 => format!("{}min", ms / 60_000),
        _ if ms % 1000 == 0 => format!("{}s", ms / 1000),
        _ => format!("{ms}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobgraph::DurationMs;
    use tokio::time::advance;

    const S: Duration = Duration::from_secs(1);

    fn config(interval: u32, timeout: u32, min_pause: u32, tolerable_failed: u32) -> CheckpointConfig {
        CheckpointConfig { interval: interval * S, timeout: timeout * S, min_pause: min_pause * S, tolerable_failed }
    }

    fn tasks(n: u32) -> BTreeSet<TaskKey> {
        (0..n).map(|i| TaskKey::new("src", i)).collect()
    }

    fn ack(size: u64) -> TaskAck {
        TaskAck { handle: format!("h{size}"), state_size: size }
    }

    /// Acknowledges checkpoint `id` from every task of `tasks(n)`; returns the last outcome.
    fn ack_all(c: &mut Coordinator, id: u64, n: u32) -> AckOutcome {
        let mut last = AckOutcome::Ignored { reason: "no tasks".to_string() };
        for task in tasks(n) {
            last = c.acknowledge(id, &task, ack(10));
        }
        last
    }

    fn savepoint() -> CheckpointKind {
        CheckpointKind::Savepoint { dir: "/sp".to_string(), terminate: false }
    }

    fn tolerated(consecutive_failures: u32) -> FailureVerdict {
        FailureVerdict::Tolerated { consecutive_failures }
    }

    /// Sleeps on the paused clock until the next periodic checkpoint is due, as the JobMaster's loop does, and
    /// returns that instant.
    async fn until_due(c: &Coordinator) -> Instant {
        let due = c.next_trigger_at().expect("no periodic checkpoint in flight");
        tokio::time::sleep_until(due).await;
        let now = Instant::now();
        assert_eq!(now, due, "the paused clock jumps exactly to the deadline");
        assert!(c.is_trigger_due(now));
        now
    }

    #[test]
    fn config_from_spec() {
        assert_eq!(CheckpointConfig::from_spec(&CheckpointSpec::default()), None);
        let spec = CheckpointSpec {
            interval: Some(DurationMs(5_000)),
            min_pause: DurationMs(500),
            tolerable_failed: 3,
            ..CheckpointSpec::default()
        };
        let config = CheckpointConfig::from_spec(&spec).unwrap();
        assert_eq!(
            config,
            CheckpointConfig { interval: 5 * S, timeout: 600 * S, min_pause: S / 2, tolerable_failed: 3 }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn periodic_triggers_follow_the_interval() {
        let start = Instant::now();
        let mut c = Coordinator::new(Some(config(10, 60, 0, 0)), tasks(2), start);
        assert_eq!(c.next_trigger_at(), Some(start + 10 * S));
        advance(9 * S).await;
        assert!(!c.is_trigger_due(Instant::now()));
        advance(S).await;
        assert!(c.is_trigger_due(Instant::now()));

        c.begin(1, CheckpointKind::Checkpoint, Instant::now(), 10_000);
        assert_eq!(c.next_trigger_at(), None, "one periodic checkpoint at a time");
        advance(3 * S).await;
        assert!(matches!(ack_all(&mut c, 1, 2), AckOutcome::AllAcked(p) if p.id == 1 && p.state_size() == 20));
        assert_eq!(c.next_trigger_at(), None, "still in flight while committing");
        c.completed(1, Instant::now(), 13_000, 20);
        // Without min_pause the interval counts from the trigger, not from the completion.
        assert_eq!(c.next_trigger_at(), Some(start + 20 * S));

        // A checkpoint slower than the interval: the next one is due as soon as it completes.
        advance(7 * S).await;
        c.begin(2, CheckpointKind::Checkpoint, Instant::now(), 20_000);
        advance(15 * S).await;
        ack_all(&mut c, 2, 2);
        c.completed(2, Instant::now(), 35_000, 20);
        assert!(c.is_trigger_due(Instant::now()));
        assert_eq!(c.stats().completed, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn min_pause_counts_from_the_last_completion() {
        let start = Instant::now();
        let mut c = Coordinator::new(Some(config(10, 60, 8, 0)), tasks(1), start);
        advance(10 * S).await;
        c.begin(1, CheckpointKind::Checkpoint, Instant::now(), 0);
        advance(5 * S).await;
        ack_all(&mut c, 1, 1);
        c.completed(1, Instant::now(), 5_000, 10);
        // max(trigger 10s + interval 10s, completion 15s + pause 8s) = 23s.
        assert_eq!(c.next_trigger_at(), Some(start + 23 * S));
        advance(7 * S).await;
        assert!(!c.is_trigger_due(Instant::now()), "the interval has passed, the pause has not");
        advance(S).await;
        assert!(c.is_trigger_due(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn trigger_soon_respects_min_pause() {
        let start = Instant::now();
        let mut c = Coordinator::new(Some(config(60, 60, 5, 0)), tasks(1), start);
        c.trigger_soon(start);
        assert!(c.is_trigger_due(start), "a new leader checkpoints adopted tasks at once");

        c.begin(1, CheckpointKind::Checkpoint, start, 0);
        ack_all(&mut c, 1, 1);
        advance(S).await;
        c.completed(1, Instant::now(), 1_000, 10);
        c.trigger_soon(Instant::now());
        assert_eq!(c.next_trigger_at(), Some(start + 6 * S), "no earlier than min_pause after the completion");
        advance(4 * S).await;
        assert!(!c.is_trigger_due(Instant::now()), "1s after the completion plus 4s: the pause has not passed");
        advance(S).await;
        assert!(c.is_trigger_due(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn disabled_checkpointing_still_takes_savepoints() {
        let start = Instant::now();
        let mut c = Coordinator::new(None, tasks(1), start);
        assert_eq!(c.next_trigger_at(), None);
        c.trigger_soon(start);
        assert!(!c.is_trigger_due(start + 1000 * S));

        c.begin(1, savepoint(), start, 0);
        assert_eq!(c.next_timeout_at(), Some(start + DEFAULT_TIMEOUT));
        advance(DEFAULT_TIMEOUT).await;
        let expired = c.expire(Instant::now());
        assert_eq!(expired, vec![(1, savepoint(), tolerated(0))]);
        assert_eq!(
            c.stats().latest_failed.as_ref().unwrap().failure.as_deref(),
            Some("savepoint 1 expired after 10min")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn pending_checkpoints_expire_after_the_timeout() {
        let start = Instant::now();
        let mut c = Coordinator::new(Some(config(5, 10, 0, 0)), tasks(2), start);
        advance(5 * S).await;
        c.begin(7, CheckpointKind::Checkpoint, Instant::now(), 5_000);
        assert_eq!(c.acknowledge(7, &TaskKey::new("src", 0), ack(1)), AckOutcome::Pending { acked: 1, expected: 2 });
        assert_eq!(c.next_timeout_at(), Some(start + 15 * S));

        advance(10 * S - Duration::from_millis(1)).await;
        assert!(c.expire(Instant::now()).is_empty());
        advance(Duration::from_millis(1)).await;
        let expired = c.expire(Instant::now());
        let reason = "exceeded tolerable checkpoint failures (1 > 0): checkpoint 7 expired after 10s".to_string();
        assert_eq!(expired, vec![(7, CheckpointKind::Checkpoint, FailureVerdict::FailJob { reason })]);
        assert!(c.pending_ids().is_empty());
        assert_eq!(c.next_timeout_at(), None);

        let record = c.stats().record(7).unwrap();
        assert_eq!(record.status, CheckpointRecordStatus::Failed);
        assert_eq!((record.acked, record.expected, record.state_size), (1, 2, 1));
        assert_eq!((record.end_wall_ms, record.duration_ms), (Some(15_000), Some(10_000)));
        // The periodic slot is free again, and the trigger is overdue.
        assert!(c.is_trigger_due(Instant::now()));
        // A late acknowledgement changes nothing.
        assert!(matches!(c.acknowledge(7, &TaskKey::new("src", 1), ack(1)), AckOutcome::Ignored { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn tolerable_failures_count_consecutive_periodic_failures() {
        let start = Instant::now();
        let mut c = Coordinator::new(Some(config(1, 10, 0, 2)), tasks(1), start);
        let task = TaskKey::new("src", 0);
        let now = until_due(&c).await;
        assert_eq!(now, start + S);
        c.begin(1, CheckpointKind::Checkpoint, now, 0);
        assert_eq!(c.decline(1, &task, "disk full", now), Some((CheckpointKind::Checkpoint, tolerated(1))));
        // A failure frees the periodic slot; the next trigger is still an interval after the last one.
        let now = until_due(&c).await;
        assert_eq!(now, start + 2 * S);
        c.begin(2, CheckpointKind::Checkpoint, now, 0);
        ack_all(&mut c, 2, 1);
        assert_eq!(c.failed(2, CheckpointKind::Checkpoint, "commit refused", now, 0), tolerated(2));

        // A success resets the count.
        let now = until_due(&c).await;
        c.begin(3, CheckpointKind::Checkpoint, now, 0);
        ack_all(&mut c, 3, 1);
        advance(S / 2).await;
        c.completed(3, Instant::now(), 0, 10);
        assert_eq!(c.consecutive_failures(), 0);

        let now = until_due(&c).await;
        c.begin(4, CheckpointKind::Checkpoint, now, 0);
        assert_eq!(c.decline(4, &task, "a", now), Some((CheckpointKind::Checkpoint, tolerated(1))));
        let now = until_due(&c).await;
        c.begin(5, CheckpointKind::Checkpoint, now, 0);
        assert_eq!(c.decline(5, &task, "b", now), Some((CheckpointKind::Checkpoint, tolerated(2))));
        let now = until_due(&c).await;
        assert_eq!(now, start + 6 * S, "failures do not delay the schedule");
        c.begin(6, CheckpointKind::Checkpoint, now, 0);
        let (_, verdict) = c.decline(6, &task, "c", now).unwrap();
        let reason = "exceeded tolerable checkpoint failures (3 > 2): checkpoint 6 declined by src[0]: c".to_string();
        assert_eq!(verdict, FailureVerdict::FailJob { reason });
        assert_eq!(c.consecutive_failures(), 0, "the restarted job gets the same tolerance");
        assert_eq!((c.stats().triggered, c.stats().completed, c.stats().failed), (6, 1, 5));
    }

    #[test]
    fn stray_acknowledgements_are_ignored() {
        let start = Instant::now();
        let mut c = Coordinator::new(Some(config(1, 10, 0, 0)), tasks(2), start);
        let (t0, t1) = (TaskKey::new("src", 0), TaskKey::new("src", 1));
        let ignored = |outcome: AckOutcome| match outcome {
            AckOutcome::Ignored { reason } => reason,
            other => panic!("expected Ignored, got {other:?}"),
        };
        assert_eq!(ignored(c.acknowledge(1, &t0, ack(1))), "checkpoint 1 was never triggered");

        c.begin(1, CheckpointKind::Checkpoint, start, 0);
        c.begin(2, savepoint(), start, 0);
        // Out of order: checkpoint 2's acknowledgements arrive before checkpoint 1's.
        assert_eq!(c.acknowledge(2, &t1, ack(1)), AckOutcome::Pending { acked: 1, expected: 2 });
        assert_eq!(ignored(c.acknowledge(2, &t1, ack(1))), "duplicate acknowledgement of checkpoint 2 from src[1]");
        assert_eq!(
            ignored(c.acknowledge(2, &TaskKey::new("sink", 0), ack(1))),
            "checkpoint 2 does not expect an acknowledgement from sink[0]"
        );
        assert!(matches!(c.acknowledge(2, &t0, ack(1)), AckOutcome::AllAcked(p) if p.id == 2));
        assert_eq!(ignored(c.acknowledge(2, &t0, ack(1))), "checkpoint 2 is already fully acknowledged");
        assert_eq!(c.acknowledge(1, &t0, ack(1)), AckOutcome::Pending { acked: 1, expected: 2 });
        assert!(matches!(c.acknowledge(1, &t1, ack(1)), AckOutcome::AllAcked(p) if p.id == 1));
        c.completed(1, start, 0, 2);
        assert_eq!(
            ignored(c.acknowledge(1, &t0, ack(1))),
            "checkpoint 1 is no longer pending (completed, expired or aborted)"
        );
        // A decline for something not pending, or from a task it does not expect, is ignored too.
        assert_eq!(c.decline(1, &t0, "late", start), None);
        c.begin(3, CheckpointKind::Checkpoint, start, 0);
        assert_eq!(c.decline(3, &TaskKey::new("old", 0), "stale", start), None);
        assert_eq!(c.pending_ids(), vec![3]);
    }

    #[test]
    fn ids_must_increase() {
        let start = Instant::now();
        let mut c = Coordinator::new(Some(config(1, 10, 0, 0)), tasks(1), start);
        c.begin(5, CheckpointKind::Checkpoint, start, 0);
        c.begin(5, savepoint(), start, 0);
        c.begin(4, savepoint(), start, 0);
        assert_eq!(c.pending_ids(), vec![5]);
        assert_eq!(c.pending(5).unwrap().kind, CheckpointKind::Checkpoint);
    }

    #[tokio::test(start_paused = true)]
    async fn savepoints_run_alongside_a_checkpoint_and_never_fail_the_job() {
        let start = Instant::now();
        let mut c = Coordinator::new(Some(config(10, 60, 0, 0)), tasks(1), start);
        let task = TaskKey::new("src", 0);
        c.begin(1, savepoint(), start, 0);
        assert_eq!(c.next_trigger_at(), Some(start + 10 * S), "a savepoint does not hold back checkpoints");
        advance(10 * S).await;
        c.begin(2, CheckpointKind::Checkpoint, Instant::now(), 10_000);
        assert_eq!(c.pending_ids(), vec![1, 2]);
        assert_eq!(c.next_trigger_at(), None);

        // The savepoint fails with zero tolerance: reported, not fatal.
        assert_eq!(c.decline(1, &task, "no space", Instant::now()), Some((savepoint(), tolerated(0))));
        assert_eq!(c.failed(9, savepoint(), "never started", Instant::now(), 0), tolerated(0));
        // The checkpoint completes independently.
        assert!(matches!(c.acknowledge(2, &task, ack(5)), AckOutcome::AllAcked(_)));
        c.completed(2, Instant::now(), 10_500, 5);

        c.begin(10, savepoint(), Instant::now(), 11_000);
        assert!(matches!(c.acknowledge(10, &task, ack(7)), AckOutcome::AllAcked(p) if p.kind == savepoint()));
        c.completed(10, Instant::now(), 11_200, 7);
        let stats = c.stats();
        assert_eq!(stats.latest_savepoint.as_ref().map(|r| (r.id, r.duration_ms)), Some((10, Some(200))));
        assert_eq!(stats.latest_completed.as_ref().map(|r| r.id), Some(10));
        assert_eq!(stats.latest_failed.as_ref().map(|r| r.id), Some(9));
    }

    #[test]
    fn abort_all_does_not_count_as_failures() {
        let start = Instant::now();
        let mut c = Coordinator::new(Some(config(1, 10, 0, 0)), tasks(1), start);
        let task = TaskKey::new("src", 0);
        c.begin(1, CheckpointKind::Checkpoint, start, 0);
        c.begin(2, savepoint(), start, 0);
        assert_eq!(c.abort_all("job restarting", 500), vec![1, 2]);
        assert!(c.pending_ids().is_empty());
        assert_eq!(c.consecutive_failures(), 0);
        assert_eq!(c.stats().record(1).unwrap().failure.as_deref(), Some("checkpoint 1 aborted: job restarting"));
        assert_eq!(c.stats().failed, 2);

        // A committing checkpoint is not aborted, but stops blocking triggers; its commit may still land.
        c.begin(3, CheckpointKind::Checkpoint, start, 0);
        assert!(matches!(c.acknowledge(3, &task, ack(1)), AckOutcome::AllAcked(_)));
        assert_eq!(c.abort_all("leader lost", 600), Vec::<u64>::new());
        assert!(c.next_trigger_at().is_some());
        assert_eq!(c.failed(3, CheckpointKind::Checkpoint, "epoch changed", start, 700), tolerated(0));

        // The first counted failure after that fails the job at zero tolerance: the aborts were not counted.
        c.begin(4, CheckpointKind::Checkpoint, start, 0);
        assert!(
            matches!(c.decline(4, &task, "x", start), Some((_, FailureVerdict::FailJob { reason })) if reason.contains("(1 > 0)"))
        );
    }

    #[test]
    fn a_commit_that_lands_after_an_abort_counts_as_completed() {
        let start = Instant::now();
        let mut c = Coordinator::new(Some(config(1, 10, 0, 0)), tasks(1), start);
        c.begin(1, CheckpointKind::Checkpoint, start, 0);
        c.abort_all("restart", 10);
        c.completed(1, start, 20, 3);
        c.completed(1, start, 30, 3);
        let stats = c.stats();
        assert_eq!((stats.completed, stats.failed), (1, 0));
        assert_eq!(stats.latest_failed, None);
        assert_eq!(stats.record(1).unwrap().status, CheckpointRecordStatus::Completed);
    }

    #[test]
    fn set_tasks_affects_later_checkpoints_only() {
        let start = Instant::now();
        let mut c = Coordinator::new(Some(config(1, 10, 0, 0)), tasks(1), start);
        c.begin(1, CheckpointKind::Checkpoint, start, 0);
        c.set_tasks(tasks(3));
        assert_eq!(c.pending(1).unwrap().expected, tasks(1));
        assert!(matches!(ack_all(&mut c, 1, 1), AckOutcome::AllAcked(_)));
        c.completed(1, start, 0, 10);
        c.begin(2, CheckpointKind::Checkpoint, start, 0);
        assert_eq!(c.acknowledge(2, &TaskKey::new("src", 2), ack(1)), AckOutcome::Pending { acked: 1, expected: 3 });
    }

    #[tokio::test(start_paused = true)]
    async fn history_keeps_the_newest_records() {
        let start = Instant::now();
        let mut c = Coordinator::new(Some(config(1, 10, 0, 0)), tasks(1), start);
        for id in 1..=150 {
            c.begin(id, CheckpointKind::Checkpoint, Instant::now(), id * 1000);
            assert_eq!(c.stats().history.back().unwrap().status, CheckpointRecordStatus::InProgress);
            ack_all(&mut c, id, 1);
            advance(S).await;
            c.completed(id, Instant::now(), id * 1000 + 100, 10);
        }
        let history = &c.stats().history;
        assert_eq!(history.len(), MAX_HISTORY);
        assert_eq!(history.front().unwrap().id, 51);
        assert_eq!(history.back().unwrap().id, 150);
        assert!(history.iter().all(|r| r.status == CheckpointRecordStatus::Completed && r.duration_ms == Some(100)));
        assert_eq!(c.stats().completed, 150);
    }

    #[test]
    fn durations_read_like_a_spec() {
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(10 * S), "10s");
        assert_eq!(format_duration(90 * S), "90s");
        assert_eq!(format_duration(600 * S), "10min");
        assert_eq!(format_duration(7200 * S), "2h");
    }
}
