"""Persisted broadcasts in the sans-I/O session (protocol.md §4.9): kind-3 ``persist`` metadata
becomes a ``Persist`` effect carrying the publish that follows the insert; the adapter's
``persisted`` answer sends the ack or the ``UnableToPersistMessage`` error, and pushes behind it
wait for it."""

from __future__ import annotations

from typing import Any

import pytest
from test_session import CONN_TOKEN, OK, TOPIC, binary_push, claims_of, join_msg, joined, make_session, reply

from realtime_channels import errors
from realtime_channels.protocol.codec import Broadcast, persist_ttl
from realtime_channels.protocol.session import (
    BROADCAST_READ,
    BROADCAST_WRITE,
    GATE_SEND,
    AuthResult,
    Authorize,
    GateSend,
    GateVerdict,
    Persist,
    PersistResult,
    Publish,
    Send,
    Session,
    SessionConfig,
)

T0 = 1_700_000_000.0
PRIV = "priv:room1"
DATA = b'{"x":1}'


def err(e: errors.RealtimeError, ref: str = "4") -> Send:
    return Send(reply(TOPIC, {"status": "error", "response": e.response}, ref, "1"))


def private_session(**broadcast: Any) -> Session:
    s = make_session(SessionConfig(private_allowed=True))
    s.receive(join_msg(private=True, broadcast=broadcast), T0)
    s.authorized(TOPIC, "1", "join", AuthResult({BROADCAST_READ: True}), T0)
    return s


def persist_effect(ttl: int | None = None, data: bytes = DATA, binary: bool = False) -> Persist:
    publish = Publish(PRIV, Broadcast(TOPIC, event="cursor", data=data, binary=binary), TOPIC)
    return Persist(TOPIC, "1", "room1", claims_of(CONN_TOKEN), "cursor", data, binary, ttl, publish)


@pytest.mark.parametrize(("metadata", "expected"), [
    (None, (False, None)), ({}, (False, None)), ({"persist": False}, (False, None)),
    ({"persist": None}, (False, None)), ({"persist": True}, (True, None)), ({"persist": {}}, (True, None)),
    ({"persist": {"ttl": 1}}, (True, 1)), ({"persist": {"ttl": 2_147_483_647}}, (True, 2_147_483_647)),
])
def test_persist_metadata(metadata: dict[str, Any] | None, expected: tuple[bool, int | None]) -> None:
    assert persist_ttl(metadata) == expected


@pytest.mark.parametrize("value", [
    1, "true", [], {"ttl": 0}, {"ttl": -1}, {"ttl": 1.5}, {"ttl": "60"}, {"ttl": True}, {"ttl": 2_147_483_648}])
def test_bad_persist_metadata(value: Any) -> None:
    with pytest.raises(ValueError):
        persist_ttl({"persist": value})


def test_persisted_broadcast_waits_for_the_write_check_then_the_insert() -> None:
    s = private_session(ack=True)
    check = Authorize(TOPIC, "1", "write", "room1", claims_of(CONN_TOKEN), (BROADCAST_WRITE,))
    assert s.receive(binary_push(DATA, False, metadata={"persist": {"ttl": 30}}), T0) == [check]
    assert s.authorized(TOPIC, "1", "write", AuthResult({BROADCAST_WRITE: True}), T0) == [persist_effect(30)]
    # a later push waits behind the insert, in order
    assert s.receive(binary_push(b"{}", False, ref="5"), T0) == []
    after = Publish(PRIV, Broadcast(TOPIC, event="cursor", data=b"{}"), TOPIC)
    assert s.persisted(TOPIC, "1", PersistResult("row-1"), T0) == [
        Send(reply(TOPIC, OK, "4", "1")), after, Send(reply(TOPIC, OK, "5", "1"))]


def test_without_ack_a_stored_message_gets_no_reply() -> None:
    s = private_session()
    s.channels[TOPIC].rights[BROADCAST_WRITE] = True
    assert s.receive(binary_push(b"\x00", True, metadata={"persist": True}), T0) == [
        persist_effect(None, b"\x00", True)]
    assert s.persisted(TOPIC, "1", PersistResult("row-1"), T0) == []


@pytest.mark.parametrize("ack", [True, False])
def test_a_failed_insert_is_answered_with_unable_to_persist_whatever_ack(ack: bool) -> None:
    s = private_session(ack=ack)
    s.channels[TOPIC].rights[BROADCAST_WRITE] = True
    s.receive(binary_push(DATA, False, metadata={"persist": True}), T0)
    assert s.persisted(TOPIC, "1", PersistResult(denied=True), T0) == [err(errors.PersistDenied("room1"))]
    s.receive(binary_push(DATA, False, ref="5", metadata={"persist": True}), T0)
    assert s.persisted(TOPIC, "1", PersistResult(), T0) == [err(errors.PersistFailed(), "5")]
    assert errors.PersistFailed().response == {
        "error": "UnableToPersistMessage: The message could not be stored",
        "reason": "UnableToPersistMessage: The message could not be stored"}


def test_persist_on_a_public_channel_or_with_a_bad_ttl_is_refused() -> None:
    s = joined(broadcast={"ack": True})
    assert s.receive(binary_push(DATA, False, metadata={"persist": True}), T0) == [err(errors.PersistNotPrivate())]
    p = private_session()
    bad = binary_push(DATA, False, metadata={"persist": {"ttl": 0}})
    assert p.receive(bad, T0) == [err(errors.PersistParamsInvalid())]  # before any policy check


def test_an_answer_for_a_channel_that_left_is_ignored() -> None:
    s = private_session(ack=True)
    s.channels[TOPIC].rights[BROADCAST_WRITE] = True
    s.receive(binary_push(DATA, False, metadata={"persist": True}), T0)
    s.receive(join_msg(private=True, ref="6", join_ref="6"), T0)  # rejoined: a new join_ref
    assert s.persisted(TOPIC, "1", PersistResult("row-1"), T0) == []


def test_a_send_gate_rewrite_keeps_the_persist_request() -> None:
    s = make_session(SessionConfig(private_allowed=True))
    s.gates = lambda kind, sub_topic, event: kind == "authorize_send"
    s.receive(join_msg(private=True), T0)
    s.authorized(TOPIC, "1", "join", AuthResult({BROADCAST_READ: True}), T0)
    s.channels[TOPIC].rights[BROADCAST_WRITE] = True
    [gate] = s.receive(binary_push(DATA, False, metadata={"persist": {"ttl": 5}}), T0)
    assert isinstance(gate, GateSend)
    assert s.gated(TOPIC, "1", GATE_SEND, GateVerdict(True, payload={"y": 2}), T0) == [
        persist_effect(5, b'{"y":2}')]
