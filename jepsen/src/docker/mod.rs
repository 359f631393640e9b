//! The Docker deployment (`jepsen run --mode docker`): every replica and TaskManager in its own container on a
//! private, internal network, faults driven from the host. It owns the containers, the network, the image (see
//! [`image`]) and the kernel state of the containers' network namespaces (see [`links`]).
//!
//! # Layout
//!
//! A run-unique prefix `jepsen-<pid>-<n>` names everything: the network `<prefix>-net` (`--internal`, a /24 the
//! harness picks among free ones, so addresses are fixed and survive restarts), the replicas `<prefix>-node-N` at
//! `.10+N` and the TaskManagers `<prefix>-tm-N` at `.100+N`. Every object carries the labels
//! `io.jobmanager.jepsen=1`, `io.jobmanager.jepsen.run=<prefix>` and `io.jobmanager.jepsen.pid=<harness pid>`.
//! Each container's data dir is the run directory's `node-N/` or `tm-N/` mounted at `/data`, and every container
//! mounts the run's `checkpoints/` at `/checkpoints` (the shared checkpoint storage). The clients run on the host and
//! reach the containers over the bridge, which an internal network still gives the host.
//!
//! # Faults
//!
//! | Fault | Docker equivalent |
//! | --- | --- |
//! | kill | `docker kill -s KILL`; `docker start` at the heal (same container, data dir and address) |
//! | pause | `docker pause` (cgroup freezer: every thread stopped at once); `docker unpause` at the heal |
//! | restart-all | one `docker kill -s KILL` naming every replica; one `docker start` at the heal |
//! | partitions, one-way | iptables `DROP` on the receiver's `INPUT` per blocked peer, via `nsenter -t PID -n` |
//! | loss | iptables `statistic` random `DROP` on every replica link (real loss: TCP retransmits) |
//! | delay | tc `netem` on each replica's egress to its peers; without `sch_netem`, iptables `NFQUEUE` and a [`delayer`] |
//!
//! # Invariants and caveats
//!
//! * Every container is removed when the run ends, fails ([`Drop`]) or is interrupted ([`abort_run`] from the
//!   signal handler, which saves the logs first); objects of earlier runs whose harness is gone are removed at
//!   start ([`remove_stale`]).
//! * `docker start` gives a container a fresh network namespace: rules are gone. The nemesis heals the network
//!   before it restarts anything; [`DockerCluster`] also re-applies the current state to a restarted container.
//! * The logs are `docker logs` of each container (every incarnation, stdout and stderr), written to
//!   `node-N/server.log` / `tm-N/taskmanager.log` when the cluster stops.
//! * Needs root on the host (nsenter into the containers' namespaces) and `docker`, `nsenter`, `iptables-restore`
//!   and `tc` there; the containers need nothing but `jm`.

pub mod delayer;
pub mod image;
pub mod links;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;

use crate::deployment::Deployment;
use crate::nemesis::Fault;
use delayer::Delayer;
use links::{DelayMethod, Links};

/// The label every object of the harness carries.
pub const LABEL: &str = "io.jobmanager.jepsen";
/// The label naming the run (its prefix).
pub const RUN_LABEL: &str = "io.jobmanager.jepsen.run";
/// The label naming the harness process that owns the object.
pub const PID_LABEL: &str = "io.jobmanager.jepsen.pid";

/// The replicas' client API port.
pub const API_PORT: u16 = 6000;
/// The replicas' Raft port.
pub const RAFT_PORT: u16 = 7000;
/// The TaskManagers' RPC port.
pub const TM_PORT: u16 = 6100;
/// The TaskManagers' HTTP port.
pub const TM_HTTP_PORT: u16 = 8081;

/// How many times a `docker pause` is tried before the fault is reported as not applied.
const PAUSE_ATTEMPTS: u64 = 3;
/// TaskManagers a run can start (initial ones and churn's newcomers): `.101` to `.250` of the run's /24.
const MAX_TASK_MANAGERS: u64 = 150;

/// What can go wrong with Docker itself; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// No `docker`, or no daemon answering.
    #[error("docker not available: {0}")]
    NotAvailable(String),
    /// A host tool the faults need is missing.
    #[error("{0} not found on the host; the docker mode needs docker, nsenter, iptables-restore and tc (iproute2)")]
    MissingTool(String),
    /// Not root.
    #[error("the docker mode needs root (it enters the containers' network namespaces with nsenter)")]
    NotRoot,
    /// No static `jm` found.
    #[error("no statically linked jm: {0}")]
    NoStaticBinary(String),
    /// The `jm` given is dynamically linked.
    #[error("{0} is dynamically linked and cannot run in an empty image; build it with `{1}` and set JM_BIN")]
    NotStatic(PathBuf, String),
    /// `docker import` or its staging failed.
    #[error("image build failed: {0}")]
    ImageBuild(String),
    /// A command failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it said.
        stderr: String,
    },
    /// No free /24 for the network.
    #[error("cannot create the network: {0}")]
    Network(String),
}

