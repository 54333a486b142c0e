"""StreamWriter / AsyncStreamWriter against real servers (Valkey 9, and
Debian's Redis 7 for the smoke subset), each test on both engines.

Fixtures (``backend``, ``redis_url``, ``any_server_url``, ``dedicated_server``,
``make_writer``, ``make_async_writer``, ``run_id``, ``plain_client``) come from
``fixtures_io.py`` through ``conftest.py``.  Every test uses fresh run ids,
so all share one server without flushing it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable

import pytest

from fixtures_io import wait_child
from sse_redis import (
    RedisUnavailable,
    RunClosedError,
    SSERedisError,
    StaleWriterError,
    StreamWriter,
    WriteTimeout,
)
from sse_redis.writer import DEFAULT_PUBLIC_ERROR, DONE_CHUNK

# ----------------------------------------------------------------- helpers


def key_of(run: str, prefix: str = "sse:run:") -> str:
    return prefix + run


def entries(r, run: str, prefix: str = "sse:run:") -> list[tuple[str, dict[str, str]]]:
    return r.xrange(key_of(run, prefix))


def seq_ids(items: list[tuple[str, dict[str, str]]]) -> list[int]:
    return [int(fields["seq_id"]) for _, fields in items]


def chunk(i: int) -> str:
    return f'data: {{"i": {i}, "run_id": null}}\n\n'


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


def assert_contiguous(items: list[tuple[str, dict[str, str]]], first: int, last: int) -> None:
    """Seq ids ``first..last`` once each, in stream order, entry ids increasing."""
    assert seq_ids(items) == list(range(first, last + 1))
    ids = [tuple(map(int, entry_id.split("-"))) for entry_id, _ in items]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def kill_clients(admin) -> int:
    """Close every normal client connection except ``admin``'s own."""
    return admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")


# ------------------------------------------------------------ wire layout


def test_wire_layout(backend, redis_url, make_writer, plain_client, run_id):
    r = plain_client(redis_url)
    w = make_writer(redis_url, ttl=600)
    run = run_id()
    before = int(time.time() * 1000)
    assert [w.write(run, chunk(i)) for i in range(3)] == [1, 2, 3]
    assert w.complete(run) == 4
    after = int(time.time() * 1000)

    assert r.exists(f"sse:run:{run}") == 1
    items = entries(r, run)
    assert [entry_id for entry_id, _ in items] == ["0-1", "0-2", "0-3", "0-4"]
    assert seq_ids(items) == [1, 2, 3, 4]
    assert [fields["data"] for _, fields in items] == [chunk(0), chunk(1), chunk(2), DONE_CHUNK]
    for n, (_, fields) in enumerate(items, start=1):
        assert {"seq_id", "data", "timestamp"} <= set(fields)
        assert before - 1000 <= int(fields["timestamp"]) <= after + 1000
        if n < 4:
            assert "complete" not in fields
        else:
            assert fields["complete"] == "true"
    timestamps = [int(fields["timestamp"]) for _, fields in items]
    assert timestamps == sorted(timestamps)
    assert 0 < r.ttl(key_of(run)) <= 600


def test_custom_prefix(backend, redis_url, make_writer, plain_client, run_id):
    r = plain_client(redis_url)
    w = make_writer(redis_url, keys="myapp:events:")
    run = run_id()
    w.write(run, chunk(1))
    w.flush()
    assert r.exists(f"sse:run:{run}") == 0
    assert seq_ids(entries(r, run, "myapp:events:")) == [1]


def test_cluster_and_callable_layouts(backend, redis_url, make_writer, plain_client, run_id):
    from sse_redis import ClusterKeyLayout

    r = plain_client(redis_url)
    layout = ClusterKeyLayout(buckets=8)
    run = run_id()
    w = make_writer(redis_url, keys=layout)
    w.write(run, chunk(1))
    w.flush()
    key = layout.key(run)
    assert key == f"sse:run:{{{layout.bucket(run)}}}:{run}"
    assert [int(f["seq_id"]) for _, f in r.xrange(key)] == [1]

    custom = make_writer(redis_url, keys=lambda rid: f"tenant-7:{rid}")
    custom.write(run, chunk(1))
    custom.flush()
    assert r.xlen(f"tenant-7:{run}") == 1
    with pytest.raises(ValueError, match="run_id"):
        custom.write("", chunk(1))  # a callable layout still gets validated run ids


def test_ttl_refreshed_on_every_flush(backend, redis_url, make_writer, plain_client, run_id):
    r = plain_client(redis_url)
    w = make_writer(redis_url, ttl=1000)
    run = run_id()
    w.write(run, chunk(1))
    w.flush()
    assert 990 <= r.ttl(key_of(run)) <= 1000
    r.expire(key_of(run), 5)
    w.write(run, chunk(2))
    w.flush()
    assert r.ttl(key_of(run)) > 900


def test_ttl_none_means_no_expiry(backend, redis_url, make_writer, plain_client, run_id):
    r = plain_client(redis_url)
    w = make_writer(redis_url, ttl=None)
    run = run_id()
    w.write(run, chunk(1))
    w.complete(run)
    assert r.ttl(key_of(run)) == -1
    r.delete(key_of(run))


