"""Measurement routines behind ``benches/`` (and, later, the CLI's ``bench``).

Tools: percentiles, resident memory, what a Redis server saw (commands,
connections, CPU), the ``redis-benchmark`` ceiling for XADD, and an arrival
watcher that timestamps entries the moment Redis pushes them to a blocked
``XREAD``.

Scenarios: writer throughput, one-chunk write latency, write-to-yield
delivery latency, the idle cost of many readers, and many concurrent readers
in one process.  They take anything shaped like the library's faces
(``write(run_id, chunk) -> seq`` and ``flush()`` for a writer, an async
``read(run_id, starting_after)`` iterator and ``close()`` for a reader), so
the library's two backends and a re-implementation of another approach run
through the very same code.

Delivery at scale (``delivery_at_scale``, issue 12): one writer process
pacing independent arrivals and reader processes (async readers, one event
loop each, disjoint shares of the runs), what Valkey and the clients spent
per delivered chunk and the write-to-yield latency; ``benches/bench_delivery.py``
and ``sse-redis bench`` run it.

``python -m sse_redis.tools.measure many-readers URL BACKEND`` runs the many-readers
scenario in a fresh interpreter (so its memory figure starts clean) and
prints the result as JSON.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import json
import math
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import redis

DONE = "data: [DONE]\n\n"
# Our own probe commands, left out of command counts (no reader sends them).
PROBE_COMMANDS = frozenset({"cmdstat_info", "cmdstat_client|list"})


# -- figures -------------------------------------------------------------------


def percentiles(samples: Sequence[float], points: Iterable[int] = (50, 90, 99)) -> dict[str, float]:
    """Nearest-rank percentiles (``p50``...), ``mean``, ``max`` and ``n``."""
    if not samples:
        return {"n": 0}
    ordered = sorted(samples)
    n = len(ordered)
    out: dict[str, float] = {f"p{p}": ordered[min(n - 1, max(0, math.ceil(p / 100 * n) - 1))] for p in points}
    out.update(mean=sum(ordered) / n, max=ordered[-1], min=ordered[0], n=n)
    return out


def rss_kib() -> int | None:
    """This process's resident set size in KiB (``VmRSS``; Linux only)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class ServerProbe:
    """A connection of its own to the server under test, to read what it saw."""

    def __init__(self, url: str) -> None:
        self.client: redis.Redis = redis.Redis.from_url(url)
        self.own_id: int = self.client.client_id()

    def command_calls(self) -> int:
        """Commands executed so far (``INFO commandstats``), our probe's own excluded.
        Commands a Lua script calls count too, as Redis counts them."""
        stats = self.client.info("commandstats")
        return sum(v["calls"] for k, v in stats.items() if k not in PROBE_COMMANDS)

    def cpu_seconds(self) -> float:
        """The server's CPU time so far (user + system)."""
        cpu = self.client.info("cpu")
        return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])

    def client_ids(self) -> set[int]:
        return {int(c["id"]) for c in self.client.client_list()}

    def new_clients(self, baseline: set[int]) -> int:
        """Connections open now that were not open at ``baseline`` (ours excluded)."""
        return len(self.client_ids() - baseline - {self.own_id})

    def close(self) -> None:
        self.client.close()


def redis_benchmark_rps(
    port: int,
    payload: str,
    *,
    host: str = "127.0.0.1",
    requests: int = 200_000,
    pipeline: int = 64,
    clients: int = 2,
    key: str = "bench:ceiling",
    binary: str = "redis-benchmark",
) -> float:
    """Requests per second ``redis-benchmark`` reaches with the reference's XADD
    (``MAXLEN ~ 10000``, ``*`` id, three fields): what the server and the
    loopback allow, the ceiling a writer can be held to."""
    args = [
        binary,
        "-h",
        host,
        "-p",
        str(port),
        "-P",
        str(pipeline),
        "-c",
        str(clients),
        "-n",
        str(requests),
        "-q",
        "XADD",
        key,
        "MAXLEN",
        "~",
        "10000",
        "*",
        "seq_id",
        "1",
        "data",
        payload,
        "timestamp",
        "1700000000000",
    ]
    out = subprocess.run(args, capture_output=True, text=True, timeout=300, check=True)
    found = re.findall(r"([0-9.]+) requests per second", out.stdout)
    if not found:
        raise RuntimeError(f"no 'requests per second' in redis-benchmark's output: {out.stdout[-300:]!r}")
    return float(found[-1])


