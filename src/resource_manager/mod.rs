//! The ResourceManager: TaskManager liveness and the slot pool, on the leader only.
//!
//! It owns no state of its own that matters after a failover: TaskManagers and slot leases are replicated
//! ([`ClusterState::task_managers`](crate::raft::state::ClusterState), `slot_leases`). What it keeps in memory is
//! liveness: when it last heard from each TaskManager. A new leader starts by giving every registered TaskManager a
//! full timeout of grace, so a failover never declares a healthy TaskManager dead.
//!
//! * **Liveness.** TaskManagers heartbeat to the leader ([`ResourceManager::heartbeat`]) every
//!   `heartbeat_interval`. One silent for `heartbeat_timeout` is unregistered through Raft, which releases its slot
//!   leases; the JobMasters holding them see their slots gone and restart their jobs elsewhere.
//! * **Reconciliation.** A heartbeat lists every deployment the TaskManager runs. Deployments of an older attempt
//!   or of a finished job are answered with "cancel it": nothing runs twice once the leader knows better. Missing
//!   deployments are reported to their JobMasters.
//! * **Slots.** [`ResourceManager::allocate`] serves a JobMaster's request: the [`placement`] policy computes where
//!   against an immutable view of the replicated state, and the lease is committed through Raft before any task is
//!   deployed. Requests are serialized (one applier), so two JobMasters never pick the same free slot.
//!
//! Caveat: liveness is judged on the leader's clock only; a TaskManager partitioned from the leader but not from
//! other replicas is declared dead.

pub mod placement;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use placement::{place, PlacementError, PlacementPolicy, SlotRequest, TaskManagerView};

use crate::cluster::{ClusterError, ReplicaNode};
use crate::raft::state::ClusterState;
use crate::raft::{Command, Epoch, JobId, SlotId, TaskManagerId};
use crate::taskmanager::protocol::{DeploymentReport, FencingToken, FromJobManager};

/// ResourceManager settings.
#[derive(Debug, Clone)]
pub struct RmConfig {
    /// A TaskManager silent for this long is declared dead.
    pub heartbeat_timeout: Duration,
    /// Where slots go.
    pub placement: PlacementPolicy,
}

