//! A harness that runs real `jm server` processes on 127.0.0.1 ports chosen at runtime, in a temporary
//! directory, and kills them (SIGKILL) on drop.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use jobmanager::api::grpc::pb;
use jobmanager::api::grpc::pb::job_manager_client::JobManagerClient;
use jobmanager::api::grpc::ClusterClient;
use tonic::transport::Channel;

/// The `jm` binary under test.
pub fn jm() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_jm"))
}

/// A free TCP port on 127.0.0.1 for a process the test starts, below the ephemeral range
/// ([`jobmanager::cli::local::free_port`]).
pub fn free_port() -> u16 {
    jobmanager::cli::local::free_port().unwrap_or_else(|e| panic!("{e}"))
}

/// One replica process.
pub struct Replica {
    pub id: u64,
    pub api_addr: String,
    /// Where its REST API listens, if the cluster was started with one.
    pub http_addr: Option<String>,
    pub raft_addr: String,
    pub data_dir: PathBuf,
    pub child: Option<Child>,
}

/// One TaskManager process.
pub struct TaskManagerProcess {
    pub number: u64,
    pub data_dir: PathBuf,
    pub listen: String,
    /// Where it serves `/metrics`.
    pub http: String,
    pub slots: u32,
    pub child: Option<Child>,
}

impl TaskManagerProcess {
    /// Its TaskManager id, as it chose it on first start.
    pub fn tm_id(&self) -> Option<String> {
        std::fs::read_to_string(self.data_dir.join("tm-id")).ok().map(|s| s.trim().to_string())
    }
}

/// A cluster of real replicas (and TaskManagers, once started).
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub replicas: Vec<Replica>,
    pub task_managers: Vec<TaskManagerProcess>,
    peers: String,
    extra: Vec<String>,
}

impl TestCluster {
    /// Starts `n` replicas with extra `jm server` flags.
    pub fn start(n: u64, extra: &[&str]) -> Self {
        Self::start_inner(n, extra, false)
    }

    /// Starts `n` replicas that also serve the REST API.
    pub fn start_with_rest(n: u64, extra: &[&str]) -> Self {
        Self::start_inner(n, extra, true)
    }

