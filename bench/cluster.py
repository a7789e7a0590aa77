"""Cross-node benchmark: publisher on node A, 1,000 subscribers on node B, vs one node.

    .venv/bin/python bench/cluster.py [--subs 1000] [--rates 20000,40000] [--measure-s 10]
                                      [--no-pin] [--server-core 1] [--gen-core 0] [--out DIR]

Scenarios, in one run, each with fresh server processes and the same load:

* ``single``        — one node on the default in-memory backbone: publisher and subscribers on it;
* ``single-redis``  — one node on Redis (every message makes the Redis round trip, no second node);
* ``cross``         — publisher on node A, every subscriber on node B, both on Redis.

The load generator is a small Node program (embedded below, run with ``node --input-type=module``
from ``bench/`` so it finds ``ws``): it opens the subscribers (V1 JSON), then publishes paced
messages carrying ``"ts"`` (``performance.now()``) and ``"seq"``; latency is publish→receive inside
the one generator process.  For each rate it measures, over the same window, the CPU time every
server process and ``redis-server`` used (``/proc/<pid>/stat``) and the deliveries counted.

Reported: server CPU per delivery summed over all nodes (goal: cross ≤ 1.3 × single), Redis CPU
per message, and latency p50/p99 (goal: cross adds ≤ 2 ms p50 and ≤ 10 ms p99 at 20,000
deliveries/s).  Results: ``<out>/cluster.json`` and ``<out>/cluster.md``.  The Node
generator of ``bench/fanout.py`` (``loadgen.mjs``) drives one server only, so it is not reused.
"""

from __future__ import annotations

import argparse
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
from pathlib import Path
from typing import Any

import jwt
from common import free_port, http_json, pinned, redis_server, stop_process

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
SECRET = "bench-secret-with-at-least-32-characters-long!"
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: a process runnable but waiting for a core more than this share of the time: contended run
MAX_WAIT = 0.10

