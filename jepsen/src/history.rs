//! The history: every operation the clients performed, as Jepsen records it. Each operation appears twice: an
//! `invoke` when a client starts it and a completion (`ok`, `fail` or `info`) when it returns, with the times of
//! both, the replica it went to and the logical process that ran it.
//!
//! # Outcomes (see `jepsen/OUTCOMES.md`)
//!
//! * `ok`: the operation took effect, exactly once, at some instant between its invoke and its completion.
//! * `fail`: the operation did not take effect and never will (the cluster refused it deterministically, or
//!   the request provably never reached a leader).
//! * `info`: indeterminate. It may have taken effect, at any instant after its invoke, including long after the
//!   client gave up; or never. A process whose operation ends in `info` is retired: its next operation runs under a
//!   fresh process id, since a real client could not know whether the old one is still in flight.
//!
//! The history is written as JSON Lines, one [`Op`] per line, in the order the harness observed the events.
//!
//! # Operations
//!
//! | `f` | `key` | invoke `value` | `ok` `value` |
//! | --- | --- | --- | --- |
//! | `write` | register key (`<job_id>/<name>`) | the value written, an integer unique per key | same |
//! | `read` | register key | `null` | the integer read, or `null` if never written |
//! | `submit` | client id (the idempotency key, unique per submission) | `null` | `{"job_id": ...}` |
//! | `cancel` | job id | `null` | `{"status": "CANCELED" or the status it had}` |
//! | `read-jobs` | – | `null` | `{"jobs": [{"client_id", "job_id", "status"}]}`: every job the replica knows |
//! | `read-checkpoints` | job id | `null` | `{"attempt": n, "latest": id or null, "completed": [{"id", "at_ms"}]}` (ascending ids) |
//! | `read-leases` | – | `null` | `{"leases": [{"slot": "<tm_id>/<index>", "job_id"}]}` |
//! | `tm-deployments` | TaskManager id | `null` | `{"slots": n, "deployments": [{"job_id", "attempt", "term", "epoch", "slots_used", "running": bool}]}` |
//! | `status` | – | `null` | `{"term", "leader": id or null, "state": "Leader" / "Follower" / ...}` as one replica sees itself |
//! | `final-state` | – | `null` | `{"applied_index", "digest"}`: one replica's state digest once every replica applied the same index |
//!
//! Observations the harness makes itself (`read-leases`, `tm-deployments`, `status`, `final-state`) are recorded as
//! operations too, so every checker reads one history. `node` is the replica a request went to (or, for
//! `tm-deployments`, is absent).

use std::io::{BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The kind of a history event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpType {
    /// A client started the operation.
    Invoke,
    /// It took effect.
    Ok,
    /// It did not take effect and never will.
    Fail,
    /// Unknown whether it took effect (now or later).
    Info,
}

/// One history event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// Position in the history (0-based), in observation order.
    pub index: usize,
    /// The logical client process.
    pub process: u64,
    /// Invoke or completion.
    #[serde(rename = "type")]
    pub op_type: OpType,
    /// The operation: `write`, `read`, `submit`, `cancel`, `read-jobs`, `read-checkpoints`, ...
    pub f: String,
    /// What it is about: a register key, a job id, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The argument (on invoke) or the result (on completion); `null` when there is none.
    #[serde(default)]
    pub value: serde_json::Value,
    /// Nanoseconds since the run started.
    pub time_ns: u64,
    /// The replica the request went to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u64>,
    /// Why it failed or is indeterminate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Op {
    /// Whether this event is an invocation.
    pub fn is_invoke(&self) -> bool {
        self.op_type == OpType::Invoke
    }
}

/// An operation with its completion, if it completed before the history ended (an open invocation counts as
/// `info`).
#[derive(Debug, Clone, PartialEq)]
pub struct Completed<'a> {
    /// The invocation.
    pub invoke: &'a Op,
    /// The completion, if any.
    pub completion: Option<&'a Op>,
}

