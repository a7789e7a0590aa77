"""Prometheus metrics (docs/metrics.md): the series, how they are kept cheap, and ``--workers``.

Two kinds of series:

* **Instruments** touched where something happens, at most once per message (never once per
  subscriber): the publish→write and join latencies, RLS batches, slow consumers, rate-limit
  refusals.  They live here, at module level: one server node per process.
* **Polled** series, read from the node's own state when a scrape arrives (``sync``), as
  Supabase's PromEx polls its gauges: open sockets, outbox bytes, backbone state, replication
  lag, and the cumulative counts the node keeps anyway (the rate limiters' events, joins and
  presence events, postgres_changes deliveries, function counters).  Counting those costs the
  hot path nothing it did not already do.

``--workers N`` uses prometheus-client's multiprocess mode: the supervisor gives every worker
the same ``PROMETHEUS_MULTIPROC_DIR``, each worker's values live in memory-mapped files there,
and whichever worker answers a scrape (the port is shared, so any may) reports the whole
process group: counters and histograms summed, gauges summed or maxed as their meaning asks.
Workers cannot be told apart behind one shared port, and a scrape that reached a random worker
would make every counter jump; one aggregated view also matches Supabase's ``/metrics``, which
answers for the whole cluster.  In that mode each worker refreshes its polled series every
``POLL_S`` seconds (and the answering one just before it answers), so the other workers'
gauges may be that old.

A ``tenant`` label: every series is declared below with ``LABELS`` first; adding ``"tenant"``
there (and a value where each series is touched or polled) is the whole change.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    disable_created_metrics,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from . import errors

if TYPE_CHECKING:
    from .protocol.codec import Message

__all__ = ["CONTENT_TYPE_LATEST", "MULTIPROC_ENV", "POLL_S", "exposition", "multiprocess", "sync"]

#: set by the ``--workers`` supervisor (prometheus-client reads it when it is imported)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: how often a worker refreshes its polled series in multiprocess mode
POLL_S = 5.0
#: labels every series starts with
LABELS: tuple[str, ...] = ()
#: the series read per tenant at scrape time carry the tenant's id (Supabase labels them so);
#: with the one tenant the environment defines, its id is ``REALTIME_SELF_HOST_TENANT_NAME``
TENANT: tuple[str, ...] = (*LABELS, "tenant")


def multiprocess() -> bool:
    return MULTIPROC_ENV in os.environ


disable_created_metrics()  # type: ignore[no-untyped-call]  # no ``*_created`` series (Supabase has none either)
REGISTRY = CollectorRegistry(auto_describe=True)
if not multiprocess():  # per-process figures do not add up across workers
    for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        REGISTRY.register(_collector)

# --- Supabase's series ------------------------------------------------------------------------

CONNECTIONS_CONNECTED = Gauge(
    "realtime_connections_connected", "Sockets that have joined at least one channel, on this node.",
    TENANT, registry=REGISTRY, multiprocess_mode="livesum")
CONNECTIONS_CLUSTER = Gauge(
    "realtime_connections_connected_cluster", "Sockets that have joined a channel, on every node of the cluster.",
    TENANT, registry=REGISTRY, multiprocess_mode="livemax")
PHOENIX_CONNECTIONS = Gauge(
    "phoenix_connections_total", "Open WebSocket connections, with or without channels.",
    registry=REGISTRY, multiprocess_mode="livesum")
CHANNEL_EVENTS = Counter(
    "realtime_channel_events", "Messages counted toward the events/s limit: broadcasts sent and every "
    "per-channel delivery.", TENANT, registry=REGISTRY)
CHANNEL_JOINS = Counter("realtime_channel_joins", "Channel joins counted toward the joins/s limit.", TENANT,
                        registry=REGISTRY)
CHANNEL_PRESENCE = Counter(
    "realtime_channel_presence_events", "Presence messages counted toward the presence events/s limit.",
    TENANT, registry=REGISTRY)
CHANNEL_DB_EVENTS = Counter(
    "realtime_channel_db_events", "postgres_changes messages delivered to sockets.", TENANT, registry=REGISTRY)
CHANNEL_JOINED = Counter(
    "phoenix_channel_joined", "Join replies sent, by result (ok / error).", (*LABELS, "result", "transport"),
    registry=REGISTRY)

# --- our own ----------------------------------------------------------------------------------

CONNECTIONS = Gauge("realtime_connections", "Open WebSocket connections.", TENANT, registry=REGISTRY,
                    multiprocess_mode="livesum")
EVENTS_PER_SECOND = Gauge(
    "realtime_events_per_second", "This node's rolling one-minute events/s (the rate limit's own figure).",
    TENANT, registry=REGISTRY, multiprocess_mode="livesum")
CLUSTER_NODES = Gauge("realtime_cluster_nodes", "Nodes this node hears from, itself included.",
                      registry=REGISTRY, multiprocess_mode="livemax")
NODE_INFO = Gauge("realtime_node_info", "1 for each running node (a worker of --workers is one).", ["node"],
                  registry=REGISTRY, multiprocess_mode="liveall")
BACKBONE_CONNECTED = Gauge(
    "realtime_backbone_connected", "1 while the PubSub backbone (Redis) reaches the other nodes; "
    "the least of all workers.", registry=REGISTRY, multiprocess_mode="livemin")
OUTBOX_BYTES = Gauge("realtime_outbox_bytes", "Bytes queued for sockets and not yet sent, all sockets together.",
                     TENANT, registry=REGISTRY, multiprocess_mode="livesum")
OUTBOX_MAX = Gauge("realtime_outbox_max_socket_bytes", "The largest send backlog of one socket.",
                   TENANT, registry=REGISTRY, multiprocess_mode="livemax")
SLOW_CONSUMERS = Counter(
    "realtime_slow_consumer_disconnects", "Sockets closed because their outbox outgrew REALTIME_OUTBOX_MAX_BYTES.",
    LABELS, registry=REGISTRY)
REFUSALS = Counter("realtime_rate_limit_refusals", "Refusals by a rate limit, by error code.",
                   (*LABELS, "code"), registry=REGISTRY)

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
PUBLISH_TO_WRITE = Histogram(
    "realtime_broadcast_publish_to_write_seconds", "From a broadcast accepted on this node to its frames "
    "written to this node's subscribers (includes the backbone round trip).", LABELS,
    buckets=_LATENCY_BUCKETS, registry=REGISTRY)
JOIN_SECONDS = Histogram(
    "realtime_channel_join_seconds", "From phx_join received to its ok reply written (policy checks, "
    "backbone confirmation, postgres_changes waits included).", LABELS, buckets=_LATENCY_BUCKETS,
    registry=REGISTRY)
RLS_BATCH = Histogram(
    "realtime_rls_batch_changes", "Changes of one table in one transaction judged together, for every "
    "claims cohort, in one RLS round trip.", LABELS, buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000),
    registry=REGISTRY)
RLS_SECONDS = Histogram("realtime_rls_check_seconds", "Time of one batched RLS check.", LABELS,
                        buckets=_LATENCY_BUCKETS, registry=REGISTRY)
REPLICATION_LAG_BYTES = Gauge(
    "realtime_replication_lag_bytes", "WAL the server has written past what this node has handled, by slot "
    "(only on the node that reads the slot).", (*TENANT, "slot"), registry=REGISTRY, multiprocess_mode="livemax")
REPLICATION_LAG_SECONDS = Gauge(
    "realtime_replication_lag_seconds", "While behind: age of the last transaction handled; 0 when caught up.",
    (*TENANT, "slot"), registry=REGISTRY, multiprocess_mode="livemax")

FUNCTION_COUNTERS = {name: Counter(f"realtime_function_{name}", help_, (*LABELS, "trigger"), registry=REGISTRY)
                     for name, help_ in (("delivered", "Events a function handled (gates: requests allowed)."),
                                         ("retried", "Attempts retried after a failure."),
                                         ("failed", "Events given up on, as dead letters (gates: denials)."),
                                         ("errors", "Failed attempts (gates: unusable replies)."))}
FUNCTION_GAUGES = {name: Gauge(f"realtime_function_{name}", help_, (*LABELS, "trigger"), registry=REGISTRY,
                               multiprocess_mode="livesum" if name == "queued" else "livemax")
                   for name, help_ in (("queued", "Events waiting for the function."),
                                       ("latency_p50_ms", "Median call time of successful attempts."),
                                       ("latency_p99_ms", "99th percentile call time of successful attempts."),
                                       ("lag_p50_ms", "Median time from queueing to success."),
                                       ("lag_p99_ms", "99th percentile time from queueing to success."))}

# --- touched where it happens --------------------------------------------------------------------

#: the rate limits whose refusals are counted (``REFUSALS``), by class name
_RATE_LIMITS: tuple[type[errors.RealtimeError], ...] = (
    errors.ConnectionRateLimitReached, errors.AddressConnectionLimitReached, errors.ClientJoinRateLimitReached,
    errors.ChannelRateLimitReached, errors.MessageRateLimitReached, errors.ClientPresenceRateLimitReached,
    errors.PresenceRateLimitReached, errors.RestRateLimited)
_RATE_LIMIT_NAMES = frozenset(c.__name__ for c in _RATE_LIMITS)
#: a channel shut down by a rate limit gets a ``system`` message with the bare message
_SHUTDOWN_CODES = {c.message: c.__name__ for c in _RATE_LIMITS if issubclass(c, errors.ChannelShutdown)}


def refused(name: str) -> None:
    """A refusal by error class name (an upgrade refused, a REST 429): counted if a rate limit."""
    if name in _RATE_LIMIT_NAMES:
        REFUSALS.labels(name).inc()


class JoinClock(Protocol):
    """A socket keeping its pending joins' receive times (``transport.ws.Connection``)."""

    joins: dict[str | None, float]


