"""Apps under test served for real: uvicorn on a free loopback port, in a
thread, stopped at teardown.  ``tests/conftest.py`` pulls the ``served``
fixture in; tests call ``serve_app(served, app)`` for the base URL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sse_redis.tools.servers import free_port

__all__ = ["Served", "serve_app", "served"]


class Served:
    """The servers a test started, and the readers to close after them."""

    def __init__(self) -> None:
        self.servers: list[tuple[Any, threading.Thread]] = []
        self.readers: list[Any] = []


@pytest.fixture
def served() -> Iterator[Served]:
    """Servers stopped first, then readers closed (a reader's loop waker belongs
    to the server's loop, which must be gone before ``close``)."""
    state = Served()
    yield state
    for server, _thread in state.servers:
        server.should_exit = True
    for _server, thread in state.servers:
        thread.join(10)
    for reader in state.readers:
        reader.close()


def serve_app(state: Served, app: Any) -> str:
    """Serve ``app`` until the test ends; its base URL."""
    import uvicorn  # the [serve] extra: only tests that serve an app need it

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    state.servers.append((server, thread))
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "uvicorn died while starting"
        assert time.monotonic() < deadline, "the app did not start"
        time.sleep(0.01)
    return f"http://127.0.0.1:{port}"
