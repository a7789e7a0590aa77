"""End-to-end postgres_changes benchmark: committed row → WebSocket client, through a real
``realtime-channels serve`` process (design.md §3).

    .venv/bin/python bench/cdc_e2e.py [--seconds 10] [--scenarios 1,2,3,4] [--profile DIR]

Prints figures; it is not a test.  It starts its own throwaway PostgreSQL (tests/pgcluster.py)
and, per scenario, one server subprocess pinned to CPU 1 (``taskset -c 1``) with its own
replication slot.  This process (the writer, psycopg), PostgreSQL (backends and walsender) and
the Node subscribers (bench/cdc_subscribers.mjs, raw WebSocket) are pinned to CPU 0, so the
server has a core to itself and the load generator shares the other.

Scenarios:
  1. 1 subscriber, table without RLS, flood of 100-row transactions.
  2. 100 subscribers in 10 claims cohorts on the RLS table ``notes``, flood, batched RLS.
  3. As 2 with REALTIME_CDC_RLS_MODE=per_subscriber (one query per subscriber per change,
     Supabase's approach) — the baseline, measured in the same run.
  4. Latency: 1 subscriber, no RLS, paced 1,000 single-row transactions/s.

"Flood" is closed-loop: the writer commits its next transaction as soon as the messages not yet
received are at most max(1 transaction's worth, 0.5 s of the current delivery rate), so the
server always has work queued (it is saturated all along), yet the backlog (and the drain after
the window) stays bounded.
Flood latencies are therefore queueing delays of that bounded backlog, not the idle-path
latency (scenario 4 measures that).  Latency = client receive time − ``sent_ms``, the writer's
wall clock (µs digits) taken just before the autocommit INSERT that commits the rows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jwt
import psycopg

from realtime_channels.cdc import sql
from common import busy_pct, core_ticks, cpu_model, free_port, load_pgcluster, log, proc_cpu_seconds, proc_mem_mb

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
NODE_SCRIPT = ROOT / "bench" / "cdc_subscribers.mjs"
PUBLICATION = "supabase_realtime"
SERVER_CPU = 1
LOADGEN_CPU = 0
TEAMS = [f"t{i}" for i in range(10)]
DRAIN_CAP_S = 25.0
WARM_ROWS = 10
WARM_TIMEOUT_S = 60.0
#: CPU (% of one core) used by processes outside this benchmark above which a scenario is
#: repeated once and, if still above, marked as skewed (the machine may be shared).
FOREIGN_LIMIT_PCT = 15.0

GOAL_NO_RLS = 100_000
GOAL_RLS = 40_000
GOAL_RATIO = 10.0
GOAL_P99_MS = 50.0

SETUP_SQL = """
create role anon nologin noinherit;
create role authenticated nologin noinherit;
create role service_role nologin noinherit bypassrls;
grant usage on schema public to anon, authenticated, service_role;
create table plain (id bigserial primary key, sent_ms float8 not null, body text not null);
create table notes (id bigserial primary key, team text not null, sent_ms float8 not null,
                    body text not null);
alter table notes enable row level security;
create policy team_member on notes for select to authenticated
    using (team = any (array(select jsonb_array_elements_text(auth.jwt() -> 'teams'))));
