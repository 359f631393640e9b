//! `jm local`: a 3-replica cluster and two TaskManagers on this machine, as child processes of one command, running
//! an example job.
//!
//! Each replica is a real `jm server` process with its data under `DIR/node-N` and its log in
//! `DIR/node-N/server.log`; each TaskManager a `jm taskmanager` with its id and log under `DIR/tm-N`. Checkpoints
//! go to `DIR/checkpoints`. Unless `--no-example` is given, the example job `docs/examples/sequence-count.yaml` is
//! submitted once (a fixed idempotency key makes a restart find it instead of submitting it again). `DIR/cluster.json` lists every process started (role, node id, pid,
//! addresses) for scripts and tests. Restarting `jm local` on the same directory reuses the addresses
//! recorded there, because the replicated membership remembers them.
//!
//! A replica that dies is reported, not restarted: hiding a crash would hide a bug. Ctrl-C or SIGTERM
//! stops every child (SIGTERM, then SIGKILL after a grace period).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};

use crate::api::grpc::{pb, ClusterClient};

const EXAMPLES: &str = "
  # 3 replicas and 2 TaskManagers on the default ports, running an example job
  jm local

  # 5 replicas on free ports, without the example job (addresses in /tmp/jm5/cluster.json)
  jm local --replicas 5 --base-port 0 --no-example --data-dir /tmp/jm5

  # Faster elections, for experiments with failover
  jm local --server-args \"--heartbeat-ms 20 --election-min-ms 60 --election-max-ms 120\"
";

/// Flags of `jm local`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_long_help = super::examples(EXAMPLES))]
pub struct LocalArgs {
    /// Where the replicas keep their data and logs.
    #[arg(long, env = "JM_LOCAL_DIR", default_value = "jm-local")]
    pub data_dir: PathBuf,
    /// How many replicas (3 or 5).
    #[arg(long, default_value_t = 3)]
    pub replicas: u64,
    /// First client API port: replica N uses BASE+N-1, its peer service BASE+N+9. 0 picks free ports.
    #[arg(long, default_value_t = 6123)]
    pub base_port: u16,
    /// Extra flags for every `jm server`, e.g. "--heartbeat-ms 50".
    #[arg(long, allow_hyphen_values = true)]
    pub server_args: Option<String>,
    /// How many TaskManagers to start.
    #[arg(long, default_value_t = 2)]
    pub task_managers: u32,
    /// Slots per TaskManager.
    #[arg(long, default_value_t = 4)]
    pub slots: u32,
    /// Do not submit the example job.
    #[arg(long)]
    pub no_example: bool,
}

/// The example job `jm local` submits.
pub const EXAMPLE_JOB: &str = include_str!("../../docs/examples/sequence-count.yaml");
/// Its idempotency key: restarting `jm local` on the same directory finds the job instead of submitting it again.
const EXAMPLE_KEY: &str = "jm-local-example-sequence-count";

/// One process `jm local` started, as written to `cluster.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// `replica` or `taskmanager`.
    pub role: String,
    /// The replica's node id, or the TaskManager's number from 1.
    pub node_id: u64,
    /// Its process id.
    pub pid: u32,
    /// Its client gRPC API address (a TaskManager's command address).
    pub grpc_addr: String,
    /// Its peer (Raft) address.
    pub raft_addr: String,
    /// Where it serves the REST API (replicas only).
    #[serde(default)]
    pub http_addr: Option<String>,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its log file.
    pub log: PathBuf,
    /// False once it has exited.
    pub alive: bool,
}

/// `DIR/cluster.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterFile {
    /// The cluster's data directory.
    pub data_dir: PathBuf,
    /// Every process started.
    pub processes: Vec<ProcessInfo>,
}

impl ClusterFile {
    /// The replicas' client API addresses, comma-separated.
    pub fn grpc_addrs(&self) -> String {
        self.replicas().map(|p| p.grpc_addr.as_str()).collect::<Vec<_>>().join(",")
    }

    /// The replica processes.
    pub fn replicas(&self) -> impl Iterator<Item = &ProcessInfo> {
        self.processes.iter().filter(|p| p.role == "replica")
    }
}

