//! Snapshot files: what a subtask writes at a barrier and how a new deployment reads them back, possibly at a
//! different parallelism.
//!
//! One file per subtask, `<dir>/<vertex_id>-<subtask>.state`, where `<dir>` is `checkpoint_dir/chk-<id>` for a
//! checkpoint or the savepoint's directory. The file is JSON ([`SubtaskSnapshot`], `"version": 1`), written to a
//! hidden temporary name, fsynced, renamed into place and the directory fsynced, so a reader sees a whole file or
//! none. JSON rather than bincode because records and keys are arbitrary JSON values, which bincode cannot encode,
//! and because an operator can read a snapshot with `jq`.
//!
//! Restoring ([`load_restore`]) reads every state file of the deployed vertices and hands each new subtask:
//! * keyed state (aggregates, windows): the entries of the key groups in its [`key_group_range`], from every old
//!   file of its vertex, so any parallelism up to max parallelism works;
//! * `sequence`: its old splits at equal parallelism; otherwise every unfinished split of every old subtask,
//!   subdivided and dealt round-robin (a split `next, next+stride, ...` divides exactly into `m` splits of stride
//!   `stride*m`);
//! * `files`: the union of all old subtasks' file offsets (files are re-assigned by name order at any parallelism);
//! * `file` sink: the pending part files of every old subtask `k` with `k % parallelism == subtask`, which it
//!   commits before running;
//! * watermarks: its own at equal parallelism, the minimum over old subtasks otherwise (a lower watermark only
//!   fires windows later).
//!
//! Invariants: the max parallelism and the operator chain (operator names by position) must match the snapshot,
//! and the old subtasks' files must be complete (`0..p`); otherwise restoring fails with a [`RuntimeError::Restore`]
//! naming the file. A deployed vertex with no file at all starts empty (a vertex added to the job), but a restore
//! directory holding no file for any deployed vertex is refused: that is a wrong path, not a new job.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::partition::key_group_range;
use super::RuntimeError;

/// Version of the state file format written by this code.
pub const STATE_FORMAT_VERSION: u32 = 1;

/// Everything one subtask snapshots at a barrier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubtaskSnapshot {
    /// Format version ([`STATE_FORMAT_VERSION`]).
    pub version: u32,
    /// The job.
    pub job_id: String,
    /// The vertex id.
    pub vertex: String,
    /// The subtask index.
    pub subtask: u32,
    /// The vertex's parallelism when written.
    pub parallelism: u32,
    /// The vertex's max parallelism (number of key groups).
    pub max_parallelism: u32,
    /// The checkpoint or savepoint id.
    pub checkpoint_id: u64,
    /// The combined watermark of the subtask's inputs at the barrier, if any was received.
    #[serde(default)]
    pub input_watermark: Option<i64>,
    /// One entry per operator of the chain, in chain order.
    pub operators: Vec<OperatorSnapshot>,
}

/// The state of one operator of a chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperatorSnapshot {
    /// The operator's name as in the spec (`sequence`, `map`, `count`, ...), checked on restore.
    pub operator: String,
    /// Its state.
    pub state: OperatorState,
}

/// Operator-specific state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperatorState {
    /// Nothing to keep (`map`, `filter`, `key_by`, `log`, `blackhole`).
    Stateless,
    /// A `sequence` source: the values it has not emitted yet.
    Sequence {
        /// Its splits.
        splits: Vec<SequenceSplit>,
    },
    /// A `files` source: where each of its files is read up to.
    Files {
        /// File name → byte offset of the next line to read.
        offsets: BTreeMap<String, u64>,
    },
    /// A keyed running aggregate (`count`, `sum`, `min`, `max`).
    Aggregate {
        /// Key group → (key, aggregate value) entries.
        key_groups: BTreeMap<u32, Vec<(Value, Value)>>,
    },
    /// A keyed tumbling window.
    Window {
        /// The highest event time seen, which drives the watermark.
        max_time: Option<i64>,
        /// Key group → (key, window start → aggregate value) entries.
        key_groups: BTreeMap<u32, WindowEntries>,
    },
    /// An exactly-once `file` sink.
    FileSink {
        /// The number of the next part file this subtask opens.
        next_part: u64,
        /// Closed part files waiting for their checkpoint to complete.
        pending: Vec<PendingPart>,
    },
}

