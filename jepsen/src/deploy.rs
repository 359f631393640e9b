//! Local-process deployment: 3 or 5 `jm server` replicas and some `jm taskmanager`s on 127.0.0.1, each with its
//! own data dir and log under the run directory, and every replica-to-replica link through the harness's proxies
//! ([`crate::net`]: each replica dials its peers with `--peer-via`), so partitions need no root.
//!
//! Processes are stopped the way faults stop them: SIGKILL (no flush, no goodbye), SIGSTOP/SIGCONT for pauses.
//! A killed process, or one that ended by itself (a crash fault's failpoint), is restarted on the same data dir with
//! the same arguments. Everything left running is killed when the [`LocalCluster`] is dropped.
//!
//! TaskManagers also come and go as a workload (the `churn-taskmanagers` fault): one leaves, by SIGTERM (its
//! graceful shutdown) or SIGKILL, and stays away ([`LocalCluster::departed`]) across heals until it is brought back
//! on its data dir (same id, same ports); a new one joins with a fresh data dir (a fresh id) and fresh ports.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

/// Ports for the processes the harness starts (and restarts on the same port): below the ephemeral range, so no
/// outgoing connection takes one while its process is down.
pub use jobmanager::cli::local::free_port;

/// The `jm` binary: `$JM_BIN`, else the workspace's release build, else its debug build.
pub fn jm_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("JM_BIN") {
        return Ok(PathBuf::from(path));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    ["release", "debug"]
        .iter()
        .map(|profile| target.join(profile).join("jm"))
        .find(|p| p.exists())
        .ok_or_else(|| anyhow!("no jm binary: build it (cargo build --release) or set JM_BIN"))
}

/// One process of the cluster.
#[derive(Debug)]
pub struct Proc {
    /// Replica id, or TaskManager number.
    pub id: u64,
    /// Arguments it is (re)started with.
    args: Vec<String>,
    /// Its log file.
    pub log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

impl Proc {
    fn start(&mut self, exe: &Path) -> Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = Command::new(exe)
            .args(&self.args)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    /// Whether it runs (possibly paused).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Whether it ended by itself (a crash fault's failpoint, a fatal error); if so, reaps it, so it counts as
    /// stopped and the next heal restarts it.
    pub fn reap_exited(&mut self) -> bool {
        let exited = self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
        if exited {
            self.child = None;
            self.paused = false;
        }
        exited
    }

