"""Fire-and-forget agent activity logging, after `client/src/activity.rs`.

An agent that reports what it does must never wait on, or fail because of, its reporting.
`emit(entry)` puts a record into a bounded buffer and returns at once; a background worker (a
thread for :class:`ActivityEmitter`, an asyncio task for :class:`AsyncActivityEmitter`) sends
the buffer as one `RecordActivity` every `flush_every` seconds, or as soon as `batch_max`
records wait. When the buffer is full (the cluster is slower than the agent, or unreachable) a
record is dropped, never queued without bound: drops are counted in :class:`EmitterStats` and
logged (a warning at most once a second). Each batch is sent under its own request id, so the
client's retries (redirects, leader changes) never record it twice; a batch the client gives up
on is counted as failed. `flush()` waits until everything emitted before it was answered;
`close()` flushes and stops the worker.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from switchboard import pb
from switchboard._core import uuid7
from switchboard.errors import ConfigError

#: Records one `RecordActivity` carries at most (the store's bound).
ACTIVITY_BATCH_MAX = 100

_log = logging.getLogger("switchboard.activity")


@dataclass(frozen=True)
class EmitterConfig:
    """How an emitter buffers and flushes."""

    #: Tenant of the records (empty: the token's).
    tenant_id: str = ""
    #: A batch is sent at least this often (seconds) while records wait.
    flush_every: float = 0.1
    #: A batch is sent as soon as this many records wait (1 to :data:`ACTIVITY_BATCH_MAX`).
    batch_max: int = ACTIVITY_BATCH_MAX
    #: Records buffered at most; past it, `emit` drops.
    buffer_max: int = 10_000

    def __post_init__(self) -> None:
        if not 1 <= self.batch_max <= ACTIVITY_BATCH_MAX:
            raise ConfigError(
                f"batch_max must be in 1..={ACTIVITY_BATCH_MAX}, not {self.batch_max}"
            )
        if self.buffer_max < 1:
            raise ConfigError(f"buffer_max must be at least 1, not {self.buffer_max}")
        if not self.flush_every > 0:
            raise ConfigError(f"flush_every must be greater than zero, not {self.flush_every}")


@dataclass(frozen=True)
class EmitterStats:
    """What an emitter did so far."""

    #: Records the cluster acknowledged.
    sent: int = 0
    #: Records dropped because the buffer was full (or the emitter closed).
    dropped: int = 0
    #: Records of batches the client gave up on (the error is logged).
    failed: int = 0
    #: Batches sent.
    batches: int = 0


class _Counters:
    """The counts behind :class:`EmitterStats`, updated by `emit` and the worker."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sent = self._dropped = self._failed = self._batches = 0
        self._last_warning = float("-inf")

    def snapshot(self) -> EmitterStats:
        with self._lock:
            return EmitterStats(self._sent, self._dropped, self._failed, self._batches)

    def drop(self) -> None:
        with self._lock:
            self._dropped += 1
            dropped = self._dropped
            now = time.monotonic()
            warn = now - self._last_warning >= 1.0
            if warn:
                self._last_warning = now
        if warn:
            _log.warning("activity buffer full or emitter closed: %d record(s) dropped", dropped)

    def batch(self, records: int, error: Exception | None) -> None:
        with self._lock:
            self._batches += 1
            if error is None:
                self._sent += records
            else:
                self._failed += records
        if error is not None:
            _log.warning("activity batch of %d record(s) not recorded: %s", records, error)


def _request(tenant_id: str, entries: list[pb.ActivityEntry]) -> pb.RecordActivityRequest:
    # One fresh id per batch, kept across the client's retries of it.
    return pb.RecordActivityRequest(tenant_id=tenant_id, request_id=uuid7(), entries=entries)


class _Flush:
    """A flush request in the buffer: done once everything before it was answered."""

    def __init__(self) -> None:
        self.done = threading.Event()


_CLOSE = object()


