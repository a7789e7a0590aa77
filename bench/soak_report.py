"""bench/soak.py's rows and report: one sample row, the progress line, the Markdown page, the plot."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import LogHist, cpu_model, log

#: % of a core taken by processes outside the benchmark above which a failed capacity step is
#: measured again (the machine may be shared)
FOREIGN_LIMIT_PCT = 15.0


def fmt(v: float | None, spec: str = ".1f") -> str:
    return "–" if v is None else format(v, spec)


def q(h: LogHist, p: float) -> float | None:
    return h.quantile(p)


def flat(rep: dict[str, Any], watch: dict[str, Any], t: float, dt: float) -> dict[str, Any]:
    """One sample row (plain numbers only: the rows are all the soak keeps)."""
    f, c, p, pr = rep["fanout"], rep["cdc"], rep["presence"], rep["probe"]
    return {
        "t": round(t, 1), **watch,
        "fanout_per_s": f["received"] / dt, "fanout_expected": f["expected"], "fanout_received": f["received"],
        "fanout_p50": q(f["hist"], 0.5), "fanout_p99": q(f["hist"], 0.99),
        "fanout_closed": f["closed"], "fanout_open": f["open"],
        "probe_p50": q(pr["hist"], 0.5), "probe_p99": q(pr["hist"], 0.99), "probe_max": pr["hist"].max,
        "probe_sent": pr["sent"], "probe_received": pr["received"],
        "cdc_per_s": c["received"] / dt, "cdc_expected": c["expected"], "cdc_received": c["received"],
        "cdc_committed": c["committed"], "cdc_p50": q(c["hist"], 0.5), "cdc_p99": q(c["hist"], 0.99),
        "presence_ops": p.get("tracks", 0) + p.get("leaves", 0), "presence_diffs": p.get("diffs", 0),
        "presence_skipped": p.get("ops_skipped", 0), "presence_p99": q(p["hist"], 0.99),
        "errors": sum(rep["errors"].values()) + watch["log_errors"], "error_kinds": rep["errors"],
    }


def progress(label: str, row: dict[str, Any]) -> None:
    log(f"{label} rss {row['rss_mb']:6.1f} MB cpu {row['cpu_pct']:3.0f}% (core0 {row['core0_pct']:3.0f}%, "
        f"other {row['foreign_pct']:3.0f}%) | "
        f"fanout {row['fanout_per_s']:8,.0f}/s p50 {fmt(row['fanout_p50'])} p99 {fmt(row['fanout_p99'])} | "
        f"probe p50 {fmt(row['probe_p50'])} p99 {fmt(row['probe_p99'])} | cdc {row['cdc_per_s']:6,.0f}/s "
        f"p99 {fmt(row['cdc_p99'])} | presence {row['presence_ops']} ops | errors {row['errors']} | "
        f"bench RSS {row['clients_rss_mb']:.0f} MB")


def quarters(rows: list[dict[str, Any]], warmup: float) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]]]:
    """(warm-up rows, the rest cut into four quarters by sample count)."""
    warm = [r for r in rows if r["t"] <= warmup]
    rest = [r for r in rows if r["t"] > warmup]
    n = len(rest)
    cuts = [round(i * n / 4) for i in range(5)]
    return warm, [rest[cuts[i]:cuts[i + 1]] for i in range(4)]


def mean(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows if r[key] is not None]
    return statistics.fmean(vals) if vals else None


def median(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows if r[key] is not None]
    return statistics.median(vals) if vals else None


def worst(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows if r[key] is not None]
    return max(vals) if vals else None


def rss_verdict(rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Flat = final quarter's mean RSS within ``--rss-tolerance`` % of the first quarter's (both
    after the warm-up), with the least-squares slope and the leak the tolerance would catch."""
    _, qs = quarters(rows, args.warmup)
    if any(not q for q in qs):
        return {"ok": None, "why": "too few samples after the warm-up for four quarters"}
    first, last = mean(qs[0], "rss_mb"), mean(qs[3], "rss_mb")
    assert first is not None and last is not None
    drift = (last - first) / first * 100
    rest = [r for q in qs for r in q]
    ts = [r["t"] for r in rest]
    ys = [r["rss_mb"] for r in rest]
    slope = statistics.linear_regression(ts, ys).slope if len(set(ts)) > 1 else 0.0  # MB/s
    span = statistics.fmean(r["t"] for r in qs[3]) - statistics.fmean(r["t"] for r in qs[0])
    per_s = statistics.fmean(r["fanout_per_s"] + r["cdc_per_s"] for r in rest)
    deliveries = per_s * span
    catch = args.rss_tolerance / 100 * first * 2**20 / deliveries if deliveries else None
    noise = max((max(r["rss_mb"] for r in q) - min(r["rss_mb"] for r in q)) / first * 100 for q in qs)
    return {"ok": abs(drift) <= args.rss_tolerance, "first": first, "last": last, "drift": drift,
            "slope_mb_min": slope * 60, "catch_bytes": catch, "noise": noise, "span": span}


