//! One JobMaster: the actor that drives a job on the leader. See the module documentation of
//! [`job_master`](super) for what it owns and guarantees.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::restart::{RestartDecision, RestartPolicy};
use super::{JobMasterContext, JobMasterMessage};
use crate::checkpoint::coordinator::{
    AckOutcome, CheckpointConfig, CheckpointKind, Coordinator, FailureVerdict, PendingCheckpoint, TaskAck, TaskKey,
};
use crate::checkpoint::storage::{self, CheckpointMetadata, StateHandle, VertexMetadata};
use crate::cluster::ClusterError;
use crate::jobgraph::JobGraph;
use crate::raft::command::{CompletedCheckpoint, DeployedComponent, Savepoint, SavepointOutcome};
use crate::raft::state::{Job, SavepointRequest};
use crate::raft::{Command, DeterministicError, Epoch, JobId, JobStatus, Response, SlotId, TaskManagerId};
use crate::resource_manager::AllocationError;
use crate::taskmanager::protocol::{
    DeploymentReport, FencingToken, FromTaskManager, SavepointTarget, TaskEvent, TaskState, ToTaskManager,
};

/// How often the JobMaster looks at the replicated state and its timers.
const TICK: Duration = Duration::from_millis(50);
/// How long to wait between attempts to get slots.
const SLOT_RETRY: Duration = Duration::from_millis(500);
/// How long cancelling may take before the job is recorded CANCELED anyway (its TaskManagers are unreachable).
const CANCEL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a TaskManager that failed a call is avoided when placing a new attempt.
const SUSPECT_WINDOW: Duration = Duration::from_secs(10);
/// Most JobMaster writes in one go that may fail transiently before the JobMaster gives up its term.
const WRITE_ATTEMPTS: u32 = 3;

/// Why a JobMaster stops.
#[derive(Debug, thiserror::Error)]
enum Exit {
    /// A newer JobMaster took over (stale epoch or a TaskManager refused the token).
    #[error("fenced off: {0}")]
    Fenced(String),
    /// The job is over.
    #[error("job ended as {0}")]
    Ended(JobStatus),
    /// The job vanished or its spec is unreadable: nothing to run.
    #[error("{0}")]
    Unrunnable(String),
    /// The cluster could not take a write (e.g. this replica lost leadership).
    #[error("cluster: {0}")]
    Cluster(ClusterError),
}

type Step<T = ()> = Result<T, Exit>;

/// Where one connected component runs.
#[derive(Debug, Clone)]
struct Placement {
    vertices: Vec<String>,
    tm_id: TaskManagerId,
    address: String,
    slots: Vec<SlotId>,
}

/// What the JobMaster is doing.
#[derive(Debug, Clone, PartialEq)]
enum Phase {
    /// Waiting for slots since then; the first time the reason was recorded.
    WaitingForSlots { since: Instant },
    /// Tasks deployed (or adopted), not all running yet.
    Deploying { since: Instant },
    /// Every task runs.
    Running,
    /// Restarting after a failure, at that instant.
    Restarting { at: Instant },
    /// Cancelling the tasks since then.
    Cancelling { since: Instant },
    /// A stop-with-savepoint completed: waiting for the tasks to finish.
    Stopping,
}

/// What a tick reads from the replicated state.
struct TickView {
    epoch: Epoch,
    status: JobStatus,
    /// A slot of the deployment no longer leased to the job (its TaskManager was declared dead).
    lost_slot: Option<SlotId>,
    /// The oldest savepoint request not yet served.
    next_savepoint: Option<(String, SavepointRequest)>,
}

/// A savepoint in progress: which client request it serves.
#[derive(Debug, Clone)]
struct SavepointInFlight {
    request_id: String,
    dir: PathBuf,
    terminate: bool,
}

/// Runs the JobMaster of `job_id` until the job ends, a newer JobMaster takes over, or the task is aborted because
/// this replica stopped leading.
pub async fn run_job_master(ctx: Arc<JobMasterContext>, job_id: JobId, inbox: mpsc::Receiver<JobMasterMessage>) {
    let outcome = JobMaster::start(ctx, job_id.clone()).await;
    let result = match outcome {
        Ok(mut master) => master.run(inbox).await,
        Err(exit) => Err(exit),
    };
    match result {
        Ok(()) => {}
        Err(Exit::Ended(status)) => tracing::info!(%job_id, %status, "JobMaster done"),
        Err(exit @ (Exit::Fenced(_) | Exit::Cluster(_))) => tracing::info!(%job_id, %exit, "JobMaster stops"),
        Err(exit) => tracing::warn!(%job_id, %exit, "JobMaster stops"),
    }
}

struct JobMaster {
    ctx: Arc<JobMasterContext>,
    job_id: JobId,
    epoch: Epoch,
    token: FencingToken,
    graph: Arc<JobGraph>,
    policy: RestartPolicy,
    coordinator: Coordinator,
    attempt: u32,
    placements: Vec<Placement>,
    tasks: BTreeMap<TaskKey, TaskState>,
    phase: Phase,
    deployed_at: Instant,
    savepoints: BTreeMap<u64, SavepointInFlight>,
    waiting_reported: bool,
    /// The checkpoint directory of the current attempt: where its tasks write state.
    checkpoint_dir: PathBuf,
    /// TaskManagers that recently failed a call, avoided when placing the next attempt.
    suspects: HashMap<TaskManagerId, Instant>,
}

