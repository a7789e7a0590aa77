"""The ``realtime-channels`` command (``serve``, ``token``, ``doctor``, ``functions``).

This module is the only place that picks concrete backends (memory or Redis, PostgreSQL).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from . import __version__, errors, logs, tracing
from .auth import MAX_TOKEN_CHARS, JwksRefresher, JwtVerifier, load_jwks_text, mint_token, parse_jwks_spec
from .banner import client_snippet as client_snippet  # re-exported
from .banner import dev_banner
from .config import Settings, ignored_supabase_variables

log = logging.getLogger("realtime_channels")

#: prctl(2) option: the signal a process gets when its parent dies
PR_SET_PDEATHSIG = 1
#: objects allocated (net) between two young collections (see the start of ``serve``)
GC_YOUNG_THRESHOLD = 10_000
#: an HTTP connection idle between requests is closed after this long (WebSockets are not idle)
KEEPALIVE_S = 75.0
#: request lines and header fields up to this long are read (aiohttp's default is 8,190), so a
#: token of up to MAX_TOKEN_CHARS in ``apikey``, ``x-api-key`` or ``Authorization`` reaches
#: verification, and a somewhat longer one gets its documented refusal (protocol.md §7.1)
MAX_REQUEST_LINE = 2 * MAX_TOKEN_CHARS

#: Exit statuses of ``serve``: a bad configuration, and a port that cannot be listened on.  A
#: ``--workers`` supervisor stops (instead of restarting) a worker that exits with either.
EXIT_CONFIG = 2
EXIT_CANNOT_LISTEN = 3

DESCRIPTION = """\
A drop-in, wire-compatible Supabase Realtime server: supabase-js and the Python realtime client
connect to it as they do to Supabase (broadcast, presence, postgres_changes, private channels).
"""

EPILOG = """\
Start with `realtime-channels serve` (development keys and a client snippet are printed when no
JWT secret is configured). Server settings come from REALTIME_* environment variables; a flag
given on the command line wins. `realtime-channels COMMAND --help` describes each command.
"""


def build_settings(args: argparse.Namespace) -> Settings:
    overrides = {k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None}
    return Settings(**overrides)


def build_functions(settings: Settings, current_node: Callable[[], Any]) -> Any:
    """Load and validate the functions file (a bad file refuses to start, naming the line)."""
    import orjson

    from .functions import FunctionsEngine, load_config
    from .protocol.codec import Broadcast
    from .protocol.session import TOPIC_PREFIX, stream_key

    assert settings.functions_config is not None
    config = load_config(settings.functions_config)

    def publish(sub_topic: str, event: str, payload: Any) -> None:
        b = Broadcast(TOPIC_PREFIX + sub_topic, event=event, data=orjson.dumps(payload))
        current_node().publish(stream_key(False, sub_topic), b)

    def presence(sub_topic: str, key: str, payload: Any) -> None:
        # a function's presence is owned by the node itself, one per (topic, key)
        owner = ("functions", key)
        stream = stream_key(False, sub_topic)
        if payload is None:
            current_node().untrack(stream, owner)
        elif not current_node().track(stream, owner, key, payload):
            log.warning("function presence on %s not tracked: the topic's presence state is full", sub_topic)

    engine = FunctionsEngine(config, secret=settings.functions_secret,
                             service_role_key=settings.functions_service_role_key,
                             publish=publish, database_url=settings.database_url, presence=presence)
    log.info("functions: %d triggers, %d gates from %s", len(config.triggers), len(config.gates),
             settings.functions_config)
    return engine


class PostgresTriggers:
    """The functions' postgres triggers as the change feed's sink: the reading node reports each
    change of a watched table once."""

    def __init__(self, functions: Any) -> None:
        self._functions = functions
        self._tables = [(t.schema or "*", t.table or "*") for t in functions.config.triggers if t.on == "postgres"]

    @property
    def tables(self) -> list[tuple[str, str]]:
        return self._tables

    def watches(self, schema: str, table: str) -> bool:
        from fnmatch import fnmatchcase

        return any(fnmatchcase(schema, s) and fnmatchcase(table, t) for s, t in self._tables)

    def on_change(self, schema: str, table: str, kind: str, data: dict[str, Any]) -> None:
        from .functions.engine import RealtimeEvent

        self._functions.observe(RealtimeEvent("postgres", f"{schema}:{table}", kind, data, None, schema, table))


async def serve(settings: Settings) -> None:
    from aiohttp import web

    from .node import Node
    from .runtime import build_node, load_verifier
    from .transport.app import build_app, shutdown_connections
    from .transport.guard import SlowRequestGuard, raise_descriptor_limit

    verifier, refresher, closers = await load_verifier(settings)
    node: Node | None = None

    def current_node() -> Node:  # the functions' callbacks run once the node exists
        assert node is not None
        return node

    functions = build_functions(settings, current_node) if settings.functions_config else None
    triggers = None
    if settings.database_url and functions is not None:
        triggers = PostgresTriggers(functions)
        if not triggers.tables:
            triggers = None
    node = build_node(settings, functions=functions, triggers=triggers)
    tenants = await open_tenants(settings) if settings.tenants_database_url else None
    app = build_app(settings, node, verifier, refresher, tenants=tenants)
    raise_descriptor_limit()
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=5,
                           keepalive_timeout=KEEPALIVE_S,
                           max_line_size=MAX_REQUEST_LINE, max_field_size=MAX_REQUEST_LINE)
    await runner.setup()
    assert runner.server is not None
    guard = SlowRequestGuard(runner.server, settings.handshake_timeout_ms / 1000)
    guard.start()
    listener: asyncio.Server | None = None
    if settings.websocket_engine == "direct":
        from .transport.direct import start_server

        listener = await start_server(app, runner.server, settings.host, settings.port, settings.reuse_port,
                                      settings.handshake_timeout_ms / 1000)
        port = listener.sockets[0].getsockname()[1] if listener.sockets else settings.port
    else:
        site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True,
                           reuse_port=settings.reuse_port or None)
        await site.start()
        port = runner.addresses[0][1] if runner.addresses else settings.port
    if settings.dev_secret_in_use and not settings.reuse_port:  # workers: the supervisor prints it
        show_banner(settings, dev_banner(settings, port))
    log.info("realtime-channels listening on http://%s:%s (ws path /realtime/v1/websocket)", settings.host, port)
    # What start-up made (modules, settings, the app) lives as long as the process: moved out of
    # the collector's reach, every full collection (a pause of the event loop) skips it.
    gc.collect()
    gc.freeze()
    # CPython's thresholds (700, 10, 10) promote what is in flight at each middle collection,
    # every ~7,000 new objects, and the promoted objects bring on a full collection (tens of ms
    # with many connections) every few seconds under load.  Young collections every 10,000 new
    # objects and middle ones every second of those promote ~3× less; the middle generation stays
    # small (≤ 30,000 objects) so that its collections, while thousands connect at once, stay short.
    gc.set_threshold(GC_YOUNG_THRESHOLD, 2, 10)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    if listener is not None:
        listener.close()
    await shutdown_connections(app)
    await guard.stop()
    await runner.cleanup()
    for closer in closers:
        await closer.close()


async def open_tenants(settings: Settings) -> Any:
    """Tenants in the server's database: migrated now, and with ``SEED_SELF_HOST`` the self-host
    tenant created or updated from the environment's JWT secret (or JWKS) and database."""
    from .tenants.crypto import Crypto
    from .tenants.model import Tenant
    from .tenants.store import TenantStore

    if not settings.db_enc_key:
        raise errors.ConfigError("REALTIME_TENANTS_DATABASE_URL needs DB_ENC_KEY (16 characters) to encrypt tenant secrets")
    try:
        crypto = Crypto(settings.db_enc_key, settings.db_enc_key_gcm)
    except ValueError as exc:
        raise errors.ConfigError(str(exc)) from exc
    assert settings.tenants_database_url is not None
    store = TenantStore(settings.tenants_database_url, crypto)
    await store.migrate()
    if settings.seed_self_host:
        import urllib.parse

        import orjson

        extensions: dict[str, dict[str, Any]] = {}
        if settings.database_url:
            url = urllib.parse.urlsplit(settings.database_url)
            extensions["postgres_cdc_rls"] = {
                "db_host": url.hostname or "localhost", "db_port": str(url.port or 5432),
                "db_name": urllib.parse.unquote(url.path.lstrip("/")) or "postgres",
                "db_user": urllib.parse.unquote(url.username or "postgres"),
                "db_password": urllib.parse.unquote(url.password or ""), "region": "local",
                "publication": settings.publication, "ssl_enforced": False}
        secret = settings.api_jwt_secret or settings.jwt_secret
        jwks = orjson.loads(settings.jwt_jwks) if settings.jwt_jwks and settings.jwt_jwks.lstrip().startswith("{") else None
        name = settings.self_host_tenant_name
        await store.put(Tenant(external_id=name, name=name, jwt_secret=secret, jwt_jwks=jwks, extensions=extensions))
        log.info("tenants: self-host tenant %s created or updated", name)
    return store


