"""Fixtures for the Redis benchmarks: one dedicated Valkey for the session."""

from __future__ import annotations

import pytest
import redis

from sse_redis.tools.servers import RedisProcess, ServerError, valkey_binary


@pytest.fixture(scope="session")
def server():
    """A Valkey of our own (nothing else talks to it), on a free loopback port."""
    try:
        binary = valkey_binary()
    except ServerError as exc:
        pytest.skip(str(exc))
    with RedisProcess(binary) as srv:
        yield srv


@pytest.fixture
def redis_client(server):
    """A client on the bench server, which starts empty (FLUSHALL)."""
    client = redis.Redis.from_url(server.url)
    client.flushall()
    yield client
    client.close()
