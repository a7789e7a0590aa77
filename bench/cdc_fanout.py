"""postgres_changes fan-out vs broadcast fan-out: server CPU per delivery, same subscribers, same run.

    .venv/bin/python bench/cdc_fanout.py [--subs 1000] [--rate 20] [--seconds 8] [--rounds 2] [--tag after]

Prints figures; it is not a test.  It starts a throwaway PostgreSQL (tests/pgcluster.py), one
``realtime-channels serve`` pinned to CPU 1 and ``bench/cdc_fanout.mjs`` (the subscribers) on
CPU 0 with PostgreSQL and this process.  Every subscriber joins the SAME topic with one
postgres_changes INSERT binding on table ``plain`` (no RLS), so one committed row and one
broadcast both reach all of them.  Phases alternate, ``--rounds`` times:

* **postgres_changes**: ``--rate`` single-row INSERT transactions per second for ``--seconds``;
* **broadcast**: ``--rate`` REST ``/api/broadcast`` messages per second to the same topic, the
  body padded so its frames are as long as the change frames.

Server CPU per delivery = server CPU time (``/proc/<pid>/stat``) from the first publish until
every subscriber has counted every delivery, divided by the deliveries.  The figure that matters
is the ratio (postgres_changes / broadcast), measured in the same run, so load from other work on
a shared machine affects both sides alike.  Results: ``bench/results/cdc_fanout.{json,md,png}``;
``--tag`` names the run (e.g. ``before``/``after``) and the plot shows every tagged run.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import psycopg

from common import free_port, load_pgcluster, log, pinned

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
NODE_SCRIPT = ROOT / "bench" / "cdc_fanout.mjs"
SECRET = "bench-secret-with-at-least-32-characters-long!"
SERVER_CPU = 1
LOAD_CPU = 0
TOPIC = "fanout"
TABLE = "plain"
BODY = "the quick brown fox jumps over the lazy dog " * 2
GOAL_RATIO = 1.5

SETUP_SQL = f"""
create role anon nologin noinherit;
create role authenticated nologin noinherit;
create role service_role nologin noinherit bypassrls;
grant usage on schema public to anon, authenticated, service_role;
create table {TABLE} (id bigserial primary key, seq int not null, body text not null);
grant select on {TABLE} to anon, authenticated, service_role;
create publication supabase_realtime for table {TABLE};
"""


def token(role: str) -> str:
    now = int(time.time())
    return jwt.encode({"role": role, "exp": now + 3600, "iat": now}, SECRET, algorithm="HS256")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- processes ----------------------------------------------------------------------------


def start_server(dsn: str, tmp: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    port = free_port()
    env = {
        **os.environ,
        "REALTIME_HOST": "127.0.0.1",
        "REALTIME_PORT": str(port),
        "REALTIME_JWT_SECRET": SECRET,
        "REALTIME_DATABASE_URL": dsn,
        "REALTIME_PUBLICATION": "supabase_realtime",
        "REALTIME_SLOT_NAME": "bench_fanout",
        "REALTIME_LOG_LEVEL": "warning",
        "REALTIME_JOIN_ERROR_BACKOFF_MS": "0",
        "REALTIME_CONNECT_ERROR_BACKOFF_MS": "0",
        # Supabase's per-tenant quotas (a small tenant's) lifted, as an operator does for a big one
        "REALTIME_MAX_CONCURRENT_USERS": "1000000",
        "REALTIME_MAX_JOINS_PER_SECOND": "1000000",
        "REALTIME_MAX_EVENTS_PER_SECOND": "100000000",
        "REALTIME_MAX_BYTES_PER_SECOND": "100000000000",
    }
    log_path = tmp / "server.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(pinned(SERVER_CPU, [sys.executable, "-m", "realtime_channels", "serve"]),
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthcheck", timeout=1) as r:
                if r.status == 200:
                    return proc, port, log_path
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("server did not become healthy")
        time.sleep(0.05)  # polling a condition (health), bounded by the deadline


class Subscribers:
    """bench/cdc_fanout.mjs: N sockets on one topic with an INSERT binding, counting the changes.
    ``progress`` is called with each progress report while they subscribe (when given)."""

    def __init__(self, cfg: dict[str, Any], progress: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.proc = subprocess.Popen(["node", str(NODE_SCRIPT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._send(json.dumps({**cfg, "progress": True} if progress is not None else cfg))
        while True:
            msg = self._read()
            if msg["type"] == "ready":
                return
            if msg["type"] != "progress" or progress is None:
                raise RuntimeError(f"subscribers failed: {msg}")
            progress(msg)

    def _send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("subscribers exited")
        msg: dict[str, Any] = json.loads(line)
        if msg["type"] == "error":
            raise RuntimeError(f"subscriber failed: {msg['message']}")
        return msg

    def count(self) -> dict[str, Any]:
        self._send("count")
        return self._read()

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._send("stop")
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Publisher:
    """One committed single-row INSERT, or one REST broadcast, per call."""

    def __init__(self, dsn: str, port: int, table: str = TABLE, topic: str = TOPIC) -> None:
        self.table, self.topic = table, topic
        self.db = psycopg.connect(dsn, autocommit=True)
        self.http = http.client.HTTPConnection("127.0.0.1", port)
        self.headers = {"apikey": token("service_role"), "content-type": "application/json"}
        self.pad = ""

    def insert(self, seq: int) -> None:
        self.db.execute(f"insert into {self.table} (seq, body) values (%s, %s)", (seq, BODY))

    def broadcast(self, seq: int) -> None:
        body = json.dumps({"messages": [{"topic": self.topic, "event": "row",
                                         "payload": {"id": seq, "seq": seq, "body": BODY + self.pad}}]})
        self.http.request("POST", "/api/broadcast", body=body, headers=self.headers)
        resp = self.http.getresponse()
        resp.read()
        if resp.status != 202:
            raise RuntimeError(f"broadcast refused: {resp.status}")


# --- phases ------------------------------------------------------------------------------------


def phase(kind: str, n: int, rate: float, subs: Subscribers, pub: Publisher, server_pid: int,
          nsubs: int) -> dict[str, float]:
    """Publish ``n`` messages at ``rate``/s; wait until all ``n × nsubs`` deliveries arrived."""
    key = "changes" if kind == "postgres_changes" else "broadcasts"
    send = pub.insert if kind == "postgres_changes" else pub.broadcast
    before = subs.count()
    cpu0 = cpu_seconds(server_pid)
    t0 = time.monotonic()
    for j in range(n):
        delay = t0 + j / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing the publisher, not waiting for a condition
        send(j)
    expected = n * nsubs
    deadline = time.monotonic() + 60
    while True:
        now = subs.count()
        got = now[key] - before[key]
        if got >= expected or time.monotonic() > deadline:
            break
        time.sleep(0.05)  # polling a condition (all deliveries counted), bounded by the deadline
    cpu = cpu_seconds(server_pid) - cpu0
    wall = time.monotonic() - t0
    nbytes = now[key[:-1] + "Bytes"] - before[key[:-1] + "Bytes"]
    if got < expected:
        log(f"  WARNING: {kind}: {got} of {expected} deliveries arrived")
    return {"deliveries": got, "cpu_s": cpu, "wall_s": wall, "us_per_delivery": cpu / max(1, got) * 1e6,
            "bytes_per_frame": nbytes / max(1, got)}


def run(args: argparse.Namespace, dsn: str, tmp: Path) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SETUP_SQL)
    proc, port, log_path = start_server(dsn, tmp)
    subs: Subscribers | None = None
    try:
        log(f"server pid {proc.pid} on CPU {SERVER_CPU}; opening {args.subs} subscribers ({args.vsn})")
        vsns = ["1.0.0", "2.0.0"] if args.vsn == "mixed" else [args.vsn]
        subs = Subscribers({"url": f"ws://127.0.0.1:{port}/realtime/v1/websocket", "token": token("anon"),
                            "topic": f"realtime:{TOPIC}", "table": TABLE, "subs": args.subs, "vsns": vsns})
        pub = Publisher(dsn, port)
        # warm-up: one of each; sizes the broadcast body so both kinds of frame are as long
        warm_c = phase("postgres_changes", 1, args.rate, subs, pub, proc.pid, args.subs)
        warm_b = phase("broadcast", 1, args.rate, subs, pub, proc.pid, args.subs)
        pub.pad = "x" * max(0, round(warm_c["bytes_per_frame"] - warm_b["bytes_per_frame"]))
        n = int(args.rate * args.seconds)
        rounds: list[dict[str, dict[str, float]]] = []
        for r in range(args.rounds):
            res = {k: phase(k, n, args.rate, subs, pub, proc.pid, args.subs)
                   for k in ("postgres_changes", "broadcast")}
            rounds.append(res)
            c, b = res["postgres_changes"], res["broadcast"]
            log(f"round {r + 1}: postgres_changes {c['us_per_delivery']:.2f} µs/delivery "
                f"({c['bytes_per_frame']:.0f} B frames), broadcast {b['us_per_delivery']:.2f} µs/delivery "
                f"({b['bytes_per_frame']:.0f} B) → ratio {c['us_per_delivery'] / b['us_per_delivery']:.2f}")
        cdc_us = statistics.median(r["postgres_changes"]["us_per_delivery"] for r in rounds)
        bc_us = statistics.median(r["broadcast"]["us_per_delivery"] for r in rounds)
        ratios = [r["postgres_changes"]["us_per_delivery"] / r["broadcast"]["us_per_delivery"] for r in rounds]
        return {"subs": args.subs, "rate": args.rate, "seconds": args.seconds, "vsn": args.vsn,
                "rounds": rounds, "cdc_us": cdc_us, "broadcast_us": bc_us,
                "ratio": statistics.median(ratios), "loadavg": Path("/proc/loadavg").read_text().split()[:3]}
    finally:
        if subs is not None:
            subs.stop()
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        if proc.returncode not in (0, -15):
            log(log_path.read_text()[-3000:])


# --- report ----------------------------------------------------------------------------------------


def write_results(tag: str, result: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "cdc_fanout.json"
    runs: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    runs[tag] = result
    path.write_text(json.dumps(runs, indent=2) + "\n", encoding="utf-8")
    lines = ["# postgres_changes vs broadcast fan-out (bench/cdc_fanout.py)", "",
             "Same run, same subscribers (one topic, one INSERT binding, no RLS); server on one core; "
             "server CPU time per delivery, median of the rounds.  Goal: postgres_changes within "
             f"{GOAL_RATIO}× of broadcast.", "",
             "| run | subscribers | rate msg/s | postgres_changes µs/delivery | broadcast µs/delivery | ratio |",
             "|---|---|---|---|---|---|"]
    for name, r in runs.items():
        lines.append(f"| {name} | {r['subs']:,} ({r['vsn']}) | {r['rate']:g} | {r['cdc_us']:.2f} | "
                     f"{r['broadcast_us']:.2f} | **{r['ratio']:.2f}×** |")
    (RESULTS / "cdc_fanout.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    plot(runs, RESULTS / "cdc_fanout.png")


def plot(runs: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(runs)
    fig, ax = plt.subplots(figsize=(max(5.0, 2.2 * len(names) + 2), 4.2))
    width = 0.38
    for i, name in enumerate(names):
        r = runs[name]
        ax.bar(i - width / 2, r["cdc_us"], width, color="tab:blue", label="postgres_changes" if i == 0 else None)
        ax.bar(i + width / 2, r["broadcast_us"], width, color="tab:orange", label="broadcast" if i == 0 else None)
        ax.annotate(f"{r['ratio']:.2f}×", (i, max(r["cdc_us"], r["broadcast_us"])), textcoords="offset points",
                    xytext=(0, 4), ha="center", fontsize=10)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("server CPU per delivery, µs")
    first = runs[names[0]]
    ax.set_title(f"1 table / 1 topic, {first['subs']:,} subscribers, no RLS: postgres_changes vs broadcast\n"
                 f"(ratio above each pair; goal ≤ {GOAL_RATIO}×)", fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subs", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=20.0, help="messages (rows or broadcasts) per second")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each phase")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--vsn", default="mixed", choices=["mixed", "1.0.0", "2.0.0"])
    parser.add_argument("--tag", default="latest", help="name of this run in the results")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if shutil.which("node") is None:
        sys.exit("node is required for the subscribers")
    if (os.cpu_count() or 1) < 2:
        sys.exit("needs 2 CPUs: the server gets one, the load the other")
    os.sched_setaffinity(0, {LOAD_CPU})  # PostgreSQL and Node inherit CPU 0
    cluster = load_pgcluster().PgCluster()
    cluster.init()
    cluster.start()
    tmp = Path(tempfile.mkdtemp(prefix="rc-cdc-fanout-"))
    try:
        result = run(args, cluster.dsn, tmp)
    finally:
        cluster.destroy()
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"\n{args.tag}: postgres_changes {result['cdc_us']:.2f} µs/delivery, broadcast "
        f"{result['broadcast_us']:.2f} µs/delivery, ratio {result['ratio']:.2f}× (goal ≤ {GOAL_RATIO}×)")
    if not args.no_write:
        write_results(args.tag, result)
        log(f"wrote {RESULTS / 'cdc_fanout.md'}, .json and .png")


if __name__ == "__main__":
    main()