impl JobMaster {
    /// Takes a new epoch and adopts or deploys the job.
    async fn start(ctx: Arc<JobMasterContext>, job_id: JobId) -> Step<Self> {
        let job = read_job(&ctx, &job_id).ok_or_else(|| Exit::Unrunnable(format!("job {job_id} not found")))?;
        if job.status.is_terminal() {
            return Err(Exit::Ended(job.status));
        }
        let graph = JobGraph::from_canonical_json(&job.spec_json)
            .map_err(|e| Exit::Unrunnable(format!("job {job_id} has an unreadable spec: {e}")))?;
        let now_ms = ctx.node.clock().now_ms();
        let grant = Command::GrantJobMasterEpoch { job_id: job_id.clone(), leader_term: ctx.term, at_ms: now_ms };
        let epoch = match write(&ctx, grant).await? {
            Response::EpochGranted { epoch, .. } => epoch,
            other => return Err(Exit::Unrunnable(format!("unexpected reply to an epoch grant: {other:?}"))),
        };
        let failure_times: Vec<u64> = job.exceptions.iter().filter(|e| e.restarting).map(|e| e.at_ms).collect();
        let seed = u64::from_str_radix(&job_id[..job_id.len().min(16)], 16).unwrap_or(0) ^ epoch;
        let policy = RestartPolicy::new(&graph.restart_strategy(), seed).with_history(&failure_times);
        let checkpoint_config = CheckpointConfig::from_spec(&graph.spec.checkpoints);
        let now = Instant::now();
        let mut master = Self {
            token: FencingToken { term: ctx.term, epoch },
            coordinator: Coordinator::new(checkpoint_config, BTreeSet::new(), now),
            ctx,
            job_id,
            epoch,
            graph: Arc::new(graph),
            policy,
            attempt: job.deployment.as_ref().map_or(0, |d| d.attempt),
            placements: Vec::new(),
            tasks: BTreeMap::new(),
            phase: Phase::Deploying { since: now },
            deployed_at: now,
            savepoints: BTreeMap::new(),
            waiting_reported: false,
            checkpoint_dir: PathBuf::new(),
            suspects: HashMap::new(),
        };
        master.checkpoint_dir = match &job.deployment {
            Some(deployment) => PathBuf::from(&deployment.checkpoint_dir),
            None => master.configured_checkpoint_dir(),
        };
        tracing::info!(job_id = %master.job_id, epoch, term = master.token.term, "JobMaster started");
        master.take_over(&job).await?;
        Ok(master)
    }

    /// Adopts the predecessor's running tasks if every one of them is there, otherwise (re)deploys.
    async fn take_over(&mut self, job: &Job) -> Step {
        if job.status == JobStatus::Cancelling {
            self.placements = self.placements_of(job);
            return self.begin_cancel().await;
        }
        let Some(deployment) = &job.deployment else { return self.deploy().await };
        self.placements = self.placements_of(job);
        match self.try_adopt(deployment.attempt).await {
            Ok(()) => {
                let slots: Vec<SlotId> = self.placements.iter().flat_map(|p| p.slots.clone()).collect();
                let at_ms = self.now_ms();
                let lease = Command::LeaseSlots { job_id: self.job_id.clone(), epoch: self.epoch, slots, at_ms };
                match self.write(lease).await {
                    Ok(_) => {}
                    // The tasks run, but their slots went to other jobs meanwhile (their TaskManager was declared
                    // dead and re-registered, which released its leases): they run outside any lease and must not
                    // stay. Restart the job on slots it can hold; the restart cancels them under our token.
                    Err(Exit::Cluster(ClusterError::Rejected(e @ DeterministicError::SlotUnavailable { .. }))) => {
                        return self.fail(format!("its running tasks lost their slots to other jobs: {e}")).await;
                    }
                    Err(other) => return Err(other),
                }
                tracing::info!(job_id = %self.job_id, attempt = self.attempt, "adopted running tasks");
                self.after_tasks_changed().await?;
                if let Some(checkpoint_id) = completed_stop_savepoint(job) {
                    // The predecessor committed a stop-with-savepoint but may have died before telling the tasks:
                    // tell them again (idempotent), and wait for them to finish.
                    self.phase = Phase::Stopping;
                    self.notify_tasks(checkpoint_id, true).await?;
                    return self.after_tasks_changed().await;
                }
                if self.phase == Phase::Running {
                    self.coordinator.trigger_soon(Instant::now());
                }
                Ok(())
            }
            Err(reason) => {
                tracing::info!(job_id = %self.job_id, %reason, "cannot adopt the running tasks; restarting the job");
                if job.status == JobStatus::Created || job.status == JobStatus::Restarting {
                    self.cancel_deployment().await;
                    return self.deploy().await;
                }
                self.fail(format!("tasks lost during leader failover: {reason}")).await
            }
        }
    }

