"""Fan-out benchmark: realtime-channels beside the raw ``websockets`` ceiling and the peers.

    scripts/bench [--quick] [--servers ours-v1,raw,...] [--scenarios fanout-1000,idle,...]

Each (server, scenario) pair gets a fresh server process pinned to one core (``taskset -c
--server-core``) and one run of the Node load generator ``bench/loadgen.mjs`` pinned to another
(``--gen-core``).  The generator measures latency from a timestamp inside each payload, reads the
server's CPU time and RSS from /proc/<pid>, and reports its own CPU so a saturated generator is
visible.  Results: ``bench/results/fanout.{md,json}`` and PNG plots (``--quick`` writes to
``bench/results/quick/``).

Scenarios: 1 room × 100 / 1,000 / 5,000 subscribers and 1,000 rooms × 5, stepped until
p99 > 100 ms or delivery < 99 %; 10,000 idle joined connections (RSS per connection, connect+join
rate, heartbeats flowing); presence with 1,000 members in one room; slow consumers (10 % of the
subscribers never read) for 60 s.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from common import free_port, pinned, stop_process

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PY = sys.executable
SECRET = "bench-secret-with-at-least-32-characters-long!"

# --- servers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """A server and the protocol the generator speaks to it."""

    name: str
    label: str
    protocol: str  # loadgen protocol: v1 | v2 | socketio
    command: Callable[[int], list[str]]
    env: Callable[[int], dict[str, str]] = lambda port: {}
    health: str | None = None  # HTTP path answering 200 when ready


def ours_env(port: int) -> dict[str, str]:
    return {
        "REALTIME_HOST": "127.0.0.1",
        "REALTIME_PORT": str(port),
        "REALTIME_JWT_SECRET": SECRET,
        "REALTIME_LOG_LEVEL": "warning",
        "REALTIME_JOIN_ERROR_BACKOFF_MS": "0",
        "REALTIME_CONNECT_ERROR_BACKOFF_MS": "0",
        # Supabase's per-tenant quotas (protocol.md §8) default to a small tenant's (200 users,
        # 100 joins/s, 100 events/s); a benchmark measures the server, so they are lifted the way
        # an operator raises them for a large tenant.
        "REALTIME_MAX_CONCURRENT_USERS": "1000000",
        "REALTIME_MAX_JOINS_PER_SECOND": "1000000",
        "REALTIME_MAX_EVENTS_PER_SECOND": "100000000",
        "REALTIME_MAX_BYTES_PER_SECOND": "100000000000",
        "REALTIME_MAX_PRESENCE_EVENTS_PER_SECOND": "1000000",
    }


def ours_cmd(port: int) -> list[str]:
    return [PY, "-m", "realtime_channels", "serve"]


VARIANTS = {
    v.name: v
    for v in [
        Variant("ours-v1", "realtime-channels V1", "v1", ours_cmd, ours_env, "/healthcheck"),
        Variant("ours-v2", "realtime-channels V2 (kind 3→4)", "v2", ours_cmd, ours_env, "/healthcheck"),
        # the upgrade path of the same run: WebSockets served by aiohttp's WebSocketResponse
        Variant("ours-v1-aiohttp", "realtime-channels V1, aiohttp WebSocket engine", "v1", ours_cmd,
                lambda port: {**ours_env(port), "REALTIME_WEBSOCKET_ENGINE": "aiohttp"}, "/healthcheck"),
        # the presence baseline of the same run: one presence_diff per change, as before coalescing
        Variant("ours-v2-each", "realtime-channels V2, one diff per change", "v2", ours_cmd,
                lambda port: {**ours_env(port), "REALTIME_PRESENCE_COALESCE_MS": "0"}, "/healthcheck"),
        Variant("raw", "raw websockets.broadcast (ceiling)", "v1",
                lambda p: [PY, str(BENCH / "peers" / "raw_websockets.py"), str(p)]),
        Variant("socketio", "python-socketio (aiohttp)", "socketio",
                lambda p: [PY, str(BENCH / "peers" / "socketio_server.py"), str(p)]),
        Variant("node", "Node ws raw broadcast", "v1",
                lambda p: ["node", str(BENCH / "peers" / "ws_server.mjs"), str(p)]),
    ]
}


@contextmanager
def running_server(v: Variant, core: int | None, log_dir: Path, extra_env: dict[str, str]) -> Iterator[tuple[int, int]]:
    """Start ``v`` on a free port, wait until it accepts, yield (port, pid), stop it."""
    port = free_port()
    env = {**os.environ, **v.env(port), **extra_env}
    log_path = log_dir / f"server-{v.name}-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(pinned(core, v.command(port)), env=env, stdout=log, stderr=subprocess.STDOUT,
                                cwd=ROOT)
    try:
        wait_ready(proc, port, v.health, log_path)
        yield port, proc.pid  # taskset execs the command: same pid
    finally:
        stop_process(proc)


def wait_ready(proc: subprocess.Popen[bytes], port: int, health: str | None, log_path: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}):\n{log_path.read_text()[-2000:]}")
        try:
            if health is None:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{health}", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)  # polling a condition (the port answers), bounded by the deadline
    raise RuntimeError(f"server on {port} did not become ready:\n{log_path.read_text()[-2000:]}")


# --- the generator ----------------------------------------------------------------------------


def run_generator(cfg: dict[str, Any], core: int | None, tag: str, timeout: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run loadgen.mjs with ``cfg``; print its progress; return (steps, result)."""
    cmd = pinned(core, ["node", str(BENCH / "loadgen.mjs"), json.dumps(cfg)])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=BENCH)
    steps: list[dict[str, Any]] = []
    result: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    for line in proc.stdout:
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            print(f"  [{tag}] {line.rstrip()}", flush=True)
            continue
        kind = msg.get("type")
        if kind == "progress":
            print(f"  [{tag}] {msg['msg']}", flush=True)
        elif kind == "step":
            steps.append(msg)
            print(f"  [{tag}] {describe_step(msg)}", flush=True)
        elif kind == "result":
            result = msg
        elif kind == "error":
            result = {"error": msg["error"]}
            print(f"  [{tag}] generator error: {msg['error'].splitlines()[0]}", flush=True)
        if time.monotonic() > deadline:
            proc.kill()
            result.setdefault("error", f"timed out after {timeout:.0f} s")
            break
    proc.wait()
    err = proc.stderr.read() if proc.stderr else ""
    if proc.returncode not in (0, None) and "error" not in result:
        result["error"] = f"generator exited {proc.returncode}: {err[-1500:]}"
    return steps, result


