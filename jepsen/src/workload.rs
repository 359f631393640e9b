//! Clients: each operation of the history, performed against one replica through the client API, with its outcome
//! classified the way the cluster documents its errors (see `jepsen/OUTCOMES.md`):
//!
//! * a refusal (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION) is `fail`: the command was refused as a whole;
//! * UNAVAILABLE (no leader, no quorum, not reachable) is `fail`: the cluster promises the write was not applied;
//! * anything else on a write (DEADLINE_EXCEEDED, a client-side timeout, a broken connection) is `info`;
//! * a read that did not return is `fail`: reads change nothing.
//!
//! Classifying UNAVAILABLE as `fail` takes the cluster at its word; if it ever answers UNAVAILABLE for a write that
//! took effect, the set and register checkers see the write appear and flag it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use jobmanager::api::grpc::pb::job_manager_client::JobManagerClient;
use jobmanager::api::grpc::{pb, Connector};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::history::OpType;
use crate::recorder::Recorder;

/// How long a client waits for any one operation.
pub const OP_TIMEOUT: Duration = Duration::from_secs(6);

/// Prefix of the job names (and idempotency keys) of the set workload's submissions.
pub const SET_PREFIX: &str = "set-";

/// The spec of a set-workload job: one slot, one record a second, nothing kept.
pub fn set_job_spec(client_id: &str) -> String {
    format!("name: {client_id}\nvertices:\n  - id: source\n    operators: [{{sequence: {{rate: 1}}}}, {{blackhole: {{}}}}]\n")
}

/// The spec of a checkpointing job: keyed counts with a 300 ms checkpoint interval.
pub fn checkpoint_job_spec(name: &str) -> String {
    format!(
        "name: {name}\nvertices:\n  - id: source\n    operators: [{{sequence: {{rate: 20}}}}, {{map: {{fields: {{key: \"seq % 4\"}}}}}}]\n  - id: count\n    operators: [{{key_by: {{field: key}}}}, {{count: {{}}}}, {{blackhole: {{}}}}]\nedges: [{{from: source, to: count}}]\ncheckpoints: {{interval: 300ms}}\n"
    )
}

/// One lazily connected channel per replica.
#[derive(Default)]
pub struct Clients {
    channels: Mutex<HashMap<String, Channel>>,
    /// Opens the channels instead of TCP (the simulation's network).
    connector: Option<Connector>,
}

/// What an operation returned, before it is recorded.
pub struct Outcome {
    /// ok, fail or info.
    pub op_type: OpType,
    /// The result (ok) or `null`.
    pub value: Value,
    /// Why it failed or is unknown.
    pub error: Option<String>,
}

impl Outcome {
    fn ok(value: Value) -> Self {
        Self { op_type: OpType::Ok, value, error: None }
    }
}

/// Whether the operation changes the cluster (its failure may be indeterminate) or only reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Changes state.
    Write,
    /// Reads.
    Read,
}

/// Classifies a failed call.
pub fn classify(status: &Status, effect: Effect) -> Outcome {
    let definite = matches!(
        status.code(),
        Code::InvalidArgument | Code::NotFound | Code::FailedPrecondition | Code::AlreadyExists | Code::OutOfRange
    ) || status.code() == Code::Unavailable;
    let op_type = if definite || effect == Effect::Read { OpType::Fail } else { OpType::Info };
    Outcome { op_type, value: Value::Null, error: Some(format!("{:?}: {}", status.code(), status.message())) }
}

fn timed_out(effect: Effect) -> Outcome {
    let op_type = if effect == Effect::Read { OpType::Fail } else { OpType::Info };
    Outcome { op_type, value: Value::Null, error: Some(format!("client timeout after {OP_TIMEOUT:?}")) }
}

impl Clients {
    /// Clients whose channels `connector` opens (given the endpoint), e.g. over the simulation's network.
    pub fn with_connector(connector: Connector) -> Self {
        Self { channels: Mutex::default(), connector: Some(connector) }
    }

