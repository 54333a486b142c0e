"""The codec rules of docs/codec.md, held against both backends.

Every test takes the ``codec`` fixture (Rust core, then pure twin); the
differential tests at the end take ``both`` and demand identical answers.
"""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

U64_MAX = 2**64 - 1

FEW = settings(max_examples=40, deadline=None)
SOME = settings(max_examples=100, deadline=None)
MANY = settings(max_examples=250, deadline=None)

# ---------------------------------------------------------------- strategies

CHARS = st.characters(codec="utf-8")  # no lone surrogates: every backend can take them
TEXT = st.text(CHARS, max_size=40)
FIELD = st.text(st.characters(codec="utf-8", exclude_characters="\r\n\0"), max_size=20)
U64 = st.integers(0, U64_MAX)

# Fragments that make the rules fire: line breaks of every kind, field names,
# the keys patch_nulls looks for, the terminal markers, JSON punctuation.
FRAGMENTS = [
    "\r",
    "\n",
    "\r\n",
    "\n\n",
    "\r\r",
    "\ufeff",
    "\0",
    '"',
    "\\",
    '\\"',
    ":",
    " ",
    "\t",
    "data:",
    "data: ",
    "event:",
    "event: ",
    "id:",
    "id: ",
    "id",
    "retry:",
    "retry: 15",
    "Data:",
    ": comment",
    "error",
    "[DONE]",
    "data: [DONE]",
    "event: error",
    '"run_id"',
    '"seq_id"',
    '"run_id":null',
    '"seq_id": null',
    "null",
    "nullx",
    "{",
    "}",
    "[",
    "]",
    ",",
    "stop_reason",
    '"message_type":"stop_reason"',
    '"stop_reason":"end_turn"',
    '{"message_type":"stop_reason","stop_reason":"x"}',
    "é",
    "\u2028",
    "😀",
]
SOUP = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(CHARS, max_size=4)), max_size=30).map("".join)


@st.composite
def event_kwargs(draw) -> dict:
    """Arguments for one valid encode_event call."""
    return {
        "data": draw(TEXT),
        "event": draw(st.none() | FIELD),
        "id": draw(st.none() | FIELD),
        "retry": draw(st.none() | U64),
    }


def encoded(codec, kwargs: dict) -> str:
    kwargs = dict(kwargs)
    return codec.encode_event(kwargs.pop("data"), **kwargs)


def expected_events(kwargs_list: list[dict]) -> tuple[list[tuple], str]:
    """What a parser must return for encoded events, and its last event id."""
    out, last_id = [], ""
    for kw in kwargs_list:
        if kw["id"] is not None:
            last_id = kw["id"]
        data = kw["data"].replace("\r\n", "\n").replace("\r", "\n")
        out.append((kw["event"] or "message", data, last_id, kw["retry"]))
    return out, last_id


# ---------------------------------------------------------------- helpers


def as_tuple(event) -> tuple:
    return (event.event, event.data, event.id, event.retry)


def parse(codec, *feeds: str) -> tuple[list[tuple], str]:
    """The events (as tuples) and last event id after feeding ``feeds`` in turn."""
    parser = codec.SSEParser()
    events = []
    for text in feeds:
        events.extend(parser.feed(text))
    return [as_tuple(e) for e in events], parser.last_event_id


def split_at(text: str, cuts: list[int]) -> list[str]:
    bounds = [0, *sorted(cuts), len(text)]
    return [text[a:b] for a, b in pairwise(bounds)]


# ---------------------------------------------------------------- Event


def test_event_defaults_and_attributes(codec):
    ev = codec.Event("x")
    assert (ev.event, ev.data, ev.id, ev.retry) == ("message", "x", "", None)
    ev = codec.Event("d", event="e", id="7", retry=3)
    assert (ev.event, ev.data, ev.id, ev.retry) == ("e", "d", "7", 3)
    ev = codec.Event("d", "e", "7", 3)
    assert as_tuple(ev) == ("e", "d", "7", 3)


@pytest.mark.parametrize("attr", ["event", "data", "id", "retry"])
def test_event_attributes_are_read_only(codec, attr):
    ev = codec.Event("x")
    with pytest.raises(AttributeError):
        setattr(ev, attr, "y")


def test_event_equality_and_hash(codec):
    a = codec.Event("x", event="e", id="1", retry=5)
    assert a == codec.Event("x", event="e", id="1", retry=5)
    assert hash(a) == hash(codec.Event("x", event="e", id="1", retry=5))
    for other in (
        codec.Event("y", event="e", id="1", retry=5),
        codec.Event("x", event="f", id="1", retry=5),
        codec.Event("x", event="e", id="2", retry=5),
        codec.Event("x", event="e", id="1", retry=None),
    ):
        assert a != other
        assert a != other
    assert a != ("e", "x", "1", 5)
    assert a != "x"
    assert a.__eq__("x") is NotImplemented


def test_event_repr(codec):
    assert repr(codec.Event("x")) == "Event(event='message', data='x', id='', retry=None)"
    ev = codec.Event("it's\n", event='q"', id="\\", retry=10)
    assert repr(ev) == "Event(event=" + repr('q"') + ", data=" + repr("it's\n") + ", id=" + repr("\\") + ", retry=10)"


@pytest.mark.parametrize("name", ["Event", "SSEParser"])
def test_classes_are_final(codec, name):
    with pytest.raises(TypeError):
        type("Sub", (getattr(codec, name),), {})


# ---------------------------------------------------------------- encode_event


