//! Sinks: the exactly-once `file` sink (two-phase commit on checkpoints), `log` and `blackhole`.
//!
//! The `file` sink writes one JSON record per line. Between barriers records go to an in-progress file
//! `<path>/.part-<vertex>-<subtask>-<attempt>-<n>.inprogress` (opened lazily at the first record, so quiet intervals
//! leave no empty files). At barrier N the file is flushed, fsynced and closed and becomes *pending for N*, which is
//! recorded in the sink's snapshot (phase one). When checkpoint N completes (`notify_checkpoint_complete`), every
//! pending file of a checkpoint ≤ N is renamed to `<path>/part-<vertex>-<subtask>-<n>` and the directory fsynced
//! (phase two). Part numbers `n` only grow per subtask, across attempts too: a new subtask starts above every part
//! number it finds for its index in the directory and in its restored state, so final names never collide.
//!
//! Restoring: the sink first commits the pending files recorded in the restored state (idempotently: a pending
//! file that is gone while its final name exists was committed already), then deletes every other in-progress file
//! of the old subtasks it inherits (`k % parallelism == subtask`): their records come after the checkpoint and will
//! be replayed. So the committed part files hold every record exactly once across failures and restores.
//!
//! Caveats:
//! * End of input commits directly: when the input ends, the in-progress file and all pending files are committed
//!   without waiting for a checkpoint (the job is over; Flink ≥ 1.15 waits for a final checkpoint instead). If the
//!   job is later restored from a checkpoint taken before this sink finished (another part of the job failed first),
//!   the replayed records are written again.
//! * A zombie subtask of an older attempt (e.g. on a partitioned TaskManager) still writing into the directory is
//!   not fenced off; the JobMaster must make sure an attempt is gone before restoring.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncWriteExt, BufWriter};

use super::operators::OperatorError;
use super::record::Record;
use super::state::{sync_dir, OperatorState, PendingPart};

/// Write buffer of an in-progress part file.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// A sink operator.
#[derive(Debug)]
pub enum Sink {
    /// The exactly-once file sink.
    File(Box<FileSink>),
    /// Logs each record at INFO with this prefix.
    Log(String),
    /// Discards records.
    Blackhole,
}

impl Sink {
    /// Prepares the sink; for the file sink, commits restored pending files and deletes stale ones.
    pub async fn initialize(&mut self, restored: Option<OperatorState>) -> Result<(), OperatorError> {
        match self {
            Sink::File(f) => f.initialize(restored).await,
            Sink::Log(_) | Sink::Blackhole => Ok(()),
        }
    }

    /// Writes one record.
    pub async fn write(&mut self, record: &Record) -> Result<(), OperatorError> {
        match self {
            Sink::File(f) => f.write(record).await,
            Sink::Log(prefix) => {
                tracing::info!(target: "jobmanager::sink", "{prefix} {}", serde_json::Value::Object(record.clone()));
                Ok(())
            }
            Sink::Blackhole => Ok(()),
        }
    }

    /// Phase one at a barrier: closes the in-progress file as pending for `checkpoint_id`; returns the state.
    pub async fn snapshot(&mut self, checkpoint_id: u64) -> Result<OperatorState, OperatorError> {
        match self {
            Sink::File(f) => f.snapshot(checkpoint_id).await,
            Sink::Log(_) | Sink::Blackhole => Ok(OperatorState::Stateless),
        }
    }

    /// The state as it stands, without closing anything (after [`Sink::finish`]).
    pub fn current_state(&self) -> OperatorState {
        match self {
            Sink::File(f) => f.state(),
            Sink::Log(_) | Sink::Blackhole => OperatorState::Stateless,
        }
    }

    /// Phase two: commits the pending files of checkpoints up to `checkpoint_id`.
    pub async fn notify_complete(&mut self, checkpoint_id: u64) -> Result<(), OperatorError> {
        match self {
            Sink::File(f) => f.commit_up_to(checkpoint_id).await,
            Sink::Log(_) | Sink::Blackhole => Ok(()),
        }
    }

    /// End of input: commits everything written.
    pub async fn finish(&mut self) -> Result<(), OperatorError> {
        match self {
            Sink::File(f) => f.finish().await,
            Sink::Log(_) | Sink::Blackhole => Ok(()),
        }
    }
}

/// The part file being written.
#[derive(Debug)]
struct InProgress {
    /// Its part number.
    n: u64,
    /// Its in-progress file name.
    name: String,
    /// The buffered file.
    writer: BufWriter<tokio::fs::File>,
}

/// The exactly-once file sink of one subtask.
#[derive(Debug)]
pub struct FileSink {
    /// The output directory.
    pub dir: PathBuf,
    /// The vertex id.
    pub vertex: String,
    /// This subtask.
    pub subtask: u32,
    /// The vertex's parallelism (which old subtasks' files this one inherits).
    pub parallelism: u32,
    /// The deployment attempt (in in-progress names).
    pub attempt: u32,
    /// The next part number.
    next_part: u64,
    /// The open part file.
    current: Option<InProgress>,
    /// Closed files waiting for their checkpoint to complete, in checkpoint order.
    pending: Vec<PendingPart>,
}

