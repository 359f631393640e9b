//! The edge: everything that speaks a wire protocol. Only this module (and the CLI) knows tonic.
//!
//! * [`grpc`]: the client API service, the peer (Raft) service and its client transport, the protobuf
//!   conversions, and the one mapping from the crate's errors to gRPC statuses.

pub mod grpc;
