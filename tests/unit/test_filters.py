"""postgres_changes filter grammar: parse, validate, match (protocol.md §6.2, checklist 91–93)."""

from __future__ import annotations

import uuid
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from realtime_channels.cdc.filters import (
    MAX_IN_ITEMS,
    Condition,
    FilterError,
    TypedCondition,
    matches,
    parse_filter,
    validate,
)

P = "Error parsing `filter` params: "

COLUMNS = {
    "id": "int4",
    "big": "int8",
    "small": "int2",
    "price": "numeric",
    "ratio": "float8",
    "r4": "float4",
    "name": "text",
    "code": "bpchar",
    "title": "varchar",
    "done": "bool",
    "uid": "uuid",
    "at": "timestamptz",
    "local": "timestamp",
    "day": "date",
    "clock": "time",
    "clocktz": "timetz",
    "doc": "jsonb",
    "raw": "json",
    "blob": "bytea",
    "tags": "_text",
    "nums": "_int4",
    "mood": "mood_enum",
    "status": "text",
}


def tc(text: str) -> tuple[TypedCondition, ...]:
    return validate(parse_filter(text), COLUMNS)


def ok(text: str, row: dict[str, Any]) -> bool:
    return matches(tc(text), row)


def err(fn: Any, *args: Any) -> str:
    with pytest.raises(FilterError) as info:
        fn(*args)
    return str(info.value)


# --- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [None, "", "   ", "\t\n"])
def test_empty_filter_is_no_filter(text: str | None) -> None:
    assert parse_filter(text) == ()
    assert matches(validate(parse_filter(text), COLUMNS), {}) is True


def test_single_condition() -> None:
    assert parse_filter("id=eq.5") == (Condition("id", "eq", False, "5"),)


def test_not_prefix_and_and_list() -> None:
    assert parse_filter("status=not.eq.draft,a=gt.1") == (
        Condition("status", "eq", True, "draft"),
        Condition("a", "gt", False, "1"),
    )


def test_value_keeps_dots_after_first() -> None:
    assert parse_filter("v=eq.1.5.x")[0].value == "1.5.x"


def test_whitespace_around_commas_is_ignored() -> None:
    assert parse_filter("  a=eq.1 ,  b=lt.2  ") == (
        Condition("a", "eq", False, "1"),
        Condition("b", "lt", False, "2"),
    )


def test_whitespace_around_equals_is_not_stripped_like_the_reference() -> None:
    # The reference only trims whole segments: "a =eq.1" names the column "a ".
    assert parse_filter("a =eq.1")[0].column == "a "
    assert err(validate, parse_filter("a =eq.1"), COLUMNS) == "invalid column for filter a "


def test_quoted_value_with_comma_and_parentheses() -> None:
    assert parse_filter('name=eq."a,b (c)",id=eq.1') == (
        Condition("name", "eq", False, "a,b (c)"),
        Condition("id", "eq", False, "1"),
    )


def test_quoted_value_escapes() -> None:
    assert parse_filter(r'name=eq."say \"hi\" \\ ok"')[0].value == 'say "hi" \\ ok'


def test_malformed_quotes_are_kept_verbatim() -> None:
    assert parse_filter('name=eq."abc')[0].value == '"abc'
    assert parse_filter('name=eq."a"b"')[0].value == '"a"b"'


def test_quote_inside_unquoted_value_is_literal() -> None:
    assert parse_filter('name=eq.a"b,id=eq.1') == (
        Condition("name", "eq", False, 'a"b'),
        Condition("id", "eq", False, "1"),
    )


def test_in_list_with_quotes_spaces_and_null() -> None:
    assert parse_filter('s=in.("a,b", c ,"NULL",NULL, "x\\"y")')[0] == Condition(
        "s", "in", False, ("a,b", "c", "NULL", None, 'x"y')
    )


def test_in_empty_list() -> None:
    assert parse_filter("s=in.()")[0].value == ()


