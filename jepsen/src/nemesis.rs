//! The nemesis: faults injected on a schedule, each recorded in the history as a window (`f` = `nemesis`, a
//! `start` and a `stop` event) so checkers and plots can relate anomalies and latency to faults.
//!
//! Every few seconds the scheduler picks one of the enabled [`Fault`]s at random, applies it, holds it, and heals
//! it (restarting what it killed, resuming what it paused, reconnecting what it cut), then waits before the next.
//! Faults are composable in the sense Jepsen's are: the run's set is any combination, and `all` enables every one
//! that any `jm` binary supports.
//!
//! The crash faults ([`Fault::FAILPOINT`], the set `crash`) need a `jm` built with the `failpoints` feature: they
//! arm a failpoint on a replica through its admin RPC, so it kills itself at a precise point (just before or after a
//! disk flush, just after a checkpoint's commit), and restart it at the heal. They are not part of `all`; the run
//! refuses them up front when the binary lacks the feature.

use std::str::FromStr;
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::Rng;

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// SIGKILL the leader, restart it after a while.
    KillLeader,
    /// SIGKILL a random replica, restart it after a while.
    KillRandom,
    /// SIGSTOP the leader past its lease, then SIGCONT.
    PauseLeader,
    /// Cut the leader off from every other replica.
    PartitionLeader,
    /// A random majority and minority.
    PartitionHalves,
    /// Overlapping majorities: every replica sees a majority, no two see the same one.
    PartitionRing,
    /// One replica's messages to another are dropped; the other direction works.
    PartitionOneWay,
    /// Every link delayed (with jitter).
    Delay,
    /// Every link loses "packets" (stalls, as TCP retransmits).
    Loss,
    /// SIGKILL every replica at once, then restart them all.
    RestartAll,
    /// SIGKILL a TaskManager, restart it after a while.
    KillTaskManager,
    /// TaskManagers join and leave (see [`churn`]): slot leases move between them.
    ChurnTaskManagers,
    /// A replica (the leader, mostly) crashes just before its next disk flush (fsync); restarted at the heal.
    CrashBeforeFsync,
    /// A replica (the leader, mostly) crashes just after its next disk flush, before acknowledging what it flushed.
    CrashAfterFsync,
    /// The leader crashes just after committing a completed checkpoint, before acknowledging it to the tasks.
    CrashAfterCheckpointCommit,
}

impl Fault {
    /// Every fault.
    pub const ALL: [Fault; 12] = [
        Fault::KillLeader,
        Fault::KillRandom,
        Fault::PauseLeader,
        Fault::PartitionLeader,
        Fault::PartitionHalves,
        Fault::PartitionRing,
        Fault::PartitionOneWay,
        Fault::Delay,
        Fault::Loss,
        Fault::RestartAll,
        Fault::KillTaskManager,
        Fault::ChurnTaskManagers,
    ];

    /// The crash faults, which arm a failpoint: only with a `jm` built with `--features failpoints`.
    pub const FAILPOINT: [Fault; 3] =
        [Fault::CrashBeforeFsync, Fault::CrashAfterFsync, Fault::CrashAfterCheckpointCommit];

    /// The bounded CI run's set: leader kills and partitions.
    pub const SMOKE: [Fault; 4] =
        [Fault::KillLeader, Fault::PartitionLeader, Fault::PartitionHalves, Fault::PartitionRing];

