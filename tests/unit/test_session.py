"""The per-socket state machine without sockets (protocol.md §2–§5, checklist 15–58, 72–84).

Frames go in as decoded ``Message``/``BinaryBroadcastPush`` objects with a fake ``now``; the
exact list of effects coming out is asserted.  Tokens are real HS256 JWTs checked by the real
``JwtVerifier``, with time injected, so expiry arithmetic is exercised for real.
"""

from __future__ import annotations

import itertools
from typing import Any

import jwt
import pytest

from realtime_channels import errors
from realtime_channels.auth import JwtVerifier, mint_token
from realtime_channels.protocol.codec import BinaryBroadcastPush, Broadcast, Message
from realtime_channels.protocol.join import binding_id
from realtime_channels.protocol.session import (
    BROADCAST_READ,
    BROADCAST_WRITE,
    AuthResult,
    Authorize,
    Effect,
    Publish,
    PushPresenceState,
    Send,
    Session,
    SessionConfig,
    Subscribe,
    SubscribePostgres,
    Track,
    Unsubscribe,
    UnsubscribePostgres,
    Untrack,
)

SECRET = "session-unit-test-secret-of-at-least-32-chars"
T0 = 1_700_000_000.0
TOPIC = "realtime:room1"
STREAM = "pub:room1"
OK: dict[str, Any] = {"status": "ok", "response": {}}

BINDING_A = {"event": "*", "schema": "public", "table": "messages", "filter": "room_id=eq.7"}
BINDING_B = {"event": "INSERT", "schema": "public", "table": "users", "select": ["id", "name"]}


# --- helpers --------------------------------------------------------------------------------


def token(exp_seconds: float = 3600, *, now: float = T0, role: str = "anon", **claims: Any) -> str:
    return mint_token(SECRET, role, now=now, exp_seconds=exp_seconds, claims=claims or None)


def claims_of(tok: str, now: float = T0) -> dict[str, Any]:
    return JwtVerifier(SECRET).verify(tok, now)


CONN_TOKEN = token(3600)
OTHER_SECRET_TOKEN = mint_token("another-secret-of-at-least-32-characters!", "anon", now=T0, exp_seconds=3600)
NO_ROLE_TOKEN = jwt.encode({"exp": int(T0 + 3600)}, SECRET, algorithm="HS256")


def make_session(config: SessionConfig | None = None, conn_token: str = CONN_TOKEN) -> Session:
    counter = itertools.count(1)
    return Session(
        verify=JwtVerifier(SECRET).verify,
        conn_token=conn_token,
        new_presence_key=lambda: f"generated-{next(counter)}",
        config=config if config is not None else SessionConfig(),
    )


def join_msg(
    topic: str = TOPIC,
    *,
    ref: str | None = "1",
    join_ref: str | None = "1",
    access_token: str | None = None,
    **config: Any,
) -> Message:
    payload: dict[str, Any] = {"config": config}
    if access_token is not None:
        payload["access_token"] = access_token
    return Message(topic, "phx_join", payload, ref=ref, join_ref=join_ref)


def reply(topic: str, payload: Any, ref: str | None, join_ref: str | None) -> Message:
    return Message(topic, "phx_reply", payload, ref=ref, join_ref=join_ref)


def track(key: str, payload: dict[str, Any], ref: str, join_ref: str) -> Track:
    """The Track effect of a presence push: its ok reply, or the full-state refusal."""
    full = {"status": "error", "response": {"reason": errors.PresenceStateTooLarge().reason}}
    return Track(STREAM, TOPIC, key, payload, reply(TOPIC, OK, ref, join_ref), reply(TOPIC, full, ref, join_ref))


def join_ok(topic: str = TOPIC, ref: str | None = "1", join_ref: str | None = "1") -> Send:
    return Send(reply(topic, {"status": "ok", "response": {"postgres_changes": []}}, ref, join_ref))


def close_of(topic: str, join_ref: str | None) -> Send:
    return Send(Message(topic, "phx_close", {}, ref=join_ref, join_ref=join_ref))


def system_error(message: str, topic: str = TOPIC, join_ref: str | None = "1") -> Send:
    payload = {"extension": "system", "status": "error", "message": message, "channel": topic[len("realtime:") :]}
    return Send(Message(topic, "system", payload, ref=None, join_ref=join_ref))


def joined(
    config: SessionConfig | None = None, now: float = T0, **join_config: Any
) -> Session:
    s = make_session(config)
    effects = s.receive(join_msg(**join_config), now)
    first = effects[0]
    assert isinstance(first, Send) and first.message.payload["status"] == "ok", effects
    return s


