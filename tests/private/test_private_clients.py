"""Private channels and database broadcast through the OFFICIAL clients (protocol.md §3.5, §3.9,
§4.4, §4.7, §9): supabase-js 2.119 (vsn 2.0.0) and realtime-js over vsn 1.0.0 via the Node peer
(tests/js/peer.mjs), and the Python ``realtime`` 2.34.1 client, against real RLS policies.

User tokens reach the JS clients through supabase-js's ``accessToken`` option (sent as the join's
``access_token``, the project key stays the ``apikey``); the Python client connects with the
user's token, which its joins then carry.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from peers import NodePeer, PyClient, is_status, node  # noqa: F401 - node is a fixture

READ, WRITE = "read", "write"
BROADCAST = "broadcast"
PrivateDb = Any  # conftest.PrivateDb
VSNS = ["2.0.0", "1.0.0"]
WAIT = 10.0
PRIVATE = {"private": True}


def new_user() -> str:
    return str(uuid.uuid4())


def private_topic() -> str:
    return f"room:{uuid.uuid4().hex[:10]}"


def unauthorized(sub: str) -> str:
    return f"Unauthorized: You do not have permissions to read from this Channel topic: {sub}"


def row_id(pdb: PrivateDb, sub: str, event: str) -> str:
    [(value,)] = pdb.fetchall("select id::text from realtime.messages where topic = %s and event = %s", (sub, event))
    return str(value)


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(36, 56)
async def test_js_private_channel_member_joins_and_stranger_gets_channel_error(
    pdb: PrivateDb, node: NodePeer, vsn: str
) -> None:
    writer, reader, stranger = new_user(), new_user(), new_user()
    sub = private_topic()
    pdb.grant(writer, sub, (BROADCAST, READ), (BROADCAST, WRITE))
    pdb.grant(reader, sub, (BROADCAST, READ))
    for name, user in (("w", writer), ("r", reader), ("s", stranger)):
        await node.add_client(name, pdb.server, vsn, token=pdb.token(user))
    await node.subscribe("w", "w", sub, config={"private": True, "broadcast": {"self": True}})
    await node.subscribe("r", "r", sub, config=PRIVATE)
    status = await node.subscribe("s", "s", sub, config=PRIVATE, expect="CHANNEL_ERROR")
    assert status["error"] == unauthorized(sub)  # realtime-js shows the reason verbatim (§3.5)

    assert await node.call("send", ch="w", event="note", payload={"text": "members only"}) == "ok"
    got = await node.wait_broadcast("r", "note")
    assert got["payload"] == {"text": "members only"}
    # The reader may not write: its send is dropped.  Its untrack is answered only after the
    # server has handled the send (pushes wait behind the write check in order, §7.3).
    assert await node.call("send", ch="r", event="denied", payload={}) == "ok"
    assert await node.call("untrack", ch="r") == "ok"
    assert await node.call("send", ch="w", event="after", payload={}) == "ok"
    await node.wait_broadcast("w", "after")  # the writer hears itself: anything earlier came first
    await node.wait_broadcast("r", "after")
    assert [e["event"] for e in node.broadcasts("w")] == ["note", "after"]
    assert [e["event"] for e in node.broadcasts("r")] == ["note", "after"]


async def test_js_set_auth_with_revoked_rights_closes_the_channel(pdb: PrivateDb, node: NodePeer) -> None:
    user = new_user()
    sub = private_topic()
    pdb.grant(user, sub, (BROADCAST, READ))
    await node.add_client("a", pdb.server, token=pdb.token(user))
    await node.subscribe("a", "a", sub, config=PRIVATE)
    pdb.revoke(user, sub, (BROADCAST, READ))
    mark = node.log.mark()
    await node.call("setAuth", client="a", token=pdb.token(user))
    system = await node.log.wait_for(lambda e: e["type"] == "system" and e["ch"] == "a", WAIT, since=mark,
                                     what="the shutdown notice")
    assert system["payload"] == {"extension": "system", "status": "error", "channel": sub,
                                 "message": f"You do not have permissions to read from this Channel topic: {sub}"}
    await node.log.wait_for(is_status("a", "CLOSED"), WAIT, since=mark, what="the channel to close")


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(55, 67, 68)
async def test_js_receives_realtime_send_private_and_public(pdb: PrivateDb, node: NodePeer, vsn: str) -> None:
    user = new_user()
    sub = private_topic()
    pdb.grant(user, sub, (BROADCAST, READ))
    await node.add_client("m", pdb.server, vsn, token=pdb.token(user))
    await node.add_client("p", pdb.server, vsn)  # one client holds one channel per topic
    await node.subscribe("m", "priv", sub, config=PRIVATE)
    await node.subscribe("p", "pub", sub)
    pdb.execute("select realtime.send('{\"text\": \"hi\"}'::jsonb, 'note', %s)", (sub,))
    pdb.execute("select realtime.send('{\"text\": \"all\"}'::jsonb, 'open', %s, false)", (sub,))
    note_id, open_id = row_id(pdb, sub, "note"), row_id(pdb, sub, "open")
    got = await node.wait_broadcast("priv", "note", timeout=WAIT)
    assert (got["payload"], got["meta"], got["binary"]) == ({"text": "hi", "id": note_id}, {"id": note_id}, False)
    got = await node.wait_broadcast("pub", "open", timeout=WAIT)
    assert (got["payload"], got["meta"]) == ({"text": "all", "id": open_id}, {"id": open_id})
    # each row reached only its own stream (the public row was committed last: a barrier for both)
    await node.wait_broadcast("priv", "note")
    assert [e["event"] for e in node.broadcasts("priv")] == ["note"]
    assert [e["event"] for e in node.broadcasts("pub")] == ["open"]


@pytest.mark.compat(36)
async def test_python_private_join_denied_surfaces_the_reason(pdb: PrivateDb) -> None:
    sub = private_topic()
    client = PyClient(pdb.server, "py", token=pdb.token(new_user()))
    try:
        status = await client.subscribe("p", sub, private=True, expect="CHANNEL_ERROR")
        assert status["reason"] == unauthorized(sub)
    finally:
        await client.close()


@pytest.mark.compat(67)
async def test_python_private_member_receives_realtime_send(pdb: PrivateDb) -> None:
    user = new_user()
    sub = private_topic()
    pdb.grant(user, sub, (BROADCAST, READ))
    client = PyClient(pdb.server, "py", token=pdb.token(user))
    try:
        await client.subscribe("p", sub, private=True)
        pdb.execute("select realtime.send('{\"n\": 1}'::jsonb, 'note', %s)", (sub,))
        got = await client.wait_broadcast("p", "note", timeout=WAIT)
        msg_id = row_id(pdb, sub, "note")
        # what the Python client hands its callback: the broadcast without "type", meta kept
        assert got["raw"] == {"event": "note", "payload": {"n": 1, "id": msg_id}, "meta": {"id": msg_id}}
    finally:
        await client.close()
