//! The RPC tables: every RPC of every service in this crate, declared once, so that the crates
//! built on the wire contract (the client's methods, the node's service impls, the per-method
//! metrics) are generated from one list instead of being repeated by hand. A test checks each
//! table against the compiled descriptor set, so a new RPC cannot be left out of it.
//!
//! Each table is a macro that takes the name of a macro of the caller (a "callback") and invokes
//! it with the whole table, in this shape:
//!
//! ```text
//! package "switchboard.v1" (v1);
//! service CallService (call_service_server::CallService, call_service_client::CallServiceClient) {
//!     /// Docs of the client method.
//!     CreateCall create_call(CreateCallRequest) -> CallResponse
//!         [write, leader_from: write_meta, access: write]
//!     ...
//! }
//! ```
//!
//! A row is: the RPC's proto name, the snake-case method name tonic generates, the request and
//! response message names (in the package's module of this crate, named after the package line,
//! e.g. `v1`), then in brackets the kind and how a successful response names the leader. The
//! brackets and the service's parenthesized modules are delimited groups, so that a callback can
//! skip what it does not use (`[$($_:tt)*]`). The last item in the brackets, `access:`, says
//! who may call it: `read` (any role: viewer, agent, admin), `write` (agent, admin), `admin`
//! (admin), `member` (only a node of the cluster, proven by its certificate). Kinds:
//! - `write`: changes state; carries an idempotency key (`request_id`) and goes to the leader;
//! - `read`: served by any node; routed by the request's `read` options (linearizable reads go to
//!   the leader first, local reads to any node);
//! - `leader`: cluster administration the leader answers (others redirect);
//! - `pinned`: aimed at one node, never redirected;
//! - `watch`: a server stream any node serves ([`switchboard_watch_rpcs!`]);
//! - `peer` and `peer_stream`: node-to-node Raft transport, unary and client-streaming.
//!
//! Leader evidence (`leader_from:`):
//! - `write_meta`: the response's `meta` (a `WriteMeta`) names the leader that committed it;
//! - `self_reported`: a `StatusResponse` whose `leader_id` is its own `node_id`;
//! - `leader_id`: the response's `leader_id` field names the leader that answered;
//! - `responder`: only the leader answers this RPC, so the node that answered is the leader;
//! - `no`: the response says nothing about the leader.
//!
//! The tables only describe; what a kind means is decided by the crates that use them.