@pytest.mark.parametrize(
    ("args", "kwargs", "expected"),
    [
        (("x",), {}, "data: x\n\n"),
        (("",), {}, "data: \n\n"),
        (("a\n",), {}, "data: a\ndata: \n\n"),
        (("a\r\nb\rc\nd",), {}, "data: a\ndata: b\ndata: c\ndata: d\n\n"),
        (("\r\n",), {}, "data: \ndata: \n\n"),
        (("x",), {"event": "update"}, "event: update\ndata: x\n\n"),
        (("x",), {"event": ""}, "data: x\n\n"),
        (("x",), {"id": "5"}, "id: 5\ndata: x\n\n"),
        (("x",), {"id": ""}, "id: \ndata: x\n\n"),
        (("x",), {"retry": 0}, "retry: 0\ndata: x\n\n"),
        (("x",), {"retry": U64_MAX}, f"retry: {U64_MAX}\ndata: x\n\n"),
        (("x",), {"event": "e", "id": "i", "retry": 9}, "event: e\nid: i\nretry: 9\ndata: x\n\n"),
    ],
)
def test_encode_event_examples(codec, args, kwargs, expected):
    assert codec.encode_event(*args, **kwargs) == expected


@SOME
@given(kwargs=event_kwargs())
def test_encode_then_parse_round_trips(codec, kwargs):
    events, last_id = parse(codec, encoded(codec, kwargs))
    assert (events, last_id) == expected_events([kwargs])


@FEW
@given(kwargs_list=st.lists(event_kwargs(), max_size=5))
def test_encoded_stream_round_trips(codec, kwargs_list):
    stream = "".join(encoded(codec, kw) for kw in kwargs_list)
    assert parse(codec, stream) == expected_events(kwargs_list)


# ---------------------------------------------------------------- SSEParser


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        # The WHATWG spec's example streams.
        ("data: YHOO\ndata: +2\ndata: 10\n\n", [("message", "YHOO\n+2\n10", "", None)]),
        (
            ": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n",
            [
                ("message", "first event", "1", None),
                ("message", "second event", "", None),
                ("message", " third event", "", None),
            ],
        ),
        ("data\n\ndata\ndata\n\ndata:", [("message", "", "", None), ("message", "\n", "", None)]),
        ("data:test\n\ndata: test\n\n", [("message", "test", "", None)] * 2),
        # BOM: one, only at the very start.
        ("\ufeffdata: x\n\n", [("message", "x", "", None)]),
        ("\ufeff\ufeffdata: x\n\n", []),
        ("data: \ufeffx\n\n", [("message", "\ufeffx", "", None)]),
        # Comments, unknown fields, names are case-sensitive, a line without a colon.
        (":data: no\ndata: yes\n\n", [("message", "yes", "", None)]),
        ("foo: bar\nData: no\nDATA: no\ndata: yes\n\n", [("message", "yes", "", None)]),
        ("data\n\n", [("message", "", "", None)]),
        ("event\ndata: x\n\n", [("message", "x", "", None)]),
        ("data: a:b: c\n\n", [("message", "a:b: c", "", None)]),
        ("data:\tx\n\n", [("message", "\tx", "", None)]),
        # Event type: set, reset after a dispatch, and after an empty-data blank line too.
        ("event: e\ndata: x\n\ndata: y\n\n", [("e", "x", "", None), ("message", "y", "", None)]),
        ("event: e\n\ndata: y\n\n", [("message", "y", "", None)]),
        ("event:\ndata: y\n\n", [("message", "y", "", None)]),
        # Empty data buffer: nothing dispatched.
        ("\n\n\n", []),
        ("event: e\nid: 3\nretry: 5\n\n", []),
        # id: sticky, NUL ignored, empty resets.
        ("id: 1\ndata: a\n\ndata: b\n\n", [("message", "a", "1", None), ("message", "b", "1", None)]),
        ("id: 1\n\nid: 2\0\ndata: a\n\n", [("message", "a", "1", None)]),
        ("id: 1\ndata: a\n\nid:\ndata: b\n\n", [("message", "a", "1", None), ("message", "b", "", None)]),
        # retry: only ASCII digits below 2**64, kept until the next dispatched event.
        ("retry: 10\ndata: a\n\ndata: b\n\n", [("message", "a", "", 10), ("message", "b", "", None)]),
        ("retry: 10\n\ndata: a\n\n", [("message", "a", "", 10)]),
        ("retry: 10\nretry: 20\ndata: a\n\n", [("message", "a", "", 20)]),
        ("retry: 10\nretry: x\ndata: a\n\n", [("message", "a", "", 10)]),
        ("retry: 007\ndata: a\n\n", [("message", "a", "", 7)]),
        (f"retry: {'0' * 30}{U64_MAX}\ndata: a\n\n", [("message", "a", "", U64_MAX)]),
        (f"retry: {U64_MAX + 1}\ndata: a\n\n", [("message", "a", "", None)]),
        (f"retry: {'9' * 5000}\ndata: a\n\n", [("message", "a", "", None)]),
        *[
            (f"retry:{bad}\ndata: a\n\n", [("message", "a", "", None)])
            for bad in ["", " ", "  10", " 10a", " -1", " +1", " 1 0", " 1.5", " ١٢", " ²", " 10 "]
        ],
        # Line breaks of every kind; an unterminated last event is not returned.
        ("data: a\r\ndata: b\rdata: c\n\r\n", [("message", "a\nb\nc", "", None)]),
        ("data: a\r\rdata: b\r\r", [("message", "a", "", None), ("message", "b", "", None)]),
        ("data: a\n\ndata: b\n", [("message", "a", "", None)]),
        ("data: a\n\ndata: b", [("message", "a", "", None)]),
    ],
)
def test_parser_examples(codec, stream, expected):
    assert parse(codec, stream)[0] == expected


