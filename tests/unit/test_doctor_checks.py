"""The verdicts of ``doctor``'s pure checks for facts the integration tests cannot set up on a
shared cluster (roles altered cluster-wide, an old Redis) and the edges of each rule."""

from __future__ import annotations

from realtime_channels.doctor import (
    SlotFacts,
    TableFacts,
    check_keep_size,
    check_messages,
    check_publication,
    check_redis_version,
    check_roles,
    check_slot,
    check_tables,
    exit_status,
    ident,
    redact,
    warn,
)


def test_missing_client_roles_and_service_role_without_bypassrls() -> None:
    results = check_roles("realtime", {"anon": False, "service_role": False}, ["anon", "service_role"])
    assert [(r.status, r.what, r.fix) for r in results] == [
        ("fail", "client roles", "CREATE ROLE authenticated NOLOGIN NOINHERIT;"),
        ("fail", "role service_role", "ALTER ROLE service_role WITH BYPASSRLS;"),
    ]


def test_a_missing_role_is_not_also_reported_as_unreachable_by_membership() -> None:
    results = check_roles("Realtime", {"anon": False}, [])
    assert results[-1].fix == 'GRANT anon TO "Realtime";'
    assert results[0].fix == ("CREATE ROLE authenticated NOLOGIN NOINHERIT; "
                              "CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;")


def test_replica_identity_matters_only_when_updates_or_deletes_are_published() -> None:
    nothing = TableFacts("public", "t", "n", True, True)
    assert check_tables([nothing], publishes_update_or_delete=False)[0].status == "ok"
    assert check_tables([nothing], publishes_update_or_delete=True)[0].status == "fail"
    indexed = TableFacts("public", "u", "i", True, True)
    assert check_tables([indexed], True)[0].status == "ok"


def test_a_table_with_an_id_column_gets_it_as_primary_key() -> None:
    results = check_tables([TableFacts("app", "Events", "f", False, True)], True)
    assert [(r.check, r.fix) for r in results] == [("primary_key", 'ALTER TABLE app."Events" ADD PRIMARY KEY (id);')]


def test_an_empty_publication_is_a_warning() -> None:
    result = check_publication("supabase_realtime", True, [])
    assert (result.status, result.fix) == ("warn", "ALTER PUBLICATION supabase_realtime ADD TABLE public.<table>;")
    assert exit_status([result]) == 0


def test_slot_rules() -> None:
    def facts(lag_mb: float, status: str = "reserved", db: str = "app") -> SlotFacts:
        return SlotFacts(db, "pgoutput", status, False, lag_mb * 1024 * 1024)

    assert check_slot("s", facts(800), "app", 1024).status == "ok"
    over = check_slot("s", facts(820), "app", 1024)
    assert over.status == "fail" and "lag 820.0 MB of max_slot_wal_keep_size 1024.0 MB" in over.why
    assert check_slot("s", facts(5000), "app", -1).why == ""  # unlimited: no lag limit
    assert check_slot("s", facts(1, "unreserved"), "app", -1).status == "warn"
    other = check_slot("s", facts(1, db="other"), "app", 1024)
    assert other.status == "fail" and other.fix.startswith("SELECT pg_drop_replication_slot('s');")
    assert check_keep_size(1024) is None
    unlimited = check_keep_size(-1)
    assert unlimited is not None and unlimited.status == "warn"


def test_realtime_messages_without_rls_or_policies() -> None:
    assert check_messages(True, False, 3).fix == "ALTER TABLE realtime.messages ENABLE ROW LEVEL SECURITY;"
    none = check_messages(True, True, 0)
    assert none.status == "warn" and "refused for everyone" in none.why
    assert check_messages(True, True, 2).what == "realtime.messages (private channels): RLS on, 2 policies"


def test_redis_older_than_7_is_a_warning() -> None:
    assert check_redis_version("6.2.14").status == "warn"
    assert check_redis_version("7.2.4").status == "ok"


def test_passwords_never_shown() -> None:
    assert redact("postgresql://u:p%40ss@db.example:6543/app?sslmode=require") == \
        "postgresql://u:***@db.example:6543/app?sslmode=require"
    assert redact("redis://:pw@127.0.0.1/0", None) == "redis://@127.0.0.1/0"
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"


def test_identifiers_quoted_only_when_needed() -> None:
    assert ident("realtime") == "realtime"
    assert ident("my-role") == '"my-role"'
    assert ident('a"b') == '"a""b"'


def test_warnings_and_skips_do_not_fail() -> None:
    assert exit_status([warn("x", "x", "why")]) == 0
