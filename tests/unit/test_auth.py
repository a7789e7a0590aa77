"""JWT verification rules of protocol.md §7.1 with real keys and real signatures."""

from __future__ import annotations

import base64
import json
import urllib.parse
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from realtime_channels import errors
from realtime_channels.auth import (
    JwksRefresher,
    JwtVerifier,
    load_jwks_text,
    mint_token,
    normalize_token,
    parse_jwks_spec,
    token_kid,
)
from realtime_channels.auth.claims import ClaimsCache

SECRET = "unit-test-secret-that-is-long-enough-for-hs512-signatures-0123456789"
OTHER_SECRET = "a-different-secret-that-is-also-long-enough-for-hs512-abcdefghijklmn"
NOW = 1_700_000_000.0

# --- keys and token helpers -------------------------------------------------------------

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC_P384_KEY = ec.generate_private_key(ec.SECP384R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()
ED448_KEY = ed448.Ed448PrivateKey.generate()
OCT_BYTES = b"oct-key-material-for-hs256-signing-32b+"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def seg(value: Any) -> str:
    return b64url(json.dumps(value).encode())


def jwk(public_dict: dict[str, Any], kid: str) -> dict[str, Any]:
    return {**public_dict, "kid": kid}


def jwks_all() -> dict[str, Any]:
    return {
        "keys": [
            jwk(RSAAlgorithm.to_jwk(RSA_KEY.public_key(), as_dict=True), "rsa-1"),
            jwk(ECAlgorithm.to_jwk(EC_KEY.public_key(), as_dict=True), "ec-1"),
            jwk(ECAlgorithm.to_jwk(EC_P384_KEY.public_key(), as_dict=True), "ec-384"),
            jwk(OKPAlgorithm.to_jwk(ED_KEY.public_key(), as_dict=True), "ed-1"),
            jwk(OKPAlgorithm.to_jwk(ED448_KEY.public_key(), as_dict=True), "ed448-1"),
            {"kty": "oct", "kid": "oct-1", "k": b64url(OCT_BYTES)},
        ]
    }


def claims(**extra: Any) -> dict[str, Any]:
    return {"role": "authenticated", "exp": int(NOW) + 600, "sub": "user-1", **extra}


def hs(body: dict[str, Any], secret: str = SECRET, alg: str = "HS256", **headers: Any) -> str:
    return jwt.encode(body, secret, algorithm=alg, headers=headers or None)


def raw_token(header: Any, body: Any, sign: Callable[[bytes], bytes] | None = None) -> str:
    """A compact token built by hand, for shapes PyJWT refuses to produce."""
    signing_input = f"{seg(header)}.{seg(body)}"
    signature = sign(signing_input.encode()) if sign else b""
    return f"{signing_input}.{b64url(signature)}"


def verifier(**kwargs: Any) -> JwtVerifier:
    return JwtVerifier(SECRET, jwks_all(), **kwargs)


# --- normalisation and peeking ----------------------------------------------------------


def test_normalize_token_url_decodes_and_strips_all_whitespace() -> None:
    assert normalize_token(" ab%2Ecd\n.e f\t\r\n ") == "ab.cd.ef"


def test_url_encoded_whitespace_laden_token_is_accepted() -> None:
    token = hs(claims())
    header, body, sig = token.split(".")
    mangled = "  " + urllib.parse.quote(f"{header}.\n{body[:10]}\n {body[10:]}.{sig}", safe="") + "\r\n"
    assert mangled != token
    assert verifier().verify(mangled, NOW)["sub"] == "user-1"


def test_token_kid_reads_header_without_verifying() -> None:
    assert token_kid(hs(claims(), OTHER_SECRET, kid="k-9")) == "k-9"
    assert token_kid(hs(claims())) is None
    assert token_kid("potato") is None
    assert token_kid(raw_token({"alg": "HS256", "kid": 7}, claims())) is None


# --- HS family --------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hs_tokens_verify_with_the_shared_secret(alg: str) -> None:
    body = claims(iat=int(NOW) - 5, custom={"a": 1})
    assert verifier().verify(hs(body, alg=alg), NOW) == body


def test_hs_without_secret_is_a_signer_error() -> None:
    v = JwtVerifier(None)
    with pytest.raises(errors.JwtSignerError) as info:
        v.verify(hs(claims()), NOW)
    assert info.value.kid is None
    assert info.value.reason == (
        "JwtSignerError: Failed to generate JWT signer, check your JWT secret or JWKS configuration"
    )
    with pytest.raises(errors.JwtSignerError) as with_kid:
        v.verify(hs(claims(), kid="abc"), NOW)
    assert with_kid.value.kid == "abc"


def test_oct_jwk_with_matching_kid_overrides_the_secret() -> None:
    oct_token = jwt.encode(claims(), OCT_BYTES, algorithm="HS256", headers={"kid": "oct-1"})
    assert verifier().verify(oct_token, NOW)["role"] == "authenticated"
    # The oct key replaces the secret for that kid: a secret-signed token no longer verifies.
    with pytest.raises(errors.JwtSignatureError):
        verifier().verify(hs(claims(), kid="oct-1"), NOW)
    # Works even with no shared secret configured.
    assert JwtVerifier(None, jwks_all()).verify(oct_token, NOW)["sub"] == "user-1"


def test_hs_kid_without_oct_jwk_falls_back_to_the_secret() -> None:
    assert verifier().verify(hs(claims(), kid="not-published"), NOW)["sub"] == "user-1"
    # An RSA key with the same kid is not an oct key and must not be used for HS.
    assert verifier().verify(hs(claims(), kid="rsa-1"), NOW)["sub"] == "user-1"


def test_oct_jwk_with_undecodable_k_is_a_signer_error() -> None:
    v = JwtVerifier(SECRET, {"keys": [{"kty": "oct", "kid": "bad", "k": "!!!"}]})
    with pytest.raises(errors.JwtSignerError) as info:
        v.verify(hs(claims(), kid="bad"), NOW)
    assert info.value.kid == "bad"


# --- asymmetric families via JWKS -------------------------------------------------------


@pytest.mark.parametrize(
    ("alg", "key", "kid"),
    [
        ("RS256", RSA_KEY, "rsa-1"),
        ("RS384", RSA_KEY, "rsa-1"),
        ("RS512", RSA_KEY, "rsa-1"),
        ("ES256", EC_KEY, "ec-1"),
        ("ES384", EC_P384_KEY, "ec-384"),
        ("EdDSA", ED_KEY, "ed-1"),
        ("EdDSA", ED448_KEY, "ed448-1"),
    ],
)
def test_asymmetric_tokens_verify_via_jwks(alg: str, key: Any, kid: str) -> None:
    token = jwt.encode(claims(), key, algorithm=alg, headers={"kid": kid})
    assert verifier().verify(token, NOW) == claims()


@pytest.mark.parametrize(("alg", "key", "kid"), [("Ed25519", ED_KEY, "ed-1"), ("Ed448", ED448_KEY, "ed448-1")])
def test_curve_named_eddsa_algorithms_verify(alg: str, key: Any, kid: str) -> None:
    token = raw_token({"alg": alg, "typ": "JWT", "kid": kid}, claims(), key.sign)
    assert verifier().verify(token, NOW)["role"] == "authenticated"


def test_curve_named_alg_must_match_the_jwk_curve() -> None:
    token = raw_token({"alg": "Ed448", "kid": "ed-1"}, claims(), ED_KEY.sign)
    with pytest.raises(errors.JwtSignerError) as info:
        verifier().verify(token, NOW)
    assert info.value.kid == "ed-1"


def test_ec_key_on_the_wrong_curve_is_a_signer_error() -> None:
    # ES384 names P-384, but the JWK under "ec-1" is a P-256 key.
    token = jwt.encode(claims(), EC_P384_KEY, algorithm="ES384", headers={"kid": "ec-1"})
    with pytest.raises(errors.JwtSignerError) as info:
        verifier().verify(token, NOW)
    assert info.value.kid == "ec-1"


def test_asymmetric_signature_from_another_key_is_rejected() -> None:
    forged = jwt.encode(claims(), RSA_OTHER, algorithm="RS256", headers={"kid": "rsa-1"})
    with pytest.raises(errors.JwtSignatureError) as info:
        verifier().verify(forged, NOW)
    assert info.value.reason == "JwtSignatureError: Failed to validate JWT signature"


def test_kid_missing_from_jwks_names_the_kid() -> None:
    token = jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "abc"})
    with pytest.raises(errors.JwtSignerError) as info:
        verifier().verify(token, NOW)
    assert info.value.message == (
        'Failed to generate JWT signer for key ID (kid) "abc", check your JWT secret or JWKS configuration'
    )
    assert info.value.http_status == 401