def show_banner(settings: Settings, banner: str) -> None:
    """Printed as it is; with JSON logs, logged as one record (every line of the log is JSON)."""
    if settings.log_format == "json":
        log.warning("%s", banner.strip())
    else:
        print(banner, file=sys.stderr, flush=True)


def run_async(coro: Any) -> None:
    try:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(coro)
    except ImportError:
        asyncio.run(coro)


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    settings = build_settings(args)
    logs.configure(settings.log_level, settings.log_format)
    ignored = ignored_supabase_variables(os.environ)
    if ignored:  # Supabase's compose block is accepted as it is (docs/configuration.md)
        log.debug("ignored: %s (Supabase settings with no meaning here)", ", ".join(ignored))
    if settings.dev_secret_exposed and not settings.allow_dev_secret:
        log.error("%s", errors.DevSecretExposed(settings.host))
        return EXIT_CONFIG
    if settings.workers > 1:
        return supervise(settings)
    if settings.reuse_port:  # a worker of --workers
        stop_with_supervisor()
    tracing.configure_from_env()
    try:
        run_async(serve(settings))
    except errors.ConfigError as exc:
        log.error("configuration error: %s", exc)
        return EXIT_CONFIG
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", settings.host, settings.port, exc.strerror)
        return EXIT_CANNOT_LISTEN
    return 0


