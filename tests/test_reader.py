"""StreamReader / AsyncStreamReader against real servers (Valkey 9, and
Debian's Redis 7 for the smoke subset), each test on both engines
(``backend``: the Rust ``_core.ReaderHub`` or the pure ``_pure.ReaderHub``).

Fixtures ``backend``, ``redis_url``, ``any_server_url`` come from
``fixtures_io.py`` through ``conftest.py``.  Tests that count connections,
create ACL users or restart the server start a Valkey of their own
(``dedicated_server`` below).  Every test uses fresh run ids, so all share one
server without flushing it.  Never a mock.

Nothing here may hang the suite: reads run under a deadline (``collect``),
and the readers' own timeouts are set so that a failure surfaces as an
error rather than a wait.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from itertools import pairwise
from typing import Any

import pytest
import redis as redis_py

from fixtures_io import wait_child
from sse_redis import (
    AsyncStreamReader,
    SSERedisError,
    StreamNotFound,
    StreamReader,
    StreamStalled,
    StreamTrimmed,
    StreamWriter,
    _backend,
)
from sse_redis.reader import PING

# ----------------------------------------------------------------- helpers

DONE = "data: [DONE]\n\n"
# Generous "does not hang" bounds, never performance claims.
DEADLINE = 20.0
AT_ONCE = 3.0  # "ends at once": far below any timeout the reader was given
QUIET = dict(idle_timeout=30.0, missing_timeout=30.0)  # timeouts that must not be what ends a read


def new_run() -> str:
    return f"rd-{uuid.uuid4().hex}"


def key_of(run: str) -> str:
    return "sse:run:" + run


def payload(i: int) -> str:
    """Chunk ``i``; odd ones in the compact style, even ones with spaces after
    the colons (both must be patched)."""
    if i % 2:
        return f'data: {{"i":{i},"run_id":null,"seq_id":null}}\n\n'
    return f'data: {{"i": {i}, "run_id": null, "seq_id": null}}\n\n'


def seq_of(codec: Any, chunk: str) -> int:
    parser = codec.SSEParser()
    parser.feed(chunk)
    return int(parser.last_event_id)


def check_run(codec: Any, chunks: list[str], run: str, after: int, last: int, done: bool = True) -> None:
    """``chunks`` are exactly seqs ``after+1 .. last`` of a stream written with
    ``payload``, each once and in order, with its ``id:`` line and nulls
    filled in; ``done``: the last one is the terminal ``[DONE]``."""
    got = [seq_of(codec, c) if not c.startswith(":") else None for c in chunks]
    assert got == list(range(after + 1, last + 1)), f"seqs {got[:5]}...{got[-5:]} (len {len(got)})"
    for seq, chunk in zip(range(after + 1, last + 1), chunks, strict=True):
        parser = codec.SSEParser()
        events = parser.feed(chunk)
        assert len(events) == 1, chunk
        assert parser.last_event_id == str(seq)
        assert events[0].id == str(seq)
        if done and seq == last:
            assert events[0].data == "[DONE]", chunk
            continue
        body = json.loads(events[0].data)
        assert body == {"i": seq, "run_id": run, "seq_id": seq}, chunk


def collect(iterable: Iterable[str], timeout: float = DEADLINE, limit: int | None = None) -> list[str]:
    """Consume ``iterable`` (at most ``limit`` items) in a helper thread;
    fail the test instead of hanging when it takes longer than ``timeout``.
    An exception of the reader is re-raised here, with ``.chunks`` set to
    what came before it."""
    out: list[str] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            for item in iterable:
                out.append(item)
                if limit is not None and len(out) >= limit:
                    break
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"read did not end within {timeout}s (hung?); got {len(out)} chunks so far")
    if error:
        error[0].chunks = out  # type: ignore[attr-defined]
        raise error[0]
    return out


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


def write_run(url: str, backend: str, run: str, n: int, complete: bool = True, **options: Any) -> None:
    """``n`` chunks (``payload(1..n)``), then ``[DONE]`` as seq ``n + 1``."""
    with StreamWriter(url, backend=backend, **options) as writer:
        for i in range(1, n + 1):
            assert writer.write(run, payload(i)) == i
        if complete:
            assert writer.complete(run) == n + 1
        writer.flush()


def xadd_reference(client: redis_py.Redis, run: str, first: int, last: int, complete: bool) -> None:
    """Entries as the reference writes them: ``XADD key * seq_id N data .. timestamp ..``."""
    for seq in range(first, last + 1):
        fields = {"seq_id": seq, "data": payload(seq), "timestamp": int(time.time() * 1000)}
        client.xadd(key_of(run), fields)
    if complete:
        client.xadd(
            key_of(run),
            {"seq_id": last + 1, "data": DONE, "timestamp": int(time.time() * 1000), "complete": "true"},
        )


class Background:
    """A thread whose exception fails the test when joined."""

    def __init__(self, target: Callable[[], None]) -> None:
        self.error: list[BaseException] = []

        def run() -> None:
            try:
                target()
            except BaseException as exc:
                self.error.append(exc)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self, timeout: float = DEADLINE) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "background thread did not finish"
        if self.error:
            raise self.error[0]


def lockstep_writer(url: str, backend: str, run: str, n: int, acks: queue.Queue[int], delay: float = 0.0) -> Background:
    """Writes chunk ``i`` only after the reader acknowledged chunk ``i - 1``:
    the reader can only finish if every chunk reaches it live, while its run
    is still being written."""

    def write() -> None:
        time.sleep(delay)
        with StreamWriter(url, backend=backend) as writer:
            for i in range(1, n + 1):
                writer.write(run, payload(i))
                got = acks.get(timeout=10)
                assert got == i, f"reader acknowledged {got}, expected {i}"
            writer.complete(run)

    return Background(write)


def hub_stats(reader: StreamReader) -> dict[str, int]:
    return dict(reader.hub.stats())


def connected_clients(client: redis_py.Redis) -> int:
    return int(client.info("clients")["connected_clients"])


def client_list(client: redis_py.Redis) -> list[str]:
    """``id cmd age`` of each connection, for failure messages."""
    return [f"{c['id']} {c['cmd']} age={c['age']}" for c in client.client_list()]


@pytest.fixture
def codec_mod(backend: str) -> Any:
    """The backend's codec module (SSEParser, ...), to parse what a read yields."""
    return _backend.module(backend)


@pytest.fixture
def open_reader(backend: str) -> Iterator[Callable[..., StreamReader]]:
    """``open_reader(url, **options)``: a ``StreamReader`` on the test's backend, closed afterwards."""
    readers: list[StreamReader] = []

    def make(url: str, **options: Any) -> StreamReader:
        # check_interval is also the blocking read's length: 2 s bounds what a
        # missed wake-up of the blocker can cost a test (test_new_key_joins_...).
        options = {**QUIET, "check_interval": 2.0, **options}
        reader = StreamReader(url, backend=backend, **options)
        readers.append(reader)
        return reader

    yield make
    for reader in readers:
        reader.close()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis_py.Redis]:
    c = redis_py.Redis.from_url(redis_url, decode_responses=True)
    yield c
    c.close()


