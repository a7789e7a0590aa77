"""Private channel authorization through the user's RLS policies on ``realtime.messages``
(protocol.md §7.3), and replay reads (§4.8).

Theory of operation
-------------------
Every check runs in its own transaction that is always rolled back, on an ordinary (privileged)
login connection, with the transaction-local settings of §7.3: ``realtime.topic``,
``request.jwt.claims``, ``request.jwt.claim.sub``, ``request.jwt.claim.role`` and
``request.headers`` — so ``realtime.topic()``, ``auth.uid()``, ``auth.role()`` and ``auth.jwt()``
in policies see the channel and the caller.

* **Read**: one probe row per extension is inserted as the login role (policies do not stop
  it), then the session switches to the JWT ``role`` and selects the probes back by id; each
  probe the role can see grants read for its extension.  Selecting by the probes' ids (not by
  topic) means rows that happen to be stored for the topic never grant anything.
* **Write**: the session switches to the JWT role and inserts a row; an RLS rejection or a
  missing INSERT privilege (both ``insufficient_privilege``) means denied.  The reference wraps
  the insert in a savepoint; ours needs none because the whole transaction is rolled back.
* The probe rows are never committed, so the database-broadcast feed never sees them (§4.7).
* **Persist** (§4.9): one committed transaction.  Inside a savepoint that is always rolled back,
  the JWT role inserts a row with ``extension = 'persistence'`` (the write check above); when
  that passes, the login role stores the message as a private ``broadcast`` row with
  ``skip_broadcast = true`` (the feed does not send it again) and ``expires_at`` = the row's
  ``inserted_at`` + ttl, or null without a ttl.  Replay skips rows whose ``expires_at`` passed.

Outcomes: a role that is missing from the claims or from the database, or that the login role
cannot switch to, is *denied*.  Anything else going wrong — the database unreachable, a policy
raising (a bad cast), a time-out — raises ``AuthzUnavailable``; the caller refuses the join with
the usual ``Unauthorized`` text and drops later messages (§7.3).

Connections: a few connections (``max_connections``), opened on demand, re-opened after a
failure; checks from concurrent callers run on different connections and never block the event
loop.  The login role must be a member of every JWT role (PostgreSQL checks ``SET ROLE`` against
the session user), as Supabase's ``postgres`` role is.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeVar

import psycopg
from psycopg import AsyncConnection
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus

from ..errors import AuthzUnavailable

__all__ = ["AuthzUnavailable", "ChannelAuthorizer", "ReplayRow"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_CONNECT_TIMEOUT: Final = 10  # seconds, unless the DSN says otherwise
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

# One round trip: whether the role exists, and the §7.3 settings (transaction-local).
_SETTINGS_SQL: Final = (
    "select exists (select 1 from pg_catalog.pg_roles where rolname = %(role)s),"
    " pg_catalog.set_config('realtime.topic', %(topic)s, true),"
    " pg_catalog.set_config('request.jwt.claims', %(claims)s, true),"
    " pg_catalog.set_config('request.jwt.claim.sub', %(sub)s, true),"
    " pg_catalog.set_config('request.jwt.claim.role', %(role)s, true),"
    " pg_catalog.set_config('request.headers', %(headers)s, true),"
    " pg_catalog.set_config('statement_timeout', %(timeout_ms)s, true)"
)
_SET_ROLE_SQL: Final = "select pg_catalog.set_config('role', %s, true)"
_PROBE_SQL: Final = (
    "insert into realtime.messages (topic, extension)"
    " select %s, e from pg_catalog.unnest(%s::text[]) as e returning id, extension"
)
_VISIBLE_SQL: Final = "select extension from realtime.messages where id = any(%s)"
_WRITE_SQL: Final = "insert into realtime.messages (topic, extension) values (%s, %s)"
#: §4.9: the extension a persistence policy checks
PERSISTENCE: Final = "persistence"
# One clock reading for inserted_at (UTC, as our default) and expires_at = inserted_at + ttl.
_PERSIST_SQL: Final = (
    "insert into realtime.messages (topic, extension, payload, binary_payload, event, private,"
    " skip_broadcast, inserted_at, expires_at)"
    " select %(topic)s, 'broadcast', %(payload)s::jsonb, %(binary)s, %(event)s, true, true,"
    " t.at at time zone 'utc', t.at + %(ttl)s::int * interval '1 second'"
    " from (select pg_catalog.clock_timestamp() as at) as t returning id::text"
)
# §4.8: the newest `limit` rows since `since`, handed back oldest first.  (inserted_at, id)
# orders rows of equal timestamps the same way in both directions.
_REPLAY_SQL: Final = (
    "select id::text, event, payload::text, binary_payload from ("
    " select id, event, payload, binary_payload, inserted_at from realtime.messages"
    " where topic = %s and private is true and extension = 'broadcast' and inserted_at >= %s"
    " and event is not null and (payload is not null or binary_payload is not null)"
    " and (expires_at is null or expires_at > pg_catalog.now())"
    " order by inserted_at desc, id desc limit %s) as newest"
    " order by inserted_at, id"
)


@dataclass(frozen=True, slots=True)
class ReplayRow:
    """A stored broadcast (protocol.md §4.8): ``payload_json`` is the payload's JSON text, or
    ``binary`` the raw binary body (exactly one of them is set)."""

    id: str
    event: str
    payload_json: bytes | None
    binary: bytes | None


def _role_of(claims: Mapping[str, Any]) -> str | None:
    role = claims.get("role")
    return role if isinstance(role, str) and role else None


def _claim_text(value: Any) -> str:
    # What `claims ->> 'sub'` gives: strings as they are, other JSON values as JSON text.
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


def _since(since_ms: int) -> datetime:
    try:
        return _EPOCH + timedelta(milliseconds=since_ms)
    except OverflowError:
        return datetime.max.replace(tzinfo=UTC) if since_ms > 0 else datetime.min.replace(tzinfo=UTC)


class ChannelAuthorizer:
    """RLS checks of private channels and replay reads against one database (protocol.md §7.3, §4.8)."""

    def __init__(self, dsn: str, *, max_connections: int = 4, timeout: float = 5.0) -> None:
        if max_connections < 1 or timeout <= 0:
            raise ValueError("max_connections must be >= 1 and timeout > 0")
        self._dsn = dsn
        self._timeout = timeout
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[AsyncConnection[Any]] = []
        self._closed = False

    # --- public surface -------------------------------------------------------------------

    async def can_read(
        self,
        sub_topic: str,
        claims: Mapping[str, Any],
        headers: Mapping[str, str],
        extensions: Sequence[str],
    ) -> dict[str, bool]:
        """Read permission per extension (``broadcast``, ``presence``) for ``sub_topic``."""
        wanted = list(dict.fromkeys(extensions))
        denied = dict.fromkeys(wanted, False)
        role = _role_of(claims)
        if not wanted or role is None:
            return denied

        async def check(conn: AsyncConnection[Any]) -> dict[str, bool]:
            async with conn.transaction(force_rollback=True):
                if not await self._settings(conn, sub_topic, claims, headers, role):
                    return denied
                probes = await (await conn.execute(_PROBE_SQL, (sub_topic, wanted))).fetchall()
                if not await _set_role(conn, role):
                    return denied
                try:
                    rows = await (await conn.execute(_VISIBLE_SQL, ([p[0] for p in probes],))).fetchall()
                except pg_errors.InsufficientPrivilege as exc:  # no SELECT privilege on the table
                    log.debug("read check for role %s denied: %s", role, _first_line(exc))
                    return denied
            visible = {r[0] for r in rows}
            return {ext: ext in visible for ext in wanted}

        return await self._run(check)

    async def can_write(
        self,
        sub_topic: str,
        claims: Mapping[str, Any],
        headers: Mapping[str, str],
        extension: str,
    ) -> bool:
        """Write permission for ``extension`` on ``sub_topic``: may the JWT role insert the row?"""
        role = _role_of(claims)
        if role is None:
            return False

        async def check(conn: AsyncConnection[Any]) -> bool:
            async with conn.transaction(force_rollback=True):
                if not await self._settings(conn, sub_topic, claims, headers, role):
                    return False
                if not await _set_role(conn, role):
                    return False
                try:
                    await conn.execute(_WRITE_SQL, (sub_topic, extension))
                except pg_errors.InsufficientPrivilege as exc:  # RLS rejection or no INSERT grant
                    log.debug("write check for role %s denied: %s", role, _first_line(exc))
                    return False
            return True

        return await self._run(check)

    async def persist(
        self,
        sub_topic: str,
        claims: Mapping[str, Any],
        headers: Mapping[str, str],
        event: str,
        data: bytes,
        binary: bool,
        ttl: int | None,
    ) -> str | None:
        """Store a private broadcast for replay (protocol.md §4.9) if the caller may insert an
        ``extension = 'persistence'`` row for ``sub_topic``: the stored row's id, or ``None``
        when denied.  ``data`` is JSON text, or the raw body when ``binary``; ``ttl`` seconds
        (``None``: no expiry).  Raises ``AuthzUnavailable`` when it cannot be stored."""
        role = _role_of(claims)
        if role is None:
            return None

        async def store(conn: AsyncConnection[Any]) -> str | None:
            async with conn.transaction():
                if not await self._settings(conn, sub_topic, claims, headers, role):
                    return None
                try:
                    async with conn.transaction(force_rollback=True):  # the role is reset after
                        if not await _set_role(conn, role):
                            return None
                        await conn.execute(_WRITE_SQL, (sub_topic, PERSISTENCE))
                except pg_errors.InsufficientPrivilege as exc:
                    log.debug("persist check for role %s denied: %s", role, _first_line(exc))
                    return None
                row = await (await conn.execute(_PERSIST_SQL, {
                    "topic": sub_topic,
                    "payload": None if binary else data.decode("utf-8"),
                    "binary": data if binary else None,
                    "event": event,
                    "ttl": ttl,
                })).fetchone()
            return str(row[0]) if row is not None else None

        return await self._run(store)

    async def replay(self, sub_topic: str, since_ms: int, limit: int) -> list[ReplayRow]:
        """Stored private broadcasts of ``sub_topic`` inserted at or after ``since_ms`` (ms since
        the epoch, UTC): the newest ``limit``, oldest first (protocol.md §4.8).  Validating and
        clamping ``since``/``limit`` is the caller's job; ``limit < 1`` gives nothing."""
        if limit < 1:
            return []
        since = _since(since_ms)

        async def read(conn: AsyncConnection[Any]) -> list[ReplayRow]:
            rows = await (await conn.execute(_REPLAY_SQL, (sub_topic, since, limit))).fetchall()
            return [
                ReplayRow(
                    id=r[0],
                    event=r[1],
                    payload_json=r[2].encode() if r[2] is not None else None,
                    binary=bytes(r[3]) if r[2] is None and r[3] is not None else None,
                )
                for r in rows
            ]

        return await self._run(read)

    async def close(self) -> None:
        """Close the idle connections; checks in progress close theirs when they finish."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()

    # --- one check --------------------------------------------------------------------------

    async def _settings(
        self,
        conn: AsyncConnection[Any],
        topic: str,
        claims: Mapping[str, Any],
        headers: Mapping[str, str],
        role: str,
    ) -> bool:
        """Apply the §7.3 settings; False when the role does not exist (denied)."""
        row = await (await conn.execute(_SETTINGS_SQL, {
            "role": role,
            "topic": topic,
            "claims": json.dumps(dict(claims), default=str),
            "sub": _claim_text(claims.get("sub")),
            "headers": json.dumps(dict(headers)),
            "timeout_ms": str(int(self._timeout * 1000)),
        })).fetchone()
        return bool(row and row[0])

    async def _run(self, op: Callable[[AsyncConnection[Any]], Awaitable[T]]) -> T:
        """Run ``op`` on a pooled connection; one retry on a fresh connection when a reused one
        turns out to be broken (the database restarted since it was last used)."""
        if self._closed:
            raise AuthzUnavailable("the authorizer is closed")
        async with self._slots:
            for attempt in range(2):
                conn, reused = await self._acquire()
                try:
                    async with asyncio.timeout(self._timeout):
                        result = await op(conn)
                except TimeoutError:
                    await conn.close()
                    raise AuthzUnavailable("the authorization query timed out") from None
                except psycopg.Error as exc:
                    broken = conn.broken or conn.closed
                    if broken:
                        await conn.close()
                    else:
                        await self._release(conn)
                    if broken and reused and attempt == 0:
                        continue
                    log.warning("authorization check failed: %s", _first_line(exc))
                    raise AuthzUnavailable() from exc
                except BaseException:  # cancelled mid-query: the connection state is unknown
                    await conn.close()
                    raise
                await self._release(conn)
                return result
        raise AssertionError("unreachable")  # the loop returns or raises

    async def _acquire(self) -> tuple[AsyncConnection[Any], bool]:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and not conn.broken:
                return conn, True
        params: dict[str, Any] = dict(conninfo_to_dict(self._dsn))
        params.setdefault("connect_timeout", _CONNECT_TIMEOUT)
        params.setdefault("application_name", "realtime_channels_authz")
        # UTC: replay compares inserted_at (timestamp in UTC, or timestamptz) with a UTC instant.
        params["options"] = f"{params.get('options') or ''} -c TimeZone=UTC".strip()
        try:
            conn = await AsyncConnection.connect(autocommit=True, **params)
        except psycopg.Error as exc:
            log.warning("authorization database unreachable: %s", _first_line(exc))
            raise AuthzUnavailable("the database is unreachable") from exc
        return conn, False

    async def _release(self, conn: AsyncConnection[Any]) -> None:
        if self._closed or conn.closed or conn.info.transaction_status != TransactionStatus.IDLE:
            await conn.close()
            return
        self._idle.append(conn)


async def _set_role(conn: AsyncConnection[Any], role: str) -> bool:
    """Switch to the JWT role for the rest of the transaction; False (denied, with a warning for
    the operator) when the login role is not a member of it."""
    try:
        async with conn.transaction():  # a savepoint keeps the transaction usable on failure
            await conn.execute(_SET_ROLE_SQL, (role,))
    except pg_errors.InsufficientPrivilege as exc:
        log.warning("cannot switch to role %s for an authorization check (%s); grant it to the login role",
                    role, _first_line(exc))
        return False
    return True


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
