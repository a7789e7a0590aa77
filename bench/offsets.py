"""What offsets cost: server CPU per delivery with and without offsets, same server, same run.

    .venv/bin/python bench/offsets.py [--subs 500] [--rate 20] [--seconds 6] [--rounds 3]

Prints figures; it is not a test.  One throwaway PostgreSQL, one ``realtime-channels serve``
pinned to CPU 1, and two groups of ``--subs`` raw WebSocket subscribers (``bench/cdc_fanout.mjs``,
half vsn 1.0.0, half 2.0.0) on CPU 0:

* **plain**: topic ``fanout-a``, an INSERT binding on table ``plain_a``; joined as a stock client
  joins, so it receives today's frames;
* **offsets**: topic ``fanout-b``, an INSERT binding on table ``plain_b``; joined with
  ``config.broadcast.resume: true`` and ``config.postgres_changes_options.resume: true``, so every
  broadcast carries ``meta.offset``/``meta.epoch`` and every change its offset as ``ref``.

Each round runs four phases of ``--rate`` messages per second for ``--seconds``: REST broadcasts
to each topic, then single-row INSERTs into each table.  A message reaches one group only, so
the server CPU time of a phase (``/proc/<pid>/stat``) divided by its deliveries is that group's
cost per delivery.  The figure is the ratio offsets / plain for each kind, median over rounds —
the baseline is measured in the same run, on the same server.  Retention is on in both cases
(it is per message, not per delivery); the ratio is what a subscriber asking for offsets costs.
Results: ``bench/results/offsets.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import psycopg

from cdc_fanout import Publisher, Subscribers, phase, start_server, token
from common import load_pgcluster, log

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
LOAD_CPU = 0
GOAL = 1.10
GROUPS = {"plain": ("fanout-a", "plain_a", False), "offsets": ("fanout-b", "plain_b", True)}
KINDS = ("broadcast", "postgres_changes")

SETUP_SQL = """
create role anon nologin noinherit;
create role authenticated nologin noinherit;
create role service_role nologin noinherit bypassrls;
grant usage on schema public to anon, authenticated, service_role;
create table plain_a (id bigserial primary key, seq int not null, body text not null);
create table plain_b (id bigserial primary key, seq int not null, body text not null);
grant select on plain_a, plain_b to anon, authenticated, service_role;
create publication supabase_realtime for table plain_a, plain_b;
"""


def run(args: argparse.Namespace, dsn: str, tmp: Path) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SETUP_SQL)
    proc, port, log_path = start_server(dsn, tmp)
    groups: dict[str, Subscribers] = {}
    try:
        url = f"ws://127.0.0.1:{port}/realtime/v1/websocket"
        for name, (topic, table, offsets) in GROUPS.items():
            log(f"opening {args.subs} {name} subscribers on {topic}")
            groups[name] = Subscribers({"url": url, "token": token("anon"), "topic": f"realtime:{topic}",
                                        "table": table, "subs": args.subs, "vsns": ["1.0.0", "2.0.0"],
                                        "offsets": offsets})
        pubs = {name: Publisher(dsn, port, table, topic) for name, (topic, table, _) in GROUPS.items()}
        # warm-up: one of each; the broadcast body is padded so its frames are as long as the
        # plain group's change frames (the same pad for both groups)
        warm = {k: phase(k, 1, args.rate, groups["plain"], pubs["plain"], proc.pid, args.subs) for k in KINDS}
        pad = "x" * max(0, round(warm["postgres_changes"]["bytes_per_frame"] - warm["broadcast"]["bytes_per_frame"]))
        for name in GROUPS:
            pubs[name].pad = pad
            phase("broadcast", 1, args.rate, groups[name], pubs[name], proc.pid, args.subs)
            phase("postgres_changes", 1, args.rate, groups[name], pubs[name], proc.pid, args.subs)
        n = int(args.rate * args.seconds)
        rounds: list[dict[str, dict[str, dict[str, float]]]] = []
        for r in range(args.rounds):
            res: dict[str, dict[str, dict[str, float]]] = {}
            for kind in KINDS:
                order = list(GROUPS) if r % 2 == 0 else list(reversed(GROUPS))  # ABBA: drift cancels
                res[kind] = {name: phase(kind, n, args.rate, groups[name], pubs[name], proc.pid, args.subs)
                             for name in order}
                p, o = res[kind]["plain"], res[kind]["offsets"]
                log(f"round {r + 1} {kind}: plain {p['us_per_delivery']:.2f} µs/delivery "
                    f"({p['bytes_per_frame']:.0f} B), offsets {o['us_per_delivery']:.2f} µs/delivery "
                    f"({o['bytes_per_frame']:.0f} B) → {o['us_per_delivery'] / p['us_per_delivery']:.2f}×")
            rounds.append(res)
        summary = {}
        for kind in KINDS:
            ratios = [r[kind]["offsets"]["us_per_delivery"] / r[kind]["plain"]["us_per_delivery"] for r in rounds]
            summary[kind] = {
                "plain_us": statistics.median(r[kind]["plain"]["us_per_delivery"] for r in rounds),
                "offsets_us": statistics.median(r[kind]["offsets"]["us_per_delivery"] for r in rounds),
                "plain_bytes": statistics.median(r[kind]["plain"]["bytes_per_frame"] for r in rounds),
                "offsets_bytes": statistics.median(r[kind]["offsets"]["bytes_per_frame"] for r in rounds),
                "ratio": statistics.median(ratios),
            }
        return {"subs": args.subs, "rate": args.rate, "seconds": args.seconds, "rounds": rounds,
                "summary": summary, "loadavg": Path("/proc/loadavg").read_text().split()[:3]}
    finally:
        for subs in groups.values():
            subs.stop()
        proc.terminate()
        try:
            proc.wait(15)
        except Exception:  # noqa: BLE001 - a bench cleaning up
            proc.kill()
        if proc.returncode not in (0, -15):
            log(log_path.read_text()[-3000:])


def write_results(result: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "offsets.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    lines = ["# What offsets cost (bench/offsets.py)", "",
             f"Same run, same server (one core): {result['subs']:,} subscribers per group (half vsn 1.0.0, half "
             f"2.0.0), {result['rate']:g} messages/s per phase; server CPU time per delivery, median of "
             f"{len(result['rounds'])} rounds.  Goal: offsets cost at most {round((GOAL - 1) * 100)} % per delivery.",
             "", "| kind | plain µs/delivery | with offsets µs/delivery | frame bytes plain → offsets | ratio |",
             "|---|---:|---:|---|---:|"]
    for kind, s in result["summary"].items():
        lines.append(f"| {kind} | {s['plain_us']:.2f} | {s['offsets_us']:.2f} | "
                     f"{s['plain_bytes']:.0f} → {s['offsets_bytes']:.0f} | **{s['ratio']:.2f}×** |")
    (RESULTS / "offsets.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    plot(result, RESULTS / "offsets.png")


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    width = 0.38
    for i, (kind, s) in enumerate(result["summary"].items()):
        ax.bar(i - width / 2, s["plain_us"], width, color="tab:gray", label="plain" if i == 0 else None)
        ax.bar(i + width / 2, s["offsets_us"], width, color="tab:green", label="with offsets" if i == 0 else None)
        ax.annotate(f"{s['ratio']:.2f}×", (i, max(s["plain_us"], s["offsets_us"])), textcoords="offset points",
                    xytext=(0, 4), ha="center", fontsize=10)
    ax.set_xticks(range(len(result["summary"])), list(result["summary"]))
    ax.set_ylabel("server CPU per delivery, µs")
    ax.set_title(f"{result['subs']:,} subscribers per group: cost of offsets per delivery\n"
                 f"(ratio above each pair; goal ≤ {GOAL:.2f}×)", fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subs", type=int, default=500, help="subscribers per group")
    parser.add_argument("--rate", type=float, default=20.0, help="messages per second in a phase")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each phase")
    parser.add_argument("--rounds", type=int, default=4)
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
    tmp = Path(tempfile.mkdtemp(prefix="rc-offsets-"))
    try:
        result = run(args, cluster.dsn, tmp)
    finally:
        cluster.destroy()
        shutil.rmtree(tmp, ignore_errors=True)
    for kind, s in result["summary"].items():
        log(f"{kind}: plain {s['plain_us']:.2f} µs/delivery, with offsets {s['offsets_us']:.2f} µs/delivery, "
            f"ratio {s['ratio']:.2f}× (goal ≤ {GOAL:.2f}×)")
    if not args.no_write:
        write_results(result)
        log(f"wrote {RESULTS / 'offsets.md'}, .json and .png")


if __name__ == "__main__":
    main()
