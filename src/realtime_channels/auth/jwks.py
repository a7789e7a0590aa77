"""JWKS documents: ``REALTIME_JWT_JWKS`` sources, strict validation at start-up, and the
lenient index of usable keys the verifier selects from (protocol.md §7.1)."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from jwt.exceptions import PyJWTError

from realtime_channels import errors

_ED_CURVES = frozenset({"Ed25519", "Ed448"})


def _b64url_decode(segment: str) -> bytes:
    """Strict base64url (padding optional). Python's default decoder silently skips junk."""
    stripped = segment.rstrip("=")
    if len(stripped) % 4 == 1:
        raise ValueError("impossible base64 length")
    padded = stripped + "=" * (-len(stripped) % 4)
    try:
        return base64.b64decode(padded, altchars=b"-_", validate=True)
    except binascii.Error as exc:
        raise ValueError(str(exc)) from exc



# --- JWKS -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Jwk:
    kty: str
    crv: str | None
    #: a cryptography public key for RSA/EC/OKP; the raw secret (or ``None`` when ``k`` does
    #: not decode, which the reference reports as a signer error) for ``oct``.
    key: Any


def _build_jwk(jwk: Mapping[str, Any]) -> _Jwk | None:
    """One JWK as a ready key, ``None`` for key types §7.1 never selects.

    Raises ``ValueError``/``PyJWTError`` for a supported key type whose material is broken.
    """
    kty = jwk.get("kty")
    data = dict(jwk)
    if kty == "oct":
        k = jwk.get("k")
        if not isinstance(k, str):
            return None  # the reference only matches oct keys that carry a string "k"
        try:
            return _Jwk("oct", None, _b64url_decode(k))
        except ValueError:
            return _Jwk("oct", None, None)
    key: Any
    if kty == "RSA":
        key = RSAAlgorithm.from_jwk(data)
    elif kty == "EC":
        key = ECAlgorithm.from_jwk(data)
    elif kty == "OKP":
        crv = jwk.get("crv")
        if crv not in _ED_CURVES:
            return None  # e.g. X25519: an encryption curve, never a JWT signer
        key = OKPAlgorithm.from_jwk(data)
    else:
        return None
    # JWKS sometimes publish private members; verification only needs the public half.
    if hasattr(key, "public_key"):
        key = key.public_key()
    crv_value = jwk.get("crv")
    return _Jwk(kty, crv_value if isinstance(crv_value, str) else None, key)


def _jwks_entries(jwks: Mapping[str, Any]) -> list[Any]:
    keys = jwks.get("keys")
    if not isinstance(keys, list):
        raise errors.ConfigError('JWKS must be a JSON object with a "keys" array')
    return keys


def _index_jwks(jwks: Mapping[str, Any] | None) -> dict[tuple[str, str], _Jwk]:
    """Keys by ``(kid, kty)``; the first match wins, as in the reference's ``Enum.find``.

    Lenient on purpose: a refreshed JWKS with one broken or exotic key must not disable the
    others. ``load_jwks_text`` is the strict, start-up-time check.
    """
    index: dict[tuple[str, str], _Jwk] = {}
    if jwks is None:
        return index
    for entry in _jwks_entries(jwks):
        if not isinstance(entry, Mapping):
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str):
            continue  # §7.1: keys are selected by kid only
        try:
            built = _build_jwk(entry)
        except (ValueError, TypeError, KeyError, PyJWTError):
            continue
        if built is not None:
            index.setdefault((kid, built.kty), built)
    return index


def parse_jwks_spec(spec: str) -> tuple[str, str]:
    """Classify ``REALTIME_JWT_JWKS``: inline JSON, an http(s) URL, or a file path."""
    value = spec.strip()
    if not value:
        raise errors.ConfigError("REALTIME_JWT_JWKS is empty")
    if value.startswith("{"):
        return ("json", value)
    lowered = value.lower()
    if lowered.startswith("http://") or lowered.startswith("https://"):
        return ("url", value)
    return ("file", value)


def load_jwks_text(text: str) -> dict[str, Any]:
    """Parse and validate a JWKS document; ``ConfigError`` names what is wrong."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise errors.ConfigError(f"JWKS is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise errors.ConfigError('JWKS must be a JSON object with a "keys" array')
    for position, entry in enumerate(_jwks_entries(data)):
        if not isinstance(entry, dict):
            raise errors.ConfigError(f"JWKS key #{position} is not a JSON object")
        kty = entry.get("kty")
        if not isinstance(kty, str):
            raise errors.ConfigError(f'JWKS key #{position} has no string "kty"')
        label = f'JWKS key #{position} (kid {entry.get("kid")!r}, kty "{kty}")'
        try:
            built = _build_jwk(entry)
        except (ValueError, TypeError, KeyError, PyJWTError) as exc:
            raise errors.ConfigError(f"{label} is not a usable key: {exc}") from exc
        if built is not None and built.kty == "oct" and built.key is None:
            raise errors.ConfigError(f'{label} has a "k" that is not base64url')
    return data
