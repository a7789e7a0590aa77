"""pgoutput decoder and to_jsonb converters against bytes captured from PostgreSQL 15.

The fixtures in ``data/pgoutput`` come from ``scripts/capture_pgoutput.py``: every message of a
scripted change stream (``messages.json``), PostgreSQL's own ``to_jsonb(row)::text`` for every
row image the stream carries (``images.json``) and the catalog facts used (``catalog.json``).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from realtime_channels.cdc.pgoutput import (
    UNCHANGED,
    Begin,
    Commit,
    Converter,
    Delete,
    Insert,
    Message,
    Origin,
    PgOutputError,
    PgOutputMessage,
    PrimaryKeepalive,
    Relation,
    Truncate,
    TupleData,
    TypeMsg,
    Update,
    XLogData,
    builtin_type_oid,
    commit_timestamp,
    decode_copy_data,
    decode_message,
    encode_standby_status,
    lsn_to_str,
    make_converter,
    parse_array_literal,
    str_to_lsn,
    type_name,
)

DATA = Path(__file__).parent / "data" / "pgoutput"
RAW: list[dict[str, Any]] = json.loads((DATA / "messages.json").read_text("utf-8"))
IMAGES: list[dict[str, str]] = json.loads((DATA / "images.json").read_text("utf-8"))
CATALOG: dict[str, Any] = json.loads((DATA / "catalog.json").read_text("utf-8"))
USER_TYPES: dict[str, dict[str, Any]] = CATALOG["user_types"]

# Columns whose to_jsonb number text is not the walsender's text: jsonb re-reads a float's
# output as numeric (1e+20 -> 100000000000000000000) and json is normalised by to_jsonb, so
# these are compared by value; every other number must match digit for digit.
BY_VALUE = {"float4", "float8", "_float4", "_float8", "json", "_json"}
TOASTED = {"big"}


def decoded() -> list[tuple[dict[str, Any], PgOutputMessage]]:
    return [(raw, decode_message(bytes.fromhex(raw["hex"]))) for raw in RAW]


def by_type(kind: type[Any]) -> list[Any]:
    return [m for _, m in decoded() if isinstance(m, kind)]


def relations() -> dict[str, list[Relation]]:
    out: dict[str, list[Relation]] = {}
    for rel in by_type(Relation):
        out.setdefault(rel.name, []).append(rel)
    return out


def relid(name: str) -> int:
    return relations()[name][0].relid


def converters(rel: Relation) -> list[Converter]:
    """Domains use their base type, arrays of user types their element (as replication.py
    would resolve from pg_type)."""
    out = []
    for col in rel.columns:
        info = USER_TYPES.get(str(col.type_oid))
        base = element = None
        if info is not None and info["type"] == "d":
            base = int(info["base"])
        elif info is not None and info["elem"] is not None:
            element = int(info["elem"])
            element_info = USER_TYPES[str(element)]
            if element_info["type"] == "d":
                element = int(element_info["base"])
        out.append(make_converter(col.type_oid, base, element))
    return out


def row(rel: Relation, data: TupleData) -> dict[str, Any]:
    """Typed row with UNCHANGED columns left out (protocol.md §6.7), as JSON-comparable data."""
    values = {
        col.name: None if value is None else conv(value)
        for col, conv, value in zip(rel.columns, converters(rel), data.values, strict=True)
        if value is not UNCHANGED
    }
    result: dict[str, Any] = load(orjson.dumps(values))
    return result


def load(text: str | bytes) -> Any:
    return json.loads(text, parse_float=Decimal, parse_int=Decimal)


def same(ours: Any, theirs: Any, exact: bool) -> bool:
    if isinstance(ours, dict) and isinstance(theirs, dict):
        return ours.keys() == theirs.keys() and all(
            same(ours[k], theirs[k], exact) for k in ours
        )
    if isinstance(ours, list) and isinstance(theirs, list):
        return len(ours) == len(theirs) and all(
            same(a, b, exact) for a, b in zip(ours, theirs, strict=True)
        )
    if isinstance(ours, Decimal) and isinstance(theirs, Decimal):
        return str(ours) == str(theirs) if exact else ours == theirs
    return type(ours) is type(theirs) and bool(ours == theirs)


def column_types(table: str) -> dict[str, str]:
    return {name: typname for name, typname, _ in CATALOG["columns"][table]}


def assert_row(table: str, ours: dict[str, Any], image: dict[str, Any], keys: set[str]) -> None:
    types = column_types(table)
    assert ours.keys() == keys
    for name in keys:
        exact = types[name] not in BY_VALUE
        assert same(ours[name], image[name], exact), (table, name, ours[name], image[name])


def pop_image(images: Iterator[dict[str, str]], kind: str, table: str) -> dict[str, Any]:
    image = next(images)
    assert (image["kind"], image["table"]) == (kind, table)
    result: dict[str, Any] = load(image["jsonb"])
    return result


def key_names(rel: Relation) -> set[str]:
    return {c.name for c in rel.columns if c.is_key}


# --- the captured stream ---------------------------------------------------------------------


def test_every_captured_message_decodes_to_its_kind() -> None:
    kinds = {
        "B": Begin, "C": Commit, "O": Origin, "R": Relation, "Y": TypeMsg, "I": Insert,
        "U": Update, "D": Delete, "T": Truncate, "M": Message,
    }
    seen = set()
    for raw, message in decoded():
        kind = chr(bytes.fromhex(raw["hex"][:2])[0])
        assert isinstance(message, kinds[kind])
        seen.add(kind)
    assert seen == set(kinds)


def test_begin_and_commit_agree() -> None:
    begin: Begin | None = None
    transactions = 0
    for raw, message in decoded():
        if isinstance(message, Begin):
            assert begin is None
            begin = message
            assert message.xid == raw["xid"]
        elif isinstance(message, Commit):
            assert begin is not None
            assert message.commit_lsn == begin.final_lsn
            assert message.end_lsn > message.commit_lsn
            assert message.commit_ts_us == begin.commit_ts_us
            assert message.flags == 0
            transactions += 1
            begin = None
    assert begin is None and transactions == 20


def test_rows_match_to_jsonb() -> None:
    """Every row image converted per column equals PostgreSQL's to_jsonb of that row."""
    rels: dict[int, Relation] = {}
    images = iter(IMAGES)
    checked = 0
    for _, message in decoded():
        if isinstance(message, Relation):
            rels[message.relid] = message
        elif isinstance(message, Insert):
            rel = rels[message.relid]
            image = pop_image(images, "new", rel.name)
            assert_row(rel.name, row(rel, message.new), image, set(image))
            checked += 1
        elif isinstance(message, Update):
            rel = rels[message.relid]
            old: dict[str, Any] | None = None
            if message.old is not None:
                old_image = pop_image(images, "old", rel.name)
                old = row(rel, message.old)
                check_old(rel, message.old_kind, old, old_image)
                checked += 1
            image = pop_image(images, "new", rel.name)
            new = row(rel, message.new)
            missing = set(image) - set(new)
            assert missing <= TOASTED
            if message.old_kind == "O" and old is not None:
                # §6.7: with REPLICA IDENTITY FULL the unchanged value is in the old row.
                new.update({name: old[name] for name in missing})
                missing = set()
            assert_row(rel.name, new, image, set(image) - missing)
            checked += 1
        elif isinstance(message, Delete):
            rel = rels[message.relid]
            image = pop_image(images, "old", rel.name)
            check_old(rel, message.old_kind, row(rel, message.old), image)
            checked += 1
    assert next(images, None) is None
    assert checked == len(IMAGES) == 23


