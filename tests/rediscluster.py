"""A private Redis Cluster for tests: 3 masters and 3 replicas of ``redis-server`` on free
loopback ports, created with ``redis-cli --cluster create``.  (A plain module, imported by
name like ``support``.)

``RedisCluster.start()`` returns once every node reports ``cluster_state:ok`` and agrees on
the slot map; ``kill_master_of(key)`` SIGKILLs the master owning a key's slot and
``wait_failover`` waits until a replica has taken its slots over.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from redis import Redis
from redis.crc import key_slot
from redis.exceptions import RedisError

from support import free_port

#: a cluster node also listens on its port + 10000 (the cluster bus)
BUS_OFFSET = 10000


def free_cluster_port(taken: set[int]) -> int:
    """A free port whose cluster-bus port (+10000) is free too."""
    while True:
        port = free_port()
        if port + BUS_OFFSET > 65535 or port in taken or port + BUS_OFFSET in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + BUS_OFFSET))
            except OSError:
                continue
        taken.update((port, port + BUS_OFFSET))
        return port

START_TIMEOUT_S = 30.0
FAILOVER_TIMEOUT_S = 30.0
#: short, so that a killed master's replica is promoted within a few seconds
NODE_TIMEOUT_MS = 1000


class RedisCluster:
    def __init__(self, masters: int = 3, replicas_per_master: int = 1) -> None:
        taken: set[int] = set()
        self.ports = [free_cluster_port(taken) for _ in range(masters * (1 + replicas_per_master))]
        self.replicas = replicas_per_master
        self.dir = tempfile.mkdtemp(prefix="rc-redis-cluster-")
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """A seed node's URL (any node will do for a cluster client)."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def alive_url(self) -> str:
        port = next(p for p in self.ports if p in self.procs and self.procs[p].poll() is None)
        return f"redis://127.0.0.1:{port}/0"

    def _spawn(self, port: int) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (scripts/test installs it)")
        log = open(os.path.join(self.dir, f"redis-{port}.log"), "ab")  # noqa: SIM115 - the child's
        self.procs[port] = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-config-file", os.path.join(self.dir, f"nodes-{port}.conf"),
             "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--save", "", "--appendonly", "no",
             "--repl-diskless-sync-delay", "0",
             "--daemonize", "no", "--dir", self.dir],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.cleanup()
            raise

    def _start(self) -> None:
        for port in self.ports:
            self._spawn(port)
        deadline = time.monotonic() + START_TIMEOUT_S
        for port in self.ports:
            self._poll(lambda p=port: self._ping(p), deadline, f"redis-server on {port} answering PING")
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed")
        created = subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            capture_output=True, timeout=START_TIMEOUT_S)
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout.decode()}{created.stderr.decode()}")
        self._poll(self._settled, deadline, "cluster_state:ok and one slot map on every node")

    # --- observing ------------------------------------------------------------------------

    def client(self, port: int) -> Redis:
        return Redis(host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1)

    def _ping(self, port: int) -> bool:
        try:
            with self.client(port) as r:
                return bool(r.ping())
        except (RedisError, OSError):
            return False

    def slot_owners(self, port: int) -> dict[int, int]:
        """``slot range start -> master port`` as node ``port`` sees it."""
        with self.client(port) as r:
            return {int(s[0]): int(s[2][1]) for s in r.execute_command("CLUSTER", "SLOTS")}

    def _settled(self) -> bool:
        """Every live node: cluster_state ok, same slot map, and every master a live process."""
        maps = []
        for port in self.ports:
            if port not in self.procs or self.procs[port].poll() is not None:
                continue
            try:
                with self.client(port) as r:
                    info = r.execute_command("CLUSTER", "INFO")
                text = info.decode() if isinstance(info, bytes) else str(info)
                if "cluster_state:ok" not in text:
                    return False
                maps.append(self.slot_owners(port))
            except (RedisError, OSError):
                return False
        if not maps or any(m != maps[0] for m in maps) or len(maps[0]) < 3:
            return False
        masters = set(maps[0].values())
        if not all(self.procs.get(p) is not None and self.procs[p].poll() is None for p in masters):
            return False
        # each master's live replicas are in sync, so that a failover can happen at once
        live = sum(1 for p in self.ports if p in self.procs and self.procs[p].poll() is None)
        online = 0
        for port in masters:
            try:
                with self.client(port) as r:
                    info = r.info("replication")
            except (RedisError, OSError):
                return False
            online += sum(1 for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)
                          and v.get("state") == "online")
        return online == live - len(masters)

    def master_of(self, key: str) -> int:
        """The port of the master owning ``key``'s slot."""
        owner = self._owner(key_slot(key.encode()))
        if owner is None:
            raise AssertionError(f"no master owns the slot of {key!r}")
        return owner

    def node_id(self, port: int) -> str:
        with self.client(port) as r:
            reply = r.execute_command("CLUSTER", "MYID")
        return reply.decode() if isinstance(reply, bytes) else str(reply)

    def masters(self) -> set[int]:
        return set(self.slot_owners(self._any_alive()).values())

    def move_slot(self, slot: int, to: int) -> None:
        """Migrate one slot (its keys included) to master ``to``, as ``redis-cli --cluster
        reshard`` does: IMPORTING/MIGRATING, MIGRATE the keys, then SETSLOT NODE everywhere."""
        self.begin_migration(slot, to)
        self.finish_migration(slot, to)

    def begin_migration(self, slot: int, to: int) -> None:
        """IMPORTING on ``to``, MIGRATING on the owner, and the slot's keys MIGRATEd: the owner
        answers ASK (or TRYAGAIN) for them from now on."""
        source = self._owner(slot)
        assert source is not None and source != to
        with self.client(to) as dst, self.client(source) as src:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(source))
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", self.node_id(to))
            while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                src.execute_command("MIGRATE", "127.0.0.1", to, "", 0, 5000, "KEYS", *keys)

    def finish_migration(self, slot: int, to: int) -> None:
        source = self._owner(slot)
        assert source is not None
        dst_id = self.node_id(to)
        with self.client(to) as dst, self.client(source) as src:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        for port in self.masters() - {source, to}:
            with self.client(port) as r:
                r.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        deadline = time.monotonic() + START_TIMEOUT_S
        self._poll(lambda: self._settled() and self._owner(slot) == to, deadline, f"slot {slot} on {to} everywhere")

    def _ranges(self) -> list[tuple[tuple[int, int], int]]:
        with self.client(self._any_alive()) as r:
            return [((int(s[0]), int(s[1])), int(s[2][1])) for s in r.execute_command("CLUSTER", "SLOTS")]

    def _owner(self, slot: int) -> int | None:
        return next((port for (lo, hi), port in self._ranges() if lo <= slot <= hi), None)

    # --- faults -------------------------------------------------------------------------------

    def kill(self, port: int) -> None:
        """SIGKILL one node, as in a crash."""
        proc = self.procs.pop(port)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)

    def replica_of(self, master: int) -> int:
        with self.client(master) as r:
            info = r.info("replication")
        return next(int(v["port"]) for k, v in info.items() if k.startswith("slave") and isinstance(v, dict))

    def manual_failover(self, master: int) -> int:
        """``CLUSTER FAILOVER`` on a replica of ``master``: the two swap roles with no data
        lost and the old master stays up; the new master's port."""
        replica = self.replica_of(master)
        with self.client(replica) as r:
            r.execute_command("CLUSTER", "FAILOVER")
        deadline = time.monotonic() + FAILOVER_TIMEOUT_S
        self._poll(lambda: self._settled() and master not in self.masters() and replica in self.masters(),
                   deadline, f"{replica} to take over from {master}")
        return replica

    def kill_master_of(self, key: str) -> int:
        port = self.master_of(key)
        self.kill(port)
        return port

    def wait_failover(self, dead: int) -> int:
        """Until the live nodes agree on a slot map without ``dead``; the new master's port of
        the slots ``dead`` had (the caller reads them before the kill, so any will do)."""
        deadline = time.monotonic() + FAILOVER_TIMEOUT_S
        self._poll(lambda: self._settled() and dead not in self.slot_owners(self._any_alive()).values(),
                   deadline, f"a replica to take over the slots of {dead}")
        return self._any_alive()

    def _any_alive(self) -> int:
        return next(p for p in self.ports if p in self.procs and self.procs[p].poll() is None)

    @staticmethod
    def _poll(cond: Callable[[], bool], deadline: float, what: str) -> None:
        while not cond():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            time.sleep(0.05)  # polling a condition (cluster state), bounded by the deadline

    def cleanup(self) -> None:
        for port in list(self.procs):
            self.kill(port)
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def running_cluster() -> Iterator[RedisCluster]:
    """A started cluster, cleaned up afterwards (what every cluster fixture does)."""
    cluster = RedisCluster()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.cleanup()
