//! The checkpoint storage layout: where checkpoints and savepoints live in the shared directory (Flink's
//! `state.checkpoints.dir` and `state.savepoints.dir`), and their `_metadata` file.
//!
//! ```text
//! <checkpoint dir>/<job id>/chk-<id>/_metadata          a completed checkpoint
//! <checkpoint dir>/<job id>/chk-<id>/...                the tasks' state files, named by the TaskManagers
//! <savepoint dir>/savepoint-<job id, 6 chars>-<id>/_metadata
//! ```
//!
//! This module owns the paths and the metadata file, nothing else: the TaskManagers write the state files, and the
//! JobMaster writes `_metadata` once every task has acknowledged, before it commits the checkpoint through Raft.
//!
//! # Invariants
//!
//! * A directory holds a completed checkpoint or savepoint exactly when it holds `_metadata`: the file is written to
//!   a temporary name, synced, renamed into place and the directory synced, so a crash leaves either no `_metadata`
//!   or a whole one. A restore therefore never starts from a half-written checkpoint.
//! * The metadata is versioned ([`METADATA_VERSION`]); a reader refuses a version it does not know instead of
//!   guessing.
//!
//! # Caveats
//!
//! * The directory must be shared by every replica and TaskManager (a network file system), as in Flink; nothing
//!   here checks that.
//! * Job ids are trusted to be path-safe (the dispatcher only issues 32 lowercase hex characters).
//! * Only this module does I/O among the checkpoint components; it is synchronous, so async callers run it on a
//!   blocking thread ([`crate::blocking::run`]). That includes what savepoint disposal needs: [`inspect`] (is
//!   this a checkpoint?), [`same_dir`] and [`dispose`].

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Name of the file that marks a completed checkpoint or savepoint and describes it.
pub const METADATA_FILE: &str = "_metadata";

/// The metadata format version this build writes and reads.
pub const METADATA_VERSION: u32 = 1;

/// Distinguishes concurrent temporary files of this process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The directory holding all of a job's checkpoints: `base/<job_id>`.
pub fn job_checkpoint_dir(base: &Path, job_id: &str) -> PathBuf {
    base.join(job_id)
}

/// The directory of checkpoint `id` of a job: `base/<job_id>/chk-<id>`.
pub fn checkpoint_dir(base: &Path, job_id: &str, id: u64) -> PathBuf {
    job_checkpoint_dir(base, job_id).join(format!("chk-{id}"))
}

/// The directory of a savepoint under the savepoint target directory `base`:
/// `base/savepoint-<first 6 chars of the job id>-<id>`, as Flink names them.
pub fn savepoint_dir(base: &Path, job_id: &str, id: u64) -> PathBuf {
    let short: String = job_id.chars().take(6).collect();
    base.join(format!("savepoint-{short}-{id}"))
}

/// The metadata file of the checkpoint or savepoint in `dir`.
pub fn metadata_path(dir: &Path) -> PathBuf {
    dir.join(METADATA_FILE)
}

/// What a completed checkpoint or savepoint holds: enough to restore the job from it, alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointMetadata {
    /// The format version, [`METADATA_VERSION`] when written by this build.
    pub version: u32,
    /// The job it was taken from.
    pub job_id: String,
    /// The checkpoint id it was taken under.
    pub checkpoint_id: u64,
    /// Whether it is a savepoint (owned by the user) rather than a checkpoint.
    pub is_savepoint: bool,
    /// When it was triggered, in unix milliseconds.
    pub trigger_at_ms: u64,
    /// When the last task acknowledged it, in unix milliseconds.
    pub completed_at_ms: u64,
    /// The job spec's canonical JSON, so a restore can check the new job against the old one.
    pub spec_json: String,
    /// The vertices whose state it holds.
    pub vertices: Vec<VertexMetadata>,
    /// One state handle per acknowledging subtask.
    pub handles: Vec<StateHandle>,
}

impl CheckpointMetadata {
    /// Total state size in bytes.
    pub fn state_size(&self) -> u64 {
        self.handles.iter().map(|handle| handle.size).fold(0, u64::saturating_add)
    }
}

/// A vertex whose state a checkpoint holds, with the parallelism it was taken at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VertexMetadata {
    /// The vertex id.
    pub id: String,
    /// Its parallelism when the checkpoint was taken.
    pub parallelism: u32,
    /// Its max parallelism (number of key groups), which a restore must keep.
    pub max_parallelism: u32,
}

