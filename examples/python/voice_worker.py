#!/usr/bin/env python3
"""A simulated voice agent: it takes calls, streams their turns into Switchboard, keeps the
call's context up to date, and hands the call off to a human when the caller asks for one.

For each call it creates the call, starts it, and plays a caller script turn by turn: each
caller line and the agent's reply are appended as turns, what the agent learns is written to the
context (summary, entities), and its work is reported as agent activity through the
non-blocking emitter. When the caller says "human" (or "agent", "person", "representative") the
worker requests a handoff and leaves the call to the console (`console.py`); otherwise it ends
the call itself.

    python examples/python/voice_worker.py                 # against scripts/dev
    python examples/python/voice_worker.py --calls 3 --pace 0
"""

from __future__ import annotations

import argparse
import re
import sys
import time

from common import add_cluster_arguments, client_config

from switchboard import ActivityEmitter, Client, EmitterConfig, SwitchboardError, pb

#: What the caller says, line by line, unless --caller lines are given.
DEFAULT_SCRIPT = [
    "Hi, my card was charged twice for the same order",
    "It's the card ending 4242, order 7731",
    "This is the third time, I want to talk to a human",
    "Thanks",
]
HANDOFF_WORDS = re.compile(r"\b(human|agent|person|representative)\b", re.IGNORECASE)
CARD = re.compile(r"card ending (\d{4})")
ORDER = re.compile(r"order (\d+)")


def agent_reply(line: str, entities: dict[str, str]) -> str:
    """The simulated agent's answer to one caller line."""
    if "card" in entities and "order" in entities:
        return f"I can see order {entities['order']} on the card ending {entities['card']}."
    if "charged" in line:
        return "Sorry about that. Which card and order is it?"
    return "Let me look into that."


def activity(kind: pb.ActivityType, call_id: str, message: str) -> pb.ActivityEntry:
    """An activity record of this worker about one call."""
    status = {
        pb.ACTIVITY_TYPE_STARTED: pb.ACTIVITY_STATUS_STARTED,
        pb.ACTIVITY_TYPE_COMPLETED: pb.ACTIVITY_STATUS_COMPLETED,
    }.get(kind, pb.ACTIVITY_STATUS_IN_PROGRESS)
    return pb.ActivityEntry(
        activity_type=kind,
        call_id=call_id,
        activity=pb.Activity(
            agent_type="voice-agent",
            agent_name="Simulated voice agent",
            task_id=f"call-{call_id}",
            severity=pb.SEVERITY_INFO,
            status=status,
            message=message,
        ),
    )


def run_call(
    client: Client, emitter: ActivityEmitter, tenant: str, script: list[str], pace: float
) -> None:
    """Plays one call until the agent hands it off or ends it."""
    created = client.create_call(
        pb.CreateCallRequest(
            tenant_id=tenant,
            source="pstn:+15550100",
            channel=pb.CHANNEL_VOICE,
            metadata={"worker": "voice_worker.py"},
        )
    )
    call_id = created.call.call_id
    print(f"call {call_id} created (log index {created.meta.index})")
    client.start_call(pb.StartCallRequest(tenant_id=tenant, call_id=call_id))
    emitter.emit(activity(pb.ACTIVITY_TYPE_STARTED, call_id, "answering"))
    entities: dict[str, str] = {}
    for line in script:
        turn = client.append_turn(
            pb.AppendTurnRequest(
                tenant_id=tenant,
                call_id=call_id,
                speaker="caller",
                text=line,
                confidence=0.92,
                language="en-US",
                spoken_at_ms=int(time.time() * 1000),
            )
        )
        print(f"  caller #{turn.turn.index}: {line}")
        for name, pattern in (("card", CARD), ("order", ORDER)):
            match = pattern.search(line)
            if match:
                entities[name] = match.group(1)
        if entities:
            client.update_context(
                pb.UpdateContextRequest(
                    tenant_id=tenant,
                    call_id=call_id,
                    summary="caller reports a double charge",
                    entities=entities,
                )
            )
        if HANDOFF_WORDS.search(line):
            handoff = client.request_handoff(
                pb.RequestHandoffRequest(
                    tenant_id=tenant,
                    call_id=call_id,
                    reason="caller asked for a human",
                    urgency=pb.URGENCY_HIGH,
                    target="billing",
                )
            )
            emitter.emit(activity(pb.ACTIVITY_TYPE_COMPLETED, call_id, "handed off"))
            print(f"  handed off at position {handoff.call.handoff.position}")
            return
        reply = agent_reply(line, entities)
        client.append_turn(
            pb.AppendTurnRequest(tenant_id=tenant, call_id=call_id, speaker="agent", text=reply)
        )
        emitter.emit(activity(pb.ACTIVITY_TYPE_PROGRESS, call_id, f"replied: {reply}"))
        print(f"  agent: {reply}")
        time.sleep(pace)
    client.end_call(
        pb.EndCallRequest(
            tenant_id=tenant,
            call_id=call_id,
            reason="caller done",
            resolution="resolved by the voice agent",
        )
    )
    emitter.emit(activity(pb.ACTIVITY_TYPE_COMPLETED, call_id, "ended the call"))
    print("  ended by the agent")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_cluster_arguments(parser)
    parser.add_argument("--calls", type=int, default=1, help="calls to take (default: 1)")
    parser.add_argument(
        "--pace", type=float, default=0.3, help="seconds between turns (default: 0.3)"
    )
    parser.add_argument(
        "--caller",
        action="append",
        metavar="LINE",
        help="a line the caller says (repeat for a script; default: a billing complaint)",
    )
    args = parser.parse_args()
    script = args.caller or DEFAULT_SCRIPT
    try:
        with Client(client_config(args)) as client:
            emitter = client.activity_emitter(EmitterConfig(tenant_id=args.tenant))
            for _ in range(args.calls):
                run_call(client, emitter, args.tenant, script, args.pace)
            stats = emitter.close()
            print(f"activity: {stats.sent} record(s) sent, {stats.dropped} dropped")
    except SwitchboardError as error:
        print(f"voice_worker: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
