"""Python load clients for bench/soak.py and bench/attacks.py, one role per process:

    .venv/bin/python bench/clients.py <role> '<json config>'

Roles: ``probe`` (a legit client timing its own broadcasts, ``self: true``), ``presence``
(members joining, updating and leaving continuously), ``cdc`` (postgres_changes subscribers) and
``writer`` (INSERTs and UPDATEs on the subscribed table, each stamped with its send time).

A role reads commands on stdin and answers on stdout, one JSON object per line, as
``bench/loadgen.mjs``'s soak mode does, so :class:`Worker` drives both:

    stdin  {"cmd": "rate", "value": x} | {"cmd": "report"} | {"cmd": "stop"}
    stdout {"type": "ready"} | {"type": "report", ...} (one per "report") | {"type": "result", ...}

A report covers the interval since the previous one; latencies go into a :class:`LogHist`, so a
client's memory stays flat however long it runs.  Hot frames are recognised with a substring
search, not a JSON parse, to keep the clients light.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from common import LogHist, log, pinned
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

V2 = "2.0.0"
HEARTBEAT_S = 25.0
JOIN_TIMEOUT_S = 30.0

Frame = tuple[Any, Any, str, str, Any]


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(obj).decode() + "\n")
    sys.stdout.flush()


def number_after(raw: str, key: str) -> float | None:
    """The JSON number right after ``key`` (e.g. ``'"ts":'``) in a frame, without parsing it."""
    i = raw.find(key)
    if i < 0:
        return None
    i += len(key)
    j = i
    while j < len(raw) and raw[j] in "0123456789.-eE+":
        j += 1
    try:
        return float(raw[i:j])
    except ValueError:
        return None


# --- one socket -------------------------------------------------------------------------------------


class Socket:
    """One Supabase Realtime WebSocket (V1 JSON objects or V2 arrays).

    Every frame first goes to ``on_data`` (the hot path: return True when it was a counted
    delivery); the others are decoded, replies resolve :meth:`call`, the rest go to
    ``on_control``.  Heartbeats go out every 25 s as the official clients send them."""

    def __init__(self, ws: ClientConnection, vsn: str, on_data: Callable[[str], bool],
                 on_control: Callable[[Frame], None]) -> None:
        self.ws = ws
        self.vsn = vsn
        self.on_data = on_data
        self.on_control = on_control
        self.pending: dict[str, asyncio.Future[Any]] = {}
        self.refs = 0
        self.close_code: int | None = None
        self.closed = asyncio.Event()
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._heartbeat())]

    @classmethod
    async def open(cls, port: int, token: str, vsn: str = V2, *, on_data: Callable[[str], bool] = lambda raw: False,
                   on_control: Callable[[Frame], None] = lambda f: None) -> Socket:
        ws = await connect(f"ws://127.0.0.1:{port}/realtime/v1/websocket?apikey={token}&vsn={vsn}",
                           compression=None, max_size=None, ping_interval=None, open_timeout=JOIN_TIMEOUT_S)
        return cls(ws, vsn, on_data, on_control)

    def encode(self, join_ref: str | None, ref: str | None, topic: str, event: str, payload: Any) -> str:
        if self.vsn == V2:
            return orjson.dumps([join_ref, ref, topic, event, payload]).decode()
        return orjson.dumps({"topic": topic, "event": event, "payload": payload, "ref": ref,
                             "join_ref": join_ref}).decode()

    def decode(self, raw: str | bytes) -> Frame | None:
        if isinstance(raw, bytes):
            return None  # kind-4 broadcasts: the hot path counts them, nothing else is binary
        try:
            m = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        if self.vsn == V2 and isinstance(m, list) and len(m) >= 5:
            return m[0], m[1], m[2], m[3], m[4]
        if isinstance(m, dict):
            return m.get("join_ref"), m.get("ref"), m.get("topic", ""), m.get("event", ""), m.get("payload")
        return None

    async def send(self, join_ref: str | None, topic: str, event: str, payload: Any) -> None:
        await self.ws.send(self.encode(join_ref, None, topic, event, payload))

    async def call(self, join_ref: str | None, topic: str, event: str, payload: Any,
                   timeout: float = JOIN_TIMEOUT_S) -> Any:
        """Push with a ref and return the reply's payload (``{"status": …, "response": …}``)."""
        self.refs += 1
        ref = str(self.refs)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[ref] = fut
        try:
            await self.ws.send(self.encode(join_ref, ref, topic, event, payload))
            return await asyncio.wait_for(fut, timeout)
        finally:
            self.pending.pop(ref, None)

    async def join(self, topic: str, config: dict[str, Any], token: str, **extra: Any) -> tuple[str, Any]:
        """phx_join; returns (join_ref, reply payload)."""
        ref = str(self.refs + 1)
        reply = await self.call(ref, topic, "phx_join", {"config": config, "access_token": token, **extra})
        return ref, reply

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                text = raw if isinstance(raw, str) else raw.decode("latin-1")
                if self.on_data(text):
                    continue
                frame = self.decode(raw)
                if frame is None:
                    continue
                ref = frame[1]
                if frame[3] == "phx_reply" and isinstance(ref, str) and ref in self.pending:
                    fut = self.pending[ref]
                    if not fut.done():
                        fut.set_result(frame[4])
                elif frame[2] != "phoenix":
                    self.on_control(frame)
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self.closed.set()

    async def _heartbeat(self) -> None:
        with contextlib.suppress(ConnectionClosed, asyncio.TimeoutError):
            while True:
                await asyncio.sleep(HEARTBEAT_S)  # the clients' heartbeat period
                await self.ws.send(self.encode(None, "hb", "phoenix", "heartbeat", {}))

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 5)


