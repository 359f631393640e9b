//! Raft's election safety as the replicas report it (at most one leader per term), and convergence at the end (every
//! replica applied the same log to the same state).
//!
//! # Definition
//!
//! **Terms** ([`check_terms`]): the input is every `status` that completed `ok`, value `{"term", "leader": id or null,
//! "state"}` as the replica `node` sees itself. Each observation names a leader for its term in up to two ways: the
//! replica itself when `state` is `"Leader"`, and its `leader` field when not null (a follower's view). **two-leaders**:
//! two different replica ids are named leader for one term, whether both claimed it themselves or a follower
//! believed in a different one than the one that claimed it. Raft allows one leader per term, ever, so the time of
//! the observations does not matter.
//!
//! **Final states** ([`check_final_states`]): the input is every `final-state` that completed `ok`, value
//! `{"applied_index", "digest"}` from replica `node`, taken once every replica applied the same index.
//! **digests-diverge**: two observations at the same `applied_index` with different digests: the replicas applied
//! the same log and reached different states. **applied-index-differs**: the observations do not all report the same
//! `applied_index`; they were meant to be taken at one index, so either a replica never caught up or the harness
//! did not wait for it, and the digests cannot be compared.
//!
//! # Verdict
//!
//! Each part: `Invalid` on its anomalies. Otherwise `Unknown` when there is too little to decide (no status
//! observation; final states from fewer than 2 distinct replicas) or an observation was malformed (no `node`; a
//! status without an integer `term`, a string `state` and a `leader` that is an integer or null; a final state
//! without an integer `applied_index` and a non-null `digest`); else `Valid`. [`check`] combines both: `Invalid` if
//! either is, else `Unknown` if either is, else `Valid`; its evidence holds both parts' verdicts.
//!
//! # Caveats
//!
//! * A replica's `state` and `leader` come from one snapshot of its Raft metrics; if the harness assembled them from
//!   separate requests, a term change between the two could produce a false two-leaders finding.
//! * A digest is compared as an opaque JSON value.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use super::common::{list_names, nullable_u64_field, ok_ops, str_field, u64_field, Capped, Malformed};
use super::{Validity, Verdict};
use crate::history::Op;

const NAME: &str = "leaders";

/// Witnesses kept per (term, leader id).
const WITNESSES_SHOWN: usize = 5;

/// Both parts, combined; see the module doc.
pub fn check(history: &[Op]) -> Verdict {
    let terms = check_terms(history);
    let finals = check_final_states(history);
    let validity = if terms.is_invalid() || finals.is_invalid() {
        Validity::Invalid
    } else if terms.validity == Validity::Unknown || finals.validity == Validity::Unknown {
        Validity::Unknown
    } else {
        Validity::Valid
    };
    let summary = format!("terms: {}; final states: {}", terms.summary, finals.summary);
    Verdict::new(NAME, validity, summary, json!({"terms": terms, "final_states": finals}))
}

