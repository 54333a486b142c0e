"""The writer engine, pure-Python twin of ``src/io/writer.rs``.

One background thread owns the pipeline connection.  ``write`` only queues a
chunk and wakes it; the thread sends everything queued in one pipeline of
``append.lua`` calls (one per run per ``flush_size`` chunks) and, while that
pipeline is in flight, new chunks gather for the next one (group commit).  A
single sender means the pipelines of one run never overlap, so chunks land in
seq order; the script makes every batch all-or-nothing and fenced, so a retry
after a lost reply never stores a chunk twice.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from importlib import resources

import redis

from ..errors import (
    RedisUnavailable,
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
RETRYABLE = LINK_ERRORS


def read_top(client: links.Client, key: str) -> tuple[int, bool]:
    """``(seq_id, complete)`` of the stream's last entry, ``(0, False)`` if none."""
    entries = client.xrevrange(key, "+", "-", count=1)
    if not entries:
        return 0, False
    fields = entries[0][1]
    return int(fields.get(b"seq_id", 0)), fields.get(b"complete") == b"true"


class _Chunk:
    __slots__ = ("seq", "data", "timestamp", "complete")

    def __init__(self, seq: int, data: str, complete: bool) -> None:
        self.seq = seq
        self.data = data
        self.timestamp = int(time.time() * 1000)
        self.complete = complete


