"""Supabase's self-host docker compose, reproduced for a test: the ``realtime`` service's
``environment:`` block and healthcheck, a database prepared as Supabase's Postgres image prepares
it, and a small reverse proxy doing what Kong's ``realtime-v1-*`` routes do.

Reference: ``docker/docker-compose.yml`` (service ``realtime``, image ``supabase/realtime``) and
``docker/volumes/api/kong.yml`` of the ``supabase/supabase`` repository, its ``kong-entrypoint.sh``
(legacy API keys), ``docker/volumes/db/realtime.sql``, and the init scripts of ``supabase/postgres``
(``00000000000000-initial-schema.sql``, ``00000000000003-realtime-schema.sql``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import aiohttp
from aiohttp import web

# --- the realtime service ---------------------------------------------------------------------

#: The ``realtime`` service's ``environment:`` block as docker-compose.yml writes it; ``${…}``
#: are what compose interpolates from ``.env`` (``compose_environment`` fills them in).
COMPOSE_ENVIRONMENT: dict[str, str] = {
    "PORT": "4000",
    "DB_HOST": "${POSTGRES_HOST}",
    "DB_PORT": "${POSTGRES_PORT}",
    "DB_USER": "supabase_admin",
    "DB_PASSWORD": "${POSTGRES_PASSWORD}",
    "DB_NAME": "${POSTGRES_DB}",
    "DB_AFTER_CONNECT_QUERY": "SET search_path TO _realtime",
    "DB_ENC_KEY": "supabaserealtime",
    "API_JWT_SECRET": "${JWT_SECRET}",
    "SECRET_KEY_BASE": "${SECRET_KEY_BASE}",
    "METRICS_JWT_SECRET": "${JWT_SECRET}",
    "ERL_AFLAGS": "-proto_dist inet_tcp",
    "DNS_NODES": "''",
    "RLIMIT_NOFILE": "10000",
    "APP_NAME": "realtime",
    "SEED_SELF_HOST": "true",
    "RUN_JANITOR": "true",
    "DISABLE_HEALTHCHECK_LOGGING": "true",
}

#: The service's healthcheck (``CMD-SHELL``), verbatim.
HEALTHCHECK = ('curl -sSfL --head -o /dev/null -H "Authorization: Bearer ${ANON_KEY}" '
               "http://localhost:4000/api/tenants/realtime-dev/health")

#: Kong reaches the service by its container name (the tenant id is its first label).
CONTAINER_NAME = "realtime-dev.supabase-realtime"


def compose_environment(dotenv: dict[str, str], port: int) -> dict[str, str]:
    """The block with ``.env`` values interpolated, and the service's port moved to ``port`` (the
    container's 4000 may be taken on a test machine)."""
    env = {}
    for name, value in COMPOSE_ENVIRONMENT.items():
        for var, sub in dotenv.items():
            value = value.replace("${" + var + "}", sub)
        assert "${" not in value, f"{name}: {value} is not interpolated"
        env[name] = value
    env["PORT"] = str(port)
    return env


def healthcheck_command(anon_key: str, port: int) -> str:
    return HEALTHCHECK.replace("${ANON_KEY}", anon_key).replace("localhost:4000", f"localhost:{port}")


@dataclass
class Service:
    """The server started with the compose environment (and nothing else of ours)."""

    port: int
    proc: Any
    log_path: str

    def log(self) -> str:
        return Path(self.log_path).read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except Exception:  # noqa: BLE001 - a stuck process is killed
                self.proc.kill()
                self.proc.wait(5)


def start_service(tmp_dir: str, environment: dict[str, str], port: int) -> Service:
    """``realtime-channels serve`` with exactly ``environment`` on top of a process environment
    stripped of every ``REALTIME_*`` variable, once ``/healthcheck`` answers."""
    import subprocess

    from support import wait_healthy

    base = {k: v for k, v in os.environ.items() if not k.upper().startswith("REALTIME_")}
    log_path = os.path.join(tmp_dir, f"selfhost-{port}.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "realtime_channels", "serve", "--log-level", "debug"],
                                env={**base, **environment}, stdout=log, stderr=subprocess.STDOUT)
    service = Service(port, proc, log_path)
    wait_healthy(proc, f"http://127.0.0.1:{port}", 30, service.log, service.stop)
    return service


# --- the database -----------------------------------------------------------------------------