grant select on plain, notes to anon, authenticated, service_role;
create publication supabase_realtime for table plain, notes;
"""

BODY = "the quick brown fox jumps over the lazy dog"
INSERT_PLAIN = (
    "insert into plain (sent_ms, body) select %s, %s from generate_series(1, %s)"
)
INSERT_NOTES = (
    "insert into notes (team, sent_ms, body) "
    "select 't' || (g %% 10), %s, %s from generate_series(1, %s) as g"
)


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    table: str
    subscribers: int
    cohorts: int
    rls_mode: str
    rows_per_txn: int
    paced_txn_per_s: float | None = None  # None = closed-loop flood

    @property
    def insert_sql(self) -> str:
        return INSERT_NOTES if self.table == "notes" else INSERT_PLAIN


SCENARIOS = {
    "1": Scenario("1", "1 sub, no RLS, flood", "plain", 1, 1, "batched", 100),
    "2": Scenario("2", "100 subs / 10 cohorts, RLS, flood, batched", "notes", 100, 10, "batched", 100),
    "3": Scenario("3", "100 subs / 10 cohorts, RLS, flood, per_subscriber (baseline)", "notes", 100, 10,
                  "per_subscriber", 100),
    "4": Scenario("4", "latency: 1 sub, no RLS, paced 1,000 txn/s", "plain", 1, 1, "batched", 1, 1000.0),
}


@dataclass
class Result:
    scenario: Scenario
    window_s: float
    committed_rows: int
    delivered_in_window: int
    busy_s: float  # first commit of the window → last frame received
    received: int
    expected: int
    cpu_pct: float
    core0_pct: float
    core1_pct: float
    foreign_pct: float  # CPU used by processes that are not part of the benchmark, % of one core
    rss_mb: float
    hwm_mb: float
    client: dict[str, Any]
    drain_s: float
    notes: list[str] = field(default_factory=list)

    @property
    def changes_per_s(self) -> float:
        return self.committed_rows / self.window_s

    @property
    def delivered_per_s(self) -> float:
        """Flood: every frame over the busy period (the server is saturated from the first commit
        until the backlog is drained, so this is its capacity, and transactions delivered in one
        piece — 10,000 frames at once for the baseline — do not quantise it). Paced: the window."""
        if self.scenario.paced_txn_per_s is None and self.busy_s > 0:
            return self.received / self.busy_s
        return self.delivered_in_window / self.window_s

    @property
    def ratio(self) -> float:
        return self.received / self.expected if self.expected else 0.0


# --- helpers ----------------------------------------------------------------------------------


def ppid_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


class OwnCpu:
    """CPU seconds of the benchmark's own processes: this one, the server, the subscribers, the
    PostgreSQL postmaster and its children (backends, walsender), py-spy when profiling."""

    def __init__(self, postmaster: int, pids: list[int]) -> None:
        self.postmaster = postmaster
        self.pids = pids

    def snapshot(self) -> dict[int, float]:
        pids = set(self.pids) | {os.getpid(), self.postmaster}
        for entry in os.listdir("/proc"):
            if entry.isdigit() and ppid_of(int(entry)) == self.postmaster:
                pids.add(int(entry))
        out: dict[int, float] = {}
        for pid in pids:
            with contextlib.suppress(OSError, ValueError, IndexError):
                out[pid] = proc_cpu_seconds(pid)
        return out

    @staticmethod
    def delta(a: dict[int, float], b: dict[int, float]) -> float:
        return sum(v - a.get(pid, 0.0) for pid, v in b.items())


def idle_check() -> tuple[float, float]:
    """Both CPUs' busy % over one second before anything starts (other work on the machine skews
    every figure; the report says so)."""
    a = core_ticks(0), core_ticks(1)
    time.sleep(1.0)  # a fixed sampling interval, not a wait for a condition
    b = core_ticks(0), core_ticks(1)
    return busy_pct(a[0], b[0]), busy_pct(a[1], b[1])


def mint(secret: str, role: str, sub: str, teams: list[str], exp: int) -> str:
    claims = {"role": role, "sub": sub, "teams": teams, "aud": "authenticated", "exp": exp,
              "iat": exp - 3600}
    return jwt.encode(claims, secret, algorithm="HS256")


# --- the subscriber process ----------------------------------------------------------------------


class Subscribers:
    """bench/cdc_subscribers.mjs, with its progress stream folded into a few counters."""

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.received = 0
        self.warm = 0
        self.closed = 0
        self.samples: list[tuple[float, int]] = []
        self.changed = asyncio.Event()
        self.ready = asyncio.Event()
        self.result: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.error: str | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self, config: dict[str, Any]) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            "node", str(NODE_SCRIPT), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=16 * 1024 * 1024,
        )
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(config).encode() + b"\n")
        await self.proc.stdin.drain()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            msg = json.loads(raw)
            kind = msg["type"]
            if kind == "progress":
                self.received, self.warm, self.closed = msg["received"], msg["warm"], msg["closed"]
                self.samples.append((time.monotonic(), self.received))
                self.changed.set()
            elif kind == "ready":
                self.ready.set()
            elif kind == "result":
                self.result.set_result(msg)
            elif kind == "error":
                self.error = msg["message"]
                self.ready.set()
                self.changed.set()
        if not self.result.done():
            self.result.set_exception(RuntimeError(f"subscribers exited: {self.error}"))
        self.changed.set()

    def check(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"subscriber failed: {self.error}")
        if self.closed:
            raise RuntimeError(f"{self.closed} subscriber connection(s) closed by the server")

    def rate(self, over: float = 1.0) -> float:
        """Messages/s over the last ``over`` seconds of progress samples."""
        if len(self.samples) < 2:
            return 0.0
        t_end, n_end = self.samples[-1]
        for t, n in reversed(self.samples):
            if t_end - t >= over:
                return (n_end - n) / (t_end - t)
        t0, n0 = self.samples[0]
        return (n_end - n0) / (t_end - t0) if t_end > t0 else 0.0

    async def wait_for(self, cond: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not cond():
            self.check()
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 0.2))
        return True

    async def stop(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(b"stop\n")
        await self.proc.stdin.drain()
        result = await asyncio.wait_for(self.result, 60)
        await asyncio.wait_for(self.proc.wait(), 10)
        return result

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


# --- the server process -----------------------------------------------------------------------------


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def start_server(dsn: str, secret: str, slot: str, rls_mode: str, tmp: Path) -> Server:
    port = free_port()
    env = {
        **os.environ,
        "REALTIME_HOST": "127.0.0.1",
        "REALTIME_PORT": str(port),
        "REALTIME_JWT_SECRET": secret,
        "REALTIME_DATABASE_URL": dsn,
        "REALTIME_PUBLICATION": PUBLICATION,
        "REALTIME_SLOT_NAME": slot,
        "REALTIME_CDC_RLS_MODE": rls_mode,
        "REALTIME_LOG_LEVEL": "warning",
    }
    log_path = tmp / f"server-{slot}.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            ["taskset", "-c", str(SERVER_CPU), sys.executable, "-m", "realtime_channels", "serve"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    server = Server(proc, port, log_path)
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthcheck", timeout=1) as r:
                if r.status == 200:
                    return server
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        if time.monotonic() > deadline:
            stop_server(server)
            raise RuntimeError(f"server did not become healthy:\n{server.log_tail()}")
        time.sleep(0.05)  # polling a condition (health), bounded by the deadline


def stop_server(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(15)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(5)


async def wait_slot(conn: psycopg.AsyncConnection[Any], slot: str, active: bool, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        cur = await conn.execute("select active from pg_replication_slots where slot_name = %s", (slot,))
        row = await cur.fetchone()
        if (row is not None and row[0]) if active else (row is None or not row[0]):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"replication slot {slot} did not become {'active' if active else 'idle'}")
        await asyncio.sleep(0.05)  # polling a condition, bounded by the deadline


# --- one scenario --------------------------------------------------------------------------------------


async def run_scenario(sc: Scenario, dsn: str, secret: str, seconds: float, tmp: Path,
                       profile_dir: Path | None, postmaster: int) -> Result:
    slot = f"bench_s{sc.key}_{uuid.uuid4().hex[:6]}"
    log(f"[S{sc.key}] {sc.title}: starting server (taskset -c {SERVER_CPU}, "
        f"REALTIME_CDC_RLS_MODE={sc.rls_mode})")
    server = start_server(dsn, secret, slot, sc.rls_mode, tmp)
    subs = Subscribers()
    profiler: subprocess.Popen[bytes] | None = None
    admin = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    writer = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    try:
        # Start from a settled database: no scenario inherits the vacuum or checkpoint work of
        # the rows an earlier one wrote (autovacuum on CPU 0 would skew the paced scenario).
        await admin.execute("vacuum analyze")
        await admin.execute("checkpoint")
        await wait_slot(admin, slot, True, 30)
        exp = int(time.time()) + 3600
        # One claims set per cohort (differing by `sub`); every cohort's teams cover every row.
        tokens = [mint(secret, "authenticated", str(uuid.uuid5(uuid.NAMESPACE_URL, f"cohort-{c}")), TEAMS, exp)
                  for c in range(sc.cohorts)]
        specs = [{"token": tokens[i % sc.cohorts], "vsn": "2.0.0" if i % 2 == 0 else "1.0.0",
                  "topic": f"realtime:bench-{sc.key}-{i}", "table": sc.table}
                 for i in range(sc.subscribers)]
        if sc.subscribers == 1:
            specs[0]["vsn"] = "2.0.0"
        await subs.start({
            "url": f"ws://127.0.0.1:{server.port}/realtime/v1/websocket", "subs": specs,
            "progress_ms": 50, "verify_every": 1 if sc.paced_txn_per_s else 1000,
        })
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(subs.ready.wait(), 60)
        subs.check()
        if not subs.ready.is_set():
            raise RuntimeError(f"subscribers not all subscribed:\n{server.log_tail()}")
        vsns = sorted({s["vsn"] for s in specs})
        log(f"[S{sc.key}] {sc.subscribers} subscriber(s) subscribed (vsn {', '.join(vsns)}); warming up")

        # Warm-up rows (sent_ms = -1) go through the whole path and are not counted.
        warm_txns = WARM_ROWS // sc.rows_per_txn or 1
        warm_rows = min(WARM_ROWS, sc.rows_per_txn)
        for _ in range(warm_txns):
            await writer.execute(sc.insert_sql, (-1.0, BODY, warm_rows))
        warm_expected = warm_txns * warm_rows * sc.subscribers
        if not await subs.wait_for(lambda: subs.warm >= warm_expected, WARM_TIMEOUT_S):
            raise RuntimeError(f"warm-up: {subs.warm}/{warm_expected} messages\n{server.log_tail()}")

        if profile_dir is not None:
            profiler = subprocess.Popen(
                ["taskset", "-c", str(LOADGEN_CPU), str(Path(sys.executable).parent / "py-spy"), "record",
                 "--pid", str(server.proc.pid), "--duration", str(int(seconds)), "--rate", "200",
                 "--format", "raw", "-o", str(profile_dir / f"scenario{sc.key}.txt"), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )

        assert subs.proc is not None
        own = OwnCpu(postmaster, [server.proc.pid, subs.proc.pid] + ([profiler.pid] if profiler else []))
        own0 = own.snapshot()
        cpu0 = proc_cpu_seconds(server.proc.pid)
        core0 = core_ticks(LOADGEN_CPU)
        core1 = core_ticks(SERVER_CPU)
        t0 = time.monotonic()
        t0_wall_ms = time.time() * 1000.0
        committed = await (pace(sc, writer, subs, t0, seconds) if sc.paced_txn_per_s
                           else flood(sc, writer, subs, t0, seconds))
        t1 = time.monotonic()
        cpu1 = proc_cpu_seconds(server.proc.pid)
        core0_end = core_ticks(LOADGEN_CPU)
        core1_end = core_ticks(SERVER_CPU)
        own1 = own.snapshot()
        rss, hwm = proc_mem_mb(server.proc.pid)
        delivered_in_window = subs.received
        expected = committed * sc.subscribers

        await subs.wait_for(lambda: subs.received >= expected, DRAIN_CAP_S)
        drain = time.monotonic() - t1
        client = await subs.stop()
        window = t1 - t0
        res = Result(
            scenario=sc, window_s=window, committed_rows=committed, delivered_in_window=delivered_in_window,
            busy_s=((client["last_ms"] or t0_wall_ms) - t0_wall_ms) / 1000.0,
            received=client["received"], expected=expected,
            cpu_pct=100 * (cpu1 - cpu0) / window,
            core0_pct=busy_pct(core0, core0_end),
            core1_pct=busy_pct(core1, core1_end),
            foreign_pct=max(0.0, 100 * (
                (core0_end[2] - core0[2] + core1_end[2] - core1[2]) / os.sysconf("SC_CLK_TCK")
                - OwnCpu.delta(own0, own1)) / window),
            rss_mb=rss, hwm_mb=hwm, client=client, drain_s=drain,
        )
        if res.foreign_pct > FOREIGN_LIMIT_PCT:
            res.notes.append(f"processes outside the benchmark used {res.foreign_pct:.0f}% of a core during the "
                             "window: figures skewed")
        if client["duplicates"]:
            res.notes.append(f"{client['duplicates']} duplicate deliveries")
        if client["verify_failures"]:
            res.notes.append(f"frame check failed: {client['verify_failures'][0][:200]}")
        if client["per_sub_min"] != client["per_sub_max"]:
            res.notes.append(f"per-subscriber counts differ: {client['per_sub_min']}..{client['per_sub_max']}")
        log(f"[S{sc.key}] done: {res.changes_per_s:,.0f} changes/s committed, {res.delivered_per_s:,.0f} "
            f"delivered/s, ratio {res.ratio:.4f} after {drain:.1f} s drain, p50 {fmt_ms(client['p50_ms'])} "
            f"p99 {fmt_ms(client['p99_ms'])}, server CPU {res.cpu_pct:.0f}%, CPU 0/1 busy {res.core0_pct:.0f}%/"
            f"{res.core1_pct:.0f}%, other processes {res.foreign_pct:.0f}%")
        return res
    finally:
        if profiler is not None:
            try:
                profiler.wait(seconds + 30)
            except subprocess.TimeoutExpired:
                profiler.kill()
                profiler.wait()
        await subs.kill()
        stop_server(server)
        with contextlib.suppress(RuntimeError, psycopg.Error):
            await wait_slot(admin, slot, False, 15)
            await admin.execute("select pg_drop_replication_slot(%s)", (slot,))
            await admin.execute("delete from realtime.rc_replication_position where slot_name = %s", (slot,))
        await writer.close()
        await admin.close()


def progress_line(sc: Scenario, elapsed: float, committed: int, subs: Subscribers) -> None:
    outstanding = committed * sc.subscribers - subs.received
    log(f"[S{sc.key}] t={elapsed:4.1f}s committed {committed:>9,} rows ({committed / elapsed:>8,.0f}/s)  "
        f"delivered {subs.received:>10,} ({subs.rate():>9,.0f}/s now)  backlog {outstanding:>8,}")


async def flood(sc: Scenario, writer: psycopg.AsyncConnection[Any], subs: Subscribers, t0: float,
                seconds: float) -> int:
    """Closed loop: commit as fast as possible while the backlog stays bounded (module doc)."""
    txn_msgs = sc.rows_per_txn * sc.subscribers
    committed = 0
    next_report = t0 + 1.0
    while (now := time.monotonic()) < t0 + seconds:
        if now >= next_report:
            progress_line(sc, now - t0, committed, subs)
            next_report += 1.0
        # One transaction queued behind the one in progress keeps the server busy.
        limit = max(txn_msgs, int(0.5 * subs.rate()))
        if committed * sc.subscribers - subs.received > limit:
            subs.check()
            subs.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(subs.changed.wait(), 0.1)
            continue
        sent_ms = time.time() * 1000.0
        await writer.execute(sc.insert_sql, (sent_ms, BODY, sc.rows_per_txn))
        committed += sc.rows_per_txn
    return committed


async def pace(sc: Scenario, writer: psycopg.AsyncConnection[Any], subs: Subscribers, t0: float,
               seconds: float) -> int:
    """Open loop: transaction i is committed at t0 + i / rate (caught up without sleeping if late)."""
    assert sc.paced_txn_per_s is not None
    interval = 1.0 / sc.paced_txn_per_s
    total = int(seconds * sc.paced_txn_per_s)
    committed = 0
    next_report = t0 + 1.0
    for i in range(total):
        now = time.monotonic()
        if now >= next_report:
            progress_line(sc, now - t0, committed, subs)
            next_report += 1.0
        delay = t0 + i * interval - now
        if delay > 0:
            await asyncio.sleep(delay)
        sent_ms = time.time() * 1000.0
        await writer.execute(sc.insert_sql, (sent_ms, BODY, sc.rows_per_txn))
        committed += sc.rows_per_txn
    # The window is the schedule's length, even if the last commit finished a little later.
    late = time.monotonic() - (t0 + seconds)
    if late > 0.05:
        log(f"[S{sc.key}] writer finished {late * 1000:.0f} ms behind schedule")
    return committed


# --- report -------------------------------------------------------------------------------------------


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:,.1f} ms" if v < 1000 else f"{v / 1000:,.2f} s"


def machine() -> dict[str, str]:
    pg = subprocess.run([str(load_pgcluster().find_bindir() / "postgres"), "--version"],
                        capture_output=True, text=True, check=False).stdout.strip()
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgres": pg,
        "node": node,
    }


def render(results: list[Result], mach: dict[str, str], seconds: float, idle: tuple[float, float]) -> str:
    by = {r.scenario.key: r for r in results}
    lines = [
        "# postgres_changes end-to-end benchmark",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M %Z')} with `.venv/bin/python bench/cdc_e2e.py` "
        f"(window {seconds:g} s per scenario).",
        "",
        f"Machine: {mach['nproc']} CPUs ({mach['cpu']}), Linux {mach['kernel']}, Python {mach['python']}, "
        f"{mach['postgres']}, Node {mach['node']}. Server (`realtime-channels serve`, one process) pinned to "
        f"CPU {SERVER_CPU} with `taskset`; PostgreSQL, the Python writer and the Node subscribers share "
        f"CPU {LOADGEN_CPU}. Before the run the CPUs were {idle[0]:.0f}% / {idle[1]:.0f}% busy"
        + (" — **the machine was not idle; figures are skewed**." if max(idle) > 10 else " (idle)."),
        "",
        "| # | scenario | changes/s committed | delivered msgs/s | delivery ratio | p50 | p99 "
        "| server CPU | CPU 0 / 1 busy | other load | server RSS (peak) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        c = r.client
        lines.append(
            f"| {r.scenario.key} | {r.scenario.title} | {r.changes_per_s:,.0f} | {r.delivered_per_s:,.0f} | "
            f"{r.ratio:.4f} | {fmt_ms(c['p50_ms'])} | {fmt_ms(c['p99_ms'])} | {r.cpu_pct:.0f}% | "
            f"{r.core0_pct:.0f}% / {r.core1_pct:.0f}% | {r.foreign_pct:.0f}%"
            f"{' ⚠' if r.foreign_pct > FOREIGN_LIMIT_PCT else ''} | {r.rss_mb:.0f} MB ({r.hwm_mb:.0f}) |"
        )
    lines.append("")
    if "2" in by and "3" in by and by["3"].delivered_per_s > 0:
        lines.append(f"Batched RLS / per-subscriber baseline (scenario 2 / scenario 3): "
                     f"**{by['2'].delivered_per_s / by['3'].delivered_per_s:.1f}×** delivered msgs/s.")
        lines.append("")
    if "4" in by and by["4"].client.get("commit_ts_p50_ms") is not None:
        c = by["4"].client
        lines.append(f"Scenario 4 measured from `data.commit_timestamp` instead of `sent_ms` "
                     f"({c['commit_ts_samples']:,} messages; the field has millisecond precision): "
                     f"p50 {fmt_ms(c['commit_ts_p50_ms'])}, p99 {fmt_ms(c['commit_ts_p99_ms'])}.")
        lines.append("")
    lines += ["## Goals", "", "| goal | measured | holds |", "|---|---|---|"]
    for goal, measured, ok in goals(by):
        lines.append(f"| {goal} | {measured} | {'yes' if ok else '**no**'} |")
    lines += [
        "",
        "## How to read it",
        "",
        "- *changes/s committed*: rows the writer committed per second of the window. *delivered msgs/s*: "
        "`postgres_changes` frames received by all subscribers (one frame per subscriber per row) per second; "
        "for floods over the busy period, first commit of the window → last frame received (the server is "
        "saturated throughout, and the baseline delivers 10,000 frames per 100-row transaction in one burst, "
        "which a fixed window would quantise); for scenario 4 over the window. *delivery ratio*: frames received by the end of the drain (≤ "
        f"{DRAIN_CAP_S:g} s after the window) ÷ committed rows × subscribers; every subscriber may see every "
        "row, and the subscribers check each row id arrives at most once.",
        "- Flood scenarios are closed-loop: the writer commits its next transaction once at most max(1 "
        "transaction, 0.5 s of delivery) is unreceived, so the server always has work queued and latency "
        "there is the queueing delay of that backlog. Scenario 4 is open-loop at a fixed rate: the latency "
        "figure the goal refers to.",
        "- Latency = client receive wall clock − `sent_ms`, the writer's wall clock taken just before the "
        "autocommit INSERT that commits the row(s) (so it includes that statement, well under 1 ms).",
        "- Server CPU is user+system time of the server process over the window from `/proc/<pid>/stat` (100% "
        "= one core); CPU 0 / 1 busy from `/proc/stat` over the window (CPU 0 near 100% means the load "
        "generator side, not the server, limits); RSS from `/proc/<pid>/status` at the end of the window "
        "(peak = VmHWM). *Other load*: CPU time of processes outside the benchmark (busy user+system time of "
        "both CPUs minus this process, the server, the subscribers and PostgreSQL), % of one core; above "
        f"{FOREIGN_LIMIT_PCT:g}% the scenario is repeated once, and still above it is marked ⚠ (skewed).",
        "- Subscribers are raw WebSocket clients (Node `ws`) in one process; with 100 of them half join with "
        "vsn 2.0.0 and half with 1.0.0, ten per claims cohort (cohorts differ by `sub`).",
    ]
    notes = [f"- Scenario {r.scenario.key}: {n}" for r in results for n in r.notes]
    if notes:
        lines += ["", "## Anomalies", "", *notes]
    return "\n".join(lines) + "\n"


def goals(by: dict[str, Result]) -> list[tuple[str, str, bool]]:
    out: list[tuple[str, str, bool]] = []
    if "1" in by:
        v = by["1"].delivered_per_s
        out.append((f"≥ {GOAL_NO_RLS:,} delivered/s without RLS (scenario 1)", f"{v:,.0f}/s", v >= GOAL_NO_RLS))
    if "2" in by:
        v = by["2"].delivered_per_s
        out.append((f"≥ {GOAL_RLS:,} delivered/s with RLS, 100 subscribers (scenario 2)", f"{v:,.0f}/s",
                    v >= GOAL_RLS))
    if "2" in by and "3" in by and by["3"].delivered_per_s > 0:
        ratio = by["2"].delivered_per_s / by["3"].delivered_per_s
        out.append((f"≥ {GOAL_RATIO:g}× the per-subscriber baseline (2 / 3)", f"{ratio:.1f}×", ratio >= GOAL_RATIO))
    if "4" in by:
        p99 = by["4"].client["p99_ms"]
        rate = by["4"].changes_per_s
        out.append((f"p99 commit→client < {GOAL_P99_MS:g} ms at 1,000 changes/s (scenario 4)",
                    f"{fmt_ms(p99)} at {rate:,.0f} changes/s",
                    p99 is not None and p99 < GOAL_P99_MS and rate >= 0.99 * 1000))
    return out


def plot(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    labels = [f"S{r.scenario.key}" for r in results]
    rates = [r.delivered_per_s for r in results]
    colors = {"1": "tab:blue", "2": "tab:green", "3": "tab:red", "4": "tab:gray"}
    bars = ax1.bar(labels, rates, color=[colors[r.scenario.key] for r in results])
    for b, v in zip(bars, rates, strict=True):
        ax1.annotate(f"{v:,.0f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
    goal_of = {"1": GOAL_NO_RLS, "2": GOAL_RLS}
    base = next((r.delivered_per_s for r in results if r.scenario.key == "3"), None)
    for i, r in enumerate(results):
        if r.scenario.key in goal_of:
            ax1.hlines(goal_of[r.scenario.key], i - 0.4, i + 0.4, colors="black", linestyles="dashed")
        if r.scenario.key == "2" and base:
            ax1.hlines(GOAL_RATIO * base, i - 0.4, i + 0.4, colors="tab:red", linestyles="dotted")
            ax1.annotate("10× S3", (i + 0.4, GOAL_RATIO * base), fontsize=7, color="tab:red", va="center")
        if r.scenario.paced_txn_per_s:
            bars[i].set_hatch("//")
    ax1.set_yscale("log")
    ax1.set_ylabel("delivered postgres_changes msgs/s (log)")
    ax1.set_title("Throughput (dashed: goal; S4 is paced, not a capacity)", fontsize=10)
    ax1.set_xticks(range(len(results)), [f"S{r.scenario.key}\n{short(r.scenario)}" for r in results],
                   fontsize=8)

    for i, r in enumerate(results):
        c = r.client
        if c["p50_ms"] is None:
            continue
        ax2.plot([i, i], [max(c["p50_ms"], 0.01), max(c["p99_ms"], 0.01)], color=colors[r.scenario.key])
        ax2.scatter([i], [max(c["p50_ms"], 0.01)], marker="o", color=colors[r.scenario.key],
                    label="p50" if i == 0 else None)
        ax2.scatter([i], [max(c["p99_ms"], 0.01)], marker="^", color=colors[r.scenario.key],
                    label="p99" if i == 0 else None)
        ax2.annotate(f"p99 {fmt_ms(c['p99_ms'])}", (i, c["p99_ms"]), textcoords="offset points",
                     xytext=(6, 0), fontsize=8)
    ax2.axhline(GOAL_P99_MS, color="black", linestyle="dashed", linewidth=1)
    ax2.set_yscale("log")
    ax2.set_ylabel("commit → client latency, ms (log)")
    ax2.set_title("Latency p50 (o) / p99 (^); dashed: 50 ms goal (S4)\nfloods: queueing in the bounded backlog",
                  fontsize=10)
    ax2.set_xticks(range(len(results)), [f"S{r.scenario.key}\n{short(r.scenario)}" for r in results],
                   fontsize=8)
    ax2.set_xlim(-0.5, len(results) - 0.5)
    fig.suptitle("realtime-channels postgres_changes, end to end (server on 1 core)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def short(sc: Scenario) -> str:
    return {"1": "no RLS\n1 sub, flood", "2": "RLS batched\n100 subs, flood", "3": "RLS per-sub\n100 subs, flood",
            "4": "no RLS, 1 sub\npaced"}[sc.key]


# --- main ------------------------------------------------------------------------------------------------


async def run(dsn: str, keys: list[str], seconds: float, profile_dir: Path | None, tmp: Path,
              postmaster: int) -> list[Result]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await sql.install_auth_helpers(conn)
        await conn.execute(SETUP_SQL)
    secret = secrets.token_hex(32)
    results = []
    for key in keys:
        res = await run_scenario(SCENARIOS[key], dsn, secret, seconds, tmp, profile_dir, postmaster)
        if res.foreign_pct > FOREIGN_LIMIT_PCT:
            log(f"[S{key}] other processes used {res.foreign_pct:.0f}% of a core during the window: repeating once")
            again = await run_scenario(SCENARIOS[key], dsn, secret, seconds, tmp, profile_dir, postmaster)
            res = min(res, again, key=lambda r: r.foreign_pct)
        results.append(res)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement window per scenario")
    parser.add_argument("--scenarios", default="1,2,3,4", help="comma-separated subset of 1,2,3,4")
    parser.add_argument("--rate", type=float, default=1000.0,
                        help="scenario 4's transactions/s (the goal is stated at 1,000)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="record the server with py-spy (collapsed stacks) into this directory; "
                             "figures are then perturbed — do not publish them")
    parser.add_argument("--no-write", action="store_true", help="print only; keep bench/results as is")
    args = parser.parse_args()
    keys = [k.strip() for k in args.scenarios.split(",") if k.strip()]
    for k in keys:
        if k not in SCENARIOS:
            sys.exit(f"unknown scenario {k!r}")
    if args.rate != 1000.0:
        SCENARIOS["4"] = replace(SCENARIOS["4"], paced_txn_per_s=args.rate,
                                 title=f"latency: 1 sub, no RLS, paced {args.rate:,.0f} txn/s")
    if (os.cpu_count() or 1) < 2:
        sys.exit("needs 2 CPUs: the server gets one, the load generator the other")
    if shutil.which("node") is None:
        sys.exit("node is required for the subscribers")
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        if not (Path(sys.executable).parent / "py-spy").exists():
            sys.exit("--profile needs py-spy: .venv/bin/pip install py-spy")

    # Pin ourselves first: PostgreSQL and Node inherit CPU 0; the server gets CPU 1 via taskset.
    os.sched_setaffinity(0, {LOADGEN_CPU})
    idle = idle_check()
    if max(idle) > 10:
        log(f"WARNING: CPUs already {idle[0]:.0f}% / {idle[1]:.0f}% busy before the run; figures will be skewed")
    mach = machine()
    log(f"machine: {mach['nproc']} CPUs, {mach['cpu']}; server on CPU {SERVER_CPU}, "
        f"PostgreSQL + writer + subscribers on CPU {LOADGEN_CPU}")
    started = time.monotonic()
    cluster = load_pgcluster().PgCluster()
    cluster.init()
    cluster.start()
    tmp = Path(tempfile.mkdtemp(prefix="rc-bench-"))
    try:
        log(f"PostgreSQL on port {cluster.port} ({mach['postgres']})")
        postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
        results = asyncio.run(run(cluster.dsn, keys, args.seconds, args.profile, tmp, postmaster))
    finally:
        cluster.destroy()
        shutil.rmtree(tmp, ignore_errors=True)
    report = render(results, mach, args.seconds, idle)
    print()
    print(report)
    log(f"total time {time.monotonic() - started:.0f} s")
    if args.profile is None and not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "cdc_e2e.md").write_text(report, encoding="utf-8")
        plot(results, RESULTS / "cdc_e2e.png")
        log(f"wrote {RESULTS / 'cdc_e2e.md'} and {RESULTS / 'cdc_e2e.png'}")


if __name__ == "__main__":
    main()