def test_max_len_trims_approximately(backend, redis_url, make_writer, plain_client, run_id):
    # ``MAXLEN ~ 10`` drops whole radix-tree nodes (stream-node-max-entries,
    # 100 by default): the length stays within max_len + one node, never below max_len.
    r = plain_client(redis_url)
    node = int(r.config_get("stream-node-max-entries")["stream-node-max-entries"])
    w = make_writer(redis_url, max_len=10, flush_size=7)
    run = run_id()
    longest = 0
    for i in range(1, 1001):
        w.write(run, chunk(i))
        if i % 100 == 0:
            w.flush()
            longest = max(longest, r.xlen(key_of(run)))
    items = entries(r, run)
    assert 10 <= len(items) <= 10 + node
    assert longest <= 10 + node
    assert_contiguous(items, 1001 - len(items), 1000)


def test_max_len_none_means_no_trimming(backend, redis_url, make_writer, plain_client, run_id):
    r = plain_client(redis_url)
    w = make_writer(redis_url, max_len=None)
    run = run_id()
    for i in range(300):
        w.write(run, chunk(i))
    w.flush()
    assert r.xlen(key_of(run)) == 300


# ---------------------------------------------------- write, flush, complete


def test_write_returns_seq_and_flush_stores_everything(backend, redis_url, make_writer, plain_client, run_id):
    r = plain_client(redis_url)
    w = make_writer(redis_url)
    runs = [run_id() for _ in range(3)]
    for n in range(1, 6):
        for run in runs:
            assert w.write(run, chunk(n)) == n
    w.flush()
    for run in runs:
        items = entries(r, run)
        assert_contiguous(items, 1, 5)
        assert [f["data"] for _, f in items] == [chunk(n) for n in range(1, 6)]
        assert w.last_seq(run) == 5


def test_complete_once_then_closed(backend, redis_url, make_writer, plain_client, run_id):
    r = plain_client(redis_url)
    w = make_writer(redis_url)
    run = run_id()
    w.write(run, chunk(1))
    w.write(run, chunk(2))
    assert w.complete(run) == 3
    items = entries(r, run)  # complete() waits until [DONE] is stored
    assert_contiguous(items, 1, 3)
    assert items[-1][1]["data"] == "data: [DONE]\n\n"
    assert items[-1][1]["complete"] == "true"
    assert w.stats()["runs"] == 0  # a finished run leaves no state behind

    assert w.complete(run) is None
    assert w.fail(run, RuntimeError("late")) is None
    with pytest.raises(RunClosedError):
        w.write(run, chunk(3))
    w.flush()
    assert entries(r, run) == items

    fresh = make_writer(redis_url)
    with pytest.raises(RunClosedError):
        fresh.write(run, chunk(3))
    assert fresh.complete(run) is None
    fresh.flush()
    assert entries(r, run) == items


@pytest.mark.parametrize(
    "terminal",
    ["data: [DONE]\n\n", 'event: error\ndata: {"error": "boom", "code": "X"}\n\n'],
    ids=["done", "error-event"],
)
def test_terminal_chunk_closes_the_run(backend, redis_url, make_writer, plain_client, run_id, terminal):
    r = plain_client(redis_url)
    w = make_writer(redis_url)
    run = run_id()
    w.write(run, chunk(1))
    assert w.write(run, terminal) == 2
    with pytest.raises(RunClosedError):
        w.write(run, chunk(3))
    w.flush()
    items = entries(r, run)
    assert_contiguous(items, 1, 2)
    assert items[-1][1] == {**items[-1][1], "data": terminal, "complete": "true"}
    assert "complete" not in items[0][1]
    assert w.complete(run) is None
    assert r.xlen(key_of(run)) == 2


def test_explicit_terminal_flag(backend, redis_url, make_writer, plain_client, run_id):
    r = plain_client(redis_url)
    w = make_writer(redis_url)
    run = run_id()
    # terminal=False overrides the sniffing; terminal=True closes on any chunk
    w.write(run, "data: [DONE]\n\n", terminal=False)
    w.write(run, chunk(2), terminal=True)
    with pytest.raises(RunClosedError):
        w.write(run, chunk(3))
    w.flush()
    items = entries(r, run)
    assert "complete" not in items[0][1]
    assert items[1][1]["complete"] == "true"


def _error_payload(data: str) -> dict:
    lines = data.split("\n")
    assert lines[0] == "event: error"
    assert data.endswith("\n\n")
    payload = "\n".join(line[len("data: ") :] for line in lines if line.startswith("data: "))
    return json.loads(payload)


def test_fail_writes_generic_error(backend, redis_url, make_writer, plain_client, run_id):
    r = plain_client(redis_url)
    w = make_writer(redis_url)
    run = run_id()
    w.write(run, chunk(1))
    assert w.fail(run, ValueError("password=hunter2 at db.internal")) == 2
    items = entries(r, run)
    last = items[-1][1]
    assert last["complete"] == "true"
    assert "hunter2" not in last["data"]
    assert "db.internal" not in last["data"]
    assert _error_payload(last["data"]) == {"error": DEFAULT_PUBLIC_ERROR, "code": "INTERNAL_SERVER_ERROR"}
    with pytest.raises(RunClosedError):
        w.write(run, chunk(3))


def test_fail_uses_public_message(backend, redis_url, make_writer, plain_client, run_id):
    r = plain_client(redis_url)
    w = make_writer(redis_url)
    run = run_id()
    message = 'The model is "overloaded"\nplease retry'
    assert w.fail(run, KeyError("secret"), public_message=message) == 1
    last = entries(r, run)[-1][1]
    assert _error_payload(last["data"]) == {"error": message, "code": "INTERNAL_SERVER_ERROR"}
    assert "secret" not in last["data"]
    assert last["complete"] == "true"
    # without an exception at all
    run2 = run_id()
    assert w.fail(run2) == 1
    assert _error_payload(entries(r, run2)[-1][1]["data"])["error"] == DEFAULT_PUBLIC_ERROR


