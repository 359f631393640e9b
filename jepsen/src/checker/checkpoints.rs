//! Completed checkpoints: ids are never reused, a completed checkpoint is never lost (beyond what retention drops,
//! oldest first), and a job's latest checkpoint never goes back in real time. A restore starts from the latest
//! retained checkpoint, so losing one silently rewinds a job's state.
//!
//! # Definition
//!
//! The input is every `read-checkpoints` that completed `ok`: `key` is the job id and the value is
//! `{"attempt", "latest": id or null, "completed": [{"id", "at_ms"}]}`, the retained completed checkpoints in
//! ascending id order. A read's *latest* is the greater of `latest` and its last listed id. Read B *follows* read A
//! when both are of the same job and B was invoked after A completed, so B's state is at least as new as A's.
//!
//! * **not-increasing**: within one read, the listed ids are not strictly increasing.
//! * **reused**: one checkpoint id of a job appears with two different `at_ms`, in any two reads (or one).
//! * **went-backwards**: B follows A and latest(B) < latest(A) (a missing latest counts as smaller than any id).
//! * **lost**: B follows A and an id listed in A, greater than the smallest id listed in B, is not listed in B.
//!   Retention drops the oldest checkpoints first, so anything newer than B's oldest retained one must still be
//!   there.
//! * **resurrected**: B follows A and B lists an id at most latest(A) that A does not list. Checkpoints complete in
//!   increasing id order (a replicated-state invariant), so one at or below latest(A) and absent from A had either
//!   been dropped already or never completed; neither can appear later.
//!
//! # Verdict
//!
//! `Invalid` on any of the above. Otherwise `Unknown` if no read completed or a read was malformed (no `completed`
//! array, an entry without integer `id` and `at_ms`, `latest` missing or not an integer or null, or no job id); else
//! `Valid`. Evidence: per kind, the offending reads (op indexes, replicas, times and values), the first
//! [`common::CAP`](super::common::CAP) of each; counts of reads, jobs, distinct checkpoints and ordered pairs
//! compared.
//!
//! # Caveats
//!
//! * `attempt` is shown in evidence but not checked: checkpoint ids continue across attempts, so nothing here
//!   depends on it.
//! * `latest` is not required to equal the last listed id (the harness may read them separately); the greater one
//!   is used.
//! * Reads that overlap in time are not ordered, so a lagging replica answering a concurrent read is never flagged.
//!   Every pair of reads of a job is compared, which is quadratic in the reads per job.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound::{Excluded, Unbounded};

use serde_json::json;

use super::common::{array_field, nullable_u64_field, ok_ops, problem_lines, u64_field, Capped, Malformed, OkOp};
use super::{Validity, Verdict};
use crate::history::Op;

const NAME: &str = "checkpoints";

/// One `ok` read of a job's checkpoints.
struct Read<'a> {
    op: OkOp<'a>,
    job_id: &'a str,
    /// The listed checkpoints, (id, at_ms), in the order listed.
    completed: Vec<(u64, u64)>,
    ids: BTreeSet<u64>,
    latest: Option<u64>,
}

