//! `jm job submit|list|get|cancel|savepoint|wait|stop|dispose-savepoint` and `jm taskmanagers`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::output::{print_json, table, timestamp, Format};
use super::ClientArgs;
use crate::api::grpc::pb;

const EXAMPLES: &str = "
  # Submit a job, then wait until it runs
  jm job submit docs/examples/fraud-detection.yaml
  jm job wait <JOB_ID> --state RUNNING

  # Every job with its status, newest first
  jm job list
";

const SUBMIT_EXAMPLES: &str = "
  # Submit a spec through any replica (followers forward it to the leader)
  jm job submit docs/examples/fraud-detection.yaml

  # Read the spec from standard input; retrying with the same key never creates a second job
  jm job submit - --idempotency-key nightly-2024-06-01 < job.yaml

  # Print the new job's id, log index and leader as JSON
  jm job submit job.json -o json
";

const LIST_EXAMPLES: &str = "
  # Every job, newest first
  jm job list

  # From one replica's own state, when no leader is reachable (says how far behind it may be)
  jm job list --stale --cluster 10.0.0.2:6123

  # The ids of running jobs
  jm job list -o json | jq -r '.jobs[] | select(.status == \"RUNNING\") | .job_id'
";

const GET_EXAMPLES: &str = "
  # Status, attempt, restarts, slots, checkpoints and exceptions of one job
  jm job get <JOB_ID>

  # The same as JSON, from one replica's own state (no leader needed)
  jm job get <JOB_ID> --stale -o json
";

const CANCEL_EXAMPLES: &str = "
  # Cancel a job: its tasks stop and it ends CANCELED
  jm job cancel <JOB_ID>

  # Through a given replica
  jm job cancel <JOB_ID> --cluster 10.0.0.2:6123
";

const SAVEPOINT_EXAMPLES: &str = "
  # Take a savepoint into the cluster's savepoint directory and print its path
  jm job savepoint <JOB_ID>

  # Into a directory shared with the TaskManagers, waiting up to 5 minutes
  jm job savepoint <JOB_ID> --dir /shared/savepoints --timeout 300

  # Only record the request and print its id
  jm job savepoint <JOB_ID> --no-wait
";

const DISPOSE_EXAMPLES: &str = "
  # Delete a savepoint no job needs any more, and wait until the leader has
  jm job dispose-savepoint /shared/savepoints/savepoint-6f1c2a-7

  # Only record the request; poll it later through GET /savepoint-disposal/<id>
  jm job dispose-savepoint /shared/savepoints/savepoint-6f1c2a-7 --no-wait -o json
";

const WAIT_EXAMPLES: &str = "
  # Wait up to a minute for a job to run
  jm job wait <JOB_ID> --state RUNNING --timeout 60

  # In a script: block until a bounded job finishes (exit code 1 if it fails or is canceled first)
  jm job wait <JOB_ID> --state FINISHED --timeout 3600
";

const STOP_EXAMPLES: &str = "
  # Stop a job with a savepoint and print the savepoint's path
  jm job stop <JOB_ID>

  # Into a shared directory; restore later with `savepoint: {path: ...}` in a spec
  jm job stop <JOB_ID> --dir /shared/savepoints --timeout 300
";

