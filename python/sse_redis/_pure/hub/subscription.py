"""The hub's data model (twin of ``src/io/hub/subscription.rs``): a
subscription and the states a poll reports (``SubState``), the entries readers
get, the blocker groups and the listeners' channel sets."""

from __future__ import annotations

import re
import threading
from collections import deque

from ..._states import SubState

# ``(stream entry id, seq_id, data, complete, broken, timestamp)``; timestamp:
# when the writer stored it, ms since the epoch (``None``: missing or unparsable)
Entry = tuple[str, int, str, bool, bool, float | None]

# A ``timestamp`` field: digits, optionally a point and more digits (the twin's rule).
_TIMESTAMP = re.compile(rb"[0-9]+(?:\.[0-9]+)?")


def timestamp_ms(raw: bytes | None) -> float | None:
    """A ``timestamp`` field as ms since the epoch; ``None`` unless it is a
    decimal number."""
    if raw is None or _TIMESTAMP.fullmatch(raw) is None:
        return None
    value = float(raw)
    return value if value != float("inf") else None


def is_ours(fields: dict[bytes, bytes]) -> bool:
    """Whether an entry was stored by a writer of this library (it has a
    ``writer`` field), so that its run's writers publish notices."""
    return b"writer" in fields


def parse_id(entry_id: str) -> tuple[int, int]:
    """A stream entry id as ``(ms, seq)``, in the order Redis keeps."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def to_entry(entry_id: bytes, fields: dict[bytes, bytes]) -> Entry:
    """``(id, seq_id, data, complete, broken, timestamp)`` of a raw stream
    entry (broken: the error terminal of a run its writer broke off, after
    seqs that may be missing because they were never stored)."""
    try:
        seq = int(fields.get(b"seq_id", b"0"))
    except ValueError:
        seq = 0
    data = fields.get(b"data", b"").decode("utf-8", "replace")
    complete, broken = fields.get(b"complete") == b"true", fields.get(b"broken") == b"true"
    return entry_id.decode(), seq, data, complete, broken, timestamp_ms(fields.get(b"timestamp"))


class Sub:
    """One reader following one stream key from a cursor."""

    __slots__ = (
        "again",
        "closed",
        "cond",
        "fetched_once",
        "fetching",
        "id",
        "key",
        "last",
        "live",
        "notified",
        "queue",
        "state",
        "waker",
    )

    def __init__(self, sid: int, key: str, after_seq: int, waker: int | None, lock: threading.Lock):
        self.id = sid
        self.key = key
        self.last = (0, after_seq)  # the newest entry ID this subscription has
        self.queue: deque[Entry] = deque()
        self.live = False  # fed by the blocker (else by the fetcher)
        self.fetching = False  # queued for the fetcher
        self.again = False  # told to fetch while fetching: fetch once more after
        self.fetched_once = False
        self.state = SubState.PENDING  # until the first fetch has reached Redis
        self.waker = waker
        self.notified = False
        self.cond = threading.Condition(lock)
        self.closed = False


class Group:
    """The keys one blocker waits on, with the newest entry ID it has of each."""

    __slots__ = ("blocking_version", "client_id", "keys", "node", "version")

    def __init__(self) -> None:
        self.keys: dict[str, tuple[int, int]] = {}
        self.version = 0  # bumped when a key joins
        self.blocking_version = 0  # the key set the blocker's XREAD covers
        self.client_id: int | None = None
        self.node: str | None = None  # the cluster node it blocks on, or should reach


class Listen:
    """The keys one listener follows by notice (a listen set: every key on
    one server, the keys whose slots a node owns on a cluster), with the
    newest entry ID the hub knows of each (from notices, fetches and safety
    checks)."""

    __slots__ = ("channels", "keys", "version")

    def __init__(self) -> None:
        self.keys: dict[str, tuple[int, int]] = {}
        self.channels: dict[str, str] = {}  # notice channel -> stream key
        self.version = 0  # bumped when ``channels`` changes: the listener syncs only then
