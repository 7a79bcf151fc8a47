#!/usr/bin/env python3
"""A human agent's console: it watches a tenant's handoffs as they commit and lets the human
accept each one and end the call.

It follows `call.handed_off` events with a resumable watch (which moves to another node, from
its last checkpoint, if the one it reads from fails). For each handoff it shows the context the
voice agent left (summary, entities, last turns, reason), then, once accepted, records the
acceptance as an event, speaks as the human, and ends the call. A call someone else has ended
meanwhile is skipped.

    python examples/python/console.py                      # asks before taking each call
    python examples/python/console.py --auto --handoffs 1  # takes one call, then exits
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from common import add_cluster_arguments, client_config

from switchboard import AsyncClient, CallEnded, SwitchboardError, pb


async def show_context(client: AsyncClient, tenant: str, call_id: str) -> None:
    context = await client.get_context(
        pb.GetContextRequest(tenant_id=tenant, call_id=call_id, last_turns=5)
    )
    handoff = context.handoff
    print(f"\nhandoff of call {call_id}: {handoff.reason!r} ({pb.Urgency.Name(handoff.urgency)})")
    print(f"  summary:  {context.summary or '-'}")
    print(f"  entities: {dict(context.entities) or '-'}")
    for turn in context.recent_turns:
        print(f"  {turn.speaker:>7}: {turn.text}")


async def take_call(client: AsyncClient, tenant: str, call_id: str, operator: str) -> None:
    """Accepts the handoff (an event and a first human turn), then ends the call."""
    await client.log_event(
        pb.LogEventRequest(
            tenant_id=tenant,
            call_id=call_id,
            event_type="console.accepted",
            payload_json=json.dumps({"operator": operator}),
            metadata={"operator": operator},
        )
    )
    await client.append_turn(
        pb.AppendTurnRequest(
            tenant_id=tenant,
            call_id=call_id,
            speaker="human",
            text=f"Hi, this is {operator}. I have your details, let me sort this out.",
        )
    )
    ended = await client.end_call(
        pb.EndCallRequest(
            tenant_id=tenant,
            call_id=call_id,
            reason="handled by a human",
            resolution=f"resolved by {operator}",
        )
    )
    print(f"  accepted by {operator} and ended (log index {ended.meta.index})")


async def confirm(question: str) -> bool:
    answer = await asyncio.to_thread(input, question)
    return answer.strip().lower() in ("", "y", "yes")


async def run(args: argparse.Namespace) -> None:
    request = pb.WatchEventsRequest(tenant_id=args.tenant, event_type_prefixes=["call.handed_off"])
    if args.from_position is not None:
        request.from_position = args.from_position
    async with AsyncClient(client_config(args)) as client:
        taken = 0
        print(f"watching tenant {args.tenant!r} for handoffs (Ctrl-C to stop)")
        async with client.watch(request) as watch:
            async for event in watch.events():
                await show_context(client, args.tenant, event.call_id)
                if not args.auto and not await confirm("  take this call? [Y/n] "):
                    print("  left for someone else")
                    continue
                try:
                    await take_call(client, args.tenant, event.call_id, args.operator)
                except CallEnded:
                    print("  the call has already ended")
                taken += 1
                if args.handoffs and taken >= args.handoffs:
                    print(f"handled {taken} handoff(s); checkpoint: position {watch.resume_from}")
                    return


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_cluster_arguments(parser)
    parser.add_argument("--operator", default="Sam", help="the human's name (default: Sam)")
    parser.add_argument("--auto", action="store_true", help="take every handoff without asking")
    parser.add_argument(
        "--handoffs", type=int, default=0, help="exit after this many handoffs (default: never)"
    )
    parser.add_argument(
        "--from",
        dest="from_position",
        type=int,
        help="replay handoffs from this event position (default: from now on)",
    )
    args = parser.parse_args()
    try:
        asyncio.run(run(args))
    except SwitchboardError as error:
        print(f"console: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
