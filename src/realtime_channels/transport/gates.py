"""``authorize_join`` / ``authorize_send`` function gates, applied to a socket's frames before
the session sees them: deny (reply with the reason), rewrite the payload, or let it through.
Awaited in the read loop, so a socket's frames keep their order."""

from __future__ import annotations

import time
from typing import Any, Protocol

import orjson

from .. import errors
from ..node import Gatekeeper
from ..protocol import session as s
from ..protocol.codec import BinaryBroadcastPush, Message
from ..protocol.join import parse_join
from ..protocol.keys import TOPIC_PREFIX


class Gated(Protocol):
    @property
    def session(self) -> s.Session: ...

    def send(self, msg: Message) -> None: ...


def gated_send(msg: Message | BinaryBroadcastPush) -> tuple[str | None, Any]:
    """(user event, payload) of a client broadcast push; (None, None) for any other frame."""
    if isinstance(msg, BinaryBroadcastPush):
        return msg.event, (msg.data if msg.binary else orjson.loads(msg.data))
    if msg.event != "broadcast" or not isinstance(msg.payload, dict):
        return None, None
    event = msg.payload.get("event")
    return (event if isinstance(event, str) else None), msg.payload.get("payload")


async def gate(conn: Gated, keeper: Gatekeeper,
               msg: Message | BinaryBroadcastPush) -> Message | BinaryBroadcastPush | None:
    sub = msg.topic[len(TOPIC_PREFIX):]
    if isinstance(msg, Message) and msg.event == "phx_join" and msg.topic.startswith(TOPIC_PREFIX):
        if not keeper.has_gate("authorize_join", sub):
            return msg
        claims = _join_claims(conn, msg)
        if claims is None:
            return msg  # the session refuses the token with the protocol's own error
        config = msg.payload.get("config") if isinstance(msg.payload, dict) else None
        res = await keeper.gate_join(sub, claims, config if isinstance(config, dict) else {})
        if not res.allow:
            conn.send(s.reply(msg, s.error_payload({"reason": res.reason or errors.JoinDenied().message}), msg.join_ref))
            return None
        return msg
    ch = conn.session.channels.get(msg.topic)
    event, data = gated_send(msg)
    if ch is None or event is None or not keeper.has_gate("authorize_send", sub, event):
        return msg
    res = await keeper.gate_send(sub, event, data, ch.claims)
    if not res.allow:
        conn.send(s.reply(msg, s.error_payload({"reason": res.reason or errors.SendDenied().message}), ch.join_ref))
        return None
    if res.payload is None:
        return msg
    if isinstance(msg, BinaryBroadcastPush):
        return BinaryBroadcastPush(msg.join_ref, msg.ref, msg.topic, event, None, orjson.dumps(res.payload), False)
    payload = {**msg.payload, "payload": res.payload}
    return Message(msg.topic, msg.event, payload, ref=msg.ref, join_ref=msg.join_ref)


def _join_claims(conn: Gated, msg: Message) -> dict[str, Any] | None:
    """The claims the session will verify this join with (from the claims cache)."""
    token = parse_join(msg.payload).access_token or conn.session.conn_token
    try:
        return conn.session.verify(token, time.time())
    except errors.RealtimeError:
        return None
