#!/usr/bin/env python3
"""Coverage-guided differential fuzzer of the SSE codec (atheris / libFuzzer).

Every input is decoded (by ``decode``, the same way with or without atheris) into
a chunk of text plus arguments, and each codec entry point is run on both
backends, ``sse_redis._core`` (Rust) and ``sse_redis._pure`` (Python):

* ``SSEParser().feed`` over the text cut into random pieces, and over it whole;
* ``patch_nulls(text, run_id, seq_id)`` (then again on its output: idempotent);
* ``sniff_stop_reason(text)``, ``is_terminal(text)``;
* ``set_event_id(text, event_id)`` (its output must parse to ``event_id``);
* ``encode_event(text, event=..., id=..., retry=...)`` (its output must parse back).

The backends must give equal results, or raise exceptions of the very same type.
The only exceptions allowed are the documented ones for bad arguments
(``TypeError``, ``ValueError``, ``UnicodeEncodeError``); anything else, a Rust
panic included (``pyo3_runtime.PanicException``), escapes and is a crash.  On
valid arguments the answers are also held against ``ref_*``: plain, slow
readings of docs/codec.md written for this harness alone.

Run (libFuzzer flags pass through; FUZZ_LENIENT_ORDER=1, see ``agree``):

    python fuzz/fuzz_codec.py --seeds /tmp/corpus 2000       # a seed corpus
    python fuzz/fuzz_codec.py -runs=1000000 -seed=1 /tmp/corpus   # long run
    python fuzz/fuzz_codec.py crash-<sha1>                   # replay one input

Without atheris, ``python fuzz/fuzz_codec.py --random N [--seed S]`` runs N
pseudo-random inputs (``random_input``) through the same check.
``tests/test_fuzz.py`` imports ``test_one_input`` / ``random_input``.
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
from itertools import pairwise

if __name__ == "__main__" and not {"--random", "--seeds"} & set(sys.argv):
    import atheris

    # Coverage of the pure twin guides the fuzzer (the Rust core is opaque to it).
    with atheris.instrument_imports(include=["sse_redis"]):
        import sse_redis._pure  # noqa: F401

from sse_redis import _core as RUST
from sse_redis import _pure as PURE

BACKENDS = (("rust", RUST), ("pure", PURE))
U64 = 1 << 64

# ---------------------------------------------------------------- input decoding

# Text bytes: 0x00-0x7f are themselves, 0x80-0xbf one of these tokens, 0xc0-0xcf
# one of SPECIAL, 0xd0-0xfd a BMP character from two bytes, 0xfe any code point
# from three bytes (lone surrogates included), 0xff ends the string.
TOKENS = [
    "data:",
    "data: ",
    "event:",
    "event: ",
    "id:",
    "id: ",
    "retry:",
    "retry: ",
    "\r",
    "\n",
    "\r\n",
    "\n\n",
    "\r\r",
    "\r\n\r\n",
    ":",
    ": ",
    '"run_id"',
    '"seq_id"',
    "null",
    '"run_id":null',
    '"seq_id": null',
    '"run_id" :\tnull',
    "nul",
    "nullx",
    "[DONE]",
    "data: [DONE]",
    "error",
    "event: error",
    "stop_reason",
    '"stop_reason"',
    '"message_type"',
    '"message_type":"stop_reason"',
    '"stop_reason":"end_turn"',
    '{"message_type":"stop_reason","stop_reason":"x"}',
    "message_type",
    '"',
    '\\"',
    "\\",
    "\\\\",
    "{",
    "}",
    "[",
    "]",
    ",",
    " ",
    "\t",
    "id",
    "data",
    "Data:",
    "retry: 15",
    "retry: 18446744073709551615",
    "retry: 18446744073709551616",
    "\0",
    "\ufeff",
    "\\u0000",
    "\\ud800",
    "\\ud83d\\ude00",
    "1e5",
    "-0.5",
    "true",
    "false",
    '"a":',
    "{}",
    "[[[[",
]
assert len(TOKENS) == 64, len(TOKENS)
SPECIAL = [
    "\ufeff",
    "é",
    "\u2028",
    "\u2029",
    "\x85",
    "\xa0",
    "😀",
    "\U0010ffff",
    "\x7f",
    "\x0b",
    "\x0c",
    "\x1c",
    "\u3000",
    "\x01",
    "\x1f",
    "ÿ",
]
END = 0xFF


class Reader:
    """Reads an input's bytes; past the end every byte is 0."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def int(self, nbytes: int) -> int:
        return int.from_bytes(bytes(self.byte() for _ in range(nbytes)), "big")

    def text(self) -> str:
        out = []
        data = self.data
        while self.pos < len(data):
            b = data[self.pos]
            self.pos += 1
            if b < 0x80:
                out.append(chr(b))
            elif b < 0xC0:
                out.append(TOKENS[b - 0x80])
            elif b < 0xD0:
                out.append(SPECIAL[b - 0xC0])
            elif b < 0xFE:
                out.append(chr(0x80 + ((b - 0xD0) << 8 | self.byte())))
            elif b == 0xFE:
                out.append(chr(self.int(3) % 0x110000))
            else:
                break
        return "".join(out)


