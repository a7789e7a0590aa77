"""The session's private-channel flow and tenant limits without sockets (protocol.md §3.3, §3.5,
§3.9, §4.2, §4.4, §4.8, §5.5, §7.3, §8).

A private join parks the channel and emits ``Authorize``; the test plays the adapter and answers
with ``Session.authorized``.  Exact effect lists are asserted.  Tokens are real HS256 JWTs checked
by the real ``JwtVerifier``; time is a fake clock.
"""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest

from realtime_channels import errors
from realtime_channels.auth import JwtVerifier, mint_token
from realtime_channels.protocol.codec import Broadcast, Message
from realtime_channels.protocol.limits import TenantLimits
from realtime_channels.protocol.session import (
    BROADCAST_READ,
    BROADCAST_WRITE,
    PRESENCE_READ,
    PRESENCE_WRITE,
    AuthResult,
    Authorize,
    Close,
    Effect,
    Publish,
    PushPresenceState,
    ReplayedMessage,
    Send,
    SendBinary,
    AwaitReplication,
    Session,
    SessionConfig,
    Subscribe,
    Track,
    Unsubscribe,
    Untrack,
)

SECRET = "private-session-unit-test-secret-32-chars!"
T0 = 1_700_000_000.0
TOPIC = "realtime:room1"
SUB = "room1"
PRIV, PRIVP = "priv:room1", "privp:room1"
OK: dict[str, Any] = {"status": "ok", "response": {}}
JOIN_OK: dict[str, Any] = {"status": "ok", "response": {"postgres_changes": []}}
UNAUTHORIZED = "Unauthorized: You do not have permissions to read from this Channel topic: room1"
CONFIG = SessionConfig(private_allowed=True, join_error_delay_s=0.0)
PAYLOAD = {"type": "broadcast", "event": "e", "payload": {"x": 1}}


def token(user: str = "a", exp: float = 3600, **claims: Any) -> str:
    return mint_token(SECRET, "authenticated", now=T0, exp_seconds=exp, sub=user, claims=claims or None)


CONN = token()


def claims(tok: str = CONN) -> dict[str, Any]:
    return JwtVerifier(SECRET).verify(tok, T0)


def session(config: SessionConfig = CONFIG, limits: TenantLimits | None = None) -> Session:
    keys = itertools.count(1)
    return Session(verify=JwtVerifier(SECRET).verify, conn_token=CONN,
                   new_presence_key=lambda: f"key-{next(keys)}", config=config, limits=limits)


def join(ref: str = "1", topic: str = TOPIC, **config: Any) -> Message:
    return Message(topic, "phx_join", {"config": {"private": True, **config}}, ref=ref, join_ref=ref)


def reply(payload: Any, ref: str | None, join_ref: str | None = "1", topic: str = TOPIC) -> Send:
    return Send(Message(topic, "phx_reply", payload, ref=ref, join_ref=join_ref))


def track(stream: str, key: str, payload: dict[str, Any], ref: str) -> Track:
    """The Track effect of a presence push: its ok reply, or the full-state refusal."""
    full = {"status": "error", "response": {"reason": errors.PresenceStateTooLarge().reason}}
    return Track(stream, TOPIC, key, payload, reply(OK, ref).message, reply(full, ref).message)


def join_ok(ref: str = "1") -> Send:
    return reply(JOIN_OK, ref, ref)


def join_refused(reason: str, ref: str = "1", delay: float = 0.0) -> Send:
    return Send(Message(TOPIC, "phx_reply", {"status": "error", "response": {"reason": reason}}, ref=ref, join_ref=ref),
                delay)


def bcast(ref: str = "3") -> Message:
    return Message(TOPIC, "broadcast", PAYLOAD, ref=ref, join_ref="1")


def presence(event: str = "track", ref: str = "4", payload: Any = None) -> Message:
    body: dict[str, Any] = {"type": "presence", "event": event}
    if payload is not None:
        body["payload"] = payload
    return Message(TOPIC, "presence", body, ref=ref, join_ref="1")


def refresh(tok: str) -> Message:
    return Message(TOPIC, "access_token", {"access_token": tok}, ref="9", join_ref="1")


