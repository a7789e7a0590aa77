"""Units of broadcast resume without servers: the retention ring, the gap arithmetic, the
offset trailer on the wire, the hub's hold/release switch-over, the session's effects and
answer, and the Python client helper's frame handling."""

from __future__ import annotations

import json
from typing import Any

import pytest

from realtime_channels.auth import JwtVerifier, mint_token
from realtime_channels.hub import Hub
from realtime_channels.protocol.codec import Broadcast, Message, Vsn
from realtime_channels.protocol.keys import StreamKey
from realtime_channels.protocol.session import (
    ReleaseResume,
    ResumeAnswer,
    ResumeBroadcasts,
    Send,
    Session,
    Subscribe,
)
from realtime_channels.pubsub import Envelope
from realtime_channels.pubsub.retention import Gap, Retention, RetentionLimits, plan
from realtime_channels.pubsub.wire import decode_envelope, encode_envelope, offset_trailer, read_offset
from realtime_channels.client import ResumePosition, _rewrite

SECRET = "resume-unit-test-secret-of-at-least-32-chars"
T0 = 1_700_000_000.0
TOPIC = "realtime:room1"
STREAM = "pub:room1"


def make_session() -> Session:
    return Session(verify=JwtVerifier(SECRET).verify, conn_token=mint_token(SECRET, "anon", now=T0, exp_seconds=3600),
                   new_presence_key=lambda: "key")


def join_msg(**config: Any) -> Message:
    return Message(TOPIC, "phx_join", {"config": config}, ref="1", join_ref="1")

B = Broadcast(TOPIC, {"type": "broadcast", "event": "e", "payload": {}})


# --- retention ring and gap arithmetic -------------------------------------------------------


def test_offsets_are_dense_per_stream_and_each_stream_has_its_own_epoch() -> None:
    r: Retention[str] = Retention(RetentionLimits(60, 10, 10_000))
    assert [r.append("a", "x", 1, 0.0)[0] for _ in range(3)] == [1, 2, 3]
    assert r.append("b", "y", 1, 0.0)[0] == 1
    assert r.append("a", "x", 1, 0.0)[1] != r.append("b", "y", 1, 0.0)[1]


def test_count_cap_and_gap_count() -> None:
    r: Retention[int] = Retention(RetentionLimits(60, 3, 10_000))
    epoch = ""
    for i in range(1, 8):
        _off, epoch = r.append("s", i, 1, 0.0)
    history, gap = r.history("s", 2, epoch, 1.0)
    assert [o for o, _ in history.entries] == [5, 6, 7]
    assert gap == Gap(2, epoch, 5)  # offsets 3 and 4 are gone
    history, gap = r.history("s", 5, epoch, 1.0)
    assert [o for o, _ in history.entries] == [6, 7] and gap is None
    history, gap = r.history("s", 7, epoch, 1.0)
    assert history.entries == () and gap is None


def test_window_expires_entries_and_idle_streams_start_a_new_epoch() -> None:
    r: Retention[int] = Retention(RetentionLimits(10, 100, 10_000))
    _, first_epoch = r.append("s", 1, 1, 0.0)
    r.append("s", 2, 1, 8.0)
    history, gap = r.history("s", 0, first_epoch, 12.0)  # entry 1 is older than the window
    assert [o for o, _ in history.entries] == [2] and gap == Gap(1, first_epoch, 2)
    offset, epoch = r.append("s", 3, 1, 40.0)  # idle for longer than the window: forgotten
    assert (offset, epoch != first_epoch) == (1, True)
    _, gap = r.history("s", 2, first_epoch, 40.0)
    assert gap == Gap(None, epoch, 1)


def test_total_bytes_are_bounded_and_the_least_recent_stream_gives_way() -> None:
    r: Retention[int] = Retention(RetentionLimits(60, 100, 100))
    for i in range(5):
        r.append("old", i, 10, 0.0)
    for i in range(6):
        r.append("new", i, 10, 1.0)
    assert r.total_bytes <= 100
    old, _ = r.history("old", 0, "x", 2.0)
    new, _ = r.history("new", 0, "x", 2.0)
    assert len(new.entries) == 6 and len(old.entries) == 4


@pytest.mark.parametrize(("after", "asked", "expected"), [
    (10, "E", (11, None)), (3, "E", (5, Gap(1, "E", 5))), (12, "E", (13, None)), (0, "X", (5, Gap(None, "E", 5))),
])
def test_plan(after: int, asked: str, expected: tuple[int, Gap | None]) -> None:
    assert plan("E", 12, 5, after, asked) == expected


# --- wire -------------------------------------------------------------------------------------