def describe_step(s: dict[str, Any]) -> str:
    lat = s["latencyMs"]
    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    cpu_us = s.get("serverCpuPerDeliveryUs")
    return (f"target {s['target']:>7,}/s → {s['deliveriesPerSecond']:>9,.0f}/s delivered "
            f"({s['delivery'] * 100:5.1f} %), p50 {fmt(lat['p50'])} p99 {fmt(lat['p99'])} max {fmt(lat['max'])} ms, "
            f"server CPU {s['serverCpu'] * 100:3.0f} % ({'-' if cpu_us is None else f'{cpu_us:.1f}'} µs/delivery), "
            f"RSS {s['serverRss'] / 2**20:.0f} MiB, generator CPU {s['genCpu'] * 100:3.0f} %, "
            f"waited for CPU: server {s['serverRunQueueWait'] * 100:.0f} % generator {s['genRunQueueWait'] * 100:.0f} %"
            f"{'' if s['ok'] else '  ← limit'}")


# --- scenarios ----------------------------------------------------------------------------------


@dataclass
class Plan:
    quick: bool
    slow_seconds: float
    measure_s: float = field(init=False)

    def __post_init__(self) -> None:
        self.measure_s = 1.5 if self.quick else 4.0

    def steps(self) -> list[int]:
        if self.quick:
            return [5_000, 20_000, 60_000]
        return [5_000, 10_000, 20_000, 30_000, 40_000, 50_000, 60_000, 80_000, 100_000, 120_000, 140_000,
                160_000, 180_000, 200_000, 240_000, 280_000, 320_000, 400_000]

    def timing(self) -> dict[str, Any]:
        return {"warmupS": 1.0 if self.quick else 3.0, "stepWarmupS": 0.5 if self.quick else 1.0,
                "measureS": self.measure_s, "graceS": 1.0 if self.quick else 2.0,
                "stopP99Ms": 100, "stopDelivery": 0.99}


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    kind: str  # loadgen mode
    params: Callable[[Plan], dict[str, Any]]
    variants: tuple[str, ...]
    server_env: dict[str, str] = field(default_factory=dict)


ALL = ("ours-v1", "ours-v2", "raw", "socketio", "node")


