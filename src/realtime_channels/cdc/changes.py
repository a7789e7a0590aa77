"""postgres_changes: the change feed that ties subscriptions, routing, RLS and delivery together.

Theory of operation
-------------------
Channels subscribe through ``subscriptions`` (bindings validated against the catalog, §6.3).
The replication reader hands over one committed transaction at a time — on a cluster only the
leader (``leader``) reads, shares each transaction with every node and waits until it came back
through the PubSub before the position is stored; a single node routes what it reads at once.

Routing one transaction (``_route``): for each change the subscriptions of its table are
narrowed by event and filter (``router.match``); then, for tables with RLS, visibility of
INSERT/UPDATE rows is checked **once per table per transaction for all claims cohorts
together**, on each change's own row images (``visibility``, rls.py); column privileges trim ``record``/``old_record``/
``columns`` per role (§6.6, §6.8).  Channels with identical bindings, role and cohort form one
*fan* (``router.fans``) and are matched and judged as one; ``router.plan`` groups them by
identical payload (topic, binding ids, visible columns); each group's ``data`` is built by
``record.Row``, encoded once per column set, and the message is framed once per wire format for
all the group's connections (``hub.deliver``).

Subscription checks, routing and function reporting each use their own side connection.

Resume (protocol.md §4.10): every routed transaction is kept in ``retention``; a channel that
asked for offsets gets each change's offset as the message ``ref``.  A channel that resumes is
registered between two routed transactions (``_route_lock``), and the retained changes after
its offset are routed to it alone — matched, RLS-checked and trimmed under its current claims —
before any later transaction is routed.

Snapshots (protocol.md §6.10) are read at the same point: a channel with ``snapshot: true``
bindings is registered, the matching rows are read in one REPEATABLE READ transaction as the
subscriber and sent as INSERTs, and the transactions that snapshot contains are not sent to the
channel when they are routed later (``snapshot.Snapshot``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import orjson
import psycopg

from .. import hub, tracing
from ..tracebus import TraceBus
from ..protocol.codec import Message
from . import catalog, catchup, pgoutput, router
from .bindings import Peer
from .changetrace import trace_change
from .connections import SideConnection
from .leader import Leadership
from .record import Row, full_data
from .replication import ReplicationReader
from .retention import ChangeRetention, Position, format_offset
from .rls import RlsChecker
from .subscriptions import ChannelSubs, Ready, Subscriptions
from .types import FeedState, HistoryAsk, HistoryShare, ResetShare, ShareOp, StateShare, Transaction, TxnShare
from .visibility import Matched, Visibility

log = logging.getLogger(__name__)


#: followers consider the stream down when the leader has not reported for this long
LEADER_TTL_S = 6.0
ECHO_TIMEOUT_S = 30.0
#: a subscription made while the stream is (re)starting waits this long before failing
STARTUP_GRACE_S = 3.0
#: a resuming join waits this long, at start-up, for the slot's retained window to be read again
HISTORY_WAIT_S = 10.0
#: changes per op when the reading node shares its retention with a node that started later
HISTORY_CHUNK = 500
FEED_RESET = ("ChangesGap: the replication slot or publication was dropped and has been recreated; "
              "changes committed meanwhile were not delivered")


class ChangeSink(Protocol):
    """Functions' postgres triggers: told once per change of a watched table, on the reading
    node, with the change's full ``data`` object (no RLS: functions are trusted)."""

    def watches(self, schema: str, table: str) -> bool: ...

    def on_change(self, schema: str, table: str, kind: str, data: dict[str, Any]) -> None: ...


