"""Drop-in replacements for the modules sse-redis grew out of.

``sse_redis.compat.letta`` stands in for Letta's ``redis_stream_manager``:
the same names, parameters and defaults, built on this library.  See
``docs/letta-migration.md``.
"""