/// Job commands.
#[derive(Debug, clap::Subcommand)]
#[command(after_long_help = super::examples(EXAMPLES))]
pub enum JobCommand {
    /// Submit a job spec (YAML or JSON).
    #[command(after_long_help = super::examples(SUBMIT_EXAMPLES))]
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
    #[command(after_long_help = super::examples(LIST_EXAMPLES))]
    List {
        /// Read from the first reachable replica's applied state instead of through the leader.
        #[arg(long)]
        stale: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show one job.
    #[command(after_long_help = super::examples(GET_EXAMPLES))]
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
    #[command(after_long_help = super::examples(CANCEL_EXAMPLES))]
    Cancel {
        /// The job id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Take a savepoint of a running job and print its path.
    #[command(after_long_help = super::examples(SAVEPOINT_EXAMPLES))]
    Savepoint {
        /// The job id.
        id: String,
        /// Directory to write it under (absolute, shared with the TaskManagers); default: the cluster's.
        #[arg(long)]
        dir: Option<String>,
        /// Return once the request is recorded instead of waiting for the savepoint.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait, in seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Wait until a job reaches a status, showing its progress; fails if it ends in another status first.
    #[command(after_long_help = super::examples(WAIT_EXAMPLES))]
    Wait {
        /// The job id.
        id: String,
        /// The status to wait for (Flink's names: RUNNING, FINISHED, CANCELED, ...).
        #[arg(long, default_value = "RUNNING")]
        state: String,
        /// How long to wait, in seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a savepoint (or a retained checkpoint of an ended job) and wait until it is gone.
    ///
    /// The replica checks that the path holds a savepoint that no job still going restores from; the leader then
    /// deletes the directory (if that leader dies first, the next one does).
    #[command(after_long_help = super::examples(DISPOSE_EXAMPLES))]
    DisposeSavepoint {
        /// The savepoint's directory, as `jm job savepoint` printed it.
        path: String,
        /// Return once the request is recorded instead of waiting for the directory to be deleted.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait, in seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop a job with a savepoint (it ends FINISHED) and print the savepoint's path, to restore from later.
    #[command(after_long_help = super::examples(STOP_EXAMPLES))]
    Stop {
        /// The job id.
        id: String,
        /// Directory to write the savepoint under; default: the cluster's.
        #[arg(long)]
        dir: Option<String>,
        /// How long to wait, in seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
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
        JobCommand::Savepoint { id, dir, no_wait, timeout, client } => {
            savepoint(id, dir, false, !no_wait, timeout, client).await?;
        }
        JobCommand::Wait { id, state, timeout, client } => wait(id, state, timeout, client).await?,
        JobCommand::DisposeSavepoint { path, no_wait, timeout, client } => {
            dispose_savepoint(path, !no_wait, timeout, client).await?;
        }
        JobCommand::Stop { id, dir, timeout, client } => {
            savepoint(id, dir, true, true, timeout, client).await?;
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

/// Triggers a savepoint (stopping the job when `terminate`) and waits for its outcome.
async fn savepoint(
    id: String,
    dir: Option<String>,
    terminate: bool,
    wait: bool,
    timeout: u64,
    client: ClientArgs,
) -> Result<()> {
    let cluster = client.client();
    let request_id = crate::dispatcher::new_request_id();
    let request = pb::TriggerSavepointRequest {
        job_id: id.clone(),
        target_dir: dir.unwrap_or_default(),
        terminate,
        request_id: request_id.clone(),
    };
    cluster
        .call(|mut c| {
            let request = request.clone();
            async move { c.trigger_savepoint(request).await }
        })
        .await?;
    if !wait {
        match client.output {
            Format::Json => print_json(&json!({"job_id": id, "request_id": request_id, "status": "IN_PROGRESS"})),
            Format::Table => println!("Savepoint {request_id} of job {id} requested."),
        }
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(timeout);
    loop {
        let query = pb::GetSavepointRequest { job_id: id.clone(), request_id: request_id.clone(), consistency: 0 };
        let reply = cluster
            .call(|mut c| {
                let query = query.clone();
                async move { c.get_savepoint(query).await }
            })
            .await?;
        match reply.status.as_str() {
            "COMPLETED" => {
                match client.output {
                    Format::Json => print_json(&json!({
                        "job_id": id, "request_id": request_id, "status": "COMPLETED", "path": reply.path,
                        "checkpoint_id": reply.checkpoint_id, "stopped": terminate,
                    })),
                    Format::Table if terminate => println!("Job {id} stopped with savepoint {}", reply.path),
                    Format::Table => println!("Savepoint of job {id} completed: {}", reply.path),
                }
                return Ok(());
            }
            "FAILED" => anyhow::bail!("savepoint of job {id} failed: {}", reply.error),
            _ if tokio::time::Instant::now() >= deadline => {
                anyhow::bail!("savepoint {request_id} of job {id} still in progress after {timeout} s")
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
}

/// Asks for a savepoint's disposal and waits for its outcome.
async fn dispose_savepoint(path: String, wait: bool, timeout: u64, client: ClientArgs) -> Result<()> {
    let cluster = client.client();
    let request = pb::DisposeSavepointRequest { path: path.clone() };
    let reply = cluster
        .call(|mut c| {
            let request = request.clone();
            async move { c.dispose_savepoint(request).await }
        })
        .await?;
    let request_id = reply.request_id;
    if !wait {
        match client.output {
            Format::Json => print_json(&json!({"path": path, "request_id": request_id, "status": "IN_PROGRESS"})),
            Format::Table => println!("Disposal {request_id} of savepoint {path} requested."),
        }
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(timeout);
    loop {
        let query = pb::GetSavepointDisposalRequest { request_id: request_id.clone(), consistency: 0 };
        let reply = cluster
            .call(|mut c| {
                let query = query.clone();
                async move { c.get_savepoint_disposal(query).await }
            })
            .await?;
        match reply.status.as_str() {
            "COMPLETED" => {
                match client.output {
                    Format::Json => print_json(&json!({
                        "path": path, "request_id": request_id, "status": "COMPLETED",
                        "job_id": if reply.job_id.is_empty() { Value::Null } else { Value::String(reply.job_id) },
                    })),
                    Format::Table => println!("Savepoint {path} disposed of."),
                }
                return Ok(());
            }
            "FAILED" => anyhow::bail!("disposal of savepoint {path} failed: {}", reply.error),
            _ if tokio::time::Instant::now() >= deadline => {
                anyhow::bail!("disposal {request_id} of savepoint {path} still in progress after {timeout} s")
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
}

/// Polls a job until it reaches `state`, printing each status change on one progress line (stderr).
async fn wait(id: String, state: String, timeout: u64, client: ClientArgs) -> Result<()> {
    let wanted = state.to_ascii_uppercase();
    if crate::raft::JobStatus::from_flink_str(&wanted).is_none() {
        anyhow::bail!(
            "unknown status {state:?}; use one of Flink's: CREATED, RUNNING, FINISHED, CANCELED, FAILED, ..."
        );
    }
    let cluster = client.client();
    let started = tokio::time::Instant::now();
    let mut last = String::new();
    // The progress line is for a person at a terminal; a script gets only the outcome.
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let end_line = || {
        if progress {
            eprintln!();
        }
    };
    loop {
        let request = pb::GetJobRequest { job_id: id.clone(), consistency: 0 };
        let job = cluster
            .call(|mut c| {
                let request = request.clone();
                async move { c.get_job(request).await }
            })
            .await?
            .job
            .unwrap_or_default();
        let elapsed = started.elapsed().as_secs_f64();
        if progress && job.status != last {
            eprint!(
                "\r{:>6.1}s  {}  attempt {}  checkpoints {}    ",
                elapsed, job.status, job.attempt, job.last_checkpoint_id
            );
        }
        last = job.status.clone();
        if job.status == wanted {
            end_line();
            match client.output {
                Format::Json => print_json(&json!({"job_id": id, "status": job.status, "waited_s": elapsed})),
                Format::Table => println!("Job {id} is {} after {elapsed:.1} s.", job.status),
            }
            return Ok(());
        }
        let terminal = crate::raft::JobStatus::from_flink_str(&job.status).is_some_and(|s| s.is_terminal());
        if terminal {
            end_line();
            let why = if job.error.is_empty() { String::new() } else { format!(": {}", job.error) };
            anyhow::bail!("job {id} ended {} instead of reaching {wanted}{why}", job.status);
        }
        if elapsed >= timeout as f64 {
            end_line();
            anyhow::bail!("job {id} is still {} after {timeout} s (waiting for {wanted})", job.status);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// `jm taskmanagers`: registered TaskManagers and their slots.
pub async fn list_task_managers(client: ClientArgs) -> Result<()> {
    let reply = client
        .client()
        .call(|mut c| async move { c.list_task_managers(pb::ListTaskManagersRequest { consistency: 0 }).await })
        .await?;
    match client.output {
        Format::Json => print_json(&json!({
            "task_managers": reply.task_managers.iter().map(|t| json!({
                "tm_id": t.tm_id, "address": t.address, "slots": t.slots, "free_slots": t.free_slots,
                "zone": if t.zone.is_empty() { Value::Null } else { Value::String(t.zone.clone()) },
                "registered_at_ms": t.registered_at_ms, "updated_at_ms": t.updated_at_ms,
            })).collect::<Vec<_>>(),
        })),
        Format::Table if reply.task_managers.is_empty() => println!("No TaskManagers registered."),
        Format::Table => {
            let rows: Vec<Vec<String>> = reply
                .task_managers
                .iter()
                .map(|t| {
                    vec![t.tm_id.clone(), t.address.clone(), format!("{}/{}", t.free_slots, t.slots), t.zone.clone()]
                })
                .collect();
            println!("{}", table(&["TASKMANAGER", "ADDRESS", "FREE/SLOTS", "ZONE"], &rows));
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
        vec!["Attempt".into(), job.attempt.to_string()],
        vec!["Restarts".into(), job.restarts.to_string()],
        vec!["Slots".into(), job.slots.join(", ")],
        vec!["Restored from".into(), job.restored_from.clone()],
    ];
    println!("{}", table(&["FIELD", "VALUE"], &rows));
    if !job.error.is_empty() {
        println!("Error: {}", job.error);
    }
    println!("\nStatus history:");
    let history: Vec<Vec<String>> =
        job.history.iter().map(|h| vec![timestamp(h.at_ms), h.status.clone(), h.reason.clone()]).collect();
    println!("{}", table(&["AT (UTC)", "STATUS", "REASON"], &history));
    if !job.exceptions.is_empty() {
        println!("\nRecent exceptions:");
        let rows: Vec<Vec<String>> = job
            .exceptions
            .iter()
            .map(|e| vec![timestamp(e.at_ms), if e.restarting { "yes" } else { "no" }.into(), e.error.clone()])
            .collect();
        println!("{}", table(&["AT (UTC)", "RESTARTED", "ERROR"], &rows));
    }
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
        "attempt": j.attempt, "restarts": j.restarts, "slots": j.slots,
        "restored_from": if j.restored_from.is_empty() { Value::Null } else { Value::String(j.restored_from.clone()) },
        "exceptions": j.exceptions.iter().map(|e| json!({
            "at_ms": e.at_ms, "error": e.error, "restarting": e.restarting,
        })).collect::<Vec<_>>(),
        "read": read_json(read),
    })
}