# ------------------------------------------------- completed streams, cursors


def test_reads_completed_stream_once_in_order(backend, redis_url, open_reader, codec_mod):
    run = new_run()
    write_run(redis_url, backend, run, 50)
    reader = open_reader(redis_url)
    chunks = collect(reader.read(run))
    check_run(codec_mod, chunks, run, 0, 51)
    assert chunks[-1].startswith("data: [DONE]\n")
    assert "id: 51" in chunks[-1]
    # The read is over: its subscription is gone.
    wait_for(lambda: hub_stats(reader)["subscriptions"] == 0, what="unsubscribe")


@pytest.mark.parametrize(
    ("cursor", "first"),
    [
        (dict(), 1),
        (dict(starting_after=None), 1),
        (dict(starting_after=0), 1),
        (dict(starting_after=17), 18),
        (dict(last_event_id="17"), 18),
        (dict(last_event_id=" 17 "), 18),
        (dict(last_event_id=""), 1),
        (dict(starting_after=29), 30),
        (dict(starting_after=30), 31),  # the last seq: nothing
        (dict(last_event_id="30"), 31),
        # Past the end: no reader of this stream can hold such a cursor, so
        # the stream it read was lost (this one was written again): not found.
        (dict(starting_after=31), 32),
        (dict(starting_after=10_000), 32),
        (dict(starting_after=2**63 - 1), 32),
        (dict(last_event_id="9223372036854775807"), 32),
    ],
    ids=lambda p: ",".join(f"{k}={v!r}" for k, v in p.items()) or "none" if isinstance(p, dict) else str(p),
)
def test_cursor(backend, redis_url, open_reader, codec_mod, cursor, first):
    run = new_run()
    write_run(redis_url, backend, run, 29)  # seqs 1..29, [DONE] is 30
    reader = open_reader(redis_url)
    if first > 31:
        with pytest.raises(StreamNotFound, match="written again"):
            collect(reader.read(run, **cursor), timeout=AT_ONCE)
    elif first > 30:  # at the end of a finished run: over at once, nothing yielded
        assert collect(reader.read(run, **cursor), timeout=AT_ONCE) == []
    else:
        check_run(codec_mod, collect(reader.read(run, **cursor)), run, first - 1, 30)


def test_cursor_positional_argument(backend, redis_url, open_reader, codec_mod):
    run = new_run()
    write_run(redis_url, backend, run, 5)
    reader = open_reader(redis_url)
    check_run(codec_mod, collect(reader.read(run, 3)), run, 3, 6)


@pytest.mark.parametrize(
    "cursor",
    [
        dict(starting_after=-1),
        dict(starting_after=True),
        dict(starting_after="3"),
        dict(starting_after=2.0),
        dict(starting_after=2**64),  # past any seq id (u64): refused up front, like a 20-digit header
        dict(starting_after=10**30),
        dict(last_event_id="abc"),
        dict(last_event_id="-3"),
        dict(last_event_id="1.5"),
        dict(last_event_id="0x10"),
        dict(last_event_id="\u0661\u0662"),  # Arabic-Indic digits: str.isdigit() says yes
        dict(last_event_id="9" * 25),
        dict(starting_after=3, last_event_id="3"),
    ],
    ids=lambda c: ",".join(f"{k}={v!r}"[:30] for k, v in c.items()),
)
def test_bad_cursor_is_value_error(backend, redis_url, open_reader, cursor):
    reader = open_reader(redis_url)
    with pytest.raises(ValueError, match=r"starting_after|Last-Event-ID|last_event_id"):
        reader.read(new_run(), **cursor)
    areader = AsyncStreamReader(redis_url, backend=backend)
    try:
        with pytest.raises(ValueError, match=r"starting_after|Last-Event-ID|last_event_id"):
            areader.read(new_run(), **cursor)
    finally:
        areader.close()


@pytest.mark.parametrize(
    "options",
    [
        dict(batch_size=0),
        dict(queue_size=0),
        dict(batch_size=True),
        dict(idle_timeout=-1),
        dict(missing_timeout="1"),
        dict(check_interval=-0.5),
        dict(ping_interval=0),
        dict(ping_interval=-1),
    ],
    ids=lambda c: ",".join(f"{k}={v!r}" for k, v in c.items()),
)
def test_bad_options_are_value_errors(backend, redis_url, options):
    with pytest.raises(ValueError, match=next(iter(options))):
        StreamReader(redis_url, backend=backend, **options)


# ------------------------------------------------------ batch and queue sizes


def test_batch_size_one_does_not_hang(backend, redis_url, open_reader, codec_mod):
    run = new_run()
    write_run(redis_url, backend, run, 30)
    reader = open_reader(redis_url, batch_size=1)
    check_run(codec_mod, collect(reader.read(run)), run, 0, 31)
    check_run(codec_mod, collect(reader.read(run, starting_after=12)), run, 12, 31)


def test_batch_size_one_tiny_queue_long_stream(backend, redis_url, open_reader, codec_mod):
    run = new_run()
    write_run(redis_url, backend, run, 300)
    reader = open_reader(redis_url, batch_size=1, queue_size=4)
    check_run(codec_mod, collect(reader.read(run)), run, 0, 301)


def test_tiny_queue_live_burst(backend, redis_url, open_reader, codec_mod):
    """The reader subscribes first; the writer then writes 300 chunks at
    once: the blocker's XREAD hands over far more than the queue holds, so
    the subscription falls back to the fetcher and must still get all."""
    run = new_run()
    reader = open_reader(redis_url, batch_size=1, queue_size=4, idle_timeout=10.0)
    with StreamWriter(redis_url, backend=backend) as writer:
        writer.write(run, payload(1))
        writer.flush()
        gen = reader.read(run)
        first = collect(gen, limit=1)
        for i in range(2, 301):
            writer.write(run, payload(i))
        writer.complete(run)
    check_run(codec_mod, first + collect(gen), run, 0, 301)


def test_live_burst_larger_than_one_xread(backend, redis_url, open_reader, codec_mod):
    """3,000 chunks written at once to a followed run (more than one XREAD
    COUNT, more than the default queue): all arrive, once, in order."""
    run = new_run()
    write_run(redis_url, backend, run, 1, complete=False)
    reader = open_reader(redis_url, idle_timeout=15.0)
    gen = reader.read(run)
    first = collect(gen, limit=1)
    with StreamWriter(redis_url, backend=backend) as writer:
        for i in range(2, 3001):
            writer.write(run, payload(i))
        writer.complete(run)
    check_run(codec_mod, first + collect(gen, timeout=30.0), run, 0, 3001)


