"""The OpenAI Responses streaming resume over the stored log (issue 16).

    from starlette.applications import Starlette
    from sse_redis import AsyncStreamReader
    from sse_redis.protocols import openai

    reader = AsyncStreamReader("redis://localhost:6379/0", ping_interval=15)
    app = Starlette(routes=openai.routes(reader))

    # then, with the official client:
    client = OpenAI(base_url="http://host/v1", api_key="...")
    for event in client.responses.retrieve(run_id, stream=True, starting_after=n): ...
    client.responses.cancel(run_id)

For runs (run id = response id) whose stored chunks are Responses stream
events (``event: response.output_text.delta`` and JSON data with a ``type``):

* ``GET /v1/responses/{response_id}?stream=true&starting_after=N``: one SSE
  event per stored chunk after seq ``N``, ``event: <type>`` and the JSON data
  with ``sequence_number`` overwritten by the chunk's seq id (1, 2, 3, ...;
  events proxied from an upstream carry their own numbers, from 0).  No
  ``id:`` field: the ``openai`` client's SSE decoder keeps the last id, and a
  keep-alive comment after one would reach it as an empty event it cannot
  parse.  The stream ends after ``response.completed``, ``response.failed`` or
  ``response.incomplete``, and at the run's terminal: ``[DONE]`` ends it with
  nothing more, a cancel (``event: cancelled``) becomes ``response.incomplete``
  whose response has status ``cancelled``, an error terminal an ``error``
  event.  Unknown run: 404; a finished run with nothing after ``N``: an empty
  stream.  The rest is the serving core's (``sse_redis.serving.serve_run``).
* ``GET /v1/responses/{response_id}`` (no ``stream=true``): the Response
  object as the log knows it (see ``response_object``).
* ``POST /v1/responses/{response_id}/cancel``: the run control's cancel, then
  the Response object (status ``cancelled``; a run that had already ended
  answers its final object, as the API does for a second cancel).

``authorize(request, response_id)`` as in the serving core guards all three;
without it every run is readable and cancellable by whoever knows its id.
Errors are OpenAI's JSON ``{"error": {"message", "type", "param", "code"}}``.
``docs/protocols.md`` has the full mapping and what the log cannot give.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from .. import serving
from ..control import AsyncRunControl, RunInfo
from ..errors import SSERedisError
from ..keys import validate_run_id
from ..reader import AsyncStreamReader, events_of
from ..serving import STREAM_ERROR_EVENT, Authorize

JSONObject = dict[str, Any]

# The events after which a Responses stream is over.
FINAL_EVENTS: Final = frozenset({"response.completed", "response.failed", "response.incomplete"})
# The events that carry the whole Response object as it stands.
LIFECYCLE_EVENTS: Final = frozenset({"response.created", "response.queued", "response.in_progress", *FINAL_EVENTS})

# How far into the log the first Response object is looked for, and how far
# back from its top the final one (``response.completed`` then ``[DONE]``).
HEAD_ENTRIES: Final = 8
TAIL_ENTRIES: Final = 4
# A lookup read never waits longer than this for an entry the status promised.
LOOKUP_TIMEOUT: Final = 5.0

CANCEL_REASON: Final = "cancelled through POST /v1/responses/{id}/cancel"

_ERROR_TYPES: Final = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error"}


def routes(
    reader: AsyncStreamReader,
    *,
    control: AsyncRunControl | None = None,
    authorize: Authorize | None = None,
) -> list[BaseRoute]:
    """``GET /v1/responses/{response_id}`` (streaming with ``stream=true``)
    and ``POST /v1/responses/{response_id}/cancel`` over ``reader``'s runs.
    ``control`` defaults to the serving core's run control of ``reader``."""

    def control_of() -> AsyncRunControl:
        return control if control is not None else serving.control_of(reader)

    async def retrieve(request: Request) -> Response:
        response_id = request.path_params["response_id"]
        verdict = await serving.verdict_of(authorize, request, response_id)
        if request.query_params.get("stream", "").lower() in ("true", "1"):
            return await _stream(request, reader, control_of(), response_id, verdict)
        refused = _refusal(verdict, response_id)
        if refused is not None:
            return refused
        info = await control_of().status(response_id)
        if info is None:
            return _not_found(response_id)
        return JSONResponse(await response_object(reader, response_id, info))

    async def cancel(request: Request) -> Response:
        response_id = request.path_params["response_id"]
        refused = _refusal(await serving.verdict_of(authorize, request, response_id), response_id)
        if refused is not None:
            return refused
        run_control = control_of()
        await run_control.cancel(response_id, CANCEL_REASON)  # False: ended already, or unknown
        info = await run_control.status(response_id)
        if info is None:
            return _not_found(response_id)
        return JSONResponse(await response_object(reader, response_id, info))

    return [
        Route("/v1/responses/{response_id}", retrieve, methods=["GET"]),
        Route("/v1/responses/{response_id}/cancel", cancel, methods=["POST"]),
    ]


