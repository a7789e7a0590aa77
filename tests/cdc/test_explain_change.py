"""``GET /api/explain/change`` and the postgres_changes part of ``GET /api/trace`` against a real
PostgreSQL: why a subscriber would not receive a row's changes — not published, no primary key,
column privileges, the RLS policy that hides it, a filter that does not match — and, live, which
sockets a change was written to and which were skipped, and why (docs/explain.md)."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from rawclient import V2, event_is, open_client, unique_topic
from support import make_token

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from tracepeer import trace  # noqa: E402

U1 = "11111111-1111-4111-8111-111111111111"
U2 = "22222222-2222-4222-8222-222222222222"
SUBSCRIBED = "Subscribed to PostgreSQL"


def explain(server: Any, bearer: str, apikey: str | None = None, **query: str) -> dict[str, Any]:
    headers = {"apikey": apikey or server.anon_key, "Authorization": f"Bearer {bearer}"}
    url = f"{server.http_url}/api/explain/change?{urllib.parse.urlencode(query)}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return {"status": r.status, **json.loads(r.read())}
    except urllib.error.HTTPError as e:
        return {"status": e.code, **json.loads(e.read())}


def failed(answer: dict[str, Any]) -> list[str]:
    return [c["check"] for c in answer["checks"] if not c["ok"]]


async def test_rls_hides_a_row_and_the_answer_names_the_policy(cdc: Any) -> None:
    table = cdc.table("id int primary key, owner uuid, body text", rls=True)
    cdc.execute(f"create policy own on {table} for select to authenticated using (owner = auth.uid())")
    cdc.execute(f"insert into {table} values (1, '{U1}', 'a')")
    mine = explain(cdc.server, make_token("authenticated", sub=U1), table=table, pk="1")
    assert mine["status"] == 200 and mine["verdict"] == "delivered", mine
    theirs = explain(cdc.server, make_token("authenticated", sub=U2), table=table, pk="1")
    assert theirs["verdict"] == "not delivered" and failed(theirs) == ["row level security"]
    [rls] = [c for c in theirs["checks"] if c["check"] == "row level security"]
    assert [p["name"] for p in rls["policies"]] == ["own"] and "auth.uid()" in rls["policies"][0]["expression"]
    # a caller who cannot see the row is not told whether it exists
    absent = explain(cdc.server, make_token("authenticated", sub=U2), table=table, pk="99")
    assert [c for c in absent["checks"] if c["check"] == "row level security"] == [rls]
    assert '"a"' not in json.dumps(theirs), "no value of the row"
    # the service role sees that the row exists and is hidden
    svc = explain(cdc.server, cdc.server.service_key, token=make_token("authenticated", sub=U2), table=table, pk="1")
    assert svc["verdict"] == "not delivered" and "hidden by the table's policies" in svc["reasons"][0]


async def test_publication_primary_key_privileges_and_filter_are_each_named(cdc: Any) -> None:
    token = make_token("authenticated", sub=U1)
    unpublished = cdc.table("id int primary key", publish=False)
    cdc.execute(f"insert into {unpublished} values (1)")
    answer = explain(cdc.server, token, table=unpublished, pk="1")
    assert failed(answer) == ["publication"] and "alter publication" in answer["checks"][0]["fix"]
    nokey = cdc.table("id int")
    answer = explain(cdc.server, token, table=nokey, pk="1")
    assert failed(answer) == ["primary key"]
    secret = cdc.table("id int primary key, name text")
    cdc.execute(f"revoke select on {secret} from authenticated")
    cdc.execute(f"grant select (name) on {secret} to authenticated")
    cdc.execute(f"insert into {secret} values (1, 'x')")
    assert "column privileges" in failed(explain(cdc.server, token, table=secret, pk="1"))
    plain = cdc.table("id int primary key, list_id int")
    cdc.execute(f"insert into {plain} values (1, 7)")
    assert explain(cdc.server, token, table=plain, pk="1", filter="list_id=eq.7")["verdict"] == "delivered"
    answer = explain(cdc.server, token, table=plain, pk="1", filter="list_id=eq.8")
    assert failed(answer) == ["filter match"]
    answer = explain(cdc.server, token, table=plain, pk="1", filter="nope=eq.8")
    assert failed(answer) == ["filter"] and answer["reasons"][0].startswith("filter: Unable to subscribe")
    assert explain(cdc.server, token, table=plain, pk="1", event="TRUNCATE")["status"] == 422


async def test_trace_shows_a_change_written_to_one_user_and_hidden_from_another(cdc: Any) -> None:
    table = cdc.table("id int primary key, owner uuid, list_id int", rls=True)
    cdc.execute(f"create policy own on {table} for select to authenticated using (owner = auth.uid())")
    topic = unique_topic("traced-pg")
    binding = {"event": "*", "schema": "public", "table": table}
    async with trace(cdc.server.http_url, topic.removeprefix("realtime:"), cdc.server.service_key) as t, \
            open_client(cdc.server, V2) as c1, open_client(cdc.server, V2) as c2, open_client(cdc.server, V2) as c3:
        for c, sub, extra in ((c1, U1, {}), (c2, U2, {}), (c3, U1, {"filter": "list_id=eq.8"})):
            await c.join_ok(topic, {"postgres_changes": [{**binding, **extra}]},
                            access_token=make_token("authenticated", sub=sub))
            assert (await c.expect(event_is("system", topic), 20)).payload["message"] == SUBSCRIBED
        cdc.execute(f"insert into {table} values (1, '{U1}', 7)")
        event = await t.next("postgres_changes")
        await c1.expect(event_is("postgres_changes", topic))
    assert (event["table"], event["type"]) == (table, "INSERT")
    assert len(event["written"]) == 1
    assert sorted(s["why"].split(":")[0] for s in event["skipped"]) == ["RLS", "filter"]
    assert "list_id" not in json.dumps(event)
