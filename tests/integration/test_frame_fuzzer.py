"""A seeded fuzzer of inbound frames against a running server (protocol.md §1.5, §1.6, §2.4).

Thousands of mutated frames (fuzzframes.py) go to one socket, each followed by a heartbeat
barrier, so everything an input caused is in hand before the next one: the backbone is in-process
and delivers synchronously.  Each input must get exactly what the wire contract says
(``fuzzverdict.verdict``), every frame the server writes is well formed and carries only
documented error texts and no exception text, the socket stays open except for a text frame that
is not UTF-8 (closed 1007), a bystander in another room keeps its round trips, the server log
stays free of tracebacks and errors, and the server's memory stays bounded.

A failure names the seed and the input's index; ``RC_FUZZ_SEED=<n>`` runs another seed.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from support import ServerProc, make_token, start_server
from rawclient import V1, V2, Frame, RawClient, open_client, reply_to, unique_topic, user_broadcast
from jwts import unsigned_token
from fuzzframes import ANY, Input, State, binary_input, join_input, text_input
from fuzzverdict import CLOSE, EXACT, EXCEPTION_TEXT, FREE, IGNORE, Verdict, Vocabulary, verdict

SEED = int(os.environ.get("RC_FUZZ_SEED", "1801"))
#: inputs per run: (wire format, frames); a few thousand in all
RUNS = [(V1, "text", 1300), (V2, "text", 1300), (V2, "binary", 1300), (V1, "binary", 200)]
BATCH = 50  # inputs between two bystander round trips
RSS_MARGIN_KIB = 64 * 1024
CHANNEL_EVENTS = {"phx_reply", "phx_close", "system", "broadcast", "presence_state", "presence_diff"}
VOCAB = Vocabulary.load()


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    """A server of its own (its log and memory are the fuzzer's alone); presence pushes are not
    rate-limited per channel, so tracks keep being exercised; each presence change is its own diff
    at once, so every frame is attributed to the input that caused it (a diff coalesced over
    30 ms would arrive after a later input)."""
    srv = start_server(str(tmp_path_factory.mktemp("fuzz")), REALTIME_MAX_CLIENT_PRESENCE_EVENTS_PER_WINDOW="1000000",
                       REALTIME_PRESENCE_COALESCE_MS="0")
    yield srv
    srv.stop()


def rss_kib(server: ServerProc) -> int:
    with open(f"/proc/{server.proc.pid}/status", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def tokens(server: ServerProc) -> list[Any]:
    return [server.anon_key, make_token("authenticated", sub="u1"), make_token(exp_in=-60), "potato", "",
            "x" * 20_000, "sb_publishable_x", unsigned_token({"role": "anon", "exp": 2**40}),
            make_token(secret="another-secret-that-is-long-enough-to-sign-with"), None, 42, {"a": 1}]


# --- per-frame checks ----------------------------------------------------------------------


def well_formed(vsn: str, f: Frame) -> None:
    """Shape (§1.5, §1.6), known events, no exception text."""
    text = f.raw if isinstance(f.raw, str) else f.raw.decode("utf-8", "replace")
    assert not EXCEPTION_TEXT.search(text), text[:500]
    if f.is_binary:
        assert vsn == V2 and f.kind == 4, f.raw[:80]
        return
    if vsn == V2:
        assert isinstance(f.value, list) and len(f.value) == 5, f.raw[:300]
    else:
        assert isinstance(f.value, dict) and set(f.value) == {"topic", "event", "payload", "ref"}, f.raw[:300]
    assert f.event in CHANNEL_EVENTS, f.raw[:300]  # never phx_error: no channel ever crashes
    if f.event == "phx_reply":
        assert isinstance(f.payload, dict) and set(f.payload) == {"status", "response"}, f.raw[:300]
        assert f.payload["status"] in ("ok", "error"), f.raw[:300]
    elif f.event == "system":
        assert VOCAB.system(f.payload), f.raw[:300]
    elif f.event == "phx_close":
        assert f.payload == {}, f.raw[:300]


def matches(expected: Any, got: Any) -> bool:
    if expected is ANY:
        return True
    if isinstance(expected, list) and isinstance(got, list):
        return len(expected) == len(got) and all(matches(e, g) for e, g in zip(expected, got))
    if isinstance(expected, dict) and isinstance(got, dict):
        return expected.keys() == got.keys() and all(matches(expected[k], got[k]) for k in expected)
    return bool(expected == got)


def judge(v: Verdict, frames: list[Frame]) -> str:
    """Assert the verdict; returns the outcome: ignored, replied ok, replied error, shut down."""
    replies = [f for f in frames if f.event == "phx_reply"]
    if v.kind == IGNORE:
        assert not frames, "must be ignored"
    elif v.kind == EXACT:
        exact = len(frames) == len(v.frames) and all(matches(e, f.value) for e, f in zip(v.frames, frames))
        assert exact or v.or_nothing and not frames, f"expected {v.frames!r}"
    else:
        assert v.kind == FREE
        assert all(f.topic == v.topic for f in frames), f"every frame concerns {v.topic!r}"
        assert all(v.ref is ANY or f.ref == v.ref for f in replies), f"replies carry the ref {v.ref!r}"
        assert len(replies) <= 1 and (not v.join or v.ref is ANY or replies), "one reply at most, one to a join"
        for f in replies:
            if f.payload["status"] == "error":
                ok = VOCAB.join_reason(f.payload["response"].get("reason")) if v.join \
                    else VOCAB.push_response(f.payload["response"])
                assert ok, "undocumented error"
    if any(f.event == "system" and f.payload["extension"] == "system" for f in frames):
        return "shut down"
    if replies:
        return f"replied {replies[0].payload['status']}"
    return "ignored" if not frames else "delivered"


def observe(v: Verdict, frames: list[Frame], state: State) -> None:
    """Track the joined topics from what the server said (§2.5, §3.6, §3.7)."""
    for f in frames:
        if f.event == "phx_reply" and v.join and f.topic == v.topic and f.payload["status"] == "ok":
            if f.topic in state.joined:
                state.stale_close.add(f.topic)  # the replaced join's phx_close follows (§2.5)
            state.joined[f.topic] = v.join_ref
        elif f.event == "phx_close":
            if f.topic in state.stale_close:
                state.stale_close.discard(f.topic)
            else:
                state.joined.pop(f.topic, None)


# --- the run -------------------------------------------------------------------------------


class Attacker:
    """The fuzzed socket, reopened after the one close the contract allows."""

    def __init__(self, server: ServerProc, vsn: str) -> None:
        self.server, self.vsn, self.barriers = server, vsn, 0
        self._cm: Any = None
        self.c: RawClient | None = None

    async def open(self) -> RawClient:
        self._cm = open_client(self.server, self.vsn)
        self.c = await self._cm.__aenter__()
        return self.c

    async def close(self) -> None:
        if self._cm is not None:
            await self._cm.__aexit__(None, None, None)
            self._cm = self.c = None

    async def send(self, inp: Input) -> None:
        assert self.c is not None
        if inp.binary:
            await self.c.send_bytes(inp.data)  # type: ignore[arg-type]
        else:
            await self.c.ws.send(inp.data, text=True)

    async def caused(self) -> list[Frame]:
        """The frames that arrived before a heartbeat barrier's reply, in order."""
        assert self.c is not None
        self.barriers += 1
        ref = f"zz-barrier-{self.barriers}"
        await self.c.send_msg("phoenix", "heartbeat", {}, ref, None)
        frames: list[Frame] = []
        while True:
            f = await self.c.next_frame()
            if reply_to(ref, "phoenix")(f):
                return frames
            frames.append(f)


@asynccontextmanager
async def bystanders(server: ServerProc) -> AsyncIterator[Any]:
    """A sender and a receiver in a room of their own; each call is one checked round trip."""
    calm = unique_topic("calm")
    async with open_client(server, V2) as tx, open_client(server, V1) as rx:
        await rx.join_ok(calm)
        await tx.join_ok(calm)
        sent = 0

        async def round_trip() -> None:
            nonlocal sent
            sent += 1
            await tx.broadcast(calm, "tick", {"n": sent})
            frame = await rx.next_frame()  # the very next frame: nothing else reached the room
            assert user_broadcast("tick", calm)(frame) and frame.payload["payload"] == {"n": sent}, frame.raw

        yield round_trip


async def fuzz(server: ServerProc, vsn: str, kind: str, n: int) -> tuple[Counter[str], Counter[str]]:
    """Returns how many inputs met each outcome, and how many got each kind of verdict."""
    rng = random.Random(f"{SEED}-{vsn}-{kind}")
    pool = [unique_topic("fz") for _ in range(4)]
    state = State(pool, tokens(server))
    counts: Counter[str] = Counter()
    verdicts: Counter[str] = Counter()
    attacker = Attacker(server, vsn)
    async with bystanders(server) as round_trip, open_client(server, vsn) as listener:
        for topic in pool:  # sees what the attacker's channels relay
            await listener.join_ok(topic, {"presence": {"enabled": True}})
            await listener.expect(lambda f: f.event == "presence_state")
        await attacker.open()
        try:
            for i in range(n):
                # a binary run also joins and leaves (in text), so its pushes meet joined channels too
                binary = kind == "binary" and rng.random() < 0.85
                if binary:
                    inp = binary_input(rng, state)
                elif kind == "binary" and vsn == V2 and rng.random() < 0.7:
                    inp = join_input(rng, state)
                else:
                    inp = text_input(rng, vsn, state)
                v = verdict(vsn, inp, state)
                verdicts[f"{'binary' if binary else 'text'} {v.kind}"] += 1
                shown = repr(inp.data) if len(inp.data) < 800 else f"{inp.data[:400]!r}…{inp.data[-300:]!r}"
                context = f"seed {SEED} {vsn} {kind} input #{i} ({len(inp.data)} long): {shown}; verdict {v.kind}"
                await attacker.send(inp)
                if v.kind == CLOSE:
                    assert attacker.c is not None
                    assert await attacker.c.wait_closed(3.0) == 1007, context
                    await attacker.close()
                    await attacker.open()
                    state.joined.clear()
                    state.stale_close.clear()
                    counts["closed 1007"] += 1
                    continue
                try:
                    frames = await attacker.caused()
                    for f in frames:
                        well_formed(vsn, f)
                    counts[judge(v, frames)] += 1
                except AssertionError as exc:
                    raise AssertionError(f"{context}\n{exc}") from None
                observe(v, frames, state)
                if (i + 1) % BATCH == 0:
                    await round_trip()
                    for f in await listener.drain():
                        well_formed(vsn, f)
                        assert f.event in ("broadcast", "presence_diff") and f.topic in pool, f.raw[:300]
        finally:
            await attacker.close()
        await round_trip()
    return counts, verdicts


@pytest.mark.parametrize(("vsn", "kind", "n"), RUNS, ids=[f"{v}-{k}" for v, k, _ in RUNS])
async def test_fuzzed_frames_get_what_the_protocol_says(fuzz_server: ServerProc, vsn: str, kind: str, n: int) -> None:
    log_start = len(fuzz_server.log())
    rss_before = rss_kib(fuzz_server)
    counts, verdicts = await fuzz(fuzz_server, vsn, kind, n)
    rss_after = rss_kib(fuzz_server)
    print(f"\nfuzz {vsn} {kind}, seed {SEED}: {n} inputs; outcomes {dict(sorted(counts.items()))}; "
          f"verdicts {dict(sorted(verdicts.items()))}; server RSS {rss_before // 1024} -> {rss_after // 1024} MiB")
    assert sum(counts.values()) == n
    assert counts["ignored"] > 0 and (kind == "binary" and vsn == V1 or counts["replied error"] > 0), counts
    log = fuzz_server.log()[log_start:]
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
    assert rss_after - rss_before < RSS_MARGIN_KIB, (rss_before, rss_after)
