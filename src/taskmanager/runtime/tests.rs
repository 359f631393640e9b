//! End-to-end tests of deployments: real subtasks, channels, state files and part files in temporary directories.
//!
//! The checkpoint coordinator is played by [`checkpoint`]: trigger, wait for an ack from every subtask, notify
//! completion. Exactly-once is checked on the committed part files only, after a cancel and a restore.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

use super::*;

/// Events received from a deployment, collected by a background task.
#[derive(Debug, Clone, Default)]
struct EventLog(Arc<Mutex<Vec<TaskEvent>>>);

impl EventLog {
    /// A copy of the events so far.
    fn all(&self) -> Vec<TaskEvent> {
        self.0.lock().unwrap().clone()
    }

    /// Acks of checkpoint `id`.
    fn acks(&self, id: u64) -> usize {
        self.all()
            .iter()
            .filter(|e| matches!(e, TaskEvent::CheckpointAcked { checkpoint_id, .. } if *checkpoint_id == id))
            .count()
    }

    /// Declines of checkpoint `id`.
    fn declines(&self, id: u64) -> Vec<String> {
        self.all()
            .into_iter()
            .filter_map(|e| match e {
                TaskEvent::CheckpointDeclined { checkpoint_id, reason, .. } if checkpoint_id == id => Some(reason),
                _ => None,
            })
            .collect()
    }

    /// The states each subtask went through, by (vertex, subtask).
    fn transitions(&self) -> BTreeMap<(String, u32), Vec<TaskState>> {
        let mut out: BTreeMap<(String, u32), Vec<TaskState>> = BTreeMap::new();
        for e in self.all() {
            if let TaskEvent::StateChanged { vertex, subtask, state, .. } = e {
                out.entry((vertex, subtask)).or_default().push(state);
            }
        }
        out
    }

    /// Errors of FAILED subtasks.
    fn failures(&self) -> Vec<String> {
        self.all()
            .into_iter()
            .filter_map(|e| match e {
                TaskEvent::StateChanged { state: TaskState::Failed, error, .. } => error,
                _ => None,
            })
            .collect()
    }
}

/// Parses a test spec written in YAML. Goes through JSON, where operators are single-key objects whatever YAML
/// dialect the spec parser speaks.
fn graph(yaml: &str) -> Arc<JobGraph> {
    let value: Value = serde_norway::from_str(yaml).expect("test spec is YAML");
    let json = serde_json::to_vec(&value).expect("JSON");
    Arc::new(crate::jobgraph::parse(&json).expect("test spec parses"))
}

/// Starts a deployment of every vertex of `graph` with an event collector.
async fn start(
    graph: &Arc<JobGraph>,
    attempt: u32,
    restore: Option<PathBuf>,
    checkpoint_dir: &Path,
) -> Result<(Deployment, EventLog), RuntimeError> {
    let (tx, mut rx) = mpsc::channel(64);
    let log = EventLog::default();
    let sink = log.clone();
    tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            sink.0.lock().unwrap().push(event);
        }
    });
    let spec = DeploymentSpec {
        job_id: "job".into(),
        attempt,
        graph: graph.clone(),
        vertices: (0..graph.vertices.len()).collect(),
        restore,
        checkpoint_dir: checkpoint_dir.to_path_buf(),
    };
    Ok((Deployment::start(spec, tx).await?, log))
}

/// Polls `condition` every 2 ms for up to 5 s.
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits until the deployment is terminal (at most 5 s).
async fn wait_terminal(d: &Deployment) {
    tokio::time::timeout(Duration::from_secs(5), d.wait_terminal()).await.expect("deployment did not end");
}

/// Plays the checkpoint coordinator for one barrier: trigger, wait for every subtask's ack, and (if `complete`)
/// notify completion.
async fn checkpoint(d: &Deployment, log: &EventLog, id: u64, kind: BarrierKind, complete: bool) {
    d.trigger_checkpoint(Barrier { checkpoint_id: id, timestamp_ms: 0, kind }).expect("trigger");
    let total = d.status().len();
    wait_until(&format!("acks of checkpoint {id}"), || log.acks(id) >= total || !log.declines(id).is_empty()).await;
    assert_eq!(log.declines(id), Vec::<String>::new());
    if complete {
        d.notify_checkpoint_complete(id);
    }
}

/// Records until the sum of `records_out` of `vertex` reaches `n`.
async fn wait_records_out(d: &Deployment, vertex: &str, n: u64) {
    wait_until(&format!("{n} records out of {vertex}"), || {
        d.status().iter().filter(|s| s.vertex == vertex).map(|s| s.records_out).sum::<u64>() >= n
    })
    .await;
}

