"""Presence state and diffs (protocol.md §5.1–5.3, checklist items 74–78, 80)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from realtime_channels.protocol.presence import (
    PresenceDiff,
    RefGenerator,
    TopicPresence,
    entry_size,
    merge_diffs,
)

A = ("node1", "conn1", "realtime:room1")
B = ("node1", "conn2", "realtime:room1")
C = ("node2", "conn1", "realtime:room1")


def refs() -> RefGenerator:
    return RefGenerator(b"\x01\x02\x03\x04\x05\x06\x07\x08")


# --- track: item 74 ---------------------------------------------------------------------


@pytest.mark.compat(74)
def test_first_track_joins_payload_plus_ref_with_empty_leaves() -> None:
    p = TopicPresence()
    diff = p.track(A, "user-42", {"user": "alice", "online_at": "2024"}, "r1")
    assert diff is not None
    assert diff.payload() == {
        "joins": {"user-42": {"metas": [{"phx_ref": "r1", "user": "alice", "online_at": "2024"}]}},
        "leaves": {},
    }
    assert not diff.is_empty()


def test_meta_adds_nothing_but_phx_ref() -> None:
    p = TopicPresence()
    diff = p.track(A, "k", {}, "r1")
    assert diff is not None
    assert diff.joins == {"k": ({"phx_ref": "r1"},)}


def test_track_does_not_mutate_or_alias_caller_payload() -> None:
    payload: dict[str, Any] = {"user": "alice"}
    p = TopicPresence()
    p.track(A, "k", payload, "r1")
    assert payload == {"user": "alice"}
    payload["user"] = "mallory"
    assert p.tracked(A) == ("k", {"phx_ref": "r1", "user": "alice"})


def test_server_refs_win_over_payload_fields_of_the_same_name() -> None:
    p = TopicPresence()
    p.track(A, "k", {"phx_ref": "forged", "x": 1}, "r1")
    assert p.tracked(A) == ("k", {"phx_ref": "r1", "x": 1})


def test_diff_payload_is_json_serialisable() -> None:
    p = TopicPresence()
    diff = p.track(A, "k", {"n": [1, 2], "o": {"a": None}}, "r1")
    assert diff is not None
    assert json.loads(json.dumps(diff.payload())) == diff.payload()


# --- re-track: items 76, 77 -------------------------------------------------------------


def test_retrack_changed_payload_is_one_diff_with_join_prev_and_leave_old() -> None:
    p = TopicPresence()
    p.track(A, "user-42", {"user": "alice"}, "r1")
    diff = p.track(A, "user-42", {"user": "alice", "status": "away"}, "r2")
    assert diff is not None
    assert diff.payload() == {
        "joins": {
            "user-42": {
                "metas": [
                    {"phx_ref": "r2", "phx_ref_prev": "r1", "user": "alice", "status": "away"}
                ]
            }
        },
        "leaves": {"user-42": {"metas": [{"phx_ref": "r1", "user": "alice"}]}},
    }
    assert len(p) == 1
    assert p.tracked(A) == (
        "user-42",
        {"phx_ref": "r2", "phx_ref_prev": "r1", "user": "alice", "status": "away"},
    )


def test_second_update_points_prev_at_the_latest_ref() -> None:
    p = TopicPresence()
    p.track(A, "k", {"v": 1}, "r1")
    p.track(A, "k", {"v": 2}, "r2")
    diff = p.track(A, "k", {"v": 3}, "r3")
    assert diff is not None
    assert diff.joins == {"k": ({"phx_ref": "r3", "phx_ref_prev": "r2", "v": 3},)}
    assert diff.leaves == {"k": ({"phx_ref": "r2", "phx_ref_prev": "r1", "v": 2},)}


@pytest.mark.compat(77)
def test_retrack_identical_payload_produces_no_diff_and_keeps_ref() -> None:
    p = TopicPresence()
    p.track(A, "k", {"user": "alice", "n": {"deep": [1, 2]}}, "r1")
    assert p.track(A, "k", {"n": {"deep": [1, 2]}, "user": "alice"}, "r2") is None
    assert p.tracked(A) == ("k", {"phx_ref": "r1", "user": "alice", "n": {"deep": [1, 2]}})


@pytest.mark.parametrize(
    ("before", "after"),
    [({"v": True}, {"v": 1}), ({"v": 1}, {"v": 1.0}), ({"v": [0]}, {"v": [False]})],
)
def test_json_distinct_values_are_not_identical(before: Any, after: Any) -> None:
    p = TopicPresence()
    p.track(A, "k", before, "r1")
    diff = p.track(A, "k", after, "r2")
    assert diff is not None
    assert diff.joins["k"][0]["v"] == after["v"]
    assert type(diff.joins["k"][0]["v"]) is type(after["v"])


def test_retrack_under_a_new_key_leaves_old_key_and_joins_new_key() -> None:
    p = TopicPresence()
    p.track(A, "old", {"user": "alice"}, "r1")
    diff = p.track(A, "new", {"user": "alice"}, "r2")
    assert diff is not None
    assert diff.payload() == {
        "joins": {"new": {"metas": [{"phx_ref": "r2", "user": "alice"}]}},
        "leaves": {"old": {"metas": [{"phx_ref": "r1", "user": "alice"}]}},
    }
    assert p.state_payload() == {"new": {"metas": [{"phx_ref": "r2", "user": "alice"}]}}


# --- untrack: item 78 -------------------------------------------------------------------


def test_untrack_produces_leave_of_current_meta() -> None:
    p = TopicPresence()
    p.track(A, "k", {"v": 1}, "r1")
    p.track(A, "k", {"v": 2}, "r2")
    diff = p.untrack(A)
    assert diff is not None
    assert diff.payload() == {
        "joins": {},
        "leaves": {"k": {"metas": [{"phx_ref": "r2", "phx_ref_prev": "r1", "v": 2}]}},
    }
    assert len(p) == 0
    assert p.tracked(A) is None
    assert p.state_payload() == {}


def test_untrack_without_presence_is_none() -> None:
    p = TopicPresence()
    assert p.untrack(A) is None
    p.track(B, "k", {}, "r1")
    assert p.untrack(A) is None
    assert len(p) == 1


def test_track_after_untrack_is_a_fresh_join_without_prev() -> None:
    p = TopicPresence()
    p.track(A, "k", {"v": 1}, "r1")
    p.untrack(A)
    diff = p.track(A, "k", {"v": 1}, "r2")
    assert diff is not None
    assert diff.payload() == {"joins": {"k": {"metas": [{"phx_ref": "r2", "v": 1}]}}, "leaves": {}}


# --- several owners, one key (§5.3); state ordering (§5.2) ------------------------------


def test_several_owners_under_one_key_are_several_metas() -> None:
    p = TopicPresence()
    p.track(A, "bob", {"tab": 1}, "r1")
    p.track(B, "bob", {"tab": 2}, "r2")
    assert p.state_payload() == {
        "bob": {"metas": [{"phx_ref": "r1", "tab": 1}, {"phx_ref": "r2", "tab": 2}]}
    }
    diff = p.untrack(A)
    assert diff is not None
    assert diff.leaves == {"bob": ({"phx_ref": "r1", "tab": 1},)}
    assert p.state_payload() == {"bob": {"metas": [{"phx_ref": "r2", "tab": 2}]}}


def test_identical_payloads_of_different_owners_are_both_tracked() -> None:
    p = TopicPresence()
    assert p.track(A, "k", {"u": 1}, "r1") is not None
    assert p.track(B, "k", {"u": 1}, "r2") is not None
    assert len(p) == 2


def test_state_payload_follows_tracking_order_and_updates_move_to_the_end() -> None:
    p = TopicPresence()
    p.track(A, "k1", {"n": "a"}, "r1")
    p.track(B, "k2", {"n": "b"}, "r2")
    p.track(C, "k1", {"n": "c"}, "r3")
    state = p.state_payload()
    assert list(state) == ["k1", "k2"]
    assert [m["phx_ref"] for m in state["k1"]["metas"]] == ["r1", "r3"]
    # An update is a join of a new meta, which clients append (§5.4).
    p.track(A, "k1", {"n": "a2"}, "r4")
    state = p.state_payload()
    assert list(state) == ["k2", "k1"]
    assert [m["phx_ref"] for m in state["k1"]["metas"]] == ["r3", "r4"]
    assert p.owners() == [B, C, A]


def test_empty_topic_state_is_empty_object() -> None:
    assert TopicPresence().state_payload() == {}
    assert len(TopicPresence()) == 0
    assert TopicPresence().owners() == []


def test_case_of_key_is_preserved_verbatim() -> None:
    # Event-name case-insensitivity (item 80) is the caller's; state keeps keys as given.
    p = TopicPresence()
    p.track(A, "User", {}, "r1")
    p.track(B, "user", {}, "r2")
    assert list(p.state_payload()) == ["User", "user"]


# --- remove_owners (socket close / node loss, item 78) ----------------------------------


def test_remove_owners_drops_all_matches_in_one_leave_diff() -> None:
    p = TopicPresence()
    p.track(A, "k1", {"n": 1}, "r1")
    p.track(C, "k2", {"n": 2}, "r2")
    p.track(B, "k1", {"n": 3}, "r3")
    diff = p.remove_owners(lambda owner: isinstance(owner, tuple) and owner[0] == "node1")
    assert diff is not None
    assert diff.payload() == {
        "joins": {},
        "leaves": {"k1": {"metas": [{"phx_ref": "r1", "n": 1}, {"phx_ref": "r3", "n": 3}]}},
    }
    assert p.owners() == [C]
    assert p.state_payload() == {"k2": {"metas": [{"phx_ref": "r2", "n": 2}]}}


def test_remove_owners_without_match_is_none() -> None:
    p = TopicPresence()
    p.track(A, "k", {}, "r1")
    assert p.remove_owners(lambda owner: False) is None
    assert TopicPresence().remove_owners(lambda owner: True) is None
    assert len(p) == 1


# --- diffs and coalescing (§5.2, §5.6) --------------------------------------------------


def test_empty_diff() -> None:
    diff = PresenceDiff(joins={}, leaves={})
    assert diff.is_empty()
    assert diff.payload() == {"joins": {}, "leaves": {}}
    assert PresenceDiff(joins={"k": ()}, leaves={}).is_empty()
    assert PresenceDiff(joins={"k": ()}, leaves={}).payload() == {"joins": {}, "leaves": {}}


def test_merge_concatenates_per_key_in_order() -> None:
    p = TopicPresence()
    d1 = p.track(A, "k", {"v": 1}, "r1")
    d2 = p.track(B, "j", {"v": 2}, "r2")
    d3 = p.track(A, "k", {"v": 3}, "r3")
    d4 = p.untrack(B)
    assert d1 and d2 and d3 and d4
    merged = merge_diffs([d1, d2, d3, d4])
    assert merged is not None
    assert merged.joins == {
        "k": ({"phx_ref": "r1", "v": 1}, {"phx_ref": "r3", "phx_ref_prev": "r1", "v": 3}),
        "j": ({"phx_ref": "r2", "v": 2},),
    }
    assert merged.leaves == {
        "k": ({"phx_ref": "r1", "v": 1},),
        "j": ({"phx_ref": "r2", "v": 2},),
    }


def apply_like_client(state: dict[str, list[str]], diff: dict[str, Any]) -> None:
    """Phoenix client merge (§5.4): joins first, then leaves by phx_ref."""
    for key, entry in diff["joins"].items():
        state.setdefault(key, []).extend(m["phx_ref"] for m in entry["metas"])
    for key, entry in diff["leaves"].items():
        gone = {m["phx_ref"] for m in entry["metas"]}
        state[key] = [r for r in state.get(key, []) if r not in gone]
        if not state[key]:
            del state[key]


def test_merged_diff_yields_same_client_state_as_individual_diffs() -> None:
    p = TopicPresence()
    gen = refs()
    diffs = [
        p.track(A, "k", {"v": 1}, gen.next()),
        p.track(B, "k", {"v": 1}, gen.next()),
        p.track(A, "k", {"v": 2}, gen.next()),
        p.untrack(B),
        p.track(C, "z", {}, gen.next()),
        p.track(A, "m", {"v": 2}, gen.next()),
    ]
    real = [d for d in diffs if d is not None]
    one_by_one: dict[str, list[str]] = {}
    for d in real:
        apply_like_client(one_by_one, d.payload())
    merged = merge_diffs(real)
    assert merged is not None
    coalesced: dict[str, list[str]] = {}
    apply_like_client(coalesced, merged.payload())
    expected = {
        key: [m["phx_ref"] for m in entry["metas"]] for key, entry in p.state_payload().items()
    }
    assert coalesced == one_by_one == expected


def test_merge_of_nothing_or_empties_is_none() -> None:
    assert merge_diffs([]) is None
    assert merge_diffs([PresenceDiff(joins={}, leaves={})] * 3) is None


def test_merge_skips_empty_diffs() -> None:
    p = TopicPresence()
    d = p.track(A, "k", {}, "r1")
    assert d is not None
    merged = merge_diffs([PresenceDiff(joins={}, leaves={}), d])
    assert merged == PresenceDiff(joins={"k": ({"phx_ref": "r1"},)}, leaves={})


# --- refs (§5.2) ------------------------------------------------------------------------


def test_refs_unique_across_10k_calls() -> None:
    gen = refs()
    out = [gen.next() for _ in range(10_000)]
    assert len(set(out)) == len(out)
    assert all(isinstance(r, str) and r for r in out)


def test_refs_are_url_safe_text() -> None:
    gen = refs()
    allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    for _ in range(1000):
        assert set(gen.next()) <= allowed


def test_refs_from_different_seeds_do_not_collide() -> None:
    g1 = RefGenerator(b"node-one")
    g2 = RefGenerator(b"node-two")
    s1 = {g1.next() for _ in range(1000)}
    s2 = {g2.next() for _ in range(1000)}
    assert not s1 & s2


def test_same_seed_restarts_sequence() -> None:
    # Determinism is what makes refs testable; uniqueness across nodes is the seed's job.
    assert [refs().next() for _ in range(2)] == [refs().next()] * 2
    g = refs()
    assert g.next() != g.next()


def test_state_size_follows_tracks_retracks_and_leaves_and_bounds_the_wire_size() -> None:
    p = TopicPresence()
    p.track("a", "k1", {"blob": "x" * 1000}, "r1")
    p.track("b", "k2", {"blob": "é" * 500}, "r2")
    wire = len(json.dumps(p.state_payload(), ensure_ascii=False, separators=(",", ":")).encode())
    assert wire <= p.size == entry_size("k1", {"blob": "x" * 1000}) + entry_size("k2", {"blob": "é" * 500})
    assert p.size_with("a", entry_size("k1", {"blob": "y"})) == p.size - entry_size("k1", {"blob": "x" * 1000}) + entry_size("k1", {"blob": "y"})
    p.track("a", "k1", {"blob": "y"}, "r3")
    assert p.size == entry_size("k1", {"blob": "y"}) + entry_size("k2", {"blob": "é" * 500})
    p.untrack("a")
    assert p.size == entry_size("k2", {"blob": "é" * 500})
    p.remove_owners(lambda owner: owner == "b")
    assert p.size == 0 and p.size_with("c", 10) == 10


def test_retrack_of_an_identical_payload_with_integers_beyond_64_bits_changes_nothing() -> None:
    import orjson

    p = TopicPresence()
    p.track(A, "k", {"n": orjson.Fragment(b"18446744073709551616")}, "r1")
    assert p.track(A, "k", {"n": orjson.Fragment(b"18446744073709551616")}, "r2") is None
    assert p.track(A, "k", {"n": orjson.Fragment(b"18446744073709551617")}, "r3") is not None


def test_the_state_is_built_once_per_change_and_follows_every_change() -> None:
    state = TopicPresence()
    state.track("a", "k1", {"n": 1}, "r1")
    first, first_json = state.state_payload(), state.state_json()
    assert state.state_payload() is first and state.state_json() is first_json  # no change: reused
    assert json.loads(first_json) == first == {"k1": {"metas": [{"n": 1, "phx_ref": "r1"}]}}

    assert state.track("a", "k1", {"n": 1}, "r2") is None  # identical re-track: nothing changed
    assert state.state_json() is first_json

    steps = [
        lambda: state.track("b", "k2", {"n": 2}, "r3"),
        lambda: state.track("a", "k1", {"n": 9}, "r4"),
        lambda: state.untrack("b"),
        lambda: state.remove_owners(lambda owner: owner == "a"),
    ]
    for step in steps:
        before = state.state_json()
        step()
        assert state.state_json() is not before
        assert json.loads(state.state_json()) == state.state_payload()
    assert state.state_payload() == {} and state.state_json() == b"{}"