def machine() -> str:
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    return (f"{os.cpu_count()} × {cpu_model()}, Linux {platform.release()}, Python {platform.python_version()}, "
            f"Node {node}")


def render(res: dict[str, Any], args: argparse.Namespace) -> str:
    rows, steps, t = res["rows"], res["steps"], res["totals"]
    L: list[str] = ["# Soak", ""]
    L += [f"Run {time.strftime('%Y-%m-%d %H:%M %Z')} with `.venv/bin/python bench/soak.py {' '.join(sys.argv[1:])}` "
          f"({res['wall'] / 60:.1f} min in all) on {machine()}; load average {res['loads'][0]} at the start, "
          f"{res['loads'][1]} at the end. Server pinned to CPU 1; PostgreSQL and every client on CPU 0.", ""]
    L += [f"Load: {args.rooms} rooms × {args.subs} subscribers + 1 publisher each over {args.fanout_procs} Node "
          f"processes (V1 and V2 in turn); {args.members} presence members over {args.presence_rooms} topics; "
          f"{args.cdc_subs} postgres_changes subscribers on the RLS table `soak_rows` (half see both teams, half one), "
          f"fed by INSERTs and UPDATEs; one probe socket broadcasting to itself {args.probe_rate:g}×/s. "
          f"Level L = L fan-out deliveries/s + {args.cdc_per_10k:g} row changes/s and "
          f"{args.presence_per_10k:g} presence operations/s per 10,000.", ""]
    if steps:
        L += ["## Capacity", "",
              f"Stepped, {args.step_settle:g} s settling + {args.step_seconds:g} s measured per level, on a server "
              "of its own. A level holds when the fan-out, postgres_changes and probe p99 are ≤ 100 ms, ≥ 98 % of "
              "the step's deliveries arrive in it, the writer keeps its rate and nothing fails.", "",
              "| level | fan-out delivered/s | fan-out p99 ms | probe p99 ms | postgres_changes/s | its p99 ms | "
              "rows/s | server CPU | CPU 0 busy | other load | holds |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for s in steps:
            dt = args.step_seconds
            L.append(f"| {s['level']:,} | {s['fanout_per_s']:,.0f} | {fmt(s['fanout_p99'])} | {fmt(s['probe_p99'])} | "
                     f"{s['cdc_per_s']:,.0f} | {fmt(s['cdc_p99'])} | {s['cdc_committed'] / dt:,.0f} | "
                     f"{s['cpu_pct']:.0f}% | {s['core0_pct']:.0f}% | {s['foreign_pct']:.0f}% | "
                     f"{'yes' if not s['fail'] else 'no: ' + s['fail']} |")
        L += ["", f"Capacity: level **{res['capacity']:,.0f}**; the soak runs at **{res['level']:,.0f}**. "
              "A CPU 0 near 100 % at the failing level means the clients' core, not the server, set the limit. "
              "*Other load*: CPU taken by processes outside the benchmark (% of one core; a failing level is "
              f"measured again when it is above {FOREIGN_LIMIT_PCT:g} %).", ""]
    else:
        L += [f"Capacity given on the command line: {res['capacity']:,.0f}; the soak runs at {res['level']:,.0f}.", ""]
    v = rss_verdict(rows, args)
    warm, qs = quarters(rows, args.warmup)
    L += ["## Figures", "",
          f"Samples every {args.interval:g} s; the first {args.warmup:g} s are warm-up. Latency columns: the "
          "median of the samples' p99 / the worst sample's p99.", "",
          "| part | samples | RSS mean (min–max) MB | server CPU | other load | fan-out/s | fan-out p99 ms | "
          "probe p50 ms | probe p99 ms | postgres_changes/s | its p99 ms | presence ops/s | errors |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, part in [("warm-up", warm), *((f"quarter {i + 1}", q) for i, q in enumerate(qs))]:
        if not part:
            continue
        L.append(
            f"| {name} | {len(part)} | {fmt(mean(part, 'rss_mb'))} ({min(r['rss_mb'] for r in part):.1f}–"
            f"{max(r['rss_mb'] for r in part):.1f}) | {fmt(mean(part, 'cpu_pct'), '.0f')}% | "
            f"{fmt(mean(part, 'foreign_pct'), '.0f')}% | "
            f"{fmt(mean(part, 'fanout_per_s'), ',.0f')} | "
            f"{fmt(median(part, 'fanout_p99'))} / {fmt(worst(part, 'fanout_p99'))} | "
            f"{fmt(median(part, 'probe_p50'))} | {fmt(median(part, 'probe_p99'))} / {fmt(worst(part, 'probe_p99'))} | "
            f"{fmt(mean(part, 'cdc_per_s'), ',.0f')} | {fmt(median(part, 'cdc_p99'))} / {fmt(worst(part, 'cdc_p99'))} | "
            f"{sum(r['presence_ops'] for r in part) / (len(part) * args.interval):.1f} | "
            f"{sum(r['errors'] for r in part)} |")
    fan_ratio = t["fanout_received"] / t["fanout_expected"] if t["fanout_expected"] else 0
    cdc_ratio = t["cdc_received"] / t["cdc_expected"] if t["cdc_expected"] else 0
    L += ["", f"Totals: fan-out {t['fanout_received']:,} of {t['fanout_expected']:,} deliveries ({fan_ratio:.4%}); "
          f"postgres_changes {t['cdc_received']:,} of {t['cdc_expected']:,} ({cdc_ratio:.4%}); probe "
          f"{t['probe_received']:,} of {t['probe_sent']:,}; {t['presence_ops']:,} presence operations causing "
          f"{t['presence_diffs']:,} diffs; errors {t['errors']}"
          + (f" ({', '.join(f'{k} ×{n}' for k, n in res['error_kinds'].items())})" if res["error_kinds"] else "")
          + f". Server log: {res['log_bytes']:,} bytes. Idle server before the load: "
          f"{res['baseline']['rss_mb']:.1f} MB RSS."
          + (f" The benchmark's own processes (orchestrator and clients): {rows[0]['clients_rss_mb']:.0f} MB RSS at "
             f"the first sample, {rows[-1]['clients_rss_mb']:.0f} MB at the last." if rows else ""), ""]
    L += ["## Verdict", ""]
    if v["ok"] is None:
        L += [f"RSS: not judged — {v['why']}.", ""]
    else:
        word = "**flat**" if v["ok"] else "**not flat**"
        catch = "–" if v["catch_bytes"] is None else f"{v['catch_bytes']:.2f}"
        L += [f"RSS {word}: the final quarter's mean is {v['last']:.1f} MB against {v['first']:.1f} MB in the first "
              f"quarter after the warm-up ({v['drift']:+.1f} %; tolerance X = ±{args.rss_tolerance:g} %). "
              f"Least-squares slope after the warm-up: {v['slope_mb_min']:+.3f} MB/min.", "",
              f"Why X = {args.rss_tolerance:g} %: it must sit above the RSS noise a healthy server shows — the "
              f"widest min–max swing within one quarter here was {v['noise']:.1f} % of the mean (socket outboxes "
              "filling and draining, the allocator keeping freed arenas, bounded caches filling) — and below "
              f"what a leak would add: the quarters' centres are {v['span']:.0f} s apart, so a leak of "
              f"{catch} bytes per delivery (fan-out + postgres_changes) would already have moved the final "
              "quarter by X.", ""]
    lat_first, lat_last = median(qs[0], "probe_p99") if qs[0] else None, median(qs[3], "probe_p99") if qs[3] else None
    if lat_first is not None and lat_last is not None:
        L += [f"Probe p99 (median of samples): {lat_first:.1f} ms in the first quarter, {lat_last:.1f} ms in the "
              "last.", ""]
    L += ["## Samples", "",
          "| t s | RSS MB | CPU | other load | fds | fan-out/s | fan-out p99 | probe p50 | probe p99 | "
          "postgres_changes/s | its p99 | presence ops | errors |",
          "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    step = max(1, len(rows) // 40)
    for r in rows[::step]:
        L.append(f"| {r['t']:.0f} | {r['rss_mb']:.1f} | {r['cpu_pct']:.0f}% | {r['foreign_pct']:.0f}% | {r['fds']} | "
                 f"{r['fanout_per_s']:,.0f} | "
                 f"{fmt(r['fanout_p99'])} | {fmt(r['probe_p50'])} | {fmt(r['probe_p99'])} | {r['cdc_per_s']:,.0f} | "
                 f"{fmt(r['cdc_p99'])} | {r['presence_ops']} | {r['errors']} |")
    if step > 1:
        L += ["", f"(every {step}th sample; all of them are in `soak.json`)"]
    return "\n".join(L) + "\n"


def plot(res: dict[str, Any], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res["rows"]
    if not rows:
        return
    t = [r["t"] / 60 for r in rows]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    rss = [r["rss_mb"] for r in rows]
    ax1.plot([0, *t], [res["baseline"]["rss_mb"], *rss], color="tab:blue", lw=1.5, marker=".",
             label="server RSS (t = 0: idle, before the load)")
    warm, qs = quarters(rows, args.warmup)
    for q, color in ((qs[0], "tab:green"), (qs[3], "tab:red")):
        if q:
            m = statistics.fmean(r["rss_mb"] for r in q)
            ax1.hlines(m, q[0]["t"] / 60, q[-1]["t"] / 60, colors=color, lw=2.5,
                       label=f"{'first' if q is qs[0] else 'final'} quarter mean {m:.1f} MB")
    ax1.set_ylabel("RSS (MB)")
    ax1.set_ylim(0, max(rss) * 1.25)
    ax1.legend(fontsize=8, loc="lower right")
    ax1.set_title(f"soak at level {res['level']:,.0f} (half of {res['capacity']:,.0f}); grey = warm-up")
    for key, label, style in (("probe_p99", "probe p99", "-"), ("probe_p50", "probe p50", ":"),
                              ("fanout_p99", "fan-out p99", "-"), ("cdc_p99", "postgres_changes p99", "-")):
        ax2.plot(t, [max(r[key] or 0.01, 0.01) for r in rows], style, lw=1.2, label=label)
    ax2.set_yscale("log")
    ax2.set_ylabel("latency per sample (ms)")
    ax2.legend(fontsize=8, ncol=4, loc="upper left")
    ax3.plot(t, [r["fanout_per_s"] for r in rows], label="fan-out deliveries/s")
    ax3.plot(t, [r["cdc_per_s"] for r in rows], label="postgres_changes deliveries/s")
    ax3.set_ylabel("deliveries/s")
    ax3.set_yscale("log")
    ax3b = ax3.twinx()
    ax3b.plot(t, [r["cpu_pct"] for r in rows], color="0.5", lw=1, ls="--", label="server CPU %")
    ax3b.set_ylabel("server CPU %")
    ax3b.set_ylim(0, 110)
    ax3.legend(fontsize=8, loc="lower left")
    ax3b.legend(fontsize=8, loc="lower right")
    ax3.set_xlabel("minutes")
    for ax in (ax1, ax2, ax3):
        ax.axvspan(0, args.warmup / 60, color="0.92", zorder=0)
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