/// Every record in the committed part files of `dir`.
fn committed(dir: &Path) -> Vec<Record> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_str().unwrap().starts_with("part-") {
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                out.push(serde_json::from_str(line).unwrap_or_else(|e| panic!("{}: {line}: {e}", path.display())));
            }
        }
    }
    out
}

/// Names of in-progress files left in `dir`.
fn inprogress(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".inprogress"))
        .collect()
}

/// The `field` of every record as u64, sorted.
fn sorted_u64(records: &[Record], field: &str) -> Vec<u64> {
    let mut v: Vec<u64> = records.iter().map(|r| r[field].as_u64().unwrap()).collect();
    v.sort_unstable();
    v
}

/// Asserts that the per-key counts are exactly 1..=m_k for every key and add up to `n`.
fn assert_counts_exactly_once(records: &[Record], n: u64) {
    let mut by_key: BTreeMap<i64, Vec<u64>> = BTreeMap::new();
    for r in records {
        by_key.entry(r["key"].as_i64().unwrap()).or_default().push(r["count"].as_u64().unwrap());
    }
    let mut total = 0;
    for (key, mut counts) in by_key {
        counts.sort_unstable();
        let m = counts.len() as u64;
        assert_eq!(counts, (1..=m).collect::<Vec<_>>(), "counts of key {key} have a gap or a duplicate");
        total += m;
    }
    assert_eq!(total, n);
}

