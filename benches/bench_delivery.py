"""Delivery at scale (issue 12): the notify hub against ``delivery="xread"``,
side by side in one run, writer and readers in separate processes.

    python benches/bench_delivery.py [--quick] [--rounds 3] [--backend rust|python] [--json FILE]
    python -m pytest benches/bench_delivery.py -q -s        (the --quick sizes, one round)

Each measurement (``sse_redis.tools.measure.delivery_at_scale``) spawns one
writer process and reader processes on a dedicated Valkey: the writer paces
independent arrivals (round robin at even spacing: each run on its own
phase) at the stated total rate; each reader process reads a disjoint share
of the runs with ``AsyncStreamReader`` (default settings, fan-out 1, one
consumer task per run in one event loop).  Over the window: Valkey CPU per
stored-and-delivered chunk (``INFO cpu`` user + sys delta / chunks), the
reader processes' and the writer's CPU per chunk (``time.process_time`` in
each), p50/p99 from the write call to the consumer's yield (the write time
travels in the chunk; one machine, one clock), the readers' connections
(``CLIENT LIST``) and the hubs' counters.  Every figure is the median of the
rounds, with the spread (min-max); the ways alternate within each round.

Scenarios (full size; ``--quick`` divides runs by 10 and rates by 5):

1. idle cost: 100 active runs at 200 chunks/s in total, plus 9,900 watched
   runs that never change, against the same 100 alone.  The window is 3x
   the hubs' longest periodic interval (``check_interval``: the safety
   check, the existence check, the listener's probe, the blocker's longest
   block), which these rows pass explicitly to both hubs (``IDLE_CHECK``),
   or the window would measure nothing of it;
2. 5,000 live runs at 5,000 chunks/s, readers in 4 processes;
3. 10,000 and 1,000 live runs at 5,000 chunks/s, readers in one process.

Rows 2 and 3 keep every default (``check_interval`` 10 s) with 6 s windows
that start within a few seconds of the hubs' start, so they hold no safety
check (the first comes ``check_interval`` after a hub starts; the counters
column shows any).  What a check costs is in the idle rows: Valkey spends
7-9 µs per followed key (measured 2026-12-06), so at the default 10 s and
5,000 chunks/s a check of 10,000 keys would add about 1.5 µs per chunk.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sse_redis import _backend
from sse_redis.tools.measure import delivery_at_scale, percentiles
from sse_redis.tools.servers import RedisProcess, valkey_binary

DELIVERIES = ("notify", "xread")


@dataclass(frozen=True)
class Load:
    key: str  # names the row in the targets
    label: str
    active: int
    rate: float  # chunks/s in total
    window: float  # seconds
    idle: int = 0
    processes: int = 1
    check_interval: float | None = None  # None: the reader's default (10 s)


# check_interval for the idle-cost rows: their window is 3x it.
IDLE_CHECK = 5.0
QUICK_IDLE_CHECK = 1.0


def loads(quick: bool) -> list[Load]:
    if quick:
        ci = QUICK_IDLE_CHECK
        return [
            Load("idle", "10 active + 990 idle", 10, 40, 3 * ci, idle=990, check_interval=ci),
            Load("busy", "10 active", 10, 40, 3 * ci, check_interval=ci),
            Load("4proc", "500 live, 4 procs", 500, 1000, 3, processes=4),
            Load("many", "1,000 live", 1000, 1000, 3),
            Load("few", "100 live", 100, 1000, 3),
        ]
    ci = IDLE_CHECK
    return [
        Load("idle", "100 active + 9,900 idle", 100, 200, 3 * ci, idle=9900, check_interval=ci),
        Load("busy", "100 active", 100, 200, 3 * ci, check_interval=ci),
        Load("4proc", "5,000 live, 4 procs", 5000, 5000, 6, processes=4),
        Load("many", "10,000 live", 10000, 5000, 6),
        Load("few", "1,000 live", 1000, 5000, 6),
    ]


Results = dict[tuple[str, str, str], list[dict[str, Any]]]  # (load, backend, delivery) -> one dict per round


def measure(
    url: str,
    rounds: int,
    quick: bool,
    backends: Sequence[str],
    progress: Callable[[str], None] = lambda _: None,
) -> Results:
    """Every load x backend x delivery, ``rounds`` times, the ways alternating
    within each round.  Latency samples are reduced to percentiles per round."""
    out: Results = {}
    plan = [(load, b, d) for load in loads(quick) for b in backends for d in DELIVERIES]
    for r in range(rounds):
        for i, (load, backend, delivery) in enumerate(plan):
            progress(f"round {r + 1}/{rounds}, {i + 1}/{len(plan)}: {load.label}, {backend}, {delivery}")
            got = delivery_at_scale(
                url,
                backend=backend,
                delivery=delivery,
                active=load.active,
                idle=load.idle,
                rate=load.rate,
                window=load.window,
                processes=load.processes,
                check_interval=load.check_interval,
            )
            got.update(percentiles([x * 1000 for x in got.pop("latencies")], (50, 99)))
            out.setdefault((load.key, backend, delivery), []).append(got)
    return out


# -- the table --------------------------------------------------------------------


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(float(row[key]) for row in rows)


def _cell(rows: list[dict[str, Any]], key: str, fmt: str = "{:.1f}") -> str:
    values = [float(row[key]) for row in rows]
    mid = fmt.format(statistics.median(values))
    if len(values) == 1:
        return mid
    return f"{mid} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def _hub(rows: list[dict[str, Any]], delivery: str) -> str:
    """The hubs' counters over the window, median of the rounds."""
    c = {k: statistics.median(row["counters"][k] for row in rows) for k in rows[0]["counters"]}
    chunks = _median(rows, "chunks")
    if delivery == "xread":
        text = f"{c['xreads'] / chunks:.2f} XREAD/chunk"
    else:
        per = c["fetches"] / c["notices"] if c["notices"] else float("nan")
        text = f"{c['notices'] / chunks:.2f} notices/chunk, {per:.2f} fetches/notice"
        if c["probes"]:
            text += f", {c['probes']:.0f} probes"
    if c["checks"]:
        text += f", {c['checks']:.0f} checks"
    if c["missed"]:
        text += f", {c['missed']:.0f} missed"
    if c["reconnects"]:
        text += f", {c['reconnects']:.0f} reconnects"
    return text


