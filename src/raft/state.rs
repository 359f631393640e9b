//! The replicated state machine: [`ClusterState`] and the one way to change it, [`ClusterState::apply`].
//!
//! Every replica applies the same log of [`Command`]s, in the same order, to its own `ClusterState`; this module is
//! what makes them agree. It owns the jobs (status, JobMaster epoch, checkpoints, savepoints, result, metadata), the
//! registered TaskManagers, the slot leases binding their slots to jobs, and the most recent savepoint disposals (a
//! bounded map of requests the leader carries out and resolves; see `checkpoint::disposal`).
//!
//! # Determinism
//!
//! `apply` is a pure function of the state, the log index and the command. It reads no clock (times arrive in the
//! command as `*_at_ms`), draws no random number (ids arrive in the command too), does no I/O, and iterates only over
//! ordered collections (`BTreeMap`, `BTreeSet`, `VecDeque`), never a `HashMap` whose order differs per process. It
//! never panics either: a panic on one command would stop every replica at the same log entry, forever.
//!
//! # Failure atomicity
//!
//! A command is validated completely before anything is mutated. A rejected command returns a
//! [`DeterministicError`] and leaves the state exactly as it was, except for `last_index`, which records that the log
//! entry was applied (its outcome being the error) so that it is not applied again after a restart.
//!
//! # Fencing
//!
//! Commands from a job's JobMaster carry its epoch. [`Command::GrantJobMasterEpoch`] bumps the epoch, after which the
//! previous JobMaster's commands fail with `StaleEpoch`: a deposed JobMaster that has not noticed yet can no longer
//! lease slots, complete checkpoints or end the job. A new JobMaster adopts its predecessor's slot leases by leasing
//! them again under its own epoch.
//!
//! # Invariants
//!
//! [`ClusterState::check_invariants`] spells them out; the property tests at the bottom of this file check them after
//! every command of random command sequences. Briefly: a lease is on an existing slot of a registered TaskManager and
//! held by a live job at an epoch no newer than the job's; jobs and idempotency keys match one to one; checkpoint ids
//! are allocated before use, complete in increasing order and are retained up to the job's limit; a job is terminal
//! exactly when it has a result, and then forever; histories, metadata and savepoint disposals stay within their
//! limits, and a disposal has an outcome exactly when it has a resolution time.
//!
//! # Caveats
//!
//! Times are the proposers' clocks and are recorded as given; they are not required to increase, since different
//! replicas' clocks disagree. Jobs are never removed, so the state grows with the number of submitted jobs.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::command::{
    CheckpointId, Command, CompletedCheckpoint, DeployedComponent, DeterministicError, DisposalOutcome, Epoch, JobId,
    JobStatus, LogIndex, Response, Savepoint, SavepointOutcome, SlotId, TaskManagerId, MAX_METADATA_KEYS_PER_JOB,
    MAX_METADATA_KEY_BYTES, MAX_METADATA_VALUE_BYTES, MAX_NAME_BYTES, MAX_PATH_BYTES, MAX_RETAINED_CHECKPOINTS,
    MAX_SLOTS_PER_TASK_MANAGER, MAX_STATUS_HISTORY,
};
use super::types::NodeId;

/// Most failures kept per job (Flink's exception history); older ones are dropped first.
pub const MAX_EXCEPTIONS: usize = 32;
/// Most savepoint requests kept per job; the oldest resolved ones are dropped first.
pub const MAX_SAVEPOINT_REQUESTS: usize = 32;
/// Longest failure message kept, in bytes; longer ones are truncated.
pub const MAX_ERROR_BYTES: usize = 4096;
/// Most savepoint disposals kept; the oldest resolved ones are dropped first, and a new request is refused while
/// this many are in progress.
pub const MAX_SAVEPOINT_DISPOSALS: usize = 64;

/// The state every replica holds and agrees on, built by applying the Raft log. It is also the snapshot format.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Every job ever submitted, by id.
    pub jobs: BTreeMap<JobId, Job>,
    /// The job created by each idempotency key, so that a retried submission finds its job.
    pub idempotency_keys: BTreeMap<String, JobId>,
    /// Registered TaskManagers, by id.
    pub task_managers: BTreeMap<TaskManagerId, TaskManagerInfo>,
    /// Which job holds each leased slot; a slot without an entry is free.
    pub slot_leases: BTreeMap<SlotId, SlotLease>,
    /// Index of the last command applied (set by apply, even when the command failed).
    pub last_index: LogIndex,
    /// The most recent savepoint disposals, by request id (at most [`MAX_SAVEPOINT_DISPOSALS`]).
    pub savepoint_disposals: BTreeMap<String, SavepointDisposal>,
    /// The most recent leader changes, oldest first, terms strictly increasing (at most [`MAX_LEADER_CHANGES`]).
    pub leader_changes: VecDeque<LeaderChange>,
}

/// Most leader changes kept; older ones are dropped first.
pub const MAX_LEADER_CHANGES: usize = 32;

/// A leader that started its leader-only services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderChange {
    /// Its term.
    pub term: u64,
    /// The new leader.
    pub leader: NodeId,
    /// The leader recorded before it, if any was.
    pub previous: Option<NodeId>,
    /// When it took over, on its clock.
    pub at_ms: u64,
    /// How long it had heard from no leader when it took over, if it had ever heard from one.
    pub leaderless_ms: Option<u64>,
}

/// A job and everything the cluster remembers about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// The job's id.
    pub id: JobId,
    /// Human-readable name.
    pub name: String,
    /// The idempotency key of the submission that created it.
    pub idempotency_key: String,
    /// The job's specification, as submitted; opaque here.
    pub spec_json: String,
    /// Current status.
    pub status: JobStatus,
    /// Current JobMaster epoch; 0 until the first JobMaster is granted one.
    pub epoch: Epoch,
    /// Raft term of the leader that granted the current epoch.
    pub leader_term: u64,
    /// When it was submitted.
    pub submitted_at_ms: u64,
    /// When a command last changed it.
    pub updated_at_ms: u64,
    /// Log index of the submission.
    pub submitted_index: LogIndex,
    /// How many completed checkpoints to keep.
    pub max_retained_checkpoints: u32,
    /// Highest checkpoint id allocated; 0 = none.
    pub last_checkpoint_id: CheckpointId,
    /// Retained completed checkpoints, oldest first, ids strictly increasing.
    pub checkpoints: VecDeque<CompletedCheckpoint>,
    /// Every savepoint recorded, oldest first.
    pub savepoints: Vec<Savepoint>,
    /// The most recent status changes, oldest first; the last one is the current status.
    pub status_history: VecDeque<StatusChange>,
    /// The final outcome; present exactly when the status is terminal.
    pub result: Option<JobResult>,
    /// Small key/value pairs attached by clients or tools.
    pub metadata: BTreeMap<String, Vec<u8>>,
    /// The most recent failures, oldest first (at most [`MAX_EXCEPTIONS`]).
    pub exceptions: VecDeque<JobException>,
    /// How many times the job was restarted after a failure.
    pub restarts: u32,
    /// The current (or last) deployment attempt: where its tasks run.
    pub deployment: Option<JobDeployment>,
    /// Savepoint requests by request id (at most [`MAX_SAVEPOINT_REQUESTS`]).
    pub savepoint_requests: BTreeMap<String, SavepointRequest>,
}

/// One failure of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobException {
    /// When it was noticed.
    pub at_ms: u64,
    /// What failed.
    pub error: String,
    /// Whether the job was restarted because of it.
    pub restarting: bool,
}

/// Where a deployment attempt of a job runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobDeployment {
    /// The attempt number, from 1.
    pub attempt: u32,
    /// The JobMaster epoch that deployed it.
    pub epoch: Epoch,
    /// The slots of each connected component.
    pub components: Vec<DeployedComponent>,
    /// The checkpoint or savepoint directory it restored from.
    pub restored_from: Option<String>,
    /// Where its tasks write checkpoint state (the job's checkpoint directory when it was deployed).
    pub checkpoint_dir: String,
    /// When it was deployed.
    pub at_ms: u64,
}

/// A savepoint asked for by a client, and how it went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavepointRequest {
    /// Where to write it; the cluster's default when absent.
    pub target_dir: Option<String>,
    /// Whether the job stops after it.
    pub terminate: bool,
    /// When it was requested.
    pub requested_at_ms: u64,
    /// How it ended; `None` while in progress.
    pub outcome: Option<SavepointOutcome>,
    /// When it ended.
    pub resolved_at_ms: Option<u64>,
}

/// A savepoint disposal asked for by a client, and how it went. The leader deletes the directory while `outcome`
/// is `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavepointDisposal {
    /// The directory to delete.
    pub path: String,
    /// The job that recorded this savepoint, if one did.
    pub job_id: Option<JobId>,
    /// When it was requested.
    pub requested_at_ms: u64,
    /// Log index of the request: orders requests for eviction, whatever the proposers' clocks say.
    pub requested_index: LogIndex,
    /// How it ended; `None` while in progress.
    pub outcome: Option<DisposalOutcome>,
    /// When it ended.
    pub resolved_at_ms: Option<u64>,
}

/// One entry of a job's status history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusChange {
    /// The status entered.
    pub status: JobStatus,
    /// When.
    pub at_ms: u64,
    /// Why, if known.
    pub reason: Option<String>,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResult {
    /// FAILED, CANCELED or FINISHED.
    pub status: JobStatus,
    /// When it ended.
    pub at_ms: u64,
    /// The failure, for FAILED.
    pub error: Option<String>,
}

/// A registered TaskManager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskManagerInfo {
    /// Its id.
    pub id: TaskManagerId,
    /// Where it listens for RPCs.
    pub address: String,
    /// How many slots it offers; slot indexes are `0..slots`.
    pub slots: u32,
    /// Its failure domain, if known.
    pub zone: Option<String>,
    /// When it first registered (kept across re-registrations).
    pub registered_at_ms: u64,
    /// When it last registered.
    pub updated_at_ms: u64,
}

/// A slot's binding to a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotLease {
    /// The job holding the slot.
    pub job_id: JobId,
    /// Epoch of the JobMaster that leased (or adopted) it.
    pub epoch: Epoch,
    /// When it was leased.
    pub leased_at_ms: u64,
}

/// The fields of a `SubmitJob`, gathered to keep `apply_submit_job`'s signature readable.
struct Submission {
    job_id: JobId,
    idempotency_key: String,
    name: String,
    spec_json: String,
    max_retained_checkpoints: u32,
    submitted_at_ms: u64,
}

/// Applies `cmd`, the log entry at `index`, to `state`. See [`ClusterState::apply`].
pub fn apply(state: &mut ClusterState, index: LogIndex, cmd: Command) -> Result<Response, DeterministicError> {
    state.apply(index, cmd)
}

impl ClusterState {
    /// Applies `cmd`, the log entry at `index`. On error nothing changes but `last_index`.
    pub fn apply(&mut self, index: LogIndex, cmd: Command) -> Result<Response, DeterministicError> {
        // Even a rejected entry counts as applied: its outcome (the error) is final, and a replica restarting from a
        // snapshot must not apply it again.
        self.last_index = index;
        match cmd {
            Command::SubmitJob {
                job_id,
                idempotency_key,
                name,
                spec_json,
                max_retained_checkpoints,
                submitted_at_ms,
            } => {
                let submission =
                    Submission { job_id, idempotency_key, name, spec_json, max_retained_checkpoints, submitted_at_ms };
                self.apply_submit_job(index, submission)
            }
            Command::CancelJob { job_id, at_ms } => self.apply_cancel_job(job_id, at_ms),
            Command::Batch { commands } => Ok(self.apply_batch(index, commands)),
            Command::TransitionJobStatus { job_id, epoch, to, at_ms, reason } => {
                self.apply_transition_job_status(job_id, epoch, to, at_ms, reason)
            }
            Command::GrantJobMasterEpoch { job_id, leader_term, at_ms } => {
                self.apply_grant_job_master_epoch(job_id, leader_term, at_ms)
            }
            Command::RegisterTaskManager { tm_id, address, slots, zone, at_ms } => {
                self.apply_register_task_manager(tm_id, address, slots, zone, at_ms)
            }
            // The state forgets a removed TaskManager and a released lease entirely; their time and reason live on in
            // the log only.
            Command::UnregisterTaskManager { tm_id, at_ms: _, reason: _ } => self.apply_unregister_task_manager(tm_id),
            Command::LeaseSlots { job_id, epoch, slots, at_ms } => self.apply_lease_slots(job_id, epoch, slots, at_ms),
            Command::ReleaseSlots { job_id, epoch, slots, at_ms: _ } => self.apply_release_slots(job_id, epoch, slots),
            Command::AllocateCheckpointId { job_id, epoch, at_ms } => {
                self.apply_allocate_checkpoint_id(job_id, epoch, at_ms)
            }
            Command::CompleteCheckpoint { job_id, epoch, checkpoint } => {
                self.apply_complete_checkpoint(job_id, epoch, checkpoint)
            }
            Command::RecordSavepoint { job_id, epoch, savepoint } => {
                self.apply_record_savepoint(job_id, epoch, savepoint)
            }
            Command::RecordJobResult { job_id, epoch, status, at_ms, error } => {
                self.apply_record_job_result(job_id, epoch, status, at_ms, error)
            }
            Command::PutJobMetadata { job_id, key, value, at_ms } => {
                self.apply_put_job_metadata(job_id, key, value, at_ms)
            }
            Command::RecordJobFailure { job_id, epoch, at_ms, error, restarting } => {
                self.apply_record_job_failure(job_id, epoch, at_ms, error, restarting)
            }
            Command::RecordDeployment { job_id, epoch, attempt, components, restored_from, checkpoint_dir, at_ms } => {
                let deployment = JobDeployment { attempt, epoch, components, restored_from, checkpoint_dir, at_ms };
                self.apply_record_deployment(job_id, deployment)
            }
            Command::RequestSavepoint { job_id, request_id, target_dir, terminate, at_ms } => {
                let request = SavepointRequest {
                    target_dir,
                    terminate,
                    requested_at_ms: at_ms,
                    outcome: None,
                    resolved_at_ms: None,
                };
                self.apply_request_savepoint(job_id, request_id, request)
            }
            Command::ResolveSavepointRequest { job_id, epoch, request_id, outcome, at_ms } => {
                self.apply_resolve_savepoint_request(job_id, epoch, request_id, outcome, at_ms)
            }
            Command::RequestSavepointDisposal { request_id, path, job_id, at_ms } => {
                let disposal = SavepointDisposal {
                    path,
                    job_id,
                    requested_at_ms: at_ms,
                    requested_index: index,
                    outcome: None,
                    resolved_at_ms: None,
                };
                self.apply_request_savepoint_disposal(request_id, disposal)
            }
            Command::ResolveSavepointDisposal { request_id, outcome, at_ms } => {
                self.apply_resolve_savepoint_disposal(request_id, outcome, at_ms)
            }
            Command::RecordLeaderChange { term, leader, at_ms, leaderless_ms } => {
                self.apply_record_leader_change(term, leader, at_ms, leaderless_ms)
            }
        }
    }

