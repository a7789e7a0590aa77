"""Channel tokens: join-time verification, access_token refresh, expiry (protocol.md §3.2, §3.5, §3.9, §7.1)."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from support import TEST_SECRET, ServerProc, make_token
from rawclient import (
    VSNS,
    RawClient,
    event_is,
    open_client,
    reply_to,
    sub_topic,
    unique_topic,
)
from jwts import claims_token, unsigned_token

OK_REPLY = {"status": "ok", "response": {}}


# --- join-time verification (§3.5, checklist 32–35, 38, 39) ----------------------------------


def _join_error_cases() -> list[Any]:
    now = int(time.time())
    return [
        pytest.param("potato", r"MalformedJWT: The token provided is not a valid JWT", id="potato"),
        pytest.param(
            make_token(secret="not-the-server-secret-but-long-enough-to-sign"),
            r"JwtSignatureError: Failed to validate JWT signature",
            id="bad-signature",
        ),
        pytest.param(
            claims_token({"exp": now + 3600}, TEST_SECRET),
            r"InvalidJWTToken: Fields `role` and `exp` are required in JWT",
            id="missing-role",
        ),
        pytest.param(
            claims_token({"role": "anon"}, TEST_SECRET),
            r"InvalidJWTToken: Fields `role` and `exp` are required in JWT",
            id="missing-exp",
        ),
        pytest.param(
            unsigned_token({"role": "anon", "exp": now + 3600}),
            r"JwtSignerError: Failed to generate JWT signer, check your JWT secret or JWKS configuration",
            id="alg-none",
        ),
    ]


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.parametrize(("token", "pattern"), _join_error_cases())
@pytest.mark.compat(33, 38, 39)
async def test_join_token_errors(server: ServerProc, vsn: str, token: str, pattern: str) -> None:
    topic = unique_topic()
    async with open_client(server, vsn) as c:
        await c.send_msg(topic, "phx_join", {"config": {}, "access_token": token}, "1", "1")
        frame = await c.next_frame()
        assert (frame.ref, frame.topic, frame.event) == ("1", topic, "phx_reply")
        assert frame.value == c.wire("1", "1", topic, "phx_reply", frame.payload)
        assert frame.payload["status"] == "error"
        assert set(frame.payload["response"]) == {"reason"}
        assert re.fullmatch(pattern, frame.payload["response"]["reason"]), frame.payload
        await c.assert_nothing_pending()  # no phx_close after a failed join


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(32)
async def test_join_with_expired_token_reports_seconds_ago(server: ServerProc, vsn: str) -> None:
    topic = unique_topic()
    token = make_token(exp_in=-30)
    async with open_client(server, vsn) as c:
        reply = await c.join(topic, access_token=token, ref="1", join_ref="1")
        reason = reply.payload["response"]["reason"]
        m = re.fullmatch(r"InvalidJWTToken: Token has expired (\d+) seconds ago", reason)
        assert m, reason
        assert 29 <= int(m.group(1)) <= 35
        assert reply.value == c.wire("1", "1", topic, "phx_reply", {"status": "error", "response": {"reason": reason}})
        await c.assert_nothing_pending()


@pytest.mark.parametrize("vsn", VSNS)
async def test_user_token_takes_precedence_over_access_token(server: ServerProc, vsn: str) -> None:
    topic = unique_topic()
    payload = {"config": {}, "access_token": make_token(), "user_token": "potato"}
    async with open_client(server, vsn) as c:
        await c.send_msg(topic, "phx_join", payload, "1", "1")
        frame = await c.next_frame()
        assert frame.payload == {"status": "error", "response": {"reason": "MalformedJWT: The token provided is not a valid JWT"}}


# --- access_token refresh (§3.9, checklist 43–46) ---------------------------------------------


async def _joined(c: RawClient, topic: str, token: str | None = None) -> str:
    return await c.join_ok(topic, {"broadcast": {"ack": True}}, access_token=token)


async def _assert_channel_alive(c: RawClient, topic: str, jr: str) -> None:
    ref = await c.broadcast(topic, "probe", {})
    assert (await c.expect(reply_to(ref, topic))).value == c.wire(jr, ref, topic, "phx_reply", OK_REPLY)


async def _assert_shutdown(c: RawClient, topic: str, jr: str, message_pattern: str, timeout: float = 3.0) -> str:
    system = await c.expect(event_is("system", topic), timeout)
    payload = system.payload
    assert system.value == c.wire(jr, None, topic, "system", payload)
    assert set(payload) == {"extension", "status", "message", "channel"}
    assert (payload["extension"], payload["status"], payload["channel"]) == ("system", "error", sub_topic(topic))
    assert re.fullmatch(message_pattern, payload["message"]), payload["message"]
    close = await c.expect(event_is("phx_close", topic))
    assert close.value == c.wire(jr, jr, topic, "phx_close", {})
    assert c.position(close) == c.position(system) + 1
    message: str = payload["message"]
    return message


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(43)
async def test_valid_refresh_is_never_replied(server: ServerProc, vsn: str) -> None:
    topic = unique_topic()
    async with open_client(server, vsn) as c:
        jr = await _joined(c, topic, make_token())
        await c.push(topic, "access_token", {"access_token": make_token("authenticated", exp_in=7200, sub="u1")})
        await c.assert_nothing_pending()
        await _assert_channel_alive(c, topic, jr)


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.parametrize("kind", ["same", "null", "sb_"])
@pytest.mark.compat(44)
async def test_ignored_refresh_values(server: ServerProc, vsn: str, kind: str) -> None:
    topic = unique_topic()
    token = make_token()
    value = {"same": token, "null": None, "sb_": "sb_publishable_xyz"}[kind]
    async with open_client(server, vsn) as c:
        jr = await _joined(c, topic, token)
        await c.push(topic, "access_token", {"access_token": value})
        await c.assert_nothing_pending()
        await _assert_channel_alive(c, topic, jr)


@pytest.mark.parametrize("vsn", VSNS)
async def test_access_token_event_without_key_is_ignored(server: ServerProc, vsn: str) -> None:
    topic = unique_topic()
    async with open_client(server, vsn) as c:
        jr = await _joined(c, topic)
        await c.push(topic, "access_token", {"token": "potato"})
        await c.assert_nothing_pending()
        await _assert_channel_alive(c, topic, jr)


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(43, 45)
async def test_refresh_with_expired_token_shuts_channel_down(server: ServerProc, vsn: str) -> None:
    topic = unique_topic()
    async with open_client(server, vsn) as c:
        jr = await _joined(c, topic)
        ref = await c.push(topic, "access_token", {"access_token": make_token(exp_in=-20)})
        message = await _assert_shutdown(c, topic, jr, r"Token has expired \d+ seconds ago")
        assert 19 <= int(message.split()[3]) <= 25
        await c.assert_nothing_pending(reply_to(ref))
        await c.heartbeat("hb")  # the socket stays open


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.parametrize(
    ("value", "pattern"),
    [
        ("", r".*The token provided is not a valid JWT.*"),
        ("potato", r".*The token provided is not a valid JWT.*"),
        (claims_token({"role": "anon"}, TEST_SECRET), r"Fields `role` and `exp` are required in JWT"),
    ],
    ids=["empty", "potato", "missing-exp"],
)
@pytest.mark.compat(46)
async def test_refresh_with_invalid_token_shuts_channel_down(
    server: ServerProc, vsn: str, value: str, pattern: str
) -> None:
    topic = unique_topic()
    async with open_client(server, vsn) as c:
        jr = await _joined(c, topic)
        await c.push(topic, "access_token", {"access_token": value})
        await _assert_shutdown(c, topic, jr, pattern)
        await c.heartbeat("hb")


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(47)
async def test_channel_is_shut_down_at_token_exp_but_socket_stays(server: ServerProc, vsn: str) -> None:
    expiring, refreshed = unique_topic("expiring"), unique_topic("refreshed")
    async with open_client(server, vsn) as c:
        token = make_token(exp_in=2)  # one token: both channels fall due at the same instant
        jr = await _joined(c, expiring, token)
        jr2 = await _joined(c, refreshed, token)
        # Refreshing re-arms the expiry timer of the second channel (§3.9).
        await c.push(refreshed, "access_token", {"access_token": make_token(exp_in=3600)})
        await _assert_shutdown(c, expiring, jr, r"Token has expired [01] seconds ago", timeout=4.0)
        # The WebSocket itself is not closed, and the expiry check that shut the first channel
        # down left the refreshed one alone.
        await c.assert_nothing_pending(lambda f: f.topic == refreshed)
        await _assert_channel_alive(c, refreshed, jr2)


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.compat(34, 35)
async def test_refresh_is_adopted_and_connection_key_backs_tokenless_joins(server: ServerProc, vsn: str) -> None:
    """§1.3/§3.2: joins without a usable token (absent or ``sb_…``) run on the connection's key,
    so they expire with it; a refreshed token is adopted, expiry included (§3.9). The
    WebSocket outlives its own key (§1.3)."""
    plain, opaque, own, shortened = (unique_topic(n) for n in ("plain", "opaque", "own", "shortened"))
    async with open_client(server, vsn, apikey=make_token(exp_in=2)) as c:
        jr_plain = await _joined(c, plain)
        jr_opaque = await _joined(c, opaque, "sb_secret_abc")
        jr_own = await _joined(c, own, make_token(exp_in=3600))
        jr_short = await _joined(c, shortened, make_token(exp_in=3600))
        await c.push(shortened, "access_token", {"access_token": make_token(exp_in=2)})
        for topic, jr in ((plain, jr_plain), (opaque, jr_opaque), (shortened, jr_short)):
            await _assert_shutdown(c, topic, jr, r"Token has expired [01] seconds ago", timeout=4.0)
        await c.heartbeat("hb")
        await _assert_channel_alive(c, own, jr_own)


@pytest.mark.parametrize("vsn", VSNS)
async def test_join_token_surrounding_whitespace_is_stripped(server: ServerProc, vsn: str) -> None:
    topic = unique_topic()
    async with open_client(server, vsn) as c:
        await c.join_ok(topic, access_token=f"  {make_token()}\n\t")
