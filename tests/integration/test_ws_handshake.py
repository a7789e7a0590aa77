"""WebSocket upgrade: paths, vsn, API key resolution and refusals (protocol.md §1.1–1.4, §7.1)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from support import TEST_SECRET, ServerProc, make_token
from rawclient import (
    V1,
    V2,
    VSNS,
    WS_PATHS,
    open_client,
    refused_handshake,
)
from jwts import claims_token, rs256_token, sized_token, unsigned_token

OK_REPLY = {"status": "ok", "response": {}}


@pytest.mark.parametrize("path", WS_PATHS)
@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(1)
async def test_upgrade_succeeds_on_every_path(server: ServerProc, path: str, vsn: str) -> None:
    async with open_client(server, vsn, path=path) as c:
        await c.send_msg("phoenix", "heartbeat", {}, "1")
        frame = await c.next_frame()
        assert frame.value == c.wire(None, "1", "phoenix", "phx_reply", OK_REPLY)


@pytest.mark.parametrize(
    ("vsn", "expected_shape"),
    [(V1, dict), (V2, list), (None, dict), ("1.0.1", dict), ("2.0.3", list)],
)
@pytest.mark.compat(2)
async def test_vsn_selects_serializer(server: ServerProc, vsn: str | None, expected_shape: type) -> None:
    # §1.2: vsn is a semver requirement (1.0.x / 2.0.x); absent means 1.0.0.
    async with open_client(server, vsn) as c:
        await c.send_text(
            '[null,"7","phoenix","heartbeat",{}]'
            if expected_shape is list
            else '{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"7"}'
        )
        frame = await c.next_frame()
        assert not frame.is_binary
        assert isinstance(frame.value, expected_shape)
        if expected_shape is list:
            assert frame.value == [None, "7", "phoenix", "phx_reply", OK_REPLY]
        else:
            assert frame.value == {"topic": "phoenix", "event": "phx_reply", "payload": OK_REPLY, "ref": "7"}


@pytest.mark.parametrize("vsn", ["3.0.0", "0.9.0", "banana"])
@pytest.mark.compat(3)
async def test_unsupported_vsn_is_refused_with_403_and_empty_body(server: ServerProc, vsn: str) -> None:
    refusal = await refused_handshake(server, vsn)
    assert refusal.status == 403
    assert refusal.body == b""


def _refusal_cases() -> list[Any]:
    now = int(time.time())
    return [
        pytest.param(None, "API key is missing", id="missing-key"),
        pytest.param(make_token(exp_in=-60), "Token has expired", id="expired"),
        pytest.param(
            claims_token({"exp": now + 3600}, TEST_SECRET),
            "Fields `role` and `exp` are required in JWT",
            id="missing-role",
        ),
        pytest.param(
            claims_token({"role": "anon"}, TEST_SECRET),
            "Fields `role` and `exp` are required in JWT",
            id="missing-exp",
        ),
        pytest.param("potato", "The token provided is not a valid JWT", id="not-a-jwt"),
        pytest.param(
            make_token(secret="some-other-secret-that-is-32-chars-or-more"),
            "Failed to validate JWT signature",
            id="bad-signature",
        ),
        pytest.param(
            unsigned_token({"role": "anon", "exp": now + 3600}),
            "Failed to generate JWT signer, check your JWT secret or JWKS configuration",
            id="alg-none",
        ),
        pytest.param(
            rs256_token({"role": "anon", "exp": now + 3600}),
            "Failed to generate JWT signer, check your JWT secret or JWKS configuration",
            id="rs256-without-jwks",
        ),
    ]


@pytest.mark.parametrize(("apikey", "message"), _refusal_cases())
@pytest.mark.compat(4, 5, 6)
async def test_refusals_have_exact_status_and_json_body(server: ServerProc, apikey: str | None, message: str) -> None:
    refusal = await refused_handshake(server, V2, apikey=apikey)
    assert refusal.status == 401
    assert refusal.content_type is not None and refusal.content_type.startswith("application/json")
    assert refusal.json() == {"error": message}


async def test_a_refused_api_key_is_logged_at_info_with_its_reason(server: ServerProc) -> None:
    """An operator can tell why a client cannot connect; the key itself is never logged.  The
    line is written before the refusal is sent, so it is in the log once the answer is here."""
    token = make_token(secret="some-other-secret-that-is-32-chars-or-more")
    refusal = await refused_handshake(server, V2, apikey=token)
    assert refusal.status == 401
    lines = [line for line in server.log().splitlines()
             if "refused WebSocket upgrade" in line and "Failed to validate JWT signature" in line]
    assert lines, server.log()[-2000:]
    assert " INFO realtime_channels.transport: " in lines[-1]
    assert "JwtSignatureError" in lines[-1]
    assert token not in server.log()
    missing = await refused_handshake(server, V2, apikey=None)
    assert missing.status == 401
    assert any("refused WebSocket upgrade" in line and "ApiKeyMissing: API key is missing" in line
               for line in server.log().splitlines())


async def test_peer_text_in_a_logged_refusal_cannot_forge_log_lines(server: ServerProc) -> None:
    """The refusal names the token's ``kid`` (as Supabase does); a kid holding a newline and a
    fake log line is answered verbatim, but logged on one line, its control characters escaped."""
    forged = "2000-01-01 00:00:00,000 INFO realtime_channels: a line the server never wrote"
    kid = f"k\n{forged}\r\x1b[2J\u2028"
    token = rs256_token({"role": "anon", "exp": int(time.time()) + 3600}, kid=kid)
    refusal = await refused_handshake(server, V2, apikey=token)
    assert refusal.status == 401
    assert refusal.json() == {"error": f'Failed to generate JWT signer for key ID (kid) "{kid}", '
                                       "check your JWT secret or JWKS configuration"}
    lines = server.log().splitlines()
    assert not [line for line in lines if line.startswith("2000-01-01")]
    logged = [line for line in lines if "refused WebSocket upgrade" in line and forged in line]
    assert logged and "k\\n2000-01-01" in logged[-1] and "\\r\\x1b[2J\\u2028" in logged[-1], logged


@pytest.mark.parametrize("where", ["apikey", "x-api-key"])
async def test_a_token_of_16384_characters_connects_and_a_longer_one_is_refused_by_name(
    server: ServerProc, where: str
) -> None:
    """§7.1 step 1 at the upgrade: the request line or header that carries the key is read whole
    (HTTP servers commonly stop at 8 KiB), so the limit that applies is the token's own."""

    def carried(token: str) -> dict[str, Any]:
        return {"apikey": token} if where == "apikey" else {"apikey": None, "headers": {"x-api-key": token}}

    async with open_client(server, V2, **carried(sized_token(16_384, TEST_SECRET))) as c:
        await c.heartbeat("1")
    for length in (16_385, 30_000):
        refusal = await refused_handshake(server, V2, **carried(sized_token(length, TEST_SECRET)))
        assert (refusal.status, refusal.json()) == (401, {"error": "The token provided is larger than 16384 characters"})


