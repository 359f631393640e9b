//! The REST API (Flink's paths and field names) on real replicas: any replica serves it, writes are forwarded,
//! errors come in Flink's `{"errors": [...]}` shape with a status a client can act on; a request's id follows it
//! from the replica that received it to the leader.

mod common;

use std::time::Duration;

use common::{http, http_exchange, http_text, minimal_spec, TestCluster};
use serde_json::Value;

const JOB: &str = r#"
name: rest-counts
vertices:
  - id: source
    operators: [{sequence: {rate: 100}}, {map: {fields: {key: "seq % 3"}}}]
  - id: count
    operators: [{key_by: {field: key}}, {count: {}}, {blackhole: {}}]
edges: [{from: source, to: count}]
checkpoints: {interval: 500ms}
"#;

async fn wait_for(addr: &str, path: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = http(addr, "GET", path, None).await;
        if status == 200 && done(&body) {
            return body;
        }
        assert!(tokio::time::Instant::now() < deadline, "{path}: not {what} within 30 s: {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flink_rest_paths_work_on_every_replica() {
    let mut cluster = TestCluster::start_with_rest(3, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(20)).await;
    cluster.spawn_tm(1, 2);
    let follower = cluster.follower_of(leader);
    let other = *cluster.live().iter().find(|id| **id != leader && **id != follower).unwrap();
    let rest = |id: u64| cluster.replicas.iter().find(|r| r.id == id).unwrap().http_addr.clone().unwrap();
    let (via_follower, via_other) = (rest(follower), rest(other));

    // Submit through a follower; read through another replica at once.
    let (status, body) = http(&via_follower, "POST", "/jobs", Some(JOB)).await;
    assert_eq!(status, 202, "{body}");
    let job_id = body["jobid"].as_str().unwrap().to_string();
    let (status, jobs) = http(&via_other, "GET", "/jobs", None).await;
    assert_eq!(status, 200);
    assert!(jobs["jobs"].as_array().unwrap().iter().any(|j| j["id"] == job_id.as_str()), "{jobs}");

    let details = wait_for(&via_other, &format!("/jobs/{job_id}"), "running", |j| j["state"] == "RUNNING").await;
    assert_eq!(details["name"], "rest-counts");
    assert_eq!(details["vertices"].as_array().unwrap().len(), 2);
    assert!(details["timestamps"]["RUNNING"].as_u64().unwrap() >= details["timestamps"]["CREATED"].as_u64().unwrap());
    let overview = wait_for(&via_other, "/v1/jobs/overview", "listed", |o| o["jobs"].as_array().is_some()).await;
    assert_eq!(overview["jobs"][0]["state"], "RUNNING");
    assert_eq!(overview["jobs"][0]["tasks"]["total"], 2);
    let checkpoints = wait_for(&via_other, &format!("/jobs/{job_id}/checkpoints"), "checkpointing", |c| {
        c["counts"]["completed"].as_u64().unwrap_or(0) > 0
    })
    .await;
    let latest = checkpoints["latest"]["completed"]["id"].as_u64().unwrap();
    let (status, detail) = http(&via_other, "GET", &format!("/jobs/{job_id}/checkpoints/details/{latest}"), None).await;
    assert_eq!((status, detail["status"].as_str()), (200, Some("COMPLETED")), "{detail}");
    let (_, config) = http(&via_other, "GET", &format!("/jobs/{job_id}/checkpoints/config"), None).await;
    assert_eq!((config["mode"].as_str(), config["interval"].as_i64()), (Some("exactly_once"), Some(500)));
    let (_, status_only) = http(&via_other, "GET", &format!("/jobs/{job_id}/status"), None).await;
    assert_eq!(status_only["status"], "RUNNING");

    let (_, overview) = http(&via_follower, "GET", "/overview", None).await;
    assert_eq!((overview["taskmanagers"].as_u64(), overview["jobs-running"].as_u64()), (Some(1), Some(1)));
    assert_eq!((overview["slots-total"].as_u64(), overview["slots-available"].as_u64()), (Some(2), Some(1)));
    let (_, tms) = http(&via_follower, "GET", "/taskmanagers", None).await;
    assert_eq!(tms["taskmanagers"][0]["slotsNumber"], 2);
    let (_, cluster_view) = http(&via_follower, "GET", "/cluster", None).await;
    assert_eq!(cluster_view["leader"], leader);
    assert_eq!(cluster_view["replicas"].as_array().unwrap().len(), 3);

    // Prometheus metrics on every replica, read with a real text-format parser.
    let mut leaders = 0.0;
    for id in cluster.live() {
        // A follower may apply the latest entries a moment after the leader: wait until it shows the running job.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let text = loop {
            let (status, text) = http_text(&rest(id), "GET", "/metrics", None).await;
            assert_eq!(status, 200);
            let caught_up = text.contains("jm_jobs{replica=\"")
                && text
                    .lines()
                    .any(|l| l.starts_with("jm_jobs{") && l.contains("status=\"RUNNING\"") && l.ends_with(" 1"));
            if caught_up || tokio::time::Instant::now() > deadline {
                break text;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
        let value = |name: &str, label: Option<(&str, &str)>| {
            let sample = scrape
                .samples
                .iter()
                .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)));
            match sample.map(|s| &s.value) {
                Some(prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Counter(v)) => *v,
                other => panic!("{name}: {other:?} in\n{text}"),
            }
        };
        leaders += value("jm_raft_is_leader", None);
        assert_eq!(value("jm_jobs", Some(("status", "RUNNING"))), 1.0, "{text}");
        assert_eq!(value("jm_taskmanagers", None), 1.0);
        assert_eq!((value("jm_slots_total", None), value("jm_slots_free", None)), (2.0, 1.0));
        assert!(value("jm_raft_applied_index", None) > 0.0);
        assert!(value("jm_checkpoints_triggered_total", None) >= 1.0);
        let documented = scrape.docs.contains_key("jm_raft_term") && scrape.docs.contains_key("jm_jobs");
        assert!(documented, "every family has a HELP line");
    }
    assert_eq!(leaders, 1.0, "exactly one replica reports itself leader");
    // The shipped Grafana dashboard only queries metrics that exist, on the replicas or on the TaskManagers.
    let (_, mut exposition) = http_text(&via_other, "GET", "/metrics", None).await;
    let (status, tm_exposition) = http_text(&cluster.task_managers[0].http, "GET", "/metrics", None).await;
    assert_eq!(status, 200, "{tm_exposition}");
    exposition.push_str(&tm_exposition);
    let grafana =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/grafana/jobmanager.json")).unwrap();
    for (start, _) in grafana.match_indices("jm_") {
        let series: String = grafana[start..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        let family = ["_bucket", "_sum", "_count"].iter().find_map(|suffix| series.strip_suffix(suffix));
        let known = |name: &str| exposition.contains(&format!("# TYPE {name} "));
        assert!(known(&series) || family.is_some_and(known), "the Grafana dashboard queries unknown {series}");
    }

    // A savepoint, then stop-with-savepoint, through Flink's asynchronous operations.
    let target = cluster.dir.path().join("savepoints");
    let body = format!(r#"{{"target-directory": "{}", "cancel-job": false}}"#, target.display());
    let (status, trigger) = http(&via_follower, "POST", &format!("/jobs/{job_id}/savepoints"), Some(&body)).await;
    assert_eq!(status, 202, "{trigger}");
    let trigger_id = trigger["request-id"].as_str().unwrap().to_string();
    let path = format!("/jobs/{job_id}/savepoints/{trigger_id}");
    let done = wait_for(&via_other, &path, "completed", |s| s["status"]["id"] == "COMPLETED").await;
    let location = done["operation"]["location"].as_str().unwrap();
    assert!(std::path::Path::new(location).join("_metadata").exists(), "{done}");
    savepoint_disposal(&via_follower, &via_other, &job_id, location, &body).await;

    let (status, stop) = http(&via_other, "POST", &format!("/jobs/{job_id}/stop"), Some("{}")).await;
    assert_eq!(status, 202, "{stop}");
    wait_for(&via_follower, &format!("/jobs/{job_id}"), "finished", |j| j["state"] == "FINISHED").await;

    // Errors: Flink's shape, and a status that says what to do.
    let (status, error) = http(&via_follower, "PATCH", &format!("/jobs/{job_id}?mode=cancel"), None).await;
    assert_eq!(status, 409, "{error}");
    assert!(error["errors"][0].as_str().unwrap().contains("FINISHED"), "{error}");
    let (status, error) = http(&via_follower, "GET", "/jobs/0123456789abcdef0123456789abcdef", None).await;
    assert_eq!(status, 404, "{error}");
    let (status, error) = http(&via_follower, "GET", "/jobs/not-a-job", None).await;
    assert_eq!(status, 400, "{error}");
    assert!(error["errors"][0].as_str().unwrap().contains("32 lowercase hex"), "{error}");
    let (status, error) = http(&via_follower, "POST", "/jobs", Some("name: x\nvertices: []\n")).await;
    assert_eq!(status, 400, "{error}");
    assert!(error["errors"][0].as_str().unwrap().contains("vertices"), "{error}");
    let (status, error) = http(&via_follower, "GET", "/no/such/path", None).await;
    assert_eq!(status, 404);
    assert!(error["errors"].is_array(), "{error}");
    let (status, _) = http(&via_follower, "GET", "/v1/config", None).await;
    assert_eq!(status, 200);

    // Settings, Flink-style metrics, and an OpenAPI description that lists every path served here.
    let (_, settings) = http(&via_follower, "GET", "/jobmanager/config", None).await;
    let keys: Vec<&str> = settings.as_array().unwrap().iter().filter_map(|kv| kv["key"].as_str()).collect();
    assert!(keys.contains(&"state.checkpoints.dir") && keys.contains(&"raft.heartbeat-ms"), "{settings}");
    let (_, ids) = http(&via_follower, "GET", "/jobmanager/metrics", None).await;
    let term_id =
        ids.as_array().unwrap().iter().filter_map(|m| m["id"].as_str()).find(|id| id.starts_with("jm_raft_term"));
    let term_id = term_id.expect("jm_raft_term listed").to_string();
    let (_, values) = http(&via_follower, "GET", &format!("/jobmanager/metrics?get={term_id}"), None).await;
    assert!(values[0]["value"].as_str().unwrap().parse::<f64>().unwrap() >= 1.0, "{values}");
    let (_, openapi) = http(&via_follower, "GET", "/openapi.json", None).await;
    let documented = [
        "/overview",
        "/jobs/{jobid}",
        "/jobs/{jobid}/vertices/{vertexid}",
        "/jobs/{jobid}/savepoints/{triggerid}",
        "/cluster",
        "/metrics",
    ];
    let disposal = ["/savepoint-disposal", "/savepoint-disposal/{triggerid}"];
    for path in documented.into_iter().chain(disposal) {
        assert!(openapi["paths"].get(path).is_some(), "{path} missing from /openapi.json");
    }
}

/// Flink's savepoint disposal, with the job of `flink_rest_paths_work_on_every_replica` running and `savepoint` one of
/// its savepoints: a savepoint a running job restores from is refused, a path with nothing is unknown, and a savepoint
/// disposed of through a follower is deleted by the leader, with the status readable on every replica.
async fn savepoint_disposal(via_follower: &str, via_other: &str, job_id: &str, savepoint: &str, trigger: &str) {
    // A second job restoring from the savepoint: until it ends, the savepoint is not disposable.
    let restoring = format!("{JOB}savepoint: {{path: {savepoint}}}\n");
    let (status, body) = http(via_follower, "POST", "/jobs", Some(&restoring)).await;
    assert_eq!(status, 202, "{body}");
    let restoring_id = body["jobid"].as_str().unwrap().to_string();
    let dispose = |path: &str| format!(r#"{{"savepoint-path": "{path}"}}"#);
    let (status, error) = http(via_follower, "POST", "/savepoint-disposal", Some(&dispose(savepoint))).await;
    assert_eq!(status, 409, "{error}");
    assert!(error["errors"][0].as_str().unwrap().contains(&restoring_id), "{error}");
    assert!(std::path::Path::new(savepoint).join("_metadata").exists());
    let (status, _) = http(via_other, "PATCH", &format!("/jobs/{restoring_id}?mode=cancel"), None).await;
    assert_eq!(status, 202);
    wait_for(via_other, &format!("/jobs/{restoring_id}"), "cancelled", |j| j["state"] == "CANCELED").await;

    // Nothing there: 404 naming the path, in Flink's error shape.
    let missing = format!("{savepoint}-does-not-exist");
    let (status, error) = http(via_follower, "POST", "/v1/savepoint-disposal", Some(&dispose(&missing))).await;
    assert_eq!(status, 404, "{error}");
    assert!(error["errors"][0].as_str().unwrap().contains(&missing), "{error}");
    let (status, error) = http(via_follower, "GET", "/savepoint-disposal/0123456789abcdef", None).await;
    assert_eq!(status, 404, "{error}");

    // A fresh savepoint of the running job, disposed of through a follower: the leader deletes it.
    let (status, triggered) = http(via_other, "POST", &format!("/jobs/{job_id}/savepoints"), Some(trigger)).await;
    assert_eq!(status, 202, "{triggered}");
    let path = format!("/jobs/{job_id}/savepoints/{}", triggered["request-id"].as_str().unwrap());
    let done = wait_for(via_other, &path, "completed", |s| s["status"]["id"] == "COMPLETED").await;
    let second = done["operation"]["location"].as_str().unwrap().to_string();
    let (status, disposal) = http(via_follower, "POST", "/savepoint-disposal", Some(&dispose(&second))).await;
    assert_eq!(status, 200, "{disposal}");
    let trigger_id = disposal["request-id"].as_str().unwrap();
    let status_path = format!("/savepoint-disposal/{trigger_id}");
    let done = wait_for(via_follower, &status_path, "disposed", |s| s["status"]["id"] == "COMPLETED").await;
    assert_eq!(done["operation"], serde_json::json!({}), "{done}");
    assert!(!std::path::Path::new(&second).exists(), "{second} still exists after {done}");
    let (status, seen) = http(via_other, "GET", &format!("/v1{status_path}"), None).await;
    assert_eq!((status, &seen), (200, &done));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_through_rest_stops_a_running_job() {
    let mut cluster = TestCluster::start_with_rest(3, &[]);
    cluster.wait_leader(Duration::from_secs(20)).await;
    cluster.spawn_tm(1, 2);
    let addr = cluster.replicas[0].http_addr.clone().unwrap();
    let (_, body) = http(&addr, "POST", "/jobs", Some(JOB)).await;
    let job_id = body["jobid"].as_str().unwrap().to_string();
    wait_for(&addr, &format!("/jobs/{job_id}"), "running", |j| j["state"] == "RUNNING").await;
    let (status, _) = http(&addr, "PATCH", &format!("/jobs/{job_id}?mode=cancel"), None).await;
    assert_eq!(status, 202);
    let ended = wait_for(&addr, &format!("/jobs/{job_id}"), "cancelled", |j| j["state"] == "CANCELED").await;
    assert!(ended["end-time"].as_i64().unwrap() >= ended["start-time"].as_i64().unwrap());
    let (_, exceptions) = http(&addr, "GET", &format!("/jobs/{job_id}/exceptions"), None).await;
    assert!(exceptions["exceptionHistory"]["entries"].is_array(), "{exceptions}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_an_election_rest_requests_wait_for_the_new_leader_instead_of_failing() {
    let mut cluster = TestCluster::start_with_rest(3, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(20)).await;
    let survivor = cluster.follower_of(leader);
    let addr = cluster.replicas.iter().find(|r| r.id == survivor).unwrap().http_addr.clone().unwrap();
    let (status, body) = http(&addr, "POST", "/jobs", Some(JOB)).await;
    assert_eq!(status, 202, "{body}");
    let job_id = body["jobid"].as_str().unwrap().to_string();

    cluster.kill(leader);
    // Sent at once, while the survivors have no leader: each waits for the election, then answers.
    let started = std::time::Instant::now();
    let (status, job) = http(&addr, "GET", &format!("/jobs/{job_id}"), None).await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["name"], "rest-counts");
    let (status, body) = http(&addr, "POST", "/jobs", Some(JOB)).await;
    assert_eq!(status, 202, "{body}");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
}

/// The value of the first sample of `name` whose labels include `labels`, from a Prometheus exposition parsed
/// with a real text-format parser. Histograms are found by their `_count` (parsed into the histogram's count).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let found = scrape.samples.iter().find(|s| {
        let base = name.strip_suffix("_count").unwrap_or(name);
        (s.metric == name || s.metric == base) && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v))
    })?;
    match &found.value {
        prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Untyped(v) => Some(*v),
        prometheus_parse::Value::Histogram(buckets) => buckets.last().map(|b| b.count),
        prometheus_parse::Value::Summary(_) => None,
    }
}

