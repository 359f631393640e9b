//! Savepoint disposal (Flink's `POST /savepoint-disposal`): deleting a savepoint's, or a retained checkpoint's,
//! directory on a user's request, reliably across leader changes, with a status every replica can serve.
//!
//! A disposal passes through three places:
//!
//! 1. The dispatcher, on whichever replica receives the request, checks it against the file system and the state:
//!    the path must hold a completed checkpoint or savepoint (a directory with `_metadata`), and no job that is
//!    still going may depend on it ([`PathUses::check`]: its spec's savepoint, the checkpoint its deployment restored
//!    from, or one of its retained checkpoints). It then commits `RequestSavepointDisposal`, naming the job that
//!    recorded the savepoint if one did.
//! 2. The leader's [`run`] loop, one of the leader-only services, finds the disposals in progress in its applied
//!    state, deletes each directory on a blocking thread ([`storage::dispose`]) and commits
//!    `ResolveSavepointDisposal` with the outcome: disposed, or failed with the file system's error.
//! 3. Every replica serves the status from its applied state (`RequestSavepointDisposal` and its resolution live in
//!    the replicated [`ClusterState`]).
//!
//! # Invariants
//!
//! * One leader term runs a request at most once at a time: [`run`] tracks the requests it is working on and starts
//!   one only when it is in progress in the state and not already running.
//! * A request stays in progress until a resolution is committed, so a new leader picks up whatever its predecessor
//!   left unresolved. Deleting is idempotent: a directory already gone (a previous leader deleted it before it could
//!   commit the outcome) counts as disposed.
//!
//! # Caveats
//!
//! * The checks of step 1 and the deletion are not atomic: a job submitted with this savepoint between the check and
//!   the deletion will fail to restore, naming the missing `_metadata`.
//! * A deposed leader's deletion already running on a blocking thread is not stopped; it races with the new leader's
//!   on the same directory, which [`storage::dispose`] tolerates.
//! * A job's list of savepoints keeps a disposed savepoint: the list records what was taken, not what still exists.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use super::storage;
use crate::cluster::{ClusterError, ReplicaNode};
use crate::jobgraph::JobSpec;
use crate::raft::command::DisposalOutcome;
use crate::raft::{ClusterState, Command, JobId, JobStatus};

/// How often the leader looks for disposals to carry out.
const SCAN_INTERVAL: Duration = Duration::from_millis(100);
/// Most directories deleted at the same time.
const MAX_CONCURRENT_DISPOSALS: usize = 4;
/// Pause before committing an outcome again after the cluster could not take it.
const RETRY_BACKOFF: Duration = Duration::from_millis(500);

/// A path a job that is still going depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InUse {
    /// The job.
    pub job_id: JobId,
    /// Its (non-terminal) status.
    pub status: JobStatus,
    /// What the path is to the job, e.g. "the savepoint it restores from".
    pub role: &'static str,
    /// The path as the job names it.
    pub path: String,
}

/// The paths of the cluster state a disposal must know about, copied out of the state so that they can be compared
/// with the requested path (which may touch the file system) without holding the state's lock.
#[derive(Debug, Clone, Default)]
pub struct PathUses {
    /// Paths that jobs still going depend on.
    in_use: Vec<InUse>,
    /// Every savepoint and retained checkpoint recorded, with its job.
    recorded: Vec<(JobId, String)>,
}

