//! `jm bench-jobs`: what a leader failover costs running jobs, and how many checkpoints the cluster commits.
//!
//! It starts its own cluster (3 replicas and `--task-managers` TaskManagers, as child processes in a temporary
//! directory) and measures, printing progress on stderr and a JSON report on stdout:
//!
//! 1. **Failover**: with `--jobs` running jobs (a rate-limited sequence into a blackhole, 1 s checkpoints), SIGKILL
//!    the leader `--kills` times. Each time: the time from the kill until *every* job has a completed checkpoint
//!    newer than the one it had at the kill, and how many jobs were restarted or redeployed by it (target: 0).
//! 2. **Checkpoint throughput**: with `--throughput-jobs` running jobs, completed checkpoints per second over
//!    `--window` seconds (the sum over all jobs of how far their latest completed checkpoint id moved).
//! 3. **Memory**: the leader's resident set before any job and with all of them running, per job.
//!
//! Everything runs on one machine, load generator included: read the figures as ratios between runs on the same
//! machine, and quote medians of several runs (`scripts/bench-jobs.sh` does that).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;
use tokio::process::Child;
use tokio::time::Instant;

use super::local::{free_port, spawn_replica, spawn_task_manager, ReplicaSpec};
use crate::api::grpc::{pb, ClusterClient};

const EXAMPLES: &str = "
  # Everything: 3 replicas and 4 TaskManagers of its own, 100 jobs through 10 leader kills, then 1000 jobs
  jm bench-jobs

  # A quick run without the throughput phase, keeping the data and logs
  jm bench-jobs --jobs 20 --kills 3 --throughput-jobs 0 --data-dir /tmp/bench-jobs
";

/// `jm bench-jobs` options.
#[derive(Debug, Clone, clap::Args)]
#[command(after_long_help = super::examples(EXAMPLES))]
pub struct BenchJobsArgs {
    /// Running jobs during the failover phase.
    #[arg(long, default_value_t = 100)]
    pub jobs: u32,
    /// Leader kills.
    #[arg(long, default_value_t = 10)]
    pub kills: u32,
    /// Running jobs during the checkpoint throughput phase (0 skips it).
    #[arg(long, default_value_t = 1000)]
    pub throughput_jobs: u32,
    /// Measurement window of the throughput phase, in seconds.
    #[arg(long, default_value_t = 20)]
    pub window: u64,
    /// Checkpoint interval of every job, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub checkpoint_interval_ms: u64,
    /// TaskManagers to start.
    #[arg(long, default_value_t = 4)]
    pub task_managers: u32,
    /// Slots per TaskManager.
    #[arg(long, default_value_t = 256)]
    pub slots: u32,
    /// Keep the cluster's data and logs in this directory instead of a temporary one.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

struct Process {
    child: Child,
    pid: u32,
}

struct BenchCluster {
    exe: PathBuf,
    root: PathBuf,
    remove_root: bool,
    peers: String,
    extra: Vec<String>,
    replicas: Vec<(u64, String, String, Option<Process>)>,
    task_managers: Vec<Process>,
}

impl BenchCluster {
    fn start(args: &BenchJobsArgs) -> Result<Self> {
        let (root, remove_root) = match &args.data_dir {
            Some(dir) => (dir.clone(), false),
            None => (std::env::temp_dir().join(format!("jm-bench-jobs-{}", std::process::id())), true),
        };
        std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
        let exe = std::env::current_exe().context("cannot find the jm binary")?;
        let mut replicas = Vec::new();
        for id in 1..=3u64 {
            replicas.push((id, format!("127.0.0.1:{}", free_port()?), format!("127.0.0.1:{}", free_port()?), None));
        }
        let peers = replicas.iter().map(|(id, api, raft, _)| format!("{id}={raft}/{api}")).collect::<Vec<_>>();
        let extra = vec!["--checkpoint-dir".to_string(), root.join("checkpoints").to_string_lossy().into_owned()];
        let mut cluster =
            BenchCluster { exe, root, remove_root, peers: peers.join(","), extra, replicas, task_managers: Vec::new() };
        for id in 1..=3 {
            cluster.spawn(id)?;
        }
        let addrs = cluster.api_addrs().join(",");
        for n in 1..=u64::from(args.task_managers) {
            let listen = format!("127.0.0.1:{}", free_port()?);
            let http = format!("127.0.0.1:{}", free_port()?);
            let dir = cluster.root.join(format!("tm-{n}"));
            let (info, child) = spawn_task_manager(&cluster.exe, &dir, n, &addrs, (&listen, &http), args.slots)?;
            cluster.task_managers.push(Process { child, pid: info.pid });
        }
        Ok(cluster)
    }

    fn api_addrs(&self) -> Vec<String> {
        self.replicas.iter().map(|(_, api, _, _)| api.clone()).collect()
    }

