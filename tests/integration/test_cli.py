"""The ``realtime-channels`` command as a new user meets it: run for real, as subprocesses."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest

from realtime_channels import __version__
from realtime_channels.cli import DESCRIPTION, EXIT_CANNOT_LISTEN, EXIT_CONFIG, parser
from realtime_channels.config import DEV_JWT_SECRET
from support import free_port

ROOT = Path(__file__).resolve().parents[2]
JS_DIR = ROOT / "tests" / "js"
COMMAND = str(Path(sys.executable).parent / "realtime-channels")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REALTIME_")}
    return {**env, **extra}


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([COMMAND, *args], capture_output=True, text=True, timeout=timeout,
                          env=env if env is not None else clean_env())


# --- --version, --help -------------------------------------------------------------------


def test_version_prints_the_installed_version() -> None:
    res = run("--version")
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"realtime-channels {importlib.metadata.version('realtime-channels')}\n"
    assert importlib.metadata.version("realtime-channels") == __version__


def test_top_level_help_describes_the_program_not_the_module() -> None:
    res = run("--help")
    assert res.returncode == 0, res.stderr
    assert DESCRIPTION.split("\n")[0] in res.stdout
    assert "``" not in res.stdout and "concrete backends" not in res.stdout
    for command in ("serve", "token", "functions"):
        assert re.search(rf"^\s+{command}\s+\S", res.stdout, re.M), command


def subcommand(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize("name", ["token", "serve"])
def test_every_flag_has_help_text(name: str) -> None:
    res = run(name, "--help")
    assert res.returncode == 0, res.stderr
    flat = " ".join(res.stdout.split())
    flags = [a for a in subcommand(name)._actions if a.option_strings and a.dest != "help"]
    assert flags
    for action in flags:
        assert action.help, f"{name} {action.option_strings[0]} has no help"
        assert " ".join(action.help.split()).replace("%(default)s", "") in flat


# --- token ---------------------------------------------------------------------------------


def test_token_warns_when_it_signs_with_the_development_secret() -> None:
    res = run("token", "--role", "anon", "--sub", "u1", "--claim", "tier=2")
    assert res.returncode == 0, res.stderr
    assert "DEVELOPMENT secret" in res.stderr
    claims = jwt.decode(res.stdout.strip(), DEV_JWT_SECRET, algorithms=["HS256"])
    assert (claims["role"], claims["sub"], claims["tier"]) == ("anon", "u1", 2)


def test_token_with_a_secret_does_not_warn() -> None:
    secret = "a-real-secret-of-at-least-thirty-two-characters"
    for res in (run("token", "--role", "authenticated", "--jwt-secret", secret),
                run("token", "--role", "authenticated", env=clean_env(REALTIME_JWT_SECRET=secret))):
        assert res.returncode == 0, res.stderr
        assert res.stderr == ""
        assert jwt.decode(res.stdout.strip(), secret, algorithms=["HS256"])["role"] == "authenticated"


# --- serve --workers -----------------------------------------------------------------------


def test_workers_on_a_taken_port_exit_with_a_clear_error() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        res = run("serve", "--workers", "2", "--host", "127.0.0.1", "--port", str(port),
                  "--redis-url", "redis://127.0.0.1:1/0", "--jwt-secret", "x" * 40, timeout=30)
    assert res.returncode == EXIT_CANNOT_LISTEN, res.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in res.stderr
    assert "address already in use" in res.stderr.lower()
    assert "started" not in res.stderr and "restarting" not in res.stderr


def test_workers_that_cannot_start_are_not_restarted(tmp_path: Path) -> None:
    """A worker that exits with a configuration error stops the supervisor instead of looping."""
    missing = tmp_path / "missing.toml"
    res = run("serve", "--workers", "2", "--host", "127.0.0.1", "--port", str(free_port()),
              "--redis-url", "redis://127.0.0.1:1/0", "--jwt-secret", "x" * 40,
              "--functions-config", str(missing), timeout=60)
    assert res.returncode == EXIT_CONFIG, res.stderr
    assert "stopping all workers" in res.stderr
    assert "restarting" not in res.stderr


# --- the client snippet `serve` prints -----------------------------------------------------


def lines_of(stream: object) -> queue.Queue[str]:
    q: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:  # type: ignore[attr-defined]
            q.put(line)
        q.put("")

    threading.Thread(target=pump, daemon=True).start()
    return q


def read_until(q: queue.Queue[str], done: str, timeout: float) -> list[str]:
    """Lines up to and including the first one containing ``done``."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        try:
            line = q.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line == "":
            break
        seen.append(line)
        if done in line:
            return seen
    raise AssertionError(f"no line with {done!r} in:\n{''.join(seen)}")


