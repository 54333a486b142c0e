"""Fault injection on a single server, end to end: a writer and readers run at
the same time while the server restarts, connections are killed, the writer
process dies, or Redis goes away as a run finishes.  Each test on both engines,
each on a dedicated Valkey of its own.  Never a mock.

Every scenario counts what it saw and prints one line::

    FAULTS scenario=restart-aof backend=rust sent=2001 received=2001 lost=0 duplicated=0 ...

``sent``: chunks acknowledged by the writer (stored); ``expected``: the seqs
a reader must get; ``received``: distinct seqs readers got; ``lost`` =
expected - received; ``duplicated`` = occurrences - distinct.  With
``SSE_REDIS_FAULT_REPORT=<path>`` each line is also appended to that file
as JSON, to collect the table.  The line is written before the assertions,
so a failing scenario is reported too.

Fixtures (``backend``, ``dedicated_server``, ``make_writer``,
``make_async_writer``, ``run_id``, ``plain_client``) come from
``fixtures_io.py`` through ``conftest.py``.  Nothing here may hang the suite:
every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sse_redis import (
    AsyncStreamReader,
    RedisUnavailable,
    StreamReader,
    StreamStalled,
    aprocess_stream,
    process_stream,
)

REPORT_ENV = "SSE_REDIS_FAULT_REPORT"
DEADLINE = 30.0  # "does not hang" bound of any one wait, never a performance claim
# Reader timeouts that must not be what ends a read in the scenarios that expect [DONE].
PATIENT = dict(idle_timeout=20.0, missing_timeout=20.0, retry_timeout=20.0, check_interval=2.0)


# ----------------------------------------------------------------- helpers


def key_of(run: str) -> str:
    return "sse:run:" + run


def payload(i: int) -> str:
    return f'data: {{"i": {i}, "run_id": null}}\n\n'


def seq_of(chunk: str) -> int:
    """The seq id of a chunk a reader yielded (its ``id:`` line)."""
    for line in chunk.split("\n"):
        if line.startswith("id:"):
            return int(line[3:].strip())
    raise AssertionError(f"no id line in {chunk!r}")


def check_content(chunks: list[str], run: str) -> None:
    """Each chunk is ``payload(seq)`` with its run id patched in, or ``[DONE]``."""
    for chunk in chunks:
        seq = seq_of(chunk)
        data = "\n".join(line[6:] for line in chunk.split("\n") if line.startswith("data: "))
        if data == "[DONE]":
            continue
        assert json.loads(data) == {"i": seq, "run_id": run}, chunk


def stored_seqs(client, run: str) -> list[int]:
    return [int(fields["seq_id"]) for _, fields in client.xrange(key_of(run))]


def wait_for(predicate: Callable[[], bool], timeout: float = DEADLINE, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


def tally(expected: list[int], got: list[int]) -> dict[str, int]:
    """``received`` distinct seqs, ``lost`` expected ones never received,
    ``duplicated`` extra occurrences, ``unexpected`` seqs outside ``expected``."""
    distinct = set(got)
    return dict(
        expected=len(expected),
        received=len(distinct),
        lost=len(set(expected) - distinct),
        duplicated=len(got) - len(distinct),
        unexpected=len(distinct - set(expected)),
    )


def report(scenario: str, backend: str, sent: int, counts: dict[str, int], **extra: Any) -> None:
    """Print the scenario's line, and append it to ``$SSE_REDIS_FAULT_REPORT`` as JSON."""
    row = {
        "scenario": scenario,
        "backend": backend,
        "sent": sent,
        "received": counts["received"],
        "lost": counts["lost"],
        "duplicated": counts["duplicated"],
        "expected": counts["expected"],
        "unexpected": counts["unexpected"],
        **extra,
    }
    print("\nFAULTS " + " ".join(f"{k}={v}" for k, v in row.items()))
    path = os.environ.get(REPORT_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(row) + "\n")


