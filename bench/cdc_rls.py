"""RLS visibility checks per second: batched per claims cohort (ours) vs one transaction per
(subscriber, change) (Supabase's way), in the same run (design.md §3 "RLS", postgres-cdc.md Q4).

    .venv/bin/python bench/cdc_rls.py [--seconds 2] [--rows 2000]

Starts its own throwaway PostgreSQL (tests/pgcluster.py), builds the Q4 setup — table ``notes``
with two policies (owner = auth.uid(), team in claims.teams), one distinct set of claims per
subscriber — and prints checks/s for 1, 10 and 100 cohorts with batches of 100 changes. Both
methods' answers are compared, so a fast wrong answer cannot pass. A "check" is one
(subscriber, change) pair.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import psycopg

from realtime_channels.cdc import catalog, sql
from realtime_channels.cdc.rls import RlsChecker

from common import load_pgcluster

ROOT = Path(__file__).resolve().parent.parent
BATCH = 100
TEAMS = 10


SETUP = """
create role anon nologin;
create role authenticated nologin;
create role service_role nologin bypassrls;
grant anon, authenticated, service_role to current_user;
create table notes(id int8 primary key, owner uuid not null, team text not null, body text);
alter table notes enable row level security;
create policy by_owner on notes for select to authenticated using (owner = auth.uid());
create policy by_team on notes for select to authenticated
    using (team in (select jsonb_array_elements_text(auth.jwt() -> 'teams')));
grant select on notes to anon, authenticated, service_role;
"""


async def setup(dsn: str, rows: int, users: list[str]) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await sql.install(conn)
        await sql.install_auth_helpers(conn)
        await conn.execute(SETUP)
        async with conn.cursor() as cur:
            await cur.executemany(
                "insert into notes values (%s, %s, %s, 'body')",
                [(i, users[i % len(users)], f"t{i % TEAMS}") for i in range(1, rows + 1)],
            )
        await conn.execute("analyze notes")


def make_claims(users: list[str], n: int) -> list[dict[str, Any]]:
    # Each subscriber distinct (no cohort sharing): its own sub and a team of its own.
    return [
        {"role": "authenticated", "sub": users[i % len(users)], "teams": [f"t{i % TEAMS}"],
         "session": i}
        for i in range(n)
    ]


async def ours(conn: psycopg.AsyncConnection[Any], table: catalog.TableInfo,
               batches: list[list[list[str | None]]], claims: list[dict[str, Any]],
               seconds: float) -> tuple[float, list[list[set[int]]]]:
    checker = RlsChecker()
    results = [await checker.visible(conn, table, b, claims) for b in batches]  # warm-up + answers
    calls = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        await checker.visible(conn, table, batches[calls % len(batches)], claims)
        calls += 1
    elapsed = time.perf_counter() - start
    return calls * BATCH * len(claims) / elapsed, results


async def baseline(conn: psycopg.AsyncConnection[Any], batch: list[list[str | None]],
                   claims: list[dict[str, Any]]) -> tuple[float, list[set[int]]]:
    # Supabase's check (protocol.md §6.6): per subscriber and change, a transaction that sets
    # role and claims, then `select exists(select 1 from t where pk = ...)`.
    seen: list[set[int]] = [set() for _ in claims]
    start = time.perf_counter()
    for ci, c in enumerate(claims):
        text = orjson.dumps(c).decode()
        for i, key in enumerate(batch):
            async with conn.transaction():
                await conn.execute(
                    "select set_config('role', %s, true), set_config('request.jwt.claims', %s, true)",
                    (c["role"], text),
                )
                cur = await conn.execute(
                    "select exists(select 1 from notes where id = %s::int8)", (key[0],)
                )
                found = await cur.fetchone()
                if found and found[0]:
                    seen[ci].add(i)
    elapsed = time.perf_counter() - start
    return len(claims) * len(batch) / elapsed, seen


async def run(dsn: str, seconds: float, rows: int) -> None:
    rng = random.Random(7)
    users = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(50)]
    await setup(dsn, rows, users)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        table = await catalog.table_info(conn, "public", "notes")
        assert table is not None
        batches: list[list[list[str | None]]] = [
            [[str(rng.randint(1, rows))] for _ in range(BATCH)] for _ in range(8)
        ]
        print(f"batch of {BATCH} changes, {rows} rows, 2 policies; checks = subscribers x changes")
        print(f"{'subscribers':>11} | {'ours (1 call/batch)':>20} | {'baseline (txn/check)':>21} | ratio")
        for n in (1, 10, 100):
            claims = make_claims(users, n)
            fast, answers = await ours(conn, table, batches, claims, seconds)
            slow, expected = await baseline(conn, batches[0], claims)
            if answers[0] != expected:
                sys.exit(f"MISMATCH at {n} subscribers: batched and per-check answers differ")
            visible = sum(len(s) for s in expected)
            print(f"{n:>11} | {fast:>14,.0f} ch/s | {slow:>15,.0f} ch/s | {fast / slow:5.1f}x"
                  f"   ({visible} of {n * BATCH} visible, answers equal)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per batched measurement")
    parser.add_argument("--rows", type=int, default=2000)
    args = parser.parse_args()
    cluster = load_pgcluster().PgCluster()
    cluster.init()
    cluster.start()
    try:
        asyncio.run(run(cluster.dsn, args.seconds, args.rows))
    finally:
        cluster.destroy()


if __name__ == "__main__":
    main()