def shutdown(message: str, *teardown: Effect) -> list[Effect]:
    notice = {"extension": "system", "status": "error", "message": message, "channel": SUB}
    return [*teardown, Send(Message(TOPIC, "system", notice, ref=None, join_ref="1")),
            Send(Message(TOPIC, "phx_close", {}, ref="1", join_ref="1"))]


def authorize(purpose: str, checks: tuple[str, ...], tok: str = CONN,
              replay: tuple[int, int] | None = None) -> Authorize:
    return Authorize(TOPIC, "1", purpose, SUB, claims(tok), checks, replay)


def granted(**rights: bool) -> AuthResult:
    return AuthResult(dict(rights.items()))


def publish(ack_ref: str | None = None, exclude: str | None = TOPIC) -> list[Effect]:
    effects: list[Effect] = [Publish(PRIV, Broadcast(TOPIC, payload=PAYLOAD), exclude)]
    if ack_ref is not None:
        effects.append(reply(OK, ack_ref))
    return effects


def joined(rights: dict[str, bool], **config: Any) -> Session:
    s = session()
    s.receive(join(**config), T0)
    effects = s.authorized(TOPIC, "1", "join", AuthResult(rights), T0)
    assert effects[0] == join_ok(), effects
    return s


# --- Authorize at join (§3.3 step 6, §5.5, §4.8) ---------------------------------------------


@pytest.mark.parametrize(
    ("config", "presence_forced", "checks"),
    [
        ({}, False, (BROADCAST_READ,)),
        ({"presence": {"enabled": True}}, False, (BROADCAST_READ, PRESENCE_READ)),
        ({}, True, (BROADCAST_READ, PRESENCE_READ)),
    ],
    ids=["broadcast-only", "presence-enabled", "presence-forced-by-tenant"],
)
def test_private_join_asks_read_checks_and_parks(config: dict[str, Any], presence_forced: bool,
                                                 checks: tuple[str, ...]) -> None:
    s = session(SessionConfig(private_allowed=True, presence_forced=presence_forced))
    assert s.receive(join(**config), T0) == [authorize("join", checks)]
    assert s.channels == {} and list(s.joining) == [TOPIC]


def test_join_access_token_claims_are_the_ones_checked() -> None:
    s = session()
    user_b = token("b")
    msg = Message(TOPIC, "phx_join", {"config": {"private": True}, "access_token": user_b}, ref="1", join_ref="1")
    assert s.receive(msg, T0) == [authorize("join", (BROADCAST_READ,), user_b)]


def test_broadcast_read_subscribes_the_broadcast_stream_only() -> None:
    s = session()
    s.receive(join(), T0)
    assert s.authorized(TOPIC, "1", "join", granted(broadcast_read=True), T0) == [join_ok(), Subscribe(PRIV, TOPIC)]


@pytest.mark.compat(57)
def test_presence_read_only_member_gets_presence_stream_and_state_but_no_broadcasts() -> None:
    s = session()
    s.receive(join(presence={"enabled": True}), T0)
    effects = s.authorized(TOPIC, "1", "join", granted(broadcast_read=False, presence_read=True), T0)
    assert effects == [join_ok(), Subscribe(PRIVP, TOPIC), PushPresenceState(PRIVP, TOPIC, "1")]


def test_both_reads_subscribe_both_private_streams() -> None:
    s = session()
    s.receive(join(presence={"enabled": True}), T0)
    effects = s.authorized(TOPIC, "1", "join", granted(broadcast_read=True, presence_read=True), T0)
    assert effects == [join_ok(), Subscribe(PRIV, TOPIC), Subscribe(PRIVP, TOPIC), PushPresenceState(PRIVP, TOPIC, "1")]


@pytest.mark.parametrize(
    "result",
    [granted(broadcast_read=False), granted(broadcast_read=False, presence_read=False), granted(),
     AuthResult({BROADCAST_READ: True}, error="database unreachable")],
    ids=["broadcast-denied", "both-denied", "nothing-answered", "policy-error"],
)
def test_join_refused_without_any_read_right(result: AuthResult) -> None:
    s = session(SessionConfig(private_allowed=True, join_error_delay_s=2.5))
    s.receive(join(presence={"enabled": True}), T0)
    assert s.authorized(TOPIC, "1", "join", result, T0) == [join_refused(UNAUTHORIZED, delay=2.5)]
    assert s.channels == {} and s.joining == {}


