"""Property-based fuzzing of everything that reads untrusted input without a network: the
frame codecs, the join parser, the filter grammar and the pattern compilers.

The property is the same everywhere: any input either yields a value or raises the error the
protocol answers with (``DecodeError``, a ``RealtimeError``, ``FilterError``) — never another
exception, which would become a traceback in the log and a dropped socket.  Runs are seeded
(``derandomize``), so a failure reproduces.
"""

from __future__ import annotations

import json
import string
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from realtime_channels.cdc.filters import FilterError, matches, parse_filter, validate
from realtime_channels.cdc.patterns import PatternError, compile_like, compile_regex
from realtime_channels.errors import DecodeError, RealtimeError
from realtime_channels.protocol.codec import Vsn, decode_binary, decode_text
from realtime_channels.protocol.join import parse_join

FUZZ = settings(max_examples=400, derandomize=True, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=25,
)
KEYS = ["topic", "event", "payload", "ref", "join_ref", "config", "broadcast", "presence",
        "postgres_changes", "private", "access_token", "key", "self", "ack", "enabled",
        "event", "schema", "table", "filter", "select", "replay", "since", "limit"]
protocolish = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12) | st.sampled_from(KEYS),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.sampled_from(KEYS), children, max_size=6),
    max_leaves=30,
)
filter_text = st.text(alphabet=string.printable + "éü()[]{},.\"'\\", max_size=60)
TABLE = {"id": "int4", "name": "text", "n": "numeric", "at": "timestamptz", "tags": "_text",
         "doc": "jsonb", "flag": "bool", "u": "uuid", "raw": "bytea", "c": "bpchar"}


@FUZZ
@given(st.sampled_from(list(Vsn)), st.one_of(st.text(max_size=200), protocolish.map(json.dumps)))
def test_text_frames_decode_or_raise_decode_error(vsn: Vsn, text: str) -> None:
    try:
        decode_text(vsn, text)
    except DecodeError:
        pass


@FUZZ
@given(st.sampled_from(list(Vsn)), st.binary(max_size=300))
def test_binary_frames_decode_or_raise_decode_error(vsn: Vsn, data: bytes) -> None:
    try:
        decode_binary(vsn, data)
    except DecodeError:
        pass


@FUZZ
@given(protocolish)
def test_join_payloads_parse_or_raise_a_protocol_error(payload: Any) -> None:
    try:
        parse_join(payload)
    except RealtimeError:
        pass


@FUZZ
@given(filter_text, st.dictionaries(st.sampled_from(list(TABLE)), json_values, max_size=6))
def test_filters_parse_validate_and_match_or_raise_filter_error(text: str, row: dict[str, Any]) -> None:
    try:
        conds = validate(parse_filter(text), TABLE)
    except FilterError:
        return
    assert matches(conds, row) in (True, False)


@FUZZ
@given(st.text(alphabet=string.printable + "éü", max_size=40), st.text(max_size=40))
def test_patterns_compile_or_raise_pattern_error(pattern: str, subject: str) -> None:
    for build in (lambda: compile_like(pattern, ignore_case=False), lambda: compile_like(pattern, ignore_case=True),
                  lambda: compile_regex(pattern, "match"), lambda: compile_regex(pattern, "imatch")):
        try:
            compiled = build()
        except PatternError:
            continue
        assert compiled.matches(subject) in (True, False)
