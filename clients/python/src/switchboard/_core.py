"""What the sync and asyncio clients share: the redirect contract, the leader cache, backoff and
the bookkeeping of one call's attempts. No I/O happens here; the clients send and sleep.

It is the client half of the redirect contract of the Rust client (`client/src/lib.rs`): writes
go to the cached leader first; a follower's `UNAVAILABLE` carrying `x-switchboard-leader-*`
metadata is followed at once (an address not in the list is learned); `UNAVAILABLE` without a
hint, connection errors and timeouts move to the next endpoint with capped, jittered exponential
backoff; every retry carries the same `request_id`. A node that sheds load
(`RESOURCE_EXHAUSTED` with `x-switchboard-overloaded`) is always backed off from before the next
attempt. Errors the caller must fix are never retried. Everything is bounded by `retries_max`
and the whole-call deadline.
"""

from __future__ import annotations

import enum
import itertools
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from google.protobuf.message import Message

from switchboard._rpcs import LeaderFrom, RequestT, Route, Rpc, RpcKind
from switchboard.config import ClientConfig, normalize_addr
from switchboard.errors import GiveUpReason, SwitchboardError, error_class
from switchboard.v1 import common_pb2

#: gRPC metadata carrying the bearer token (`Bearer <JWT>`).
AUTHORIZATION_HEADER = "authorization"
#: gRPC metadata naming the leader on a redirect.
LEADER_ID_HEADER = "x-switchboard-leader-id"
#: gRPC metadata with the leader's address on a redirect.
LEADER_ADDR_HEADER = "x-switchboard-leader-addr"
#: gRPC metadata naming the rejection kind of a refused write (`AlreadyHandedOff`).
REJECTION_HEADER = "x-switchboard-rejection"
#: gRPC metadata on a `RESOURCE_EXHAUSTED` sent by a node shedding load (`read` or `write`).
#: Without it, `RESOURCE_EXHAUSTED` means a message over a size bound, which no retry changes.
OVERLOADED_HEADER = "x-switchboard-overloaded"
#: gRPC metadata on the status that ends a watch: the position to resume from.
RESUME_FROM_HEADER = "x-switchboard-resume-from"

#: Most endpoints learned from redirects kept besides the configured ones; the oldest learned
#: one is forgotten first.
LEARNED_ENDPOINTS_MAX = 16
#: Largest response message the client decodes.
RESPONSE_BYTES_MAX = 16 * 1024 * 1024
#: Redirects followed back to back without backing off; past this the redirects chase a leader
#: that moves, so the client backs off as for any failure.
REDIRECTS_IMMEDIATE_MAX = 4

# gRPC's own reconnection backoff grows to two minutes by default; a node restarted after a
# crash must be reachable again within the client's retries. The minimum is also gRPC's connect
# timeout (1 s, as the Rust client's).
_CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_receive_message_length", RESPONSE_BYTES_MAX),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 1000),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


class _RpcErrorLike(Protocol):
    def code(self) -> grpc.StatusCode: ...
    def details(self) -> str | None: ...
    def trailing_metadata(self) -> Any: ...
    def initial_metadata(self) -> Any: ...


@dataclass(frozen=True)
class Status:
    """A failed attempt: its gRPC code, message and metadata (headers and trailers)."""

    code: grpc.StatusCode
    message: str
    metadata: dict[str, str]

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> Status:
        """The status of a failed sync or asyncio call."""
        if not hasattr(error, "code"):
            return cls(grpc.StatusCode.UNKNOWN, str(error), {})
        call: _RpcErrorLike = error  # type: ignore[assignment]
        metadata: dict[str, str] = {}
        for pairs in (call.initial_metadata(), call.trailing_metadata()):
            for key, value in pairs or ():
                if isinstance(value, str):
                    metadata[key.lower()] = value
        return cls(call.code(), call.details() or "", metadata)

    @property
    def overloaded(self) -> bool:
        """A node shedding load rather than a message over a size bound."""
        return (
            self.code == grpc.StatusCode.RESOURCE_EXHAUSTED and OVERLOADED_HEADER in self.metadata
        )

    @property
    def rejection(self) -> str | None:
        """The rejection kind the server named, if any."""
        return self.metadata.get(REJECTION_HEADER) or None


@dataclass(frozen=True)
class LeaderInfo:
    """The leader as last learned: its Raft node id when said, and its gRPC address."""

    id: int | None
    addr: str


class Next(enum.Enum):
    """What to do after a failed attempt."""

    STOP = enum.auto()
    REDIRECT = enum.auto()
    RETRY = enum.auto()
    #: Back off before the next attempt, always; a write stays with the leader, a read any node
    #: may serve moves on.
    OVERLOADED = enum.auto()


