//! jobmanager: a highly available job manager for stream-processing jobs.
//!
//! It does the job of Apache Flink's JobManager without ZooKeeper: three or five replicas share one Raft
//! log holding job graphs and status, TaskManager registrations, slot leases, checkpoint counters and
//! checkpoint metadata. Start with `docs/architecture.md`, then:
//!
//! * [`raft`]: the replicated core (types, commands, the pure state machine, storage, network);
//! * [`cluster`]: a replica around it (bootstrap, forwarding to the leader, reads, leadership);
//! * [`dispatcher`]: the entry point for jobs (spec validation, submit, cancel, reads);
//! * [`api`]: gRPC (client API and peer service);
//! * [`cli`]: the `jm` command line (server, local cluster, job and cluster commands, bench).

pub mod api;
pub mod checkpoint;
pub mod cli;
pub mod cluster;
pub mod dispatcher;
pub mod job_master;
pub mod jobgraph;
pub mod leader;
pub mod raft;
pub mod resource_manager;
pub mod taskmanager;