def test_not_in() -> None:
    assert parse_filter("status=not.in.(draft,archived)")[0] == Condition(
        "status", "in", True, ("draft", "archived")
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a=eq.1,,b=eq.2", "filter must not contain empty segments (check for extra commas)"),
        ("a=eq.1,", "filter must not contain empty segments (check for extra commas)"),
        (",a=eq.1", "filter must not contain empty segments (check for extra commas)"),
        ("a=eq.1, ,b=eq.2", "filter must not contain empty segments (check for extra commas)"),
        ("subject=foo.hey", '["foo", "hey"]'),
        ("undefined", '["undefined"]'),
        ("a=eq", '["eq"]'),
        ("a=not.eq", '["eq"]'),
        ("a=not.not.eq.1", '["not", "eq.1"]'),
        ('a=x."q"', '["x", "\\"q\\""]'),
        ("a=x.#{y}", '["x", "\\#{y}"]'),
        ("a=x.\x01", '["x", <<1>>]'),
        ("s=in.a,b", "`in` filter value must be wrapped by parentheses"),
        ("s=in.(a,b", "`in` filter value must be wrapped by parentheses"),
        ("s=in.(a,,b)", 'malformed array literal: "{a,,b}"'),
        ("s=in.(a{b)", 'malformed array literal: "{a{b}"'),
        ("s=in.({a})", 'malformed array literal: "{{a}}"'),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    assert err(parse_filter, text) == P + message


def test_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_filter("subject=foo.hey")


# --- validation ------------------------------------------------------------------------------


def test_unknown_column() -> None:
    assert err(tc, "nope=eq.1") == "invalid column for filter nope"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id=eq.abc", 'invalid input syntax for type integer: "abc"'),
        ("id=eq.1.5", 'invalid input syntax for type integer: "1.5"'),
        ("id=eq.2147483648", 'value "2147483648" is out of range for type integer'),
        ("small=eq.40000", 'value "40000" is out of range for type smallint'),
        ("big=eq.9223372036854775808", 'value "9223372036854775808" is out of range for type bigint'),
        ("price=eq.1e", 'invalid input syntax for type numeric: "1e"'),
        ("ratio=eq.x", 'invalid input syntax for type double precision: "x"'),
        ("ratio=eq.1e400", '"1e400" is out of range for type double precision'),
        ("r4=eq.1e39", '"1e39" is out of range for type real'),
        ("done=eq.maybe", 'invalid input syntax for type boolean: "maybe"'),
        ("done=eq.o", 'invalid input syntax for type boolean: "o"'),
        ("uid=eq.123", 'invalid input syntax for type uuid: "123"'),
        ("at=eq.yesterdayish", 'invalid input syntax for type timestamp with time zone: "yesterdayish"'),
        ("at=eq.2024-13-01", 'date/time field value out of range: "2024-13-01"'),
        ("day=eq.2024-02-30", 'date/time field value out of range: "2024-02-30"'),
        ("clock=eq.25:00", 'date/time field value out of range: "25:00"'),
        ("doc=eq.{bad", 'invalid input syntax for type json: "{bad"'),
        ("blob=eq.\\xZZ", 'invalid input syntax for type bytea: "\\xZZ"'),
        ('nums=eq."{1,x}"', 'invalid input syntax for type integer: "x"'),
        ('nums=eq."{1,"', 'malformed array literal: "{1,"'),
        ("id=in.(1,x)", 'invalid input syntax for type integer: "x"'),
    ],
)
def test_cast_errors(text: str, message: str) -> None:
    assert err(tc, text) == message


def test_relative_time_words_are_refused() -> None:
    assert "depends on the current time" in err(tc, "at=gt.now")


def test_in_max_100_items() -> None:
    hundred = ",".join(str(i) for i in range(MAX_IN_ITEMS))
    (cond,) = tc(f"id=in.({hundred})")
    assert len(cond.value) == 100
    assert matches((cond,), {"id": 99}) and not matches((cond,), {"id": 100})
    assert err(tc, f"id=in.({hundred},100)") == "too many values for `in` filter. Maximum 100"