impl Completed<'_> {
    /// The outcome: the completion's type, or `info` for an invocation that never completed.
    pub fn outcome(&self) -> OpType {
        self.completion.map_or(OpType::Info, |c| c.op_type)
    }

    /// When the operation completed; `None` if it is indeterminate (it may take effect at any later time).
    pub fn end_ns(&self) -> Option<u64> {
        self.completion.filter(|c| c.op_type != OpType::Info).map(|c| c.time_ns)
    }
}

/// Pairs every invocation with the next completion of the same process.
pub fn pair(history: &[Op]) -> Vec<Completed<'_>> {
    let mut open: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    let mut out: Vec<Completed<'_>> = Vec::new();
    for op in history {
        if op.is_invoke() {
            open.insert(op.process, out.len());
            out.push(Completed { invoke: op, completion: None });
        } else if let Some(slot) = open.remove(&op.process) {
            out[slot].completion = Some(op);
        }
    }
    out
}

/// Writes `history` as JSON Lines.
pub fn write_jsonl(path: &Path, history: &[Op]) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for op in history {
        serde_json::to_writer(&mut out, op)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Reads a history written by [`write_jsonl`].
pub fn read_jsonl(path: &Path) -> std::io::Result<Vec<Op>> {
    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut history = Vec::new();
    for (n, line) in file.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let op = serde_json::from_str(&line)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("line {}: {e}", n + 1)))?;
        history.push(op);
    }
    Ok(history)
}

/// Builds histories by hand, for checker tests.
#[derive(Debug, Default)]
pub struct Builder {
    ops: Vec<Op>,
    time_ns: u64,
}

impl Builder {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    fn push(
        &mut self,
        process: u64,
        op_type: OpType,
        f: &str,
        key: Option<&str>,
        value: serde_json::Value,
    ) -> &mut Self {
        self.time_ns += 1_000;
        let index = self.ops.len();
        let op = Op {
            index,
            process,
            op_type,
            f: f.to_string(),
            key: key.map(str::to_string),
            value,
            time_ns: self.time_ns,
            node: None,
            error: None,
        };
        self.ops.push(op);
        self
    }

    /// Appends an invocation.
    pub fn invoke(&mut self, process: u64, f: &str, key: Option<&str>, value: serde_json::Value) -> &mut Self {
        self.push(process, OpType::Invoke, f, key, value)
    }

    /// Appends a completion of `process`'s open operation (same `f` and key as its invocation).
    pub fn complete(&mut self, process: u64, op_type: OpType, value: serde_json::Value) -> &mut Self {
        let invoke = self.ops.iter().rev().find(|o| o.process == process && o.is_invoke()).cloned();
        let invoke = invoke.expect("complete() needs an open invocation of the process");
        self.push(process, op_type, &invoke.f, invoke.key.as_deref(), value)
    }

    /// The history.
    pub fn build(&self) -> Vec<Op> {
        self.ops.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn invocations_pair_with_their_process_completion_and_open_ones_are_info() {
        let history = Builder::new()
            .invoke(1, "write", Some("k"), json!(1))
            .invoke(2, "read", Some("k"), json!(null))
            .complete(1, OpType::Ok, json!(1))
            .invoke(1, "write", Some("k"), json!(2))
            .build();
        let pairs = pair(&history);
        assert_eq!(pairs.len(), 3);
        assert_eq!(pairs[0].outcome(), OpType::Ok);
        assert_eq!(pairs[1].outcome(), OpType::Info, "process 2 never completed");
        assert_eq!(pairs[2].outcome(), OpType::Info);
        assert_eq!(pairs[0].end_ns(), Some(3_000));
    }

    #[test]
    fn jsonl_round_trips() {
        let dir = std::env::temp_dir().join(format!("jepsen-history-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("history.jsonl");
        let history = Builder::new()
            .invoke(1, "submit", None, json!({"id": "c1"}))
            .complete(1, OpType::Fail, json!(null))
            .build();
        write_jsonl(&path, &history).unwrap();
        assert_eq!(read_jsonl(&path).unwrap(), history);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
