"""phx_join / phx_leave, duplicate joins, channel limits, postgres_changes echo (protocol.md §2.5, §3)."""

from __future__ import annotations

from typing import Any

import pytest
from support import ServerProc, make_token
from rawclient import V1, V2, VSNS, open_client, reply_to, sub_topic, system_msg, unique_topic, user_broadcast

OK_REPLY = {"status": "ok", "response": {}}
JOIN_OK = {"status": "ok", "response": {"postgres_changes": []}}
NO_DB_MESSAGE = (
    "Unable to subscribe to changes with given parameters. "
    "PostgreSQL is not configured (set REALTIME_DATABASE_URL)"
)


def join_error(reason: str) -> dict[str, Any]:
    return {"status": "error", "response": {"reason": reason}}


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(24)
async def test_join_with_empty_config_succeeds_and_nothing_follows(server: ServerProc, vsn: str) -> None:
    topic = unique_topic()
    async with open_client(server, vsn) as c:
        await c.send_msg(topic, "phx_join", {"config": {}}, "1", "1")
        assert (await c.next_frame()).value == c.wire("1", "1", topic, "phx_reply", JOIN_OK)
        await c.assert_nothing_pending()  # presence disabled, no bindings: no post-join pushes


@pytest.mark.parametrize("vsn", VSNS)
async def test_topic_with_colons_in_sub_topic(server: ServerProc, vsn: str) -> None:
    topic = unique_topic("room:1:chat")
    async with open_client(server, vsn) as c:
        await c.send_msg(topic, "phx_join", {"config": {}}, "1", "1")
        assert (await c.next_frame()).value == c.wire("1", "1", topic, "phx_reply", JOIN_OK)


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(26, 39)
async def test_empty_sub_topic_is_refused_and_not_closed(server: ServerProc, vsn: str) -> None:
    async with open_client(server, vsn) as c:
        await c.send_msg("realtime:", "phx_join", {"config": {}}, "2", "2")
        frame = await c.next_frame()
        assert frame.value == c.wire(
            "2", "2", "realtime:", "phx_reply", join_error("TopicNameRequired: You must provide a topic name")
        )
        await c.assert_nothing_pending()  # no phx_close after a failed join (§3.5, checklist 39)


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(27)
async def test_string_booleans_are_accepted(server: ServerProc, vsn: str) -> None:
    topic = unique_topic()
    config = {
        "broadcast": {"self": "true", "ack": "TRUE"},
        "presence": {"enabled": "True", "key": "k1"},
        "private": "FALSE",
    }
    async with open_client(server, vsn) as c:
        jr = await c.join_ok(topic, config)
        # presence.enabled "True" → presence_state (§5.2)
        state = await c.expect(lambda f: f.event == "presence_state")
        assert state.value == c.wire(jr, None, topic, "presence_state", {})
        # self "true" and ack "TRUE" → own message echoed and acked
        ref = await c.broadcast(topic, "e", {"v": 1})
        reply = await c.expect(reply_to(ref, topic))
        assert reply.value == c.wire(jr, ref, topic, "phx_reply", OK_REPLY)
        echo = await c.expect(lambda f: f.event == "broadcast")
        assert echo.broadcast_view() == {"type": "broadcast", "event": "e", "payload": {"v": 1}}


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(27)
async def test_string_false_booleans_keep_defaults_off(server: ServerProc, vsn: str) -> None:
    topic = unique_topic()
    async with open_client(server, vsn) as c, open_client(server, V2) as witness:
        await witness.join_ok(topic)
        await c.join_ok(topic, {"broadcast": {"self": "false", "ack": "False"}, "presence": {"enabled": "FALSE"}})
        await c.broadcast(topic, "e", {"v": 1})
        await witness.expect(user_broadcast("e", topic))  # the fan-out has happened
        await c.assert_nothing_pending()  # no presence_state, no ack, no self echo


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.parametrize(
    "config",
    [
        {"private": 5, "broadcast": "x", "presence": 7, "postgres_changes": "nope"},
        {"broadcast": {"self": 3, "ack": [1]}, "presence": {"enabled": {"a": 1}}, "private": "maybe"},
        {"broadcast": None, "presence": None, "postgres_changes": None, "private": None},
        {"postgres_changes": [None, None]},
    ],
)
@pytest.mark.compat(28)
async def test_invalid_field_types_take_defaults(server: ServerProc, vsn: str, config: dict[str, Any]) -> None:
    topic = unique_topic()
    async with open_client(server, vsn) as c, open_client(server, V2) as witness:
        await witness.join_ok(topic)
        await c.send_msg(topic, "phx_join", {"config": config}, "1", "1")
        assert (await c.next_frame()).value == c.wire("1", "1", topic, "phx_reply", JOIN_OK)
        await c.broadcast(topic, "e", {})
        await witness.expect(user_broadcast("e", topic))  # the fan-out has happened
        await c.assert_nothing_pending()  # defaults: no ack, no self, no presence_state


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(29)
async def test_unknown_join_payload_keys_are_ignored(server: ServerProc, vsn: str) -> None:
    topic = unique_topic()
    payload = {
        "config": {
            "broadcast": {"self": False, "ack": False, "replication_ready": False},
            "presence": {"key": "", "enabled": False},
            "postgres_changes": [],
            "private": False,
            "postgres_changes_options": {"wait": False, "timeout": 15000},
            "some_future_flag": {"x": 1},
        },
        "version": "realtime-js/2.119.0",
        "anything": [1, 2],
    }
    async with open_client(server, vsn) as c:
        await c.send_msg(topic, "phx_join", payload, "1", "1")
        assert (await c.next_frame()).value == c.wire("1", "1", topic, "phx_reply", JOIN_OK)


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(34, 35)
async def test_join_with_sb_key_or_without_token_uses_connection_key(server: ServerProc, vsn: str) -> None:
    async with open_client(server, vsn) as c:
        for access_token in ["sb_publishable_abc123", None]:
            topic = unique_topic()
            await c.join_ok(topic, access_token=access_token)
        topic = unique_topic()
        await c.join_ok(topic, access_token=make_token("authenticated", sub="user-1"))


