"""The server as the ``realtime`` service of Supabase's self-host docker compose: started with
that service's ``environment:`` block (and no ``REALTIME_*`` variable), on a database prepared
as Supabase's Postgres image prepares it, checked by the compose healthcheck command, and used by
supabase-js through a proxy doing what Kong's ``realtime-v1-ws``/``realtime-v1-rest`` routes do
(``selfhost.py``).  The database checks ``supabase_admin``'s password, so the URL built from
``DB_*`` must carry a password full of URL-special characters intact.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import psycopg.sql
import pytest
from pgcluster import create_database, database_dsn, drop_database
from support import free_port, make_token, wait_async

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "conformance"))
from peers import NodePeer, is_presence, is_status, node, unique_topic  # noqa: E402,F401 - node is a fixture
from selfhost import (  # noqa: E402
    DATABASE_SQL,
    ROLES_SQL,
    KongRealtime,
    Service,
    compose_environment,
    forget_password_rule,
    healthcheck_command,
    require_password,
    start_service,
)

JWT_SECRET = "your-super-secret-jwt-token-with-at-least-32-characters-long"
POSTGRES_PASSWORD = "pa:ss/w@rd?#%&+ with spaces"
TENANT = "realtime-dev"
READY_TIMEOUT = 30.0


@dataclass
class Stack:
    service: Service
    dsn: str
    anon_key: str
    service_key: str

    @property
    def direct(self) -> str:
        return f"http://127.0.0.1:{self.service.port}"

    def sql(self, statement: str) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(statement)


@dataclass
class Gateway:
    """What ``NodePeer.add_client`` needs: the project URL (Kong's) and the anon key."""

    http_url: str
    anon_key: str


async def health(stack: Stack, token: str | None, tenant: str = TENANT, method: str = "GET") -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with aiohttp.ClientSession() as http, http.request(
            method, f"{stack.direct}/api/tenants/{tenant}/health", headers=headers) as r:
        return r.status, await r.read()


@pytest.fixture(scope="module")
def stack(pg_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    dbname = f"selfhost_{uuid.uuid4().hex[:8]}"
    create_database(pg_cluster, dbname)
    with psycopg.connect(pg_cluster.dsn, autocommit=True) as admin:
        admin.execute(ROLES_SQL)
        admin.execute(psycopg.sql.SQL("alter role supabase_admin password {}").format(POSTGRES_PASSWORD))
    admin_dsn = database_dsn(pg_cluster, dbname)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(DATABASE_SQL)
    hba_lines = require_password(pg_cluster, dbname)
    with psycopg.connect(pg_cluster.dsn, autocommit=True) as admin:
        admin.execute("select pg_reload_conf()")
    port = free_port()
    env = compose_environment({
        "POSTGRES_HOST": "127.0.0.1",
        "POSTGRES_PORT": str(pg_cluster.port),
        "POSTGRES_PASSWORD": POSTGRES_PASSWORD,
        "POSTGRES_DB": dbname,
        "JWT_SECRET": JWT_SECRET,
        "SECRET_KEY_BASE": "UpNVntn3cDxHJpq99YMc1T1AQgQpc8kfYTuRgBiYa15BLrx8etQoXz3gZv1/u2oq",
    }, port)
    service = start_service(str(tmp_path_factory.mktemp("selfhost")), env, port)
    stack = Stack(service, admin_dsn, make_token("anon", secret=JWT_SECRET),
                  make_token("service_role", secret=JWT_SECRET))
    try:
        yield stack
    finally:
        service.stop()
        forget_password_rule(pg_cluster, hba_lines)
        with psycopg.connect(pg_cluster.dsn, autocommit=True) as admin:
            admin.execute("select pg_reload_conf()")
        drop_database(pg_cluster, dbname)


@pytest.fixture
async def kong(stack: Stack) -> AsyncIterator[KongRealtime]:
    proxy = KongRealtime(stack.service.port, [stack.anon_key, stack.service_key])
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


async def _ready(stack: Stack) -> dict[str, Any]:
    """The health report once the database feed streams (postgres_changes can be subscribed)."""

    async def check() -> dict[str, Any] | None:
        status, body = await health(stack, stack.anon_key)
        data: dict[str, Any] = json.loads(body)["data"] if status == 200 else {}
        return data if data.get("replication_connected") else None

    return await wait_async(check, READY_TIMEOUT, "the database feed to stream")


async def test_compose_healthcheck_command_succeeds(stack: Stack) -> None:
    await _ready(stack)
    done = subprocess.run(["sh", "-c", healthcheck_command(stack.anon_key, stack.service.port)],
                          capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr


async def test_health_report_is_supabases(stack: Stack) -> None:
    await _ready(stack)
    status, body = await health(stack, stack.anon_key)
    assert status == 200
    data = json.loads(body)["data"]
    assert set(data) == {"healthy", "db_connected", "replication_connected", "connected_cluster", "region", "node"}
    assert data["healthy"] is True and data["db_connected"] is True and data["replication_connected"] is True
    assert data["connected_cluster"] == 0 and data["region"] is None and isinstance(data["node"], str)
    head_status, head_body = await health(stack, stack.anon_key, method="HEAD")
    assert (head_status, head_body) == (200, b"")


def test_the_database_checks_the_password(stack: Stack, pg_cluster: Any) -> None:
    """The fixture's premise: a wrong password is refused, so the server's URL carries the right one."""
    dbname = stack.dsn.rsplit("/", 1)[1]
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(host="127.0.0.1", port=pg_cluster.port, user="supabase_admin", password="wrong",
                        dbname=dbname).close()


async def test_unreachable_database_is_unhealthy_but_answers_200(tmp_path: Any) -> None:
    """As Supabase: the report says so, the status stays 200, so the compose healthcheck passes."""
    port = free_port()
    env = compose_environment({"POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": str(free_port()),
                               "POSTGRES_PASSWORD": POSTGRES_PASSWORD, "POSTGRES_DB": "postgres",
                               "JWT_SECRET": JWT_SECRET, "SECRET_KEY_BASE": "x"}, port)
    service = start_service(str(tmp_path), env, port)
    try:
        stack = Stack(service, "", make_token("anon", secret=JWT_SECRET), "")
        status, body = await health(stack, stack.anon_key)
        assert status == 200
        data = json.loads(body)["data"]
        assert (data["healthy"], data["db_connected"], data["replication_connected"]) == (False, False, False)
        done = subprocess.run(["sh", "-c", healthcheck_command(stack.anon_key, port)],
                              capture_output=True, text=True, timeout=10)
        assert done.returncode == 0, done.stderr
    finally:
        service.stop()


async def test_health_refusals_are_supabases(stack: Stack) -> None:
    assert await health(stack, None) == (403, b"")
    assert await health(stack, make_token("anon", secret="another-secret-with-at-least-32-chars")) == (403, b"")
    assert await health(stack, None, method="HEAD") == (403, b"")
    status, body = await health(stack, stack.anon_key, tenant="another-tenant")
    assert (status, json.loads(body)) == (404, {"message": "not found"})


async def test_the_ignored_variables_are_named_once(stack: Stack) -> None:
    lines = [line for line in stack.service.log().splitlines() if "ignored: " in line]
    assert len(lines) == 1, stack.service.log()
    for name in ("SECRET_KEY_BASE", "ERL_AFLAGS", "DNS_NODES", "RLIMIT_NOFILE", "APP_NAME", "RUN_JANITOR",
                 "DISABLE_HEALTHCHECK_LOGGING"):
        assert name in lines[0]
    assert "DB_PASSWORD" not in lines[0] and "API_JWT_SECRET" not in lines[0]


async def test_kong_blocks_the_tenant_api_and_unknown_keys(stack: Stack, kong: KongRealtime) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{kong.url}/realtime/v1/api/tenants/{TENANT}/health",
                            headers={"apikey": stack.anon_key, "Authorization": f"Bearer {stack.anon_key}"}) as r:
            assert (r.status, await r.json()) == (403, {"message": "Access is forbidden."})
        async with http.get(f"{kong.url}/realtime/v1/api/ping", headers={"apikey": "nope"}) as r:
            assert r.status == 401
        async with http.get(f"{kong.url}/realtime/v1/api/ping", headers={"apikey": stack.anon_key}) as r:
            assert (r.status, await r.json()) == (200, {"message": "Success"})
    assert ("GET", "/api/ping", kong.upstream_host) in kong.relayed


async def test_broadcast_and_presence_through_kong(stack: Stack, kong: KongRealtime, node: NodePeer) -> None:
    gateway = Gateway(kong.url, stack.anon_key)
    endpoint = await node.add_client("a", gateway)
    await node.add_client("b", gateway)
    assert endpoint.startswith(f"ws://127.0.0.1:{kong.port}/realtime/v1/websocket")
    topic = unique_topic("room")
    await node.subscribe("a", "a", topic, presence=True)
    await node.subscribe("b", "b", topic, presence=True)
    assert ("WS", "/socket/websocket", kong.upstream_host) in kong.relayed

    assert await node.call("send", ch="a", event="hello", payload={"n": 1}) == "ok"
    await node.wait_broadcast("b", "hello", {"n": 1})
    assert await node.call("httpSend", ch="a", event="over-rest", payload={"n": 2}) == {"success": True}
    await node.wait_broadcast("b", "over-rest", {"n": 2})
    assert any(method == "POST" and path.startswith("/api/broadcast") and host == kong.upstream_host
               for method, path, host in kong.relayed), kong.relayed

    assert await node.call("track", ch="a", payload={"user": "ada"}) == "ok"
    joined = await node.log.wait_for(is_presence("b", "join"), what="a's presence at b")
    assert [p["user"] for p in joined["presences"]] == ["ada"]

    status, body = await health(stack, stack.anon_key)
    assert json.loads(body)["data"]["connected_cluster"] == 2


async def test_postgres_changes_through_kong(stack: Stack, kong: KongRealtime, node: NodePeer) -> None:
    await _ready(stack)
    table = f"todos_{uuid.uuid4().hex[:8]}"
    stack.sql(f"create table public.{table} (id int primary key, title text)")
    stack.sql(f"alter publication supabase_realtime add table public.{table}")
    stack.sql(f"grant select on public.{table} to anon, authenticated")
    await node.add_client("a", Gateway(kong.url, stack.anon_key))
    topic = unique_topic("db")
    await node.subscribe("a", "db", topic, postgres=[{"event": "INSERT", "schema": "public", "table": table}])
    await node.log.wait_for(lambda e: e["type"] == "system" and e["ch"] == "db"
                            and e["payload"].get("status") == "ok", timeout=10, what="Subscribed to PostgreSQL")
    stack.sql(f"insert into public.{table} values (1, 'milk')")
    change = await node.log.wait_for(lambda e: e["type"] == "postgres_changes" and e["ch"] == "db",
                                     timeout=10, what="the insert")
    assert change["payload"]["eventType"] == "INSERT"
    assert change["payload"]["new"] == {"id": 1, "title": "milk"}


async def test_private_channel_through_kong(stack: Stack, kong: KongRealtime, node: NodePeer) -> None:
    await _ready(stack)  # the server has migrated realtime.messages by then
    team = f"team-{uuid.uuid4().hex[:8]}"
    stack.sql(f"""create policy "{team} read" on realtime.messages for select to authenticated
                  using (realtime.topic() = '{team}')""")
    stack.sql(f"""create policy "{team} write" on realtime.messages for insert to authenticated
                  with check (realtime.topic() = '{team}')""")
    gateway = Gateway(kong.url, stack.anon_key)
    for name in ("ada", "bob"):
        token = make_token("authenticated", secret=JWT_SECRET, sub=str(uuid.uuid4()))
        await node.add_client(name, gateway, token=token)
        await node.subscribe(name, name, team, config={"private": True})
    assert await node.call("send", ch="ada", event="secret", payload={"k": "v"}) == "ok"
    await node.wait_broadcast("bob", "secret", {"k": "v"})

    await node.add_client("anon", gateway)
    refused = await node.subscribe("anon", "anon", team, config={"private": True}, expect=None, timeout=15)
    assert refused["status"] == "CHANNEL_ERROR", refused
    assert not node.log.matching(is_status("anon", "SUBSCRIBED"))


def test_env_block_alone_configures_the_server() -> None:
    """The compose block without a single REALTIME_* variable: every value reaches its setting."""
    from realtime_channels.config import Settings

    env = compose_environment({"POSTGRES_HOST": "db", "POSTGRES_PORT": "5432", "POSTGRES_PASSWORD": POSTGRES_PASSWORD,
                               "POSTGRES_DB": "postgres", "JWT_SECRET": JWT_SECRET, "SECRET_KEY_BASE": "x"}, 4000)
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        mp.setenv("TENANT_MAX_CONCURRENT_USERS", "7")
        settings = Settings()
    assert settings.port == 4000 and settings.host == "127.0.0.1"
    conninfo = psycopg.conninfo.conninfo_to_dict(settings.database_url or "")
    assert conninfo == {"host": "db", "port": "5432", "user": "supabase_admin", "password": POSTGRES_PASSWORD,
                        "dbname": "postgres"}
    assert settings.jwt_secret == settings.api_jwt_secret == settings.metrics_jwt_secret == JWT_SECRET
    assert settings.db_enc_key == "supabaserealtime"
    assert settings.db_after_connect_query == "SET search_path TO _realtime"
    assert settings.seed_self_host is True and settings.self_host_tenant_name == TENANT
    assert settings.max_concurrent_users == 7


def test_realtime_names_win_over_supabases() -> None:
    from realtime_channels.config import Settings

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PORT", "4000")
        mp.setenv("REALTIME_PORT", "4100")
        mp.setenv("API_JWT_SECRET", "from-supabase-name-with-at-least-32-chars")
        mp.setenv("REALTIME_JWT_SECRET", "from-realtime-name-with-at-least-32-chars")
        mp.setenv("DB_HOST", "db")
        mp.setenv("REALTIME_DATABASE_URL", "postgresql://u@elsewhere/app")
        settings = Settings()
    assert settings.port == 4100
    assert settings.jwt_secret == "from-realtime-name-with-at-least-32-chars"
    assert settings.api_jwt_secret == "from-supabase-name-with-at-least-32-chars"
    assert settings.database_url == "postgresql://u@elsewhere/app"


