"""Writer throughput and one-chunk latency: the Rust engine, its pure-Python
twin and the reference approach, side by side against one dedicated Valkey.

    python -m pytest benches/bench_writer.py --benchmark-json=/tmp/bench_writer.json -q
    python benches/report.py /tmp/bench_writer.json

Throughput: 100 runs x 1,000 chunks of ``llm_run_chunks`` (~300 B, the last
one ``data: [DONE]``) written from one thread, round robin (chunk i of every
run, then i + 1 ...), timed until everything is stored.  The ceiling is
``redis-benchmark`` pipelining the reference's XADD (``-P 64 -c 2``).  The
reference approach runs twice: "reference" is ``AsyncReferenceWriter``, the
way the original runs (asyncio, ``redis.asyncio``, each flush awaited inline;
its client's connect is inside the timing), "reference (sync)" is the same
buffering in synchronous redis-py, a far cheaper client: a flattering
stand-in, reported beside it.

Latency: one chunk at a time on an idle writer (1 ms or 20 ms of idleness
between chunks), from the ``write`` call to the entry reaching a blocked
``XREAD`` on another connection; "raw XADD" is that measurement's floor (one
redis-py XADD from the writing thread).
"""

from __future__ import annotations

import asyncio
import shutil
import time

import pytest
import redis

from _reference import AsyncReferenceWriter, ReferenceWriter
from sse_redis import StreamWriter
from sse_redis.tools.corpus import llm_run_chunks
from sse_redis.tools.measure import percentiles, redis_benchmark_rps, write_latency, writer_throughput

RUNS, CHUNKS = 100, 1000
CORPUS = llm_run_chunks(CHUNKS)
# The ceiling's payload: an ASCII corpus chunk of about 300 bytes.
PAYLOAD = min((c for c in CORPUS if c.isascii()), key=lambda c: abs(len(c) - 300))
ROUNDS = {"rust": 3, "python": 3, "reference": 1, "reference (sync)": 1}


def async_reference_throughput(url: str, run_ids: list[str], chunks: list[str], out: dict) -> float:
    """``writer_throughput`` for ``AsyncReferenceWriter``, in an event loop of its own."""

    async def main() -> float:
        writer = AsyncReferenceWriter(url)
        start = time.perf_counter()
        writer.start()
        for chunk in chunks:
            for run_id in run_ids:
                await writer.write(run_id, chunk)
        await writer.stop()
        out["pipelines"] = writer.pipelines
        return time.perf_counter() - start

    return asyncio.run(main())


def make_writer(way: str, url: str):
    if way == "reference (sync)":
        return ReferenceWriter(url)
    writer = StreamWriter(url, backend=way)
    _ = writer.engine  # the engine and its thread start outside the timing
    return writer


@pytest.mark.parametrize("way", ["rust", "python", "reference", "reference (sync)"])
def test_writer_throughput(benchmark, server, redis_client, way):
    benchmark.group = "writer throughput"
    state: dict = {"round": 0, "writer": None, "stats": []}
    slug = way.replace(" (sync)", "-sync")

    if way == "reference":

        def setup():
            redis_client.flushall()
            state["round"] += 1
            state["stats"].append({})
            runs = [f"tp-{slug}-{state['round']}-{i}" for i in range(RUNS)]
            return (server.url, runs, CORPUS, state["stats"][-1]), {}

        benchmark.pedantic(async_reference_throughput, setup=setup, rounds=ROUNDS[way])
    else:
        _throughput(benchmark, server, redis_client, way, slug, state)
    assert redis_client.xlen(f"sse:run:tp-{slug}-{state['round']}-{RUNS - 1}") == CHUNKS
    stats = benchmark.stats.stats
    total = RUNS * CHUNKS
    pipelines = state["stats"][-1].get("pipelines")
    benchmark.extra_info.update(
        scenario="writer throughput",
        way=way,
        chunks=total,
        rounds=stats.rounds,
        chunks_per_s=total / stats.median,
        best_chunks_per_s=total / stats.min,
        pipelines=pipelines,
        chunks_per_pipeline=total / pipelines if pipelines else None,
    )


def _throughput(benchmark, server, redis_client, way, slug, state):
    def setup():
        if state["writer"] is not None:
            _collect(state)
        redis_client.flushall()
        state["round"] += 1
        state["writer"] = make_writer(way, server.url)
        runs = [f"tp-{slug}-{state['round']}-{i}" for i in range(RUNS)]
        return (state["writer"], runs, CORPUS), {}

    benchmark.pedantic(writer_throughput, setup=setup, rounds=ROUNDS[way])
    _collect(state)


def _collect(state: dict) -> None:
    writer = state["writer"]
    if isinstance(writer, ReferenceWriter):
        state["stats"].append({"pipelines": writer.pipelines})
    else:
        state["stats"].append(writer.stats())
    writer.close()
    state["writer"] = None


@pytest.mark.skipif(shutil.which("redis-benchmark") is None, reason="redis-benchmark is not installed")
def test_writer_ceiling(benchmark, server, redis_client):
    benchmark.group = "writer throughput"
    rps: list[float] = []

    def once():
        redis_client.delete("bench:ceiling")
        rps.append(redis_benchmark_rps(server.port, PAYLOAD))

    benchmark.pedantic(once, rounds=3)
    rps.sort()
    benchmark.extra_info.update(
        scenario="writer throughput",
        way="ceiling",
        chunks=200_000,
        rounds=len(rps),
        chunks_per_s=rps[len(rps) // 2],
        best_chunks_per_s=rps[-1],
        payload_bytes=len(PAYLOAD),
    )


class RawXadd:
    """The floor of the latency measurement: one XADD per chunk, no engine."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.seq = 0

    def write(self, run_id: str, chunk: str) -> int:
        self.seq += 1
        self.client.xadd(
            "sse:run:" + run_id,
            {"seq_id": self.seq, "data": chunk, "timestamp": 1700000000000},
            id=f"0-{self.seq}",
            maxlen=10000,
            approximate=True,
        )
        return self.seq

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.client.close()


# Idle gap between two chunks -> samples.  How idle matters on a VM: after
# ~10 ms asleep, waking the threads involved costs a few hundred microseconds.
GAPS = {0.001: 500, 0.02: 150}


@pytest.mark.parametrize("gap", list(GAPS), ids=lambda g: f"gap {g * 1e3:g}ms")
@pytest.mark.parametrize("way", ["rust", "python", "raw XADD"])
def test_write_latency(benchmark, server, redis_client, way, gap):
    benchmark.group = "write latency"
    writer = RawXadd(server.url) if way == "raw XADD" else StreamWriter(server.url, backend=way)
    run_id = f"lat-{way.replace(' ', '-')}"
    samples: list[float] = []
    try:
        samples = benchmark.pedantic(
            write_latency,
            args=(writer, server.url, run_id, "sse:run:" + run_id, PAYLOAD),
            kwargs={"samples": GAPS[gap], "gap": gap},
            rounds=1,
        )
    finally:
        writer.close()
    figures = percentiles(samples)
    benchmark.extra_info.update(
        scenario="write latency",
        way=way,
        gap_ms=gap * 1e3,
        samples=figures["n"],
        **{f"{k}_ms": figures[k] * 1e3 for k in ("p50", "p90", "p99", "max", "mean")},
    )