# -- writer scenarios ------------------------------------------------------------


def writer_throughput(writer: Any, run_ids: Sequence[str], chunks: Sequence[str]) -> float:
    """Seconds to write chunk ``i`` of every run, then ``i + 1`` ... (round
    robin, one thread) and flush: every chunk stored when this returns."""
    write = writer.write
    start = time.perf_counter()
    for chunk in chunks:
        for run_id in run_ids:
            write(run_id, chunk)
    writer.flush()
    return time.perf_counter() - start


class ArrivalWatcher:
    """A thread blocked in ``XREAD BLOCK 0`` on one stream, on its own
    connection, stamping each entry (by ``seq_id``) with ``perf_counter_ns``
    as soon as Redis pushes it: when it became visible to readers."""

    def __init__(self, url: str, key: str, after_id: str = "$") -> None:
        self.key = key
        self.client: redis.Redis = redis.Redis.from_url(url, socket_timeout=None)
        self.arrived: dict[int, int] = {}
        self._cond = threading.Condition()
        self._last = after_id
        self._stop = False
        self._thread = threading.Thread(target=self._watch, name="arrival-watcher", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop:
            reply: Any = self.client.xread({self.key: self._last}, block=0)
            now = time.perf_counter_ns()
            with self._cond:
                for _key, entries in reply:
                    for entry_id, fields in entries:
                        self._last = entry_id
                        if fields.get(b"stop"):
                            self._stop = True
                        else:
                            self.arrived[int(fields[b"seq_id"])] = now
                self._cond.notify_all()

    def wait_for(self, seq: int, timeout: float = 5.0) -> int:
        """The arrival time of entry ``seq``, waiting for it up to ``timeout``."""
        with self._cond:
            if not self._cond.wait_for(lambda: seq in self.arrived, timeout):
                raise TimeoutError(f"entry {seq} of {self.key!r} did not arrive within {timeout}s")
            return self.arrived[seq]

    def close(self, url: str) -> None:
        """Stop the thread with a marker entry (no CLIENT UNBLOCK needed)."""
        stopper = redis.Redis.from_url(url)
        stopper.xadd(self.key, {"stop": "1"})
        stopper.close()
        self._thread.join(5)
        self.client.close()


def write_latency(
    writer: Any,
    url: str,
    run_id: str,
    key: str,
    chunk: str,
    *,
    samples: int = 500,
    warmup: int = 20,
    gap: float = 0.001,
) -> list[float]:
    """Seconds from ``writer.write`` being called to the entry reaching a
    blocked ``XREAD`` on another connection, one chunk at a time with ``gap``
    of idleness in between (so no chunk shares a batch).  The first write of
    the run (which looks the run up in Redis) and ``warmup`` more are left out."""
    first = writer.write(run_id, chunk)
    writer.flush()
    watcher = ArrivalWatcher(url, key, after_id="$")
    try:
        time.sleep(0.05)  # let the watcher block
        out = []
        for i in range(warmup + samples):
            start = time.perf_counter_ns()
            seq = writer.write(run_id, chunk)
            arrived = watcher.wait_for(seq)
            if i >= warmup:
                out.append((arrived - start) / 1e9)
            time.sleep(gap)
        assert seq == first + warmup + samples
        return out
    finally:
        watcher.close(url)


# -- reader scenarios ------------------------------------------------------------


async def _close(obj: Any) -> None:
    result = obj.close()
    if inspect.isawaitable(result):
        await result


async def _stop(tasks: Sequence[asyncio.Future[Any]], reader: Any) -> None:
    """Cancel the consumers, then close the reader.  A consumer that lost its
    cancellation (redis-py sometimes swallows one) gets it again once the
    reader is closed."""
    for task in tasks:
        task.cancel()
    _, pending = await asyncio.wait(tasks, timeout=5)
    await _close(reader)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=5)


