//! The TaskManager process (`jm taskmanager`): runs subtasks in slots for the leader's JobMasters, and keeps
//! running them across a leader change.
//!
//! It owns its deployments (each a [`runtime::Deployment`]: the subtasks of one attempt of one job) and, per job,
//! the newest [`FencingToken`] it accepted. Three loops drive it:
//!
//! * **Membership** ([`TaskManager::run_membership`]): registers through any replica (a replicated write), finds the
//!   leader (a follower answers `NotLeader` with the leader's address) and heartbeats to it with the full list of
//!   what runs here. On a leader change it simply heartbeats the new leader; nothing stops. When the leader no
//!   longer knows it (it was declared dead), it registers again. The heartbeat answer lists stale deployments
//!   (an older attempt, or a job that ended) and those are cancelled: a job never runs twice.
//! * **Events** ([`TaskManager::run_event_forwarder`]): task state changes and checkpoint acknowledgements go to
//!   the leader in batches. A batch no replica takes within one round over the replicas is dropped: states are
//!   re-reported by every heartbeat, and a lost acknowledgement only makes that checkpoint time out.
//! * **Commands** ([`TaskExecutorHandler`]): deploy, cancel, trigger a checkpoint, notify completion, reconcile.
//!   Every command carries a fencing token; one older than the newest accepted for the job is refused and logged.
//!   Deploys are serialized and checked again after the tasks started, so an attempt runs at most once, an
//!   attempt older than one already here is refused, and a deploy overtaken by a newer JobMaster is undone.
//!
//! Caveat: the newest tokens live in memory only. A restarted TaskManager has no tasks left to protect, and
//! registers again before it gets new ones.

pub mod protocol;
pub mod runtime;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use protocol::{
    BoxFuture, DeploymentReport, FencingToken, FromJobManager, FromTaskManager, JobManagerGateway, TaskEvent,
    TaskExecutorHandler, ToJobManager, ToTaskManager,
};
use runtime::{Barrier, BarrierKind, Deployment, DeploymentSpec};

use crate::jobgraph::JobGraph;
use crate::raft::{JobId, TaskManagerId};
use crate::telemetry::Counter;

/// How many task events are sent in one message at most.
const MAX_EVENTS_PER_BATCH: usize = 512;
/// How long a finished deployment is still reported before it is forgotten.
const KEEP_TERMINAL: Duration = Duration::from_secs(10);
/// Capacity of the channel from the subtasks to the event forwarder.
const EVENT_CHANNEL_CAPACITY: usize = 8192;

/// TaskManager settings.
#[derive(Debug, Clone)]
pub struct TaskManagerConfig {
    /// Its id, stable across restarts.
    pub tm_id: TaskManagerId,
    /// Client API addresses of the replicas.
    pub cluster: Vec<String>,
    /// The address replicas reach its `TaskExecutor` service at.
    pub advertise: String,
    /// Slots offered.
    pub slots: u32,
    /// Failure domain.
    pub zone: Option<String>,
    /// Time between heartbeats.
    pub heartbeat_interval: Duration,
    /// Timeout of each call to a replica.
    pub rpc_timeout: Duration,
}

