//! `GET /metrics`: Prometheus text exposition (format 0.0.4) of this replica's Raft state and of the cluster
//! state it has applied.
//!
//! Names follow Prometheus conventions: a `jm_` prefix, units in the name, `_total` for counters. Replica-local
//! series (term, indexes, leadership) differ per replica; cluster series (jobs by state, slots, TaskManagers) are
//! the same on every replica once it has caught up, so a dashboard may scrape any of them (or all, and take the
//! leader's). Measured series ([`telemetry`]: proposal latency, snapshot duration and size, checkpoint duration, size
//! and failures) are this process's own; checkpoint series move only on the leader, where the JobMasters run.
//! Per-subtask records and busy time are exported by the TaskManagers that run the subtasks (their own
//! `/metrics`), not here.

use std::fmt::Write;

use crate::cluster::ReplicaNode;
use crate::raft::JobStatus;
use crate::taskmanager::protocol::{SubtaskStatus, TaskState};
use crate::taskmanager::TaskManager;
use crate::telemetry::{self, HistogramSnapshot};

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
    render_measured(&mut out, r);
    render_cluster(node, &mut out, r);
    out
}

/// What this process measured as it happened ([`telemetry`]).
fn render_measured(out: &mut String, replica: &str) {
    let labels = [("replica", replica)];
    histogram(
        out,
        "jm_raft_proposal_duration_seconds",
        "Time from proposing a command on the leader to its commit and apply there.",
        &labels,
        &telemetry::PROPOSAL_SECONDS.snapshot(),
    );
    histogram(
        out,
        "jm_raft_snapshot_duration_seconds",
        "Time to serialize and persist a snapshot of the state machine.",
        &labels,
        &telemetry::SNAPSHOT_SECONDS.snapshot(),
    );
    let bytes = telemetry::SNAPSHOT_BYTES.get() as f64;
    gauge(out, "jm_raft_snapshot_size_bytes", "Size of the last snapshot built or installed here.", replica, bytes);
    histogram(
        out,
        "jm_checkpoint_duration_seconds",
        "Trigger-to-commit time of checkpoints and savepoints completed by JobMasters on this replica.",
        &labels,
        &telemetry::CHECKPOINT_SECONDS.snapshot(),
    );
    histogram(
        out,
        "jm_checkpoint_size_bytes",
        "State size of checkpoints and savepoints completed by JobMasters on this replica.",
        &labels,
        &telemetry::CHECKPOINT_BYTES.snapshot(),
    );
    let failed = telemetry::CHECKPOINTS_FAILED.get() as f64;
    let help = "Checkpoints and savepoints that expired, were declined or could not be committed.";
    counter(out, "jm_checkpoints_failed_total", help, replica, failed);
    let aborted = telemetry::CHECKPOINTS_ABORTED.get() as f64;
    let help = "Checkpoints and savepoints aborted by a restart, failover or cancel.";
    counter(out, "jm_checkpoints_aborted_total", help, replica, aborted);
}

/// Writes one histogram family: cumulative `_bucket`s, `_sum` and `_count`.
pub fn histogram(out: &mut String, name: &str, help: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
    let mut family = Family::header(out, name, "histogram", help);
    let bucket = format!("{name}_bucket");
    for (bound, count) in &h.buckets {
        let le = if bound.is_infinite() { "+Inf".to_string() } else { bound.to_string() };
        let mut with_le = labels.to_vec();
        with_le.push(("le", &le));
        family.sample(&bucket, &with_le, *count as f64);
    }
    family.sample(&format!("{name}_sum"), labels, h.sum);
    family.sample(&format!("{name}_count"), labels, h.count as f64);
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
        // Flink's listing has no histograms; their `_sum` and `_count` stand for them.
        .filter(|line| !line.split(['{', ' ']).next().is_some_and(|name| name.ends_with("_bucket")))
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

/// Renders a TaskManager's metrics: its slots, its protocol counters, and every subtask's records and busy time.
pub fn render_task_manager(tm: &TaskManager) -> String {
    let mut out = String::new();
    let id = tm.id();
    let reports = tm.reports();
    let tm_label = [("tm_id", id)];
    let simple = |out: &mut String, name: &str, kind: &str, help: &str, value: f64| {
        Family::header(out, name, kind, help).sample(name, &tm_label, value);
    };
    simple(&mut out, "jm_taskmanager_slots", "gauge", "Slots this TaskManager offers.", f64::from(tm.config().slots));
    simple(&mut out, "jm_taskmanager_deployments", "gauge", "Deployments (job attempts) here.", reports.len() as f64);
    let stats = tm.stats();
    let counters: [(&str, &str, &crate::telemetry::Counter); 6] = [
        ("jm_taskmanager_commands_total", "Commands received from JobMasters.", &stats.commands),
        (
            "jm_taskmanager_commands_fenced_total",
            "Commands refused for a stale fencing token (from a deposed leader).",
            &stats.commands_fenced,
        ),
        ("jm_taskmanager_heartbeats_total", "Heartbeats the leader took.", &stats.heartbeats),
        (
            "jm_taskmanager_heartbeat_failures_total",
            "Heartbeat rounds no replica took (no leader reachable).",
            &stats.heartbeat_failures,
        ),
        ("jm_taskmanager_registrations_total", "Registrations with the cluster.", &stats.registrations),
        (
            "jm_taskmanager_events_dropped_total",
            "Task events dropped while no leader was reachable (heartbeats re-report states).",
            &stats.events_dropped,
        ),
    ];
    for (name, help, counter) in counters {
        simple(&mut out, name, "counter", help, counter.get() as f64);
    }
    let subtasks: Vec<_> = reports.iter().flat_map(|r| r.subtasks.iter().map(move |s| (r, s))).collect();
    let mut states = Family::header(&mut out, "jm_taskmanager_subtasks", "gauge", "Subtasks here by state.");
    for state in TaskState::ALL {
        let count = subtasks.iter().filter(|(_, s)| s.state == state).count();
        states.sample("jm_taskmanager_subtasks", &[("tm_id", id), ("state", state.as_flink_str())], count as f64);
    }
    type Read = fn(&SubtaskStatus) -> f64;
    let per_subtask: [(&str, &str, Read); 3] = [
        ("jm_subtask_records_in_total", "Records that entered the subtask's operator chain.", |s| s.records_in as f64),
        ("jm_subtask_records_out_total", "Records that left the subtask's operator chain.", |s| s.records_out as f64),
        (
            "jm_subtask_busy_seconds_total",
            "Time the subtask spent processing records (not waiting for input or output).",
            |s| s.busy_ms as f64 / 1000.0,
        ),
    ];
    for (name, help, value) in per_subtask {
        let mut family = Family::header(&mut out, name, "counter", help);
        for (report, s) in &subtasks {
            let index = s.subtask.to_string();
            let attempt = report.attempt.to_string();
            let labels = [
                ("tm_id", id),
                ("job_id", report.job_id.as_str()),
                ("vertex", s.vertex.as_str()),
                ("subtask", index.as_str()),
                ("attempt", attempt.as_str()),
            ];
            family.sample(name, &labels, value(s));
        }
    }
    out
}
