//! Domain values shaped into Flink's REST JSON, one function per response body. Field names are Flink's
//! (kebab-case where Flink uses it, camelCase where Flink does), so Flink's own clients and dashboards can read
//! them.

use std::collections::{BTreeMap, VecDeque};

use serde_json::{json, Value};

use crate::checkpoint::coordinator::CheckpointConfig;
use crate::cluster::{ClusterError, ReplicaNode, ReplicaStatus};
use crate::jobgraph::{JobGraph, JobSpec, OperatorSpec};
use crate::leader::runtime::{JobRuntime, SubtaskRuntime};
use crate::raft::command::{CompletedCheckpoint, DisposalOutcome, SavepointOutcome};
use crate::raft::state::{Job, LeaderChange, SavepointDisposal, SavepointRequest, TaskManagerInfo};
use crate::raft::{JobStatus, NodeId};
use crate::taskmanager::protocol::TaskState;

/// The Flink version this API follows, reported where Flink reports its own.
pub const FLINK_API_VERSION: &str = "1.19.0";

/// `GET /config`.
pub fn config(node: &ReplicaNode) -> Value {
    json!({
        "refresh-interval": 3000,
        "timezone-name": "Coordinated Universal Time",
        "timezone-offset": 0,
        "flink-version": FLINK_API_VERSION,
        "flink-revision": format!("jobmanager {} @ replica {}", env!("CARGO_PKG_VERSION"), node.id),
        "features": {"web-submit": false, "web-cancel": true, "web-rescale": false, "web-history": false},
    })
}

/// `GET /overview`: the cluster at a glance.
pub fn overview(statuses: &[JobStatus], tms: &[(TaskManagerInfo, u32)]) -> Value {
    let count = |wanted: JobStatus| statuses.iter().filter(|s| **s == wanted).count();
    let running = statuses.iter().filter(|s| !s.is_terminal()).count();
    json!({
        "taskmanagers": tms.len(),
        "slots-total": tms.iter().map(|(tm, _)| u64::from(tm.slots)).sum::<u64>(),
        "slots-available": tms.iter().map(|(_, free)| u64::from(*free)).sum::<u64>(),
        "jobs-running": running,
        "jobs-finished": count(JobStatus::Finished),
        "jobs-cancelled": count(JobStatus::Canceled),
        "jobs-failed": count(JobStatus::Failed),
        "flink-version": FLINK_API_VERSION,
        "flink-commit": env!("CARGO_PKG_VERSION"),
    })
}

fn start_time(job: &Job) -> u64 {
    job.submitted_at_ms
}

fn end_time(job: &Job) -> i64 {
    job.result.as_ref().map_or(-1, |r| r.at_ms as i64)
}

fn duration(job: &Job, now: u64) -> u64 {
    let end = job.result.as_ref().map_or(now, |r| r.at_ms);
    end.saturating_sub(start_time(job))
}

/// The number of subtasks per state, Flink's `tasks` object; subtasks take the job's status.
fn task_counts(job: &Job, total: u32) -> Value {
    let mut counts: BTreeMap<&str, u32> = [
        "created",
        "scheduled",
        "deploying",
        "running",
        "finished",
        "canceling",
        "canceled",
        "failed",
        "reconciling",
        "initializing",
    ]
    .into_iter()
    .map(|s| (s, 0))
    .collect();
    counts.insert(vertex_status_key(job.status), total);
    let mut value = json!(counts);
    value["total"] = json!(total);
    value
}

/// [`vertex_status`] as the lowercase key of Flink's `tasks` object.
fn vertex_status_key(status: JobStatus) -> &'static str {
    match vertex_status(status) {
        "RUNNING" => "running",
        "FINISHED" => "finished",
        "CANCELED" => "canceled",
        "CANCELING" => "canceling",
        "FAILED" => "failed",
        "RECONCILING" => "reconciling",
        _ => "created",
    }
}

/// The state Flink would show for a vertex of a job in `status`.
fn vertex_status(status: JobStatus) -> &'static str {
    match status {
        JobStatus::Running => "RUNNING",
        JobStatus::Finished => "FINISHED",
        JobStatus::Canceled => "CANCELED",
        JobStatus::Cancelling => "CANCELING",
        JobStatus::Failed => "FAILED",
        JobStatus::Reconciling => "RECONCILING",
        _ => "CREATED",
    }
}

