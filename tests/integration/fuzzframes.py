"""Seeded hostile frames for tests/integration/test_frame_fuzzer.py (protocol.md §1.5, §1.6).

Every input starts as a valid frame (heartbeat, join, broadcast, presence, access_token, leave, an
unknown event, a kind-3 push) and is mutated: fields of the wrong type or missing, huge strings,
unicode, nulls, negative and huge numbers, deep nesting, wrong arity, truncated or garbled text,
bytes that are not UTF-8, bad binary headers, random bytes.  What the server must answer is
fuzzverdict.py's business.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from rawclient import V1, V2, kind3

ANY = object()  # a wildcard: a join_ref not known, a field of an expected frame not predicted

# --- random values --------------------------------------------------------------------------

CHARS = ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _-:./!?\"\\'{}[],\t\n"
         "éüß中文😀\u0000\u001f\u007f\u2028\u202e\ufeff\uffff")
NUMBERS: tuple[Any, ...] = (0, -1, 1, 7, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63) - 1,
                            10**30, -(10**40), 10**308, 10**400, 1.5, -0.0, 1e308, 5e-324, -2.5e-7)
EVENTS = ("phx_join", "phx_leave", "broadcast", "presence", "access_token", "heartbeat", "PHX_JOIN",
          "Broadcast", "custom", "", "phx_reply", "phx_close", "presence_state", "system")


def rstr(rng: random.Random) -> str:
    roll = rng.random()
    n = rng.randint(20_000, 70_000) if roll < 0.01 else rng.randint(256, 400) if roll < 0.05 else rng.randint(0, 12)
    if n > 1000:  # a random kilobyte, repeated: as hostile to the server, cheaper to make
        return ("".join(rng.choices(CHARS, k=1000)) * (n // 1000 + 1))[:n]
    return "".join(rng.choices(CHARS, k=n))


def deep(rng: random.Random, depth: int) -> Any:
    value: Any = rng.choice([[], {}, 1, "x", None])
    for _ in range(depth - 1):
        value = [value] if rng.random() < 0.5 else {"k": value}
    return value


def rvalue(rng: random.Random, level: int = 0) -> Any:
    roll = rng.random()
    if roll < 0.02:
        return deep(rng, rng.choice([126, 127, 128, 129, 130, 200, 600, 2000]))
    if roll < 0.17 and level < 3:
        return [rvalue(rng, level + 1) for _ in range(rng.randint(0, 4))]
    if roll < 0.32 and level < 3:
        return {rstr(rng): rvalue(rng, level + 1) for _ in range(rng.randint(0, 4))}
    return rng.choice([None, True, False, rng.choice(NUMBERS), rstr(rng), rstr(rng), rng.randint(-999, 999)])


def rbytes(rng: random.Random, n: int) -> bytes:
    return bytes(rng.getrandbits(8) for _ in range(n))



@contextmanager
def deep_recursion() -> Iterator[None]:
    """The standard library's JSON recurses once per level; the deepest inputs have 2,000."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)


# --- inputs ----------------------------------------------------------------------------------


@dataclass
class State:
    """What the server told this socket: the joined topics and their join_refs."""

    topics: list[str]
    tokens: list[Any]
    joined: dict[str, Any] = field(default_factory=dict)
    stale_close: set[str] = field(default_factory=set)


@dataclass
class Input:
    data: str | bytes
    binary: bool  # a binary frame (else text; ``bytes`` text is sent unchecked, §1.5)
    topic: Any = None
    event: Any = None
    ref: Any = None
    join_ref: Any = None


def _template(rng: random.Random, state: State) -> dict[str, Any]:
    topic = rng.choice(state.topics)
    token = rng.choice(state.tokens)
    kind = rng.choice(["heartbeat", "join", "join", "broadcast", "broadcast", "presence", "access_token",
                       "leave", "custom"])
    payloads: dict[str, tuple[str, Any]] = {
        "heartbeat": ("heartbeat", {}),
        "join": ("phx_join", {"config": {"broadcast": {"self": rng.random() < 0.5, "ack": rng.random() < 0.7},
                                         "presence": {"key": rstr(rng), "enabled": rng.random() < 0.5},
                                         "postgres_changes": [], "private": False},
                              "access_token": token}),
        "broadcast": ("broadcast", {"type": "broadcast", "event": "e", "payload": {"x": rvalue(rng)}}),
        "presence": ("presence", {"type": "presence", "event": rng.choice(["track", "untrack", "TRACK"]),
                                  "payload": {"m": rvalue(rng)}}),
        "access_token": ("access_token", {"access_token": token}),
        "leave": ("phx_leave", {}),
        "custom": ("custom", {"a": rvalue(rng)}),
    }
    event, payload = payloads[kind]
    jr = state.joined.get(topic) if rng.random() < 0.8 else rng.choice([None, "999", rstr(rng)])
    jr = None if jr is ANY else jr
    return {"topic": "phoenix" if kind == "heartbeat" else topic, "event": event, "payload": payload,
            "ref": f"r{rng.getrandbits(32)}", "join_ref": jr}