def test_kid_of_the_wrong_key_type_is_not_used() -> None:
    token = jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "ec-1"})
    with pytest.raises(errors.JwtSignerError) as info:
        verifier().verify(token, NOW)
    assert info.value.kid == "ec-1"


def test_asymmetric_without_kid_or_without_jwks_is_a_signer_error() -> None:
    no_kid = jwt.encode(claims(), RSA_KEY, algorithm="RS256")
    with pytest.raises(errors.JwtSignerError) as info:
        verifier().verify(no_kid, NOW)
    assert info.value.kid is None
    with_kid = jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "rsa-1"})
    with pytest.raises(errors.JwtSignerError):
        JwtVerifier(SECRET).verify(with_kid, NOW)


@pytest.mark.parametrize("alg", ["none", "PS256", "ES256K", "HS1", None])
def test_unsupported_algorithms_are_signer_errors(alg: str | None) -> None:
    header: dict[str, Any] = {"typ": "JWT"} if alg is None else {"alg": alg, "typ": "JWT"}
    token = raw_token(header, claims(), lambda m: b"sig")
    with pytest.raises(errors.JwtSignerError) as info:
        verifier().verify(token, NOW)
    assert info.value.kid is None


def test_alg_none_with_empty_signature_is_refused() -> None:
    token = jwt.encode(claims(), "", algorithm="none")
    assert token.endswith(".")
    with pytest.raises(errors.JwtSignerError):
        verifier().verify(token, NOW)


