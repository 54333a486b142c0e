"""The serving core's answers (``sse_redis.serving``), through the Starlette
helper under a real uvicorn and a real client: 204 at once for an unknown
run, 200 and a wait for a registered one, 204 for a reconnect to an ended
run, a short 400, ``retry:`` only inside a real event, sse-starlette
interop, and a SIGTERM that ends open streams at once.  Real servers, both
backends."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest

pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")
httpx_sse = pytest.importorskip("httpx_sse")

from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

from fixtures_http import Served, serve_app  # noqa: E402
from sse_redis import AsyncStreamReader, RunControl, StreamReader, StreamWriter  # noqa: E402
from sse_redis.tools.servers import free_port  # noqa: E402
from test_reader import new_run, payload, write_run  # noqa: E402

TIMEOUT = httpx.Timeout(30.0)


def make_app(reader: AsyncStreamReader, **options: Any) -> Starlette:
    from sse_redis.starlette import stream_run

    async def stream(request: Request) -> Response:
        return await stream_run(request, reader, request.path_params["run_id"], **options)

    return Starlette(routes=[Route("/runs/{run_id}/stream", stream)])


@pytest.fixture
def client(served: Served, redis_url: str, backend: str):
    """``client(reader_options, **stream_run_options)``: a client of a fresh app."""
    clients: list[httpx.Client] = []

    def start(reader_options: dict[str, Any] | None = None, **options: Any) -> httpx.Client:
        reader = AsyncStreamReader(redis_url, backend=backend, **(reader_options or {}))
        served.readers.append(reader)
        made = httpx.Client(base_url=serve_app(served, make_app(reader, **options)), timeout=TIMEOUT)
        clients.append(made)
        return made

    yield start
    for made in clients:
        made.close()


def test_unknown_run_gets_204_at_once(client):
    """Not a 200 with pings and an error event at the missing timeout: the
    README's own setup (ping_interval=15) answered 200 after 15 s before."""
    http = client(dict(ping_interval=15))
    started = time.monotonic()
    response = http.get(f"/runs/{new_run()}/stream")
    assert response.status_code == 204
    assert time.monotonic() - started < 2.0


def test_registered_run_with_no_chunk_gets_200_and_waits(client, redis_url, backend):
    """A Stop-less wait for the first token: the run is registered, so the
    answer is 200 at once, and its chunks arrive when written."""
    run = new_run()
    with RunControl(redis_url, backend=backend) as control:
        assert control.start(run)
    http = client(dict(ping_interval=0.2))
    got: list[Any] = []

    def read() -> None:
        with httpx_sse.connect_sse(http, "GET", f"/runs/{run}/stream") as source:
            got.append(source.response.status_code)
            got.extend(source.iter_sse())

    reading = threading.Thread(target=read, daemon=True)
    reading.start()
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    assert got == [200]  # answered before any chunk exists
    write_run(redis_url, backend, run, 3)
    reading.join(20)
    events = [e for e in got[1:] if e.data]
    assert [e.id for e in events] == ["1", "2", "3", "4"]
    assert events[-1].data == "[DONE]"


def test_reconnect_to_an_ended_run_gets_204(client, redis_url, backend):
    run = new_run()
    write_run(redis_url, backend, run, 3)
    http = client()
    assert http.get(f"/runs/{run}/stream", headers={"Last-Event-ID": "4"}).status_code == 204
    partial = http.get(f"/runs/{run}/stream", headers={"Last-Event-ID": "2"})
    assert partial.status_code == 200
    assert "id: 3" in partial.text
    assert "id: 4" in partial.text


def test_long_invalid_last_event_id_is_not_echoed_whole(client):
    http = client()
    value = "x" * 5000
    response = http.get(f"/runs/{new_run()}/stream", headers={"Last-Event-ID": value})
    assert response.status_code == 400
    assert len(response.text) < 200
    assert "5000 characters" in response.text


def test_retry_rides_on_the_first_event_not_a_block_of_its_own(client, redis_url, backend):
    """httpx-sse yields an empty message for a block with only ``retry:``:
    no such block is sent, and every event it yields is a real one."""
    run = new_run()
    write_run(redis_url, backend, run, 3)
    http = client(retry_ms=1500)
    with httpx_sse.connect_sse(http, "GET", f"/runs/{run}/stream") as source:
        events = list(source.iter_sse())
    assert [e.id for e in events] == ["1", "2", "3", "4"]
    assert all(e.data for e in events)
    assert events[0].retry == 1500


# ------------------------------------------------------------------ sse-starlette


def test_read_events_feed_sse_starlette_as_they_are(served, redis_url, backend):
    """``EventSourceResponse(reader.read_events(run))`` sends every event once
    with its seq id, the terminal included, and resumes from Last-Event-ID."""
    from sse_starlette import EventSourceResponse

    run = new_run()
    write_run(redis_url, backend, run, 5)
    reader = AsyncStreamReader(redis_url, backend=backend)
    served.readers.append(reader)

    async def stream(request: Request) -> Response:
        return EventSourceResponse(
            reader.read_events(run, last_event_id=request.headers.get("last-event-id")), ping=600
        )

    app = Starlette(routes=[Route("/stream", stream)])
    with httpx.Client(base_url=serve_app(served, app), timeout=TIMEOUT) as http:
        with httpx_sse.connect_sse(http, "GET", "/stream") as source:
            events = list(source.iter_sse())
        assert [e.id for e in events] == ["1", "2", "3", "4", "5", "6"]
        assert events[-1].data == "[DONE]"
        assert events[0].data == f'{{"i":1,"run_id":"{run}","seq_id":1}}'
        with httpx_sse.connect_sse(http, "GET", "/stream", headers={"Last-Event-ID": "4"}) as source:
            rest = list(source.iter_sse())
        assert [e.id for e in rest] == ["5", "6"]


