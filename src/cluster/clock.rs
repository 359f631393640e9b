//! The wall clock, injected so the node can run inside a deterministic simulation.
//!
//! Wall-clock time only ever enters the replicated state as data in a command (`submitted_at_ms`,
//! `at_ms`): the proposer reads the clock, the state machine never does. Timeouts and intervals use
//! tokio's clock, which a simulation (turmoil) or a test (`tokio::time::pause`) controls.

use std::time::{SystemTime, UNIX_EPOCH};

/// A source of wall-clock time.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    }
}
