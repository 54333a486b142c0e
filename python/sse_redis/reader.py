"""``StreamReader`` and ``AsyncStreamReader``: follow a run's stream from a
cursor, every chunk exactly once, in order, until its terminal entry.

All I/O belongs to the hub (``_core.ReaderHub`` or ``_pure.ReaderHub``): one
per reader object, shared by every ``read`` of it.  A read only subscribes
and consumes its own queue; ``_Follow`` below turns queued entries into SSE
chunks and decides when the read is over, for the sync and async faces alike.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, Final

from . import _events, _fork
from . import keys as _keys
from ._binding import bind
from ._options import NO_LIMIT, ReaderOptions, same_parameters, seconds
from ._states import SubState
from .connection import redact
from .errors import RedisUnavailable, SSERedisError, StreamNotFound, StreamStalled, StreamTrimmed

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from 3.11 on; a type-checking import only

    # (id, seq, data, complete, broken, timestamp): what both hubs queue; stub-only, hence private.
    from ._core import ReaderHub
    from ._core import _Entry as Entry

# A comment line, with no blank line after it: a block of its own would reach
# some clients (httpx-sse, once an id was seen) as an empty message.
PING: Final = ": ping\n"
MAX_CURSOR: Final = 2**63 - 1  # seq ids are stream ID parts; far beyond any real run

log: logging.Logger = logging.getLogger("sse_redis.reader")

# How many of the latest delivered chunks the lag figures cover.
LAG_WINDOW: Final = 1024

# The keys of a reader's stats() that its own face counts; the rest come from the hub.
_HUB_STATS: Final = ("subscriptions", "catchup_reads", "reconnects", "xreads", "connections")


class _Counters:
    """What a reader's reads did, counted by the face (the same on both
    backends); added to once per batch of entries, never per chunk."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reads = 0  # reads started
        self.active = 0  # reads not yet over
        self.chunks = 0  # chunks made ready for reads, per batch (pings not counted)
        self.errors = 0  # reads that ended with an error (StreamNotFound, StreamStalled, ...)
        # Seconds from each chunk's stored timestamp to its hand-over, the latest LAG_WINDOW.
        self.lags: deque[float] = deque(maxlen=LAG_WINDOW)

    def started(self) -> None:
        with self.lock:
            self.reads += 1
            self.active += 1

    def ended(self, failed: bool) -> None:
        with self.lock:
            self.active -= 1
            self.errors += failed

    def delivered(self, n: int, lags: list[float]) -> None:
        with self.lock:
            self.chunks += n
            self.lags.extend(lags)

    def snapshot(self) -> dict[str, float]:
        with self.lock:
            counts = {"reads": self.reads, "active_reads": self.active, "chunks": self.chunks, "errors": self.errors}
            lags = sorted(self.lags)
        # p99 by nearest rank: the smallest lag at least 99% of the window do not exceed.
        p99 = lags[max(math.ceil(0.99 * len(lags)) - 1, 0)] if lags else 0.0
        return {**counts, "lag_max_s": lags[-1] if lags else 0.0, "lag_p99_s": p99}


def _hub_stats(hub: ReaderHub | None) -> dict[str, int]:
    """The hub's counters under the reader's names (zeros before the hub exists)."""
    if hub is None:
        return dict.fromkeys(_HUB_STATS, 0)
    s = hub.stats()
    return {
        "subscriptions": s["subscriptions"],
        "catchup_reads": s["fetches"],
        "reconnects": s["reconnects"],
        "xreads": s["xreads"],
        "connections": s["connections"],
    }


