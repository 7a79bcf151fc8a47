//! The `switchboard` node: gRPC API, Raft transport, cluster operations, CLI and client library.
//!
//! Thin until the cluster-node issue lands; the replicated store it serves is `raft-store`.
