"""The reference module's approach, rebuilt for the benchmarks from its
description (``../shared/NOTES.md``) and a reading of it: the same commands
in the same pattern, written anew here, with its known defects left in
where they change what is measured and nowhere else.

Writer: each run has a buffer.  A write appends ``seq_id``, ``data``,
``timestamp`` (and ``complete``) to it; the buffer leaves as one pipeline,
one ``XADD key MAXLEN ~ max_len *`` per chunk plus an ``EXPIRE``, when it
holds ``flush_size`` chunks, when the chunk ends the run, or when the run's
last flush is older than ``flush_interval`` (a run never flushed counts as
old, so its first chunk leaves at once).  A periodic pass (``tick``) flushes
the runs that have waited longer than that.  ``AsyncReferenceWriter`` is
that writer as the original runs it: on asyncio with ``redis.asyncio``, each
write a coroutine that awaits its flush inline, the periodic pass a task.
``ReferenceWriter`` is the same writer in synchronous redis-py, which costs
far less per command in Python: a flattering stand-in for the reference.

Reader: polls ``XRANGE key <last> + COUNT batch_size``, starting from the
stream's first entry (``-``) whatever the cursor, skipping the entry it
already has (the range start is inclusive) and entries at or below the
cursor; when a poll brings nothing new it sleeps ``poll_interval``.  It stops
on a ``complete`` entry above the cursor.  ``ReferenceReader`` is the asyncio
one (``redis.asyncio``, one client and its pool shared by all reads, as the
original shares its client); ``SyncReferenceReader`` the same loop in
synchronous redis-py, for timing single reads without an event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import redis
import redis.asyncio

PREFIX = "sse:run:"


def _is_terminal(chunk: str) -> bool:
    return "data: [DONE]" in chunk or "event: error" in chunk


class ReferenceWriter:
    def __init__(
        self,
        url: str,
        *,
        flush_interval: float = 0.5,
        flush_size: int = 50,
        ttl: int = 10800,
        max_len: int = 10000,
    ) -> None:
        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.flush_interval = flush_interval
        self.flush_size = flush_size
        self.ttl = ttl
        self.max_len = max_len
        self.buffers: dict[str, list[dict[str, object]]] = {}
        self.next_seq: dict[str, int] = {}
        self.flushed_at: dict[str, float] = {}
        self._last_tick = time.time()
        self.pipelines = 0

    def write(self, run_id: str, chunk: str) -> int:
        seq = self.next_seq.get(run_id, 1)
        self.next_seq[run_id] = seq + 1
        entry: dict[str, object] = {"seq_id": seq, "data": chunk, "timestamp": int(time.time() * 1000)}
        done = _is_terminal(chunk)
        if done:
            entry["complete"] = "true"
        buffer = self.buffers.setdefault(run_id, [])
        buffer.append(entry)
        if (
            len(buffer) >= self.flush_size
            or done
            or time.time() - self.flushed_at.get(run_id, 0.0) > self.flush_interval
        ):
            self._flush_run(run_id)
        return seq

    def _flush_run(self, run_id: str) -> None:
        entries = self.buffers.get(run_id)
        if not entries:
            return
        self.buffers[run_id] = []
        key = PREFIX + run_id
        pipe = self.client.pipeline(transaction=False)
        for entry in entries:
            pipe.xadd(key, entry, maxlen=self.max_len, approximate=True)
        pipe.expire(key, self.ttl)
        pipe.execute()
        self.pipelines += 1
        self.flushed_at[run_id] = time.time()
        if entries[-1].get("complete") == "true":
            for state in (self.buffers, self.next_seq, self.flushed_at):
                state.pop(run_id, None)

    def tick(self) -> None:
        """The periodic flush task: once per ``flush_interval``, flush the runs
        whose last flush is older than that and that have chunks waiting."""
        now = time.time()
        if now - self._last_tick < self.flush_interval:
            return
        self._last_tick = now
        for run_id, at in list(self.flushed_at.items()):
            if now - at > self.flush_interval and self.buffers.get(run_id):
                self._flush_run(run_id)

    def flush(self) -> None:
        """What stopping the writer does: flush every buffer."""
        for run_id in list(self.buffers):
            self._flush_run(run_id)

    def close(self) -> None:
        self.flush()
        self.client.close()


class AsyncReferenceWriter:
    """``ReferenceWriter`` on asyncio: ``await write(...)``; ``start()`` runs
    the periodic flush task, ``stop()`` cancels it and flushes everything."""

    def __init__(self, url: str, **options: float) -> None:
        self.client = redis.asyncio.Redis.from_url(url, decode_responses=True)
        self.flush_interval = options.get("flush_interval", 0.5)
        self.flush_size = int(options.get("flush_size", 50))
        self.ttl = int(options.get("ttl", 10800))
        self.max_len = int(options.get("max_len", 10000))
        self.buffers: dict[str, list[dict[str, object]]] = {}
        self.next_seq: dict[str, int] = {}
        self.flushed_at: dict[str, float] = {}
        self.pipelines = 0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._periodic())

    async def write(self, run_id: str, chunk: str) -> int:
        seq = self.next_seq.get(run_id, 1)
        self.next_seq[run_id] = seq + 1
        entry: dict[str, object] = {"seq_id": seq, "data": chunk, "timestamp": int(time.time() * 1000)}
        done = _is_terminal(chunk)
        if done:
            entry["complete"] = "true"
        buffer = self.buffers.setdefault(run_id, [])
        buffer.append(entry)
        if (
            len(buffer) >= self.flush_size
            or done
            or time.time() - self.flushed_at.get(run_id, 0.0) > self.flush_interval
        ):
            await self._flush_run(run_id)
        return seq

    async def _flush_run(self, run_id: str) -> None:
        entries = self.buffers.get(run_id)
        if not entries:
            return
        self.buffers[run_id] = []
        key = PREFIX + run_id
        async with self.client.pipeline(transaction=False) as pipe:
            for entry in entries:
                await pipe.xadd(key, entry, maxlen=self.max_len, approximate=True)
            await pipe.expire(key, self.ttl)
            await pipe.execute()
        self.pipelines += 1
        self.flushed_at[run_id] = time.time()
        if entries[-1].get("complete") == "true":
            for state in (self.buffers, self.next_seq, self.flushed_at):
                state.pop(run_id, None)

    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            now = time.time()
            for run_id, at in list(self.flushed_at.items()):
                if now - at > self.flush_interval and self.buffers.get(run_id):
                    await self._flush_run(run_id)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for run_id in list(self.buffers):
            await self._flush_run(run_id)
        await self.client.aclose()


def _patched(data: str, run_id: str, seq: int) -> str:
    if '"run_id":null' in data:
        data = data.replace('"run_id":null', f'"run_id":"{run_id}"')
    if '"seq_id":null' in data:
        data = data.replace('"seq_id":null', f'"seq_id":{seq}')
    return data


class _Poll:
    """One poll's outcome, shared by the async and the sync loop."""

    def __init__(self, run_id: str, cursor: int) -> None:
        self.run_id = run_id
        self.cursor = cursor
        self.last = "-"

    def take(self, entries: list) -> tuple[list[str], bool, str]:
        """(chunks to yield, finished, next step: 'again' | 'sleep' | 'go')."""
        out: list[str] = []
        for entry_id, fields in entries:
            if entry_id == self.last:
                continue
            seq = int(fields.get("seq_id", 0))
            if seq > self.cursor:
                data = fields.get("data", "")
                if not data:
                    continue
                out.append(_patched(data, self.run_id, seq))
                if fields.get("complete") == "true":
                    return out, True, "go"
            self.last = entry_id
        if not out and len(entries) > 1:
            return out, False, "again"
        if not entries or (len(entries) == 1 and entries[0][0] == self.last):
            return out, False, "sleep"
        return out, False, "go"