# ------------------------------------------------------------ restart-safe


def test_new_writer_continues_after_last_stored_seq(backend, redis_url, make_writer, plain_client, run_id):
    r = plain_client(redis_url)
    run = run_id()
    first = make_writer(redis_url)
    for i in range(1, 4):
        first.write(run, chunk(i))
    first.close()
    second = make_writer(redis_url)
    assert second.write(run, chunk(4)) == 4
    assert second.complete(run) == 5
    items = entries(r, run)
    assert_contiguous(items, 1, 5)
    assert [entry_id for entry_id, _ in items] == [f"0-{n}" for n in range(1, 6)]


def test_interleaving_writers_stale_on_flush(backend, redis_url, make_writer, plain_client, run_id):
    r = plain_client(redis_url)
    run = run_id()
    a, b = make_writer(redis_url), make_writer(redis_url)
    assert a.write(run, chunk(1)) == 1
    assert a.write(run, chunk(2)) == 2
    a.flush()
    assert b.write(run, "data: from b\n\n") == 3
    b.flush()
    assert a.write(run, "data: from a\n\n") == 3  # a believes it is at seq 2: stale
    with pytest.raises(StaleWriterError):
        a.flush()
    a.flush()  # every run: each error reported once
    items = entries(r, run)
    assert_contiguous(items, 1, 3)
    assert items[-1][1]["data"] == "data: from b\n\n"
    # The run stays broken for a: seq 3 was handed out to a chunk of its own,
    # so a never gives a seq to another chunk of this run again.
    with pytest.raises(StaleWriterError):
        a.write(run, "data: a again\n\n")
    with pytest.raises(StaleWriterError):
        a.flush(run_id=run)
    with pytest.raises(StaleWriterError):
        a.complete(run)
    with pytest.raises(StaleWriterError):
        a.fail(run)  # b owns the run now: a's error event is refused too
    # b goes on undisturbed; a new writer continues after b's chunks
    assert b.write(run, chunk(4)) == 4
    b.flush()
    assert make_writer(redis_url).complete(run) == 5
    assert_contiguous(entries(r, run), 1, 5)


def test_interleaving_writers_stale_on_next_write(backend, redis_url, make_writer, plain_client, run_id):
    r = plain_client(redis_url)
    run = run_id()
    a, b = make_writer(redis_url), make_writer(redis_url)
    a.write(run, chunk(1))
    a.flush()
    b.write(run, chunk(2))
    b.flush()
    a.write(run, "data: stale\n\n")
    wait_for(lambda: a.stats()["errors"] >= 1, what="the stale batch to fail")
    with pytest.raises(StaleWriterError):
        a.write(run, "data: refused\n\n")
    a.flush()  # already reported by the write
    with pytest.raises(StaleWriterError):
        a.write(run, chunk(3))  # still broken
    a.delete(run)  # forgetting the run (and its stream) is the way to start again
    assert a.write(run, chunk(1)) == 1
    a.flush()
    items = entries(r, run)
    assert_contiguous(items, 1, 1)
    assert "stale" not in "".join(f["data"] for _, f in items)


def test_many_interleaving_writers_never_duplicate(backend, redis_url, make_writer, plain_client, run_id):
    r = plain_client(redis_url)
    run = run_id()
    writers = [make_writer(redis_url, flush_size=3) for _ in range(3)]
    stale = 0
    for round_ in range(30):
        for w in writers:
            try:
                for _ in range(4):
                    w.write(run, chunk(round_))
                w.flush()
            except StaleWriterError:
                stale += 1
    for w in writers:
        try:
            w.flush()
        except StaleWriterError:
            stale += 1
    items = entries(r, run)
    assert stale > 0
    assert_contiguous(items, 1, len(items))


def test_continues_reference_stream_with_time_based_ids(backend, redis_url, make_writer, plain_client, run_id):
    r = plain_client(redis_url)
    run = run_id()
    key = key_of(run)
    for seq in range(1, 4):
        r.xadd(key, {"seq_id": seq, "data": chunk(seq), "timestamp": int(time.time() * 1000)})
    w = make_writer(redis_url)
    assert w.last_seq(run) == 3
    assert w.write(run, chunk(4)) == 4
    assert w.complete(run) == 5
    items = entries(r, run)
    assert_contiguous(items, 1, 5)
    assert all(not entry_id.startswith("0-") for entry_id, _ in items)
    assert items[-1][1]["complete"] == "true"


# ------------------------------------------------------- ordering under load


def test_ordering_many_runs_round_robin(backend, redis_url, make_writer, plain_client, run_id):
    r = plain_client(redis_url)
    w = make_writer(redis_url, flush_size=16)
    runs = [run_id() for _ in range(50)]
    n = 200
    for i in range(1, n + 1):
        for run in runs:
            assert w.write(run, f"data: {run} {i}\n\n") == i
    w.flush()
    stats = w.stats()
    assert stats["chunks"] == 50 * n
    assert stats["pending"] == 0
    pipe = r.pipeline(transaction=False)
    for run in runs:
        pipe.xrange(key_of(run))
    for run, items in zip(runs, pipe.execute(), strict=True):
        assert_contiguous(items, 1, n)
        assert [f["data"] for _, f in items] == [f"data: {run} {i}\n\n" for i in range(1, n + 1)]


# ----------------------------------------------------- failures and retries