def delivery_latency(
    writer: Any,
    reader: Any,
    run_ids: Sequence[str],
    chunk: str,
    probe: ServerProbe,
    *,
    rate_hz: float = 100.0,
    duration: float = 3.0,
    arrivals: str = "together",
) -> dict[str, Any]:
    """Write-to-yield latency with ``len(run_ids)`` runs streaming at once.

    Every run gets one chunk first and one async consumer per run starts
    reading from the beginning; once each has yielded that chunk, a thread
    writes one chunk to every run each ``1 / rate_hz`` seconds (on an absolute
    schedule) for ``duration`` seconds, then ends every run.  ``arrivals``:
    ``"together"``, every run's chunk in the same instant of each period (a
    burst of ``len(run_ids)`` chunks: the worst case); ``"independent"``, each
    run on its own phase, spread evenly over the period (as unrelated runs
    stream).  A chunk's
    latency is the time its consumer yields it minus the time its ``write``
    was called (``perf_counter_ns``, one process).  The terminal chunk is
    left out.  ``connections`` counts the connections that appeared once the
    reader started (the writer's are already open then).  A writer with a
    ``tick()`` method gets it called every period (a periodic flush)."""
    if arrivals not in ("together", "independent"):
        raise ValueError(f"arrivals must be 'together' or 'independent', not {arrivals!r}")
    ticks = int(duration * rate_hz)
    period_ns = int(1e9 / rate_hz)
    phase_ns = period_ns // len(run_ids) if arrivals == "independent" else 0
    runs = list(run_ids)
    wrote: list[list[int]] = [[0] * (ticks + 3) for _ in runs]
    for i, run_id in enumerate(runs):
        wrote[i][1] = time.perf_counter_ns()
        writer.write(run_id, chunk)
    writer.flush()
    baseline = probe.client_ids()
    connections: list[int] = []
    latencies: list[int] = []
    received = [0] * len(runs)
    tick = getattr(writer, "tick", None)
    errors: list[BaseException] = []

    def pace() -> None:
        try:
            start = time.perf_counter_ns()
            for t in range(ticks):
                due = start + t * period_ns
                delay = due - time.perf_counter_ns()
                if delay > 0:
                    time.sleep(delay / 1e9)
                seq = t + 2
                for i, run_id in enumerate(runs):
                    if phase_ns:
                        delay = due + i * phase_ns - time.perf_counter_ns()
                        if delay > 0:
                            time.sleep(delay / 1e9)
                    wrote[i][seq] = time.perf_counter_ns()
                    writer.write(run_id, chunk)
                if tick is not None:
                    tick()
                if t == ticks // 2:
                    connections.append(probe.new_clients(baseline))
            for i, run_id in enumerate(runs):
                wrote[i][ticks + 2] = time.perf_counter_ns()
                writer.write(run_id, DONE)
            writer.flush()
        except BaseException as exc:  # surfaced by the caller
            errors.append(exc)

    async def consume(i: int, run_id: str, ready: list[int], all_ready: asyncio.Event) -> None:
        times = wrote[i]
        n = 0
        async for got in reader.read(run_id, 0):
            now = time.perf_counter_ns()
            n += 1
            if n == 1:
                ready[0] += 1
                if ready[0] == len(runs):
                    all_ready.set()
            elif not got.startswith("data: [DONE]"):
                latencies.append(now - times[n])
        received[i] = n

    async def main() -> float:
        ready = [0]
        all_ready = asyncio.Event()
        tasks = [asyncio.ensure_future(consume(i, r, ready, all_ready)) for i, r in enumerate(runs)]
        await asyncio.wait_for(all_ready.wait(), 60)
        pacer = threading.Thread(target=pace, name="pacer", daemon=True)
        server_cpu = probe.cpu_seconds()
        loop_cpu = time.thread_time()
        started = time.perf_counter()
        pacer.start()
        await asyncio.wait_for(asyncio.gather(*tasks), duration + 60)
        elapsed = time.perf_counter() - started
        figures["loop_cpu_s"] = time.thread_time() - loop_cpu
        figures["server_cpu_s"] = probe.cpu_seconds() - server_cpu
        connections.append(probe.new_clients(baseline))
        await asyncio.to_thread(pacer.join, 10)
        await _close(reader)
        return elapsed

    figures: dict[str, float] = {}
    elapsed = asyncio.run(main())
    if errors:
        raise errors[0]
    expected = ticks + 2
    delivered = sum(received)
    return {
        "latencies": [x / 1e9 for x in latencies],
        "chunks_each": expected,
        "all_received": all(n == expected for n in received),
        "received_min": min(received),
        "connections": max(connections),
        "elapsed_s": elapsed,
        # the event loop's CPU time per chunk it yielded (consumers included)
        "loop_us_per_chunk": figures["loop_cpu_s"] / delivered * 1e6,
        "server_cpu_pct": 100 * figures["server_cpu_s"] / elapsed,
    }


