"""Type stubs for ``sse_redis._core`` (Rust) and its twin ``sse_redis._pure`` (Python).

Both modules expose exactly these names with the same signatures and results.
Every function takes and returns ``str``; a ``str`` that cannot be encoded as
UTF-8 (a lone surrogate) raises ``UnicodeEncodeError`` in both backends.
"""

from typing import Final, final

__all__ = [
    "Event",
    "SSEParser",
    "encode_event",
    "patch_nulls",
    "is_terminal",
    "sniff_stop_reason",
    "set_event_id",
]

MAX_NESTING: Final[int]  # 128
"""JSON nested deeper than this is never a stop reason (both backends agree)."""

@final
class Event:
    """One dispatched Server-Sent Event.

    ``event`` is the type (``"message"`` when none was given), ``data`` the data
    lines joined by LF, ``id`` the last event id in force at dispatch (``""``
    if none), ``retry`` the reconnection time set by a ``retry`` field since
    the previous dispatch, or ``None``.
    """

    def __init__(self, data: str, event: str = "message", id: str = "", retry: int | None = None) -> None: ...
    @property
    def event(self) -> str: ...
    @property
    def data(self) -> str: ...
    @property
    def id(self) -> str: ...
    @property
    def retry(self) -> int | None: ...
    def __eq__(self, other: object) -> bool: ...
    def __repr__(self) -> str: ...

@final
class SSEParser:
    """Incremental parser following the WHATWG event-stream rules.

    Text may be split across ``feed`` calls at any character (a CR at the end
    of one feed and an LF at the start of the next are one line break).  One
    leading BOM is stripped.  An event still open when feeding stops is not
    returned.  ``retry`` values of 2**64 or more are ignored.
    """

    def __init__(self) -> None: ...
    def feed(self, text: str) -> list[Event]: ...
    @property
    def last_event_id(self) -> str: ...

def encode_event(
    data: str, *, event: str | None = None, id: str | None = None, retry: int | None = None
) -> str:
    """One SSE event: ``event:``, ``id:``, ``retry:`` lines when given, then one
    ``data:`` line per line of ``data`` (split on CRLF, LF or CR), then a blank
    line.  ``event``/``id`` with CR, LF or NUL raise ``ValueError``; ``retry``
    must be an ``int`` (not ``bool``) with ``0 <= retry < 2**64``."""

def patch_nulls(text: str, run_id: str | None, seq_id: int | None) -> str:
    """Fill ``"run_id": null`` / ``"seq_id": null`` members in the values of
    ``data`` lines (see README, "patch_nulls rule").  Returns ``text`` itself
    when nothing matched.  ``seq_id`` must be an int in ``0 <= seq_id < 2**64``
    (``ValueError`` otherwise, ``TypeError`` for non-int or ``bool``)."""

def is_terminal(chunk: str) -> bool:
    """True when a line of ``chunk`` is a ``data`` field with value ``[DONE]``
    or an ``event`` field with value ``error``."""

def sniff_stop_reason(chunk: str) -> str | None:
    """The ``stop_reason`` string of a chunk whose first event's data is a JSON
    object with ``"message_type": "stop_reason"`` at its top level, else
    ``None``.  Chunks without the text ``stop_reason`` are never parsed."""

def set_event_id(chunk: str, event_id: str) -> str:
    """``chunk`` with its last event carrying ``id: <event_id>``, placed just
    before the blank line that ends that event (its own ``id`` lines removed).
    An unterminated last event is terminated; a chunk with no event gets an
    id-only event.  CR, LF or NUL in ``event_id`` raise ``ValueError``."""