@pytest.mark.parametrize("value", ["nil", "NULL", "True", "1", ""])
def test_is_rejects_other_keywords(value: str) -> None:
    assert err(tc, f"done=is.{value}") == "invalid value for is filter: must be null, true, false, or unknown"


@pytest.mark.parametrize(("col", "display"), [("id", "integer"), ("name", "text"), ("at", "timestamp with time zone")])
def test_is_true_needs_boolean_column(col: str, display: str) -> None:
    assert err(tc, f"{col}=is.true") == f"is true filter requires a boolean column, got {display}"
    assert err(tc, f"{col}=not.is.unknown") == f"is unknown filter requires a boolean column, got {display}"
    assert tc(f"{col}=is.null")[0].value == "null"


@pytest.mark.parametrize("op", ["like", "ilike", "match", "imatch"])
@pytest.mark.parametrize(("col", "display"), [("id", "integer"), ("done", "boolean"), ("tags", "text[]"), ("doc", "jsonb")])
def test_pattern_ops_need_text_columns(op: str, col: str, display: str) -> None:
    assert err(tc, f"{col}={op}.x") == f"operator {op} requires a text-compatible column type, got {display}"


@pytest.mark.parametrize("col", ["name", "code", "title", "mood"])
def test_pattern_ops_allowed_on_text_like_columns(col: str) -> None:
    assert len(tc(f"{col}=like.a%,{col}=ilike.a%,{col}=match.^a,{col}=imatch.^a")) == 4


def test_json_only_supports_is_null() -> None:
    assert tc("raw=is.null")
    assert err(tc, "raw=eq.{}") == "operator eq is not supported for column type json (use jsonb)"


def test_in_on_array_column_is_refused() -> None:
    assert err(tc, "nums=in.(1,2)") == "operator in is not supported for array column type integer[]"


def test_typed_values() -> None:
    conds = tc(
        "id=eq.+42 ,price=eq.0.30,ratio=eq.1e3,done=eq.YES,uid=eq.{A0EEBC999C0B4EF8BB6D6BB9BD380A11},"
        "at=eq.2024-06-01 12:00:00.5+02,local=eq.2024-06-01T12:00+05,day=eq.2024-06-01,"
        'clock=eq.12:30,clocktz=eq.12:30-0130,blob=eq.\\x0aff,nums=eq."{1, 2 ,NULL}",doc=eq.{"a":1}'
    )
    assert [c.value for c in conds] == [
        42,
        Decimal("0.30"),
        1000.0,
        True,
        uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        datetime(2024, 6, 1, 10, 0, 0, 500000, tzinfo=timezone.utc),
        datetime(2024, 6, 1, 12, 0),  # timestamp without time zone ignores the offset
        date(2024, 6, 1),
        time(12, 30),
        time(12, 30, tzinfo=timezone(-timedelta(hours=1, minutes=30))),
        b"\x0a\xff",
        [1, 2, None],
        {"a": Decimal(1)},
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("t", True), ("tr", True), ("on", True), ("1", True), (" yes ", True), ("y", True),
     ("f", False), ("of", False), ("off", False), ("0", False), ("No", False), ("FALSE", False)],
)  # fmt: skip
def test_bool_input_rules(text: str, expected: bool) -> None:
    assert validate((Condition("done", "eq", False, text),), COLUMNS)[0].value is expected


def test_uuid_forms_are_normalised() -> None:
    u = uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    for text in ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "A0EEBC999C0B4EF8BB6D6BB9BD380A11", "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11"]:
        assert tc(f"uid=eq.{text}")[0].value == u


