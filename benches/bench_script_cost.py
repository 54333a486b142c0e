"""Server CPU per chunk of one-chunk batches: the fenced append script (with
its notice) against an unfenced pipeline doing the same writes, side by side
on one dedicated Valkey.

    python benches/bench_script_cost.py [--chunks 5000] [--rounds 3]
    python -m pytest benches/bench_script_cost.py -q -s

A token stream at human pace sends one chunk per script call, so the script's
fixed cost is what the server pays per token.  Each way stores ``--chunks``
chunks of ``llm_run_chunks`` (~300 B), one at a time, each waited for before
the next (the run's next batch on the same connection: the common case):

- rust / python: ``StreamWriter.write`` then ``flush(run_id=...)``: one
  ``EVALSHA`` of ``append.lua`` per chunk (trusted, notice published);
- pipeline: redis-py sending ``XADD`` (same ID, fields and ``MAXLEN ~``) +
  ``EXPIRE`` + ``PUBLISH`` + the run's status ``HSET`` (what run control keeps
  beside the stream) in one non-transactional pipeline per chunk: the
  same writes with no fencing;
- XADD: a lone ``XADD`` per chunk, the floor.

The figure is total server CPU (``INFO cpu``: ``used_cpu_user`` +
``used_cpu_sys`` delta) over the chunks, not ``commandstats`` (which counts the
commands a script runs too).  The ways alternate within each round; the table
has the median over the rounds and the ratio to the pipeline of the same
round (median of the per-round ratios).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from collections.abc import Callable

import redis

from sse_redis import StreamWriter
from sse_redis.keys import KeyLayout, notice_channel, status_key
from sse_redis.tools.corpus import llm_run_chunks
from sse_redis.tools.measure import ServerProbe
from sse_redis.tools.servers import RedisProcess, valkey_binary

WAYS = ("rust", "python", "pipeline", "XADD")
TTL, MAX_LEN = 10800, 10000  # the writer's defaults
CORPUS = [c for c in llm_run_chunks(1000) if not c.startswith("data: [DONE]")]


def writer_way(url: str, backend: str) -> tuple[Callable[[str, int], None], Callable[[], None]]:
    writer = StreamWriter(url, backend=backend)

    def store(run: str, n: int) -> None:
        for i in range(n):
            writer.write(run, CORPUS[i % len(CORPUS)])
            writer.flush(run_id=run)

    return store, writer.close


def pipeline_way(url: str, notice: bool) -> tuple[Callable[[str, int], None], Callable[[], None]]:
    client = redis.Redis.from_url(url)
    writer_id = uuid.uuid4().hex
    layout = KeyLayout()

    def store(run: str, n: int) -> None:
        key = layout.key(run)
        channel, status = notice_channel(key), status_key(key)
        for i in range(n):
            seq = i + 1
            fields = {"seq_id": seq, "data": CORPUS[i % len(CORPUS)], "timestamp": int(time.time() * 1000)}
            fields["writer"] = writer_id
            if not notice:
                client.xadd(key, fields, id=f"0-{seq}", maxlen=MAX_LEN)
                continue
            pipe = client.pipeline(transaction=False)
            pipe.xadd(key, fields, id=f"0-{seq}", maxlen=MAX_LEN)
            pipe.expire(key, TTL)
            pipe.publish(channel, seq)
            pipe.hset(status, mapping={"state": "running", "last_seq": seq, "updated_at": fields["timestamp"]})
            pipe.execute()

    return store, client.close


def measure(url: str, chunks: int, rounds: int, ways: tuple[str, ...] = WAYS) -> dict[str, dict[str, float]]:
    """Per way: the median server µs per chunk, and the median ratio to the pipeline."""
    makers = {
        "rust": lambda: writer_way(url, "rust"),
        "python": lambda: writer_way(url, "python"),
        "pipeline": lambda: pipeline_way(url, notice=True),
        "XADD": lambda: pipeline_way(url, notice=False),
    }
    probe = ServerProbe(url)
    per_round: dict[str, list[float]] = {way: [] for way in ways}
    try:
        for _ in range(rounds):
            for way in ways:
                store, close = makers[way]()
                store(f"warm-{uuid.uuid4().hex}", 50)  # connect and load the script outside the window
                run = f"bench-{uuid.uuid4().hex}"
                cpu = probe.cpu_seconds()
                store(run, chunks)
                per_round[way].append((probe.cpu_seconds() - cpu) / chunks * 1e6)
                close()
                probe.client.flushall()
    finally:
        probe.close()
    base = per_round.get("pipeline")
    return {
        way: {
            "us_per_chunk": statistics.median(us),
            "spread": max(us) - min(us),
            "vs_pipeline": statistics.median(a / b for a, b in zip(us, base, strict=True)) if base else float("nan"),
        }
        for way, us in per_round.items()
    }


def table(figures: dict[str, dict[str, float]], chunks: int, rounds: int) -> str:
    lines = [
        f"Server CPU per chunk, one-chunk batches: {chunks:,} chunks per way per round, median of {rounds} rounds.",
        "",
        "| way | server µs/chunk | spread µs | vs pipeline |",
        "|---|---:|---:|---:|",
    ]
    for way, f in figures.items():
        lines.append(f"| {way} | {f['us_per_chunk']:.1f} | {f['spread']:.1f} | {f['vs_pipeline']:.2f}× |")
    rust = figures.get("rust", {}).get("vs_pipeline")
    if rust is not None:
        mark = "✓" if rust <= 2.0 else "✗ missed"
        lines += ["", f"- rust script / pipeline = {rust:.2f} (target ≤ 2.00) {mark}"]
    return "\n".join(lines)


def test_script_cost(server) -> None:
    chunks, rounds = 3000, 3
    print()
    print(table(measure(server.url, chunks, rounds), chunks, rounds))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--url", help="an existing server (flushed!); default: a Valkey of our own")
    args = parser.parse_args(argv)
    if args.url:
        print(table(measure(args.url, args.chunks, args.rounds), args.chunks, args.rounds))
        return
    with RedisProcess(valkey_binary()) as server:
        print(table(measure(server.url, args.chunks, args.rounds), args.chunks, args.rounds))


if __name__ == "__main__":
    main(sys.argv[1:])