    fn start_inner(n: u64, extra: &[&str], rest: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let replicas: Vec<Replica> = (1..=n)
            .map(|id| Replica {
                id,
                api_addr: format!("127.0.0.1:{}", free_port()),
                http_addr: rest.then(|| format!("127.0.0.1:{}", free_port())),
                raft_addr: format!("127.0.0.1:{}", free_port()),
                data_dir: dir.path().join(format!("node-{id}")),
                child: None,
            })
            .collect();
        let peers = replicas.iter().map(|r| format!("{}={}/{}", r.id, r.raft_addr, r.api_addr)).collect::<Vec<_>>();
        let mut cluster = TestCluster {
            dir,
            replicas,
            task_managers: Vec::new(),
            peers: peers.join(","),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        for id in 1..=n {
            cluster.spawn(id);
        }
        cluster
    }

    fn replica(&mut self, id: u64) -> &mut Replica {
        self.replicas.iter_mut().find(|r| r.id == id).unwrap()
    }

    /// Starts (or restarts, on its existing data dir) replica `id`.
    pub fn spawn(&mut self, id: u64) {
        let peers = self.peers.clone();
        let extra = self.extra.clone();
        let r = self.replica(id);
        assert!(r.child.is_none(), "replica {id} is already running");
        std::fs::create_dir_all(&r.data_dir).unwrap();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(r.data_dir.join("server.log")).unwrap();
        let http: Vec<String> = r.http_addr.iter().flat_map(|a| ["--http-listen".to_string(), a.clone()]).collect();
        let child = Command::new(jm())
            .args(["server", "--id", &id.to_string(), "--peers", &peers])
            .arg("--data-dir")
            .arg(&r.data_dir)
            .args(&http)
            .args(&extra)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        r.child = Some(child);
    }

    /// Starts TaskManager number `number` (a new one, or again on its data dir) with `slots` slots.
    pub fn spawn_tm(&mut self, number: u64, slots: u32) {
        let cluster: Vec<String> = self.replicas.iter().map(|r| r.api_addr.clone()).collect();
        self.spawn_tm_with(number, slots, &cluster, None);
    }

    /// [`Self::spawn_tm`], reaching the replicas at `cluster` and advertising `advertise` (default: its listen
    /// address): e.g. through proxies a test can cut.
    pub fn spawn_tm_with(&mut self, number: u64, slots: u32, cluster: &[String], advertise: Option<&str>) {
        if !self.task_managers.iter().any(|t| t.number == number) {
            self.task_managers.push(TaskManagerProcess {
                number,
                data_dir: self.dir.path().join(format!("tm-{number}")),
                listen: format!("127.0.0.1:{}", free_port()),
                http: format!("127.0.0.1:{}", free_port()),
                slots,
                child: None,
            });
        }
        let tm = self.task_managers.iter_mut().find(|t| t.number == number).unwrap();
        assert!(tm.child.is_none(), "TaskManager {number} is already running");
        std::fs::create_dir_all(&tm.data_dir).unwrap();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(tm.data_dir.join("tm.log")).unwrap();
        let child = Command::new(jm())
            .args(["taskmanager", "--cluster", &cluster.join(","), "--listen", &tm.listen, "--http-listen", &tm.http])
            .args(["--slots", &slots.to_string(), "--heartbeat-ms", "200"])
            .args(advertise.iter().flat_map(|a| ["--advertise", a]))
            .arg("--data-dir")
            .arg(&tm.data_dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        tm.child = Some(child);
    }

    /// SIGKILLs TaskManager `number` and reaps it.
    pub fn kill_tm(&mut self, number: u64) {
        let tm = self.task_managers.iter_mut().find(|t| t.number == number).unwrap();
        if let Some(mut child) = tm.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// The TaskManager process whose id is `tm_id`.
    pub fn tm_number(&self, tm_id: &str) -> Option<u64> {
        self.task_managers.iter().find(|t| t.tm_id().as_deref() == Some(tm_id)).map(|t| t.number)
    }

    /// The log of TaskManager `number`.
    pub fn tm_log(&self, number: u64) -> String {
        let tm = self.task_managers.iter().find(|t| t.number == number).unwrap();
        std::fs::read_to_string(tm.data_dir.join("tm.log")).unwrap_or_default()
    }

    /// SIGKILLs replica `id` and reaps it.
    pub fn kill(&mut self, id: u64) {
        let r = self.replica(id);
        if let Some(mut child) = r.child.take() {
            child.kill().unwrap(); // SIGKILL on Unix
            child.wait().unwrap();
        }
    }

    /// Ids of the running replicas.
    pub fn live(&self) -> Vec<u64> {
        self.replicas.iter().filter(|r| r.child.is_some()).map(|r| r.id).collect()
    }

    /// The client API address of replica `id`.
    pub fn addr(&self, id: u64) -> String {
        self.replicas.iter().find(|r| r.id == id).unwrap().api_addr.clone()
    }

    /// A client of every replica.
    pub fn client(&self) -> ClusterClient {
        ClusterClient::new(self.replicas.iter().map(|r| r.api_addr.clone()).collect())
    }

    /// A client connected to replica `id` only.
    pub async fn connect(&self, id: u64) -> JobManagerClient<Channel> {
        ClusterClient::new(vec![self.addr(id)]).connect_to(&self.addr(id)).await.unwrap()
    }

    /// The cluster status as replica `id` sees it.
    pub async fn status(&self, id: u64) -> Option<pb::ClusterStatusReply> {
        let client = ClusterClient::new(vec![self.addr(id)]).with_request_timeout(Duration::from_secs(3));
        client.call(|mut c| async move { c.cluster_status(pb::ClusterStatusRequest {}).await }).await.ok()
    }

    /// Waits until every live replica agrees on one live leader whose leader services run; returns it.
    pub async fn wait_leader(&self, timeout: Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(leader) = self.agreed_leader().await {
                return leader;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("no agreed leader within {timeout:?}\n{}", self.diagnosis().await);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn agreed_leader(&self) -> Option<u64> {
        let live = self.live();
        let mut leader = None;
        for id in &live {
            let s = self.status(*id).await?;
            let l = s.leader?;
            if leader.is_some_and(|prev| prev != l) || !live.contains(&l) {
                return None;
            }
            leader = Some(l);
        }
        let s = self.status(leader?).await?;
        let me = s.replicas.iter().find(|r| Some(r.node_id) == leader)?;
        me.leader_services_active.then_some(leader?)
    }

    /// What each replica says of itself, and the end of its log: for a test that gives up waiting.
    pub async fn diagnosis(&self) -> String {
        let mut text = String::new();
        for r in &self.replicas {
            let status = match &r.child {
                None => "killed by the test".to_string(),
                Some(_) => match self.status(r.id).await {
                    Some(s) => format!("leader {:?}, term {}", s.leader, s.term),
                    None => "no answer to ClusterStatus".to_string(),
                },
            };
            let log = self.log(r.id);
            let tail: Vec<&str> = log.lines().rev().take(8).collect();
            text.push_str(&format!("replica {}: {status}; last log lines:\n", r.id));
            for line in tail.into_iter().rev() {
                text.push_str(&format!("  {}\n", line.chars().take(400).collect::<String>()));
            }
        }
        text
    }

    /// A live replica that is not the leader.
    pub fn follower_of(&self, leader: u64) -> u64 {
        *self.live().iter().find(|id| **id != leader).unwrap()
    }

    /// Waits until replica `id` has applied at least `index`.
    pub async fn wait_applied(&self, id: u64, index: u64, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(s) = self.status(id).await {
                if s.replicas.iter().any(|r| r.node_id == id && r.applied_index >= index) {
                    return;
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "replica {id} did not apply {index} within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The job ids replica `id` holds, read from its own state (stale read).
    pub async fn jobs_on(&self, id: u64) -> Vec<String> {
        let mut c = self.connect(id).await;
        let reply = c
            .list_jobs(pb::ListJobsRequest { consistency: pb::ReadConsistency::Stale as i32 })
            .await
            .unwrap()
            .into_inner();
        reply.jobs.into_iter().map(|j| j.job_id).collect()
    }

    /// The server log of replica `id`.
    pub fn log(&self, id: u64) -> String {
        let r = self.replicas.iter().find(|r| r.id == id).unwrap();
        std::fs::read_to_string(r.data_dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for t in &mut self.task_managers {
            if let Some(mut child) = t.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        for r in &mut self.replicas {
            if let Some(mut child) = r.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// A minimal HTTP/1.1 exchange with `addr`: returns the status code and the body parsed as JSON (Null if empty).
pub async fn http(addr: &str, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let (status, payload) = http_text(addr, method, path, body).await;
    let json =
        if payload.trim().is_empty() { serde_json::Value::Null } else { serde_json::from_str(&payload).unwrap() };
    (status, json)
}

/// A minimal HTTP/1.1 exchange with `addr`: returns the status code and the body as text.
pub async fn http_text(addr: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let reply = http_exchange(addr, method, path, &[], body).await;
    (reply.status, reply.body)
}

/// An HTTP response: status, headers (names lowercase) and body.
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpReply {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.1 exchange with `addr`, sending extra `headers`.
pub async fn http_exchange(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> HttpReply {
    try_http_exchange(addr, method, path, headers, body).await.unwrap()
}

/// [`http_exchange`], with connection errors returned rather than panicking.
pub async fn try_http_exchange(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> std::io::Result<HttpReply> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let body = body.unwrap_or("");
    let extra: String = headers.iter().map(|(name, value)| format!("{name}: {value}\r\n")).collect();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers: Vec<(String, String)> = head
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked { dechunk(rest) } else { rest.to_string() };
    Ok(HttpReply { status, headers, body })
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&tail[..size]);
        rest = &tail[size + 2..];
    }
    out
}

/// The smallest valid job spec: a sequence into a blackhole.
pub fn minimal_spec(name: &str) -> String {
    format!("name: {name}\nvertices:\n  - id: source\n    operators: [{{sequence: {{}}}}, {{blackhole: {{}}}}]\n")
}

/// Submits a minimal job named `name` with idempotency key `key` through `client`.
pub async fn submit(
    client: &mut JobManagerClient<Channel>,
    name: &str,
    key: &str,
) -> Result<pb::SubmitJobReply, tonic::Status> {
    let spec = minimal_spec(name).into_bytes();
    client.submit_job(pb::SubmitJobRequest { spec, idempotency_key: key.into() }).await.map(|r| r.into_inner())
}
