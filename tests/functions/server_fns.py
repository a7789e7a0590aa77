"""In-process functions for test_functions_server.py: each reports the event it got on the
``audit`` channel, so a subscriber can see which triggers fired and with what."""

from __future__ import annotations

from typing import Any


async def echo_event(event: dict[str, Any], ctx: Any) -> None:
    body = {"topic": event["topic"], "event": event["event"], "payload": event["payload"],
            "sub": (event.get("claims") or {}).get("sub")}
    ctx.broadcast("audit", event["type"], body)


async def bot_presence(event: dict[str, Any], ctx: Any) -> None:
    """Tracks (or untracks) a bot in the triggering channel's presence, without a socket."""
    if event["payload"].get("leave"):
        ctx.untrack(event["topic"], "bot")
    else:
        ctx.track(event["topic"], "bot", {"bot": True, "for": event["event"]})
