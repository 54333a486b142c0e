"""The read side of the Durable Streams HTTP protocol over the stored log (issue 16).

    from starlette.applications import Starlette
    from sse_redis import AsyncStreamReader
    from sse_redis.protocols import durable_streams

    reader = AsyncStreamReader("redis://localhost:6379/0", ping_interval=15)
    app = Starlette(routes=durable_streams.routes(reader))

    # then, with the official client (pip install durable-streams):
    async with astream(f"http://host/streams/{run_id}", offset="-1", live="sse") as res:
        async for message in res.iter_json(): ...

Each run is one stream, ``GET /streams/{run_id}`` (``path=`` moves it), of
content type ``application/json``: one JSON message per stored SSE event,
the dict ``sse_redis.reader.events_of`` makes of it (``read_events``' items):
``{"id": "<seq>", "data": "<the event's data>"}``, with ``"event"`` when the
event has a type and ``"retry"`` when it has one.  ``data`` stays the text
the writer stored (``run_id``/``seq_id`` nulls filled in), so a ``[DONE]``
and a JSON payload round-trip alike.

* **Offsets** are seq ids, zero-padded to ``OFFSET_WIDTH`` (20) digits: the
  offset after chunk ``N`` is ``N`` padded, so offsets sort as strings the
  way seq ids sort as numbers, for every seq id a Redis stream ID can hold
  (a u64: 20 digits).  ``-1`` (or no offset) is the start, ``now`` the
  current tail; an unpadded seq id is taken too.
* **Catch-up** (no ``live``): what is stored after the offset, now, up to
  ``max_chunks`` chunks, as a JSON array; ``Stream-Next-Offset``,
  ``Stream-Up-To-Date`` when it reaches the tail, ``Stream-Closed`` when it
  reaches the run's terminal (the terminal's own event is the last message).
* **``live=long-poll``**: the same at once when data is stored after the
  offset; at the tail, waits up to ``long_poll_timeout`` for the next chunk
  (200) or answers 204 (``Stream-Up-To-Date``); a closed run at its tail
  answers 204 with ``Stream-Closed`` at once.  ``Stream-Cursor`` on every
  answer of an open stream (protocol section 10.1).
* **``live=sse``**: ``event: data`` (a JSON array: one stored chunk's
  messages) then ``event: control`` (``streamNextOffset``, ``streamCursor``,
  ``upToDate``) per chunk; after the terminal's data, a control with
  ``streamClosed: true`` and the connection closes.  The connection also ends
  after ``sse_lifetime`` seconds (60; the protocol asks for about that, so
  CDNs can collapse readers) and at server shutdown, without
  ``streamClosed``: clients reconnect from the last ``streamNextOffset``.
* **HEAD**: ``Stream-Next-Offset`` (the tail), ``Stream-Closed``.
* Unknown run (no status and no stream): 404; a malformed offset, ``live``
  or run id: 400; an offset past the tail: 400; chunks trimmed from the
  stream before the offset was read: 410; Redis unreachable: 503.
* **Writes** (``PUT`` create, ``POST`` append/close, ``DELETE``): 405 with
  ``Allow: GET, HEAD``, the answer the protocol gives for a stream that does
  not take appends: runs are written by ``StreamWriter``, closed by their
  terminal, deleted by ``StreamWriter.delete``.

``authorize(request, run_id)`` as in the serving core guards GET and HEAD;
without it every run is readable by whoever knows its id.  ``control`` (a
``RunControl`` or ``AsyncRunControl``) tells the tail and whether the run is
closed; it defaults to one on the reader's Redis and keys.
``docs/protocols.md`` has the full mapping and what the log cannot give.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from .. import serving
from ..control import AsyncRunControl, RunControl, RunInfo
from ..errors import SSERedisError, StreamNotFound, StreamTrimmed
from ..keys import validate_run_id
from ..reader import MAX_CURSOR, PING, AsyncStreamReader, SSEEvent, events_of
from ..serving import Authorize

# A u64, the seq part of a Redis stream ID, has at most 20 digits: every seq id
# fits, so the width never changes and string order is number order.
OFFSET_WIDTH: Final = 20
START: Final = "-1"  # the protocol's sentinel for the stream's beginning
NOW: Final = "now"  # ... and for its current tail
CONTENT_TYPE: Final = "application/json"

# Protocol headers.
NEXT_OFFSET: Final = "Stream-Next-Offset"
UP_TO_DATE: Final = "Stream-Up-To-Date"
CLOSED: Final = "Stream-Closed"
CURSOR: Final = "Stream-Cursor"

# Stream-Cursor (protocol section 10.1): 20-second intervals from 2024-10-09T00:00:00Z.
CURSOR_EPOCH: Final = 1728432000
CURSOR_INTERVAL: Final = 20

# A catch-up read takes chunks that are already stored: one not seen this long
# after the one before means the entries left before the tail carry no data
# (the reader skips those) or Redis is slow; the answer then stops before them.
CATCHUP_GRACE: Final = 2.0

READ_ONLY: Final = "GET, HEAD"
_WRITES: Final = ("POST", "PUT", "DELETE", "PATCH")
_BASE_HEADERS: Final = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def offset_of(seq: int) -> str:
    """The offset after chunk ``seq`` (0: before the first)."""
    return f"{seq:0{OFFSET_WIDTH}d}"


def cursor_of_offset(offset: str | None) -> int | None:
    """The seq id an offset resumes after: 0 for ``-1`` or none, ``None``
    for ``now`` (the tail, which only the run control knows).  ``ValueError``
    (quoting at most ``serving.MAX_QUOTED`` characters) if malformed."""
    if offset is None or offset == START:
        return 0
    if offset == NOW:
        return None
    if offset.isascii() and offset.isdigit() and len(offset) <= OFFSET_WIDTH and int(offset) <= MAX_CURSOR:
        return int(offset)
    raise ValueError(
        f"the offset must be -1, now or a seq id of up to {OFFSET_WIDTH} digits, not {serving.quoted(offset)}"
    )


def response_cursor(client_cursor: str | None, now: float | None = None) -> str:
    """``Stream-Cursor`` (protocol section 10.1): the current 20-second interval
    since the epoch, or, when the client's echoed cursor is not behind it, that
    cursor plus 1 to 3600 seconds of jitter (in intervals), so it never goes back."""
    current = int(((time.time() if now is None else now) - CURSOR_EPOCH) // CURSOR_INTERVAL)
    if client_cursor is None or not (client_cursor.isascii() and client_cursor.isdigit()) or len(client_cursor) > 20:
        return str(current)
    echoed = int(client_cursor)
    if echoed < current:
        return str(current)
    jitter = random.randint(1, 3600)  # CDN cache-busting, not a secret
    return str(echoed + max(1, math.ceil(jitter / CURSOR_INTERVAL)))


def routes(
    reader: AsyncStreamReader,
    *,
    control: AsyncRunControl | RunControl | None = None,
    authorize: Authorize | None = None,
    path: str = "/streams/{run_id}",
    long_poll_timeout: float = 20.0,
    sse_lifetime: float | None = 60.0,
    max_chunks: int = 1000,
) -> list[BaseRoute]:
    """The stream route, for ``Starlette(routes=...)`` or
    ``app.router.routes.extend(...)``.  ``path`` must hold ``{run_id}``.
    ``long_poll_timeout`` (seconds) is how long a long-poll at the tail waits
    (below the 30 s read timeout of the ``durable-streams`` client);
    ``sse_lifetime`` how long an SSE connection stays open (``None``: until
    the terminal; the Python client 0.1.0 does not reconnect, see the docs);
    ``max_chunks`` how many stored chunks one catch-up or long-poll answer
    carries at most."""
    if "{run_id}" not in path:
        raise ValueError(f"path must hold {{run_id}}, not {path!r}")
    for name, value in (("long_poll_timeout", long_poll_timeout), ("sse_lifetime", sse_lifetime)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or not value > 0):
            raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
    if isinstance(max_chunks, bool) or not isinstance(max_chunks, int) or max_chunks < 1:
        raise ValueError(f"max_chunks must be a positive int, not {max_chunks!r}")
    adapter = _Adapter(reader, control, authorize, float(long_poll_timeout), sse_lifetime, max_chunks)
    return [Route(path, adapter.endpoint, methods=["GET", "HEAD", *_WRITES])]


class _Read:
    """One request's read: the stream, its tail and closure, the offset."""

    def __init__(self, run_id: str, info: RunInfo, cursor: int) -> None:
        self.run_id = run_id
        self.tail = info.last_seq
        self.closed = info.state != "running"
        self.cursor = cursor


