//! `jm bench`: what replicated writes cost, how long a failover takes, and how much memory and disk a
//! replica uses.
//!
//! # What it measures
//!
//! Every write is a job-metadata put (`PutJobMetadata`) of a 256-byte value on one job the benchmark
//! submits at the start. A put is the smallest command that goes through the whole write path: the
//! replica that receives it forwards it to the leader if it is a follower, the leader appends it to the
//! Raft log, replicates it to a majority (each of which writes it to sled), commits, applies it, and
//! only then replies. So one acknowledged put is one durable, replicated, applied log entry. Keys cycle
//! in a small set per client (`c{client}-{n % 8}`) because a job holds at most 1024 keys.
//!
//! 1. **Writes**: for each client count of `--clients` and each target (the leader, then a follower,
//!    which adds the forwarding hop), the clients share `--connections` HTTP/2 connections to that one
//!    replica (like etcd's benchmark `--conns`) and each keeps exactly one request in flight. After `--warmup-secs` it counts for `--duration-secs` the
//!    puts that complete, and records their latency in an HDR histogram. This is repeated `--repeat`
//!    times; the report gives every run and the median of each figure over the runs. Then the same load
//!    of stale reads from the leader gives a baseline: a request with next to no work behind it, the
//!    ceiling the machine puts on any request, and the writes' ratio to it.
//! 2. **Failover** (only on a cluster the benchmark started itself, since it kills processes): four
//!    writers write continuously through the followers; the leader is SIGKILLed; the failover time is
//!    from the kill to the first put acknowledged among those *sent* after the kill (a put sent before
//!    it says nothing about the new leader). Then the killed replica is restarted on its data and the
//!    next round waits until it has caught up and the cluster has run healthy for a second.
//! 3. **Memory**: each replica's resident set (`VmRSS`) after the write phase and at the end.
//! 4. **Disk**: `--disk-writes` more puts, then each replica's data directory size (the files we find
//!    and sled's own figure), then a `Compact` call on every replica (snapshot, purge the log), then
//!    the sizes again.
//!
//! # Caveats
//!
//! * Read the figures as orders of magnitude. The benchmark is meant for a developer machine, often
//!   small (two cores) and shared; the load generator and all three replicas run on the same machine
//!   and compete for the same CPUs, so a higher client count measures the scheduler as much as the job
//!   manager, and a neighbour's build shows up as noise. Medians over repeats damp, not remove, that.
//! * Everything is on 127.0.0.1: no network latency, and every replica's fsyncs hit the same disk.
//! * The failover time depends mostly on the election timeout (`--server-args "--election-min-ms ..."`)
//!   and on how soon the followers notice the leader is gone. With ten kills, "p99" is the maximum.
//! * A run against an existing cluster (`--cluster`) measures writes only: it neither kills nor
//!   inspects processes it does not own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::process::Child;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::api::grpc::pb::job_manager_client::JobManagerClient;
use crate::api::grpc::{pb, ClusterClient};
use crate::cli::local::{free_port, spawn_replica, wait_for_leader, ReplicaSpec};

/// Bytes of every metadata value written.
const VALUE_BYTES: usize = 256;
/// Keys each client cycles through.
const KEYS_PER_CLIENT: u64 = 8;
/// The most clients one measurement may use (64 × 8 keys stays well under a job's 1024).
const MAX_CLIENTS: usize = 64;
/// Replicas of a cluster the benchmark starts.
const OWN_REPLICAS: u64 = 3;
/// How long the cluster may take to elect a leader.
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one write of the throughput and disk phases may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Writers during a failover.
const FAILOVER_WRITERS: usize = 4;
/// How long one write attempt during a failover may take before the writer tries the next replica.
const FAILOVER_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long after a kill a write must succeed before the round counts as failed.
const FAILOVER_GIVE_UP: Duration = Duration::from_secs(30);
/// How long a restarted replica may take to rejoin and catch up.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the cluster runs healthy after a restarted replica caught up, before the next kill.
const FAILOVER_SETTLE: Duration = Duration::from_secs(1);
/// How long the disk phase may write.
const DISK_PHASE_LIMIT: Duration = Duration::from_secs(900);
/// How long one `Compact` call may take.
const COMPACT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long to wait after compacting before measuring the disk again.
const COMPACTION_SETTLE: Duration = Duration::from_secs(2);
/// How long one `ClusterStatus` call may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(3);

const EXAMPLES: &str = "
  # Everything, on a 3-replica cluster of its own (several minutes); the report is JSON on stdout
  jm bench > bench.json

  # Write throughput and latency only, quickly
  jm bench --skip-failover --skip-disk --duration-secs 2 --repeat 1

  # Against an existing cluster (throughput and latency only)
  jm bench --cluster 10.0.0.1:6123,10.0.0.2:6123,10.0.0.3:6123 --clients 1,16
";

