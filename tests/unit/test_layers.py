"""Dependency direction between layers (design.md §2), read from the source with ``ast``.

* ``protocol/`` is sans-I/O: no asyncio, sockets, clocks, database or Redis clients, and nothing
  from the package except ``errors`` and its own sibling modules;
* ``hub.py`` and ``pubsub/`` see only the protocol layer and ``errors`` (``pubsub`` backends may
  import the ``pubsub`` interface module and their own client libraries);
* ``node.py`` sees the ``PubSub`` interface, never a concrete backend (``cli`` picks it).

Imports inside functions and ``if TYPE_CHECKING:`` blocks count too: every ``Import`` and
``ImportFrom`` node anywhere in a file is checked.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import realtime_channels

PKG = "realtime_channels"
PKG_DIR = Path(realtime_channels.__file__).resolve().parent

# Modules that mean I/O, event loops or wall clocks (the protocol layer gets time as ``now``).
IO_MODULES = frozenset(
    {
        "asyncio",
        "aiohttp",
        "socket",
        "selectors",
        "ssl",
        "psycopg",
        "psycopg2",
        "asyncpg",
        "redis",
        "time",
        "threading",
        "subprocess",
        "uvloop",
        "websockets",
    }
)

CONCRETE_BACKENDS = frozenset({f"{PKG}.pubsub.memory", f"{PKG}.pubsub.redis", f"{PKG}.pubsub.redis_cluster"})


# --- import extraction ----------------------------------------------------------------------


def _module_path(module: str) -> Path | None:
    """The file or package directory of one of our modules, if it exists."""
    parts = module.split(".")
    if parts[0] != PKG:
        return None
    base = PKG_DIR.joinpath(*parts[1:])
    if base.is_dir() and (base / "__init__.py").is_file():
        return base
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _names_defined_in_package(module: str) -> set[str]:
    """Top-level names bound by a package's ``__init__.py`` (classes, functions, assignments)."""
    path = _module_path(module)
    if path is None or not path.is_dir():
        return set()
    tree = ast.parse((path / "__init__.py").read_text("utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def _resolve_from(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """Absolute base module of a (possibly relative) ``from … import``."""
    if node.level == 0:
        return node.module or ""
    package = module if is_package else module.rpartition(".")[0]
    parts = package.split(".")
    if node.level - 1 > len(parts) - 1:
        raise AssertionError(f"{module}: relative import beyond the top-level package")
    base = ".".join(parts[: len(parts) - (node.level - 1)])
    return f"{base}.{node.module}" if node.module else base


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except those under ``if TYPE_CHECKING:`` (imports for annotations only, which
    never run: the modules that split ``Session``'s methods by topic name it that way)."""
    out: list[ast.AST] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        out.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)
    return out


def imported_modules(source: str, module: str, is_package: bool = False, *, runtime_only: bool = False) -> set[str]:
    """Fully qualified modules a file imports.

    ``from pkg import name`` counts as importing ``pkg.name`` when ``pkg`` is one of our
    packages and ``name`` is not something its ``__init__`` defines (i.e. it is, or could become,
    a submodule: ``from .pubsub import redis`` is caught before ``pubsub/redis.py`` exists).
    """
    found: set[str] = set()
    tree = ast.parse(source)
    for node in (_runtime_nodes(tree) if runtime_only else ast.walk(tree)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(module, is_package, node)
            ours = base == PKG or base.startswith(PKG + ".")
            path = _module_path(base) if ours else None
            if ours and (path is None or path.is_dir()):
                defined = _names_defined_in_package(base)
                for alias in node.names:
                    found.add(base if alias.name in defined or alias.name == "*" else f"{base}.{alias.name}")
            else:
                found.add(base)
    return found


def _module_name(path: Path) -> tuple[str, bool]:
    rel = path.relative_to(PKG_DIR).with_suffix("")
    parts = [PKG, *rel.parts]
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def imports_of(path: Path, *, runtime_only: bool = False) -> set[str]:
    module, is_package = _module_name(path)
    return imported_modules(path.read_text("utf-8"), module, is_package, runtime_only=runtime_only)


def _top(name: str) -> str:
    return name.split(".")[0]


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _files(sub: str) -> list[Path]:
    target = PKG_DIR / sub
    return sorted(target.rglob("*.py")) if target.is_dir() else [target]


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(PKG_DIR)) for p in paths]


