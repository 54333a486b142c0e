"""LangGraph Server's join-stream contract over the stored log, for
``langgraph-sdk``'s ``client.runs.join_stream`` (``pip install
'sse-redis[starlette]'``).

    from starlette.applications import Starlette
    from sse_redis import AsyncStreamReader
    from sse_redis.protocols import langgraph

    reader = AsyncStreamReader("redis://localhost:6379/0", ping_interval=5)
    app = Starlette(routes=langgraph.routes(reader))

    # the client:  async for part in get_client(url=...).runs.join_stream(thread_id, run_id,
    #                                                                   last_event_id="-1"): ...

The runs served are runs whose stored chunks are LangGraph stream parts, one
part per chunk (``event: metadata``, ``event: values``, ``event:
messages/partial``, ``event: updates``, ..., JSON data; ``stream_part`` makes
one), written by any sse-redis writer or processor.  Routes:

* ``GET /threads/{thread_id}/runs/{run_id}/stream``: join the run's stream
  from ``Last-Event-ID`` (a seq id; ``-1`` or none replays everything), each
  part with ``id: <seq>``.  ``stream_mode`` (repeated, or a JSON array)
  keeps the parts of those modes, as LangGraph Server filters them;
  ``cancel_on_disconnect=true`` cancels the run (``RunControl.cancel``) when
  the client goes before the run ended.  The run's terminal becomes the
  protocol's end: ``data: [DONE]`` and a cancel's ``event: cancelled`` are
  sent as ``event: end``, an ``event: error`` is sent as it is.
* ``POST /threads/{thread_id}/runs/{run_id}/cancel``: ``client.runs.cancel``.
* ``GET /threads/{thread_id}/runs/{run_id}``: the run's status, which the SDK
  asks after a stream that closed without ``end`` (a server restart) to
  decide whether to reconnect with its ``Last-Event-ID``.

Never HTTP 204 (the SDK raises on a response that is not
``text/event-stream``): a run ended at the cursor gets 200 and ``event: end``
at once, an unknown run 404 (``NotFoundError`` in the SDK).  ``thread_id`` is
not part of the stored run's key by default (``run_key``): the log has no
threads, so nothing checks that the run belongs to the thread; do it in
``authorize(request, run_id)`` (``request.path_params["thread_id"]``) when it
matters.  Open by default: without ``authorize`` every run is readable and
cancellable by whoever knows its id.  ``docs/protocols.md`` has the mapping.
"""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import AsyncIterator, Callable, Iterable
from http import HTTPStatus
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from .. import serving
from ..control import AsyncRunControl, RunInfo
from ..errors import SSERedisError
from ..reader import PING, AsyncStreamReader
from ..serving import STREAM_ERROR_EVENT, STREAM_HEADERS, Authorize

END_EVENT = "end"
# ``data: null``: the SDK yields it as ``StreamPart("end", None, id)``, and an
# ``EventSource`` dispatches an event only when it has a data line.
_END = "event: end\ndata: null\n\n"
_CORE_ERROR = f"event: {STREAM_ERROR_EVENT}\n"
# The serving core's reasons as the exception names LangGraph puts in ``error``.
_ERROR_NAMES = {"not_found": "StreamNotFound", "stalled": "StreamStalled", "trimmed": "StreamTrimmed"}
# sse-redis run states as LangGraph run statuses.
RUN_STATUS = {"running": "running", "completed": "success", "failed": "error", "cancelled": "interrupted"}
_TRUE = {"true", "yes", "1"}  # LangGraph Server's reading of boolean query parameters

# ``run_key(thread_id, run_id)``: the stored run id to serve.
RunKey = Callable[[str, str], str]

# Cancels started by a disconnect, kept until done (the loop holds tasks weakly).
_cancels: set[asyncio.Task[bool]] = set()


def run_id_only(thread_id: str, run_id: str) -> str:
    """The default ``run_key``: the run id alone (LangGraph's run ids are UUIDs)."""
    return run_id


def stream_part(event: str, data: Any) -> str:
    """One LangGraph stream part as an SSE chunk to store:
    ``stream_part("values", {"messages": [...]})``.  ``data`` is JSON-encoded;
    a ``"run_id": None`` in it is filled with the run id when read (so
    ``stream_part("metadata", {"run_id": None, "attempt": 1})`` is the
    metadata part LangGraph sends first)."""
    if not event or any(c in event for c in "\r\n\0"):
        raise ValueError(f"a part's event is a non-empty name without line breaks, not {event!r}")
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"event: {event}\ndata: {payload}\n\n"


