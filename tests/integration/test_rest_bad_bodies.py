"""Bad bodies for the REST broadcast endpoints (protocol.md §1.8): bytes that are not JSON, JSON
of the wrong shape or types, deep or huge values, bodies too large, encodings that do not decode,
chunked bodies and ``Content-Length`` values that lie.

Each refused request gets its documented 4xx with a JSON ``message`` (or, for a request HTTP
cannot read at all, the HTTP layer's plain 400) — never a 500 nor a traceback — and nothing of a
refused batch is delivered: every refused body carries a well-formed message for the receiver's
topic, and a later good message (the barrier) is the first and only thing the receiver gets.
tests/integration/test_rest.py and test_hostile_payloads.py hold the ordinary refusals.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from support import ServerProc, start_server
from rawclient import V1, V2, RawClient, open_client, sub_topic, unique_topic, user_broadcast
from rawhttp import http_request

MAX_BODY = 60_000  # REALTIME_MAX_FRAME_BYTES of the server below: the REST body limit
BODY_TIMEOUT_MS = 400  # REALTIME_HANDSHAKE_TIMEOUT_MS: how long a body may take after its headers
NOT_JSON = (400, {"message": "Request body is not valid JSON"})
TOO_DEEP = (400, {"message": "Request body nests JSON more than 128 levels deep"})
UNREADABLE = (400, {"message": "Request body could not be read"})
TOO_LARGE = (413, {"message": "Request body is too large"})
LATE = (408, {"message": "Request body did not arrive in time"})
BATCH = "/api/broadcast"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    server = start_server(str(tmp_path_factory.mktemp("rest-bodies")), REALTIME_MAX_FRAME_BYTES=str(MAX_BODY),
                          REALTIME_HANDSHAKE_TIMEOUT_MS=str(BODY_TIMEOUT_MS))
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def clean_log(srv: ServerProc) -> Iterator[None]:
    start = len(srv.log())
    yield
    text = srv.log()[start:]
    assert "Traceback" not in text and " ERROR " not in text, text[-3000:]


def message(topic: str, event: str = "leak", **fields: Any) -> dict[str, Any]:
    return {"topic": sub_topic(topic), "event": event, "payload": {"n": 1}, **fields}


def body(topic: str, *extra: dict[str, Any]) -> bytes:
    """A batch whose first message is good: delivered, unless the whole batch is refused."""
    return json.dumps({"messages": [message(topic), *extra]}).encode()


def single(topic: str, event: str = "leak") -> str:
    return f"/api/broadcast/{sub_topic(topic)}/events/{event}"


@asynccontextmanager
async def receiver(srv: ServerProc, vsn: str = V2) -> AsyncIterator[tuple[RawClient, str]]:
    """A joined receiver; on the way out a good REST message must be the first thing it got."""
    topic = unique_topic("bodies")
    async with open_client(srv, vsn) as rx:
        await rx.join_ok(topic)
        yield rx, topic
        resp = await post(srv, BATCH, json.dumps({"messages": [message(topic, "barrier")]}).encode())
        assert (resp.status, resp.body) == (202, b"")
        await rx.assert_nothing_before(user_broadcast("barrier", topic))


async def post(srv: ServerProc, path: str, data: bytes, **headers: str) -> Any:
    hdrs = {"apikey": srv.anon_key, "Content-Type": "application/json", **headers}
    return await http_request(srv, "POST", path, headers=hdrs, body=data)


async def refused(srv: ServerProc, path: str, data: bytes, expected: tuple[int, Any], **headers: str) -> None:
    resp = await post(srv, path, data, **headers)
    assert (resp.status, resp.json()) == expected, resp.body[:300]
    assert resp.headers["Content-Type"].startswith("application/json")


# --- raw HTTP, for what HTTP clients will not send ------------------------------------------


def raw_request(srv: ServerProc, path: str, headers: dict[str, str], data: bytes = b"") -> bytes:
    head = {"Host": "127.0.0.1", "apikey": srv.anon_key, "Content-Type": "application/json",
            "Connection": "close", **headers}
    return (f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items()) + "\r\n").encode() + data


async def exchange(srv: ServerProc, data: bytes, *, half_close: bool = False,
                   first_only: bool = False) -> list[tuple[int, str, bytes]]:
    """Send bytes, read until the server closes (or, ``first_only``, until one whole response);
    the responses as (status, content type, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    raw = b""
    try:
        writer.write(data)
        await writer.drain()
        if half_close:
            writer.write_eof()
        async with asyncio.timeout(5):
            while chunk := await reader.read(65536):
                raw += chunk
                if first_only and parse(raw):
                    break
    finally:
        writer.close()
    return parse(raw)


def parse(raw: bytes) -> list[tuple[int, str, bytes]]:
    """The whole responses in ``raw``."""
    responses = []
    while b"\r\n\r\n" in raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(fields.get("content-length", "0"))
        if len(rest) < length:
            break
        responses.append((int(lines[0].split()[1]), fields.get("content-type", ""), rest[:length]))
        raw = rest[length:]
    return responses


def json_answer(responses: list[tuple[int, str, bytes]]) -> tuple[int, Any]:
    (status, ctype, data), = responses
    assert ctype.startswith("application/json"), (status, ctype, data)
    return status, json.loads(data)


def http_layer_400(responses: list[tuple[int, str, bytes]]) -> None:
    """§1.8: a request HTTP cannot read is answered 400 in plain text by the HTTP layer."""
    assert [(s, c.split(";")[0]) for s, c, _ in responses][-1] == (400, "text/plain"), responses
    assert not re.search(rb"Traceback|Error\(|File \"", responses[-1][2]), responses


def a_400(responses: list[tuple[int, str, bytes]]) -> None:
    """Refused with 400: by the API (its JSON answer to the truncated request, then perhaps the
    HTTP layer's for what follows) or by the HTTP layer alone."""
    *api, last = responses
    if last[1].startswith("text/plain"):
        http_layer_400([last])
    else:
        api.append(last)
    assert all(json_answer([r]) in (NOT_JSON, UNREADABLE) for r in api), responses
    assert len(api) <= 1 and len(responses) <= 2, responses


# --- bytes that are not JSON ---------------------------------------------------------------


@pytest.mark.parametrize("where", ["batch", "single"])
async def test_bodies_that_are_not_json_are_400(srv: ServerProc, where: str) -> None:
    async with receiver(srv) as (_, topic):
        good = body(topic)
        cases = [
            good.replace(b'"leak"', b'"le\xffak"'),  # invalid UTF-8
            good.replace(b'"leak"', b'"\xed\xa0\x80"'),  # a UTF-8-encoded surrogate
            good[:-3], good[: len(good) // 2], b"{", b'{"messages":[]',  # truncated
            good.replace(b'{"n": 1}', b'{"n": NaN}'), good.replace(b'{"n": 1}', b'{"n": Infinity}'),
            good.replace(b'{"n": 1}', b'{"n": -Infinity}'), good.replace(b'{"n": 1}', b'{"n": 1e400}'),
            good.replace(b'{"n": 1}', b'{"n": 1' + b"0" * 400 + b"}"),  # beyond a double's range
            b"\xef\xbb\xbf" + good,  # a byte-order mark
            good.replace(b'"leak"', b"'leak'"), good + b"x", b"<xml/>",
        ]
        path = BATCH if where == "batch" else single(topic)
        for data in cases:
            await refused(srv, path, data, NOT_JSON)
        for field in ("topic", "event", "payload", "id", "private", "extra"):
            deep = json.loads(good)
            deep["messages"][0][field] = json.loads("[" * 200 + "]" * 200)
            await refused(srv, path, json.dumps(deep).encode(), TOO_DEEP)


# --- JSON of the wrong shape or types ---------------------------------------------------------


def _shape_cases(topic: str) -> list[tuple[Any, Any]]:
    good = message(topic)
    deep_100 = json.loads("[" * 100 + "]" * 100)
    return [
        ([good], {"messages": ["can't be blank"]}), ("x", {"messages": ["can't be blank"]}),
        (42, {"messages": ["can't be blank"]}), (None, {"messages": ["can't be blank"]}),
        ({"messages": None}, {"messages": ["can't be blank"]}), ({"message": [good]}, {"messages": ["can't be blank"]}),
        ({"messages": good}, {"messages": ["is invalid"]}), ({"messages": "x"}, {"messages": ["is invalid"]}),
        ({"messages": 7}, {"messages": ["is invalid"]}), ({"messages": True}, {"messages": ["is invalid"]}),
        ({"messages": [good, "x"]}, {"messages": [{}, {"topic": ["can't be blank"], "payload": ["can't be blank"],
                                                       "event": ["can't be blank"]}]}),
        ({"messages": [good, None]}, {"messages": [{}, {"topic": ["can't be blank"], "payload": ["can't be blank"],
                                                        "event": ["can't be blank"]}]}),
        *(({"messages": [good, {**good, field: value}]}, {"messages": [{}, {field: [text]}]})
          for field, value, text in [
              ("topic", 5, "is invalid"), ("topic", ["a"], "is invalid"), ("topic", deep_100, "is invalid"),
              ("topic", "", "can't be blank"), ("event", {"e": 1}, "is invalid"), ("event", False, "is invalid"),
              ("event", 2**64, "is invalid"), ("payload", [1], "is invalid"), ("payload", 3.5, "is invalid"),
              ("id", 5, "is invalid"), ("id", "not-a-uuid", "is invalid"), ("id", {"a": 1}, "is invalid"),
              ("private", "yes", "is invalid"), ("private", 1, "is invalid"), ("private", [True], "is invalid"),
              ("private", {"v": True}, "is invalid")]),
    ]


async def test_batches_of_the_wrong_shape_or_types_are_422_and_send_nothing(srv: ServerProc) -> None:
    async with receiver(srv, V1) as (_, topic):
        for value, errors in _shape_cases(topic):
            resp = await post(srv, BATCH, json.dumps(value).encode())
            assert (resp.status, resp.json()) == (422, {"errors": errors}), value


@pytest.mark.parametrize("value", ["TRUE", "True", True], ids=["TRUE", "True", "boolean"])
async def test_private_in_any_case_keeps_a_message_off_the_public_channel(srv: ServerProc, value: Any) -> None:
    """``private`` is read like a join flag (§3.2): a private message never reaches the public
    channel of its sub-topic, and the server without a database grants no private write."""
    async with receiver(srv) as (_, topic):
        resp = await post(srv, BATCH, json.dumps({"messages": [message(topic, private=value)]}).encode())
        assert (resp.status, resp.body) == (202, b"")
        await refused(srv, single(topic) + "?private=yes", b"{}", (422, {"errors": {"private": ["is invalid"]}}))


async def test_duplicate_keys_the_last_one_counts_and_deep_payloads_pass_verbatim(srv: ServerProc) -> None:
    async with receiver(srv) as (rx, topic):
        bad_then_good = ('{"messages": [{"topic": 5}], "messages": [{"topic": "%s", "event": "first", "event": "dup",'
                         ' "payload": {"a": 1, "a": 2}}]}' % sub_topic(topic)).encode()
        assert (await post(srv, BATCH, bad_then_good)).status == 202
        assert (await rx.expect(user_broadcast("dup", topic))).payload["payload"] == {"a": 2}
        deep = json.loads("[" * 120 + "]" * 120)  # 124 levels with the body around it
        big = 10**30
        data = json.dumps({"messages": [message(topic, "deep", payload={"d": deep, "big": big})]}).encode()
        assert (await post(srv, BATCH, data)).status == 202
        frame = await rx.expect(user_broadcast("deep", topic))
        assert frame.payload["payload"] == {"d": deep, "big": big} and str(big) in str(frame.raw)


# --- size, encodings, chunks and lengths that lie -------------------------------------------------


async def test_bodies_over_the_limit_are_413_whatever_their_transfer(srv: ServerProc) -> None:
    async with receiver(srv) as (_, topic):
        pad = {"pad": "x" * MAX_BODY}
        over = body(topic, message(topic, payload=pad))
        await refused(srv, BATCH, over, TOO_LARGE)
        await refused(srv, single(topic), json.dumps(pad).encode(), TOO_LARGE)
        octets = {"Content-Type": "application/octet-stream"}
        await refused(srv, single(topic), b"\x00" * (MAX_BODY + 1), TOO_LARGE, **octets)
        bomb = gzip.compress(body(topic, message(topic, payload={"pad": " " * (20 * MAX_BODY)})))
        assert len(bomb) < MAX_BODY // 10
        await refused(srv, BATCH, bomb, TOO_LARGE, **{"Content-Encoding": "gzip"})
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (over[i:i + 8000] for i in range(0, len(over), 8000)))
        answer = await exchange(srv, raw_request(srv, BATCH, {"Transfer-Encoding": "chunked"}, chunked + b"0\r\n\r\n"))
        assert json_answer(answer) == TOO_LARGE


async def test_content_encodings_that_do_not_decode_are_400(srv: ServerProc) -> None:
    async with receiver(srv) as (rx, topic):
        good = body(topic)
        for encoding, data in [("gzip", b"garbage-not-gzip"), ("gzip", b"\x1f\x8b" + b"\xff" * 40),
                               ("deflate", b"garbage"), ("deflate", b"\x78\x9c" + b"\xff" * 40)]:
            await refused(srv, BATCH, data, UNREADABLE, **{"Content-Encoding": encoding})
            await refused(srv, single(topic), data, UNREADABLE, **{"Content-Encoding": encoding})
        # a stream cut short: the start of the document (not JSON), or refused by the HTTP layer
        # when its decoder notices first
        for encoding, data in [("gzip", gzip.compress(good)[:-12]), ("deflate", zlib.compress(good)[:-6])]:
            headers = {"Content-Encoding": encoding, "Content-Length": str(len(data))}
            a_400(await exchange(srv, raw_request(srv, BATCH, headers, data)))
        http_layer_400(await exchange(srv, raw_request(srv, BATCH, {"Content-Encoding": "br",
                                                                    "Content-Length": str(len(good))}, good)))
        resp = await post(srv, BATCH, gzip.compress(json.dumps({"messages": [message(topic, "zipped")]}).encode()),
                          **{"Content-Encoding": "gzip"})
        assert (resp.status, resp.body) == (202, b"")  # a body that does decode is read as usual
        await rx.expect(user_broadcast("zipped", topic))


async def test_chunked_bodies(srv: ServerProc) -> None:
    async with receiver(srv) as (rx, topic):
        good = json.dumps({"messages": [message(topic, "chunked")]}).encode()
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(good[i:i + 7]), good[i:i + 7]) for i in range(0, len(good), 7))
        chunked = {"Transfer-Encoding": "chunked"}
        answer = await exchange(srv, raw_request(srv, BATCH, chunked, chunks + b"0\r\n\r\n"))
        assert [(s, b) for s, _, b in answer] == [(202, b"")]
        await rx.expect(user_broadcast("chunked", topic))
        leak = body(topic)
        http_layer_400(await exchange(srv, raw_request(srv, BATCH, chunked, b"zz\r\n" + leak + b"\r\n0\r\n\r\n")))
        both = {**chunked, "Content-Length": str(len(leak))}  # both framings at once: refused
        http_layer_400(await exchange(srv, raw_request(srv, BATCH, both, leak)))
        # the peer stops half-way: nobody is left to answer, and nothing is sent
        cut = b"%x\r\n%s" % (len(leak), leak[:20])
        assert await exchange(srv, raw_request(srv, BATCH, chunked, cut), half_close=True) == []


