//! Runs every checker over a history (and the processes' logs) and writes the verdicts into the report directory:
//! `verdicts.json` (every verdict with its evidence) and `summary.txt` (one line per checker).

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use crate::checker::{self, Validity, Verdict};
use crate::history::Op;

/// How long the linearizability search may take per key before it answers "unknown".
pub const LINEARIZABILITY_LIMIT: Duration = Duration::from_secs(20);

/// Every verdict on `history` and `logs`.
pub fn check_all(history: &[Op], logs: &[(String, String)]) -> Vec<Verdict> {
    let registers: Vec<Op> = history.iter().filter(|op| op.f == "write" || op.f == "read").cloned().collect();
    vec![
        checker::linearizable::check(&registers, LINEARIZABILITY_LIMIT),
        checker::set::check(history, true),
        checker::checkpoints::check(history),
        checker::leases::check(history),
        checker::epochs::check(history),
        checker::leaders::check(history),
        checker::logs::check(logs),
    ]
}

/// Writes `verdicts.json` and `summary.txt`; returns the summary text.
pub fn write_verdicts(dir: &Path, verdicts: &[Verdict]) -> Result<String> {
    std::fs::write(dir.join("verdicts.json"), serde_json::to_vec_pretty(verdicts)?)?;
    let mut summary = String::new();
    for v in verdicts {
        let mark = match v.validity {
            Validity::Valid => "valid  ",
            Validity::Invalid => "INVALID",
            Validity::Unknown => "unknown",
        };
        summary.push_str(&format!("{mark}  {:<14} {}\n", v.checker, v.summary));
    }
    std::fs::write(dir.join("summary.txt"), &summary)?;
    Ok(summary)
}
