//! Job submissions as a set, checked the way Jepsen's `set-full` checks a set: nothing acknowledged is lost, nothing
//! refused appears, and (in linearizable mode) no read misses an element that was already known to be there.
//!
//! # The model
//!
//! An element is a submission's client id (the `key` of a `submit`, its idempotency key). Adding it is the `submit`;
//! a read of the set is a `read-jobs` that completed `ok`, and an element is present in a read when some entry of its
//! `jobs` has that `client_id`. Reads that failed or are indeterminate observed nothing and are ignored.
//!
//! An element is **known** to be in the set from the earliest of: the completion of an `ok` submit of it, or the
//! completion of a read that contains it (an `info` submit may have taken effect; once a read shows it, it did).
//! Only reads that *began after* the element was known can be held against it: a read concurrent with the submit may
//! legitimately miss it.
//!
//! Each element gets one status (the first that applies, in this order):
//!
//! * **unexpected**: present in some read although it was never submitted, or every submit of it `fail`ed (a `fail`
//!   means it never took effect), or a read that completed before its first submit was invoked already had it.
//! * **lost**: known, and some read that began after the end of the last read containing it (or, if no read ever
//!   contained it, after it was known) does not contain it. It vanished and no later read brought it back.
//! * **stale**: known, absent from some read that began after it was known, but present in a later read: a read
//!   lagged behind an acknowledged write.
//! * **never-read**: acknowledged but no read began after it was known, so its survival is undecided.
//! * **ok** (acknowledged and read back), **recovered** (only `info` submits, later read), **indeterminate** (only
//!   `info` submits, never read: it may never have taken effect), **failed** (every submit failed, never read).
//!
//! Separately, an element is **duplicated** when its client id is tied to two different job ids: two entries of
//! reads, or a read and the `job_id` an `ok` submit returned. One submission then created two jobs, which breaks
//! "a job never runs twice" at its root.
//!
//! # Verdict
//!
//! `Invalid` if any element is lost, unexpected or duplicated, or stale when `linearizable` (the cluster claims
//! linearizable reads, so the harness passes `true`; with `false`, stale reads are counted and reported but allowed,
//! as for reads served by lagging replicas). Otherwise `Unknown` if no read completed, if some acknowledged element
//! is never-read, or if a completion was malformed; otherwise `Valid`.
//!
//! Evidence: `counts` (submits by outcome, reads, and elements per status), `anomalies` (client ids per kind, with
//! the job ids of duplicated ones) and `elements`: every element with its status, its submits and the reads that
//! decided it (op indexes, times, replicas).
//!
//! # Caveats
//!
//! * Several submits of one client id are one element: it is acknowledged if any was `ok`, failed only if all were.
//! * A malformed read (no `jobs` array, or an entry without a string `client_id` and `job_id`) is dropped whole.
//!   Dropping a read removes evidence but never invents an absence that was not observed, except that it can turn a
//!   stale element (absent, then present in the dropped read) into a lost one; both are anomalies in linearizable
//!   mode.
//! * Two client ids sharing one job id is not checked here.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{json, Value};

use super::common::{all_ops, array_field, describe_completed, list_names, ok_ops, str_field, Malformed, OkOp};
use super::{Validity, Verdict};
use crate::history::{Completed, Op, OpType};

const NAME: &str = "set";

/// Most absent reads listed per element.
const ABSENT_READS_SHOWN: usize = 5;

/// One `ok` read of the set: client id → the job ids it listed for it.
struct Read<'a> {
    op: OkOp<'a>,
    jobs: HashMap<&'a str, BTreeSet<&'a str>>,
}

/// Everything the history says about one client id.
#[derive(Default)]
struct Element<'a> {
    submits: Vec<Completed<'a>>,
    /// Every job id tied to this client id, with the first op (a completion) that tied it.
    job_ids: BTreeMap<&'a str, usize>,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Status {
    Unexpected,
    Lost,
    Stale,
    NeverRead,
    Ok,
    Recovered,
    Indeterminate,
    Failed,
}