def test_killed_connections_no_duplicates(backend, dedicated_server, make_writer, plain_client, run_id):
    server = dedicated_server()
    r, admin = plain_client(server.url), plain_client(server.url)
    w = make_writer(server.url, flush_size=10, retry_timeout=20)
    run = run_id()
    w.write(run, chunk(1))
    w.flush()
    stop, kills = threading.Event(), [0]

    def killer() -> None:
        while not stop.is_set():
            kills[0] += kill_clients(admin)
            time.sleep(0.003)

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        for i in range(2, 2001):
            w.write(run, chunk(i))
            if i % 40 == 0:
                time.sleep(0.004)  # let kills land between and during pipelines
    finally:
        stop.set()
        thread.join()
    w.flush(timeout=30)
    assert kills[0] > 0
    items = entries(r, run)
    assert_contiguous(items, 1, 2000)
    assert [f["data"] for _, f in items] == [chunk(i) for i in range(1, 2001)]


def test_retry_after_kill_during_pipeline_counts(backend, dedicated_server, make_writer, plain_client, run_id):
    server = dedicated_server()
    r, admin = plain_client(server.url), plain_client(server.url)
    w = make_writer(server.url, retry_timeout=20)
    run = run_id()
    w.write(run, chunk(1))
    w.flush()
    before = w.stats()
    admin.execute_command("CLIENT", "PAUSE", 10000, "WRITE")
    try:
        w.write(run, chunk(2))
        # The script call now hangs in the server: kill its connection under it.
        # (CLIENT LIST's cmd still shows chunk 1's evalsha, so it cannot tell
        # that chunk 2's pipeline arrived; give the sender a moment to send it.)
        time.sleep(0.3)
        assert kill_clients(admin) >= 1
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
    w.flush(timeout=20)
    after = w.stats()
    assert after["retries"] > before["retries"]
    assert after["chunks"] == before["chunks"] + 1
    assert after["batches"] > before["batches"]
    assert after["pipelines"] > before["pipelines"]
    assert_contiguous(entries(r, run), 1, 2)


def test_new_run_after_idle_connection_was_closed(backend, dedicated_server, make_writer, plain_client, run_id):
    # Redis' ``timeout`` setting, proxies and failovers close idle connections:
    # the next first write of a run must reconnect, not fail.
    server = dedicated_server()
    r, admin = plain_client(server.url), plain_client(server.url)
    w = make_writer(server.url, retry_timeout=5)
    first, second = run_id(), run_id()
    w.write(first, chunk(1))
    w.flush()
    assert kill_clients(admin) >= 1
    assert w.write(second, chunk(1)) == 1
    assert kill_clients(admin) >= 1
    assert w.last_seq(first) == 1
    assert kill_clients(admin) >= 1
    w.delete(first)
    w.flush()
    assert seq_ids(entries(r, second)) == [1]
    assert r.exists(key_of(first)) == 0


def test_script_flush_is_survived(backend, redis_url, make_writer, plain_client, run_id):
    # A restart, a failover or SCRIPT FLUSH drops the server's script cache:
    # the engine must load append.lua again (NOSCRIPT), not fail the batch.
    r = plain_client(redis_url)
    w = make_writer(redis_url)
    run = run_id()
    w.write(run, chunk(1))
    w.flush()
    r.script_flush()
    w.write(run, chunk(2))
    w.flush()
    assert_contiguous(entries(r, run), 1, 2)
    assert w.stats()["errors"] == 0


def test_server_restart_mid_run(backend, dedicated_server, make_writer, plain_client, run_id):
    server = dedicated_server("--appendonly", "yes")
    r = plain_client(server.url)
    assert r.config_get("appendonly")["appendonly"] == "yes"
    w = make_writer(server.url, flush_size=20, retry_timeout=20)
    run = run_id()
    for i in range(1, 2001):
        w.write(run, chunk(i))
        if i == 700:
            server.stop()
        elif i == 1200:
            server.start()
        elif i % 100 == 0:
            time.sleep(0.002)
    w.flush(timeout=30)
    items = entries(r, run)
    assert_contiguous(items, 1, 2000)
    assert [f["data"] for _, f in items] == [chunk(i) for i in range(1, 2001)]
    assert w.stats()["retries"] > 0


def test_redis_down_surfaces_on_flush_and_that_runs_write(backend, dedicated_server, make_writer, plain_client, run_id):
    server = dedicated_server()
    w = make_writer(server.url, retry_timeout=0.5, write_timeout=10)
    a, b = run_id(), run_id()
    w.write(a, chunk(1))
    w.write(b, chunk(1))
    w.flush()
    server.stop()

    assert w.write(a, chunk(2)) == 2
    wait_for(lambda: w.stats()["errors"] >= 1, timeout=10, what="the batch to give up")
    assert w.write(b, chunk(2)) == 2  # another run's write is not hit by a's error
    with pytest.raises(RedisUnavailable):
        w.write(a, chunk(3))
    with pytest.raises(RedisUnavailable):
        w.flush()  # b's chunk cannot be stored either
    w.flush()  # each error is delivered once

    server.start()  # a new server (no persistence): the stream is gone
    with pytest.raises(RedisUnavailable):
        w.write(a, chunk(3))  # a stays broken: seq 2 was handed out, then lost
    assert w.fail(a) == 3  # its error event is stored all the same, after the lost seq
    items = entries(plain_client(server.url), a)
    assert [f["seq_id"] for _, f in items] == ["3"]
    assert items[0][1]["complete"] == "true"
    assert "event: error" in items[0][1]["data"]