def test_parser_last_event_id(codec):
    parser = codec.SSEParser()
    assert parser.last_event_id == ""
    parser.feed("id: 42\n")
    assert parser.last_event_id == "42"  # set at once, before any dispatch
    parser.feed("id: bad\0\ndata: x\n\n")
    assert parser.last_event_id == "42"


def test_parser_returns_list_of_events(codec):
    events = codec.SSEParser().feed("data: x\n\n")
    assert type(events) is list
    assert events == [codec.Event("x")]


def test_parser_cr_then_lf_across_feeds_is_one_break(codec):
    assert parse(codec, "data: a\r", "\ndata: b\r\n\r\n")[0] == [("message", "a\nb", "", None)]
    # An empty feed in between does not forget the pending CR.
    assert parse(codec, "data: a\r", "", "\ndata: b\r\n\r", "\n")[0] == [("message", "a\nb", "", None)]
    # A CR then a CR are two breaks: that is a blank line.
    assert parse(codec, "data: a\r", "\rdata: b\n\n")[0] == [
        ("message", "a", "", None),
        ("message", "b", "", None),
    ]


def test_parser_bom_only_on_first_character_ever(codec):
    assert parse(codec, "", "\ufeffdata: x\n\n")[0] == [("message", "x", "", None)]
    assert parse(codec, "\ufeff", "data: x\n\n")[0] == [("message", "x", "", None)]
    assert parse(codec, "\ufeff", "\ufeffdata: x\n\n")[0] == []
    assert parse(codec, "d", "\ufeffata: x\n\n")[0] == []


@pytest.mark.parametrize(
    "stream",
    [
        "data: a\r\n\r\nid: 7\rdata: b\r\rretry: 5\ndata: c\r\n\n",
        "\ufeffevent: e\r\ndata: x\r\n\r\n:c\r\rdata: y\n\n",
    ],
)
def test_parser_every_two_way_split_and_char_by_char(codec, stream):
    whole = parse(codec, stream)
    for i in range(len(stream) + 1):
        assert parse(codec, stream[:i], stream[i:]) == whole, i
    assert parse(codec, *stream) == whole


@st.composite
def streams(draw) -> str:
    if draw(st.booleans()):
        return draw(SOUP)
    from sse_redis import _pure

    return "".join(encoded(_pure, kw) for kw in draw(st.lists(event_kwargs(), max_size=4)))


@MANY
@given(stream=streams(), data=st.data())
def test_parser_any_split_gives_the_same_events(codec, stream, data):
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=8))
    assert parse(codec, *split_at(stream, cuts)) == parse(codec, stream)


@SOME
@given(stream=SOUP)
def test_parser_never_raises_on_garbage(codec, stream):
    events, last_id = parse(codec, stream)
    assert type(last_id) is str
    for event_type, data, event_id, retry in events:
        assert type(data) is str
        assert type(event_id) is str
        assert event_type != ""
        assert retry is None or 0 <= retry <= U64_MAX


# ---------------------------------------------------------------- patch_nulls


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('data: {"run_id":null}\n\n', 'data: {"run_id":"R"}\n\n'),
        ('data: {"run_id":null,"seq_id":null}\n\n', 'data: {"run_id":"R","seq_id":7}\n\n'),
        ('data: {"seq_id" :\t null ,"run_id"\t: null\t}', 'data: {"seq_id" :\t 7 ,"run_id"\t: "R"\t}'),
        ('data:"run_id":null', 'data:"run_id":"R"'),
        ('data: ["x", {"run_id":null}]', 'data: ["x", {"run_id":"R"}]'),
        # Terminators after null: , } ] space tab or the end of the value.
        ('data: "run_id":null]', 'data: "run_id":"R"]'),
        ('data: "run_id":null\r\n\r\n', 'data: "run_id":"R"\r\n\r\n'),
        ('data: "run_id":null\rdata: "seq_id":null\r', 'data: "run_id":"R"\rdata: "seq_id":7\r'),
        # The scan goes on after a replaced null, and after a token that is no hit.
        ('data: "run_id":null"seq_id":null', 'data: "run_id":null"seq_id":7'),
        ('data: "run_id""run_id":null', 'data: "run_id""run_id":"R"'),
        # An escaped backslash does not escape the closing quote.
        ('data: ["a\\\\","run_id":null]', 'data: ["a\\\\","run_id":"R"]'),
        # Every data line on its own: an unterminated token ends with its line.
        ('data: "open\ndata: "run_id":null', 'data: "open\ndata: "run_id":"R"'),
        ('data: {"a":1}\n\ndata: {"run_id":null}\n\n', 'data: {"a":1}\n\ndata: {"run_id":"R"}\n\n'),
    ],
)
def test_patch_nulls_examples(codec, text, expected):
    assert codec.patch_nulls(text, "R", 7) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "data: x\n\n",
        'data: {"run_id":"already"}\n\n',
        'data: {"run_id":0,"seq_id":false}\n\n',
        'data: {"run_id":nullx}',
        'data: {"run_id":null"}',
        'data: {"run_id":null:}',
        'data: {"run_id":NULL}',
        'data: {"run_id":nul}',
        'data: {"run_id"\n:null}',
        'data: {"run_id":\u00a0null}',
        'data: {"run_id":null\u00a0}',
        'data: {"run_id"::null}',
        'data: {"Run_id":null, "run_id ":null, "run\\u005fid":null}',
        # Mentions inside strings.
        'data: {"content":"\\"run_id\\":null"}',
        'data: {"content":"a \\"run_id\\": null, \\"seq_id\\": null"}',
        'data: ""run_id":null',
        'data: "x\\"run_id":null',
        'data: "\\\\\\"run_id":null',
        # Not a data line.
        'event: "run_id":null\n\n',
        'id: "run_id":null\n\n',
        ': data: "run_id":null\n\n',
        ' data: "run_id":null\n\n',
        'Data: "run_id":null\n\n',
        'xdata: "run_id":null\n\n',
        'data "run_id":null\n\n',
        'event: x data: "run_id":null\n\n',
    ],
)
def test_patch_nulls_no_match_returns_the_same_object(codec, text):
    text = "".join(list(text))  # a fresh object, not an interned constant
    assert codec.patch_nulls(text, "R", 7) is text