def idle_cost(
    reader: Any,
    run_ids: Sequence[str],
    probe: ServerProbe,
    *,
    window: float = 5.0,
    settle: float = 0.5,
) -> dict[str, Any]:
    """What idle readers cost Redis: one async consumer per run (each run's
    stream exists and holds one chunk, never more); once every consumer has
    yielded that chunk and ``settle`` seconds passed, count the server's
    commands, CPU time and our own CPU time over ``window`` seconds, and the
    connections the reader opened."""

    async def consume(run_id: str, ready: list[int], all_ready: asyncio.Event) -> None:
        async for _chunk in reader.read(run_id, 0):
            ready[0] += 1
            if ready[0] == len(run_ids):
                all_ready.set()

    async def main() -> dict[str, Any]:
        baseline = probe.client_ids()
        ready = [0]
        all_ready = asyncio.Event()
        started = time.perf_counter()
        tasks = [asyncio.ensure_future(consume(r, ready, all_ready)) for r in run_ids]
        await asyncio.wait_for(all_ready.wait(), 120)
        subscribed = time.perf_counter() - started
        await asyncio.sleep(settle)
        calls0, cpu0, own0, t0 = probe.command_calls(), probe.cpu_seconds(), time.process_time(), time.perf_counter()
        await asyncio.sleep(window)
        calls1, cpu1, own1, t1 = probe.command_calls(), probe.cpu_seconds(), time.process_time(), time.perf_counter()
        connections = probe.new_clients(baseline)
        await _stop(tasks, reader)
        span = t1 - t0
        return {
            "readers": len(run_ids),
            "window_s": span,
            "commands": calls1 - calls0,
            "commands_per_s": (calls1 - calls0) / span,
            "server_cpu_pct": 100 * (cpu1 - cpu0) / span,
            "client_cpu_pct": 100 * (own1 - own0) / span,
            "connections": connections,
            "subscribe_s": subscribed,
        }

    return asyncio.run(main())


def many_readers(
    url: str,
    backend: str,
    *,
    streams: int = 100,
    per_stream: int = 100,
    chunks: int = 10,
    timeout: float = 300.0,
) -> dict[str, Any]:
    """``streams * per_stream`` async readers in one event loop, ``per_stream``
    on each stream.  Each stream holds one chunk when the readers start; once
    every reader has yielded it (all subscribed, all waiting), resident memory
    is read, then ``chunks - 1`` more chunks and the terminal one are written
    to every stream and each reader must get exactly its ``chunks + 1``
    chunks, ids 1, 2, ... in order.  Memory per reader is the growth from
    before the readers were created (writer and reader hub already warm) to
    that waiting point, divided by their number.  A reader keeps no chunk.
    ``connections`` counts those the reader opened (the writer's left out)."""
    from ..reader import AsyncStreamReader
    from ..writer import StreamWriter

    prefix = f"many-{backend}-{time.time_ns()}"
    runs = [f"{prefix}-{s}" for s in range(streams)]
    body = "data: " + json.dumps({"message_type": "assistant_message", "run_id": None, "content": "x" * 200}) + "\n\n"
    writer = StreamWriter(url, backend=backend)
    reader = AsyncStreamReader(url, backend=backend)
    probe = ServerProbe(url)
    total = streams * per_stream
    expected = chunks + 1
    for run_id in [*runs, prefix + "-warm"]:
        writer.write(run_id, body)
    writer.write(prefix + "-warm", DONE)
    writer.flush()

    async def main() -> dict[str, Any]:
        baseline = probe.client_ids()  # the writer's connections are open already
        async for _chunk in reader.read(prefix + "-warm"):  # hub, waker and connections up
            pass
        ready = [0]
        all_ready = asyncio.Event()
        received = [0] * total
        bad = [0]

        async def consume(index: int, run_id: str) -> None:
            n = 0
            async for chunk in reader.read(run_id):
                n += 1
                if not chunk.endswith(f"\nid: {n}\n\n"):
                    bad[0] += 1
                del chunk
                if n == 1:
                    ready[0] += 1
                    if ready[0] == total:
                        all_ready.set()
            received[index] = n

        gc.collect()
        rss_before = rss_kib()
        started = time.perf_counter()
        tasks = [
            asyncio.ensure_future(consume(s * per_stream + r, runs[s]))
            for s in range(streams)
            for r in range(per_stream)
        ]
        await asyncio.wait_for(all_ready.wait(), timeout)
        subscribed = time.perf_counter() - started
        await asyncio.sleep(0.2)
        gc.collect()
        rss_waiting = rss_kib()
        connections = probe.new_clients(baseline)

        def write_rest() -> None:
            for _ in range(chunks - 1):
                for run_id in runs:
                    writer.write(run_id, body)
            for run_id in runs:
                writer.write(run_id, DONE)
            writer.flush()

        started = time.perf_counter()
        await asyncio.gather(asyncio.to_thread(write_rest), asyncio.wait_for(asyncio.gather(*tasks), timeout))
        delivered = time.perf_counter() - started
        return {
            "backend": backend,
            "readers": total,
            "streams": streams,
            "chunks_each": expected,
            "all_received": bad[0] == 0 and all(n == expected for n in received),
            "received_min": min(received),
            "out_of_order": bad[0],
            "chunks_delivered": sum(received),
            "subscribe_s": subscribed,
            "deliver_s": delivered,
            "rss_before_kib": rss_before,
            "rss_waiting_kib": rss_waiting,
            "bytes_per_reader": (rss_waiting - rss_before) * 1024 / total
            if rss_before is not None and rss_waiting is not None
            else None,
            "connections": connections,
        }

    try:
        return asyncio.run(main())
    finally:
        reader.close()
        writer.close()
        probe.close()


