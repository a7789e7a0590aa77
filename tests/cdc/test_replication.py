"""ReplicationReader against a real private PostgreSQL (design.md §3, postgres-cdc.md).

Each test gets its own slot, publication and table in a database of this module, so tests do
not see each other's changes; slots are dropped afterwards (an abandoned slot pins WAL).  The
PostgreSQL-restart test runs its own cluster so the shared one is never restarted under others.
"""

from __future__ import annotations

import asyncio
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgcluster import PgCluster
from realtime_channels.cdc import pgoutput
from realtime_channels.cdc.replication import ReplicationReader, Transaction

DBNAME = "rc_test_replication"
READER_PROC = Path(__file__).with_name("reader_proc.py")


def _with_db(dsn: str, dbname: str) -> str:
    return dsn.rsplit("/", 1)[0] + "/" + dbname


async def wait_until(cond: Callable[[], Awaitable[bool] | bool], timeout: float, what: str) -> None:
    """Poll a condition until it holds (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        result = cond()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture(scope="module")
def db_dsn(pg_cluster: Any) -> Iterator[str]:
    with psycopg.connect(pg_cluster.dsn, autocommit=True) as conn:
        conn.execute(f"drop database if exists {DBNAME} with (force)")
        conn.execute(f"create database {DBNAME}")
    yield _with_db(pg_cluster.dsn, DBNAME)
    with psycopg.connect(pg_cluster.dsn, autocommit=True) as conn:
        for (slot,) in conn.execute("select slot_name from pg_replication_slots where database = %s",
                                    (DBNAME,)).fetchall():
            conn.execute("select pg_drop_replication_slot(%s)", (slot,))
        conn.execute(f"drop database {DBNAME} with (force)")


@dataclass
class Env:
    dsn: str
    slot: str
    pub: str
    table: str
    readers: list[ReplicationReader] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


async def drop_slot(dsn: str, slot: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for _ in range(250):
            row = await (await conn.execute(
                "select active_pid from pg_replication_slots where slot_name = %s", (slot,))).fetchone()
            if row is None:
                return
            if row[0] is None:
                await conn.execute("select pg_drop_replication_slot(%s)", (slot,))
                return
            await conn.execute("select pg_terminate_backend(%s)", (row[0],))
            await asyncio.sleep(0.02)
        raise AssertionError(f"slot {slot} stayed active")


@pytest.fixture
async def env(db_dsn: str) -> AsyncIterator[Env]:
    tag = uuid.uuid4().hex[:8]
    e = Env(db_dsn, f"rc_slot_{tag}", f"rc_pub_{tag}", f"items_{tag}")
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:
        await conn.execute(f"create table {e.table} (id bigint primary key, v text)")
    yield e
    for reader in e.readers:
        await reader.stop()
    for task in e.tasks:
        await task  # run() never raises
    await drop_slot(db_dsn, e.slot)


@dataclass
class Sink:
    txns: list[Transaction] = field(default_factory=list)
    states: list[tuple[str, str | None]] = field(default_factory=list)

    async def on_transaction(self, txn: Transaction) -> None:
        self.txns.append(txn)

    def on_state(self, state: str, detail: str | None) -> None:
        self.states.append((state, detail))

    def ids(self) -> list[int]:
        return [int(_value(c.relation, c.new, "id")) for t in self.txns for c in t.changes
                if c.kind == "INSERT" and c.new is not None]


def _value(rel: pgoutput.Relation, tup: pgoutput.TupleData | None, column: str) -> Any:
    assert tup is not None
    value = tup.values[[c.name for c in rel.columns].index(column)]
    return value.decode() if isinstance(value, bytes) else value


def start_reader(e: Env, sink: Sink, *, dsn: str | None = None, slot: str | None = None,
                 **kw: Any) -> ReplicationReader:
    kw.setdefault("status_interval", 0.2)
    kw.setdefault("reconnect_min", 0.05)
    kw.setdefault("reconnect_max", 0.3)
    reader = ReplicationReader(dsn or e.dsn, slot=slot or e.slot, publication=e.pub,
                               on_transaction=sink.on_transaction, on_state=sink.on_state, **kw)
    e.readers.append(reader)
    e.tasks.append(asyncio.create_task(reader.run()))
    return reader


async def sql(dsn: str, *statements: str) -> list[tuple[Any, ...]]:
    """Run statements in autocommit mode; the rows of the last one."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = None
        for statement in statements:
            cur = await conn.execute(statement)
        return await cur.fetchall() if cur is not None and cur.description else []