# --- structure --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        "potato",
        "",
        "a.b",
        "a.b.c.d",
        f"{seg({'alg': 'HS256'})}.not-json-at-all.sig",
        f"{seg({'alg': 'HS256'})}.{b64url(b'{broken')}.sig",
        f"{seg({'alg': 'HS256'})}.a.sig",
    ],
)
def test_undecodable_claims_are_malformed(token: str) -> None:
    with pytest.raises(errors.MalformedJWT) as info:
        verifier().verify(token, NOW)
    assert info.value.reason == "MalformedJWT: The token provided is not a valid JWT"
    assert info.value.http_status == 401


@pytest.mark.parametrize(
    "token",
    [
        f"{seg(['HS256'])}.{seg(claims())}.sig",
        f"{seg('HS256')}.{seg(claims())}.sig",
        f"not*base64.{seg(claims())}.sig",
        f"{seg({'alg': 'HS256'})}.{seg([1, 2])}.sig",
        f"{seg({'alg': 'HS256'})}.{seg(42)}.sig",
    ],
)
def test_header_or_claims_that_are_not_objects_are_generic_failures(token: str) -> None:
    with pytest.raises(errors.InvalidTokenStructure) as info:
        verifier().verify(token, NOW)
    assert info.value.reason == "Unknown Error on Channel"
    assert (info.value.http_status, info.value.handshake_error) == (500, "Error connecting to Realtime")


def test_bad_hs_signature() -> None:
    with pytest.raises(errors.JwtSignatureError):
        verifier().verify(hs(claims(), OTHER_SECRET), NOW)
    header, _body, sig = hs(claims()).split(".")
    tampered = f"{header}.{seg(claims(role='service_role'))}.{sig}"
    with pytest.raises(errors.JwtSignatureError):
        verifier().verify(tampered, NOW)
    with pytest.raises(errors.JwtSignatureError):
        verifier().verify(f"{header}.{seg(claims())}.@@@", NOW)


# --- claims -----------------------------------------------------------------------------


def test_expired_token_reports_seconds_ago() -> None:
    token = hs(claims(exp=int(NOW) - 42))
    with pytest.raises(errors.TokenExpired) as info:
        verifier().verify(token, NOW)
    assert info.value.seconds_ago == 42
    assert info.value.reason == "InvalidJWTToken: Token has expired 42 seconds ago"
    assert info.value.handshake_error == "Token has expired"
    assert info.value.http_status == 401


