"""Soak: broadcast fan-out, presence churn and postgres_changes at half the measured capacity,
for ``--minutes``, watching the server's memory and the latency a legit client sees.

    .venv/bin/python bench/soak.py [--minutes 30] [--interval 10] [--capacity DELIVERIES_PER_S]

It starts its own PostgreSQL (tests/pgcluster.py) and, twice, a ``realtime-channels serve``
pinned to CPU 1: once to measure capacity (skipped with ``--capacity``), once for the soak.
The clients share CPU 0 with PostgreSQL, each kind in its own process:

* fan-out: ``--fanout-procs`` Node processes (``bench/loadgen.mjs`` soak mode, V1 and V2 in
  turn), ``--rooms`` rooms × ``--subs`` subscribers and one publisher per room in all;
* presence: ``--members`` members over ``--presence-rooms`` topics, each updating its tracked
  payload, leaving or rejoining (bench/clients.py ``presence``);
* postgres_changes: ``--cdc-subs`` subscribers on the RLS table ``soak_rows`` (half of them may see
  every team, half one team of two) and a writer committing INSERTs and UPDATEs;
* the probe: one legit socket broadcasting to itself 50 times a second (not niced; the others
  run at ``nice 10``), whose round trip is the latency a client sees.

The load is one *level* L: L fan-out deliveries/s, L × ``--cdc-per-10k`` / 10,000 row changes/s
and L × ``--presence-per-10k`` / 10,000 presence operations/s.  Capacity is the highest level of
a stepped run whose fan-out, postgres_changes and probe p99 stay ≤ 100 ms with ≥ 98 % delivered
in the step and the writer keeping its rate; the soak runs at half of it.  Every ``--interval``
seconds it records the server's RSS (its process tree, /proc/<pid>/status VmRSS), CPU, open
descriptors, each kind's delivered counts and p50/p99, and errors (the clients' and the server
log's), prints one line and keeps only that row, so memory stays bounded for any duration.
Results: ``bench/results/soak.{md,png,json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from realtime_channels.cdc import sql
from common import (
    CLK_TCK,
    LIFTED_QUOTAS,
    LogHist,
    Worker,
    core_ticks,
    busy_pct,
    load_pgcluster,
    loadavg,
    log,
    running_server,
    sign_token,
    tree_cpu_seconds,
    tree_rss_mb,
)
from soak_report import FOREIGN_LIMIT_PCT, flat, fmt, plot, progress, render

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
SECRET = "soak-bench-secret-with-at-least-32-characters!"
SERVER_CPU, CLIENT_CPU = 1, 0
TABLE = "soak_rows"
TEAMS = ["t0", "t1"]
LEVELS = [5_000, 10_000, 15_000, 20_000, 25_000, 30_000, 40_000, 50_000, 60_000, 80_000, 100_000, 120_000, 150_000]
P99_LIMIT_MS = 100.0
DELIVERY_FLOOR = 0.98

SETUP_SQL = f"""
create table {TABLE} (id bigserial primary key, team text not null, sent_ms float8 not null, body text not null);
alter table {TABLE} enable row level security;
create policy team_member on {TABLE} for select to authenticated
    using (team = any (array(select jsonb_array_elements_text(auth.jwt() -> 'teams'))));
