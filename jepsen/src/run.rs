//! One run: deploy, set up, drive the clients and the nemesis for the configured time, heal, wait, read
//! everything back, stop, check, and write the report directory.
//!
//! The cluster is a [`Deployment`] (local processes or Docker containers, [`Mode`]); its calls block, so they run
//! on tokio's blocking pool ([`on`]), never on the workers the clients' latencies are measured on.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::deploy::{LocalCluster, LocalOptions, PAST_LEASE};
use crate::deployment::{Deployment, LocalDeployment};
use crate::docker::{DockerCluster, DockerOptions};
use crate::history::OpType;
use crate::nemesis::{self, Fault, Schedule};
use crate::net::Net;
use crate::recorder::Recorder;
use crate::workload::{self as w, Clients};

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// How long clients and the nemesis run (before the heal and the final reads).
    pub time: Duration,
    /// Replicas.
    pub replicas: u64,
    /// TaskManagers.
    pub task_managers: u64,
    /// Concurrent client processes.
    pub concurrency: usize,
    /// Enabled faults.
    pub faults: Vec<Fault>,
    /// When faults happen.
    pub schedule: Schedule,
    /// The report directory.
    pub dir: PathBuf,
    /// Random seed (workload choices and the nemesis).
    pub seed: u64,
    /// Where the cluster runs.
    pub mode: Mode,
    /// Start the replicas with `--storage-mode lose-unsynced`: every crash loses all unflushed writes.
    pub lose_unsynced: bool,
}

/// Where the cluster runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Processes on 127.0.0.1, replica links through the harness's proxies.
    Local,
    /// Containers on a private network; every object's name starts with `prefix` (see
    /// [`crate::docker::run_prefix`]), which [`crate::docker::abort_run`] removes when the run is interrupted.
    Docker {
        /// The run-unique name prefix.
        prefix: String,
    },
}

/// The deployment, shared by the run loop and the nemesis.
type Shared = Arc<Mutex<Box<dyn Deployment>>>;

