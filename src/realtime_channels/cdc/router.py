"""Routing a decoded change to channels (sans-I/O; protocol.md §6.4, §6.6, §6.8).

For one change: the subscriptions of its table are narrowed by event and filter (``hits``);
the engine then asks RLS which claims cohorts may see it (``needs_rls`` says when) and which
columns each role may select; ``plan`` turns that into delivery groups.  A group is one payload
— the same topic, the same binding ids and the same visible columns — and is encoded once per
wire format for all its connections (many sockets joined to one channel name share a group).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .bindings import Peer, Sub
from .record import Row
from .types import Change, Transaction

__all__ = ["Group", "hits", "needs_rls", "plan", "roles", "work"]


@dataclass(frozen=True, slots=True)
class Group:
    """One ``postgres_changes`` payload and the connections that receive it."""

    topic: str
    ids: tuple[int, ...]
    cols: tuple[str, ...]
    peers: tuple[Peer, ...]


def work(txn: Transaction, by_table: Mapping[tuple[str, str], Sequence[Sub]]) -> list[tuple[Change, Sequence[Sub]]]:
    """The transaction's changes that some subscription's table covers, with those subscriptions."""
    return [(change, subs) for change in txn.changes
            if (subs := by_table.get((change.relation.namespace, change.relation.name)))]


def hits(row: Row, subs: Sequence[Sub]) -> list[Sub]:
    """§6.4: subscriptions whose event and filter match (filters on the new row, or the old
    identity for DELETE, §6.2)."""
    return [s for s in subs if s.binding.event in ("*", row.kind) and row.matches(s.conds)]


def needs_rls(row: Row) -> bool:
    """§6.6: INSERT/UPDATE rows of an RLS table are checked per cohort; DELETEs bypass RLS."""
    return row.info.rls_enabled and row.kind != "DELETE" and bool(row.info.pk)


def roles(subs: Sequence[Sub]) -> set[str]:
    return {s.role for s in subs}


def plan(row: Row, matched: Sequence[Sub], visible: set[str] | None,
         allowed: Mapping[str, frozenset[str]]) -> list[Group]:
    """Delivery groups for one change.

    ``visible``: the cohorts RLS admits (``None``: no RLS check applies); ``allowed``: the
    selectable columns of each role in ``matched``.  Each channel gets one message per distinct
    column set listing the ids of all its matching bindings (§6.4); channels with the same
    topic, ids and columns share one group."""
    column_sets: dict[tuple[str, tuple[str, ...] | None], tuple[str, ...]] = {}
    channels: dict[tuple[int, str], tuple[Sub, dict[tuple[str, ...], list[int]]]] = {}
    for sub in matched:
        if visible is not None and sub.cohort not in visible:
            continue
        cols = column_sets.get(sub.columns_key)
        if cols is None:
            cols = column_sets[sub.columns_key] = row.column_set(allowed[sub.role], sub.binding.select)
        channel = channels.get(sub.channel_key)
        if channel is None:
            channels[sub.channel_key] = (sub, {cols: [sub.binding.id]})
            continue
        ids = channel[1].setdefault(cols, [])
        if sub.binding.id not in ids:
            ids.append(sub.binding.id)
    groups: dict[tuple[str, tuple[int, ...], tuple[str, ...]], list[Peer]] = {}
    for first, by_cols in channels.values():
        for cols, ids in by_cols.items():
            groups.setdefault((first.topic, tuple(ids), cols), []).append(first.peer)
    return [Group(topic, ids, cols, tuple(peers)) for (topic, ids, cols), peers in groups.items()]