def test_fractional_seconds_round_to_microseconds() -> None:
    assert tc("at=eq.2024-01-01 00:00:00.1234565Z")[0].value == datetime(2024, 1, 1, 0, 0, 0, 123456, tzinfo=timezone.utc)
    assert tc("at=eq.2024-01-01 00:00:00.9999996Z")[0].value == datetime(2024, 1, 1, 0, 0, 1, tzinfo=timezone.utc)
    assert tc("at=eq.2024-01-01 24:00:00Z")[0].value == datetime(2024, 1, 2, tzinfo=timezone.utc)


# --- matching: the type matrix -----------------------------------------------------------------

UTC = timezone.utc
PLUS2 = timezone(timedelta(hours=2))

# (filter, matching row value, non-matching row value)
TYPE_MATRIX: list[tuple[str, Any, Any]] = [
    ("id=eq.5", 5, 6),
    ("big=gt.9007199254740992", 9007199254740993, 9007199254740992),  # beyond float precision
    ("price=eq.0.3", Decimal("0.3"), Decimal("0.30000000000000004")),  # 0.1+0.2 as a float is not 0.3
    ("price=eq.0.30", Decimal("0.3000"), Decimal("0.31")),
    ("price=lt.1e2", Decimal("99.999999999999999999"), Decimal("100")),
    ("ratio=eq.0.5", 0.5, 0.25),
    ("ratio=gt.1e10", 1e11, 1e9),
    ("r4=eq.0.1", 0.1, 0.2),
    ("name=eq.Hello", "Hello", "hello"),
    ("name=lt.b", "a", "b"),
    ("name=gt.Z", "a", "Z"),  # code-point order: lowercase sorts after uppercase
    ("code=eq.ab", "ab   ", "abc"),  # character(n) ignores trailing blanks
    ("title=eq.x", "x", "y"),
    ("done=eq.true", True, False),
    ("done=eq.f", False, True),
    ("uid=eq.A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), uuid.uuid4()),
    ("uid=eq.a0eebc999c0b4ef8bb6d6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12"),
    ("at=eq.2024-06-01 12:00:00+02", datetime(2024, 6, 1, 10, 0, tzinfo=UTC), datetime(2024, 6, 1, 12, 0, tzinfo=UTC)),
    ("at=eq.2024-06-01T10:00:00Z", datetime(2024, 6, 1, 12, 0, tzinfo=PLUS2), datetime(2024, 6, 1, 10, 0, tzinfo=PLUS2)),
    ("at=gte.2024-06-01 10:00:00.000001+00:00", datetime(2024, 6, 1, 10, 0, 0, 1, tzinfo=UTC), datetime(2024, 6, 1, 10, 0, tzinfo=UTC)),
    ("at=lt.2024-06-01 05:30-0530", datetime(2024, 6, 1, 10, 59, tzinfo=UTC), datetime(2024, 6, 1, 11, 0, tzinfo=UTC)),
    ("at=eq.2024-06-01 10:00", datetime(2024, 6, 1, 10, 0, tzinfo=UTC), datetime(2024, 6, 1, 10, 0, tzinfo=PLUS2)),
    ("at=gt.infinity", None, datetime(9999, 1, 1, tzinfo=UTC)),
    ("at=lt.infinity", datetime(9999, 1, 1, tzinfo=UTC), "infinity"),
    ("at=gt.-infinity", datetime(1, 1, 1, tzinfo=UTC), "-infinity"),
    ("local=eq.2024-06-01 10:00", datetime(2024, 6, 1, 10, 0), datetime(2024, 6, 1, 10, 1)),
    ("day=eq.2024-06-01", date(2024, 6, 1), date(2024, 6, 2)),
    ("day=lt.2024-6-1", date(2024, 5, 31), date(2024, 6, 1)),
    ("day=gt.epoch", date(1970, 1, 2), date(1970, 1, 1)),
    ("clock=eq.10:00", time(10, 0), time(10, 0, 1)),
    ("clocktz=eq.10:00+02", time(10, 0, tzinfo=PLUS2), time(8, 0, tzinfo=UTC)),  # same instant, other zone
    ("clocktz=lt.10:00+02", time(7, 59, tzinfo=UTC), time(8, 1, tzinfo=UTC)),
    (r'doc=eq."{\"b\": [1, 2.0], \"a\": true}"', {"a": True, "b": [1, 2]}, {"a": 1, "b": [1, 2]}),
    ("doc=eq.1", 1, True),
    (r'doc=neq."\"x\""', "y", "x"),  # PostgREST quotes are removed, so a JSON string needs escaped quotes
    ("doc=gt.true", [], False),  # jsonb order: array > boolean
    ("doc=lt.{}", [1, 2, 3], {}),  # ... and object > array
    ("blob=eq.\\x00ff", b"\x00\xff", b"\x00"),
    ("blob=eq.a\\\\b\\001", b"a\\b\x01", b"ab"),
    ('nums=eq."{1,2}"', [1, 2], [2, 1]),
    ('nums=lt."{1,2}"', [1, 1, 9], [1, 2, 0]),
    ('nums=eq."{1,NULL}"', [1, None], [1, 2]),
    ('tags=eq."{a,\\"b,c\\"}"', ["a", "b,c"], ["a", "b", "c"]),
    ("mood=eq.happy", "happy", "sad"),
]


@pytest.mark.parametrize(("text", "good", "bad"), TYPE_MATRIX)
def test_type_matrix(text: str, good: Any, bad: Any) -> None:
    col = text.split("=", 1)[0]
    conds = tc(text)
    if good is not None:
        assert matches(conds, {col: good})
    assert not matches(conds, {col: bad})


def test_float_sum_differs_from_numeric_literal() -> None:
    # A float8 column holding 0.1+0.2 is not 0.3; a numeric 0.1+0.2 is.
    assert not ok("ratio=eq.0.3", {"ratio": 0.1 + 0.2})
    assert ok("price=eq.0.3", {"price": Decimal("0.1") + Decimal("0.2")})


def test_nan_is_equal_to_itself_and_greatest() -> None:
    assert ok("ratio=eq.NaN", {"ratio": float("nan")})
    assert ok("ratio=gt.Infinity", {"ratio": float("nan")})
    assert ok("price=eq.nan", {"price": Decimal("NaN")})
    assert ok("price=gt.1e100", {"price": Decimal("NaN")})
    assert not ok("price=lt.1", {"price": Decimal("NaN")})


# --- every operator, with and without not. -----------------------------------------------------

OP_MATRIX: list[tuple[str, int, bool]] = [
    ("eq.5", 5, True), ("eq.5", 4, False),
    ("neq.5", 4, True), ("neq.5", 5, False),
    ("lt.5", 4, True), ("lt.5", 5, False),
    ("lte.5", 5, True), ("lte.5", 6, False),
    ("gt.5", 6, True), ("gt.5", 5, False),
    ("gte.5", 5, True), ("gte.5", 4, False),
    ("in.(1,5,9)", 5, True), ("in.(1,5,9)", 2, False),
    ("isdistinct.5", 4, True), ("isdistinct.5", 5, False),
]  # fmt: skip


@pytest.mark.parametrize(("op", "value", "expected"), OP_MATRIX)
def test_operators_and_negation(op: str, value: int, expected: bool) -> None:
    assert ok(f"id={op}", {"id": value}) is expected
    assert ok(f"id=not.{op}", {"id": value}) is (not expected)


TEXT_OPS: list[tuple[str, str, bool]] = [
    ("like.ab%", "abc", True), ("like.ab%", "xabc", False), ("like.AB%", "abc", False),
    ("like.a_c", "abc", True), ("like.a_c", "abbc", False),
    ("like.%\\%", "100%", True), ("like.%\\%", "100", False), ("like.a\\_c", "abc", False), ("like.a\\_c", "a_c", True),
    ("like.a%", "a\nb", True),
    ("ilike.AB%", "abc", True), ("ilike.AB%", "xab", False),
    ("match.^b", "bob", True), ("match.^b", "abob", False), ("match.o", "bob", True), ("match.B", "bob", False),
    ("imatch.B$", "bob", True), ("imatch.^x", "bob", False),
    ("match.b$", "ab\n", False),  # ARE `$` is the end of the string only
    ("match.a.b", "a\nb", True),  # `.` matches a newline in an ARE
    ("match.\\ybob\\y", "a bob b", True), ("match.\\ybob\\y", "abobb", False),
    ("match.\\mbob\\M", "x bob", True), ("match.\\mbob\\M", "xbob", False),
    ("match.^[[:alpha:]]+$", "héllo", True), ("match.^[[:alpha:]]+$", "h3llo", False),
    ("match.^[[:digit:]x]+$", "12x3", True), ("match.^[[:digit:]x]+$", "12y", False),
    ("match.^[^[:space:][:digit:]]+$", "abc", True), ("match.^[^[:space:][:digit:]]+$", "a c", False),
    ("match.^[]a]+$", "]a]", True),
    ("match.***=a.c", "xa.cx", True), ("match.***=a.c", "abc", False),
    ("eq.abc", "abc", True), ("lt.abd", "abc", True), ("gte.abd", "abc", False),
    ("in.(x,abc)", "abc", True), ("in.(\"a,b\",c)", "a,b", True), ("in.(\"a,b\",c)", "a", False),
    ("isdistinct.abc", "abd", True),
]  # fmt: skip


@pytest.mark.parametrize(("op", "value", "expected"), TEXT_OPS)
def test_text_operators_and_negation(op: str, value: str, expected: bool) -> None:
    assert ok(f"name={op}", {"name": value}) is expected
    assert ok(f"name=not.{op}", {"name": value}) is (not expected)


def test_quoted_value_matches_literal_text() -> None:
    assert ok('name=eq."a,b",id=eq.1', {"name": "a,b", "id": 1})
    assert ok(r'name=eq."x\"y"', {"name": 'x"y'})


# --- is / isdistinct / NULL ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filt", "value", "expected"),
    [
        ("is.null", None, True), ("is.null", False, False),
        ("not.is.null", None, False), ("not.is.null", True, True),
        ("is.true", True, True), ("is.true", False, False), ("is.true", None, False),
        ("not.is.true", True, False), ("not.is.true", False, True), ("not.is.true", None, True),
        ("is.false", False, True), ("is.false", None, False),
        ("not.is.false", None, True), ("not.is.false", False, False),
        ("is.unknown", None, True), ("is.unknown", True, False),
        ("not.is.unknown", None, False), ("not.is.unknown", False, True),
    ],
)  # fmt: skip
def test_is_semantics(filt: str, value: bool | None, expected: bool) -> None:
    assert ok(f"done={filt}", {"done": value}) is expected