def presence(event: Any = "track", payload: Any = None, ref: str = "4", **extra: Any) -> Message:
    body: dict[str, Any] = {"type": "presence", "event": event, **extra}
    if payload is not None:
        body["payload"] = payload
    return Message(TOPIC, "presence", body, ref=ref, join_ref="1")


def access_token_msg(value: Any, ref: str = "15") -> Message:
    return Message(TOPIC, "access_token", {"access_token": value}, ref=ref, join_ref="1")


def bcast(payload: Any, ref: str | None = "3", join_ref: str | None = "1", topic: str = TOPIC) -> Message:
    return Message(topic, "broadcast", payload, ref=ref, join_ref=join_ref)


def sends(effects: list[Effect]) -> list[Message]:
    """The messages the effects send (a Track's reply as if the track was accepted)."""
    return [e.message if isinstance(e, Send) else e.accepted for e in effects if isinstance(e, Send | Track)]


# --- heartbeat: §2.1, items 15–16 -----------------------------------------------------------


def test_heartbeat_is_answered_without_any_join() -> None:
    s = make_session()
    effects = s.receive(Message("phoenix", "heartbeat", {}, ref="5", join_ref=None), T0)
    assert effects == [Send(reply("phoenix", OK, "5", None))]
    assert s.channels == {}


def test_heartbeat_with_null_ref_is_answered_with_null_ref() -> None:
    s = make_session()
    effects = s.receive(Message("phoenix", "heartbeat", {}, ref=None, join_ref=None), T0)
    assert effects == [Send(reply("phoenix", OK, None, None))]


# --- successful join: §3.3–3.4, items 24–25, 30–31, 34–35, 72–73 ------------------------------


def test_join_with_empty_config_replies_ok_and_subscribes() -> None:
    s = make_session()
    effects = s.receive(join_msg(ref="7", join_ref="3"), T0)
    assert effects == [join_ok(ref="7", join_ref="3"), Subscribe(STREAM, TOPIC)]
    assert list(s.channels) == [TOPIC]


def test_join_with_presence_enabled_pushes_state_after_reply() -> None:
    s = make_session()
    effects = s.receive(join_msg(presence={"enabled": True}), T0)
    assert effects == [join_ok(), Subscribe(STREAM, TOPIC), PushPresenceState(STREAM, TOPIC, "1")]


def test_presence_forced_by_tenant_flag_pushes_state() -> None:
    s = make_session(SessionConfig(presence_forced=True))
    effects = s.receive(join_msg(), T0)
    assert effects == [join_ok(), Subscribe(STREAM, TOPIC), PushPresenceState(STREAM, TOPIC, "1")]


def test_join_echoes_bindings_with_ids_and_subscribes_postgres_with_claims() -> None:
    s = make_session()
    with_null = {**BINDING_B, "filter": None}
    effects = s.receive(join_msg(postgres_changes=[BINDING_A, None, with_null, BINDING_A]), T0)
    echoed = (
        {**BINDING_A, "id": binding_id(BINDING_A)},
        {**BINDING_B, "id": binding_id(BINDING_B)},
        {**BINDING_A, "id": binding_id(BINDING_A)},
    )
    ok = {"status": "ok", "response": {"postgres_changes": list(echoed)}}
    assert effects == [
        Send(reply(TOPIC, ok, "1", "1")),
        Subscribe(STREAM, TOPIC),
        SubscribePostgres(TOPIC, "1", echoed, claims_of(CONN_TOKEN)),
    ]
    # Echo keeps the client's keys in order, drops nulls, adds a non-zero integer id (§3.4).
    first, second, third = effects[0].message.payload["response"]["postgres_changes"]  # type: ignore[union-attr]
    assert list(first) == ["event", "schema", "table", "filter", "id"]
    assert list(second) == ["event", "schema", "table", "select", "id"]
    assert isinstance(first["id"], int) and first["id"] != 0
    assert first["id"] == third["id"] != second["id"]


def test_join_uses_channel_access_token_claims() -> None:
    s = make_session()
    user = token(600, sub="user-1", role="authenticated")
    effects = s.receive(join_msg(access_token=user, postgres_changes=[BINDING_A]), T0)
    pg = [e for e in effects if isinstance(e, SubscribePostgres)]
    assert len(pg) == 1
    assert pg[0].claims["sub"] == "user-1" and pg[0].claims["role"] == "authenticated"
    assert s.next_deadline() == T0 + 300  # recheck sooner than exp (§3.9)


