"""The serving core: the HTTP answer to "stream run X to this client from where
it left off", for any Python web framework.  It imports none: each framework
helper (``sse_redis.starlette``, ``.django``, ``.litestar``, ``.quart``) reads
its request's ``Last-Event-ID`` header and query parameters, calls
``verdict_of`` and ``serve_run``, and turns the ``Answer`` into its response.

The answers, chosen so that ``EventSource``-style clients do the right thing:

* **200** and the body: the run is registered (``RunControl.start``, which
  ``process_stream`` calls) or has chunks after the cursor.  A registered run
  with no chunk yet waits (pings keep proxies from closing the connection).
* **204** at once: the run control knows no such run (no status and no
  stream), or the run ended (terminal stored) and nothing follows the
  cursor.  204 is the one answer that makes ``EventSource`` stop
  reconnecting.
* **400**: a malformed cursor or run id (the offending value is cut short,
  never echoed whole); **403** (or the status ``authorize`` returned).
* A run that stalls (no chunk for the reader's ``idle_timeout``, or a
  registered run with no chunk past its ``missing_timeout``) while its
  status says ``running`` (its writer may be restarting: a new writer
  continues the sequence) ends the response without a terminal event: the
  client reconnects after its ``retry`` interval and asks again.  A run that
  cannot go on otherwise ends with ``event: sse-redis-error``.
* **Server shutdown** (``shutdown()``, hooked into uvicorn by itself): every
  open body ends within a second without a terminal event, so browsers
  reconnect to another instance and resume.

Open by default: without ``authorize`` every run is readable by whoever knows
its id.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import signal
import sys
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .control import AsyncRunControl
from .errors import SSERedisError, StreamNotFound, StreamStalled, StreamTrimmed
from .keys import validate_run_id
from .reader import AsyncStreamReader, cursor_of

# The type of the final event sent when the stream cannot go on.  Not
# ``error``: EventSource fires its own ``error`` event on every disconnect.
STREAM_ERROR_EVENT = "sse-redis-error"

STREAM_HEADERS: Mapping[str, str] = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
}
TEXT_HEADERS: Mapping[str, str] = {"Content-Type": "text/plain; charset=utf-8"}

# How much of a rejected value a 400 answer quotes.
MAX_QUOTED = 40

# ``authorize(request, run_id)`` returns True (allow), False or None (403), or an
# HTTP status to answer with (e.g. 404 to hide that the run exists); may be async.
Authorize = Callable[[Any, str], "bool | int | Awaitable[bool | int | None] | None"]

_REASONS = {StreamNotFound: "not_found", StreamStalled: "stalled", StreamTrimmed: "trimmed"}


@dataclass(frozen=True)
class Answer:
    """What to send: a status, its headers, and for 200 the SSE body (bytes,
    ending by itself); for 4xx a short plain-text ``text``; for 204 why, in
    ``reason``: ``"unknown"`` (no such run) or ``"ended"`` (nothing after the
    cursor), which protocols that never answer 204 tell apart."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: AsyncIterator[bytes] | None = None
    text: str = ""
    reason: str = ""


def stream_error_event(exc: SSERedisError) -> str:
    """The final event for a stream that cannot go on: ``event: sse-redis-error``
    with ``{"reason": "not_found" | "stalled" | "trimmed" | "error", "message": ...}``."""
    reason = next((name for cls, name in _REASONS.items() if isinstance(exc, cls)), "error")
    data = json.dumps({"reason": reason, "message": str(exc)})
    return f"event: {STREAM_ERROR_EVENT}\ndata: {data}\n\n"


def resume_cursor(last_event_id: str | None, query: Mapping[str, str]) -> int:
    """Where to resume: the ``Last-Event-ID`` header, else the ``last_event_id``
    or ``starting_after`` query parameter, else 0.  ``ValueError`` (its text
    quoting at most ``MAX_QUOTED`` characters) if malformed."""
    value = last_event_id
    if value is None:
        value = query.get("last_event_id", query.get("starting_after"))
    if value is None:
        return 0
    try:
        return cursor_of(None, value)
    except ValueError:
        raise ValueError(f"the cursor must be a seq id (digits), not {quoted(value)}") from None


def quoted(value: str) -> str:
    """``repr(value)``, cut to ``MAX_QUOTED`` characters: a rejected value in an answer."""
    return repr(value) if len(value) <= MAX_QUOTED else repr(value[:MAX_QUOTED]) + f"... ({len(value)} characters)"


