"""A `WatchEvents` stream that outlives the node serving it, after `client/src/watch.rs`.

Every message of a watch carries `resume_from`, a checkpoint: all matching events before it
were delivered. The watch remembers the last one and, when its node fails (the stream breaks,
the node ends it, or it falls silent for three progress intervals, as a paused or cut-off node
does), opens the same watch on the next endpoint from that position. Positions are cluster-wide
and every node delivers them in order, so the application sees each event once, in order, across
any number of nodes. A watch from now that ends before its first message resumes from the
position its node names in `x-switchboard-resume-from`. Errors the caller must fix (a bad
filter, a token refused) end the watch, and so does a call no node knows (a node that has not
applied the call's creation yet says NOT_FOUND too, so the watch asks every endpoint first);
everything else is retried with the client's backoff, at most `retries_max` times in a row
without a message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any

import grpc
import grpc.aio

from switchboard import pb
from switchboard._core import RESUME_FROM_HEADER, ClientCore, Status, call_error
from switchboard._rpcs import Route
from switchboard.errors import GiveUpReason

#: A node sends a message at least every progress interval; this many intervals of silence
#: (and never less than :data:`SILENCE_MIN`) and the watch takes its node for gone.
SILENT_INTERVALS = 3
#: Shortest silence, in seconds, after which a watch moves on.
SILENCE_MIN = 3.0
#: Progress interval the server uses when the request names none, in milliseconds.
PROGRESS_INTERVAL_DEFAULT_MS = 1000

#: Codes no other node or later attempt answers differently: they end the watch. (NOT_FOUND
#: ends it once every endpoint has said it.)
FINAL_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)


class AsyncEventWatch:
    """A resumable watch of the event log; made by :meth:`switchboard.AsyncClient.watch`.

    An async iterator of `WatchEventsResponse` messages: matching events (continuing the stream
    without gaps or repeats) or none (a progress message); either way its `resume_from` is a
    checkpoint to store. :meth:`events` iterates over the events alone. An error raised by it
    is final: the watch is over. Close it with :meth:`aclose` (or an `async with` block).
    """

    def __init__(
        self,
        core: ClientCore,
        stub: Callable[[str, str], Any],
        request: pb.WatchEventsRequest,
    ) -> None:
        self._core = core
        self._stub = stub
        self._request = pb.WatchEventsRequest()
        self._request.CopyFrom(request)
        self._resume_from: int | None = (
            request.from_position if request.HasField("from_position") else None
        )
        interval_ms = request.progress_interval_ms or PROGRESS_INTERVAL_DEFAULT_MS
        self._silence_max = max(interval_ms / 1000 * SILENT_INTERVALS, SILENCE_MIN)
        self._target = core.peers.first_target(Route.ANY)
        self._call: grpc.aio.UnaryStreamCall[Any, Any] | None = None
        self._addr = ""
        self._node_id: int | None = None
        self._failures = 0
        self._tried: list[str] = []
        # Endpoints that said NOT_FOUND since the last message.
        self._not_found: set[str] = set()
        self._failing_since: float | None = None
        self._resumed = 0
        self._closed = False

    @property
    def resume_from(self) -> int | None:
        """Where the watch resumes: every matching event before this position was delivered
        (`None` before the first message of a watch from now)."""
        return self._resume_from

    @property
    def resumed(self) -> int:
        """How many times the watch moved to another node (or reopened on the same one)."""
        return self._resumed

    @property
    def node_id(self) -> int | None:
        """The node that sent the last message."""
        return self._node_id

    def __aiter__(self) -> AsyncEventWatch:
        return self

    async def __anext__(self) -> pb.WatchEventsResponse:
        if self._closed:
            raise StopAsyncIteration
        return await self.next()

    async def events(self) -> AsyncIterator[pb.Event]:
        """The events alone, in position order, each once."""
        async for message in self:
            for event in message.events:
                yield event

    async def next(self) -> pb.WatchEventsResponse:
        """The next message. Raises a :class:`~switchboard.errors.SwitchboardError` when the
        watch is over (a final answer, or `retries_max` failures in a row); it is closed then."""
        if self._closed:
            raise RuntimeError("the watch is closed")
        while True:
            call = self._call if self._call is not None else self._open()
            try:
                message = await asyncio.wait_for(call.read(), self._silence_max)
            except grpc.RpcError as error:
                status = Status.from_rpc_error(error)
            except asyncio.TimeoutError:
                status = Status(
                    grpc.StatusCode.UNAVAILABLE,
                    f"{self._addr} sent nothing for {self._silence_max * 1000:.0f} ms",
                    {},
                )
            else:
                if isinstance(message, pb.WatchEventsResponse):
                    delivered = self._deliver(message)
                    if delivered is not None:
                        return delivered
                    continue
                status = Status(grpc.StatusCode.UNAVAILABLE, f"{self._addr} ended the watch", {})
            self._drop_call()
            try:
                await self._fail(status)
            except BaseException:
                self._closed = True
                raise

    async def aclose(self) -> None:
        """Ends the watch; iterating stops. Call it from the task that reads the watch (or
        cancel that task first)."""
        self._closed = True
        self._drop_call()

    async def __aenter__(self) -> AsyncEventWatch:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _open(self) -> grpc.aio.UnaryStreamCall[Any, Any]:
        """Opens the watch on the current target, from the checkpoint."""
        self._target, self._addr = self._core.peers.at(self._target)
        if self._addr not in self._tried:
            self._tried.append(self._addr)
        request = pb.WatchEventsRequest()
        request.CopyFrom(self._request)
        if self._resume_from is not None:
            request.from_position = self._resume_from
        stub = self._stub(self._addr, "WatchService")
        self._call = stub.WatchEvents(request, metadata=self._core.metadata)
        return self._call

    def _drop_call(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None

    def _deliver(self, message: pb.WatchEventsResponse) -> pb.WatchEventsResponse | None:
        """Takes a message: drops what was delivered before (never expected: a node starts at
        the checkpoint), moves the checkpoint, and resets the failure count."""
        if self._resume_from is not None:
            if message.resume_from < self._resume_from:
                return None
            fresh = [e for e in message.events if e.position >= self._resume_from]
            if len(fresh) != len(message.events):
                del message.events[:]
                message.events.extend(fresh)
        self._resume_from = message.resume_from
        self._node_id = message.node_id
        self._failures = 0
        self._failing_since = None
        self._tried.clear()
        self._not_found.clear()
        return message

    async def _fail(self, status: Status) -> None:
        """A broken stream: final errors end the watch, anything else moves to the next
        endpoint (after a backoff once every endpoint has failed)."""
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        self._failures += 1
        reason = None
        if status.code == grpc.StatusCode.NOT_FOUND:
            # A node serves a watch from its own applied state: one that has not applied the
            # call's creation yet (a follower just behind, a node restarted and catching up)
            # does not know the call. Missing, then, is what every node says.
            self._not_found.add(self._addr)
            if self._not_found >= set(self._core.peers.endpoints):
                reason = GiveUpReason.NOT_RETRYABLE
        elif status.code in FINAL_CODES:
            reason = GiveUpReason.NOT_RETRYABLE
        elif self._failures > self._core.config.retries_max:
            reason = GiveUpReason.RETRIES_EXHAUSTED
        if reason is not None:
            raise call_error(
                status,
                reason,
                op="watch_events",
                request_id="",
                attempts=self._failures,
                elapsed=time.monotonic() - self._failing_since,
                tried=self._tried,
            )
        named = status.metadata.get(RESUME_FROM_HEADER, "")
        if self._resume_from is None and named.isdigit():
            # A watch from now ended before its first message: its node says where it began.
            self._resume_from = int(named)
        self._resumed += 1
        peers = self._core.peers
        self._target = peers.next_target(Route.ANY, self._target, self._addr)
        if peers.is_tried(self._target, self._tried):
            await asyncio.sleep(self._core.backoff(self._failures))
