"""The synchronous client: :class:`Client`, one method per RPC of `switchboard.v1`.

Thread-safe: threads may share one client (its channels and leader cache). See
:class:`~switchboard.AsyncClient` for asyncio, and the module docs of `switchboard` for the
behaviour both share (redirects, retries with the same request id, deadlines).
"""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any, cast

import grpc

from switchboard import _rpcs, pb
from switchboard._core import ClientBase, ClientCore, Status
from switchboard.activity import ActivityEmitter, EmitterConfig
from switchboard.config import ClientConfig


class Client(ClientBase):
    """Client for one Switchboard cluster (blocking calls).

    Every method takes the request message of its RPC and an optional `timeout`: the deadline
    of the whole call in seconds, retries included (default: `config.call_deadline`). A write
    without a `request_id` gets a fresh UUIDv7, the same on every attempt; failures raise a
    :class:`~switchboard.errors.SwitchboardError` subclass carrying it.

    Connections open lazily on first use; :meth:`close` (or a `with` block) closes them.
    """

    def __init__(self, config: ClientConfig | None = None) -> None:
        self._core = ClientCore(config, on_forgotten=self._close_channel)
        self._lock = threading.Lock()
        self._channels: dict[str, tuple[grpc.Channel, dict[str, Any]]] = {}

    def close(self) -> None:
        """Closes every connection. The client opens new ones if used again."""
        with self._lock:
            channels, self._channels = self._channels, {}
        for channel, _ in channels.values():
            channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def activity_emitter(self, config: EmitterConfig | None = None) -> ActivityEmitter:
        """A non-blocking, buffered activity logger sending through this client from a
        background thread (see :class:`~switchboard.activity.ActivityEmitter`)."""
        return ActivityEmitter(self.record_activity, config or EmitterConfig())

    def _stub(self, addr: str, service: str) -> Any:
        """The generated stub of `service` on the channel to `addr`, made on first use."""
        with self._lock:
            if addr not in self._channels:
                target = self._core.peers.dial_addr(addr)
                credentials = self._core.credentials()
                options = self._core.channel_options()
                channel = (
                    grpc.secure_channel(target, credentials, options)
                    if credentials is not None
                    else grpc.insecure_channel(target, options)
                )
                self._channels[addr] = (channel, {})
            channel, stubs = self._channels[addr]
            if service not in stubs:
                stubs[service] = _rpcs.STUBS[service](channel)
            return stubs[service]

    def _close_channel(self, addr: str) -> None:
        with self._lock:
            entry = self._channels.pop(addr, None)
        if entry is not None:
            entry[0].close()

    def _unary(
        self,
        rpc: _rpcs.Rpc[_rpcs.RequestT, _rpcs.ResponseT],
        request: _rpcs.RequestT,
        timeout: float | None,
    ) -> _rpcs.ResponseT:
        """Runs one RPC with redirects, failover, backoff and the call deadline."""
        plan, request = self._core.plan(rpc, request, timeout)
        while True:
            addr, attempt_timeout = plan.attempt()
            method = getattr(self._stub(addr, rpc.service), rpc.name)
            try:
                response = method(request, timeout=attempt_timeout, metadata=self._core.metadata)
            except grpc.RpcError as error:
                delay = plan.failed(Status.from_rpc_error(error))
            else:
                plan.succeeded(response)
                return cast(_rpcs.ResponseT, response)
            if delay > 0:
                time.sleep(delay)
            plan.check_deadline()

    def create_call(
        self, request: pb.CreateCallRequest, *, timeout: float | None = None
    ) -> pb.CallResponse:
        """Creates a call in state CREATED (a write: leader, same `request_id` on every retry)."""
        return self._unary(_rpcs.CREATE_CALL, request, timeout)

    def start_call(
        self, request: pb.StartCallRequest, *, timeout: float | None = None
    ) -> pb.CallResponse:
        """Moves a call from CREATED to ACTIVE."""
        return self._unary(_rpcs.START_CALL, request, timeout)

    def append_turn(
        self, request: pb.AppendTurnRequest, *, timeout: float | None = None
    ) -> pb.AppendTurnResponse:
        """Appends a turn to an ACTIVE or HANDED_OFF call."""
        return self._unary(_rpcs.APPEND_TURN, request, timeout)

    def log_event(
        self, request: pb.LogEventRequest, *, timeout: float | None = None
    ) -> pb.LogEventResponse:
        """Appends a semantic event to an ACTIVE or HANDED_OFF call."""
        return self._unary(_rpcs.LOG_EVENT, request, timeout)

    def update_context(
        self, request: pb.UpdateContextRequest, *, timeout: float | None = None
    ) -> pb.CallResponse:
        """Updates the summary and entities of a call that has not ended."""
        return self._unary(_rpcs.UPDATE_CONTEXT, request, timeout)

    def request_handoff(
        self, request: pb.RequestHandoffRequest, *, timeout: float | None = None
    ) -> pb.CallResponse:
        """Hands an ACTIVE call off, at most once (a retry gets the original outcome)."""
        return self._unary(_rpcs.REQUEST_HANDOFF, request, timeout)

    def end_call(
        self, request: pb.EndCallRequest, *, timeout: float | None = None
    ) -> pb.CallResponse:
        """Ends a call that has not ended."""
        return self._unary(_rpcs.END_CALL, request, timeout)

    def get_call(
        self, request: pb.GetCallRequest, *, timeout: float | None = None
    ) -> pb.GetCallResponse:
        """Reads one call; routed by `request.read` (linearizable: leader first; local: any)."""
        return self._unary(_rpcs.GET_CALL, request, timeout)

    def get_context(
        self, request: pb.GetContextRequest, *, timeout: float | None = None
    ) -> pb.GetContextResponse:
        """Reads a call's context: summary, entities, recent turns and handoff."""
        return self._unary(_rpcs.GET_CONTEXT, request, timeout)

    def list_turns(
        self, request: pb.ListTurnsRequest, *, timeout: float | None = None
    ) -> pb.ListTurnsResponse:
        """Lists a call's turns in index order, a page at a time."""
        return self._unary(_rpcs.LIST_TURNS, request, timeout)

    def list_calls(
        self, request: pb.ListCallsRequest, *, timeout: float | None = None
    ) -> pb.ListCallsResponse:
        """Lists a tenant's calls, a page at a time."""
        return self._unary(_rpcs.LIST_CALLS, request, timeout)

    def erase_call(
        self, request: pb.EraseCallRequest, *, timeout: float | None = None
    ) -> pb.EraseCallResponse:
        """Erases a call's content, keeping its lifecycle skeleton (a write)."""
        return self._unary(_rpcs.ERASE_CALL, request, timeout)

    def list_call_events(
        self, request: pb.ListCallEventsRequest, *, timeout: float | None = None
    ) -> pb.ListEventsResponse:
        """Lists one call's events in sequence order, a page at a time."""
        return self._unary(_rpcs.LIST_CALL_EVENTS, request, timeout)

    def list_events(
        self, request: pb.ListEventsRequest, *, timeout: float | None = None
    ) -> pb.ListEventsResponse:
        """Lists the cluster-wide event log in position order, a page at a time."""
        return self._unary(_rpcs.LIST_EVENTS, request, timeout)

    def query_events(
        self, request: pb.QueryEventsRequest, *, timeout: float | None = None
    ) -> pb.QueryEventsResponse:
        """Finds a tenant's events by filters, newest or oldest first, a page at a time."""
        return self._unary(_rpcs.QUERY_EVENTS, request, timeout)

    def event_stats(
        self, request: pb.EventStatsRequest, *, timeout: float | None = None
    ) -> pb.EventStatsResponse:
        """Totals of a tenant's (or one project's) events."""
        return self._unary(_rpcs.EVENT_STATS, request, timeout)

    def record_activity(
        self, request: pb.RecordActivityRequest, *, timeout: float | None = None
    ) -> pb.RecordActivityResponse:
        """Appends 1 to 100 agent activity records, all or none (a write)."""
        return self._unary(_rpcs.RECORD_ACTIVITY, request, timeout)

    def set_retention(
        self, request: pb.SetRetentionRequest, *, timeout: float | None = None
    ) -> pb.RetentionResponse:
        """Sets the tenant's activity retention (admin)."""
        return self._unary(_rpcs.SET_RETENTION, request, timeout)

    def compact_activity(
        self, request: pb.CompactActivityRequest, *, timeout: float | None = None
    ) -> pb.RetentionResponse:
        """Removes the tenant's activity past its retention now (admin)."""
        return self._unary(_rpcs.COMPACT_ACTIVITY, request, timeout)

    def status(
        self, request: pb.StatusRequest, *, timeout: float | None = None
    ) -> pb.StatusResponse:
        """A node's view of the cluster: the cached leader's, else the first that answers."""
        return self._unary(_rpcs.STATUS, request, timeout)

    def add_learner(
        self, request: pb.AddLearnerRequest, *, timeout: float | None = None
    ) -> pb.MembershipResponse:
        """Adds a non-voting learner (leader; admin)."""
        return self._unary(_rpcs.ADD_LEARNER, request, timeout)

    def promote(
        self, request: pb.PromoteRequest, *, timeout: float | None = None
    ) -> pb.MembershipResponse:
        """Promotes learners to voters (leader; admin)."""
        return self._unary(_rpcs.PROMOTE, request, timeout)

    def remove(
        self, request: pb.RemoveRequest, *, timeout: float | None = None
    ) -> pb.MembershipResponse:
        """Removes members (leader; admin)."""
        return self._unary(_rpcs.REMOVE, request, timeout)

    def trigger_snapshot(
        self, request: pb.TriggerSnapshotRequest, *, timeout: float | None = None
    ) -> pb.TriggerSnapshotResponse:
        """Asks the first configured endpoint (and only it) to build a snapshot now (admin)."""
        return self._unary(_rpcs.TRIGGER_SNAPSHOT, request, timeout)

    def initialize(
        self, request: pb.InitializeRequest, *, timeout: float | None = None
    ) -> pb.InitializeResponse:
        """Asks the first configured endpoint (only it) to initialize a fresh cluster (admin)."""
        return self._unary(_rpcs.INITIALIZE, request, timeout)

    def read_index(
        self, request: pb.ReadIndexRequest, *, timeout: float | None = None
    ) -> pb.ReadIndexResponse:
        """Asks the leader for a read index: a read that waits for it to apply is linearizable."""
        return self._unary(_rpcs.READ_INDEX, request, timeout)

    def digest(
        self, request: pb.DigestRequest, *, timeout: float | None = None
    ) -> pb.DigestResponse:
        """Asks the first configured endpoint (and only it) for its state-machine digest (admin)."""
        return self._unary(_rpcs.DIGEST, request, timeout)