def test_join_with_sb_key_uses_connection_token() -> None:
    s = make_session()
    effects = s.receive(join_msg(access_token="sb_publishable_abc", postgres_changes=[BINDING_A]), T0)
    pg = [e for e in effects if isinstance(e, SubscribePostgres)]
    assert pg[0].claims == claims_of(CONN_TOKEN)


def test_private_join_waits_for_read_check_then_uses_private_streams() -> None:
    s = make_session(SessionConfig(private_allowed=True))
    effects = s.receive(join_msg(private=True), T0)
    assert effects == [Authorize(TOPIC, "1", "join", "room1", claims_of(CONN_TOKEN), (BROADCAST_READ,))]
    granted = AuthResult({BROADCAST_READ: True})
    assert s.authorized(TOPIC, "1", "join", granted, T0) == [join_ok(), Subscribe("priv:room1", TOPIC)]


# --- join errors: §3.3, §3.5, items 21, 26, 32–33, 36–39, 71 ---------------------------------


def error_join(reason: str, ref: str | None = "1", join_ref: str | None = "1", delay: float = 5.0) -> Send:
    return Send(reply(TOPIC, {"status": "error", "response": {"reason": reason}}, ref, join_ref), delay)


def test_join_without_realtime_prefix_is_unmatched() -> None:
    s = make_session()
    effects = s.receive(join_msg("room1", ref="2", join_ref="2"), T0)
    assert effects == [Send(reply("room1", {"status": "error", "response": {"reason": "unmatched topic"}}, "2", None))]
    assert s.channels == {}


ERROR_DELAY = 2.5  # not the default, so the test proves the delay comes from the config


@pytest.mark.parametrize(
    ("topic", "join_kwargs", "reason"),
    [
        ("realtime:", {}, "TopicNameRequired: You must provide a topic name"),
        (TOPIC, {"access_token": "potato"}, "MalformedJWT: The token provided is not a valid JWT"),
        (
            TOPIC,
            {"private": True},
            "Unauthorized: You do not have permissions to read from this Channel topic: room1",
        ),
        (
            TOPIC,
            {"broadcast": {"replay": {"since": 1, "limit": 2}}},
            "UnableToReplayMessages: Replay is not allowed for public channels",
        ),
        (TOPIC, {"access_token": OTHER_SECRET_TOKEN}, "JwtSignatureError: Failed to validate JWT signature"),
        (TOPIC, {"access_token": NO_ROLE_TOKEN}, "InvalidJWTToken: Fields `role` and `exp` are required in JWT"),
    ],
    ids=["topic-name-required", "potato", "private-refused", "replay-on-public", "bad-signature", "no-role"],
)
@pytest.mark.compat(38)
def test_join_errors_are_delayed_and_not_closed(topic: str, join_kwargs: dict[str, Any], reason: str) -> None:
    s = make_session(SessionConfig(join_error_delay_s=ERROR_DELAY))
    effects = s.receive(join_msg(topic, ref="6", join_ref="6", **join_kwargs), T0)
    assert effects == [Send(reply(topic, {"status": "error", "response": {"reason": reason}}, "6", "6"), ERROR_DELAY)]
    assert s.channels == {}
    assert not any(m.event == "phx_close" for m in sends(effects))


def test_expired_join_token_reports_seconds_from_the_fake_clock() -> None:
    issued = T0 - 500
    tok = token(60, now=issued)  # exp = T0 - 440
    now = T0 + 17
    s = make_session()
    effects = s.receive(join_msg(access_token=tok), now)
    n = int(now - (issued + 60))
    assert n == 457
    assert effects == [error_join(f"InvalidJWTToken: Token has expired {n} seconds ago")]
    assert s.channels == {}


def test_channel_limit_refuses_the_extra_join() -> None:
    s = make_session(SessionConfig(max_channels=2))
    assert s.receive(join_msg("realtime:a"), T0)[0] == join_ok("realtime:a")
    assert s.receive(join_msg("realtime:b", ref="2", join_ref="2"), T0)[0] == join_ok("realtime:b", "2", "2")
    effects = s.receive(join_msg("realtime:c", ref="3", join_ref="3"), T0)
    assert effects == [
        Send(reply("realtime:c", {"status": "error", "response": {"reason": "ChannelRateLimitReached: Too many channels"}}, "3", "3"), 5.0)
    ]
    assert sorted(s.channels) == ["realtime:a", "realtime:b"]


