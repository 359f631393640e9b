//! `jm job submit|list|get|cancel`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::output::{print_json, table, timestamp, Format};
use super::ClientArgs;
use crate::api::grpc::pb;

/// Job commands.
#[derive(Debug, clap::Subcommand)]
pub enum JobCommand {
    /// Submit a job spec (YAML or JSON).
    Submit {
        /// The spec file; `-` reads standard input.
        file: PathBuf,
        /// A key that makes retries of this submission safe: the same key never creates a second job.
        /// Defaults to a fresh random key (used for this command's own retries).
        #[arg(long)]
        idempotency_key: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List jobs, newest first.
    List {
        /// Read from the first reachable replica's applied state instead of through the leader.
        #[arg(long)]
        stale: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show one job.
    Get {
        /// The job id.
        id: String,
        /// Read from the first reachable replica's applied state instead of through the leader.
        #[arg(long)]
        stale: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel a job.
    Cancel {
        /// The job id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn consistency(stale: bool) -> i32 {
    if stale {
        pb::ReadConsistency::Stale as i32
    } else {
        pb::ReadConsistency::Linearizable as i32
    }
}

fn read_spec(file: &PathBuf) -> Result<Vec<u8>> {
    if file.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).context("reading the spec from stdin")?;
        return Ok(buf);
    }
    std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))
}

/// Runs a job command.
pub async fn run(cmd: JobCommand) -> Result<()> {
    match cmd {
        JobCommand::Submit { file, idempotency_key, client } => {
            let spec = read_spec(&file)?;
            let key = idempotency_key.unwrap_or_else(crate::dispatcher::new_job_id);
            let reply = client
                .client()
                .call(|mut c| {
                    let request = pb::SubmitJobRequest { spec: spec.clone(), idempotency_key: key.clone() };
                    async move { c.submit_job(request).await }
                })
                .await?;
            let write = reply.write.unwrap_or_default();
            match client.output {
                Format::Json => print_json(&json!({
                    "job_id": reply.job_id, "created": reply.created, "idempotency_key": key,
                    "log_index": write.log_index, "served_by": write.served_by, "received_by": write.received_by,
                })),
                Format::Table => {
                    let verb = if reply.created { "submitted" } else { "already submitted" };
                    println!(
                        "Job {} {verb} (log index {}, leader {}).",
                        reply.job_id, write.log_index, write.served_by
                    );
                }
            }
        }
        JobCommand::List { stale, client } => {
            let reply = client
                .client()
                .call(|mut c| async move { c.list_jobs(pb::ListJobsRequest { consistency: consistency(stale) }).await })
                .await?;
            match client.output {
                Format::Json => print_json(&json!({
                    "jobs": reply.jobs.iter().map(summary_json).collect::<Vec<_>>(),
                    "read": read_json(reply.read.as_ref()),
                })),
                Format::Table if reply.jobs.is_empty() => println!("No jobs."),
                Format::Table => {
                    let rows: Vec<Vec<String>> = reply
                        .jobs
                        .iter()
                        .map(|j| vec![j.job_id.clone(), j.name.clone(), j.status.clone(), timestamp(j.submitted_at_ms)])
                        .collect();
                    println!("{}", table(&["JOB ID", "NAME", "STATUS", "SUBMITTED (UTC)"], &rows));
                }
            }
        }
        JobCommand::Get { id, stale, client } => {
            let reply = client
                .client()
                .call(|mut c| {
                    let request = pb::GetJobRequest { job_id: id.clone(), consistency: consistency(stale) };
                    async move { c.get_job(request).await }
                })
                .await?;
            let job = reply.job.unwrap_or_default();
            match client.output {
                Format::Json => print_json(&job_json(&job, reply.read.as_ref())),
                Format::Table => print_job(&job),
            }
        }
        JobCommand::Cancel { id, client } => {
            let reply = client
                .client()
                .call(|mut c| {
                    let request = pb::CancelJobRequest { job_id: id.clone() };
                    async move { c.cancel_job(request).await }
                })
                .await?;
            match client.output {
                Format::Json => print_json(&json!({"job_id": reply.job_id, "status": reply.status})),
                Format::Table => println!("Job {} is {}.", reply.job_id, reply.status),
            }
        }
    }
    Ok(())
}