def leader_hint(status: Status) -> LeaderInfo | None:
    """The redirect hint of a status, if it names a usable address."""
    addr = status.metadata.get(LEADER_ADDR_HEADER, "")
    if not addr:
        return None
    try:
        addr = normalize_addr(addr)
    except ValueError:
        return None
    raw_id = status.metadata.get(LEADER_ID_HEADER, "")
    return LeaderInfo(int(raw_id) if raw_id.isdigit() else None, addr)


def classify(status: Status, served_by: str) -> tuple[Next, LeaderInfo | None]:
    """What a failed attempt on `served_by` calls for, and the leader a redirect names."""
    code = status.code
    if code == grpc.StatusCode.UNAVAILABLE:
        leader = leader_hint(status)
        # A node naming itself as leader while refusing is stepping down: back off.
        if leader is not None and leader.addr != served_by:
            return Next.REDIRECT, leader
        return Next.RETRY, None
    if status.overloaded:
        return Next.OVERLOADED, None
    if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        return Next.RETRY, None
    return Next.STOP, None


def leader_evidence(rpc: Rpc[Any, Any], response: Message, served_by: str) -> LeaderInfo | None:
    """The leader a successful response names, as the RPC's table row says."""
    how = rpc.leader_from
    if how is LeaderFrom.WRITE_META:
        meta = getattr(response, "meta", None)
        if meta is None or not response.HasField("meta"):
            return None
        # A replayed outcome may name the leader of the original attempt.
        leader_id = meta.leader_id if meta.leader_id and not meta.replayed else None
        return LeaderInfo(leader_id, served_by)
    if how is LeaderFrom.SELF_REPORTED:
        if response.HasField("leader_id") and response.leader_id == response.node_id:  # type: ignore[attr-defined]
            return LeaderInfo(response.node_id, served_by)  # type: ignore[attr-defined]
        return None
    if how is LeaderFrom.LEADER_ID:
        leader_id = response.leader_id  # type: ignore[attr-defined]
        return LeaderInfo(leader_id or None, served_by)
    if how is LeaderFrom.RESPONDER:
        return LeaderInfo(None, served_by)
    return None


def uuid7() -> str:
    """A fresh UUIDv7 (time-ordered), the form of a minted request id."""
    unix_ms = time.time_ns() // 1_000_000
    value = (unix_ms & ((1 << 48) - 1)) << 80 | int.from_bytes(os.urandom(10), "big")
    value = value & ~(0xF << 76) | 0x7 << 76  # version 7
    value = value & ~(0x3 << 62) | 0x2 << 62  # RFC 4122 variant
    return str(uuid.UUID(int=value))


class Peers:
    """The endpoints a client knows (the configured ones, then up to
    :data:`LEARNED_ENDPOINTS_MAX` learned from redirects) and the cached leader. Thread-safe."""

    def __init__(self, endpoints: Iterable[str], resolve: dict[str, str]) -> None:
        self._lock = threading.Lock()
        self._resolve = {normalize_addr(a): normalize_addr(b) for a, b in resolve.items()}
        self._list: list[str] = []
        for endpoint in endpoints:
            addr = normalize_addr(endpoint)
            if addr not in self._list:
                self._list.append(addr)
        self._configured = len(self._list)
        self._leader: LeaderInfo | None = None
        self._next_any = itertools.count()

    def dial_addr(self, addr: str) -> str:
        """Where to connect for `addr`: its `resolve` entry, else itself."""
        return self._resolve.get(addr, addr)

    @property
    def leader(self) -> LeaderInfo | None:
        with self._lock:
            return self._leader

    @property
    def endpoints(self) -> list[str]:
        with self._lock:
            return list(self._list)

    def first_target(self, route: Route) -> int:
        """Index of the endpoint the first attempt of a call goes to."""
        if route is Route.PINNED:
            return 0
        if route is Route.ANY:
            return next(self._next_any)
        with self._lock:
            if self._leader is not None and self._leader.addr in self._list:
                return self._list.index(self._leader.addr)
            return 0

    def at(self, index: int) -> tuple[int, str]:
        """The endpoint at `index` (modulo the list) and its index."""
        with self._lock:
            index %= len(self._list)
            return index, self._list[index]

    def remember_leader(self, leader: LeaderInfo) -> tuple[int, str | None]:
        """Caches `leader`, learning its address if new. Returns its index and the learned
        address forgotten to make room, if any. A known endpoint that `resolve` maps to the same
        place is the same endpoint, and the cache names the leader by its address."""
        target = self.dial_addr(leader.addr)
        forgotten = None
        with self._lock:
            known = [a for a in self._list if self.dial_addr(a) == target]
            if known:
                leader = LeaderInfo(leader.id, known[0])
            else:
                if len(self._list) - self._configured >= LEARNED_ENDPOINTS_MAX:
                    forgotten = self._list.pop(self._configured)
                self._list.append(leader.addr)
            self._leader = leader
            return self._list.index(leader.addr), forgotten

    def forget_leader(self, addr: str) -> None:
        """Drops the cached leader if it is `addr`, which just failed."""
        with self._lock:
            if self._leader is not None and self._leader.addr == addr:
                self._leader = None

    def next_target(self, route: Route, failed_index: int, failed_addr: str) -> int:
        """Where to go after `failed_index` failed: the cached leader if another call learned one
        meanwhile, else the next endpoint in the list."""
        if route is Route.PINNED:
            return failed_index
        with self._lock:
            leader = self._leader
            if route is Route.LEADER and leader is not None and leader.addr != failed_addr:
                if leader.addr in self._list:
                    return self._list.index(leader.addr)
            return (failed_index + 1) % len(self._list)

    def is_tried(self, index: int, tried: Sequence[str]) -> bool:
        with self._lock:
            return self._list[index % len(self._list)] in tried


