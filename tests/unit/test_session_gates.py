"""Function gates as session effects (protocol/session.py): a gated join or send is parked, the
adapter runs the gates and answers with ``Session.gated``; pushes that arrive meanwhile wait in
order; a denial carries the gate's reason; a rewrite replaces the user payload."""

from __future__ import annotations

from typing import Any

import orjson

from realtime_channels.auth import JwtVerifier, mint_token
from realtime_channels.protocol.codec import BinaryBroadcastPush, Broadcast, Message
from realtime_channels.protocol.session import (
    GATE_JOIN,
    GATE_SEND,
    GateJoin,
    GateSend,
    GateVerdict,
    Publish,
    Send,
    Session,
    Subscribe,
)

SECRET = "session-gates-unit-test-secret-of-32-chars"
T0 = 1_700_000_000.0
TOPIC = "realtime:vault:1"
TOKEN = mint_token(SECRET, "authenticated", now=T0, exp_seconds=3600, claims={"sub": "u1"})


def session(join_gate: bool = True, send_gate: bool = True) -> Session:
    def gates(kind: str, sub_topic: str, event: str | None) -> bool:
        if kind == "authorize_join":
            return join_gate and sub_topic.startswith("vault:")
        return send_gate and event == "chat"

    return Session(verify=JwtVerifier(SECRET).verify, conn_token=TOKEN, new_presence_key=lambda: "k",
                   gates=gates)


def join(ref: str = "1", **config: Any) -> Message:
    return Message(TOPIC, "phx_join", {"config": config}, ref=ref, join_ref=ref)


def chat(text: str, ref: str = "5", event: str = "chat") -> Message:
    return Message(TOPIC, "broadcast", {"type": "broadcast", "event": event, "payload": {"text": text}},
                   ref=ref, join_ref="1")


def sent(effects: list[Any]) -> list[Message]:
    return [e.message for e in effects if isinstance(e, Send)]


def test_a_gated_join_waits_for_the_verdict_with_verified_claims_and_its_config() -> None:
    s = session()
    [gate] = s.receive(join(broadcast={"self": True}), T0)
    assert gate == GateJoin(TOPIC, "1", "vault:1", JwtVerifier(SECRET).verify(TOKEN, T0), {"broadcast": {"self": True}})
    assert s.receive(chat("early"), T0) == []  # queued behind the gates' answer
    effects = s.gated(TOPIC, "1", GATE_JOIN, GateVerdict(True), T0)
    assert sent(effects)[0].payload == {"status": "ok", "response": {"postgres_changes": []}}
    assert Subscribe("pub:vault:1", TOPIC) in effects
    # the queued broadcast is handled after the join: now it asks the send gate
    assert effects[-1] == GateSend(TOPIC, "1", "vault:1", "chat", {"text": "early"}, gate.claims)


def test_a_denied_join_replies_with_the_gates_reason_at_once() -> None:
    s = session(send_gate=False)
    s.receive(join(), T0)
    s.receive(chat("early"), T0)
    effects = s.gated(TOPIC, "1", GATE_JOIN, GateVerdict(False, "not allowed on vault:1"), T0)
    deny, unmatched = sent(effects)
    assert deny == Message(TOPIC, "phx_reply", {"status": "error", "response": {"reason": "not allowed on vault:1"}},
                           ref="1", join_ref="1")
    assert all(not isinstance(e, Send) or e.delay == 0 for e in effects)
    assert unmatched.payload == {"status": "error", "response": {"reason": "unmatched topic"}}
    assert TOPIC not in s.channels and TOPIC not in s.joining
    # without a reason of its own, the gate's denial says so
    s.receive(join("2"), T0)
    [deny] = sent(s.gated(TOPIC, "2", GATE_JOIN, GateVerdict(False), T0))
    assert deny.payload["response"] == {"reason": "Unauthorized: join denied"}


def test_a_stale_or_repeated_verdict_is_ignored() -> None:
    s = session()
    s.receive(join(), T0)
    assert s.gated(TOPIC, "other", GATE_JOIN, GateVerdict(True), T0) == []
    assert s.gated(TOPIC, "1", GATE_JOIN, GateVerdict(True), T0) != []
    assert s.gated(TOPIC, "1", GATE_JOIN, GateVerdict(True), T0) == []


def test_a_send_gate_rewrites_and_keeps_later_pushes_in_order() -> None:
    s = session(join_gate=False)
    s.receive(join(), T0)
    [gate] = s.receive(chat("darn it"), T0)
    assert isinstance(gate, GateSend) and gate.payload == {"text": "darn it"}
    assert s.receive(chat("ungated", ref="6", event="note"), T0) == []  # waits behind the first
    effects = s.gated(TOPIC, "1", GATE_SEND, GateVerdict(True, payload={"text": "**** it"}), T0)
    publishes = [e for e in effects if isinstance(e, Publish)]
    assert [p.broadcast.payload["payload"] for p in publishes if p.broadcast.payload] == [
        {"text": "**** it"}, {"text": "ungated"}]
    assert publishes[0].broadcast.payload == {"type": "broadcast", "event": "chat", "payload": {"text": "**** it"}}


def test_a_denied_send_is_answered_with_the_reason_and_not_published() -> None:
    s = session(join_gate=False)
    s.receive(join(), T0)
    s.receive(chat("spam"), T0)
    effects = s.gated(TOPIC, "1", GATE_SEND, GateVerdict(False, "no spam"), T0)
    assert not [e for e in effects if isinstance(e, Publish)]
    [deny] = sent(effects)
    assert deny == Message(TOPIC, "phx_reply", {"status": "error", "response": {"reason": "no spam"}},
                           ref="5", join_ref="1")


def test_a_binary_broadcast_rewritten_by_a_gate_becomes_json() -> None:
    s = session(join_gate=False)
    s.receive(join(), T0)
    push = BinaryBroadcastPush("1", "7", TOPIC, "chat", None, b"\x01\x02", True)
    [gate] = s.receive(push, T0)
    assert isinstance(gate, GateSend) and gate.payload == b"\x01\x02"
    [publish] = s.gated(TOPIC, "1", GATE_SEND, GateVerdict(True, payload={"n": 1}), T0)
    assert isinstance(publish, Publish)
    assert publish.broadcast == Broadcast(TOPIC, event="chat", data=orjson.dumps({"n": 1}), binary=False)


def test_ungated_topics_and_events_never_wait() -> None:
    s = session()
    effects = s.receive(Message("realtime:room", "phx_join", {"config": {}}, ref="1", join_ref="1"), T0)
    assert sent(effects)[0].payload["status"] == "ok"
    plain = Message("realtime:room", "broadcast", {"type": "broadcast", "event": "note", "payload": {}},
                    ref="2", join_ref="1")
    assert [type(e) for e in s.receive(plain, T0)] == [Publish]