async def test_content_length_that_lies(srv: ServerProc) -> None:
    async with receiver(srv) as (_, topic):
        leak = body(topic)
        for length in ("-5", "abc", "1e3", "0x20", f"{len(leak)}, {len(leak)}"):
            http_layer_400(await exchange(srv, raw_request(srv, BATCH, {"Content-Length": length}, leak)))
        # shorter than the body: the request is what the length says (truncated JSON), and what
        # follows is no request at all (the HTTP layer may refuse the whole exchange at once)
        half = {"Content-Length": str(len(leak) // 2)}
        for connection in ("close", "keep-alive"):
            a_400(await exchange(srv, raw_request(srv, BATCH, {**half, "Connection": connection}, leak)))
        # longer than the body: the peer gives up (no answer can reach it), or waits (408)
        long_headers = {"Content-Length": str(len(leak) + 100)}
        assert await exchange(srv, raw_request(srv, BATCH, long_headers, leak), half_close=True) == []
        # (the server reads and drops what still comes for a while, then closes: aiohttp's lingering)
        assert json_answer(await exchange(srv, raw_request(srv, BATCH, long_headers, leak), first_only=True)) == LATE
        answer = await exchange(srv, raw_request(srv, single(topic), long_headers, b"{}"), first_only=True)
        assert json_answer(answer) == LATE


async def test_single_endpoint_takes_any_json_value_as_the_payload(srv: ServerProc) -> None:
    """§1.8: the single endpoint's body is the payload, and any JSON value is one."""
    async with receiver(srv, V1) as (rx, topic):
        for i, value in enumerate([[1, 2], "text", 42, None, True, {"nested": {"a": [1]}}]):
            resp = await post(srv, single(topic, f"v{i}"), json.dumps(value).encode())
            assert (resp.status, resp.body) == (202, b"")
            assert (await rx.expect(user_broadcast(f"v{i}", topic))).payload["payload"] == value
