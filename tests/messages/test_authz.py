"""Private channel authorization by RLS on ``realtime.messages`` (protocol.md §7.3) and replay
reads (§4.8), against the private PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from realtime_channels.messages.authz import AuthzUnavailable, ChannelAuthorizer, ReplayRow
from realtime_channels.messages.migrations import migrate

USER_A = "6f1b5d4e-0000-4000-8000-00000000000a"
USER_B = "6f1b5d4e-0000-4000-8000-00000000000b"
BOTH = ["broadcast", "presence"]

# Policies written the Supabase way: realtime.topic(), the extension column, auth.uid(),
# auth.jwt() and request.headers.  Grants live in public.members as (user, topic, extension, mode).
POLICIES_SQL = """
create table public.members (user_id uuid, topic text, extension text, mode text);
grant select on public.members to authenticated;

create policy "members read" on realtime.messages for select to authenticated using (
    exists (select 1 from public.members m
            where m.user_id = auth.uid() and m.topic = realtime.topic()
              and m.extension = realtime.messages.extension and m.mode = 'read'));

create policy "members write" on realtime.messages for insert to authenticated with check (
    exists (select 1 from public.members m
            where m.user_id = auth.uid() and m.topic = realtime.topic()
              and m.extension = realtime.messages.extension and m.mode = 'write'));

create policy "header key reads" on realtime.messages for select to anon using (
    realtime.topic() like 'hdr:%'
    and (pg_catalog.current_setting('request.headers', true)::jsonb ->> 'x-room-key') = 'sesame');

create policy "jwt claim writes" on realtime.messages for insert to anon with check (
    realtime.topic() = 'jwt:' || (auth.jwt() ->> 'room') and extension = 'broadcast');

create policy "stored rows visible" on realtime.messages for select to anon using (event = 'visible-to-anon');

