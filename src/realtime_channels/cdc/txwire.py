"""A decoded transaction (and the other share messages) as plain JSON-able data, to share it
between nodes (sans-I/O).

One node reads the replication stream; every node routes the transaction to its own
subscribers.  Tuple values are pgoutput's text form (UTF-8), ``None`` for NULL and ``0`` for an
unchanged TOAST value; relations are listed once per transaction.
"""

from __future__ import annotations

from typing import Any

from . import pgoutput
from .types import Change, FeedState, HistoryAsk, HistoryShare, ResetShare, ShareOp, StateShare, Transaction, TxnShare

_UNCHANGED = 0


def _values(tup: pgoutput.TupleData | None) -> list[Any] | None:
    if tup is None:
        return None
    out: list[Any] = []
    for v in tup.values:
        if v is pgoutput.UNCHANGED:
            out.append(_UNCHANGED)
        elif v is None:
            out.append(None)
        else:
            out.append(bytes(v).decode("utf-8", "surrogateescape"))
    return out


def _tuple(values: list[Any] | None) -> pgoutput.TupleData | None:
    if values is None:
        return None
    out: list[pgoutput.TupleValue] = []
    for v in values:
        if v == _UNCHANGED and not isinstance(v, str):
            out.append(pgoutput.UNCHANGED)
        elif v is None:
            out.append(None)
        else:
            out.append(str(v).encode("utf-8", "surrogateescape"))
    return pgoutput.TupleData(tuple(out))


def encode_transaction(txn: Transaction) -> dict[str, Any]:
    relations: dict[int, pgoutput.Relation] = {}
    changes = []
    for ch in txn.changes:
        relations[ch.relation.relid] = ch.relation
        changes.append([ch.relation.relid, ch.kind, _values(ch.new), _values(ch.old), ch.old_kind])
    rels = [
        [r.relid, r.namespace, r.name, r.replica_identity,
         [[c.flags, c.name, c.type_oid, c.atttypmod] for c in r.columns]]
        for r in relations.values()
    ]
    return {"x": txn.xid, "c": txn.commit_lsn, "e": txn.end_lsn, "t": txn.commit_ts_us, "r": rels, "ch": changes}


def decode_transaction(data: dict[str, Any]) -> Transaction:
    relations = {
        relid: pgoutput.Relation(relid, ns, name, ident,
                                 tuple(pgoutput.Column(f, n, oid, mod) for f, n, oid, mod in cols))
        for relid, ns, name, ident, cols in data["r"]
    }
    changes = tuple(
        Change(relations[relid], kind, _tuple(new), _tuple(old), old_kind)
        for relid, kind, new, old, old_kind in data["ch"]
    )
    return Transaction(int(data["x"]), int(data["c"]), int(data["e"]), int(data["t"]), changes)


def share_to_wire(op: ShareOp) -> dict[str, Any]:
    """``{"op": "txn", "tx": …}``, ``{"op": "state", "state": …}``, ``{"op": "history_ask"}`` or
    ``{"op": "history", "txs": […], "after": …, "last": …}`` (the form nodes exchange)."""
    if isinstance(op, TxnShare):
        return {"op": "txn", "tx": encode_transaction(op.txn)}
    if isinstance(op, HistoryAsk):
        return {"op": "history_ask"}
    if isinstance(op, ResetShare):
        return {"op": "reset", "lsn": op.lsn}
    if isinstance(op, HistoryShare):
        return {"op": "history", "txs": [encode_transaction(t) for t in op.txns], "after": op.complete_after,
                "last": op.last}
    return {"op": "state", "state": op.state.value}


def share_from_wire(data: dict[str, Any]) -> ShareOp | None:
    """The inverse of :func:`share_to_wire`; ``None`` for an op this version does not know."""
    kind = data.get("op")
    if kind == "txn":
        return TxnShare(decode_transaction(data["tx"]))
    if kind == "history_ask":
        return HistoryAsk()
    if kind == "reset":
        lsn = data.get("lsn")
        return ResetShare(lsn) if isinstance(lsn, int) else None
    if kind == "history":
        after = data.get("after")
        return HistoryShare(tuple(decode_transaction(t) for t in data.get("txs") or ()),
                            int(after) if isinstance(after, int) else None, data.get("last") is True)
    if kind == "state":
        try:
            return StateShare(FeedState(str(data.get("state"))))
        except ValueError:
            return None
    return None
