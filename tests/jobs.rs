//! End to end: real replicas and TaskManagers running a real streaming job with exactly-once output, through
//! leader kills, a TaskManager kill, stop-with-savepoint and a restore from that savepoint.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use common::TestCluster;
use jobmanager::api::grpc::pb;
use jobmanager::api::grpc::ClusterClient;

/// A sequence, keyed by `seq % 5`, counted per key, written exactly once to `out`.
fn counting_job(name: &str, out: &Path, savepoint: Option<&str>) -> String {
    let restore = savepoint.map(|p| format!("savepoint:\n  path: {p}\n")).unwrap_or_default();
    format!(
        r#"name: {name}
vertices:
  - id: source
    parallelism: 2
    operators:
      - sequence: {{rate: 150}}
      - map: {{fields: {{key: "seq % 5"}}}}
  - id: count
    parallelism: 2
    operators:
      - key_by: {{field: key}}
      - count: {{}}
      - file: {{path: "{out}"}}
edges:
  - {{from: source, to: count, partitioning: hash}}
checkpoints:
  interval: 1s
  retained: 3
restart_strategy:
  type: fixed-delay
  attempts: 10
  delay: 200ms
{restore}"#,
        out = out.display()
    )
}

async fn submit(client: &ClusterClient, spec: String, key: &str) -> String {
    let request = pb::SubmitJobRequest { spec: spec.into_bytes(), idempotency_key: key.into() };
    client
        .call(|mut c| {
            let request = request.clone();
            async move { c.submit_job(request).await }
        })
        .await
        .unwrap()
        .job_id
}

async fn job(client: &ClusterClient, job_id: &str) -> pb::Job {
    let request = pb::GetJobRequest { job_id: job_id.into(), consistency: 0 };
    let reply = client
        .call(|mut c| {
            let request = request.clone();
            async move { c.get_job(request).await }
        })
        .await
        .unwrap();
    reply.job.unwrap()
}

/// Polls the job until `done` holds, recording every completed checkpoint id seen; panics after `timeout`.
async fn wait_job(
    client: &ClusterClient,
    job_id: &str,
    seen: &mut Vec<u64>,
    timeout: Duration,
    what: &str,
    done: impl Fn(&pb::Job) -> bool,
) -> pb::Job {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let j = job(client, job_id).await;
        if let Some(latest) = j.checkpoints.last() {
            if seen.last() != Some(&latest.id) {
                seen.push(latest.id);
            }
        }
        if done(&j) {
            return j;
        }
        assert!(tokio::time::Instant::now() < deadline, "job {job_id} not {what} within {timeout:?}: {j:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn latest_checkpoint(j: &pb::Job) -> u64 {
    j.checkpoints.last().map_or(0, |c| c.id)
}

/// The committed output: for each key, every count emitted.
fn committed_counts(dir: &Path) -> BTreeMap<i64, Vec<i64>> {
    let mut counts: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return counts };
    for entry in entries {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("part-") {
            continue;
        }
        for line in std::fs::read_to_string(entry.path()).unwrap().lines().filter(|l| !l.trim().is_empty()) {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            let key = record["key"].as_i64().unwrap_or_else(|| panic!("no key in {line}"));
            let count = record["count"].as_i64().unwrap_or_else(|| panic!("no count in {line}"));
            counts.entry(key).or_default().push(count);
        }
    }
    counts
}