def join_received(conn: JoinClock, msg: Any) -> None:
    if getattr(msg, "event", None) == "phx_join":
        conn.joins[msg.ref] = time.perf_counter()


def replied(conn: JoinClock, msg: Message) -> None:
    """A server message sent to one socket (not a fan-out): join replies are timed and counted,
    rate-limit refusals counted by code."""
    event = msg.event
    if event == "phx_reply":
        payload = msg.payload if isinstance(msg.payload, dict) else {}
        status = payload.get("status")
        started = conn.joins.pop(msg.ref, None) if conn.joins else None
        if started is not None:
            CHANNEL_JOINED.labels("ok" if status == "ok" else "error", "websocket").inc()
            if status == "ok":
                JOIN_SECONDS.observe(time.perf_counter() - started)
        if status == "error":
            response = payload.get("response")
            reason = response.get("reason") if isinstance(response, dict) else None
            if isinstance(reason, str):
                refused(reason.partition(":")[0])
    elif event == "system" and isinstance(msg.payload, dict) and msg.payload.get("status") == "error":
        code = _SHUTDOWN_CODES.get(str(msg.payload.get("message")))
        if code is not None:
            REFUSALS.labels(code).inc()


def rls_checked(changes: int, started: float) -> None:
    """One batched RLS check of ``changes`` changes, begun at ``started`` (``perf_counter``)."""
    RLS_BATCH.observe(changes)
    RLS_SECONDS.observe(time.perf_counter() - started)


