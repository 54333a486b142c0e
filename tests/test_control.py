"""Run control (issue 13) on real servers, both backends: ``RunControl``
cancels a run from any process (one fenced ``event: cancelled`` terminal),
its status, and ``process_stream``/``aprocess_stream`` stopping their source
when a cancel is pushed from another process."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_py

from sse_redis import (
    AsyncRunControl,
    ClusterKeyLayout,
    RunCancelled,
    RunClosedError,
    RunControl,
    RunInfo,
    StreamReader,
    aprocess_stream,
    cancel_event,
    cancelled,
    is_terminal,
    process_stream,
)
from sse_redis import _pure as pure_codec
from sse_redis.keys import notice_channel, status_key

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benches"))
from _reference import ReferenceWriter

STOP_END_TURN = 'data: {"message_type":"stop_reason","stop_reason":"end_turn"}\n\n'


def chunk(i: int) -> str:
    return f'data: {{"message_type":"assistant_message","i":{i},"run_id":null}}\n\n'


def entries(r: redis_py.Redis, key: str) -> list[dict[str, str]]:
    return [fields for _, fields in r.xrange(key)]


def assert_cancelled_at_end(items: list[dict[str, str]], reason: str | None = None) -> None:
    """Seq ids gapless from 1, exactly one terminal, last, and it is the cancel's."""
    assert [int(f["seq_id"]) for f in items] == list(range(1, len(items) + 1))
    assert [f.get("complete") for f in items] == [None] * (len(items) - 1) + ["true"]
    last = items[-1]
    assert last["cancelled"] == "true"
    assert last["data"].startswith("event: cancelled\n")
    payload = json.loads(last["data"].split("data: ", 1)[1])
    assert payload == {"reason": reason}


@pytest.fixture
def make_control(backend: str) -> Iterator[Any]:
    controls: list[RunControl] = []

    def make(url: str, **options: Any) -> RunControl:
        control = RunControl(url, backend=backend, **options)
        controls.append(control)
        return control

    yield make
    for control in controls:
        control.close()


# ------------------------------------------------------------------ cancel


def test_cancel_stores_one_terminal_after_the_last_chunk(backend, redis_url, make_writer, make_control, run_id):
    r = redis_py.Redis.from_url(redis_url, decode_responses=True)
    writer, control = make_writer(redis_url), make_control(redis_url)
    run = run_id()
    writer.write(run, chunk(1))
    writer.write(run, chunk(2))
    writer.flush()
    assert control.cancel(run, reason="user pressed stop") is True
    assert control.cancel(run, reason="again") is False  # no second terminal
    items = entries(r, f"sse:run:{run}")
    assert len(items) == 3
    assert_cancelled_at_end(items, "user pressed stop")
    info = control.status(run)
    assert isinstance(info, RunInfo)
    assert (info.state, info.last_seq, info.stop_reason) == ("cancelled", 3, "user pressed stop")
    # A plain writer (no processor watching the run) learns it from its next
    # batch, which the script refuses; from then on its writes and complete
    # raise RunCancelled (a RunClosedError) ...
    writer.write(run, chunk(3))
    writer.flush()
    with pytest.raises(RunCancelled):
        writer.write(run, chunk(4))
    with pytest.raises(RunClosedError):
        writer.complete(run)
    # ... and the writer stays usable: flush and close do not raise.
    writer.flush()
    other = run_id()
    writer.write(other, chunk(1))
    assert writer.complete(other) == 2
    assert len(entries(r, f"sse:run:{run}")) == 3
    writer.close()


def test_writes_in_flight_when_cancelled_are_refused_not_raised_by_flush(
    backend, redis_url, make_writer, make_control, run_id
):
    r = redis_py.Redis.from_url(redis_url, decode_responses=True)
    writer, control = make_writer(redis_url), make_control(redis_url)
    run = run_id()
    writer.write(run, chunk(1))
    writer.flush()
    assert control.cancel(run)
    writer.write(run, chunk(2))  # queued before the writer knows: refused by the script
    writer.flush()  # the cancel is the run's end, not the writer's error
    with pytest.raises(RunCancelled):
        writer.complete(run)
    assert_cancelled_at_end(entries(r, f"sse:run:{run}"))


