//! No process panicked or hit a fatal error: the logs of every replica and TaskManager, read after the run.
//!
//! # Definition
//!
//! The input is `(name, text)` pairs, one per log file (a replica's or a TaskManager's stderr). A line is a hit when it
//! contains one of these markers, matched exactly (case-sensitive, anywhere in the line, so both the text and the JSON
//! log formats match):
//!
//! * **panic**: `panicked at`, what Rust's panic hook prints (`thread '…' panicked at src/…`), in either log format,
//!   since the hook writes to stderr directly.
//! * **fatal**: the messages the code logs when a process (or a part of it that never comes back) stops for good:
//!   - `this replica can no longer persist anything`: jobmanager's disk writer after a failed write or flush
//!     (`src/raft/disk_writer.rs`); the replica stops acknowledging anything.
//!   - `quit RaftCore::main on error`: openraft 0.9 when its core stops on a storage error or a panic; a requested
//!     shutdown does not log it.
//!   - `REST API failed` and `TaskManager HTTP endpoint failed`: jobmanager's HTTP servers ending with an error
//!     (`src/cli/server.rs`, `src/cli/taskmanager.rs`) while the process lives on without them; a graceful shutdown
//!     ends them without an error.
//!
//! Not matched, on purpose: the word "fatal" or `ERROR` in general. openraft logs `core_call fatal error` for an
//! ordinary shutdown (`Fatal::Stopped`) and logs errors for every failed RPC and election timeout, which a network
//! partition produces by the hundred; jobmanager's `ClusterError::Fatal` is an answer to a client, not a log line.
//!
//! # Verdict
//!
//! `Invalid` if any line is a hit; `Unknown` if no log was given; else `Valid`. Evidence: each hit with the log's
//! name, the line number (1-based), the kind, the marker and up to 5 lines of context (the line before, the hit, the
//! three after: a panic's message and location follow its first line), at most 20 hits; counts per log and in all.
//!
//! # Caveats
//!
//! A process killed by the nemesis (SIGKILL) logs nothing; that is the nemesis, not a failure. Context lines are
//! cut at 1,000 bytes.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::common::Capped;
use super::{Validity, Verdict};

const NAME: &str = "logs";

/// `(kind, marker)`, see the module doc.
const MARKERS: &[(&str, &str)] = &[
    ("panic", "panicked at"),
    ("fatal", "this replica can no longer persist anything"),
    ("fatal", "quit RaftCore::main on error"),
    ("fatal", "REST API failed"),
    ("fatal", "TaskManager HTTP endpoint failed"),
];

const CONTEXT_BEFORE: usize = 1;
const CONTEXT_AFTER: usize = 3;
const MAX_LINE_BYTES: usize = 1000;

/// Scans `logs` (name, text) for panics and fatal errors; see the module doc.
pub fn check(logs: &[(String, String)]) -> Verdict {
    let mut hits = Capped::default();
    let mut per_log: BTreeMap<&str, Value> = BTreeMap::new();
    let mut totals: BTreeMap<&str, usize> = BTreeMap::new();
    let mut lines_scanned = 0usize;
    for (name, text) in logs {
        let lines: Vec<&str> = text.lines().collect();
        lines_scanned += lines.len();
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for (n, line) in lines.iter().enumerate() {
            let Some(&(kind, marker)) = MARKERS.iter().find(|(_, marker)| line.contains(marker)) else { continue };
            *counts.entry(kind).or_default() += 1;
            *totals.entry(kind).or_default() += 1;
            let from = n.saturating_sub(CONTEXT_BEFORE);
            let to = (n + CONTEXT_AFTER + 1).min(lines.len());
            let context: Vec<Value> = (from..to).map(|i| json!({"line": i + 1, "text": cut(lines[i])})).collect();
            hits.push(json!({
                "log": name,
                "line": n + 1,
                "kind": kind,
                "marker": marker,
                "text": cut(line),
                "context": context,
            }));
        }
        per_log.insert(name, json!({"lines": lines.len(), "hits": counts}));
    }

    let evidence = json!({
        "markers": MARKERS.iter().map(|(kind, marker)| json!({"kind": kind, "marker": marker})).collect::<Vec<_>>(),
        "counts": {"logs": logs.len(), "lines": lines_scanned, "hits": totals, "shown": hits.kept().len()},
        "hits": hits.to_json(),
        "per_log": per_log,
    });
    if let Some(first) = hits.kept().first() {
        let kinds: Vec<String> = totals.iter().map(|(kind, count)| format!("{count} {kind}")).collect();
        let summary = format!(
            "{} in the logs; first: {} line {}: {}",
            kinds.join(" and "),
            first["log"].as_str().unwrap_or_default(),
            first["line"],
            first["text"].as_str().unwrap_or_default().trim()
        );
        return Verdict::new(NAME, Validity::Invalid, summary, evidence);
    }
    if logs.is_empty() {
        return Verdict::new(NAME, Validity::Unknown, "no logs to read", evidence);
    }
    let summary = format!("{} log(s), {lines_scanned} line(s): no panic and no fatal error", logs.len());
    Verdict::new(NAME, Validity::Valid, summary, evidence)
}

