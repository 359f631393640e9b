//! Regression test for a bug the chaos suite found (lease checker: "a TaskManager running 33 deployments on 32
//! slots"): a new leader's JobMaster adopting running tasks whose slots had meanwhile been leased to another job
//! (their TaskManager had been declared dead, which released its leases, and had come back) failed its lease write,
//! exited, and was started again, forever, while the stray tasks kept running outside any lease. The fix: on
//! take-over, a refused re-lease makes the JobMaster restart the job on slots it can hold, and the restart cancels
//! the strays.
//!
//! The scenario is set up deterministically with real processes. The replicas reach TaskManager A only through a
//! proxy the test owns. A is cut off by closing that proxy and SIGSTOPping A (no heartbeats), so the cancel the
//! leader sends meanwhile is refused rather than left in A's socket to be served on SIGCONT, and A's tasks keep
//! running:
//!
//! 1. job `wide` (2 slots, restarts after 5 s) runs on A (2 slots), the only TaskManager;
//! 2. A is cut off: the leader declares it dead, releases its leases, and `wide` waits out its restart delay
//!    (the cancel it sends cannot reach A, so its tasks keep running there);
//! 3. job `narrow` (1 slot) is submitted, A is reconnected and registers again, and `narrow` takes one of its
//!    slots: A now runs 3 slots' worth of deployments on 2 slots, and `wide` cannot fit there any more;
//! 4. the leader is SIGKILLed; the new leader's JobMaster of `wide` finds attempt 1 running on A and cannot lease
//!    its slots back. TaskManager B (2 slots) joins.
//!
//! With the fix `wide` ends RUNNING on B, on slots leased to it, and A runs nothing of it; without it `wide` never
//! runs again and A stays over its slots.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::TestCluster;
use jobmanager::api::grpc::pb;
use jobmanager::api::grpc::ClusterClient;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP forwarder to one address that can cut every connection through it (and refuse new ones), and heal.
struct Proxy {
    addr: String,
    open: Arc<watch::Sender<bool>>,
}

impl Proxy {
    async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let open = Arc::new(watch::channel(true).0);
        let state = open.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { continue };
                let mut open = state.subscribe();
                if !*open.borrow() {
                    continue; // dropped: the connection is closed at once
                }
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = open.wait_for(|open| !*open) => {}
                    }
                });
            }
        });
        Self { addr, open }
    }

    fn cut(&self) {
        self.open.send_replace(false);
    }

    fn heal(&self) {
        self.open.send_replace(true);
    }
}

fn spec(name: &str, parallelism: u32) -> String {
    format!(
        "name: {name}\nvertices:\n  - id: source\n    parallelism: {parallelism}\n    operators: [{{sequence: {{rate: 5}}}}, \
         {{blackhole: {{}}}}]\nrestart_strategy:\n  type: fixed-delay\n  attempts: 100\n  delay: 5s\n"
    )
}

async fn submit(client: &ClusterClient, spec: String, key: &str) -> String {
    let request = pb::SubmitJobRequest { spec: spec.into_bytes(), idempotency_key: key.into() };
    let reply = client
        .call(|mut c| {
            let request = request.clone();
            async move { c.submit_job(request).await }
        })
        .await
        .unwrap();
    reply.job_id
}

async fn job(client: &ClusterClient, job_id: &str) -> Option<pb::Job> {
    let request = pb::GetJobRequest { job_id: job_id.into(), consistency: 0 };
    let reply = client
        .call(|mut c| {
            let request = request.clone();
            async move { c.get_job(request).await }
        })
        .await
        .ok()?;
    reply.job
}

async fn leases(client: &ClusterClient) -> Vec<pb::SlotLease> {
    let request = pb::ListSlotLeasesRequest { consistency: 0 };
    let reply = client.call(|mut c| async move { c.list_slot_leases(request).await }).await;
    reply.map(|r| r.leases).unwrap_or_default()
}

