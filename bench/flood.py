"""Limits under a flood: can one abusive connection push the others' p99 over 50 ms?

    .venv/bin/python bench/flood.py [--profile] [--configs limited,unlimited] [--variants v2,v1,...]

For every (configuration, flood variant) a fresh ``python -m realtime_channels serve`` is started,
pinned to one core (``taskset -c --server-core``).  ``bench/flood_client.mjs`` then runs, pinned to
the other core:

* the *legit* process: ``--rooms`` rooms × ``--subs`` subscribers and one publisher per room
  sending ``--rate`` messages/s (realtime-js framing: V2, broadcasts as binary kind 3); every
  payload carries its send time, so each delivery is a latency sample.  A publisher whose channel
  is shut down backs off 1 s and rejoins, as a well-behaved client does;
* after ``--before`` seconds, one *abuser* connection (``nice 19`` so it does not starve the legit
  process on the shared client core) floods for ``--flood`` seconds as fast as its socket takes
  frames, rejoining at once whenever the server closes its channel:

  ``v2``       V2 binary kind-3 broadcasts to its own room (nobody else listening)
  ``v1``       V1 JSON broadcasts to its own room
  ``v2room``   V2 binary broadcasts into room 0, where 10 legit subscribers listen
  ``presence`` presence tracks (V2)
  ``join``     phx_join of the same topic again and again (V2)

Configurations (protocol.md §8 limits):

* ``supabase``  every Supabase default (100 events/s per tenant), legit traffic only: shows the
  legit load alone exceeds the default quota, which is why the two below raise it;
* ``limited``   Supabase defaults with the tenant events/s quota sized to the legit traffic
  (``--quota``, default 2000 for ~1,100 events/s of legit sends + deliveries);
* ``unlimited`` tenant-wide rate limits off (events/joins/presence/users 10⁹): what the
  per-connection protections alone give (channels per socket, 5 presence pushes per 30 s per
  channel, payload and frame size, the 8 MB outbox of REALTIME_OUTBOX_MAX_BYTES).

Latency is attributed to the phase in which the message was *sent*: before, during (flood
running) and after.  ``--profile`` re-runs the worst scenario under ``py-spy record`` and adds
what the server spends its time on.  Results: ``bench/results/flood.md`` and ``flood.png``.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import numpy as np
from common import ServerSampler, pinned, running_server

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
PY = sys.executable
SECRET = "flood-bench-secret-with-at-least-32-characters!"
GOAL_P99_MS = 50.0
BIG = "1000000000"

CONFIGS: dict[str, dict[str, str]] = {
    "supabase": {},
    "limited": {},  # REALTIME_MAX_EVENTS_PER_SECOND set from --quota
    "unlimited": {
        "REALTIME_MAX_EVENTS_PER_SECOND": BIG,
        "REALTIME_MAX_JOINS_PER_SECOND": BIG,
        "REALTIME_MAX_PRESENCE_EVENTS_PER_SECOND": BIG,
        "REALTIME_MAX_CONCURRENT_USERS": BIG,
    },
}
VARIANTS = ("v2", "v1", "v2room", "presence", "join")
VARIANT_LABELS = {
    "none": "no abuser",
    "v2": "V2 binary broadcast, own room",
    "v1": "V1 JSON broadcast, own room",
    "v2room": "V2 binary broadcast into a legit room",
    "presence": "presence track flood",
    "join": "phx_join flood (same topic)",
}
PHASES = ("before", "during", "after")


# --- processes ------------------------------------------------------------------------------


def node_proc(cfg: dict[str, Any], core: int | None, nice: int = 0) -> subprocess.Popen[str]:
    cmd = pinned(core, ["node", str(BENCH / "flood_client.mjs"), json.dumps(cfg)])
    if nice:
        cmd = ["nice", "-n", str(nice), *cmd]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=BENCH)


def read_until(proc: subprocess.Popen[str], kind: str, timeout: float) -> dict[str, Any]:
    """Next stdout JSON line of type ``kind`` (the clients print one JSON object per line)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            print("   client:", line.rstrip(), flush=True)
            continue
        if msg.get("type") == kind:
            return dict(msg)
        if time.monotonic() > deadline:
            break
    err = proc.stderr.read() if proc.stderr is not None else ""
    raise RuntimeError(f"client ended without {kind!r}: {err[-2000:]}")