/// Asserts every key's counts are exactly `first..=last` once each; returns each key's last count.
fn assert_exactly_once(counts: &BTreeMap<i64, Vec<i64>>, first: &BTreeMap<i64, i64>) -> BTreeMap<i64, i64> {
    let mut last = BTreeMap::new();
    for (key, values) in counts {
        let mut sorted = values.clone();
        sorted.sort_unstable();
        let unique: BTreeSet<i64> = sorted.iter().copied().collect();
        assert_eq!(unique.len(), sorted.len(), "key {key}: duplicate counts in {sorted:?}");
        let start = first.get(key).copied().unwrap_or(1);
        let end = start + sorted.len() as i64 - 1;
        assert_eq!(sorted, (start..=end).collect::<Vec<_>>(), "key {key}: counts have a gap");
        last.insert(*key, end);
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_survives_leader_kills_without_restarting_and_stops_with_an_exactly_once_savepoint() {
    let mut cluster = TestCluster::start(3, &["--tm-heartbeat-timeout-ms", "2000"]);
    cluster.spawn_tm(1, 2);
    cluster.spawn_tm(2, 2);
    let client = cluster.client().with_request_timeout(Duration::from_secs(10));
    cluster.wait_leader(Duration::from_secs(20)).await;
    let out = cluster.dir.path().join("out");
    let job_id = submit(&client, counting_job("counts", &out, None), "counts-1").await;
    let mut seen = Vec::new();

    let running = wait_job(&client, &job_id, &mut seen, Duration::from_secs(30), "checkpointing", |j| {
        j.status == "RUNNING" && latest_checkpoint(j) > 0
    })
    .await;
    let attempt = running.attempt;

    for kill in 1..=3 {
        let leader = cluster.wait_leader(Duration::from_secs(20)).await;
        let before = latest_checkpoint(&job(&client, &job_id).await);
        cluster.kill(leader);
        let after = wait_job(&client, &job_id, &mut seen, Duration::from_secs(20), "checkpointing again", |j| {
            latest_checkpoint(j) > before
        })
        .await;
        assert_eq!(after.status, "RUNNING", "kill {kill}");
        assert_eq!(after.attempt, attempt, "kill {kill}: the leader's death redeployed the job");
        assert_eq!(after.restarts, 0, "kill {kill}: the leader's death restarted the job");
        cluster.spawn(leader);
    }

    let slot_tm = running.slots[0].split('#').next().unwrap().to_string();
    let victim = cluster.tm_number(&slot_tm).expect("the job runs on a known TaskManager");
    let before = latest_checkpoint(&job(&client, &job_id).await);
    cluster.kill_tm(victim);
    let restarted = wait_job(&client, &job_id, &mut seen, Duration::from_secs(30), "restarted elsewhere", |j| {
        j.status == "RUNNING" && j.attempt > attempt && latest_checkpoint(j) > before
    })
    .await;
    assert_eq!(restarted.restarts, 1, "only the TaskManager's death restarts tasks");
    assert!(!restarted.slots.iter().any(|s| s.starts_with(&format!("{slot_tm}#"))), "{:?}", restarted.slots);

    let request = pb::TriggerSavepointRequest {
        job_id: job_id.clone(),
        target_dir: cluster.dir.path().join("savepoints").to_string_lossy().into_owned(),
        terminate: true,
        request_id: "stop-1".into(),
    };
    client
        .call(|mut c| {
            let request = request.clone();
            async move { c.trigger_savepoint(request).await }
        })
        .await
        .unwrap();
    let stopped =
        wait_job(&client, &job_id, &mut seen, Duration::from_secs(30), "finished", |j| j.status == "FINISHED").await;
    let savepoint = stopped.savepoints.last().expect("a savepoint").path.clone();
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "checkpoint ids not strictly increasing: {seen:?}");

    let counts = committed_counts(&out);
    assert_eq!(counts.len(), 5, "every key has output: {counts:?}");
    let last = assert_exactly_once(&counts, &BTreeMap::new());
    assert!(last.values().all(|n| *n > 10), "the job made progress: {last:?}");
    eprintln!("checkpoints seen: {seen:?}; final count per key: {last:?}; savepoint {savepoint}");

    // A new job restored from the savepoint continues each key's count where the old one stopped.
    let out2 = cluster.dir.path().join("out2");
    let restored = submit(&client, counting_job("counts-restored", &out2, Some(&savepoint)), "counts-2").await;
    let mut seen2 = Vec::new();
    wait_job(&client, &restored, &mut seen2, Duration::from_secs(30), "checkpointing", |j| {
        j.status == "RUNNING" && latest_checkpoint(j) > 1
    })
    .await;
    let first: BTreeMap<i64, i64> = last.iter().map(|(k, n)| (*k, n + 1)).collect();
    let counts2 = committed_counts(&out2);
    assert!(!counts2.is_empty(), "the restored job committed output");
    let last2 = assert_exactly_once(&counts2, &first);
    eprintln!("restored job's count per key: {last2:?}");

    for number in [1, 2] {
        assert!(!cluster.tm_log(number).contains("panicked"), "TaskManager {number} panicked");
    }
    for id in 1..=3 {
        assert!(!cluster.log(id).contains("panicked"), "replica {id} panicked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_without_enough_slots_waits_visibly_and_runs_once_a_task_manager_joins() {
    let mut cluster = TestCluster::start(3, &[]);
    let client = cluster.client().with_request_timeout(Duration::from_secs(10));
    cluster.wait_leader(Duration::from_secs(20)).await;
    let out = cluster.dir.path().join("out");
    let job_id = submit(&client, counting_job("waits", &out, None), "waits-1").await;
    let mut seen = Vec::new();
    let waiting = wait_job(&client, &job_id, &mut seen, Duration::from_secs(10), "waiting for slots", |j| {
        !j.exceptions.is_empty()
    })
    .await;
    assert_eq!(waiting.status, "CREATED");
    assert!(waiting.exceptions[0].error.contains("waiting for slots"), "{:?}", waiting.exceptions);
    cluster.spawn_tm(1, 2);
    wait_job(&client, &job_id, &mut seen, Duration::from_secs(30), "running", |j| j.status == "RUNNING").await;

    let cancel = pb::CancelJobRequest { job_id: job_id.clone() };
    client
        .call(|mut c| {
            let cancel = cancel.clone();
            async move { c.cancel_job(cancel).await }
        })
        .await
        .unwrap();
    wait_job(&client, &job_id, &mut seen, Duration::from_secs(20), "cancelled", |j| j.status == "CANCELED").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_restored_from_a_missing_savepoint_fails_with_the_reason() {
    let cluster = TestCluster::start(3, &[]);
    let client = cluster.client().with_request_timeout(Duration::from_secs(10));
    cluster.wait_leader(Duration::from_secs(20)).await;
    let missing = cluster.dir.path().join("no-such-savepoint");
    let spec = counting_job("restore", &cluster.dir.path().join("out"), Some(missing.to_str().unwrap()));
    let job_id = submit(&client, spec, "restore-1").await;
    let mut seen = Vec::new();
    let failed =
        wait_job(&client, &job_id, &mut seen, Duration::from_secs(10), "failed", |j| j.status == "FAILED").await;
    assert!(failed.error.contains("no-such-savepoint") && failed.error.contains("_metadata"), "{}", failed.error);
    assert_eq!(failed.restarts, 0, "a savepoint that does not exist is not retried");
}