class _Run:
    """What the engine knows of one open run."""

    __slots__ = ("key", "queue", "next_seq", "stored", "closing", "error", "ready", "in_flight", "trusted_on")

    def __init__(self, key: str, top: int) -> None:
        self.key = key
        self.queue: deque[_Chunk] = deque()
        self.next_seq = top + 1
        self.stored = top
        self.closing = False  # a terminal chunk is queued: no more writes
        self.error: BaseException | None = None
        self.ready = False  # listed in the engine's ready queue
        self.in_flight = 0  # chunks in the pipeline being sent
        # The sender connection that stored its last batch: the next batch sent
        # on it may skip reading the stream's top (see append.lua, trusted).
        self.trusted_on: int | None = None


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
        self._stored_on = 0  # the serial of the connection the last pipeline landed on
        self._cluster = cluster
        self._wait_replicas = wait_replicas
        self._wait_timeout_ms = max(1, int(wait_timeout * 1000))
        self._flush_size = flush_size
        self._ttl = b"" if ttl is None else str(ttl).encode()
        self._max_len = b"" if max_len is None else str(max_len).encode()
        self._max_pending = max_pending
        self._retry_timeout = retry_timeout
        self._writer_id = uuid.uuid4().hex.encode()
        self._sha: str | None = None

        self._cv = threading.Condition(threading.Lock())
        self._runs: dict[str, _Run] = {}
        self._ready: deque[_Run] = deque()
        self._pending = 0  # queued or in flight, across all runs
        self._failed: list[_Run] = []  # runs whose error no one has seen yet
        self._closed = False
        self._stats = {"chunks": 0, "batches": 0, "pipelines": 0, "retries": 0, "errors": 0}
        self._thread = threading.Thread(target=self._sender, name="sse-redis-writer", daemon=True)
        self._thread.start()

    # -- the caller's side ---------------------------------------------------

    def _control(self, command):  # type: ignore[no-untyped-def]
        """Run an (idempotent) command, retrying a broken link until the deadline."""
        deadline = time.monotonic() + self._retry_timeout
        delay = 0.01
        while True:
            try:
                return command(self._client)
            except RETRYABLE as exc:
                if time.monotonic() + delay > deadline or self._closed:
                    raise RedisUnavailable(f"Redis unreachable: {exc}") from None
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
            except redis.RedisError as exc:
                raise SSERedisError(f"Redis refused a command: {exc}") from None

    def open(self, key: str) -> None:
        """Learn where the run stands in Redis (one round trip, first write only)."""
        with self._cv:
            if key in self._runs:
                return
        top, complete = self._control(lambda client: read_top(client, key))
        if complete:
            raise RunClosedError(f"run stream {key!r} is already complete")
        with self._cv:
            self._runs.setdefault(key, _Run(key, top))

    def write(self, key: str, data: str, complete: bool, timeout: float | None = None) -> int:
        """Queue one chunk and return its seq id; waits for buffer space up to ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._cv:
                run = self._runs.get(key)
                if run is not None:
                    while self._pending >= self._max_pending and self._runs.get(key) is run:
                        left = None if deadline is None else deadline - time.monotonic()
                        if left is not None and left <= 0:
                            raise WriteTimeout(
                                f"{self._pending} chunks waiting for Redis; no room within {timeout}s"
                            )
                        self._cv.wait(left)
                    if self._runs.get(key) is run:
                        return self._enqueue(run, data, complete)
                    continue  # the run failed while we waited: report that
            self.open(key)

    def try_write(self, key: str, data: str, complete: bool) -> int | None:
        """``write`` that never waits: ``None`` when the run is not open yet or the buffer is full."""
        with self._cv:
            run = self._runs.get(key)
            if run is None or (run.error is None and self._pending >= self._max_pending):
                return None
            return self._enqueue(run, data, complete)

    def _enqueue(self, run: _Run, data: str, complete: bool) -> int:
        """Caller holds the lock."""
        self._raise_closed()
        if run.error is not None:
            self._deliver(run)
        if run.closing:
            raise RunClosedError(f"run stream {run.key!r} is already complete")
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
        stored; raise what failed since the last flush."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            if key is None:
                runs = list(self._runs.values())
            else:
                runs = [self._runs[key]] if key in self._runs else []
            for run in runs:
                target = run.next_seq - 1
                while self._runs.get(run.key) is run and run.stored < target and run.error is None:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise WriteTimeout(f"flush did not finish within {timeout}s")
                    self._cv.wait(left)
            if key is None:
                self._raise_errors()
            elif runs and runs[0].error is not None:
                self._deliver(runs[0])

    def _deliver(self, run: _Run) -> None:
        """Raise the run's error once; the next write re-reads Redis.  Caller holds the lock."""
        if self._runs.get(run.key) is run:
            del self._runs[run.key]
        if run in self._failed:
            self._failed.remove(run)
        raise run.error  # type: ignore[misc]

    def _raise_errors(self) -> None:
        if self._failed:
            self._deliver(self._failed[0])

    def _raise_closed(self) -> None:
        if self._closed:
            raise SSERedisError("the writer is closed")

    def last_seq(self, key: str) -> int:
        return self._control(lambda client: read_top(client, key))[0]

    def delete(self, key: str) -> None:
        """Delete the run's stream and forget the run, once its batch in flight
        (if any) has landed, so nothing of it is written after the DEL."""
        with self._cv:
            run = self._runs.get(key)
            if run is not None:
                self._pending -= len(run.queue)
                run.queue.clear()
                run.closing = True  # no new writes while it goes
                while self._runs.get(key) is run and run.in_flight:
                    self._cv.wait()
                if self._runs.get(key) is run:
                    del self._runs[key]
                    if run in self._failed:
                        self._failed.remove(run)
                self._cv.notify_all()
        self._control(lambda client: client.delete(key))

    def stats(self) -> dict[str, int]:
        with self._cv:
            return dict(self._stats, pending=self._pending, runs=len(self._runs))

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
                while not self._ready and not self._closed:
                    self._cv.wait()
                if not self._ready:
                    self._sender_client.close()
                    return
                batches = self._take_batches()
            if self._cluster:
                # One script call covers one slot: gather each slot's batches
                # (a stable sort keeps every run's batches in seq order).
                batches.sort(key=lambda batch: links.slot_group(batch[0].key))
            outcomes = self._send(batches)
            with self._cv:
                self._apply(batches, outcomes)
                self._cv.notify_all()

    def _take_batches(self) -> list[tuple[_Run, list[_Chunk]]]:
        """Everything ready, split into per-run batches of ``flush_size``; caller holds the lock."""
        batches: list[tuple[_Run, list[_Chunk]]] = []
        room = MAX_PIPELINE_CHUNKS
        while self._ready and room > 0:
            run = self._ready[0]
            while run.queue and room > 0:
                take = min(self._flush_size, len(run.queue), room)
                run.in_flight += take
                batches.append((run, [run.queue.popleft() for _ in range(take)]))
                room -= take
            if not run.queue:
                run.ready = False
                self._ready.popleft()
        return batches

    def _send(self, batches: list[tuple[_Run, list[_Chunk]]]) -> list[object]:
        """One pipeline; retried (safely, the script spots its own batches) until the deadline."""
        deadline = time.monotonic() + self._retry_timeout
        delay = 0.01
        while True:
            try:
                replies = self._pipeline(batches)
                if any(_is_noscript(r) for r in replies):
                    self._sha = None
                    replies = self._pipeline(batches)
                return replies
            except RETRYABLE as exc:
                self._count("retries")
                if time.monotonic() + delay > deadline or self._closed:
                    error = RedisUnavailable(f"Redis unreachable for {self._retry_timeout}s: {exc}")
                    return [error] * len(batches)
                with self._cv:
                    self._cv.wait(delay)  # woken early by close
                delay = min(delay * 2, 1.0)

    def _pipeline(self, batches: list[tuple[_Run, list[_Chunk]]]) -> list[object]:
        """One script call per group of batches (then WAIT, when asked); one outcome per batch."""
        client = self._sender_client
        if self._sha is None:
            self._sha = client.script_load(APPEND_SCRIPT)  # every master, on a cluster
        groups = _groups(batches, self._cluster)
        # Trusted: the run's last batch landed on this very connection. Only the
        # first batch of a run in a pipeline; the script trusts the next ones of
        # a call itself. Never on a cluster, where the client may move to
        # another node (a promoted replica) without a new connection.
        connection = client.connection_pool.get_connection() if isinstance(client, redis.Redis) else None
        serial = getattr(connection, "serial", None)
        seen: set[str] = set()
        calls: list[tuple[str, tuple]] = []
        for group in groups:
            keys = [run.key for run, _ in group]
            args: list[object] = [self._writer_id, self._max_len, self._ttl]
            for run, chunks in group:
                trusted = run.key not in seen and serial is not None and run.trusted_on == serial
                seen.add(run.key)
                args += (chunks[0].seq, len(chunks), b"1" if trusted else b"")
                for chunk in chunks:
                    args += (chunk.data, chunk.timestamp, b"1" if chunk.complete else b"")
            calls.append((keys[0], ("EVALSHA", self._sha, len(keys), *keys, *args)))
        self._count("pipelines")
        replies, servers = links.pipeline(client, calls, connection)
        self._stored_on = serial or 0
        transient = next((r for r in replies if isinstance(r, LINK_ERRORS)), None)
        if transient is not None:
            raise transient  # "not now" (e.g. -LOADING, -TRYAGAIN): resend it all, safely
        if self._wait_replicas and not any(_is_noscript(r) for r in replies):
            # Until the replicas have the batches they are not acknowledged, and
            # the pipeline is sent again (the script skips what is stored).
            acked = links.wait_replicas(servers, self._wait_replicas, self._wait_timeout_ms)
            if acked < self._wait_replicas:
                raise redis.TimeoutError(
                    f"{acked} of {self._wait_replicas} replicas acknowledged within {self._wait_timeout_ms} ms"
                )
        outcomes: list[object] = []
        for group, reply in zip(groups, replies):
            # a whole call failing (e.g. NOSCRIPT) fails each of its batches
            outcomes += [reply] * len(group) if isinstance(reply, BaseException) else list(reply)
        return outcomes

    def _count(self, name: str, n: int = 1) -> None:
        with self._cv:
            self._stats[name] += n

    def _apply(self, batches: list[tuple[_Run, list[_Chunk]]], outcomes: list[object]) -> None:
        """Record what each batch did; caller holds the lock."""
        for (run, chunks), outcome in zip(batches, outcomes):
            self._pending -= len(chunks)
            self._stats["batches"] += 1
            run.in_flight -= len(chunks)
            if self._runs.get(run.key) is not run or run.error is not None:
                continue  # deleted meanwhile, or an earlier batch of it failed
            error = _batch_error(run.key, chunks, outcome)
            if error is None:
                self._stats["chunks"] += len(chunks)
                run.stored = chunks[-1].seq
                run.trusted_on = self._stored_on or None
                if chunks[-1].complete:
                    del self._runs[run.key]  # bounded memory: a finished run leaves nothing
                continue
            if isinstance(error, _AlreadyComplete):
                del self._runs[run.key]  # a second terminal: a no-op, not an error
                continue
            self._stats["errors"] += 1
            run.error = error
            self._failed.append(run)
            self._pending -= len(run.queue)
            run.queue.clear()