PROTOCOL_FILES = _files("protocol")
#: pure modules outside protocol/ that the pure modules may use
PURE_HELPERS = (f"{PKG}.cdc.patterns",)
# The pure part of cdc/ (design.md §2): decoding, filters, routing and payloads, no I/O.
CDC_PURE = ("bindings", "filters", "patterns", "pgoutput", "record", "retention", "router", "txwire", "types",
            "values", "walstream")
CDC_PURE_FILES = [PKG_DIR / "cdc" / f"{name}.py" for name in CDC_PURE]
LOWER_FILES = _files("hub.py") + _files("pubsub")


# --- the rules ------------------------------------------------------------------------------


def protocol_violations(imports: set[str]) -> list[str]:
    bad = [m for m in imports if _top(m) in IO_MODULES]
    bad += [
        m
        for m in imports
        if _within(m, PKG)
        and not (_within(m, f"{PKG}.protocol") or _within(m, f"{PKG}.errors") or m in PURE_HELPERS)
    ]
    return sorted(bad)


def cdc_pure_violations(imports: set[str]) -> list[str]:
    """Sans-I/O, and only the protocol layer, errors, the hub's interface and each other."""
    allowed = (f"{PKG}.protocol", f"{PKG}.errors", f"{PKG}.hub", *(f"{PKG}.cdc.{name}" for name in CDC_PURE))
    bad = [m for m in imports if _top(m) in IO_MODULES]
    bad += [m for m in imports if _within(m, PKG) and not any(_within(m, a) for a in allowed)]
    return sorted(bad)


def lower_layer_violations(imports: set[str]) -> list[str]:
    allowed = (f"{PKG}.protocol", f"{PKG}.errors", f"{PKG}.pubsub")
    return sorted(m for m in imports if _within(m, PKG) and not any(_within(m, a) for a in allowed))


def hub_violations(imports: set[str]) -> list[str]:
    allowed = (f"{PKG}.protocol", f"{PKG}.errors")
    return sorted(m for m in imports if _within(m, PKG) and not any(_within(m, a) for a in allowed))


def node_violations(imports: set[str]) -> list[str]:
    return sorted(m for m in imports if any(_within(m, b) for b in CONCRETE_BACKENDS))


def test_the_layer_files_exist() -> None:
    # Guards against the checks below silently passing over an empty or moved tree.
    names = _ids(PROTOCOL_FILES)
    for expected in ("protocol/session.py", "protocol/codec.py", "protocol/join.py", "protocol/__init__.py"):
        assert expected in names
    assert all(path.is_file() for path in CDC_PURE_FILES)
    assert "hub.py" in _ids(LOWER_FILES) and "pubsub/__init__.py" in _ids(LOWER_FILES)
    assert (PKG_DIR / "node.py").is_file()


@pytest.mark.parametrize("path", PROTOCOL_FILES, ids=_ids(PROTOCOL_FILES))
def test_protocol_layer_is_sans_io_and_self_contained(path: Path) -> None:
    assert protocol_violations(imports_of(path)) == []


@pytest.mark.parametrize("path", CDC_PURE_FILES, ids=_ids(CDC_PURE_FILES))
def test_pure_cdc_modules_are_sans_io(path: Path) -> None:
    assert cdc_pure_violations(imports_of(path)) == []


def test_hub_sees_only_protocol_and_errors() -> None:
    assert hub_violations(imports_of(PKG_DIR / "hub.py")) == []


