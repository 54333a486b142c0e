"""Shared fixtures for the sse-redis test suite: both backends, real servers."""

from __future__ import annotations

from types import ModuleType

import pytest

import servers
from fixtures_http import served  # noqa: F401  (apps served by uvicorn)
from fixtures_io import *  # noqa: F403  (backend, servers, writers, helpers)
from fixtures_io import load_backend

# ---------------------------------------------------------------- codec backends
# Every codec test runs against both engines.  A missing Rust core skips its
# half, unless SSE_REDIS_REQUIRE_RUST=1 (CI) makes that a failure.

CODEC_BACKENDS = ["rust", "python"]


# Session scope: the modules hold no state, and hypothesis refuses function-scoped fixtures.
@pytest.fixture(scope="session", params=CODEC_BACKENDS)
def codec(request: pytest.FixtureRequest) -> ModuleType:
    return load_backend(request.param)


@pytest.fixture(scope="session")
def both() -> tuple[ModuleType, ModuleType]:
    """(rust, python) for differential tests."""
    return load_backend("rust"), load_backend("python")


def pytest_addoption(parser: pytest.Parser) -> None:
    servers.add_options(parser)
