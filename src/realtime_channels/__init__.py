"""realtime-channels: a drop-in, wire-compatible Supabase Realtime server."""

__version__ = "0.1.0"
