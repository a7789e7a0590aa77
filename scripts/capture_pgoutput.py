#!/usr/bin/env python3
"""Regenerate the pgoutput fixtures in ``tests/unit/data/pgoutput/`` from a real PostgreSQL.

Dev tool, not a test.  It starts a private throw-away cluster (``initdb`` + ``pg_ctl`` with
``wal_level=logical``), creates tables covering the column types of ``cdc/pgoutput.py``, a
publication and a logical slot, runs a scripted series of changes, and writes:

* ``messages.json`` — every raw pgoutput message (hex) from
  ``pg_logical_slot_peek_binary_changes(slot, NULL, NULL, 'proto_version', '1',
  'publication_names', 'pub', 'messages', 'true')``, in stream order;
* ``images.json`` — ``to_jsonb(row)::text`` for every row image the stream carries
  (``new`` after each INSERT/UPDATE, ``old`` before each UPDATE/DELETE), in the same order;
* ``catalog.json`` — the ``pg_type`` OIDs of the built-in types, domain base types, array
  element types and the column types of each table.

Only ``psql`` is used (no Python driver).  Run as root (the cluster then runs as the
``postgres`` OS user through ``runuser``) or as any non-root user::

    python scripts/capture_pgoutput.py [--pg-bin /usr/lib/postgresql/15/bin]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "tests" / "unit" / "data" / "pgoutput"
PG_USER = "postgres"

# Built-in types whose OIDs the decoder hard-codes; the fixture records the catalog's truth.
BUILTIN_TYPES = (
    "bool int2 int4 int8 oid float4 float8 numeric text varchar bpchar name char uuid json "
    "jsonb date time timetz timestamp timestamptz interval bytea inet cidr macaddr macaddr8 "
    "money bit varbit xml tsvector tsquery jsonpath pg_lsn point int4range int8range numrange "
    "tsrange tstzrange daterange"
).split()

# A deterministic value too large and too random to stay inline: 200 md5 digests = 6,400
# hex characters, which pglz cannot shrink by the required 25 %, so it is stored out of line.
BIG = "(select string_agg(md5(g::text), '') from generate_series(1, 200) g)"

SCHEMA = f"""
create type mood as enum ('sad', 'ok', 'happy');
create domain posint as int4 check (value > 0);
create domain money_amount as numeric(12, 2);
create domain short_text as text check (length(value) < 100);

create table typed (
  id int8 primary key,
  b bool, i2 int2, i4 int4, i8 int8, o oid, f4 float4, f8 float8, n numeric, n_fixed numeric(10, 3),
  t text, vc varchar(20), bp char(5), nm name, ch "char", u uuid, j json, jb jsonb,
  d date, tm time, ttz timetz, ts timestamp, tstz timestamptz, ts3 timestamp(3), iv interval,
  by bytea, ip inet, cd cidr, mac macaddr, mac8 macaddr8, m money, bt bit(4), vb varbit, x xml,
  tv tsvector, tq tsquery, lsn pg_lsn, pt point, r int4range, tsr tstzrange,
  dom posint, domn money_amount, domt short_text, e mood,
  a_b bool[], a_i2 int2[], a_i4 int4[], a_i8 int8[], a_o oid[], a_f4 float4[], a_f8 float8[],
  a_n numeric[], a_t text[], a_vc varchar[], a_bp char(3)[], a_nm name[], a_ch "char"[],
  a_u uuid[], a_j json[], a_jb jsonb[], a_d date[], a_tm time[], a_ttz timetz[], a_ts timestamp[],
  a_tstz timestamptz[], a_iv interval[], a_by bytea[], a_ip inet[], a_cd cidr[], a_mac macaddr[],
  a_m money[], a_bt bit(2)[], a_vb varbit[], a_x xml[], a_tv tsvector[], a_2d int4[], a_3d text[],
  a_e mood[], a_r int4range[]
);

create table toast_full (id int4 primary key, big text, note text);
alter table toast_full replica identity full;
create table toast_default (id int4 primary key, big text, note text);
create table nopk (a int4, b text);
create table unpublished (id int4 primary key, v text);