def test_patch_nulls_none_leaves_that_key_alone(codec):
    text = 'data: {"run_id":null,"seq_id":null}\n\n'
    assert codec.patch_nulls(text, None, 7) == 'data: {"run_id":null,"seq_id":7}\n\n'
    assert codec.patch_nulls(text, "R", None) == 'data: {"run_id":"R","seq_id":null}\n\n'
    assert codec.patch_nulls(text, None, None) is text


@pytest.mark.parametrize(
    "run_id",
    ['a"b', "back\\slash", "line\nbreak\r", "\t\x00\x01\x1f\x7f", "é😀\u2028\u2029", "</script>", ""],
)
def test_patch_nulls_escapes_run_id_as_json(codec, run_id):
    out = codec.patch_nulls('data: {"run_id":null}\n\n', run_id, None)
    assert out == 'data: {"run_id":' + json.dumps(run_id, ensure_ascii=False) + "}\n\n"
    assert json.loads(out[6:-2]) == {"run_id": run_id}


@pytest.mark.parametrize("seq_id", [0, 1, 10**9, U64_MAX])
def test_patch_nulls_writes_seq_id_in_decimal(codec, seq_id):
    assert codec.patch_nulls('data: {"seq_id":null}', None, seq_id) == f'data: {{"seq_id":{seq_id}}}'


# JSON documents with run_id/seq_id members at any depth, serialized by hand on one
# line with random spacing, so the expected result is known member by member.

KEYS = st.sampled_from(["run_id", "seq_id", "a", "content", "run_id ", "Run_id", '"run_id"', 'run_id":null', "\\", ""])
TRICKY = st.lists(
    st.sampled_from(
        [
            '"run_id":null',
            '"seq_id": null',
            '\\"run_id\\":null',
            "\\",
            '"',
            "run_id",
            "null",
            ",",
            "}",
            " ",
            "\x01",
            "é",
        ]
    )
    | st.text(CHARS, max_size=3),
    max_size=8,
).map("".join)
LEAVES = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | TRICKY
DOCS = st.recursive(
    LEAVES,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(KEYS, st.none() | kids, max_size=5),
    max_leaves=25,
)
SPACE = st.sampled_from(["", "", " ", "\t", "  ", " \t"])


def dump(obj, draw, fills: dict) -> tuple[str, object, bool]:
    """``obj`` as one line of JSON, the document patch_nulls must make of it, and
    whether anything is filled.  ``fills`` maps key -> value for keys to fill."""
    if isinstance(obj, dict):
        parts, expected, changed = [], {}, False
        for key, value in obj.items():
            literal = draw(st.booleans()) or key not in fills
            # An escaped key means the same in JSON but is not the token "run_id".
            key_text = json.dumps(key) if literal else '"' + "".join(f"\\u{ord(c):04x}" for c in key) + '"'
            value_text, value_expected, value_changed = dump(value, draw, fills)
            if value is None and literal and key in fills:
                value_expected, value_changed = fills[key], True
            parts.append(f"{key_text}{draw(SPACE)}:{draw(SPACE)}{value_text}{draw(SPACE)}")
            expected[key] = value_expected
            changed |= value_changed
        return "{" + draw(SPACE) + ",".join(parts) + "}", expected, changed
    if isinstance(obj, list):
        dumped = [dump(item, draw, fills) for item in obj]
        text = "[" + ",".join(draw(SPACE) + t + draw(SPACE) for t, _, _ in dumped) + "]"
        return text, [e for _, e, _ in dumped], any(c for _, _, c in dumped)
    if isinstance(obj, str):
        return json.dumps(obj, ensure_ascii=draw(st.booleans())), obj, False
    return json.dumps(obj), obj, False


@MANY
@given(
    doc=DOCS,
    run_id=st.none() | TEXT,
    seq_id=st.none() | U64,
    head=st.sampled_from(["", "event: m\n", "id: 1\r\n", ": c\r"]),
    data=st.data(),
)
def test_patch_nulls_fills_exactly_the_null_members(codec, doc, run_id, seq_id, head, data):
    fills = {k: v for k, v in (("run_id", run_id), ("seq_id", seq_id)) if v is not None}
    line, expected, changed = dump(doc, data.draw, fills)
    chunk = head + "data: " + line + "\n\n"
    out = codec.patch_nulls(chunk, run_id, seq_id)
    assert (out is chunk) == (not changed)
    assert out.startswith(head + "data: ")
    assert out.endswith("\n\n")
    assert json.loads(out[len(head) + 6 : -2]) == expected


# ---------------------------------------------------------------- is_terminal


@pytest.mark.parametrize(
    "chunk",
    [
        "data: [DONE]\n\n",
        "data:[DONE]\n\n",
        "data: [DONE]",
        "data: [DONE]\r\n\r\n",
        "data: x\rdata: [DONE]\r",
        "event: error\ndata: {}\n\n",
        "event:error",
        "event: error\r\n",
        "id: 1\ndata: {}\n\nevent: message\ndata: [DONE]\n\n",
    ],
)
def test_is_terminal_true(codec, chunk):
    assert codec.is_terminal(chunk) is True


