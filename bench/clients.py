"""Python load clients for bench/soak.py and bench/attacks.py, one role per process:

    .venv/bin/python bench/clients.py <role> '<json config>'

Roles: ``probe`` (a legit client timing its own broadcasts, ``self: true``), ``presence``
(members joining, updating and leaving continuously), ``cdc`` (postgres_changes subscribers) and
``writer`` (INSERTs and UPDATEs on the subscribed table, each stamped with its send time).

A role reads commands on stdin and answers on stdout, one JSON object per line, as
``bench/loadgen.mjs``'s soak mode does, so ``common.Worker`` drives both:

    stdin  {"cmd": "rate", "value": x} | {"cmd": "report"} | {"cmd": "stop"}
    stdout {"type": "ready"} | {"type": "report", ...} (one per "report") | {"type": "result", ...}

A report covers the interval since the previous one; latencies go into a :class:`LogHist`, so a
client's memory stays flat however long it runs.  Hot frames are recognised with a substring
search, not a JSON parse, to keep the clients light.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import orjson
from common import LogHist
from phx import V2, Frame, Socket, commands, emit, number_after, paced, run_main
from websockets.exceptions import ConnectionClosed


# --- roles ----------------------------------------------------------------------------------------


class Role:
    """A client role: counters since the last report, a rate, start/stop."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.rate = float(cfg.get("rate", 0))
        self.hist = LogHist()
        self.counts: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.stopping = asyncio.Event()

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    def control(self, frame: Frame) -> None:
        """Channel messages other than replies: errors and closes are counted."""
        event, payload = frame[3], frame[4]
        if event == "system" and isinstance(payload, dict) and payload.get("status") != "ok":
            self.error(f"system: {payload.get('message')}")
        elif event in ("phx_close", "phx_error"):
            self.error(event)

    def report(self) -> dict[str, Any]:
        out = {"hist": self.hist.to_json(), "counts": self.counts, "errors": self.errors}
        self.hist, self.counts, self.errors = LogHist(), {}, {}
        return out

    async def start(self) -> dict[str, Any]:
        raise NotImplementedError

    async def stop(self) -> dict[str, Any]:
        self.stopping.set()
        return self.report()


class Probe(Role):
    """One socket broadcasting to itself (``self: true``) at ``rate``/s; latency = round trip."""

    async def start(self) -> dict[str, Any]:
        self.topic = self.cfg.get("topic", "realtime:probe")
        await self.connect()
        self.task = asyncio.create_task(paced(lambda: self.rate, self.send, self.stopping))
        return {}

    async def connect(self) -> None:
        self.sock = await Socket.open(self.cfg["port"], self.cfg["token"], self.cfg.get("vsn", V2),
                                      on_data=self.data, on_control=self.control)
        self.join_ref, reply = await self.sock.join(self.topic, {"broadcast": {"self": True}}, self.cfg["token"])
        if reply.get("status") != "ok":
            raise RuntimeError(f"probe join refused: {reply}")

    def data(self, raw: str) -> bool:
        ts = number_after(raw, '"ts":')
        if ts is None:
            return False
        self.hist.add(time.perf_counter() * 1000 - ts)
        self.count("received")
        return True

    async def send(self, j: int) -> None:
        if self.sock.closed.is_set():
            self.error(f"socket closed {self.sock.close_code}")
            await self.connect()
        payload = {"type": "broadcast", "event": "probe", "payload": {"ts": time.perf_counter() * 1000, "seq": j}}
        with contextlib.suppress(ConnectionClosed):
            await self.sock.send(self.join_ref, self.topic, "broadcast", payload)
            self.count("sent")


@dataclass(eq=False)
class Member:
    i: int
    topic: str
    sock: Socket | None = None
    joined: str | None = None  # join_ref of the current channel
    last: float = 0.0  # monotonic time of its last operation
    n: int = 0  # tracks so far
    busy: bool = False