async def table_ids(dsn: str, table: str) -> list[int]:
    return [int(r[0]) for r in await sql(dsn, f"select id from {table} order by id")]


class Writer:
    """Inserts rows continuously: mostly one per transaction, every 5th transaction three rows.
    Reconnects after errors (PostgreSQL restarts); the table is the ground truth of what committed."""

    def __init__(self, dsn: str, table: str, pause: float = 0.002) -> None:
        self.dsn, self.table, self.pause = dsn, table, pause
        self.next_id = 1
        self.commits = 0
        self._stop = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
                    while not self._stop.is_set():
                        n = 3 if self.commits % 5 == 4 else 1
                        ids = list(range(self.next_id, self.next_id + n))
                        self.next_id += n  # never reused, even when the commit's outcome is unknown
                        async with conn.transaction():
                            for i in ids:
                                await conn.execute(f"insert into {self.table} (id, v) values (%s, 'w')", (i,))
                        self.commits += 1
                        await asyncio.sleep(self.pause)  # pacing the load, not waiting for a condition
            except psycopg.OperationalError:
                await asyncio.sleep(0.05)  # PostgreSQL is restarting

    async def stop(self) -> None:
        self._stop.set()
        await self.task


# --- decoding, grouping, order -------------------------------------------------------------


async def test_changes_arrive_as_committed_transactions(env: Env) -> None:
    await sql(env.dsn, f"create publication {env.pub} for table {env.table}")
    sink = Sink()
    reader = start_reader(env, sink)
    assert await reader.wait_streaming(10)
    assert sink.states[:2] == [("connecting", None), ("streaming", None)]
    assert reader.state == "streaming"

    before = datetime.now(timezone.utc)
    async with await psycopg.AsyncConnection.connect(env.dsn, autocommit=True) as conn:
        await conn.execute(f"insert into {env.table} values (1, 'one')")
        async with conn.transaction():  # one transaction, three statements
            await conn.execute(f"insert into {env.table} values (2, 'two')")
            await conn.execute(f"update {env.table} set v = 'uno' where id = 1")
            await conn.execute(f"delete from {env.table} where id = 2")
        await conn.execute(f"alter table {env.table} add column extra int")
        await conn.execute(f"insert into {env.table} values (3, 'three', 42)")
        await conn.execute(f"update {env.table} set id = 4 where id = 3")  # key change: old key sent
        await conn.execute(f"truncate {env.table}")  # not part of any Transaction
        await conn.execute(f"insert into {env.table} values (5, 'five', null)")
    await wait_until(lambda: len(sink.txns) == 5, 10, "five transactions")
    after = datetime.now(timezone.utc)

    t1, t2, t3, t4, t5 = sink.txns
    assert [c.kind for c in t1.changes] == ["INSERT"]
    assert [c.kind for c in t2.changes] == ["INSERT", "UPDATE", "DELETE"]
    rel = t1.changes[0].relation
    assert (rel.namespace, rel.name, [c.name for c in rel.columns]) == ("public", env.table, ["id", "v"])
    assert [c.name for c in rel.columns if c.is_key] == ["id"]
    assert t1.changes[0].new == pgoutput.TupleData((b"1", b"one"))
    ins, upd, dele = t2.changes
    assert ins.new == pgoutput.TupleData((b"2", b"two")) and ins.old is None and ins.old_kind is None
    assert upd.new == pgoutput.TupleData((b"1", b"uno")) and upd.old is None  # REPLICA IDENTITY DEFAULT
    assert dele.new is None and dele.old_kind == "K" and dele.old == pgoutput.TupleData((b"2", None))

    # ALTER TABLE mid-stream: the new Relation replaces the cached one for the next change.
    assert [c.name for c in t3.changes[0].relation.columns] == ["id", "v", "extra"]
    assert t3.changes[0].new == pgoutput.TupleData((b"3", b"three", b"42"))
    assert t3.changes[0].relation.relid == rel.relid
    assert t4.changes[0].kind == "UPDATE" and t4.changes[0].old_kind == "K"
    assert t4.changes[0].old == pgoutput.TupleData((b"3", None, None))
    assert t5.changes[0].new == pgoutput.TupleData((b"5", b"five", None))

    # Commit order, positions and timestamps.
    assert all(a.end_lsn < b.end_lsn for a, b in zip(sink.txns, sink.txns[1:]))
    assert all(t.commit_lsn < t.end_lsn for t in sink.txns)
    assert len({t.xid for t in sink.txns}) == 5
    for t in sink.txns:
        ts = datetime.fromisoformat(pgoutput.commit_timestamp(t.commit_ts_us).replace("Z", "+00:00"))
        assert before.replace(microsecond=0) <= ts.replace(microsecond=0) <= after

    # The position is stored after each handled transaction.
    await wait_until(lambda: stored_is(env, t5.end_lsn), 5, "stored position")


