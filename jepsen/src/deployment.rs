//! What the run loop and the nemesis drive, whatever the cluster runs on: a [`Deployment`] owns the replicas, the
//! TaskManagers and the network between the replicas, and carries out every fault of [`crate::nemesis::Fault`].
//!
//! Two implementations: [`LocalDeployment`] (processes on 127.0.0.1, links through the harness's proxies,
//! [`crate::deploy`] and [`crate::net`]) and [`crate::docker::DockerCluster`] (containers on a private network, faults
//! through `docker kill/start/pause` and iptables/tc in the containers' namespaces).
//!
//! # Contract
//!
//! * Replica ids are `1..=n`; TaskManager numbers `1..=m`. Addresses are reachable from the harness's host.
//! * A killed or paused process stays so until [`Deployment::heal_processes`], which restarts what was killed (on
//!   its data dir, with its arguments) and resumes what was paused; nothing else is restarted (a process that
//!   exits by itself stays down, so its log shows why).
//! * Network faults follow [`crate::net`]'s model: one blocking fault and one link fault at a time, each replacing
//!   the previous one of its kind; [`Deployment::heal_network`] clears both. They return the description recorded
//!   in the history.
//! * Methods block (the Docker mode runs commands): call them off the async workers (`spawn_blocking`).
//! * [`Deployment::stop`] kills everything and makes [`Deployment::logs`] final; it is idempotent.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use rand::rngs::StdRng;

use crate::deploy::LocalCluster;
use crate::nemesis::Fault;
use crate::net::Net;

/// A cluster the nemesis can fault. See the module docs for the contract.
pub trait Deployment: Send {
    /// `local` or `docker`.
    fn mode(&self) -> &'static str;
    /// Client API addresses, by replica id.
    fn api_addrs(&self) -> BTreeMap<u64, String>;
    /// TaskManagers' HTTP (metrics/overview) addresses, by number.
    fn task_manager_http(&self) -> BTreeMap<u64, String>;
    /// Why `fault` cannot be carried out here, if it cannot.
    fn unsupported(&self, fault: Fault) -> Option<String>;
    /// What was deployed where, for the report directory's `deployment.json`.
    fn describe(&self) -> serde_json::Value;

    /// SIGKILL replica `id`.
    fn kill(&mut self, id: u64) -> Result<()>;
    /// Freeze replica `id` (SIGSTOP, or the cgroup freezer).
    fn pause(&mut self, id: u64) -> Result<()>;
    /// SIGKILL every replica at once.
    fn kill_all(&mut self) -> Result<()>;
    /// SIGKILL TaskManager `n`.
    fn kill_task_manager(&mut self, n: u64) -> Result<()>;
    /// Resume what is paused, restart what was killed.
    fn heal_processes(&mut self) -> Result<()>;
    /// Whether replica `id` has ended by itself (a crash fault's failpoint fired); it is then restarted at the heal
    /// like a killed one.
    fn exited(&mut self, id: u64) -> bool;

    /// TaskManagers taking part now (started and not departed by churn).
    fn present_task_managers(&self) -> Vec<u64> {
        self.task_manager_http().into_keys().collect()
    }
    /// TaskManagers that left by churn and stay away across heals.
    fn departed_task_managers(&self) -> Vec<u64> {
        Vec::new()
    }
    /// Churn: TaskManager `n` leaves, by SIGTERM (its graceful shutdown) if `graceful`, else SIGKILL.
    fn leave_task_manager(&mut self, n: u64, graceful: bool) -> Result<()> {
        let _ = (n, graceful);
        anyhow::bail!("TaskManager churn is not supported in {} mode", self.mode())
    }
    /// Churn: a new TaskManager (fresh id, fresh ports) joins; its number and HTTP address.
    fn add_task_manager(&mut self) -> Result<(u64, String)> {
        anyhow::bail!("TaskManager churn is not supported in {} mode", self.mode())
    }
    /// Churn: departed TaskManager `n` comes back on its data dir.
    fn return_task_manager(&mut self, n: u64) -> Result<()> {
        let _ = n;
        anyhow::bail!("TaskManager churn is not supported in {} mode", self.mode())
    }
    /// SIGKILLs departed TaskManagers still running (a SIGTERM not obeyed within the hold); their numbers.
    fn reap_departed(&mut self) -> Vec<u64> {
        Vec::new()
    }

