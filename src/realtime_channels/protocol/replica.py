"""Presence replicated across nodes, and the cluster's shared counters (sans-I/O).

Theory of operation
-------------------
Every node keeps the full presence state of every topic: its own members and a replica of the
other nodes'.  A node never changes its replica of another node directly: it publishes *ops*
on one control stream that every node (itself included) applies in order —

* ``track`` / ``untrack`` carry the owner ``(node, conn, topic)``, key, payload and ``phx_ref``
  (so the ref is identical everywhere) and the origin's op version ``v`` (1, 2, 3, …);
* ``hb`` (every ``HEARTBEAT_S``) carries the origin's current version and its counters
  (users, events/s, joins/s, presence/s) so tenant limits are counted cluster-wide (§8);
* ``sync`` asks a node (or all) for its members; ``state`` answers with all of them.

A node that sees a gap in another's versions (a lost op, a restart of Redis, a node it has not
heard of) asks that node for its ``state`` and replaces its replica with it, producing diffs only
for what really changed.  A node whose heartbeats stop for ``NODE_TTL_S`` is presumed dead: its
members leave everywhere.  Node ids are random per process, so a restarted node comes back as a
new node and can never resurrect the members of its previous life.

Guarantees (documented in the README): a member tracked on any node appears in
``presence_state`` on every node once its op has been delivered (one PubSub hop); a node's
members leave everywhere within ``NODE_TTL_S`` + one sweep of its death; after a Redis outage the
replicas converge within one heartbeat of the reconnection.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .presence import PresenceDiff, TopicPresence

HEARTBEAT_S = 2.0
NODE_TTL_S = 6.0

Owner = tuple[Any, ...]  # (node_id, conn_id, topic)
Op = dict[str, Any]
Diffs = list[tuple[str, PresenceDiff]]


@dataclass(slots=True)
class PeerState:
    last_seen: float
    applied: int = 0
    users: int = 0
    events: float = 0.0
    joins: float = 0.0
    presence: float = 0.0


@dataclass
class PresenceReplica:
    node_id: str
    topics: dict[str, TopicPresence] = field(default_factory=dict)
    peers: dict[str, PeerState] = field(default_factory=dict)
    version: int = 0

    # ops this node publishes -----------------------------------------------------------------

    def track_op(self, stream: str, local_owner: Hashable, key: str, payload: Mapping[str, Any],
                 ref: str) -> Op:
        self.version += 1
        return {"op": "track", "s": stream, "o": [self.node_id, *_parts(local_owner)], "k": key,
                "p": dict(payload), "r": ref, "v": self.version}

    def untrack_op(self, stream: str, local_owner: Hashable) -> Op | None:
        owner = (self.node_id, *_parts(local_owner))
        state = self.topics.get(stream)
        if state is None or state.tracked(owner) is None:
            return None
        self.version += 1
        return {"op": "untrack", "s": stream, "o": list(owner), "v": self.version}

    def heartbeat_op(self, users: int, events: float, joins: float, presence: float) -> Op:
        return {"op": "hb", "v": self.version, "u": users, "e": events, "j": joins, "p": presence}

    def state_op(self) -> Op:
        entries = []
        for stream, state in self.topics.items():
            for owner in state.owners():
                if not isinstance(owner, tuple) or _node_of(owner) != self.node_id:
                    continue
                tracked = state.tracked(owner)
                if tracked is not None:
                    entries.append([stream, list(owner), tracked[0], tracked[1]])
        return {"op": "state", "v": self.version, "entries": entries}

    @staticmethod
    def sync_op(to: str | None = None) -> Op:
        return {"op": "sync", "to": to}

    # applying ops ----------------------------------------------------------------------------

    def apply(self, origin: str, op: Op, now: float) -> tuple[Diffs, list[Op]]:
        """Apply one op from ``origin``; returns the diffs to fan out locally and the ops this
        node must publish in response (a ``sync`` request or a ``state`` answer)."""
        kind = op.get("op")
        replies: list[Op] = []
        if origin == self.node_id:  # our own ops come back through the PubSub like everyone's
            return (self._apply_member_op(op) if kind in ("track", "untrack") else []), replies
        peer = self.peers.get(origin)
        if peer is None:
            peer = self.peers[origin] = PeerState(last_seen=now)
            if not (kind in ("track", "untrack") and op.get("v") == 1) and kind != "state":
                replies.append(self.sync_op(origin))  # a node we have not heard from since it started
        peer.last_seen = now
        diffs: Diffs = []
        if kind in ("track", "untrack"):
            version = int(op.get("v", 0))
            if version != peer.applied + 1 and not replies:
                replies.append(self.sync_op(origin))
            peer.applied = max(peer.applied, version)
            diffs = self._apply_member_op(op)
        elif kind == "hb":
            peer.users = int(op.get("u", 0))
            peer.events = float(op.get("e", 0.0))
            peer.joins = float(op.get("j", 0.0))
            peer.presence = float(op.get("p", 0.0))
            if int(op.get("v", 0)) != peer.applied and not replies:
                replies.append(self.sync_op(origin))
        elif kind == "sync":
            if op.get("to") in (None, self.node_id):
                replies.append(self.state_op())
        elif kind == "state":
            diffs = self._replace_node(origin, op.get("entries", []))
            peer.applied = int(op.get("v", 0))
        return diffs, replies

    def expire(self, now: float) -> Diffs:
        """Members of nodes silent for ``NODE_TTL_S`` leave everywhere."""
        diffs: Diffs = []
        for node in [n for n, p in self.peers.items() if now - p.last_seen > NODE_TTL_S]:
            del self.peers[node]
            diffs += self._remove_node(node)
        return diffs

    def cluster_totals(self) -> tuple[int, float, float, float]:
        """Other nodes' (users, events/s, joins/s, presence/s) from their last heartbeats."""
        peers = self.peers.values()
        return (sum(p.users for p in peers), sum(p.events for p in peers),
                sum(p.joins for p in peers), sum(p.presence for p in peers))

    def state_payload(self, stream: str) -> dict[str, Any]:
        state = self.topics.get(stream)
        return state.state_payload() if state is not None else {}

    # internals -------------------------------------------------------------------------------

    def _apply_member_op(self, op: Op) -> Diffs:
        stream = str(op.get("s"))
        owner = tuple(op.get("o", ()))
        if op.get("op") == "track":
            state = self.topics.setdefault(stream, TopicPresence())
            diff = state.track(owner, str(op.get("k")), op.get("p") or {}, str(op.get("r")))
        else:
            state = self.topics.get(stream)  # type: ignore[assignment]
            if state is None:
                return []
            diff = state.untrack(owner)
            if not state:
                del self.topics[stream]
        return [(stream, diff)] if diff is not None else []

    def _remove_node(self, node: str) -> Diffs:
        diffs: Diffs = []
        for stream, state in list(self.topics.items()):
            diff = state.remove_owners(lambda o: _node_of(o) == node)
            if diff is not None:
                diffs.append((stream, diff))
            if not state:
                del self.topics[stream]
        return diffs

    def _replace_node(self, node: str, entries: list[Any]) -> Diffs:
        """Make the replica of ``node`` equal its ``state`` answer, with diffs only for changes."""
        wanted: dict[tuple[str, Owner], tuple[str, dict[str, Any]]] = {}
        for stream, owner, key, meta in entries:
            wanted[(stream, tuple(owner))] = (key, meta)
        diffs: Diffs = []
        for stream, state in list(self.topics.items()):
            for owner in state.owners():
                if isinstance(owner, tuple) and _node_of(owner) == node and (stream, owner) not in wanted:
                    diff = state.untrack(owner)
                    if diff is not None:
                        diffs.append((stream, diff))
            if not state:
                del self.topics[stream]
        for (stream, owner), (key, meta) in wanted.items():
            payload = {k: v for k, v in meta.items() if k not in ("phx_ref", "phx_ref_prev")}
            state = self.topics.setdefault(stream, TopicPresence())
            current = state.tracked(owner)
            if current is not None and current[1].get("phx_ref") == meta.get("phx_ref"):
                continue
            diff = state.track(owner, key, payload, str(meta.get("phx_ref")))
            if diff is not None:
                diffs.append((stream, diff))
        return diffs


def _node_of(owner: Hashable) -> Any:
    """Owners are ``(node_id, conn_id, topic)`` tuples."""
    return owner[0] if isinstance(owner, tuple) and owner else None


def _parts(local_owner: Hashable) -> list[Any]:
    return list(local_owner) if isinstance(local_owner, tuple) else [local_owner]
