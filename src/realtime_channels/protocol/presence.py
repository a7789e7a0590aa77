"""Presence state of one topic, sans-I/O (protocol.md §5).

``TopicPresence`` holds at most one meta per *owner* (one tracking channel, §5.1) and turns
``track``/``untrack``/owner removal into ``PresenceDiff`` values; ``state_payload`` and
``PresenceDiff.payload`` build the ``presence_state`` / ``presence_diff`` wire payloads (§5.2).

Metas are never mutated once built: a diff, a state payload and the store may share them safely.

Each topic also keeps the encoded size of its state (``size``): a track that would take it past
a bound is refused by the node before it is made (``REALTIME_MAX_PRESENCE_STATE_BYTES``).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

import orjson

__all__ = [
    "Owner",
    "PresenceDiff",
    "RefGenerator",
    "TopicPresence",
    "entry_size",
    "merge_diffs",
]

#: Identifies one tracking channel, e.g. ``(node_id, conn_id, topic)``.
Owner: TypeAlias = Hashable
Meta: TypeAlias = dict[str, Any]
Metas: TypeAlias = Mapping[str, tuple[Meta, ...]]

#: Fields the server sets on a meta; they win over same-named payload fields (§5.2).
_REF = "phx_ref"
_REF_PREV = "phx_ref_prev"
#: ``{"<key>":{"metas":[{"phx_ref":"…","phx_ref_prev":"…", …}]}`` around a payload, in bytes
_META_OVERHEAD = 96


def entry_size(key: str, payload: Mapping[str, Any]) -> int:
    """Bytes one member adds to its topic's ``presence_state`` (close to, not below, the wire size)."""
    return len(key.encode()) + len(orjson.dumps(payload)) + _META_OVERHEAD


@dataclass(frozen=True, slots=True)
class PresenceDiff:
    """One ``presence_diff``: metas joined and left, grouped by presence key (§5.2)."""

    joins: Metas
    leaves: Metas

    def payload(self) -> dict[str, Any]:
        """Wire payload; both ``joins`` and ``leaves`` are always present (§5.2)."""
        return {"joins": _metas_payload(self.joins), "leaves": _metas_payload(self.leaves)}

    def is_empty(self) -> bool:
        return not any(self.joins.values()) and not any(self.leaves.values())


def merge_diffs(diffs: Iterable[PresenceDiff]) -> PresenceDiff | None:
    """Coalesce diffs into one (§5.2 "Diffs may be coalesced", §5.6).

    Joins and leaves are concatenated per key in order. Clients apply joins before leaves
    (§5.4); since every ``phx_ref`` is unique, a meta joined and then left inside the batch
    still ends up absent, and an update's new meta survives the leave of its predecessor.
    """
    joins: dict[str, list[Meta]] = {}
    leaves: dict[str, list[Meta]] = {}
    for diff in diffs:
        _extend(joins, diff.joins)
        _extend(leaves, diff.leaves)
    merged = PresenceDiff(joins=_freeze(joins), leaves=_freeze(leaves))
    return None if merged.is_empty() else merged


@dataclass(slots=True)
class _Entry:
    key: str
    payload: dict[str, Any]  # the caller's payload as tracked, for the identical-payload check
    meta: Meta
    size: int


