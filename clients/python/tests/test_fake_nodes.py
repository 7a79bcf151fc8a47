"""The redirect and retry contract against in-process fake nodes, which answer as a script says:
redirects are followed and the leader learned, retries carry the same request id, final errors
are not retried, shed load is backed off from, and the call deadline holds."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures

import grpc
import pytest

import switchboard.watch
from switchboard import (
    LEADER_ADDR_HEADER,
    LEADER_ID_HEADER,
    OVERLOADED_HEADER,
    REJECTION_HEADER,
    RESUME_FROM_HEADER,
    AlreadyHandedOff,
    AsyncClient,
    Client,
    ClientConfig,
    DeadlineExceeded,
    LeaderInfo,
    NotFound,
    Overloaded,
    RetriesExhausted,
    pb,
)
from switchboard.v1 import calls_pb2_grpc, events_pb2_grpc

#: How a fake node answers StartCall: given the request, the context and how many StartCalls
#: it saw before, it returns a response or aborts.
Script = Callable[[pb.StartCallRequest, grpc.ServicerContext, int], pb.CallResponse]


class FakeNode(calls_pb2_grpc.CallServiceServicer):
    """A CallService that answers StartCall by script and records the request ids it saw."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.request_ids: list[str] = []
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        calls_pb2_grpc.add_CallServiceServicer_to_server(self, self.server)  # type: ignore[no-untyped-call]
        self.addr = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def StartCall(  # noqa: N802 (the generated servicer's name)
        self, request: pb.StartCallRequest, context: grpc.ServicerContext
    ) -> pb.CallResponse:
        with self._lock:
            seen = len(self.request_ids)
            self.request_ids.append(request.request_id)
        return self.script(request, context, seen)


StartNode = Callable[[Script], FakeNode]


@pytest.fixture
def nodes() -> Iterator[StartNode]:
    started: list[FakeNode] = []

    def start(script: Script) -> FakeNode:
        node = FakeNode(script)
        started.append(node)
        return node

    yield start
    for node in started:
        node.server.stop(grace=None)


def fast_config(*endpoints: str, **changes: object) -> ClientConfig:
    settings: dict[str, object] = {
        "request_timeout": 1.0,
        "call_deadline": 5.0,
        "retries_max": 8,
        "backoff_initial": 0.01,
        "backoff_max": 0.05,
    }
    settings.update(changes)
    return ClientConfig(endpoints=endpoints, **settings)  # type: ignore[arg-type]


def accepted(leader_id: int) -> Script:
    def script(
        request: pb.StartCallRequest, context: grpc.ServicerContext, seen: int
    ) -> pb.CallResponse:
        return pb.CallResponse(
            call=pb.Call(call_id=request.call_id, state=pb.CALL_STATE_ACTIVE),
            meta=pb.WriteMeta(index=7, leader_id=leader_id),
        )

    return script


def redirecting_to(leader: FakeNode, leader_id: int) -> Script:
    def script(
        request: pb.StartCallRequest, context: grpc.ServicerContext, seen: int
    ) -> pb.CallResponse:
        context.set_trailing_metadata(
            ((LEADER_ID_HEADER, str(leader_id)), (LEADER_ADDR_HEADER, leader.addr))
        )
        context.abort(grpc.StatusCode.UNAVAILABLE, "this node is not the leader")

    return script


def failing(code: grpc.StatusCode, times: int, then: Script, **metadata: str) -> Script:
    def script(
        request: pb.StartCallRequest, context: grpc.ServicerContext, seen: int
    ) -> pb.CallResponse:
        if seen < times:
            context.set_trailing_metadata(tuple(metadata.items()))
            context.abort(code, f"scripted failure {seen + 1}")
        return then(request, context, seen)

    return script


