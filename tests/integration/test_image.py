"""The container image, tested where no image can be built: the Dockerfile's steps run for real.

The Dockerfile only copies the source and calls ``docker/image.sh``; these tests read the
Dockerfile, copy what its ``COPY`` lines copy, run its ``RUN`` install into a fresh prefix (a new
virtual environment, packages from PyPI), start its ``CMD`` with its ``ENV`` and then use the
server as the other containers of Supabase's compose network would: over a non-loopback address,
over a WebSocket, and through the HEALTHCHECK command itself.  Every command comes from the
Dockerfile's text, so the tests fail when the Dockerfile and the script drift apart.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from rawclient import V2, open_client, unique_topic
from support import TEST_SECRET, ServerProc, free_port, wait_healthy

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
SCRIPT = "docker/image.sh"
#: Supabase's docker/docker-compose.yml, realtime service, ``healthcheck.test`` (CMD-SHELL)
SUPABASE_HEALTHCHECK = ('curl -sSfL --head -o /dev/null -H "Authorization: Bearer ${ANON_KEY}" '
                        "http://localhost:4000/api/tenants/realtime-dev/health")
#: exit status of the HEALTHCHECK command against a started server: 0, healthy
HEALTHCHECK_ACCEPTED = {0}
INSTALL_TIMEOUT_S = 540
START_TIMEOUT_S = 30


def instructions(text: str) -> list[tuple[str, str]]:
    """The Dockerfile's instructions as ``(KEYWORD, arguments)``, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).strip().partition(" ")
        out.append((keyword.upper(), " ".join(args.split()) if keyword.upper() != "HEALTHCHECK" else args.strip()))
        pending = ""
    return out


def dockerfile() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text(encoding="utf-8"))


def args_of(keyword: str) -> list[str]:
    return [args for kw, args in dockerfile() if kw == keyword]


def env_of_image() -> dict[str, str]:
    env: dict[str, str] = {}
    for args in args_of("ENV"):
        for item in shlex.split(args):
            key, sep, value = item.partition("=")
            assert sep, f"ENV {args!r}: use the KEY=VALUE form"
            env[key] = value
    return env


def install_argv() -> list[str]:
    """The ``image.sh install PREFIX`` command of the Dockerfile's RUN lines."""
    for args in args_of("RUN"):
        for step in args.split("&&"):
            argv = shlex.split(step)
            if argv and argv[0].endswith(SCRIPT) and argv[1:2] == ["install"]:
                assert len(argv) == 3, argv
                return argv
    raise AssertionError(f"no RUN line calls {SCRIPT} install")


def start_argv() -> list[str]:
    entry = args_of("ENTRYPOINT")
    cmd = args_of("CMD")
    assert len(cmd) == 1, "one CMD"
    argv = (json.loads(entry[-1]) if entry else []) + json.loads(cmd[0])
    assert isinstance(argv, list) and argv[0].endswith(SCRIPT) and argv[1] == "start", argv
    return [str(a) for a in argv]


def healthcheck() -> tuple[dict[str, str], str]:
    """The HEALTHCHECK's options and its shell command."""
    (args,) = args_of("HEALTHCHECK")
    options: dict[str, str] = {}
    rest = args
    while rest.startswith("--"):
        option, _, rest = rest.partition(" ")
        name, _, value = option[2:].partition("=")
        options[name] = value
        rest = rest.lstrip()
    assert rest.startswith("CMD "), f"HEALTHCHECK {args!r}: expected the shell form, CMD <command>"
    return options, rest[len("CMD "):].strip()


def test_dockerfile_shape() -> None:
    kws = [kw for kw, _ in dockerfile()]
    (base,) = args_of("FROM")
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", base), base
    users = args_of("USER")
    assert users and kws.index("USER") > kws.index("RUN"), "the server runs as the USER set after the install"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users
    assert args_of("EXPOSE") == ["4000"]
    assert env_of_image()["REALTIME_HOST"] == "0.0.0.0"
    options, command = healthcheck()
    assert command == SUPABASE_HEALTHCHECK
    # Supabase's timing for the same check
    assert options == {"interval": "30s", "timeout": "5s", "start-period": "10s", "retries": "3"}
    assert install_argv()[1:] == ["install", env_of_image()["REALTIME_CHANNELS_PREFIX"]]
    assert start_argv()[1:] == ["start"]
    copied = [shlex.split(args)[:-1] for args in args_of("COPY")]
    assert ["docker"] in copied and ["src"] in copied
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    for path in (".git", ".venv", "**/node_modules", "tests/artifacts"):
        assert path in ignored, path
    assert os.access(ROOT / SCRIPT, os.X_OK), f"{SCRIPT} is executable"


