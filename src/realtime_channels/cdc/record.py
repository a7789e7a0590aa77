"""A change's payload (sans-I/O): ``record`` / ``old_record`` / ``columns`` / ``errors`` of the
``postgres_changes`` message (protocol.md §6.5–§6.8), computed lazily and shared by every
subscriber of the change.

Values are converted from pgoutput's text form by type OID (``pgoutput.make_converter``), like
``to_jsonb``; a column set is the tuple of column names one subscriber may see, or one of the
markers ``NO_PK`` / ``UNAUTHORIZED`` that turn the payload into a §6.7 error message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from . import pgoutput
from .filters import TypedCondition, matches
from .types import Change, TableInfo

__all__ = ["MAX_RECORD_BYTES", "NO_PK", "SHORT_VALUE_BYTES", "UNAUTHORIZED", "Row", "full_data"]

#: §6.7: a change larger than this is sent with only its short values.
MAX_RECORD_BYTES = 1_048_576
SHORT_VALUE_BYTES = 64
#: column-set markers: the change is reported as an error instead of data (§6.7)
NO_PK: tuple[str, ...] = ("#nopk",)
UNAUTHORIZED: tuple[str, ...] = ("#unauthorized",)


class Row:
    """One change's decoded values, computed lazily and shared by every subscriber."""

    __slots__ = ("_bytes", "_filter_row", "_new", "_old", "change", "info", "kind")

    def __init__(self, change: Change, info: TableInfo) -> None:
        self.change = change
        self.info = info
        self.kind = change.kind
        self._new: dict[str, Any] | None = None
        self._old: dict[str, Any] | None = None
        self._filter_row: dict[str, Any] | None = None
        self._bytes = -1

    # values ----------------------------------------------------------------------------------

    def _columns(self) -> Sequence[pgoutput.Column]:
        return self.change.relation.columns

    def _convert(self, tup: pgoutput.TupleData | None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if tup is None:
            return out
        types = {c.name: c for c in self.info.columns}
        for col, raw in zip(self._columns(), tup.values, strict=False):
            if raw is pgoutput.UNCHANGED:
                continue
            if raw is None:
                out[col.name] = None
                continue
            info = types.get(col.name)
            conv = (pgoutput.make_converter(col.type_oid, info.base_type_oid, info.element_type_oid)
                    if info is not None else pgoutput.make_converter(col.type_oid))
            out[col.name] = conv(bytes(raw))
        return out

    def new(self) -> dict[str, Any]:
        if self._new is None:
            self._new = self._convert(self.change.new)
            if self.change.old_kind == "O" and self.change.old is not None:
                # §6.7: unchanged TOAST values are filled from the full old row when we have it
                old = self.old_full()
                for col, raw in zip(self._columns(), self.change.new.values if self.change.new else (), strict=False):
                    if raw is pgoutput.UNCHANGED and col.name in old:
                        self._new[col.name] = old[col.name]
        return self._new

    def old_full(self) -> dict[str, Any]:
        if self._old is None:
            self._old = self._convert(self.change.old)
            if self.change.old_kind == "K":  # key-only tuple: other columns are sent as NULL
                keys = {c.name for c in self._columns() if c.flags & 1}
                self._old = {k: v for k, v in self._old.items() if k in keys}
        return self._old

    def old_record(self) -> dict[str, Any]:
        """§6.5/§6.7: replica-identity values; without an old tuple, the key of the new row."""
        if self.change.old is not None:
            old = self.old_full()
        else:
            new = self.new()
            old = {k: new[k] for k in self.info.pk if k in new}
        if self.kind == "DELETE" and self.info.rls_enabled:
            old = {k: v for k, v in old.items() if k in self.info.pk}  # §6.6
        return old

    def image_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self._columns())

    def image(self, which: str) -> list[str | None] | None:
        """The new or old row image as text values for ``image_columns()``, the new image's
        unchanged TOAST values filled from a full old image; None when a value is unknown."""
        tup = self.change.new if which == "new" else self.change.old
        if tup is None:
            return None
        old = self.change.old.values if self.change.old_kind == "O" and self.change.old is not None else None
        out: list[str | None] = []
        for pos, raw in enumerate(tup.values):
            if raw is pgoutput.UNCHANGED and old is not None and pos < len(old):
                raw = old[pos]
            if raw is pgoutput.UNCHANGED:
                return None
            out.append(None if raw is None else bytes(raw).decode())
        return out

    def pk_text(self) -> list[str | None]:
        values = dict(zip((c.name for c in self._columns()), self.change.new.values if self.change.new else (),
                          strict=False))
        out: list[str | None] = []
        for k in self.info.pk:
            raw = values.get(k)
            out.append(None if raw is None or raw is pgoutput.UNCHANGED else bytes(raw).decode())
        return out

    # filters ---------------------------------------------------------------------------------

    def matches(self, conds: Sequence[TypedCondition]) -> bool:
        if not conds:
            return True
        if self._filter_row is None:
            self._filter_row = self._text_row()
        return matches(conds, self._filter_row)

    def _text_row(self) -> dict[str, Any]:
        """Values for filter matching: the text form (filters read it as a literal of the column
        type), jsonb decoded; DELETE uses the old identity columns (§6.2)."""
        tup = self.change.old if self.kind == "DELETE" else self.change.new
        if tup is None:
            return {}
        kinds = {c.name: c.type_name for c in self.info.columns}
        key_only = self.kind == "DELETE" and self.change.old_kind == "K"
        out: dict[str, Any] = {}
        for col, raw in zip(self._columns(), tup.values, strict=False):
            if raw is pgoutput.UNCHANGED or (key_only and not col.flags & 1):
                continue
            if raw is None:
                out[col.name] = None
                continue
            text = bytes(raw).decode()
            out[col.name] = orjson.loads(text) if kinds.get(col.name) in ("jsonb", "json") else text
        return out

    # payload ---------------------------------------------------------------------------------

    def column_set(self, allowed: frozenset[str], select: tuple[str, ...] | None) -> tuple[str, ...]:
        """§6.5/§6.8: selectable columns in table order, restricted by ``select`` (PK kept);
        ``UNAUTHORIZED`` / no PK are reported as errors instead (§6.7)."""
        if self.kind != "DELETE" and not self.info.pk:
            return NO_PK
        if any(k not in allowed for k in self.info.pk):
            return UNAUTHORIZED
        return tuple(c.name for c in self.info.columns
                     if c.name in allowed and (select is None or c.name in select or c.is_pk))

    def data(self, cols: tuple[str, ...], commit_ts: str, old_shown: bool = True) -> dict[str, Any]:
        """The change's ``data`` object for a subscriber allowed ``cols``; without ``old_shown``
        (its policies do not admit the old image) ``old_record`` carries only the key."""
        info = self.info
        if cols in (NO_PK, UNAUTHORIZED):
            err = "Error 400: Bad Request, no primary key" if cols == NO_PK else "Error 401: Unauthorized"
            out: dict[str, Any] = {"schema": info.schema, "table": info.name, "type": self.kind,
                                   "commit_timestamp": None, "columns": [], "errors": [err]}
            if self.kind != "DELETE":
                out["record"] = {}
            if self.kind != "INSERT":
                out["old_record"] = {}
            return out
        wanted = set(cols)
        data: dict[str, Any] = {
            "schema": info.schema,
            "table": info.name,
            "type": self.kind,
            "commit_timestamp": commit_ts,
            "columns": [{"name": c.name, "type": c.type_name} for c in info.columns if c.name in wanted],
        }
        errors: list[str] | None = None
        if self.kind != "DELETE":
            data["record"] = {k: v for k, v in self.new().items() if k in wanted}
        if self.kind != "INSERT":
            old = self.old_record()
            data["old_record"] = {k: v for k, v in old.items() if k in wanted and (old_shown or k in info.pk)}
        if self._size() > MAX_RECORD_BYTES:
            errors = ["Error 413: Payload Too Large"]
            for key in ("record", "old_record"):
                if key in data:
                    data[key] = {k: v for k, v in data[key].items() if len(orjson.dumps(v)) <= SHORT_VALUE_BYTES}
        data["errors"] = errors
        return data

    def _size(self) -> int:
        if self._bytes < 0:  # once per row, whatever the number of column sets
            total = 0
            for tup in (self.change.new, self.change.old):
                if tup is not None:
                    total += sum(len(v) for v in tup.values if isinstance(v, bytes | bytearray | memoryview))
            self._bytes = total
        return self._bytes


def full_data(row: Row, commit_ts: str) -> dict[str, Any]:
    """Every column, no privileges applied, as plain JSON values: what a function's postgres
    trigger receives (numeric/json stay orjson Fragments on the wire path, which a function's
    filter could not compare)."""
    data = row.data(row.column_set(frozenset(c.name for c in row.info.columns), None), commit_ts)
    loaded: dict[str, Any] = orjson.loads(orjson.dumps(data))
    return loaded