class Case:
    """One decoded input: the text, the arguments, the cuts of the text."""

    __slots__ = ("cuts", "event", "event_id", "run_id", "seq_id", "text", "text_arg")

    def __repr__(self) -> str:
        return "Case(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__) + ")"


def decode(data: bytes) -> Case:
    r = Reader(data)
    flags, run_mode, seq_mode, id_mode, ev_mode, ncuts = (r.byte() for _ in range(6))
    case = Case()
    case.text = r.text()
    case.run_id = {
        0: "R",
        1: None,
        2: None,
        3: "",
        4: 'q"\\\n\r\t\0\x01\x7f\u2028é😀',
        5: 1,
        6: "x\ud800",
        7: b"R",
    }.get(run_mode % 16, "")
    if run_mode % 16 >= 8:
        case.run_id = r.text()
    case.seq_id = {
        0: 7,
        1: None,
        2: None,
        3: 0,
        4: U64 - 1,
        5: U64,
        6: -1,
        7: True,
        8: 1.0,
        9: "1",
    }.get(seq_mode % 16)
    if seq_mode % 16 >= 10:
        case.seq_id = r.int(1 + seq_mode % 8)
    case.event_id = {
        0: "E",
        1: "",
        2: "42",
        3: "a\nb",
        4: "\0",
        5: "\r",
        6: "x\udfff",
        7: None,
        8: 5,
    }.get(id_mode % 16)
    if id_mode % 16 >= 9:
        case.event_id = r.text()  # may hold CR, LF or NUL: ValueError on both
    case.event = {0: None, 1: "", 2: "update", 3: "e\r", 4: 1, 5: "\udc80"}.get(ev_mode % 8)
    if ev_mode % 8 >= 6:
        case.event = r.text()
    case.cuts = sorted(r.int(2) % (len(case.text) + 1) for _ in range(ncuts % 9))
    # Now and then the text itself is of a wrong type.
    case.text_arg = {0xFE: None, 0xFF: case.text.encode("utf-8", "surrogatepass")}.get(flags, case.text)
    return case


def _tok(token: str) -> int:
    return 0x80 + TOKENS.index(token)


# random_input's building blocks, as input bytes.
_NAMES = [_tok(t) for t in ("data:", "data: ", "data: ", "data: ", "event: ", "id: ", "id:", "retry: ", ": ")] + [
    b"i"[0],
    _tok("Data:"),
    _tok("data"),
    _tok("id"),
]
_VALUE = [_tok(t) for t in TOKENS if "\r" not in t and "\n" not in t] + list(b'"\\:{}[], \t0aZ')
_JSON = [
    _tok(t)
    for t in (
        '"run_id"',
        '"seq_id"',
        "null",
        '"run_id":null',
        '"seq_id": null',
        '"run_id" :\tnull',
        ":",
        ",",
        "{",
        "}",
        '"message_type":"stop_reason"',
        '"stop_reason":"end_turn"',
        '"stop_reason"',
        '"a":',
        "[",
        "]",
        '"',
        "\\",
        '\\"',
        "1e5",
        "true",
        "\\u0000",
        "\\ud800",
        "\\ud83d\\ude00",
        " ",
    )
]
_BREAKS = [_tok("\n")] * 6 + [_tok("\r\n"), _tok("\r"), _tok("\n\n"), _tok("\r\n\r\n")]