# --- one scenario ---------------------------------------------------------------------------


@dataclass
class Scenario:
    config: str
    variant: str
    phases: dict[str, dict[str, Any]] = field(default_factory=dict)
    abuser: dict[str, Any] = field(default_factory=dict)
    timeline: list[tuple[float, float, float]] = field(default_factory=list)  # (t s, p99, max) per bucket
    flood_window: tuple[float, float] | None = None
    legit_events: list[dict[str, Any]] = field(default_factory=list)
    profile: list[str] = field(default_factory=list)
    spam: int = 0  # abuser messages received by legit subscribers (v2room)

    @property
    def key(self) -> str:
        return f"{self.config}/{self.variant}"


def pct(a: np.ndarray, q: float) -> float:
    return float(np.percentile(a, q)) if a.size else float("nan")


def analyse(sc: Scenario, data: dict[str, Any], sampler: ServerSampler, flood: tuple[float, float] | None,
            subs_per_room: int) -> None:
    t0, end = data["t0"], data["end"]
    smp = np.asarray(data["samples"], dtype=float).reshape(-1, 3)
    sends = np.asarray(data["sends"], dtype=float).reshape(-1, 2)
    skipped = np.asarray(data["skipped"], dtype=float).reshape(-1, 2)
    lag = np.asarray(data["lag"], dtype=float).reshape(-1, 2)
    events = data["events"]
    lo_f, hi_f = flood if flood is not None else (end, end)
    bounds = {"before": (t0, lo_f), "during": (lo_f, hi_f), "after": (hi_f, end)}
    for name, (lo, hi) in bounds.items():
        if hi <= lo:
            continue
        sel = smp[(smp[:, 0] >= lo) & (smp[:, 0] < hi)]
        lat = sel[:, 1]
        n_sent = int(((sends[:, 0] >= lo) & (sends[:, 0] < hi)).sum())
        n_skip = int(((skipped[:, 0] >= lo) & (skipped[:, 0] < hi)).sum()) if skipped.size else 0
        scheduled = (n_sent + n_skip) * subs_per_room
        ev = [e for e in events if lo <= e["t"] < hi]
        lg = lag[(lag[:, 0] >= lo) & (lag[:, 0] < hi), 1] if lag.size else np.zeros(0)
        srv = sampler.between(lo, hi)
        sc.phases[name] = {
            "seconds": (hi - lo) / 1000,
            "n": int(lat.size),
            "p50": pct(lat, 50),
            "p99": pct(lat, 99),
            "max": float(lat.max()) if lat.size else float("nan"),
            "delivered": lat.size / scheduled if scheduled else float("nan"),
            "skipped": n_skip,
            "pub_shutdowns": sum(1 for e in ev if e["role"] == "pub" and e["kind"] == "system"),
            "sub_shutdowns": sum(1 for e in ev if e["role"] == "sub" and e["kind"] in ("system", "phx_close")),
            "socket_closes": sum(1 for e in ev if e["kind"] == "socket_close"),
            "client_lag_p99": pct(lg, 99),
            "server_cpu": srv["cpu"],
            "server_wait": srv["wait"],
            "server_rss": srv["rss"],
        }
    sc.legit_events = events
    sc.flood_window = None if flood is None else ((lo_f - t0) / 1000, (hi_f - t0) / 1000)
    # timeline: p99 and max of the messages sent in each 250 ms bucket
    bucket = 250.0
    k = np.floor((smp[:, 0] - t0) / bucket)
    for b in np.unique(k):
        lat = smp[k == b, 1]
        sc.timeline.append((float(b * bucket / 1000), pct(lat, 99), float(lat.max())))
    sc.spam = int(data.get("spam", 0))


