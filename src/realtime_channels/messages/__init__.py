"""Private channels and broadcast from the database: the ``realtime.messages`` schema and its
migrations, RLS authorization of private channels, replay, and the replication feed of rows
inserted into ``realtime.messages`` (protocol.md §4.7, §4.8, §7.3)."""