@pytest.mark.parametrize("path", _files("pubsub"), ids=_ids(_files("pubsub")))
def test_pubsub_sees_only_protocol_errors_and_itself(path: Path) -> None:
    assert lower_layer_violations(imports_of(path)) == []


def test_node_imports_no_concrete_backend() -> None:
    assert node_violations(imports_of(PKG_DIR / "node.py")) == []


# --- the checker itself catches violations ----------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import asyncio", ["asyncio"]),
        ("import time as t", ["time"]),
        ("from time import monotonic", ["time"]),
        ("import redis.asyncio", ["redis.asyncio"]),
        ("from psycopg import sql", ["psycopg"]),
        ("def f():\n    import socket\n", ["socket"]),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from aiohttp import web\n", ["aiohttp"]),
        ("from ..hub import Hub", [f"{PKG}.hub"]),
        ("from .. import auth", [f"{PKG}.auth"]),
        ("from realtime_channels.config import Settings", [f"{PKG}.config"]),
        ("from ..pubsub import Envelope", [f"{PKG}.pubsub"]),
    ],
)
def test_protocol_rule_flags_forbidden_imports(source: str, expected: list[str]) -> None:
    imports = imported_modules(source, f"{PKG}.protocol.example")
    assert protocol_violations(imports) == expected


@pytest.mark.parametrize(
    "source",
    [
        "from .. import errors",
        "from ..errors import PeerError",
        "from .codec import Message",
        "from . import codec",
        "from realtime_channels.protocol.join import parse_join",
        "import orjson\nimport hashlib\nfrom dataclasses import dataclass",
    ],
)
def test_protocol_rule_allows_errors_siblings_and_pure_libraries(source: str) -> None:
    assert protocol_violations(imported_modules(source, f"{PKG}.protocol.example")) == []


def test_relative_imports_resolve_from_packages_and_modules() -> None:
    # In a package's __init__ "." is the package itself; in a module it is the parent package.
    assert imported_modules("from .memory import MemoryPubSub", f"{PKG}.pubsub", is_package=True) == {
        f"{PKG}.pubsub.memory"
    }
    assert imported_modules("from . import Envelope", f"{PKG}.pubsub.memory") == {f"{PKG}.pubsub"}
    assert imported_modules("from ..protocol.codec import Broadcast", f"{PKG}.pubsub.memory") == {
        f"{PKG}.protocol.codec"
    }


def test_lower_layer_rules_flag_upward_imports() -> None:
    assert hub_violations(imported_modules("from .node import Node", f"{PKG}.hub")) == [f"{PKG}.node"]
    assert hub_violations(imported_modules("from .pubsub import Envelope", f"{PKG}.hub")) == [f"{PKG}.pubsub"]
    assert lower_layer_violations(imported_modules("from ..transport.state import AppState", f"{PKG}.pubsub.memory")) == [
        f"{PKG}.transport.state"
    ]
    assert lower_layer_violations(imported_modules("from ..config import Settings", f"{PKG}.pubsub.redis")) == [
        f"{PKG}.config"
    ]
    # A backend's own client library is fine.
    assert lower_layer_violations(imported_modules("import redis.asyncio", f"{PKG}.pubsub.redis")) == []


@pytest.mark.parametrize(
    "source",
    [
        "from .pubsub.memory import MemoryPubSub",
        "from .pubsub import memory",
        "from .pubsub import redis",
        "import realtime_channels.pubsub.redis",
        "def f():\n    from .pubsub.redis import RedisPubSub\n",
    ],
)
def test_node_rule_flags_concrete_backends(source: str) -> None:
    assert node_violations(imported_modules(source, f"{PKG}.node")) != []


def test_node_rule_allows_the_interface() -> None:
    assert node_violations(imported_modules("from .pubsub import Envelope, PubSub", f"{PKG}.node")) == []


# --- the whole package: layered and acyclic ---------------------------------------------------

