"""Markdown tables of a benchmark run, for the README.

    python benches/report.py /tmp/bench_codec.json
    python benches/report.py /tmp/bench_writer.json /tmp/bench_reader.json

Codec (``bench_codec.py``): cells are median microseconds per chunk; the
ratios are taken on "all four".  Writer and reader (``bench_writer.py``,
``bench_reader.py``): one table per scenario, from the figures each
benchmark stored in ``extra_info``, with ratios and the issue's targets.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

WAYS = ("rust", "python", "reference")
ALL = "all four"


def table(report: dict) -> str:
    us: dict[tuple[str, str], float] = {}
    ops: list[str] = []
    chunks = 0
    for bench in report["benchmarks"]:
        info = bench["extra_info"]
        if "op" not in info:
            continue
        us[info["way"], info["op"]] = info["median_us_per_chunk"]
        if info["op"] not in ops:
            ops.append(info["op"])
        chunks = info["chunks"]
    ops.sort(key=lambda op: op == ALL)  # the total goes last

    machine = report.get("machine_info", {})
    lines = [
        (
            f"Median µs per chunk over {chunks:,} chunks of `llm_run_chunks()` "
            f"(Python {machine.get('python_version', '?')}, {machine.get('cpu', {}).get('brand_raw', '?')})."
        ),
        "",
        "| way | "
        + " | ".join(f"`{op}`" if op != ALL else op for op in ops)
        + " | speed-up vs reference | time vs rust |",
        "|---|" + "---:|" * (len(ops) + 2),
    ]
    for way in WAYS:
        cells = [f"{us[way, op]:.3f}" for op in ops]
        total = us[way, ALL]
        cells += [f"{us['reference', ALL] / total:.1f}×", f"{total / us['rust', ALL]:.1f}×"]
        lines.append(f"| {way} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- writer and reader scenarios ---------------------------------------------------


def _grid(headers: list[str], rows: list[list[str]], align_first: int = 1) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * align_first + "---:|" * (len(headers) - align_first)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _target(label: str, value: float | None, limit: float, at_least: bool, fmt: str = "{:.2f}") -> str:
    if value is None:
        return f"{label}: n/a (target {'≥' if at_least else '≤'} {fmt.format(limit)})"
    met = value >= limit if at_least else value <= limit
    target = f"target {'≥' if at_least else '≤'} {fmt.format(limit)}"
    return f"{label} = {fmt.format(value)} ({target}) {'✓' if met else '✗ missed'}"


def _by_way(infos: list[dict]) -> dict[str, dict]:
    return {info["way"]: info for info in infos}


def _ratio(a: dict | None, b: dict | None, key: str) -> float | None:
    if a is None or b is None or not b.get(key):
        return None
    return a[key] / b[key]


def _x(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def writer_throughput(infos: list[dict]) -> list[str]:
    ways = _by_way(infos)
    chunks = next((i["chunks"] for i in infos if i["way"] != "ceiling"), 0)
    order = [w for w in ("rust", "python", "reference", "reference (sync)", "ceiling") if w in ways]
    rows = []
    for way in order:
        info = ways[way]
        rows.append(
            [
                way,
                f"{info['chunks_per_s']:,.0f}",
                f"{info['best_chunks_per_s']:,.0f}",
                str(info.get("rounds", "")),
                f"{info['chunks_per_pipeline']:,.0f}" if info.get("chunks_per_pipeline") else "—",
                _x(_ratio(info, ways.get("ceiling"), "chunks_per_s")),
                _x(_ratio(info, ways.get("reference"), "chunks_per_s")),
                _x(_ratio(info, ways.get("reference (sync)"), "chunks_per_s")),
            ]
        )
    lines = [
        (
            f"**Writer throughput**: {chunks:,} chunks (100 runs × 1,000, round robin, one thread), "
            "until flushed; ceiling = `redis-benchmark -P 64 -c 2` XADD. Median of the rounds."
        ),
        "",
        *_grid(
            [
                "way",
                "chunks/s",
                "best",
                "rounds",
                "chunks/pipeline",
                "vs ceiling",
                "vs reference",
                "vs reference (sync)",
            ],
            rows,
        ),
        "",
    ]
    rust, py = ways.get("rust"), ways.get("python")
    ref, ceiling = ways.get("reference"), ways.get("ceiling")
    lines += [
        "- " + _target("rust / ceiling", _ratio(rust, ceiling, "chunks_per_s"), 0.6, True),
        "- " + _target("rust / reference", _ratio(rust, ref, "chunks_per_s"), 10, True, "{:.1f}"),
        "- " + _target("python / reference", _ratio(py, ref, "chunks_per_s"), 2, True, "{:.1f}"),
    ]
    if "reference (sync)" in ways:
        sync = ways["reference (sync)"]
        lines.append(
            f"- against the synchronous stand-in instead: rust {_x(_ratio(rust, sync, 'chunks_per_s'))}, "
            f"python {_x(_ratio(py, sync, 'chunks_per_s'))}"
        )
    return lines


def write_latency(infos: list[dict]) -> list[str]:
    rows = []
    checks = []
    for info in sorted(infos, key=lambda i: (i.get("gap_ms", 0), ("rust", "python", "raw XADD").index(i["way"]))):
        gap = info.get("gap_ms")
        rows.append(
            [
                info["way"],
                f"{gap:g} ms" if gap is not None else "—",
                str(info["samples"]),
                f"{info['p50_ms']:.3f}",
                f"{info['p90_ms']:.3f}",
                f"{info['p99_ms']:.3f}",
                f"{info['max_ms']:.3f}",
            ]
        )
        if info["way"] == "rust":
            checks.append("- " + _target(f"rust p50 at {gap:g} ms idle (ms)", info["p50_ms"], 0.5, False, "{:.3f}"))
    return [
        (
            "**One-chunk latency while idle**: `write` call → entry reaches a blocked `XREAD` "
            "on another connection; default settings; one chunk, then `gap` of idleness."
        ),
        "",
        *_grid(["way", "gap", "samples", "p50 ms", "p90 ms", "p99 ms", "max ms"], rows, 2),
        "",
        *checks,
    ]


def delivery_latency(infos: list[dict]) -> list[str]:
    streams = next(iter(infos))["streams"]
    lines = [
        (
            f"**Delivery latency** (`write` call → consumer yields): {streams} streams × 100 chunks/s for 3 s, "
            "one async consumer per stream in one event loop; terminal chunk excluded. Arrivals *together*: "
            "every stream's chunk in the same instant of each 10 ms (a burst of 100: the worst case); "
            "*independent*: each stream on its own phase, spread over the 10 ms."
        ),
        "",
    ]
    rows = []
    for arrivals in ("together", "independent"):
        ways = _by_way([info for info in infos if info.get("arrivals", "together") == arrivals])
        ref = ways.get("reference")
        for way, info in ways.items():
            rows.append(
                [
                    arrivals,
                    way,
                    f"{info['p50_ms']:.2f}",
                    f"{info['p90_ms']:.2f}",
                    f"{info['p99_ms']:.2f}",
                    f"{info['max_ms']:.2f}",
                    str(info["connections"]),
                    f"{info.get('loop_us_per_chunk', 0):.1f}",
                    f"{info.get('server_cpu_pct', 0):.0f}%",
                    _x(ref["p50_ms"] / info["p50_ms"]) if ref else "—",
                ]
            )
    lines += [
        *_grid(
            [
                "arrivals",
                "way",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "max ms",
                "connections",
                "loop µs/chunk",
                "server CPU",
                "p50 speed-up vs reference",
            ],
            rows,
            2,
        ),
        "",
    ]
    for arrivals in ("together", "independent"):
        rust = _by_way([info for info in infos if info.get("arrivals", "together") == arrivals]).get("rust")
        if rust:
            lines += [
                "- " + _target(f"rust p50, {arrivals} (ms)", rust["p50_ms"], 1, False),
                "- " + _target(f"rust p99, {arrivals} (ms)", rust["p99_ms"], 5, False),
                "- " + _target(f"rust connections, {arrivals}", rust["connections"], 4, False, "{:.0f}"),
            ]
    return lines


def idle_cost(infos: list[dict]) -> list[str]:
    rows = []
    for info in infos:
        rows.append(
            [
                info["way"],
                f"{info['readers']:,}",
                f"{info['window_s']:.1f} s",
                f"{info['commands']:,}",
                f"{info['commands_per_s']:,.1f}",
                str(info["connections"]),
                f"{info['server_cpu_pct']:.1f}%",
                f"{info['client_cpu_pct']:.1f}%",
                f"{info['subscribe_s']:.2f} s",
            ]
        )
    rust = _by_way(infos).get("rust")
    lines = [
        (
            "**Idle cost**: 1,000 async readers on 1,000 existing streams that never change "
            "(INFO commandstats over the window; our INFO / CLIENT LIST excluded)."
        ),
        "",
        *_grid(
            [
                "way",
                "readers",
                "window",
                "commands",
                "commands/s",
                "connections",
                "server CPU",
                "client CPU",
                "time to subscribe all",
            ],
            rows,
        ),
        "",
    ]
    if rust:
        lines += [
            "- " + _target("rust commands/s", rust["commands_per_s"], 10, False, "{:.1f}"),
            "- " + _target("rust connections", rust["connections"], 4, False, "{:.0f}"),
        ]
    return lines


def resume(infos: list[dict]) -> list[str]:
    cells: dict[str, dict[str, dict]] = {}
    for info in infos:
        cells.setdefault(info["way"], {})[info["position"]] = info
    rows = []
    checks = []
    length = next(iter(infos))["stream_length"]
    for way, pos in cells.items():
        head, tail = pos.get("head"), pos.get("tail")
        if not head or not tail:
            continue
        ratio = tail["median_ms"] / head["median_ms"]
        rows.append(
            [
                way,
                f"{head['median_ms']:.3f}",
                f"{tail['median_ms']:.3f}",
                f"{ratio:.2f}",
                f"{head['mean_ms']:.3f}",
                f"{tail['mean_ms']:.3f}",
                f"{tail['mean_ms'] / head['mean_ms']:.2f}",
                f"{tail.get('p90_ms', float('nan')):.3f}",
                f"{tail.get('max_ms', float('nan')):.3f}",
            ]
        )
        if way == "rust":
            checks.append("- " + _target("rust tail/head (median)", ratio, 2, False))
            checks.append("- " + _target("rust tail/head (mean)", tail["mean_ms"] / head["mean_ms"], 2, False))
    return [
        (
            f"**Resume cost** on a complete {length:,}-entry stream: tail = `starting_after={length - 1:,}` "
            "(its last chunk), head = first chunk from 0, then stop. Fresh sync read per round, back to back."
        ),
        "",
        *_grid(
            [
                "way",
                "head median ms",
                "tail median ms",
                "tail/head",
                "head mean ms",
                "tail mean ms",
                "tail/head (mean)",
                "tail p90 ms",
                "tail max ms",
            ],
            rows,
        ),
        "",
        *checks,
    ]


def many_readers(infos: list[dict]) -> list[str]:
    rows = []
    checks = []
    for info in infos:
        per = info.get("bytes_per_reader")
        rows.append(
            [
                info["way"],
                f"{info['readers']:,}",
                "yes" if info["all_received"] else "NO",
                f"{info['chunks_delivered']:,}",
                f"{info['subscribe_s']:.2f} s",
                f"{info['deliver_s']:.2f} s",
                f"{per / 1024:.2f}" if per is not None else "—",
                str(info["connections"]),
            ]
        )
        if info["way"] == "rust":
            checks.append("- " + _target("rust KiB per reader", per / 1024 if per is not None else None, 8, False))
    return [
        (
            "**10,000 concurrent async readers** in one process (100 streams × 100 readers, each stream "
            "10 chunks + terminal; fresh interpreter): resident memory growth per waiting reader."
        ),
        "",
        *_grid(
            [
                "way",
                "readers",
                "all chunks received",
                "chunks delivered",
                "subscribe all",
                "write → all done",
                "KiB per reader",
                "connections",
            ],
            rows,
        ),
        "",
        *checks,
    ]


SCENARIOS: dict[str, Callable[[list[dict]], list[str]]] = {
    "writer throughput": writer_throughput,
    "write latency": write_latency,
    "delivery latency": delivery_latency,
    "idle cost": idle_cost,
    "resume": resume,
    "many readers": many_readers,
}


def scenario_tables(report: dict) -> str:
    groups: dict[str, list[dict]] = {}
    for bench in report["benchmarks"]:
        info = bench["extra_info"]
        if info.get("scenario") in SCENARIOS:
            groups.setdefault(info["scenario"], []).append(info)
    parts = []
    for name, render in SCENARIOS.items():
        if name in groups:
            parts.append("\n".join(render(groups[name])))
    return "\n\n".join(parts)


def render(report: dict) -> str:
    parts = []
    if any("op" in b["extra_info"] for b in report["benchmarks"]):
        parts.append(table(report))
    scenarios = scenario_tables(report)
    if scenarios:
        parts.append(scenarios)
    return "\n\n".join(parts)


if __name__ == "__main__":
    merged: dict = {"benchmarks": []}
    for path in sys.argv[1:]:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        merged["benchmarks"] += data["benchmarks"]
        merged.setdefault("machine_info", data.get("machine_info", {}))
    print(render(merged))
