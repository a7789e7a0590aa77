"""Broadcast offsets and resume on the wire (protocol.md §4.10), with raw sockets against a
real server on the in-memory backbone."""

from __future__ import annotations

from typing import Any

import pytest
from rawclient import V1, V2, Frame, open_client, system_msg, unique_topic, user_broadcast

pytestmark = pytest.mark.asyncio


def is_broadcast(frame: Frame) -> bool:
    return frame.event == "broadcast"


def meta_of(frame: Frame) -> dict[str, Any]:
    meta = frame.broadcast_view().get("meta")
    assert isinstance(meta, dict), frame.raw
    return meta


async def send_n(server: Any, topic: str, first: int, count: int) -> None:
    """``count`` text broadcasts ``n`` with payload ``{"i": first…}``, acked so they were taken."""
    async with open_client(server, V2) as pub:
        await pub.join_ok(topic, {"broadcast": {"ack": True}})
        for i in range(first, first + count):
            ref = await pub.broadcast(topic, "n", {"i": i})
            await pub.expect(lambda f, ref=ref: f.ref == ref and f.event == "phx_reply")


@pytest.mark.parametrize("vsn", [V1, V2])
async def test_offsets_are_added_only_for_channels_that_ask(server: Any, vsn: str) -> None:
    topic = unique_topic()
    async with open_client(server, vsn) as stock, open_client(server, vsn) as numbered, \
            open_client(server, V2) as pub:
        await stock.join_ok(topic)
        await numbered.join_ok(topic, {"broadcast": {"resume": True}})
        await pub.join_ok(topic)
        await pub.broadcast(topic, "text", {"a": 1})                        # text form
        await pub.send_kind3(topic, "user", b'{"b":2}', 1)                  # user form, JSON
        plain = [await stock.expect(is_broadcast), await stock.expect(is_broadcast)]
        marked = [await numbered.expect(is_broadcast), await numbered.expect(is_broadcast)]
        # the stock channel gets today's exact frames
        assert plain[0].value == stock.wire(None, None, topic, "broadcast",
                                            {"type": "broadcast", "event": "text", "payload": {"a": 1}})
        assert "meta" not in plain[1].broadcast_view()
        first, second = meta_of(marked[0]), meta_of(marked[1])
        assert set(first) == {"offset", "epoch"} and first["epoch"] == second["epoch"]
        assert second["offset"] == first["offset"] + 1
        if vsn == V2:
            assert marked[1].kind == 4 and plain[1].kind == 4  # kind-4 metadata carries it
        assert marked[0].broadcast_view()["payload"] == {"a": 1}


async def test_resume_replays_what_was_missed_once_in_order_then_live(server: Any) -> None:
    topic = unique_topic()
    async with open_client(server, V2) as first:
        await first.join_ok(topic, {"broadcast": {"resume": True}})
        await send_n(server, topic, 0, 3)
        seen = [await first.expect(is_broadcast) for _ in range(3)]
    position = meta_of(seen[-1])
    await send_n(server, topic, 3, 4)  # missed while away
    async with open_client(server, V1) as again:
        await again.join_ok(topic, {"broadcast": {"resume": {"epoch": position["epoch"], "offset": position["offset"]}}})
        await send_n(server, topic, 7, 2)  # live after the resume
        got = [await again.expect(is_broadcast) for _ in range(6)]
        assert [f.broadcast_view()["payload"]["i"] for f in got] == list(range(3, 9))
        assert [meta_of(f)["offset"] for f in got] == list(range(position["offset"] + 1, position["offset"] + 7))
        assert [meta_of(f).get("replayed", False) for f in got] == [True] * 4 + [False] * 2
        await again.assert_nothing_pending(is_broadcast)
        await again.assert_nothing_pending(system_msg(topic))


async def test_a_resume_from_beyond_retention_reports_how_many_were_lost(server_factory: Any) -> None:
    server = server_factory(REALTIME_RESUME_MAX_MESSAGES="5")
    topic = unique_topic()
    async with open_client(server, V2) as first:
        await first.join_ok(topic, {"broadcast": {"resume": True}})
        await send_n(server, topic, 0, 1)
        position = meta_of(await first.expect(is_broadcast))
    await send_n(server, topic, 1, 12)  # offsets 2…13; 9…13 retained
    async with open_client(server, V2) as again:
        await again.join_ok(topic, {"broadcast": {"resume": {"epoch": position["epoch"], "offset": position["offset"]}}})
        gap = await again.expect(system_msg(topic))
        assert gap.payload == {
            "extension": "broadcast", "status": "ok", "channel": topic.removeprefix("realtime:"),
            "message": "ResumeGap: 7 messages are no longer retained",
            "gap": {"missed": 7, "epoch": position["epoch"], "next": position["offset"] + 8},
        }
        got = [await again.expect(is_broadcast) for _ in range(5)]
        assert again.position(gap) < again.position(got[0])
        assert [f.broadcast_view()["payload"]["i"] for f in got] == list(range(8, 13))


async def test_an_unknown_epoch_reports_a_gap_of_unknown_size_and_replays_what_is_retained(server: Any) -> None:
    topic = unique_topic()
    await send_n(server, topic, 0, 2)
    async with open_client(server, V2) as client:
        await client.join_ok(topic, {"broadcast": {"resume": {"epoch": "000000000000", "offset": 40}}})
        gap = await client.expect(system_msg(topic))
        assert gap.payload["message"] == ("ResumeGap: the messages after the given offset are no longer "
                                          "retained (how many is unknown)")
        assert gap.payload["gap"]["missed"] is None and gap.payload["gap"]["next"] == 1
        got = [await client.expect(is_broadcast) for _ in range(2)]
        assert [meta_of(f)["offset"] for f in got] == [1, 2]
        assert all(meta_of(f)["epoch"] == gap.payload["gap"]["epoch"] for f in got)


@pytest.mark.parametrize("resume", ["yes", 1, {"epoch": "e"}, {"offset": 3}, {"epoch": "e", "offset": -1},
                                    {"epoch": 5, "offset": 1}, {"epoch": "e", "offset": True}, []])
async def test_invalid_resume_parameters_refuse_the_join(server: Any, resume: Any) -> None:
    async with open_client(server, V2) as client:
        reply = await client.join(unique_topic(), {"broadcast": {"resume": resume}})
        assert reply.payload == {"status": "error",
                                 "response": {"reason": "UnableToResumeMessages: Resume parameters are invalid"}}


async def test_resume_is_refused_when_retention_is_off(server_factory: Any) -> None:
    server = server_factory(REALTIME_RESUME_WINDOW_S="0")
    async with open_client(server, V2) as client:
        reply = await client.join(unique_topic(), {"broadcast": {"resume": True}})
        assert reply.payload["response"] == {"reason": "UnableToResumeMessages: Resume is not enabled on this server"}
        topic = unique_topic()
        await client.join_ok(topic)  # stock joins are unaffected
        await client.broadcast(topic, "x", {})
