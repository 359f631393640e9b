//! jobmanager: a highly available job manager for stream-processing jobs.
//!
//! It does the job of Apache Flink's JobManager without ZooKeeper: three or five replicas share one Raft
//! log holding job graphs and status, TaskManager registrations, slot leases, checkpoint counters and
//! checkpoint metadata. Start with `docs/architecture.md`, then:
//!
//! * [`raft`]: the replicated core (types, commands, the pure state machine, storage, network);
//! * [`cluster`]: a replica around it (bootstrap, forwarding to the leader, reads, leadership);
//! * [`jobgraph`]: the job spec format, its validation and the resolved job graph;
//! * [`dispatcher`]: the entry point for jobs (submit, cancel, savepoints, reads);
//! * [`leader`]: the leader-only services, started and stopped with leadership;
//! * [`resource_manager`]: TaskManager liveness, slot placement and leases;
//! * [`job_master`]: one actor per job (deploy or adopt, checkpoints, restarts, savepoints);
//! * [`checkpoint`]: the checkpoint coordinator's bookkeeping and the checkpoint storage layout;
//! * [`taskmanager`]: the TaskManager process, its protocol with the leader and the task runtime;
//! * [`blocking`]: blocking work kept off the async runtime (or inline, in the deterministic simulation);
//! * [`failpoint`]: named crash points for the chaos suite, compiled in only with the `failpoints` feature;
//! * [`telemetry`]: latency and size histograms measured as things happen, for `/metrics`;
//! * [`api`]: gRPC (client API, peer service, TaskManager service);
//! * [`cli`]: the `jm` command line (server, taskmanager, local cluster, job and cluster commands, benchmarks).

pub mod api;
pub mod blocking;
pub mod checkpoint;
pub mod cli;
pub mod cluster;
pub mod dispatcher;
pub mod failpoint;
pub mod job_master;
pub mod jobgraph;
pub mod leader;
pub mod raft;
pub mod resource_manager;
pub mod taskmanager;
pub mod telemetry;
