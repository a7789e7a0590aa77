"""Supabase's own broadcast benchmark shape, on one box: ``--workers 2`` on Redis against one process.

    .venv/bin/python bench/supabase_shape.py [--quick] [--procs 2] [--steps 100,200,400]
                                             [--configs single,workers-redis,workers-redis-noresume]
                                             [--measure-s 6] [--render-only]

Supabase Realtime's published benchmark (docs/benchmarks.md cites it) has every virtual user
hold one WebSocket joined to an *echo* channel only it is in and a *room* of 6 users, both with
``broadcast: {self: true}``, and send ``--rate`` broadcasts per second to each.  Here the users
come from ``--procs`` Node processes (``bench/shape_loadgen.mjs``; a room's 6 users live in one
process, so sender and receivers share a clock) on the same 2-core box as the server.

For each configuration, in one run and each on fresh processes:

* ``single``        — ``realtime-channels serve``: one process, the in-memory backbone (the baseline);
* ``workers-redis`` — ``realtime-channels serve --workers 2 --redis-url …`` on a ``redis-server``
  started here on a free port: the supervisor and two workers sharing the port;
* ``workers-redis-noresume`` — the same with ``REALTIME_RESUME_WINDOW_S=0``: broadcasts are
  PUBLISHed as they are instead of going through the resume log's Lua script first.

the users ramp in steps (``--steps``; existing users stay connected and keep sending while the
next ones connect).  After each step's users have joined and ``--settle-s`` passed, a window of
``--measure-s`` seconds counts the messages sent, the deliveries they should make (1 on the echo
channel, the room's joined members on the room, self included) and those that arrived within
``--grace-s``, with their latencies (send → receipt at each receiver).  Over the same window the
driver reads /proc: CPU of the server (supervisor + workers, or the one process), of
``redis-server``, of the generator processes, of the whole box (/proc/stat), and how long each
group was runnable but waiting for a CPU (/proc/<pid>/schedstat); the server's processes log
their garbage collections over 2 ms (``GC_LOGGER``, off with ``--no-gc-log``) and the generators
their event-loop lag, so a latency tail can be told apart from a generator that fell behind.
A step fails at p99 > 100 ms, delivery < 99 %, a failed connection, or the generator sending
< 97 % of its target (then the generator, not the server, is the limit); a configuration's ramp
stops after ``--tolerate`` + 1 failing steps, and its result is the step below the first failure.

Results: ``bench/results/supabase_shape.{md,json,png}`` (``--quick``: ``bench/results/quick/``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    CLK_TCK,
    LIFTED_QUOTAS,
    LogHist,
    Worker,
    cpu_model,
    free_port,
    http_json,
    loadavg,
    log,
    pinned,
    process_tree,
    redis_server,
    sign_token,
    stop_process,
    tree_rss_mb,
)

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
SECRET = "shape-bench-secret-with-at-least-32-characters!"
P99_LIMIT_MS = 100.0
DELIVERY_FLOOR = 0.99
SEND_FLOOR = 0.97
#: a process group runnable but waiting for a CPU more than this share of its time: contended
HIGH_WAIT = 0.10
#: CPU of other work on the machine (cores) from which a step is called shared
FOREIGN_CPU = 0.2

FULL_STEPS = [100, 200, 300, 400, 500, 600, 700, 800, 1000, 1200, 1400, 1600, 2000, 2400]
QUICK_STEPS = [30, 60, 120]


@dataclass(frozen=True)
class Config:
    name: str
    label: str
    workers: int
    env: tuple[tuple[str, str], ...] = ()

    @property
    def redis(self) -> bool:
        return self.workers > 1


CONFIGS = {c.name: c for c in [
    Config("single", "one process, in-memory backbone (baseline)", 1),
    Config("workers-redis", "--workers 2 on Redis", 2),
    # broadcasts are PUBLISHed as they are, not stored for resume by a Lua script first
    Config("workers-redis-noresume", "--workers 2 on Redis, resume off (REALTIME_RESUME_WINDOW_S=0)", 2,
           (("REALTIME_RESUME_WINDOW_S", "0"),)),
]}


# --- processes ----------------------------------------------------------------------------------


#: Put on the server's PYTHONPATH as ``sitecustomize``: every Python process of the server notes
#: each garbage collection longer than 2 ms (its event loop stands still meanwhile) in a file of
#: its own: ``<epoch ms> <generation> <ms>`` a line.
GC_LOGGER = """\
import gc, os, time
_dir = os.environ.get("SHAPE_GC_DIR")
if _dir:
    _out = open(os.path.join(_dir, f"gc-{os.getpid()}.log"), "a", buffering=1)
    _t0 = [0.0]

    def _note(phase, info):
        if phase == "start":
            _t0[0] = time.perf_counter()
            return
        ms = (time.perf_counter() - _t0[0]) * 1000
        if ms > 2:
            _out.write(f"{time.time() * 1000:.0f} {info['generation']} {ms:.1f}\\n")

    gc.callbacks.append(_note)
