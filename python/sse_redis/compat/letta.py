"""A drop-in for Letta's ``letta.server.rest_api.redis_stream_manager``.

Same three names, same parameters, same defaults, same stream layout in Redis
(``sse:run:<run_id>``; fields ``seq_id``, ``data``, ``timestamp``, ``complete``),
so a deployment can switch one import and keep its readers, writers and stored
streams::

    # before
    from letta.server.rest_api.redis_stream_manager import (
        RedisSSEStreamWriter, create_background_stream_processor, redis_sse_stream_generator)
    # after
    from sse_redis.compat.letta import (
        RedisSSEStreamWriter, create_background_stream_processor, redis_sse_stream_generator)

Where Letta took its ``AsyncRedisClient`` wrapper, these take a
``redis.asyncio`` (or ``redis``) client, a URL, or the wrapper itself (its
connection pool is read); only the connection settings are used, sse-redis
opens connections of its own.

What changes (all fixes of the module's known defects; see
``docs/letta-migration.md``):

* Readers are pushed new chunks (``XREAD BLOCK`` through one shared hub per
  Redis server) instead of polling every ``poll_interval``; resuming seeks
  the cursor instead of scanning from the start of the stream.
* A read never waits forever: a missing stream raises ``StreamNotFound``
  (after ``missing_timeout``), a writer that went away raises
  ``StreamStalled`` (after ``idle_timeout``), a cursor at or past the end of
  a complete stream simply ends the read, and ``batch_size=1`` works.
* Writes are ordered, never duplicated, and a restarted writer continues the
  run's seq ids instead of starting again at 1.
* The background processor always closes the stream, reports the run's
  status exactly once even when Redis is down at the end, and lets
  ``asyncio.CancelledError`` through instead of swallowing it.

Keyword-only arguments after the reference's own (``backend``,
``idle_timeout``, ``missing_timeout``, ``on_finish``, ...) are sse-redis
extensions.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from .. import _backend
from ..connection import resolve_target
from ..keys import KeyLayout
from ..processor import OnFinish, aprocess_stream, settle
from ..reader import AsyncStreamReader
from ..writer import AsyncStreamWriter

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+

__all__ = [
    "RedisSSEStreamWriter",
    "RunUpdate",
    "close_shared",
    "create_background_stream_processor",
    "redis_sse_stream_generator",
]

log: logging.Logger = logging.getLogger("sse_redis.compat.letta")

# The values the reference put in its status updates (Letta's RunStatus and
# StopReasonType members of these names).
COMPLETED, FAILED, CANCELLED = "completed", "failed", "cancelled"
END_TURN, ERROR = "end_turn", "error"


@dataclass
class RunUpdate:
    """The status update handed to ``run_manager.update_run_by_id_async``
    when the ``letta`` package is not importable (with it, Letta's own
    ``RunUpdate`` is built).  ``status`` is ``"completed"``, ``"failed"`` or
    ``"cancelled"``; ``stop_reason`` a Letta stop reason such as
    ``"end_turn"``, ``"error"`` or ``"cancelled"``."""

    status: str
    stop_reason: str | None = None
    metadata: dict[str, Any] | None = None


_letta_types: Any = None  # (RunUpdate, RunStatus) of the letta package, False when absent


def make_run_update(status: str, stop_reason: str | None, metadata: dict[str, Any] | None = None) -> Any:
    """A ``RunUpdate``: Letta's when ``letta`` imports, else this module's."""
    global _letta_types
    if _letta_types is None:
        try:
            from letta.schemas.enums import RunStatus as LettaRunStatus
            from letta.schemas.run import RunUpdate as LettaRunUpdate

            _letta_types = (LettaRunUpdate, LettaRunStatus)
        except Exception:  # not installed, or not importable here
            _letta_types = False
    if not _letta_types:
        return RunUpdate(status=status, stop_reason=stop_reason, metadata=metadata)
    update_cls, status_enum = _letta_types
    fields: dict[str, Any] = {"status": status_enum(status), "stop_reason": stop_reason}
    if metadata is not None:
        fields["metadata"] = metadata
    return update_cls(**fields)


# ------------------------------------------------------------------ connections


def _target(redis_client: Any) -> Any:
    """What ``resolve_target`` understands: a URL or a redis-py client (a
    ``RedisCluster`` too) as they are; Letta's ``AsyncRedisClient`` wrapper
    through its ``pool``."""
    if isinstance(redis_client, str) or getattr(redis_client, "connection_pool", None) is not None:
        return redis_client
    pool = getattr(redis_client, "pool", None)
    if getattr(pool, "connection_kwargs", None) is not None:
        return SimpleNamespace(connection_pool=pool)
    return redis_client


_lock = threading.Lock()
_generation = 0  # bumped by close_shared: facades then fetch fresh engines
_writers: dict[tuple[Any, ...], AsyncStreamWriter] = {}
_readers: dict[tuple[Any, ...], AsyncStreamReader] = {}


def _shared_writer(url: str, options: dict[str, Any]) -> AsyncStreamWriter:
    """One writer engine per server and settings, shared by every
    ``RedisSSEStreamWriter``: a run costs no thread or connection of its own."""
    key = (
        url,
        options.get("backend") or _backend.BACKEND,
        tuple(sorted((k, v) for k, v in options.items() if k != "backend")),
    )
    with _lock:
        writer = _writers.get(key)
        if writer is None:
            writer = _writers[key] = AsyncStreamWriter(url, keys=KeyLayout(), **options)
        return writer


def _shared_reader(redis_client: Any, backend: str | None, batch_size: int) -> AsyncStreamReader:
    """One reader (one hub: two connections) per server, backend and batch
    size, shared by every ``redis_sse_stream_generator``."""
    url, cluster = resolve_target(_target(redis_client), None)
    key = (url, cluster, backend or _backend.BACKEND, batch_size)
    with _lock:
        reader = _readers.get(key)
        if reader is None:
            # The reference's key names, on a cluster too (one blocker per run there).
            reader = _readers[key] = AsyncStreamReader(
                url, keys=KeyLayout(), cluster=cluster, backend=backend, batch_size=batch_size
            )
        return reader


def close_shared(timeout: float | None = 5.0) -> None:
    """Flush and close the writer engines and reader hubs this module shares
    (an sse-redis extension; at interpreter exit writers are flushed anyway).
    Later calls open new ones."""
    global _generation
    with _lock:
        writers, readers = list(_writers.values()), list(_readers.values())
        _writers.clear()
        _readers.clear()
        _generation += 1
    for reader in readers:
        reader.close()
    for writer in writers:
        try:
            writer.sync.close(timeout)
        except Exception as exc:
            log.error("sse-redis: closing %r failed: %s", writer, exc)


# ------------------------------------------------------------------ writer


class RedisSSEStreamWriter:
    """Writes SSE chunks of runs to Redis Streams: the reference's writer,
    on the sse-redis engine.

    ``redis_client`` is a ``redis.asyncio`` client, a URL, or Letta's
    ``AsyncRedisClient``.  ``flush_size`` bounds the chunks per pipeline
    batch; ``stream_ttl_seconds`` is refreshed and ``MAXLEN ~
    max_stream_length`` applied on every batch, as before.  There is no
    flush timer any more: a chunk leaves as soon as no pipeline is in flight
    (``flush_interval`` is kept, and is an upper bound met by construction).

    Every instance with the same server and settings shares one engine (one
    thread, one connection), so making one per run, as
    ``create_background_stream_processor`` does, is cheap.

    Extensions (keyword-only): ``backend`` (``"rust"``/``"python"``),
    ``write_timeout``, ``retry_timeout``, ``connect_timeout``, ``max_pending``
    (see ``sse_redis.StreamWriter``).
    """

    def __init__(
        self,
        redis_client: Any,
        flush_interval: float = 0.5,
        flush_size: int = 50,
        stream_ttl_seconds: int = 10800,
        max_stream_length: int = 10000,
        *,
        backend: str | None = None,
        write_timeout: float | None = 30.0,
        retry_timeout: float = 30.0,
        connect_timeout: float = 5.0,
        max_pending: int = 10000,
    ) -> None:
        self.redis = redis_client
        self.flush_interval = flush_interval
        self.flush_size = flush_size
        self.stream_ttl = stream_ttl_seconds
        self.max_stream_length = max_stream_length
        self._url, cluster = resolve_target(_target(redis_client), None)
        self._options = dict(
            cluster=cluster,
            flush_interval=flush_interval,
            flush_size=flush_size,
            ttl=stream_ttl_seconds,
            max_len=max_stream_length,
            backend=backend,
            write_timeout=write_timeout,
            retry_timeout=retry_timeout,
            connect_timeout=connect_timeout,
            max_pending=max_pending,
        )
        self._writer = _shared_writer(self._url, self._options)  # validates the settings now
        self._generation = _generation
        self._open_runs: set[str] = set()  # written to through this writer, not yet ended
        self._running = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._writer.sync!r})"

    @property
    def writer(self) -> AsyncStreamWriter:
        """The underlying ``AsyncStreamWriter`` (shared; never close it yourself)."""
        if self._generation != _generation:
            self._writer = _shared_writer(self._url, self._options)
            self._generation = _generation
        return self._writer

    @property
    def backend(self) -> str:
        return self.writer.backend

    async def start(self) -> None:
        """Kept for compatibility: there is no flush task to start."""
        self._running = True

    async def stop(self) -> None:
        """Wait until everything written through this writer is stored; raises
        the first failure.  The shared engine stays up, and the writer stays
        usable (as the reference's did after ``stop``)."""
        self._running = False
        runs, self._open_runs = self._open_runs, set()
        first: BaseException | None = None
        for run_id in runs:
            try:
                await self.writer.flush(run_id=run_id)
            except Exception as exc:
                log.error("run %s: flushing its chunks failed: %s", run_id, exc)
                first = first or exc
        if first is not None:
            raise first

    async def write_chunk(self, run_id: str, data: str | bytes | bytearray, is_complete: bool = False) -> int:
        """Queue one SSE chunk of ``run_id`` and return its seq id (1, 2, ...).

        ``is_complete`` marks the run's last chunk; such a write returns once
        the chunk is stored (raising if it could not be).  After that the run
        refuses more chunks (``RunClosedError``) instead of starting its seq
        ids again at 1.
        """
        if isinstance(data, (bytes, bytearray)):
            data = bytes(data).decode("utf-8")
        writer = self.writer
        seq = await writer.write(run_id, data, terminal=bool(is_complete))
        if is_complete:
            self._open_runs.discard(run_id)
            await writer.flush(run_id=run_id)
        else:
            self._open_runs.add(run_id)
        return seq

    async def mark_complete(self, run_id: str) -> int | None:
        """End the run with ``data: [DONE]`` and wait until it is stored.  A
        run that is already complete is left alone (returns ``None``)."""
        self._open_runs.discard(run_id)
        return await self.writer.complete(run_id)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


# ------------------------------------------------------------------ processor


def _is_run_cancelled(exc: BaseException) -> bool:
    """Letta's ``RunCancelledException``, recognised by name (letta is not a
    dependency), subclasses included."""
    return any(cls.__name__ == "RunCancelledException" for cls in type(exc).__mro__)


def _letta_stop_reason(status: str, stop_reason: str | None) -> str:
    """The stop reason the reference reported for a run that ended so."""
    if status == FAILED:
        return ERROR
    if status == CANCELLED:
        return CANCELLED
    return stop_reason or END_TURN


async def _text(source: Any) -> AsyncIterator[Any]:
    """The source with ``bytes`` chunks decoded (the reference accepted them)."""
    async for item in source:
        chunk = item[0] if isinstance(item, tuple) else item
        yield bytes(chunk).decode("utf-8") if isinstance(chunk, (bytes, bytearray)) else item


async def create_background_stream_processor(
    stream_generator: Any,
    redis_client: Any,
    run_id: str,
    writer: RedisSSEStreamWriter | None = None,
    run_manager: Any = None,
    actor: Any = None,
    on_finish: OnFinish | None = None,
    *,
    backend: str | None = None,
) -> None:
    """Drain ``stream_generator`` into the run's stream, then report how the run ended.

    Items that are tuples count by their first element.  A terminal chunk
    (``data: [DONE]`` or ``event: error``) is written with ``complete=true``
    and ends the loop; stop-reason chunks are noted on the way.  Without a
    ``writer`` one is made, started and stopped here.

    Endings:

    * the source ends: the stream is closed with ``[DONE]`` if the source did
      not close it; status ``completed`` with the last stop reason seen (or
      ``end_turn``), or ``cancelled`` when that stop reason is ``cancelled``;
    * the source raises ``RunCancelledException`` (any class of that name) or
      the task is cancelled: ``[DONE]``, status ``cancelled``; a task
      cancellation is re-raised once all this is done;
    * the source raises anything else: status ``failed`` (stop reason
      ``error``, ``metadata={"error": str(exc)}``) is reported first, then the
      stream ends with ``event: error`` whose JSON carries ``str(exc)`` and the
      code ``INTERNAL_SERVER_ERROR``.  Showing the exception's text is the
      reference's behaviour, kept on purpose here only: ``StreamWriter.fail``
      elsewhere in sse-redis never shows it;
    * Redis fails while the stream is being closed: status ``failed`` with
      that error; the report is still made.

    ``run_manager.update_run_by_id_async(run_id=..., update=..., actor=...)``
    is awaited exactly once per run when both ``run_manager`` and ``actor``
    are given.  ``on_finish(run_id, status, stop_reason, error)`` (an
    sse-redis extension; may be a coroutine function) is called exactly once
    with the same status and stop reason.  An exception of ``run_manager`` or
    ``on_finish`` is raised after the stream is closed and both were called.
    ``backend`` (extension) picks the engine of the writer made here.

    This is ``sse_redis.aprocess_stream`` with the reference's policy: its
    stop reasons, its cancellation exception, the exception's text in the
    error event, and the status update made before that event is stored.
    """
    own_writer = writer is None
    if writer is None:
        writer = RedisSSEStreamWriter(redis_client, backend=backend)
        await writer.start()
    reported = False

    async def report(run: str, status: str, stop_reason: str | None, error: BaseException | None) -> None:
        nonlocal reported
        if reported:
            return
        reported = True  # once per run, even if it fails
        if run_manager is None or actor is None:
            return
        metadata = {"error": str(error)} if error is not None else None
        update = make_run_update(status, _letta_stop_reason(status, stop_reason), metadata)
        await run_manager.update_run_by_id_async(run_id=run, update=update, actor=actor)

    async def finish(run: str, status: str, stop_reason: str | None, error: BaseException | None) -> None:
        try:
            await report(run, status, stop_reason, error)
        finally:
            if on_finish is not None:
                result = on_finish(run, status, _letta_stop_reason(status, stop_reason), error)
                if inspect.isawaitable(result):
                    await result

    try:
        await aprocess_stream(
            _text(stream_generator),
            writer.writer,
            run_id,
            on_finish=finish,
            on_failure=report,  # the status first, as the reference ordered it
            public_error=str,
            cancels=_is_run_cancelled,
        )
    finally:
        if own_writer:
            failure, stop = await settle(writer.stop())
            if failure is not None:
                log.error("run %s: stopping its writer failed: %s", run_id, failure)
            if stop is not None:
                raise stop  # a cancellation that arrived meanwhile


# ------------------------------------------------------------------ reader


async def redis_sse_stream_generator(
    redis_client: Any,
    run_id: str,
    starting_after: int | None = None,
    poll_interval: float = 0.1,
    batch_size: int = 100,
    *,
    backend: str | None = None,
    idle_timeout: float = 600.0,
    missing_timeout: float = 30.0,
) -> AsyncIterator[str]:
    """Yield the run's stored SSE chunks after ``starting_after`` (seq ids
    strictly greater; ``None`` or 0: from the first), ending after the
    chunk stored with ``complete=true``.

    Chunks come out as the reference yielded them: the stored text, with
    ``"run_id": null`` and ``"seq_id": null`` in JSON data filled in (any
    spacing), no ``id:`` line added.  A cursor at or past the end of a
    complete stream ends at once.

    ``poll_interval`` is accepted and ignored: new chunks are pushed
    (``XREAD BLOCK`` on a hub shared by every generator of this server and
    ``batch_size``), not polled.  ``batch_size`` is the page size of catch-up
    reads; any value >= 1 works.

    Where the reference looped forever, this raises (so the HTTP response
    ends and the client can reconnect with its cursor):
    ``sse_redis.StreamNotFound`` when the stream does not appear within
    ``missing_timeout`` seconds or expires while read,
    ``sse_redis.StreamStalled`` when no chunk arrives for ``idle_timeout``
    seconds before the end (the writer is gone), ``sse_redis.StreamTrimmed``
    when ``MAXLEN`` trimming removed chunks after the cursor, and
    ``sse_redis.RedisUnavailable`` when Redis stays unreachable.
    ``backend``, ``idle_timeout`` and ``missing_timeout`` are extensions.
    """
    del poll_interval  # pushed, not polled
    if isinstance(starting_after, int) and not isinstance(starting_after, bool) and starting_after < 0:
        starting_after = 0  # the reference treated any cursor below 1 as "from the start"
    reader = _shared_reader(redis_client, backend, batch_size)
    chunks = reader.read(
        run_id,
        starting_after or None,
        stamp_ids=False,  # the reference yielded stored chunks without an id line
        idle_timeout=idle_timeout,
        missing_timeout=missing_timeout,
    )
    try:
        async for chunk in chunks:
            yield chunk
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]  # unsubscribe now, not when collected
