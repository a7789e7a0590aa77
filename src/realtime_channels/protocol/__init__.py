"""Sans-I/O wire protocol: frame codecs, WebSocket framing and join parsing (protocol.md §1, §3)."""