    /// Asks every TaskManager of the recorded deployment for its tasks, under our token.
    async fn try_adopt(&mut self, attempt: u32) -> Result<(), String> {
        let mut tasks = BTreeMap::new();
        for placement in &self.placements {
            if placement.address.is_empty() {
                return Err(format!("TaskManager {} is no longer registered", placement.tm_id));
            }
            let reconcile = ToTaskManager::Reconcile { token: self.token, job_id: self.job_id.clone() };
            let reply = self.ctx.gateway.call(&placement.address, reconcile, self.ctx.config.rpc_timeout).await;
            let reports = match reply {
                Ok(FromTaskManager::Deployments(reports)) => reports,
                Ok(other) => return Err(format!("TaskManager {} answered {other:?}", placement.tm_id)),
                Err(e) => return Err(format!("TaskManager {} unreachable: {e}", placement.tm_id)),
            };
            let Some(report) = reports.into_iter().find(|r| r.attempt == attempt) else {
                return Err(format!("TaskManager {} does not run attempt {attempt}", placement.tm_id));
            };
            for vertex in &placement.vertices {
                let parallelism = self.graph.vertex(vertex).map_or(0, |v| v.parallelism);
                for subtask in 0..parallelism {
                    let state = report.subtasks.iter().find(|s| &s.vertex == vertex && s.subtask == subtask);
                    match state.map(|s| s.state) {
                        Some(state) if is_alive(state) || state == TaskState::Finished => {
                            tasks.insert(TaskKey { vertex: vertex.clone(), subtask }, state);
                        }
                        other => return Err(format!("subtask {vertex} ({subtask}) is {other:?}")),
                    }
                }
            }
        }
        self.attempt = attempt;
        self.tasks = tasks;
        self.deployed_at = Instant::now();
        self.phase = Phase::Deploying { since: Instant::now() };
        self.coordinator.set_tasks(self.tasks.keys().cloned().collect());
        Ok(())
    }

    fn placements_of(&self, job: &Job) -> Vec<Placement> {
        let Some(deployment) = &job.deployment else { return Vec::new() };
        deployment.components.iter().map(|component| self.placement(component)).collect()
    }

    fn placement(&self, component: &DeployedComponent) -> Placement {
        let tm_id = component.slots.first().map(|s| s.tm.clone()).unwrap_or_default();
        let address = self.ctx.rm.address_of(&tm_id).unwrap_or_default();
        Placement { vertices: component.vertices.clone(), tm_id, address, slots: component.slots.clone() }
    }

    async fn run(&mut self, mut inbox: mpsc::Receiver<JobMasterMessage>) -> Step {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Biased, so the deterministic simulation replays (an unbiased select draws from the runtime's RNG); the
            // tick first, as it fires once per TICK and cannot starve the inbox, where a flood of events could starve it.
            tokio::select! {
                biased;
                _ = tick.tick() => self.on_tick().await?,
                message = inbox.recv() => match message {
                    Some(message) => self.on_message(message).await?,
                    None => return Ok(()),
                },
            }
        }
    }

    async fn on_message(&mut self, message: JobMasterMessage) -> Step {
        match message {
            JobMasterMessage::TaskEvent(event) => self.on_task_event(event).await,
            JobMasterMessage::Report { tm_id, report } => self.on_report(&tm_id, report).await,
            JobMasterMessage::Missing { tm_id } => {
                let deployed_long_ago = self.deployed_at.elapsed() > self.ctx.config.deployment_grace;
                if deployed_long_ago && self.has_live_deployment() && self.placements.iter().any(|p| p.tm_id == tm_id) {
                    return self.fail(format!("TaskManager {tm_id} no longer runs the job's tasks")).await;
                }
                Ok(())
            }
        }
    }

    async fn on_task_event(&mut self, event: TaskEvent) -> Step {
        match event {
            TaskEvent::StateChanged { attempt, vertex, subtask, state, error, .. } => {
                if attempt != self.attempt {
                    return Ok(());
                }
                let key = TaskKey { vertex: vertex.clone(), subtask };
                if !self.tasks.contains_key(&key) {
                    return Ok(());
                }
                self.tasks.insert(key, state);
                if state == TaskState::Failed && self.has_live_deployment() {
                    let error = error.unwrap_or_else(|| "no reason given".to_string());
                    return self.fail(format!("subtask {vertex} ({subtask}) failed: {error}")).await;
                }
                self.after_tasks_changed().await
            }
            TaskEvent::CheckpointAcked { attempt, checkpoint_id, vertex, subtask, handle, state_size, .. } => {
                if attempt != self.attempt {
                    return Ok(());
                }
                let key = TaskKey { vertex, subtask };
                match self.coordinator.acknowledge(checkpoint_id, &key, TaskAck { handle, state_size }) {
                    AckOutcome::AllAcked(pending) => self.finish_checkpoint(pending).await,
                    AckOutcome::Pending { .. } => Ok(()),
                    AckOutcome::Ignored { reason } => {
                        tracing::debug!(job_id = %self.job_id, checkpoint_id, %reason, "ack ignored");
                        Ok(())
                    }
                }
            }
            TaskEvent::CheckpointDeclined { attempt, checkpoint_id, vertex, subtask, reason, .. } => {
                if attempt != self.attempt {
                    return Ok(());
                }
                let key = TaskKey { vertex, subtask };
                let reason = format!("declined by {} ({}): {reason}", key.vertex, key.subtask);
                match self.coordinator.decline(checkpoint_id, &key, &reason, Instant::now()) {
                    Some((kind, verdict)) => self.checkpoint_failed(checkpoint_id, kind, &reason, verdict).await,
                    None => Ok(()),
                }
            }
        }
    }

    async fn on_report(&mut self, tm_id: &str, report: DeploymentReport) -> Step {
        if report.attempt != self.attempt || !self.placements.iter().any(|p| p.tm_id == tm_id) {
            return Ok(());
        }
        let mut changed = false;
        for subtask in report.subtasks {
            let key = TaskKey { vertex: subtask.vertex, subtask: subtask.subtask };
            if let Some(state) = self.tasks.get_mut(&key) {
                if *state != subtask.state {
                    *state = subtask.state;
                    changed = true;
                }
            }
        }
        if !changed {
            return Ok(());
        }
        let failed = self.tasks.iter().find(|(_, s)| **s == TaskState::Failed).map(|(k, _)| k.clone());
        if let (Some(key), true) = (failed, self.has_live_deployment()) {
            return self.fail(format!("subtask {} ({}) failed", key.vertex, key.subtask)).await;
        }
        self.after_tasks_changed().await
    }

