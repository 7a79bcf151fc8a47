"""Calls through their whole lifecycle on the session's real 3-node cluster, with the sync and
the asyncio client; typed exceptions; idempotent retries; tokens."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import grpc
import pytest

from conftest import DevCluster, unique
from switchboard import (
    AlreadyHandedOff,
    AsyncClient,
    CallEnded,
    Client,
    FailedPrecondition,
    IllegalTransition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Rejected,
    RequestIdReused,
    Unauthenticated,
    UnknownCall,
    pb,
)

CALLER_LINES = ["My card was charged twice", "Yes, the one ending 4242"]
LIFECYCLE_TYPES = [
    "call.created",
    "call.started",
    "turn.appended",
    "turn.appended",
    "billing.lookup",
    "context.updated",
    "call.handed_off",
    "call.ended",
]


def assert_whole_lifecycle(call: pb.Call, events: list[pb.Event]) -> None:
    """The call ended after its handoff, and its events are the lifecycle in order, numbered
    from 1 without gaps."""
    assert call.state == pb.CALL_STATE_ENDED
    assert call.turn_count == len(CALLER_LINES)
    assert call.handoff.reason == "billing dispute"
    assert call.handoff.urgency == pb.URGENCY_HIGH
    assert [t.text for t in call.handoff.snapshot.recent_turns] == CALLER_LINES
    assert call.resolution == "refund issued"
    assert [e.event_type for e in events] == LIFECYCLE_TYPES
    assert [e.sequence_number for e in events] == list(range(1, len(LIFECYCLE_TYPES) + 1))
    positions = [e.position for e in events]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)


def test_a_whole_lifecycle_with_the_sync_client(cluster: DevCluster, tenant: str) -> None:
    with Client(cluster.config()) as client:
        created = client.create_call(
            pb.CreateCallRequest(
                tenant_id=tenant,
                source="pstn:+15550100",
                channel=pb.CHANNEL_VOICE,
                metadata={"lane": "billing"},
            )
        )
        call_id = created.call.call_id
        assert created.call.state == pb.CALL_STATE_CREATED
        assert created.meta.index > 0 and created.meta.leader_id > 0
        client.start_call(pb.StartCallRequest(tenant_id=tenant, call_id=call_id))
        for index, text in enumerate(CALLER_LINES, start=1):
            turn = client.append_turn(
                pb.AppendTurnRequest(
                    tenant_id=tenant, call_id=call_id, speaker="caller", text=text, confidence=0.9
                )
            )
            assert turn.turn.index == index
        logged = client.log_event(
            pb.LogEventRequest(
                tenant_id=tenant,
                call_id=call_id,
                event_type="billing.lookup",
                payload_json='{"found": true}',
            )
        )
        assert logged.event.payload_json == '{"found": true}'
        client.update_context(
            pb.UpdateContextRequest(
                tenant_id=tenant, call_id=call_id, summary="double charge", entities={"k": "v"}
            )
        )
        handed_off = client.request_handoff(
            pb.RequestHandoffRequest(
                tenant_id=tenant,
                call_id=call_id,
                reason="billing dispute",
                urgency=pb.URGENCY_HIGH,
                target="billing",
            )
        )
        assert handed_off.call.state == pb.CALL_STATE_HANDED_OFF
        context = client.get_context(pb.GetContextRequest(tenant_id=tenant, call_id=call_id))
        assert context.summary == "double charge" and context.handoff.target == "billing"
        ended = client.end_call(
            pb.EndCallRequest(
                tenant_id=tenant, call_id=call_id, reason="resolved", resolution="refund issued"
            )
        )
        # Any node serves a local read once it has applied the end (read-your-writes).
        call = client.get_call(
            pb.GetCallRequest(
                tenant_id=tenant,
                call_id=call_id,
                read=pb.ReadOptions(consistency=pb.CONSISTENCY_LOCAL, min_index=ended.meta.index),
            )
        ).call
        events = client.list_call_events(
            pb.ListCallEventsRequest(tenant_id=tenant, call_id=call_id)
        ).events
        assert_whole_lifecycle(call, list(events))
        listed = client.list_calls(pb.ListCallsRequest(tenant_id=tenant)).calls
        assert [c.call_id for c in listed] == [call_id]


async def test_a_whole_lifecycle_with_the_async_client(cluster: DevCluster, tenant: str) -> None:
    async with AsyncClient(cluster.config()) as client:
        created = await client.create_call(
            pb.CreateCallRequest(tenant_id=tenant, channel=pb.CHANNEL_CHAT)
        )
        call_id = created.call.call_id
        await client.start_call(pb.StartCallRequest(tenant_id=tenant, call_id=call_id))
        for text in CALLER_LINES:
            await client.append_turn(
                pb.AppendTurnRequest(tenant_id=tenant, call_id=call_id, speaker="caller", text=text)
            )
        await client.log_event(
            pb.LogEventRequest(tenant_id=tenant, call_id=call_id, event_type="billing.lookup")
        )
        await client.update_context(
            pb.UpdateContextRequest(tenant_id=tenant, call_id=call_id, summary="double charge")
        )
        await client.request_handoff(
            pb.RequestHandoffRequest(
                tenant_id=tenant,
                call_id=call_id,
                reason="billing dispute",
                urgency=pb.URGENCY_HIGH,
            )
        )
        ended = await client.end_call(
            pb.EndCallRequest(
                tenant_id=tenant, call_id=call_id, reason="resolved", resolution="refund issued"
            )
        )
        turns = await client.list_turns(pb.ListTurnsRequest(tenant_id=tenant, call_id=call_id))
        assert [t.text for t in turns.turns] == CALLER_LINES
        events = await client.list_call_events(
            pb.ListCallEventsRequest(tenant_id=tenant, call_id=call_id)
        )
        assert_whole_lifecycle(ended.call, list(events.events))


def test_refused_transitions_raise_their_typed_exception(cluster: DevCluster, tenant: str) -> None:
    with Client(cluster.config()) as client:
        call_id = client.create_call(
            pb.CreateCallRequest(tenant_id=tenant, channel=pb.CHANNEL_VOICE)
        ).call.call_id
        with pytest.raises(IllegalTransition) as illegal:
            client.request_handoff(
                pb.RequestHandoffRequest(tenant_id=tenant, call_id=call_id, reason="too early")
            )
        assert illegal.value.code == grpc.StatusCode.FAILED_PRECONDITION
        client.start_call(pb.StartCallRequest(tenant_id=tenant, call_id=call_id))
        handoff = pb.RequestHandoffRequest(tenant_id=tenant, call_id=call_id, reason="first")
        first = client.request_handoff(handoff)
        with pytest.raises(AlreadyHandedOff) as again:
            client.request_handoff(
                pb.RequestHandoffRequest(tenant_id=tenant, call_id=call_id, reason="second")
            )
        error = again.value
        assert isinstance(error, Rejected) and isinstance(error, FailedPrecondition)
        assert error.kind == "AlreadyHandedOff"
        assert error.code == grpc.StatusCode.FAILED_PRECONDITION
        assert str(first.call.handoff.position) in error.message
        assert error.request_id and error.op == "request_handoff" and error.attempts == 1

        client.end_call(pb.EndCallRequest(tenant_id=tenant, call_id=call_id, reason="done"))
        ended_writes: list[Callable[[], object]] = [
            lambda: client.append_turn(
                pb.AppendTurnRequest(tenant_id=tenant, call_id=call_id, speaker="caller", text="hi")
            ),
            lambda: client.log_event(
                pb.LogEventRequest(tenant_id=tenant, call_id=call_id, event_type="late.event")
            ),
            lambda: client.end_call(
                pb.EndCallRequest(tenant_id=tenant, call_id=call_id, reason="twice")
            ),
        ]
        for write in ended_writes:
            with pytest.raises(CallEnded) as ended:
                write()
            assert ended.value.kind == "CallEnded"

        missing = "01900000-0000-7000-8000-000000000000"
        with pytest.raises(UnknownCall) as unknown:
            client.start_call(pb.StartCallRequest(tenant_id=tenant, call_id=missing))
        assert isinstance(unknown.value, NotFound)
        with pytest.raises(NotFound) as not_found:
            client.get_call(pb.GetCallRequest(tenant_id=tenant, call_id=missing))
        assert not isinstance(not_found.value, Rejected)
        with pytest.raises(InvalidArgument):
            client.create_call(pb.CreateCallRequest(tenant_id=tenant))  # no channel


def test_a_retry_with_the_same_request_id_answers_the_original_outcome(
    cluster: DevCluster, tenant: str
) -> None:
    with Client(cluster.config()) as client:
        create = pb.CreateCallRequest(
            tenant_id=tenant, request_id=unique("create"), channel=pb.CHANNEL_VOICE
        )
        first = client.create_call(create)
        retried = client.create_call(create)
        assert retried.call.call_id == first.call.call_id
        assert retried.meta.index == first.meta.index
        assert (first.meta.replayed, retried.meta.replayed) == (False, True)
        calls = client.list_calls(pb.ListCallsRequest(tenant_id=tenant)).calls
        assert len(calls) == 1

        call_id = first.call.call_id
        client.start_call(pb.StartCallRequest(tenant_id=tenant, call_id=call_id))
        turn = pb.AppendTurnRequest(
            tenant_id=tenant, call_id=call_id, request_id=unique("turn"), speaker="caller", text="a"
        )
        assert client.append_turn(turn).turn.index == 1
        assert client.append_turn(turn).turn.index == 1
        # A rejection is an outcome too: the retry of a refused handoff is refused the same way,
        # even after the call has moved on.
        client.request_handoff(
            pb.RequestHandoffRequest(tenant_id=tenant, call_id=call_id, reason="one")
        )
        refused = pb.RequestHandoffRequest(
            tenant_id=tenant, call_id=call_id, request_id=unique("handoff"), reason="two"
        )
        for _ in range(2):
            with pytest.raises(AlreadyHandedOff):
                client.request_handoff(refused)
        with pytest.raises(RequestIdReused):
            client.append_turn(
                pb.AppendTurnRequest(
                    tenant_id=tenant,
                    call_id=call_id,
                    request_id=turn.request_id,
                    speaker="caller",
                    text="something else",
                )
            )
        call = client.get_call(pb.GetCallRequest(tenant_id=tenant, call_id=call_id)).call
        assert call.turn_count == 1


def test_tokens_are_required_and_their_role_is_enforced(cluster: DevCluster, tenant: str) -> None:
    create = pb.CreateCallRequest(tenant_id=tenant, channel=pb.CHANNEL_VOICE)
    anonymous = dataclasses.replace(cluster.config(), token=None)
    with Client(anonymous) as client, pytest.raises(Unauthenticated):
        client.create_call(create)
    viewer = cluster.config(token=cluster.issue_token(tenant, "viewer"))
    with Client(viewer) as client:
        with pytest.raises(PermissionDenied):
            client.create_call(create)
        assert not client.list_calls(pb.ListCallsRequest(tenant_id=tenant)).calls
    agent = cluster.config(token=cluster.issue_token(tenant, "agent"))
    with Client(agent) as client:
        assert client.create_call(create).call.tenant_id == tenant
        with pytest.raises(PermissionDenied):
            client.create_call(
                pb.CreateCallRequest(tenant_id=unique("other"), channel=pb.CHANNEL_VOICE)
            )