def test_is_null_on_any_type() -> None:
    assert ok("name=is.null", {"name": None})
    assert not ok("name=is.null", {"name": ""})
    assert ok("raw=not.is.null", {"raw": {"a": 1}})


def test_isdistinct_with_null() -> None:
    assert ok("id=isdistinct.5", {"id": None})  # NULL IS DISTINCT FROM 5
    assert not ok("id=not.isdistinct.5", {"id": None})  # NULL IS NOT DISTINCT FROM 5 is false
    assert ok("id=not.isdistinct.5", {"id": 5})


@pytest.mark.parametrize(
    "filt",
    ["eq.5", "neq.5", "lt.5", "lte.5", "gt.5", "gte.5", "in.(5)", "not.eq.5", "not.neq.5", "not.lt.5", "not.in.(5)"],
)
def test_null_never_matches_comparisons(filt: str) -> None:
    assert not ok(f"id={filt}", {"id": None})


@pytest.mark.parametrize("filt", ["like.%", "ilike.%", "match..*", "not.like.x", "not.match.x"])
def test_null_never_matches_patterns(filt: str) -> None:
    assert not ok(f"name={filt}", {"name": None})


def test_in_with_null_item_is_unknown_when_no_item_equals() -> None:
    assert ok("id=in.(1,NULL)", {"id": 1})
    assert not ok("id=in.(1,NULL)", {"id": 2})
    assert not ok("id=not.in.(1,NULL)", {"id": 2})  # NOT (NULL) is NULL
    assert not ok("id=not.in.(1,NULL)", {"id": 1})


