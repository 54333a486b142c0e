"""Shared fixtures for the sse-redis test suite."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

# ---------------------------------------------------------------- codec backends
# Every codec test runs against both engines.  A missing Rust core skips its
# half, unless SSE_REDIS_REQUIRE_RUST=1 (CI) makes that a failure.

CODEC_BACKENDS = ["rust", "python"]


def load_codec(backend: str) -> ModuleType:
    """The codec module behind ``backend``, or skip/fail when Rust is not built."""
    if backend == "python":
        return importlib.import_module("sse_redis._pure")
    try:
        return importlib.import_module("sse_redis._core")
    except ImportError as exc:
        reason = f"sse_redis._core is not built: {exc}"
        if os.environ.get("SSE_REDIS_REQUIRE_RUST") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


# Session scope: the modules hold no state, and hypothesis refuses function-scoped fixtures.
@pytest.fixture(scope="session", params=CODEC_BACKENDS)
def codec(request: pytest.FixtureRequest) -> ModuleType:
    return load_codec(request.param)


@pytest.fixture(scope="session")
def both() -> tuple[ModuleType, ModuleType]:
    """(rust, python) for differential tests."""
    return load_codec("rust"), load_codec("python")


# ---------------------------------------------------------------- I/O fixtures
# Real servers (servers.py) and the engine backends (fixtures_io.py).

import servers  # noqa: E402
from fixtures_io import *  # noqa: E402,F401,F403


def pytest_addoption(parser: pytest.Parser) -> None:
    servers.add_options(parser)