class CallPlan:
    """The attempts of one call: where each goes, how long it may take, and what follows a
    failure. The client loops: :meth:`attempt`, send, then :meth:`succeeded` or :meth:`failed`
    (which raises when the call is over, else returns how long to sleep), then
    :meth:`check_deadline`."""

    def __init__(
        self, core: ClientCore, rpc: Rpc[Any, Any], route: Route, request_id: str, deadline: float
    ) -> None:
        self._core = core
        self.rpc = rpc
        self._route = route
        self.request_id = request_id
        self._started = time.monotonic()
        self._deadline = self._started + deadline
        self._count = 0
        self._tried: list[str] = []
        self._backoffs = 0
        self._redirects_in_a_row = 0
        self._target = core.peers.first_target(route)
        self._index = 0
        self._addr = ""
        self._last: Status | None = None

    def attempt(self) -> tuple[str, float]:
        """The endpoint of the next attempt and its timeout in seconds."""
        self._index, self._addr = self._core.peers.at(self._target)
        self._count += 1
        if self._addr not in self._tried:
            self._tried.append(self._addr)
        remaining = max(self._deadline - time.monotonic(), 0.001)
        return self._addr, min(self._core.config.request_timeout, remaining)

    def succeeded(self, response: Message) -> None:
        """Caches the leader the response names."""
        leader = leader_evidence(self.rpc, response, self._addr)
        if leader is not None:
            self._core.remember_leader(leader)

    def failed(self, status: Status) -> float:
        """Seconds to sleep before the next attempt; raises the call's error when it is over."""
        self._last = status
        peers = self._core.peers
        decision, leader = classify(status, self._addr)
        if decision is Next.STOP:
            raise self.error(GiveUpReason.NOT_RETRYABLE)
        delay = 0.0
        if decision is Next.REDIRECT:
            assert leader is not None
            self._redirects_in_a_row += 1
            self._target = self._core.remember_leader(leader)
            if self._redirects_in_a_row > REDIRECTS_IMMEDIATE_MAX:
                delay = self._next_backoff()
        elif decision is Next.OVERLOADED:
            self._redirects_in_a_row = 0
            if self._route is Route.ANY:
                self._target = peers.next_target(self._route, self._index, self._addr)
            delay = self._next_backoff()
        else:
            self._redirects_in_a_row = 0
            peers.forget_leader(self._addr)
            self._target = peers.next_target(self._route, self._index, self._addr)
            # A fresh endpoint is worth trying at once; cycling back to one that already
            # failed is what backs off.
            if peers.is_tried(self._target, self._tried):
                delay = self._next_backoff()
        if self._count > self._core.config.retries_max:
            raise self.error(GiveUpReason.RETRIES_EXHAUSTED)
        return min(delay, max(self._deadline - time.monotonic(), 0.0))

    def check_deadline(self) -> None:
        """Raises when the whole-call deadline has passed (after a sleep)."""
        if time.monotonic() >= self._deadline:
            raise self.error(GiveUpReason.DEADLINE)

    def _next_backoff(self) -> float:
        self._backoffs += 1
        return self._core.backoff(self._backoffs - 1)

    def error(self, reason: GiveUpReason) -> SwitchboardError:
        """The error of this call, ended for `reason` after the last failed attempt."""
        assert self._last is not None
        return call_error(
            self._last,
            reason,
            op=self.rpc.method,
            request_id=self.request_id,
            attempts=self._count,
            elapsed=time.monotonic() - self._started,
            tried=self._tried,
        )


