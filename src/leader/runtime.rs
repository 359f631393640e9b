//! The leader's live view of what runs where: every subtask's state, record counters, throughput and busy time, as
//! the TaskManagers' heartbeats last reported them.
//!
//! This is not replicated state. It changes every heartbeat (twice a second per TaskManager) and would swamp the
//! Raft log; it matters only while the tasks run, and any leader rebuilds it within one heartbeat interval after a
//! failover. Every replica serves it anyway: a follower asks the leader for it (`Dispatcher::job_runtime`).
//!
//! # Invariants
//!
//! * A heartbeat replaces everything the view held from that TaskManager: a deployment it no longer reports is
//!   gone at once, so nothing here outlives the tasks by more than a heartbeat.
//! * Rates are computed between two reports of the same deployment attempt on the same TaskManager; a new attempt
//!   starts without a rate (counters restart at zero with it).
//! * A TaskManager silent for [`STALE_AFTER`] is left out of answers, even before the ResourceManager declares it
//!   dead.
//!
//! Caveat: the view belongs to one term; a new leader starts with an empty one, so for up to one heartbeat interval
//! after a failover a job shows no subtasks.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::raft::{JobId, TaskManagerId};
use crate::taskmanager::protocol::{DeploymentReport, SubtaskStatus};

/// Reports older than this are not shown.
pub const STALE_AFTER: Duration = Duration::from_secs(10);

/// One subtask as the leader last heard of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubtaskRuntime {
    /// The TaskManager it runs on.
    pub tm_id: TaskManagerId,
    /// The deployment attempt.
    pub attempt: u32,
    /// State, counters and busy time, as reported.
    pub status: SubtaskStatus,
    /// Records in per second over the last two reports, if there were two.
    pub records_in_per_second: Option<f64>,
    /// Records out per second over the last two reports, if there were two.
    pub records_out_per_second: Option<f64>,
    /// Fraction of the last report interval spent processing (0 to 1), if there were two reports.
    pub busy_ratio: Option<f64>,
    /// How long ago the report arrived, in ms.
    pub report_age_ms: u64,
}

/// Every reported subtask of a job.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct JobRuntime {
    /// The subtasks, by vertex then subtask index then attempt.
    pub subtasks: Vec<SubtaskRuntime>,
}

impl JobRuntime {
    /// The subtasks of `attempt` only (older attempts may linger until their cancel is reported).
    pub fn of_attempt(&self, attempt: u32) -> impl Iterator<Item = &SubtaskRuntime> {
        self.subtasks.iter().filter(move |s| s.attempt == attempt)
    }
}

#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    subtasks: Vec<SubtaskStatus>,
    rates: Vec<Rates>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Rates {
    records_in: Option<f64>,
    records_out: Option<f64>,
    busy: Option<f64>,
}

/// Per TaskManager: (job, attempt) → the last report and the rates it implies. Keyed by TaskManager because
/// that is how it changes: one heartbeat replaces one TaskManager's entry, whatever the number of jobs.
type Samples = HashMap<TaskManagerId, HashMap<(JobId, u32), Sample>>;

/// The view of every job's reported subtasks.
#[derive(Debug, Default)]
pub struct RuntimeView {
    samples: Mutex<Samples>,
}

impl RuntimeView {
    fn samples(&self) -> std::sync::MutexGuard<'_, Samples> {
        self.samples.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a heartbeat's reports: what `tm_id` runs now, replacing what it ran before.
    pub fn record(&self, tm_id: &str, reports: &[DeploymentReport], now: Instant) {
        let mut samples = self.samples();
        let previous = samples.remove(tm_id).unwrap_or_default();
        let current = reports
            .iter()
            .map(|report| {
                let key = (report.job_id.clone(), report.attempt);
                let before = previous.get(&key);
                let rates = report.subtasks.iter().map(|s| rates_since(before, s, now)).collect();
                (key, Sample { at: now, subtasks: report.subtasks.clone(), rates })
            })
            .collect();
        samples.insert(tm_id.to_string(), current);
    }

    /// Forgets a TaskManager (declared dead or unregistered).
    pub fn forget_task_manager(&self, tm_id: &str) {
        self.samples().remove(tm_id);
    }

    /// Every fresh subtask report of `job_id`.
    pub fn job(&self, job_id: &str, now: Instant) -> JobRuntime {
        let samples = self.samples();
        let mut subtasks: Vec<SubtaskRuntime> = samples
            .iter()
            .flat_map(|(tm_id, by_job)| by_job.iter().map(move |(key, sample)| (tm_id, key, sample)))
            .filter(|(_, (job, _), sample)| job == job_id && now.saturating_duration_since(sample.at) < STALE_AFTER)
            .flat_map(|(tm_id, (_, attempt), sample)| {
                let age = now.saturating_duration_since(sample.at).as_millis() as u64;
                sample.subtasks.iter().zip(&sample.rates).map(move |(status, rates)| SubtaskRuntime {
                    tm_id: tm_id.clone(),
                    attempt: *attempt,
                    status: status.clone(),
                    records_in_per_second: rates.records_in,
                    records_out_per_second: rates.records_out,
                    busy_ratio: rates.busy,
                    report_age_ms: age,
                })
            })
            .collect();
        subtasks.sort_by(|a, b| {
            (&a.status.vertex, a.status.subtask, a.attempt).cmp(&(&b.status.vertex, b.status.subtask, b.attempt))
        });
        JobRuntime { subtasks }
    }