/// The keyed entries of one key group of a window: (key, window start → aggregate value).
pub type WindowEntries = Vec<(Value, BTreeMap<i64, Value>)>;

/// The values `next, next + stride, ...` below the source's `to` (or unbounded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequenceSplit {
    /// The next value to emit.
    pub next: u64,
    /// The step between values; at least 1.
    pub stride: u64,
}

/// A closed in-progress part file waiting for checkpoint `checkpoint_id` to complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingPart {
    /// The barrier at which it was closed.
    pub checkpoint_id: u64,
    /// Its in-progress name in the sink directory (`.part-<vertex>-<subtask>-<attempt>-<n>.inprogress`).
    pub inprogress: String,
    /// Its final name once committed (`part-<vertex>-<subtask>-<n>`).
    pub committed: String,
    /// The sink directory it was written in. A job restored from a savepoint may write elsewhere; the parts of
    /// the savepoint still belong (and are committed) where they were written. Absent in older state files.
    #[serde(default)]
    pub dir: Option<String>,
}

/// The directory a barrier's state files go to.
pub fn barrier_dir(checkpoint_dir: &Path, barrier: &super::Barrier) -> PathBuf {
    match &barrier.kind {
        super::BarrierKind::Checkpoint => checkpoint_dir.join(format!("chk-{}", barrier.checkpoint_id)),
        super::BarrierKind::Savepoint { dir, .. } => dir.clone(),
    }
}

/// The state file name of a subtask.
pub fn state_file_name(vertex: &str, subtask: u32) -> String {
    format!("{vertex}-{subtask}.state")
}

/// Writes `snapshot` atomically into `dir` and returns its path and size. Blocking: call through [`crate::blocking::run`].
pub fn write_snapshot(dir: &Path, snapshot: &SubtaskSnapshot) -> std::io::Result<(PathBuf, u64)> {
    use std::io::Write;
    let bytes = serde_json::to_vec(snapshot).map_err(std::io::Error::other)?;
    std::fs::create_dir_all(dir)?;
    let name = state_file_name(&snapshot.vertex, snapshot.subtask);
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(&name);
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    sync_dir(dir)?;
    Ok((path, bytes.len() as u64))
}

/// Fsyncs a directory so a rename or create in it is durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// What one new subtask starts from.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RestoredSubtask {
    /// The input watermark to start from.
    pub input_watermark: Option<i64>,
    /// One entry per operator of the chain.
    pub operators: Vec<OperatorState>,
}

/// The restore plan of one vertex: one entry per new subtask.
pub type RestoredVertex = Vec<RestoredSubtask>;

/// The shape of a deployed vertex, as restoring needs it.
#[derive(Debug, Clone)]
pub struct VertexShape {
    /// The vertex id.
    pub id: String,
    /// The new parallelism.
    pub parallelism: u32,
    /// The max parallelism.
    pub max_parallelism: u32,
    /// The operator names of the chain, in order.
    pub operators: Vec<&'static str>,
}

/// Reads the state files of `vertices` in `dir` and plans each new subtask's state. Blocking.
///
/// Returns one entry per vertex, `None` for a vertex with no state in `dir` (it starts empty).
pub fn load_restore(dir: &Path, vertices: &[VertexShape]) -> Result<Vec<Option<RestoredVertex>>, RuntimeError> {
    let restore_err = |reason: String| RuntimeError::Restore { path: dir.to_path_buf(), reason };
    let names = list_state_files(dir).map_err(|e| restore_err(format!("cannot list the directory: {e}")))?;
    let mut plans = Vec::with_capacity(vertices.len());
    for shape in vertices {
        let files: Vec<&(String, u32)> = names.iter().filter(|(vertex, _)| *vertex == shape.id).collect();
        if files.is_empty() {
            tracing::warn!(vertex = %shape.id, dir = %dir.display(), "no state for this vertex; it starts empty");
            plans.push(None);
            continue;
        }
        let mut old = Vec::with_capacity(files.len());
        for (vertex, subtask) in files {
            let path = dir.join(state_file_name(vertex, *subtask));
            old.push(read_snapshot(&path)?);
        }
        plans.push(Some(plan_vertex(dir, shape, old)?));
    }
    if !vertices.is_empty() && plans.iter().all(Option::is_none) {
        return Err(restore_err("it holds no state file of any deployed vertex".to_string()));
    }
    Ok(plans)
}