class ReferenceReader:
    # redis-py 8's pool refuses a 101st concurrent command (MaxConnectionsError,
    # no waiting); older redis-py allowed 2**31.  Enough room for one poll in
    # flight per reader keeps 1,000 readers running, as they did there.
    MAX_CONNECTIONS = 10_000

    def __init__(self, url: str, *, poll_interval: float = 0.1, batch_size: int = 100) -> None:
        self.client = redis.asyncio.Redis.from_url(url, decode_responses=True, max_connections=self.MAX_CONNECTIONS)
        self.poll_interval = poll_interval
        self.batch_size = batch_size
        # Not the reference's: a way out for the benchmark.  A task cancelled
        # while redis-py awaits a reply sometimes loses the CancelledError (a
        # known redis-py problem) and would poll on for ever.
        self.closed = False

    async def read(self, run_id: str, starting_after: int | None = None) -> AsyncIterator[str]:
        key = PREFIX + run_id
        poll = _Poll(run_id, starting_after or 0)
        while not self.closed:
            entries = await self.client.xrange(key, min=poll.last, count=self.batch_size)
            chunks, finished, step = poll.take(entries)
            for chunk in chunks:
                yield chunk
            if finished:
                return
            if step == "sleep":
                await asyncio.sleep(self.poll_interval)

    async def close(self) -> None:
        self.closed = True
        await self.client.aclose()


class SyncReferenceReader:
    def __init__(self, url: str, *, poll_interval: float = 0.1, batch_size: int = 100) -> None:
        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.poll_interval = poll_interval
        self.batch_size = batch_size

    def read(self, run_id: str, starting_after: int | None = None) -> Iterator[str]:
        key = PREFIX + run_id
        poll = _Poll(run_id, starting_after or 0)
        while True:
            entries = self.client.xrange(key, min=poll.last, count=self.batch_size)
            chunks, finished, step = poll.take(entries)
            yield from chunks
            if finished:
                return
            if step == "sleep":
                time.sleep(self.poll_interval)

    def close(self) -> None:
        self.client.close()
