"""Tenant secrets encrypted as Supabase Realtime encrypts them, so a ``_realtime`` schema
written by either server is readable by the other: AES-128-ECB with PKCS#7 padding under
``DB_ENC_KEY`` (16 bytes), base64; values prefixed ``g1:`` are AES-256-GCM (iv 12 bytes, tag
16 bytes, then the ciphertext, base64) under ``DB_ENC_KEY_GCM`` (32 bytes) and are read too."""

from __future__ import annotations

import base64
import os

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["Crypto", "CryptoError"]

_GCM = "g1:"


class CryptoError(ValueError):
    """A value cannot be decrypted with the configured keys."""


class Crypto:
    def __init__(self, ecb_key: str, gcm_key: str | None = None, write_gcm: bool = False) -> None:
        key = ecb_key.encode()
        if len(key) != 16:
            raise ValueError("DB_ENC_KEY must be 16 bytes (AES-128), as Supabase Realtime requires")
        self._ecb = key
        self._gcm = gcm_key.encode() if gcm_key else None
        if self._gcm is not None and len(self._gcm) != 32:
            raise ValueError("DB_ENC_KEY_GCM must be 32 bytes (AES-256)")
        self._write_gcm = write_gcm and self._gcm is not None

    def encrypt(self, text: str) -> str:
        data = text.encode()
        if self._write_gcm and self._gcm is not None:
            iv = os.urandom(12)
            sealed = AESGCM(self._gcm).encrypt(iv, data, b"")  # ciphertext + 16-byte tag
            return _GCM + base64.b64encode(iv + sealed[-16:] + sealed[:-16]).decode()
        pad = 16 - len(data) % 16
        enc = Cipher(algorithms.AES(self._ecb), modes.ECB()).encryptor()  # noqa: S305 - Supabase's format
        return base64.b64encode(enc.update(data + bytes([pad]) * pad) + enc.finalize()).decode()

    def decrypt(self, value: str) -> str:
        try:
            if value.startswith(_GCM):
                if self._gcm is None:
                    raise CryptoError("an AES-256-GCM value, but DB_ENC_KEY_GCM is not set")
                raw = base64.b64decode(value[len(_GCM):], validate=True)
                iv, tag, body = raw[:12], raw[12:28], raw[28:]
                return AESGCM(self._gcm).decrypt(iv, body + tag, b"").decode()
            raw = base64.b64decode(value, validate=True)
            dec = Cipher(algorithms.AES(self._ecb), modes.ECB()).decryptor()  # noqa: S305
            data = dec.update(raw) + dec.finalize()
            if not data or not 1 <= data[-1] <= 16:
                raise CryptoError("bad padding: not encrypted with this DB_ENC_KEY")
            return data[:-data[-1]].decode()
        except CryptoError:
            raise
        except Exception as exc:  # noqa: BLE001 - bad base64, wrong key, bad tag, not UTF-8
            raise CryptoError(f"cannot decrypt with the configured key: {type(exc).__name__}") from exc
