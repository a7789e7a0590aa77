"""``like``/``ilike``/``match``/``imatch`` filter patterns, matched in linear time.

A filter is evaluated on the event loop for every change of its table, so a pattern must never
take more than time proportional to the value it is matched against: Python's backtracking
``re`` takes exponential time on patterns such as ``^(a+)+$``, which one subscriber could use
to freeze every client of the server.  Both kinds of pattern are therefore compiled to RE2
(``google-re2``), an automaton-based engine whose matching time is linear in the subject.

* LIKE / ILIKE translate exactly: ``%`` any run, ``_`` one character, backslash escapes the next
  character, the whole value must match; ILIKE folds case.
* POSIX advanced regular expressions (PostgreSQL's ``~`` / ``~*``) are translated construct by
  construct: ``.`` matches a newline and ``$`` is the end of the string (PostgreSQL's default,
  non-newline-sensitive mode), ``\\y``/``\\Y`` are word boundaries, ``\\b`` is a backspace,
  ``[[:alpha:]]``-style classes, ``\\d``/``\\w``/``\\s``, ``\\uXXXX``, ``***=`` (literal) and
  ``***:`` prefixes, ``(?i)``/``(?c)`` embedded options.  Constructs an automaton cannot run —
  back-references, lookahead and lookbehind constraints — and the rare ones without an RE2
  counterpart (``\\m``/``\\M`` not next to a word character, collating elements, equivalence
  classes, ``[[:print:]]``, ``[[:graph:]]``) are refused with a clear error when the channel
  subscribes, never mis-evaluated.
"""

from __future__ import annotations

import string
from typing import Any, Final

import re2  # type: ignore[import-untyped]

__all__ = ["Pattern", "PatternError", "compile_like", "compile_regex"]

_WORD: Final = r"\pL\pN_"
#: [[:name:]] → the RE2 class body it stands for (without brackets)
_CLASSES: Final = {
    "alpha": r"\pL",
    "digit": "0-9",
    "alnum": r"\pL\pN",
    "word": _WORD,
    "space": r"\s\v\p{Z}",
    "upper": r"\p{Lu}",
    "lower": r"\p{Ll}",
    "xdigit": "0-9A-Fa-f",
    "blank": r" \t",
    "cntrl": r"\x00-\x1f\x7f",
    "punct": "".join("\\" + ch for ch in string.punctuation),
}
#: class-shorthand escapes → class body; upper case is the complement
_SHORTHANDS: Final = {"d": "0-9", "w": _WORD, "s": _CLASSES["space"]}
_CONTROL_ESCAPES: Final = {"a": r"\x07", "b": r"\x08", "B": r"\\", "e": r"\x1b", "f": r"\f",
                           "n": r"\n", "r": r"\r", "t": r"\t", "v": r"\v"}
#: RE2's complaints, in PostgreSQL's words
_RE2_ERRORS: Final = (
    ("missing )", "parentheses () not balanced"),
    ("unexpected )", "parentheses () not balanced"),
    ("missing ]", "brackets [] not balanced"),
    ("repetition operator", "quantifier operand invalid"),
    ("bad repetition", "invalid repetition count(s)"),
    ("invalid escape", "invalid escape \\ sequence"),
    ("character class range", "invalid character range"),
)


class PatternError(ValueError):
    """A pattern we refuse; ``str()`` is the client-facing text (the filter code wraps it)."""


class Pattern:
    """A compiled pattern; :meth:`matches` runs in time linear in the subject."""

    __slots__ = ("_full", "_re", "source")

    def __init__(self, source: str, compiled: Any, *, full: bool) -> None:
        self.source = source
        self._re = compiled
        self._full = full

    def matches(self, text: str) -> bool:
        found = self._re.fullmatch(text) if self._full else self._re.search(text)
        return found is not None

    def __repr__(self) -> str:
        return f"Pattern({self.source!r})"


def _options(*, ignore_case: bool) -> Any:
    opts = re2.Options()
    opts.dot_nl = True
    opts.case_sensitive = not ignore_case
    opts.log_errors = False
    opts.max_mem = 8 << 20  # bounds the automaton a single filter may build
    return opts


def _compile(source: str, translated: str, *, ignore_case: bool, full: bool, op: str) -> Pattern:
    try:
        return Pattern(source, re2.compile(translated, _options(ignore_case=ignore_case)), full=full)
    except re2.error as exc:
        detail = str(exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc)
        for fragment, message in _RE2_ERRORS:
            if fragment in detail:
                raise PatternError(f"invalid regular expression for {op} filter: {message}") from None
        raise PatternError(f"invalid regular expression for {op} filter: {detail}") from None


