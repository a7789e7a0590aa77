"""cdc/router.py, cdc/bindings.py and cdc/txwire.py's share messages, without a database.

The router decides, for one decoded change, which subscriptions match, and groups the channels
by identical payload (topic, binding ids, visible columns); the hub then frames each group's
message once per wire format.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from realtime_channels import errors, hub
from realtime_channels.cdc import pgoutput, router
from realtime_channels.cdc.bindings import Binding, Sub, parse_binding, parse_conditions
from realtime_channels.cdc.catalog import ColumnInfo, TableInfo
from realtime_channels.cdc.filters import validate
from realtime_channels.cdc.record import NO_PK, Row
from realtime_channels.cdc.txwire import share_from_wire, share_to_wire
from realtime_channels.cdc.types import Change, FeedState, StateShare, Transaction, TxnShare
from realtime_channels.protocol.codec import Message, Vsn

COLUMNS = (
    ColumnInfo("id", "int4", 23, 23, True, 1),
    ColumnInfo("room", "text", 25, 25, False, 2),
    ColumnInfo("body", "text", 25, 25, False, 3),
)
INFO = TableInfo(1, "public", "notes", COLUMNS, ("id",), False)
RELATION = pgoutput.Relation(1, "public", "notes", "d", tuple(
    pgoutput.Column(1 if c.is_pk else 0, c.name, c.type_oid, -1) for c in COLUMNS))
ALL = frozenset(c.name for c in COLUMNS)


class Peer:
    """A connection as the router and the hub see it; records what it was given."""

    def __init__(self, vsn: Vsn = Vsn.V2) -> None:
        self.vsn = vsn
        self.frames: list[bytes] = []
        self.sent: list[Message] = []

    def write(self, frame: bytes) -> None:
        self.frames.append(frame)

    def send(self, msg: Message) -> None:
        self.sent.append(msg)


def insert(id_: int, room: str, body: str = "hi") -> Row:
    values = (str(id_).encode(), room.encode(), body.encode())
    return Row(Change(RELATION, "INSERT", pgoutput.TupleData(values), None, None), INFO)


def sub(peer: Peer, topic: str, bid: int, *, event: str = "*", flt: str | None = None,
        role: str = "anon", cohort: str = "c1", select: tuple[str, ...] | None = None) -> Sub:
    b = Binding(bid, event, "public", "notes", flt, select)
    conds = validate(parse_conditions(b), {c.name: c.type_name for c in COLUMNS})
    return Sub(peer, topic, ("public", "notes"), b, conds, role, {"role": role}, cohort)


def plan(row: Row, subs: list[Sub], visible: router.Seen | None, allowed: dict[str, frozenset[str]]) -> list[router.Group]:
    return router.plan(row, router.match(row, router.fans(subs)), visible, allowed)


def test_match_narrows_by_event_and_filter() -> None:
    p = Peer()
    subs = [sub(p, "realtime:a", 1), sub(p, "realtime:a", 2, event="DELETE"),
            sub(p, "realtime:a", 3, flt="room=eq.x"), sub(p, "realtime:a", 4, flt="room=eq.y")]
    matched = router.match(insert(1, "x"), router.fans(subs))
    assert [[b.id for b in bindings] for _, bindings in matched] == [[1, 3]]
    assert router.match(insert(1, "z"), router.fans([subs[3]])) == []


def test_fans_group_channels_with_identical_topic_bindings_and_role_by_cohort() -> None:
    a, b, c, d, e = Peer(), Peer(), Peer(), Peer(), Peer()
    subs = [sub(a, "realtime:r", 1), sub(a, "realtime:r", 2), sub(b, "realtime:r", 1), sub(b, "realtime:r", 2),
            sub(c, "realtime:r", 1), sub(d, "realtime:r", 1, cohort="other"), sub(e, "realtime:r", 1, role="x")]
    fans = router.fans(subs)
    assert [([s.binding.id for s in f.subs], f.role, {k: v[1] for k, v in f.cohorts.items()}) for f in fans] == [
        ([1, 2], "anon", {"c1": [a, b]}), ([1], "anon", {"c1": [c], "other": [d]}), ([1], "x", {"c1": [e]})]


def test_connections_with_different_claims_share_the_payload_without_rls() -> None:
    peers = [Peer() for _ in range(5)]
    subs = [sub(p, "realtime:r", 1, cohort=f"user-{i}") for i, p in enumerate(peers)]
    groups = plan(insert(1, "x"), subs, None, {"anon": ALL})
    assert len(groups) == 1 and groups[0].peers == tuple(peers)


def test_one_group_for_many_connections_on_the_same_topic_and_bindings() -> None:
    peers = [Peer(Vsn.V1 if i % 2 else Vsn.V2) for i in range(10)]
    subs = [sub(p, "realtime:room", 7) for p in peers]
    assert len(router.fans(subs)) == 1
    groups = plan(insert(1, "x"), subs, None, {"anon": ALL})
    assert len(groups) == 1
    assert groups[0].topic == "realtime:room" and groups[0].ids == (7,) and groups[0].peers == tuple(peers)
    assert groups[0].cols == ("id", "room", "body")


def test_groups_split_by_topic_ids_and_columns() -> None:
    a, b, c, d = Peer(), Peer(), Peer(), Peer()
    subs = [
        sub(a, "realtime:one", 1), sub(a, "realtime:one", 2),  # one channel, two matching bindings
        sub(b, "realtime:one", 1),                              # same topic, fewer ids
        sub(c, "realtime:two", 1),                              # another topic
        sub(d, "realtime:one", 1, select=("body",)),            # fewer columns (PK kept)
    ]
    groups = {(g.topic, g.ids, g.cols): g.peers for g in plan(insert(1, "x"), subs, None, {"anon": ALL})}
    assert groups == {
        ("realtime:one", (1, 2), ("id", "room", "body")): (a,),
        ("realtime:one", (1,), ("id", "room", "body")): (b,),
        ("realtime:two", (1,), ("id", "room", "body")): (c,),
        ("realtime:one", (1,), ("id", "body")): (d,),
    }


def test_rls_cohorts_and_column_privileges() -> None:
    seen, hidden, limited = Peer(), Peer(), Peer()
    subs = [sub(seen, "realtime:r", 1, cohort="yes"), sub(hidden, "realtime:r", 1, cohort="no"),
            sub(limited, "realtime:r", 1, cohort="yes", role="reader")]
    allowed = {"anon": ALL, "reader": frozenset({"id", "room"})}
    groups = plan(insert(1, "x"), subs, router.Seen({"yes"}, {"yes"}), allowed)
    assert router.cohorts(router.match(insert(1, "x"), router.fans(subs))) == {"yes": {"role": "anon"}, "no": {"role": "anon"}}
    assert {g.peers: g.cols for g in groups} == {(seen,): ("id", "room", "body"), (limited,): ("id", "room")}
    assert all(g.old_shown for g in groups)


def test_old_image_verdict_splits_groups() -> None:
    shown, key_only = Peer(), Peer()
    subs = [sub(shown, "realtime:r", 1, cohort="a"), sub(key_only, "realtime:r", 1, cohort="b")]
    groups = plan(insert(1, "x"), subs, router.Seen({"a", "b"}, {"a"}), {"anon": ALL})
    assert {g.peers: g.old_shown for g in groups} == {(shown,): True, (key_only,): False}


def test_needs_rls_only_for_inserts_and_updates_of_rls_tables_with_a_key() -> None:
    rls = TableInfo(1, "public", "notes", COLUMNS, ("id",), True)
    row = insert(1, "x")
    assert not router.needs_rls(row)
    assert router.needs_rls(Row(row.change, rls))
    delete = Change(RELATION, "DELETE", None, pgoutput.TupleData((b"1", None, None)), "K")
    assert not router.needs_rls(Row(delete, rls))
    assert not router.needs_rls(Row(row.change, TableInfo(1, "public", "notes", COLUMNS, (), True)))


def test_work_keeps_only_changes_of_subscribed_tables() -> None:
    other = pgoutput.Relation(2, "public", "other", "d", RELATION.columns)
    c1, c2 = insert(1, "x").change, Change(other, "INSERT", pgoutput.TupleData((b"1", b"x", b"y")), None, None)
    fans = router.fans([sub(Peer(), "realtime:a", 1)])
    table_fans = {("public", "notes"): fans}
    assert router.work(Transaction(1, 10, 11, 0, (c1, c2)), table_fans.get) == [(0, c1, fans)]


def test_hub_frames_a_group_once_per_wire_format() -> None:
    peers = [Peer(Vsn.V1), Peer(Vsn.V2), Peer(Vsn.V1), Peer(Vsn.V2)]
    data = orjson.Fragment(b'{"type":"INSERT"}')
    msg = Message("realtime:room", "postgres_changes", {"ids": [7], "data": data})
    assert hub.deliver(msg, peers) == 4
    assert peers[0].frames[0] is peers[2].frames[0]  # the same bytes object: built once
    assert peers[1].frames[0] is peers[3].frames[0]
    assert peers[0].frames[0].endswith(
        b'{"topic":"realtime:room","event":"postgres_changes","payload":{"ids":[7],"data":{"type":"INSERT"}},"ref":null}')
    assert peers[1].frames[0].endswith(b'[null,null,"realtime:room","postgres_changes",{"ids":[7],"data":{"type":"INSERT"}}]')


# --- bindings (protocol.md §6.1) -----------------------------------------------------------


@pytest.mark.parametrize(("event", "expected"), [
    ("insert", "INSERT"), ("Update", "UPDATE"), ("DELETE", "DELETE"), ("*", "*"), (None, "*"),
])
def test_event_names(event: Any, expected: str) -> None:
    raw = {"id": 1, "schema": "public", "table": "t"}
    if event is not None:
        raw["event"] = event
    assert parse_binding(raw).event == expected


@pytest.mark.parametrize(("event", "shown"), [("INSERTS", "'INSERTS'"), ("", "''"), (3, "'3'"), (["INSERT"], """'["INSERT"]'""")])
def test_unknown_event_is_refused(event: Any, shown: str) -> None:
    with pytest.raises(errors.UnknownEvent) as info:
        parse_binding({"id": 1, "event": event, "schema": "public", "table": "t"})
    assert info.value.message == (
        f"Unable to subscribe to changes with given parameters. Unknown event {shown}: "
        'expected "INSERT", "UPDATE", "DELETE" or "*"')
    assert isinstance(info.value, errors.SubscribeError) and not info.value.transient


def test_binding_parameter_errors_are_error_tree_classes() -> None:
    with pytest.raises(errors.SubscriptionParamsMissing):
        parse_binding({"id": 1, "event": "*"})
    with pytest.raises(errors.SelectParamsInvalid):
        parse_binding({"id": 1, "table": "t", "select": "id"})
    with pytest.raises(errors.SelectOnWildcard):
        parse_binding({"id": 1, "schema": "public", "select": ["id"]})
    with pytest.raises(errors.FilterError) as info:
        parse_conditions(parse_binding({"id": 1, "table": "t", "filter": "a=foo.b"}))
    assert str(info.value) == 'Error parsing `filter` params: ["foo", "b"]'
    assert errors.ChangesUnavailable().transient


# --- share messages between nodes --------------------------------------------------------------


def test_share_messages_round_trip_through_their_wire_form() -> None:
    txn = Transaction(5, 100, 101, 42, (insert(1, "x").change,))
    wire = share_to_wire(TxnShare(txn))
    assert wire["op"] == "txn"
    back = share_from_wire(orjson.loads(orjson.dumps(wire)))
    assert back == TxnShare(txn)
    state = share_to_wire(StateShare(FeedState.STREAMING))
    assert state == {"op": "state", "state": "streaming"}
    assert share_from_wire(state) == StateShare(FeedState.STREAMING)
    assert share_from_wire({"op": "state", "state": "bogus"}) is None
    assert share_from_wire({"op": "later"}) is None


def test_no_primary_key_marker() -> None:
    info = TableInfo(1, "public", "notes", COLUMNS, (), False)
    assert Row(insert(1, "x").change, info).column_set(ALL, None) == NO_PK
