"""Write-path faults (issue 10): the writer between the library and Redis
breaks as users' networks and servers do, through the project's own TCP
fault proxy (``fault_proxy``: freeze, delay, cut) or a dedicated server set
up to refuse (``proto-max-bulk-len``, ``maxmemory``), on both engines.  Never
a mock.

Each scenario counts and prints one ``FAULTS`` line (``report``/``tally``
from ``test_faults.py``): ``sent`` is what the writer acknowledged
(``flush()``/``complete()`` returned), ``received`` what is stored of it,
``lost`` and ``duplicated`` must be 0, or the writer raised the documented
clear error (``RedisUnavailable``, ``WriteTimeout``, ``SSERedisError``)
within a bound.  Bounds are "does not hang" bounds, never speed claims.

Not repeated here (``test_writer.py`` has them): connections killed by
``CLIENT KILL`` mid-pipeline, a server restart mid-run, Redis stopped
(``RedisUnavailable`` on flush), a paused server's back-pressure
(``WriteTimeout``).  This file adds the silent and partial network faults
(freeze, cut mid-command, delay), the first write on a frozen network, an
oversized chunk, OOM, cancelled async writes, and a stale writer's later
batches in one pipeline.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest

from sse_redis import (
    RedisUnavailable,
    SSERedisError,
    StaleWriterError,
    WriteTimeout,
)
from test_faults import Background, key_of, report, tally

DEADLINE = 60.0  # "does not hang": the longest any scenario may take to end


def payload(run_index: int, i: int, size: int = 0) -> str:
    pad = "x" * size
    return f'data: {{"r": {run_index}, "i": {i}, "pad": "{pad}", "run_id": null}}\n\n'


def stored_entries(client, run: str) -> list[tuple[int, dict[str, str]]]:
    return [(int(fields["seq_id"]), fields) for _, fields in client.xrange(key_of(run))]


def check_exact(client, runs: list[str], acked: dict[str, list[tuple[int, str]]]) -> tuple[dict[str, int], int]:
    """Every acknowledged ``(seq, data)`` stored once under its seq; each
    stream's seqs 1..n once each, in order.  Returns the totals and the
    number of stored entries."""
    totals = dict(expected=0, received=0, lost=0, duplicated=0, unexpected=0)
    stored_total = 0
    for run in runs:
        entries = stored_entries(client, run)
        stored_total += len(entries)
        seqs = [seq for seq, _ in entries]
        data_at = {seq: fields["data"] for seq, fields in entries}
        mine = acked.get(run, [])
        good = [seq for seq, data in mine if data_at.get(seq) == data]
        counts = tally([seq for seq, _ in mine], good + [s for s in seqs if s not in {q for q, _ in mine}])
        counts["duplicated"] = len(seqs) - len(set(seqs)) + (len(entries) - len({f["data"] for _, f in entries}))
        counts["unexpected"] = 0 if seqs == list(range(1, len(seqs) + 1)) else 1
        for name, value in counts.items():
            totals[name] += value
    return totals, stored_total


class Acks:
    """The chunks one writer wrote, and which of them it saw acknowledged."""

    def __init__(self) -> None:
        self.written: dict[str, list[tuple[int, str]]] = {}
        self.acked: dict[str, list[tuple[int, str]]] = {}
        self.lock = threading.Lock()

    def wrote(self, run: str, seq: int, data: str) -> None:
        with self.lock:
            self.written.setdefault(run, []).append((seq, data))

    def flushed(self, run: str | None = None) -> None:
        """A flush of ``run`` (or of every run) returned: all written so far is acknowledged."""
        with self.lock:
            for key in [run] if run is not None else list(self.written):
                self.acked[key] = list(self.written.get(key, []))

    @property
    def sent(self) -> int:
        return sum(len(v) for v in self.acked.values())


# ------------------------------------------------- a stale writer's later batches


def test_stale_batch_fails_the_runs_later_batches_of_the_same_pipeline(
    backend, dedicated_server, fault_proxy, make_writer, plain_client, run_id
):
    """Writer A's pipeline holds two batches of one run, [3, 4] and [5 DONE];
    writer B stored 3 and 4 meanwhile.  [3, 4] is stale, and so must [5] be:
    stored after B's 4 it would end B's run with A's terminal (and B's own
    complete() would then be a no-op).  Seen in the fork race as a stream
    A1 A2 B1 B2 A-DONE."""
    server = dedicated_server()
    proxy = fault_proxy(server)
    r = plain_client(server.url)
    a = make_writer(proxy.url, flush_size=2, retry_timeout=20, write_timeout=20)
    b = make_writer(server.url)
    run, other = run_id(), run_id()
    a.write(run, payload(0, 1))
    a.write(run, payload(0, 2))
    a.write(other, payload(1, 1))
    a.flush()
    proxy.freeze(new=False)  # A's sender hangs in the pipeline of `other` ...
    a.write(other, payload(1, 2))
    time.sleep(0.2)
    assert a.write(run, payload(0, 3)) == 3  # ... while these gather for its next one
    assert a.write(run, payload(0, 4)) == 4
    assert a.write(run, "data: [DONE]\n\n") == 5
    assert b.write(run, payload(2, 3)) == 3
    assert b.write(run, payload(2, 4)) == 4
    b.flush()
    started = time.monotonic()
    proxy.heal()
    with pytest.raises(StaleWriterError):
        a.flush(run_id=run)
    took = time.monotonic() - started
    b_done = b.complete(run)
    entries = stored_entries(r, run)
    writers = [fields["writer"] for _, fields in entries]
    counts = tally([1, 2, 3, 4, 5], [seq for seq, _ in entries])
    report(
        "stale-tail",
        backend,
        sent=5,
        counts=counts,
        b_complete=b_done,
        took_s=round(took, 2),
        writers="".join("A" if w == writers[0] else "B" for w in writers),
    )
    assert [seq for seq, _ in entries] == [1, 2, 3, 4, 5]
    assert [fields["data"] for _, fields in entries][2:4] == [payload(2, 3), payload(2, 4)]
    assert writers[2:] == [writers[2]] * 3, "A's terminal ended B's run"
    assert writers[2] != writers[0], "A's terminal ended B's run"
    assert b_done == 5
    assert took < DEADLINE


# ------------------------------------------------------------ network freezes


def write_steadily(
    w, runs: list[str], acks: Acks, per_run: int, pause: float, flush_every: int, written: list[int]
) -> None:
    """Round robin over ``runs``, ``per_run`` chunks each, then complete():
    a flush every ``flush_every`` rounds marks what is acknowledged."""
    for i in range(1, per_run + 1):
        for n, run in enumerate(runs):
            data = payload(n, i)
            acks.wrote(run, w.write(run, data), data)
        written[0] = i
        if i % flush_every == 0:
            w.flush()
            acks.flushed()
        time.sleep(pause)
    for run in runs:
        seq = w.complete(run)
        acks.wrote(run, seq, "data: [DONE]\n\n")
        acks.flushed(run)


def test_freeze_shorter_than_retry_timeout(backend, dedicated_server, fault_proxy, make_writer, plain_client, run_id):
    """The network freezes for 1.5 s (sockets open, nothing forwarded; new
    connections too) while 5 runs are written: with retry_timeout 20 s the
    writer rides it out; flush returns after the heal, and every chunk is
    stored once, in order."""
    server = dedicated_server()
    proxy = fault_proxy(server)
    r = plain_client(server.url)
    w = make_writer(proxy.url, flush_size=10, retry_timeout=20, write_timeout=20)
    runs = [run_id() for _ in range(5)]
    acks, written, per_run = Acks(), [0], 200
    writer = Background(lambda: write_steadily(w, runs, acks, per_run, 0.005, 20, written), "writer")
    deadline = time.monotonic() + DEADLINE
    while written[0] < per_run // 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    at_freeze = written[0]
    proxy.freeze()
    time.sleep(1.5)
    during = written[0]
    proxy.heal()
    healed = time.monotonic()
    writer.join(timeout=DEADLINE)
    after_heal = time.monotonic() - healed
    counts, stored = check_exact(r, runs, acks.acked)
    report(
        "write-freeze-short",
        backend,
        sent=acks.sent,
        counts=counts,
        stored=stored,
        freeze_s=1.5,
        written_at_freeze=at_freeze,
        written_during_freeze=during - at_freeze,
        done_after_heal_s=round(after_heal, 2),
        retries=w.stats()["retries"],
    )
    assert acks.sent == len(runs) * (per_run + 1)
    assert at_freeze < per_run
    assert (counts["lost"], counts["duplicated"], counts["unexpected"]) == (0, 0, 0)
    assert counts["received"] == acks.sent == stored
    assert after_heal < DEADLINE


def test_freeze_longer_than_retry_timeout(backend, dedicated_server, fault_proxy, make_writer, plain_client, run_id):
    """The network freezes for good (new connections too) mid-run, with
    retry_timeout 2 s and write_timeout 5 s: flush raises WriteTimeout (or
    RedisUnavailable) after about write_timeout; the engine gives the run up
    with RedisUnavailable within a bound (a frozen link is seen by its socket
    timeout, then retried for retry_timeout), and the run's later writes raise
    it.  After the heal nothing acknowledged is lost and nothing is stored
    twice (the frozen pipeline may land late: its seqs are never handed out
    again)."""
    server = dedicated_server()
    proxy = fault_proxy(server)
    r = plain_client(server.url)
    w = make_writer(proxy.url, flush_size=10, retry_timeout=2, write_timeout=5)
    run = run_id()
    acks = Acks()
    for i in range(1, 101):
        acks.wrote(run, w.write(run, payload(0, i)), payload(0, i))
    w.flush()
    acks.flushed()
    proxy.freeze()
    started = time.monotonic()
    first: BaseException | None = None
    try:
        for i in range(101, 201):
            acks.wrote(run, w.write(run, payload(0, i)), payload(0, i))
        w.flush()
        acks.flushed()
    except (RedisUnavailable, WriteTimeout) as exc:
        first = exc
    first_after = time.monotonic() - started
    gave_up: BaseException | None = None
    try:  # until the engine gives the run up
        w.flush(timeout=DEADLINE, run_id=run)
        acks.flushed(run)
    except (RedisUnavailable, WriteTimeout) as exc:
        gave_up = exc
    gave_up_after = time.monotonic() - started
    later: BaseException | None = None
    try:
        w.write(run, payload(0, 999))
    except SSERedisError as exc:
        later = exc
    proxy.heal()
    time.sleep(0.5)  # let a pipeline held by the freeze land, if it does
    counts, stored = check_exact(r, [run], acks.acked)
    report(
        "write-freeze-long",
        backend,
        sent=acks.sent,
        counts=counts,
        stored=stored,
        retry_timeout=2,
        write_timeout=5,
        flush_error=type(first).__name__ if first else None,
        flush_raised_after_s=round(first_after, 2),
        gave_up=type(gave_up).__name__ if gave_up else None,
        gave_up_after_s=round(gave_up_after, 2),
        later_write_error=type(later).__name__ if later else None,
    )
    assert isinstance(first, (RedisUnavailable, WriteTimeout)), "flush returned on a network frozen for good"
    assert first_after < 5.0 + 3.0, f"flush raised after {first_after:.1f}s (write_timeout 5)"
    assert isinstance(gave_up, RedisUnavailable), repr(gave_up)
    assert gave_up_after < 30.0, f"the engine gave up after {gave_up_after:.1f}s"
    assert isinstance(later, RedisUnavailable), f"a write to the broken run: {later!r}"
    for error in (first, gave_up, later):
        assert "os error" not in str(error), str(error)
        assert "temporarily unavailable" not in str(error).lower(), str(error)
    assert (counts["lost"], counts["duplicated"], counts["unexpected"]) == (0, 0, 0)
    assert stored >= acks.sent == 100


def test_freeze_during_a_runs_first_write(backend, dedicated_server, fault_proxy, make_writer, plain_client, run_id):
    """Defect 8: the network is frozen when a run's first write comes, with
    write_timeout 2: the write raises WriteTimeout (or RedisUnavailable)
    within a few seconds, not 30, with a clear message; after the heal the
    run opens and its first chunk is stored once."""
    server = dedicated_server()
    proxy = fault_proxy(server)
    r = plain_client(server.url)
    w = make_writer(proxy.url, write_timeout=2, retry_timeout=30)
    warm, run = run_id(), run_id()
    w.write(warm, payload(0, 1))  # the engine is connected, then the network freezes
    w.flush()
    proxy.freeze()
    started = time.monotonic()
    error: BaseException | None = None
    try:
        w.write(run, payload(1, 1))
    except (WriteTimeout, RedisUnavailable) as exc:
        error = exc
    took = time.monotonic() - started
    proxy.heal()
    deadline = time.monotonic() + DEADLINE
    seq = None
    while seq is None:
        try:
            seq = w.write(run, payload(1, 1))
        except (WriteTimeout, RedisUnavailable):
            assert time.monotonic() < deadline, "the run never opened after the heal"
    w.flush(timeout=DEADLINE)
    stored = [s for s, _ in stored_entries(r, run)]
    counts = tally([1], stored)
    report(
        "first-write-freeze",
        backend,
        sent=1,
        counts=counts,
        write_timeout=2,
        raised_after_s=round(took, 2),
        error=type(error).__name__ if error else None,
        message=repr(str(error)[:80]) if error else None,
    )
    assert error is not None, f"the first write returned on a frozen network after {took:.1f}s"
    assert took < 5.0, f"the first write raised after {took:.1f}s (write_timeout 2)"
    message = str(error)
    assert "os error" not in message, message
    assert "temporarily unavailable" not in message.lower(), message
    assert run in message or "open" in message or "within" in message, message
    assert seq == 1
    assert stored == [1]


# ----------------------------------------------------- cut mid-pipeline, delay


def test_links_cut_mid_pipeline(backend, dedicated_server, fault_proxy, make_writer, plain_client, run_id):
    """Every 30-80 ms the writer's link is reset (RST) after a random number
    of bytes, mid-command: the server gets part of a pipeline.  Retries store
    every chunk of 10 runs once, in order."""
    server = dedicated_server()
    proxy = fault_proxy(server)
    r = plain_client(server.url)
    w = make_writer(proxy.url, flush_size=20, retry_timeout=20, write_timeout=20)
    runs = [run_id() for _ in range(10)]
    acks, written, per_run = Acks(), [0], 200
    stop, cuts = threading.Event(), [0]
    rng = random.Random(11)

    def cutter() -> None:
        while not stop.is_set():
            proxy.cut_after(rng.randint(1, 6000))
            cuts[0] += 1
            stop.wait(rng.uniform(0.03, 0.08))

    cutting = Background(cutter, "cutter")
    started = time.monotonic()
    try:
        write_steadily(w, runs, acks, per_run, 0.004, 25, written)
    finally:
        stop.set()
        cutting.join()
    took = time.monotonic() - started
    counts, stored = check_exact(r, runs, acks.acked)
    report(
        "write-cut-mid-pipeline",
        backend,
        sent=acks.sent,
        counts=counts,
        stored=stored,
        cuts=cuts[0],
        connections=proxy.accepted,
        retries=w.stats()["retries"],
        took_s=round(took, 2),
    )
    assert (counts["lost"], counts["duplicated"], counts["unexpected"]) == (0, 0, 0)
    assert counts["received"] == acks.sent == stored == len(runs) * (per_run + 1)
    assert proxy.accepted > 3, "no link was cut: nothing was tested"
    assert w.stats()["retries"] > 0, "no link was cut: nothing was tested"
    assert took < DEADLINE


def test_slow_link(backend, dedicated_server, fault_proxy, make_writer, plain_client, run_id):
    """Every read forwarded 30 ms late, both ways: still exact."""
    server = dedicated_server()
    proxy = fault_proxy(server)
    r = plain_client(server.url)
    proxy.delay(0.03)
    w = make_writer(proxy.url, flush_size=10, retry_timeout=20, write_timeout=20)
    runs = [run_id() for _ in range(5)]
    acks, written = Acks(), [0]
    started = time.monotonic()
    write_steadily(w, runs, acks, 100, 0.002, 25, written)
    took = time.monotonic() - started
    counts, stored = check_exact(r, runs, acks.acked)
    report(
        "write-delay",
        backend,
        sent=acks.sent,
        counts=counts,
        stored=stored,
        delay_s=0.03,
        pipelines=w.stats()["pipelines"],
        took_s=round(took, 2),
    )
    assert (counts["lost"], counts["duplicated"], counts["unexpected"]) == (0, 0, 0)
    assert counts["received"] == acks.sent == stored == 5 * 101
    assert took < DEADLINE


def test_half_closed_links(backend, dedicated_server, fault_proxy, make_writer, plain_client, run_id):
    """Three times mid-run the writer's links get a FIN while what they send
    is dropped (a half-closed link): the writer reconnects and retries, and
    every chunk of 5 runs is stored once, in order."""
    server = dedicated_server()
    proxy = fault_proxy(server)
    r = plain_client(server.url)
    w = make_writer(proxy.url, flush_size=10, retry_timeout=20, write_timeout=20)
    runs = [run_id() for _ in range(5)]
    acks, written, per_run = Acks(), [0], 150
    writer = Background(lambda: write_steadily(w, runs, acks, per_run, 0.004, 25, written), "writer")
    closes = 0
    for at in (30, 70, 110):
        deadline = time.monotonic() + DEADLINE
        while written[0] < at and time.monotonic() < deadline:
            time.sleep(0.002)
        proxy.half_close()
        closes += 1
    started = time.monotonic()
    writer.join(timeout=DEADLINE)
    took = time.monotonic() - started
    counts, stored = check_exact(r, runs, acks.acked)
    report(
        "write-half-close",
        backend,
        sent=acks.sent,
        counts=counts,
        stored=stored,
        half_closes=closes,
        connections=proxy.accepted,
        retries=w.stats()["retries"],
        took_s=round(took, 2),
    )
    assert (counts["lost"], counts["duplicated"], counts["unexpected"]) == (0, 0, 0)
    assert counts["received"] == acks.sent == stored == len(runs) * (per_run + 1)
    assert proxy.accepted > 1, "no link was half-closed under the writer: nothing was tested"


# --------------------------------------------------------- an oversized chunk


def test_oversized_chunk_fails_only_its_own_run(backend, dedicated_server, make_writer, plain_client, run_id):
    """Defect 9: a chunk over the server's proto-max-bulk-len (1 MB here),
    written between other runs' chunks: its run alone fails, clearly, within
    a bound; the other runs' chunks are all stored; the broken run's error
    terminal is stored after the gap (fail())."""
    server = dedicated_server("--proto-max-bulk-len", "1mb")
    r = plain_client(server.url)
    w = make_writer(server.url, flush_size=10, retry_timeout=10, write_timeout=20)
    bad, innocents = run_id(), [run_id() for _ in range(3)]
    acks = Acks()
    for i in range(1, 4):
        for n, run in enumerate(innocents):
            acks.wrote(run, w.write(run, payload(n, i)), payload(n, i))
    assert w.write(bad, payload(9, 1)) == 1
    w.flush()
    started = time.monotonic()
    assert w.write(bad, payload(9, 2, size=3 << 19)) == 2  # 1.5 MiB
    for i in range(4, 20):
        for n, run in enumerate(innocents):
            acks.wrote(run, w.write(run, payload(n, i)), payload(n, i))
    error: BaseException | None = None
    try:
        w.flush(run_id=bad)
    except SSERedisError as exc:
        error = exc
    took = time.monotonic() - started
    w.flush()  # the innocent runs: no error of the bad run's
    acks.flushed()
    for run in innocents:
        assert w.complete(run) == 20
        acks.wrote(run, 20, "data: [DONE]\n\n")
        acks.flushed(run)
    with pytest.raises(SSERedisError):
        w.write(bad, payload(9, 3))  # broken for this writer
    assert w.fail(bad) == 3  # the error terminal, after the refused seq 2
    counts, stored = check_exact(r, innocents, acks.acked)
    bad_entries = stored_entries(r, bad)
    report(
        "oversized-chunk",
        backend,
        sent=acks.sent,
        counts=counts,
        stored=stored,
        chunk_bytes=3 << 19,
        limit="1mb",
        error=type(error).__name__ if error else None,
        failed_after_s=round(took, 2),
        bad_run_seqs=[seq for seq, _ in bad_entries],
    )
    assert error is not None, "the oversized chunk's run did not fail"
    # Clear: it names the chunk and the likely limit (the OS's words for the
    # dropped link, if any, only follow as the cause).
    assert type(error) is SSERedisError, repr(error)
    assert str(error).startswith("Redis refused a chunk of "), str(error)
    assert "proto-max-bulk-len" in str(error), str(error)
    assert took < 30.0
    assert (counts["lost"], counts["duplicated"], counts["unexpected"]) == (0, 0, 0)
    assert counts["received"] == acks.sent == 3 * 20
    assert [seq for seq, _ in bad_entries] == [1, 3]
    assert bad_entries[-1][1].get("broken") == "true"
    assert bad_entries[-1][1]["complete"] == "true"


def test_max_chunk_bytes_refuses_at_write(backend, redis_url, make_writer, plain_client, run_id):
    """The README: "``max_chunk_bytes`` refuses bigger chunks at ``write``",
    and issue 10: an oversized chunk fails only its own run "whatever
    ``max_chunk_bytes`` is set to"."""
    r = plain_client(redis_url)
    w = make_writer(redis_url, max_chunk_bytes=1000)
    run, other = run_id(), run_id()
    assert w.write(other, payload(0, 1)) == 1
    with pytest.raises(ValueError, match="max_chunk_bytes"):
        w.write(run, payload(1, 1, size=2000))
    assert w.write(run, payload(1, 1)) == 1  # nothing was queued: the run goes on
    assert w.complete(run) == 2
    assert w.complete(other) == 2
    assert [s for s, _ in stored_entries(r, run)] == [1, 2]


