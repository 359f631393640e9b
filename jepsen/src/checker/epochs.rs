//! Fencing tokens never go back: for each job, the newest token a TaskManager accepted, `(term, epoch)` ordered by
//! term then epoch, only grows. A TaskManager refuses commands older than that token; if it ever went back, a deposed
//! JobMaster could drive tasks again.
//!
//! # Definition
//!
//! The input is every `tm-deployments` observation that completed `ok`: `key` is the TaskManager id and the value
//! lists deployments `{"job_id", "attempt", "term", "epoch", ...}`. An observation's token for a job is the greatest
//! `(term, epoch)` among its deployments of that job. For each (TaskManager, job), observation Y *follows* X when Y
//! was invoked after X completed. **token-went-back**: Y follows X and Y's token is smaller than X's.
//!
//! This is ordering by completion time made exact: when the harness observes one TaskManager at a time
//! (its observations of a TaskManager never overlap), completion order and this order coincide; when two
//! observations overlap, neither is known to reflect a later state, so they are not compared.
//!
//! # Verdict
//!
//! `Invalid` on any token-went-back. Otherwise `Unknown` if no (TaskManager, job) was observed twice in order (nothing
//! was compared), or an observation was malformed (no TaskManager id, no `deployments` array, or a deployment without
//! a string `job_id` and integer `term` and `epoch`); else `Valid`. Evidence: each regression with both observations
//! (op indexes, times, values) and both tokens, the first [`common::CAP`](super::common::CAP); counts.
//!
//! # Caveats
//!
//! * Tokens are compared per TaskManager: two TaskManagers may hold different tokens for one job at once (one has
//!   not heard from the newest JobMaster yet).
//! * A TaskManager keeps its tokens in memory only, so one that restarted starts afresh. A regression across a
//!   restart is still reported: after a restart only a stale JobMaster could hand it an older token, which is what
//!   the tokens exist to prevent. A job that disappears from a TaskManager (forgotten after it ended) and comes back
//!   is compared across the gap for the same reason.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::common::{array_field, ok_ops, str_field, u64_field, Capped, Malformed, OkOp};
use super::{Validity, Verdict};
use crate::history::Op;

const NAME: &str = "epochs";

/// `(term, epoch)`, compared in that order as the TaskManager compares them.
type Token = (u64, u64);

/// One observation of one job on one TaskManager.
#[derive(Clone, Copy)]
struct Seen<'a> {
    op: OkOp<'a>,
    token: Token,
}

/// Checks the fencing tokens in the `tm-deployments` observations of `history`; see the module doc.
pub fn check(history: &[Op]) -> Verdict {
    let mut malformed = Malformed::default();
    let observations = ok_ops(history, "tm-deployments");
    let mut per_pair: BTreeMap<(&str, &str), Vec<Seen<'_>>> = BTreeMap::new();
    let mut observations_used = 0usize;
    for observation in &observations {
        let Some((tm_id, tokens)) = parse(observation, &mut malformed) else { continue };
        observations_used += 1;
        for (job_id, token) in tokens {
            per_pair.entry((tm_id, job_id)).or_default().push(Seen { op: *observation, token });
        }
    }

    let mut went_back = Capped::default();
    let mut compared = 0usize;
    for ((tm_id, job_id), seen) in &per_pair {
        let mut by_end = seen.clone();
        by_end.sort_by_key(|s| s.op.end_ns());
        let mut by_invoke = seen.clone();
        by_invoke.sort_by_key(|s| s.op.invoke_ns());
        // The greatest token among the observations completed before the current one began: any of them smaller
        // than that one is enough to show a regression, and the greatest shows it whenever any does.
        let mut newest: Option<Seen<'_>> = None;
        let mut done = by_end.iter().peekable();
        for later in &by_invoke {
            while let Some(earlier) = done.next_if(|s| s.op.end_ns() < later.op.invoke_ns()) {
                if newest.is_none_or(|n| earlier.token > n.token) {
                    newest = Some(*earlier);
                }
            }
            let Some(earlier) = newest else { continue };
            compared += 1;
            if later.token < earlier.token {
                went_back.push(json!({
                    "summary": format!(
                        "TaskManager {tm_id}, job {job_id}: fencing token went back from {} to {} (observation op {}, then op {})",
                        show(earlier.token),
                        show(later.token),
                        earlier.op.invoke.index,
                        later.op.invoke.index
                    ),
                    "tm_id": tm_id,
                    "job_id": job_id,
                    "earlier": describe(&earlier),
                    "later": describe(later),
                }));
            }
        }
    }

    let evidence = json!({
        "counts": {
            "observations": observations_used,
            "task_manager_jobs": per_pair.len(),
            "ordered_comparisons": compared,
            "token-went-back": went_back.total(),
            "malformed": malformed.len(),
        },
        "token-went-back": went_back.to_json(),
        "malformed": malformed.to_json(),
    });
    if !went_back.is_empty() {
        let first = went_back.kept()[0]["summary"].as_str().unwrap_or_default();
        let summary = format!("{} token-went-back: {first}", went_back.total());
        return Verdict::new(NAME, Validity::Invalid, summary, evidence);
    }
    if compared == 0 {
        let summary = format!(
            "no TaskManager was observed running a job twice in order ({} observation(s)): nothing to compare",
            observations_used
        );
        return Verdict::new(NAME, Validity::Unknown, summary, evidence);
    }
    if !malformed.is_empty() {
        let summary = format!("{} malformed op(s); the rest is consistent", malformed.len());
        return Verdict::new(NAME, Validity::Unknown, summary, evidence);
    }
    let summary = format!(
        "{compared} ordered comparison(s) over {} (TaskManager, job) pair(s): no fencing token went back",
        per_pair.len()
    );
    Verdict::new(NAME, Validity::Valid, summary, evidence)
}