GENERATOR = r"""
import { readFileSync } from 'node:fs'
import { performance } from 'node:perf_hooks'
import WebSocket from 'ws'

const cfg = JSON.parse(process.argv[1])
const emit = (o) => process.stdout.write(JSON.stringify(o) + '\n')
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

function cpu(pid) {
  const s = readFileSync(`/proc/${pid}/stat`, 'utf8')
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ')
  return (Number(f[11]) + Number(f[12])) / cfg.clkTck
}
function wait(pid) {  // time runnable but not running (schedstat, ns): other work took the core
  try { return Number(readFileSync(`/proc/${pid}/schedstat`, 'utf8').split(' ')[1]) / 1e9 } catch { return 0 }
}
function snapshot() {
  const out = { t: performance.now(), gen: process.cpuUsage(), genWait: wait(process.pid), procs: {} }
  for (const [name, pid] of Object.entries(cfg.pids)) out.procs[name] = { cpu: cpu(pid), wait: wait(pid) }
  return out
}

const TS = Buffer.from('"ts":')
const SEQ = Buffer.from('"seq":')
function num(buf, at) {
  let v = 0, i = at
  for (; i < buf.length && buf[i] >= 48 && buf[i] <= 57; i++) v = v * 10 + (buf[i] - 48)
  if (buf[i] === 46) {
    let s = 0.1
    for (i++; i < buf.length && buf[i] >= 48 && buf[i] <= 57; i++, s /= 10) v += (buf[i] - 48) * s
  }
  return v
}

const topic = cfg.topic
let window = null  // {lo, hi, lat: [], counted, ooo}
function open(url, onMsg) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false, skipUTF8Validation: true })
    ws.binaryType = 'nodebuffer'
    ws.on('open', () => ws.send(JSON.stringify({ topic, event: 'phx_join', ref: '1', join_ref: '1',
      payload: { config: { broadcast: { self: false, ack: false }, presence: { key: '', enabled: false }, private: false } } })))
    let joined = false
    ws.on('message', (data) => {
      if (!joined) {
        const m = JSON.parse(data.toString())
        if (m.event === 'phx_reply' && m.ref === '1') {
          if (m.payload.status !== 'ok') return reject(new Error(JSON.stringify(m.payload)))
          joined = true
          return resolve(ws)
        }
        return
      }
      onMsg(data)
    })
    ws.on('error', (e) => { if (!joined) reject(e) })
  })
}

class Sub {
  constructor() { this.last = -1 }
  onMsg(buf) {
    const i = buf.indexOf(TS)
    if (i < 0) return
    const ts = num(buf, i + TS.length)
    const seq = num(buf, buf.indexOf(SEQ, i) + SEQ.length)
    const w = window
    if (seq <= this.last && w) w.ooo++
    this.last = seq
    if (w && seq >= w.lo && seq < w.hi) { w.counted++; w.lat.push(performance.now() - ts) }
  }
}

const subs = []
let done = 0
const t0 = performance.now()
async function worker(list) {
  for (const s of list) { s.ws = await open(cfg.subUrl, (d) => s.onMsg(d)); done++ }
}
for (let i = 0; i < cfg.subs; i++) subs.push(new Sub())
const lanes = Array.from({ length: 50 }, (_, k) => subs.filter((_, i) => i % 50 === k))
const prog = setInterval(() => emit({ type: 'progress', msg: `joined ${done}/${cfg.subs}` }), 2000)
await Promise.all(lanes.map(worker))
clearInterval(prog)
const pub = await open(cfg.pubUrl, () => {})
emit({ type: 'progress', msg: `${cfg.subs} subscribers + 1 publisher joined in ${((performance.now() - t0) / 1000).toFixed(1)} s` })

let seq = 0
const pad = 'x'.repeat(cfg.pad)
function publish() {
  pub.send(`{"topic":"${topic}","event":"broadcast","payload":{"type":"broadcast","event":"m","payload":{"ts":${performance.now().toFixed(3)},"seq":${seq++},"pad":"${pad}"}},"ref":null,"join_ref":"1"}`)
}
function paced(rate, ms) {
  return new Promise((resolve) => {
    const start = performance.now()
    let j = 0
    const tick = () => {
      const now = performance.now()
      const due = Math.min(Math.floor(((now - start) / 1000) * rate) + 1, Math.ceil((ms / 1000) * rate))
      while (j < due) { publish(); j++ }
      if (now - start >= ms) return resolve(j)
      setTimeout(tick, Math.max(0, Math.min(5, start + (j / rate) * 1000 - now)))
    }
    tick()
  })
}
async function until(cond, ms) { const t = performance.now(); while (!cond() && performance.now() - t < ms) await sleep(5); return cond() }

for (const target of cfg.rates) {
  const rate = target / cfg.subs
  emit({ type: 'progress', msg: `${target} deliveries/s (${rate.toFixed(1)} msgs/s): warm-up ${cfg.warmupS} s` })
  await paced(rate, cfg.warmupS * 1000)
  await sleep(200)
  const w = { lo: seq, hi: Infinity, lat: [], counted: 0, ooo: 0 }
  window = w
  const a = snapshot()
  const sent = await paced(rate, cfg.measureS * 1000)
  w.hi = w.lo + sent
  const b = snapshot()
  await until(() => w.counted >= sent * cfg.subs, 5000)
  window = null
  const wall = (b.t - a.t) / 1000
  const lat = Float64Array.from(w.lat).sort()
  const q = (p) => (lat.length ? lat[Math.min(lat.length - 1, Math.floor(p * lat.length))] : null)
  const procs = {}
  for (const name of Object.keys(cfg.pids)) {
    procs[name] = { cpuSeconds: b.procs[name].cpu - a.procs[name].cpu, cpuShare: (b.procs[name].cpu - a.procs[name].cpu) / wall,
                    runQueueWait: (b.procs[name].wait - a.procs[name].wait) / wall }
  }
  const genCpu = ((b.gen.user - a.gen.user) + (b.gen.system - a.gen.system)) / 1e6 / wall
  const genWait = (b.genWait - a.genWait) / wall
  emit({ type: 'step', target, messages: sent, wall, genWait, expected: sent * cfg.subs, delivered: w.counted, outOfOrder: w.ooo,
         deliveriesPerSecond: w.counted / wall, latencyMs: { n: lat.length, p50: q(0.5), p90: q(0.9), p99: q(0.99), max: lat.length ? lat[lat.length - 1] : null },
         procs, genCpu, genWait })
  await sleep(300)
}
for (const s of subs) s.ws.terminate()
pub.terminate()
setTimeout(() => process.exit(0), 100).unref()
"""


