"""Joins that wait for their postgres_changes subscriptions (protocol.md §3.11), without sockets.

``config.postgres_changes_options.wait`` parks the join behind ``AwaitPostgres``; the adapter's
answer (``Session.postgres_ready``) releases the usual reply, or a join error that leaves
nothing behind.  Exact effect lists are asserted, as in test_session.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from realtime_channels import errors
from realtime_channels.protocol.codec import Message
from realtime_channels.protocol.join import echo_bindings
from realtime_channels.protocol.session import (
    BROADCAST_READ,
    AuthResult,
    Authorize,
    AwaitPostgres,
    Publish,
    ReplayedMessage,
    Send,
    SessionConfig,
    Subscribe,
    SubscribePostgres,
    Unsubscribe,
    UnsubscribePostgres,
)
from realtime_channels.protocol.codec import Broadcast
from test_session import (
    BINDING_A,
    CONN_TOKEN,
    STREAM,
    T0,
    TOPIC,
    access_token_msg,
    bcast,
    claims_of,
    close_of,
    make_session,
    reply,
    token,
)

BINDINGS = [BINDING_A]
ECHO = tuple(echo_bindings(BINDINGS))
WAIT = {"wait": True}
SUBSCRIBED = {"extension": "postgres_changes", "status": "ok", "message": "Subscribed to PostgreSQL", "channel": "room1"}


def wait_join(ref: str = "1", topic: str = TOPIC, options: Any = None, **config: Any) -> Message:
    cfg = {"postgres_changes": BINDINGS, "postgres_changes_options": WAIT if options is None else options, **config}
    return Message(topic, "phx_join", {"config": cfg}, ref=ref, join_ref=ref)


def awaiting(join_ref: str = "1", timeout_ms: int = 15000) -> AwaitPostgres:
    return AwaitPostgres(TOPIC, join_ref, ECHO, claims_of(CONN_TOKEN), timeout_ms)


def ok_reply(ref: str = "1") -> Send:
    return Send(reply(TOPIC, {"status": "ok", "response": {"postgres_changes": list(ECHO)}}, ref, ref))


def subscribed(join_ref: str = "1") -> Send:
    return Send(Message(TOPIC, "system", SUBSCRIBED, ref=None, join_ref=join_ref))


def join_error(reason: str, ref: str = "1", delay: float = 5.0) -> Send:
    return Send(reply(TOPIC, {"status": "error", "response": {"reason": reason}}, ref, ref), delay)


def unmatched(msg: Message) -> Send:
    return Send(reply(msg.topic, {"status": "error", "response": {"reason": "unmatched topic"}}, msg.ref, None))


def test_wait_join_holds_the_reply_until_the_bindings_are_live() -> None:
    s = make_session()
    assert s.receive(wait_join(), T0) == [awaiting()]
    assert TOPIC not in s.channels
    push = bcast({"type": "broadcast", "event": "e", "payload": {}}, ref="2")
    assert s.receive(push, T0) == []  # queued behind the wait
    effects = s.postgres_ready(TOPIC, "1", None, T0)
    assert effects == [
        ok_reply(),  # the same reply as without wait: bindings echoed, nothing added
        Subscribe(STREAM, TOPIC),
        subscribed(),  # the subscriptions exist already: no SubscribePostgres
        Publish(STREAM, Broadcast(TOPIC, payload=push.payload), TOPIC),
    ]
    assert TOPIC in s.channels and not s.joining


@pytest.mark.parametrize(
    ("timeout", "expected"),
    [(None, 15000), (5000, 5000), (1500.9, 1500), (50000, 20000), (20000, 20000), ("5000", 15000),
     (True, 15000), (0, 15000), (-5, 15000), ({"ms": 1}, 15000)],
)
def test_wait_timeout_defaults_and_clamps(timeout: Any, expected: int) -> None:
    options: dict[str, Any] = {"wait": True}
    if timeout is not None:
        options["timeout"] = timeout
    assert make_session().receive(wait_join(options=options), T0) == [awaiting(timeout_ms=expected)]


@pytest.mark.parametrize("options", [{}, {"wait": False}, {"wait": "no"}, {"timeout": 100}, "wait", None])
def test_without_wait_the_join_is_answered_at_once(options: Any) -> None:
    s = make_session()
    cfg: dict[str, Any] = {"postgres_changes": BINDINGS}
    if options is not None:
        cfg["postgres_changes_options"] = options
    effects = s.receive(Message(TOPIC, "phx_join", {"config": cfg}, ref="1", join_ref="1"), T0)
    assert effects == [ok_reply(), Subscribe(STREAM, TOPIC), SubscribePostgres(TOPIC, "1", ECHO, claims_of(CONN_TOKEN))]


def test_wait_without_bindings_is_answered_at_once() -> None:
    s = make_session()
    effects = s.receive(wait_join(postgres_changes=[]), T0)
    assert effects == [Send(reply(TOPIC, {"status": "ok", "response": {"postgres_changes": []}}, "1", "1")),
                       Subscribe(STREAM, TOPIC)]


def test_wait_flag_accepts_flexible_booleans() -> None:
    assert make_session().receive(wait_join(options={"wait": "TRUE"}), T0) == [awaiting()]


@pytest.mark.parametrize(
    "error",
    [errors.PostgresChangesSubscribeTimeout(1000),
     errors.RealtimeDisabledForConfiguration(errors.TableNotPublished("schema: public, table: t").message)],
)
def test_failed_wait_is_a_join_error_that_leaves_nothing_behind(error: errors.RealtimeError) -> None:
    s = make_session()
    s.receive(wait_join(), T0)
    push = bcast({"type": "broadcast", "event": "e", "payload": {}}, ref="2")
    s.receive(push, T0)
    effects = s.postgres_ready(TOPIC, "1", error, T0)
    assert effects == [UnsubscribePostgres(TOPIC), join_error(error.reason), unmatched(push)]
    assert not s.channels and not s.joining
    assert s.postgres_ready(TOPIC, "1", None, T0) == []  # answered once


def test_error_reasons() -> None:
    assert errors.PostgresChangesSubscribeTimeout(1000).reason == (
        "PostgresChangesSubscribeTimeout: Timed out after 1000ms waiting for the postgres_changes subscription")
    assert errors.RealtimeDisabledForConfiguration("No role claim").reason == (
        "RealtimeDisabledForConfiguration: No role claim")


def test_wait_join_replacing_an_open_channel_closes_it_after_the_reply() -> None:
    s = make_session()
    s.receive(Message(TOPIC, "phx_join", {"config": {}}, ref="1", join_ref="1"), T0)
    assert s.receive(wait_join("5"), T0) == [Unsubscribe(STREAM, TOPIC), awaiting("5")]
    assert s.postgres_ready(TOPIC, "5", None, T0) == [
        ok_reply("5"), Subscribe(STREAM, TOPIC), close_of(TOPIC, "1"), subscribed("5")]


def test_failed_wait_join_still_closes_the_channel_it_replaced() -> None:
    s = make_session()
    s.receive(Message(TOPIC, "phx_join", {"config": {}}, ref="1", join_ref="1"), T0)
    s.receive(wait_join("5"), T0)
    err = errors.PostgresChangesSubscribeTimeout(15000)
    assert s.postgres_ready(TOPIC, "5", err, T0) == [
        UnsubscribePostgres(TOPIC), close_of(TOPIC, "1"), join_error(err.reason, "5")]


def test_a_new_join_replaces_a_waiting_one_and_drops_its_subscriptions() -> None:
    s = make_session()
    s.receive(wait_join("1"), T0)
    effects = s.receive(Message(TOPIC, "phx_join", {"config": {}}, ref="2", join_ref="2"), T0)
    assert effects == [
        UnsubscribePostgres(TOPIC),
        Send(reply(TOPIC, {"status": "ok", "response": {"postgres_changes": []}}, "2", "2")),
        Subscribe(STREAM, TOPIC),
        close_of(TOPIC, "1"),
    ]
    assert s.postgres_ready(TOPIC, "1", None, T0) == []  # the replaced join's late answer


def test_leaving_a_waiting_join_drops_its_subscriptions() -> None:
    s = make_session()
    s.receive(wait_join(), T0)
    effects = s.receive(Message(TOPIC, "phx_leave", {}, ref="2", join_ref="1"), T0)
    assert effects == [UnsubscribePostgres(TOPIC), Send(reply(TOPIC, {"status": "ok", "response": {}}, "2", "1")),
                       close_of(TOPIC, "1")]
    assert s.postgres_ready(TOPIC, "1", None, T0) == []


def test_socket_closed_during_the_wait_drops_its_subscriptions() -> None:
    s = make_session()
    s.receive(wait_join(), T0)
    assert s.closed() == [UnsubscribePostgres(TOPIC)]


def test_private_wait_join_waits_after_the_read_check_and_keeps_its_replay() -> None:
    s = make_session(SessionConfig(private_allowed=True))
    effects = s.receive(wait_join(private=True, broadcast={"replay": {"since": 1, "limit": 5}}), T0)
    assert effects == [Authorize(TOPIC, "1", "join", "room1", claims_of(CONN_TOKEN), (BROADCAST_READ,), (1, 5))]
    replayed = (ReplayedMessage("m1", "ev", b'{"a":1}', None),)
    assert s.authorized(TOPIC, "1", "join", AuthResult({BROADCAST_READ: True}, replayed), T0) == [awaiting()]
    effects = s.postgres_ready(TOPIC, "1", None, T0)
    assert effects[0] == ok_reply()
    assert effects[1] == Subscribe("priv:room1", TOPIC, frozenset({"m1"}))
    replay = effects[2]
    assert isinstance(replay, Send) and replay.message.payload["meta"] == {"replayed": True, "id": "m1"}
    assert effects[3:] == [subscribed()]


def test_private_wait_join_refused_by_the_read_check_never_subscribes() -> None:
    s = make_session(SessionConfig(private_allowed=True))
    s.receive(wait_join(private=True), T0)
    effects = s.authorized(TOPIC, "1", "join", AuthResult({BROADCAST_READ: False}), T0)
    assert effects == [join_error(errors.Unauthorized("room1").reason)]


def test_token_refresh_after_a_wait_join_resubscribes_as_usual() -> None:
    s = make_session()
    s.receive(wait_join(), T0)
    s.postgres_ready(TOPIC, "1", None, T0)
    user = token(600, role="authenticated", sub="u")
    effects = s.receive(access_token_msg(user), T0)
    assert effects == [SubscribePostgres(TOPIC, "1", ECHO, claims_of(user), snapshot=False)]