def test_cancel_of_an_unknown_or_ended_run_returns_false(backend, redis_url, make_writer, make_control, run_id):
    writer, control = make_writer(redis_url), make_control(redis_url)
    unknown, done, failed = run_id(), run_id(), run_id()
    assert control.cancel(unknown) is False
    assert control.status(unknown) is None
    writer.write(done, chunk(1))
    writer.write(done, STOP_END_TURN)
    writer.complete(done)
    writer.write(failed, chunk(1))
    writer.fail(failed, RuntimeError("boom"))
    assert control.cancel(done) is False
    assert control.cancel(failed) is False
    info = control.status(done)
    assert info is not None
    assert (info.state, info.last_seq, info.stop_reason) == ("completed", 3, "end_turn")
    info = control.status(failed)
    assert info is not None
    assert (info.state, info.last_seq) == ("failed", 2)


def test_registered_run_without_chunks_can_be_cancelled(backend, redis_url, make_writer, make_control, run_id):
    r = redis_py.Redis.from_url(redis_url, decode_responses=True)
    writer, control = make_writer(redis_url), make_control(redis_url)
    run = run_id()
    assert control.start(run) is True
    info = control.status(run)
    assert info is not None
    assert (info.state, info.last_seq) == ("running", 0)
    assert info.started_at is not None
    assert abs(info.started_at - time.time()) < 60
    assert control.cancel(run, reason="stop before the first token") is True
    assert_cancelled_at_end(entries(r, f"sse:run:{run}"), "stop before the first token")
    info = control.status(run)
    assert info is not None
    assert (info.state, info.last_seq) == ("cancelled", 1)
    with pytest.raises(RunCancelled):
        writer.write(run, chunk(1))
    assert control.start(run) is False  # ended: not registered again