def log(msg: str) -> None:
    print(f"[cluster-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


@contextmanager
def server_node(core: int | None, log_dir: Path, name: str, redis_url: str | None) -> Iterator[tuple[int, int]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REALTIME_")}
    env.update({
        "REALTIME_HOST": "127.0.0.1", "REALTIME_PORT": str(port), "REALTIME_JWT_SECRET": SECRET,
        "REALTIME_LOG_LEVEL": "warning", "REALTIME_IDLE_TIMEOUT_MS": "600000",
        # tenant quotas lifted as for a large tenant: the benchmark measures the server
        "REALTIME_MAX_CONCURRENT_USERS": "1000000", "REALTIME_MAX_JOINS_PER_SECOND": "1000000",
        "REALTIME_MAX_EVENTS_PER_SECOND": "100000000", "REALTIME_MAX_PRESENCE_EVENTS_PER_SECOND": "1000000",
        "REALTIME_MAX_BYTES_PER_SECOND": "100000000000",
    })
    if redis_url:
        env["REALTIME_REDIS_URL"] = redis_url
    log_path = log_dir / f"{name}-{port}.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(pinned(core, [sys.executable, "-m", "realtime_channels", "serve"]),
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: proc.poll() is None and http_json(f"http://127.0.0.1:{port}/health") is not None,
                 20, f"server {name}")
        yield port, proc.pid
    finally:
        stop_process(proc)
        text = log_path.read_text(errors="replace")
        if "Traceback" in text:
            log(f"WARNING: {name} logged a traceback:\n{text[-3000:]}")


def run_generator(cfg: dict[str, Any], core: int | None) -> list[dict[str, Any]]:
    node = shutil.which("node")
    if node is None:
        raise SystemExit("node is not installed")
    if not (BENCH / "node_modules" / "ws").is_dir():
        raise SystemExit("run `npm ci` in bench/ first (scripts/bench does it)")
    proc = subprocess.Popen(pinned(core, [node, "--input-type=module", "-e", GENERATOR, json.dumps(cfg)]),
                            cwd=BENCH, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    steps: list[dict[str, Any]] = []
    for line in proc.stdout:
        event = json.loads(line)
        if event["type"] == "progress":
            log(f"  {event['msg']}")
        elif event["type"] == "step":
            steps.append(event)
            lat = event["latencyMs"]
            log(f"  {event['target']:,}/s: delivered {event['delivered']:,}/{event['expected']:,}, "
                f"p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms, server CPU "
                + ", ".join(f"{k} {v['cpuShare'] * 100:.0f} %" for k, v in event["procs"].items()))
    if proc.wait() != 0:
        raise RuntimeError(f"generator exited with {proc.returncode}")
    return steps


def scenario(name: str, args: argparse.Namespace, log_dir: Path, tmp: Path) -> list[dict[str, Any]]:
    """Start the scenario's processes, run the generator, return its steps."""
    core = None if args.no_pin else args.server_core
    token = jwt.encode({"role": "anon", "exp": int(time.time()) + 86400}, SECRET, algorithm="HS256")
    with ExitStack() as stack:
        pids: dict[str, int] = {}
        redis_url = None
        if name != "single":
            redis_url, pids["redis"] = stack.enter_context(redis_server(tmp, core))
        port_a, pids["A"] = stack.enter_context(server_node(core, log_dir, f"{name}-A", redis_url))
        port_b = port_a
        if name == "cross":
            port_b, pids["B"] = stack.enter_context(server_node(core, log_dir, f"{name}-B", redis_url))
            wait_for(lambda: all((http_json(f"http://127.0.0.1:{p}/health") or {}).get("nodes") == 2
                                 for p in (port_a, port_b)), 15, "the two nodes to see each other")
        url = "ws://127.0.0.1:{}/socket/websocket?apikey=" + token + "&vsn=1.0.0"
        cfg = {
            "subUrl": url.format(port_b), "pubUrl": url.format(port_a), "topic": "realtime:bench-cluster",
            "subs": args.subs, "rates": args.rates, "warmupS": args.warmup_s, "measureS": args.measure_s,
            "pad": args.pad, "pids": pids, "clkTck": CLK_TCK,
        }
        return run_generator(cfg, None if args.no_pin else args.gen_core)


def summarize(step: dict[str, Any]) -> dict[str, Any]:
    procs = step["procs"]
    nodes = sum(v["cpuSeconds"] for k, v in procs.items() if k != "redis")
    redis = procs.get("redis", {}).get("cpuSeconds", 0.0)
    delivered = max(step["delivered"], 1)
    return {
        "target": step["target"],
        "deliveriesPerSecond": step["deliveriesPerSecond"],
        "delivery": step["delivered"] / max(step["expected"], 1),
        "outOfOrder": step["outOfOrder"],
        "p50": step["latencyMs"]["p50"], "p99": step["latencyMs"]["p99"], "max": step["latencyMs"]["max"],
        "nodeCpuUsPerDelivery": nodes / delivered * 1e6,
        "nodeCpuSeconds": nodes,
        "messages": step["messages"],
        "redisCpuUsPerMessage": redis / max(step["messages"], 1) * 1e6,
        "nodeCpuShare": {k: v["cpuShare"] for k, v in procs.items()},
        "runQueueWait": {k: v["runQueueWait"] for k, v in procs.items()},
        "genCpu": step["genCpu"],
        "genRunQueueWait": step["genWait"],
        # Latency means something only if nothing was starved of CPU by other work on the machine
        "valid": step["delivered"] >= 0.999 * step["expected"]
        and max([step["genWait"], *(v["runQueueWait"] for v in procs.values())]) <= MAX_WAIT,
    }


def machine() -> str:
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}"


def report(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace, meta: dict[str, Any]) -> str:
    lines = [
        "# Cross-node benchmark (bench/cluster.py)", "",
        f"Machine: {meta['machine']}. {meta['pinning']}",
        f"Load average at start {meta['load_start']}, at end {meta['load_end']}"
        + (" — **measured under load** (other work was running on this machine)." if meta["loaded"] else "."),
        "",
        f"Load: 1 publisher, {args.subs:,} subscribers on one topic (V1 JSON, {args.pad}-byte pad), "
        f"{args.warmup_s} s warm-up then {args.measure_s} s measured per rate. Latency is publish→receive in the "
        "generator. CPU is summed over the server processes (Redis shown apart).", "",
        "| scenario | round | target/s | uncontended | delivered | p50 ms | p99 ms | max ms | node CPU µs/delivery | × single | "
        "Redis CPU µs/msg | CPU per process (time runnable but waiting for a core) |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    base = {(s["round"], s["target"]): s for s in results.get("single", [])}
    for name, steps in results.items():
        for s in steps:
            b = base.get((s["round"], s["target"]))
            ratio = s["nodeCpuUsPerDelivery"] / b["nodeCpuUsPerDelivery"] if b else float("nan")
            shares = ", ".join(f"{k} {v * 100:.0f} % (waited {s['runQueueWait'][k] * 100:.0f} %)"
                               for k, v in s["nodeCpuShare"].items()) + f", generator {s['genCpu'] * 100:.0f} % (waited {s['genRunQueueWait'] * 100:.0f} %)"
            lines.append(
                f"| {name} | {s['round']} | {s['target']:,} | {'yes' if s['valid'] else 'no'} | {s['delivery'] * 100:.2f} % | {s['p50']:.2f} | {s['p99']:.2f} | "
                f"{s['max']:.1f} | {s['nodeCpuUsPerDelivery']:.2f} | {ratio:.2f} | "
                f"{s['redisCpuUsPerMessage']:.0f} | {shares} |")
    lines += ["", "## Goals", ""]
    for (rnd, target), b in base.items():
        cross = next((s for s in results.get("cross", []) if (s["round"], s["target"]) == (rnd, target)), None)
        if cross is None:
            continue
        ratio = cross["nodeCpuUsPerDelivery"] / b["nodeCpuUsPerDelivery"]
        d50, d99 = cross["p50"] - b["p50"], cross["p99"] - b["p99"]
        # what the second node and the Redis hop cost, per message (paid once per node, not per subscriber)
        extra = (cross["nodeCpuSeconds"] / cross["messages"] - b["nodeCpuSeconds"] / b["messages"]) * 1e6
        lines.append(f"- round {rnd}, {target:,} deliveries/s: cross-node overhead ≈ {extra:.0f} µs of node CPU "
                     f"per message (both nodes together, vs one node)")
        if not (b["valid"] and cross["valid"]):
            lines.append(f"- round {rnd}, {target:,} deliveries/s: CPU per delivery cross/single = {ratio:.2f}×; "
                         "latency **not measurable**: a process waited for a core > "
                         f"{MAX_WAIT * 100:.0f} % of the time or deliveries were missing (machine contended)")
            continue
        lines.append(f"- round {rnd}, {target:,} deliveries/s: CPU per delivery cross/single = {ratio:.2f}× (goal ≤ 1.3×) → "
                     f"**{'holds' if ratio <= 1.3 else 'misses'}**; added latency p50 {d50:+.2f} ms (goal ≤ 2), "
                     f"p99 {d99:+.2f} ms (goal ≤ 10) → **{'holds' if d50 <= 2 and d99 <= 10 else 'misses'}**")
    lines += ["", "Raw figures: `cluster.json`."]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subs", type=int, default=1000)
    p.add_argument("--rates", default="20000,40000", help="deliveries/s, comma-separated")
    p.add_argument("--warmup-s", type=float, default=3.0)
    p.add_argument("--measure-s", type=float, default=10.0)
    p.add_argument("--pad", type=int, default=64, help="payload padding bytes")
    p.add_argument("--scenarios", default="single,single-redis,cross")
    p.add_argument("--rounds", type=int, default=2, help="repetitions of the scenario sequence")
    p.add_argument("--server-core", type=int, default=1)
    p.add_argument("--gen-core", type=int, default=0)
    p.add_argument("--no-pin", action="store_true")
    p.add_argument("--out", default=str(BENCH / "results"))
    args = p.parse_args()
    args.rates = [int(r) for r in args.rates.split(",")]
    if not args.no_pin and shutil.which("taskset") is None:
        log("no taskset: running unpinned")
        args.no_pin = True
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    t0 = time.time()
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="rc-cluster-bench-") as tmp:
        # rounds alternate the scenarios, so a change in background load hits them alike
        for rnd in range(1, args.rounds + 1):
            for name in args.scenarios.split(","):
                log(f"round {rnd}/{args.rounds}: scenario {name}")
                steps = [summarize(s) | {"round": rnd} for s in scenario(name, args, Path(tmp), Path(tmp))]
                results.setdefault(name, []).extend(steps)
    load_end = os.getloadavg()
    meta = {
        "machine": machine(),
        "pinning": "Unpinned." if args.no_pin else
        f"Servers and redis-server pinned to core {args.server_core}, load generator to core {args.gen_core}.",
        "load_start": " ".join(f"{x:.2f}" for x in load_start),
        "load_end": " ".join(f"{x:.2f}" for x in load_end),
        # the generator and the servers account for about one core's worth; more means others ran
        "loaded": max(load_start[0], load_end[0]) > 1.5,
        "seconds": time.time() - t0,
    }
    (out / "cluster.json").write_text(json.dumps({"meta": meta, "args": vars(args), "results": results}, indent=2))
    text = report(results, args, meta)
    (out / "cluster.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
