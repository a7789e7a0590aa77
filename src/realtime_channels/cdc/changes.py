"""postgres_changes: channel subscriptions, change routing, batched RLS and delivery.

Theory of operation
-------------------
A channel's bindings (protocol.md §6.1) are validated against the database when the channel
joins or refreshes its token (§6.3): tables are resolved against the publication, filters
parsed and checked against the columns the subscriber's role may select, the role must exist.
The outcome is one ``system`` message per (re)subscription.  Valid bindings become ``Sub``
records indexed by table.

The replication reader hands over one committed transaction at a time.  For each change the
subscriptions of its table are narrowed by event and filter (§6.2, matched on the new row, or
the old identity for DELETE); then, for tables with RLS, visibility of INSERT/UPDATE rows is
checked **once per table per transaction for all claims cohorts together** (rls.py); column
privileges trim ``record``/``old_record``/``columns`` per role (§6.6, §6.8).  Each channel gets
one message per change listing the ids of all its matching bindings (§6.4).  The change's
``data`` object is encoded once per distinct column set and embedded verbatim in every
channel's message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import psycopg

from ..protocol.codec import Message
from . import catalog, pgoutput, sql
from .filters import FilterError, TypedCondition, matches, parse_filter, validate
from .replication import Change, ReplicationReader, Transaction
from .txwire import decode_transaction, encode_transaction
from .rls import RlsChecker, cohort_key

log = logging.getLogger(__name__)

TOPIC_PREFIX = "realtime:"
EVENTS = ("INSERT", "UPDATE", "DELETE")
#: §6.7: a change larger than this is sent with only its short values.
MAX_RECORD_BYTES = 1_048_576
SHORT_VALUE_BYTES = 64
RETRY_SECONDS = 5.0
LOCK_RETRY_S = 2.0
#: followers consider the stream down when the leader has not reported for this long
LEADER_TTL_S = 6.0
ECHO_TIMEOUT_S = 30.0
#: a subscription made while the stream is (re)starting waits this long before failing
STARTUP_GRACE_S = 3.0
DB_UNAVAILABLE = "Realtime was unable to connect to the project database"


class Peer(Protocol):
    def send(self, msg: Message) -> None: ...


class SubscribeError(Exception):
    """A binding the database cannot serve; ``str()`` is the client-facing message (§6.3)."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True, slots=True)
class Binding:
    """One ``config.postgres_changes`` entry, normalised for matching (the echo keeps the original)."""

    id: int
    event: str  # "*", "INSERT", "UPDATE", "DELETE"
    schema: str
    table: str
    filter_text: str | None
    select: tuple[str, ...] | None

    @property
    def is_wildcard(self) -> bool:
        return "*" in self.schema or "*" in self.table

    def describe(self) -> str:
        """The bracketed parameter list of the §6.3 messages (diagnostic only)."""
        filters = f"[{self.filter_text}]" if self.filter_text else "[]"
        select = "nil" if self.select is None else "[" + ", ".join(self.select) + "]"
        return f"[event: {self.event}, schema: {self.schema}, table: {self.table}, filters: {filters}, select: {select}]"


def parse_binding(raw: Mapping[str, Any]) -> Binding:
    """§6.1 parameters → Binding; raises SubscribeError with the reference's messages."""
    event = raw.get("event")
    event = event.upper() if isinstance(event, str) and event.upper() in EVENTS else "*"
    schema, table = raw.get("schema"), raw.get("table")
    if not isinstance(schema, str) and not isinstance(table, str):
        raise SubscribeError(
            "No subscription params provided. Please provide at least a `schema` or `table` to "
            f"subscribe to: {_params_text(raw)}"
        )
    schema = schema if isinstance(schema, str) else "public"
    table = table if isinstance(table, str) else "*"
    select = raw.get("select")
    if select is not None:
        if not isinstance(select, list) or not all(isinstance(c, str) for c in select):
            raise SubscribeError(
                'Error parsing `select` params: expected a list of column name strings, e.g. select: ["col1", "col2"]'
            )
        if "*" in schema or "*" in table:
            raise SubscribeError(
                "Column selection is not supported for wildcard subscriptions. "
                "Provide an explicit schema and table name."
            )
    flt = raw.get("filter")
    return Binding(
        id=int(raw["id"]),
        event=event,
        schema=schema,
        table=table,
        filter_text=flt if isinstance(flt, str) and flt.strip() else None,
        select=tuple(select) if isinstance(select, list) else None,
    )