/// Runs a command to completion; its stdout, or what it said when it failed.
fn run_command(command: &mut Command, stdin: Option<&str>) -> Result<String, DockerError> {
    let line = format!("{command:?}").replace('"', "");
    let program = command.get_program().to_string_lossy().into_owned();
    let missing = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => DockerError::MissingTool(program.clone()),
        _ => DockerError::Command { command: line.clone(), status: "not started".into(), stderr: e.to_string() },
    };
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    command.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = command.spawn().map_err(missing)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write as _;
        let _ = pipe.write_all(text.as_bytes());
    }
    let output = child.wait_with_output().map_err(|e| DockerError::Command {
        command: line.clone(),
        status: "lost".into(),
        stderr: e.to_string(),
    })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(DockerError::Command {
            command: line,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// `docker ARGS`.
pub fn docker(args: &[&str]) -> Result<String, DockerError> {
    run_command(Command::new("docker").args(args), None)
}

/// The command line that runs `program args` in the network namespace of process `pid`.
pub fn nsenter_command(pid: u32, program: &str, args: &[String]) -> Vec<String> {
    let mut line = vec!["nsenter".to_string(), "-t".into(), pid.to_string(), "-n".into(), program.to_string()];
    line.extend(args.iter().cloned());
    line
}

fn nsenter(pid: u32, program: &str, args: &[String], stdin: Option<&str>) -> Result<String, DockerError> {
    let line = nsenter_command(pid, program, args);
    run_command(Command::new(&line[0]).args(&line[1..]), stdin)
}

/// Checks what the docker mode needs on the host: root, a daemon, nsenter, iptables-restore, tc.
pub fn preflight() -> Result<String, DockerError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(DockerError::NotRoot);
    }
    let version = match docker(&["version", "--format", "{{.Server.Version}}"]) {
        Ok(v) => v.trim().to_string(),
        Err(DockerError::MissingTool(_)) => return Err(DockerError::NotAvailable("no docker command".into())),
        Err(DockerError::Command { stderr, .. }) => return Err(DockerError::NotAvailable(stderr)),
        Err(e) => return Err(DockerError::NotAvailable(e.to_string())),
    };
    for tool in ["nsenter", "iptables-restore", "tc"] {
        let found = std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
            .unwrap_or(false)
            || ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].iter().any(|dir| Path::new(dir).join(tool).is_file());
        if !found {
            return Err(DockerError::MissingTool(tool.into()));
        }
    }
    Ok(version)
}

/// Removes every container and network of run `prefix`. Errors are ignored: this is the cleanup of last resort.
pub fn remove_run(prefix: &str) {
    remove_labelled(&format!("{RUN_LABEL}={prefix}"), |_| true);
}

/// The log file, under the run directory, of the container named `name` in run `prefix`: `node-N/server.log` or
/// `tm-N/taskmanager.log`.
pub fn log_path(dir: &Path, prefix: &str, name: &str) -> Option<PathBuf> {
    let role = name.strip_prefix(prefix)?.strip_prefix('-')?;
    let file = if role.starts_with("node-") {
        "server.log"
    } else if role.starts_with("tm-") {
        "taskmanager.log"
    } else {
        return None;
    };
    Some(dir.join(role).join(file))
}

/// Kills every container of run `prefix`, writes their `docker logs` into `dir` (as the end of a run does), and
/// removes them and the network: what an interrupted run does before it exits.
pub fn abort_run(prefix: &str, dir: &Path) {
    let label = format!("label={RUN_LABEL}={prefix}");
    let names = docker(&["ps", "-a", "--filter", &label, "--format", "{{.Names}}"]).unwrap_or_default();
    let names: Vec<&str> = names.lines().filter(|n| !n.is_empty()).collect();
    if !names.is_empty() {
        let mut kill = vec!["kill", "--signal", "KILL"];
        kill.extend(&names);
        let _ = docker(&kill);
    }
    for name in names {
        if let Some(path) = log_path(dir, prefix, name) {
            save_log(name, &path);
        }
    }
    remove_run(prefix);
}

/// Writes `docker logs NAME` (stdout and stderr, every incarnation) to `path`; leaves `path` alone when the
/// container is gone (an earlier save stands).
fn save_log(name: &str, path: &Path) {
    let _ = std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")));
    let partial = path.with_extension("log.partial");
    let Ok(file) = std::fs::File::create(&partial) else { return };
    let Ok(copy) = file.try_clone() else { return };
    let status = Command::new("docker").args(["logs", name]).stdout(copy).stderr(file).status();
    if status.is_ok_and(|s| s.success()) {
        let _ = std::fs::rename(&partial, path);
    } else {
        let _ = std::fs::remove_file(&partial);
    }
}

/// Removes the containers and networks of earlier runs whose harness process is gone. Returns how many objects.
pub fn remove_stale() -> usize {
    let own = std::process::id().to_string();
    let alive = |pid: &str| -> bool {
        pid == own
            || std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim().starts_with("jepsen"))
    };
    remove_labelled(LABEL, |pid| !alive(pid))
}

/// Removes the containers, then the networks, carrying `filter` (a `--filter label=` value) whose owning pid
/// satisfies `stale`.
fn remove_labelled(filter: &str, stale: impl Fn(&str) -> bool) -> usize {
    let label = format!("label={filter}");
    let format = format!("{{{{.ID}}}} {{{{.Label \"{PID_LABEL}\"}}}}");
    let pick = |listing: Result<String, DockerError>| -> Vec<String> {
        listing
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' ').or(Some((l, ""))))
            .filter(|(id, pid)| !id.is_empty() && stale(pid.trim()))
            .map(|(id, _)| id.to_string())
            .collect()
    };
    let containers = pick(docker(&["ps", "-a", "--filter", &label, "--format", &format]));
    if !containers.is_empty() {
        let mut args = vec!["rm", "-f", "-v"];
        args.extend(containers.iter().map(String::as_str));
        let _ = docker(&args);
    }
    let networks = pick(docker(&["network", "ls", "--filter", &label, "--format", &format]));
    for network in &networks {
        let _ = docker(&["network", "rm", network]);
    }
    containers.len() + networks.len()
}