impl Status {
    fn name(self) -> &'static str {
        match self {
            Status::Unexpected => "unexpected",
            Status::Lost => "lost",
            Status::Stale => "stale",
            Status::NeverRead => "never-read",
            Status::Ok => "ok",
            Status::Recovered => "recovered",
            Status::Indeterminate => "indeterminate",
            Status::Failed => "failed",
        }
    }
}

/// Checks the `submit` and `read-jobs` operations of `history` as a set; see the module doc. `linearizable` makes
/// stale reads invalid.
pub fn check(history: &[Op], linearizable: bool) -> Verdict {
    let mut malformed = Malformed::default();
    let reads = parse_reads(history, &mut malformed);

    let mut elements: BTreeMap<&str, Element<'_>> = BTreeMap::new();
    let mut submit_outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    for submit in all_ops(history, "submit") {
        *submit_outcomes.entry(super::common::outcome_name(submit.outcome())).or_default() += 1;
        let Some(client_id) = submit.invoke.key.as_deref() else {
            malformed.push(submit.invoke, "submit without a client id (key)");
            continue;
        };
        let element = elements.entry(client_id).or_default();
        if let Some(completion) = submit.completion.filter(|c| c.op_type == OpType::Ok) {
            match str_field(&completion.value, "job_id") {
                Some(job_id) => {
                    element.job_ids.entry(job_id).or_insert(completion.index);
                }
                None => malformed.push(completion, "ok submit without a string job_id"),
            }
        }
        element.submits.push(submit);
    }
    for read in &reads {
        for (client_id, job_ids) in &read.jobs {
            let element = elements.entry(client_id).or_default();
            for job_id in job_ids {
                element.job_ids.entry(job_id).or_insert(read.op.completion.index);
            }
        }
    }

    let mut per_status: BTreeMap<Status, Vec<&str>> = BTreeMap::new();
    let mut duplicated = Vec::new();
    let mut recovered = 0usize;
    let mut element_evidence = Vec::new();
    for (client_id, element) in &elements {
        let judged = judge(client_id, element, &reads);
        if judged.recovered {
            recovered += 1;
        }
        if element.job_ids.len() > 1 {
            duplicated.push(json!({"client_id": client_id, "job_ids": element.job_ids}));
        }
        per_status.entry(judged.status).or_default().push(client_id);
        element_evidence.push(judged.evidence);
    }

    let named = |status: Status| per_status.get(&status).cloned().unwrap_or_default();
    let (lost, stale, unexpected, never_read) =
        (named(Status::Lost), named(Status::Stale), named(Status::Unexpected), named(Status::NeverRead));
    let counts = json!({
        "submits": submit_outcomes.values().sum::<usize>(),
        "ok": submit_outcomes.get("ok").copied().unwrap_or(0),
        "info": submit_outcomes.get("info").copied().unwrap_or(0),
        "fail": submit_outcomes.get("fail").copied().unwrap_or(0),
        "elements": elements.len(),
        "reads": reads.len(),
        "lost": lost.len(),
        "stale": stale.len(),
        "never-read": never_read.len(),
        "recovered": recovered,
        "unexpected": unexpected.len(),
        "duplicated": duplicated.len(),
        "malformed": malformed.len(),
    });
    let evidence = json!({
        "linearizable": linearizable,
        "counts": counts,
        "anomalies": {
            "lost": lost,
            "stale": stale,
            "unexpected": unexpected,
            "duplicated": duplicated,
            "never-read": never_read,
        },
        "malformed": malformed.to_json(),
        "elements": element_evidence,
    });

    let mut problems = Vec::new();
    if !lost.is_empty() {
        problems.push(format!("{} acknowledged submission(s) lost: {}", lost.len(), list_names(&lost, 5)));
    }
    if !unexpected.is_empty() {
        problems.push(format!(
            "{} submission(s) read although never successfully submitted: {}",
            unexpected.len(),
            list_names(&unexpected, 5)
        ));
    }
    if !duplicated.is_empty() {
        let ids: Vec<&str> = duplicated.iter().filter_map(|d| d["client_id"].as_str()).collect();
        problems.push(format!("{} client id(s) created more than one job: {}", ids.len(), list_names(&ids, 5)));
    }
    if linearizable && !stale.is_empty() {
        problems.push(format!(
            "{} submission(s) missing from a read that began after they were known: {}",
            stale.len(),
            list_names(&stale, 5)
        ));
    }
    if !problems.is_empty() {
        return Verdict::new(NAME, Validity::Invalid, problems.join("; "), evidence);
    }
    if reads.is_empty() {
        let summary = format!("no read-jobs read completed: {} submission(s) unchecked", elements.len());
        return Verdict::new(NAME, Validity::Unknown, summary, evidence);
    }
    if !never_read.is_empty() {
        let summary = format!(
            "{} acknowledged submission(s) never read (no read began after they completed): {}",
            never_read.len(),
            list_names(&never_read, 5)
        );
        return Verdict::new(NAME, Validity::Unknown, summary, evidence);
    }
    if !malformed.is_empty() {
        let summary = format!("{} malformed op(s); the rest is consistent", malformed.len());
        return Verdict::new(NAME, Validity::Unknown, summary, evidence);
    }
    let mut summary = format!(
        "{} submission(s), {} read(s): every acknowledged submission read back, none refused or unknown appeared",
        elements.len(),
        reads.len()
    );
    if !stale.is_empty() {
        summary.push_str(&format!(" ({} stale, allowed without linearizability)", stale.len()));
    }
    Verdict::new(NAME, Validity::Valid, summary, evidence)
}