def test_checks_run_in_reference_order() -> None:
    # §3.3: channel limit (3) before token (4) before private check (6).
    s = make_session(SessionConfig(max_channels=0))
    effects = s.receive(join_msg(access_token="potato", private=True), T0)
    assert sends(effects)[0].payload["response"]["reason"] == "ChannelRateLimitReached: Too many channels"
    s = make_session()
    effects = s.receive(join_msg(access_token="potato", private=True), T0)
    assert sends(effects)[0].payload["response"]["reason"].startswith("MalformedJWT:")


def test_replay_on_allowed_private_channel_is_fetched_with_the_read_check() -> None:
    s = make_session(SessionConfig(private_allowed=True))
    effects = s.receive(join_msg(private=True, broadcast={"replay": {"since": 1}}), T0)
    assert effects == [Authorize(TOPIC, "1", "join", "room1", claims_of(CONN_TOKEN), (BROADCAST_READ,), (1, 25))]


# --- duplicate join: §2.5, item 23 ------------------------------------------------------------


@pytest.mark.compat(23)
def test_duplicate_join_tears_down_old_then_replies_then_closes_old() -> None:
    s = joined(presence={"enabled": True}, postgres_changes=[BINDING_A])
    s.receive(presence(payload={"u": 1}), T0)
    effects = s.receive(join_msg(ref="3", join_ref="3"), T0 + 1)
    assert effects == [
        Unsubscribe(STREAM, TOPIC),
        Untrack(STREAM, TOPIC),
        UnsubscribePostgres(TOPIC),
        join_ok(ref="3", join_ref="3"),
        Subscribe(STREAM, TOPIC),
        close_of(TOPIC, "1"),
    ]
    assert s.channels[TOPIC].join_ref == "3"


def test_duplicate_join_that_fails_still_closes_old_channel() -> None:
    s = joined()
    effects = s.receive(join_msg(ref="3", join_ref="3", access_token="potato"), T0)
    assert effects == [
        Unsubscribe(STREAM, TOPIC),
        close_of(TOPIC, "1"),
        error_join("MalformedJWT: The token provided is not a valid JWT", "3", "3"),
    ]
    assert s.channels == {}


# --- leave: §2.4, §3.6, items 40–41 -----------------------------------------------------------


def test_leave_replies_then_closes() -> None:
    s = joined()
    effects = s.receive(Message(TOPIC, "phx_leave", {}, ref="12", join_ref="1"), T0)
    assert effects == [Unsubscribe(STREAM, TOPIC), Send(reply(TOPIC, OK, "12", "1")), close_of(TOPIC, "1")]
    assert s.channels == {}
    # The topic is no longer joined afterwards.
    assert s.receive(bcast({"event": "x"}, ref="13"), T0) == [
        Send(reply(TOPIC, {"status": "error", "response": {"reason": "unmatched topic"}}, "13", None))
    ]


def test_leave_releases_presence_and_postgres() -> None:
    s = joined(postgres_changes=[BINDING_A])
    s.receive(presence(payload={}), T0)
    effects = s.receive(Message(TOPIC, "phx_leave", {}, ref="12", join_ref="1"), T0)
    assert effects == [
        Unsubscribe(STREAM, TOPIC),
        Untrack(STREAM, TOPIC),
        UnsubscribePostgres(TOPIC),
        Send(reply(TOPIC, OK, "12", "1")),
        close_of(TOPIC, "1"),
    ]


def test_leave_of_unjoined_topic_is_ok() -> None:
    s = make_session()
    effects = s.receive(Message("realtime:nope", "phx_leave", {}, ref="9", join_ref="4"), T0)
    assert effects == [Send(reply("realtime:nope", OK, "9", "4"))]


def test_stale_leave_is_answered_but_ignored() -> None:
    s = joined()
    s.receive(join_msg(ref="3", join_ref="3"), T0)
    effects = s.receive(Message(TOPIC, "phx_leave", {}, ref="12", join_ref="1"), T0)
    assert effects == [Send(reply(TOPIC, OK, "12", "1"))]
    assert s.channels[TOPIC].join_ref == "3"


def test_leave_without_join_ref_leaves_current_join() -> None:
    s = joined()
    effects = s.receive(Message(TOPIC, "phx_leave", {}, ref="12", join_ref=None), T0)
    assert effects == [Unsubscribe(STREAM, TOPIC), Send(reply(TOPIC, OK, "12", "1")), close_of(TOPIC, "1")]


# --- unmatched topics and join_ref leniency: §2.4, items 20, 22 --------------------------------


@pytest.mark.parametrize("event", ["broadcast", "presence", "access_token", "custom"])
def test_push_to_unjoined_topic_is_unmatched(event: str) -> None:
    s = joined()
    effects = s.receive(Message("realtime:other", event, {}, ref="9", join_ref="1"), T0)
    assert effects == [Send(reply("realtime:other", {"status": "error", "response": {"reason": "unmatched topic"}}, "9", None))]