def test_unicode_and_crlf_chunks(backend, redis_url, open_reader, codec_mod):
    run = new_run()
    texts = [
        'data: {"t":"h\u00e9llo","run_id":null}\n\n',
        'data: {"t":"héllo ✓ 😀 \u2028","run_id": null}\n\n',
        "event: note\r\ndata: a\r\ndata: b\r\n\r\n",
        ": a comment\ndata: x\n\n",
    ]
    with StreamWriter(redis_url, backend=backend) as writer:
        for text in texts:
            writer.write(run, text)
        writer.complete(run)
    reader = open_reader(redis_url)
    chunks = collect(reader.read(run))
    assert len(chunks) == 5
    events = []
    for seq, chunk in enumerate(chunks, 1):
        parser = codec_mod.SSEParser()
        got = parser.feed(chunk)
        assert len(got) == 1, chunk
        assert parser.last_event_id == str(seq), chunk
        events.append(got[0])
    assert json.loads(events[0].data) == {"t": "héllo", "run_id": run}
    assert json.loads(events[1].data) == {"t": "héllo ✓ 😀 \u2028", "run_id": run}
    assert (events[2].event, events[2].data) == ("note", "a\nb")
    assert events[3].data == "x"
    assert events[4].data == "[DONE]"


# ------------------------------------------------------------- live following


def test_follows_live_stream(backend, redis_url, open_reader, codec_mod):
    """Every chunk reaches the reader while the run is being written: the
    writer writes chunk ``i + 1`` only once the reader has chunk ``i``."""
    run = new_run()
    write_run(redis_url, backend, run, 1, complete=False)
    reader = open_reader(redis_url, idle_timeout=10.0)
    gen = reader.read(run)
    got = collect(gen, limit=1)
    acks: queue.Queue[int] = queue.Queue()

    def write_rest() -> None:
        with StreamWriter(redis_url, backend=backend) as writer:
            for i in range(2, 21):
                writer.write(run, payload(i))
                assert acks.get(timeout=10) == i
                time.sleep(0.005)
            writer.complete(run)

    bg = Background(write_rest)
    for chunk in collect_iter(gen):
        got.append(chunk)
        if len(got) <= 20:
            acks.put(seq_of(codec_mod, chunk))
    bg.join()
    check_run(codec_mod, got, run, 0, 21)


def collect_iter(iterable: Iterable[str], timeout: float = DEADLINE) -> Iterator[str]:
    """Items of ``iterable`` as they come, produced in a helper thread; fails
    instead of hanging when the whole read takes longer than ``timeout``."""
    items: queue.Queue[tuple[str, Any]] = queue.Queue()

    def run() -> None:
        try:
            for item in iterable:
                items.put(("item", item))
            items.put(("end", None))
        except BaseException as exc:
            items.put(("error", exc))

    threading.Thread(target=run, daemon=True).start()
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"read did not end within {timeout}s (hung?)")
        try:
            kind, value = items.get(timeout=left)
        except queue.Empty:
            continue
        if kind == "end":
            return
        if kind == "error":
            raise value
        yield value


def test_reader_started_before_writer(backend, redis_url, open_reader, codec_mod):
    """Subscribed before the stream exists; every chunk reaches the reader
    while the run is being written (the writer waits for each to arrive)."""
    run = new_run()
    reader = open_reader(redis_url, idle_timeout=10.0, missing_timeout=10.0)
    gen = reader.read(run)
    acks: queue.Queue[int] = queue.Queue()
    writer = lockstep_writer(redis_url, backend, run, 15, acks, delay=0.3)
    got = []
    for chunk in collect_iter(gen):
        got.append(chunk)
        if len(got) <= 15:
            acks.put(seq_of(codec_mod, chunk))
    writer.join()
    check_run(codec_mod, got, run, 0, 16)


def test_missing_stream_appears_within_missing_timeout(backend, redis_url, open_reader, codec_mod):
    run = new_run()
    reader = open_reader(redis_url, missing_timeout=5.0, idle_timeout=5.0)
    gen = reader.read(run, starting_after=2)

    def late() -> None:
        time.sleep(0.4)
        write_run(redis_url, backend, run, 6)

    bg = Background(late)
    chunks = collect(gen)
    bg.join()
    check_run(codec_mod, chunks, run, 2, 7)


def test_two_readers_of_one_live_stream_from_different_cursors(backend, redis_url, open_reader, codec_mod):
    run = new_run()
    write_run(redis_url, backend, run, 10, complete=False)
    reader = open_reader(redis_url, idle_timeout=10.0)
    _ = reader.hub  # built here: concurrent first reads are test_concurrent_first_reads_share_one_hub
    results: dict[int, list[str]] = {}
    threads = []
    for after in (0, 5, 10):

        def read(after: int = after) -> None:
            results[after] = collect(reader.read(run, starting_after=after))

        threads.append(Background(read))
    wait_for(lambda: hub_stats(reader)["subscriptions"] == 3, what="3 subscriptions")
    with StreamWriter(redis_url, backend=backend) as writer:
        for i in range(11, 41):
            writer.write(run, payload(i))
        writer.complete(run)
    for t in threads:
        t.join()
    for after in (0, 5, 10):
        check_run(codec_mod, results[after], run, after, 41)


# ------------------------------------------------------- errors, not waiting


def test_missing_stream_raises_stream_not_found(backend, redis_url, open_reader):
    reader = open_reader(redis_url, missing_timeout=0.3)
    start = time.monotonic()
    with pytest.raises(StreamNotFound):
        collect(reader.read(new_run()), timeout=AT_ONCE + 2)
    assert time.monotonic() - start >= 0.25
    wait_for(lambda: hub_stats(reader)["subscriptions"] == 0, what="unsubscribe")


@pytest.mark.parametrize("how", ["del", "pexpire", "unlink"])
def test_stream_gone_while_read_raises_stream_not_found(backend, redis_url, open_reader, client, codec_mod, how):
    run = new_run()
    write_run(redis_url, backend, run, 3, complete=False)
    reader = open_reader(redis_url, check_interval=0.2, idle_timeout=30.0)
    gen = reader.read(run)
    first = collect(gen, limit=3)
    check_run(codec_mod, first, run, 0, 3, done=False)
    if how == "del":
        client.delete(key_of(run))
    elif how == "unlink":
        client.unlink(key_of(run))
    else:
        client.pexpire(key_of(run), 150)
    with pytest.raises(StreamNotFound):
        collect(gen, timeout=8.0)


def test_wrong_type_key_does_not_hang(backend, redis_url, open_reader, client):
    """A key that is not a stream: an error, never an endless wait."""
    run = new_run()
    client.set(key_of(run), "not a stream")
    reader = open_reader(redis_url, missing_timeout=1.0, idle_timeout=1.0)
    with pytest.raises((StreamNotFound, StreamStalled)):
        collect(reader.read(run), timeout=8.0)


def test_writer_gone_raises_stream_stalled(backend, redis_url, open_reader, codec_mod):
    run = new_run()
    write_run(redis_url, backend, run, 3, complete=False)
    reader = open_reader(redis_url, idle_timeout=0.4)
    with pytest.raises(StreamStalled) as info:
        collect(reader.read(run), timeout=8.0)
    check_run(codec_mod, info.value.chunks, run, 0, 3, done=False)
    # A cursor at the end of an unfinished run stalls too (neither done nor endless).
    with pytest.raises(StreamStalled) as info:
        collect(reader.read(run, starting_after=3), timeout=8.0)
    assert info.value.chunks == []


