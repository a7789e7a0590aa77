"""Presence replicated across nodes, and the cluster's shared counters (sans-I/O).

Theory of operation
-------------------
Every node keeps the full presence state of every topic: its own members and a replica of the
other nodes'.  A node never changes its replica of another node directly: it publishes *ops*
on one control stream that every other node applies in order (the origin applies its own
member ops when it makes them, so its diff precedes the push's reply) —

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

from .keys import StreamKey
from .presence import PresenceDiff, TopicPresence

HEARTBEAT_S = 2.0
NODE_TTL_S = 6.0

Owner = tuple[Any, ...]  # (node_id, conn_id, topic)
Diffs = list[tuple[StreamKey, PresenceDiff]]


# --- the control messages, and their JSON form on the control stream ---------------------------


@dataclass(frozen=True, slots=True)
class TrackOp:
    stream: StreamKey
    owner: Owner
    key: str
    payload: Mapping[str, Any]
    ref: str
    version: int
    #: ``entry_size`` of key and payload when the origin knows it (not sent: 0 = work it out)
    size: int = 0


@dataclass(frozen=True, slots=True)
class UntrackOp:
    stream: StreamKey
    owner: Owner
    version: int


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The origin's op version and counters (users, events/s, joins/s, presence/s)."""

    version: int
    users: int = 0
    events: float = 0.0
    joins: float = 0.0
    presence: float = 0.0


@dataclass(frozen=True, slots=True)
class SyncRequest:
    """Ask node ``to`` (every node when ``None``) for its members."""

    to: str | None = None


@dataclass(frozen=True, slots=True)
class StateAnswer:
    """All of the origin's members: ``(stream, owner, key, meta)`` each."""

    version: int
    entries: tuple[tuple[StreamKey, Owner, str, Mapping[str, Any]], ...] = ()


Op = TrackOp | UntrackOp | Heartbeat | SyncRequest | StateAnswer
MemberOp = TrackOp | UntrackOp


def encode_op(op: Op) -> dict[str, Any]:
    """The JSON object an op travels as (short keys: it crosses the backbone often)."""
    if isinstance(op, TrackOp):
        return {"op": "track", "s": op.stream, "o": list(op.owner), "k": op.key, "p": dict(op.payload),
                "r": op.ref, "v": op.version}
    if isinstance(op, UntrackOp):
        return {"op": "untrack", "s": op.stream, "o": list(op.owner), "v": op.version}
    if isinstance(op, Heartbeat):
        return {"op": "hb", "v": op.version, "u": op.users, "e": op.events, "j": op.joins, "p": op.presence}
    if isinstance(op, SyncRequest):
        return {"op": "sync", "to": op.to}
    return {"op": "state", "v": op.version,
            "entries": [[s, list(o), k, dict(m)] for s, o, k, m in op.entries]}


