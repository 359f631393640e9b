//! Slots are never given out twice: the replicated lease table never holds one slot twice, and no TaskManager runs
//! more than it has slots for.
//!
//! # Definition
//!
//! * **slot-leased-twice**: a `read-leases` that completed `ok` (value `{"leases": [{"slot", "job_id"}]}`, `slot`
//!   being `"<tm_id>/<index>"`) lists one slot in two entries, whether for one job or two.
//! * **over-committed**: a `tm-deployments` observation that completed `ok` (`key` the TaskManager id, value
//!   `{"slots": n, "deployments": [{"job_id", "attempt", "term", "epoch", "slots_used", "running"}]}`) where the
//!   `slots_used` of its deployments with `running: true` add up to more than `slots`: some slot runs two things.
//!
//! # Verdict
//!
//! `Invalid` on either. Otherwise `Unknown` if there was no observation of either kind, or one was malformed (no
//! `leases` array or an entry without string `slot` and `job_id`; no TaskManager id, no integer `slots`, no
//! `deployments` array, or a deployment without a string `job_id`, an integer `slots_used` and a boolean `running`);
//! else `Valid`. Evidence: the offending observations (op index, time, TaskManager, value), the first
//! [`common::CAP`](super::common::CAP) of each kind, and counts.
//!
//! # Caveats, and a rule left out
//!
//! * Both rules judge one observation at a time, so they are exact: no timing assumption is involved. A slot may
//!   move from one job to another between reads; that is not checked.
//! * A deployment being cancelled may still report `running` while a newer attempt starts in the same slot; if it
//!   does, that is counted as over-commitment, since for that moment the slot really does run two things.
//! * "A job never runs two attempts at once across TaskManagers" is **not** checked. Observations of different
//!   TaskManagers are separate requests; overlapping request windows do not show that two deployments ran at the
//!   same instant (each observation happened at some unknown point inside its own window), so a rule built on
//!   overlapping windows would flag ordinary failovers. And the cluster does not promise it: a TaskManager cut off
//!   from the leader keeps its tasks running until it hears back (stale attempts are cancelled once the leader
//!   knows better), and a cancelled attempt takes a moment to stop. What must hold instead, that a stale attempt
//!   cannot act, is checked by the fencing tokens in `epochs.rs` and the checkpoint history in
//!   `checkpoints.rs`.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::common::{array_field, ok_ops, problem_lines, str_field, u64_field, Capped, Malformed, OkOp};
use super::{Validity, Verdict};
use crate::history::Op;

const NAME: &str = "leases";

/// One running deployment as the over-commitment rule needs it.
struct Running<'a> {
    job_id: &'a str,
    slots_used: u64,
    entry: &'a Value,
}

/// Checks the `read-leases` and `tm-deployments` observations of `history`; see the module doc.
pub fn check(history: &[Op]) -> Verdict {
    let mut malformed = Malformed::default();
    let mut leased_twice = Capped::default();
    let mut over_committed = Capped::default();

    let lease_reads = ok_ops(history, "read-leases");
    let mut lease_reads_checked = 0usize;
    for read in &lease_reads {
        let Some(slots) = parse_leases(read, &mut malformed) else { continue };
        lease_reads_checked += 1;
        for (slot, jobs) in slots.iter().filter(|(_, jobs)| jobs.len() > 1) {
            leased_twice.push(json!({
                "summary": format!("slot {slot} leased {} times in read op {} (jobs {jobs:?})", jobs.len(), read.invoke.index),
                "slot": slot,
                "job_ids": jobs,
                "read": read.describe_with_value(),
            }));
        }
    }

    let observations = ok_ops(history, "tm-deployments");
    let mut observations_checked = 0usize;
    for observation in &observations {
        let Some((tm_id, slots, running)) = parse_deployments(observation, &mut malformed) else { continue };
        observations_checked += 1;
        // Saturating: an absurd slots_used must be reported, not overflow.
        let used = running.iter().fold(0u64, |sum, r| sum.saturating_add(r.slots_used));
        if used > slots {
            let jobs: Vec<&str> = running.iter().map(|r| r.job_id).collect();
            over_committed.push(json!({
                "summary": format!(
                    "TaskManager {tm_id} runs deployments using {used} slot(s) of {slots} in observation op {} (jobs {jobs:?})",
                    observation.invoke.index
                ),
                "tm_id": tm_id,
                "slots": slots,
                "slots_used": used,
                "running": running.iter().map(|r| r.entry).collect::<Vec<_>>(),
                "observation": observation.describe_with_value(),
            }));
        }
    }

    let evidence = json!({
        "counts": {
            "lease_reads": lease_reads_checked,
            "tm_observations": observations_checked,
            "slot-leased-twice": leased_twice.total(),
            "over-committed": over_committed.total(),
            "malformed": malformed.len(),
        },
        "slot-leased-twice": leased_twice.to_json(),
        "over-committed": over_committed.to_json(),
        "malformed": malformed.to_json(),
        "not_checked": "two attempts of one job at once across TaskManagers (see the module doc)",
    });
    let problems = problem_lines([("slot-leased-twice", &leased_twice), ("over-committed", &over_committed)]);
    if !problems.is_empty() {
        return Verdict::new(NAME, Validity::Invalid, problems.join("; "), evidence);
    }
    if lease_reads.is_empty() && observations.is_empty() {
        return Verdict::new(
            NAME,
            Validity::Unknown,
            "no read-leases or tm-deployments observation completed",
            evidence,
        );
    }
    if !malformed.is_empty() {
        let summary = format!("{} malformed op(s); the rest is consistent", malformed.len());
        return Verdict::new(NAME, Validity::Unknown, summary, evidence);
    }
    let summary = format!(
        "{lease_reads_checked} lease read(s) without a slot leased twice; {observations_checked} TaskManager \
         observation(s) within their slots"
    );
    Verdict::new(NAME, Validity::Valid, summary, evidence)
}