def test_a_follower_redirect_is_followed_and_the_leader_learned(nodes: StartNode) -> None:
    leader = nodes(accepted(leader_id=2))
    follower = nodes(redirecting_to(leader, 2))
    with Client(fast_config(follower.addr)) as client:
        response = client.start_call(pb.StartCallRequest(call_id="c1"))
        assert response.call.state == pb.CALL_STATE_ACTIVE
        assert client.leader == LeaderInfo(2, leader.addr)
        assert client.endpoints == [follower.addr, leader.addr]
        # The next write goes to the cached leader at once.
        client.start_call(pb.StartCallRequest(call_id="c2"))
    assert len(follower.request_ids) == 1
    assert len(leader.request_ids) == 2
    assert follower.request_ids[0] == leader.request_ids[0] != leader.request_ids[1]


def test_retries_carry_the_same_request_id(nodes: StartNode) -> None:
    flaky = nodes(failing(grpc.StatusCode.UNAVAILABLE, 3, accepted(leader_id=1)))
    with Client(fast_config(flaky.addr)) as client:
        client.start_call(pb.StartCallRequest(call_id="c"))
        client.start_call(pb.StartCallRequest(call_id="c", request_id="given"))
    first_call = flaky.request_ids[:4]
    assert len(set(first_call)) == 1 and first_call[0]
    assert flaky.request_ids[4:] == ["given"]


def test_an_unreachable_node_is_skipped(nodes: StartNode) -> None:
    leader = nodes(accepted(leader_id=3))
    dead = nodes(accepted(leader_id=9))
    dead.server.stop(grace=None)
    with Client(fast_config(dead.addr, leader.addr)) as client:
        client.start_call(pb.StartCallRequest(call_id="c"))
        assert client.leader == LeaderInfo(3, leader.addr)
    assert len(leader.request_ids) == 1


def test_a_rejection_is_final_and_typed(nodes: StartNode) -> None:
    refusing = nodes(
        failing(
            grpc.StatusCode.FAILED_PRECONDITION,
            100,
            accepted(leader_id=1),
            **{REJECTION_HEADER: "AlreadyHandedOff"},
        )
    )
    with Client(fast_config(refusing.addr)) as client:
        with pytest.raises(AlreadyHandedOff) as raised:
            client.start_call(pb.StartCallRequest(call_id="c", request_id="r-1"))
    error = raised.value
    assert (error.code, error.kind, error.attempts) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "AlreadyHandedOff",
        1,
    )
    assert error.request_id == "r-1" and error.message == "scripted failure 1"
    assert refusing.request_ids == ["r-1"]


def test_shed_load_is_backed_off_from_then_reported_as_overloaded(nodes: StartNode) -> None:
    shedding = nodes(
        failing(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            100,
            accepted(leader_id=1),
            **{OVERLOADED_HEADER: "write"},
        )
    )
    config = fast_config(shedding.addr, retries_max=3, backoff_initial=0.1, backoff_max=0.1)
    started = time.monotonic()
    with Client(config) as client, pytest.raises(Overloaded) as raised:
        client.start_call(pb.StartCallRequest(call_id="c"))
    # Three backoffs of at least half of 0.1 s between four attempts.
    assert time.monotonic() - started >= 0.15
    assert raised.value.attempts == 4
    assert len(set(shedding.request_ids)) == 1 and len(shedding.request_ids) == 4


def test_a_slow_node_is_bounded_by_the_call_deadline(nodes: StartNode) -> None:
    def slow(
        request: pb.StartCallRequest, context: grpc.ServicerContext, seen: int
    ) -> pb.CallResponse:
        time.sleep(1.0)
        return accepted(1)(request, context, seen)

    node = nodes(slow)
    config = fast_config(node.addr, request_timeout=0.2, call_deadline=0.7, retries_max=100)
    started = time.monotonic()
    with Client(config) as client, pytest.raises(DeadlineExceeded) as raised:
        client.start_call(pb.StartCallRequest(call_id="c"))
    assert time.monotonic() - started < 2.0
    assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert raised.value.attempts >= 2