    fn apply_record_leader_change(
        &mut self,
        term: u64,
        leader: NodeId,
        at_ms: u64,
        leaderless_ms: Option<u64>,
    ) -> Result<Response, DeterministicError> {
        let last = self.leader_changes.back();
        if let Some(last) = last.filter(|last| last.term >= term) {
            return Err(DeterministicError::InvalidArgument {
                field: "term".to_string(),
                reason: format!("term {term} is not after the last recorded leader change (term {})", last.term),
            });
        }
        let previous = last.map(|l| l.leader);
        self.leader_changes.push_back(LeaderChange { term, leader, previous, at_ms, leaderless_ms });
        while self.leader_changes.len() > MAX_LEADER_CHANGES {
            self.leader_changes.pop_front();
        }
        Ok(Response::LeaderChangeRecorded { term })
    }

    fn apply_submit_job(&mut self, index: LogIndex, s: Submission) -> Result<Response, DeterministicError> {
        check_text("job_id", &s.job_id, MAX_NAME_BYTES)?;
        check_text("idempotency_key", &s.idempotency_key, MAX_NAME_BYTES)?;
        check_text("name", &s.name, MAX_NAME_BYTES)?;
        check_retention(s.max_retained_checkpoints)?;
        // A retry of a submission whose response got lost carries the same key but, typically, a freshly chosen id:
        // it must find the first attempt's job rather than create a second one.
        if let Some(existing) = self.idempotency_keys.get(&s.idempotency_key) {
            return Ok(Response::JobSubmitted { job_id: existing.clone(), created: false });
        }
        if self.jobs.contains_key(&s.job_id) {
            return Err(DeterministicError::JobIdTaken { job_id: s.job_id });
        }
        let job = Job {
            id: s.job_id.clone(),
            name: s.name,
            idempotency_key: s.idempotency_key.clone(),
            spec_json: s.spec_json,
            status: JobStatus::Created,
            epoch: 0,
            leader_term: 0,
            submitted_at_ms: s.submitted_at_ms,
            updated_at_ms: s.submitted_at_ms,
            submitted_index: index,
            max_retained_checkpoints: s.max_retained_checkpoints,
            last_checkpoint_id: 0,
            checkpoints: VecDeque::new(),
            savepoints: Vec::new(),
            status_history: VecDeque::from([StatusChange {
                status: JobStatus::Created,
                at_ms: s.submitted_at_ms,
                reason: None,
            }]),
            result: None,
            metadata: BTreeMap::new(),
            exceptions: VecDeque::new(),
            restarts: 0,
            deployment: None,
            savepoint_requests: BTreeMap::new(),
        };
        self.idempotency_keys.insert(s.idempotency_key, s.job_id.clone());
        self.jobs.insert(s.job_id.clone(), job);
        Ok(Response::JobSubmitted { job_id: s.job_id, created: true })
    }

    fn apply_cancel_job(&mut self, job_id: JobId, at_ms: u64) -> Result<Response, DeterministicError> {
        let job = self.job_ref(&job_id)?;
        let status = job.status;
        match status {
            JobStatus::Canceled => return Ok(Response::JobCancelled { job_id, status }),
            JobStatus::Failed | JobStatus::Finished => return Err(DeterministicError::JobTerminal { job_id, status }),
            _ => {}
        }
        if can_cancel_outright(job) {
            self.end_job(&job_id, JobStatus::Canceled, at_ms, None)?;
            return Ok(Response::JobCancelled { job_id, status: JobStatus::Canceled });
        }
        // A JobMaster is stopping the tasks; it reports CANCELED through RecordJobResult.
        if status != JobStatus::Cancelling {
            let reason = Some("cancellation requested".to_string());
            self.job_mut(&job_id)?.record_status(JobStatus::Cancelling, at_ms, reason);
        }
        Ok(Response::JobCancelled { job_id, status: JobStatus::Cancelling })
    }

    fn apply_transition_job_status(
        &mut self,
        job_id: JobId,
        epoch: Epoch,
        to: JobStatus,
        at_ms: u64,
        reason: Option<String>,
    ) -> Result<Response, DeterministicError> {
        let job = self.job_mut(&job_id)?;
        check_live_at_epoch(job, epoch)?;
        // A JobMaster retrying a transition whose response it missed must not fail, nor grow the history.
        if job.status == to {
            return Ok(Response::JobStatusChanged { job_id, status: to });
        }
        if !job.status.can_transition_to(to) {
            return Err(DeterministicError::InvalidTransition { job_id, from: job.status, to });
        }
        job.record_status(to, at_ms, reason);
        Ok(Response::JobStatusChanged { job_id, status: to })
    }

    fn apply_grant_job_master_epoch(
        &mut self,
        job_id: JobId,
        leader_term: u64,
        at_ms: u64,
    ) -> Result<Response, DeterministicError> {
        let job = self.job_mut(&job_id)?;
        check_live(job)?;
        let epoch = job.epoch.checked_add(1).ok_or_else(|| exhausted("epoch"))?;
        job.epoch = epoch;
        job.leader_term = leader_term;
        job.updated_at_ms = at_ms;
        Ok(Response::EpochGranted { job_id, epoch })
    }

    fn apply_register_task_manager(
        &mut self,
        tm_id: TaskManagerId,
        address: String,
        slots: u32,
        zone: Option<String>,
        at_ms: u64,
    ) -> Result<Response, DeterministicError> {
        check_text("tm_id", &tm_id, MAX_NAME_BYTES)?;
        check_text("address", &address, MAX_NAME_BYTES)?;
        check_slot_count(slots)?;
        // A TaskManager that restarts with fewer slots invalidates the leases on the slots it no longer has.
        let released = self.leased_slots_of_task_manager(&tm_id, slots);
        for slot in &released {
            self.slot_leases.remove(slot);
        }
        let registered_at_ms = self.task_managers.get(&tm_id).map_or(at_ms, |tm| tm.registered_at_ms);
        let info = TaskManagerInfo { id: tm_id.clone(), address, slots, zone, registered_at_ms, updated_at_ms: at_ms };
        self.task_managers.insert(tm_id.clone(), info);
        Ok(Response::TaskManagerRegistered { tm_id, released })
    }

    fn apply_unregister_task_manager(&mut self, tm_id: TaskManagerId) -> Result<Response, DeterministicError> {
        if !self.task_managers.contains_key(&tm_id) {
            return Err(DeterministicError::TaskManagerNotFound { tm_id });
        }
        let mut released = Vec::new();
        for slot in self.leased_slots_of_task_manager(&tm_id, 0) {
            if let Some(lease) = self.slot_leases.remove(&slot) {
                released.push((slot, lease.job_id));
            }
        }
        self.task_managers.remove(&tm_id);
        Ok(Response::TaskManagerUnregistered { tm_id, released })
    }

    fn apply_lease_slots(
        &mut self,
        job_id: JobId,
        epoch: Epoch,
        slots: Vec<SlotId>,
        at_ms: u64,
    ) -> Result<Response, DeterministicError> {
        check_live_at_epoch(self.job_ref(&job_id)?, epoch)?;
        check_distinct_slots(&slots)?;
        for slot in &slots {
            self.check_slot_exists(slot)?;
            self.check_slot_leasable(slot, &job_id)?;
        }
        for slot in slots {
            let lease = SlotLease { job_id: job_id.clone(), epoch, leased_at_ms: at_ms };
            self.slot_leases.insert(slot, lease);
        }
        Ok(Response::SlotsLeased { job_id, epoch })
    }

    fn apply_release_slots(
        &mut self,
        job_id: JobId,
        epoch: Epoch,
        slots: Vec<SlotId>,
    ) -> Result<Response, DeterministicError> {
        check_live_at_epoch(self.job_ref(&job_id)?, epoch)?;
        check_distinct_slots(&slots)?;
        for slot in &slots {
            if !self.is_leased_to(slot, &job_id) {
                return Err(DeterministicError::SlotNotHeld { slot: slot.clone(), job_id });
            }
        }
        for slot in &slots {
            self.slot_leases.remove(slot);
        }
        Ok(Response::SlotsReleased { job_id, released: slots })
    }

    fn apply_allocate_checkpoint_id(
        &mut self,
        job_id: JobId,
        epoch: Epoch,
        at_ms: u64,
    ) -> Result<Response, DeterministicError> {
        let job = self.job_mut(&job_id)?;
        check_live_at_epoch(job, epoch)?;
        let checkpoint_id = job.last_checkpoint_id.checked_add(1).ok_or_else(|| exhausted("checkpoint_id"))?;
        job.last_checkpoint_id = checkpoint_id;
        job.updated_at_ms = at_ms;
        Ok(Response::CheckpointIdAllocated { job_id, checkpoint_id })
    }

    fn apply_complete_checkpoint(
        &mut self,
        job_id: JobId,
        epoch: Epoch,
        checkpoint: CompletedCheckpoint,
    ) -> Result<Response, DeterministicError> {
        let job = self.job_mut(&job_id)?;
        check_live_at_epoch(job, epoch)?;
        check_checkpoint_allocated(job, checkpoint.id)?;
        // Checkpoints may complete out of order (concurrent checkpoints); an older one finishing after a newer one is
        // useless for recovery, and accepting it would break the "newest last" order retention relies on.
        if let Some(latest) = job.checkpoints.back() {
            if checkpoint.id <= latest.id {
                let latest_completed = latest.id;
                return Err(DeterministicError::CheckpointOutOfOrder {
                    job_id,
                    checkpoint_id: checkpoint.id,
                    latest_completed,
                });
            }
        }
        let checkpoint_id = checkpoint.id;
        job.updated_at_ms = checkpoint.completed_at_ms;
        job.checkpoints.push_back(checkpoint);
        let discarded = job.discard_checkpoints_beyond_retention();
        Ok(Response::CheckpointCompleted { job_id, checkpoint_id, discarded })
    }

    fn apply_record_savepoint(
        &mut self,
        job_id: JobId,
        epoch: Epoch,
        savepoint: Savepoint,
    ) -> Result<Response, DeterministicError> {
        let job = self.job_mut(&job_id)?;
        check_live_at_epoch(job, epoch)?;
        check_checkpoint_allocated(job, savepoint.checkpoint_id)?;
        let checkpoint_id = savepoint.checkpoint_id;
        job.updated_at_ms = savepoint.at_ms;
        job.savepoints.push(savepoint);
        Ok(Response::SavepointRecorded { job_id, checkpoint_id })
    }

    fn apply_record_job_result(
        &mut self,
        job_id: JobId,
        epoch: Epoch,
        status: JobStatus,
        at_ms: u64,
        error: Option<String>,
    ) -> Result<Response, DeterministicError> {
        if !status.is_terminal() {
            return Err(DeterministicError::NotTerminalStatus { status });
        }
        let job = self.job_ref(&job_id)?;
        check_epoch(job, epoch)?;
        // A JobMaster retrying the report of the outcome it already recorded gets the same answer; a different
        // outcome for an ended job is a contradiction.
        if let Some(result) = &job.result {
            if result.status == status {
                return Ok(Response::JobResultRecorded { job_id, status });
            }
            return Err(DeterministicError::JobTerminal { job_id, status: job.status });
        }
        self.end_job(&job_id, status, at_ms, error)?;
        Ok(Response::JobResultRecorded { job_id, status })
    }

    fn apply_put_job_metadata(
        &mut self,
        job_id: JobId,
        key: String,
        value: Vec<u8>,
        at_ms: u64,
    ) -> Result<Response, DeterministicError> {
        let job = self.job_mut(&job_id)?;
        check_text("key", &key, MAX_METADATA_KEY_BYTES)?;
        if value.len() > MAX_METADATA_VALUE_BYTES {
            let reason = format!("is {} bytes; at most {MAX_METADATA_VALUE_BYTES} allowed", value.len());
            return Err(DeterministicError::invalid("value", reason));
        }
        if !job.metadata.contains_key(&key) && job.metadata.len() >= MAX_METADATA_KEYS_PER_JOB {
            let reason = format!("job {job_id} already has {MAX_METADATA_KEYS_PER_JOB} metadata keys; overwrite one");
            return Err(DeterministicError::invalid("key", reason));
        }
        job.metadata.insert(key.clone(), value);
        job.updated_at_ms = at_ms;
        Ok(Response::MetadataPut { job_id, key })
    }

    fn apply_record_job_failure(
        &mut self,
        job_id: JobId,
        epoch: Epoch,
        at_ms: u64,
        error: String,
        restarting: bool,
    ) -> Result<Response, DeterministicError> {
        let job = self.job_mut(&job_id)?;
        check_live_at_epoch(job, epoch)?;
        if restarting {
            job.restarts = job.restarts.checked_add(1).ok_or_else(|| exhausted("restarts"))?;
        }
        job.exceptions.push_back(JobException { at_ms, error: truncate_utf8(error, MAX_ERROR_BYTES), restarting });
        while job.exceptions.len() > MAX_EXCEPTIONS {
            job.exceptions.pop_front();
        }
        job.updated_at_ms = at_ms;
        Ok(Response::JobFailureRecorded { job_id, restarts: job.restarts })
    }

