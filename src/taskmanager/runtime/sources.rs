//! Sources: `sequence` and `files`.
//!
//! A source is polled by its subtask between control messages ([`Source::poll`]): it returns a record, a time to
//! come back (rate limit, or nothing new yet in a watched directory), or that it is finished. Its position is
//! operator state ([`Source::snapshot`]): a barrier injected between two polls records exactly which records were
//! emitted before it.
//!
//! * `sequence`: subtask `i` of `p` emits `from + i, from + i + p, ...` below `to` (a split of stride `p`; restored
//!   state may hold several splits, emitted round-robin). The rate, `rate / p` per subtask, is paced record by
//!   record against a schedule (a token bucket holding at most [`MAX_BURST`] of credit), so output is smooth, not a
//!   burst per second.
//! * `files`: the regular files of a directory in name order (names starting with `.` or `_` are skipped, as Flink
//!   does for hidden and temporary files); file `k` belongs to subtask `k mod p`. Each line is emitted as
//!   `{"file", "offset", "line"}` where offset is the byte offset of the line's start; `\n` and a preceding `\r`
//!   are stripped and invalid UTF-8 is replaced. The state is each owned file's offset. With `watch`, the directory
//!   is polled every [`WATCH_INTERVAL`] for new files and appended complete lines; without it, the source finishes
//!   at the end of its files (a last line without newline is emitted).
//!
//! Caveat (`files` with `watch`): ownership is by position in the name order, so new files must sort after the
//! existing ones (timestamped names do); a file inserted before others shifts ownership and may be read twice.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncSeekExt, BufReader};
use tokio::time::Instant;

use super::operators::OperatorError;
use super::record::Record;
use super::state::{OperatorState, SequenceSplit};

/// How often a watched directory is polled.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(200);
/// The most a rate-limited source may run ahead after falling behind (e.g. under backpressure).
pub const MAX_BURST: Duration = Duration::from_millis(20);
/// Longest line a files source emits; longer lines fail the subtask instead of exhausting memory.
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// What a poll produced.
#[derive(Debug)]
pub enum SourcePoll {
    /// The next record.
    Record(Record),
    /// Nothing now; poll again at this instant.
    WaitUntil(Instant),
    /// No more records, ever.
    Finished,
}

/// A source operator.
#[derive(Debug)]
pub enum Source {
    /// `sequence`.
    Sequence(SequenceSource),
    /// `files`.
    Files(Box<FilesSource>),
}

impl Source {
    /// The next record, a time to come back, or the end.
    pub async fn poll(&mut self) -> Result<SourcePoll, OperatorError> {
        match self {
            Source::Sequence(s) => Ok(s.poll(Instant::now())),
            Source::Files(f) => f.poll().await,
        }
    }

    /// The position to restore from.
    pub fn snapshot(&self) -> OperatorState {
        match self {
            Source::Sequence(s) => OperatorState::Sequence { splits: s.splits.clone() },
            Source::Files(f) => OperatorState::Files { offsets: f.owned_offsets() },
        }
    }

    /// Restores the position (state planned by `state.rs`).
    pub fn restore(&mut self, state: OperatorState) {
        match (self, state) {
            (Source::Sequence(s), OperatorState::Sequence { splits }) => s.splits = splits,
            (Source::Files(f), OperatorState::Files { offsets }) => f.offsets = offsets,
            _ => {}
        }
    }
}

/// Paces records at a fixed interval.
#[derive(Debug)]
pub struct Pacer {
    /// Time between records.
    interval: Duration,
    /// When the next record may go.
    next_at: Option<Instant>,
}

impl Pacer {
    /// A pacer for `per_second` records per second.
    pub fn new(per_second: f64) -> Self {
        Pacer { interval: Duration::from_secs_f64(1.0 / per_second), next_at: None }
    }

    /// `None` if a record may go now (and takes its slot), else when to ask again.
    fn admit(&mut self, now: Instant) -> Option<Instant> {
        let next = *self.next_at.get_or_insert(now);
        if next > now {
            return Some(next);
        }
        // Behind schedule (slow consumer): keep at most MAX_BURST of credit, not everything owed.
        let next = next.max(now.checked_sub(MAX_BURST).unwrap_or(now));
        self.next_at = Some(next + self.interval);
        None
    }
}