class Background:
    """A thread whose exception fails the test when joined."""

    def __init__(self, target: Callable[[], None], name: str = "background") -> None:
        self.error: list[BaseException] = []
        self.name = name

        def run() -> None:
            try:
                target()
            except BaseException as exc:
                self.error.append(exc)

        self.thread = threading.Thread(target=run, name=name, daemon=True)
        self.thread.start()

    def join(self, timeout: float = DEADLINE, *, reraise: bool = True) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"{self.name} did not finish within {timeout}s"
        if self.error and reraise:
            raise self.error[0]


class Follower:
    """A sync read of one run in a thread of its own: the chunks it got
    (pings left out), how it ended, and when."""

    def __init__(self, reader: StreamReader, run: str, **read_options: Any) -> None:
        self.run = run
        self.chunks: list[str] = []
        self.error: BaseException | None = None
        self.ended_at: float | None = None
        self._done = threading.Event()

        def follow() -> None:
            try:
                for chunk in reader.read(run, **read_options):
                    if not chunk.startswith(":"):
                        self.chunks.append(chunk)
            except BaseException as exc:
                self.error = exc
            finally:
                self.ended_at = time.monotonic()
                self._done.set()

        threading.Thread(target=follow, name=f"follow-{run}", daemon=True).start()

    @property
    def seqs(self) -> list[int]:
        return [seq_of(chunk) for chunk in list(self.chunks)]

    def join(self, timeout: float = DEADLINE, *, required: bool = True) -> bool:
        """Wait for the read to end; ``required``: fail the test if it does not."""
        if self._done.wait(timeout):
            return True
        if required:
            pytest.fail(f"read of {self.run} did not end within {timeout}s; got {len(self.chunks)} chunks")
        return False


# ------------------------------------------------- 1. restart with AOF on


# ``slow-load``: the restarted server takes over a second to load its AOF (20,000
# filler keys, ``key-load-delay`` 10 us each: as a big dataset would), answering
# ``-LOADING`` to every command meanwhile; clients that reconnect in that window
# must keep retrying, not fail.
RESTARTS = {
    "term": (False, ()),
    "kill9": (True, ()),
    "kill9-slow-load": (True, ("--key-load-delay", "10")),
}
FILLER_KEYS = 20000