    fn apply_record_deployment(
        &mut self,
        job_id: JobId,
        deployment: JobDeployment,
    ) -> Result<Response, DeterministicError> {
        let job = self.job_ref(&job_id)?;
        check_live_at_epoch(job, deployment.epoch)?;
        let previous = job.deployment.as_ref().map_or(0, |d| d.attempt);
        if deployment.attempt <= previous {
            let reason = format!("attempt {} is not after the job's attempt {previous}", deployment.attempt);
            return Err(DeterministicError::invalid("attempt", reason));
        }
        if deployment.components.is_empty() || deployment.components.iter().any(|c| c.slots.is_empty()) {
            return Err(DeterministicError::invalid("components", "every component needs at least one slot"));
        }
        let slots: Vec<SlotId> = deployment.components.iter().flat_map(|c| c.slots.iter().cloned()).collect();
        check_distinct_slots(&slots)?;
        if let Some(slot) = slots.iter().find(|slot| !self.is_leased_to(slot, &job_id)) {
            return Err(DeterministicError::SlotNotHeld { slot: slot.clone(), job_id });
        }
        let attempt = deployment.attempt;
        let job = self.job_mut(&job_id)?;
        job.updated_at_ms = deployment.at_ms;
        job.deployment = Some(deployment);
        Ok(Response::DeploymentRecorded { job_id, attempt })
    }

    fn apply_request_savepoint(
        &mut self,
        job_id: JobId,
        request_id: String,
        request: SavepointRequest,
    ) -> Result<Response, DeterministicError> {
        check_text("request_id", &request_id, MAX_NAME_BYTES)?;
        if let Some(dir) = &request.target_dir {
            check_text("target_dir", dir, MAX_ERROR_BYTES)?;
        }
        let job = self.job_mut(&job_id)?;
        if job.savepoint_requests.contains_key(&request_id) {
            return Ok(Response::SavepointRequested { job_id, request_id, created: false });
        }
        check_live(job)?;
        if job.savepoint_requests.len() >= MAX_SAVEPOINT_REQUESTS {
            let oldest_resolved = job
                .savepoint_requests
                .iter()
                .filter(|(_, r)| r.outcome.is_some())
                .min_by_key(|(id, r)| (r.requested_at_ms, (*id).clone()));
            match oldest_resolved.map(|(id, _)| id.clone()) {
                Some(id) => {
                    job.savepoint_requests.remove(&id);
                }
                None => {
                    let reason = format!("job {job_id} already has {MAX_SAVEPOINT_REQUESTS} savepoints in progress");
                    return Err(DeterministicError::invalid("request_id", reason));
                }
            }
        }
        job.updated_at_ms = request.requested_at_ms;
        job.savepoint_requests.insert(request_id.clone(), request);
        Ok(Response::SavepointRequested { job_id, request_id, created: true })
    }

    fn apply_resolve_savepoint_request(
        &mut self,
        job_id: JobId,
        epoch: Epoch,
        request_id: String,
        outcome: SavepointOutcome,
        at_ms: u64,
    ) -> Result<Response, DeterministicError> {
        let job = self.job_ref(&job_id)?;
        // A stop-with-savepoint resolves its request after the job finished: only the epoch is checked.
        check_epoch(job, epoch)?;
        let Some(request) = job.savepoint_requests.get(&request_id) else {
            let reason = format!("job {job_id} has no savepoint request {request_id}");
            return Err(DeterministicError::invalid("request_id", reason));
        };
        if let Some(existing) = &request.outcome {
            if *existing == outcome {
                return Ok(Response::SavepointRequestResolved { job_id, request_id });
            }
            return Err(DeterministicError::invalid(
                "request_id",
                format!("savepoint request {request_id} already ended"),
            ));
        }
        if let SavepointOutcome::Completed { savepoint } = &outcome {
            check_checkpoint_allocated(job, savepoint.checkpoint_id)?;
        }
        let job = self.job_mut(&job_id)?;
        if let SavepointOutcome::Completed { savepoint } = &outcome {
            job.savepoints.push(savepoint.clone());
        }
        job.updated_at_ms = at_ms;
        if let Some(request) = job.savepoint_requests.get_mut(&request_id) {
            request.outcome = Some(outcome);
            request.resolved_at_ms = Some(at_ms);
        }
        Ok(Response::SavepointRequestResolved { job_id, request_id })
    }

    fn apply_request_savepoint_disposal(
        &mut self,
        request_id: String,
        disposal: SavepointDisposal,
    ) -> Result<Response, DeterministicError> {
        check_text("request_id", &request_id, MAX_NAME_BYTES)?;
        check_text("path", &disposal.path, MAX_PATH_BYTES)?;
        if let Some(job_id) = &disposal.job_id {
            self.job_ref(job_id)?;
        }
        // Request ids are chosen fresh by the dispatcher; a second request under one id is a mistake, not a retry.
        if self.savepoint_disposals.contains_key(&request_id) {
            let reason = format!("savepoint disposal {request_id} already exists; use a fresh request id");
            return Err(DeterministicError::invalid("request_id", reason));
        }
        let evicted = if self.savepoint_disposals.len() >= MAX_SAVEPOINT_DISPOSALS {
            let oldest_resolved = self
                .savepoint_disposals
                .iter()
                .filter(|(_, d)| d.outcome.is_some())
                .min_by_key(|(id, d)| (d.requested_index, (*id).clone()))
                .map(|(id, _)| id.clone());
            match oldest_resolved {
                Some(id) => Some(id),
                None => {
                    let reason =
                        format!("{MAX_SAVEPOINT_DISPOSALS} savepoint disposals are in progress; retry once one ended");
                    return Err(DeterministicError::invalid("request_id", reason));
                }
            }
        } else {
            None
        };
        if let Some(id) = evicted {
            self.savepoint_disposals.remove(&id);
        }
        self.savepoint_disposals.insert(request_id.clone(), disposal);
        Ok(Response::SavepointDisposalRequested { request_id })
    }

    fn apply_resolve_savepoint_disposal(
        &mut self,
        request_id: String,
        outcome: DisposalOutcome,
        at_ms: u64,
    ) -> Result<Response, DeterministicError> {
        let Some(disposal) = self.savepoint_disposals.get_mut(&request_id) else {
            let reason = format!("there is no savepoint disposal {request_id}");
            return Err(DeterministicError::invalid("request_id", reason));
        };
        // Only the leader resolves, once; a second resolution (a new leader that did not see the first) is refused,
        // so the first outcome stands.
        if disposal.outcome.is_some() {
            let reason = format!("savepoint disposal {request_id} already ended");
            return Err(DeterministicError::invalid("request_id", reason));
        }
        let outcome = match outcome {
            DisposalOutcome::Failed { message } => {
                DisposalOutcome::Failed { message: truncate_utf8(message, MAX_ERROR_BYTES) }
            }
            disposed => disposed,
        };
        disposal.outcome = Some(outcome);
        disposal.resolved_at_ms = Some(at_ms);
        Ok(Response::SavepointDisposalResolved { request_id })
    }

    /// Applies each command of a batch in order, with its own outcome. The batch as a whole always succeeds.
    fn apply_batch(&mut self, index: LogIndex, commands: Vec<Command>) -> Response {
        let results = commands
            .into_iter()
            .map(|command| match command {
                Command::Batch { .. } => Err(DeterministicError::invalid("batch", "a batch cannot contain a batch")),
                command => self.apply(index, command),
            })
            .collect();
        Response::Batch { results }
    }

    /// Makes a job terminal with the given outcome and frees its slots: a terminal job runs nothing.
    fn end_job(
        &mut self,
        job_id: &str,
        status: JobStatus,
        at_ms: u64,
        error: Option<String>,
    ) -> Result<(), DeterministicError> {
        let job = self.job_mut(job_id)?;
        job.record_status(status, at_ms, error.clone());
        job.result = Some(JobResult { status, at_ms, error });
        self.slot_leases.retain(|_, lease| lease.job_id != job_id);
        Ok(())
    }

    fn job_ref(&self, job_id: &str) -> Result<&Job, DeterministicError> {
        self.jobs.get(job_id).ok_or_else(|| DeterministicError::JobNotFound { job_id: job_id.to_string() })
    }

    fn job_mut(&mut self, job_id: &str) -> Result<&mut Job, DeterministicError> {
        self.jobs.get_mut(job_id).ok_or_else(|| DeterministicError::JobNotFound { job_id: job_id.to_string() })
    }

    /// The leased slots of a TaskManager whose index is `from_index` or above, in slot order.
    fn leased_slots_of_task_manager(&self, tm_id: &str, from_index: u32) -> Vec<SlotId> {
        let first = SlotId::new(tm_id, from_index);
        let last = SlotId::new(tm_id, u32::MAX);
        if first > last {
            return Vec::new();
        }
        self.slot_leases.range(first..=last).map(|(slot, _)| slot.clone()).collect()
    }

    fn check_slot_exists(&self, slot: &SlotId) -> Result<(), DeterministicError> {
        let tm = self
            .task_managers
            .get(&slot.tm)
            .ok_or_else(|| DeterministicError::TaskManagerNotFound { tm_id: slot.tm.clone() })?;
        if slot.index >= tm.slots {
            return Err(DeterministicError::SlotOutOfRange { slot: slot.clone(), slots: tm.slots });
        }
        Ok(())
    }

    /// A slot is leasable by a job if it is free or already the job's: a new JobMaster adopts the slots its
    /// predecessor leased by leasing them again under its own epoch.
    fn check_slot_leasable(&self, slot: &SlotId, job_id: &str) -> Result<(), DeterministicError> {
        match self.slot_leases.get(slot) {
            Some(lease) if lease.job_id != job_id => {
                Err(DeterministicError::SlotUnavailable { slot: slot.clone(), held_by: lease.job_id.clone() })
            }
            _ => Ok(()),
        }
    }

    fn is_leased_to(&self, slot: &SlotId, job_id: &str) -> bool {
        self.slot_leases.get(slot).is_some_and(|lease| lease.job_id == job_id)
    }

    /// The job with this id, if any.
    pub fn job(&self, id: &str) -> Option<&Job> {
        self.jobs.get(id)
    }

    /// The newest retained completed checkpoint of a job: where a restore starts.
    pub fn latest_checkpoint(&self, job_id: &str) -> Option<&CompletedCheckpoint> {
        self.jobs.get(job_id).and_then(|job| job.checkpoints.back())
    }

    /// The slots leased to a job, in slot order.
    pub fn leases_of_job(&self, job_id: &str) -> Vec<(&SlotId, &SlotLease)> {
        self.slot_leases.iter().filter(|(_, lease)| lease.job_id == job_id).collect()
    }

    /// Every slot of every registered TaskManager that no job holds, in slot order.
    pub fn free_slots(&self) -> Vec<SlotId> {
        let all_slots =
            self.task_managers.values().flat_map(|tm| (0..tm.slots).map(|index| SlotId::new(&tm.id, index)));
        all_slots.filter(|slot| !self.slot_leases.contains_key(slot)).collect()
    }

    /// The savepoint disposals the leader still has to carry out, as `(request id, path)`, oldest first.
    pub fn disposals_in_progress(&self) -> Vec<(String, String)> {
        let mut pending: Vec<(&String, &SavepointDisposal)> =
            self.savepoint_disposals.iter().filter(|(_, d)| d.outcome.is_none()).collect();
        pending.sort_by_key(|(id, d)| (d.requested_index, *id));
        pending.into_iter().map(|(id, d)| (id.clone(), d.path.clone())).collect()
    }

    /// A digest of the whole state (FNV-1a over its encoding): equal on two replicas that applied the same entries,
    /// so the chaos suite can compare replicas at the end of a run without shipping their states.
    pub fn digest(&self) -> u64 {
        let bytes = super::command::encode(self);
        bytes
            .iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3))
    }

    /// Checks every invariant the state machine maintains; the error names the first violation found. Meant for tests
    /// and for checking a snapshot or a freshly replayed state.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.check_task_managers()?;
        self.check_leases()?;
        self.check_idempotency_keys()?;
        self.check_savepoint_disposals()?;
        self.check_leader_changes()?;
        self.jobs.iter().try_for_each(|(id, job)| check_job(id, job))
    }

    fn check_leader_changes(&self) -> Result<(), String> {
        if self.leader_changes.len() > MAX_LEADER_CHANGES {
            return Err(format!("{} leader changes are kept", self.leader_changes.len()));
        }
        let terms: Vec<u64> = self.leader_changes.iter().map(|c| c.term).collect();
        if terms.windows(2).any(|w| w[0] >= w[1]) {
            return Err(format!("leader change terms do not increase: {terms:?}"));
        }
        Ok(())
    }

    fn check_savepoint_disposals(&self) -> Result<(), String> {
        if self.savepoint_disposals.len() > MAX_SAVEPOINT_DISPOSALS {
            return Err(format!("{} savepoint disposals are kept", self.savepoint_disposals.len()));
        }
        for (id, disposal) in &self.savepoint_disposals {
            if disposal.path.is_empty() || disposal.path.len() > MAX_PATH_BYTES {
                return Err(format!("savepoint disposal {id} has a path of {} bytes", disposal.path.len()));
            }
            if disposal.outcome.is_some() != disposal.resolved_at_ms.is_some() {
                return Err(format!("savepoint disposal {id} has an outcome without a time, or the reverse"));
            }
            if let Some(job_id) = disposal.job_id.as_ref().filter(|j| !self.jobs.contains_key(*j)) {
                return Err(format!("savepoint disposal {id} names unknown job {job_id}"));
            }
        }
        Ok(())
    }

    fn check_task_managers(&self) -> Result<(), String> {
        for (id, tm) in &self.task_managers {
            if &tm.id != id {
                return Err(format!("task manager stored under {id} has id {}", tm.id));
            }
            if check_slot_count(tm.slots).is_err() {
                return Err(format!("task manager {id} offers {} slots", tm.slots));
            }
        }
        Ok(())
    }

    fn check_leases(&self) -> Result<(), String> {
        for (slot, lease) in &self.slot_leases {
            let Some(tm) = self.task_managers.get(&slot.tm) else {
                return Err(format!("slot {slot} is leased but its task manager is not registered"));
            };
            if slot.index >= tm.slots {
                return Err(format!("slot {slot} is leased but its task manager has only {} slots", tm.slots));
            }
            let Some(job) = self.jobs.get(&lease.job_id) else {
                return Err(format!("slot {slot} is leased to unknown job {}", lease.job_id));
            };
            if job.status.is_terminal() {
                return Err(format!("slot {slot} is leased to job {} which is {}", job.id, job.status));
            }
            if lease.epoch > job.epoch {
                return Err(format!(
                    "slot {slot} is leased at epoch {} but job {} is at {}",
                    lease.epoch, job.id, job.epoch
                ));
            }
        }
        Ok(())
    }

    fn check_idempotency_keys(&self) -> Result<(), String> {
        for (key, job_id) in &self.idempotency_keys {
            match self.jobs.get(job_id) {
                Some(job) if &job.idempotency_key == key => {}
                _ => {
                    return Err(format!(
                        "idempotency key {key} points to job {job_id}, which was not submitted with it"
                    ))
                }
            }
        }
        for (id, job) in &self.jobs {
            if self.idempotency_keys.get(&job.idempotency_key) != Some(id) {
                return Err(format!("job {id}'s idempotency key {} does not point back to it", job.idempotency_key));
            }
        }
        Ok(())
    }
}