/// The JSON log lines of `log` that ran in a span (the innermost or an enclosing one) with `request_id == id`.
fn lines_of_request(log: &str, id: &str) -> Vec<Value> {
    let in_span = |line: &Value| {
        line["span"]["request_id"] == id
            || line["spans"].as_array().is_some_and(|spans| spans.iter().any(|s| s["request_id"] == id))
    };
    log.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter(in_span).collect()
}

/// Waits until replica `id`'s log has a line of request `request` that `wanted` accepts.
async fn wait_for_log_line(cluster: &TestCluster, id: u64, request: &str, wanted: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(line) = lines_of_request(&cluster.log(id), request).into_iter().find(|l| wanted(l)) {
            return line;
        }
        let log = cluster.log(id);
        assert!(
            tokio::time::Instant::now() < deadline,
            "no such line of request {request} in replica {id}'s log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_subtask_figures_reach_every_replica_and_survive_a_failover() {
    const PARALLEL: &str = r#"
name: live-figures
parallelism: 2
vertices:
  - id: source
    operators: [{sequence: {rate: 200}}, {map: {fields: {key: "seq % 5"}}}]
  - id: count
    operators: [{key_by: {field: key}}, {count: {}}, {blackhole: {}}]
edges: [{from: source, to: count}]
checkpoints: {interval: 300ms}
"#;
    let mut cluster = TestCluster::start_with_rest(3, &["--zone", "zone-a"]);
    let leader = cluster.wait_leader(Duration::from_secs(20)).await;
    cluster.spawn_tm(1, 4);
    let rest = |c: &TestCluster, id: u64| c.replicas.iter().find(|r| r.id == id).unwrap().http_addr.clone().unwrap();
    let follower = cluster.follower_of(leader);
    let via_follower = rest(&cluster, follower);
    let (status, body) = http(&via_follower, "POST", "/jobs", Some(PARALLEL)).await;
    assert_eq!(status, 202, "{body}");
    let job_id = body["jobid"].as_str().unwrap().to_string();

    // A follower serves the leader's live view: every subtask running, on the TaskManager, with records and rates.
    let vertex_path = format!("/jobs/{job_id}/vertices/source");
    let running_with_rates = |v: &Value| {
        v["subtasks"].as_array().is_some_and(|subtasks| {
            subtasks.len() == 2
                && subtasks.iter().all(|s| {
                    s["status"] == "RUNNING"
                        && s["metrics"]["write-records"].as_u64().unwrap_or(0) > 0
                        && s["records-out-per-second"].as_f64().unwrap_or(0.0) > 0.0
                })
        })
    };
    let vertex = wait_for(&via_follower, &vertex_path, "running with rates", running_with_rates).await;
    let tm_id = cluster.task_managers[0].tm_id().unwrap();
    assert_eq!(vertex["status"], "RUNNING", "{vertex}");
    assert_eq!(vertex["subtasks"][0]["taskmanager-id"], tm_id.as_str(), "{vertex}");
    assert_eq!(vertex["subtasks"][0]["endpoint"], cluster.task_managers[0].listen.as_str(), "{vertex}");
    let (_, details) = http(&via_follower, "GET", &format!("/jobs/{job_id}"), None).await;
    let count_vertex = details["vertices"].as_array().unwrap().iter().find(|v| v["id"] == "count").unwrap().clone();
    assert_eq!(count_vertex["tasks"]["RUNNING"], 2, "{details}");
    assert!(count_vertex["metrics"]["read-records"].as_u64().unwrap() > 0, "{details}");
    let (status, error) = http(&via_follower, "GET", &format!("/jobs/{job_id}/vertices/nope"), None).await;
    assert_eq!(status, 404, "{error}");
    assert!(error["errors"][0].as_str().unwrap().contains("nope"), "{error}");

    // The TaskManager exports the same figures per subtask, and the leader its measured latencies.
    let (status, tm_metrics) = http_text(&cluster.task_managers[0].http, "GET", "/metrics", None).await;
    assert_eq!(status, 200);
    let records = [("job_id", job_id.as_str()), ("vertex", "source"), ("subtask", "1")];
    assert!(sample(&tm_metrics, "jm_subtask_records_out_total", &records).unwrap() > 0.0, "{tm_metrics}");
    assert!(sample(&tm_metrics, "jm_subtask_busy_seconds_total", &records).is_some(), "{tm_metrics}");
    assert!(sample(&tm_metrics, "jm_taskmanager_heartbeats_total", &[]).unwrap() > 0.0, "{tm_metrics}");
    assert_eq!(sample(&tm_metrics, "jm_taskmanager_subtasks", &[("state", "RUNNING")]), Some(4.0), "{tm_metrics}");
    let (_, leader_metrics) = http_text(&rest(&cluster, leader), "GET", "/metrics", None).await;
    assert!(sample(&leader_metrics, "jm_raft_proposal_duration_seconds_count", &[]).unwrap() > 0.0);
    assert!(sample(&leader_metrics, "jm_checkpoint_duration_seconds_count", &[]).unwrap() > 0.0);
    assert!(leader_metrics.contains("jm_checkpoint_size_bytes_bucket{replica="), "{leader_metrics}");

    // After the leader's SIGKILL, the new leader rebuilds the view from heartbeats; the records keep growing.
    let before = vertex["subtasks"][0]["metrics"]["write-records"].as_u64().unwrap();
    cluster.kill(leader);
    let survivor = rest(&cluster, cluster.live()[0]);
    let after = wait_for(&survivor, &vertex_path, "running after failover", |v| {
        running_with_rates(v) && v["subtasks"][0]["metrics"]["write-records"].as_u64().unwrap_or(0) > before
    })
    .await;
    assert_eq!(after["subtasks"][0]["attempt"], vertex["subtasks"][0]["attempt"], "no restart: {after}");

    // The failover is in the replicated history of leader changes, on every replica, with the time it took.
    let new_leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let view = wait_for(&survivor, "/cluster", "the failover recorded", |c| {
        c["leader_changes"][0]["leader"] == new_leader && c["leader_changes"][1]["leader"] == leader
    })
    .await;
    let change = &view["leader_changes"][0];
    assert_eq!(change["previous"], leader, "{view}");
    assert!(change["term"].as_u64() > view["leader_changes"][1]["term"].as_u64(), "{view}");
    let leaderless = change["leaderless_ms"].as_u64().expect("the new leader had heard from the old one");
    assert!(leaderless > 0 && leaderless < 10_000, "{view}");
    let reachable: Vec<&Value> =
        view["replicas"].as_array().unwrap().iter().filter(|r| r["reachable"] == true).collect();
    assert_eq!(reachable.len(), 2, "{view}");
    assert!(reachable.iter().all(|r| r["zone"] == "zone-a"), "{view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_follows_a_write_from_a_follower_to_the_leader() {
    let cluster = TestCluster::start_with_rest(3, &["--log-format", "json"]);
    let leader = cluster.wait_leader(Duration::from_secs(20)).await;
    let follower = cluster.follower_of(leader);
    let addr = cluster.replicas.iter().find(|r| r.id == follower).unwrap().http_addr.clone().unwrap();

    // REST: the client's id is echoed, and both replicas log the write under it.
    let spec = minimal_spec("traced");
    let reply = http_exchange(&addr, "POST", "/jobs", &[("X-Request-Id", "trace-me-42")], Some(&spec)).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(reply.header("x-request-id"), Some("trace-me-42"));
    let line =
        wait_for_log_line(&cluster, follower, "trace-me-42", |l| l["fields"]["message"] == "request finished").await;
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["fields"]["status"], 202, "{line}");
    assert!(line["fields"]["latency_ms"].is_number(), "{line}");
    assert_eq!((&line["span"]["method"], &line["span"]["path"]), (&"POST".into(), &"/jobs".into()), "{line}");
    assert_eq!(line["span"]["node_id"], follower, "{line}");
    let line = wait_for_log_line(&cluster, leader, "trace-me-42", |l| l["fields"]["command"] == "submit_job").await;
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["fields"]["message"], "served a forwarded write", "{line}");
    assert_eq!(line["span"]["node_id"], leader, "{line}");

    // An unusable id (a space, too long) is replaced by a fresh one, which is echoed; so is a missing one.
    for header in [vec![("x-request-id", "two words")], vec![("x-request-id", &*"x".repeat(65))], vec![]] {
        let reply = http_exchange(&addr, "GET", "/jobs", &header, None).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let id = reply.header("x-request-id").unwrap_or_default();
        assert!(id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{header:?} -> {id:?}");
    }

    // gRPC: the same through the client API's `x-request-id` metadata.
    let mut client = cluster.connect(follower).await;
    let mut request = tonic::Request::new(jobmanager::api::grpc::pb::SubmitJobRequest {
        spec: spec.into_bytes(),
        idempotency_key: "traced-over-grpc".into(),
    });
    request.metadata_mut().insert("x-request-id", "grpc-trace-7".parse().unwrap());
    let reply = client.submit_job(request).await.unwrap();
    assert_eq!(reply.metadata().get("x-request-id").unwrap(), "grpc-trace-7");
    let line =
        wait_for_log_line(&cluster, follower, "grpc-trace-7", |l| l["fields"]["message"] == "request finished").await;
    assert_eq!((&line["span"]["rpc"], &line["fields"]["code"]), (&"SubmitJob".into(), &"OK".into()), "{line}");
    wait_for_log_line(&cluster, leader, "grpc-trace-7", |l| l["fields"]["command"] == "submit_job").await;
}