/// Runs `f` on the deployment on tokio's blocking pool (deployment calls run commands and wait for them).
async fn on<T: Send + 'static>(d: &Shared, f: impl FnOnce(&mut dyn Deployment) -> T + Send + 'static) -> T {
    let d = d.clone();
    match tokio::task::spawn_blocking(move || f(lock(&d).as_mut())).await {
        Ok(value) => value,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Refuses a report directory that already holds something: the replicas' data dirs live in it, and replicas
/// started on an earlier run's data would bring its writes back, which the checkers rightly call invalid.
fn refuse_used_dir(dir: &std::path::Path) -> Result<()> {
    let used = std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some());
    if used {
        bail!(
            "--dir {} is not empty (an earlier run's report and data dirs?); choose a new directory or remove it",
            dir.display()
        );
    }
    Ok(())
}

/// Extra `jm server` arguments every replica gets.
fn server_args(options: &RunOptions) -> Vec<String> {
    if options.lose_unsynced {
        vec!["--storage-mode".into(), "lose-unsynced".into()]
    } else {
        Vec::new()
    }
}

/// Deploys the cluster `options.mode` says.
async fn deploy(options: &RunOptions) -> Result<Box<dyn Deployment>> {
    match &options.mode {
        Mode::Local => {
            let local = LocalOptions {
                replicas: options.replicas,
                task_managers: options.task_managers,
                slots: 32,
                server_args: server_args(options),
            };
            let addrs = LocalCluster::plan(&local)?;
            let net = Net::start(addrs.iter().map(|(id, a)| (*id, a.raft)).collect()).await?;
            let via = addrs.keys().map(|id| (*id, net.via(*id))).collect();
            let cluster = LocalCluster::start(&options.dir, &local, addrs, &via)?;
            Ok(Box::new(LocalDeployment { cluster, net }))
        }
        Mode::Docker { prefix } => {
            let version = crate::docker::preflight()?;
            let jm = crate::docker::image::static_jm_binary()?;
            let docker = DockerOptions {
                replicas: options.replicas,
                task_managers: options.task_managers,
                slots: 32,
                prefix: prefix.clone(),
                server_args: server_args(options),
            };
            println!("jepsen: docker {version}, jm {}, containers {prefix}-*", jm.display());
            let dir = options.dir.clone();
            let cluster = tokio::task::spawn_blocking(move || DockerCluster::start(&dir, &docker, &jm))
                .await
                .context("the docker deployment panicked")??;
            Ok(Box::new(cluster))
        }
    }
}

/// The faults `d` can carry out; the others are named on stderr with the reason. Refuses a run left with none
/// when some were asked for.
fn supported_faults(d: &dyn Deployment, faults: &[Fault]) -> Result<(Vec<Fault>, Vec<String>)> {
    let mut kept = Vec::new();
    let mut skipped = Vec::new();
    for &fault in faults {
        match d.unsupported(fault) {
            None => kept.push(fault),
            Some(why) => {
                eprintln!("jepsen: warning: fault {} skipped in {} mode: {why}", fault.name(), d.mode());
                skipped.push(format!("{}: {why}", fault.name()));
            }
        }
    }
    if kept.is_empty() && !faults.is_empty() {
        bail!("none of the requested faults can run in {} mode: {}", d.mode(), skipped.join("; "));
    }
    Ok((kept, skipped))
}

/// Register keys of the register workload (metadata keys of one holder job).
const REGISTER_KEYS: [&str; 5] = ["r0", "r1", "r2", "r3", "r4"];
/// Checkpointing jobs whose checkpoints are read back.
const CHECKPOINT_JOBS: [&str; 2] = ["ckpt-1", "ckpt-2"];

/// What the run set up, shared by the clients.
struct Setup {
    holder: String,
    checkpoint_jobs: Vec<String>,
}

/// What the run produced.
pub struct Outcome {
    /// The report directory.
    pub dir: PathBuf,
    /// The history.
    pub history: Vec<crate::history::Op>,
    /// The processes' logs, by name.
    pub logs: Vec<(String, String)>,
}

/// Runs the whole thing.
pub async fn run(options: &RunOptions) -> Result<Outcome> {
    refuse_used_dir(&options.dir)?;
    std::fs::create_dir_all(&options.dir).with_context(|| format!("cannot create {}", options.dir.display()))?;
    let deployment = deploy(options).await?;
    let (faults, skipped) = supported_faults(deployment.as_ref(), &options.faults)?;
    let mut described = deployment.describe();
    described["skipped_faults"] = json!(skipped);
    std::fs::write(options.dir.join("deployment.json"), serde_json::to_string_pretty(&described)?)?;
    let options = &RunOptions { faults, ..options.clone() };
    let cluster: Shared = Arc::new(Mutex::new(deployment));
    let recorder = Recorder::new();
    let clients = Arc::new(Clients::default());
    let apis = lock(&cluster).api_addrs();

    if wait_for_leader(&clients, &apis, Duration::from_secs(30)).await.is_none() {
        on(&cluster, |d| d.stop()).await;
        bail!("no leader within 30 s: see the replicas' logs in {}", options.dir.display());
    }
    if options.faults.iter().any(|f| f.failpoint().is_some()) {
        let first = apis.values().next().cloned().unwrap_or_default();
        if let Err(e) = crate::failpoints::require_failpoints(&first).await {
            on(&cluster, |d| d.stop()).await;
            return Err(e.context("--nemesis has crash faults"));
        }
    }
    let setup = Arc::new(set_up(&clients, &apis).await?);
    tracing::info!(holder = %setup.holder, "set up; running clients and nemesis");

    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(1));
    let submitted: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let holder = Arc::new(setup.holder.clone());
    let checkpoint_jobs = Arc::new(Mutex::new(setup.checkpoint_jobs.clone()));
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..options.concurrency {
        let ctx = ClientCtx {
            recorder: recorder.clone(),
            clients: clients.clone(),
            apis: apis.clone(),
            holder: holder.clone(),
            counter: counter.clone(),
            checkpoint_jobs: checkpoint_jobs.clone(),
            submitted: submitted.clone(),
            stop: stop.clone(),
        };
        tasks.spawn(client_loop(ctx, options.seed.wrapping_add(n as u64)));
    }
    // The TaskManagers' HTTP addresses, shared: churn adds the ones that join, and the observers pick them up.
    let tm_http: Vec<String> = lock(&cluster).task_manager_http().into_values().collect();
    let tm_http = Arc::new(Mutex::new(tm_http));
    tasks.spawn(observe(recorder.clone(), clients.clone(), apis.clone(), tm_http.clone(), stop.clone()));
    for (id, addr) in &apis {
        tasks.spawn(observe_status(recorder.clone(), clients.clone(), *id, addr.clone(), stop.clone()));
    }
    let nemesis = tokio::spawn(run_nemesis(
        options.clone(),
        cluster.clone(),
        clients.clone(),
        recorder.clone(),
        stop.clone(),
        tm_http.clone(),
    ));

    tokio::time::sleep(options.time).await;
    stop.store(true, Ordering::Relaxed);
    let _ = nemesis.await;
    while tasks.join_next().await.is_some() {}

    // Heal, wait, read back.
    recorder.nemesis("start", "heal");
    on(&cluster, |d| d.heal_network().and_then(|()| d.heal_processes())).await?;
    recorder.nemesis("stop", "heal");
    tokio::time::sleep(Duration::from_secs(3)).await;
    wait_for_leader(&clients, &apis, Duration::from_secs(30)).await;
    let tm_http = lock(&tm_http).clone();
    final_reads(&recorder, &clients, &apis, &setup, &tm_http).await;
    on(&cluster, |d| d.stop()).await;
    let logs = lock(&cluster).logs();
    let history = recorder.snapshot();
    crate::history::write_jsonl(&options.dir.join("history.jsonl"), &history)?;
    Ok(Outcome { dir: options.dir.clone(), history, logs })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The leader any replica knows of (each asked for at most 800 ms).
pub async fn leader(clients: &Clients, apis: &BTreeMap<u64, String>) -> Option<u64> {
    for addr in apis.values() {
        let mut c = clients.client(addr);
        let call = c.cluster_status(jobmanager::api::grpc::pb::ClusterStatusRequest {});
        if let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_millis(800), call).await {
            if let Some(leader) = reply.into_inner().leader {
                return Some(leader);
            }
        }
    }
    None
}