impl Job {
    /// Enters `status`, remembering the change in the bounded history.
    fn record_status(&mut self, status: JobStatus, at_ms: u64, reason: Option<String>) {
        self.status = status;
        self.updated_at_ms = at_ms;
        self.status_history.push_back(StatusChange { status, at_ms, reason });
        while self.status_history.len() > MAX_STATUS_HISTORY {
            self.status_history.pop_front();
        }
    }

    /// Drops the oldest completed checkpoints beyond the retention limit and returns them, oldest first, so that the
    /// caller can delete their files.
    fn discard_checkpoints_beyond_retention(&mut self) -> Vec<CompletedCheckpoint> {
        let retained = usize::try_from(self.max_retained_checkpoints).unwrap_or(usize::MAX);
        let mut discarded = Vec::new();
        while self.checkpoints.len() > retained {
            if let Some(oldest) = self.checkpoints.pop_front() {
                discarded.push(oldest);
            }
        }
        discarded
    }
}

/// A job nobody is running yet (no JobMaster was ever granted, or none has started its tasks) can be cancelled on
/// the spot; otherwise its JobMaster has tasks to stop first.
fn can_cancel_outright(job: &Job) -> bool {
    job.epoch == 0 || (matches!(job.status, JobStatus::Created | JobStatus::Initializing) && job.deployment.is_none())
}

/// Cuts `text` to at most `max` bytes on a character boundary, marking the cut.
fn truncate_utf8(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str("...");
    text
}

/// Fences off JobMasters other than the current one.
fn check_epoch(job: &Job, given: Epoch) -> Result<(), DeterministicError> {
    let current = job.epoch;
    if given < current {
        return Err(DeterministicError::StaleEpoch { job_id: job.id.clone(), given, current });
    }
    if given > current {
        return Err(DeterministicError::FutureEpoch { job_id: job.id.clone(), given, current });
    }
    Ok(())
}

fn check_live(job: &Job) -> Result<(), DeterministicError> {
    if job.status.is_terminal() {
        return Err(DeterministicError::JobTerminal { job_id: job.id.clone(), status: job.status });
    }
    Ok(())
}

/// The guard of every JobMaster command: the current JobMaster, of a job that is still going.
fn check_live_at_epoch(job: &Job, given: Epoch) -> Result<(), DeterministicError> {
    check_epoch(job, given)?;
    check_live(job)
}

fn check_checkpoint_allocated(job: &Job, checkpoint_id: CheckpointId) -> Result<(), DeterministicError> {
    // Ids are allocated from 1; 0 means "none" and is never a real checkpoint.
    if checkpoint_id == 0 || checkpoint_id > job.last_checkpoint_id {
        return Err(DeterministicError::CheckpointNotAllocated {
            job_id: job.id.clone(),
            checkpoint_id,
            last_allocated: job.last_checkpoint_id,
        });
    }
    Ok(())
}

/// A required string: non-empty and at most `max_bytes` long.
fn check_text(field: &str, value: &str, max_bytes: usize) -> Result<(), DeterministicError> {
    if value.is_empty() {
        return Err(DeterministicError::invalid(field, "must not be empty"));
    }
    if value.len() > max_bytes {
        return Err(DeterministicError::invalid(
            field,
            format!("is {} bytes; at most {max_bytes} allowed", value.len()),
        ));
    }
    Ok(())
}

fn check_retention(max_retained_checkpoints: u32) -> Result<(), DeterministicError> {
    if !(1..=MAX_RETAINED_CHECKPOINTS).contains(&max_retained_checkpoints) {
        let reason = format!("is {max_retained_checkpoints}; must be between 1 and {MAX_RETAINED_CHECKPOINTS}");
        return Err(DeterministicError::invalid("max_retained_checkpoints", reason));
    }
    Ok(())
}

fn check_slot_count(slots: u32) -> Result<(), DeterministicError> {
    if !(1..=MAX_SLOTS_PER_TASK_MANAGER).contains(&slots) {
        let reason = format!("is {slots}; must be between 1 and {MAX_SLOTS_PER_TASK_MANAGER}");
        return Err(DeterministicError::invalid("slots", reason));
    }
    Ok(())
}

/// The slot list of a lease or release: non-empty, each slot once (a duplicate is a caller bug worth surfacing).
fn check_distinct_slots(slots: &[SlotId]) -> Result<(), DeterministicError> {
    if slots.is_empty() {
        return Err(DeterministicError::invalid("slots", "must name at least one slot"));
    }
    let mut seen = BTreeSet::new();
    for slot in slots {
        if !seen.insert(slot) {
            return Err(DeterministicError::invalid("slots", format!("slot {slot} appears more than once")));
        }
    }
    Ok(())
}

fn exhausted(field: &str) -> DeterministicError {
    DeterministicError::invalid(field, "the counter is exhausted (reached u64::MAX)")
}

fn check_job(id: &str, job: &Job) -> Result<(), String> {
    if job.id != id {
        return Err(format!("job stored under {id} has id {}", job.id));
    }
    check_job_checkpoints(job)?;
    check_job_status(job)?;
    check_job_metadata(job)?;
    check_job_runtime(job)
}

fn check_job_runtime(job: &Job) -> Result<(), String> {
    let id = &job.id;
    if job.exceptions.len() > MAX_EXCEPTIONS {
        return Err(format!("job {id} has {} exceptions", job.exceptions.len()));
    }
    if job.savepoint_requests.len() > MAX_SAVEPOINT_REQUESTS {
        return Err(format!("job {id} has {} savepoint requests", job.savepoint_requests.len()));
    }
    if let Some(deployment) = &job.deployment {
        if deployment.attempt == 0 || deployment.epoch > job.epoch {
            return Err(format!(
                "job {id} has deployment attempt {} at epoch {}",
                deployment.attempt, deployment.epoch
            ));
        }
    }
    Ok(())
}

fn check_job_checkpoints(job: &Job) -> Result<(), String> {
    let id = &job.id;
    if check_retention(job.max_retained_checkpoints).is_err() {
        return Err(format!("job {id} retains {} checkpoints", job.max_retained_checkpoints));
    }
    if job.checkpoints.len() > usize::try_from(job.max_retained_checkpoints).unwrap_or(usize::MAX) {
        return Err(format!("job {id} holds {} checkpoints, more than it retains", job.checkpoints.len()));
    }
    let mut previous: CheckpointId = 0;
    for checkpoint in &job.checkpoints {
        if checkpoint.id <= previous || checkpoint.id > job.last_checkpoint_id {
            return Err(format!(
                "job {id} checkpoint {} is out of order or unallocated (previous {previous}, last allocated {})",
                checkpoint.id, job.last_checkpoint_id
            ));
        }
        previous = checkpoint.id;
    }
    for savepoint in &job.savepoints {
        if savepoint.checkpoint_id == 0 || savepoint.checkpoint_id > job.last_checkpoint_id {
            return Err(format!("job {id} savepoint {} was never allocated", savepoint.checkpoint_id));
        }
    }
    Ok(())
}

fn check_job_status(job: &Job) -> Result<(), String> {
    let id = &job.id;
    match &job.result {
        Some(result) if !job.status.is_terminal() || result.status != job.status => {
            return Err(format!("job {id} is {} but has result {}", job.status, result.status));
        }
        None if job.status.is_terminal() => return Err(format!("job {id} is {} without a result", job.status)),
        _ => {}
    }
    if job.status_history.len() > MAX_STATUS_HISTORY {
        return Err(format!("job {id} has {} history entries", job.status_history.len()));
    }
    match job.status_history.back() {
        Some(change) if change.status == job.status => Ok(()),
        _ => Err(format!("job {id} is {} but its history does not end there", job.status)),
    }
}

