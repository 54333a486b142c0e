"""``sse_redis.starlette.stream_run`` over real HTTP: a tiny Starlette app
(and the FastAPI example app) served by uvicorn on a free loopback port in a
thread, read with httpx, so statuses, headers, resumes and disconnects are
the real thing.  Runs are written to the session Valkey by a real writer."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

from fixtures_http import Served, serve_app  # noqa: E402
from sse_redis import AsyncStreamReader, StreamWriter  # noqa: E402
from sse_redis._pure import SSEParser  # noqa: E402
from sse_redis.starlette import STREAM_ERROR_EVENT, stream_run  # noqa: E402

DONE = "data: [DONE]\n\n"
TIMEOUT = httpx.Timeout(10.0)  # a read that hangs fails the test instead of the suite
QUIET = dict(idle_timeout=30.0, missing_timeout=5.0)  # timeouts that must not end a read


# ----------------------------------------------------------------- helpers


def new_run() -> str:
    return f"st-{uuid.uuid4().hex}"


def payload(i: int) -> str:
    return f'data: {{"i":{i},"run_id":null,"seq_id":null}}\n\n'


def write_run(url: str, backend: str, run: str, n: int, complete: bool = True, **options: Any) -> None:
    """``payload(1..n)``, then ``[DONE]`` as seq ``n + 1`` when ``complete``."""
    with StreamWriter(url, backend=backend, **options) as writer:
        for i in range(1, n + 1):
            assert writer.write(run, payload(i)) == i
        if complete:
            assert writer.complete(run) == n + 1
        writer.flush()


def events_of(body: str) -> list[Any]:
    return SSEParser().feed(body)


def check_events(events: list[Any], run: str, after: int, last: int, done: bool = True) -> None:
    """``events`` are exactly seqs ``after+1 .. last``, once each, in order, with
    ``id:`` set and run_id/seq_id patched; the last is ``[DONE]`` when ``done``."""
    assert [int(e.id) for e in events] == list(range(after + 1, last + 1))
    for seq, event in zip(range(after + 1, last + 1), events, strict=True):
        assert event.event == "message"
        if done and seq == last:
            assert event.data == "[DONE]"
        else:
            assert json.loads(event.data) == {"i": seq, "run_id": run, "seq_id": seq}


def error_event(body: str) -> dict[str, Any]:
    """The final ``sse-redis-error`` event of ``body``, decoded."""
    events = events_of(body)
    assert events, f"no event in {body!r}"
    last = events[-1]
    assert last.event == STREAM_ERROR_EVENT, f"last event is {last.event!r}: {body[-300:]!r}"
    assert STREAM_ERROR_EVENT == "sse-redis-error"
    assert "event: error\n" not in body, "EventSource treats `event: error` as its own disconnect event"
    return json.loads(last.data)


def read_until(it: Iterator[str], marker: str) -> str:
    """What ``it`` yields up to and including ``marker``; ``it`` stays open."""
    body = ""
    for text in it:
        body += text
        if marker in body:
            break
    return body


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def make_app(reader: AsyncStreamReader, **options: Any) -> Starlette:
    """``GET /runs/{run_id}/stream`` -> ``stream_run(..., **options)``;
    ``POST /stop`` sets the ``until`` event (in the server's own loop)."""
    until: asyncio.Event | None = options.get("until")

    async def stream(request: Request) -> Response:
        return await stream_run(request, reader, request.path_params["run_id"], **options)

    async def stop(_request: Request) -> Response:
        assert until is not None
        until.set()
        return Response(status_code=204)

    return Starlette(
        routes=[
            Route("/runs/{run_id}/stream", stream),
            Route("/stop", stop, methods=["POST"]),
        ]
    )


@pytest.fixture
def app(served: Served, redis_url: str, backend: str) -> Callable[..., tuple[httpx.Client, AsyncStreamReader]]:
    """``app(reader_options, **stream_run_options)``: a client of a fresh app
    serving ``stream_run`` with its own ``AsyncStreamReader`` (returned too)."""
    clients: list[httpx.Client] = []

    def start(reader_options: dict[str, Any] | None = None, **options: Any) -> tuple[httpx.Client, AsyncStreamReader]:
        reader = AsyncStreamReader(redis_url, backend=backend, **(reader_options or QUIET))
        served.readers.append(reader)
        base = serve_app(served, make_app(reader, **options))
        client = httpx.Client(base_url=base, timeout=TIMEOUT)
        clients.append(client)
        return client, reader

    yield start
    for client in clients:
        client.close()


def stream_url(run: str) -> str:
    return f"/runs/{run}/stream"


# ----------------------------------------------------------------- the response


def test_headers_and_body(app, redis_url, backend):
    run = new_run()
    write_run(redis_url, backend, run, 5)
    client, _reader = app()
    response = client.get(stream_url(run))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    body = response.text
    for seq in range(1, 7):
        assert f"id: {seq}\n" in body
    check_events(events_of(body), run, 0, 6)


def test_full_run_streams_live(app, redis_url, backend):
    """Chunks written while the client is connected arrive, then [DONE] ends it."""
    run = new_run()
    client, _reader = app()
    writer = StreamWriter(redis_url, backend=backend)
    try:
        writer.write(run, payload(1))
        writer.flush()
        body = ""
        with client.stream("GET", stream_url(run)) as response:
            assert response.status_code == 200
            it = response.iter_text()
            body += read_until(it, "id: 1\n")
            for i in range(2, 21):
                writer.write(run, payload(i))
            writer.complete(run)
            for text in it:
                body += text
    finally:
        writer.close()
    check_events(events_of(body), run, 0, 21)


RESUMES = [
    ({"Last-Event-ID": "4"}, "", 4),
    ({}, "?last_event_id=7", 7),
    ({}, "?starting_after=2", 2),
    ({"Last-Event-ID": "5"}, "?starting_after=2", 5),  # the header wins
    ({"Last-Event-ID": "6"}, "?last_event_id=1", 6),
    ({}, "?last_event_id=3&starting_after=8", 3),  # last_event_id before starting_after
    ({"Last-Event-ID": "0"}, "", 0),
    ({}, "", 0),
]


def test_resume_cursor(app, redis_url, backend):
    """One server for every case (each case starts no server of its own: speed)."""
    run = new_run()
    write_run(redis_url, backend, run, 9)
    client, _reader = app()
    for headers, query, after in RESUMES:
        response = client.get(stream_url(run) + query, headers=headers)
        assert response.status_code == 200, (headers, query)
        try:
            check_events(events_of(response.text), run, after, 10)
        except AssertionError as exc:
            raise AssertionError(f"{headers} {query!r}: {exc}") from exc


def test_resume_reads_every_chunk_exactly_once_across_reconnects(app, redis_url, backend):
    """Drop the connection mid-run and resume with the last id seen, like EventSource."""
    run = new_run()
    write_run(redis_url, backend, run, 30)
    client, _reader = app()
    seen: list[Any] = []
    last_id = None
    while True:
        headers = {} if last_id is None else {"Last-Event-ID": last_id}
        with client.stream("GET", stream_url(run), headers=headers) as response:
            if response.status_code == 204:
                break
            assert response.status_code == 200
            parser = SSEParser()
            got = 0
            for text in response.iter_text():
                new = parser.feed(text)
                seen += new
                got += len(new)
                if got >= 7:
                    break  # drop the connection
            last_id = parser.last_event_id or last_id
    check_events(seen, run, 0, 31)


MALFORMED = [
    ({"Last-Event-ID": "abc"}, ""),
    ({"Last-Event-ID": "-1"}, ""),
    ({"Last-Event-ID": "1" * 30}, ""),
    ({}, "?starting_after=-1"),
    ({}, "?starting_after=x"),
    ({}, "?last_event_id=1.5"),
    ({"Last-Event-ID": "abc"}, "?starting_after=1"),  # the header is used, and it is bad
]


def test_malformed_cursor_is_400(app, redis_url, backend):
    run = new_run()
    write_run(redis_url, backend, run, 2)
    client, reader = app()
    for headers, query in MALFORMED:
        response = client.get(stream_url(run) + query, headers=headers)
        assert response.status_code == 400, (headers, query, response.status_code)
        assert response.text, "a 400 says why"
    assert reader.sync.hub.stats()["subscriptions"] == 0


BAD_RUN_IDS = [
    "bad%01run",  # a control character
    "bad%0Arun",  # a newline
    "r" * 300,  # longer than 256 characters
    "a%7Bb%7D",  # braces (a cluster hash tag)
    "a{b}",
]


def test_bad_run_id_is_400(app):
    client, _reader = app()
    for path_run in BAD_RUN_IDS:
        response = client.get(f"/runs/{path_run}/stream")
        assert response.status_code == 400, (path_run, response.status_code, response.text)


def test_finished_run_at_its_end_is_204(app, redis_url, backend):
    run = new_run()
    write_run(redis_url, backend, run, 3)
    client, _reader = app()
    for headers, query in (({"Last-Event-ID": "4"}, ""), ({}, "?starting_after=4"), ({"Last-Event-ID": "9"}, "")):
        started = time.monotonic()
        response = client.get(stream_url(run) + query, headers=headers)
        assert response.status_code == 204, (headers, query)
        assert response.content == b""
        assert time.monotonic() - started < 3.0
    # One before the end still streams the [DONE].
    response = client.get(stream_url(run), headers={"Last-Event-ID": "3"})
    assert response.status_code == 200
    check_events(events_of(response.text), run, 3, 4)


def test_unknown_run_is_204(app):
    client, _reader = app(dict(missing_timeout=0.3, idle_timeout=30.0))
    started = time.monotonic()
    response = client.get(stream_url(new_run()))
    assert response.status_code == 204
    assert response.content == b""
    assert time.monotonic() - started < 5.0


# ----------------------------------------------------------------- authorize


def test_authorize_false_is_403(app, redis_url, backend):
    run = new_run()
    write_run(redis_url, backend, run, 2)
    calls: list[str] = []

    def authorize(request: Request, run_id: str) -> bool:
        calls.append(run_id)
        assert isinstance(request, Request)
        return False

    client, reader = app(authorize=authorize)
    response = client.get(stream_url(run))
    assert response.status_code == 403
    assert calls == [run]
    assert reader.sync.hub.stats()["subscriptions"] == 0


def test_authorize_status_is_answered(app, redis_url, backend):
    run = new_run()
    write_run(redis_url, backend, run, 2)
    client, _reader = app(authorize=lambda request, run_id: 404)
    assert client.get(stream_url(run)).status_code == 404


def test_authorize_async(app, redis_url, backend):
    run = new_run()
    write_run(redis_url, backend, run, 2)

    async def authorize(request: Request, run_id: str) -> bool:
        await asyncio.sleep(0.01)
        return request.query_params.get("token") == "secret"

    client, _reader = app(authorize=authorize)
    assert client.get(stream_url(run)).status_code == 403
    assert client.get(stream_url(run) + "?token=nope").status_code == 403
    response = client.get(stream_url(run) + "?token=secret")
    assert response.status_code == 200
    check_events(events_of(response.text), run, 0, 3)


def test_authorize_true_streams(app, redis_url, backend):
    run = new_run()
    write_run(redis_url, backend, run, 4)
    client, _reader = app(authorize=lambda request, run_id: True)
    response = client.get(stream_url(run), headers={"Last-Event-ID": "2"})
    assert response.status_code == 200
    check_events(events_of(response.text), run, 2, 5)


# ----------------------------------------------------------------- retry, errors, pings


def test_retry_ms_starts_the_body(app, redis_url, backend):
    run = new_run()
    write_run(redis_url, backend, run, 3)
    client, _reader = app(retry_ms=1234)
    response = client.get(stream_url(run))
    assert response.status_code == 200
    assert response.text.startswith("retry: 1234\n")
    check_events(events_of(response.text), run, 0, 4)


def test_trimmed_run_ends_with_sse_redis_error(app, redis_url, backend, plain_client):
    run = new_run()
    write_run(redis_url, backend, run, 500, max_len=5)
    stored = plain_client(redis_url).xrange("sse:run:" + run, count=1)
    assert int(stored[0][1]["seq_id"]) > 1, "MAXLEN ~ 5 trimmed nothing: the test needs trimming"
    client, _reader = app()
    response = client.get(stream_url(run))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = events_of(response.text)
    assert len(events) == 1, response.text[:500]
    assert error_event(response.text)["reason"] == "trimmed"


def test_trimmed_with_retry_still_one_event(app, redis_url, backend):
    run = new_run()
    write_run(redis_url, backend, run, 500, max_len=5)
    client, _reader = app(retry_ms=500)
    response = client.get(stream_url(run))
    assert response.status_code == 200
    assert response.text.startswith("retry: 500\n")
    assert len(events_of(response.text)) == 1
    assert error_event(response.text)["reason"] == "trimmed"


def test_stalled_running_run_ends_without_a_terminal(app, redis_url, backend):
    """A run that stalls while its status says running (its writer may be
    restarting) ends the response with no terminal and no error event: the
    client reconnects after its retry interval and asks again."""
    run = new_run()
    write_run(redis_url, backend, run, 3, complete=False)
    client, _reader = app(dict(idle_timeout=0.5, missing_timeout=5.0), retry_ms=250)
    started = time.monotonic()
    response = client.get(stream_url(run))
    assert time.monotonic() - started < 8.0
    assert response.status_code == 200
    assert response.text.startswith("retry: 250\ndata: ")  # in the first event, not a block of its own
    check_events(events_of(response.text), run, 0, 3, done=False)
    assert STREAM_ERROR_EVENT not in response.text
    again = client.get(stream_url(run), headers={"Last-Event-ID": "3"})
    assert again.status_code == 200  # still running: not a 204, which would stop the client for good


def test_pings_on_an_idle_live_run(app, redis_url, backend):
    run = new_run()
    write_run(redis_url, backend, run, 1, complete=False)
    client, _reader = app(dict(ping_interval=0.2, idle_timeout=30.0, missing_timeout=5.0))
    body = ""
    started = time.monotonic()
    with client.stream("GET", stream_url(run)) as response:
        assert response.status_code == 200
        for text in response.iter_text():
            body += text
            if body.count(": ping\n") >= 2:
                break
            assert time.monotonic() - started < 8.0, "no pings"
    assert "id: 1\n" in body
    assert body.count(": ping\n") >= 2


# ----------------------------------------------------------------- disconnects, until


def test_disconnect_frees_the_subscription_at_once(app, redis_url, backend):
    run = new_run()
    write_run(redis_url, backend, run, 1, complete=False)
    # No pings, long idle timeout: only the disconnect can end the read.
    client, reader = app(dict(idle_timeout=60.0, missing_timeout=5.0))
    hub = reader.sync.hub
    with client.stream("GET", stream_url(run)) as response:
        assert response.status_code == 200
        # Keep the iterator: dropping an httpx text iterator closes the response.
        it = response.iter_text()
        body = ""
        while "id: 1\n" not in body:
            body += next(it)
        assert hub.stats()["subscriptions"] == 1
        time.sleep(0.3)
        assert hub.stats()["subscriptions"] == 1, "the read ended while the client was still there"
    wait_for(lambda: hub.stats()["subscriptions"] == 0, 2.0, "the subscription to be freed after a disconnect")


def test_disconnects_of_many_streams(app, redis_url, backend):
    run = new_run()
    write_run(redis_url, backend, run, 2, complete=False)
    client, reader = app(dict(idle_timeout=60.0, missing_timeout=5.0))
    hub = reader.sync.hub
    streams = []
    iterators = []  # kept: dropping an httpx text iterator closes its response
    try:
        for _ in range(5):
            ctx = client.stream("GET", stream_url(run), headers={"Last-Event-ID": "1"})
            response = ctx.__enter__()
            streams.append(ctx)
            assert response.status_code == 200
            iterators.append(response.iter_text())
            body = ""
            while "id: 2\n" not in body:
                body += next(iterators[-1])
        wait_for(lambda: hub.stats()["subscriptions"] == 5, 2.0, "five subscriptions")
    finally:
        for ctx in streams:
            ctx.__exit__(None, None, None)
    wait_for(lambda: hub.stats()["subscriptions"] == 0, 2.0, "every subscription to be freed")


def test_until_ends_the_response_early(app, redis_url, backend):
    run = new_run()
    write_run(redis_url, backend, run, 2, complete=False)
    client, reader = app(dict(idle_timeout=60.0, missing_timeout=5.0), until=asyncio.Event())
    body = ""
    with client.stream("GET", stream_url(run)) as response:
        assert response.status_code == 200
        it = response.iter_text()
        body += read_until(it, "id: 2\n")
        assert client.post("/stop").status_code == 204
        started = time.monotonic()
        for text in it:  # ends once the server ends the response
            body += text
        assert time.monotonic() - started < 3.0
    assert "[DONE]" not in body
    assert STREAM_ERROR_EVENT not in body
    check_events(events_of(body), run, 0, 2, done=False)
    wait_for(lambda: reader.sync.hub.stats()["subscriptions"] == 0, 2.0, "the subscription to be freed")


def test_until_unset_streams_to_done(app, redis_url, backend):
    run = new_run()
    write_run(redis_url, backend, run, 6)
    client, _reader = app(until=asyncio.Event())
    response = client.get(stream_url(run))
    assert response.status_code == 200
    check_events(events_of(response.text), run, 0, 7)


# ----------------------------------------------------------------- the example app


@pytest.fixture
def example(served: Served, redis_url: str, backend: str) -> Callable[..., httpx.Client]:
    pytest.importorskip("fastapi")
    from sse_redis.tools.example_app import create_app

    clients: list[httpx.Client] = []

    def start(chunks: int = 30, token_delay: float = 0.005) -> httpx.Client:
        base = serve_app(served, create_app(redis_url, backend=backend, chunks=chunks, token_delay=token_delay))
        client = httpx.Client(base_url=base, timeout=TIMEOUT)
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.close()


def test_example_app_smoke(example):
    client = example(chunks=30, token_delay=0.005)
    assert client.get("/").status_code == 200
    created = client.post("/runs")
    assert created.status_code == 201
    run = created.json()
    assert set(run) >= {"run_id", "token", "stream_url"}
    assert run["run_id"].startswith("run-")
    assert run["stream_url"] == f"/runs/{run['run_id']}/stream?token={run['token']}"

    response = client.get(run["stream_url"])
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.startswith("retry: ")
    events = events_of(response.text)
    assert [int(e.id) for e in events] == list(range(1, 31))
    assert events[-1].data == "[DONE]"
    # Resuming at the end: 204, which stops EventSource.
    done = client.get(run["stream_url"], headers={"Last-Event-ID": "30"})
    assert done.status_code == 204
    resumed = client.get(run["stream_url"], headers={"Last-Event-ID": "25"})
    assert [int(e.id) for e in events_of(resumed.text)] == list(range(26, 31))

    # Access control.
    assert client.get(f"/runs/{run['run_id']}/stream").status_code == 403
    assert client.get(f"/runs/{run['run_id']}/stream?token=" + "0" * 32).status_code == 403
    assert client.get(f"/runs/other-{uuid.uuid4().hex}/stream?token={run['token']}").status_code == 404
    assert client.post(f"/runs/{run['run_id']}/drop").status_code == 403
    dropped = client.post(f"/runs/{run['run_id']}/drop?token={run['token']}")
    assert dropped.status_code == 200
    assert dropped.json() == {"dropped": 0}


def test_example_app_drop_cuts_open_streams(example):
    client = example(chunks=150, token_delay=0.01)
    run = client.post("/runs").json()
    body = ""
    with client.stream("GET", run["stream_url"]) as response:
        assert response.status_code == 200
        it = response.iter_text()
        body += read_until(it, "id: 3\n")
        dropped = client.post(f"/runs/{run['run_id']}/drop?token={run['token']}")
        assert dropped.json() == {"dropped": 1}
        started = time.monotonic()
        for text in it:
            body += text
        assert time.monotonic() - started < 3.0, "the stream went on after the drop"
    events = events_of(body)
    assert "[DONE]" not in body
    assert [int(e.id) for e in events] == list(range(1, len(events) + 1))
    # The browser would now reconnect with Last-Event-ID and get the rest.
    last = events[-1].id
    rest = client.get(run["stream_url"], headers={"Last-Event-ID": last})
    assert rest.status_code == 200
    more = events_of(rest.text)
    assert [int(e.id) for e in more] == list(range(int(last) + 1, 151))
    assert more[-1].data == "[DONE]"


def test_example_app_serves_the_protocols_beside_its_own_endpoint(example):
    """The same stored run under OpenAI's, LangGraph's and Durable Streams'
    routes, each client's way of sending the token accepted, none without it."""
    client = example(chunks=10, token_delay=0.001)
    run = client.post("/runs").json()
    run_id, token = run["run_id"], run["token"]
    ids = [e.id for e in events_of(client.get(run["stream_url"]).text)]  # the whole run, to its terminal
    durable = client.get(f"/streams/{run_id}", params={"offset": "-1", "token": token})
    assert durable.status_code == 200
    assert [m["id"] for m in durable.json()] == ids
    assert durable.headers["Stream-Closed"] == "true"
    openai = client.get(
        f"/v1/responses/{run_id}", params={"stream": "true"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert openai.status_code == 200
    assert openai.headers["content-type"].startswith("text/event-stream")
    langgraph = client.get(f"/threads/t-1/runs/{run_id}/stream", headers={"x-api-key": token})
    assert langgraph.status_code == 200
    assert langgraph.headers["content-type"].startswith("text/event-stream")
    for path in (f"/streams/{run_id}", f"/v1/responses/{run_id}?stream=true", f"/threads/t-1/runs/{run_id}/stream"):
        assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code in (401, 403, 404)
