//! Pieces the checkers share: selecting the completed operations of one kind, reading fields out of their JSON
//! values without panicking, and describing operations in evidence the same way everywhere.
//!
//! Evidence names operations by their `index` in the history (so a person can find them in `history.jsonl`) and
//! gives their times in nanoseconds since the run started. A completion whose value lacks a field a checker needs is
//! not a crash and not a violation: it is listed as "malformed op N", and the checker's verdict becomes `Unknown`
//! unless it found a violation elsewhere.

use serde_json::{json, Value};

use crate::history::{pair, Completed, Op, OpType};

/// An operation that completed `ok`, with its invocation and its completion.
#[derive(Debug, Clone, Copy)]
pub struct OkOp<'a> {
    /// The invocation.
    pub invoke: &'a Op,
    /// The `ok` completion.
    pub completion: &'a Op,
}

impl<'a> OkOp<'a> {
    /// When it was invoked.
    pub fn invoke_ns(&self) -> u64 {
        self.invoke.time_ns
    }

    /// When it completed.
    pub fn end_ns(&self) -> u64 {
        self.completion.time_ns
    }

    /// The replica it went to: the completion's, else the invocation's.
    pub fn node(&self) -> Option<u64> {
        self.completion.node.or(self.invoke.node)
    }

    /// Its key: the invocation's, else the completion's.
    pub fn key(&self) -> Option<&'a str> {
        self.invoke.key.as_deref().or(self.completion.key.as_deref())
    }

    /// The result.
    pub fn value(&self) -> &'a Value {
        &self.completion.value
    }

    /// The operation as evidence: where both events are in the history, when they happened, which replica.
    pub fn describe(&self) -> Value {
        json!({
            "invoke": self.invoke.index,
            "completion": self.completion.index,
            "invoke_ns": self.invoke_ns(),
            "end_ns": self.end_ns(),
            "node": self.node(),
        })
    }

    /// [`OkOp::describe`] plus the key and the value, for evidence a person must read without the history at hand.
    pub fn describe_with_value(&self) -> Value {
        let mut described = self.describe();
        described["key"] = json!(self.key());
        described["value"] = self.value().clone();
        described
    }
}

/// Every operation named `f` that completed `ok`, in invocation order.
pub fn ok_ops<'a>(history: &'a [Op], f: &str) -> Vec<OkOp<'a>> {
    pair(history)
        .into_iter()
        .filter(|c| c.invoke.f == f)
        .filter_map(|c| match c.completion {
            Some(completion) if completion.op_type == OpType::Ok => Some(OkOp { invoke: c.invoke, completion }),
            _ => None,
        })
        .collect()
}

/// Every operation named `f`, completed or not, in invocation order.
pub fn all_ops<'a>(history: &'a [Op], f: &str) -> Vec<Completed<'a>> {
    pair(history).into_iter().filter(|c| c.invoke.f == f).collect()
}

/// A completed-or-not operation as evidence.
pub fn describe_completed(c: &Completed<'_>) -> Value {
    json!({
        "invoke": c.invoke.index,
        "completion": c.completion.map(|op| op.index),
        "outcome": outcome_name(c.outcome()),
        "invoke_ns": c.invoke.time_ns,
        "end_ns": c.completion.map(|op| op.time_ns),
        "node": c.completion.and_then(|op| op.node).or(c.invoke.node),
    })
}

/// `ok`, `fail` or `info`, as the history spells them.
pub fn outcome_name(outcome: OpType) -> &'static str {
    match outcome {
        OpType::Invoke => "invoke",
        OpType::Ok => "ok",
        OpType::Fail => "fail",
        OpType::Info => "info",
    }
}

/// A non-negative integer field.
pub fn u64_field(value: &Value, field: &str) -> Option<u64> {
    value.get(field).and_then(Value::as_u64)
}

/// A string field.
pub fn str_field<'a>(value: &'a Value, field: &str) -> Option<&'a str> {
    value.get(field).and_then(Value::as_str)
}

/// An array field.
pub fn array_field<'a>(value: &'a Value, field: &str) -> Option<&'a Vec<Value>> {
    value.get(field).and_then(Value::as_array)
}

/// A field that must be present and either `null` or a non-negative integer: `Some(None)` for `null`, `None` when
/// it is missing or of another type.
pub fn nullable_u64_field(value: &Value, field: &str) -> Option<Option<u64>> {
    match value.get(field)? {
        Value::Null => Some(None),
        other => other.as_u64().map(Some),
    }
}

/// Completions a checker could not read, kept as evidence.
#[derive(Debug, Default)]
pub struct Malformed {
    entries: Vec<Value>,
}

impl Malformed {
    /// Records that `op` (the completion) lacks what `why` describes.
    pub fn push(&mut self, op: &Op, why: &str) {
        self.entries.push(json!({
            "op": op.index,
            "f": op.f,
            "message": format!("malformed op {}: {why}", op.index),
            "value": op.value,
        }));
    }

    /// How many there were.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there were none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The evidence, at most [`CAP`] entries.
    pub fn to_json(&self) -> Value {
        json!(self.entries.iter().take(CAP).collect::<Vec<_>>())
    }
}

/// Most entries of one kind kept in evidence: beyond that a person learns nothing new, and the verdict file stays
/// readable. Counts are always complete.
pub const CAP: usize = 20;

/// A list of findings that keeps the first [`CAP`] and counts them all.
#[derive(Debug, Default)]
pub struct Capped {
    kept: Vec<Value>,
    total: usize,
}