impl PathUses {
    /// The paths `state` knows of.
    pub fn of(state: &ClusterState) -> Self {
        let mut uses = Self::default();
        for job in state.jobs.values() {
            let savepoints = job.savepoints.iter().map(|s| s.path.clone());
            let checkpoints = job.checkpoints.iter().map(|c| c.external_path.clone());
            uses.recorded.extend(savepoints.chain(checkpoints.clone()).map(|path| (job.id.clone(), path)));
            if job.status.is_terminal() {
                continue;
            }
            let mut add = |role: &'static str, path: String| {
                uses.in_use.push(InUse { job_id: job.id.clone(), status: job.status, role, path });
            };
            // Stored specs were validated when submitted; one that no longer parses names no savepoint we can see.
            if let Some(savepoint) = serde_json::from_str::<JobSpec>(&job.spec_json).ok().and_then(|s| s.savepoint) {
                add("the savepoint it restores from", savepoint.path);
            }
            if let Some(restored_from) = job.deployment.as_ref().and_then(|d| d.restored_from.clone()) {
                add("the checkpoint or savepoint its current attempt restored from", restored_from);
            }
            checkpoints.for_each(|path| add("a retained checkpoint it may restore from", path));
        }
        uses
    }

    /// Checks that `path` may be disposed of, comparing paths with `same` (e.g. [`storage::same_dir`]). Returns the
    /// job that recorded it as a savepoint or checkpoint, if any, or the first use by a job still going.
    pub fn check(&self, path: &str, same: impl Fn(&Path, &Path) -> bool) -> Result<Option<JobId>, InUse> {
        let path = Path::new(path);
        if let Some(in_use) = self.in_use.iter().find(|u| same(Path::new(&u.path), path)) {
            return Err(in_use.clone());
        }
        Ok(self.recorded.iter().find(|(_, recorded)| same(Path::new(recorded), path)).map(|(job_id, _)| job_id.clone()))
    }
}

/// The leader's disposal service: carries out the disposals in progress in the applied state until aborted (when
/// leadership ends). See the module documentation.
pub async fn run(node: Arc<ReplicaNode>) {
    let mut running: HashMap<tokio::task::Id, String> = HashMap::new();
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut scan = tokio::time::interval(SCAN_INTERVAL);
    loop {
        scan.tick().await;
        while let Some(done) = tasks.try_join_next_with_id() {
            let id = match done {
                Ok((id, ())) => id,
                Err(e) => e.id(),
            };
            running.remove(&id);
        }
        let pending = node.state().read(|s| s.cluster.disposals_in_progress());
        for (request_id, path) in pending {
            if running.len() >= MAX_CONCURRENT_DISPOSALS {
                break;
            }
            if running.values().any(|r| *r == request_id) {
                continue;
            }
            tracing::info!(%request_id, %path, "disposing of savepoint");
            let handle = tasks.spawn(dispose(node.clone(), request_id.clone(), path));
            running.insert(handle.id(), request_id);
        }
    }
}