async def stored_is(env: Env, lsn: int) -> bool:
    return await stored_lsn(env) == lsn


async def stored_lsn(env: Env) -> int | None:
    rows = await sql(env.dsn, f"select end_lsn::text from realtime.rc_replication_position "
                              f"where slot_name = '{env.slot}'")
    return pgoutput.str_to_lsn(rows[0][0]) if rows else None


async def slot_info(env: Env) -> tuple[Any, ...] | None:
    rows = await sql(env.dsn, f"select plugin, temporary, active_pid, confirmed_flush_lsn::text "
                              f"from pg_replication_slots where slot_name = '{env.slot}'")
    return rows[0] if rows else None


async def test_setup_is_idempotent_creates_empty_publication_and_permanent_slot(env: Env) -> None:
    assert await sql(env.dsn, f"select 1 from pg_publication where pubname = '{env.pub}'") == []
    sink = Sink()
    first = start_reader(env, sink)
    assert await first.wait_streaming(10)
    assert await sql(env.dsn, f"select puballtables from pg_publication where pubname = '{env.pub}'") == [(False,)]
    assert await sql(env.dsn, f"select * from pg_publication_tables where pubname = '{env.pub}'") == []
    info = await slot_info(env)
    assert info is not None and info[0] == "pgoutput" and info[1] is False and info[2] is not None

    # Tables join the publication mid-stream, without a reconnect.
    await sql(env.dsn, f"alter publication {env.pub} add table {env.table}",
              f"insert into {env.table} values (1, 'a')")
    await wait_until(lambda: sink.ids() == [1], 10, "row 1")
    end = sink.txns[-1].end_lsn
    await first.stop()
    assert first.state == "down" and sink.states[-1] == ("down", "stopped")
    info = await slot_info(env)  # permanent: survives its consumer; the final ack reached the server
    assert info is not None and info[2] is None and pgoutput.str_to_lsn(info[3]) >= end

    # Second run over everything that exists: no errors, same objects, resumes after row 1.
    await sql(env.dsn, f"insert into {env.table} values (2, 'b')")
    sink2 = Sink()
    second = start_reader(env, sink2)
    assert await second.wait_streaming(10)
    await wait_until(lambda: sink2.ids() == [2], 10, "row 2 after restart")
    assert [s for s, _ in sink2.states] == ["connecting", "streaming"]
    assert await sql(env.dsn, f"select count(*) from pg_publication where pubname = '{env.pub}'") == [(1,)]
    assert await sql(env.dsn, "select count(*) from realtime.rc_replication_position "
                              f"where slot_name = '{env.slot}'") == [(1,)]