@pytest.fixture
def dev_server() -> Iterator[tuple[int, queue.Queue[str]]]:
    port = free_port()
    proc = subprocess.Popen([COMMAND, "serve", "--host", "127.0.0.1", "--port", str(port)],
                            env=clean_env(REALTIME_LOG_LEVEL="info"), stderr=subprocess.PIPE, text=True)
    try:
        yield port, lines_of(proc.stderr)
    finally:
        proc.terminate()
        proc.wait(10)


def test_printed_snippet_runs_verbatim_on_this_node(dev_server: tuple[int, queue.Queue[str]]) -> None:
    port, log = dev_server
    banner = "".join(read_until(log, "listening on", 30))
    head, _, rest = banner.partition("node room1.mjs):\n\n")
    assert rest, banner
    snippet = "".join(line[2:] if line.startswith("  ") else line
                      for line in rest.splitlines(keepends=True) if not re.match(r"\d{4}-\d\d-\d\d ", line))
    assert "transport: ws" in snippet and f"http://127.0.0.1:{port}" in snippet
    service_key = re.search(r"service_role key: (\S+)", head)
    assert service_key is not None
    script = JS_DIR / f"room1-snippet-{port}.mjs"
    script.write_text(snippet, encoding="utf-8")
    node = subprocess.Popen([shutil.which("node") or "node", script.name], cwd=JS_DIR, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out = lines_of(node.stdout)
        read_until(out, "SUBSCRIBED", 30)
        body = json.dumps({"messages": [{"topic": "room1", "event": "hello", "payload": {"n": 1}}]}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/broadcast", data=body, method="POST",
                                     headers={"apikey": service_key.group(1), "content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 202
        got = read_until(out, "broadcast", 30)
        assert "n: 1" in got[-1] or '"n":1' in got[-1].replace(" ", "")
    finally:
        node.terminate()
        node.wait(10)
        script.unlink()


# --- packaging and scripts/serve -----------------------------------------------------------


def test_pip_install_leaves_nothing_untracked(tmp_path: Path) -> None:
    """``pip install .`` builds in the source tree (build/, *.egg-info); .gitignore covers them."""
    src = tmp_path / "src-copy"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file() and not name.startswith("tests/js/node_modules"):
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q"], cwd=src, check=True)
    subprocess.run([*git, "add", "-A"], cwd=src, check=True)
    subprocess.run([*git, "commit", "-qm", "copy"], cwd=src, check=True)
    # what a user runs, with --target so that this environment is left alone
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check",
                          "-q", "--target", str(tmp_path / "target"), "."],
                         cwd=src, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert (src / "build").is_dir() and list((src / "src").glob("*.egg-info"))  # the build left them behind…
    status = subprocess.run(["git", "status", "--porcelain"], cwd=src, capture_output=True, text=True, check=True)
    assert status.stdout == ""  # …and git does not see it


def test_scripts_serve_says_how_to_run_the_command(tmp_path: Path) -> None:
    """scripts/serve, run on an installed .venv, tells where ``realtime-channels`` lives."""
    (tmp_path / "scripts").mkdir()
    shutil.copy2(ROOT / "scripts" / "serve", tmp_path / "scripts" / "serve")
    shutil.copy2(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    (bin_dir / "realtime-channels").symlink_to(COMMAND)
    stamp = tmp_path / ".venv" / ".installed-serve"
    stamp.touch()
    os.utime(tmp_path / "pyproject.toml", (time.time() - 60, time.time() - 60))
    res = subprocess.run([str(tmp_path / "scripts" / "serve"), "--help"], capture_output=True, text=True,
                         timeout=60, env=clean_env())
    assert res.returncode == 0, res.stderr
    assert "installing" not in res.stderr  # the stamp was honoured: nothing was installed
    assert ".venv/bin/realtime-channels" in res.stderr
    assert "source .venv/bin/activate" in res.stderr
    assert "usage: realtime-channels serve" in res.stdout