def stream_modes(values: Iterable[str]) -> list[str]:
    """The ``stream_mode`` query values as a list of modes: each value a mode
    or a JSON array of modes (LangGraph Server reads both); empty ones dropped."""
    modes: list[str] = []
    for value in values:
        if value.startswith("["):
            try:
                parsed = json.loads(value)
            except ValueError:
                parsed = None
            if isinstance(parsed, list):
                modes.extend(str(mode) for mode in parsed if mode)
                continue
        if value:
            modes.append(value)
    return modes


def mode_matches(event: str, modes: list[str]) -> bool:
    """Whether a part of event ``event`` passes a ``stream_mode`` filter, by
    LangGraph Server's rule: no filter passes all; ``messages`` (or
    ``messages-tuple``) passes every ``messages...`` event; ``values|ns``
    (a subgraph's) passes under ``values``.  ``end`` and ``error`` always pass."""
    if not modes or event in modes or event in (END_EVENT, "error"):
        return True
    if ("messages" in modes or "messages-tuple" in modes) and event.startswith("messages"):
        return True
    return "|" in event and event.partition("|")[0] in modes


def routes(
    reader: AsyncStreamReader,
    *,
    control: AsyncRunControl | None = None,
    authorize: Authorize | None = None,
    run_key: RunKey = run_id_only,
) -> list[BaseRoute]:
    """The LangGraph Server routes over ``reader`` (see the module docstring).

    ``control`` cancels and answers status (default: a run control on the
    reader's Redis and keys); ``authorize(request, run_id)`` as in the serving
    core, called with the stored run id for every route (``request.method``
    tells a cancel from a read); ``run_key(thread_id, run_id)`` maps the path
    to the stored run id (default: the run id alone)."""
    api = _Api(reader, control, authorize, run_key)
    return [
        Route("/threads/{thread_id}/runs/{run_id}/stream", api.join, methods=["GET"]),
        Route("/threads/{thread_id}/runs/{run_id}/cancel", api.cancel, methods=["POST"]),
        Route("/threads/{thread_id}/runs/{run_id}", api.get, methods=["GET"]),
    ]