async def test_authorization_header_is_not_consulted_for_websockets(server: ServerProc) -> None:
    # §1.3: only x-api-key / apikey count; a Bearer token alone is "API key is missing".
    refusal = await refused_handshake(
        server, V2, apikey=None, headers={"Authorization": f"Bearer {server.anon_key}"}
    )
    assert refusal.status == 401
    assert refusal.json() == {"error": "API key is missing"}


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(7)
async def test_x_api_key_header_alone_is_accepted(server: ServerProc, vsn: str) -> None:
    async with open_client(server, vsn, apikey=None, headers={"x-api-key": server.anon_key}) as c:
        await c.heartbeat("1")


@pytest.mark.compat(7)
async def test_x_api_key_header_wins_over_query_parameter(server: ServerProc) -> None:
    # Valid header, garbage query: accepted because the header takes precedence (§1.3).
    async with open_client(server, V2, apikey="potato", headers={"x-api-key": server.anon_key}) as c:
        await c.heartbeat("1")
    # Garbage header, valid query: refused with the header's error.
    refusal = await refused_handshake(server, V2, headers={"x-api-key": "potato"})
    assert refusal.status == 401
    assert refusal.json() == {"error": "The token provided is not a valid JWT"}


@pytest.mark.compat(8)
async def test_unknown_query_parameters_are_ignored(server: ServerProc) -> None:
    params = {"eventsPerSecond": "10", "log_level": "warn", "heartbeat": "5", "my_app_param": "x"}
    async with open_client(server, V2, params=params) as c:
        await c.heartbeat("1")


@pytest.mark.parametrize("level", ["info", "warning", "error", "debug", ""])
@pytest.mark.compat(8)
async def test_log_level_never_refuses(server: ServerProc, level: str) -> None:
    async with open_client(server, V1, params={"log_level": level}) as c:
        await c.heartbeat(None)


async def test_apikey_surrounding_whitespace_is_stripped(server: ServerProc) -> None:
    # §7.1 step 1: whitespace/newlines around the token are removed before decoding.
    async with open_client(server, V2, apikey=f" {server.anon_key}\n") as c:
        await c.heartbeat("1")


async def test_service_role_key_is_accepted(server: ServerProc) -> None:
    async with open_client(server, V2, apikey=server.service_key) as c:
        await c.heartbeat("1")
