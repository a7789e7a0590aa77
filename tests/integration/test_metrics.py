"""``GET /metrics`` (docs/metrics.md): Supabase's series move with real traffic, the bearer JWT
of ``METRICS_JWT_SECRET`` guards it, without a secret only this machine may read it, and with
``--workers`` one scrape answers for every worker."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from contextlib import AsyncExitStack
from typing import Any

import jwt
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rawclient import V1, V2, RawClient, open_client, reply_to, unique_topic, user_broadcast
from support import TEST_SECRET, RedisServer, ServerProc, free_port, wait_until

from realtime_channels.transport.ops import metrics_allowed

METRICS_SECRET = "metrics-secret-with-at-least-32-characters!"
PRESENCE_ON = {"presence": {"enabled": True}}
OK_REPLY = {"status": "ok", "response": {}}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metrics_token(secret: str = METRICS_SECRET) -> str:
    return jwt.encode({}, secret, algorithm="HS256")


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(srv: ServerProc, token: str | None = metrics_token()) -> tuple[Samples, set[str]]:
    """Every sample (name + labels → value), and the family types seen as ``name:type``."""
    status, text = get(f"{srv.http_url}/metrics", {"Authorization": f"Bearer {token}"} if token else None)
    assert status == 200, (status, text)
    samples: Samples = {}
    types: set[str] = set()
    for family in text_string_to_metric_families(text):
        types.add(f"{family.name}:{family.type}")
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples that carry ``labels`` (the per-tenant series: every tenant's)."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


async def track(c: RawClient, topic: str, payload: Any) -> None:
    ref = await c.push(topic, "presence", {"type": "presence", "event": "track", "payload": payload})
    assert (await c.expect(reply_to(ref, topic))).payload == OK_REPLY


# --- the series ------------------------------------------------------------------------------


async def test_supabase_series_move_with_traffic(server_factory: Any) -> None:
    srv = server_factory(REALTIME_METRICS_JWT_SECRET=METRICS_SECRET, REALTIME_MAX_CHANNELS_PER_CLIENT="2")
    before, types = scrape(srv)
    for family in ("realtime_connections_connected:gauge", "phoenix_connections_total:gauge",
                   "realtime_channel_events:counter", "realtime_channel_joins:counter",
                   "realtime_channel_presence_events:counter", "realtime_channel_db_events:counter",
                   "phoenix_channel_joined:counter", "realtime_broadcast_publish_to_write_seconds:histogram",
                   "realtime_channel_join_seconds:histogram", "realtime_rate_limit_refusals:counter",
                   "realtime_backbone_connected:gauge", "realtime_outbox_bytes:gauge"):
        assert family in types, family
    assert value(before, "realtime_backbone_connected") == 1 and value(before, "realtime_cluster_nodes") == 1
    topic = unique_topic("metrics")
    async with AsyncExitStack() as stack:
        sender, receiver, idle = [await stack.enter_async_context(open_client(srv, vsn)) for vsn in (V2, V1, V2)]
        await sender.join_ok(topic, PRESENCE_ON)
        await receiver.join_ok(topic, PRESENCE_ON)

        def settled() -> Samples | None:
            now, _ = scrape(srv)
            return now if value(now, "phoenix_connections_total") == 3 else None

        during = await wait_until(settled, 5, "three open sockets")
        # two sockets joined a channel, the third only connected
        assert value(during, "realtime_connections_connected") == 2
        assert value(during, "realtime_connections_connected_cluster") == 2
        assert value(during, "realtime_channel_joins_total") - value(before, "realtime_channel_joins_total") == 2
        assert value(during, "phoenix_channel_joined_total", result="ok", transport="websocket") == 2
        assert value(during, "realtime_channel_join_seconds_count") == 2
        # presence: the joins' presence_state, then a track and its diffs
        await track(sender, topic, {"name": "s"})
        await receiver.expect(lambda f: f.event == "presence_diff")
        after_track, _ = scrape(srv)
        presence = "realtime_channel_presence_events_total"
        assert value(after_track, presence) > value(during, presence) > value(before, presence)

        # one broadcast: sent once and delivered once, two events (the events/s limit's figure)
        await sender.broadcast(topic, "hello", {"n": 1})
        await receiver.expect(user_broadcast("hello", topic))
        after, _ = scrape(srv)
        events = "realtime_channel_events_total"
        assert value(after, events) - value(after_track, events) == 2
        hist = "realtime_broadcast_publish_to_write_seconds"
        assert value(after, f"{hist}_count") - value(after_track, f"{hist}_count") == 1
        assert value(after, f"{hist}_bucket", le="+Inf") == value(after, f"{hist}_count")
        assert value(after, "realtime_events_per_second") > 0

        # a join over REALTIME_MAX_CHANNELS_PER_CLIENT is refused: counted by its code
        await sender.join_ok(unique_topic("second"))
        refused = await sender.join(unique_topic("third"))
        assert refused.payload["status"] == "error"
        assert refused.payload["response"]["reason"].startswith("ChannelRateLimitReached")
        limited, _ = scrape(srv)
        assert value(limited, "realtime_rate_limit_refusals_total", code="ChannelRateLimitReached") == 1
        assert value(limited, "phoenix_channel_joined_total", result="error", transport="websocket") == 1
        assert value(limited, "realtime_channel_join_seconds_count") == 3  # refusals are not timed
        await idle.barrier()

    def closed() -> Samples | None:
        now, _ = scrape(srv)
        return now if value(now, "phoenix_connections_total") == 0 else None

    gone = await wait_until(closed, 5, "the sockets to be gone")
    assert value(gone, "realtime_connections_connected") == 0 and value(gone, "realtime_outbox_bytes") == 0
    assert "Traceback" not in srv.log()


# --- who may read it ---------------------------------------------------------------------------


@pytest.mark.parametrize("env_name", ["REALTIME_METRICS_JWT_SECRET", "METRICS_JWT_SECRET"])
def test_a_secret_requires_its_bearer_token(server_factory: Any, env_name: str) -> None:
    srv = server_factory(**{env_name: METRICS_SECRET})
    url = f"{srv.http_url}/metrics"
    assert get(url)[0] == 403  # even from loopback
    for header in (f"Bearer {metrics_token('some-other-secret-of-32-characters-or-more')}", "Bearer not-a-jwt",
                   f"Basic {metrics_token()}", "Bearer ", f"Bearer {jwt.encode({'exp': 1}, METRICS_SECRET)}"):
        assert get(url, {"Authorization": header}) == (403, ""), header
    status, text = get(url, {"Authorization": f"Bearer {metrics_token()}"})
    assert status == 200 and "realtime_connections_connected" in text


def local_non_loopback_address() -> str:
    """An address of this machine's own network interface (not loopback), found by routing."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # no packet is sent: only the route's source address is chosen
        address = str(s.getsockname()[0])
    assert not address.startswith("127."), address
    return address


