//! Leader-only services: the ResourceManager and the JobMasters start when this replica becomes leader and stop the
//! moment it is not (Nomad's `establishLeadership` / `revokeLeadership`).
//!
//! [`LeaderServices`] watches the [`LeaderSupervisor`](crate::cluster::LeaderSupervisor)'s verdict. On `Some(term)`
//! (this replica leads and has applied everything committed before its term) it starts, for that term, a
//! [`ResourceManager`], a scanner that gives every live job of the replicated state a JobMaster, and the savepoint
//! disposal service ([`checkpoint::disposal::run`](crate::checkpoint::disposal::run)). On `None` it
//! aborts all of them at once: their tasks are dropped mid-await, so a deposed leader issues nothing more. Anything
//! they had started is fenced anyway: the next leader's JobMasters take new epochs, which the state machine and the
//! TaskManagers enforce.
//!
//! It also answers the TaskManagers ([`JobManagerHandler`]): registrations on any replica (a replicated write),
//! heartbeats and task events on the leader only; a follower answers `NotLeader` with the leader's address.
//!
//! It keeps the live view of every subtask ([`runtime`]) from the heartbeats, for the REST API and the dashboard.
//!
//! Caveat: leader services are rebuilt from scratch on every activation; nothing in memory survives a term.

pub mod runtime;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::Instrument;

use crate::cluster::ReplicaNode;
use crate::job_master::{
    run_job_master, JobMasterConfig, JobMasterContext, JobMasterMessage, JobMasterRegistry, INBOX_CAPACITY,
};
use crate::raft::{Command, JobId};
use crate::resource_manager::{ResourceManager, RmConfig};
use crate::taskmanager::protocol::{
    BoxFuture, FromJobManager, JobManagerHandler, TaskEvent, TaskExecutorGateway, ToJobManager,
};
use runtime::{JobRuntime, RuntimeView};

/// How often the leader looks for live jobs without a JobMaster.
const JOB_SCAN_INTERVAL: Duration = Duration::from_millis(100);
/// How long before a JobMaster that stopped while its job is live is started again.
const JOB_MASTER_RESTART_BACKOFF: Duration = Duration::from_secs(2);

/// Settings of the leader-only services.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    /// ResourceManager settings.
    pub rm: RmConfig,
    /// JobMaster settings.
    pub job_master: JobMasterConfig,
}

/// The services of one term.
struct ActiveTerm {
    term: u64,
    rm: Arc<ResourceManager>,
    registry: Arc<JobMasterRegistry>,
    runtime: RuntimeView,
}

/// Starts and stops the leader-only services with leadership, and answers TaskManagers.
pub struct LeaderServices {
    node: Arc<ReplicaNode>,
    config: LeaderConfig,
    gateway: Arc<dyn TaskExecutorGateway>,
    active: RwLock<Option<Arc<ActiveTerm>>>,
}

impl LeaderServices {
    /// Creates the services and starts watching leadership.
    pub fn start(node: Arc<ReplicaNode>, config: LeaderConfig, gateway: Arc<dyn TaskExecutorGateway>) -> Arc<Self> {
        let services = Arc::new(Self { node, config, gateway, active: RwLock::new(None) });
        tokio::spawn(services.clone().supervise());
        services
    }