def compile_like(pattern: str, *, ignore_case: bool) -> Pattern:
    """SQL LIKE (ILIKE with ``ignore_case``) as an anchored RE2 pattern."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            if i + 1 >= len(pattern):
                raise PatternError("LIKE pattern must not end with escape character")
            out.append(re2.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if ch == "%" else "." if ch == "_" else re2.escape(ch))
        i += 1
    op = "ilike" if ignore_case else "like"
    return _compile(pattern, "".join(out), ignore_case=ignore_case, full=True, op=op)


def compile_regex(pattern: str, op: str) -> Pattern:
    """A PostgreSQL advanced regular expression (``op`` is ``match`` or ``imatch``)."""
    ignore_case = op == "imatch"
    if pattern.startswith("***="):
        return _compile(pattern, re2.escape(pattern[4:]), ignore_case=ignore_case, full=False, op=op)
    body = pattern[4:] if pattern.startswith("***:") else pattern
    body, ignore_case = _embedded_options(body, ignore_case, op)
    return _compile(pattern, _Translator(body, op).run(), ignore_case=ignore_case, full=False, op=op)


def _embedded_options(body: str, ignore_case: bool, op: str) -> tuple[str, bool]:
    """ARE embedded options ``(?i)`` / ``(?c)`` at the very start; others are refused."""
    if not body.startswith("(?") or len(body) < 3 or not body[2].isalpha():
        return body, ignore_case
    end = body.find(")")
    letters = body[2:end] if end > 0 else ""
    if end < 0 or not letters.isalpha():
        return body, ignore_case
    for letter in letters:
        if letter == "i":
            ignore_case = True
        elif letter == "c":
            ignore_case = False
        else:
            raise PatternError(f"invalid regular expression for {op} filter: embedded option ({letter}) is not supported")
    return body[end + 1:], ignore_case


class _Translator:
    """ARE → RE2, one construct at a time."""

    def __init__(self, pattern: str, op: str) -> None:
        self.p = pattern
        self.op = op
        self.i = 0
        self.out: list[str] = []

    def bad(self, reason: str) -> PatternError:
        return PatternError(f"invalid regular expression for {self.op} filter: {reason}")

    def run(self) -> str:
        p, n = self.p, len(self.p)
        while self.i < n:
            ch = p[self.i]
            if ch == "\\":
                self.escape()
            elif ch == "[":
                self.out.append(self.bracket())
            elif ch == "$":
                self.out.append(r"\z")
                self.i += 1
            elif ch == "(" and p.startswith("(?", self.i) and not p.startswith("(?:", self.i):
                raise self.bad("lookahead and lookbehind constraints are not supported")
            else:
                self.out.append(ch)
                self.i += 1
        return "".join(self.out)

    def escape(self) -> None:
        p, i = self.p, self.i
        if i + 1 >= len(p):
            raise self.bad("invalid escape \\ sequence")
        nxt = p[i + 1]
        self.i = i + 2
        if nxt in "yY":
            self.out.append(r"\b" if nxt == "y" else r"\B")
        elif nxt == "m":  # start of a word: a boundary followed by a word character
            if not (self.i < len(p) and _is_word(p[self.i])):
                raise self.bad("\\m is supported only before a word character")
            self.out.append(r"\b")
        elif nxt == "M":  # end of a word: a boundary after a word character
            if not (i > 0 and _is_word(p[i - 1]) and (i < 2 or p[i - 2] != "\\")):
                raise self.bad("\\M is supported only after a word character")
            self.out.append(r"\b")
        elif nxt.isdigit() and nxt != "0":
            raise self.bad("back-references are not supported")
        elif nxt.lower() in _SHORTHANDS:
            body = _SHORTHANDS[nxt.lower()]
            self.out.append(f"[{'^' if nxt.isupper() else ''}{body}]")
        elif nxt == "A":
            self.out.append(r"\A")
        elif nxt == "Z":
            self.out.append(r"\z")
        else:
            self.out.append(self.char_escape(nxt))

    def char_escape(self, nxt: str) -> str:
        """An escape standing for one character (inside or outside brackets)."""
        p = self.p
        if nxt in _CONTROL_ESCAPES:
            return _CONTROL_ESCAPES[nxt]
        if nxt in "uUx":
            width = {"u": 4, "U": 8}.get(nxt)
            j = self.i
            digits = ""
            while j < len(p) and p[j] in string.hexdigits and (width is None or len(digits) < width):
                digits += p[j]
                j += 1
            if not digits or (width is not None and len(digits) != width):
                raise self.bad("invalid escape \\ sequence")
            self.i = j
            return f"\\x{{{digits}}}"
        if nxt == "c":
            if self.i >= len(p):
                raise self.bad("invalid escape \\ sequence")
            code = ord(p[self.i]) & 0x1F
            self.i += 1
            return f"\\x{{{code:x}}}"
        if nxt == "0":
            j = self.i
            while j < len(p) and j < self.i + 2 and p[j] in "01234567":
                j += 1
            code = int(p[self.i:j] or "0", 8)
            self.i = j
            return f"\\x{{{code:x}}}"
        if nxt.isalnum():
            raise self.bad("invalid escape \\ sequence")
        return str(re2.escape(nxt))

    def bracket(self) -> str:
        p, n = self.p, len(self.p)
        i = self.i + 1
        negated = i < n and p[i] == "^"
        if negated:
            i += 1
        items: list[str] = []
        first = True
        while True:
            if i >= n:
                raise self.bad("brackets [] not balanced")
            ch = p[i]
            if ch == "]" and not first:
                i += 1
                break
            first = False
            if ch == "[" and i + 1 < n and p[i + 1] in ":.=":
                kind = p[i + 1]
                end = p.find(kind + "]", i + 2)
                if end < 0:
                    raise self.bad("brackets [] not balanced")
                name = p[i + 2:end]
                if kind != ":":
                    raise self.bad("collating elements and equivalence classes are not supported")
                if name not in _CLASSES:
                    raise self.bad(f"character class [:{name}:] is not supported")
                items.append(_CLASSES[name])
                i = end + 2
            elif ch == "\\" and i + 1 < n:
                nxt = p[i + 1]
                if nxt.lower() in _SHORTHANDS:
                    if nxt.isupper():
                        raise self.bad("a complemented class escape is not allowed in brackets")
                    items.append(_SHORTHANDS[nxt])
                    i += 2
                else:
                    self.i = i + 2
                    items.append(self.char_escape(nxt))
                    i = self.i
            else:
                items.append("\\" + ch if ch in "[]\\^" else ch)
                i += 1
        self.i = i
        return "[" + ("^" if negated else "") + "".join(items) + "]"


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"