impl Capped {
    /// Adds one finding.
    pub fn push(&mut self, finding: Value) {
        self.total += 1;
        if self.kept.len() < CAP {
            self.kept.push(finding);
        }
    }

    /// How many were added.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Whether none were.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The first findings.
    pub fn kept(&self) -> &[Value] {
        &self.kept
    }

    /// The kept findings as a JSON array.
    pub fn to_json(&self) -> Value {
        json!(self.kept)
    }
}

/// Joins at most `max` names for a summary line, saying how many more there were.
pub fn list_names<S: AsRef<str>>(names: &[S], max: usize) -> String {
    let shown: Vec<&str> = names.iter().take(max).map(AsRef::as_ref).collect();
    let mut out = shown.join(", ");
    if names.len() > max {
        out.push_str(&format!(" and {} more", names.len() - max));
    }
    out
}

/// One line per kind of anomaly with findings: "N kind: the first finding's summary".
pub fn problem_lines<'a>(kinds: impl IntoIterator<Item = (&'a str, &'a Capped)>) -> Vec<String> {
    kinds
        .into_iter()
        .filter(|(_, findings)| !findings.is_empty())
        .map(|(kind, findings)| {
            let first = findings.kept().first().and_then(|f| f["summary"].as_str()).unwrap_or_default();
            format!("{} {kind}: {first}", findings.total())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Builder;

    #[test]
    fn ok_ops_keeps_only_ok_completions_of_the_named_operation() {
        let history = Builder::new()
            .invoke(1, "read-jobs", None, json!(null))
            .invoke(2, "read-jobs", None, json!(null))
            .invoke(3, "submit", Some("c1"), json!(null))
            .complete(1, OpType::Ok, json!({"jobs": []}))
            .complete(2, OpType::Fail, json!(null))
            .complete(3, OpType::Ok, json!({"job_id": "j1"}))
            .build();
        let reads = ok_ops(&history, "read-jobs");
        assert_eq!(reads.len(), 1);
        assert_eq!(reads[0].invoke.index, 0);
        assert_eq!(reads[0].completion.index, 3);
        assert_eq!(all_ops(&history, "read-jobs").len(), 2);
    }

    #[test]
    fn field_readers_never_panic_on_the_wrong_shape() {
        let value = json!({"n": 3, "s": "x", "neg": -1, "null": null, "a": [1]});
        assert_eq!(u64_field(&value, "n"), Some(3));
        assert_eq!(u64_field(&value, "neg"), None);
        assert_eq!(u64_field(&json!("not an object"), "n"), None);
        assert_eq!(str_field(&value, "n"), None);
        assert_eq!(nullable_u64_field(&value, "null"), Some(None));
        assert_eq!(nullable_u64_field(&value, "missing"), None);
        assert_eq!(nullable_u64_field(&value, "s"), None);
        assert!(array_field(&value, "a").is_some());
    }

    #[test]
    fn capped_counts_everything_and_keeps_the_first() {
        let mut capped = Capped::default();
        for i in 0..CAP + 5 {
            capped.push(json!(i));
        }
        assert_eq!(capped.total(), CAP + 5);
        assert_eq!(capped.kept().len(), CAP);
        assert_eq!(list_names(&["a", "b", "c"], 2), "a, b and 1 more");
    }

    mod no_panics {
        use proptest::prelude::*;
        use serde_json::{json, Value};

        use crate::checker::{checkpoints, epochs, leaders, leases, set};
        use crate::history::{Builder, OpType};

        const FS: &[&str] =
            &["submit", "read-jobs", "read-checkpoints", "read-leases", "tm-deployments", "status", "final-state"];

        fn any_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                (0u64..5).prop_map(Value::from),
                Just(Value::from(u64::MAX)),
                "[a-z]{0,3}".prop_map(Value::from),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                    prop::collection::btree_map(
                        prop_oneof![
                            Just("jobs".to_string()),
                            Just("client_id".to_string()),
                            Just("job_id".to_string()),
                            Just("completed".to_string()),
                            Just("latest".to_string()),
                            Just("id".to_string()),
                            Just("at_ms".to_string()),
                            Just("leases".to_string()),
                            Just("slot".to_string()),
                            Just("slots".to_string()),
                            Just("deployments".to_string()),
                            Just("term".to_string()),
                            Just("epoch".to_string()),
                            Just("slots_used".to_string()),
                            Just("running".to_string()),
                            Just("leader".to_string()),
                            Just("state".to_string()),
                            Just("applied_index".to_string()),
                            Just("digest".to_string()),
                        ],
                        inner,
                        0..6
                    )
                    .prop_map(|m| json!(m)),
                ]
            })
        }

        proptest! {
            /// Whatever the values, the checkers answer; a malformed value is evidence, never a crash.
            #[test]
            fn checkers_never_panic_on_odd_values(
                ops in prop::collection::vec(
                    (0usize..FS.len(), 0u64..3, prop::option::of("[a-c]"), 0u8..3, any_value()),
                    0..30,
                )
            ) {
                let mut b = Builder::new();
                for (f, process, key, outcome, value) in ops {
                    let outcome = [OpType::Ok, OpType::Fail, OpType::Info][usize::from(outcome)];
                    b.invoke(process, FS[f], key.as_deref(), json!(null));
                    b.complete(process, outcome, value);
                }
                let mut history = b.build();
                for op in &mut history {
                    op.node = Some(op.process);
                }
                set::check(&history, true);
                checkpoints::check(&history);
                leases::check(&history);
                epochs::check(&history);
                leaders::check(&history);
            }
        }
    }
}
