"""Serve a run's stream from Starlette or FastAPI (``pip install 'sse-redis[starlette]'``).

    from sse_redis import AsyncStreamReader
    from sse_redis.starlette import stream_run

    reader = AsyncStreamReader("redis://localhost:6379/0", ping_interval=15)

    def may_read(request: Request, run_id: str) -> bool:
        return request.session.get("user") == owner_of(run_id)

    @app.get("/runs/{run_id}/stream")
    async def stream(request: Request, run_id: str):
        return await stream_run(request, reader, run_id, authorize=may_read)

Without ``authorize`` every run is readable by whoever knows its id.

The browser's ``EventSource`` resumes by itself: every chunk carries
``id: <seq>``, and on reconnect the browser sends it back as
``Last-Event-ID``.  A request for a finished or unknown run gets HTTP 204,
the one answer that makes ``EventSource`` stop reconnecting; the rest of the
answers are the serving core's (``sse_redis.serving``).  On uvicorn, open
streams end by themselves when the server shuts down; on other servers call
``sse_redis.serving.shutdown()`` from the shutdown hook.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from . import serving
from .control import AsyncRunControl
from .reader import AsyncStreamReader
from .serving import STREAM_ERROR_EVENT, Authorize, stream_error_event


def resume_cursor(request: Request) -> int:
    """Where to resume: the ``Last-Event-ID`` header, else the ``last_event_id``
    or ``starting_after`` query parameter, else 0.  ``ValueError`` if malformed."""
    return serving.resume_cursor(request.headers.get("last-event-id"), request.query_params)


async def stream_run(
    request: Request,
    reader: AsyncStreamReader,
    run_id: str,
    *,
    authorize: Authorize | None = None,
    control: AsyncRunControl | None = None,
    retry_ms: int | None = None,
    until: asyncio.Event | None = None,
) -> Response:
    """A response streaming ``run_id`` from where the client left off.

    ``retry_ms`` tells the browser how soon to reconnect after a drop.
    ``until``, when set, ends the response early (tests, your own shutdown).
    ``control`` answers whether the run exists (default: a run control on
    the reader's Redis and keys).  Statuses: 200 streaming; 204 run finished
    at the cursor, or unknown; 400 malformed cursor or run id; 403/other
    from ``authorize``.
    """
    answer = await serving.serve_run(
        reader,
        run_id,
        last_event_id=request.headers.get("last-event-id"),
        query=request.query_params,
        verdict=await serving.verdict_of(authorize, request, run_id),
        control=control,
        retry_ms=retry_ms,
        until=until,
    )
    if answer.body is None:
        return Response(answer.text or None, status_code=answer.status, headers=dict(answer.headers))
    return StreamingResponse(answer.body, status_code=answer.status, headers=dict(answer.headers))


__all__ = ["STREAM_ERROR_EVENT", "Authorize", "resume_cursor", "stream_error_event", "stream_run"]