    /// A client of the replica at `addr`.
    pub fn client(&self, addr: &str) -> JobManagerClient<Channel> {
        let mut channels = lock(&self.channels);
        let channel = channels.entry(addr.to_string()).or_insert_with(|| {
            let endpoint = Endpoint::from_shared(format!("http://{addr}"))
                .expect("a host:port address")
                .connect_timeout(Duration::from_millis(500))
                .tcp_nodelay(true);
            match &self.connector {
                Some(connect) => connect(&endpoint),
                None => endpoint.connect_lazy(),
            }
        });
        JobManagerClient::new(channel.clone()).max_decoding_message_size(64 * 1024 * 1024)
    }
}

/// Runs `call` with the operation timeout and classifies its result.
async fn run<T, F>(effect: Effect, call: F, on_ok: impl FnOnce(T) -> Value) -> Outcome
where
    F: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
{
    match tokio::time::timeout(OP_TIMEOUT, call).await {
        Err(_) => timed_out(effect),
        Ok(Err(status)) => classify(&status, effect),
        Ok(Ok(reply)) => Outcome::ok(on_ok(reply.into_inner())),
    }
}

const LINEARIZABLE: i32 = pb::ReadConsistency::Linearizable as i32;

/// `write`: sets register `name` of `job_id` to `value`.
pub async fn write(mut c: JobManagerClient<Channel>, job_id: &str, name: &str, value: u64) -> Outcome {
    let request =
        pb::PutJobMetadataRequest { job_id: job_id.into(), key: name.into(), value: value.to_string().into_bytes() };
    run(Effect::Write, c.put_job_metadata(request), |_| json!(value)).await
}

/// `read`: register `name` of `job_id`.
pub async fn read(mut c: JobManagerClient<Channel>, job_id: &str, name: &str) -> Outcome {
    let request = pb::GetJobMetadataRequest { job_id: job_id.into(), key: name.into(), consistency: LINEARIZABLE };
    run(Effect::Read, c.get_job_metadata(request), |r| match r.value {
        Some(bytes) => String::from_utf8_lossy(&bytes).parse::<u64>().map_or(Value::Null, |v| json!(v)),
        None => Value::Null,
    })
    .await
}

/// `submit`: a set-workload job with idempotency key `client_id`.
pub async fn submit(mut c: JobManagerClient<Channel>, client_id: &str) -> Outcome {
    let request =
        pb::SubmitJobRequest { spec: set_job_spec(client_id).into_bytes(), idempotency_key: client_id.to_string() };
    run(Effect::Write, c.submit_job(request), |r| json!({"job_id": r.job_id})).await
}

/// Submits any spec (setup jobs); the job id on success.
pub async fn submit_spec(mut c: JobManagerClient<Channel>, spec: &str, key: &str) -> Result<String, String> {
    let request = pb::SubmitJobRequest { spec: spec.as_bytes().to_vec(), idempotency_key: key.to_string() };
    match tokio::time::timeout(OP_TIMEOUT, c.submit_job(request)).await {
        Ok(Ok(reply)) => Ok(reply.into_inner().job_id),
        Ok(Err(status)) => Err(status.message().to_string()),
        Err(_) => Err("timeout".into()),
    }
}

/// `cancel`.
pub async fn cancel(mut c: JobManagerClient<Channel>, job_id: &str) -> Outcome {
    let request = pb::CancelJobRequest { job_id: job_id.into() };
    run(Effect::Write, c.cancel_job(request), |r| json!({"status": r.status})).await
}

/// `read-jobs`: the set workload's jobs.
pub async fn read_jobs(mut c: JobManagerClient<Channel>) -> Outcome {
    let request = pb::ListJobsRequest { consistency: LINEARIZABLE };
    run(Effect::Read, c.list_jobs(request), |r| {
        let jobs: Vec<Value> = r
            .jobs
            .into_iter()
            .filter(|j| j.name.starts_with(SET_PREFIX))
            .map(|j| json!({"client_id": j.name, "job_id": j.job_id, "status": j.status}))
            .collect();
        json!({ "jobs": jobs })
    })
    .await
}