async def paced(rate: Callable[[], float], action: Callable[[int], Awaitable[None] | None],
                stop: asyncio.Event) -> None:
    """Call ``action(j)`` at ``rate()`` per second (open loop: action j at t0 + j / rate; a new
    rate restarts the schedule) until ``stop`` is set."""
    current, t0, j = -1.0, 0.0, 0
    while not stop.is_set():
        r = rate()
        if r != current:
            current, t0, j = r, time.monotonic(), 0
        if current <= 0:
            await asyncio.sleep(0.05)
            continue
        due = int((time.monotonic() - t0) * current)
        while j < due:
            out = action(j)
            if out is not None:
                await out
            j += 1
        await asyncio.sleep(min(0.01, 1 / current))


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


class Presence(Role):
    """``members`` sockets over ``rooms`` topics, each tracking a presence; ``rate`` operations/s
    (an update of the tracked payload, a leave, or a rejoin with a track), each member at most one
    every ``min_gap_s`` (the per-channel limit is 5 presence pushes per 30 s).  Latency = push →
    reply, which follows the diff the push causes (protocol.md §5.1)."""

    async def start(self) -> dict[str, Any]:
        n, rooms = int(self.cfg["members"]), int(self.cfg["rooms"])
        self.members = [{"i": i, "topic": f"realtime:presence-{i % rooms}", "joined": None, "last": 0.0, "n": 0}
                        for i in range(n)]
        self.socks: list[Socket] = []
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

    async def connect(self, m: dict[str, Any]) -> None:
        m["sock"] = await Socket.open(self.cfg["port"], self.cfg["token"], self.cfg.get("vsn", V2),
                                      on_data=self.data, on_control=self.control)

    async def timed(self, m: dict[str, Any], event: str, payload: Any) -> bool:
        t0 = time.perf_counter()
        try:
            reply = await m["sock"].call(m["joined"], m["topic"], event, payload, timeout=10)
        except (asyncio.TimeoutError, ConnectionClosed):
            self.error(f"{event} {payload.get('event', '')} unanswered")
            return False
        if reply.get("status") != "ok":
            self.error(f"{event} refused: {reply.get('response')}")
            return False
        self.hist.add((time.perf_counter() - t0) * 1000)
        return True

    async def join_and_track(self, m: dict[str, Any]) -> None:
        if m["sock"].closed.is_set():
            self.error(f"socket closed {m['sock'].close_code}")
            await self.connect(m)
        config = {"presence": {"key": f"member-{m['i']}", "enabled": True}, "broadcast": {"self": False}}
        try:
            ref, reply = await m["sock"].join(m["topic"], config, self.cfg["token"])
        except (asyncio.TimeoutError, ConnectionClosed):
            self.error("join unanswered")
            return
        if reply.get("status") != "ok":
            self.error(f"join refused: {reply.get('response')}")
            return
        m["joined"] = ref
        await self.track(m)

    async def track(self, m: dict[str, Any]) -> None:
        m["n"] += 1
        meta = {"status": random.choice(("online", "away", "typing")), "n": m["n"], "i": m["i"]}
        if await self.timed(m, "presence", {"type": "presence", "event": "track", "payload": meta}):
            self.count("tracks")

    async def leave(self, m: dict[str, Any]) -> None:
        if await self.timed(m, "phx_leave", {}):
            self.count("leaves")
        m["joined"] = None

    def op(self, j: int) -> None:
        now = time.monotonic()
        gap = float(self.cfg.get("min_gap_s", 8.0))
        for k in range(len(self.members)):
            m = self.members[(j + k) % len(self.members)]
            if now - m["last"] >= gap and not m.get("busy"):
                break
        else:
            self.count("ops_skipped")  # every member pushed within the gap: the rate is too high
            return
        m["last"], m["busy"] = now, True
        if m["joined"] is None:
            work: Awaitable[None] = self.join_and_track(m)
        elif random.random() < 0.2:
            work = self.leave(m)
        else:
            work = self.track(m)

        async def run() -> None:
            try:
                await work
            finally:
                m["busy"] = False

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
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        cmd = orjson.loads(line)
        if cmd["cmd"] == "rate":
            role.rate = float(cmd["value"])
        elif cmd["cmd"] == "report":
            emit({"type": "report", **role.report()})
        elif cmd["cmd"] == "stop":
            break
    emit({"type": "result", **await role.stop()})