/// Settings of a Docker deployment.
#[derive(Debug, Clone)]
pub struct DockerOptions {
    /// Replicas.
    pub replicas: u64,
    /// TaskManagers.
    pub task_managers: u64,
    /// Slots per TaskManager.
    pub slots: u32,
    /// The run-unique name prefix (see [`run_prefix`]).
    pub prefix: String,
    /// Extra `jm server` arguments for every replica (e.g. `--storage-mode lose-unsynced`).
    pub server_args: Vec<String>,
}

/// A run-unique prefix: the harness's pid and the clock.
pub fn run_prefix() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    format!("jepsen-{}-{}", std::process::id(), now % 100_000)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Paused,
    Killed,
}

#[derive(Debug)]
struct Container {
    name: String,
    ip: Ipv4Addr,
    log: PathBuf,
    state: State,
}

/// The containers of a run. See the module docs.
pub struct DockerCluster {
    prefix: String,
    network: String,
    /// The image the containers run.
    pub image: String,
    /// The network's subnet.
    pub subnet: String,
    replicas: BTreeMap<u64, Container>,
    task_managers: BTreeMap<u64, Container>,
    links: Links,
    /// How delays are done here, or why they cannot be.
    delay: std::result::Result<DelayMethod, String>,
    /// The delayer thread in each replica's namespace while an NFQUEUE delay is on, with the pid it entered.
    delayers: BTreeMap<u64, (u32, links::LinkFault, Delayer)>,
    /// Whether a qdisc may be installed (so heals must remove it).
    qdiscs: bool,
    stopped: bool,
    /// What a TaskManager that joins later needs: the report dir, the network's first three octets, the replicas'
    /// API addresses and the slots per TaskManager.
    dir: PathBuf,
    base: [u8; 3],
    apis: String,
    slots: u32,
    /// TaskManagers that left by churn: they stay down across heals until they come back.
    departed: BTreeSet<u64>,
}

impl DockerCluster {
    /// Builds (or reuses) the image of `jm`, creates the network, starts the replicas and TaskManagers, and probes
    /// what the kernel supports. On error everything created so far is removed.
    pub fn start(dir: &Path, options: &DockerOptions, jm: &Path) -> Result<Self> {
        if options.replicas > 89 || options.task_managers > MAX_TASK_MANAGERS {
            bail!("the docker mode addresses at most 89 replicas and 150 TaskManagers on its /24");
        }
        let removed = remove_stale();
        if removed > 0 {
            eprintln!("jepsen: removed {removed} container(s)/network(s) left by earlier runs");
        }
        let image = image::ensure(jm)?;
        let (network, subnet, base) = create_network(&options.prefix)?;
        let mut cluster = DockerCluster {
            prefix: options.prefix.clone(),
            network,
            image,
            subnet,
            replicas: BTreeMap::new(),
            task_managers: BTreeMap::new(),
            links: Links::new(BTreeMap::new()),
            delay: Err("not probed".into()),
            delayers: BTreeMap::new(),
            qdiscs: false,
            stopped: false,
            dir: dir.to_path_buf(),
            base,
            apis: String::new(),
            slots: options.slots,
            departed: BTreeSet::new(),
        };
        // From here on, Drop removes whatever was created if a step fails.
        let checkpoints = dir.join("checkpoints");
        std::fs::create_dir_all(&checkpoints)?;
        let replica_ip = |id: u64| Ipv4Addr::new(base[0], base[1], base[2], 10 + id as u8);
        let peers: Vec<String> = (1..=options.replicas)
            .map(|id| format!("{id}={ip}:{RAFT_PORT}/{ip}:{API_PORT}", ip = replica_ip(id)))
            .collect();
        for id in 1..=options.replicas {
            let data = dir.join(format!("node-{id}"));
            std::fs::create_dir_all(&data)?;
            let mut args = server_args(id, &peers.join(","));
            args.extend(options.server_args.iter().cloned());
            let c = cluster.create(&format!("node-{id}"), replica_ip(id), &data, &checkpoints, &args, "server.log")?;
            cluster.replicas.insert(id, c);
        }
        let apis: Vec<String> = (1..=options.replicas).map(|id| format!("{}:{API_PORT}", replica_ip(id))).collect();
        cluster.apis = apis.join(",");
        for _ in 0..options.task_managers {
            cluster.start_task_manager()?;
        }
        cluster.delay = cluster.probe_delay();
        let method = *cluster.delay.as_ref().unwrap_or(&DelayMethod::Netem);
        cluster.links =
            Links::new(cluster.replicas.iter().map(|(id, c)| (*id, c.ip)).collect()).with_delay_method(method);
        Ok(cluster)
    }

    /// Creates and starts the next TaskManager (a fresh data dir, so a fresh id, and the next address); its number.
    fn start_task_manager(&mut self) -> Result<u64> {
        let n = self.task_managers.keys().next_back().map_or(1, |last| last + 1);
        if n > MAX_TASK_MANAGERS {
            bail!("the docker mode addresses at most {MAX_TASK_MANAGERS} TaskManagers on its /24");
        }
        let ip = Ipv4Addr::new(self.base[0], self.base[1], self.base[2], 100 + n as u8);
        let data = self.dir.join(format!("tm-{n}"));
        let checkpoints = self.dir.join("checkpoints");
        std::fs::create_dir_all(&data)?;
        let args = task_manager_args(ip, &self.apis, self.slots);
        let c = self.create(&format!("tm-{n}"), ip, &data, &checkpoints, &args, "taskmanager.log")?;
        self.task_managers.insert(n, c);
        Ok(n)
    }