def cursor_of(starting_after: int | None, last_event_id: str | None) -> int:
    """The seq id to resume after: ``starting_after``, else the browser's
    ``Last-Event-ID`` header value, else 0 (from the start)."""
    if starting_after is not None and last_event_id is not None:
        raise ValueError("give starting_after or last_event_id, not both")
    if last_event_id is not None:
        text = str(last_event_id).strip()
        if not text:
            return 0
        if not (text.isascii() and text.isdigit()) or len(text) > 19 or int(text) > MAX_CURSOR:
            raise ValueError(f"Last-Event-ID must be a seq id (digits), not {last_event_id!r}")
        return int(text)
    if starting_after is None:
        return 0
    if isinstance(starting_after, bool) or not isinstance(starting_after, int) or not 0 <= starting_after <= MAX_CURSOR:
        raise ValueError(f"starting_after must be an int from 0 to 2**63-1, not {starting_after!r}")
    return starting_after


# One SSE event as sse-starlette's ``EventSourceResponse`` takes it (a dict it
# encodes field by field): ``id`` (the chunk's seq id), ``data``, and ``event``
# and ``retry`` when the stored event has them.
SSEEvent = dict[str, "str | int"]


def events_of(codec: Any, chunk: str) -> list[SSEEvent]:
    """The events of one chunk the reader yielded (``id: <seq>`` set), each
    carrying the chunk's seq id; none for a ping comment."""
    parser = codec.SSEParser()
    events = parser.feed(chunk)
    seq = parser.last_event_id
    out: list[SSEEvent] = []
    for event in events:
        item: SSEEvent = {"id": seq}
        if event.event != "message":
            item["event"] = event.event
        item["data"] = event.data
        if event.retry is not None:
            item["retry"] = event.retry
        out.append(item)
    return out


class _Follow:
    """One read's progress: the cursor, the clocks, and what entries mean."""

    def __init__(
        self,
        reader: StreamReader,
        run_id: str,
        cursor: int,
        *,
        stamp_ids: bool = True,
        idle_timeout: float | None = None,
        missing_timeout: float | None = None,
    ) -> None:
        self.codec = reader._module
        self.counters = reader._counters
        self.run_id = run_id
        self.cursor = cursor
        self.stamp_ids = stamp_ids
        self.idle_timeout = reader.idle_timeout if idle_timeout is None else float(idle_timeout)
        self.ping_interval = reader.ping_interval
        self.retry_timeout = reader.retry_timeout
        now = time.monotonic()
        missing = reader.missing_timeout if missing_timeout is None else float(missing_timeout)
        self.missing_deadline = now + missing
        self.last_entry = now
        self.last_sent = now
        self.finished = False

    def chunks(self, entries: list[Entry], state: SubState) -> list[str]:
        """SSE chunks for newly queued entries; raises when the read must end badly."""
        out = []
        lags: list[float] = []
        now = time.monotonic()
        wall_ms = time.time() * 1000 if entries else 0.0
        for _entry_id, seq, data, complete, broken, stored_ms in entries:
            self.last_entry = now
            if seq <= self.cursor:
                if complete and seq < self.cursor:
                    raise StreamNotFound(
                        f"run {self.run_id!r}: its stream ends at seq {seq}, before the cursor "
                        f"{self.cursor}: it was lost (expired, evicted or deleted) and written again"
                    )
                if complete:  # the run ended at the cursor
                    self.finished = True
                    break
                continue
            if seq > self.cursor + 1 and not broken:
                raise StreamTrimmed(
                    f"run {self.run_id!r}: chunks {self.cursor + 1}..{seq - 1} were trimmed "
                    "from the stream (MAXLEN) before they were read"
                )
            self.cursor = seq
            if data:
                patched = self.codec.patch_nulls(data, self.run_id, seq)
                out.append(self.codec.set_event_id(patched, str(seq)) if self.stamp_ids else patched)
                if stored_ms is not None:
                    lags.append(max(wall_ms - stored_ms, 0.0) / 1000)
            if complete:
                self.finished = True
                break
        if out:
            self.last_sent = now
            self.counters.delivered(len(out), lags)
        if self.finished:
            return out
        if state == SubState.PENDING:
            self.last_entry = now  # the idle clock starts once Redis has answered
        elif state == SubState.DONE:
            self.finished = True
        elif state == SubState.DOWN:
            raise RedisUnavailable(f"run {self.run_id!r}: Redis unreachable for {self.retry_timeout}s")
        elif state == SubState.GONE:
            raise StreamNotFound(
                f"run {self.run_id!r}: its stream expired or was deleted while being read "
                "(or holds nothing up to the cursor: it was lost and written again)"
            )
        elif state == SubState.MISSING and now >= self.missing_deadline:
            raise StreamNotFound(f"run {self.run_id!r}: no stream appeared within the missing timeout")
        elif state == SubState.OK and now - self.last_entry >= self.idle_timeout:
            raise StreamStalled(f"run {self.run_id!r}: no new chunk for {self.idle_timeout}s (is its writer gone?)")
        elif not out and self.ping_interval is not None and now - self.last_sent >= self.ping_interval:
            self.last_sent = now
            out.append(PING)
        return out

    def timeout(self, state: SubState) -> float:
        """How long to wait for the next entry before looking at the clocks again."""
        now = time.monotonic()
        if state == SubState.MISSING:
            left = self.missing_deadline - now
        elif state == SubState.PENDING:  # not reached Redis yet: the hub says when it gives up
            left = self.retry_timeout
        else:
            left = self.last_entry + self.idle_timeout - now
        if self.ping_interval is not None:
            left = min(left, self.last_sent + self.ping_interval - now)
        return min(max(left, 0.0), NO_LIMIT)  # "no limit" still waits a finite time