class Presence(Role):
    """``members`` sockets over ``rooms`` topics, each tracking a presence; ``rate`` operations/s
    (an update of the tracked payload, a leave, or a rejoin with a track), each member at most one
    every ``min_gap_s`` (the per-channel limit is 5 presence pushes per 30 s).  Latency = push →
    reply, which follows the diff the push causes (protocol.md §5.1)."""

    async def start(self) -> dict[str, Any]:
        n, rooms = int(self.cfg["members"]), int(self.cfg["rooms"])
        self.members = [Member(i, f"realtime:presence-{i % rooms}") for i in range(n)]
        for start in range(0, n, 50):
            await asyncio.gather(*(self.connect(m) for m in self.members[start:start + 50]))
        await asyncio.gather(*(self.join_and_track(m) for m in self.members))
        self.hist, self.counts = LogHist(), {}  # the initial joins are not the churn being measured
        self.task = asyncio.create_task(paced(lambda: self.rate, self.op, self.stopping))
        return {"members": n}

    def control(self, frame: Frame) -> None:
        if frame[3] == "phx_close":
            self.count("closes")  # the end of a leave; a shutdown comes with a system error first
            return
        super().control(frame)

    def data(self, raw: str) -> bool:
        if '"presence_diff"' in raw:
            self.count("diffs")
            return True
        if '"presence_state"' in raw:
            self.count("states")
            return True
        return False

    async def connect(self, m: Member) -> Socket:
        m.sock = await Socket.open(self.cfg["port"], self.cfg["token"], self.cfg.get("vsn", V2),
                                   on_data=self.data, on_control=self.control)
        return m.sock

    async def timed(self, m: Member, sock: Socket, event: str, payload: dict[str, Any]) -> bool:
        t0 = time.perf_counter()
        try:
            reply = await sock.call(m.joined, m.topic, event, payload, timeout=10)
        except (asyncio.TimeoutError, ConnectionClosed):
            self.error(f"{event} {payload.get('event', '')} unanswered")
            return False
        if reply.get("status") != "ok":
            self.error(f"{event} refused: {reply.get('response')}")
            return False
        self.hist.add((time.perf_counter() - t0) * 1000)
        return True

    async def join_and_track(self, m: Member) -> None:
        sock = m.sock
        if sock is None or sock.closed.is_set():
            if sock is not None:
                self.error(f"socket closed {sock.close_code}")
            sock = await self.connect(m)
        config = {"presence": {"key": f"member-{m.i}", "enabled": True}, "broadcast": {"self": False}}
        try:
            ref, reply = await sock.join(m.topic, config, self.cfg["token"])
        except (asyncio.TimeoutError, ConnectionClosed):
            self.error("join unanswered")
            return
        if reply.get("status") != "ok":
            self.error(f"join refused: {reply.get('response')}")
            return
        m.joined = ref
        await self.track(m, sock)

    async def track(self, m: Member, sock: Socket) -> None:
        m.n += 1
        meta = {"status": random.choice(("online", "away", "typing")), "n": m.n, "i": m.i}
        if await self.timed(m, sock, "presence", {"type": "presence", "event": "track", "payload": meta}):
            self.count("tracks")

    async def leave(self, m: Member, sock: Socket) -> None:
        if await self.timed(m, sock, "phx_leave", {}):
            self.count("leaves")
        m.joined = None

    def op(self, j: int) -> None:
        now = time.monotonic()
        gap = float(self.cfg.get("min_gap_s", 8.0))
        for k in range(len(self.members)):
            m = self.members[(j + k) % len(self.members)]
            if now - m.last >= gap and not m.busy:
                break
        else:
            self.count("ops_skipped")  # every member pushed within the gap: the rate is too high
            return
        m.last, m.busy = now, True
        sock = m.sock
        if m.joined is None or sock is None or sock.closed.is_set():
            work: Awaitable[None] = self.join_and_track(m)
        elif random.random() < 0.2:
            work = self.leave(m, sock)
        else:
            work = self.track(m, sock)

        async def run() -> None:
            try:
                await work
            finally:
                m.busy = False

        asyncio.get_running_loop().create_task(run())