def call_error(
    status: Status,
    reason: GiveUpReason,
    *,
    op: str,
    request_id: str,
    attempts: int,
    elapsed: float,
    tried: Sequence[str],
) -> SwitchboardError:
    """The exception for a call that ended with `status` for `reason`."""
    cls = error_class(status.code, status.rejection, reason, status.overloaded)
    return cls(
        status.message,
        code=status.code,
        kind=status.rejection,
        op=op,
        request_id=request_id,
        attempts=attempts,
        elapsed=elapsed,
        tried=tried,
        reason=reason,
    )


class ClientCore:
    """Configuration, endpoints, leader cache, credentials and backoff of one client."""

    def __init__(
        self,
        config: ClientConfig | None,
        on_forgotten: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config if config is not None else ClientConfig()
        self.peers = Peers(self.config.endpoints, dict(self.config.resolve))
        self.metadata: tuple[tuple[str, str], ...] = (
            ((AUTHORIZATION_HEADER, f"Bearer {self.config.token}"),)
            if self.config.token is not None
            else ()
        )
        self._random = random.Random()
        # Told of a learned address that was forgotten, so that the client closes its channel.
        self._on_forgotten = on_forgotten

    def remember_leader(self, leader: LeaderInfo) -> int:
        index, forgotten = self.peers.remember_leader(leader)
        if forgotten is not None and self._on_forgotten is not None:
            self._on_forgotten(forgotten)
        return index

    def backoff(self, n: int) -> float:
        """Exponential backoff for the `n`th retry, capped, with equal jitter (half fixed, half
        random) so that clients that failed together do not retry together."""
        config = self.config
        exp = min(config.backoff_initial * (1 << min(n, 31)), config.backoff_max)
        return exp / 2 + self._random.uniform(0, exp / 2)

    def plan(
        self, rpc: Rpc[RequestT, Any], request: RequestT, timeout: float | None
    ) -> tuple[CallPlan, RequestT]:
        """The plan of one call and the request to send on every attempt: a write without a
        `request_id` gets a fresh one (on a copy: the caller's message is left as it is)."""
        request_id = ""
        if rpc.kind is RpcKind.WRITE:
            request_id = request.request_id  # type: ignore[attr-defined]
            if not request_id:
                copy = type(request)()
                copy.CopyFrom(request)
                request_id = copy.request_id = uuid7()  # type: ignore[attr-defined]
                request = copy
        deadline = self.config.call_deadline if timeout is None else timeout
        if not deadline > 0:
            raise ValueError(f"timeout must be greater than zero, not {timeout}")
        return CallPlan(self, rpc, route_of(rpc, request), request_id, deadline), request

    def credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials of the configuration; `None` for plaintext."""
        tls = self.config.tls
        if tls is None:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=tls.ca_pem,
            private_key=tls.key_pem,
            certificate_chain=tls.cert_pem,
        )

    def channel_options(self) -> list[tuple[str, Any]]:
        options: list[tuple[str, Any]] = list(_CHANNEL_OPTIONS)
        tls = self.config.tls
        if tls is not None and tls.server_name:
            options.append(("grpc.ssl_target_name_override", tls.server_name))
        return options


def route_of(rpc: Rpc[Any, Any], request: Message) -> Route:
    """Where the first attempt goes: reads by their consistency, the rest by their kind."""
    if rpc.kind is RpcKind.READ:
        read = request.read  # type: ignore[attr-defined]
        if request.HasField("read") and read.consistency == common_pb2.CONSISTENCY_LOCAL:
            return Route.ANY
        return Route.LEADER
    if rpc.kind is RpcKind.PINNED:
        return Route.PINNED
    return Route.LEADER


class ClientBase:
    """What :class:`~switchboard.Client` and :class:`~switchboard.AsyncClient` show alike of
    their :class:`ClientCore`."""

    _core: ClientCore

    @property
    def config(self) -> ClientConfig:
        """The configuration this client was made with."""
        return self._core.config

    @property
    def leader(self) -> LeaderInfo | None:
        """The leader as currently cached, if any."""
        return self._core.peers.leader

    @property
    def endpoints(self) -> list[str]:
        """Every endpoint known: the configured ones, then those learned from redirects."""
        return self._core.peers.endpoints
