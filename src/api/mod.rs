//! The edge: everything that speaks a wire protocol. Only this module (and the CLI) knows tonic and axum.
//!
//! * [`grpc`]: the client API service, the peer (Raft) service and its client transport, the TaskManager
//!   service, the protobuf conversions, and the one mapping from the crate's errors to gRPC statuses.
//! * [`rest`]: Flink's REST API over HTTP, and the one mapping from the crate's errors to HTTP responses.

pub mod grpc;
pub mod rest;
