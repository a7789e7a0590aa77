"""The opt-in per-client-address connection cap (``REALTIME_MAX_CONNECTIONS_PER_ADDRESS``): one
client cannot take every concurrent-user slot, other addresses are untouched, a closed socket
frees its slot, and behind a proxy the address comes from the header it appends to."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

from rawclient import open_client, refused_handshake, unique_topic, user_broadcast
from websockets.exceptions import InvalidStatus

from support import wait_async

REFUSED = {"error": "Too many connections from this client address"}
NO_BACKOFF = {"REALTIME_CONNECT_ERROR_BACKOFF_MS": "0"}


async def connect_when_freed(server: Any, stack: AsyncExitStack, source: str, timeout: float = 10) -> Any:
    """Open a socket from ``source`` as soon as the server has released a slot."""
    async def attempt() -> Any:
        try:
            return await stack.enter_async_context(open_client(server, source=source))
        except InvalidStatus:
            return None
    return await wait_async(attempt, timeout, "the server to release a slot")


async def test_the_cap_refuses_one_address_only_and_a_closed_socket_frees_its_slot(server_factory: Any) -> None:
    srv = server_factory(REALTIME_MAX_CONNECTIONS_PER_ADDRESS="3", **NO_BACKOFF)
    topic = unique_topic("cap")
    async with AsyncExitStack() as stack:
        mine = [await stack.enter_async_context(open_client(srv, source="127.0.0.1")) for _ in range(3)]
        refusal = await refused_handshake(srv, source="127.0.0.1")
        assert (refusal.status, refusal.json()) == (429, REFUSED)
        # another address is not affected, and the capped one's sockets all still work
        other = await stack.enter_async_context(open_client(srv, source="127.0.0.2"))
        await other.join_ok(topic)
        for c in mine:
            await c.join_ok(topic)
        await mine[0].broadcast(topic, "hi", {})
        await other.expect(user_broadcast("hi", topic))
        await mine[2].close()
        await connect_when_freed(srv, stack, "127.0.0.1")
        refusal = await refused_handshake(srv, source="127.0.0.1")
        assert refusal.status == 429
    assert "Traceback" not in srv.log()


async def test_behind_a_proxy_the_address_is_the_last_entry_of_its_header(server_factory: Any) -> None:
    srv = server_factory(REALTIME_MAX_CONNECTIONS_PER_ADDRESS="1", REALTIME_CLIENT_ADDRESS_HEADER="X-Forwarded-For",
                         **NO_BACKOFF)
    async with AsyncExitStack() as stack:
        # all from one TCP peer (the proxy), two different clients
        await stack.enter_async_context(open_client(srv, headers={"X-Forwarded-For": "spoofed, 198.51.100.1"}))
        await stack.enter_async_context(open_client(srv, headers={"X-Forwarded-For": "spoofed, 198.51.100.2"}))
        # a client cannot escape by prepending entries: the proxy's own entry counts
        refusal = await refused_handshake(srv, headers={"X-Forwarded-For": "203.0.113.9, 198.51.100.1"})
        assert (refusal.status, refusal.json()) == (429, REFUSED)
        # without the header the peer address counts
        await stack.enter_async_context(open_client(srv))
        assert (await refused_handshake(srv)).status == 429


async def test_without_the_setting_one_address_may_hold_many_sockets(server_factory: Any) -> None:
    srv = server_factory(**NO_BACKOFF)
    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(open_client(srv, source="127.0.0.1")) for _ in range(20)]
        await asyncio.gather(*(c.barrier() for c in clients))