fn parse_reads<'a>(history: &'a [Op], malformed: &mut Malformed) -> Vec<Read<'a>> {
    let mut reads = Vec::new();
    'reads: for op in ok_ops(history, "read-jobs") {
        let Some(entries) = array_field(op.value(), "jobs") else {
            malformed.push(op.completion, "read-jobs without a jobs array");
            continue;
        };
        let mut jobs: HashMap<&str, BTreeSet<&str>> = HashMap::new();
        for entry in entries {
            match (str_field(entry, "client_id"), str_field(entry, "job_id")) {
                (Some(client_id), Some(job_id)) => {
                    jobs.entry(client_id).or_default().insert(job_id);
                }
                _ => {
                    malformed.push(op.completion, "read-jobs entry without a string client_id and job_id");
                    continue 'reads;
                }
            }
        }
        reads.push(Read { op, jobs });
    }
    reads
}

struct Judged {
    status: Status,
    recovered: bool,
    evidence: Value,
}

fn judge(client_id: &str, element: &Element<'_>, reads: &[Read<'_>]) -> Judged {
    let submits = &element.submits;
    let ok_end = submits.iter().filter(|s| s.outcome() == OpType::Ok).filter_map(Completed::end_ns).min();
    let all_failed = !submits.is_empty() && submits.iter().all(|s| s.outcome() == OpType::Fail);
    let only_info = !submits.is_empty() && ok_end.is_none() && !all_failed;
    let first_invoke = submits.iter().map(|s| s.invoke.time_ns).min();

    let present: Vec<&Read<'_>> = reads.iter().filter(|r| r.jobs.contains_key(client_id)).collect();
    let first_seen = present.iter().min_by_key(|r| r.op.end_ns());
    let last_seen = present.iter().max_by_key(|r| r.op.end_ns());
    let known_ns = match (ok_end, first_seen.map(|r| r.op.end_ns())) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };

    let unexpected = if present.is_empty() {
        None
    } else if submits.is_empty() {
        Some("read but never submitted")
    } else if all_failed {
        Some("read although every submit of it failed")
    } else if first_invoke.is_some_and(|t| first_seen.is_some_and(|r| r.op.end_ns() < t)) {
        Some("read before it was submitted")
    } else {
        None
    };

    // Reads that began once the element was known and still missed it.
    let absent: Vec<&Read<'_>> = match known_ns {
        Some(known) => reads.iter().filter(|r| r.op.invoke_ns() > known && !r.jobs.contains_key(client_id)).collect(),
        None => Vec::new(),
    };
    let last_present_end = last_seen.map(|r| r.op.end_ns());
    let lost_reads: Vec<&Read<'_>> =
        absent.iter().copied().filter(|r| last_present_end.is_none_or(|end| r.op.invoke_ns() > end)).collect();

    let status = if unexpected.is_some() {
        Status::Unexpected
    } else if known_ns.is_none() {
        if all_failed {
            Status::Failed
        } else {
            Status::Indeterminate
        }
    } else if !lost_reads.is_empty() {
        Status::Lost
    } else if !absent.is_empty() {
        Status::Stale
    } else if present.is_empty() {
        Status::NeverRead
    } else if only_info {
        Status::Recovered
    } else {
        Status::Ok
    };

    let describe_reads = |reads: &[&Read<'_>]| -> Vec<Value> {
        reads.iter().take(ABSENT_READS_SHOWN).map(|r| r.op.describe()).collect()
    };
    let evidence = json!({
        "client_id": client_id,
        "status": status.name(),
        "reason": unexpected,
        "job_ids": element.job_ids.keys().collect::<Vec<_>>(),
        "submits": submits.iter().map(describe_completed).collect::<Vec<_>>(),
        "known_ns": known_ns,
        "reads_containing": present.len(),
        "first_seen": first_seen.map(|r| r.op.describe()),
        "last_seen": last_seen.map(|r| r.op.describe()),
        "absent_after_known": absent.len(),
        "absent_reads": describe_reads(&absent),
        "lost_reads": describe_reads(&lost_reads),
    });
    Judged { status, recovered: only_info && !present.is_empty() && unexpected.is_none(), evidence }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Builder;

    fn submit(b: &mut Builder, process: u64, client_id: &str, outcome: OpType, job_id: &str) {
        b.invoke(process, "submit", Some(client_id), json!(null));
        let value = if outcome == OpType::Ok { json!({"job_id": job_id}) } else { json!(null) };
        b.complete(process, outcome, value);
    }

    fn read(b: &mut Builder, process: u64, jobs: &[(&str, &str)]) {
        b.invoke(process, "read-jobs", None, json!(null));
        let jobs: Vec<Value> =
            jobs.iter().map(|(c, j)| json!({"client_id": c, "job_id": j, "status": "RUNNING"})).collect();
        b.complete(process, OpType::Ok, json!({ "jobs": jobs }));
    }

    fn anomaly(verdict: &Verdict, kind: &str) -> Vec<String> {
        verdict.evidence["anomalies"][kind]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().map_or_else(|| v["client_id"].as_str().unwrap().to_string(), str::to_string))
            .collect()
    }

    fn status_of(verdict: &Verdict, client_id: &str) -> String {
        let elements = verdict.evidence["elements"].as_array().unwrap();
        let element = elements.iter().find(|e| e["client_id"] == client_id).unwrap();
        element["status"].as_str().unwrap().to_string()
    }

    #[test]
    fn a_valid_history_passes() {
        let mut b = Builder::new();
        submit(&mut b, 1, "c1", OpType::Ok, "j1");
        submit(&mut b, 2, "c2", OpType::Ok, "j2");
        submit(&mut b, 3, "c3", OpType::Info, "");
        submit(&mut b, 4, "c4", OpType::Fail, "");
        read(&mut b, 5, &[("c1", "j1"), ("c2", "j2")]);
        read(&mut b, 5, &[("c1", "j1"), ("c2", "j2")]);
        let verdict = check(&b.build(), true);
        assert_eq!(verdict.validity, Validity::Valid, "{verdict:?}");
        assert_eq!(verdict.evidence["counts"]["ok"], 2);
        assert_eq!(verdict.evidence["counts"]["info"], 1);
        assert_eq!(verdict.evidence["counts"]["fail"], 1);
        assert_eq!(status_of(&verdict, "c3"), "indeterminate");
        assert_eq!(status_of(&verdict, "c4"), "failed");
    }

    #[test]
    fn a_read_concurrent_with_the_submit_may_miss_it() {
        let mut b = Builder::new();
        b.invoke(1, "submit", Some("c1"), json!(null));
        b.invoke(2, "read-jobs", None, json!(null));
        b.complete(1, OpType::Ok, json!({"job_id": "j1"}));
        b.complete(2, OpType::Ok, json!({"jobs": []}));
        read(&mut b, 2, &[("c1", "j1")]);
        let verdict = check(&b.build(), true);
        assert_eq!(verdict.validity, Validity::Valid, "{verdict:?}");
    }

    #[test]
    fn an_acknowledged_submission_that_vanishes_is_lost() {
        let mut b = Builder::new();
        submit(&mut b, 1, "c1", OpType::Ok, "j1");
        submit(&mut b, 1, "c2", OpType::Ok, "j2");
        read(&mut b, 2, &[("c1", "j1"), ("c2", "j2")]);
        read(&mut b, 2, &[("c2", "j2")]);
        let verdict = check(&b.build(), true);
        assert_eq!(verdict.validity, Validity::Invalid);
        assert_eq!(anomaly(&verdict, "lost"), ["c1"]);
        assert!(verdict.summary.contains("lost: c1"), "{}", verdict.summary);
        let element = &verdict.evidence["elements"][0];
        assert_eq!(element["lost_reads"][0]["invoke"], 6, "the read that missed it");
        assert_eq!(element["last_seen"]["invoke"], 4);
    }

    #[test]
    fn an_acknowledged_submission_never_seen_by_later_reads_is_lost() {
        let mut b = Builder::new();
        submit(&mut b, 1, "c1", OpType::Ok, "j1");
        read(&mut b, 2, &[]);
        let verdict = check(&b.build(), false);
        assert_eq!(verdict.validity, Validity::Invalid);
        assert_eq!(anomaly(&verdict, "lost"), ["c1"]);
    }

    #[test]
    fn a_stale_read_is_invalid_only_when_linearizable() {
        let mut b = Builder::new();
        submit(&mut b, 1, "c1", OpType::Ok, "j1");
        read(&mut b, 2, &[]);
        read(&mut b, 2, &[("c1", "j1")]);
        let history = b.build();
        let verdict = check(&history, true);
        assert_eq!(verdict.validity, Validity::Invalid);
        assert_eq!(anomaly(&verdict, "stale"), ["c1"]);
        assert_eq!(verdict.evidence["elements"][0]["absent_reads"][0]["invoke"], 2);
        let lenient = check(&history, false);
        assert_eq!(lenient.validity, Validity::Valid, "{lenient:?}");
        assert_eq!(lenient.evidence["counts"]["stale"], 1);
    }

    #[test]
    fn an_element_seen_then_missed_by_a_later_read_is_stale_even_after_an_info_submit() {
        let mut b = Builder::new();
        submit(&mut b, 1, "c1", OpType::Info, "");
        read(&mut b, 2, &[("c1", "j1")]);
        read(&mut b, 2, &[]);
        read(&mut b, 2, &[("c1", "j1")]);
        let verdict = check(&b.build(), true);
        assert_eq!(verdict.validity, Validity::Invalid);
        assert_eq!(anomaly(&verdict, "stale"), ["c1"]);
    }

    #[test]
    fn a_failed_submit_that_appears_is_unexpected() {
        let mut b = Builder::new();
        submit(&mut b, 1, "c1", OpType::Fail, "");
        read(&mut b, 2, &[("c1", "j1")]);
        let verdict = check(&b.build(), true);
        assert_eq!(verdict.validity, Validity::Invalid);
        assert_eq!(anomaly(&verdict, "unexpected"), ["c1"]);
        assert_eq!(verdict.evidence["elements"][0]["reason"], "read although every submit of it failed");
    }

    #[test]
    fn a_job_nobody_submitted_is_unexpected() {
        let mut b = Builder::new();
        read(&mut b, 2, &[("ghost", "j9")]);
        let verdict = check(&b.build(), true);
        assert_eq!(verdict.validity, Validity::Invalid);
        assert_eq!(anomaly(&verdict, "unexpected"), ["ghost"]);
    }

    #[test]
    fn one_client_id_with_two_job_ids_is_duplicated() {
        let mut b = Builder::new();
        submit(&mut b, 1, "c1", OpType::Ok, "j1");
        read(&mut b, 2, &[("c1", "j1")]);
        read(&mut b, 2, &[("c1", "j2")]);
        let verdict = check(&b.build(), true);
        assert_eq!(verdict.validity, Validity::Invalid);
        assert_eq!(anomaly(&verdict, "duplicated"), ["c1"]);
        assert_eq!(verdict.evidence["anomalies"]["duplicated"][0]["job_ids"], json!({"j1": 1, "j2": 5}));
        assert!(verdict.summary.contains("more than one job: c1"), "{}", verdict.summary);
    }

    #[test]
    fn two_jobs_for_one_client_id_in_one_read_are_duplicated() {
        let mut b = Builder::new();
        submit(&mut b, 1, "c1", OpType::Info, "");
        read(&mut b, 2, &[("c1", "j1"), ("c1", "j2")]);
        let verdict = check(&b.build(), true);
        assert_eq!(verdict.validity, Validity::Invalid);
        assert_eq!(anomaly(&verdict, "duplicated"), ["c1"]);
    }

    #[test]
    fn an_indeterminate_submit_read_later_is_recovered() {
        let mut b = Builder::new();
        submit(&mut b, 1, "c1", OpType::Info, "");
        b.invoke(3, "submit", Some("c2"), json!(null)); // never completes
        read(&mut b, 2, &[("c1", "j1"), ("c2", "j2")]);
        let verdict = check(&b.build(), true);
        assert_eq!(verdict.validity, Validity::Valid, "{verdict:?}");
        assert_eq!(verdict.evidence["counts"]["recovered"], 2);
        assert_eq!(status_of(&verdict, "c1"), "recovered");
    }

    #[test]
    fn no_reads_is_unknown() {
        let mut b = Builder::new();
        submit(&mut b, 1, "c1", OpType::Ok, "j1");
        let verdict = check(&b.build(), true);
        assert_eq!(verdict.validity, Validity::Unknown);
        assert_eq!(verdict.evidence["counts"]["reads"], 0);
    }

    #[test]
    fn an_acknowledged_submission_without_a_later_read_is_unknown() {
        let mut b = Builder::new();
        read(&mut b, 2, &[]);
        submit(&mut b, 1, "c1", OpType::Ok, "j1");
        let verdict = check(&b.build(), true);
        assert_eq!(verdict.validity, Validity::Unknown);
        assert_eq!(anomaly(&verdict, "never-read"), ["c1"]);
    }

    #[test]
    fn a_malformed_read_is_reported_not_a_crash() {
        let mut b = Builder::new();
        submit(&mut b, 1, "c1", OpType::Ok, "j1");
        read(&mut b, 2, &[("c1", "j1")]);
        b.invoke(2, "read-jobs", None, json!(null));
        b.complete(2, OpType::Ok, json!({"jobs": [{"client_id": 7}]}));
        b.invoke(2, "read-jobs", None, json!(null));
        b.complete(2, OpType::Ok, json!("garbage"));
        b.invoke(1, "submit", None, json!(null));
        b.complete(1, OpType::Ok, json!({}));
        let verdict = check(&b.build(), true);
        assert_eq!(verdict.validity, Validity::Unknown, "{verdict:?}");
        let messages: Vec<&str> =
            verdict.evidence["malformed"].as_array().unwrap().iter().map(|m| m["message"].as_str().unwrap()).collect();
        assert_eq!(messages.len(), 3, "{messages:?}");
        assert!(messages[0].starts_with("malformed op 5"), "{messages:?}");
    }
}
