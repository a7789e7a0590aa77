"""Helpers shared by the benchmark scripts (they run as ``python bench/<script>.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import math
import os
import platform
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jwt
import orjson

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(core: int | None, cmd: list[str]) -> list[str]:
    """``cmd`` run on one CPU core with ``taskset`` (unpinned when ``core`` is None)."""
    return cmd if core is None else ["taskset", "-c", str(core), *cmd]


def log(msg: str) -> None:
    """A progress line, flushed at once (benchmarks run for minutes)."""
    print(msg, flush=True)


def load_pgcluster() -> Any:
    """``tests/pgcluster.py`` (the throwaway PostgreSQL cluster), loaded as a module."""
    spec = importlib.util.spec_from_file_location("pgcluster", ROOT / "tests" / "pgcluster.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the server under test --------------------------------------------------------------------

#: Supabase's per-tenant quotas (protocol.md §8) default to a small tenant's; benchmarks that
#: measure the server lift them, as an operator does for a large tenant.
LIFTED_QUOTAS = {
    "REALTIME_MAX_CONCURRENT_USERS": "1000000",
    "REALTIME_MAX_JOINS_PER_SECOND": "1000000",
    "REALTIME_MAX_EVENTS_PER_SECOND": "1000000000",
    "REALTIME_MAX_BYTES_PER_SECOND": "100000000000",
    "REALTIME_MAX_PRESENCE_EVENTS_PER_SECOND": "1000000000",
}


@contextmanager
def running_server(env_extra: dict[str, str], core: int | None, log_path: Path,
                   secret: str) -> Iterator[tuple[int, int]]:
    """``python -m realtime_channels serve`` on a free port (pinned to ``core``), its output in
    ``log_path``; yields (port, pid) once /healthcheck answers, stops it on exit."""
    port = free_port()
    env = {
        **os.environ,
        "REALTIME_HOST": "127.0.0.1",
        "REALTIME_PORT": str(port),
        "REALTIME_JWT_SECRET": secret,
        "REALTIME_LOG_LEVEL": "warning",
        **env_extra,
    }
    with open(log_path, "wb") as out:
        cmd = [sys.executable, "-m", "realtime_channels", "serve"]
        proc = subprocess.Popen(pinned(core, cmd), env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited ({proc.returncode}):\n{log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthcheck", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not become ready:\n{log_path.read_text()[-2000:]}")
            time.sleep(0.05)  # polling until the port answers, bounded by the deadline
        yield port, proc.pid  # taskset execs the command: same pid
    finally:
        stop_process(proc)


def http_json(url: str) -> Any:
    """A JSON answer from ``url``, or ``None`` while nothing (or not JSON) answers."""
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


def redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def redis_server(data_dir: Path, core: int | None = None) -> Iterator[tuple[str, int]]:
    """A throwaway ``redis-server`` on a free port (no persistence, files in ``data_dir``); yields
    (its redis:// URL, its pid) once it answers PING, stops it on exit."""
    port = free_port()
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
           "--dir", str(data_dir)]
    proc = subprocess.Popen(pinned(core, cmd), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not redis_ping(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on {port} did not start (exit {proc.poll()})")
            time.sleep(0.05)  # polling until it answers, bounded by the deadline
        yield f"redis://127.0.0.1:{port}/0", proc.pid
    finally:
        stop_process(proc)


# --- /proc ------------------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (/proc/<pid>/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_mem_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of one process in MiB."""
    rss = hwm = 0.0
    with open(f"/proc/{pid}/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
    return rss, hwm


def process_tree(*roots: int) -> set[int]:
    """The roots and all their descendants (a server started with ``--workers`` forks)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    tree: set[int] = set()
    todo = list(roots)
    while todo:
        p = todo.pop()
        if p not in tree:
            tree.add(p)
            todo.extend(children.get(p, []))
    return tree


def tree_rss_mb(pid: int) -> float:
    """VmRSS of ``pid`` and its descendants, MiB (pages shared between them count once each)."""
    total = 0.0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            total += proc_mem_mb(p)[0]
    return total


def tree_cpu_seconds(*roots: int) -> float:
    """User + system CPU seconds of the roots and their descendants (each process once)."""
    total = 0.0
    for p in process_tree(*roots):
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += proc_cpu_seconds(p)
    return total


class ServerSampler(threading.Thread):
    """Every 100 ms: the server's CPU seconds, run-queue wait (time runnable but not running,
    i.e. other work took its core) and RSS, stamped with epoch ms like the clients' samples."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.rows: list[tuple[float, float, float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                stat = Path(f"/proc/{self.pid}/stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
                cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
                wait = int(Path(f"/proc/{self.pid}/schedstat").read_text().split()[1]) / 1e9
                rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
            except (OSError, ValueError, IndexError):
                return
            self.rows.append((time.time() * 1000, cpu, wait, rss))
            self.stop.wait(0.1)

    def between(self, lo: float, hi: float) -> dict[str, float]:
        rows = [r for r in self.rows if lo <= r[0] <= hi]
        if len(rows) < 2:
            return {"cpu": float("nan"), "wait": float("nan"), "rss": float("nan")}
        wall = (rows[-1][0] - rows[0][0]) / 1000
        return {
            "cpu": (rows[-1][1] - rows[0][1]) / wall,
            "wait": (rows[-1][2] - rows[0][2]) / wall,
            "rss": max(r[3] for r in rows) / 2**20,
        }


def core_ticks(cpu: int) -> tuple[int, int, int]:
    """(busy, total, user+nice+system) jiffies of one CPU from /proc/stat.

    busy also counts irq/softirq time, where the kernel's loopback TCP work for the sender lands
    and which /proc/<pid>/stat does not charge to the process."""
    with open("/proc/stat", encoding="utf-8") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                idle = v[3] + v[4]
                return sum(v) - idle, sum(v), v[0] + v[1] + v[2]
    raise RuntimeError(f"cpu{cpu} not in /proc/stat")


def busy_pct(start: tuple[int, int, int], end: tuple[int, int, int], part: int = 0) -> float:
    return 100 * (end[part] - start[part]) / max(1, end[1] - start[1])


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def sign_token(secret: str, role: str, exp: int, **claims: Any) -> str:
    """An HS256 token with ``role``, ``exp`` and any other claims."""
    return jwt.encode({"role": role, "exp": exp, **claims}, secret, algorithm="HS256")


# --- latency histograms -----------------------------------------------------------------------

HIST_LO_MS = 0.01
HIST_GROWTH = 1.04
_LOG_GROWTH = math.log(HIST_GROWTH)


class LogHist:
    """Latencies in logarithmic buckets (each 4 % wide): fixed memory however many samples, and
    mergeable across processes — ``bench/loadgen.mjs`` fills the same buckets.  Bucket 0 holds
    values ≤ 0.01 ms; bucket i ≥ 1 holds (0.01·1.04^(i-1), 0.01·1.04^i] ms."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.n = 0
        self.max = 0.0

    def add(self, ms: float) -> None:
        i = 0 if ms <= HIST_LO_MS else math.ceil(math.log(ms / HIST_LO_MS) / _LOG_GROWTH)
        self.counts[i] = self.counts.get(i, 0) + 1
        self.n += 1
        if ms > self.max:
            self.max = ms

    def merge(self, other: LogHist) -> LogHist:
        for i, c in other.counts.items():
            self.counts[i] = self.counts.get(i, 0) + c
        self.n += other.n
        self.max = max(self.max, other.max)
        return self

    def quantile(self, q: float) -> float | None:
        """The q-quantile (0 < q ≤ 1), as the geometric middle of its bucket (±2 %)."""
        if not self.n:
            return None
        rank = q * self.n
        seen = 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            if seen >= rank:
                mid = HIST_LO_MS if i == 0 else HIST_LO_MS * HIST_GROWTH ** (i - 0.5)
                return min(mid, self.max)
        return self.max

    def to_json(self) -> dict[str, Any]:
        return {"b": {str(i): c for i, c in self.counts.items()}, "n": self.n, "max": self.max}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LogHist:
        h = cls()
        h.counts = {int(i): int(c) for i, c in data["b"].items()}
        h.n = int(data["n"])
        h.max = float(data["max"])
        return h


# --- client processes -------------------------------------------------------------------------


class Worker:
    """One client process (a role of ``bench/clients.py``, or ``node bench/loadgen.mjs`` in soak mode) driven over
    its stdin/stdout; its stderr goes to ``<log_dir>/<name>.err``."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, *, core: int | None = None, nice: int = 0) -> None:
        self.name = name
        self.argv = pinned(core, argv)
        if nice:
            self.argv = ["nice", "-n", str(nice), *self.argv]
        self.err_path = log_dir / f"{name}.err"
        self.proc: asyncio.subprocess.Process | None = None
        self.replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    @classmethod
    def python(cls, role: str, cfg: dict[str, Any], log_dir: Path, **kw: Any) -> Worker:
        """A role of ``bench/clients.py``."""
        return cls(cfg.get("name", role), [sys.executable, str(BENCH / "clients.py"), role, orjson.dumps(cfg).decode()],
                   log_dir, **kw)

    async def start(self, timeout: float = 120) -> dict[str, Any]:
        with open(self.err_path, "wb") as err:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err,
                limit=16 * 1024 * 1024, cwd=BENCH)
        self._reader = asyncio.create_task(self._read())
        return await self.expect("ready", timeout)

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for line in self.proc.stdout:
            try:
                msg = orjson.loads(line)
            except orjson.JSONDecodeError:
                log(f"  [{self.name}] {line.decode(errors='replace').rstrip()}")
                continue
            if msg.get("type") == "progress":
                log(f"  [{self.name}] {msg.get('msg')}")
            else:
                await self.replies.put(msg)
        await self.replies.put({"type": "exit"})

    async def expect(self, kind: str, timeout: float) -> dict[str, Any]:
        msg = await asyncio.wait_for(self.replies.get(), timeout)
        if msg.get("type") != kind:
            err = self.err_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name}: expected {kind!r}, got {str(msg)[:500]}\n{err}")
        return msg

    async def command(self, cmd: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(orjson.dumps(cmd) + b"\n")
        await self.proc.stdin.drain()

    async def report(self, timeout: float = 30) -> dict[str, Any]:
        await self.command({"cmd": "report"})
        return await self.expect("report", timeout)

    async def stop(self, timeout: float = 60) -> dict[str, Any]:
        await self.command({"cmd": "stop"})
        result = await self.expect("result", timeout)
        assert self.proc is not None
        await asyncio.wait_for(self.proc.wait(), 15)
        return result

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, and SIGKILL if it has not exited 10 s later."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
