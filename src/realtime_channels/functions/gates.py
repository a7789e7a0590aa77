"""``authorize_join`` / ``authorize_send`` gates: run inline with the gate's deadline; an
error, timeout or unreadable reply resolves to the gate's ``fail_open`` setting."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from .. import errors
from .config import Gate
from .events import GateResult, Stats, glob_match, now_iso, percentile
from .targets import Invoker, Outcome

log = logging.getLogger("realtime_channels.functions.engine")

class GateRunner:
    def __init__(self, gates: Sequence[Gate], invoker: Invoker) -> None:
        self.invoker = invoker
        self._by_kind: dict[str, list[Gate]] = {}
        for gate in gates:
            self._by_kind.setdefault(gate.kind, []).append(gate)
        self.stats: dict[str, Stats] = {gate.name: Stats() for gate in gates}

    def has_gate(self, kind: str, sub_topic: str, event: str | None = None) -> bool:
        """True when a gate of ``kind`` applies (lets the caller skip an await on the hot path)."""
        gates = self._by_kind.get(kind, ())
        return any(glob_match(g.topic, sub_topic) and glob_match(g.event, event) for g in gates)

    async def gate_join(self, sub_topic: str, claims: Mapping[str, Any], config: Mapping[str, Any]) -> GateResult:
        for g in self._by_kind.get("authorize_join", ()):
            if glob_match(g.topic, sub_topic):
                res = await self._run(g, sub_topic, None, dict(config), claims)
                if not res.allow:
                    return res
        return GateResult(True)

    async def gate_send(self, sub_topic: str, event: str, payload: Any, claims: Mapping[str, Any]) -> GateResult:
        """Gates run in config order; each sees the payload as the previous one rewrote it."""
        rewritten: Any = None
        for g in self._by_kind.get("authorize_send", ()):
            if glob_match(g.topic, sub_topic) and glob_match(g.event, event):
                current = payload if rewritten is None else rewritten
                res = await self._run(g, sub_topic, event, current, claims)
                if not res.allow:
                    return res
                if res.payload is not None:
                    rewritten = res.payload
        return GateResult(True, payload=rewritten)

    async def _run(self, g: Gate, sub_topic: str, event: str | None, payload: Any,
                   claims: Mapping[str, Any]) -> GateResult:
        msg_id = str(uuid.uuid4())
        body = {"id": msg_id, "type": g.kind, "gate": g.name, "topic": sub_topic, "event": event,
                "payload": payload, "claims": dict(claims), "timestamp": now_iso()}
        stats = self.stats[g.name]
        started = time.monotonic()
        try:
            # The Python target enforces the timeout itself; the outer bound also covers the HTTP
            # session's connection set-up.
            outcome = await asyncio.wait_for(
                self.invoker.call(trigger=g.name, url=g.url, handler=g.handler, event=body, timeout=g.timeout),
                g.timeout + 0.05)
        except TimeoutError:
            outcome = Outcome(False, error=f"timed out after {g.timeout:g}s")
        except Exception as exc:  # noqa: BLE001 - resolved by fail_open below
            outcome = Outcome(False, error=f"{type(exc).__name__}: {exc}")
        stats.latencies.append((time.monotonic() - started) * 1000)
        reply = outcome.reply if outcome.ok else None
        if isinstance(reply, Mapping) and isinstance(reply.get("allow"), bool):
            if not reply["allow"]:
                stats.failed += 1
                reason = reply.get("reason")
                return GateResult(False, reason=reason if isinstance(reason, str) and reason else errors.FunctionDenied.message)
            stats.delivered += 1
            rewritten = reply.get("payload") if g.kind == "authorize_send" else None
            return GateResult(True, payload=rewritten)
        stats.errors += 1
        error = outcome.error if not outcome.ok else "reply without a boolean `allow`"
        log.warning("functions: gate %s (%s on %s), request %s: %s; failing %s", g.name, g.kind, sub_topic,
                    msg_id, error, "open" if g.fail_open else "closed")
        if g.fail_open:
            stats.delivered += 1
            return GateResult(True)
        stats.failed += 1
        return GateResult(False, reason=errors.FunctionUnavailable.message)

    def metrics(self) -> dict[str, dict[str, float]]:
        """Per gate, as ``gate:<name>``: allowed as ``delivered``, denials as ``failed``,
        unusable replies as ``errors``, and call latency percentiles in ms."""
        return {
            f"gate:{name}": {
                "delivered": s.delivered, "failed": s.failed, "errors": s.errors,
                "latency_p50_ms": percentile(s.latencies, 0.5), "latency_p99_ms": percentile(s.latencies, 0.99),
            }
            for name, s in self.stats.items()
        }  # fmt: skip