async def verdict_of(authorize: Authorize | None, request: Any, run_id: str) -> bool | int:
    """``authorize(request, run_id)`` awaited if need be: ``True`` to serve,
    ``False`` for 403, or the HTTP status it chose; ``True`` without one."""
    if authorize is None:
        return True
    verdict = authorize(request, run_id)
    if inspect.isawaitable(verdict):
        verdict = await verdict
    if verdict is True:
        return True
    return False if verdict is None or verdict is False else int(verdict)


async def serve_run(
    reader: AsyncStreamReader,
    run_id: str,
    *,
    last_event_id: str | None = None,
    query: Mapping[str, str] | None = None,
    verdict: bool | int = True,
    control: AsyncRunControl | None = None,
    retry_ms: int | None = None,
    until: asyncio.Event | None = None,
) -> Answer:
    """The answer to a request for ``run_id``'s stream (see the module's
    docstring).  ``control`` defaults to a run control on the reader's Redis
    and keys; ``retry_ms`` goes in the first event's ``retry:`` field;
    ``until``, when set, ends the body early (as ``shutdown()`` does)."""
    if verdict is not True:
        return Answer(403 if verdict is False else int(verdict))
    try:
        validate_run_id(run_id)
        cursor = resume_cursor(last_event_id, query or {})
    except (TypeError, ValueError) as exc:
        return Answer(400, TEXT_HEADERS, text=str(exc) if len(str(exc)) < 200 else "malformed run id")
    if retry_ms is not None and (isinstance(retry_ms, bool) or not isinstance(retry_ms, int) or retry_ms < 0):
        raise ValueError(f"retry_ms must be a non-negative int, not {retry_ms!r}")
    control = control if control is not None else control_of(reader)
    known, info = True, None
    try:
        info = await control.status(run_id)
    except SSERedisError:
        known = False  # no status to go by (e.g. no rights on it): the stream alone decides
    if known and info is None:
        return Answer(204, reason="unknown")  # no status and no stream: unknown, or expired
    if info is not None and info.state != "running" and cursor >= info.last_seq:
        return Answer(204, reason="ended")  # the client has it all
    chunks = reader.read(run_id, starting_after=cursor)
    first: str | None = None
    if info is None or info.state != "running":
        # Ended with chunks to send, or unknown to the run control: the first
        # chunk tells (a stream that is not there gets 204, not an error).
        try:
            first = await chunks.__anext__()
        except StopAsyncIteration:
            return Answer(204, reason="ended")
        except StreamNotFound:
            return Answer(204, reason="unknown")
        except SSERedisError as exc:
            retry = f"retry: {retry_ms}\n" if retry_ms is not None else ""
            return Answer(200, STREAM_HEADERS, _one(retry + stream_error_event(exc)))
    body = _Body(chunks, first, control, run_id, retry_ms, until)
    return Answer(200, STREAM_HEADERS, body.run())


class _Body:
    """One response body: the run's chunks as bytes, ``retry:`` in the first
    event, ended early by ``until`` or ``shutdown()``."""

    def __init__(
        self,
        chunks: AsyncIterator[str],
        first: str | None,
        control: AsyncRunControl,
        run_id: str,
        retry_ms: int | None,
        until: asyncio.Event | None,
    ) -> None:
        self.chunks, self.first, self.control, self.run_id = chunks, first, control, run_id
        self.retry = f"retry: {retry_ms}\n" if retry_ms is not None else ""
        self.until = until

    def stamp(self, chunk: str) -> bytes:
        # ``retry:`` rides on the first real event: a block of its own would
        # reach some clients (httpx-sse) as an empty message.
        if self.retry and not chunk.startswith(":"):
            chunk, self.retry = self.retry + chunk, ""
        return chunk.encode()

    async def run(self) -> AsyncIterator[bytes]:
        stop = register_open()
        try:
            if self.first is not None:
                yield self.stamp(self.first)
            async for chunk in _until(self.chunks, stop, self.until):
                yield self.stamp(chunk)
        except (StreamStalled, StreamNotFound) as exc:
            # Still running: stalled (its writer may be restarting), or
            # registered with no stream yet past the reader's missing timeout
            # (its model is slow to start). No terminal: the client comes back
            # after its retry interval and asks again.
            if not await self._still_running():
                yield stream_error_event(exc).encode()
        except SSERedisError as exc:
            yield stream_error_event(exc).encode()
        finally:
            unregister_open(stop)
            await self.chunks.aclose()  # type: ignore[attr-defined]

    async def _still_running(self) -> bool:
        try:
            info = await self.control.status(self.run_id)
        except SSERedisError:
            return False
        return info is not None and info.state == "running"


async def _one(text: str) -> AsyncIterator[bytes]:
    yield text.encode()