def test_trimmed_stream_raises_stream_trimmed(backend, redis_url, open_reader, client, codec_mod):
    run = new_run()
    write_run(redis_url, backend, run, 500, max_len=5)
    stored = client.xrange(key_of(run))
    assert len(stored) < 501, "MAXLEN ~ 5 trimmed nothing: the test needs trimming"
    first = int(stored[0][1]["seq_id"])
    assert first > 1
    reader = open_reader(redis_url)
    for after in (0, first - 2):
        with pytest.raises(StreamTrimmed) as info:
            collect(reader.read(run, starting_after=after))
        assert info.value.chunks == [], "a silent gap: chunks came before the error"
    # A cursor within the retained range reads to the end.
    check_run(codec_mod, collect(reader.read(run, starting_after=first - 1)), run, first - 1, 501)
    mid = (first + 501) // 2
    check_run(codec_mod, collect(reader.read(run, starting_after=mid)), run, mid, 501)
    assert collect(reader.read(run, starting_after=501), timeout=AT_ONCE) == []


def test_slow_reader_overtaken_by_trimming_gets_stream_trimmed(backend, redis_url, open_reader, codec_mod):
    """A read left behind while MAXLEN trims past its cursor ends with
    StreamTrimmed when it resumes: never a silent gap."""
    run = new_run()
    reader = open_reader(redis_url, batch_size=4, queue_size=8, idle_timeout=15.0)
    slow = reader.read(run)
    with StreamWriter(redis_url, backend=backend, max_len=5) as writer:
        writer.write(run, payload(1))
        writer.flush()
        got = collect(slow, limit=1)
        for i in range(2, 501):
            writer.write(run, payload(i))
        writer.complete(run)
    with pytest.raises(StreamTrimmed) as info:
        collect(slow)
    got += info.value.chunks
    seqs = [seq_of(codec_mod, c) for c in got]
    assert seqs == list(range(1, len(seqs) + 1))  # what came, came in order and whole
    assert len(seqs) < 501


def test_error_terminal_ends_the_read(backend, redis_url, open_reader, codec_mod):
    run = new_run()
    with StreamWriter(redis_url, backend=backend) as writer:
        for i in range(1, 4):
            writer.write(run, payload(i))
        assert writer.fail(run, public_message="boom") == 4
    reader = open_reader(redis_url)
    chunks = collect(reader.read(run))
    check_run(codec_mod, chunks[:3], run, 0, 3, done=False)
    parser = codec_mod.SSEParser()
    (event,) = parser.feed(chunks[3])
    assert event.event == "error"
    assert parser.last_event_id == "4"
    assert json.loads(event.data)["error"] == "boom"


@pytest.mark.parametrize("layout", ["prefix", "cluster", "callable"])
def test_key_layouts(backend, redis_url, open_reader, client, codec_mod, layout):
    from sse_redis import ClusterKeyLayout

    keys: Any = {
        "prefix": "sse:other:",
        "cluster": ClusterKeyLayout(buckets=2),
        "callable": lambda run: f"sse:fn:{run}:stream",
    }[layout]
    runs = [new_run() for _ in range(4)]
    for run in runs:
        write_run(redis_url, backend, run, 5, keys=keys)
    stored = {run: client.exists(key_of(run)) for run in runs}
    assert not any(stored.values())  # not under the default layout
    reader = open_reader(redis_url, keys=keys)
    results: dict[str, list[str]] = {}
    threads = [
        Background(lambda run=run: results.__setitem__(run, collect(reader.read(run, starting_after=1))))
        for run in runs
    ]
    for t in threads:
        t.join()
    for run in runs:
        check_run(codec_mod, results[run], run, 1, 6)


def test_reader_from_client_object_and_other_db(backend, redis_url, codec_mod):
    base = redis_url.rsplit("/", 1)[0]
    url = base + "/3"
    run = new_run()
    write_run(url, backend, run, 4)
    client = redis_py.Redis.from_url(url)
    reader = StreamReader(client, backend=backend, **QUIET)
    try:
        check_run(codec_mod, collect(reader.read(run)), run, 0, 5)
    finally:
        reader.close()
        client.close()
    # Not in db 0.
    other = StreamReader(base + "/0", backend=backend, missing_timeout=0.3)
    try:
        with pytest.raises(StreamNotFound):
            collect(other.read(run))
    finally:
        other.close()


def test_unix_socket(backend, dedicated_server, codec_mod, tmp_path):
    path = str(tmp_path / "valkey.sock")
    dedicated_server("--unixsocket", path, "--unixsocketperm", "700")
    url = f"unix://{path}?db=0"
    run = new_run()
    write_run(url, backend, run, 3)
    reader = StreamReader(url, backend=backend, **QUIET)
    try:
        check_run(codec_mod, collect(reader.read(run)), run, 0, 4)
    finally:
        reader.close()


def test_repr_hides_password(backend):
    reader = StreamReader("redis://user:s3cret@127.0.0.1:1/0", backend=backend)
    assert "s3cret" not in repr(reader)
    assert "s3cret" not in repr(AsyncStreamReader("redis://user:s3cret@127.0.0.1:1/0", backend=backend))
    assert backend in repr(reader)


def test_fork_child_builds_its_own_hub(backend, redis_url, open_reader, codec_mod):
    import os

    run = new_run()
    write_run(redis_url, backend, run, 6)
    reader = open_reader(redis_url)
    check_run(codec_mod, collect(reader.read(run)), run, 0, 7)  # the parent's hub is running
    pid = os.fork()
    if pid == 0:  # the child: read with the inherited object, then leave at once
        code = 1
        try:
            chunks = collect(reader.read(run, starting_after=2), timeout=10)
            check_run(codec_mod, chunks, run, 2, 7)
            code = 0
        finally:
            os._exit(code)
    status = wait_child(pid)
    assert os.WIFEXITED(status)
    assert os.WEXITSTATUS(status) == 0
    check_run(codec_mod, collect(reader.read(run, starting_after=5)), run, 5, 7)  # the parent still reads


# ------------------------------------------------- streams the reference wrote


def test_reference_stream(backend, redis_url, open_reader, client, codec_mod):
    run = new_run()
    xadd_reference(client, run, 1, 40, complete=True)
    assert not client.xrange(key_of(run))[0][0].startswith("0-")  # time-based ids
    reader = open_reader(redis_url, batch_size=7)
    check_run(codec_mod, collect(reader.read(run)), run, 0, 41)
    check_run(codec_mod, collect(reader.read(run, starting_after=25)), run, 25, 41)
    check_run(codec_mod, collect(reader.read(run, last_event_id="40")), run, 40, 41)
    assert collect(reader.read(run, starting_after=41), timeout=AT_ONCE) == []
    with pytest.raises(StreamNotFound):  # past its end: not the stream the cursor came from
        collect(reader.read(run, starting_after=99), timeout=AT_ONCE)