# --- polled at scrape time ----------------------------------------------------------------------


class _Totals:
    """Cumulative counts the node keeps, carried into counters by their growth since the last
    poll (a counter only goes up; a figure that went down means its owner was replaced)."""

    def __init__(self) -> None:
        self._last: dict[tuple[object, tuple[str, ...]], float] = {}

    def carry(self, counter: Counter, total: float, *labels: str) -> None:
        key = (counter, labels)
        last = self._last.get(key, 0.0)
        if total > last:
            (counter.labels(*labels) if labels else counter).inc(total - last)
        self._last[key] = total


_totals = _Totals()


def sync(states: Any) -> None:
    """Read the polled series from ``states`` (``transport.state.AppState``: the one the
    environment defines first, then each running tenant's), each under its tenant's id."""
    now = time.time()
    first = states[0]
    node = first.node
    CLUSTER_NODES.set(1 + len(node.replica.peers))
    NODE_INFO.labels(node.node_id).set(1)
    BACKBONE_CONNECTED.set(1 if node.pubsub.health.value == "connected" else 0)
    PHOENIX_CONNECTIONS.set(sum(len(state.connections) for state in states))
    for state in states:
        _sync_tenant(state, state.tenant, now)


def _sync_tenant(state: Any, tenant: str, now: float) -> None:
    node = state.node
    limits = node.limits
    conns = list(state.connections)
    CONNECTIONS.labels(tenant).set(len(conns))
    CONNECTIONS_CONNECTED.labels(tenant).set(limits.users)
    CONNECTIONS_CLUSTER.labels(tenant).set(limits.users + limits.remote_users)
    EVENTS_PER_SECOND.labels(tenant).set(limits.events.rate(now))
    unsent = [c.transport.get_write_buffer_size() for c in conns if not c.transport.is_closing()]
    OUTBOX_BYTES.labels(tenant).set(sum(unsent))
    OUTBOX_MAX.labels(tenant).set(max(unsent, default=0))
    _totals.carry(CHANNEL_EVENTS, limits.events.total, tenant)
    _totals.carry(CHANNEL_JOINS, limits.joins.total, tenant)
    _totals.carry(CHANNEL_PRESENCE, limits.presence.total, tenant)
    changes = node.changes
    if changes is not None:
        _totals.carry(CHANNEL_DB_EVENTS, getattr(changes, "delivered", 0), tenant)
        _replication(getattr(changes, "reader", None), getattr(changes, "slot", ""), tenant)
    if node.functions is not None:
        _functions(node.functions.metrics())