/// Checks the `read-checkpoints` reads of `history`; see the module doc.
pub fn check(history: &[Op]) -> Verdict {
    let mut malformed = Malformed::default();
    let reads = parse_reads(history, &mut malformed);

    let mut not_increasing = Capped::default();
    let mut reused = Capped::default();
    let mut backwards = Capped::default();
    let mut lost = Capped::default();
    let mut resurrected = Capped::default();

    let mut by_job: BTreeMap<&str, Vec<&Read<'_>>> = BTreeMap::new();
    for read in &reads {
        by_job.entry(read.job_id).or_default().push(read);
        if read.completed.windows(2).any(|w| w[0].0 >= w[1].0) {
            not_increasing.push(json!({
                "summary": format!("job {}: checkpoint ids not increasing in read op {}", read.job_id, read.op.invoke.index),
                "job_id": read.job_id,
                "read": read.op.describe_with_value(),
            }));
        }
    }

    // (job, id) → at_ms → the first read that showed it with that time.
    let mut seen: BTreeMap<(&str, u64), BTreeMap<u64, &Read<'_>>> = BTreeMap::new();
    for read in &reads {
        for &(id, at_ms) in &read.completed {
            seen.entry((read.job_id, id)).or_default().entry(at_ms).or_insert(read);
        }
    }
    for ((job_id, id), times) in &seen {
        if times.len() > 1 {
            let at: Vec<u64> = times.keys().copied().collect();
            reused.push(json!({
                "summary": format!("checkpoint {id} of job {job_id} completed more than once (at_ms {at:?})"),
                "job_id": job_id,
                "checkpoint_id": id,
                "reads": times.values().map(|r| r.op.describe_with_value()).collect::<Vec<_>>(),
            }));
        }
    }

    let mut pairs = 0usize;
    for (job_id, job_reads) in &by_job {
        for a in job_reads {
            for b in job_reads.iter().filter(|b| b.op.invoke_ns() > a.op.end_ns()) {
                pairs += 1;
                let finding = |kind: &str, ids: Vec<u64>, summary: String| {
                    json!({
                        "summary": summary,
                        "kind": kind,
                        "job_id": job_id,
                        "ids": ids,
                        "earlier": a.op.describe_with_value(),
                        "later": b.op.describe_with_value(),
                    })
                };
                let (latest_a, latest_b) = (a.latest, b.latest);
                if latest_b < latest_a {
                    let summary = format!(
                        "job {job_id}'s latest checkpoint went back from {} to {} (read op {}, then op {})",
                        show(latest_a),
                        show(latest_b),
                        a.op.invoke.index,
                        b.op.invoke.index
                    );
                    backwards.push(finding("went-backwards", Vec::new(), summary));
                    // Whatever else differs follows from the rewind; one finding per pair is enough.
                    continue;
                }
                if let Some(&oldest_b) = b.ids.first() {
                    let missing: Vec<u64> = a
                        .ids
                        .range((Excluded(oldest_b), Unbounded))
                        .filter(|id| !b.ids.contains(id))
                        .copied()
                        .collect();
                    if !missing.is_empty() {
                        let summary = format!(
                            "job {job_id} lost checkpoint(s) {missing:?}: listed by read op {}, missing from op {} \
                             which retains {oldest_b} and newer",
                            a.op.invoke.index, b.op.invoke.index
                        );
                        lost.push(finding("lost", missing, summary));
                    }
                }
                if let Some(latest_a) = latest_a {
                    let extra: Vec<u64> = b.ids.range(..=latest_a).filter(|id| !a.ids.contains(id)).copied().collect();
                    if !extra.is_empty() {
                        let summary = format!(
                            "job {job_id}: read op {} lists checkpoint(s) {extra:?}, at or below {latest_a} yet absent \
                             from the earlier read op {}",
                            b.op.invoke.index, a.op.invoke.index
                        );
                        resurrected.push(finding("resurrected", extra, summary));
                    }
                }
            }
        }
    }

    let kinds = [
        ("not-increasing", &not_increasing),
        ("reused", &reused),
        ("went-backwards", &backwards),
        ("lost", &lost),
        ("resurrected", &resurrected),
    ];
    let mut evidence = json!({
        "counts": {
            "reads": reads.len(),
            "jobs": by_job.len(),
            "checkpoints": seen.len(),
            "ordered_pairs": pairs,
            "malformed": malformed.len(),
        },
        "malformed": malformed.to_json(),
    });
    for (kind, findings) in &kinds {
        evidence["counts"][*kind] = json!(findings.total());
        evidence[*kind] = findings.to_json();
    }

    let problems = problem_lines(kinds);
    if !problems.is_empty() {
        return Verdict::new(NAME, Validity::Invalid, problems.join("; "), evidence);
    }
    if reads.is_empty() {
        return Verdict::new(NAME, Validity::Unknown, "no read-checkpoints read completed", evidence);
    }
    if !malformed.is_empty() {
        let summary = format!("{} malformed op(s); the rest is consistent", malformed.len());
        return Verdict::new(NAME, Validity::Unknown, summary, evidence);
    }
    let summary = format!(
        "{} read(s) of {} job(s), {} checkpoint(s): none reused, lost, resurrected or rewound ({pairs} ordered pairs)",
        reads.len(),
        by_job.len(),
        seen.len()
    );
    Verdict::new(NAME, Validity::Valid, summary, evidence)
}

fn show(id: Option<u64>) -> String {
    id.map_or_else(|| "none".to_string(), |id| id.to_string())
}

