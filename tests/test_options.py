"""Options are checked once, in the faces, with one rule per kind of value on
both backends (``sse_redis._options``); the engines' bindings still convert
every value fallibly, so nothing that reaches them can panic.

Rules pinned here: NaN and negative durations are refused everywhere; ``inf``
means "no limit" for the timeouts a user may lift (write, retry, idle,
missing) and is refused where a finite period is needed (connect, WAIT,
checks, pings, flush interval); every refusal is a ``ValueError`` naming the
option, never a panic (``PanicException`` is a ``BaseException``: ``except
Exception`` misses it) nor an ``OverflowError``.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time

import pytest

from fixtures_io import load_backend
from sse_redis import AsyncStreamReader, AsyncStreamWriter, StreamReader, StreamStalled, StreamWriter

INF, NAN = math.inf, math.nan
DEADLINE = 30.0  # a hang must end; never a speed claim


def chunk(i: int) -> str:
    return f'data: {{"i": {i}}}\n\n'


# ------------------------------------------------------------------ refused


@pytest.mark.parametrize(
    "options",
    [
        {"write_timeout": NAN},
        {"write_timeout": -1},
        {"write_timeout": "5"},
        {"retry_timeout": NAN},
        {"retry_timeout": 0},
        {"connect_timeout": 0},
        {"connect_timeout": INF},
        {"connect_timeout": NAN},
        {"wait_timeout": INF},
        {"wait_timeout": 0},
        {"flush_interval": INF},
        {"flush_interval": NAN},
        {"wait_replicas": -1},
        {"wait_replicas": 1.0},
        {"max_pending": True},
        {"ttl": 1.5},
    ],
    ids=lambda o: "-".join(f"{k}={v!r}" for k, v in o.items()),
)
def test_writer_refuses(backend, redis_url, options):
    name = next(iter(options))
    with pytest.raises(ValueError, match=name):
        StreamWriter(redis_url, backend=backend, **options)
    with pytest.raises(ValueError, match=name):
        AsyncStreamWriter(redis_url, backend=backend, **options)


@pytest.mark.parametrize(
    "options",
    [
        {"idle_timeout": NAN},
        {"idle_timeout": -0.1},
        {"missing_timeout": NAN},
        {"retry_timeout": NAN},
        {"retry_timeout": -1},
        {"check_interval": 0},
        {"check_interval": INF},
        {"ping_interval": INF},
        {"ping_interval": NAN},
        {"queue_size": 2.0},
    ],
    ids=lambda o: "-".join(f"{k}={v!r}" for k, v in o.items()),
)
def test_reader_refuses(backend, redis_url, options):
    name = next(iter(options))
    with pytest.raises(ValueError, match=name):
        StreamReader(redis_url, backend=backend, **options)
    with pytest.raises(ValueError, match=name):
        AsyncStreamReader(redis_url, backend=backend, **options)


@pytest.mark.parametrize("value", [NAN, -1.0, "3"], ids=repr)
def test_per_call_timeouts_refused(backend, redis_url, make_writer, open_reader, value):
    writer = make_writer(redis_url)
    with pytest.raises(ValueError, match="timeout"):
        writer.flush(value)
    reader = open_reader(redis_url)
    with pytest.raises(ValueError, match="idle_timeout"):
        reader.read("run", idle_timeout=value)
    with pytest.raises(ValueError, match="missing_timeout"):
        reader.read("run", missing_timeout=value)


def test_both_backends_say_the_same(redis_url):
    """One rule, one message: the text does not depend on the backend."""
    messages = []
    for backend in ("rust", "python"):
        load_backend(backend)
        with pytest.raises(ValueError, match="idle_timeout") as caught:
            StreamReader(redis_url, backend=backend, idle_timeout=NAN)
        messages.append(str(caught.value))
    assert messages[0] == messages[1]
    assert "inf: no limit" in messages[0]


# ------------------------------------------------------------ inf: no limit


def test_infinite_timeouts_mean_no_limit(backend, redis_url, make_writer, open_reader, run_id):
    """``inf`` is accepted where a limit may be lifted, and a run is written and
    read through it end to end (this read used to panic on the Rust backend
    and raise OverflowError on the pure one)."""
    run = run_id()
    writer = make_writer(redis_url, write_timeout=INF, retry_timeout=INF)
    for i in range(1, 6):
        writer.write(run, chunk(i))
    writer.complete(run)
    writer.flush(INF)
    reader = open_reader(redis_url, idle_timeout=INF, missing_timeout=INF, retry_timeout=INF)
    got = list(reader.read(run))
    assert len(got) == 6
    assert "[DONE]" in got[-1]
    got = list(reader.read(run, starting_after=3, idle_timeout=INF, missing_timeout=INF))
    assert len(got) == 3


def test_infinite_idle_timeout_waits_for_a_slow_writer(backend, redis_url, make_writer, open_reader, run_id):
    """An unlimited read really waits: it is at the top of a live run when the
    next chunk comes, and it gets it."""
    run = run_id()
    writer = make_writer(redis_url)
    writer.write(run, chunk(1))
    writer.flush()
    reader = open_reader(redis_url, idle_timeout=INF)
    got: list[str] = []
    thread = threading.Thread(target=lambda: got.extend(reader.read(run)), daemon=True)
    thread.start()
    deadline = time.monotonic() + DEADLINE
    while len(got) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # the read is waiting at the top now
    writer.write(run, chunk(2))
    writer.complete(run)
    thread.join(DEADLINE)
    assert not thread.is_alive()
    assert len(got) == 3


def test_async_infinite_idle_timeout(backend, redis_url, make_writer, run_id):
    run = run_id()
    writer = make_writer(redis_url)
    for i in range(1, 4):
        writer.write(run, chunk(i))
    writer.complete(run)
    reader = AsyncStreamReader(redis_url, backend=backend, idle_timeout=INF, missing_timeout=INF)

    async def read() -> list[str]:
        return [c async for c in reader.read(run)]

    try:
        assert len(asyncio.run(asyncio.wait_for(read(), DEADLINE))) == 4
    finally:
        reader.close()


def test_finite_idle_timeout_still_stalls(backend, redis_url, make_writer, open_reader, run_id):
    """The other side of the rule: a finite idle timeout still ends the read."""
    run = run_id()
    writer = make_writer(redis_url)
    writer.write(run, chunk(1))
    writer.flush()
    reader = open_reader(redis_url, idle_timeout=0.5)
    with pytest.raises(StreamStalled):
        list(reader.read(run))


# ------------------------------------------------- the engines, called directly


def test_engine_bindings_never_panic(backend, redis_url):
    """The engines are reachable without the faces (``sse_redis._core``): a
    bad duration is a ValueError, an unlimited one is held, never a panic."""
    module = load_backend(backend)
    hub = module.ReaderHub(redis_url, retry_timeout=1e300)
    try:
        sid = hub.subscribe("sse:run:options-nothing", 0)
        if backend == "rust":  # the pure engines trust the faces' checks
            with pytest.raises(ValueError, match="timeout"):
                hub.wait(sid, NAN)
            with pytest.raises(ValueError, match="timeout"):
                hub.wait(sid, -1.0)
            hub.wait(sid, 0.0)
    finally:
        hub.close()
    if backend == "rust":
        with pytest.raises(ValueError, match="retry_timeout"):
            module.WriterEngine(redis_url, retry_timeout=NAN)
        with pytest.raises(ValueError, match="check_interval"):
            module.ReaderHub(redis_url, check_interval=-1.0)
        engine = module.WriterEngine(redis_url, retry_timeout=INF, wait_timeout=1e300)
        engine.close(INF)