# ------------------------------------------------------------------ streaming


async def _stream(
    request: Request, reader: AsyncStreamReader, control: AsyncRunControl, response_id: str, verdict: bool | int
) -> Response:
    starting_after = request.query_params.get("starting_after")
    query = {} if starting_after is None else {"starting_after": starting_after}
    answer = await serving.serve_run(reader, response_id, query=query, verdict=verdict, control=control)
    # Unknown, or ended with nothing after the cursor: the API has a 404 for
    # the one and an empty stream for the other.
    if answer.status == 204 and answer.reason == "unknown":
        return _not_found(response_id)
    if answer.status == 204:
        return StreamingResponse(_nothing(), headers=dict(serving.STREAM_HEADERS))
    if answer.body is None:
        return _error(answer.status, answer.text or _status_text(answer.status, response_id), "starting_after")
    body = _Events(reader, response_id, answer.body).run()
    return StreamingResponse(body, status_code=answer.status, headers=dict(answer.headers))


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield  # an async generator that yields nothing


class _Events:
    """The serving core's body (stamped chunks) as Responses stream events."""

    def __init__(self, reader: AsyncStreamReader, response_id: str, body: AsyncIterator[bytes]) -> None:
        self.reader, self.response_id, self.body = reader, response_id, body
        self.codec = reader.sync._module
        self.seq = 0  # the last seq id sent
        self.snapshot: dict[str, Any] | None = None  # the last Response object seen in this read

    async def run(self) -> AsyncIterator[bytes]:
        try:
            async for raw in self.body:
                text = raw.decode()
                if text.startswith(":"):
                    yield raw  # a keep-alive comment
                    continue
                for event in events_of(self.codec, text):
                    out, last = await self.convert(event)
                    if out:
                        yield out.encode()
                    if last:
                        return
        finally:
            with contextlib.suppress(SSERedisError):
                await self.body.aclose()  # type: ignore[attr-defined]

    async def convert(self, event: Mapping[str, str | int]) -> tuple[str, bool]:
        """The Responses event for a stored one, and whether the stream ends after it."""
        name, data = str(event.get("event", "message")), str(event.get("data", ""))
        if "id" in event and str(event["id"]).isdigit():
            self.seq = int(event["id"])
        if name == "cancelled":
            incomplete = {"type": "response.incomplete", "sequence_number": self.seq}
            return _sse("response.incomplete", {**incomplete, "response": await self.cancelled_response()}), True
        if name in ("error", STREAM_ERROR_EVENT):
            return _sse("error", self.error_event(data, name)), True
        payload = _json_object(data)
        if payload is None:
            return "", data.strip() == "[DONE]"  # not a Responses event (the client could not parse it)
        kind = payload.get("type")
        if not isinstance(kind, str):
            if name == "message":
                return "", False
            payload = {"type": name, **payload}
            kind = name
        payload["sequence_number"] = self.seq
        if kind in LIFECYCLE_EVENTS and isinstance(payload.get("response"), dict):
            self.snapshot = payload["response"]
        return _sse(kind, payload), kind in FINAL_EVENTS

    def error_event(self, data: str, name: str) -> dict[str, Any]:
        """An ``error`` event for the run's error terminal, or for the serving
        core's ``sse-redis-error`` (which has no seq of its own: the last sent)."""
        stored = _json_object(data) or {}
        if name == STREAM_ERROR_EVENT:
            code, message = stored.get("reason", "error"), stored.get("message", "the stream cannot go on")
        else:
            code, message = stored.get("code") or "server_error", stored.get("error") or stored.get("message")
        return {
            "type": "error",
            "code": str(code),
            "message": str(message or "the response failed"),
            "param": None,
            "sequence_number": self.seq,
        }

    async def cancelled_response(self) -> dict[str, Any]:
        snapshot = self.snapshot
        if snapshot is None:
            snapshot = await _head_snapshot(self.reader, self.response_id, None)
        return _with_status(snapshot, self.response_id, "cancelled", None)