/// The public API, package `switchboard.v1`: `switchboard_rpcs!(callback)` expands to
/// `callback! { ..table.. }` (see the [module docs](crate::rpcs) for the shape).
#[macro_export]
macro_rules! switchboard_rpcs {
    ($callback:ident) => {
        $callback! {
            package "switchboard.v1" (v1);
            service CallService (
                call_service_server::CallService,
                call_service_client::CallServiceClient
            ) {
                /// Creates a call (a write: leader, same `request_id` on every retry).
                CreateCall create_call(CreateCallRequest) -> CallResponse
                    [write, leader_from: write_meta, access: write]
                /// Starts a CREATED call.
                StartCall start_call(StartCallRequest) -> CallResponse
                    [write, leader_from: write_meta, access: write]
                /// Appends a turn.
                AppendTurn append_turn(AppendTurnRequest) -> AppendTurnResponse
                    [write, leader_from: write_meta, access: write]
                /// Logs a semantic event.
                LogEvent log_event(LogEventRequest) -> LogEventResponse
                    [write, leader_from: write_meta, access: write]
                /// Updates a call's summary and entities.
                UpdateContext update_context(UpdateContextRequest) -> CallResponse
                    [write, leader_from: write_meta, access: write]
                /// Hands a call off (at most once per call; a retry gets the original outcome).
                RequestHandoff request_handoff(RequestHandoffRequest) -> CallResponse
                    [write, leader_from: write_meta, access: write]
                /// Ends a call.
                EndCall end_call(EndCallRequest) -> CallResponse
                    [write, leader_from: write_meta, access: write]
                /// Reads one call; routed by `req.read` (linearizable: leader first; local: any
                /// node).
                GetCall get_call(GetCallRequest) -> GetCallResponse
                    [read, leader_from: no, access: read]
                /// Reads a call's context; routed by `req.read`.
                GetContext get_context(GetContextRequest) -> GetContextResponse
                    [read, leader_from: no, access: read]
                /// Lists a call's turns; routed by `req.read`.
                ListTurns list_turns(ListTurnsRequest) -> ListTurnsResponse
                    [read, leader_from: no, access: read]
                /// Lists a tenant's calls; routed by `req.read`.
                ListCalls list_calls(ListCallsRequest) -> ListCallsResponse
                    [read, leader_from: no, access: read]
                /// Erases a call's content, keeping its lifecycle skeleton (a write).
                EraseCall erase_call(EraseCallRequest) -> EraseCallResponse
                    [write, leader_from: write_meta, access: write]
            }
            service EventService (
                event_service_server::EventService,
                event_service_client::EventServiceClient
            ) {
                /// Lists one call's events; routed by `req.read`.
                ListCallEvents list_call_events(ListCallEventsRequest) -> ListEventsResponse
                    [read, leader_from: no, access: read]
                /// Lists the cluster-wide event log; routed by `req.read`.
                ListEvents list_events(ListEventsRequest) -> ListEventsResponse
                    [read, leader_from: no, access: read]
                /// Finds a tenant's events by filters, a page at a time; routed by `req.read`.
                QueryEvents query_events(QueryEventsRequest) -> QueryEventsResponse
                    [read, leader_from: no, access: read]
                /// Totals of a tenant's events; routed by `req.read`.
                EventStats event_stats(EventStatsRequest) -> EventStatsResponse
                    [read, leader_from: no, access: read]
            }
            service ActivityService (
                activity_service_server::ActivityService,
                activity_service_client::ActivityServiceClient
            ) {
                /// Appends agent activity records, all or none (a write).
                RecordActivity record_activity(RecordActivityRequest) -> RecordActivityResponse
                    [write, leader_from: write_meta, access: write]
                /// Sets the tenant's activity retention (a write).
                SetRetention set_retention(SetRetentionRequest) -> RetentionResponse
                    [write, leader_from: write_meta, access: admin]
                /// Removes the tenant's activity past its retention now (a write).
                CompactActivity compact_activity(CompactActivityRequest) -> RetentionResponse
                    [write, leader_from: write_meta, access: admin]
            }
            service ClusterService (
                cluster_service_server::ClusterService,
                cluster_service_client::ClusterServiceClient
            ) {
                /// A node's view of the cluster, asked of the cached leader first (only it knows
                /// `matched_index`), else the configured endpoints in order.
                Status status(StatusRequest) -> StatusResponse
                    [leader, leader_from: self_reported, access: read]
                /// Adds a learner (leader; membership changes are idempotent in effect).
                AddLearner add_learner(AddLearnerRequest) -> MembershipResponse
                    [leader, leader_from: responder, access: admin]
                /// Promotes learners to voters (leader).
                Promote promote(PromoteRequest) -> MembershipResponse
                    [leader, leader_from: responder, access: admin]
                /// Removes members (leader).
                Remove remove(RemoveRequest) -> MembershipResponse
                    [leader, leader_from: responder, access: admin]
                /// Asks the first configured endpoint (and only it) to build a snapshot now.
                TriggerSnapshot trigger_snapshot(TriggerSnapshotRequest) -> TriggerSnapshotResponse
                    [pinned, leader_from: no, access: admin]
                /// Asks the first configured endpoint (and only it) to initialize a fresh
                /// cluster.
                Initialize initialize(InitializeRequest) -> InitializeResponse
                    [pinned, leader_from: no, access: admin]
                /// Asks the leader for a read index (redirects followed); a read that waits until
                /// this index is applied is linearizable.
                ReadIndex read_index(ReadIndexRequest) -> ReadIndexResponse
                    [leader, leader_from: leader_id, access: read]
                /// Asks the first configured endpoint (and only it) for its state-machine digest.
                Digest digest(DigestRequest) -> DigestResponse
                    [pinned, leader_from: no, access: admin]
            }
        }
    };
}

