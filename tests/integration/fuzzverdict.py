"""What the wire contract says the server must do with each fuzzed input (protocol.md §1.5,
§1.6, §2.4), read by hand from the input — not with the server's codec:

- ``IGNORE``: nothing at all (undecodable, wrong shape, an unknown event on a joined channel…);
- ``EXACT``: exactly these frames (heartbeat reply, ``unmatched topic``, the too-deep refusal, a leave);
- ``FREE``: anything the protocol allows for that topic (a join, a broadcast, a track…): every frame
  concerns the input's topic, replies carry its ref, and every error text is a documented one;
- ``CLOSE``: the socket is closed with 1007 (a text frame that is not UTF-8, §2.3).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rawclient import V1, V2
from fuzzframes import ANY, Input, State, deep_recursion

DOCS = Path(__file__).resolve().parents[2] / "docs"
MAX_DEPTH = 128  # protocol.md §2.4
TOO_DEEP = {"status": "error", "response": {"reason": "payload nested more than 128 levels deep"}}
OK = {"status": "ok", "response": {}}
UNMATCHED = {"status": "error", "response": {"reason": "unmatched topic"}}

IGNORE, EXACT, FREE, CLOSE = "ignore", "exact", "free", "close"

# --- the documented error texts (docs/error-codes.md) --------------------------------------


def _table(section: str) -> list[str]:
    """The second column of the table under ``## <section>``, code spans unwrapped."""
    text = (DOCS / "error-codes.md").read_text(encoding="utf-8")
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    cells = []
    for line in body.splitlines():
        if not line.startswith("| ") or line.startswith(("| Code ", "|---")):
            continue
        cell = line.strip().strip("|").split(" | ")[1].strip()
        cells.append(cell[3:-3] if cell.startswith("`` ") else cell[1:-1])
    assert cells, section
    return cells


def _pattern(text: str) -> re.Pattern[str]:
    parts = re.split(r"(<[a-zA-Z-]+>)", text)
    regex = "".join(r"\d+" if p == "<N>" else ".*" if p.startswith("<") else re.escape(p) for p in parts)
    return re.compile(regex, re.S)


@dataclass(frozen=True)
class Vocabulary:
    join: tuple[re.Pattern[str], ...]
    push: tuple[Any, ...]
    shutdown: tuple[re.Pattern[str], ...]
    postgres: tuple[re.Pattern[str], ...]

    @staticmethod
    def load() -> Vocabulary:
        push = tuple(json.loads(cell) for cell in _table("Push replies"))
        return Vocabulary(
            join=tuple(_pattern(t) for t in _table("Join replies")),
            # §5.1: an unknown presence event is answered with an empty error response
            push=(*push, {}),
            shutdown=tuple(_pattern(t) for t in _table("Channel shut down")),
            postgres=tuple(_pattern(t) for t in _table("postgres_changes subscriptions")),
        )

    def join_reason(self, reason: Any) -> bool:
        return isinstance(reason, str) and any(p.fullmatch(reason) for p in self.join)

    def push_response(self, response: Any) -> bool:
        return response in self.push

    def system(self, payload: Any) -> bool:
        if not isinstance(payload, dict) or set(payload) != {"extension", "status", "message", "channel"}:
            return False
        table = {"system": self.shutdown, "postgres_changes": self.postgres}.get(payload["extension"])
        return payload["status"] == "error" and table is not None and any(
            p.fullmatch(payload["message"]) for p in table)


#: Python exception text: never on the wire (none of the fuzzer's strings can spell it)
EXCEPTION_TEXT = re.compile(
    r"Traceback|File \"|\w(Error|Exception)\(|\b(KeyError|TypeError|ValueError|AttributeError|IndexError"
    r"|RecursionError|UnicodeDecodeError|UnicodeEncodeError|JSONDecodeError|JSONEncodeError|OverflowError"
    r"|AssertionError|RuntimeError|ZeroDivisionError|NameError|NotImplementedError)\b")


# --- strict JSON, as RFC 8259 and §2.4 read it ------------------------------------------------


class NotJson(ValueError):
    pass


