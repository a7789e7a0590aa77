"""Test support shared by every test directory: start a real ``realtime-channels serve``
subprocess on a free port, mint JWTs.  (A plain module, so tests import it by name; pytest
loads every ``conftest.py`` under the same module name.)"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import jwt


TEST_SECRET = "test-secret-with-at-least-32-characters-long!"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_token(
    role: str = "anon",
    exp_in: float = 3600,
    secret: str = TEST_SECRET,
    alg: str = "HS256",
    **claims: Any,
) -> str:
    body: dict[str, Any] = {"role": role, "exp": int(time.time() + exp_in), **claims}
    return jwt.encode(body, secret, algorithm=alg)


@dataclass
class ServerProc:
    port: int
    proc: subprocess.Popen[bytes]
    log_path: str
    secret: str = TEST_SECRET
    env: dict[str, str] = field(default_factory=dict)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def anon_key(self) -> str:
        return make_token("anon", secret=self.secret)

    @property
    def service_key(self) -> str:
        return make_token("service_role", secret=self.secret)

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_server(tmp_dir: str, **env_overrides: str) -> ServerProc:
    """Start ``realtime-channels serve`` on a free port and wait until /healthcheck answers."""
    port = free_port()
    env = {
        **os.environ,
        "REALTIME_HOST": "127.0.0.1",
        "REALTIME_PORT": str(port),
        "REALTIME_JWT_SECRET": TEST_SECRET,
        "REALTIME_JOIN_ERROR_BACKOFF_MS": "0",
        "REALTIME_CONNECT_ERROR_BACKOFF_MS": "0",
        "REALTIME_LOG_LEVEL": "info",
        # Supabase's default limits count every delivery; the shared test servers carry the
        # whole suite's traffic, so limits are raised here and tested with explicit values.
        "REALTIME_MAX_EVENTS_PER_SECOND": "1000000",
        "REALTIME_MAX_JOINS_PER_SECOND": "1000000",
        "REALTIME_MAX_CONCURRENT_USERS": "1000000",
        "REALTIME_MAX_PRESENCE_EVENTS_PER_SECOND": "1000000",
        **env_overrides,
    }
    log_path = os.path.join(tmp_dir, f"server-{port}.log")
    log = open(log_path, "wb")  # noqa: SIM115 - kept open for the child's lifetime
    proc = subprocess.Popen(
        [sys.executable, "-m", "realtime_channels", "serve"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = ServerProc(port=port, proc=proc, log_path=log_path, env=env_overrides)
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log()}")
        try:
            with urllib.request.urlopen(f"{server.http_url}/healthcheck", timeout=1) as r:
                if r.status == 200:
                    return server
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"server did not become healthy:\n{server.log()}")
        time.sleep(0.05)  # polling a condition (health), bounded by the deadline
