"""``realtime-channels doctor``: check a deployment and say exactly how to fix each problem.

The checks are pure functions from facts to :class:`Result` (so each verdict and its fix can be
read and tested on its own); the gatherers below them read the facts from PostgreSQL, Redis and
the JWT settings.  :func:`run` checks one :class:`Target` — a tenant's database URL, publication,
slots, JWT settings and Redis — and runs every check that still makes sense after an earlier one
failed: without a database connection the database checks are reported as skipped, not failed
again.  docs/doctor.md lists every check and its fix.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict

from ..config import Settings
from .checks import *  # noqa: F403 - the checks are part of the command's interface
from .checks import (
    MARKS,
    MIN_REDIS_MAJOR,
    NO_DATABASE,
    Result,
    Target,
    check_jwt,
    check_redis_version,
    fail,
    ok,
    redact,
)

def jwt_checks(target: Target) -> list[Result]:
    import urllib.error
    import urllib.request

    from .. import errors
    from ..auth import load_jwks_text, parse_jwks_spec

    problem, keys = None, 0
    if target.jwt_jwks is not None:
        try:
            kind, value = parse_jwks_spec(target.jwt_jwks)
            if kind == "url":
                with urllib.request.urlopen(value, timeout=TIMEOUT_S) as resp:  # noqa: S310 - http(s) only
                    text = resp.read().decode("utf-8")
            elif kind == "file":
                with open(value, encoding="utf-8") as f:
                    text = f.read()
            else:
                text = value
            keys = len(load_jwks_text(text).get("keys", []))
        except urllib.error.HTTPError as exc:
            problem = f"answered HTTP {exc.code} {exc.reason}"
        except urllib.error.URLError as exc:
            problem = f"unreachable ({exc.reason})"
        except (OSError, ValueError, errors.ConfigError) as exc:
            problem = str(exc)
    return check_jwt(target.jwt_secret, target.jwt_jwks, target.host, problem, keys)


def redis_checks(target: Target) -> list[Result]:
    if not target.redis_url:
        return [Result("redis", "skip", "redis", "not configured (channels are shared within this process only)")]
    import redis

    shown = redact(target.redis_url)
    client = redis.Redis.from_url(target.redis_url, socket_connect_timeout=TIMEOUT_S, socket_timeout=TIMEOUT_S)
    try:
        client.ping()
        version = str(client.info("server").get("redis_version", "0"))
    except redis.RedisError as exc:
        return [fail("redis", f"redis {shown}", f"no answer to PING ({exc})",
                     f"start redis-server, or correct REALTIME_REDIS_URL; test with: "
                     f"redis-cli -u '{redact(target.redis_url, None)}' ping")]
    finally:
        client.close()
    return [check_redis_version(version)]


def run(target: Target) -> list[Result]:
    from .database import database_checks

    return [*database_checks(target), *jwt_checks(target), *redis_checks(target)]


def render(results: Sequence[Result]) -> str:
    return "\n".join(line for r in results for line in r.lines()) + "\n"


def render_json(results: Sequence[Result]) -> str:
    return json.dumps([asdict(r) for r in results], ensure_ascii=False, indent=2) + "\n"


def exit_status(results: Iterable[Result]) -> int:
    """1 when any check failed; warnings and skipped checks do not fail."""
    return 1 if any(r.status == "fail" for r in results) else 0


def main(settings: Settings, tenant: str | None, as_json: bool) -> tuple[str, str, int]:
    """Stdout, a note for stderr, and the exit status of ``doctor``."""
    note = ""
    target: Target | Result = Target.from_settings(settings)
    if settings.tenants_database_url and tenant is not None:
        from .database import load_tenant

        target = load_tenant(settings, tenant)
    elif settings.tenants_database_url:
        note = ("note: tenants live in REALTIME_TENANTS_DATABASE_URL; checking the environment's settings "
                "(give --tenant ID to check a tenant's database and JWT settings)\n")
    elif tenant is not None:
        note = (f"note: no REALTIME_TENANTS_DATABASE_URL: the environment defines the one tenant; "
                f"checking its settings for {tenant!r}\n")
    results = [target] if isinstance(target, Result) else run(target)
    return (render_json if as_json else render)(results), note, exit_status(results)
