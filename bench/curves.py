"""Cost against work: how the server's cost per unit of work moves as the work grows.

    .venv/bin/python bench/curves.py [--quick] [--scenarios postgres_changes,presence,idle,rooms]
                                     [--engine aiohttp|direct] [--workers 2 --max-conns 36000]

A flat line is the goal: the CPU per change, per delivery or the memory per connection should not
depend on how many subscribers, members, connections or rooms there are.  Each point gets a fresh
``realtime-channels serve`` pinned to one core (``taskset -c --server-core``, 1 by default); this
process, PostgreSQL, redis-server and the Node clients run on the other (``--gen-core``, 0).  The
server's CPU is utime+stime from /proc/<pid>/stat (its process tree with ``--workers``), its RSS
VmRSS from /proc.

Scenarios (each prints a table and writes ``curves-<scenario>.{json,md,png}`` to bench/results/,
``--quick`` to bench/results/quick/):

* ``postgres_changes`` — 10 → 10,000 subscribers of one table (one topic, an INSERT binding each;
  ``bench/cdc_fanout.mjs``): without RLS, with RLS and one claims cohort, with RLS and 100 cohorts.
  Single-row INSERTs at a rate that keeps the deliveries near 20,000/s; server CPU per committed
  row delivered to every subscriber, per delivery, RSS, and the share delivered.
* ``presence`` — 10 → 3,000 members join one room and track (``bench/loadgen.mjs`` presence
  mode): time until every member has seen every other, presence frames and bytes per member.
  ``--sizes 10000`` adds the 10,000-member room (~13 minutes on its own).
* ``idle`` — 1,000 → 18,000 idle joined connections on one process, 1,000 → 36,000 on
  ``--workers 2`` (Redis started here): RSS per connection and heartbeats answered.  The
  connections are held by several Node processes (``loadgen.mjs`` held mode, ≤ 9,000 sockets each,
  each from its own source address 127.0.0.2, 127.0.0.3, … so no address runs out of ephemeral
  ports); a step adds processes and keeps the earlier ones connected.
* ``rooms`` — 1 → 10,000 rooms of 5 subscribers and a publisher at a fixed 10,000
  deliveries/s (``loadgen.mjs`` fanout mode): server CPU per delivery and the deliveries sustained.
  10,000 rooms × 6 sockets would pass the 20,000 descriptors a process may hold, so a second series
  packs 5 rooms onto each socket (each socket joins 5 channels).

The idle curve alone: ``--scenarios idle --max-conns 18000`` (one process) or
``--scenarios idle --workers 2 --max-conns 36000``.  ``--profile`` records the server with py-spy
during each measured window (perturbs the figures; summaries go to the results folder as
``profile-curves-<scenario>-<point>.md``).  ``--render-only`` redraws tables and plots from the JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))  # this checkout's server code, whatever the venv installed

import jwt  # noqa: E402
import psycopg  # noqa: E402

from common import (  # noqa: E402
    CLK_TCK,
    Worker,
    free_port,
    load_pgcluster,
    log,
    loadavg,
    process_tree,
    proc_mem_mb,
    redis_server,
    tree_cpu_seconds,
    tree_rss_mb,
)
from cdc_fanout import Subscribers  # noqa: E402
from fanout import machine_info, run_generator, start_profiler, stop_profiler  # noqa: E402
from supabase_shape import checkout_server, gc_pauses  # noqa: E402

BENCH = ROOT / "bench"
SECRET = "bench-secret-with-at-least-32-characters-long!"
SCENARIOS = ("postgres_changes", "presence", "idle", "rooms")
PER_PROCESS = 9_000  # sockets per generator process (each process may hold 20,000 descriptors)


def default_engine() -> str:
    from realtime_channels.config import Settings

    return str(Settings.model_fields["websocket_engine"].default)


_SOURCE = [0]


def next_source() -> str:
    """A loopback source address of its own for each client process of a point (127.0.0.100 …
    127.0.0.199): the sockets a point closes stay in TIME_WAIT for a minute, and ~28,000
    ephemeral ports per address would run out over a few thousand-socket points."""
    _SOURCE[0] += 1
    return f"127.0.0.{100 + _SOURCE[0] % 100}"


def anon_key() -> str:
    return jwt.encode({"role": "anon", "exp": int(time.time()) + 86400}, SECRET, algorithm="HS256")


# --- the server ---------------------------------------------------------------------------------


@contextmanager
def server(args: argparse.Namespace, log_dir: Path, name: str, env_extra: dict[str, str] | None = None,
           workers: int = 1, redis_url: str | None = None, gc_dir: Path | None = None) -> Iterator[tuple[int, int]]:
    """``realtime-channels serve`` from this checkout (``--workers`` when > 1) pinned to the server
    core; yields (port, pid) once /health says every worker is up, stops it on exit.  With
    ``gc_dir``, its processes log garbage collections over 2 ms there (supabase_shape's hook)."""
    port = free_port()
    with checkout_server(port, log_dir / f"server-{name}-{port}.log", workers=workers, redis_url=redis_url,
                         env_extra={"REALTIME_WEBSOCKET_ENGINE": args.engine, **(env_extra or {})},
                         gc_dir=gc_dir, core=args.server_core, secret=SECRET) as pid:
        yield port, pid


@contextmanager
def profiled(args: argparse.Namespace, pid: int, tag: str) -> Iterator[None]:
    """py-spy on the server (all its processes are sampled through the first) while the block runs."""
    if not args.profile:
        yield
        return
    spy = start_profiler(pid, out_dir=args.out, tag=f"curves-{tag}")
    try:
        yield
    finally:
        stop_profiler(*spy)


class SyscallSampler(threading.Thread):
    """Every 50 ms: the server's read and write system calls so far (/proc/<pid>/io syscr, syscw),
    stamped with epoch ms, so a window the generator reports can be looked up afterwards."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.rows: list[tuple[float, int, int, float, float]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                io = dict(line.split(": ") for line in Path(f"/proc/{self.pid}/io").read_text().splitlines())
                stat = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, ValueError):
                return
            self.rows.append((time.time() * 1000, int(io["syscr"]), int(io["syscw"]),
                              int(stat[11]) / CLK_TCK, int(stat[12]) / CLK_TCK))
            self.halt.wait(0.05)

    def rates(self, lo: float, hi: float) -> tuple[float, float, float, float] | None:
        """(reads/s, writes/s, user CPU, system CPU) between the first and last sample inside [lo, hi]."""
        rows = [r for r in self.rows if lo <= r[0] <= hi]
        if len(rows) < 2:
            return None
        wall = (rows[-1][0] - rows[0][0]) / 1000
        return tuple((rows[-1][i] - rows[0][i]) / wall for i in (1, 2, 3, 4))  # type: ignore[return-value]


def retried(fn: Any, *a: Any) -> Any:
    """``fn(*a)``, once more if it raised RuntimeError (a point that failed to start, e.g. a port taken
    between ``free_port`` and the bind by other work on a shared machine); the second failure is raised."""
    try:
        return fn(*a)
    except RuntimeError as exc:
        log(f"  failed ({str(exc).splitlines()[0][:200]}); trying once more")
        return fn(*a)


def fmt(v: float | None, spec: str = ".1f") -> str:
    return "–" if v is None else format(v, spec)


# --- postgres_changes ------------------------------------------------------------------------------

PG_SETUP = """
create role anon nologin noinherit;
create role authenticated nologin noinherit;
create role service_role nologin noinherit bypassrls;
grant usage on schema public to anon, authenticated, service_role;
create table plain (id bigserial primary key, seq int not null, body text not null);
create table notes (id bigserial primary key, team text not null, seq int not null, body text not null);
alter table notes enable row level security;
create policy team_member on notes for select to authenticated
    using (team = any (array(select jsonb_array_elements_text(auth.jwt() -> 'teams'))));
grant select on plain, notes to anon, authenticated, service_role;
create publication supabase_realtime for table plain, notes;
"""
BODY = "the quick brown fox jumps over the lazy dog " * 2
TEAMS = [f"t{i}" for i in range(10)]
PG_VARIANTS = [  # (key, label, table, cohorts) — cohorts 0: anon, no RLS
    ("plain", "no RLS", "plain", 0),
    ("rls-1", "RLS, 1 claims cohort", "notes", 1),
    ("rls-100", "RLS, 100 claims cohorts", "notes", 100),
]
PG_DELIVERIES_PER_S = 20_000
PG_MAX_ROWS_PER_S = 50
PG_SECONDS = 5.0


def cdc_subscribers(cfg: dict[str, Any], tag: str) -> Subscribers:
    """bench/cdc_fanout.mjs: N sockets on one topic with an INSERT binding, counting the changes."""
    return Subscribers(cfg, lambda msg: log(f"  [{tag}] subscribed {msg['subscribed']:,}/{msg['of']:,}"))


def pg_token(cohort: int | None, exp: int) -> str:
    if cohort is None:
        return jwt.encode({"role": "anon", "exp": exp}, SECRET, algorithm="HS256")
    sub = str(uuid.uuid5(uuid.NAMESPACE_URL, f"cohort-{cohort}"))
    return jwt.encode({"role": "authenticated", "sub": sub, "teams": TEAMS, "aud": "authenticated", "exp": exp},
                      SECRET, algorithm="HS256")


def wait_changes(subs: Subscribers, expected: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        c = subs.count()
        if c["changes"] >= expected or time.monotonic() > deadline:
            return c
        time.sleep(0.05)  # polling a condition (all deliveries counted), bounded by the deadline


def pg_point(args: argparse.Namespace, dsn: str, postmaster: int, log_dir: Path, variant: tuple[str, str, str, int],
             n: int) -> dict[str, Any]:
    key, label, table, cohorts = variant
    tag = f"pg {key} n={n}"
    slot = f"curves_{key.replace('-', '_')}_{n}_{uuid.uuid4().hex[:6]}"
    env = {"REALTIME_DATABASE_URL": dsn, "REALTIME_PUBLICATION": "supabase_realtime", "REALTIME_SLOT_NAME": slot}
    exp = int(time.time()) + 7200
    ncoh = min(cohorts, n) if cohorts else 0
    tokens = [pg_token(c, exp) for c in range(ncoh)] if ncoh else [pg_token(None, exp)]
    rate = max(1.0, min(PG_MAX_ROWS_PER_S, PG_DELIVERIES_PER_S / n))
    rows = max(10, round(rate * (2.0 if args.quick else PG_SECONDS)))
    insert = (f"insert into {table} (seq, body) values (%s, %s)" if table == "plain"
              else f"insert into {table} (team, seq, body) values ('t0', %s, %s)")
    db = psycopg.connect(dsn, autocommit=True)
    try:
        gc_dir = Path(tempfile.mkdtemp(prefix=f"gc-pg-{key}-{n}-", dir=log_dir))
        with server(args, log_dir, f"pg-{key}-{n}", env, gc_dir=gc_dir) as (port, pid):
            rss0 = tree_rss_mb(pid)
            t_join = time.monotonic()
            subs = cdc_subscribers({"url": f"ws://127.0.0.1:{port}/realtime/v1/websocket", "token": tokens[0],
                                   "tokens": tokens, "topic": "realtime:curves", "table": table, "subs": n,
                                   "localAddress": next_source(),
                                   "vsns": ["1.0.0", "2.0.0"]}, tag)
            join_s = time.monotonic() - t_join
            try:
                # warm-up: one row through the whole path (catalog, RLS statements, frame caches)
                before = subs.count()["changes"]
                db.execute(insert, (-1, BODY))
                c = wait_changes(subs, before + n, 60)
                if c["changes"] < before + n:
                    raise RuntimeError(f"warm-up row reached {c['changes'] - before} of {n} subscribers")
                rss1 = tree_rss_mb(pid)
                # the floor: heartbeats and timers with every subscriber joined and nothing changing
                idle_s = 1.0 if args.quick else 2.0
                i0, w0 = tree_cpu_seconds(pid), time.monotonic()
                time.sleep(idle_s)  # a fixed sampling interval, not a wait for a condition
                idle_cpu = (tree_cpu_seconds(pid) - i0) / (time.monotonic() - w0)
                log(f"  [{tag}] {n:,} subscribed in {join_s:.1f} s ({ncoh or 'anon'} cohort(s)); "
                    f"server RSS {rss0:.0f} → {rss1:.0f} MiB; idle CPU {idle_cpu * 100:.1f} %; "
                    f"inserting {rows} rows at {rate:.0f}/s")
                with profiled(args, pid, f"postgres_changes-{key}-{n}"):
                    base = subs.count()
                    cpu0, t0 = tree_cpu_seconds(pid), time.monotonic()
                    pg0 = tree_cpu_seconds(postmaster)
                    e0 = time.time() * 1000
                    for j in range(rows):
                        delay = t0 + j / rate - time.monotonic()
                        if delay > 0:
                            time.sleep(delay)  # pacing the writer, not waiting for a condition
                        db.execute(insert, (j, BODY))
                    expected = base["changes"] + rows * n
                    end = wait_changes(subs, expected, 60 + rows * n / 5_000)
                    cpu, wall = tree_cpu_seconds(pid) - cpu0, time.monotonic() - t0
                    pg_cpu = tree_cpu_seconds(postmaster) - pg0
                    gc = gc_pauses(gc_dir, e0, time.time() * 1000) or {}
                rss2 = tree_rss_mb(pid)
                got = end["changes"] - base["changes"]
            finally:
                subs.stop()
    finally:
        with contextlib.suppress(psycopg.Error):
            db.execute("select pg_drop_replication_slot(slot_name) from pg_replication_slots "
                       "where slot_name = %s and not active", (slot,))
        db.close()
    net = max(0.0, cpu - idle_cpu * wall)
    point = {
        "variant": key, "label": label, "subscribers": n, "cohorts": ncoh, "rows": rows, "rowsPerSecond": rate,
        "delivered": got, "expected": rows * n, "deliveredFraction": got / (rows * n), "seconds": wall,
        "serverCpuSeconds": cpu, "idleCpu": idle_cpu, "msPerChange": net / rows * 1e3,
        "usPerDelivery": net / max(1, got) * 1e6, "gcMs": gc.get("totalMs", 0.0), "gcFull": gc.get("gen2", 0),
        "gcMaxMs": gc.get("maxMs", 0.0), "pgCpuSeconds": pg_cpu, "pgMsPerChange": pg_cpu / rows * 1e3,
        "rssIdleMiB": rss0, "rssJoinedMiB": rss1, "rssEndMiB": rss2,
        "kbPerSubscriber": (rss1 - rss0) * 1024 / n, "joinSeconds": join_s, "loadavg": loadavg(),
    }
    log(f"  [{tag}] {got:,}/{rows * n:,} delivered ({point['deliveredFraction'] * 100:.2f} %) in {wall:.1f} s; "
        f"server CPU {point['msPerChange']:.2f} ms per change = {point['usPerDelivery']:.2f} µs per delivery "
        f"(PostgreSQL {point['pgMsPerChange']:.2f} ms per change; collections over 2 ms {point['gcMs']:.0f} ms, "
        f"{point['gcFull']} full); "
        f"RSS {rss2:.0f} MiB; load {loadavg()}")
    return point


def run_postgres_changes(args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    from realtime_channels.cdc import sql

    sizes = args.sizes or ([10, 100, 300] if args.quick else [10, 100, 1000, 3000, 10_000])
    cluster = load_pgcluster().PgCluster()
    cluster.init()
    cluster.start()
    points: list[dict[str, Any]] = []
    try:
        async def setup() -> None:
            async with await psycopg.AsyncConnection.connect(cluster.dsn, autocommit=True) as conn:
                await sql.install_auth_helpers(conn)
                await conn.execute(PG_SETUP)
        asyncio.run(setup())
        postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
        for variant in [v for v in PG_VARIANTS if v[0] in args.pg_variants.split(",")]:
            for n in sizes:
                log(f"==> postgres_changes, {variant[1]}, {n:,} subscribers (elapsed {elapsed(args)}, load {loadavg()})")
                try:
                    points.append(retried(pg_point, args, cluster.dsn, postmaster, log_dir, variant, n))
                except RuntimeError as exc:
                    log(f"  failed: {exc}")
                    points.append({"variant": variant[0], "label": variant[1], "subscribers": n, "error": str(exc)[:2000]})
    finally:
        cluster.destroy()
    return {"points": points, "deliveriesPerSecond": PG_DELIVERIES_PER_S, "maxRowsPerSecond": PG_MAX_ROWS_PER_S}


def table_postgres_changes(data: dict[str, Any]) -> list[str]:
    lines = ["| variant | subscribers | cohorts | rows (per s) | delivered | server CPU per change | per delivery | "
             "GC pauses > 2 ms in the window | PostgreSQL CPU per change | RSS joined (per subscriber) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in data["points"]:
        if "error" in p:
            lines.append(f"| {p['label']} | {p['subscribers']:,} | | | **failed**: {p['error'].splitlines()[0][:120]} | | | | | |")
            continue
        lines.append(f"| {p['label']} | {p['subscribers']:,} | {p['cohorts'] or '–'} | {p['rows']:,} ({p['rowsPerSecond']:.0f}) | "
                     f"{p['deliveredFraction'] * 100:.2f} % | {p['msPerChange']:.2f} ms | {p['usPerDelivery']:.2f} µs | "
                     f"{fmt(p.get('gcMs'), '.0f')} ms ({p.get('gcFull', '–')} full) | {fmt(p.get('pgMsPerChange'), '.2f')} ms | "
                     f"{p['rssJoinedMiB']:.0f} MiB ({p['kbPerSubscriber']:.1f} KB) |")
    return lines


def plot_postgres_changes(data: dict[str, Any], ax_list: Any) -> None:
    ax1, ax2, ax3 = ax_list
    for key, label, _, _ in PG_VARIANTS:
        pts = [p for p in data["points"] if p["variant"] == key and "error" not in p]
        if not pts:
            continue
        xs = [p["subscribers"] for p in pts]
        ax1.plot(xs, [p["msPerChange"] for p in pts], marker="o", label=label)
        ax2.plot(xs, [p["usPerDelivery"] for p in pts], marker="o", label=label)
        ax3.plot(xs, [p["kbPerSubscriber"] for p in pts], marker="o", label=label)
    for ax in (ax1, ax2, ax3):
        ax.set_xscale("log")
        ax.set_xlabel("subscribers of the table")
        ax.grid(True, which="both", alpha=0.3)
    ax1.set_yscale("log")
    ax1.set_ylabel("server CPU per committed row (ms)")
    ax1.set_title("CPU per change (grows with the deliveries)", fontsize=9)
    ax2.set_ylabel("server CPU per delivery (µs, log)")
    ax2.set_yscale("log")
    ax2.set_title("CPU per delivery (flat = goal; 1/N: a change's own work shared)", fontsize=9)
    ax3.set_ylabel("server RSS per subscriber (KB)")
    ax3.set_ylim(0, ax3.get_ylim()[1] * 1.25)
    ax3.set_title("memory per subscriber (flat = goal)", fontsize=9)
    ax1.legend(fontsize=7)


# --- presence ------------------------------------------------------------------------------------------


def presence_run(args: argparse.Namespace, log_dir: Path, n: int, tag: str) -> tuple[dict[str, Any], float, float, float]:
    """One room filled with ``n`` members on a fresh server: (generator result, server CPU s, wall s, RSS before)."""
    # At thousands of members the one generator process is saturated parsing presence frames, and
    # may send a new socket's upgrade request more than the slow-request guard's 10 s after its TCP
    # connect; the guard would close it.  The handshake timeout is raised here so that the clients'
    # slowness does not end the measurement (the presence work on the server is not affected).
    with server(args, log_dir, f"presence-{n}", {"REALTIME_HANDSHAKE_TIMEOUT_MS": "300000"}) as (port, pid):
        cfg = {"mode": "presence", "protocol": args.protocol, "host": "127.0.0.1", "port": port,
               "apikey": anon_key(), "serverPid": pid, "connectConcurrency": args.connect_concurrency,
               "heartbeatS": 25, "members": n, "syncTimeoutS": args.presence_timeout, "localAddress": next_source()}
        rss0 = tree_rss_mb(pid)
        cpu0, t0 = tree_cpu_seconds(pid), time.monotonic()
        with profiled(args, pid, f"presence-{n}"):
            _, res = run_generator(cfg, args.gen_core, tag, timeout=args.presence_timeout + 900)
        cpu, wall = tree_cpu_seconds(pid) - cpu0, time.monotonic() - t0
    if res.get("error"):
        raise RuntimeError(res["error"])
    return res, cpu, wall, rss0


def run_presence(args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    # 10,000 members take ~13 min on one core (each joiner is sent the whole room): --sizes 10000
    sizes = args.sizes or ([10, 100, 300] if args.quick else [10, 100, 1000, 3000])
    points: list[dict[str, Any]] = []
    for n in sizes:
        log(f"==> presence, {n:,} members in one room (elapsed {elapsed(args)}, load {loadavg()})")
        tag = f"presence n={n}"
        try:
            res, cpu, wall, rss0 = retried(presence_run, args, log_dir, n, tag)
        except RuntimeError as exc:
            log(f"  failed: {exc}")
            points.append({"members": n, "error": str(exc)[:2000]})
            continue
        frames = res["diffFramesPerMember"] + 1  # + the presence_state each gets on joining
        p = {"members": n, "synced": res["synced"], "syncedMembers": res["syncedMembers"],
             "joinSeconds": res["connect"]["seconds"], "timeToFullSyncS": res["timeToFullSyncS"],
             "diffFramesPerMember": res["diffFramesPerMember"], "framesPerMember": frames,
             "diffBytesPerMember": res["diffBytesPerMember"], "stateBytesPerMember": res["stateBytesTotal"] / n,
             "bytesPerMember": res["diffBytesPerMember"] + res["stateBytesTotal"] / n,
             "stateBytesMax": res["stateBytesMax"], "serverCpuSeconds": cpu, "serverCpuMsPerMember": cpu / n * 1e3,
             "rssIdleMiB": rss0, "rssMiB": res["serverRss"] / 2**20, "seconds": wall, "loadavg": loadavg(),
             "genCpu": res["genCpu"], "serverCpuShare": res["serverCpu"], "closedByServer": res["closedByServer"],
             "stillOpen": res["stillOpen"], "viewMin": res["viewMin"], "viewMedian": res["viewMedian"]}
        log(f"  [{tag}] full sync at {p['syncedMembers']:,}/{n:,} members after {p['timeToFullSyncS']:.2f} s "
            f"(joined in {p['joinSeconds']:.2f} s); {frames:.1f} presence frames and "
            f"{p['bytesPerMember'] / 1024:.1f} KB per member; server CPU {cpu:.1f} s ({p['serverCpuMsPerMember']:.2f} ms per member, "
            f"{p['serverCpuShare'] * 100:.0f} % of its core), generator CPU {p['genCpu'] * 100:.0f} %; "
            f"{p['stillOpen']:,} open, smallest view {p['viewMin']:,} members")
        points.append(p)
    return {"points": points, "syncTimeoutS": args.presence_timeout}


def table_presence(data: dict[str, Any]) -> list[str]:
    lines = ["| members | synced (smallest view) | joined in | full sync at every member | presence frames per member | "
             "bytes per member (state + diffs) | server CPU (per member) | server / generator CPU share | server RSS |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in data["points"]:
        if "error" in p:
            lines.append(f"| {p['members']:,} | **failed**: {p['error'].splitlines()[0][:120]} | | | | | | | |")
            continue
        sync = f"{p['timeToFullSyncS']:.2f} s" if p["synced"] else f"not within {data['syncTimeoutS']} s"
        view = f" ({p['viewMin']:,})" if "viewMin" in p else ""
        lines.append(f"| {p['members']:,} | {p['syncedMembers']:,}{view} | {p['joinSeconds']:.2f} s | {sync} | "
                     f"{p['framesPerMember']:.1f} | {p['bytesPerMember'] / 1024:,.1f} KB "
                     f"({p['stateBytesPerMember'] / 1024:,.1f} + {p['diffBytesPerMember'] / 1024:,.1f}) | "
                     f"{p['serverCpuSeconds']:.1f} s ({p['serverCpuMsPerMember']:.2f} ms) | "
                     f"{fmt(p.get('serverCpuShare', 0) * 100, '.0f')} % / {fmt(p.get('genCpu', 0) * 100, '.0f')} % | {p['rssMiB']:.0f} MiB |")
    return lines


def plot_presence(data: dict[str, Any], ax_list: Any) -> None:
    ax1, ax2, ax3, ax4 = ax_list
    pts = [p for p in data["points"] if "error" not in p]
    xs = [p["members"] for p in pts]
    ax1.plot(xs, [p["timeToFullSyncS"] for p in pts], marker="o", color="tab:blue")
    for p in pts:
        if not p["synced"]:
            ax1.plot([p["members"]], [p["timeToFullSyncS"]], marker="x", markersize=10, color="tab:red")
    ax1.set_ylabel("time to full sync at every member (s)")
    ax1.set_yscale("log")
    ax2.plot(xs, [p["framesPerMember"] for p in pts], marker="o", color="tab:green")
    ax2.set_ylabel("presence frames per member")
    ax3.plot(xs, [p["bytesPerMember"] / 1024 for p in pts], marker="o", color="tab:purple", label="state + diffs")
    ax3.plot(xs, [p["members"] * min(q["bytesPerMember"] / q["members"] for q in pts) / 1024 for p in pts],
             linestyle="--", color="grey", label="∝ members (each must learn every other)")
    ax3.set_ylabel("presence bytes per member (KB)")
    ax3.set_yscale("log")
    ax3.legend(fontsize=7)
    ax4.plot(xs, [p["serverCpuMsPerMember"] for p in pts], marker="o", color="tab:red", label="measured")
    big = [p for p in pts if p["members"] >= 100]
    if big:
        ref = big[0]
        ax4.plot(xs, [ref["serverCpuMsPerMember"] * p["members"] / ref["members"] for p in pts], linestyle="--",
                 color="grey", label=f"∝ members (from {ref['members']:,})")
    ax4.set_ylabel("server CPU per member joining (ms)")
    ax4.set_yscale("log")
    ax4.set_title("server CPU per member (flat = goal)", fontsize=9)
    ax4.legend(fontsize=7)
    for ax in (ax1, ax2, ax3, ax4):
        ax.set_xscale("log")
        ax.set_xlabel("members in the room")
        ax.grid(True, which="both", alpha=0.3)
    ax1.set_title("time to full sync (x: not synced)", fontsize=9)
    ax2.set_title("frames per member (flat = goal)", fontsize=9)
    ax3.set_title("bytes per member", fontsize=9)


# --- idle connections -------------------------------------------------------------------------------


def idle_steps(max_conns: int) -> list[int]:
    steps = [s for s in (1_000, 3_000, 9_000, 18_000, 27_000, 36_000) if s <= max_conns]
    if not steps or steps[-1] != max_conns:
        steps.append(max_conns)
    return steps


def tree_rss_each(pid: int) -> dict[int, float]:
    out: dict[int, float] = {}
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            out[p] = proc_mem_mb(p)[0]
    return out


async def idle_series(args: argparse.Namespace, log_dir: Path, workers: int, max_conns: int) -> dict[str, Any]:
    steps = idle_steps(max_conns)
    label = "one process" if workers == 1 else f"--workers {workers} (Redis)"
    log(f"==> idle connections, {label}: steps {', '.join(f'{s:,}' for s in steps)} (elapsed {elapsed(args)}, load {loadavg()})")
    rows: list[dict[str, Any]] = []
    gens: list[Worker] = []
    lingering: list[int] = []
    hold_s = args.idle_hold
    with ExitStack() as stack:
        redis_url = None
        if workers > 1:
            data_dir = Path(tempfile.mkdtemp(prefix="curves-redis-", dir=log_dir))
            redis_url, _ = stack.enter_context(redis_server(data_dir))
        gc_dir = Path(tempfile.mkdtemp(prefix=f"gc-idle-w{workers}-", dir=log_dir))
        server_pids: list[int] = []
        stack.callback(reap, server_pids, lingering)  # after the server stops, before Redis does
        port, pid = stack.enter_context(server(args, log_dir, f"idle-w{workers}", workers=workers, redis_url=redis_url,
                                               gc_dir=gc_dir))
        # the workers are up when /health counts them; their baseline RSS settles with a request or two
        time.sleep(1.0)  # a fixed settling interval before the baseline sample, not a condition
        server_pids.extend(process_tree(pid))
        base_each = tree_rss_each(pid)
        base = sum(base_each.values())
        log(f"  baseline server RSS {base:.1f} MiB over {len(base_each)} process(es)")
        total = 0
        key = anon_key()
        try:
            for target in steps:
                need = target - total
                chunks: list[int] = []
                while need > 0:
                    chunks.append(min(PER_PROCESS, need))
                    need -= chunks[-1]
                new: list[Worker] = []
                for n in chunks:
                    i = len(gens) + len(new)
                    cfg = {"mode": "held", "protocol": args.protocol, "host": "127.0.0.1", "port": port, "apikey": key,
                           "serverPid": 0, "connectConcurrency": args.connect_concurrency, "heartbeatS": 25,
                           "conns": n, "rooms": max(1, n // 10), "roomBase": total + sum(w_n for w_n in chunks[:len(new)]),
                           "localAddress": f"127.0.0.{2 + i}"}
                    new.append(Worker(f"idle-w{workers}-g{i}", ["node", str(BENCH / "loadgen.mjs"), json.dumps(cfg)],
                                      log_dir, core=args.gen_core))
                cpu0, t0, e0 = tree_cpu_seconds(pid), time.monotonic(), time.time() * 1000
                await asyncio.gather(*(w.start(timeout=900) for w in new))
                connect_s = time.monotonic() - t0
                connect_cpu = tree_cpu_seconds(pid) - cpu0
                gc = gc_pauses(gc_dir, e0, time.time() * 1000) or {}
                gens += new
                total = target
                log(f"  {target:,} connections joined ({sum(chunks):,} new over {len(new)} process(es) in {connect_s:.1f} s, "
                    f"server CPU {connect_cpu / sum(chunks) * 1e3:.2f} ms per connect+join, of which collections over 2 ms "
                    f"{gc.get('totalMs', 0.0) / sum(chunks):.2f} ms ({gc.get('gen2', 0)} full, longest {gc.get('maxMs', 0.0):.0f} ms)); "
                    f"holding {hold_s:.0f} s")
                r0 = [await w.report() for w in gens]
                h0 = time.monotonic()
                cpu_h0 = tree_cpu_seconds(pid)
                await asyncio.sleep(hold_s)  # the measured window: idle connections heartbeating, nothing to wait for
                cpu_h = (tree_cpu_seconds(pid) - cpu_h0) / (time.monotonic() - h0)
                sent = answered = 0
                deadline = time.monotonic() + 10
                while True:  # a barrier: every heartbeat sent in the window is answered, or the deadline passes
                    r1 = [await w.report() for w in gens]
                    sent_at = sum(b["hbSent"] - a["hbSent"] for a, b in zip(r0, r1, strict=True))
                    if sent == 0:
                        sent = sent_at  # heartbeats sent during the window; later ones are not counted
                    answered = min(sent, sum(b["hbReplies"] - a["hbReplies"] for a, b in zip(r0, r1, strict=True)))
                    if answered >= sent or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.2)  # polling the condition, bounded by the deadline
                each = tree_rss_each(pid)
                rss = sum(each.values())
                open_ = sum(r["open"] for r in r1)
                closed = sum(r["closedByServer"] for r in r1)
                row = {"conns": target, "open": open_, "closedByServer": closed, "processes": len(gens),
                       "rssMiB": rss, "rssEachMiB": sorted(each.values(), reverse=True), "baseMiB": base,
                       "kbPerConn": (rss - base) * 1024 / target, "hbSent": sent, "hbAnswered": answered,
                       "holdCpu": cpu_h, "connectSeconds": connect_s, "connectCpuMsPerConn": connect_cpu / sum(chunks) * 1e3,
                       "connectGcMsPerConn": gc.get("totalMs", 0.0) / sum(chunks), "connectGcMaxMs": gc.get("maxMs", 0.0),
                       "connectGc2": gc.get("gen2", 0),
                       "loadavg": loadavg()}
                rows.append(row)
                log(f"  step {target:>6,} conns: RSS {rss:7.1f} MiB total ({' + '.join(f'{v:.0f}' for v in row['rssEachMiB'])}), "
                    f"{row['kbPerConn']:.1f} KB/conn, heartbeats {answered:,}/{sent:,} answered, {open_:,} open, "
                    f"server CPU {cpu_h * 100:.1f} % while holding; load {loadavg()}")
        finally:
            for w in gens:
                with contextlib.suppress(Exception):
                    await w.stop(timeout=60)
            for w in gens:
                await w.kill()
    return {"workers": workers, "label": label, "rows": rows, "holdS": hold_s, "lingeringWorkers": lingering}


def reap(pids: list[int], lingering: list[int], timeout: float = 30.0) -> None:
    """Wait for the server's processes to be gone; SIGKILL (and note in ``lingering``) any still
    running ``timeout`` s later — a ``--workers`` supervisor killed after its 10 s grace leaves
    its workers behind, and they would take the server core from the next measurement."""
    deadline = time.monotonic() + timeout

    def alive(p: int) -> bool:
        try:
            return Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)  # polling until the processes are gone, bounded by the deadline
    for p in pids:
        if alive(p):
            log(f"  server process {p} still running {timeout:.0f} s after SIGTERM: killed")
            lingering.append(p)
            with contextlib.suppress(OSError):
                os.kill(p, 9)


def run_idle(args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    series: list[dict[str, Any]] = []
    if args.workers:
        plans = [(args.workers, args.max_conns or (3_000 if args.quick else 18_000 * args.workers))]
    elif args.max_conns:
        plans = [(1, args.max_conns)]
    else:
        plans = [(1, 3_000), (2, 3_000)] if args.quick else [(1, 18_000), (2, 36_000)]
    for workers, max_conns in plans:
        if max_conns > 18_000 * workers:
            log(f"  {max_conns:,} connections need more than {workers} process(es) of ≤ 20,000 descriptors: "
                f"use --workers {-(-max_conns // 18_000)}")
        try:
            series.append(asyncio.run(idle_series(args, log_dir, workers, max_conns)))
        except RuntimeError as exc:
            log(f"  failed: {exc}")
            series.append({"workers": workers, "label": f"{workers} process(es)", "rows": [], "error": str(exc)[:2000]})
    return {"series": series}


def table_idle(data: dict[str, Any]) -> list[str]:
    lines = ["| server | connections | open | RSS total (per process) | KB per connection | heartbeats answered | "
             "server CPU holding | connect+join CPU (of which GC pauses > 2 ms) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in data["series"]:
        if s.get("error"):
            lines.append(f"| {s['label']} | **failed**: {s['error'].splitlines()[0][:120]} | | | | | | |")
        for r in s["rows"]:
            lines.append(f"| {s['label']} | {r['conns']:,} | {r['open']:,} | {r['rssMiB']:.0f} MiB "
                         f"({' + '.join(f'{v:.0f}' for v in r['rssEachMiB'])}) | {r['kbPerConn']:.1f} | "
                         f"{r['hbAnswered']:,}/{r['hbSent']:,} | {r['holdCpu'] * 100:.1f} % | {r['connectCpuMsPerConn']:.2f} ms"
                         f" ({fmt(r.get('connectGcMsPerConn'), '.2f')} ms) |")
    for s in data["series"]:
        if s.get("lingeringWorkers"):
            lines += ["", f"{s['label']}: server process(es) {', '.join(map(str, s['lingeringWorkers']))} were still running "
                      "30 s after SIGTERM and were killed."]
    return lines


def plot_idle(data: dict[str, Any], ax_list: Any) -> None:
    ax1, ax2 = ax_list
    for s in data["series"]:
        if not s["rows"]:
            continue
        xs = [r["conns"] for r in s["rows"]]
        ax1.plot(xs, [r["kbPerConn"] for r in s["rows"]], marker="o", label=s["label"])
        ax2.plot(xs, [r["rssMiB"] for r in s["rows"]], marker="o", label=s["label"])
    ax1.set_ylabel("server RSS per connection (KB)")
    ax1.set_ylim(0, ax1.get_ylim()[1] * 1.25)
    ax1.set_title("memory per idle joined connection (flat = goal)", fontsize=9)
    ax2.set_ylabel("server RSS, all processes (MiB)")
    ax2.set_title("total", fontsize=9)
    for ax in (ax1, ax2):
        ax.set_xlabel("idle joined connections")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)


# --- rooms ---------------------------------------------------------------------------------------------

ROOMS_RATE = 10_000  # deliveries/s at every point


def rooms_run(args: argparse.Namespace, log_dir: Path, rooms: int, per_conn: int,
              tag: str) -> tuple[list[dict[str, Any]], dict[str, Any], float, SyscallSampler, Path]:
    """One rooms point on a fresh server: (steps, generator result, RSS before, syscall samples, GC log dir)."""
    gc_dir = Path(tempfile.mkdtemp(prefix=f"gc-rooms-{rooms}-{per_conn}-", dir=log_dir))
    with server(args, log_dir, f"rooms-{rooms}-{per_conn}", gc_dir=gc_dir) as (port, pid):
        cfg = {"mode": "fanout", "protocol": args.protocol, "host": "127.0.0.1", "port": port,
               "apikey": anon_key(), "serverPid": pid, "connectConcurrency": args.connect_concurrency,
               "heartbeatS": 25, "rooms": rooms, "subs": 5, "roomsPerConn": per_conn, "payloadPad": 32,
               "steps": [ROOMS_RATE], "warmupS": 1.0 if args.quick else 2.0, "stepWarmupS": 0.5 if args.quick else 1.0,
               "measureS": 2.0 if args.quick else 5.0, "graceS": 2.0, "stopP99Ms": 1e9, "stopDelivery": 0,
               "idleMeasureS": 1.0 if args.quick else 2.0, "localAddress": next_source()}
        rss0 = tree_rss_mb(pid)
        sampler = SyscallSampler(pid)
        sampler.start()
        with profiled(args, pid, f"rooms-{rooms}-{per_conn}"):
            steps, res = run_generator(cfg, args.gen_core, tag, timeout=900)
        sampler.halt.set()
    if res.get("error") or not steps:
        raise RuntimeError(res.get("error", "no step measured"))
    return steps, res, rss0, sampler, gc_dir


def run_rooms(args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    if args.quick:
        plan = [(1, 1), (10, 1), (100, 1), (300, 5)]
    else:
        plan = [(1, 1), (10, 1), (100, 1), (1_000, 1), (3_000, 1), (1_000, 5), (3_000, 5), (10_000, 5)]
    if args.sizes:  # rooms above 3,000 need 5 rooms per socket (descriptors)
        plan = [(n, 1 if n <= 3_000 else 5) for n in args.sizes]
    points: list[dict[str, Any]] = []
    for rooms, per_conn in plan:
        sockets = rooms * 6 // per_conn
        log(f"==> rooms: {rooms:,} rooms × 5 subscribers, {per_conn} room(s) per socket ({sockets:,} sockets) at "
            f"{ROOMS_RATE:,} deliveries/s (elapsed {elapsed(args)}, load {loadavg()})")
        tag = f"rooms {rooms}/{per_conn}"
        try:
            steps, res, rss0, sampler, gc_dir = retried(rooms_run, args, log_dir, rooms, per_conn, tag)
        except RuntimeError as exc:
            log(f"  failed: {exc}")
            points.append({"rooms": rooms, "roomsPerSocket": per_conn, "error": str(exc)[:2000]})
            continue
        s = steps[0]
        idle = res["idle"]["srvCpu"] if res.get("idle") else 0.0
        net_us = (s["serverCpu"] - idle) / s["deliveriesPerSecond"] * 1e6 if s["deliveriesPerSecond"] else None
        p = {"rooms": rooms, "roomsPerSocket": per_conn, "sockets": sockets, "target": ROOMS_RATE,
             "deliveriesPerSecond": s["deliveriesPerSecond"], "delivery": s["delivery"], "latencyMs": s["latencyMs"],
             "serverCpu": s["serverCpu"], "idleCpu": idle, "usPerDelivery": net_us,
             "usPerDeliveryGross": s["serverCpuPerDeliveryUs"], "rssIdleMiB": rss0, "rssMiB": s["serverRss"] / 2**20,
             "genCpu": s["genCpu"], "serverWait": s["serverRunQueueWait"], "genWait": s["genRunQueueWait"],
             "connectSeconds": res["connect"]["seconds"], "loadavg": loadavg()}
        p["capacity"] = 1e6 / net_us if net_us else None
        io = sampler.rates(*s["windowEpochMs"]) if "windowEpochMs" in s else None
        gc = gc_pauses(gc_dir, *s["windowEpochMs"]) or {}
        p["gcMsPerS"] = gc.get("totalMs", 0.0) / (s["windowEpochMs"][1] - s["windowEpochMs"][0]) * 1000
        p["gcFull"] = gc.get("gen2", 0)
        # system calls per inbound message (reads) and per delivery (writes): how much batching the
        # traffic allows — few busy sockets share a call among several frames, many quiet ones do not
        p["readsPerMessage"] = io[0] / s["msgsPerSecond"] if io and s["msgsPerSecond"] else None
        p["writesPerDelivery"] = io[1] / s["deliveriesPerSecond"] if io and s["deliveriesPerSecond"] else None
        # where the CPU goes: user (Python) or system (the kernel's socket work), µs per delivery gross
        p["userUsPerDelivery"] = io[2] / s["deliveriesPerSecond"] * 1e6 if io and s["deliveriesPerSecond"] else None
        p["systemUsPerDelivery"] = io[3] / s["deliveriesPerSecond"] * 1e6 if io and s["deliveriesPerSecond"] else None
        log(f"  [{tag}] {p['deliveriesPerSecond']:,.0f}/s delivered ({p['delivery'] * 100:.2f} %), p99 "
            f"{fmt(s['latencyMs']['p99'])} ms, server CPU {p['serverCpu'] * 100:.0f} % (idle {idle * 100:.1f} %) → "
            f"{fmt(net_us, '.2f')} µs per delivery (one core ≈ {fmt(p['capacity'], ',.0f')}/s), RSS {p['rssMiB']:.0f} MiB, "
            f"{fmt(p['readsPerMessage'], '.2f')} reads per message, {fmt(p['writesPerDelivery'], '.2f')} writes per delivery, "
            f"collections over 2 ms {p['gcMsPerS']:.0f} ms/s ({p['gcFull']} full); user/system "
            f"{fmt(p['userUsPerDelivery'], '.1f')}/{fmt(p['systemUsPerDelivery'], '.1f')} µs per delivery")
        points.append(p)
    return {"points": points, "rate": ROOMS_RATE}


def table_rooms(data: dict[str, Any]) -> list[str]:
    lines = ["| rooms | rooms per socket | sockets | delivered/s (share) | p50 / p99 ms | server CPU (idle floor) | "
             "CPU per delivery (user + system, gross) | → one core's capacity | reads per message / writes per delivery | GC pauses > 2 ms | server RSS | generator CPU | "
             "server waited for its core |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in data["points"]:
        if "error" in p:
            lines.append(f"| {p['rooms']:,} | {p['roomsPerSocket']} | | **failed**: {p['error'].splitlines()[0][:120]} | | | | | | | | | |")
            continue
        lat = p["latencyMs"]
        lines.append(f"| {p['rooms']:,} | {p['roomsPerSocket']} | {p['sockets']:,} | {p['deliveriesPerSecond']:,.0f} "
                     f"({p['delivery'] * 100:.2f} %) | {fmt(lat['p50'])} / {fmt(lat['p99'])} | {p['serverCpu'] * 100:.0f} % "
                     f"({p['idleCpu'] * 100:.1f} %) | {fmt(p['usPerDelivery'], '.1f')} µs ({fmt(p.get('userUsPerDelivery'), '.1f')} + "
                     f"{fmt(p.get('systemUsPerDelivery'), '.1f')}) | {fmt(p['capacity'], ',.0f')}/s | "
                     f"{fmt(p.get('readsPerMessage'), '.2f')} / {fmt(p.get('writesPerDelivery'), '.2f')} | "
                     f"{fmt(p.get('gcMsPerS'), '.0f')} ms/s | "
                     f"{p['rssMiB']:.0f} MiB | {p['genCpu'] * 100:.0f} % | {p['serverWait'] * 100:.0f} %"
                     f"{' ⚠' if p['serverWait'] > 0.10 else ''} |")
    return lines


def plot_rooms(data: dict[str, Any], ax_list: Any) -> None:
    ax1, ax2, ax3 = ax_list
    for per_conn, label in ((1, "one socket per member"), (5, "5 rooms per socket")):
        pts = [p for p in data["points"] if p.get("roomsPerSocket") == per_conn and "error" not in p]
        if not pts:
            continue
        xs = [p["rooms"] for p in pts]
        line, = ax1.plot(xs, [p["usPerDelivery"] for p in pts], marker="o", label=label)
        ax2.plot(xs, [p["deliveriesPerSecond"] for p in pts], marker="o", label=label)
        io = [p for p in pts if p.get("writesPerDelivery") is not None]
        if io:
            ax3.plot([p["rooms"] for p in io], [p["writesPerDelivery"] for p in io], marker="o", color=line.get_color(),
                     label=f"writes per delivery, {label}")
            ax3.plot([p["rooms"] for p in io], [p["readsPerMessage"] for p in io], marker="^", linestyle="--",
                     color=line.get_color(), label=f"reads per message, {label}")
    ax3.set_ylabel("server system calls")
    ax3.set_ylim(bottom=0)
    ax3.set_title("batching: system calls per unit of work", fontsize=9)
    ax3.set_xscale("log")
    ax3.set_xlabel("rooms of 5 subscribers")
    ax3.grid(True, which="both", alpha=0.3)
    ax3.legend(fontsize=6)
    ax1.set_ylabel("server CPU per delivery (µs)")
    ax1.set_ylim(0, ax1.get_ylim()[1] * 1.2)
    ax1.set_title(f"CPU per delivery at {data['rate']:,} deliveries/s (flat = goal)", fontsize=9)
    ax2.axhline(data["rate"], color="grey", linestyle="--", linewidth=0.8)
    ax2.set_ylabel("deliveries/s sustained")
    ax2.set_ylim(0, data["rate"] * 1.25)
    ax2.set_title("delivered (dashed: offered)", fontsize=9)
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xlabel("rooms of 5 subscribers")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)


# --- report ---------------------------------------------------------------------------------------------

TITLES = {
    "postgres_changes": "postgres_changes: server CPU per change against subscribers per table",
    "presence": "presence: members per room",
    "idle": "idle joined connections: RSS per connection",
    "rooms": "rooms of 5 subscribers: CPU per delivery against rooms",
}
RUNNERS = {"postgres_changes": run_postgres_changes, "presence": run_presence, "idle": run_idle, "rooms": run_rooms}
TABLES = {"postgres_changes": table_postgres_changes, "presence": table_presence, "idle": table_idle, "rooms": table_rooms}
PLOTS = {"postgres_changes": (plot_postgres_changes, 3), "presence": (plot_presence, 4), "idle": (plot_idle, 2),
         "rooms": (plot_rooms, 3)}


def render(name: str, doc: dict[str, Any], out: Path) -> str:
    meta = doc["meta"]
    m = meta["machine"]
    lines = [f"# Cost against work — {TITLES[name]}" + (" (quick smoke run — not a measurement)" if meta["quick"] else ""),
             "",
             f"`bench/curves.py --scenarios {name}` at commit `{meta['commit']}`, WebSocket engine **{meta['engine']}**, "
             f"protocol {meta['protocol']}. Machine: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}, Python {m['python']}, "
             f"Node {m['node']}. Server pinned to core {meta['serverCore']}, clients (and PostgreSQL, Redis) to core "
             f"{meta['genCore']}. Load average {meta['loadStart']} at the start, {meta['loadEnd']} at the end; "
             f"{meta['minutes']:.1f} min.",
             "", *TABLES[name](doc["data"]), "", f"![{name}](curves-{name}.png)", ""]
    text = "\n".join(lines)
    (out / f"curves-{name}.md").write_text(text)
    return text


def plot(name: str, doc: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fn, n = PLOTS[name]
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 4.2), squeeze=False)
    fn(doc["data"], axes[0])
    meta = doc["meta"]
    fig.suptitle(f"{TITLES[name]} — engine {meta['engine']}, server on 1 core" + (" (quick)" if meta["quick"] else ""),
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out / f"curves-{name}.png", dpi=110)
    plt.close(fig)


_T0 = time.monotonic()


def elapsed(_args: argparse.Namespace) -> str:
    return f"{(time.monotonic() - _T0) / 60:.1f} min"


def git_commit() -> str:
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=False)
    dirty = subprocess.run(["git", "status", "--porcelain", "src"], capture_output=True, text=True, cwd=ROOT, check=False)
    return r.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small numbers, short windows (a smoke run, not a measurement)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma list of {', '.join(SCENARIOS)}")
    ap.add_argument("--engine", choices=["aiohttp", "direct"], default=None,
                    help="REALTIME_WEBSOCKET_ENGINE for the server (default: the server's default)")
    ap.add_argument("--protocol", choices=["v1", "v2"], default="v1", help="the Node generators' protocol (loadgen.mjs)")
    ap.add_argument("--workers", type=int, default=None, help="idle only: serve --workers N on Redis")
    ap.add_argument("--max-conns", type=int, default=None, help="idle only: the last step (default 18,000 per process)")
    ap.add_argument("--idle-hold", type=float, default=None, help="idle: seconds each step holds (default 10, quick 3)")
    ap.add_argument("--presence-timeout", type=float, default=None,
                    help="presence: seconds to wait for full sync after the last join (default 60, quick 30)")
    ap.add_argument("--sizes", type=lambda v: [int(x) for x in v.split(",")], default=None,
                    help="postgres_changes / presence / rooms: the points (subscribers, members, rooms), e.g. 100,3000")
    ap.add_argument("--pg-variants", default=",".join(k for k, *_ in PG_VARIANTS),
                    help="postgres_changes: comma list of plain, rls-1, rls-100")
    ap.add_argument("--server-core", type=int, default=1)
    ap.add_argument("--gen-core", type=int, default=0)
    ap.add_argument("--connect-concurrency", type=int, default=100)
    ap.add_argument("--profile", action="store_true", help="py-spy the server in each measured window (perturbs the figures)")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default bench/results, quick: bench/results/quick)")
    ap.add_argument("--render-only", action="store_true", help="redraw the tables and plots from the JSON in the results folder")
    args = ap.parse_args(argv)
    args.out = args.out or (BENCH / "results" / ("quick" if args.quick else ""))
    args.out.mkdir(parents=True, exist_ok=True)
    names = [s for s in args.scenarios.split(",") if s]
    for name in names:
        if name not in SCENARIOS:
            ap.error(f"unknown scenario {name}")
    if args.render_only:
        for name in names:
            doc = json.loads((args.out / f"curves-{name}.json").read_text())
            plot(name, doc, args.out)
            print(render(name, doc, args.out), flush=True)
        return 0
    if (args.workers or args.max_conns) and names != ["idle"]:
        ap.error("--workers and --max-conns apply to --scenarios idle")
    args.engine = args.engine or default_engine()
    args.idle_hold = args.idle_hold if args.idle_hold is not None else (3.0 if args.quick else 10.0)
    args.presence_timeout = args.presence_timeout if args.presence_timeout is not None else (30.0 if args.quick else 60.0)
    if shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        args.server_core = args.gen_core = None
    else:
        # this process and what it starts (PostgreSQL, Redis, Node) on the generator core; the
        # server is started with taskset on its own
        os.sched_setaffinity(0, {args.gen_core})
    log_dir = Path(tempfile.mkdtemp(prefix="bench-curves-logs-"))
    log(f"==> cost-against-work curves{' (quick)' if args.quick else ''}: {', '.join(names)}; engine {args.engine}; "
        f"load average {loadavg()}; results in {args.out}, logs in {log_dir}")
    failed = False
    machine = machine_info()
    for name in names:
        t0 = time.monotonic()
        meta = {"quick": args.quick, "engine": args.engine, "protocol": args.protocol, "commit": git_commit(),
                "machine": machine, "serverCore": args.server_core, "genCore": args.gen_core, "loadStart": loadavg(),
                "started": time.time()}
        data = RUNNERS[name](args, log_dir)
        meta["loadEnd"] = loadavg()
        meta["minutes"] = (time.monotonic() - t0) / 60
        doc = {"meta": meta, "data": data}
        (args.out / f"curves-{name}.json").write_text(json.dumps(doc, indent=1))
        plot(name, doc, args.out)
        print(render(name, doc, args.out), flush=True)
        failed |= any("error" in p for p in data.get("points", [])) or any(s.get("error") for s in data.get("series", []))
    log(f"==> done in {elapsed(args)}; load average {loadavg()}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