/// Why slots could not be allocated.
#[derive(Debug, thiserror::Error)]
pub enum AllocationError {
    /// Not enough free slots now; the caller may wait and retry.
    #[error(transparent)]
    Placement(#[from] PlacementError),
    /// The lease could not be committed, or Raft refused it (e.g. the JobMaster's epoch is stale).
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// A deployment a TaskManager should run but did not report, for the job's JobMaster.
#[derive(Debug, Clone)]
pub struct MissingDeployment {
    /// The job.
    pub job_id: JobId,
    /// The TaskManager that did not report it.
    pub tm_id: TaskManagerId,
}

/// The leader's ResourceManager for one term.
pub struct ResourceManager {
    node: Arc<ReplicaNode>,
    term: u64,
    config: RmConfig,
    /// When each TaskManager was last heard from (or first seen by this leader).
    liveness: Mutex<HashMap<TaskManagerId, Instant>>,
    /// Serializes allocations: placement and lease are one step.
    allocation: tokio::sync::Mutex<()>,
}

impl ResourceManager {
    /// A ResourceManager for `term`, granting every registered TaskManager a full timeout of grace.
    pub fn new(node: Arc<ReplicaNode>, term: u64, config: RmConfig) -> Arc<Self> {
        let now = Instant::now();
        let known: Vec<TaskManagerId> = node.state().read(|s| s.cluster.task_managers.keys().cloned().collect());
        let liveness = known.into_iter().map(|id| (id, now)).collect();
        Arc::new(Self { node, term, config, liveness: Mutex::new(liveness), allocation: Default::default() })
    }

    fn liveness(&self) -> std::sync::MutexGuard<'_, HashMap<TaskManagerId, Instant>> {
        self.liveness.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a heartbeat: records liveness and answers with the stale deployments to cancel. Also returns the jobs
    /// whose current deployment should run on this TaskManager but was not reported.
    pub fn heartbeat(&self, tm_id: &str, reports: &[DeploymentReport]) -> (FromJobManager, Vec<MissingDeployment>) {
        let (known, cancel, missing) = self.node.state().read(|s| {
            let cluster = &s.cluster;
            let known = cluster.task_managers.contains_key(tm_id);
            (known, self.stale_deployments(cluster, reports), missing_deployments(cluster, tm_id, reports))
        });
        if known {
            self.liveness().insert(tm_id.to_string(), Instant::now());
        }
        (FromJobManager::HeartbeatAck { term: self.term, known, cancel }, missing)
    }

    fn stale_deployments(
        &self,
        cluster: &ClusterState,
        reports: &[DeploymentReport],
    ) -> Vec<(JobId, u32, FencingToken)> {
        reports
            .iter()
            .filter_map(|report| {
                let job = cluster.job(&report.job_id);
                let current = job.filter(|j| !j.status.is_terminal()).and_then(|j| j.deployment.as_ref());
                let stale = current.is_none_or(|d| d.attempt != report.attempt);
                let epoch = job.map_or(0, |j| j.epoch);
                stale.then(|| (report.job_id.clone(), report.attempt, FencingToken { term: self.term, epoch }))
            })
            .collect()
    }

    /// Whether the TaskManager is registered and was heard from within the timeout.
    pub fn is_alive(&self, tm_id: &str) -> bool {
        let heard = self.liveness().get(tm_id).copied();
        heard.is_some_and(|at| at.elapsed() < self.config.heartbeat_timeout)
            && self.node.state().read(|s| s.cluster.task_managers.contains_key(tm_id))
    }

    /// The address of a registered TaskManager.
    pub fn address_of(&self, tm_id: &str) -> Option<String> {
        self.node.state().read(|s| s.cluster.task_managers.get(tm_id).map(|tm| tm.address.clone()))
    }

    /// Declares TaskManagers dead once silent for the timeout, until the task is dropped (leadership lost).
    pub async fn run_liveness(self: Arc<Self>) {
        let period = (self.config.heartbeat_timeout / 5).max(Duration::from_millis(50));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for tm_id in self.expired_task_managers() {
                self.declare_dead(&tm_id).await;
            }
        }
    }

    fn expired_task_managers(&self) -> Vec<TaskManagerId> {
        let registered: Vec<TaskManagerId> =
            self.node.state().read(|s| s.cluster.task_managers.keys().cloned().collect());
        let now = Instant::now();
        let mut liveness = self.liveness();
        liveness.retain(|id, _| registered.contains(id));
        registered
            .into_iter()
            .filter(|id| {
                let last = *liveness.entry(id.clone()).or_insert(now);
                now.duration_since(last) >= self.config.heartbeat_timeout
            })
            .collect()
    }

    async fn declare_dead(&self, tm_id: &str) {
        let timeout = self.config.heartbeat_timeout;
        let reason = format!("no heartbeat for {timeout:?}");
        tracing::warn!(tm_id, %reason, "declaring TaskManager dead; its slots are released");
        let command =
            Command::UnregisterTaskManager { tm_id: tm_id.to_string(), at_ms: self.node.clock().now_ms(), reason };
        match self.node.write(command).await {
            Ok(_) => {
                self.liveness().remove(tm_id);
            }
            Err(e) => tracing::warn!(tm_id, error = %e, "could not unregister dead TaskManager; retrying"),
        }
    }

    /// Leases slots for a job: one set per connected component (`needs[i]` slots, all on one TaskManager), placed by
    /// the policy among live TaskManagers, avoiding `avoid` when possible. The job's other leases are released.
    pub async fn allocate(
        &self,
        job_id: &str,
        epoch: Epoch,
        needs: &[u32],
        avoid: BTreeSet<TaskManagerId>,
    ) -> Result<Vec<Vec<SlotId>>, AllocationError> {
        let _one_at_a_time = self.allocation.lock().await;
        let views = self.views_for(job_id);
        let request = SlotRequest { job_id: job_id.to_string(), components: needs.to_vec(), avoid };
        let placed = place(&request, &views, self.config.placement)?;
        let slots: Vec<SlotId> = placed.iter().flatten().cloned().collect();
        let at_ms = self.node.clock().now_ms();
        let lease = Command::LeaseSlots { job_id: job_id.to_string(), epoch, slots: slots.clone(), at_ms };
        self.write_checked(lease).await?;
        let others: Vec<SlotId> = self.node.state().read(|s| {
            s.cluster
                .leases_of_job(job_id)
                .into_iter()
                .map(|(slot, _)| slot.clone())
                .filter(|slot| !slots.contains(slot))
                .collect()
        });
        if !others.is_empty() {
            let release = Command::ReleaseSlots { job_id: job_id.to_string(), epoch, slots: others, at_ms };
            self.write_checked(release).await?;
        }
        Ok(placed)
    }

    async fn write_checked(&self, command: Command) -> Result<(), AllocationError> {
        // A deterministic refusal (stale epoch, slot taken) arrives as `ClusterError::Rejected`.
        self.node.write(command).await?;
        Ok(())
    }

    /// The placement view: live TaskManagers with the slots free for this job (free, or already its own).
    fn views_for(&self, job_id: &str) -> Vec<TaskManagerView> {
        let alive: Vec<TaskManagerId> = {
            let liveness = self.liveness();
            liveness
                .iter()
                .filter(|(_, at)| at.elapsed() < self.config.heartbeat_timeout)
                .map(|(id, _)| id.clone())
                .collect()
        };
        self.node.state().read(|s| {
            let cluster = &s.cluster;
            cluster
                .task_managers
                .values()
                .filter(|tm| alive.contains(&tm.id))
                .map(|tm| TaskManagerView {
                    id: tm.id.clone(),
                    zone: tm.zone.clone(),
                    slots: tm.slots,
                    free: (0..tm.slots)
                        .filter(|index| {
                            cluster.slot_leases.get(&SlotId::new(&tm.id, *index)).is_none_or(|l| l.job_id == job_id)
                        })
                        .collect(),
                })
                .collect()
        })
    }
}

/// Jobs whose current deployment has slots on `tm_id` but which the TaskManager did not report.
fn missing_deployments(cluster: &ClusterState, tm_id: &str, reports: &[DeploymentReport]) -> Vec<MissingDeployment> {
    cluster
        .jobs
        .values()
        .filter(|job| !job.status.is_terminal())
        .filter_map(|job| {
            let deployment = job.deployment.as_ref()?;
            let runs_here = deployment.components.iter().flat_map(|c| &c.slots).any(|slot| slot.tm == tm_id);
            let reported = reports.iter().any(|r| r.job_id == job.id && r.attempt == deployment.attempt);
            (runs_here && !reported).then(|| MissingDeployment { job_id: job.id.clone(), tm_id: tm_id.to_string() })
        })
        .collect()
}