def decode_op(raw: Mapping[str, Any]) -> Op | None:
    """The op of a control message; ``None`` for one this node does not know or cannot read."""
    try:
        kind = raw.get("op")
        if kind == "track":
            return TrackOp(StreamKey(str(raw["s"])), tuple(raw.get("o", ())), str(raw.get("k")), raw.get("p") or {},
                           str(raw.get("r")), int(raw.get("v", 0)))
        if kind == "untrack":
            return UntrackOp(StreamKey(str(raw["s"])), tuple(raw.get("o", ())), int(raw.get("v", 0)))
        if kind == "hb":
            return Heartbeat(int(raw.get("v", 0)), int(raw.get("u", 0)), float(raw.get("e", 0.0)),
                             float(raw.get("j", 0.0)), float(raw.get("p", 0.0)))
        if kind == "sync":
            to = raw.get("to")
            return SyncRequest(to if isinstance(to, str) else None)
        if kind == "state":
            entries = tuple((StreamKey(str(s)), tuple(o), str(k), dict(m)) for s, o, k, m in raw.get("entries", []))
            return StateAnswer(int(raw.get("v", 0)), entries)
    except (KeyError, TypeError, ValueError):
        return None
    return None


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
    topics: dict[StreamKey, TopicPresence] = field(default_factory=dict)
    peers: dict[str, PeerState] = field(default_factory=dict)
    version: int = 0

    # ops this node publishes -----------------------------------------------------------------

    def track_op(self, stream: StreamKey, local_owner: Hashable, key: str, payload: Mapping[str, Any],
                 ref: str, size: int = 0) -> TrackOp:
        self.version += 1
        return TrackOp(stream, (self.node_id, *_parts(local_owner)), key, dict(payload), ref, self.version, size)

    def size_with(self, stream: StreamKey, local_owner: Hashable, added: int) -> int:
        """The stream's presence state size (``TopicPresence.size``) if our ``local_owner``
        tracked ``added`` bytes; every node's members count."""
        state = self.topics.get(stream)
        return added if state is None else state.size_with((self.node_id, *_parts(local_owner)), added)

    def untrack_op(self, stream: StreamKey, local_owner: Hashable) -> UntrackOp | None:
        owner = (self.node_id, *_parts(local_owner))
        state = self.topics.get(stream)
        if state is None or state.tracked(owner) is None:
            return None
        self.version += 1
        return UntrackOp(stream, owner, self.version)

    def heartbeat_op(self, users: int, events: float, joins: float, presence: float) -> Heartbeat:
        return Heartbeat(self.version, users, events, joins, presence)

    def state_op(self) -> StateAnswer:
        entries = []
        for stream, state in self.topics.items():
            for owner in state.owners():
                if not isinstance(owner, tuple) or _node_of(owner) != self.node_id:
                    continue
                tracked = state.tracked(owner)
                if tracked is not None:
                    entries.append((stream, owner, tracked[0], tracked[1]))
        return StateAnswer(self.version, tuple(entries))

    @staticmethod
    def sync_op(to: str | None = None) -> SyncRequest:
        return SyncRequest(to)

    # applying ops ----------------------------------------------------------------------------

    def apply(self, origin: str, op: Op, now: float) -> tuple[Diffs, list[Op]]:
        """Apply one op from ``origin``; returns the diffs to fan out locally and the ops this
        node must publish in response (a ``sync`` request or a ``state`` answer)."""
        replies: list[Op] = []
        member = isinstance(op, TrackOp | UntrackOp)
        if origin == self.node_id:  # our own ops come back through the PubSub like everyone's
            return (self._apply_member_op(op) if isinstance(op, TrackOp | UntrackOp) else []), replies
        peer = self.peers.get(origin)
        if peer is None:
            peer = self.peers[origin] = PeerState(last_seen=now)
            if not (member and getattr(op, "version", 0) == 1) and not isinstance(op, StateAnswer):
                replies.append(self.sync_op(origin))  # a node we have not heard from since it started
        peer.last_seen = now
        diffs: Diffs = []
        if isinstance(op, TrackOp | UntrackOp):
            if op.version != peer.applied + 1 and not replies:
                replies.append(self.sync_op(origin))
            peer.applied = max(peer.applied, op.version)
            diffs = self._apply_member_op(op)
        elif isinstance(op, Heartbeat):
            peer.users, peer.events, peer.joins, peer.presence = op.users, op.events, op.joins, op.presence
            if op.version != peer.applied and not replies:
                replies.append(self.sync_op(origin))
        elif isinstance(op, SyncRequest):
            if op.to in (None, self.node_id):
                replies.append(self.state_op())
        else:
            diffs = self._replace_node(origin, op.entries)
            peer.applied = op.version
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

    def counts(self, stream: StreamKey) -> tuple[int, int]:
        state = self.topics.get(stream)
        return state.counts() if state is not None else (0, 0)

    def state_payload(self, stream: StreamKey) -> dict[str, Any]:
        state = self.topics.get(stream)
        return state.state_payload() if state is not None else {}

    def state_json(self, stream: StreamKey) -> bytes:
        state = self.topics.get(stream)
        return state.state_json() if state is not None else b"{}"

    # internals -------------------------------------------------------------------------------

    def _apply_member_op(self, op: MemberOp) -> Diffs:
        if isinstance(op, TrackOp):
            state = self.topics.setdefault(op.stream, TopicPresence())
            diff = state.track(op.owner, op.key, op.payload or {}, op.ref, op.size or None)
        else:
            existing = self.topics.get(op.stream)
            if existing is None:
                return []
            diff = existing.untrack(op.owner)
            if not existing:
                del self.topics[op.stream]
        return [(op.stream, diff)] if diff is not None else []

    def _remove_node(self, node: str) -> Diffs:
        diffs: Diffs = []
        for stream, state in list(self.topics.items()):
            diff = state.remove_owners(lambda o: _node_of(o) == node)
            if diff is not None:
                diffs.append((stream, diff))
            if not state:
                del self.topics[stream]
        return diffs

    def _replace_node(self, node: str, entries: tuple[tuple[StreamKey, Owner, str, Mapping[str, Any]], ...]) -> Diffs:
        """Make the replica of ``node`` equal its ``state`` answer, with diffs only for changes."""
        wanted: dict[tuple[StreamKey, Owner], tuple[str, dict[str, Any]]] = {}
        for entry_stream, entry_owner, key, meta in entries:
            wanted[(entry_stream, tuple(entry_owner))] = (key, dict(meta))
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