    /// Its name on the command line and in the history.
    pub fn name(self) -> &'static str {
        match self {
            Fault::KillLeader => "kill-leader",
            Fault::KillRandom => "kill-random",
            Fault::PauseLeader => "pause-leader",
            Fault::PartitionLeader => "partition-leader",
            Fault::PartitionHalves => "partition-halves",
            Fault::PartitionRing => "partition-ring",
            Fault::PartitionOneWay => "partition-one-way",
            Fault::Delay => "delay",
            Fault::Loss => "loss",
            Fault::RestartAll => "restart-all",
            Fault::KillTaskManager => "kill-taskmanager",
            Fault::ChurnTaskManagers => "churn-taskmanagers",
            Fault::CrashBeforeFsync => "crash-before-fsync",
            Fault::CrashAfterFsync => "crash-after-fsync",
            Fault::CrashAfterCheckpointCommit => "crash-after-checkpoint-commit",
        }
    }

    /// The `jm` failpoint a crash fault arms (`src/failpoint.rs`), or `None` for the other faults.
    pub fn failpoint(self) -> Option<&'static str> {
        match self {
            Fault::CrashBeforeFsync => Some("disk-before-fsync"),
            Fault::CrashAfterFsync => Some("disk-after-fsync"),
            Fault::CrashAfterCheckpointCommit => Some("checkpoint-after-commit"),
            _ => None,
        }
    }
}

/// Parses `all`, `smoke`, `crash`, `none` or a comma-separated list of fault names.
pub fn parse_faults(text: &str) -> Result<Vec<Fault>, String> {
    let mut faults = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part {
            "all" => faults.extend(Fault::ALL),
            "smoke" => faults.extend(Fault::SMOKE),
            "crash" => faults.extend(Fault::FAILPOINT),
            "none" => {}
            name => faults.push(Fault::from_str(name)?),
        }
    }
    faults.dedup();
    Ok(faults)
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let every = || Fault::ALL.into_iter().chain(Fault::FAILPOINT);
        every().find(|f| f.name() == s).ok_or_else(|| {
            let names: Vec<&str> = every().map(|f| f.name()).collect();
            format!("unknown fault {s:?}; known: all, smoke, crash, none, {}", names.join(", "))
        })
    }
}

/// When faults happen.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Quiet time between two faults.
    pub interval: Duration,
    /// How long a fault is held before it is healed.
    pub hold: Duration,
}

impl Schedule {
    /// A random quiet period around the interval (±50%), so faults do not beat in step with timers.
    pub fn quiet(&self, rng: &mut impl Rng) -> Duration {
        self.interval.mul_f64(rng.gen_range(0.5..1.5))
    }

    /// A random hold around the configured one (±50%).
    pub fn hold(&self, rng: &mut impl Rng) -> Duration {
        self.hold.mul_f64(rng.gen_range(0.5..1.5))
    }
}

/// Picks the next fault.
pub fn pick(faults: &[Fault], rng: &mut impl Rng) -> Option<Fault> {
    faults.choose(rng).copied()
}

/// One step of TaskManager churn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Churn {
    /// TaskManager `number` leaves: by SIGTERM (its graceful shutdown) if `graceful`, else by SIGKILL. It stays
    /// away across heals until a [`Churn::Return`].
    Leave {
        /// The TaskManager.
        number: u64,
        /// SIGTERM rather than SIGKILL.
        graceful: bool,
    },
    /// A new TaskManager joins: a fresh data dir (so a fresh id) and fresh ports.
    Join,
    /// A TaskManager that left comes back on its data dir (its old id).
    Return {
        /// The TaskManager.
        number: u64,
    },
}

/// Churn never leaves fewer TaskManagers than this present (jobs need somewhere to run).
pub const CHURN_MIN_PRESENT: usize = 1;
/// Churn never has more TaskManagers than this present at once.
pub const CHURN_MAX_PRESENT: usize = 4;
/// Churn starts at most this many TaskManagers in a run, counting the initial ones (each is a process and a log).
pub const CHURN_MAX_STARTED: usize = 10;