# --- postgres_changes echo (§3.4) and the no-database system error (SERVER.md) -------------


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(30, 31)
async def test_postgres_changes_bindings_are_echoed_with_ids(server: ServerProc, vsn: str) -> None:
    topic = unique_topic()
    bindings: list[Any] = [
        {"event": "*", "schema": "public", "table": "messages", "filter": "room_id=eq.7"},
        None,
        {"event": "INSERT", "schema": "public", "table": "users", "select": ["id", "name"]},
        {"event": "insert", "schema": "public"},
        {"event": "*", "schema": "public", "table": "messages", "filter": "room_id=eq.7"},
    ]
    async with open_client(server, vsn) as c:
        await c.send_msg(topic, "phx_join", {"config": {"postgres_changes": bindings}}, "1", "1")
        reply = await c.next_frame()
        assert reply.ref == "1" and reply.event == "phx_reply"
        assert reply.payload["status"] == "ok", reply.value
        echoed = reply.payload["response"]["postgres_changes"]
        sent = [b for b in bindings if b is not None]
        assert len(echoed) == len(sent)
        for got, want in zip(echoed, sent, strict=True):
            ident = got.pop("id")
            assert type(ident) is int and ident != 0
            assert got == want  # unchanged: no defaults added, no upper-casing
            got["id"] = ident
        # identical bindings within a channel get identical ids (§3.4)
        assert echoed[0]["id"] == echoed[3]["id"]
        # all pushes of a join come after its reply; without a database the subscription fails
        system = await c.expect(system_msg(topic))
        assert system.value == c.wire(
            "1",
            None,
            topic,
            "system",
            {"extension": "postgres_changes", "status": "error", "message": NO_DB_MESSAGE, "channel": sub_topic(topic)},
        )


@pytest.mark.parametrize("vsn", VSNS)
async def test_single_binding_gets_exactly_one_system_error(server: ServerProc, vsn: str) -> None:
    topic = unique_topic()
    binding = {"event": "UPDATE", "schema": "public", "table": "notes"}
    async with open_client(server, vsn) as c:
        await c.send_msg(topic, "phx_join", {"config": {"postgres_changes": [binding]}}, "5", "4")
        reply = await c.next_frame()
        echoed = reply.payload["response"]["postgres_changes"]
        assert reply.value == c.wire(
            "4", "5", topic, "phx_reply", {"status": "ok", "response": {"postgres_changes": [{**binding, "id": echoed[0]["id"]}]}}
        )
        system = await c.next_frame()
        assert system.value == c.wire(
            "4",
            None,
            topic,
            "system",
            {"extension": "postgres_changes", "status": "error", "message": NO_DB_MESSAGE, "channel": sub_topic(topic)},
        )
        await c.assert_nothing_pending()
        await c.heartbeat("hb")  # the channel error does not close the socket


@pytest.mark.parametrize("vsn", VSNS)
async def test_private_join_without_database_is_unauthorized(server: ServerProc, vsn: str) -> None:
    topic = unique_topic()
    async with open_client(server, vsn) as c:
        await c.send_msg(topic, "phx_join", {"config": {"private": True}}, "1", "1")
        frame = await c.next_frame()
        reason = f"Unauthorized: You do not have permissions to read from this Channel topic: {sub_topic(topic)}"
        assert frame.value == c.wire("1", "1", topic, "phx_reply", join_error(reason))
        await c.assert_nothing_pending()


