"""process_stream / aprocess_stream against real servers, on both engines.

Fixtures (``backend``, ``redis_url``, ``dedicated_server``, ``make_writer``,
``make_async_writer``, ``run_id``, ``plain_client``) come from ``fixtures_io.py``
through ``conftest.py``.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from sse_redis import (
    RedisUnavailable,
    StaleWriterError,
    aprocess_stream,
    process_stream,
)
from sse_redis.writer import DEFAULT_PUBLIC_ERROR, DONE_CHUNK

STOP_END_TURN = 'data: {"message_type":"stop_reason","stop_reason":"end_turn"}\n\n'
STOP_CANCELLED = 'data: {"message_type":"stop_reason","stop_reason":"cancelled"}\n\n'


def chunk(i: int) -> str:
    return f'data: {{"message_type":"assistant_message","i":{i},"run_id":null}}\n\n'


def stored(r, run: str) -> list[dict[str, str]]:
    return [fields for _, fields in r.xrange(f"sse:run:{run}")]


def assert_stream(items: list[dict[str, str]], data: list[str]) -> None:
    """Exactly ``data``, seq 1..n, ``complete`` on the last entry only."""
    assert [f["data"] for f in items] == data
    assert [int(f["seq_id"]) for f in items] == list(range(1, len(data) + 1))
    assert [f.get("complete") for f in items] == [None] * (len(data) - 1) + ["true"]


def error_payload(data: str) -> dict:
    assert data.startswith("event: error\n")
    assert data.endswith("\n\n")
    return json.loads("".join(line[6:] for line in data.split("\n") if line.startswith("data: ")))


class Finish:
    """Records on_finish calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str | None, BaseException | None]] = []

    def __call__(self, run_id: str, status: str, stop_reason: str | None, error: BaseException | None) -> None:
        self.calls.append((run_id, status, stop_reason, error))

    @property
    def only(self) -> tuple[str, str, str | None, BaseException | None]:
        assert len(self.calls) == 1, self.calls
        return self.calls[0]


# ------------------------------------------------------------------- sync


def test_list_with_tuples_gets_one_done(backend, redis_url, make_writer, plain_client, run_id):
    r = plain_client(redis_url)
    w = make_writer(redis_url)
    run, finish = run_id(), Finish()
    source = [chunk(1), (chunk(2), {"extra": 1}), (chunk(3), None, "more")]
    assert process_stream(source, w, run, on_finish=finish) == "completed"
    assert_stream(stored(r, run), [chunk(1), chunk(2), chunk(3), DONE_CHUNK])
    assert finish.only == (run, "completed", None, None)


def test_empty_source_gets_one_done(backend, redis_url, make_writer, plain_client, run_id):
    r = plain_client(redis_url)
    w = make_writer(redis_url)
    run, finish = run_id(), Finish()
    assert process_stream(iter(()), w, run, on_finish=finish) == "completed"
    assert_stream(stored(r, run), [DONE_CHUNK])
    assert finish.only == (run, "completed", None, None)


def test_stops_at_terminal_chunk(backend, redis_url, make_writer, plain_client, run_id):
    r = plain_client(redis_url)
    w = make_writer(redis_url)
    run, finish = run_id(), Finish()
    pulled: list[int] = []

    def source():
        for i, item in enumerate([chunk(1), STOP_END_TURN, DONE_CHUNK, chunk(4), DONE_CHUNK]):
            pulled.append(i)
            yield item

    assert process_stream(source(), w, run, on_finish=finish) == "completed"
    assert_stream(stored(r, run), [chunk(1), STOP_END_TURN, DONE_CHUNK])
    assert pulled == [0, 1, 2]  # nothing after the terminal chunk is even pulled
    assert finish.only == (run, "completed", "end_turn", None)


def test_error_event_from_source_ends_the_stream(backend, redis_url, make_writer, plain_client, run_id):
    r = plain_client(redis_url)
    w = make_writer(redis_url)
    run, finish = run_id(), Finish()
    error = 'event: error\ndata: {"error": "rate limited", "code": "RATE_LIMIT"}\n\n'
    process_stream([chunk(1), error, chunk(3)], w, run, on_finish=finish)
    assert_stream(stored(r, run), [chunk(1), error])
    assert len(finish.calls) == 1


def test_stop_reason_tracked(backend, redis_url, make_writer, plain_client, run_id):
    r = plain_client(redis_url)
    w = make_writer(redis_url)
    run, finish = run_id(), Finish()
    spaced = 'data: {"message_type": "stop_reason", "stop_reason": "max_tokens"}\n\n'
    assert process_stream([chunk(1), spaced, chunk(2), STOP_END_TURN], w, run, on_finish=finish) == "completed"
    assert_stream(stored(r, run), [chunk(1), spaced, chunk(2), STOP_END_TURN, DONE_CHUNK])
    assert finish.only == (run, "completed", "end_turn", None)  # the last one wins