def _number(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> Any:
        if math.isinf(float(text)):  # a number beyond a double's range is not accepted (§2.4)
            raise NotJson(text[:20])
        return kind(text)

    return parse


def _reject(name: str) -> Any:
    raise NotJson(name)  # NaN, Infinity, -Infinity are not JSON


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def bracket_depth(data: bytes) -> int:
    """How deep the arrays and objects of ``data`` nest, read as far as it goes, valid or not."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            escaped, in_string = (False, True) if escaped else (byte == 0x5C, byte != 0x22)
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def strict_json(text: str | bytes) -> tuple[Any, int]:
    """The value and its nesting depth (objects and arrays); ``NotJson`` if it is not JSON."""
    try:
        # bytes are UTF-8 or nothing: no BOM, no UTF-16 guessing
        text = text.decode("utf-8") if isinstance(text, bytes) else text
        with deep_recursion():
            value = json.loads(text, parse_constant=_reject, parse_float=_number(float), parse_int=_number(int))
    except (ValueError, RecursionError) as exc:
        raise NotJson(str(exc)) from None
    depth, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")  # a lone surrogate escape is not a character
            except UnicodeEncodeError:
                raise NotJson("lone surrogate") from None
        elif isinstance(item, (list, dict)):
            depth = max(depth, level)
            children = list(item.items()) if isinstance(item, dict) else item
            for child in children:
                if isinstance(child, tuple):
                    stack.append((child[0], level))
                    stack.append((child[1], level + 1))
                else:
                    stack.append((child, level + 1))
    return value, depth


# --- what must come back -------------------------------------------------------------------


@dataclass
class Verdict:
    kind: str
    frames: list[Any] = field(default_factory=list)  # EXACT: the decoded frames, in order
    topic: Any = None  # FREE: the topic every frame concerns
    ref: Any = None  # FREE: the ref every reply carries (``ANY`` when not predictable)
    join: bool = False  # FREE: a join, answered by one reply (exactly one when its ref is a string)
    join_ref: Any = None  # a join's join_ref (``ANY`` when it is not a string)
    or_nothing: bool = False  # EXACT: nothing at all is right too


def _wire(vsn: str, join_ref: Any, ref: Any, topic: str, event: str, payload: Any) -> Any:
    if vsn == V2:
        return [join_ref, ref, topic, event, payload]
    return {"topic": topic, "event": event, "payload": payload, "ref": ref}


def _fields(vsn: str, value: Any) -> tuple[Any, Any, Any, Any, Any] | None:
    """(join_ref, ref, topic, event, payload) of a frame of the right shape (§1.5), else None."""
    if vsn == V1:
        if not isinstance(value, dict) or not {"topic", "event", "payload", "ref"} <= set(value):
            return None
        fields = (value.get("join_ref"), value["ref"], value["topic"], value["event"], value["payload"])
    else:
        if not isinstance(value, list) or len(value) < 5:
            return None
        fields = (value[0], value[1], value[2], value[3], value[4])
    jr, ref, topic, event, _ = fields
    refs_ok = all(r is None or isinstance(r, (str, int, float)) and not isinstance(r, bool) for r in (jr, ref))
    return fields if refs_ok and isinstance(topic, str) and isinstance(event, str) else None


def _readable(vsn: str, value: Any) -> tuple[str | None, str, str] | None:
    """(join_ref, ref, topic) of a frame nested too deeply, when its topic and ref are strings."""
    if vsn == V1 and isinstance(value, dict):
        jr, ref, topic = value.get("join_ref"), value.get("ref"), value.get("topic")
    elif vsn == V2 and isinstance(value, list) and len(value) >= 3:
        jr, ref, topic = value[0], value[1], value[2]
    else:
        return None
    if not isinstance(ref, str) or not isinstance(topic, str):
        return None
    return (jr if isinstance(jr, str) else None), ref, topic


def text_verdict(vsn: str, inp: Input, state: State) -> Verdict:
    data = inp.data
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            return Verdict(CLOSE)
    try:
        value, depth = strict_json(data)
    except NotJson:
        return Verdict(IGNORE)
    if depth > MAX_DEPTH:  # refused whatever its shape; answered when its topic and ref can be read
        readable = _readable(vsn, value) if depth <= 1024 else None  # nothing is read past 1,024 levels
        if readable is None:
            return Verdict(IGNORE)
        jr, ref, topic = readable
        return Verdict(EXACT, [_wire(vsn, jr, ref, topic, "phx_reply", TOO_DEEP)])
    fields = _fields(vsn, value)
    if fields is None:
        return Verdict(IGNORE)
    jr, ref, topic, event, payload = fields
    join = event == "phx_join" and topic.startswith("realtime:")
    if not all(r is None or isinstance(r, str) for r in (jr, ref)):
        # refs are strings (§1.5); what a number becomes is left open
        return Verdict(FREE, topic=topic, ref=ANY, join=join, join_ref=jr if jr is None or isinstance(jr, str) else ANY)
    if topic == "phoenix" and event == "heartbeat":
        return Verdict(EXACT, [_wire(vsn, None, ref, topic, "phx_reply", OK)])
    if event == "phx_join":
        if not topic.startswith("realtime:"):
            return Verdict(EXACT, [_wire(vsn, None, ref, topic, "phx_reply", UNMATCHED)])
        return Verdict(FREE, topic=topic, ref=ref, join=True, join_ref=jr)
    joined, current = topic in state.joined, state.joined.get(topic)
    if event == "phx_leave":
        if not joined or (current is not ANY and jr is not None and jr != current):  # or an older join's
            return Verdict(EXACT, [_wire(vsn, ANY, ref, topic, "phx_reply", OK)])
        if current is ANY:  # joined with a number for join_ref
            return Verdict(FREE, topic=topic, ref=ref)
        return Verdict(EXACT, [_wire(vsn, current, ref, topic, "phx_reply", OK),
                               _wire(vsn, current, current, topic, "phx_close", {})])
    if not joined:
        return Verdict(EXACT, [_wire(vsn, None, ref, topic, "phx_reply", UNMATCHED)])
    if event == "broadcast":
        return Verdict(FREE, topic=topic, ref=ref) if isinstance(payload, dict) else Verdict(IGNORE)
    if event == "presence":
        return Verdict(FREE, topic=topic, ref=ref)
    if event == "access_token" and isinstance(payload, dict) and "access_token" in payload:
        token = payload["access_token"]
        if token is None or isinstance(token, str) and token.startswith("sb_"):
            return Verdict(IGNORE)  # §3.9: changes nothing
        return Verdict(FREE, topic=topic, ref=ref)
    return Verdict(IGNORE)  # §2.4: an event the channel does not know


def binary_verdict(vsn: str, inp: Input, state: State) -> Verdict:
    """§1.6 kind 3, read by hand; anything else binary is ignored (§2.4)."""
    data = inp.data
    assert isinstance(data, bytes)
    if vsn == V1 or len(data) < 7 or data[0] != 3 or data[6] not in (0, 1):
        return Verdict(IGNORE)
    lengths, pos, strings = data[1:6], 7, []
    if len(data) < 7 + sum(lengths):
        return Verdict(IGNORE)
    for n in lengths[:4]:
        try:
            strings.append(data[pos:pos + n].decode("utf-8"))
        except UnicodeDecodeError:
            return Verdict(IGNORE)
        pos += n
    jr, ref, topic, _event = (s or None for s in strings)
    topic = topic or ""
    meta, payload = data[pos:pos + lengths[4]], data[pos + lengths[4]:]
    try:
        if meta and not isinstance(strict_json(meta)[0], dict):
            return Verdict(IGNORE)
    except NotJson:
        return Verdict(IGNORE)  # meta is empty or a JSON object (§1.6)
    try:
        depth = strict_json(payload)[1] if data[6] == 1 else 0
    except NotJson:
        # §4.1: a JSON payload that is not JSON is dropped; but the server reads no deeper than
        # 1,024 levels, so broken text that nests that deep may be refused as too deep instead
        if data[6] != 1 or not _utf8(payload) or bracket_depth(payload) <= 1024:
            return Verdict(IGNORE)
        if ref is None:
            return Verdict(IGNORE)
        return Verdict(EXACT, [[jr, ref, topic, "phx_reply", TOO_DEEP]], or_nothing=True)
    if depth > MAX_DEPTH:
        return Verdict(EXACT, [[jr, ref, topic, "phx_reply", TOO_DEEP]]) if ref is not None else Verdict(IGNORE)
    if topic not in state.joined:
        return Verdict(EXACT, [[None, ref, topic, "phx_reply", UNMATCHED]])
    return Verdict(FREE, topic=topic, ref=ref)


def verdict(vsn: str, inp: Input, state: State) -> Verdict:
    return binary_verdict(vsn, inp, state) if inp.binary else text_verdict(vsn, inp, state)