/// Lists `(vertex, subtask)` of every `<vertex>-<subtask>.state` file in `dir`.
fn list_state_files(dir: &Path) -> std::io::Result<Vec<(String, u32)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') {
            continue;
        }
        let Some(stem) = name.strip_suffix(".state") else { continue };
        let Some((vertex, subtask)) = stem.rsplit_once('-') else { continue };
        if let Ok(subtask) = subtask.parse::<u32>() {
            out.push((vertex.to_string(), subtask));
        }
    }
    out.sort();
    Ok(out)
}

/// Reads and parses one state file.
pub fn read_snapshot(path: &Path) -> Result<SubtaskSnapshot, RuntimeError> {
    let restore_err = |reason: String| RuntimeError::Restore { path: path.to_path_buf(), reason };
    let bytes = std::fs::read(path).map_err(|e| restore_err(format!("cannot read: {e}")))?;
    let version = serde_json::from_slice::<VersionOnly>(&bytes)
        .map_err(|e| restore_err(format!("not a state file: {e}")))?
        .version;
    if version != STATE_FORMAT_VERSION {
        return Err(restore_err(format!(
            "state format version {version}; this TaskManager reads {STATE_FORMAT_VERSION}"
        )));
    }
    serde_json::from_slice(&bytes).map_err(|e| restore_err(format!("corrupt state file: {e}")))
}

/// Just the version field, read first so a newer format gets a clear error rather than a parse error.
#[derive(Deserialize)]
struct VersionOnly {
    /// The format version.
    version: u32,
}

/// Checks the old snapshots of one vertex against its new shape and plans every new subtask's state.
fn plan_vertex(dir: &Path, shape: &VertexShape, mut old: Vec<SubtaskSnapshot>) -> Result<RestoredVertex, RuntimeError> {
    let restore_err = |reason: String| RuntimeError::Restore { path: dir.to_path_buf(), reason };
    old.sort_by_key(|s| s.subtask);
    let old_p = old[0].parallelism;
    for (i, snap) in old.iter().enumerate() {
        let file = state_file_name(&shape.id, snap.subtask);
        if snap.vertex != shape.id || snap.subtask != i as u32 || snap.parallelism != old_p {
            return Err(restore_err(format!(
                "{file}: the state files of vertex `{}` are inconsistent or incomplete (expected subtasks 0..{old_p})",
                shape.id
            )));
        }
        if snap.max_parallelism != shape.max_parallelism {
            return Err(restore_err(format!(
                "{file}: max parallelism {} in the snapshot, {} in the job; it cannot change",
                snap.max_parallelism, shape.max_parallelism
            )));
        }
        let names: Vec<&str> = snap.operators.iter().map(|o| o.operator.as_str()).collect();
        if names != shape.operators {
            return Err(restore_err(format!(
                "{file}: vertex `{}` had operators {names:?} in the snapshot but has {:?} now",
                shape.id, shape.operators
            )));
        }
    }
    if old.len() != old_p as usize {
        return Err(restore_err(format!(
            "vertex `{}` has {} state files but was snapshotted at parallelism {old_p}",
            shape.id,
            old.len()
        )));
    }
    Ok((0..shape.parallelism).map(|j| plan_subtask(shape, &old, j)).collect())
}