/// Polls `job_id` until `done` holds; panics with the last view after `timeout`.
async fn wait_job(
    client: &ClusterClient,
    job_id: &str,
    timeout: Duration,
    what: &str,
    done: impl Fn(&pb::Job) -> bool,
) -> pb::Job {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let j = job(client, job_id).await;
        if let Some(j) = j.as_ref().filter(|j| done(j)) {
            return j.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "job {job_id} not {what} within {timeout:?}: {j:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a TaskManager runs, from its HTTP endpoint: (job id, attempt, slots used) of every deployment with a
/// subtask not yet ended, and its slot count.
async fn running_on(http: &str) -> (Vec<(String, u64, u64)>, u64) {
    let (_, body) = common::http(http, "GET", "/", None).await;
    let terminal = ["FINISHED", "CANCELED", "FAILED"];
    let running = body["deployments"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| {
            let subtasks = d["subtasks"].as_array().cloned().unwrap_or_default();
            let alive = subtasks.iter().any(|s| !terminal.contains(&s["status"].as_str().unwrap_or("")));
            let used = subtasks.iter().filter_map(|s| s["subtask"].as_u64()).max().map_or(0, |m| m + 1);
            let job_id = d["job-id"].as_str()?.to_string();
            alive.then(|| (job_id, d["attempt"].as_u64().unwrap_or(0), used))
        })
        .collect();
    (running, body["slots"].as_u64().unwrap_or(0))
}

/// Whether the TaskManager id is registered, as the cluster sees it.
async fn registered(client: &ClusterClient, tm_id: &str) -> bool {
    let request = pb::ListTaskManagersRequest::default();
    let reply = client.call(|mut c| async move { c.list_task_managers(request).await }).await;
    reply.is_ok_and(|r| r.task_managers.iter().any(|tm| tm.tm_id == tm_id))
}

/// Sends SIGSTOP or SIGCONT to TaskManager `number`.
fn signal(cluster: &TestCluster, number: u64, signal: &str) {
    let tm = cluster.task_managers.iter().find(|t| t.number == number).unwrap();
    let pid = tm.child.as_ref().expect("the TaskManager runs").id();
    let status = std::process::Command::new("kill").args([format!("-{signal}"), pid.to_string()]).status().unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

/// Panics with `what` once `deadline` passed.
async fn tick(deadline: tokio::time::Instant, what: &str) {
    assert!(tokio::time::Instant::now() < deadline, "not {what} in time");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

fn in_secs(s: u64) -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_leader_restarts_a_job_whose_running_tasks_lost_their_slots_and_cancels_the_strays() {
    let mut cluster = TestCluster::start(3, &["--tm-heartbeat-timeout-ms", "1500"]);
    let client = cluster.client().with_request_timeout(Duration::from_secs(10));
    let first_leader = cluster.wait_leader(Duration::from_secs(20)).await;

    // TaskManager A, reached by the replicas through a proxy.
    let a_listen = format!("127.0.0.1:{}", common::free_port());
    let a_proxy = Proxy::start(a_listen.clone()).await;
    let a_http = format!("127.0.0.1:{}", common::free_port());
    cluster.task_managers.push(common::TaskManagerProcess {
        number: 1,
        data_dir: cluster.dir.path().join("tm-1"),
        listen: a_listen,
        http: a_http.clone(),
        slots: 2,
        child: None,
    });
    let replicas: Vec<String> = cluster.replicas.iter().map(|r| r.api_addr.clone()).collect();
    cluster.spawn_tm_with(1, 2, &replicas, Some(&a_proxy.addr));

    // 1. `wide` runs on A, on both its slots.
    let wide = submit(&client, spec("wide", 2), "wide").await;
    let running = wait_job(&client, &wide, Duration::from_secs(30), "running", |j| j.status == "RUNNING").await;
    assert_eq!(running.attempt, 1);
    let a_id = cluster.task_managers[0].tm_id().expect("A chose its id");
    assert!(running.slots.iter().all(|s| s.starts_with(&format!("{a_id}#"))), "{:?}", running.slots);

    // 2. A is cut off; the leader declares it dead and `wide` waits out its restart delay, its tasks still on A.
    a_proxy.cut();
    signal(&cluster, 1, "STOP");
    wait_job(&client, &wide, Duration::from_secs(15), "restarting", |j| j.status == "RESTARTING").await;
    let deadline = in_secs(10);
    while registered(&client, &a_id).await {
        tick(deadline, "A declared dead").await;
    }

    // 3. `narrow` waits for a slot; A comes back and `narrow` takes one of its slots.
    let narrow = submit(&client, spec("narrow", 1), "narrow").await;
    a_proxy.heal();
    signal(&cluster, 1, "CONT");
    let narrow_running =
        wait_job(&client, &narrow, Duration::from_secs(15), "running", |j| j.status == "RUNNING").await;
    assert!(narrow_running.slots.iter().all(|s| s.starts_with(&format!("{a_id}#"))), "{:?}", narrow_running.slots);
    let (on_a, slots) = running_on(&a_http).await;
    let used: u64 = on_a.iter().map(|(_, _, used)| used).sum();
    assert!(
        on_a.iter().any(|(job, attempt, _)| job == &wide && *attempt == 1) && used > slots,
        "the scenario needs A over its slots, with `wide`'s first attempt still running: {on_a:?}"
    );
    let wide_now = job(&client, &wide).await.unwrap();
    assert_eq!(wide_now.attempt, 1, "`wide` must still be recorded on A when the leader changes: {wide_now:#?}");

    // 4. A new leader takes `wide` over; B joins.
    cluster.kill(first_leader);
    cluster.wait_leader(Duration::from_secs(20)).await;
    cluster.spawn_tm(2, 2);
    let b_http = cluster.task_managers[1].http.clone();

    let restarted = wait_job(&client, &wide, Duration::from_secs(40), "running again on new slots", |j| {
        j.status == "RUNNING" && j.attempt > 1
    })
    .await;
    let took_over = cluster.live().into_iter().any(|id| cluster.log(id).contains("its running tasks lost their slots"));
    assert!(took_over, "the new leader's JobMaster did not go through the refused re-lease");
    let b_id = cluster.task_managers[1].tm_id().expect("B chose its id");
    assert!(restarted.slots.iter().all(|s| s.starts_with(&format!("{b_id}#"))), "{:?}", restarted.slots);
    let leased: Vec<String> = leases(&client)
        .await
        .into_iter()
        .filter(|l| l.job_id == wide)
        .map(|l| format!("{}#{}", l.tm_id, l.index))
        .collect();
    let mut held = restarted.slots.clone();
    held.sort();
    let mut leased_sorted = leased.clone();
    leased_sorted.sort();
    assert_eq!(leased_sorted, held, "`wide` runs on exactly the slots leased to it");

    // The strays on A were cancelled: nothing of `wide` runs there, and no TaskManager is over its slots.
    let deadline = in_secs(10);
    while running_on(&a_http).await.0.iter().any(|(job, _, _)| job == &wide) {
        tick(deadline, "`wide` gone from A").await;
    }
    for http in [&a_http, &b_http] {
        let (running, slots) = running_on(http).await;
        let used: u64 = running.iter().map(|(_, _, used)| used).sum();
        assert!(used <= slots, "TaskManager at {http} runs {used} slot(s) of {slots}: {running:?}");
    }
    let narrow_now = job(&client, &narrow).await.unwrap();
    assert_eq!(narrow_now.status, "RUNNING", "{narrow_now:#?}");
}
