"""Logical replication reader: one permanent ``pgoutput`` slot, committed transactions out.

The I/O adapter of design.md §3 around the pure decoder ``pgoutput.py``.  Unlike the reference
(protocol.md §6.9: a temporary wal2json slot polled with ``pg_logical_slot_get_changes``) it
streams over the replication protocol with psycopg ≥ 3.3 and keeps a permanent slot, so changes
committed while we were away are delivered when we return.

Theory of operation
-------------------
* **Setup** (a normal connection, kept open as the *side* connection): check ``wal_level`` and
  the REPLICATION attribute so their absence is a clear one-line state detail; create schema
  ``realtime``, our position table ``realtime.rc_replication_position``, the publication (empty)
  and the slot when missing.
* **Streaming** (a ``replication="database"`` connection): ``START_REPLICATION`` returns a
  COPY_BOTH cursor; from then on we read CopyData through the public ``pgconn`` API, waiting for
  the socket with ``loop.add_reader`` and a bare future (postgres-cdc.md: ``asyncio.wait_for`` can
  swallow a cancellation on Python 3.11).
* **Exactly-once** (design.md §3): messages from Begin to Commit become one ``Transaction``;
  ``on_transaction`` is awaited, *then* the commit's ``end_lsn`` is stored in our table, *then*
  it is acknowledged to the server.  A restart passes the stored LSN to ``START_REPLICATION``
  and skips every transaction whose ``end_lsn`` is not above it, because PG 15 resends
  acknowledged transactions after a restart (postgres-cdc.md "Pitfalls").  Within one process the
  last handled ``end_lsn`` is also kept in memory, so a dropped connection or a PostgreSQL restart
  never redelivers.  Only a crash of *this* process between ``on_transaction`` returning and the
  position being stored redelivers that single transaction; a sink that must be exact across
  such a crash records ``Transaction.end_lsn`` with its effects and ignores ``end_lsn`` values it
  has already seen (they are strictly increasing).
* **Acknowledgements**: standby status on a timer even under constant data, at once when the
  server asks, and the keepalive ``wal_end`` when no transaction is pending, so writes to
  unpublished tables do not pin WAL (postgres-cdc.md "Ack keepalives when idle").
* **Retention** (optional, ``retention``): the confirmed position is held back to what
  ``retention.hold()`` allows, and streaming starts at the slot's confirmed position, so
  after a restart the transactions routed in the retention window are read again; those at or
  below the stored position go to ``retention.history`` instead of ``on_transaction``.
  ``caught_up`` is set once the stream has passed the stored position.
* **Faults**: any failure closes both connections, reports state ``"down"`` with a one-line
  detail and retries with exponential back-off; ``run`` never raises except on cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import psycopg

from . import pgoutput, slot
from .retention import ChangeRetention
from .slot import ReplicationError, first_line
from .types import Change, Transaction
from .wakeup import Wakeup

__all__ = ["Change", "ReplicationError", "ReplicationReader", "Transaction"]

log = logging.getLogger(__name__)

#: CDC.md: replication connections take only the simple query protocol, so slot and
#: publication names are spliced into SQL text; this pattern makes that safe.
_NAME_RE: Final = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

_SQL_TIMEOUT: Final = 30.0  # bound on a side-connection statement (a half-open socket hangs)
_STOP_GRACE: Final = 5.0  # how long stop() lets an in-progress on_transaction finish
_YIELD_EVERY: Final = 128  # messages handled between forced yields to the event loop
_PG_EPOCH_UNIX: Final = 946_684_800  # 2000-01-01 UTC, the epoch of replication timestamps


class _CallbackFailed(ReplicationError):
    """``on_transaction`` raised; the transaction is delivered again after the reconnect."""


class _Stopping(Exception):
    """Internal: stop() was requested while a session was starting."""


@dataclass(slots=True)
class _Pending:
    """A transaction between its Begin and Commit."""

    begin: pgoutput.Begin
    changes: list[Change]


def _now_us_since_2000() -> int:
    return int((time.time() - _PG_EPOCH_UNIX) * 1_000_000)


class ReplicationReader:
    """Streams committed transactions of ``publication`` through the permanent slot ``slot``.

    ``on_transaction`` is awaited once per transaction, in commit order; the position advances
    only after it returns.  If it raises, the reader goes ``"down"`` and the same transaction is
    delivered again after the reconnect.  ``on_state`` is called on every change of state with
    ``("connecting" | "streaming" | "down", detail)``.
    """

    def __init__(
        self,
        dsn: str,
        *,
        slot: str,
        publication: str,
        on_transaction: Callable[[Transaction], Awaitable[None]],
        on_state: Callable[[str, str | None], None] | None = None,
        status_interval: float = 1.0,
        reconnect_min: float = 0.5,
        reconnect_max: float = 10.0,
        retention: ChangeRetention | None = None,
        before_session: Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]] | None = None,
        on_reset: Callable[[int], None] | None = None,
    ) -> None:
        for what, name in (("slot", slot), ("publication", publication)):
            if not _NAME_RE.match(name):
                raise ValueError(f"invalid {what} name {name!r}: use [a-z_][a-z0-9_]*, at most 63 characters")
        if status_interval <= 0 or reconnect_min <= 0 or reconnect_max < reconnect_min:
            raise ValueError("status_interval and reconnect_min must be > 0, reconnect_max >= reconnect_min")
        self._dsn = dsn
        self._slot = slot
        self._publication = publication
        self._on_transaction = on_transaction
        self._on_state = on_state
        self._status_interval = status_interval
        self._reconnect_min = reconnect_min
        self._reconnect_max = reconnect_max
        self._retention = retention
        self._before_session = before_session
        self._on_reset = on_reset
        #: a session of this process got as far as streaming set-up before
        self._set_up = False
        #: the stream failed because the publication is gone: PostgreSQL decodes with the
        #: catalog of the WAL's time, so a publication created again cannot be used for the WAL
        #: written before it; the slot is advanced past it (those changes were not published)
        self._publication_lost = False
        #: set once the stream has passed the position stored before this process started
        self.caught_up = asyncio.Event()

        self._state = "down"
        self._detail: str | None = None
        self._streaming = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[Any] | None = None
        self._done: asyncio.Future[None] | None = None
        self._wakeup = Wakeup()
        #: end_lsn of the last transaction handed to on_transaction successfully (this process).
        self._handled = 0
        #: end_lsn known to be in rc_replication_position.
        self._stored = 0
        #: the position write in flight, if any (see _commit)
        self._storing: asyncio.Future[None] | None = None
        #: flush/apply LSN we report to the server (per session; 0 means "nothing yet").
        self._ack = 0
        #: the server's end of WAL as last reported (XLogData or keepalive; 0 before any).
        self._wal_end = 0
        #: whether the current session got as far as streaming (resets the back-off).
        self._reached_streaming = False
        #: the commit time of the last transaction handled (/metrics: replication lag in seconds)
        self.handled_commit_us = 0

    # --- public surface -----------------------------------------------------------------

    @property
    def state(self) -> str:
        return self._state

    @property
    def lag_bytes(self) -> int | None:
        """WAL the server has written past what this reader acknowledged (``None`` until the
        server has reported its position)."""
        if not self._wal_end or not self._ack or self._state != "streaming":
            return None
        return max(0, self._wal_end - self._ack)

    @property
    def detail(self) -> str | None:
        """Why the reader is ``"down"`` (``None`` while connecting or streaming)."""
        return self._detail

    async def wait_streaming(self, timeout: float) -> bool:
        """True once the state is ``"streaming"``; False if that did not happen within ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                await self._streaming.wait()
        except TimeoutError:
            return False
        return True

    async def run(self) -> None:
        """Connect, set up and stream until ``stop()``; every failure means "down", back-off and retry."""
        if self._task is not None:
            raise RuntimeError("ReplicationReader.run() is already running")
        loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._done = loop.create_future()
        delay = self._reconnect_min
        try:
            while not self._stopping:
                try:
                    await self._session()
                except asyncio.CancelledError:
                    raise
                except _Stopping:
                    break
                except Exception as exc:  # every fault is reported and retried
                    if self._stopping:
                        break
                    if self._reached_streaming and not isinstance(exc, _CallbackFailed):
                        delay = self._reconnect_min  # it worked until now: retry soon
                    if f'publication "{self._publication}" does not exist' in str(exc):
                        self._publication_lost = True
                        delay = self._reconnect_min
                    detail = slot.describe(exc, self._slot)
                    self._set_state("down", detail)
                    unexpected = isinstance(exc, _CallbackFailed) or not isinstance(
                        exc, (ReplicationError, psycopg.Error, TimeoutError))
                    log.warning("replication down (slot %s): %s; retrying in %.1f s", self._slot, detail, delay,
                                exc_info=unexpected)
                    await self._pause(delay)
                    delay = min(delay * 2, self._reconnect_max)
        finally:
            self._set_state("down", "stopped")
            self._task = None
            if not self._done.done():
                self._done.set_result(None)

    async def stop(self) -> None:
        """Stop promptly: a transaction being handled may finish (up to a few seconds), the final
        position is acknowledged and both connections are closed."""
        self._stopping = True
        self._wake()
        task, done = self._task, self._done
        if task is None or done is None or task is asyncio.current_task():
            return
        try:
            async with asyncio.timeout(_STOP_GRACE):
                await asyncio.shield(done)
        except TimeoutError:
            log.warning("replication reader did not stop within %.0f s; cancelling it", _STOP_GRACE)
            task.cancel()
            await asyncio.shield(done)

    # --- state ----------------------------------------------------------------------------

    def _set_state(self, state: str, detail: str | None) -> None:
        if state == self._state and detail == self._detail:
            return
        self._state, self._detail = state, detail
        if state == "streaming":
            self._streaming.set()
            self._reached_streaming = True
        else:
            self._streaming.clear()
        if self._on_state is not None:
            try:
                self._on_state(state, detail)
            except Exception:  # a broken observer must not stop replication
                log.exception("on_state callback failed")

    # --- waiting without asyncio.wait_for (postgres-cdc.md "Pitfalls") --------------------

    def _wake(self) -> None:
        self._wakeup.wake()

    async def _wait(self, timeout: float, read_fd: int | None = None, write_fd: int | None = None) -> None:
        """Until ``read_fd`` is readable / ``write_fd`` writable, ``timeout`` passes or stop() is called."""
        if not self._stopping:
            await self._wakeup.wait(timeout, read_fd, write_fd)

    async def _pause(self, delay: float) -> None:
        await self._wait(delay)

    # --- one connection session ---------------------------------------------------------

    async def _session(self) -> None:
        self._reached_streaming = False
        self._set_state("connecting", None)
        side = await slot.connect(self._dsn, replication=False)
        try:
            async with asyncio.timeout(_SQL_TIMEOUT):
                await self._setup(side)
            if self._stopping:
                raise _Stopping
            repl = await slot.connect(self._dsn, replication=True)
            try:
                await self._start(repl)
                if self._stopping:
                    raise _Stopping
                self._set_state("streaming", None)
                log.info("replication streaming (slot %s, publication %s, from %s)", self._slot,
                         self._publication, pgoutput.lsn_to_str(self._handled))
                await self._stream(repl, side)
            finally:
                await repl.close()
        finally:
            storing, self._storing = self._storing, None
            if storing is not None:  # finish (or fail) the last position write of this session
                with contextlib.suppress(Exception):
                    await storing
            await side.close()

    async def _setup(self, side: psycopg.AsyncConnection[Any]) -> None:
        """Check prerequisites, create what is missing, load the stored position."""
        if self._before_session is not None:
            await self._before_session(side)  # what the feed's own tables need, recreated if gone
        stored, created, created_publication = await slot.prepare(side, slot=self._slot, publication=self._publication)
        if created:
            self._handled = 0  # a position of an earlier slot of this name means nothing now
        self._stored = stored
        if self._handled > self._stored:
            # Handled before a connection loss but not stored yet.
            await self._store(side, self._handled)
        self._handled = max(self._handled, self._stored)
        if self._retention is not None:
            row = await (await side.execute(
                "select confirmed_flush_lsn::text from pg_replication_slots where slot_name = %s",
                (self._slot,))).fetchone()
            if row is not None and row[0] is not None:
                self._retention.start(pgoutput.str_to_lsn(row[0]))
        if self._publication_lost:
            self._publication_lost = False
            await side.execute("select pg_catalog.pg_replication_slot_advance(%s, pg_catalog.pg_current_wal_lsn())",
                               (self._slot,))
            created_publication = True
        if self._set_up and (created or created_publication):
            # Dropped while we were running (a database reset, an operator): what was committed
            # in between is not in the new slot, or was not published.  Carry on, and say so.
            log.warning("replication slot %s or publication %s was gone and has been recreated; changes "
                        "committed meanwhile are not delivered", self._slot, self._publication)
            if self._on_reset is not None:
                row = await (await side.execute(
                    "select confirmed_flush_lsn::text from pg_replication_slots where slot_name = %s",
                    (self._slot,))).fetchone()
                self._on_reset(pgoutput.str_to_lsn(row[0]) if row is not None and row[0] is not None else 0)
        self._set_up = True

    async def _start(self, repl: psycopg.AsyncConnection[Any]) -> None:
        # 0/0 = the slot's confirmed position; with retention always, to read the window again
        start = pgoutput.lsn_to_str(0 if self._retention is not None else self._handled)
        await repl.cursor().execute(
            f"START_REPLICATION SLOT {self._slot} LOGICAL {start}"
            f" (proto_version '1', publication_names '{self._publication}')"
        )
        self._ack = 0  # an invalid flush LSN is ignored by the server until we have one
        self._wal_end = 0

    async def _store(self, side: psycopg.AsyncConnection[Any], end_lsn: int) -> None:
        async with asyncio.timeout(_SQL_TIMEOUT):
            await slot.store_position(side, self._slot, end_lsn)
        self._stored = end_lsn

    # --- the COPY_BOTH stream -----------------------------------------------------------

    async def _stream(self, repl: psycopg.AsyncConnection[Any], side: psycopg.AsyncConnection[Any]) -> None:
        pg = repl.pgconn
        fd = pg.socket
        loop = asyncio.get_running_loop()
        relations: dict[int, pgoutput.Relation] = {}
        pending: _Pending | None = None
        next_status = loop.time()
        since_yield = 0
        while not self._stopping:
            try:
                nbytes, data = pg.get_copy_data(1)
            except psycopg.OperationalError as exc:
                raise ReplicationError(f"replication connection lost: {first_line(exc)}") from exc
            if nbytes == 0:  # nothing buffered: report status if due, then wait for the socket
                now = loop.time()
                if now >= next_status:
                    await self._send_status(repl)
                    next_status = now + self._status_interval
                await self._wait(next_status - now, read_fd=fd)
                try:
                    pg.consume_input()
                except psycopg.OperationalError as exc:
                    raise ReplicationError(f"replication connection lost: {first_line(exc)}") from exc
                continue
            if nbytes < 0:
                raise self._stream_ended(repl)

            msg = pgoutput.decode_copy_data(data)
            self._wal_end = max(self._wal_end, msg.wal_end)
            if isinstance(msg, pgoutput.XLogData):
                pending = await self._on_xlog(pgoutput.decode_message(msg.payload), pending, relations, side)
            else:
                if pending is None and msg.wal_end > self._ack:
                    # Nothing in flight: everything up to wal_end is handled or unpublished.
                    self._ack = msg.wal_end
                if pending is None and msg.wal_end >= self._handled:
                    self.caught_up.set()
                if msg.reply_requested:
                    await self._send_status(repl)
                    next_status = loop.time() + self._status_interval
            # Under constant data the "nothing buffered" branch never runs: keep the timer here too.
            if loop.time() >= next_status:
                await self._send_status(repl)
                next_status = loop.time() + self._status_interval
            since_yield += 1
            if since_yield >= _YIELD_EVERY:  # never starve the loop (postgres-cdc.md "Pitfalls")
                since_yield = 0
                await asyncio.sleep(0)
        await self._send_status(repl)

    async def _on_xlog(
        self,
        msg: pgoutput.PgOutputMessage,
        pending: _Pending | None,
        relations: dict[int, pgoutput.Relation],
        side: psycopg.AsyncConnection[Any],
    ) -> _Pending | None:
        if isinstance(msg, pgoutput.Begin):
            if pending is not None:
                raise pgoutput.PgOutputError("Begin inside a transaction")
            return _Pending(msg, [])
        if isinstance(msg, pgoutput.Relation):
            relations[msg.relid] = msg  # replaced on every 'R' (ALTER TABLE mid-stream)
            return pending
        if isinstance(msg, (pgoutput.Insert, pgoutput.Update, pgoutput.Delete)):
            if pending is None:
                raise pgoutput.PgOutputError("row change outside a transaction")
            relation = relations.get(msg.relid)
            if relation is None:
                raise pgoutput.PgOutputError("row change for a relation never described")
            pending.changes.append(_change(relation, msg))
            return pending
        if isinstance(msg, pgoutput.Commit):
            if pending is None:
                raise pgoutput.PgOutputError("Commit without Begin")
            await self._commit(pending, msg, side)
            return None
        return pending  # Origin, Type, Truncate, Message: not part of a Transaction

    async def _commit(self, pending: _Pending, commit: pgoutput.Commit, side: psycopg.AsyncConnection[Any]) -> None:
        if commit.end_lsn <= self._handled:
            # Already handled (PG 15 resends after a restart): never deliver it twice.  With
            # retention it was read again on purpose (the window held back by ``hold``).
            if self._retention is not None and pending.changes:
                self._retention.history(_transaction(pending, commit))
            self._ack = max(self._ack, commit.end_lsn)
            return
        self.caught_up.set()
        if pending.changes:
            if self._storing is not None:  # the previous position is stored before we route more
                await self._storing
                self._storing = None
            txn = _transaction(pending, commit)
            try:
                await self._on_transaction(txn)
            except Exception as exc:
                raise _CallbackFailed(f"on_transaction failed: {type(exc).__name__}: {first_line(exc)}") from exc
            self._handled, self.handled_commit_us = commit.end_lsn, commit.commit_ts_us
            # The position write runs while the next transaction is read and decoded; it is
            # awaited before that one is routed, so a crash still replays at most this one.
            self._storing = asyncio.ensure_future(self._store(side, commit.end_lsn))
        else:
            # An empty transaction (servers before 15 send one for every unpublished write,
            # including our own position upserts) advances the in-memory and acknowledged
            # position only: storing it would itself produce another empty transaction, and a
            # stored position lagging behind empty transactions costs nothing on restart.
            self._handled = commit.end_lsn
        self._ack = max(self._ack, commit.end_lsn)

    async def _send_status(self, repl: psycopg.AsyncConnection[Any]) -> None:
        pg = repl.pgconn
        ack = self._ack
        hold = self._retention.hold() if self._retention is not None else None
        if hold is not None:
            ack = min(ack, hold)
        try:
            pg.put_copy_data(pgoutput.encode_standby_status(ack, ack, ack, _now_us_since_2000()))
            while pg.flush() == 1:  # non-blocking connection: wait until the rest can be written
                await self._wait(self._status_interval, write_fd=pg.socket)
                if self._stopping:
                    return
        except psycopg.OperationalError as exc:
            raise ReplicationError(f"replication connection lost: {first_line(exc)}") from exc

    def _stream_ended(self, repl: psycopg.AsyncConnection[Any]) -> ReplicationError:
        pg = repl.pgconn
        result = pg.get_result()
        message = ""
        if result is not None and result.error_message:
            message = result.error_message.decode("utf-8", "replace")
        message = message or pg.get_error_message() or "the server ended the stream"
        message = message.strip().splitlines()[0].removeprefix("FATAL:").strip()
        return ReplicationError(f"replication connection lost: {message}")


def _transaction(pending: _Pending, commit: pgoutput.Commit) -> Transaction:
    return Transaction(xid=pending.begin.xid, commit_lsn=commit.commit_lsn, end_lsn=commit.end_lsn,
                       commit_ts_us=commit.commit_ts_us, changes=tuple(pending.changes))


def _change(relation: pgoutput.Relation, msg: pgoutput.Insert | pgoutput.Update | pgoutput.Delete) -> Change:
    if isinstance(msg, pgoutput.Insert):
        return Change(relation, "INSERT", msg.new, None, None)
    if isinstance(msg, pgoutput.Update):
        return Change(relation, "UPDATE", msg.new, msg.old, msg.old_kind)
    return Change(relation, "DELETE", None, msg.old, msg.old_kind)
