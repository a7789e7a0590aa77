"""Tenants as Supabase Realtime has them: an ``external_id`` with its own JWT secret or JWKS,
limits, flags and database (docs/tenants.md).  ``model`` validates and renders them, ``crypto``
encrypts their secrets as Supabase does, ``store`` keeps them in the ``_realtime`` schema, and
and the transport runs one isolated node per tenant (transport/directory.py)."""