/// Flags of `jm bench`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_long_help = super::examples(EXAMPLES))]
pub struct BenchArgs {
    /// Client API addresses of an existing cluster, comma-separated. Without it, bench starts its own
    /// 3-replica cluster (and can then also measure failover, memory and disk).
    #[arg(long, value_delimiter = ',')]
    pub cluster: Option<Vec<String>>,
    /// Where the replicas bench starts keep their data; must be empty or absent, and is kept. Default:
    /// a fresh temporary directory, removed at the end unless --keep-data.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Keep the temporary data directory (and the server logs in it) at the end.
    #[arg(long)]
    pub keep_data: bool,
    /// Extra flags for every `jm server` bench starts, e.g. "--heartbeat-ms 50".
    #[arg(long, allow_hyphen_values = true)]
    pub server_args: Option<String>,
    /// Seconds of each throughput measurement.
    #[arg(long, default_value_t = 3)]
    pub duration_secs: u64,
    /// Seconds of writing before each measurement, not counted.
    #[arg(long, default_value_t = 1)]
    pub warmup_secs: u64,
    /// How many times each throughput measurement is repeated (the report gives medians).
    #[arg(long, default_value_t = 3)]
    pub repeat: u32,
    /// Client counts to measure, comma-separated (each at most 64).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub clients: Vec<usize>,
    /// gRPC connections the clients of a measurement share (HTTP/2 multiplexes their requests), like
    /// etcd's benchmark `--conns`; 0 gives every client its own connection.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// How many times to kill the leader.
    #[arg(long, default_value_t = 10)]
    pub failovers: u32,
    /// Acknowledged writes before measuring disk use.
    #[arg(long, default_value_t = 100_000)]
    pub disk_writes: u64,
    /// Skip the failover phase.
    #[arg(long)]
    pub skip_failover: bool,
    /// Skip the disk phase.
    #[arg(long)]
    pub skip_disk: bool,
}

// ---------------------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------------------

/// The JSON document `jm bench` prints.
#[derive(Debug, Serialize)]
struct Report {
    unix_time: u64,
    started_cluster: bool,
    replicas: usize,
    value_bytes: usize,
    machine: Machine,
    server_args: Option<String>,
    settings: Settings,
    writes: Vec<WriteConfigReport>,
    /// The same load as the largest write configuration, but stale reads of one key from the leader: a
    /// gRPC round trip with next to no work behind it, the ceiling this machine puts on any request.
    baseline_stale_reads: Option<BaselineReport>,
    failover: Option<FailoverReport>,
    failover_skipped: Option<String>,
    memory: Option<MemoryReport>,
    disk: Option<DiskReport>,
    disk_skipped: Option<String>,
    elapsed_secs: f64,
}

