"""Routing a decoded change to channels (sans-I/O; protocol.md §6.4, §6.6, §6.8).

The subscriptions of a table are kept as *fans*: channels whose topic, bindings on the table and
role are identical (typically every socket that joined one channel name with the same bindings),
their connections kept per claims cohort.  A fan is matched and planned as one, and judged by
RLS once per cohort, so the work per change grows with the number of distinct fans and cohorts,
not of sockets; on a table without RLS every connection of a fan gets the same payload.

For one change: ``match`` narrows each fan's bindings by event and filter; the engine asks RLS
which cohorts may see the change (``needs_rls`` says when, ``cohorts`` which to ask) and which
columns each role may select; ``plan`` turns that into delivery groups.  A group is one payload
— the same topic, binding ids and visible columns — encoded once per wire format for all its
connections.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .bindings import Binding, Peer, Sub
from .record import Row
from .types import Change, Snapshot, Transaction

__all__ = ["Fan", "Group", "Seen", "Work", "cohorts", "fans", "match", "needs_rls", "plan", "roles", "work"]

TableKey = tuple[str, str]


@dataclass(slots=True, eq=False)
class Fan:
    """Channels on one table with identical topic, bindings and role."""

    topic: str
    role: str
    #: its channels asked for offsets (every message gets its change's offset as ``ref``)
    offsets: bool
    #: its channel read a snapshot: the transactions the snapshot contains are not sent (§6.10)
    seen: Snapshot | None
    #: the first channel's subscriptions on the table, in binding order (its bindings stand
    #: for every channel of the fan)
    subs: tuple[Sub, ...]
    #: claims cohort → its claims and the connections of the fan's channels in that cohort
    cohorts: dict[str, tuple[Mapping[str, Any], list[Peer]]] = field(default_factory=dict)
    #: when no binding has a filter, the bindings each event kind matches (computed once)
    by_kind: dict[str, list[Binding]] | None = None

    def __post_init__(self) -> None:
        if not any(s.conds for s in self.subs):
            self.by_kind = {kind: [s.binding for s in self.subs if s.binding.event in ("*", kind)]
                            for kind in ("INSERT", "UPDATE", "DELETE")}


class Group(NamedTuple):
    """One ``postgres_changes`` payload and the connections that receive it; ``old_shown``:
    their policies admit the change's old image (otherwise ``old_record`` keeps only the key).
    A named tuple: one is made per channel per change, on the hot path."""

    topic: str
    ids: tuple[int, ...]
    cols: tuple[str, ...]
    old_shown: bool
    peers: tuple[Peer, ...]
    offsets: bool = False


@dataclass(slots=True)
class Seen:
    """The cohorts whose policies admit a change's new image, and its old image (§6.6)."""

    new: set[str]
    old: set[str]


def fans(subs: Sequence[Sub]) -> list[Fan]:
    """Group a table's subscriptions (in subscription order) into fans."""
    channels: dict[tuple[int, str], list[Sub]] = {}
    for sub in subs:
        channels.setdefault(sub.channel_key, []).append(sub)
    out: dict[tuple[Any, ...], Fan] = {}
    for own in channels.values():
        first = own[0]
        signature = (first.topic, first.role, first.offsets, id(first.seen) if first.seen is not None else 0,
                     tuple((s.binding.id, s.binding.event, s.binding.filter_text, s.binding.select) for s in own))
        fan = out.get(signature)
        if fan is None:
            fan = out[signature] = Fan(first.topic, first.role, first.offsets, first.seen, tuple(own))
        fan.cohorts.setdefault(first.cohort, (first.claims, []))[1].append(first.peer)
    return list(out.values())


Work = list[tuple[int, Change, Sequence[Fan]]]


def work(txn: Transaction, fans_of: Callable[[TableKey], Sequence[Fan] | None], first: int = 0) -> Work:
    """The transaction's changes (from index ``first``) that some subscription's table covers,
    each with its index in the transaction and that table's fans."""
    changes = txn.changes
    return [(i, changes[i], table_fans) for i in range(first, len(changes))
            if (table_fans := fans_of((changes[i].relation.namespace, changes[i].relation.name)))]


