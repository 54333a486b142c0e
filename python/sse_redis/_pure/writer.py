"""The writer engine, pure-Python twin of ``src/io/writer.rs``.

One background thread owns the pipeline connection.  ``write`` only queues a
chunk and wakes it; the thread sends everything queued in one pipeline of
``append.lua`` calls (one per run per ``flush_size`` chunks) and, while that
pipeline is in flight, new chunks gather for the next one (group commit).  A
single sender means the pipelines of one run never overlap, so chunks land in
seq order; the script makes every batch all-or-nothing and fenced, so a retry
after a lost reply never stores a chunk twice.

The same thread opens runs (reads each new run's top in its pipeline), so a
caller waits for an answer on a condition, never on a socket, and its own
timeout always holds.  A seq id handed out is never given again: a run whose
batch failed stays broken for this writer (its later writes raise the error)
and only its error terminal may still be stored.
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from importlib import resources
from typing import Any, TypeVar, cast

import redis

from ..errors import (
    RedisUnavailable,
    RunCancelled,
    RunClosedError,
    SSERedisError,
    StaleWriterError,
    WriteTimeout,
)
from . import links
from .links import LINK_ERRORS

APPEND_SCRIPT = resources.files("sse_redis").joinpath("append.lua").read_text()
# Bounds on chunks per pipeline and per script call, so that one round trip,
# and one script's time on the server, stay short.
MAX_PIPELINE_CHUNKS = 2048
MAX_CALL_CHUNKS = 512
# A chunk above the lowest proto-max-bulk-len a server accepts (1 MiB) may be
# refused, and the server then drops the connection: such a chunk goes in a
# pipeline of its own, so a refusal fails its run only.
LARGE_CHUNK_BYTES = 1 << 20
# OOM: at maxmemory with noeviction, writes are refused until memory frees up;
# nothing of the refused script was stored, so it is retried like the rest.
RETRYABLE = (*LINK_ERRORS, redis.exceptions.OutOfMemoryError)

# What a queued chunk is (the Rust core's ``Kind``).
CHUNK, TERMINAL, ERROR_TERMINAL = "chunk", "terminal", "error"

T = TypeVar("T")


def read_top(client: links.Client, key: str) -> tuple[int, bool]:
    """``(seq_id, complete)`` of the stream's last entry, ``(0, False)`` if none."""
    return _top(links.xrevrange_top(client, key))[:2]


def _top(entries: list[links.RawEntry]) -> tuple[int, bool, bool]:
    """``(seq_id, complete, cancelled)`` of the stream's last entry."""
    if not entries:
        return 0, False, False
    fields = entries[0][1]
    return int(fields.get(b"seq_id", 0)), fields.get(b"complete") == b"true", fields.get(b"cancelled") == b"true"


def status_key(key: str) -> str:
    """The run's status key (``sse_redis.keys.status_key``, ``append.lua``'s ``status_of``)."""
    open_ = key.find("{")
    close = key.find("}", open_ + 1) if open_ >= 0 else -1
    return f"{key}:status" if close > open_ + 1 else f"{{{key}}}:status"


def cancelled_error(key: str) -> RunCancelled:
    return RunCancelled(f"run stream {key!r} was cancelled")


# redis-py before 5.3 needs a command name to hand out a connection; later
# ones warn when given one.
_POOL_WANTS_COMMAND = tuple(int(p) for p in redis.__version__.split(".")[:2]) < (5, 3)


def _checkout(pool: Any) -> Any:
    return pool.get_connection("EVALSHA") if _POOL_WANTS_COMMAND else pool.get_connection()


class _Chunk:
    __slots__ = ("complete", "data", "seq", "timestamp")

    def __init__(self, seq: int, data: str, complete: bool) -> None:
        self.seq = seq
        self.data = data
        self.timestamp = int(time.time() * 1000)
        self.complete = complete

    @property
    def large(self) -> bool:
        return len(self.data) > LARGE_CHUNK_BYTES // 4 and len(self.data.encode()) > LARGE_CHUNK_BYTES