#[derive(Debug, Serialize)]
struct BaselineReport {
    clients: usize,
    reads_per_sec: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    /// Leader writes/s at the same client count divided by these reads/s.
    write_to_read_ratio: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Machine {
    cpus: usize,
}

#[derive(Debug, Serialize)]
struct Settings {
    duration_secs: u64,
    warmup_secs: u64,
    repeat: u32,
    clients: Vec<usize>,
    connections: usize,
}

/// One (client count, target) measurement: medians over its runs.
#[derive(Debug, Serialize)]
struct WriteConfigReport {
    clients: usize,
    target: &'static str,
    node_id: u64,
    writes_per_sec: Option<f64>,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    errors: u64,
    /// False if the leader or term changed while this configuration ran.
    leader_stable: bool,
    runs: Vec<RunReport>,
}

/// One measurement run.
#[derive(Debug, Serialize)]
struct RunReport {
    writes_per_sec: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_error: Option<String>,
}

#[derive(Debug, Serialize)]
struct FailoverReport {
    kills: usize,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
    samples_ms: Vec<f64>,
    /// Rounds in which no write sent after the kill was acknowledged in time.
    failed_rounds: Vec<String>,
    /// Set if the phase stopped early.
    error: Option<String>,
    note: &'static str,
}

#[derive(Debug, Serialize)]
struct MemoryReport {
    after_writes_mib: BTreeMap<u64, f64>,
    after_disk_mib: BTreeMap<u64, f64>,
}

#[derive(Debug, Serialize)]
struct DiskReport {
    writes: u64,
    writes_per_sec: f64,
    errors: u64,
    before_compaction: BTreeMap<u64, DiskUse>,
    compaction: BTreeMap<u64, CompactionOutcome>,
    after_compaction: BTreeMap<u64, DiskUse>,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct DiskUse {
    /// Sum of the lengths of every file under the replica's directory (its server log included).
    dir_bytes: u64,
    /// The server log's share of `dir_bytes`.
    server_log_bytes: u64,
    /// Sled's own figure (`data_dir_bytes` of ClusterStatus); null if the replica did not answer.
    sled_bytes: Option<u64>,
}

#[derive(Debug, Serialize)]
struct CompactionOutcome {
    snapshot_index: Option<u64>,
    purged_index: Option<u64>,
    error: Option<String>,
}

// ---------------------------------------------------------------------------------------------------
// Entry point
// ---------------------------------------------------------------------------------------------------

/// Runs the benchmark and prints its JSON report on stdout; progress goes to stderr.
pub async fn run(args: BenchArgs) -> Result<()> {
    validate(&args)?;
    let started = Instant::now();
    let mut owned = match &args.cluster {
        Some(_) => None,
        None => Some(OwnedCluster::start(&args).await?),
    };
    let outcome = bench(&args, owned.as_mut(), started).await;
    if let Some(cluster) = owned.as_mut() {
        cluster.stop().await;
        // Keep the server logs of a failed run: the error message points at them.
        cluster.remove_root &= outcome.is_ok();
    }
    drop(owned);
    let report = outcome?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn validate(args: &BenchArgs) -> Result<()> {
    if args.clients.is_empty() {
        bail!("--clients needs at least one client count");
    }
    if let Some(bad) = args.clients.iter().find(|c| **c == 0 || **c > MAX_CLIENTS) {
        bail!("--clients {bad}: each client count must be between 1 and {MAX_CLIENTS}");
    }
    if args.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    if args.duration_secs == 0 {
        bail!("--duration-secs must be at least 1");
    }
    if let Some(addrs) = &args.cluster {
        if addrs.iter().all(|a| a.trim().is_empty()) {
            bail!("--cluster needs at least one address");
        }
    }
    Ok(())
}

async fn bench(args: &BenchArgs, mut owned: Option<&mut OwnedCluster>, started: Instant) -> Result<Report> {
    let addrs = match (&args.cluster, owned.as_deref()) {
        (Some(list), _) => list.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
        (None, Some(cluster)) => cluster.api_addrs(),
        (None, None) => bail!("no cluster to measure"),
    };
    let leader = wait_for_leader(&ClusterClient::new(addrs.clone()), LEADER_TIMEOUT).await;
    if leader.is_none() {
        bail!("no leader elected within {} s{}", LEADER_TIMEOUT.as_secs(), logs_hint(owned.as_deref()));
    }
    let require_all = owned.is_some();
    let (leader, _) = agreed_leader(&addrs, require_all, LEADER_TIMEOUT).await?;
    let members = members(&addrs).await?;
    progress(&format!("cluster of {} replicas, leader {leader}", members.len()));
    let job: Arc<str> = create_bench_job(&addrs).await?.into();
    progress(&format!("bench job {job}"));

    let mut writes = Vec::new();
    for clients in &args.clients {
        for target in [Target::Leader, Target::Follower] {
            writes.push(measure_write_config(args, &addrs, require_all, &job, *clients, target).await?);
        }
    }
    let baseline_stale_reads = measure_baseline(args, &addrs, &job, leader, &writes).await;
    let after_writes_mib = owned.as_deref().map(OwnedCluster::resident_mib);

    let (failover, failover_skipped) = match (owned.as_deref_mut(), args.skip_failover) {
        (None, _) => (None, Some("the benchmark did not start the cluster, so it does not kill replicas".into())),
        (Some(_), true) => (None, Some("--skip-failover".into())),
        (Some(_), false) if args.failovers == 0 => (None, Some("--failovers 0".into())),
        (Some(cluster), false) => (Some(measure_failovers(cluster, &job, args.failovers).await), None),
    };

    let (disk, disk_skipped) = match (owned.as_deref(), args.skip_disk) {
        (None, _) => (None, Some("the benchmark did not start the cluster, so it cannot see its disk".into())),
        (Some(_), true) => (None, Some("--skip-disk".into())),
        (Some(cluster), false) => (Some(measure_disk(cluster, &job, args.disk_writes).await), None),
    };
    let memory = match (after_writes_mib, owned.as_deref()) {
        (Some(after_writes_mib), Some(cluster)) => {
            Some(MemoryReport { after_writes_mib, after_disk_mib: cluster.resident_mib() })
        }
        _ => None,
    };

    Ok(Report {
        unix_time: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        started_cluster: owned.is_some(),
        replicas: members.len(),
        value_bytes: VALUE_BYTES,
        machine: Machine { cpus: std::thread::available_parallelism().map_or(0, |n| n.get()) },
        server_args: args.server_args.clone(),
        settings: Settings {
            duration_secs: args.duration_secs,
            warmup_secs: args.warmup_secs,
            repeat: args.repeat,
            clients: args.clients.clone(),
            connections: args.connections,
        },
        writes,
        baseline_stale_reads,
        failover,
        failover_skipped,
        memory,
        disk,
        disk_skipped,
        elapsed_secs: round3(started.elapsed().as_secs_f64()),
    })
}

fn progress(line: &str) {
    eprintln!("bench: {line}");
}

fn logs_hint(owned: Option<&OwnedCluster>) -> String {
    owned.map(|c| format!(" (server logs: {}/node-*/server.log)", c.root.display())).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------------
// The cluster bench starts
// ---------------------------------------------------------------------------------------------------

/// A replica process the benchmark started.
struct OwnedReplica {
    id: u64,
    api_addr: String,
    raft_addr: String,
    dir: PathBuf,
    pid: u32,
    child: Option<Child>,
}

/// The 3 replicas the benchmark runs when not given `--cluster`. Dropping it kills them and removes
/// the temporary data directory (unless kept).
struct OwnedCluster {
    exe: PathBuf,
    peers: String,
    extra: Vec<String>,
    root: PathBuf,
    remove_root: bool,
    replicas: Vec<OwnedReplica>,
}

impl OwnedCluster {
    async fn start(args: &BenchArgs) -> Result<Self> {
        let (root, remove_root) = prepare_data_dir(args)?;
        let exe = std::env::current_exe().context("cannot find the jm binary")?;
        let extra = args.server_args.as_deref().unwrap_or("").split_whitespace().map(str::to_string).collect();
        let mut replicas = Vec::new();
        for id in 1..=OWN_REPLICAS {
            replicas.push(OwnedReplica {
                id,
                api_addr: format!("127.0.0.1:{}", free_port()?),
                raft_addr: format!("127.0.0.1:{}", free_port()?),
                dir: root.join(format!("node-{id}")),
                pid: 0,
                child: None,
            });
        }
        let peers = replicas.iter().map(|r| format!("{}={}/{}", r.id, r.raft_addr, r.api_addr)).collect::<Vec<_>>();
        let mut cluster = OwnedCluster { exe, peers: peers.join(","), extra, root, remove_root, replicas };
        progress(&format!("starting {OWN_REPLICAS} replicas, data in {}", cluster.root.display()));
        for id in 1..=OWN_REPLICAS {
            cluster.spawn(id)?;
        }
        Ok(cluster)
    }

    fn api_addrs(&self) -> Vec<String> {
        self.replicas.iter().map(|r| r.api_addr.clone()).collect()
    }

    fn api_addr(&self, id: u64) -> Option<String> {
        self.replicas.iter().find(|r| r.id == id).map(|r| r.api_addr.clone())
    }

    fn replica_mut(&mut self, id: u64) -> Result<&mut OwnedReplica> {
        self.replicas.iter_mut().find(|r| r.id == id).ok_or_else(|| anyhow!("no replica {id}"))
    }

    /// Starts (or restarts, on its data) replica `id`.
    fn spawn(&mut self, id: u64) -> Result<()> {
        let exe = self.exe.clone();
        let peers = self.peers.clone();
        let extra = self.extra.clone();
        let r = self.replica_mut(id)?;
        let spec = ReplicaSpec { id, api_addr: &r.api_addr, raft_addr: &r.raft_addr, peers: &peers, extra: &extra };
        let (info, child) = spawn_replica(&exe, &r.dir, &spec)?;
        r.pid = info.pid;
        r.child = Some(child);
        Ok(())
    }

    /// SIGKILLs replica `id` and reaps it; returns the instant just before the signal.
    async fn kill(&mut self, id: u64) -> Result<Instant> {
        let r = self.replica_mut(id)?;
        let mut child = r.child.take().ok_or_else(|| anyhow!("replica {id} is not running"))?;
        let killed_at = Instant::now();
        child.start_kill().with_context(|| format!("cannot kill replica {id}"))?;
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        progress(&format!("killed replica {id} (leader) at unix ms {wall}"));
        let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        Ok(killed_at)
    }

    /// Restarts replica `id` if its process has exited; true if it did.
    fn respawn_if_exited(&mut self, id: u64) -> Result<bool> {
        let r = self.replica_mut(id)?;
        let exited = match r.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(Some(_))),
            None => true,
        };
        if exited {
            r.child = None;
            self.spawn(id)?;
        }
        Ok(exited)
    }

    /// Each running replica's resident memory in MiB.
    fn resident_mib(&self) -> BTreeMap<u64, f64> {
        self.replicas
            .iter()
            .filter(|r| r.child.is_some())
            .filter_map(|r| resident_kib(r.pid).map(|kib| (r.id, round3(kib as f64 / 1024.0))))
            .collect()
    }

    /// Kills every replica and waits for each to exit.
    async fn stop(&mut self) {
        for r in &mut self.replicas {
            if let Some(mut child) = r.child.take() {
                let _ = child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
            }
        }
    }
}

impl Drop for OwnedCluster {
    fn drop(&mut self) {
        for r in &mut self.replicas {
            if let Some(mut child) = r.child.take() {
                let _ = child.start_kill();
                // Give the process a moment to die before its files are removed.
                for _ in 0..50 {
                    if !matches!(child.try_wait(), Ok(None)) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        if self.remove_root {
            if let Err(e) = std::fs::remove_dir_all(&self.root) {
                eprintln!("bench: cannot remove {}: {e}", self.root.display());
            }
        } else {
            eprintln!("bench: data and server logs kept in {}", self.root.display());
        }
    }
}

/// The data directory and whether to remove it at the end.
fn prepare_data_dir(args: &BenchArgs) -> Result<(PathBuf, bool)> {
    let (dir, remove) = match &args.data_dir {
        Some(dir) => {
            let non_empty = std::fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(false);
            if non_empty {
                bail!("--data-dir {} is not empty; bench needs a fresh directory", dir.display());
            }
            (dir.clone(), false)
        }
        None => {
            let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            let dir = std::env::temp_dir().join(format!("jm-bench-{}-{nanos}", std::process::id()));
            (dir, !args.keep_data)
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create data dir {}", dir.display()))?;
    let dir = dir.canonicalize().with_context(|| format!("cannot resolve {}", dir.display()))?;
    Ok((dir, remove))
}

/// `VmRSS` of process `pid` in KiB.
fn resident_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------------------------------
// Cluster status helpers
// ---------------------------------------------------------------------------------------------------

/// The status as the replica at `addr` sees it.
async fn status_of(addr: &str) -> Option<pb::ClusterStatusReply> {
    let client = ClusterClient::new(vec![addr.to_string()]).with_request_timeout(STATUS_TIMEOUT);
    let call = client.call(|mut c| async move { c.cluster_status(pb::ClusterStatusRequest {}).await });
    tokio::time::timeout(STATUS_TIMEOUT * 2, call).await.ok()?.ok()
}

/// Node id → client API address, from the first replica that answers.
async fn members(addrs: &[String]) -> Result<BTreeMap<u64, String>> {
    for addr in addrs {
        if let Some(status) = status_of(addr).await {
            return Ok(status.replicas.into_iter().map(|r| (r.node_id, r.api_addr)).collect());
        }
    }
    bail!("no replica answered ClusterStatus at {}", addrs.join(","))
}

/// What the replicas agree on: the leader, its term and its commit index.
struct Agreement {
    leader: u64,
    term: u64,
    leader_committed: u64,
}

/// The leader every replica at `addrs` reports (every one must answer if `require_all`, else every
/// one that answers), once its leader services run.
async fn agreement_once(addrs: &[String], require_all: bool) -> Option<Agreement> {
    let replies = futures::future::join_all(addrs.iter().map(|a| status_of(a))).await;
    if require_all && replies.iter().any(Option::is_none) {
        return None;
    }
    let replies: Vec<_> = replies.into_iter().flatten().collect();
    let leader = replies.first()?.leader?;
    if replies.iter().any(|r| r.leader != Some(leader)) {
        return None;
    }
    let own = replies.iter().find(|r| r.served_by == leader)?;
    let me = own.replicas.iter().find(|r| r.node_id == leader)?;
    me.leader_services_active.then_some(Agreement { leader, term: own.term, leader_committed: me.committed_index })
}

/// Waits for [`agreement_once`]; returns (leader, term).
async fn agreed_leader(addrs: &[String], require_all: bool, timeout: Duration) -> Result<(u64, u64)> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(a) = agreement_once(addrs, require_all).await {
            return Ok((a.leader, a.term));
        }
        if Instant::now() >= deadline {
            bail!("the replicas did not agree on a leader within {} s", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The job whose metadata the write phases set: valid, but it needs no TaskManager to exist.
const BENCH_JOB: &[u8] = b"name: bench\nvertices:\n  - id: source\n    operators: [{sequence: {}}, {blackhole: {}}]\n";

/// Submits the job whose metadata every write sets.
async fn create_bench_job(addrs: &[String]) -> Result<String> {
    let client = ClusterClient::new(addrs.to_vec()).with_request_timeout(WRITE_TIMEOUT);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let key = format!("jm-bench-{nanos}");
    let deadline = Instant::now() + LEADER_TIMEOUT;
    loop {
        let request = pb::SubmitJobRequest { spec: BENCH_JOB.to_vec(), idempotency_key: key.clone() };
        let result = client
            .call(|mut c| {
                let request = request.clone();
                async move { c.submit_job(request).await }
            })
            .await;
        match result {
            Ok(reply) => return Ok(reply.job_id),
            Err(e) if Instant::now() >= deadline => bail!("cannot submit the bench job: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Phase 1: throughput and latency
// ---------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Leader,
    Follower,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Leader => "leader",
            Target::Follower => "follower",
        }
    }
}

async fn measure_write_config(
    args: &BenchArgs,
    addrs: &[String],
    require_all: bool,
    job: &Arc<str>,
    clients: usize,
    target: Target,
) -> Result<WriteConfigReport> {
    let (leader, term) = agreed_leader(addrs, require_all, LEADER_TIMEOUT).await?;
    let members = members(addrs).await?;
    let node_id = match target {
        Target::Leader => leader,
        Target::Follower => *members
            .keys()
            .find(|id| **id != leader)
            .ok_or_else(|| anyhow!("the cluster has no follower to write through"))?,
    };
    let addr = members.get(&node_id).cloned().ok_or_else(|| anyhow!("replica {node_id} has no address"))?;
    let mut runs = Vec::new();
    for run in 1..=args.repeat {
        let window = Window::starting_now(args.warmup_secs, args.duration_secs);
        let report = measure_once(&addr, job, clients, args.connections, Load::Writes, window).await;
        progress(&format!(
            "writes: {clients} clients via {} (replica {node_id}), run {run}/{}: {:.0} writes/s, p50 {} ms, p99 {} ms, {} errors",
            target.name(),
            args.repeat,
            report.writes_per_sec,
            show_ms(report.p50_ms),
            show_ms(report.p99_ms),
            report.errors
        ));
        runs.push(report);
    }
    let leader_stable = agreement_once(addrs, false).await.is_some_and(|a| a.leader == leader && a.term == term);
    Ok(WriteConfigReport {
        clients,
        target: target.name(),
        node_id,
        writes_per_sec: median(runs.iter().map(|r| r.writes_per_sec)).map(round1),
        p50_ms: median(runs.iter().filter_map(|r| r.p50_ms)).map(round3),
        p99_ms: median(runs.iter().filter_map(|r| r.p99_ms)).map(round3),
        errors: runs.iter().map(|r| r.errors).sum(),
        leader_stable,
        runs,
    })
}

/// When a measurement counts: writes completing in `[measure_from, end)`.
#[derive(Debug, Clone, Copy)]
struct Window {
    measure_from: Instant,
    end: Instant,
}

impl Window {
    fn starting_now(warmup_secs: u64, duration_secs: u64) -> Self {
        let measure_from = Instant::now() + Duration::from_secs(warmup_secs);
        Window { measure_from, end: measure_from + Duration::from_secs(duration_secs) }
    }

    fn seconds(&self) -> f64 {
        (self.end - self.measure_from).as_secs_f64()
    }
}

/// What one client saw in the measured part of a window.
struct ClientTally {
    latencies_us: Histogram<u64>,
    acked: u64,
    errors: u64,
    first_error: Option<String>,
}

impl ClientTally {
    fn new() -> Self {
        ClientTally { latencies_us: new_histogram(), acked: 0, errors: 0, first_error: None }
    }

    fn error(&mut self, counted: bool, message: impl FnOnce() -> String) {
        if counted {
            self.errors += 1;
            if self.first_error.is_none() {
                self.first_error = Some(message());
            }
        }
    }

    fn report(&self, window: Window) -> RunReport {
        RunReport {
            writes_per_sec: round1(self.acked as f64 / window.seconds()),
            p50_ms: quantile_ms(&self.latencies_us, 0.5),
            p99_ms: quantile_ms(&self.latencies_us, 0.99),
            errors: self.errors,
            first_error: self.first_error.clone(),
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("1 µs to 1 h at 3 digits is a valid histogram")
}

/// `clients` clients sharing `connections` connections to `addr` (0: one each), each with one write in
/// flight, for one window.
/// What the clients of a measurement send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    /// Metadata puts: replicated writes.
    Writes,
    /// Stale reads of one metadata key: served locally, the request-handling baseline.
    StaleReads,
}

/// The stale-read baseline at the largest client count, against the leader.
async fn measure_baseline(
    args: &BenchArgs,
    addrs: &[String],
    job: &Arc<str>,
    leader: u64,
    writes: &[WriteConfigReport],
) -> Option<BaselineReport> {
    let clients = *args.clients.iter().max()?;
    let addr = members(addrs).await.ok()?.get(&leader).cloned()?;
    let mut runs = Vec::new();
    for _ in 0..args.repeat {
        let window = Window::starting_now(args.warmup_secs, args.duration_secs);
        runs.push(measure_once(&addr, job, clients, args.connections, Load::StaleReads, window).await);
    }
    let reads_per_sec = median(runs.iter().map(|r| r.writes_per_sec))?;
    let leader_writes =
        writes.iter().find(|w| w.clients == clients && w.target == "leader").and_then(|w| w.writes_per_sec);
    progress(&format!("baseline: {clients} clients reading (stale) from the leader: {reads_per_sec:.0} reads/s"));
    Some(BaselineReport {
        clients,
        reads_per_sec,
        p50_ms: median(runs.iter().filter_map(|r| r.p50_ms)),
        p99_ms: median(runs.iter().filter_map(|r| r.p99_ms)),
        write_to_read_ratio: leader_writes.map(|w| round1(100.0 * w / reads_per_sec) / 100.0),
    })
}

async fn measure_once(
    addr: &str,
    job: &Arc<str>,
    clients: usize,
    connections: usize,
    load: Load,
    window: Window,
) -> RunReport {
    let mut total = ClientTally::new();
    let shared = if connections == 0 { clients } else { connections.min(clients) };
    let mut conns = Vec::with_capacity(shared);
    for _ in 0..shared {
        match connect_until(addr, window.end, &mut total).await {
            Some(conn) => conns.push(conn),
            None => break,
        }
    }
    if conns.is_empty() {
        return total.report(window);
    }
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let conn = conns[client % conns.len()].clone();
            tokio::spawn(write_in_window(conn, job.clone(), client, load, window))
        })
        .collect();
    for task in tasks {
        match task.await {
            Ok(tally) => {
                let _ = total.latencies_us.add(&tally.latencies_us);
                total.acked += tally.acked;
                total.errors += tally.errors;
                total.first_error = total.first_error.or(tally.first_error);
            }
            Err(e) => total.error(true, || format!("client task failed: {e}")),
        }
    }
    total.report(window)
}

/// One client of [`measure_once`]: writes until the window ends, one request at a time.
async fn write_in_window(
    mut conn: JobManagerClient<Channel>,
    job: Arc<str>,
    client: usize,
    load: Load,
    window: Window,
) -> ClientTally {
    let mut tally = ClientTally::new();
    let mut n: u64 = 0;
    while Instant::now() < window.end {
        let key = format!("c{client}-{}", n % KEYS_PER_CLIENT);
        n += 1;
        let sent = Instant::now();
        let call = async {
            match load {
                Load::Writes => conn.put_job_metadata(put_request(&job, key)).await.map(|_| ()),
                Load::StaleReads => {
                    let request = pb::GetJobMetadataRequest {
                        job_id: job.to_string(),
                        key,
                        consistency: pb::ReadConsistency::Stale as i32,
                    };
                    conn.get_job_metadata(request).await.map(|_| ())
                }
            }
        };
        let reply = match tokio::time::timeout_at(window.end, call).await {
            Ok(reply) => reply,
            Err(_) => break, // the window closed with this write in flight: it does not count
        };
        let done = Instant::now();
        let counted = done >= window.measure_from;
        match reply {
            Ok(_) if counted => {
                tally.acked += 1;
                tally.latencies_us.saturating_record((done - sent).as_micros() as u64);
            }
            Ok(_) => {}
            Err(status) => {
                tally.error(counted, || format!("{:?}: {}", status.code(), status.message()));
                tokio::time::sleep_until((Instant::now() + Duration::from_millis(10)).min(window.end)).await;
            }
        }
    }
    tally
}

/// Connects to `addr`, retrying until `until`; failures are counted as errors.
async fn connect_until(addr: &str, until: Instant, tally: &mut ClientTally) -> Option<JobManagerClient<Channel>> {
    let client = ClusterClient::new(vec![addr.to_string()]).with_request_timeout(WRITE_TIMEOUT);
    while Instant::now() < until {
        match client.connect_to(addr).await {
            Ok(conn) => return Some(conn),
            Err(e) => {
                tally.error(true, || format!("cannot connect to {addr}: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    None
}

fn put_request(job: &str, key: String) -> pb::PutJobMetadataRequest {
    pb::PutJobMetadataRequest { job_id: job.to_string(), key, value: vec![b'x'; VALUE_BYTES] }
}

// ---------------------------------------------------------------------------------------------------
// Phase 2: failover
// ---------------------------------------------------------------------------------------------------

async fn measure_failovers(cluster: &mut OwnedCluster, job: &Arc<str>, rounds: u32) -> FailoverReport {
    let mut samples = Vec::new();
    let mut failed_rounds = Vec::new();
    let mut error = None;
    for round in 1..=rounds {
        match failover_round(cluster, job).await {
            Ok(RoundOutcome::Recovered(ms)) => {
                progress(&format!("failover {round}/{rounds}: first write acknowledged {ms:.0} ms after the kill"));
                samples.push(ms);
            }
            Ok(RoundOutcome::NoWriteAcked(why)) => {
                progress(&format!("failover {round}/{rounds}: {why}"));
                failed_rounds.push(format!("round {round}: {why}"));
            }
            Err(e) => {
                progress(&format!("failover {round}/{rounds}: stopping the phase: {e:#}"));
                error = Some(format!("round {round}: {e:#}"));
                break;
            }
        }
    }
    let mut sorted = samples.clone();
    sorted.sort_by(f64::total_cmp);
    FailoverReport {
        kills: samples.len() + failed_rounds.len(),
        p50_ms: percentile(&sorted, 0.5).map(round1),
        p99_ms: percentile(&sorted, 0.99).map(round1),
        max_ms: sorted.last().copied().map(round1),
        samples_ms: samples.into_iter().map(round1).collect(),
        failed_rounds,
        error,
        note: "time from SIGKILL of the leader to the first write acknowledged among those sent after the kill, \
               writing through the surviving replicas; with few kills p99 is effectively the maximum",
    }
}

enum RoundOutcome {
    /// Milliseconds from the kill to the first acknowledged write sent after it.
    Recovered(f64),
    /// No write sent after the kill was acknowledged in time; why.
    NoWriteAcked(String),
}

/// Kills the leader under load, measures, restarts it and waits until it has caught up.
async fn failover_round(cluster: &mut OwnedCluster, job: &Arc<str>) -> Result<RoundOutcome> {
    let all = cluster.api_addrs();
    let (leader, _) = agreed_leader(&all, true, LEADER_TIMEOUT).await?;
    let survivors: Vec<String> =
        cluster.replicas.iter().filter(|r| r.id != leader).map(|r| r.api_addr.clone()).collect();
    let (acks, mut acked) = mpsc::unbounded_channel();
    let writers: Vec<_> = (0..FAILOVER_WRITERS)
        .map(|w| tokio::spawn(failover_writer(survivors.clone(), w, job.clone(), acks.clone())))
        .collect();
    drop(acks);
    // Let the writes flow before the kill.
    let _ = tokio::time::timeout(Duration::from_secs(5), acked.recv()).await;
    let outcome = match cluster.kill(leader).await {
        Ok(killed_at) => first_ack_sent_after(&mut acked, killed_at).await,
        Err(e) => Err(e),
    };
    for w in &writers {
        w.abort();
    }
    cluster.spawn(leader).with_context(|| format!("cannot restart replica {leader}"))?;
    wait_until_caught_up(cluster, leader).await?;
    outcome
}

/// Reads acknowledgements (sent, acked) until one of a write sent at or after `killed_at`.
async fn first_ack_sent_after(
    acked: &mut mpsc::UnboundedReceiver<(Instant, Instant)>,
    killed_at: Instant,
) -> Result<RoundOutcome> {
    let give_up = killed_at + FAILOVER_GIVE_UP;
    loop {
        match tokio::time::timeout_at(give_up, acked.recv()).await {
            Ok(Some((sent, done))) if sent >= killed_at => {
                return Ok(RoundOutcome::Recovered((done - killed_at).as_secs_f64() * 1000.0))
            }
            Ok(Some(_)) => continue,
            Ok(None) => bail!("every failover writer stopped"),
            Err(_) => {
                return Ok(RoundOutcome::NoWriteAcked(format!(
                    "no write sent after the kill was acknowledged within {} s",
                    FAILOVER_GIVE_UP.as_secs()
                )))
            }
        }
    }
}

/// Writes continuously through `addrs`, moving to the next replica after an error or a slow attempt,
/// and reports (sent, acknowledged) of every acknowledged write. Ends when nobody listens or after
/// a bound far above any useful failover.
async fn failover_writer(
    addrs: Vec<String>,
    writer: usize,
    job: Arc<str>,
    acks: mpsc::UnboundedSender<(Instant, Instant)>,
) {
    let stop_at = Instant::now() + FAILOVER_GIVE_UP * 4;
    let client = ClusterClient::new(addrs.clone()).with_request_timeout(FAILOVER_ATTEMPT_TIMEOUT);
    let mut conns: Vec<Option<JobManagerClient<Channel>>> = vec![None; addrs.len()];
    let mut i = writer % addrs.len().max(1);
    let mut n: u64 = 0;
    while Instant::now() < stop_at && !addrs.is_empty() {
        let mut conn = match &conns[i] {
            Some(c) => c.clone(),
            None => match tokio::time::timeout(FAILOVER_ATTEMPT_TIMEOUT, client.connect_to(&addrs[i])).await {
                Ok(Ok(c)) => {
                    conns[i] = Some(c.clone());
                    c
                }
                _ => {
                    i = (i + 1) % addrs.len();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let request = put_request(&job, format!("f{writer}-{}", n % KEYS_PER_CLIENT));
        n += 1;
        let sent = Instant::now();
        match tokio::time::timeout(FAILOVER_ATTEMPT_TIMEOUT, conn.put_job_metadata(request)).await {
            Ok(Ok(_)) => {
                if acks.send((sent, Instant::now())).is_err() {
                    return;
                }
            }
            _ => i = (i + 1) % addrs.len(),
        }
    }
}

/// Waits until every replica reports the same leader and `restarted` has applied at least the
/// leader's commit index of that moment. Restarts the replica if it exits meanwhile.
async fn wait_until_caught_up(cluster: &mut OwnedCluster, restarted: u64) -> Result<()> {
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    let all = cluster.api_addrs();
    let addr = cluster.api_addr(restarted).ok_or_else(|| anyhow!("no replica {restarted}"))?;
    let mut target = None;
    while Instant::now() < deadline {
        if cluster.respawn_if_exited(restarted)? {
            progress(&format!("replica {restarted} exited after its restart; starting it again"));
            target = None;
        }
        if target.is_none() {
            target = agreement_once(&all, true).await.map(|a| a.leader_committed);
        }
        if let Some(target) = target {
            if applied_index_of(&addr, restarted).await.is_some_and(|applied| applied >= target) {
                // Let the cluster run healthy for a moment, as between real failures: a kill right
                // after a restart measures a replica still settling in, not a failover.
                tokio::time::sleep(FAILOVER_SETTLE).await;
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "replica {restarted} did not rejoin and catch up within {} s{}",
        CATCH_UP_TIMEOUT.as_secs(),
        logs_hint(Some(cluster))
    )
}

/// Replica `id`'s applied index, as it reports it itself.
async fn applied_index_of(addr: &str, id: u64) -> Option<u64> {
    let status = status_of(addr).await?;
    status.replicas.iter().find(|r| r.node_id == id && r.reachable).map(|r| r.applied_index)
}

// ---------------------------------------------------------------------------------------------------
// Phase 4: disk
// ---------------------------------------------------------------------------------------------------

async fn measure_disk(cluster: &OwnedCluster, job: &Arc<str>, writes: u64) -> DiskReport {
    let mut report = DiskReport {
        writes: 0,
        writes_per_sec: 0.0,
        errors: 0,
        before_compaction: BTreeMap::new(),
        compaction: BTreeMap::new(),
        after_compaction: BTreeMap::new(),
        error: None,
    };
    let all = cluster.api_addrs();
    let leader = match agreed_leader(&all, true, LEADER_TIMEOUT).await {
        Ok((leader, _)) => leader,
        Err(e) => {
            report.error = Some(format!("{e:#}"));
            return report;
        }
    };
    let Some(leader_addr) = cluster.api_addr(leader) else {
        report.error = Some(format!("no address for leader {leader}"));
        return report;
    };
    progress(&format!("disk: writing {writes} values through leader {leader} with {MAX_CLIENTS} clients"));
    let fill = fill(&leader_addr, job, writes).await;
    report.writes = fill.acked;
    report.errors = fill.errors;
    report.writes_per_sec = round1(fill.acked as f64 / fill.seconds.max(1e-9));
    if fill.acked < writes {
        report.error = Some(format!(
            "only {} of {writes} writes acknowledged within {} s",
            fill.acked,
            DISK_PHASE_LIMIT.as_secs()
        ));
    }
    progress(&format!("disk: {} writes in {:.1} s ({:.0}/s)", fill.acked, fill.seconds, report.writes_per_sec));
    report.before_compaction = disk_use(cluster).await;
    for r in &cluster.replicas {
        report.compaction.insert(r.id, compact(&r.api_addr).await);
    }
    // Sled writes in the background (every 500 ms by default): let it settle before measuring.
    tokio::time::sleep(COMPACTION_SETTLE).await;
    report.after_compaction = disk_use(cluster).await;
    report
}

struct Fill {
    acked: u64,
    errors: u64,
    seconds: f64,
}

/// Writes through `addr` with [`MAX_CLIENTS`] clients until `total` writes are acknowledged.
async fn fill(addr: &str, job: &Arc<str>, total: u64) -> Fill {
    let acked = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + DISK_PHASE_LIMIT;
    let tasks: Vec<_> = (0..MAX_CLIENTS)
        .map(|client| {
            let (addr, job, acked, errors) = (addr.to_string(), job.clone(), acked.clone(), errors.clone());
            tokio::spawn(async move {
                let mut tally = ClientTally::new();
                let Some(mut conn) = connect_until(&addr, deadline, &mut tally).await else { return };
                let mut n: u64 = 0;
                while acked.load(Ordering::Relaxed) < total && Instant::now() < deadline {
                    let request = put_request(&job, format!("c{client}-{}", n % KEYS_PER_CLIENT));
                    n += 1;
                    match tokio::time::timeout_at(deadline, conn.put_job_metadata(request)).await {
                        Ok(Ok(_)) => {
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Err(_)) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        Err(_) => break,
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    Fill {
        acked: acked.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// Each replica's disk use: its directory walked, and sled's figure.
async fn disk_use(cluster: &OwnedCluster) -> BTreeMap<u64, DiskUse> {
    let mut sled: BTreeMap<u64, u64> = BTreeMap::new();
    for r in &cluster.replicas {
        if let Some(status) = status_of(&r.api_addr).await {
            if let Some(me) = status.replicas.iter().find(|s| s.node_id == r.id && s.reachable) {
                sled.insert(r.id, me.data_dir_bytes);
            }
        }
    }
    cluster
        .replicas
        .iter()
        .map(|r| {
            let server_log_bytes = std::fs::metadata(r.dir.join("server.log")).map_or(0, |m| m.len());
            let usage =
                DiskUse { dir_bytes: dir_bytes(&r.dir), server_log_bytes, sled_bytes: sled.get(&r.id).copied() };
            (r.id, usage)
        })
        .collect()
}

/// The sum of the lengths of the files under `dir` (files vanishing meanwhile are skipped).
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => pending.push(entry.path()),
                Ok(m) if m.is_file() => total += m.len(),
                _ => {}
            }
        }
    }
    total
}

/// Asks the replica at `addr` to snapshot and purge its log.
async fn compact(addr: &str) -> CompactionOutcome {
    let client = ClusterClient::new(vec![addr.to_string()]).with_request_timeout(COMPACT_TIMEOUT);
    let call = client.call(|mut c| async move { c.compact(pb::CompactRequest {}).await });
    match tokio::time::timeout(COMPACT_TIMEOUT + Duration::from_secs(5), call).await {
        Ok(Ok(reply)) => CompactionOutcome {
            snapshot_index: Some(reply.snapshot_index),
            purged_index: Some(reply.purged_index),
            error: None,
        },
        Ok(Err(e)) => CompactionOutcome { snapshot_index: None, purged_index: None, error: Some(e.to_string()) },
        Err(_) => CompactionOutcome { snapshot_index: None, purged_index: None, error: Some("timed out".into()) },
    }
}

// ---------------------------------------------------------------------------------------------------
// Numbers
// ---------------------------------------------------------------------------------------------------

/// The median of `values` (the mean of the middle two for an even count).
fn median(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.into_iter().collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// The nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// A latency quantile in milliseconds, or None without samples.
fn quantile_ms(h: &Histogram<u64>, q: f64) -> Option<f64> {
    (!h.is_empty()).then(|| round3(h.value_at_quantile(q) as f64 / 1000.0))
}

fn show_ms(ms: Option<f64>) -> String {
    ms.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median([3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median([4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(std::iter::empty()), None);
    }

    #[test]
    fn nearest_rank_percentile() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(5.0));
        assert_eq!(percentile(&v, 0.99), Some(10.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn directory_size_sums_nested_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), [0u8; 10]).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b"), [0u8; 5]).unwrap();
        assert_eq!(dir_bytes(dir.path()), 15);
    }

    #[test]
    fn quantiles_need_samples() {
        let mut h = new_histogram();
        assert_eq!(quantile_ms(&h, 0.5), None);
        h.saturating_record(2_000);
        assert_eq!(quantile_ms(&h, 0.5), Some(2.0));
    }
}
