"""``sse-redis bench``: the codec, writer and reader benchmarks, Rust vs the
pure twin, side by side on one server, with a progress bar and a table
(``--plot FILE.png`` also draws them; matplotlib is the ``[plot]`` extra).

The measurements are ``measure.py``'s, the same code ``benches/`` runs under
pytest-benchmark; this is the quick way to see them on your own machine.
``--backend rust`` (or ``python``) runs that engine only.  The writer's
throughput is also measured for the reference's way (``ReferenceWriter``: one
redis-py pipeline of ``XADD``s and an ``EXPIRE`` per buffer), the bar the two
engines are compared with.

``at_scale=True`` adds issue 12's delivery at scale, writer and readers in
separate processes (``measure.delivery_at_scale``): the notify hub against
``delivery="xread"``, one after the other on the same load (5,000 live runs
at 5,000 chunks/s in total, readers in 4 processes; ``quick``: 1,000 runs
at 1,000 chunks/s in 2).  ``benches/bench_delivery.py`` has every scenario.
"""

from __future__ import annotations

import datetime
import functools
import os
import platform
import sys
import time
import timeit
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from .. import _backend
from ..reader import AsyncStreamReader
from ..writer import StreamWriter
from .corpus import llm_run_chunks
from .measure import (
    ServerProbe,
    delivery_at_scale,
    delivery_latency,
    percentiles,
    write_latency,
    writer_throughput,
)


@dataclass
class Results:
    backends: list[str]
    rows: dict[str, dict[str, str]] = field(default_factory=dict)  # measure -> backend -> cell
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)  # backend -> delivery latencies
    throughput: dict[str, float] = field(default_factory=dict)  # backend (or "reference") -> chunks/s
    reference_throughput: str = ""
    started: datetime.datetime = field(default_factory=lambda: datetime.datetime.now().astimezone())

    def put(self, measure: str, backend: str, cell: str) -> None:
        self.rows.setdefault(measure, {})[backend] = cell

    def table(self) -> str:
        head = "| measure | " + " | ".join(self.backends) + " |"
        rule = "|---|" + "---:|" * len(self.backends)
        body = [
            f"| {measure} | " + " | ".join(cells.get(b, "-") for b in self.backends) + " |"
            for measure, cells in self.rows.items()
        ]
        return "\n".join([head, rule, *body])