async def _until(chunks: AsyncIterator[str], stop: asyncio.Event, until: asyncio.Event | None) -> AsyncIterator[str]:
    """``chunks`` until ``stop`` (or ``until``) is set, whichever comes first.
    The pending read is never left running: it is cancelled and awaited when
    the body ends for any reason (a client gone cancels the body), so the
    caller may close ``chunks`` then."""
    stops = [asyncio.ensure_future(event.wait()) for event in (stop, until) if event is not None]
    nxt: asyncio.Future[str] | None = None
    try:
        while True:
            nxt = asyncio.ensure_future(chunks.__anext__())
            done, _ = await asyncio.wait({nxt, *stops}, return_when=asyncio.FIRST_COMPLETED)
            if nxt not in done:
                return
            try:
                chunk = nxt.result()
            except StopAsyncIteration:
                return
            nxt = None
            yield chunk
    finally:
        for waiter in stops:
            waiter.cancel()
        if nxt is not None and not nxt.done():
            nxt.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, SSERedisError):
                await nxt


# ------------------------------------------------------------------ run control per reader

_controls: weakref.WeakKeyDictionary[AsyncStreamReader, AsyncRunControl] = weakref.WeakKeyDictionary()


def control_of(reader: AsyncStreamReader) -> AsyncRunControl:
    """The run control ``serve_run`` uses when given none: one on the reader's
    Redis, keys and backend, made once per reader (adapters that also cancel
    or ask a status share it)."""
    control = _controls.get(reader)
    if control is None:
        sync = reader.sync
        control = AsyncRunControl(sync._url, keys=sync._key, cluster=sync.cluster, backend=sync.backend)
        _controls[reader] = control
    return control


# ------------------------------------------------------------------ shutdown

# Every open body's stop event, with its loop: ``shutdown()`` may be called
# from a signal handler or another thread.
_open: dict[asyncio.Event, asyncio.AbstractEventLoop] = {}
_open_lock = threading.Lock()
_shutting_down = False


def register_open() -> asyncio.Event:
    """A new open body's (or long wait's) stop event, which ``shutdown()``
    sets; give it back with ``unregister_open`` when the body ends."""
    _hook_servers()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with _open_lock:
        _open[stop] = loop
        if _shutting_down:
            stop.set()
    return stop


def unregister_open(stop: asyncio.Event) -> None:
    with _open_lock:
        _open.pop(stop, None)


def shutdown() -> None:
    """End every open stream body now, without a terminal event, so that
    clients reconnect (to another instance) and resume; new bodies end at
    once.  Safe from a signal handler and from any thread."""
    global _shutting_down
    with _open_lock:
        _shutting_down = True
        opened = list(_open.items())
    for stop, loop in opened:
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(stop.set)


def _hook_servers(*, chain: bool = True) -> None:
    """Servers wait for open responses to finish before they shut down, and a
    stream does not finish: have SIGTERM and SIGINT call ``shutdown()`` first.
    uvicorn's handler is patched on its class (before it installs it, when
    this module is imported by the app it loads), and whatever handler is in
    place when a body opens on the main thread is chained (``chain``).  Servers that
    stop otherwise: call ``shutdown()`` from their shutdown hook."""
    uvicorn_server = sys.modules.get("uvicorn.server")
    server = getattr(uvicorn_server, "Server", None)
    handle_exit = getattr(server, "handle_exit", None)
    if handle_exit is not None and not getattr(handle_exit, "_sse_redis", False):

        def exiting(self: Any, sig: int, frame: Any) -> None:
            shutdown()
            handle_exit(self, sig, frame)

        exiting._sse_redis = True  # type: ignore[attr-defined]
        server.handle_exit = exiting  # type: ignore[union-attr]
    if chain and threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            _chain_signal(signum)


def _chain_signal(signum: signal.Signals) -> None:
    previous = signal.getsignal(signum)
    if getattr(previous, "_sse_redis", False) or not callable(previous):
        return  # ours already, or the default action / ignored: the process ends anyway

    def chained(sig: int, frame: Any) -> None:
        shutdown()
        previous(sig, frame)

    chained._sse_redis = True  # type: ignore[attr-defined]
    with contextlib.suppress(ValueError, OSError):
        signal.signal(signum, chained)


_hook_servers(chain=False)  # signals are chained only once a body is open: serving, not merely imported


__all__ = [
    "STREAM_ERROR_EVENT",
    "STREAM_HEADERS",
    "Answer",
    "Authorize",
    "control_of",
    "quoted",
    "register_open",
    "resume_cursor",
    "serve_run",
    "shutdown",
    "stream_error_event",
    "unregister_open",
    "verdict_of",
]