def test_pushes_for_a_refused_join_get_unmatched_topic() -> None:
    s = session()
    s.receive(join(), T0)
    assert s.receive(bcast("3"), T0) == []
    assert s.authorized(TOPIC, "1", "join", granted(broadcast_read=False), T0) == [
        join_refused(UNAUTHORIZED),
        reply({"status": "error", "response": {"reason": "unmatched topic"}}, "3", None),
    ]


def test_answer_for_a_left_or_superseded_join_is_ignored() -> None:
    s = session()
    s.receive(join("1"), T0)
    leave = Message(TOPIC, "phx_leave", {}, ref="2", join_ref="1")
    assert s.receive(leave, T0) == [reply(OK, "2", "1"), Send(Message(TOPIC, "phx_close", {}, ref="1", join_ref="1"))]
    assert s.authorized(TOPIC, "1", "join", granted(broadcast_read=True), T0) == []
    s.receive(join("5"), T0)
    assert s.authorized(TOPIC, "1", "join", granted(broadcast_read=True), T0) == []  # stale join_ref
    assert s.authorized(TOPIC, "5", "join", granted(broadcast_read=True), T0)[0] == join_ok("5")


def close_of(join_ref: str) -> Send:
    return Send(Message(TOPIC, "phx_close", {}, ref=join_ref, join_ref=join_ref))


def test_a_superseded_pending_join_is_closed_after_the_new_reply_and_its_pushes_move_to_the_new_join() -> None:
    s = session()
    s.receive(join("1", broadcast={"ack": True}), T0)
    assert s.receive(bcast("3"), T0) == []  # acked broadcast queued behind the pending join
    effects = s.receive(join("5", broadcast={"ack": True}), T0)
    assert effects == [Authorize(TOPIC, "5", "join", SUB, claims(), (BROADCAST_READ,), None)]
    assert s.authorized(TOPIC, "1", "join", granted(broadcast_read=True), T0) == []  # superseded
    effects = s.authorized(TOPIC, "5", "join", granted(broadcast_read=True), T0)
    write_check = Authorize(TOPIC, "5", "write", SUB, claims(), (BROADCAST_WRITE,))
    assert effects == [join_ok("5"), Subscribe(PRIV, TOPIC), close_of("1"), write_check]
    effects = s.authorized(TOPIC, "5", "write", granted(broadcast_write=True), T0)
    assert effects == [Publish(PRIV, Broadcast(TOPIC, payload=PAYLOAD), TOPIC), reply(OK, "3", "5")]


def test_superseding_a_pending_rejoin_closes_both_joins_it_replaced() -> None:
    s = joined({BROADCAST_READ: True})
    s.receive(join("5"), T0)  # replaces the open channel "1", waits for its check
    s.receive(join("7"), T0)  # replaces the pending "5"
    effects = s.authorized(TOPIC, "7", "join", granted(broadcast_read=True), T0)
    assert effects == [join_ok("7"), Subscribe(PRIV, TOPIC), close_of("1"), close_of("5")]


def test_a_refused_new_join_closes_the_superseded_one_and_answers_its_pushes() -> None:
    s = session()
    s.receive(join("1"), T0)
    s.receive(bcast("3"), T0)
    s.receive(join("6"), T0)
    refused = s.authorized(TOPIC, "6", "join", granted(broadcast_read=False), T0)
    assert refused == [close_of("1"), join_refused(UNAUTHORIZED, "6"),
                       reply({"status": "error", "response": {"reason": "unmatched topic"}}, "3", None)]


def test_leaving_a_pending_join_answers_its_queued_pushes() -> None:
    s = session()
    s.receive(join("1"), T0)
    s.receive(bcast("3"), T0)
    leave = Message(TOPIC, "phx_leave", {}, ref="4", join_ref="1")
    assert s.receive(leave, T0) == [reply(OK, "4", "1"), close_of("1"),
                                    reply({"status": "error", "response": {"reason": "unmatched topic"}}, "3", None)]


