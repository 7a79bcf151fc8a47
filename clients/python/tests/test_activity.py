"""The activity emitters on the session's real cluster: what is emitted is recorded, in batches
of at most 100; a full buffer drops and counts; a closed emitter takes nothing."""

from __future__ import annotations

import asyncio

from conftest import DevCluster, unique
from switchboard import (
    ACTIVITY_BATCH_MAX,
    AsyncClient,
    Client,
    EmitterConfig,
    EmitterStats,
    pb,
)


def entry(task_id: str, n: int) -> pb.ActivityEntry:
    return pb.ActivityEntry(
        activity_type=pb.ACTIVITY_TYPE_PROGRESS,
        activity=pb.Activity(
            agent_type="agent-pytest",
            agent_name="Pytest Agent",
            task_id=task_id,
            severity=pb.SEVERITY_INFO,
            status=pb.ACTIVITY_STATUS_IN_PROGRESS,
            message=f"step {n}",
        ),
        payload_json=f'{{"step": {n}}}',
    )


def recorded_steps(client: Client, tenant: str, task_id: str) -> list[str]:
    """The messages of the task's records, oldest first (every page)."""
    steps: list[str] = []
    page_token = ""
    while True:
        page = client.query_events(
            pb.QueryEventsRequest(
                tenant_id=tenant, task_id=task_id, page_token=page_token, limit=1000
            )
        )
        steps.extend(e.activity.message for e in page.events)
        page_token = page.next_page_token
        if not page_token:
            return steps


async def test_the_async_emitter_records_everything_in_batches(
    cluster: DevCluster, tenant: str
) -> None:
    task_id = unique("task")
    records = 250
    async with AsyncClient(cluster.config()) as client:
        emitter = client.activity_emitter(EmitterConfig(tenant_id=tenant))
        assert all(emitter.emit(entry(task_id, n)) for n in range(records))
        await emitter.flush()
        assert emitter.stats().sent == records
        stats = await emitter.close()
        assert not emitter.emit(entry(task_id, records)), "a closed emitter takes nothing"
    assert (stats.sent, stats.dropped, stats.failed) == (records, 0, 0)
    assert stats.batches >= -(-records // ACTIVITY_BATCH_MAX)
    with Client(cluster.config()) as reader:
        assert recorded_steps(reader, tenant, task_id) == [f"step {n}" for n in range(records)]


async def test_a_full_buffer_drops_and_counts(cluster: DevCluster, tenant: str) -> None:
    task_id = unique("task")
    async with AsyncClient(cluster.config()) as client:
        emitter = client.activity_emitter(EmitterConfig(tenant_id=tenant, buffer_max=5))
        # Nothing is sent until this coroutine yields: the sixth record on finds a full buffer.
        accepted = [emitter.emit(entry(task_id, n)) for n in range(20)]
        stats = await emitter.close()
    assert accepted == [True] * 5 + [False] * 15
    assert stats == EmitterStats(sent=5, dropped=15, failed=0, batches=1)


def test_the_sync_emitter_records_in_the_background(cluster: DevCluster, tenant: str) -> None:
    task_id = unique("task")
    records = 120
    with Client(cluster.config()) as client:
        config = EmitterConfig(tenant_id=tenant, flush_every=0.05, batch_max=50)
        with client.activity_emitter(config) as emitter:
            for n in range(records):
                assert emitter.emit(entry(task_id, n))
            assert emitter.flush(timeout=30)
            stats = emitter.stats()
        assert (stats.sent, stats.dropped, stats.failed) == (records, 0, 0)
        assert stats.batches >= 3
        assert recorded_steps(client, tenant, task_id) == [f"step {n}" for n in range(records)]


async def test_a_refused_batch_is_counted_as_failed(cluster: DevCluster, tenant: str) -> None:
    async with AsyncClient(cluster.config()) as client:
        emitter = client.activity_emitter(EmitterConfig(tenant_id=tenant))
        emitter.emit(pb.ActivityEntry(activity_type=pb.ACTIVITY_TYPE_PROGRESS))  # no fields
        stats = await asyncio.wait_for(emitter.close(), 30)
    assert (stats.sent, stats.failed, stats.batches) == (0, 1, 1)