/// At most [`MAX_LINE_BYTES`], cut at a character boundary.
fn cut(line: &str) -> String {
    if line.len() <= MAX_LINE_BYTES {
        return line.to_string();
    }
    let mut end = MAX_LINE_BYTES;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &line[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logs(entries: &[(&str, &str)]) -> Vec<(String, String)> {
        entries.iter().map(|(name, text)| (name.to_string(), text.to_string())).collect()
    }

    const CLEAN: &str = "\
2024-05-01T10:00:00.000Z  INFO serving the REST API http=127.0.0.1:8081
2024-05-01T10:00:01.000Z ERROR timeout while confirming leadership for read request target=2 error=timeout
2024-05-01T10:00:02.000Z ERROR core_call fatal error error=Stopped
2024-05-01T10:00:03.000Z  WARN the leader does not know this TaskManager; registering again";

    #[test]
    fn clean_logs_pass() {
        let verdict = check(&logs(&[("replica-1.log", CLEAN), ("tm-1.log", "")]));
        assert_eq!(verdict.validity, Validity::Valid, "{verdict:?}");
        assert_eq!(verdict.evidence["counts"]["lines"], 4);
    }

    #[test]
    fn a_panic_is_invalid_with_its_place_and_context() {
        let text = "\
line one
line two
thread 'tokio-runtime-worker' panicked at src/raft/state.rs:42:9:
index out of bounds
note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace
after
much later";
        let verdict = check(&logs(&[("replica-1.log", CLEAN), ("replica-2.log", text)]));
        assert_eq!(verdict.validity, Validity::Invalid);
        let hit = &verdict.evidence["hits"][0];
        assert_eq!(hit["log"], "replica-2.log");
        assert_eq!(hit["line"], 3);
        assert_eq!(hit["kind"], "panic");
        let context: Vec<u64> =
            hit["context"].as_array().unwrap().iter().map(|c| c["line"].as_u64().unwrap()).collect();
        assert_eq!(context, [2, 3, 4, 5, 6]);
        assert_eq!(hit["context"][2]["text"], "index out of bounds");
        assert!(verdict.summary.contains("1 panic in the logs; first: replica-2.log line 3:"), "{}", verdict.summary);
    }

    #[test]
    fn a_fatal_error_is_invalid_in_either_log_format() {
        let text = r#"{"timestamp":"2024-05-01T10:00:00Z","level":"ERROR","fields":{"message":"disk flush failed; this replica can no longer persist anything","error":"No space left on device"}}"#;
        let verdict = check(&logs(&[("replica-3.log", text)]));
        assert_eq!(verdict.validity, Validity::Invalid);
        assert_eq!(verdict.evidence["hits"][0]["kind"], "fatal");
        assert_eq!(verdict.evidence["hits"][0]["context"].as_array().unwrap().len(), 1, "a one-line log");
        let text = "2024-05-01T10:00:00Z ERROR quit RaftCore::main on error error=storage error";
        assert!(check(&logs(&[("replica-1.log", text)])).is_invalid());
    }

    #[test]
    fn hits_are_capped_but_all_counted() {
        let text = "thread 'main' panicked at src/main.rs:1:1:\n".repeat(25);
        let verdict = check(&logs(&[("tm-2.log", &text)]));
        assert_eq!(verdict.validity, Validity::Invalid);
        assert_eq!(verdict.evidence["hits"].as_array().unwrap().len(), 20);
        assert_eq!(verdict.evidence["counts"]["hits"]["panic"], 25);
        assert_eq!(verdict.evidence["per_log"]["tm-2.log"]["hits"]["panic"], 25);
    }

    #[test]
    fn long_lines_are_cut_without_splitting_a_character() {
        let line = format!("{}é panicked at here", "x".repeat(MAX_LINE_BYTES - 1));
        let verdict = check(&logs(&[("replica-1.log", &line)]));
        assert_eq!(verdict.validity, Validity::Invalid);
        let text = verdict.evidence["hits"][0]["text"].as_str().unwrap();
        assert!(text.ends_with('…') && text.len() < line.len(), "{text}");
    }

    #[test]
    fn no_logs_is_unknown() {
        assert_eq!(check(&[]).validity, Validity::Unknown);
    }
}