def run_scenario(args: argparse.Namespace, config: str, variant: str, log_dir: Path, token: str,
                 profile: bool = False) -> Scenario:
    sc = Scenario(config, variant)
    env = dict(CONFIGS[config])
    if config == "limited":
        env["REALTIME_MAX_EVENTS_PER_SECOND"] = str(args.quota)
    flood_s = 0.0 if variant == "none" else args.flood
    after_s = 0.0 if variant == "none" else args.after
    before_s = args.before if variant != "none" else args.before + args.flood
    duration = before_s + flood_s + after_s
    print(f"== {sc.key}: {VARIANT_LABELS[variant]} ({duration:.0f} s)", flush=True)
    with running_server(env, args.server_core, log_dir / f"server-{config}-{variant}.log", SECRET) as (port, pid):
        sampler = ServerSampler(pid)
        sampler.start()
        out = log_dir / f"legit-{config}-{variant}.json"
        legit = node_proc({"mode": "legit", "host": "127.0.0.1", "port": port, "apikey": token,
                           "rooms": args.rooms, "subsPerRoom": args.subs, "ratePerRoom": args.rate,
                           "durationS": duration, "outFile": str(out)}, args.client_core)
        ready = read_until(legit, "ready", 60)
        print(f"   {ready['connections']} legit connections joined; publishing "
              f"{args.rooms}×{args.rate} msg/s to {args.rooms}×{args.subs} subscribers", flush=True)
        flood = None
        spy = None
        if variant != "none":
            topic = "realtime:room-0" if variant == "v2room" else "realtime:flood-abuser"
            abuser = node_proc({"mode": "abuser", "variant": variant, "host": "127.0.0.1", "port": port,
                                "apikey": token, "topic": topic, "durationS": flood_s,
                                "startAt": ready["t"] + before_s * 1000}, args.client_core, nice=19)
            start = read_until(abuser, "start", 30)
            if profile:
                spy = start_profiler(pid, log_dir / f"profile-{config}-{variant}.raw", args.client_core)
            print(f"   abuser flooding ({variant}) for {flood_s:.0f} s", flush=True)
            result = read_until(abuser, "result", flood_s + 30)
            abuser.wait(10)
            if spy is not None:
                sc.profile = stop_profiler(*spy)
            sc.abuser = result
            flood = (float(start["t"]), float(result["t"]))
            print(f"   abuser: {result['frames']:,} frames ({result['framesPerSecond']:,.0f}/s), "
                  f"first system error {fmt_t(result['firstSystemError'])}, "
                  f"close {result['closeCode']} {fmt_t(result['closeAt'])}", flush=True)
        read_until(legit, "done", duration + 60)
        legit.wait(10)
        sampler.stop.set()
        sampler.join()
        data = json.loads(out.read_text())
    analyse(sc, data, sampler, flood, args.subs)
    for ph in PHASES:
        if ph in sc.phases:
            p = sc.phases[ph]
            print(f"   {ph:>6}: p50 {p['p50']:6.1f}  p99 {p['p99']:7.1f}  max {p['max']:7.1f} ms  "
                  f"delivered {p['delivered'] * 100:5.1f}%  legit shutdowns {p['pub_shutdowns']}  "
                  f"server cpu {p['server_cpu'] * 100:3.0f}%", flush=True)
    return sc


def fmt_t(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, dict):
        return f"{v['t'] / 1000:.2f} s ({v.get('text') or v.get('reason')})"
    return f"{v / 1000:.2f} s"


# --- profiling ----------------------------------------------------------------------------------


