"""Standard Webhooks signatures (https://www.standardwebhooks.com/, "Signature scheme").

The signed content is ``"{webhook-id}.{webhook-timestamp}.{body}"``; the signature is
``v1,<base64 HMAC-SHA256>`` keyed with the base64-decoded secret that follows ``whsec_``.
Pure functions: the caller passes the time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping

from .. import errors

__all__ = ["SECRET_PREFIX", "parse_secret", "sign", "verify"]

SECRET_PREFIX = "whsec_"
#: Standard Webhooks recommends refusing timestamps more than five minutes away (replay defence).
DEFAULT_TOLERANCE = 300


def parse_secret(secret: str) -> bytes:
    """``whsec_<base64>`` (or bare base64) → key bytes; ``ConfigError`` when it does not decode."""
    body = secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else secret
    try:
        key = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise errors.ConfigError("REALTIME_FUNCTIONS_SECRET must be whsec_ followed by base64") from exc
    if not key:
        raise errors.ConfigError("REALTIME_FUNCTIONS_SECRET is empty")
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one attempt."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def verify(key: bytes, headers: Mapping[str, str], body: bytes, now: float,
           tolerance: int = DEFAULT_TOLERANCE) -> bool:
    """True when one of the space-separated ``v1`` signatures matches and the timestamp is fresh.

    For receivers written in Python (examples/functions/http_function.py uses it).
    """
    msg_id = headers.get("webhook-id")
    ts_text = headers.get("webhook-timestamp")
    sigs = headers.get("webhook-signature")
    if not msg_id or not ts_text or not sigs:
        return False
    try:
        ts = int(ts_text)
    except ValueError:
        return False
    if abs(now - ts) > tolerance:
        return False
    expected = sign(key, msg_id, ts, body)
    return any(hmac.compare_digest(expected, s) for s in sigs.split() if s.startswith("v1,"))