/// `read-checkpoints` of `job_id`.
pub async fn read_checkpoints(mut c: JobManagerClient<Channel>, job_id: &str) -> Outcome {
    let request = pb::GetJobRequest { job_id: job_id.into(), consistency: LINEARIZABLE };
    run(Effect::Read, c.get_job(request), |r| {
        let job = r.job.unwrap_or_default();
        let mut completed: Vec<(u64, u64)> = job.checkpoints.iter().map(|c| (c.id, c.completed_at_ms)).collect();
        completed.sort();
        json!({
            "attempt": job.attempt,
            "latest": completed.last().map(|(id, _)| *id),
            "completed": completed.iter().map(|(id, at)| json!({"id": id, "at_ms": at})).collect::<Vec<_>>(),
        })
    })
    .await
}

/// `read-leases`.
pub async fn read_leases(mut c: JobManagerClient<Channel>) -> Outcome {
    let request = pb::ListSlotLeasesRequest { consistency: LINEARIZABLE };
    run(Effect::Read, c.list_slot_leases(request), |r| {
        let leases: Vec<Value> = r
            .leases
            .into_iter()
            .map(|l| json!({"slot": format!("{}/{}", l.tm_id, l.index), "job_id": l.job_id}))
            .collect();
        json!({ "leases": leases })
    })
    .await
}

/// `status`: how replica `node` sees itself.
pub async fn status(mut c: JobManagerClient<Channel>, node: u64) -> Outcome {
    let outcome = run(Effect::Read, c.cluster_status(pb::ClusterStatusRequest {}), |r| {
        match r.replicas.iter().find(|s| s.node_id == node && s.reachable) {
            Some(s) => json!({"term": s.term, "leader": s.leader, "state": s.state}),
            None => Value::Null,
        }
    })
    .await;
    if outcome.op_type == OpType::Ok && outcome.value.is_null() {
        return Outcome { op_type: OpType::Fail, value: Value::Null, error: Some("no own status".into()) };
    }
    outcome
}

/// `final-state`.
pub async fn state_digest(mut c: JobManagerClient<Channel>) -> Outcome {
    run(
        Effect::Read,
        c.state_digest(pb::StateDigestRequest {}),
        |r| json!({"applied_index": r.applied_index, "digest": format!("{:016x}", r.digest), "node": r.node_id}),
    )
    .await
}

/// `tm-deployments`: what a TaskManager runs, from its own HTTP endpoint.
pub async fn tm_deployments(http_addr: &str) -> Outcome {
    match tokio::time::timeout(Duration::from_secs(2), http_get_json(http_addr, "/")).await {
        Ok(Ok(body)) => Outcome::ok(tm_deployments_from(&body)),
        Ok(Err(e)) => Outcome { op_type: OpType::Fail, value: Value::Null, error: Some(e) },
        Err(_) => timed_out(Effect::Read),
    }
}

/// The `tm-deployments` value of a TaskManager's `GET /` answer.
pub fn tm_deployments_from(body: &Value) -> Value {
    let deployments: Vec<Value> = body["deployments"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            let subtasks = d["subtasks"].as_array().cloned().unwrap_or_default();
            let slots_used = subtasks.iter().filter_map(|s| s["subtask"].as_u64()).max().map_or(0, |m| m + 1);
            let terminal = ["FINISHED", "CANCELED", "FAILED"];
            let running = subtasks.iter().any(|s| !terminal.contains(&s["status"].as_str().unwrap_or("")));
            json!({
                "job_id": d["job-id"], "attempt": d["attempt"],
                "term": d["fencing-token"]["term"], "epoch": d["fencing-token"]["epoch"],
                "slots_used": slots_used, "running": running,
            })
        })
        .collect();
    json!({"tm_id": body["id"], "slots": body["slots"], "deployments": deployments})
}

/// A minimal HTTP/1.0 GET returning the body as JSON.
async fn http_get_json(addr: &str, path: &str) -> Result<Value, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&response);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).ok_or("no HTTP body")?;
    serde_json::from_str(body).map_err(|e| e.to_string())
}

/// Performs one operation and records it: invoke, run, complete.
pub async fn record<F>(
    recorder: &Recorder,
    process: u64,
    f: &str,
    key: Option<String>,
    argument: Value,
    node: Option<u64>,
    op: F,
) -> OpType
where
    F: std::future::Future<Output = Outcome>,
{
    let pending = recorder.invoke(process, f, key, argument, node);
    let outcome = op.await;
    let op_type = outcome.op_type;
    recorder.complete(pending, outcome.op_type, outcome.value, outcome.error);
    op_type
}