def check_old(rel: Relation, kind: str | None, old: dict[str, Any], image: dict[str, Any]) -> None:
    if kind == "O":
        assert_row(rel.name, old, image, set(image))
    else:
        # 'K': key columns carry values, the others arrive as NULL (postgres-cdc.md).
        keys = key_names(rel)
        assert all(old[name] is None for name in set(old) - keys)
        assert_row(rel.name, {k: old[k] for k in keys}, image, keys)


def test_numeric_text_is_kept_exactly() -> None:
    rel = relations()["typed"][0]
    first = by_type(Insert)[0]
    values = dict(zip((c.name for c in rel.columns), first.new.values, strict=True))
    converted = {name: make_converter(c.type_oid)(values[name]) for c in rel.columns
                 if (name := c.name) in ("n", "n_fixed", "i8")}
    assert orjson.dumps(converted) == b'{"i8":9007199254740993,"n":12345.678900,"n_fixed":3.100}'


def test_unchanged_toast_with_replica_identity_full() -> None:
    update = next(u for u in by_type(Update) if u.relid == relid("toast_full"))
    assert update.old_kind == "O" and update.old is not None
    assert update.new.values[1] is UNCHANGED
    big = update.old.values[1]
    assert isinstance(big, bytes) and len(big) == 6400
    assert update.new.values[2] == b"n2" and update.old.values[2] == b"n1"


