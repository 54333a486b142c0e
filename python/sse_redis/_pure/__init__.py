"""The pure-Python twin of ``sse_redis._core``: the same names, signatures and results."""

from .codec import (
    MAX_NESTING,
    Event,
    SSEParser,
    encode_event,
    is_terminal,
    patch_nulls,
    set_event_id,
    sniff_stop_reason,
)
from .hub import ReaderHub
from .writer import WriterEngine

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
