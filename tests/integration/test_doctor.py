"""``realtime-channels doctor`` run as a subprocess against real PostgreSQL databases (one set up
as Supabase's are, one broken in every way the checks know), a real redis-server and a real
HTTP server handing out a JWKS."""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from pgcluster import PgCluster, create_database, drop_database
from realtime_channels.messages.migrations import migrate
from realtime_channels.tenants.crypto import Crypto
from realtime_channels.tenants.model import Tenant
from realtime_channels.tenants.store import TenantStore
from support import RedisServer, free_port

SECRET = "a-production-secret-of-more-than-32-characters"


def doctor(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("REALTIME_")}
    return subprocess.run([sys.executable, "-m", "realtime_channels", "doctor", *args], capture_output=True,
                          text=True, timeout=60, env={**base, **env})


def heads(out: str) -> list[str]:
    """The result lines (not the indented fixes)."""
    return [line for line in out.splitlines() if not line.startswith("  ")]


def fix_after(out: str, head: str) -> str:
    lines = out.splitlines()
    i = lines.index(head)
    assert lines[i + 1].startswith("  fix: "), lines[i:i + 2]
    return lines[i + 1].removeprefix("  fix: ")


def slot_names(tag: str) -> dict[str, str]:
    return {"REALTIME_SLOT_NAME": f"{tag}_changes", "REALTIME_MESSAGES_SLOT_NAME": f"{tag}_messages"}


HEALTHY_SQL = """
create table public.notes (id bigint primary key, body text);
grant usage on schema public to anon, authenticated, service_role;
grant select on public.notes to anon, authenticated, service_role;
create publication supabase_realtime for table public.notes;
create policy "authenticated read" on realtime.messages for select to authenticated using (true);
"""