/// The public server-streaming RPCs, package `switchboard.v1`, in the same shape as
/// [`switchboard_rpcs!`], kind `watch`: a stream any node serves from its own applied state,
/// never redirected and never bounded in time. They are a table of their own because a
/// streaming method has another signature in tonic's traits and in the client, so the callbacks
/// that generate unary methods do not apply to them.
#[macro_export]
macro_rules! switchboard_watch_rpcs {
    ($callback:ident) => {
        $callback! {
            package "switchboard.v1" (v1);
            service WatchService (
                watch_service_server::WatchService,
                watch_service_client::WatchServiceClient
            ) {
                /// Streams the matching events as they commit, from a position or from now.
                WatchEvents watch_events(WatchEventsRequest) -> WatchEventsResponse
                    [watch, leader_from: no, access: read]
            }
        }
    };
}

/// The internal Raft transport, package `switchboard.raft.v1`, in the same shape as
/// [`switchboard_rpcs!`].
#[macro_export]
macro_rules! switchboard_raft_rpcs {
    ($callback:ident) => {
        $callback! {
            package "switchboard.raft.v1" (raft_v1);
            service RaftService (
                raft_service_server::RaftService,
                raft_service_client::RaftServiceClient
            ) {
                /// Carries an openraft AppendEntries request and its response.
                AppendEntries append_entries(RaftPayload) -> RaftPayload
                    [peer, leader_from: no, access: member]
                /// Carries an openraft Vote request and its response.
                Vote vote(RaftPayload) -> RaftPayload
                    [peer, leader_from: no, access: member]
                /// Carries an openraft Pre-Vote request and its response.
                PreVote pre_vote(RaftPayload) -> RaftPayload
                    [peer, leader_from: no, access: member]
                /// Carries an openraft TransferLeader request and its response.
                TransferLeader transfer_leader(RaftPayload) -> RaftPayload
                    [peer, leader_from: no, access: member]
                /// Streams a full snapshot to a lagging node.
                InstallSnapshot install_snapshot(SnapshotChunk) -> RaftPayload
                    [peer_stream, leader_from: no, access: member]
            }
        }
    };
}

