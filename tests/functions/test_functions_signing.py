"""Standard Webhooks signing helpers (signing.py), checked against an independent HMAC."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from realtime_channels import errors
from realtime_channels.functions import parse_secret, sign, verify

KEY = b"0123456789abcdef"
SECRET = "whsec_" + base64.b64encode(KEY).decode()


def test_sign_matches_the_standard_webhooks_scheme() -> None:
    body = b'{"a":1}'
    mac = hmac.new(KEY, b"msg_1.1700000000." + body, hashlib.sha256).digest()
    assert sign(parse_secret(SECRET), "msg_1", 1700000000, body) == "v1," + base64.b64encode(mac).decode()


def test_verify_accepts_any_listed_signature_and_refuses_stale_or_wrong_ones() -> None:
    key = parse_secret(SECRET)
    body = b"{}"
    good = sign(key, "m", 1000, body)
    headers = {"webhook-id": "m", "webhook-timestamp": "1000", "webhook-signature": f"v1,bm9wZQ== {good}"}
    assert verify(key, headers, body, now=1100)
    assert not verify(key, headers, body, now=1000 + 301)  # outside the 5-minute tolerance
    assert not verify(key, headers, b'{"x":1}', now=1000)
    assert not verify(b"other", headers, body, now=1000)
    assert not verify(key, {**headers, "webhook-timestamp": "soon"}, body, now=1000)
    assert not verify(key, {"webhook-id": "m"}, body, now=1000)


@pytest.mark.parametrize("bad", ["whsec_not base64!", "whsec_"])
def test_bad_secrets_are_config_errors(bad: str) -> None:
    with pytest.raises(errors.ConfigError, match="REALTIME_FUNCTIONS_SECRET"):
        parse_secret(bad)


def test_bare_base64_secret_is_accepted() -> None:
    assert parse_secret(base64.b64encode(KEY).decode()) == KEY