fn parse_reads<'a>(history: &'a [Op], malformed: &mut Malformed) -> Vec<Read<'a>> {
    let mut reads = Vec::new();
    for op in ok_ops(history, "read-checkpoints") {
        let Some(job_id) = op.key() else {
            malformed.push(op.completion, "read-checkpoints without a job id (key)");
            continue;
        };
        let value = op.value();
        let Some(latest) = nullable_u64_field(value, "latest") else {
            malformed.push(op.completion, "read-checkpoints without latest (an integer or null)");
            continue;
        };
        let Some(entries) = array_field(value, "completed") else {
            malformed.push(op.completion, "read-checkpoints without a completed array");
            continue;
        };
        let completed: Option<Vec<(u64, u64)>> =
            entries.iter().map(|e| Some((u64_field(e, "id")?, u64_field(e, "at_ms")?))).collect();
        let Some(completed) = completed else {
            malformed.push(op.completion, "completed checkpoint without an integer id and at_ms");
            continue;
        };
        let ids: BTreeSet<u64> = completed.iter().map(|&(id, _)| id).collect();
        let latest = latest.max(ids.last().copied());
        reads.push(Read { op, job_id, completed, ids, latest });
    }
    reads
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Builder, OpType};
    use serde_json::Value;

    /// A read of `job`'s checkpoints, (id, at_ms) each; `latest` is the last id.
    fn read(b: &mut Builder, process: u64, job: &str, completed: &[(u64, u64)]) {
        b.invoke(process, "read-checkpoints", Some(job), json!(null));
        b.complete(process, OpType::Ok, value(completed));
    }

    fn value(completed: &[(u64, u64)]) -> Value {
        let list: Vec<Value> = completed.iter().map(|(id, at)| json!({"id": id, "at_ms": at})).collect();
        json!({"attempt": 1, "latest": completed.last().map(|c| c.0), "completed": list})
    }

    fn count(verdict: &Verdict, kind: &str) -> u64 {
        verdict.evidence["counts"][kind].as_u64().unwrap()
    }

    #[test]
    fn a_valid_history_passes() {
        let mut b = Builder::new();
        read(&mut b, 1, "j1", &[]);
        read(&mut b, 1, "j1", &[(1, 100)]);
        read(&mut b, 2, "j1", &[(1, 100), (2, 200)]);
        read(&mut b, 1, "j1", &[(2, 200), (4, 400)]); // 1 dropped by retention; 3 never completed
        read(&mut b, 2, "j1", &[(5, 500), (6, 600)]);
        read(&mut b, 2, "j2", &[(1, 150)]); // another job: compared with nothing of j1
        let verdict = check(&b.build());
        assert_eq!(verdict.validity, Validity::Valid, "{verdict:?}");
        assert_eq!(count(&verdict, "jobs"), 2);
        assert_eq!(count(&verdict, "ordered_pairs"), 10);
    }

    #[test]
    fn a_reused_checkpoint_id_is_invalid() {
        let mut b = Builder::new();
        read(&mut b, 1, "j1", &[(1, 100), (2, 200)]);
        read(&mut b, 2, "j1", &[(1, 100), (2, 250)]);
        let verdict = check(&b.build());
        assert_eq!(verdict.validity, Validity::Invalid);
        assert_eq!(count(&verdict, "reused"), 1);
        assert_eq!(verdict.evidence["reused"][0]["checkpoint_id"], 2);
        assert!(verdict.summary.contains("checkpoint 2 of job j1 completed more than once"), "{}", verdict.summary);
    }

    #[test]
    fn a_checkpoint_that_went_backwards_is_invalid() {
        let mut b = Builder::new();
        read(&mut b, 1, "j1", &[(2, 200), (3, 300)]);
        read(&mut b, 2, "j1", &[(1, 100), (2, 200)]);
        let verdict = check(&b.build());
        assert_eq!(verdict.validity, Validity::Invalid);
        assert_eq!(count(&verdict, "went-backwards"), 1);
        let finding = &verdict.evidence["went-backwards"][0];
        assert_eq!(finding["earlier"]["invoke"], 0);
        assert_eq!(finding["later"]["invoke"], 2);
        assert_eq!(finding["later"]["value"]["latest"], 2);
        assert!(verdict.summary.contains("went back from 3 to 2"), "{}", verdict.summary);
    }

    #[test]
    fn checkpoints_that_all_vanish_went_backwards() {
        let mut b = Builder::new();
        read(&mut b, 1, "j1", &[(1, 100)]);
        read(&mut b, 2, "j1", &[]);
        let verdict = check(&b.build());
        assert_eq!(verdict.validity, Validity::Invalid);
        assert!(verdict.summary.contains("went back from 1 to none"), "{}", verdict.summary);
    }

    #[test]
    fn a_retained_checkpoint_missing_later_is_lost() {
        let mut b = Builder::new();
        read(&mut b, 1, "j1", &[(5, 500), (6, 600), (7, 700)]);
        read(&mut b, 2, "j1", &[(6, 600), (8, 800)]);
        let verdict = check(&b.build());
        assert_eq!(verdict.validity, Validity::Invalid);
        assert_eq!(count(&verdict, "lost"), 1);
        assert_eq!(verdict.evidence["lost"][0]["ids"], json!([7]));
    }

    #[test]
    fn a_checkpoint_reappearing_after_it_was_dropped_is_resurrected() {
        let mut b = Builder::new();
        read(&mut b, 1, "j1", &[(5, 500), (6, 600)]);
        read(&mut b, 2, "j1", &[(3, 300), (6, 600), (7, 700)]);
        let verdict = check(&b.build());
        assert_eq!(verdict.validity, Validity::Invalid);
        assert_eq!(count(&verdict, "resurrected"), 1);
        assert_eq!(verdict.evidence["resurrected"][0]["ids"], json!([3]));
    }

    #[test]
    fn ids_out_of_order_within_a_read_are_invalid() {
        let mut b = Builder::new();
        read(&mut b, 1, "j1", &[(2, 200), (1, 100)]);
        let verdict = check(&b.build());
        assert_eq!(verdict.validity, Validity::Invalid);
        assert_eq!(count(&verdict, "not-increasing"), 1);
    }

    #[test]
    fn concurrent_reads_are_not_ordered() {
        let mut b = Builder::new();
        b.invoke(1, "read-checkpoints", Some("j1"), json!(null));
        b.invoke(2, "read-checkpoints", Some("j1"), json!(null));
        b.complete(1, OpType::Ok, value(&[(2, 200), (3, 300)]));
        b.complete(2, OpType::Ok, value(&[(1, 100), (2, 200)]));
        let verdict = check(&b.build());
        assert_eq!(verdict.validity, Validity::Valid, "{verdict:?}");
        assert_eq!(count(&verdict, "ordered_pairs"), 0);
    }

    #[test]
    fn failed_reads_observe_nothing() {
        let mut b = Builder::new();
        read(&mut b, 1, "j1", &[(3, 300)]);
        b.invoke(2, "read-checkpoints", Some("j1"), json!(null));
        b.complete(2, OpType::Fail, json!(null));
        let verdict = check(&b.build());
        assert_eq!(verdict.validity, Validity::Valid, "{verdict:?}");
    }

    #[test]
    fn the_largest_id_does_not_overflow() {
        let mut b = Builder::new();
        read(&mut b, 1, "j1", &[(u64::MAX - 1, 100), (u64::MAX, 200)]);
        read(&mut b, 2, "j1", &[(u64::MAX, 200)]);
        let verdict = check(&b.build());
        assert_eq!(verdict.validity, Validity::Valid, "{verdict:?}");
    }

    #[test]
    fn no_reads_is_unknown() {
        let verdict = check(&Builder::new().build());
        assert_eq!(verdict.validity, Validity::Unknown);
    }

    #[test]
    fn a_malformed_read_is_unknown_evidence() {
        let mut b = Builder::new();
        read(&mut b, 1, "j1", &[(1, 100)]);
        b.invoke(1, "read-checkpoints", Some("j1"), json!(null));
        b.complete(1, OpType::Ok, json!({"latest": 1, "completed": [{"id": "one"}]}));
        b.invoke(1, "read-checkpoints", None, json!(null));
        b.complete(1, OpType::Ok, value(&[]));
        b.invoke(1, "read-checkpoints", Some("j1"), json!(null));
        b.complete(1, OpType::Ok, json!({"completed": []}));
        let verdict = check(&b.build());
        assert_eq!(verdict.validity, Validity::Unknown, "{verdict:?}");
        assert_eq!(count(&verdict, "malformed"), 3);
        assert_eq!(
            verdict.evidence["malformed"][0]["message"].as_str().unwrap().split(':').next(),
            Some("malformed op 3")
        );
    }
}
