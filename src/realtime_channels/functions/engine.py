"""The functions engine (GitHub issue #6): realtime events in, function calls out.

Theory of operation
-------------------
* **Matching** (``observe``): the server reports every realtime event it wants functions to see
  as a :class:`RealtimeEvent`.  Triggers are indexed by their ``on`` value; each match becomes a
  :class:`~.store.Delivery` with its own uuid4 ``id`` (the idempotency key, sent as
  ``webhook-id`` and kept across retries, restarts and replays).  ``observe`` never awaits,
  never raises and does no I/O, so fan-out to clients is never slowed by a function.
* **Lanes**: deliveries wait in a FIFO per (trigger, topic).  One task per non-empty lane sends
  the head, and only after it succeeds or is dead-lettered does the next one go: order per topic
  holds under retries, and a failing head blocks only its own topic.  A per-trigger semaphore
  caps the attempts in flight across all of the trigger's topics.
* **Retries**: timeouts, connection errors, 408, 429, 5xx and exceptions raised by Python
  functions are retried after ``backoff_base * 2**(attempt-1)`` seconds (capped at
  ``backoff_max``, 20 % jitter, a longer ``Retry-After`` honoured up to the cap).  Other 4xx
  and 3xx replies, and a head that used up ``max_attempts``, go to the dead-letter list with the
  last error; ``dlq_replay`` puts them back with their ``id`` unchanged.
* **Durability**: with a ``database_url`` every delivery is a row of
  ``realtime.rc_function_events`` (store.py) before it is attempted; a writer task batches the
  inserts so ``observe`` stays synchronous.  Success deletes the row, a retry updates it, a dead
  letter flags it.  ``start`` reloads unfinished rows in insertion order, so a restart loses
  nothing that reached the table (``stop`` flushes the writer first).  Without a database all of
  this lives in memory and is lost with the process.  Several servers may share the database:
  each owns the rows it inserted, and the rows of a server that is gone are adopted by a live
  one (store.py, "Ownership").
* **Replies**: ``{"broadcast": {"event", "payload", "topic"?}}`` (or a list of those) from an HTTP
  body or a Python return value is published with ``publish``; anything else does nothing.
* **Gates** (``gate_join`` / ``gate_send``) run inline with the gate's deadline; an error,
  timeout or unreadable reply resolves to the gate's ``fail_open`` setting.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any

import orjson

from .. import errors
from ..cdc.filters import FilterError, TypedCondition, matches, validate
from .config import FunctionsConfig, Gate, Trigger
from .signing import parse_secret
from .store import Delivery, PgStore
from .targets import Invoker, Outcome, Presence, dumps, strip_prefix

__all__ = ["FunctionsEngine", "GateResult", "RealtimeEvent"]

log = logging.getLogger(__name__)

_LATENCY_SAMPLES = 1024
_WRITE_BATCH = 500
#: How long ``stop`` waits for the writer to persist what ``observe`` accepted.
_FLUSH_SECONDS = 5.0
_STORE_RETRY_SECONDS = 1.0


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
class _Stats:
    delivered: int = 0
    retried: int = 0
    failed: int = 0
    errors: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=_LATENCY_SAMPLES))
    lags: deque[float] = field(default_factory=lambda: deque(maxlen=_LATENCY_SAMPLES))


def _percentile(samples: Sequence[float], q: float) -> float:
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _TriggerState:
    """A trigger's lanes, concurrency limit and numbers."""

    def __init__(self, trigger: Trigger) -> None:
        self.trigger = trigger
        self.sem = asyncio.Semaphore(trigger.concurrency)
        self.lanes: dict[str, deque[Delivery]] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.stats = _Stats()
        self.writing = 0  # accepted by observe, not yet persisted (durable mode)
        #: postgres filters validated per column set: conditions, or None when they do not apply
        self.typed: dict[tuple[tuple[str, str], ...], tuple[TypedCondition, ...] | None] = {}

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self.lanes.values()) + self.writing


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _glob(pattern: str | None, value: str | None) -> bool:
    return pattern is None or pattern == "*" or (value is not None and fnmatchcase(value, pattern))


