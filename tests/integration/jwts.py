"""Hand-made JWTs for refusal cases (protocol.md §7.1): shapes JWT libraries will not produce,
keys the server does not hold, tokens of an exact length."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def compact_jwt(header: Any, claims: Any, sign: Callable[[bytes], bytes] | None = None) -> str:
    """A compact JWT built by hand, for shapes no JWT library produces: ``header`` and
    ``claims`` are JSON values (a ``str`` or ``bytes`` is taken as the segment's JSON text), and
    ``sign`` signs the signing input (none: an empty signature)."""

    def segment(part: Any) -> str:
        text = part.encode() if isinstance(part, str) else part if isinstance(part, bytes) else json.dumps(part).encode()
        return _b64(text)

    signing_input = f"{segment(header)}.{segment(claims)}"
    return f"{signing_input}.{_b64(sign(signing_input.encode())) if sign else ''}"


def unsigned_token(claims: Mapping[str, Any]) -> str:
    """A JWT with ``alg: none`` — no signer exists for it (§7.1 step 3)."""
    return compact_jwt({"alg": "none", "typ": "JWT"}, dict(claims))


def rs256_token(claims: Mapping[str, Any], kid: str | None = None, key: Any = None) -> str:
    """An RS256 JWT (without ``kid`` unless given), signed with ``key`` or a fresh RSA key; a
    server without that key in its JWKS can build no signer for it."""
    if key is None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(dict(claims), key, algorithm="RS256", headers={"kid": kid} if kid is not None else None)


def claims_token(claims: Mapping[str, Any], secret: str) -> str:
    """An HS256 JWT with exactly ``claims`` (e.g. lacking ``role`` or ``exp``)."""
    return jwt.encode(dict(claims), secret, algorithm="HS256")


def sized_token(length: int, secret: str, **claims: Any) -> str:
    """A valid HS256 JWT of exactly ``length`` characters (a ``pad`` claim makes up the size)."""
    body = {"role": "anon", "exp": int(time.time()) + 3600, **claims}
    start = max(0, (length - len(jwt.encode(body, secret, algorithm="HS256"))) * 3 // 4 - 24)
    for pad in range(start, start + 32):
        for n in range(3):  # base64 grows by 4 characters per 3 bytes: one of three fits
            token = jwt.encode({**body, "pad": "x" * pad, "n": "x" * n}, secret, algorithm="HS256")
            if len(token) == length:
                return token
    raise AssertionError(f"no token of {length} characters")