def fanout_params(rooms: int, subs: int, quick_subs: int | None = None, quick_rooms: int | None = None,
                  p99_limit_ms: float = 100) -> Callable[[Plan], dict[str, Any]]:
    def params(plan: Plan) -> dict[str, Any]:
        return {"rooms": quick_rooms if plan.quick and quick_rooms else rooms,
                "subs": quick_subs if plan.quick and quick_subs else subs,
                "payloadPad": 32, "steps": plan.steps(), **plan.timing(), "stopP99Ms": p99_limit_ms}
    return params


SCENARIOS = {
    s.name: s
    for s in [
        Scenario("fanout-100", "1 room × 100 subscribers", "fanout", fanout_params(1, 100), ALL),
        Scenario("fanout-1000", "1 room × 1,000 subscribers", "fanout", fanout_params(1, 1000, 300), ALL),
        # One message to 5,000 sockets is itself ~5,000 writes in the server and 5,000 reads in
        # the one generator process, so the last receiver's latency is near 100 ms at any rate:
        # this scenario steps until p99 > 500 ms instead.
        Scenario("fanout-5000", "1 room × 5,000 subscribers", "fanout", fanout_params(1, 5000, 500, p99_limit_ms=500), ALL),
        Scenario("rooms-1000x5", "1,000 rooms × 5 subscribers", "fanout", fanout_params(1000, 5, quick_rooms=100),
                 (*ALL, "ours-v1-aiohttp")),
        Scenario("idle-10000", "10,000 idle joined connections", "idle",
                 lambda p: {"conns": 1000 if p.quick else 10_000, "rooms": 100 if p.quick else 1000,
                            "holdS": 3 if p.quick else 30},
                 (*ALL, "ours-v1-aiohttp")),
        Scenario("presence-1000", "presence: 1,000 members join one room", "presence",
                 lambda p: {"members": 100 if p.quick else 1000, "syncTimeoutS": 60},
                 ("ours-v1", "ours-v2", "ours-v2-each")),
        Scenario("presence-10000", "presence: 10,000 members join one room", "presence",
                 lambda p: {"members": 1000 if p.quick else 10_000, "syncTimeoutS": 300},
                 ("ours-v2", "ours-v2-each")),
        Scenario("slow-consumers", "slow consumers: 10 % of 500 subscribers never read", "slow",
                 lambda p: {"subs": 200 if p.quick else 500, "slowFraction": 0.1, "rate": 50,
                            "payloadPad": 8000, "durationS": p.slow_seconds},
                 ("ours-v1",)),
    ]
}


def run_one(v: Variant, sc: Scenario, plan: Plan, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    tag = f"{v.name} {sc.name}"
    print(f"==> {sc.title} — {v.label}", flush=True)
    with running_server(v, args.server_core, log_dir, sc.server_env) as (port, pid):
        cfg = {"mode": sc.kind, "protocol": v.protocol, "host": "127.0.0.1", "port": port,
               "apikey": jwt.encode({"role": "anon", "exp": int(time.time()) + 86400}, SECRET, algorithm="HS256"),
               "serverPid": pid, "connectConcurrency": args.connect_concurrency, "heartbeatS": 25,
               **sc.params(plan)}
        t0 = time.monotonic()
        spy = (start_profiler(pid, out_dir=args.out_dir, tag=f"{v.name}-{sc.name}", native=args.profile_native)
               if (args.profile or args.profile_native) and v.name.startswith("ours") else None)
        steps, result = run_generator(cfg, args.gen_core, tag, timeout=1800)
        alive = Path(f"/proc/{pid}").exists()
        if spy is not None:
            stop_profiler(*spy)
    out = {"variant": v.name, "label": v.label, "scenario": sc.name, "params": {k: cfg[k] for k in cfg if k not in ("apikey", "serverPid", "port", "host")},
           "steps": steps, "result": result, "seconds": time.monotonic() - t0, "serverSurvived": alive}
    ok_steps = [s for s in steps if s["ok"]]
    if sc.kind == "fanout":
        out["maxSustained"] = max((s["deliveriesPerSecond"] for s in ok_steps), default=0.0)
    return out


# --- profiling (py-spy) -------------------------------------------------------------------------


def start_profiler(pid: int, out_dir: Path, tag: str, native: bool = False) -> tuple[subprocess.Popen[bytes], Path]:
    """py-spy on the server; ``native`` adds C frames (uvloop, the interpreter) and stops the
    process for each sample, so it perturbs the figures more."""
    spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    raw = out_dir / f"profile-{tag}.collapsed"
    how = ["--native"] if native else ["--nonblocking"]
    proc = subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", "250", *how, "--format", "raw",
                             "--output", str(raw)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, raw


def stop_profiler(proc: subprocess.Popen[bytes], raw: Path) -> None:
    """Stop py-spy (it writes on SIGINT) and summarise self time by leaf frame into a .md."""
    proc.send_signal(2)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return
    if not raw.exists():
        return
    leaf: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        leaf[frames[-1]] = leaf.get(frames[-1], 0) + n
        for f in set(frames):
            inclusive[f] = inclusive.get(f, 0) + n
    top = lambda d: sorted(d.items(), key=lambda kv: -kv[1])[:20]  # noqa: E731
    lines = [f"# py-spy profile: {raw.stem}", "", f"{total:,} samples at 250 Hz.", "",
             "## Self time (leaf frame)", "", "| % | frame |", "|---:|---|"]
    lines += [f"| {n / total * 100:.1f} | `{f}` |" for f, n in top(leaf)]
    lines += ["", "## Inclusive time", "", "| % | frame |", "|---:|---|"]
    lines += [f"| {n / total * 100:.1f} | `{f}` |" for f, n in top(inclusive)]
    raw.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"  profile written to {raw.with_suffix('.md')}", flush=True)


