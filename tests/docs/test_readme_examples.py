"""The README's supabase-js and Python examples run verbatim against a real server and print what
the README says they print. The JS example runs on the Node installed here (20 or later) from
tests/js, where the pinned @supabase/supabase-js and ws are installed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import ServerProc, start_server

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
JS_DIR = ROOT / "tests" / "js"
RUN_TIMEOUT = 60


def only_block(lang: str) -> str:
    blocks = re.findall(rf"^```{lang}\n(.*?)^```", README.read_text(encoding="utf-8"), re.M | re.S)
    assert len(blocks) == 1, f"expected exactly one ```{lang} block in README.md, found {len(blocks)}"
    return blocks[0]


@pytest.fixture(scope="module")
def example_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    server = start_server(str(tmp_path_factory.mktemp("readme")))
    yield server
    server.stop()


def example_env(server: ServerProc) -> dict[str, str]:
    return {**os.environ, "ANON_KEY": server.anon_key, "REALTIME_URL": server.http_url}


def test_js_example_runs_verbatim(example_server: ServerProc) -> None:
    source = only_block("js")
    assert "import ws from 'ws'" in source and "transport: ws" in source  # Node 20 needs both
    script = JS_DIR / f".readme-example-{uuid.uuid4().hex}.mjs"
    script.write_text(source, encoding="utf-8")
    try:
        run = subprocess.run(["node", script.name], cwd=JS_DIR, env=example_env(example_server),
                             capture_output=True, text=True, timeout=RUN_TIMEOUT)
    finally:
        script.unlink()
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert sorted(lines) == sorted(["joined alice", "cursor { x: 1, y: 2 }", "cursor { x: 3, y: 4 }"]), run.stdout
    # the README states the output; keep it in step with what the example really prints
    readme = README.read_text(encoding="utf-8")
    for line in lines:
        assert f"`{line}`" in readme


def test_python_example_runs_verbatim(example_server: ServerProc, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(only_block("python"), encoding="utf-8")
    run = subprocess.run([sys.executable, str(script)], env=example_env(example_server),
                         capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.splitlines() == ["cursor {'x': 1, 'y': 2}"], run.stdout
    assert "`cursor {'x': 1, 'y': 2}`" in README.read_text(encoding="utf-8")


def test_token_command_in_readme_mints_a_key_the_server_accepts(tmp_path: Path) -> None:
    """The README's `export ANON_KEY=$(.venv/bin/realtime-channels token --role anon)` gives a key
    signed with the development secret the server uses when none is configured."""
    assert "realtime-channels token --role anon" in README.read_text(encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("REALTIME_JWT")}
    cli = Path(sys.executable).with_name("realtime-channels")
    run = subprocess.run([str(cli), "token", "--role", "anon"], env=env, capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    key = run.stdout.strip()
    import jwt
    from realtime_channels.config import DEV_JWT_SECRET

    claims = jwt.decode(key, DEV_JWT_SECRET, algorithms=["HS256"])
    assert claims["role"] == "anon" and claims["exp"] > 0