def start_profiler(pid: int, raw: Path, core: int | None) -> tuple[subprocess.Popen[bytes], Path]:
    spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    proc = subprocess.Popen(pinned(core, [spy, "record", "--pid", str(pid), "--rate", "200", "--nonblocking",
                                          "--format", "raw", "--output", str(raw)]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, raw


def _func(frame: str) -> str:
    """``read_loop (realtime_channels/server.py:314)`` → ``read_loop (server.py)``: self time
    is summed per function, not per line."""
    name, _, where = frame.partition(" (")
    if not where:
        return frame
    file = where.rsplit(":", 1)[0].rstrip(")").split("/")[-1]
    return f"{name} ({file})"


def stop_profiler(proc: subprocess.Popen[bytes], raw: Path) -> list[str]:
    """Stop py-spy (it writes on SIGINT); summarise self and inclusive time as markdown rows."""
    proc.send_signal(2)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return ["py-spy did not stop"]
    if not raw.exists():
        return ["py-spy wrote no profile (ptrace not permitted?)"]
    leaf: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_func(f) for f in stack.split(";")]
        leaf[frames[-1]] = leaf.get(frames[-1], 0) + n
        for f in set(frames):
            inclusive[f] = inclusive.get(f, 0) + n
    if not total:
        return ["py-spy recorded no samples"]

    def top(d: dict[str, int], k: int) -> list[tuple[str, int]]:
        return sorted(d.items(), key=lambda kv: -kv[1])[:k]

    rows = [f"{total:,} samples at 200 Hz (idle samples excluded by py-spy).", "",
            "| self % | function |", "|---:|---|"]
    rows += [f"| {n / total * 100:.1f} | `{f}` |" for f, n in top(leaf, 15)]
    boring = {"<module>", "_run_code", "_run_module_as_main", "main", "run_async", "cmd_serve", "Runner.run",
              "run_until_complete", "run_forever", "_run_once", "_run", "<module> (flood.py)"}
    rows += ["", "| inclusive % | function |", "|---:|---|"]
    rows += [f"| {n / total * 100:.1f} | `{f}` |" for f, n in top(inclusive, 40) if f.split(" (")[0] not in boring][:20]
    return rows


# --- report ---------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    return {"nproc": str(os.cpu_count()), "cpu": model, "python": platform.python_version(), "node": node,
            "kernel": platform.release()}


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def f1(v: float) -> str:
    return "—" if v != v else f"{v:.1f}"  # NaN → dash


