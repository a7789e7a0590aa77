"""A private, throwaway PostgreSQL cluster for tests (``wal_level=logical``, free port).

Built from the installed server binaries; no system service is used.  ``initdb``/``pg_ctl``
refuse to run as root, so as root they run as the ``postgres`` OS user (``runuser``), in a
directory that user owns.

Test modules make their own databases on the session's cluster with :func:`create_database`
(Supabase's roles included) and drop them with :func:`drop_database`.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg


#: The roles every Supabase database has (protocol.md §6.6, §7.2), created if missing.  Roles are
#: cluster-wide; the cluster's superuser may SET ROLE to any of them.
SUPABASE_ROLES_SQL = """
do $$
begin
    if not exists (select 1 from pg_roles where rolname = 'anon') then
        create role anon nologin noinherit;
    end if;
    if not exists (select 1 from pg_roles where rolname = 'authenticated') then
        create role authenticated nologin noinherit;
    end if;
    if not exists (select 1 from pg_roles where rolname = 'service_role') then
        create role service_role nologin noinherit bypassrls;
    end if;
end
$$;
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_bindir() -> Path:
    """The newest installed PostgreSQL server's bin directory."""
    env = os.environ.get("REALTIME_TEST_PG_BINDIR")
    if env:
        return Path(env)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if candidates:
        return Path(candidates[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise RuntimeError("no PostgreSQL server binaries found (install the postgresql package)")


class PgCluster:
    def __init__(self, *, extra_conf: dict[str, str] | None = None) -> None:
        self.bindir = find_bindir()
        self.port = _free_port()
        self.as_root = os.geteuid() == 0
        self.base = Path(tempfile.mkdtemp(prefix="rc-pg-"))
        self.data = self.base / "data"
        self.logfile = self.base / "postgres.log"
        self.extra_conf = extra_conf or {}
        if self.as_root:
            pw = pwd.getpwnam("postgres")
            os.chown(self.base, pw.pw_uid, pw.pw_gid)

    # commands run as the postgres user when we are root
    def _run(self, *args: str) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=self.base)

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")
        conf = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.base}'",
            "wal_level": "logical",
            "max_wal_senders": "20",
            "max_replication_slots": "20",
            "fsync": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            "max_slot_wal_keep_size": "'1GB'",
            **self.extra_conf,
        }
        with open(self.data / "postgresql.conf", "a", encoding="utf-8") as f:
            for key, value in conf.items():
                f.write(f"{key} = {value}\n")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.base, ignore_errors=True)


def database_dsn(cluster: PgCluster, name: str) -> str:
    """The dsn of database ``name`` on ``cluster`` (same user, host and port)."""
    return cluster.dsn.rsplit("/", 1)[0] + f"/{name}"


def create_database(cluster: PgCluster, name: str) -> str:
    """(Re)create database ``name`` on ``cluster``, make sure Supabase's roles exist, and
    return its dsn.  A leftover of an interrupted run is dropped first."""
    with psycopg.connect(cluster.dsn, autocommit=True) as admin:
        admin.execute(f'drop database if exists "{name}" with (force)')
        admin.execute(f'create database "{name}"')
        admin.execute(SUPABASE_ROLES_SQL)
    return database_dsn(cluster, name)


def install_auth_helpers(dsn: str) -> None:
    """Install ``auth.uid()``/``auth.jwt()`` (``realtime_channels.cdc.sql``) in the database."""
    import asyncio

    from realtime_channels.cdc.sql import install_auth_helpers as install

    async def run() -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await install(conn)

    asyncio.run(run())


def drop_database(cluster: PgCluster, name: str, *, slots_timeout: float = 15.0) -> None:
    """Drop database ``name`` and the replication slots on it, once no process streams them
    (a server stopped just before may still be letting go of its slot)."""
    with psycopg.connect(cluster.dsn, autocommit=True) as admin:
        deadline = time.monotonic() + slots_timeout
        while admin.execute(
            "select 1 from pg_replication_slots where database = %s and active", (name,)
        ).fetchone() is not None:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {slots_timeout}s waiting for replication slots of {name} to be released"
                )
            time.sleep(0.05)  # polling a condition, bounded by the deadline
        admin.execute(
            "select pg_drop_replication_slot(slot_name) from pg_replication_slots where database = %s", (name,)
        )
        admin.execute(f'drop database if exists "{name}" with (force)')