/// The number of subtasks of a stored spec, read without validating it again: listings do this for every job on
/// every poll, and the spec was validated when it was submitted.
fn subtask_count(spec_json: &str) -> u32 {
    let Ok(spec) = serde_json::from_str::<JobSpec>(spec_json) else { return 0 };
    spec.vertices.iter().map(|v| v.parallelism.unwrap_or(spec.parallelism)).sum()
}

/// One line of `GET /jobs/overview`.
pub fn job_overview(job: &Job, now: u64) -> Value {
    json!({
        "jid": job.id,
        "name": job.name,
        "state": job.status.as_flink_str(),
        "start-time": start_time(job),
        "end-time": end_time(job),
        "duration": duration(job, now),
        "last-modification": job.updated_at_ms,
        "tasks": task_counts(job, subtask_count(&job.spec_json)),
        // Flink's client (`flink list`) requires this count; every operator of ours is deployed with its job.
        "pending-operators": 0,
        "jobType": "STREAMING",
    })
}

fn operator_name(op: &OperatorSpec) -> &'static str {
    op.name()
}

/// The live subtasks of `vertex` in the job's current attempt, by subtask index.
fn live_subtasks<'r>(job: &Job, runtime: Option<&'r JobRuntime>, vertex: &str) -> BTreeMap<u32, &'r SubtaskRuntime> {
    let attempt = job.deployment.as_ref().map(|d| d.attempt);
    runtime
        .into_iter()
        .flat_map(|rt| rt.subtasks.iter())
        .filter(|s| Some(s.attempt) == attempt && s.status.vertex == vertex)
        .map(|s| (s.status.subtask, s))
        .collect()
}

/// Flink's I/O metrics of a set of subtasks (bytes are not measured here: records are).
fn io_metrics<'a>(subtasks: impl Iterator<Item = &'a SubtaskRuntime>, complete: bool) -> Value {
    let (mut records_in, mut records_out, mut busy_ms) = (0u64, 0u64, 0u64);
    let (mut in_rate, mut out_rate) = (0f64, 0f64);
    for s in subtasks {
        records_in += s.status.records_in;
        records_out += s.status.records_out;
        busy_ms += s.status.busy_ms;
        in_rate += s.records_in_per_second.unwrap_or(0.0);
        out_rate += s.records_out_per_second.unwrap_or(0.0);
    }
    json!({
        "read-bytes": 0, "read-bytes-complete": false,
        "write-bytes": 0, "write-bytes-complete": false,
        "read-records": records_in, "read-records-complete": complete,
        "write-records": records_out, "write-records-complete": complete,
        "accumulated-backpressured-time": 0, "accumulated-idle-time": 0, "accumulated-busy-time": busy_ms,
        // Ours: throughput over the last heartbeat interval.
        "read-records-per-second": in_rate, "write-records-per-second": out_rate,
    })
}

/// A vertex's state from its subtasks' (Flink's aggregation: any failed, canceling, running... wins in that order),
/// or the one implied by the job's status when no subtask reported.
fn aggregate_status(job: &Job, live: &BTreeMap<u32, &SubtaskRuntime>, parallelism: u32) -> &'static str {
    if live.is_empty() {
        return vertex_status(job.status);
    }
    let states: Vec<TaskState> = live.values().map(|s| s.status.state).collect();
    let any = |wanted: TaskState| states.contains(&wanted);
    let all = |wanted: TaskState| states.len() as u32 == parallelism && states.iter().all(|s| *s == wanted);
    if any(TaskState::Failed) {
        "FAILED"
    } else if any(TaskState::Canceling) {
        "CANCELING"
    } else if all(TaskState::Finished) {
        "FINISHED"
    } else if all(TaskState::Canceled) {
        "CANCELED"
    } else if any(TaskState::Running) {
        "RUNNING"
    } else if any(TaskState::Initializing) {
        "INITIALIZING"
    } else if any(TaskState::Deploying) {
        "DEPLOYING"
    } else {
        "CREATED"
    }
}