    /// Whether it is paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    fn signal(&self, signal: libc::c_int) {
        if let Some(child) = &self.child {
            // SAFETY: a signal to a child process we started and have not reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.paused {
                self.signal(libc::SIGCONT);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// SIGTERM (a graceful shutdown), without waiting; [`Proc::reap`] collects the exit.
    pub fn terminate(&mut self) {
        self.resume();
        self.signal(libc::SIGTERM);
    }

    /// Whether it exited (then it is reaped and counts as stopped).
    pub fn reap(&mut self) -> bool {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(_))) | Some(Err(_)) => {
                self.child = None;
                true
            }
            Some(Ok(None)) => false,
            None => true,
        }
    }

    /// SIGSTOP.
    pub fn pause(&mut self) {
        if self.child.is_some() && !self.paused {
            self.signal(libc::SIGSTOP);
            self.paused = true;
        }
    }

    /// SIGCONT.
    pub fn resume(&mut self) {
        if self.paused {
            self.signal(libc::SIGCONT);
            self.paused = false;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A replica's addresses.
#[derive(Debug, Clone)]
pub struct ReplicaAddrs {
    /// Its id.
    pub id: u64,
    /// Client API (gRPC).
    pub api: String,
    /// Raft (peer) service, as advertised in `--peers`.
    pub raft: SocketAddr,
}

/// Settings of a local deployment.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Replicas (3 or 5).
    pub replicas: u64,
    /// TaskManagers.
    pub task_managers: u64,
    /// Slots per TaskManager.
    pub slots: u32,
    /// Extra `jm server` arguments.
    pub server_args: Vec<String>,
}

/// The processes of a local deployment.
pub struct LocalCluster {
    exe: PathBuf,
    /// The run directory.
    pub dir: PathBuf,
    /// The replicas' addresses, by id.
    pub addrs: BTreeMap<u64, ReplicaAddrs>,
    /// The replicas, by id.
    pub replicas: BTreeMap<u64, Proc>,
    /// The TaskManagers, by number, with their HTTP (metrics/overview) address.
    pub task_managers: BTreeMap<u64, (Proc, String)>,
    /// TaskManagers that left (churn): not restarted by [`LocalCluster::heal_processes`] until they come back.
    pub departed: BTreeSet<u64>,
    /// Slots per TaskManager, for the ones that join later.
    slots: u32,
}

impl LocalCluster {
    /// Picks addresses for `options.replicas` replicas (their Raft ports are what the proxies forward to).
    pub fn plan(options: &LocalOptions) -> Result<BTreeMap<u64, ReplicaAddrs>> {
        (1..=options.replicas)
            .map(|id| {
                let api = format!("127.0.0.1:{}", free_port()?);
                let raft: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
                Ok((id, ReplicaAddrs { id, api, raft }))
            })
            .collect()
    }

    /// Starts the replicas (each dialing its peers through `via[id]`) and the TaskManagers.
    pub fn start(
        dir: &Path,
        options: &LocalOptions,
        addrs: BTreeMap<u64, ReplicaAddrs>,
        via: &BTreeMap<u64, BTreeMap<u64, SocketAddr>>,
    ) -> Result<Self> {
        let exe = jm_binary()?;
        std::fs::create_dir_all(dir)?;
        let peers: Vec<String> = addrs.values().map(|a| format!("{}={}/{}", a.id, a.raft, a.api)).collect();
        let peers = peers.join(",");
        let mut replicas = BTreeMap::new();
        for a in addrs.values() {
            let data = dir.join(format!("node-{}", a.id));
            std::fs::create_dir_all(&data)?;
            let mut args = vec![
                "server".to_string(),
                "--id".into(),
                a.id.to_string(),
                "--peers".into(),
                peers.clone(),
                "--data-dir".into(),
                data.display().to_string(),
                "--checkpoint-dir".into(),
                dir.join("checkpoints").display().to_string(),
                "--tm-heartbeat-timeout-ms".into(),
                "3000".into(),
            ];
            if let Some(links) = via.get(&a.id).filter(|l| !l.is_empty()) {
                let list: Vec<String> = links.iter().map(|(peer, addr)| format!("{peer}={addr}")).collect();
                args.extend(["--peer-via".to_string(), list.join(",")]);
            }
            args.extend(options.server_args.iter().cloned());
            let mut proc = Proc { id: a.id, args, log: data.join("server.log"), child: None, paused: false };
            proc.start(&exe)?;
            replicas.insert(a.id, proc);
        }
        let mut cluster = Self {
            exe,
            dir: dir.to_path_buf(),
            addrs,
            replicas,
            task_managers: BTreeMap::new(),
            departed: BTreeSet::new(),
            slots: options.slots,
        };
        for _ in 0..options.task_managers {
            cluster.add_task_manager()?;
        }
        Ok(cluster)
    }

    /// Starts a new TaskManager: the next number, a fresh data dir (so a fresh id) and fresh ports. Returns its
    /// number and HTTP address.
    pub fn add_task_manager(&mut self) -> Result<(u64, String)> {
        let n = self.task_managers.keys().next_back().map_or(1, |last| last + 1);
        let data = self.dir.join(format!("tm-{n}"));
        std::fs::create_dir_all(&data)?;
        let cluster: Vec<String> = self.addrs.values().map(|a| a.api.clone()).collect();
        let http = format!("127.0.0.1:{}", free_port()?);
        let args = vec![
            "taskmanager".to_string(),
            "--cluster".into(),
            cluster.join(","),
            "--listen".into(),
            format!("127.0.0.1:{}", free_port()?),
            "--http-listen".into(),
            http.clone(),
            "--slots".into(),
            self.slots.to_string(),
            "--heartbeat-ms".into(),
            "200".into(),
            "--data-dir".into(),
            data.display().to_string(),
        ];
        let mut proc = Proc { id: n, args, log: data.join("taskmanager.log"), child: None, paused: false };
        proc.start(&self.exe)?;
        self.task_managers.insert(n, (proc, http.clone()));
        Ok((n, http))
    }

    /// TaskManager `n` leaves: SIGTERM (graceful; reap it with [`LocalCluster::reap_departed`]) or SIGKILL. It
    /// stays away until [`LocalCluster::come_back`].
    pub fn leave(&mut self, n: u64, graceful: bool) {
        if let Some((p, _)) = self.task_managers.get_mut(&n) {
            if graceful {
                p.terminate();
            } else {
                p.kill();
            }
            self.departed.insert(n);
        }
    }

    /// Reaps departed TaskManagers that exited; SIGKILLs those still running. Returns the ones that had to be killed.
    pub fn reap_departed(&mut self) -> Vec<u64> {
        let mut killed = Vec::new();
        for n in &self.departed {
            if let Some((p, _)) = self.task_managers.get_mut(n) {
                if !p.reap() {
                    p.kill();
                    killed.push(*n);
                }
            }
        }
        killed
    }

    /// A departed TaskManager comes back, on its data dir (same id) and ports.
    pub fn come_back(&mut self, n: u64) -> Result<()> {
        self.reap_departed();
        self.departed.remove(&n);
        self.restart_task_manager(n)
    }

    /// Numbers of the TaskManagers that have not left.
    pub fn present_task_managers(&self) -> Vec<u64> {
        self.task_managers.keys().copied().filter(|n| !self.departed.contains(n)).collect()
    }

    /// Client API addresses, by replica id.
    pub fn api_addrs(&self) -> BTreeMap<u64, String> {
        self.addrs.iter().map(|(id, a)| (*id, a.api.clone())).collect()
    }

    /// Restarts replica `id` if it is not running.
    pub fn restart(&mut self, id: u64) -> Result<()> {
        let exe = self.exe.clone();
        match self.replicas.get_mut(&id) {
            Some(p) => {
                p.reap_exited();
                if p.is_running() {
                    Ok(())
                } else {
                    p.start(&exe)
                }
            }
            None => Ok(()),
        }
    }

    /// Restarts TaskManager `n` if it is not running.
    pub fn restart_task_manager(&mut self, n: u64) -> Result<()> {
        let exe = self.exe.clone();
        match self.task_managers.get_mut(&n) {
            Some((p, _)) if !p.is_running() => p.start(&exe),
            _ => Ok(()),
        }
    }

    /// Resumes every paused process and restarts every stopped one.
    pub fn heal_processes(&mut self) -> Result<()> {
        for p in self.replicas.values_mut() {
            p.resume();
        }
        let ids: Vec<u64> = self.replicas.keys().copied().collect();
        for id in ids {
            self.restart(id)?;
        }
        for n in self.present_task_managers() {
            self.restart_task_manager(n)?;
        }
        Ok(())
    }

    /// Every log file, named (`node-1`, `tm-2`), with its contents.
    pub fn logs(&self) -> Vec<(String, String)> {
        let replicas = self.replicas.values().map(|p| (format!("node-{}", p.id), p.log.clone()));
        let tms = self.task_managers.values().map(|(p, _)| (format!("tm-{}", p.id), p.log.clone()));
        replicas.chain(tms).map(|(name, path)| (name, std::fs::read_to_string(path).unwrap_or_default())).collect()
    }

    /// Kills everything.
    pub fn stop(&mut self) {
        for p in self.replicas.values_mut() {
            p.kill();
        }
        for (p, _) in self.task_managers.values_mut() {
            p.kill();
        }
    }
}

/// How long a pause must last to exceed a leader's lease (the default election maximum is 300 ms).
pub const PAST_LEASE: Duration = Duration::from_millis(1500);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_that_ended_by_itself_is_reaped_and_counts_as_stopped() {
        let dir = tempfile_dir();
        let mut proc = Proc {
            id: 1,
            args: vec!["-c".into(), "exit 86".into()],
            log: dir.join("sh.log"),
            child: None,
            paused: false,
        };
        proc.start(Path::new("/bin/sh")).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !proc.reap_exited() {
            assert!(std::time::Instant::now() < deadline, "sh did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!proc.is_running());
        // A running one is left alone.
        proc.args = vec!["-c".into(), "sleep 30".into()];
        proc.start(Path::new("/bin/sh")).unwrap();
        assert!(!proc.reap_exited() && proc.is_running());
        proc.kill();
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("jepsen-deploy-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