#: Cluster-wide roles as Supabase's image creates them, beside the client roles
#: ``pgcluster.create_database`` creates (``supabase_admin`` is the image's bootstrap superuser;
#: here it is created).  Left out: pgbouncer, supabase_auth_admin,
#: supabase_storage_admin, supabase_replication_admin/etl_admin/read_only_user,
#: supabase_realtime_admin (the hosted service's role; self-host connects as supabase_admin) and
#: the API roles' statement timeouts.
ROLES_SQL = """
do $$
begin
    if not exists (select 1 from pg_roles where rolname = 'supabase_admin') then
        create role supabase_admin login;
    end if;
    if not exists (select 1 from pg_roles where rolname = 'authenticator') then
        create role authenticator login noinherit;
    end if;
end
$$;
alter role supabase_admin with superuser createdb createrole replication bypassrls;
grant anon, authenticated, service_role, supabase_admin to authenticator;
alter role supabase_admin set search_path to public, extensions;
"""

#: In the new database: the empty ``supabase_realtime`` publication, the ``realtime`` schema
#: owned by supabase_admin (the image), ``_realtime`` (compose's volumes/db/realtime.sql; the
#: service keeps its tenant store there), and the grants the API roles get.  Left out: the auth,
#: storage, graphql, pgbouncer schemas and the extensions (uuid-ossp, pgcrypto, pg_stat_statements).
DATABASE_SQL = """
create publication supabase_realtime;
create schema if not exists extensions;
grant usage on schema extensions to postgres, anon, authenticated, service_role;
grant usage on schema public to postgres, anon, authenticated, service_role;
alter default privileges in schema public grant all on tables to postgres, anon, authenticated, service_role;
alter default privileges in schema public grant all on functions to postgres, anon, authenticated, service_role;
alter default privileges in schema public grant all on sequences to postgres, anon, authenticated, service_role;
create schema if not exists realtime authorization supabase_admin;
grant usage on schema realtime to postgres, anon, authenticated, service_role;
create schema if not exists _realtime;
alter schema _realtime owner to supabase_admin;
"""


def require_password(cluster: Any, dbname: str) -> list[str]:
    """Make the cluster check ``supabase_admin``'s password (scram) for ``dbname`` over TCP, so
    the URL the server builds from DB_* must carry it intact; returns the lines added."""
    hba = Path(cluster.data) / "pg_hba.conf"
    lines = [f"host {dbname} supabase_admin 127.0.0.1/32 scram-sha-256",
             f"host {dbname} supabase_admin ::1/128 scram-sha-256"]
    hba.write_text("\n".join(lines) + "\n" + hba.read_text(encoding="utf-8"), encoding="utf-8")
    return lines


def forget_password_rule(cluster: Any, lines: list[str]) -> None:
    hba = Path(cluster.data) / "pg_hba.conf"
    kept = [line for line in hba.read_text(encoding="utf-8").splitlines() if line not in lines]
    hba.write_text("\n".join(kept) + "\n", encoding="utf-8")


# --- Kong -------------------------------------------------------------------------------------