/// Slot → the job ids of its entries, or `None` (reported) if the read is malformed.
fn parse_leases<'a>(read: &OkOp<'a>, malformed: &mut Malformed) -> Option<BTreeMap<&'a str, Vec<&'a str>>> {
    let Some(entries) = array_field(read.value(), "leases") else {
        malformed.push(read.completion, "read-leases without a leases array");
        return None;
    };
    let mut slots: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for entry in entries {
        let (Some(slot), Some(job_id)) = (str_field(entry, "slot"), str_field(entry, "job_id")) else {
            malformed.push(read.completion, "lease without a string slot and job_id");
            return None;
        };
        slots.entry(slot).or_default().push(job_id);
    }
    Some(slots)
}

/// (TaskManager id, its slots, its running deployments), or `None` (reported) if the observation is malformed.
fn parse_deployments<'a>(
    observation: &OkOp<'a>,
    malformed: &mut Malformed,
) -> Option<(&'a str, u64, Vec<Running<'a>>)> {
    let Some(tm_id) = observation.key() else {
        malformed.push(observation.completion, "tm-deployments without a TaskManager id (key)");
        return None;
    };
    let value = observation.value();
    let (Some(slots), Some(entries)) = (u64_field(value, "slots"), array_field(value, "deployments")) else {
        malformed.push(observation.completion, "tm-deployments without an integer slots and a deployments array");
        return None;
    };
    let mut running = Vec::new();
    for entry in entries {
        let job_id = str_field(entry, "job_id");
        let slots_used = u64_field(entry, "slots_used");
        let is_running = entry.get("running").and_then(Value::as_bool);
        let (Some(job_id), Some(slots_used), Some(is_running)) = (job_id, slots_used, is_running) else {
            malformed.push(
                observation.completion,
                "deployment without a string job_id, an integer slots_used and a boolean running",
            );
            return None;
        };
        if is_running {
            running.push(Running { job_id, slots_used, entry });
        }
    }
    Some((tm_id, slots, running))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Builder, OpType};

    fn leases(b: &mut Builder, process: u64, leases: &[(&str, &str)]) {
        let leases: Vec<Value> = leases.iter().map(|(slot, job)| json!({"slot": slot, "job_id": job})).collect();
        b.invoke(process, "read-leases", None, json!(null));
        b.complete(process, OpType::Ok, json!({ "leases": leases }));
    }

    /// An observation of `tm` with `slots` slots and deployments (job, slots_used, running).
    fn deployments(b: &mut Builder, process: u64, tm: &str, slots: u64, deployments: &[(&str, u64, bool)]) {
        let deployments: Vec<Value> = deployments
            .iter()
            .map(|(job, used, running)| {
                json!({"job_id": job, "attempt": 1, "term": 1, "epoch": 1, "slots_used": used, "running": running})
            })
            .collect();
        b.invoke(process, "tm-deployments", Some(tm), json!(null));
        b.complete(process, OpType::Ok, json!({"slots": slots, "deployments": deployments}));
    }

    #[test]
    fn a_valid_history_passes() {
        let mut b = Builder::new();
        leases(&mut b, 1, &[("tm1/0", "j1"), ("tm1/1", "j1"), ("tm2/0", "j2")]);
        leases(&mut b, 1, &[("tm1/0", "j3")]); // the slot moved to another job between reads
        deployments(&mut b, 2, "tm1", 2, &[("j1", 1, true), ("j2", 1, true), ("j0", 2, false)]);
        let verdict = check(&b.build());
        assert_eq!(verdict.validity, Validity::Valid, "{verdict:?}");
        assert_eq!(verdict.evidence["counts"]["lease_reads"], 2);
        assert_eq!(verdict.evidence["counts"]["tm_observations"], 1);
    }

    #[test]
    fn a_slot_in_two_leases_of_one_read_is_invalid() {
        let mut b = Builder::new();
        leases(&mut b, 1, &[("tm1/0", "j1"), ("tm1/1", "j1"), ("tm1/0", "j2")]);
        let verdict = check(&b.build());
        assert_eq!(verdict.validity, Validity::Invalid);
        let finding = &verdict.evidence["slot-leased-twice"][0];
        assert_eq!(finding["slot"], "tm1/0");
        assert_eq!(finding["job_ids"], json!(["j1", "j2"]));
        assert_eq!(finding["read"]["invoke"], 0);
        assert!(verdict.summary.contains("slot tm1/0 leased 2 times"), "{}", verdict.summary);
    }

    #[test]
    fn a_task_manager_over_its_slots_is_invalid() {
        let mut b = Builder::new();
        deployments(&mut b, 2, "tm1", 2, &[("j1", 2, true), ("j2", 1, true)]);
        let verdict = check(&b.build());
        assert_eq!(verdict.validity, Validity::Invalid);
        let finding = &verdict.evidence["over-committed"][0];
        assert_eq!(finding["tm_id"], "tm1");
        assert_eq!(finding["slots_used"], 3);
        assert_eq!(finding["observation"]["completion"], 1);
        assert!(
            verdict.summary.contains("TaskManager tm1 runs deployments using 3 slot(s) of 2"),
            "{}",
            verdict.summary
        );
    }

    #[test]
    fn absurd_slot_counts_are_over_committed_not_an_overflow() {
        let mut b = Builder::new();
        deployments(&mut b, 2, "tm1", 4, &[("j1", u64::MAX, true), ("j2", u64::MAX, true)]);
        let verdict = check(&b.build());
        assert_eq!(verdict.validity, Validity::Invalid);
        assert_eq!(verdict.evidence["over-committed"][0]["slots_used"], u64::MAX);
    }

    #[test]
    fn no_observations_is_unknown() {
        let mut b = Builder::new();
        b.invoke(1, "read-leases", None, json!(null));
        b.complete(1, OpType::Info, json!(null));
        let verdict = check(&b.build());
        assert_eq!(verdict.validity, Validity::Unknown);
    }

    #[test]
    fn malformed_observations_are_unknown_evidence() {
        let mut b = Builder::new();
        leases(&mut b, 1, &[("tm1/0", "j1")]);
        b.invoke(1, "read-leases", None, json!(null));
        b.complete(1, OpType::Ok, json!({"leases": [{"slot": 3}]}));
        b.invoke(2, "tm-deployments", Some("tm1"), json!(null));
        b.complete(2, OpType::Ok, json!({"slots": 2, "deployments": [{"job_id": "j1", "running": true}]}));
        b.invoke(2, "tm-deployments", None, json!(null));
        b.complete(2, OpType::Ok, json!({"slots": 2, "deployments": []}));
        let verdict = check(&b.build());
        assert_eq!(verdict.validity, Validity::Unknown, "{verdict:?}");
        let messages: Vec<&str> =
            verdict.evidence["malformed"].as_array().unwrap().iter().map(|m| m["message"].as_str().unwrap()).collect();
        assert_eq!(messages.len(), 3);
        assert!(messages[0].starts_with("malformed op 3:"), "{messages:?}");
        assert!(messages[1].starts_with("malformed op 5:"), "{messages:?}");
    }
}