def test_reference_stream_live(backend, redis_url, open_reader, client, codec_mod):
    run = new_run()
    xadd_reference(client, run, 1, 5, complete=False)
    reader = open_reader(redis_url, idle_timeout=10.0)
    _ = reader.hub  # built here: concurrent first reads are test_concurrent_first_reads_share_one_hub
    results: dict[int, list[str]] = {}
    threads = []
    for after in (0, 3, 5, 7):

        def read(after: int = after) -> None:
            results[after] = collect(reader.read(run, starting_after=after))

        threads.append(Background(read))
    wait_for(lambda: hub_stats(reader)["subscriptions"] == 4, what="4 subscriptions")
    time.sleep(0.05)

    def more() -> None:
        c = redis_py.Redis.from_url(redis_url)
        try:
            for seq in range(6, 21):
                xadd_reference(c, run, seq, seq, complete=False)
                time.sleep(0.002)
            xadd_reference(c, run, 21, 20, complete=True)  # only the [DONE] entry, seq 21
        finally:
            c.close()

    Background(more).join()
    for t in threads:
        t.join()
    for after in (0, 3, 5, 7):
        check_run(codec_mod, results[after], run, after, 21)


def test_sse_redis_stream_continued_by_reference_style(backend, redis_url, open_reader, client, codec_mod):
    """Ours first (``0-<seq>`` ids), then ``XADD *`` entries: still one run."""
    run = new_run()
    write_run(redis_url, backend, run, 5, complete=False)
    xadd_reference(client, run, 6, 9, complete=True)
    reader = open_reader(redis_url)
    check_run(codec_mod, collect(reader.read(run)), run, 0, 10)
    check_run(codec_mod, collect(reader.read(run, starting_after=7)), run, 7, 10)


# ------------------------------------------------------------------- pings


def test_ping_interval_on_idle_stream(backend, redis_url, open_reader, codec_mod):
    run = new_run()
    write_run(redis_url, backend, run, 1, complete=False)
    reader = open_reader(redis_url, ping_interval=0.2, idle_timeout=10.0)
    gen = reader.read(run)
    stamps: list[tuple[float, str]] = []

    def late() -> None:
        time.sleep(1.0)
        with StreamWriter(redis_url, backend=backend) as writer:
            writer.write(run, payload(2))
            writer.complete(run)

    bg = Background(late)
    stamps.extend((time.monotonic(), chunk) for chunk in collect_iter(gen))
    bg.join()
    chunks = [c for _, c in stamps]
    pings = [t for t, c in stamps if c == PING]
    data = [c for c in chunks if c != PING]
    check_run(codec_mod, data, run, 0, 3)
    assert chunks[0] != PING
    assert chunks[-1] == data[-1]
    # About every 0.2 s over ~1 s of silence: a few, never a flood.
    assert 2 <= len(pings) <= 10, len(pings)
    gaps = [b - a for a, b in pairwise(pings)]
    assert all(g >= 0.1 for g in gaps), gaps
    for c in chunks:
        if c == PING:
            assert codec_mod.SSEParser().feed(c) == []  # a comment: no event


def test_no_ping_by_default(backend, redis_url, open_reader):
    run = new_run()
    write_run(redis_url, backend, run, 1, complete=False)
    reader = open_reader(redis_url, idle_timeout=0.6)
    with pytest.raises(StreamStalled) as info:
        collect(reader.read(run), timeout=8.0)
    assert PING not in info.value.chunks
    assert len(info.value.chunks) == 1


# ------------------------------------------------------ many readers, one hub


def test_many_sync_readers_few_connections(backend, dedicated_server, codec_mod):
    server = dedicated_server()
    url = server.url
    streams = [new_run() for _ in range(50)]
    inspect = redis_py.Redis.from_url(url)
    writer = StreamWriter(url, backend=backend)
    try:
        for run in streams:
            writer.write(run, payload(1))
        writer.flush()
        before = connected_clients(inspect)
        reader = StreamReader(url, backend=backend, **QUIET)
        _ = reader.hub  # built here: concurrent first reads are test_concurrent_first_reads_share_one_hub
        try:
            results: dict[int, list[str]] = {}

            def read(n: int) -> None:
                results[n] = collect(reader.read(streams[n % 50], starting_after=n % 2))

            threads = [Background(lambda n=n: read(n)) for n in range(200)]
            wait_for(lambda: hub_stats(reader)["subscriptions"] == 200, timeout=10, what="200 subscriptions")
            wait_for(lambda: hub_stats(reader)["watched"] == 50, timeout=10, what="50 watched keys")
            during = connected_clients(inspect)
            assert during - before <= 2, (f"{during - before} connections for 200 readers", client_list(inspect))
            for i in range(2, 21):
                for run in streams:
                    writer.write(run, payload(i))
            for run in streams:
                writer.complete(run)
            for t in threads:
                t.join(30)
            assert connected_clients(inspect) - before <= 2, (before, client_list(inspect))
            for n in range(200):
                check_run(codec_mod, results[n], streams[n % 50], n % 2, 21)
            assert hub_stats(reader)["subscriptions"] == 0
            assert hub_stats(reader)["connections"] == 2
        finally:
            reader.close()
    finally:
        writer.close()
        inspect.close()


def test_many_async_readers_few_connections(backend, dedicated_server, codec_mod):
    server = dedicated_server()
    url = server.url
    streams = [new_run() for _ in range(50)]
    inspect = redis_py.Redis.from_url(url)
    writer = StreamWriter(url, backend=backend)

    async def main() -> None:
        reader = AsyncStreamReader(url, backend=backend, **QUIET)
        try:

            async def read(n: int) -> list[str]:
                return [c async for c in reader.read(streams[n % 50], starting_after=n % 3)]

            tasks = [asyncio.ensure_future(read(n)) for n in range(500)]
            deadline = time.monotonic() + 10
            while reader.sync.hub.stats()["watched"] < 50 or reader.sync.hub.stats()["subscriptions"] < 500:
                assert time.monotonic() < deadline, reader.sync.hub.stats()
                await asyncio.sleep(0.01)
            assert connected_clients(inspect) - before <= 2, (before, client_list(inspect))

            def write_rest() -> None:
                for i in range(3, 21):
                    for run in streams:
                        writer.write(run, payload(i))
                for run in streams:
                    writer.complete(run)

            await asyncio.to_thread(write_rest)
            results = await asyncio.wait_for(asyncio.gather(*tasks), 30)
            for n, chunks in enumerate(results):
                check_run(codec_mod, chunks, streams[n % 50], n % 3, 21)
            assert connected_clients(inspect) - before <= 2, (before, client_list(inspect))
            assert reader.sync.hub.stats()["subscriptions"] == 0
        finally:
            reader.close()

    try:
        for run in streams:
            writer.write(run, payload(1))
            writer.write(run, payload(2))
        writer.flush()
        before = connected_clients(inspect)
        asyncio.run(main())
    finally:
        writer.close()
        inspect.close()


