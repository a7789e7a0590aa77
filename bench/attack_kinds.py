"""The attacker processes of bench/attacks.py, one attack per process:

    .venv/bin/python bench/attack_kinds.py <attack> '<json config>'

It sets the attack up (sockets open, channels joined), prints ``{"type": "ready"}``, waits for
``{"cmd": "go"}`` on stdin, attacks for ``seconds`` and prints ``{"type": "result", "inputs": …,
"outcomes": {…}}`` — what it sent, and what the server did with it (refused with which error,
closed, ignored).  It knows only what any client knows: the port and the anon key.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import string
import sys
import time
from typing import Any

import orjson
from phx import V2, Frame, Socket, commands, emit, run_main
from websockets.exceptions import ConnectionClosed

V1 = "1.0.0"


class Attack:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.port, self.token = int(cfg["port"]), str(cfg["token"])
        self.outcomes: dict[str, int] = {}
        self.facts: list[str] = []
        self.inputs = ""

    def note(self, what: str, n: int = 1) -> None:
        if what not in self.outcomes and len(self.outcomes) >= 40:
            what = "other"  # a bounded table, whatever the server answers
        self.outcomes[what] = self.outcomes.get(what, 0) + n

    def control(self, frame: Frame) -> None:
        """Channel messages: shutdowns and closes, by text."""
        event, payload = frame[3], frame[4]
        if event == "system" and isinstance(payload, dict) and payload.get("status") == "error":
            self.note(f"channel shut down: {payload.get('message')}")
        elif event == "phx_reply" and isinstance(payload, dict) and payload.get("status") != "ok":
            self.note(f"refused: {short(payload.get('response'))}")
        elif event == "phx_close":
            self.note("phx_close")

    async def open(self, vsn: str = V2, **kw: Any) -> Socket:
        kw.setdefault("on_control", self.control)
        return await Socket.open(self.port, self.token, vsn, **kw)

    async def setup(self) -> None:
        pass

    async def run(self, seconds: float) -> None:
        raise NotImplementedError


def short(v: Any, n: int = 90) -> str:
    text = v if isinstance(v, str) else orjson.dumps(v).decode()
    return text if len(text) <= n else text[:n] + "…"


def closed_code(sock: Socket) -> str:
    return f"socket closed {sock.close_code}"


class Regex(Attack):
    """postgres_changes subscribers whose filters backtrack in a naive engine, and rows that
    make them: ``body=match.^(a+)+$`` against 27 × ``a…ab``, ``body=like.%a%a%a%a%a%x`` against
    100 × ``a``.  Control rows that match come last, to show the filters still work."""

    FILTERS = ("body=match.^(a+)+$", "body=like.%a%a%a%a%a%x")

    async def setup(self) -> None:
        import psycopg

        self.sock = await self.open(on_data=self.data)
        self.answered = 0
        self.channels = int(self.cfg.get("channels", 20))
        for i in range(self.channels):
            binding = {"event": "INSERT", "schema": "public", "table": self.cfg["table"], "filter": self.FILTERS[i % 2]}
            await self.sock.join(f"realtime:regex-{i}", {"postgres_changes": [binding]}, self.token)
        deadline = time.monotonic() + 60
        while self.answered < self.channels and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # polling the subscriptions' outcome, bounded by the deadline
        self.writer = await psycopg.AsyncConnection.connect(self.cfg["dsn"], autocommit=True)

    def data(self, raw: str) -> bool:
        i = raw.find('"body":"')
        if i >= 0 and '"postgres_changes"' in raw:
            body = raw[i + 8:raw.find('"', i + 8)]
            self.note("control row delivered" if body in ("aaaa", "aaaaax") else "non-matching row delivered")
            return True
        if "Subscribed to PostgreSQL" in raw:
            self.answered += 1
            self.note("subscribed (filter accepted)")
            return True
        if '"extension":"postgres_changes"' in raw and '"error"' in raw:
            self.answered += 1
            self.note(f"subscription refused: {short(raw[raw.find('message'):], 120)}")
            return True
        return False

    async def run(self, seconds: float) -> None:
        table, t0, rows = self.cfg["table"], time.monotonic(), 0
        rate = float(self.cfg.get("rows_per_s", 5000))  # 20 subscribers: 100,000 evaluations a second
        bad27, bad100 = "a" * 26 + "b", "a" * 99 + "b"  # neither filter matches either
        while (now := time.monotonic()) < t0 + seconds:
            if rows > (now - t0) * rate:
                await asyncio.sleep(0.002)  # pacing the writer
                continue
            await self.writer.execute(
                f"insert into {table} (body) select case when g %% 2 = 0 then %s else %s end "
                "from generate_series(1, 20) as g", (bad27, bad100))
            rows += 20
        await self.writer.execute(f"insert into {table} (body) values ('aaaa'), ('aaaaax')")
        want = self.channels // 2 * 2  # each control row matches half the channels
        deadline = time.monotonic() + 30
        while self.outcomes.get("control row delivered", 0) < want and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # polling for the control rows, bounded by the deadline
        self.inputs = (f"{self.channels} subscribers (`{self.FILTERS[0]}`, `{self.FILTERS[1]}`); "
                       f"{rows:,} rows of 27 and 100 chars, then 2 matching control rows")
        self.facts.append(f"control rows: {self.outcomes.get('control row delivered', 0)} of {want} deliveries")


class Tokens(Attack):
    """``access_token`` refreshes with thousands of distinct spellings of the anon key (stray
    whitespace, percent-encoding) on 20 channels, and 1 MB tokens as refreshes and joins."""

    CONFIG = {"broadcast": {"self": True, "ack": True}}

    async def setup(self) -> None:
        self.sock = await self.open()
        self.refs: dict[str, str] = {}
        for i in range(20):
            topic = f"realtime:tokens-{i}"
            self.refs[topic], _ = await self.sock.join(topic, self.CONFIG, self.token)

    def spelling(self, rng: random.Random) -> str:
        chars = list(self.token)
        for _ in range(rng.randint(1, 6)):
            i = rng.randrange(len(chars) + 1)
            chars.insert(i, rng.choice([" ", "\n", "\t", "\r\n"]))
        for _ in range(rng.randint(0, 4)):
            i = rng.randrange(len(chars))
            if len(chars[i]) == 1 and chars[i].strip():
                chars[i] = f"%{ord(chars[i]):02X}"
        return "".join(chars)

    async def run(self, seconds: float) -> None:
        rng = random.Random(7)
        seen: set[str] = set()
        big = "e" * 1_000_000
        end, n, n_big, topics = time.monotonic() + seconds, 0, 0, list(self.refs)
        while time.monotonic() < end and not self.sock.closed.is_set():
            topic = topics[n % len(topics)]
            if n % 500 == 499:
                await self.sock.send(self.refs[topic], topic, "access_token", {"access_token": big})
                n_big += 1
                self.refs[topic], _ = await self.sock.join(topic, self.CONFIG, self.token)
            else:
                s = self.spelling(rng)
                seen.add(s)
                await self.sock.send(self.refs[topic], topic, "access_token", {"access_token": s})
            n += 1
            if n % 50 == 0:
                await asyncio.sleep(0)  # let replies in
        with contextlib.suppress(asyncio.TimeoutError, ConnectionClosed):
            _, reply = await self.sock.join("realtime:tokens-big-join", {}, big)
            self.note(f"join with a 1 MB token: {short(reply.get('response'))}")
        alive = 0
        for topic in topics:  # every channel must still be joined: one round trip each
            with contextlib.suppress(asyncio.TimeoutError, ConnectionClosed):
                reply = await self.sock.call(self.refs[topic], topic, "broadcast",
                                             {"type": "broadcast", "event": "x", "payload": {}}, timeout=5)
                alive += 0 if reply is None else 1
        if self.sock.closed.is_set():
            self.note(closed_code(self.sock))
        self.facts.append(f"{alive} of 20 channels answer an ack'd broadcast afterwards")
        self.inputs = (f"{len(seen):,} distinct spellings as access_token, {n_big} × 1 MB tokens, "
                       "1 join with a 1 MB token")


def nested(depth: int) -> str:
    """JSON text nesting objects and arrays ``depth`` levels deep (orjson refuses to write it)."""
    opens = "".join('{"a":' if i % 2 == 0 else "[" for i in range(depth))
    closes = "".join("}" if i % 2 == 0 else "]" for i in reversed(range(depth)))
    return opens + '"x"' + closes


class Nested(Attack):
    """Broadcasts (V1, V2 text, V2 binary kind 3) and presence tracks 300 levels deep, and
    frames that are themselves 300 levels deep, while a listener counts what gets through."""

    async def setup(self) -> None:
        self.delivered = 0
        self.v1 = await self.open(V1)
        self.v2 = await self.open(V2)
        self.listener = await self.open(V2, on_data=self.data)
        cfg = {"broadcast": {"self": False, "ack": True}, "presence": {"key": "deep", "enabled": True}}
        self.j1, _ = await self.v1.join("realtime:nested", cfg, self.token)
        self.j2, _ = await self.v2.join("realtime:nested", cfg, self.token)
        await self.listener.join("realtime:nested", {"broadcast": {"self": False}}, self.token)

    def data(self, raw: str) -> bool:
        if '"deep"' in raw:
            self.delivered += 1
            return True
        return False

    async def run(self, seconds: float) -> None:
        deep = nested(300)
        topic = "realtime:nested"
        kind3 = (bytes([3, len(self.j2), 0, len(topic), 1, 0, 1]) + self.j2.encode() + topic.encode() + b"m"
                 + f'{{"deep":{deep}}}'.encode())
        frame_deep = "[" * 300 + "]" * 300
        j1, j2 = self.j1, self.j2
        sends = [
            ("V1 broadcast", self.v1, lambda ref: f'{{"topic":"{topic}","event":"broadcast","payload":{{"type":'
             f'"broadcast","event":"m","payload":{{"deep":{deep}}}}},"ref":"{ref}","join_ref":"{j1}"}}'),
            ("V2 broadcast", self.v2, lambda ref: f'["{j2}","{ref}","{topic}","broadcast",{{"type":"broadcast",'
             f'"event":"m","payload":{{"deep":{deep}}}}}]'),
            ("V2 presence track", self.v2, lambda ref: f'["{j2}","{ref}","{topic}","presence",{{"type":"presence",'
             f'"event":"track","payload":{{"deep":{deep}}}}}]'),
        ]
        end, n = time.monotonic() + seconds, 0
        while time.monotonic() < end:
            label, sock, make = sends[n // 3 % len(sends)]
            try:
                reply = await sock.call_text(make, 5)
                self.note(f"{label}: {short(reply.get('response'))}")
            except asyncio.TimeoutError:
                self.note(f"{label}: no reply")
            except ConnectionClosed:
                break
            await self.v2.ws.send(kind3)
            await self.v1.ws.send(frame_deep)
            n += 3
        await self.listener.call(None, "phoenix", "heartbeat", {})  # barrier: what was delivered is here
        for name, s in (("V1", self.v1), ("V2", self.v2)):
            if s.closed.is_set():
                self.note(f"{name} {closed_code(s)}")
        self.facts.append(f"kind 3 and whole-frame nesting: no reply; {self.delivered} deep messages reached "
                          "the listener")
        self.inputs = f"{n:,} frames nested 300 deep ({n // 3:,} each of: ack'd V1/V2 pushes, kind 3, deep frame)"


class Slowloris(Attack):
    """500 connections that send half an upgrade request and then one header byte a second."""

    async def run(self, seconds: float) -> None:
        n = int(self.cfg.get("connections", 500))
        head = (f"GET /realtime/v1/websocket?apikey={self.token}&vsn=2.0.0 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n").encode()
        t0 = time.monotonic()
        closed_at: list[float] = []

        async def one(i: int) -> None:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                self.note("connect failed")
                return
            writer.write(head)
            trickle = f"X-Slow-{i}: {'z' * 200}".encode()
            k = 0
            while time.monotonic() - t0 < seconds:
                with contextlib.suppress(asyncio.TimeoutError):
                    data = await asyncio.wait_for(reader.read(4096), 1.0)
                    if not data:
                        closed_at.append(time.monotonic() - t0)
                        self.note("closed by the server")
                        return
                    status = data.split(b"\r\n", 1)[0].decode(errors="replace")
                    self.note(f"answered: {short(status)}")
                try:
                    writer.write(trickle[k % len(trickle):k % len(trickle) + 1])
                    await writer.drain()
                except OSError:
                    closed_at.append(time.monotonic() - t0)
                    self.note("closed by the server")
                    return
                k += 1
            self.note("still open at the end")
            writer.close()

        await asyncio.gather(*(one(i) for i in range(n)))
        if closed_at:
            closed_at.sort()
            self.facts.append(f"closed {closed_at[0]:.1f}–{closed_at[-1]:.1f} s after the first byte")
        self.inputs = f"{n} half-sent upgrade requests, one more header byte per second each"


class BigPresence(Attack):
    """12 members of one topic track 1–3 MB each; 3 observers join and get the whole state; one
    more member tracks 3.5 MB (over the payload limit); then everyone leaves."""

    async def setup(self) -> None:
        self.state_bytes = 0
        self.members = [await self.open(V2, on_data=self.count_state) for _ in range(12)]
        self.refs = []
        for i, s in enumerate(self.members):
            ref, _ = await s.join("realtime:big", {"presence": {"key": f"m{i}", "enabled": True}}, self.token)
            self.refs.append(ref)

    def count_state(self, raw: str) -> bool:
        if '"presence_state"' in raw:
            self.state_bytes = max(self.state_bytes, len(raw))
            big = len(raw) > 1e6
            self.note(f"presence_state of {len(raw) / 1e6:.0f} MB received" if big else "small presence_state received")
            return True
        return '"presence_diff"' in raw

    async def run(self, seconds: float) -> None:
        rng = random.Random(3)
        total = 0
        for s, ref in zip(self.members, self.refs, strict=True):
            size = rng.randint(1_000_000, 3_000_000)
            total += size
            try:
                reply = await s.call(ref, "realtime:big", "presence",
                                     {"type": "presence", "event": "track", "payload": {"blob": "x" * size}}, 30)
                self.note(f"track {short(reply.get('status'))}")
            except (asyncio.TimeoutError, ConnectionClosed):
                self.note("track unanswered")
        observers = [await self.open(V2, on_data=self.count_state) for _ in range(3)]
        for s in observers:
            with contextlib.suppress(asyncio.TimeoutError, ConnectionClosed):
                await s.join("realtime:big", {"presence": {"enabled": True}}, self.token)
        over = await self.open(V2)
        ref, _ = await over.join("realtime:big", {"presence": {"key": "over"}}, self.token)
        with contextlib.suppress(asyncio.TimeoutError, ConnectionClosed):
            await over.call(ref, "realtime:big", "presence",
                            {"type": "presence", "event": "track", "payload": {"blob": "x" * 3_500_000}}, 3)
            self.note("3.5 MB track answered")
        for s in observers:
            with contextlib.suppress(asyncio.TimeoutError, ConnectionClosed):
                await s.call(None, "phoenix", "heartbeat", {}, 30)  # the state arrived before this
        for role, socks in (("member", self.members), ("observer", observers), ("3.5 MB tracker", [over])):
            for s in socks:
                if s.closed.is_set():
                    self.note(f"{role} {closed_code(s)}")
                await s.close()
        self.inputs = f"12 tracks of 1–3 MB ({total / 1e6:.0f} MB), 3 observers, one 3.5 MB track"


class JoinFlood(Attack):
    """One socket joins 5,000 distinct topics as fast as it can write."""

    async def run(self, seconds: float) -> None:
        n = int(self.cfg.get("joins", 5000))
        replies: dict[str, int] = {}
        sock = await self.open(V2, on_control=lambda f: None)
        futs = []
        for i in range(n):
            topic = f"realtime:flood-{i}"
            futs.append(asyncio.ensure_future(sock.join(topic, {}, self.token)))
            if i % 100 == 99:
                await asyncio.sleep(0)
        done, pending = await asyncio.wait(futs, timeout=max(seconds, 8.0))
        for f in done:
            if f.exception() is not None:
                key = "no reply (socket closed)" if isinstance(f.exception(), ConnectionClosed) else "no reply"
                replies[key] = replies.get(key, 0) + 1
                continue
            _, reply = f.result()
            key = "ok" if reply.get("status") == "ok" else f"refused: {short(reply.get('response'))}"
            replies[key] = replies.get(key, 0) + 1
        for f in pending:
            f.cancel()
        if pending:
            key = "no reply (the socket was closed)" if sock.closed.is_set() else "no reply"
            replies[key] = replies.get(key, 0) + len(pending)
        for k, v in replies.items():
            self.note(k, v)
        if sock.closed.is_set():
            self.note(closed_code(sock))
        self.inputs = f"{n:,} phx_join, distinct topics, one socket"


class Fuzz(Attack):
    """Random frames on 2 V1 and 2 V2 sockets: bytes, text, truncated and random JSON, V1/V2
    messages with random fields (joins, leaves, broadcasts, presence, access_token…), binary
    frames of every kind byte.  A closed socket is reopened."""

    EVENTS = ["phx_join", "phx_leave", "broadcast", "presence", "access_token", "heartbeat", "postgres_changes",
              "phx_reply", "", "x" * 300]

    def value(self, rng: random.Random, depth: int = 0) -> Any:
        pick = rng.randrange(9 if depth < 4 else 6)
        if pick == 0:
            return None
        if pick == 1:
            return rng.choice([True, False])
        if pick == 2:
            return rng.choice([0, -1, 2**63 - 1, 1.5e308, rng.randint(-1000, 1000)])
        if pick == 3:
            return "".join(rng.choice(string.printable + "é☃\u0000\ud7ff") for _ in range(rng.randint(0, 40)))
        if pick == 4:
            return rng.choice(["realtime:fuzz-0", "phoenix", "realtime:", "", "realtime:" + "y" * 300])
        if pick == 5:
            return rng.choice(self.EVENTS)
        if pick in (6, 7):
            keys = ["config", "type", "event", "payload", "access_token", "key", "a"]
            return {rng.choice(keys): self.value(rng, depth + 1) for _ in range(rng.randint(0, 4))}
        return [self.value(rng, depth + 1) for _ in range(rng.randint(0, 5))]

    def frame(self, rng: random.Random, vsn: str) -> str | bytes:
        pick = rng.randrange(8)
        if pick == 0:
            return rng.randbytes(rng.randint(0, 300))
        if pick == 1:
            kind = rng.randrange(256)
            return bytes([kind, *(rng.randrange(256) for _ in range(6))]) + rng.randbytes(rng.randint(0, 200))
        if pick == 2:
            return "".join(rng.choice(string.printable) for _ in range(rng.randint(0, 200)))
        if pick == 3:
            text = orjson.dumps([None, "1", "realtime:fuzz-0", "broadcast", self.value(rng)]).decode()
            return text[: rng.randrange(max(len(text), 1))]
        if pick == 4:
            return orjson.dumps(self.value(rng)).decode()
        fields = [self.value(rng) for _ in range(5)]
        fields[2] = rng.choice(["realtime:fuzz-0", "realtime:fuzz-1", "phoenix", self.value(rng)])
        fields[3] = rng.choice(self.EVENTS)
        if vsn == V2:
            return orjson.dumps(fields + [self.value(rng)] * rng.randrange(2)).decode()
        keys = ["join_ref", "ref", "topic", "event", "payload"]
        obj = {k: v for k, v in zip(keys, fields, strict=True) if rng.random() > 0.1}
        return orjson.dumps(obj).decode()

    def data(self, raw: str) -> bool:
        if raw.startswith('[null,"hb') or '"topic":"phoenix","event":"phx_reply"' in raw or \
                raw.startswith(("[null,", '["')) and ',"phoenix","phx_reply"' in raw[:60]:
            return False  # heartbeat replies: the final barrier waits for them
        try:
            m = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self.note("binary or unparsable frame from the server")
            return True
        event, payload = (m[3], m[4]) if isinstance(m, list) else (m.get("event"), m.get("payload"))
        if event == "phx_reply" and isinstance(payload, dict):
            response = payload.get("response")
            reason = response.get("reason") if isinstance(response, dict) else response
            self.note("reply ok" if payload.get("status") == "ok" else f"reply error: {short(reason or response, 60)}")
        elif event == "system" and isinstance(payload, dict):
            self.note(f"system {payload.get('status')}: {short(payload.get('message'), 60)}")
        else:
            self.note(str(event) if event in ("phx_close", "phx_error", "presence_state", "presence_diff")
                      else "a broadcast of its own fuzz")
        return True

    async def run(self, seconds: float) -> None:
        rng = random.Random(11)
        vsns = [V1, V1, V2, V2]
        socks = [await self.open(v, on_data=self.data) for v in vsns]
        end, n = time.monotonic() + seconds, 0
        while time.monotonic() < end:
            for k, s in enumerate(socks):
                if s.closed.is_set():
                    self.note(closed_code(s))
                    socks[k] = s = await self.open(vsns[k], on_data=self.data)
                try:
                    await s.ws.send(self.frame(rng, vsns[k]))
                    n += 1
                except ConnectionClosed:
                    pass
            if n % 200 < 4:
                await asyncio.sleep(0)
        for s in socks:  # a heartbeat round trip on each: everything the frames caused is in
            with contextlib.suppress(asyncio.TimeoutError, ConnectionClosed):
                await s.call(None, "phoenix", "heartbeat", {}, 10)
        self.inputs = f"{n:,} random frames on 2 V1 + 2 V2 sockets"


KINDS: dict[str, type[Attack]] = {"regex": Regex, "tokens": Tokens, "nested": Nested, "slowloris": Slowloris,
                                  "presence": BigPresence, "joins": JoinFlood, "fuzz": Fuzz}


async def main(name: str, cfg: dict[str, Any]) -> None:
    attack = KINDS[name](cfg)
    await attack.setup()
    emit({"type": "ready"})
    async for cmd in commands():
        if cmd["cmd"] == "go":
            break
    t0 = time.monotonic()
    await attack.run(float(cfg["seconds"]))
    emit({"type": "result", "inputs": attack.inputs, "outcomes": attack.outcomes, "facts": attack.facts,
          "seconds": time.monotonic() - t0})


if __name__ == "__main__":
    run_main(main(sys.argv[1], orjson.loads(sys.argv[2])))