def _mutate_payload(rng: random.Random, payload: Any) -> Any:
    """Set or drop a value at a random path inside the payload."""
    if not isinstance(payload, (dict, list)) or not payload or rng.random() < 0.2:
        return rvalue(rng)
    key = rng.choice(list(payload)) if isinstance(payload, dict) else rng.randrange(len(payload))
    if rng.random() < 0.25:
        del payload[key]
    else:
        payload[key] = _mutate_payload(rng, payload[key])
    return payload


def text_input(rng: random.Random, vsn: str, state: State) -> Input:
    msg = _template(rng, state)
    for _ in range(rng.choice([0, 1, 1, 2, 3])):
        op = rng.random()
        if op < 0.35:
            msg["payload"] = _mutate_payload(rng, msg.get("payload"))
        elif op < 0.5:
            msg["event"] = rng.choice(EVENTS) if rng.random() < 0.8 else rvalue(rng)
        elif op < 0.62:
            msg["topic"] = rng.choice(["realtime:", "phoenix", f"realtime:{rstr(rng)}", rstr(rng), rvalue(rng)])
        elif op < 0.8:
            msg[rng.choice(["ref", "join_ref", "topic", "event", "payload"])] = rvalue(rng)
        else:
            msg.pop(rng.choice(["ref", "join_ref", "topic", "event", "payload"]), None)
    value: Any
    if vsn == V1 and rng.random() > 0.05:
        value = msg
    else:
        value = [msg.get(k) for k in ("join_ref", "ref", "topic", "event", "payload")]
        if rng.random() < 0.1:
            value = value[: rng.randint(0, 4)] if rng.random() < 0.5 else value + [rvalue(rng)]
        if vsn == V2 and rng.random() < 0.04:
            value = msg  # a V1 object on a V2 socket
    with deep_recursion():
        text = json.dumps(value, ensure_ascii=rng.random() < 0.5)
    data: str | bytes = text
    roll = rng.random()
    if roll < 0.03:
        raw = text.encode()
        at = rng.randrange(len(raw) + 1)
        data = raw[:at] + rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"]) + raw[at:]
    elif roll < 0.13:
        at = rng.randrange(len(text) + 1)
        data = rng.choice([text[:at], text[:at] + rng.choice(CHARS) + text[at:], text[:at] + text[at + 1:],
                           "\ufeff" + text, text + rng.choice(["]", "}", ",", "x"]), rstr(rng)])
    return Input(data, False, msg.get("topic"), msg.get("event"), msg.get("ref"), msg.get("join_ref"))


def join_input(rng: random.Random, state: State) -> Input:
    """A valid V2 join of a topic of the pool (``self`` and ``ack`` at random), or its leave."""
    topic, ref = rng.choice(state.topics), f"j{rng.getrandbits(32)}"
    if topic in state.joined and rng.random() < 0.3:
        return Input(json.dumps([state.joined[topic], ref, topic, "phx_leave", {}]), False, topic, "phx_leave", ref)
    config = {"broadcast": {"self": rng.random() < 0.5, "ack": rng.random() < 0.7}}
    return Input(json.dumps([ref, ref, topic, "phx_join", {"config": config}]), False, topic, "phx_join", ref, ref)


def binary_input(rng: random.Random, state: State) -> Input:
    """A kind-3 push (§1.6) to mutate, or bytes of any kind."""
    topic = rng.choice(state.topics)
    jr = state.joined.get(topic)
    ref = f"b{rng.getrandbits(24)}" if rng.random() < 0.9 else ""
    encoding = rng.choice([0, 1, 1])
    with deep_recursion():
        payload = json.dumps({"x": rvalue(rng)}).encode() if encoding else rbytes(rng, rng.randint(0, 64))
        meta = rng.choice([b"", b"", b"{}", b'{"persist":true}', b"[]", b"nul", json.dumps(rvalue(rng)).encode()[:255]])
    data = bytearray(kind3(jr if isinstance(jr, str) else None, ref, topic, rng.choice(["e", rstr(rng)[:60]]),
                           payload, encoding, meta))
    for _ in range(rng.choice([0, 0, 1, 2])):
        op = rng.random() if len(data) >= 7 else 0.95
        if op < 0.15:
            data[0] = rng.getrandbits(8)  # another kind
        elif op < 0.3:
            data[6] = rng.choice([2, 3, 255])  # unknown encoding
        elif op < 0.5:
            i = rng.randint(1, 5)
            data[i] = max(0, min(255, data[i] + rng.choice([-3, -1, 1, 2, 40])))  # lengths that lie
        elif op < 0.65:
            del data[rng.randrange(len(data) + 1):]  # truncated
        elif op < 0.8:
            at = rng.randrange(7, len(data) + 1)
            data[at:at] = rng.choice([b"\xff", b"\xc3", rbytes(rng, rng.randint(1, 8))])
        elif op < 0.9:
            with deep_recursion():
                data[7 + sum(data[1:6]):] = json.dumps(deep(rng, rng.choice([127, 128, 129, 300, 2000]))).encode()
        else:
            data = bytearray(rbytes(rng, rng.randint(0, 40)))
    return Input(bytes(data), True)
