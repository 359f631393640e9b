//! Failpoints: named places where a test build of a replica can be made to crash on purpose, for the chaos suite.
//!
//! What it owns: the list of failpoints ([`ALL`]), arming and disarming them ([`configure`], which checks the name
//! against that list and the action's syntax), and what a triggered failpoint does ([`hit`]): it kills the process
//! at once, like a SIGKILL, with one line on stderr saying which failpoint fired. No destructor, no flush, no
//! goodbye to the peers; `_exit` does not even run `atexit` handlers or flush stdio buffers.
//!
//! The failpoints:
//!
//! * [`DISK_BEFORE_FLUSH`]: in the disk writer, after a group's writes reached the engine and just before its
//!   flush (the fsync); what was written since the last flush is not durable.
//! * [`DISK_AFTER_FLUSH`]: in the disk writer, just after the flush returned and before any durability callback
//!   ran: the writes are durable but nobody was told (openraft has not acknowledged the entries).
//! * [`CHECKPOINT_AFTER_COMMIT`]: in a JobMaster, just after a completed checkpoint's `CompleteCheckpoint` was
//!   committed through Raft and before it is acknowledged to the coordinator and the TaskManagers (before
//!   `notifyCheckpointComplete`): the checkpoint is in the log, the sinks have not published.
//!
//! Invariants: without the `failpoints` cargo feature, [`hit`] compiles to nothing and [`configure`] refuses with
//! [`FailpointError::NotCompiled`], so a production build cannot be crashed through the admin RPC. With it, a
//! failpoint does nothing until armed. Actions use the `fail` crate's syntax (`return`, `1*return`, `10%return`,
//! `sleep(500)`, `pause`, `off`, chained with `->`); `return` means "crash here".
//!
//! Caveat: armed state lives in the process; a replica restarted after a crash comes back disarmed (unless started
//! with `jm server --failpoint NAME=ACTION`).

/// In the disk writer, just before the flush (fsync) of a group of writes.
pub const DISK_BEFORE_FLUSH: &str = "disk-before-fsync";
/// In the disk writer, just after the flush (fsync), before the durability callbacks run.
pub const DISK_AFTER_FLUSH: &str = "disk-after-fsync";
/// In a JobMaster, just after `CompleteCheckpoint` is committed and before the checkpoint is acknowledged.
pub const CHECKPOINT_AFTER_COMMIT: &str = "checkpoint-after-commit";

/// Every failpoint, by name.
pub const ALL: [&str; 3] = [DISK_BEFORE_FLUSH, DISK_AFTER_FLUSH, CHECKPOINT_AFTER_COMMIT];

/// Whether this build has the failpoints compiled in (the `failpoints` cargo feature).
pub const COMPILED: bool = cfg!(feature = "failpoints");

/// Why a failpoint could not be armed or disarmed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FailpointError {
    /// The binary was built without the `failpoints` feature.
    #[error(
        "this jm was built without the `failpoints` feature; build with `cargo build --features failpoints` \
         (preferably into its own `--target-dir target/failpoints`)"
    )]
    NotCompiled,
    /// No failpoint has this name.
    #[error("unknown failpoint {name:?}; known: {}", ALL.join(", "))]
    Unknown {
        /// The name given.
        name: String,
    },
    /// The action is not in the `fail` crate's syntax.
    #[error(
        "invalid action {action:?} for failpoint {name}: {reason} (e.g. `return`, `1*return`, `10%return`, `off`)"
    )]
    InvalidAction {
        /// The failpoint.
        name: String,
        /// The action given.
        action: String,
        /// The parser's complaint.
        reason: String,
    },
}

/// Refuses: this build has no failpoints to arm.
#[cfg(not(feature = "failpoints"))]
pub fn configure(_name: &str, _action: &str) -> Result<(), FailpointError> {
    Err(FailpointError::NotCompiled)
}