/// One subtask's state snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateHandle {
    /// The vertex id.
    pub vertex: String,
    /// The subtask index.
    pub subtask: u32,
    /// Where the snapshot is, as the TaskManager reported it.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Why checkpoint storage could not be read or written. Every variant names the path involved.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The directory has no `_metadata`: it is not (or not yet) a completed checkpoint or savepoint.
    #[error("{} holds no completed checkpoint or savepoint (no {METADATA_FILE})", dir.display())]
    NoMetadata {
        /// The directory looked in.
        dir: PathBuf,
    },
    /// The metadata file is not valid JSON of the expected shape.
    #[error("{} is not valid checkpoint metadata: {source}", path.display())]
    Corrupt {
        /// The metadata file.
        path: PathBuf,
        /// What the JSON parser said.
        source: serde_json::Error,
    },
    /// The metadata was written in a format this build does not read.
    #[error(
        "{} has metadata version {found}, but this build reads only version {METADATA_VERSION}; \
         restore it with a jm release that supports that version",
        path.display()
    )]
    UnsupportedVersion {
        /// The metadata file.
        path: PathBuf,
        /// The version found in it.
        found: u64,
    },
    /// The metadata could not be encoded (not expected to happen: it is plain data).
    #[error("could not encode the metadata for {}: {source}", path.display())]
    Encode {
        /// The metadata file that was to be written.
        path: PathBuf,
        /// What the JSON encoder said.
        source: serde_json::Error,
    },
    /// A file system operation failed.
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "create directory".
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
}

impl StorageError {
    /// The path the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Self::NoMetadata { dir } => dir,
            Self::Corrupt { path, .. }
            | Self::UnsupportedVersion { path, .. }
            | Self::Encode { path, .. }
            | Self::Io { path, .. } => path,
        }
    }
}

/// Builds a closure mapping an `io::Error` to [`StorageError::Io`] about `path`.
fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StorageError + 'a {
    move |source| StorageError::Io { action, path: path.to_path_buf(), source }
}

/// Writes `meta` as `dir/_metadata` (JSON) atomically and durably, creating `dir` if missing; returns the number of
/// bytes written. See the module documentation for why the write is atomic.
pub fn write_metadata(dir: &Path, meta: &CheckpointMetadata) -> Result<u64, StorageError> {
    let path = metadata_path(dir);
    let bytes =
        serde_json::to_vec_pretty(meta).map_err(|source| StorageError::Encode { path: path.clone(), source })?;
    fs::create_dir_all(dir).map_err(io_error("create directory", dir))?;
    let temp = dir.join(format!(
        ".{METADATA_FILE}.{}.{}.tmp",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = write_durably(&temp, &bytes).and_then(|()| {
        fs::rename(&temp, &path).map_err(io_error("rename into place", &path))?;
        sync_dir(dir)
    });
    if result.is_err() {
        // Best effort: a leftover temporary file is harmless (it is not `_metadata`), just untidy.
        let _ = fs::remove_file(&temp);
    }
    result.map(|()| bytes.len() as u64)
}

/// Creates `path` with `bytes` and syncs it to disk.
fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    let mut file = File::create(path).map_err(io_error("create", path))?;
    file.write_all(bytes).map_err(io_error("write", path))?;
    file.sync_all().map_err(io_error("sync", path))
}

/// Syncs a directory, so that a rename inside it survives a crash.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error("sync directory", dir))
}

/// Directories cannot be opened for syncing on this platform; the rename is as durable as the platform makes it.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<(), StorageError> {
    Ok(())
}

/// Reads the metadata of the checkpoint or savepoint in `dir`.
pub fn read_metadata(dir: &Path) -> Result<CheckpointMetadata, StorageError> {
    let path = metadata_path(dir);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(StorageError::NoMetadata { dir: dir.to_path_buf() })
        }
        Err(source) => return Err(StorageError::Io { action: "read", path, source }),
    };
    // The version is checked before the shape, so that a newer format says "newer format", not "missing field".
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|source| StorageError::Corrupt { path: path.clone(), source })?;
    if let Some(found) = value.get("version").and_then(serde_json::Value::as_u64) {
        if found != u64::from(METADATA_VERSION) {
            return Err(StorageError::UnsupportedVersion { path, found });
        }
    }
    serde_json::from_value(value).map_err(|source| StorageError::Corrupt { path, source })
}

