"""Config file validation: every mistake names the file and the exact line."""

from __future__ import annotations

from pathlib import Path

import pytest
from fnsupport import HERE

from realtime_channels import errors
from realtime_channels.functions import load_config

EXAMPLES = HERE.parent.parent / "examples" / "functions"


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "functions.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def _error(tmp_path: Path, text: str) -> str:
    path = _write(tmp_path, text)
    with pytest.raises(errors.ConfigError) as info:
        load_config(path)
    return str(info.value).replace(path, "functions.toml")


PY = f'python_path = ["{HERE}"]\n'


def test_valid_config_loads_every_field(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, PY + """
[defaults]
timeout = 3
concurrency = 2
max_attempts = 4
backoff_base = 0.01
backoff_max = 0.5

[queue]
max_pending = 50
dlq_max = 7
poll_interval = 0.1

[[trigger]]
name = "hook"
on = "broadcast"
topic = "room:*"
event = "msg*"
url = "https://example.com/functions/v1/hook"
timeout = 1.5

[[trigger]]
name = "rows"
on = "postgres"
schema = "public"
table = "todos"
event = "insert"
filter = "id=gt.10"
python = "fnmod:record"
max_attempts = 9

[[gate]]
kind = "authorize_send"
topic = "mod:*"
event = "chat"
python = "fnmod:deny_gate"
fail_open = true
"""))
    hook, rows = cfg.triggers
    assert (hook.name, hook.on, hook.topic, hook.event, hook.url, hook.python) == (
        "hook", "broadcast", "room:*", "msg*", "https://example.com/functions/v1/hook", None)
    assert (hook.timeout, hook.concurrency, hook.max_attempts, hook.backoff_base, hook.backoff_max) == (
        1.5, 2, 4, 0.01, 0.5)
    assert (rows.on, rows.schema, rows.table, rows.event, rows.filter, rows.max_attempts) == (
        "postgres", "public", "todos", "INSERT", "id=gt.10", 9)
    assert rows.handler is not None and rows.conditions[0].column == "id"
    (gate,) = cfg.gates
    assert (gate.kind, gate.topic, gate.event, gate.fail_open, gate.timeout) == (
        "authorize_send", "mod:*", "chat", True, 2.0)
    assert (cfg.max_pending, cfg.dlq_max, cfg.poll_interval) == (50, 7, 0.1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (  # the example: the line of `on`
            '[[trigger]]\nname = "x"\n\n# comment\non = "foo"\nurl = "http://h/"\n',
            "functions.toml:5: trigger 'x': unknown `on` value 'foo'",
        ),
        (  # second trigger: the count of [[trigger]] headers picks the right table
            '[[trigger]]\nname = "a"\non = "broadcast"\nurl = "http://h/"\n\n[[trigger]]\nname = "b"\n'
            'on = "broadcast"\nurl = "ftp://h/"\n',
            "functions.toml:9: trigger 'b': `url` must be an http(s) URL, got 'ftp://h/'",
        ),
        (
            '[[trigger]]\nname = "a"\non = "broadcast"\nurl = "http://h/"\npython = "fnmod:record"\n',
            "functions.toml:5: trigger 'a': exactly one of `url` or `python` is required",
        ),
        (
            '[[trigger]]\nname = "a"\non = "broadcast"\n',
            "functions.toml:1: trigger 'a': exactly one of `url` or `python` is required",
        ),
        (
            '[[trigger]]\non = "broadcast"\nurl = "http://h/"\n',
            "functions.toml:1: trigger #1: `name` is required",
        ),
        (
            '[[trigger]]\nname = "a"\non = "broadcast"\nurl = "http://h/"\n[[trigger]]\nname = "a"\n'
            'on = "channel.join"\nurl = "http://h/"\n',
            "functions.toml:6: trigger 'a': duplicate name (first at line 2)",
        ),
        (
            '[[trigger]]\nname = "p"\non = "postgres"\nschema = "public"\nurl = "http://h/"\n',
            "functions.toml:1: trigger 'p': a postgres trigger needs `table`",
        ),
        (
            '[[trigger]]\nname = "p"\non = "postgres"\nschema = "public"\ntable = "t"\nfilter = "id=nope.1"\n'
            'url = "http://h/"\n',
            "functions.toml:6: trigger 'p': Error parsing `filter` params: ",
        ),
        (
            '[[trigger]]\nname = "p"\non = "postgres"\nschema = "s"\ntable = "t"\nevent = "TRUNCATE"\n'
            'url = "http://h/"\n',
            "functions.toml:6: trigger 'p': `event` must be INSERT, UPDATE, DELETE or *, got 'TRUNCATE'",
        ),
        (
            '[[trigger]]\nname = "j"\non = "channel.join"\nevent = "x"\nurl = "http://h/"\n',
            "functions.toml:4: trigger 'j': `event` applies only to broadcast and postgres triggers",
        ),
        (
            '[[trigger]]\nname = "j"\non = "presence.join"\ntable = "x"\nurl = "http://h/"\n',
            "functions.toml:4: trigger 'j': `table` applies only to postgres triggers",
        ),
        (
            PY + '[[trigger]]\nname = "m"\non = "broadcast"\npython = "no_such_module_xyz:f"\n',
            "functions.toml:5: trigger 'm': cannot import module 'no_such_module_xyz'",
        ),
        (
            PY + '[[trigger]]\nname = "m"\non = "broadcast"\npython = "fnmod:missing"\n',
            "functions.toml:5: trigger 'm': module 'fnmod' has no attribute 'missing'",
        ),
        (
            PY + '[[trigger]]\nname = "m"\non = "broadcast"\npython = "fnmod:not_async"\n',
            "functions.toml:5: trigger 'm': 'fnmod:not_async' must be an async function (async def)",
        ),
        (
            '[[trigger]]\nname = "m"\non = "broadcast"\npython = "fnmod"\n',
            "functions.toml:4: trigger 'm': `python` must look like \"module:function\", got 'fnmod'",
        ),
        (
            '[[trigger]]\nname = "t"\non = "broadcast"\nurl = "http://h/"\ntimeout = 0\n',
            "functions.toml:5: trigger 't': `timeout` must be > 0",
        ),
        (
            '[[trigger]]\nname = "t"\non = "broadcast"\nurl = "http://h/"\nconcurrency = true\n',
            "functions.toml:5: trigger 't': `concurrency` must be an integer >= 1, got True",
        ),
        (
            '[defaults]\nmax_attempts = 0\n[[trigger]]\nname = "t"\non = "broadcast"\nurl = "http://h/"\n',
            "functions.toml:3: trigger 't': `max_attempts` must be an integer >= 1, got 0",
        ),
        (
            '[[trigger]]\nname = "t"\non = "broadcast"\nurl = "http://h/"\nbackoff_base = 2\nbackoff_max = 1\n',
            "functions.toml:6: trigger 't': `backoff_max` (1.0) is below `backoff_base` (2.0)",
        ),
        (
            '[[trigger]]\nname = "t"\non = "broadcast"\nurl = "http://h/"\ntopik = "x"\n',
            "functions.toml:5: trigger 't': unknown key `topik`",
        ),
        (
            '[defaults]\ntimeout = 1\nretries = 3\n',
            "functions.toml:3: defaults: unknown key `retries`",
        ),
        (
            'triggers = []\n',
            "functions.toml:1: unknown key `triggers`",
        ),
        (
            '[[gate]]\nkind = "authorize_leave"\nurl = "http://h/"\n',
            "functions.toml:2: gate 'gate #1': `kind` must be one of authorize_join, authorize_send",
        ),
        (
            '[[gate]]\nname = "g"\nkind = "authorize_join"\nurl = "http://h/"\nfail_open = "yes"\n',
            "functions.toml:5: gate 'g': `fail_open` must be true or false",
        ),
        (
            '[[gate]]\nname = "g"\nkind = "authorize_join"\nevent = "x"\nurl = "http://h/"\n',
            "functions.toml:4: gate 'g': `event` applies only to authorize_send gates",
        ),
        (  # TOML syntax errors carry tomllib's position
            '[[trigger]]\nname = "a"\non = broadcast\n',
            "functions.toml:3: invalid TOML: Invalid value",
        ),
        (
            '[queue]\npoll_interval = 0\n',
            "functions.toml:2: queue: `poll_interval` must be > 0",
        ),
    ],
)
def test_config_errors_name_the_exact_line(tmp_path: Path, text: str, expected: str) -> None:
    assert _error(tmp_path, text).startswith(expected)


def test_multiline_strings_do_not_shift_line_numbers(tmp_path: Path) -> None:
    text = '[[trigger]]\nname = "a"\non = "broadcast"\nurl = "http://h/"\n\n[[trigger]]\nname = "b"\n' \
           'topic = """\nevent = "x"\n"""\non = "nope"\nurl = "http://h/"\n'
    assert _error(tmp_path, text).startswith("functions.toml:11: trigger 'b': unknown `on` value 'nope'")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError, match="cannot read the functions config"):
        load_config(str(tmp_path / "missing.toml"))


def test_the_example_config_loads() -> None:
    cfg = load_config(str(EXAMPLES / "functions.toml"))
    assert [t.name for t in cfg.triggers] == ["respond-python", "respond-http"]
    assert cfg.triggers[0].handler is not None
    assert cfg.triggers[1].url == "http://127.0.0.1:8787/respond"