async def test_idle_keepalives_are_acknowledged(env: Env) -> None:
    """Writes to unpublished tables must not leave the slot behind (postgres-cdc.md "Pitfalls")."""
    sink = Sink()
    reader = start_reader(env, sink)
    assert await reader.wait_streaming(10)
    rows = await sql(env.dsn, f"insert into {env.table} select g, 'x' from generate_series(1, 5000) g",
                     "select pg_current_wal_lsn()::text")
    target = pgoutput.str_to_lsn(rows[0][0])

    async def caught_up() -> bool:
        info = await slot_info(env)
        return info is not None and pgoutput.str_to_lsn(info[3]) >= target

    await wait_until(caught_up, 10, "confirmed_flush_lsn past the unpublished writes")
    assert sink.txns == []


# --- faults ----------------------------------------------------------------------------------


async def test_walsender_terminated_reconnects_without_loss_or_duplicates(env: Env) -> None:
    await sql(env.dsn, f"create publication {env.pub} for table {env.table}")
    sink = Sink()
    reader = start_reader(env, sink)
    assert await reader.wait_streaming(10)
    writer = Writer(env.dsn, env.table)
    try:
        for round_ in range(2):
            seen = len(sink.ids())
            await wait_until(lambda: len(sink.ids()) > seen + 20, 10, "deliveries")
            info = await slot_info(env)
            assert info is not None and info[2] is not None
            await sql(env.dsn, f"select pg_terminate_backend({info[2]})")
            await wait_until(lambda: sink.states.count(("streaming", None)) == round_ + 2, 10, "reconnect")
    finally:
        await writer.stop()
    expected = await table_ids(env.dsn, env.table)
    await wait_until(lambda: len(sink.ids()) >= len(expected), 10, "catch-up")
    assert sorted(sink.ids()) == expected and len(set(sink.ids())) == len(sink.ids())
    assert sink.ids() == sorted(sink.ids())  # commit order
    downs = [d or "" for s, d in sink.states if s == "down"]
    lost = [d for d in downs if d == "replication connection lost: terminating connection due to administrator command"]
    assert len(lost) == 2
    # A retry can meet the slot still held by the exiting walsender; nothing else may go wrong.
    assert all(d in lost or "is in use by another consumer" in d for d in downs), downs


async def test_slot_in_use_reports_down_then_takes_over(env: Env) -> None:
    await sql(env.dsn, f"create publication {env.pub} for table {env.table}")
    sink_a, sink_b = Sink(), Sink()
    a = start_reader(env, sink_a)
    assert await a.wait_streaming(10)
    b = start_reader(env, sink_b)
    await wait_until(lambda: sum(s == "down" for s, _ in sink_b.states) >= 2, 10, "b retrying")
    detail = next(d for s, d in sink_b.states if s == "down")
    assert detail is not None and f"replication slot {env.slot} is in use by another consumer" in detail
    assert b.state != "streaming"

    await sql(env.dsn, f"insert into {env.table} values (1, 'a')")
    await wait_until(lambda: sink_a.ids() == [1], 10, "a delivers")
    await a.stop()
    assert await b.wait_streaming(10)
    await sql(env.dsn, f"insert into {env.table} values (2, 'b')")
    await wait_until(lambda: sink_b.ids() == [2], 10, "b takes over after a")
    assert sink_a.ids() == [1]


async def test_clear_details_for_unreachable_server_and_missing_replication_role(env: Env) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    sink = Sink()
    reader = start_reader(env, sink, dsn=f"postgresql://postgres@127.0.0.1:{closed_port}/postgres")
    await wait_until(lambda: sum(s == "down" for s, _ in sink.states) >= 3, 10, "retries")
    details = {d for s, d in sink.states if s == "down"}
    assert all(d is not None and d.startswith("cannot connect to PostgreSQL: ") for d in details), details
    assert not await reader.wait_streaming(0.05)

    role = f"rc_norepl_{uuid.uuid4().hex[:6]}"
    await sql(env.dsn, f"create role {role} login")
    try:
        sink2 = Sink()
        dsn = env.dsn.replace("postgres@", f"{role}@", 1)
        reader2 = start_reader(env, sink2, dsn=dsn)
        await wait_until(lambda: any(s == "down" for s, _ in sink2.states), 10, "down")
        detail = next(d for s, d in sink2.states if s == "down")
        assert detail == f"role {role} lacks the REPLICATION attribute (ALTER ROLE {role} REPLICATION)"
        t0 = time.monotonic()
        await reader2.stop()
        await reader.stop()
        assert time.monotonic() - t0 < 1.0  # stopping a retrying reader is prompt
        assert reader2.state == "down"
    finally:
        await sql(env.dsn, f"drop role {role}")


