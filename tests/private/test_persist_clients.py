"""Persisted broadcasts (protocol.md §4.9) through the OFFICIAL client: supabase-js 2.119
(vsn 2.0.0, kind-3 metadata ``{"persist": …}``) and its ``httpSend(…, {persist})``, against real
RLS policies and the server's replay (§4.8).

The fixture's write policy grants a row ``(user, topic, extension, 'write')``, so the right to
persist is ``(persistence, write)``.  A persisted message is stored first, then broadcast live
once; a ``realtime.send`` row committed after it is the barrier proving the database-broadcast
feed did not send it a second time (the feed delivers rows in commit order).
"""

from __future__ import annotations

import uuid
from typing import Any

from peers import NodePeer, node  # noqa: F401 - node is a fixture

READ, WRITE = "read", "write"
BROADCAST, PERSISTENCE = "broadcast", "persistence"
PrivateDb = Any  # conftest.PrivateDb
WAIT = 10.0
ACKED = {"private": True, "broadcast": {"ack": True}}
REPLAY = {"private": True, "broadcast": {"replay": {"since": 0, "limit": 25}}}


def new_user() -> str:
    return str(uuid.uuid4())


def private_topic() -> str:
    return f"persist:{uuid.uuid4().hex[:10]}"


def stored_rows(pdb: PrivateDb, sub: str) -> list[tuple[Any, ...]]:
    """(id, event, payload, extension, private, skip_broadcast, ttl seconds) of ``sub``'s rows, oldest first."""
    return [tuple(r) for r in pdb.fetchall(
        "select id::text, event, payload, extension, private, skip_broadcast,"
        " extract(epoch from expires_at - (inserted_at at time zone 'utc'))"
        " from realtime.messages where topic = %s order by inserted_at, id", (sub,))]


async def writer_and_listener(pdb: PrivateDb, node: NodePeer, sub: str, *writer_rights: tuple[str, str]) -> None:
    """Client/channel ``w`` (ack on) with ``writer_rights`` besides broadcast read and write, and
    ``l``, a member listening live."""
    writer, listener = new_user(), new_user()
    pdb.grant(writer, sub, (BROADCAST, READ), (BROADCAST, WRITE), *writer_rights)
    pdb.grant(listener, sub, (BROADCAST, READ))
    await node.add_client("w", pdb.server, token=pdb.token(writer))
    await node.add_client("l", pdb.server, token=pdb.token(listener))
    await node.subscribe("w", "w", sub, config=ACKED)
    await node.subscribe("l", "l", sub, config={"private": True})


async def barrier(pdb: PrivateDb, node: NodePeer, sub: str) -> None:
    """A database row committed now reaches ``l``: anything the feed had before came first."""
    pdb.execute("select realtime.send('{}'::jsonb, 'barrier', %s)", (sub,))
    await node.wait_broadcast("l", "barrier")


async def replayed_to_new_member(pdb: PrivateDb, node: NodePeer, sub: str, name: str) -> list[Any]:
    """Join ``sub`` with replay as a new member: every broadcast it gets before a live one sent
    after its join (replayed messages are written right after the join reply)."""
    user = new_user()
    pdb.grant(user, sub, (BROADCAST, READ))
    await node.add_client(name, pdb.server, token=pdb.token(user))
    await node.subscribe(name, name, sub, config=REPLAY)
    assert await node.call("send", ch="w", event="live", payload={}) == "ok"
    await node.wait_broadcast(name, "live")
    return [(e["event"], e["payload"], e["meta"]) for e in node.broadcasts(name) if e["event"] != "live"]


async def test_js_persisted_sends_are_stored_broadcast_once_and_replayed_in_order(
    pdb: PrivateDb, node: NodePeer
) -> None:
    sub = private_topic()
    await writer_and_listener(pdb, node, sub, (PERSISTENCE, WRITE))

    # over the socket: the ack comes once the row is stored
    assert await node.call("send", ch="w", event="first", payload={"n": 1}, persist=True) == "ok"
    [(first_id, *first)] = stored_rows(pdb, sub)
    assert first == ["first", {"n": 1}, BROADCAST, True, True, None]
    # over REST, with a ttl: stored before the 202
    assert await node.call("httpSend", ch="w", event="second", payload={"n": 2}, persist={"ttl": 600}) == {
        "success": True}
    rows = stored_rows(pdb, sub)
    second_id = rows[1][0]
    assert list(rows[1][1:]) == ["second", {"n": 2}, BROADCAST, True, True, 600]
    assert await node.call("send", ch="w", event="third", payload={"n": 3}, persist={"ttl": 60}) == "ok"
    third_id = stored_rows(pdb, sub)[2][0]

    # live: each once, with the stored row's id; the feed does not send them again
    for n, (event, msg_id) in enumerate((("first", first_id), ("second", second_id), ("third", third_id)), 1):
        got = await node.wait_broadcast("l", event)
        assert (got["payload"], got["meta"]) == ({"n": n}, {"id": msg_id})
    await barrier(pdb, node, sub)
    assert [e["event"] for e in node.broadcasts("l")] == ["first", "second", "third", "barrier"]

    # a later member replays them, oldest first, with the database row after them
    got = await replayed_to_new_member(pdb, node, sub, "late")
    assert got == [
        ("first", {"n": 1}, {"replayed": True, "id": first_id}),
        ("second", {"n": 2}, {"replayed": True, "id": second_id}),
        ("third", {"n": 3}, {"replayed": True, "id": third_id}),
        ("barrier", {"id": got[3][2]["id"]}, {"replayed": True, "id": got[3][2]["id"]}),
    ]


