"""JWT verification for WebSocket keys, channel ``access_token``s and REST bearer tokens.

Pure: no sockets and no clock.  The current time is passed in as ``now`` (seconds) and JWKS
downloads are an injected coroutine, so every rule of protocol.md §7.1 is unit-testable.

PyJWT's algorithm objects do the cryptography; the token parsing, signer selection and claim
checks are ours because their order and error mapping are part of the wire contract
(protocol.md §1.4 handshake statuses, §3.5 join reasons, §3.9 refresh shutdowns).
"""

from __future__ import annotations

import json
import math
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from jwt.algorithms import Algorithm, get_default_algorithms
from jwt.exceptions import PyJWTError

from realtime_channels import errors
from realtime_channels.protocol import jsonexact

from .jwks import _ED_CURVES, _b64url_decode, _index_jwks, _Jwk
from .jwks import load_jwks_text as load_jwks_text  # re-exported: cli and users import them here
from .jwks import parse_jwks_spec as parse_jwks_spec

__all__ = [
    "JwksRefresher",
    "JwtVerifier",
    "load_jwks_text",
    "mint_token",
    "normalize_token",
    "parse_jwks_spec",
    "token_kid",
]

# protocol.md §7.1 step 3: the algorithms the reference accepts, and the JWK key type each needs.
_HS_ALGS = frozenset({"HS256", "HS384", "HS512"})
_ASYMMETRIC_KTY: Mapping[str, str] = {
    "RS256": "RSA",
    "RS384": "RSA",
    "RS512": "RSA",
    "ES256": "EC",
    "ES384": "EC",
    "ES512": "EC",
    # RFC 8037 spells the algorithm "EdDSA" and keeps the curve in the JWK; JOSE also names
    # the signer after the curve. Both spellings arrive in practice.
    "EdDSA": "OKP",
    "Ed25519": "OKP",
    "Ed448": "OKP",
}
_PYJWT_ALGS: Mapping[str, Algorithm] = get_default_algorithms()


# --- token text -------------------------------------------------------------------------


#: longer tokens are refused before they are decoded (Supabase's own are well under 2,000)
MAX_TOKEN_CHARS = 16_384


def normalize_token(token: str) -> str:
    """protocol.md §7.1 step 1: URL-decode, then drop every whitespace character.

    Clients paste tokens with stray newlines or send them percent-encoded in the query string.
    """
    return "".join(urllib.parse.unquote(token).split())


def _decode_json_segment(segment: str) -> Any:
    """Decode one base64url JSON segment; ``ValueError`` if it is not that."""
    raw = _b64url_decode(segment)
    try:
        # bounded nesting (a deep header or claims set is refused, not a RecursionError);
        # integers beyond 64 bits are kept as opaque fragments, never numbers
        return jsonexact.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError("segment is not UTF-8") from exc


@dataclass(frozen=True, slots=True)
class _ParsedToken:
    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature_segment: str

    @property
    def alg(self) -> str | None:
        alg = self.header.get("alg")
        return alg if isinstance(alg, str) else None

    @property
    def kid(self) -> str | None:
        kid = self.header.get("kid")
        return kid if isinstance(kid, str) else None


def _parse(token: str) -> _ParsedToken:
    """protocol.md §7.1 step 2: claims first (``MalformedJWT``), then the header (generic)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise errors.MalformedJWT()
    header_seg, claims_seg, signature_seg = parts
    try:
        claims = _decode_json_segment(claims_seg)
    except ValueError as exc:  # json.JSONDecodeError is a ValueError too
        raise errors.MalformedJWT() from exc
    if not isinstance(claims, dict):
        raise errors.InvalidTokenStructure()
    # The reference peeks the header only after the claims and reports any header defect,
    # undecodable or not an object, as a generic failure.
    try:
        header = _decode_json_segment(header_seg)
    except ValueError as exc:
        raise errors.InvalidTokenStructure() from exc
    if not isinstance(header, dict):
        raise errors.InvalidTokenStructure()
    signing_input = f"{header_seg}.{claims_seg}".encode("ascii")
    return _ParsedToken(header, claims, signing_input, signature_seg)


def _peek(token: str) -> _ParsedToken | None:
    try:
        return _parse(normalize_token(token))
    except errors.AuthError:
        return None


def token_kid(token: str) -> str | None:
    """The header ``kid`` without any verification; ``None`` if absent or undecodable."""
    parsed = _peek(token)
    return parsed.kid if parsed is not None else None


# --- verification -----------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _round_half_away(value: float) -> int:
    """Elixir's ``round/1`` (half away from zero), not Python's banker's rounding."""
    return int(math.copysign(math.floor(abs(value) + 0.5), value))


