"""Serve a run's stream from Quart (``pip install 'sse-redis[quart]'``).

    from quart import Quart, request
    from sse_redis import AsyncStreamReader
    from sse_redis.quart import stream_run

    app = Quart(__name__)
    reader = AsyncStreamReader("redis://localhost:6379/0", ping_interval=15)

    def may_read(request, run_id: str) -> bool | int:
        return owns(session.get("user"), run_id) or 404

    @app.get("/runs/<run_id>/stream")
    async def stream(run_id: str):
        return await stream_run(request, reader, run_id, authorize=may_read, retry_ms=1000)

**Open by default:** without ``authorize`` every run is readable by whoever
knows its id.  ``authorize(request, run_id)`` (sync or async) returns True to
serve, False for 403, or the HTTP status to answer with (404 hides that the
run exists).

The browser's ``EventSource`` resumes by itself: every event carries
``id: <seq>``, sent back as ``Last-Event-ID`` on reconnect (else the
``last_event_id`` or ``starting_after`` query parameter is the cursor).  The
statuses and the body are the serving core's (``sse_redis.serving``): 200
and the stream, 204 for a run that ended at the cursor or is unknown, 400
for a malformed cursor or run id, 403 (or yours) from ``authorize``.  The
streaming response has no ``timeout`` (Quart's ``RESPONSE_TIMEOUT``, 60 s,
would cut every longer run).

**Server shutdown.** Serve from the process that receives the signal:
``hypercorn --workers 0 app:app``, or ``hypercorn.asyncio.serve(app, config)``
from your own script (tested).  Then nothing is needed: when the first stream
opens, the serving core chains ``sse_redis.serving.shutdown()`` onto the
process's SIGTERM and SIGINT handlers, the server's own: on either signal,
every open stream ends within a second without a terminal event (browsers
reconnect, to another instance, and resume), and the server, no longer
waiting on them, exits.

With hypercorn's default of worker processes (``--workers 1`` or more), a
worker learns of the shutdown from its parent through an event, not a
signal, and nothing in the app hears of it in time: Quart's
``after_serving``/``while_serving`` hooks and ``app.shutdown_event`` come
with the lifespan shutdown, which hypercorn sends only after waiting
``--graceful-timeout`` (3 s) for the open responses.  It then cuts the
streams (no terminal event; browsers reconnect and resume all the same).
With a ``shutdown_trigger`` of your own for ``hypercorn.asyncio.serve``, call
``sse_redis.serving.shutdown()`` in it when it fires; it is safe from a
signal handler and from any thread.
"""

from __future__ import annotations

import asyncio

from quart import Request, Response

from .control import AsyncRunControl
from .reader import AsyncStreamReader
from .serving import Authorize, serve_run, verdict_of


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
    """A response streaming ``run_id`` from where the client left off (no
    ``timeout``), or a plain one with the status (and a short text for a 4xx).
    ``request`` is Quart's ``request`` (the context's).

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
        query={name: values[-1] for name, values in request.args.lists()},
        verdict=verdict,
        control=control,
        retry_ms=retry_ms,
        until=until,
    )
    if answer.body is None:
        response = Response(answer.text, status=answer.status, headers=dict(answer.headers))
        if not answer.text:
            del response.headers["Content-Type"]  # Quart's default, text/html, for no body at all
        return response
    response = Response(answer.body, status=answer.status, headers=dict(answer.headers))
    response.timeout = None  # a stream lasts as long as its run
    return response


__all__ = ["stream_run"]
