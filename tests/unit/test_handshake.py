"""The upgrade rules (protocol/handshake.py): vsn, API key choice, refusals' statuses and bodies."""

from __future__ import annotations

import pytest

from realtime_channels import errors
from realtime_channels.protocol.codec import Vsn
from realtime_channels.protocol.handshake import Refusal, Upgrade, check_limits, check_request, refusal
from realtime_channels.protocol.limits import TenantLimits

T0 = 1_700_000_000.0


def limits(users: int = 10, joins: int = 10) -> TenantLimits:
    return TenantLimits(max_concurrent_users=users, max_events_per_second=100,
                        max_joins_per_second=joins, max_presence_events_per_second=100)


@pytest.mark.parametrize(("vsn", "expected"), [(None, Vsn.V1), ("1.0.0", Vsn.V1), ("2.0.0", Vsn.V2), ("2.0.3", Vsn.V2)])
def test_a_supported_vsn_with_a_key_upgrades(vsn: str | None, expected: Vsn) -> None:
    assert check_request("GET", vsn, {}, {"apikey": "k"}) == Upgrade(expected, "k")


@pytest.mark.parametrize("vsn", ["3.0.0", "0.9.0", "banana", ""])
def test_an_unsupported_vsn_is_403_with_an_empty_body_even_without_a_key(vsn: str) -> None:
    result = check_request("GET", vsn, {}, {})
    assert isinstance(result, Refusal)
    assert (result.status, result.body, result.paced) == (403, None, True)
    assert repr(vsn) in result.reason


def test_the_x_api_key_header_wins_over_the_query_parameter() -> None:
    assert check_request("GET", "2.0.0", {"x-api-key": "header"}, {"apikey": "query"}) == Upgrade(Vsn.V2, "header")
    assert check_request("GET", "2.0.0", {"x-api-key": ""}, {"apikey": "query"}) == Upgrade(Vsn.V2, "query")


@pytest.mark.parametrize("query", [{}, {"apikey": ""}])
def test_a_missing_key_is_401_api_key_is_missing(query: dict[str, str]) -> None:
    result = check_request("GET", None, {"authorization": "Bearer ignored"}, query)
    assert result == Refusal(401, {"error": "API key is missing"}, "ApiKeyMissing: API key is missing")


def test_other_methods_are_400_and_not_paced() -> None:
    result = check_request("POST", "2.0.0", {}, {"apikey": "k"})
    assert isinstance(result, Refusal) and (result.status, result.body, result.paced) == (400, None, False)


def test_a_refused_key_carries_its_status_body_and_a_reason_for_the_log() -> None:
    assert refusal(errors.MalformedJWT()) == Refusal(
        401, {"error": errors.MalformedJWT.message}, f"MalformedJWT: {errors.MalformedJWT.message}")
    # internal failures show the generic text to the peer, the real one in the log
    internal = refusal(errors.InternalError("database exploded"))
    assert internal.status == 500 and internal.body == {"error": "Error connecting to Realtime"}
    assert "database exploded" in internal.reason


def test_limits_refuse_with_429_and_supabase_texts() -> None:
    assert check_limits(limits(), T0) is None
    full = limits(users=1)
    full.add_user()
    assert check_limits(full, T0) == Refusal(429, {"error": "Too many connected users"},
                                             "ConnectionRateLimitReached: Too many connected users")
    busy = limits(joins=1)
    busy.joins.add(T0, 5)
    result = check_limits(busy, T0)
    assert isinstance(result, Refusal) and result.body == {"error": "Too many joins per second"}
    assert result.status == 429