/// Picks the next churn step, given the TaskManagers present, those that left, and how many were ever started:
/// uniformly among the kinds of step the bounds allow (leave, join, come back), then uniformly among the
/// candidates. `None` if no step is allowed.
pub fn churn(present: &[u64], departed: &[u64], started: usize, rng: &mut impl Rng) -> Option<Churn> {
    let mut kinds = Vec::new();
    if present.len() > CHURN_MIN_PRESENT {
        kinds.push(0);
    }
    if present.len() < CHURN_MAX_PRESENT && started < CHURN_MAX_STARTED {
        kinds.push(1);
    }
    if present.len() < CHURN_MAX_PRESENT && !departed.is_empty() {
        kinds.push(2);
    }
    match kinds.choose(rng)? {
        0 => Some(Churn::Leave { number: *present.choose(rng)?, graceful: rng.gen_bool(0.5) }),
        1 => Some(Churn::Join),
        _ => Some(Churn::Return { number: *departed.choose(rng)? }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn churn_stays_within_its_bounds_and_takes_every_kind_of_step() {
        let mut rng = StdRng::seed_from_u64(7);
        let (mut present, mut departed, mut started): (Vec<u64>, Vec<u64>, usize) = (vec![1, 2], vec![], 2);
        let (mut graceful, mut abrupt, mut joins, mut returns) = (0, 0, 0, 0);
        for _ in 0..400 {
            match churn(&present, &departed, started, &mut rng).expect("some step is always allowed") {
                Churn::Leave { number, graceful: g } => {
                    assert!(present.contains(&number), "only a present TaskManager leaves");
                    present.retain(|n| *n != number);
                    departed.push(number);
                    if g {
                        graceful += 1;
                    } else {
                        abrupt += 1;
                    }
                }
                Churn::Join => {
                    started += 1;
                    present.push(started as u64);
                    joins += 1;
                }
                Churn::Return { number } => {
                    assert!(departed.contains(&number), "only a departed TaskManager comes back");
                    departed.retain(|n| *n != number);
                    present.push(number);
                    returns += 1;
                }
            }
            assert!((CHURN_MIN_PRESENT..=CHURN_MAX_PRESENT).contains(&present.len()), "{present:?}");
            assert!(started <= CHURN_MAX_STARTED);
        }
        assert!(graceful > 0 && abrupt > 0 && returns > 0, "{graceful} {abrupt} {returns}");
        assert_eq!(joins, CHURN_MAX_STARTED - 2, "joins until the cap");
    }

    #[test]
    fn the_last_task_manager_never_leaves() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..50 {
            let step = churn(&[3], &[1, 2], CHURN_MAX_STARTED, &mut rng);
            assert!(matches!(step, Some(Churn::Return { .. })), "{step:?}");
        }
        assert_eq!(churn(&[3], &[], CHURN_MAX_STARTED, &mut rng), None);
    }

    #[test]
    fn fault_lists_parse_and_unknown_names_are_refused_with_the_known_ones() {
        assert_eq!(parse_faults("all").unwrap().len(), Fault::ALL.len());
        assert_eq!(parse_faults("kill-leader, delay").unwrap(), vec![Fault::KillLeader, Fault::Delay]);
        assert!(parse_faults("none").unwrap().is_empty());
        let error = parse_faults("kill-everything").unwrap_err();
        assert!(error.contains("kill-leader") && error.contains("kill-everything"), "{error}");
        assert!(error.contains("crash-after-checkpoint-commit"), "{error}");
    }

    #[test]
    fn crash_faults_are_a_named_set_outside_all_and_each_names_its_failpoint() {
        let crash = parse_faults("crash,kill-leader").unwrap();
        assert_eq!(
            crash,
            vec![Fault::CrashBeforeFsync, Fault::CrashAfterFsync, Fault::CrashAfterCheckpointCommit, Fault::KillLeader]
        );
        assert!(parse_faults("all").unwrap().iter().all(|f| f.failpoint().is_none()));
        assert_eq!(Fault::from_str("crash-after-fsync").unwrap().failpoint(), Some("disk-after-fsync"));
        // The names are jm's: a renamed failpoint there must be renamed here.
        for fault in Fault::FAILPOINT {
            assert!(jobmanager::failpoint::ALL.contains(&fault.failpoint().unwrap()), "{fault:?}");
        }
    }
}