@pytest.mark.parametrize(
    "chunk",
    [
        "",
        "data: x\n\n",
        'data: {"x":"[DONE]"}\n\n',
        "data:  [DONE]\n\n",
        "data: [DONE] \n\n",
        "data: [DONE]\t\n\n",
        "data: [done]\n\n",
        "data: [DONE\n\n",
        "Data: [DONE]\n\n",
        " data: [DONE]\n\n",
        "xdata: [DONE]\n\n",
        ": data: [DONE]\n\n",
        "id: [DONE]\n\n",
        "data: error\n\n",
        "event: errors\n\n",
        "event:  error\n\n",
        "event: Error\n\n",
        'data: {"type":"error"}\n\n',
        "event: message\ndata: x [DONE]\n\n",
    ],
)
def test_is_terminal_false(codec, chunk):
    assert codec.is_terminal(chunk) is False


@SOME
@given(chunk=SOUP)
def test_is_terminal_matches_the_line_rule(codec, chunk):
    lines = chunk.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    want = any(line in ("data:[DONE]", "data: [DONE]", "event:error", "event: error") for line in lines)
    assert codec.is_terminal(chunk) is want


# ---------------------------------------------------------------- sniff_stop_reason

STOP = '{"message_type":"stop_reason","stop_reason":"end_turn"}'


def nested(depth: int) -> str:
    """A stop-reason object whose deepest container sits at ``depth``."""
    inner = "[" * (depth - 1) + "]" * (depth - 1)
    return '{"message_type":"stop_reason","stop_reason":"end_turn","deep":' + (inner or "0") + "}"


@pytest.mark.parametrize(
    ("chunk", "expected"),
    [
        (f"data: {STOP}\n\n", "end_turn"),
        (f"data:{STOP}", "end_turn"),
        (f"event: message\nid: 3\n: c\ndata: {STOP}\r\n\r\n", "end_turn"),
        ('data: \t{ "message_type" :\t"stop_reason" , "stop_reason" : "max_tokens" } \n\n', "max_tokens"),
        ('data: {"message_type":\ndata:"stop_reason",\r\ndata: "stop_reason":"x"}\n\n', "x"),
        ('data: {"stop_reason":"first","message_type":"stop_reason"}', "first"),
        ('data: {"message_type":"stop_reason","stop_reason":""}', ""),
        ('data: {"message_type":"stop_reason","stop_reason":"\\u00e9\\ud83d\\ude00\\n"}', "é😀\n"),
        ('data: {"message_type":"stop\\u005freason","stop_reason":"esc"}', "esc"),
        ('data: {"message_type":"stop_reason","stop_reason":"a","stop_reason":"b"}', "b"),
        ('data: {"message_type":"stop_reason","stop_reason":"x","n":1e999999,"m":-0.5E-7}', "x"),
        ('data: {"message_type":"stop_reason","stop_reason":"x","n":' + "9" * 5000 + "}", "x"),
        # The first block with a data field counts, blocks without data are passed over.
        (f": hello\nevent: ping\n\ndata: {STOP}\n\n", "end_turn"),
        (f"\n\n\r\ndata: {STOP}", "end_turn"),
        (nested(128), None),  # no "data:" line at all
        ("data: " + nested(128), "end_turn"),
        ("data: " + nested(2), "end_turn"),
        ('data: {"message_type":"stop_reason","stop_reason":"x","o":' + '{"a":' * 127 + "1" + "}" * 127 + "}", "x"),
    ],
)
def test_sniff_stop_reason_finds(codec, chunk, expected):
    assert codec.sniff_stop_reason(chunk) == expected


@pytest.mark.parametrize(
    "chunk",
    [
        "",
        "data: {}\n\n",
        "data: stop_reason\n\n",
        'data: {"message_type":"assistant_message","content":"stop_reason"}\n\n',
        'data: {"message_type":"x","inner":{"message_type":"stop_reason","stop_reason":"y"}}\n\n',
        'data: [{"message_type":"stop_reason","stop_reason":"y"}]\n\n',
        'data: "stop_reason"\n\n',
        'data: {"stop_reason":"y"}\n\n',
        'data: {"message_type":"stop_reason"}\n\n',
        'data: {"message_type":"stop_reason","message_type":"other","stop_reason":"y"}\n\n',
        'data: {"message_type":"Stop_reason","stop_reason":"y"}\n\n',
        # Not JSON, or not strict JSON.
        'data: {"message_type":"stop_reason","stop_reason":"end_turn"\n\n',
        'data: {"message_type":"stop_reason","stop_reason":"end_turn"}}\n\n',
        'data: {"message_type":"stop_reason","stop_reason":"end_turn"} x\n\n',
        "data: {'message_type':'stop_reason','stop_reason':'x'}\n\n",
        'data: {"message_type":"stop_reason","stop_reason":"x",}\n\n',
        'data: {"message_type":"stop_reason","stop_reason":"x","n":NaN}\n\n',
        'data: {"message_type":"stop_reason","stop_reason":"x","n":Infinity}\n\n',
        'data: {"message_type":"stop_reason","stop_reason":"x","n":-Infinity}\n\n',
        'data: {"message_type":"stop_reason","stop_reason":"x","n":01}\n\n',
        'data: {"message_type":"stop_reason","stop_reason":"x","n":.5}\n\n',
        'data: {"message_type":"stop_reason","stop_reason":"x","n":+1}\n\n',
        'data: {"message_type":"stop_reason","stop_reason":"a\tb"}\n\n',
        'data: {"message_type":"stop_reason","stop_reason":"a\x01b"}\n\n',
        'data: {"message_type":"stop_reason","stop_reason":"\\x41"}\n\n',
        'data: \x0c{"message_type":"stop_reason","stop_reason":"x"}\n\n',
        'data: \u00a0{"message_type":"stop_reason","stop_reason":"x"}\n\n',
        'data: \ufeff{"message_type":"stop_reason","stop_reason":"x"}\n\n',
        # A stop reason that is no string, or no valid Unicode.
        'data: {"message_type":"stop_reason","stop_reason":1}\n\n',
        'data: {"message_type":"stop_reason","stop_reason":null}\n\n',
        'data: {"message_type":"stop_reason","stop_reason":["x"]}\n\n',
        'data: {"message_type":"stop_reason","stop_reason":{"x":1}}\n\n',
        'data: {"message_type":"stop_reason","stop_reason":"\\ud800"}\n\n',
        'data: {"message_type":"stop_reason","stop_reason":"a\\udc00b"}\n\n',
        # Only the first event counts.
        f"data: {{}}\n\ndata: {STOP}\n\n",
        f": c\ndata: x\n\ndata: {STOP}\n\n",
        f"data: {STOP[:20]}\n\ndata: {STOP[20:]}\n\n",
        # Too deep.
        "data: " + nested(129),
        'data: {"message_type":"stop_reason","stop_reason":"x","o":' + '{"a":' * 128 + "1" + "}" * 128 + "}",
        "data: " + nested(100_000),
        "data: " + "[" * 100_000 + "stop_reason",
    ],
)
def test_sniff_stop_reason_rejects(codec, chunk):
    assert codec.sniff_stop_reason(chunk) is None