class _Run:
    """What the engine knows of one open run."""

    __slots__ = (
        "closing",
        "ending",
        "error",
        "in_flight",
        "key",
        "next_seq",
        "opened",
        "queue",
        "ready",
        "stored",
        "trusted_on",
    )

    def __init__(self, key: str, top: int) -> None:
        self.key = key
        self.queue: deque[_Chunk] = deque()
        self.next_seq = top + 1
        self.stored = top
        # The top found when the run was opened: a seq above it is one this
        # writer handed out, and a batch after it must follow its own entry.
        self.opened = top
        self.closing = False  # a terminal chunk is queued: no more writes
        # Set when a batch failed: the run is broken for this writer for good.
        self.error: BaseException | None = None
        self.ending = False  # the queued terminal is the error terminal of a broken run
        self.ready = False  # listed in the engine's ready queue
        self.in_flight = 0  # chunks in the pipeline being sent
        # The sender connection that stored its last batch: the next batch sent
        # on it may skip reading the stream's top (see append.lua, trusted).
        self.trusted_on: int | None = None

    def must_wait(self, pending: int, max_pending: int, flush_size: int) -> bool:
        """A write would wait for room: the buffer is full and this run already
        has its share pending (a batch, or the whole buffer if smaller).  A run
        with less never waits, so one busy run cannot hold every other run's
        chunks back."""
        mine = len(self.queue) + self.in_flight
        return self.error is None and pending >= max_pending and mine >= min(flush_size, max_pending)


class _Opening:
    """A run being opened by the sender, and the callers waiting for it."""

    __slots__ = ("failed", "waiting")

    def __init__(self) -> None:
        self.waiting = 0
        self.failed: BaseException | None = None