async def test_backlog_throughput_and_loop_stays_responsive(env: Env) -> None:
    """A backlog decoded without awaiting must still let other tasks run; prints the catch-up rate."""
    await sql(env.dsn, f"create publication {env.pub} for table {env.table}")
    first = start_reader(env, Sink())
    assert await first.wait_streaming(10)  # creates the slot
    await first.stop()
    n_big, n_small = 50_000, 3_000
    await sql(env.dsn, f"insert into {env.table} select g, md5(g::text) from generate_series(1, {n_big}) g")
    await sql(env.dsn, f"do $$ begin for i in {n_big + 1}..{n_big + n_small} loop "
                       f"insert into {env.table} values (i, 'x'); commit; end loop; end $$")
    ticks: list[float] = []
    ticking = True

    async def ticker() -> None:
        while ticking:
            await asyncio.sleep(0.005)  # the "other task" whose turns we count
            ticks.append(time.perf_counter())

    tick = asyncio.create_task(ticker())
    sink = Sink()
    t0 = time.perf_counter()
    start_reader(env, sink)
    await wait_until(lambda: len(sink.txns) >= 1, 30, "big transaction")
    t1 = time.perf_counter()
    await wait_until(lambda: len(sink.txns) == 1 + n_small, 30, "small transactions")
    t2 = time.perf_counter()
    ticking = False
    await tick
    assert len(sink.txns[0].changes) == n_big
    assert sink.ids() == list(range(1, n_big + n_small + 1))
    # Other tasks kept getting turns while the 50,000-change transaction streamed in: a reader
    # that decoded the backlog without yielding would leave the ticker (almost) no turn then.
    turns = sum(1 for t in ticks if t0 <= t <= t1)
    assert turns >= 10, f"the ticker ran only {turns} times while the backlog was decoded"
    print(f"\nreplication reader backlog: connect + {n_big} changes in one transaction {t1 - t0:.2f} s "
          f"({n_big / (t1 - t0):,.0f} changes/s); then {n_small} one-row transactions {t2 - t1:.2f} s "
          f"({n_small / (t2 - t1):,.0f} txn/s, one position upsert each); {turns} ticker turns meanwhile")


async def test_failing_on_transaction_is_redelivered_after_back_off(env: Env) -> None:
    await sql(env.dsn, f"create publication {env.pub} for table {env.table}")
    sink = Sink()
    failures = 0

    async def flaky(txn: Transaction) -> None:
        nonlocal failures
        if failures < 2:
            failures += 1
            raise RuntimeError("sink unavailable")
        await sink.on_transaction(txn)

    reader = ReplicationReader(env.dsn, slot=env.slot, publication=env.pub, on_transaction=flaky,
                               on_state=sink.on_state, status_interval=0.2, reconnect_min=0.05, reconnect_max=0.3)
    env.readers.append(reader)
    env.tasks.append(asyncio.create_task(reader.run()))
    assert await reader.wait_streaming(10)
    await sql(env.dsn, f"insert into {env.table} values (1, 'a')", f"insert into {env.table} values (2, 'b')")
    await wait_until(lambda: sink.ids() == [1, 2], 10, "both rows after two failures")
    assert [d for s, d in sink.states if s == "down"] == ["on_transaction failed: RuntimeError: sink unavailable"] * 2
    assert reader.state == "streaming"


# --- crash and restart ------------------------------------------------------------------------


def _read_file(path: Path) -> list[str]:
    return path.read_text(encoding="ascii").splitlines() if path.exists() else []