def test_flush_raises_redis_unavailable(backend, dedicated_server, make_writer, run_id):
    server = dedicated_server()
    w = make_writer(server.url, retry_timeout=0.5, write_timeout=10)
    run = run_id()
    w.write(run, chunk(1))
    w.flush()
    server.stop()
    w.write(run, chunk(2))
    with pytest.raises(RedisUnavailable):
        w.flush()
    with pytest.raises(RedisUnavailable):
        w.write(run_id(), chunk(1))  # opening a run needs Redis too
    assert isinstance(RedisUnavailable("x"), ConnectionError)


def test_close_is_bounded_when_redis_down(backend, dedicated_server, make_writer, run_id):
    # What the exit flush relies on: close(timeout) gives up after about its
    # timeout even though the engine would keep retrying for retry_timeout.
    server = dedicated_server()
    w = make_writer(server.url, retry_timeout=30)
    run = run_id()
    w.write(run, chunk(1))
    w.flush()
    server.stop()
    w.write(run, chunk(2))
    outcome: list[BaseException | None] = []

    def close() -> None:
        try:
            w.close(timeout=0.5)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=close, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "close(timeout=0.5) still blocked after 10 s with Redis down"
    assert outcome
    assert outcome[0] is None or isinstance(outcome[0], (WriteTimeout, RedisUnavailable))


def test_backpressure_write_timeout(backend, dedicated_server, make_writer, plain_client, run_id):
    server = dedicated_server()
    r, admin = plain_client(server.url), plain_client(server.url)
    w = make_writer(server.url, max_pending=10, write_timeout=0.3)
    run, other = run_id(), run_id()
    w.write(run, chunk(0))
    w.write(other, chunk(0))
    w.flush()
    admin.execute_command("CLIENT", "PAUSE", 5000, "WRITE")
    try:
        for i in range(1, 11):
            assert w.write(run, chunk(i)) == i + 1
        with pytest.raises(WriteTimeout):
            w.write(run, chunk(11))
        # The full buffer is all run's: other still gets its share (a batch,
        # or the whole buffer if smaller), so one busy run starves no other.
        for i in range(1, 11):
            assert w.write(other, chunk(i)) == i + 1
        with pytest.raises(WriteTimeout):
            w.write(other, chunk(11))
        with pytest.raises(WriteTimeout, match="could not be opened"):
            w.write(run_id(), chunk(1))  # opening a run waits behind the paused pipeline
        assert w.stats()["pending"] == 20
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
    w.flush(timeout=10)
    assert_contiguous(entries(r, run), 1, 11)
    assert_contiguous(entries(r, other), 1, 11)
    assert isinstance(WriteTimeout("x"), TimeoutError)


# --------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        ("", ValueError),
        ("x" * 257, ValueError),
        ("a\nb", ValueError),
        ("a\x00b", ValueError),
        ("tab\there", ValueError),
        ("a{b}", ValueError),
        (123, TypeError),
        (None, TypeError),
        (b"bytes", TypeError),
    ],
    ids=["empty", "too-long", "newline", "nul", "tab", "braces", "int", "none", "bytes"],
)
def test_bad_run_id(backend, redis_url, make_writer, plain_client, bad, error):
    w = make_writer(redis_url)
    with pytest.raises(error):
        w.write(bad, chunk(1))
    with pytest.raises(error):
        w.complete(bad)
    with pytest.raises(error):
        w.last_seq(bad)
    w.flush()


def test_longest_run_id_is_fine(backend, redis_url, make_writer, plain_client):
    r = plain_client(redis_url)
    w = make_writer(redis_url)
    run = "é" * 256
    w.write(run, chunk(1))
    w.flush()
    assert seq_ids(entries(r, run)) == [1]
    r.delete(key_of(run))


@pytest.mark.parametrize("bad", [b"data: x\n\n", 5, None, ["data: x\n\n"]], ids=["bytes", "int", "none", "list"])
def test_non_str_chunk_is_type_error(backend, redis_url, make_writer, plain_client, run_id, bad):
    r = plain_client(redis_url)
    w = make_writer(redis_url)
    run = run_id()
    with pytest.raises(TypeError):
        w.write(run, bad)
    w.write(run, chunk(1))  # the run is unharmed and nothing was stored for the bad chunk
    w.flush()
    assert seq_ids(entries(r, run)) == [1]


def test_lone_surrogate_refused_at_write(backend, redis_url, make_writer, plain_client, run_id):
    r = plain_client(redis_url)
    w = make_writer(redis_url)
    run = run_id()
    w.write(run, chunk(1))
    with pytest.raises(UnicodeEncodeError):
        w.write(run, "data: \ud800\n\n")
    assert w.write(run, "data: ok é 😀\n\n") == 2
    w.flush()
    items = entries(r, run)
    assert_contiguous(items, 1, 2)
    assert items[1][1]["data"] == "data: ok é 😀\n\n"


@pytest.mark.parametrize(
    "options",
    [
        {"flush_size": 0},
        {"flush_size": -1},
        {"flush_size": 1.5},
        {"flush_size": True},
        {"max_pending": 0},
        {"flush_interval": 0},
        {"retry_timeout": 0},
        {"retry_timeout": -1.0},
        {"ttl": 0},
        {"ttl": -5},
        {"max_len": 0},
        {"max_len": "10"},
    ],
    ids=lambda o: "-".join(f"{k}={v!r}" for k, v in o.items()),
)
def test_invalid_options(backend, redis_url, options):
    with pytest.raises(ValueError, match=next(iter(options))):
        StreamWriter(redis_url, backend=backend, **options)


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379/0", "127.0.0.1:6379", "memcached://x"])
def test_bad_url_scheme(backend, url):
    with pytest.raises(ValueError, match="scheme"):
        StreamWriter(url, backend=backend)


