"""WebSocket upgrade rules (protocol.md §1.2–§1.4), sans-I/O.

The adapter hands over what it read from the upgrade request; these functions say whether to
go on and, if not, the exact refusal: HTTP status and body.  Verifying the API key's signature
and consulting the tenant's limits are steps of their own (the first may need I/O for a JWKS
refresh), each with a function that turns its outcome into a refusal.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import errors
from .codec import Vsn, parse_vsn
from .limits import TenantLimits


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused upgrade: ``body`` is ``None`` for an empty body, else the JSON object sent.
    ``reason`` is what the server log says about it; ``paced`` refusals are delayed by the
    connect-error back-off (§1.4) to slow reconnect storms."""

    status: int
    body: Mapping[str, Any] | None
    reason: str
    paced: bool = True


@dataclass(frozen=True, slots=True)
class Upgrade:
    """What an acceptable upgrade request asks for: its wire format and API key."""

    vsn: Vsn
    api_key: str


def check_request(method: str, vsn: str | None, headers: Mapping[str, str],
                  query: Mapping[str, str]) -> Upgrade | Refusal:
    """§1.2: ``vsn`` 1.0.0 (the default) or 2.0.0, anything else 403 with an empty body;
    §1.3: the API key is the ``x-api-key`` header, else the ``apikey`` query parameter."""
    if method != "GET":
        return Refusal(400, None, f"method {method} is not GET", paced=False)
    parsed = parse_vsn(vsn)
    if parsed is None:
        return Refusal(403, None, f"unsupported vsn {vsn!r}")
    api_key = headers.get("x-api-key") or query.get("apikey")
    if not api_key:
        return refusal(errors.ApiKeyMissing())
    return Upgrade(parsed, api_key)


def refusal(err: errors.RealtimeError) -> Refusal:
    """§1.4: a refused API key (or any error) as its status and ``{"error": …}`` body."""
    return Refusal(err.http_status, {"error": err.handshake_error}, f"{type(err).__name__}: {err.message}")


def check_limits(limits: TenantLimits, now: float) -> Refusal | None:
    """§1.4, §8: the tenant's concurrent users and joins per second, counted cluster-wide."""
    if limits.users_full():
        return refusal(errors.ConnectionRateLimitReached())
    if limits.joins_exceeded(now):
        return refusal(errors.ClientJoinRateLimitReached())
    return None