def test_in_empty_list_never_matches_and_not_in_empty_always_does() -> None:
    assert not ok("id=in.()", {"id": 1})
    assert ok("id=not.in.()", {"id": 1})
    assert not ok("id=not.in.()", {"id": None})


def test_in_casts_items_to_the_column_type() -> None:
    assert ok("price=in.(1.0,2)", {"price": Decimal("1")})
    assert ok("at=in.(2024-01-01 02:00+02)", {"at": datetime(2024, 1, 1, tzinfo=UTC)})
    assert ok("done=in.(t)", {"done": True}) and not ok("done=in.(t)", {"done": False})
    assert ok('name=in.("NULL")', {"name": "NULL"})


@pytest.mark.parametrize(
    "filt", ["id=eq.1", "id=is.null", "id=not.is.null", "id=isdistinct.1", "id=not.eq.2", "name=not.like.x"]
)
def test_absent_column_never_matches(filt: str) -> None:
    assert not ok(filt, {"other": 1})


def test_and_list_requires_every_condition() -> None:
    conds = tc("id=gt.1,id=lt.9")
    assert matches(conds, {"id": 5})
    assert not matches(conds, {"id": 1})
    assert not matches(conds, {"id": 9})


def test_checklist_91_92() -> None:
    assert ok("id=eq.5", {"id": 5}) and not ok("id=eq.5", {"id": 50})
    assert ok("status=in.(a,b)", {"status": "b"}) and not ok("status=in.(a,b)", {"status": "c"})
    assert not ok("status=not.eq.draft", {"status": "draft"}) and ok("status=not.eq.draft", {"status": "live"})


