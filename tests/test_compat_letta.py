"""sse_redis.compat.letta: the drop-in for Letta's redis_stream_manager,
against real servers, on both engines.

Fixtures (``backend``, ``redis_url``, ``dedicated_server``, ``run_id``,
``plain_client``) come from ``fixtures_io.py`` through ``conftest.py``.  The
run manager below is a recording stand-in for Letta's (an ordinary object with
the method the reference awaited), not a Redis mock.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import redis.asyncio as aioredis

from sse_redis import RunClosedError, StreamNotFound, StreamStalled
from sse_redis.compat import letta as compat
from sse_redis.compat.letta import (
    RedisSSEStreamWriter,
    RunUpdate,
    create_background_stream_processor,
    redis_sse_stream_generator,
)

DONE = "data: [DONE]\n\n"
STOP_END_TURN = 'data: {"message_type":"stop_reason","stop_reason":"end_turn"}\n\n'
STOP_CANCELLED = 'data: {"message_type":"stop_reason","stop_reason":"cancelled"}\n\n'
ACTOR = object()


@pytest.fixture(scope="module", autouse=True)
def _close_shared_engines():
    """The module shares writer engines and reader hubs across tests; close
    them afterwards so no connection of ours outlives this file."""
    yield
    compat.close_shared(timeout=2.0)


def msg(i: int) -> str:
    return f'data: {{"message_type":"assistant_message","i":{i}}}\n\n'


def key_of(run: str) -> str:
    return f"sse:run:{run}"


def stored(r, run: str) -> list[dict[str, str]]:
    return [fields for _, fields in r.xrange(key_of(run))]


def stored_data(r, run: str) -> list[str]:
    return [f["data"] for f in stored(r, run)]


def assert_stream(r, run: str, data: list[str]) -> None:
    """Exactly ``data``, seq 1..n, ``complete`` on the last entry only."""
    items = stored(r, run)
    assert [f["data"] for f in items] == data
    assert [int(f["seq_id"]) for f in items] == list(range(1, len(data) + 1))
    assert [f.get("complete") for f in items] == [None] * (len(data) - 1) + ["true"]


async def agen(items: list[Any]):
    for item in items:
        await asyncio.sleep(0)
        yield item


async def collect(chunks) -> list[str]:
    return [chunk async for chunk in chunks]


def read_all(url: str, run: str, backend: str, **kwargs: Any) -> list[str]:
    async def main() -> list[str]:
        gen = redis_sse_stream_generator(url, run, backend=backend, **kwargs)
        return await asyncio.wait_for(collect(gen), 10)

    return asyncio.run(main())


def process(url: str, run: str, backend: str, source, **kwargs: Any) -> None:
    asyncio.run(create_background_stream_processor(source, url, run, backend=backend, **kwargs))


class RunManager:
    """Records ``update_run_by_id_async`` calls (keyword-only, as the reference made them)."""

    def __init__(self, probe=None, fail: BaseException | None = None) -> None:
        self.calls: list[tuple[str, Any, Any]] = []
        self.probes: list[Any] = []
        self.probe, self.fail = probe, fail

    async def update_run_by_id_async(self, *, run_id: str, update: Any, actor: Any) -> None:
        await asyncio.sleep(0)
        self.calls.append((run_id, update, actor))
        if self.probe is not None:
            self.probes.append(self.probe())
        if self.fail is not None:
            raise self.fail

    @property
    def only(self) -> tuple[str, Any, Any]:
        assert len(self.calls) == 1, self.calls
        return self.calls[0]


class Finish:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __call__(self, *args: Any) -> None:
        self.calls.append(args)

    @property
    def only(self) -> tuple:
        assert len(self.calls) == 1, self.calls
        return self.calls[0]


def write_like_reference(r, run: str, chunks: list[str], *, complete: bool = True) -> None:
    """What the reference writer stored: time-based IDs, seq_id from 1,
    ``complete`` on the last entry, trimmed and with a TTL."""
    for seq, data in enumerate(chunks, 1):
        fields = {"seq_id": seq, "data": data, "timestamp": int(time.time() * 1000)}
        if complete and seq == len(chunks):
            fields["complete"] = "true"
        r.xadd(key_of(run), fields, maxlen=10000, approximate=True)
    r.expire(key_of(run), 10800)


def read_like_reference(r, run: str, starting_after: int | None = None, batch_size: int = 100) -> list[str]:
    """The reference's reading logic, restated: page through XRANGE from the
    start (inclusive bound, so the page's first entry may repeat), keep seq ids
    above the cursor, fill the two nulls by plain text replacement, and stop
    at the entry marked complete.  Gives up instead of polling forever."""
    out: list[str] = []
    cursor = starting_after or 0
    start, empty_rounds = "-", 0
    while empty_rounds < 20:
        page = r.xrange(key_of(run), min=start, count=batch_size)
        fresh = [(i, f) for i, f in page if i != start]
        if not fresh:
            empty_rounds += 1
            time.sleep(0.01)
            continue
        for entry_id, fields in fresh:
            seq = int(fields.get("seq_id", 0))
            if seq > cursor and fields.get("data"):
                data = fields["data"].replace('"run_id":null', f'"run_id":"{run}"')
                out.append(data.replace('"seq_id":null', f'"seq_id":{seq}'))
                if fields.get("complete") == "true":
                    return out
            start = entry_id
    raise AssertionError("the stream never completed")


# ------------------------------------------------------------------ writer


def test_writer_keeps_the_wire_layout(backend, redis_url, plain_client, run_id):
    r = plain_client(redis_url)
    run = run_id()

    async def main() -> list[int]:
        client = aioredis.Redis.from_url(redis_url)
        try:
            w = RedisSSEStreamWriter(client, backend=backend)
            assert (w.flush_interval, w.flush_size, w.stream_ttl, w.max_stream_length) == (0.5, 50, 10800, 10000)
            await w.start()
            seqs = [await w.write_chunk(run, msg(i)) for i in range(1, 4)]
            await w.mark_complete(run)
            await w.mark_complete(run)  # defect 9: a second [DONE] is not written
            with pytest.raises(RunClosedError):
                await w.write_chunk(run_id=run, data=msg(9))  # no restart at seq 1
            await w.stop()
            return seqs
        finally:
            await client.aclose()

    assert asyncio.run(main()) == [1, 2, 3]
    assert_stream(r, run, [msg(1), msg(2), msg(3), DONE])
    for fields in stored(r, run):
        assert fields["timestamp"].isdigit()
        assert abs(int(fields["timestamp"]) - time.time() * 1000) < 60_000
    assert 0 < r.ttl(key_of(run)) <= 10800


def test_writer_is_complete_flag_and_restart(backend, redis_url, plain_client, run_id):
    r = plain_client(redis_url)
    run = run_id()

    async def main() -> list[int]:
        first = RedisSSEStreamWriter(redis_url, backend=backend, stream_ttl_seconds=60)
        seqs = [await first.write_chunk(run, msg(1)), await first.write_chunk(run, msg(2))]
        await first.stop()  # flushes what it wrote
        assert stored_data(r, run) == [msg(1), msg(2)]
        # Defect 8: another writer (a restarted process) continues the seq ids.
        second = RedisSSEStreamWriter(redis_url, backend=backend, stream_ttl_seconds=60)
        seqs.append(await second.write_chunk(run, msg(3)))
        seqs.append(await second.write_chunk(run, "data: the end\n\n", is_complete=True))
        return seqs

    assert asyncio.run(main()) == [1, 2, 3, 4]
    assert_stream(r, run, [msg(1), msg(2), msg(3), "data: the end\n\n"])
    assert 0 < r.ttl(key_of(run)) <= 60


def test_writer_takes_lettas_client_wrapper(backend, redis_url, plain_client, run_id):
    """Letta's AsyncRedisClient keeps its settings in a redis.asyncio ConnectionPool (``pool``)."""
    r = plain_client(redis_url)
    run = run_id()

    class LettaStyleClient:
        def __init__(self, url: str) -> None:
            self.pool = aioredis.ConnectionPool.from_url(url, decode_responses=True)

    async def main() -> list[str]:
        client = LettaStyleClient(redis_url)
        w = RedisSSEStreamWriter(client, backend=backend)
        await w.write_chunk(run, msg(1))
        await w.mark_complete(run)
        out = await collect(redis_sse_stream_generator(client, run, backend=backend))
        await client.pool.disconnect()
        return out

    assert asyncio.run(main()) == [msg(1), DONE]
    assert_stream(r, run, [msg(1), DONE])


# ------------------------------------------------------------------ reader


def test_cursor_semantics(backend, redis_url, plain_client, run_id):
    r = plain_client(redis_url)
    run = run_id()
    source = [msg(i) for i in range(1, 6)]
    process(redis_url, run, backend, agen(source))
    everything = [*source, DONE]
    assert_stream(r, run, everything)

    started = time.monotonic()
    # poll_interval is accepted and ignored (pushed, not polled): nothing waits 5 s.
    assert read_all(redis_url, run, backend, poll_interval=5) == everything
    assert read_all(redis_url, run, backend, starting_after=None) == everything
    assert read_all(redis_url, run, backend, starting_after=0) == everything
    assert read_all(redis_url, run, backend, starting_after=3) == everything[3:]
    assert read_all(redis_url, run, backend, starting_after=5) == [DONE]
    # Defect 4: a cursor at the end of a complete stream ends at once; past
    # it, no reader of this stream holds such a cursor (the stream it read
    # was lost and written again): StreamNotFound, at once too.
    assert read_all(redis_url, run, backend, starting_after=6) == []
    with pytest.raises(StreamNotFound):
        read_all(redis_url, run, backend, starting_after=50)
    assert time.monotonic() - started < 5


def test_batch_size_one_terminates(backend, redis_url, plain_client, run_id):
    # Defect 3: the reference re-read the same entry forever with batch_size=1.
    r = plain_client(redis_url)
    run = run_id()
    process(redis_url, run, backend, agen([msg(i) for i in range(1, 8)]))
    everything = stored_data(r, run)
    assert len(everything) == 8
    assert read_all(redis_url, run, backend, batch_size=1) == everything
    assert read_all(redis_url, run, backend, batch_size=1, starting_after=2) == everything[2:]
    assert read_all(redis_url, run, backend, batch_size=2, starting_after=7) == [DONE]


def test_follows_a_live_run_and_patches_nulls(backend, redis_url, run_id):
    run = run_id()
    nulls = 'data: {"message_type":"assistant_message","run_id":null,"seq_id":null}\n\n'
    spaced = 'data: {"message_type": "reasoning_message", "run_id": null, "seq_id": null}\n\n'

    async def main() -> list[str]:
        reader = asyncio.create_task(collect(redis_sse_stream_generator(redis_url, run, backend=backend)))
        await asyncio.sleep(0.05)  # the reader waits for a stream that does not exist yet

        async def source():
            for chunk in (nulls, spaced, STOP_END_TURN):
                yield chunk
                await asyncio.sleep(0.02)

        await create_background_stream_processor(source(), redis_url, run, backend=backend)
        return await asyncio.wait_for(reader, 10)

    out = asyncio.run(main())
    assert out == [
        f'data: {{"message_type":"assistant_message","run_id":"{run}","seq_id":1}}\n\n',
        f'data: {{"message_type": "reasoning_message", "run_id": "{run}", "seq_id": 2}}\n\n',
        STOP_END_TURN,
        DONE,
    ]
    assert not any(line.startswith("id:") for chunk in out for line in chunk.split("\n"))


def test_reads_streams_the_reference_wrote(backend, redis_url, plain_client, run_id):
    r = plain_client(redis_url)
    run = run_id()
    chunks = [
        'data: {"message_type":"assistant_message","run_id":null}\n\n',
        'data: {"message_type": "assistant_message", "run_id": null, "seq_id": null}\n\n',
        STOP_END_TURN,
        DONE,
    ]
    write_like_reference(r, run, chunks)
    assert not r.xrange(key_of(run))[0][0].startswith("0-")  # time-based IDs
    expected = [
        f'data: {{"message_type":"assistant_message","run_id":"{run}"}}\n\n',
        f'data: {{"message_type": "assistant_message", "run_id": "{run}", "seq_id": 2}}\n\n',
        STOP_END_TURN,
        DONE,
    ]
    assert read_all(redis_url, run, backend) == expected
    assert read_all(redis_url, run, backend, starting_after=1, batch_size=1) == expected[1:]
    assert read_all(redis_url, run, backend, starting_after=4) == []


def test_continues_a_stream_the_reference_started(backend, redis_url, plain_client, run_id):
    r = plain_client(redis_url)
    run = run_id()
    write_like_reference(r, run, [msg(1), msg(2)], complete=False)

    async def main() -> list[int]:
        w = RedisSSEStreamWriter(redis_url, backend=backend)
        seqs = [await w.write_chunk(run, msg(3))]
        await w.mark_complete(run)
        return seqs

    assert asyncio.run(main()) == [3]
    assert_stream(r, run, [msg(1), msg(2), msg(3), DONE])
    assert not any(entry_id.startswith("0-") for entry_id, _ in r.xrange(key_of(run)))
    assert read_like_reference(r, run) == read_all(redis_url, run, backend) == [msg(1), msg(2), msg(3), DONE]


def test_the_reference_reads_streams_the_drop_in_wrote(backend, redis_url, plain_client, run_id):
    r = plain_client(redis_url)
    run = run_id()
    source = ['data: {"message_type":"assistant_message","run_id":null,"seq_id":null}\n\n']
    source += [msg(i) for i in range(2, 6)] + [STOP_END_TURN]
    process(redis_url, run, backend, agen(source))
    ours = read_all(redis_url, run, backend)
    assert read_like_reference(r, run) == ours
    assert read_like_reference(r, run, starting_after=3, batch_size=2) == ours[3:]
    assert ours[0] == f'data: {{"message_type":"assistant_message","run_id":"{run}","seq_id":1}}\n\n'
    assert ours[-1] == DONE


def test_dead_writer_raises_stream_stalled(backend, redis_url, run_id):
    # Defect 5: the writer went away without a terminal chunk.
    run = run_id()

    async def main() -> tuple[list[str], float]:
        w = RedisSSEStreamWriter(redis_url, backend=backend)
        await w.write_chunk(run, msg(1))
        await w.write_chunk(run, msg(2))
        await w.stop()
        got: list[str] = []
        started = time.monotonic()
        with pytest.raises(StreamStalled):  # noqa: PT012 (the loop raises; got keeps what came first)
            async for chunk in redis_sse_stream_generator(redis_url, run, backend=backend, idle_timeout=0.3):
                got.append(chunk)
        return got, time.monotonic() - started

    got, took = asyncio.run(main())
    assert got == [msg(1), msg(2)]
    assert 0.25 <= took < 5


def test_missing_stream_raises_stream_not_found(backend, redis_url, run_id):
    async def main() -> None:
        with pytest.raises(StreamNotFound):
            await collect(redis_sse_stream_generator(redis_url, run_id(), backend=backend, missing_timeout=0.2))

    asyncio.run(asyncio.wait_for(main(), 10))


def test_generators_share_one_reader(backend, redis_url, run_id):
    run = run_id()
    process(redis_url, run, backend, agen([msg(1), msg(2)]))

    async def main() -> list[list[str]]:
        client = aioredis.Redis.from_url(redis_url)
        try:
            gens = [redis_sse_stream_generator(client if i % 2 else redis_url, run, backend=backend) for i in range(6)]
            return await asyncio.gather(*(collect(g) for g in gens))
        finally:
            await client.aclose()

    assert asyncio.run(main()) == [[msg(1), msg(2), DONE]] * 6
    mine = [key for key in compat._readers if key[0] == redis_url and key[2] == backend and key[3] == 100]
    assert len(mine) == 1


# ------------------------------------------------------------------ processor


def test_processor_stops_at_done_and_reports(backend, redis_url, plain_client, run_id):
    r = plain_client(redis_url)
    run, manager, finish = run_id(), RunManager(), Finish()
    source = agen([msg(1), (msg(2), {"extra": 1}), STOP_END_TURN, DONE, msg(99)])
    process(redis_url, run, backend, source, run_manager=manager, actor=ACTOR, on_finish=finish)
    assert_stream(r, run, [msg(1), msg(2), STOP_END_TURN, DONE])
    assert manager.only == (run, RunUpdate(status="completed", stop_reason="end_turn"), ACTOR)
    assert finish.only == (run, "completed", "end_turn", None)


def test_processor_with_a_given_writer_and_no_terminal(backend, redis_url, plain_client, run_id):
    # The source ends without [DONE]: the stream is closed anyway (readers never hang).
    r = plain_client(redis_url)
    run, manager = run_id(), RunManager()

    async def main() -> None:
        writer = RedisSSEStreamWriter(redis_url, backend=backend)
        await writer.start()
        await create_background_stream_processor(
            agen([msg(1), msg(2)]), redis_url, run, writer=writer, run_manager=manager, actor=ACTOR
        )
        await writer.stop()

    asyncio.run(main())
    assert_stream(r, run, [msg(1), msg(2), DONE])
    assert manager.only == (run, RunUpdate(status="completed", stop_reason="end_turn"), ACTOR)
    assert read_all(redis_url, run, backend) == [msg(1), msg(2), DONE]


def test_processor_stop_reason_cancelled(backend, redis_url, plain_client, run_id):
    r = plain_client(redis_url)
    run, manager, finish = run_id(), RunManager(), Finish()
    process(
        redis_url,
        run,
        backend,
        agen([msg(1), STOP_CANCELLED, DONE]),
        run_manager=manager,
        actor=ACTOR,
        on_finish=finish,
    )
    assert_stream(r, run, [msg(1), STOP_CANCELLED, DONE])
    assert manager.only[1] == RunUpdate(status="cancelled", stop_reason="cancelled")
    assert finish.only == (run, "cancelled", "cancelled", None)


def test_processor_text_that_only_mentions_terminals_goes_on(backend, redis_url, plain_client, run_id):
    # The reference stopped at any chunk *containing* "event: error" or "data: [DONE]".
    r = plain_client(redis_url)
    run = run_id()
    chatty = 'data: {"text":"print(\\"data: [DONE]\\") then event: error"}\n\n'
    process(redis_url, run, backend, agen([chatty, msg(2)]))
    assert_stream(r, run, [chatty, msg(2), DONE])


def test_processor_error_chunk_carries_the_exception_text(backend, redis_url, plain_client, run_id):
    r = plain_client(redis_url)
    run, finish = run_id(), Finish()
    manager = RunManager(probe=lambda: stored_data(r, run))
    boom = ValueError('model "x" exploded: 42')

    async def source():
        yield msg(1)
        yield STOP_END_TURN
        raise boom

    process(redis_url, run, backend, source(), run_manager=manager, actor=ACTOR, on_finish=finish)
    expected = 'event: error\ndata: {"error": "model \\"x\\" exploded: 42", "code": "INTERNAL_SERVER_ERROR"}\n\n'
    assert_stream(r, run, [msg(1), STOP_END_TURN, expected])
    assert json.loads(expected.split("data: ", 1)[1]) == {"error": str(boom), "code": "INTERNAL_SERVER_ERROR"}
    # One status update (the reference overwrote "failed" with "completed" afterwards),
    # made before the error chunk is stored, as the reference ordered it.
    assert manager.only == (run, RunUpdate(status="failed", stop_reason="error", metadata={"error": str(boom)}), ACTOR)
    (seen,) = manager.probes  # earlier chunks may still be in flight; the error chunk is not stored yet
    assert seen == [msg(1), STOP_END_TURN][: len(seen)]
    assert finish.only == (run, "failed", "error", boom)
    assert read_all(redis_url, run, backend) == [msg(1), STOP_END_TURN, expected]


def test_run_cancelled_exception_by_name(backend, redis_url, plain_client, run_id):
    r = plain_client(redis_url)

    class RunCancelledException(Exception):  # letta's, recognised by its name
        pass

    class Subclass(RunCancelledException):
        pass

    for exc_type in (RunCancelledException, Subclass):
        run, manager, finish = run_id(), RunManager(), Finish()

        async def source(exc_type=exc_type):
            yield msg(1)
            raise exc_type("cancelled by user")

        process(redis_url, run, backend, source(), run_manager=manager, actor=ACTOR, on_finish=finish)
        assert_stream(r, run, [msg(1), DONE])  # no error chunk
        assert manager.only == (run, RunUpdate(status="cancelled", stop_reason="cancelled"), ACTOR)
        assert finish.only == (run, "cancelled", "cancelled", None)


def test_task_cancellation_closes_reports_and_reraises(backend, redis_url, plain_client, run_id):
    # Defect 11: CancelledError is re-raised, after [DONE] and the status update.
    r = plain_client(redis_url)
    run, manager, finish = run_id(), RunManager(), Finish()

    async def main() -> None:
        parked = asyncio.Event()

        async def source():
            yield msg(1)
            yield STOP_END_TURN
            parked.set()
            await asyncio.Event().wait()  # the model hangs; the user cancels
            yield msg(99)

        task = asyncio.create_task(
            create_background_stream_processor(
                source(), redis_url, run, run_manager=manager, actor=ACTOR, on_finish=finish, backend=backend
            )
        )
        await asyncio.wait_for(parked.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()

    asyncio.run(main())
    assert_stream(r, run, [msg(1), STOP_END_TURN, DONE])
    assert manager.only == (run, RunUpdate(status="cancelled", stop_reason="cancelled"), ACTOR)
    assert finish.only == (run, "cancelled", "cancelled", None)


def test_cancellation_while_reporting_finishes_the_report(backend, redis_url, plain_client, run_id):
    # The run had ended: a cancel during the status update lets the update
    # finish, keeps the outcome, and is re-raised.
    r = plain_client(redis_url)
    run, finish = run_id(), Finish()

    class SlowRunManager(RunManager):
        async def update_run_by_id_async(self, *, run_id: str, update: Any, actor: Any) -> None:
            self.entered.set()
            await asyncio.sleep(0.1)
            await super().update_run_by_id_async(run_id=run_id, update=update, actor=actor)

    manager = SlowRunManager()

    async def main() -> None:
        manager.entered = asyncio.Event()
        task = asyncio.create_task(
            create_background_stream_processor(
                agen([msg(1), STOP_END_TURN]),
                redis_url,
                run,
                run_manager=manager,
                actor=ACTOR,
                on_finish=finish,
                backend=backend,
            )
        )
        await asyncio.wait_for(manager.entered.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert_stream(r, run, [msg(1), STOP_END_TURN, DONE])
    assert manager.only == (run, RunUpdate(status="completed", stop_reason="end_turn"), ACTOR)
    assert finish.only == (run, "completed", "end_turn", None)


def test_run_manager_needs_an_actor_and_on_finish_may_be_async(backend, redis_url, run_id):
    run, manager = run_id(), RunManager()
    calls: list[tuple] = []

    async def on_finish(*args: Any) -> None:
        await asyncio.sleep(0)
        calls.append(args)

    process(redis_url, run, backend, agen([msg(1)]), run_manager=manager, actor=None, on_finish=on_finish)
    assert manager.calls == []  # as the reference: no actor, no update
    assert calls == [(run, "completed", "end_turn", None)]


def test_run_manager_failure_is_raised_after_closing(backend, redis_url, plain_client, run_id):
    r = plain_client(redis_url)
    run, finish = run_id(), Finish()
    manager = RunManager(fail=RuntimeError("database is down"))
    with pytest.raises(RuntimeError, match="database is down"):
        process(redis_url, run, backend, agen([msg(1)]), run_manager=manager, actor=ACTOR, on_finish=finish)
    assert_stream(r, run, [msg(1), DONE])
    assert len(manager.calls) == 1
    assert finish.only == (run, "completed", "end_turn", None)


def test_redis_down_in_the_finalizer_still_reports(backend, dedicated_server, run_id):
    # Defect 11: the reference's flush error skipped the status update.
    server = dedicated_server()
    run, manager, finish = run_id(), RunManager(), Finish()

    async def main() -> None:
        writer = RedisSSEStreamWriter(server.url, backend=backend, retry_timeout=0.5, write_timeout=10)
        await writer.write_chunk(run, msg(0))
        await writer.stop()

        async def source():
            yield msg(1)
            yield STOP_END_TURN
            server.stop()

        await create_background_stream_processor(
            source(), server.url, run, writer=writer, run_manager=manager, actor=ACTOR, on_finish=finish
        )

    try:
        asyncio.run(asyncio.wait_for(main(), 20))
    finally:
        compat.close_shared(timeout=0.5)
    got_run, update, actor = manager.only
    assert (got_run, update.status, update.stop_reason, actor) == (run, "failed", "error", ACTOR)
    assert "error" in update.metadata
    _, status, stop_reason, error = finish.only
    assert (status, stop_reason) == ("failed", "error")
    assert error is not None