class _Adapter:
    def __init__(
        self,
        reader: AsyncStreamReader,
        control: AsyncRunControl | RunControl | None,
        authorize: Authorize | None,
        long_poll_timeout: float,
        sse_lifetime: float | None,
        max_chunks: int,
    ) -> None:
        self.reader = reader
        self.control = control
        self.authorize = authorize
        self.long_poll_timeout = long_poll_timeout
        self.sse_lifetime = sse_lifetime
        self.max_chunks = max_chunks

    async def status(self, run_id: str) -> RunInfo | None:
        control = self.control if self.control is not None else serving.control_of(self.reader)
        if isinstance(control, RunControl):
            return await asyncio.to_thread(control.status, run_id)
        return await control.status(run_id)

    async def endpoint(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        if request.method in _WRITES:
            return _text(
                405, "this stream is read-only: runs are written by sse-redis's StreamWriter", {"Allow": READ_ONLY}
            )
        verdict = await serving.verdict_of(self.authorize, request, run_id)
        if verdict is not True:
            return _text(403 if verdict is False else int(verdict), "")
        query = request.query_params
        try:
            validate_run_id(run_id)
            if len(query.getlist("offset")) > 1:
                raise ValueError("give one offset")
            offset = query.get("offset")
            cursor = cursor_of_offset(offset)
            live = query.get("live")
            if live not in (None, "long-poll", "sse"):
                raise ValueError(f"live must be long-poll or sse, not {serving.quoted(live)}")
            if live is not None and offset is None:
                raise ValueError(f"live={live} needs an offset (-1 for the start)")
        except (TypeError, ValueError) as exc:
            return _text(400, str(exc) if len(str(exc)) < 200 else "malformed run id")
        try:
            info = await self.status(run_id)
        except SSERedisError:
            return _text(503, "the run's status is unavailable (Redis unreachable?)")
        if info is None:
            return _text(404, "no such stream")
        read = _Read(run_id, info, info.last_seq if cursor is None else cursor)
        if request.method == "HEAD":
            headers = {**_BASE_HEADERS, "Content-Type": CONTENT_TYPE, NEXT_OFFSET: offset_of(read.tail)}
            if read.closed:
                headers[CLOSED] = "true"
            return Response(status_code=200, headers=headers)
        if read.cursor > read.tail:
            return _text(400, f"the offset is past the stream's tail ({offset_of(read.tail)})")
        client_cursor = query.get("cursor")
        if live == "sse":
            return StreamingResponse(self.sse(read, client_cursor), headers={**serving.STREAM_HEADERS, **_NOSNIFF})
        if live is None and cursor is None:  # offset=now: the tail, no data, not cached
            return self.answer(read, [], read.tail, ended=read.closed, etag=False)
        return await self.poll(request, read, client_cursor, wait=live is not None)

    async def poll(self, request: Request, read: _Read, client_cursor: str | None, *, wait: bool) -> Response:
        """Catch-up (``wait`` False) or long-poll."""
        if read.cursor >= read.tail and read.closed and wait:  # EOF: answered at once, no waiting
            headers = {**_BASE_HEADERS, NEXT_OFFSET: offset_of(read.cursor), UP_TO_DATE: "true", CLOSED: "true"}
            return Response(status_code=204, headers=headers)
        if read.cursor >= read.tail and not wait:
            return self.answer(read, [], read.cursor, ended=read.closed)
        stop = serving.register_open()  # server shutdown ends the wait: answered as "nothing new"
        pump = _Pump(self.reader.read(read.run_id, starting_after=read.cursor), stop)
        try:
            messages, last, ended = await self.gather(pump, read, self.long_poll_timeout if wait else CATCHUP_GRACE)
        except StreamNotFound:
            return _text(404, "no such stream (expired or deleted)")
        except StreamTrimmed:
            return _text(410, "chunks after this offset were trimmed from the stream")
        except SSERedisError:
            return _text(503, "the stream cannot be read now (Redis unreachable?)")
        finally:
            serving.unregister_open(stop)
            await pump.aclose()
        if wait and not messages and not ended:
            headers = {**_BASE_HEADERS, NEXT_OFFSET: offset_of(last), UP_TO_DATE: "true"}
            headers[CURSOR] = response_cursor(client_cursor)
            return Response(status_code=204, headers=headers)
        response = self.answer(read, messages, last, ended=ended, live=wait, client_cursor=client_cursor)
        match = request.headers.get("if-none-match")
        if match is not None and match == response.headers.get("etag"):
            return Response(status_code=304, headers={"ETag": match, **_BASE_HEADERS})
        return response

    async def gather(self, pump: _Pump, read: _Read, first_wait: float) -> tuple[list[SSEEvent], int, bool]:
        """The messages of the chunks after the cursor: those stored up to the
        tail (each within ``CATCHUP_GRACE`` of the one before), else the first
        within ``first_wait``; then whatever else is ready, up to ``max_chunks``.
        Returns the messages, the last seq taken, and whether the terminal was."""
        codec = self.reader.sync._module
        loop = asyncio.get_running_loop()
        messages: list[SSEEvent] = []
        last, taken = read.cursor, 0
        deadline = loop.time() + first_wait
        while True:
            if taken == self.max_chunks:
                return messages, last, await pump.at_end()
            wait = 0.0 if last >= read.tail and taken else max(deadline - loop.time(), 0.0)
            if not await pump.wait(wait):
                return messages, last, False
            try:
                chunk = pump.take()
            except StopAsyncIteration:
                return messages, last, not pump.stopped
            except SSERedisError:
                if taken:
                    return messages, last, False  # what was read is sent; the next request meets the error
                raise
            if chunk == PING:
                continue
            events, last = _events(codec, chunk)
            messages.extend(events)
            taken += 1
            if last < read.tail:
                deadline = loop.time() + CATCHUP_GRACE

    def answer(
        self,
        read: _Read,
        messages: list[SSEEvent],
        last: int,
        *,
        ended: bool,
        live: bool = False,
        client_cursor: str | None = None,
        etag: bool = True,
    ) -> Response:
        """A 200 with ``messages`` as a JSON array, read up to seq ``last``."""
        closed = ended or (read.closed and last >= read.tail)
        headers = {**_BASE_HEADERS, NEXT_OFFSET: offset_of(last)}
        if closed or last >= read.tail:
            headers[UP_TO_DATE] = "true"
        if closed:
            headers[CLOSED] = "true"
        elif live:
            headers[CURSOR] = response_cursor(client_cursor)
        if etag:
            headers["ETag"] = f'"{offset_of(read.cursor)}:{offset_of(last)}{":c" if closed else ""}"'
        return Response(_json(messages), status_code=200, headers=headers, media_type=CONTENT_TYPE)

    async def sse(self, read: _Read, client_cursor: str | None) -> AsyncIterator[bytes]:
        """The ``live=sse`` body (see the module's docstring)."""
        if read.closed and read.cursor >= read.tail:
            yield _control(read.cursor, closed=True)
            return
        stop = serving.register_open()
        codec = self.reader.sync._module
        loop = asyncio.get_running_loop()
        ends = None if self.sse_lifetime is None else loop.time() + self.sse_lifetime
        last = read.cursor
        pump = _Pump(self.reader.read(read.run_id, starting_after=read.cursor), stop)
        try:
            if last >= read.tail:
                yield _control(last, cursor=response_cursor(client_cursor), up_to_date=True)
            while True:
                if not await pump.wait(None if ends is None else max(ends - loop.time(), 0.0)):
                    return  # lifetime over or shutdown: no streamClosed, the client reconnects
                try:
                    chunk = pump.take()
                except StopAsyncIteration:
                    if not pump.stopped:
                        yield _control(last, closed=True)
                    return
                if chunk == PING:
                    yield PING.encode()
                    continue
                events, last = _events(codec, chunk)
                if events:
                    yield b"event: data\ndata: " + _json(events) + b"\n\n"
                if await pump.at_end():
                    yield _control(last, closed=True)
                    return
                cursor = response_cursor(client_cursor)
                yield _control(last, cursor=cursor, up_to_date=last >= read.tail)
        except SSERedisError:
            return  # stalled, gone, trimmed, Redis down: no streamClosed; a reconnect gets the status
        finally:
            serving.unregister_open(stop)
            await pump.aclose()


class _Pump:
    """A read's chunks, waited for without ever cancelling the pending read
    (a wait that times out leaves it pending for the next), ended early by
    ``stop`` (server shutdown).  ``take`` raises what the read raised."""

    def __init__(self, chunks: AsyncIterator[str], stop: asyncio.Event | None = None) -> None:
        self.chunks = chunks
        self.stop = stop
        self.stopper: asyncio.Future[Any] | None = None
        self.next: asyncio.Future[str] | None = None
        self.stopped = False

    async def wait(self, timeout: float | None) -> bool:
        """Whether the next chunk (or the end) came within ``timeout`` seconds
        (0: is it ready now, i.e. already queued for this read)."""
        if self.stopped:
            return False
        if self.next is None:
            self.next = asyncio.ensure_future(self.chunks.__anext__())
        if timeout is not None and timeout <= 0:
            await asyncio.sleep(0)  # one turn: a chunk already queued is taken in it
        else:
            waiters: set[asyncio.Future[Any]] = {self.next}
            if self.stop is not None:
                if self.stopper is None:
                    self.stopper = asyncio.ensure_future(self.stop.wait())
                waiters.add(self.stopper)
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if self.stop is not None and self.stop.is_set():
            self.stopped = True
            return False
        return self.next.done()

    def take(self) -> str:
        """The chunk ``wait`` saw come (``StopAsyncIteration`` at the end)."""
        assert self.next is not None
        assert self.next.done()
        done, self.next = self.next, None
        return done.result()

    async def at_end(self) -> bool:
        """Whether the read is over now (the terminal was its last chunk);
        a chunk that is ready stays for ``take``."""
        if not await self.wait(0):
            return False
        assert self.next is not None
        if isinstance(self.next.exception(), StopAsyncIteration):
            self.next = None
            return True
        return False

    async def aclose(self) -> None:
        if self.stopper is not None:
            self.stopper.cancel()
        if self.next is not None and not self.next.done():
            self.next.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, SSERedisError):
                await self.next
        elif self.next is not None:
            self.next.exception()  # retrieved: no "never retrieved" warning
        await self.chunks.aclose()  # type: ignore[attr-defined]


