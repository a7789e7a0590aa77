"""PostgreSQL change data capture: filters, decoding and delivery of ``postgres_changes`` (protocol.md §6)."""