def test_offset_trailer_round_trips_and_can_be_appended_later() -> None:
    env = Envelope(StreamKey("pub:room1"), "n1", broadcast=B, offset=42, epoch="abcdefabcdef")
    assert decode_envelope(encode_envelope(env)) == env
    pending = encode_envelope(Envelope(StreamKey("pub:room1"), "n1", broadcast=B), offset_pending=True)
    completed = pending + offset_trailer(7, "0123456789ab")  # what the Redis script does
    assert read_offset(completed) == (7, "0123456789ab")
    assert decode_envelope(completed).offset == 7
    assert read_offset(encode_envelope(Envelope(StreamKey("s"), "n", broadcast=B))) is None


# --- hub switch-over --------------------------------------------------------------------------


class Sink:
    vsn = Vsn.V1

    def __init__(self) -> None:
        self.frames: list[Any] = []

    def write(self, frame: bytes) -> None:
        self.frames.append(json.loads(frame[2:] if frame[1] < 126 else frame[4:]))


def bc(i: int) -> Broadcast:
    return Broadcast(TOPIC, {"type": "broadcast", "event": "e", "payload": {"i": i}})


def test_held_live_messages_follow_the_replay_without_doubles() -> None:
    from realtime_channels.hub import Offsets

    hub, sink, plain = Hub(), Sink(), Sink()
    hub.add("s", "held", Offsets(sink, hold=True))
    hub.add("s", "plain", plain)
    for off in (5, 6, 7):  # live while the history loads; 5 and 6 are in the history too
        hub.fanout_broadcast("s", bc(off), offset=off, epoch="E")
    assert sink.frames == [] and len(plain.frames) == 3
    hub.release("s", "held", "E", [(4, bc(4)), (5, bc(5)), (6, bc(6))], covered=3)
    hub.fanout_broadcast("s", bc(6), offset=6, epoch="E")  # a late echo of a replayed one
    hub.fanout_broadcast("s", bc(8), offset=8, epoch="E")
    metas = [f["payload"]["meta"] for f in sink.frames]
    assert [m["offset"] for m in metas] == [4, 5, 6, 7, 8]
    assert [m.get("replayed", False) for m in metas] == [True, True, True, False, False]
    assert all("meta" not in f["payload"] for f in plain.frames)  # stock subscribers: today's bytes


# --- session ------------------------------------------------------------------------------------


def test_session_subscribes_held_then_asks_for_history_and_answers_gap_then_release() -> None:
    s = make_session()
    effects = s.receive(join_msg(broadcast={"resume": {"epoch": "E", "offset": 3}}), T0)
    assert Subscribe(StreamKey(STREAM), TOPIC, frozenset(), True, True) in effects
    assert effects[-1] == ResumeBroadcasts(StreamKey(STREAM), TOPIC, "1", "E", 3)
    entries = ((9, bc(9)),)
    out = s.resumed(TOPIC, "1", ResumeAnswer("E", entries, True, 5, 9))
    assert isinstance(out[0], Send) and out[0].message.payload["gap"] == {"missed": 5, "epoch": "E", "next": 9}
    assert out[1] == ReleaseResume(StreamKey(STREAM), TOPIC, "E", entries, 3)
    assert s.resumed(TOPIC, "stale", ResumeAnswer("E", ())) == []


def test_resume_true_turns_offsets_on_without_a_history_read() -> None:
    effects = make_session().receive(join_msg(broadcast={"resume": True}), T0)
    assert Subscribe(StreamKey(STREAM), TOPIC, frozenset(), True, False) in effects
    assert not any(isinstance(e, ResumeBroadcasts) for e in effects)


# --- Python client helper ---------------------------------------------------------------------


def test_python_helper_reads_positions_and_nulls_postgres_refs() -> None:
    pos = ResumePosition()
    taps = {TOPIC: pos}
    frame = {"topic": TOPIC, "event": "broadcast", "ref": None,
             "payload": {"type": "broadcast", "event": "e", "payload": {}, "meta": {"offset": 4, "epoch": "E"}}}
    assert _rewrite(json.dumps(frame), taps) == json.dumps(frame)
    assert pos.broadcast == ("E", 4)
    change = {"topic": TOPIC, "event": "postgres_changes", "ref": "00000000016B3748-00000002;replayed", "payload": {}}
    assert json.loads(_rewrite(json.dumps(change), taps))["ref"] is None
    assert pos.postgres == "00000000016B3748-00000002"
    other = json.dumps({**change, "topic": "realtime:other"})
    assert _rewrite(other, taps) == other  # channels without the helper are untouched
    assert pos.join_config({"broadcast": {"self": True}}) == {
        "broadcast": {"self": True, "resume": {"epoch": "E", "offset": 4}},
        "postgres_changes_options": {"resume": {"offset": "00000000016B3748-00000002"}},
    }
