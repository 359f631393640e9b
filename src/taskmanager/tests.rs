//! Tests of the TaskManager's command handling (fencing, deploy, reconcile) without a network.
//!
//! The TaskManager talks to [`FakeJobManager`], which records every request and answers like a leader that knows
//! it (registered, heartbeat acknowledged with nothing to cancel, events accepted), so the membership and event
//! loops run but never interfere. Commands go through the [`TaskExecutorHandler`] impl, as the gRPC service calls
//! it; deployments are real subtasks writing checkpoints to a temporary directory.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::protocol::{
    BoxFuture, DeploymentReport, FencingToken, FromJobManager, FromTaskManager, GatewayError, JobManagerGateway,
    TaskEvent, TaskExecutorHandler, TaskState, ToJobManager, ToTaskManager,
};
use super::{TaskManager, TaskManagerConfig};

/// How long a test waits for something asynchronous before it fails.
const DEADLINE: Duration = Duration::from_secs(2);

/// A one-vertex job: a rate-limited sequence into a blackhole, checkpointed every second.
const SPEC: &str = concat!(
    r#"{"name":"t","vertices":[{"id":"src","operators":[{"sequence":{"rate":1000}},{"blackhole":{}}]}],"#,
    r#""checkpoints":{"interval":1000}}"#
);

/// A replica that records every request and answers like a leader that knows the TaskManager.
#[derive(Debug, Default)]
struct FakeJobManager {
    /// Every request received, oldest first.
    requests: Mutex<Vec<ToJobManager>>,
}

impl FakeJobManager {
    /// Every task event received so far, oldest first.
    fn events(&self) -> Vec<TaskEvent> {
        let requests = self.requests.lock().unwrap();
        requests
            .iter()
            .flat_map(|request| match request {
                ToJobManager::TaskEvents { events, .. } => events.clone(),
                _ => Vec::new(),
            })
            .collect()
    }

