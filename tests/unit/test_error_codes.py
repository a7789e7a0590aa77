"""The error vocabulary: docs/error-codes.md is generated from the tree and current, every text
a session sends a peer comes from an ``errors`` class listed for that place, and no module of
the protocol, messages, functions and auth layers spells a client-visible text itself."""

from __future__ import annotations

import ast
import inspect
import itertools
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from realtime_channels import errors
from realtime_channels.auth import JwtVerifier, mint_token
from realtime_channels.protocol.codec import Message
from realtime_channels.protocol.limits import TenantLimits
from realtime_channels.protocol.session import AuthResult, Close, Effect, Send, Session, SessionConfig

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "realtime_channels"
GENERATOR = ROOT / "scripts" / "gen_error_codes.py"
SCOPE = [*sorted((SRC / "protocol").glob("*.py")), *sorted((SRC / "messages").glob("*.py")),
         *sorted((SRC / "functions").glob("*.py")), *sorted((SRC / "auth").glob("*.py")),
         *sorted((SRC / "transport").glob("*.py")), SRC / "node.py"]

SECRET = "error-codes-unit-test-secret-of-32-chars!"
T0 = 1_700_000_000.0
TOPIC = "realtime:room1"


def tree() -> list[type[errors.RealtimeError]]:
    return [c for _, c in inspect.getmembers(errors, inspect.isclass)
            if issubclass(c, errors.RealtimeError) and c.__module__.startswith(errors.__name__ + ".")]


def leaves() -> list[type[errors.RealtimeError]]:
    classes = tree()
    return [c for c in classes if not any(o is not c and issubclass(o, c) for o in classes)]


def specimen(cls: type[errors.RealtimeError]) -> errors.RealtimeError:
    return cls.__new__(cls)


def pattern(text: str) -> re.Pattern[str]:
    """A class-level text with ``<placeholder>``s as a regular expression."""
    parts = re.split(r"<[^<>]+>", text)
    return re.compile(".+".join(re.escape(p) for p in parts) + r"\Z")


# --- the generated page ------------------------------------------------------------------


def run_generator(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(GENERATOR), *args], capture_output=True, text=True, timeout=60)


def test_error_codes_page_is_current() -> None:
    res = run_generator("--check")
    assert res.returncode == 0, res.stderr


def test_check_fails_on_a_stale_page(tmp_path: Path) -> None:
    page = tmp_path / "error-codes.md"
    assert run_generator("--output", str(page)).returncode == 0
    assert run_generator("--check", "--output", str(page)).returncode == 0
    page.write_text(page.read_text(encoding="utf-8").replace("Too many channels", "Too many chanels"), encoding="utf-8")
    res = run_generator("--check", "--output", str(page))
    assert res.returncode == 1
    assert "stale" in res.stderr


def test_page_lists_every_visible_error_and_the_join_back_off() -> None:
    page = (ROOT / "docs" / "error-codes.md").read_text(encoding="utf-8")
    for cls in leaves():
        if cls.where:
            assert specimen(cls).message in page, cls.__name__
    join_section = page.split("## Join replies", 1)[1].split("\n## ", 1)[0]
    assert "REALTIME_JOIN_ERROR_BACKOFF_MS" in join_section
    assert "5 s" in join_section and "timeout" in join_section


# --- the tree itself -----------------------------------------------------------------------


def test_every_peer_visible_class_says_where_and_why() -> None:
    for cls in tree():
        if cls in (errors.PeerError, errors.InternalError) or not issubclass(cls, errors.PeerError | errors.InternalError):
            continue
        assert cls.where, f"{cls.__name__} has no `where`"
        assert set(cls.where) <= {errors.JOIN_REPLY, errors.PUSH_REPLY, errors.SYSTEM, errors.CLOSE,
                                  errors.HANDSHAKE, errors.REST, errors.LOG, errors.POSTGRES_CHANGES}, cls.__name__
        assert cls.__doc__ and cls.__doc__ is not errors.RealtimeError.__doc__, f"{cls.__name__} has no docstring"
        assert (errors.CLOSE in cls.where) == (cls.close_code is not None and cls.close_reason is not None)