/// The state of new subtask `j` of `shape` from the vertex's old snapshots (already checked).
fn plan_subtask(shape: &VertexShape, old: &[SubtaskSnapshot], j: u32) -> RestoredSubtask {
    let same_p = old.len() == shape.parallelism as usize;
    let range = key_group_range(shape.max_parallelism, shape.parallelism, j);
    let input_watermark =
        if same_p { old[j as usize].input_watermark } else { old.iter().filter_map(|s| s.input_watermark).min() };
    let operators = (0..shape.operators.len())
        .map(|op| {
            let states: Vec<&OperatorState> = old.iter().map(|s| &s.operators[op].state).collect();
            plan_operator(&states, shape.parallelism, j, &range)
        })
        .collect();
    RestoredSubtask { input_watermark, operators }
}

/// The state of one operator of new subtask `j` of `p` from the old subtasks' states of that operator.
fn plan_operator(old: &[&OperatorState], p: u32, j: u32, range: &RangeInclusive<u32>) -> OperatorState {
    let same_p = old.len() == p as usize;
    match old.first() {
        None | Some(OperatorState::Stateless) => OperatorState::Stateless,
        Some(OperatorState::Sequence { .. }) => OperatorState::Sequence { splits: plan_sequence(old, p, j) },
        Some(OperatorState::Files { .. }) => {
            let mut offsets = BTreeMap::new();
            for state in old {
                if let OperatorState::Files { offsets: theirs } = state {
                    for (name, offset) in theirs {
                        let entry = offsets.entry(name.clone()).or_insert(0);
                        *entry = (*entry).max(*offset);
                    }
                }
            }
            OperatorState::Files { offsets }
        }
        Some(OperatorState::Aggregate { .. }) => {
            let mut key_groups = BTreeMap::new();
            for state in old {
                if let OperatorState::Aggregate { key_groups: theirs } = state {
                    key_groups.extend(theirs.range(range.clone()).map(|(g, e)| (*g, e.clone())));
                }
            }
            OperatorState::Aggregate { key_groups }
        }
        Some(OperatorState::Window { .. }) => {
            let mut key_groups = BTreeMap::new();
            let mut times = Vec::new();
            for state in old {
                if let OperatorState::Window { key_groups: theirs, max_time } = state {
                    key_groups.extend(theirs.range(range.clone()).map(|(g, e)| (*g, e.clone())));
                    times.push(*max_time);
                }
            }
            let max_time = if same_p { times[j as usize] } else { times.into_iter().flatten().min() };
            OperatorState::Window { max_time, key_groups }
        }
        Some(OperatorState::FileSink { .. }) => {
            let mut next_part = 0;
            let mut pending = Vec::new();
            for (k, state) in old.iter().enumerate() {
                if let OperatorState::FileSink { next_part: n, pending: theirs } = state {
                    if k as u32 % p == j {
                        pending.extend(theirs.iter().cloned());
                    }
                    if k as u32 == j {
                        next_part = *n;
                    }
                }
            }
            OperatorState::FileSink { next_part, pending }
        }
    }
}

/// The sequence splits of new subtask `j` of `p`.
fn plan_sequence(old: &[&OperatorState], p: u32, j: u32) -> Vec<SequenceSplit> {
    let all = |state: &&OperatorState| match state {
        OperatorState::Sequence { splits } => splits.clone(),
        _ => Vec::new(),
    };
    if old.len() == p as usize {
        return all(&old[j as usize]);
    }
    let mut splits: Vec<SequenceSplit> = old.iter().flat_map(all).collect();
    splits.sort_by_key(|s| (s.next, s.stride));
    let divide = (p as usize).div_ceil(splits.len().max(1)) as u64;
    let splits: Vec<SequenceSplit> = splits.into_iter().flat_map(|s| subdivide(s, divide)).collect();
    splits.into_iter().enumerate().filter(|(i, _)| *i as u32 % p == j).map(|(_, s)| s).collect()
}