class _Api:
    def __init__(
        self, reader: AsyncStreamReader, control: AsyncRunControl | None, authorize: Authorize | None, run_key: RunKey
    ) -> None:
        self.reader, self.authorize, self.run_key = reader, authorize, run_key
        self._control = control
        self.codec: Any = reader.sync._module

    @property
    def control(self) -> AsyncRunControl:
        return self._control if self._control is not None else serving.control_of(self.reader)

    async def _status(self, key: str) -> RunInfo | None:
        try:
            return await self.control.status(key)
        except SSERedisError:
            return None  # no status to go by: as unknown

    def _paths(self, request: Request) -> tuple[str, str, str]:
        thread_id, run_id = request.path_params["thread_id"], request.path_params["run_id"]
        return thread_id, run_id, self.run_key(thread_id, run_id)

    async def join(self, request: Request) -> Response:
        thread_id, run_id, key = self._paths(request)
        verdict = await serving.verdict_of(self.authorize, request, key)
        last_event_id = request.headers.get("last-event-id")
        if last_event_id is not None and last_event_id.strip() == "-1":
            last_event_id = "0"  # LangGraph's "replay everything"
        answer = await serving.serve_run(
            self.reader, key, last_event_id=last_event_id, verdict=verdict, control=self._control
        )
        run_path = f"/threads/{quote(thread_id, safe='')}/runs/{quote(run_id, safe='')}"
        # As LangGraph Server: the SDK reconnects to Location with its Last-Event-ID
        # after a drop, and asks the run at Content-Location after a close without `end`.
        headers = {**STREAM_HEADERS, "Location": f"{run_path}/stream", "Content-Location": run_path}
        if answer.status == 204 and answer.reason == "unknown":
            return _detail(404, f"Run {run_id} not found")
        if answer.status == 204:
            return Response(_END, headers=headers)  # ended, and the client has it all
        if answer.body is None:
            return _detail(answer.status, answer.text)
        cancel = request.query_params.get("cancel_on_disconnect", "false").lower() in _TRUE
        modes = stream_modes(request.query_params.getlist("stream_mode"))
        body = self._parts(answer.body, modes, key if cancel else None)
        return StreamingResponse(body, headers=headers)

    async def _parts(self, body: AsyncIterator[bytes], modes: list[str], cancel: str | None) -> AsyncIterator[bytes]:
        """The serving core's body as LangGraph parts: the terminal as ``end``
        (or the ``error`` it is), the core's own error event as ``error``,
        parts filtered by ``modes``; a body left before its end (the client
        went) cancels run ``cancel`` when given."""
        finished = False
        try:
            async for raw in body:
                out = self._part(raw, modes)
                if out is not None:
                    yield out
            finished = True
        finally:
            if not finished and cancel is not None:
                reason = "client disconnected from the run stream (cancel_on_disconnect)"
                task = asyncio.get_running_loop().create_task(self.control.cancel(cancel, reason))
                _cancels.add(task)
                task.add_done_callback(_cancels.discard)
            await body.aclose()  # type: ignore[attr-defined]

    def _part(self, raw: bytes, modes: list[str]) -> bytes | None:
        text = raw.decode()
        if text == PING:
            return raw
        if text.startswith(_CORE_ERROR):
            return _core_error(self.codec, text).encode()
        if self.codec.is_terminal(text):
            parser = self.codec.SSEParser()
            if any(event.event == "error" for event in parser.feed(text)):
                return raw
            seq = parser.last_event_id
            return (self.codec.set_event_id(_END, seq) if seq else _END).encode()
        if modes and not any(mode_matches(event.event, modes) for event in self.codec.SSEParser().feed(text)):
            return None
        return raw

    async def cancel(self, request: Request) -> Response:
        key = self._paths(request)[2]
        verdict = await serving.verdict_of(self.authorize, request, key)
        if verdict is not True:
            return _detail(403 if verdict is False else int(verdict))
        action = request.query_params.get("action", "interrupt")
        if action != "interrupt":
            return _detail(422, f"action={action!r} is not supported: a stored run can be interrupted, not rolled back")
        try:
            if await self.control.cancel(
                key, f"{action} requested via POST /threads/{{thread_id}}/runs/{{run_id}}/cancel"
            ):
                return Response(status_code=202)
        except (TypeError, ValueError) as exc:
            return _detail(400, str(exc))
        if await self._status(key) is None:
            return _detail(404, "No runs found to cancel.")
        return Response(status_code=202)  # already ended: nothing to do, as LangGraph Server

    async def get(self, request: Request) -> Response:
        thread_id, run_id, key = self._paths(request)
        verdict = await serving.verdict_of(self.authorize, request, key)
        if verdict is not True:
            return _detail(403 if verdict is False else int(verdict))
        try:
            info = await self.control.status(key)
        except (TypeError, ValueError) as exc:
            return _detail(400, str(exc))
        except SSERedisError as exc:
            return _detail(503, f"the run's status cannot be read: {exc}")
        if info is None:
            return _detail(404, f"Run {run_id} not found")
        return JSONResponse(
            {
                "run_id": run_id,
                "thread_id": thread_id,
                "status": RUN_STATUS.get(info.state, info.state),
                "created_at": _iso(info.started_at),
                "updated_at": _iso(info.updated_at),
            }
        )


def _core_error(codec: Any, text: str) -> str:
    """The serving core's ``sse-redis-error`` event as LangGraph's ``error``:
    ``{"error": <the sse-redis exception's name>, "message": ...}``."""
    events = codec.SSEParser().feed(text)
    try:
        detail = json.loads(events[-1].data)
    except (IndexError, ValueError):
        detail = {}
    name = _ERROR_NAMES.get(detail.get("reason"), "SSERedisError")
    data = json.dumps({"error": name, "message": detail.get("message", "")})
    chunk: str = codec.encode_event(data, event="error")
    return chunk


def _detail(status: int, text: str = "") -> Response:
    """An error answer as LangGraph Server's: JSON ``{"detail": ...}``, which
    the SDK raises as its typed error (``NotFoundError``, ...) with that message."""
    if not text:
        try:
            text = HTTPStatus(status).phrase
        except ValueError:
            text = f"HTTP {status}"
    return JSONResponse({"detail": text}, status_code=status)


def _iso(seconds: float | None) -> str | None:
    return None if seconds is None else datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat()


__all__ = ["END_EVENT", "RUN_STATUS", "RunKey", "mode_matches", "routes", "run_id_only", "stream_modes", "stream_part"]
