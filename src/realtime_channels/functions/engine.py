"""The functions engine: realtime events in, function calls out.

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
* **Gates** (``gate_join`` / ``gate_send``, gates.py) run inline with the gate's deadline; an
  error, timeout or unreadable reply resolves to the gate's ``fail_open`` setting.

Matching and the event snapshot are matching.py; the event types are events.py.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

from .config import FunctionsConfig, Trigger
from .events import GateResult, RealtimeEvent, Stats, percentile
from .gates import GateRunner
from .matching import TypedCache, snapshot, trigger_matches
from .signing import parse_secret
from .store import Delivery, PgStore
from .targets import Invoker, Outcome, Presence, strip_prefix

__all__ = ["FunctionsEngine", "GateResult", "RealtimeEvent"]

log = logging.getLogger(__name__)

_WRITE_BATCH = 500
#: How long ``stop`` waits for the writer to persist what ``observe`` accepted.
_FLUSH_SECONDS = 5.0
_STORE_RETRY_SECONDS = 1.0


class _TriggerState:
    """A trigger's lanes, concurrency limit and numbers."""

    def __init__(self, trigger: Trigger) -> None:
        self.trigger = trigger
        self.sem = asyncio.Semaphore(trigger.concurrency)
        self.lanes: dict[str, deque[Delivery]] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.stats = Stats()
        self.writing = 0  # accepted by observe, not yet persisted (durable mode)
        #: postgres filters validated per column set: conditions, or None when they do not apply
        self.typed: TypedCache = {}

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self.lanes.values()) + self.writing


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
        self.gates = GateRunner(config.gates, self.invoker)
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
                if not trigger_matches(st.trigger, st.typed, ev):
                    continue
                if base is None:
                    base = snapshot(ev)
                    if base is None:
                        st.stats.failed += 1
                        return
                self._accept(st, self._delivery(st.trigger, base))
        except Exception:  # noqa: BLE001 - observe sits on the fan-out path; it must not raise
            log.exception("functions: could not queue %s event on %s", ev.type, ev.topic)

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

    # gates (gates.py) ------------------------------------------------------------------------

    def has_gate(self, kind: str, sub_topic: str, event: str | None = None) -> bool:
        """True when a gate of ``kind`` applies (lets the caller skip an await on the hot path)."""
        return self.gates.has_gate(kind, sub_topic, event)

    async def gate_join(self, sub_topic: str, claims: Mapping[str, Any], config: Mapping[str, Any]) -> GateResult:
        return await self.gates.gate_join(sub_topic, claims, config)

    async def gate_send(self, sub_topic: str, event: str, payload: Any, claims: Mapping[str, Any]) -> GateResult:
        return await self.gates.gate_send(sub_topic, event, payload, claims)

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
                "latency_p50_ms": percentile(s.latencies, 0.5), "latency_p99_ms": percentile(s.latencies, 0.99),
                "lag_p50_ms": percentile(s.lags, 0.5), "lag_p99_ms": percentile(s.lags, 0.99),
            }  # fmt: skip
        out.update(self.gates.metrics())
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