def test_unchanged_toast_with_replica_identity_default() -> None:
    updates = [u for u in by_type(Update) if u.relid == relid("toast_default")]
    assert updates[0].old is None and updates[0].old_kind is None
    assert updates[0].new.values == (b"1", UNCHANGED, b"n2")


def test_old_tuple_kinds() -> None:
    typed, full = relid("typed"), relid("toast_full")
    key_change = [u for u in by_type(Update) if u.relid == typed and u.old is not None]
    assert len(key_change) == 1 and key_change[0].old_kind == "K"
    old = key_change[0].old
    assert old is not None and old.values[0] == b"6"
    assert all(v is None for v in old.values[1:])
    deletes = {d.relid: d for d in by_type(Delete)}
    assert deletes[typed].old_kind == "K"
    assert deletes[full].old_kind == "O"
    assert all(isinstance(v, bytes) for v in deletes[full].old.values)


def test_relation_messages() -> None:
    rels = relations()
    typed = rels["typed"][0]
    assert (typed.namespace, typed.replica_identity) == ("public", "d")
    assert key_names(typed) == {"id"}
    assert [c.name for c in typed.columns] == [name for name, _, _ in CATALOG["columns"]["typed"]]
    assert [c.type_oid for c in typed.columns] == [int(o) for _, _, o in CATALOG["columns"]["typed"]]
    varchar = next(c for c in typed.columns if c.name == "vc")
    assert varchar.atttypmod == 20 + 4  # varchar(20): typmod includes the 4-byte header
    assert next(c for c in typed.columns if c.name == "tm").atttypmod == -1
    full = rels["toast_full"][0]
    assert full.replica_identity == "f" and key_names(full) == {"id", "big", "note"}
    nopk = rels["nopk"][0]
    assert nopk.replica_identity == "d" and key_names(nopk) == set()


def test_relation_is_resent_after_add_column() -> None:
    first, second = relations()["toast_default"]
    assert first.relid == second.relid
    assert [c.name for c in first.columns] == ["id", "big", "note"]
    assert [(c.name, c.type_oid) for c in second.columns][-1] == ("extra", 23)
    inserts = [i for i in by_type(Insert) if i.relid == first.relid]
    assert inserts[-1].new.values == (b"3", None, b"after alter", b"5")


def test_type_messages_for_user_types() -> None:
    """Enums are named as themselves; a domain is named by its base type, which
    builtin_type_oid turns into the base_type_oid make_converter needs."""
    types = {USER_TYPES[str(t.type_oid)]["name"]: t for t in by_type(TypeMsg)}
    assert types.keys() == {"mood", "_mood", "posint", "money_amount", "short_text"}
    assert (types["mood"].namespace, types["mood"].name) == ("public", "mood")
    assert (types["_mood"].namespace, types["_mood"].name) == ("public", "_mood")
    for domain in ("posint", "money_amount", "short_text"):
        msg = types[domain]
        base = USER_TYPES[str(msg.type_oid)]["base"]
        assert msg.namespace == "" and builtin_type_oid(msg.name) == int(base)
    assert builtin_type_oid("mood") is None


def test_truncate_message() -> None:
    (truncate,) = by_type(Truncate)
    assert truncate.relids == (relid("nopk"),) and truncate.options == 0


def test_logical_messages() -> None:
    transactional, plain = by_type(Message)
    assert (transactional.transactional, transactional.prefix) == (True, "rc")
    assert transactional.content == b"transactional"
    assert (plain.transactional, plain.content) == (False, "bytes é".encode())


def test_origin_message() -> None:
    (origin,) = by_type(Origin)
    assert origin.name == "upstream" and origin.commit_lsn == str_to_lsn("1/ABCDEF00")


# --- malformed input ---------------------------------------------------------------------------


