"""One HTTP request to the server, sent exactly as given (protocol.md §1.7, §1.8)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL


@dataclass(frozen=True, slots=True)
class Resp:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def http_request(
    server: Any,
    method: str,
    path: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
) -> Resp:
    """One HTTP request; the path is sent exactly as given (no re-quoting of %3A etc.)."""
    url = URL(f"{server.http_url}{path}", encoded=True)
    async with aiohttp.ClientSession() as session:
        async with session.request(
            method,
            url,
            headers=dict(headers or {}),
            data=body,
            skip_auto_headers=["Content-Type"],
        ) as r:
            return Resp(r.status, {k: v for k, v in r.headers.items()}, await r.read())