create publication pub for table typed, toast_full, toast_default, nopk;
"""

ROW_TYPICAL = r"""
insert into typed values (
  1, true, 12, 1234, 9007199254740993, 4242, 1.5, 3.141592653589793, 12345.678900, 3.1,
  'hello', 'varchar', 'ab', 'a_name', 'x', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
  '{"b": 1,  "a": [1, 2.50, "x"], "b": 2}', '{"b": 1, "a": [1, 2.50, "x"], "n": null}',
  '2024-06-01', '10:00:00.123456', '10:00:00+02', '2024-06-01 10:00:00.12345',
  '2024-06-01 12:00:00.12345+02', '2024-06-01 10:00:00.5', '1 year 2 mons 3 days 04:05:06.7',
  '\x0102ff', '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03', '08:00:2b:01:02:03:04:05',
  1234.56, B'1010', B'110', '<a b="c">d</a>', 'a fat cat', 'fat & cat', '16/B374D848', '(1,2)',
  '[1,10)', '[2024-06-01 10:00+00,2024-06-02 10:00+00)',
  7, 99.5, 'dom text', 'happy',
  '{t,f}', '{1,-2}', '{1,2,3}', '{9007199254740993}', '{1,2}', '{1.5,-0.25}', '{0.1,1e+300}',
  '{1.10,2,-3.000}', '{a,b}', '{x,"y z"}', '{ab,c}', '{n1}', '{a,b}',
  '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}', array['{"a": 1}', '[1, 2]']::json[],
  array['{"k": "v"}', '3']::jsonb[], '{2024-06-01,2024-06-02}', '{10:00:00,23:59:59.999}',
  '{10:00:00+02,11:00:00-05:30}', '{"2024-06-01 10:00:00","2024-06-01 10:00:00.1"}',
  '{"2024-06-01 10:00:00+00","2024-06-01 10:00:00.123+03"}', '{"1 day","-01:00:00"}',
  array['\x00'::bytea, '\xdead'::bytea], '{10.1.2.3,::1}', '{10.0.0.0/8}', '{08:00:2b:01:02:03}',
  '{1.00,2.50}', array[B'10', B'01'], array[B'1', B'1010'], array['<x/>'::xml],
  array['a b'::tsvector], '{{1,2},{3,4}}', '{{{a,b}},{{c,d}}}', '{sad,happy}', '{"[1,3)",empty}'
);
"""

ROW_NULLS = "insert into typed (id) values (2);"

ROW_EDGES = r"""
insert into typed (id, f4, f8, n, n_fixed, t, vc, bp, ch, j, jb, d, tm, ttz, ts, tstz, ts3, iv, by,
  a_f4, a_f8, a_n, a_t, a_j, a_jb, a_d, a_ts, a_tstz, a_by, a_2d, a_3d, a_ttz, i2, i4, i8, o, m, e,
  a_e, dom, domn, domt)
values (3, 'NaN', 'Infinity', 'NaN', -0.5, E'quote " back \\ nl \n tab \t uni é 😀', '',
  '', ' ', '[]', '{"s": "a\"b\\c", "u": "\u00e9", "big": 123456789012345678901234567890.5}',
  '4713-01-01 BC', '24:00:00', '23:59:59.999999-03:00:15', '0044-03-15 10:00:00 BC',
  'infinity', '-infinity', '-1 days -00:00:01', '\x',
  '{NaN,Infinity,-Infinity,3.4028235e+38,1.1754944e-38}',
  '{-Infinity,1e-07,-0,2.2250738585072014e-308}', '{NaN,Infinity,-Infinity,0.000100}',
  array['NULL', null, '', ' lead', 'trail ', 'a,b', '{x}', 'q"q', 'b\s', E'c\\d', 'é'],
  array[null, '"str"', 'null']::json[], array['{}', null]::jsonb[],
  '{infinity,-infinity,"0001-01-01 BC"}', '{infinity,"2024-06-01 10:00:00.000001"}',
  '{-infinity,"1999-12-31 23:59:59.999999+00"}', array['\x5c22'::bytea, null], '[0:1]={1,2}',
  '{}', '{"10:00:00+05:30","10:00:00-00:00:30"}', -32768, -2147483648,
  -9223372036854775808, 4294967295, -0.01, 'sad', '{}', 2147483647, -1234567890.12, '');
"""

ROW_MORE = r"""
insert into typed (id, f4, f8, n, a_n, ts, tstz, ttz, tm, d, jb, a_jb, a_2d)
values (4, '-Infinity', 'NaN', 'Infinity', '{-Infinity,NULL}', '10000-01-01 00:00:00',
  '2024-12-31 23:59:59.999999+00', '00:00:00+14', '00:00:00', 'infinity', 'null',
  '{"\"quoted\"",1.50}', '{{NULL,2},{3,NULL}}'),
  (5, 1e20, 1e-5, '-0.000100', '{1e-30}', '2000-01-01 00:00:00', '1970-01-01 00:00:00+00',
  '12:34:56.789-11', '12:34:56.789', '2000-02-29', '"just a string"', '{}', '[-1:0][2:3]={{1,2},{3,4}}');