    /// Waits until an event matching `wanted` arrives, and returns it.
    async fn wait_for_event(&self, what: &str, wanted: impl Fn(&TaskEvent) -> bool) -> TaskEvent {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(event) = self.events().into_iter().find(|e| wanted(e)) {
                return event;
            }
            assert!(Instant::now() < deadline, "no {what} event within {DEADLINE:?}; got {:?}", self.events());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl JobManagerGateway for FakeJobManager {
    fn call(
        &self,
        _address: &str,
        request: ToJobManager,
        _timeout: Duration,
    ) -> BoxFuture<Result<FromJobManager, GatewayError>> {
        let reply = match &request {
            ToJobManager::Register { .. } => FromJobManager::Registered { term: 2 },
            ToJobManager::Heartbeat { .. } => FromJobManager::HeartbeatAck { term: 2, known: true, cancel: vec![] },
            ToJobManager::TaskEvents { .. } => FromJobManager::EventsAccepted,
        };
        self.requests.lock().unwrap().push(request);
        Box::pin(async move { Ok(reply) })
    }
}

/// Starts a TaskManager talking to a fresh [`FakeJobManager`].
fn start() -> (Arc<TaskManager>, Arc<FakeJobManager>) {
    let jm = Arc::new(FakeJobManager::default());
    let config = TaskManagerConfig {
        tm_id: "tm-test".to_string(),
        cluster: vec!["jm-0:7000".to_string()],
        advertise: "tm-test:7100".to_string(),
        slots: 4,
        zone: None,
        heartbeat_interval: Duration::from_millis(100),
        rpc_timeout: Duration::from_secs(1),
    };
    (TaskManager::start(config, jm.clone()), jm)
}

fn token(term: u64, epoch: u64) -> FencingToken {
    FencingToken { term, epoch }
}

/// A deploy of every vertex of [`SPEC`] (as canonical JSON) with checkpoints under `dir`.
fn deploy(token: FencingToken, job_id: &str, attempt: u32, dir: &Path) -> ToTaskManager {
    let graph = crate::jobgraph::parse(SPEC.as_bytes()).expect("test spec is valid");
    ToTaskManager::Deploy {
        token,
        job_id: job_id.to_string(),
        attempt,
        spec_json: graph.canonical_json,
        vertices: vec!["src".to_string()],
        restore: None,
        checkpoint_dir: dir.to_string_lossy().into_owned(),
    }
}

fn trigger(token: FencingToken, job_id: &str, attempt: u32, checkpoint_id: u64) -> ToTaskManager {
    ToTaskManager::TriggerCheckpoint {
        token,
        job_id: job_id.to_string(),
        attempt,
        checkpoint_id,
        timestamp_ms: 1_000,
        savepoint: None,
    }
}

fn reconcile(token: FencingToken, job_id: &str) -> ToTaskManager {
    ToTaskManager::Reconcile { token, job_id: job_id.to_string() }
}

/// The job's deployments, by a `Reconcile` under `token` (which must be accepted).
async fn deployments(tm: &Arc<TaskManager>, token: FencingToken, job_id: &str) -> Vec<DeploymentReport> {
    match tm.handle(reconcile(token, job_id)).await {
        FromTaskManager::Deployments(reports) => reports,
        other => panic!("reconcile under {token} answered {other:?}"),
    }
}

/// Reconciles under `token` until every subtask of each listed attempt is in the listed state; returns the reports.
async fn wait_for_states(
    tm: &Arc<TaskManager>,
    token: FencingToken,
    job_id: &str,
    wanted: &[(u32, TaskState)],
) -> Vec<DeploymentReport> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let reports = deployments(tm, token, job_id).await;
        let reached = wanted.iter().all(|(attempt, state)| {
            reports.iter().any(|r| {
                r.attempt == *attempt && !r.subtasks.is_empty() && r.subtasks.iter().all(|s| s.state == *state)
            })
        });
        if reached {
            return reports;
        }
        assert!(Instant::now() < deadline, "not {wanted:?} within {DEADLINE:?}: {reports:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn commands_with_an_older_token_for_the_job_are_fenced() {
    let (tm, _jm) = start();
    let newest = token(2, 5);
    assert_eq!(tm.handle(reconcile(newest, "a")).await, FromTaskManager::Deployments(vec![]));

    let dir = tempfile::tempdir().unwrap();
    for stale in [token(1, 9), token(2, 4)] {
        let commands = [
            deploy(stale, "a", 1, dir.path()),
            ToTaskManager::Cancel { token: stale, job_id: "a".to_string(), attempt: None },
            trigger(stale, "a", 1, 1),
            ToTaskManager::NotifyCheckpoint {
                token: stale,
                job_id: "a".to_string(),
                attempt: 1,
                checkpoint_id: 1,
                completed: true,
            },
            reconcile(stale, "a"),
        ];
        for command in commands {
            let name = command.name();
            assert_eq!(tm.handle(command).await, FromTaskManager::Fenced { newest }, "{name} under {stale}");
        }
    }
    // Nothing was deployed by the fenced deploy.
    assert_eq!(deployments(&tm, newest, "a").await, vec![]);

    // Another job's tokens are independent of job a's, and job a's newest is unchanged by them.
    assert_eq!(tm.handle(reconcile(token(1, 1), "b")).await, FromTaskManager::Deployments(vec![]));
    let cancel_b = ToTaskManager::Cancel { token: token(1, 1), job_id: "b".to_string(), attempt: None };
    assert_eq!(tm.handle(cancel_b).await, FromTaskManager::Ok);
    assert_eq!(tm.handle(reconcile(token(1, 9), "a")).await, FromTaskManager::Fenced { newest });

    // An equal token is accepted; a newer one is accepted and fences the one before it.
    let cancel_a = |token| ToTaskManager::Cancel { token, job_id: "a".to_string(), attempt: Some(1) };
    assert_eq!(tm.handle(cancel_a(newest)).await, FromTaskManager::Ok);
    assert_eq!(tm.handle(cancel_a(token(3, 0))).await, FromTaskManager::Ok);
    assert_eq!(tm.handle(reconcile(newest, "a")).await, FromTaskManager::Fenced { newest: token(3, 0) });
    assert_eq!(tm.handle(reconcile(token(1, 1), "b")).await, FromTaskManager::Deployments(vec![]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_is_reported_by_reconcile_and_replaced_by_a_newer_attempt() {
    let (tm, jm) = start();
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(tm.handle(deploy(token(1, 1), "j", 1, dir.path())).await, FromTaskManager::Ok);

    // A new JobMaster reconciles: it learns what runs, under its own token, and nothing stops.
    let newer = token(2, 1);
    let reports = wait_for_states(&tm, newer, "j", &[(1, TaskState::Running)]).await;
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!((reports[0].job_id.as_str(), reports[0].attempt, reports[0].token), ("j", 1, newer));
    assert_eq!(reports[0].subtasks.iter().map(|s| (s.vertex.as_str(), s.subtask)).collect::<Vec<_>>(), [("src", 0)]);
    jm.wait_for_event("RUNNING of src[0]", |e| {
        let running = TaskState::Running;
        matches!(e, TaskEvent::StateChanged { job_id, attempt: 1, vertex, subtask: 0, state, .. }
            if job_id == "j" && vertex == "src" && *state == running)
    })
    .await;

    // Deploying the same attempt again (a retried call) changes nothing: the running subtask keeps its progress.
    let deadline = Instant::now() + DEADLINE;
    let records_before = loop {
        let records = deployments(&tm, newer, "j").await[0].subtasks[0].records_out;
        if records >= 50 {
            break records;
        }
        assert!(Instant::now() < deadline, "the source emitted only {records} records");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(tm.handle(deploy(newer, "j", 1, dir.path())).await, FromTaskManager::Ok);
    let reports = deployments(&tm, newer, "j").await;
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert!(reports[0].subtasks[0].records_out >= records_before, "redeployed from scratch: {reports:?}");

    // A newer attempt replaces it: attempt 1 is cancelled, attempt 2 runs.
    assert_eq!(tm.handle(deploy(newer, "j", 2, dir.path())).await, FromTaskManager::Ok);
    let wanted = [(1, TaskState::Canceled), (2, TaskState::Running)];
    let reports = wait_for_states(&tm, newer, "j", &wanted).await;
    assert_eq!(reports.iter().map(|r| r.attempt).collect::<Vec<_>>(), [1, 2]);
    jm.wait_for_event("CANCELED of attempt 1", |e| {
        matches!(e, TaskEvent::StateChanged { attempt: 1, state: TaskState::Canceled, .. })
    })
    .await;
    let deploying_1 = jm
        .events()
        .iter()
        .filter(|e| matches!(e, TaskEvent::StateChanged { attempt: 1, state: TaskState::Deploying, .. }))
        .count();
    assert_eq!(deploying_1, 1, "attempt 1 was started once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_checkpoint_reaches_the_running_deployment() {
    let (tm, jm) = start();
    let dir = tempfile::tempdir().unwrap();
    let tok = token(1, 1);
    assert_eq!(tm.handle(deploy(tok, "j", 1, dir.path())).await, FromTaskManager::Ok);
    wait_for_states(&tm, tok, "j", &[(1, TaskState::Running)]).await;

    match tm.handle(trigger(tok, "j", 7, 1)).await {
        FromTaskManager::Error { message } => assert!(message.contains("deployment 7"), "{message}"),
        other => panic!("a trigger for attempt 7 answered {other:?}"),
    }
    match tm.handle(trigger(tok, "other", 1, 1)).await {
        FromTaskManager::Error { message } => assert!(message.contains("other"), "{message}"),
        other => panic!("a trigger for an unknown job answered {other:?}"),
    }

    assert_eq!(tm.handle(trigger(tok, "j", 1, 1)).await, FromTaskManager::Ok);
    let ack = jm
        .wait_for_event("ack of checkpoint 1", |e| matches!(e, TaskEvent::CheckpointAcked { checkpoint_id: 1, .. }))
        .await;
    let TaskEvent::CheckpointAcked { job_id, attempt, vertex, subtask, handle, state_size, .. } = ack else {
        unreachable!()
    };
    assert_eq!((job_id.as_str(), attempt, vertex.as_str(), subtask), ("j", 1, "src", 0));
    assert_eq!(Path::new(&handle), dir.path().join("chk-1").join("src-0.state"));
    let on_disk = std::fs::metadata(&handle).expect("the acknowledged state file exists");
    assert_eq!(on_disk.len(), state_size);

    let notify = ToTaskManager::NotifyCheckpoint {
        token: tok,
        job_id: "j".to_string(),
        attempt: 1,
        checkpoint_id: 1,
        completed: true,
    };
    assert_eq!(tm.handle(notify).await, FromTaskManager::Ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_older_than_the_one_running_is_refused_and_concurrent_deploys_start_once() {
    let (tm, jm) = start();
    let dir = tempfile::tempdir().unwrap();
    // Two identical deploys racing (a retried call): the attempt starts once.
    let (a, b) = tokio::join!(
        tm.handle(deploy(token(1, 1), "j", 2, dir.path())),
        tm.handle(deploy(token(1, 1), "j", 2, dir.path()))
    );
    assert_eq!((a, b), (FromTaskManager::Ok, FromTaskManager::Ok));
    wait_for_states(&tm, token(1, 1), "j", &[(2, TaskState::Running)]).await;
    // Events reach the leader asynchronously, in order: once RUNNING arrived, every DEPLOYING before it did too.
    jm.wait_for_event("attempt 2 running", |e| {
        matches!(e, TaskEvent::StateChanged { attempt: 2, state: TaskState::Running, .. })
    })
    .await;
    let deploying = jm
        .events()
        .iter()
        .filter(|e| matches!(e, TaskEvent::StateChanged { attempt: 2, state: TaskState::Deploying, .. }))
        .count();
    assert_eq!(deploying, 1, "attempt 2 started {deploying} times");
    // A late deploy of an earlier attempt must not run next to the newer one.
    match tm.handle(deploy(token(1, 1), "j", 1, dir.path())).await {
        FromTaskManager::Error { message } => assert!(message.contains("older than attempt 2"), "{message}"),
        other => panic!("an outdated attempt was accepted: {other:?}"),
    }
    let reports = deployments(&tm, token(1, 1), "j").await;
    assert_eq!(reports.iter().map(|r| r.attempt).collect::<Vec<_>>(), [2]);
}