def test_retries_are_bounded(nodes: StartNode) -> None:
    down = nodes(failing(grpc.StatusCode.UNAVAILABLE, 100, accepted(leader_id=1)))
    with Client(fast_config(down.addr, retries_max=2)) as client:
        with pytest.raises(RetriesExhausted) as raised:
            client.start_call(pb.StartCallRequest(call_id="c"))
    assert raised.value.attempts == 3 and len(down.request_ids) == 3


async def test_the_async_client_follows_redirects_with_one_request_id(nodes: StartNode) -> None:
    leader = nodes(failing(grpc.StatusCode.UNAVAILABLE, 1, accepted(leader_id=2)))
    follower = nodes(redirecting_to(leader, 2))
    async with AsyncClient(fast_config(follower.addr)) as client:
        response = await client.start_call(pb.StartCallRequest(call_id="c"))
        assert response.meta.leader_id == 2
        assert client.leader == LeaderInfo(2, leader.addr)
    ids = follower.request_ids + leader.request_ids
    assert len(ids) >= 3 and len(set(ids)) == 1


#: How a fake node answers WatchEvents: given the request, the context and how many watches it
#: saw before, the messages to stream (it may abort after them).
WatchScript = Callable[
    [pb.WatchEventsRequest, grpc.ServicerContext, int], Iterable[pb.WatchEventsResponse]
]


class FakeWatchNode(events_pb2_grpc.WatchServiceServicer):
    """A WatchService that streams by script and records the requests it saw."""

    def __init__(self, node_id: int, script: WatchScript) -> None:
        self.node_id = node_id
        self.script = script
        self.requests: list[pb.WatchEventsRequest] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        events_pb2_grpc.add_WatchServiceServicer_to_server(self, self.server)  # type: ignore[no-untyped-call]
        self.addr = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def WatchEvents(  # noqa: N802 (the generated servicer's name)
        self, request: pb.WatchEventsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.WatchEventsResponse]:
        self.requests.append(request)
        yield from self.script(request, context, len(self.requests) - 1)


@pytest.fixture
def watch_nodes() -> Iterator[Callable[[WatchScript], FakeWatchNode]]:
    started: list[FakeWatchNode] = []

    def start(script: WatchScript) -> FakeWatchNode:
        node = FakeWatchNode(len(started) + 1, script)
        started.append(node)
        return node

    yield start
    for node in started:
        node.server.stop(grace=None)


def hold(context: grpc.ServicerContext) -> None:
    """Keeps a stream open, silent, until the client leaves (at most 5 s)."""
    deadline = time.monotonic() + 5
    while context.is_active() and time.monotonic() < deadline:
        time.sleep(0.05)


def events_from(request: pb.WatchEventsRequest, count: int, node_id: int) -> pb.WatchEventsResponse:
    """A message of `count` events starting at the requested position."""
    first = request.from_position
    events = [pb.Event(position=p, event_type="turn.appended") for p in range(first, first + count)]
    return pb.WatchEventsResponse(events=events, resume_from=first + count, node_id=node_id)


async def next_messages(
    client: AsyncClient, request: pb.WatchEventsRequest, count: int
) -> list[pb.WatchEventsResponse]:
    async with client.watch(request) as watch:
        return [await asyncio.wait_for(watch.next(), 10) for _ in range(count)]