def test_exp_equal_to_now_is_expired() -> None:
    with pytest.raises(errors.TokenExpired) as info:
        verifier().verify(hs(claims(exp=int(NOW))), NOW)
    assert info.value.seconds_ago == 0


def test_expiry_is_checked_before_claim_presence() -> None:
    with pytest.raises(errors.TokenExpired) as info:
        verifier().verify(hs({"exp": int(NOW) - 7}), NOW)
    assert info.value.seconds_ago == 7


@pytest.mark.parametrize("missing", ["role", "exp"])
def test_missing_role_or_exp(missing: str) -> None:
    body = claims()
    del body[missing]
    with pytest.raises(errors.MissingClaims) as info:
        verifier().verify(hs(body), NOW)
    assert info.value.reason == "InvalidJWTToken: Fields `role` and `exp` are required in JWT"


def test_fractional_exp_and_iat_are_rounded() -> None:
    got = verifier().verify(hs(claims(exp=NOW + 10.6, iat=NOW - 1.5)), NOW)
    # 1699999998.5 rounds half away from zero (Elixir round/1), not to the even 1699999998.
    assert (got["exp"], got["iat"]) == (int(NOW) + 11, int(NOW) - 1)
    assert isinstance(got["exp"], int)
    assert verifier().expiry(got) == NOW + 11
    with pytest.raises(errors.TokenExpired) as info:
        verifier().verify(hs(claims(exp=NOW - 5.4)), NOW)
    assert info.value.seconds_ago == 5


@pytest.mark.parametrize("field", ["exp", "iat"])
@pytest.mark.parametrize("value", ["1700000600", True, None, [1]])
def test_non_numeric_exp_or_iat_is_a_generic_failure(field: str, value: Any) -> None:
    with pytest.raises(errors.InvalidTokenStructure):
        verifier().verify(hs(claims(**{field: value})), NOW)


@pytest.mark.parametrize("field", ["exp", "iat"])
@pytest.mark.parametrize("value", [1e30, 1.7976931348623157e308])
def test_a_float_date_beyond_64_bits_is_kept_and_the_claims_stay_writable(field: str, value: float) -> None:
    """Rounded, such a date would be an integer no JSON writer of the server can emit (claims
    are cached and shared as JSON): it stays the float it was, far in the future."""
    cache = ClaimsCache(verifier())
    got = cache.verify_cached(hs(claims(**{field: value})), NOW)
    assert got[field] == value and isinstance(got[field], float)


def test_a_float_date_far_in_the_past_is_expired() -> None:
    with pytest.raises(errors.TokenExpired):
        ClaimsCache(verifier()).verify_cached(hs(claims(exp=-1e30)), NOW)


@pytest.mark.parametrize("field", ["exp", "iat"])
@pytest.mark.parametrize("value", [2**64, -(2**64), 10**30])
def test_an_integer_date_beyond_64_bits_is_a_generic_failure(field: str, value: int) -> None:
    with pytest.raises(errors.InvalidTokenStructure):
        ClaimsCache(verifier()).verify_cached(hs(claims(**{field: value})), NOW)


def test_numeric_date_at_the_edge_of_64_bits_is_accepted() -> None:
    cache = ClaimsCache(verifier())
    got = cache.verify_cached(hs(claims(exp=2**63 - 1, iat=-(2**63) + 1)), NOW)
    assert (got["exp"], got["iat"]) == (2**63 - 1, -(2**63) + 1)


def test_nbf_aud_iss_are_not_checked_by_default() -> None:
    body = claims(nbf=int(NOW) + 3600, aud="someone-else", iss="anywhere")
    assert verifier().verify(hs(body), NOW) == body


def test_required_claims_must_match_exactly() -> None:
    v = verifier(required_claims={"iss": "https://auth.example"})
    assert v.verify(hs(claims(iss="https://auth.example")), NOW)["iss"] == "https://auth.example"
    for body in (claims(iss="https://evil.example"), claims()):
        with pytest.raises(errors.InvalidTokenStructure):
            v.verify(hs(body), NOW)


