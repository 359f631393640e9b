//! The proposer: batches concurrent writes into one log entry.
//!
//! Every log entry costs the leader a trip through openraft's core, an append, a flush and a
//! replication message, whatever its size; on a small machine that per-entry cost, not the disk, limits
//! write throughput. So the leader proposes through this one task: it keeps at most
//! [`MAX_IN_FLIGHT`] entries in flight, and while they are being committed, new writes queue up and
//! go out together as one [`Command::Batch`]. A lone write (an idle cluster) goes out at once and
//! alone, so batching adds no latency when there is nothing to batch.
//!
//! Each write of a batch gets its own outcome: the state machine applies the commands in order, and a
//! refused command does not affect the others. All writes of one batch share its log index.

use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::raft::{Command, DeterministicError, Node, NodeId, Raft, Response};

/// Entries the proposer keeps in flight at once.
pub const MAX_IN_FLIGHT: usize = 2;
/// The most commands in one batch.
pub const MAX_BATCH_COMMANDS: usize = 512;
/// The most (approximate) bytes in one batch.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Why a proposal failed in Raft (rather than being applied and refused).
pub type ProposeError = RaftError<NodeId, ClientWriteError<NodeId, Node>>;

/// A committed and applied write: its log index and what applying it returned.
pub type Proposed = (u64, Result<Response, DeterministicError>);

struct Proposal {
    command: Command,
    reply: oneshot::Sender<Result<Proposed, ProposeError>>,
}

/// The handle of the proposer task; the task ends when the last handle is dropped.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::UnboundedSender<Proposal>,
}

impl Proposer {
    /// Starts the proposer task for `raft`.
    pub fn start(raft: Raft) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, rx));
        Self { tx }
    }

    /// Proposes `command` and returns once it is committed and applied. `None` if the proposer stopped.
    pub async fn propose(&self, command: Command) -> Option<Result<Proposed, ProposeError>> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Proposal { command, reply }).ok()?;
        rx.await.ok()
    }
}

/// A rough size of a command's encoding: its large fields plus a margin.
fn approximate_size(command: &Command) -> usize {
    128 + match command {
        Command::SubmitJob { spec_json, name, .. } => spec_json.len() + name.len(),
        Command::PutJobMetadata { key, value, .. } => key.len() + value.len(),
        Command::Batch { commands } => commands.iter().map(approximate_size).sum(),
        _ => 0,
    }
}

async fn run(raft: Raft, mut rx: mpsc::UnboundedReceiver<Proposal>) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        // Wait for a free slot first: writes arriving meanwhile queue up and form the next batch.
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        let Some(first) = rx.recv().await else { return };
        let mut bytes = approximate_size(&first.command);
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_COMMANDS && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += approximate_size(&p.command);
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            propose_batch(&raft, batch).await;
            drop(permit);
        });
    }
}

async fn propose_batch(raft: &Raft, mut batch: Vec<Proposal>) {
    if batch.len() == 1 {
        let Some(p) = batch.pop() else { return };
        let outcome = raft.client_write(p.command).await.map(|r| match r.data {
            Some(result) => (r.log_id.index, result),
            None => (r.log_id.index, Err(missing_result())),
        });
        let _ = p.reply.send(outcome);
        return;
    }
    let (commands, replies): (Vec<Command>, Vec<_>) = batch.into_iter().map(|p| (p.command, p.reply)).unzip();
    let count = commands.len();
    match raft.client_write(Command::Batch { commands }).await {
        Ok(r) => {
            let index = r.log_id.index;
            let results = match r.data {
                Some(Ok(Response::Batch { results })) if results.len() == count => results,
                _ => vec![Err(missing_result()); count],
            };
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok((index, result)));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

fn missing_result() -> DeterministicError {
    DeterministicError::invalid("command", "the state machine returned no result for it")
}
