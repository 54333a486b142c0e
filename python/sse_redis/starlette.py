"""Serve a run's stream from Starlette or FastAPI (``pip install 'sse-redis[starlette]'``).

    from sse_redis import AsyncStreamReader
    from sse_redis.starlette import stream_run

    reader = AsyncStreamReader("redis://localhost:6379/0", ping_interval=15)

    @app.get("/runs/{run_id}/stream")
    async def stream(request: Request, run_id: str):
        return await stream_run(request, reader, run_id, authorize=may_read)

The browser's ``EventSource`` resumes by itself: every chunk carries
``id: <seq>``, and on reconnect the browser sends it back as
``Last-Event-ID``.  A reconnect to a finished or unknown run gets HTTP 204,
the one answer that makes ``EventSource`` stop reconnecting.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from .errors import SSERedisError, StreamNotFound, StreamStalled, StreamTrimmed
from .reader import AsyncStreamReader

# The type of the final event sent when the stream cannot go on.  Not
# ``error``: EventSource fires its own ``error`` event on every disconnect.
STREAM_ERROR_EVENT = "sse-redis-error"

HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
}

# ``authorize(request, run_id)`` returns True (allow), False (403), or an HTTP
# status to answer with (e.g. 404 to hide that the run exists); may be async.
Authorize = Callable[[Request, str], bool | int | Awaitable[bool | int]]

_REASONS = {StreamNotFound: "not_found", StreamStalled: "stalled", StreamTrimmed: "trimmed"}


def stream_error_event(exc: SSERedisError) -> str:
    """The final event for a stream that cannot go on: ``event: sse-redis-error``
    with ``{"reason": "not_found" | "stalled" | "trimmed" | "error", "message": ...}``."""
    reason = next((name for cls, name in _REASONS.items() if isinstance(exc, cls)), "error")
    data = json.dumps({"reason": reason, "message": str(exc)})
    return f"event: {STREAM_ERROR_EVENT}\ndata: {data}\n\n"


def resume_cursor(request: Request) -> int:
    """Where to resume: the ``Last-Event-ID`` header, else the ``last_event_id``
    or ``starting_after`` query parameter, else 0.  ``ValueError`` if malformed."""
    from .reader import cursor_of

    header = request.headers.get("last-event-id")
    if header is not None:
        return cursor_of(None, header)
    query = request.query_params
    if "last_event_id" in query:
        return cursor_of(None, query["last_event_id"])
    if "starting_after" in query:
        return cursor_of(None, query["starting_after"])
    return 0


async def stream_run(
    request: Request,
    reader: AsyncStreamReader,
    run_id: str,
    *,
    authorize: Authorize | None = None,
    retry_ms: int | None = None,
    until: asyncio.Event | None = None,
) -> Response:
    """A response streaming ``run_id`` from where the client left off.

    ``retry_ms`` tells the browser how soon to reconnect after a drop.
    ``until``, when set, ends the response early (server shutdown, tests).
    Statuses: 200 streaming; 204 run finished at the cursor or unknown;
    400 malformed cursor or run id; 403/other from ``authorize``.
    """
    if authorize is not None:
        verdict = authorize(request, run_id)
        if inspect.isawaitable(verdict):
            verdict = await verdict
        if verdict is not True:
            return Response(status_code=403 if verdict is False or verdict is None else int(verdict))
    try:
        cursor = resume_cursor(request)
        chunks = reader.read(run_id, starting_after=cursor)
    except (TypeError, ValueError) as exc:
        return Response(str(exc), status_code=400, media_type="text/plain")

    # Peek at the first chunk: a run with nothing more to send gets 204.
    try:
        first = await chunks.__anext__()
    except (StopAsyncIteration, StreamNotFound):
        return Response(status_code=204)
    except SSERedisError as exc:
        first = stream_error_event(exc)
        chunks = _nothing()
    prelude = f"retry: {int(retry_ms)}\n\n" if retry_ms is not None else ""
    body = _body(prelude + first, chunks, until)
    return StreamingResponse(body, media_type="text/event-stream", headers=HEADERS)


async def _nothing() -> AsyncIterator[str]:
    return
    yield  # pragma: no cover  (makes this an async generator)


async def _body(first: str, chunks: AsyncIterator[str], until: asyncio.Event | None) -> AsyncIterator[str]:
    """The response body; closing the reader at once when the client leaves
    (Starlette cancels us) or ``until`` is set."""
    try:
        yield first
        if until is None:
            async for chunk in chunks:
                yield chunk
        else:
            async for chunk in _until(chunks, until):
                yield chunk
    except SSERedisError as exc:
        yield stream_error_event(exc)
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


async def _until(chunks: AsyncIterator[str], until: asyncio.Event) -> AsyncIterator[str]:
    """``chunks`` until ``until`` is set, whichever comes first."""
    stop = asyncio.ensure_future(until.wait())
    try:
        while True:
            nxt = asyncio.ensure_future(chunks.__anext__())
            done, _ = await asyncio.wait({nxt, stop}, return_when=asyncio.FIRST_COMPLETED)
            if nxt not in done:
                nxt.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await nxt
                return
            try:
                yield nxt.result()
            except StopAsyncIteration:
                return
    finally:
        stop.cancel()


__all__ = ["STREAM_ERROR_EVENT", "Authorize", "resume_cursor", "stream_error_event", "stream_run"]