class WriterEngine:
    def __init__(
        self,
        url: str,
        *,
        flush_size: int = 50,
        ttl: int | None = 10800,
        max_len: int | None = 10000,
        max_pending: int = 10000,
        retry_timeout: float = 30.0,
        connect_timeout: float = 5.0,
        socket_timeout: float = 10.0,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
        cluster: bool = False,
    ) -> None:
        # The sender has a client of its own: WAIT counts the writes of its connection.
        self._client = links.connect(url, connect_timeout, socket_timeout, cluster=cluster)
        self._sender_client = links.connect(url, connect_timeout, socket_timeout, cluster=cluster)
        if isinstance(self._sender_client, redis.Redis):
            links.number_connections(self._sender_client)
        self._url, self._connect_timeout, self._socket_timeout = url, connect_timeout, socket_timeout
        self._stored_on = 0  # the serial of the connection the last pipeline landed on
        self._cluster = cluster
        self._wait_replicas = wait_replicas
        self._wait_timeout_ms = max(1, int(wait_timeout * 1000))
        self._flush_size = flush_size
        self._ttl = b"" if ttl is None else str(ttl).encode()
        self._max_len = b"" if max_len is None else str(max_len).encode()
        self._max_pending = max_pending
        self._retry_timeout = retry_timeout
        # 128 bits from the OS: unique across processes, forks and hosts (a
        # forked child builds its own engine, so draws its own id).
        self._writer_id = secrets.token_hex(16).encode()
        self._sha: str | None = None

        self._cv = threading.Condition(threading.Lock())
        self._runs: dict[str, _Run] = {}
        self._ready: deque[_Run] = deque()
        self._opening: dict[str, _Opening] = {}
        # Terminals that found their run completed by another writer, so
        # ``complete`` can say it was a no-op (the latest few only: bounded).
        self._superseded: deque[tuple[str, int]] = deque(maxlen=1024)
        # Runs a cancel ended under this writer: (key, first seq refused), so
        # ``complete`` raises RunCancelled rather than returning (bounded too).
        self._cancelled: deque[tuple[str, int]] = deque(maxlen=1024)
        self._to_open: list[str] = []
        self._pending = 0  # queued or in flight, across all runs
        self._failed: list[_Run] = []  # runs whose error no one has seen yet
        self._closed = False
        self._stats = {"chunks": 0, "batches": 0, "pipelines": 0, "retries": 0, "errors": 0}
        self._events = links.Events()  # retries and give-ups with their cause, until the face logs them
        self._thread = threading.Thread(target=self._sender, name="sse-redis-writer", daemon=True)
        self._thread.start()

    # -- the caller's side ---------------------------------------------------

    def _control(self, command: Callable[[links.Client], T]) -> T:
        """Run an (idempotent) command, retrying a broken link until the deadline."""
        deadline = time.monotonic() + self._retry_timeout
        delay = 0.01
        while True:
            try:
                return command(self._client)
            except RETRYABLE as exc:
                if time.monotonic() + delay > deadline or self._closed:
                    raise RedisUnavailable(f"Redis unreachable: {self._link_error_text(exc)}") from None
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
            except redis.RedisError as exc:
                raise SSERedisError(f"Redis refused a command: {exc}") from None

    def _opened(self, key: str, deadline: float | None, timeout: float | None) -> None:
        """Have the sender learn where the run stands in Redis (first write
        only) and wait for it, at most ``timeout``.  Caller holds the lock."""
        if key in self._runs:
            return
        opening = self._opening.get(key)
        if opening is None:
            opening = self._opening[key] = _Opening()
            self._to_open.append(key)
            self._cv.notify_all()
        opening.waiting += 1
        try:
            while True:
                self._raise_closed()
                if key in self._runs:
                    return
                if opening.failed is not None:
                    raise opening.failed
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise WriteTimeout(
                        f"run stream {key!r} could not be opened within {_shown(timeout)}: Redis did not answer"
                    )
                self._cv.wait(left)
        finally:
            opening.waiting -= 1
            if opening.waiting == 0 and opening.failed is not None and self._opening.get(key) is opening:
                del self._opening[key]

    def write(self, key: str, data: str, complete: bool, timeout: float | None = None) -> int:
        """Queue one chunk and return its seq id; waits for the run to open and
        for buffer space, up to ``timeout`` in all."""
        return self._write(key, data, TERMINAL if complete else CHUNK, timeout)

    def fail(self, key: str, data: str, timeout: float | None = None) -> int:
        """Queue the run's error terminal, which may end a broken run too."""
        return self._write(key, data, ERROR_TERMINAL, timeout)

    def _write(self, key: str, data: str, kind: str, timeout: float | None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            seq = self._try_enqueue(key, data, kind)
            if seq is not None:
                return seq
            self._writable(key, deadline, timeout)

    def wait_writable(self, key: str, timeout: float | None = None) -> None:
        """Wait until a write to ``key`` would not wait (the run is open and
        there is room, or the write would fail at once), at most ``timeout``;
        queues nothing."""
        self._writable(key, None if timeout is None else time.monotonic() + timeout, timeout)

    def _writable(self, key: str, deadline: float | None, timeout: float | None) -> None:
        with self._cv:
            self._opened(key, deadline, timeout)
            while True:
                self._raise_closed()
                run = self._runs.get(key)
                if run is None or not run.must_wait(self._pending, self._max_pending, self._flush_size):
                    return  # (finished or deleted meanwhile: the write re-opens it)
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise WriteTimeout(f"{self._pending} chunks waiting for Redis; no room within {_shown(timeout)}")
                self._cv.wait(left)

    def try_write(self, key: str, data: str, complete: bool, error: bool = False) -> int | None:
        """``write`` that never waits: ``None`` when the run is not open yet or the buffer is full."""
        return self._try_enqueue(key, data, ERROR_TERMINAL if error else TERMINAL if complete else CHUNK)

    def _try_enqueue(self, key: str, data: str, kind: str) -> int | None:
        with self._cv:
            self._raise_closed()
            run = self._runs.get(key)
            if run is None:
                return None
            if run.error is not None:
                if kind != ERROR_TERMINAL or run.closing:
                    self._report(run)
                run.ending = True
            elif run.closing:
                raise RunClosedError(f"run stream {run.key!r} is already complete")
            elif run.must_wait(self._pending, self._max_pending, self._flush_size):
                return None
            complete = kind != CHUNK
            chunk = _Chunk(run.next_seq, data, complete)
            run.next_seq += 1
            run.closing = complete
            run.queue.append(chunk)
            self._pending += 1
            if not run.ready:
                run.ready = True
                self._ready.append(run)
                self._cv.notify_all()
            return chunk.seq

    def flush(self, timeout: float | None = None, key: str | None = None) -> None:
        """Return once every chunk queued so far (for ``key``, or all runs) is
        stored.  For one run, raise its error whenever it is broken; for all,
        raise what failed since the last flush, each error once."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            if key is None:
                runs = list(self._runs.values())
            else:
                found = self._runs.get(key)
                runs = [] if found is None else [found]
            for run in runs:
                target = run.next_seq - 1
                # A broken run's error terminal is still awaited: it may yet be stored.
                while self._runs.get(run.key) is run and run.stored < target and (run.error is None or run.ending):
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise WriteTimeout(f"flush did not finish within {_shown(timeout)}")
                    self._cv.wait(left)
            if key is None:
                if self._failed:
                    self._report(self._failed[0])
            elif runs and self._runs.get(key) is runs[0] and runs[0].error is not None:
                self._report(runs[0])

    def _report(self, run: _Run) -> None:
        """Raise the broken run's error, now seen by the caller (so a flush of
        every run does not report it again); the run stays broken.  Caller
        holds the lock."""
        if run in self._failed:
            self._failed.remove(run)
        error = run.error
        assert error is not None
        raise type(error)(*error.args) from None  # a fresh one: each raise would grow its traceback

    def _raise_closed(self) -> None:
        if self._closed:
            raise SSERedisError("the writer is closed")

    def superseded(self, key: str, seq: int) -> bool:
        """Whether the terminal queued as ``seq`` found the run already
        completed by another writer (so it stored nothing); answered once.
        ``RunCancelled`` when a cancel ended the run before it."""
        with self._cv:
            cancel = next((c for c in self._cancelled if c[0] == key and c[1] <= seq), None)
            if cancel is not None:
                self._cancelled.remove(cancel)
                raise cancelled_error(key)
            try:
                self._superseded.remove((key, seq))
            except ValueError:
                return False
            return True

    # -- run control (one script call each, on the control connection) --------

    def _control_script(self, key: str, writer: bytes, mode: bytes, data: str = "") -> list[Any]:
        """One ``append.lua`` call in a run control mode; its one batch reply."""
        notice = b"s" if self._cluster else b"p"
        complete = b"1" if mode == b"c" else b""
        args = (writer, self._max_len, self._ttl, notice, 0, 1, mode, data, int(time.time() * 1000), complete)

        def call(client: links.Client) -> Any:
            if self._sha is None:
                self._sha = client.script_load(APPEND_SCRIPT)
            try:
                return client.evalsha(self._sha, 1, key, *args)
            except redis.exceptions.NoScriptError:
                self._sha = client.script_load(APPEND_SCRIPT)
                return client.evalsha(self._sha, 1, key, *args)

        reply = self._control(call)
        if not (isinstance(reply, list) and len(reply) == 1 and isinstance(reply[0], list) and reply[0]):
            raise _unexpected(reply)
        if reply[0][0] == b"wrongtype":
            raise SSERedisError(f"{key!r} holds a value that is not a stream")
        batch: list[Any] = reply[0]
        return batch

    def cancel(self, key: str, data: str) -> int | None:
        """Store ``data`` as the run's cancel terminal after whatever its top
        is; its seq, or ``None`` when the run already ended or is unknown.
        A token of its own per call: a retry after a lost reply finds its
        own terminal (``dup``) and still answers with its seq."""
        status, top = self._control_script(key, secrets.token_hex(16).encode(), b"c", data)[:2]
        return int(top) if status in (b"ok", b"dup") else None

    def start(self, key: str) -> bool:
        """Register the run as running; ``False`` when it already ended."""
        return bool(self._control_script(key, self._writer_id, b"s")[0] == b"ok")

    def status(self, key: str) -> tuple[str, int, str | None, int | None, int | None] | None:
        """``(state, last_seq, stop_reason, started_at ms, updated_at ms)``, or
        ``None`` when the run has no status and no stream."""
        reply = self._control_script(key, self._writer_id, b"q")
        if reply[0] != b"ok":
            return None
        state, last_seq, reason, started, updated = reply[1:6]
        return state.decode(), int(last_seq), reason.decode() or None, _ms(started), _ms(updated)

    def last_seq(self, key: str) -> int:
        return self._control(lambda client: read_top(client, key))[0]

    def delete(self, key: str) -> None:
        """Delete the run's stream and forget the run (a broken one too), once its batch in flight
        (if any) has landed, so nothing of it is written after the DEL."""
        with self._cv:
            run = self._runs.get(key)
            if run is not None:
                self._pending -= len(run.queue)
                run.queue.clear()
                run.closing = True  # no new writes while it goes
                run.ending = False
                while self._runs.get(key) is run and run.in_flight:
                    self._cv.wait()
                if self._runs.get(key) is run:
                    del self._runs[key]
                    if run in self._failed:
                        self._failed.remove(run)
                self._cv.notify_all()
        self._control(lambda client: client.delete(key))
        # Its status too; a user without rights on it (least privilege) keeps it.
        try:
            self._control(lambda client: client.delete(status_key(key)))
        except SSERedisError as exc:
            if "NOPERM" not in str(exc) and "permission" not in str(exc).lower():
                raise

    def stats(self) -> dict[str, int]:
        with self._cv:
            return dict(self._stats, pending=self._pending, runs=len(self._runs))

    def take_events(self) -> list[tuple[str, str]]:
        """The retries and give-ups since the last call, oldest first, as
        ``(kind, cause)``: ``retry``, ``gave_up``, ``dropped`` (events not kept)."""
        with self._cv:
            return self._events.take()

    def close(self, timeout: float | None = None) -> None:
        """Flush, stop the sender thread, and drop the connection."""
        with self._cv:
            if self._closed:
                return
        try:
            self.flush(timeout)
        finally:
            with self._cv:
                self._closed = True
                self._cv.notify_all()
            # Not joined: a sender stuck on a dead link must not hold up close
            # (it gives up at its next retry, which sees ``_closed``).
            self._client.close()

    # -- the sender thread ----------------------------------------------------

    def _sender(self) -> None:
        while True:
            with self._cv:
                while not self._ready and not self._to_open and not self._closed:
                    self._cv.wait()
                if self._closed:
                    self._fail_opens(self._to_open, SSERedisError("the writer is closed"))
                    self._to_open = []
                    self._cv.notify_all()
                    if not self._ready:
                        self._sender_client.close()
                        return
                opens, self._to_open = self._to_open, []
                batches = self._take_batches()
            if self._cluster:
                # One script call covers one slot: gather each slot's batches
                # (a stable sort keeps every run's batches in seq order).
                batches.sort(key=lambda batch: links.slot_group(batch[0].key))
            tops, outcomes = self._send_all(opens, batches)
            with self._cv:
                self._apply_opens(opens, tops)
                self._apply(batches, outcomes)
                self._cv.notify_all()

    def _take_batches(self) -> list[tuple[_Run, list[_Chunk]]]:
        """What is ready, taken fairly: one batch of at most ``flush_size`` per
        ready run per turn, a run with more queued going to the back of the
        line, so a busy run delays another run's chunk by one pipeline at most.
        A large chunk is a batch of its own.  Caller holds the lock."""
        batches: list[tuple[_Run, list[_Chunk]]] = []
        room = MAX_PIPELINE_CHUNKS
        while self._ready and room > 0:
            run = self._ready.popleft()
            take = 0
            for chunk in itertools.islice(run.queue, min(self._flush_size, room)):
                if chunk.large and take:
                    break
                take += 1
                if chunk.large:
                    break
            if take:
                run.in_flight += take
                batches.append((run, [run.queue.popleft() for _ in range(take)]))
                room -= take
            if run.queue:
                self._ready.append(run)
            else:
                run.ready = False
        return batches

    def _send_all(
        self, opens: list[str], batches: list[tuple[_Run, list[_Chunk]]]
    ) -> tuple[list[object], list[object]]:
        """The opens and the batches without a large chunk in one pipeline,
        then each batch holding one on its own (in order, so each run's
        batches still land in seq order)."""
        tops: list[object] = []
        outcomes: list[object] = []
        start = 0
        while start < len(batches) or opens:
            large = start < len(batches) and _is_large(batches[start])
            if large and opens:
                end = start  # the opens first, on their own
            elif large:
                end = start + 1
            else:
                end = next((i for i in range(start, len(batches)) if _is_large(batches[i])), len(batches))
            replies = self._send(opens, batches[start:end], isolated=large and not opens)
            if opens:
                tops, opens = replies[: len(opens)], []
                replies = replies[len(tops) :]
            outcomes += replies
            start = end
        return tops, outcomes

    def _send(self, opens: list[str], batches: list[tuple[_Run, list[_Chunk]]], isolated: bool) -> list[object]:
        """One pipeline; retried (safely, the script spots its own batches)
        until the deadline.  ``isolated``: one batch with a large chunk, which
        a server may refuse by dropping the connection."""
        deadline = time.monotonic() + self._retry_timeout
        delay = 0.01
        refusals = 0
        count = len(opens) + len(batches)
        while True:
            try:
                replies = self._pipeline(opens, batches)
                if any(_is_noscript(r) for r in replies):
                    self._sha = None
                    replies = self._pipeline(opens, batches)
                # "Not now" (a restarted server loading, or out of memory): the
                # whole pipeline again, which the script makes safe; at the
                # deadline, what did land counts and the rest fails.
                transient = next((r for r in replies if isinstance(r, RETRYABLE)), None)
                if transient is None:
                    if isolated and isinstance(replies[0], redis.RedisError):
                        # The server answered the large chunk with an error
                        # (e.g. "invalid bulk length") instead of dropping the link.
                        return [_refused_chunk(batches[0], replies[0])]
                    return replies
                if time.monotonic() + delay > deadline or self._closed:
                    return [self._gave_up(r) if isinstance(r, RETRYABLE) else r for r in replies]
                raise transient
            except RETRYABLE as exc:
                self._count("retries")
                # The server dropping the link while a large chunk went, twice,
                # and answering a fresh connection at once: it refused the chunk.
                if isolated and isinstance(exc, (redis.ConnectionError, OSError)) and self._server_answers():
                    refusals += 1
                    if refusals == 2:
                        return [_refused_chunk(batches[0], exc)]
                if time.monotonic() + delay > deadline or self._closed:
                    return [self._gave_up(exc)] * count
                with self._cv:
                    self._events.push("retry", self._cause(exc))
                    self._cv.wait(delay)  # woken early by close
                delay = min(delay * 2, 1.0)
            except redis.RedisError as exc:
                if isolated:
                    return [_refused_chunk(batches[0], exc)]
                return [SSERedisError(f"Redis refused a batch: {exc}")] * count

    def _cause(self, exc: BaseException) -> str:
        """The failure in the words both engines log it with."""
        if isinstance(exc, redis.TimeoutError) and "replicas" in str(exc):
            return str(exc)
        return links.cause(exc, self._socket_timeout)

    def _gave_up(self, exc: BaseException) -> SSERedisError:
        """The error of a pipeline that failed until the retry deadline (an
        event too, which the face logs)."""
        with self._cv:
            self._events.push("gave_up", self._cause(exc))
        if isinstance(exc, redis.exceptions.OutOfMemoryError):
            return SSERedisError(f"Redis refused writes for {self._retry_timeout}s: out of memory (maxmemory): {exc}")
        return RedisUnavailable(f"Redis unreachable for {self._retry_timeout}s: {self._link_error_text(exc)}")

    def _link_error_text(self, exc: BaseException) -> str:
        """A link error in words: a read the socket timeout ended is a link
        that went silent (the Rust core's words too)."""
        if isinstance(exc, redis.TimeoutError) and "replicas" not in str(exc):
            return f"no reply within {float(self._socket_timeout)}s (timed out)"
        return str(exc)

    def _server_answers(self) -> bool:
        try:
            probe = links.connect(self._url, self._connect_timeout, self._connect_timeout, cluster=self._cluster)
            try:
                return bool(probe.ping())
            finally:
                probe.close()
        except (redis.RedisError, OSError):
            return False

    def _pipeline(self, opens: list[str], batches: list[tuple[_Run, list[_Chunk]]]) -> list[object]:
        """The opens' XREVRANGEs and one script call per group of batches (then
        WAIT, when asked); one reply per open, then one outcome per batch."""
        client = self._sender_client
        if self._sha is None and batches:
            self._sha = client.script_load(APPEND_SCRIPT)  # every master, on a cluster
        groups = _groups(batches, self._cluster)
        connection = _checkout(client.connection_pool) if isinstance(client, redis.Redis) else None
        serial = getattr(connection, "serial", None)
        calls: list[links.Call] = [(key, ("XREVRANGE", key, "+", "-", "COUNT", 1)) for key in opens]
        seen: set[str] = set()
        calls += [self._script_call(group, serial, seen) for group in groups]
        self._count("pipelines")
        replies, servers = links.pipeline(client, calls, connection)
        self._stored_on = serial or 0
        if any(isinstance(r, LINK_ERRORS) for r in replies):
            self._sha = None  # a restarted server (-LOADING) has no scripts either
        if self._wait_replicas and batches and not any(_is_noscript(r) for r in replies):
            self._await_replicas(servers)
        return replies[: len(opens)] + _per_batch(groups, replies[len(opens) :])

    def _script_call(self, group: list[tuple[_Run, list[_Chunk]]], serial: int | None, seen: set[str]) -> links.Call:
        """One EVALSHA of append.lua for a group of batches.

        Trusted: the run's last batch landed on this very connection. Only the
        first batch of a run in a pipeline (``seen``); the script trusts the
        next ones of a call itself. Never on a cluster, where the client may
        move to another node (a promoted replica) without a new connection."""
        keys = [run.key for run, _ in group]
        # The notice per stored batch: SPUBLISH keeps it on the key's shard.
        args: list[object] = [self._writer_id, self._max_len, self._ttl, b"s" if self._cluster else b"p"]
        for run, chunks in group:
            trusted = run.key not in seen and serial is not None and run.trusted_on == serial
            seen.add(run.key)
            after = _after_break(run, chunks)
            # 'o': the seq before the batch is this writer's own, so the
            # stream's top must be its entry (see append.lua).
            mode = b"1" if trusted else b"o" if chunks[0].seq > run.opened + 1 else b""
            args += (chunks[0].seq, len(chunks), mode if after is None else b"a%d" % after)
            for chunk in chunks:
                args += (chunk.data, chunk.timestamp, b"1" if chunk.complete else b"")
        return keys[0], ("EVALSHA", self._sha, len(keys), *keys, *args)

    def _await_replicas(self, servers: Any) -> None:
        """WAIT for the replicas: until they have the batches, they are not
        acknowledged, and the whole pipeline is sent again (the script skips
        what is stored)."""
        acked = links.wait_replicas(servers, self._wait_replicas, self._wait_timeout_ms)
        if acked < self._wait_replicas:
            raise redis.TimeoutError(
                f"{acked} of {self._wait_replicas} replicas acknowledged within {self._wait_timeout_ms} ms"
            )

    def _count(self, name: str, n: int = 1) -> None:
        with self._cv:
            self._stats[name] += n

    def _apply(self, batches: list[tuple[_Run, list[_Chunk]]], outcomes: list[object]) -> None:
        """Record what each batch did; caller holds the lock."""
        # One outcome per batch, whichever way _send got them (a short list
        # would leave batches in flight for good: flush would never return).
        for (run, chunks), outcome in zip(batches, outcomes, strict=True):
            self._pending -= len(chunks)
            self._stats["batches"] += 1
            run.in_flight -= len(chunks)
            after = _after_break(run, chunks)
            if self._runs.get(run.key) is not run or (run.error is not None and after is None):
                continue  # deleted meanwhile, or an earlier batch of it failed
            error = _batch_error(run.key, chunks, outcome, after)
            if isinstance(error, _Cancelled):
                # The run's end, not this writer's error: what is queued is
                # dropped, flush and close do not raise, and its next write
                # or complete raises RunCancelled (the open finds the terminal).
                self._cancelled.append((run.key, chunks[0].seq))
                self._pending -= len(run.queue)
                run.queue.clear()
                del self._runs[run.key]
                if run in self._failed:
                    self._failed.remove(run)
                continue
            if error is None or isinstance(error, _AlreadyComplete):
                # (a second terminal is a no-op, not an error)
                if error is None:
                    self._stats["chunks"] += len(chunks)
                    run.stored = chunks[-1].seq
                    run.trusted_on = self._stored_on or None
                if error is not None:
                    self._superseded.append((run.key, chunks[0].seq))
                if error is not None or chunks[-1].complete:
                    del self._runs[run.key]  # bounded memory: a finished run leaves nothing
                    if run in self._failed:
                        self._failed.remove(run)
                continue
            # The run is broken: what is queued is dropped, and its seq ids are
            # never handed out again (next_seq stays).
            self._stats["errors"] += 1
            run.error = error
            run.ending = run.closing = False  # its error terminal may be tried again
            if run not in self._failed:
                self._failed.append(run)
            self._pending -= len(run.queue)
            run.queue.clear()

    def _apply_opens(self, keys: list[str], tops: list[object]) -> None:
        """Record each opened run's top: a run of its own, or the open's error
        for whoever waits for it.  Caller holds the lock."""
        for key, reply in zip(keys, tops, strict=True):  # one reply per open (see _send_all)
            if isinstance(reply, BaseException):
                if not isinstance(reply, SSERedisError):
                    reply = SSERedisError(f"Redis refused a read: {reply}")
                self._fail_opens([key], reply)
                continue
            # Not an error, so the XREVRANGE's entries (links.pipeline's replies are untyped).
            top, complete, cancelled = _top(cast("list[links.RawEntry]", reply))
            if complete:
                closed = (
                    cancelled_error(key) if cancelled else RunClosedError(f"run stream {key!r} is already complete")
                )
                self._fail_opens([key], closed)
                continue
            self._opening.pop(key, None)
            self._runs.setdefault(key, _Run(key, top))

    def _fail_opens(self, keys: list[str], error: BaseException) -> None:
        """Hand ``error`` to whoever waits for these runs to open."""
        for key in keys:
            opening = self._opening.get(key)
            if opening is not None and opening.waiting:
                opening.failed = error
            else:
                self._opening.pop(key, None)


def _after_break(run: _Run, chunks: list[_Chunk]) -> int | None:
    """For the error terminal of a broken run: the seq it follows (what the
    writer last stored), across the refused chunks' gap."""
    return run.stored if run.ending and run.error is not None and chunks[-1].complete else None


def _is_large(batch: tuple[_Run, list[_Chunk]]) -> bool:
    return any(chunk.large for chunk in batch[1])


def _refused_chunk(batch: tuple[_Run, list[_Chunk]], exc: BaseException) -> SSERedisError:
    size = max(len(chunk.data.encode()) for chunk in batch[1])
    return SSERedisError(
        f"Redis refused a chunk of {size} bytes for {batch[0].key!r} (over its proto-max-bulk-len?): {exc}"
    )


def _shown(timeout: float | None) -> str:
    return f"{float(timeout or 0)}s"


class _AlreadyComplete(Exception):
    """A batch holding only a terminal chunk found the run already closed."""


class _Cancelled(Exception):
    """The batch found the run ended by a cancel (a terminal marked cancelled)."""


def _ms(value: bytes) -> int | None:
    """A timestamp field (ms since the epoch) as an int; ``None`` when missing or not a decimal."""
    return int(value) if value.isdigit() else None


def _groups(batches: list[tuple[_Run, list[_Chunk]]], cluster: bool) -> list[list[tuple[_Run, list[_Chunk]]]]:
    """Consecutive batches, cut into script calls of at most MAX_CALL_CHUNKS
    chunks (and, on a cluster, of one slot each)."""
    groups: list[list[tuple[_Run, list[_Chunk]]]] = []
    size = MAX_CALL_CHUNKS
    for batch in batches:
        other_slot = cluster and groups and links.slot_group(batch[0].key) != links.slot_group(groups[-1][0][0].key)
        if size + len(batch[1]) > MAX_CALL_CHUNKS or other_slot:
            groups.append([])
            size = 0
        groups[-1].append(batch)
        size += len(batch[1])
    return groups


def _per_batch(groups: list[list[tuple[_Run, list[_Chunk]]]], calls: list[object]) -> list[object]:
    """A call's reply holds one reply per batch; a whole call failing (e.g.
    NOSCRIPT) fails each of them, and so does a reply that is not one list
    item per batch (as in the Rust twin): a shorter list would shift every
    later batch's outcome onto the wrong batch."""
    outcomes: list[object] = []
    for group, reply in zip(groups, calls, strict=True):  # one reply per call (links.pipeline)
        if isinstance(reply, list) and len(reply) == len(group):
            outcomes += reply
        elif isinstance(reply, BaseException):
            outcomes += [reply] * len(group)
        else:
            outcomes += [_unexpected(reply)] * len(group)
    return outcomes


def _unexpected(reply: object) -> SSERedisError:
    return SSERedisError(f"unexpected script reply {reply!r}")


def _is_noscript(reply: object) -> bool:
    return isinstance(reply, redis.exceptions.NoScriptError)


def _batch_error(key: str, chunks: list[_Chunk], outcome: object, after: int | None) -> BaseException | None:
    """``None`` when the batch is stored (now or by an earlier try), else the error to report."""
    if isinstance(outcome, BaseException):
        if isinstance(outcome, SSERedisError):
            return outcome
        return SSERedisError(f"Redis refused a batch for {key!r}: {outcome}")
    if not (isinstance(outcome, list) and len(outcome) == 2 and isinstance(outcome[1], int)):
        return _unexpected(outcome)  # append.lua answers {status, top} per batch
    status, top = outcome[0], int(outcome[1])
    if status in (b"ok", b"dup"):
        return None
    if status == b"cancelled":
        return _Cancelled()
    if status == b"closed":
        if len(chunks) == 1 and chunks[0].complete:
            return _AlreadyComplete()
        return RunClosedError(f"run stream {key!r} was completed by another writer at seq {top}")
    if status == b"wrongtype":
        return SSERedisError(f"{key!r} holds a value that is not a stream")
    expected = chunks[0].seq - 1 if after is None else after
    if top == 0:
        return StaleWriterError(f"run stream {key!r} vanished (expired or deleted) after seq {expected}")
    if top == expected:
        return StaleWriterError(f"run stream {key!r}: seq {top} was written by another writer")
    return StaleWriterError(f"run stream {key!r} is at seq {top}, not {expected}: another writer has written to it")
