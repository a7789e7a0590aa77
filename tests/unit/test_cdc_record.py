"""cdc/record.py: the ``data`` object of a postgres_changes message (protocol.md §6.5–§6.8),
built from decoded pgoutput tuples without a database."""

from __future__ import annotations

import orjson

from realtime_channels.cdc import pgoutput
from realtime_channels.cdc.catalog import ColumnInfo, TableInfo
from realtime_channels.cdc.filters import parse_filter, validate
from realtime_channels.cdc.record import MAX_RECORD_BYTES, NO_PK, UNAUTHORIZED, Row, full_data
from realtime_channels.cdc.types import Change

TS = "2024-06-01T10:00:00.123Z"
COLUMNS = (
    ColumnInfo("id", "int4", 23, 23, True, 1),
    ColumnInfo("meta", "jsonb", 3802, 3802, False, 2),
    ColumnInfo("body", "text", 25, 25, False, 3),
)
ALL = frozenset(c.name for c in COLUMNS)
REL = pgoutput.Relation(1, "public", "notes", "d", tuple(
    pgoutput.Column(1 if c.is_pk else 0, c.name, c.type_oid, -1) for c in COLUMNS))


def info(*, rls: bool = False, pk: tuple[str, ...] = ("id",)) -> TableInfo:
    return TableInfo(1, "public", "notes", COLUMNS, pk, rls)


def tup(*values: bytes | None | object) -> pgoutput.TupleData:
    return pgoutput.TupleData(tuple(values))  # type: ignore[arg-type]


def as_json(data: dict[str, object]) -> object:
    return orjson.loads(orjson.dumps(data))


def test_insert_has_typed_record_columns_and_no_old_record() -> None:
    row = Row(Change(REL, "INSERT", tup(b"7", b'{"a": 1}', b"hi"), None, None), info())
    data = as_json(row.data(row.column_set(ALL, None), TS))
    assert data == {
        "schema": "public", "table": "notes", "type": "INSERT", "commit_timestamp": TS,
        "columns": [{"name": "id", "type": "int4"}, {"name": "meta", "type": "jsonb"}, {"name": "body", "type": "text"}],
        "record": {"id": 7, "meta": {"a": 1}, "body": "hi"}, "errors": None,
    }


def test_update_with_key_only_old_tuple_and_with_full_identity() -> None:
    key_only = Row(Change(REL, "UPDATE", tup(b"7", None, b"new"), tup(b"7", None, None), "K"), info())
    assert key_only.old_record() == {"id": 7}
    no_old = Row(Change(REL, "UPDATE", tup(b"7", None, b"new"), None, None), info())
    assert no_old.old_record() == {"id": 7}  # the key of the new row
    full = Row(Change(REL, "UPDATE", tup(b"7", None, b"new"), tup(b"7", b"[1]", b"old"), "O"), info())
    assert as_json(full.old_record()) == {"id": 7, "meta": [1], "body": "old"}  # jsonb kept as its text


def test_unchanged_toast_value_is_filled_from_the_full_old_row_only() -> None:
    change = Change(REL, "UPDATE", tup(b"7", None, pgoutput.UNCHANGED), tup(b"7", None, b"big"), "O")
    assert Row(change, info()).new() == {"id": 7, "meta": None, "body": "big"}
    keyed = Change(REL, "UPDATE", tup(b"7", None, pgoutput.UNCHANGED), None, None)
    assert Row(keyed, info()).new() == {"id": 7, "meta": None}


def test_delete_on_an_rls_table_is_reduced_to_the_key() -> None:
    change = Change(REL, "DELETE", None, tup(b"7", b"{}", b"secret"), "O")
    data = as_json(Row(change, info(rls=True)).data(("id", "meta", "body"), TS))
    assert data["old_record"] == {"id": 7} and "record" not in data  # type: ignore[index,operator]
    assert as_json(Row(change, info()).data(("id", "meta", "body"), TS))["old_record"] == {  # type: ignore[index]
        "id": 7, "meta": {}, "body": "secret"}