def test_new_key_joins_promptly_while_hub_starts(backend, redis_url, codec_mod):
    """A read of a second stream that starts while the hub's blocker is
    still connecting gets its chunk at once, not after a whole blocking
    read (``check_interval``, 3 s here) on the old key set.  Repeated on
    fresh hubs, since it is a race with the blocker's start-up."""
    with StreamWriter(redis_url, backend=backend) as writer:
        for trial in range(30):
            a, b = new_run(), new_run()
            writer.write(a, payload(1))
            writer.complete(a)
            reader = StreamReader(redis_url, backend=backend, check_interval=3.0, **QUIET)
            try:
                assert len(collect(reader.read(a))) == 2  # key A: the blocker starts up
                gen = reader.read(b)  # key B: missing yet, joins the watch set
                firsts: list[list[str]] = []
                waiting = Background(lambda gen=gen, firsts=firsts: firsts.append(collect(gen, limit=1, timeout=2.5)))
                time.sleep(0.02)
                writer.write(b, payload(1))
                writer.flush()
                try:
                    waiting.join(5)
                except BaseException as exc:
                    pytest.fail(f"trial {trial}: the new key's chunk was not delivered promptly: {exc}")
                check_run(codec_mod, firsts[0], b, 0, 1, done=False)
                gen.close()  # type: ignore[attr-defined]
            finally:
                reader.close()
            writer.complete(b)


def test_concurrent_first_reads_share_one_hub(backend, dedicated_server, codec_mod):
    """Threads that start the first reads of a shared StreamReader at the
    same moment must all land on its one hub (two connections), not each
    build a hub of its own that the reader then forgets."""
    server = dedicated_server()
    run = new_run()
    write_run(server.url, backend, run, 3, complete=False)
    inspect = redis_py.Redis.from_url(server.url)
    before = connected_clients(inspect)
    reader = StreamReader(server.url, backend=backend, **QUIET)
    try:
        barrier = threading.Barrier(8)
        gens: list[Iterator[str]] = []
        firsts: list[str] = []
        lock = threading.Lock()

        def first_read() -> None:
            barrier.wait(5)
            gen = reader.read(run)
            chunk = next(gen)
            with lock:
                gens.append(gen)
                firsts.append(chunk)

        threads = [Background(first_read) for _ in range(8)]
        for t in threads:
            t.join()
        assert [seq_of(codec_mod, c) for c in firsts] == [1] * 8
        stats = hub_stats(reader)
        assert stats["subscriptions"] == 8, f"reads on hubs the reader forgot: {stats}"
        wait_for(
            lambda: connected_clients(inspect) - before <= 2,
            timeout=2,
            what=f"at most 2 hub connections (now {connected_clients(inspect) - before})",
        )
        for gen in gens:
            gen.close()  # type: ignore[attr-defined]
        assert hub_stats(reader)["subscriptions"] == 0
    finally:
        reader.close()
        inspect.close()


# ----------------------------------------------------- leaving a read early


def test_break_unsubscribes_at_once(backend, redis_url, open_reader, codec_mod):
    run = new_run()
    write_run(redis_url, backend, run, 5, complete=False)
    reader = open_reader(redis_url)
    for n, _chunk in enumerate(reader.read(run), 1):  # the generator is dropped at the break
        assert hub_stats(reader)["subscriptions"] == 1
        if n == 2:
            break
    assert hub_stats(reader)["subscriptions"] == 0
    assert hub_stats(reader)["watched"] == 0

    gen = reader.read(run, starting_after=1)
    assert seq_of(codec_mod, next(gen)) == 2
    assert hub_stats(reader)["subscriptions"] == 1
    gen.close()
    assert hub_stats(reader)["subscriptions"] == 0


def test_abandoned_unstarted_read_holds_nothing(backend, redis_url, open_reader):
    reader = open_reader(redis_url)
    gen = reader.read(new_run())
    del gen
    assert hub_stats(reader)["subscriptions"] == 0


def test_slow_reader_does_not_delay_others(backend, redis_url, open_reader, codec_mod):
    """One read takes a chunk and then sits suspended; another read of the
    same stream still gets all 1,000 chunks, and the stalled one later
    catches up, in order, without a gap (its queue stayed bounded)."""
    run = new_run()
    queue_size = 8
    reader = open_reader(redis_url, batch_size=4, queue_size=queue_size, idle_timeout=15.0)
    slow = reader.read(run)
    fast = reader.read(run)
    with StreamWriter(redis_url, backend=backend) as writer:
        writer.write(run, payload(1))
        writer.flush()
        slow_chunks = collect(slow, limit=1)
        bg = Background(lambda: ([writer.write(run, payload(i)) for i in range(2, 1001)], writer.complete(run)))
        fast_chunks = collect(fast, timeout=30.0)
        bg.join()
    check_run(codec_mod, fast_chunks, run, 0, 1001)
    if backend == "python":  # the pure hub's queues are inspectable: bounded
        subs = reader.hub._shared.subs
        for sub in subs.values():
            assert len(sub.queue) <= queue_size
    check_run(codec_mod, slow_chunks + collect(slow, timeout=30.0), run, 0, 1001)
    assert hub_stats(reader)["subscriptions"] == 0


def test_close_ends_running_reads(backend, redis_url, codec_mod):
    run = new_run()
    write_run(redis_url, backend, run, 2, complete=False)
    reader = StreamReader(redis_url, backend=backend, **QUIET)
    gen = reader.read(run)
    got = collect(gen, limit=2)
    check_run(codec_mod, got, run, 0, 2, done=False)
    reader.close()
    with pytest.raises(SSERedisError):
        collect(gen, timeout=5.0)
    # A read after close is refused clearly (the hub property means to say
    # "this StreamReader is closed"), not with an AttributeError on None.
    with pytest.raises((RuntimeError, SSERedisError)):
        list(reader.read(run))


# ------------------------------------------------------------------- asyncio


def test_async_reads_completed_stream(backend, redis_url, codec_mod):
    run = new_run()
    write_run(redis_url, backend, run, 40)

    async def main() -> None:
        reader = AsyncStreamReader(redis_url, backend=backend, **QUIET)
        try:
            chunks = await asyncio.wait_for(_alist(reader.read(run)), DEADLINE)
            check_run(codec_mod, chunks, run, 0, 41)
            chunks = await asyncio.wait_for(_alist(reader.read(run, last_event_id="33")), DEADLINE)
            check_run(codec_mod, chunks, run, 33, 41)
            assert await asyncio.wait_for(_alist(reader.read(run, starting_after=41)), AT_ONCE) == []
            assert reader.sync.hub.stats()["subscriptions"] == 0
        finally:
            reader.close()

    asyncio.run(main())


async def _alist(agen: Any) -> list[str]:
    return [c async for c in agen]


def test_async_follows_live_stream_before_it_exists(backend, redis_url, codec_mod):
    run = new_run()

    async def main() -> None:
        reader = AsyncStreamReader(redis_url, backend=backend, idle_timeout=10.0, missing_timeout=10.0)
        try:
            acks: queue.Queue[int] = queue.Queue()
            writer = lockstep_writer(redis_url, backend, run, 25, acks, delay=0.2)
            got = []

            async def consume() -> None:
                async for chunk in reader.read(run):
                    got.append(chunk)
                    if len(got) <= 25:
                        acks.put(seq_of(codec_mod, chunk))

            await asyncio.wait_for(consume(), DEADLINE)
            await asyncio.to_thread(writer.join)
            check_run(codec_mod, got, run, 0, 26)
        finally:
            reader.close()

    asyncio.run(main())