def test_stop_reason_cancelled_means_cancelled(backend, redis_url, make_writer, plain_client, run_id):
    r = plain_client(redis_url)
    w = make_writer(redis_url)
    run, finish = run_id(), Finish()
    assert process_stream([chunk(1), STOP_CANCELLED], w, run, on_finish=finish) == "cancelled"
    assert_stream(stored(r, run), [chunk(1), STOP_CANCELLED, DONE_CHUNK])
    assert finish.only == (run, "cancelled", "cancelled", None)


def test_source_raises_writes_generic_error(backend, redis_url, make_writer, plain_client, run_id):
    r = plain_client(redis_url)
    w = make_writer(redis_url)
    run, finish = run_id(), Finish()
    boom = RuntimeError("db password is hunter2")

    def source():
        yield chunk(1)
        yield STOP_END_TURN
        raise boom

    assert process_stream(source(), w, run, on_finish=finish) == "failed"
    items = stored(r, run)
    assert [f["data"] for f in items[:2]] == [chunk(1), STOP_END_TURN]
    assert_stream(items, [chunk(1), STOP_END_TURN, items[-1]["data"]])
    assert "hunter2" not in items[-1]["data"]
    assert error_payload(items[-1]["data"]) == {"error": DEFAULT_PUBLIC_ERROR, "code": "INTERNAL_SERVER_ERROR"}
    assert finish.only == (run, "failed", "end_turn", boom)


def test_bad_chunk_type_fails_the_run(backend, redis_url, make_writer, plain_client, run_id):
    r = plain_client(redis_url)
    w = make_writer(redis_url)
    run, finish = run_id(), Finish()
    assert process_stream([chunk(1), b"data: bytes\n\n", chunk(3)], w, run, on_finish=finish) == "failed"
    items = stored(r, run)
    assert len(items) == 2
    assert items[-1]["complete"] == "true"
    assert error_payload(items[-1]["data"])["error"] == DEFAULT_PUBLIC_ERROR
    _, status, _, error = finish.only
    assert status == "failed"
    assert isinstance(error, TypeError)


def test_without_on_finish(backend, redis_url, make_writer, plain_client, run_id):
    r = plain_client(redis_url)
    w = make_writer(redis_url)
    run = run_id()
    assert process_stream((c for c in [chunk(1)]), w, run) == "completed"
    assert_stream(stored(r, run), [chunk(1), DONE_CHUNK])


def test_interrupt_is_not_reported_as_completed(backend, redis_url, make_writer, run_id):
    w = make_writer(redis_url)
    run, finish = run_id(), Finish()

    def source():
        yield chunk(1)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        process_stream(source(), w, run, on_finish=finish)
    _, status, _, _ = finish.only
    assert status in ("failed", "cancelled")


def test_another_runs_error_does_not_leak_into_this_run(backend, redis_url, make_writer, plain_client, run_id):
    # One writer serves many runs; a stale error pending on run ``other`` must
    # not end up as the outcome of an unrelated run ``mine``.
    r = plain_client(redis_url)
    shared, intruder = make_writer(redis_url), make_writer(redis_url)
    other, mine, finish = run_id(), run_id(), Finish()
    shared.write(other, chunk(1))
    shared.flush()
    intruder.write(other, chunk(2))
    intruder.flush()
    shared.write(other, chunk(99))  # stale: fails in the background
    deadline = time.monotonic() + 5
    while not shared.stats()["errors"] and time.monotonic() < deadline:
        time.sleep(0.005)
    assert shared.stats()["errors"] == 1
    assert process_stream([chunk(1), DONE_CHUNK], shared, mine, on_finish=finish) == "completed"
    assert finish.only == (mine, "completed", None, None)
    assert_stream(stored(r, mine), [chunk(1), DONE_CHUNK])
    with pytest.raises(StaleWriterError):  # still waiting for its owner
        shared.flush()


def test_redis_down_when_finishing(backend, dedicated_server, make_writer, run_id):
    server = dedicated_server()
    w = make_writer(server.url, retry_timeout=0.5, write_timeout=10)
    run, finish = run_id(), Finish()
    w.write(run, chunk(0))
    w.flush()

    def source():
        yield chunk(1)
        yield STOP_END_TURN
        server.stop()

    assert process_stream(source(), w, run, on_finish=finish) == "failed"
    _, status, stop_reason, error = finish.only
    assert (status, stop_reason) == ("failed", "end_turn")
    assert isinstance(error, RedisUnavailable)


