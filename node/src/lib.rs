//! The `switchboard` node: gRPC API, Raft transport, cluster operations, CLI and client library.
//!
//! Owns everything that touches the network. Must not hold domain rules: those live in
//! `raft-store::domain`, which the leader reaches only by proposing through Raft.

pub mod api;
pub mod cli_client;
pub mod client;
pub mod config;
pub mod convert;
pub mod dev;
pub mod observe;
pub mod probe;
pub mod server;
pub mod status;
pub mod testkit;
pub mod transport;

/// The Raft instance every node runs.
pub type Raft = openraft::Raft<raft_store::TypeConfig, raft_store::StateMachine>;

/// gRPC metadata naming the leader on a redirect (DESIGN §4).
pub const LEADER_ID_HEADER: &str = "x-switchboard-leader-id";
/// gRPC metadata with the leader's address on a redirect (DESIGN §4).
pub const LEADER_ADDR_HEADER: &str = "x-switchboard-leader-addr";