class Progress:
    """A one-line progress bar on stderr (plain lines when it is not a terminal)."""

    def __init__(self, total: int) -> None:
        self.total: int = total
        self.done: int = 0
        self.tty: bool = sys.stderr.isatty()

    def step(self, label: str) -> None:
        self.done += 1
        filled = int(24 * self.done / self.total)
        bar = "#" * filled + "." * (24 - filled)
        line = f"[{bar}] {self.done}/{self.total} {label}"
        if self.tty:
            sys.stderr.write("\r\x1b[K" + line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def finish(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


def machine() -> str:
    """Where the figures were taken: CPU architecture and count, OS, Python."""
    return (
        f"{platform.machine() or 'unknown CPU'}, {os.cpu_count() or '?'} CPUs, {platform.system()}, "
        f"Python {platform.python_version()}"
    )


class ReferenceWriter:
    """The reference's writer (Letta's ``redis_stream_manager.py``), as
    ``benches/_reference.py`` rebuilds it, in synchronous redis-py (cheaper
    per command than its asyncio original: a flattering stand-in): a buffer
    per run leaves as one pipeline of ``XADD key MAXLEN ~ n *`` per chunk and
    an ``EXPIRE`` when it holds ``flush_size`` chunks or is older than
    ``flush_interval``; no fencing, no script."""

    def __init__(self, url: str, *, flush_size: int = 50, flush_interval: float = 0.5, prefix: str = "sse:run:"):
        self.client: redis.Redis = redis.Redis.from_url(url, decode_responses=True)
        self.flush_size = flush_size
        self.flush_interval = flush_interval
        self.prefix = prefix
        self.buffers: dict[str, list[dict[str | bytes, str | int]]] = {}
        self.next_seq: dict[str, int] = {}
        self.flushed_at: dict[str, float] = {}

    def write(self, run_id: str, chunk: str) -> int:
        seq = self.next_seq.get(run_id, 1)
        self.next_seq[run_id] = seq + 1
        buffer = self.buffers.setdefault(run_id, [])
        buffer.append({"seq_id": seq, "data": chunk, "timestamp": int(time.time() * 1000)})
        if len(buffer) >= self.flush_size or time.time() - self.flushed_at.get(run_id, 0.0) > self.flush_interval:
            self._flush_run(run_id)
        return seq

    def _flush_run(self, run_id: str) -> None:
        entries, self.buffers[run_id] = self.buffers.get(run_id, []), []
        if not entries:
            return
        key = self.prefix + run_id
        pipe = self.client.pipeline(transaction=False)
        for entry in entries:
            pipe.xadd(key, entry, maxlen=10000, approximate=True)  # type: ignore[arg-type]
        pipe.expire(key, 10800)
        pipe.execute()
        self.flushed_at[run_id] = time.time()

    def flush(self) -> None:
        for run_id in list(self.buffers):
            self._flush_run(run_id)

    def delete(self, run_id: str) -> None:
        self.client.delete(self.prefix + run_id)

    def close(self) -> None:
        self.client.close()


def _codec_us(backend: str, corpus: list[str]) -> float:
    codec = _backend.module(backend)
    is_terminal, sniff, patch, stamp = codec.is_terminal, codec.sniff_stop_reason, codec.patch_nulls, codec.set_event_id

    def per_corpus() -> None:
        for seq, chunk in enumerate(corpus):
            is_terminal(chunk)
            sniff(chunk)
            stamp(patch(chunk, "run-bench", seq), str(seq))

    return min(timeit.repeat(per_corpus, number=1, repeat=5)) / len(corpus) * 1e6


def run_benchmarks(
    url: str,
    *,
    quick: bool = False,
    plot: str | None = None,
    backends: Sequence[str] | None = None,
    at_scale: bool = False,
) -> int:
    """Run the benchmarks on ``backends`` (default: both, or the pure one
    where there is no Rust core), print the table, draw ``plot``; with
    ``at_scale``, the delivery-at-scale part too (see the module's docstring)."""
    if backends is None:
        backends = ["rust", "python"] if _backend._core is not None else ["python"]
    backends = list(backends)
    scale = 0.2 if quick else 1.0
    corpus = llm_run_chunks(2000 if quick else 10_000)
    chunk = min(corpus[:-3], key=lambda c: abs(len(c) - 300))
    results = Results(backends)
    steps: list[tuple[str, Callable[[], None]]] = []
    probe = ServerProbe(url)

    def codec(backend: str) -> None:
        results.put("codec, 4 calls per chunk (us)", backend, f"{_codec_us(backend, corpus):.2f}")

    def throughput(backend: str) -> None:
        runs = [f"bench-{uuid.uuid4().hex[:8]}-{i}" for i in range(100)]
        with StreamWriter(url, backend=backend, max_len=None) as writer:
            per_run = max(20, int(1000 * scale))
            seconds = writer_throughput(writer, runs, [chunk] * per_run)
            for run in runs:
                writer.delete(run)
        rate = len(runs) * per_run / seconds
        results.throughput[backend] = rate
        results.put("writer, 100 runs round robin (chunks/s)", backend, f"{rate:,.0f}")

    def reference_throughput() -> None:
        runs = [f"bench-ref-{uuid.uuid4().hex[:8]}-{i}" for i in range(100)]
        writer = ReferenceWriter(url)
        try:
            per_run = max(20, int(1000 * scale))
            seconds = writer_throughput(writer, runs, [chunk] * per_run)
            for run in runs:
                writer.delete(run)
        finally:
            writer.close()
        rate = len(runs) * per_run / seconds
        results.throughput["reference"] = rate
        results.reference_throughput = f"{rate:,.0f}"

    def latency(backend: str) -> None:
        run = f"bench-{uuid.uuid4().hex[:8]}"
        with StreamWriter(url, backend=backend) as writer:
            samples = write_latency(writer, url, run, f"sse:run:{run}", chunk, samples=int(300 * scale) + 20)
            writer.delete(run)
        p = percentiles([s * 1000 for s in samples])
        results.put("write -> stored p50 / p99 (ms)", backend, f"{p['p50']:.3f} / {p['p99']:.3f}")

    def delivery(backend: str) -> None:
        runs = [f"bench-{uuid.uuid4().hex[:8]}-{i}" for i in range(100)]
        with StreamWriter(url, backend=backend) as writer:
            reader = AsyncStreamReader(url, backend=backend)
            got = delivery_latency(writer, reader, runs, chunk, probe, duration=3.0 * scale + 0.5)
            for run in runs:
                writer.delete(run)
        ms = [s * 1000 for s in got["latencies"]]
        results.latencies_ms[backend] = ms
        p = percentiles(ms)
        results.put("delivery, 100 streams x 100/s p50 / p99 (ms)", backend, f"{p['p50']:.2f} / {p['p99']:.2f}")
        results.put("reader connections", backend, str(got["connections"]))
        if not got["all_received"]:
            results.put("delivery, chunks missing", backend, "YES")

    def many_runs(backend: str) -> None:
        runs, rate, processes = (1000, 1000.0, 2) if quick else (5000, 5000.0, 4)
        label = f"{runs:,} runs x {rate / runs:g}/s, {processes} reader processes"
        got = {
            way: delivery_at_scale(
                url,
                backend=backend,
                delivery=way,
                active=runs,
                rate=rate,
                window=3.0 if quick else 6.0,
                processes=processes,
            )
            for way in ("notify", "xread")
        }
        for way, figures in got.items():
            p = percentiles([s * 1000 for s in figures["latencies"]], (50, 99))
            results.put(f"{label}, {way}: p50 / p99 (ms)", backend, f"{p['p50']:.2f} / {p['p99']:.2f}")
            results.put(
                f"{label}, {way}: Valkey / readers / writer CPU (us/chunk)",
                backend,
                f"{figures['server_us_per_chunk']:.0f} / {figures['reader_us_per_chunk']:.0f} / "
                f"{figures['writer_us_per_chunk']:.0f}",
            )
            if not figures["all_received"] or figures["out_of_order"]:
                results.put("delivery, chunks missing", backend, "YES")
        results.put(
            f"{label}: connections (notify / xread)",
            backend,
            f"{got['notify']['connections']} / {got['xread']['connections']}",
        )

    parts: list[tuple[str, Callable[[str], None]]] = [
        ("codec", codec),
        ("writer throughput", throughput),
        ("write latency", latency),
        ("delivery latency", delivery),
    ]
    if at_scale:
        parts.append(("delivery at scale", many_runs))
    for name, fn in parts:
        for backend in backends:
            steps.append((f"{name} ({backend})", functools.partial(fn, backend)))
        if name == "writer throughput":
            steps.append(("writer throughput (reference)", reference_throughput))

    progress = Progress(len(steps))
    try:
        for label, step in steps:
            progress.step(label)
            step()
    finally:
        progress.finish()
        probe.close()
    print(results.table())
    if results.reference_throughput:
        print(
            f"\nthe reference's writer (one redis-py pipeline per buffer), same workload: "
            f"{results.reference_throughput} chunks/s"
        )
    print(f"{machine()}; {results.started:%Y-%m-%d %H:%M %Z}")
    if plot:
        draw(results, plot)
        print(f"plot written to {plot}")
    missing = any("YES" in cells.values() for cells in results.rows.values())
    return 1 if missing else 0


def draw(results: Results, path: str) -> None:
    """Delivery latency distributions (p50 and p99 marked) and writer
    throughput bars (the reference's among them), side by side, titled with
    the backends, the machine and the date."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("--plot needs matplotlib: pip install 'sse-redis[plot]'") from exc
    colors = {"rust": "#c05a28", "python": "#3572a5", "reference": "#8c8c8c"}
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    every = [x for ms in results.latencies_ms.values() for x in ms]
    top = sorted(every)[int(0.999 * (len(every) - 1))] if every else 1.0  # leave far outliers out of view
    bins = [top * i / 80 for i in range(81)]
    for backend, ms in results.latencies_ms.items():
        color = colors.get(backend)
        left.hist(ms, bins=bins, alpha=0.5, label=backend, color=color)
        p = percentiles(ms, (50, 99))
        left.axvline(p["p50"], color=color, linestyle="-", linewidth=1.5, label=f"{backend} p50 {p['p50']:.2f} ms")
        left.axvline(p["p99"], color=color, linestyle="--", linewidth=1.5, label=f"{backend} p99 {p['p99']:.2f} ms")
    left.set_xlabel("write -> reader yields (ms)")
    left.set_ylabel("chunks")
    left.set_title("Delivery latency, 100 streams x 100 chunks/s")
    left.legend(fontsize="small")
    names = list(results.throughput)
    bars: Any = right.bar(names, [results.throughput[n] for n in names], color=[colors.get(n) for n in names])
    right.bar_label(bars, fmt="{:,.0f}")
    right.set_ylabel("chunks/s")
    right.set_title("Writer throughput, 100 runs round robin")
    fig.suptitle(
        f"sse-redis bench: backend {', '.join(results.backends)}; {machine()}; {results.started:%Y-%m-%d %H:%M %Z}",
        fontsize="medium",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
