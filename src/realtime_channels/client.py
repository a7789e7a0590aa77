"""``resumable(channel)``: gap-free resume for a channel of the Python ``realtime`` client
(2.34) on a realtime-channels server (docs/protocol.md §4.10; README "Resuming after a
reconnect").

    from realtime_channels.client import resumable
    channel = resumable(client.channel("room1"))
    channel.on_broadcast("move", on_move)
    await channel.subscribe()

Call it before ``subscribe()``.  The ``realtime`` client keeps only the ``meta`` keys it knows
and drops a ``postgres_changes`` message whose ``ref`` is not null, so the offsets are read from
the raw frames before the client parses them (the socket's ``recv`` is wrapped, per client), and
a postgres_changes frame is handed on with its ``ref`` set back to null.  Every join the channel
sends — the first and each automatic rejoin — asks to resume from what was seen.  The module
imports nothing from ``realtime`` itself, so the server does not need the client installed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["ResumePosition", "resumable"]


@dataclass
class ResumePosition:
    """The last broadcast ``(epoch, offset)`` and postgres_changes offset a channel received."""

    broadcast: tuple[str, int] | None = None
    postgres: str | None = None

    def join_config(self, config: dict[str, Any]) -> dict[str, Any]:
        broadcast = dict(config.get("broadcast") or {})
        broadcast["resume"] = {"epoch": self.broadcast[0], "offset": self.broadcast[1]} if self.broadcast else True
        options = dict(config.get("postgres_changes_options") or {})
        options["resume"] = {"offset": self.postgres} if self.postgres else True
        return {**config, "broadcast": broadcast, "postgres_changes_options": options}

    def observe(self, event: Any, payload: Any, ref: Any) -> bool:
        """Note the position a message carries; True when its ``ref`` must be hidden."""
        if not isinstance(payload, dict):
            return False
        if event == "broadcast":
            meta = payload.get("meta")
            if isinstance(meta, dict) and type(meta.get("offset")) is int and isinstance(meta.get("epoch"), str):
                self.broadcast = (meta["epoch"], meta["offset"])
        elif event == "postgres_changes" and isinstance(ref, str) and ref:
            self.postgres = ref.split(";", 1)[0]
            return True
        elif event == "system":
            gap, snapshot = payload.get("gap"), payload.get("snapshot")
            if payload.get("extension") == "broadcast" and isinstance(gap, dict) and type(gap.get("next")) is int:
                self.broadcast = (str(gap.get("epoch")), gap["next"] - 1)
            if isinstance(snapshot, dict) and isinstance(snapshot.get("offset"), str):
                self.postgres = snapshot["offset"]
        return False


def resumable(channel: Any) -> Any:
    """Make ``channel`` (an ``AsyncRealtimeChannel``) resume where it stopped on every rejoin;
    returns the same channel, with ``channel.resume_position`` (a :class:`ResumePosition`)."""
    position = ResumePosition()
    channel.resume_position = position
    client = channel.socket
    taps: dict[str, ResumePosition] = client.__dict__.setdefault("_rc_resume_positions", {})
    taps[channel.topic] = position
    if not client.__dict__.get("_rc_resume_tapped"):
        client._rc_resume_tapped = True
        on_connect = client._on_connect

        async def tapped_on_connect() -> None:
            _tap(client._ws_connection, taps)
            await on_connect()

        client._on_connect = tapped_on_connect
        if client._ws_connection is not None:
            _tap(client._ws_connection, taps)
    rejoin = channel._rejoin

    async def resuming_rejoin() -> None:
        push = channel.join_push
        payload = dict(push.payload or {})
        payload["config"] = position.join_config(dict(payload.get("config") or {}))
        push.payload = payload
        await rejoin()

    channel._rejoin = resuming_rejoin
    return channel


def _tap(ws: Any, taps: dict[str, ResumePosition]) -> None:
    """Read positions from this connection's frames before the client parses them."""
    if ws is None or getattr(ws, "_rc_tapped", False):
        return
    recv = ws.recv

    async def tapped_recv(*args: Any, **kwargs: Any) -> Any:
        raw = await recv(*args, **kwargs)
        return _rewrite(raw, taps)

    ws.recv = tapped_recv
    ws._rc_tapped = True


def _rewrite(raw: Any, taps: dict[str, ResumePosition]) -> Any:
    if not isinstance(raw, str | bytes):
        return raw
    try:
        msg = json.loads(raw)
    except ValueError:
        return raw
    if not isinstance(msg, dict) or (position := taps.get(msg.get("topic"))) is None:  # type: ignore[arg-type]
        return raw
    if position.observe(msg.get("event"), msg.get("payload"), msg.get("ref")):
        msg["ref"] = None
        return json.dumps(msg)
    return raw
