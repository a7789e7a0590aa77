"""``like``/``ilike``/``match``/``imatch`` filters: PostgreSQL's semantics, in linear time.

Every accepted pattern is checked against PostgreSQL's own ``LIKE``/``ILIKE``/``~``/``~*`` on
the same values; patterns that make a backtracking engine take exponential time are matched
against long values by a running server without holding up anyone (a later change and a
heartbeat still arrive).
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from support import make_token
from rawclient import V2, event_is, open_client, unique_topic

from realtime_channels.cdc.filters import matches, parse_filter, validate

SUBJECTS = [
    "", "a", "abc", "ABC", "aXc", "a\nb", "b\n", "hello world", "héllo", "Ünïcödé wörds",
    "bob", "a bob b", "abobb", "x bob", "xbob", "12x3", "12y", "a c", "]a]", "100%", "a_c",
    "tab\there", "under_score", "MiXeD CaSe", "x.y", "aaaa", "ab\\cd", "end$", "[x]", "a-b",
]

LIKE_PATTERNS = [
    "%", "a%", "%c", "a_c", "%b%", "a\\_c", "100\\%", "%\\%", "_", "__", "a%b%c", "%o%o%",
    "hello%", "%wörds", "H%", "%\n%", "x.y", "ab\\\\cd", "[x]", "%-%",
]

REGEX_PATTERNS = [
    "^a", "c$", "a.b", "^$", "b$", "a|b", "^(ab|cd)+$", "o+", "^a*$", "x{1,2}", "^[a-c]+$",
    "[^a-z]", "^[[:alpha:]]+$", "^[[:digit:]x]+$", "^[^[:space:][:digit:]]+$", "^[]a]+$",
    "[[:upper:]]", "[[:lower:]][[:upper:]]", "[[:punct:]]", "[[:xdigit:]]{2}", "\\d", "\\D",
    "\\w+\\s\\w+", "^\\W", "\\ybob\\y", "\\Ybob", "\\mbob\\M", "\\mw", "a\\.b", "x\\.y",
    "\\$", "\\[x\\]", "tab\\there", "\\u0061", "\\x61", "a\\nb", "(?:ab)+", "a+?b", "^.{3}$",
    "***=a.c", "***:^b", "(?i)^abc$", "(?c)abc", "^(a+)+$", "(a|aa)+$", "\\Aa", "c\\Z",
    "[a\\-c]", "é", "[[:alnum:]_]+", "^[^\\n]*$",
]


@pytest.fixture(scope="module")
def pg(pg_cluster: Any) -> Any:
    """A database with a UTF-8 character classification (as Supabase's are): PostgreSQL's
    regular expression classes follow the database's LC_CTYPE."""
    from pgcluster import database_dsn, drop_database

    with psycopg.connect(pg_cluster.dsn, autocommit=True) as admin:
        admin.execute("drop database if exists rc_patterns")
        admin.execute("create database rc_patterns template template0 encoding 'UTF8' locale 'C.UTF-8'")
    try:
        with psycopg.connect(database_dsn(pg_cluster, "rc_patterns"), autocommit=True) as conn:
            yield conn
    finally:
        drop_database(pg_cluster, "rc_patterns")


def ours(op: str, pattern: str, subject: str) -> bool:
    conds = validate(parse_filter(f'v={op}."{_quoted(pattern)}"'), {"v": "text"})
    return matches(conds, {"v": subject})


def _quoted(pattern: str) -> str:
    return pattern.replace("\\", "\\\\").replace('"', '\\"')


@pytest.mark.parametrize("op,sql_op,patterns", [
    ("like", "like", LIKE_PATTERNS),
    ("ilike", "ilike", LIKE_PATTERNS),
    ("match", "~", REGEX_PATTERNS),
    ("imatch", "~*", REGEX_PATTERNS),
])
def test_patterns_agree_with_postgres(pg: Any, op: str, sql_op: str, patterns: list[str]) -> None:
    cur = pg.execute(
        f"select p, s, s {sql_op} p from unnest(%s::text[]) p, unnest(%s::text[]) s",
        (patterns, SUBJECTS),
    )
    disagreements = [(p, s, want) for p, s, want in cur.fetchall() if ours(op, p, s) is not want]
    assert disagreements == [], disagreements


def test_quoted_values_reach_the_pattern_verbatim() -> None:
    assert ours("match", "a\\.b", "a.b") and not ours("match", "a\\.b", "axb")


@pytest.mark.parametrize("pattern,reason", [
    ("(a)\\1", "back-references are not supported"),
    ("a(?=b)", "lookahead and lookbehind constraints are not supported"),
    ("a(?<!b)", "lookahead and lookbehind constraints are not supported"),
    ("\\m-", "\\m is supported only before a word character"),
    ("[[:print:]]", "character class [:print:] is not supported"),
    ("[[.a.]]", "collating elements and equivalence classes are not supported"),
    ("(?x)a", "embedded option (x) is not supported"),
])
def test_constructs_an_automaton_cannot_run_are_refused(pg: Any, pattern: str, reason: str) -> None:
    """Refused with a clear error at subscribe time, although PostgreSQL runs them."""
    from realtime_channels.cdc.filters import FilterError

    with pytest.raises(FilterError) as err:
        validate(parse_filter(f'v=match."{_quoted(pattern)}"'), {"v": "text"})
    assert str(err.value) == f"invalid regular expression for match filter: {reason}"
    pg.execute("select 'x' ~ %s", (pattern,))


@pytest.mark.parametrize("filt,body", [
    ("body=match.^(a+)+$", "a" * 5000 + "b"),
    ("body=imatch.(a|aa)+$", "a" * 5000 + "b"),
    ("body=like.%a%a%a%a%a%a%a%a%x", "a" * 20000),
    ("body=ilike.%A%A%A%A%A%A%A%A%X", "a" * 20000),
])
async def test_pathological_patterns_do_not_hold_up_the_server(cdc: Any, filt: str, body: str) -> None:
    """With a backtracking engine each of these rows would take longer than the age of the
    universe; here the row is judged, and a row committed after it is delivered."""
    table = cdc.table("id int primary key, body text")
    bad, probe = unique_topic("bad"), unique_topic("probe")
    async with open_client(cdc.server, V2) as c:
        for topic, f in ((bad, filt), (probe, "id=eq.2")):
            reply = await c.join(topic, {"postgres_changes": [
                {"event": "INSERT", "schema": "public", "table": table, "filter": f}]},
                access_token=make_token("service_role"))
            assert reply.payload["status"] == "ok", reply.value
            frame = await c.expect(event_is("system", topic), 30)
            assert frame.payload["status"] == "ok", frame.value
        cdc.execute(f"insert into {table} values (1, %s)", (body,))
        cdc.execute(f"insert into {table} values (2, 'after')")
        await c.expect(event_is("postgres_changes", probe), 30)
        await c.assert_nothing_pending(event_is("postgres_changes", bad))