/// The `sequence` source of one subtask.
#[derive(Debug)]
pub struct SequenceSource {
    /// Values not emitted yet.
    pub splits: Vec<SequenceSplit>,
    /// Exclusive upper bound, or unbounded.
    pub to: Option<u64>,
    /// Which split emits next.
    pub cursor: usize,
    /// Rate limit, if any.
    pub pacer: Option<Pacer>,
}

impl SequenceSource {
    /// The source of subtask `subtask` of `parallelism` before any restore.
    pub fn new(from: u64, to: Option<u64>, rate: Option<f64>, subtask: u32, parallelism: u32) -> Self {
        let splits = from
            .checked_add(u64::from(subtask))
            .map(|next| vec![SequenceSplit { next, stride: u64::from(parallelism.max(1)) }])
            .unwrap_or_default();
        let pacer = rate.map(|r| Pacer::new(r / f64::from(parallelism.max(1))));
        SequenceSource { splits, to, cursor: 0, pacer }
    }

    /// The next value, round-robin over the unfinished splits.
    fn poll(&mut self, now: Instant) -> SourcePoll {
        let to = self.to.unwrap_or(u64::MAX);
        self.splits.retain(|s| s.next < to);
        if self.splits.is_empty() {
            return SourcePoll::Finished;
        }
        if let Some(at) = self.pacer.as_mut().and_then(|p| p.admit(now)) {
            return SourcePoll::WaitUntil(at);
        }
        self.cursor %= self.splits.len();
        let split = &mut self.splits[self.cursor];
        let value = split.next;
        // Overflow past u64::MAX ends the split: there is no next value.
        split.next = value.saturating_add(split.stride);
        self.cursor += 1;
        let mut record = Record::new();
        record.insert("seq".to_string(), Value::from(value));
        SourcePoll::Record(record)
    }
}

/// The file a `files` source is reading.
#[derive(Debug)]
struct OpenFile {
    /// Its name in the directory.
    name: String,
    /// Buffered reader positioned at `offset`.
    reader: BufReader<tokio::fs::File>,
    /// Byte offset of the next line.
    offset: u64,
    /// The file's length when opened: in watch mode, bytes past it are read at the next poll.
    len: u64,
}

/// The `files` source of one subtask.
#[derive(Debug)]
pub struct FilesSource {
    /// The directory.
    pub dir: PathBuf,
    /// Keep polling for new files and lines.
    pub watch: bool,
    /// This subtask.
    pub subtask: u32,
    /// The vertex's parallelism.
    pub parallelism: u32,
    /// File name → offset of the next line, for every file seen (restored state may hold other subtasks' files).
    pub offsets: BTreeMap<String, u64>,
    /// Owned files not yet read in this pass.
    queue: std::collections::VecDeque<String>,
    /// The file being read.
    current: Option<OpenFile>,
    /// When a watched directory is listed next; `None` before the first listing.
    next_listing: Option<Instant>,
    /// Reused line buffer.
    line: Vec<u8>,
}

impl FilesSource {
    /// The source of one subtask before any restore.
    pub fn new(dir: PathBuf, watch: bool, subtask: u32, parallelism: u32) -> Self {
        FilesSource {
            dir,
            watch,
            subtask,
            parallelism: parallelism.max(1),
            offsets: BTreeMap::new(),
            queue: Default::default(),
            current: None,
            next_listing: None,
            line: Vec::new(),
        }
    }

    /// The offsets of every file this subtask knows, the open one's current: its share of a snapshot. Entries of
    /// other subtasks' files (from a restore) are kept: restoring takes the maximum offset per file, so a stale
    /// entry is harmless, and keeping them makes a snapshot taken before the first listing complete.
    fn owned_offsets(&self) -> BTreeMap<String, u64> {
        let mut out = self.offsets.clone();
        if let Some(open) = &self.current {
            out.insert(open.name.clone(), open.offset);
        }
        out
    }

