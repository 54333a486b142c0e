"""Resumable Server-Sent Event streams stored in Redis Streams.

The hot path lives in a Rust core (``sse_redis._core``); a pure-Python twin
(``sse_redis._pure``) with the same names and results serves where no binary
wheel exists, or when ``SSE_REDIS_PURE=1``.  ``BACKEND`` says which is live;
every face also takes ``backend="rust"|"python"``.
"""

from __future__ import annotations

import logging
from importlib import metadata as _metadata
from typing import TYPE_CHECKING

from ._backend import BACKEND
from ._backend import module as _module
from .control import AsyncRunControl, RunControl, RunInfo
from .errors import (
    RedisUnavailable,
    RunCancelled,
    RunClosedError,
    SSERedisError,
    StaleWriterError,
    StreamNotFound,
    StreamStalled,
    StreamTrimmed,
    WriteTimeout,
)
from .keys import ClusterKeyLayout, KeyLayout
from .processor import aprocess_stream, cancel_event, cancelled, process_stream
from .reader import AsyncStreamReader, StreamReader
from .writer import AsyncStreamWriter, StreamWriter

# A library logs, it does not print: the application decides where logs go.
logging.getLogger("sse_redis").addHandler(logging.NullHandler())

if TYPE_CHECKING:
    # The codec is the live backend's, picked at import; _core.pyi declares
    # both twins (the pure one has the same names, signatures and results).
    from ._core import (
        Event,
        SSEParser,
        encode_event,
        is_terminal,
        patch_nulls,
        set_event_id,
        sniff_stop_reason,
    )
else:
    _live = _module()

    Event = _live.Event
    SSEParser = _live.SSEParser
    encode_event = _live.encode_event
    patch_nulls = _live.patch_nulls
    is_terminal = _live.is_terminal
    sniff_stop_reason = _live.sniff_stop_reason
    set_event_id = _live.set_event_id

__all__ = [
    "BACKEND",
    "AsyncRunControl",
    "AsyncStreamReader",
    "AsyncStreamWriter",
    "ClusterKeyLayout",
    "Event",
    "KeyLayout",
    "RedisUnavailable",
    "RunCancelled",
    "RunClosedError",
    "RunControl",
    "RunInfo",
    "SSEParser",
    "SSERedisError",
    "StaleWriterError",
    "StreamNotFound",
    "StreamReader",
    "StreamStalled",
    "StreamTrimmed",
    "StreamWriter",
    "WriteTimeout",
    "aprocess_stream",
    "cancel_event",
    "cancelled",
    "encode_event",
    "is_terminal",
    "patch_nulls",
    "process_stream",
    "set_event_id",
    "sniff_stop_reason",
]
try:  # one version, Cargo.toml's, as the installed distribution reports it
    __version__: str = _metadata.version("sse-redis")
except _metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