@pytest.mark.parametrize("index", range(len(RAW)))
def test_truncated_message_raises(index: int) -> None:
    data = bytes.fromhex(RAW[index]["hex"])
    # Every cut for small messages; for the 6 KB TOAST rows the boundaries that matter.
    cuts = range(len(data)) if len(data) < 1200 else (*range(64), len(data) // 2, len(data) - 1)
    for cut in cuts:
        with pytest.raises(PgOutputError):
            decode_message(data[:cut])
    with pytest.raises(PgOutputError):
        decode_message(data + b"\x00")


@pytest.mark.parametrize(
    "data",
    [
        b"Z\x00",  # unknown message type
        b"S\x00\x00\x00\x01\x01",  # protocol 2 stream start: never requested
        b"I\x00\x00\x40\x00X\x00\x00",  # new-tuple marker missing
        b"D\x00\x00\x40\x00N\x00\x00",  # delete needs 'K' or 'O'
        b"I\x00\x00\x40\x00N\x00\x01x",  # unknown tuple value kind
        b"I\x00\x00\x40\x00N\x00\x01b\x00\x00\x00\x01\x01",  # binary values never requested
        b"I\x00\x00\x40\x00N\x00\x01t\xff\xff\xff\xff",  # negative length
    ],
)
def test_malformed_message_raises(data: bytes) -> None:
    with pytest.raises(PgOutputError):
        decode_message(data)


def test_memoryview_input() -> None:
    data = bytes.fromhex(next(r["hex"] for r in RAW if r["hex"].startswith("49")))
    assert decode_message(memoryview(data)) == decode_message(data)


# --- replication framing -----------------------------------------------------------------------


def test_xlogdata_carries_a_pgoutput_message() -> None:
    payload = bytes.fromhex(RAW[0]["hex"])
    frame = b"w" + struct.pack("!QQq", 0x16B374D848, 0x16B374D900, 770_551_200_123_456) + payload
    for buf in (frame, memoryview(frame)):
        msg = decode_copy_data(buf)
        assert isinstance(msg, XLogData)
        assert (msg.wal_start, msg.wal_end, msg.server_time_us) == (
            0x16B374D848, 0x16B374D900, 770_551_200_123_456)
        assert type(msg.payload) is type(buf)
        assert isinstance(decode_message(msg.payload), Begin)


def test_primary_keepalive() -> None:
    frame = b"k" + struct.pack("!Qq", 0x1_0000_0001, -5) + b"\x01"
    assert decode_copy_data(frame) == PrimaryKeepalive(0x1_0000_0001, -5, True)
    assert decode_copy_data(frame[:-1] + b"\x00").reply_requested is False  # type: ignore[union-attr]


@pytest.mark.parametrize("frame", [b"", b"w" + b"\x00" * 23, b"k" + b"\x00" * 16, b"k" + b"\x00" * 18, b"x1"])
def test_bad_copy_data_raises(frame: bytes) -> None:
    with pytest.raises(PgOutputError):
        decode_copy_data(frame)


def test_standby_status_layout() -> None:
    status = encode_standby_status(0x0102030405060708, 2, 3, 770_551_200_123_456, reply=True)
    assert len(status) == 34
    assert status[:9] == b"r\x01\x02\x03\x04\x05\x06\x07\x08"
    assert struct.unpack("!cQQQqB", status) == (b"r", 0x0102030405060708, 2, 3, 770_551_200_123_456, 1)
    assert encode_standby_status(1, 1, 1, 0)[-1] == 0


# --- LSN and timestamps ----------------------------------------------------------------------


def test_lsn_round_trip() -> None:
    assert lsn_to_str(0x16B374D848) == "16/B374D848"
    assert str_to_lsn("16/B374D848") == 0x16B374D848 == str_to_lsn("16/b374d848")
    assert lsn_to_str(0) == "0/0" and str_to_lsn("0/0") == 0
    assert lsn_to_str(2**64 - 1) == "FFFFFFFF/FFFFFFFF"
    for raw in RAW:
        assert lsn_to_str(str_to_lsn(raw["lsn"])) == raw["lsn"]


@pytest.mark.parametrize("text", ["", "16", "16/", "/1", "G/1", "1/123456789", "1/2/3", " 1/2", "-1/2"])
def test_bad_lsn_strings(text: str) -> None:
    with pytest.raises(ValueError):
        str_to_lsn(text)


def test_lsn_out_of_range() -> None:
    for lsn in (-1, 2**64):
        with pytest.raises(ValueError):
            lsn_to_str(lsn)


@pytest.mark.parametrize(
    ("us", "text"),
    [
        (0, "2000-01-01T00:00:00.000Z"),
        (999, "2000-01-01T00:00:00.000Z"),  # truncated, not rounded
        (1_999, "2000-01-01T00:00:00.001Z"),
        (770_551_200_123_456, "2024-06-01T10:00:00.123Z"),  # 8918 days + 10 h after 2000
        (770_551_200_999_999, "2024-06-01T10:00:00.999Z"),
        (-1, "1999-12-31T23:59:59.999Z"),
    ],
)
def test_commit_timestamp(us: int, text: str) -> None:
    assert commit_timestamp(us) == text


def test_commit_timestamp_of_captured_transactions() -> None:
    for begin in by_type(Begin):
        text = commit_timestamp(begin.commit_ts_us)
        assert len(text) == 24 and text.endswith("Z") and text[10] == "T"


# --- converters and type names ---------------------------------------------------------------


def test_type_names_match_the_catalog() -> None:
    for name, (oid, array) in CATALOG["builtin"].items():
        assert type_name(int(oid)) == name
        assert type_name(int(array)) == "_" + name
    for table in ("typed", "toast_full", "toast_default", "nopk"):
        for _, typname, oid in CATALOG["columns"][table]:
            expected = None if oid in USER_TYPES else typname
            assert type_name(int(oid)) == expected
    assert type_name(16384) is None


def dumps(oid: int, text: bytes, base: int | None = None, element: int | None = None) -> bytes:
    return orjson.dumps(make_converter(oid, base, element)(text))


@pytest.mark.parametrize(
    ("oid", "text", "json_text"),
    [
        (16, b"t", b"true"),
        (16, b"f", b"false"),
        (20, b"-9223372036854775808", b"-9223372036854775808"),
        (26, b"4294967295", b'"4294967295"'),  # to_jsonb keeps oid as a string
        (700, b"NaN", b'"NaN"'),
        (701, b"-Infinity", b'"-Infinity"'),
        (701, b"0.1", b"0.1"),
        (1700, b"-0.000100", b"-0.000100"),
        (1700, b"Infinity", b'"Infinity"'),
        (3802, b'{"a": [1, 2.50]}', b'{"a": [1, 2.50]}'),
        (1114, b"2024-06-01 10:00:00", b'"2024-06-01T10:00:00"'),
        (1114, b"0044-03-15 10:00:00 BC", b'"0044-03-15T10:00:00 BC"'),
        (1114, b"-infinity", b'"-infinity"'),
        (1184, b"2024-06-01 10:00:00.12345+00", b'"2024-06-01T10:00:00.12345+00:00"'),
        (1184, b"0044-03-15 10:00:00+00 BC", b'"0044-03-15T10:00:00+00:00 BC"'),
        (1184, b"2024-06-01 10:00:00+05:30", b'"2024-06-01T10:00:00+05:30"'),
        (1184, b"1900-01-01 10:00:00+00:09:21", b'"1900-01-01T10:00:00+00:09:21"'),
        (1184, b"infinity", b'"infinity"'),
        (1266, b"10:00:00+02", b'"10:00:00+02"'),
        (17, b"\\x0102", b'"\\\\x0102"'),
        (1007, b"{}", b"[]"),
        (1007, b"{{1,NULL},{NULL,4}}", b"[[1,null],[null,4]]"),
        (1007, b"[0:1]={1,2}", b"[1,2]"),
        (1009, b'{"NULL",NULL,"a\\"b","c\\\\d",""}', b'["NULL",null,"a\\"b","c\\\\d",""]'),
        (1231, b"{1.50,NaN}", b'[1.50,"NaN"]'),
        (199, b'{"{\\"a\\": 1}",null}', b'[{"a": 1},null]'),
        (1185, b'{"2024-06-01 10:00:00+00",infinity}', b'["2024-06-01T10:00:00+00:00","infinity"]'),
        (3905, b'{"[1,3)",empty}', b'["[1,3)","empty"]'),
        (999_999, b"(1,x)", b'"(1,x)"'),  # unknown types are their text
    ],
)
def test_converter(oid: int, text: bytes, json_text: bytes) -> None:
    assert dumps(oid, text) == json_text


def test_domains_and_user_arrays() -> None:
    assert dumps(16392, b"7", base=23) == b"7"
    assert dumps(16395, b"99.50", base=1700) == b"99.50"
    assert dumps(16392, b"7") == b'"7"'  # without its base a domain is only text
    assert dumps(16384, b"{sad,happy}", element=16385) == b'["sad","happy"]'
    assert dumps(16391, b"{1,NULL}", element=23) == b"[1,null]"


@pytest.mark.parametrize(
    "text", ["", "{", "{1", "{1,", '{"a}', '{"a"x}', "{1}x", "[0:1]{1}", "1,2", "{{1}"]
)
def test_malformed_array_literal_raises(text: str) -> None:
    with pytest.raises(PgOutputError):
        parse_array_literal(text)
    with pytest.raises(PgOutputError):
        make_converter(1007)(text.encode())


@pytest.mark.parametrize(("oid", "text"), [(23, b"x"), (20, b""), (701, b"1.2.3"), (1007, b"{1,x}")])
def test_value_not_of_its_type_raises(oid: int, text: bytes) -> None:
    with pytest.raises(PgOutputError):
        make_converter(oid)(text)


def test_array_literal_with_element_function() -> None:
    assert parse_array_literal('{{"x y"},{z}}', str.upper) == [["X Y"], ["Z"]]