# --- JWKS management --------------------------------------------------------------------


def test_set_jwks_replaces_keys() -> None:
    v = JwtVerifier(None)
    token = jwt.encode(claims(), ED_KEY, algorithm="EdDSA", headers={"kid": "ed-1"})
    assert v.unknown_kid(token) == "ed-1"
    v.set_jwks(jwks_all())
    assert v.unknown_kid(token) is None
    assert v.verify(token, NOW)["sub"] == "user-1"
    v.set_jwks(None)
    with pytest.raises(errors.JwtSignerError):
        v.verify(token, NOW)


def test_jwks_with_private_members_and_junk_entries_still_works() -> None:
    private_rsa = jwk(RSAAlgorithm.to_jwk(RSA_KEY, as_dict=True), "rsa-1")
    keys = {"keys": ["junk", {"kty": "RSA", "kid": "broken"}, {"kty": "X", "kid": "x"}, private_rsa]}
    token = jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "rsa-1"})
    assert JwtVerifier(None, keys).verify(token, NOW)["sub"] == "user-1"


def test_unknown_kid() -> None:
    v = verifier()
    assert v.unknown_kid(jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "new"})) == "new"
    assert v.unknown_kid(jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "rsa-1"})) is None
    assert v.unknown_kid(jwt.encode(claims(), RSA_KEY, algorithm="RS256")) is None
    # HS tokens fall back to the secret, so only a secret-less verifier needs new keys.
    assert v.unknown_kid(hs(claims(), kid="gotrue")) is None
    assert JwtVerifier(None, jwks_all()).unknown_kid(hs(claims(), kid="gotrue")) == "gotrue"
    assert JwtVerifier(None, jwks_all()).unknown_kid(hs(claims(), kid="oct-1")) is None
    assert v.unknown_kid("potato") is None


def test_parse_jwks_spec() -> None:
    assert parse_jwks_spec('  {"keys": []}\n') == ("json", '{"keys": []}')
    assert parse_jwks_spec("https://x.supabase.co/auth/v1/.well-known/jwks.json") == (
        "url",
        "https://x.supabase.co/auth/v1/.well-known/jwks.json",
    )
    assert parse_jwks_spec("HTTP://localhost:9999/jwks") == ("url", "HTTP://localhost:9999/jwks")
    assert parse_jwks_spec(" /etc/realtime/jwks.json ") == ("file", "/etc/realtime/jwks.json")
    with pytest.raises(errors.ConfigError):
        parse_jwks_spec("   ")


def test_load_jwks_text_accepts_a_valid_document() -> None:
    text = json.dumps(jwks_all())
    loaded = load_jwks_text(text)
    assert loaded == jwks_all()
    token = jwt.encode(claims(), EC_KEY, algorithm="ES256", headers={"kid": "ec-1"})
    assert JwtVerifier(None, loaded).verify(token, NOW)["sub"] == "user-1"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ("[]", '"keys" array'),
        ('{"keys": {}}', '"keys" array'),
        ('{"keys": [1]}', "#0 is not a JSON object"),
        ('{"keys": [{"kid": "a"}]}', '#0 has no string "kty"'),
        ('{"keys": [{"kty": "RSA", "kid": "r", "n": "AQAB"}]}', "not a usable key"),
        ('{"keys": [{"kty": "oct", "kid": "o", "k": "!!"}]}', "not base64url"),
    ],
)
def test_load_jwks_text_rejects_bad_documents(text: str, fragment: str) -> None:
    with pytest.raises(errors.ConfigError) as info:
        load_jwks_text(text)
    assert fragment in str(info.value)


# --- JwksRefresher ----------------------------------------------------------------------


