"""Writes testdata/*.jsonl: the codec's shared test vectors, one JSON object a line.

Both backends read them: the Rust unit tests (src/codec/vectors.rs, `cargo test`)
and the Python suite (tests/test_codec.py::test_vectors). The inputs are the
example cases of tests/test_codec.py (its parametrize lists) plus a few more from
docs/codec.md; the outputs are today's behaviour, written only when the Rust core
and the pure twin agree on every one. Rerun after a deliberate rule change, and
review the diff:

    python scripts/make_testdata.py
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "python")]

import test_codec  # noqa: E402  (needs the path above)
from sse_redis import _core, _pure  # noqa: E402

MAX_CHARS = 20_000  # longer inputs (100,000-deep nesting) stay in the Python tests


def examples(test: Callable[..., Any]) -> list[Any]:
    """The argument values of ``test``'s parametrize mark."""
    (mark,) = [m for m in test.pytestmark if m.name == "parametrize"]
    return list(mark.args[1])


def parse(codec: Any, feeds: list[str]) -> dict[str, Any]:
    parser = codec.SSEParser()
    events = [[e.event, e.data, e.id, e.retry] for feed in feeds for e in parser.feed(feed)]
    return {"events": events, "last_event_id": parser.last_event_id}


def run(name: str, case: dict[str, Any]) -> Any:
    """The vector's output on both backends; they must agree."""
    outs = []
    for codec in (_core, _pure):
        if name == "is_terminal":
            out: Any = codec.is_terminal(case["chunk"])
        elif name == "sniff_stop_reason":
            out = codec.sniff_stop_reason(case["chunk"])
        elif name == "patch_nulls":
            text = case["text"]
            got = codec.patch_nulls(text, case["run_id"], case["seq_id"])
            out = None if got is text else got  # null: the very same object, nothing matched
        elif name == "set_event_id":
            out = codec.set_event_id(case["chunk"], case["event_id"])
        elif name == "encode_event":
            out = codec.encode_event(case["data"], event=case["event"], id=case["id"], retry=case["retry"])
        elif name == "parse":
            out = parse(codec, case["feeds"])
        else:
            raise ValueError(name)
        outs.append(out)
    if outs[0] != outs[1]:
        raise SystemExit(f"{name}: the backends disagree on {case!r}: rust {outs[0]!r}, python {outs[1]!r}")
    return outs[0]


def cases() -> dict[str, Iterable[dict[str, Any]]]:
    t = test_codec
    is_terminal = [{"chunk": c} for c in examples(t.test_is_terminal_true) + examples(t.test_is_terminal_false)]
    sniff = [{"chunk": c} for c, _ in examples(t.test_sniff_stop_reason_finds)]
    sniff += [{"chunk": c} for c in examples(t.test_sniff_stop_reason_rejects)]
    sniff.append({"chunk": 'data: {"message_type":"stop_reason","stop_reason":"ok","note":"\\ud800"}\n\n'})
    patch = [{"text": text, "run_id": "R", "seq_id": 7} for text, _ in examples(t.test_patch_nulls_examples)]
    patch += [
        {"text": text, "run_id": "R", "seq_id": 7}
        for text in examples(t.test_patch_nulls_no_match_returns_the_same_object)
    ]
    both = 'data: {"run_id":null,"seq_id":null}\n\n'
    patch += [{"text": both, "run_id": r, "seq_id": s} for r, s in [(None, 7), ("R", None), (None, None)]]
    patch += [
        {"text": 'data: {"run_id":null}\n\n', "run_id": r, "seq_id": None}
        for r in examples(t.test_patch_nulls_escapes_run_id_as_json)
    ]
    patch += [
        {"text": 'data: {"seq_id":null}', "run_id": None, "seq_id": s}
        for s in examples(t.test_patch_nulls_writes_seq_id_in_decimal)
    ]
    set_id = [{"chunk": c, "event_id": "X"} for c, _ in examples(t.test_set_event_id_examples)]
    set_id.append({"chunk": "data: a\n\n", "event_id": ""})
    encode = []
    for args, kwargs, _ in examples(t.test_encode_event_examples):
        encode.append(
            {"data": args[0], "event": kwargs.get("event"), "id": kwargs.get("id"), "retry": kwargs.get("retry")}
        )
    parse_ = [{"feeds": [stream]} for stream, _ in examples(t.test_parser_examples)]
    # Split feeds: a CR ending one feed and an LF starting the next are one break; the BOM only first.
    parse_ += [
        {"feeds": ["data: a\r", "\ndata: b\r\n\r\n"]},
        {"feeds": ["data: a\r", "", "\ndata: b\r\n\r", "\n"]},
        {"feeds": ["data: a\r", "\rdata: b\n\n"]},
        {"feeds": ["", "\ufeffdata: x\n\n"]},
        {"feeds": ["\ufeff", "data: x\n\n"]},
        {"feeds": ["\ufeff", "\ufeffdata: x\n\n"]},
        {"feeds": ["d", "\ufeffata: x\n\n"]},
        {"feeds": ["id: 42\n"]},
        {"feeds": ["id: 42\n", "id: bad\0\ndata: x\n\n"]},
    ]
    for stream in examples(t.test_parser_every_two_way_split_and_char_by_char):
        parse_.append({"feeds": list(stream)})
    return {
        "is_terminal": is_terminal,
        "sniff_stop_reason": sniff,
        "patch_nulls": patch,
        "set_event_id": set_id,
        "encode_event": encode,
        "parse": parse_,
    }


def main() -> None:
    for name, inputs in cases().items():
        lines, seen = [], set()
        for case in inputs:
            key = json.dumps(case, sort_keys=True)
            if key in seen or len(key) > MAX_CHARS:
                continue
            seen.add(key)
            lines.append(json.dumps({**case, "expected": run(name, case)}, ensure_ascii=False))
        path = ROOT / "testdata" / f"{name}.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"{path.relative_to(ROOT)}: {len(lines)} vectors")


if __name__ == "__main__":
    main()