def test_concurrent_cancels_exactly_one_wins(backend, redis_url, make_writer, run_id):
    r = redis_py.Redis.from_url(redis_url, decode_responses=True)
    writer = make_writer(redis_url)
    run = run_id()
    writer.write(run, chunk(1))
    writer.flush()
    controls = [RunControl(redis_url, backend=backend) for _ in range(8)]
    results: list[bool] = []
    barrier = threading.Barrier(len(controls))

    def cancel(control: RunControl) -> None:
        barrier.wait()
        results.append(control.cancel(run, reason="many"))

    threads = [threading.Thread(target=cancel, args=(c,)) for c in controls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for control in controls:
        control.close()
    assert sorted(results) == [False] * 7 + [True]
    assert_cancelled_at_end(entries(r, f"sse:run:{run}"), "many")


@pytest.mark.parametrize("flush_size", [1, 50])
def test_cancel_racing_a_producer_never_stores_after_the_terminal(
    backend, redis_url, make_writer, make_control, run_id, flush_size
):
    """Cancels at random points of a producer writing as fast as it can (the
    trusted fast path included): gapless seq ids, one terminal, the cancel's,
    last; the producer ends with RunCancelled."""
    r = redis_py.Redis.from_url(redis_url, decode_responses=True)
    writer, control = make_writer(redis_url, flush_size=flush_size), make_control(redis_url)
    rng = random.Random(13)
    for _ in range(12):
        run = run_id()
        failure: list[BaseException] = []

        def produce(run: str = run, failure: list[BaseException] = failure) -> None:
            try:
                for i in range(1, 100_000):
                    writer.write(run, chunk(i))
                    if i % 7 == 0:
                        time.sleep(0)
            except RunCancelled as exc:
                failure.append(exc)

        thread = threading.Thread(target=produce)
        thread.start()
        time.sleep(rng.uniform(0.0, 0.03))
        assert control.cancel(run, reason="race") is True
        thread.join(20)
        assert not thread.is_alive()
        assert failure
        assert isinstance(failure[0], RunCancelled)
        writer.flush()
        assert_cancelled_at_end(entries(r, f"sse:run:{run}"), "race")


def test_cancel_racing_complete_leaves_one_terminal(backend, redis_url, make_writer, make_control, run_id):
    r = redis_py.Redis.from_url(redis_url, decode_responses=True)
    writer, control = make_writer(redis_url), make_control(redis_url)
    outcomes = set()
    for _ in range(20):
        run = run_id()
        writer.write(run, chunk(1))
        writer.flush()
        results: dict[str, Any] = {}

        def complete(run: str = run, results: dict[str, Any] = results) -> None:
            try:
                results["complete"] = writer.complete(run)
            except RunCancelled:
                results["complete"] = "cancelled"

        thread = threading.Thread(target=complete)
        thread.start()
        results["cancel"] = control.cancel(run)
        thread.join()
        items = entries(r, f"sse:run:{run}")
        assert [int(f["seq_id"]) for f in items] == [1, 2]
        assert sum(f.get("complete") == "true" for f in items) == 1
        # Exactly one of the two won, and each says so.
        assert (results["cancel"] is True) == (results["complete"] == "cancelled")
        outcomes.add(results["cancel"])
    assert outcomes  # (which wins varies)


def test_cancel_on_a_key_that_is_not_a_stream(backend, redis_url, make_control, run_id):
    r = redis_py.Redis.from_url(redis_url)
    run = run_id()
    r.set(f"sse:run:{run}", "x")
    control = make_control(redis_url)
    with pytest.raises(Exception, match="not a stream"):
        control.cancel(run)


def test_reason_must_be_text(backend, redis_url, make_control, run_id):
    with pytest.raises(TypeError):
        make_control(redis_url).cancel(run_id(), reason=3)  # type: ignore[arg-type]


# ------------------------------------------------------------------ status


def test_status_across_states_and_ttl(backend, redis_url, make_writer, make_control, run_id):
    r = redis_py.Redis.from_url(redis_url, decode_responses=True)
    writer, control = make_writer(redis_url, ttl=500), make_control(redis_url)
    run = run_id()
    key = f"sse:run:{run}"
    assert status_key(key) == f"{{{key}}}:status"
    writer.write(run, chunk(1))
    writer.flush()
    info = control.status(run)
    assert info is not None
    assert (info.state, info.last_seq, info.stop_reason) == ("running", 1, None)
    assert info.started_at is not None
    assert info.updated_at is not None
    assert info.started_at <= info.updated_at
    assert r.ttl(status_key(key)) == r.ttl(key) == 500
    writer.write(run, STOP_END_TURN)
    writer.write(run, chunk(3))
    writer.flush()
    info = control.status(run)
    assert info is not None
    assert (info.state, info.last_seq, info.stop_reason) == ("running", 3, "end_turn")
    time.sleep(1.1)
    writer.complete(run)
    info = control.status(run)
    assert info is not None
    assert (info.state, info.last_seq, info.stop_reason) == ("completed", 4, "end_turn")
    assert info.updated_at is not None
    assert info.started_at is not None
    assert info.updated_at > info.started_at + 1
    assert r.ttl(status_key(key)) == r.ttl(key)
    assert r.hgetall(status_key(key))["state"] == "completed"
    writer.delete(run)  # the status goes with the stream
    assert not r.exists(status_key(key))
    assert control.status(run) is None


def test_cancelled_status_has_the_streams_ttl(backend, redis_url, make_writer, make_control, run_id):
    r = redis_py.Redis.from_url(redis_url, decode_responses=True)
    writer, control = make_writer(redis_url, ttl=700), make_control(redis_url, ttl=900)
    run = run_id()
    key = f"sse:run:{run}"
    writer.write(run, chunk(1))
    writer.flush()
    control.cancel(run)
    assert r.ttl(status_key(key)) == r.ttl(key) == 700  # the stream's own, not the control's
    empty = run_id()
    control.start(empty)
    control.cancel(empty)
    assert r.ttl(status_key(f"sse:run:{empty}")) == r.ttl(f"sse:run:{empty}") == 900


def test_status_of_a_stream_the_reference_wrote(backend, redis_url, make_control, run_id):
    control = make_control(redis_url)
    reference = ReferenceWriter(redis_url, flush_size=1)
    run = run_id()
    reference.write(run, chunk(1))
    reference.write(run, chunk(2))
    info = control.status(run)
    assert info is not None
    assert (info.state, info.last_seq, info.stop_reason) == ("running", 2, None)
    assert info.started_at is not None
    assert info.updated_at is not None
    reference.write(run, "data: [DONE]\n\n")
    info = control.status(run)
    assert info is not None
    assert (info.state, info.last_seq, info.stop_reason) == ("completed", 3, None)
    # A live reference run can be cancelled: the terminal keeps its time-based IDs.
    live = run_id()
    reference.write(live, chunk(1))
    assert control.cancel(live, reason="stop") is True
    r = redis_py.Redis.from_url(redis_url, decode_responses=True)
    ids = [entry_id for entry_id, _ in r.xrange(f"sse:run:{live}")]
    assert len(ids) == 2
    assert not ids[1].startswith("0-")
    assert_cancelled_at_end(entries(r, f"sse:run:{live}"), "stop")
    reference.close()


def test_async_run_control(backend, redis_url, make_writer, run_id):
    writer = make_writer(redis_url)
    run = run_id()

    async def main() -> None:
        async with AsyncRunControl(redis_url, backend=backend) as control:
            assert await control.start(run) is True
            writer.write(run, chunk(1))
            writer.flush()
            info = await control.status(run)
            assert info is not None
            assert info.state == "running"
            assert await control.cancel(run, reason="async") is True
            info = await control.status(run)
            assert info is not None
            assert (info.state, info.last_seq, info.stop_reason) == ("cancelled", 2, "async")

    asyncio.run(main())


def test_is_terminal_knows_the_cancel_terminal(codec):
    assert codec.is_terminal('event: cancelled\ndata: {"reason": null}\n\n')
    assert codec.is_terminal("event:cancelled\r\ndata: {}\r\n\r\n")
    assert not codec.is_terminal("data: cancelled\n\n")
    assert not codec.is_terminal("event: cancelled2\ndata: x\n\n")
    assert is_terminal("event: cancelled\ndata: {}\n\n") == pure_codec.is_terminal("event: cancelled\ndata: {}\n\n")


# ------------------------------------------------------------------ the producer, from another process

CANCELLER = textwrap.dedent(
    """
    import sys, time
    from sse_redis import RunControl
    control = RunControl(sys.argv[1], backend=sys.argv[2], cluster=sys.argv[3] == "1")
    control.status("warm-up")
    print("ready", flush=True)
    for line in sys.stdin:
        run, reason = line.split()
        at = time.time()
        print(at, control.cancel(run, reason=reason), flush=True)
    """
)


class Canceller:
    """A second process that cancels the runs it is told, saying when."""

    def __init__(self, url: str, backend: str, cluster: bool = False) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", CANCELLER, url, backend, "1" if cluster else "0"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "ready"

    def cancel(self, run: str, reason: str = "stop") -> tuple[float, bool]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(f"{run} {reason}\n")
        self.process.stdin.flush()
        at, ok = self.process.stdout.readline().split()
        return float(at), ok == "True"

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(10)


@pytest.fixture
def canceller(backend: str) -> Iterator[Any]:
    made: list[Canceller] = []

    def make(url: str, cluster: bool = False) -> Canceller:
        made.append(Canceller(url, backend, cluster))
        return made[-1]

    yield make
    for one in made:
        one.close()


class Finish:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str | None, BaseException | None]] = []

    def __call__(self, run_id: str, status: str, stop_reason: str | None, error: BaseException | None) -> None:
        self.calls.append((run_id, status, stop_reason, error))