def test_sniff_stop_reason_lone_surrogate_elsewhere_is_fine(codec):
    # Our reading of the spec: only the stop reason itself must be valid Unicode.
    chunk = 'data: {"message_type":"stop_reason","stop_reason":"ok","note":"\\ud800"}\n\n'
    assert codec.sniff_stop_reason(chunk) == "ok"


STOP_REASONS = st.sampled_from(["end_turn", "max_tokens", "", "é", 1, None, ["x"], {"a": 1}]) | TEXT


@st.composite
def stop_chunks(draw) -> tuple[str, object]:
    """A chunk whose data is a JSON object near a stop reason, and the expected answer."""
    obj = {
        "message_type": draw(st.sampled_from(["stop_reason", "stop_reason", "assistant_message", 1, None])),
        "stop_reason": draw(STOP_REASONS),
    }
    if draw(st.booleans()):
        obj["extra"] = draw(DOCS)
    keys = draw(st.permutations(list(obj)))
    obj = {k: obj[k] for k in keys}
    indent = draw(st.sampled_from([None, None, 0, 1, "\t"]))
    text = json.dumps(obj, ensure_ascii=draw(st.booleans()), indent=indent)
    lines = text.split("\n")  # an indented document spans several data lines
    head = draw(st.sampled_from(["", "event: m\n", ": c\r\n", "\n\n"]))
    brk = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    chunk = head + "".join(f"data: {line}{brk}" for line in lines) + brk
    want = obj["stop_reason"] if obj["message_type"] == "stop_reason" and isinstance(obj["stop_reason"], str) else None
    return chunk, want


@SOME
@given(case=stop_chunks())
def test_sniff_stop_reason_on_generated_documents(codec, case):
    chunk, want = case
    assert codec.sniff_stop_reason(chunk) == want


@SOME
@given(chunk=SOUP | TEXT)
def test_sniff_stop_reason_never_raises(codec, chunk):
    result = codec.sniff_stop_reason(chunk)
    assert result is None or type(result) is str
    if "stop_reason" not in chunk:
        assert result is None


# ---------------------------------------------------------------- set_event_id


@pytest.mark.parametrize(
    ("chunk", "expected"),
    [
        ("data: a\n\n", "data: a\nid: X\n\n"),
        ("data: a\r\n\r\n", "data: a\r\nid: X\r\n\r\n"),
        ("data: a\r\r", "data: a\rid: X\r\r"),
        ("data: a\n\r\n", "data: a\nid: X\r\n\r\n"),
        ("event: e\ndata: a\ndata: b\n\n", "event: e\ndata: a\ndata: b\nid: X\n\n"),
        # Existing id lines of the last event go; other events keep theirs.
        ("data: a\nid: 1\n\n", "data: a\nid: X\n\n"),
        ("id: 1\ndata: a\nid\nid:2\n\n", "data: a\nid: X\n\n"),
        ("id: 1\r\ndata: a\r\n\r\n", "data: a\r\nid: X\r\n\r\n"),
        ("id: 1\ndata: a\n\ndata: b\n\n", "id: 1\ndata: a\n\ndata: b\nid: X\n\n"),
        ("data: a\n\nid: 1\n\n", "data: a\n\nid: X\n\n"),
        ("idx: 1\nid : 2\n:id: 3\n ID: 4\ndata: a\n\n", "idx: 1\nid : 2\n:id: 3\n ID: 4\ndata: a\nid: X\n\n"),
        # Everything after the blank line is kept as it is.
        ("data: a\n\n\n\n", "data: a\nid: X\n\n\n\n"),
        ("\n\ndata: a\n\n\r\n", "\n\ndata: a\nid: X\n\n\r\n"),
        # Unterminated last event: terminated.
        ("data: a", "data: a\nid: X\n\n"),
        ("data: a\n", "data: a\nid: X\n\n"),
        ("data: a\r\n", "data: a\r\nid: X\n\n"),
        ("data: a\r", "data: a\rid: X\n\n"),
        ("data: a\nid: 1", "data: a\nid: X\n\n"),
        ("data: a\n\nid: 1", "data: a\n\nid: X\n\n"),
        ("data: a\n\ndata: b", "data: a\n\ndata: b\nid: X\n\n"),
        # No event at all.
        ("", "id: X\n\n"),
        ("\n", "\nid: X\n\n"),
        ("\r\n\r\n", "\r\n\r\nid: X\n\n"),
    ],
)
def test_set_event_id_examples(codec, chunk, expected):
    assert codec.set_event_id(chunk, "X") == expected


