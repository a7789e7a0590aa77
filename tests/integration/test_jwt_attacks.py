"""Hostile JWTs at the four places a token enters (protocol.md §1.4, §1.8, §3.5, §3.9, §7.1):
the WebSocket upgrade (``apikey``), a join's ``access_token``, the ``access_token`` refresh of a
joined channel, and REST (``Authorization: Bearer``).

Each forged token is refused everywhere with the exact documented answer — a 401 (or 500 for a
generic failure) with ``{"error": …}`` at the upgrade, ``<Code>: <message>`` in the join reply,
a ``system`` shutdown naming the message on refresh, ``401 Unauthorized`` on REST — and the
refusal touches nothing else: another channel of the socket stays, nothing is broadcast, no
traceback reaches the log.  The few tokens the contract accepts (``nbf`` and ``iat`` in the
future, ``role`` of any JSON type, 16,384 characters) are accepted everywhere.

The servers hold a JWKS (an RSA key, an EC key and an ``oct`` key) and, for one of them, the HS
secret as well; the cases that tests/integration/test_tokens.py and test_ws_handshake.py cover
already (``potato``, ``alg: none``, a foreign secret, a missing claim, expiry) are not repeated
here except at the entry points those files leave out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from support import TEST_SECRET, ServerProc, make_token, start_server
from rawclient import (
    V1,
    V2,
    RawClient,
    event_is,
    open_client,
    refused_handshake,
    reply_to,
    sub_topic,
    unique_topic,
    user_broadcast,
)
from rawhttp import http_request
from jwts import compact_jwt, sized_token

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ATTACKER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OCT = b"oct-key-material-that-only-the-server-knows-0123456789"
RSA_PEM = RSA_KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
RSA_JWK = {**RSAAlgorithm.to_jwk(RSA_KEY.public_key(), as_dict=True), "kid": "rsa-1"}
JWKS = {"keys": [RSA_JWK, {**ECAlgorithm.to_jwk(EC_KEY.public_key(), as_dict=True), "kid": "ec-1"},
                 {"kty": "oct", "kid": "oct-1", "k": base64.urlsafe_b64encode(OCT).rstrip(b"=").decode()}]}
POINTS = ("upgrade", "join", "refresh", "rest")
OK_REPLY = {"status": "ok", "response": {}}


# --- what a refusal looks like at each entry point ------------------------------------------


@dataclass(frozen=True)
class Refused:
    code: str | None  # the join reason's prefix (none: the bare message)
    message: str  # a regular expression only for expiry (its seconds vary)
    upgrade: tuple[int, str] | None = None  # (status, error) when it is not (401, message)

    @property
    def handshake(self) -> tuple[int, str]:
        return self.upgrade or (401, self.message)

    def matches(self, text: str, with_code: bool) -> bool:
        expected = f"{self.code}: {self.message}" if with_code and self.code else self.message
        return re.fullmatch(expected if "\\d" in expected else re.escape(expected), text) is not None


SIGNER_TEXT = "Failed to generate JWT signer{}, check your JWT secret or JWKS configuration"
NOT_JWT = Refused("MalformedJWT", "The token provided is not a valid JWT")
TOO_LARGE = Refused("MalformedJWT", "The token provided is larger than 16384 characters")
SIGNATURE = Refused("JwtSignatureError", "Failed to validate JWT signature")
SIGNER = Refused("JwtSignerError", SIGNER_TEXT.format(""))
GENERIC = Refused(None, "Unknown Error on Channel", (500, "Error connecting to Realtime"))
EXPIRED = Refused("InvalidJWTToken", r"Token has expired \d+ seconds ago", (401, "Token has expired"))
MISSING = Refused("InvalidJWTToken", "Fields `role` and `exp` are required in JWT")


def signer_for(kid: str) -> Refused:
    return Refused("JwtSignerError", SIGNER_TEXT.format(f' for key ID (kid) "{kid}"'))


# --- the tokens -------------------------------------------------------------------------------


def claims(**extra: Any) -> dict[str, Any]:
    return {"role": "anon", "exp": int(time.time()) + 3600, "sub": "u1", **extra}


def hs256_with(key: bytes, header: dict[str, Any], body: Any = None) -> str:
    """HS256 signed with ``key`` — for the HS/RS confusion, the RSA key's public text."""
    return compact_jwt({"alg": "HS256", "typ": "JWT", **header}, claims() if body is None else body,
                       lambda m: hmac.new(key, m, hashlib.sha256).digest())