    /// Creates and starts one container.
    fn create(
        &self,
        role: &str,
        ip: Ipv4Addr,
        data: &Path,
        checkpoints: &Path,
        args: &[String],
        log: &str,
    ) -> Result<Container> {
        let name = format!("{}-{role}", self.prefix);
        let data = std::fs::canonicalize(data)?;
        let checkpoints = std::fs::canonicalize(checkpoints)?;
        let mut line: Vec<String> = [
            "run",
            "-d",
            "--name",
            &name,
            "--hostname",
            role,
            "--network",
            &self.network,
            "--ip",
            &ip.to_string(),
            "--label",
            &format!("{LABEL}=1"),
            "--label",
            &format!("{RUN_LABEL}={}", self.prefix),
            "--label",
            &format!("{PID_LABEL}={}", std::process::id()),
            "--env",
            "RUST_LOG=info,openraft=warn",
            "--volume",
            &format!("{}:/data", data.display()),
            "--volume",
            &format!("{}:/checkpoints", checkpoints.display()),
            &self.image,
        ]
        .map(String::from)
        .to_vec();
        line.extend(args.iter().cloned());
        let line: Vec<&str> = line.iter().map(String::as_str).collect();
        docker(&line).with_context(|| format!("cannot start container {name}"))?;
        Ok(Container { name, ip, log: data.join(log), state: State::Running })
    }

    /// How this kernel can delay packets: netem if it has `sch_netem` and `sch_prio`, else NFQUEUE; the reasons if
    /// neither works.
    fn probe_delay(&self) -> std::result::Result<DelayMethod, String> {
        let probe = self.replicas.values().next().ok_or("no replica to probe")?;
        let pid = self.pid(&probe.name).map_err(|e| format!("cannot probe the kernel in {}: {e}", probe.name))?;
        let tc = |args: &str| nsenter(pid, "tc", &args.split(' ').map(String::from).collect::<Vec<_>>(), None);
        let netem = tc(&format!("qdisc add dev {} root handle 1: prio bands 4", links::IFACE))
            .map_err(|e| format!("the kernel has no prio qdisc (sch_prio): {e}"))
            .and_then(|_| {
                tc(&format!("qdisc add dev {} parent 1:4 handle 40: netem delay 1ms", links::IFACE))
                    .map_err(|e| format!("the kernel has no netem qdisc (CONFIG_NET_SCH_NETEM): {e}"))
            });
        let _ = tc(&format!("qdisc del dev {} root", links::IFACE));
        let Err(no_netem) = netem else { return Ok(DelayMethod::Netem) };
        match Delayer::start(pid, Duration::from_millis(1), Duration::ZERO, 0) {
            Ok(delayer) => {
                delayer.stop();
                Ok(DelayMethod::Nfqueue)
            }
            Err(e) => Err(format!("{no_netem}; and no nfnetlink_queue (CONFIG_NETFILTER_NETLINK_QUEUE): {e}")),
        }
    }

    /// The pid of a running container's first process (whose network namespace is the container's).
    fn pid(&self, name: &str) -> Result<u32, DockerError> {
        let out = docker(&["inspect", "--format", "{{.State.Pid}}", name])?;
        out.trim().parse::<u32>().ok().filter(|p| *p != 0).ok_or_else(|| DockerError::Command {
            command: format!("docker inspect {name}"),
            status: "no pid".into(),
            stderr: format!("{name} is not running"),
        })
    }

    /// What was deployed, for the report directory.
    fn description(&self) -> serde_json::Value {
        let list = |m: &BTreeMap<u64, Container>| -> Vec<serde_json::Value> {
            m.values().map(|c| serde_json::json!({"name": c.name, "ip": c.ip.to_string()})).collect()
        };
        serde_json::json!({
            "mode": "docker",
            "image": self.image,
            "network": self.network,
            "subnet": self.subnet,
            "replicas": list(&self.replicas),
            "task_managers": list(&self.task_managers),
            "delay": match &self.delay {
                Ok(DelayMethod::Netem) => "tc netem".to_string(),
                Ok(DelayMethod::Nfqueue) => "iptables NFQUEUE and the harness's delayer (no netem in this kernel)".into(),
                Err(why) => format!("unavailable: {why}"),
            },
        })
    }

    /// Brings the network namespace of replica `id` to the current fault state.
    fn apply(&mut self, id: u64) -> Result<()> {
        let c = &self.replicas[&id];
        if c.state == State::Killed {
            // No namespace; a restart gets a fresh one and re-applies.
            if let Some((_, _, delayer)) = self.delayers.remove(&id) {
                delayer.stop();
            }
            return Ok(());
        }
        let pid = self.pid(&c.name)?;
        // A delayer is bound before packets are queued to it and stopped after they no longer are.
        // A delayer that entered an earlier incarnation's namespace, or delays by other amounts, is replaced.
        let link = self.links.link();
        if self.delayers.get(&id).is_some_and(|(entered, fault, _)| *entered != pid || *fault != link) {
            if let Some((_, _, delayer)) = self.delayers.remove(&id) {
                delayer.stop();
            }
        }
        if let (true, false, links::LinkFault::Delay { base, jitter }) =
            (self.links.needs_delayer(), self.delayers.contains_key(&id), link)
        {
            let delayer = Delayer::start(pid, base, jitter, id)
                .with_context(|| format!("cannot start the delayer in {}", c.name))?;
            self.delayers.insert(id, (pid, link, delayer));
        }
        nsenter(pid, "iptables-restore", &["-w".into()], Some(&self.links.iptables_restore(id)))
            .with_context(|| format!("cannot set the firewall of {}", c.name))?;
        if !self.links.needs_delayer() {
            if let Some((_, _, delayer)) = self.delayers.remove(&id) {
                delayer.stop();
            }
        }
        if self.qdiscs {
            let _ = nsenter(pid, "tc", &Links::tc_reset(), None);
        }
        for args in self.links.tc_commands(id) {
            nsenter(pid, "tc", &args, None).with_context(|| format!("cannot set the qdiscs of {}", c.name))?;
        }
        Ok(())
    }

