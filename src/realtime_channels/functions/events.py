"""What the server reports to functions, what a gate answers, and the numbers kept for
/metrics.  Plain data: the node and the transport import these without the engine."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any

LATENCY_SAMPLES = 1024


@dataclass(frozen=True, slots=True)
class RealtimeEvent:
    """Something that happened on the server, as the server reports it to ``observe``.

    ``payload``: the broadcast payload, the presence meta, the postgres change's ``data``
    object (schema, table, type, columns, record, old_record …) or the close reason.
    """

    type: str
    topic: str
    event: str | None
    payload: Any
    claims: Mapping[str, Any] | None
    schema: str | None = None
    table: str | None = None


@dataclass(frozen=True, slots=True)
class GateResult:
    allow: bool
    #: sent to the client (protocol error format) when denied; the function's text or ours
    reason: str | None = None
    #: authorize_send: the rewritten payload, or None for "unchanged"
    payload: Any = None


@dataclass(slots=True)
class Stats:
    delivered: int = 0
    retried: int = 0
    failed: int = 0
    errors: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    lags: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))


def percentile(samples: Sequence[float], q: float) -> float:
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def glob_match(pattern: str | None, value: str | None) -> bool:
    """A trigger's or gate's ``topic`` / ``event`` pattern: absent and ``*`` match anything."""
    return pattern is None or pattern == "*" or (value is not None and fnmatchcase(value, pattern))