async def test_sigkill_mid_stream_every_row_exactly_once(env: Env, tmp_path: Path) -> None:
    await sql(env.dsn, f"create publication {env.pub} for table {env.table}")
    out = tmp_path / "delivered"
    state_file = Path(f"{out}.state")

    def delivered_ids() -> list[int]:
        return [int(i) for line in _read_file(out) for i in line.split(" ", 1)[1].split(",") if i]

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, str(READER_PROC), env.dsn, env.slot, env.pub, str(out)],
                                stderr=subprocess.PIPE)

    rng = random.Random()
    kills = 3
    proc = spawn()
    # The slot is created by the first reader: rows committed before it exist are not streamed.
    await wait_until(lambda: _read_file(state_file).count("streaming ") == 1, 15, "first reader streaming")
    writer = Writer(env.dsn, env.table)
    try:
        for k in range(kills):
            await wait_until(lambda: _read_file(state_file).count("streaming ") == k + 1, 15,
                             f"reader {k} streaming")
            seen = len(delivered_ids())
            await wait_until(lambda: len(delivered_ids()) > seen, 10, f"reader {k} delivering")
            await asyncio.sleep(rng.uniform(0.05, 0.5))  # a random moment mid-stream
            proc.send_signal(signal.SIGKILL)
            assert await asyncio.to_thread(proc.wait) == -signal.SIGKILL
            proc = spawn()
        await wait_until(lambda: _read_file(state_file).count("streaming ") == kills + 1, 15, "last reader")
    finally:
        await writer.stop()
    expected = await table_ids(env.dsn, env.table)
    try:
        await wait_until(lambda: len(delivered_ids()) >= len(expected), 20, "catch-up")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.to_thread(proc.communicate)
    assert proc.returncode == 0, err.decode()

    ids = delivered_ids()
    dups = [i for i, n in Counter(ids).items() if n > 1]
    assert dups == [] and sorted(ids) == expected
    assert len(expected) > 50 and writer.commits > kills
    # Only the transaction whose position was not stored when the process died comes back.
    redelivered = [line.split() for line in _read_file(Path(f"{out}.redelivered"))]
    assert len(redelivered) <= kills
    assert all(lsn == last for lsn, last in redelivered)


async def test_wal_level_then_postgres_restart_exactly_once(tmp_path: Path) -> None:
    """Own cluster: first without wal_level=logical (clear detail, keeps retrying), then fixed and
    restarted; then restarted again under a writer — every committed row once."""
    cluster = PgCluster(extra_conf={"wal_level": "replica"})
    await asyncio.to_thread(cluster.init)
    await asyncio.to_thread(cluster.start)
    e = Env(cluster.dsn, "rc_restart_slot", "rc_restart_pub", "items")
    try:
        await sql(e.dsn, "create table items (id bigint primary key, v text)",
                  "create publication rc_restart_pub for table items")
        sink = Sink()
        reader = start_reader(e, sink, reconnect_max=0.2)
        await wait_until(lambda: any(s == "down" for s, _ in sink.states), 10, "down")
        detail = next(d for s, d in sink.states if s == "down")
        assert detail == "wal_level is 'replica'; set wal_level = logical and restart PostgreSQL"

        await sql(e.dsn, "alter system set wal_level = logical")
        await asyncio.to_thread(cluster.restart)
        assert await reader.wait_streaming(15)

        writer = Writer(e.dsn, "items")
        try:
            await wait_until(lambda: len(sink.ids()) > 50, 10, "deliveries")
            streams = sink.states.count(("streaming", None))
            await asyncio.to_thread(cluster.restart)  # fast shutdown under load
            await wait_until(lambda: sink.states.count(("streaming", None)) > streams, 20, "reconnect")
            seen = len(sink.ids())
            await wait_until(lambda: len(sink.ids()) > seen + 50, 10, "deliveries after restart")
        finally:
            await writer.stop()
        expected = await table_ids(e.dsn, "items")
        await wait_until(lambda: len(sink.ids()) >= len(expected), 15, "catch-up")
        ids = sink.ids()
        assert [i for i, n in Counter(ids).items() if n > 1] == []
        assert sorted(ids) == expected
        assert all(a.end_lsn < b.end_lsn for a, b in zip(sink.txns, sink.txns[1:]))
        await reader.stop()
    finally:
        for r in e.readers:
            await r.stop()
        await asyncio.to_thread(cluster.destroy)