def test_queued_pushes_are_processed_in_order_after_the_answers() -> None:
    s = session()
    s.receive(join(broadcast={"ack": True}), T0)
    assert s.receive(bcast("3"), T0) == []
    assert s.receive(bcast("4"), T0) == []
    heartbeat = Message("phoenix", "heartbeat", {}, ref="hb", join_ref=None)
    assert s.receive(heartbeat, T0) == [reply(OK, "hb", None, "phoenix")]  # never queued
    effects = s.authorized(TOPIC, "1", "join", granted(broadcast_read=True), T0)
    assert effects == [join_ok(), Subscribe(PRIV, TOPIC), authorize("write", (BROADCAST_WRITE,))]
    assert s.receive(presence("untrack", "5"), T0) == []  # still behind the write check
    effects = s.authorized(TOPIC, "1", "write", granted(broadcast_write=True), T0)
    assert effects == [*publish("3"), *publish("4"), reply(OK, "5")]


# --- lazy broadcast write (§4.2, §4.4, §7.3) -------------------------------------------------


def test_write_check_is_cached_until_refresh_then_asked_again() -> None:
    s = joined({BROADCAST_READ: True}, broadcast={"ack": True})
    assert s.receive(bcast("3"), T0) == [authorize("write", (BROADCAST_WRITE,))]
    assert s.authorized(TOPIC, "1", "write", granted(broadcast_write=True), T0) == publish("3")
    assert s.receive(bcast("4"), T0) == publish("4")  # cached
    new = token(exp=7200)
    assert s.receive(refresh(new), T0) == [authorize("refresh", (BROADCAST_READ,), new)]
    assert s.authorized(TOPIC, "1", "refresh", granted(broadcast_read=True), T0) == []
    assert s.receive(bcast("5"), T0) == [authorize("write", (BROADCAST_WRITE,), new)]


@pytest.mark.parametrize("result", [granted(broadcast_write=False), AuthResult({}, error="timeout")],
                         ids=["denied", "policy-error"])
@pytest.mark.compat(56)
def test_denied_write_drops_silently_even_with_ack_and_stays_denied(result: AuthResult) -> None:
    s = joined({BROADCAST_READ: True}, broadcast={"ack": True, "self": True})
    assert s.receive(bcast("3"), T0) == [authorize("write", (BROADCAST_WRITE,))]
    assert s.authorized(TOPIC, "1", "write", result, T0) == []
    assert s.receive(bcast("4"), T0) == []  # the denial is cached: no second check, no reply
    assert TOPIC in s.channels


def test_write_answer_for_an_old_join_is_ignored() -> None:
    s = joined({BROADCAST_READ: True})
    s.receive(bcast("3"), T0)
    assert s.authorized(TOPIC, "other", "write", granted(broadcast_write=True), T0) == []


# --- presence rights (§5.5; item 84) ---------------------------------------------------------


@pytest.mark.compat(84)
def test_presence_write_denied_is_an_empty_error_and_no_track() -> None:
    s = joined({BROADCAST_READ: False, PRESENCE_READ: True}, presence={"enabled": True, "key": "k"})
    assert s.receive(presence(payload={"a": 1}), T0) == [authorize("write", (PRESENCE_WRITE,))]
    effects = s.authorized(TOPIC, "1", "write", granted(presence_write=False), T0)
    assert effects == [reply({"status": "error", "response": {}}, "4")]
    assert s.receive(presence(ref="6", payload={"a": 2}), T0) == [reply({"status": "error", "response": {}}, "6")]


def test_presence_write_granted_tracks_on_the_private_presence_stream() -> None:
    s = joined({BROADCAST_READ: False, PRESENCE_READ: True}, presence={"enabled": True, "key": "k"})
    s.receive(presence(payload={"a": 1}), T0)
    effects = s.authorized(TOPIC, "1", "write", granted(presence_write=True), T0)
    assert effects == [track(PRIVP, "k", {"a": 1}, "4")]
    assert s.receive(presence("untrack", "5"), T0) == [Untrack(PRIVP, TOPIC), reply(OK, "5")]