def test_row_value_of_wrong_type_does_not_match() -> None:
    assert not ok("id=eq.1", {"id": True})
    assert not ok("id=neq.1", {"id": "one"})
    assert not ok("at=eq.2024-01-01", {"at": 5})


# --- regular expressions ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "fragment"),
    [
        ("(", "invalid regular expression for match filter: parentheses () not balanced"),
        ("[abc", "invalid regular expression for match filter: brackets [] not balanced"),
        ("[[:nope:]]", "invalid regular expression for match filter: character class [:nope:] is not supported"),
        ("[[:print:]]", "invalid regular expression for match filter: character class [:print:] is not supported"),
        ("[[.a.]]", "invalid regular expression for match filter: collating elements and equivalence classes are not supported"),
        ("a**", "invalid regular expression for match filter: quantifier operand invalid"),
        ("(a)\\1", "invalid regular expression for match filter: back-references are not supported"),
        ("a(?=b)", "invalid regular expression for match filter: lookahead and lookbehind constraints are not supported"),
    ],
)
def test_regex_validated_at_subscribe(pattern: str, fragment: str) -> None:
    assert err(tc, f"name=match.{pattern}").startswith(fragment)


def test_imatch_error_names_imatch() -> None:
    assert err(tc, "name=imatch.(").startswith("invalid regular expression for imatch filter: ")


def test_like_must_not_end_with_escape() -> None:
    assert err(tc, "name=like.abc\\") == "LIKE pattern must not end with escape character"


def test_regex_with_comma_needs_quotes() -> None:
    assert ok('name=match."^a{1,2}$"', {"name": "aa"})
    assert not ok('name=match."^a{1,2}$"', {"name": "aaa"})