"""


def gc_pauses(gc_dir: Path | None, lo_ms: float, hi_ms: float) -> dict[str, Any] | None:
    """The server's garbage collections over 2 ms that ended in [lo_ms, hi_ms] (epoch ms)."""
    if gc_dir is None:
        return None
    pauses: list[tuple[int, float]] = []
    for path in gc_dir.glob("gc-*.log"):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and lo_ms <= float(parts[0]) <= hi_ms:
                pauses.append((int(parts[1]), float(parts[2])))
    full = [ms for gen, ms in pauses if gen == 2]
    return {"count": len(pauses), "totalMs": sum(ms for _, ms in pauses), "maxMs": max((ms for _, ms in pauses), default=0.0),
            "gen2": len(full), "gen2MaxMs": max(full, default=0.0)}


@contextmanager
def realtime_server(conf: Config, redis_url: str | None, log_path: Path,
                    gc_dir: Path | None) -> Iterator[tuple[int, int]]:
    """``realtime-channels serve`` (with ``--workers`` for ``conf.workers`` > 1) from this checkout's
    ``src/`` on a free port; yields (port, pid of the process started) once ``/health`` reports
    ``ok`` and every worker hears the others.  With ``gc_dir``, its processes log long garbage
    collections there (``GC_LOGGER``)."""
    port = free_port()
    with checkout_server(port, log_path, workers=conf.workers, redis_url=redis_url, env_extra=dict(conf.env),
                         gc_dir=gc_dir) as pid:
        yield port, pid


@contextmanager
def checkout_server(port: int, log_path: Path, *, workers: int = 1, redis_url: str | None = None,
                    env_extra: dict[str, str] | None = None, gc_dir: Path | None = None,
                    core: int | None = None, secret: str = SECRET) -> Iterator[int]:
    """``realtime-channels serve`` of this checkout's ``src/`` on ``port`` (``--workers`` when > 1,
    pinned to ``core`` when given, tokens signed with ``secret``), tenant quotas lifted; yields its pid once ``/health`` says ok
    with every worker up, and stops it on exit.  With ``gc_dir``, its processes log garbage
    collections over 2 ms there (``GC_LOGGER``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REALTIME_")}
    path = [str(ROOT / "src")]  # the code of this checkout, whatever the venv has installed
    if gc_dir is not None:
        hook = gc_dir / "hook"
        hook.mkdir(parents=True, exist_ok=True)
        (hook / "sitecustomize.py").write_text(GC_LOGGER)
        path.append(str(hook))
        env["SHAPE_GC_DIR"] = str(gc_dir)
    env.update({
        "PYTHONPATH": os.pathsep.join(path),
        "REALTIME_HOST": "127.0.0.1", "REALTIME_PORT": str(port), "REALTIME_JWT_SECRET": secret,
        "REALTIME_LOG_LEVEL": "warning", "REALTIME_JOIN_ERROR_BACKOFF_MS": "0",
        "REALTIME_CONNECT_ERROR_BACKOFF_MS": "0", **LIFTED_QUOTAS, **(env_extra or {}),
    })
    cmd = [sys.executable, "-m", "realtime_channels", "serve"]
    if workers > 1:
        assert redis_url is not None
        cmd += ["--workers", str(workers), "--port", str(port), "--redis-url", redis_url]
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(pinned(core, cmd), env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited ({proc.returncode}):\n{log_path.read_text()[-2000:]}")
            h = http_json(f"http://127.0.0.1:{port}/health")
            if h is not None and h.get("status") == "ok" and h.get("nodes", 1) >= workers:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready (last /health {h}):\n{log_path.read_text()[-2000:]}")
            time.sleep(0.1)  # polling until /health answers as expected, bounded by the deadline
        yield proc.pid  # taskset execs the command: same pid
    finally:
        stop_process(proc)


# --- /proc sampling ---------------------------------------------------------------------------------


def cpu_and_wait(pids: set[int]) -> tuple[float, float]:
    """User+system CPU seconds and run-queue wait seconds (schedstat) summed over ``pids``."""
    cpu = wait = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            sched = Path(f"/proc/{pid}/schedstat").read_text().split()
            cpu += (int(fields[11]) + int(fields[12])) / CLK_TCK
            wait += int(sched[1]) / 1e9
    return cpu, wait


def box_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores, /proc/stat ``cpu`` line, irq included)."""
    with open("/proc/stat", encoding="utf-8") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) / CLK_TCK


