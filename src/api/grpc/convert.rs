//! Conversions between domain values and protobuf messages, one function per type.

use super::pb;
use crate::cluster::{Consistency, ReadInfo, ReplicaStatus, Written};
use crate::leader::runtime::{JobRuntime, SubtaskRuntime};
use crate::raft::command::{CompletedCheckpoint, DisposalOutcome, Savepoint, SavepointOutcome};
use crate::raft::state::{Job, SavepointDisposal, SavepointRequest, TaskManagerInfo};
use crate::taskmanager::protocol::{SubtaskStatus, TaskState};

/// The read consistency a request asks for.
pub fn consistency(value: i32) -> Consistency {
    match pb::ReadConsistency::try_from(value) {
        Ok(pb::ReadConsistency::Stale) => Consistency::Stale,
        _ => Consistency::Linearizable,
    }
}

/// Who served a read.
pub fn read_info(r: &ReadInfo) -> pb::ReadInfo {
    pb::ReadInfo {
        served_by: r.served_by,
        consistency: match r.consistency {
            Consistency::Linearizable => pb::ReadConsistency::Linearizable,
            Consistency::Stale => pb::ReadConsistency::Stale,
        } as i32,
        applied_index: r.applied_index,
        read_index: r.read_index,
        ms_since_leader_contact: r.ms_since_leader_contact,
        unapplied_entries: r.unapplied_entries,
    }
}

/// Who committed a write.
pub fn write_info(received_by: u64, w: &Written) -> pb::WriteInfo {
    pb::WriteInfo { received_by, served_by: w.leader, log_index: w.index }
}

fn checkpoint(c: &CompletedCheckpoint) -> pb::Checkpoint {
    pb::Checkpoint {
        id: c.id,
        trigger_at_ms: c.trigger_at_ms,
        completed_at_ms: c.completed_at_ms,
        external_path: c.external_path.clone(),
        state_size_bytes: c.state_size_bytes,
    }
}

fn savepoint(s: &Savepoint) -> pb::Savepoint {
    pb::Savepoint { checkpoint_id: s.checkpoint_id, path: s.path.clone(), at_ms: s.at_ms }
}

/// A whole job.
pub fn job(j: &Job) -> pb::Job {
    pb::Job {
        job_id: j.id.clone(),
        name: j.name.clone(),
        status: j.status.as_flink_str().to_string(),
        epoch: j.epoch,
        submitted_at_ms: j.submitted_at_ms,
        updated_at_ms: j.updated_at_ms,
        spec_json: j.spec_json.clone(),
        max_retained_checkpoints: j.max_retained_checkpoints,
        last_checkpoint_id: j.last_checkpoint_id,
        checkpoints: j.checkpoints.iter().map(checkpoint).collect(),
        savepoints: j.savepoints.iter().map(savepoint).collect(),
        history: j
            .status_history
            .iter()
            .map(|h| pb::StatusChange {
                status: h.status.as_flink_str().to_string(),
                at_ms: h.at_ms,
                reason: h.reason.clone().unwrap_or_default(),
            })
            .collect(),
        error: j.result.as_ref().and_then(|r| r.error.clone()).unwrap_or_default(),
        metadata_keys: j.metadata.len() as u32,
        submitted_index: j.submitted_index,
        restarts: j.restarts,
        attempt: j.deployment.as_ref().map_or(0, |d| d.attempt),
        slots: j
            .deployment
            .iter()
            .flat_map(|d| d.components.iter().flat_map(|c| c.slots.iter().map(|s| s.to_string())))
            .collect(),
        exceptions: j
            .exceptions
            .iter()
            .map(|e| pb::JobException { at_ms: e.at_ms, error: e.error.clone(), restarting: e.restarting })
            .collect(),
        restored_from: j.deployment.as_ref().and_then(|d| d.restored_from.clone()).unwrap_or_default(),
    }
}

/// A savepoint request's state.
pub fn savepoint_request(r: &SavepointRequest, read: &ReadInfo) -> pb::GetSavepointReply {
    let (status, path, checkpoint_id, error) = match &r.outcome {
        None => ("IN_PROGRESS", String::new(), 0, String::new()),
        Some(SavepointOutcome::Completed { savepoint }) => {
            ("COMPLETED", savepoint.path.clone(), savepoint.checkpoint_id, String::new())
        }
        Some(SavepointOutcome::Failed { error }) => ("FAILED", String::new(), 0, error.clone()),
    };
    pb::GetSavepointReply {
        status: status.to_string(),
        path,
        checkpoint_id,
        error,
        terminate: r.terminate,
        read: Some(read_info(read)),
    }
}

