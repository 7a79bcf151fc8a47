//! The `switchboard` node: gRPC API, Raft transport, cluster operations, CLI and client library.
//!
//! Owns everything that touches the network. Must not hold domain rules: those live in
//! the `domain` crate, which the leader reaches only by proposing through Raft.

pub mod admission;
pub mod api;
pub mod audit;
pub mod auth;
pub mod certs;
pub mod cli_activity;
pub mod cli_client;
pub mod config;
pub mod convert;
pub mod dev;
pub mod edge;
pub mod erasure;
pub mod live;
pub mod observe;
pub mod pii;
pub mod probe;
pub mod reset;
pub mod retention;
pub mod server;
pub mod status;
pub mod tls;
pub mod token;
pub mod transport;
pub mod watch;

/// The Raft instance every node runs.
pub type Raft = openraft::Raft<raft_store::TypeConfig, raft_store::StateMachine>;

pub use client::{LEADER_ADDR_HEADER, LEADER_ID_HEADER};
