"""Per-chunk codec cost: the Rust core, its pure-Python twin, and the reference way.

Every benchmark walks the same corpus (one synthetic LLM agent run) once per
round; groups put the three ways side by side for each operation and for all
four together, which is what the writer does to every chunk.

    python -m pytest benches/bench_codec.py --benchmark-json=/tmp/bench_codec.json -q
    python benches/report.py /tmp/bench_codec.json
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from sse_redis import _core, _pure
from sse_redis.tools.corpus import llm_run_chunks

CORPUS = llm_run_chunks()
RUN_ID = "run-6b1c2f0e-8d44-4c1a-9a0e-3f5d7c2b9e11"


# The reference way: what the original module did to each chunk, with plain
# string tests, str.replace and a json.loads of every data part.
def _reference_is_terminal(chunk: str) -> bool:
    return "data: [DONE]" in chunk or "event: error" in chunk


def _reference_sniff_stop_reason(chunk: str) -> str | None:
    for part in chunk.split("data: "):
        if part.startswith("{"):
            try:
                obj = json.loads(part)
            except ValueError:
                continue
            if isinstance(obj, dict) and obj.get("message_type") == "stop_reason":
                return obj.get("stop_reason")
    return None


def _reference_patch_nulls(chunk: str, run_id: str, seq_id: int) -> str:
    # Only the compact spelling is caught: '"run_id": null' goes through as is.
    return chunk.replace('"run_id":null', f'"run_id":"{run_id}"').replace('"seq_id":null', f'"seq_id":{seq_id}')


def _reference_set_event_id(chunk: str, event_id: str) -> str:
    return f"id: {event_id}\n{chunk}"


REFERENCE = SimpleNamespace(
    is_terminal=_reference_is_terminal,
    sniff_stop_reason=_reference_sniff_stop_reason,
    patch_nulls=_reference_patch_nulls,
    set_event_id=_reference_set_event_id,
)
WAYS = {"rust": _core, "python": _pure, "reference": REFERENCE}


def _loops(way) -> dict:
    """One whole-corpus pass per operation, and one doing all four per chunk."""
    is_terminal, sniff = way.is_terminal, way.sniff_stop_reason
    patch, set_id = way.patch_nulls, way.set_event_id

    def all_four(corpus):
        for seq, chunk in enumerate(corpus):
            is_terminal(chunk)
            sniff(chunk)
            set_id(patch(chunk, RUN_ID, seq), str(seq))

    return {
        "is_terminal": lambda corpus: [is_terminal(c) for c in corpus],
        "sniff_stop_reason": lambda corpus: [sniff(c) for c in corpus],
        "patch_nulls": lambda corpus: [patch(c, RUN_ID, seq) for seq, c in enumerate(corpus)],
        "set_event_id": lambda corpus: [set_id(c, str(seq)) for seq, c in enumerate(corpus)],
        "all four": all_four,
    }


OPS = list(_loops(REFERENCE))


@pytest.mark.parametrize("way", list(WAYS))
@pytest.mark.parametrize("op", OPS)
def test_codec(benchmark, op, way):
    benchmark.group = op
    benchmark(_loops(WAYS[way])[op], CORPUS)
    stats = benchmark.stats.stats
    benchmark.extra_info.update(
        way=way,
        op=op,
        chunks=len(CORPUS),
        us_per_chunk=stats.mean / len(CORPUS) * 1e6,
        median_us_per_chunk=stats.median / len(CORPUS) * 1e6,
    )


def test_rust_and_python_agree_on_the_corpus():
    # Timings of different results would compare nothing.
    for op in OPS[:-1]:
        assert _loops(_core)[op](CORPUS) == _loops(_pure)[op](CORPUS), op
    assert _loops(REFERENCE)["is_terminal"](CORPUS) == _loops(_core)["is_terminal"](CORPUS)
    assert _loops(REFERENCE)["sniff_stop_reason"](CORPUS) == _loops(_core)["sniff_stop_reason"](CORPUS)