#: beyond this a float date is left as it is: rounded, it would be an integer wider than 64 bits,
#: which orjson cannot write (claims are cached and shared as JSON)
_INT64_MAX = 2**63 - 1


def _numeric_date(value: Any) -> int | float:
    """A NumericDate claim rounded to whole seconds (§7.1 step 5); generic failure otherwise.

    A float too large for 64 bits (``1e300``) is a whole number already and stays a float.  An
    integer literal that long is not a number here: it arrives as an exact fragment."""
    if not _is_number(value) or not math.isfinite(value):
        raise errors.InvalidTokenStructure()
    if isinstance(value, int):
        return value  # the JSON reader gives ints only within 64 bits
    seconds = _round_half_away(value)
    return seconds if abs(seconds) <= _INT64_MAX else value


class JwtVerifier:
    """Verifies tokens against one tenant's secret and JWKS (protocol.md §7.1)."""

    def __init__(
        self,
        secret: str | None,
        jwks: Mapping[str, Any] | None = None,
        required_claims: Mapping[str, Any] | None = None,
    ) -> None:
        self._secret = secret.encode("utf-8") if secret else None
        self._required = dict(required_claims or {})
        self._keys: dict[tuple[str, str], _Jwk] = {}
        self.set_jwks(jwks)

    def set_jwks(self, jwks: Mapping[str, Any] | None) -> None:
        """Replace the key set; keys are parsed once here, not per token."""
        self._keys = _index_jwks(jwks)

    def verify(self, token: str, now: float) -> dict[str, Any]:
        """Return the claims (``exp``/``iat`` rounded) or raise an ``errors.AuthError``."""
        if len(token) > MAX_TOKEN_CHARS:
            raise errors.TokenTooLarge()
        parsed = _parse(normalize_token(token))
        alg_name, key = self._select_signer(parsed)
        self._check_signature(parsed, alg_name, key)
        return self._check_claims(parsed.claims, now)

    def expiry(self, claims: Mapping[str, Any]) -> float:
        """``exp`` in seconds, for arming the channel expiry timer (§3.9)."""
        return float(claims["exp"])

    def unknown_kid(self, token: str) -> str | None:
        """The ``kid`` a JWKS refresh could resolve, else ``None``.

        An asymmetric token whose ``kid`` has no key of the right type, or an HS token with a
        ``kid`` when no shared secret is configured. HS tokens with a secret fall back to it
        (most Supabase Auth tokens carry a kid with no published JWK), so refreshing for them
        would only cost a fetch.
        """
        parsed = _peek(token)
        if parsed is None or parsed.alg is None or parsed.kid is None:
            return None
        kid, alg = parsed.kid, parsed.alg
        if alg in _HS_ALGS:
            if self._secret is None and (kid, "oct") not in self._keys:
                return kid
            return None
        kty = _ASYMMETRIC_KTY.get(alg)
        if kty is not None and (kid, kty) not in self._keys:
            return kid
        return None

    def _select_signer(self, parsed: _ParsedToken) -> tuple[str, Any]:
        """protocol.md §7.1 step 3: the verifying algorithm and key, or a signer error."""
        alg, kid = parsed.alg, parsed.kid
        if alg in _HS_ALGS:
            if kid is not None:
                jwk = self._keys.get((kid, "oct"))
                if jwk is not None:
                    if jwk.key is None:
                        raise errors.JwtSignerError(kid)
                    return alg, jwk.key
            if self._secret is None:
                raise errors.JwtSignerError(kid)
            return alg, self._secret
        kty = _ASYMMETRIC_KTY.get(alg) if alg is not None else None
        if alg is None or kty is None:
            raise errors.JwtSignerError(kid)  # unsupported alg, including "none"
        if kid is None:
            raise errors.JwtSignerError()
        jwk = self._keys.get((kid, kty))
        if jwk is None or (alg in _ED_CURVES and jwk.crv != alg):
            raise errors.JwtSignerError(kid)
        pyjwt_name = "EdDSA" if kty == "OKP" else alg
        try:
            # Also rejects a curve that does not fit the algorithm (ES256 with a P-384 key).
            key = _PYJWT_ALGS[pyjwt_name].prepare_key(jwk.key)
        except (PyJWTError, ValueError, TypeError) as exc:
            raise errors.JwtSignerError(kid) from exc
        return pyjwt_name, key

    @staticmethod
    def _check_signature(parsed: _ParsedToken, alg_name: str, key: Any) -> None:
        """protocol.md §7.1 step 4."""
        try:
            signature = _b64url_decode(parsed.signature_segment)
            valid = _PYJWT_ALGS[alg_name].verify(parsed.signing_input, key, signature)
        except (ValueError, TypeError, PyJWTError) as exc:
            raise errors.JwtSignatureError() from exc
        if not valid:
            raise errors.JwtSignatureError()

    def _check_claims(self, raw: dict[str, Any], now: float) -> dict[str, Any]:
        """protocol.md §7.1 steps 5–6: expiry first, then ``iat``, configured claims, presence."""
        claims = dict(raw)
        if "exp" in claims:
            exp = _numeric_date(claims["exp"])
            if exp <= now:
                raise errors.TokenExpired(_round_half_away(now - exp))
            claims["exp"] = exp
        if "iat" in claims:
            claims["iat"] = _numeric_date(claims["iat"])
        for name, expected in self._required.items():
            # Stricter than the reference (which skips absent claims): an operator who pins
            # e.g. "iss" expects tokens without it to be refused.
            if name not in raw or raw[name] != expected:
                raise errors.InvalidTokenStructure()
        if "role" not in claims or "exp" not in claims:
            raise errors.MissingClaims()
        return claims