@dataclass
class Snapshot:
    t: float
    wall_ms: float
    server: tuple[float, float]
    redis: tuple[float, float]
    gen: tuple[float, float]
    box: float


def snapshot(server_pid: int, redis_pid: int | None, gen_pids: list[int]) -> Snapshot:
    return Snapshot(time.monotonic(), time.time() * 1000, cpu_and_wait(process_tree(server_pid)),
                    cpu_and_wait({redis_pid}) if redis_pid else (0.0, 0.0), cpu_and_wait(set(gen_pids)),
                    box_busy_seconds())


def usage(a: Snapshot, b: Snapshot) -> dict[str, float]:
    """Cores used (CPU s per wall s) and run-queue wait (s per wall s) over [a, b]."""
    wall = b.t - a.t

    def d(x: float, y: float) -> float:
        return (y - x) / wall

    out = {"wall": wall,
           "serverCpu": d(a.server[0], b.server[0]), "serverWait": d(a.server[1], b.server[1]),
           "redisCpu": d(a.redis[0], b.redis[0]), "redisWait": d(a.redis[1], b.redis[1]),
           "genCpu": d(a.gen[0], b.gen[0]), "genWait": d(a.gen[1], b.gen[1]),
           "boxCpu": d(a.box, b.box)}
    out["otherCpu"] = max(0.0, out["boxCpu"] - out["serverCpu"] - out["redisCpu"] - out["genCpu"])
    return out


# --- one configuration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    steps: list[int]
    rate: float
    procs: int
    pad_bytes: int
    settle_s: float
    measure_s: float
    grace_s: float
    connect_concurrency: int
    gc_log: bool
    tolerate: int


def summarise(users: int, plan: Plan, reports: list[dict[str, Any]], use: dict[str, float],
              grown: list[dict[str, Any]], connect_s: float, rss_mb: float, gc: dict[str, Any] | None) -> dict[str, Any]:
    wall = plan.measure_s
    sent = [sum(r["sent"][k] for r in reports) for k in (0, 1)]
    expected = [sum(r["expected"][k] for r in reports) for k in (0, 1)]
    delivered = [sum(r["delivered"][k] for r in reports) for k in (0, 1)]
    hists = [LogHist(), LogHist()]
    for r in reports:
        for k in (0, 1):
            hists[k].merge(LogHist.from_json(r["hist"][k]))
    both = LogHist().merge(hists[0]).merge(hists[1])
    target = users * 2 * plan.rate
    row: dict[str, Any] = {
        "users": users, "activeUsers": sum(r["active"] for r in reports),
        "targetSentPerS": target, "sentPerS": sum(sent) / wall,
        "expectedPerS": sum(expected) / wall, "deliveredPerS": sum(delivered) / wall,
        "delivery": sum(delivered) / sum(expected) if sum(expected) else 0.0,
        "echo": {"sent": sent[0], "expected": expected[0], "delivered": delivered[0], "p99": hists[0].quantile(0.99)},
        "room": {"sent": sent[1], "expected": expected[1], "delivered": delivered[1], "p99": hists[1].quantile(0.99)},
        "latencyMs": {"n": both.n, "p50": both.quantile(0.5), "p95": both.quantile(0.95),
                      "p99": both.quantile(0.99), "max": both.max if both.n else None},
        **use,
        "serverRssMb": rss_mb,
        "serverGc": gc,
        "bytesPerDelivery": sum(r["bytes"] for r in reports) / sum(delivered) if sum(delivered) else None,
        "connectS": connect_s, "connectFailures": sum(g["failures"] for g in grown),
        "connectErrors": [e for g in grown for e in g["errors"]][:3],
        "skippedSends": sum(r["skipped"] for r in reports),
        "genLagMaxMs": max(r["lagMaxMs"] for r in reports),
        "genStalledMs": max(r["lagStalledMs"] for r in reports),
        "closedByServer": sum(r["closedByServer"] for r in reports),
        "channelErrors": sum(r["channelErrors"] for r in reports),
        "loadavg": loadavg(),
    }
    delivered_s = row["deliveredPerS"]
    row["serverCpuPerDeliveryUs"] = use["serverCpu"] / delivered_s * 1e6 if delivered_s else None
    row["serverRedisCpuPerDeliveryUs"] = (use["serverCpu"] + use["redisCpu"]) / delivered_s * 1e6 if delivered_s else None
    row["genShareOfBox"] = use["genCpu"] / use["boxCpu"] if use["boxCpu"] else None
    p99 = row["latencyMs"]["p99"]
    reason = None
    if row["connectFailures"]:
        reason = f"{row['connectFailures']} connections failed"
    elif row["sentPerS"] < SEND_FLOOR * target:
        reason = f"generator behind: sent {row['sentPerS']:,.0f} of {target:,.0f} msgs/s"
    elif p99 is None or p99 > P99_LIMIT_MS:
        reason = f"p99 {p99 or 0:.0f} ms > {P99_LIMIT_MS:.0f} ms"
    elif row["delivery"] < DELIVERY_FLOOR:
        reason = f"delivery {row['delivery'] * 100:.1f} % < {DELIVERY_FLOOR * 100:.0f} %"
    row["ok"] = reason is None
    row["reason"] = reason
    return row