@pytest.fixture(scope="module")
def healthy(pg_cluster: Any) -> Iterator[tuple[str, str]]:
    """A database as Supabase's: roles, grants, a published table with a primary key,
    realtime.messages with a policy, and both slots; connected to as a superuser."""
    tag = f"doctor_ok_{uuid.uuid4().hex[:6]}"
    dsn = create_database(pg_cluster, tag)

    async def setup() -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await migrate(conn)

    asyncio.run(setup())
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(HEALTHY_SQL)
        for slot in slot_names(tag).values():
            conn.execute("select pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
    yield dsn, tag
    drop_database(pg_cluster, tag)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    srv = RedisServer()
    srv.start()
    yield srv
    srv.cleanup()


def test_a_healthy_deployment_passes_every_check(healthy: tuple[str, str], redis_server: RedisServer) -> None:
    dsn, tag = healthy
    res = doctor("--database-url", dsn, REALTIME_JWT_SECRET=SECRET, REALTIME_REDIS_URL=redis_server.url,
                 **slot_names(tag))
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stderr == ""
    lines = res.stdout.splitlines()
    assert lines and all(line.startswith("✓ ") for line in lines), res.stdout
    assert lines[0] == f"✓ database {dsn} reachable"
    assert "✓ wal_level is logical" in lines
    assert "✓ role postgres may replicate (superuser)" in lines
    assert "✓ publication supabase_realtime holds public.notes" in lines
    assert "✓ 1 published table(s) have a primary key and a replica identity" in lines
    assert "✓ client roles anon, authenticated, service_role exist, service_role has BYPASSRLS" in lines
    assert "✓ client roles have USAGE on the schemas and SELECT on the published tables" in lines
    assert "✓ realtime.messages (private channels): RLS on, 1 policy" in lines
    assert f"✓ JWT secret: {len(SECRET)} characters" in lines
    assert any(re.fullmatch(r"✓ redis answers PING, version [7-9]\.\d+\.\d+", line) for line in lines), lines


def test_slot_lag_is_shown_in_megabytes(healthy: tuple[str, str]) -> None:
    dsn, tag = healthy
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("insert into public.notes select g, repeat('x', 500) from generate_series(1, 5000) g")
    res = doctor("--database-url", dsn, REALTIME_JWT_SECRET=SECRET, **slot_names(tag))
    line = next(x for x in res.stdout.splitlines() if x.startswith(f"✓ replication slot {tag}_changes"))
    m = re.fullmatch(rf"✓ replication slot {tag}_changes: wal_status reserved, lag (\d+\.\d) MB of "
                     r"max_slot_wal_keep_size 1024\.0 MB, no server reading it", line)
    assert m is not None, line
    assert float(m.group(1)) >= 1.0  # 5000 rows of 500 bytes were written since the slot was made


def test_json_lists_every_result(healthy: tuple[str, str]) -> None:
    dsn, tag = healthy
    res = doctor("--json", "--database-url", dsn, REALTIME_JWT_SECRET=SECRET, **slot_names(tag))
    assert res.returncode == 0, res.stdout + res.stderr
    results = json.loads(res.stdout)
    assert isinstance(results, list)
    assert all(set(r) == {"check", "status", "what", "why", "fix"} for r in results)
    by_check = {r["check"]: r for r in results}
    assert {"database", "wal_level", "replication", "publication", "replica_identity", "slot", "roles",
            "grants", "messages", "jwt", "redis"} <= set(by_check)
    assert by_check["redis"] == {"check": "redis", "status": "skip", "what": "redis",
                                 "why": "not configured (channels are shared within this process only)", "fix": ""}
    assert {r["status"] for r in results} == {"ok", "skip"}


BROKEN_SQL = """
create schema app;
create table public.nopk (body text);
create table app.nothing (id int primary key, body text);
alter table app.nothing replica identity nothing;
grant select on public.nopk to authenticated;
create publication doctor_pub for table public.nopk, app.nothing;
"""


@pytest.fixture
def broken(pg_cluster: Any) -> Iterator[tuple[str, str]]:
    """Published tables without a primary key or replica identity, missing grants, no
    realtime.messages, no slots, and a login role without REPLICATION or client-role membership."""
    tag = f"doctor_bad_{uuid.uuid4().hex[:6]}"
    dsn = create_database(pg_cluster, tag)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(BROKEN_SQL)
        conn.execute(f"create role {tag} login")
    yield dsn.replace("postgresql://postgres@", f"postgresql://{tag}@"), tag
    drop_database(pg_cluster, tag)
    with psycopg.connect(pg_cluster.dsn, autocommit=True) as conn:
        conn.execute(f"drop role {tag}")


def test_a_broken_database_names_each_problem_and_its_fix(broken: tuple[str, str]) -> None:
    dsn, tag = broken
    res = doctor("--database-url", dsn, REALTIME_PUBLICATION="doctor_pub", REALTIME_JWT_SECRET="short",
                 **slot_names(tag))
    assert res.returncode == 1, res.stdout + res.stderr
    out = res.stdout
    assert heads(out) == [
        f"✓ database {dsn} reachable",
        "✓ wal_level is logical",
        f"✗ role {tag}: has no REPLICATION: it cannot open the replication stream",
        "✓ publication doctor_pub holds app.nothing, public.nopk",
        "✗ replica identity of app.nothing: is NOTHING: PostgreSQL refuses its UPDATEs and DELETEs while they "
        "are published",
        "✗ replica identity of public.nopk: is DEFAULT without a primary key: PostgreSQL refuses its UPDATEs and "
        "DELETEs while they are published",
        "✗ primary key of public.nopk: missing: postgres_changes sends its changes as errors (no primary key)",
        f"! replication slot {tag}_changes: does not exist yet (the server creates it at its first start)",
        f"! replication slot {tag}_messages: does not exist yet (the server creates it at its first start)",
        "✓ client roles anon, authenticated, service_role exist, service_role has BYPASSRLS",
        f"✗ role {tag}: cannot switch to anon, authenticated, service_role (RLS is checked as the token's role)",
        "✗ grants to client roles: anon, authenticated, service_role lack USAGE on schema app; anon, "
        "authenticated, service_role lack SELECT on app.nothing; anon, service_role lack SELECT on public.nopk",
        f"✗ role {tag}: cannot create the schema realtime in database {tag} (the server does at its first start)",
        "! realtime.messages (private channels): not created yet (the server creates it at its first start)",
        "✗ JWT secret: 5 characters, at least 32 needed",
        "- redis: not configured (channels are shared within this process only)",
    ]
    assert fix_after(out, f"✗ role {tag}: has no REPLICATION: it cannot open the replication stream") == \
        f"ALTER ROLE {tag} WITH REPLICATION;"
    assert fix_after(out, heads(out)[4]) == "ALTER TABLE app.nothing REPLICA IDENTITY FULL;  -- or add a primary key"
    assert fix_after(out, heads(out)[5]) == "ALTER TABLE public.nopk REPLICA IDENTITY FULL;  -- or add a primary key"
    assert fix_after(out, heads(out)[6]) == \
        "ALTER TABLE public.nopk ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY;"
    assert fix_after(out, heads(out)[10]) == f"GRANT anon, authenticated, service_role TO {tag};"
    assert fix_after(out, heads(out)[11]) == (
        "GRANT USAGE ON SCHEMA app TO anon, authenticated, service_role; "
        "GRANT SELECT ON app.nothing TO anon, authenticated, service_role; "
        "GRANT SELECT ON public.nopk TO anon, service_role;")
    assert fix_after(out, heads(out)[12]) == f"GRANT CREATE ON DATABASE {tag} TO {tag};"
    assert fix_after(out, "✗ JWT secret: 5 characters, at least 32 needed").startswith("export REALTIME_JWT_SECRET=")


def test_the_fixes_repair_the_database(broken: tuple[str, str], pg_cluster: Any) -> None:
    """Running the printed SQL fixes (as a superuser) turns every ✗ of the database into ✓."""
    dsn, tag = broken
    env = {"REALTIME_PUBLICATION": "doctor_pub", "REALTIME_JWT_SECRET": SECRET, **slot_names(tag)}
    before = doctor("--json", "--database-url", dsn, **env)
    fixes = [r["fix"] for r in json.loads(before.stdout) if r["status"] == "fail"]
    admin_dsn = dsn.replace(f"postgresql://{tag}@", "postgresql://postgres@")
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        for fix in fixes:
            conn.execute(fix.split("  -- ")[0])
    after = doctor("--database-url", dsn, **env)
    assert after.returncode == 0, after.stdout
    assert not [line for line in heads(after.stdout) if line.startswith("✗")]


def test_a_missing_publication_is_a_failure_with_its_create_statement(broken: tuple[str, str]) -> None:
    dsn, tag = broken
    res = doctor("--database-url", dsn, REALTIME_JWT_SECRET=SECRET, **slot_names(tag))
    assert res.returncode == 1
    head = "✗ publication supabase_realtime: does not exist: no table can be subscribed"
    assert fix_after(res.stdout, head) == ("CREATE PUBLICATION supabase_realtime;  -- then: "
                                           "ALTER PUBLICATION supabase_realtime ADD TABLE public.<table>;")
    assert "- published tables: skipped: no publication supabase_realtime" in res.stdout.splitlines()


def test_nobody_listening_fails_reachable_and_skips_the_database_checks() -> None:
    url = f"postgresql://someone:hunter2@127.0.0.1:{free_port()}/app"
    res = doctor("--database-url", url, "--tenant", "other", REALTIME_JWT_SECRET=SECRET)
    assert res.returncode == 1
    assert "hunter2" not in res.stdout
    lines = heads(res.stdout)
    assert lines[0].startswith(f"✗ database postgresql://someone:***@127.0.0.1:{url.split(':')[3]}: unreachable "
                               "(connection failed:")
    assert "Connection refused" in lines[0]
    assert fix_after(res.stdout, lines[0]).endswith(
        f"psql 'postgresql://someone@127.0.0.1:{url.split(':')[3]}' -c 'select 1'")
    assert lines[1:9] == [f"- {what}: skipped: no database connection" for what in (
        "wal_level", "replication role", "publication", "published tables", "replication slots", "client roles",
        "grants to client roles", "realtime.messages (private channels)")]
    assert res.stderr == ("note: no REALTIME_TENANTS_DATABASE_URL: the environment defines the one tenant; "
                          "checking its settings for 'other'\n")


def test_redis_down_is_a_failure(redis_server: RedisServer) -> None:
    up = doctor(REALTIME_JWT_SECRET=SECRET, REALTIME_REDIS_URL=redis_server.url)
    assert up.returncode == 0, up.stdout
    down_url = f"redis://127.0.0.1:{free_port()}/0"
    res = doctor(REALTIME_JWT_SECRET=SECRET, REALTIME_REDIS_URL=down_url)
    assert res.returncode == 1
    head = next(line for line in heads(res.stdout) if line.startswith("✗ redis"))
    assert head.startswith(f"✗ redis {down_url}: no answer to PING (")
    assert fix_after(res.stdout, head) == ("start redis-server, or correct REALTIME_REDIS_URL; test with: "
                                           f"redis-cli -u '{down_url}' ping")


def test_the_development_secret_fails_beyond_loopback_and_warns_on_it() -> None:
    local = doctor()
    assert local.returncode == 0
    assert "! JWT secret: the built-in development secret (accepted on loopback only)" in local.stdout
    exposed = doctor(REALTIME_HOST="0.0.0.0")
    assert exposed.returncode == 1
    assert ("✗ JWT secret: the built-in development secret on 0.0.0.0: anyone can mint tokens for this server"
            in exposed.stdout)


@pytest.fixture
def jwks_url(tmp_path: Path) -> Iterator[str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "jwks.json").write_text(json.dumps(
        {"keys": [{**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "k1"}]}))

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/jwks.json"
    httpd.shutdown()
    httpd.server_close()


def test_a_jwks_url_is_fetched(jwks_url: str) -> None:
    res = doctor(REALTIME_JWT_JWKS=jwks_url)
    assert res.returncode == 0, res.stdout
    assert f"✓ JWKS {jwks_url}: 1 key(s)" in res.stdout.splitlines()
    missing = jwks_url.replace("jwks.json", "nope.json")
    res = doctor(REALTIME_JWT_JWKS=missing)
    assert res.returncode == 1
    head = f"✗ JWKS {missing}: answered HTTP 404 File not found"
    assert head in res.stdout.splitlines()
    assert fix_after(res.stdout, head) == f"curl -fsS '{missing}'"
    nobody = f"http://127.0.0.1:{free_port()}/jwks.json"
    res = doctor(REALTIME_JWT_JWKS=nobody)
    assert res.returncode == 1
    assert f"✗ JWKS {nobody}: unreachable ([Errno 111] Connection refused)" in res.stdout.splitlines()


@pytest.fixture(scope="module")
def small_keep_cluster() -> Iterator[PgCluster]:
    """A cluster of its own whose slots may keep only 16 MB of WAL (the shared one keeps 1 GB)."""
    cluster = PgCluster(extra_conf={"max_slot_wal_keep_size": "'16MB'"})
    cluster.init()
    cluster.start()
    yield cluster
    cluster.destroy()


def test_a_slot_near_or_past_its_wal_limit_fails(small_keep_cluster: PgCluster) -> None:
    dsn = create_database(small_keep_cluster, "lagging")
    env = {"REALTIME_JWT_SECRET": SECRET, **slot_names("lagging")}
    slot = "lagging_changes"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create table t (id bigint primary key, body text)")
        conn.execute("select pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
        lag_sql = ("select pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn) from pg_replication_slots "
                   "where slot_name = %s")
        n = 0
        while (lag := conn.execute(lag_sql, (slot,)).fetchone()[0]) < 13.5 * 1024 * 1024:  # type: ignore[index]
            assert n < 1_000_000, f"13.5 MB of WAL not written after {n} rows (lag {lag})"
            conn.execute("insert into t select g, repeat('x', 200) from generate_series(%s::int, %s::int) g", (n, n + 999))
            n += 1000
        assert lag < 16 * 1024 * 1024
        res = doctor("--database-url", dsn, **env)
        head = next(line for line in heads(res.stdout) if line.startswith(f"✗ replication slot {slot}"))
        assert re.fullmatch(rf"✗ replication slot {slot}: lag 1[34]\.\d MB of max_slot_wal_keep_size 16\.0 MB: "
                            "over 80% — PostgreSQL will soon drop the WAL it needs", head), head
        assert fix_after(res.stdout, head) == (f"start the server so it reads the slot, or if nothing will: "
                                               f"SELECT pg_drop_replication_slot('{slot}');")
        # past the limit, a checkpoint removes the WAL and the slot is lost
        while conn.execute("select wal_status from pg_replication_slots where slot_name = %s",
                           (slot,)).fetchone()[0] != "lost":  # type: ignore[index]
            assert n < 2_000_000, f"slot {slot} not lost after {n} rows"
            conn.execute("insert into t select g, repeat('x', 200) from generate_series(%s::int, %s::int) g", (n, n + 9999))
            n += 10000
            conn.execute("select pg_switch_wal()")
            conn.execute("checkpoint")
        res = doctor("--database-url", dsn, **env)
        head = f"✗ replication slot {slot}: wal_status is lost: the WAL it needs was removed"
        assert fix_after(res.stdout, head) == (f"SELECT pg_drop_replication_slot('{slot}');  -- the server creates "
                                               "it again at its next start; the lost changes are gone")
    drop_database(small_keep_cluster, "lagging")


def test_help_names_every_flag() -> None:
    res = subprocess.run([sys.executable, "-m", "realtime_channels", "doctor", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0
    for flag in ("--database-url", "--tenant", "--json"):
        assert flag in res.stdout
    top = subprocess.run([sys.executable, "-m", "realtime_channels", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert re.search(r"^\s+doctor\s+check the database", top.stdout, re.M), top.stdout


ENC_KEY = "0123456789abcdef"


def test_a_tenant_of_the_tenants_database_is_checked_with_its_own_settings(
        healthy: tuple[str, str], pg_cluster: Any) -> None:
    dsn, tag = healthy
    tenants_db = f"{tag}_tenants"
    tenants_dsn = create_database(pg_cluster, tenants_db)
    store = TenantStore(tenants_dsn, Crypto(ENC_KEY))
    pg = {"db_host": "127.0.0.1", "db_port": str(pg_cluster.port), "db_name": tag, "db_user": "postgres",
          "db_password": "tenant-pw", "region": "local", "publication": "supabase_realtime"}

    async def put() -> None:
        await store.migrate()
        await store.put(Tenant(external_id="acme", name="acme", jwt_secret="short-tenant-secret",
                               extensions={"postgres_cdc_rls": pg}))

    asyncio.run(put())
    try:
        env = {"REALTIME_TENANTS_DATABASE_URL": tenants_dsn, "DB_ENC_KEY": ENC_KEY, "REALTIME_JWT_SECRET": SECRET,
               **slot_names(tag)}
        res = doctor("--tenant", "acme", **env)
        assert res.returncode == 1, res.stdout  # the tenant's secret is too short
        lines = heads(res.stdout)
        assert lines[0] == f"✓ database postgresql://postgres:***@127.0.0.1:{pg_cluster.port}/{tag} reachable"
        assert "tenant-pw" not in res.stdout
        assert "✓ publication supabase_realtime holds public.notes" in lines
        # a tenant's node reads slots of its own
        assert (f"! replication slot {tag}_changes_acme: does not exist yet (the server creates it at its first "
                "start)") in lines
        assert "✗ JWT secret: 19 characters, at least 32 needed" in lines
        assert res.stderr == ""

        unknown = doctor("--tenant", "nobody", **env)
        assert unknown.returncode == 1
        assert heads(unknown.stdout) == [f"✗ tenant nobody: not found in {tenants_dsn}"]

        environment = doctor("--database-url", dsn, **env)
        assert environment.returncode == 0, environment.stdout
        assert environment.stderr.startswith("note: tenants live in REALTIME_TENANTS_DATABASE_URL")
    finally:
        drop_database(pg_cluster, tenants_db)