def copy_build_context(app: Path) -> None:
    """What the Dockerfile's COPY lines put in the WORKDIR, copied from this checkout."""
    for args in args_of("COPY"):
        *sources, dest = shlex.split(args)
        target = app / dest
        for source in sources:
            path = ROOT / source
            if path.is_dir():  # as Docker does: the directory's contents go to the destination
                shutil.copytree(path, target, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
            else:
                into = target / path.name if dest.endswith("/") else target
                into.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, into)


def machine_path() -> str:
    """PATH without this checkout's virtual environment: the install must bring everything."""
    venvs = {str(Path(sys.executable).parent), str(ROOT / ".venv" / "bin"),
             str((ROOT / ".venv").resolve() / "bin")}
    return os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p not in venvs)


def non_loopback_ipv4() -> str | None:
    """An address of this machine other machines could use, if it has one."""
    candidates: list[str] = []
    try:
        candidates += socket.gethostbyname_ex(socket.gethostname())[2]
    except OSError:
        pass
    ip = shutil.which("ip")
    if ip:
        out = subprocess.run([ip, "-4", "-o", "addr", "show", "scope", "global"], capture_output=True,
                             text=True, timeout=10).stdout
        candidates += re.findall(r"\binet (\d+\.\d+\.\d+\.\d+)/", out)
    return next((a for a in candidates if not a.startswith("127.")), None)


def listening_addresses(port: int) -> set[str]:
    """Local IPv4 addresses with a LISTEN socket on ``port`` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, _, hex_port = local.partition(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.mark.timeout(INSTALL_TIMEOUT_S + 120)
async def test_image_install_and_start(tmp_path: Path) -> None:
    app, prefix = tmp_path / "app", tmp_path / "prefix"
    copy_build_context(app)
    image_prefix = env_of_image()["REALTIME_CHANNELS_PREFIX"]
    image_env = {k: v.replace(image_prefix, str(prefix)) for k, v in env_of_image().items()}
    home = tmp_path / "home"
    home.mkdir()
    base_env = {"PATH": machine_path(), "HOME": str(home), "LANG": "C.UTF-8", **image_env}

    # RUN docker/image.sh install /opt/realtime-channels, into a fresh prefix
    argv = [a.replace(image_prefix, str(prefix)) for a in install_argv()]
    done = subprocess.run(argv, cwd=app, env=base_env, capture_output=True, text=True,
                          timeout=INSTALL_TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"realtime-channels \d", done.stdout), done.stdout
    python = prefix / "bin" / "python"
    probe = ("import importlib.util as u; print(u.find_spec('pytest') is None, "
             "u.find_spec('opentelemetry.sdk') is not None)")
    assert subprocess.run([python, "-c", probe], capture_output=True, text=True, env=base_env,
                          timeout=30).stdout.split() == ["True", "True"], "runtime extras only, no test tools"

    # CMD ["docker/image.sh", "start"], on a free port given the Supabase way (PORT)
    port = free_port()
    env = {**base_env, "PORT": str(port), "REALTIME_JWT_SECRET": TEST_SECRET, "API_JWT_SECRET": TEST_SECRET}
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(start_argv(), cwd=app, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = ServerProc(port=port, proc=proc, log_path=str(log_path))
    try:
        wait_healthy(proc, server.http_url, START_TIMEOUT_S, server.log)

        # start exec'd the installed server (same pid: it receives docker stop's SIGTERM)
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert str(prefix).encode() in b" ".join(cmdline), cmdline
        # bound to every interface, as the other containers of the compose network reach it
        assert listening_addresses(port) == {"0.0.0.0"}
        address = non_loopback_ipv4()
        if address is not None:
            assert http_status(f"http://{address}:{port}/healthcheck") == 200

        async with open_client(server, V2) as client:
            await client.join_ok(unique_topic("image"))

        # HEALTHCHECK, the Dockerfile's own command, on this port
        options, command = healthcheck()
        assert "localhost:4000/" in command
        command = command.replace("localhost:4000/", f"localhost:{port}/")
        timeout_s = float(options["timeout"].rstrip("s"))
        check = subprocess.run(["/bin/sh", "-c", command], env={**env, "ANON_KEY": server.anon_key},
                               capture_output=True, text=True, timeout=timeout_s + 5)
        assert check.returncode in HEALTHCHECK_ACCEPTED, (check.returncode, check.stderr)
    finally:
        server.stop()
    assert proc.returncode == 0, f"SIGTERM (docker stop) shuts down cleanly:\n{server.log()}"

    # without a JWT secret the container refuses to serve the public development secret
    refused = subprocess.run(start_argv(), cwd=app, env={**base_env, "PORT": str(port)},
                             capture_output=True, text=True, timeout=START_TIMEOUT_S)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "0.0.0.0" in refused.stderr, refused.stderr