async def test_js_without_the_persistence_policy_send_returns_unable_to_persist(
    pdb: PrivateDb, node: NodePeer
) -> None:
    sub = private_topic()
    await writer_and_listener(pdb, node, sub)  # broadcast write, but no persistence right
    reason = f"UnableToPersistMessage: You do not have permissions to persist messages on this Channel topic: {sub}"
    assert await node.call("send", ch="w", event="kept?", payload={"n": 1}, persist=True) == reason
    result = await node.try_call("httpSend", ch="w", event="kept?", payload={"n": 2}, persist=True)
    assert (result["ok"], result["error"]) == (False, reason)
    # nothing stored, nothing broadcast; the channel goes on
    assert stored_rows(pdb, sub) == []
    assert await node.call("send", ch="w", event="plain", payload={}) == "ok"
    await node.wait_broadcast("l", "plain")
    assert [e["event"] for e in node.broadcasts("l")] == ["plain"]


async def test_js_invalid_ttl_is_refused(pdb: PrivateDb, node: NodePeer) -> None:
    sub = private_topic()
    await writer_and_listener(pdb, node, sub, (PERSISTENCE, WRITE))
    reason = 'UnableToPersistMessage: persist must be true or {"ttl": <seconds>} with a positive integer ttl'
    for ttl in (0, -5, 1.5, "60"):
        assert await node.call("send", ch="w", event="bad", payload={}, persist={"ttl": ttl}) == reason
    result = await node.try_call("httpSend", ch="w", event="bad", payload={}, persist={"ttl": 0})
    assert (result["ok"], result["error"]) == (False, reason)
    assert stored_rows(pdb, sub) == []


async def test_js_an_expired_message_is_no_longer_replayed(pdb: PrivateDb, node: NodePeer) -> None:
    sub = private_topic()
    await writer_and_listener(pdb, node, sub, (PERSISTENCE, WRITE))
    assert await node.call("send", ch="w", event="short", payload={"n": 1}, persist={"ttl": 3600}) == "ok"
    assert await node.call("send", ch="w", event="kept", payload={"n": 2}, persist=True) == "ok"
    (short_id, *_), (kept_id, *_) = stored_rows(pdb, sub)
    assert [e for e, _, _ in await replayed_to_new_member(pdb, node, sub, "before")] == ["short", "kept"]
    # the hour passes for the row: its expiry is now behind the database clock
    pdb.execute("update realtime.messages set expires_at = now() - interval '1 second' where id = %s", (short_id,))
    assert await replayed_to_new_member(pdb, node, sub, "after") == [
        ("kept", {"n": 2}, {"replayed": True, "id": kept_id})]


async def test_rest_persist_query_is_validated_and_needs_a_private_channel(pdb: PrivateDb) -> None:
    from test_private_channels import post  # the raw REST call of the private-channel tests

    sub, user = private_topic(), new_user()
    pdb.grant(user, sub, (BROADCAST, WRITE), (PERSISTENCE, WRITE))
    base = f"/api/broadcast/{sub.replace(':', '%3A')}/events/e"
    invalid = {"message": 'UnableToPersistMessage: persist must be true or {"ttl": <seconds>} with a positive integer ttl'}
    for query in ("private=true&persist=yes", "private=true&persist%5Bttl%5D=0", "private=true&persist%5Bttl%5D=1e3",
                  "private=true&persist%5Bttl%5D=2147483648"):
        assert await post(pdb, f"{base}?{query}", {}, pdb.token(user)) == (422, invalid), query
    public = {"message": "UnableToPersistMessage: Only broadcasts of private channels can be persisted"}
    assert await post(pdb, f"{base}?persist=true", {}, pdb.token(user)) == (422, public)
    assert stored_rows(pdb, sub) == []
    # persist=false is an ordinary broadcast; persist[ttl] wins over persist
    assert await post(pdb, f"{base}?private=true&persist=false", {}, pdb.token(user)) == (202, None)
    assert stored_rows(pdb, sub) == []
    assert await post(pdb, f"{base}?private=true&persist=true&persist%5Bttl%5D=7", {"a": 1}, pdb.token(user)) == (
        202, None)
    [(_, event, payload, *_, ttl)] = stored_rows(pdb, sub)
    assert (event, payload, ttl) == ("e", {"a": 1}, 7)