def test_read_events_sync(redis_url, backend):
    run = new_run()
    with StreamWriter(redis_url, backend=backend) as writer:
        writer.write(run, "event: note\ndata: a\n\ndata: b\n\n")
        writer.write(run, payload(2))
        writer.complete(run)
    with StreamReader(redis_url, backend=backend) as reader:
        events = list(reader.read_events(run))
    assert events[0] == {"id": "1", "event": "note", "data": "a"}
    assert events[1] == {"id": "1", "data": "b"}
    assert [e["id"] for e in events[2:]] == ["2", "3"]


# ------------------------------------------------------------------ shutdown

APP = """
import os
from starlette.applications import Starlette
from starlette.routing import Route
from sse_redis import AsyncStreamReader
from sse_redis.starlette import stream_run

reader = AsyncStreamReader(os.environ["REDIS_URL"], backend=os.environ["BACKEND"], idle_timeout=600)

async def stream(request):
    return await stream_run(request, reader, request.path_params["run_id"])

app = Starlette(routes=[Route("/runs/{run_id}/stream", stream)])
"""


def test_sigterm_ends_open_streams_at_once(redis_url, backend, tmp_path):
    """uvicorn waits for open responses before it exits; a stream never ends
    by itself. With the serving core hooked in, SIGTERM ends the open stream
    within a second, with no terminal event (so the browser reconnects to
    another instance), and the server exits."""
    pytest.importorskip("uvicorn")
    run = new_run()
    write_run(redis_url, backend, run, 2, complete=False)
    (tmp_path / "sigterm_app.py").write_text(textwrap.dedent(APP))
    port = free_port()
    env = dict(os.environ, REDIS_URL=redis_url, BACKEND=backend, PYTHONPATH=str(tmp_path))
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "sigterm_app:app", "--port", str(port), "--log-level", "warning"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        body = ""
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=TIMEOUT) as http:
            while True:
                try:
                    with http.stream("GET", f"/runs/{run}/stream") as response:
                        assert response.status_code == 200
                        chunks = response.iter_text()
                        while "id: 2" not in body:
                            body += next(chunks)
                        proc.send_signal(signal.SIGTERM)
                        signalled = time.monotonic()
                        for text in chunks:
                            body += text
                        ended = time.monotonic() - signalled
                    break
                except httpx.ConnectError:
                    assert time.monotonic() < deadline, "uvicorn did not start"
                    time.sleep(0.1)
        proc.wait(timeout=15)
        assert ended < 2.0, f"the open stream ended {ended:.1f}s after SIGTERM"
        assert "[DONE]" not in body
        assert "sse-redis-error" not in body
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_until_ends_a_waiting_body_from_another_thread():
    """``shutdown()`` from another thread (a signal handler's) ends a body
    that is waiting on its loop."""
    from sse_redis import serving

    async def main() -> float:
        stop = asyncio.Event()

        async def never() -> Any:
            await asyncio.sleep(3600)
            yield ""

        body = serving._Body(never(), None, None, "r", None, stop)  # type: ignore[arg-type]
        started = time.monotonic()
        threading.Timer(0.2, lambda: asyncio.run_coroutine_threadsafe(_set(stop), loop)).start()
        loop = asyncio.get_running_loop()
        async for _ in body.run():
            pass
        return time.monotonic() - started

    async def _set(event: asyncio.Event) -> None:
        event.set()

    assert asyncio.run(main()) < 2.0


def test_pings_never_reach_an_sse_client_as_events(client, redis_url, backend):
    """Pings are a comment line with no blank line of its own: httpx-sse (which
    dispatches any block once an id was seen) yields no empty event for them."""
    run = new_run()
    write_run(redis_url, backend, run, 1, complete=False)
    http = client(dict(ping_interval=0.05))
    got: list[Any] = []

    def read() -> None:
        with httpx_sse.connect_sse(http, "GET", f"/runs/{run}/stream") as source:
            got.extend(source.iter_sse())

    reading = threading.Thread(target=read, daemon=True)
    reading.start()
    time.sleep(0.6)  # about 10 pings
    with StreamWriter(redis_url, backend=backend) as writer:
        writer.complete(run)
    reading.join(20)
    assert [(e.id, bool(e.data)) for e in got] == [("1", True), ("2", True)]


def test_registered_run_waiting_past_the_missing_timeout_ends_without_a_terminal(client, redis_url, backend):
    """A model slow to start: the run is registered but has no stream past the
    reader's missing timeout. The response ends with no error event (the
    client retries), and the next request is a 200 again, not a 204."""
    run = new_run()
    with RunControl(redis_url, backend=backend) as control:
        assert control.start(run)
    http = client(dict(missing_timeout=0.5))
    first = http.get(f"/runs/{run}/stream")
    assert first.status_code == 200
    assert "sse-redis-error" not in first.text
    write_run(redis_url, backend, run, 2)
    again = http.get(f"/runs/{run}/stream")
    assert again.status_code == 200
    assert "id: 3" in again.text