/// Callback listing the gRPC path of every row, `/package.Service/Rpc`.
macro_rules! rpc_paths {
    (package $package:literal ($_module:ident); $(service $service:ident ($($_modules:tt)*) {
        $($(#[$_doc:meta])* $rpc:ident $_method:ident ($_req:ident) -> $_resp:ident [$($_how:tt)*])*
    })*) => {
        &[$($(concat!("/", $package, ".", stringify!($service), "/", stringify!($rpc)),)*)*]
    };
}

/// The gRPC path of every public unary RPC, e.g. `/switchboard.v1.CallService/CreateCall`.
pub const RPC_PATHS: &[&str] = switchboard_rpcs!(rpc_paths);

/// The gRPC path of every public streaming RPC, e.g. `/switchboard.v1.WatchService/WatchEvents`.
pub const WATCH_RPC_PATHS: &[&str] = switchboard_watch_rpcs!(rpc_paths);

/// The gRPC path of every Raft transport RPC, e.g. `/switchboard.raft.v1.RaftService/Vote`.
pub const RAFT_RPC_PATHS: &[&str] = switchboard_raft_rpcs!(rpc_paths);

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use prost::Message as _;

    use crate::FILE_DESCRIPTOR_SET;

    /// What a table row and a descriptor both say about one RPC.
    #[derive(Debug, PartialEq, Eq)]
    struct Declared {
        method: String,
        input: String,
        output: String,
        client_streaming: bool,
        server_streaming: bool,
    }

    /// Callback turning a table into `(path, Declared)` pairs. It also names each message type
    /// in its module, so that a row naming a type that does not exist fails to compile.
    macro_rules! declared {
        (package $package:literal ($module:ident); $(service $service:ident ($($_modules:tt)*) {
            $($(#[$_doc:meta])* $rpc:ident $method:ident ($req:ident) -> $resp:ident
                [$kind:ident, leader_from: $_leader_from:ident, access: $access:ident])*
        })*) => {{
            let mut rows: Vec<(String, Declared)> = Vec::new();
            $($(
                // Who may call it follows from what it does: node-to-node RPCs only members,
                // writes at least `write`; `read` and `admin` are the table's choice.
                let (kind, access) = (stringify!($kind), stringify!($access));
                let peer = kind.starts_with("peer");
                assert_eq!(peer, access == "member", "{}: kind {kind}, access {access}", stringify!($rpc));
                assert!(kind != "write" || access == "write" || access == "admin", "{}: a write needs access write or admin", stringify!($rpc));
                assert!(
                    ["read", "write", "admin", "member"].contains(&access),
                    "{}: unknown access {access}",
                    stringify!($rpc)
                );
                let _ = (
                    std::any::type_name::<crate::$module::$req>(),
                    std::any::type_name::<crate::$module::$resp>(),
                );
                rows.push((
                    format!("/{}.{}/{}", $package, stringify!($service), stringify!($rpc)),
                    Declared {
                        method: stringify!($method).to_owned(),
                        input: format!(".{}.{}", $package, stringify!($req)),
                        output: format!(".{}.{}", $package, stringify!($resp)),
                        client_streaming: stringify!($kind) == "peer_stream",
                        server_streaming: stringify!($kind) == "watch",
                    },
                ));
            )*)*
            rows
        }};
    }

    fn snake_case(name: &str) -> String {
        let mut out = String::new();
        for (i, c) in name.chars().enumerate() {
            if c.is_ascii_uppercase() {
                if i > 0 {
                    out.push('_');
                }
                out.push(c.to_ascii_lowercase());
            } else {
                out.push(c);
            }
        }
        out
    }

    fn from_descriptor_set() -> BTreeMap<String, Declared> {
        let fds = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET)
            .expect("build.rs writes a FileDescriptorSet encoded by prost");
        let mut rpcs = BTreeMap::new();
        for file in &fds.file {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                    let declared = Declared {
                        method: snake_case(method.name()),
                        input: method.input_type().to_owned(),
                        output: method.output_type().to_owned(),
                        client_streaming: method.client_streaming(),
                        server_streaming: method.server_streaming(),
                    };
                    assert!(
                        rpcs.insert(path.clone(), declared).is_none(),
                        "{path} twice"
                    );
                }
            }
        }
        rpcs
    }

    #[test]
    fn the_tables_list_every_rpc_of_the_descriptor_set_and_nothing_else() {
        let mut tables = BTreeMap::new();
        for (path, declared) in switchboard_rpcs!(declared)
            .into_iter()
            .chain(switchboard_watch_rpcs!(declared))
            .chain(switchboard_raft_rpcs!(declared))
        {
            assert!(
                tables.insert(path.clone(), declared).is_none(),
                "{path} twice"
            );
        }
        let descriptors = from_descriptor_set();
        for path in descriptors.keys() {
            assert!(
                tables.contains_key(path),
                "{path} is in the .proto files but in no RPC table"
            );
        }
        for path in tables.keys() {
            assert!(
                descriptors.contains_key(path),
                "{path} is in an RPC table but in no .proto file"
            );
        }
        assert_eq!(tables, descriptors);
    }

    #[test]
    fn the_path_lists_follow_the_tables() {
        assert_eq!(super::RPC_PATHS.len(), switchboard_rpcs!(declared).len());
        assert_eq!(
            super::RAFT_RPC_PATHS.len(),
            switchboard_raft_rpcs!(declared).len()
        );
        assert_eq!(
            super::WATCH_RPC_PATHS.len(),
            switchboard_watch_rpcs!(declared).len()
        );
        assert!(super::RPC_PATHS.contains(&"/switchboard.v1.CallService/CreateCall"));
        assert!(super::WATCH_RPC_PATHS.contains(&"/switchboard.v1.WatchService/WatchEvents"));
        assert!(
            super::RAFT_RPC_PATHS.contains(&"/switchboard.raft.v1.RaftService/InstallSnapshot")
        );
    }
}