class FunctionsEngine:
    def __init__(self, config: FunctionsConfig, *, secret: str | None, service_role_key: str | None,
                 publish: Callable[[str, str, Any], None], database_url: str | None = None,
                 presence: Presence | None = None) -> None:
        self.config = config
        self._publish_fn = publish
        key = parse_secret(secret) if secret else None
        if key is None and (any(t.url for t in config.triggers) or any(g.url for g in config.gates)):
            log.warning("REALTIME_FUNCTIONS_SECRET is not set: HTTP functions receive unsigned events")
        self.invoker = Invoker(key, service_role_key, self._publish, presence)
        self.store = PgStore(database_url, owner=uuid.uuid4().hex) if database_url else None
        self.states = {t.name: _TriggerState(t) for t in config.triggers}
        self._by_on: dict[str, list[_TriggerState]] = {}
        for st in self.states.values():
            self._by_on.setdefault(st.trigger.on, []).append(st)
        self._gates: dict[str, list[Gate]] = {}
        for g in config.gates:
            self._gates.setdefault(g.kind, []).append(g)
        self._gate_stats: dict[str, _Stats] = {g.name: _Stats() for g in config.gates}
        self._dlq: OrderedDict[str, Delivery] = OrderedDict()
        self._pending: list[tuple[_TriggerState, Delivery, bool]] = []  # (state, delivery, dead)
        self._wake = asyncio.Event()
        self._background: list[asyncio.Task[None]] = []
        self._stopped = False
        self._publishing = False
        #: completed polls of the durable queue (lets tests wait for one without a clock)
        self.polls = 0

    # lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.store is not None:
            await self.store.setup()
            await self.store.hold_ownership()
            await self._adopt(await self.store.adopt())
            self._background.append(asyncio.create_task(self._writer(), name="functions-writer"))
            self._background.append(asyncio.create_task(self._poller(), name="functions-poller"))
        log.info("functions: %d trigger(s), %d gate(s), %s queue", len(self.states), len(self.config.gates),
                 "durable" if self.store is not None else "in-memory")

    async def stop(self) -> None:
        self._stopped = True
        if self.store is not None and self._pending:
            self._wake.set()
            deadline = time.monotonic() + _FLUSH_SECONDS
            while self._pending and time.monotonic() < deadline and any(not t.done() for t in self._background):
                await asyncio.sleep(0.01)  # bounded wait for the writer's last batch
            if self._pending:
                log.error("functions: %d accepted event(s) could not be persisted before stopping",
                          len(self._pending))
        tasks = list(self._background)
        lost = 0
        for st in self.states.values():
            tasks.extend(st.tasks.values())
            if self.store is None:
                lost += sum(len(q) for q in st.lanes.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if lost:
            log.warning("functions: %d queued delivery(ies) dropped at stop (in-memory queue)", lost)
        await self.invoker.close()
        if self.store is not None:
            await self.store.close()

    # matching --------------------------------------------------------------------------------

    def observe(self, ev: RealtimeEvent) -> None:
        """Match triggers and queue deliveries.  Synchronous, no I/O; never raises."""
        try:
            states = self._by_on.get(ev.type)
            if not states or self._stopped:
                return
            if self._publishing and ev.type == "broadcast":
                # A function's own reply coming straight back: re-triggering it would loop.
                return
            base: dict[str, Any] | None = None
            for st in states:
                if not self._matches(st, ev):
                    continue
                if base is None:
                    base = self._snapshot(ev)
                    if base is None:
                        st.stats.failed += 1
                        return
                self._accept(st, self._delivery(st.trigger, base))
        except Exception:  # noqa: BLE001 - observe sits on the fan-out path; it must not raise
            log.exception("functions: could not queue %s event on %s", ev.type, ev.topic)

    def _matches(self, st: _TriggerState, ev: RealtimeEvent) -> bool:
        t = st.trigger
        if not _glob(t.topic, ev.topic) or not _glob(t.event, ev.event):
            return False
        if t.on != "postgres":
            return True
        if not _glob(t.schema, ev.schema) or not _glob(t.table, ev.table):
            return False
        return not t.conditions or self._filter_matches(st, ev)

    def _filter_matches(self, st: _TriggerState, ev: RealtimeEvent) -> bool:
        """The postgres_changes filter grammar (protocol.md §6.2) against the change's row: the
        new record, or the old one for DELETE, typed by the change's ``columns``."""
        data = ev.payload if isinstance(ev.payload, Mapping) else {}
        row = data.get("old_record" if ev.event == "DELETE" else "record")
        if not isinstance(row, Mapping):
            return False
        cols = data.get("columns")
        if isinstance(cols, list) and cols:
            columns = {str(c.get("name")): str(c.get("type")) for c in cols if isinstance(c, Mapping)}
        else:
            columns = {str(k): "text" for k in row}
        key = tuple(sorted(columns.items()))
        if key not in st.typed:
            if len(st.typed) > 64:
                st.typed.clear()  # tables rarely change shape; bound the cache anyway
            try:
                st.typed[key] = validate(st.trigger.conditions, columns)
            except FilterError as exc:
                log.warning("functions: trigger %s: filter %r does not apply to %s.%s: %s", st.trigger.name,
                            st.trigger.filter, ev.schema, ev.table, exc.message)
                st.typed[key] = None
        typed = st.typed[key]
        return typed is not None and matches(typed, row)

    @staticmethod
    def _snapshot(ev: RealtimeEvent) -> dict[str, Any] | None:
        """The event object without its id, as JSON values: the caller may reuse its payload
        object after ``observe`` returns, and a durable row must hold exactly what is sent."""
        event: dict[str, Any] = {
            "type": ev.type,
            "topic": ev.topic,
            "event": ev.event,
            "payload": ev.payload,
            "claims": ev.claims,
            "timestamp": _now_iso(),
        }
        if ev.type == "postgres":
            event["schema"] = ev.schema
            event["table"] = ev.table
        try:
            snapshot: dict[str, Any] = orjson.loads(dumps(event))
        except TypeError as exc:
            log.error("functions: dropping a %s event on %s: its payload is not JSON (%s)", ev.type, ev.topic, exc)
            return None
        return snapshot

    def _delivery(self, t: Trigger, base: Mapping[str, Any]) -> Delivery:
        msg_id = str(uuid.uuid4())
        event = {"id": msg_id, "trigger": t.name, **base}
        return Delivery(msg_id, t.name, base["topic"], event, next_at=0.0, queued_at=time.monotonic())

    # queueing --------------------------------------------------------------------------------

    def _accept(self, st: _TriggerState, d: Delivery) -> None:
        dead = st.queued >= self.config.max_pending
        if dead:
            d.last_error = f"queue full ({self.config.max_pending} pending deliveries)"
            log.warning("functions: trigger %s: %s; event %s dead-lettered", st.trigger.name, d.last_error, d.id)
            st.stats.failed += 1
        if self.store is None:
            if dead:
                self._dead_in_memory(d)
            else:
                self._enqueue(st, d)
            return
        if not dead:
            st.writing += 1
        self._pending.append((st, d, dead))
        self._wake.set()

    def _enqueue(self, st: _TriggerState, d: Delivery) -> None:
        lane = st.lanes.get(d.topic)
        if lane is None:
            lane = st.lanes[d.topic] = deque()
        lane.append(d)
        if d.topic not in st.tasks:
            st.tasks[d.topic] = asyncio.create_task(self._run_lane(st, d.topic),
                                                    name=f"functions-{st.trigger.name}-{d.topic}")

    def _dead_in_memory(self, d: Delivery) -> None:
        self._dlq[d.id] = d
        while len(self._dlq) > self.config.dlq_max:
            old_id, _ = self._dlq.popitem(last=False)
            log.warning("functions: dead-letter list full; dropped the oldest dead letter %s", old_id)

    async def _adopt(self, rows: Sequence[Delivery]) -> None:
        """Rows claimed from the table (start-up, replay) join their lanes in ``seq`` order."""
        assert self.store is not None
        now = time.monotonic()
        for d in rows:
            st = self.states.get(d.trigger)
            if st is None:
                d.last_error = f"trigger {d.trigger!r} is not configured"
                log.warning("functions: event %s: %s; left in the dead-letter list", d.id, d.last_error)
                await self._store_call(self.store.dead, d)
                continue
            d.queued_at = now
            self._enqueue(st, d)

    async def _writer(self) -> None:
        """Durable mode: persist accepted deliveries in batches, then hand them to their lanes."""
        assert self.store is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._pending[:_WRITE_BATCH]
                try:
                    live = [d for _, d, dead in batch if not dead]
                    dead = [d for _, d, is_dead in batch if is_dead]
                    if live:
                        await self.store.insert(live)
                    if dead:
                        await self.store.insert(dead, state="dead")
                except Exception as exc:  # noqa: BLE001 - keep the batch and try again
                    log.error("functions: cannot persist %d event(s): %s; retrying", len(batch), exc)
                    await asyncio.sleep(_STORE_RETRY_SECONDS)
                    continue
                del self._pending[: len(batch)]
                for st, d, is_dead in batch:
                    if not is_dead:
                        st.writing -= 1
                        self._enqueue(st, d)

    async def _poller(self) -> None:
        """Durable mode: adopt rows the CLI handed back (``functions dlq replay``) and rows of
        engines that are gone; keep our own ownership lock."""
        assert self.store is not None
        while True:
            await asyncio.sleep(self.config.poll_interval)
            try:
                await self.store.hold_ownership()
                await self._adopt(await self.store.adopt())
            except Exception as exc:  # noqa: BLE001 - the database may be away; poll again later
                log.warning("functions: cannot poll the durable queue: %s", exc)
            self.polls += 1

    async def _store_call(self, op: Callable[[Delivery], Coroutine[Any, Any, Any]], d: Delivery) -> None:
        """Persist a state change; a failure is logged (the row stays as it was: at least once)."""
        try:
            # Shielded: a stop cancels the lane, not the write; closing the store waits for it.
            await asyncio.shield(op(d))
        except Exception as exc:  # noqa: BLE001
            log.error("functions: cannot record the state of event %s: %s", d.id, exc)

    # delivery --------------------------------------------------------------------------------

    async def _run_lane(self, st: _TriggerState, topic: str) -> None:
        lane = st.lanes[topic]
        try:
            while lane:
                d = lane[0]
                delay = d.next_at - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)  # back-off before the next attempt
                async with st.sem:
                    outcome = await self._attempt(st.trigger, d)
                await self._settle(st, d, outcome, lane)
        except Exception:  # noqa: BLE001 - a bug must not strand the lane's events
            log.exception("functions: trigger %s: lane %s failed; restarting it", st.trigger.name, topic)
            if lane and not self._stopped:
                st.tasks[topic] = asyncio.create_task(self._run_lane(st, topic))
                return
        finally:
            if not lane:
                st.lanes.pop(topic, None)
            if st.tasks.get(topic) is asyncio.current_task():
                del st.tasks[topic]

    async def _attempt(self, t: Trigger, d: Delivery) -> Outcome:
        started = time.monotonic()
        try:
            outcome = await self.invoker.call(trigger=t.name, url=t.url, handler=t.handler, event=d.event,
                                              timeout=t.timeout)
        except Exception as exc:  # noqa: BLE001 - an unexpected failure is retried like any other
            log.exception("functions: trigger %s: event %s failed unexpectedly", t.name, d.id)
            outcome = Outcome(False, error=f"{type(exc).__name__}: {exc}")
        if outcome.ok:
            self.states[t.name].stats.latencies.append((time.monotonic() - started) * 1000)
        return outcome

    async def _settle(self, st: _TriggerState, d: Delivery, outcome: Outcome, lane: deque[Delivery]) -> None:
        t = st.trigger
        d.attempts += 1
        if outcome.ok:
            lane.popleft()
            st.stats.delivered += 1
            st.stats.lags.append((time.monotonic() - d.queued_at) * 1000)
            # Act before recording: a stop in between repeats the delivery (at least once)
            # rather than losing the reply.
            self._act(outcome.reply, d.topic, d.id, t.name)
            if self.store is not None:
                await self._store_call(self.store.done, d)
            return
        st.stats.errors += 1
        d.last_error = outcome.error
        if outcome.retry and d.attempts < t.max_attempts:
            delay = min(t.backoff_max, t.backoff_base * 2 ** (d.attempts - 1)) * random.uniform(0.8, 1.0)
            if outcome.retry_after is not None:
                delay = min(max(delay, outcome.retry_after), t.backoff_max)
            d.next_at = time.time() + delay
            st.stats.retried += 1
            log.info("functions: trigger %s: event %s attempt %d failed (%s); retrying in %.3fs", t.name, d.id,
                     d.attempts, outcome.error, delay)
            if self.store is not None:
                await self._store_call(self.store.retry, d)
            return
        lane.popleft()
        st.stats.failed += 1
        why = "permanent failure" if not outcome.retry else f"{d.attempts} attempt(s)"
        log.warning("functions: trigger %s: event %s dead-lettered after %s: %s", t.name, d.id, why, outcome.error)
        if self.store is not None:
            await self._store_call(self.store.dead, d)
        else:
            self._dead_in_memory(d)

    # replies ---------------------------------------------------------------------------------

    def _publish(self, topic: str, event: str, payload: Any) -> None:
        self._publishing = True
        try:
            self._publish_fn(topic, event, payload)
        finally:
            self._publishing = False

    def _act(self, reply: Any, default_topic: str, msg_id: str, trigger: str) -> None:
        """``{"broadcast": {...}}`` or ``{"broadcast": [{...}, ...]}``; anything else: nothing."""
        if not isinstance(reply, Mapping) or "broadcast" not in reply:
            return
        spec = reply["broadcast"]
        for b in spec if isinstance(spec, list) else [spec]:
            if not isinstance(b, Mapping) or not isinstance(b.get("event"), str) or not b["event"]:
                log.warning("functions: trigger %s: event %s: ignoring a broadcast reply without an event name",
                            trigger, msg_id)
                continue
            topic = b.get("topic", default_topic)
            if not isinstance(topic, str) or not topic:
                log.warning("functions: trigger %s: event %s: ignoring a broadcast reply with a bad topic",
                            trigger, msg_id)
                continue
            try:
                self._publish(strip_prefix(topic), b["event"], b.get("payload", {}))
            except Exception:  # noqa: BLE001 - the delivery itself succeeded
                log.exception("functions: trigger %s: event %s: publishing the reply failed", trigger, msg_id)

    # gates -----------------------------------------------------------------------------------

    def has_gate(self, kind: str, sub_topic: str, event: str | None = None) -> bool:
        """True when a gate of ``kind`` applies (lets the caller skip an await on the hot path)."""
        return any(_glob(g.topic, sub_topic) and _glob(g.event, event) for g in self._gates.get(kind, ()))

    async def gate_join(self, sub_topic: str, claims: Mapping[str, Any], config: Mapping[str, Any]) -> GateResult:
        for g in self._gates.get("authorize_join", ()):
            if _glob(g.topic, sub_topic):
                res = await self._run_gate(g, sub_topic, None, dict(config), claims)
                if not res.allow:
                    return res
        return GateResult(True)

    async def gate_send(self, sub_topic: str, event: str, payload: Any, claims: Mapping[str, Any]) -> GateResult:
        """Gates run in config order; each sees the payload as the previous one rewrote it."""
        rewritten: Any = None
        for g in self._gates.get("authorize_send", ()):
            if _glob(g.topic, sub_topic) and _glob(g.event, event):
                current = payload if rewritten is None else rewritten
                res = await self._run_gate(g, sub_topic, event, current, claims)
                if not res.allow:
                    return res
                if res.payload is not None:
                    rewritten = res.payload
        return GateResult(True, payload=rewritten)

    async def _run_gate(self, g: Gate, sub_topic: str, event: str | None, payload: Any,
                        claims: Mapping[str, Any]) -> GateResult:
        msg_id = str(uuid.uuid4())
        body = {"id": msg_id, "type": g.kind, "gate": g.name, "topic": sub_topic, "event": event,
                "payload": payload, "claims": dict(claims), "timestamp": _now_iso()}
        stats = self._gate_stats[g.name]
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

    # inspection ------------------------------------------------------------------------------

    def metrics(self) -> dict[str, dict[str, float]]:
        """Per trigger (and per gate, as ``gate:<name>``): counts and latency percentiles in ms.

        ``latency_*`` is the function call of successful attempts; ``lag_*`` is the time from
        queueing to success (includes waiting and retries).  Gates count allowed requests as
        ``delivered``, denials as ``failed`` and unusable replies as ``errors``.
        """
        out: dict[str, dict[str, float]] = {}
        for name, st in self.states.items():
            s = st.stats
            out[name] = {
                "delivered": s.delivered, "retried": s.retried, "failed": s.failed, "errors": s.errors,
                "queued": st.queued,
                "latency_p50_ms": _percentile(s.latencies, 0.5), "latency_p99_ms": _percentile(s.latencies, 0.99),
                "lag_p50_ms": _percentile(s.lags, 0.5), "lag_p99_ms": _percentile(s.lags, 0.99),
            }  # fmt: skip
        for name, s in self._gate_stats.items():
            out[f"gate:{name}"] = {
                "delivered": s.delivered, "failed": s.failed, "errors": s.errors,
                "latency_p50_ms": _percentile(s.latencies, 0.5), "latency_p99_ms": _percentile(s.latencies, 0.99),
            }  # fmt: skip
        return out

    async def dlq_list(self) -> list[dict[str, Any]]:
        rows = await self.store.dead_list() if self.store is not None else list(self._dlq.values())
        return [d.describe() for d in rows]

    async def dlq_replay(self, ids: Sequence[str] | None = None) -> int:
        """Dead letters (all, or these ids) are queued again with attempts reset; returns how many."""
        if self.store is not None:
            rows = await self.store.revive(ids, "queued")
            await self._adopt(rows)
            return sum(1 for d in rows if d.trigger in self.states)
        chosen = list(self._dlq) if ids is None else [i for i in ids if i in self._dlq]
        count = 0
        now = time.monotonic()
        for msg_id in chosen:
            d = self._dlq[msg_id]
            st = self.states.get(d.trigger)
            if st is None:
                continue
            del self._dlq[msg_id]
            d.attempts, d.next_at, d.queued_at = 0, 0.0, now
            self._enqueue(st, d)
            count += 1
        return count
