"""Serve a run's stream from Django under ASGI (``pip install 'sse-redis[django]'``).

    from django.urls import path
    from sse_redis import AsyncStreamReader
    from sse_redis.django import stream_run

    reader = AsyncStreamReader("redis://localhost:6379/0", ping_interval=15)

    def may_read(request, run_id: str) -> bool | int:
        return request.user.is_authenticated and owns(request.user, run_id) or 404

    async def stream(request, run_id: str):
        return await stream_run(request, reader, run_id, authorize=may_read, retry_ms=1000)

    urlpatterns = [path("runs/<str:run_id>/stream", stream)]

**Open by default:** without ``authorize`` every run is readable by whoever
knows its id.  ``authorize(request, run_id)`` (sync or async) returns True to
serve, False for 403, or the HTTP status to answer with (404 hides that the
run exists).  The view must be ``async def`` and the project served by an
ASGI server (uvicorn, daphne): under WSGI a stream holds a worker thread for
its whole length.

The browser's ``EventSource`` resumes by itself: every event carries
``id: <seq>``, sent back as ``Last-Event-ID`` on reconnect (else the
``last_event_id`` or ``starting_after`` query parameter is the cursor).  The
statuses and the body are the serving core's (``sse_redis.serving``): 200
and the stream, 204 for a run that ended at the cursor or is unknown, 400
for a malformed cursor or run id, 403 (or yours) from ``authorize``.

**Server shutdown.** Django's ASGI handler refuses the ASGI lifespan
protocol, so Django itself hears nothing when the server stops.  Under
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

from django.http import HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse

from .control import AsyncRunControl
from .reader import AsyncStreamReader
from .serving import Authorize, serve_run, verdict_of


async def stream_run(
    request: HttpRequest,
    reader: AsyncStreamReader,
    run_id: str,
    *,
    authorize: Authorize | None = None,
    control: AsyncRunControl | None = None,
    retry_ms: int | None = None,
    until: asyncio.Event | None = None,
) -> HttpResponseBase:
    """A response streaming ``run_id`` from where the client left off: a
    ``StreamingHttpResponse`` over an async iterator, or a plain
    ``HttpResponse`` with the status (and a short text for a 4xx).

    ``retry_ms`` tells the browser how soon to reconnect after a drop;
    ``control`` says whether the run exists (default: a run control on the
    reader's Redis and keys); ``until``, when set, ends the stream early.
    """
    verdict = await verdict_of(authorize, request, run_id)
    answer = await serve_run(
        reader,
        run_id,
        last_event_id=request.headers.get("Last-Event-ID"),
        query=request.GET.dict(),
        verdict=verdict,
        control=control,
        retry_ms=retry_ms,
        until=until,
    )
    response: HttpResponseBase
    if answer.body is None:
        response = HttpResponse(answer.text, status=answer.status)
        if not answer.text:
            del response["Content-Type"]  # Django's default, text/html, for no body at all
    else:
        response = StreamingHttpResponse(answer.body, status=answer.status)
    for name, value in answer.headers.items():
        response[name] = value
    return response


__all__ = ["stream_run"]
