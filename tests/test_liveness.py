"""Liveness of the reader hub's links, end to end through the fault proxy
(``fault_proxy.py``): a link that goes silent (no FIN, no RST, the proxy
keeps ACKing, so TCP keepalive cannot see it) is replaced within the
README's bound with default settings, no chunk lost or repeated; and the
async reader's stall timer is its idle clock, like the sync one's.  Both
engines, real Valkey servers, never a mock.

Each scenario prints its ``FAULTS`` line (``test_faults.report``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from sse_redis import AsyncStreamReader, StreamReader, StreamStalled
from test_faults import DEADLINE, Background, check_content, payload, report, seq_of, stored_seqs, tally, wait_for

# README: with default settings a silent link is replaced within 25 s: the
# listener's probe (every check_interval, 10 s) goes unconfirmed for 2 s, and
# the fetcher, whose safety check may be waiting on the same silent route,
# gives up at socket_timeout (10 s); then a reconnect and a catch-up.
REPLACED_WITHIN = 25.0
PACE = 0.05  # s between two chunks of the live run
LIVE_LATENCY = 3.0  # a read started after recovery: each chunk within this of its write (not after a 10 s timeout)


def until(predicate: Callable[[], bool], timeout: float = DEADLINE) -> float | None:
    """Seconds until ``predicate`` held, or ``None`` if it did not within
    ``timeout`` (the scenario still reports what it saw, then fails)."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            return None
        time.sleep(0.005)
    return time.monotonic() - started


class TimedFollower:
    """A sync read in a thread of its own: each chunk's seq and arrival time
    (pings left out), and how the read ended."""

    def __init__(self, reader: StreamReader, run: str, **read_options: Any) -> None:
        self.run = run
        self.chunks: list[str] = []
        self.arrivals: list[tuple[int, float]] = []
        self.error: BaseException | None = None
        self.started = time.monotonic()
        self._done = threading.Event()

        def follow() -> None:
            try:
                for chunk in reader.read(run, **read_options):
                    if not chunk.startswith(":"):
                        self.arrivals.append((seq_of(chunk), time.monotonic()))
                        self.chunks.append(chunk)
            except BaseException as exc:
                self.error = exc
            finally:
                self._done.set()

        threading.Thread(target=follow, name=f"follow-{run}", daemon=True).start()

    @property
    def seqs(self) -> list[int]:
        return [seq for seq, _ in list(self.arrivals)]

    def newest(self) -> int:
        return self.arrivals[-1][0] if self.arrivals else 0

    def join(self, timeout: float = DEADLINE, *, required: bool = True) -> None:
        """Wait for the read to end; ``required``: fail the test if it does not
        (else give it a few seconds, so that the report says what it got)."""
        if not self._done.wait(timeout if required else 3.0) and required:
            pytest.fail(f"read of {self.run} did not end within {timeout}s; got {len(self.chunks)} chunks")


class LiveRun:
    """A writer writing one run at a steady pace until stopped, then [DONE];
    when each seq's ``write`` returned."""

    def __init__(self, writer: Any, run: str) -> None:
        self.run = run
        self.written = 0
        self.written_at: dict[int, float] = {}
        self._stop = threading.Event()

        def write() -> None:
            i = 0
            while not self._stop.is_set():
                i += 1
                assert writer.write(run, payload(i)) == i
                self.written_at[i] = time.monotonic()
                self.written = i
                time.sleep(PACE)
            assert writer.complete(run) == i + 1
            self.written = i + 1

        self._thread = Background(write, "writer")

    def finish(self) -> int:
        """Stop, write [DONE]; the seq of [DONE]."""
        self._stop.set()
        self._thread.join()
        return self.written