/// `GET /jobs/:jobid/vertices/:vertexid`: the vertex with every subtask's state, TaskManager and records, from the
/// leader's live view; subtasks without a report show the state the job's status implies. `None` if the job has no
/// such vertex.
pub fn vertex_details(
    job: &Job,
    vertex_id: &str,
    runtime: Option<&JobRuntime>,
    tms: &[(TaskManagerInfo, u32)],
    now: u64,
) -> Option<Value> {
    let graph = JobGraph::from_canonical_json(&job.spec_json).ok()?;
    let vertex = graph.vertices.iter().find(|v| v.id == vertex_id)?;
    let live = live_subtasks(job, runtime, &vertex.id);
    let started = job.deployment.as_ref().map_or(start_time(job), |d| d.at_ms);
    let subtasks: Vec<Value> = (0..vertex.parallelism)
        .map(|index| match live.get(&index) {
            Some(s) => {
                let endpoint = tms.iter().find(|(tm, _)| tm.id == s.tm_id).map(|(tm, _)| tm.address.clone());
                let terminal = s.status.state.is_terminal();
                json!({
                    "subtask": index,
                    "status": s.status.state.as_flink_str(),
                    "attempt": s.attempt,
                    "endpoint": endpoint,
                    "host": endpoint,
                    "taskmanager-id": s.tm_id,
                    "start-time": started,
                    "end-time": if terminal { now as i64 } else { -1 },
                    "duration": now.saturating_sub(started),
                    "metrics": io_metrics(std::iter::once(*s), true),
                    // Ours: live figures from the last heartbeats.
                    "records-in-per-second": s.records_in_per_second,
                    "records-out-per-second": s.records_out_per_second,
                    "busy-ratio": s.busy_ratio,
                    "report-age-ms": s.report_age_ms,
                })
            }
            None => json!({
                "subtask": index,
                "status": vertex_status(job.status),
                "attempt": job.deployment.as_ref().map_or(0, |d| d.attempt),
                "endpoint": null,
                "host": null,
                "taskmanager-id": null,
                "start-time": started,
                "end-time": end_time(job),
                "duration": duration(job, now),
                "metrics": io_metrics(std::iter::empty(), false),
            }),
        })
        .collect();
    let name = vertex.operators.iter().map(operator_name).collect::<Vec<_>>().join(" -> ");
    Some(json!({
        "id": vertex.id,
        "name": format!("{}: {name}", vertex.id),
        "parallelism": vertex.parallelism,
        "maxParallelism": vertex.max_parallelism,
        "status": aggregate_status(job, &live, vertex.parallelism),
        "now": now,
        "subtasks": subtasks,
        "metrics": io_metrics(live.values().copied(), live.len() as u32 == vertex.parallelism),
    }))
}

/// `GET /jobs/:jobid`. `runtime` is the leader's live view, when it could be had.
pub fn job_details(job: &Job, runtime: Option<&JobRuntime>, now: u64) -> Value {
    let graph = JobGraph::from_canonical_json(&job.spec_json).ok();
    let mut timestamps: BTreeMap<&str, u64> = BTreeMap::new();
    for change in &job.status_history {
        timestamps.entry(change.status.as_flink_str()).or_insert(change.at_ms);
    }
    let vertices: Vec<Value> = graph
        .iter()
        .flat_map(|g| g.vertices.iter())
        .map(|v| {
            let name = v.operators.iter().map(operator_name).collect::<Vec<_>>().join(" -> ");
            let live = live_subtasks(job, runtime, &v.id);
            let mut tasks: BTreeMap<&str, u32> = BTreeMap::new();
            for index in 0..v.parallelism {
                let state = live.get(&index).map_or(vertex_status(job.status), |s| s.status.state.as_flink_str());
                *tasks.entry(state).or_default() += 1;
            }
            json!({
                "id": v.id,
                "name": format!("{}: {name}", v.id),
                "parallelism": v.parallelism,
                "maxParallelism": v.max_parallelism,
                "status": aggregate_status(job, &live, v.parallelism),
                "start-time": start_time(job),
                "end-time": end_time(job),
                "duration": duration(job, now),
                "tasks": tasks,
                "metrics": io_metrics(live.values().copied(), live.len() as u32 == v.parallelism),
            })
        })
        .collect();
    let plan_nodes: Vec<Value> = graph
        .iter()
        .flat_map(|g| {
            g.vertices.iter().map(move |v| {
                let inputs: Vec<Value> = v
                    .inputs
                    .iter()
                    .map(|e| {
                        let edge = &g.edges[*e];
                        json!({"id": g.vertices[edge.from].id, "ship_strategy": format!("{:?}", edge.partitioning).to_uppercase()})
                    })
                    .collect();
                json!({"id": v.id, "parallelism": v.parallelism, "description": v.id, "inputs": inputs})
            })
        })
        .collect();
    json!({
        "jid": job.id,
        "name": job.name,
        "isStoppable": false,
        "state": job.status.as_flink_str(),
        "job-type": "STREAMING",
        "start-time": start_time(job),
        "end-time": end_time(job),
        "duration": duration(job, now),
        "maxParallelism": graph.as_ref().map_or(-1, |g| g.vertices.iter().map(|v| v.max_parallelism).max().unwrap_or(0) as i64),
        "now": now,
        "timestamps": timestamps,
        "vertices": vertices,
        "status-counts": task_counts(job, graph.as_ref().map_or(0, JobGraph::subtask_count)),
        "plan": {"jid": job.id, "name": job.name, "type": "STREAMING", "nodes": plan_nodes},
        // Ours: the replicated runtime facts Flink has no field for.
        "epoch": job.epoch,
        "attempt": job.deployment.as_ref().map_or(0, |d| d.attempt),
        "restarts": job.restarts,
    })
}