/// A savepoint disposal's state.
pub fn savepoint_disposal(d: &SavepointDisposal, read: &ReadInfo) -> pb::GetSavepointDisposalReply {
    let (status, error) = match &d.outcome {
        None => ("IN_PROGRESS", String::new()),
        Some(DisposalOutcome::Disposed) => ("COMPLETED", String::new()),
        Some(DisposalOutcome::Failed { message }) => ("FAILED", message.clone()),
    };
    pb::GetSavepointDisposalReply {
        status: status.to_string(),
        path: d.path.clone(),
        job_id: d.job_id.clone().unwrap_or_default(),
        error,
        requested_at_ms: d.requested_at_ms,
        resolved_at_ms: d.resolved_at_ms.unwrap_or_default(),
        read: Some(read_info(read)),
    }
}

/// A TaskManager's line in a listing.
pub fn task_manager(tm: &TaskManagerInfo, free_slots: u32) -> pb::TaskManagerInfo {
    pb::TaskManagerInfo {
        tm_id: tm.id.clone(),
        address: tm.address.clone(),
        slots: tm.slots,
        free_slots,
        zone: tm.zone.clone().unwrap_or_default(),
        registered_at_ms: tm.registered_at_ms,
        updated_at_ms: tm.updated_at_ms,
    }
}

/// A job's line in a listing.
pub fn job_summary(j: &Job) -> pb::JobSummary {
    pb::JobSummary {
        job_id: j.id.clone(),
        name: j.name.clone(),
        status: j.status.as_flink_str().to_string(),
        submitted_at_ms: j.submitted_at_ms,
        updated_at_ms: j.updated_at_ms,
        epoch: j.epoch,
        last_checkpoint_id: j.last_checkpoint_id,
        latest_completed_checkpoint_id: j.checkpoints.back().map_or(0, |c| c.id),
        restarts: j.restarts,
        attempt: j.deployment.as_ref().map_or(0, |d| d.attempt),
    }
}

/// One replica's status, or why it did not answer.
pub fn replica_status(
    id: u64,
    status: Result<&ReplicaStatus, String>,
    fallback: Option<&crate::raft::Node>,
) -> pb::ReplicaStatus {
    match status {
        Ok(s) => pb::ReplicaStatus {
            node_id: s.node_id,
            raft_addr: s.node.raft_addr.clone(),
            api_addr: s.node.api_addr.clone(),
            reachable: true,
            error: String::new(),
            state: s.state.clone(),
            term: s.term,
            leader: s.leader,
            last_log_index: s.last_log_index,
            committed_index: s.committed_index,
            applied_index: s.applied_index,
            snapshot_index: s.snapshot_index,
            purged_index: s.purged_index,
            leader_services_active: s.leader_services_active,
            leader_activations: s.leader_activations,
            data_dir_bytes: s.data_dir_bytes,
            ms_since_leader_contact: s.ms_since_leader_contact,
        },
        Err(error) => pb::ReplicaStatus {
            node_id: id,
            raft_addr: fallback.map(|n| n.raft_addr.clone()).unwrap_or_default(),
            api_addr: fallback.map(|n| n.api_addr.clone()).unwrap_or_default(),
            reachable: false,
            error,
            ..Default::default()
        },
    }
}

/// A subtask's live figures as a message.
pub fn subtask_runtime(s: &SubtaskRuntime) -> pb::SubtaskRuntime {
    pb::SubtaskRuntime {
        vertex: s.status.vertex.clone(),
        subtask: s.status.subtask,
        attempt: s.attempt,
        state: s.status.state.as_flink_str().to_string(),
        tm_id: s.tm_id.clone(),
        records_in: s.status.records_in,
        records_out: s.status.records_out,
        busy_ms: s.status.busy_ms,
        records_in_per_second: s.records_in_per_second,
        records_out_per_second: s.records_out_per_second,
        busy_ratio: s.busy_ratio,
        report_age_ms: s.report_age_ms,
    }
}

/// A job's live figures from a message; subtasks in a state this binary does not know are dropped.
pub fn job_runtime_from(subtasks: Vec<pb::SubtaskRuntime>) -> JobRuntime {
    let subtasks = subtasks
        .into_iter()
        .filter_map(|s| {
            Some(SubtaskRuntime {
                status: SubtaskStatus {
                    vertex: s.vertex,
                    subtask: s.subtask,
                    state: TaskState::from_flink_str(&s.state)?,
                    records_in: s.records_in,
                    records_out: s.records_out,
                    busy_ms: s.busy_ms,
                },
                tm_id: s.tm_id,
                attempt: s.attempt,
                records_in_per_second: s.records_in_per_second,
                records_out_per_second: s.records_out_per_second,
                busy_ratio: s.busy_ratio,
                report_age_ms: s.report_age_ms,
            })
        })
        .collect();
    JobRuntime { subtasks }
}