class StreamReader:
    """Reads runs' SSE chunks from Redis, pushed, never polled.

    Make one per process and share it: all its reads share one hub, i.e. two
    Redis connections, however many readers: one range-reads, one listens
    for the notices this library's writers publish per stored batch
    (``delivery="notify"``, the default).  A stream written by anything else
    (no ``writer`` field), or not written yet, is followed by a blocking
    ``XREAD`` on a third; ``delivery="xread"`` follows every stream that way
    (the way before notices: its cost grows with the streams followed).
    ``keys`` must match the writer's.  On a cluster (``cluster=True``, or a
    ``RedisCluster`` client) the hub listens (and blocks) once per slot group
    that has readers: one connection per ``ClusterKeyLayout`` bucket (the
    default layout there), plus the query client's connections to the nodes.
    """

    def __init__(
        self,
        redis: Any = "redis://127.0.0.1:6379/0",
        *,
        keys: _keys.Layout | str | None = None,
        batch_size: int = 100,
        idle_timeout: float = 600.0,
        missing_timeout: float = 30.0,
        ping_interval: float | None = None,
        queue_size: int = 256,
        check_interval: float = 10.0,
        retry_timeout: float = 30.0,
        delivery: str = "notify",
        cluster: bool | None = None,
        backend: str | None = None,
    ) -> None:
        self.options: ReaderOptions = ReaderOptions.checked(
            batch_size=batch_size,
            queue_size=queue_size,
            idle_timeout=idle_timeout,
            missing_timeout=missing_timeout,
            ping_interval=ping_interval,
            check_interval=check_interval,
            retry_timeout=retry_timeout,
            delivery=delivery,
        )
        bound = bind(redis, cluster=cluster, keys=keys, backend=backend)
        self._url, self._key, self._module = bound.url, bound.key, bound.module
        self.cluster: bool = bound.cluster
        self.backend: str = bound.backend
        self.idle_timeout: float = self.options.idle_timeout
        self.missing_timeout: float = self.options.missing_timeout
        self.ping_interval: float | None = self.options.ping_interval
        self.retry_timeout: float = self.options.retry_timeout
        self._hub_options = self.options.hub(self.cluster)
        self._hub = _fork.PerProcess(self._build_hub)
        self._closed = False
        self._counters = _Counters()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({redact(self._url)!r}, backend={self.backend!r})"

    def _build_hub(self) -> ReaderHub:
        hub: ReaderHub = self._module.ReaderHub(self._url, **self._hub_options)
        _events.watch(self)  # its reconnects are logged even if nothing here is called again
        return hub

    def _log_events(self) -> None:
        """Log the hub's reconnects since the last drain (WARNING)."""
        if not self._closed:
            _events.log(log, self._hub.built())

    @property
    def hub(self) -> ReaderHub:
        """This process's hub; a forked child builds its own on first use."""
        if self._closed:
            raise SSERedisError(f"this {type(self).__name__} is closed")
        hub: ReaderHub = self._hub.get()  # PerProcess holds what its builder made (untyped)
        return hub

    def read(
        self,
        run_id: str,
        starting_after: int | None = None,
        *,
        last_event_id: str | None = None,
        stamp_ids: bool = True,
        idle_timeout: float | None = None,
        missing_timeout: float | None = None,
    ) -> Iterator[str]:
        """The run's chunks after the cursor, nulls patched and ``id: <seq>``
        set (unless ``stamp_ids=False``), ending after its terminal chunk.
        Raises ``StreamNotFound``, ``StreamStalled``, ``StreamTrimmed`` or
        ``RedisUnavailable`` instead of waiting forever; the timeouts default
        to the reader's."""
        return self._read(
            self._key(run_id),
            self._follow(run_id, starting_after, last_event_id, stamp_ids, idle_timeout, missing_timeout),
        )

    def _follow(
        self,
        run_id: str,
        starting_after: int | None,
        last_event_id: str | None,
        stamp_ids: bool,
        idle_timeout: float | None,
        missing_timeout: float | None,
    ) -> _Follow:
        if idle_timeout is not None:
            idle_timeout = seconds("idle_timeout", idle_timeout, unlimited=True)
        if missing_timeout is not None:
            missing_timeout = seconds("missing_timeout", missing_timeout, unlimited=True)
        cursor = cursor_of(starting_after, last_event_id)
        return _Follow(
            self, run_id, cursor, stamp_ids=stamp_ids, idle_timeout=idle_timeout, missing_timeout=missing_timeout
        )

    def _read(self, key: str, follow: _Follow) -> Iterator[str]:
        hub = self.hub
        sid = hub.subscribe(key, follow.cursor, None)
        self._counters.started()
        failed = True
        try:
            state = SubState.OK
            while not follow.finished:
                entries, state = hub.wait(sid, follow.timeout(state))
                yield from follow.chunks(entries, state)
            failed = False
        except GeneratorExit:
            failed = False  # the caller stopped reading: not an error
            raise
        finally:
            self._counters.ended(failed)
            hub.unsubscribe(sid)

    def read_events(
        self,
        run_id: str,
        starting_after: int | None = None,
        *,
        last_event_id: str | None = None,
        idle_timeout: float | None = None,
        missing_timeout: float | None = None,
    ) -> Iterator[SSEEvent]:
        """As ``read``, one item per stored SSE event: a dict with ``id`` (its
        chunk's seq id, the terminal's included), ``data``, and ``event`` and
        ``retry`` when set, which sse-starlette's ``EventSourceResponse``
        sends as it is.  Pings are left to it."""
        for chunk in self.read(
            run_id,
            starting_after,
            last_event_id=last_event_id,
            idle_timeout=idle_timeout,
            missing_timeout=missing_timeout,
        ):
            yield from events_of(self._module, chunk)

    def stats(self) -> dict[str, float]:
        """Counters of this reader in this process (the same keys on both backends):

        - ``reads``: reads started; ``active_reads``: reads not over yet;
          ``errors``: reads that ended with an error (a reader that stops
          iterating early is not one);
        - ``chunks``: chunks made ready for reads (counted per batch taken from
          the hub, not per ``next``: a read stopped early counts the rest of
          its last batch too; pings not counted);
        - ``subscriptions``: the hub's subscriptions now (one per active read);
        - ``catchup_reads``: ``XRANGE`` rounds that caught a read up (resume, a
          new read, a read whose queue filled), ``xreads``: blocking
          ``XREAD`` calls, ``reconnects``: links to Redis made again after a
          failure, ``connections``: the hub's connections now;
        - ``lag_max_s``, ``lag_p99_s`` (floats, seconds): over the latest
          ``LAG_WINDOW`` (1,024) chunks handed to reads that carry a stored
          ``timestamp`` (ms since the epoch, written with each chunk), the
          largest and the 99th percentile (nearest rank) of the wall-clock
          time from that timestamp to when the read took the chunk's batch from
          the hub to yield it; negative (clock skew) counts as 0; 0.0 while
          the window is empty.  Writer and reader clocks must agree for this to
          mean anything across hosts.

        Reading the stats logs the hub's reconnects since the last drain
        (WARNING, ``sse_redis.reader``).

        No I/O: the hub's numbers are read under its lock.
        """
        hub = None if self._closed else self._hub.built()
        _events.log(log, hub)
        return {**self._counters.snapshot(), **_hub_stats(hub)}

    def close(self) -> None:
        """Stop the hub; reads still running end with an error."""
        self._closed = True
        hub = self._hub.take()
        if hub is not None:
            _events.log(log, hub)
            hub.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _LoopWaker:
    """Wakes one event loop from the hub's threads: the hub writes a byte to a
    socket pair the loop watches, so no GIL switch interval is waited on."""

    def __init__(self, hub: ReaderHub, loop: asyncio.AbstractEventLoop) -> None:
        self.hub = hub
        self.loop = loop
        self._recv, self._send = socket.socketpair()
        self._recv.setblocking(False)
        self._send.setblocking(False)
        self.id = hub.add_waker(self._send.fileno())
        self.waiting: dict[int, asyncio.Future[None]] = {}
        loop.add_reader(self._recv.fileno(), self._on_ready)

    def _on_ready(self) -> None:
        try:
            while self._recv.recv(4096):
                pass
        except BlockingIOError:
            pass
        for sid in self.hub.take_ready(self.id):
            future = self.waiting.pop(sid, None)
            if future is not None and not future.done():
                future.set_result(None)

    def arm(self, sid: int) -> asyncio.Future[None]:
        future = self.loop.create_future()
        self.waiting[sid] = future
        return future

    def wake_all(self) -> None:
        """Wake every read of this loop (they then find the hub closed)."""
        for future in self.waiting.values():
            if not future.done():
                future.set_result(None)
        self.waiting.clear()

    def release(self) -> None:
        """Unregister from the hub and close the sockets (the loop is gone or done with us)."""
        self.hub.remove_waker(self.id)
        self._recv.close()
        self._send.close()

    def close(self) -> None:
        self.wake_all()
        self.loop.remove_reader(self._recv.fileno())
        self.release()


