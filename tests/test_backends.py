"""The two backends are one interface: the same names, the same signatures,
and the switch that picks the live one (``SSE_REDIS_PURE``, ``backend=``)."""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import sys

import pytest

import sse_redis
from fixtures_io import load_backend
from sse_redis import _backend

API = [
    "Event",
    "SSEParser",
    "encode_event",
    "patch_nulls",
    "is_terminal",
    "sniff_stop_reason",
    "set_event_id",
    "MAX_NESTING",
    "WriterEngine",
    "ReaderHub",
]


def public(obj: object) -> set[str]:
    return {n for n in dir(obj) if not n.startswith("_") and not inspect.ismodule(getattr(obj, n))}


def test_both_modules_expose_exactly_the_same_names() -> None:
    rust, pure = load_backend("rust"), load_backend("python")
    assert public(rust) == public(pure) == set(API)
    assert sorted(pure.__all__) == sorted(API)
    for cls in ("Event", "SSEParser", "WriterEngine", "ReaderHub"):
        assert public(getattr(rust, cls)) == public(getattr(pure, cls)), cls


@pytest.mark.parametrize("name", [n for n in API if n != "MAX_NESTING"])
def test_same_signatures(name: str) -> None:
    """Parameter names, kinds and (where the Rust side can show them) defaults agree."""
    rust = inspect.signature(getattr(load_backend("rust"), name))
    pure = inspect.signature(getattr(load_backend("python"), name))
    assert [(p.name, p.kind) for p in rust.parameters.values()] == [(p.name, p.kind) for p in pure.parameters.values()]
    for r, p in zip(rust.parameters.values(), pure.parameters.values(), strict=True):
        if r.default is not Ellipsis:  # pyo3 shows computed defaults as "..."
            assert r.default == p.default, (name, r.name)


def test_max_nesting_agrees() -> None:
    assert load_backend("rust").MAX_NESTING == load_backend("python").MAX_NESTING == 128


@pytest.mark.parametrize(("env", "expected"), [("1", "python"), ("0", "rust"), ("", "rust")])
def test_sse_redis_pure_picks_the_live_backend(env: str, expected: str) -> None:
    load_backend("rust")  # a missing core is a skip (or a failure in CI), not a wrong answer
    out = subprocess.run(
        [sys.executable, "-c", "import sse_redis; print(sse_redis.BACKEND, sse_redis.patch_nulls.__module__)"],
        env={**os.environ, "SSE_REDIS_PURE": env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out[0] == expected
    assert out[1].startswith("sse_redis._pure" if expected == "python" else "sse_redis._core")


def test_backend_argument_is_checked() -> None:
    assert _backend.module("python") is load_backend("python")
    with pytest.raises(ValueError, match="backend must be"):
        _backend.module("go")
    with pytest.raises(ValueError, match="backend must be"):
        sse_redis.StreamWriter("redis://127.0.0.1:1/0", backend="java")


@pytest.mark.parametrize("face", ["StreamWriter", "AsyncStreamWriter", "StreamReader", "AsyncStreamReader"])
def test_faces_default_to_the_live_backend(face: str) -> None:
    """In this process: ``SSE_REDIS_PURE=1`` (scripts/test's fallback pass) makes the
    pure twin every face's default; otherwise (CI: SSE_REDIS_REQUIRE_RUST=1) the core."""
    if os.environ.get("SSE_REDIS_PURE", "") not in ("", "0"):
        assert sse_redis.BACKEND == "python"
        assert sse_redis.patch_nulls.__module__.startswith("sse_redis._pure")
    elif os.environ.get("SSE_REDIS_REQUIRE_RUST") == "1":
        assert sse_redis.BACKEND == "rust"
    obj = getattr(sse_redis, face)("redis://127.0.0.1:1/0")  # builds no engine, connects nowhere
    try:
        assert obj.backend == sse_redis.BACKEND
    finally:
        closing = obj.close()
        if inspect.iscoroutine(closing):  # AsyncStreamWriter.close
            asyncio.run(closing)