async def test_a_broken_watch_resumes_on_the_next_node_from_its_checkpoint(
    watch_nodes: Callable[[WatchScript], FakeWatchNode],
) -> None:
    def breaks(
        request: pb.WatchEventsRequest, context: grpc.ServicerContext, seen: int
    ) -> Iterator[pb.WatchEventsResponse]:
        yield events_from(request, 2, node_id=1)
        context.abort(grpc.StatusCode.UNAVAILABLE, "node going away")

    def serves(
        request: pb.WatchEventsRequest, context: grpc.ServicerContext, seen: int
    ) -> Iterator[pb.WatchEventsResponse]:
        yield events_from(request, 3, node_id=2)
        hold(context)

    first, second = watch_nodes(breaks), watch_nodes(serves)
    async with AsyncClient(fast_config(first.addr, second.addr)) as client:
        messages = await next_messages(client, pb.WatchEventsRequest(from_position=10), 2)
    positions = [e.position for m in messages for e in m.events]
    assert positions == [10, 11, 12, 13, 14]
    assert [m.node_id for m in messages] == [1, 2]
    assert second.requests[0].from_position == 12


async def test_a_watch_from_now_resumes_where_its_node_said_it_began(
    watch_nodes: Callable[[WatchScript], FakeWatchNode],
) -> None:
    def ends_at_once(
        request: pb.WatchEventsRequest, context: grpc.ServicerContext, seen: int
    ) -> Iterator[pb.WatchEventsResponse]:
        context.set_trailing_metadata(((RESUME_FROM_HEADER, "42"),))
        context.abort(grpc.StatusCode.UNAVAILABLE, "no leader contact; resume from position 42")
        yield from ()

    def serves(
        request: pb.WatchEventsRequest, context: grpc.ServicerContext, seen: int
    ) -> Iterator[pb.WatchEventsResponse]:
        yield events_from(request, 1, node_id=2)
        hold(context)

    first, second = watch_nodes(ends_at_once), watch_nodes(serves)
    async with AsyncClient(fast_config(first.addr, second.addr)) as client:
        (message,) = await next_messages(client, pb.WatchEventsRequest(), 1)
    assert not first.requests[0].HasField("from_position")
    assert second.requests[0].from_position == 42
    assert [e.position for e in message.events] == [42]


async def test_a_silent_node_is_left_for_the_next(
    watch_nodes: Callable[[WatchScript], FakeWatchNode], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(switchboard.watch, "SILENCE_MIN", 0.3)

    def paused(
        request: pb.WatchEventsRequest, context: grpc.ServicerContext, seen: int
    ) -> Iterator[pb.WatchEventsResponse]:
        yield events_from(request, 1, node_id=1)
        hold(context)

    first, second = watch_nodes(paused), watch_nodes(paused)
    request = pb.WatchEventsRequest(from_position=1, progress_interval_ms=100)
    async with AsyncClient(fast_config(first.addr, second.addr)) as client:
        messages = await next_messages(client, request, 2)
    assert [e.position for m in messages for e in m.events] == [1, 2]
    assert second.requests[0].from_position == 2


async def test_a_call_unknown_to_one_node_is_asked_of_the_others(
    watch_nodes: Callable[[WatchScript], FakeWatchNode],
) -> None:
    def behind(
        request: pb.WatchEventsRequest, context: grpc.ServicerContext, seen: int
    ) -> Iterator[pb.WatchEventsResponse]:
        context.abort(grpc.StatusCode.NOT_FOUND, f"call {request.call_id} not found")
        yield from ()

    def serves(
        request: pb.WatchEventsRequest, context: grpc.ServicerContext, seen: int
    ) -> Iterator[pb.WatchEventsResponse]:
        yield events_from(request, 1, node_id=2)
        hold(context)

    request = pb.WatchEventsRequest(call_id="c", from_position=1)
    lagging, caught_up = watch_nodes(behind), watch_nodes(serves)
    async with AsyncClient(fast_config(lagging.addr, caught_up.addr)) as client:
        (message,) = await next_messages(client, request, 1)
    assert [e.position for e in message.events] == [1]

    nowhere = [watch_nodes(behind) for _ in range(3)]
    async with AsyncClient(fast_config(*(node.addr for node in nowhere))) as client:
        with pytest.raises(NotFound):
            await next_messages(client, request, 1)
    assert [len(node.requests) for node in nowhere] == [1, 1, 1]