@pytest.mark.parametrize("fault", ["freeze", "blackhole"])
def test_silent_link_replaced(
    backend, dedicated_server, fault_proxy, make_writer, open_reader, plain_client, run_id, fault
):
    """Everything the reader's hub does goes through the proxy (its blocking
    link and its fetcher's link); the writer writes to the server directly.
    Mid-run, the proxy makes every link it holds silent (``freeze``: held;
    ``blackhole``: dropped), while new connections pass, as after a dropped
    NAT entry.  With default hub settings:

    * the read that was following gets the chunks written since within 20 s
      (its blocking link replaced), and every chunk once, in order;
    * ``blackhole``: a read started during the silence (its catch-up on the
      fetcher's silent link) gets every chunk too: the fetcher's read timed
      out, its link was dropped and made again;
    * a read started after the recovery sees live chunks as they are written
      (the fetcher's idle link, silent too, was not waited out), with an
      idle_timeout of 5 s that a stuck hub would trip (false StreamStalled).
    """
    server = dedicated_server()
    proxy = fault_proxy(server)
    run = run_id()
    reader = open_reader(proxy.url, idle_timeout=60.0)  # every hub setting at its default
    first = TimedFollower(reader, run)
    live = LiveRun(make_writer(server.url), run)
    try:
        wait_for(lambda: first.newest() >= 20, what="the first read to follow the live run")
        accepted = proxy.accepted
        getattr(proxy, fault)(new=False)
        silenced = time.monotonic()
        at_fault = live.written
        during = TimedFollower(reader, run) if fault == "blackhole" else None

        # The next chunk written after the fault reaches the first read: its
        # blocking link was found dead and replaced.
        replaced = until(lambda: first.newest() > at_fault + 1)
        replaced_s = time.monotonic() - silenced if replaced is not None else None

        late_from = live.written
        late = TimedFollower(reader, run, starting_after=late_from, idle_timeout=5.0)
        until(lambda: len(late.arrivals) >= 20)
        if fault == "freeze":
            proxy.heal()  # the held bytes flow to links the hub has dropped: nothing may read them
            time.sleep(1.0)
    finally:
        done = live.finish()
    for follower in (first, late, during):
        if follower is not None:
            follower.join(required=replaced is not None)

    stored = stored_seqs(plain_client(server.url), run)
    expected = list(range(1, done + 1))
    counts = tally(expected, first.seqs)
    late_latency = max((t - live.written_at.get(seq, t) for seq, t in late.arrivals), default=float("inf"))
    extra: dict[str, Any] = dict(
        fault=fault,
        replaced_s=replaced_s and round(replaced_s, 2),
        written_during_fault=live.written - at_fault,
        late_read_max_latency_s=round(late_latency, 3),
        new_connections=proxy.accepted - accepted,
        hub_reconnects=reader.hub.stats()["reconnects"],
        first_error=type(first.error).__name__ if first.error else None,
        late_error=type(late.error).__name__ if late.error else None,
    )
    late_counts = tally(list(range(late_from + 1, done + 1)), late.seqs)
    extra.update(
        late_received=late_counts["received"], late_lost=late_counts["lost"], late_duplicated=late_counts["duplicated"]
    )
    if during is not None:
        during_counts = tally(expected, during.seqs)
        extra.update(
            during_received=during_counts["received"],
            during_lost=during_counts["lost"],
            during_duplicated=during_counts["duplicated"],
            during_error=type(during.error).__name__ if during.error else None,
        )
    report("silent-link-" + fault, backend, sent=len(stored), counts=counts, **extra)

    assert replaced_s is not None, "the silent link was never replaced"
    assert replaced_s < REPLACED_WITHIN, f"silent link replaced after {replaced_s} s"
    assert stored == expected
    assert first.error is None, repr(first.error)
    assert late.error is None, repr(late.error)  # no false StreamStalled
    assert first.seqs == expected  # every chunk, once, in order
    check_content(first.chunks, run)
    assert proxy.accepted > accepted, "no new connection was made"
    assert late.seqs == list(range(late_from + 1, done + 1))
    assert late_latency < LIVE_LATENCY, f"a chunk reached the late read {late_latency:.1f}s after its write"
    if during is not None:
        assert during.error is None, repr(during.error)
        assert during.seqs == expected


def test_stall_timer_is_idle_timeout_sync_and_async(backend, dedicated_server, make_writer, run_id):
    """Issue 10, defect 12: reading at the top of an idle stream,
    ``idle_timeout=3`` ends the read with StreamStalled after about 3 s on
    the sync face and on the async one alike (not after retry_timeout, 30 s:
    the hub wakes the read when its subscription leaves the pending state)."""
    server = dedicated_server()
    run, n = run_id(), 5
    writer = make_writer(server.url)
    for i in range(1, n + 1):
        writer.write(run, payload(i))
    writer.flush()
    idle = 3.0

    sync_reader = StreamReader(server.url, backend=backend)
    async_reader = AsyncStreamReader(server.url, backend=backend)
    try:
        started = time.monotonic()
        with pytest.raises(StreamStalled):
            for _ in sync_reader.read(run, starting_after=n, idle_timeout=idle):
                pass
        sync_s = time.monotonic() - started

        async def read_async() -> float:
            began = time.monotonic()
            with pytest.raises(StreamStalled):
                async for _ in async_reader.read(run, starting_after=n, idle_timeout=idle):
                    pass
            return time.monotonic() - began

        async_s = asyncio.run(asyncio.wait_for(read_async(), 4 * idle))  # retry_timeout (30 s) would be a hang here
    finally:
        async_reader.close()
        sync_reader.close()

    counts = tally([], [])
    report(
        "stall-timer",
        backend,
        sent=n,
        counts=counts,
        idle_timeout=idle,
        sync_stalled_s=round(sync_s, 2),
        async_stalled_s=round(async_s, 2),
    )
    for face, took in (("sync", sync_s), ("async", async_s)):
        assert idle - 0.2 <= took <= 2 * idle, f"{face} read stalled after {took:.2f}s, idle_timeout={idle}"


def test_an_outage_costs_no_busy_reconnect_loop(backend, dedicated_server, make_writer, open_reader, run_id):
    """While Redis is down, the hub's threads pause longer after each failure
    in a row (up to 1 s), so a 3 s outage costs a handful of reconnects (and
    WARNINGs), not one every 50 ms; the read still gets every chunk once
    Redis is back."""
    server = dedicated_server()
    writer = make_writer(server.url, retry_timeout=20.0)
    run = run_id()
    writer.write(run, payload(1))
    writer.flush()
    reader = open_reader(server.url, retry_timeout=20.0, missing_timeout=20.0, idle_timeout=20.0)
    server.stop()
    got: list[str] = []
    follower = Background(lambda: got.extend(reader.read(run)), "reader")
    time.sleep(3.0)
    reconnects = reader.hub.stats()["reconnects"]
    server.start()  # no data kept: the run is written again from seq 1
    writer.delete(run)
    for i in range(1, 4):
        writer.write(run, payload(i))
    writer.complete(run)
    follower.join()
    assert [seq_of(c) for c in got] == [1, 2, 3, 4]
    # 50 ms pauses would be ~60 in 3 s; doubling up to 1 s gives about 7 a thread.
    assert reconnects <= 20, reconnects