def gc_text(gc: dict[str, Any] | None) -> str:
    if gc is None:
        return ""
    return (f"server GC pauses > 2 ms: {gc['count']} ({gc['totalMs']:.0f} ms in all, longest {gc['maxMs']:.0f} ms, "
            f"{gc['gen2']} full); ")


def describe(conf: Config, row: dict[str, Any]) -> str:
    lat = row["latencyMs"]
    f = f1
    return (f"[{conf.name}] {row['users']:>5} users: sent {row['sentPerS']:>8,.0f}/s, delivered "
            f"{row['deliveredPerS']:>8,.0f}/s ({row['delivery'] * 100:5.1f} %), p50 {f(lat['p50'])} p95 {f(lat['p95'])} "
            f"p99 {f(lat['p99'])} max {f(lat['max'])} ms; CPU cores: server {row['serverCpu']:.2f} redis "
            f"{row['redisCpu']:.2f} generator {row['genCpu']:.2f} box {row['boxCpu']:.2f} (others {row['otherCpu']:.2f}); "
            f"waited: server {row['serverWait']:.2f} gen {row['genWait']:.2f}; generator loop lag max "
            f"{row['genLagMaxMs']:.0f} ms; {gc_text(row['serverGc'])}joined in {row['connectS']:.1f} s"
            f"{'' if row['ok'] else '  ← ' + str(row['reason'])}")


async def run_config(conf: Config, plan: Plan, log_dir: Path, data_dir: Path) -> dict[str, Any]:
    log(f"==> {conf.name}: {conf.label}")
    rows: list[dict[str, Any]] = []
    error = None
    t_start = time.monotonic()
    with ExitStack() as stack:
        redis_url, redis_pid = (stack.enter_context(redis_server(data_dir)) if conf.redis else (None, None))
        gc_dir = data_dir / f"gc-{conf.name}" if plan.gc_log else None
        if gc_dir is not None:
            gc_dir.mkdir()
        port, server_pid = stack.enter_context(realtime_server(conf, redis_url, log_dir / f"server-{conf.name}.log",
                                                               gc_dir))
        tree = process_tree(server_pid)
        log(f"  server up on port {port}: {len(tree)} process(es) {sorted(tree)}"
            f"{f', redis-server pid {redis_pid}' if redis_pid else ''}")
        apikey = sign_token(SECRET, "anon", int(time.time()) + 86400)
        gens = [Worker(f"gen-{conf.name}-{i}", ["node", str(BENCH / "shape_loadgen.mjs"), json.dumps({
            "host": "127.0.0.1", "port": port, "apikey": apikey, "procs": plan.procs, "procIndex": i,
            "groupSize": 6, "ratePerChannel": plan.rate, "padBytes": plan.pad_bytes, "heartbeatS": 25,
            "connectConcurrency": plan.connect_concurrency})], log_dir) for i in range(plan.procs)]
        try:
            await asyncio.gather(*(g.start(60) for g in gens))
            gen_pids = [g.proc.pid for g in gens if g.proc is not None]
            for users in plan.steps:
                t0 = time.monotonic()
                for g in gens:
                    await g.command({"cmd": "grow", "users": users})
                grown = await asyncio.gather(*(g.expect("grown", 600) for g in gens))
                connect_s = time.monotonic() - t0
                await asyncio.sleep(plan.settle_s)
                a = snapshot(server_pid, redis_pid, gen_pids)
                for g in gens:
                    await g.command({"cmd": "measure", "seconds": plan.measure_s, "graceS": plan.grace_s})
                await asyncio.sleep(plan.measure_s)
                b = snapshot(server_pid, redis_pid, gen_pids)
                rss = tree_rss_mb(server_pid)
                reports = await asyncio.gather(*(g.expect("step", plan.grace_s + 60) for g in gens))
                gc = gc_pauses(gc_dir, a.wall_ms, b.wall_ms)
                row = summarise(users, plan, reports, usage(a, b), grown, connect_s, rss, gc)
                rows.append(row)
                log("  " + describe(conf, row))
                if sum(not r["ok"] for r in rows) > plan.tolerate:
                    break
            await asyncio.gather(*(g.stop(60) for g in gens))
        except Exception as exc:  # reported in the results: a crashed step still shows the ones before it
            error = f"{type(exc).__name__}: {exc}"
            log(f"  [{conf.name}] error: {error.splitlines()[0]}")
            for g in gens:
                await g.kill()
        alive = all(Path(f"/proc/{p}").exists() for p in tree)
    first_fail = next((i for i, r in enumerate(rows) if not r["ok"]), len(rows))
    best = rows[first_fail - 1] if first_fail else None  # the highest step below the first failing one
    best_any = max((r for r in rows if r["ok"]), key=lambda r: r["users"], default=None)
    return {"name": conf.name, "label": conf.label, "workers": conf.workers, "redis": conf.redis, "rows": rows,
            "best": best, "bestAny": best_any, "error": error, "serverSurvived": alive, "seconds": time.monotonic() - t_start}