# ------------------------------------------------------------------ async


async def agen(items: list[Any]):
    for item in items:
        await asyncio.sleep(0)
        yield item


def test_async_source_with_tuples_and_stop_reason(backend, redis_url, make_async_writer, plain_client, run_id):
    r = plain_client(redis_url)
    w = make_async_writer(redis_url)
    run, finish = run_id(), Finish()
    source = agen([chunk(1), (chunk(2), "extra"), STOP_END_TURN])
    assert asyncio.run(aprocess_stream(source, w, run, on_finish=finish)) == "completed"
    assert_stream(stored(r, run), [chunk(1), chunk(2), STOP_END_TURN, DONE_CHUNK])
    assert finish.only == (run, "completed", "end_turn", None)


def test_async_on_finish_coroutine(backend, redis_url, make_async_writer, plain_client, run_id):
    r = plain_client(redis_url)
    w = make_async_writer(redis_url)
    run = run_id()
    calls: list[tuple] = []

    async def on_finish(*args: Any) -> None:
        await asyncio.sleep(0)
        calls.append(args)

    assert asyncio.run(aprocess_stream(agen([chunk(1), STOP_CANCELLED]), w, run, on_finish=on_finish)) == "cancelled"
    assert calls == [(run, "cancelled", "cancelled", None)]
    assert_stream(stored(r, run), [chunk(1), STOP_CANCELLED, DONE_CHUNK])


def test_async_stops_at_terminal(backend, redis_url, make_async_writer, plain_client, run_id):
    r = plain_client(redis_url)
    w = make_async_writer(redis_url)
    run, finish = run_id(), Finish()
    source = agen([chunk(1), DONE_CHUNK, chunk(3)])
    assert asyncio.run(aprocess_stream(source, w, run, on_finish=finish)) == "completed"
    assert_stream(stored(r, run), [chunk(1), DONE_CHUNK])
    assert finish.only == (run, "completed", None, None)


def test_async_source_raises(backend, redis_url, make_async_writer, plain_client, run_id):
    r = plain_client(redis_url)
    w = make_async_writer(redis_url)
    run, finish = run_id(), Finish()
    boom = ValueError("internal detail 42")

    async def source():
        yield chunk(1)
        raise boom

    assert asyncio.run(aprocess_stream(source(), w, run, on_finish=finish)) == "failed"
    items = stored(r, run)
    assert len(items) == 2
    assert items[-1]["complete"] == "true"
    assert "internal detail" not in items[-1]["data"]
    assert error_payload(items[-1]["data"])["error"] == DEFAULT_PUBLIC_ERROR
    assert finish.only == (run, "failed", None, boom)


def test_async_cancellation_closes_stream(backend, redis_url, make_async_writer, plain_client, run_id):
    r = plain_client(redis_url)
    w = make_async_writer(redis_url)
    run, finish = run_id(), Finish()

    async def main() -> None:
        parked = asyncio.Event()

        async def source():
            for i in range(1, 4):
                yield chunk(i)
            parked.set()
            await asyncio.Event().wait()  # the model hangs: the user cancels
            yield chunk(99)

        task = asyncio.create_task(aprocess_stream(source(), w, run, on_finish=finish))
        await asyncio.wait_for(parked.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()

    asyncio.run(main())
    assert_stream(stored(r, run), [chunk(1), chunk(2), chunk(3), DONE_CHUNK])
    assert finish.only == (run, "cancelled", None, None)


def test_async_cancellation_while_writing(backend, dedicated_server, make_async_writer, plain_client, run_id):
    # Cancelled while a write waits for buffer space (server paused): the
    # stream still ends with exactly one [DONE] once Redis is back.
    server = dedicated_server()
    r, admin = plain_client(server.url), plain_client(server.url)
    w = make_async_writer(server.url, max_pending=2, write_timeout=10)
    run, finish = run_id(), Finish()

    async def main() -> None:
        await w.write(run, chunk(0))
        await w.flush()
        admin.execute_command("CLIENT", "PAUSE", 10000, "WRITE")
        try:
            task = asyncio.create_task(
                aprocess_stream(agen([chunk(i) for i in range(1, 10)]), w, run, on_finish=finish)
            )
            for _ in range(100):  # until the write is stuck waiting for room
                await asyncio.sleep(0.005)
                if w.stats()["pending"] >= 2:
                    break
            await asyncio.sleep(0.05)
            task.cancel()
            await asyncio.sleep(0.05)
        finally:
            admin.execute_command("CLIENT", "UNPAUSE")
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 15)

    asyncio.run(main())
    items = stored(r, run)
    assert items[-1]["data"] == DONE_CHUNK
    assert items[-1]["complete"] == "true"
    assert [int(f["seq_id"]) for f in items] == list(range(1, len(items) + 1))
    assert sum(f["data"] == DONE_CHUNK for f in items) == 1
    assert finish.only[1] == "cancelled"


