"""``GET /api/explain/join`` against a real PostgreSQL with the policies of conftest.py: the
verdict is the join's own, and each policy on ``realtime.messages`` is named with its result for
the caller (docs/explain.md)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import uuid

from rawclient import V2, open_client

from realtime_channels import errors


def new_user() -> str:
    return str(uuid.uuid4())


def private_topic() -> str:
    return f"room:{uuid.uuid4().hex[:10]}"


def get(pdb: Any, path: str, bearer: str | None = None, apikey: str | None = None, **query: str) -> tuple[int, Any]:
    headers = {"apikey": apikey if apikey is not None else pdb.server.anon_key}
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    url = f"{pdb.server.http_url}{path}?{urllib.parse.urlencode(query)}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def check(answer: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in answer["checks"] if c["check"] == name]
    assert len(found) == 1, answer
    return found[0]


async def test_a_refused_private_join_names_the_policy_that_refused_it(pdb: Any) -> None:
    user, topic = new_user(), private_topic()
    token = pdb.token(user)
    status, answer = get(pdb, "/api/explain/join", bearer=token, topic=topic, private="true")
    assert status == 200, answer
    assert answer["verdict"] == "refused"
    assert answer["reason"] == errors.Unauthorized(topic).reason
    read = check(answer, "broadcast read")
    assert read["ok"] is False
    [policy] = read["policies"]
    assert policy["name"] == "rc members read" and policy["command"] == "SELECT"
    assert policy["roles"] == ["authenticated"] and policy["applies"] is True
    assert policy["result"] is False and "rc_members" in policy["expression"]
    write = check(answer, "broadcast write")
    assert [p["name"] for p in write["policies"]] == ["rc members write"] and write["policies"][0]["result"] is False
    # the join itself agrees
    async with open_client(pdb.server, V2) as c:
        reply = await c.join(f"realtime:{topic}", {"private": True}, access_token=token)
    assert reply.payload["response"]["reason"] == answer["reason"]


async def test_granted_rights_show_which_policy_grants_them(pdb: Any) -> None:
    user, topic = new_user(), private_topic()
    pdb.grant(user, topic, ("broadcast", "read"), ("presence", "write"))
    status, answer = get(pdb, "/api/explain/join", bearer=pdb.token(user), topic=topic, private="true")
    assert status == 200 and answer["verdict"] == "allowed" and answer["reason"] is None, answer
    assert check(answer, "token")["role"] == "authenticated"
    verdicts = {c["check"]: (c["ok"], [p["result"] for p in c["policies"]]) for c in answer["checks"]
                if "policies" in c}
    assert verdicts == {"broadcast read": (True, [True]), "presence read": (False, [False]),
                        "broadcast write": (False, [False]), "presence write": (True, [True])}
    # claims that no longer pass: the same user, banned
    status, banned = get(pdb, "/api/explain/join", bearer=pdb.token(user, banned=True), topic=topic, private="true")
    assert banned["verdict"] == "refused" and check(banned, "broadcast read")["policies"][0]["result"] is False


async def test_a_policy_for_another_role_does_not_apply_and_a_bad_token_is_the_reason(pdb: Any) -> None:
    topic = private_topic()
    status, answer = get(pdb, "/api/explain/join", topic=topic, private="true")  # the anon key itself
    assert status == 200 and answer["verdict"] == "refused"
    [policy] = check(answer, "broadcast read")["policies"]
    assert policy["applies"] is False and policy["result"] is None
    status, answer = get(pdb, "/api/explain/join", bearer="not-a-jwt", topic=topic, private="false")
    assert status == 200 and answer["verdict"] == "refused"
    assert answer["reason"] == check(answer, "token")["detail"] and not check(answer, "token")["ok"]
    status, answer = get(pdb, "/api/explain/join", bearer=pdb.token(new_user()), topic="lobby", private="false")
    assert answer["verdict"] == "allowed" and check(answer, "limits")["ok"] is True


async def test_explaining_another_users_token_needs_the_service_role(pdb: Any) -> None:
    user, topic = new_user(), private_topic()
    pdb.grant(user, topic, ("broadcast", "read"))
    other = pdb.token(user)
    status, _ = get(pdb, "/api/explain/join", bearer=pdb.token(new_user()), token=other, topic=topic, private="true")
    assert status == 403
    status, answer = get(pdb, "/api/explain/join", apikey=pdb.server.service_key, token=other, topic=topic,
                         private="true")
    assert status == 200 and answer["verdict"] == "allowed", answer
    status, _ = get(pdb, "/api/explain/join", apikey="bad", topic=topic)
    assert status == 401