# -- delivery at scale, across processes (issue 12) ------------------------------

# Hub counters summed over a measurement's reader processes (their change over
# the window) and their state at its end.
HUB_COUNTERS = ("notices", "fetches", "xreads", "probes", "checks", "missed", "reconnects", "unblocks")
HUB_GAUGES = ("connections", "listeners", "blockers", "watched", "listened", "subscriptions")


def stamped_chunk(t_ns: int, size: int = 300) -> str:
    """An assistant-message chunk of about ``size`` bytes carrying ``t_ns``
    (``time.time_ns()`` at the write call), so a reader in another process
    can tell how long it took to reach it (one machine, one clock)."""
    head = f'data: {{"message_type":"assistant_message","t":{t_ns},"content":"'
    return head + "x" * max(0, size - len(head) - 4) + '"}\n\n'


def chunk_stamp(chunk: str) -> int:
    """The ``t_ns`` a ``stamped_chunk`` carries."""
    at = chunk.index('"t":') + 4
    return int(chunk[at : chunk.index(",", at)])


def _recv(conn: Any, timeout: float, who: str) -> Any:
    if not conn.poll(timeout):
        raise TimeoutError(f"{who} said nothing within {timeout:.0f} s")
    return conn.recv()


def delivery_writer_process(
    conn: Any, url: str, backend: str, active: list[str], idle: list[str], per_run: int, rate: float
) -> None:
    """A writer process (``multiprocessing`` target): a first chunk to every
    run (``seeded``), then on ``go`` ``per_run`` more to each active run, one
    every ``1 / rate`` seconds on an absolute schedule, round robin (each run
    on its own phase: independent arrivals), each stamped at its write call;
    reports its CPU time and how well it kept the schedule."""
    from ..writer import StreamWriter

    writer = StreamWriter(url, backend=backend)
    try:
        for run_id in [*active, *idle]:
            writer.write(run_id, stamped_chunk(time.time_ns()))
        writer.flush()
        conn.send("seeded")
        if conn.recv() != "go":
            return
        total, runs = per_run * len(active), len(active)
        gap_ns = 1e9 / rate
        cpu = time.process_time()
        start = time.perf_counter_ns()
        late_ns = 0
        for j in range(total):
            due = start + int(j * gap_ns)
            now = time.perf_counter_ns()
            if due > now:
                time.sleep((due - now) / 1e9)
            else:
                late_ns = max(late_ns, now - due)
            writer.write(active[j % runs], stamped_chunk(time.time_ns()))
        writer.flush()
        elapsed = (time.perf_counter_ns() - start) / 1e9
        conn.send(
            {"chunks": total, "elapsed_s": elapsed, "cpu_s": time.process_time() - cpu, "late_max_s": late_ns / 1e9}
        )
        conn.recv()  # stop
    finally:
        writer.close()