    fn active(&self) -> Option<Arc<ActiveTerm>> {
        self.active.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_active(&self, active: Option<Arc<ActiveTerm>>) {
        *self.active.write().unwrap_or_else(|p| p.into_inner()) = active;
    }

    /// The live view of a job's subtasks, if this replica runs the leader services now.
    pub fn job_runtime(&self, job_id: &str) -> Option<JobRuntime> {
        self.active().map(|a| a.runtime.job(job_id, Instant::now()))
    }

    /// How many JobMasters run here (0 on a follower).
    pub fn job_masters(&self) -> usize {
        self.active().map_or(0, |a| a.registry.len())
    }

    async fn supervise(self: Arc<Self>) {
        let mut verdicts = self.node.supervisor().subscribe();
        let mut running: Option<(u64, JoinHandle<()>)> = None;
        loop {
            let verdict = *verdicts.borrow_and_update();
            match verdict {
                Some(term) if running.as_ref().is_some_and(|(t, _)| *t == term) => {}
                Some(term) => {
                    self.revoke(running.take());
                    running = Some((term, self.establish(term)));
                }
                None => self.revoke(running.take()),
            }
            if verdicts.changed().await.is_err() {
                self.revoke(running.take());
                return;
            }
        }
    }

    /// Starts the ResourceManager and the JobMasters of `term`.
    fn establish(self: &Arc<Self>, term: u64) -> JoinHandle<()> {
        tracing::info!(term, "establishing leadership: starting ResourceManager and JobMasters");
        let rm = ResourceManager::new(self.node.clone(), term, self.config.rm.clone());
        let registry = Arc::new(JobMasterRegistry::default());
        let active =
            Arc::new(ActiveTerm { term, rm: rm.clone(), registry: registry.clone(), runtime: RuntimeView::default() });
        let ctx = Arc::new(JobMasterContext {
            node: self.node.clone(),
            term,
            rm,
            gateway: self.gateway.clone(),
            config: self.config.job_master.clone(),
        });
        self.set_active(Some(active.clone()));
        let span = tracing::info_span!("leader", node_id = self.node.id, term);
        tokio::spawn(lead(active, ctx).instrument(span))
    }

    /// Stops everything of the previous term at once.
    fn revoke(&self, running: Option<(u64, JoinHandle<()>)>) {
        if let Some((term, handle)) = running {
            tracing::info!(term, "revoking leadership: stopping ResourceManager and JobMasters");
            self.set_active(None);
            handle.abort();
        }
    }

    async fn handle_request(self: Arc<Self>, request: ToJobManager) -> FromJobManager {
        match request {
            ToJobManager::Register { tm_id, address, slots, zone } => self.register(tm_id, address, slots, zone).await,
            ToJobManager::Heartbeat { tm_id, deployments } => match self.active() {
                Some(active) => heartbeat(&active, &tm_id, deployments),
                None => self.not_leader(),
            },
            ToJobManager::TaskEvents { events, .. } => match self.active() {
                Some(active) => deliver_events(&active, events),
                None => self.not_leader(),
            },
        }
    }

    async fn register(&self, tm_id: String, address: String, slots: u32, zone: Option<String>) -> FromJobManager {
        let at_ms = self.node.clock().now_ms();
        let command = Command::RegisterTaskManager { tm_id: tm_id.clone(), address, slots, zone, at_ms };
        match self.node.write(command).await {
            Ok(_) => {
                tracing::info!(%tm_id, slots, "TaskManager registered");
                FromJobManager::Registered { term: self.node.metrics().current_term }
            }
            Err(e) => FromJobManager::Error { message: e.to_string() },
        }
    }

    fn not_leader(&self) -> FromJobManager {
        let leader_api =
            self.node.current_leader().and_then(|id| self.node.members().get(&id).map(|n| n.api_addr.clone()));
        FromJobManager::NotLeader { leader_api }
    }
}

impl JobManagerHandler for Arc<LeaderServices> {
    fn handle(&self, request: ToJobManager) -> BoxFuture<FromJobManager> {
        Box::pin(self.clone().handle_request(request))
    }
}

fn heartbeat(
    active: &ActiveTerm,
    tm_id: &str,
    deployments: Vec<crate::taskmanager::protocol::DeploymentReport>,
) -> FromJobManager {
    let (reply, missing) = active.rm.heartbeat(tm_id, &deployments);
    if matches!(reply, FromJobManager::HeartbeatAck { known: true, .. }) {
        active.runtime.record(tm_id, &deployments, Instant::now());
    } else {
        active.runtime.forget_task_manager(tm_id);
    }
    for report in deployments {
        let job_id = report.job_id.clone();
        active.registry.deliver(&job_id, JobMasterMessage::Report { tm_id: tm_id.to_string(), report });
    }
    for m in missing {
        active.registry.deliver(&m.job_id, JobMasterMessage::Missing { tm_id: m.tm_id });
    }
    reply
}

fn deliver_events(active: &ActiveTerm, events: Vec<TaskEvent>) -> FromJobManager {
    for event in events {
        let job_id = event.job_id().to_string();
        if !active.registry.deliver(&job_id, JobMasterMessage::TaskEvent(event)) {
            tracing::debug!(%job_id, "task event for a job without a JobMaster here; dropped");
        }
    }
    FromJobManager::EventsAccepted
}

/// The body of a term: liveness checks, savepoint disposals, and a JobMaster for every live job.
async fn lead(active: Arc<ActiveTerm>, ctx: Arc<JobMasterContext>) {
    let mut tasks = JoinSet::new();
    tasks.spawn(record_leader_change(ctx.node.clone(), active.term));
    tasks.spawn(active.rm.clone().run_liveness());
    tasks.spawn(crate::checkpoint::disposal::run(ctx.node.clone()).instrument(tracing::info_span!("disposal")));
    let mut stopped_at: HashMap<JobId, Instant> = HashMap::new();
    let mut scan = tokio::time::interval(JOB_SCAN_INTERVAL);
    loop {
        scan.tick().await;
        while tasks.try_join_next().is_some() {}
        active.registry.prune();
        for job_id in live_jobs_without_master(&ctx, &active.registry) {
            if stopped_at.get(&job_id).is_some_and(|at| at.elapsed() < JOB_MASTER_RESTART_BACKOFF) {
                continue;
            }
            stopped_at.insert(job_id.clone(), Instant::now());
            let (tx, rx) = tokio::sync::mpsc::channel(INBOX_CAPACITY);
            if active.registry.insert(&job_id, tx) {
                tracing::debug!(%job_id, term = active.term, "starting JobMaster");
                let span = tracing::info_span!("job_master", %job_id);
                tasks.spawn(run_job_master(ctx.clone(), job_id, rx).instrument(span));
            }
        }
    }
}

/// Adds this term to the cluster's replicated history of leader changes, with how long the cluster went without a
/// leader as this replica saw it. Best effort: the history is for people; a leader that cannot commit it is about to
/// lose its term anyway.
async fn record_leader_change(node: Arc<ReplicaNode>, term: u64) {
    let leaderless_ms = node.ms_since_other_leader_contact();
    let command = Command::RecordLeaderChange { term, leader: node.id, at_ms: node.clock().now_ms(), leaderless_ms };
    match node.write(command).await {
        Ok(_) => tracing::info!(term, ?leaderless_ms, "recorded the leader change"),
        // A leader restored within its term after a restart finds its term already recorded: nothing changed.
        Err(crate::cluster::ClusterError::Rejected(e)) => {
            tracing::info!(term, reason = %e, "leader change already recorded for this term")
        }
        Err(e) => tracing::warn!(term, error = %e, "could not record the leader change"),
    }
}

fn live_jobs_without_master(ctx: &JobMasterContext, registry: &JobMasterRegistry) -> Vec<JobId> {
    ctx.node.state().read(|s| {
        s.cluster
            .jobs
            .values()
            .filter(|job| !job.status.is_terminal() && !registry.contains(&job.id))
            .map(|job| job.id.clone())
            .collect()
    })
}