create role noprivs nologin;
"""


def claims(user: str | None, role: str = "authenticated", **extra: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"role": role, "exp": 9_999_999_999, **extra}
    if user is not None:
        c["sub"] = user
    return c


def grant(conn: psycopg.Connection[Any], user: str, topic: str, extension: str, mode: str) -> None:
    conn.execute("insert into public.members values (%s, %s, %s, %s)", (user, topic, extension, mode))


def topic(prefix: str = "room") -> str:
    return f"{prefix}:{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def db(msg_db: Any) -> Any:
    async def setup() -> None:
        async with await msg_db.aconnect() as conn:
            await migrate(conn)
            await conn.execute(POLICIES_SQL)

    asyncio.run(setup())
    return msg_db


@pytest.fixture
async def authz(db: Any) -> AsyncIterator[ChannelAuthorizer]:
    a = ChannelAuthorizer(db.dsn, max_connections=2)
    yield a
    await a.close()


def count_rows(db: Any, topics: list[str]) -> int:
    with db.connect() as conn:
        return int(conn.execute("select count(*) from realtime.messages where topic = any(%s)", (topics,)).fetchone()[0])


# --- read -----------------------------------------------------------------------------------


async def test_read_allows_a_member_and_denies_others(db: Any, authz: ChannelAuthorizer) -> None:
    t = topic()
    with db.connect() as conn:
        grant(conn, USER_A, t, "broadcast", "read")
    assert await authz.can_read(t, claims(USER_A), {}, BOTH) == {"broadcast": True, "presence": False}
    assert await authz.can_read(t, claims(USER_B), {}, BOTH) == {"broadcast": False, "presence": False}
    # The grant is for this topic only.
    assert await authz.can_read(topic(), claims(USER_A), {}, BOTH) == {"broadcast": False, "presence": False}


async def test_presence_read_is_separate_from_broadcast_read(db: Any, authz: ChannelAuthorizer) -> None:
    t = topic()
    with db.connect() as conn:
        grant(conn, USER_B, t, "presence", "read")
    assert await authz.can_read(t, claims(USER_B), {}, BOTH) == {"broadcast": False, "presence": True}
    assert await authz.can_read(t, claims(USER_B), {}, ["presence"]) == {"presence": True}
    assert await authz.can_read(t, claims(USER_A), {}, ["presence"]) == {"presence": False}


async def test_read_sees_request_headers(authz: ChannelAuthorizer) -> None:
    t = topic("hdr")
    anon = claims(None, role="anon")
    assert await authz.can_read(t, anon, {"x-room-key": "sesame"}, ["broadcast"]) == {"broadcast": True}
    assert await authz.can_read(t, anon, {"x-room-key": "wrong"}, ["broadcast"]) == {"broadcast": False}
    assert await authz.can_read(t, anon, {}, ["broadcast"]) == {"broadcast": False}


async def test_stored_rows_of_the_topic_do_not_grant_read(db: Any, authz: ChannelAuthorizer) -> None:
    # Only the probe rows count: a committed row the role could see changes nothing by itself.
    t = topic()
    with db.connect() as conn:
        conn.execute("select realtime.send('{}', 'visible-to-anon', %s)", (t,))
        conn.execute("set role anon")
        assert conn.execute("select count(*) from realtime.messages where topic = %s", (t,)).fetchone()[0] == 1
    assert await authz.can_read(t, claims(None, role="anon"), {}, ["broadcast"]) == {"broadcast": False}


async def test_probe_rows_are_never_committed(db: Any, authz: ChannelAuthorizer) -> None:
    t = topic()
    with db.connect() as conn:
        grant(conn, USER_A, t, "broadcast", "read")
        grant(conn, USER_A, t, "broadcast", "write")
    assert (await authz.can_read(t, claims(USER_A), {}, BOTH))["broadcast"] is True
    assert await authz.can_write(t, claims(USER_A), {}, "broadcast") is True
    assert count_rows(db, [t]) == 0


# --- write ----------------------------------------------------------------------------------


async def test_write_allows_a_member_and_denies_others(db: Any, authz: ChannelAuthorizer) -> None:
    t = topic()
    with db.connect() as conn:
        grant(conn, USER_A, t, "broadcast", "write")
        grant(conn, USER_B, t, "presence", "write")
    assert await authz.can_write(t, claims(USER_A), {}, "broadcast") is True
    assert await authz.can_write(t, claims(USER_A), {}, "presence") is False
    assert await authz.can_write(t, claims(USER_B), {}, "broadcast") is False
    assert await authz.can_write(t, claims(USER_B), {}, "presence") is True
    # Write does not imply read.
    assert await authz.can_read(t, claims(USER_A), {}, BOTH) == {"broadcast": False, "presence": False}


async def test_write_sees_jwt_claims(authz: ChannelAuthorizer) -> None:
    anon = claims(None, role="anon", room="42")
    assert await authz.can_write("jwt:42", anon, {}, "broadcast") is True
    assert await authz.can_write("jwt:43", anon, {}, "broadcast") is False
    assert await authz.can_write("jwt:42", anon, {}, "presence") is False


# --- roles and failures ------------------------------------------------------------------------


async def test_missing_roles_are_denied_not_errors(authz: ChannelAuthorizer) -> None:
    t = topic()
    for c in (claims(USER_A, role="no_such_role"), {"sub": USER_A}, claims(USER_A, role="")):
        assert await authz.can_read(t, c, {}, BOTH) == {"broadcast": False, "presence": False}
        assert await authz.can_write(t, c, {}, "broadcast") is False


async def test_role_without_table_privileges_is_denied(authz: ChannelAuthorizer) -> None:
    t = topic()
    assert await authz.can_read(t, claims(USER_A, role="noprivs"), {}, BOTH) == {"broadcast": False, "presence": False}
    assert await authz.can_write(t, claims(USER_A, role="noprivs"), {}, "broadcast") is False


async def test_service_role_bypasses_rls(authz: ChannelAuthorizer) -> None:
    t = topic()
    svc = claims(None, role="service_role")
    assert await authz.can_read(t, svc, {}, BOTH) == {"broadcast": True, "presence": True}
    assert await authz.can_write(t, svc, {}, "presence") is True


async def test_a_failing_policy_is_unavailable_not_a_grant(authz: ChannelAuthorizer) -> None:
    # auth.uid() casts sub to uuid: a bad sub makes the policy raise (§7.3 "database errors").
    t = topic()
    with pytest.raises(AuthzUnavailable):
        await authz.can_read(t, claims("not-a-uuid"), {}, ["broadcast"])
    with pytest.raises(AuthzUnavailable):
        await authz.can_write(t, claims("not-a-uuid"), {}, "broadcast")
    # The connection is fine afterwards.
    assert await authz.can_read(t, claims(USER_A), {}, ["broadcast"]) == {"broadcast": False}


async def test_unreachable_database_is_unavailable() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    a = ChannelAuthorizer(f"postgresql://postgres@127.0.0.1:{port}/postgres?connect_timeout=2")
    try:
        with pytest.raises(AuthzUnavailable):
            await a.can_read("room", claims(USER_A), {}, ["broadcast"])
        with pytest.raises(AuthzUnavailable):
            await a.replay("room", 0, 5)
    finally:
        await a.close()


async def test_reconnects_after_its_connections_are_killed(db: Any, authz: ChannelAuthorizer) -> None:
    t = topic()
    with db.connect() as conn:
        grant(conn, USER_A, t, "broadcast", "read")
    assert (await authz.can_read(t, claims(USER_A), {}, ["broadcast"]))["broadcast"] is True
    with db.connect() as conn:
        killed = conn.execute(
            "select count(*) from (select pg_terminate_backend(pid) from pg_stat_activity"
            " where datname = current_database() and application_name = 'realtime_channels_authz') k").fetchone()[0]
        assert killed >= 1
    assert (await authz.can_read(t, claims(USER_A), {}, ["broadcast"]))["broadcast"] is True


async def test_concurrent_checks_share_few_connections(db: Any, authz: ChannelAuthorizer) -> None:
    t = topic()
    with db.connect() as conn:
        grant(conn, USER_A, t, "broadcast", "read")
        grant(conn, USER_A, t, "broadcast", "write")
    checks: list[Coroutine[Any, Any, dict[str, bool] | bool]] = []
    for i in range(30):
        user = USER_A if i % 2 == 0 else USER_B
        checks.append(authz.can_read(t, claims(user), {}, ["broadcast"]))
        checks.append(authz.can_write(t, claims(user), {}, "broadcast"))
    results = await asyncio.gather(*checks)
    for i in range(30):
        expected = i % 2 == 0
        assert results[2 * i] == {"broadcast": expected}
        assert results[2 * i + 1] is expected
    with db.connect() as conn:
        n = conn.execute("select count(*) from pg_stat_activity where datname = current_database()"
                         " and application_name = 'realtime_channels_authz'").fetchone()[0]
    assert n <= 2


# --- replay ---------------------------------------------------------------------------------


def insert_at(conn: psycopg.Connection[Any], t: str, at: datetime, *, event: str = "e", private: bool = True,
              extension: str = "broadcast", payload: Any = None, binary: bytes | None = None) -> str:
    row = conn.execute(
        "insert into realtime.messages (topic, extension, event, private, payload, binary_payload, inserted_at)"
        " values (%s, %s, %s, %s, %s::jsonb, %s, %s) returning id::text",
        (t, extension, event, private, json.dumps(payload) if payload is not None else None, binary,
         at.replace(tzinfo=None))).fetchone()
    assert row is not None
    return str(row[0])


def ms(at: datetime) -> int:
    return int((at - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(milliseconds=1))


@pytest.fixture
def base(db: Any) -> datetime:
    """A time a little ahead of the database clock, on whole milliseconds (its partition exists)."""
    with db.connect() as conn:
        now: datetime = conn.execute("select now()").fetchone()[0].astimezone(UTC)
    return now.replace(microsecond=(now.microsecond // 1000) * 1000) + timedelta(minutes=1)


async def test_replay_newest_limit_oldest_first(db: Any, authz: ChannelAuthorizer, base: datetime) -> None:
    t = topic()
    with db.connect() as conn:
        ids = [insert_at(conn, t, base + timedelta(seconds=i), event=f"e{i}", payload={"n": i}) for i in range(6)]
    rows = await authz.replay(t, ms(base), 4)
    assert [r.id for r in rows] == ids[2:]  # the newest 4, oldest first
    assert [r.event for r in rows] == ["e2", "e3", "e4", "e5"]
    assert [json.loads(r.payload_json or b"") for r in rows] == [{"n": i} for i in range(2, 6)]
    assert all(r.binary is None for r in rows)
    assert [r.id for r in await authz.replay(t, ms(base), 25)] == ids


async def test_replay_since_is_inclusive_in_milliseconds(db: Any, authz: ChannelAuthorizer, base: datetime) -> None:
    t = topic()
    with db.connect() as conn:
        ids = [insert_at(conn, t, base + timedelta(milliseconds=i), payload={}) for i in range(3)]
    assert [r.id for r in await authz.replay(t, ms(base) + 1, 25)] == ids[1:]
    assert [r.id for r in await authz.replay(t, ms(base) + 2, 25)] == ids[2:]
    assert await authz.replay(t, ms(base) + 3, 25) == []
    assert await authz.replay(t, 10**17, 25) == []  # beyond any datetime: nothing, no error
    assert [r.id for r in await authz.replay(t, 0, 25)] == ids


async def test_replay_only_private_broadcasts_of_the_topic(db: Any, authz: ChannelAuthorizer, base: datetime) -> None:
    t = topic()
    body = bytes([0, 0x5C, 0xFF])
    with db.connect() as conn:
        keep_json = insert_at(conn, t, base, payload={"k": 1})
        insert_at(conn, t, base + timedelta(seconds=1), private=False, payload={"public": True})
        insert_at(conn, t, base + timedelta(seconds=2), extension="presence", payload={"p": 1})
        insert_at(conn, topic(), base + timedelta(seconds=3), payload={"other": 1})
        keep_bin = insert_at(conn, t, base + timedelta(seconds=4), binary=body)
        insert_at(conn, t, base + timedelta(seconds=5), payload=None)  # no body: nothing to replay
    rows = await authz.replay(t, ms(base), 25)
    assert rows == [
        ReplayRow(id=keep_json, event="e", payload_json=rows[0].payload_json, binary=None),
        ReplayRow(id=keep_bin, event="e", payload_json=None, binary=body),
    ]
    assert json.loads(rows[0].payload_json or b"") == {"k": 1}
    assert await authz.replay(t, ms(base), 0) == []


# --- persist (§4.9) -------------------------------------------------------------------------


def stored(db: Any, t: str) -> list[tuple[Any, ...]]:
    with db.connect() as conn:
        return [tuple(r) for r in conn.execute(
            "select id::text, extension, event, payload, binary_payload, private, skip_broadcast,"
            " extract(epoch from expires_at - (inserted_at at time zone 'utc'))"
            " from realtime.messages where topic = %s order by inserted_at", (t,)).fetchall()]


async def test_persist_needs_the_persistence_insert_policy(db: Any, authz: ChannelAuthorizer) -> None:
    t = topic()
    with db.connect() as conn:
        grant(conn, USER_A, t, "broadcast", "write")  # broadcast write alone is not enough
    assert await authz.persist(t, claims(USER_A), {}, "note", b'{"a": 1}', False, None) is None
    assert await authz.persist(t, claims(None, role="noprivs"), {}, "note", b"{}", False, None) is None
    assert stored(db, t) == []
    with db.connect() as conn:
        grant(conn, USER_A, t, "persistence", "write")
    json_id = await authz.persist(t, claims(USER_A), {}, "note", b'{"a": 1}', False, None)
    bin_id = await authz.persist(t, claims(USER_A), {}, "blob", b"\x00\xff", True, 90)
    assert stored(db, t) == [
        (json_id, "broadcast", "note", {"a": 1}, None, True, True, None),
        (bin_id, "broadcast", "blob", None, b"\x00\xff", True, True, 90),
    ]
    assert await authz.persist(t, claims(USER_B), {}, "note", b"{}", False, None) is None  # someone else


async def test_replay_returns_persisted_rows_until_they_expire(db: Any, authz: ChannelAuthorizer) -> None:
    t = topic()
    with db.connect() as conn:
        grant(conn, USER_A, t, "persistence", "write")
    short = await authz.persist(t, claims(USER_A), {}, "short", b'{"n": 1}', False, 3600)
    kept = await authz.persist(t, claims(USER_A), {}, "kept", b'{"n": 2}', False, None)
    assert [r.id for r in await authz.replay(t, 0, 25)] == [short, kept]
    with db.connect() as conn:  # the row's hour is over by the database clock
        conn.execute("update realtime.messages set expires_at = now() - interval '1 ms' where id = %s", (short,))
    assert [r.id for r in await authz.replay(t, 0, 25)] == [kept]


async def test_persist_failure_raises_authz_unavailable(db: Any, authz: ChannelAuthorizer) -> None:
    t = topic()
    with db.connect() as conn:
        grant(conn, USER_A, t, "persistence", "write")
    with pytest.raises(AuthzUnavailable):  # jsonb refuses a NUL character
        await authz.persist(t, claims(USER_A), {}, "note", b'{"a": "\\u0000"}', False, None)
    assert stored(db, t) == []