def test_async_wait_keeps_loop_responsive(backend, redis_url, codec_mod):
    run = new_run()
    write_run(redis_url, backend, run, 1, complete=False)

    async def main() -> None:
        reader = AsyncStreamReader(redis_url, backend=backend, idle_timeout=10.0)
        ticks = 0
        stop = False

        async def ticker() -> None:
            nonlocal ticks
            while not stop:
                ticks += 1
                await asyncio.sleep(0.02)

        def late() -> None:
            time.sleep(0.6)
            with StreamWriter(redis_url, backend=backend) as writer:
                writer.write(run, payload(2))
                writer.complete(run)

        try:
            tick_task = asyncio.ensure_future(ticker())
            late_task = asyncio.ensure_future(asyncio.to_thread(late))
            chunks = await asyncio.wait_for(_alist(reader.read(run)), DEADLINE)
            stop = True
            await tick_task
            await late_task
            check_run(codec_mod, chunks, run, 0, 3)
            # ~30 ticks fit in the 0.6 s idle wait; a blocked loop gets ~1.
            assert ticks >= 8, ticks
        finally:
            reader.close()

    asyncio.run(main())


def test_async_aclose_and_cancel_unsubscribe(backend, redis_url, codec_mod):
    run = new_run()
    write_run(redis_url, backend, run, 3, complete=False)

    async def main() -> None:
        reader = AsyncStreamReader(redis_url, backend=backend, idle_timeout=30.0)
        try:
            stats = lambda: reader.sync.hub.stats()  # noqa: E731
            agen = reader.read(run)
            assert seq_of(codec_mod, await asyncio.wait_for(agen.__anext__(), DEADLINE)) == 1
            assert stats()["subscriptions"] == 1
            await agen.aclose()
            assert stats()["subscriptions"] == 0

            got: list[str] = []

            async def consume() -> None:
                async for chunk in reader.read(run):
                    got.append(chunk)

            task = asyncio.ensure_future(consume())
            deadline = time.monotonic() + DEADLINE
            while len(got) < 3:  # then it waits for chunk 4, which never comes
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            assert stats()["subscriptions"] == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert stats()["subscriptions"] == 0
            check_run(codec_mod, got, run, 0, 3, done=False)

            # async for ... break
            async for _chunk in reader.read(run, starting_after=1):
                break
            await asyncio.sleep(0)  # the dropped async generator is finalized by the loop
            deadline = time.monotonic() + 2
            while stats()["subscriptions"]:
                assert time.monotonic() < deadline, stats()
                await asyncio.sleep(0.01)
        finally:
            reader.close()

    asyncio.run(main())


def test_async_errors(backend, redis_url):
    run = new_run()
    write_run(redis_url, backend, run, 1, complete=False)

    async def main() -> None:
        reader = AsyncStreamReader(redis_url, backend=backend, missing_timeout=0.3, idle_timeout=0.4)
        try:
            with pytest.raises(StreamNotFound):
                await asyncio.wait_for(_alist(reader.read(new_run())), 8.0)
            with pytest.raises(StreamStalled):
                await asyncio.wait_for(_alist(reader.read(run)), 8.0)
            assert reader.sync.hub.stats()["subscriptions"] == 0
        finally:
            reader.close()

    asyncio.run(main())


def test_async_ping_interval(backend, redis_url):
    run = new_run()
    write_run(redis_url, backend, run, 1, complete=False)

    async def main() -> None:
        reader = AsyncStreamReader(redis_url, backend=backend, ping_interval=0.2, idle_timeout=0.9)
        try:
            got: list[str] = []
            with pytest.raises(StreamStalled):  # noqa: PT012 (the loop raises; got keeps what came first)
                async for chunk in reader.read(run):
                    got.append(chunk)
            assert got[0] != PING
            assert 2 <= got.count(PING) <= 8, got
        finally:
            reader.close()

    asyncio.run(asyncio.wait_for(main(), DEADLINE))


def test_async_close_ends_running_reads(backend, redis_url, codec_mod):
    """``close()`` while an ``async for`` waits: the read ends with an error
    promptly, as a sync read does, not after its ``idle_timeout``."""
    run = new_run()
    write_run(redis_url, backend, run, 1, complete=False)

    async def main() -> None:
        reader = AsyncStreamReader(redis_url, backend=backend, idle_timeout=10.0)
        got: list[str] = []

        async def consume() -> None:
            async for chunk in reader.read(run):
                got.append(chunk)

        task = asyncio.ensure_future(consume())
        deadline = time.monotonic() + DEADLINE
        while not got:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # the read now waits for chunk 2
        reader.close()
        done, _ = await asyncio.wait([task], timeout=AT_ONCE)
        if not done:
            task.cancel()
            pytest.fail(f"the read still waits {AT_ONCE}s after close() (its idle_timeout is 10s)")
        with pytest.raises(SSERedisError):
            task.result()

    asyncio.run(main())


def test_async_reader_on_two_event_loops(backend, redis_url, codec_mod):
    """One AsyncStreamReader used from two loops in turn (e.g. tests, or a
    server restarting its loop): each loop gets its own waker."""
    run = new_run()
    write_run(redis_url, backend, run, 5)
    reader = AsyncStreamReader(redis_url, backend=backend, **QUIET)
    try:
        for _ in range(2):
            chunks = asyncio.run(asyncio.wait_for(_alist(reader.read(run)), DEADLINE))
            check_run(codec_mod, chunks, run, 0, 6)
    finally:
        reader.close()


# ------------------------------------------------- least-privilege ACL user