# --- report -----------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    mem = next(ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal"))
    versions = {}
    for dist in ("aiohttp", "websockets", "uvloop", "python-socketio", "python-engineio", "orjson"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return {"cpu": cpu, "cores": os.cpu_count(), "memGiB": round(int(mem) / 2**20, 1), "kernel": platform.release(),
            "python": platform.python_version(), "node": node, "versions": versions}


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def find(results: list[dict[str, Any]], variant: str, scenario: str) -> dict[str, Any] | None:
    return next((r for r in results if r["variant"] == variant and r["scenario"] == scenario), None)


def step_at(r: dict[str, Any] | None, target: int) -> dict[str, Any] | None:
    if r is None:
        return None
    return next((s for s in r["steps"] if s["target"] == target), None)


def f0(v: float | None) -> str:
    return "–" if v is None else f"{v:,.0f}"


def f1(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f}"


def fanout_table(results: list[dict[str, Any]], scenario: str) -> list[str]:
    rows = ["| server | max sustained deliveries/s | × raw | p50 / p99 / max ms at that rate | server CPU µs/delivery @60k | p99 ms @20k | generator CPU at max | server / generator waited for a CPU at max |",
            "|---|---:|---:|---|---:|---:|---:|---:|"]
    raw = find(results, "raw", scenario)
    raw_max = raw["maxSustained"] if raw else None
    for r in results:
        if r["scenario"] != scenario:
            continue
        ok = [s for s in r["steps"] if s["ok"]]
        best = max(ok, key=lambda s: s["deliveriesPerSecond"]) if ok else None
        at60, at20 = step_at(r, 60_000), step_at(r, 20_000)
        lat = best["latencyMs"] if best else None
        ratio = f"{r['maxSustained'] / raw_max:.2f}" if raw_max else "–"
        note = "" if not r["result"].get("error") else " (error)"
        lat_txt = "–" if lat is None else f"{lat['p50']:.1f} / {lat['p99']:.1f} / {lat['max']:.1f}"
        cpu60 = f1(at60["serverCpuPerDeliveryUs"]) if at60 and at60["ok"] else "–"
        p99_20 = f1(at20["latencyMs"]["p99"]) if at20 else "–"
        gen = "–" if best is None else f"{best['genCpu'] * 100:.0f} %"
        wait = "–" if best is None else f"{best['serverRunQueueWait'] * 100:.0f} % / {best['genRunQueueWait'] * 100:.0f} %"
        rows.append(f"| {r['label']}{note} | {f0(r['maxSustained'])} | {ratio} | {lat_txt} | {cpu60} | {p99_20} | {gen} | {wait} |")
    return rows


def targets(results: list[dict[str, Any]]) -> list[str]:
    lines: list[str] = []

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("**holds**" if ok else "**misses**")

    sc = "fanout-1000"
    ours, raw, sio, v2 = (find(results, n, sc) for n in ("ours-v1", "raw", "socketio", "ours-v2"))
    if ours and raw:
        r = ours["maxSustained"] / raw["maxSustained"] if raw["maxSustained"] else None
        lines.append(f"- 1×1,000 max sustained ≥ 0.8 × raw ceiling: {f0(ours['maxSustained'])} vs {f0(raw['maxSustained'])}/s "
                     f"= {f1(r and r * 100)} % → {verdict(None if r is None else r >= 0.8)}")
    if ours and sio:
        if sio["maxSustained"]:
            r = ours["maxSustained"] / sio["maxSustained"]
            lines.append(f"- ≥ 5 × python-socketio: {f0(ours['maxSustained'])} vs {f0(sio['maxSustained'])}/s = {r:.1f}× → {verdict(r >= 5)}")
        else:
            first = sio["steps"][0] if sio["steps"] else None
            lines.append(f"- ≥ 5 × python-socketio: python-socketio sustained no step (its first, {f0(first and first['target'])}/s, "
                         f"had p99 {f1(first and first['latencyMs']['p99'])} ms, delivery {f1(first and first['delivery'] * 100)} %) → **holds**")
    o60, r60 = step_at(ours, 60_000), step_at(raw, 60_000)
    if o60 and r60 and o60["serverCpuPerDeliveryUs"] and r60["serverCpuPerDeliveryUs"]:
        r = o60["serverCpuPerDeliveryUs"] / r60["serverCpuPerDeliveryUs"]
        lines.append(f"- server CPU per delivery at 60,000/s ≤ 1.25 × raw: {o60['serverCpuPerDeliveryUs']:.2f} vs "
                     f"{r60['serverCpuPerDeliveryUs']:.2f} µs = {r:.2f}× → {verdict(r <= 1.25)}")
    o20 = step_at(ours, 20_000)
    if o20:
        p99 = o20["latencyMs"]["p99"]
        lines.append(f"- p99 ≤ 20 ms at 20,000 deliveries/s (1×1,000): {f1(p99)} ms → {verdict(p99 is not None and p99 <= 20)}")
    rooms = find(results, "ours-v1", "rooms-1000x5")
    if rooms:
        lines.append(f"- 1,000 rooms × 5 ≥ 50,000 deliveries/s: {f0(rooms['maxSustained'])}/s → {verdict(rooms['maxSustained'] >= 50_000)}")
    idle = find(results, "ours-v1", "idle-10000")
    if idle and "bytesPerConn" in idle["result"]:
        res = idle["result"]
        kb = res["bytesPerConn"] / 1024
        lines.append(f"- idle joined connection ≤ 20 KB RSS: {kb:.1f} KB → {verdict(kb <= 20)}")
        hb = res["heartbeats"]
        lines.append(f"- {idle['params']['conns']:,} joined connections on one process with heartbeats flowing: "
                     f"{res['stillOpen']:,} open after the hold, {hb['replies']:,}/{hb['sent']:,} heartbeats answered "
                     f"→ {verdict(res['stillOpen'] == idle['params']['conns'] and hb['replies'] >= hb['sent'] > 0)}")
        c = res["connect"]
        rate, cap = c["perSecond"], 1000 / max(c["serverCpuPerConnMs"], 1e-6)
        lines.append(f"- ≥ 2,500 connect+join per second: measured {rate:,.0f}/s with the generator at {c['genCpu'] * 100:.0f} % CPU "
                     f"and the server at {c['serverCpu'] * 100:.0f} %; the server spends {c['serverCpuPerConnMs']:.3f} ms of CPU per "
                     f"connect+join, i.e. {cap:,.0f}/s on one core → {verdict(max(rate, cap) >= 2500)}")
    if ours and v2:
        a, b = ours["maxSustained"], v2["maxSustained"]
        if a:
            d = (b - a) / a
            lines.append(f"- V2 (kind 3→4) within 10 % of V1 (1×1,000 max sustained): {f0(b)} vs {f0(a)}/s = {d * 100:+.1f} % "
                         f"→ {verdict(d >= -0.10)}")
        c1, c2 = step_at(ours, 60_000), step_at(v2, 60_000)
        if c1 and c2 and c1["serverCpuPerDeliveryUs"] and c2["serverCpuPerDeliveryUs"]:
            d = c2["serverCpuPerDeliveryUs"] / c1["serverCpuPerDeliveryUs"] - 1
            lines.append(f"- V2 CPU per delivery at 60,000/s within 10 % of V1: {c2['serverCpuPerDeliveryUs']:.2f} vs "
                         f"{c1['serverCpuPerDeliveryUs']:.2f} µs = {d * 100:+.1f} % → {verdict(d <= 0.10)}")
    return lines


def report(results: list[dict[str, Any]], meta: dict[str, Any], out: Path) -> str:
    m = meta["machine"]
    lines = [
        "# Fan-out benchmark" + (" (quick smoke run — not a measurement)" if meta["quick"] else ""),
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memGiB']} GiB RAM, Linux {m['kernel']}; Python {m['python']}, "
        f"Node {m['node']}; aiohttp {m['versions']['aiohttp']}, websockets {m['versions']['websockets']}, "
        f"uvloop {m['versions']['uvloop']}, python-socketio {m['versions']['python-socketio']}.",
        f"Server pinned to core {meta['serverCore']}, load generator to core {meta['genCore']}. "
        f"Load average at start {meta['loadStart']}, at end {meta['loadEnd']}; run took {meta['minutes']:.0f} min"
        + (" — **measured under load** (other work was running on this machine)." if meta["underLoad"] else "."),
        "",
        "Max sustained = highest step with p99 ≤ 100 ms (1×5,000: ≤ 500 ms) and ≥ 99 % delivered (steps of "
        "5k, 10k, 20k, 30k, 40k, 50k, 60k, 80k, … deliveries/s; measured after a warm-up). Latency is publish→receive "
        "inside the one generator process. \"Waited for a CPU\" is the share of the step the process was "
        "runnable but not running (/proc/<pid>/schedstat): high values mean other work on the machine took the core.",
        "",
        "## Targets (ratios from this run)",
        "",
        *targets(results),
        "",
    ]
    for name in ("fanout-100", "fanout-1000", "fanout-5000", "rooms-1000x5"):
        if any(r["scenario"] == name for r in results):
            lines += [f"## {SCENARIOS[name].title}", "", *fanout_table(results, name), ""]
    idle = [r for r in results if r["scenario"] == "idle-10000" and "bytesPerConn" in r["result"]]
    if idle:
        lines += ["## Idle joined connections", "",
                  "| server | connections | RSS per connection | connect+join/s (generator CPU) | server CPU per connect+join → one core's capacity | heartbeats answered | server CPU while holding |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in idle:
            res = r["result"]
            lines.append(f"| {r['label']} | {res['stillOpen']:,} | {res['bytesPerConn'] / 1024:.1f} KB | "
                         f"{res['connect']['perSecond']:,.0f} ({res['connect']['genCpu'] * 100:.0f} %) | "
                         f"{res['connect']['serverCpuPerConnMs']:.3f} ms → {1000 / max(res['connect']['serverCpuPerConnMs'], 1e-6):,.0f}/s | "
                         f"{res['heartbeats']['replies']:,}/{res['heartbeats']['sent']:,} | "
                         f"{res['holdServerCpu'] * 100:.1f} % |")
        lines.append("")
    pres = [r for r in results if r["scenario"].startswith("presence-") and "timeToFullSyncS" in r["result"]]
    if pres:
        lines += ["## Presence: members join one room and track", "",
                  "| server | members | joined in | time to full sync at every member | presence_diff frames (per member) | diff bytes (per member) | largest presence_state |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in pres:
            res = r["result"]
            lines.append(f"| {r['label']} | {res['syncedMembers']:,}/{r['params']['members']:,} | {res['connect']['seconds']:.2f} s | "
                         f"{res['timeToFullSyncS']:.2f} s | {res['diffFrames']:,} ({res['diffFramesPerMember']:.0f}) | "
                         f"{res['diffBytes'] / 2**20:.1f} MiB ({res['diffBytesPerMember'] / 1024:.0f} KB) | {res['stateBytesMax'] / 1024:.0f} KB |")
        lines.append("")
    slow = [r for r in results if r["scenario"] == "slow-consumers" and "timeline" in r["result"]]
    for r in slow:
        res, p = r["result"], r["params"]
        lat = res["latencyMs"]
        lines += ["## Slow consumers", "",
                  f"{p['subs']} subscribers in one room, {res['slow']} of them stop reading after joining; "
                  f"{p['rate']} messages/s of ~{p['payloadPad'] // 1000} KB ({p['rate'] * p['payloadPad'] // 1000} KB/s per subscriber) for {p['durationS']:.0f} s "
                  f"({r['label']}, default REALTIME_OUTBOX_MAX_BYTES = 8 MiB).",
                  "",
                  f"- the others: {res['delivery'] * 100:.2f} % delivered, latency p50 {f1(lat['p50'])} / p99 {f1(lat['p99'])} / max {f1(lat['max'])} ms",
                  f"- slow consumers disconnected by the server: {res['slowDisconnected']}/{res['slow']} (close codes seen by the client: {res['slowCloseCodes']}); "
                  f"fast connections still open: {res['fastStillOpen']}/{res['fastExpected']}",
                  f"- server RSS: {res['rssBefore'] / 2**20:.0f} MiB before, peak {res['rssPeak'] / 2**20:.0f} MiB, "
                  f"{res['rssEnd'] / 2**20:.0f} MiB at the end",
                  "",
                  "| t (s) | others' p50 ms | p99 ms | delivered | server RSS MiB | server sockets+fds |",
                  "|---:|---:|---:|---:|---:|---:|"]
        tl = res["timeline"]
        every = max(1, len(tl) // 12)
        for pt in tl[::every]:
            lines.append(f"| {pt['t']:.0f} | {f1(pt['p50'])} | {f1(pt['p99'])} | {pt['delivery'] * 100:.1f} % | "
                         f"{pt['serverRss'] / 2**20:.0f} | {pt['serverFds']} |")
        lines.append("")
    errors = [r for r in results if r["result"].get("error") or not r["serverSurvived"]]
    if errors:
        lines += ["## Errors", ""]
        for r in errors:
            lines.append(f"- {r['variant']} {r['scenario']}: {r['result'].get('error', 'server died').splitlines()[0]}"
                         f"{'' if r['serverSurvived'] else ' (server process died)'}")
        lines.append("")
    lines += ["Plots: `fanout_latency.png` (deliveries/s vs p99 per server), `memory_per_connection.png`, "
              "`slow_consumers.png`. Raw figures: `fanout.json`.", ""]
    text = "\n".join(lines)
    (out / "fanout.md").write_text(text)
    return text


def plots(results: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in ("fanout-100", "fanout-1000", "fanout-5000", "rooms-1000x5") if any(r["scenario"] == n for r in results)]
    if names:
        fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4.2), squeeze=False)
        for ax, name in zip(axes[0], names):
            for r in results:
                if r["scenario"] != name or not r["steps"]:
                    continue
                xs = [s["deliveriesPerSecond"] / 1000 for s in r["steps"]]
                ys = [max(s["latencyMs"]["p99"] or 0.01, 0.01) for s in r["steps"]]
                line, = ax.plot(xs, ys, marker="o", label=r["label"])
                bad = [(x, y) for x, y, s in zip(xs, ys, r["steps"]) if not s["ok"]]
                if bad:
                    ax.plot(*zip(*bad), marker="x", markersize=10, linestyle="none", color=line.get_color())
            ax.axhline(100, color="grey", linestyle="--", linewidth=0.8)
            ax.set_yscale("log")
            ax.set_title(SCENARIOS[name].title)
            ax.set_xlabel("delivered messages/s (thousands)")
            ax.set_ylabel("p99 latency (ms)")
            ax.grid(True, which="both", alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "fanout_latency.png", dpi=110)
        plt.close(fig)
    idle = [r for r in results if r["scenario"] == "idle-10000" and "bytesPerConn" in r["result"]]
    if idle:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        labels = [r["label"] for r in idle]
        vals = [r["result"]["bytesPerConn"] / 1024 for r in idle]
        ax.barh(labels, vals, color="tab:blue")
        for i, v in enumerate(vals):
            ax.text(v, i, f" {v:.1f} KB", va="center", fontsize=8)
        ax.axvline(20, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xlabel(f"server RSS per idle joined connection (KB), {idle[0]['params']['conns']:,} connections")
        ax.invert_yaxis()
        fig.tight_layout()
        fig.savefig(out / "memory_per_connection.png", dpi=110)
        plt.close(fig)
    slow = [r for r in results if r["scenario"] == "slow-consumers" and "timeline" in r["result"]]
    if slow:
        tl = slow[0]["result"]["timeline"]
        fig, ax1 = plt.subplots(figsize=(7, 3.6))
        ts = [p["t"] for p in tl]
        ax1.plot(ts, [p["p99"] or 0 for p in tl], color="tab:red", label="others' p99 (ms)")
        ax1.set_xlabel("seconds")
        ax1.set_ylabel("p99 latency of readers (ms)", color="tab:red")
        ax2 = ax1.twinx()
        ax2.plot(ts, [p["serverRss"] / 2**20 for p in tl], color="tab:blue", label="server RSS (MiB)")
        ax2.set_ylabel("server RSS (MiB)", color="tab:blue")
        ax1.set_title("10 % of subscribers never read")
        fig.tight_layout()
        fig.savefig(out / "slow_consumers.png", dpi=110)
        plt.close(fig)


# --- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short smoke run with small numbers (not a measurement)")
    ap.add_argument("--servers", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma list of {', '.join(SCENARIOS)}")
    ap.add_argument("--slow-seconds", type=float, default=None, help="slow-consumer run length (default 60, quick 5)")
    ap.add_argument("--server-core", type=int, default=1)
    ap.add_argument("--gen-core", type=int, default=0)
    ap.add_argument("--no-pin", action="store_true", help="do not use taskset")
    ap.add_argument("--connect-concurrency", type=int, default=100)
    ap.add_argument("--merge", action="store_true",
                    help="keep the other pairs' results already in the output folder's fanout.json")
    ap.add_argument("--profile", action="store_true", help="record realtime-channels with py-spy (perturbs the figures)")
    ap.add_argument("--profile-native", action="store_true", help="as --profile, with C frames (perturbs them more)")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default bench/results, quick: bench/results/quick)")
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite fanout.md and the plots from the output folder's fanout.json")
    args = ap.parse_args(argv)
    if args.report_only:
        out = args.out or (BENCH / "results" / ("quick" if args.quick else ""))
        data = json.loads((out / "fanout.json").read_text())
        plots(data["results"], out)
        print(report(data["results"], data["meta"], out), flush=True)
        return 0
    if args.no_pin or shutil.which("taskset") is None:
        args.server_core = args.gen_core = None
    out: Path = args.out or (BENCH / "results" / ("quick" if args.quick else ""))
    out.mkdir(parents=True, exist_ok=True)
    args.out_dir = out
    log_dir = Path(tempfile.mkdtemp(prefix="bench-fanout-logs-"))  # server logs, not results
    # 10,000 connections need 10,000+ descriptors in the server and in the generator
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    plan = Plan(args.quick, args.slow_seconds if args.slow_seconds is not None else (5.0 if args.quick else 60.0))
    servers = [s for s in args.servers.split(",") if s]
    scenarios = [s for s in args.scenarios.split(",") if s]
    for name in servers:
        if name not in VARIANTS:
            ap.error(f"unknown server {name}")
    for name in scenarios:
        if name not in SCENARIOS:
            ap.error(f"unknown scenario {name}")
    meta: dict[str, Any] = {"quick": args.quick, "machine": machine_info(), "loadStart": loadavg(),
                            "serverCore": args.server_core, "genCore": args.gen_core, "started": time.time()}
    # the 1-minute load before the run starts; the end figure includes this run itself
    meta["underLoad"] = float(meta["loadStart"].split()[0]) > 0.5
    print(f"==> fan-out benchmark{' (quick)' if args.quick else ''}: load average {meta['loadStart']}; results in {out}, "
          f"server logs in {log_dir}", flush=True)
    results: list[dict[str, Any]] = []
    t0 = time.monotonic()
    pairs = [(VARIANTS[v], SCENARIOS[s]) for s in scenarios for v in SCENARIOS[s].variants if v in servers]
    for i, (v, sc) in enumerate(pairs, 1):
        print(f"--- [{i}/{len(pairs)}] elapsed {(time.monotonic() - t0) / 60:.1f} min, load average {loadavg()}", flush=True)
        try:
            results.append(run_one(v, sc, plan, args, log_dir))
        except RuntimeError as exc:
            print(f"  [{v.name} {sc.name}] failed: {exc}", flush=True)
            results.append({"variant": v.name, "label": v.label, "scenario": sc.name, "params": {}, "steps": [],
                            "result": {"error": str(exc)}, "serverSurvived": False, "maxSustained": 0.0})
    if args.merge and (out / "fanout.json").exists():
        old = json.loads((out / "fanout.json").read_text())
        fresh = {(r["variant"], r["scenario"]) for r in results}
        kept = [r for r in old["results"] if (r["variant"], r["scenario"]) not in fresh]
        results = sorted(kept + results, key=lambda r: (list(SCENARIOS).index(r["scenario"]), list(VARIANTS).index(r["variant"])))
        meta["merged"] = old["meta"].get("merged", []) + [{"loadStart": old["meta"]["loadStart"], "pairs": len(kept)}]
        meta["loadStart"] = f"{old['meta']['loadStart']} (re-run pairs: {meta['loadStart']})"
        meta["underLoad"] = float(meta["loadStart"].split()[0]) > 0.5 or old["meta"]["underLoad"]
    meta["loadEnd"] = loadavg()
    meta["minutes"] = (time.monotonic() - t0) / 60
    (out / "fanout.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    plots(results, out)
    print(report(results, meta, out), flush=True)
    return 0 if all(not r["result"].get("error") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
