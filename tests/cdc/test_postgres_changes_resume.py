"""postgres_changes offsets and resume (protocol.md §4.10) against a real PostgreSQL, frame by
frame: ``config.postgres_changes_options.resume`` turns offsets on (each change's offset is the
message ``ref``), a join naming an offset receives the retained changes after it — re-checked
under its current claims, marked ``;replayed`` — then live ones, once and in order; an offset
older than what is retained gets a gap message; a restarted server (kill -9) still replays.

Negative assertions use a barrier: a later change on the same socket (changes reach a socket in
commit order).
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from feedservers import feed_server, own_slot
from rawclient import V1, V2, Frame, RawClient, event_is, open_client, unique_topic
from support import make_token, start_server

OFFSET_RE = re.compile(r"^[0-9A-F]{16}-[0-9A-F]{8}$")
WAIT = 20.0
SUBSCRIBED = "Subscribed to PostgreSQL"
DB_UNAVAILABLE = "Realtime was unable to connect to the project database"
U1 = "11111111-1111-4111-8111-111111111111"
U2 = "22222222-2222-4222-8222-222222222222"


def binding(table: str, event: str = "*") -> dict[str, Any]:
    return {"event": event, "schema": "public", "table": table}


def resuming(table: str, resume: Any = True, event: str = "*") -> dict[str, Any]:
    return {"postgres_changes": [binding(table, event)], "postgres_changes_options": {"resume": resume}}


async def subscribed(c: RawClient, topic: str) -> list[Frame]:
    """Frames up to and including the channel's ``Subscribed to PostgreSQL`` message."""
    frames: list[Frame] = []
    while True:
        frame = await c.expect(lambda f: f.topic == topic and f.event in ("system", "postgres_changes"), WAIT)
        frames.append(frame)
        if frame.event == "system" and frame.payload.get("message") == SUBSCRIBED:
            return frames
        # a server that just started may answer "unable to connect" first, and retry (§6.3)
        assert frame.event == "system" and (frame.payload.get("status") != "error"
                                            or frame.payload.get("message") == DB_UNAVAILABLE), frame.value


async def join_resuming(c: RawClient, topic: str, table: str, resume: Any = True, token: str | None = None,
                        event: str = "*") -> list[Frame]:
    reply = await c.join(topic, resuming(table, resume, event), access_token=token)
    assert reply.payload["status"] == "ok", reply.value
    return await subscribed(c, topic)


async def changes_until(c: RawClient, topic: str, last_id: int) -> list[Frame]:
    """The channel's postgres_changes (and system) frames up to the change of row ``last_id``."""
    out: list[Frame] = []
    while True:
        frame = await c.expect(lambda f: f.topic == topic and f.event in ("postgres_changes", "system"), WAIT)
        out.append(frame)
        if frame.event == "postgres_changes" and ident(frame) == last_id:
            return out


def ident(frame: Frame) -> Any:
    data = frame.payload["data"]
    return (data.get("record") or data.get("old_record"))["id"]


def ids(frames: list[Frame]) -> list[Any]:
    return [ident(f) for f in frames if f.event == "postgres_changes"]


def refs(frames: list[Frame]) -> list[str]:
    return [f.ref for f in frames if f.event == "postgres_changes"]


# --- offsets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("vsn", [V1, V2])
async def test_offsets_are_refs_only_for_channels_that_ask_and_grow_strictly(cdc: Any, vsn: str) -> None:
    table = cdc.table("id int primary key, body text")
    plain, numbered = unique_topic("plain"), unique_topic("numbered")
    async with open_client(cdc.server, vsn) as c:
        await c.join_ok(plain, {"postgres_changes": [binding(table)]})
        await subscribed(c, plain)
        await join_resuming(c, numbered, table)
        cdc.execute(f"insert into {table} values (1, 'a'), (2, 'b')")
        cdc.execute(f"update {table} set body = 'c' where id = 1")
        cdc.execute(f"delete from {table} where id = 2")
        got_plain = await changes_until(c, plain, 2)
        got_plain = got_plain if len(ids(got_plain)) == 4 else got_plain + await changes_until(c, plain, 2)
        got = await changes_until(c, numbered, 2)
        got = got if len(ids(got)) == 4 else got + await changes_until(c, numbered, 2)
    assert [f.ref for f in got_plain] == [None] * 4
    offsets = refs(got)
    assert all(OFFSET_RE.match(r) for r in offsets), offsets
    assert offsets == sorted(offsets) and len(set(offsets)) == 4
    # two changes of one transaction: the same LSN, consecutive indexes
    assert offsets[0][:16] == offsets[1][:16] and (offsets[0][17:], offsets[1][17:]) == ("00000000", "00000001")
    assert [f.join_ref for f in got] == [got[0].join_ref] * 4


