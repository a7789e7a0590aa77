"""``/metrics`` for postgres_changes (docs/metrics.md): ``realtime_channel_db_events`` counts the
changes delivered to sockets, RLS checks are counted per batch, and the reading node reports its
replication lag for its slot."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from rawclient import V1, V2, event_is, open_client, unique_topic
from support import make_token, wait_until

SUBSCRIBED = "Subscribed to PostgreSQL"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(srv: Any) -> Samples:
    """The cdc fixture's server has no metrics secret: scraped from loopback without a token."""
    import urllib.request

    with urllib.request.urlopen(f"{srv.http_url}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples that carry ``labels`` (the per-tenant series: every tenant's)."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


async def test_db_events_rls_batches_and_replication_lag(cdc: Any) -> None:
    srv = cdc.server
    plain = cdc.table("id int primary key, note text")
    guarded = cdc.table("id int primary key, owner text", rls=True)
    cdc.execute(f'create policy mine on public."{guarded}" for select to authenticated '
                "using (owner = auth.uid()::text)")
    user = "5b1c3f3e-3a43-4b8e-9d55-0d3c0c2b9b11"
    token = make_token("authenticated", sub=user)
    before = scrape(srv)
    async with open_client(srv, V2) as a, open_client(srv, V1) as b:
        for c in (a, b):
            for table in (plain, guarded):
                topic = unique_topic(f"db-{table}")
                await c.join_ok(topic, {"postgres_changes": [{"event": "INSERT", "schema": "public", "table": table}]},
                                access_token=token)
                frame = await c.expect(event_is("system", topic), 10)
                assert frame.payload["message"] == SUBSCRIBED, frame.value
        # one insert into each table, in one transaction: two changes delivered to two sockets
        cdc.execute(f'insert into public."{plain}" values (1, \'x\'); '
                    f'insert into public."{guarded}" values (1, \'{user}\')')
        for c in (a, b):
            for table in (plain, guarded):
                frame = await c.expect(lambda f, t=table: f.event == "postgres_changes"
                                       and f.payload["data"]["table"] == t, 10)
                assert frame.payload["data"]["record"]["id"] == 1
    after = scrape(srv)
    db_events = "realtime_channel_db_events_total"
    assert value(after, db_events) - value(before, db_events) == 4
    # the RLS table's change was judged in one batch of one change, for every claims cohort at once
    batches = "realtime_rls_batch_changes"
    assert value(after, f"{batches}_count") - value(before, f"{batches}_count") == 1
    assert value(after, f"{batches}_sum") - value(before, f"{batches}_sum") == 1
    assert value(after, "realtime_rls_check_seconds_count") - value(before, "realtime_rls_check_seconds_count") == 1

    # the reader reports its slot's lag; once the server's WAL end is handled it is nothing
    def caught_up() -> Samples | None:
        now = scrape(srv)
        present = any(n == "realtime_replication_lag_bytes" and ("slot", cdc.slot) in labels for n, labels in now)
        return now if present and value(now, "realtime_replication_lag_bytes", slot=cdc.slot) == 0 else None

    lag = await wait_until(caught_up, 15, "the replication lag to be reported and reach 0")
    assert value(lag, "realtime_replication_lag_seconds", slot=cdc.slot) == 0
    assert "Traceback" not in srv.log()