    /// Applies the current fault state everywhere and returns `description`.
    fn apply_all(&mut self, description: String) -> Result<String> {
        let delaying = matches!(self.links.link(), links::LinkFault::Delay { .. });
        // While applying, some containers may already have the new qdiscs: a failure must leave `qdiscs` set.
        self.qdiscs |= delaying;
        let ids: Vec<u64> = self.replicas.keys().copied().collect();
        for id in ids {
            self.apply(id)?;
        }
        self.qdiscs = delaying;
        Ok(description)
    }

    fn containers(&self) -> impl Iterator<Item = &Container> {
        self.replicas.values().chain(self.task_managers.values())
    }

    /// Kills the containers in `names`, one command for all (so they die at once).
    fn kill_names(names: &[String]) -> Result<()> {
        if names.is_empty() {
            return Ok(());
        }
        let mut args = vec!["kill", "--signal", "KILL"];
        args.extend(names.iter().map(String::as_str));
        docker(&args)?;
        Ok(())
    }

    /// Writes every container's `docker logs` to its log file.
    fn save_logs(&self) {
        for c in self.containers() {
            save_log(&c.name, &c.log);
        }
    }

    fn start_container(c: &mut Container) -> Result<()> {
        match c.state {
            State::Running => {}
            State::Paused => {
                docker(&["unpause", &c.name])?;
            }
            State::Killed => {
                docker(&["start", &c.name])?;
            }
        }
        c.state = State::Running;
        Ok(())
    }
}