#: Classes whose text an adapter still sends as a string literal (``Session.shutdown`` accepts
#: one); once the adapter passes the class, the test below asks for its removal from here.
AWAITING_ADAPTER: set[str] = set()


def names_used_in_code() -> set[str]:
    """Every name and attribute referenced by the code of ``src`` (docstrings do not count)."""
    used: set[str] = set()
    for path in SRC.rglob("*.py"):
        if path.parent.name == "errors":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Name):
                used.add(node.id)
            elif isinstance(node, ast.Attribute):
                used.add(node.attr)
            elif isinstance(node, ast.alias):
                used.add(node.asname or node.name)
    return used


def test_every_leaf_class_is_used_by_the_code() -> None:
    used = names_used_in_code()
    unused = {c.__name__ for c in leaves() if c.__name__ not in used}
    assert unused == AWAITING_ADAPTER, "use or remove these classes; drop used ones from AWAITING_ADAPTER"


# --- no client-visible literal in the protocol, messages, functions and auth layers -------


def visible_texts() -> set[str]:
    """Every text of the tree a peer can see, and the fixed head of each templated one."""
    texts: set[str] = set()
    for cls in leaves():
        if not cls.where or cls.where == (errors.LOG,):
            continue
        err = specimen(cls)
        for text in (err.message, err.reason, err.handshake_error, cls.close_reason):
            if text:
                texts.add(text.split("<", 1)[0].strip())
    return {t for t in texts if len(t) >= 6}


def string_constants(path: Path) -> Iterator[tuple[int, str]]:
    module = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(n.body[0].value) for n in ast.walk(module)
                  if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    for node in ast.walk(module):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def test_no_client_visible_literal_outside_errors() -> None:
    texts = visible_texts()
    found = [f"{p.relative_to(ROOT)}:{line}: {value!r}" for p in SCOPE for line, value in string_constants(p)
             if any(value.startswith(t) for t in texts)]
    assert found == []


# --- every text a session sends comes from the tree, for the place it is sent -------------


def token(exp_seconds: float = 3600, now: float = T0) -> str:
    return mint_token(SECRET, "anon", now=now, exp_seconds=exp_seconds)


def session(limits: TenantLimits | None = None, **config: Any) -> Session:
    counter = itertools.count(1)
    return Session(verify=JwtVerifier(SECRET).verify, conn_token=token(), limits=limits,
                   new_presence_key=lambda: f"k{next(counter)}", config=SessionConfig(**config))


def join(topic: str = TOPIC, ref: str = "1", access_token: str | None = None, **cfg: Any) -> Message:
    payload: dict[str, Any] = {"config": cfg}
    if access_token is not None:
        payload["access_token"] = access_token
    return Message(topic, "phx_join", payload, ref=ref, join_ref=ref)


def push(event: str, payload: Any, ref: str = "5", topic: str = TOPIC) -> Message:
    return Message(topic, event, payload, ref=ref, join_ref="1")


