//! `GET /metrics`: Prometheus text exposition (format 0.0.4) of this replica's Raft state and of the cluster
//! state it has applied.
//!
//! Names follow Prometheus conventions: a `jm_` prefix, units in the name, `_total` for counters. Replica-local
//! series (term, indexes, leadership) differ per replica; cluster series (jobs by state, slots, TaskManagers) are
//! the same on every replica once it has caught up, so a dashboard may scrape any of them (or all, and take the
//! leader's). Caveat: latency histograms (proposals, checkpoints) and per-subtask throughput are not exported yet.

use std::fmt::Write;

use crate::cluster::ReplicaNode;
use crate::raft::JobStatus;

/// The exposition's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One metric family being written.
struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn header<'o>(out: &'o mut String, name: &str, kind: &str, help: &str) -> Family<'o> {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Family { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
        let labels = if labels.is_empty() { String::new() } else { format!("{{{}}}", labels.join(",")) };
        let _ = writeln!(self.out, "{name}{labels} {value}");
    }
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn gauge(out: &mut String, name: &str, help: &str, replica: &str, value: f64) {
    Family::header(out, name, "gauge", help).sample(name, &[("replica", replica)], value);
}

fn counter(out: &mut String, name: &str, help: &str, replica: &str, value: f64) {
    Family::header(out, name, "counter", help).sample(name, &[("replica", replica)], value);
}

/// Renders every metric of `node`.
pub fn render(node: &ReplicaNode) -> String {
    let mut out = String::new();
    let status = node.local_status();
    let replica = node.id.to_string();
    let r = replica.as_str();
    gauge(&mut out, "jm_raft_term", "Current Raft term of this replica.", r, status.term as f64);
    let leading = f64::from(u8::from(status.leader == Some(node.id)));
    gauge(&mut out, "jm_raft_is_leader", "1 if this replica is the Raft leader.", r, leading);
    let services = f64::from(u8::from(status.leader_services_active));
    gauge(&mut out, "jm_leader_services_active", "1 while this replica runs the leader-only services.", r, services);
    let activations = status.leader_activations as f64;
    counter(&mut out, "jm_leader_activations_total", "Times this process started the leader services.", r, activations);
    gauge(
        &mut out,
        "jm_raft_last_log_index",
        "Index of the last entry in this replica's log.",
        r,
        status.last_log_index as f64,
    );
    gauge(
        &mut out,
        "jm_raft_commit_index",
        "Highest log index this replica knows committed.",
        r,
        status.committed_index as f64,
    );
    gauge(
        &mut out,
        "jm_raft_applied_index",
        "Highest log index applied to this replica's state.",
        r,
        status.applied_index as f64,
    );
    let lag = status.committed_index.saturating_sub(status.applied_index) as f64;
    gauge(&mut out, "jm_raft_apply_lag_entries", "Committed entries not yet applied here.", r, lag);
    gauge(
        &mut out,
        "jm_raft_snapshot_index",
        "Last log index covered by this replica's snapshot.",
        r,
        status.snapshot_index as f64,
    );
    gauge(
        &mut out,
        "jm_storage_size_bytes",
        "Bytes the replica's storage engine occupies on disk.",
        r,
        status.data_dir_bytes as f64,
    );
    if let Some(ms) = status.ms_since_leader_contact {
        let seconds = ms as f64 / 1000.0;
        gauge(
            &mut out,
            "jm_raft_seconds_since_leader_contact",
            "Seconds since this replica heard from a leader.",
            r,
            seconds,
        );
    }
    render_cluster(node, &mut out, r);
    out
}

/// The replicated state's figures, as this replica has applied them.
fn render_cluster(node: &ReplicaNode, out: &mut String, replica: &str) {
    let (by_status, restarts, checkpoints, tms, slots, leased) = node.state().read(|s| {
        let c = &s.cluster;
        let by_status: Vec<(JobStatus, usize)> =
            JobStatus::ALL.iter().map(|st| (*st, c.jobs.values().filter(|j| j.status == *st).count())).collect();
        let restarts: u64 = c.jobs.values().map(|j| u64::from(j.restarts)).sum();
        let checkpoints: u64 = c.jobs.values().map(|j| j.last_checkpoint_id).sum();
        let slots: u64 = c.task_managers.values().map(|t| u64::from(t.slots)).sum();
        (by_status, restarts, checkpoints, c.task_managers.len(), slots, c.slot_leases.len())
    });
    let mut jobs = Family::header(out, "jm_jobs", "gauge", "Jobs by status.");
    for (status, count) in by_status {
        jobs.sample("jm_jobs", &[("replica", replica), ("status", status.as_flink_str())], count as f64);
    }
    counter(out, "jm_job_restarts_total", "Restarts of all jobs after failures.", replica, restarts as f64);
    let help = "Checkpoint ids allocated over all jobs (each trigger takes one).";
    counter(out, "jm_checkpoints_triggered_total", help, replica, checkpoints as f64);
    gauge(out, "jm_taskmanagers", "Registered TaskManagers.", replica, tms as f64);
    gauge(out, "jm_slots_total", "Slots offered by registered TaskManagers.", replica, slots as f64);
    let free = slots.saturating_sub(leased as u64) as f64;
    gauge(out, "jm_slots_free", "Slots not leased to any job.", replica, free);
}

/// The samples of a rendered exposition as `(id, value)`, for Flink's metric listing. Flink's ids have no labels:
/// the replica label is dropped (the listing is this replica's) and other label values are appended with dots,
/// e.g. `jm_jobs{replica="1",status="RUNNING"}` becomes `jm_jobs.RUNNING`.
pub fn samples(exposition: &str) -> Vec<(String, f64)> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((flink_id(series), value.parse().ok()?))
        })
        .collect()
}

fn flink_id(series: &str) -> String {
    let Some((name, labels)) = series.split_once('{') else { return series.to_string() };
    let mut id = name.to_string();
    for label in labels.trim_end_matches('}').split(',') {
        if let Some((key, value)) = label.split_once('=') {
            if key != "replica" {
                id.push('.');
                id.push_str(value.trim_matches('"'));
            }
        }
    }
    id
}