async def until_stored(writer: Any, run: str) -> None:
    """Wait (at most 10 s) until the run's first chunk is stored."""
    for _ in range(2000):
        if await writer.last_seq(run):
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"run {run} has no chunk stored")


async def _idle_async_run(writer: Any, run: str, closed: dict[str, float], finish: Finish) -> str:
    async def source() -> Any:
        try:
            yield chunk(1)
            await asyncio.sleep(3600)  # the model thinks
            yield chunk(2)
        finally:
            closed[run] = time.time()

    return await aprocess_stream(source(), writer, run, on_finish=finish)


def _follow(reader: StreamReader, run: str, out: list[str]) -> threading.Thread:
    thread = threading.Thread(target=lambda: out.extend(reader.read(run, starting_after=0, missing_timeout=10)))
    thread.start()
    return thread


def test_cancel_from_another_process_stops_an_idle_async_run(
    backend, redis_url, make_async_writer, canceller, run_id, open_reader
):
    writer = make_async_writer(redis_url)
    other = canceller(redis_url)
    reader = open_reader(redis_url)
    run, finish, closed = run_id(), Finish(), {}
    read: list[str] = []

    async def main() -> None:
        task = asyncio.create_task(_idle_async_run(writer, run, closed, finish))
        await until_stored(writer, run)
        follower = _follow(reader, run, read)
        await asyncio.sleep(0.2)
        at, ok = await asyncio.to_thread(other.cancel, run, "remote")
        assert ok
        assert await asyncio.wait_for(task, 10) == "cancelled"
        assert closed[run] - at < 2.0  # the bench measures the p99 (target 50 ms)
        await asyncio.to_thread(follower.join, 10)

    asyncio.run(main())
    assert finish.calls == [(run, "cancelled", "remote", None)]
    assert len(read) == 2
    assert read[-1].startswith("event: cancelled\n")