# --- report -----------------------------------------------------------------------------------------


def f0(v: float | None) -> str:
    return "–" if v is None else f"{v:,.0f}"


def f1(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f}"


def f2(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


def pct(v: float | None) -> str:
    return "–" if v is None else f"{v * 100:.0f} %"


def gc_cell(gc: dict[str, Any] | None) -> str:
    return "–" if gc is None else f"{gc['count']} / {gc['maxMs']:.0f} ms"


def table(res: dict[str, Any]) -> list[str]:
    lines = ["| users | sent msgs/s | delivered msgs/s | delivery | p50 / p95 / p99 / max ms | echo p99 / room p99 ms | "
             "server CPU (cores) | Redis CPU | generator CPU (share of box) | box busy (others) | waited for a CPU: server / generator | "
             "server GC pauses > 2 ms: count / longest | |",
             "|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---|---|---|"]
    for r in res["rows"]:
        lat = r["latencyMs"]
        lines.append(
            f"| {r['users']:,} | {f0(r['sentPerS'])} | {f0(r['deliveredPerS'])} | {r['delivery'] * 100:.2f} % | "
            f"{f1(lat['p50'])} / {f1(lat['p95'])} / {f1(lat['p99'])} / {f1(lat['max'])} | "
            f"{f1(r['echo']['p99'])} / {f1(r['room']['p99'])} | {f2(r['serverCpu'])} | "
            f"{f2(r['redisCpu']) if res['redis'] else '–'} | {f2(r['genCpu'])} ({pct(r['genShareOfBox'])}) | "
            f"{f2(r['boxCpu'])} ({f2(r['otherCpu'])}) | {pct(r['serverWait'])} / {pct(r['genWait'])} | "
            f"{gc_cell(r['serverGc'])} | {'ok' if r['ok'] else r['reason']} |")
    return lines


def comparison(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each configuration against ``single`` (when both ran): capacity and CPU per delivery."""
    by = {r["name"]: r for r in results}
    single = by.get("single")
    out: list[dict[str, Any]] = []
    if single is None:
        return out
    s_rows = {r["users"]: r for r in single["rows"] if r["ok"]}
    for res in results:
        if res["name"] == "single":
            continue
        c: dict[str, Any] = {"name": res["name"], "label": res["label"]}
        sb, cb = single["best"], res["best"]
        if sb and cb:
            c["usersRatio"] = cb["users"] / sb["users"]
            c["deliveredRatio"] = cb["deliveredPerS"] / sb["deliveredPerS"]
        c["atCommonSteps"] = []
        for r in res["rows"]:
            s = s_rows.get(r["users"])
            if r["ok"] and s and s["serverCpuPerDeliveryUs"] and r["serverCpuPerDeliveryUs"]:
                c["atCommonSteps"].append({
                    "users": r["users"], "singleUs": s["serverCpuPerDeliveryUs"], "clusterUs": r["serverCpuPerDeliveryUs"],
                    "clusterWithRedisUs": r["serverRedisCpuPerDeliveryUs"],
                    "ratio": r["serverCpuPerDeliveryUs"] / s["serverCpuPerDeliveryUs"],
                    "ratioWithRedis": r["serverRedisCpuPerDeliveryUs"] / s["serverCpuPerDeliveryUs"],
                    "singleP99": s["latencyMs"]["p99"], "clusterP99": r["latencyMs"]["p99"]})
        out.append(c)
    return out


def render(results: list[dict[str, Any]], meta: dict[str, Any], cmp: list[dict[str, Any]], png: str) -> str:
    plan = meta["plan"]
    lines = [
        "# Supabase's broadcast benchmark shape on one 2-core box",
        "",
        f"`bench/supabase_shape.py{' --quick' if meta['quick'] else ''}` — {meta['date']}, commit `{meta['commit']}`.",
        "",
        f"Each virtual user: one WebSocket (protocol V1) joined to an echo channel only it is in and a room of 6 users, "
        f"both `broadcast: {{self: true}}`; {plan['rate']:g} broadcasts/s to each channel "
        f"({2 * plan['rate']:g} sent and {plan['rate'] * 7:g} received per user per second in full rooms), "
        f"payload `{{\"ts\":…,\"k\":…,\"pad\":\"{plan['pad_bytes']} × x\"}}` "
        f"({meta['frameBytes']} bytes a delivered frame on average). Users ramp in steps and stay; each step: join, "
        f"{plan['settle_s']:g} s settle, {plan['measure_s']:g} s measured window, up to {plan['grace_s']:g} s for late deliveries. "
        f"A step fails at p99 > {P99_LIMIT_MS:.0f} ms, delivery < {DELIVERY_FLOOR * 100:.0f} %, a failed connection, or the "
        f"generator sending < {SEND_FLOOR * 100:.0f} % of its target; a configuration's ramp stops after "
        f"{plan['tolerate'] + 1} failing steps, and its result is the step below the first failure. The generator is {plan['procs']} Node processes on the same box, "
        f"unpinned, like the server processes and `redis-server`.",
        "",
        f"Machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores, Linux {meta['machine']['kernel']}, "
        f"Python {meta['machine']['python']}, Node {meta['machine']['node']}, {meta['machine']['redis']}. "
        f"Load average before: {meta['loadBefore']}, after: {meta['loadAfter']}.",
        "",
        "CPU columns are cores (CPU seconds per second) over the measured window, from /proc: the server is the "
        "supervisor and its workers (or the one process); *box busy* is the whole machine (/proc/stat, interrupts "
        "included) and *others* what is left after server, Redis and generator — other work on the machine and "
        "the kernel's loopback network work. *Waited for a CPU*: time runnable but not running "
        "(/proc/<pid>/schedstat), summed over a group's processes, per second.",
        "",
    ]
    for res in results:
        lines += [f"## {res['label']} (`{res['name']}`)", ""]
        if res["error"]:
            lines += [f"Error: `{res['error'].splitlines()[0]}`", ""]
        lines += table(res) + [""]
        b = res["best"]
        if b:
            lines += [f"Highest step at p99 ≤ {P99_LIMIT_MS:.0f} ms and ≥ {DELIVERY_FLOOR * 100:.0f} % delivered: "
                      f"**{b['users']:,} users, {b['deliveredPerS']:,.0f} msgs/s delivered** "
                      f"({b['sentPerS']:,.0f} sent), p99 {f1(b['latencyMs']['p99'])} ms; the generator used "
                      f"{b['genCpu']:.2f} cores ({pct(b['genShareOfBox'])} of the busy box).", ""]
        else:
            lines += ["No step met the limits.", ""]
        ba = res["bestAny"]
        if ba and (not b or ba["users"] != b["users"]):
            lines += [f"(Past the first failing step, {ba['users']:,} users passed too: "
                      f"{ba['deliveredPerS']:,.0f} msgs/s delivered, p99 {f1(ba['latencyMs']['p99'])} ms.)", ""]
    if cmp:
        lines += ["## The backbone's cost", ""]
    for c in cmp:
        lines += [f"### `{c['name']}` against `single`", ""]
        if "usersRatio" in c:
            lines += [f"Result step, `{c['name']}` / `single`: **{c['usersRatio']:.2f}×** the users, "
                      f"{c['deliveredRatio']:.2f}× the delivered msgs/s.", ""]
        if c["atCommonSteps"]:
            lines += [f"| users | server CPU µs per delivery: single | {c['name']} | ratio | with Redis's CPU | ratio | p99 ms: single / {c['name']} |",
                      "|---:|---:|---:|---:|---:|---:|---|"]
            for x in c["atCommonSteps"]:
                lines.append(f"| {x['users']:,} | {x['singleUs']:.1f} | {x['clusterUs']:.1f} | {x['ratio']:.2f}× | "
                             f"{x['clusterWithRedisUs']:.1f} | {x['ratioWithRedis']:.2f}× | {f1(x['singleP99'])} / {f1(x['clusterP99'])} |")
            lines.append("")
    lines += ["## Contention", ""]
    steps = [(res["name"], r) for res in results for r in res["rows"]]
    foreign = [(n, r) for n, r in steps if r["otherCpu"] >= FOREIGN_CPU]
    waited = [(n, r) for n, r in steps if r["serverWait"] > HIGH_WAIT or r["genWait"] > HIGH_WAIT]
    if foreign:
        lines += [f"**The machine was shared**: in {len(foreign)} of {len(steps)} steps other work (not the server, "
                  f"Redis or the generator) used ≥ {FOREIGN_CPU:.2f} cores of the 2 — "
                  + ", ".join(f"`{n}` {r['users']:,} users ({r['otherCpu']:.2f})" for n, r in foreign)
                  + ". Those steps had less than 2 cores for the benchmark; their latencies are pessimistic and "
                  "the configuration that ran then is disadvantaged against the others.", ""]
    else:
        lines += [f"Other work on the machine used under {FOREIGN_CPU:.2f} cores in every step "
                  f"(at most {max((r['otherCpu'] for _, r in steps), default=0):.2f}).", ""]
    lines += [f"{len(waited)} of {len(steps)} steps had the server's or the generator's processes waiting for a CPU "
              f"more than {HIGH_WAIT * 100:.0f} % of the time (summed over a group's processes; server, Redis and "
              "generator share the 2 cores, so some waiting is expected as the box fills).", ""]
    lines += [f"![latency and throughput against users]({png})", ""]
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], rate: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(17, 5.2))
    colors = {"single": "tab:blue", "workers-redis": "tab:red", "workers-redis-noresume": "tab:orange"}
    sent_drawn = False
    for res in results:
        rows = [r for r in res["rows"] if r["latencyMs"]["n"]]
        if not rows:
            continue
        u = [r["users"] for r in rows]
        c = colors.get(res["name"], "tab:gray")
        for q, ls in (("p50", ":"), ("p95", "--"), ("p99", "-")):
            ax1.plot(u, [r["latencyMs"][q] for r in rows], ls, marker="o", ms=3, color=c, label=f"{res['name']} {q}")
        ax2.plot(u, [r["deliveredPerS"] for r in rows], "-", marker="o", ms=4, color=c, label=f"{res['name']} delivered")
        if not sent_drawn:
            ax2.plot(u, [r["sentPerS"] for r in rows], "--", color="gray", label="sent (all configurations)")
            sent_drawn = True
        ax3.plot(u, [r["serverCpu"] for r in rows], "-", marker="o", ms=3, color=c, label=f"{res['name']} server")
        if res["redis"]:
            ax3.plot(u, [r["redisCpu"] for r in rows], "-.", color=c, label=f"{res['name']} redis-server")
        ax3.plot(u, [r["genCpu"] for r in rows], ":", color=c, label=f"{res['name']} generator")
        ax3.plot(u, [r["otherCpu"] for r in rows], "x", color=c, label=f"{res['name']}: other work on the box")
    ax1.axhline(P99_LIMIT_MS, color="gray", lw=0.8)
    ax1.set_yscale("log")
    ax1.set_ylabel("latency, send → receipt (ms)")
    ax1.set_title("latency percentiles (line at 100 ms)")
    ax2.set_ylabel("messages/s")
    ax2.set_title("messages delivered per second")
    ax3.axhline(2, color="gray", lw=0.8)
    ax3.set_ylabel("cores")
    ax3.set_title("CPU (the box has 2 cores)")
    for ax in (ax1, ax2, ax3):
        ax.set_xlabel("virtual users")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Supabase's broadcast shape on one 2-core box: echo channel + room of 6 (self: true), "
                 f"{rate:g} msgs/s per channel per user")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine() -> dict[str, Any]:
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    redis = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "node": node,
            "redis": " ".join(redis[:3]) if redis else "redis-server ?"}


def commit() -> str:
    out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"], capture_output=True, text=True)
    return out.stdout.strip() + (" + uncommitted src changes" if dirty.stdout.strip() else "")


def write_report(out_dir: Path, meta: dict[str, Any], results: list[dict[str, Any]]) -> None:
    cmp = comparison(results)
    (out_dir / "supabase_shape.json").write_text(json.dumps({"meta": meta, "results": results, "comparison": cmp},
                                                            indent=1, default=str))
    plot(results, meta["plan"]["rate"], out_dir / "supabase_shape.png")
    md = render(results, meta, cmp, "supabase_shape.png")
    (out_dir / "supabase_shape.md").write_text(md)
    print(md, flush=True)
    log(f"written: {out_dir / 'supabase_shape.md'}, .json, .png")


async def main_async(args: argparse.Namespace) -> int:
    out_dir = Path(args.out) if args.out else BENCH / "results" / ("quick" if args.quick else "")
    if args.render_only:
        data = json.loads((out_dir / "supabase_shape.json").read_text())
        write_report(out_dir, data["meta"], data["results"])
        return 0
    if shutil.which("redis-server") is None and any(CONFIGS[c].redis for c in args.configs):
        raise SystemExit("redis-server is not installed")
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = [int(s) for s in args.steps.split(",")] if args.steps else (QUICK_STEPS if args.quick else FULL_STEPS)
    plan = Plan(steps=steps, rate=args.rate, procs=args.procs, pad_bytes=args.pad_bytes,
                settle_s=args.settle_s if args.settle_s is not None else (1.0 if args.quick else 3.0),
                measure_s=args.measure_s if args.measure_s is not None else (2.0 if args.quick else 6.0),
                grace_s=args.grace_s, connect_concurrency=args.connect_concurrency, gc_log=not args.no_gc_log,
                tolerate=args.tolerate)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "commit": commit(), "quick": args.quick,
            "machine": machine(), "plan": plan.__dict__, "loadBefore": loadavg()}
    log(f"supabase-shape: steps {steps} users, {plan.rate:g} msgs/s per channel, {plan.procs} generator processes, "
        f"load average {meta['loadBefore']}")
    results = []
    with tempfile.TemporaryDirectory(prefix="shape-bench-") as tmp:
        for name in args.configs:
            results.append(await run_config(CONFIGS[name], plan, Path(tmp), Path(tmp)))
            if args.keep_logs:
                for p in Path(tmp).glob("*"):
                    if p.is_file():
                        shutil.copy(p, out_dir / f"shape-{p.name}")
    meta["loadAfter"] = loadavg()
    sizes = [r["bytesPerDelivery"] for res in results for r in res["rows"] if r["bytesPerDelivery"]]
    meta["frameBytes"] = round(sum(sizes) / len(sizes)) if sizes else None
    write_report(out_dir, meta, results)
    return 0 if all(r["error"] is None and r["serverSurvived"] for r in results) else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short smoke run (small steps, short windows)")
    p.add_argument("--steps", help="comma-separated user counts (default: a ramp from 100 up)")
    p.add_argument("--configs", type=lambda s: s.split(","), default=list(CONFIGS),
                   help=f"which of {','.join(CONFIGS)}, in this order (default all)")
    p.add_argument("--procs", type=int, default=2, help="generator (Node) processes")
    p.add_argument("--rate", type=float, default=2.0, help="broadcasts per second per user per channel")
    p.add_argument("--pad-bytes", type=int, default=65,
                   help="filler characters in each payload (65: ~210-byte delivered frames, the size Supabase's "
                        "reported data rate works out to)")
    p.add_argument("--settle-s", type=float, default=None)
    p.add_argument("--measure-s", type=float, default=None)
    p.add_argument("--grace-s", type=float, default=2.0)
    p.add_argument("--connect-concurrency", type=int, default=32)
    p.add_argument("--tolerate", type=int, default=1,
                   help="failing steps a configuration may have before its ramp stops (default 1: a single "
                        "unlucky window does not end it; the headline is still the step below the first failure)")
    p.add_argument("--no-gc-log", action="store_true",
                   help="do not log the server's garbage-collection pauses (a gc.callbacks hook via sitecustomize)")
    p.add_argument("--keep-logs", action="store_true", help="copy server and generator logs next to the results")
    p.add_argument("--render-only", action="store_true",
                   help="re-draw the .md and .png from the results directory's supabase_shape.json, run nothing")
    p.add_argument("--out", help="results directory (default bench/results, or bench/results/quick with --quick)")
    args = p.parse_args()
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        p.error(f"unknown configs {unknown}; choose from {list(CONFIGS)}")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