# --- duplicate joins (§2.5) and leave (§3.6) --------------------------------------------------


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(23)
async def test_duplicate_join_replies_then_closes_old_join(server: ServerProc, vsn: str) -> None:
    topic = unique_topic()
    async with open_client(server, vsn) as c:
        await c.join_ok(topic, ref="1", join_ref="1")
        await c.send_msg(topic, "phx_join", {"config": {"broadcast": {"ack": True}}}, "3", "3")
        assert (await c.next_frame()).value == c.wire("3", "3", topic, "phx_reply", JOIN_OK)
        assert (await c.next_frame()).value == c.wire("1", "1", topic, "phx_close", {})
        await c.assert_nothing_pending()
        # The new join is live with its own config and join_ref.
        await c.broadcast(topic, "e", {}, ref="4", join_ref="3")
        assert (await c.next_frame()).value == c.wire("3", "4", topic, "phx_reply", OK_REPLY)


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(40)
async def test_leave_replies_then_closes(server: ServerProc, vsn: str) -> None:
    topic = unique_topic()
    async with open_client(server, vsn) as c:
        await c.join_ok(topic, ref="1", join_ref="1")
        await c.send_msg(topic, "phx_leave", {}, "12", "1")
        assert (await c.next_frame()).value == c.wire("1", "12", topic, "phx_reply", OK_REPLY)
        assert (await c.next_frame()).value == c.wire("1", "1", topic, "phx_close", {})
        await c.assert_nothing_pending()
        # The topic is no longer joined.
        await c.send_msg(topic, "broadcast", {"type": "broadcast", "event": "e", "payload": {}}, "13", "1")
        assert (await c.next_frame()).value == c.wire(
            None, "13", topic, "phx_reply", {"status": "error", "response": {"reason": "unmatched topic"}}
        )
        # ... and can be joined again.
        await c.send_msg(topic, "phx_join", {"config": {}}, "14", "14")
        assert (await c.next_frame()).value == c.wire("14", "14", topic, "phx_reply", JOIN_OK)


async def test_leave_stops_delivery(server: ServerProc) -> None:
    topic = unique_topic()
    async with open_client(server, V2) as sender, open_client(server, V1) as receiver:
        await sender.join_ok(topic, {"broadcast": {"self": True}})
        await receiver.join_ok(topic)
        ref = await receiver.push(topic, "phx_leave", {})
        assert (await receiver.next_frame()).ref == ref
        assert (await receiver.next_frame()).event == "phx_close"
        await sender.broadcast(topic, "e", {"x": 1})
        await sender.expect(user_broadcast("e", topic))  # the fan-out has happened
        await receiver.assert_nothing_pending()


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(39)
async def test_failed_join_does_not_create_a_channel(server: ServerProc, vsn: str) -> None:
    topic = unique_topic()
    async with open_client(server, vsn) as c:
        reply = await c.join(topic, access_token="potato")
        assert reply.payload["status"] == "error"
        await c.assert_nothing_pending()
        await c.send_msg(topic, "broadcast", {"type": "broadcast", "event": "e", "payload": {}}, "50", "1")
        assert (await c.next_frame()).value == c.wire(
            None, "50", topic, "phx_reply", {"status": "error", "response": {"reason": "unmatched topic"}}
        )


# --- channels per connection (§8, checklist 37) ----------------------------------------------


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(37)
async def test_channel_limit_per_connection(server_factory: Any, vsn: str) -> None:
    srv = server_factory(REALTIME_MAX_CHANNELS_PER_CLIENT="2")
    a, b, c_topic = unique_topic("a"), unique_topic("b"), unique_topic("c")
    async with open_client(srv, vsn) as c, open_client(srv, vsn) as other:
        await c.join_ok(a, ref="1")
        await c.join_ok(b, ref="2")
        await c.send_msg(c_topic, "phx_join", {"config": {}}, "3", "3")
        assert (await c.next_frame()).value == c.wire(
            "3", "3", c_topic, "phx_reply", join_error("ChannelRateLimitReached: Too many channels")
        )
        await c.assert_nothing_pending()
        # The limit is per connection: another socket may still join.
        await other.join_ok(c_topic)
        # Leaving frees a slot.
        await c.send_msg(a, "phx_leave", {}, "4", "1")
        assert (await c.next_frame()).value == c.wire("1", "4", a, "phx_reply", OK_REPLY)
        assert (await c.next_frame()).value == c.wire("1", "1", a, "phx_close", {})
        await c.send_msg(c_topic, "phx_join", {"config": {}}, "5", "5")
        assert (await c.next_frame()).value == c.wire("5", "5", c_topic, "phx_reply", JOIN_OK)


# --- post-join ordering (§3.7, checklist 42) --------------------------------------------------


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(42)
async def test_post_join_pushes_follow_the_reply(server: ServerProc, vsn: str) -> None:
    topic = unique_topic()
    config = {"presence": {"enabled": True}, "postgres_changes": [{"event": "*", "schema": "public"}]}
    async with open_client(server, vsn) as c:
        await c.send_msg(topic, "phx_join", {"config": config}, "1", "1")
        first = await c.next_frame()
        assert first.event == "phx_reply" and first.ref == "1"
        rest = {(await c.next_frame()).event, (await c.next_frame()).event}
        assert rest == {"presence_state", "system"}