class ActivityEmitter:
    """A non-blocking, buffered activity logger with a background thread; made by
    :meth:`switchboard.Client.activity_emitter`. Thread-safe."""

    def __init__(
        self,
        record_activity: Callable[[pb.RecordActivityRequest], object],
        config: EmitterConfig,
    ) -> None:
        self._record_activity = record_activity
        self._config = config
        self._counters = _Counters()
        self._buffer: queue.Queue[pb.ActivityEntry | _Flush | object] = queue.Queue(
            config.buffer_max
        )
        self._closed = False
        self._close_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="switchboard-activity", daemon=True)
        self._thread.start()

    def emit(self, entry: pb.ActivityEntry) -> bool:
        """Buffers `entry` for the next batch; never waits. `False`: the buffer was full (or
        the emitter closed) and the record was dropped (counted)."""
        with self._close_lock:
            if not self._closed:
                try:
                    self._buffer.put_nowait(entry)
                    return True
                except queue.Full:
                    pass
        self._counters.drop()
        return False

    def flush(self, timeout: float | None = None) -> bool:
        """Sends everything emitted so far and waits until it was answered (sent or failed).
        `False` when `timeout` seconds passed first (or the emitter is closed)."""
        if self._closed:
            return False
        flush = _Flush()
        try:
            self._buffer.put(flush, timeout=timeout)
        except queue.Full:
            return False
        return flush.done.wait(timeout)

    def stats(self) -> EmitterStats:
        """The counts so far."""
        return self._counters.snapshot()

    def close(self) -> EmitterStats:
        """Flushes, stops the thread, and returns the final counts. Later records are dropped."""
        with self._close_lock:
            closing, self._closed = not self._closed, True
        if closing:
            # After every record accepted before it; may wait for room, `emit` never does.
            self._buffer.put(_CLOSE)
        self._thread.join()
        return self.stats()

    def __enter__(self) -> ActivityEmitter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        config = self._config
        batch: list[pb.ActivityEntry] = []
        waiting: list[_Flush] = []
        next_tick = time.monotonic() + config.flush_every
        while True:
            closing = False
            try:
                item = self._buffer.get(timeout=max(next_tick - time.monotonic(), 0.0))
            except queue.Empty:
                next_tick = time.monotonic() + config.flush_every
            else:
                if isinstance(item, pb.ActivityEntry):
                    batch.append(item)
                    if len(batch) < config.batch_max:
                        continue
                elif isinstance(item, _Flush):
                    waiting.append(item)
                else:
                    closing = True
            if batch:
                self._send(batch)
                batch = []
            for flush in waiting:
                flush.done.set()
            waiting.clear()
            if closing:
                return

    def _send(self, batch: list[pb.ActivityEntry]) -> None:
        try:
            self._record_activity(_request(self._config.tenant_id, batch))
        except Exception as error:  # reporting never fails the agent: counted and logged
            self._counters.batch(len(batch), error)
        else:
            self._counters.batch(len(batch), None)


class AsyncActivityEmitter:
    """A non-blocking, buffered activity logger with a background asyncio task; made by
    :meth:`switchboard.AsyncClient.activity_emitter` inside a running event loop. `emit` is
    called from that loop's thread."""

    def __init__(
        self,
        record_activity: Callable[[pb.RecordActivityRequest], Awaitable[object]],
        config: EmitterConfig,
    ) -> None:
        self._record_activity = record_activity
        self._config = config
        self._counters = _Counters()
        self._buffer: asyncio.Queue[pb.ActivityEntry | asyncio.Future[None] | object] = (
            asyncio.Queue(config.buffer_max)
        )
        self._closed = False
        self._task = asyncio.get_running_loop().create_task(self._run())

    def emit(self, entry: pb.ActivityEntry) -> bool:
        """Buffers `entry` for the next batch; never waits. `False`: the buffer was full (or
        the emitter closed) and the record was dropped (counted)."""
        if not self._closed:
            try:
                self._buffer.put_nowait(entry)
                return True
            except asyncio.QueueFull:
                pass
        self._counters.drop()
        return False

    async def flush(self) -> None:
        """Sends everything emitted so far and waits until it was answered (sent or failed)."""
        if self._closed:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._buffer.put(done)
        await done

    def stats(self) -> EmitterStats:
        """The counts so far."""
        return self._counters.snapshot()

    async def close(self) -> EmitterStats:
        """Flushes, stops the task, and returns the final counts. Later records are dropped."""
        if not self._closed:
            self._closed = True
            await self._buffer.put(_CLOSE)
        await asyncio.shield(self._task)
        return self.stats()

    async def __aenter__(self) -> AsyncActivityEmitter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run(self) -> None:
        config = self._config
        loop = asyncio.get_running_loop()
        batch: list[pb.ActivityEntry] = []
        waiting: list[asyncio.Future[None]] = []
        next_tick = loop.time() + config.flush_every
        while True:
            closing = False
            try:
                item = await asyncio.wait_for(self._buffer.get(), max(next_tick - loop.time(), 0.0))
            except asyncio.TimeoutError:
                next_tick = loop.time() + config.flush_every
            else:
                if isinstance(item, pb.ActivityEntry):
                    batch.append(item)
                    if len(batch) < config.batch_max:
                        continue
                elif isinstance(item, asyncio.Future):
                    waiting.append(item)
                else:
                    closing = True
            if batch:
                await self._send(batch)
                batch = []
            for done in waiting:
                if not done.done():
                    done.set_result(None)
            waiting.clear()
            if closing:
                return

    async def _send(self, batch: list[pb.ActivityEntry]) -> None:
        try:
            await self._record_activity(_request(self._config.tenant_id, batch))
        except Exception as error:  # reporting never fails the agent: counted and logged
            self._counters.batch(len(batch), error)
        else:
            self._counters.batch(len(batch), None)
