"""Test support shared by every test directory: start a real ``realtime-channels serve``
subprocess or a private ``redis-server`` on a free port, mint JWTs, read a server's memory and
metrics, poll a condition with a deadline.  (A plain module, so tests import it by name; pytest
loads every ``conftest.py`` under the same module name.)"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import jwt


TEST_SECRET = "test-secret-with-at-least-32-characters-long!"

REDIS_START_TIMEOUT_S = 10.0

T = TypeVar("T")


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

    def rss_bytes(self) -> int:
        """The server process's resident memory (``VmRSS`` in /proc/<pid>/status)."""
        with open(f"/proc/{self.proc.pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError(f"no VmRSS for pid {self.proc.pid} (has the server exited?)")

    def metrics(self) -> dict[str, float]:
        """``GET /metrics`` (Prometheus text) as ``{name: value}``."""
        with urllib.request.urlopen(f"{self.http_url}/metrics", timeout=2) as r:
            lines = r.read().decode().splitlines()
        out: dict[str, float] = {}
        for name, value in (line.rsplit(" ", 1) for line in lines if line and not line.startswith("#")):
            base = name.split("{", 1)[0]  # the per-tenant series: summed over tenants
            out[base] = out.get(base, 0.0) + float(value)
        return out

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
    wait_healthy(proc, server.http_url, 20, server.log, server.stop)
    return server


def wait_healthy(proc: subprocess.Popen[bytes], http_url: str, timeout: float, log: Callable[[], str],
                 stop: Callable[[], None] = lambda: None) -> None:
    """Until ``/healthcheck`` under ``http_url`` answers 200; ``RuntimeError`` (with the log)
    when the process exits first or ``timeout`` passes (then ``stop()`` is called)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log()}")
        try:
            with urllib.request.urlopen(f"{http_url}/healthcheck", timeout=1) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        if time.monotonic() > deadline:
            stop()
            raise RuntimeError(f"server did not become healthy:\n{log()}")
        time.sleep(0.05)  # polling a condition (health), bounded by the deadline


async def wait_until(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll ``check`` (a cheap, synchronous condition) until it returns a value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while True:
        try:
            result = check()
        except (OSError, ValueError) as exc:  # a node briefly not answering /health
            result, last = None, exc
        if result is not None and result is not False:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last})")
        await asyncio.sleep(0.05)  # poll interval of a condition bounded by the deadline


async def wait_async(check: Callable[[], Awaitable[T | None]], timeout: float, what: str) -> T:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await check()
        if result is not None and result is not False:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def _redis_ping(port: int) -> bool:
    """One PING over a raw socket (RESP inline command); True on ``+PONG``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One private ``redis-server`` process on a fixed loopback port (no persistence); can be
    SIGKILLed and started again on the same port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port if port is not None else free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.mkdtemp(prefix="rc-redis-")
        self.log_path = os.path.join(self._dir, "redis.log")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the process and wait until it answers PING."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (scripts/test installs it)")
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--dir", self._dir],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        while not _redis_ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                with open(self.log_path, "rb") as f:
                    tail = f.read()[-2000:].decode("utf-8", "replace")
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}:\n{tail}")
            time.sleep(0.02)  # process start-up poll; the condition is PING answering

    def kill(self) -> None:
        """SIGKILL: connections drop without a goodbye, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def cleanup(self) -> None:
        """Stop the process and remove its directory."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