impl Deployment for DockerCluster {
    fn mode(&self) -> &'static str {
        "docker"
    }

    fn api_addrs(&self) -> BTreeMap<u64, String> {
        self.replicas.iter().map(|(id, c)| (*id, format!("{}:{API_PORT}", c.ip))).collect()
    }

    fn task_manager_http(&self) -> BTreeMap<u64, String> {
        self.task_managers.iter().map(|(n, c)| (*n, format!("{}:{TM_HTTP_PORT}", c.ip))).collect()
    }

    fn unsupported(&self, fault: Fault) -> Option<String> {
        match fault {
            Fault::Delay => self.delay.as_ref().err().cloned(),
            _ => None,
        }
    }

    fn describe(&self) -> serde_json::Value {
        self.description()
    }

    fn kill(&mut self, id: u64) -> Result<()> {
        let c = self.replicas.get_mut(&id).with_context(|| format!("no replica {id}"))?;
        if c.state == State::Paused {
            docker(&["unpause", &c.name])?;
        }
        Self::kill_names(std::slice::from_ref(&c.name))?;
        c.state = State::Killed;
        Ok(())
    }

    fn pause(&mut self, id: u64) -> Result<()> {
        let c = self.replicas.get_mut(&id).with_context(|| format!("no replica {id}"))?;
        if c.state != State::Running {
            return Ok(());
        }
        // runc gives up ("unable to freeze") when some task does not freeze in time, which happens under load on
        // cgroup v1; it thaws the container again, so another attempt is safe.
        let mut failure = None;
        for attempt in 1..=PAUSE_ATTEMPTS {
            match docker(&["pause", &c.name]) {
                Ok(_) => {
                    c.state = State::Paused;
                    return Ok(());
                }
                Err(e) => failure = Some(e),
            }
            let status = docker(&["inspect", "--format", "{{.State.Status}}", &c.name]).unwrap_or_default();
            if status.trim() == "paused" {
                c.state = State::Paused;
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100 * attempt));
        }
        let e = failure.expect("at least one attempt");
        Err(anyhow::Error::new(e).context(format!("{} could not be frozen in {PAUSE_ATTEMPTS} attempts", c.name)))
    }

    fn kill_all(&mut self) -> Result<()> {
        for c in self.replicas.values_mut().filter(|c| c.state == State::Paused) {
            docker(&["unpause", &c.name])?;
            c.state = State::Running;
        }
        let names: Vec<String> =
            self.replicas.values().filter(|c| c.state == State::Running).map(|c| c.name.clone()).collect();
        Self::kill_names(&names)?;
        self.replicas.values_mut().for_each(|c| c.state = State::Killed);
        Ok(())
    }

    fn kill_task_manager(&mut self, n: u64) -> Result<()> {
        let c = self.task_managers.get_mut(&n).with_context(|| format!("no TaskManager {n}"))?;
        if c.state == State::Running {
            Self::kill_names(std::slice::from_ref(&c.name))?;
            c.state = State::Killed;
        }
        Ok(())
    }

    fn present_task_managers(&self) -> Vec<u64> {
        self.task_managers.keys().copied().filter(|n| !self.departed.contains(n)).collect()
    }

    fn departed_task_managers(&self) -> Vec<u64> {
        self.departed.iter().copied().collect()
    }

    fn leave_task_manager(&mut self, n: u64, graceful: bool) -> Result<()> {
        let c = self.task_managers.get_mut(&n).with_context(|| format!("no TaskManager {n}"))?;
        if c.state == State::Paused {
            docker(&["unpause", &c.name])?;
        }
        // `docker kill --signal TERM` returns at once; a TaskManager that ignores it is reaped after the hold.
        docker(&["kill", "--signal", if graceful { "TERM" } else { "KILL" }, &c.name])?;
        c.state = State::Killed;
        self.departed.insert(n);
        Ok(())
    }

    fn add_task_manager(&mut self) -> Result<(u64, String)> {
        let n = self.start_task_manager()?;
        Ok((n, format!("{}:{TM_HTTP_PORT}", self.task_managers[&n].ip)))
    }

    fn return_task_manager(&mut self, n: u64) -> Result<()> {
        self.reap_departed();
        let c = self.task_managers.get_mut(&n).with_context(|| format!("no TaskManager {n}"))?;
        docker(&["start", &c.name])?;
        c.state = State::Running;
        self.departed.remove(&n);
        Ok(())
    }

    fn reap_departed(&mut self) -> Vec<u64> {
        let mut killed = Vec::new();
        for n in &self.departed {
            let c = &self.task_managers[n];
            let running = docker(&["inspect", "-f", "{{.State.Running}}", &c.name]).is_ok_and(|o| o.trim() == "true");
            if running && Self::kill_names(std::slice::from_ref(&c.name)).is_ok() {
                killed.push(*n);
            }
        }
        killed
    }

    fn exited(&mut self, id: u64) -> bool {
        let Some(c) = self.replicas.get_mut(&id) else { return false };
        if c.state != State::Running {
            return false;
        }
        // A container whose process ended is "exited" to docker; `docker start` brings it back at the heal.
        let running = docker(&["inspect", "-f", "{{.State.Running}}", &c.name]).map(|out| out.trim() == "true");
        if matches!(running, Ok(false)) {
            c.state = State::Killed;
            return true;
        }
        false
    }

    fn heal_processes(&mut self) -> Result<()> {
        let killed: Vec<String> =
            self.replicas.values().filter(|c| c.state == State::Killed).map(|c| c.name.clone()).collect();
        if killed.len() > 1 {
            // One command, so a restart-all brings every replica back at once.
            let mut args = vec!["start"];
            args.extend(killed.iter().map(String::as_str));
            docker(&args)?;
            self.replicas.values_mut().filter(|c| c.state == State::Killed).for_each(|c| c.state = State::Running);
        }
        let mut restarted = Vec::new();
        for (id, c) in &mut self.replicas {
            if c.state != State::Running {
                if c.state == State::Killed {
                    restarted.push(*id);
                }
                Self::start_container(c)?;
            }
        }
        for (n, c) in &mut self.task_managers {
            if !self.departed.contains(n) {
                Self::start_container(c)?;
            }
        }
        if !self.links.is_healthy() {
            for id in restarted {
                self.apply(id)?;
            }
        }
        Ok(())
    }

    fn isolate(&mut self, id: u64) -> Result<String> {
        let description = self.links.isolate(id);
        self.apply_all(description)
    }

    fn majority_minority(&mut self, rng: &mut StdRng) -> Result<String> {
        let description = self.links.majority_minority(rng);
        self.apply_all(description)
    }

    fn ring(&mut self, rng: &mut StdRng) -> Result<String> {
        let description = self.links.ring(rng);
        self.apply_all(description)
    }

    fn one_way(&mut self, from: u64, to: u64) -> Result<String> {
        let description = self.links.one_way(from, to);
        self.apply_all(description)
    }

    fn delay(&mut self, base: Duration, jitter: Duration) -> Result<String> {
        if let Err(why) = &self.delay {
            bail!("delay is not available: {why}");
        }
        let description = self.links.delay(base, jitter);
        self.apply_all(description)
    }

    fn loss(&mut self, probability: f64, _stall: Duration) -> Result<String> {
        let description = self.links.loss(probability);
        self.apply_all(description)
    }

    fn heal_network(&mut self) -> Result<()> {
        if self.links.is_healthy() && !self.qdiscs {
            return Ok(());
        }
        let description = self.links.heal();
        self.apply_all(description).map(drop)
    }

    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let names: Vec<String> = self.containers().map(|c| c.name.clone()).collect();
        for c in self.replicas.values().chain(self.task_managers.values()).filter(|c| c.state == State::Paused) {
            let _ = docker(&["unpause", &c.name]);
        }
        let _ = Self::kill_names(&names);
        std::mem::take(&mut self.delayers).into_values().for_each(|(_, _, d)| d.stop());
        self.save_logs();
        remove_run(&self.prefix);
    }

    fn logs(&self) -> Vec<(String, String)> {
        let named = |prefix: &'static str| {
            move |(n, c): (&u64, &Container)| {
                (format!("{prefix}-{n}"), std::fs::read_to_string(&c.log).unwrap_or_default())
            }
        };
        self.replicas.iter().map(named("node")).chain(self.task_managers.iter().map(named("tm"))).collect()
    }
}

impl Drop for DockerCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `jm server` arguments of replica `id` in its container.
pub fn server_args(id: u64, peers: &str) -> Vec<String> {
    [
        "server",
        "--id",
        &id.to_string(),
        "--peers",
        peers,
        "--data-dir",
        "/data",
        "--checkpoint-dir",
        "/checkpoints",
        "--tm-heartbeat-timeout-ms",
        "3000",
    ]
    .map(String::from)
    .to_vec()
}

/// `jm taskmanager` arguments of a TaskManager at `ip`.
pub fn task_manager_args(ip: Ipv4Addr, cluster: &str, slots: u32) -> Vec<String> {
    [
        "taskmanager",
        "--cluster",
        cluster,
        "--listen",
        &format!("{ip}:{TM_PORT}"),
        "--http-listen",
        &format!("{ip}:{TM_HTTP_PORT}"),
        "--slots",
        &slots.to_string(),
        "--heartbeat-ms",
        "200",
        "--data-dir",
        "/data",
    ]
    .map(String::from)
    .to_vec()
}