def test_unknown_event_on_joined_channel_is_ignored_without_reply() -> None:
    s = joined()
    assert s.receive(Message(TOPIC, "custom", {"a": 1}, ref="9", join_ref="1"), T0) == []
    assert TOPIC in s.channels


@pytest.mark.parametrize("join_ref", [None, "0", "99"])
def test_join_ref_leniency_routes_by_topic(join_ref: str | None) -> None:
    s = joined(broadcast={"ack": True})
    payload = {"type": "broadcast", "event": "e", "payload": {}}
    effects = s.receive(bcast(payload, ref="8", join_ref=join_ref), T0)
    assert effects == [
        Publish(STREAM, Broadcast(TOPIC, payload=payload), TOPIC),
        Send(reply(TOPIC, OK, "8", "1")),
    ]


# --- broadcast: §4.1–4.5, items 49–58 ---------------------------------------------------------

PAYLOAD = {"type": "broadcast", "event": "cursor", "payload": {"x": 1}, "extra": [1, 2]}


def test_broadcast_without_self_excludes_sender_and_without_ack_is_silent() -> None:
    s = joined()
    assert s.receive(bcast(PAYLOAD), T0, size=80) == [Publish(STREAM, Broadcast(TOPIC, payload=PAYLOAD), TOPIC)]


def test_broadcast_with_self_does_not_exclude() -> None:
    s = joined(broadcast={"self": True})
    assert s.receive(bcast(PAYLOAD), T0) == [Publish(STREAM, Broadcast(TOPIC, payload=PAYLOAD), None)]


def test_broadcast_with_string_booleans() -> None:
    s = joined(broadcast={"self": "TRUE", "ack": "true"})
    assert s.receive(bcast(PAYLOAD), T0) == [
        Publish(STREAM, Broadcast(TOPIC, payload=PAYLOAD), None),
        Send(reply(TOPIC, OK, "3", "1")),
    ]


def test_broadcast_on_private_channel_publishes_to_private_stream_after_write_check() -> None:
    s = make_session(SessionConfig(private_allowed=True))
    s.receive(join_msg(private=True), T0)
    s.authorized(TOPIC, "1", "join", AuthResult({BROADCAST_READ: True}), T0)
    check = Authorize(TOPIC, "1", "write", "room1", claims_of(CONN_TOKEN), (BROADCAST_WRITE,))
    assert s.receive(bcast(PAYLOAD), T0) == [check]
    publish = Publish("priv:room1", Broadcast(TOPIC, payload=PAYLOAD), TOPIC)
    assert s.authorized(TOPIC, "1", "write", AuthResult({BROADCAST_WRITE: True}), T0) == [publish]
    assert s.receive(bcast(PAYLOAD), T0) == [publish]  # cached until the next refresh (§7.3)


def test_oversize_broadcast_with_ack_gets_string_error_and_is_not_published() -> None:
    s = joined(SessionConfig(max_payload_bytes=100), broadcast={"ack": True})
    assert s.receive(bcast(PAYLOAD), T0, size=100) == [
        Publish(STREAM, Broadcast(TOPIC, payload=PAYLOAD), TOPIC),
        Send(reply(TOPIC, OK, "3", "1")),
    ]
    effects = s.receive(bcast(PAYLOAD, ref="4"), T0, size=101)
    assert effects == [Send(reply(TOPIC, {"status": "error", "response": "payload_size_exceeded"}, "4", "1"))]


def test_oversize_broadcast_without_ack_is_dropped_silently() -> None:
    s = joined(SessionConfig(max_payload_bytes=100))
    assert s.receive(bcast(PAYLOAD), T0, size=101) == []
    assert TOPIC in s.channels


def test_non_object_broadcast_payload_is_not_relayed() -> None:
    s = joined(broadcast={"ack": True})
    assert s.receive(bcast([1, 2]), T0) == []


# --- binary kind-3 push: §1.6, §4.3, items 12, 53–54 ------------------------------------------


def binary_push(data: bytes, binary: bool, topic: str = TOPIC, ref: str | None = "4",
                metadata: dict[str, Any] | None = None) -> BinaryBroadcastPush:
    return BinaryBroadcastPush(
        join_ref="1", ref=ref, topic=topic, event="cursor", metadata=metadata, data=data, binary=binary
    )