def test_async_redis_down_when_finishing(backend, dedicated_server, make_async_writer, run_id):
    server = dedicated_server()
    w = make_async_writer(server.url, retry_timeout=0.5, write_timeout=10)
    run, finish = run_id(), Finish()

    async def main() -> str:
        await w.write(run, chunk(0))
        await w.flush()

        async def source():
            yield chunk(1)
            server.stop()

        return await aprocess_stream(source(), w, run, on_finish=finish)

    assert asyncio.run(main()) == "failed"
    _, status, _, error = finish.only
    assert status == "failed"
    assert isinstance(error, RedisUnavailable)


def test_async_another_runs_error_does_not_leak(backend, redis_url, make_async_writer, plain_client, run_id):
    r = plain_client(redis_url)
    shared, intruder = make_async_writer(redis_url), make_async_writer(redis_url)
    other, mine, finish = run_id(), run_id(), Finish()

    async def main() -> str:
        await shared.write(other, chunk(1))
        await shared.flush()
        await intruder.write(other, chunk(2))
        await intruder.flush()
        await shared.write(other, chunk(99))  # stale: fails in the background
        deadline = time.monotonic() + 5
        while not shared.stats()["errors"] and time.monotonic() < deadline:  # noqa: ASYNC110 (polls an engine's counter)
            await asyncio.sleep(0.005)
        assert shared.stats()["errors"] == 1
        return await aprocess_stream(agen([chunk(1), DONE_CHUNK]), shared, mine, on_finish=finish)

    assert asyncio.run(main()) == "completed"
    assert finish.only == (mine, "completed", None, None)
    assert_stream(stored(r, mine), [chunk(1), DONE_CHUNK])


# ------------------------------------------------------------------- policy hooks


class Stopped(Exception):
    """A source's own way of saying the user stopped the run."""


@pytest.mark.parametrize("face", ["sync", "async"])
def test_policy_hooks(backend, redis_url, make_writer, make_async_writer, plain_client, run_id, face):
    """``public_error`` picks the error event's text, ``on_failure`` runs before
    that event is stored, ``cancels`` turns a source exception into a
    cancellation (``[DONE]``, status ``cancelled``), and a hook's exception is
    raised once the run is closed and ``on_finish`` was called."""
    r = plain_client(redis_url)
    seen_before_error: list[int] = []

    def on_failure(run: str, status: str, reason: str | None, error: BaseException | None) -> None:
        seen_before_error.append(len(stored(r, run)))
        assert status == "failed"
        assert isinstance(error, ValueError)

    def drive(items: list[Any], **hooks: Any) -> tuple[str, Finish]:
        run, finish = run_id(), Finish()

        def source():
            for item in items:
                if isinstance(item, BaseException):
                    raise item
                yield item

        async def asource():
            for item in source():
                yield item

        if face == "sync":
            status = process_stream(source(), make_writer(redis_url), run, on_finish=finish, **hooks)
        else:
            status = asyncio.run(
                aprocess_stream(asource(), make_async_writer(redis_url), run, on_finish=finish, **hooks)
            )
        assert finish.only[1] == status
        return run, finish

    hooks = dict(
        public_error=lambda exc: f"sorry: {exc}", on_failure=on_failure, cancels=lambda exc: isinstance(exc, Stopped)
    )
    run, finish = drive([chunk(1), ValueError("quota")], **hooks)
    items = stored(r, run)
    assert error_payload(items[-1]["data"])["error"] == "sorry: quota"
    assert seen_before_error
    assert seen_before_error[0] <= 1
    assert finish.only[1] == "failed"

    run, finish = drive([chunk(1), Stopped("user")], **hooks)
    assert_stream(stored(r, run), [chunk(1), DONE_CHUNK])
    assert finish.only == (run, "cancelled", None, None)

    def broken_hook(*args: Any) -> None:
        raise RuntimeError("status table down")

    run = run_id()
    with pytest.raises(RuntimeError, match="status table down"):  # noqa: PT012 (one call, on either face)
        if face == "sync":
            process_stream([chunk(1)], make_writer(redis_url), run, on_finish=broken_hook)
        else:

            async def one():
                yield chunk(1)

            asyncio.run(aprocess_stream(one(), make_async_writer(redis_url), run, on_finish=broken_hook))
    assert_stream(stored(r, run), [chunk(1), DONE_CHUNK])  # closed before the hook's error surfaced
