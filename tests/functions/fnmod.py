"""In-process Python functions used by the tests (``python = "fnmod:<name>"``).

Module state lets a test steer and observe them; the autouse fixture calls ``reset``.
"""

from __future__ import annotations

import asyncio
from typing import Any

calls: list[dict[str, Any]] = []
#: event id -> times called
attempts: dict[str, int] = {}
#: fail this many times per event id before succeeding
fail_times = 0
in_flight = 0
max_in_flight = 0
release: asyncio.Event | None = None
gate_calls: list[dict[str, Any]] = []


def reset() -> None:
    global fail_times, in_flight, max_in_flight, release
    calls.clear()
    attempts.clear()
    gate_calls.clear()
    fail_times = 0
    in_flight = 0
    max_in_flight = 0
    release = None


def _count(event: dict[str, Any]) -> int:
    attempts[event["id"]] = attempts.get(event["id"], 0) + 1
    return attempts[event["id"]]


async def respond(event: dict[str, Any], ctx: Any) -> Any:
    """The worked example: answer `message` with `response` on the same topic."""
    calls.append(event)
    return {"broadcast": {"event": "response", "payload": {"echo": event["payload"], "id": ctx.event_id}}}


async def respond_elsewhere(event: dict[str, Any], ctx: Any) -> Any:
    """Publishes through the context and through a reply aimed at another topic."""
    calls.append(event)
    ctx.broadcast("realtime:audit", "seen", {"id": event["id"], "trigger": ctx.trigger})
    return {"broadcast": [{"event": "a", "payload": 1, "topic": "other"}, {"event": "b", "payload": 2}]}


async def record(event: dict[str, Any], ctx: Any) -> None:
    calls.append(event)


async def flaky(event: dict[str, Any], ctx: Any) -> Any:
    """Raises ``fail_times`` times per event, then answers."""
    n = _count(event)
    if n <= fail_times:
        raise RuntimeError(f"flaky failure {n}")
    calls.append(event)
    return {"broadcast": {"event": "ok", "payload": event["payload"]}}


async def mutate(event: dict[str, Any], ctx: Any) -> None:
    """Changes its copy of the event and fails once: a retry must still see the original."""
    n = _count(event)
    calls.append(dict(event))
    event["payload"] = "tampered"
    if n == 1:
        raise ValueError("first attempt fails")


async def blocking(event: dict[str, Any], ctx: Any) -> None:
    """Holds its slot until the test sets ``release``; records the peak concurrency."""
    global in_flight, max_in_flight
    in_flight += 1
    max_in_flight = max(max_in_flight, in_flight)
    try:
        assert release is not None
        await release.wait()
        calls.append(event)
    finally:
        in_flight -= 1


async def never(event: dict[str, Any], ctx: Any) -> None:
    """Never finishes (until cancelled by the engine's timeout)."""
    _count(event)
    await asyncio.Event().wait()


# gates -------------------------------------------------------------------------------------


async def deny_gate(event: dict[str, Any], ctx: Any) -> Any:
    gate_calls.append(event)
    if (event.get("claims") or {}).get("role") == "admin":
        return {"allow": True}
    return {"allow": False, "reason": f"not allowed on {event['topic']}"}


async def rewrite_gate(event: dict[str, Any], ctx: Any) -> Any:
    gate_calls.append(event)
    payload = dict(event["payload"])
    payload["text"] = str(payload.get("text", "")).replace("darn", "****")
    return {"allow": True, "payload": payload}


async def tag_gate(event: dict[str, Any], ctx: Any) -> Any:
    gate_calls.append(event)
    return {"allow": True, "payload": {**event["payload"], "tagged": True}}


async def slow_gate(event: dict[str, Any], ctx: Any) -> Any:
    gate_calls.append(event)
    await asyncio.Event().wait()
    return {"allow": True}


async def garbage_gate(event: dict[str, Any], ctx: Any) -> Any:
    gate_calls.append(event)
    return "yes please"


async def raising_gate(event: dict[str, Any], ctx: Any) -> Any:
    gate_calls.append(event)
    raise RuntimeError("gate exploded")


def not_async(event: dict[str, Any], ctx: Any) -> None:
    """Not a valid target: the config must refuse it."""
