"""The replication reader's connections and set-up: slot, publication and position table.

Run on the reader's side connection before each streaming session: prerequisites are checked
(``wal_level``, the REPLICATION attribute) so their absence is a clear one-line state detail;
schema ``realtime``, the position table ``realtime.rc_replication_position``, the (empty)
publication and the permanent ``pgoutput`` slot are created when missing.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict

from ..errors import InternalError
from . import pgoutput, sql

log = logging.getLogger(__name__)

#: postgres-cdc.md "Types": the walsender's text output depends on these session settings.
_SESSION_OPTIONS: Final = "-c DateStyle=ISO -c TimeZone=UTC -c extra_float_digits=3"
_CONNECT_TIMEOUT: Final = 10  # seconds, unless the DSN says otherwise

_UPSERT_POSITION: Final = (
    "insert into realtime.rc_replication_position (slot_name, end_lsn) values (%s, %s::pg_lsn) "
    "on conflict (slot_name) do update set end_lsn = excluded.end_lsn, updated_at = now()"
)


class ReplicationError(InternalError):
    """A failure with a one-line, operator-facing explanation (the ``"down"`` state detail)."""


async def prepare(side: psycopg.AsyncConnection[Any], *, slot: str, publication: str) -> tuple[int, bool, bool]:
    """Check prerequisites and create what is missing; returns the stored position (end LSN,
    0 when none), whether the slot was created just now, and whether the publication was."""
    created = False
    created_publication = False
    row = await (await side.execute("show wal_level")).fetchone()
    if row is None or row[0] != "logical":
        level = row[0] if row else "unknown"
        raise ReplicationError(f"wal_level is '{level}'; set wal_level = logical and restart PostgreSQL")
    row = await (await side.execute(
        "select rolreplication or rolsuper, current_user from pg_roles where rolname = current_user"
    )).fetchone()
    if row is None or not row[0]:
        user = row[1] if row else "current user"
        raise ReplicationError(f"role {user} lacks the REPLICATION attribute (ALTER ROLE {user} REPLICATION)")

    # Under the installers' advisory lock: CREATE ... IF NOT EXISTS is not safe against a
    # concurrent creator (the migrations and the RLS installer run at the same start-up).
    async with side.transaction():
        await side.execute("select pg_catalog.pg_advisory_xact_lock(%s)", (sql.INSTALL_LOCK,))
        await side.execute("create schema if not exists realtime")
        await side.execute(
            "create table if not exists realtime.rc_replication_position ("
            " slot_name text primary key, end_lsn pg_lsn not null,"
            " updated_at timestamptz not null default now())"
        )
    # Only our position row is written here, and losing the newest few on a PostgreSQL crash
    # only means redelivering (then skipping nothing), never loss; a clean shutdown flushes it.
    await side.execute("set synchronous_commit = off")

    exists = await (await side.execute(
        "select 1 from pg_publication where pubname = %s", (publication,))).fetchone()
    if exists is None:
        try:
            # Tables are enabled by adding them to the publication (protocol.md §6.9).
            await side.execute(f"create publication {publication}")
            created_publication = True
            log.info("created empty publication %s", publication)
        except pg_errors.DuplicateObject:
            pass  # created concurrently by another server

    existing = await (await side.execute(
        "select plugin, slot_type, database = current_database(), temporary, wal_status"
        " from pg_replication_slots where slot_name = %s", (slot,))).fetchone()
    if existing is None:
        await side.execute("select pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
        # A position stored for an earlier slot of this name means nothing for the new one.
        await side.execute("delete from realtime.rc_replication_position where slot_name = %s", (slot,))
        created = True
        log.info("created logical replication slot %s", slot)
    else:
        plugin, slot_type, same_db, temporary, wal_status = existing
        if slot_type != "logical" or plugin != "pgoutput" or not same_db or temporary:
            raise ReplicationError(
                f"replication slot {slot} exists but is not a permanent pgoutput slot of this database")
        if wal_status == "lost":
            raise ReplicationError(
                f"replication slot {slot} was invalidated (WAL removed, changes lost); "
                f"drop it with pg_drop_replication_slot('{slot}') to start afresh")

    row = await (await side.execute(
        "select end_lsn::text from realtime.rc_replication_position where slot_name = %s",
        (slot,))).fetchone()
    return (pgoutput.str_to_lsn(row[0]) if row else 0), created, created_publication


async def store_position(side: psycopg.AsyncConnection[Any], slot: str, end_lsn: int) -> None:
    await side.execute(_UPSERT_POSITION, (slot, pgoutput.lsn_to_str(end_lsn)))


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def describe(exc: Exception, slot: str) -> str:
    """The one-line ``"down"`` detail of a failed session."""
    if isinstance(exc, ReplicationError):
        return exc.message
    if isinstance(exc, pg_errors.ObjectInUse):
        return (f"replication slot {slot} is in use by another consumer "
                f"({first_line(exc)}); retrying until it is free")
    if isinstance(exc, pg_errors.InsufficientPrivilege):
        return f"permission denied: {first_line(exc)}"
    if isinstance(exc, pgoutput.PgOutputError):
        return f"undecodable replication data: {exc.message}"
    if isinstance(exc, psycopg.OperationalError):
        return f"database connection failed: {first_line(exc)}"
    if isinstance(exc, TimeoutError):
        return "database did not answer in time"
    if isinstance(exc, psycopg.Error):
        return f"database error: {first_line(exc)}"
    return f"{type(exc).__name__}: {first_line(exc)}"


def conninfo(dsn: str, replication: bool) -> dict[str, Any]:
    params: dict[str, Any] = dict(conninfo_to_dict(dsn))
    params.setdefault("connect_timeout", _CONNECT_TIMEOUT)
    params.setdefault("application_name", "realtime_channels_cdc")
    if replication:
        user_options = str(params.get("options") or "")
        params["options"] = f"{user_options} {_SESSION_OPTIONS}".strip()
        params["replication"] = "database"
    return params

async def connect(dsn: str, replication: bool) -> psycopg.AsyncConnection[Any]:
    """A reader connection (``replication``: the walsender one) or a ReplicationError."""
    what = "replication" if replication else "database"
    try:
        return await psycopg.AsyncConnection.connect(autocommit=True, **conninfo(dsn, replication))
    except pg_errors.InsufficientPrivilege as exc:
        raise ReplicationError(f"cannot open a {what} connection: {first_line(exc)}") from exc
    except psycopg.OperationalError as exc:
        reason = first_line(exc).removeprefix("connection failed: ")
        raise ReplicationError(f"cannot connect to PostgreSQL: {reason}") from exc