def test_set_event_id_empty_id(codec):
    assert codec.set_event_id("data: a\n\n", "") == "data: a\nid: \n\n"


@SOME
@given(
    kwargs_list=st.lists(event_kwargs(), min_size=1, max_size=4),
    cut=st.sampled_from([0, 1, 2]),
    event_id=FIELD,
)
def test_set_event_id_gives_the_last_event_that_id(codec, kwargs_list, cut, event_id):
    chunk = "".join(encoded(codec, kw) for kw in kwargs_list)
    chunk = chunk[: len(chunk) - cut]  # maybe leave the last event unterminated
    want, _ = expected_events(kwargs_list)
    want[-1] = (*want[-1][:2], event_id, *want[-1][3:])
    assert parse(codec, codec.set_event_id(chunk, event_id)) == (want, event_id)


@SOME
@given(chunk=SOUP, event_id=FIELD)
def test_set_event_id_on_any_chunk_sets_the_last_event_id(codec, chunk, event_id):
    out = codec.set_event_id(chunk, event_id)
    assert parse(codec, out)[1] == event_id
    assert out.endswith(("\n", "\r"))


# ---------------------------------------------------------------- shared vectors

# testdata/*.jsonl: inputs and the expected output, one JSON object a line; the
# Rust unit tests (src/codec/vectors.rs) read the same files.
TESTDATA = Path(__file__).resolve().parent.parent / "testdata"