def test_column_sets_follow_privileges_and_select_keeping_the_key() -> None:
    row = Row(Change(REL, "INSERT", tup(b"7", None, b"hi"), None, None), info())
    assert row.column_set(ALL, ("body",)) == ("id", "body")
    assert row.column_set(frozenset({"id", "body"}), None) == ("id", "body")
    assert row.column_set(frozenset({"body"}), None) == UNAUTHORIZED
    assert Row(row.change, info(pk=())).column_set(ALL, None) == NO_PK


def test_error_payloads() -> None:
    row = Row(Change(REL, "UPDATE", tup(b"7", None, b"x"), None, None), info())
    assert as_json(row.data(UNAUTHORIZED, TS)) == {
        "schema": "public", "table": "notes", "type": "UPDATE", "commit_timestamp": None, "columns": [],
        "errors": ["Error 401: Unauthorized"], "record": {}, "old_record": {}}
    nopk = as_json(Row(Change(REL, "INSERT", tup(b"7", None, b"x"), None, None), info()).data(NO_PK, TS))
    assert nopk["errors"] == ["Error 400: Bad Request, no primary key"] and "old_record" not in nopk  # type: ignore[index,operator]


def test_oversized_change_keeps_only_short_values() -> None:
    big = b"x" * (MAX_RECORD_BYTES + 1)
    row = Row(Change(REL, "INSERT", tup(b"7", b'{"a": 1}', big), None, None), info())
    data = as_json(row.data(row.column_set(ALL, None), TS))
    assert data["errors"] == ["Error 413: Payload Too Large"]  # type: ignore[index]
    assert data["record"] == {"id": 7, "meta": {"a": 1}}  # type: ignore[index]


def test_filters_match_the_text_form_and_deletes_use_the_old_identity() -> None:
    conds = validate(parse_filter("body=eq.hi"), {"id": "int4", "body": "text", "meta": "jsonb"})
    assert Row(Change(REL, "INSERT", tup(b"7", None, b"hi"), None, None), info()).matches(conds)
    assert not Row(Change(REL, "INSERT", tup(b"7", None, b"ho"), None, None), info()).matches(conds)
    key_only = Change(REL, "DELETE", None, tup(b"7", None, b"hi"), "K")
    assert not Row(key_only, info()).matches(conds)  # only identity columns count for DELETE
    assert Row(Change(REL, "DELETE", None, tup(b"7", None, b"hi"), "O"), info()).matches(conds)


def test_full_data_for_functions_is_plain_json() -> None:
    row = Row(Change(REL, "INSERT", tup(b"7", b'{"a": 1.50}', b"hi"), None, None), info())
    data = full_data(row, TS)
    assert data["record"] == {"id": 7, "meta": {"a": 1.5}, "body": "hi"}
    assert isinstance(data["record"]["meta"], dict)


def test_old_record_is_reduced_to_the_key_when_the_old_image_is_not_admitted() -> None:
    change = Change(REL, "UPDATE", tup(b"7", None, b"new"), tup(b"7", b"{}", b"old"), "O")
    row = Row(change, info(rls=True))
    assert as_json(row.data(("id", "meta", "body"), TS, old_shown=False))["old_record"] == {"id": 7}  # type: ignore[index]
    assert as_json(row.data(("id", "meta", "body"), TS))["old_record"] == {  # type: ignore[index]
        "id": 7, "meta": {}, "body": "old"}


def test_row_images_as_text_with_unchanged_toast_filled_from_the_old_row() -> None:
    change = Change(REL, "UPDATE", tup(b"7", None, pgoutput.UNCHANGED), tup(b"7", b"{}", b"big"), "O")
    row = Row(change, info())
    assert row.image_columns() == ("id", "meta", "body")
    assert row.image("new") == ["7", None, "big"]
    assert row.image("old") == ["7", "{}", "big"]
    unknown = Row(Change(REL, "UPDATE", tup(b"7", None, pgoutput.UNCHANGED), None, None), info())
    assert unknown.image("new") is None and unknown.image("old") is None
