"""``StreamWriter`` and ``AsyncStreamWriter``: the faces over the writer engine.

The engine (``_core.WriterEngine`` or its twin ``_pure.WriterEngine``) does
the I/O on its own thread; these classes validate, frame terminal and error
chunks, and keep one engine per process (a forked child starts its own).
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import time
import weakref
from typing import TYPE_CHECKING, Any, Final

from . import _backend, _events, _fork
from . import keys as _keys
from ._binding import bind
from ._options import WriterOptions, same_parameters, seconds, wait_seconds
from .connection import redact
from .errors import RunCancelled, RunClosedError, SSERedisError, WriteTimeout

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from 3.11 on; a type-checking import only

    # The stub documents both twins: _pure.WriterEngine has the same signatures.
    from ._core import WriterEngine

log: logging.Logger = logging.getLogger("sse_redis.writer")

DONE_CHUNK: Final = "data: [DONE]\n\n"
DEFAULT_PUBLIC_ERROR: Final = "An internal error occurred while streaming this run."


def failure_chunk(run_id: str, exc: BaseException | None, public_message: str | None) -> str:
    """The error event ``fail`` stores; the exception's own text is only logged."""
    if exc is not None:
        # The traceback goes with the record (exc_info), not only the message.
        log.error("run %s failed: %s: %s", run_id, type(exc).__name__, exc, exc_info=exc)
    return error_chunk(public_message or DEFAULT_PUBLIC_ERROR)


def error_chunk(message: str) -> str:
    """The terminal error event a browser sees: ``event: error`` plus JSON."""
    codec = _backend.module()
    # The backend is a module picked at run time (untyped); both encode_event return str.
    chunk: str = codec.encode_event(json.dumps({"error": message, "code": "INTERNAL_SERVER_ERROR"}), event="error")
    return chunk