def test_first_track_on_presence_disabled_join_asks_presence_write_and_read() -> None:
    s = joined({BROADCAST_READ: True}, presence={"key": "k"})
    assert s.receive(presence(payload={"a": 1}), T0) == [authorize("write", (PRESENCE_WRITE, PRESENCE_READ))]
    effects = s.authorized(TOPIC, "1", "write", granted(presence_write=True, presence_read=True), T0)
    # presence-read granted: the presence stream is subscribed, but no presence_state (§5.1)
    assert effects == [Subscribe(PRIVP, TOPIC), track(PRIVP, "k", {"a": 1}, "4")]


def test_untrack_needs_no_write_check() -> None:
    s = joined({BROADCAST_READ: True})
    assert s.receive(presence("untrack", "5"), T0) == [reply(OK, "5")]


# --- refresh re-checks (§3.9) ------------------------------------------------------------------


TEARDOWN_PRIVATE = (Unsubscribe(PRIV, TOPIC), Unsubscribe(PRIVP, TOPIC))


def test_refresh_losing_one_held_right_shuts_down_with_no_longer() -> None:
    s = joined({BROADCAST_READ: True, PRESENCE_READ: True}, presence={"enabled": True})
    new = token(exp=7200)
    assert s.receive(refresh(new), T0) == [authorize("refresh", (BROADCAST_READ, PRESENCE_READ), new)]
    effects = s.authorized(TOPIC, "1", "refresh", granted(broadcast_read=True, presence_read=False), T0)
    assert effects == shutdown("You no longer have permission to read from this Channel topic: room1", *TEARDOWN_PRIVATE)
    assert s.channels == {}


def test_refresh_losing_every_right_shuts_down_with_do_not_have() -> None:
    s = joined({BROADCAST_READ: True})
    new = token(exp=7200)
    s.receive(refresh(new), T0)
    effects = s.authorized(TOPIC, "1", "refresh", granted(broadcast_read=False), T0)
    assert effects == shutdown("You do not have permissions to read from this Channel topic: room1", *TEARDOWN_PRIVATE)


def test_refresh_with_database_error_shuts_down() -> None:
    s = joined({BROADCAST_READ: True})
    s.receive(refresh(token(exp=7200)), T0)
    effects = s.authorized(TOPIC, "1", "refresh", AuthResult({}, error="connection refused"), T0)
    assert effects == shutdown("Realtime was unable to connect to the project database", *TEARDOWN_PRIVATE)


def test_refresh_gaining_a_right_that_was_not_held_keeps_the_channel() -> None:
    s = joined({BROADCAST_READ: False, PRESENCE_READ: True}, presence={"enabled": True})
    s.receive(refresh(token(exp=7200)), T0)
    assert s.authorized(TOPIC, "1", "refresh", granted(broadcast_read=True, presence_read=True), T0) == []
    assert TOPIC in s.channels


def test_refresh_untracks_a_tracked_presence_when_shutting_down() -> None:
    s = joined({BROADCAST_READ: True, PRESENCE_READ: True}, presence={"enabled": True, "key": "k"})
    s.receive(presence(payload={}), T0)
    s.authorized(TOPIC, "1", "write", granted(presence_write=True), T0)
    s.receive(refresh(token(exp=7200)), T0)
    effects = s.authorized(TOPIC, "1", "refresh", granted(broadcast_read=False, presence_read=False), T0)
    assert effects == shutdown("You do not have permissions to read from this Channel topic: room1",
                               *TEARDOWN_PRIVATE, Untrack(PRIVP, TOPIC))