/// Deletes the checkpoint or savepoint in `dir` with everything in it; a directory already gone is fine.
pub fn discard(dir: &Path) -> Result<(), StorageError> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(StorageError::Io { action: "remove", path: dir.into(), source: e })
        }
        _ => Ok(()),
    }
}

/// What is at a path that should hold a checkpoint or savepoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// Nothing: the path does not exist.
    Nothing,
    /// Something that is not a completed checkpoint or savepoint: a file, or a directory without `_metadata`.
    NotCompleted,
    /// A directory holding `_metadata`: a completed checkpoint or savepoint.
    Completed,
}

/// Looks at what `dir` holds, without reading the metadata (a corrupt `_metadata` still marks a checkpoint).
pub fn inspect(dir: &Path) -> Result<Found, StorageError> {
    let missing = |e: &io::Error| matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory);
    match fs::metadata(dir) {
        Err(e) if missing(&e) => return Ok(Found::Nothing),
        Err(source) => return Err(StorageError::Io { action: "inspect", path: dir.into(), source }),
        Ok(meta) if !meta.is_dir() => return Ok(Found::NotCompleted),
        Ok(_) => {}
    }
    let path = metadata_path(dir);
    match fs::metadata(&path) {
        Ok(meta) if meta.is_file() => Ok(Found::Completed),
        Ok(_) => Ok(Found::NotCompleted),
        Err(e) if missing(&e) => Ok(Found::NotCompleted),
        Err(source) => Err(StorageError::Io { action: "inspect", path, source }),
    }
}