def _ratios(a: list[dict[str, Any]], b: list[dict[str, Any]], key: str) -> float:
    """Median of the per-round ratios a/b (same round, side by side)."""
    return statistics.median(float(x[key]) / float(y[key]) for x, y in zip(a, b, strict=False))


def _target(label: str, value: float, limit: float, fmt: str = "{:.2f}") -> str:
    mark = "✓" if value <= limit else "✗ missed"
    return f"- {label} = {fmt.format(value)} (target ≤ {fmt.format(limit)}) {mark}"


def table(results: Results, quick: bool, rounds: int) -> str:
    when = datetime.datetime.now().astimezone()
    lines = [
        (
            f"Measured {when:%Y-%m-%d %H:%M %Z} on {os.cpu_count()} CPUs ({platform.machine()}, "
            f"Python {platform.python_version()}); median of {rounds} round(s), (min-max) the spread; "
            f"{'--quick sizes' if quick else 'full sizes'}."
        ),
        "",
        (
            "| load | backend | hub | chunks/s | Valkey µs/chunk | reader µs/chunk | writer µs/chunk "
            "| p50 ms | p99 ms | conns | hub counters (window) |"
        ),
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    labels = {load.key: load for load in loads(quick)}
    for (key, backend, delivery), rows in results.items():
        load = labels[key]
        complete = all(row["all_received"] and row["out_of_order"] == 0 for row in rows)
        lines.append(
            f"| {load.label}{'' if complete else ' **(chunks missing!)**'} | {backend} | {delivery} "
            f"| {_median(rows, 'rate_achieved'):,.0f} | {_cell(rows, 'server_us_per_chunk')} "
            f"| {_cell(rows, 'reader_us_per_chunk')} | {_cell(rows, 'writer_us_per_chunk')} "
            f"| {_cell(rows, 'p50', '{:.2f}')} | {_cell(rows, 'p99', '{:.1f}')} "
            f"| {_median(rows, 'connections'):.0f} | {_hub(rows, delivery)} |"
        )
    lines += ["", *targets(results, quick)]
    return "\n".join(lines)


def targets(results: Results, quick: bool) -> list[str]:
    """The issue's targets (Rust backend); the pure backend's figures alongside."""
    out: list[str] = []
    scale = " (--quick sizes: the targets are for the full ones)" if quick else ""
    for backend in ("rust", "python"):
        name = "rust" if backend == "rust" else "pure (no target)"

        def get(key: str, delivery: str, b: str = backend) -> list[dict[str, Any]] | None:
            return results.get((key, b, delivery))

        idle, busy = get("idle", "notify"), get("busy", "notify")
        if idle and busy:
            ratio = _ratios(idle, busy, "server_us_per_chunk")
            out.append(_target(f"{name}: Valkey CPU/chunk, with idle runs / without{scale}", ratio, 1.5))
            xi, xb = get("idle", "xread"), get("busy", "xread")
            if xi and xb:
                out.append(f"  - the xread hub in the same run: {_ratios(xi, xb, 'server_us_per_chunk'):.1f}×")
            out.append(_target(f"{name}: p50 with idle runs (ms)", _median(idle, "p50"), 1.0))
        n4, x4 = get("4proc", "notify"), get("4proc", "xread")
        if n4:
            out.append(_target(f"{name}: p50, 4 reader processes (ms)", _median(n4, "p50"), 2.0))
            out.append(_target(f"{name}: p99, 4 reader processes (ms)", _median(n4, "p99"), 10.0))
            if x4:
                ratio = _ratios(n4, x4, "server_us_per_chunk")
                out.append(_target(f"{name}: Valkey CPU/chunk, notify / xread, 4 processes", ratio, 0.5))
        big, small = get("many", "notify"), get("few", "notify")
        if big:
            out.append(_target(f"{name}: p50, many live runs in one process (ms)", _median(big, "p50"), 3.0))
            if small:
                ratio = _ratios(big, small, "server_us_per_chunk")
                out.append(_target(f"{name}: Valkey CPU/chunk, 10x the runs / 1x, same total rate", ratio, 1.3))
    return out


def run(url: str, rounds: int, quick: bool, backends: Sequence[str], dump: str | None = None) -> str:
    started = time.perf_counter()

    def progress(text: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s] {text}", file=sys.stderr, flush=True)

    results = measure(url, rounds, quick, backends, progress)
    if dump:
        with open(dump, "w", encoding="utf-8") as out:
            json.dump([{"load": k[0], "backend": k[1], "delivery": k[2], "rounds": v} for k, v in results.items()], out)
    progress("done")
    return table(results, quick, rounds)


def default_backends() -> list[str]:
    return ["rust", "python"] if _backend._core is not None else ["python"]


def test_delivery(server: Any) -> None:
    print()
    print(run(server.url, 1, True, default_backends()))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the runs, a fifth of the rates (< 2 min)")
    parser.add_argument("--rounds", type=int, default=None, help="default: 3 (1 with --quick)")
    parser.add_argument("--backend", choices=["rust", "python"], default=None, help="default: both")
    parser.add_argument("--json", metavar="FILE", default=None, help="also write every round's figures here")
    parser.add_argument("--url", help="an existing server (flushed!); default: a Valkey of our own")
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 3)
    backends = [args.backend] if args.backend else default_backends()
    if args.url:
        print(run(args.url, rounds, args.quick, backends, args.json))
        return
    with RedisProcess(valkey_binary()) as server:
        print(run(server.url, rounds, args.quick, backends, args.json))


if __name__ == "__main__":
    main(sys.argv[1:])