/// Deletes one savepoint's directory and commits the outcome, retrying the commit until the cluster takes it.
async fn dispose(node: Arc<ReplicaNode>, request_id: String, path: String) {
    let target = path.clone();
    let outcome = match crate::blocking::run(move || storage::dispose(Path::new(&target))).await {
        Ok(Ok(())) => DisposalOutcome::Disposed,
        Ok(Err(e)) => DisposalOutcome::Failed { message: e.to_string() },
        Err(e) => DisposalOutcome::Failed { message: format!("deleting {path}: {e}") },
    };
    loop {
        let at_ms = node.clock().now_ms();
        let command =
            Command::ResolveSavepointDisposal { request_id: request_id.clone(), outcome: outcome.clone(), at_ms };
        match node.write(command).await {
            Ok(_) => {
                tracing::info!(%request_id, %path, outcome = ?outcome, "savepoint disposal resolved");
                return;
            }
            // Resolved already (a retry after an unknown outcome): the first resolution stands.
            Err(ClusterError::Rejected(e)) => {
                tracing::debug!(%request_id, error = %e, "savepoint disposal already resolved");
                return;
            }
            Err(e) => {
                tracing::warn!(%request_id, error = %e, "could not record the outcome of a savepoint disposal; retrying");
                tokio::time::sleep(RETRY_BACKOFF).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{Compaction, NodeConfig, SystemClock, Timing};
    use crate::raft::command::{CompletedCheckpoint, Savepoint, SlotId};
    use crate::raft::network::BoxFuture;
    use crate::raft::{MemoryEngine, Node, NodeId, PeerCall, PeerTransport, TransportError};

    const J1: &str = "00000000000000000000000000000001";
    const J2: &str = "00000000000000000000000000000002";

    fn lexical(a: &Path, b: &Path) -> bool {
        a.components().eq(b.components())
    }

    fn spec(restore_from: Option<&str>) -> String {
        let restore = restore_from.map(|p| format!("savepoint: {{path: {p}}}\n")).unwrap_or_default();
        let yaml = format!(
            "name: j\nvertices:\n  - id: source\n    operators: [{{sequence: {{rate: 1}}}}, {{blackhole: {{}}}}]\n{restore}"
        );
        crate::jobgraph::parse(yaml.as_bytes()).unwrap().canonical_json
    }

    /// J1 runs with a savepoint and a retained checkpoint, restored from /sp/old; J2 ended, with its own savepoint.
    fn state() -> ClusterState {
        let mut state = ClusterState::default();
        let mut index = 0;
        let mut apply = |state: &mut ClusterState, cmd: Command| {
            index += 1;
            state.apply(index, cmd).unwrap();
        };
        for (job_id, restore) in [(J1, Some("/sp/old")), (J2, None)] {
            let submit = Command::SubmitJob {
                job_id: job_id.into(),
                idempotency_key: job_id.into(),
                name: "j".into(),
                spec_json: spec(restore),
                max_retained_checkpoints: 1,
                submitted_at_ms: 1,
            };
            apply(&mut state, submit);
            apply(&mut state, Command::GrantJobMasterEpoch { job_id: job_id.into(), leader_term: 1, at_ms: 2 });
            for _ in 0..2 {
                apply(&mut state, Command::AllocateCheckpointId { job_id: job_id.into(), epoch: 1, at_ms: 3 });
            }
            let savepoint = Savepoint { checkpoint_id: 1, path: format!("/sp/{job_id}"), at_ms: 4 };
            apply(&mut state, Command::RecordSavepoint { job_id: job_id.into(), epoch: 1, savepoint });
        }
        let register =
            Command::RegisterTaskManager { tm_id: "tm".into(), address: "a:1".into(), slots: 1, zone: None, at_ms: 5 };
        apply(&mut state, register);
        let slot = SlotId::new("tm", 0);
        apply(&mut state, Command::LeaseSlots { job_id: J1.into(), epoch: 1, slots: vec![slot.clone()], at_ms: 6 });
        let components =
            vec![crate::raft::command::DeployedComponent { vertices: vec!["source".into()], slots: vec![slot] }];
        let deploy = Command::RecordDeployment {
            job_id: J1.into(),
            epoch: 1,
            attempt: 1,
            components,
            restored_from: Some("/sp/old".into()),
            checkpoint_dir: "/ck".into(),
            at_ms: 7,
        };
        apply(&mut state, deploy);
        let checkpoint = CompletedCheckpoint {
            id: 2,
            trigger_at_ms: 8,
            completed_at_ms: 9,
            external_path: format!("/ck/{J1}/chk-2"),
            state_size_bytes: 1,
        };
        apply(&mut state, Command::CompleteCheckpoint { job_id: J1.into(), epoch: 1, checkpoint });
        let result = Command::RecordJobResult {
            job_id: J2.into(),
            epoch: 1,
            status: JobStatus::Canceled,
            at_ms: 10,
            error: None,
        };
        apply(&mut state, result);
        state
    }

    /// The transport of a cluster of one: there is nobody to call.
    struct NoPeers;

    impl PeerTransport for NoPeers {
        fn call(
            &self,
            _: NodeId,
            _: &Node,
            _: PeerCall,
            _: Vec<u8>,
            _: Duration,
        ) -> BoxFuture<Result<Vec<u8>, TransportError>> {
            Box::pin(async { Err(TransportError::Unreachable("a cluster of one has no peers".into())) })
        }
    }

    /// A single replica in memory, once it leads.
    async fn single_replica() -> Arc<ReplicaNode> {
        let node = Node { raft_addr: "127.0.0.1:1".into(), api_addr: "127.0.0.1:2".into() };
        let config = NodeConfig {
            id: 1,
            data_dir: std::path::PathBuf::new(),
            peers: [(1, node)].into(),
            timing: Timing::default(),
            compaction: Compaction::default(),
            zone: None,
        };
        let engine = Arc::new(MemoryEngine::default());
        let node = ReplicaNode::start(config, engine, Arc::new(NoPeers), Arc::new(SystemClock)).await.unwrap();
        let mut leading = node.supervisor().subscribe();
        tokio::time::timeout(Duration::from_secs(10), leading.wait_for(Option::is_some)).await.unwrap().unwrap();
        node
    }

    async fn request(node: &ReplicaNode, request_id: &str, path: &Path) {
        let path = path.to_string_lossy().into_owned();
        let command = Command::RequestSavepointDisposal { request_id: request_id.into(), path, job_id: None, at_ms: 1 };
        node.write(command).await.unwrap();
    }

    fn outcome(node: &ReplicaNode, request_id: &str) -> Option<DisposalOutcome> {
        node.state().read(|s| s.cluster.savepoint_disposals.get(request_id).and_then(|d| d.outcome.clone()))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_leader_carries_out_the_disposals_left_in_progress() {
        let node = single_replica().await;
        let tmp = tempfile::tempdir().unwrap();
        // Committed while no disposal service ran, as if a previous leader died before resolving them: one still
        // there, one it had already deleted, and one that is a file, which cannot be removed as a directory.
        let there = tmp.path().join("savepoint-000000-1");
        std::fs::create_dir_all(there.join("state")).unwrap();
        std::fs::write(storage::metadata_path(&there), b"{}").unwrap();
        let file = tmp.path().join("a-file");
        std::fs::write(&file, b"not a directory").unwrap();
        request(&node, "there", &there).await;
        request(&node, "gone", &tmp.path().join("savepoint-000000-2")).await;
        request(&node, "file", &file).await;

        let service = tokio::spawn(run(node.clone()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while ["there", "gone", "file"].iter().any(|id| outcome(&node, id).is_none()) {
            assert!(tokio::time::Instant::now() < deadline, "disposals still in progress");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(outcome(&node, "there"), Some(DisposalOutcome::Disposed));
        assert!(!there.exists());
        assert_eq!(outcome(&node, "gone"), Some(DisposalOutcome::Disposed));
        let Some(DisposalOutcome::Failed { message }) = outcome(&node, "file") else {
            panic!("a file was disposed of")
        };
        assert!(message.contains(&file.display().to_string()), "{message}");
        assert!(file.exists());
        service.abort();
        node.shutdown().await;
    }

    #[test]
    fn a_savepoint_of_a_job_is_disposable_and_names_the_job() {
        let uses = PathUses::of(&state());
        assert_eq!(uses.check(&format!("/sp/{J1}"), lexical), Ok(Some(J1.to_string())));
        assert_eq!(uses.check(&format!("/sp/{J2}/"), lexical), Ok(Some(J2.to_string())));
        assert_eq!(uses.check("/sp/unknown", lexical), Ok(None));
    }

    #[test]
    fn what_a_live_job_restores_from_is_not_disposable() {
        let uses = PathUses::of(&state());
        let in_use = uses.check("/sp/old", lexical).unwrap_err();
        assert_eq!((in_use.job_id.as_str(), in_use.status), (J1, JobStatus::Created));
        assert_eq!(in_use.role, "the savepoint it restores from");
        let in_use = uses.check(&format!("/ck/{J1}/chk-2"), lexical).unwrap_err();
        assert_eq!(in_use.role, "a retained checkpoint it may restore from");
    }

    #[test]
    fn an_ended_job_holds_on_to_nothing() {
        let mut state = state();
        let result =
            Command::RecordJobResult { job_id: J1.into(), epoch: 1, status: JobStatus::Failed, at_ms: 11, error: None };
        state.apply(state.last_index + 1, result).unwrap();
        let uses = PathUses::of(&state);
        assert_eq!(uses.check("/sp/old", lexical), Ok(None));
        assert_eq!(uses.check(&format!("/ck/{J1}/chk-2"), lexical), Ok(Some(J1.to_string())));
    }
}