def scenarios() -> Iterator[tuple[str, list[Effect]]]:
    s = session()
    yield "unmatched push", s.receive(push("broadcast", {"event": "x", "payload": {}}), T0)
    yield "unmatched join", session().receive(join("room1"), T0)
    yield "empty topic", session().receive(join("realtime:"), T0)
    yield "expired token", session().receive(join(access_token=token(-30)), T0)
    yield "malformed token", session().receive(join(access_token="potato"), T0)
    yield "private only", session(private_only=True).receive(join(), T0)
    yield "private refused", session().receive(join(private=True), T0)
    yield "replay public", session().receive(join(broadcast={"replay": {"since": 1}}), T0)
    s = session(private_allowed=True)
    yield "replay params", s.receive(join(private=True, broadcast={"replay": {"since": "x"}}), T0)
    s = session(max_channels=1)
    s.receive(join(), T0)
    yield "channel limit", s.receive(join("realtime:two", ref="2"), T0)
    storm = TenantLimits(max_joins_per_second=1)
    storm.remote_joins = 5
    yield "join rate", session(storm).receive(join(), T0)
    full = TenantLimits(max_concurrent_users=1)
    full.add_user()
    yield "users full", session(full).receive(join(), T0)
    s = session(max_payload_bytes=10)
    s.receive(join(broadcast={"ack": True}), T0)
    yield "oversize broadcast", s.receive(push("broadcast", {"event": "x", "payload": {}}), T0, size=11)
    yield "oversize track", s.receive(push("presence", {"event": "track", "payload": {}}), T0, size=11)
    s = session()
    s.receive(join(), T0)
    yield "track non-map", s.receive(push("presence", {"event": "track", "payload": [1]}), T0)
    s = session(presence_window_limit=1)
    s.receive(join(), T0)
    s.receive(push("presence", {"event": "track", "payload": {}}), T0)
    yield "presence window", s.receive(push("presence", {"event": "track", "payload": {}}), T0)
    busy = TenantLimits()
    s = session(busy)
    s.receive(join(), T0)
    busy.remote_events = busy.remote_presence = 1e9
    yield "event rate", s.receive(push("broadcast", {"event": "x", "payload": {}}), T0)
    s = session(busy)
    busy.remote_events = 0
    s.receive(join(), T0)
    yield "presence rate", s.receive(push("presence", {"event": "track", "payload": {}}), T0)
    s = session()
    s.receive(join(), T0)
    yield "refresh malformed", s.receive(push("access_token", {"access_token": "potato"}), T0)
    s = session()
    s.receive(join(access_token=token(10)), T0)
    yield "token expiry", s.tick(T0 + 20)
    s = session(private_allowed=True)
    s.receive(join(private=True), T0)
    s.authorized(TOPIC, "1", "join", AuthResult({"broadcast_read": True}), T0)
    s.receive(push("access_token", {"access_token": token(3000)}), T0)
    yield "refresh db error", s.authorized(TOPIC, "1", "refresh", AuthResult({}, error="db"), T0)
    for granted, name in (({"broadcast_read": False}, "refresh unauthorized"),):
        s = session(private_allowed=True)
        s.receive(join(private=True, presence={"enabled": True}), T0)
        s.authorized(TOPIC, "1", "join", AuthResult({"broadcast_read": True, "presence_read": True}), T0)
        s.receive(push("access_token", {"access_token": token(3000)}), T0)
        yield name, s.authorized(TOPIC, "1", "refresh", AuthResult(granted), T0)
    s = session(private_allowed=True)
    s.receive(join(private=True), T0)
    yield "join denied", s.authorized(TOPIC, "1", "join", AuthResult({"broadcast_read": False}), T0)


def sent_texts(effects: list[Effect]) -> Iterator[tuple[str, str]]:
    for e in effects:
        if isinstance(e, Close):
            yield errors.CLOSE, e.reason
        if not isinstance(e, Send):
            continue
        m, p = e.message, e.message.payload
        if m.event == "phx_reply" and p.get("status") == "error":
            place = errors.JOIN_REPLY if e.delay else errors.PUSH_REPLY  # join errors are delayed
            resp = p["response"]
            yield place, resp if isinstance(resp, str) else resp["reason"]
        if m.event == "system" and p.get("status") == "error":
            yield errors.SYSTEM, p["message"]


def tree_matches(place: str, text: str) -> list[str]:
    found = []
    for cls in leaves():
        if place not in cls.where:
            continue
        err = specimen(cls)
        want = {errors.JOIN_REPLY: err.reason, errors.SYSTEM: err.message, errors.CLOSE: cls.close_reason or "",
                errors.PUSH_REPLY: err.message if cls.bare_response else err.reason}[place]
        if pattern(want).match(text):
            found.append(cls.__name__)
    return found


def test_every_error_text_the_session_sends_comes_from_the_tree() -> None:
    seen = 0
    for name, effects in scenarios():
        texts = list(sent_texts(effects))
        assert texts, f"{name}: no error was sent"
        for place, text in texts:
            assert tree_matches(place, text), f"{name}: {place} {text!r} is not a text of the error tree for that place"
            seen += 1
    assert seen >= 24


@pytest.mark.parametrize("text", ["Too many messages per second!", "unmatched  topic"])
def test_a_text_outside_the_tree_is_caught(text: str) -> None:
    assert tree_matches(errors.SYSTEM, text) == [] and tree_matches(errors.PUSH_REPLY, text) == []