    /// Reacts to the set of task states: all running, all finished, all cancelled.
    async fn after_tasks_changed(&mut self) -> Step {
        if self.tasks.is_empty() {
            return Ok(());
        }
        let all = |wanted: &[TaskState]| self.tasks.values().all(|s| wanted.contains(s));
        let all_started = all(&[TaskState::Running, TaskState::Finished]);
        let all_finished = all(&[TaskState::Finished]);
        let all_ended = self.tasks.values().all(|s| is_terminal(*s));
        match self.phase {
            Phase::Deploying { .. } if all_started => {
                self.phase = Phase::Running;
                self.policy.on_running(self.now_ms());
                self.transition(JobStatus::Running, None).await?;
                tracing::info!(job_id = %self.job_id, attempt = self.attempt, "job running");
                if all_finished {
                    return self.end(JobStatus::Finished, None).await;
                }
                Ok(())
            }
            Phase::Running | Phase::Stopping if all_finished => self.end(JobStatus::Finished, None).await,
            Phase::Cancelling { .. } if all_ended => self.end(JobStatus::Canceled, None).await,
            _ => Ok(()),
        }
    }

    async fn on_tick(&mut self) -> Step {
        let Some(view) = self.view() else {
            return Err(Exit::Unrunnable(format!("job {} vanished", self.job_id)));
        };
        if view.epoch != self.epoch {
            return Err(Exit::Fenced(format!("job is at epoch {}, this JobMaster has {}", view.epoch, self.epoch)));
        }
        if view.status.is_terminal() {
            self.cancel_deployment().await;
            return Err(Exit::Ended(view.status));
        }
        if view.status == JobStatus::Cancelling && !matches!(self.phase, Phase::Cancelling { .. }) {
            return self.begin_cancel().await;
        }
        match self.phase.clone() {
            Phase::Cancelling { since } if since.elapsed() > CANCEL_TIMEOUT => {
                self.end(JobStatus::Canceled, Some("tasks did not confirm cancellation in time".into())).await
            }
            Phase::Restarting { at } if Instant::now() >= at => self.deploy().await,
            Phase::WaitingForSlots { .. } => self.deploy().await,
            Phase::Deploying { .. } | Phase::Running | Phase::Stopping => {
                if let Some(lost) = view.lost_slot {
                    return self.fail(format!("slot {lost} was released (TaskManager {} lost)", lost.tm)).await;
                }
                self.checkpoint_timers().await?;
                match view.next_savepoint {
                    Some((request_id, request)) => self.serve_savepoint_request(request_id, request).await,
                    None => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    /// What a tick needs from the replicated state, read without copying the whole job.
    fn view(&self) -> Option<TickView> {
        let serving: BTreeSet<&String> = self.savepoints.values().map(|s| &s.request_id).collect();
        self.ctx.node.state().read(|s| {
            let job = s.cluster.job(&self.job_id)?;
            let lost_slot = self
                .placements
                .iter()
                .flat_map(|p| &p.slots)
                .find(|slot| s.cluster.slot_leases.get(slot).is_none_or(|l| l.job_id != self.job_id))
                .cloned();
            let next_savepoint = job
                .savepoint_requests
                .iter()
                .filter(|(id, r)| r.outcome.is_none() && !serving.contains(id))
                .min_by_key(|(id, r)| (r.requested_at_ms, (*id).clone()))
                .map(|(id, r)| (id.clone(), r.clone()));
            Some(TickView { epoch: job.epoch, status: job.status, lost_slot, next_savepoint })
        })
    }

    fn has_live_deployment(&self) -> bool {
        matches!(self.phase, Phase::Deploying { .. } | Phase::Running | Phase::Stopping)
    }

    // ---- deployment -------------------------------------------------------------------------------------------

    /// Deploys a new attempt: slots, the deployment record, then the tasks.
    async fn deploy(&mut self) -> Step {
        let job = read_job(&self.ctx, &self.job_id).ok_or_else(|| Exit::Unrunnable("job vanished".into()))?;
        let restore = restore_point(&job, &self.graph);
        if let Some(path) = &restore {
            if let Err(reason) = self.check_restore_point(path).await {
                if job.checkpoints.is_empty() {
                    // The user's savepoint does not fit this job: retrying will not change that.
                    self.record_failure(reason.clone(), false).await?;
                    return self.end(JobStatus::Failed, Some(reason)).await;
                }
                return self.fail(reason).await;
            }
        }
        let components = self.graph.components();
        let needs: Vec<u32> = components
            .iter()
            .map(|c| c.iter().map(|&v| self.graph.vertices[v].parallelism).max().unwrap_or(1))
            .collect();
        let avoid = self.recent_suspects();
        let slots = match self.ctx.rm.allocate(&self.job_id, self.epoch, &needs, avoid).await {
            Ok(slots) => slots,
            Err(AllocationError::Placement(e)) => return self.wait_for_slots(e.to_string()).await,
            Err(AllocationError::Cluster(e)) => return Err(self.classify(e)),
        };
        let attempt = self.attempt.max(job.deployment.as_ref().map_or(0, |d| d.attempt)) + 1;
        let checkpoint_dir = self.configured_checkpoint_dir();
        let deployed: Vec<DeployedComponent> = components
            .iter()
            .zip(&slots)
            .map(|(component, slots)| DeployedComponent {
                vertices: component.iter().map(|&v| self.graph.vertices[v].id.clone()).collect(),
                slots: slots.clone(),
            })
            .collect();
        let record = Command::RecordDeployment {
            job_id: self.job_id.clone(),
            epoch: self.epoch,
            attempt,
            components: deployed.clone(),
            restored_from: restore.clone(),
            checkpoint_dir: checkpoint_dir.to_string_lossy().into_owned(),
            at_ms: self.now_ms(),
        };
        self.write(record).await?;
        self.checkpoint_dir = checkpoint_dir;
        self.attempt = attempt;
        self.waiting_reported = false;
        self.placements = deployed.iter().map(|c| self.placement(c)).collect();
        self.tasks = self.all_task_keys().into_iter().map(|k| (k, TaskState::Deploying)).collect();
        self.coordinator.set_tasks(self.tasks.keys().cloned().collect());
        self.phase = Phase::Deploying { since: Instant::now() };
        self.deployed_at = Instant::now();
        tracing::info!(job_id = %self.job_id, attempt, restore = ?restore, "deploying");
        let checkpoint_dir = self.checkpoint_dir.to_string_lossy().into_owned();
        for placement in self.placements.clone() {
            let deploy = ToTaskManager::Deploy {
                token: self.token,
                job_id: self.job_id.clone(),
                attempt,
                spec_json: self.graph.canonical_json.clone(),
                vertices: placement.vertices.clone(),
                restore: restore.clone(),
                checkpoint_dir: checkpoint_dir.clone(),
            };
            if let Err(reason) = self.send(&placement, deploy).await? {
                return self.fail(format!("deploying to TaskManager {} failed: {reason}", placement.tm_id)).await;
            }
        }
        Ok(())
    }

    /// Checks that `path` holds a completed checkpoint or savepoint whose state fits this job's graph.
    async fn check_restore_point(&self, path: &str) -> Result<(), String> {
        let dir = PathBuf::from(path);
        let metadata = crate::blocking::run(move || storage::read_metadata(&dir))
            .await
            .map_err(|e| format!("reading {path}: {e}"))?
            .map_err(|e| format!("cannot restore from {path}: {e}"))?;
        let allow_unclaimed = self.graph.spec.savepoint.as_ref().is_some_and(|s| s.allow_non_restored_state);
        for saved in &metadata.vertices {
            match self.graph.vertex(&saved.id) {
                None if !allow_unclaimed => {
                    return Err(format!(
                        "{path} holds state of vertex `{}`, which this job does not have; rename a vertex to `{}` \
                         or set savepoint.allow_non_restored_state: true to skip that state",
                        saved.id, saved.id
                    ));
                }
                Some(vertex) if vertex.max_parallelism != saved.max_parallelism => {
                    return Err(format!(
                        "vertex `{}` has max_parallelism {} but {path} was taken with {}; max_parallelism cannot \
                         change across a restore",
                        saved.id, vertex.max_parallelism, saved.max_parallelism
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    async fn wait_for_slots(&mut self, reason: String) -> Step {
        let since = match self.phase {
            Phase::WaitingForSlots { since } => since,
            _ => Instant::now(),
        };
        self.phase = Phase::WaitingForSlots { since };
        let timeout = self.ctx.config.slot_request_timeout;
        if since.elapsed() >= timeout {
            self.waiting_reported = false;
            return self.fail(format!("could not get slots within {timeout:?}: {reason}")).await;
        }
        if !self.waiting_reported {
            self.waiting_reported = true;
            let error = format!("waiting for slots (up to {timeout:?}): {reason}");
            tracing::warn!(job_id = %self.job_id, %error);
            self.record_failure(error, false).await?;
        }
        tokio::time::sleep(SLOT_RETRY).await;
        Ok(())
    }

    fn all_task_keys(&self) -> Vec<TaskKey> {
        self.graph
            .vertices
            .iter()
            .flat_map(|v| (0..v.parallelism).map(move |subtask| TaskKey { vertex: v.id.clone(), subtask }))
            .collect()
    }

    /// The job's checkpoint directory for a new attempt: the spec's, else the cluster's, then the job's own.
    fn configured_checkpoint_dir(&self) -> PathBuf {
        let base = self.graph.spec.checkpoints.dir.as_ref().map(PathBuf::from);
        let base = base.unwrap_or_else(|| self.ctx.config.checkpoint_dir.clone());
        storage::job_checkpoint_dir(&base, &self.job_id)
    }

    /// TaskManagers that failed a call within the last heartbeat timeout.
    fn recent_suspects(&mut self) -> BTreeSet<TaskManagerId> {
        let window = SUSPECT_WINDOW;
        self.suspects.retain(|_, at| at.elapsed() < window);
        self.suspects.keys().cloned().collect()
    }

    /// Cancels the current deployment on its TaskManagers, best effort, without waiting for the tasks.
    async fn cancel_deployment(&mut self) {
        for placement in self.placements.clone() {
            let cancel = ToTaskManager::Cancel { token: self.token, job_id: self.job_id.clone(), attempt: None };
            let _ = self.send(&placement, cancel).await;
        }
    }

    async fn begin_cancel(&mut self) -> Step {
        tracing::info!(job_id = %self.job_id, "cancelling");
        self.coordinator.abort_all("job cancelled", self.now_ms());
        self.phase = Phase::Cancelling { since: Instant::now() };
        self.cancel_deployment().await;
        if self.placements.is_empty() || self.tasks.is_empty() {
            return self.end(JobStatus::Canceled, None).await;
        }
        self.after_tasks_changed().await
    }

    /// Handles a failure of the running job: restart per the strategy, or fail the job.
    async fn fail(&mut self, error: String) -> Step {
        tracing::warn!(job_id = %self.job_id, %error, "job failure");
        let aborted = self.coordinator.abort_all(&error, self.now_ms());
        self.fail_savepoints(&aborted, &error).await?;
        self.cancel_deployment().await;
        self.tasks.clear();
        match self.policy.on_failure(self.now_ms()) {
            RestartDecision::Restart { delay } => {
                self.record_failure(error.clone(), true).await?;
                self.transition_to_restarting(&error).await?;
                self.phase = Phase::Restarting { at: Instant::now() + delay };
                Ok(())
            }
            RestartDecision::GiveUp { reason } => {
                self.record_failure(error.clone(), false).await?;
                self.end(JobStatus::Failed, Some(format!("{error} ({reason})"))).await
            }
        }
    }

    async fn transition_to_restarting(&mut self, error: &str) -> Step {
        let status = read_job(&self.ctx, &self.job_id).map(|j| j.status);
        if matches!(status, Some(JobStatus::Created | JobStatus::Suspended | JobStatus::Reconciling)) {
            self.transition(JobStatus::Failing, Some(error.to_string())).await?;
        }
        self.transition(JobStatus::Restarting, Some(error.to_string())).await
    }

    async fn end(&mut self, status: JobStatus, error: Option<String>) -> Step {
        let pending: Vec<u64> = self.savepoints.keys().copied().collect();
        self.fail_savepoints(&pending, &format!("job ended as {status}")).await?;
        let at_ms = self.now_ms();
        let result = Command::RecordJobResult { job_id: self.job_id.clone(), epoch: self.epoch, status, at_ms, error };
        self.write(result).await?;
        if status != JobStatus::Finished {
            self.cancel_deployment().await;
        }
        Err(Exit::Ended(status))
    }

    // ---- checkpoints ------------------------------------------------------------------------------------------

    async fn checkpoint_timers(&mut self) -> Step {
        let now = Instant::now();
        for (id, kind, verdict) in self.coordinator.expire(now) {
            self.checkpoint_failed(id, kind, "expired before all tasks acknowledged", verdict).await?;
        }
        if self.phase == Phase::Running && self.all_running() && self.coordinator.is_trigger_due(now) {
            self.trigger(CheckpointKind::Checkpoint, None).await?;
        }
        Ok(())
    }

    fn all_running(&self) -> bool {
        !self.tasks.is_empty() && self.tasks.values().all(|s| *s == TaskState::Running)
    }

    /// Allocates a checkpoint id through Raft and injects the barrier at the sources.
    async fn trigger(&mut self, kind: CheckpointKind, request_id: Option<String>) -> Step {
        let at_ms = self.now_ms();
        let allocate = Command::AllocateCheckpointId { job_id: self.job_id.clone(), epoch: self.epoch, at_ms };
        let id = match self.write(allocate).await? {
            Response::CheckpointIdAllocated { checkpoint_id, .. } => checkpoint_id,
            other => {
                return Err(Exit::Unrunnable(format!("unexpected reply to a checkpoint id allocation: {other:?}")))
            }
        };
        let savepoint = match &kind {
            CheckpointKind::Savepoint { dir, terminate } => {
                let dir = storage::savepoint_dir(Path::new(dir), &self.job_id, id);
                let request_id = request_id.unwrap_or_default();
                let in_flight = SavepointInFlight { request_id, dir: dir.clone(), terminate: *terminate };
                self.savepoints.insert(id, in_flight);
                Some(SavepointTarget { dir: dir.to_string_lossy().into_owned(), terminate: *terminate })
            }
            CheckpointKind::Checkpoint => None,
        };
        self.coordinator.begin(id, kind, Instant::now(), at_ms);
        tracing::debug!(job_id = %self.job_id, checkpoint_id = id, "triggering checkpoint");
        for placement in self.placements.clone() {
            let trigger = ToTaskManager::TriggerCheckpoint {
                token: self.token,
                job_id: self.job_id.clone(),
                attempt: self.attempt,
                checkpoint_id: id,
                timestamp_ms: at_ms,
                savepoint: savepoint.clone(),
            };
            if let Err(reason) = self.send(&placement, trigger).await? {
                let reason = format!("trigger failed on TaskManager {}: {reason}", placement.tm_id);
                let any_task = self.tasks.keys().next().cloned();
                let declined = any_task.and_then(|task| self.coordinator.decline(id, &task, &reason, Instant::now()));
                if let Some((kind, verdict)) = declined {
                    return self.checkpoint_failed(id, kind, &reason, verdict).await;
                }
            }
        }
        Ok(())
    }

    /// Every task acknowledged: store the metadata, commit the checkpoint through Raft, then tell the tasks.
    async fn finish_checkpoint(&mut self, pending: PendingCheckpoint) -> Step {
        let id = pending.id;
        let savepoint = self.savepoints.get(&id).cloned();
        let dir = match &savepoint {
            Some(s) => s.dir.clone(),
            None => self.checkpoint_dir.join(format!("chk-{id}")),
        };
        let completed_at_ms = self.now_ms();
        let metadata = self.metadata(&pending, completed_at_ms);
        let metadata_dir = dir.clone();
        let stored = crate::blocking::run(move || storage::write_metadata(&metadata_dir, &metadata)).await;
        let metadata_bytes = match stored {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => return self.pending_failed(pending, &format!("cannot write metadata: {e}")).await,
            Err(e) => return self.pending_failed(pending, &format!("metadata writer: {e}")).await,
        };
        let state_size = pending.state_size() + metadata_bytes;
        let path = dir.to_string_lossy().into_owned();
        let command = match &savepoint {
            Some(s) => Command::ResolveSavepointRequest {
                job_id: self.job_id.clone(),
                epoch: self.epoch,
                request_id: s.request_id.clone(),
                outcome: SavepointOutcome::Completed {
                    savepoint: Savepoint { checkpoint_id: id, path: path.clone(), at_ms: completed_at_ms },
                },
                at_ms: completed_at_ms,
            },
            None => Command::CompleteCheckpoint {
                job_id: self.job_id.clone(),
                epoch: self.epoch,
                checkpoint: CompletedCheckpoint {
                    id,
                    trigger_at_ms: pending.trigger_wall_ms,
                    completed_at_ms,
                    external_path: path.clone(),
                    state_size_bytes: state_size,
                },
            },
        };
        let discarded = match self.ctx.node.write(command).await {
            Ok(written) => match written.response {
                Response::CheckpointCompleted { discarded, .. } => discarded,
                _ => Vec::new(),
            },
            Err(ClusterError::Rejected(e)) if is_fencing(&e) => return Err(Exit::Fenced(e.to_string())),
            Err(ClusterError::Rejected(e)) => return self.pending_failed(pending, &e.to_string()).await,
            Err(e) => return Err(self.classify(e)),
        };
        // Committed, not yet acknowledged to anyone: a successor must find it in the log and tell the tasks.
        crate::failpoint::hit(crate::failpoint::CHECKPOINT_AFTER_COMMIT);
        self.coordinator.completed(id, Instant::now(), completed_at_ms, state_size);
        self.savepoints.remove(&id);
        tracing::debug!(job_id = %self.job_id, checkpoint_id = id, state_size, "checkpoint completed");
        self.notify_tasks(id, true).await?;
        discard_in_background(discarded.into_iter().map(|c| PathBuf::from(c.external_path)).collect());
        if savepoint.is_some_and(|s| s.terminate) {
            self.phase = Phase::Stopping;
            return self.after_tasks_changed().await;
        }
        Ok(())
    }

    async fn pending_failed(&mut self, pending: PendingCheckpoint, reason: &str) -> Step {
        let verdict = self.coordinator.failed(pending.id, pending.kind.clone(), reason, Instant::now(), self.now_ms());
        self.checkpoint_failed(pending.id, pending.kind, reason, verdict).await
    }

    async fn checkpoint_failed(
        &mut self,
        id: u64,
        kind: CheckpointKind,
        reason: &str,
        verdict: FailureVerdict,
    ) -> Step {
        tracing::warn!(job_id = %self.job_id, checkpoint_id = id, %reason, "checkpoint failed");
        self.notify_tasks(id, false).await?;
        if matches!(kind, CheckpointKind::Savepoint { .. }) {
            self.fail_savepoints(&[id], reason).await?;
        }
        match verdict {
            FailureVerdict::Tolerated { .. } => Ok(()),
            FailureVerdict::FailJob { reason } => self.fail(reason).await,
        }
    }

    async fn notify_tasks(&mut self, checkpoint_id: u64, completed: bool) -> Step {
        for placement in self.placements.clone() {
            let notify = ToTaskManager::NotifyCheckpoint {
                token: self.token,
                job_id: self.job_id.clone(),
                attempt: self.attempt,
                checkpoint_id,
                completed,
            };
            if let Err(reason) = self.send(&placement, notify).await? {
                tracing::warn!(job_id = %self.job_id, checkpoint_id, %reason, "checkpoint notification not delivered");
            }
        }
        Ok(())
    }

    fn metadata(&self, pending: &PendingCheckpoint, completed_at_ms: u64) -> CheckpointMetadata {
        CheckpointMetadata {
            version: 1,
            job_id: self.job_id.clone(),
            checkpoint_id: pending.id,
            is_savepoint: matches!(pending.kind, CheckpointKind::Savepoint { .. }),
            trigger_at_ms: pending.trigger_wall_ms,
            completed_at_ms,
            spec_json: self.graph.canonical_json.clone(),
            vertices: self
                .graph
                .vertices
                .iter()
                .map(|v| VertexMetadata {
                    id: v.id.clone(),
                    parallelism: v.parallelism,
                    max_parallelism: v.max_parallelism,
                })
                .collect(),
            handles: pending
                .acks
                .iter()
                .map(|(task, ack)| StateHandle {
                    vertex: task.vertex.clone(),
                    subtask: task.subtask,
                    path: ack.handle.clone(),
                    size: ack.state_size,
                })
                .collect(),
        }
    }

    // ---- savepoints -------------------------------------------------------------------------------------------

    async fn serve_savepoint_request(&mut self, request_id: String, request: SavepointRequest) -> Step {
        if self.phase != Phase::Running || !self.all_running() {
            return Ok(());
        }
        let dir = request.target_dir.unwrap_or_else(|| self.ctx.config.savepoint_dir.to_string_lossy().into_owned());
        tracing::info!(job_id = %self.job_id, %request_id, terminate = request.terminate, "triggering savepoint");
        self.trigger(CheckpointKind::Savepoint { dir, terminate: request.terminate }, Some(request_id)).await
    }

    async fn fail_savepoints(&mut self, checkpoint_ids: &[u64], error: &str) -> Step {
        for id in checkpoint_ids {
            let Some(savepoint) = self.savepoints.remove(id) else { continue };
            let resolve = Command::ResolveSavepointRequest {
                job_id: self.job_id.clone(),
                epoch: self.epoch,
                request_id: savepoint.request_id,
                outcome: SavepointOutcome::Failed { error: error.to_string() },
                at_ms: self.now_ms(),
            };
            self.write(resolve).await?;
        }
        Ok(())
    }

    // ---- plumbing ---------------------------------------------------------------------------------------------

    async fn record_failure(&mut self, error: String, restarting: bool) -> Step {
        let at_ms = self.now_ms();
        let command =
            Command::RecordJobFailure { job_id: self.job_id.clone(), epoch: self.epoch, at_ms, error, restarting };
        self.write(command).await.map(|_| ())
    }

    async fn transition(&mut self, to: JobStatus, reason: Option<String>) -> Step {
        let at_ms = self.now_ms();
        let command =
            Command::TransitionJobStatus { job_id: self.job_id.clone(), epoch: self.epoch, to, at_ms, reason };
        match self.ctx.node.write(command).await {
            Ok(_) => Ok(()),
            Err(ClusterError::Rejected(e)) if is_fencing(&e) => Err(Exit::Fenced(e.to_string())),
            // An impossible transition is a JobMaster bug, not a reason to stop driving the job.
            Err(ClusterError::Rejected(e)) => {
                tracing::warn!(job_id = %self.job_id, error = %e, "status transition refused");
                Ok(())
            }
            Err(e) => Err(self.classify(e)),
        }
    }

    async fn write(&self, command: Command) -> Step<Response> {
        write(&self.ctx, command).await
    }

    /// Sends a command to a TaskManager. `Ok(Err(reason))` is a failed delivery; `Err` means we were fenced.
    async fn send(&mut self, placement: &Placement, command: ToTaskManager) -> Step<Result<(), String>> {
        let name = command.name();
        let address = match self.ctx.rm.address_of(&placement.tm_id) {
            Some(address) => address,
            None => return Ok(Err(format!("TaskManager {} is not registered", placement.tm_id))),
        };
        match self.ctx.gateway.call(&address, command, self.ctx.config.rpc_timeout).await {
            Ok(FromTaskManager::Ok | FromTaskManager::Deployments(_)) => Ok(Ok(())),
            Ok(FromTaskManager::Fenced { newest }) => {
                Err(Exit::Fenced(format!("TaskManager {} accepted {newest} over our {}", placement.tm_id, self.token)))
            }
            Ok(FromTaskManager::Error { message }) => Ok(Err(format!("{name}: {message}"))),
            Err(e) => {
                self.suspects.insert(placement.tm_id.clone(), Instant::now());
                Ok(Err(format!("{name}: {e}")))
            }
        }
    }

    fn classify(&self, error: ClusterError) -> Exit {
        match error {
            ClusterError::Rejected(e) if is_fencing(&e) => Exit::Fenced(e.to_string()),
            ClusterError::Rejected(DeterministicError::JobTerminal { status, .. }) => Exit::Ended(status),
            other => Exit::Cluster(other),
        }
    }

    fn now_ms(&self) -> u64 {
        self.ctx.node.clock().now_ms()
    }
}

/// Commits a JobMaster command, retrying transient failures a few times.
async fn write(ctx: &JobMasterContext, command: Command) -> Step<Response> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match ctx.node.write(command.clone()).await {
            Ok(written) => return Ok(written.response),
            Err(ClusterError::Rejected(e)) if is_fencing(&e) => return Err(Exit::Fenced(e.to_string())),
            Err(ClusterError::Rejected(DeterministicError::JobTerminal { status, .. })) => {
                return Err(Exit::Ended(status))
            }
            Err(e) if e.is_retryable() && attempt < WRITE_ATTEMPTS => {
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
            }
            Err(e) => return Err(Exit::Cluster(e)),
        }
    }
}

fn is_fencing(error: &DeterministicError) -> bool {
    matches!(error, DeterministicError::StaleEpoch { .. } | DeterministicError::FutureEpoch { .. })
}

fn read_job(ctx: &JobMasterContext, job_id: &str) -> Option<Job> {
    ctx.node.state().read(|s| s.cluster.job(job_id).cloned())
}

/// The checkpoint id of a completed stop-with-savepoint of a job that has not finished yet.
fn completed_stop_savepoint(job: &Job) -> Option<u64> {
    job.savepoint_requests.values().filter(|r| r.terminate).find_map(|r| match &r.outcome {
        Some(SavepointOutcome::Completed { savepoint }) => Some(savepoint.checkpoint_id),
        _ => None,
    })
}

/// Where a new attempt restores from: the latest completed checkpoint, else the savepoint the spec names.
fn restore_point(job: &Job, graph: &JobGraph) -> Option<String> {
    let latest = job.checkpoints.back().map(|c| c.external_path.clone());
    latest.or_else(|| graph.spec.savepoint.as_ref().map(|s| s.path.clone()))
}

fn is_alive(state: TaskState) -> bool {
    matches!(state, TaskState::Created | TaskState::Deploying | TaskState::Initializing | TaskState::Running)
}

fn is_terminal(state: TaskState) -> bool {
    matches!(state, TaskState::Finished | TaskState::Canceled | TaskState::Failed)
}

/// Deletes the files of checkpoints dropped by retention, off the JobMaster's task.
fn discard_in_background(dirs: Vec<PathBuf>) {
    if dirs.is_empty() {
        return;
    }
    crate::blocking::detach(move || {
        for dir in dirs {
            if let Err(e) = storage::discard(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot delete discarded checkpoint");
            }
        }
    });
}
