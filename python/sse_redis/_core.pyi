"""Type stubs for ``sse_redis._core`` (Rust) and its twin ``sse_redis._pure`` (Python).

Both modules expose exactly these names with the same signatures and results.
Every function takes and returns ``str``; a ``str`` that cannot be encoded as
UTF-8 (a lone surrogate) raises ``UnicodeEncodeError`` in both backends.

The Rust classes are built by PyO3's ``#[new]``, i.e. ``__new__`` (their
``__init__`` is ``object``'s): the constructors are declared as ``__new__``,
which ``stubtest sse_redis._core`` (scripts/gates) checks against the build.
"""

from typing import Final, TypeAlias, final

from ._states import SubState

__all__ = [
    "MAX_NESTING",
    "Event",
    "ReaderHub",
    "SSEParser",
    "WriterEngine",
    "encode_event",
    "is_terminal",
    "patch_nulls",
    "set_event_id",
    "sniff_stop_reason",
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

    # event="message", id="": PyO3's text signature renders these defaults as "...".
    def __new__(cls, data: str, event: str = ..., id: str = ..., retry: int | None = None) -> Event: ...
    @property
    def event(self) -> str: ...
    @property
    def data(self) -> str: ...
    @property
    def id(self) -> str: ...
    @property
    def retry(self) -> int | None: ...
    def __eq__(self, other: object, /) -> bool: ...

@final
class SSEParser:
    """Incremental parser following the WHATWG event-stream rules.

    Text may be split across ``feed`` calls at any character (a CR at the end
    of one feed and an LF at the start of the next are one line break).  One
    leading BOM is stripped.  An event still open when feeding stops is not
    returned.  ``retry`` values of 2**64 or more are ignored.
    """

    def __new__(cls) -> SSEParser: ...
    def feed(self, text: str) -> list[Event]: ...
    @property
    def last_event_id(self) -> str: ...

def encode_event(data: str, *, event: str | None = None, id: str | None = None, retry: int | None = None) -> str:
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
    or an ``event`` field with value ``error`` or ``cancelled``."""

def sniff_stop_reason(chunk: str) -> str | None:
    """The ``stop_reason`` string of a chunk whose first event's data is a JSON
    object with ``"message_type": "stop_reason"`` at its top level, else
    ``None``.  Chunks without the text ``stop_reason`` are never parsed."""

def set_event_id(chunk: str, event_id: str) -> str:
    """``chunk`` with its last event carrying ``id: <event_id>``, placed just
    before the blank line that ends that event (its own ``id`` lines removed).
    An unterminated last event is terminated; a chunk with no event gets an
    id-only event.  CR, LF or NUL in ``event_id`` raise ``ValueError``."""

# -- engines: I/O on background threads, GIL released while waiting ------------

_Entry: TypeAlias = tuple[
    str, int, str, bool, bool, float | None
]  # stub-only: private, so stubtest does not look for it
"""``(stream entry id, seq_id, data, complete, broken, timestamp)``; broken: the
error terminal of a run its writer broke off, after seqs that may be missing;
timestamp: when the writer stored it, ms since the epoch (the entry's
``timestamp`` field; ``None`` when missing or not a decimal number)."""

@final
class WriterEngine:
    """Per-run queues, group-committed pipelines of fenced script calls, retries.
    Keys are stream keys (the faces map run ids to keys)."""

    def __new__(
        cls,
        url: str,
        *,
        flush_size: int = 50,
        ttl: int | None = ...,  # 10800 (PyO3 renders an Option default as "...")
        max_len: int | None = ...,  # 10000
        max_pending: int = 10000,
        retry_timeout: float = 30.0,
        connect_timeout: float = 5.0,
        socket_timeout: float = 10.0,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
        cluster: bool = False,
    ) -> WriterEngine: ...
    def write(self, key: str, data: str, complete: bool, timeout: float | None = None) -> int:
        """Queue one chunk; its seq id. Waits for the run to open and for room,
        up to ``timeout`` in all (``WriteTimeout``). A broken run raises its error."""
    def fail(self, key: str, data: str, timeout: float | None = None) -> int:
        """Queue the run's error terminal, which may end a broken run too."""
    def try_write(self, key: str, data: str, complete: bool, error: bool = False) -> int | None:
        """``write`` (``fail`` with ``error``) that never waits: ``None`` when it would have to."""
    def wait_writable(self, key: str, timeout: float | None = None) -> None:
        """Wait until a write to ``key`` would not wait; queues nothing."""
    def superseded(self, key: str, seq: int) -> bool:
        """Whether the terminal queued as ``seq`` found the run already completed
        by another writer; answered once. ``RunCancelled`` when a cancel ended
        the run before it."""
    def cancel(self, key: str, data: str) -> int | None:
        """Store ``data`` as the run's cancel terminal after whatever its top is
        (``append.lua`` mode ``c``); its seq, or ``None`` when the run already
        ended or is unknown (no stream and no running status)."""
    def start(self, key: str) -> bool:
        """Register the run as running (its status key); ``False`` when it already ended."""
    def status(self, key: str) -> tuple[str, int, str | None, int | None, int | None] | None:
        """``(state, last_seq, stop_reason, started_at ms, updated_at ms)``, or
        ``None`` when the run has no status and no stream."""
    def flush(self, timeout: float | None = None, key: str | None = None) -> None: ...
    def last_seq(self, key: str) -> int: ...
    def delete(self, key: str) -> None: ...
    def stats(self) -> dict[str, int]: ...
    def take_events(self) -> list[tuple[str, str]]:
        """Retries and give-ups since the last call, oldest first, as ``(kind,
        cause)``: ``retry``, ``gave_up``, ``dropped`` (events not kept)."""
    def close(self, timeout: float | None = None) -> None: ...

@final
class ReaderHub:
    """Subscriptions fed by a fetcher (pipelined catch-up ``XRANGE``), told
    when to fetch by a listener (the notices of this library's writers:
    ``delivery="notify"``), and fed by a blocker (one ``XREAD BLOCK`` over
    every watched key) for streams written by anything else, or every stream
    with ``delivery="xread"``; one listener and one blocker at most on one
    server, one of each per slot group (hash tag) on a cluster.  A poll
    reports the subscription's state, a ``SubState`` (``pending``, ``ok``,
    ``missing``, ``done``, ``gone``, ``down``; see ``docs/glossary.md``)."""

    def __new__(
        cls,
        url: str,
        *,
        queue_size: int = 256,
        batch_size: int = 100,
        block_ms: int | None = None,
        check_interval: float = 10.0,
        retry_timeout: float = 30.0,
        connect_timeout: float = 5.0,
        socket_timeout: float = 10.0,
        cluster: bool = False,
        delivery: str = "notify",
    ) -> ReaderHub: ...
    def subscribe(self, key: str, after_seq: int, waker: int | None = None) -> int: ...
    def unsubscribe(self, sid: int) -> None: ...
    def poll(self, sid: int) -> tuple[list[_Entry], SubState]: ...
    def wait(self, sid: int, timeout: float | None = None) -> tuple[list[_Entry], SubState]: ...
    def add_waker(self, fd: int) -> int:
        """Register the write end of an event loop's socket pair; the hub writes a byte to it."""
    def remove_waker(self, wid: int) -> None: ...
    def take_ready(self, wid: int) -> list[int]:
        """Subscriptions of this waker with something to poll."""
    def stats(self) -> dict[str, int]: ...
    def take_events(self) -> list[tuple[str, str]]:
        """Reconnects since the last call, oldest first, as ``(kind, cause)``:
        ``reconnect``, ``notices_refused`` (this user may not subscribe: XREAD
        for every stream), ``notices_missed`` (streams grew without notices in
        two safety checks in a row), ``dropped`` (events not kept)."""
    def close(self) -> None: ...