/// At most one leader per term, from the `status` observations.
pub fn check_terms(history: &[Op]) -> Verdict {
    const PART: &str = "leaders/terms";
    let mut malformed = Malformed::default();
    // term → leader id → (how many observations named it, the first few of them).
    let mut named: BTreeMap<u64, BTreeMap<u64, (usize, Vec<Value>)>> = BTreeMap::new();
    let mut observations = 0usize;
    for status in ok_ops(history, "status") {
        let value = status.value();
        let (Some(node), Some(term), Some(state), Some(leader)) =
            (status.node(), u64_field(value, "term"), str_field(value, "state"), nullable_u64_field(value, "leader"))
        else {
            malformed.push(
                status.completion,
                "status without a node, an integer term, a string state and a leader (integer or null)",
            );
            continue;
        };
        observations += 1;
        let mut name = |id: u64, how: &str| {
            let (count, witnesses) = named.entry(term).or_default().entry(id).or_default();
            *count += 1;
            if witnesses.len() < WITNESSES_SHOWN {
                let mut witness = status.describe_with_value();
                witness["claim"] = json!(how);
                witnesses.push(witness);
            }
        };
        if state == "Leader" {
            name(node, "itself Leader");
        }
        if let Some(leader) = leader {
            name(leader, "its leader field");
        }
    }

    let mut two_leaders = Capped::default();
    for (term, leaders) in named.iter().filter(|(_, leaders)| leaders.len() > 1) {
        let ids: Vec<String> = leaders.keys().map(u64::to_string).collect();
        two_leaders.push(json!({
            "summary": format!("term {term} has leaders {}", ids.join(" and ")),
            "term": term,
            "leaders": leaders
                .iter()
                .map(|(id, (count, witnesses))| json!({"leader": id, "observations": count, "witnesses": witnesses}))
                .collect::<Vec<_>>(),
        }));
    }
    let evidence = json!({
        "counts": {
            "observations": observations,
            "terms": named.len(),
            "two-leaders": two_leaders.total(),
            "malformed": malformed.len(),
        },
        "two-leaders": two_leaders.to_json(),
        "malformed": malformed.to_json(),
    });
    if !two_leaders.is_empty() {
        let firsts: Vec<&str> = two_leaders.kept().iter().filter_map(|f| f["summary"].as_str()).collect();
        let summary = format!("{} term(s) with two leaders: {}", two_leaders.total(), list_names(&firsts, 3));
        return Verdict::new(PART, Validity::Invalid, summary, evidence);
    }
    if observations == 0 {
        return Verdict::new(PART, Validity::Unknown, "no status observation completed", evidence);
    }
    if !malformed.is_empty() {
        let summary = format!("{} malformed op(s); the rest is consistent", malformed.len());
        return Verdict::new(PART, Validity::Unknown, summary, evidence);
    }
    let summary = format!("{observations} status observation(s) over {} term(s): one leader per term", named.len());
    Verdict::new(PART, Validity::Valid, summary, evidence)
}

/// Every replica ends at the same applied index with the same digest, from the `final-state` observations.
pub fn check_final_states(history: &[Op]) -> Verdict {
    const PART: &str = "leaders/final-states";
    let mut malformed = Malformed::default();
    let mut states = Vec::new();
    for observation in ok_ops(history, "final-state") {
        let value = observation.value();
        let digest = value.get("digest").filter(|d| !d.is_null());
        let (Some(node), Some(applied_index), Some(digest)) =
            (observation.node(), u64_field(value, "applied_index"), digest)
        else {
            malformed.push(observation.completion, "final-state without a node, an integer applied_index and a digest");
            continue;
        };
        states.push(json!({
            "node": node,
            "applied_index": applied_index,
            "digest": digest,
            "op": observation.describe(),
        }));
    }
    let nodes: BTreeSet<u64> = states.iter().filter_map(|s| s["node"].as_u64()).collect();
    // applied index → digest (as JSON text, to key a map) → nodes that reported it.
    let mut groups: BTreeMap<u64, BTreeMap<String, BTreeSet<u64>>> = BTreeMap::new();
    for state in &states {
        let (Some(index), Some(node)) = (state["applied_index"].as_u64(), state["node"].as_u64()) else { continue };
        groups.entry(index).or_default().entry(state["digest"].to_string()).or_default().insert(node);
    }

    let mut problems = Vec::new();
    let mut kinds = Vec::new();
    let mut lagging = None;
    for (index, digests) in groups.iter().filter(|(_, digests)| digests.len() > 1) {
        let parts: Vec<String> =
            digests.iter().map(|(digest, nodes)| format!("{digest} on replica(s) {}", show_nodes(nodes))).collect();
        problems.push(format!("digests diverge at applied index {index}: {}", parts.join(" vs ")));
        kinds.push("digests-diverge");
    }
    if groups.len() > 1 {
        let parts: Vec<String> = groups
            .iter()
            .map(|(index, digests)| {
                let nodes: BTreeSet<u64> = digests.values().flatten().copied().collect();
                format!("{index} on replica(s) {}", show_nodes(&nodes))
            })
            .collect();
        // Not evidence of divergence by itself: the replicas were read at different points of one log (a write
        // landed between the reads). Only digests at one index can be compared.
        lagging = Some(format!("applied index differs: {}", parts.join(" vs ")));
        kinds.push("applied-index-differs");
    }
    let evidence = json!({
        "counts": {"observations": states.len(), "replicas": nodes.len(), "malformed": malformed.len()},
        "anomalies": kinds,
        "states": states,
        "malformed": malformed.to_json(),
    });
    if !problems.is_empty() {
        return Verdict::new(PART, Validity::Invalid, problems.join("; "), evidence);
    }
    if let Some(lagging) = lagging {
        let summary = format!("{lagging}: no two replicas to compare at one index without divergence, undecided");
        return Verdict::new(PART, Validity::Unknown, summary, evidence);
    }
    if nodes.len() < 2 {
        let summary = format!("final states from {} replica(s): fewer than 2, nothing to compare", nodes.len());
        return Verdict::new(PART, Validity::Unknown, summary, evidence);
    }
    if !malformed.is_empty() {
        let summary = format!("{} malformed op(s); the rest agrees", malformed.len());
        return Verdict::new(PART, Validity::Unknown, summary, evidence);
    }
    let (index, digests) = groups.iter().next().map(|(i, d)| (*i, d.keys().next().cloned())).unwrap_or_default();
    let summary = format!(
        "replicas {} agree at applied index {index} with digest {}",
        show_nodes(&nodes),
        digests.unwrap_or_default()
    );
    Verdict::new(PART, Validity::Valid, summary, evidence)
}