/// What a replica child process is started with.
pub struct ReplicaSpec<'a> {
    /// Its node id.
    pub id: u64,
    /// Its client API address.
    pub api_addr: &'a str,
    /// Its peer (Raft) address.
    pub raft_addr: &'a str,
    /// The `--peers` value shared by all replicas.
    pub peers: &'a str,
    /// Extra `jm server` flags.
    pub extra: &'a [String],
}

/// Starts `exe server` as a child process with its data and `server.log` in `dir`. The child is killed
/// if the handle is dropped.
pub fn spawn_replica(exe: &Path, dir: &Path, spec: &ReplicaSpec<'_>) -> Result<(ProcessInfo, Child)> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let log_path = dir.join("server.log");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
    let id = spec.id;
    let child = Command::new(exe)
        .arg("server")
        .args(["--id", &id.to_string(), "--peers", spec.peers])
        .arg("--data-dir")
        .arg(dir)
        .args(spec.extra)
        .env_remove("JM_CONFIG")
        .env("JM_LOG_FORMAT", super::log_format_env())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start replica {id}"))?;
    let pid = child.id().ok_or_else(|| anyhow!("replica {id} exited at once"))?;
    let info = ProcessInfo {
        role: "replica".into(),
        node_id: id,
        pid,
        grpc_addr: spec.api_addr.to_string(),
        raft_addr: spec.raft_addr.to_string(),
        http_addr: None,
        data_dir: dir.to_path_buf(),
        log: log_path,
        alive: true,
    };
    Ok((info, child))
}

/// Starts `exe taskmanager` as a child process with its data and `taskmanager.log` in `dir`, serving commands on
/// `listen` and `/metrics` on `http`.
pub fn spawn_task_manager(
    exe: &Path,
    dir: &Path,
    number: u64,
    cluster: &str,
    (listen, http): (&str, &str),
    slots: u32,
) -> Result<(ProcessInfo, Child)> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let log_path = dir.join("taskmanager.log");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
    let child = Command::new(exe)
        .arg("taskmanager")
        .args(["--cluster", cluster, "--listen", listen, "--http-listen", http, "--slots", &slots.to_string()])
        .arg("--data-dir")
        .arg(dir)
        .env("JM_LOG_FORMAT", super::log_format_env())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start TaskManager {number}"))?;
    let pid = child.id().ok_or_else(|| anyhow!("TaskManager {number} exited at once"))?;
    let info = ProcessInfo {
        role: "taskmanager".into(),
        node_id: number,
        pid,
        grpc_addr: listen.to_string(),
        raft_addr: String::new(),
        http_addr: Some(http.to_string()),
        data_dir: dir.to_path_buf(),
        log: log_path,
        alive: true,
    };
    Ok((info, child))
}