# --- the orchestrator's side ------------------------------------------------------------------------


class Worker:
    """One client process (a role above, or ``node bench/loadgen.mjs`` in soak mode) driven over
    its stdin/stdout; its stderr goes to ``<log_dir>/<name>.err``."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, *, core: int | None = None, nice: int = 0) -> None:
        self.name = name
        self.argv = pinned(core, argv)
        if nice:
            self.argv = ["nice", "-n", str(nice), *self.argv]
        self.err_path = log_dir / f"{name}.err"
        self.proc: asyncio.subprocess.Process | None = None
        self.replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    @classmethod
    def python(cls, role: str, cfg: dict[str, Any], log_dir: Path, **kw: Any) -> Worker:
        return cls(role if "name" not in cfg else cfg["name"],
                   [sys.executable, str(Path(__file__)), role, orjson.dumps(cfg).decode()], log_dir, **kw)

    async def start(self, timeout: float = 120) -> dict[str, Any]:
        with open(self.err_path, "wb") as err:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err,
                limit=16 * 1024 * 1024, cwd=Path(__file__).parent)
        self._reader = asyncio.create_task(self._read())
        return await self.expect("ready", timeout)

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for line in self.proc.stdout:
            try:
                msg = orjson.loads(line)
            except orjson.JSONDecodeError:
                log(f"  [{self.name}] {line.decode(errors='replace').rstrip()}")
                continue
            if msg.get("type") == "progress":
                log(f"  [{self.name}] {msg.get('msg')}")
            else:
                await self.replies.put(msg)
        await self.replies.put({"type": "exit"})

    async def expect(self, kind: str, timeout: float) -> dict[str, Any]:
        msg = await asyncio.wait_for(self.replies.get(), timeout)
        if msg.get("type") != kind:
            err = self.err_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name}: expected {kind!r}, got {str(msg)[:500]}\n{err}")
        return msg

    async def command(self, cmd: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(orjson.dumps(cmd) + b"\n")
        await self.proc.stdin.drain()

    async def report(self, timeout: float = 30) -> dict[str, Any]:
        await self.command({"cmd": "report"})
        return await self.expect("report", timeout)

    async def stop(self, timeout: float = 60) -> dict[str, Any]:
        await self.command({"cmd": "stop"})
        result = await self.expect("result", timeout)
        assert self.proc is not None
        await asyncio.wait_for(self.proc.wait(), 15)
        return result

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


def main() -> None:
    role = ROLES[sys.argv[1]](orjson.loads(sys.argv[2]))
    try:
        import uvloop

        uvloop.run(serve(role))
    except ImportError:
        asyncio.run(serve(role))
    os._exit(0)  # sockets still open are the server's to notice


if __name__ == "__main__":
    main()