def test_without_a_secret_only_this_machine_may_scrape(server_factory: Any) -> None:
    srv = server_factory(REALTIME_HOST="0.0.0.0")
    assert "realtime_connections" in srv.metrics()  # loopback, no token: tests/support.py scrapes so
    address = local_non_loopback_address()
    # the same machine, through its network interface: the server sees a non-loopback peer
    assert get(f"http://{address}:{srv.port}/metrics") == (403, "")
    assert get(f"http://{address}:{srv.port}/healthcheck")[0] == 200  # it is reachable there
    # a request that came through a proxy on this machine is not this machine's
    assert get(f"{srv.http_url}/metrics", {"X-Forwarded-For": "203.0.113.9"}) == (403, "")


def test_the_access_rule() -> None:
    token = {"Authorization": f"Bearer {metrics_token()}"}
    for remote in ("127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"):
        assert metrics_allowed(remote, {}, None), remote
    for remote in ("192.0.2.2", "10.0.0.1", "::ffff:10.0.0.1", "fd00::2", None):
        assert not metrics_allowed(remote, {}, None), remote
    assert not metrics_allowed("127.0.0.1", {"Forwarded": "for=203.0.113.9"}, None)
    assert not metrics_allowed("127.0.0.1", {"X-Client": "203.0.113.9"}, None, "X-Client")
    assert metrics_allowed("10.0.0.1", token, METRICS_SECRET)
    assert not metrics_allowed("127.0.0.1", {}, METRICS_SECRET)
    assert not metrics_allowed("127.0.0.1", token, "another-secret-of-at-least-32-characters")


# --- --workers ---------------------------------------------------------------------------------


async def test_one_scrape_answers_for_every_worker(tmp_path: Any) -> None:
    """Sockets are spread over the workers by the kernel; whichever worker answers, the scrape
    counts them all (and names both nodes)."""
    redis = RedisServer()
    redis.start()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REALTIME_")}
    env.update({"REALTIME_JWT_SECRET": TEST_SECRET, "REALTIME_METRICS_JWT_SECRET": METRICS_SECRET})
    log_path = tmp_path / "workers.log"
    with open(log_path, "wb") as log:
        sup = subprocess.Popen([sys.executable, "-m", "realtime_channels", "serve", "--workers", "2", "--port",
                                str(port), "--redis-url", redis.url], env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    srv = ServerProc(port=port, proc=sup, log_path=str(log_path))
    try:
        def two_nodes() -> Samples | None:
            try:
                now, _ = scrape(srv)
            except OSError:
                return None  # not listening yet
            nodes = {labels for (name, labels) in now if name == "realtime_node_info"}
            return now if len(nodes) == 2 else None

        first = await wait_until(two_nodes, 30, "both workers in one scrape")
        topic = unique_topic("workers")
        async with AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(open_client(srv, V2)) for _ in range(6)]
            for c in clients:
                await c.join_ok(topic)

            def all_counted() -> Samples | None:
                now, _ = scrape(srv)  # any worker may answer: each poll may reach another one
                ok = value(now, "phoenix_connections_total") == 6 and value(now, "realtime_connections_connected") == 6
                return now if ok else None

            counted = await wait_until(all_counted, 20, "six sockets counted across the workers")
            joins = "realtime_channel_joins_total"
            assert value(counted, joins) - value(first, joins) == 6
    finally:
        sup.send_signal(signal.SIGTERM)
        try:
            sup.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(sup.pid, signal.SIGKILL)
            sup.wait(5)
        redis.stop()
    assert sup.returncode == 0
    assert "Traceback" not in srv.log(), srv.log()[-4000:]