/// The count job: sequence → map key → [hash] key_by → count → file.
fn count_job(out: &Path, n: u64, rate: u32, parallelism: u32) -> String {
    format!(
        r#"
name: count
parallelism: {parallelism}
max_parallelism: 16
vertices:
  - id: src
    operators:
      - sequence: {{from: 0, to: {n}, rate: {rate}}}
      - map: {{fields: {{key: "seq % 7"}}}}
  - id: count
    operators:
      - key_by: {{field: key}}
      - count: {{}}
      - file: {{path: "{}"}}
edges:
  - {{from: src, to: count, partitioning: hash}}
"#,
        out.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_counts_are_exactly_once_across_cancel_and_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, chk) = (tmp.path().join("out"), tmp.path().join("chk"));
    // 1 s of input: attempt 1 is cancelled long before the end, even on a loaded machine.
    let n = 4000;
    let g = graph(&count_job(&out, n, 4000, 2));
    let (d, log) = start(&g, 1, None, &chk).await.unwrap();
    wait_records_out(&d, "count", 300).await;
    checkpoint(&d, &log, 1, BarrierKind::Checkpoint, true).await;
    wait_records_out(&d, "count", 800).await;
    checkpoint(&d, &log, 2, BarrierKind::Checkpoint, true).await;
    wait_records_out(&d, "count", 1200).await;
    // Checkpoint 3 is acknowledged but never completes: its pending files must not be committed.
    checkpoint(&d, &log, 3, BarrierKind::Checkpoint, false).await;
    wait_records_out(&d, "count", 1400).await;
    d.cancel();
    wait_terminal(&d).await;
    assert!(d.status().iter().all(|s| s.state == TaskState::Canceled), "{:?}", d.status());
    assert!(!inprogress(&out).is_empty(), "attempt 1 should leave uncommitted output behind");
    let committed_before = committed(&out).len();
    assert!(committed_before > 0 && committed_before < 1400);

    let (d2, log2) = start(&g, 2, Some(chk.join("chk-2")), &chk).await.unwrap();
    wait_terminal(&d2).await;
    assert!(d2.status().iter().all(|s| s.state == TaskState::Finished), "{:?} {:?}", d2.status(), log2.failures());
    assert_counts_exactly_once(&committed(&out), n);
    assert_eq!(inprogress(&out), Vec::<String>::new());
    for states in log2.transitions().values() {
        let expected = [TaskState::Deploying, TaskState::Initializing, TaskState::Running, TaskState::Finished];
        assert_eq!(states, &expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_exactly_once_through_a_rebalance_and_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, chk) = (tmp.path().join("out"), tmp.path().join("chk"));
    let n = 3000;
    let yaml = format!(
        r#"
name: seq
vertices:
  - id: src
    parallelism: 2
    operators:
      - sequence: {{to: {n}, rate: 3000}}
      - map: {{fields: {{double: "seq * 2"}}}}
  - id: sink
    parallelism: 3
    operators:
      - file: {{path: "{}"}}
edges:
  - {{from: src, to: sink, partitioning: rebalance}}
"#,
        out.display()
    );
    let g = graph(&yaml);
    let (d, log) = start(&g, 1, None, &chk).await.unwrap();
    wait_records_out(&d, "sink", 500).await;
    checkpoint(&d, &log, 1, BarrierKind::Checkpoint, true).await;
    wait_records_out(&d, "sink", 1000).await;
    checkpoint(&d, &log, 2, BarrierKind::Checkpoint, false).await;
    wait_records_out(&d, "sink", 1200).await;
    d.cancel();
    wait_terminal(&d).await;

    let (d2, log2) = start(&g, 2, Some(chk.join("chk-2")), &chk).await.unwrap();
    wait_terminal(&d2).await;
    assert_eq!(log2.failures(), Vec::<String>::new());
    let records = committed(&out);
    assert_eq!(sorted_u64(&records, "seq"), (0..n).collect::<Vec<_>>());
    assert!(records.iter().all(|r| r["double"].as_u64() == r["seq"].as_u64().map(|s| s * 2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_state_restores_at_a_different_parallelism() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, chk) = (tmp.path().join("out"), tmp.path().join("chk"));
    let n = 3000;
    let (d, log) = start(&graph(&count_job(&out, n, 3000, 2)), 1, None, &chk).await.unwrap();
    wait_records_out(&d, "count", 700).await;
    checkpoint(&d, &log, 1, BarrierKind::Checkpoint, true).await;
    wait_records_out(&d, "count", 1000).await;
    d.cancel();
    wait_terminal(&d).await;

    // Up to 3 subtasks: key groups are redistributed, the sequence re-split, the sink's pending files inherited.
    let (d2, log2) = start(&graph(&count_job(&out, n, 3000, 3)), 2, Some(chk.join("chk-1")), &chk).await.unwrap();
    assert_eq!(d2.status().len(), 6);
    wait_records_out(&d2, "count", 500).await;
    checkpoint(&d2, &log2, 2, BarrierKind::Checkpoint, true).await;
    d2.cancel();
    wait_terminal(&d2).await;

    // And down to 1.
    let (d3, log3) = start(&graph(&count_job(&out, n, 3000, 1)), 3, Some(chk.join("chk-2")), &chk).await.unwrap();
    wait_terminal(&d3).await;
    assert_eq!(log3.failures(), Vec::<String>::new());
    assert_counts_exactly_once(&committed(&out), n);
    assert_eq!(inprogress(&out), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barriers_align_across_a_union_of_two_sources() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, chk) = (tmp.path().join("out"), tmp.path().join("chk"));
    let yaml = format!(
        r#"
name: union
vertices:
  - id: fast
    parallelism: 1
    operators:
      - sequence: {{from: 0, to: 2000, rate: 8000}}
  - id: slow
    parallelism: 2
    operators:
      - sequence: {{from: 2000, to: 3000, rate: 2000}}
  - id: merge
    parallelism: 2
    operators:
      - map: {{fields: {{seen: "true"}}}}
      - file: {{path: "{}"}}
edges:
  - {{from: fast, to: merge, partitioning: rebalance}}
  - {{from: slow, to: merge, partitioning: rebalance}}
"#,
        out.display()
    );
    let g = graph(&yaml);
    let (d, log) = start(&g, 1, None, &chk).await.unwrap();
    wait_records_out(&d, "merge", 400).await;
    checkpoint(&d, &log, 1, BarrierKind::Checkpoint, true).await;
    wait_records_out(&d, "merge", 900).await;
    checkpoint(&d, &log, 2, BarrierKind::Checkpoint, true).await;
    d.cancel();
    wait_terminal(&d).await;

    // The merge subtasks' state files record how far each input had come at the aligned barrier.
    let (d2, log2) = start(&g, 2, Some(chk.join("chk-2")), &chk).await.unwrap();
    wait_terminal(&d2).await;
    assert_eq!(log2.failures(), Vec::<String>::new());
    assert_eq!(sorted_u64(&committed(&out), "seq"), (0..3000).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_with_savepoint_finishes_and_a_restore_continues() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, chk, sp) = (tmp.path().join("out"), tmp.path().join("chk"), tmp.path().join("savepoint-1"));
    let job = |to: &str| {
        format!(
            r#"
name: stop
parallelism: 2
vertices:
  - id: src
    operators:
      - sequence: {{{to} rate: 4000}}
  - id: sink
    operators:
      - file: {{path: "{}"}}
edges:
  - {{from: src, to: sink, partitioning: forward}}
"#,
            out.display()
        )
    };
    // Unbounded: only the savepoint stops it.
    let (d, log) = start(&graph(&job("")), 1, None, &chk).await.unwrap();
    wait_records_out(&d, "sink", 300).await;
    let kind = BarrierKind::Savepoint { dir: sp.clone(), terminate: true };
    checkpoint(&d, &log, 1, kind, true).await;
    wait_terminal(&d).await;
    assert!(d.status().iter().all(|s| s.state == TaskState::Finished), "{:?}", d.status());
    assert!(d
        .trigger_checkpoint(Barrier { checkpoint_id: 2, timestamp_ms: 0, kind: BarrierKind::Checkpoint })
        .is_err());
    // Each source subtask stopped at its own position: its values (seq ≡ subtask mod 2) form a gapless prefix.
    let before = sorted_u64(&committed(&out), "seq");
    for subtask in 0..2 {
        let mine: Vec<u64> = before.iter().copied().filter(|s| s % 2 == subtask).collect();
        assert_eq!(mine, (0..mine.len() as u64).map(|i| 2 * i + subtask).collect::<Vec<_>>());
    }
    assert!(std::fs::metadata(sp.join("src-0.state")).is_ok());

    let n = before.last().copied().unwrap_or(0) + 500;
    let (d2, log2) = start(&graph(&job(&format!("to: {n},"))), 2, Some(sp), &chk).await.unwrap();
    wait_terminal(&d2).await;
    assert_eq!(log2.failures(), Vec::<String>::new());
    assert_eq!(sorted_u64(&committed(&out), "seq"), (0..n).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_stop_with_savepoint_resumes_the_sources() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, chk) = (tmp.path().join("out"), tmp.path().join("chk"));
    let (d, log) = start(&graph(&count_job(&out, 100_000, 4000, 1)), 1, None, &chk).await.unwrap();
    wait_records_out(&d, "count", 100).await;
    let kind = BarrierKind::Savepoint { dir: tmp.path().join("sp"), terminate: true };
    checkpoint(&d, &log, 1, kind, false).await;
    let stopped = d.status()[0].records_out;
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(d.status()[0].records_out, stopped, "the source must stop after a stop-with-savepoint barrier");
    d.notify_checkpoint_aborted(1);
    wait_records_out(&d, "src", stopped + 50).await;
    d.cancel();
    wait_terminal(&d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_emit_correct_sums() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, chk) = (tmp.path().join("out"), tmp.path().join("chk"));
    let n: u64 = 1000;
    let yaml = format!(
        r#"
name: windows
vertices:
  - id: src
    parallelism: 1
    operators:
      - sequence: {{to: {n}}}
      - map: {{fields: {{k: "seq % 2", t: "seq"}}}}
  - id: win
    parallelism: 2
    operators:
      - key_by: {{field: k}}
      - window: {{size: 10ms, time_field: t, aggregate: sum, field: seq, output: total}}
      - file: {{path: "{}"}}
edges:
  - {{from: src, to: win, partitioning: hash}}
"#,
        out.display()
    );
    let (d, log) = start(&graph(&yaml), 1, None, &chk).await.unwrap();
    wait_terminal(&d).await;
    assert_eq!(log.failures(), Vec::<String>::new());
    assert_eq!(d.late_records_dropped(), 0);
    let mut expected = BTreeMap::new();
    for seq in 0..n {
        *expected.entry((seq % 2, seq / 10 * 10)).or_insert(0) += seq;
    }
    let mut actual = BTreeMap::new();
    for r in committed(&out) {
        let (k, start, end) = (r["k"].as_u64().unwrap(), r["window_start"].as_u64().unwrap(), r["window_end"].as_u64());
        assert_eq!(end, Some(start + 10));
        assert!(actual.insert((k, start), r["total"].as_u64().unwrap()).is_none(), "window fired twice");
    }
    assert_eq!(actual, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_source_offsets_survive_a_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, out, chk) = (tmp.path().join("in"), tmp.path().join("out"), tmp.path().join("chk"));
    std::fs::create_dir_all(&input).unwrap();
    let lines = |prefix: &str, range: std::ops::Range<u32>| range.map(|i| format!("{prefix}{i}\n")).collect::<String>();
    std::fs::write(input.join("a.log"), lines("a", 0..50)).unwrap();
    std::fs::write(input.join("b.log"), lines("b", 0..30)).unwrap();
    let yaml = format!(
        r#"
name: files
parallelism: 2
vertices:
  - id: read
    operators:
      - files: {{path: "{}", watch: true}}
      - filter: {{expr: "line != \"\""}}
  - id: sink
    operators:
      - file: {{path: "{}"}}
edges:
  - {{from: read, to: sink, partitioning: forward}}
"#,
        input.display(),
        out.display()
    );
    let g = graph(&yaml);
    let (d, log) = start(&g, 1, None, &chk).await.unwrap();
    wait_records_out(&d, "sink", 80).await;
    checkpoint(&d, &log, 1, BarrierKind::Checkpoint, true).await;
    // Appended lines and a new file, read by attempt 1 but never checkpointed: replayed after the restore.
    let mut a = std::fs::OpenOptions::new().append(true).open(input.join("a.log")).unwrap();
    std::io::Write::write_all(&mut a, lines("a", 50..60).as_bytes()).unwrap();
    std::fs::write(input.join("c.log"), lines("c", 0..5)).unwrap();
    wait_records_out(&d, "sink", 95).await;
    d.cancel();
    wait_terminal(&d).await;

    let (d2, log2) = start(&g, 2, Some(chk.join("chk-1")), &chk).await.unwrap();
    wait_records_out(&d2, "sink", 15).await;
    checkpoint(&d2, &log2, 2, BarrierKind::Checkpoint, true).await;
    wait_until("commit", || committed(&out).len() >= 95).await;
    d2.cancel();
    wait_terminal(&d2).await;
    let mut seen = BTreeSet::new();
    for r in committed(&out) {
        let key = (r["file"].as_str().unwrap().to_string(), r["offset"].as_u64().unwrap());
        let (name, line) = (key.0.clone(), r["line"].as_str().unwrap().to_string());
        assert!(line.starts_with(&name[..1]), "{line} read from {name}");
        assert!(seen.insert(key), "{r:?} committed twice");
    }
    assert_eq!(seen.len(), 95);
    assert!(seen.contains(&("a.log".to_string(), lines("a", 0..50).len() as u64)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_is_prompt_even_under_backpressure() {
    let tmp = tempfile::tempdir().unwrap();
    let yaml = r#"
name: busy
parallelism: 2
vertices:
  - id: src
    operators:
      - sequence: {}
  - id: slow
    operators:
      - key_by: {field: seq}
      - count: {}
      - log: {prefix: "never printed at this level"}
edges:
  - {from: src, to: slow, partitioning: hash}
"#;
    let (d, log) = start(&graph(yaml), 1, None, tmp.path()).await.unwrap();
    wait_records_out(&d, "src", 2000).await;
    let started = std::time::Instant::now();
    d.cancel();
    wait_terminal(&d).await;
    assert!(started.elapsed() < Duration::from_millis(500), "cancel took {:?}", started.elapsed());
    assert!(d.status().iter().all(|s| s.state == TaskState::Canceled));
    wait_until("CANCELED events", || log.transitions().values().all(|s| s.last() == Some(&TaskState::Canceled))).await;
}

#[tokio::test]
async fn an_expression_error_fails_start_naming_the_vertex() {
    let tmp = tempfile::tempdir().unwrap();
    let yaml = r#"
name: bad
vertices:
  - id: mapper
    operators:
      - sequence: {to: 10}
      - map: {fields: {x: "seq * 2"}}
      - blackhole: {}
"#;
    // Submission refuses a syntax error, so plant one behind the validator's back: the runtime must still refuse
    // it cleanly (a spec from an older version, or a bug elsewhere).
    let mut bad = (*graph(yaml)).clone();
    if let crate::jobgraph::OperatorSpec::Map(map) = &mut bad.vertices[0].operators[1] {
        map.fields.insert("x".into(), "seq +* 2".into());
    }
    let err = start(&Arc::new(bad), 1, None, tmp.path()).await.unwrap_err();
    assert!(matches!(err, RuntimeError::Expression { operator: 1, .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("vertex `mapper`") && message.contains("seq +* 2"), "{message}");
}

#[tokio::test]
async fn a_failing_operator_fails_its_subtask_and_cancels_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let yaml = r#"
name: failing
parallelism: 2
vertices:
  - id: src
    operators:
      - sequence: {rate: 1000}
  - id: check
    operators:
      - filter: {expr: "if seq == 20 { 1 } else { true }"}
      - blackhole: {}
edges:
  - {from: src, to: check, partitioning: forward}
"#;
    let (d, log) = start(&graph(yaml), 1, None, tmp.path()).await.unwrap();
    wait_terminal(&d).await;
    let failures = log.failures();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].contains("vertex `check`") && failures[0].contains("not a boolean"), "{}", failures[0]);
    let states: Vec<TaskState> = d.status().iter().map(|s| s.state).collect();
    assert_eq!(states.iter().filter(|s| **s == TaskState::Failed).count(), 1);
    assert_eq!(states.iter().filter(|s| **s == TaskState::Canceled).count(), 3);
}

#[tokio::test]
async fn a_missing_key_field_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let yaml = r#"
name: nokey
vertices:
  - id: src
    operators:
      - sequence: {to: 10}
  - id: counts
    operators:
      - key_by: {field: user}
      - count: {}
      - blackhole: {}
edges:
  - {from: src, to: counts, partitioning: hash}
"#;
    let (d, log) = start(&graph(yaml), 1, None, tmp.path()).await.unwrap();
    wait_terminal(&d).await;
    let failures = log.failures();
    assert!(failures.len() == 1 && failures[0].contains("key field `user` is missing"), "{failures:?}");
}

#[tokio::test]
async fn bad_deployments_and_restores_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let g = graph(&count_job(&tmp.path().join("out"), 10, 100, 2));
    let (tx, _rx) = mpsc::channel(8);
    let spec = |vertices: Vec<usize>, restore: Option<PathBuf>| DeploymentSpec {
        job_id: "j".into(),
        attempt: 1,
        graph: g.clone(),
        vertices,
        restore,
        checkpoint_dir: tmp.path().to_path_buf(),
    };
    let err = Deployment::start(spec(vec![1], None), tx.clone()).await.unwrap_err();
    assert!(matches!(err, RuntimeError::InvalidDeployment(_)), "{err}");
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let err = Deployment::start(spec(vec![0, 1], Some(empty)), tx.clone()).await.unwrap_err();
    assert!(matches!(err, RuntimeError::Restore { .. }), "{err}");
    let err = Deployment::start(spec(vec![0, 1], Some(tmp.path().join("missing"))), tx).await.unwrap_err();
    assert!(err.to_string().contains("cannot list"), "{err}");
}

#[tokio::test]
async fn finished_subtasks_acknowledge_from_their_final_state() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, chk) = (tmp.path().join("out"), tmp.path().join("chk"));
    // One component finishes at once, the other runs until cancelled.
    let yaml = format!(
        r#"
name: two
vertices:
  - id: done
    operators:
      - sequence: {{to: 5}}
      - file: {{path: "{}"}}
  - id: running
    operators:
      - sequence: {{rate: 1000}}
      - blackhole: {{}}
"#,
        out.display()
    );
    let (d, log) = start(&graph(&yaml), 1, None, &chk).await.unwrap();
    wait_until("done finished", || d.status()[0].state == TaskState::Finished).await;
    checkpoint(&d, &log, 1, BarrierKind::Checkpoint, true).await;
    let state = state::read_snapshot(&chk.join("chk-1").join("done-0.state")).unwrap();
    assert_eq!(state.operators[0].state, state::OperatorState::Sequence { splits: vec![] });
    d.cancel();
    wait_terminal(&d).await;
    assert_eq!(sorted_u64(&committed(&out), "seq"), vec![0, 1, 2, 3, 4]);
}

#[test]
fn the_api_can_be_shared_across_tasks() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let (tx, _rx) = mpsc::channel(1);
    let spec = DeploymentSpec {
        job_id: "j".into(),
        attempt: 1,
        graph: graph("{name: x, vertices: [{id: a, operators: [{sequence: {}}, {blackhole: {}}]}]}"),
        vertices: vec![0],
        restore: None,
        checkpoint_dir: PathBuf::from("/nonexistent"),
    };
    send(&Deployment::start(spec, tx));
    let deployment: Option<Deployment> = None;
    send_sync(&deployment);
}

#[test]
fn task_states_use_flink_names() {
    for s in TaskState::ALL {
        assert_eq!(TaskState::from_flink_str(s.as_flink_str()), Some(s));
        assert_eq!(TaskState::from_u8(s as u8), s);
    }
    assert_eq!(TaskState::Canceling.as_flink_str(), "CANCELING");
    assert_eq!(TaskState::from_flink_str("running"), None);
    assert!(TaskState::Finished.is_terminal() && !TaskState::Canceling.is_terminal());
}