    /// The next line, a time to come back, or the end.
    async fn poll(&mut self) -> Result<SourcePoll, OperatorError> {
        loop {
            if self.current.is_some() {
                if let Some(record) = self.read_line().await? {
                    return Ok(SourcePoll::Record(record));
                }
                continue;
            }
            if let Some(name) = self.queue.pop_front() {
                self.open(name).await?;
                continue;
            }
            match self.next_listing {
                Some(_) if !self.watch => return Ok(SourcePoll::Finished),
                Some(at) if at > Instant::now() => return Ok(SourcePoll::WaitUntil(at)),
                _ => self.list().await?,
            }
        }
    }

    /// Lists the directory and queues this subtask's files.
    async fn list(&mut self) -> Result<(), OperatorError> {
        let dir_err = |e| OperatorError::io(format!("files source: listing {}", self.dir.display()), e);
        let mut entries = tokio::fs::read_dir(&self.dir).await.map_err(dir_err)?;
        let mut names = Vec::new();
        while let Some(entry) = entries.next_entry().await.map_err(dir_err)? {
            let Ok(name) = entry.file_name().into_string() else { continue };
            if name.starts_with('.') || name.starts_with('_') {
                continue;
            }
            // Follows symlinks: a link to a regular file is read.
            if tokio::fs::metadata(entry.path()).await.is_ok_and(|m| m.is_file()) {
                names.push(name);
            }
        }
        names.sort();
        let (subtask, parallelism) = (self.subtask as usize, self.parallelism as usize);
        self.queue =
            names.into_iter().enumerate().filter(|(k, _)| k % parallelism == subtask).map(|(_, n)| n).collect();
        self.next_listing = Some(Instant::now() + WATCH_INTERVAL);
        Ok(())
    }

    /// Opens an owned file at its offset, unless there is nothing new in it.
    async fn open(&mut self, name: String) -> Result<(), OperatorError> {
        let path = self.dir.join(&name);
        let offset = self.offsets.get(&name).copied().unwrap_or(0);
        let file_err = |e| OperatorError::io(format!("files source: reading {}", path.display()), e);
        let len = match tokio::fs::metadata(&path).await {
            Ok(m) => m.len(),
            // Deleted since the listing: nothing to read.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(file_err(e)),
        };
        if len < offset {
            let reason =
                format!("the file is {len} bytes but was read up to byte {offset}: it was truncated or replaced");
            return Err(file_err(std::io::Error::other(reason)));
        }
        if len == offset {
            return Ok(());
        }
        let mut file = tokio::fs::File::open(&path).await.map_err(file_err)?;
        file.seek(std::io::SeekFrom::Start(offset)).await.map_err(file_err)?;
        self.current = Some(OpenFile { name, reader: BufReader::new(file), offset, len });
        Ok(())
    }