/// `GET /jobs/:jobid/config`.
pub fn job_config(job: &Job) -> Value {
    let graph = JobGraph::from_canonical_json(&job.spec_json).ok();
    let restart =
        graph.as_ref().map(|g| crate::job_master::restart::RestartPolicy::new(&g.restart_strategy(), 0).describe());
    json!({
        "jid": job.id,
        "name": job.name,
        "execution-config": {
            "execution-mode": "PIPELINED",
            "restart-strategy": restart.unwrap_or_default(),
            "job-parallelism": graph.as_ref().map_or(1, |g| g.spec.parallelism),
            "object-reuse-mode": false,
            "user-config": serde_json::from_str::<Value>(&job.spec_json).unwrap_or(Value::Null),
        },
    })
}

/// `GET /jobs/:jobid/exceptions`: Flink's exception history, newest first.
pub fn job_exceptions(job: &Job) -> Value {
    let entries: Vec<Value> = job
        .exceptions
        .iter()
        .rev()
        .map(|e| {
            json!({
                "exceptionName": if e.restarting { "JobFailure (restarting)" } else { "JobFailure" },
                "stacktrace": e.error,
                "timestamp": e.at_ms,
                "taskName": null,
                "endpoint": null,
                "taskManagerId": null,
                "failureLabels": {},
                "concurrentExceptions": [],
            })
        })
        .collect();
    let root = job.result.as_ref().and_then(|r| r.error.clone());
    json!({
        "exceptionHistory": {"entries": entries, "truncated": false},
        "root-exception": root,
        "timestamp": job.result.as_ref().map(|r| r.at_ms),
        "all-exceptions": [],
        "truncated": false,
    })
}

fn checkpoint_entry(c: &CompletedCheckpoint, savepoint: bool) -> Value {
    json!({
        "className": "completed",
        "id": c.id,
        "status": "COMPLETED",
        "is_savepoint": savepoint,
        "trigger_timestamp": c.trigger_at_ms,
        "latest_ack_timestamp": c.completed_at_ms,
        "state_size": c.state_size_bytes,
        "checkpointed_size": c.state_size_bytes,
        "end_to_end_duration": c.completed_at_ms.saturating_sub(c.trigger_at_ms),
        "external_path": c.external_path,
        "discarded": false,
    })
}