# --- JWKS refresh -----------------------------------------------------------------------


class JwksRefresher:
    """Refreshes a URL JWKS on an unknown kid, at most once per `min_interval` seconds (injected fetch + clock)."""

    def __init__(
        self,
        verifier: JwtVerifier,
        fetch: Callable[[], Awaitable[dict[str, Any]]],
        min_interval: float = 30.0,
    ) -> None:
        self._verifier = verifier
        self._fetch = fetch
        self._min_interval = min_interval
        self._last_attempt: float | None = None

    async def refresh_for(self, token: str, now: float) -> bool:
        """Fetch the JWKS if ``token`` names a kid we lack and the interval allows.

        Returns True when new keys were installed. Failed fetches count as attempts, so a
        broken JWKS endpoint is not hammered by every connecting client; they never raise.
        """
        if self._verifier.unknown_kid(token) is None:
            return False
        if self._last_attempt is not None and now - self._last_attempt < self._min_interval:
            return False
        # Claimed before awaiting so concurrent callers do not start a second fetch.
        self._last_attempt = now
        try:
            jwks = await self._fetch()
            self._verifier.set_jwks(jwks)
        except Exception:  # noqa: BLE001 - any fetch/parse failure keeps the old keys
            return False
        return True


# --- minting ----------------------------------------------------------------------------


def mint_token(
    secret: str,
    role: str,
    *,
    now: float,
    exp_seconds: float = 3600,
    sub: str | None = None,
    claims: Mapping[str, Any] | None = None,
    alg: str = "HS256",
) -> str:
    """An HS-signed token for ``realtime-channels token`` and the printed dev keys.

    ``iat``/``exp`` are whole seconds (clients parse them as integers); ``claims`` override.
    """
    if alg not in _HS_ALGS:
        raise errors.ConfigError(f"cannot mint {alg!r} tokens: only HS256/HS384/HS512 use a shared secret")
    if not secret:
        raise errors.ConfigError("cannot mint a token without a JWT secret")
    payload: dict[str, Any] = {
        "iat": math.floor(now),
        "exp": math.floor(now + exp_seconds),
        "role": role,
    }
    if sub is not None:
        payload["sub"] = sub
    payload.update(claims or {})
    return jwt.encode(payload, secret, algorithm=alg)