def random_input(rng: random.Random, size: int = 12) -> bytes:
    """Bytes for ``test_one_input``: a header, then lines of fields whose values
    mix SSE and JSON tokens, then the bytes that arguments and cuts read."""
    header = bytes(rng.choice((0, 0, 0, rng.randrange(256))) for _ in range(6))
    body = bytearray()
    for _ in range(rng.randrange(size)):
        if rng.random() < 0.2:
            body.append(_tok("\n"))  # a blank line, most likely
            continue
        if rng.random() < 0.04:
            body += bytes([rng.choice((_tok("data: [DONE]"), _tok("event: error"))), rng.choice(_BREAKS)])
            continue
        body.append(rng.choice(_NAMES))
        if rng.random() < 0.3:
            body.append(_tok('{"message_type":"stop_reason","stop_reason":"x"}'))
        alphabet = _JSON if rng.random() < 0.6 else _VALUE
        for _ in range(rng.randrange(8)):
            roll = rng.random()
            if roll < 0.9:
                body.append(rng.choice(alphabet))
            elif roll < 0.995:
                body.append(rng.randrange(0xC0, 0xD0))  # a special character
            else:
                body += bytes([0xFE, 0, 0xD8 + rng.randrange(8), rng.randrange(256)])  # a lone surrogate
        body.append(rng.choice(_BREAKS))
    if body and rng.random() < 0.3:
        body.pop()  # an unterminated last line
    tail = bytes(rng.randrange(256) for _ in range(rng.randrange(24)))
    return header + bytes(body) + b"\xff" + tail


# ---------------------------------------------------------------- reference readings of docs/codec.md

_BREAK_KEPT = re.compile(r"(\r\n|\r|\n)")


def ref_lines(text: str) -> list[tuple[int, str, str]]:
    """(offset, line, break) for every line; an empty remainder is no line."""
    parts = _BREAK_KEPT.split(text)
    out, pos = [], 0
    for i in range(0, len(parts), 2):
        line, brk = parts[i], parts[i + 1] if i + 1 < len(parts) else ""
        if line or brk:
            out.append((pos, line, brk))
        pos += len(line) + len(brk)
    return out


def ref_field(line: str) -> tuple[str, str] | None:
    if not line or line[0] == ":":
        return None
    name, _colon, value = line.partition(":")
    value = value.removeprefix(" ")
    return name, value


def ref_parse(stream: str) -> tuple[list[tuple], str]:
    stream = stream.removeprefix("\ufeff")
    events, data, etype, last_id, retry = [], [], "", "", None
    for _, line, brk in ref_lines(stream):
        if not brk:
            break  # the unterminated last line is not a line yet
        if not line:
            if data:
                events.append((etype or "message", "\n".join(data), last_id, retry))
                retry = None
            data, etype = [], ""
            continue
        field = ref_field(line)
        if field is None:
            continue
        name, value = field
        if name == "data":
            data.append(value)
        elif name == "event":
            etype = value
        elif name == "id" and "\0" not in value:
            last_id = value
        elif name == "retry" and value and all("0" <= c <= "9" for c in value):
            digits = value.lstrip("0") or "0"
            if len(digits) <= 20 and int(digits) < U64:
                retry = int(digits)
    return events, last_id