impl FileSink {
    /// A sink that has not been initialized.
    pub fn new(dir: PathBuf, vertex: String, subtask: u32, parallelism: u32, attempt: u32) -> Self {
        FileSink {
            dir,
            vertex,
            subtask,
            parallelism: parallelism.max(1),
            attempt,
            next_part: 0,
            current: None,
            pending: Vec::new(),
        }
    }

    /// The in-progress name of part `n`.
    fn inprogress_name(&self, n: u64) -> String {
        format!(".part-{}-{}-{}-{n}.inprogress", self.vertex, self.subtask, self.attempt)
    }

    /// The committed name of part `n`.
    fn committed_name(&self, n: u64) -> String {
        format!("part-{}-{}-{n}", self.vertex, self.subtask)
    }

    /// An I/O error about `path`.
    fn io_err(what: &str, path: &Path, e: std::io::Error) -> OperatorError {
        OperatorError::io(format!("file sink: {what} {}", path.display()), e)
    }

    /// Commits restored pending files, deletes the inherited stale in-progress files, picks the next part number.
    async fn initialize(&mut self, restored: Option<OperatorState>) -> Result<(), OperatorError> {
        tokio::fs::create_dir_all(&self.dir).await.map_err(|e| Self::io_err("creating", &self.dir, e))?;
        if let Some(OperatorState::FileSink { next_part, pending }) = restored {
            self.next_part = next_part;
            for part in &pending {
                self.commit(part).await?;
            }
        }
        let dir_err = |e| Self::io_err("listing", &self.dir, e);
        let mut entries = tokio::fs::read_dir(&self.dir).await.map_err(dir_err)?;
        let mut highest = None;
        while let Some(entry) = entries.next_entry().await.map_err(dir_err)? {
            let Ok(name) = entry.file_name().into_string() else { continue };
            if let Some((k, n)) = parse_committed(&name, &self.vertex) {
                if k == self.subtask {
                    highest = highest.max(Some(n));
                }
            } else if let Some((k, n)) = parse_inprogress(&name, &self.vertex) {
                if k == self.subtask {
                    highest = highest.max(Some(n));
                }
                if k % self.parallelism == self.subtask {
                    let path = entry.path();
                    tokio::fs::remove_file(&path).await.map_err(|e| Self::io_err("deleting", &path, e))?;
                }
            }
        }
        if let Some(n) = highest {
            self.next_part = self.next_part.max(n + 1);
        }
        sync_dir_async(&self.dir).await.map_err(|e| Self::io_err("syncing", &self.dir, e))
    }

    /// Appends a record as one JSON line, opening a part file if none is open.
    async fn write(&mut self, record: &Record) -> Result<(), OperatorError> {
        if self.current.is_none() {
            let n = self.next_part;
            let name = self.inprogress_name(n);
            let path = self.dir.join(&name);
            let file = tokio::fs::File::create(&path).await.map_err(|e| Self::io_err("creating", &path, e))?;
            self.next_part += 1;
            self.current = Some(InProgress { n, name, writer: BufWriter::with_capacity(WRITE_BUFFER_BYTES, file) });
        }
        let Some(open) = self.current.as_mut() else { return Ok(()) };
        let mut line = serde_json::to_vec(record).map_err(|e| OperatorError::io("file sink: encoding", e.into()))?;
        line.push(b'\n');
        let path = self.dir.join(&open.name);
        open.writer.write_all(&line).await.map_err(|e| Self::io_err("writing", &path, e))
    }

    /// Flushes, fsyncs and closes the open part file; returns it as a pending part.
    async fn close_current(&mut self, checkpoint_id: u64) -> Result<Option<PendingPart>, OperatorError> {
        let Some(mut open) = self.current.take() else { return Ok(None) };
        let path = self.dir.join(&open.name);
        open.writer.flush().await.map_err(|e| Self::io_err("flushing", &path, e))?;
        open.writer.get_mut().sync_all().await.map_err(|e| Self::io_err("syncing", &path, e))?;
        let committed = self.committed_name(open.n);
        let dir = Some(self.dir.to_string_lossy().into_owned());
        Ok(Some(PendingPart { checkpoint_id, inprogress: open.name, committed, dir }))
    }

    /// The sink's state: next part number and pending files.
    fn state(&self) -> OperatorState {
        OperatorState::FileSink { next_part: self.next_part, pending: self.pending.clone() }
    }

    /// Phase one.
    async fn snapshot(&mut self, checkpoint_id: u64) -> Result<OperatorState, OperatorError> {
        if let Some(part) = self.close_current(checkpoint_id).await? {
            self.pending.push(part);
        }
        Ok(self.state())
    }

    /// Phase two for every pending file of a checkpoint ≤ `checkpoint_id`.
    async fn commit_up_to(&mut self, checkpoint_id: u64) -> Result<(), OperatorError> {
        let (ready, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.pending).into_iter().partition(|p| p.checkpoint_id <= checkpoint_id);
        self.pending = waiting;
        for part in &ready {
            self.commit(part).await?;
        }
        let dirs: std::collections::BTreeSet<PathBuf> =
            ready.iter().map(|p| p.dir.as_ref().map_or_else(|| self.dir.clone(), PathBuf::from)).collect();
        for dir in dirs {
            sync_dir_async(&dir).await.map_err(|e| Self::io_err("syncing", &dir, e))?;
        }
        Ok(())
    }

