"""Verified tokens, remembered: the same API key is verified at the upgrade and again at each
join (as its ``access_token``), so a verified signature is kept; the expiry is checked every
time.

The cache is keyed by the *normalised* token (what is verified), so the endless spellings of one
token (stray whitespace, percent-encoding) share one entry, and it is bounded by entries and by
bytes: the oldest entries go first.  Tokens over ``MAX_TOKEN_CHARS`` are refused before any of
this.  It is forgotten wholesale when the key set changes."""

from __future__ import annotations

from typing import Any

import orjson

from .. import errors
from . import MAX_TOKEN_CHARS, JwksRefresher, JwtVerifier, normalize_token

#: verified tokens remembered (signature only; expiry is always re-checked)
CLAIMS_CACHE_SIZE = 10_000
#: bytes of tokens and claims remembered at most
CLAIMS_CACHE_BYTES = 16 * 1024 * 1024


class ClaimsCache:
    def __init__(self, verifier: JwtVerifier, refresher: JwksRefresher | None = None,
                 size: int = CLAIMS_CACHE_SIZE, max_bytes: int = CLAIMS_CACHE_BYTES) -> None:
        self.verifier = verifier
        self.refresher = refresher
        self.size = size
        self.max_bytes = max_bytes
        self._claims: dict[str, tuple[dict[str, Any], int]] = {}
        self.bytes = 0

    async def verify(self, token: str, now: float) -> dict[str, Any]:
        """Verify a token, refreshing a URL JWKS first when it names an unknown key id."""
        if len(token) > MAX_TOKEN_CHARS:
            raise errors.TokenTooLarge()
        if self.refresher is not None and self.verifier.unknown_kid(token) is not None:
            if await self.refresher.refresh_for(token, now):
                self._claims.clear()  # the key set changed
                self.bytes = 0
        return self.verify_cached(token, now)

    def needs_refresh(self, token: str) -> bool:
        """Whether ``verify`` would first fetch the JWKS again (the token names an unknown key)."""
        return self.refresher is not None and self.verifier.unknown_kid(token) is not None

    def verify_cached(self, token: str, now: float) -> dict[str, Any]:
        """The claims of a valid token; raises the exact error (expired, bad signature…)."""
        if len(token) > MAX_TOKEN_CHARS:
            raise errors.TokenTooLarge()
        key = normalize_token(token)
        hit = self._claims.get(key)
        if hit is not None:
            exp = hit[0].get("exp")
            if isinstance(exp, int | float) and exp > now:
                return hit[0]
        claims = self.verifier.verify(key, now)
        cost = len(key) + len(orjson.dumps(claims))
        old = self._claims.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        while self._claims and (len(self._claims) >= self.size or self.bytes + cost > self.max_bytes):
            oldest = next(iter(self._claims))  # dicts keep insertion order: the oldest first
            self.bytes -= self._claims.pop(oldest)[1]
        self._claims[key] = (claims, cost)
        self.bytes += cost
        return claims

    def __len__(self) -> int:
        return len(self._claims)
