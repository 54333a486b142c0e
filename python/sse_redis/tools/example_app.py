"""The example app: a FastAPI server that starts simulated LLM runs in the
background and streams them to browsers, resumably.

    POST /runs                      start a run -> {"run_id", "token", "stream_url"}
    GET  /runs/{run_id}/stream      the run as SSE (EventSource resumes with Last-Event-ID)
    POST /runs/{run_id}/drop        cut every open stream of the run (the page's button)
    POST /runs/{run_id}/cancel      stop the run, from whichever instance gets it (the Stop button)
    GET  /v1/responses/{run_id}?stream=true&starting_after=N       the OpenAI Responses resume
    GET  /threads/{thread_id}/runs/{run_id}/stream                 LangGraph's join-stream
    GET  /streams/{run_id}?offset=...&live=long-poll|sse           a Durable Streams read

The last three serve the same stored runs under other systems' resume
contracts (``sse_redis.protocols``); each expects runs stored in its own
event shape (see docs/protocols.md), which this app's simulated runs are not:
they are mounted to show how, and take the run's token as ``?token=``, as
``Authorization: Bearer`` (the OpenAI client's api_key) or ``x-api-key``
(langgraph-sdk's).
    GET  /                          the page

Readers need the run's token (``?token=``, since EventSource cannot set
headers): ``authorize`` shows where your own access control goes.
Run it with ``sse-redis serve`` (an embedded Valkey, or ``--redis-url``), or
on your own Redis with
``SSE_REDIS_URL=redis://localhost:6379/0 uvicorn --factory sse_redis.tools.example_app:app_from_env``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import secrets
import uuid
from collections.abc import AsyncIterator
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from ..control import AsyncRunControl
from ..processor import aprocess_stream
from ..protocols import durable_streams, langgraph
from ..protocols import openai as openai_protocol
from ..reader import AsyncStreamReader
from ..starlette import stream_run
from ..writer import AsyncStreamWriter
from .corpus import llm_run_chunks


def create_app(
    redis_url: str,
    *,
    backend: str | None = None,
    chunks: int = 120,
    token_delay: float = 0.03,
    secret: bytes | None = None,
    cluster: bool = False,
) -> FastAPI:
    """The app, streaming runs of ``chunks`` chunks, one every ``token_delay``
    seconds; ``cluster``: ``redis_url`` names a node of a Redis Cluster."""
    secret = secret or secrets.token_bytes(32)
    writer = AsyncStreamWriter(redis_url, backend=backend, cluster=cluster)
    reader = AsyncStreamReader(redis_url, backend=backend, cluster=cluster, ping_interval=15, missing_timeout=5)
    control = AsyncRunControl(redis_url, backend=backend, cluster=cluster)
    drops: dict[str, set[asyncio.Event]] = {}  # run -> the open streams' "stop" events
    tasks: set[asyncio.Task[str]] = set()

    def token_for(run_id: str) -> str:
        return hmac.new(secret, run_id.encode(), hashlib.sha256).hexdigest()[:32]

    def authorize(request: Request, run_id: str) -> bool | int:
        if not run_id.startswith("run-"):
            return 404
        return hmac.compare_digest(request.query_params.get("token", ""), token_for(run_id))

    def authorize_client(request: Request, run_id: str) -> bool | int:
        """The protocols' clients send the token as their API key."""
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        key = request.headers.get("x-api-key", "") or bearer
        if run_id.startswith("run-") and key and hmac.compare_digest(key, token_for(run_id)):
            return True
        return authorize(request, run_id)

    async def llm(n: int) -> AsyncIterator[str]:
        for chunk in llm_run_chunks(n, seed=uuid.uuid4().int % 1000):
            await asyncio.sleep(token_delay)
            yield chunk

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        for task in list(tasks):
            task.cancel()
        await writer.close()
        reader.close()
        await control.aclose()

    app = FastAPI(title="sse-redis example", lifespan=lifespan)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return resources.files("sse_redis.tools").joinpath("web/index.html").read_text()

    @app.post("/runs")
    async def start_run() -> JSONResponse:
        run_id = f"run-{uuid.uuid4().hex}"
        # Registered before its URL is handed out: a stream request that beats
        # the producer's first step must find a running run, not a 204.
        await control.start(run_id)
        task = asyncio.create_task(aprocess_stream(llm(chunks), writer, run_id))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        token = token_for(run_id)
        return JSONResponse(
            {"run_id": run_id, "token": token, "stream_url": f"/runs/{run_id}/stream?token={token}"},
            status_code=201,
        )

    @app.get("/runs/{run_id}/stream")
    async def stream(request: Request, run_id: str) -> Response:
        stop = asyncio.Event()
        drops.setdefault(run_id, set()).add(stop)
        response = await stream_run(
            request, reader, run_id, authorize=authorize, control=control, retry_ms=300, until=stop
        )
        if not hasattr(response, "body_iterator"):
            drops[run_id].discard(stop)
            return response
        original = response.body_iterator

        async def forget_when_done() -> AsyncIterator[str]:
            try:
                async for chunk in original:
                    yield chunk
            finally:
                drops.get(run_id, set()).discard(stop)

        response.body_iterator = forget_when_done()
        return response

    @app.post("/runs/{run_id}/drop")
    async def drop(request: Request, run_id: str) -> JSONResponse:
        if authorize(request, run_id) is not True:
            return JSONResponse({"error": "forbidden"}, status_code=403)
        open_streams = drops.pop(run_id, set())
        for stop in open_streams:
            stop.set()
        return JSONResponse({"dropped": len(open_streams)})

    @app.post("/runs/{run_id}/cancel")
    async def cancel(request: Request, run_id: str) -> JSONResponse:
        # Any instance can take this: the cancel is stored in Redis, and the
        # instance producing the run stops its source by push.
        if authorize(request, run_id) is not True:
            return JSONResponse({"error": "forbidden"}, status_code=403)
        return JSONResponse({"cancelled": await control.cancel(run_id, reason="stopped from the page")})

    for protocol in (openai_protocol, langgraph, durable_streams):
        app.router.routes.extend(protocol.routes(reader, control=control, authorize=authorize_client))
    return app


def app_from_env() -> FastAPI:
    """``create_app`` on ``$SSE_REDIS_URL`` (default: local 6379), for ``uvicorn --factory``."""
    return create_app(os.environ.get("SSE_REDIS_URL", "redis://127.0.0.1:6379/0"))