@pytest.mark.parametrize(("data", "binary"), [(b'{"x":1}', False), (b"\x00\xff\x10", True)])
def test_binary_push_publishes_user_broadcast_without_metadata(data: bytes, binary: bool) -> None:
    s = joined(broadcast={"ack": True})
    effects = s.receive(binary_push(data, binary), T0, size=40)
    assert effects == [
        Publish(STREAM, Broadcast(TOPIC, event="cursor", data=data, binary=binary, meta=None), TOPIC),
        Send(reply(TOPIC, OK, "4", "1")),
    ]


def test_binary_push_to_unjoined_topic_is_unmatched() -> None:
    s = make_session()
    effects = s.receive(binary_push(b"{}", False, topic="realtime:zzz", ref="5"), T0)
    assert effects == [Send(reply("realtime:zzz", {"status": "error", "response": {"reason": "unmatched topic"}}, "5", None))]


def test_oversize_binary_push_with_ack() -> None:
    s = joined(SessionConfig(max_payload_bytes=10), broadcast={"ack": True})
    effects = s.receive(binary_push(b"x" * 20, True), T0, size=40)
    assert effects == [Send(reply(TOPIC, {"status": "error", "response": "payload_size_exceeded"}, "4", "1"))]


# --- presence: §5.1, §5.3, §5.7, items 74, 79–83 ----------------------------------------------


def test_track_replies_ok_then_tracks_under_given_key() -> None:
    s = joined(presence={"key": "user-42", "enabled": True})
    effects = s.receive(presence(payload={"user": "alice"}), T0)
    assert effects == [track("user-42", {"user": "alice"}, "4", "1")]


def test_track_without_key_uses_generated_key_per_join() -> None:
    s = joined(presence={"key": ""})
    assert s.receive(presence(payload={"a": 1}), T0)[0] == track("generated-1", {"a": 1}, "4", "1")
    s.receive(join_msg(ref="2", join_ref="2"), T0)
    effects = s.receive(presence(payload={"a": 1}, ref="5"), T0)
    # A rejoin without a key gets a fresh key (§5.3).
    assert effects == [track("generated-2", {"a": 1}, "5", "2")]


def test_track_on_presence_disabled_channel_tracks_without_state_push() -> None:
    s = joined()
    effects = s.receive(presence(payload={"a": 1}), T0)
    assert effects == [track("generated-1", {"a": 1}, "4", "1")]


@pytest.mark.parametrize("payload", [None, {}])
def test_track_without_payload_tracks_empty_map(payload: Any) -> None:
    s = joined(presence={"key": "k"})
    body: dict[str, Any] = {"type": "presence", "event": "track"}
    if payload is not None:
        body["payload"] = payload
    effects = s.receive(Message(TOPIC, "presence", body, ref="4", join_ref="1"), T0)
    assert effects == [track("k", {}, "4", "1")]


def test_track_with_null_payload_tracks_empty_map() -> None:
    s = joined(presence={"key": "k"})
    body = {"type": "presence", "event": "track", "payload": None}
    effects = s.receive(Message(TOPIC, "presence", body, ref="4", join_ref="1"), T0)
    assert effects == [track("k", {}, "4", "1")]


def test_upper_case_track_is_accepted() -> None:
    s = joined(presence={"key": "k"})
    effects = s.receive(presence("TRACK", payload={"u": 1}), T0)
    assert effects == [track("k", {"u": 1}, "4", "1")]


def test_untrack_after_track_untracks() -> None:
    s = joined(presence={"key": "k"})
    s.receive(presence(payload={"u": 1}), T0)
    effects = s.receive(presence("untrack", ref="5"), T0)
    assert effects == [Untrack(STREAM, TOPIC), Send(reply(TOPIC, OK, "5", "1"))]
    # Nothing tracked any more: a second untrack is ok but untracks nothing.
    assert s.receive(presence("untrack", ref="6"), T0) == [Send(reply(TOPIC, OK, "6", "1"))]


def test_untrack_without_track_is_ok() -> None:
    s = joined()
    assert s.receive(presence("untrack"), T0) == [Send(reply(TOPIC, OK, "4", "1"))]


def test_presence_without_event_is_ok_noop() -> None:
    s = joined()
    effects = s.receive(Message(TOPIC, "presence", {"type": "presence"}, ref="4", join_ref="1"), T0)
    assert effects == [Send(reply(TOPIC, OK, "4", "1"))]


@pytest.mark.parametrize("payload", [5, "str", [1, 2], True])
def test_track_with_non_map_payload_is_refused(payload: Any) -> None:
    s = joined()
    effects = s.receive(presence(payload=payload), T0)
    reason = {"reason": "Presence track payload must be a map"}
    assert effects == [Send(reply(TOPIC, {"status": "error", "response": reason}, "4", "1"))]
    assert s.channels[TOPIC].tracked is False


