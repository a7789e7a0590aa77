"""An in-process Python function: answer every `message` with `response`.

Called by the functions engine with the event object (id, type, topic, event, payload, claims,
timestamp) and a context.  Returning ``{"broadcast": {...}}`` publishes into the triggering
channel; ``ctx.broadcast(topic, event, payload)`` can publish anywhere, at any point.
"""

from __future__ import annotations

from typing import Any


def process(payload: Any, claims: dict[str, Any] | None) -> dict[str, Any]:
    """The processing: echo the text back, shouted, with the sender."""
    text = payload.get("text", "") if isinstance(payload, dict) else str(payload)
    sender = (claims or {}).get("sub") or "anonymous"
    return {"reply": str(text).upper(), "to": sender}


async def handle(event: dict[str, Any], ctx: Any) -> dict[str, Any]:
    response = process(event["payload"], event.get("claims"))
    response["in_reply_to"] = event["id"]  # the idempotency key: lets clients drop duplicates
    return {"broadcast": {"event": "response", "payload": response}}
