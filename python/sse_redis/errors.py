"""The exceptions sse-redis raises.  Both engines raise these same classes
(the Rust core imports them from here), so callers catch types, never text."""

from __future__ import annotations


class SSERedisError(Exception):
    """Base class of every sse-redis error."""


class RunClosedError(SSERedisError):
    """The run's terminal chunk is stored: nothing more can be written to it."""


class RunCancelled(RunClosedError):
    """The run was cancelled (``RunControl.cancel``, from any process): its
    ``event: cancelled`` terminal is stored, so nothing more can be written
    to it.  ``reason`` is the cancel's reason when known."""

    def __init__(self, *args: object, reason: str | None = None) -> None:
        super().__init__(*args)
        self.reason: str | None = reason


class StaleWriterError(SSERedisError):
    """Another writer has written to the run since this writer's last write
    (or the stream vanished under it); this writer must not continue it."""


class WriteTimeout(SSERedisError, TimeoutError):
    """Redis could not keep up: the write waited longer than ``write_timeout``
    for buffer space, or a flush did not finish in time."""


class RedisUnavailable(SSERedisError, ConnectionError):
    """Redis could not be reached (or kept failing) until the retry deadline."""


class StreamNotFound(SSERedisError):
    """The run's stream does not exist (after ``missing_timeout``), or it
    expired while being read."""


class StreamStalled(SSERedisError):
    """No new entry arrived for ``idle_timeout`` seconds: the writer is gone."""


class StreamTrimmed(SSERedisError):
    """The reader's cursor is older than the first stored entry: ``MAXLEN``
    trimming removed chunks the reader still needed."""


__all__ = [
    "RedisUnavailable",
    "RunCancelled",
    "RunClosedError",
    "SSERedisError",
    "StaleWriterError",
    "StreamNotFound",
    "StreamStalled",
    "StreamTrimmed",
    "WriteTimeout",
]