# -------------------------------------------------------------------- OOM


def fill_until_refused(w, run: str, acks: Acks, size: int, limit: int) -> tuple[int, BaseException | None]:
    """Write ``size``-byte chunks until a write (or flush) raises, at most ``limit``."""
    for i in range(1, limit + 1):
        try:
            data = payload(0, i, size)
            acks.wrote(run, w.write(run, data), data)
            if i % 10 == 0:
                w.flush(run_id=run)
                acks.flushed(run)
        except SSERedisError as exc:
            return i, exc
    return limit, None


@pytest.mark.parametrize("freed", ["in-time", "too-late"])
def test_out_of_memory_never_renumbers(backend, dedicated_server, make_writer, plain_client, run_id, freed):
    """Defect 5: Redis at maxmemory with noeviction refuses the writer's
    scripts (-OOM).  ``in-time``: memory frees up within retry_timeout: the
    retried batches land, every chunk under the seq its write returned.
    ``too-late``: it does not: the run fails clearly ("out of memory"), its
    later writes raise, and no seq a write returned ever ends up on another
    chunk; after memory frees up, fail() stores the error terminal after the
    gap and a new run is written normally."""
    server = dedicated_server("--maxmemory-policy", "noeviction")
    r = plain_client(server.url)
    used = int(r.info("memory")["used_memory"])
    r.config_set("maxmemory", used + 600_000)
    retry = 8 if freed == "in-time" else 1
    w = make_writer(server.url, flush_size=5, retry_timeout=retry, write_timeout=30)
    run = run_id()
    acks = Acks()
    started = time.monotonic()
    if freed == "in-time":

        def relieve() -> None:
            deadline = time.monotonic() + 20
            while w.stats()["retries"] == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(1.0)  # refused for a while, then memory frees up
            r.config_set("maxmemory", 0)

        relief = Background(relieve, "relief")
        stopped_at, error = fill_until_refused(w, run, acks, 4000, 400)
        relief.join()
        if error is None:
            w.flush(run_id=run)
            acks.flushed(run)
    else:
        stopped_at, error = fill_until_refused(w, run, acks, 4000, 2000)
    took = time.monotonic() - started
    later: BaseException | None = None
    if error is not None:
        try:
            w.write(run, payload(0, 99999))
        except SSERedisError as exc:
            later = exc
    r.config_set("maxmemory", 0)
    terminal = w.fail(run) if error is not None else w.complete(run)
    if error is None:
        acks.wrote(run, terminal, "data: [DONE]\n\n")
        acks.flushed(run)
    fresh = run_id()
    assert w.write(fresh, payload(1, 1)) == 1
    assert w.complete(fresh) == 2

    entries = stored_entries(r, run)
    written = dict(acks.written.get(run, []))
    renumbered = [seq for seq, fields in entries if seq in written and fields["data"] != written[seq]]
    counts, stored = check_exact(r, [run], acks.acked)
    gaps = [seq for seq, _ in entries] != list(range(1, len(entries) + 1))
    report(
        f"oom-{freed}",
        backend,
        sent=acks.sent,
        counts=counts,
        stored=stored,
        written=len(written),
        gap=gaps,
        retry_timeout=retry,
        retries=w.stats()["retries"],
        error=type(error).__name__ if error else None,
        later_write_error=type(later).__name__ if later else None,
        renumbered=len(renumbered),
        terminal_seq=terminal,
        took_s=round(took, 2),
    )
    assert not renumbered, f"seqs stored with another chunk than their write's: {renumbered[:5]}"
    assert len(entries) == len({fields["data"] for _, fields in entries}), "a chunk stored twice"
    assert counts["lost"] == 0
    assert counts["duplicated"] == 0
    assert w.stats()["retries"] > 0, "Redis never refused: nothing was tested"
    assert took < DEADLINE
    if freed == "in-time":
        assert error is None, repr(error)
        assert not gaps
        assert counts["received"] == acks.sent == len(written) == stopped_at + 1
        assert entries[-1][1]["data"] == "data: [DONE]\n\n"
        assert terminal == stopped_at + 1
    else:
        assert error is not None
        assert "out of memory" in str(error), repr(error)
        assert isinstance(later, SSERedisError), repr(later)
        assert "out of memory" in str(later), repr(later)
        # What landed is seq 1..m, the refused seqs are a gap, the error terminal follows it.
        assert terminal == len(written) + 1
        seqs = [seq for seq, _ in entries]
        assert seqs[:-1] == list(range(1, len(seqs)))
        assert seqs[-1] == terminal
        assert entries[-1][1].get("broken") == "true"