def delivery_reader_process(
    conn: Any,
    url: str,
    backend: str,
    options: dict[str, Any],
    active: list[str],
    idle: list[str],
    per_run: int,
) -> None:
    """A reader process (``multiprocessing`` target): one ``AsyncStreamReader``
    (``options``: ``delivery``, ``check_interval``...) and one consumer task
    per run in one event loop, every run read from its start.  Says
    ``ready`` once every run's first chunk arrived; on ``go`` (with a time
    limit) takes each active run's next ``per_run`` chunks, checking their ids,
    and reports the write-to-yield latencies, its CPU time and its hub's
    counters over that window."""
    asyncio.run(_delivery_reader(conn, url, backend, options, active, idle, per_run))


async def _delivery_reader(
    conn: Any, url: str, backend: str, options: dict[str, Any], active: list[str], idle: list[str], per_run: int
) -> None:
    from ..reader import AsyncStreamReader

    reader = AsyncStreamReader(url, backend=backend, **options)
    loop = asyncio.get_running_loop()
    runs = len(active) + len(idle)
    ready, done = asyncio.Event(), asyncio.Event()
    counts = {"ready": 0, "done": 0, "bad": 0, "received": 0}
    latencies: list[int] = []
    last = per_run + 1

    async def consume(run_id: str, live: bool) -> None:
        n = 0
        async for chunk in reader.read(run_id, 0):
            now = time.time_ns()
            n += 1
            if not chunk.endswith(f"\nid: {n}\n\n"):
                counts["bad"] += 1
            if n == 1:
                counts["ready"] += 1
                if counts["ready"] == runs:
                    ready.set()
                continue
            latencies.append(now - chunk_stamp(chunk))
            counts["received"] += 1
            if live and n == last:
                counts["done"] += 1
                if counts["done"] == len(active):
                    done.set()

    tasks = [asyncio.ensure_future(consume(r, True)) for r in active]
    tasks += [asyncio.ensure_future(consume(r, False)) for r in idle]
    try:
        await asyncio.wait_for(ready.wait(), 300)
        conn.send("ready")
        go = await loop.run_in_executor(None, conn.recv)
        hub = reader.sync.hub
        stats0, cpu0 = hub.stats(), time.process_time()
        complete = True
        try:
            await asyncio.wait_for(done.wait(), go["limit_s"])
        except asyncio.TimeoutError:
            complete = False
        cpu, stats1 = time.process_time() - cpu0, hub.stats()
        conn.send(
            {
                "cpu_s": cpu,
                "latencies_ns": latencies,
                "complete": complete,
                "received": counts["received"],
                "expected": per_run * len(active),
                "out_of_order": counts["bad"],
                "counters": {k: stats1.get(k, 0) - stats0.get(k, 0) for k in HUB_COUNTERS},
                "gauges": {k: stats1.get(k, 0) for k in HUB_GAUGES},
            }
        )
        await loop.run_in_executor(None, conn.recv)  # stop
    finally:
        await _stop(tasks, reader)


def _delete_runs(client: redis.Redis, run_ids: Sequence[str]) -> None:
    """Deletes the runs' streams (default key layout), a thousand per round trip."""
    from ..keys import KeyLayout

    layout = KeyLayout()
    for i in range(0, len(run_ids), 1000):
        pipe = client.pipeline(transaction=False)
        for run_id in run_ids[i : i + 1000]:
            pipe.unlink(layout.key(run_id))
        pipe.execute()


