//! The openraft type configuration: what a log entry carries and what applying it returns.

use std::fmt;

use serde::{Deserialize, Serialize};

use domain::{Change, Outcome};

pub use crate::codec::Proposal;

/// A cluster member's address and region label (openraft's `Node`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Member {
    /// `host:port` of the node's gRPC endpoint.
    pub addr: String,
    /// Free-form region label, e.g. `eu-west`.
    pub region: String,
}

impl Member {
    pub fn new(addr: impl Into<String>, region: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            region: region.into(),
        }
    }
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.region.is_empty() {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}@{}", self.addr, self.region)
        }
    }
}

/// What applying one entry answers to the proposer.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Response {
    /// The outcome of a client request; `None` for blank and membership entries.
    pub outcome: Option<Outcome>,
    /// The outcome is that of an earlier request with the same `(tenant, request_id)`.
    pub replayed: bool,
    /// What the command changed, when it was applied by this entry (not on a replay).
    pub change: Option<Box<Change>>,
}

openraft::declare_raft_types!(
    /// Switchboard's Raft types: entries carry versioned proposals of domain requests, nodes
    /// carry address and region.
    pub TypeConfig:
        D = Proposal,
        R = Response,
        NodeId = u64,
        Node = Member,
);

pub type NodeId = u64;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