fn check_job_metadata(job: &Job) -> Result<(), String> {
    let id = &job.id;
    if job.metadata.len() > MAX_METADATA_KEYS_PER_JOB {
        return Err(format!("job {id} has {} metadata keys", job.metadata.len()));
    }
    for (key, value) in &job.metadata {
        if key.is_empty() || key.len() > MAX_METADATA_KEY_BYTES || value.len() > MAX_METADATA_VALUE_BYTES {
            return Err(format!("job {id} metadata {key:?} is beyond limits ({} value bytes)", value.len()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::command::{decode, encode};

    const J1: &str = "00000000000000000000000000000001";
    const J2: &str = "00000000000000000000000000000002";
    const TM: &str = "tm-1";

    /// Applies commands at increasing log indexes and checks invariants after each one.
    #[derive(Default)]
    struct Harness {
        state: ClusterState,
        index: LogIndex,
    }

    impl Harness {
        #[track_caller]
        fn ok(&mut self, cmd: Command) -> Response {
            self.index += 1;
            let response = self.state.apply(self.index, cmd).unwrap_or_else(|e| panic!("rejected: {e}"));
            assert_eq!(self.state.last_index, self.index);
            self.state.check_invariants().unwrap();
            response
        }

        /// Asserts that `cmd` fails with `expected` and changes nothing but `last_index`.
        #[track_caller]
        fn rejects(&mut self, cmd: Command, expected: DeterministicError) {
            let mut unchanged = self.state.clone();
            self.index += 1;
            let err = self.state.apply(self.index, cmd).unwrap_err();
            assert_eq!(err, expected);
            unchanged.last_index = self.index;
            assert_eq!(self.state, unchanged);
        }

        fn job(&self, id: &str) -> &Job {
            self.state.job(id).unwrap()
        }

        /// A submitted job with a JobMaster at epoch 1, RUNNING, on slots 0 and 1 of a 4-slot TaskManager.
        fn with_running_job() -> Self {
            let mut h = Self::default();
            h.ok(submit(J1, "k1"));
            h.ok(register(TM, 4));
            h.ok(grant(J1));
            h.ok(lease(J1, 1, &[0, 1]));
            h.ok(transition(J1, 1, JobStatus::Running));
            h
        }
    }

    fn submit(job_id: &str, key: &str) -> Command {
        Command::SubmitJob {
            job_id: job_id.to_string(),
            idempotency_key: key.to_string(),
            name: "wordcount".to_string(),
            spec_json: "{}".to_string(),
            max_retained_checkpoints: 2,
            submitted_at_ms: 100,
        }
    }

    fn cancel(job_id: &str) -> Command {
        Command::CancelJob { job_id: job_id.to_string(), at_ms: 200 }
    }

    fn transition(job_id: &str, epoch: Epoch, to: JobStatus) -> Command {
        Command::TransitionJobStatus { job_id: job_id.to_string(), epoch, to, at_ms: 300, reason: None }
    }

    fn grant(job_id: &str) -> Command {
        Command::GrantJobMasterEpoch { job_id: job_id.to_string(), leader_term: 7, at_ms: 150 }
    }

    fn register(tm: &str, slots: u32) -> Command {
        Command::RegisterTaskManager {
            tm_id: tm.to_string(),
            address: "10.0.0.1:6122".to_string(),
            slots,
            zone: None,
            at_ms: 50,
        }
    }

    fn unregister(tm: &str) -> Command {
        Command::UnregisterTaskManager { tm_id: tm.to_string(), at_ms: 900, reason: "heartbeat timeout".to_string() }
    }

    fn slots(indexes: &[u32]) -> Vec<SlotId> {
        indexes.iter().map(|&i| SlotId::new(TM, i)).collect()
    }

    fn lease(job_id: &str, epoch: Epoch, indexes: &[u32]) -> Command {
        Command::LeaseSlots { job_id: job_id.to_string(), epoch, slots: slots(indexes), at_ms: 400 }
    }

    fn release(job_id: &str, epoch: Epoch, indexes: &[u32]) -> Command {
        Command::ReleaseSlots { job_id: job_id.to_string(), epoch, slots: slots(indexes), at_ms: 500 }
    }

    fn allocate(job_id: &str, epoch: Epoch) -> Command {
        Command::AllocateCheckpointId { job_id: job_id.to_string(), epoch, at_ms: 600 }
    }

    fn checkpoint(id: CheckpointId) -> CompletedCheckpoint {
        CompletedCheckpoint {
            id,
            trigger_at_ms: 600,
            completed_at_ms: 700,
            external_path: format!("s3://ckpt/{id}"),
            state_size_bytes: 10,
        }
    }

    fn complete(job_id: &str, epoch: Epoch, id: CheckpointId) -> Command {
        Command::CompleteCheckpoint { job_id: job_id.to_string(), epoch, checkpoint: checkpoint(id) }
    }

    fn savepoint(job_id: &str, epoch: Epoch, id: CheckpointId) -> Command {
        let savepoint = Savepoint { checkpoint_id: id, path: format!("s3://sp/{id}"), at_ms: 750 };
        Command::RecordSavepoint { job_id: job_id.to_string(), epoch, savepoint }
    }

    fn result(job_id: &str, epoch: Epoch, status: JobStatus) -> Command {
        Command::RecordJobResult { job_id: job_id.to_string(), epoch, status, at_ms: 800, error: None }
    }

    fn put(job_id: &str, key: &str, value: Vec<u8>) -> Command {
        Command::PutJobMetadata { job_id: job_id.to_string(), key: key.to_string(), value, at_ms: 850 }
    }

    fn not_found(job_id: &str) -> DeterministicError {
        DeterministicError::JobNotFound { job_id: job_id.to_string() }
    }

    fn invalid(field: &str, reason: &str) -> DeterministicError {
        DeterministicError::invalid(field, reason)
    }

    /// Every command that carries a JobMaster epoch, for `job_id` at `epoch`.
    fn epoch_guarded_commands(job_id: &str, epoch: Epoch) -> Vec<Command> {
        vec![
            transition(job_id, epoch, JobStatus::Failing),
            lease(job_id, epoch, &[2]),
            release(job_id, epoch, &[0]),
            allocate(job_id, epoch),
            complete(job_id, epoch, 1),
            savepoint(job_id, epoch, 1),
            result(job_id, epoch, JobStatus::Finished),
        ]
    }

    fn deployment(job_id: &str, epoch: Epoch, attempt: u32, slots: &[u32]) -> Command {
        let slots = slots.iter().map(|i| SlotId::new(TM, *i)).collect();
        let components = vec![DeployedComponent { vertices: vec!["source".to_string()], slots }];
        let restored_from = None;
        let checkpoint_dir = "/ck".to_string();
        Command::RecordDeployment {
            job_id: job_id.to_string(),
            epoch,
            attempt,
            components,
            restored_from,
            checkpoint_dir,
            at_ms: 400,
        }
    }

    #[test]
    fn a_deployment_needs_the_current_epoch_leased_slots_and_a_newer_attempt() {
        let mut h = Harness::with_running_job();
        assert_eq!(h.ok(deployment(J1, 1, 1, &[0, 1])), Response::DeploymentRecorded { job_id: J1.into(), attempt: 1 });
        assert_eq!(h.job(J1).deployment.as_ref().map(|d| d.attempt), Some(1));
        h.rejects(deployment(J1, 1, 1, &[0, 1]), invalid("attempt", "attempt 1 is not after the job's attempt 1"));
        let slot = SlotId::new(TM, 3);
        h.rejects(deployment(J1, 1, 2, &[3]), DeterministicError::SlotNotHeld { slot, job_id: J1.into() });
        h.ok(grant(J1));
        let stale = DeterministicError::StaleEpoch { job_id: J1.into(), given: 1, current: 2 };
        h.rejects(deployment(J1, 1, 2, &[0]), stale);
        h.ok(deployment(J1, 2, 2, &[0]));
    }

    #[test]
    fn a_deployed_job_is_cancelled_by_its_job_master_not_outright() {
        let mut h = Harness::default();
        h.ok(submit(J1, "k1"));
        h.ok(register(TM, 4));
        h.ok(grant(J1));
        h.ok(lease(J1, 1, &[0]));
        h.ok(deployment(J1, 1, 1, &[0]));
        // Still CREATED, but tasks may already run: only the JobMaster can stop them.
        assert_eq!(h.ok(cancel(J1)), Response::JobCancelled { job_id: J1.into(), status: JobStatus::Cancelling });
        assert!(h.state.slot_leases.contains_key(&SlotId::new(TM, 0)));
    }

    #[test]
    fn failures_are_kept_bounded_and_restarts_counted() {
        let mut h = Harness::with_running_job();
        for n in 0..(MAX_EXCEPTIONS as u64 + 5) {
            let error = format!("failure {n}");
            let cmd =
                Command::RecordJobFailure { job_id: J1.into(), epoch: 1, at_ms: n, error, restarting: n % 2 == 0 };
            h.ok(cmd);
        }
        let job = h.job(J1);
        assert_eq!(job.exceptions.len(), MAX_EXCEPTIONS);
        assert_eq!(job.exceptions.back().map(|e| e.error.as_str()), Some("failure 36"));
        assert_eq!(job.restarts, 19);
        let long = "x".repeat(MAX_ERROR_BYTES * 2);
        h.ok(Command::RecordJobFailure { job_id: J1.into(), epoch: 1, at_ms: 1, error: long, restarting: false });
        assert!(h.job(J1).exceptions.back().is_some_and(|e| e.error.len() <= MAX_ERROR_BYTES));
    }

    #[test]
    fn savepoint_requests_are_idempotent_and_resolved_once_by_the_job_master() {
        let mut h = Harness::with_running_job();
        let request = |id: &str| Command::RequestSavepoint {
            job_id: J1.into(),
            request_id: id.into(),
            target_dir: None,
            terminate: true,
            at_ms: 500,
        };
        let created = Response::SavepointRequested { job_id: J1.into(), request_id: "r1".into(), created: true };
        assert_eq!(h.ok(request("r1")), created);
        let again = Response::SavepointRequested { job_id: J1.into(), request_id: "r1".into(), created: false };
        assert_eq!(h.ok(request("r1")), again);
        h.ok(Command::AllocateCheckpointId { job_id: J1.into(), epoch: 1, at_ms: 501 });
        let savepoint = Savepoint { checkpoint_id: 1, path: "/sp/1".into(), at_ms: 502 };
        let outcome = SavepointOutcome::Completed { savepoint: savepoint.clone() };
        let resolve = |outcome: SavepointOutcome| Command::ResolveSavepointRequest {
            job_id: J1.into(),
            epoch: 1,
            request_id: "r1".into(),
            outcome,
            at_ms: 503,
        };
        h.ok(resolve(outcome.clone()));
        h.ok(resolve(outcome));
        assert_eq!(h.job(J1).savepoints, vec![savepoint]);
        let failed = SavepointOutcome::Failed { error: "late".into() };
        h.rejects(resolve(failed), invalid("request_id", "savepoint request r1 already ended"));
        let unknown = Command::ResolveSavepointRequest {
            job_id: J1.into(),
            epoch: 1,
            request_id: "nope".into(),
            outcome: SavepointOutcome::Failed { error: "x".into() },
            at_ms: 1,
        };
        h.rejects(unknown, invalid("request_id", &format!("job {J1} has no savepoint request nope")));
    }

    fn request_disposal(request_id: &str, path: &str, job_id: Option<&str>) -> Command {
        Command::RequestSavepointDisposal {
            request_id: request_id.into(),
            path: path.into(),
            job_id: job_id.map(String::from),
            at_ms: 900,
        }
    }

    fn resolve_disposal(request_id: &str, outcome: DisposalOutcome) -> Command {
        Command::ResolveSavepointDisposal { request_id: request_id.into(), outcome, at_ms: 950 }
    }

    #[test]
    fn a_savepoint_disposal_is_requested_then_resolved_once() {
        let mut h = Harness::with_running_job();
        let created = Response::SavepointDisposalRequested { request_id: "d1".into() };
        assert_eq!(h.ok(request_disposal("d1", "/sp/savepoint-000000-1", Some(J1))), created);
        let disposal = &h.state.savepoint_disposals["d1"];
        assert_eq!(
            (disposal.path.as_str(), disposal.job_id.as_deref(), disposal.requested_at_ms, disposal.outcome.as_ref()),
            ("/sp/savepoint-000000-1", Some(J1), 900, None)
        );
        assert_eq!(h.state.disposals_in_progress(), vec![("d1".to_string(), "/sp/savepoint-000000-1".to_string())]);

        let resolved = Response::SavepointDisposalResolved { request_id: "d1".into() };
        assert_eq!(h.ok(resolve_disposal("d1", DisposalOutcome::Disposed)), resolved);
        let disposal = &h.state.savepoint_disposals["d1"];
        assert_eq!((disposal.outcome.as_ref(), disposal.resolved_at_ms), (Some(&DisposalOutcome::Disposed), Some(950)));
        assert!(h.state.disposals_in_progress().is_empty());

        // A failure keeps its message, cut to the limit.
        h.ok(request_disposal("d2", "/sp/2", None));
        let long = "denied ".repeat(MAX_ERROR_BYTES);
        h.ok(resolve_disposal("d2", DisposalOutcome::Failed { message: long }));
        let Some(DisposalOutcome::Failed { message }) = &h.state.savepoint_disposals["d2"].outcome else {
            panic!("not failed")
        };
        assert!(message.starts_with("denied") && message.len() <= MAX_ERROR_BYTES, "{}", message.len());
    }

    #[test]
    fn savepoint_disposals_refuse_duplicates_unknown_and_resolved_requests() {
        let mut h = Harness::with_running_job();
        h.ok(request_disposal("d1", "/sp/1", None));
        let duplicate = invalid("request_id", "savepoint disposal d1 already exists; use a fresh request id");
        h.rejects(request_disposal("d1", "/sp/other", None), duplicate);
        h.rejects(
            resolve_disposal("nope", DisposalOutcome::Disposed),
            invalid("request_id", "there is no savepoint disposal nope"),
        );
        h.ok(resolve_disposal("d1", DisposalOutcome::Disposed));
        let ended = invalid("request_id", "savepoint disposal d1 already ended");
        h.rejects(resolve_disposal("d1", DisposalOutcome::Disposed), ended.clone());
        h.rejects(resolve_disposal("d1", DisposalOutcome::Failed { message: "late".into() }), ended);

        h.rejects(request_disposal("d2", "", None), invalid("path", "must not be empty"));
        let too_long = "/".repeat(MAX_PATH_BYTES + 1);
        h.rejects(request_disposal("d2", &too_long, None), invalid("path", "is 4097 bytes; at most 4096 allowed"));
        h.rejects(request_disposal("", "/sp/2", None), invalid("request_id", "must not be empty"));
        h.rejects(request_disposal("d2", "/sp/2", Some(J2)), not_found(J2));
    }

    #[test]
    fn savepoint_disposals_are_bounded_dropping_the_oldest_resolved_first() {
        let mut h = Harness::default();
        for n in 0..MAX_SAVEPOINT_DISPOSALS {
            h.ok(request_disposal(&format!("d{n:02}"), &format!("/sp/{n}"), None));
        }
        // Full of requests in progress: refused, deterministically.
        let full = format!("{MAX_SAVEPOINT_DISPOSALS} savepoint disposals are in progress; retry once one ended");
        h.rejects(request_disposal("late", "/sp/late", None), invalid("request_id", &full));
        // Resolving two makes room; the older of them goes first, whatever its id.
        h.ok(resolve_disposal("d10", DisposalOutcome::Disposed));
        h.ok(resolve_disposal("d05", DisposalOutcome::Failed { message: "denied".into() }));
        h.ok(request_disposal("late", "/sp/late", None));
        assert!(!h.state.savepoint_disposals.contains_key("d05"));
        assert!(h.state.savepoint_disposals.contains_key("d10"));
        assert_eq!(h.state.savepoint_disposals.len(), MAX_SAVEPOINT_DISPOSALS);
        h.ok(request_disposal("later", "/sp/later", None));
        assert!(!h.state.savepoint_disposals.contains_key("d10"));
        h.rejects(request_disposal("latest", "/sp/latest", None), invalid("request_id", &full));
        // In-progress requests, oldest first, are what the leader works through.
        let pending = h.state.disposals_in_progress();
        assert_eq!(pending.len(), MAX_SAVEPOINT_DISPOSALS);
        assert_eq!(pending.first().map(|(id, _)| id.as_str()), Some("d00"));
        assert_eq!(pending.last().map(|(id, _)| id.as_str()), Some("later"));
    }

    #[test]
    fn submit_creates_a_created_job_without_job_master() {
        let mut h = Harness::default();
        let response = h.ok(submit(J1, "k1"));
        assert_eq!(response, Response::JobSubmitted { job_id: J1.to_string(), created: true });
        let job = h.job(J1);
        assert_eq!((job.status, job.epoch, job.submitted_index, job.submitted_at_ms), (JobStatus::Created, 0, 1, 100));
        assert_eq!(job.status_history, [StatusChange { status: JobStatus::Created, at_ms: 100, reason: None }]);
        assert_eq!(h.state.idempotency_keys.get("k1").map(String::as_str), Some(J1));
    }

    #[test]
    fn submit_retry_with_known_key_returns_the_first_job() {
        let mut h = Harness::default();
        h.ok(submit(J1, "k1"));
        let mut before = h.state.clone();
        let response = h.ok(submit(J2, "k1"));
        assert_eq!(response, Response::JobSubmitted { job_id: J1.to_string(), created: false });
        before.last_index = h.index;
        assert_eq!(h.state, before);
    }

    #[test]
    fn submit_rejects_a_taken_id_under_another_key() {
        let mut h = Harness::default();
        h.ok(submit(J1, "k1"));
        h.rejects(submit(J1, "k2"), DeterministicError::JobIdTaken { job_id: J1.to_string() });
    }

    #[test]
    fn submit_rejects_invalid_arguments() {
        let mut h = Harness::default();
        let with = |f: fn(&mut Command)| {
            let mut cmd = submit(J1, "k1");
            f(&mut cmd);
            cmd
        };
        let empty = "must not be empty";
        h.rejects(submit("", "k1"), invalid("job_id", empty));
        h.rejects(submit(J1, ""), invalid("idempotency_key", empty));
        let no_name = with(|c| {
            if let Command::SubmitJob { name, .. } = c {
                name.clear()
            }
        });
        h.rejects(no_name, invalid("name", empty));
        let long_name = with(|c| {
            if let Command::SubmitJob { name, .. } = c {
                *name = "n".repeat(257)
            }
        });
        h.rejects(long_name, invalid("name", "is 257 bytes; at most 256 allowed"));
        let no_retention = with(|c| {
            if let Command::SubmitJob { max_retained_checkpoints, .. } = c {
                *max_retained_checkpoints = 0
            }
        });
        h.rejects(no_retention, invalid("max_retained_checkpoints", "is 0; must be between 1 and 1000"));
        let huge_retention = with(|c| {
            if let Command::SubmitJob { max_retained_checkpoints, .. } = c {
                *max_retained_checkpoints = 1001
            }
        });
        h.rejects(huge_retention, invalid("max_retained_checkpoints", "is 1001; must be between 1 and 1000"));
    }

    #[test]
    fn cancel_without_running_job_master_cancels_outright_and_frees_slots() {
        let mut h = Harness::default();
        h.ok(submit(J1, "k1"));
        h.ok(register(TM, 4));
        h.ok(grant(J1));
        h.ok(lease(J1, 1, &[0]));
        let response = h.ok(cancel(J1));
        assert_eq!(response, Response::JobCancelled { job_id: J1.to_string(), status: JobStatus::Canceled });
        let job = h.job(J1);
        assert_eq!(job.status, JobStatus::Canceled);
        assert_eq!(job.result, Some(JobResult { status: JobStatus::Canceled, at_ms: 200, error: None }));
        assert!(h.state.slot_leases.is_empty());
    }

    #[test]
    fn cancel_of_a_job_never_granted_an_epoch_is_immediate_whatever_its_status() {
        let mut h = Harness::default();
        h.ok(submit(J1, "k1"));
        h.ok(transition(J1, 0, JobStatus::Running));
        let response = h.ok(cancel(J1));
        assert_eq!(response, Response::JobCancelled { job_id: J1.to_string(), status: JobStatus::Canceled });
    }

    #[test]
    fn cancel_of_a_running_job_asks_its_job_master() {
        let mut h = Harness::with_running_job();
        let cancelling = Response::JobCancelled { job_id: J1.to_string(), status: JobStatus::Cancelling };
        assert_eq!(h.ok(cancel(J1)), cancelling);
        assert_eq!(h.job(J1).status, JobStatus::Cancelling);
        assert_eq!(h.state.leases_of_job(J1).len(), 2, "the JobMaster still has tasks to stop");
        let history_len = h.job(J1).status_history.len();
        assert_eq!(h.ok(cancel(J1)), cancelling, "a retry reports the current status");
        assert_eq!(h.job(J1).status_history.len(), history_len);
        h.rejects(
            transition(J1, 1, JobStatus::Running),
            DeterministicError::InvalidTransition {
                job_id: J1.to_string(),
                from: JobStatus::Cancelling,
                to: JobStatus::Running,
            },
        );
        h.ok(result(J1, 1, JobStatus::Canceled));
        let canceled = Response::JobCancelled { job_id: J1.to_string(), status: JobStatus::Canceled };
        assert_eq!(h.ok(cancel(J1)), canceled);
    }

    #[test]
    fn cancel_rejects_finished_and_unknown_jobs() {
        let mut h = Harness::with_running_job();
        h.ok(result(J1, 1, JobStatus::Finished));
        h.rejects(cancel(J1), DeterministicError::JobTerminal { job_id: J1.to_string(), status: JobStatus::Finished });
        h.rejects(cancel(J2), not_found(J2));
    }

    #[test]
    fn grant_bumps_the_epoch_and_fences_the_previous_job_master() {
        let mut h = Harness::with_running_job();
        let response = h.ok(grant(J1));
        assert_eq!(response, Response::EpochGranted { job_id: J1.to_string(), epoch: 2 });
        assert_eq!((h.job(J1).epoch, h.job(J1).leader_term), (2, 7));
        h.rejects(allocate(J1, 1), DeterministicError::StaleEpoch { job_id: J1.to_string(), given: 1, current: 2 });
    }

    #[test]
    fn grant_rejects_terminal_and_unknown_jobs() {
        let mut h = Harness::with_running_job();
        h.rejects(grant(J2), not_found(J2));
        h.ok(result(J1, 1, JobStatus::Failed));
        h.rejects(grant(J1), DeterministicError::JobTerminal { job_id: J1.to_string(), status: JobStatus::Failed });
    }

    #[test]
    fn job_master_commands_reject_stale_and_future_epochs() {
        let mut h = Harness::with_running_job();
        h.ok(grant(J1));
        for cmd in epoch_guarded_commands(J1, 1) {
            h.rejects(cmd, DeterministicError::StaleEpoch { job_id: J1.to_string(), given: 1, current: 2 });
        }
        for cmd in epoch_guarded_commands(J1, 3) {
            h.rejects(cmd, DeterministicError::FutureEpoch { job_id: J1.to_string(), given: 3, current: 2 });
        }
        for cmd in epoch_guarded_commands(J2, 2) {
            h.rejects(cmd, not_found(J2));
        }
    }

    #[test]
    fn job_master_commands_reject_terminal_jobs() {
        let mut h = Harness::with_running_job();
        h.ok(result(J1, 1, JobStatus::Failed));
        for cmd in epoch_guarded_commands(J1, 1) {
            h.rejects(cmd, DeterministicError::JobTerminal { job_id: J1.to_string(), status: JobStatus::Failed });
        }
    }

    #[test]
    fn transitions_follow_flinks_state_machine() {
        for from in JobStatus::ALL.into_iter().filter(|s| !s.is_terminal()) {
            for to in JobStatus::ALL {
                let mut h = Harness::default();
                h.ok(submit(J1, "k1"));
                h.ok(grant(J1));
                let job = h.state.jobs.get_mut(J1).unwrap();
                job.record_status(from, 1, None);
                let cmd = transition(J1, 1, to);
                if from == to || from.can_transition_to(to) {
                    assert_eq!(h.ok(cmd), Response::JobStatusChanged { job_id: J1.to_string(), status: to });
                    assert_eq!(h.job(J1).status, to);
                } else {
                    let err = DeterministicError::InvalidTransition { job_id: J1.to_string(), from, to };
                    h.rejects(cmd, err);
                }
            }
        }
    }

    #[test]
    fn transition_to_the_current_status_is_a_no_op() {
        let mut h = Harness::with_running_job();
        let before = h.job(J1).clone();
        h.ok(transition(J1, 1, JobStatus::Running));
        assert_eq!(h.job(J1), &before);
    }

    #[test]
    fn status_history_keeps_only_the_most_recent_changes() {
        let mut h = Harness::with_running_job();
        for _ in 0..MAX_STATUS_HISTORY {
            h.ok(transition(J1, 1, JobStatus::Restarting));
            h.ok(transition(J1, 1, JobStatus::Running));
        }
        let history = &h.job(J1).status_history;
        assert_eq!(history.len(), MAX_STATUS_HISTORY);
        assert_eq!(history.back().map(|c| c.status), Some(JobStatus::Running));
    }

    #[test]
    fn register_adds_a_task_manager_with_free_slots() {
        let mut h = Harness::default();
        let response = h.ok(register(TM, 2));
        assert_eq!(response, Response::TaskManagerRegistered { tm_id: TM.to_string(), released: vec![] });
        assert_eq!(h.state.free_slots(), slots(&[0, 1]));
    }

    #[test]
    fn re_registering_with_fewer_slots_releases_the_vanished_ones() {
        let mut h = Harness::with_running_job();
        h.ok(lease(J1, 1, &[3]));
        let mut cmd = register(TM, 1);
        if let Command::RegisterTaskManager { at_ms, address, .. } = &mut cmd {
            *at_ms = 990;
            *address = "10.0.0.2:6122".to_string();
        }
        let response = h.ok(cmd);
        assert_eq!(response, Response::TaskManagerRegistered { tm_id: TM.to_string(), released: slots(&[1, 3]) });
        let tm = &h.state.task_managers[TM];
        assert_eq!(
            (tm.slots, tm.registered_at_ms, tm.updated_at_ms, tm.address.as_str()),
            (1, 50, 990, "10.0.0.2:6122")
        );
        assert_eq!(h.state.slot_leases.keys().cloned().collect::<Vec<_>>(), slots(&[0]));
    }

    #[test]
    fn register_rejects_invalid_arguments() {
        let mut h = Harness::default();
        h.rejects(register(TM, 0), invalid("slots", "is 0; must be between 1 and 4096"));
        h.rejects(register(TM, 4097), invalid("slots", "is 4097; must be between 1 and 4096"));
        h.rejects(register("", 1), invalid("tm_id", "must not be empty"));
        let mut no_address = register(TM, 1);
        if let Command::RegisterTaskManager { address, .. } = &mut no_address {
            address.clear();
        }
        h.rejects(no_address, invalid("address", "must not be empty"));
    }

    #[test]
    fn unregister_releases_every_lease_of_the_task_manager() {
        let mut h = Harness::with_running_job();
        h.ok(register("tm-2", 1));
        h.ok(Command::LeaseSlots { job_id: J1.to_string(), epoch: 1, slots: vec![SlotId::new("tm-2", 0)], at_ms: 1 });
        let response = h.ok(unregister(TM));
        let released = slots(&[0, 1]).into_iter().map(|s| (s, J1.to_string())).collect();
        assert_eq!(response, Response::TaskManagerUnregistered { tm_id: TM.to_string(), released });
        assert!(!h.state.task_managers.contains_key(TM));
        assert_eq!(h.state.slot_leases.keys().cloned().collect::<Vec<_>>(), [SlotId::new("tm-2", 0)]);
        h.rejects(unregister(TM), DeterministicError::TaskManagerNotFound { tm_id: TM.to_string() });
    }

    #[test]
    fn lease_binds_free_slots_to_the_job_at_its_epoch() {
        let mut h = Harness::with_running_job();
        assert_eq!(h.ok(lease(J1, 1, &[2])), Response::SlotsLeased { job_id: J1.to_string(), epoch: 1 });
        let leases = h.state.leases_of_job(J1);
        assert_eq!(leases.iter().map(|(s, _)| (*s).clone()).collect::<Vec<_>>(), slots(&[0, 1, 2]));
        assert_eq!(h.state.free_slots(), slots(&[3]));
    }

    #[test]
    fn a_new_job_master_adopts_its_predecessors_leases() {
        let mut h = Harness::with_running_job();
        h.ok(grant(J1));
        h.ok(lease(J1, 2, &[0]));
        assert_eq!(h.state.slot_leases[&SlotId::new(TM, 0)].epoch, 2);
        assert_eq!(h.state.slot_leases[&SlotId::new(TM, 1)].epoch, 1);
    }

    #[test]
    fn lease_is_all_or_nothing_when_a_slot_belongs_to_another_job() {
        let mut h = Harness::with_running_job();
        h.ok(submit(J2, "k2"));
        h.ok(grant(J2));
        let err = DeterministicError::SlotUnavailable { slot: SlotId::new(TM, 1), held_by: J1.to_string() };
        h.rejects(lease(J2, 1, &[2, 1]), err);
    }

    #[test]
    fn lease_rejects_unknown_slots_and_malformed_lists() {
        let mut h = Harness::with_running_job();
        h.rejects(lease(J1, 1, &[2, 4]), DeterministicError::SlotOutOfRange { slot: SlotId::new(TM, 4), slots: 4 });
        let unknown =
            Command::LeaseSlots { job_id: J1.to_string(), epoch: 1, slots: vec![SlotId::new("x", 0)], at_ms: 1 };
        h.rejects(unknown, DeterministicError::TaskManagerNotFound { tm_id: "x".to_string() });
        h.rejects(lease(J1, 1, &[2, 2]), invalid("slots", "slot tm-1#2 appears more than once"));
        h.rejects(lease(J1, 1, &[]), invalid("slots", "must name at least one slot"));
    }

    #[test]
    fn release_frees_the_jobs_slots() {
        let mut h = Harness::with_running_job();
        let response = h.ok(release(J1, 1, &[1]));
        assert_eq!(response, Response::SlotsReleased { job_id: J1.to_string(), released: slots(&[1]) });
        assert_eq!(h.state.free_slots(), slots(&[1, 2, 3]));
    }

    #[test]
    fn release_is_all_or_nothing_when_a_slot_is_not_held() {
        let mut h = Harness::with_running_job();
        let err = DeterministicError::SlotNotHeld { slot: SlotId::new(TM, 2), job_id: J1.to_string() };
        h.rejects(release(J1, 1, &[0, 2]), err);
        h.rejects(release(J1, 1, &[0, 0]), invalid("slots", "slot tm-1#0 appears more than once"));
    }

    #[test]
    fn checkpoint_ids_are_allocated_in_sequence() {
        let mut h = Harness::with_running_job();
        for expected in 1..=3 {
            let response = h.ok(allocate(J1, 1));
            assert_eq!(response, Response::CheckpointIdAllocated { job_id: J1.to_string(), checkpoint_id: expected });
        }
        assert_eq!(h.job(J1).last_checkpoint_id, 3);
    }

    #[test]
    fn completed_checkpoints_are_retained_up_to_the_limit() {
        let mut h = Harness::with_running_job();
        for _ in 0..4 {
            h.ok(allocate(J1, 1));
        }
        h.ok(complete(J1, 1, 1));
        h.ok(complete(J1, 1, 3));
        let response = h.ok(complete(J1, 1, 4));
        let expected =
            Response::CheckpointCompleted { job_id: J1.to_string(), checkpoint_id: 4, discarded: vec![checkpoint(1)] };
        assert_eq!(response, expected);
        let ids: Vec<CheckpointId> = h.job(J1).checkpoints.iter().map(|c| c.id).collect();
        assert_eq!(ids, [3, 4]);
        assert_eq!(h.state.latest_checkpoint(J1), Some(&checkpoint(4)));
    }

    #[test]
    fn complete_rejects_unallocated_and_superseded_checkpoints() {
        let mut h = Harness::with_running_job();
        h.ok(allocate(J1, 1));
        h.ok(allocate(J1, 1));
        let not_allocated = |checkpoint_id| DeterministicError::CheckpointNotAllocated {
            job_id: J1.to_string(),
            checkpoint_id,
            last_allocated: 2,
        };
        h.rejects(complete(J1, 1, 3), not_allocated(3));
        h.rejects(complete(J1, 1, 0), not_allocated(0));
        h.ok(complete(J1, 1, 2));
        let out_of_order =
            DeterministicError::CheckpointOutOfOrder { job_id: J1.to_string(), checkpoint_id: 1, latest_completed: 2 };
        h.rejects(complete(J1, 1, 1), out_of_order);
        let retried =
            DeterministicError::CheckpointOutOfOrder { job_id: J1.to_string(), checkpoint_id: 2, latest_completed: 2 };
        h.rejects(complete(J1, 1, 2), retried);
    }

    #[test]
    fn savepoints_are_kept_regardless_of_retention() {
        let mut h = Harness::with_running_job();
        for id in 1..=4 {
            h.ok(allocate(J1, 1));
            let response = h.ok(savepoint(J1, 1, id));
            assert_eq!(response, Response::SavepointRecorded { job_id: J1.to_string(), checkpoint_id: id });
        }
        assert_eq!(h.job(J1).savepoints.len(), 4);
        let err =
            DeterministicError::CheckpointNotAllocated { job_id: J1.to_string(), checkpoint_id: 5, last_allocated: 4 };
        h.rejects(savepoint(J1, 1, 5), err);
    }

    #[test]
    fn job_result_ends_the_job_and_frees_its_slots() {
        let mut h = Harness::with_running_job();
        let mut cmd = result(J1, 1, JobStatus::Failed);
        if let Command::RecordJobResult { error, .. } = &mut cmd {
            *error = Some("oom".to_string());
        }
        assert_eq!(h.ok(cmd), Response::JobResultRecorded { job_id: J1.to_string(), status: JobStatus::Failed });
        let job = h.job(J1);
        assert_eq!(
            job.result,
            Some(JobResult { status: JobStatus::Failed, at_ms: 800, error: Some("oom".to_string()) })
        );
        assert_eq!(job.status_history.back().and_then(|c| c.reason.as_deref()), Some("oom"));
        assert!(h.state.slot_leases.is_empty());
        assert_eq!(h.state.free_slots().len(), 4);
    }

    #[test]
    fn job_result_is_idempotent_but_never_changes() {
        let mut h = Harness::with_running_job();
        h.ok(result(J1, 1, JobStatus::Finished));
        let before = h.job(J1).clone();
        assert_eq!(
            h.ok(result(J1, 1, JobStatus::Finished)),
            Response::JobResultRecorded { job_id: J1.to_string(), status: JobStatus::Finished }
        );
        assert_eq!(h.job(J1), &before);
        let err = DeterministicError::JobTerminal { job_id: J1.to_string(), status: JobStatus::Finished };
        h.rejects(result(J1, 1, JobStatus::Failed), err);
        h.rejects(
            result(J1, 0, JobStatus::Finished),
            DeterministicError::StaleEpoch { job_id: J1.to_string(), given: 0, current: 1 },
        );
    }

    #[test]
    fn job_result_must_be_terminal() {
        let mut h = Harness::with_running_job();
        h.rejects(
            result(J1, 1, JobStatus::Running),
            DeterministicError::NotTerminalStatus { status: JobStatus::Running },
        );
    }

    #[test]
    fn metadata_is_stored_and_overwritten_even_on_ended_jobs() {
        let mut h = Harness::with_running_job();
        h.ok(result(J1, 1, JobStatus::Finished));
        assert_eq!(
            h.ok(put(J1, "owner", vec![1])),
            Response::MetadataPut { job_id: J1.to_string(), key: "owner".to_string() }
        );
        h.ok(put(J1, "owner", vec![2]));
        assert_eq!(h.job(J1).metadata.get("owner"), Some(&vec![2]));
        h.rejects(put(J2, "owner", vec![]), not_found(J2));
    }

    #[test]
    fn metadata_limits_are_enforced() {
        let mut h = Harness::with_running_job();
        h.rejects(put(J1, "", vec![]), invalid("key", "must not be empty"));
        h.rejects(put(J1, &"k".repeat(257), vec![]), invalid("key", "is 257 bytes; at most 256 allowed"));
        let too_big = vec![0; MAX_METADATA_VALUE_BYTES + 1];
        h.rejects(put(J1, "k", too_big), invalid("value", "is 65537 bytes; at most 65536 allowed"));
        for i in 0..MAX_METADATA_KEYS_PER_JOB {
            h.ok(put(J1, &format!("k{i}"), vec![]));
        }
        let full = format!("job {J1} already has 1024 metadata keys; overwrite one");
        h.rejects(put(J1, "one-more", vec![]), invalid("key", &full));
        h.ok(put(J1, "k0", vec![1]));
    }

    #[test]
    fn a_failed_command_still_advances_last_index() {
        let mut state = ClusterState::default();
        let err = apply(&mut state, 42, cancel(J1)).unwrap_err();
        assert_eq!(err.code(), "job_not_found");
        assert_eq!(state, ClusterState { last_index: 42, ..ClusterState::default() });
    }

    #[test]
    fn snapshot_round_trips() {
        let h = Harness::with_running_job();
        assert_eq!(decode::<ClusterState>(&encode(&h.state)), Ok(h.state.clone()));
    }

    /// Pins the snapshot encoding. Snapshots are bincode (fields in declaration order, without names), so adding,
    /// removing or reordering a field of [`ClusterState`] or of anything it holds changes the format: bump
    /// [`STORAGE_FORMAT_VERSION`](crate::raft::log_store::STORAGE_FORMAT_VERSION) along with the bytes here, so that a
    /// replica refuses a data dir of another format instead of misreading it.
    #[test]
    fn snapshot_format_is_pinned_to_the_storage_version() {
        let mut h = Harness::default();
        h.ok(submit(J1, "k1"));
        h.ok(register(TM, 1));
        h.ok(Command::RequestSavepointDisposal {
            request_id: "d1".into(),
            path: "/sp/1".into(),
            job_id: Some(J1.into()),
            at_ms: 5,
        });
        h.ok(Command::ResolveSavepointDisposal {
            request_id: "d1".into(),
            outcome: DisposalOutcome::Disposed,
            at_ms: 6,
        });
        h.ok(Command::RecordLeaderChange { term: 2, leader: 3, at_ms: 7, leaderless_ms: Some(8) });
        let hex: String = encode(&h.state).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(crate::raft::log_store::STORAGE_FORMAT_VERSION, 3, "the snapshot format changed: see above");
        let expected = concat!(
            "01203030303030303030303030303030303030303030303030303030303030303031203030303030303030303030303030303030",
            "30303030303030303030303030303109776f7264636f756e74026b31027b7d010000646401020000000101640000000000000001",
            "026b312030303030303030303030303030303030303030303030303030303030303030310104746d2d3104746d2d310d31302e30",
            "2e302e313a3631323201003232000501026431052f73702f31012030303030303030303030303030303030303030303030303030",
            "3030303030303105030100010601020300070108",
        );
        assert_eq!(hex, expected, "the snapshot format changed: bump STORAGE_FORMAT_VERSION");
    }

    #[test]
    fn the_digest_tells_states_apart_and_agrees_on_equal_ones() {
        let a = Harness::with_running_job();
        let b = Harness::with_running_job();
        assert_eq!(a.state.digest(), b.state.digest());
        let mut c = Harness::with_running_job();
        c.ok(Command::RecordLeaderChange { term: 9, leader: 1, at_ms: 1, leaderless_ms: None });
        assert_ne!(a.state.digest(), c.state.digest());
    }

    #[test]
    fn leader_changes_keep_increasing_terms_and_a_bounded_history() {
        let mut h = Harness::with_running_job();
        let record = |term, leader| Command::RecordLeaderChange { term, leader, at_ms: 100, leaderless_ms: Some(40) };
        h.ok(record(3, 1));
        h.ok(record(5, 2));
        let change = h.state.leader_changes.back().unwrap().clone();
        assert_eq!((change.term, change.leader, change.previous), (5, 2, Some(1)));
        for stale in [5, 4] {
            // A deposed leader's term must not rewrite the history.
            let reason = format!("term {stale} is not after the last recorded leader change (term 5)");
            h.rejects(record(stale, 3), DeterministicError::InvalidArgument { field: "term".to_string(), reason });
        }
        for term in 6..6 + MAX_LEADER_CHANGES as u64 {
            h.ok(record(term, term % 3 + 1));
        }
        assert_eq!(h.state.leader_changes.len(), MAX_LEADER_CHANGES);
        assert_eq!(h.state.leader_changes.front().unwrap().term, 6, "the oldest are dropped first");
        h.state.check_invariants().unwrap();
    }

    #[test]
    fn check_invariants_catches_corruption() {
        let mut h = Harness::with_running_job();
        h.state.jobs.get_mut(J1).unwrap().status = JobStatus::Finished;
        assert!(h.state.check_invariants().is_err());
        let mut h = Harness::with_running_job();
        h.state.task_managers.clear();
        assert!(h.state.check_invariants().is_err());
        let mut h = Harness::with_running_job();
        h.state.idempotency_keys.insert("other".to_string(), J1.to_string());
        assert!(h.state.check_invariants().is_err());
    }
}

#[cfg(test)]
mod properties {
    //! Property tests: random command sequences over a deliberately tiny universe (3 jobs, 3 idempotency keys, 2
    //! TaskManagers with at most 4 slots, epochs 0..4, checkpoint ids 0..8), so that commands collide constantly
    //! and exercise both the success and the error path of every command (see [`commands`] for how success is made
    //! likely).

    use super::*;
    use crate::raft::command::{decode, encode};
    use proptest::prelude::*;
    use proptest::sample::select;

    const JOB_IDS: [&str; 3] =
        ["00000000000000000000000000000000", "11111111111111111111111111111111", "22222222222222222222222222222222"];
    const KEYS: [&str; 3] = ["k0", "k1", "k2"];
    const TMS: [&str; 2] = ["tm-a", "tm-b"];

    fn config() -> ProptestConfig {
        // No failure persistence: the regression files would land next to this source file, in someone else's tree.
        ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() }
    }

    fn job_id() -> impl Strategy<Value = JobId> {
        select(&JOB_IDS[..]).prop_map(String::from)
    }

    /// A job id and an idempotency key: mostly the key that goes with the id (so that all three jobs get created),
    /// sometimes another one (a retry with a fresh id, or an id clash).
    fn submission_ids() -> impl Strategy<Value = (JobId, &'static str)> {
        (0..JOB_IDS.len(), 0..KEYS.len(), prop::bool::weighted(0.8)).prop_map(|(job, key, matching)| {
            let key = if matching { job } else { key };
            (JOB_IDS.get(job).copied().unwrap_or_default().to_string(), KEYS.get(key).copied().unwrap_or_default())
        })
    }

    fn job_id_pair() -> impl Strategy<Value = (JobId, JobId)> {
        (job_id(), job_id())
    }

    fn tm_id() -> impl Strategy<Value = TaskManagerId> {
        select(&TMS[..]).prop_map(String::from)
    }

    fn slot_id() -> impl Strategy<Value = SlotId> {
        (tm_id(), 0u32..4).prop_map(|(tm, index)| SlotId { tm, index })
    }

    fn slot_list() -> impl Strategy<Value = Vec<SlotId>> {
        // Mostly well-formed; sometimes empty or with duplicates.
        prop_oneof![9 => prop::collection::vec(slot_id(), 1..3), 1 => prop::collection::vec(slot_id(), 0..4)]
    }

    fn epoch() -> impl Strategy<Value = Epoch> {
        0u64..4
    }

    fn status() -> impl Strategy<Value = JobStatus> {
        select(JobStatus::ALL.to_vec())
    }

    /// Mostly terminal, so that results get recorded; sometimes not, to exercise the rejection.
    fn result_status() -> impl Strategy<Value = JobStatus> {
        prop_oneof![3 => select(vec![JobStatus::Failed, JobStatus::Canceled, JobStatus::Finished]), 1 => status()]
    }

    fn name() -> impl Strategy<Value = &'static str> {
        prop_oneof![9 => Just("wordcount"), 1 => Just("")]
    }

    fn retention() -> impl Strategy<Value = u32> {
        prop_oneof![9 => 1u32..4, 1 => Just(0)]
    }

    fn at_ms() -> impl Strategy<Value = u64> {
        0u64..10_000
    }

    fn checkpoint() -> impl Strategy<Value = CompletedCheckpoint> {
        (0u64..8, at_ms(), 0u64..1000).prop_map(|(id, at, size)| CompletedCheckpoint {
            id,
            trigger_at_ms: at,
            completed_at_ms: at + 1,
            external_path: format!("s3://ckpt/{id}"),
            state_size_bytes: size,
        })
    }

    fn submit_command() -> impl Strategy<Value = Command> {
        (submission_ids(), name(), retention(), at_ms()).prop_map(
            |((job_id, key), name, max_retained_checkpoints, submitted_at_ms)| Command::SubmitJob {
                job_id,
                idempotency_key: key.to_string(),
                name: name.to_string(),
                spec_json: "{}".to_string(),
                max_retained_checkpoints,
                submitted_at_ms,
            },
        )
    }

    fn register_command() -> impl Strategy<Value = Command> {
        let slots = prop_oneof![9 => 1u32..5, 1 => Just(0)];
        (tm_id(), slots, at_ms()).prop_map(|(tm_id, slots, at_ms)| Command::RegisterTaskManager {
            tm_id,
            address: "10.0.0.1:6122".to_string(),
            slots,
            zone: None,
            at_ms,
        })
    }

    fn command() -> impl Strategy<Value = Command> {
        prop_oneof![
            3 => submit_command(),
            1 => (job_id(), at_ms()).prop_map(|(job_id, at_ms)| Command::CancelJob { job_id, at_ms }),
            3 => (job_id(), epoch(), status(), at_ms(), prop::option::of(Just("why".to_string()))).prop_map(
                |(job_id, epoch, to, at_ms, reason)| Command::TransitionJobStatus { job_id, epoch, to, at_ms, reason }
            ),
            3 => (job_id(), 0u64..5, at_ms())
                .prop_map(|(job_id, leader_term, at_ms)| Command::GrantJobMasterEpoch { job_id, leader_term, at_ms }),
            2 => register_command(),
            1 => (tm_id(), at_ms()).prop_map(|(tm_id, at_ms)| Command::UnregisterTaskManager {
                tm_id,
                at_ms,
                reason: "gone".to_string(),
            }),
            4 => (job_id(), epoch(), slot_list(), at_ms())
                .prop_map(|(job_id, epoch, slots, at_ms)| Command::LeaseSlots { job_id, epoch, slots, at_ms }),
            2 => (job_id(), epoch(), slot_list(), at_ms())
                .prop_map(|(job_id, epoch, slots, at_ms)| Command::ReleaseSlots { job_id, epoch, slots, at_ms }),
            3 => (job_id(), epoch(), at_ms())
                .prop_map(|(job_id, epoch, at_ms)| Command::AllocateCheckpointId { job_id, epoch, at_ms }),
            3 => (job_id(), epoch(), checkpoint())
                .prop_map(|(job_id, epoch, checkpoint)| Command::CompleteCheckpoint { job_id, epoch, checkpoint }),
            1 => (job_id(), epoch(), 0u64..8, at_ms()).prop_map(|(job_id, epoch, checkpoint_id, at_ms)| {
                let savepoint = Savepoint { checkpoint_id, path: "s3://sp".to_string(), at_ms };
                Command::RecordSavepoint { job_id, epoch, savepoint }
            }),
            1 => (job_id(), epoch(), result_status(), at_ms()).prop_map(|(job_id, epoch, status, at_ms)| {
                Command::RecordJobResult { job_id, epoch, status, at_ms, error: None }
            }),
            1 => (job_id(), select(vec!["", "a", "b"]), prop::collection::vec(any::<u8>(), 0..8), at_ms()).prop_map(
                |(job_id, key, value, at_ms)| Command::PutJobMetadata { job_id, key: key.to_string(), value, at_ms }
            ),
            2 => (job_id(), epoch(), at_ms(), any::<bool>()).prop_map(|(job_id, epoch, at_ms, restarting)| {
                Command::RecordJobFailure { job_id, epoch, at_ms, error: "task failed".to_string(), restarting }
            }),
            2 => (job_id(), epoch(), 0u32..4, slot_list(), at_ms()).prop_map(|(job_id, epoch, attempt, slots, at_ms)| {
                let components = vec![DeployedComponent { vertices: vec!["v".to_string()], slots }];
                let checkpoint_dir = "/ck".to_string();
                Command::RecordDeployment { job_id, epoch, attempt, components, restored_from: None, checkpoint_dir, at_ms }
            }),
            1 => (job_id(), select(vec!["r1", "r2", ""]), any::<bool>(), at_ms()).prop_map(
                |(job_id, request_id, terminate, at_ms)| Command::RequestSavepoint {
                    job_id,
                    request_id: request_id.to_string(),
                    target_dir: None,
                    terminate,
                    at_ms,
                }
            ),
            1 => (job_id(), epoch(), select(vec!["r1", "r2"]), 0u64..8, any::<bool>(), at_ms()).prop_map(
                |(job_id, epoch, request_id, checkpoint_id, ok, at_ms)| {
                    let outcome = if ok {
                        SavepointOutcome::Completed {
                            savepoint: Savepoint { checkpoint_id, path: "/sp".to_string(), at_ms },
                        }
                    } else {
                        SavepointOutcome::Failed { error: "expired".to_string() }
                    };
                    Command::ResolveSavepointRequest { job_id, epoch, request_id: request_id.to_string(), outcome, at_ms }
                }
            ),
            1 => (select(vec!["d1", "d2", ""]), select(vec!["/sp/1", ""]), prop::option::of(job_id()), at_ms()).prop_map(
                |(request_id, path, job_id, at_ms)| Command::RequestSavepointDisposal {
                    request_id: request_id.to_string(),
                    path: path.to_string(),
                    job_id,
                    at_ms,
                }
            ),
            1 => (select(vec!["d1", "d2"]), any::<bool>(), at_ms()).prop_map(|(request_id, ok, at_ms)| {
                let outcome =
                    if ok { DisposalOutcome::Disposed } else { DisposalOutcome::Failed { message: "denied".to_string() } };
                Command::ResolveSavepointDisposal { request_id: request_id.to_string(), outcome, at_ms }
            }),
            1 => (0u64..6, 1u64..4, at_ms(), prop::option::of(0u64..2000)).prop_map(
                |(term, leader, at_ms, leaderless_ms)| Command::RecordLeaderChange { term, leader, at_ms, leaderless_ms }
            ),
        ]
    }

    /// Command sequences. Purely random epochs, checkpoint ids and released slots would almost never match the
    /// job's, leaving the success paths of JobMaster commands untested; so most commands are aimed, against a
    /// simulation of the sequence so far, at the job's current epoch, its latest allocated checkpoint and the slots
    /// it holds. The rest keep their random values and exercise the fencing and ordering errors. Shrinking works on
    /// the unaimed form.
    fn commands() -> impl Strategy<Value = Vec<Command>> {
        // A few submissions and registrations up front, so that most commands find a job and slots to act on.
        let setup = (prop::collection::vec(submit_command(), 2..6), prop::collection::vec(register_command(), 0..3));
        let aimed = prop::bool::weighted(0.8);
        let body = prop::collection::vec((command(), aimed, aimed), 1..60);
        (setup, body).prop_map(|((submits, registers), body)| {
            let setup = submits.into_iter().chain(registers).map(|cmd| (cmd, false, false));
            aim_commands(setup.chain(body).collect())
        })
    }

    fn aim_commands(picks: Vec<(Command, bool, bool)>) -> Vec<Command> {
        let mut simulation = ClusterState::default();
        let mut cmds = Vec::with_capacity(picks.len());
        for (index, (mut cmd, aim_epoch, aim_target)) in (1..).zip(picks) {
            if let Some(job) = cmd.job_id().and_then(|id| simulation.job(id)) {
                let (epoch, last_checkpoint_id) = (job.epoch, job.last_checkpoint_id);
                let held: Vec<SlotId> = simulation.leases_of_job(&job.id).into_iter().map(|(s, _)| s.clone()).collect();
                let free = simulation.free_slots();
                if let (true, Some(e)) = (aim_epoch, epoch_mut(&mut cmd)) {
                    *e = epoch;
                }
                if let (true, Some(id)) = (aim_target, checkpoint_id_mut(&mut cmd)) {
                    *id = last_checkpoint_id;
                }
                // Keep the generated list's length (at least one), so that partial leases and releases happen too.
                let next_attempt = job.deployment.as_ref().map_or(1, |d| d.attempt + 1);
                if let (true, Command::RecordDeployment { attempt, components, .. }) = (aim_target, &mut cmd) {
                    *attempt = next_attempt;
                    components[0].slots = held.clone();
                }
                if let (true, Command::ReleaseSlots { slots, .. }) = (aim_target && !held.is_empty(), &mut cmd) {
                    *slots = held.into_iter().take(slots.len().max(1)).collect();
                } else if let (true, Command::LeaseSlots { slots, .. }) = (aim_target && !free.is_empty(), &mut cmd) {
                    *slots = free.into_iter().take(slots.len().max(1)).collect();
                }
            }
            let _ = simulation.apply(index, cmd.clone());
            cmds.push(cmd);
        }
        cmds
    }

    fn epoch_mut(cmd: &mut Command) -> Option<&mut Epoch> {
        match cmd {
            Command::TransitionJobStatus { epoch, .. }
            | Command::LeaseSlots { epoch, .. }
            | Command::ReleaseSlots { epoch, .. }
            | Command::AllocateCheckpointId { epoch, .. }
            | Command::CompleteCheckpoint { epoch, .. }
            | Command::RecordSavepoint { epoch, .. }
            | Command::RecordJobResult { epoch, .. }
            | Command::RecordJobFailure { epoch, .. }
            | Command::RecordDeployment { epoch, .. }
            | Command::ResolveSavepointRequest { epoch, .. } => Some(epoch),
            _ => None,
        }
    }

    fn checkpoint_id_mut(cmd: &mut Command) -> Option<&mut CheckpointId> {
        match cmd {
            Command::CompleteCheckpoint { checkpoint, .. } => Some(&mut checkpoint.id),
            Command::RecordSavepoint { savepoint, .. } => Some(&mut savepoint.checkpoint_id),
            Command::ResolveSavepointRequest { outcome: SavepointOutcome::Completed { savepoint }, .. } => {
                Some(&mut savepoint.checkpoint_id)
            }
            _ => None,
        }
    }

    /// Applies `cmds` to a fresh state at indexes 1, 2, ..., calling `check(before, cmd, result, after)` after each.
    fn replay(
        cmds: &[Command],
        mut check: impl FnMut(&ClusterState, &Command, &Result<Response, DeterministicError>, &ClusterState),
    ) -> (ClusterState, Vec<Result<Response, DeterministicError>>) {
        let mut state = ClusterState::default();
        let mut results = Vec::new();
        for (index, cmd) in (1..).zip(cmds) {
            let before = state.clone();
            let result = state.apply(index, cmd.clone());
            check(&before, cmd, &result, &state);
            results.push(result);
        }
        (state, results)
    }

    /// Whether `cmd` is one of the ways a lease held by `holder` may legitimately end.
    fn may_end_lease(cmd: &Command, slot: &SlotId, holder: &str) -> bool {
        match cmd {
            Command::ReleaseSlots { job_id, slots, .. } => job_id == holder && slots.contains(slot),
            Command::UnregisterTaskManager { tm_id, .. } => tm_id == &slot.tm,
            Command::RegisterTaskManager { tm_id, slots, .. } => tm_id == &slot.tm && slot.index >= *slots,
            Command::CancelJob { job_id, .. } | Command::RecordJobResult { job_id, .. } => job_id == holder,
            _ => false,
        }
    }

    /// What must never go backwards for a job.
    #[derive(Clone, Copy)]
    struct Watermarks {
        epoch: Epoch,
        last_checkpoint_id: CheckpointId,
        latest_completed: CheckpointId,
        terminal: Option<JobStatus>,
    }

    fn watermarks(job: &Job) -> Watermarks {
        Watermarks {
            epoch: job.epoch,
            last_checkpoint_id: job.last_checkpoint_id,
            latest_completed: job.checkpoints.back().map_or(0, |c| c.id),
            terminal: job.status.is_terminal().then_some(job.status),
        }
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn invariants_hold_after_every_apply(cmds in commands()) {
            replay(&cmds, |_, cmd, _, after| {
                if let Err(violation) = after.check_invariants() {
                    panic!("after {cmd:?}: {violation}");
                }
            });
        }

        #[test]
        fn a_failed_apply_changes_nothing_but_last_index(cmds in commands()) {
            replay(&cmds, |before, cmd, result, after| {
                if result.is_err() {
                    let expected = ClusterState { last_index: after.last_index, ..before.clone() };
                    assert_eq!(after, &expected, "{cmd:?} failed with {result:?} but changed the state");
                }
            });
        }

        #[test]
        fn apply_is_deterministic(cmds in commands()) {
            let (state_a, results_a) = replay(&cmds, |_, _, _, _| {});
            let (state_b, results_b) = replay(&cmds, |_, _, _, _| {});
            prop_assert_eq!(&results_a, &results_b);
            prop_assert_eq!(encode(&state_a), encode(&state_b));
            prop_assert_eq!(state_a, state_b);
        }

        #[test]
        fn snapshots_round_trip(cmds in commands(), split in 0usize..60) {
            // Restoring from a snapshot mid-log and applying the rest must land where applying everything does.
            let split = split.min(cmds.len());
            let (head, tail) = cmds.split_at(split);
            let (snapshot, _) = replay(head, |_, _, _, _| {});
            let mut restored: ClusterState = decode(&encode(&snapshot)).map_err(TestCaseError::fail)?;
            prop_assert_eq!(&restored, &snapshot);
            for (index, cmd) in (restored.last_index + 1..).zip(tail) {
                let _ = restored.apply(index, cmd.clone());
            }
            let (full, _) = replay(&cmds, |_, _, _, _| {});
            prop_assert_eq!(&decode::<ClusterState>(&encode(&full)).map_err(TestCaseError::fail)?, &full);
            prop_assert_eq!(restored, full);
        }

        #[test]
        fn epochs_checkpoints_and_results_never_go_backwards(cmds in commands()) {
            let mut seen: BTreeMap<JobId, Watermarks> = BTreeMap::new();
            replay(&cmds, |_, cmd, _, after| {
                for (id, old) in &seen {
                    let Some(job) = after.jobs.get(id) else { panic!("job {id} vanished after {cmd:?}") };
                    let new = watermarks(job);
                    assert!(new.epoch >= old.epoch, "epoch of {id} went back after {cmd:?}");
                    assert!(new.last_checkpoint_id >= old.last_checkpoint_id, "checkpoint id of {id} went back");
                    assert!(new.latest_completed >= old.latest_completed, "completed checkpoint of {id} went back");
                    if old.terminal.is_some() {
                        assert_eq!(new.terminal, old.terminal, "terminal job {id} changed after {cmd:?}");
                    }
                }
                seen = after.jobs.iter().map(|(id, job)| (id.clone(), watermarks(job))).collect();
            });
        }

        #[test]
        fn a_batch_applies_like_its_commands_one_by_one(cmds in commands(), sizes in prop::collection::vec(0usize..5, 1..40)) {
            // Group the sequence into batches of the given sizes (0: a lone command, not batched).
            let mut batched = ClusterState::default();
            let mut single = ClusterState::default();
            let mut rest = cmds.into_iter();
            for (index, size) in (1..).zip(sizes.into_iter().cycle()) {
                let group: Vec<Command> = rest.by_ref().take(size.max(1)).collect();
                if group.is_empty() {
                    break;
                }
                let one_by_one: Vec<_> = group.iter().cloned().map(|c| single.apply(index, c)).collect();
                if size == 0 {
                    let alone = batched.apply(index, group.into_iter().next().unwrap());
                    prop_assert_eq!(vec![alone], one_by_one);
                } else {
                    let reply = batched.apply(index, Command::Batch { commands: group });
                    prop_assert_eq!(reply, Ok(Response::Batch { results: one_by_one }));
                }
                prop_assert_eq!(&batched, &single);
                batched.check_invariants().map_err(TestCaseError::fail)?;
            }
            // A batch inside a batch is refused, and only that part.
            let nested = Command::Batch { commands: vec![Command::Batch { commands: vec![] }] };
            let Ok(Response::Batch { results }) = batched.apply(u64::MAX, nested) else { panic!("a batch always applies") };
            let refused = matches!(results.as_slice(), [Err(DeterministicError::InvalidArgument { .. })]);
            prop_assert!(refused, "nested batch: {:?}", results);
        }

        #[test]
        fn leases_change_hands_only_through_release_paths(cmds in commands()) {
            replay(&cmds, |before, cmd, _, after| {
                for (slot, old) in &before.slot_leases {
                    match after.slot_leases.get(slot) {
                        Some(new) if new.job_id == old.job_id => {}
                        Some(new) => panic!("slot {slot} moved from {} to {} by {cmd:?}", old.job_id, new.job_id),
                        None => assert!(may_end_lease(cmd, slot, &old.job_id), "slot {slot} lost by {cmd:?}"),
                    }
                }
                for (slot, new) in &after.slot_leases {
                    if before.slot_leases.get(slot) != Some(new) {
                        let leased_here = matches!(cmd, Command::LeaseSlots { job_id, epoch, slots, .. }
                            if *job_id == new.job_id && *epoch == new.epoch && slots.contains(slot));
                        assert!(leased_here, "lease on {slot} appeared or changed by {cmd:?}");
                    }
                }
            });
        }

        #[test]
        fn resubmitting_a_key_yields_one_job(prefix in commands(), key in select(&KEYS[..]), ids in job_id_pair()) {
            let (mut state, _) = replay(&prefix, |_, _, _, _| {});
            let next = state.last_index + 1;
            let resubmit = |job_id: JobId| Command::SubmitJob {
                job_id,
                idempotency_key: key.to_string(),
                name: "wordcount".to_string(),
                spec_json: "{}".to_string(),
                max_retained_checkpoints: 1,
                submitted_at_ms: 1,
            };
            let known = state.idempotency_keys.get(key).cloned();
            let first = state.apply(next, resubmit(ids.0.clone()));
            let after_first = state.clone();
            let second = state.apply(next + 1, resubmit(ids.1.clone()));
            let jobs_with_key = state.jobs.values().filter(|job| job.idempotency_key == key).count();
            prop_assert!(jobs_with_key <= 1);
            if let Ok(Response::JobSubmitted { job_id, created }) = first {
                prop_assert_eq!(created, known.is_none());
                prop_assert_eq!(jobs_with_key, 1);
                prop_assert_eq!(second, Ok(Response::JobSubmitted { job_id, created: false }));
                prop_assert_eq!(state, ClusterState { last_index: next + 1, ..after_first });
            }
        }
    }
}