/// One client of the mixed workload, the same in live runs and in the simulation: random operations through random
/// replicas until `stop`. About a third are register writes, a quarter register reads, the rest submissions,
/// cancels, job listings and checkpoint reads. A process whose operation is indeterminate is retired (a later
/// operation of it could not be ordered after one that may still take effect) and the client goes on as a new one.
pub struct ClientLoop<'a> {
    pub recorder: &'a Recorder,
    pub clients: &'a Clients,
    /// The replicas' client API addresses, by id.
    pub apis: &'a BTreeMap<u64, String>,
    /// The registers: metadata keys of job `holder`.
    pub keys: &'a [&'a str],
    pub holder: &'a str,
    /// Shared by the run's clients: written values and set-workload client ids are unique.
    pub counter: &'a AtomicU64,
    /// The set workload's acknowledged jobs, which cancels pick from.
    pub submitted: &'a Mutex<Vec<String>>,
    /// The checkpointing jobs whose checkpoints are read back, once submitted.
    pub checkpoint_jobs: &'a Mutex<Vec<String>>,
    pub stop: &'a AtomicBool,
}

impl ClientLoop<'_> {
    /// Runs the client until `stop`; `seed` draws its replicas, operations and pauses.
    pub async fn run(self, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut process = self.recorder.new_process();
        let nodes: Vec<u64> = self.apis.keys().copied().collect();
        while !self.stop.load(Ordering::Relaxed) {
            let node = nodes[rng.gen_range(0..nodes.len())];
            if self.random_operation(&mut rng, process, node).await == OpType::Info {
                process = self.recorder.new_process();
            }
            tokio::time::sleep(Duration::from_millis(rng.gen_range(5..60))).await;
        }
    }

    /// One random operation by `process` through replica `node`, recorded; its outcome.
    async fn random_operation(&self, rng: &mut StdRng, process: u64, node: u64) -> OpType {
        let c = self.clients.client(&self.apis[&node]);
        let r = self.recorder;
        let roll = rng.gen_range(0..100);
        let key = self.keys[rng.gen_range(0..self.keys.len())];
        if roll < 35 {
            let value = self.counter.fetch_add(1, Ordering::Relaxed);
            record(
                r,
                process,
                "write",
                Some(key.to_string()),
                json!(value),
                Some(node),
                write(c, self.holder, key, value),
            )
            .await
        } else if roll < 62 {
            record(r, process, "read", Some(key.to_string()), Value::Null, Some(node), read(c, self.holder, key)).await
        } else if roll < 70 {
            match pick(self.checkpoint_jobs, rng) {
                Some(job_id) => {
                    let op = read_checkpoints(c, &job_id);
                    record(r, process, "read-checkpoints", Some(job_id.clone()), Value::Null, Some(node), op).await
                }
                None => OpType::Ok,
            }
        } else if roll < 85 {
            let client_id = format!("{SET_PREFIX}{}", self.counter.fetch_add(1, Ordering::Relaxed));
            let pending = r.invoke(process, "submit", Some(client_id.clone()), Value::Null, Some(node));
            let outcome = submit(c, &client_id).await;
            if let Some(job_id) = outcome.value["job_id"].as_str() {
                lock(self.submitted).push(job_id.to_string());
            }
            let op_type = outcome.op_type;
            r.complete(pending, outcome.op_type, outcome.value, outcome.error);
            op_type
        } else if roll < 90 {
            match pick(self.submitted, rng) {
                Some(job_id) => {
                    let op = cancel(c, &job_id);
                    record(r, process, "cancel", Some(job_id.clone()), Value::Null, Some(node), op).await
                }
                None => OpType::Ok,
            }
        } else {
            record(r, process, "read-jobs", None, Value::Null, Some(node), read_jobs(c)).await
        }
    }
}

/// A random one of `jobs`, if there is any.
fn pick(jobs: &Mutex<Vec<String>>, rng: &mut StdRng) -> Option<String> {
    let jobs = lock(jobs);
    (!jobs.is_empty()).then(|| jobs[rng.gen_range(0..jobs.len())].clone())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
