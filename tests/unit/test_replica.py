"""PresenceReplica (protocol/replica.py): presence replicated across nodes, sans-I/O.

The replicas exchange ops through an in-memory ordered bus that hands every op to every replica,
the origin included (what the PubSub does: a node receives its own envelopes too).  Time is a
fake clock passed as ``now``.  Tests check convergence, resync after a lost op, diffs that carry
only real changes, expiry of silent nodes after ``NODE_TTL_S``, that a restarted node (new id)
never brings back its old members, and the cluster-wide counters from heartbeats.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from realtime_channels.protocol.replica import (
    HEARTBEAT_S,
    NODE_TTL_S,
    Op,
    PresenceReplica,
    SyncRequest,
    decode_op,
    encode_op,
)

TOPIC = "pub:room1"


def keys_of(payload: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """``presence_state``/diff entries as ``{key: [meta, ...]}``."""
    return {k: list(v["metas"]) for k, v in payload.items()}


class Bus:
    """Ordered delivery of every published op to every replica (origin included)."""

    def __init__(self, *replicas: PresenceReplica) -> None:
        self.replicas = {r.node_id: r for r in replicas}
        self.queue: deque[tuple[str, Op]] = deque()
        self.now = 1000.0
        #: diffs each replica produced, as (stream, payload) in order
        self.diffs: dict[str, list[tuple[str, dict[str, Any]]]] = {r.node_id: [] for r in replicas}
        #: ops that were "lost in transit" for one receiver: (origin, receiver, op kind, version)
        self.drop: set[tuple[str, str, str, int]] = set()
        self.sent: list[tuple[str, Op]] = []

    def add(self, replica: PresenceReplica) -> None:
        self.replicas[replica.node_id] = replica
        self.diffs[replica.node_id] = []

    def remove(self, node_id: str) -> PresenceReplica:
        """The node dies: it receives and sends nothing more."""
        return self.replicas.pop(node_id)

    def publish(self, origin: str, op: Op | None) -> None:
        assert op is not None
        self.queue.append((origin, op))
        self.sent.append((origin, op))

    def pump(self) -> None:
        while self.queue:
            origin, op = self.queue.popleft()
            for node_id, replica in list(self.replicas.items()):
                wire = encode_op(op)  # every op crosses the bus in its JSON form, as on the backbone
                if (origin, node_id, str(wire["op"]), int(wire.get("v", 0))) in self.drop:
                    continue
                received = decode_op(wire)
                assert received == op
                diffs, replies = replica.apply(origin, received, self.now)
                self.diffs[node_id] += [(s, d.payload()) for s, d in diffs]
                for reply in replies:
                    self.publish(node_id, reply)

    def track(self, node_id: str, conn: int, key: str, payload: dict[str, Any], ref: str) -> None:
        r = self.replicas[node_id]
        self.publish(node_id, r.track_op(TOPIC, (conn, "realtime:room1"), key, payload, ref))

    def untrack(self, node_id: str, conn: int) -> None:
        r = self.replicas[node_id]
        self.publish(node_id, r.untrack_op(TOPIC, (conn, "realtime:room1")))

    def heartbeat(self, node_id: str, users: int = 0, events: float = 0.0, joins: float = 0.0,
                  presence: float = 0.0) -> None:
        self.publish(node_id, self.replicas[node_id].heartbeat_op(users, events, joins, presence))

    def states(self) -> dict[str, dict[str, Any]]:
        return {n: r.state_payload(TOPIC) for n, r in self.replicas.items()}

    def take_diffs(self, node_id: str) -> list[dict[str, Any]]:
        out = [p for s, p in self.diffs[node_id] if s == TOPIC]
        self.diffs[node_id] = []
        return out


def cluster(*names: str) -> Bus:
    bus = Bus(*(PresenceReplica(n) for n in names))
    return bus


def test_three_replicas_converge_on_every_member() -> None:
    bus = cluster("a", "b", "c")
    bus.track("a", 1, "alice", {"name": "alice"}, "ra1")
    bus.track("b", 1, "bob", {"name": "bob"}, "rb1")
    bus.track("c", 7, "carol", {"name": "carol"}, "rc1")
    bus.pump()
    states = bus.states()
    assert states["a"] == states["b"] == states["c"]
    assert keys_of(states["a"]) == {
        "alice": [{"phx_ref": "ra1", "name": "alice"}],
        "bob": [{"phx_ref": "rb1", "name": "bob"}],
        "carol": [{"phx_ref": "rc1", "name": "carol"}],
    }
    # every node emitted one join diff per member, with the ref chosen by the tracking node
    for node in "abc":
        joins = [keys_of(d["joins"]) for d in bus.take_diffs(node)]
        assert sorted(joins, key=str) == sorted(
            [{"alice": [{"phx_ref": "ra1", "name": "alice"}]},
             {"bob": [{"phx_ref": "rb1", "name": "bob"}]},
             {"carol": [{"phx_ref": "rc1", "name": "carol"}]}], key=str)
    # no gap was seen, so nobody asked for a resync
    assert [op for _, op in bus.sent if encode_op(op)["op"] in ("sync", "state")] == []


def test_update_and_untrack_replicate_with_the_same_refs_everywhere() -> None:
    bus = cluster("a", "b")
    bus.track("a", 1, "alice", {"v": 1}, "r1")
    bus.pump()
    bus.take_diffs("a"), bus.take_diffs("b")
    bus.track("a", 1, "alice", {"v": 2}, "r2")
    bus.pump()
    for node in "ab":
        assert bus.take_diffs(node) == [{
            "joins": {"alice": {"metas": [{"phx_ref": "r2", "phx_ref_prev": "r1", "v": 2}]}},
            "leaves": {"alice": {"metas": [{"phx_ref": "r1", "v": 1}]}},
        }]
    bus.untrack("a", 1)
    bus.pump()
    for node in "ab":
        assert bus.take_diffs(node) == [{
            "joins": {}, "leaves": {"alice": {"metas": [{"phx_ref": "r2", "phx_ref_prev": "r1", "v": 2}]}}}]
    assert bus.states() == {"a": {}, "b": {}}
    # untracking an owner that tracks nothing publishes nothing
    assert bus.replicas["a"].untrack_op(TOPIC, (1, "realtime:room1")) is None


def test_own_ops_are_applied_once_and_own_node_is_not_a_peer() -> None:
    bus = cluster("a", "b")
    bus.track("a", 1, "alice", {}, "r1")
    bus.heartbeat("a", users=5)
    bus.pump()
    a = bus.replicas["a"]
    assert "a" not in a.peers and "a" in bus.replicas["b"].peers
    assert keys_of(a.state_payload(TOPIC)) == {"alice": [{"phx_ref": "r1"}]}
    assert len(bus.take_diffs("a")) == 1
    # its own state answer and its own sync request coming back change nothing on it
    diffs, replies = a.apply("a", a.state_op(), bus.now)
    assert (diffs, replies) == ([], [])
    diffs, replies = a.apply("a", PresenceReplica.sync_op(), bus.now)
    assert (diffs, replies) == ([], [])
    assert keys_of(a.state_payload(TOPIC)) == {"alice": [{"phx_ref": "r1"}]}
    # its own heartbeat is not counted as another node's users
    assert a.cluster_totals() == (0, 0.0, 0.0, 0.0)


def test_a_lost_op_triggers_sync_and_the_state_answer_repairs_the_replica() -> None:
    bus = cluster("a", "b")
    bus.heartbeat("a")  # introductions: each new peer is synced once
    bus.heartbeat("b")
    bus.pump()
    bus.sent.clear()
    bus.track("a", 1, "alice", {}, "r1")
    bus.pump()
    bus.drop.add(("a", "b", "track", 2))  # b never gets a's second op
    bus.track("a", 2, "anna", {}, "r2")
    bus.pump()
    assert "anna" not in bus.replicas["b"].state_payload(TOPIC)
    bus.take_diffs("b")
    bus.track("a", 3, "ada", {}, "r3")
    bus.pump()
    # b saw version 3 after 1: it asked a (and only a) for its state, a answered
    syncs = [(o, op) for o, op in bus.sent if isinstance(op, SyncRequest)]
    assert syncs == [("b", SyncRequest("a"))]
    assert any(o == "a" and encode_op(op)["op"] == "state" for o, op in bus.sent)
    states = bus.states()
    assert states["a"] == states["b"]
    assert set(states["b"]) == {"alice", "anna", "ada"}
    # b's diffs: ada (the op itself), anna (repaired by the state); nothing for alice again
    joined = [k for d in bus.take_diffs("b") for k in d["joins"]]
    assert sorted(joined) == ["ada", "anna"]


def test_a_heartbeat_ahead_of_the_applied_version_triggers_sync() -> None:
    bus = cluster("a", "b")
    bus.track("a", 1, "alice", {}, "r1")
    bus.pump()
    bus.drop.add(("a", "b", "untrack", 2))
    bus.untrack("a", 1)
    bus.pump()
    assert "alice" in bus.replicas["b"].state_payload(TOPIC)
    bus.take_diffs("b")
    bus.heartbeat("a")
    bus.pump()
    assert bus.states() == {"a": {}, "b": {}}
    assert bus.take_diffs("b") == [{"joins": {}, "leaves": {"alice": {"metas": [{"phx_ref": "r1"}]}}}]


def test_an_unknown_node_is_asked_for_its_state() -> None:
    a, b = PresenceReplica("a"), PresenceReplica("b")
    # a heartbeat from a node b has never heard of (b started after a's ops went by)
    a.track_op(TOPIC, 1, "alice", {}, "r1")
    _, replies = b.apply("a", a.heartbeat_op(0, 0, 0, 0), 0.0)
    assert replies == [SyncRequest("a")]
    # a node's very first track needs no sync: nothing came before it
    c = PresenceReplica("c")
    _, replies = c.apply("b", b.track_op(TOPIC, 1, "bob", {}, "rb"), 0.0)
    assert replies == []
    # a sync addressed to another node is not answered; one to us or to all is
    assert b.apply("a", PresenceReplica.sync_op("c"), 0.0)[1] == []
    assert [encode_op(r)["op"] for r in b.apply("a", PresenceReplica.sync_op("b"), 0.0)[1]] == ["state"]
    assert [encode_op(r)["op"] for r in b.apply("a", PresenceReplica.sync_op(None), 0.0)[1]] == ["state"]


def test_a_new_node_learns_everything_from_state_answers() -> None:
    bus = cluster("a", "b")
    bus.track("a", 1, "alice", {"x": 1}, "ra")
    bus.track("b", 1, "bob", {"y": 2}, "rb")
    bus.pump()
    bus.take_diffs("a"), bus.take_diffs("b")
    bus.add(PresenceReplica("c"))
    bus.publish("c", PresenceReplica.sync_op())  # what Node.start does
    bus.pump()
    states = bus.states()
    assert states["c"] == states["a"] == states["b"]
    assert set(states["c"]) == {"alice", "bob"}
    # the old nodes re-applied each other's state answer: nothing changed, so no diff
    assert bus.take_diffs("a") == [] and bus.take_diffs("b") == []
    assert sorted(k for d in bus.take_diffs("c") for k in d["joins"]) == ["alice", "bob"]


def test_state_replacement_produces_diffs_only_for_changes() -> None:
    a, b = PresenceReplica("a"), PresenceReplica("b")
    ops = [a.track_op(TOPIC, 1, "keep", {"k": 1}, "r-keep"),
           a.track_op(TOPIC, 2, "gone", {"g": 1}, "r-gone"),
           a.track_op(TOPIC, 3, "same-owner", {"v": 1}, "r-old")]
    for op in ops:
        a.apply("a", op, 0.0)
        b.apply("a", op, 0.0)
    # on a (b misses these): "gone" leaves, "same-owner" updates, "new" joins
    untrack = a.untrack_op(TOPIC, 2)
    assert untrack is not None
    a.apply("a", untrack, 0.0)
    a.apply("a", a.track_op(TOPIC, 3, "same-owner", {"v": 2}, "r-new"), 0.0)
    a.apply("a", a.track_op(TOPIC, 4, "new", {}, "r-4"), 0.0)
    diffs, replies = b.apply("a", a.state_op(), 1.0)
    assert replies == []
    payloads = [d.payload() for s, d in diffs]
    assert all(s == TOPIC for s, _ in diffs)
    joins = {k: m for p in payloads for k, v in p["joins"].items() for m in v["metas"]}
    leaves = {k: m for p in payloads for k, v in p["leaves"].items() for m in v["metas"]}
    assert set(joins) == {"same-owner", "new"}
    assert joins["same-owner"]["phx_ref"] == "r-new" and joins["same-owner"]["v"] == 2
    assert set(leaves) == {"gone", "same-owner"}
    assert leaves["same-owner"]["phx_ref"] == "r-old"
    assert "keep" not in joins and "keep" not in leaves
    assert b.state_payload(TOPIC) == a.state_payload(TOPIC)
    # the same state once more: nothing changes, no diffs
    assert b.apply("a", a.state_op(), 2.0) == ([], [])


def test_silent_node_expires_after_ttl_and_not_before() -> None:
    bus = cluster("a", "b", "c")
    bus.track("a", 1, "alice", {}, "ra1")
    bus.track("a", 2, "anna", {}, "ra2")
    bus.track("b", 1, "bob", {}, "rb1")
    bus.pump()
    for n in "abc":
        bus.take_diffs(n)
    bus.remove("a")  # SIGKILL: a publishes nothing more
    t_last = bus.now
    # b and c keep heartbeating; a's members stay until NODE_TTL_S of silence has passed
    while bus.now - t_last < NODE_TTL_S:
        bus.now += HEARTBEAT_S / 2
        bus.heartbeat("b")
        bus.heartbeat("c")
        bus.pump()
        if bus.now - t_last <= NODE_TTL_S:
            for n in "bc":
                assert bus.replicas[n].expire(bus.now) == []
    assert set(bus.replicas["c"].state_payload(TOPIC)) == {"alice", "anna", "bob"}
    bus.now = t_last + NODE_TTL_S + 0.01
    for n in "bc":
        diffs = bus.replicas[n].expire(bus.now)
        assert [s for s, _ in diffs] == [TOPIC]
        payload = diffs[0][1].payload()
        assert payload["joins"] == {}
        assert keys_of(payload["leaves"]) == {"alice": [{"phx_ref": "ra1"}], "anna": [{"phx_ref": "ra2"}]}
        assert "a" not in bus.replicas[n].peers
        assert set(bus.replicas[n].state_payload(TOPIC)) == {"bob"}
    # the live peers were kept (they heartbeated)
    assert set(bus.replicas["b"].peers) == {"c"}
    assert set(bus.replicas["c"].peers) == {"b"}


def test_restarted_node_never_resurrects_its_old_members() -> None:
    bus = cluster("a1", "b")
    bus.track("a1", 1, "alice", {"life": 1}, "r-old")
    bus.pump()
    dead = bus.remove("a1")
    bus.now += NODE_TTL_S + 1
    bus.replicas["b"].expire(bus.now)
    # the process comes back under a new random id, tracks the same user again, and asks for state
    bus.add(PresenceReplica("a2"))
    bus.publish("a2", PresenceReplica.sync_op())
    bus.track("a2", 1, "alice", {"life": 2}, "r-new")
    # a third node joining now hears only from the living
    bus.add(PresenceReplica("c"))
    bus.publish("c", PresenceReplica.sync_op())
    bus.pump()
    for node in ("a2", "b", "c"):
        assert keys_of(bus.replicas[node].state_payload(TOPIC)) == {"alice": [{"phx_ref": "r-new", "life": 2}]}
    # the dead node's replica kept its member, but nobody answers for it any more
    assert "r-old" in str(dead.state_payload(TOPIC))
    assert all("a1" not in r.peers for r in bus.replicas.values())


def test_restart_within_ttl_old_members_still_leave() -> None:
    bus = cluster("a1", "b")
    bus.track("a1", 1, "alice", {}, "r-old")
    bus.pump()
    bus.remove("a1")
    bus.add(PresenceReplica("a2"))
    bus.publish("a2", PresenceReplica.sync_op())
    bus.track("a2", 1, "alice", {}, "r-new")
    bus.pump()
    # until the TTL, b shows both lives of the member; the new node never reports the old one
    refs = [m["phx_ref"] for m in keys_of(bus.replicas["b"].state_payload(TOPIC))["alice"]]
    assert sorted(refs) == ["r-new", "r-old"]
    assert [m["phx_ref"] for m in keys_of(bus.replicas["a2"].state_payload(TOPIC))["alice"]] == ["r-new"]
    bus.now += NODE_TTL_S / 2
    bus.heartbeat("a2")
    bus.pump()
    bus.now += NODE_TTL_S / 2 + 0.5
    diffs = bus.replicas["b"].expire(bus.now)
    assert [d.payload() for _, d in diffs] == [{"joins": {}, "leaves": {"alice": {"metas": [{"phx_ref": "r-old"}]}}}]
    assert [m["phx_ref"] for m in keys_of(bus.replicas["b"].state_payload(TOPIC))["alice"]] == ["r-new"]


def test_cluster_totals_come_from_the_other_nodes_heartbeats() -> None:
    bus = cluster("a", "b", "c")
    bus.heartbeat("a", users=3, events=10.0, joins=1.0, presence=2.0)
    bus.heartbeat("b", users=4, events=5.5, joins=0.5, presence=1.0)
    bus.heartbeat("c", users=100, events=100.0, joins=100.0, presence=100.0)
    bus.pump()
    assert bus.replicas["c"].cluster_totals() == (7, 15.5, 1.5, 3.0)
    assert bus.replicas["a"].cluster_totals() == (104, 105.5, 100.5, 101.0)
    # the latest heartbeat replaces the previous figures (they are gauges, not increments)
    bus.heartbeat("a", users=1)
    bus.pump()
    assert bus.replicas["c"].cluster_totals() == (5, 5.5, 0.5, 1.0)
    # a node that went silent stops counting once it has expired
    bus.remove("b")
    bus.now += NODE_TTL_S + 0.1
    bus.replicas["c"].expire(bus.now)  # a's last heartbeat is as old as b's
    assert bus.replicas["c"].cluster_totals() == (0, 0.0, 0.0, 0.0)


def test_control_messages_keep_their_json_form_on_the_wire() -> None:
    """The backbone carries the same short-key objects as before the ops were typed, so nodes of
    either form interoperate; an op this node cannot read is ignored (``None``)."""
    a = PresenceReplica("a")
    track = a.track_op(TOPIC, (7, "realtime:room1"), "k", {"x": 1}, "ref1")
    assert encode_op(track) == {"op": "track", "s": TOPIC, "o": ["a", 7, "realtime:room1"], "k": "k",
                                "p": {"x": 1}, "r": "ref1", "v": 1}
    assert encode_op(a.heartbeat_op(3, 1.5, 2.0, 0.5)) == {"op": "hb", "v": 1, "u": 3, "e": 1.5, "j": 2.0, "p": 0.5}
    assert encode_op(PresenceReplica.sync_op()) == {"op": "sync", "to": None}
    a.apply("a", track, 0.0)
    assert encode_op(a.state_op()) == {"op": "state", "v": 1,
                                       "entries": [[TOPIC, ["a", 7, "realtime:room1"], "k", {"x": 1, "phx_ref": "ref1"}]]}
    for op in (track, a.untrack_op(TOPIC, (7, "realtime:room1")), a.heartbeat_op(0, 0, 0, 0), a.state_op(),
               PresenceReplica.sync_op("b")):
        assert op is not None and decode_op(encode_op(op)) == op
    assert decode_op({"op": "future-kind"}) is None
    assert decode_op({"op": "track"}) is None  # no stream
    assert decode_op({"op": "hb", "v": "not a number"}) is None
