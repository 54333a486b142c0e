"""The typed surface: what a type checker sees of the faces, and the async
reader's ``aclose``/``async with`` on both engines (real servers, never a mock).

One mypy run (``--strict``, on a snippet a user could write) pins that a
misspelled option or a wrongly typed codec result is a type error, not a
run-time surprise; ``inspect.signature`` pins that the async faces take the
sync faces' parameters exactly.  The stub itself is checked against the build
by ``stubtest`` and the package's completeness by ``basedpyright
--verifytypes``, both in ``scripts/gates``.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from sse_redis import AsyncStreamReader, AsyncStreamWriter, SSERedisError, StreamReader, StreamWriter

ROOT = Path(__file__).resolve().parents[1]
DEADLINE = 10.0

# Each line marked "# E: <text>" must get a mypy error containing <text>; no
# other line may get one.
SNIPPET = """\
from sse_redis import AsyncStreamReader, AsyncStreamWriter, StreamReader, Event, SSEParser
from sse_redis import encode_event, is_terminal, patch_nulls, set_event_id, sniff_stop_reason

URL = "redis://127.0.0.1:6379/0"

AsyncStreamReader(URL, ping_intervall=15)  # E: Unexpected keyword argument "ping_intervall"
AsyncStreamReader(URL, ping_interval="15")  # E: Argument "ping_interval" to "AsyncStreamReader"
AsyncStreamWriter(URL, flush_sise=5)  # E: Unexpected keyword argument "flush_sise"
StreamReader(URL, ping_intervall=15)  # E: Unexpected keyword argument "ping_intervall"

async def serve() -> list[str]:
    async with AsyncStreamReader(URL, ping_interval=15, backend="python") as reader:
        chunks = [chunk async for chunk in reader.read("run", last_event_id="3")]
    await reader.aclose()
    async with AsyncStreamWriter(URL, flush_size=5) as writer:
        seq: int = await writer.write("run", "data: x\\n\\n")
        done: int | None = await writer.complete("run")
    return chunks

events: list[Event] = SSEParser().feed("data: x\\n\\n")
text: str = set_event_id(patch_nulls(encode_event("x", event="e"), "run", 1), "1")
flag: bool = is_terminal(text)
reason: str | None = sniff_stop_reason(text)
wrong: int = encode_event("x")  # E: Incompatible types in assignment
"""


def test_mypy_rejects_misspelled_options_and_types_the_codec(tmp_path: Path) -> None:
    from mypy import api

    snippet = tmp_path / "user_code.py"
    snippet.write_text(SNIPPET)
    stdout, stderr, _status = api.run(
        ["--strict", "--no-incremental", "--config-file", "", "--show-error-codes", "--no-pretty", str(snippet)]
    )
    errors: dict[int, list[str]] = {}
    for line in stdout.splitlines():
        found = re.match(rf"{re.escape(str(snippet))}:(\d+): error: (.*)", line)
        if found:
            errors.setdefault(int(found[1]), []).append(found[2])
    expected = {
        number: mark.split("# E: ", 1)[1]
        for number, mark in enumerate(SNIPPET.splitlines(), start=1)
        if "# E: " in mark
    }
    assert set(errors) == set(expected), stdout + stderr
    for number, text in expected.items():
        assert any(text in error for error in errors[number]), (number, errors[number])


@pytest.mark.parametrize(("sync", "face"), [(StreamWriter, AsyncStreamWriter), (StreamReader, AsyncStreamReader)])
def test_async_faces_take_the_sync_parameters(sync: type, face: type) -> None:
    """Parameter for parameter: name, kind, default and annotation."""
    sync_params = list(inspect.signature(sync).parameters.values())
    face_params = list(inspect.signature(face).parameters.values())
    assert face_params == sync_params
    kinds = {p.kind for p in face_params}
    assert inspect.Parameter.VAR_KEYWORD not in kinds
    assert inspect.Parameter.VAR_POSITIONAL not in kinds


@pytest.mark.parametrize(
    ("sync", "face", "methods"),
    [
        (StreamWriter, AsyncStreamWriter, ["write", "complete", "fail", "flush", "last_seq", "delete", "close"]),
        (StreamReader, AsyncStreamReader, ["read"]),
    ],
)
def test_async_methods_mirror_the_sync_ones(sync: type, face: type, methods: list[str]) -> None:
    for name in methods:
        sync_params = list(inspect.signature(getattr(sync, name)).parameters.values())
        face_params = list(inspect.signature(getattr(face, name)).parameters.values())
        assert [(p.name, p.kind, p.default) for p in face_params] == [
            (p.name, p.kind, p.default) for p in sync_params
        ], name
        if face is AsyncStreamWriter:
            assert inspect.iscoroutinefunction(getattr(face, name)), name
    assert inspect.iscoroutinefunction(face.aclose)
    assert inspect.iscoroutinefunction(face.__aenter__)
    assert inspect.iscoroutinefunction(face.__aexit__)


def test_misspelled_option_fails_at_run_time_too() -> None:
    bad: dict[str, Any] = {"ping_intervall": 15}
    with pytest.raises(TypeError, match="ping_intervall"):
        AsyncStreamReader("redis://127.0.0.1:6379/0", **bad)


async def _drain(chunks: Any) -> list[str]:
    return [chunk async for chunk in chunks]


def test_async_reader_aclose_ends_running_reads(backend: str, redis_url: str) -> None:
    run = f"test-{uuid.uuid4().hex}"  # never written: the read waits for it

    async def main() -> None:
        async with AsyncStreamReader(redis_url, backend=backend, missing_timeout=60.0) as reader:
            task = asyncio.create_task(_drain(reader.read(run)))
            for _ in range(200):  # until the read has subscribed and waits
                await asyncio.sleep(0.01)
                if reader.sync.hub.stats()["subscriptions"] == 1:
                    break
            assert not task.done()
            await reader.aclose()
            with pytest.raises(SSERedisError):
                await asyncio.wait_for(task, DEADLINE)
            await reader.aclose()  # idempotent; __aexit__ closes once more
        with pytest.raises(SSERedisError, match="closed"):
            await _drain(reader.read(run))

    asyncio.run(main())


def test_async_with_closes_reader_and_writer(backend: str, redis_url: str) -> None:
    run = f"test-{uuid.uuid4().hex}"

    async def main() -> None:
        async with AsyncStreamWriter(redis_url, backend=backend) as writer:
            assert await writer.write(run, "data: one\n\n") == 1
            await writer.complete(run)
        with pytest.raises(SSERedisError, match="closed"):
            await writer.write(run, "data: two\n\n")
        async with AsyncStreamReader(redis_url, backend=backend) as reader:
            chunks = await asyncio.wait_for(_drain(reader.read(run, stamp_ids=False)), DEADLINE)
            assert chunks == ["data: one\n\n", "data: [DONE]\n\n"]
        with pytest.raises(SSERedisError, match="closed"):
            await _drain(reader.read(run))

    asyncio.run(main())


def test_the_package_is_marked_typed() -> None:
    assert (ROOT / "python" / "sse_redis" / "py.typed").exists()
    assert (ROOT / "python" / "sse_redis" / "_core.pyi").exists()
