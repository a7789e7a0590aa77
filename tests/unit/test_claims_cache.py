"""The verified-token cache cannot be grown by re-spelling one token, and is bounded in bytes."""

from __future__ import annotations

import time
import urllib.parse

import pytest

from realtime_channels import errors
from realtime_channels.auth import MAX_TOKEN_CHARS, JwtVerifier, mint_token
from realtime_channels.auth.claims import ClaimsCache

SECRET = "claims-cache-test-secret-0123456789abcdef"


def token(**claims: object) -> str:
    return mint_token(SECRET, "anon", now=time.time(), exp_seconds=3600, claims=dict(claims))


def test_spellings_of_one_token_share_one_entry() -> None:
    cache = ClaimsCache(JwtVerifier(SECRET))
    t = token()
    spellings = [t, f" {t} ", f"{t}\n", urllib.parse.quote(t, safe=""), t[:10] + "\t" + t[10:],
                 urllib.parse.quote(f" {t}", safe="")]
    for spelling in spellings * 50:
        assert cache.verify_cached(spelling, time.time())["role"] == "anon"
    assert len(cache) == 1


def test_the_cache_is_bounded_in_bytes_and_keeps_the_newest() -> None:
    cache = ClaimsCache(JwtVerifier(SECRET), max_bytes=200_000)
    tokens = [token(n=i, pad="x" * 3000) for i in range(300)]
    for t in tokens:
        cache.verify_cached(t, time.time())
        assert cache.bytes <= 200_000
    assert 0 < len(cache) < 300
    # the newest is remembered, and every token still verifies
    before = len(cache)
    cache.verify_cached(tokens[-1], time.time())
    assert len(cache) == before
    assert cache.verify_cached(tokens[0], time.time())["n"] == 0


def test_the_cache_is_bounded_in_entries() -> None:
    cache = ClaimsCache(JwtVerifier(SECRET), size=10)
    for i in range(50):
        cache.verify_cached(token(n=i), time.time())
    assert len(cache) <= 10


async def test_oversized_tokens_are_refused_before_anything_else() -> None:
    cache = ClaimsCache(JwtVerifier(SECRET))
    huge = token(pad="x" * MAX_TOKEN_CHARS)
    with pytest.raises(errors.TokenTooLarge) as err:
        cache.verify_cached(huge, time.time())
    assert err.value.reason == "MalformedJWT: The token provided is larger than 16384 characters"
    with pytest.raises(errors.TokenTooLarge):
        await cache.verify(" " * (MAX_TOKEN_CHARS + 1), time.time())
    with pytest.raises(errors.TokenTooLarge):
        JwtVerifier(SECRET).verify(huge, time.time())
    assert len(cache) == 0
