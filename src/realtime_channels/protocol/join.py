"""Lenient ``phx_join`` payload parsing and postgres-change binding echo (protocol.md §3.2, §3.4).

A join is never rejected for shape errors (§3.2): every invalid field silently takes its
default, so nothing here raises on client input.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["JoinParams", "binding_id", "echo_bindings", "parse_flexible_bool", "parse_join"]


def parse_flexible_bool(value: Any, default: bool = False) -> bool:
    """§3.2 "flexible" booleans: JSON true/false or the strings "true"/"false" in any case."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.lower()
        if lowered == "true":
            return True
        if lowered == "false":
            return False
    return default


@dataclass(frozen=True, slots=True)
class JoinParams:
    """The parts of a ``phx_join`` payload the server acts on (§3.2)."""

    has_config: bool = True
    broadcast_self: bool = False
    broadcast_ack: bool = False
    replay: Any = None
    replication_ready: bool = False
    presence_key: str = ""
    presence_enabled: bool = False
    postgres_changes: tuple[dict[str, Any], ...] = ()
    private: bool = False
    access_token: str | None = None
    #: ``config.broadcast.resume`` as sent (``None``: absent): offsets on this channel's
    #: broadcasts, and where to resume from
    broadcast_resume: Any = None
    #: ``config.postgres_changes_options`` (``{}`` when absent or not an object): ``wait``,
    #: ``timeout``, ``resume``
    postgres_changes_options: Mapping[str, Any] = field(default_factory=dict)


def _object(value: Any) -> Mapping[str, Any]:
    # An invalid (non-object) section is treated as absent (§3.2); null included.
    return value if isinstance(value, dict) else {}


def _compact_json(value: Any) -> str:
    try:
        return orjson.dumps(value).decode("utf-8")
    except (orjson.JSONEncodeError, TypeError):
        # Only reachable for values no JSON parser produces (e.g. >64-bit ints): still never raise.
        return str(value)


def _presence_key(value: Any) -> str:
    # §3.2/§5.3: "" or absent -> the server generates a key; any other JSON value is used as
    # its string form (int 5 -> "5", true -> "true", objects -> compact JSON).
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _compact_json(value)


def _access_token(payload: Mapping[str, Any]) -> str | None:
    """§3.2 "Token choice"; ``None`` means the connection's API key (tenant token)."""
    access_token = payload.get("access_token")
    user_token = payload.get("user_token")
    # Opaque publishable/secret keys are not JWTs: fall back to the tenant token.
    for token in (access_token, user_token):
        if isinstance(token, str) and token.startswith("sb_"):
            return None
    if isinstance(user_token, str):
        return user_token
    if isinstance(access_token, str):
        return access_token
    return None


def parse_join(payload: Any) -> JoinParams:
    """Parse a ``phx_join`` payload; a non-object payload is treated as ``{}`` (no config)."""
    body = _object(payload)
    has_config = "config" in body
    config = _object(body.get("config"))
    broadcast = _object(config.get("broadcast"))
    presence = _object(config.get("presence"))
    raw_changes = config.get("postgres_changes")
    # §3.2: null entries are dropped and a null list is []; other non-object entries cannot be
    # bindings either, so they are dropped too rather than failing the join.
    changes: tuple[dict[str, Any], ...] = (
        tuple(b for b in raw_changes if isinstance(b, dict)) if isinstance(raw_changes, list) else ()
    )
    return JoinParams(
        has_config=has_config,
        broadcast_self=parse_flexible_bool(broadcast.get("self")),
        broadcast_ack=parse_flexible_bool(broadcast.get("ack")),
        replay=broadcast.get("replay"),
        replication_ready=parse_flexible_bool(broadcast.get("replication_ready")),
        presence_key=_presence_key(presence.get("key")),
        presence_enabled=parse_flexible_bool(presence.get("enabled")),
        postgres_changes=changes,
        private=parse_flexible_bool(config.get("private")),
        access_token=_access_token(body),
        broadcast_resume=broadcast.get("resume"),
        postgres_changes_options=dict(_object(config.get("postgres_changes_options"))),
    )


_ID_SPACE = (1 << 27) - 1  # ids land in 1 .. 2**27-1: non-zero and 27-bit (§3.4)


def _canonical(binding: Mapping[str, Any]) -> bytes:
    # Null-valued keys are dropped (they are absent in the echo, and clients treat null and
    # absent alike, §3.4); sorting keys makes key order irrelevant.  A client-sent "id" key is
    # overwritten in the echo, so it is not a parameter either.
    params = {k: v for k, v in binding.items() if v is not None and k != "id"}
    try:
        return orjson.dumps(params, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    except (orjson.JSONEncodeError, TypeError):
        return repr(sorted((str(k), repr(v)) for k, v in params.items())).encode("utf-8")


def binding_id(binding: Mapping[str, Any]) -> int:
    """Deterministic non-zero 27-bit id of a binding's parameters (§3.4, §6.5 ``ids``).

    Uses an unsalted digest (BLAKE2b), not ``hash()``: Python's string hash is salted per
    process, and ids must agree across processes and nodes.
    """
    digest = hashlib.blake2b(_canonical(binding), digest_size=8).digest()
    return int.from_bytes(digest, "big") % _ID_SPACE + 1


def echo_bindings(bindings: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The join reply's ``postgres_changes``: each binding as sent, nulls removed, plus ``id`` (§3.4)."""
    echoed: list[dict[str, Any]] = []
    for binding in bindings:
        entry = {k: v for k, v in binding.items() if v is not None}
        entry["id"] = binding_id(binding)
        echoed.append(entry)
    return echoed