/// The TaskManager's id: read from `data_dir/tm-id`, or created there on first start.
pub fn load_or_create_id(data_dir: &Path) -> std::io::Result<TaskManagerId> {
    let path = data_dir.join("tm-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(data_dir)?;
    let id = format!("tm-{:08x}", rand::random::<u32>());
    let tmp = data_dir.join("tm-id.tmp");
    std::fs::write(&tmp, &id)?;
    std::fs::rename(&tmp, &path)?;
    Ok(id)
}

/// A job's deployments here and the newest token accepted for it.
struct JobEntry {
    newest: FencingToken,
    deployments: BTreeMap<u32, Running>,
}

/// A deployment and when it ended, if it did.
struct Running {
    deployment: Deployment,
    terminal_since: Option<Instant>,
}

/// What a TaskManager counts, for its `/metrics`.
#[derive(Debug, Default)]
pub struct TaskManagerStats {
    /// Commands received from JobMasters.
    pub commands: Counter,
    /// Commands refused for a stale fencing token (a deposed leader's).
    pub commands_fenced: Counter,
    /// Heartbeats the leader took.
    pub heartbeats: Counter,
    /// Heartbeat rounds no replica took (no leader reachable).
    pub heartbeat_failures: Counter,
    /// Successful registrations (the first, and each after the leader forgot this TaskManager).
    pub registrations: Counter,
    /// Task events dropped because no leader was reachable.
    pub events_dropped: Counter,
}

/// A TaskManager.
pub struct TaskManager {
    config: TaskManagerConfig,
    stats: TaskManagerStats,
    gateway: Arc<dyn JobManagerGateway>,
    /// By job, in id order: heartbeats list them in a stable order (the simulation replays it).
    jobs: Mutex<BTreeMap<JobId, JobEntry>>,
    /// The replica believed to lead, and the next replica to try otherwise.
    leader: Mutex<(Option<String>, usize)>,
    events: mpsc::Sender<TaskEvent>,
    /// Serializes deploys: checking for an existing attempt, starting it and recording it is one step.
    deploying: tokio::sync::Mutex<()>,
}

impl TaskManager {
    /// Creates a TaskManager and starts its membership and event loops.
    pub fn start(config: TaskManagerConfig, gateway: Arc<dyn JobManagerGateway>) -> Arc<Self> {
        let (events, receiver) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
        let tm = Arc::new(Self {
            config,
            stats: TaskManagerStats::default(),
            gateway,
            jobs: Mutex::new(BTreeMap::new()),
            leader: Mutex::new((None, 0)),
            events,
            deploying: tokio::sync::Mutex::new(()),
        });
        tokio::spawn(tm.clone().run_membership());
        tokio::spawn(tm.clone().run_event_forwarder(receiver));
        tm
    }

    /// Its id.
    pub fn id(&self) -> &str {
        &self.config.tm_id
    }

    /// Its settings.
    pub fn config(&self) -> &TaskManagerConfig {
        &self.config
    }

    /// What it counted so far.
    pub fn stats(&self) -> &TaskManagerStats {
        &self.stats
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, BTreeMap<JobId, JobEntry>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every deployment here, as heartbeats report them.
    pub fn reports(&self) -> Vec<DeploymentReport> {
        let mut jobs = self.jobs();
        forget_old_terminal(&mut jobs);
        jobs.iter()
            .flat_map(|(job_id, entry)| {
                entry.deployments.iter().map(|(attempt, running)| DeploymentReport {
                    job_id: job_id.clone(),
                    attempt: *attempt,
                    token: entry.newest,
                    subtasks: running.deployment.status(),
                })
            })
            .collect()
    }

    // ---- membership -------------------------------------------------------------------------------------------

    async fn run_membership(self: Arc<Self>) {
        let mut registered = false;
        loop {
            if !registered {
                registered = self.register().await;
                if !registered {
                    tokio::time::sleep(self.config.heartbeat_interval).await;
                    continue;
                }
            }
            match self.heartbeat().await {
                Some(FromJobManager::HeartbeatAck { known, cancel, .. }) => {
                    self.stats.heartbeats.add(1);
                    if !known {
                        tracing::warn!(tm_id = %self.config.tm_id, "the leader does not know this TaskManager; registering again");
                        registered = false;
                        continue;
                    }
                    for (job_id, attempt, token) in cancel {
                        self.cancel_stale(&job_id, attempt, token);
                    }
                }
                _ => {
                    self.stats.heartbeat_failures.add(1);
                    // No leader reachable right now: try again soon, tasks keep running meanwhile.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
            tokio::time::sleep(self.config.heartbeat_interval).await;
        }
    }

    async fn register(&self) -> bool {
        let request = ToJobManager::Register {
            tm_id: self.config.tm_id.clone(),
            address: self.config.advertise.clone(),
            slots: self.config.slots,
            zone: self.config.zone.clone(),
        };
        for address in self.config.cluster.clone() {
            match self.gateway.call(&address, request.clone(), self.config.rpc_timeout).await {
                Ok(FromJobManager::Registered { term }) => {
                    self.stats.registrations.add(1);
                    tracing::info!(tm_id = %self.config.tm_id, via = %address, term, "registered");
                    return true;
                }
                Ok(other) => tracing::warn!(via = %address, reply = ?other, "registration refused"),
                Err(e) => tracing::debug!(via = %address, error = %e, "registration failed"),
            }
        }
        false
    }

    /// Sends a heartbeat to the leader, following `NotLeader` hints; `None` when no replica took it.
    async fn heartbeat(&self) -> Option<FromJobManager> {
        let request = ToJobManager::Heartbeat { tm_id: self.config.tm_id.clone(), deployments: self.reports() };
        self.call_leader(request).await
    }

    /// Calls the leader, discovering it if needed: at most one round over the replicas.
    async fn call_leader(&self, request: ToJobManager) -> Option<FromJobManager> {
        for _ in 0..=self.config.cluster.len() {
            let address = self.leader_candidate();
            match self.gateway.call(&address, request.clone(), self.config.rpc_timeout).await {
                Ok(FromJobManager::NotLeader { leader_api }) => self.follow_hint(&address, leader_api),
                Ok(reply) => {
                    self.remember_leader(&address);
                    return Some(reply);
                }
                Err(e) => {
                    tracing::debug!(%address, error = %e, "replica unreachable");
                    self.follow_hint(&address, None);
                }
            }
        }
        None
    }

    fn leader_candidate(&self) -> String {
        let leader = self.leader.lock().unwrap_or_else(|p| p.into_inner());
        match &leader.0 {
            Some(address) => address.clone(),
            None => {
                let cluster = &self.config.cluster;
                cluster.get(leader.1 % cluster.len().max(1)).cloned().unwrap_or_default()
            }
        }
    }

    fn remember_leader(&self, address: &str) {
        let mut leader = self.leader.lock().unwrap_or_else(|p| p.into_inner());
        if leader.0.as_deref() != Some(address) {
            tracing::info!(tm_id = %self.config.tm_id, leader = %address, "following new leader");
        }
        leader.0 = Some(address.to_string());
    }

    fn follow_hint(&self, tried: &str, hint: Option<String>) {
        let mut leader = self.leader.lock().unwrap_or_else(|p| p.into_inner());
        match hint {
            Some(hint) if hint != tried => leader.0 = Some(hint),
            _ => {
                leader.0 = None;
                leader.1 = leader.1.wrapping_add(1);
            }
        }
    }

    /// Cancels a deployment the leader called stale, if the token allows.
    fn cancel_stale(&self, job_id: &str, attempt: u32, token: FencingToken) {
        let mut jobs = self.jobs();
        let Some(entry) = jobs.get_mut(job_id) else { return };
        if token < entry.newest {
            tracing::warn!(%job_id, %token, newest = %entry.newest, "refusing stale cancel from a heartbeat answer");
            return;
        }
        entry.newest = token;
        if let Some(running) = entry.deployments.get(&attempt) {
            if !running.deployment.is_terminal() {
                tracing::info!(%job_id, attempt, "cancelling a deployment the leader knows as stale");
                running.deployment.cancel();
            }
        }
    }

    // ---- events -----------------------------------------------------------------------------------------------

    async fn run_event_forwarder(self: Arc<Self>, mut receiver: mpsc::Receiver<TaskEvent>) {
        let mut batch = Vec::new();
        loop {
            let Some(first) = receiver.recv().await else { return };
            batch.push(first);
            while batch.len() < MAX_EVENTS_PER_BATCH {
                match receiver.try_recv() {
                    Ok(event) => batch.push(event),
                    Err(_) => break,
                }
            }
            let events = std::mem::take(&mut batch);
            let count = events.len();
            let request = ToJobManager::TaskEvents { tm_id: self.config.tm_id.clone(), events };
            if self.call_leader(request).await.is_none() {
                self.stats.events_dropped.add(count as u64);
                tracing::warn!(count, "no leader reachable; task events dropped (heartbeats will re-report states)");
            }
        }
    }

    // ---- commands ---------------------------------------------------------------------------------------------

    async fn handle_command(self: Arc<Self>, command: ToTaskManager) -> FromTaskManager {
        let (job_id, token) = command.fencing();
        self.stats.commands.add(1);
        if let Err(newest) = self.accept_token(job_id, token) {
            self.stats.commands_fenced.add(1);
            tracing::warn!(%job_id, command = command.name(), %token, %newest, "refused a command with a stale fencing token");
            return FromTaskManager::Fenced { newest };
        }
        match command {
            ToTaskManager::Deploy { token, job_id, attempt, spec_json, vertices, restore, checkpoint_dir } => {
                let request = DeployRequest { token, job_id, attempt, spec_json, vertices, restore, checkpoint_dir };
                self.deploy(request).await
            }
            ToTaskManager::Cancel { job_id, attempt, .. } => {
                self.with_deployments(&job_id, attempt, |d| d.cancel());
                FromTaskManager::Ok
            }
            ToTaskManager::TriggerCheckpoint { job_id, attempt, checkpoint_id, timestamp_ms, savepoint, .. } => {
                let kind = match savepoint {
                    Some(s) => BarrierKind::Savepoint { dir: PathBuf::from(s.dir), terminate: s.terminate },
                    None => BarrierKind::Checkpoint,
                };
                let barrier = Barrier { checkpoint_id, timestamp_ms, kind };
                let jobs = self.jobs();
                let running = jobs.get(&job_id).and_then(|e| e.deployments.get(&attempt));
                match running.map(|r| r.deployment.trigger_checkpoint(barrier)) {
                    Some(Ok(())) => FromTaskManager::Ok,
                    Some(Err(e)) => FromTaskManager::Error { message: e.to_string() },
                    None => FromTaskManager::Error { message: format!("no deployment {attempt} of job {job_id} here") },
                }
            }
            ToTaskManager::NotifyCheckpoint { job_id, attempt, checkpoint_id, completed, .. } => {
                self.with_deployments(&job_id, Some(attempt), |d| {
                    if completed {
                        d.notify_checkpoint_complete(checkpoint_id)
                    } else {
                        d.notify_checkpoint_aborted(checkpoint_id)
                    }
                });
                FromTaskManager::Ok
            }
            ToTaskManager::Reconcile { job_id, .. } => {
                let reports = self.reports().into_iter().filter(|r| r.job_id == job_id).collect();
                FromTaskManager::Deployments(reports)
            }
        }
    }

    /// Records `token` as the job's newest, or returns the newer one already accepted.
    fn accept_token(&self, job_id: &str, token: FencingToken) -> Result<(), FencingToken> {
        let mut jobs = self.jobs();
        let entry =
            jobs.entry(job_id.to_string()).or_insert_with(|| JobEntry { newest: token, deployments: BTreeMap::new() });
        if token < entry.newest {
            return Err(entry.newest);
        }
        entry.newest = token;
        Ok(())
    }

    fn with_deployments(&self, job_id: &str, attempt: Option<u32>, f: impl Fn(&Deployment)) {
        let jobs = self.jobs();
        let Some(entry) = jobs.get(job_id) else { return };
        for (a, running) in &entry.deployments {
            if attempt.is_none_or(|wanted| wanted == *a) {
                f(&running.deployment);
            }
        }
    }

    async fn deploy(&self, request: DeployRequest) -> FromTaskManager {
        let DeployRequest { token, job_id, attempt, spec_json, vertices: vertex_ids, restore, checkpoint_dir } =
            request;
        let _one_at_a_time = self.deploying.lock().await;
        let newest_deployed = self.jobs().get(&job_id).and_then(|e| e.deployments.keys().next_back().copied());
        match newest_deployed {
            Some(newest) if newest == attempt => return FromTaskManager::Ok,
            Some(newest) if newest > attempt => {
                let message = format!("attempt {attempt} of job {job_id} is older than attempt {newest} running here");
                tracing::warn!(%job_id, attempt, newest, "refusing to deploy an outdated attempt");
                return FromTaskManager::Error { message };
            }
            _ => {}
        }
        let graph = match JobGraph::from_canonical_json(&spec_json) {
            Ok(graph) => Arc::new(graph),
            Err(e) => return FromTaskManager::Error { message: format!("unreadable job spec: {e}") },
        };
        let mut vertices = Vec::new();
        for id in &vertex_ids {
            match graph.vertices.iter().position(|v| &v.id == id) {
                Some(index) => vertices.push(index),
                None => return FromTaskManager::Error { message: format!("job has no vertex {id}") },
            }
        }
        let spec = DeploymentSpec {
            job_id: job_id.clone(),
            attempt,
            graph,
            vertices,
            restore: restore.map(PathBuf::from),
            checkpoint_dir: PathBuf::from(checkpoint_dir),
        };
        let deployment = match Deployment::start(spec, self.events.clone()).await {
            Ok(deployment) => deployment,
            Err(e) => return FromTaskManager::Error { message: e.to_string() },
        };
        let mut jobs = self.jobs();
        let Some(entry) = jobs.get_mut(&job_id) else {
            deployment.cancel();
            return FromTaskManager::Error { message: "job forgotten while deploying".into() };
        };
        // A newer JobMaster may have introduced itself while this one was starting: it must not find a deployment
        // it did not order.
        if token < entry.newest {
            tracing::warn!(%job_id, attempt, %token, newest = %entry.newest, "deployment fenced off while starting");
            deployment.cancel();
            return FromTaskManager::Fenced { newest: entry.newest };
        }
        // An older attempt of the same job is stale by definition: the JobMaster moved on.
        for (old, running) in &entry.deployments {
            if *old < attempt && !running.deployment.is_terminal() {
                running.deployment.cancel();
            }
        }
        entry.deployments.insert(attempt, Running { deployment, terminal_since: None });
        tracing::info!(%job_id, attempt, "deployed");
        FromTaskManager::Ok
    }
}

/// The fields of a `Deploy` command.
struct DeployRequest {
    token: FencingToken,
    job_id: JobId,
    attempt: u32,
    spec_json: String,
    vertices: Vec<String>,
    restore: Option<String>,
    checkpoint_dir: String,
}

impl TaskExecutorHandler for Arc<TaskManager> {
    fn handle(&self, request: ToTaskManager) -> BoxFuture<FromTaskManager> {
        Box::pin(self.clone().handle_command(request))
    }
}

/// Drops deployments that ended more than [`KEEP_TERMINAL`] ago. The job's entry, with its newest token, stays:
/// forgetting the token would let a deposed JobMaster deploy the job again.
fn forget_old_terminal(jobs: &mut BTreeMap<JobId, JobEntry>) {
    let now = Instant::now();
    for entry in jobs.values_mut() {
        for running in entry.deployments.values_mut() {
            if running.terminal_since.is_none() && running.deployment.is_terminal() {
                running.terminal_since = Some(now);
            }
        }
        entry.deployments.retain(|_, r| r.terminal_since.is_none_or(|at| now.duration_since(at) < KEEP_TERMINAL));
    }
}

#[cfg(test)]
mod tests;