fn print_job(job: &pb::Job) {
    let rows = vec![
        vec!["Job ID".into(), job.job_id.clone()],
        vec!["Name".into(), job.name.clone()],
        vec!["Status".into(), job.status.clone()],
        vec!["Submitted".into(), timestamp(job.submitted_at_ms)],
        vec!["Updated".into(), timestamp(job.updated_at_ms)],
        vec!["JobMaster epoch".into(), job.epoch.to_string()],
        vec!["Last checkpoint id".into(), job.last_checkpoint_id.to_string()],
        vec![
            "Retained checkpoints".into(),
            format!("{} (max {})", job.checkpoints.len(), job.max_retained_checkpoints),
        ],
        vec!["Savepoints".into(), job.savepoints.len().to_string()],
    ];
    println!("{}", table(&["FIELD", "VALUE"], &rows));
    if !job.error.is_empty() {
        println!("Error: {}", job.error);
    }
    println!("\nStatus history:");
    let history: Vec<Vec<String>> =
        job.history.iter().map(|h| vec![timestamp(h.at_ms), h.status.clone(), h.reason.clone()]).collect();
    println!("{}", table(&["AT (UTC)", "STATUS", "REASON"], &history));
}

fn summary_json(j: &pb::JobSummary) -> Value {
    json!({
        "job_id": j.job_id, "name": j.name, "status": j.status, "submitted_at_ms": j.submitted_at_ms,
        "updated_at_ms": j.updated_at_ms, "epoch": j.epoch, "last_checkpoint_id": j.last_checkpoint_id,
    })
}

/// A read's provenance as JSON.
pub fn read_json(r: Option<&pb::ReadInfo>) -> Value {
    let r = r.cloned().unwrap_or_default();
    json!({
        "served_by": r.served_by,
        "consistency": if r.consistency == pb::ReadConsistency::Stale as i32 { "stale" } else { "linearizable" },
        "applied_index": r.applied_index, "read_index": r.read_index,
        "ms_since_leader_contact": r.ms_since_leader_contact, "unapplied_entries": r.unapplied_entries,
    })
}

fn job_json(j: &pb::Job, read: Option<&pb::ReadInfo>) -> Value {
    let spec: Value = serde_json::from_str(&j.spec_json).unwrap_or(Value::String(j.spec_json.clone()));
    json!({
        "job_id": j.job_id, "name": j.name, "status": j.status, "epoch": j.epoch,
        "submitted_at_ms": j.submitted_at_ms, "updated_at_ms": j.updated_at_ms, "submitted_index": j.submitted_index,
        "spec": spec, "max_retained_checkpoints": j.max_retained_checkpoints,
        "last_checkpoint_id": j.last_checkpoint_id,
        "checkpoints": j.checkpoints.iter().map(|c| json!({
            "id": c.id, "trigger_at_ms": c.trigger_at_ms, "completed_at_ms": c.completed_at_ms,
            "external_path": c.external_path, "state_size_bytes": c.state_size_bytes,
        })).collect::<Vec<_>>(),
        "savepoints": j.savepoints.iter().map(|s| json!({
            "checkpoint_id": s.checkpoint_id, "path": s.path, "at_ms": s.at_ms,
        })).collect::<Vec<_>>(),
        "history": j.history.iter().map(|h| json!({
            "status": h.status, "at_ms": h.at_ms, "reason": h.reason,
        })).collect::<Vec<_>>(),
        "error": if j.error.is_empty() { Value::Null } else { Value::String(j.error.clone()) },
        "metadata_keys": j.metadata_keys,
        "read": read_json(read),
    })
}