/// Creates the run's internal network on the first free /24 of `10.213.0.0/16`, trying from a point derived from
/// the pid (so concurrent harnesses rarely collide). Returns its name, subnet and the subnet's first three octets.
fn create_network(prefix: &str) -> Result<(String, String, [u8; 3]), DockerError> {
    let name = format!("{prefix}-net");
    let start = std::process::id() as usize;
    let mut last = String::new();
    for k in 0..64 {
        let octet = ((start + k * 7) % 250 + 1) as u8;
        let subnet = format!("10.213.{octet}.0/24");
        let result = docker(&[
            "network",
            "create",
            "--internal",
            "--driver",
            "bridge",
            "--subnet",
            &subnet,
            "--label",
            &format!("{LABEL}=1"),
            "--label",
            &format!("{RUN_LABEL}={prefix}"),
            "--label",
            &format!("{PID_LABEL}={}", std::process::id()),
            &name,
        ]);
        match result {
            Ok(_) => return Ok((name, subnet, [10, 213, octet])),
            Err(DockerError::Command { stderr, .. }) if stderr.contains("overlap") => last = stderr,
            Err(e) => return Err(DockerError::Network(e.to_string())),
        }
    }
    Err(DockerError::Network(format!("no free /24 in 10.213.0.0/16: {last}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_logs_land_where_the_local_mode_puts_them() {
        let dir = Path::new("/runs/r1");
        let at = |name| log_path(dir, "jepsen-1-2", name);
        assert_eq!(at("jepsen-1-2-node-3"), Some(dir.join("node-3/server.log")));
        assert_eq!(at("jepsen-1-2-tm-1"), Some(dir.join("tm-1/taskmanager.log")));
        assert_eq!(at("jepsen-1-23-node-1"), None, "another run's container");
        assert_eq!(at("jepsen-1-2-other"), None);
    }

    #[test]
    fn commands_enter_the_containers_namespace() {
        let line = nsenter_command(4242, "iptables-restore", &["-w".to_string()]);
        assert_eq!(line, ["nsenter", "-t", "4242", "-n", "iptables-restore", "-w"]);
    }

    #[test]
    fn replicas_listen_on_their_own_address_and_share_the_checkpoint_mount() {
        let args = server_args(2, "1=10.213.5.11:7000/10.213.5.11:6000,2=10.213.5.12:7000/10.213.5.12:6000");
        assert_eq!(args[..3], ["server", "--id", "2"]);
        assert!(args.windows(2).any(|w| w == ["--data-dir", "/data"]));
        assert!(args.windows(2).any(|w| w == ["--checkpoint-dir", "/checkpoints"]));
        let tm = task_manager_args(Ipv4Addr::new(10, 213, 5, 101), "10.213.5.11:6000", 32);
        assert!(tm.windows(2).any(|w| w == ["--listen", "10.213.5.101:6100"]));
        assert!(tm.windows(2).any(|w| w == ["--http-listen", "10.213.5.101:8081"]));
    }

    #[test]
    fn a_failed_command_says_what_ran_and_what_it_said() {
        let error = run_command(Command::new("sh").args(["-c", "echo nope >&2; exit 3"]), None).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("sh -c") && text.contains("nope") && text.contains("exit status: 3"), "{text}");
        let missing = run_command(&mut Command::new("no-such-tool-for-jepsen"), None).unwrap_err();
        assert!(missing.to_string().contains("no-such-tool-for-jepsen"), "{missing}");
    }

    /// A static x86-64 executable that loops on `pause(2)`: the smallest thing a container can run.
    fn pause_loop_elf() -> Vec<u8> {
        let code: [u8; 9] = [0xb8, 0x22, 0, 0, 0, 0x0f, 0x05, 0xeb, 0xf7]; // mov eax, SYS_pause; syscall; jmp
        let total = (64 + 56 + code.len()) as u64;
        let mut b = Vec::new();
        b.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
        b.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        b.extend_from_slice(&62u16.to_le_bytes()); // x86-64
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&(0x40_0000u64 + 120).to_le_bytes()); // entry: the code
        b.extend_from_slice(&64u64.to_le_bytes()); // program headers right after this header
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        for half in [64u16, 56, 1, 0, 0, 0] {
            b.extend_from_slice(&half.to_le_bytes());
        }
        b.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        b.extend_from_slice(&5u32.to_le_bytes()); // R+X
        for word in [0u64, 0x40_0000, 0x40_0000, total, total, 0x1000] {
            b.extend_from_slice(&word.to_le_bytes());
        }
        b.extend_from_slice(&code);
        b
    }

    fn container_state(name: &str) -> String {
        docker(&["inspect", "--format", "{{.State.Status}}", name]).unwrap_or_default().trim().to_string()
    }

    fn firewall(cluster: &DockerCluster, id: u64) -> String {
        let pid = cluster.pid(&cluster.replicas[&id].name).unwrap();
        nsenter(pid, "iptables", &["-S".into(), "INPUT".into()], None).unwrap()
    }

    /// The real thing, on a tiny image: network, containers, kills, pauses, iptables in their namespaces, the
    /// delayer, cleanup. Skipped (with a message) without root or a Docker daemon. Ignored by default (about 20 s):
    /// `cargo test -p jepsen --lib -- --ignored docker::`.
    #[test]
    #[ignore = "needs root and Docker, about 20 s: cargo test -p jepsen --lib -- --ignored docker::"]
    fn containers_are_faulted_through_their_namespaces_and_removed_at_the_end() {
        if let Err(e) = preflight() {
            eprintln!("skipped: {e}");
            return;
        }
        let dir = std::env::temp_dir().join(format!("jepsen-docker-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("checkpoints")).unwrap();
        let exe = dir.join("pause-loop");
        std::fs::write(&exe, pause_loop_elf()).unwrap();
        std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let prefix = format!("{}-test", run_prefix());
        let image = image::ensure(&exe).unwrap();
        let (network, subnet, base) = create_network(&prefix).unwrap();
        let mut cluster = DockerCluster {
            prefix: prefix.clone(),
            network,
            image,
            subnet,
            replicas: BTreeMap::new(),
            task_managers: BTreeMap::new(),
            links: Links::new(BTreeMap::new()),
            delay: Err("not probed".into()),
            delayers: BTreeMap::new(),
            qdiscs: false,
            stopped: false,
            dir: dir.clone(),
            base,
            apis: String::new(),
            slots: 1,
            departed: BTreeSet::new(),
        };
        for id in 1..=3u64 {
            let data = dir.join(format!("node-{id}"));
            std::fs::create_dir_all(&data).unwrap();
            let ip = Ipv4Addr::new(base[0], base[1], base[2], 10 + id as u8);
            let c = cluster.create(&format!("node-{id}"), ip, &data, &dir.join("checkpoints"), &[], "server.log");
            cluster.replicas.insert(id, c.unwrap());
        }
        cluster.delay = cluster.probe_delay();
        let method = *cluster.delay.as_ref().expect("netem or nfqueue");
        cluster.links =
            Links::new(cluster.replicas.iter().map(|(id, c)| (*id, c.ip)).collect()).with_delay_method(method);
        let ip = |id: u64| cluster.replicas[&id].ip;
        let (ip1, ip2) = (ip(1), ip(2));

        assert_eq!(cluster.one_way(1, 2).unwrap(), "one-way 1->2");
        assert!(firewall(&cluster, 2).contains(&format!("-A INPUT -s {ip1}/32 -j DROP")), "{}", firewall(&cluster, 2));
        assert!(!firewall(&cluster, 1).contains("DROP"));
        assert!(
            cluster.isolate(2).unwrap() == "isolate 2"
                && firewall(&cluster, 1).contains(&format!("-s {ip2}/32 -j DROP"))
        );
        cluster.loss(0.2, Duration::ZERO).unwrap();
        assert!(firewall(&cluster, 3).contains("--probability 0.2"), "{}", firewall(&cluster, 3));
        cluster.delay(Duration::from_millis(5), Duration::from_millis(5)).unwrap();
        if method == DelayMethod::Nfqueue {
            assert!(firewall(&cluster, 3).contains("NFQUEUE"), "{}", firewall(&cluster, 3));
            assert_eq!(cluster.delayers.len(), 3, "one delayer per replica namespace");
        }
        cluster.heal_network().unwrap();
        assert!((1..=3).all(|id| !firewall(&cluster, id).contains("-A INPUT")));
        assert!(cluster.delayers.is_empty(), "the heal stops the delayers");

        cluster.kill(1).unwrap();
        cluster.pause(2).unwrap();
        assert_eq!(container_state(&cluster.replicas[&1].name), "exited");
        assert_eq!(container_state(&cluster.replicas[&2].name), "paused");
        cluster.heal_processes().unwrap();
        assert!((1..=3).all(|id| container_state(&cluster.replicas[&id].name) == "running"));
        cluster.kill_all().unwrap();
        assert!((1..=3).all(|id| container_state(&cluster.replicas[&id].name) == "exited"));
        cluster.heal_processes().unwrap();
        assert!((1..=3).all(|id| container_state(&cluster.replicas[&id].name) == "running"));

        // Churn: TaskManagers join at the next addresses, leave and stay away across heals, and come back.
        let (first, http) = cluster.add_task_manager().unwrap();
        let (second, _) = cluster.add_task_manager().unwrap();
        assert_eq!((first, second), (1, 2));
        assert_eq!(http, format!("{}.{}.{}.101:{TM_HTTP_PORT}", base[0], base[1], base[2]));
        cluster.leave_task_manager(first, false).unwrap();
        cluster.leave_task_manager(second, true).unwrap();
        assert!(cluster.present_task_managers().is_empty());
        cluster.heal_processes().unwrap();
        assert_eq!(container_state(&cluster.task_managers[&first].name), "exited", "departed ones stay down");
        // The pause loop, PID 1 without a SIGTERM handler, ignores SIGTERM: the reaper SIGKILLs it.
        assert_eq!(cluster.reap_departed(), vec![second]);
        assert_eq!(container_state(&cluster.task_managers[&second].name), "exited");
        cluster.return_task_manager(first).unwrap();
        assert_eq!(container_state(&cluster.task_managers[&first].name), "running");
        assert_eq!((cluster.present_task_managers(), cluster.departed_task_managers()), (vec![first], vec![second]));

        drop(cluster);
        let left = docker(&["ps", "-aq", "--filter", &format!("label={RUN_LABEL}={prefix}")]).unwrap();
        assert!(left.trim().is_empty(), "containers left: {left}");
        let left = docker(&["network", "ls", "-q", "--filter", &format!("label={RUN_LABEL}={prefix}")]).unwrap();
        assert!(left.trim().is_empty(), "networks left: {left}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn stdin_reaches_the_command() {
        let out = run_command(&mut Command::new("cat"), Some("*filter\nCOMMIT\n")).unwrap();
        assert_eq!(out, "*filter\nCOMMIT\n");
    }
}
