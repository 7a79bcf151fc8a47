"""Node failures on the session's real cluster: the leader SIGKILLed in the middle of a call's
lifecycle, and the node serving a watch SIGKILLed mid-stream. `switchboard dev` restarts a
killed node after 3 s; each test waits for the cluster to be whole again before it ends."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from conftest import DevCluster, new_voice_call
from switchboard import AsyncClient, Client, pb

WATCH_TIMEOUT = 60.0


@pytest.fixture
def healed(cluster: DevCluster) -> Iterator[DevCluster]:
    """The cluster, made whole again after the test (whatever it killed)."""
    yield cluster
    cluster.wait_healthy()


def test_a_lifecycle_survives_a_leader_kill(healed: DevCluster, tenant: str) -> None:
    cluster = healed
    with Client(cluster.config()) as client:
        call_id = client.create_call(
            pb.CreateCallRequest(tenant_id=tenant, channel=pb.CHANNEL_VOICE)
        ).call.call_id
        client.start_call(pb.StartCallRequest(tenant_id=tenant, call_id=call_id))
        client.append_turn(
            pb.AppendTurnRequest(tenant_id=tenant, call_id=call_id, speaker="caller", text="hi")
        )
        old_leader = cluster.leader_id()
        assert client.leader is not None and client.leader.id == old_leader

        cluster.kill_node(old_leader)

        # The client finds the new leader by itself, following redirects and skipping the dead
        # node; nothing is lost or written twice.
        turn = client.append_turn(
            pb.AppendTurnRequest(
                tenant_id=tenant, call_id=call_id, speaker="agent", text="still here"
            )
        )
        assert turn.turn.index == 2
        assert turn.meta.leader_id != old_leader
        assert client.leader is not None and client.leader.id == turn.meta.leader_id
        client.request_handoff(
            pb.RequestHandoffRequest(tenant_id=tenant, call_id=call_id, reason="after the kill")
        )
        ended = client.end_call(pb.EndCallRequest(tenant_id=tenant, call_id=call_id, reason="done"))
        events = client.list_call_events(
            pb.ListCallEventsRequest(tenant_id=tenant, call_id=call_id)
        ).events
        assert [e.event_type for e in events] == [
            "call.created",
            "call.started",
            "turn.appended",
            "turn.appended",
            "call.handed_off",
            "call.ended",
        ]

    # The killed node comes back, catches up and serves the ended call.
    cluster.wait_healthy()
    restarted = cluster.config(endpoints=[cluster.addr(old_leader)])
    with Client(restarted) as client:
        read = client.get_call(
            pb.GetCallRequest(
                tenant_id=tenant,
                call_id=call_id,
                read=pb.ReadOptions(consistency=pb.CONSISTENCY_LOCAL, min_index=ended.meta.index),
            )
        )
        assert read.meta.node_id == old_leader
        assert read.call.state == pb.CALL_STATE_ENDED


async def test_writes_in_flight_during_a_leader_kill_apply_once(
    healed: DevCluster, tenant: str
) -> None:
    """Appends run back to back while the leader dies: each is retried with its request id until
    it lands, and the turns come out numbered 1..N with no repeats."""
    cluster = healed
    turns = 30
    async with AsyncClient(cluster.config()) as client:
        call_id = await new_voice_call(client, tenant)
        await client.start_call(pb.StartCallRequest(tenant_id=tenant, call_id=call_id))
        old_leader = cluster.leader_id()
        written: list[int] = []

        async def writer() -> None:
            for n in range(turns):
                response = await client.append_turn(
                    pb.AppendTurnRequest(
                        tenant_id=tenant, call_id=call_id, speaker="caller", text=f"line {n}"
                    )
                )
                written.append(response.turn.index)

        task = asyncio.create_task(writer())
        while len(written) < turns // 3 and not task.done():
            await asyncio.sleep(0.01)
        await asyncio.to_thread(cluster.kill_node, old_leader)
        await asyncio.wait_for(task, 60)

        assert written == list(range(1, turns + 1))
        listed = await client.list_turns(
            pb.ListTurnsRequest(tenant_id=tenant, call_id=call_id, limit=1000)
        )
        assert [t.text for t in listed.turns] == [f"line {n}" for n in range(turns)]


async def test_a_watch_survives_the_kill_of_the_node_it_reads_from(
    healed: DevCluster, tenant: str
) -> None:
    """A watch of one call, from its first event, while turns are written: its node is killed
    mid-stream, and the watch resumes on another node with every event once, in order."""
    cluster = healed
    turns = 40
    async with AsyncClient(cluster.config()) as client:
        call_id = await new_voice_call(client, tenant)
        watch = client.watch(
            pb.WatchEventsRequest(
                tenant_id=tenant, call_id=call_id, from_position=1, progress_interval_ms=200
            )
        )

        async def lifecycle() -> None:
            await client.start_call(pb.StartCallRequest(tenant_id=tenant, call_id=call_id))
            for n in range(turns):
                await client.append_turn(
                    pb.AppendTurnRequest(
                        tenant_id=tenant, call_id=call_id, speaker="caller", text=f"line {n}"
                    )
                )
                await asyncio.sleep(0.05)
            await client.end_call(
                pb.EndCallRequest(tenant_id=tenant, call_id=call_id, reason="done")
            )

        async def consume() -> tuple[list[pb.Event], int, set[int]]:
            events: list[pb.Event] = []
            after_kill: set[int] = set()
            killed: int | None = None
            async for message in watch:
                if killed is not None:
                    after_kill.add(message.node_id)
                events.extend(message.events)
                if killed is None and len(events) >= 5:
                    killed = message.node_id
                    await asyncio.to_thread(cluster.kill_node, killed)
                if killed is not None and events and events[-1].event_type == "call.ended":
                    return events, killed, after_kill
            raise AssertionError("the watch ended")

        writer = asyncio.create_task(lifecycle())
        try:
            events, killed, after_kill = await asyncio.wait_for(consume(), WATCH_TIMEOUT)
            await asyncio.wait_for(writer, WATCH_TIMEOUT)
        finally:
            writer.cancel()
            await watch.aclose()

        expected = ["call.created", "call.started"] + ["turn.appended"] * turns + ["call.ended"]
        assert [e.event_type for e in events] == expected
        assert [e.sequence_number for e in events] == list(range(1, len(expected) + 1))
        positions = [e.position for e in events]
        assert positions == sorted(set(positions)), "no repeats, in order"
        assert watch.resumed >= 1
        assert after_kill - {killed}, f"served by {after_kill} after node {killed} was killed"