    /// Cut `id` off from every other replica.
    fn isolate(&mut self, id: u64) -> Result<String>;
    /// A random majority and minority.
    fn majority_minority(&mut self, rng: &mut StdRng) -> Result<String>;
    /// Overlapping majorities (Jepsen's majorities ring).
    fn ring(&mut self, rng: &mut StdRng) -> Result<String>;
    /// Flow `from→to` blocked, the other direction passing.
    fn one_way(&mut self, from: u64, to: u64) -> Result<String>;
    /// Every replica link delayed `base + uniform(0, jitter)`.
    fn delay(&mut self, base: Duration, jitter: Duration) -> Result<String>;
    /// Every replica link loses packets with `probability` (the local mode, which cannot lose TCP bytes, stalls a
    /// chunk for `stall` instead).
    fn loss(&mut self, probability: f64, stall: Duration) -> Result<String>;
    /// Every link back to passing.
    fn heal_network(&mut self) -> Result<()>;

    /// Kill everything; the logs are final afterwards.
    fn stop(&mut self);
    /// Every process's log, named `node-N` or `tm-N`.
    fn logs(&self) -> Vec<(String, String)>;
}

/// The local-process deployment: [`LocalCluster`] and the proxy grid [`Net`] in front of its replicas.
pub struct LocalDeployment {
    /// The processes.
    pub cluster: LocalCluster,
    /// The proxies between the replicas.
    pub net: Net,
}

impl Deployment for LocalDeployment {
    fn mode(&self) -> &'static str {
        "local"
    }

    fn api_addrs(&self) -> BTreeMap<u64, String> {
        self.cluster.api_addrs()
    }

    fn task_manager_http(&self) -> BTreeMap<u64, String> {
        self.cluster.task_managers.iter().map(|(n, (_, http))| (*n, http.clone())).collect()
    }

    fn unsupported(&self, _fault: Fault) -> Option<String> {
        None
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "mode": "local",
            "replicas": self.api_addrs(),
            "task_managers": self.task_manager_http(),
            "links": self.net.describe(),
        })
    }

    fn kill(&mut self, id: u64) -> Result<()> {
        self.cluster.replicas.get_mut(&id).with_context(|| format!("no replica {id}"))?.kill();
        Ok(())
    }

    fn pause(&mut self, id: u64) -> Result<()> {
        self.cluster.replicas.get_mut(&id).with_context(|| format!("no replica {id}"))?.pause();
        Ok(())
    }

    fn kill_all(&mut self) -> Result<()> {
        self.cluster.replicas.values_mut().for_each(|p| p.kill());
        Ok(())
    }

    fn kill_task_manager(&mut self, n: u64) -> Result<()> {
        self.cluster.task_managers.get_mut(&n).with_context(|| format!("no TaskManager {n}"))?.0.kill();
        Ok(())
    }

    fn heal_processes(&mut self) -> Result<()> {
        self.cluster.heal_processes()
    }

    fn exited(&mut self, id: u64) -> bool {
        self.cluster.replicas.get_mut(&id).is_some_and(|p| p.reap_exited())
    }

    fn present_task_managers(&self) -> Vec<u64> {
        self.cluster.present_task_managers()
    }

    fn departed_task_managers(&self) -> Vec<u64> {
        self.cluster.departed.iter().copied().collect()
    }

    fn leave_task_manager(&mut self, n: u64, graceful: bool) -> Result<()> {
        self.cluster.leave(n, graceful);
        Ok(())
    }

    fn add_task_manager(&mut self) -> Result<(u64, String)> {
        self.cluster.add_task_manager()
    }

    fn return_task_manager(&mut self, n: u64) -> Result<()> {
        self.cluster.come_back(n)
    }

    fn reap_departed(&mut self) -> Vec<u64> {
        self.cluster.reap_departed()
    }

    fn isolate(&mut self, id: u64) -> Result<String> {
        Ok(self.net.isolate(id))
    }

    fn majority_minority(&mut self, rng: &mut StdRng) -> Result<String> {
        Ok(self.net.majority_minority(rng).description)
    }

    fn ring(&mut self, rng: &mut StdRng) -> Result<String> {
        Ok(self.net.ring(rng).description)
    }

    fn one_way(&mut self, from: u64, to: u64) -> Result<String> {
        Ok(self.net.one_way(from, to))
    }

    fn delay(&mut self, base: Duration, jitter: Duration) -> Result<String> {
        Ok(self.net.delay(base, jitter))
    }

    fn loss(&mut self, probability: f64, stall: Duration) -> Result<String> {
        Ok(self.net.loss(probability, stall))
    }

    fn heal_network(&mut self) -> Result<()> {
        self.net.heal();
        Ok(())
    }

    fn stop(&mut self) {
        self.cluster.stop();
    }

    fn logs(&self) -> Vec<(String, String)> {
        self.cluster.logs()
    }
}
