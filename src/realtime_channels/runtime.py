"""Assembling one running node from settings: its backbone, JWT verifier, change feed,
private-channel authorizer and database broadcasts.  The server builds one for the tenant the
environment defines, and one per tenant of the database (tenants/directory.py)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import errors
from .auth.jwks import load_jwks_text, parse_jwks_spec

from .auth import JwksRefresher, JwtVerifier
from .config import Settings
from .node import Node
from .pubsub import PubSub

__all__ = ["Runtime", "build_node", "load_verifier"]

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    node: Node
    verifier: JwtVerifier
    refresher: JwksRefresher | None = None
    #: the HTTP session of a JWKS URL, closed with the runtime
    closers: list[Any] = field(default_factory=list)

    async def close(self) -> None:
        for closer in self.closers:
            await closer.close()


async def load_verifier(settings: Settings) -> tuple[JwtVerifier, JwksRefresher | None, list[Any]]:
    jwks, _, url_source = await _load_jwks(settings)
    verifier = JwtVerifier(settings.effective_jwt_secret, jwks)
    refresher = JwksRefresher(verifier, url_source[1]) if url_source is not None else None
    return verifier, refresher, [url_source[0]] if url_source is not None else []


def build_node(settings: Settings, *, prefix: str = "rc:", functions: Any = None, triggers: Any = None) -> Node:
    """A node wired as ``settings`` say (not started).  ``prefix`` namespaces its Redis channels
    and keys, so nodes of different tenants on one Redis never see each other's traffic."""
    pubsub: PubSub
    if settings.redis_url and settings.redis_cluster:
        from .pubsub.redis_cluster import RedisClusterPubSub

        pubsub = RedisClusterPubSub(settings.redis_url, prefix=prefix, limits=settings.resume_limits)
    elif settings.redis_url:
        from .pubsub.redis import RedisPubSub

        pubsub = RedisPubSub(settings.redis_url, prefix=prefix, limits=settings.resume_limits)
    else:
        from .pubsub.memory import MemoryPubSub

        pubsub = MemoryPubSub(limits=settings.resume_limits)
    changes = None
    authorizer = None
    if settings.database_url:
        from .cdc.changes import PostgresChanges
        from .messages.authz import ChannelAuthorizer

        changes = PostgresChanges(settings.database_url, publication=settings.publication,
                                  slot=settings.slot_name, clustered=bool(settings.redis_url),
                                  sink=triggers, rls_mode=settings.cdc_rls_mode,
                                  retention=settings.change_retention(),
                                  snapshot_max_rows=settings.snapshot_max_rows)
        authorizer = ChannelAuthorizer(settings.database_url)
    gatekeeper = functions if functions is not None and functions.config.gates else None
    node = Node(settings, pubsub, changes=changes, authorizer=authorizer,
                services=[functions] if functions is not None else [], events=functions,
                gatekeeper=gatekeeper)
    if settings.database_url:
        from .messages.service import MessagesService

        node.services.append(MessagesService(
            settings.database_url, node, publication=settings.messages_publication,
            slot=settings.messages_slot_name, retention_days=settings.messages_retention_days,
            auth_helpers=settings.install_auth_helpers))
    return node


async def _load_jwks(settings: Settings) -> tuple[dict[str, Any] | None, JwksRefresher | None, Any]:
    """Returns the initial JWKS, a refresher for URL sources, and its HTTP session (or None)."""
    if settings.jwt_jwks is None:
        return None, None, None
    kind, value = parse_jwks_spec(settings.jwt_jwks)
    if kind == "json":
        return load_jwks_text(value), None, None
    if kind == "file":
        try:
            return load_jwks_text(Path(value).read_text(encoding="utf-8")), None, None
        except OSError as exc:
            raise errors.ConfigError(f"REALTIME_JWT_JWKS: cannot read {value}: {exc.strerror}") from exc
    import aiohttp

    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    async def fetch() -> dict[str, Any]:
        async with http.get(value) as resp:
            resp.raise_for_status()
            return load_jwks_text(await resp.text())

    try:
        jwks: dict[str, Any] | None = await fetch()
    except Exception as exc:  # noqa: BLE001 - start anyway; unknown kids trigger a refresh
        log.error("could not fetch JWKS from %s (%s); will retry on the first unknown key id", value, exc)
        jwks = None
    return jwks, None, (http, fetch)