def test_bad_redis_argument_type(backend):
    with pytest.raises(TypeError):
        StreamWriter(42, backend=backend)


# ----------------------------------------- last_seq, delete, stats, close, repr


def test_last_seq_and_delete(backend, redis_url, make_writer, plain_client, run_id):
    r = plain_client(redis_url)
    w = make_writer(redis_url)
    run = run_id()
    assert w.last_seq(run) == 0
    for i in range(1, 6):
        w.write(run, chunk(i))
    w.flush()
    assert w.last_seq(run) == 5
    assert w.stats()["runs"] == 1
    w.delete(run)
    assert r.exists(key_of(run)) == 0
    assert w.stats()["runs"] == 0
    assert w.last_seq(run) == 0
    assert w.write(run, chunk(1)) == 1
    w.flush()
    assert_contiguous(entries(r, run), 1, 1)
    w.delete(run_id())  # deleting a run never written is fine


def test_delete_with_chunks_queued(backend, dedicated_server, make_writer, plain_client, run_id):
    server = dedicated_server()
    r, admin = plain_client(server.url), plain_client(server.url)
    w = make_writer(server.url)
    run = run_id()
    w.write(run, chunk(1))
    w.flush()
    admin.execute_command("CLIENT", "PAUSE", 5000, "WRITE")
    try:
        for i in range(2, 20):
            w.write(run, chunk(i))
        # delete waits for the batch in flight (held by the pause) so nothing
        # of the run lands after its DEL; the queued rest is dropped at once
        deleting = threading.Thread(target=w.delete, args=(run,))
        deleting.start()
        deleting.join(0.3)
        assert deleting.is_alive()  # held by the pause, in flight or at its DEL
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
    deleting.join(10)
    assert not deleting.is_alive()
    assert w.stats()["runs"] == 0
    assert w.stats()["pending"] == 0
    # whichever of the in-flight batch and DEL ran first, the stream is gone
    assert r.exists(key_of(run)) == 0
    assert w.write(run, chunk(1)) == 1
    w.flush()
    assert_contiguous(entries(r, run), 1, 1)


def test_stats_counters(backend, redis_url, make_writer, run_id):
    w = make_writer(redis_url, flush_size=10)
    stats = w.stats()
    assert {"chunks", "batches", "pipelines", "retries", "errors", "pending", "runs"} <= set(stats)
    assert stats["chunks"] == stats["batches"] == stats["errors"] == stats["pending"] == 0
    run = run_id()
    for i in range(35):
        w.write(run, chunk(i))
    w.flush()
    stats = w.stats()
    assert stats["chunks"] == 35
    assert 4 <= stats["batches"] <= 35  # at most flush_size chunks per batch
    assert 1 <= stats["pipelines"] <= stats["batches"]
    assert stats["errors"] == 0
    assert stats["pending"] == 0
    assert stats["runs"] == 1
    w.complete(run)
    assert w.stats()["chunks"] == 36
    assert w.stats()["runs"] == 0


def test_context_manager_flushes_and_closes(backend, redis_url, plain_client, run_id):
    r = plain_client(redis_url)
    run = run_id()
    with StreamWriter(redis_url, backend=backend) as w:
        for i in range(1, 101):
            w.write(run, chunk(i))
    assert_contiguous(entries(r, run), 1, 100)
    w.close()  # idempotent
    with pytest.raises((RuntimeError, SSERedisError)):
        w.write(run, chunk(101))


def test_repr_hides_password(backend):
    w = StreamWriter("redis://alice:s3cr3t-pw@127.0.0.1:6390/0", backend=backend)
    try:
        assert "s3cr3t-pw" not in repr(w)
        assert "127.0.0.1:6390" in repr(w)
        assert backend in repr(w)
        w2 = StreamWriter("redis://:0nly-pw@localhost:6390", backend=backend)
        assert "0nly-pw" not in repr(w2)
        w2.close()
    finally:
        w.close()


def test_writer_from_redis_client(backend, redis_url, make_writer, plain_client, run_id):
    r = plain_client(redis_url)
    w = make_writer(r)  # a redis-py client: its settings are reused
    run = run_id()
    w.write(run, chunk(1))
    w.flush()
    assert seq_ids(entries(r, run)) == [1]


# ----------------------------------------------------------- fork and exit


def test_fork_child_builds_its_own_engine(backend, redis_url, make_writer, plain_client, run_id):
    r = plain_client(redis_url)
    w = make_writer(redis_url)
    parent_run, child_run = run_id(), run_id()
    w.write(parent_run, chunk(1))
    w.flush()

    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            for i in range(1, 4):
                assert w.write(child_run, chunk(i)) == i
            w.flush(timeout=10)
            assert w.last_seq(child_run) == 3
            code = 0
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)

    status = wait_child(pid)
    assert os.waitstatus_to_exitcode(status) == 0

    assert w.write(parent_run, chunk(2)) == 2  # the parent's engine is untouched
    w.flush()
    assert_contiguous(entries(r, parent_run), 1, 2)
    assert_contiguous(entries(r, child_run), 1, 3)


EXIT_SCRIPT = textwrap.dedent(
    """
    import sys
    from sse_redis import StreamWriter
    url, backend, run = sys.argv[1:4]
    w = StreamWriter(url, backend=backend)
    for i in range(1, 501):
        w.write(run, "data: %d\\n\\n" % i)
    # no flush, no close: the exit handler must store them
    """
)


