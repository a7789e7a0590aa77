"""Hostile tokens are refused with the protocol's errors, never an exception of another kind:
claims or header nested thousands of levels deep, NumericDates too large for a float."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import pytest

from realtime_channels import errors
from realtime_channels.auth import JwtVerifier

SECRET = "hostile-token-test-secret-0123456789"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(header: str, claims: str) -> str:
    h, c = b64(header.encode()), b64(claims.encode())
    sig = b64(hmac.new(SECRET.encode(), f"{h}.{c}".encode(), hashlib.sha256).digest())
    return f"{h}.{c}.{sig}"


DEEP = "[" * 3000 + "]" * 3000
HS = '{"alg":"HS256","typ":"JWT"}'


@pytest.mark.parametrize("token,error", [
    (signed(HS, '{"role":"anon","x":' + DEEP + "}"), errors.MalformedJWT),
    (signed('{"alg":"HS256","x":' + DEEP + "}", '{"role":"anon","exp":9999999999}'), errors.InvalidTokenStructure),
    (signed(HS, '{"role":"anon","exp":1' + "0" * 400 + "}"), errors.MalformedJWT),
    (signed(HS, '{"role":"anon","exp":9999999999,"iat":-1' + "0" * 400 + "}"), errors.MalformedJWT),
    (signed(HS, '{"role":"anon","exp":18446744073709551616}'), errors.InvalidTokenStructure),
    (signed(HS, '{"role":"anon","exp":' + "[" * 100 + "]" * 100 + "}"), errors.InvalidTokenStructure),
    ("e30." + b64(("[" * 5000 + "]" * 5000).encode()) + ".x", errors.MalformedJWT),
])
def test_hostile_tokens_get_protocol_errors(token: str, error: type[errors.AuthError]) -> None:
    with pytest.raises(error):
        JwtVerifier(SECRET).verify(token, time.time())


def test_a_far_but_finite_expiry_is_accepted_and_arms_a_finite_timer() -> None:
    verifier = JwtVerifier(SECRET)
    claims = verifier.verify(signed(HS, '{"role":"anon","exp":1e300}'), time.time())
    assert verifier.expiry(claims) == 1e300