class KongRealtime:
    """The ``realtime-v1-*`` services of kong.yml on a loopback port, with the legacy-key
    ``LUA_AUTH_EXPR``/``LUA_RT_WS_EXPR`` of kong-entrypoint.sh:

    * ``key-auth`` + ``acl``: ``apikey`` (header or query) must be the anon or the service key;
      none: 401 ``No API key found in request``, another: 401 ``Invalid authentication credentials``;
    * ``/realtime/v1/api/tenants…`` and ``/realtime/v1/api/openapi…``: 403 ``Access is forbidden.``;
    * ``realtime-v1-rest``: ``/realtime/v1/api/<rest>`` → ``http://<container>:<port>/api/<rest>``,
      ``Authorization`` kept when sent, else set to the ``apikey`` header's value;
    * ``realtime-v1-ws``: ``/realtime/v1/<rest>`` → ``ws://<container>:<port>/socket/<rest>``,
      ``x-api-key`` added from the ``apikey`` query parameter (the WebSocket is relayed frame by
      frame, close codes included).

    Kong does not preserve the client's ``Host`` (``preserve_host`` is off): the upstream sees
    ``realtime-dev.supabase-realtime:<port>``.  Kong's ``X-Forwarded-*`` headers are added too.
    Left out: the ``cors`` plugin.
    """

    def __init__(self, upstream_port: int, keys: list[str]) -> None:
        self.upstream_port = upstream_port
        self.keys = set(keys)
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        #: (method, upstream path, Host) of every request relayed, for assertions
        self.relayed: list[tuple[str, str, str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def upstream_host(self) -> str:
        return f"{CONTAINER_NAME}:{self.upstream_port}"

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=0)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def _upstream_headers(self, request: web.Request) -> dict[str, str]:
        skip = {"host", "connection", "upgrade", "content-length", "transfer-encoding", "keep-alive",
                "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions"}
        headers = {k: v for k, v in request.headers.items() if k.lower() not in skip}
        forwarded = request.headers.get("X-Forwarded-For")
        peer = request.remote or ""
        headers["X-Forwarded-For"] = f"{forwarded}, {peer}" if forwarded else peer
        headers["X-Forwarded-Proto"] = request.scheme
        headers["X-Forwarded-Host"] = request.host.split(":")[0]
        headers["X-Forwarded-Port"] = str(self.port)
        headers["X-Real-IP"] = peer
        headers["Host"] = self.upstream_host
        return headers

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if not path.startswith("/realtime/v1/"):
            return web.json_response({"message": "no Route matched with those values"}, status=404)
        for blocked in ("/realtime/v1/api/tenants", "/realtime/v1/api/openapi"):
            if path == blocked or path.startswith(blocked + "/"):
                return web.json_response({"message": "Access is forbidden."}, status=403)
        apikey = request.headers.get("apikey") or request.query.get("apikey")
        if not apikey:
            return web.json_response({"message": "No API key found in request"}, status=401)
        if apikey not in self.keys:
            return web.json_response({"message": "Invalid authentication credentials"}, status=401)
        headers = self._upstream_headers(request)
        query = parse_qsl(request.query_string, keep_blank_values=True)
        if path == "/realtime/v1/api" or path.startswith("/realtime/v1/api/"):
            auth = request.headers.get("Authorization")
            if auth is None or auth.startswith("Bearer sb_"):
                headers["Authorization"] = request.headers.get("apikey", "")
            upstream = "/api" + path[len("/realtime/v1/api"):]
            return await self._relay_http(request, upstream, query, headers)
        upstream = "/socket/" + path[len("/realtime/v1/"):]
        headers["x-api-key"] = request.query.get("apikey", "")
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._relay_ws(request, upstream, query, headers)
        return await self._relay_http(request, upstream, query, headers)

    def _target(self, path: str, query: list[tuple[str, str]], scheme: str = "http") -> str:
        qs = f"?{urlencode(query)}" if query else ""
        return f"{scheme}://127.0.0.1:{self.upstream_port}{path}{qs}"

    async def _relay_http(self, request: web.Request, path: str, query: list[tuple[str, str]],
                          headers: dict[str, str]) -> web.StreamResponse:
        assert self._session is not None
        self.relayed.append((request.method, path, headers["Host"]))
        body = await request.read()
        async with self._session.request(request.method, self._target(path, query), headers=headers,
                                         data=body or None, allow_redirects=False) as upstream:
            payload = await upstream.read()
            keep = {k: v for k, v in upstream.headers.items()
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "keep-alive")}
            return web.Response(status=upstream.status, body=payload, headers=keep)

    async def _relay_ws(self, request: web.Request, path: str, query: list[tuple[str, str]],
                        headers: dict[str, str]) -> web.StreamResponse:
        assert self._session is not None
        self.relayed.append(("WS", path, headers["Host"]))
        protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        headers.pop("Sec-WebSocket-Protocol", None)
        try:
            upstream = await self._session.ws_connect(self._target(path, query, "ws"), headers=headers,
                                                      protocols=protocols, max_msg_size=0, autoping=False)
        except aiohttp.WSServerHandshakeError as exc:
            return web.Response(status=exc.status, text=exc.message)
        client = web.WebSocketResponse(protocols=protocols, max_msg_size=0, autoping=False)
        await client.prepare(request)

        async def pump(src: Any, dst: Any) -> None:
            async for msg in src:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await dst.send_str(msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    await dst.send_bytes(msg.data)
                elif msg.type == aiohttp.WSMsgType.PING:
                    await dst.ping(msg.data)
                elif msg.type == aiohttp.WSMsgType.PONG:
                    await dst.pong(msg.data)
            await dst.close(code=src.close_code or 1000)

        tasks = [asyncio.create_task(pump(client, upstream)), asyncio.create_task(pump(upstream, client))]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, RuntimeError):
                await task
        await upstream.close()
        await client.close()
        return client