def test_exit_flushes_pending_chunks(backend, redis_url, plain_client, run_id):
    r = plain_client(redis_url)
    run = run_id()
    proc = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, redis_url, backend, run],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert proc.returncode == 0, proc.stderr
    items = entries(r, run)
    assert_contiguous(items, 1, 500)
    assert items[-1][1]["data"] == "data: 500\n\n"


def test_exit_without_writes_is_prompt(backend, redis_url):
    script = "import sys; from sse_redis import StreamWriter; StreamWriter(sys.argv[1], backend=sys.argv[2])"
    proc = subprocess.run(
        [sys.executable, "-c", script, redis_url, backend], capture_output=True, text=True, timeout=10
    )
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------- async


def test_async_writer_basics(backend, redis_url, make_async_writer, plain_client, run_id):
    r = plain_client(redis_url)
    w = make_async_writer(redis_url)
    run, failed = run_id(), run_id()

    async def main() -> None:
        assert w.backend == backend
        assert await w.write(run, chunk(1)) == 1  # first write: opens the run off the loop
        assert [await w.write(run, chunk(i)) for i in range(2, 6)] == [2, 3, 4, 5]
        await w.flush()
        assert await w.last_seq(run) == 5
        assert await w.complete(run) == 6
        assert await w.complete(run) is None
        with pytest.raises(RunClosedError):
            await w.write(run, chunk(7))
        assert await w.fail(failed, RuntimeError("secret"), public_message="sorry") == 1
        assert w.stats()["chunks"] == 7

    asyncio.run(main())
    items = entries(r, run)
    assert_contiguous(items, 1, 6)
    assert items[-1][1]["data"] == DONE_CHUNK
    assert items[-1][1]["complete"] == "true"
    last = entries(r, failed)[-1][1]
    assert _error_payload(last["data"])["error"] == "sorry"
    assert last["complete"] == "true"
    assert "AsyncStreamWriter" in repr(w)


def test_async_delete_and_context_manager(backend, redis_url, plain_client, run_id):
    from sse_redis import AsyncStreamWriter

    r = plain_client(redis_url)
    run = run_id()

    async def main() -> None:
        async with AsyncStreamWriter(redis_url, backend=backend) as w:
            await w.write(run, chunk(1))
            await w.flush()
            await w.delete(run)
            assert await w.write(run, chunk(1)) == 1
            assert await w.write(run, chunk(2)) == 2

    asyncio.run(main())
    assert_contiguous(entries(r, run), 1, 2)


def test_async_stale_writer(backend, redis_url, make_async_writer, plain_client, run_id):
    r = plain_client(redis_url)
    run = run_id()
    a, b = make_async_writer(redis_url), make_async_writer(redis_url)

    async def main() -> None:
        await a.write(run, chunk(1))
        await a.flush()
        await b.write(run, chunk(2))
        await b.flush()
        await a.write(run, "data: stale\n\n")
        with pytest.raises(StaleWriterError):
            await a.flush()
        await a.flush()
        with pytest.raises(StaleWriterError):
            await a.write(run, chunk(3))  # broken for a for good
        with pytest.raises(StaleWriterError):
            await a.fail(run)  # b owns the run
        assert await b.complete(run) == 3

    asyncio.run(main())
    assert_contiguous(entries(r, run), 1, 3)


def test_async_write_does_not_block_the_loop(backend, dedicated_server, make_async_writer, plain_client, run_id):
    server = dedicated_server()
    r, admin = plain_client(server.url), plain_client(server.url)
    w = make_async_writer(server.url, max_pending=5, write_timeout=10)
    run = run_id()

    async def main() -> None:
        await w.write(run, chunk(0))
        await w.flush()
        admin.execute_command("CLIENT", "PAUSE", 10000, "WRITE")
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.005)

        tick_task = asyncio.create_task(ticker())
        try:
            for i in range(1, 6):
                assert await w.write(run, chunk(i)) == i + 1
            # the buffer is full: this write must wait off the loop
            blocked = asyncio.create_task(w.write(run, chunk(6)))
            await asyncio.sleep(0.2)
            assert not blocked.done()
            seen = ticks
            await asyncio.sleep(0.1)
            assert ticks > seen, "the event loop stopped while a write waited for room"
        finally:
            admin.execute_command("CLIENT", "UNPAUSE")
        assert await blocked == 7
        stop.set()
        await tick_task
        await w.flush()

    asyncio.run(main())
    assert_contiguous(entries(r, run), 1, 7)


def test_async_first_write_does_not_block_the_loop(backend, dedicated_server, make_async_writer, plain_client, run_id):
    # The first write of a run reads the stream's top: with the server paused
    # (CLIENT PAUSE ALL, which even CLIENT UNPAUSE waits out) that read hangs,
    # and must hang off the loop.
    server = dedicated_server()
    admin = plain_client(server.url)
    w = make_async_writer(server.url)
    run = run_id()

    async def main() -> None:
        admin.execute_command("CLIENT", "PAUSE", 400, "ALL")
        task = asyncio.create_task(w.write(run, chunk(1)))
        ticks = 0
        for _ in range(10):
            await asyncio.sleep(0.005)
            ticks += 1
        assert not task.done()
        assert await task == 1
        await w.flush()
        assert ticks == 10

    asyncio.run(main())
    assert w.sync.last_seq(run) == 1


def test_async_write_timeout(backend, dedicated_server, make_async_writer, plain_client, run_id):
    server = dedicated_server()
    admin = plain_client(server.url)
    w = make_async_writer(server.url, max_pending=3, write_timeout=0.3)
    run = run_id()

    async def main() -> None:
        await w.write(run, chunk(0))
        await w.flush()
        admin.execute_command("CLIENT", "PAUSE", 5000, "WRITE")
        try:
            for i in range(3):
                await w.write(run, chunk(i))
            with pytest.raises(WriteTimeout):
                await w.write(run, chunk(4))
        finally:
            admin.execute_command("CLIENT", "UNPAUSE")
        await w.flush(10)

    asyncio.run(main())