def delivery_at_scale(
    url: str,
    *,
    backend: str,
    delivery: str,
    active: int,
    rate: float,
    window: float,
    idle: int = 0,
    processes: int = 1,
    check_interval: float | None = None,
    settle: float = 1.0,
    timeout: float = 300.0,
) -> dict[str, Any]:
    """Write-to-yield delivery with writer and readers in separate processes.

    A writer process writes a first chunk to ``active + idle`` runs; reader
    processes (``processes``, spawned, each with a disjoint share of the
    active and of the idle runs, fan-out 1) read every run with async
    readers (``delivery``; ``check_interval`` when given, else the default)
    until each has its first chunk.  After ``settle`` seconds, the writer
    writes ``rate`` chunks/s in total to the active runs (independent
    arrivals: round robin at even spacing) for ``window`` seconds; the idle
    runs stay watched and never change.  Over the window, from ``go`` until
    every reader has every chunk: Valkey's CPU (``INFO cpu`` user + sys),
    the readers' and the writer's CPU (``time.process_time`` in each), the
    latencies (``time.time_ns`` at the write call, carried in the chunk, to
    the consumer's yield), the readers' connections (``CLIENT LIST``, at
    half the window) and the hubs' counters.  Per-chunk figures divide by
    the chunks written in the window (each stored once, delivered once)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    tag = f"d{time.time_ns() % 10**10}"
    per_run = max(1, round(window * rate / active))
    active_runs = [f"{tag}-a{i}" for i in range(active)]
    idle_runs = [f"{tag}-i{i}" for i in range(idle)]
    options: dict[str, Any] = {"delivery": delivery}
    if check_interval is not None:
        options["check_interval"] = check_interval
    probe = ServerProbe(url)
    started: list[Any] = []
    pipes: list[Any] = []
    try:
        here, there = ctx.Pipe()
        writer = ctx.Process(
            target=delivery_writer_process,
            args=(there, url, backend, active_runs, idle_runs, per_run, rate),
            name="delivery-writer",
            daemon=True,
        )
        writer.start()
        started.append(writer)
        writer_conn = here
        if _recv(writer_conn, timeout, "the writer") != "seeded":
            raise RuntimeError("the writer did not seed the runs")
        baseline = probe.client_ids()
        setup = time.perf_counter()
        for p in range(processes):
            here, there = ctx.Pipe()
            proc = ctx.Process(
                target=delivery_reader_process,
                args=(there, url, backend, options, active_runs[p::processes], idle_runs[p::processes], per_run),
                name=f"delivery-reader-{p}",
                daemon=True,
            )
            proc.start()
            started.append(proc)
            pipes.append(here)
        for p, conn in enumerate(pipes):
            if _recv(conn, timeout, f"reader {p}") != "ready":
                raise RuntimeError(f"reader {p} did not get ready")
        subscribe_s = time.perf_counter() - setup
        time.sleep(settle)
        limit = 2 * window + 60
        cpu0, t0 = probe.cpu_seconds(), time.perf_counter()
        for conn in pipes:
            conn.send({"limit_s": limit})
        writer_conn.send("go")
        time.sleep(window / 2)
        connections = probe.new_clients(baseline)
        wrote = _recv(writer_conn, limit + 30, "the writer")
        reports = [_recv(conn, limit + 30, f"reader {p}") for p, conn in enumerate(pipes)]
        cpu1, t1 = probe.cpu_seconds(), time.perf_counter()
        for conn in [*pipes, writer_conn]:
            conn.send("stop")
        for proc in started:
            proc.join(30)
    finally:
        for proc in started:
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
        try:
            _delete_runs(probe.client, [*active_runs, *idle_runs])
        finally:
            probe.close()
    chunks = wrote["chunks"]
    latencies = [x / 1e9 for r in reports for x in r["latencies_ns"]]
    counters = {k: sum(r["counters"][k] for r in reports) for k in HUB_COUNTERS}
    gauges = {k: sum(r["gauges"][k] for r in reports) for k in HUB_GAUGES}
    return {
        "backend": backend,
        "delivery": delivery,
        "active": active,
        "idle": idle,
        "processes": processes,
        "rate": rate,
        "chunks": chunks,
        "window_s": t1 - t0,
        "rate_achieved": chunks / wrote["elapsed_s"],
        "writer_late_max_s": wrote["late_max_s"],
        "subscribe_s": subscribe_s,
        "server_us_per_chunk": (cpu1 - cpu0) / chunks * 1e6,
        "server_cpu_pct": 100 * (cpu1 - cpu0) / (t1 - t0),
        "reader_us_per_chunk": sum(r["cpu_s"] for r in reports) / chunks * 1e6,
        "writer_us_per_chunk": wrote["cpu_s"] / chunks * 1e6,
        "latencies": latencies,
        "all_received": all(r["complete"] and r["received"] == r["expected"] for r in reports),
        "received": sum(r["received"] for r in reports),
        "out_of_order": sum(r["out_of_order"] for r in reports),
        "connections": connections,
        "counters": counters,
        "gauges": gauges,
    }


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) >= 3 and args[0] == "many-readers":
        options = {k: int(v) for k, v in (a.split("=", 1) for a in args[3:])}
        print(json.dumps(many_readers(args[1], args[2], **options)))
        return
    sys.exit("usage: python -m sse_redis.tools.measure many-readers URL rust|python [streams=N per_stream=N chunks=N]")


if __name__ == "__main__":
    main()
