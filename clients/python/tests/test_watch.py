"""Watches on the session's real cluster (the failover of a watch is in test_failover.py)."""

from __future__ import annotations

import asyncio

import pytest

from conftest import DevCluster
from switchboard import AsyncClient, InvalidArgument, NotFound, pb

TIMEOUT = 30.0


async def test_a_watch_from_now_sees_new_events_and_progress(
    cluster: DevCluster, tenant: str
) -> None:
    async with AsyncClient(cluster.config()) as client:
        async with client.watch(
            pb.WatchEventsRequest(tenant_id=tenant, progress_interval_ms=100)
        ) as watch:
            assert watch.resume_from is None
            # The first message (progress: nothing of this tenant yet) pins where it started.
            first = await asyncio.wait_for(watch.next(), TIMEOUT)
            assert not first.events and first.resume_from > 0
            assert watch.resume_from == first.resume_from and watch.node_id == first.node_id

            created = await client.create_call(
                pb.CreateCallRequest(tenant_id=tenant, channel=pb.CHANNEL_CHAT)
            )
            call_id = created.call.call_id
            await client.start_call(pb.StartCallRequest(tenant_id=tenant, call_id=call_id))

            async def two_events() -> list[pb.Event]:
                seen: list[pb.Event] = []
                async for event in watch.events():
                    seen.append(event)
                    if len(seen) == 2:
                        return seen
                raise AssertionError("the watch ended")

            events = await asyncio.wait_for(two_events(), TIMEOUT)
            assert [(e.call_id, e.event_type) for e in events] == [
                (call_id, "call.created"),
                (call_id, "call.started"),
            ]
            assert watch.resume_from == events[-1].position + 1


async def test_a_bad_watch_fails_with_its_typed_error(cluster: DevCluster, tenant: str) -> None:
    async with AsyncClient(cluster.config()) as client:
        too_many = pb.WatchEventsRequest(
            tenant_id=tenant, event_type_prefixes=[f"t{n}." for n in range(17)]
        )
        with pytest.raises(InvalidArgument):
            await asyncio.wait_for(client.watch(too_many).next(), TIMEOUT)
        missing = pb.WatchEventsRequest(
            tenant_id=tenant, call_id="01900000-0000-7000-8000-000000000000"
        )
        with pytest.raises(NotFound):
            await asyncio.wait_for(client.watch(missing).next(), TIMEOUT)