class StreamWriter:
    """Writes SSE chunks of runs to Redis Streams, pipelined and in order.

    ``redis`` is a URL (``redis://``, ``rediss://``, ``unix://``) or a redis-py
    client whose settings are reused.  ``keys`` maps a run id to its stream key
    (a ``KeyLayout``, a prefix, or a callable) and must match the reader's.
    Chunks leave at once when no pipeline is in flight, and gather for the next
    pipeline while one is (group commit), ``flush_size`` per run per batch.
    ``flush_interval`` is the reference's knob and a bound this meets by
    construction: no chunk ever waits for a timer.

    ``cluster=True`` (implied by a ``RedisCluster`` client) writes to a Redis
    Cluster, the URL naming any node; keys default to ``ClusterKeyLayout``.
    ``wait_replicas=N`` counts a chunk as stored (``flush`` returns) only once
    ``N`` replicas have it (``WAIT``, up to ``wait_timeout`` per try, retried
    until ``retry_timeout``), so a failover loses nothing acknowledged.
    """

    def __init__(
        self,
        redis: Any = "redis://127.0.0.1:6379/0",
        *,
        keys: _keys.Layout | str | None = None,
        flush_interval: float = 0.5,
        flush_size: int = 50,
        ttl: int | None = 10800,
        max_len: int | None = 10000,
        max_pending: int = 10000,
        write_timeout: float | None = 30.0,
        retry_timeout: float = 30.0,
        connect_timeout: float = 5.0,
        cluster: bool | None = None,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
        max_chunk_bytes: int | None = 16 * 1024 * 1024,
        backend: str | None = None,
    ) -> None:
        self.options: WriterOptions = WriterOptions.checked(
            flush_interval=flush_interval,
            flush_size=flush_size,
            ttl=ttl,
            max_len=max_len,
            max_pending=max_pending,
            write_timeout=write_timeout,
            retry_timeout=retry_timeout,
            connect_timeout=connect_timeout,
            wait_replicas=wait_replicas,
            wait_timeout=wait_timeout,
            max_chunk_bytes=max_chunk_bytes,
        )
        bound = bind(redis, cluster=cluster, keys=keys, backend=backend)
        self._url, self._key, self._module = bound.url, bound.key, bound.module
        self.cluster: bool = bound.cluster
        self.backend: str = bound.backend
        self.flush_interval: float = self.options.flush_interval
        self._write_timeout = self.options.write_timeout
        self._options = self.options.engine(self.cluster)
        self._engine = _fork.PerProcess(self._build_engine)
        self._closed = False
        _open_writers.add(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({redact(self._url)!r}, backend={self.backend!r})"

    def _build_engine(self) -> WriterEngine:
        engine: WriterEngine = self._module.WriterEngine(self._url, **self._options)
        _events.watch(self)  # its retries are logged even if nothing here is called again
        return engine

    def _log_events(self) -> None:
        """Log the engine's retries and give-ups since the last drain (WARNING)."""
        if not self._closed:
            _events.log(log, self._engine.built())

    @property
    def engine(self) -> WriterEngine:
        """This process's engine; a forked child builds its own on first use."""
        if self._closed:
            raise SSERedisError("this StreamWriter is closed")
        engine: WriterEngine = self._engine.get()  # PerProcess holds what its builder made (untyped)
        return engine

    def prepare(self, run_id: str, chunk: str, terminal: bool | None = None) -> tuple[str, bool]:
        """The run's key and whether ``chunk`` ends it; validates both."""
        key = self._key(run_id)
        if not isinstance(chunk, str):
            raise TypeError(f"chunk must be a str, not {type(chunk).__name__}")
        # Non-ASCII is encoded now so a lone surrogate is refused here
        # (UnicodeEncodeError), not in the sender thread.
        size = len(chunk) if chunk.isascii() else len(chunk.encode("utf-8"))
        limit = self.options.max_chunk_bytes
        if limit is not None and size > limit:
            raise ValueError(f"chunk of {size} bytes for run {run_id!r} is over max_chunk_bytes ({limit})")
        if terminal is None:
            terminal = self._module.is_terminal(chunk)
        return key, terminal

    def write(self, run_id: str, chunk: str, *, terminal: bool | None = None) -> int:
        """Queue ``chunk`` for ``run_id`` and return its seq id (1, 2, ...).

        A terminal chunk (``data: [DONE]`` or ``event: error``) closes the run.
        Blocks while ``max_pending`` chunks wait for Redis, up to ``write_timeout``.
        """
        key, terminal = self.prepare(run_id, chunk, terminal)
        return self.engine.write(key, chunk, terminal, self._write_timeout)

    def complete(self, run_id: str) -> int | None:
        """Write ``data: [DONE]`` and wait until it is stored; a no-op (``None``)
        when the run is already complete, whichever writer completed it;
        ``RunCancelled`` when it was cancelled (``RunControl.cancel``)."""
        return self._finish(run_id, DONE_CHUNK, error=False)

    def fail(self, run_id: str, exc: BaseException | None = None, public_message: str | None = None) -> int | None:
        """End the run with an error event.  The browser sees ``public_message``
        (default: a generic text), never the exception's own text, which is logged.

        This works on a broken run too (one whose batch failed: it raised
        ``StaleWriterError``, ``RedisUnavailable``...): the error event goes
        after everything this writer stored, or starts the stream again when it
        vanished, so every reader of the run learns that it failed."""
        return self._finish(run_id, failure_chunk(run_id, exc, public_message), error=True)

    def _finish(self, run_id: str, chunk: str, *, error: bool) -> int | None:
        key = self._key(run_id)
        engine = self.engine
        try:
            if error:
                seq = engine.fail(key, chunk, self._write_timeout)
            else:
                seq = engine.write(key, chunk, True, self._write_timeout)
        except RunCancelled:
            raise  # the run was cancelled: say so (a complete() is not a no-op then)
        except RunClosedError:
            seq = None  # already complete; still wait for a terminal of ours in flight
        try:
            engine.flush(self._write_timeout, key)
        finally:
            _events.log(log, engine)
        return None if seq is not None and engine.superseded(key, seq) else seq

    def flush(self, timeout: float | None = None, *, run_id: str | None = None) -> None:
        """Return once everything written so far (to ``run_id``, or to any run)
        is stored; raises a failed batch's error, each error once."""
        key = None if run_id is None else self._key(run_id)
        engine = self.engine
        try:
            engine.flush(self._timeout(timeout), key)
        finally:
            _events.log(log, engine)

    def _timeout(self, timeout: float | None) -> float | None:
        """A call's own timeout (checked like ``write_timeout``), else ``write_timeout``."""
        if timeout is None:
            return self._write_timeout
        return wait_seconds(seconds("timeout", timeout, unlimited=True))

    def last_seq(self, run_id: str) -> int:
        """The last seq id stored for the run (0 when there is none)."""
        return self.engine.last_seq(self._key(run_id))

    def delete(self, run_id: str) -> None:
        """Delete the run's stream and its status, and forget its state."""
        self.engine.delete(self._key(run_id))

    def stats(self) -> dict[str, int]:
        """Counters: chunks and batches stored, pipelines, retries, errors, pending chunks, open runs."""
        engine = self.engine
        _events.log(log, engine)
        return engine.stats()

    def close(self, timeout: float | None = None) -> None:
        """Flush and stop the engine; idempotent."""
        if self._closed:
            return
        timeout = self._timeout(timeout)
        self._closed = True
        _open_writers.discard(self)
        engine = self._engine.take()
        if engine is not None:
            try:
                engine.close(timeout)
            finally:
                _events.log(log, engine)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncStreamWriter:
    """``StreamWriter`` for asyncio: the same methods as coroutines.

    A write that can be queued at once costs no thread hop; one that must
    wait (first write of a run, or a full buffer) waits in a worker thread,
    so the event loop never blocks.  Every chunk is queued on the event loop
    itself: a cancelled ``write`` queued nothing, one that returned a seq did.
    """

    @same_parameters(StreamWriter.__init__)
    def __init__(self, *args: Any, **options: Any) -> None:
        # StreamWriter's parameters exactly (see same_parameters); it checks them.
        self.sync: StreamWriter = StreamWriter(*args, **options)

    def __repr__(self) -> str:
        return f"Async{self.sync!r}"

    @property
    def backend(self) -> str:
        """``"rust"`` or ``"python"``: the engine behind this writer."""
        return self.sync.backend

    async def write(self, run_id: str, chunk: str, *, terminal: bool | None = None) -> int:
        """``StreamWriter.write``.  Cancelling it is safe: a write that raised
        ``CancelledError`` queued nothing (retry it), one that returned is queued."""
        key, terminal = self.sync.prepare(run_id, chunk, terminal)
        return await self._queue(key, chunk, terminal, error=False)

    async def _queue(self, key: str, chunk: str, terminal: bool, *, error: bool) -> int:
        # The chunk is queued here, on the event loop, where no cancellation
        # can fall between queueing it and returning its seq. What may wait
        # (the run's first write, a full buffer) waits in a worker thread that
        # queues nothing, so a cancelled wait leaves nothing behind.
        engine, timeout = self.sync.engine, self.sync._write_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            seq = engine.try_write(key, chunk, terminal, error)
            if seq is not None:
                return seq
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise WriteTimeout(f"no room to queue a chunk for {key!r} within {timeout}s")
            await asyncio.to_thread(engine.wait_writable, key, left)

    async def complete(self, run_id: str) -> int | None:
        """``StreamWriter.complete``."""
        return await self._finish(run_id, DONE_CHUNK, error=False)

    async def fail(
        self, run_id: str, exc: BaseException | None = None, public_message: str | None = None
    ) -> int | None:
        """``StreamWriter.fail``."""
        return await self._finish(run_id, failure_chunk(run_id, exc, public_message), error=True)

    async def _finish(self, run_id: str, chunk: str, *, error: bool) -> int | None:
        key = self.sync._key(run_id)
        try:
            seq: int | None = await self._queue(key, chunk, True, error=error)
        except RunCancelled:
            raise  # the run was cancelled: say so (a complete() is not a no-op then)
        except RunClosedError:
            seq = None  # already complete; still wait for a terminal of ours in flight
        engine = self.sync.engine
        try:
            await asyncio.to_thread(engine.flush, self.sync._write_timeout, key)
        finally:
            _events.log(log, engine)
        return None if seq is not None and engine.superseded(key, seq) else seq

    async def flush(self, timeout: float | None = None, *, run_id: str | None = None) -> None:
        """``StreamWriter.flush``, waiting in a worker thread."""
        await asyncio.to_thread(self.sync.flush, timeout, run_id=run_id)

    async def last_seq(self, run_id: str) -> int:
        """``StreamWriter.last_seq``."""
        return await asyncio.to_thread(self.sync.last_seq, run_id)

    async def delete(self, run_id: str) -> None:
        """``StreamWriter.delete``."""
        await asyncio.to_thread(self.sync.delete, run_id)

    def stats(self) -> dict[str, int]:
        """``StreamWriter.stats`` (no I/O, hence not a coroutine)."""
        return self.sync.stats()

    async def aclose(self, timeout: float | None = None) -> None:
        """Flush and stop the engine (in a worker thread); idempotent."""
        await asyncio.to_thread(self.sync.close, timeout)

    async def close(self, timeout: float | None = None) -> None:
        """``aclose`` (its name before redis.asyncio's ``aclose`` convention)."""
        await self.aclose(timeout)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


# Writers still open at interpreter exit are flushed, so no queued chunk is lost.
_open_writers: weakref.WeakSet[StreamWriter] = weakref.WeakSet()


@atexit.register
def _flush_open_writers() -> None:
    for writer in list(_open_writers):
        try:
            writer.close(timeout=5.0)
        except Exception as exc:  # exit must go on; say what was lost
            log.error("sse-redis: flushing %r at exit failed: %s", writer, exc, exc_info=exc)