def ref_patch_nulls(text: str, run_id: str | None, seq_id: int | None) -> str:
    fills = {}
    if run_id is not None:
        fills['"run_id"'] = json.dumps(run_id, ensure_ascii=False)
    if seq_id is not None:
        fills['"seq_id"'] = str(seq_id)
    out, done = [], 0
    for start, line, _ in ref_lines(text):
        if not line.startswith("data:"):
            continue
        end = start + len(line)
        i = start + 5
        while i < end:
            if text[i] != '"':
                i += 1
                continue
            j = i + 1
            while j < end and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            tok_end = min(j + 1, end)
            fill = fills.get(text[i:tok_end])
            if fill is not None:
                k = tok_end
                while k < end and text[k] in " \t":
                    k += 1
                if k < end and text[k] == ":":
                    k += 1
                    while k < end and text[k] in " \t":
                        k += 1
                    if text[k : k + 4] == "null" and k + 4 <= end and (k + 4 == end or text[k + 4] in ",}] \t"):
                        out.append(text[done:k])
                        out.append(fill)
                        done = i = k + 4
                        continue
            i = tok_end
    return "".join(out) + text[done:]


def ref_is_terminal(chunk: str) -> bool:
    return any(ref_field(line) in (("data", "[DONE]"), ("event", "error")) for _, line, _ in ref_lines(chunk))


def _depth(node: object) -> int:
    if isinstance(node, dict):
        return 1 + max(map(_depth, node.values()), default=0)
    if isinstance(node, list):
        return 1 + max(map(_depth, node), default=0)
    return 0


def _not_json(name: str) -> None:
    raise ValueError(name)


def ref_sniff_stop_reason(chunk: str) -> str | None:
    if "stop_reason" not in chunk:
        return None
    block: list[str] | None = None
    for _, line, _ in [*ref_lines(chunk), (0, "", "")]:
        if not line:
            if block:
                break
            block = []
            continue
        field = ref_field(line)
        if field and field[0] == "data":
            block = (block or []) + [field[1]]
    if not block:
        return None
    try:
        obj = json.loads("\n".join(block), parse_constant=_not_json, parse_int=lambda s: 0, parse_float=lambda s: 0)
    except (ValueError, RecursionError):
        return None
    if type(obj) is not dict or _depth(obj) > 128 or obj.get("message_type") != "stop_reason":
        return None
    reason = obj.get("stop_reason")
    if type(reason) is not str:
        return None
    try:
        reason.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return reason


def ref_set_event_id(chunk: str, event_id: str) -> str:
    lines = ref_lines(chunk)
    nonblank = [i for i, (_, line, _) in enumerate(lines) if line]
    if not nonblank:
        return chunk + "id: " + event_id + "\n\n"
    last = nonblank[-1]
    first = last
    while first > 0 and lines[first - 1][1]:
        first -= 1
    head = chunk[: lines[first][0]]
    kept = [(line, brk) for _, line, brk in lines[first : last + 1] if (ref_field(line) or ("",))[0] != "id"]
    body = "".join(line + brk for line, brk in kept)
    if last + 1 < len(lines):
        blank_start, _, blank_brk = lines[last + 1]
        return head + body + "id: " + event_id + blank_brk + chunk[blank_start:]
    if kept and not kept[-1][1]:
        body += "\n"
    return head + body + "id: " + event_id + "\n\n"


# ---------------------------------------------------------------- the check

ALLOWED = (TypeError, ValueError)  # UnicodeEncodeError is a ValueError
LENIENT_ORDER = os.environ.get("FUZZ_LENIENT_ORDER") == "1"


class Disagreement(AssertionError):
    pass


def call(fn, *args, **kwargs):
    """("ok", result) or ("raise", exception type); other exceptions escape (a crash)."""
    try:
        return ("ok", fn(*args, **kwargs))
    except ALLOWED as exc:
        return ("raise", type(exc))