/// Whether two paths name the same directory: equal once `.` components and repeated or trailing slashes are
/// ignored, or resolving to the same place (through symbolic links) on this file system.
pub fn same_dir(a: &Path, b: &Path) -> bool {
    if a.components().eq(b.components()) {
        return true;
    }
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Deletes a savepoint or checkpoint directory on a user's request: [`discard`], tolerating another process that
/// deletes the same directory at the same time (a deposed leader whose deletion still runs). A failed removal counts
/// as done when the directory is gone afterwards.
pub fn dispose(dir: &Path) -> Result<(), StorageError> {
    const ATTEMPTS: u32 = 3;
    let mut attempt = 1;
    loop {
        let Err(e) = discard(dir) else { return Ok(()) };
        if matches!(fs::symlink_metadata(dir), Err(gone) if gone.kind() == io::ErrorKind::NotFound) {
            return Ok(());
        }
        if attempt >= ATTEMPTS {
            return Err(e);
        }
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata() -> CheckpointMetadata {
        CheckpointMetadata {
            version: METADATA_VERSION,
            job_id: "0123456789abcdef0123456789abcdef".to_string(),
            checkpoint_id: 7,
            is_savepoint: false,
            trigger_at_ms: 1_000,
            completed_at_ms: 1_250,
            spec_json: r#"{"name":"j"}"#.to_string(),
            vertices: vec![VertexMetadata { id: "src".to_string(), parallelism: 2, max_parallelism: 128 }],
            handles: vec![
                StateHandle { vertex: "src".to_string(), subtask: 0, path: "chk-7/src-0".to_string(), size: 10 },
                StateHandle { vertex: "src".to_string(), subtask: 1, path: "chk-7/src-1".to_string(), size: 32 },
            ],
        }
    }

    #[test]
    fn layout_follows_flink() {
        let base = Path::new("/ckpt");
        let job = "0123456789abcdef0123456789abcdef";
        assert_eq!(job_checkpoint_dir(base, job), Path::new("/ckpt/0123456789abcdef0123456789abcdef"));
        assert_eq!(checkpoint_dir(base, job, 12), Path::new("/ckpt/0123456789abcdef0123456789abcdef/chk-12"));
        assert_eq!(savepoint_dir(Path::new("/sp"), job, 3), Path::new("/sp/savepoint-012345-3"));
        assert_eq!(savepoint_dir(Path::new("/sp"), "ab", 3), Path::new("/sp/savepoint-ab-3"));
    }

    #[test]
    fn metadata_round_trips_and_creates_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = checkpoint_dir(tmp.path(), "0123456789abcdef0123456789abcdef", 7);
        let meta = metadata();
        let written = write_metadata(&dir, &meta).unwrap();
        assert_eq!(written, fs::metadata(metadata_path(&dir)).unwrap().len());
        assert_eq!(read_metadata(&dir).unwrap(), meta);
        assert_eq!(meta.state_size(), 42);
        // Only `_metadata` is left: no temporary file.
        let names: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![METADATA_FILE]);
    }

    #[test]
    fn rewriting_replaces_the_metadata() {
        let tmp = tempfile::tempdir().unwrap();
        let mut meta = metadata();
        write_metadata(tmp.path(), &meta).unwrap();
        meta.completed_at_ms = 9_999;
        write_metadata(tmp.path(), &meta).unwrap();
        assert_eq!(read_metadata(tmp.path()).unwrap().completed_at_ms, 9_999);
    }

    #[test]
    fn missing_metadata_says_so() {
        let tmp = tempfile::tempdir().unwrap();
        let err = read_metadata(tmp.path()).unwrap_err();
        assert!(matches!(err, StorageError::NoMetadata { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("{} holds no completed checkpoint or savepoint (no _metadata)", tmp.path().display())
        );
        // A directory that does not exist at all is the same mistake.
        let gone = tmp.path().join("nope");
        assert!(matches!(read_metadata(&gone), Err(StorageError::NoMetadata { dir }) if dir == gone));
    }

    #[test]
    fn garbage_metadata_is_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(metadata_path(tmp.path()), b"not json").unwrap();
        let err = read_metadata(tmp.path()).unwrap_err();
        assert!(matches!(err, StorageError::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains("is not valid checkpoint metadata"), "{err}");
        assert_eq!(err.path(), metadata_path(tmp.path()));

        fs::write(metadata_path(tmp.path()), br#"{"version": 1, "job_id": "x"}"#).unwrap();
        let err = read_metadata(tmp.path()).unwrap_err();
        assert!(err.to_string().contains("missing field"), "{err}");
    }

    #[test]
    fn unknown_version_is_refused_before_the_shape_is_checked() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(metadata_path(tmp.path()), br#"{"version": 2, "something": "new"}"#).unwrap();
        let err = read_metadata(tmp.path()).unwrap_err();
        assert!(matches!(err, StorageError::UnsupportedVersion { found: 2, .. }), "{err:?}");
        assert!(err.to_string().contains("metadata version 2, but this build reads only version 1"), "{err}");
    }

    #[test]
    fn inspect_tells_a_checkpoint_from_anything_else() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = savepoint_dir(tmp.path(), "0123456789abcdef0123456789abcdef", 4);
        assert_eq!(inspect(&dir).unwrap(), Found::Nothing);
        fs::create_dir_all(&dir).unwrap();
        assert_eq!(inspect(&dir).unwrap(), Found::NotCompleted);
        write_metadata(&dir, &metadata()).unwrap();
        assert_eq!(inspect(&dir).unwrap(), Found::Completed);
        assert_eq!(inspect(&metadata_path(&dir)).unwrap(), Found::NotCompleted, "a file is no checkpoint");
        assert_eq!(inspect(&metadata_path(&dir).join("below")).unwrap(), Found::Nothing);
    }

    #[test]
    fn same_dir_ignores_spelling_and_follows_links() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(same_dir(Path::new("/sp/a/"), Path::new("/sp//./a")));
        assert!(!same_dir(Path::new("/sp/a"), Path::new("/sp/b")));
        let real = tmp.path().join("real");
        fs::create_dir_all(&real).unwrap();
        #[cfg(unix)]
        {
            let link = tmp.path().join("link");
            std::os::unix::fs::symlink(&real, &link).unwrap();
            assert!(same_dir(&link, &real));
        }
    }

    #[test]
    fn dispose_deletes_the_directory_and_accepts_one_already_gone() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = savepoint_dir(tmp.path(), "0123456789abcdef0123456789abcdef", 4);
        write_metadata(&dir, &metadata()).unwrap();
        fs::write(dir.join("src-0"), b"state").unwrap();
        dispose(&dir).unwrap();
        assert_eq!(inspect(&dir).unwrap(), Found::Nothing);
        dispose(&dir).unwrap();
        assert!(tmp.path().exists(), "only the savepoint's own directory goes");
    }

    #[test]
    fn discard_is_idempotent() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = checkpoint_dir(tmp.path(), "job", 1);
        write_metadata(&dir, &metadata()).unwrap();
        fs::write(dir.join("src-0"), b"state").unwrap();
        discard(&dir).unwrap();
        assert!(!dir.exists());
        discard(&dir).unwrap();
        assert!(job_checkpoint_dir(tmp.path(), "job").exists(), "only the checkpoint's own directory goes");
    }
}
