"""Reader delivery latency, idle cost, resume cost and 10,000 concurrent
readers: the Rust hub, its pure-Python twin and the reference approach, side
by side against one dedicated Valkey.

    python -m pytest benches/bench_reader.py --benchmark-json=/tmp/bench_reader.json -q
    python benches/report.py /tmp/bench_reader.json

* delivery latency: 100 runs written at 100 chunks/s each (one chunk to
  every run each 10 ms, from a thread) for 3 s; one async consumer per run in
  one event loop; latency = consumer yields the chunk - ``write`` was called.
  Library rows pair the writer and the reader of one backend; "reference"
  pairs ``ReferenceWriter`` (synchronous stand-in, its periodic flush called
  from the writing thread) with ``ReferenceReader`` (asyncio polling);
  "reference reader, rust writer" isolates what the polling costs.
* idle cost: 1,000 async readers on 1,000 existing streams that never change;
  Redis commands per second over a window (5 s; 2 s for the reference, whose
  rate is steady), from INFO commandstats, our INFO/CLIENT LIST left out.
* resume: a complete 10,000-entry stream; read its last chunk
  (``starting_after=9999``) vs its first chunk (from 0, then stop): one fresh
  sync read per round, rounds back to back; the ratio is tail / head.
* many readers: 100 streams x 100 async readers each in a fresh interpreter
  (``python -m sse_redis.tools.measure many-readers``); each reader must get all 11
  chunks (10 + terminal); resident memory growth per waiting reader.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from _reference import ReferenceReader, ReferenceWriter, SyncReferenceReader
from sse_redis import AsyncStreamReader, StreamReader, StreamWriter
from sse_redis.tools.corpus import llm_run_chunks
from sse_redis.tools.measure import ServerProbe, delivery_latency, idle_cost, percentiles

CORPUS = llm_run_chunks(1000)
# ~300 B, compact JSON with "run_id":null, so every reader has nulls to fill.
CHUNK = min((c for c in CORPUS if '"run_id":null' in c and c.isascii()), key=lambda c: abs(len(c) - 300))

DELIVERY_WAYS = {
    # way: (writer, reader)
    "rust": ("rust", "rust"),
    "python": ("python", "python"),
    "reference": ("reference", "reference"),
    "reference reader, rust writer": ("rust", "reference"),
}


def _writer(kind: str, url: str):
    return ReferenceWriter(url) if kind == "reference" else StreamWriter(url, backend=kind)


def _async_reader(kind: str, url: str):
    return ReferenceReader(url) if kind == "reference" else AsyncStreamReader(url, backend=kind)


def _slug(way: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in way)


@pytest.mark.parametrize("arrivals", ["together", "independent"])
@pytest.mark.parametrize("way", list(DELIVERY_WAYS))
def test_delivery_latency(benchmark, server, redis_client, way, arrivals):
    benchmark.group = "delivery latency"
    writer_kind, reader_kind = DELIVERY_WAYS[way]
    writer = _writer(writer_kind, server.url)
    reader = _async_reader(reader_kind, server.url)
    probe = ServerProbe(server.url)
    runs = [f"dl-{_slug(way)}-{arrivals}-{i}" for i in range(100)]
    try:
        result = benchmark.pedantic(
            delivery_latency, args=(writer, reader, runs, CHUNK, probe), kwargs={"arrivals": arrivals}, rounds=1
        )
    finally:
        writer.close()
        probe.close()
    assert result["all_received"], result["received_min"]
    figures = percentiles(result["latencies"])
    benchmark.extra_info.update(
        scenario="delivery latency",
        way=way,
        arrivals=arrivals,
        streams=len(runs),
        chunks=figures["n"],
        connections=result["connections"],
        loop_us_per_chunk=result["loop_us_per_chunk"],
        server_cpu_pct=result["server_cpu_pct"],
        **{f"{k}_ms": figures[k] * 1e3 for k in ("p50", "p90", "p99", "max", "mean")},
    )


def _idle_streams(redis_client, runs):
    pipe = redis_client.pipeline(transaction=False)
    for run_id in runs:
        pipe.xadd(f"sse:run:{run_id}", {"seq_id": 1, "data": CHUNK, "timestamp": 1700000000000}, id="0-1")
    pipe.execute()


@pytest.mark.parametrize("way", ["rust", "python", "reference"])
def test_idle_cost(benchmark, server, redis_client, way):
    benchmark.group = "idle cost"
    runs = [f"idle-{i}" for i in range(1000)]
    _idle_streams(redis_client, runs)
    reader = _async_reader(way, server.url)
    probe = ServerProbe(server.url)
    window = 2.0 if way == "reference" else 5.0
    try:
        result = benchmark.pedantic(idle_cost, args=(reader, runs, probe), kwargs={"window": window}, rounds=1)
    finally:
        probe.close()
    benchmark.extra_info.update(scenario="idle cost", way=way, **result)


RESUME_LEN = 10_000
# Fixed rounds, back to back: a few library reads take ~50 ms (see the report),
# which would make pytest-benchmark's calibration run for minutes.
RESUME_ROUNDS = {"rust": 300, "python": 300, "reference": 30}


@pytest.fixture
def resume_stream(server, redis_client):
    """A complete stream of 10,000 entries (9,999 chunks and ``[DONE]``)."""
    with StreamWriter(server.url, backend="rust") as writer:
        for i in range(RESUME_LEN - 1):
            writer.write("resume", CORPUS[i % (len(CORPUS) - 1)])
        writer.complete("resume")
    assert redis_client.xlen("sse:run:resume") == RESUME_LEN
    return "resume"


def _sync_reader(way: str, url: str):
    return SyncReferenceReader(url) if way == "reference" else StreamReader(url, backend=way)


def _read_head(reader, run_id):
    chunks = reader.read(run_id, 0)
    first = next(chunks)
    chunks.close()
    return first


def _read_tail(reader, run_id):
    return list(reader.read(run_id, RESUME_LEN - 1))


@pytest.mark.parametrize("position", ["head", "tail"])
@pytest.mark.parametrize("way", ["rust", "python", "reference"])
def test_resume(benchmark, server, resume_stream, way, position):
    benchmark.group = "resume"
    reader = _sync_reader(way, server.url)
    read = _read_head if position == "head" else _read_tail
    try:
        got = read(reader, resume_stream)  # the hub's threads and connections start outside the timing
        if position == "head":
            assert got.startswith("data: ")
            assert "run_id" in got
        else:
            assert len(got) == 1
            assert got[0].startswith("data: [DONE]")
        benchmark.pedantic(read, args=(reader, resume_stream), rounds=RESUME_ROUNDS[way])
    finally:
        reader.close()
    stats = benchmark.stats.stats
    figures = percentiles(stats.data)
    benchmark.extra_info.update(
        scenario="resume",
        way=way,
        position=position,
        stream_length=RESUME_LEN,
        rounds=stats.rounds,
        median_ms=stats.median * 1e3,
        mean_ms=stats.mean * 1e3,
        p90_ms=figures["p90"] * 1e3,
        max_ms=stats.max * 1e3,
    )


@pytest.mark.parametrize("way", ["rust", "python"])
def test_many_readers(benchmark, server, redis_client, way):
    benchmark.group = "many readers"

    def run() -> dict:
        out = subprocess.run(
            [sys.executable, "-m", "sse_redis.tools.measure", "many-readers", server.url, way],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    result = benchmark.pedantic(run, rounds=1)
    benchmark.extra_info.update(scenario="many readers", way=way, **result)
    assert result["all_received"], result