def _vectors() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(TESTDATA.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").split("\n"):  # not splitlines(): U+2028 is data
            if line.strip():
                found.append((path.stem, json.loads(line)))
    return found


VECTORS = _vectors()


def _answer(codec: Any, name: str, v: dict[str, Any]) -> Any:
    if name == "is_terminal":
        return codec.is_terminal(v["chunk"])
    if name == "sniff_stop_reason":
        return codec.sniff_stop_reason(v["chunk"])
    if name == "patch_nulls":
        text = "".join(list(v["text"]))  # a fresh object, so `is` means "returned as it came"
        got = codec.patch_nulls(text, v["run_id"], v["seq_id"])
        return None if got is text else got
    if name == "set_event_id":
        return codec.set_event_id(v["chunk"], v["event_id"])
    if name == "encode_event":
        return codec.encode_event(v["data"], event=v["event"], id=v["id"], retry=v["retry"])
    if name == "parse":
        parser = codec.SSEParser()
        events = [[e.event, e.data, e.id, e.retry] for feed in v["feeds"] for e in parser.feed(feed)]
        return {"events": events, "last_event_id": parser.last_event_id}
    raise AssertionError(f"testdata/{name}.jsonl has no runner")


def test_vectors_cover_every_function():
    assert {name for name, _ in VECTORS} == {
        "is_terminal",
        "sniff_stop_reason",
        "patch_nulls",
        "set_event_id",
        "encode_event",
        "parse",
    }


def test_vectors(codec):
    """Every shared vector, on this backend (the Rust core, then the pure twin)."""
    failures = [(name, v, got) for name, v in VECTORS if (got := _answer(codec, name, v)) != v["expected"]]
    assert not failures, f"{len(failures)} of {len(VECTORS)} vectors fail, first: {failures[0]}"


# ---------------------------------------------------------------- errors

SURROGATE = "a\ud800b"


def _calls(c):
    """(description, thunk, exact exception type) for every bad-argument case."""
    return [
        # encode_event
        ("encode data int", lambda: c.encode_event(1), TypeError),
        ("encode data None", lambda: c.encode_event(None), TypeError),
        ("encode data bytes", lambda: c.encode_event(b"x"), TypeError),
        ("encode event int", lambda: c.encode_event("x", event=1), TypeError),
        ("encode id int", lambda: c.encode_event("x", id=1), TypeError),
        ("encode positional event", lambda: c.encode_event("x", "e"), TypeError),
        ("encode retry str", lambda: c.encode_event("x", retry="1"), TypeError),
        ("encode retry float", lambda: c.encode_event("x", retry=1.0), TypeError),
        ("encode retry bool", lambda: c.encode_event("x", retry=True), TypeError),
        ("encode retry -1", lambda: c.encode_event("x", retry=-1), ValueError),
        ("encode retry 2**64", lambda: c.encode_event("x", retry=2**64), ValueError),
        ("encode retry 2**100", lambda: c.encode_event("x", retry=2**100), ValueError),
        ("encode event LF", lambda: c.encode_event("x", event="a\nb"), ValueError),
        ("encode event CR", lambda: c.encode_event("x", event="a\r"), ValueError),
        ("encode event NUL", lambda: c.encode_event("x", event="\0"), ValueError),
        ("encode id LF", lambda: c.encode_event("x", id="\n"), ValueError),
        ("encode id CR", lambda: c.encode_event("x", id="1\r"), ValueError),
        ("encode id NUL", lambda: c.encode_event("x", id="1\0"), ValueError),
        ("encode data surrogate", lambda: c.encode_event(SURROGATE), UnicodeEncodeError),
        ("encode event surrogate", lambda: c.encode_event("x", event=SURROGATE), UnicodeEncodeError),
        ("encode id surrogate", lambda: c.encode_event("x", id=SURROGATE), UnicodeEncodeError),
        # patch_nulls
        ("patch text int", lambda: c.patch_nulls(1, "r", 1), TypeError),
        ("patch text None", lambda: c.patch_nulls(None, "r", 1), TypeError),
        ("patch run_id int", lambda: c.patch_nulls("x", 1, 1), TypeError),
        ("patch seq_id str", lambda: c.patch_nulls("x", "r", "1"), TypeError),
        ("patch seq_id float", lambda: c.patch_nulls("x", "r", 1.0), TypeError),
        ("patch seq_id bool", lambda: c.patch_nulls("x", "r", False), TypeError),
        ("patch seq_id -1", lambda: c.patch_nulls("x", "r", -1), ValueError),
        ("patch seq_id 2**64", lambda: c.patch_nulls("x", "r", 2**64), ValueError),
        ("patch text surrogate", lambda: c.patch_nulls(SURROGATE, "r", 1), UnicodeEncodeError),
        ("patch text surrogate, no keys", lambda: c.patch_nulls(SURROGATE, None, None), UnicodeEncodeError),
        ("patch run_id surrogate", lambda: c.patch_nulls("x", SURROGATE, 1), UnicodeEncodeError),
        # is_terminal
        ("terminal int", lambda: c.is_terminal(1), TypeError),
        ("terminal None", lambda: c.is_terminal(None), TypeError),
        ("terminal bytes", lambda: c.is_terminal(b"data: [DONE]"), TypeError),
        ("terminal surrogate", lambda: c.is_terminal(SURROGATE), UnicodeEncodeError),
        ("terminal surrogate + DONE", lambda: c.is_terminal("data: [DONE]\n\ud800"), UnicodeEncodeError),
        # sniff_stop_reason
        ("sniff int", lambda: c.sniff_stop_reason(1), TypeError),
        ("sniff bytes", lambda: c.sniff_stop_reason(b"stop_reason"), TypeError),
        ("sniff surrogate", lambda: c.sniff_stop_reason(SURROGATE), UnicodeEncodeError),
        # set_event_id
        ("set_id chunk int", lambda: c.set_event_id(1, "x"), TypeError),
        ("set_id event_id int", lambda: c.set_event_id("x", 1), TypeError),
        ("set_id event_id None", lambda: c.set_event_id("x", None), TypeError),
        ("set_id event_id LF", lambda: c.set_event_id("x", "a\nb"), ValueError),
        ("set_id event_id CR", lambda: c.set_event_id("x", "\r"), ValueError),
        ("set_id event_id NUL", lambda: c.set_event_id("x", "\0"), ValueError),
        ("set_id chunk surrogate", lambda: c.set_event_id(SURROGATE, "x"), UnicodeEncodeError),
        ("set_id event_id surrogate", lambda: c.set_event_id("x", SURROGATE), UnicodeEncodeError),
        # SSEParser / Event
        ("feed int", lambda: c.SSEParser().feed(1), TypeError),
        ("feed bytes", lambda: c.SSEParser().feed(b"data: x\n\n"), TypeError),
        ("feed surrogate", lambda: c.SSEParser().feed(SURROGATE), UnicodeEncodeError),
        ("Event data int", lambda: c.Event(1), TypeError),
        ("Event event int", lambda: c.Event("x", event=1), TypeError),
    ]


_CASES = _calls(None)


@pytest.mark.parametrize("index", range(len(_CASES)), ids=[name for name, _, _ in _CASES])
def test_bad_arguments_raise_the_documented_type(codec, index):
    _, thunk, exc_type = _calls(codec)[index]
    with pytest.raises(Exception) as info:  # noqa: PT011 (the exact type is checked below)
        thunk()
    assert type(info.value) is exc_type, repr(info.value)


# ---------------------------------------------------------------- differential: Rust vs Python


@MANY
@given(chunk=SOUP, run_id=st.none() | st.sampled_from(["r", 'q"\\', "\x01\x7f\u2028é"]) | TEXT, seq_id=st.none() | U64)
def test_same_patch_nulls(both, chunk, run_id, seq_id):
    rust, pure = both
    got_rust = rust.patch_nulls(chunk, run_id, seq_id)
    got_pure = pure.patch_nulls(chunk, run_id, seq_id)
    assert got_rust == got_pure
    assert (got_rust is chunk) == (got_pure is chunk)


@MANY
@given(chunk=SOUP)
def test_same_is_terminal(both, chunk):
    rust, pure = both
    assert rust.is_terminal(chunk) == pure.is_terminal(chunk)


@st.composite
def mangled_stop_chunks(draw) -> str:
    """Stop-reason chunks, sometimes cut short or with soup spliced in."""
    chunk, _ = draw(stop_chunks())
    if draw(st.booleans()):
        at = draw(st.integers(0, len(chunk)))
        chunk = chunk[:at] + draw(SOUP) + chunk[at + draw(st.integers(0, 3)) :]
    return chunk


@MANY
@given(chunk=SOUP | mangled_stop_chunks())
def test_same_sniff_stop_reason(both, chunk):
    rust, pure = both
    assert rust.sniff_stop_reason(chunk) == pure.sniff_stop_reason(chunk)


@MANY
@given(chunk=SOUP, event_id=FIELD)
def test_same_set_event_id(both, chunk, event_id):
    rust, pure = both
    assert rust.set_event_id(chunk, event_id) == pure.set_event_id(chunk, event_id)


@MANY
@given(stream=streams(), data=st.data())
def test_same_parse(both, stream, data):
    rust, pure = both
    feeds = split_at(stream, data.draw(st.lists(st.integers(0, len(stream)), max_size=5)))
    assert parse(rust, *feeds) == parse(pure, *feeds)


@SOME
@given(kwargs=event_kwargs())
def test_same_encode_and_repr(both, kwargs):
    rust, pure = both
    assert encoded(rust, kwargs) == encoded(pure, kwargs)
    args = (kwargs["data"], kwargs["event"] or "message", kwargs["id"] or "", kwargs["retry"])
    assert repr(rust.Event(*args)) == repr(pure.Event(*args))