class _AlreadyComplete(Exception):
    """A batch holding only a terminal chunk found the run already closed."""


def _groups(
    batches: list[tuple[_Run, list[_Chunk]]], cluster: bool
) -> list[list[tuple[_Run, list[_Chunk]]]]:
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


def _is_noscript(reply: object) -> bool:
    return isinstance(reply, redis.exceptions.NoScriptError)


def _batch_error(key: str, chunks: list[_Chunk], outcome: object) -> BaseException | None:
    """``None`` when the batch is stored (now or by an earlier try), else the error to report."""
    if isinstance(outcome, BaseException):
        if isinstance(outcome, SSERedisError):
            return outcome
        return SSERedisError(f"Redis refused a batch for {key!r}: {outcome}")
    status, top = outcome[0], int(outcome[1])  # type: ignore[index]
    if status in (b"ok", b"dup"):
        return None
    if status == b"closed":
        if len(chunks) == 1 and chunks[0].complete:
            return _AlreadyComplete()
        return RunClosedError(f"run stream {key!r} was completed by another writer at seq {top}")
    if status == b"wrongtype":
        return SSERedisError(f"{key!r} holds a value that is not a stream")
    expected = chunks[0].seq - 1
    if top == 0:
        return StaleWriterError(f"run stream {key!r} vanished (expired or deleted) after seq {expected}")
    return StaleWriterError(
        f"run stream {key!r} is at seq {top}, not {expected}: another writer has written to it"
    )