@pytest.mark.parametrize("event", ["update", "", 7, None])
def test_unknown_presence_event_is_an_empty_error(event: Any) -> None:
    s = joined()
    body = {"type": "presence", "event": event}
    effects = s.receive(Message(TOPIC, "presence", body, ref="4", join_ref="1"), T0)
    assert effects == [Send(reply(TOPIC, {"status": "error", "response": {}}, "4", "1"))]


def test_sixth_presence_push_in_window_shuts_channel_down() -> None:
    s = joined(presence={"key": "k"})
    for i in range(5):
        event = "track" if i % 2 == 0 else "untrack"
        effects = s.receive(presence(event, payload={"i": i} if event == "track" else None, ref=str(10 + i)), T0 + i)
        assert sends(effects)[0] == reply(TOPIC, OK, str(10 + i), "1")
    # i=4 was a track: the channel is tracked when it is shut down.
    effects = s.receive(presence(payload={"i": 5}, ref="20"), T0 + 29.9)
    assert effects == [
        Unsubscribe(STREAM, TOPIC),
        Untrack(STREAM, TOPIC),
        system_error("Client presence rate limit exceeded"),
        close_of(TOPIC, "1"),
    ]
    assert s.channels == {}


@pytest.mark.compat(82)
def test_presence_window_resets_after_30_seconds() -> None:
    s = joined(presence={"key": "k"})
    for i in range(5):
        s.receive(presence(payload={"i": i}), T0 + i)
    # The window opened at T0; at T0+30 a new window with a fresh budget begins.
    for i in range(5):
        effects = s.receive(presence(payload={"j": i}, ref="9"), T0 + 30 + i)
        assert effects == [track("k", {"j": i}, "9", "1")]
    assert sends(s.receive(presence(payload={}), T0 + 59))[0].event == "system"


def test_oversize_track_shuts_channel_down() -> None:
    s = joined(SessionConfig(max_payload_bytes=50), presence={"key": "k"})
    effects = s.receive(presence(payload={"big": "x" * 100}), T0, size=51)
    assert effects == [Unsubscribe(STREAM, TOPIC), system_error("Track message size exceeded"), close_of(TOPIC, "1")]
    assert s.channels == {}


def test_presence_limits_come_from_config() -> None:
    s = joined(SessionConfig(presence_window_limit=2, presence_window_s=10.0))
    s.receive(presence("untrack"), T0)
    s.receive(presence("untrack"), T0 + 1)
    assert sends(s.receive(presence("untrack"), T0 + 9.9))[0] == system_error("Client presence rate limit exceeded").message


# --- access_token: §3.9, items 43–48 ---------------------------------------------------------


@pytest.mark.parametrize("value", [None, CONN_TOKEN, "sb_secret_abc"])
def test_access_token_null_same_or_opaque_is_ignored(value: Any) -> None:
    s = joined()
    before = s.next_deadline()
    assert s.receive(access_token_msg(value), T0 + 5) == []
    assert TOPIC in s.channels and s.next_deadline() == before


def test_access_token_event_without_token_key_is_ignored() -> None:
    s = joined()
    assert s.receive(Message(TOPIC, "access_token", {"token": "potato"}, ref="1", join_ref="1"), T0) == []
    assert TOPIC in s.channels


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("potato", "The token provided is not a valid JWT"),
        ("", "The token provided is not a valid JWT"),
        (42, "The token provided is not a valid JWT"),
        (token(10, now=T0 - 100), "Token has expired 90 seconds ago"),
        (NO_ROLE_TOKEN, "Fields `role` and `exp` are required in JWT"),
        (OTHER_SECRET_TOKEN, "Failed to validate JWT signature"),
    ],
    ids=["potato", "empty", "non-string", "expired", "missing-role", "bad-signature"],
)
def test_bad_access_token_shuts_channel_down(value: Any, message: str) -> None:
    s = joined(postgres_changes=[BINDING_A])
    effects = s.receive(access_token_msg(value), T0)
    assert effects == [
        Unsubscribe(STREAM, TOPIC),
        UnsubscribePostgres(TOPIC),
        system_error(message),
        close_of(TOPIC, "1"),
    ]
    assert s.channels == {}
    assert not any(m.event == "phx_reply" for m in sends(effects))


