"""Verified tokens, remembered: the same API key is verified at the upgrade and again at each
join (as its ``access_token``), so a verified signature is kept; the expiry is checked every
time.  The cache is bounded and forgotten wholesale when full or when the key set changes."""

from __future__ import annotations

from typing import Any

from . import JwksRefresher, JwtVerifier

#: verified tokens remembered (signature only; expiry is always re-checked)
CLAIMS_CACHE_SIZE = 10_000


class ClaimsCache:
    def __init__(self, verifier: JwtVerifier, refresher: JwksRefresher | None = None,
                 size: int = CLAIMS_CACHE_SIZE) -> None:
        self.verifier = verifier
        self.refresher = refresher
        self.size = size
        self._claims: dict[str, dict[str, Any]] = {}

    async def verify(self, token: str, now: float) -> dict[str, Any]:
        """Verify a token, refreshing a URL JWKS first when it names an unknown key id."""
        if self.refresher is not None and self.verifier.unknown_kid(token) is not None:
            if await self.refresher.refresh_for(token, now):
                self._claims.clear()  # the key set changed
        return self.verify_cached(token, now)

    def verify_cached(self, token: str, now: float) -> dict[str, Any]:
        """The claims of a valid token; raises the exact error (expired, bad signature…)."""
        claims = self._claims.get(token)
        if claims is not None:
            exp = claims.get("exp")
            if isinstance(exp, int | float) and exp > now:
                return claims
        claims = self.verifier.verify(token, now)
        if len(self._claims) >= self.size:
            self._claims.clear()
        self._claims[token] = claims
        return claims

    def __len__(self) -> int:
        return len(self._claims)