class JwksEndpoint:
    """An in-process stand-in for a JWKS URL: serves whatever document it currently holds."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.calls = 0
        self.failing = False

    async def fetch(self) -> dict[str, Any]:
        self.calls += 1
        if self.failing:
            raise ConnectionError("JWKS endpoint unreachable")
        return self.document


def rotated_token(kid: str = "rotated") -> tuple[str, dict[str, Any]]:
    key = ec.generate_private_key(ec.SECP256R1())
    doc = {"keys": [jwk(ECAlgorithm.to_jwk(key.public_key(), as_dict=True), kid)]}
    return jwt.encode(claims(), key, algorithm="ES256", headers={"kid": kid}), doc


async def test_refresher_picks_up_a_new_kid() -> None:
    token, doc = rotated_token()
    v = JwtVerifier(None, {"keys": []})
    endpoint = JwksEndpoint(doc)
    refresher = JwksRefresher(v, endpoint.fetch, min_interval=30.0)
    with pytest.raises(errors.JwtSignerError):
        v.verify(token, NOW)
    assert await refresher.refresh_for(token, NOW) is True
    assert endpoint.calls == 1
    assert v.verify(token, NOW)["sub"] == "user-1"
    # The kid is now known: no further fetches for it.
    assert await refresher.refresh_for(token, NOW + 100) is False
    assert endpoint.calls == 1


async def test_refresher_fetches_at_most_once_per_interval() -> None:
    token, doc = rotated_token()
    endpoint = JwksEndpoint({"keys": []})
    refresher = JwksRefresher(JwtVerifier(None), endpoint.fetch, min_interval=30.0)
    assert await refresher.refresh_for(token, NOW) is True
    assert await refresher.refresh_for(token, NOW + 29.9) is False
    assert endpoint.calls == 1
    endpoint.document = doc
    assert await refresher.refresh_for(token, NOW + 30.0) is True
    assert endpoint.calls == 2


async def test_refresher_survives_a_failing_fetch() -> None:
    token, doc = rotated_token()
    v = verifier()
    endpoint = JwksEndpoint(doc)
    endpoint.failing = True
    refresher = JwksRefresher(v, endpoint.fetch, min_interval=10.0)
    assert await refresher.refresh_for(token, NOW) is False
    # Old keys stay in place after a failure.
    rsa_token = jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "rsa-1"})
    assert v.verify(rsa_token, NOW)["sub"] == "user-1"
    # A failed attempt still counts against the interval (no hammering a broken endpoint).
    endpoint.failing = False
    assert await refresher.refresh_for(token, NOW + 5) is False
    assert endpoint.calls == 1
    assert await refresher.refresh_for(token, NOW + 10) is True
    assert v.verify(token, NOW)["sub"] == "user-1"


async def test_refresher_rejects_an_invalid_document_without_losing_keys() -> None:
    token, _doc = rotated_token()
    v = verifier()
    endpoint = JwksEndpoint({"not": "a jwks"})
    refresher = JwksRefresher(v, endpoint.fetch)
    assert await refresher.refresh_for(token, NOW) is False
    assert endpoint.calls == 1
    rsa_token = jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "rsa-1"})
    assert v.verify(rsa_token, NOW)["sub"] == "user-1"


async def test_refresher_ignores_tokens_that_need_no_keys() -> None:
    endpoint = JwksEndpoint(jwks_all())
    refresher = JwksRefresher(verifier(), endpoint.fetch)
    assert await refresher.refresh_for(hs(claims()), NOW) is False
    assert await refresher.refresh_for("potato", NOW) is False
    assert endpoint.calls == 0


# --- minting ----------------------------------------------------------------------------


def test_mint_token_round_trips() -> None:
    token = mint_token(SECRET, "anon", now=NOW + 0.7, exp_seconds=120)
    assert verifier().verify(token, NOW) == {"role": "anon", "iat": int(NOW), "exp": int(NOW) + 120}
    with pytest.raises(errors.TokenExpired):
        verifier().verify(token, NOW + 121)


def test_mint_token_sub_claims_and_alg() -> None:
    token = mint_token(
        SECRET, "authenticated", now=NOW, sub="u-7", claims={"role": "service_role", "iss": "dev"}, alg="HS512"
    )
    assert jwt.get_unverified_header(token)["alg"] == "HS512"
    got = verifier().verify(token, NOW)
    assert (got["role"], got["sub"], got["iss"], got["iat"]) == ("service_role", "u-7", "dev", int(NOW))
    with pytest.raises(errors.ConfigError):
        mint_token(SECRET, "anon", now=NOW, alg="RS256")
    with pytest.raises(errors.ConfigError):
        mint_token("", "anon", now=NOW)