def _params_text(raw: Mapping[str, Any]) -> str:
    return "%{" + ", ".join(f'"{k}" => {orjson.dumps(v).decode()}' for k, v in raw.items() if k != "id") + "}"


@dataclass(slots=True)
class Sub:
    """A validated binding of one channel on one table."""

    peer: Peer
    topic: str
    table_key: tuple[str, str]
    binding: Binding
    conds: tuple[TypedCondition, ...]
    role: str
    claims: Mapping[str, Any]
    cohort: str


@dataclass(slots=True)
class ChannelSubs:
    peer: Peer
    topic: str
    join_ref: str | None
    bindings: tuple[dict[str, Any], ...]
    claims: Mapping[str, Any]
    subs: list[Sub] = field(default_factory=list)
    generation: int = 0
    retry: asyncio.TimerHandle | None = None


def system(topic: str, join_ref: str | None, status: str, message: str) -> Message:
    payload = {"extension": "postgres_changes", "status": status, "message": message,
               "channel": topic[len(TOPIC_PREFIX):]}
    return Message(topic, "system", payload, ref=None, join_ref=join_ref)


class PostgresChanges:
    """Owns the side connection, the replication reader and every channel's subscriptions."""

    def __init__(self, dsn: str, *, publication: str, slot: str,
                 on_state: Callable[[str, str | None], None] | None = None,
                 rls_mode: str = "batched") -> None:
        self.dsn = dsn
        #: "batched" (one round trip per table per transaction for every cohort) or
        #: "per_subscriber" (one query per subscriber per change, as Supabase does; kept only
        #: so bench/ can measure the difference in the same run).
        self.rls_mode = rls_mode
        self.publication = publication
        self.slot = slot
        self._on_state = on_state
        self.channels: dict[tuple[int, str], ChannelSubs] = {}
        self.by_table: dict[tuple[str, str], list[Sub]] = {}
        self.rls = RlsChecker()
        self.cache = catalog.CatalogCache()
        self._relations: dict[int, pgoutput.Relation] = {}
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._conn_lock = asyncio.Lock()
        self.reader = self._new_reader()
        self._task: asyncio.Task[None] | None = None
        self._router: asyncio.Task[None] | None = None
        #: sends an op to every node (this one included); None = this node works alone
        self._share: Callable[[dict[str, Any]], None] | None = None
        self._shared: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._echo: dict[int, asyncio.Future[None]] = {}
        #: end LSN of the newest transaction this node has routed (fail-over de-duplication)
        self._routed_lsn = 0
        #: functions' postgres triggers: called on the reading node once per change of a table
        #: ``watch`` accepts, with the change's full ``data`` object (no RLS: functions are trusted)
        self.on_change: Callable[[str, str, str, dict[str, Any]], None] | None = None
        self.watch: Callable[[str, str], bool] = lambda schema, table: False
        self.leading = False
        #: the leader's reader state as last shared, and when (monotonic)
        self._remote: tuple[str, float] = ("connecting", 0.0)
        self.delivered = 0

    def _new_reader(self) -> ReplicationReader:
        return ReplicationReader(self.dsn, slot=self.slot, publication=self.publication,
                                 on_transaction=self._lead_transaction, on_state=self._state_changed)

    @property
    def state(self) -> str:
        """The replication stream's state as this node knows it (the leader's, on followers)."""
        if self.leading or self._share is None:
            return self.reader.state
        state, at = self._remote
        return state if time.monotonic() - at < LEADER_TTL_S else "down"

    # lifecycle -------------------------------------------------------------------------------

    def attach(self, share: Callable[[dict[str, Any]], None]) -> None:
        """Share transactions through the node's PubSub: one node reads, every node routes."""
        self._share = share

    def handle_shared(self, op: dict[str, Any]) -> None:
        """An op from the leader (or from this node as leader); routed in order."""
        if op.get("op") == "state":
            self._remote = (str(op.get("state")), time.monotonic())
        else:
            self._shared.put_nowait(op)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._lead(), name="replication-leader")
        self._router = asyncio.create_task(self._route_shared(), name="changes-router")

    async def stop(self) -> None:
        await self.reader.stop()
        for task in (self._task, self._router):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        for ch in self.channels.values():
            if ch.retry is not None:
                ch.retry.cancel()
        if self._conn is not None:
            await self._conn.close()

    def _state_changed(self, state: str, detail: str | None) -> None:
        if state == "down" and detail != "stopped":
            log.error("postgres_changes: replication is down: %s", detail)
        else:
            log.info("postgres_changes: replication %s", state)
        if self._share is not None:
            self._share({"op": "state", "state": state})
        if self._on_state is not None:
            self._on_state(state, detail)

    # one reader per slot in the cluster ------------------------------------------------------

    async def _lead(self) -> None:
        """Exactly one node reads the slot: the holder of a PostgreSQL advisory lock.  When it
        dies its session ends, the lock is released and another node takes over from the
        stored position (design in README "Scale-out")."""
        key = f"realtime_channels:{self.slot}"
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
            except (psycopg.Error, OSError) as exc:
                log.warning("postgres_changes: cannot connect to PostgreSQL: %s", exc)
                await asyncio.sleep(LOCK_RETRY_S)
                continue
            try:
                async with conn:
                    row = await (await conn.execute("select pg_try_advisory_lock(hashtext(%s))", [key])).fetchone()
                    if not row or not row[0]:  # another node reads; we route what it shares
                        await asyncio.sleep(LOCK_RETRY_S)
                        continue
                    await self._read_while_locked(conn)
            except (psycopg.Error, OSError) as exc:
                log.warning("postgres_changes: lost the reader lock: %s", exc)
            finally:
                self.leading = False

    async def _read_while_locked(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.leading = True
        log.info("postgres_changes: this node reads the replication stream (slot %s)", self.slot)
        self.reader = self._new_reader()
        reader = asyncio.create_task(self.reader.run(), name="replication-reader")
        try:
            while not reader.done():
                await asyncio.sleep(LOCK_RETRY_S)
                await conn.execute("select 1")  # the lock lives as long as this session
                if self._share is not None:
                    self._share({"op": "state", "state": self.reader.state})
        finally:
            await self.reader.stop()
            reader.cancel()

    async def _lead_transaction(self, txn: Transaction) -> None:
        """The reader's callback on the leader: share the transaction and wait until it has
        come back through the PubSub and been routed here, so the position is stored only after
        every node was sent it."""
        if self.on_change is not None:
            await self._report_changes(txn)
        if self._share is None:
            await self._on_transaction(txn)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._echo[txn.end_lsn] = fut
        self._share({"op": "txn", "tx": encode_transaction(txn)})
        try:
            async with asyncio.timeout(ECHO_TIMEOUT_S):
                await fut
        finally:
            self._echo.pop(txn.end_lsn, None)

    async def _report_changes(self, txn: Transaction) -> None:
        watched = [c for c in txn.changes if self.watch(c.relation.namespace, c.relation.name)]
        if not watched or self.on_change is None:
            return
        commit_ts = pgoutput.commit_timestamp(txn.commit_ts_us)
        async with self._conn_lock:
            conn = await self._connection()
            for change in watched:
                info = await self.cache.table_info(conn, change.relation.namespace, change.relation.name)
                if info is None:
                    continue
                row = _Row(change, info)
                data = row.data(row.column_set(frozenset(c.name for c in info.columns), None), commit_ts)
                # plain JSON values: numeric/json are orjson Fragments on the wire path, which a
                # function's filter cannot compare (numeric arrives as a JSON number)
                self.on_change(info.schema, info.name, change.kind, orjson.loads(orjson.dumps(data)))

    async def _route_shared(self) -> None:
        while True:
            op = await self._shared.get()
            txn = decode_transaction(op["tx"])
            fut = self._echo.get(txn.end_lsn)
            if txn.end_lsn <= self._routed_lsn:
                # A new leader re-reads from the stored position, which can be one transaction
                # behind what this node already routed; end LSNs only grow, so skip it.
                if fut is not None and not fut.done():
                    fut.set_result(None)
                continue
            self._routed_lsn = txn.end_lsn
            try:
                await self._on_transaction(txn)
            except Exception as exc:  # noqa: BLE001 - one bad transaction must not stop routing
                log.error("postgres_changes: could not route transaction %s: %s", txn.xid, exc)
                if fut is not None and not fut.done():
                    fut.set_exception(exc)
                continue
            if fut is not None and not fut.done():
                fut.set_result(None)

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        """The side connection for catalog look-ups and RLS checks (re-opened when broken)."""
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        conn = await psycopg.AsyncConnection.connect(
            self.dsn, autocommit=True, options="-c DateStyle=ISO -c TimeZone=UTC -c extra_float_digits=3"
        )
        await sql.install(conn)
        self._conn = conn
        self.cache.invalidate()
        return conn

    # subscriptions (§6.3) --------------------------------------------------------------------

    def subscribe(self, conn_id: int, peer: Peer, topic: str, join_ref: str | None,
                  bindings: Sequence[dict[str, Any]], claims: Mapping[str, Any]) -> None:
        key = (conn_id, topic)
        old = self.channels.get(key)
        generation = old.generation + 1 if old is not None else 0
        self._drop(key)
        ch = ChannelSubs(peer, topic, join_ref, tuple(bindings), claims, generation=generation)
        self.channels[key] = ch
        asyncio.get_running_loop().create_task(self._subscribe(key, ch))

    def unsubscribe(self, conn_id: int, topic: str) -> None:
        self._drop((conn_id, topic))

    def _drop(self, key: tuple[int, str]) -> None:
        ch = self.channels.pop(key, None)
        if ch is None:
            return
        if ch.retry is not None:
            ch.retry.cancel()
        for sub in ch.subs:
            subs = self.by_table.get(sub.table_key)
            if subs is not None and sub in subs:
                subs.remove(sub)
                if not subs:
                    del self.by_table[sub.table_key]

    async def _subscribe(self, key: tuple[int, str], ch: ChannelSubs) -> None:
        try:
            resolved = await self._resolve(ch)
        except SubscribeError as err:
            if self.channels.get(key) is not ch:
                return
            ch.peer.send(system(ch.topic, ch.join_ref, "error", str(err)))
            if err.transient:  # §6.3: transient problems are retried every 5–10 s
                loop = asyncio.get_running_loop()
                ch.retry = loop.call_later(RETRY_SECONDS, lambda: loop.create_task(self._subscribe(key, ch)))
            return
        if self.channels.get(key) is not ch:
            return  # left or re-subscribed while we were validating
        ch.subs = [sub for _, sub in resolved]
        for table_key, sub in resolved:
            self.by_table.setdefault(table_key, []).append(sub)
        ch.peer.send(system(ch.topic, ch.join_ref, "ok", "Subscribed to PostgreSQL"))

    async def _resolve(self, ch: ChannelSubs) -> list[tuple[tuple[str, str], Sub]]:
        bindings = [parse_binding(raw) for raw in ch.bindings]
        conds = {b.id: _parse_conds(b) for b in bindings}
        role = ch.claims.get("role")
        if not isinstance(role, str):
            raise SubscribeError("Unable to subscribe to changes with given parameters. The token has no role claim")
        if self.state != "streaming":
            await self._wait_streaming(STARTUP_GRACE_S)  # just started, or not yet told by the leader
        if self.state != "streaming":
            # the reason (host, port, driver text) goes to the log, never on the wire
            log.info("postgres_changes: subscription deferred, replication is %s: %s",
                     self.state, self.reader.detail)
            raise SubscribeError(DB_UNAVAILABLE, transient=True)
        try:
            async with self._conn_lock:
                conn = await self._connection()
                return await self._resolve_in_db(conn, ch, bindings, conds, role)
        except (psycopg.OperationalError, OSError) as exc:
            log.warning("postgres_changes: subscription deferred: %s", exc)
            raise SubscribeError(DB_UNAVAILABLE, transient=True) from exc

    async def _wait_streaming(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.state != "streaming" and time.monotonic() < deadline:
            await asyncio.sleep(0.1)  # the state is pushed by the reader or the leader's ops

    async def _resolve_in_db(self, conn: psycopg.AsyncConnection[Any], ch: ChannelSubs, bindings: list[Binding],
                             conds: Mapping[int, tuple[Any, ...]], role: str) -> list[tuple[tuple[str, str], Sub]]:
        published = await self.cache.publication_tables(conn, self.publication)
        cohort = cohort_key(ch.claims)
        out: list[tuple[tuple[str, str], Sub]] = []
        for b in bindings:
            tables = catalog.match_tables(published, b.schema, b.table)
            if not tables:
                raise SubscribeError(
                    "Unable to subscribe to changes with given parameters. Please check Realtime is "
                    f"enabled for the given connect parameters: {b.describe()}"
                )
            if not await self.cache.role_exists(conn, role):
                raise _db_error(b, f'ERROR 22023 (invalid_parameter_value) role "{role}" does not exist')
            for schema, table in tables:
                info = await self.cache.table_info(conn, schema, table)
                if info is None:
                    continue
                allowed = await self.cache.selectable_columns(conn, role, info.relid)
                typed = self._typed_conditions(b, conds[b.id], info, allowed)
                out.append(((schema, table), Sub(ch.peer, ch.topic, (schema, table), b, typed, role, ch.claims, cohort)))
        return out

    def _typed_conditions(self, b: Binding, parsed: tuple[Any, ...], info: catalog.TableInfo,
                          allowed: frozenset[str]) -> tuple[TypedCondition, ...]:
        columns = {c.name: c.type_name for c in info.columns if c.name in allowed}
        for name in b.select or ():
            if name not in columns:
                raise _db_error(b, f"invalid column for select {name}")
        try:
            return validate(parsed, columns)
        except FilterError as err:
            raise _db_error(b, str(err)) from err

    # changes (§6.4–6.8) ----------------------------------------------------------------------

    async def _on_transaction(self, txn: Transaction) -> None:
        if not self.by_table:
            return
        work = [(change, subs) for change in txn.changes
                if (subs := self.by_table.get((change.relation.namespace, change.relation.name)))]
        if not work:
            return
        try:
            async with self._conn_lock:
                conn = await self._connection()
                await self._route(conn, txn, work)
        except (psycopg.OperationalError, OSError) as exc:
            # The side connection broke: the transaction is not acknowledged, so the reader
            # will hand it over again once it reconnects (nothing is lost).
            log.error("postgres_changes: database error while routing a transaction: %s", exc)
            raise

    async def _route(self, conn: psycopg.AsyncConnection[Any],
                     txn: Transaction, work: list[tuple[Change, list[Sub]]]) -> None:
        commit_ts = pgoutput.commit_timestamp(txn.commit_ts_us)
        prepared: list[tuple[_Row, list[Sub]]] = []
        checked: set[int] = set()
        for change, subs in work:
            rel = change.relation
            if rel.relid not in checked:
                # Compared by value: shared transactions carry fresh Relation objects.  A new
                # shape means a schema change (pgoutput sends a Relation message after one).
                checked.add(rel.relid)
                if self._relations.get(rel.relid) != rel:
                    self._relations[rel.relid] = rel
                    self.cache.invalidate(rel.relid)
            info = await self.cache.table_info(conn, rel.namespace, rel.name)
            if info is None:
                continue
            row = _Row(change, info)
            hits = [s for s in subs if s.binding.event in ("*", change.kind) and row.matches(s.conds)]
            if hits:
                prepared.append((row, hits))
        visible = await self._check_rls(conn, txn, prepared)
        for idx, (row, hits) in enumerate(prepared):
            await self._deliver(conn, row, hits, visible.get(idx), commit_ts)

    async def _check_rls(self, conn: psycopg.AsyncConnection[Any], txn: Transaction,
                         prepared: list[tuple[_Row, list[Sub]]]) -> dict[int, _Seen]:
        """Per change index, the cohorts that may see it, and those that may see its old image
        too — one round trip per table (§6.6; ``rls.py``)."""
        by_table: dict[int, list[int]] = {}
        for idx, (row, _) in enumerate(prepared):
            if row.info.rls_enabled and row.kind != "DELETE" and row.info.pk:
                by_table.setdefault(row.info.relid, []).append(idx)
        result: dict[int, _Seen] = {}
        for indexes in by_table.values():
            info = prepared[indexes[0]][0].info
            cohorts: dict[str, Mapping[str, Any]] = {}
            for i in indexes:
                for sub in prepared[i][1]:
                    cohorts.setdefault(sub.cohort, sub.claims)
            for i in indexes:
                result[i] = _Seen(set(), set())
            if self.rls_mode == "per_subscriber":
                await self._check_each(conn, txn, info, prepared, indexes, result)
            else:
                await self._check_images(conn, txn, info, prepared, indexes, cohorts, result)
        return result

    async def _check_images(self, conn: psycopg.AsyncConnection[Any], txn: Transaction, info: catalog.TableInfo,
                            prepared: list[tuple[_Row, list[Sub]]], indexes: list[int],
                            cohorts: Mapping[str, Mapping[str, Any]], result: dict[int, _Seen]) -> None:
        """Judge each change's own images (new, and old when the change carries the whole old
        row); images lacking a column's value fall back to the row's current state."""
        keys = list(cohorts)
        claims = [cohorts[k] for k in keys]
        table_columns = {c.name for c in info.columns}
        groups: dict[tuple[str, ...], list[tuple[int, str, list[str | None]]]] = {}
        fallback: list[int] = []
        for i in indexes:
            row = prepared[i][0]
            columns = row.image_columns()
            new = row.image("new")
            if new is None or not table_columns <= set(columns):
                fallback.append(i)
                continue
            group = groups.setdefault(columns, [])
            group.append((i, "new", new))
            old = row.image("old") if row.kind == "UPDATE" and row.change.old_kind == "O" else None
            if old is not None:
                group.append((i, "old", old))
        for columns, entries in groups.items():
            seen = await self.rls.visible_images(conn, info, txn.xid, columns, [e[2] for e in entries], claims)
            for cohort, admitted in zip(keys, seen, strict=True):
                for r in admitted:
                    i, which, _ = entries[r]
                    (result[i].new if which == "new" else result[i].old).add(cohort)
        if fallback:
            seen = await self.rls.visible(conn, info, [prepared[i][0].pk_text() for i in fallback], claims, txn.xid)
            for cohort, admitted in zip(keys, seen, strict=True):
                for r in admitted:
                    result[fallback[r]].new.add(cohort)

    async def _check_each(self, conn: psycopg.AsyncConnection[Any], txn: Transaction, info: catalog.TableInfo,
                          prepared: list[tuple[_Row, list[Sub]]], indexes: list[int],
                          result: dict[int, _Seen]) -> None:
        """The baseline: one visibility query per subscriber per change, on the current row
        (Supabase's way; the old image is not judged)."""
        for i in indexes:
            row, subs = prepared[i]
            for sub in subs:
                seen = await self.rls.visible(conn, info, [row.pk_text()], [sub.claims], txn.xid)
                if seen[0]:
                    result[i].new.add(sub.cohort)
                    result[i].old.add(sub.cohort)

    async def _deliver(self, conn: psycopg.AsyncConnection[Any], row: _Row, hits: list[Sub],
                       visible: _Seen | None, commit_ts: str) -> None:
        # group by channel, column set and whether the old image may be shown: one message per
        # channel per distinct payload (§6.4)
        groups: dict[tuple[int, str, tuple[str, ...], bool], tuple[Sub, list[int]]] = {}
        encoded: dict[tuple[tuple[str, ...], bool], bytes] = {}
        # the column set depends only on (role, select): computed once per row, not per subscriber
        column_sets: dict[tuple[str, tuple[str, ...] | None], tuple[str, ...]] = {}
        for sub in hits:
            if visible is not None and sub.cohort not in visible.new:
                continue
            cols_key = (sub.role, sub.binding.select)
            cols = column_sets.get(cols_key)
            if cols is None:
                allowed = await self.cache.selectable_columns(conn, sub.role, row.info.relid)
                cols = column_sets[cols_key] = row.column_set(allowed, sub.binding.select)
            gkey = (id(sub.peer), sub.topic, cols, visible is None or sub.cohort in visible.old)
            group = groups.get(gkey)
            if group is None:
                groups[gkey] = (sub, [sub.binding.id])
            elif sub.binding.id not in group[1]:
                group[1].append(sub.binding.id)
        for (_, topic, cols, old_shown), (sub, ids) in groups.items():
            data = encoded.get((cols, old_shown))
            if data is None:
                data = encoded[(cols, old_shown)] = orjson.dumps(row.data(cols, commit_ts, old_shown))
            payload = {"ids": ids, "data": orjson.Fragment(data)}
            sub.peer.send(Message(topic, "postgres_changes", payload))
            self.delivered += 1


@dataclass(slots=True)
class _Seen:
    """The cohorts whose policies admit a change's new image, and its old image."""

    new: set[str]
    old: set[str]


def _parse_conds(b: Binding) -> tuple[Any, ...]:
    try:
        return parse_filter(b.filter_text)
    except FilterError as err:
        raise SubscribeError(str(err)) from err


def _db_error(b: Binding, detail: str) -> SubscribeError:
    return SubscribeError(
        "Unable to subscribe to changes with given parameters. An exception happened so please "
        f"check your connect parameters: {b.describe()}. Exception: {detail}"
    )


class _Row:
    """One change's decoded values, computed lazily and shared by every subscriber."""

    __slots__ = ("_bytes", "_filter_row", "_new", "_old", "change", "info", "kind")

    def __init__(self, change: Change, info: catalog.TableInfo) -> None:
        self.change = change
        self.info = info
        self.kind = change.kind
        self._new: dict[str, Any] | None = None
        self._old: dict[str, Any] | None = None
        self._filter_row: dict[str, Any] | None = None
        self._bytes = -1

    # values ----------------------------------------------------------------------------------

    def _columns(self) -> Sequence[pgoutput.Column]:
        return self.change.relation.columns

    def _convert(self, tup: pgoutput.TupleData | None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if tup is None:
            return out
        types = {c.name: c for c in self.info.columns}
        for col, raw in zip(self._columns(), tup.values, strict=False):
            if raw is pgoutput.UNCHANGED:
                continue
            if raw is None:
                out[col.name] = None
                continue
            info = types.get(col.name)
            conv = (pgoutput.make_converter(col.type_oid, info.base_type_oid, info.element_type_oid)
                    if info is not None else pgoutput.make_converter(col.type_oid))
            out[col.name] = conv(bytes(raw))
        return out

    def new(self) -> dict[str, Any]:
        if self._new is None:
            self._new = self._convert(self.change.new)
            if self.change.old_kind == "O" and self.change.old is not None:
                # §6.7: unchanged TOAST values are filled from the full old row when we have it
                old = self.old_full()
                for col, raw in zip(self._columns(), self.change.new.values if self.change.new else (), strict=False):
                    if raw is pgoutput.UNCHANGED and col.name in old:
                        self._new[col.name] = old[col.name]
        return self._new

    def old_full(self) -> dict[str, Any]:
        if self._old is None:
            self._old = self._convert(self.change.old)
            if self.change.old_kind == "K":  # key-only tuple: other columns are sent as NULL
                keys = {c.name for c in self._columns() if c.flags & 1}
                self._old = {k: v for k, v in self._old.items() if k in keys}
        return self._old

    def old_record(self) -> dict[str, Any]:
        """§6.5/§6.7: replica-identity values; without an old tuple, the key of the new row."""
        if self.change.old is not None:
            old = self.old_full()
        else:
            new = self.new()
            old = {k: new[k] for k in self.info.pk if k in new}
        if self.kind == "DELETE" and self.info.rls_enabled:
            old = {k: v for k, v in old.items() if k in self.info.pk}  # §6.6
        return old

    def image_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self._columns())

    def image(self, which: str) -> list[str | None] | None:
        """The new or old row image as text values for ``image_columns()``, the new image's
        unchanged TOAST values filled from a full old image; None when a value is unknown."""
        tup = self.change.new if which == "new" else self.change.old
        if tup is None:
            return None
        old = self.change.old.values if self.change.old_kind == "O" and self.change.old is not None else None
        out: list[str | None] = []
        for pos, raw in enumerate(tup.values):
            if raw is pgoutput.UNCHANGED and old is not None and pos < len(old):
                raw = old[pos]
            if raw is pgoutput.UNCHANGED:
                return None
            out.append(None if raw is None else bytes(raw).decode())
        return out

    def pk_text(self) -> list[str | None]:
        values = dict(zip((c.name for c in self._columns()), self.change.new.values if self.change.new else (),
                          strict=False))
        out: list[str | None] = []
        for k in self.info.pk:
            raw = values.get(k)
            out.append(None if raw is None or raw is pgoutput.UNCHANGED else bytes(raw).decode())
        return out

    # filters ---------------------------------------------------------------------------------

    def matches(self, conds: Sequence[TypedCondition]) -> bool:
        if not conds:
            return True
        if self._filter_row is None:
            self._filter_row = self._text_row()
        return matches(conds, self._filter_row)

    def _text_row(self) -> dict[str, Any]:
        """Values for filter matching: the text form (filters read it as a literal of the column
        type), jsonb decoded; DELETE uses the old identity columns (§6.2)."""
        tup = self.change.old if self.kind == "DELETE" else self.change.new
        if tup is None:
            return {}
        kinds = {c.name: c.type_name for c in self.info.columns}
        key_only = self.kind == "DELETE" and self.change.old_kind == "K"
        out: dict[str, Any] = {}
        for col, raw in zip(self._columns(), tup.values, strict=False):
            if raw is pgoutput.UNCHANGED or (key_only and not col.flags & 1):
                continue
            if raw is None:
                out[col.name] = None
                continue
            text = bytes(raw).decode()
            out[col.name] = orjson.loads(text) if kinds.get(col.name) in ("jsonb", "json") else text
        return out

    # payload ---------------------------------------------------------------------------------

    def column_set(self, allowed: frozenset[str], select: tuple[str, ...] | None) -> tuple[str, ...]:
        """§6.5/§6.8: selectable columns in table order, restricted by ``select`` (PK kept);
        ``UNAUTHORIZED`` / no PK are reported as errors instead (§6.7)."""
        if self.kind != "DELETE" and not self.info.pk:
            return ("#nopk",)
        if any(k not in allowed for k in self.info.pk):
            return ("#unauthorized",)
        return tuple(c.name for c in self.info.columns
                     if c.name in allowed and (select is None or c.name in select or c.is_pk))

    def data(self, cols: tuple[str, ...], commit_ts: str, old_shown: bool = True) -> dict[str, Any]:
        """The change's ``data`` object for a subscriber allowed ``cols``; without ``old_shown``
        (its policies do not admit the old image) ``old_record`` carries only the key."""
        info = self.info
        if cols in (("#nopk",), ("#unauthorized",)):
            err = "Error 400: Bad Request, no primary key" if cols == ("#nopk",) else "Error 401: Unauthorized"
            out: dict[str, Any] = {"schema": info.schema, "table": info.name, "type": self.kind,
                                   "commit_timestamp": None, "columns": [], "errors": [err]}
            if self.kind != "DELETE":
                out["record"] = {}
            if self.kind != "INSERT":
                out["old_record"] = {}
            return out
        wanted = set(cols)
        data: dict[str, Any] = {
            "schema": info.schema,
            "table": info.name,
            "type": self.kind,
            "commit_timestamp": commit_ts,
            "columns": [{"name": c.name, "type": c.type_name} for c in info.columns if c.name in wanted],
        }
        errors: list[str] | None = None
        if self.kind != "DELETE":
            data["record"] = {k: v for k, v in self.new().items() if k in wanted}
        if self.kind != "INSERT":
            old = self.old_record()
            data["old_record"] = {k: v for k, v in old.items() if k in wanted and (old_shown or k in info.pk)}
        if self._size() > MAX_RECORD_BYTES:
            errors = ["Error 413: Payload Too Large"]
            for key in ("record", "old_record"):
                if key in data:
                    data[key] = {k: v for k, v in data[key].items() if len(orjson.dumps(v)) <= SHORT_VALUE_BYTES}
        data["errors"] = errors
        return data

    def _size(self) -> int:
        if self._bytes < 0:  # once per row, whatever the number of column sets
            total = 0
            for tup in (self.change.new, self.change.old):
                if tup is not None:
                    total += sum(len(v) for v in tup.values if isinstance(v, bytes | bytearray | memoryview))
            self._bytes = total
        return self._bytes