grant select on {TABLE} to anon, authenticated, service_role;
create publication supabase_realtime for table {TABLE};
"""


@dataclass
class Fleet:
    """The client processes of one server, and what the orchestrator needs to read them."""

    fanout: list[Worker]
    presence: Worker
    cdc: Worker
    writer: Worker
    probe: Worker
    visible: dict[str, int]  # team → subscribers that may see its rows
    args: argparse.Namespace

    @property
    def all(self) -> list[Worker]:
        return [*self.fanout, self.presence, self.cdc, self.writer, self.probe]

    async def set_level(self, level: float) -> None:
        a = self.args
        for w in self.fanout:
            await w.command({"cmd": "rate", "value": level / len(self.fanout)})
        await self.writer.command({"cmd": "rate", "value": level * a.cdc_per_10k / 10_000})
        await self.presence.command({"cmd": "rate", "value": level * a.presence_per_10k / 10_000})

    async def report(self) -> dict[str, Any]:
        reps = await asyncio.gather(*(w.report() for w in self.all))
        n = len(self.fanout)
        fan, (pres, cdc, wri, probe) = reps[:n], reps[n:]
        fan_hist = LogHist()
        for r in fan:
            fan_hist.merge(LogHist.from_json(r["hist"]))
        committed = {t: wri["counts"].get(f"team:{t}", 0) for t in TEAMS}
        errors: dict[str, int] = {}
        for r in (pres, cdc, wri, probe):
            for k, v in r["errors"].items():
                errors[k] = errors.get(k, 0) + v
        return {
            "fanout": {"sent": sum(r["sent"] for r in fan), "expected": sum(r["expected"] for r in fan),
                       "received": sum(r["received"] for r in fan), "hist": fan_hist,
                       "closed": sum(r["closedByServer"] for r in fan),
                       "channel_errors": sum(r["channelErrors"] for r in fan),
                       "open": sum(r["open"] for r in fan)},
            "presence": {**pres["counts"], "hist": LogHist.from_json(pres["hist"])},
            "cdc": {"received": cdc["counts"].get("received", 0), "hist": LogHist.from_json(cdc["hist"]),
                    "committed": sum(committed.values()),
                    "expected": sum(committed[t] * self.visible[t] for t in TEAMS),
                    "write_hist": LogHist.from_json(wri["hist"])},
            "probe": {"sent": probe["counts"].get("sent", 0), "received": probe["counts"].get("received", 0),
                      "hist": LogHist.from_json(probe["hist"])},
            "errors": errors,
        }

    async def stop(self) -> None:
        for w in self.all:
            with contextlib.suppress(Exception):
                await w.stop(30)
            await w.kill()


async def start_fleet(args: argparse.Namespace, port: int, dsn: str, log_dir: Path) -> Fleet:
    exp = int(time.time()) + 24 * 3600 + args.minutes * 60
    anon = sign_token(SECRET, "anon", exp)
    per = max(1, args.rooms // args.fanout_procs)
    fanout = []
    for i in range(args.fanout_procs):
        cfg = {"mode": "soak", "protocol": "v1" if i % 2 == 0 else "v2", "host": "127.0.0.1", "port": port,
               "apikey": anon, "rooms": per, "roomBase": i * per, "subs": args.subs, "payloadPad": 64,
               "connectConcurrency": 20, "heartbeatS": 25}
        fanout.append(Worker(f"fanout-{i}", ["node", str(BENCH / "loadgen.mjs"), json.dumps(cfg)], log_dir,
                             core=CLIENT_CPU, nice=10))
    # half the postgres_changes subscribers may see both teams, half only t0; V1 and V2 in turn
    wide = sign_token(SECRET, "authenticated", exp, sub="soak-wide", teams=TEAMS)
    narrow = sign_token(SECRET, "authenticated", exp, sub="soak-narrow", teams=TEAMS[:1])
    subs = [{"token": wide if i % 2 == 0 else narrow, "vsn": "2.0.0" if i % 4 < 2 else "1.0.0"}
            for i in range(args.cdc_subs)]
    visible = {"t0": len(subs), "t1": sum(1 for s in subs if s["token"] == wide)}
    fleet = Fleet(
        fanout=fanout,
        presence=Worker.python("presence", {"port": port, "token": anon, "members": args.members,
                                            "rooms": args.presence_rooms}, log_dir, core=CLIENT_CPU, nice=10),
        cdc=Worker.python("cdc", {"port": port, "subs": subs, "table": TABLE}, log_dir, core=CLIENT_CPU, nice=10),
        writer=Worker.python("writer", {"dsn": dsn, "table": TABLE, "teams": TEAMS}, log_dir, core=CLIENT_CPU),
        probe=Worker.python("probe", {"port": port, "token": anon, "rate": args.probe_rate,
                                      "topic": "realtime:soak-probe"}, log_dir, core=CLIENT_CPU),
        visible=visible, args=args,
    )
    for w in fleet.all:
        info = await w.start(180)
        extra = {k: v for k, v in info.items() if k not in ("type", "connect")}
        log(f"  {w.name} ready {extra if extra else ''}")
    return fleet


def server_env(dsn: str, slot: str) -> dict[str, str]:
    return {**LIFTED_QUOTAS, "REALTIME_DATABASE_URL": dsn, "REALTIME_SLOT_NAME": slot,
            "REALTIME_PUBLICATION": "supabase_realtime"}


class ServerWatch:
    """Per sample: the server's RSS, CPU, descriptors and new error lines in its log, both CPUs'
    busy share, the CPU that processes outside the benchmark took (the machine may be shared:
    its user+system time minus this process tree's and PostgreSQL's, % of one core), and the
    RSS of the benchmark's own processes (this one and the clients), which must stay flat too."""

    def __init__(self, pid: int, log_path: Path, postmaster: int) -> None:
        self.pid, self.log_path, self.offset, self.postmaster = pid, log_path, 0, postmaster
        self.t, self.cpu, self.own = time.monotonic(), tree_cpu_seconds(pid), self.own_cpu()
        self.cores = core_ticks(CLIENT_CPU), core_ticks(SERVER_CPU)

    def own_cpu(self) -> float:
        return tree_cpu_seconds(os.getpid(), self.postmaster)

    def sample(self) -> dict[str, Any]:
        now, cpu, own = time.monotonic(), tree_cpu_seconds(self.pid), self.own_cpu()
        cores = core_ticks(CLIENT_CPU), core_ticks(SERVER_CPU)
        dt = max(now - self.t, 1e-6)
        used = sum(b[2] - a[2] for a, b in zip(self.cores, cores, strict=True)) / CLK_TCK
        rss = tree_rss_mb(self.pid)
        out = {"rss_mb": rss, "clients_rss_mb": tree_rss_mb(os.getpid()) - rss, "cpu_pct": 100 * (cpu - self.cpu) / dt,
               "core0_pct": busy_pct(self.cores[0], cores[0]), "core1_pct": busy_pct(self.cores[1], cores[1]),
               "foreign_pct": max(0.0, 100 * (used - (own - self.own)) / dt),
               "fds": len(os.listdir(f"/proc/{self.pid}/fd")), "log_errors": self.new_log_errors()}
        self.t, self.cpu, self.own, self.cores = now, cpu, own, cores
        return out

    def new_log_errors(self) -> int:
        with open(self.log_path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        cut = chunk.rfind(b"\n") + 1
        self.offset += cut
        return sum(1 for line in chunk[:cut].splitlines()
                   if b"Traceback" in line or b"ERROR" in line or b"CRITICAL" in line)


def verdict_step(row: dict[str, Any], target_writes: float, dt: float) -> str | None:
    """Why a capacity step fails, or None when it holds."""
    checks = [
        ("fan-out p99", row["fanout_p99"]), ("postgres_changes p99", row["cdc_p99"]), ("probe p99", row["probe_p99"])]
    for name, v in checks:
        if v is None or v > P99_LIMIT_MS:
            return f"{name} {fmt(v)} ms"
    if row["fanout_received"] < DELIVERY_FLOOR * row["fanout_expected"]:
        return f"fan-out delivered {row['fanout_received'] / max(row['fanout_expected'], 1):.1%}"
    if row["cdc_received"] < DELIVERY_FLOOR * row["cdc_expected"]:
        return f"postgres_changes delivered {row['cdc_received'] / max(row['cdc_expected'], 1):.1%}"
    if row["cdc_committed"] < 0.95 * target_writes * dt:
        return f"writer committed {row['cdc_committed'] / dt:,.0f}/s of {target_writes:,.0f}/s"
    if row["errors"]:
        return f"errors {row['error_kinds']}"
    return None


async def measure_capacity(args: argparse.Namespace, dsn: str, log_dir: Path,
                           postmaster: int) -> tuple[float, list[dict[str, Any]]]:
    log("== capacity: stepping the load level until a p99 passes 100 ms or delivery drops")
    steps: list[dict[str, Any]] = []
    best = 0.0
    with running_server(server_env(dsn, "soak_capacity"), SERVER_CPU, log_dir / "server-capacity.log",
                        SECRET) as (port, pid):
        fleet = await start_fleet(args, port, dsn, log_dir)
        try:
            watch = ServerWatch(pid, log_dir / "server-capacity.log", postmaster)
            await fleet.set_level(LEVELS[0])
            await asyncio.sleep(args.step_settle * 3)  # the fleet's joins settle before the first step
            for level in LEVELS:
                for attempt in (1, 2):
                    row = await capacity_step(args, fleet, watch, level)
                    progress(f"  level {level:>7,}:", row)
                    if not row["fail"] or row["foreign_pct"] <= FOREIGN_LIMIT_PCT or attempt == 2:
                        break
                    log(f"  other processes took {row['foreign_pct']:.0f}% of a core: level {level:,} again")
                steps.append(row)
                if row["fail"]:
                    log(f"  level {level:,} does not hold: {row['fail']}")
                    break
                best = level
        finally:
            await fleet.stop()
    return best, steps


async def capacity_step(args: argparse.Namespace, fleet: Fleet, watch: ServerWatch, level: float) -> dict[str, Any]:
    await fleet.set_level(level)
    await asyncio.sleep(args.step_settle)  # let the new rate settle: not measured
    await fleet.report()
    watch.sample()
    t0 = time.monotonic()
    await asyncio.sleep(args.step_seconds)  # the measured window of this step
    dt = time.monotonic() - t0
    row = {"level": level, **flat(await fleet.report(), watch.sample(), 0, dt)}
    row["fail"] = verdict_step(row, level * args.cdc_per_10k / 10_000, dt)
    return row


async def soak(args: argparse.Namespace, level: float, dsn: str, log_dir: Path, postmaster: int) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    log_path = log_dir / "server-soak.log"
    totals = {"fanout_expected": 0, "fanout_received": 0, "cdc_expected": 0, "cdc_received": 0,
              "probe_sent": 0, "probe_received": 0, "presence_ops": 0, "presence_diffs": 0, "errors": 0}
    kinds: dict[str, int] = {}
    with running_server(server_env(dsn, "soak_run"), SERVER_CPU, log_path, SECRET) as (port, pid):
        fleet = await start_fleet(args, port, dsn, log_dir)
        try:
            watch = ServerWatch(pid, log_path, postmaster)
            base = watch.sample()
            log(f"== soak at level {level:,.0f} for {args.minutes:g} min; server RSS {base['rss_mb']:.1f} MB idle "
                f"with {base['fds']} descriptors")
            await fleet.report()
            await fleet.set_level(level)
            t_start = last = time.monotonic()
            end = t_start + args.minutes * 60
            while (now := time.monotonic()) < end:
                await asyncio.sleep(min(args.interval, end - now))  # the sampling interval
                t = time.monotonic()
                row = flat(await fleet.report(), watch.sample(), t - t_start, t - last)
                last = t
                rows.append(row)
                for k in totals:
                    totals[k] += row[k]
                for k, v in row["error_kinds"].items():
                    kinds[k] = kinds.get(k, 0) + v
                progress(f"t={row['t']:6.0f}s", row)
            await fleet.set_level(0)
            await fleet.probe.command({"cmd": "rate", "value": 0})
            await asyncio.sleep(3)  # let in-flight deliveries land before the last count
            tail = flat(await fleet.report(), watch.sample(), time.monotonic() - t_start, 3)
            for k in totals:
                totals[k] += tail[k]
            log(f"   drained: {tail['fanout_received']:,} fan-out and {tail['cdc_received']:,} postgres_changes "
                f"deliveries after the load stopped")
        finally:
            await fleet.stop()
        log_bytes = log_path.stat().st_size
    return {"rows": rows, "totals": totals, "error_kinds": kinds, "baseline": base, "log_bytes": log_bytes,
            "level": level}


async def run(args: argparse.Namespace) -> None:
    os.sched_setaffinity(0, {CLIENT_CPU})  # PostgreSQL and the clients inherit CPU 0
    pgcluster = load_pgcluster()
    cluster = pgcluster.PgCluster()
    cluster.init()
    cluster.start()
    log_dir = Path(tempfile.mkdtemp(prefix="soak-"))
    log(f"logs in {log_dir}; PostgreSQL on port {cluster.port}")
    started, load0 = time.monotonic(), loadavg()
    try:
        dsn = pgcluster.create_database(cluster, "soak")
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await sql.install_auth_helpers(conn)
            await conn.execute(SETUP_SQL)
        postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
        steps: list[dict[str, Any]] = []
        capacity = args.capacity
        if capacity is None:
            capacity, steps = await measure_capacity(args, dsn, log_dir, postmaster)
            if capacity <= 0:
                sys.exit("no level held; see the steps above")
        log(f"capacity {capacity:,.0f} fan-out deliveries/s (with its share of presence and postgres_changes); "
            f"soaking at half")
        result = await soak(args, capacity / 2, dsn, log_dir, postmaster)
    finally:
        cluster.destroy()
    result.update(capacity=capacity, steps=steps, wall=time.monotonic() - started, loads=(load0, loadavg()))
    args.out.mkdir(parents=True, exist_ok=True)
    md = render(result, args)
    (args.out / "soak.md").write_text(md)
    plot(result, args, args.out / "soak.png")
    (args.out / "soak.json").write_text(json.dumps({k: v for k, v in result.items()}, indent=1, default=str))
    print(md)
    log(f"wrote {args.out / 'soak.md'}, soak.png and soak.json; logs kept in {log_dir}")
    if not args.keep_logs:
        shutil.rmtree(log_dir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--interval", type=float, default=10, help="seconds between samples")
    ap.add_argument("--capacity", type=float, default=None,
                    help="capacity level (fan-out deliveries/s) instead of measuring it")
    ap.add_argument("--warmup", type=float, default=None,
                    help="seconds left out of the RSS verdict (default: 20 %% of the run, at most 300)")
    ap.add_argument("--rss-tolerance", type=float, default=10.0,
                    help="RSS is flat when the final quarter's mean is within this %% of the first's")
    ap.add_argument("--rooms", type=int, default=10)
    ap.add_argument("--subs", type=int, default=50, help="subscribers per fan-out room")
    ap.add_argument("--fanout-procs", type=int, default=2)
    ap.add_argument("--members", type=int, default=400)
    ap.add_argument("--presence-rooms", type=int, default=4)
    ap.add_argument("--presence-per-10k", type=float, default=5.0, help="presence operations/s per 10,000 level")
    ap.add_argument("--cdc-subs", type=int, default=20)
    ap.add_argument("--cdc-per-10k", type=float, default=25.0, help="row changes/s per 10,000 level")
    ap.add_argument("--probe-rate", type=float, default=50.0)
    ap.add_argument("--step-seconds", type=float, default=4.0)
    ap.add_argument("--step-settle", type=float, default=2.0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--keep-logs", action="store_true")
    args = ap.parse_args()
    if (os.cpu_count() or 1) < 2:
        sys.exit("needs 2 CPUs: the server gets one, the clients and PostgreSQL the other")
    if not (BENCH / "node_modules" / "ws").exists():
        sys.exit("bench/node_modules/ws missing: run `npm ci` in bench/")
    if args.warmup is None:
        args.warmup = min(300.0, 0.2 * args.minutes * 60)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
