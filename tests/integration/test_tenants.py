"""Tenants in the server's database (docs/tenants.md): Supabase's admin API creates, changes and
deletes them without a restart; the Host header picks the tenant; each has its own secret and
limits, and two tenants with the same topic names never see each other's traffic."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from pgcluster import create_database, drop_database
from rawclient import V1, V2, open_client, unique_topic
from support import make_token, start_server

from realtime_channels.tenants.crypto import Crypto

DB = "rc_tenant_store"
ENC_KEY = "0123456789abcdef"
API_SECRET = "api-secret-of-at-least-32-characters!!"
SECRETS = {"alpha": "alpha-secret-with-at-least-32-characters", "beta": "beta-secret-with-at-least-32-characters!"}


@pytest.fixture(scope="module")
def tenant_server(pg_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str]]:
    dsn = create_database(pg_cluster, DB)
    server = start_server(str(tmp_path_factory.mktemp("tenants")), REALTIME_TENANTS_DATABASE_URL=dsn,
                          DB_ENC_KEY=ENC_KEY, REALTIME_API_JWT_SECRET=API_SECRET)
    try:
        yield server, dsn
    finally:
        server.stop()
        drop_database(pg_cluster, DB)


def api(server: Any, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    bearer = token if token is not None else make_token("service_role", secret=API_SECRET)
    req = urllib.request.Request(f"{server.http_url}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, json.loads(raw) if raw else None


def create(server: Any, external_id: str, **fields: Any) -> Any:
    body = {"tenant": {"external_id": external_id, "name": external_id, "jwt_secret": SECRETS[external_id],
                       "extensions": [], **fields}}
    status, answer = api(server, "POST", "/api/tenants", body)
    assert status in (200, 201), answer
    return answer["data"]


def key(tenant: str, role: str = "anon", **claims: Any) -> str:
    return make_token(role, secret=SECRETS[tenant], **claims)


def test_the_admin_api_needs_the_api_secret(tenant_server: Any) -> None:
    server, _ = tenant_server
    for token in ("", "garbage", make_token("service_role", secret=SECRETS["alpha"])):
        assert api(server, "GET", "/api/tenants", token=token)[0] == 403


def test_create_show_update_delete_with_supabase_shapes(tenant_server: Any) -> None:
    server, dsn = tenant_server
    status, answer = api(server, "POST", "/api/tenants", {"tenant": {
        "external_id": "gamma", "name": "Gamma", "jwt_secret": "gamma-secret-with-at-least-32-characters",
        "max_concurrent_users": 7, "extensions": [{"type": "postgres_cdc_rls", "settings": {
            "db_host": "127.0.0.1", "db_port": "5432", "db_name": "x", "db_user": "u", "db_password": "p",
            "region": "local"}}]}})
    assert status == 201, answer
    data = answer["data"]
    assert (data["external_id"], data["name"], data["max_concurrent_users"]) == ("gamma", "Gamma", 7)
    [ext] = data["extensions"]
    assert ext["type"] == "postgres_cdc_rls" and "db_password" not in ext["settings"]
    assert ext["settings"]["publication"] == "supabase_realtime"
    # secrets are stored encrypted as Supabase stores them
    with psycopg.connect(dsn) as conn:
        stored = conn.execute("select jwt_secret from _realtime.tenants where external_id = 'gamma'").fetchone()[0]
        settings = conn.execute("select settings from _realtime.extensions where tenant_external_id = 'gamma'").fetchone()[0]
    assert stored != "gamma-secret-with-at-least-32-characters"
    assert Crypto(ENC_KEY).decrypt(stored) == "gamma-secret-with-at-least-32-characters"
    assert Crypto(ENC_KEY).decrypt(settings["db_password"]) == "p"
    assert api(server, "GET", "/api/tenants/gamma")[1]["data"]["name"] == "Gamma"
    status, answer = api(server, "PUT", "/api/tenants/gamma", {"tenant": {"max_concurrent_users": 9}})
    assert status == 200 and answer["data"]["max_concurrent_users"] == 9
    assert [t["external_id"] for t in api(server, "GET", "/api/tenants")[1]["data"]].count("gamma") == 1
    assert api(server, "DELETE", "/api/tenants/gamma")[0] == 204
    assert api(server, "GET", "/api/tenants/gamma") == (404, {"message": "not found"})


def test_bad_input_is_422_with_the_field_errors_and_nothing_is_created(tenant_server: Any) -> None:
    server, _ = tenant_server
    status, answer = api(server, "POST", "/api/tenants", {"tenant": {
        "external_id": "delta", "max_events_per_second": "many",
        "extensions": [{"type": "postgres_cdc_rls", "settings": {"db_host": "h"}}]}})
    assert status == 422
    errors = answer["errors"]
    assert errors["max_events_per_second"] == ["is invalid"]
    assert "db_password can't be blank" in errors["extensions"]
    assert errors["jwt_secret"] == ["either jwt_secret or jwt_jwks must be provided"]
    assert api(server, "GET", "/api/tenants/delta")[0] == 404


async def test_the_host_picks_the_tenant_and_tenants_never_cross(tenant_server: Any) -> None:
    server, _ = tenant_server
    create(server, "alpha")
    create(server, "beta")
    topic = unique_topic("shared")
    async with open_client(server, V2, apikey=key("alpha"), host="alpha.realtime.test") as a, \
            open_client(server, V1, apikey=key("beta"), host="beta.realtime.test") as b:
        await a.join_ok(topic, {"broadcast": {"self": True}})
        await b.join_ok(topic, {"broadcast": {"self": True}})
        await b.broadcast(topic, "hello", {"from": "beta"})
        got = await b.expect(lambda f: f.event == "broadcast")
        assert got.payload["payload"] == {"from": "beta"}
        await a.broadcast(topic, "hello", {"from": "alpha"})
        mine = await a.expect(lambda f: f.event == "broadcast")
        assert mine.payload["payload"] == {"from": "alpha"}, "alpha saw nothing of beta before its own"
        await b.ping()
        await b.assert_nothing_pending(lambda f: f.event == "broadcast")


async def test_a_key_of_one_tenant_is_refused_by_another_and_unknown_hosts_get_tenant_not_found(tenant_server: Any) -> None:
    server, _ = tenant_server
    create(server, "alpha")
    create(server, "beta")
    with pytest.raises(Exception) as refused:
        async with open_client(server, V2, apikey=key("alpha"), host="beta.realtime.test"):
            pass
    assert "403" in str(refused.value) or "401" in str(refused.value)
    with pytest.raises(Exception) as unknown:
        async with open_client(server, V2, apikey=key("alpha"), host="nosuch.realtime.test"):
            pass
    assert "404" in str(unknown.value)
    req = urllib.request.Request(f"{server.http_url}/api/broadcast", method="POST", data=b'{"messages": []}',
                                 headers={"apikey": key("alpha"), "Host": "nosuch.realtime.test",
                                          "Content-Type": "application/json"})
    try:
        urllib.request.urlopen(req, timeout=5)
        raise AssertionError("accepted")
    except urllib.error.HTTPError as e:
        assert (e.code, json.loads(e.read())) == (401, {"message": "Tenant not found in database"})


async def test_limits_are_per_tenant_and_changes_apply_without_a_restart(tenant_server: Any) -> None:
    server, _ = tenant_server
    create(server, "alpha", max_channels_per_client=1)
    create(server, "beta")
    async with open_client(server, V2, apikey=key("alpha"), host="alpha.realtime.test") as a:
        await a.join_ok(unique_topic("one"))
        refused = await a.join(unique_topic("two"))
        assert refused.payload["response"]["reason"].startswith("ChannelRateLimitReached")
    async with open_client(server, V2, apikey=key("beta"), host="beta.realtime.test") as b:
        await b.join_ok(unique_topic("one"))
        await b.join_ok(unique_topic("two"))
    status, _ = api(server, "PUT", "/api/tenants/alpha", {"tenant": {"max_channels_per_client": 3}})
    assert status == 200
    async with open_client(server, V2, apikey=key("alpha"), host="alpha.realtime.test") as a:
        await a.join_ok(unique_topic("one"))
        await a.join_ok(unique_topic("two"))
    # suspended: refused at the upgrade with Supabase's text
    api(server, "PUT", "/api/tenants/beta", {"tenant": {"suspend": True}})
    with pytest.raises(Exception) as suspended:
        async with open_client(server, V2, apikey=key("beta"), host="beta.realtime.test"):
            pass
    assert "403" in str(suspended.value)
    api(server, "PUT", "/api/tenants/beta", {"tenant": {"suspend": False}})


async def test_each_tenant_streams_its_own_database_and_one_that_is_down_degrades_alone(
        tenant_server: Any, pg_cluster: Any) -> None:
    import urllib.parse

    from support import free_port

    server, _ = tenant_server
    data_dsn = create_database(pg_cluster, "rc_tenant_data")
    try:
        with psycopg.connect(data_dsn, autocommit=True) as conn:
            conn.execute("grant usage on schema public to anon, authenticated, service_role;"
                         " create table public.notes (id int primary key, body text);"
                         " grant select on public.notes to anon, authenticated, service_role;"
                         " create publication supabase_realtime for table public.notes")
        url = urllib.parse.urlsplit(data_dsn)

        def pg(port: int) -> list[dict[str, Any]]:
            return [{"type": "postgres_cdc_rls", "settings": {
                "db_host": url.hostname, "db_port": str(port), "db_name": "rc_tenant_data",
                "db_user": urllib.parse.unquote(url.username or "postgres"),
                "db_password": urllib.parse.unquote(url.password or "trust-ignores-it"), "region": "local"}}]

        SECRETS.update(pgt="pgt-secret-with-at-least-32-characters!!!", down="down-secret-with-at-least-32-characters!")
        create(server, "pgt", extensions=pg(url.port or 5432))
        create(server, "down", extensions=pg(free_port()))
        binding = {"postgres_changes": [{"event": "INSERT", "schema": "public", "table": "notes"}]}
        topic = unique_topic("notes")
        async with open_client(server, V2, apikey=key("pgt"), host="pgt.realtime.test") as c, \
                open_client(server, V2, apikey=key("down"), host="down.realtime.test") as d:
            await c.join_ok(topic, binding)
            while (await c.expect(lambda f: f.event == "system", 30)).payload["message"] != "Subscribed to PostgreSQL":
                pass
            await d.join_ok(topic, {**binding, "broadcast": {"self": True}})
            failed = await d.expect(lambda f: f.event == "system", 30)
            assert failed.payload["status"] == "error"
            assert failed.payload["message"] == "Realtime was unable to connect to the project database"
            await d.broadcast(topic, "still", {"ok": True})  # broadcast works on the tenant without its database
            assert (await d.expect(lambda f: f.event == "broadcast")).payload["payload"] == {"ok": True}
            with psycopg.connect(data_dsn, autocommit=True) as conn:
                conn.execute("insert into public.notes values (1, 'hello')")
            change = await c.expect(lambda f: f.event == "postgres_changes", 30)
            assert change.payload["data"]["record"] == {"id": 1, "body": "hello"}
        for external_id in ("pgt", "down"):
            assert api(server, "DELETE", f"/api/tenants/{external_id}")[0] == 204
    finally:
        drop_database(pg_cluster, "rc_tenant_data")


async def test_a_change_through_one_server_applies_on_another(tenant_server: Any, tmp_path: Any) -> None:
    server, dsn = tenant_server
    other = start_server(str(tmp_path), REALTIME_TENANTS_DATABASE_URL=dsn, DB_ENC_KEY=ENC_KEY,
                         REALTIME_API_JWT_SECRET=API_SECRET)
    try:
        SECRETS["epsilon"] = "epsilon-secret-with-at-least-32-characters"
        create(server, "epsilon", max_channels_per_client=1)
        async with open_client(other, V2, apikey=key("epsilon"), host="epsilon.realtime.test") as c:
            await c.join_ok(unique_topic("one"))
            assert (await c.join(unique_topic("two"))).payload["status"] == "error"
        assert api(server, "PUT", "/api/tenants/epsilon", {"tenant": {"max_channels_per_client": 2}})[0] == 200
        # the other server hears of it from the database and restarts the tenant with the new limit
        for _ in range(100):
            async with open_client(other, V2, apikey=key("epsilon"), host="epsilon.realtime.test") as c:
                await c.join_ok(unique_topic("one"))
                if (await c.join(unique_topic("two"))).payload["status"] == "ok":
                    break
        else:
            raise AssertionError("the other server kept the old limit")
    finally:
        other.stop()


async def test_supabase_js_with_a_tenants_own_key_and_another_tenant_with_the_same_topic_sees_nothing(
        tenant_server: Any) -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "conformance"))
    from peers import NodePeer

    server, _ = tenant_server
    create(server, "alpha")
    create(server, "beta")
    node = await NodePeer.start()
    try:
        topic = "lobby"  # the same name on both tenants
        await node.add_client("a1", server, key=key("alpha"), host="alpha.realtime.test")
        await node.add_client("a2", server, key=key("alpha"), host="alpha.realtime.test")
        await node.add_client("b1", server, key=key("beta"), host="beta.realtime.test")
        for client, ch in (("a1", "a1-lobby"), ("a2", "a2-lobby"), ("b1", "b1-lobby")):
            await node.subscribe(client, ch, topic, config={"broadcast": {"self": True}})
        assert await node.call("send", ch="a1-lobby", event="hi", payload={"from": "alpha"}) == "ok"
        await node.wait_broadcast("a2-lobby", "hi", {"from": "alpha"})
        # beta's own broadcast is the barrier: it arrives at beta, alpha's never did
        assert await node.call("send", ch="b1-lobby", event="hi", payload={"from": "beta"}) == "ok"
        await node.wait_broadcast("b1-lobby", "hi", {"from": "beta"})
        assert [e["payload"] for e in node.broadcasts("b1-lobby")] == [{"from": "beta"}] or \
            [e["payload"]["payload"] for e in node.broadcasts("b1-lobby")] == [{"from": "beta"}]
        assert all("beta" not in json.dumps(e) for e in node.broadcasts("a2-lobby"))
        # a key signed for alpha is refused by beta
        await node.add_client("wrong", server, key=key("alpha"), host="beta.realtime.test")
        await node.subscribe("wrong", "wrong-lobby", topic, expect=None)
        status = await node.log.wait_for(lambda e: e.get("type") == "status" and e.get("ch") == "wrong-lobby"
                                         and e.get("status") != "SUBSCRIBED", timeout=20, what="a refusal")
        assert status["status"] in ("CHANNEL_ERROR", "TIMED_OUT", "CLOSED"), status
    finally:
        await node.close()


def test_health_of_a_stored_tenant_and_of_an_unknown_one(tenant_server: Any) -> None:
    server, _ = tenant_server
    create(server, "alpha")
    status, answer = api(server, "GET", "/api/tenants/alpha/health")
    assert status == 200, answer
    assert answer["data"]["healthy"] is True and answer["data"]["db_connected"] is False
    assert api(server, "GET", "/api/tenants/nosuch/health") == (404, {"message": "not found"})
    assert api(server, "GET", "/api/tenants/alpha/health", token="bad")[0] == 403


async def test_metrics_carry_each_tenants_id(tenant_server: Any) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    server, _ = tenant_server
    create(server, "alpha")
    create(server, "beta")
    async with open_client(server, V2, apikey=key("alpha"), host="alpha.realtime.test") as a1, \
            open_client(server, V2, apikey=key("alpha"), host="alpha.realtime.test") as a2, \
            open_client(server, V2, apikey=key("beta"), host="beta.realtime.test") as b1:
        for c in (a1, a2, b1):
            await c.join_ok(unique_topic("m"))
        with urllib.request.urlopen(f"{server.http_url}/metrics", timeout=5) as r:
            text = r.read().decode()
    connected = {s.labels.get("tenant"): s.value for family in text_string_to_metric_families(text)
                 for s in family.samples if s.name == "realtime_connections_connected"}
    assert connected.get("alpha") == 2 and connected.get("beta") == 1, connected


async def test_on_redis_two_tenants_with_the_same_topic_never_cross(tenant_server: Any, tmp_path: Any) -> None:
    from support import RedisServer

    _, dsn = tenant_server
    redis = RedisServer()
    redis.start()
    nodes = []
    try:
        for name in ("one", "two"):
            (tmp_path / name).mkdir()
            nodes.append(start_server(str(tmp_path / name), REALTIME_TENANTS_DATABASE_URL=dsn, DB_ENC_KEY=ENC_KEY,
                                      REALTIME_API_JWT_SECRET=API_SECRET, REALTIME_REDIS_URL=redis.url))
        one, two = nodes
        create(one, "alpha")
        create(one, "beta")
        topic = unique_topic("redis-shared")
        # alpha on both nodes (through Redis), beta on the second node only
        async with open_client(one, V2, apikey=key("alpha"), host="alpha.realtime.test") as a1, \
                open_client(two, V2, apikey=key("alpha"), host="alpha.realtime.test") as a2, \
                open_client(two, V2, apikey=key("beta"), host="beta.realtime.test") as b2:
            for c in (a1, a2, b2):
                await c.join_ok(topic, {"broadcast": {"self": True}})
            for _ in range(100):  # until alpha's two nodes hear each other through Redis
                await a1.broadcast(topic, "probe", {})
                await a1.expect(lambda f: f.event == "broadcast")
                try:
                    await a2.expect(lambda f: f.event == "broadcast", 0.2)
                    break
                except AssertionError:
                    continue
            await a1.broadcast(topic, "hello", {"from": "alpha"})
            got = await a2.expect(lambda f: f.event == "broadcast" and f.payload["payload"] == {"from": "alpha"})
            assert got is not None
            await b2.broadcast(topic, "hello", {"from": "beta"})
            mine = await b2.expect(lambda f: f.event == "broadcast")
            assert mine.payload["payload"] == {"from": "beta"}, "beta saw nothing of alpha before its own"
            await a2.ping()
            await a2.assert_nothing_pending(lambda f: f.event == "broadcast" and f.payload["payload"] == {"from": "beta"})
    finally:
        for node in nodes:
            node.stop()
        redis.cleanup()
