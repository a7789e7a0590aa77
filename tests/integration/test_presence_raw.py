"""Presence with exact frames: state, diffs, keys, errors, rate limit (protocol.md §5, §8)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from support import ServerProc
from rawclient import V1, V2, VSNS, Frame, Pred, RawClient, event_is, open_client, reply_to, sub_topic, unique_topic

OK_REPLY = {"status": "ok", "response": {}}
PRESENCE_ON = {"presence": {"enabled": True}}


def with_key(key: Any, enabled: bool = True) -> dict[str, Any]:
    return {"presence": {"enabled": enabled, "key": key}}


async def track(c: RawClient, topic: str, payload: Any, *, event: str = "track") -> None:
    ref = await c.push(topic, "presence", {"type": "presence", "event": event, "payload": payload})
    frame = await c.expect(reply_to(ref, topic))
    assert frame.value == c.wire(c.join_refs[topic], ref, topic, "phx_reply", OK_REPLY)


async def untrack(c: RawClient, topic: str) -> None:
    ref = await c.push(topic, "presence", {"type": "presence", "event": "untrack"})
    frame = await c.expect(reply_to(ref, topic))
    assert frame.value == c.wire(c.join_refs[topic], ref, topic, "phx_reply", OK_REPLY)


async def diff(c: RawClient, topic: str) -> dict[str, Any]:
    """Next presence_diff on ``topic``: refs are null (fan-out) or the current join_ref (§1.5)."""
    frame = await c.expect(event_is("presence_diff", topic))
    assert frame.ref is None
    assert frame.join_ref in (None, c.join_refs.get(topic))
    if c.vsn == V1:
        assert set(frame.value) == {"topic", "event", "payload", "ref"}
    assert set(frame.payload) == {"joins", "leaves"}
    payload: dict[str, Any] = frame.payload
    return payload


async def assert_no_diff_before_marker(
    observers: RawClient | tuple[RawClient, ...], tracker: RawClient, topic: str, pred: Pred | None = None
) -> None:
    """``tracker`` tracks a marker and each observer gets its diff with nothing (matching
    ``pred``) before it: presence ops travel one ordered stream, so a diff caused earlier came
    first."""
    marker = uuid.uuid4().hex

    def is_marker(f: Frame) -> bool:
        if f.event != "presence_diff" or f.topic != topic:
            return False
        return any(m.get("marker") == marker for e in f.payload["joins"].values() for m in e["metas"])

    await track(tracker, topic, {"marker": marker})
    for observer in observers if isinstance(observers, tuple) else (observers,):
        await observer.assert_nothing_before(is_marker, pred)


def only_meta(entries: dict[str, Any], key: str) -> dict[str, Any]:
    assert list(entries) == [key], entries
    metas = entries[key]["metas"]
    assert set(entries[key]) == {"metas"} and len(metas) == 1, entries
    meta: dict[str, Any] = metas[0]
    assert isinstance(meta["phx_ref"], str) and meta["phx_ref"]
    return meta


# --- presence_state (§5.2) -------------------------------------------------------------------


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(42, 72)
async def test_presence_state_after_join_is_empty_for_new_topic(server: ServerProc, vsn: str) -> None:
    topic = unique_topic()
    async with open_client(server, vsn) as c:
        await c.send_msg(topic, "phx_join", {"config": PRESENCE_ON}, "1", "1")
        assert (await c.next_frame()).value == c.wire("1", "1", topic, "phx_reply", {"status": "ok", "response": {"postgres_changes": []}})
        assert (await c.next_frame()).value == c.wire("1", None, topic, "presence_state", {})
        await c.assert_nothing_pending()


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(73)
async def test_no_presence_state_when_disabled(server: ServerProc, vsn: str) -> None:
    topic = unique_topic()
    async with open_client(server, vsn) as c:
        await c.join_ok(topic, {"presence": {"enabled": False, "key": "x"}})
        await c.assert_nothing_pending()


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(72)
async def test_presence_state_lists_current_members(server: ServerProc, vsn: str) -> None:
    topic = unique_topic()
    async with open_client(server, V2) as a, open_client(server, V1) as b, open_client(server, vsn) as c:
        await a.join_ok(topic, with_key("shared"))
        await track(a, topic, {"user": "alice"})
        await b.join_ok(topic, with_key("shared"))
        await track(b, topic, {"user": "alice", "tab": 2})
        jr = await c.join_ok(topic, PRESENCE_ON)
        state = await c.expect(event_is("presence_state", topic))
        assert state.value == c.wire(jr, None, topic, "presence_state", state.payload)
        assert list(state.payload) == ["shared"]
        metas = state.payload["shared"]["metas"]
        stripped = sorted(({k: v for k, v in m.items() if k != "phx_ref"} for m in metas), key=len)
        assert stripped == [{"user": "alice"}, {"user": "alice", "tab": 2}]
        refs = [m["phx_ref"] for m in metas]
        assert all(isinstance(r, str) and r for r in refs) and len(set(refs)) == 2


@pytest.mark.compat(73)
async def test_tenant_presence_flag_sends_state_without_enabled(server_factory: Any) -> None:
    srv = server_factory(REALTIME_PRESENCE_ENABLED="true")
    topic = unique_topic()
    async with open_client(srv, V2) as c:
        jr = await c.join_ok(topic)
        assert (await c.next_frame()).value == [jr, None, topic, "presence_state", {}]


# --- track / diffs (§5.1, §5.2) -------------------------------------------------------------


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(74, 75)
async def test_track_diff_reaches_tracker_and_others(server: ServerProc, vsn: str) -> None:
    topic = unique_topic()
    async with open_client(server, vsn) as a, open_client(server, V1) as b, open_client(server, V2) as silent:
        await a.join_ok(topic, with_key("user-42"))
        await b.join_ok(topic, PRESENCE_ON)
        await silent.join_ok(topic)  # presence not enabled: still gets diffs on a public topic
        await track(a, topic, {"user": "alice", "online_at": "2024-06-01T10:00:00Z"})
        seen = []
        for c in (a, b, silent):
            d = await diff(c, topic)
            assert d["leaves"] == {}
            meta = only_meta(d["joins"], "user-42")
            assert {k: v for k, v in meta.items() if k != "phx_ref"} == {"user": "alice", "online_at": "2024-06-01T10:00:00Z"}
            seen.append(meta["phx_ref"])
        assert len(set(seen)) == 1  # the same tracked instance everywhere


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(76, 78)
async def test_retrack_changed_payload_gives_join_with_prev_and_leave(server: ServerProc, vsn: str) -> None:
    topic = unique_topic()
    async with open_client(server, vsn) as a, open_client(server, V2) as b:
        await a.join_ok(topic, with_key("user-42"))
        await b.join_ok(topic, PRESENCE_ON)
        await track(a, topic, {"user": "alice"})
        first = only_meta((await diff(b, topic))["joins"], "user-42")
        await diff(a, topic)
        await track(a, topic, {"user": "alice", "status": "away"})
        for c in (a, b):
            d = await diff(c, topic)
            joined = only_meta(d["joins"], "user-42")
            left = only_meta(d["leaves"], "user-42")
            assert left == first
            assert joined["phx_ref_prev"] == first["phx_ref"]
            assert joined["phx_ref"] != first["phx_ref"]
            assert {k: v for k, v in joined.items() if k not in ("phx_ref", "phx_ref_prev")} == {
                "user": "alice",
                "status": "away",
            }
        # Untrack leaves the updated meta (with its phx_ref_prev) (§5.2 third example).
        await untrack(a, topic)
        d = await diff(b, topic)
        assert d["joins"] == {}
        assert only_meta(d["leaves"], "user-42") == joined


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(77)
async def test_identical_retrack_produces_no_diff(server: ServerProc, vsn: str) -> None:
    topic = unique_topic()
    async with open_client(server, vsn) as a, open_client(server, V2) as b:
        await a.join_ok(topic, with_key("k"))
        await b.join_ok(topic, PRESENCE_ON)
        await track(a, topic, {"same": 1})
        await diff(b, topic)
        await diff(a, topic)
        await track(a, topic, {"same": 1})
        await assert_no_diff_before_marker((a, b), a, topic, event_is("presence_diff"))


@pytest.mark.parametrize("vsn", VSNS)
async def test_untrack_without_track_is_ok_and_silent(server: ServerProc, vsn: str) -> None:
    topic = unique_topic()
    async with open_client(server, vsn) as a:
        await a.join_ok(topic, with_key("k"))
        await a.expect(event_is("presence_state"))
        await untrack(a, topic)
        await a.assert_nothing_pending()
        await assert_no_diff_before_marker(a, a, topic)


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.parametrize("how", ["leave", "disconnect"])
@pytest.mark.compat(78)
async def test_leave_and_disconnect_remove_presence(server: ServerProc, vsn: str, how: str) -> None:
    topic = unique_topic()
    async with open_client(server, V2) as b:
        await b.join_ok(topic, PRESENCE_ON)
        async with open_client(server, vsn) as a:
            await a.join_ok(topic, with_key("gone"))
            await track(a, topic, {"n": 1})
            tracked = only_meta((await diff(b, topic))["joins"], "gone")
            if how == "leave":
                await a.push(topic, "phx_leave", {})
                await a.expect(event_is("phx_close", topic))
        d = await diff(b, topic)
        assert d["joins"] == {}
        assert only_meta(d["leaves"], "gone") == tracked


@pytest.mark.parametrize("vsn", VSNS)
async def test_track_without_payload_gives_meta_with_only_phx_ref(server: ServerProc, vsn: str) -> None:
    topic = unique_topic()
    async with open_client(server, vsn) as a:
        await a.join_ok(topic, with_key("bare"))
        ref = await a.push(topic, "presence", {"type": "presence", "event": "track"})
        assert (await a.expect(reply_to(ref, topic))).payload == OK_REPLY
        meta = only_meta((await diff(a, topic))["joins"], "bare")
        assert list(meta) == ["phx_ref"]


# --- keys (§5.3) ------------------------------------------------------------------------------


def _generated_key(d: dict[str, Any]) -> str:
    (key,) = d["joins"]
    assert uuid.UUID(key).version == 1  # a server-generated UUID v1 string (§5.3)
    return str(key)


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.parametrize("config", [PRESENCE_ON, with_key(""), {"presence": {}}, {}])
@pytest.mark.compat(79)
async def test_generated_keys(server: ServerProc, vsn: str, config: dict[str, Any]) -> None:
    topic = unique_topic()
    async with open_client(server, vsn) as a:
        await a.join_ok(topic, config)
        await track(a, topic, {"n": 1})
        first = _generated_key(await diff(a, topic))
        # A rejoin without an explicit key yields a fresh key.
        await a.push(topic, "phx_leave", {})
        await a.expect(event_is("phx_close", topic))
        await a.join_ok(topic, config)
        await track(a, topic, {"n": 2})
        second = _generated_key(await diff(a, topic))
        assert first != second


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.parametrize(("key", "wire_key"), [("user-42", "user-42"), ("Ünïcødé key", "Ünïcødé key"), (42, "42")])
@pytest.mark.compat(79)
async def test_given_key_used_verbatim(server: ServerProc, vsn: str, key: Any, wire_key: str) -> None:
    topic = unique_topic()
    async with open_client(server, vsn) as a:
        await a.join_ok(topic, with_key(key))
        await track(a, topic, {"n": 1})
        d = await diff(a, topic)
        assert list(d["joins"]) == [wire_key]


# --- event parsing and errors (§5.1) ----------------------------------------------------------


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(80)
async def test_uppercase_track_is_accepted(server: ServerProc, vsn: str) -> None:
    topic = unique_topic()
    async with open_client(server, vsn) as a:
        await a.join_ok(topic, with_key("upper"))
        await track(a, topic, {"u": 1}, event="TRACK")
        meta = only_meta((await diff(a, topic))["joins"], "upper")
        assert meta["u"] == 1


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.parametrize("bad", ["a string", 5, [1, 2], True])
@pytest.mark.compat(81)
async def test_non_map_track_payload_is_an_error(server: ServerProc, vsn: str, bad: Any) -> None:
    topic = unique_topic()
    async with open_client(server, vsn) as a:
        jr = await a.join_ok(topic, with_key("k"))
        await a.expect(event_is("presence_state"))
        ref = await a.push(topic, "presence", {"type": "presence", "event": "track", "payload": bad})
        frame = await a.expect(reply_to(ref, topic))
        assert frame.value == a.wire(
            jr, ref, topic, "phx_reply", {"status": "error", "response": {"reason": "Presence track payload must be a map"}}
        )
        await a.assert_nothing_pending()
        await assert_no_diff_before_marker(a, a, topic)


@pytest.mark.parametrize("vsn", VSNS)
async def test_presence_push_without_event_is_ok_noop(server: ServerProc, vsn: str) -> None:
    topic = unique_topic()
    async with open_client(server, vsn) as a:
        jr = await a.join_ok(topic, with_key("k"))
        await a.expect(event_is("presence_state"))
        ref = await a.push(topic, "presence", {"type": "presence", "payload": {"x": 1}})
        assert (await a.expect(reply_to(ref, topic))).value == a.wire(jr, ref, topic, "phx_reply", OK_REPLY)
        await a.assert_nothing_pending()
        await assert_no_diff_before_marker(a, a, topic)


@pytest.mark.parametrize("vsn", VSNS)
async def test_unknown_presence_event_is_an_error(server: ServerProc, vsn: str) -> None:
    topic = unique_topic()
    async with open_client(server, vsn) as a:
        jr = await a.join_ok(topic, with_key("k"))
        await a.expect(event_is("presence_state"))
        ref = await a.push(topic, "presence", {"type": "presence", "event": "dance", "payload": {}})
        frame = await a.expect(reply_to(ref, topic))
        assert frame.value == a.wire(jr, ref, topic, "phx_reply", {"status": "error", "response": {}})
        await a.assert_nothing_pending()
        await assert_no_diff_before_marker(a, a, topic)


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(83)
async def test_track_on_presence_disabled_channel_enables_it(server: ServerProc, vsn: str) -> None:
    topic = unique_topic()
    async with open_client(server, vsn) as a, open_client(server, V2) as b:
        await a.join_ok(topic, {"presence": {"key": "late"}})
        await b.join_ok(topic, PRESENCE_ON)
        await b.expect(event_is("presence_state"))
        await track(a, topic, {"late": True})
        for c in (a, b):
            meta = only_meta((await diff(c, topic))["joins"], "late")
            assert meta["late"] is True
        # No presence_state is pushed to the channel that turned presence on by tracking.
        await a.assert_nothing_pending(event_is("presence_state"))


# --- per-channel presence rate limit (§5.7, checklist 82) -------------------------------------


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(82)
async def test_sixth_presence_push_in_window_shuts_channel_down(server: ServerProc, vsn: str) -> None:
    topic = unique_topic()
    async with open_client(server, vsn) as a, open_client(server, V2) as b:
        jr = await a.join_ok(topic, with_key("busy"))
        await b.join_ok(topic, PRESENCE_ON)
        for i in range(5):
            await track(a, topic, {"i": i})
        ref = await a.push(topic, "presence", {"type": "presence", "event": "untrack"})
        system = await a.expect(event_is("system", topic))
        assert system.value == a.wire(
            jr,
            None,
            topic,
            "system",
            {"extension": "system", "status": "error", "message": "Client presence rate limit exceeded", "channel": sub_topic(topic)},
        )
        close = await a.expect(event_is("phx_close", topic))
        assert close.value == a.wire(jr, jr, topic, "phx_close", {})
        assert a.position(close) == a.position(system) + 1  # the notice is followed by phx_close
        # No reply for the push that triggered the shutdown (§8).
        await a.assert_nothing_pending(reply_to(ref))
        # The presence is gone for the others (diffs within REALTIME_PRESENCE_COALESCE_MS come
        # as one: the leave may share a diff with the joins before it).
        while True:
            d = await diff(b, topic)
            if "busy" in d["leaves"]:
                assert d["leaves"]["busy"]["metas"][-1]["i"] == 4
                break
        # The channel is gone; the socket is not.
        await a.heartbeat("hb")
        await a.push(topic, "presence", {"type": "presence", "event": "track", "payload": {}}, ref="late")
        frame = await a.expect(reply_to("late", topic))
        assert frame.value == a.wire(None, "late", topic, "phx_reply", {"status": "error", "response": {"reason": "unmatched topic"}})


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(72)
async def test_presence_state_after_every_rejoin_with_current_join_ref(server: ServerProc, vsn: str) -> None:
    topic = unique_topic()
    async with open_client(server, vsn) as a:
        await a.join_ok(topic, PRESENCE_ON, ref="1", join_ref="1")
        assert (await a.next_frame()).value == a.wire("1", None, topic, "presence_state", {})
        # Duplicate join: reply, old phx_close, then a presence_state stamped with the new join_ref.
        await a.send_msg(topic, "phx_join", {"config": PRESENCE_ON}, "2", "2")
        assert (await a.expect(reply_to("2", topic))).payload["status"] == "ok"
        state = await a.expect(event_is("presence_state", topic))
        assert state.value == a.wire("2", None, topic, "presence_state", state.payload)
        a.join_refs[topic] = "2"
        # Leave and join again: another presence_state.
        await a.push(topic, "phx_leave", {}, ref="3")
        await a.expect(lambda f: f.event == "phx_close" and f.ref == "2")
        await a.send_msg(topic, "phx_join", {"config": PRESENCE_ON}, "4", "4")
        await a.expect(reply_to("4", topic))
        state = await a.expect(event_is("presence_state", topic))
        assert state.value == a.wire("4", None, topic, "presence_state", {})


@pytest.mark.parametrize("vsn", VSNS)
async def test_oversize_track_shuts_channel_down(server_factory: Any, vsn: str) -> None:
    srv = server_factory(REALTIME_MAX_PAYLOAD_SIZE_IN_KB="1")  # limit 1500 bytes (§4.5)
    topic = unique_topic()
    async with open_client(srv, vsn) as a, open_client(srv, V2) as b:
        jr = await a.join_ok(topic, with_key("huge"))
        await b.join_ok(topic, PRESENCE_ON)
        ref = await a.push(topic, "presence", {"type": "presence", "event": "track", "payload": {"blob": "x" * 3000}})
        system = await a.expect(event_is("system", topic))
        assert system.value == a.wire(
            jr,
            None,
            topic,
            "system",
            {"extension": "system", "status": "error", "message": "Track message size exceeded", "channel": sub_topic(topic)},
        )
        close = await a.expect(event_is("phx_close", topic))
        assert close.value == a.wire(jr, jr, topic, "phx_close", {})
        await a.assert_nothing_pending(reply_to(ref))
        await assert_no_diff_before_marker(b, b, topic, event_is("presence_diff"))



# --- a presence push's diff precedes its reply (§5.1) ----------------------------------------


async def push_then_diff(c: RawClient, topic: str, event: str, key: str, payload: Any = None) -> None:
    """Phoenix's tracker produces the diff before the channel replies: the client that tracks
    (or untracks) sees its own ``presence_diff`` first, then the ``ok``."""
    body: dict[str, Any] = {"type": "presence", "event": event}
    if payload is not None:
        body["payload"] = payload
    ref = await c.push(topic, "presence", body)
    reply = await c.expect(reply_to(ref, topic))
    assert reply.payload == OK_REPLY
    side = "joins" if event == "track" else "leaves"
    diff_frame = await c.expect(lambda f: f.event == "presence_diff" and f.topic == topic and key in f.payload[side])
    assert c.position(diff_frame) < c.position(reply), "the reply overtook the presence_diff it caused"


@pytest.mark.parametrize("vsn", VSNS)
async def test_track_and_untrack_diffs_arrive_before_their_replies(server: ServerProc, vsn: str) -> None:
    topic = unique_topic()
    async with open_client(server, vsn) as c:
        await c.join_ok(topic, with_key("me"))
        await c.expect(event_is("presence_state", topic))
        for i in range(3):  # a first track, then updates of the same key (5 pushes per window)
            await push_then_diff(c, topic, "track", "me", {"i": i})
        await push_then_diff(c, topic, "untrack", "me")