_NOSNIFF: Final = {"X-Content-Type-Options": "nosniff"}


def _events(codec: Any, chunk: str) -> tuple[list[SSEEvent], int]:
    """A chunk's messages and its seq id (the ``id:`` the reader stamped)."""
    events = events_of(codec, chunk)
    if events:
        return events, int(events[0]["id"])
    parser = codec.SSEParser()  # no event (a stored comment): the id alone
    parser.feed(chunk)
    return events, int(parser.last_event_id)


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _control(last: int, *, closed: bool = False, cursor: str | None = None, up_to_date: bool = False) -> bytes:
    control: dict[str, Any] = {"streamNextOffset": offset_of(last)}
    if closed:
        control["streamClosed"] = True
        control["upToDate"] = True
    else:
        if cursor is not None:
            control["streamCursor"] = cursor
        if up_to_date:
            control["upToDate"] = True
    return b"event: control\ndata: " + _json(control) + b"\n\n"


def _text(status: int, text: str, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        text or None, status_code=status, headers={**_BASE_HEADERS, **(headers or {})}, media_type="text/plain"
    )


__all__ = [
    "CONTENT_TYPE",
    "NOW",
    "OFFSET_WIDTH",
    "START",
    "cursor_of_offset",
    "offset_of",
    "response_cursor",
    "routes",
]