    /// Commits everything: the open file and all pending ones.
    async fn finish(&mut self) -> Result<(), OperatorError> {
        if let Some(part) = self.close_current(u64::MAX).await? {
            self.pending.push(part);
        }
        self.commit_up_to(u64::MAX).await
    }

    /// Renames a pending file to its final name; already committed is fine, lost is an error.
    async fn commit(&self, part: &PendingPart) -> Result<(), OperatorError> {
        let dir = part.dir.as_ref().map_or_else(|| self.dir.clone(), PathBuf::from);
        let from = dir.join(&part.inprogress);
        let to = dir.join(&part.committed);
        match tokio::fs::rename(&from, &to).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if tokio::fs::try_exists(&to).await.unwrap_or(false) {
                    Ok(())
                } else {
                    let reason = format!("pending part file is gone and {} does not exist", part.committed);
                    Err(Self::io_err("committing", &from, std::io::Error::new(std::io::ErrorKind::NotFound, reason)))
                }
            }
            Err(e) => Err(Self::io_err("committing", &from, e)),
        }
    }
}

/// Fsyncs a directory on the blocking pool (a directory fsync can take milliseconds).
async fn sync_dir_async(dir: &Path) -> std::io::Result<()> {
    let dir = dir.to_path_buf();
    crate::blocking::run(move || sync_dir(&dir)).await.map_err(std::io::Error::other)?
}

/// `(subtask, n)` of a committed part file `part-<vertex>-<subtask>-<n>` of `vertex`.
pub fn parse_committed(name: &str, vertex: &str) -> Option<(u32, u64)> {
    let rest = name.strip_prefix("part-")?.strip_prefix(vertex)?.strip_prefix('-')?;
    let (k, n) = rest.split_once('-')?;
    Some((parse_digits(k)?, parse_digits(n)?))
}

/// `(subtask, n)` of an in-progress file `.part-<vertex>-<subtask>-<attempt>-<n>.inprogress` of `vertex`.
pub fn parse_inprogress(name: &str, vertex: &str) -> Option<(u32, u64)> {
    let rest = name.strip_prefix(".part-")?.strip_prefix(vertex)?.strip_prefix('-')?.strip_suffix(".inprogress")?;
    let mut parts = rest.split('-');
    let (k, attempt, n) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    parse_digits::<u32>(attempt)?;
    Some((parse_digits(k)?, parse_digits(n)?))
}

/// A number written with ASCII digits only (no sign, no spaces).
fn parse_digits<T: std::str::FromStr>(text: &str) -> Option<T> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rec(n: u64) -> Record {
        json!({ "seq": n }).as_object().cloned().unwrap_or_default()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    }

    #[test]
    fn names_parse_strictly() {
        assert_eq!(parse_committed("part-a-0-3", "a"), Some((0, 3)));
        assert_eq!(parse_committed("part-a-0-1-2", "a"), None, "belongs to vertex a-0");
        assert_eq!(parse_committed("part-a-0-1-2", "a-0"), Some((1, 2)));
        assert_eq!(parse_inprogress(".part-a-1-2-3.inprogress", "a"), Some((1, 3)));
        assert_eq!(parse_inprogress(".part-a-0-1-2-3.inprogress", "a"), None);
        assert_eq!(parse_inprogress(".part-a-+1-2-3.inprogress", "a"), None);
    }

    #[tokio::test]
    async fn two_phase_commit_and_restore() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = FileSink::new(dir.path().to_path_buf(), "v".into(), 0, 1, 1);
        sink.initialize(None).await.unwrap();
        sink.write(&rec(1)).await.unwrap();
        let state = sink.snapshot(1).await.unwrap();
        sink.write(&rec(2)).await.unwrap();
        sink.snapshot(2).await.unwrap();
        sink.write(&rec(3)).await.unwrap();
        sink.commit_up_to(1).await.unwrap();
        assert_eq!(names(dir.path()), vec![".part-v-0-1-1.inprogress", ".part-v-0-1-2.inprogress", "part-v-0-0"]);
        drop(sink);

        // Attempt 2 restores checkpoint 1's state: part 0 is committed already, parts 1 and 2 are stale.
        let mut sink = FileSink::new(dir.path().to_path_buf(), "v".into(), 0, 1, 2);
        sink.initialize(Some(state)).await.unwrap();
        assert_eq!(names(dir.path()), vec!["part-v-0-0"]);
        sink.write(&rec(2)).await.unwrap();
        sink.finish().await.unwrap();
        assert_eq!(names(dir.path()), vec!["part-v-0-0", "part-v-0-3"]);
        assert_eq!(std::fs::read_to_string(dir.path().join("part-v-0-3")).unwrap(), "{\"seq\":2}\n");
    }
}
