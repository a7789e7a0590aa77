"""Private channels against real RLS policies, frame by frame, on both serializers (protocol.md
§3.5, §3.9, §4.2, §4.4, §5.5, §7.3; checklist 36, 39, 45, 55–57, 65, 84).

Rights come from ``public.rc_members`` rows read by the policies of ``conftest.POLICIES_SQL``.
Negative assertions ("X was not delivered") use a barrier on the same socket: the server's
in-process fan-out writes a broadcast to every subscriber before it answers the sender, so a
frame the server writes to a socket later (a heartbeat reply, a later broadcast of the same
stream) would arrive after X had X been delivered.  Pushes queued behind a pending write check
are processed in order (§7.3), so a push's reply also marks "the earlier push was handled".
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from rawclient import V1, V2, VSNS, Frame, RawClient, event_is, open_client, reply_to
from yarl import URL

#: rights as (extension, mode) pairs for ``pdb.grant`` (see conftest.py)
READ, WRITE = "read", "write"
BROADCAST, PRESENCE = "broadcast", "presence"
PrivateDb = Any  # conftest.PrivateDb (conftest modules are not importable by name)

OK: dict[str, Any] = {"status": "ok", "response": {}}
JOIN_OK: dict[str, Any] = {"status": "ok", "response": {"postgres_changes": []}}


def new_user() -> str:
    return str(uuid.uuid4())


def private_topic(prefix: str = "room") -> str:
    return f"{prefix}:{uuid.uuid4().hex[:10]}"


def unauthorized(sub: str) -> str:
    return f"Unauthorized: You do not have permissions to read from this Channel topic: {sub}"


def full(sub: str) -> str:
    return f"realtime:{sub}"


def private(**config: Any) -> dict[str, Any]:
    return {"private": True, **config}


def bpayload(event: str, data: Any) -> dict[str, Any]:
    return {"type": "broadcast", "event": event, "payload": data}


def is_broadcast(topic: str) -> Any:
    return event_is("broadcast", topic)


def system_error(sub: str, message: str) -> dict[str, Any]:
    return {"extension": "system", "status": "error", "message": message, "channel": sub}


async def presence_push(c: RawClient, topic: str, event: str, payload: Any = None) -> Frame:
    body: dict[str, Any] = {"type": "presence", "event": event}
    if payload is not None:
        body["payload"] = payload
    ref = await c.push(topic, "presence", body)
    return await c.expect(reply_to(ref, topic))


async def assert_no_broadcast(c: RawClient, topic: str) -> None:
    """Barrier: a heartbeat reply is written after anything fanned out to ``c`` before it."""
    await c.assert_nothing_pending(is_broadcast(topic))


# --- join (§3.3 step 6, §3.5; items 36, 39) -------------------------------------------------


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(36)
async def test_member_joins_and_others_are_refused_without_close(pdb: PrivateDb, vsn: str) -> None:
    a, b = new_user(), new_user()
    sub = private_topic()
    pdb.grant(a, sub, (BROADCAST, READ))
    pdb.grant(b, private_topic(), (BROADCAST, READ))  # rights on another topic grant nothing here
    topic = full(sub)
    async with open_client(pdb.server, vsn) as ca, open_client(pdb.server, vsn) as cb:
        reply = await ca.join(topic, private(), access_token=pdb.token(a), ref="1", join_ref="1")
        assert reply.value == ca.wire("1", "1", topic, "phx_reply", JOIN_OK)
        for token in (pdb.token(b), None, pdb.token(a, banned=True)):  # B, the anon key, A banned
            ref = cb.next_ref()
            reply = await cb.join(topic, private(), access_token=token, ref=ref, join_ref=ref)
            assert reply.value == cb.wire(ref, ref, topic, "phx_reply",
                                          {"status": "error", "response": {"reason": unauthorized(sub)}})
        await cb.assert_nothing_pending(event_is("phx_close"))  # item 39


async def test_service_role_bypasses_the_policies(pdb: PrivateDb) -> None:
    topic = full(private_topic())
    async with open_client(pdb.server, V2) as c:
        reply = await c.join(topic, private(), access_token=pdb.server.service_key)
        assert reply.payload == JOIN_OK


async def test_presence_read_alone_admits_a_presence_enabled_join(pdb: PrivateDb) -> None:
    """§3.3: broadcast-read OR presence-read; presence-read is only asked when presence is on."""
    c_user = new_user()
    sub = private_topic()
    pdb.grant(c_user, sub, (PRESENCE, READ))
    topic = full(sub)
    async with open_client(pdb.server, V2) as c:
        reply = await c.join(topic, private(), access_token=pdb.token(c_user))
        assert reply.payload == {"status": "error", "response": {"reason": unauthorized(sub)}}
        jr = await c.join_ok(topic, private(presence={"enabled": True}), access_token=pdb.token(c_user))
        state = await c.expect(event_is("presence_state", topic))
        assert state.value == c.wire(jr, None, topic, "presence_state", {})


# --- broadcast rights (§4.2, §4.4; items 56, 57) ----------------------------------------------


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(56, 57)
async def test_write_denied_is_dropped_without_ack_and_read_denied_receives_nothing(pdb: PrivateDb, vsn: str) -> None:
    writer, reader, watcher = new_user(), new_user(), new_user()
    sub = private_topic()
    topic = full(sub)
    pdb.grant(writer, sub, (BROADCAST, READ), (BROADCAST, WRITE))
    pdb.grant(reader, sub, (BROADCAST, READ))  # may read, may not write
    pdb.grant(watcher, sub, (PRESENCE, READ))  # presence only: never receives broadcasts
    acked = {"broadcast": {"ack": True, "self": True}}
    async with (
        open_client(pdb.server, vsn) as w,
        open_client(pdb.server, vsn) as r,
        open_client(pdb.server, vsn) as p,
    ):
        await w.join_ok(topic, private(**acked), access_token=pdb.token(writer))
        await r.join_ok(topic, private(broadcast={"ack": True}), access_token=pdb.token(reader))
        await p.join_ok(topic, private(presence={"enabled": True}), access_token=pdb.token(watcher))
        await p.expect(event_is("presence_state", topic))

        hello = bpayload("hello", {"n": 1})
        ref = await w.broadcast(topic, "hello", {"n": 1})
        assert (await w.expect(reply_to(ref, topic))).payload == OK
        assert (await w.expect(is_broadcast(topic))).value == w.wire(None, None, topic, "broadcast", hello)
        assert (await r.expect(is_broadcast(topic))).value == r.wire(None, None, topic, "broadcast", hello)

        # The reader's send: dropped, and no ack even though it asked for one (item 56).
        denied = await r.broadcast(topic, "denied", {"n": 2})
        assert (await presence_push(r, topic, "untrack")).payload == OK  # processed after the send
        await r.assert_nothing_pending(reply_to(denied))
        await assert_no_broadcast(w, topic)

        # Item 57: the presence-only member saw none of it.
        await assert_no_broadcast(p, topic)
        # The denial is cached: a second send is dropped as well, the socket is untouched.
        denied2 = await r.broadcast(topic, "denied", {"n": 3})
        assert (await presence_push(r, topic, "untrack")).payload == OK
        await r.assert_nothing_pending(reply_to(denied2))
        await assert_no_broadcast(w, topic)


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(55)
async def test_public_and_private_streams_of_one_sub_topic_are_isolated(pdb: PrivateDb, vsn: str) -> None:
    member = new_user()
    sub = private_topic()
    topic = full(sub)
    pdb.grant(member, sub, (BROADCAST, READ), (BROADCAST, WRITE))
    echo = {"broadcast": {"ack": True, "self": True}}
    async with open_client(pdb.server, vsn) as priv, open_client(pdb.server, vsn) as pub:
        await priv.join_ok(topic, private(**echo), access_token=pdb.token(member))
        await pub.join_ok(topic, echo)
        ref = await priv.broadcast(topic, "secret", {})
        await priv.expect(reply_to(ref, topic))
        assert (await priv.expect(is_broadcast(topic))).payload == bpayload("secret", {})
        await assert_no_broadcast(pub, topic)
        ref = await pub.broadcast(topic, "open", {})
        await pub.expect(reply_to(ref, topic))
        assert (await pub.expect(is_broadcast(topic))).payload == bpayload("open", {})
        await assert_no_broadcast(priv, topic)


# --- presence rights (§5.5; item 84) ----------------------------------------------------------


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(84)
async def test_presence_write_and_read_are_checked_separately(pdb: PrivateDb, vsn: str) -> None:
    tracker, viewer, outsider = new_user(), new_user(), new_user()
    sub = private_topic()
    topic = full(sub)
    pdb.grant(tracker, sub, (PRESENCE, READ), (PRESENCE, WRITE))
    pdb.grant(viewer, sub, (PRESENCE, READ))
    pdb.grant(outsider, sub, (BROADCAST, READ))  # joins, but may not see presence
    async with (
        open_client(pdb.server, vsn) as t,
        open_client(pdb.server, vsn) as v,
        open_client(pdb.server, vsn) as o,
    ):
        for c, user, key in ((t, tracker, "t"), (v, viewer, "v"), (o, outsider, "o")):
            await c.join_ok(topic, private(presence={"enabled": True, "key": key}), access_token=pdb.token(user))
        assert (await t.expect(event_is("presence_state", topic))).payload == {}
        assert (await v.expect(event_is("presence_state", topic))).payload == {}

        # No presence-write: an empty error and no diff anywhere (item 84).
        reply = await presence_push(v, topic, "track", {"name": "viewer"})
        assert reply.payload == {"status": "error", "response": {}}

        reply = await presence_push(t, topic, "track", {"name": "tracker"})
        assert reply.payload == OK
        for c in (t, v):
            diff = await c.expect(event_is("presence_diff", topic))
            assert diff.value == c.wire(None, None, topic, "presence_diff", diff.payload)
            assert diff.payload["leaves"] == {}
            assert list(diff.payload["joins"]) == ["t"]  # the viewer's refused track is not in it
            [meta] = diff.payload["joins"]["t"]["metas"]
            assert meta["name"] == "tracker" and isinstance(meta["phx_ref"], str)
        # The outsider has no presence-read: no state at join, no diffs (barrier: heartbeat).
        await o.assert_nothing_pending(lambda f: f.event in ("presence_state", "presence_diff"))


async def test_first_track_on_presence_disabled_join_checks_read_and_write(pdb: PrivateDb) -> None:
    user = new_user()
    sub = private_topic()
    topic = full(sub)
    pdb.grant(user, sub, (BROADCAST, READ), (PRESENCE, READ), (PRESENCE, WRITE))
    async with open_client(pdb.server, V2) as c:
        jr = await c.join_ok(topic, private(presence={"key": "me"}), access_token=pdb.token(user))
        reply = await presence_push(c, topic, "track", {"on": True})
        assert reply.value == c.wire(jr, reply.ref, topic, "phx_reply", OK)
        diff = await c.expect(event_is("presence_diff", topic))  # presence-read granted on the way
        assert list(diff.payload["joins"]) == ["me"]
        await c.assert_nothing_pending(event_is("presence_state"))  # §5.1: no state for a late enable


# --- token refresh (§3.9; item 45) -------------------------------------------------------------


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.parametrize("how", ["membership-deleted", "claim-banned", "presence-read-lost"])
async def test_refresh_that_revokes_read_shuts_the_channel_down(pdb: PrivateDb, vsn: str, how: str) -> None:
    user = new_user()
    sub = private_topic()
    topic = full(sub)
    pdb.grant(user, sub, (BROADCAST, READ), (PRESENCE, READ))
    async with open_client(pdb.server, vsn) as c:
        jr = await c.join_ok(topic, private(presence={"enabled": True}), access_token=pdb.token(user))
        await c.expect(event_is("presence_state", topic))
        if how == "membership-deleted":
            pdb.revoke(user, sub, (BROADCAST, READ), (PRESENCE, READ))
            new_token = pdb.token(user)
            message = f"You do not have permissions to read from this Channel topic: {sub}"
        elif how == "claim-banned":
            new_token = pdb.token(user, banned=True)
            message = f"You do not have permissions to read from this Channel topic: {sub}"
        else:
            pdb.revoke(user, sub, (PRESENCE, READ))
            new_token = pdb.token(user)
            message = f"You no longer have permission to read from this Channel topic: {sub}"
        ref = await c.push(topic, "access_token", {"access_token": new_token})
        system = await c.expect(event_is("system", topic))
        assert system.value == c.wire(jr, None, topic, "system", system_error(sub, message))
        close = await c.expect(event_is("phx_close", topic))
        assert close.value == c.wire(jr, jr, topic, "phx_close", {})
        assert c.position(close) == c.position(system) + 1
        await c.assert_nothing_pending(reply_to(ref))  # §3.9: never a reply, and the socket stays


@pytest.mark.parametrize("vsn", VSNS)
async def test_write_right_is_cached_until_the_next_refresh(pdb: PrivateDb, vsn: str) -> None:
    writer, reader = new_user(), new_user()
    sub = private_topic()
    topic = full(sub)
    pdb.grant(writer, sub, (BROADCAST, READ), (BROADCAST, WRITE))
    pdb.grant(reader, sub, (BROADCAST, READ))
    async with open_client(pdb.server, vsn) as w, open_client(pdb.server, vsn) as r:
        await w.join_ok(topic, private(broadcast={"ack": True}), access_token=pdb.token(writer))
        await r.join_ok(topic, private(), access_token=pdb.token(reader))
        ref = await w.broadcast(topic, "one", {})
        assert (await w.expect(reply_to(ref, topic))).payload == OK
        assert (await r.expect(is_broadcast(topic))).payload == bpayload("one", {})

        pdb.revoke(writer, sub, (BROADCAST, WRITE))
        ref = await w.broadcast(topic, "two", {})  # still cached (§7.3)
        assert (await w.expect(reply_to(ref, topic))).payload == OK
        assert (await r.expect(is_broadcast(topic))).payload == bpayload("two", {})

        # A refresh that keeps read re-evaluates write lazily: now denied, silently.
        await w.push(topic, "access_token", {"access_token": pdb.token(writer)})
        dropped = await w.broadcast(topic, "three", {})
        assert (await presence_push(w, topic, "untrack")).payload == OK
        await w.assert_nothing_pending(reply_to(dropped))
        await assert_no_broadcast(r, topic)


@pytest.mark.parametrize("vsn", VSNS)
async def test_refresh_that_keeps_access_changes_nothing(pdb: PrivateDb, vsn: str) -> None:
    user = new_user()
    sub = private_topic()
    topic = full(sub)
    pdb.grant(user, sub, (BROADCAST, READ), (BROADCAST, WRITE))
    async with open_client(pdb.server, vsn) as c:
        await c.join_ok(topic, private(broadcast={"ack": True, "self": True}), access_token=pdb.token(user))
        await c.push(topic, "access_token", {"access_token": pdb.token(user)})
        ref = await c.broadcast(topic, "still", {})  # queued behind nothing; answered after checks
        assert (await c.expect(reply_to(ref, topic))).payload == OK
        assert (await c.expect(is_broadcast(topic))).payload == bpayload("still", {})
        await c.assert_nothing_pending(lambda f: f.event in ("system", "phx_close"))


# --- REST private sends (§1.8; item 65) --------------------------------------------------------


async def post(pdb: PrivateDb, path: str, body: Any, token: str) -> tuple[int, Any]:
    headers = {"apikey": pdb.server.anon_key, "Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:
        async with session.post(URL(pdb.server.http_url + path, encoded=True), data=json.dumps(body).encode(),
                                headers=headers) as resp:
            raw = await resp.read()
            return resp.status, (json.loads(raw) if raw else None)


def single(sub: str, event: str) -> str:
    return f"/api/broadcast/{quote(sub, safe='')}/events/{quote(event, safe='')}?private=true"


def rest_view(frame: Frame) -> Mapping[str, Any]:
    """The broadcast as a client sees it, text or kind-4 (§4.3)."""
    return frame.payload if isinstance(frame.payload, dict) else {}


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(55, 65)
async def test_rest_single_private_send_needs_write(pdb: PrivateDb, vsn: str) -> None:
    writer, stranger, reader = new_user(), new_user(), new_user()
    sub = private_topic()
    topic = full(sub)
    pdb.grant(writer, sub, (BROADCAST, WRITE))
    pdb.grant(reader, sub, (BROADCAST, READ))
    async with open_client(pdb.server, vsn) as r, open_client(pdb.server, vsn) as pub:
        await r.join_ok(topic, private(), access_token=pdb.token(reader))
        await pub.join_ok(topic, {})
        assert await post(pdb, single(sub, "note"), {"from": "stranger"}, pdb.token(stranger)) == (
            403, {"message": "Unauthorized"})
        assert await post(pdb, single(sub, "note"), {"from": "writer"}, pdb.token(writer)) == (202, None)
        frame = await r.expect(is_broadcast(topic))
        if vsn == V2:
            assert frame.is_binary and frame.user_event == "note" and frame.encoding == 1 and frame.metadata == b""
        assert rest_view(frame) == {"type": "broadcast", "event": "note", "payload": {"from": "writer"}}
        await assert_no_broadcast(r, topic)  # the stranger's message never came
        await assert_no_broadcast(pub, topic)  # and the private one did not reach the public stream


@pytest.mark.parametrize("vsn", [V1, V2])
async def test_rest_batch_drops_unauthorized_private_messages_silently(pdb: PrivateDb, vsn: str) -> None:
    writer, stranger, reader = new_user(), new_user(), new_user()
    sub = private_topic()
    topic = full(sub)
    pdb.grant(writer, sub, (BROADCAST, WRITE))
    pdb.grant(reader, sub, (BROADCAST, READ))
    async with open_client(pdb.server, vsn) as r, open_client(pdb.server, vsn) as pub:
        await r.join_ok(topic, private(), access_token=pdb.token(reader))
        await pub.join_ok(topic, {})
        batch = {"messages": [
            {"topic": sub, "event": "sneaky", "payload": {"n": 1}, "private": True},
            {"topic": sub, "event": "open", "payload": {"n": 2}},
        ]}
        assert await post(pdb, "/api/broadcast", batch, pdb.token(stranger)) == (202, None)
        assert (await pub.expect(is_broadcast(topic))).payload == {"payload": {"n": 2}, "event": "open",
                                                                   "type": "broadcast"}
        msg_id = str(uuid.uuid4())
        ok = {"messages": [{"topic": sub, "event": "legit", "payload": {"n": 3}, "private": True, "id": msg_id}]}
        assert await post(pdb, "/api/broadcast", ok, pdb.token(writer)) == (202, None)
        first = await r.expect(is_broadcast(topic))  # the stranger's would have come first
        assert first.value == r.wire(None, None, topic, "broadcast", {
            "payload": {"n": 3}, "event": "legit", "type": "broadcast", "meta": {"id": msg_id}})
        await assert_no_broadcast(pub, topic)


@pytest.mark.parametrize("vsn", VSNS)
async def test_a_join_superseded_while_its_check_runs_is_closed_and_its_queued_push_is_kept(pdb: PrivateDb, vsn: str) -> None:
    """§2.5 for a private join still waiting for its policy check: the second join is answered,
    the first gets its ``phx_close`` right after, and an acked broadcast sent between them is
    processed by the second join — acked and delivered, never dropped."""
    import psycopg

    user = new_user()
    sub = private_topic()
    topic = full(sub)
    pdb.grant(user, sub, (BROADCAST, READ), (BROADCAST, WRITE))
    acked = private(broadcast={"ack": True, "self": True})
    token = pdb.token(user)
    # Holding a lock on the table the policies read keeps every check of the two joins waiting
    # until the frames below have all been handled by the server.
    with psycopg.connect(pdb.dsn) as lock:
        lock.execute("lock table public.rc_members in access exclusive mode")
        async with open_client(pdb.server, vsn) as c:
            await c.send_msg(topic, "phx_join", {"config": acked, "access_token": token}, "1", "1")
            await c.broadcast(topic, "queued", {"n": 1}, ref="2", join_ref="1")
            await c.send_msg(topic, "phx_join", {"config": acked, "access_token": token}, "3", "3")
            await c.barrier()  # the server has read all three frames, its checks still wait
            lock.commit()
            second = await c.expect(reply_to("3", topic))
            assert second.value == c.wire("3", "3", topic, "phx_reply", JOIN_OK)
            closed = await c.expect(event_is("phx_close", topic))
            assert closed.value == c.wire("1", "1", topic, "phx_close", {})
            ack = await c.expect(reply_to("2", topic))
            assert ack.value == c.wire("3", "2", topic, "phx_reply", OK)
            delivered = await c.expect(is_broadcast(topic))
            assert delivered.value == c.wire(None, None, topic, "broadcast", bpayload("queued", {"n": 1}))
            await c.assert_nothing_pending(reply_to("1"))  # the superseded join has no other answer
            assert c.position(second) < c.position(closed)