def test_cancel_from_another_process_stops_an_idle_sync_run(
    backend, redis_url, make_writer, make_control, canceller, run_id
):
    r = redis_py.Redis.from_url(redis_url, decode_responses=True)
    writer, control = make_writer(redis_url), make_control(redis_url)
    other = canceller(redis_url)
    run, finish, closed = run_id(), Finish(), {}
    seen: list[bool] = []

    def source() -> Iterator[str]:
        try:
            yield chunk(1)
            event = cancel_event()
            assert event is not None
            event.wait(3600)  # the model thinks, and listens
            seen.append(cancelled())
            yield chunk(2)  # not written: the processor closes the source
            yield chunk(3)
        finally:
            closed[run] = time.time()

    results: list[str] = []
    thread = threading.Thread(target=lambda: results.append(process_stream(source(), writer, run, on_finish=finish)))
    thread.start()
    deadline = time.monotonic() + 10
    while not writer.last_seq(run) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    at, ok = other.cancel(run, "sync-stop")
    assert ok
    thread.join(10)
    assert results == ["cancelled"]
    assert seen == [True]
    assert closed[run] - at < 2.0
    assert finish.calls == [(run, "cancelled", "sync-stop", None)]
    assert_cancelled_at_end(entries(r, f"sse:run:{run}"), "sync-stop")
    info = control.status(run)
    assert info is not None
    assert (info.state, info.last_seq) == ("cancelled", 2)


def test_cancel_before_the_first_chunk_of_a_processed_run(backend, redis_url, make_async_writer, make_control, run_id):
    """A processor registers its run at its start: a Stop pressed while the
    model thinks before its first token works."""
    writer, control = make_async_writer(redis_url), make_control(redis_url)
    run, finish, closed = run_id(), Finish(), {}

    async def source() -> Any:
        try:
            await asyncio.sleep(3600)
            yield chunk(1)
        finally:
            closed[run] = time.time()

    async def main() -> None:
        task = asyncio.create_task(aprocess_stream(source(), writer, run, on_finish=finish))
        for _ in range(1000):
            if control.status(run) is not None:
                break
            await asyncio.sleep(0.01)
        info = control.status(run)
        assert info is not None
        assert (info.state, info.last_seq) == ("running", 0)
        assert control.cancel(run, reason="early")
        assert await asyncio.wait_for(task, 10) == "cancelled"

    asyncio.run(main())
    assert finish.calls == [(run, "cancelled", "early", None)]
    assert run in closed


def test_cancel_stop_latency_bound_over_many_cancels(backend, redis_url, make_async_writer, canceller, run_id):
    """Cancel -> source closed across processes, 30 cancels of idle runs: a
    generous bound here; ``benches/bench_control.py`` reports the p99."""
    writer = make_async_writer(redis_url)
    other = canceller(redis_url)
    delays: list[float] = []

    async def main() -> None:
        for _ in range(30):
            run, finish, closed = run_id(), Finish(), {}
            task = asyncio.create_task(_idle_async_run(writer, run, closed, finish))
            await until_stored(writer, run)
            await asyncio.sleep(0.02)
            at, ok = await asyncio.to_thread(other.cancel, run, "bench")
            assert ok
            await asyncio.wait_for(task, 10)
            delays.append(closed[run] - at)

    asyncio.run(main())
    delays.sort()
    assert delays[int(len(delays) * 0.99) - 1] < 1.0, delays


def test_remote_cancel_reaches_a_writer_of_another_process_through_a_cut_subscriber_link(
    backend, dedicated_server, fault_proxy, make_async_writer, make_control, run_id
):
    """The producer's links (its subscriber included) go through a proxy that
    resets them all: the listener reconnects, reads the run's top, and the
    cancel still stops the source."""
    server = dedicated_server()
    proxy = fault_proxy(server)
    writer = make_async_writer(proxy.url)
    control = make_control(server.url)
    run, finish, closed = run_id(), Finish(), {}

    async def main() -> None:
        task = asyncio.create_task(_idle_async_run(writer, run, closed, finish))
        await until_stored(writer, run)
        await asyncio.sleep(0.2)
        proxy.blackhole(new=False)  # the links go silent: no FIN, no RST
        at = time.time()
        assert await asyncio.to_thread(control.cancel, run, "cut")
        assert await asyncio.wait_for(task, 20) == "cancelled"
        assert closed[run] - at < 15.0

    asyncio.run(main())
    assert finish.calls == [(run, "cancelled", "cut", None)]