def agree(what: str, case: Case, got: dict, faults: int = 0) -> tuple:
    """The one outcome both backends gave, or a Disagreement.

    With ``LENIENT_ORDER`` set, a call given two or more bad arguments may raise
    a different (allowed) type on each backend: which argument is checked first
    is not pinned down by docs/codec.md (see tests/test_fuzz.py, findings).
    """
    rust, pure = got["rust"], got["pure"]
    if rust != pure:
        if LENIENT_ORDER and faults >= 2 and rust[0] == pure[0] == "raise":
            return rust
        raise Disagreement(f"{what}: rust {rust!r} != pure {pure!r} on {case!r}")
    return rust


def faults(*args: tuple[object, str]) -> int:
    """How many of ``(value, kind)`` are bad arguments; kinds: ``str``,
    ``str?`` (or None), ``field`` / ``field?`` (a str without CR, LF, NUL),
    ``u64?`` (an int in 0..2**64 or None)."""
    bad = 0
    for value, kind in args:
        if kind.endswith("?"):
            if value is None:
                continue
            kind = kind[:-1]
        if kind == "u64":
            bad += type(value) is not int or not 0 <= value < U64
        elif (
            not isinstance(value, str) or not utf8_ok(value) or (kind == "field" and any(c in value for c in "\r\n\0"))
        ):
            bad += 1
    return bad


def utf8_ok(*values: object) -> bool:
    try:
        for v in values:
            if isinstance(v, str):
                v.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def expect(cond: bool, what: str, case: Case, detail: object = "") -> None:
    if not cond:
        raise Disagreement(f"{what}: {detail!r} on {case!r}")


def parse_with(mod, feeds) -> tuple:
    parser = mod.SSEParser()
    events = []
    try:
        for text in feeds:
            got = parser.feed(text)
            assert type(got) is list
            for e in got:
                assert type(e) is mod.Event
                events.append((e.event, e.data, e.id, e.retry))
    except ALLOWED as exc:
        return ("raise", type(exc), events)
    return ("ok", events, parser.last_event_id)


def check_parser(case: Case) -> None:
    text = case.text_arg
    if isinstance(text, str):
        bounds = [0, *case.cuts, len(text)]
        pieces = [text[a:b] for a, b in pairwise(bounds)]
    else:
        pieces = [text]
    split = agree("SSEParser split", case, {n: parse_with(m, pieces) for n, m in BACKENDS})
    whole = agree("SSEParser whole", case, {n: parse_with(m, [text]) for n, m in BACKENDS})
    if whole[0] == "ok":
        expect(split == whole, "SSEParser split != whole", case, (split, whole))
        events, last_id = whole[1], whole[2]
        expect((events, last_id) == ref_parse(text), "SSEParser vs docs", case, (events, last_id, ref_parse(text)))
        for etype, _data, _eid, retry in events:
            expect(etype != "" and (retry is None or 0 <= retry < U64), "SSEParser event", case, (etype, retry))


def check_patch_nulls(case: Case) -> None:
    text, run_id, seq_id = case.text_arg, case.run_id, case.seq_id
    got = {}
    for name, mod in BACKENDS:
        out = call(mod.patch_nulls, text, run_id, seq_id)
        if out[0] == "ok":
            expect(type(out[1]) is str, "patch_nulls type", case, out)
            # Nothing replaced <=> the very same object (a fill never reads "null").
            out = ("ok", out[1], out[1] is text, out[1] == text)
            expect(out[2] == out[3], "patch_nulls identity", case, (name, out))
            again = mod.patch_nulls(out[1], run_id, seq_id)
            expect(again is out[1], "patch_nulls not idempotent", case, (name, again))
        got[name] = out
    out = agree("patch_nulls", case, got, faults((text, "str"), (run_id, "str?"), (seq_id, "u64?")))
    if out[0] == "ok":
        want = ref_patch_nulls(text, run_id, seq_id)
        expect(out[1] == want, "patch_nulls vs docs", case, (out[1], want))


