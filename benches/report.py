"""Markdown table of a ``bench_codec.py`` run, for the README.

    python benches/report.py /tmp/bench_codec.json

Cells are median microseconds per chunk; the ratios are taken on "all four".
"""

from __future__ import annotations

import json
import sys

WAYS = ("rust", "python", "reference")
ALL = "all four"


def table(report: dict) -> str:
    us: dict[tuple[str, str], float] = {}
    ops: list[str] = []
    chunks = 0
    for bench in report["benchmarks"]:
        info = bench["extra_info"]
        us[info["way"], info["op"]] = info["median_us_per_chunk"]
        if info["op"] not in ops:
            ops.append(info["op"])
        chunks = info["chunks"]
    ops.sort(key=lambda op: op == ALL)  # the total goes last

    machine = report.get("machine_info", {})
    lines = [
        f"Median µs per chunk over {chunks:,} chunks of `llm_run_chunks()` "
        f"(Python {machine.get('python_version', '?')}, {machine.get('cpu', {}).get('brand_raw', '?')}).",
        "",
        "| way | " + " | ".join(f"`{op}`" if op != ALL else op for op in ops) + " | speed-up vs reference | time vs rust |",
        "|---|" + "---:|" * (len(ops) + 2),
    ]
    for way in WAYS:
        cells = [f"{us[way, op]:.3f}" for op in ops]
        total = us[way, ALL]
        cells += [f"{us['reference', ALL] / total:.1f}×", f"{total / us['rust', ALL]:.1f}×"]
        lines.append(f"| {way} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as f:
        print(table(json.load(f)))
