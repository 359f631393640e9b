//! Checkers: each reads a history (and, for some, what the harness collected at the end: replica states, logs,
//! TaskManager observations) and returns a [`Verdict`] with the evidence a person needs to see the problem.
//!
//! Every checker has tests that feed it a history with an injected anomaly and must flag it: a checker that cannot
//! fail is worthless.

pub mod checkpoints;
pub mod common;
pub mod epochs;
pub mod leaders;
pub mod leases;
pub mod linearizable;
pub mod logs;
pub mod set;

use serde::{Deserialize, Serialize};

/// What a checker concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Validity {
    /// The history satisfies the property.
    Valid,
    /// It violates it; the evidence shows where.
    Invalid,
    /// The checker could not decide (a time or search limit, or too little data).
    Unknown,
}

/// A checker's verdict with its evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// The checker's name.
    pub checker: String,
    /// Its conclusion.
    pub validity: Validity,
    /// One-line summary, e.g. "1,204 ops on 10 keys linearizable" or "submission c-17 acknowledged but lost".
    pub summary: String,
    /// Details: the offending operations, counts, the search's statistics.
    pub evidence: serde_json::Value,
}

impl Verdict {
    /// A verdict of `checker`.
    pub fn new(checker: &str, validity: Validity, summary: impl Into<String>, evidence: serde_json::Value) -> Self {
        Self { checker: checker.to_string(), validity, summary: summary.into(), evidence }
    }

    /// Whether it is [`Validity::Invalid`].
    pub fn is_invalid(&self) -> bool {
        self.validity == Validity::Invalid
    }
}