@pytest.mark.parametrize("mode", list(RESTARTS))
def test_server_restart_with_aof_mid_run(
    backend, dedicated_server, make_writer, plain_client, open_reader, run_id, mode
):
    """The server restarts (SIGTERM, or SIGKILL: with ``appendfsync always``
    nothing acknowledged may be lost) while a writer writes 2,000 chunks at a
    steady pace and a reader follows: the writer retries, the reader
    reconnects, and the reader gets seq 1..2001 ([DONE]) once each, in order."""
    kill, extra = RESTARTS[mode]
    server = dedicated_server("--appendonly", "yes", "--appendfsync", "always", *extra)
    r = plain_client(server.url)
    if extra:
        pipe = r.pipeline(transaction=False)
        for i in range(FILLER_KEYS):
            pipe.set(f"filler:{i}", "x")
        pipe.execute()
    run, n = run_id(), 2000
    w = make_writer(server.url, flush_size=20, retry_timeout=20, write_timeout=20)
    reader = open_reader(server.url, **PATIENT)
    follower = Follower(reader, run)
    written = [0]

    def write() -> None:
        for i in range(1, n + 1):
            assert w.write(run, payload(i)) == i
            written[0] = i
            if i % 20 == 0:
                time.sleep(0.02)  # ~2 s in all
        assert w.complete(run) == n + 1

    writer = Background(write, "writer")
    wait_for(lambda: written[0] >= n // 2, what="the writer's first half")
    at_restart = written[0]
    restart_started = time.monotonic()
    server.restart(kill=kill)
    restart_took = time.monotonic() - restart_started
    writer.join(reraise=False)
    writer_error = writer.error[0] if writer.error else None
    # A writer that failed never writes [DONE]: then only give the reader time to
    # catch up with what is stored, so that the report says what it got.
    follower.join(DEADLINE if writer_error is None else 3.0, required=writer_error is None)

    stored = stored_seqs(r, run)
    counts = tally(list(range(1, n + 2)), follower.seqs)
    report(
        "restart-aof-" + mode,
        backend,
        sent=len(stored),
        counts=counts,
        written_at_restart=at_restart,
        restart_s=round(restart_took, 2),
        writer_retries=w.stats()["retries"],
        reader_reconnects=reader.hub.stats()["reconnects"],
        writer_error=type(writer_error).__name__ if writer_error else None,
        reader_error=type(follower.error).__name__ if follower.error else None,
    )
    assert writer_error is None, f"the writer failed after {written[0]} chunks: {writer_error!r}"
    assert follower.error is None, repr(follower.error)
    assert at_restart < n, "the restart did not land mid-run"
    assert stored == list(range(1, n + 2))
    assert (counts["lost"], counts["duplicated"], counts["unexpected"]) == (0, 0, 0)
    assert follower.seqs == list(range(1, n + 2))  # and in order
    check_content(follower.chunks, run)
    assert follower.chunks[-1].startswith("data: [DONE]")
    assert w.stats()["retries"] > 0
    assert reader.hub.stats()["reconnects"] > 0


def test_writes_while_restarted_server_is_loading(backend, dedicated_server, make_writer, plain_client, run_id):
    """The two requests a writer makes, each sent while the restarted server
    still answers ``-LOADING``: a new run's first write (reads where the run
    stands) and a batch of an open run.  Both must wait for the load (retry),
    like for a refused connection, not fail."""
    server = dedicated_server("--appendonly", "yes", "--appendfsync", "always", *RESTARTS["kill9-slow-load"][1])
    r = plain_client(server.url)
    pipe = r.pipeline(transaction=False)
    for i in range(FILLER_KEYS):
        pipe.set(f"filler:{i}", "x")
    pipe.execute()
    w = make_writer(server.url, retry_timeout=20, write_timeout=20)
    opened, fresh = run_id(), run_id()
    w.write(opened, payload(1))
    w.flush()
    server.stop(kill=True)
    starting = Background(lambda: server.start(timeout=DEADLINE), "server start")
    probe = plain_client(server.url)

    def loading() -> bool:
        try:
            probe.ping()
        except Exception as exc:
            return type(exc).__name__ == "BusyLoadingError"
        pytest.fail("the server answered before it was seen loading")

    wait_for(loading, timeout=10, what="the restarted server to be loading")
    errors: dict[str, str] = {}
    try:
        assert w.write(fresh, payload(1)) == 1
    except Exception as exc:
        errors["first write of a new run"] = repr(exc)
    try:
        w.write(opened, payload(2))
        w.flush(run_id=opened)
    except Exception as exc:
        errors["batch of an open run"] = repr(exc)
    starting.join()
    assert not errors, errors
    w.flush()
    assert stored_seqs(r, opened) == [1, 2]
    assert stored_seqs(r, fresh) == [1]


# ------------------------------------------------- 2. CLIENT KILL in a loop


def test_client_kill_loop_while_writing_and_reading(
    backend, dedicated_server, make_writer, plain_client, open_reader, run_id
):
    """Every normal connection but the killer's is killed every 20-50 ms while
    one writer writes 3,000 chunks round robin over 10 runs and readers (a sync
    one for half the runs, an async one for the other half) follow each run:
    no duplicate and no gap in the streams, nor in what the readers got."""
    server = dedicated_server()
    r, admin = plain_client(server.url), plain_client(server.url)
    runs = [run_id() for _ in range(10)]
    per_run = 300
    last = per_run + 1  # with [DONE]
    w = make_writer(server.url, flush_size=10, retry_timeout=20, write_timeout=20)
    sync_reader = open_reader(server.url, **PATIENT)
    sync_followers = [Follower(sync_reader, run) for run in runs[:5]]

    # The async half: one event loop in a thread, one AsyncStreamReader, a task per run.
    async_got: dict[str, list[str]] = {run: [] for run in runs[5:]}
    async_errors: dict[str, BaseException] = {}
    async_reader = AsyncStreamReader(server.url, backend=backend, **PATIENT)

    async def follow(run: str) -> None:
        try:
            async for chunk in async_reader.read(run):
                if not chunk.startswith(":"):
                    async_got[run].append(chunk)
        except BaseException as exc:
            async_errors[run] = exc

    async def follow_all() -> None:
        await asyncio.wait_for(asyncio.gather(*(follow(run) for run in runs[5:])), DEADLINE)

    async_side = Background(lambda: asyncio.run(follow_all()), "async readers")

    stop, kills, rounds = threading.Event(), [0], [0]
    rng = random.Random(7)

    def killer() -> None:
        while not stop.is_set():
            kills[0] += admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
            rounds[0] += 1
            stop.wait(rng.uniform(0.02, 0.05))

    killing = Background(killer, "killer")
    try:
        for i in range(1, per_run + 1):
            for run in runs:
                assert w.write(run, payload(i)) == i
            time.sleep(0.007)  # ~2 s in all
        for run in runs:
            assert w.complete(run) == last
    finally:
        stop.set()
        killing.join()
    for follower in sync_followers:
        follower.join()
    try:
        async_side.join(DEADLINE + 5)
        reconnects = sync_reader.hub.stats()["reconnects"] + async_reader.sync.hub.stats()["reconnects"]
    finally:
        async_reader.close()

    got = {f.run: f.seqs for f in sync_followers}
    got.update({run: [seq_of(c) for c in chunks] for run, chunks in async_got.items()})
    errors = {f.run: f.error for f in sync_followers if f.error is not None} | async_errors
    stored = {run: stored_seqs(r, run) for run in runs}
    totals = dict(expected=0, received=0, lost=0, duplicated=0, unexpected=0)
    for run in runs:
        for name, value in tally(list(range(1, last + 1)), got[run]).items():
            totals[name] += value
    report(
        "client-kill-loop",
        backend,
        sent=sum(len(s) for s in stored.values()),
        counts=totals,
        runs=len(runs),
        kills=kills[0],
        kill_rounds=rounds[0],
        writer_retries=w.stats()["retries"],
        reader_reconnects=reconnects,
        reader_errors=len(errors),
    )
    assert not errors, errors
    assert kills[0] > 0
    assert reconnects > 0
    for run in runs:
        assert stored[run] == list(range(1, last + 1)), run
    assert (totals["lost"], totals["duplicated"], totals["unexpected"]) == (0, 0, 0)
    for run in runs:
        assert got[run] == list(range(1, last + 1)), run  # and in order
    for follower in sync_followers:
        check_content(follower.chunks, follower.run)
    for run, chunks in async_got.items():
        check_content(chunks, run)


# ------------------------------------------------- 3. writer process killed

WRITER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from sse_redis import StreamWriter

    url, backend, run, k = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    w = StreamWriter(url, backend=backend, flush_size=10)

    def payload(i):
        return 'data: {"i": %d, "run_id": null}\\n\\n' % i

    for i in range(1, k + 1):
        w.write(run, payload(i))
        if i % 10 == 0:
            time.sleep(0.005)
    w.flush()
    print("wrote", k, flush=True)
    i = k
    while True:  # on, at a steady pace, until SIGKILL lands mid-run
        i += 1
        w.write(run, payload(i))
        time.sleep(0.002)
    """
)


def test_writer_process_killed(backend, dedicated_server, make_writer, plain_client, open_reader, run_id):
    """A writer process is SIGKILLed mid-run: the reader ends with
    StreamStalled about ``idle_timeout`` later, having got exactly the stored
    chunks; a new writer continues the run at the last stored seq + 1, and a
    new reader from the old cursor gets the rest through [DONE]."""
    server = dedicated_server()
    r = plain_client(server.url)
    run, k, more, idle = run_id(), 200, 100, 1.0
    first = Follower(
        open_reader(server.url, idle_timeout=idle, missing_timeout=20.0, retry_timeout=20.0, check_interval=2.0), run
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT, server.url, backend, run, str(k)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 20.0)
        line = proc.stdout.readline() if ready else ""
        if line.strip() != f"wrote {k}":
            stderr = proc.stderr.read() if proc.poll() is not None else ""
            pytest.fail(f"the writer process said {line!r}; stderr: {stderr}")
        time.sleep(0.15)  # let it go on writing past k, so the kill lands mid-pipeline
        os.kill(proc.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    first.join(timeout=10)
    stalled_after = first.ended_at - killed_at

    before = stored_seqs(r, run)  # read after the stall: whatever the dead writer had in flight has landed
    m = len(before)
    got_first = first.seqs
    cursor = got_first[-1] if got_first else 0

    # A new writer continues the run; a new reader resumes from the old cursor.
    second = Follower(open_reader(server.url, **PATIENT), run, starting_after=cursor)
    w = make_writer(server.url)
    assert w.last_seq(run) == m
    for i in range(m + 1, m + more + 1):
        assert w.write(run, payload(i)) == i
    assert w.complete(run) == m + more + 1
    second.join()

    stored = stored_seqs(r, run)
    total = m + more + 1
    got = got_first + second.seqs
    first_counts = tally(list(range(1, m + 1)), got_first)
    counts = tally(list(range(1, total + 1)), got)
    report(
        "writer-killed",
        backend,
        sent=len(stored),
        counts=counts,
        acked_before_kill=k,
        stored_before_kill=m,
        first_reader_received=first_counts["received"],
        first_reader_lost=first_counts["lost"],
        first_reader_error=type(first.error).__name__,
        stalled_after_kill_s=round(stalled_after, 3),
    )
    assert isinstance(first.error, StreamStalled), repr(first.error)
    assert stalled_after < 5.0, f"StreamStalled came {stalled_after:.2f}s after the kill (idle_timeout {idle})"
    assert before == list(range(1, m + 1))
    assert m >= k
    assert (first_counts["lost"], first_counts["duplicated"], first_counts["unexpected"]) == (0, 0, 0)
    assert got_first == list(range(1, m + 1))
    assert second.error is None, repr(second.error)
    assert stored == list(range(1, total + 1))
    assert (counts["lost"], counts["duplicated"], counts["unexpected"]) == (0, 0, 0)
    assert got == list(range(1, total + 1))
    check_content(first.chunks + second.chunks, run)
    assert second.chunks[-1].startswith("data: [DONE]")


# ------------------------------------------- 4. Redis down when a run finishes


def test_redis_down_when_run_finishes(backend, dedicated_server, make_writer, plain_client, open_reader, run_id):
    """process_stream's source stops the server before its last chunk, while
    a reader follows: ``on_finish`` runs once with status ``failed`` and
    RedisUnavailable; the reader got every stored chunk once, then
    RedisUnavailable; the AOF holds exactly the acknowledged chunks."""
    server = dedicated_server("--appendonly", "yes", "--appendfsync", "always")
    run, n = run_id(), 200
    w = make_writer(server.url, retry_timeout=0.5, write_timeout=10)
    follower = Follower(
        open_reader(server.url, idle_timeout=20.0, missing_timeout=20.0, retry_timeout=1.0, check_interval=0.3), run
    )
    calls: list[tuple[str, str, str | None, BaseException | None]] = []

    def source() -> Iterator[str]:
        for i in range(1, n):
            yield payload(i)
            if i % 20 == 0:
                time.sleep(0.01)
        w.flush(run_id=run)  # chunks 1..n-1 acknowledged ...
        wait_for(lambda: len(follower.chunks) >= n - 1, timeout=10, what="the reader to catch up")
        server.stop()  # ... and then Redis goes away
        yield payload(n)

    started = time.monotonic()
    status = process_stream(source(), w, run, on_finish=lambda *args: calls.append(args))
    took = time.monotonic() - started
    follower.join(timeout=15)
    server.start()  # same port and directory: the AOF tells what was stored
    stored = stored_seqs(plain_client(server.url), run)

    counts = tally(list(range(1, n)), follower.seqs)
    report(
        "redis-down-at-finish",
        backend,
        sent=len(stored),
        counts=counts,
        asked=n + 1,
        status=status,
        on_finish_calls=len(calls),
        error=type(calls[0][3]).__name__ if calls else None,
        reader_error=type(follower.error).__name__ if follower.error else None,
    )
    assert status == "failed"
    assert len(calls) == 1, calls
    assert calls[0][:3] == (run, "failed", None)
    assert isinstance(calls[0][3], RedisUnavailable), repr(calls[0][3])
    assert took < 10.0
    assert isinstance(follower.error, RedisUnavailable), repr(follower.error)
    assert stored == list(range(1, n))  # neither chunk n nor [DONE] reached Redis
    assert (counts["lost"], counts["duplicated"], counts["unexpected"]) == (0, 0, 0)
    assert follower.seqs == list(range(1, n))
    check_content(follower.chunks, run)


def test_redis_down_when_async_run_finishes(backend, dedicated_server, make_async_writer, plain_client, run_id):
    """The same with aprocess_stream, an AsyncStreamReader on the same event
    loop, and a coroutine ``on_finish``."""
    server = dedicated_server("--appendonly", "yes", "--appendfsync", "always")
    run, n = run_id(), 200
    w = make_async_writer(server.url, retry_timeout=0.5, write_timeout=10)
    reader = AsyncStreamReader(
        server.url, backend=backend, idle_timeout=20.0, missing_timeout=20.0, retry_timeout=1.0, check_interval=0.3
    )
    got: list[str] = []
    calls: list[tuple[str, str, str | None, BaseException | None]] = []

    async def on_finish(*args: Any) -> None:
        await asyncio.sleep(0)
        calls.append(args)

    async def follow() -> BaseException | None:
        try:
            async for chunk in reader.read(run):
                if not chunk.startswith(":"):
                    got.append(chunk)
        except Exception as exc:
            return exc
        return None

    async def source():
        for i in range(1, n):
            yield payload(i)
            if i % 20 == 0:
                await asyncio.sleep(0.01)
        await w.flush(run_id=run)
        deadline = time.monotonic() + 10
        while len(got) < n - 1:
            assert time.monotonic() < deadline, f"the reader did not catch up: {len(got)} of {n - 1}"
            await asyncio.sleep(0.005)
        await asyncio.to_thread(server.stop)
        yield payload(n)

    async def main() -> tuple[str, BaseException | None, float]:
        following = asyncio.create_task(follow())
        started = time.monotonic()
        status = await asyncio.wait_for(aprocess_stream(source(), w, run, on_finish=on_finish), DEADLINE)
        took = time.monotonic() - started
        error = await asyncio.wait_for(following, 15)
        return status, error, took

    try:
        status, reader_error, took = asyncio.run(main())
    finally:
        reader.close()
    server.start()
    stored = stored_seqs(plain_client(server.url), run)

    seqs = [seq_of(c) for c in got]
    counts = tally(list(range(1, n)), seqs)
    report(
        "redis-down-at-finish-async",
        backend,
        sent=len(stored),
        counts=counts,
        asked=n + 1,
        status=status,
        on_finish_calls=len(calls),
        error=type(calls[0][3]).__name__ if calls else None,
        reader_error=type(reader_error).__name__ if reader_error else None,
    )
    assert status == "failed"
    assert len(calls) == 1, calls
    assert calls[0][:3] == (run, "failed", None)
    assert isinstance(calls[0][3], RedisUnavailable), repr(calls[0][3])
    assert took < 10.0
    assert isinstance(reader_error, RedisUnavailable), repr(reader_error)
    assert stored == list(range(1, n))
    assert (counts["lost"], counts["duplicated"], counts["unexpected"]) == (0, 0, 0)
    assert seqs == list(range(1, n))
    check_content(got, run)