class TopicPresence:
    """Presence state of one topic stream: at most one tracked meta per owner (§5.1)."""

    __slots__ = ("_entries", "_json", "_payload", "size")

    def __init__(self) -> None:
        # Insertion order is tracking order; a re-track moves the owner to the end, which is
        # where clients append the new meta when they apply the diff (§5.4).
        self._entries: dict[Owner, _Entry] = {}
        #: sum of the members' ``entry_size``
        self.size = 0
        #: ``state_payload`` and its JSON as of the last change (every joiner of a big room is
        #: sent the same state: built once per change, not once per joiner)
        self._payload: dict[str, Any] | None = None
        self._json: bytes | None = None

    def size_with(self, owner: Owner, added: int) -> int:
        """The state's size if ``owner`` tracked a payload of ``added`` bytes (``entry_size``)."""
        old = self._entries.get(owner)
        return self.size - (old.size if old is not None else 0) + added

    def track(
        self, owner: Owner, key: str, payload: Mapping[str, Any], phx_ref: str, size: int | None = None
    ) -> PresenceDiff | None:
        """Track or replace ``owner``'s presence; ``None`` when nothing changed (§5.1, item 77).
        ``size`` is the caller's ``entry_size(key, payload)``, if it has one."""
        old = self._entries.get(owner)
        if old is not None and old.key == key and _same_json(old.payload, payload):
            return None
        # An update carries phx_ref_prev (§5.2); a key change is a leave plus a fresh join,
        # since phx_ref_prev only makes sense for a meta replaced under the same key.
        prev = old.meta[_REF] if old is not None and old.key == key else None
        entry = _Entry(key=key, payload=dict(payload), meta=_make_meta(payload, phx_ref, prev),
                       size=entry_size(key, payload) if size is None else size)
        if old is not None:
            del self._entries[owner]
            self.size -= old.size
        self._entries[owner] = entry
        self._payload = self._json = None
        self.size += entry.size
        joins = {key: (entry.meta,)}
        leaves = {old.key: (old.meta,)} if old is not None else {}
        return PresenceDiff(joins=joins, leaves=leaves)

    def untrack(self, owner: Owner) -> PresenceDiff | None:
        """Drop ``owner``'s presence: a leave diff, or ``None`` if it tracked nothing (§5.1)."""
        old = self._entries.pop(owner, None)
        if old is None:
            return None
        self.size -= old.size
        self._payload = self._json = None
        return PresenceDiff(joins={}, leaves={old.key: (old.meta,)})

    def remove_owners(self, pred: Callable[[Owner], bool]) -> PresenceDiff | None:
        """Drop every owner matching ``pred`` (socket close, node loss) as one leave diff."""
        gone = [owner for owner in self._entries if pred(owner)]
        if not gone:
            return None
        removed = [self._entries.pop(owner) for owner in gone]
        self.size -= sum(e.size for e in removed)
        self._payload = self._json = None
        return PresenceDiff(joins={}, leaves=_group((e.key, e.meta) for e in removed))

    def state_payload(self) -> dict[str, Any]:
        """``presence_state`` payload, ``{}`` when empty (§5.2); keys and metas in tracking order.
        The same object until the state changes: callers must not modify it."""
        if self._payload is None:
            self._payload = _metas_payload(_group((e.key, e.meta) for e in self._entries.values()))
        return self._payload

    def state_json(self) -> bytes:
        """``state_payload`` as JSON, encoded once per change."""
        if self._json is None:
            # a copy in a block of its own size (orjson's output sits in a larger one)
            self._json = bytes(memoryview(orjson.dumps(self.state_payload())))
        return self._json

    def tracked(self, owner: Owner) -> tuple[str, dict[str, Any]] | None:
        entry = self._entries.get(owner)
        return None if entry is None else (entry.key, entry.meta)

    def owners(self) -> list[Owner]:
        return list(self._entries)

    def counts(self) -> tuple[int, int]:
        """(presence keys, metas): how many are in the topic, without building its state."""
        return len({e.key for e in self._entries.values()}), len(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


class RefGenerator:
    """Opaque, unique ``phx_ref`` strings (§5.2).

    A ref is the unpadded base64url of ``seed`` followed by a 64-bit big-endian counter.
    The fixed-width counter makes refs unique per generator; distinct seeds of one length
    (e.g. random per-node bytes, supplied by the caller) make them unique across nodes.
    """

    __slots__ = ("_seed", "_counter")

    def __init__(self, seed: bytes) -> None:
        self._seed = bytes(seed)
        self._counter = 0

    def next(self) -> str:
        self._counter += 1
        raw = self._seed + self._counter.to_bytes(8, "big")
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _make_meta(payload: Mapping[str, Any], phx_ref: str, prev: str | None) -> Meta:
    """The payload plus ``phx_ref`` (and ``phx_ref_prev``), nothing else (§5.2)."""
    meta: Meta = {_REF: phx_ref}
    if prev is not None:
        meta[_REF_PREV] = prev
    for name, value in payload.items():
        if name not in meta:
            meta[name] = value
    return meta


def _same_json(a: Any, b: Any) -> bool:
    """JSON-value equality. Plain ``==`` would call ``True`` equal to ``1`` and ``1`` equal to
    ``1.0``, suppressing a re-track whose payload clients would see as different (item 77)."""
    if isinstance(a, orjson.Fragment) or isinstance(b, orjson.Fragment):  # integers beyond 64 bits
        return type(a) is type(b) and orjson.dumps(a) == orjson.dumps(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) or isinstance(b, int | float):
        return type(a) is type(b) and a == b
    if isinstance(a, Mapping):
        return (
            isinstance(b, Mapping)
            and a.keys() == b.keys()
            and all(_same_json(a[k], b[k]) for k in a)
        )
    if isinstance(a, list | tuple):
        return (
            isinstance(b, list | tuple)
            and len(a) == len(b)
            and all(_same_json(x, y) for x, y in zip(a, b, strict=True))
        )
    return bool(a == b)


def _group(pairs: Iterable[tuple[str, Meta]]) -> dict[str, tuple[Meta, ...]]:
    grouped: dict[str, list[Meta]] = {}
    for key, meta in pairs:
        grouped.setdefault(key, []).append(meta)
    return _freeze(grouped)


def _extend(into: dict[str, list[Meta]], metas: Metas) -> None:
    for key, items in metas.items():
        if items:
            into.setdefault(key, []).extend(items)


def _freeze(grouped: Mapping[str, list[Meta]]) -> dict[str, tuple[Meta, ...]]:
    return {key: tuple(items) for key, items in grouped.items()}


def _metas_payload(metas: Metas) -> dict[str, Any]:
    return {key: {"metas": list(items)} for key, items in metas.items() if items}