class AsyncStreamReader:
    """``StreamReader`` for asyncio: ``async for chunk in reader.read(run)``.

    Waiting costs no thread: each event loop gets one socket pair that the
    hub writes to when a subscription of that loop has entries.  Leaving the
    ``async for`` (a client disconnect) unsubscribes at once.
    """

    @same_parameters(StreamReader.__init__)
    def __init__(self, *args: Any, **options: Any) -> None:
        # StreamReader's parameters exactly (see same_parameters); it checks them.
        self.sync: StreamReader = StreamReader(*args, **options)
        self._wakers: dict[asyncio.AbstractEventLoop, _LoopWaker] = {}

    def __repr__(self) -> str:
        return f"Async{self.sync!r}"

    @property
    def backend(self) -> str:
        """``"rust"`` or ``"python"``: the engine behind this reader."""
        return self.sync.backend

    def _waker(self) -> _LoopWaker:
        loop = asyncio.get_running_loop()
        waker = self._wakers.get(loop)
        if waker is None or waker.hub is not self.sync.hub:
            for old_loop, old in list(self._wakers.items()):
                if old_loop.is_closed():  # asyncio.run() ended that loop: free its sockets
                    old.release()
                    del self._wakers[old_loop]
            waker = self._wakers[loop] = _LoopWaker(self.sync.hub, loop)
        return waker

    def read(
        self,
        run_id: str,
        starting_after: int | None = None,
        *,
        last_event_id: str | None = None,
        stamp_ids: bool = True,
        idle_timeout: float | None = None,
        missing_timeout: float | None = None,
    ) -> AsyncIterator[str]:
        """As ``StreamReader.read``, for ``async for``."""
        follow = self.sync._follow(run_id, starting_after, last_event_id, stamp_ids, idle_timeout, missing_timeout)
        return self._read(self.sync._key(run_id), follow)

    async def _read(self, key: str, follow: _Follow) -> AsyncIterator[str]:
        waker = self._waker()
        hub = waker.hub
        sid = hub.subscribe(key, follow.cursor, waker.id)
        deadline = _Deadline(waker.loop)
        counters = self.sync._counters
        counters.started()
        failed = True
        try:
            while not follow.finished:
                entries, state = hub.poll(sid)
                if not entries and state in (SubState.OK, SubState.MISSING, SubState.PENDING):
                    # Armed after the poll: a push since then is in the waker's
                    # ready list (the poll reset the notice), so it wakes us.
                    await deadline.wait(waker.arm(sid), follow.timeout(state))
                    entries, state = hub.poll(sid)
                for chunk in follow.chunks(entries, state):
                    yield chunk
            failed = False
        except (GeneratorExit, asyncio.CancelledError):
            failed = False  # the caller stopped reading (a client went away): not an error
            raise
        finally:
            counters.ended(failed)
            deadline.cancel()
            waker.waiting.pop(sid, None)
            hub.unsubscribe(sid)

    async def read_events(
        self,
        run_id: str,
        starting_after: int | None = None,
        *,
        last_event_id: str | None = None,
        idle_timeout: float | None = None,
        missing_timeout: float | None = None,
    ) -> AsyncIterator[SSEEvent]:
        """As ``StreamReader.read_events``, for ``async for`` (and for
        ``EventSourceResponse(reader.read_events(run_id))``)."""
        chunks = self.read(
            run_id,
            starting_after,
            last_event_id=last_event_id,
            idle_timeout=idle_timeout,
            missing_timeout=missing_timeout,
        )
        try:
            async for chunk in chunks:
                for event in events_of(self.sync._module, chunk):
                    yield event
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]

    def stats(self) -> dict[str, float]:
        """``StreamReader.stats`` (no I/O, hence not a coroutine)."""
        return self.sync.stats()

    def close(self) -> None:
        """Stop the hub and the event loops' wakers; reads still running end
        with ``SSERedisError``.  Callable from any thread, in or out of a loop."""
        self.sync.close()
        for waker in list(self._wakers.values()):
            if waker.loop.is_closed():
                continue
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is waker.loop:
                waker.close()
            else:
                waker.loop.call_soon_threadsafe(waker.close)
        self._wakers.clear()

    async def aclose(self) -> None:
        """``close``, redis.asyncio's way: ``await reader.aclose()``, or
        ``async with AsyncStreamReader(...) as reader:``.  Idempotent."""
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class _Deadline:
    """One timer per read, moved only when a wait must end sooner than it
    would fire: a read woken by chunks (the common case) costs no timer
    churn.  A timer that fires early just makes the read look at its clocks
    and wait again."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.handle: asyncio.TimerHandle | None = None
        self.future: asyncio.Future[None] | None = None

    def wait(self, future: asyncio.Future[None], timeout: float) -> asyncio.Future[None]:
        """``future``, resolved at the latest ``timeout`` seconds from now."""
        when = self.loop.time() + timeout
        if self.handle is None or when < self.handle.when():
            if self.handle is not None:
                self.handle.cancel()
            self.handle = self.loop.call_at(when, self._fire)
        self.future = future
        return future

    def _fire(self) -> None:
        self.handle = None
        if self.future is not None and not self.future.done():
            self.future.set_result(None)

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
