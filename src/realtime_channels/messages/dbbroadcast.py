"""Broadcast from the database: committed inserts into ``realtime.messages`` become broadcasts
(protocol.md §4.7).

Theory of operation
-------------------
* **Feed**: the ``cdc.replication.ReplicationReader`` of ``postgres_changes`` (same decoder, same
  exactly-once position handling) on its own permanent slot and its own publication, which holds
  only ``realtime.messages`` and publishes through the partition root, so every row arrives as a
  change of ``realtime.messages`` whatever day partition it went to.
* **Publication first**: the reader would create a missing publication *empty*, so ``start``
  first makes sure ours exists with the table (``migrations.ensure_publication``), retrying with
  back-off while the database is unreachable or not migrated; only then does the reader run.
* **Rows**: an INSERT is delivered when ``extension`` is ``broadcast`` and ``id``, ``topic``,
  ``event``, ``private`` and a body (``payload`` or ``binary_payload``) are all present, unless
  ``skip_broadcast`` is true (a persisted client broadcast, already sent live, §4.9).  The body
  comes straight from pgoutput's text form: jsonb text *is* JSON text; bytea text (``\\x`` hex, or
  the escape format under ``bytea_output = escape``) is decoded to the raw bytes.  Presence rows,
  UPDATEs and DELETEs are ignored.  Probe rows of the §7.3 checks are always rolled back, so
  they never reach the slot.
* **Delivery**: ``on_message`` runs on the event loop for each row, in commit order; size and rate
  limits are the caller's (§4.5, §8).  A failing ``on_message`` is logged and the feed goes on (a
  redelivery would only repeat messages to everybody else).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import psycopg

from ..cdc import pgoutput
from ..cdc.replication import ReplicationReader, Transaction
from .migrations import DEFAULT_PUBLICATION, ensure_publication

__all__ = ["DatabaseBroadcasts", "DbMessage", "decode_bytea"]

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT: Final = 10
_STOP_GRACE: Final = 5.0  # how long stop() waits before cancelling a start-up in progress
_SCHEMA: Final = "realtime"
_TABLE: Final = "messages"


@dataclass(frozen=True, slots=True)
class DbMessage:
    """One broadcast row: ``data`` is the payload's JSON text, or the raw binary body when
    ``binary`` (protocol.md §4.7); ``id`` goes out as ``meta.id``."""

    id: str
    sub_topic: str
    event: str
    private: bool
    data: bytes
    binary: bool


def decode_bytea(text: bytes) -> bytes:
    """bytea's text output to its bytes: ``\\x…`` hex, or the escape format (``\\ooo`` octal and
    ``\\\\``).  Raises ``ValueError`` on text that is neither."""
    if text.startswith(b"\\x"):
        return bytes.fromhex(text[2:].decode("ascii"))
    out = bytearray()
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c != 0x5C:
            out.append(c)
            i += 1
        elif text[i + 1:i + 2] == b"\\":
            out.append(0x5C)
            i += 2
        else:
            octal = text[i + 1:i + 4]
            if len(octal) != 3 or any(d not in b"01234567" for d in octal):
                raise ValueError("invalid bytea escape")
            out.append(int(octal, 8) & 0xFF)
            i += 4
    return bytes(out)


class _Columns:
    """Positions of the columns we read in a ``realtime.messages`` relation (any may be absent:
    an older table without ``binary_payload``)."""

    __slots__ = ("binary_payload", "event", "extension", "id", "payload", "private", "skip_broadcast", "topic")

    def __init__(self, relation: pgoutput.Relation) -> None:
        index = {c.name: i for i, c in enumerate(relation.columns)}
        self.id = index.get("id")
        self.topic = index.get("topic")
        self.extension = index.get("extension")
        self.event = index.get("event")
        self.private = index.get("private")
        self.payload = index.get("payload")
        self.binary_payload = index.get("binary_payload")
        self.skip_broadcast = index.get("skip_broadcast")


def _value(values: tuple[pgoutput.TupleValue, ...], index: int | None) -> bytes | None:
    if index is None or index >= len(values):
        return None
    v = values[index]
    return v if isinstance(v, bytes) else None


def message_from_row(relation: pgoutput.Relation, row: pgoutput.TupleData) -> DbMessage | None:
    """The broadcast an inserted ``realtime.messages`` row stands for, or None (§4.7 rules)."""
    cols = _Columns(relation)
    values = row.values
    extension = _value(values, cols.extension)
    row_id = _value(values, cols.id)
    topic = _value(values, cols.topic)
    event = _value(values, cols.event)
    private = _value(values, cols.private)
    if extension != b"broadcast" or row_id is None or topic is None or event is None or private is None:
        return None
    if _value(values, cols.skip_broadcast) == b"t":
        return None  # §4.9: a persisted client broadcast, sent live when it was stored
    payload = _value(values, cols.payload)
    if payload is not None:
        data, binary = payload, False
    else:
        raw = _value(values, cols.binary_payload)
        if raw is None:
            return None
        data, binary = decode_bytea(raw), True
    return DbMessage(
        id=row_id.decode("ascii"),
        sub_topic=topic.decode("utf-8", "replace"),
        event=event.decode("utf-8", "replace"),
        private=private == b"t",
        data=data,
        binary=binary,
    )


class DatabaseBroadcasts:
    """Streams committed broadcast rows of ``realtime.messages`` to ``on_message`` (protocol.md §4.7).

    ``on_state`` gets ``("connecting" | "streaming" | "down", detail)`` on every change."""

    def __init__(
        self,
        dsn: str,
        *,
        publication: str = DEFAULT_PUBLICATION,
        slot: str = "realtime_channels_messages",
        on_message: Callable[[DbMessage], None],
        on_state: Callable[[str, str | None], None] | None = None,
        reconnect_min: float = 0.5,
        reconnect_max: float = 10.0,
        prepare: Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]] | None = None,
    ) -> None:
        """``prepare`` runs before each replication session (as the start-up migrations do), so
        a database that was reset gets ``realtime.messages`` and its publication back."""
        self._dsn = dsn
        self._prepare_db = prepare
        self._publication = publication
        self._slot = slot
        self._on_message = on_message
        self._on_state = on_state
        self._reconnect_min = reconnect_min
        self._reconnect_max = reconnect_max
        self._reader = self._new_reader()  # validates the names now, not at start()
        self._state = "down"
        self._detail: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    # --- public surface -------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self._state

    @property
    def detail(self) -> str | None:
        """Why the feed is ``"down"`` (None while connecting or streaming)."""
        return self._detail

    async def wait_streaming(self, timeout: float) -> bool:
        """True once rows committed from now on will be delivered; False after ``timeout``."""
        if self._task is None:
            return False
        return await self._reader.wait_streaming(timeout)

    async def start(self) -> None:
        """Start in the background; returns at once (see ``state`` / ``wait_streaming``)."""
        if self._task is not None:
            raise RuntimeError("DatabaseBroadcasts is already started")
        self._stop = asyncio.Event()
        self._reader = self._new_reader()
        self._task = asyncio.create_task(self._main(), name="realtime-db-broadcasts")

    async def stop(self) -> None:
        """Stop the feed and close its connections (the slot stays, so nothing committed while
        stopped is lost)."""
        task = self._task
        if task is None:
            return
        self._stop.set()
        await self._reader.stop()
        try:
            async with asyncio.timeout(_STOP_GRACE):
                await asyncio.shield(task)
        except TimeoutError:  # stuck connecting during start-up: nothing to finish
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        finally:
            self._task = None
            self._set_state("down", "stopped")

    # --- internals ------------------------------------------------------------------------

    def _new_reader(self) -> ReplicationReader:
        return ReplicationReader(
            self._dsn,
            slot=self._slot,
            publication=self._publication,
            on_transaction=self._on_transaction,
            on_state=self._set_state,
            reconnect_min=self._reconnect_min,
            reconnect_max=self._reconnect_max,
            before_session=self._before_session,
        )

    async def _before_session(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if self._prepare_db is not None:
            await self._prepare_db(conn)
        await ensure_publication(conn, self._publication)

    def _set_state(self, state: str, detail: str | None) -> None:
        if state == self._state and detail == self._detail:
            return
        self._state, self._detail = state, detail
        if self._on_state is not None:
            try:
                self._on_state(state, detail)
            except Exception:  # a broken observer must not stop the feed
                log.exception("on_state callback failed")

    async def _main(self) -> None:
        delay = self._reconnect_min
        while not self._stop.is_set():
            self._set_state("connecting", None)
            try:
                await self._prepare()
                break
            except (psycopg.Error, OSError) as exc:
                detail = f"cannot prepare publication {self._publication}: {_first_line(exc)}"
                self._set_state("down", detail)
                log.warning("database broadcast down: %s; retrying in %.1f s", detail, delay)
            try:
                async with asyncio.timeout(delay):
                    await self._stop.wait()
            except TimeoutError:
                pass
            delay = min(delay * 2, self._reconnect_max)
        if not self._stop.is_set():
            await self._reader.run()

    async def _prepare(self) -> None:
        conn = await psycopg.AsyncConnection.connect(
            self._dsn, autocommit=True, connect_timeout=_CONNECT_TIMEOUT,
            application_name="realtime_channels_db_broadcast")
        try:
            await ensure_publication(conn, self._publication)
        finally:
            await conn.close()

    async def _on_transaction(self, txn: Transaction) -> None:
        for change in txn.changes:
            rel = change.relation
            if change.kind != "INSERT" or change.new is None or rel.namespace != _SCHEMA or rel.name != _TABLE:
                continue
            try:
                msg = message_from_row(rel, change.new)
            except ValueError:
                log.warning("realtime.messages row with an undecodable binary_payload skipped")
                continue
            if msg is None:
                continue
            try:
                self._on_message(msg)
            except Exception:
                log.exception("on_message failed for realtime.messages row %s", msg.id)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