    fn spawn(&mut self, id: u64) -> Result<()> {
        let (exe, peers, extra, root) = (self.exe.clone(), self.peers.clone(), self.extra.clone(), self.root.clone());
        let replica = self.replicas.iter_mut().find(|r| r.0 == id).ok_or_else(|| anyhow!("no replica {id}"))?;
        let spec = ReplicaSpec { id, api_addr: &replica.1, raft_addr: &replica.2, peers: &peers, extra: &extra };
        let (info, child) = spawn_replica(&exe, &root.join(format!("node-{id}")), &spec)?;
        replica.3 = Some(Process { child, pid: info.pid });
        Ok(())
    }

    async fn kill(&mut self, id: u64) -> Result<Instant> {
        let replica = self.replicas.iter_mut().find(|r| r.0 == id).ok_or_else(|| anyhow!("no replica {id}"))?;
        let mut process = replica.3.take().ok_or_else(|| anyhow!("replica {id} is not running"))?;
        let at = Instant::now();
        process.child.start_kill()?;
        let _ = tokio::time::timeout(Duration::from_secs(10), process.child.wait()).await;
        Ok(at)
    }

    fn rss_mib(&self, id: u64) -> Option<f64> {
        let pid = self.replicas.iter().find(|r| r.0 == id)?.3.as_ref()?.pid;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    }
}

impl Drop for BenchCluster {
    fn drop(&mut self) {
        let processes = self.replicas.iter_mut().filter_map(|r| r.3.as_mut()).chain(self.task_managers.iter_mut());
        for p in processes {
            let _ = p.child.start_kill();
        }
        std::thread::sleep(Duration::from_millis(300));
        if self.remove_root {
            let _ = std::fs::remove_dir_all(&self.root);
        } else {
            eprintln!("bench-jobs: data and logs kept in {}", self.root.display());
        }
    }
}

fn progress(line: &str) {
    eprintln!("bench-jobs: {line}");
}

fn job_spec(n: u32, interval_ms: u64) -> Vec<u8> {
    format!(
        "name: bench-{n}\nvertices:\n  - id: source\n    operators: [{{sequence: {{rate: 20}}}}, {{blackhole: {{}}}}]\n\
         checkpoints: {{interval: {interval_ms}, timeout: 30s}}\n"
    )
    .into_bytes()
}

async fn submit_jobs(client: &ClusterClient, from: u32, to: u32, interval_ms: u64, run: u128) -> Result<()> {
    for n in from..to {
        let request =
            pb::SubmitJobRequest { spec: job_spec(n, interval_ms), idempotency_key: format!("bench-{run}-{n}") };
        client
            .call(|mut c| {
                let request = request.clone();
                async move { c.submit_job(request).await }
            })
            .await
            .with_context(|| format!("cannot submit job {n}"))?;
    }
    Ok(())
}

/// Every job, read from the first reachable replica's own state (stale: no leader needed).
async fn jobs(client: &ClusterClient) -> Result<Vec<pb::JobSummary>> {
    list_jobs(client, pb::ReadConsistency::Stale).await
}

async fn list_jobs(client: &ClusterClient, consistency: pb::ReadConsistency) -> Result<Vec<pb::JobSummary>> {
    let request = pb::ListJobsRequest { consistency: consistency as i32 };
    let reply = client.call(|mut c| async move { c.list_jobs(request).await }).await?;
    Ok(reply.jobs)
}

async fn leader(client: &ClusterClient) -> Option<u64> {
    let status = client.call(|mut c| async move { c.cluster_status(pb::ClusterStatusRequest {}).await }).await.ok()?;
    let leader = status.leader?;
    let active = status.replicas.iter().any(|r| r.node_id == leader && r.leader_services_active);
    active.then_some(leader)
}

/// Waits until `count` jobs run with a completed checkpoint.
async fn wait_running(client: &ClusterClient, count: usize, timeout: Duration) -> Result<Vec<pb::JobSummary>> {
    let deadline = Instant::now() + timeout;
    loop {
        let all = jobs(client).await.unwrap_or_default();
        let ready = all.iter().filter(|j| j.status == "RUNNING" && j.latest_completed_checkpoint_id > 0).count();
        if ready >= count {
            return Ok(all);
        }
        if Instant::now() >= deadline {
            bail!("only {ready} of {count} jobs running with a checkpoint after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs the benchmark.
pub async fn run(args: BenchJobsArgs) -> Result<()> {
    super::init_logging("warn");
    let run_id = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let mut cluster = BenchCluster::start(&args)?;
    let addrs = cluster.api_addrs();
    let client = ClusterClient::new(addrs.clone()).with_request_timeout(Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(30);
    let first_leader = loop {
        if let Some(l) = leader(&client).await {
            break l;
        }
        if Instant::now() >= deadline {
            bail!("no leader within 30 s; see the logs under {}", cluster.root.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before = cluster.rss_mib(first_leader);

    progress(&format!("submitting {} jobs", args.jobs));
    submit_jobs(&client, 0, args.jobs, args.checkpoint_interval_ms, run_id).await?;
    wait_running(&client, args.jobs as usize, Duration::from_secs(120)).await?;

    let mut failovers = Vec::new();
    let mut restarted_total = 0u64;
    for round in 1..=args.kills {
        let Some(leader_id) = leader(&client).await else { bail!("no leader before kill {round}") };
        // Linearizable: a lagging replica's view would count a checkpoint committed before the kill as new.
        let before = list_jobs(&client, pb::ReadConsistency::Linearizable).await?;
        let killed_at = cluster.kill(leader_id).await?;
        let survivors: Vec<String> =
            cluster.replicas.iter().filter(|r| r.0 != leader_id).map(|r| r.1.clone()).collect();
        let survivor_client = ClusterClient::new(survivors).with_request_timeout(Duration::from_secs(2));
        let elapsed = loop {
            let now = jobs(&survivor_client).await.unwrap_or_default();
            let all_newer = before.iter().all(|b| {
                now.iter().any(|j| {
                    j.job_id == b.job_id && j.latest_completed_checkpoint_id > b.latest_completed_checkpoint_id
                })
            });
            if all_newer {
                break killed_at.elapsed();
            }
            if killed_at.elapsed() > Duration::from_secs(60) {
                bail!("kill {round}: not every job checkpointed within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let after = jobs(&survivor_client).await?;
        let restarted = before
            .iter()
            .filter(|b| {
                after.iter().any(|a| a.job_id == b.job_id && (a.restarts != b.restarts || a.attempt != b.attempt))
            })
            .count() as u64;
        restarted_total += restarted;
        let ms = elapsed.as_secs_f64() * 1000.0;
        progress(&format!(
            "kill {round}/{}: every job checkpointed {ms:.0} ms after the kill; {restarted} restarted",
            args.kills
        ));
        failovers.push(ms);
        cluster.spawn(leader_id)?;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    failovers.sort_by(f64::total_cmp);

    let leader_now = leader(&client).await.unwrap_or(first_leader);
    let rss_jobs = cluster.rss_mib(leader_now);
    let mut throughput = serde_json::Value::Null;
    if args.throughput_jobs > 0 {
        progress(&format!("growing to {} jobs", args.throughput_jobs));
        submit_jobs(&client, args.jobs, args.throughput_jobs.max(args.jobs), args.checkpoint_interval_ms, run_id)
            .await?;
        wait_running(&client, args.throughput_jobs as usize, Duration::from_secs(600)).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let start = jobs(&client).await?;
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(args.window)).await;
        let end = jobs(&client).await?;
        let seconds = started.elapsed().as_secs_f64();
        let sum = |js: &[pb::JobSummary]| js.iter().map(|j| j.latest_completed_checkpoint_id).sum::<u64>();
        let completed = sum(&end).saturating_sub(sum(&start));
        let per_second = completed as f64 / seconds;
        let leader_id = leader(&client).await.unwrap_or(leader_now);
        let rss = cluster.rss_mib(leader_id);
        progress(&format!("{} jobs: {per_second:.0} checkpoints/s committed", args.throughput_jobs));
        throughput = json!({
            "jobs": args.throughput_jobs,
            "window_s": seconds,
            "checkpoints_completed": completed,
            "checkpoints_per_second": per_second,
            "ideal_per_second": args.throughput_jobs as f64 * 1000.0 / args.checkpoint_interval_ms as f64,
            "leader_rss_mib": rss,
            "leader_rss_per_job_kib": match (rss, rss_before) {
                (Some(now), Some(before)) => Some((now - before) * 1024.0 / f64::from(args.throughput_jobs)),
                _ => None,
            },
        });
    }
    let pick = |q: f64| failovers.get(((failovers.len() as f64 - 1.0) * q).round() as usize).copied();
    let report = json!({
        "failover": {
            "jobs": args.jobs,
            "kills": args.kills,
            "ms_until_every_job_checkpointed": failovers,
            "p50_ms": pick(0.5),
            "p99_ms": pick(0.99),
            "jobs_restarted_by_kills": restarted_total,
        },
        "checkpoint_throughput": throughput,
        "memory": {
            "leader_rss_mib_without_jobs": rss_before,
            "leader_rss_mib_with_jobs": rss_jobs,
            "jobs": args.jobs,
            "per_job_kib": match (rss_jobs, rss_before) {
                (Some(now), Some(before)) => Some((now - before) * 1024.0 / f64::from(args.jobs.max(1))),
                _ => None,
            },
        },
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