fn show((term, epoch): Token) -> String {
    format!("(term {term}, epoch {epoch})")
}

fn describe(seen: &Seen<'_>) -> Value {
    let mut described = seen.op.describe_with_value();
    described["token"] = json!({"term": seen.token.0, "epoch": seen.token.1});
    described
}

/// (TaskManager id, job id → its greatest token), or `None` (reported) if the observation is malformed.
fn parse<'a>(observation: &OkOp<'a>, malformed: &mut Malformed) -> Option<(&'a str, BTreeMap<&'a str, Token>)> {
    let Some(tm_id) = observation.key() else {
        malformed.push(observation.completion, "tm-deployments without a TaskManager id (key)");
        return None;
    };
    let Some(entries) = array_field(observation.value(), "deployments") else {
        malformed.push(observation.completion, "tm-deployments without a deployments array");
        return None;
    };
    let mut tokens: BTreeMap<&str, Token> = BTreeMap::new();
    for entry in entries {
        let (Some(job_id), Some(term), Some(epoch)) =
            (str_field(entry, "job_id"), u64_field(entry, "term"), u64_field(entry, "epoch"))
        else {
            malformed.push(observation.completion, "deployment without a string job_id and integer term and epoch");
            return None;
        };
        let token = tokens.entry(job_id).or_insert((term, epoch));
        *token = (*token).max((term, epoch));
    }
    Some((tm_id, tokens))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Builder, OpType};

    /// The value of an observation with deployments (job, term, epoch).
    fn value(deployments: &[(&str, u64, u64)]) -> Value {
        let deployments: Vec<Value> = deployments
            .iter()
            .map(|(job, term, epoch)| {
                json!({"job_id": job, "attempt": 1, "term": term, "epoch": epoch, "slots_used": 1, "running": true})
            })
            .collect();
        json!({"slots": 4, "deployments": deployments})
    }

    fn observe(b: &mut Builder, process: u64, tm: &str, deployments: &[(&str, u64, u64)]) {
        b.invoke(process, "tm-deployments", Some(tm), json!(null));
        b.complete(process, OpType::Ok, value(deployments));
    }

    fn count(verdict: &Verdict, what: &str) -> u64 {
        verdict.evidence["counts"][what].as_u64().unwrap()
    }

    #[test]
    fn a_valid_history_passes() {
        let mut b = Builder::new();
        observe(&mut b, 1, "tm1", &[("j1", 1, 1), ("j2", 1, 1)]);
        observe(&mut b, 1, "tm1", &[("j1", 1, 2), ("j2", 1, 1)]);
        observe(&mut b, 1, "tm1", &[("j1", 2, 1)]); // a new term outranks any epoch of the old one
        observe(&mut b, 2, "tm2", &[("j1", 1, 1)]); // another TaskManager, behind: not compared with tm1
        observe(&mut b, 1, "tm1", &[("j1", 2, 1), ("j2", 2, 3)]);
        let verdict = check(&b.build());
        assert_eq!(verdict.validity, Validity::Valid, "{verdict:?}");
        assert_eq!(count(&verdict, "task_manager_jobs"), 3);
        assert_eq!(count(&verdict, "ordered_comparisons"), 5);
    }

    #[test]
    fn a_fencing_token_going_back_is_invalid() {
        let mut b = Builder::new();
        observe(&mut b, 1, "tm1", &[("j1", 2, 1)]);
        observe(&mut b, 1, "tm1", &[("j1", 2, 3)]);
        observe(&mut b, 1, "tm1", &[("j1", 2, 2)]);
        let verdict = check(&b.build());
        assert_eq!(verdict.validity, Validity::Invalid);
        let finding = &verdict.evidence["token-went-back"][0];
        assert_eq!(finding["earlier"]["invoke"], 2);
        assert_eq!(finding["earlier"]["token"], json!({"term": 2, "epoch": 3}));
        assert_eq!(finding["later"]["invoke"], 4);
        assert_eq!(finding["later"]["token"], json!({"term": 2, "epoch": 2}));
        assert!(
            verdict.summary.contains("fencing token went back from (term 2, epoch 3) to (term 2, epoch 2)"),
            "{}",
            verdict.summary
        );
    }

    #[test]
    fn an_older_term_is_older_whatever_its_epoch() {
        let mut b = Builder::new();
        observe(&mut b, 1, "tm1", &[("j1", 3, 1)]);
        observe(&mut b, 1, "tm1", &[("j1", 2, 9)]);
        let verdict = check(&b.build());
        assert_eq!(verdict.validity, Validity::Invalid);
    }

    #[test]
    fn overlapping_observations_are_not_ordered() {
        let mut b = Builder::new();
        b.invoke(1, "tm-deployments", Some("tm1"), json!(null));
        b.invoke(2, "tm-deployments", Some("tm1"), json!(null));
        b.complete(1, OpType::Ok, value(&[("j1", 1, 2)]));
        b.complete(2, OpType::Ok, value(&[("j1", 1, 1)]));
        let verdict = check(&b.build());
        assert_eq!(verdict.validity, Validity::Unknown, "nothing was ordered: {verdict:?}");
        observe(&mut b, 1, "tm1", &[("j1", 1, 2)]);
        let verdict = check(&b.build());
        assert_eq!(verdict.validity, Validity::Valid, "{verdict:?}");
    }

    #[test]
    fn no_observations_is_unknown() {
        let verdict = check(&Builder::new().build());
        assert_eq!(verdict.validity, Validity::Unknown);
        let mut b = Builder::new();
        observe(&mut b, 1, "tm1", &[("j1", 1, 1)]);
        assert_eq!(check(&b.build()).validity, Validity::Unknown, "one observation compares nothing");
    }

    #[test]
    fn a_malformed_observation_is_unknown_evidence() {
        let mut b = Builder::new();
        observe(&mut b, 1, "tm1", &[("j1", 1, 1)]);
        observe(&mut b, 1, "tm1", &[("j1", 1, 1)]);
        b.invoke(1, "tm-deployments", Some("tm1"), json!(null));
        b.complete(1, OpType::Ok, json!({"deployments": [{"job_id": "j1", "term": "one"}]}));
        b.invoke(1, "tm-deployments", None, json!(null));
        b.complete(1, OpType::Ok, value(&[]));
        let verdict = check(&b.build());
        assert_eq!(verdict.validity, Validity::Unknown, "{verdict:?}");
        assert_eq!(count(&verdict, "malformed"), 2);
        assert!(verdict.evidence["malformed"][0]["message"].as_str().unwrap().starts_with("malformed op 5:"));
    }
}