class Cdc(Role):
    """postgres_changes subscribers: one socket each, ``event: "*"`` on ``table``; latency =
    receive wall clock − the row's ``sent_ms`` (the writer's wall clock before its commit)."""

    async def start(self) -> dict[str, Any]:
        self.subscribed = 0
        self.ready = asyncio.Event()
        specs = self.cfg["subs"]
        binding = [{"event": "*", "schema": "public", "table": self.cfg["table"]}]
        self.socks = []
        for i, spec in enumerate(specs):
            sock = await Socket.open(self.cfg["port"], spec["token"], spec.get("vsn", V2),
                                     on_data=self.data, on_control=self.control)
            _, reply = await sock.join(f"realtime:cdc-{i}", {"postgres_changes": binding}, spec["token"])
            if reply.get("status") != "ok":
                raise RuntimeError(f"cdc join refused: {reply}")
            self.socks.append(sock)
        await asyncio.wait_for(self.ready.wait(), 90)
        return {"subscribers": len(specs)}

    def data(self, raw: str) -> bool:
        sent = number_after(raw, '"sent_ms":')  # only rows carry it: not the join reply or system
        if sent is None:
            return False
        self.hist.add(time.time() * 1000 - sent)
        self.count("received")
        return True

    def control(self, frame: Frame) -> None:
        payload = frame[4]
        if frame[3] == "system" and isinstance(payload, dict) and payload.get("extension") == "postgres_changes":
            if payload.get("status") == "ok":
                self.subscribed += 1
                if self.subscribed >= len(self.cfg["subs"]):
                    self.ready.set()
                return
        super().control(frame)


class Writer(Role):
    """INSERTs (share ``insert_share``, teams alternating) and UPDATEs of random earlier rows on
    ``table`` at ``rate`` statements/s, autocommit; counts what it committed per team."""

    async def start(self) -> dict[str, Any]:
        import psycopg

        self.conn = await psycopg.AsyncConnection.connect(self.cfg["dsn"], autocommit=True)
        self.teams = list(self.cfg["teams"])
        cur = await self.conn.execute(f"select coalesce(max(id), 0) from {self.cfg['table']}")
        row = await cur.fetchone()
        self.max_id = int(row[0]) if row else 0
        self.task = asyncio.create_task(paced(lambda: self.rate, self.write, self.stopping))
        return {}

    async def write(self, j: int) -> None:
        table, sent = self.cfg["table"], time.time() * 1000
        t0 = time.perf_counter()
        try:
            if self.max_id == 0 or random.random() < float(self.cfg.get("insert_share", 0.4)):
                cur = await self.conn.execute(
                    f"insert into {table} (team, sent_ms, body) values (%s, %s, %s) returning id, team",
                    (self.teams[j % len(self.teams)], sent, f"row {j}"))
            else:
                cur = await self.conn.execute(
                    f"update {table} set sent_ms = %s, body = %s where id = %s returning id, team",
                    (sent, f"update {j}", random.randint(1, self.max_id)))
            row = await cur.fetchone()
        except Exception as exc:  # noqa: BLE001 - counted and reported, the soak goes on
            self.error(type(exc).__name__)
            return
        self.hist.add((time.perf_counter() - t0) * 1000)
        if row is not None:
            self.max_id = max(self.max_id, int(row[0]))
            self.count(f"team:{row[1]}")

    async def stop(self) -> dict[str, Any]:
        out = await super().stop()
        await self.task
        await self.conn.close()
        return out


ROLES: dict[str, type[Role]] = {"probe": Probe, "presence": Presence, "cdc": Cdc, "writer": Writer}


async def serve(role: Role) -> None:
    emit({"type": "ready", **await role.start()})
    async for cmd in commands():
        if cmd["cmd"] == "rate":
            role.rate = float(cmd["value"])
        elif cmd["cmd"] == "report":
            emit({"type": "report", **role.report()})
        elif cmd["cmd"] == "stop":
            break
    emit({"type": "result", **await role.stop()})


def main() -> None:
    run_main(serve(ROLES[sys.argv[1]](orjson.loads(sys.argv[2]))))


if __name__ == "__main__":
    main()