/// Arms failpoint `name` with `action` (`off` disarms it). The name must be one of [`ALL`].
#[cfg(feature = "failpoints")]
pub fn configure(name: &str, action: &str) -> Result<(), FailpointError> {
    let Some(name) = ALL.iter().find(|n| **n == name) else {
        return Err(FailpointError::Unknown { name: name.to_string() });
    };
    let action = action.trim();
    let invalid =
        |reason: String| FailpointError::InvalidAction { name: name.to_string(), action: action.to_string(), reason };
    if action.is_empty() {
        return Err(invalid("the action is empty".into()));
    }
    fail::cfg(*name, action).map_err(invalid)?;
    tracing::warn!(failpoint = name, action, "failpoint configured");
    Ok(())
}

/// Parses `NAME=ACTION` (the `jm server --failpoint` syntax) and arms it.
pub fn configure_spec(spec: &str) -> Result<(), FailpointError> {
    let (name, action) = spec.split_once('=').unwrap_or((spec, ""));
    configure(name.trim(), action)
}

/// Every armed failpoint with its action, by name (none without the feature).
#[cfg(not(feature = "failpoints"))]
pub fn armed() -> Vec<(String, String)> {
    Vec::new()
}

/// Every armed failpoint with its action, by name.
#[cfg(feature = "failpoints")]
pub fn armed() -> Vec<(String, String)> {
    let mut list: Vec<(String, String)> =
        fail::list().into_iter().filter(|(_, a)| !a.is_empty() && a != "off").collect();
    list.sort();
    list
}

/// Evaluates failpoint `name`: when armed and its action triggers `return`, the process dies here.
#[cfg(feature = "failpoints")]
pub fn hit(name: &'static str) {
    fail::fail_point!(name, |_| crash(name));
}

/// Evaluates failpoint `name`: a no-op, this build has no failpoints.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &'static str) {}

/// Ends the process at once, as a SIGKILL would, after one line on stderr.
#[cfg(feature = "failpoints")]
fn crash(name: &str) -> ! {
    use std::io::Write;
    // stderr is unbuffered; the line is out before the process is gone.
    let _ = writeln!(std::io::stderr(), "failpoint {name} fired: crashing the process (exit status 86)");
    // SAFETY: `_exit` ends the process immediately; nothing after it runs, so no invariant can be observed broken.
    unsafe { libc::_exit(86) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(not(feature = "failpoints"))]
    fn without_the_feature_arming_is_refused_with_how_to_build_it() {
        let e = configure(DISK_BEFORE_FLUSH, "return").unwrap_err();
        assert_eq!(e, FailpointError::NotCompiled);
        assert!(e.to_string().contains("cargo build --features failpoints"), "{e}");
        // The hook is a no-op: calling it does not crash the test process.
        hit(DISK_BEFORE_FLUSH);
    }

    #[test]
    #[cfg(feature = "failpoints")]
    fn names_and_actions_are_checked_and_arming_shows_in_the_list() {
        let e = configure("disk-before-fsyncc", "return").unwrap_err();
        assert!(matches!(e, FailpointError::Unknown { .. }));
        assert!(e.to_string().contains(DISK_AFTER_FLUSH) && e.to_string().contains(CHECKPOINT_AFTER_COMMIT), "{e}");
        assert!(matches!(configure(CHECKPOINT_AFTER_COMMIT, "7*bogus"), Err(FailpointError::InvalidAction { .. })));
        assert!(matches!(configure_spec(CHECKPOINT_AFTER_COMMIT), Err(FailpointError::InvalidAction { .. })));
        configure_spec(&format!("{CHECKPOINT_AFTER_COMMIT}=sleep(1)")).unwrap();
        assert!(armed().contains(&(CHECKPOINT_AFTER_COMMIT.to_string(), "sleep(1)".to_string())));
        // Armed with a non-crashing action, the hook runs it and returns.
        hit(CHECKPOINT_AFTER_COMMIT);
        configure(CHECKPOINT_AFTER_COMMIT, "off").unwrap();
    }
}