def check_chunk_functions(case: Case) -> None:
    text = case.text_arg
    sniff = agree("sniff_stop_reason", case, {n: call(m.sniff_stop_reason, text) for n, m in BACKENDS})
    term = agree("is_terminal", case, {n: call(m.is_terminal, text) for n, m in BACKENDS})
    if sniff[0] == "ok":
        expect(sniff[1] is None or type(sniff[1]) is str, "sniff_stop_reason type", case, sniff)
        want = ref_sniff_stop_reason(text)
        expect(sniff[1] == want, "sniff_stop_reason vs docs", case, (sniff[1], want))
    if term[0] == "ok":
        expect(type(term[1]) is bool, "is_terminal type", case, term)
        want = ref_is_terminal(text)
        expect(term[1] == want, "is_terminal vs docs", case, (term[1], want))


def check_set_event_id(case: Case) -> None:
    text, event_id = case.text_arg, case.event_id
    got = {n: call(m.set_event_id, text, event_id) for n, m in BACKENDS}
    out = agree("set_event_id", case, got, faults((text, "str"), (event_id, "field")))
    bad_id = isinstance(event_id, str) and any(c in event_id for c in "\r\n\0")
    if out[0] == "ok":
        expect(not bad_id and type(out[1]) is str, "set_event_id accepted", case, out)
        want = ref_set_event_id(text, event_id)
        expect(out[1] == want, "set_event_id vs docs", case, (out[1], want))
        for name, mod in BACKENDS:
            parsed = parse_with(mod, [out[1]])
            expect(parsed[0] == "ok" and parsed[2] == event_id, "set_event_id id", case, (name, parsed))
    elif isinstance(text, str) and isinstance(event_id, str) and utf8_ok(text, event_id):
        expect(bad_id and out[1] is ValueError, "set_event_id refused", case, out)


def check_encode_event(case: Case) -> None:
    text, event, eid, retry = case.text_arg, case.event, case.event_id, case.seq_id
    got = {n: call(m.encode_event, text, event=event, id=eid, retry=retry) for n, m in BACKENDS}
    out = agree("encode_event", case, got, faults((text, "str"), (event, "field?"), (eid, "field?"), (retry, "u64?")))
    if out[0] == "ok":
        for name, mod in BACKENDS:
            parsed = parse_with(mod, [out[1]])
            data = text.replace("\r\n", "\n").replace("\r", "\n")
            want = ("ok", [(event or "message", data, eid or "", retry)], eid or "")
            expect(parsed == want, "encode_event round trip", case, (name, parsed, want))


def check_case(case: Case) -> None:
    check_parser(case)
    check_patch_nulls(case)
    check_chunk_functions(case)
    check_set_event_id(case)
    check_encode_event(case)


def test_one_input(data: bytes) -> None:
    check_case(decode(data))


def _seeds_main(argv: list[str]) -> None:
    """Writes N ``random_input`` files to DIR: a seed corpus for libFuzzer."""
    import pathlib

    where = pathlib.Path(argv[argv.index("--seeds") + 1])
    count = int(argv[argv.index("--seeds") + 2])
    where.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for i in range(count):
        (where / f"seed-{i:05d}").write_bytes(random_input(rng))
    print(f"{count} seeds in {where}")


def _random_main(argv: list[str]) -> None:
    count = int(argv[argv.index("--random") + 1])
    seed = int(argv[argv.index("--seed") + 1]) if "--seed" in argv else 0
    rng = random.Random(seed)
    for i in range(count):
        data = random_input(rng)
        try:
            test_one_input(data)
        except BaseException:
            print(f"input #{i}: {data!r}", file=sys.stderr)
            raise
    print(f"{count} random inputs (seed {seed}): ok")


if __name__ == "__main__":
    if "--seeds" in sys.argv:
        _seeds_main(sys.argv)
    elif "--random" in sys.argv:
        _random_main(sys.argv)
    else:
        # The harness's own reference readings guide the fuzzer too.
        for fn in (ref_parse, ref_patch_nulls, ref_sniff_stop_reason, ref_set_event_id, ref_lines, ref_field):
            globals()[fn.__name__] = atheris.instrument_func(fn)
        atheris.Setup(sys.argv, test_one_input)
        atheris.Fuzz()