fn show_nodes(nodes: &BTreeSet<u64>) -> String {
    nodes.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Builder, OpType};

    fn status(b: &mut Builder, node: u64, term: u64, leader: Option<u64>, state: &str) {
        b.invoke(node, "status", None, json!(null));
        b.complete(node, OpType::Ok, json!({"term": term, "leader": leader, "state": state}));
    }

    fn final_state(b: &mut Builder, node: u64, applied_index: u64, digest: &str) {
        b.invoke(node, "final-state", None, json!(null));
        b.complete(node, OpType::Ok, json!({"applied_index": applied_index, "digest": digest}));
    }

    /// The history with each op sent to the replica numbered like its process.
    fn on_nodes(b: &Builder) -> Vec<Op> {
        let mut history = b.build();
        for op in &mut history {
            op.node = Some(op.process);
        }
        history
    }

    fn valid_terms(b: &mut Builder) {
        status(b, 1, 1, Some(1), "Leader");
        status(b, 2, 1, Some(1), "Follower");
        status(b, 3, 1, None, "Candidate");
        status(b, 2, 2, Some(2), "Leader");
        status(b, 1, 2, Some(2), "Follower");
    }

    #[test]
    fn a_valid_history_passes() {
        let mut b = Builder::new();
        valid_terms(&mut b);
        for node in 1..=3 {
            final_state(&mut b, node, 120, "ab12");
        }
        let verdict = check(&on_nodes(&b));
        assert_eq!(verdict.validity, Validity::Valid, "{verdict:?}");
        assert_eq!(verdict.evidence["terms"]["evidence"]["counts"]["terms"], 2);
        assert!(verdict.summary.contains("replicas 1, 2, 3 agree at applied index 120"), "{}", verdict.summary);
    }

    #[test]
    fn two_replicas_claiming_one_term_are_two_leaders() {
        let mut b = Builder::new();
        valid_terms(&mut b);
        status(&mut b, 1, 3, Some(1), "Leader");
        status(&mut b, 3, 3, Some(3), "Leader");
        let verdict = check_terms(&on_nodes(&b));
        assert_eq!(verdict.validity, Validity::Invalid);
        let finding = &verdict.evidence["two-leaders"][0];
        assert_eq!(finding["term"], 3);
        assert_eq!(finding["leaders"][0]["witnesses"][0]["claim"], "itself Leader");
        assert_eq!(finding["leaders"][0]["witnesses"][0]["node"], 1);
        assert!(verdict.summary.contains("term 3 has leaders 1 and 3"), "{}", verdict.summary);
        assert!(check(&on_nodes(&b)).is_invalid());
    }

    #[test]
    fn a_follower_believing_in_another_leader_is_two_leaders() {
        let mut b = Builder::new();
        status(&mut b, 1, 4, Some(1), "Leader");
        status(&mut b, 2, 4, Some(3), "Follower");
        let verdict = check_terms(&on_nodes(&b));
        assert_eq!(verdict.validity, Validity::Invalid);
        assert_eq!(verdict.evidence["two-leaders"][0]["leaders"][1]["witnesses"][0]["claim"], "its leader field");
    }

    #[test]
    fn diverging_digests_are_invalid() {
        let mut b = Builder::new();
        valid_terms(&mut b);
        final_state(&mut b, 1, 120, "ab12");
        final_state(&mut b, 2, 120, "ab12");
        final_state(&mut b, 3, 120, "ff00");
        let verdict = check(&on_nodes(&b));
        assert_eq!(verdict.validity, Validity::Invalid);
        let finals = &verdict.evidence["final_states"];
        assert_eq!(finals["evidence"]["anomalies"], json!(["digests-diverge"]));
        assert!(
            verdict.summary.contains(
                r#"digests diverge at applied index 120: "ab12" on replica(s) 1, 2 vs "ff00" on replica(s) 3"#
            ),
            "{}",
            verdict.summary
        );
    }

    #[test]
    fn different_applied_indexes_are_undecided_not_invalid() {
        // Read at different points of one log: nothing diverged, but nothing can be compared either.
        let mut b = Builder::new();
        final_state(&mut b, 1, 120, "ab12");
        final_state(&mut b, 2, 118, "cd34");
        let verdict = check_final_states(&on_nodes(&b));
        assert_eq!(verdict.validity, Validity::Unknown);
        assert_eq!(verdict.evidence["anomalies"], json!(["applied-index-differs"]));
    }

    #[test]
    fn one_final_state_is_unknown() {
        let mut b = Builder::new();
        valid_terms(&mut b);
        final_state(&mut b, 1, 120, "ab12");
        final_state(&mut b, 1, 120, "ab12"); // the same replica twice is still one replica
        let verdict = check(&on_nodes(&b));
        assert_eq!(verdict.validity, Validity::Unknown, "{verdict:?}");
        assert_eq!(verdict.evidence["final_states"]["validity"], "unknown");
        assert_eq!(verdict.evidence["terms"]["validity"], "valid");
    }

    #[test]
    fn no_status_is_unknown() {
        let mut b = Builder::new();
        final_state(&mut b, 1, 120, "ab12");
        final_state(&mut b, 2, 120, "ab12");
        let history = on_nodes(&b);
        assert_eq!(check_terms(&history).validity, Validity::Unknown);
        assert_eq!(check_final_states(&history).validity, Validity::Valid);
        assert_eq!(check(&history).validity, Validity::Unknown);
    }

    #[test]
    fn malformed_observations_are_unknown_evidence() {
        let mut b = Builder::new();
        valid_terms(&mut b);
        b.invoke(1, "status", None, json!(null));
        b.complete(1, OpType::Ok, json!({"term": 2, "state": "Follower"}));
        final_state(&mut b, 1, 120, "ab12");
        final_state(&mut b, 2, 120, "ab12");
        b.invoke(3, "final-state", None, json!(null));
        b.complete(3, OpType::Ok, json!({"applied_index": 120, "digest": null}));
        let mut history = on_nodes(&b);
        history[0].node = None;
        history[1].node = None; // a status op without its replica
        let terms = check_terms(&history);
        assert_eq!(terms.validity, Validity::Unknown, "{terms:?}");
        assert_eq!(terms.evidence["counts"]["malformed"], 2);
        assert!(terms.evidence["malformed"][0]["message"].as_str().unwrap().starts_with("malformed op 1:"));
        let finals = check_final_states(&history);
        assert_eq!(finals.validity, Validity::Unknown, "{finals:?}");
        assert!(finals.evidence["malformed"][0]["message"].as_str().unwrap().starts_with("malformed op 17:"));
    }
}