"""


@dataclass(frozen=True)
class Step:
    """One scripted change.  ``old`` runs before ``sql``, ``new`` after; both return
    ``to_jsonb`` images in the order the stream will carry them."""

    sql: Sequence[str]
    old: str | None = None
    new: str | None = None
    table: str | None = None


def images(table: str, where: str) -> str:
    return f"select to_jsonb(r_)::text from {table} r_ where {where} order by 1"


STEPS: tuple[Step, ...] = (
    Step([ROW_TYPICAL], new=images("typed", "id = 1"), table="typed"),
    Step([ROW_NULLS], new=images("typed", "id = 2"), table="typed"),
    Step([ROW_EDGES], new=images("typed", "id = 3"), table="typed"),
    Step([ROW_MORE], new="select to_jsonb(r_)::text from typed r_ where id in (4, 5) order by id",
         table="typed"),
    # REPLICA IDENTITY DEFAULT: no old tuple for a plain update, 'K' when the key changes,
    # key-only 'K' on delete (postgres-cdc.md "REPLICA IDENTITY").
    Step(["insert into typed (id, t) values (6, 'six')"], new=images("typed", "id = 6"),
         table="typed"),
    Step(["update typed set t = 'six!' where id = 6"], new=images("typed", "id = 6"), table="typed"),
    Step(["update typed set id = 7 where id = 6"], old=images("typed", "id = 6"),
         new=images("typed", "id = 7"), table="typed"),
    Step(["delete from typed where id = 7"], old=images("typed", "id = 7"), table="typed"),
    # TOAST: unchanged out-of-line values are sent as 'u' under FULL and DEFAULT.
    Step([f"insert into toast_full values (1, {BIG}, 'n1')"], new=images("toast_full", "id = 1"),
         table="toast_full"),
    Step(["update toast_full set note = 'n2' where id = 1"], old=images("toast_full", "id = 1"),
         new=images("toast_full", "id = 1"), table="toast_full"),
    Step(["delete from toast_full where id = 1"], old=images("toast_full", "id = 1"),
         table="toast_full"),
    Step([f"insert into toast_default values (1, {BIG}, 'n1')"],
         new=images("toast_default", "id = 1"), table="toast_default"),
    Step(["update toast_default set note = 'n2' where id = 1"],
         new=images("toast_default", "id = 1"), table="toast_default"),
    Step(["update toast_default set id = 2 where id = 1"], old=images("toast_default", "id = 1"),
         new=images("toast_default", "id = 2"), table="toast_default"),
    Step(["delete from toast_default where id = 2"], old=images("toast_default", "id = 2"),
         table="toast_default"),
    # Schema change mid-stream: a fresh Relation message precedes the next row.
    Step(["alter table toast_default add column extra int4 default 5",
          "insert into toast_default (id, note) values (3, 'after alter')"],
         new=images("toast_default", "id = 3"), table="toast_default"),
    Step(["insert into nopk values (1, 'x'), (null, null)"],
         new="select to_jsonb(r_)::text from nopk r_ order by a nulls last", table="nopk"),
    Step(["insert into unpublished values (1, 'not streamed')"]),
    Step(["truncate nopk"]),
    Step(["select pg_logical_emit_message(true, 'rc', 'transactional')",
          "select pg_logical_emit_message(false, 'rc', convert_to('bytes é', 'UTF8'))"]),
    # A transaction replayed from another origin carries an Origin message after Begin.
    Step(["select pg_replication_origin_create('upstream')",
          "select pg_replication_origin_session_setup('upstream')",
          "begin",
          "select pg_replication_origin_xact_setup('1/ABCDEF00', '2024-06-01 10:00:00+00')",
          "insert into nopk values (2, 'from upstream')",
          "commit",
          "select pg_replication_origin_session_reset()"],
         new="select to_jsonb(r_)::text from nopk r_ where a = 2", table="nopk"),
)

CATALOG_TYPES = """
select json_object_agg(typname, json_build_array(oid, typarray))
from pg_type where typname = any(string_to_array(%s, ' ')) and typnamespace = 'pg_catalog'::regnamespace
"""
CATALOG_USER_TYPES = """
select json_object_agg(oid, json_build_object('name', typname, 'type', typtype,
  'base', nullif(typbasetype, 0), 'elem', nullif(typelem, 0)))
from pg_type where oid >= 16384
"""
CATALOG_COLUMNS = """
select json_object_agg(c.relname, (select json_agg(json_build_array(a.attname, t.typname, a.atttypid)
  order by a.attnum) from pg_attribute a join pg_type t on t.oid = a.atttypid
  where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped))
