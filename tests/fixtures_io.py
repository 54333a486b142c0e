"""Fixtures of the I/O tests (writer, processor): the engine backend, the
real servers of ``servers.py`` re-exported, throwaway dedicated servers a
test may stop, pause or restart, and writers that are always closed.

``tests/conftest.py`` pulls these in with ``from fixtures_io import *`` and
calls ``servers.add_options(parser)`` from ``pytest_addoption``.  Never a mock.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest
import redis as redis_py

from fault_proxy import FaultProxy
from servers import (
    any_server_url,
    dedicated_cluster,
    redis7_server,
    redis_url,
    valkey_cluster,
    valkey_server,
)
from sse_redis import AsyncStreamWriter, StreamReader, StreamWriter
from sse_redis.tools.servers import RedisProcess, valkey_binary

__all__ = [
    "IO_BACKENDS",
    "any_server_url",
    "backend",
    "dedicated_cluster",
    "dedicated_server",
    "fault_proxy",
    "load_backend",
    "make_async_writer",
    "make_writer",
    "open_reader",
    "plain_client",
    "redis7_server",
    "redis_url",
    "run_id",
    "valkey_cluster",
    "valkey_server",
    "wait_child",
]

IO_BACKENDS = ["rust", "python"]


def load_backend(backend: str) -> ModuleType:
    """The module behind ``backend`` (``sse_redis._core`` or ``_pure``).  A
    missing Rust core skips its half, unless ``SSE_REDIS_REQUIRE_RUST=1`` (CI)
    makes that a failure."""
    if backend == "python":
        return importlib.import_module("sse_redis._pure")
    try:
        return importlib.import_module("sse_redis._core")
    except ImportError as exc:
        reason = f"sse_redis._core is not built: {exc}"
        if os.environ.get("SSE_REDIS_REQUIRE_RUST") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(params=IO_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """``"rust"`` or ``"python"``: the engines a test drives."""
    load_backend(request.param)
    return request.param


def wait_child(pid: int, timeout: float = 20.0) -> int:
    """The exit status of a forked child; kills it and fails the test if it hangs."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"the forked child did not finish within {timeout} s")
        time.sleep(0.02)


@pytest.fixture
def dedicated_server() -> Iterator[Callable[..., RedisProcess]]:
    """A factory of Valkey servers of the test's own (to stop, pause, kill
    clients of, or restart on the same port); all are closed afterwards."""
    started: list[RedisProcess] = []

    def start(*extra_args: str) -> RedisProcess:
        server = RedisProcess(valkey_binary(), extra_args=extra_args)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.close()


@pytest.fixture
def make_writer(backend: str) -> Iterator[Callable[..., StreamWriter]]:
    """``make_writer(url, **options)``: a ``StreamWriter`` on the test's
    backend, closed at teardown (quickly, errors ignored: some tests leave a
    writer facing a stopped server)."""
    writers: list[StreamWriter] = []

    def make(url: str, **options: Any) -> StreamWriter:
        writer = StreamWriter(url, backend=backend, **options)
        writers.append(writer)
        return writer

    yield make
    for writer in writers:
        with contextlib.suppress(Exception):
            writer.close(timeout=1.0)


@pytest.fixture
def make_async_writer(backend: str) -> Iterator[Callable[..., AsyncStreamWriter]]:
    """``make_async_writer(url, **options)``: like ``make_writer``, async face."""
    writers: list[AsyncStreamWriter] = []

    def make(url: str, **options: Any) -> AsyncStreamWriter:
        writer = AsyncStreamWriter(url, backend=backend, **options)
        writers.append(writer)
        return writer

    yield make
    for writer in writers:
        with contextlib.suppress(Exception):
            writer.sync.close(timeout=1.0)


@pytest.fixture
def run_id() -> Callable[[], str]:
    """``run_id()``: a fresh run id, so tests share one server without flushing it."""
    return lambda: f"test-{uuid.uuid4().hex}"


@pytest.fixture
def plain_client() -> Iterator[Callable[[str], redis_py.Redis]]:
    """``plain_client(url)``: a plain redis-py client (``decode_responses=True``)
    to look at what is stored; closed afterwards."""
    clients: list[redis_py.Redis] = []

    def connect(url: str) -> redis_py.Redis:
        client = redis_py.Redis.from_url(url, decode_responses=True)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        client.close()


@pytest.fixture
def open_reader(backend: str) -> Iterator[Callable[..., StreamReader]]:
    """``open_reader(url, **options)``: a ``StreamReader`` on the test's backend, closed afterwards."""
    readers: list[StreamReader] = []

    def make(url: str, **options: Any) -> StreamReader:
        reader = StreamReader(url, backend=backend, **options)
        readers.append(reader)
        return reader

    yield make
    for reader in readers:
        reader.close()


@pytest.fixture
def fault_proxy() -> Iterator[Callable[[RedisProcess], FaultProxy]]:
    """``fault_proxy(server)``: a ``FaultProxy`` to that server (``.url`` reaches
    it) that the test can freeze, blackhole, delay or cut; closed afterwards."""
    proxies: list[FaultProxy] = []

    def make(server: RedisProcess) -> FaultProxy:
        proxy = FaultProxy("127.0.0.1", server.port)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()