def _replication(reader: Any, slot: str, tenant: str) -> None:
    behind = getattr(reader, "lag_bytes", None)
    if behind is None:
        return  # not reading the slot (a follower of a cluster), or not yet
    REPLICATION_LAG_BYTES.labels(tenant, slot).set(behind)
    committed = reader.handled_commit_us
    age = time.time() - (committed / 1e6 + _PG_EPOCH) if behind and committed else 0.0
    REPLICATION_LAG_SECONDS.labels(tenant, slot).set(max(0.0, age))


#: PostgreSQL timestamps count from 2000-01-01 UTC
_PG_EPOCH = 946_684_800


def _functions(per_trigger: Mapping[str, Mapping[str, float]]) -> None:
    for trigger, values in per_trigger.items():
        for name, value in values.items():
            if name in FUNCTION_COUNTERS:
                _totals.carry(FUNCTION_COUNTERS[name], float(value), trigger)
            elif name in FUNCTION_GAUGES:
                FUNCTION_GAUGES[name].labels(trigger).set(float(value))


def exposition() -> bytes:
    """The text exposition: this process, or (multiprocess mode) every worker together."""
    if not multiprocess():
        return generate_latest(REGISTRY)
    from prometheus_client import multiprocess as mp

    registry = CollectorRegistry()
    mp.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


def worker_exited(pid: int, directory: str | None = None) -> None:
    """A worker is gone (said by itself, or by the supervisor): its live gauges stop counting;
    its counters and histograms stay in the sums."""
    from prometheus_client import multiprocess as mp

    mp.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def workers_directory() -> str:
    """The ``--workers`` supervisor's fresh directory for its workers' values (removed by it at
    exit with ``shutil.rmtree``); never one left by an earlier run, whose counters would count."""
    import tempfile

    return tempfile.mkdtemp(prefix="realtime-channels-metrics-")