from pg_class c where c.relname in ('typed', 'toast_full', 'toast_default', 'nopk')
"""


class Cluster:
    def __init__(self, pg_bin: Path) -> None:
        self.pg_bin = pg_bin
        self.tmp = Path(tempfile.mkdtemp(prefix="pgoutput-capture-"))
        self.data = self.tmp / "data"
        self.port = free_port()
        self.as_root = os.geteuid() == 0
        if self.as_root:  # initdb refuses root; the cluster belongs to the postgres user
            os.chmod(self.tmp, 0o755)
            shutil.chown(self.tmp, PG_USER)

    def run(self, argv: Sequence[str], check: bool = True) -> str:
        prefix = ["runuser", "-u", PG_USER, "--"] if self.as_root else []
        proc = subprocess.run([*prefix, *argv], capture_output=True, text=True, cwd=self.tmp)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({proc.returncode}):\n{proc.stderr}")
        return proc.stdout

    def start(self) -> None:
        self.run([str(self.pg_bin / "initdb"), "-D", str(self.data), "-U", PG_USER,
                  "--auth=trust", "-E", "UTF8", "--no-locale"])
        opts = (f"-c port={self.port} -c listen_addresses='' -c unix_socket_directories={self.tmp}"
                " -c wal_level=logical -c max_wal_senders=4 -c max_replication_slots=4"
                " -c fsync=off -c TimeZone=UTC -c DateStyle=ISO,MDY -c extra_float_digits=1")
        self.run([str(self.pg_bin / "pg_ctl"), "-D", str(self.data), "-l",
                  str(self.tmp / "log"), "-o", opts, "-w", "start"])

    def stop(self) -> None:
        try:
            self.run([str(self.pg_bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                      "stop"], check=False)
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def psql(self, *commands: str) -> list[str]:
        argv = [str(self.pg_bin / "psql"), "-X", "-q", "-At", "-F", "\t", "-v", "ON_ERROR_STOP=1",
                "-h", str(self.tmp), "-p", str(self.port), "-U", PG_USER, "-d", "postgres"]
        for command in commands:
            argv += ["-c", command]
        return [line for line in self.run(argv).splitlines() if line]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def capture(cluster: Cluster) -> tuple[list[dict[str, object]], list[dict[str, str]], object]:
    cluster.psql(SCHEMA)
    cluster.psql("select pg_create_logical_replication_slot('slot', 'pgoutput')")
    row_images: list[dict[str, str]] = []
    for step in STEPS:
        if step.old is not None:
            assert step.table is not None
            row_images += [{"kind": "old", "table": step.table, "jsonb": j}
                           for j in cluster.psql(step.old)]
        cluster.psql(*step.sql)
        if step.new is not None:
            assert step.table is not None
            row_images += [{"kind": "new", "table": step.table, "jsonb": j}
                           for j in cluster.psql(step.new)]
    rows = cluster.psql(
        "select lsn, xid, encode(data, 'hex') from pg_logical_slot_peek_binary_changes('slot',"
        " NULL, NULL, 'proto_version', '1', 'publication_names', 'pub', 'messages', 'true')"
    )
    messages: list[dict[str, object]] = []
    for row in rows:
        lsn, xid, data = row.split("\t")
        messages.append({"lsn": lsn, "xid": int(xid), "hex": data})
    quoted = "'" + " ".join(BUILTIN_TYPES) + "'"
    catalog = {
        "server_version": cluster.psql("show server_version")[0],
        "builtin": json.loads(cluster.psql(CATALOG_TYPES % quoted)[0]),
        "user_types": json.loads(cluster.psql(CATALOG_USER_TYPES)[0]),
        "columns": json.loads(cluster.psql(CATALOG_COLUMNS)[0]),
    }
    cluster.psql("select pg_drop_replication_slot('slot')")
    return messages, row_images, catalog


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pg-bin", type=Path, default=Path("/usr/lib/postgresql/15/bin"))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    cluster = Cluster(args.pg_bin)
    try:
        cluster.start()
        messages, row_images, catalog = capture(cluster)
    finally:
        cluster.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, value in (("messages", messages), ("images", row_images), ("catalog", catalog)):
        text = json.dumps(value, indent=1, ensure_ascii=False, sort_keys=name == "catalog")
        (args.out / f"{name}.json").write_text(text + "\n", encoding="utf-8")
    print(f"wrote {len(messages)} messages and {len(row_images)} row images to {args.out}")


if __name__ == "__main__":
    main()
