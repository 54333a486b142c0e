"""Serve a run's stream from Litestar (``pip install 'sse-redis[litestar]'``).

    from litestar import Litestar, Request, Response, get
    from sse_redis import AsyncStreamReader
    from sse_redis.litestar import stream_run

    reader = AsyncStreamReader("redis://localhost:6379/0", ping_interval=15)

    def may_read(request: Request, run_id: str) -> bool | int:
        return request.user is not None and request.user.owns(run_id) or 404

    @get("/runs/{run_id:str}/stream")
    async def stream(request: Request, run_id: str) -> Response:
        return await stream_run(request, reader, run_id, authorize=may_read, retry_ms=1000)

    app = Litestar([stream])

**Open by default:** without ``authorize`` every run is readable by whoever
knows its id.  ``authorize(request, run_id)`` (sync or async) returns True to
serve, False for 403, or the HTTP status to answer with (404 hides that the
run exists).

The browser's ``EventSource`` resumes by itself: every event carries
``id: <seq>``, sent back as ``Last-Event-ID`` on reconnect (else the
``last_event_id`` or ``starting_after`` query parameter is the cursor).  The
statuses and the body are the serving core's (``sse_redis.serving``): 200
and the stream (a ``litestar.response.Stream``), 204 for a run that ended at
the cursor or is unknown, 400 for a malformed cursor or run id, 403 (or
yours) from ``authorize``.  The body is bytes already: return the response
as it is, not inside Litestar's ``ServerSentEvent``, which would encode every
event a second time.

**Server shutdown.** Litestar's ``on_shutdown`` hooks (and ``lifespan``
managers) run too late for streams: uvicorn sends the lifespan shutdown only
once the open responses have finished, and a stream does not finish.  Under
uvicorn nothing is needed (tested): when the first stream opens, the serving
core chains ``sse_redis.serving.shutdown()`` onto the process's SIGTERM and
SIGINT handlers, the server's own: on either signal, every open stream ends
within a second without a terminal event (browsers reconnect, to another
instance, and resume), and the server, no longer waiting on them, exits.
A server that stops by other means (no signal in the process that serves):
call ``sse_redis.serving.shutdown()`` when it begins to stop; it is safe
from a signal handler and from any thread.
"""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Request, Response
from litestar.response import Stream

from .control import AsyncRunControl
from .reader import AsyncStreamReader
from .serving import Authorize, serve_run, verdict_of


async def stream_run(
    request: Request[Any, Any, Any],
    reader: AsyncStreamReader,
    run_id: str,
    *,
    authorize: Authorize | None = None,
    control: AsyncRunControl | None = None,
    retry_ms: int | None = None,
    until: asyncio.Event | None = None,
) -> Response[Any]:
    """A response streaming ``run_id`` from where the client left off: a
    ``Stream``, or a plain ``Response`` with the status (and a short text
    for a 4xx).

    ``retry_ms`` tells the browser how soon to reconnect after a drop;
    ``control`` says whether the run exists (default: a run control on the
    reader's Redis and keys); ``until``, when set, ends the stream early.
    """
    verdict = await verdict_of(authorize, request, run_id)
    answer = await serve_run(
        reader,
        run_id,
        last_event_id=request.headers.get("Last-Event-ID"),
        # A repeated parameter: the last wins, as in Starlette.
        query={name: values[-1] for name, values in request.query_params.dict().items()},
        verdict=verdict,
        control=control,
        retry_ms=retry_ms,
        until=until,
    )
    headers = dict(answer.headers)
    if answer.body is None:
        return Response(answer.text, status_code=answer.status, headers=headers, media_type="text/plain")
    return Stream(answer.body, status_code=answer.status, headers=headers)


__all__ = ["stream_run"]