async def test_token_refresh_keeps_offsets_and_replays_nothing(cdc: Any) -> None:
    table = cdc.table("id int primary key")
    topic = unique_topic("refresh")
    async with open_client(cdc.server, V2) as c:
        await join_resuming(c, topic, table, token=make_token("authenticated", sub=U1))
        cdc.execute(f"insert into {table} values (1)")
        first = await changes_until(c, topic, 1)
        await c.push(topic, "access_token", {"access_token": make_token("authenticated", sub=U1, exp_in=7200)})
        await subscribed(c, topic)
        cdc.execute(f"insert into {table} values (2)")
        second = await changes_until(c, topic, 2)
    assert ids(second) == [2], "the refresh replayed nothing"
    assert refs(first)[0] < refs(second)[0]


# --- resume ---------------------------------------------------------------------------------------


async def test_resume_replays_what_was_missed_once_in_order_marked_then_live(cdc: Any) -> None:
    table = cdc.table("id int primary key, body text")
    other = cdc.table("id int primary key")
    topic = unique_topic("resume")
    async with open_client(cdc.server, V2) as c:
        await join_resuming(c, topic, table)
        cdc.execute(f"insert into {table} values (1, 'a')")
        last = refs(await changes_until(c, topic, 1))[-1]
    # away: changes of the table (and of another) are committed
    with cdc.conn.transaction():
        cdc.execute(f"insert into {table} values (2, 'b'), (3, 'c')")
        cdc.execute(f"insert into {other} values (99)")
    cdc.execute(f"update {table} set body = 'd' where id = 2")
    cdc.execute(f"delete from {table} where id = 3")
    async with open_client(cdc.server, V2) as c:
        before = await join_resuming(c, topic, table, resume={"offset": last})
        assert [f.payload.get("message") for f in before] == [SUBSCRIBED]
        replay = await changes_until(c, topic, 3)
        replay = replay if len(ids(replay)) == 4 else replay + await changes_until(c, topic, 3)
        cdc.execute(f"insert into {table} values (4, 'e')")
        live = await changes_until(c, topic, 4)
    assert [(f.payload["data"]["type"], ident(f)) for f in replay] == [
        ("INSERT", 2), ("INSERT", 3), ("UPDATE", 2), ("DELETE", 3)]
    assert all(r.endswith(";replayed") for r in refs(replay))
    replayed_offsets = [r.split(";")[0] for r in refs(replay)]
    assert last < replayed_offsets[0] and replayed_offsets == sorted(replayed_offsets)
    assert ids(live) == [4] and not refs(live)[0].endswith(";replayed")
    assert replayed_offsets[-1] < refs(live)[0]
    # the replayed payload is the live one's shape
    assert replay[0].payload["data"]["record"] == {"id": 2, "body": "b"}
    assert replay[0].payload["ids"] == live[0].payload["ids"]


async def test_replay_is_judged_under_the_claims_of_the_resuming_join(cdc: Any) -> None:
    table = cdc.table("id int primary key, owner uuid", rls=True)
    cdc.execute(f"create policy own on {table} for select to authenticated using (owner = auth.uid())")
    topic = unique_topic("rls-resume")
    async with open_client(cdc.server, V2) as c:
        await join_resuming(c, topic, table, token=make_token("authenticated", sub=U1))
        cdc.execute(f"insert into {table} values (1, '{U1}')")
        last = refs(await changes_until(c, topic, 1))[-1]
    for i, owner in ((2, U1), (3, U2), (4, U2), (5, U1)):
        cdc.execute(f"insert into {table} values ({i}, '{owner}')")
    async with open_client(cdc.server, V2) as c:
        await join_resuming(c, topic, table, resume={"offset": last}, token=make_token("authenticated", sub=U1))
        as_u1 = await changes_until(c, topic, 5)
    async with open_client(cdc.server, V2) as c:
        # the same offset with another user's token: that user's rows, not the first user's
        await join_resuming(c, topic, table, resume={"offset": last}, token=make_token("authenticated", sub=U2))
        as_u2 = await changes_until(c, topic, 4)
        cdc.execute(f"insert into {table} values (6, '{U2}')")
        barrier = await changes_until(c, topic, 6)
    assert ids(as_u1) == [2, 5]
    assert ids(as_u2) == [3, 4] and ids(barrier) == [6]


async def test_resume_applies_the_binding_event_filter(cdc: Any) -> None:
    table = cdc.table("id int primary key")
    topic = unique_topic("ins-only")
    async with open_client(cdc.server, V2) as c:
        await join_resuming(c, topic, table, event="INSERT")
        cdc.execute(f"insert into {table} values (1)")
        last = refs(await changes_until(c, topic, 1))[-1]
    cdc.execute(f"delete from {table} where id = 1")
    cdc.execute(f"insert into {table} values (2)")
    async with open_client(cdc.server, V2) as c:
        await join_resuming(c, topic, table, resume={"offset": last}, event="INSERT")
        got = await changes_until(c, topic, 2)
    assert [(f.payload["data"]["type"], ident(f)) for f in got] == [("INSERT", 2)]