def stop_with_supervisor() -> None:
    """A worker is sent SIGTERM (and stops as on any SIGTERM) when its supervisor dies, even of
    SIGKILL, instead of serving on alone (Linux; elsewhere the supervisor's own stop must do)."""
    import ctypes
    import os

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the supervisor died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def check_listen(host: str, port: int) -> OSError | None:
    """Bind the port once, as the workers will, to refuse at once when it is taken."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _, addr in infos:
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(addr)
    except OSError as exc:
        return exc
    return None


def supervise(settings: Settings) -> int:
    """``--workers N``: N server processes share the port (SO_REUSEPORT) and talk through Redis.

    Each worker is a full node; a worker that dies is restarted (with back-off).  SIGTERM or
    SIGINT stops them all."""
    import os
    import shutil
    import subprocess

    from . import metrics

    if not settings.redis_url:
        log.error("--workers %d needs REALTIME_REDIS_URL (or --redis-url): worker processes share "
                  "channels and presence through Redis", settings.workers)
        return 2
    if settings.port == 0:
        log.error("--workers needs an explicit --port (each worker binds the same one)")
        return 2
    taken = check_listen(settings.host, settings.port)
    if taken is not None:
        log.error("cannot listen on %s:%s: %s", settings.host, settings.port, taken.strerror or taken)
        return EXIT_CANNOT_LISTEN
    env = dict(os.environ)
    for key, value in settings.model_dump().items():
        if value is not None:
            env[f"REALTIME_{key.upper()}"] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    env["REALTIME_WORKERS"] = "1"
    env["REALTIME_REUSE_PORT"] = "true"
    env[metrics.MULTIPROC_ENV] = metrics_dir = metrics.workers_directory()  # one /metrics for all workers
    if settings.dev_secret_in_use:
        show_banner(settings, dev_banner(settings, settings.port))
    cmd = [sys.executable, "-m", "realtime_channels", "serve"]
    procs = [subprocess.Popen(cmd, env=env) for _ in range(settings.workers)]
    log.info("started %d workers on %s:%s: pids %s", settings.workers, settings.host, settings.port,
             " ".join(str(p.pid) for p in procs))
    stopping = False

    def stop(_sig: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.poll() is None:
                p.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    restarts = [0.0] * len(procs)
    status = 0
    while not stopping:
        for i, p in enumerate(procs):
            if p.poll() is not None and not stopping and p.returncode in (EXIT_CONFIG, EXIT_CANNOT_LISTEN):
                # restarting cannot help: the worker logged why; stop the others and say so
                log.error("worker pid %d exited with %s (%s); stopping all workers", p.pid, p.returncode,
                          "configuration error" if p.returncode == EXIT_CONFIG else
                          f"cannot listen on {settings.host}:{settings.port}")
                status = p.returncode
                stop(signal.SIGTERM, None)
                break
            if p.poll() is not None and not stopping:
                delay = min(30.0, 0.5 * 2 ** min(restarts[i], 6))
                log.error("worker pid %d exited with %s; restarting in %.1f s", p.pid, p.returncode, delay)
                time.sleep(delay)
                restarts[i] += 1
                metrics.worker_exited(p.pid, metrics_dir)
                procs[i] = subprocess.Popen(cmd, env=env)
        time.sleep(0.5)
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
    shutil.rmtree(metrics_dir, ignore_errors=True)
    return status


def parse_claim(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--claim expects key=value, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def cmd_token(args: argparse.Namespace) -> int:
    settings = build_settings(args)
    secret = settings.effective_jwt_secret
    if secret is None:
        print("error: minting needs REALTIME_JWT_SECRET (a JWKS holds only public keys)", file=sys.stderr)
        return 2
    if settings.dev_secret_in_use:
        print("warning: signing with the built-in DEVELOPMENT secret (no REALTIME_JWT_SECRET or "
              "--jwt-secret): only a server running without a configured secret accepts this token",
              file=sys.stderr)
    claims = dict(args.claim or [])
    print(mint_token(secret, args.role, now=time.time(), exp_seconds=args.exp, sub=args.sub, claims=claims))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from . import doctor

    out, note, status = doctor.main(build_settings(args), args.tenant, args.json)
    print(note, end="", file=sys.stderr)
    print(out, end="")
    return status


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="realtime-channels", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("serve", help="run the server")
    sp.add_argument("--host", help="bind address (REALTIME_HOST, default 127.0.0.1)")
    sp.add_argument("--port", type=int, help="port (REALTIME_PORT, default 4000)")
    sp.add_argument("--jwt-secret", dest="jwt_secret", help="HS256/384/512 secret (REALTIME_JWT_SECRET)")
    sp.add_argument("--jwt-jwks", dest="jwt_jwks", help="JWKS JSON, file or URL (REALTIME_JWT_JWKS)")
    sp.add_argument("--log-level", dest="log_level", choices=["debug", "info", "warning", "error"],
                    help="log verbosity (REALTIME_LOG_LEVEL, default info)")
    sp.add_argument("--log-format", dest="log_format", choices=["text", "json"],
                    help="text lines, or one JSON object per line (REALTIME_LOG_FORMAT, default text)")
    sp.add_argument("--database-url", dest="database_url", help="PostgreSQL URL (REALTIME_DATABASE_URL)")
    sp.add_argument("--redis-url", dest="redis_url", help="Redis URL: share channels between processes/machines")
    sp.add_argument("--workers", type=int, help="worker processes sharing the port (needs --redis-url)")
    sp.add_argument("--functions-config", dest="functions_config", help="functions TOML (REALTIME_FUNCTIONS_CONFIG)")
    sp.set_defaults(func=cmd_serve)

    tp = sub.add_parser("token", help="mint a JWT signed with the configured secret",
                        description="Print a JWT signed (HS256) with REALTIME_JWT_SECRET or --jwt-secret; "
                                    "without either, with the development secret `serve` uses then.")
    tp.add_argument("--role", required=True,
                    help="the `role` claim, e.g. anon, authenticated or service_role (required)")
    tp.add_argument("--sub", help="the `sub` claim (the user id RLS policies see as auth.uid())")
    tp.add_argument("--exp", type=float, default=3600, metavar="SECONDS",
                    help="lifetime in seconds from now (default 3600)")
    tp.add_argument("--claim", action="append", type=parse_claim, metavar="KEY=VALUE",
                    help="extra claim, repeatable; VALUE is parsed as JSON when it can be")
    tp.add_argument("--jwt-secret", dest="jwt_secret",
                    help="secret to sign with (REALTIME_JWT_SECRET; default: the development secret)")
    tp.set_defaults(func=cmd_token)

    dp = sub.add_parser("doctor", help="check the database, JWT and Redis set-up and say how to fix each problem",
                        description="Check a deployment (docs/doctor.md): each line is ✓, ✗ with a fix, or ! "
                                    "(a warning). Exits 1 when a check fails.")
    dp.add_argument("--database-url", dest="database_url", help="PostgreSQL URL (REALTIME_DATABASE_URL)")
    dp.add_argument("--tenant", help="a tenant's external_id in REALTIME_TENANTS_DATABASE_URL: check its "
                    "database and JWT settings (default: the environment's)")
    dp.add_argument("--json", action="store_true", help="print the results as a JSON list")
    dp.set_defaults(func=cmd_doctor)

    from .functions.cli import add_functions_commands

    add_functions_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (errors.ConfigError, ValidationError) as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