    /// The next line of the open file as a record; `None` (and the file closed) at its end.
    async fn read_line(&mut self) -> Result<Option<Record>, OperatorError> {
        let Some(open) = self.current.as_mut() else { return Ok(None) };
        let path = self.dir.join(&open.name);
        let file_err = |e| OperatorError::io(format!("files source: reading {}", path.display()), e);
        self.line.clear();
        // In watch mode read only up to the length seen at open: a line still being written stays for later.
        let limit = if self.watch { open.len.saturating_sub(open.offset) } else { MAX_LINE_BYTES as u64 + 1 };
        let limit = limit.min(MAX_LINE_BYTES as u64 + 1);
        let n = (&mut open.reader).take(limit).read_until(b'\n', &mut self.line).await.map_err(file_err)?;
        let complete = self.line.last() == Some(&b'\n');
        if n > MAX_LINE_BYTES {
            return Err(file_err(std::io::Error::other(format!("a line longer than {MAX_LINE_BYTES} bytes"))));
        }
        if n == 0 || (self.watch && !complete) {
            let open = self.current.take().map(|o| (o.name, o.offset));
            if let Some((name, offset)) = open {
                self.offsets.insert(name, offset);
            }
            return Ok(None);
        }
        let start = open.offset;
        open.offset += n as u64;
        let mut end = self.line.len();
        if complete {
            end -= 1;
            if end > 0 && self.line[end - 1] == b'\r' {
                end -= 1;
            }
        }
        let mut record = Record::new();
        record.insert("file".to_string(), Value::from(open.name.clone()));
        record.insert("offset".to_string(), Value::from(start));
        record.insert("line".to_string(), Value::from(String::from_utf8_lossy(&self.line[..end]).into_owned()));
        Ok(Some(record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain_sequence(s: &mut SequenceSource) -> Vec<u64> {
        let mut out = Vec::new();
        while let SourcePoll::Record(r) = s.poll(Instant::now()) {
            out.push(r["seq"].as_u64().unwrap());
        }
        out
    }

    #[test]
    fn sequence_splits_by_subtask() {
        assert_eq!(drain_sequence(&mut SequenceSource::new(5, Some(15), None, 1, 3)), vec![6, 9, 12]);
        assert_eq!(drain_sequence(&mut SequenceSource::new(u64::MAX - 1, None, None, 0, 1)), vec![u64::MAX - 1]);
    }

    #[test]
    fn sequence_rate_is_smooth() {
        // 1000 per second over 2 subtasks: one record every 2 ms per subtask, checked on a simulated clock.
        let mut s = SequenceSource::new(0, None, Some(1000.0), 0, 2);
        let start = Instant::now();
        let mut now = start;
        let mut emitted = Vec::new();
        while now < start + Duration::from_millis(100) {
            match s.poll(now) {
                SourcePoll::Record(_) => emitted.push(now - start),
                SourcePoll::WaitUntil(at) => now = at,
                SourcePoll::Finished => unreachable!(),
            }
        }
        assert_eq!(emitted.len(), 50);
        assert!(emitted.windows(2).all(|w| w[1] - w[0] == Duration::from_millis(2)), "{emitted:?}");
        // After a stall, at most MAX_BURST worth of records go at once.
        now += Duration::from_secs(1);
        let mut burst = 0;
        while let SourcePoll::Record(_) = s.poll(now) {
            burst += 1;
        }
        assert_eq!(burst, 11, "20 ms of credit at 2 ms per record, plus the record due now");
    }

    #[tokio::test]
    async fn files_are_split_by_name_order_and_resume_at_offsets() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), "one\r\ntwo\n").unwrap();
        std::fs::write(dir.path().join("b.txt"), "x\n").unwrap();
        std::fs::write(dir.path().join("c.txt"), "three\nfour").unwrap();
        std::fs::write(dir.path().join(".hidden"), "no\n").unwrap();
        let mut source = FilesSource::new(dir.path().to_path_buf(), false, 0, 2);
        let first = match source.poll().await.unwrap() {
            SourcePoll::Record(r) => r,
            other => panic!("{other:?}"),
        };
        assert_eq!(Value::Object(first), serde_json::json!({"file": "a.txt", "offset": 0, "line": "one"}));
        let OperatorState::Files { offsets } = Source::Files(Box::new(source)).snapshot() else { unreachable!() };
        assert_eq!(offsets.get("a.txt"), Some(&5));

        let mut restored = FilesSource::new(dir.path().to_path_buf(), false, 0, 2);
        restored.offsets = offsets;
        let mut lines = Vec::new();
        while let SourcePoll::Record(r) = restored.poll().await.unwrap() {
            lines.push((r["file"].as_str().unwrap().to_string(), r["offset"].as_u64().unwrap(), r["line"].clone()));
        }
        assert_eq!(
            lines,
            vec![
                ("a.txt".into(), 5, Value::from("two")),
                ("c.txt".into(), 0, Value::from("three")),
                ("c.txt".into(), 6, Value::from("four")),
            ]
        );
    }

    #[tokio::test]
    async fn watched_files_wait_for_complete_lines() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), "one\ntw").unwrap();
        let mut source = FilesSource::new(dir.path().to_path_buf(), true, 0, 1);
        assert!(matches!(source.poll().await.unwrap(), SourcePoll::Record(_)));
        assert!(matches!(source.poll().await.unwrap(), SourcePoll::WaitUntil(_)));
        std::fs::write(dir.path().join("a"), "one\ntwo\n").unwrap();
        source.next_listing = Some(Instant::now());
        let SourcePoll::Record(r) = source.poll().await.unwrap() else { panic!("no record") };
        assert_eq!((r["offset"].as_u64(), r["line"].as_str()), (Some(4), Some("two")));
    }
}