/// `GET /jobs/:jobid/checkpoints`: counts, summary, latest and history of the retained checkpoints.
pub fn job_checkpoints(job: &Job) -> Value {
    let durations: Vec<u64> =
        job.checkpoints.iter().map(|c| c.completed_at_ms.saturating_sub(c.trigger_at_ms)).collect();
    let sizes: Vec<u64> = job.checkpoints.iter().map(|c| c.state_size_bytes).collect();
    let stats = |v: &[u64]| {
        let min = v.iter().min().copied().unwrap_or(0);
        let max = v.iter().max().copied().unwrap_or(0);
        let avg = if v.is_empty() { 0 } else { v.iter().sum::<u64>() / v.len() as u64 };
        json!({"min": min, "max": max, "avg": avg})
    };
    let latest_savepoint = job.savepoints.last().map(|s| {
        json!({"id": s.checkpoint_id, "status": "COMPLETED", "is_savepoint": true, "external_path": s.path,
               "latest_ack_timestamp": s.at_ms})
    });
    json!({
        "counts": {
            "restored": i32::from(job.deployment.as_ref().is_some_and(|d| d.restored_from.is_some())),
            "total": job.last_checkpoint_id,
            "in_progress": 0,
            "completed": job.checkpoints.len(),
            "failed": 0,
        },
        "summary": {"state_size": stats(&sizes), "end_to_end_duration": stats(&durations), "checkpointed_size": stats(&sizes)},
        "latest": {
            "completed": job.checkpoints.back().map(|c| checkpoint_entry(c, false)),
            "savepoint": latest_savepoint,
            "failed": null,
            "restored": job.deployment.as_ref().and_then(|d| d.restored_from.clone()).map(|p| json!({"external_path": p})),
        },
        "history": job.checkpoints.iter().rev().map(|c| checkpoint_entry(c, false)).collect::<Vec<_>>(),
    })
}

/// `GET /jobs/:jobid/checkpoints/config`.
pub fn checkpoint_config(job: &Job) -> Value {
    let graph = JobGraph::from_canonical_json(&job.spec_json).ok();
    let spec = graph.as_ref().map(|g| g.spec.checkpoints.clone()).unwrap_or_default();
    let config = CheckpointConfig::from_spec(&spec);
    json!({
        "mode": if config.is_some() { "exactly_once" } else { "none" },
        "interval": config.as_ref().map_or(-1, |c| c.interval.as_millis() as i64),
        "timeout": spec.timeout.0,
        "min_pause": spec.min_pause.0,
        "max_concurrent": 1,
        "tolerable_failed_checkpoints": spec.tolerable_failed,
        "externalization": {"enabled": true, "delete_on_cancellation": false},
        "unaligned_checkpoints": false,
        "checkpoint_storage": "FileSystemCheckpointStorage",
        "retained": spec.retained,
    })
}

/// `GET /jobs/:jobid/checkpoints/details/:checkpointid`, for a retained checkpoint.
pub fn checkpoint_details(job: &Job, id: u64) -> Option<Value> {
    job.checkpoints.iter().find(|c| c.id == id).map(|c| checkpoint_entry(c, false))
}

/// `GET /jobs/:jobid/savepoints/:triggerid`: Flink's asynchronous operation result.
pub fn savepoint_status(request: &SavepointRequest) -> Value {
    match &request.outcome {
        None => json!({"status": {"id": "IN_PROGRESS"}}),
        Some(SavepointOutcome::Completed { savepoint }) => {
            json!({"status": {"id": "COMPLETED"}, "operation": {"location": savepoint.path}})
        }
        Some(SavepointOutcome::Failed { error }) => json!({
            "status": {"id": "COMPLETED"},
            "operation": {"failure-cause": super::java::failure_cause("SavepointFailure", error)},
        }),
    }
}

/// `GET /savepoint-disposal/:triggerid`: Flink's asynchronous operation result, whose operation is empty on success
/// and carries the failure cause (in the shape of [`savepoint_status`]'s) on failure.
pub fn savepoint_disposal_status(disposal: &SavepointDisposal) -> Value {
    match &disposal.outcome {
        None => json!({"status": {"id": "IN_PROGRESS"}, "operation": {}}),
        Some(DisposalOutcome::Disposed) => json!({"status": {"id": "COMPLETED"}, "operation": {}}),
        Some(DisposalOutcome::Failed { message }) => json!({
            "status": {"id": "COMPLETED"},
            "operation": {"failure-cause": {"class": "SavepointDisposalFailure", "stack-trace": message, "serialized-throwable": null}},
        }),
    }
}