    /// How many jobs have reports (for tests and metrics).
    pub fn jobs(&self) -> usize {
        let samples = self.samples();
        let jobs: std::collections::HashSet<&JobId> = samples.values().flat_map(|m| m.keys().map(|(j, _)| j)).collect();
        jobs.len()
    }
}

/// The rates of `now_status` against the same subtask in the previous sample.
fn rates_since(before: Option<&Sample>, now_status: &SubtaskStatus, now: Instant) -> Rates {
    let Some(before) = before else { return Rates::default() };
    let Some((index, then)) = before
        .subtasks
        .iter()
        .enumerate()
        .find(|(_, s)| s.vertex == now_status.vertex && s.subtask == now_status.subtask)
    else {
        return Rates::default();
    };
    let seconds = now.saturating_duration_since(before.at).as_secs_f64();
    if seconds < 0.05 {
        // Two reports in quick succession (a reconcile answer and a heartbeat) say nothing about a rate: keep the
        // previous one.
        return before.rates.get(index).copied().unwrap_or_default();
    }
    let per_second = |now: u64, then: u64| now.checked_sub(then).map(|d| d as f64 / seconds);
    let busy = now_status.busy_ms.checked_sub(then.busy_ms).map(|ms| (ms as f64 / 1000.0 / seconds).clamp(0.0, 1.0));
    Rates {
        records_in: per_second(now_status.records_in, then.records_in),
        records_out: per_second(now_status.records_out, then.records_out),
        busy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::taskmanager::protocol::{FencingToken, TaskState};

    fn report(job: &str, attempt: u32, records: u64, busy_ms: u64) -> DeploymentReport {
        DeploymentReport {
            job_id: job.into(),
            attempt,
            token: FencingToken { term: 1, epoch: 1 },
            subtasks: vec![SubtaskStatus {
                vertex: "v".into(),
                subtask: 0,
                state: TaskState::Running,
                records_in: records,
                records_out: records / 2,
                busy_ms,
            }],
        }
    }

    #[tokio::test(start_paused = true)]
    async fn rates_come_from_two_reports_of_the_same_attempt() {
        let view = RuntimeView::default();
        let t0 = Instant::now();
        view.record("tm", &[report("j", 1, 100, 0)], t0);
        let first = view.job("j", t0);
        assert_eq!(first.subtasks.len(), 1);
        assert_eq!(first.subtasks[0].records_in_per_second, None, "one report gives no rate");

        let t1 = t0 + Duration::from_millis(500);
        view.record("tm", &[report("j", 1, 600, 250)], t1);
        let second = view.job("j", t1).subtasks.remove(0);
        assert_eq!(second.records_in_per_second, Some(1000.0));
        assert_eq!(second.records_out_per_second, Some(500.0));
        assert_eq!(second.busy_ratio, Some(0.5));

        // A new attempt restarts its counters: no negative rate, no rate at all until its second report.
        view.record("tm", &[report("j", 2, 10, 0)], t1 + Duration::from_millis(500));
        let third = view.job("j", t1 + Duration::from_millis(500));
        assert_eq!(third.subtasks.len(), 1, "the old attempt is gone with the heartbeat that stopped reporting it");
        assert_eq!(third.subtasks[0].attempt, 2);
        assert_eq!(third.subtasks[0].records_in_per_second, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_heartbeat_replaces_what_the_task_manager_ran_and_silence_hides_it() {
        let view = RuntimeView::default();
        let t0 = Instant::now();
        view.record("tm-a", &[report("j", 1, 1, 0), report("k", 1, 1, 0)], t0);
        view.record("tm-b", &[report("j", 1, 1, 0)], t0);
        assert_eq!(view.job("j", t0).subtasks.len(), 2);

        view.record("tm-a", &[report("k", 1, 2, 0)], t0);
        assert_eq!(view.job("j", t0).subtasks.len(), 1, "tm-a no longer runs j");
        assert_eq!(view.job("j", t0).subtasks[0].tm_id, "tm-b");

        assert!(view.job("j", t0 + STALE_AFTER).subtasks.is_empty(), "a silent TaskManager's reports are stale");
        view.forget_task_manager("tm-a");
        view.forget_task_manager("tm-b");
        assert_eq!(view.jobs(), 0);
    }
}