# --- replay (§4.8; items 69–71) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("replay", "expected"),
    [({"since": 5}, (5, 25)), ({"since": 5, "limit": 0}, (5, 1)), ({"since": 5, "limit": -7}, (5, 1)),
     ({"since": 5, "limit": 1}, (5, 1)), ({"since": 5, "limit": 25}, (5, 25)), ({"since": 5, "limit": 26}, (5, 25)),
     ({"since": 0, "limit": 10**9}, (0, 25))],
)
def test_replay_limit_defaults_to_25_and_is_clamped(replay: dict[str, Any], expected: tuple[int, int]) -> None:
    s = session()
    assert s.receive(join(broadcast={"replay": replay}), T0) == [authorize("join", (BROADCAST_READ,), replay=expected)]


@pytest.mark.parametrize(
    "replay",
    [{}, {"limit": 3}, {"since": None}, {"since": "5"}, {"since": 5.0}, {"since": True}, {"since": False},
     {"since": 5, "limit": None}, {"since": 5, "limit": "3"}, {"since": 5, "limit": 3.0}, {"since": 5, "limit": True},
     [5, 3], "5"],
)
@pytest.mark.compat(71)
def test_invalid_replay_params_fail_the_join(replay: Any) -> None:
    s = session()
    assert s.receive(join(broadcast={"replay": replay}), T0) == [
        join_refused("UnableToReplayMessages: Replay params are not valid")]


def test_replay_on_public_channel_is_refused() -> None:
    s = session()
    msg = Message(TOPIC, "phx_join", {"config": {"broadcast": {"replay": {"since": 1}}}}, ref="1", join_ref="1")
    assert s.receive(msg, T0) == [join_refused("UnableToReplayMessages: Replay is not allowed for public channels")]


def test_replay_without_broadcast_read_is_refused() -> None:
    s = session()
    s.receive(join(presence={"enabled": True}, broadcast={"replay": {"since": 1}}), T0)
    effects = s.authorized(TOPIC, "1", "join", granted(broadcast_read=False, presence_read=True), T0)
    assert effects == [join_refused(UNAUTHORIZED)]


@pytest.mark.compat(70)
def test_replayed_messages_follow_the_reply_and_their_ids_are_skipped_live() -> None:
    s = session()
    s.receive(join(broadcast={"replay": {"since": 1, "limit": 2}}), T0)
    rows = (ReplayedMessage("id-1", "e", b'{"a":1}', None), ReplayedMessage("id-2", "b", None, b"\x00"))
    effects = s.authorized(TOPIC, "1", "join", AuthResult({BROADCAST_READ: True}, replayed=rows), T0)
    assert effects[:2] == [join_ok(), Subscribe(PRIV, TOPIC, frozenset({"id-1", "id-2"}))]
    # §4.8: a JSON row is a text push with the join_ref; a binary row a kind-4 frame (V2 only)
    text, binary = effects[2:]
    assert isinstance(text, Send) and text.message.event == "broadcast" and text.message.join_ref == "1"
    payload = text.message.payload
    assert orjson.loads(orjson.dumps(payload)) == {
        "type": "broadcast", "event": "e", "payload": {"a": 1}, "meta": {"replayed": True, "id": "id-1"}}
    assert binary == SendBinary(TOPIC, "b", {"replayed": True, "id": "id-2"}, b"\x00")


def test_replication_ready_is_awaited_and_answered() -> None:
    s = session()
    effects = s.receive(join(broadcast={"replication_ready": True}), T0)
    effects = s.authorized(TOPIC, "1", "join", granted(broadcast_read=True), T0)
    assert effects[-1] == AwaitReplication(TOPIC, "1")
    assert s.replication(TOPIC, "other-join", True) == []  # a stale answer is ignored
    [notice] = s.replication(TOPIC, "1", True)
    assert isinstance(notice, Send) and notice.message.event == "system"
    assert notice.message.payload == {"extension": "system", "status": "ok",
                                      "message": "Replication connection established", "channel": "room1"}
    shut = s.replication(TOPIC, "1", False)
    assert [e.message.event for e in shut if isinstance(e, Send)] == ["system", "phx_close"]
    assert TOPIC not in s.channels


# --- private presence streams (§5.2, §5.5) -----------------------------------------------------


