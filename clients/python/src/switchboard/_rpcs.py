"""The RPC table of the public API (`switchboard.v1`), after `proto/src/rpcs.rs`: for each RPC,
how its first attempt is routed, whether it carries an idempotency key, and how a successful
response names the leader. The clients' methods are thin wrappers over these rows; a test checks
the table against the generated service descriptors so that no RPC is left out."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message

from switchboard import pb
from switchboard.v1 import activity_pb2_grpc, calls_pb2_grpc, cluster_pb2_grpc, events_pb2_grpc

RequestT = TypeVar("RequestT", bound=Message)
ResponseT = TypeVar("ResponseT", bound=Message)


class RpcKind(enum.Enum):
    #: Changes state; carries a `request_id` and goes to the leader.
    WRITE = enum.auto()
    #: Served by any node; routed by the request's `read` options.
    READ = enum.auto()
    #: Cluster administration the leader answers (others redirect).
    LEADER = enum.auto()
    #: Aimed at the first configured endpoint, never redirected.
    PINNED = enum.auto()


class Route(enum.Enum):
    """Where the first attempt of a call goes."""

    #: The cached leader, else the configured endpoints in order.
    LEADER = enum.auto()
    #: Round robin: reads any node may serve.
    ANY = enum.auto()
    #: Always the first configured endpoint.
    PINNED = enum.auto()


class LeaderFrom(enum.Enum):
    """How a successful response names the leader."""

    #: Its `meta` (a `WriteMeta`) names the leader that committed it.
    WRITE_META = enum.auto()
    #: A `StatusResponse` whose `leader_id` is its own `node_id`.
    SELF_REPORTED = enum.auto()
    #: Its `leader_id` names the leader that answered.
    LEADER_ID = enum.auto()
    #: Only the leader answers this RPC.
    RESPONDER = enum.auto()
    #: It says nothing about the leader.
    NO = enum.auto()


#: The generated stub class of each service.
STUBS: dict[str, Any] = {
    "CallService": calls_pb2_grpc.CallServiceStub,
    "EventService": events_pb2_grpc.EventServiceStub,
    "ActivityService": activity_pb2_grpc.ActivityServiceStub,
    "ClusterService": cluster_pb2_grpc.ClusterServiceStub,
    "WatchService": events_pb2_grpc.WatchServiceStub,
}


@dataclass(frozen=True)
class Rpc(Generic[RequestT, ResponseT]):
    """One row of the table: the RPC's service, proto name and client method name, its kind, how
    its response names the leader, and its message types."""

    service: str
    name: str
    method: str
    kind: RpcKind
    leader_from: LeaderFrom
    request_type: type[RequestT]
    response_type: type[ResponseT]


_W, _R, _L, _P = RpcKind.WRITE, RpcKind.READ, RpcKind.LEADER, RpcKind.PINNED
_META, _NO = LeaderFrom.WRITE_META, LeaderFrom.NO

CREATE_CALL = Rpc(
    "CallService", "CreateCall", "create_call", _W, _META, pb.CreateCallRequest, pb.CallResponse
)
START_CALL = Rpc(
    "CallService", "StartCall", "start_call", _W, _META, pb.StartCallRequest, pb.CallResponse
)
APPEND_TURN = Rpc(
    "CallService",
    "AppendTurn",
    "append_turn",
    _W,
    _META,
    pb.AppendTurnRequest,
    pb.AppendTurnResponse,
)
LOG_EVENT = Rpc(
    "CallService", "LogEvent", "log_event", _W, _META, pb.LogEventRequest, pb.LogEventResponse
)
UPDATE_CONTEXT = Rpc(
    "CallService",
    "UpdateContext",
    "update_context",
    _W,
    _META,
    pb.UpdateContextRequest,
    pb.CallResponse,
)
REQUEST_HANDOFF = Rpc(
    "CallService",
    "RequestHandoff",
    "request_handoff",
    _W,
    _META,
    pb.RequestHandoffRequest,
    pb.CallResponse,
)
END_CALL = Rpc("CallService", "EndCall", "end_call", _W, _META, pb.EndCallRequest, pb.CallResponse)
GET_CALL = Rpc("CallService", "GetCall", "get_call", _R, _NO, pb.GetCallRequest, pb.GetCallResponse)
GET_CONTEXT = Rpc(
    "CallService", "GetContext", "get_context", _R, _NO, pb.GetContextRequest, pb.GetContextResponse
)
LIST_TURNS = Rpc(
    "CallService", "ListTurns", "list_turns", _R, _NO, pb.ListTurnsRequest, pb.ListTurnsResponse
)
LIST_CALLS = Rpc(
    "CallService", "ListCalls", "list_calls", _R, _NO, pb.ListCallsRequest, pb.ListCallsResponse
)
ERASE_CALL = Rpc(
    "CallService", "EraseCall", "erase_call", _W, _META, pb.EraseCallRequest, pb.EraseCallResponse
)

LIST_CALL_EVENTS = Rpc(
    "EventService",
    "ListCallEvents",
    "list_call_events",
    _R,
    _NO,
    pb.ListCallEventsRequest,
    pb.ListEventsResponse,
)
LIST_EVENTS = Rpc(
    "EventService",
    "ListEvents",
    "list_events",
    _R,
    _NO,
    pb.ListEventsRequest,
    pb.ListEventsResponse,
)
QUERY_EVENTS = Rpc(
    "EventService",
    "QueryEvents",
    "query_events",
    _R,
    _NO,
    pb.QueryEventsRequest,
    pb.QueryEventsResponse,
)
EVENT_STATS = Rpc(
    "EventService",
    "EventStats",
    "event_stats",
    _R,
    _NO,
    pb.EventStatsRequest,
    pb.EventStatsResponse,
)

RECORD_ACTIVITY = Rpc(
    "ActivityService",
    "RecordActivity",
    "record_activity",
    _W,
    _META,
    pb.RecordActivityRequest,
    pb.RecordActivityResponse,
)
SET_RETENTION = Rpc(
    "ActivityService",
    "SetRetention",
    "set_retention",
    _W,
    _META,
    pb.SetRetentionRequest,
    pb.RetentionResponse,
)
COMPACT_ACTIVITY = Rpc(
    "ActivityService",
    "CompactActivity",
    "compact_activity",
    _W,
    _META,
    pb.CompactActivityRequest,
    pb.RetentionResponse,
)

STATUS = Rpc(
    "ClusterService",
    "Status",
    "status",
    _L,
    LeaderFrom.SELF_REPORTED,
    pb.StatusRequest,
    pb.StatusResponse,
)
ADD_LEARNER = Rpc(
    "ClusterService",
    "AddLearner",
    "add_learner",
    _L,
    LeaderFrom.RESPONDER,
    pb.AddLearnerRequest,
    pb.MembershipResponse,
)
PROMOTE = Rpc(
    "ClusterService",
    "Promote",
    "promote",
    _L,
    LeaderFrom.RESPONDER,
    pb.PromoteRequest,
    pb.MembershipResponse,
)
REMOVE = Rpc(
    "ClusterService",
    "Remove",
    "remove",
    _L,
    LeaderFrom.RESPONDER,
    pb.RemoveRequest,
    pb.MembershipResponse,
)
TRIGGER_SNAPSHOT = Rpc(
    "ClusterService",
    "TriggerSnapshot",
    "trigger_snapshot",
    _P,
    _NO,
    pb.TriggerSnapshotRequest,
    pb.TriggerSnapshotResponse,
)
INITIALIZE = Rpc(
    "ClusterService",
    "Initialize",
    "initialize",
    _P,
    _NO,
    pb.InitializeRequest,
    pb.InitializeResponse,
)
READ_INDEX = Rpc(
    "ClusterService",
    "ReadIndex",
    "read_index",
    _L,
    LeaderFrom.LEADER_ID,
    pb.ReadIndexRequest,
    pb.ReadIndexResponse,
)
DIGEST = Rpc("ClusterService", "Digest", "digest", _P, _NO, pb.DigestRequest, pb.DigestResponse)

#: Every unary RPC of the public API.
UNARY_RPCS: tuple[Rpc[Any, Any], ...] = (
    CREATE_CALL,
    START_CALL,
    APPEND_TURN,
    LOG_EVENT,
    UPDATE_CONTEXT,
    REQUEST_HANDOFF,
    END_CALL,
    GET_CALL,
    GET_CONTEXT,
    LIST_TURNS,
    LIST_CALLS,
    ERASE_CALL,
    LIST_CALL_EVENTS,
    LIST_EVENTS,
    QUERY_EVENTS,
    EVENT_STATS,
    RECORD_ACTIVITY,
    SET_RETENTION,
    COMPACT_ACTIVITY,
    STATUS,
    ADD_LEARNER,
    PROMOTE,
    REMOVE,
    TRIGGER_SNAPSHOT,
    INITIALIZE,
    READ_INDEX,
    DIGEST,
)
