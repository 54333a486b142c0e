"""The SSE codec in pure Python, following ``docs/codec.md`` to the character.

Every function here is on the per-chunk hot path, so each starts with a cheap
substring test and leaves the real work to C-level ``str`` methods and regexes.
"""

from __future__ import annotations

import json
import re
from json.encoder import encode_basestring as _encode_basestring
from typing import NoReturn

__all__ = [
    "MAX_NESTING",
    "Event",
    "SSEParser",
    "encode_event",
    "is_terminal",
    "patch_nulls",
    "set_event_id",
    "sniff_stop_reason",
]

MAX_NESTING = 128
_U64 = 1 << 64

_BREAK = re.compile(r"\r\n|\r|\n")
_BREAK_KEPT = re.compile(r"(\r\n|\r|\n)")
_BAD_FIELD = re.compile(r"[\r\n\0]")
_TERMINAL = re.compile(r"(?:\A|(?<=[\r\n]))(?:data: ?\[DONE\]|event: ?(?:error|cancelled))(?=[\r\n]|\Z)")


# ---------------------------------------------------------------- argument checks


def _check_str(value: object, name: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be str, not {type(value).__name__}")
    # Both backends hand text to UTF-8; a lone surrogate must fail the same way.
    if not value.isascii():
        value.encode("utf-8")


def _check_u64_type(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be int, not {type(value).__name__}")


def _check_u64_range(value: int, name: str) -> None:
    if not 0 <= value < _U64:
        raise ValueError(f"{name} must be in 0..2**64, got {value}")


def _check_field_value(value: str, name: str) -> None:
    if _BAD_FIELD.search(value):
        raise ValueError(f"{name} must not contain CR, LF or NUL")


def _lines(text: str) -> list[str]:
    """The lines of ``text`` without their breaks (an empty remainder is no line)."""
    lines = _BREAK.split(text) if "\r" in text else text.split("\n")
    if not lines[-1]:
        lines.pop()
    return lines


# ---------------------------------------------------------------- Event


class Event:
    """One dispatched Server-Sent Event (immutable)."""

    __slots__ = ("_data", "_event", "_id", "_retry")

    def __init_subclass__(cls, **kwargs: object) -> NoReturn:
        raise TypeError("type 'Event' is not an acceptable base type")  # final, like the Rust class

    def __init__(self, data: str, event: str = "message", id: str = "", retry: int | None = None):
        _check_str(data, "data")
        _check_str(event, "event")
        _check_str(id, "id")
        if retry is not None:
            _check_u64_type(retry, "retry")
            _check_u64_range(retry, "retry")
            retry = int(retry)
        self._data = data
        self._event = event
        self._id = id
        self._retry = retry

    @property
    def event(self) -> str:
        return self._event

    @property
    def data(self) -> str:
        return self._data

    @property
    def id(self) -> str:
        return self._id

    @property
    def retry(self) -> int | None:
        return self._retry

    def _key(self) -> tuple[str, str, str, int | None]:
        return (self._event, self._data, self._id, self._retry)

    def __eq__(self, other: object) -> bool:
        if type(other) is not Event:
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Event(event={self._event!r}, data={self._data!r}, id={self._id!r}, retry={self._retry!r})"


def _event(data: str, event: str, id: str, retry: int | None) -> Event:
    """An Event from values already known to be valid (the parser's fast path)."""
    ev = Event.__new__(Event)
    ev._data = data
    ev._event = event
    ev._id = id
    ev._retry = retry
    return ev


# ---------------------------------------------------------------- SSEParser


class SSEParser:
    """Incremental WHATWG event-stream parser."""

    __slots__ = ("_data", "_last_id", "_pending", "_retry", "_skip_lf", "_started", "_type")

    def __init_subclass__(cls, **kwargs: object) -> NoReturn:
        raise TypeError("type 'SSEParser' is not an acceptable base type")  # final, like the Rust class

    def __init__(self) -> None:
        self._pending: list[str] = []  # pieces of the unterminated line (joined once it ends)
        self._skip_lf = False  # the last feed ended with CR: an LF next is part of that break
        self._started = False  # a character was seen, so the BOM chance is gone
        self._data: list[str] = []
        self._type = ""
        self._last_id = ""
        self._retry: int | None = None

    @property
    def last_event_id(self) -> str:
        return self._last_id

    def feed(self, text: str) -> list[Event]:
        _check_str(text, "text")
        if not text:
            return []
        if not self._started:
            self._started = True
            if text[0] == "\ufeff":
                text = text[1:]
        elif self._skip_lf:
            self._skip_lf = False
            if text[0] == "\n":
                text = text[1:]
        if "\r" in text:
            # A trailing CR ends its line now; remember to swallow a following LF.
            self._skip_lf = text[-1] == "\r"
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        if "\n" not in text:
            self._pending.append(text)
            return []
        if self._pending:
            self._pending.append(text)
            text = "".join(self._pending)
        lines = text.split("\n")
        tail = lines.pop()
        self._pending = [tail] if tail else []
        events: list[Event] = []
        for line in lines:
            if not line:
                self._dispatch(events)
            elif line[0] != ":":
                name, _, value = line.partition(":")
                if value[:1] == " ":
                    value = value[1:]
                self._field(name, value)
        return events

    def _field(self, name: str, value: str) -> None:
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._type = value
        elif name == "id":
            if "\0" not in value:
                self._last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():  # the last branch: nothing else to try
            digits = value.lstrip("0")
            # Check the length first: int() refuses very long digit strings.
            if len(digits) <= 20 and int(digits or "0") < _U64:
                self._retry = int(digits or "0")

    def _dispatch(self, events: list[Event]) -> None:
        data, event_type = self._data, self._type
        self._data = []
        self._type = ""
        if data:
            events.append(_event("\n".join(data), event_type or "message", self._last_id, self._retry))
            self._retry = None


# ---------------------------------------------------------------- encode_event


def encode_event(data: str, *, event: str | None = None, id: str | None = None, retry: int | None = None) -> str:
    # Types first, values second: the same order in which the Rust core extracts arguments.
    _check_str(data, "data")
    if event is not None:
        _check_str(event, "event")
    if id is not None:
        _check_str(id, "id")
    if retry is not None:
        _check_u64_type(retry, "retry")
    if event is not None:
        _check_field_value(event, "event")
    if id is not None:
        _check_field_value(id, "id")
    if retry is not None:
        _check_u64_range(retry, "retry")

    head = ""
    if event:
        head += "event: " + event + "\n"
    if id is not None:
        head += "id: " + id + "\n"
    if retry is not None:
        head += "retry: " + str(int(retry)) + "\n"
    if "\r" in data or "\n" in data:
        body = "".join("data: " + line + "\n" for line in _BREAK.split(data))
    else:
        body = "data: " + data + "\n"
    return head + body + "\n"


# ---------------------------------------------------------------- patch_nulls

# One string token from its opening quote: escaped or plain characters up to the
# closing quote, else to the end of the value (maybe ending in a lone backslash).
# Whatever follows the loop, the pattern matches, so it never backtracks.
_TOKEN = re.compile(r'"(?:[^"\\]+|\\.)*(?:"|\\?\Z)', re.DOTALL)
# Text outside tokens, then whole tokens; group 2 is set when the last token is
# still open at the end of the searched range.
_OUTSIDE = re.compile(r'(?:[^"]+|("(?:[^"\\]+|\\.)*(?:"|(\\?\Z))))*', re.DOTALL)
_HIT_TAIL = r'"[ \t]*:[ \t]*null(?=[,}\] \t]|\Z)'
_HIT_RUN = re.compile(r'"(run_id)' + _HIT_TAIL)
_HIT_SEQ = re.compile(r'"(seq_id)' + _HIT_TAIL)
_HIT_BOTH = re.compile(r'"(run_id|seq_id)' + _HIT_TAIL)
_EOL = re.compile(r"[\r\n]")


def _fill_value(
    text: str,
    start: int,
    end: int,
    hit: re.Pattern[str],
    run_json: str,
    seq_text: str,
    out: list[str],
    done: int,
) -> int:
    """Fill the hits of the data value ``text[start:end]``; pieces go to ``out``.

    ``done`` is how much of ``text`` is already in ``out``; the new mark is returned.
    A hit found by search counts only when it starts a token, which the scan from
    the last known token boundary tells; when it does not, its whole token is skipped.
    """
    pos = start
    while True:
        m = hit.search(text, pos, end)
        if m is None:
            return done
        at = m.start()
        outside = _OUTSIDE.match(text, pos, at)
        assert outside is not None  # a starred group: it matches, the empty string at least
        if outside.group(2) is None:  # the quote at ``at`` opens a token
            out.append(text[done : m.end() - 4])
            out.append(run_json if m.group(1) == "run_id" else seq_text)
            done = pos = m.end()
        else:
            token = _TOKEN.match(text, outside.start(1), end)
            assert token is not None  # from a quote, it always matches: up to a quote or to the end
            pos = token.end()


def patch_nulls(text: str, run_id: str | None, seq_id: int | None) -> str:
    _check_str(text, "text")
    if run_id is not None:
        _check_str(run_id, "run_id")
    if seq_id is not None:
        _check_u64_type(seq_id, "seq_id")
        _check_u64_range(seq_id, "seq_id")

    # Most chunks name neither key: answer with the very same object.
    has_run = run_id is not None and '"run_id"' in text
    has_seq = seq_id is not None and '"seq_id"' in text
    if has_run and has_seq:
        hit = _HIT_BOTH
    elif has_run:
        hit = _HIT_RUN
    elif has_seq:
        hit = _HIT_SEQ
    else:
        return text
    # encode_basestring is what json.dumps(s, ensure_ascii=False) calls, minus its overhead.
    # (has_run implies run_id is not None, has_seq seq_id: repeated for mypy.)
    run_json = _encode_basestring(run_id) if has_run and run_id is not None else ""
    seq_text = str(int(seq_id)) if has_seq and seq_id is not None else ""

    out: list[str] = []
    done = 0
    no_cr = "\r" not in text
    i = text.find("data:")
    while i >= 0:
        if no_cr:
            end = text.find("\n", i)
            if end < 0:
                end = len(text)
        else:
            eol = _EOL.search(text, i)
            end = eol.start() if eol else len(text)
        # Only a "data:" at the start of a line opens a data field.
        if i == 0 or text[i - 1] in "\r\n":
            done = _fill_value(text, i + 5, end, hit, run_json, seq_text, out, done)
        i = text.find("data:", end)
    if not out:
        return text
    out.append(text[done:])
    return "".join(out)


# ---------------------------------------------------------------- is_terminal


_TERMINAL_TEXTS = (
    "data: [DONE]",
    "data:[DONE]",
    "event: error",
    "event:error",
    "event: cancelled",
    "event:cancelled",
)


def is_terminal(chunk: str) -> bool:
    _check_str(chunk, "chunk")
    # A terminal line holds one of these six texts whole; "error" alone is a
    # common word in messages and would send most chunks to the regex.
    if not any(text in chunk for text in _TERMINAL_TEXTS):
        return False
    return _TERMINAL.search(chunk) is not None


# ---------------------------------------------------------------- sniff_stop_reason


def _first_event_data(chunk: str) -> str | None:
    """The data of the first block of non-blank lines that has a ``data`` field."""
    values: list[str] = []
    for line in _lines(chunk):
        if not line:
            if values:
                break
        elif line[0] != ":":
            name, _, value = line.partition(":")
            if name == "data":
                values.append(value[1:] if value[:1] == " " else value)
    return "\n".join(values) if values else None


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _number(_text: str) -> int:
    # The value never matters; not converting keeps huge numbers from failing.
    return 0


def _within_nesting(obj: dict[str, object] | list[object]) -> bool:
    stack: list[tuple[dict[str, object] | list[object], int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_NESTING:
            return False
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return True


def sniff_stop_reason(chunk: str) -> str | None:
    _check_str(chunk, "chunk")
    if "stop_reason" not in chunk:
        return None
    data = _first_event_data(chunk)
    if data is None:
        return None
    try:
        obj = json.loads(data, parse_constant=_reject_constant, parse_int=_number, parse_float=_number)
    except (ValueError, RecursionError):
        return None
    if type(obj) is not dict or obj.get("message_type") != "stop_reason":
        return None
    reason = obj.get("stop_reason")
    if type(reason) is not str:
        return None
    if not reason.isascii():
        try:
            reason.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from a \ud800 escape
            return None
    return reason if _within_nesting(obj) else None


# ---------------------------------------------------------------- set_event_id


def _is_id_line(line: str) -> bool:
    return line == "id" or line.startswith("id:")


def set_event_id(chunk: str, event_id: str) -> str:
    _check_str(chunk, "chunk")
    _check_str(event_id, "event_id")
    _check_field_value(event_id, "event_id")
    id_line = "id: " + event_id

    # The usual chunk: LF breaks, a blank line after the last event, no "id" line in it.
    if "\r" not in chunk:
        body = chunk.rstrip("\n")
        end = len(body)
        if end and len(chunk) - end >= 2:
            # From the last blank line on (each of its lines then follows an LF): the last event.
            block = body[body.rfind("\n\n") + 1 :]
            if "\nid" not in block and not block.startswith("id"):
                return body + "\n" + id_line + "\n" + chunk[end + 1 :]

    # parts = [line, break, line, break, ..., remainder]; lines sit at even indices.
    parts = _BREAK_KEPT.split(chunk)
    n = len(parts)
    last = n - 1 if parts[-1] else n - 3
    while last >= 0 and not parts[last]:
        last -= 2
    if last < 0:
        return chunk + id_line + "\n\n"
    first = last
    while first >= 2 and parts[first - 2]:
        first -= 2

    kept = []
    for i in range(first, last + 1, 2):
        if not _is_id_line(parts[i]):
            kept.append(parts[i])
            kept.append(parts[i + 1] if i + 1 < n else "")
    head = "".join(parts[:first]) + "".join(kept)

    if last + 3 < n:  # a blank line follows: the id line borrows its break
        return head + id_line + parts[last + 3] + "".join(parts[last + 2 :])
    if kept and not kept[-1]:  # the kept last line is the unterminated remainder
        head += "\n"
    return head + id_line + "\n\n"