def _sse(kind: str, payload: Mapping[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps(payload, separators=(',', ':'), ensure_ascii=False)}\n\n"


def _json_object(data: str) -> dict[str, Any] | None:
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# ------------------------------------------------------------------ the Response object


async def response_object(reader: AsyncStreamReader, response_id: str, info: RunInfo) -> dict[str, Any]:
    """The run's Response object as the log knows it: the one its final
    event (``response.completed``/``failed``/``incomplete``) carries when it
    ended with one; else the first one stored (``response.created``, ...)
    with ``status`` set from the run's state (``in_progress`` while running,
    ``cancelled``, ``failed`` with the stored error, ``completed``); else a
    bare object with the id, status and ``created_at`` only.  ``output`` is
    what that object holds: it is not rebuilt from the deltas."""
    if info.state != "running":
        final, error = await _tail(reader, response_id, info.last_seq)
        if final is not None:
            return final
    else:
        error = None
    snapshot = await _head_snapshot(reader, response_id, info)
    status = {"running": "in_progress"}.get(info.state, info.state)
    if info.state == "running" and snapshot is not None and snapshot.get("status") == "queued":
        status = "queued"
    created = int(info.started_at) if info.started_at is not None else None
    return _with_status(snapshot, response_id, status, error if info.state == "failed" else None, created)


def _with_status(
    snapshot: Mapping[str, Any] | None,
    response_id: str,
    status: str,
    error: Mapping[str, Any] | None,
    created_at: int | None = None,
) -> dict[str, Any]:
    base: dict[str, Any] = dict(snapshot) if snapshot is not None else {"id": response_id, "object": "response"}
    if snapshot is None:
        base.update(created_at=created_at or 0, output=[], error=None, incomplete_details=None)
    base["status"] = status
    if error is not None:
        base["error"] = dict(error)
    return base


async def _head_snapshot(reader: AsyncStreamReader, response_id: str, info: RunInfo | None) -> dict[str, Any] | None:
    """The first Response object stored (``response.created`` and the like),
    looked for in the first ``HEAD_ENTRIES`` entries (never past the top the
    status gave, so a running run's read never waits)."""
    last = HEAD_ENTRIES if info is None else min(HEAD_ENTRIES, info.last_seq)
    if last <= 0:
        return None
    async for seq, name, data in _entries(reader, response_id, 0, last):
        payload = _json_object(data)
        kind = payload.get("type", name) if payload is not None else None
        if payload is not None and kind in LIFECYCLE_EVENTS and isinstance(payload.get("response"), dict):
            response: dict[str, Any] = payload["response"]
            return response
        if seq >= last:
            break
    return None


async def _tail(
    reader: AsyncStreamReader, response_id: str, top: int
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """An ended run's final Response object (its last final event near the
    top), and the error its error terminal stored, if any."""
    final: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    async for _seq, name, data in _entries(reader, response_id, max(top - TAIL_ENTRIES, 0), top):
        payload = _json_object(data)
        if payload is None:
            continue
        if name == "error":
            error = {"code": str(payload.get("code") or "server_error"), "message": str(payload.get("error") or "")}
        elif payload.get("type") in FINAL_EVENTS and isinstance(payload.get("response"), dict):
            final = payload["response"]
    return final, error


async def _entries(
    reader: AsyncStreamReader, response_id: str, after: int, last: int
) -> AsyncIterator[tuple[int, str, str]]:
    """``(seq, event, data)`` of the stored events after ``after``, up to seq ``last``."""
    events = reader.read_events(
        response_id, starting_after=after, idle_timeout=LOOKUP_TIMEOUT, missing_timeout=LOOKUP_TIMEOUT
    )
    try:
        async for event in events:
            seq = int(event.get("id", 0))
            yield seq, str(event.get("event", "message")), str(event.get("data", ""))
            if seq >= last:
                return
    except SSERedisError:
        return  # gone, trimmed or stalled meanwhile: what was found stands
    finally:
        await events.aclose()  # type: ignore[attr-defined]


# ------------------------------------------------------------------ errors


def _refusal(verdict: bool | int, response_id: str) -> Response | None:
    """The error answer for a refused or malformed request; ``None`` to go on."""
    if verdict is not True:
        status = 403 if verdict is False else int(verdict)
        return _error(status, _status_text(status, response_id))
    try:
        validate_run_id(response_id)
    except (TypeError, ValueError):
        return _error(400, "malformed response id", "response_id")
    return None


def _status_text(status: int, response_id: str) -> str:
    if status == 404:
        return f"Response with id '{response_id[:64]}' not found."
    if status == 403:
        return "You are not allowed to access this response."
    return f"HTTP {status}"


def _not_found(response_id: str) -> Response:
    return _error(404, _status_text(404, response_id))


def _error(status: int, message: str, param: str | None = None) -> Response:
    """OpenAI's error body: the client raises the matching ``APIStatusError``."""
    kind = _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    body = {"error": {"message": message, "type": kind, "param": param if status == 400 else None, "code": None}}
    return JSONResponse(body, status_code=status)


__all__ = ["FINAL_EVENTS", "response_object", "routes"]