# --------------------------------------------------- cancelled async writes


def test_cancelled_async_writes_take_no_effect(
    backend, dedicated_server, fault_proxy, make_async_writer, plain_client, run_id
):
    """Defect 7: 200 ``AsyncStreamWriter.write`` tasks cancelled at random
    points (before they run, while the run opens, while waiting for room on a
    slow link); a write that raised CancelledError is retried.  Stored is
    exactly what the writes returned: no cancelled write stored, no retry
    duplicated, every seq under its own chunk."""
    server = dedicated_server()
    proxy = fault_proxy(server)
    r = plain_client(server.url)
    proxy.delay(0.01)  # the sender is slow, so writes wait for room and runs take a while to open
    w = make_async_writer(proxy.url, max_pending=4, flush_size=2, retry_timeout=20, write_timeout=20)
    rng = random.Random(5)
    runs = [run_id() for _ in range(20)]  # a new run every 10 tries: first writes get cancelled too
    returned: dict[str, list[tuple[int, str]]] = {run: [] for run in runs}
    cancelled = retried_ok = 0

    async def main() -> None:
        nonlocal cancelled, retried_ok
        for attempt in range(200):
            run = runs[attempt // 10]
            data = payload(attempt // 10, attempt)
            task = asyncio.create_task(w.write(run, data))
            for _ in range(rng.randint(0, 6)):
                await asyncio.sleep(rng.choice([0, 0, 0.001, 0.005]))
            task.cancel()
            try:
                seq = await task
            except asyncio.CancelledError:
                cancelled += 1
                seq = await asyncio.wait_for(w.write(run, data), DEADLINE)  # the retry
                retried_ok += 1
            returned[run].append((seq, data))
        await asyncio.wait_for(w.flush(), DEADLINE)

    started = time.monotonic()
    asyncio.run(main())
    took = time.monotonic() - started
    counts, stored = check_exact(r, runs, returned)
    sent = sum(len(v) for v in returned.values())
    report(
        "cancelled-async-writes",
        backend,
        sent=sent,
        counts=counts,
        stored=stored,
        tries=200,
        cancelled=cancelled,
        took_s=round(took, 2),
    )
    assert sent == 200
    assert 0 < cancelled < 200
    assert (counts["lost"], counts["duplicated"], counts["unexpected"]) == (0, 0, 0)
    assert counts["received"] == stored == 200, "a cancelled write was stored, or a retry twice"
    for run in runs:
        assert [seq for seq, _ in returned[run]] == list(range(1, len(returned[run]) + 1))
    assert took < DEADLINE
