"""Join payload parsing (protocol.md §3.2) and binding echo/ids (§3.4, checklist 27-31)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import orjson
import pytest

from realtime_channels.protocol.join import (
    JoinParams,
    binding_id,
    echo_bindings,
    parse_flexible_bool,
    parse_join,
)

# --- flexible booleans (§3.2, checklist 27) ---------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        ("true", True),
        ("TRUE", True),
        ("True", True),
        ("false", False),
        ("FALSE", False),
        ("fAlSe", False),
    ],
)
def test_flexible_bool_accepted(value: Any, expected: bool) -> None:
    assert parse_flexible_bool(value) is expected
    assert parse_flexible_bool(value, default=not expected) is expected


@pytest.mark.parametrize("value", [None, 1, 0, 5, "yes", "1", "", " true", [], {}, 1.0])
def test_flexible_bool_invalid_takes_default(value: Any) -> None:
    assert parse_flexible_bool(value) is False
    assert parse_flexible_bool(value, default=True) is True


# --- parse_join -------------------------------------------------------------------------

SPEC_PAYLOAD: dict[str, Any] = {
    "config": {
        "broadcast": {
            "self": False,
            "ack": False,
            "replay": {"since": 1719000000000, "limit": 10},
            "replication_ready": False,
        },
        "presence": {"key": "user-42", "enabled": True},
        "postgres_changes": [
            {"event": "*", "schema": "public", "table": "messages", "filter": "room_id=eq.7"},
            {"event": "INSERT", "schema": "public", "table": "users", "select": ["id", "name"]},
        ],
        "private": False,
        "postgres_changes_options": {"wait": False, "timeout": 15000},
    },
    "access_token": "eyJhbGciOi.x.y",
    "version": "realtime-js/2.119.0",
}


def test_spec_example_payload() -> None:
    params = parse_join(SPEC_PAYLOAD)
    assert params == JoinParams(
        has_config=True,
        broadcast_self=False,
        broadcast_ack=False,
        replay={"since": 1719000000000, "limit": 10},
        replication_ready=False,
        presence_key="user-42",
        presence_enabled=True,
        postgres_changes=(
            {"event": "*", "schema": "public", "table": "messages", "filter": "room_id=eq.7"},
            {"event": "INSERT", "schema": "public", "table": "users", "select": ["id", "name"]},
        ),
        private=False,
        access_token="eyJhbGciOi.x.y",
        postgres_changes_options={"wait": False, "timeout": 15000},
    )


def test_empty_config_defaults() -> None:
    assert parse_join({"config": {}}) == JoinParams()


@pytest.mark.compat(27)
def test_string_booleans_everywhere() -> None:
    params = parse_join(
        {
            "config": {
                "broadcast": {"self": "true", "ack": "TRUE", "replication_ready": "True"},
                "presence": {"enabled": "tRuE"},
                "private": "true",
            }
        }
    )
    assert params.broadcast_self
    assert params.broadcast_ack
    assert params.replication_ready
    assert params.presence_enabled
    assert params.private
    off = parse_join(
        {"config": {"broadcast": {"self": "FALSE"}, "presence": {"enabled": "false"}, "private": "False"}}
    )
    assert not off.broadcast_self
    assert not off.presence_enabled
    assert not off.private


@pytest.mark.parametrize(
    "config",
    [
        {"private": 5},
        {"broadcast": "x"},
        {"broadcast": None},
        {"broadcast": [True]},
        {"presence": []},
        {"presence": None},
        {"presence": "on"},
        {"postgres_changes": None},
        {"postgres_changes": "all"},
        {"postgres_changes": {"event": "*"}},
        {"broadcast": {"self": 1, "ack": "yes", "replication_ready": None}},
        {"presence": {"enabled": 1, "key": None}},
    ],
)
@pytest.mark.compat(28)
def test_invalid_fields_take_defaults(config: dict[str, Any]) -> None:
    assert parse_join({"config": config}) == JoinParams()


def test_invalid_field_does_not_affect_valid_siblings() -> None:
    params = parse_join({"config": {"private": 5, "broadcast": {"self": True, "ack": "nah"}}})
    assert params.broadcast_self
    assert not params.broadcast_ack
    assert not params.private


def test_unknown_keys_ignored() -> None:
    payload = {
        "config": {"postgres_changes_options": {"wait": True}, "whatever": 1},
        "version": "realtime-js/2.119.0",
        "extra": [1, 2],
    }
    assert parse_join(payload) == JoinParams(postgres_changes_options={"wait": True})


@pytest.mark.parametrize("payload", [{}, {"access_token": "eyJ.a.b"}, None, [], "x", 5])
def test_missing_config_is_legacy_mode(payload: Any) -> None:
    params = parse_join(payload)
    assert params.has_config is False
    assert params.postgres_changes == ()


def test_config_null_is_not_legacy() -> None:
    params = parse_join({"config": None})
    assert params.has_config is True
    assert params == JoinParams()


def test_replay_raw_value_passed_through() -> None:
    assert parse_join({"config": {"broadcast": {"replay": "bogus"}}}).replay == "bogus"
    assert parse_join({"config": {"broadcast": {}}}).replay is None


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("user-42", "user-42"),
        ("", ""),
        (None, ""),
        (5, "5"),
        (True, "true"),
        (False, "false"),
        (1.5, "1.5"),
        ({"b": 1, "a": [1, "x"]}, '{"b":1,"a":[1,"x"]}'),
        ([1, 2], "[1,2]"),
        (2**70, str(2**70)),
    ],
)
def test_presence_key(key: Any, expected: str) -> None:
    assert parse_join({"config": {"presence": {"key": key}}}).presence_key == expected


def test_postgres_changes_drop_null_and_non_object_entries() -> None:
    b1 = {"event": "*", "schema": "public"}
    b2 = {"event": "INSERT", "schema": "public", "table": "t"}
    params = parse_join({"config": {"postgres_changes": [None, b1, 5, "x", [b2], b2, None]}})
    assert params.postgres_changes == (b1, b2)


# --- token choice (§3.2) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({}, None),
        ({"access_token": "eyJ.a.b"}, "eyJ.a.b"),
        ({"user_token": "eyJ.u.u"}, "eyJ.u.u"),
        ({"access_token": "eyJ.a.b", "user_token": "eyJ.u.u"}, "eyJ.u.u"),  # user_token wins
        ({"access_token": "sb_publishable_abc"}, None),
        ({"user_token": "sb_secret_abc"}, None),
        ({"access_token": "sb_x", "user_token": "eyJ.u.u"}, None),
        ({"access_token": "eyJ.a.b", "user_token": "sb_x"}, None),
        ({"access_token": None}, None),
        ({"access_token": 5}, None),
        ({"access_token": "eyJ.a.b", "user_token": 5}, "eyJ.a.b"),
        ({"access_token": "potato"}, "potato"),  # verified (and refused) later, §3.5
    ],
)
def test_token_choice(payload: dict[str, Any], expected: str | None) -> None:
    assert parse_join({"config": {}, **payload}).access_token == expected


# --- binding ids and echo (§3.4, checklist 30-31) ----------------------------------------


def test_binding_id_properties() -> None:
    binding = {"event": "*", "schema": "public", "table": "messages", "filter": "room_id=eq.7"}
    bid = binding_id(binding)
    assert isinstance(bid, int)
    assert 0 < bid < 2**27
    assert binding_id(dict(binding)) == bid
    assert binding_id(dict(reversed(list(binding.items())))) == bid  # key order irrelevant
    assert binding_id({**binding, "filter": "room_id=eq.8"}) != bid


def test_binding_id_null_same_as_absent() -> None:
    assert binding_id({"event": "*", "schema": "public", "filter": None}) == binding_id(
        {"event": "*", "schema": "public"}
    )


def test_binding_id_nested_key_order_irrelevant() -> None:
    a = {"event": "*", "schema": "public", "x": {"p": 1, "q": 2}}
    b = {"x": {"q": 2, "p": 1}, "schema": "public", "event": "*"}
    assert binding_id(a) == binding_id(b)


def test_binding_ids_nonzero_and_27_bit_over_many_bindings() -> None:
    ids = {binding_id({"event": "INSERT", "schema": "public", "table": f"t{i}"}) for i in range(2000)}
    assert all(0 < i < 2**27 for i in ids)
    assert len(ids) == 2000  # distinct parameters give distinct ids here (no collisions)


def test_binding_id_independent_of_hash_seed() -> None:
    # Python's str hash is salted per process; ids must agree across processes/nodes.
    binding = {"event": "UPDATE", "schema": "public", "table": "users", "filter": "id=eq.1"}
    code = (
        "import orjson,sys;from realtime_channels.protocol.join import binding_id;"
        "print(binding_id(orjson.loads(sys.argv[1])))"
    )
    outputs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code, orjson.dumps(binding).decode()],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        outputs.add(int(out.stdout))
    assert outputs == {binding_id(binding)}


def test_echo_bindings_preserves_keys_order_and_values() -> None:
    sent: list[dict[str, Any]] = [
        {"table": "messages", "event": "*", "filter": "room_id=eq.7", "schema": "public"},
        {"event": "insert", "schema": "public", "table": "users", "select": ["id", "name"], "filter": None},
        {"event": "*", "schema": "public"},
    ]
    echoed = echo_bindings(sent)
    assert len(echoed) == 3
    assert list(echoed[0]) == ["table", "event", "filter", "schema", "id"]
    assert list(echoed[1]) == ["event", "schema", "table", "select", "id"]  # null removed
    assert echoed[1]["event"] == "insert"  # not normalised
    assert "table" not in echoed[2]  # no "*" default added
    for original, echo in zip(sent, echoed, strict=True):
        assert echo["id"] == binding_id(original)
        assert {k: v for k, v in echo.items() if k != "id"} == {
            k: v for k, v in original.items() if v is not None
        }
    assert sent[1]["filter"] is None  # input not mutated


@pytest.mark.compat(31)
def test_echo_identical_bindings_get_identical_ids() -> None:
    b = {"event": "*", "schema": "public", "table": "t"}
    echoed = echo_bindings([b, dict(b), {"schema": "public", "table": "t", "event": "*"}])
    assert echoed[0]["id"] == echoed[1]["id"] == echoed[2]["id"]


def test_echo_empty() -> None:
    assert echo_bindings([]) == []


def test_echo_from_parsed_join_round_trip() -> None:
    params = parse_join(SPEC_PAYLOAD)
    echoed = echo_bindings(params.postgres_changes)
    wire = orjson.loads(orjson.dumps(echoed))
    assert [{k: v for k, v in e.items() if k != "id"} for e in wire] == list(params.postgres_changes)
    assert all(isinstance(e["id"], int) and e["id"] != 0 for e in wire)
