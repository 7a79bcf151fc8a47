//! Helpers shared by the store's integration tests: opening stores in temporary directories
//! and building log entries.
#![allow(dead_code)]

use std::path::Path;

use domain::{Command, Request, Stamp};
use openraft::entry::RaftEntry;
use openraft::impls::leader_id_adv::LeaderId;
use raft_store::{Entry, Identity, LogId, Store, Vote};

pub const CLUSTER: &str = "test-cluster";

pub fn identity(node_id: u64) -> Identity {
    Identity::new(CLUSTER, node_id)
}

pub fn open(dir: &Path) -> Store {
    raft_store::open(dir, &identity(1)).expect("open store")
}

pub fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(LeaderId { term, node_id: 1 }, index)
}

pub fn vote(term: u64) -> Vote {
    Vote::new(term, 1)
}

/// The leader's stamp: its time and, for a create, the call id it minted.
pub fn stamp(at_ms: u64, minted_call_id: Option<domain::CallId>) -> Stamp {
    Stamp {
        at_ms,
        minted_call_id,
        minted_trace_id: None,
    }
}

pub fn request(tenant: &str, request_id: &str, command: Command, stamp: Stamp) -> Request {
    Request {
        tenant_id: tenant.to_owned(),
        request_id: request_id.to_owned(),
        command,
        stamp,
        redactions: Default::default(),
    }
}

pub fn normal(term: u64, index: u64, request: Request) -> Entry {
    Entry::new_normal(log_id(term, index), raft_store::Proposal(request))
}

pub fn blank(term: u64, index: u64) -> Entry {
    Entry::new_blank(log_id(term, index))
}
