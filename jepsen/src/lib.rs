//! Jepsen's method, in Rust, against a jobmanager cluster: a generator drives clients through random replicas and
//! records every operation in a [`history`]; a nemesis injects faults on a schedule; after a heal and a wait, final
//! reads; then [`checker`]s decide whether anything acknowledged was lost, whether reads were linearizable, and
//! whether the cluster's own invariants held. See `jepsen/README.md` for how to run it and `jepsen/OUTCOMES.md` for
//! what `ok`, `fail` and `info` mean.

pub mod check;
pub mod checker;
pub mod deploy;
pub mod deployment;
pub mod docker;
pub mod failpoints;
pub mod history;
pub mod nemesis;
pub mod net;
pub mod recorder;
pub mod report;
pub mod run;
pub mod workload;
