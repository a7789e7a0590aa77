"""``REALTIME_LOG_FORMAT=json``: one JSON object per line, with the socket, topic and request
each record was logged for (docs/observability.md).

The server under test is pointed at a database port nothing listens on, so that a private
channel's policy check and a private REST broadcast's write check fail and are logged at
WARNING — from inside a socket's join and an HTTP request respectively.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from support import ServerProc, free_port, start_server, wait_until
from rawclient import V2, open_client, unique_topic

from realtime_channels import logs

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture(scope="module")
def json_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    unreachable = f"postgresql://postgres@127.0.0.1:{free_port()}/none?connect_timeout=2"
    srv = start_server(str(tmp_path_factory.mktemp("json-logs")), REALTIME_LOG_FORMAT="json",
                       REALTIME_DATABASE_URL=unreachable)
    yield srv
    srv.stop()


def records(server: ServerProc) -> list[dict[str, Any]]:
    """Every line of the server's output, each parsed as JSON (a line that is not fails)."""
    out = []
    for line in server.log().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
        assert isinstance(record, dict), line
        out.append(record)
    return out


def finds(server: ServerProc, pred: Callable[[dict[str, Any]], bool]) -> Callable[[], list[dict[str, Any]] | None]:
    return lambda: [r for r in records(server) if pred(r)] or None


def rest_broadcast(server: ServerProc, sub_topic: str, headers: dict[str, str]) -> int:
    req = urllib.request.Request(
        f"{server.http_url}/api/broadcast/{sub_topic}/events/ping?private=true", data=b"{}", method="POST",
        headers={"apikey": server.service_key, "Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


async def test_every_line_is_a_json_record_with_timestamp_level_logger_and_message(json_server: ServerProc) -> None:
    [started] = await wait_until(finds(json_server, lambda r: "listening on" in r.get("message", "")), 10,
                                 "the listening record")
    assert ISO_UTC.match(started["timestamp"]), started
    assert started["level"] == "info"
    assert started["logger"] == "realtime_channels"
    assert "socket_id" not in started and "topic" not in started and "tenant" not in started
    for record in records(json_server):
        assert {"timestamp", "level", "logger", "message"} <= set(record), record


async def test_a_policy_check_that_fails_during_a_join_carries_the_socket_and_topic(json_server: ServerProc) -> None:
    topic = unique_topic("private-room")
    async with open_client(json_server, V2) as c:
        reply = await c.join(topic, {"private": True})
        assert reply.payload["status"] == "error"
        failed = await wait_until(
            finds(json_server, lambda r: r.get("topic") == topic and "could not evaluate policies" in r["message"]),
            10, "the policy failure record")
    [record] = failed
    assert record["level"] == "warning"
    assert record["logger"] == "realtime_channels.node"
    assert re.fullmatch(r"[0-9a-f]{8}-\d+", record["socket_id"]), record
    assert "request_id" in record  # the upgrade request's
    # every record logged for that join is the same socket's
    others = [r for r in records(json_server) if r.get("topic") == topic]
    assert {r["socket_id"] for r in others} == {record["socket_id"]}


async def test_a_second_socket_has_its_own_socket_id(json_server: ServerProc) -> None:
    ids = []
    for _ in range(2):
        topic = unique_topic("private-room")
        async with open_client(json_server, V2) as c:
            await c.join(topic, {"private": True})
            [record, *_] = await wait_until(
                finds(json_server, lambda r, t=topic: r.get("topic") == t and "policies" in r["message"]), 10,
                "the policy failure record")
            ids.append(record["socket_id"])
    assert ids[0] != ids[1]


async def test_a_rest_broadcast_logs_with_the_callers_request_id(json_server: ServerProc) -> None:
    sub_topic = unique_topic("rest")[len("realtime:"):]
    assert rest_broadcast(json_server, sub_topic, {"X-Request-Id": "req-7f3a.42"}) == 500
    failed = await wait_until(
        finds(json_server, lambda r: r.get("request_id") == "req-7f3a.42"), 10, "a record of the request")
    assert all(r["topic"] == f"realtime:{sub_topic}" for r in failed), failed
    assert all("socket_id" not in r for r in failed), failed
    assert any(r["level"] == "warning" and "unreachable" in r["message"] for r in failed), failed


async def test_a_request_without_an_id_gets_a_new_one_and_a_hostile_one_is_replaced(json_server: ServerProc) -> None:
    sub_a, sub_b = (unique_topic("rest")[len("realtime:"):] for _ in range(2))
    rest_broadcast(json_server, sub_a, {})
    rest_broadcast(json_server, sub_b, {"X-Request-Id": "x" * 500})
    [a, *_] = await wait_until(finds(json_server, lambda r: r.get("topic") == f"realtime:{sub_a}"), 10, "record a")
    [b, *_] = await wait_until(finds(json_server, lambda r: r.get("topic") == f"realtime:{sub_b}"), 10, "record b")
    assert re.fullmatch(r"[0-9a-f]{32}", a["request_id"]) and re.fullmatch(r"[0-9a-f]{32}", b["request_id"])
    assert a["request_id"] != b["request_id"]


async def test_a_topic_with_line_breaks_stays_on_one_line_and_reads_back_exactly(json_server: ServerProc) -> None:
    topic = unique_topic("evil") + '\n{"level":"error","message":"forged"}\u2028\x1b[31m\x85'
    async with open_client(json_server, V2) as c:
        await c.join(topic, {"private": True})
        [record] = await wait_until(
            finds(json_server, lambda r: r.get("topic") == topic and "could not evaluate" in r["message"]), 10,
            "the record of the hostile topic")
    assert topic[len("realtime:"):] in record["message"]
    assert not any(r.get("message") == "forged" for r in records(json_server))
    raw = [line for line in json_server.log().splitlines() if "forged" in line]
    assert raw and all("\u2028" not in line and "\x85" not in line and "\x1b" not in line for line in raw)


async def test_nothing_is_logged_per_message_at_info(json_server: ServerProc) -> None:
    topic = unique_topic("quiet")
    async with open_client(json_server, V2) as c:
        await c.join_ok(topic, {"broadcast": {"self": True}})
        before = len(records(json_server))
        for i in range(50):
            await c.broadcast(topic, "tick", {"i": i})
        await c.heartbeat()
        await c.barrier()
    # nothing from the socket at all: not its join, broadcasts, heartbeat or close
    assert [r for r in records(json_server)[before:] if "socket_id" in r or r.get("topic") == topic] == []


def test_a_traceback_is_one_string_field(capsys: pytest.CaptureFixture[str]) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("realtime_channels.test_logs_json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with logs.bind(socket_id="abc-1", topic="realtime:t", tenant="acme"):
            try:
                raise ValueError("line one\nline two")
            except ValueError:
                logger.exception("failed for %s", "realtime:t")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    [line] = capsys.readouterr().err.splitlines()
    record = json.loads(line)
    assert record["message"] == "failed for realtime:t"
    assert record["level"] == "error"
    assert (record["socket_id"], record["topic"], record["tenant"]) == ("abc-1", "realtime:t", "acme")
    assert record["exc_info"].startswith("Traceback (most recent call last):")
    assert record["exc_info"].endswith("ValueError: line one\nline two")