def match(row: Row, table_fans: Sequence[Fan], txn: Transaction | None = None) -> list[tuple[Fan, list[Binding]]]:
    """§6.4: per fan, the bindings whose event and filter match (filters on the new row, or the
    old identity for DELETE, §6.2); fans without a match are left out, and so are fans whose
    snapshot already contains ``txn`` (§6.10)."""
    out: list[tuple[Fan, list[Binding]]] = []
    kind = row.kind
    for fan in table_fans:
        if fan.seen is not None and txn is not None and fan.seen.covers(txn):
            continue
        by_kind = fan.by_kind
        if by_kind is not None:  # no filters: the answer depends on the event kind only
            hit = by_kind[kind]
        else:
            hit = [s.binding for s in fan.subs if s.binding.event in ("*", kind) and row.matches(s.conds)]
        if hit:
            out.append((fan, hit))
    return out


def needs_rls(row: Row) -> bool:
    """§6.6: INSERT/UPDATE rows of an RLS table are checked per cohort; DELETEs bypass RLS."""
    return row.info.rls_enabled and row.kind != "DELETE" and bool(row.info.pk)


def cohorts(matched: Sequence[tuple[Fan, list[Binding]]]) -> dict[str, Mapping[str, Any]]:
    """The claims cohorts RLS must judge for these fans (cohort key → its claims)."""
    out: dict[str, Mapping[str, Any]] = {}
    for fan, _ in matched:
        for cohort, (claims, _peers) in fan.cohorts.items():
            out.setdefault(cohort, claims)
    return out


def roles(matched: Sequence[tuple[Fan, list[Binding]]]) -> set[str]:
    return {fan.role for fan, _ in matched}


def plan(row: Row, matched: Sequence[tuple[Fan, list[Binding]]], visible: Seen | None,
         allowed: Mapping[str, frozenset[str]]) -> list[Group]:
    """Delivery groups for one change.

    ``visible``: the cohorts RLS admits (``None``: no RLS check applies); ``allowed``: the
    selectable columns of each role in ``matched``.  Each channel gets one message per distinct
    payload listing the ids of all its matching bindings (§6.4); the connections of one fan with
    the same payload and old-image verdict share one group (one encode per wire format)."""
    # the column set depends only on (role, select): computed once per row, not per subscriber
    column_sets: dict[tuple[str, tuple[str, ...] | None], tuple[str, ...]] = {}
    out: list[Group] = []
    for fan, bindings in matched:
        payloads: list[tuple[tuple[int, ...], tuple[str, ...]]]
        if len(bindings) == 1:  # the common case: one binding per table per channel
            b = bindings[0]
            cols = column_sets.get((fan.role, b.select))
            if cols is None:
                cols = column_sets[(fan.role, b.select)] = row.column_set(allowed[fan.role], b.select)
            payloads = [((b.id,), cols)]
        else:
            by_cols: dict[tuple[str, ...], list[int]] = {}
            for b in bindings:
                key = (fan.role, b.select)
                cols = column_sets.get(key)
                if cols is None:
                    cols = column_sets[key] = row.column_set(allowed[fan.role], b.select)
                ids = by_cols.setdefault(cols, [])
                if b.id not in ids:
                    ids.append(b.id)
            payloads = [(tuple(ids), cols) for cols, ids in by_cols.items()]
        # the fan's admitted connections, split by whether they may see the old image
        shown: list[Peer] = []
        hidden: list[Peer] = []
        for cohort, (_claims, peers) in fan.cohorts.items():
            if visible is None or cohort in visible.old:
                if visible is None or cohort in visible.new:
                    shown.extend(peers)
            elif cohort in visible.new:
                hidden.extend(peers)
        for old_shown, peers in ((True, shown), (False, hidden)):
            if peers:
                for ids_key, cols in payloads:
                    out.append(Group(fan.topic, ids_key, cols, old_shown, tuple(peers), fan.offsets))
    return out