/// One TaskManager, as `GET /taskmanagers` lists it.
pub fn task_manager(tm: &TaskManagerInfo, free: u32, now: u64) -> Value {
    json!({
        "id": tm.id,
        "path": tm.address,
        "dataPort": -1,
        "jmxPort": -1,
        "timeSinceLastHeartbeat": now.saturating_sub(tm.updated_at_ms),
        "slotsNumber": tm.slots,
        "freeSlots": free,
        "zone": tm.zone,
        "registeredAt": tm.registered_at_ms,
        "hardware": {"cpuCores": -1, "physicalMemory": -1, "freeMemory": -1, "managedMemory": -1},
    })
}

/// `GET /cluster` (ours): replicas, leader, term, each replica's zone, log position and lag, and the most recent
/// leader changes (newest first), from the replicated history.
pub fn cluster(
    node: &ReplicaNode,
    statuses: &BTreeMap<NodeId, Result<ReplicaStatus, ClusterError>>,
    changes: &VecDeque<LeaderChange>,
) -> Value {
    let metrics = node.metrics();
    let leader_commit = statuses
        .values()
        .filter_map(|s| s.as_ref().ok())
        .find(|s| Some(s.node_id) == metrics.current_leader)
        .map(|s| s.committed_index);
    let members = node.members();
    let replicas: Vec<Value> = statuses
        .iter()
        .map(|(id, status)| {
            let node = members.get(id);
            match status {
                Ok(s) => json!({
                    "id": id,
                    "raft_addr": node.map(|n| n.raft_addr.clone()),
                    "api_addr": node.map(|n| n.api_addr.clone()),
                    "reachable": true,
                    "state": s.state,
                    "term": s.term,
                    "leader": s.leader,
                    "last_log_index": s.last_log_index,
                    "committed_index": s.committed_index,
                    "applied_index": s.applied_index,
                    "lag": leader_commit.map(|c| c.saturating_sub(s.applied_index)),
                    "snapshot_index": s.snapshot_index,
                    "leader_services_active": s.leader_services_active,
                    "leader_activations": s.leader_activations,
                    "ms_since_leader_contact": s.ms_since_leader_contact,
                    "data_dir_bytes": s.data_dir_bytes,
                    "zone": s.zone,
                }),
                Err(e) => json!({
                    "id": id,
                    "raft_addr": node.map(|n| n.raft_addr.clone()),
                    "api_addr": node.map(|n| n.api_addr.clone()),
                    "reachable": false,
                    "error": e.to_string(),
                }),
            }
        })
        .collect();
    json!({
        "served_by": node.id,
        "leader": metrics.current_leader,
        "term": metrics.current_term,
        "replicas": replicas,
        "leader_changes": changes.iter().rev().map(|c| json!({
            "term": c.term,
            "leader": c.leader,
            "previous": c.previous,
            "at": c.at_ms,
            "leaderless_ms": c.leaderless_ms,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disposal_status_takes_flinks_asynchronous_operation_shape() {
        let mut disposal = SavepointDisposal {
            path: "/sp/1".into(),
            job_id: None,
            requested_at_ms: 1,
            requested_index: 1,
            outcome: None,
            resolved_at_ms: None,
        };
        assert_eq!(savepoint_disposal_status(&disposal), json!({"status": {"id": "IN_PROGRESS"}, "operation": {}}));
        disposal.outcome = Some(DisposalOutcome::Disposed);
        assert_eq!(savepoint_disposal_status(&disposal), json!({"status": {"id": "COMPLETED"}, "operation": {}}));
        disposal.outcome = Some(DisposalOutcome::Failed { message: "denied".into() });
        let failed = savepoint_disposal_status(&disposal);
        assert_eq!(failed["status"]["id"], "COMPLETED");
        assert_eq!(failed["operation"]["failure-cause"]["stack-trace"], "denied");
        // The same failure shape as a savepoint's.
        let request = SavepointRequest {
            target_dir: None,
            terminate: false,
            requested_at_ms: 1,
            outcome: Some(SavepointOutcome::Failed { error: "denied".into() }),
            resolved_at_ms: Some(2),
        };
        let keys =
            |v: &Value| v["operation"]["failure-cause"].as_object().map(|o| o.keys().cloned().collect::<Vec<_>>());
        assert_eq!(keys(&failed), keys(&savepoint_status(&request)));
    }
}