/// A free TCP port on 127.0.0.1 for a process started here (by `jm local`, the benchmarks, the tests and the chaos
/// harness), below the kernel's ephemeral range (32768 and up on Linux). A port found by binding port 0 comes from
/// that range, and any outgoing connection on the machine can take it before the process binds it, or while a killed
/// process is down: a replica that lost its port that way dies at startup. Ports come from one counter per process,
/// from an offset drawn per process, and are checked free by binding them.
pub fn free_port() -> Result<u16> {
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    static OFFSET: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let offset = *OFFSET.get_or_init(|| rand::random::<u32>() % SPAN);
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = (FIRST + (offset + n) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port on 127.0.0.1 from {FIRST} to {}", FIRST + SPAN - 1)
}

fn addresses(args: &LocalArgs, previous: Option<&ClusterFile>) -> Result<Vec<(u64, String, String)>> {
    if let Some(prev) = previous {
        let replicas: Vec<&ProcessInfo> = prev.replicas().collect();
        if replicas.len() as u64 == args.replicas {
            return Ok(replicas.iter().map(|p| (p.node_id, p.grpc_addr.clone(), p.raft_addr.clone())).collect());
        }
        bail!(
            "{} holds a {}-replica cluster; use --replicas {} or another --data-dir",
            args.data_dir.display(),
            replicas.len(),
            replicas.len()
        );
    }
    (1..=args.replicas)
        .map(|id| {
            let (api, raft) = if args.base_port == 0 {
                (free_port()?, free_port()?)
            } else {
                let n = id as u16 - 1;
                (args.base_port + n, args.base_port + n + 10)
            };
            Ok((id, format!("127.0.0.1:{api}"), format!("127.0.0.1:{raft}")))
        })
        .collect()
}

fn write_cluster_file(path: &Path, file: &ClusterFile) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(file)?)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Runs the local cluster until Ctrl-C or SIGTERM.
pub async fn run(args: LocalArgs) -> Result<()> {
    if args.replicas != 3 && args.replicas != 5 {
        bail!("--replicas must be 3 or 5, got {}", args.replicas);
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create data dir {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.canonicalize()?;
    let cluster_path = data_dir.join("cluster.json");
    let previous: Option<ClusterFile> = std::fs::read(&cluster_path).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let addrs = addresses(&args, previous.as_ref())?;
    let peers: Vec<String> = addrs.iter().map(|(id, api, raft)| format!("{id}={raft}/{api}")).collect();
    let peers = peers.join(",");
    let exe = std::env::current_exe().context("cannot find the jm binary")?;
    let mut extra: Vec<String> =
        args.server_args.as_deref().unwrap_or("").split_whitespace().map(str::to_string).collect();
    extra.push("--checkpoint-dir".into());
    extra.push(data_dir.join("checkpoints").to_string_lossy().into_owned());

    let mut children: Vec<(ProcessInfo, Child)> = Vec::new();
    for (id, api, raft) in &addrs {
        // Flink's REST port is 8081: replica N serves REST on 8080+N with the default ports.
        let http = if args.base_port == 0 { free_port()? } else { 8080 + *id as u16 };
        let http_addr = format!("127.0.0.1:{http}");
        let mut replica_extra = extra.clone();
        replica_extra.extend(["--http-listen".to_string(), http_addr.clone()]);
        let spec = ReplicaSpec { id: *id, api_addr: api, raft_addr: raft, peers: &peers, extra: &replica_extra };
        let (mut info, child) = spawn_replica(&exe, &data_dir.join(format!("node-{id}")), &spec)?;
        info.http_addr = Some(http_addr);
        children.push((info, child));
    }
    let cluster_addrs: Vec<String> = addrs.iter().map(|(_, api, _)| api.clone()).collect();
    for number in 1..=u64::from(args.task_managers) {
        let listen = format!("127.0.0.1:{}", free_port()?);
        // TaskManager N serves its metrics on 9248+N with the default ports (Flink's reporters use 9249).
        let http = if args.base_port == 0 { free_port()? } else { 9248 + number as u16 };
        let http = format!("127.0.0.1:{http}");
        let dir = data_dir.join(format!("tm-{number}"));
        let cluster = cluster_addrs.join(",");
        children.push(spawn_task_manager(&exe, &dir, number, &cluster, (&listen, &http), args.slots)?);
    }
    let mut file =
        ClusterFile { data_dir: data_dir.clone(), processes: children.iter().map(|(p, _)| p.clone()).collect() };
    write_cluster_file(&cluster_path, &file)?;

    let client = ClusterClient::new(addrs.iter().map(|(_, api, _)| api.clone()).collect());
    let leader = wait_for_leader(&client, Duration::from_secs(30)).await;
    let example = match (args.no_example, leader) {
        (false, Some(_)) => Some(submit_example(&client).await),
        _ => None,
    };
    print_banner(&file, &exe, leader, args.base_port == 6123, example);

    supervise(&mut children, &mut file, &cluster_path).await
}

/// Waits until some replica reports a leader; returns (leader, term).
pub async fn wait_for_leader(client: &ClusterClient, timeout: Duration) -> Option<(u64, u64)> {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if let Ok(s) = client.call(|mut c| async move { c.cluster_status(pb::ClusterStatusRequest {}).await }).await {
            if let Some(leader) = s.leader {
                return Some((leader, s.term));
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// Submits the example job (once per cluster); returns its id or why it failed.
async fn submit_example(client: &ClusterClient) -> Result<String, String> {
    let request = pb::SubmitJobRequest { spec: EXAMPLE_JOB.as_bytes().to_vec(), idempotency_key: EXAMPLE_KEY.into() };
    let reply = client.call(|mut c| {
        let request = request.clone();
        async move { c.submit_job(request).await }
    });
    reply.await.map(|r| r.job_id).map_err(|e| e.to_string())
}

fn print_banner(
    file: &ClusterFile,
    exe: &Path,
    leader: Option<(u64, u64)>,
    default_ports: bool,
    example: Option<Result<String, String>>,
) {
    let replicas = file.replicas().count();
    let tms = file.processes.len() - replicas;
    println!("jm local: {replicas} replicas and {tms} TaskManagers running, data in {}", file.data_dir.display());
    for p in &file.processes {
        if p.role == "replica" {
            let (id, pid, api, raft, log) = (p.node_id, p.pid, &p.grpc_addr, &p.raft_addr, p.log.display());
            let rest = p.http_addr.as_deref().map(|a| format!("  rest http://{a}")).unwrap_or_default();
            println!("  replica {id}      pid {pid:<7}  api {api}  raft {raft}{rest}  log {log}");
        } else {
            let (n, pid, addr, log) = (p.node_id, p.pid, &p.grpc_addr, p.log.display());
            let metrics = p.http_addr.as_deref().map(|a| format!("  metrics http://{a}/metrics")).unwrap_or_default();
            println!("  taskmanager {n}  pid {pid:<7}  rpc {addr}{metrics}  log {log}");
        }
    }
    match leader {
        Some((id, term)) => println!("Leader: replica {id} (term {term})"),
        None => println!("No leader elected yet: check the replicas' logs."),
    }
    let jm = exe.display();
    let cluster = if default_ports { String::new() } else { format!(" --cluster {}", file.grpc_addrs()) };
    match example {
        Some(Ok(job_id)) => {
            println!("\nExample job {job_id} (docs/examples/sequence-count.yaml) submitted. Watch it:");
            println!("  {jm} job get {job_id}{cluster}");
            println!("  cat /tmp/jm-example-output/part-*      # committed output, grows with every checkpoint");
            println!("  kill -9 <leader pid>                   # the job keeps running, nothing restarts");
        }
        Some(Err(e)) => println!("\nThe example job could not be submitted: {e}"),
        None => {}
    }
    if let Some(rest) = file.replicas().find_map(|p| p.http_addr.clone()) {
        println!("\nDashboard: http://{rest}/  (every replica serves it, and Flink's REST API: curl http://{rest}/jobs/overview)");
    }
    println!("\nTry, in another terminal:");
    println!("  {jm} cluster status{cluster}");
    println!("  {jm} job submit docs/examples/fraud-detection.yaml{cluster}");
    println!("  {jm} job list{cluster}");
    println!("  {jm} taskmanagers{cluster}");
    println!("Process list for scripts: {}", file.data_dir.join("cluster.json").display());
    println!("Ctrl-C stops the cluster.");
}

async fn supervise(children: &mut [(ProcessInfo, Child)], file: &mut ClusterFile, path: &Path) -> Result<()> {
    let shutdown = super::server::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let alive = children.iter().filter(|(p, _)| p.alive && p.role == "replica").count();
        if alive == 0 {
            bail!("every replica has exited; see the logs under {}", file.data_dir.display());
        }
        let exited = async {
            loop {
                for (i, (info, child)) in children.iter_mut().enumerate() {
                    if info.alive {
                        if let Ok(Some(status)) = child.try_wait() {
                            return (i, status);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        tokio::select! {
            _ = &mut shutdown => break,
            (i, status) = exited => {
                let info = &mut children[i].0;
                info.alive = false;
                file.processes[i].alive = false;
                let _ = write_cluster_file(path, file);
                eprintln!(
                    "jm local: {} {} (pid {}) exited ({status}); not restarting it. Log: {}",
                    info.role, info.node_id, info.pid, info.log.display()
                );
            }
        }
    }
    println!("\njm local: stopping {} processes", children.iter().filter(|(p, _)| p.alive).count());
    stop_all(children).await;
    println!("jm local: stopped");
    Ok(())
}

async fn stop_all(children: &mut [(ProcessInfo, Child)]) {
    for (info, _) in children.iter().filter(|(p, _)| p.alive) {
        // SAFETY: kill(2) on a pid we started and have not reaped; no memory is touched.
        unsafe { libc::kill(info.pid as libc::pid_t, libc::SIGTERM) };
    }
    for (info, child) in children.iter_mut() {
        if !info.alive {
            continue;
        }
        if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
            eprintln!("jm local: {} {} did not stop within 10 s; killing it", info.role, info.node_id);
            let _ = child.kill().await;
        }
    }
}