def test_least_privilege_user_follows_and_new_readers_join(backend, dedicated_server, codec_mod):
    """No @admin, so no CLIENT UNBLOCK: the hub falls back to short blocks,
    still follows live streams, and a reader joining while the hub is
    blocked gets its chunks (within the short block time)."""
    server = dedicated_server()
    admin = redis_py.Redis.from_url(server.url)
    try:
        admin.execute_command(
            "ACL",
            "SETUSER",
            "sse_ro",
            "on",
            ">pw",
            "~sse:*",
            "+@read",
            "+@stream",
            "+@connection",
            "-@admin",
            "+client|id",
            "+exists",
            "+ping",
            "+select",
        )
        ro_url = f"redis://sse_ro:pw@127.0.0.1:{server.port}/0"
        probe = redis_py.Redis.from_url(ro_url)
        with pytest.raises(redis_py.ResponseError):
            probe.client_unblock(0)  # the premise: not permitted
        probe.close()

        run_a, run_b = new_run(), new_run()
        reader = StreamReader(ro_url, backend=backend, idle_timeout=10.0, missing_timeout=10.0)
        try:
            acks: queue.Queue[int] = queue.Queue()
            writer = lockstep_writer(server.url, backend, run_a, 10, acks)
            got_a = []
            for chunk in collect_iter(reader.read(run_a)):
                got_a.append(chunk)
                if len(got_a) <= 10:
                    acks.put(seq_of(codec_mod, chunk))
            writer.join()
            check_run(codec_mod, got_a, run_a, 0, 11)

            # A read parked on a missing stream keeps the hub blocked in XREAD.
            run_h = new_run()
            hold = Background(lambda: collect(reader.read(run_h), timeout=15))
            wait_for(lambda: hub_stats(reader)["watched"] >= 1, what="a watched key")
            time.sleep(0.3)  # the blocker is inside its (short) XREAD now

            # A new reader joins a run with nothing new yet: its key joins the
            # watch set, but the blocker's XREAD in flight does not cover it.
            write_run(server.url, backend, run_b, 1, complete=False)
            gen_b = reader.read(run_b, starting_after=1)
            firsts: list[list[str]] = []
            waiting = Background(lambda: firsts.append(collect(gen_b, limit=1, timeout=8.0)))
            wait_for(lambda: hub_stats(reader)["watched"] == 2, what="run_b watched")
            with StreamWriter(server.url, backend=backend) as writer:
                written = time.monotonic()
                writer.write(run_b, payload(2))
                writer.flush()
            waiting.join()
            arrived = time.monotonic()
            first = firsts[0]
            check_run(codec_mod, first, run_b, 1, 2, done=False)
            assert arrived - written < 3.0, "a joining reader waited far beyond the short block"
            assert hub_stats(reader)["unblocks"] == 0
            with StreamWriter(server.url, backend=backend) as writer:
                writer.write(run_b, payload(3))
                writer.complete(run_b)
                writer.write(run_h, payload(1))
                writer.complete(run_h)
            check_run(codec_mod, first + collect(gen_b), run_b, 1, 4)
            hold.join()
        finally:
            reader.close()
    finally:
        admin.close()


# ----------------------------------------------------------- Redis 7 smoke


def test_smoke_any_server(backend, any_server_url, open_reader, codec_mod):
    url = any_server_url
    run = new_run()
    write_run(url, backend, run, 20)
    reader = open_reader(url)
    check_run(codec_mod, collect(reader.read(run, starting_after=7)), run, 7, 21)
    assert collect(reader.read(run, starting_after=21), timeout=AT_ONCE) == []

    live = new_run()
    acks: queue.Queue[int] = queue.Queue()
    writer = lockstep_writer(url, backend, live, 10, acks, delay=0.1)
    got = []
    for chunk in collect_iter(reader.read(live)):
        got.append(chunk)
        if len(got) <= 10:
            acks.put(seq_of(codec_mod, chunk))
    writer.join()
    check_run(codec_mod, got, live, 0, 11)

    ref = new_run()
    c = redis_py.Redis.from_url(url)
    try:
        xadd_reference(c, ref, 1, 8, complete=True)
    finally:
        c.close()
    check_run(codec_mod, collect(reader.read(ref, starting_after=4)), ref, 4, 9)


# ------------------------------------------------------------ server restart


def xadd_explicit(client: redis_py.Redis, run: str, first: int, last: int, complete: bool) -> None:
    """Entries in sse-redis's own layout (``0-<seq>`` ids), written directly."""
    now = int(time.time() * 1000)
    for seq in range(first, last + 1):
        client.xadd(key_of(run), {"seq_id": seq, "data": payload(seq), "timestamp": now}, id=f"0-{seq}")
    if complete:
        client.xadd(
            key_of(run), {"seq_id": last + 1, "data": DONE, "timestamp": now, "complete": "true"}, id=f"0-{last + 1}"
        )


def test_server_restart_while_following(backend, dedicated_server, codec_mod):
    """The server restarts (data kept in its AOF) while a read follows a
    run: the hub reconnects and the read gets every chunk exactly once.
    (Written with plain XADDs in sse-redis's layout, so that this tests the
    reader alone; the writer's own restart test is in test_writer.py.)"""
    server = dedicated_server("--appendonly", "yes", "--appendfsync", "always")
    url = server.url
    run = new_run()
    reader = StreamReader(url, backend=backend, idle_timeout=20.0, missing_timeout=20.0)
    writer = redis_py.Redis.from_url(url)
    try:
        xadd_explicit(writer, run, 1, 30, complete=False)
        got: list[str] = []
        done = threading.Event()
        error: list[BaseException] = []

        def read() -> None:
            try:
                for chunk in reader.read(run):
                    got.append(chunk)  # noqa: PERF402 (got keeps what came before an error)
            except BaseException as exc:
                error.append(exc)
            finally:
                done.set()

        threading.Thread(target=read, daemon=True).start()
        wait_for(lambda: len(got) >= 30, timeout=10, what="the first 30 chunks")
        server.restart()
        assert writer.xlen(key_of(run)) == 30  # the AOF kept the run
        time.sleep(0.2)  # let the hub notice and reconnect before more arrives ...
        xadd_explicit(writer, run, 31, 40, complete=False)
        wait_for(lambda: len(got) >= 40, timeout=10, what="chunks written after the restart")
        xadd_explicit(writer, run, 41, 60, complete=True)  # ... and once more, live
        assert done.wait(30), f"reader did not finish after the restart; got {len(got)}"
        assert not error, error
        check_run(codec_mod, got, run, 0, 61)
    finally:
        reader.close()
        writer.close()


def test_server_restart_losing_the_stream_raises_stream_not_found(backend, dedicated_server, codec_mod):
    """No persistence: after the restart the run's stream is gone, and the
    read following it says so (StreamNotFound) instead of waiting on."""
    server = dedicated_server()
    run = new_run()
    client = redis_py.Redis.from_url(server.url)
    reader = StreamReader(server.url, backend=backend, check_interval=0.3, idle_timeout=30.0)
    try:
        xadd_explicit(client, run, 1, 3, complete=False)
        gen = reader.read(run)
        check_run(codec_mod, collect(gen, limit=3), run, 0, 3, done=False)
        server.restart()
        assert client.exists(key_of(run)) == 0
        with pytest.raises(StreamNotFound):
            collect(gen, timeout=10.0)
    finally:
        reader.close()
        client.close()


def test_redis_down_raises_redis_unavailable(backend, dedicated_server, codec_mod):
    """Redis gone for longer than ``retry_timeout``: the read ends with
    RedisUnavailable instead of waiting on (or reporting a stalled writer)."""
    from sse_redis import RedisUnavailable

    server = dedicated_server()
    run = new_run()
    client = redis_py.Redis.from_url(server.url)
    try:
        xadd_explicit(client, run, 1, 2, complete=False)
    finally:
        client.close()
    reader = StreamReader(server.url, backend=backend, retry_timeout=0.5, check_interval=0.3, **QUIET)
    try:
        gen = reader.read(run)
        check_run(codec_mod, collect(gen, limit=2), run, 0, 2, done=False)
        server.stop()
        with pytest.raises(RedisUnavailable):
            collect(gen, timeout=10.0)
    finally:
        reader.close()