def test_private_topic_presence_uses_its_own_stream_and_teardown_releases_both() -> None:
    s = joined({BROADCAST_READ: True, PRESENCE_READ: True}, presence={"enabled": True, "key": "k"})
    s.receive(presence(payload={"p": 1}), T0)
    assert s.authorized(TOPIC, "1", "write", granted(presence_write=True), T0) == [
        track(PRIVP, "k", {"p": 1}, "4")]
    assert s.closed() == [Unsubscribe(PRIV, TOPIC), Unsubscribe(PRIVP, TOPIC), Untrack(PRIVP, TOPIC)]


# --- tenant limits in the session (§3.3 step 3, §8) --------------------------------------------


def public_join(ref: str, topic: str = TOPIC) -> Message:
    return Message(topic, "phx_join", {"config": {"broadcast": {"ack": True}}}, ref=ref, join_ref=ref)


def test_concurrent_users_counted_once_per_socket_and_released_on_close() -> None:
    limits = TenantLimits(max_concurrent_users=1)
    a, b = session(limits=limits), session(limits=limits)
    assert a.receive(public_join("1"), T0)[0] == join_ok("1")
    assert a.receive(public_join("2", "realtime:other"), T0)[0].message.payload == JOIN_OK  # type: ignore[union-attr]
    assert limits.users == 1
    assert b.receive(public_join("1"), T0) == [join_refused("ConnectionRateLimitReached: Too many connected users")]
    a.closed()
    assert limits.users == 0
    assert b.receive(public_join("2"), T0)[0] == join_ok("2")


def test_private_socket_counts_as_a_user_only_once_joined() -> None:
    limits = TenantLimits(max_concurrent_users=5)
    s = session(limits=limits)
    s.receive(join(), T0)
    assert limits.users == 0
    s.authorized(TOPIC, "1", "join", granted(broadcast_read=True), T0)
    assert limits.users == 1


def test_join_rate_refuses_and_closes_1001() -> None:
    limits = TenantLimits(max_joins_per_second=1)
    s = session(SessionConfig(join_error_delay_s=1.5), limits=limits)
    for i in range(5):  # five joins in one 5 s bucket: a rate of 1/s
        assert s.receive(public_join(str(i), f"realtime:t{i}"), T0)[0] == Send(Message(
            f"realtime:t{i}", "phx_reply", JOIN_OK, ref=str(i), join_ref=str(i)))
    effects = s.receive(public_join("9"), T0 + 1)
    assert effects == [join_refused("ClientJoinRateLimitReached: Too many joins per second", "9", 1.5),
                       Close(1001, "too many joins", 1.5)]


def test_events_rate_shuts_the_sending_channel_down() -> None:
    limits = TenantLimits(max_events_per_second=1)
    s = session(limits=limits)
    s.receive(public_join("1"), T0)
    for i in range(5):
        assert s.receive(bcast(str(10 + i)), T0 + i / 10) == [
            Publish("pub:room1", Broadcast(TOPIC, payload=PAYLOAD), TOPIC), reply(OK, str(10 + i))]
    effects = s.receive(bcast("20"), T0 + 1)
    assert effects == shutdown("Too many messages per second", Unsubscribe("pub:room1", TOPIC))
    # The rolling average decays: a minute later a new channel may send again.
    s.receive(public_join("2"), T0 + 70)
    assert s.receive(Message(TOPIC, "broadcast", PAYLOAD, ref="21", join_ref="2"), T0 + 70)[0] == Publish(
        "pub:room1", Broadcast(TOPIC, payload=PAYLOAD), TOPIC)


def test_tenant_presence_rate_shuts_the_channel_down() -> None:
    limits = TenantLimits(max_presence_events_per_second=1)
    s = session(SessionConfig(presence_window_limit=100), limits=limits)
    s.receive(Message(TOPIC, "phx_join", {"config": {"presence": {"key": "k"}}}, ref="1", join_ref="1"), T0)
    for i in range(5):
        assert s.receive(presence(ref=str(i), payload={"i": i}), T0) == [
            track("pub:room1", "k", {"i": i}, str(i))]
    effects = s.receive(presence(ref="9", payload={"i": 9}), T0)
    assert effects == shutdown("Too many presence messages per second",
                               Unsubscribe("pub:room1", TOPIC), Untrack("pub:room1", TOPIC))
