"""Reading the functions TOML file with line numbers: every error names the file and the line."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from typing import Any

from .. import errors


class Lines:
    """Line numbers of keys in the TOML text: ``[[trigger]]`` number *i*, key *k* → line."""

    _HEADER = re.compile(r"^\s*\[\[\s*([A-Za-z0-9_.-]+)\s*\]\]")
    _TABLE = re.compile(r"^\s*\[\s*([A-Za-z0-9_.-]+)\s*\]")
    _KEY = re.compile(r"^\s*([A-Za-z0-9_-]+|\"[^\"]*\")\s*=")

    def __init__(self, text: str) -> None:
        # (section, index) -> {"": header line, key: line}; top level is ("", 0)
        self.keys: dict[tuple[str, int], dict[str, int]] = {("", 0): {"": 1}}
        counts: dict[str, int] = {}
        current = ("", 0)
        in_multiline: str | None = None
        for no, line in enumerate(text.splitlines(), start=1):
            if in_multiline is not None:
                if line.count(in_multiline) % 2 == 1:
                    in_multiline = None
                continue
            if m := self._HEADER.match(line):
                name = m.group(1)
                idx = counts.get(name, 0)
                counts[name] = idx + 1
                current = (name, idx)
                self.keys[current] = {"": no}
            elif m := self._TABLE.match(line):
                current = (m.group(1), 0)
                self.keys.setdefault(current, {"": no})
            elif m := self._KEY.match(line):
                self.keys.setdefault(current, {}).setdefault(m.group(1).strip('"'), no)
                for quote in ('"""', "'''"):
                    if line.count(quote) % 2 == 1:
                        in_multiline = quote

    def line(self, section: str, index: int = 0, key: str | None = None) -> int:
        keys = self.keys.get((section, index), {})
        if key is not None and key in keys:
            return keys[key]
        return keys.get("", 1)


class Checker:
    """Validation of one file; every error names the file and the line."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.lines = Lines(text)

    def fail(self, line: int, message: str) -> errors.ConfigError:
        return errors.ConfigError(f"{self.path}:{line}: {message}")


def toml_error(path: str, text: str, exc: tomllib.TOMLDecodeError) -> str:
    """``tomllib`` puts the position in its message: ``… (at line 3, column 7)``."""
    msg = str(exc)
    if m := re.search(r"\s*\(at line (\d+), column \d+\)$", msg):
        return f"{path}:{m.group(1)}: invalid TOML: {msg[: m.start()]}"
    if m := re.search(r"\s*\(at end of document\)$", msg):
        return f"{path}:{max(1, len(text.splitlines()))}: invalid TOML: {msg[: m.start()]}"
    return f"{path}: invalid TOML: {msg}"


def table(ck: Checker, data: Mapping[str, Any], name: str, allowed: frozenset[str]) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ck.fail(ck.lines.line("", 0, name), f"`{name}` must be a table")
    for key in value:
        if key not in allowed:
            raise ck.fail(ck.lines.line(name, 0, key), f"{name}: unknown key `{key}`")
    return value


def array(ck: Checker, data: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    value = data.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ck.fail(ck.lines.line("", 0, name), f"`{name}` must be an array of tables ([[{name}]])")
    return value


def number(ck: Checker, table: Mapping[str, Any], key: str, default: float, line: int, who: str) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ck.fail(line, f"{who}: `{key}` must be a number, got {value!r}")
    if value < 0:
        raise ck.fail(line, f"{who}: `{key}` must not be negative")
    return float(value)


def integer(ck: Checker, table: Mapping[str, Any], key: str, default: int, line: int, who: str) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ck.fail(line, f"{who}: `{key}` must be an integer >= 1, got {value!r}")
    return value


def string(ck: Checker, table: Mapping[str, Any], key: str, line: int, who: str) -> str | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ck.fail(line, f"{who}: `{key}` must be a non-empty string")
    return value