def test_remote_cancel_after_a_reset_subscriber_link(
    backend, dedicated_server, fault_proxy, make_async_writer, make_control, run_id
):
    server = dedicated_server()
    proxy = fault_proxy(server)
    writer = make_async_writer(proxy.url)
    control = make_control(server.url)
    run, finish, closed = run_id(), Finish(), {}

    async def main() -> None:
        task = asyncio.create_task(_idle_async_run(writer, run, closed, finish))
        await until_stored(writer, run)
        await asyncio.sleep(0.2)
        proxy.drop_all()  # every link reset
        at = time.time()
        assert await asyncio.to_thread(control.cancel, run, "reset")
        assert await asyncio.wait_for(task, 10) == "cancelled"
        assert closed[run] - at < 3.0

    asyncio.run(main())
    assert finish.calls == [(run, "cancelled", "reset", None)]


def test_without_channel_rights_the_producer_polls(backend, dedicated_server, make_writer, run_id, caplog):
    """SUBSCRIBE refused (an ACL user with no channels): the listener logs
    once and polls the run's top; the cancel still stops the source."""
    server = dedicated_server()
    admin = redis_py.Redis.from_url(server.url)
    admin.execute_command(
        "ACL", "SETUSER", "nochan", "on", ">pw", "resetkeys", "~sse:*", "~{sse:*", "resetchannels", "+@all"
    )
    url = f"redis://nochan:pw@127.0.0.1:{server.port}/0"
    writer = make_writer(url)
    control = RunControl(server.url, backend=backend)
    run, finish, closed = run_id(), Finish(), {}

    def source() -> Iterator[str]:
        try:
            yield chunk(1)
            event = cancel_event()
            assert event is not None
            event.wait(3600)
            yield chunk(2)
        finally:
            closed[run] = time.time()

    results: list[str] = []
    with caplog.at_level("WARNING", logger="sse_redis.control"):
        thread = threading.Thread(
            target=lambda: results.append(process_stream(source(), writer, run, on_finish=finish))
        )
        thread.start()
        deadline = time.monotonic() + 10
        while not writer.last_seq(run) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        at = time.time()
        assert control.cancel(run, reason="polled")
        thread.join(10)
    control.close()
    admin.close()
    assert results == ["cancelled"]
    assert closed[run] - at < 2.0
    assert any("refused SUBSCRIBE" in rec.getMessage() for rec in caplog.records)


def test_cluster_cancel_and_status(backend, valkey_cluster, make_async_writer, canceller, run_id):
    url = valkey_cluster.seed_url
    writer = make_async_writer(url, cluster=True)
    other = canceller(url, cluster=True)
    control = RunControl(url, cluster=True, backend=backend)
    runs = [run_id() for _ in range(4)]
    layout = ClusterKeyLayout()
    assert notice_channel(layout.key(runs[0])).endswith(":notices")

    async def main() -> None:
        tasks, closed, finishes = [], {}, [Finish() for _ in runs]
        for run, finish in zip(runs, finishes, strict=True):
            tasks.append(asyncio.create_task(_idle_async_run(writer, run, closed, finish)))
        for run in runs:
            await until_stored(writer, run)
        await asyncio.sleep(0.3)
        for run, task in zip(runs, tasks, strict=True):
            at, ok = await asyncio.to_thread(other.cancel, run, "cluster")
            assert ok
            assert await asyncio.wait_for(task, 10) == "cancelled"
            assert closed[run] - at < 2.0
        for run, finish in zip(runs, finishes, strict=True):
            assert finish.calls == [(run, "cancelled", "cluster", None)]

    asyncio.run(main())
    cluster = redis_py.RedisCluster.from_url(url, decode_responses=True)
    for run in runs:
        key = layout.key(run)
        info = control.status(run)
        assert info is not None
        assert (info.state, info.last_seq, info.stop_reason) == ("cancelled", 2, "cluster")
        assert_cancelled_at_end([fields for _, fields in cluster.xrange(key)], "cluster")
        assert cluster.ttl(status_key(key)) == cluster.ttl(key)
    empty = run_id()
    assert control.start(empty)
    assert control.cancel(empty)
    info = control.status(empty)
    assert info is not None
    assert info.state == "cancelled"
    control.close()
    cluster.close()
