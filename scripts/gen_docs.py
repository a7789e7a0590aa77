#!/usr/bin/env python3
"""Generate the pages of docs/ that are derived from the code:

- ``docs/configuration.md`` from ``realtime_channels.config.Settings`` (every ``REALTIME_*``
  variable: default, other accepted names, allowed values) and the ``realtime-channels``
  argument parser (every command and flag);
- ``docs/compatibility.md`` from the ``@pytest.mark.compat(...)`` markers on the tests, against
  the conformance checklist of ``docs/protocol.md`` §10.

Usage: ``.venv/bin/python scripts/gen_docs.py`` writes both pages; ``--check`` writes nothing and
exits with status 1 (naming the stale pages) when a page differs from what the code gives.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
TESTS = ROOT / "tests"
sys.path.insert(0, str(ROOT / "src"))

ENV_PREFIX = "REALTIME_"

#: What each setting means, for users (a field not listed here uses its ``Field(description=...)``).
#: A new setting with neither makes the generator fail, so every variable is documented.
MEANINGS: dict[str, str] = {
    "presence_over_limit": "what a presence push over `REALTIME_MAX_CLIENT_PRESENCE_EVENTS_PER_WINDOW` does: "
    "`shutdown` closes the channel with `ClientPresenceRateLimitReached`, as Supabase; `coalesce` answers it ok "
    "and applies the latest such push (track or untrack) when the window opens, so a burst ends at the latest "
    "state",
    "presence_coalesce_ms": "joins and leaves of one topic within this many milliseconds go out as one `presence_diff` "
    "(the official clients merge any diff), so a room that n members join costs each member a few diffs, not n; a "
    "channel that joins meanwhile gets them before its `presence_state`; `0`: one diff per change, right away",
    "tenants_database_url": "PostgreSQL URL of the server's own database: tenants live in its `_realtime` schema "
    "(Supabase's tables, created by versioned migrations) and the admin API `/api/tenants` manages them; each request "
    "is served for the tenant its Host header names ([tenants](tenants.md)); unset: the environment defines the one "
    "tenant and every Host maps to it",
    "db_enc_key": "16-character key that encrypts tenants' JWT secrets and database settings in the tenant store "
    "(AES-128-ECB, as Supabase); required with `REALTIME_TENANTS_DATABASE_URL`, unused without it",
    "db_enc_key_gcm": "32-character key of AES-256-GCM values (`g1:` prefix) Supabase may have written; they are read "
    "with it",
    "api_jwt_secret": "the admin API (`/api/tenants…`, `/api/tenants/{id}/health`) answers requests with "
    "`Authorization: Bearer <a JWT signed with this secret (HS256/384/512)>`, others get 403 with an empty body (as "
    "Supabase); unset: a token the tenant's own keys verify. `API_JWT_SECRET` also sets `REALTIME_JWT_SECRET` when "
    "that is unset, as Supabase's self-host set-up does",
    "seed_self_host": "with tenants in a database, create or update the self-host tenant at start from the JWT secret "
    "(or JWKS) and `REALTIME_DATABASE_URL`",
    "self_host_tenant_name": "the id of the tenant the environment defines (Supabase's `external_id`): "
    "`/api/tenants/<this>/health` answers, another id gets 404 `{\"message\": \"not found\"}`; with tenants in a "
    "database, the id `SEED_SELF_HOST` creates",
    "host": "bind address; use `0.0.0.0` to accept connections from other machines",
    "port": "port to listen on (`0` picks a free one)",
    "jwt_secret": "HS256/384/512 secret that verifies API keys, channel tokens and REST tokens. "
    "Without it (and without a JWKS) a built-in **development** secret is used and printed with a warning",
    "jwt_jwks": "JWKS for RS/ES/EdDSA keys (and `oct` HS keys chosen by `kid`): JSON text, a file path, "
    "or an http(s) URL fetched at start and again on an unknown `kid` (at most every 30 s)",
    "log_level": "server log verbosity",
    "websocket_engine": "who serves WebSocket upgrades: `direct` (the socket's own asyncio protocol: "
                        "less memory per connection and faster connects) or `aiohttp` (its WebSocket "
                        "response); REST is served by aiohttp either way",
    "log_format": "`text` lines, or `json`: one JSON object per line with the socket, topic and request "
                  "each record was logged for ([observability](observability.md))",
    "database_url": "PostgreSQL URL, e.g. `postgresql://realtime:pw@db:5432/app`; enables postgres_changes, "
    "private channels, database broadcast and replay ([postgres](postgres.md))",
    "publication": "publication whose tables can be subscribed to (created empty when missing)",
    "slot_name": "the permanent logical replication slot of postgres_changes; give each deployment its own "
    "and drop it (`select pg_drop_replication_slot('…')`) when you retire one",
    "cdc_rls_mode": "`per_subscriber` checks RLS with one query per subscriber per change, as Supabase "
    "does; it exists only so the benchmark can compare",
    "redis_url": "Redis URL: processes and machines share channels, presence and limits through it "
    "([scale-out](scale-out.md))",
    "redis_cluster": "`REALTIME_REDIS_URL` names a node of a Redis Cluster (Redis 7 or later): the backbone "
    "finds the other nodes from it and uses sharded pub/sub, each topic on the shard of its slot "
    "([scale-out](scale-out.md#redis-cluster)); ignored without `REALTIME_REDIS_URL`",
    "workers": "worker processes sharing the port (SO_REUSEPORT); more than one needs `REALTIME_REDIS_URL`",
    "reuse_port": "set by the `--workers` supervisor for its workers (bind a shared port); not for direct use",
    "functions_config": "TOML file of triggers and gates ([functions](functions.md))",
    "functions_secret": "`whsec_<base64>` secret that signs requests to HTTP functions (Standard Webhooks)",
    "functions_service_role_key": "sent as `Authorization: Bearer` to HTTP functions (e.g. a Supabase service_role key)",
    "join_error_backoff_ms": "delay before a join error is answered, as Supabase does to slow retry storms. "
    "The official clients wait 10 s for a join reply; **a client whose own join timeout is 5 s or less "
    "reports a timeout instead of the reason** — lower this value for such clients",
    "connect_error_backoff_ms": "delay before a refused WebSocket upgrade is answered (as Supabase)",
    "idle_timeout_ms": "a socket that sends no frame for this long is closed (1000)",
    "handshake_timeout_ms": "a connection that has not sent a complete HTTP request (headers) this long after "
    "connecting is closed, so slow half-sent requests cannot hold descriptors; a REST body that has not "
    "arrived this long after its headers is answered 408; the process also raises its "
    "soft descriptor limit to the hard limit at start (each socket holds one)",
    "max_frame_bytes": "a larger inbound frame closes the socket (1009); also the REST body limit (decoded; 413)",
    "outbox_max_bytes": "a socket with more unsent bytes than this is a slow consumer: closed with 1008 `slow consumer` "
                        "(one frame larger than this, queued behind less, is let through: a big `presence_state`)",
    "max_connections_per_address": "open WebSockets one client address may hold on one server process (each worker "
                                   "of `--workers` counts its own); one more is refused with 429 "
                                   "`Too many connections from this client address`; 0: no cap",
    "client_address_header": "take the client address for `REALTIME_MAX_CONNECTIONS_PER_ADDRESS` from the last "
                             "entry of this header (e.g. `X-Forwarded-For` behind a proxy that appends to it); "
                             "set it only behind such a proxy, since clients can send the header themselves",
    "max_presence_state_bytes": "a presence `track` that would make its topic's `presence_state` larger than this "
                                "is refused with an error reply; nothing is tracked and the channel stays",
    "max_payload_size_in_kb": "broadcast and presence payload limit: this × 1000 + 500 bytes",
    "max_channels_per_client": "channels one socket may join (`ChannelRateLimitReached`)",
    "max_client_presence_events_per_window": "presence pushes one channel may make per window",
    "client_presence_window_ms": "that window",
    "max_events_per_second": "tenant events/s (rolling one-minute average of broadcasts sent, every per-channel "
    "delivery, REST and database broadcasts); at the limit a sending channel is shut down with "
    "`Too many messages per second`, REST answers 429 and database broadcasts are dropped",
    "max_concurrent_users": "sockets that have joined a channel; beyond it upgrades get 429 and joins "
    "`ConnectionRateLimitReached`",
    "max_joins_per_second": "rolling joins/s; beyond it `ClientJoinRateLimitReached` and the socket is closed (1001)",
    "max_presence_events_per_second": "rolling presence traffic; beyond it a tracking channel is shut down "
    "(`Too many presence messages per second`)",
    "max_client_frames_per_second": "inbound frames per socket per second (burst as large); a faster sender is "
    "read more slowly (TCP back-pressure), nothing is dropped. This server's own protection",
    "max_bytes_per_second": "kept and reported like Supabase's tenant field; not enforced (as in Supabase)",
    "presence_enabled": "every join behaves as `presence.enabled: true`",
    "private_only": "refuse public channels (`PrivateOnly`)",
    "allow_dev_secret": "allow the built-in development JWT secret on an address other than loopback "
    "(refused by default: anyone can mint tokens with it)",
    "messages_publication": "publication of `realtime.messages`, the feed of database broadcasts",
    "messages_slot_name": "replication slot of the database-broadcast feed",
    "messages_retention_days": "daily partitions of `realtime.messages` older than this are dropped",
    "install_auth_helpers": "on a plain PostgreSQL, create `auth.uid()`, `auth.role()` and `auth.jwt()` "
    "(reading `request.jwt.claims`) when missing",
    "metrics_jwt_secret": "`GET /metrics` answers only requests with `Authorization: Bearer <a JWT signed with this "
    "secret (HS256/384/512)>`, others get 403; unset: only clients on this machine (loopback, not through a proxy) "
    "may read it ([metrics](metrics.md))",
    "token_recheck_ms": "channel tokens are verified again at `exp` or after this long, whichever is sooner",
    "db_host": "database host; with the other `REALTIME_DB_*` parts it builds the database URL when "
    "`REALTIME_DATABASE_URL` is unset. Setting any one part is enough: the others take Supabase's defaults "
    "(`127.0.0.1`, `5432`, `supabase_admin`, `postgres`, `postgres`)",
    "db_port": "database port (part of the database URL, see `REALTIME_DB_HOST`; default then `5432`)",
    "db_user": "database user (part of the database URL, see `REALTIME_DB_HOST`; default then `supabase_admin`)",
    "db_password": "database password (part of the database URL, see `REALTIME_DB_HOST`; URL-quoted, so any "
    "character may be used; default then `postgres`)",
    "db_name": "database name (part of the database URL, see `REALTIME_DB_HOST`; default then `postgres`)",
    "db_after_connect_query": "accepted and kept: Supabase runs it on the connections to its own tenant store "
    "(`SET search_path TO _realtime` in its compose), never on the tenant's database, and this server serves "
    "the one tenant from the environment, so it runs it on no connection",
    "region": "reported as `region` by `/api/tenants/{id}/health` (Supabase: the node's region)",
    "resume_window_s": "seconds broadcasts and postgres changes are retained so that a channel joined with "
    "`config.broadcast.resume` or `config.postgres_changes_options.resume` can pick up where it stopped "
    "([protocol](protocol.md) §4.10); a broadcast stream idle this long is forgotten and starts a new epoch; the "
    "replication slot is confirmed only up to changes older than this, so a restarted server reads them again; "
    "`0` turns offsets and resume off (such joins are refused)",
    "resume_max_messages": "broadcasts retained per stream (topic, public or private, in memory or in Redis); "
    "a resume from before the oldest one is told how many it missed",
    "resume_max_changes": "postgres changes retained on one process, all tables together, for "
    "`config.postgres_changes_options.resume` ([protocol](protocol.md) §4.10); a resume from before the oldest "
    "one gets a gap message",
    "snapshot_max_rows": "rows a binding with `snapshot: true` may receive when its channel joins "
    "([protocol](protocol.md) §6.10); more gives the channel a `SnapshotTooLarge` system error instead of rows, "
    "and its changes flow as without a snapshot",
    "resume_max_bytes": "retained broadcast bytes on one process, all streams together (the in-memory backbone, "
    "and a Redis node's own offsets while Redis is away); the least recently used stream gives up its oldest "
    "messages first. With Redis the log lives in Redis and is bounded by the window, the per-stream count and "
    "Redis's own `maxmemory`",
}

#: Supabase's own name for a setting (tenant field or environment variable), where one exists.
SUPABASE_NAMES: dict[str, str] = {
    "db_enc_key": "`DB_ENC_KEY`",
    "db_enc_key_gcm": "`DB_ENC_KEY_GCM`",
    "api_jwt_secret": "`API_JWT_SECRET`",
    "seed_self_host": "`SEED_SELF_HOST`",
    "self_host_tenant_name": "`SELF_HOST_TENANT_NAME`",
    "jwt_secret": "tenant `jwt_secret`",
    "jwt_jwks": "tenant `jwt_jwks`",
    "max_payload_size_in_kb": "tenant `max_payload_size_in_kb`",
    "max_channels_per_client": "tenant `max_channels_per_client`",
    "max_client_presence_events_per_window": "tenant `max_client_presence_events_per_window`",
    "client_presence_window_ms": "tenant `client_presence_window_ms`",
    "max_events_per_second": "tenant `max_events_per_second`",
    "max_concurrent_users": "tenant `max_concurrent_users`",
    "max_joins_per_second": "tenant `max_joins_per_second`",
    "max_presence_events_per_second": "tenant `max_presence_events_per_second`",
    "max_bytes_per_second": "tenant `max_bytes_per_second`",
    "presence_enabled": "tenant `presence_enabled`",
    "private_only": "tenant `private_only`",
    "publication": "publication `supabase_realtime`",
}


# --- configuration.md -----------------------------------------------------------------------


def _env_names(name: str, info: Any) -> list[str]:
    """The environment names pydantic-settings accepts for a field (aliases replace the prefix)."""
    alias = info.validation_alias
    if alias is None:
        return [ENV_PREFIX + name.upper()]
    choices = getattr(alias, "choices", None)
    if choices is None:
        return [str(alias).upper()]
    return [str(c).upper() for c in choices if isinstance(c, str)]


def _default(info: Any) -> str:
    if info.default_factory is not None:
        return "(computed)"
    value = info.default
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    return f"`{value}`"


def _allowed(info: Any) -> str:
    parts: list[str] = []
    args = typing.get_args(info.annotation)
    if typing.get_origin(info.annotation) is typing.Literal:
        parts.append(" / ".join(f"`{a}`" for a in args))
    elif info.annotation is bool:
        parts.append("`true` / `false`")
    for meta in info.metadata:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            if getattr(meta, attr, None) is not None:
                parts.append(f"{sign} {getattr(meta, attr)}")
        if getattr(meta, "pattern", None):
            parts.append("an SQL identifier")
    return ", ".join(parts)


def _flags() -> dict[str, list[str]]:
    """Setting name → the CLI flags that set it (``serve --port``)."""
    from realtime_channels.cli import parser

    out: dict[str, list[str]] = {}
    for command, sub in _subcommands(parser()):
        for action in sub._actions:
            if action.option_strings and action.dest not in ("help",):
                out.setdefault(action.dest, []).append(f"`{command} {max(action.option_strings, key=len)}`")
    return out


def _subcommands(p: argparse.ArgumentParser, prefix: str = "") -> list[tuple[str, argparse.ArgumentParser]]:
    found: list[tuple[str, argparse.ArgumentParser]] = []
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                command = f"{prefix} {name}".strip()
                found.append((command, sub))
                found.extend(_subcommands(sub, command))
    return found


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def configuration_page() -> str:
    from realtime_channels.cli import parser
    from realtime_channels.config import IGNORED_SUPABASE_VARIABLES, Settings

    flags = _flags()
    rows = []
    missing = []
    for name, info in Settings.model_fields.items():
        meaning = MEANINGS.get(name) or info.description
        if not meaning:
            missing.append(name)
            continue
        names = _env_names(name, info)
        primary = next((n for n in names if n.startswith(ENV_PREFIX)), names[0])
        also = ", ".join(f"`{n}`" for n in names if n != primary)
        allowed = _allowed(info)
        text = _cell(meaning) + (f"; {allowed}" if allowed else "")
        if name in SUPABASE_NAMES:
            text += f" (Supabase: {SUPABASE_NAMES[name]})"
        rows.append(f"| `{primary}` | {_default(info)} | {text} | {', '.join(flags.get(name, [])) or '—'} | {also or '—'} |")
    if missing:
        raise SystemExit(
            "gen_docs: no description for setting(s) " + ", ".join(missing)
            + ": give the Field a description= or add it to MEANINGS in scripts/gen_docs.py"
        )
    lines = [
        "# Configuration",
        "",
        "<!-- Generated by scripts/gen_docs.py from src/realtime_channels/config.py and cli.py; do not edit. -->",
        "",
        "Every setting is an environment variable; the flags of `realtime-channels serve` override",
        "them. Names are not case-sensitive. Booleans take `true`/`false` (also `1`/`0`, `yes`/`no`).",
        "A value outside its allowed range stops the server at start with a configuration error.",
        "",
        "The limits are Supabase's per-tenant settings with Supabase's defaults. They count every",
        "delivery, so a busy room reaches 100 events/s quickly: raise them for anything beyond a demo.",
        "",
        "| variable | default | meaning | flag | also accepted |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "**Join errors wait 5 s by default**, as in Supabase (`REALTIME_JOIN_ERROR_BACKOFF_MS`): the",
        "official clients wait 10 s for a join reply and see the reason, but a client whose own timeout",
        "is 5 s or less reports a timeout instead of the reason. Lower the setting (e.g. to `1000`) when",
        "you use such a client; the error codes themselves are listed in [error codes](error-codes.md).",
        "",
        "**Supabase's names.** The variables of Supabase's self-host `realtime` service are accepted",
        "under their own names (the *also accepted* column), so its docker-compose `environment:` block",
        "works as it is ([postgres](postgres.md#running-inside-supabases-self-host-stack)); when both",
        "names of a setting are set, the `REALTIME_*` one wins. These of its variables mean nothing",
        "here; they are accepted and named once at start-up (debug level, `ignored: …`):",
        "",
        *[f"- `{name}`: {reason}" for name, reason in IGNORED_SUPABASE_VARIABLES.items()],
        "",
        "**Traces** are configured by OpenTelemetry's standard variables, not by `REALTIME_*` ones:",
        "`OTEL_TRACES_EXPORTER`, `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME` and the others the",
        "SDK reads; they are off unless an exporter is set ([observability](observability.md)).",
        "",
        "## Command line",
        "",
    ]
    root = parser()
    for command, sub in _subcommands(root):
        helps = [a for a in sub._actions if a.option_strings and a.dest != "help"]
        positional = [a for a in sub._actions if not a.option_strings and not isinstance(a, argparse._SubParsersAction)]
        if not helps and not positional:
            continue
        lines += [f"### `realtime-channels {command}`", ""]
        if sub.description:
            lines += [_cell(sub.description), ""]
        lines += ["| option | meaning |", "|---|---|"]
        for a in positional + helps:
            opt = ", ".join(a.option_strings) if a.option_strings else a.dest
            if a.option_strings and a.nargs != 0:
                opt += f" {a.metavar or a.dest.upper()}"
            text = a.help or ""
            if a.choices:
                text = (text + "; " if text else "") + "one of " + ", ".join(f"`{c}`" for c in a.choices)
            if a.required:
                text = (text + " " if text else "") + "(required)"
            lines.append(f"| `{opt}` | {_cell(text) or '—'} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


# --- compatibility.md -----------------------------------------------------------------------


@dataclass
class Coverage:
    tests: list[str] = field(default_factory=list)
    partial: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def checklist() -> dict[int, str]:
    """The numbered items of docs/protocol.md §10."""
    text = (DOCS / "protocol.md").read_text(encoding="utf-8")
    start = text.index("\n## 10.")
    items: dict[int, str] = {}
    for m in re.finditer(r"^(\d+)\. (.+)$", text[start:], re.M):
        items[int(m.group(1))] = m.group(2).strip()
    return items


def _compat_marks(func: ast.AST) -> list[tuple[list[int], dict[str, str]]]:
    marks = []
    for dec in getattr(func, "decorator_list", []):
        if (isinstance(dec, ast.Call) and isinstance(dec.func, ast.Attribute) and dec.func.attr == "compat"
                and isinstance(dec.func.value, ast.Attribute) and dec.func.value.attr == "mark"):
            nums = [int(ast.literal_eval(a)) for a in dec.args]
            kw = {k.arg: str(ast.literal_eval(k.value)) for k in dec.keywords if k.arg}
            marks.append((nums, kw))
    return marks


def collect_markers() -> dict[int, Coverage]:
    coverage: dict[int, Coverage] = {}
    for path in sorted(TESTS.rglob("test_*.py")):
        if "node_modules" in path.parts:
            continue
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
        scopes: list[tuple[str, ast.AST]] = [("", n) for n in tree.body]
        while scopes:
            prefix, node = scopes.pop(0)
            if isinstance(node, ast.ClassDef):
                scopes.extend((f"{prefix}{node.name}::", n) for n in node.body)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for nums, kw in _compat_marks(node):
                    for n in nums:
                        cov = coverage.setdefault(n, Coverage())
                        test_id = f"{rel}::{prefix}{node.name}"
                        if test_id not in cov.tests:
                            cov.tests.append(test_id)
                        if kw.get("partial") and kw["partial"] not in cov.partial:
                            cov.partial.append(kw["partial"])
                        if kw.get("note") and kw["note"] not in cov.notes:
                            cov.notes.append(kw["note"])
    return coverage


def compatibility_page() -> str:
    items = checklist()
    coverage = collect_markers()
    unknown = sorted(set(coverage) - set(items))
    if unknown:
        raise SystemExit(f"gen_docs: compat markers name items not in docs/protocol.md §10: {unknown}")
    rows = []
    counts = {"✅": 0, "⚠️": 0, "❌": 0}
    for n, title in sorted(items.items()):
        cov = coverage.get(n, Coverage())
        status = "❌" if not cov.tests else ("⚠️" if cov.partial else "✅")
        counts[status] += 1
        cell = ", ".join(f"`{t}`" for t in cov.tests) or "—"
        extra = cov.partial + cov.notes
        if extra:
            cell += " — " + "; ".join(extra)
        rows.append(f"| {n} | {_cell(title)} | {status} | {_cell(cell)} |")
    lines = [
        "# Compatibility",
        "",
        "<!-- Generated by scripts/gen_docs.py from the @pytest.mark.compat markers in tests/; do not edit. -->",
        "",
        f"Each item of the conformance checklist ([protocol §10](protocol.md#10-conformance-checklist)) with",
        "the tests that assert it. The tests run against a real server process, with the official",
        "clients (supabase-js / realtime-js 2.119 and the Python `realtime` 2.34.1) or a raw",
        "WebSocket/HTTP client, and against a real PostgreSQL for the database items. ⚠️ marks an item",
        "tested only in a scaled-down form.",
        "",
        f"Totals: {counts['✅']} ✅ covered, {counts['⚠️']} ⚠️ partial, {counts['❌']} ❌ not covered.",
        "",
        "To tie a test to an item, decorate it with `@pytest.mark.compat(<item>, …)` (optionally",
        "`partial=\"…\"` or `note=\"…\"`) and run `scripts/gen_docs.py`.",
        "",
        "| # | item | status | tests |",
        "|---|---|---|---|",
        *rows,
    ]
    return "\n".join(lines) + "\n"


# --- main -------------------------------------------------------------------------------------

PAGES = {
    "configuration.md": configuration_page,
    "compatibility.md": compatibility_page,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--check", action="store_true", help="exit 1 if a generated page is stale; write nothing")
    args = ap.parse_args(argv)
    stale = []
    for name, build in PAGES.items():
        path = DOCS / name
        text = build()
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote docs/{name}")
    if stale:
        print("stale: " + ", ".join(f"docs/{n}" for n in stale) + " — run scripts/gen_docs.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