def hs(body: Any, **header: Any) -> str:
    return hs256_with(TEST_SECRET.encode(), header, body)


def rs(kid: Any, key: Any = RSA_KEY, **header: Any) -> str:
    return jwt.encode(claims(), key, algorithm="RS256", headers={"kid": kid, **header})


def rs256_signature(message: bytes) -> bytes:
    return RSA_KEY.sign(message, padding.PKCS1v15(), hashes.SHA256())


def unsigned(alg: str, **header: Any) -> str:
    return compact_jwt({"alg": alg, "typ": "JWT", **header}, claims())


def resigned(token: str, change: Callable[[list[str]], list[str]]) -> str:
    return ".".join(change(token.split(".")))


def deep(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


@dataclass(frozen=True)
class Case:
    id: str
    token: Callable[[], str]
    expect: Refused | None  # None: accepted
    jwks_only: bool = False  # run against the server without an HS secret
    points: tuple[str, ...] = POINTS


PATH_KID, SQL_KID, HUGE_KID = "../../../../etc/passwd", "x' OR '1'='1' --", "k" * 8000
ATTACKER_JWK = RSAAlgorithm.to_jwk(ATTACKER.public_key(), as_dict=True)

CASES = [
    # alg
    *(Case(f"alg-{alg}", lambda alg=alg: unsigned(alg), SIGNER) for alg in ("None", "NONE", "nOnE")),
    Case("alg-none", lambda: unsigned("none"), SIGNER, points=("refresh", "rest")),
    Case("alg-none-with-kid", lambda: unsigned("none", kid="rsa-1"), signer_for("rsa-1")),
    Case("alg-missing", lambda: compact_jwt({"typ": "JWT"}, claims(), lambda m: b"sig"), SIGNER),
    Case("alg-HS512-signed-HS256", lambda: resigned(hs(claims()), lambda p: [
        base64.urlsafe_b64encode(b'{"alg":"HS512","typ":"JWT"}').rstrip(b"=").decode(), *p[1:]]), SIGNATURE),
    # HS/RS confusion: HS256 signed with what is public about the RSA key
    Case("hs256-with-rsa-pem-and-kid", lambda: hs256_with(RSA_PEM, {"kid": "rsa-1"}), SIGNATURE),
    Case("hs256-with-rsa-pem", lambda: hs256_with(RSA_PEM, {}), SIGNATURE),
    Case("hs256-with-rsa-pem-and-oct-kid", lambda: hs256_with(RSA_PEM, {"kid": "oct-1"}), SIGNATURE),
    Case("hs256-with-rsa-pem-no-secret", lambda: hs256_with(RSA_PEM, {"kid": "rsa-1"}), signer_for("rsa-1"),
         jwks_only=True),
    Case("hs256-with-rsa-pem-no-secret-no-kid", lambda: hs256_with(RSA_PEM, {}), SIGNER, jwks_only=True),
    Case("hs256-with-rsa-jwk-text-no-secret", lambda: hs256_with(json.dumps(RSA_JWK).encode(), {"kid": "rsa-1"}),
         signer_for("rsa-1"), jwks_only=True),
    # kid
    Case("kid-unknown", lambda: rs("nope"), signer_for("nope")),
    Case("kid-path-traversal", lambda: rs(PATH_KID), signer_for(PATH_KID)),
    Case("kid-sql", lambda: rs(SQL_KID), signer_for(SQL_KID)),
    Case("kid-huge", lambda: rs(HUGE_KID), signer_for(HUGE_KID)),
    Case("kid-of-an-ec-key", lambda: rs("ec-1"), signer_for("ec-1")),
    Case("kid-of-an-oct-key", lambda: rs("oct-1"), signer_for("oct-1")),
    Case("es256-kid-of-the-rsa-key", lambda: jwt.encode(claims(), EC_KEY, algorithm="ES256", headers={"kid": "rsa-1"}),
         signer_for("rsa-1")),
    Case("kid-not-a-string", lambda: compact_jwt({"alg": "RS256", "kid": 7}, claims(), rs256_signature), SIGNER),
    Case("kid-right-key-wrong-signer", lambda: rs("rsa-1", ATTACKER), SIGNATURE),
    Case("embedded-jwk", lambda: rs("rsa-1", ATTACKER, jwk=ATTACKER_JWK), SIGNATURE),
    Case("jku-and-x5u", lambda: rs("rsa-1", ATTACKER, jku="http://127.0.0.1:1/jwks.json", x5u="http://127.0.0.1:1/c"),
         SIGNATURE),
    # claims
    Case("expired", lambda: make_token(exp_in=-30), EXPIRED, points=("rest",)),
    Case("nbf-in-the-future", lambda: make_token(nbf=int(time.time()) + 3600), None),
    Case("iat-in-the-future", lambda: make_token(iat=int(time.time()) + 3600), None),
    Case("exp-as-string", lambda: hs(claims(exp="9999999999")), GENERIC),
    Case("exp-true", lambda: hs(claims(exp=True)), GENERIC),
    Case("exp-null", lambda: hs(claims(exp=None)), GENERIC),
    Case("exp-1e300", lambda: hs(claims(exp=1e300)), None),
    Case("exp-minus-1e30", lambda: hs(claims(exp=-1e30)), EXPIRED),
    Case("exp-2-to-the-64", lambda: hs(claims(exp=2**64)), GENERIC),
    Case("exp-beyond-a-double", lambda: hs('{"role":"anon","exp":1e400}'), NOT_JWT),
    Case("iat-as-string", lambda: hs(claims(iat="yesterday")), GENERIC),
    Case("role-missing", lambda: hs({"exp": int(time.time()) + 3600}), MISSING, points=("refresh", "rest")),
    Case("role-array", lambda: make_token(role=["anon"]), None),  # type: ignore[arg-type]
    Case("role-object", lambda: make_token(role={"name": "anon"}), None),  # type: ignore[arg-type]
    # shape and size
    Case("16384-characters", lambda: sized_token(16_384, TEST_SECRET), None, points=("join", "refresh", "rest")),
    Case("16385-characters", lambda: sized_token(16_385, TEST_SECRET), TOO_LARGE, points=("join", "refresh", "rest")),
    Case("claims-nested-200-deep", lambda: hs(claims(d=deep(200))), NOT_JWT),
    Case("header-nested-200-deep", lambda: hs(claims(), x=deep(200)), GENERIC),
    Case("claims-not-an-object", lambda: hs([claims()]), GENERIC),
    Case("header-null", lambda: compact_jwt("null", claims(), lambda m: b"s"), GENERIC),
    Case("claims-bad-base64", lambda: resigned(hs(claims()), lambda p: [p[0], "@@" + p[1], p[2]]), NOT_JWT),
    Case("header-bad-base64", lambda: resigned(hs(claims()), lambda p: ["@@" + p[0], p[1], p[2]]), GENERIC),
    Case("signature-bad-base64", lambda: resigned(hs(claims()), lambda p: [p[0], p[1], "@@@"]), SIGNATURE),
    Case("signature-empty", lambda: resigned(hs(claims()), lambda p: [p[0], p[1], ""]), SIGNATURE),
    Case("four-segments", lambda: hs(claims()) + ".e30", NOT_JWT),
    Case("two-segments", lambda: hs(claims()).rsplit(".", 1)[0], NOT_JWT),
    Case("signature-of-another-secret", lambda: make_token(secret="x" * 40), SIGNATURE, points=("refresh",)),
]
PARAMS = [pytest.param(c, p, id=f"{c.id}@{p}") for c in CASES for p in c.points]


# --- servers -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[bool, ServerProc]]:
    """By ``jwks_only``: a server with the JWKS and the HS secret, and one with the JWKS alone."""
    both = start_server(str(tmp_path_factory.mktemp("jwks")), REALTIME_JWT_JWKS=json.dumps(JWKS))
    alone = start_server(str(tmp_path_factory.mktemp("jwks-only")), REALTIME_JWT_JWKS=json.dumps(JWKS),
                         REALTIME_JWT_SECRET="")
    yield {False: both, True: alone}
    both.stop()
    alone.stop()


def good_key(jwks_only: bool) -> str:
    return rs("rsa-1") if jwks_only else make_token()


@pytest.fixture(autouse=True)
def clean_logs(servers: dict[bool, ServerProc]) -> Iterator[None]:
    """No refusal may leave a traceback or an error in a server's log."""
    start = {k: len(s.log()) for k, s in servers.items()}
    yield
    for k, srv in servers.items():
        text = srv.log()[start[k]:]
        assert "Traceback" not in text and " ERROR " not in text, text[-3000:]


# --- the entry points ----------------------------------------------------------------------


async def alive(c: RawClient, topic: str, jr: str) -> None:
    ref = await c.broadcast(topic, "probe", {})
    assert (await c.expect(reply_to(ref, topic))).value == c.wire(jr, ref, topic, "phx_reply", OK_REPLY)


async def at_upgrade(srv: ServerProc, token: str, expect: Refused | None, vsn: str) -> None:
    if expect is None:
        async with open_client(srv, vsn, apikey=token) as c:
            await c.heartbeat("1")
        return
    refusal = await refused_handshake(srv, vsn, apikey=token)
    status, error = expect.handshake
    assert (refusal.status, refusal.json()) == (status, {"error": error})


async def at_join(srv: ServerProc, token: str, expect: Refused | None, vsn: str, key: str) -> None:
    keep, topic = unique_topic("keep"), unique_topic("target")
    async with open_client(srv, vsn, apikey=key) as c:
        jr = await c.join_ok(keep, {"broadcast": {"ack": True}})
        reply = await c.join(topic, access_token=token)
        if expect is None:
            assert reply.payload == {"status": "ok", "response": {"postgres_changes": []}}, reply.value
        else:
            assert reply.payload["status"] == "error" and set(reply.payload["response"]) == {"reason"}, reply.value
            assert expect.matches(reply.payload["response"]["reason"], with_code=True), reply.value
            await c.assert_nothing_pending()  # no phx_close: there never was a channel (§3.5)
        await alive(c, keep, jr)


async def at_refresh(srv: ServerProc, token: str, expect: Refused | None, vsn: str, key: str) -> None:
    keep, topic = unique_topic("keep"), unique_topic("target")
    async with open_client(srv, vsn, apikey=key) as c:
        jr_keep = await c.join_ok(keep, {"broadcast": {"ack": True}})
        jr = await c.join_ok(topic, {"broadcast": {"ack": True}})
        await c.push(topic, "access_token", {"access_token": token})
        if expect is None:
            await c.assert_nothing_pending()  # never answered (§3.9)
            await alive(c, topic, jr)
        else:
            system = await c.expect(event_is("system", topic))
            payload = system.payload
            assert system.value == c.wire(jr, None, topic, "system", payload)
            assert (payload["extension"], payload["status"], payload["channel"]) == ("system", "error", sub_topic(topic))
            assert expect.matches(payload["message"], with_code=False), payload
            close = await c.expect(event_is("phx_close", topic))
            assert close.value == c.wire(jr, jr, topic, "phx_close", {})
        await alive(c, keep, jr_keep)  # the socket and its other channel stay
        await c.heartbeat("hb")


async def at_rest(srv: ServerProc, token: str, expect: Refused | None, key: str) -> None:
    topic = unique_topic("rest")
    marker = f"marker-{time.monotonic_ns()}"

    async def post(event: str, bearer: str) -> tuple[int, bytes]:
        body = {"messages": [{"topic": sub_topic(topic), "event": event, "payload": {}}]}
        resp = await http_request(srv, "POST", "/api/broadcast", body=json.dumps(body).encode(), headers={
            "Authorization": f"Bearer {bearer}", "apikey": key, "Content-Type": "application/json"})
        return resp.status, resp.body

    async with open_client(srv, V2, apikey=key) as rx:
        await rx.join_ok(topic)
        if expect is None:
            assert await post("sent", token) == (202, b"")
            await rx.expect(user_broadcast("sent", topic))
        else:
            assert await post("sent", token) == (401, b'{"message":"Unauthorized"}')  # Bearer wins over apikey
        assert await post(marker, key) == (202, b"")
        await rx.assert_nothing_before(user_broadcast(marker, topic), user_broadcast("sent"))


@pytest.mark.parametrize(("case", "point"), PARAMS)
async def test_hostile_token(servers: dict[bool, ServerProc], case: Case, point: str) -> None:
    srv, key, token = servers[case.jwks_only], good_key(case.jwks_only), case.token()
    vsn = V1 if len(case.id) % 2 else V2  # both wire formats, spread over the cases
    if point == "upgrade":
        await at_upgrade(srv, token, case.expect, vsn)
    elif point == "join":
        await at_join(srv, token, case.expect, vsn, key)
    elif point == "refresh":
        await at_refresh(srv, token, case.expect, vsn, key)
    else:
        await at_rest(srv, token, case.expect, key)


def test_every_case_is_distinct_and_counted() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    sent = [(c.jwks_only, c.token()) for c in CASES if c.id not in ("16384-characters", "16385-characters")]
    assert len(sent) == len(set(sent)), "two cases send the same token to the same server"
    print(f"\n{len(CASES)} hostile tokens, {len(PARAMS)} (token, entry point) pairs")