def test_async_redis_down(backend, dedicated_server, make_async_writer, run_id):
    server = dedicated_server()
    w = make_async_writer(server.url, retry_timeout=0.5, write_timeout=10)
    run = run_id()

    async def main() -> None:
        await w.write(run, chunk(1))
        await w.flush()
        server.stop()
        await w.write(run, chunk(2))
        with pytest.raises(RedisUnavailable):
            await w.flush()

    asyncio.run(main())


# ------------------------------------------------------ Redis 7 and Valkey


def test_smoke_layout_and_complete(backend, any_server_url, make_writer, plain_client, run_id):
    r = plain_client(any_server_url)
    w = make_writer(any_server_url, ttl=300, max_len=50)
    run = run_id()
    for i in range(1, 101):
        assert w.write(run, chunk(i)) == i
    assert w.complete(run) == 101
    items = entries(r, run)
    assert 50 <= len(items) <= 101
    assert_contiguous(items, 102 - len(items), 101)
    assert all(entry_id == f"0-{f['seq_id']}" for entry_id, f in items)
    assert items[-1][1]["complete"] == "true"
    assert items[-1][1]["data"] == DONE_CHUNK
    assert 0 < r.ttl(key_of(run)) <= 300
    assert w.complete(run) is None
    with pytest.raises(RunClosedError):
        make_writer(any_server_url).write(run, chunk(1))


def test_smoke_restart_and_stale(backend, any_server_url, make_writer, plain_client, run_id):
    r = plain_client(any_server_url)
    run = run_id()
    a = make_writer(any_server_url)
    a.write(run, chunk(1))
    a.flush()
    b = make_writer(any_server_url)
    assert b.write(run, chunk(2)) == 2
    b.flush()
    a.write(run, chunk(99))
    with pytest.raises(StaleWriterError):
        a.flush()
    assert_contiguous(entries(r, run), 1, 2)


def test_smoke_reference_stream(backend, any_server_url, make_writer, plain_client, run_id):
    r = plain_client(any_server_url)
    run = run_id()
    r.xadd(key_of(run), {"seq_id": 1, "data": chunk(1), "timestamp": int(time.time() * 1000)})
    w = make_writer(any_server_url)
    assert w.write(run, chunk(2)) == 2
    w.complete(run)
    items = entries(r, run)
    assert_contiguous(items, 1, 3)
    assert not any(entry_id.startswith("0-") for entry_id, _ in items)


def test_wait_replicas_on_one_server(backend, dedicated_server, make_writer, run_id, plain_client):
    """``wait_replicas``: a flush returns once the replica has the chunks; with
    no replica to wait for, the batch is never acknowledged and the run fails
    with ``RedisUnavailable`` after ``retry_timeout`` (nothing silently lost)."""
    master = dedicated_server("--repl-diskless-sync-delay", "0")  # the replica syncs at once
    replica = dedicated_server("--replicaof", "127.0.0.1", str(master.port))
    lonely = dedicated_server()
    writer = make_writer(master.url, wait_replicas=1, wait_timeout=0.2, retry_timeout=10)
    run = run_id()
    for i in range(20):
        writer.write(run, f"data: {i}\n\n")
    writer.flush()
    assert plain_client(replica.url).xlen(f"sse:run:{run}") == 20

    stuck = make_writer(lonely.url, wait_replicas=1, wait_timeout=0.1, retry_timeout=0.5)
    stuck.write(run, "data: 1\n\n")
    with pytest.raises(RedisUnavailable, match="replicas acknowledged"):
        stuck.flush()


def test_fast_path_still_sees_a_deleted_stream(backend, redis_url, make_writer, plain_client, run_id):
    """A run's batches after its first skip reading the stream's top (trusted);
    a stream deleted meanwhile still fails the next batch, never recreated with
    a gap (XADD NOMKSTREAM)."""
    r = plain_client(redis_url)
    run = run_id()
    writer = make_writer(redis_url)
    for i in range(1, 4):
        writer.write(run, chunk(i))
    writer.flush()
    r.delete(f"sse:run:{run}")
    writer.write(run, chunk(4))
    with pytest.raises(StaleWriterError, match="vanished"):
        writer.flush()
    assert not r.exists(f"sse:run:{run}")


def test_new_connection_rechecks_the_top(backend, dedicated_server, make_writer, plain_client, run_id):
    """Trust is per connection: once the writer's connection is replaced (as
    after a server restart that lost the stream's tail), its next batch reads
    the top again and finds the gap: StaleWriterError, nothing appended."""
    redis_url = dedicated_server().url
    r = plain_client(redis_url)
    run = run_id()
    key = f"sse:run:{run}"
    writer = make_writer(redis_url)
    for i in range(1, 4):
        writer.write(run, chunk(i))
    writer.flush()
    r.delete(key)  # the tail is "lost": seqs 1..2 only
    for i in (1, 2):
        r.xadd(key, {"seq_id": i, "data": chunk(i), "timestamp": 0, "writer": "another"}, id=f"0-{i}")
    r.client_kill_filter(_type="normal", skipme=True)
    writer.write(run, chunk(4))
    with pytest.raises(StaleWriterError, match="at seq 2, not 3"):
        writer.flush()
    assert r.xlen(key) == 2