class PostgresChanges:
    """Owns the side connections, the replication reader and every channel's subscriptions.

    ``clustered``: nodes share one reader (leader election, transactions shared through
    ``attach``); otherwise this node reads the slot itself and ``attach`` is not needed."""

    def __init__(self, dsn: str, *, publication: str, slot: str, clustered: bool = False,
                 sink: ChangeSink | None = None,
                 on_state: Callable[[FeedState, str | None], None] | None = None,
                 rls_mode: str = "batched", retention: ChangeRetention | None = None,
                 snapshot_max_rows: int = catchup.SNAPSHOT_MAX_ROWS) -> None:
        self.dsn = dsn
        self.publication = publication
        self.slot = slot
        self._sink = sink
        self._on_state = on_state
        self.visibility = Visibility(RlsChecker(), rls_mode)
        self.cache = catalog.CatalogCache()
        self.retention = retention
        #: this node's retention holds what the reading node retained (a node that reads the
        #: slot fills it itself; one that started after the reader asks it, ``HistoryAsk``)
        self._history_ready = asyncio.Event()
        self._history_asked = False
        self.snapshot_max_rows = snapshot_max_rows
        #: ``GET /api/trace`` (set by the node): what routing did with changes of traced topics
        self.trace: TraceBus | None = None
        #: held while a transaction is routed, and while a resuming channel is attached
        self._route_lock = asyncio.Lock()
        self._subs_conn = SideConnection(dsn, on_open=self.cache.invalidate)
        self._route_conn = SideConnection(dsn, on_open=self.cache.invalidate)
        self._report_conn = SideConnection(dsn, on_open=self.cache.invalidate)
        self.subscriptions = Subscriptions(publication=publication, cache=self.cache,
                                           conn=self._subs_conn, ready=self._ready, attach=self._attach)
        self._relations: dict[int, pgoutput.Relation] = {}
        self.reader = self._new_reader()
        self._leadership = (Leadership(dsn, slot, read=self._read, stop=self._stop_reader, beat=self._beat)
                            if clustered else None)
        self._tasks: list[asyncio.Task[None]] = []
        #: sends an op to every node (this one included); None = this node works alone
        self._share: Callable[[ShareOp], None] | None = None
        self._state_listeners: list[Callable[[], None]] = []
        self._shared: asyncio.Queue[Transaction | HistoryAsk | HistoryShare | ResetShare] = asyncio.Queue()
        self._echo: dict[int, asyncio.Future[None]] = {}
        #: end LSN of the newest transaction this node has routed (fail-over de-duplication)
        self._routed_lsn = 0
        #: the leader's reader state as last shared, and when (monotonic)
        self._remote: tuple[FeedState, float] = (FeedState.CONNECTING, 0.0)
        self.delivered = 0

    def _new_reader(self) -> ReplicationReader:
        return ReplicationReader(self.dsn, slot=self.slot, publication=self.publication,
                                 on_transaction=self._lead_transaction, on_state=self._state_changed,
                                 retention=self.retention, on_reset=self._feed_reset)

    @property
    def leading(self) -> bool:
        """True while this node reads the replication stream."""
        return self._leadership is None or self._leadership.leading

    @property
    def lag_bytes(self) -> int | None:
        """Replication lag in bytes of WAL, known only on the node that reads the slot."""
        return self.reader.lag_bytes if self.leading else None

    @property
    def state(self) -> FeedState:
        """The replication stream's state as this node knows it (the leader's, on followers)."""
        if self.leading or self._share is None:
            return FeedState(self.reader.state)
        state, at = self._remote
        return state if time.monotonic() - at < LEADER_TTL_S else FeedState.DOWN

    # lifecycle -------------------------------------------------------------------------------

    def attach(self, share: Callable[[ShareOp], None]) -> None:
        """Share transactions through the node's PubSub: one node reads, every node routes.
        Ignored on a single node (nothing to share)."""
        if self._leadership is not None:
            self._share = share

    def add_state_listener(self, listener: Callable[[], None]) -> None:
        """``listener`` is called after every state change of this node's own reader."""
        self._state_listeners.append(listener)

    def handle_shared(self, op: ShareOp) -> None:
        """An op from the leader (or from this node as leader); transactions routed in order.
        Ops other than transactions wait behind the transactions before them."""
        if isinstance(op, StateShare):
            self._remote = (op.state, time.monotonic())
            if not self._history_asked and self.retention is not None and self._share is not None:
                self._history_asked = True  # the first word from a reader: ask it what it retained
                if not self.leading:
                    self._share(HistoryAsk())
        elif isinstance(op, TxnShare):
            self._shared.put_nowait(op.txn)
        else:
            self._shared.put_nowait(op)

    def _feed_reset(self, lsn: int) -> None:
        """The reader recreated its slot or publication (reader callback): every node's channels
        are told that changes may be missing."""
        if self._share is not None:
            self._share(ResetShare(lsn))
        else:
            self._tell_reset(lsn)

    def _tell_reset(self, lsn: int) -> None:
        if self.retention is not None:
            self.retention.reset(lsn)
        for ch in list(self.subscriptions.channels.values()):
            payload = {"extension": "postgres_changes", "status": "ok", "channel": ch.topic.removeprefix("realtime:"),
                       "message": FEED_RESET, "gap": {"missed": None}}
            ch.peer.send(Message(ch.topic, "system", payload, ref=None, join_ref=ch.join_ref))

    def _answer_history_ask(self) -> None:
        if not self.leading or self.retention is None or self._share is None:
            return
        txns = self.retention.retained()
        chunk: list[Transaction] = []
        size = 0
        for txn in txns:
            chunk.append(txn)
            size += len(txn.changes)
            if size >= HISTORY_CHUNK:
                self._share(HistoryShare(tuple(chunk), None, False))
                chunk, size = [], 0
        self._share(HistoryShare(tuple(chunk), self.retention.complete_after, True))

    def _take_history(self, op: HistoryShare) -> None:
        if self.leading or self.retention is None:
            return
        self.retention.merge_older(op.txns, op.complete_after if op.last else None)
        if op.last:
            self._history_ready.set()

    async def start(self) -> None:
        if self._leadership is None:
            self._tasks = [asyncio.create_task(self.reader.run(), name="replication-reader")]
        else:
            self._tasks = [asyncio.create_task(self._leadership.run(), name="replication-leader"),
                           asyncio.create_task(self._route_shared(), name="changes-router")]

    async def stop(self) -> None:
        await self.reader.stop()
        for task in self._tasks:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        self.subscriptions.close()
        for conn in (self._subs_conn, self._route_conn, self._report_conn):
            await conn.close()

    def _state_changed(self, state: str, detail: str | None) -> None:
        feed = FeedState(state)
        if feed is FeedState.DOWN and detail != "stopped":
            log.error("postgres_changes: replication is down: %s", detail)
        else:
            log.info("postgres_changes: replication %s", feed)
        if self._share is not None:
            self._share(StateShare(feed))
        if self._on_state is not None:
            self._on_state(feed, detail)
        for listener in self._state_listeners:
            listener()

    # one reader per slot in a cluster (leader.py) ----------------------------------------------

    async def _read(self) -> None:
        self.reader = self._new_reader()
        await self.reader.run()

    async def _stop_reader(self) -> None:
        await self.reader.stop()

    def _beat(self) -> None:
        if self._share is not None:
            self._share(StateShare(FeedState(self.reader.state)))

    async def _lead_transaction(self, txn: Transaction) -> None:
        """The reader's callback: report to functions; then route here (single node), or share
        the transaction and wait until it has come back through the PubSub and been routed
        here, so the position is stored only after every node was sent it."""
        if self._sink is not None:
            await self._report_changes(txn, self._sink)
        if self._share is None:
            await self._route_logged(txn)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._echo[txn.end_lsn] = fut
        self._share(TxnShare(txn))
        try:
            async with asyncio.timeout(ECHO_TIMEOUT_S):
                await fut
        finally:
            self._echo.pop(txn.end_lsn, None)

    async def _report_changes(self, txn: Transaction, sink: ChangeSink) -> None:
        watched = [c for c in txn.changes if sink.watches(c.relation.namespace, c.relation.name)]
        if not watched:
            return
        commit_ts = pgoutput.commit_timestamp(txn.commit_ts_us)
        async with self._report_conn.use() as conn:
            for change in watched:
                info = await self.cache.table_info(conn, change.relation.namespace, change.relation.name)
                if info is not None:
                    sink.on_change(info.schema, info.name, change.kind, full_data(Row(change, info), commit_ts))

    async def _route_shared(self) -> None:
        while True:
            op = await self._shared.get()
            if isinstance(op, HistoryAsk):
                self._answer_history_ask()
                continue
            if isinstance(op, HistoryShare):
                self._take_history(op)
                continue
            if isinstance(op, ResetShare):
                self._tell_reset(op.lsn)
                continue
            txn = op
            fut = self._echo.get(txn.end_lsn)
            if txn.end_lsn <= self._routed_lsn:
                # A new leader re-reads from the stored position, which can be one transaction
                # behind what this node already routed; end LSNs only grow, so skip it.
                if fut is not None and not fut.done():
                    fut.set_result(None)
                continue
            self._routed_lsn = txn.end_lsn
            try:
                await self._route_logged(txn)
            except Exception as exc:  # noqa: BLE001 - one bad transaction must not stop routing
                if fut is not None and not fut.done():
                    fut.set_exception(exc)
                continue
            if fut is not None and not fut.done():
                fut.set_result(None)

    async def _route_logged(self, txn: Transaction) -> None:
        try:
            await self._on_transaction(txn)
        except Exception as exc:
            log.error("postgres_changes: could not route transaction %s: %s", txn.xid, exc)
            raise

    # subscriptions (subscriptions.py) ----------------------------------------------------------

    def subscribe(self, conn_id: int, peer: Peer, topic: str, join_ref: str | None,
                  bindings: Sequence[dict[str, Any]], claims: Mapping[str, Any], ready: Ready | None = None,
                  offsets: bool = False, resume_from: Position | None = None, snapshot: bool = True) -> None:
        """Validate and create the channel's subscriptions; report with a ``system`` message,
        or to ``ready`` for a join that waits for them (§3.11).  ``offsets``: its messages carry
        offsets; ``resume_from``: then send it the retained changes after that one (§4.10);
        ``snapshot``: bindings with ``snapshot: true`` read theirs first (§6.10)."""
        self.subscriptions.subscribe(conn_id, peer, topic, join_ref, bindings, claims, ready,
                                     offsets or resume_from is not None, resume_from, snapshot)

    def unsubscribe(self, conn_id: int, topic: str) -> None:
        self.subscriptions.unsubscribe(conn_id, topic)

    async def _ready(self) -> str | None:
        if self.state != FeedState.STREAMING:
            await self._wait_streaming(STARTUP_GRACE_S)  # just started, or not yet told by the leader
        if self.state != FeedState.STREAMING:
            return f"replication is {self.state}: {self.reader.detail}"
        return None

    async def _wait_streaming(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.state != FeedState.STREAMING and time.monotonic() < deadline:
            await asyncio.sleep(0.1)  # the state is pushed by the reader or the leader's ops

    # changes (§6.4–6.8) ----------------------------------------------------------------------

    async def _on_transaction(self, txn: Transaction) -> None:
        async with self._route_lock:
            work = router.work(txn, self.subscriptions.fans)
            if work:
                try:
                    async with self._route_conn.use() as conn:
                        await self._route(conn, txn, work)
                except (psycopg.OperationalError, OSError) as exc:
                    # The side connection broke: the transaction is not acknowledged, so the
                    # reader will hand it over again once it reconnects (nothing is lost).
                    log.error("postgres_changes: database error while routing a transaction: %s", exc)
                    raise
            if self.retention is not None:
                self.retention.add(txn)

    # resume (§4.10) ------------------------------------------------------------------------

    async def _attach(self, ch: ChannelSubs, register: Callable[[], bool]) -> None:
        """Register a resuming channel between two routed transactions, then route it the
        retained changes after its offset, before anything routed later."""
        if self.retention is not None:
            # Just started: the slot's retained window is being read again (the reading node),
            # or the reading node's retention is on its way (a node that started later).
            ready = self.reader.caught_up if self.leading else self._history_ready
            if not ready.is_set():
                try:
                    async with asyncio.timeout(HISTORY_WAIT_S):
                        await ready.wait()
                except TimeoutError:
                    log.warning("postgres_changes: the retained changes did not arrive within %.0f s",
                                HISTORY_WAIT_S)
        async with self._route_lock:
            if not register():
                return
            if ch.resume_from is not None and not await catchup.replay(self, ch):
                return  # resumed without a gap: nothing to read again
            if ch.snapshot and any(sub.binding.snapshot for sub in ch.subs):
                await catchup.read_snapshot(self, ch)

    def _note_relations(self, work: router.Work) -> None:
        """Compared by value: shared transactions carry fresh Relation objects.  A new shape
        means a schema change (pgoutput sends a Relation message after one)."""
        for _, change, _ in work:
            rel = change.relation
            if self._relations.get(rel.relid) != rel:
                self._relations[rel.relid] = rel
                self.cache.invalidate(rel.relid)

    async def _route(self, conn: psycopg.AsyncConnection[Any], txn: Transaction, work: router.Work,
                     replayed: bool = False) -> None:
        with tracing.span("realtime.cdc.transaction", xid=txn.xid, changes=len(work), replayed=replayed) as span:
            commit_ts = pgoutput.commit_timestamp(txn.commit_ts_us)
            self._note_relations(work)
            prepared: list[tuple[Row, Matched]] = []
            indexes: list[int] = []
            trace = self.trace if self.trace is not None and self.trace.active else None
            traced: list[tuple[Row, Sequence[router.Fan], Matched, int | None]] = []
            for index, change, fans in work:
                info = await self.cache.table_info(conn, change.relation.namespace, change.relation.name)
                if info is None:
                    continue
                row = Row(change, info)
                matched = router.match(row, fans, txn)
                if trace is not None and any(trace.watching(f.topic.removeprefix("realtime:")) for f in fans):
                    traced.append((row, fans, matched, len(prepared) if matched else None))
                if matched:
                    prepared.append((row, matched))
                    indexes.append(index)
            span.set_attribute("matched", len(prepared))
            visible = await self.visibility.check(conn, txn, prepared)
            if trace is not None:
                for row, fans, matched, idx in traced:
                    trace_change(trace, txn, row, fans, matched, visible.get(idx) if idx is not None else None)
            suffix = ";replayed" if replayed else ""
            delivered = self.delivered
            with tracing.span("realtime.cdc.fanout") as fanout:
                for idx, (row, matched) in enumerate(prepared):
                    allowed = {role: await self.cache.selectable_columns(conn, role, row.info.relid)
                               for role in router.roles(matched)}
                    offset = format_offset(txn.end_lsn, indexes[idx]) + suffix
                    self._deliver(row, router.plan(row, matched, visible.get(idx), allowed), commit_ts, offset)
                fanout.set_attribute("deliveries", self.delivered - delivered)

    def _deliver(self, row: Row, groups: Sequence[router.Group], commit_ts: str, offset: str | None) -> None:
        """One message per group, its ``data`` encoded once per column set and the frame built
        once per wire format for all the group's connections; ``offset`` is the ``ref`` of
        groups that asked for offsets."""
        encoded: dict[tuple[tuple[str, ...], bool], orjson.Fragment] = {}
        for group in groups:
            key = (group.cols, group.old_shown)
            data = encoded.get(key)
            if data is None:
                data = encoded[key] = orjson.Fragment(orjson.dumps(row.data(group.cols, commit_ts, group.old_shown)))
            msg = Message(group.topic, "postgres_changes", {"ids": list(group.ids), "data": data},
                          ref=offset if group.offsets else None)
            self.delivered += hub.deliver(msg, group.peers)