def test_good_access_token_rearms_deadline_without_bindings() -> None:
    s = joined()
    assert s.next_deadline() == T0 + 300
    fresh = token(100, now=T0 + 10)
    assert s.receive(access_token_msg(fresh), T0 + 10) == []
    assert s.next_deadline() == T0 + 110  # exp sooner than the 300 s recheck
    # The new token is now "the current token": sending it again changes nothing.
    assert s.receive(access_token_msg(fresh), T0 + 20) == []
    assert s.next_deadline() == T0 + 110


@pytest.mark.compat(48)
def test_good_access_token_resubscribes_postgres_with_new_claims() -> None:
    s = joined(postgres_changes=[BINDING_A])
    fresh = token(1000, now=T0 + 10, sub="u2", role="authenticated")
    effects = s.receive(access_token_msg(fresh), T0 + 10)
    echoed = ({**BINDING_A, "id": binding_id(BINDING_A)},)
    # a refresh re-subscribes without reading snapshots again (§6.10)
    assert effects == [SubscribePostgres(TOPIC, "1", echoed, claims_of(fresh, T0 + 10), snapshot=False)]
    assert s.next_deadline() == T0 + 10 + 300


# --- expiry: tick / next_deadline, §3.9, item 47 ----------------------------------------------


@pytest.mark.compat(47)
def test_tick_shuts_channel_down_exactly_at_exp() -> None:
    s = make_session()
    s.receive(join_msg(access_token=token(120)), T0)
    assert s.next_deadline() == T0 + 120
    assert s.tick(T0 + 119.999) == []
    assert TOPIC in s.channels
    effects = s.tick(T0 + 120)
    assert effects == [Unsubscribe(STREAM, TOPIC), system_error("Token has expired 0 seconds ago"), close_of(TOPIC, "1")]
    assert s.channels == {}
    assert s.next_deadline() is None


def test_tick_late_reports_elapsed_seconds() -> None:
    s = make_session()
    s.receive(join_msg(access_token=token(120)), T0)
    effects = s.tick(T0 + 127)
    assert system_error("Token has expired 7 seconds ago") in effects


def test_tick_at_recheck_with_valid_token_rearms() -> None:
    s = joined()  # connection token valid for an hour
    assert s.next_deadline() == T0 + 300
    assert s.tick(T0 + 299) == []
    assert s.tick(T0 + 300) == []
    assert s.next_deadline() == T0 + 600
    assert TOPIC in s.channels


def test_tick_only_touches_due_channels() -> None:
    s = make_session()
    s.receive(join_msg("realtime:short", access_token=token(50)), T0)
    s.receive(join_msg("realtime:long", ref="2", join_ref="2", access_token=token(3000)), T0)
    assert s.next_deadline() == T0 + 50
    effects = s.tick(T0 + 50)
    assert effects == [
        Unsubscribe("pub:short", "realtime:short"),
        system_error("Token has expired 0 seconds ago", topic="realtime:short"),
        close_of("realtime:short", "1"),
    ]
    assert list(s.channels) == ["realtime:long"]
    assert s.next_deadline() == T0 + 300


def test_next_deadline_is_min_of_exp_and_recheck() -> None:
    s = make_session()
    assert s.next_deadline() is None
    s.receive(join_msg("realtime:a", access_token=token(1000)), T0)
    assert s.next_deadline() == T0 + 300
    s.receive(join_msg("realtime:b", ref="2", join_ref="2", access_token=token(400)), T0 + 200)
    assert s.next_deadline() == T0 + 300  # a: T0+300, b: min(T0+400, T0+500)
    s.receive(join_msg("realtime:c", ref="3", join_ref="3", access_token=token(250)), T0 + 10)
    assert s.next_deadline() == T0 + 250


def test_recheck_interval_comes_from_config() -> None:
    s = joined(SessionConfig(token_recheck_s=60.0))
    assert s.next_deadline() == T0 + 60


# --- socket closed: §5.1 -------------------------------------------------------------------


def test_closed_tears_down_every_channel() -> None:
    s = joined(presence={"key": "k"}, postgres_changes=[BINDING_A])
    s.receive(presence(payload={}), T0)
    s.receive(join_msg("realtime:other", ref="2", join_ref="2"), T0)
    effects = s.closed()
    assert effects == [
        Unsubscribe(STREAM, TOPIC),
        Untrack(STREAM, TOPIC),
        UnsubscribePostgres(TOPIC),
        Unsubscribe("pub:other", "realtime:other"),
    ]
    assert s.channels == {}
    assert s.next_deadline() is None
    # Nothing is written to a closed socket.
    assert not any(isinstance(e, Send) for e in effects)