/// Divides a split into `m` splits that together emit exactly its values; unchanged if the stride would overflow.
fn subdivide(split: SequenceSplit, m: u64) -> Vec<SequenceSplit> {
    let Some(stride) = split.stride.checked_mul(m) else { return vec![split] };
    (0..m)
        .map_while(|t| {
            let next = split.next.checked_add(t.checked_mul(split.stride)?)?;
            Some(SequenceSplit { next, stride })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn snapshot(subtask: u32, parallelism: u32, operators: Vec<OperatorSnapshot>) -> SubtaskSnapshot {
        SubtaskSnapshot {
            version: STATE_FORMAT_VERSION,
            job_id: "j".into(),
            vertex: "v".into(),
            subtask,
            parallelism,
            max_parallelism: 8,
            checkpoint_id: 3,
            input_watermark: Some(10 * i64::from(subtask)),
            operators,
        }
    }

    fn shape(parallelism: u32, operators: Vec<&'static str>) -> VertexShape {
        VertexShape { id: "v".into(), parallelism, max_parallelism: 8, operators }
    }

    fn values(splits: &[SequenceSplit], to: u64) -> Vec<u64> {
        let mut out = Vec::new();
        for s in splits {
            let mut v = s.next;
            while v < to {
                out.push(v);
                v += s.stride;
            }
        }
        out
    }

    #[test]
    fn sequence_resplits_exactly() {
        let old: Vec<OperatorState> = (0..2)
            .map(|i| OperatorState::Sequence { splits: vec![SequenceSplit { next: 10 + i, stride: 2 }] })
            .collect();
        let refs: Vec<&OperatorState> = old.iter().collect();
        for p in 1..=5 {
            let mut all: Vec<u64> = (0..p).flat_map(|j| values(&plan_sequence(&refs, p, j), 100)).collect();
            all.sort();
            assert_eq!(all, (10..100).collect::<Vec<_>>(), "p = {p}");
        }
    }

    #[test]
    fn keyed_state_goes_by_key_group_and_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..2u32 {
            let groups: BTreeMap<u32, Vec<(Value, Value)>> =
                (i * 4..i * 4 + 4).map(|g| (g, vec![(json!(format!("k{g}")), json!(g))])).collect();
            let ops = vec![
                OperatorSnapshot { operator: "key_by".into(), state: OperatorState::Stateless },
                OperatorSnapshot { operator: "count".into(), state: OperatorState::Aggregate { key_groups: groups } },
            ];
            let (path, size) = write_snapshot(dir.path(), &snapshot(i, 2, ops)).unwrap();
            assert_eq!(std::fs::metadata(&path).unwrap().len(), size);
        }
        let plans = load_restore(dir.path(), &[shape(4, vec!["key_by", "count"])]).unwrap();
        let plan = plans[0].as_ref().unwrap();
        assert_eq!(plan.len(), 4);
        for (j, sub) in plan.iter().enumerate() {
            let OperatorState::Aggregate { key_groups } = &sub.operators[1] else { panic!("not an aggregate") };
            assert_eq!(key_groups.keys().copied().collect::<Vec<_>>(), vec![2 * j as u32, 2 * j as u32 + 1]);
            assert_eq!(sub.input_watermark, Some(0), "min over old subtasks when rescaled");
        }
        let err = load_restore(dir.path(), &[shape(2, vec!["key_by", "sum"])]).unwrap_err();
        assert!(err.to_string().contains("had operators"), "{err}");
        let err = load_restore(dir.path(), &[VertexShape { id: "other".into(), ..shape(2, vec![]) }]).unwrap_err();
        assert!(err.to_string().contains("no state file"), "{err}");
    }

    #[test]
    fn missing_subtask_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ops = vec![OperatorSnapshot { operator: "map".into(), state: OperatorState::Stateless }];
        write_snapshot(dir.path(), &snapshot(1, 2, ops)).unwrap();
        let err = load_restore(dir.path(), &[shape(2, vec!["map"])]).unwrap_err();
        assert!(err.to_string().contains("incomplete"), "{err}");
    }

    #[test]
    fn newer_format_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("v-0.state"), br#"{"version": 99}"#).unwrap();
        let err = load_restore(dir.path(), &[shape(1, vec!["map"])]).unwrap_err();
        assert!(err.to_string().contains("version 99"), "{err}");
    }
}