#: protocol ← hub, pubsub, cdc (and the other services) ← node ← transport ← cli.  A module may
#: import its own layer and the layers below it, never one above.  ``client`` (the resume helper
#: for the Python realtime client) imports none of the server.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("client", "errors", "protocol", "tracebus", "cdc.filters", "cdc.patterns", "cdc.pgoutput", "cdc.values", "cdc.walstream"),
    ("hub", "pubsub", "cdc", "config", "auth", "messages", "functions", "logs", "tracing", "metrics", "tenants",
     "doctor"),
    ("node", "runtime"),
    ("transport",),
    ("cli", "banner", "__main__"),
)


def layer_of(module: str) -> int:
    """The layer of one of our modules: the most specific entry of ``LAYERS`` that names it."""
    rel = module[len(PKG) + 1:] if module != PKG else ""
    best: tuple[int, int] | None = None  # (specificity, layer)
    for layer, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if rel == prefix or rel.startswith(prefix + "."):
                specificity = prefix.count(".") + 1
                if best is None or specificity > best[0]:
                    best = (specificity, layer)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS")
    return best[1]


def _existing_module(name: str) -> str | None:
    """``realtime_channels.x.y`` → the longest prefix that is one of our modules."""
    parts = name.split(".")
    while len(parts) > 1:
        candidate = ".".join(parts)
        if _module_path(candidate) is not None:
            return candidate
        parts.pop()
    return None


def import_graph() -> dict[str, set[str]]:
    """Who imports whom when the code runs (imports for annotations only are left out)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PKG_DIR.rglob("*.py")):
        module, _ = _module_name(path)
        if module == PKG:
            continue  # the top-level __init__ only holds the version
        targets = {_existing_module(m) for m in imports_of(path, runtime_only=True) if _within(m, PKG)}
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{src} (layer {layer_of(src)}) imports {dst} (layer {layer_of(dst)})"
                  for src, targets in graph.items() for dst in targets if layer_of(dst) > layer_of(src))


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it, or None."""
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> list[str] | None:
        if node in visiting:
            return visiting[visiting.index(node):] + [node]
        if node in done:
            return None
        visiting.append(node)
        for nxt in sorted(graph.get(node, ())):
            cycle = visit(nxt)
            if cycle is not None:
                return cycle
        visiting.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start)
        if cycle is not None:
            return cycle
    return None


def test_every_module_has_a_layer_and_the_graph_is_not_empty() -> None:
    graph = import_graph()
    assert {f"{PKG}.node", f"{PKG}.transport.ws", f"{PKG}.transport.app", f"{PKG}.cli"} <= set(graph)
    assert f"{PKG}.node" in graph[f"{PKG}.transport.effects"]
    for module in graph:
        layer_of(module)


def test_no_module_imports_a_layer_above_its_own() -> None:
    assert upward_imports(import_graph()) == []


def test_the_import_graph_has_no_cycle() -> None:
    assert find_cycle(import_graph()) is None


def test_the_layer_checks_catch_upward_imports_and_cycles() -> None:
    node, ws, hub = f"{PKG}.node", f"{PKG}.transport.ws", f"{PKG}.hub"
    assert upward_imports({node: {ws}}) == [f"{node} (layer 2) imports {ws} (layer 3)"]
    assert upward_imports({ws: {node}, node: {hub}}) == []
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    # the most specific entry wins: cdc/filters.py is pure, the rest of cdc/ is a service
    assert layer_of(f"{PKG}.cdc.filters") == 0 and layer_of(f"{PKG}.cdc.changes") == 1
    assert layer_of(f"{PKG}.transport.rest") == 3


def test_the_old_rest_server_circle_is_gone() -> None:
    graph = import_graph()
    assert f"{PKG}.server" not in graph and f"{PKG}.rest" not in graph
    assert f"{PKG}.transport.ws" not in graph[f"{PKG}.transport.rest"]