/// The leader, once some replica knows of one; `None` after `timeout`.
pub async fn wait_for_leader(clients: &Clients, apis: &BTreeMap<u64, String>, timeout: Duration) -> Option<u64> {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if let Some(id) = leader(clients, apis).await {
            return Some(id);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// Submits the register holder and the checkpointing jobs, retrying through the replicas.
async fn set_up(clients: &Clients, apis: &BTreeMap<u64, String>) -> Result<Setup> {
    let submit = |spec: String, key: String| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            for addr in apis.values() {
                if let Ok(id) = w::submit_spec(clients.client(addr), &spec, &key).await {
                    return Ok(id);
                }
            }
            if tokio::time::Instant::now() > deadline {
                bail!("could not submit the setup job {key}");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let holder = submit(
        "name: register-holder\nvertices:\n  - id: source\n    operators: [{sequence: {rate: 1}}, {blackhole: {}}]\n"
            .to_string(),
        "setup-register-holder".into(),
    )
    .await?;
    let mut checkpoint_jobs = Vec::new();
    for name in CHECKPOINT_JOBS {
        checkpoint_jobs.push(submit(w::checkpoint_job_spec(name), format!("setup-{name}")).await?);
    }
    Ok(Setup { holder, checkpoint_jobs })
}

/// What a client task owns: the run's shared state, for the [`w::ClientLoop`] it runs.
struct ClientCtx {
    recorder: Recorder,
    clients: Arc<Clients>,
    apis: BTreeMap<u64, String>,
    holder: Arc<String>,
    counter: Arc<AtomicU64>,
    submitted: Arc<Mutex<Vec<String>>>,
    checkpoint_jobs: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

/// One client of the mixed workload until the run ends.
async fn client_loop(ctx: ClientCtx, seed: u64) {
    let client = w::ClientLoop {
        recorder: &ctx.recorder,
        clients: &ctx.clients,
        apis: &ctx.apis,
        keys: &REGISTER_KEYS,
        holder: &ctx.holder,
        counter: &ctx.counter,
        submitted: &ctx.submitted,
        checkpoint_jobs: &ctx.checkpoint_jobs,
        stop: &ctx.stop,
    };
    client.run(seed).await;
}

/// A replica's view of itself, about four times a second, in a loop of its own: a replica that does not answer
/// (or a lease read forwarded to a dead leader) does not hold up the samples of the others, which the leader
/// checker and the availability figures are built from.
async fn observe_status(recorder: Recorder, clients: Arc<Clients>, id: u64, addr: String, stop: Arc<AtomicBool>) {
    let process = recorder.new_process();
    while !stop.load(Ordering::Relaxed) {
        let op = w::status(clients.client(&addr), id);
        w::record(&recorder, process, "status", None, Value::Null, Some(id), op).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Observers: the slot leases, and what each TaskManager runs.
async fn observe(
    recorder: Recorder,
    clients: Arc<Clients>,
    apis: BTreeMap<u64, String>,
    tm_http: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
) {
    let process = recorder.new_process();
    let mut round = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let ids: Vec<&u64> = apis.keys().collect();
        let node = *ids[round % ids.len()];
        let op = w::read_leases(clients.client(&apis[&node]));
        w::record(&recorder, process, "read-leases", None, Value::Null, Some(node), op).await;
        let tms = lock(&tm_http).clone();
        for http in &tms {
            let op = w::tm_deployments(http);
            w::record(&recorder, process, "tm-deployments", Some(http.clone()), Value::Null, None, op).await;
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// After the heal: everything read back through every replica, and the replicas' state digests once they agree on
/// an applied index.
async fn final_reads(
    recorder: &Recorder,
    clients: &Clients,
    apis: &BTreeMap<u64, String>,
    setup: &Setup,
    tm_http: &[String],
) {
    let process = recorder.new_process();
    let deadline = tokio::time::Instant::now() + FINAL_READ_PATIENCE;
    for (id, addr) in apis {
        let node = Some(*id);
        final_read(recorder, "read-jobs", None, node, deadline, || w::read_jobs(clients.client(addr))).await;
        for job in &setup.checkpoint_jobs {
            let read = || w::read_checkpoints(clients.client(addr), job);
            final_read(recorder, "read-checkpoints", Some(job.clone()), node, deadline, read).await;
        }
        for key in REGISTER_KEYS {
            let read = || w::read(clients.client(addr), &setup.holder, key);
            final_read(recorder, "read", Some(key.to_string()), node, deadline, read).await;
        }
        final_read(recorder, "read-leases", None, node, deadline, || w::read_leases(clients.client(addr))).await;
    }
    for http in tm_http {
        let op = w::tm_deployments(http);
        w::record(recorder, process, "tm-deployments", Some(http.clone()), Value::Null, None, op).await;
    }
    // The digests are comparable only at one applied index, and the leader's services keep writing while jobs
    // run (checkpoints every 300 ms): cancel every job first, so the log goes quiet, then wait until every
    // replica applied the same entries.
    quiesce(clients, apis).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut digests = Vec::new();
        for addr in apis.values() {
            let outcome = w::state_digest(clients.client(addr)).await;
            digests.push(outcome);
        }
        let indexes: Vec<Option<u64>> = digests.iter().map(|d| d.value["applied_index"].as_u64()).collect();
        let agreed = indexes.iter().all(|i| i.is_some() && *i == indexes[0]);
        if agreed || tokio::time::Instant::now() > deadline {
            for ((id, _), outcome) in apis.iter().zip(digests) {
                let pending = recorder.invoke(process, "final-state", None, Value::Null, Some(*id));
                recorder.complete(pending, outcome.op_type, outcome.value, outcome.error);
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Cancels every job that is still going (after the final reads), and gives the cancellations time to finish.
async fn quiesce(clients: &Clients, apis: &BTreeMap<u64, String>) {
    let Some(addr) = apis.values().next() else { return };
    let mut client = clients.client(addr);
    let list = client.list_jobs(jobmanager::api::grpc::pb::ListJobsRequest::default());
    let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_secs(5), list).await else { return };
    let terminal = ["FINISHED", "CANCELED", "FAILED"];
    for job in reply.into_inner().jobs.into_iter().filter(|j| !terminal.contains(&j.status.as_str())) {
        let _ = w::cancel(clients.client(addr), &job.job_id).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
}

/// The nemesis loop: quiet, fault, hold, heal; until the run ends.
async fn run_nemesis(
    options: RunOptions,
    cluster: Shared,
    clients: Arc<Clients>,
    recorder: Recorder,
    stop: Arc<AtomicBool>,
    tm_http: Arc<Mutex<Vec<String>>>,
) {
    let mut rng = StdRng::seed_from_u64(options.seed ^ 0x006e_656d_6573_6973);
    let apis = lock(&cluster).api_addrs();
    let ids: Vec<u64> = apis.keys().copied().collect();
    loop {
        let quiet = options.schedule.quiet(&mut rng);
        if sleep_unless_stopped(quiet, &stop).await {
            return;
        }
        let Some(fault) = nemesis::pick(&options.faults, &mut rng) else { continue };
        let leader = leader(&clients, &apis).await;
        let target = leader.unwrap_or(ids[0]);
        let hold = options.schedule.hold(&mut rng);
        let mut armed = None;
        let applied: Result<String> = match fault {
            Fault::KillLeader | Fault::KillRandom => {
                let victim = if fault == Fault::KillLeader { target } else { ids[rng.gen_range(0..ids.len())] };
                on(&cluster, move |d| d.kill(victim)).await.map(|()| format!("{} {victim}", fault.name()))
            }
            Fault::PauseLeader => {
                on(&cluster, move |d| d.pause(target)).await.map(|()| format!("pause-leader {target}"))
            }
            Fault::PartitionLeader => on(&cluster, move |d| d.isolate(target)).await,
            Fault::PartitionHalves => {
                let mut split = StdRng::seed_from_u64(rng.gen());
                on(&cluster, move |d| d.majority_minority(&mut split)).await
            }
            Fault::PartitionRing => {
                let mut split = StdRng::seed_from_u64(rng.gen());
                on(&cluster, move |d| d.ring(&mut split)).await
            }
            Fault::PartitionOneWay => {
                let other = *ids.iter().find(|id| **id != target).unwrap_or(&target);
                on(&cluster, move |d| d.one_way(target, other)).await
            }
            Fault::Delay => on(&cluster, |d| d.delay(Duration::from_millis(50), Duration::from_millis(100))).await,
            Fault::Loss => on(&cluster, |d| d.loss(0.2, Duration::from_millis(200))).await,
            Fault::RestartAll => on(&cluster, |d| d.kill_all()).await.map(|()| "restart-all".to_string()),
            Fault::CrashBeforeFsync | Fault::CrashAfterFsync | Fault::CrashAfterCheckpointCommit => {
                // The disk faults hit a follower now and then (followers flush too); a checkpoint commits on the
                // leader only.
                let follower_too = fault != Fault::CrashAfterCheckpointCommit && rng.gen_bool(0.25);
                let victim = if follower_too { ids[rng.gen_range(0..ids.len())] } else { target };
                let name = fault.failpoint().unwrap_or_default();
                match crate::failpoints::arm_crash(&apis[&victim], name).await {
                    Ok(()) => armed = Some((victim, name)),
                    Err(e) => tracing::warn!(victim, failpoint = name, error = %e, "could not arm the failpoint"),
                }
                Ok(format!("{} {victim}", fault.name()))
            }
            Fault::KillTaskManager => {
                let numbers = lock(&cluster).present_task_managers();
                if numbers.is_empty() {
                    continue;
                }
                let victim = numbers[rng.gen_range(0..numbers.len())];
                on(&cluster, move |d| d.kill_task_manager(victim)).await.map(|()| format!("kill-taskmanager {victim}"))
            }
            Fault::ChurnTaskManagers => churn_task_managers(&cluster, &tm_http, &mut rng).await,
        };
        // A fault that could not be applied is still a window in the history, named as such, so the report shows it.
        let description = applied.unwrap_or_else(|e| {
            eprintln!("jepsen: warning: fault {} could not be applied: {e:#}", fault.name());
            format!("{} not applied: {e:#}", fault.name())
        });
        recorder.nemesis("start", &description);
        tracing::info!(fault = %description, "nemesis");
        let hold = if fault == Fault::PauseLeader { hold.max(PAST_LEASE) } else { hold };
        let stopped = match armed {
            Some((victim, name)) => hold_crash(&cluster, &apis[&victim], victim, name, hold, &stop).await,
            None => sleep_unless_stopped(hold, &stop).await,
        };
        let reaped = on(&cluster, |d| d.reap_departed()).await;
        for n in reaped {
            eprintln!("jepsen: TaskManager {n} did not exit within the hold after SIGTERM; SIGKILLed");
        }
        if let Err(e) = on(&cluster, |d| d.heal_network().and_then(|()| d.heal_processes())).await {
            eprintln!("jepsen: warning: the heal after {description} failed: {e:#}");
        }
        recorder.nemesis("stop", &description);
        if stopped {
            return;
        }
    }
}

/// One step of TaskManager churn (see [`nemesis::churn`]); its description for the history.
async fn churn_task_managers(cluster: &Shared, tm_http: &Mutex<Vec<String>>, rng: &mut StdRng) -> Result<String> {
    let (present, departed) = {
        let d = lock(cluster);
        (d.present_task_managers(), d.departed_task_managers())
    };
    let started = present.len() + departed.len();
    match nemesis::churn(&present, &departed, started, rng) {
        Some(nemesis::Churn::Leave { number, graceful }) => {
            on(cluster, move |d| d.leave_task_manager(number, graceful)).await?;
            let how = if graceful { "sigterm" } else { "sigkill" };
            Ok(format!("churn-taskmanagers leave {number} {how}"))
        }
        Some(nemesis::Churn::Join) => {
            let (number, http) = on(cluster, |d| d.add_task_manager()).await.context("a new TaskManager")?;
            lock(tm_http).push(http);
            Ok(format!("churn-taskmanagers join {number}"))
        }
        Some(nemesis::Churn::Return { number }) => {
            on(cluster, move |d| d.return_task_manager(number))
                .await
                .with_context(|| format!("TaskManager {number} coming back"))?;
            Ok(format!("churn-taskmanagers return {number}"))
        }
        None => Ok("churn-taskmanagers none".to_string()),
    }
}

/// Holds a crash fault: waits for replica `victim` to die of failpoint `name` and keeps it down for the rest of the
/// hold; if it has not died by the end, disarms the failpoint (it must not fire outside its window). True if the
/// run ended meanwhile.
async fn hold_crash(cluster: &Shared, api: &str, victim: u64, name: &str, hold: Duration, stop: &AtomicBool) -> bool {
    let deadline = tokio::time::Instant::now() + hold;
    while tokio::time::Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        if on(cluster, move |d| d.exited(victim)).await {
            tracing::info!(victim, failpoint = name, "the failpoint fired: the replica crashed");
            return sleep_unless_stopped(deadline - tokio::time::Instant::now(), stop).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Err(e) = crate::failpoints::set(api, name, "off").await {
        tracing::warn!(victim, failpoint = name, error = %e, "could not disarm the failpoint");
    }
    if on(cluster, move |d| d.exited(victim)).await {
        tracing::info!(victim, failpoint = name, "the failpoint fired: the replica crashed");
    } else {
        tracing::info!(victim, failpoint = name, "the failpoint did not fire within the hold; disarmed");
    }
    stop.load(Ordering::Relaxed)
}

/// How long the final reads keep retrying, all together: right after the heal a new leader may still be applying
/// what its predecessors committed (reads are refused until it has), and on a loaded machine elections can repeat.
const FINAL_READ_PATIENCE: Duration = Duration::from_secs(30);

/// One final read, retried until it succeeds or `deadline` passes; every attempt is in the history. An attempt
/// whose outcome is unknown may still be in flight, so the next one runs as a new process (Jepsen's rule: a
/// process never has two operations open).
async fn final_read<F, Fut>(
    recorder: &Recorder,
    f: &str,
    key: Option<String>,
    node: Option<u64>,
    deadline: tokio::time::Instant,
    read: F,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = w::Outcome>,
{
    loop {
        let process = recorder.new_process();
        let outcome = w::record(recorder, process, f, key.clone(), Value::Null, node, read()).await;
        if outcome == OpType::Ok || tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Sleeps `d`; true if the run ended meanwhile.
async fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) -> bool {
    let deadline = tokio::time::Instant::now() + d;
    while tokio::time::Instant::now() < deadline {
        if stop.load(Ordering::Relaxed) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50).min(deadline - tokio::time::Instant::now())).await;
    }
    stop.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_report_dir_holding_an_earlier_run_is_refused() {
        let dir = std::env::temp_dir().join(format!("jepsen-used-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        super::refuse_used_dir(&dir).expect("a missing dir is fine");
        std::fs::create_dir_all(dir.join("node-1")).unwrap();
        let error = super::refuse_used_dir(&dir).unwrap_err().to_string();
        assert!(error.contains("is not empty"), "{error}");
        std::fs::remove_dir_all(dir.join("node-1")).unwrap();
        super::refuse_used_dir(&dir).expect("an empty dir is fine");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