@pytest.mark.parametrize("resume", [{"offset": "nope"}, {"offset": 5}, {}, "yes", {"offset": "0000000001a-00000000"}])
async def test_invalid_resume_parameters_refuse_the_join(cdc: Any, resume: Any) -> None:
    table = cdc.table("id int primary key")
    async with open_client(cdc.server, V2) as c:
        reply = await c.join(unique_topic("bad"), resuming(table, resume))
    assert reply.payload == {"status": "error", "response": {
        "reason": "UnableToResumeMessages: Resume parameters are invalid"}}


async def test_an_offset_older_than_retention_gets_a_gap_then_what_is_retained(cdc: Any, tmp_path: Any) -> None:
    with feed_server(cdc, tmp_path, "gap", REALTIME_RESUME_MAX_CHANGES="3") as server:
        table = cdc.table("id int primary key")
        topic = unique_topic("gap")
        async with open_client(server, V2) as c:
            await join_resuming(c, topic, table)
            cdc.execute(f"insert into {table} values (1)")
            last = refs(await changes_until(c, topic, 1))[-1]
        async with open_client(server, V2) as watcher:
            watch = unique_topic("watch")
            await join_resuming(watcher, watch, table)
            for i in range(2, 8):  # six changes, three retained
                cdc.execute(f"insert into {table} values ({i})")
            await changes_until(watcher, watch, 7)  # the barrier: the server has routed all six
        async with open_client(server, V2) as c:
            await join_resuming(c, topic, table, resume={"offset": last})
            got = await changes_until(c, topic, 7)
        gap = got[0]
        assert gap.event == "system" and gap.payload["status"] == "ok", gap.value
        assert gap.payload["extension"] == "postgres_changes"
        assert gap.payload["message"].startswith("ResumeGap: ")
        assert gap.payload["gap"]["missed"] is None
        assert ids(got) == [5, 6, 7]
        assert gap.payload["gap"]["retained_from"][:16] == refs(got)[0][:16]


async def test_resume_is_refused_when_retention_is_off(cdc: Any, tmp_path: Any) -> None:
    with feed_server(cdc, tmp_path, "off", REALTIME_RESUME_WINDOW_S="0") as server:
        table = cdc.table("id int primary key")
        async with open_client(server, V2) as c:
            reply = await c.join(unique_topic("off"), resuming(table))
        assert reply.payload == {"status": "error", "response": {
            "reason": "UnableToResumeMessages: Resume is not enabled on this server"}}


# --- restart ----------------------------------------------------------------------------------------


async def test_a_killed_server_restarted_replays_what_was_committed_before_and_while_it_was_down(
        cdc: Any, tmp_path: Any) -> None:
    """kill -9, rows committed while no server runs, a new server on the same slot: a join
    naming the last offset seen receives every later row once, in order — both those the old
    server had already routed and those committed while it was down."""
    table = cdc.table("id int primary key")
    topic = unique_topic("restart")
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
    with own_slot(cdc, "kill") as env:
        first = start_server(str(tmp_path / "a"), **env)
        second = None
        try:
            async with open_client(first, V2) as c:
                await join_resuming(c, topic, table)
                cdc.execute(f"insert into {table} values (1)")
                last = refs(await changes_until(c, topic, 1))[-1]
                for i in range(2, 6):  # routed by the first server, after the client's offset
                    cdc.execute(f"insert into {table} values ({i})")
                routed = await changes_until(c, topic, 5)
                assert ids(routed) == [2, 3, 4, 5]
            first.proc.kill()
            first.proc.wait()
            for i in range(6, 11):  # committed while no server runs
                cdc.execute(f"insert into {table} values ({i})")
            second = start_server(str(tmp_path / "b"), **env)
            async with open_client(second, V2) as c:
                await join_resuming(c, topic, table, resume={"offset": last})
                got = await changes_until(c, topic, 10)
                cdc.execute(f"insert into {table} values (11)")
                live = await changes_until(c, topic, 11)
            assert [f.event for f in got] == ["postgres_changes"] * 9, [f.value for f in got]
            assert ids(got) == list(range(2, 11))
            assert all(r.endswith(";replayed") for r in refs(got))
            # the replayed offsets of rows 2-5 are the ones the first server sent
            assert [r.split(";")[0] for r in refs(got)[:4]] == refs(routed)
            assert ids(live) == [11]
        finally:
            first.stop()
            if second is not None:
                second.stop()