def report(scs: list[Scenario], args: argparse.Namespace, mach: dict[str, str], loads: tuple[str, str],
           wall: float, profiled: Scenario | None) -> str:
    L: list[str] = []
    L += ["# Limits under a flood", "",
          f"Generated by `{' '.join(['.venv/bin/python', 'bench/flood.py', *sys.argv[1:]])}` "
          f"in {wall:.0f} s on {mach['nproc']} × {mach['cpu']} (Python {mach['python']}, Node {mach['node']}, "
          f"Linux {mach['kernel']}); load average {loads[0]} at start, {loads[1]} at the end.", "",
          f"Legit traffic: {args.rooms} rooms × {args.subs} subscribers + 1 publisher per room at {args.rate} msg/s "
          f"(V2, realtime-js framing) = {args.rooms * args.rate} sends/s and {args.rooms * args.rate * args.subs} "
          f"deliveries/s. Server pinned to core {args.server_core}, clients to core {args.client_core} "
          f"(the abuser at nice 19). Flood: {args.flood:.0f} s after {args.before:.0f} s of baseline, then "
          f"{args.after:.0f} s after. Latency = receive time − send time inside the payload, attributed to the "
          f"phase the message was sent in; *delivered* = deliveries ÷ (scheduled publishes × subscribers), so "
          f"publishes skipped while a publisher's channel was shut down count as lost.", "",
          f"Configurations: **supabase** = every Supabase default (100 events/s per tenant); **limited** = "
          f"Supabase defaults with `REALTIME_MAX_EVENTS_PER_SECOND={args.quota}`; **unlimited** = tenant rate "
          f"limits (events, joins, presence, users) at 10⁹, leaving the per-connection protections.", ""]
    configs = list(dict.fromkeys(sc.config for sc in scs if sc.variant != "none"))
    variants = list(dict.fromkeys(sc.variant for sc in scs if sc.variant != "none"))
    by = {(sc.config, sc.variant): sc for sc in scs}
    L += ["## Summary: legit p99 (ms) while the flood runs, and share of legit messages delivered", "",
          "| abuser | " + " | ".join(configs) + " |", "|---|" + "---:|" * len(configs)]
    for v in variants:
        cells = []
        for c in configs:
            sc = by.get((c, v))
            if sc is None or "during" not in sc.phases:
                cells.append("—")
                continue
            p = sc.phases["during"]
            mark = "**" if p["p99"] > GOAL_P99_MS else ""
            cells.append(f"{mark}{f1(p['p99'])}{mark} ({p['delivered'] * 100:.0f}%)")
        L.append(f"| {VARIANT_LABELS[v]} | " + " | ".join(cells) + " |")
    L += ["", "## Legit clients' latency (ms) by phase", "",
          "| config | abuser | phase | samples | p50 | p99 | max | delivered | legit pub shutdowns | "
          "server CPU | server run-queue wait | client loop lag p99 |",
          "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for sc in scs:
        for ph in PHASES:
            if ph not in sc.phases:
                continue
            p = sc.phases[ph]
            p99 = f1(p["p99"])
            if ph == "during" and p["p99"] > GOAL_P99_MS:
                p99 = f"**{p99}**"
            L.append(f"| {sc.config} | {sc.variant} | {ph} | {p['n']:,} | {f1(p['p50'])} | {p99} | {f1(p['max'])} | "
                     f"{p['delivered'] * 100:.1f}% | {p['pub_shutdowns']} | {p['server_cpu'] * 100:.0f}% | "
                     f"{p['server_wait'] * 100:.0f}% | {f1(p['client_lag_p99'])} |")
    L += ["", f"Goal: legit p99 ≤ {GOAL_P99_MS:.0f} ms during the flood (bold = missed). "
          "*server run-queue wait* is the share of wall time the server was runnable but another process "
          "had its core; *client loop lag* is the legit process's own event-loop delay (if it were large, "
          "the client, not the server, would be adding latency).", "",
          "## The abuser", "",
          "| config | abuser | frames sent | frames/s | first system error | abuser channel shutdowns | "
          "join errors | socket closed | legit rooms' spam received |",
          "|---|---|---:|---:|---|---:|---|---|---:|"]
    for sc in scs:
        a = sc.abuser
        if not a:
            continue
        sys_err = "; ".join(f"{k} ×{v}" for k, v in a["systemErrors"].items()) or "—"
        first = fmt_t(a["firstSystemError"])
        jerr = "; ".join(f"{k} ×{v}" for k, v in a["joinErrors"].items())
        if a["firstJoinError"]:
            jerr += f" (first reply at {a['firstJoinError']['t'] / 1000:.2f} s)"
        close = "no" if a["closeCode"] is None else f"{a['closeCode']} {a['closeReason']!r} at {a['closeAt'] / 1000:.2f} s"
        L.append(f"| {sc.config} | {sc.variant} | {a['frames']:,} | {a['framesPerSecond']:,.0f} | {first} | "
                 f"{sum(a['systemErrors'].values())} ({sys_err}) | {jerr or '—'} | {close} | "
                 f"{sc.spam:,} |")
    L += ["", "Times are from the abuser's first flood frame."]
    if profiled is not None:
        L += ["", f"## Profile: {profiled.key} during the flood (py-spy, re-run)", ""]
        L += [f"Re-run p99 during the flood under the profiler: {f1(profiled.phases['during']['p99'])} ms.", ""]
        L += profiled.profile
    return "\n".join(L) + "\n"


def plot(scs: list[Scenario], path: Path, configs: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [c for c in configs if any(sc.config == c and sc.variant != "none" for sc in scs)]
    if not shown:
        return
    fig, axes = plt.subplots(len(shown), 1, figsize=(10, 3.6 * len(shown)), sharex=True, squeeze=False)
    for ax, config in zip(axes[:, 0], shown, strict=True):
        for sc in scs:
            if sc.config != config or sc.variant == "none":
                continue
            t = [r[0] for r in sc.timeline]
            ax.plot(t, [max(r[1], 0.1) for r in sc.timeline], label=VARIANT_LABELS[sc.variant], lw=1.2)
            if sc.flood_window:
                ax.axvspan(*sc.flood_window, color="0.9", zorder=0)
        ax.axhline(GOAL_P99_MS, color="red", ls="--", lw=1, label=f"goal p99 {GOAL_P99_MS:.0f} ms")
        ax.set_yscale("log")
        ax.set_ylabel("legit p99 per 250 ms (ms)")
        ax.set_title(f"{config}: legit latency; grey = flood running")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("seconds since legit publishing started (by send time)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}", flush=True)


# --- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="supabase,limited,unlimited")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--rooms", type=int, default=5)
    ap.add_argument("--subs", type=int, default=10, help="subscribers per room")
    ap.add_argument("--rate", type=float, default=20, help="messages/s per room")
    ap.add_argument("--quota", type=int, default=2000, help="events/s of the 'limited' configuration")
    ap.add_argument("--before", type=float, default=2)
    ap.add_argument("--flood", type=float, default=8)
    ap.add_argument("--after", type=float, default=4)
    ap.add_argument("--server-core", type=int, default=1)
    ap.add_argument("--client-core", type=int, default=0)
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--profile", action="store_true", help="re-run the worst scenario under py-spy")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.no_pin or shutil.which("taskset") is None:
        args.server_core = args.client_core = None
    configs = [c for c in args.configs.split(",") if c]
    variants = [v for v in args.variants.split(",") if v]
    for c in configs:
        if c not in CONFIGS:
            ap.error(f"unknown config {c}")
    for v in variants:
        if v not in VARIANTS:
            ap.error(f"unknown variant {v}")
    if not (BENCH / "node_modules" / "ws").exists():
        ap.error("bench/node_modules/ws missing: run `npm ci` in bench/")
    token = jwt.encode({"role": "anon", "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256")
    mach = machine()
    load0 = load()
    print(f"machine: {mach['nproc']} × {mach['cpu']}; load {load0}", flush=True)
    t_start = time.monotonic()
    log_dir = Path(tempfile.mkdtemp(prefix="flood-"))
    print(f"server logs and raw samples in {log_dir}", flush=True)
    scs: list[Scenario] = []
    for config in configs:
        for variant in (["none"] if config == "supabase" else variants):
            scs.append(run_scenario(args, config, variant, log_dir, token))
    profiled = None
    if args.profile:
        flooded = [sc for sc in scs if "during" in sc.phases]
        if flooded:
            worst = max(flooded, key=lambda sc: sc.phases["during"]["p99"])
            print(f"profiling {worst.key} (worst p99 during the flood)", flush=True)
            profiled = run_scenario(args, worst.config, worst.variant, log_dir, token, profile=True)
    wall = time.monotonic() - t_start
    args.out.mkdir(parents=True, exist_ok=True)
    md = report(scs, args, mach, (load0, load()), wall, profiled)
    (args.out / "flood.md").write_text(md)
    plot(scs, args.out / "flood.png", configs)
    print(f"results written to {args.out / 'flood.md'} ({wall:.0f} s)", flush=True)
    failed = [sc.key for sc in scs if "during" in sc.phases and sc.phases["during"]["p99"] > GOAL_P99_MS]
    print("goal p99 ≤ 50 ms during the flood: " + ("met everywhere" if not failed else "missed in " + ", ".join(failed)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
