"""``sse_redis.django``, ``.litestar`` and ``.quart`` over real HTTP: each
framework's app runs in a server process of its own (Django and Litestar under
uvicorn, Quart under hypercorn), on a free loopback port, and is read with
httpx and httpx-sse, the way a client in another process would; runs are
written to the suite's Valkey by a real writer.  Also: SIGTERM with a stream
open (the server exits, the stream ends without a terminal event), and the
README's framework snippets, served as written."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("httpx")
pytest.importorskip("httpx_sse")

import httpx
import httpx_sse

from sse_redis import RunControl, StreamWriter
from sse_redis.tools.servers import free_port

Writers = Callable[..., StreamWriter]  # the make_writer fixture
RunIds = Callable[[], str]  # the run_id fixture

FRAMEWORKS = ["django", "litestar", "quart"]
PACKAGES = {"django": ("django", "uvicorn"), "litestar": ("litestar", "uvicorn"), "quart": ("quart", "hypercorn")}
TIMEOUT = httpx.Timeout(15.0)  # a read that hangs fails the test instead of the suite
README = Path(__file__).resolve().parent.parent / "README.md"
PLACEHOLDER = "redis://localhost:6379/0"

# ----------------------------------------------------------------- the apps under test
# Each serves GET /runs/<run_id>/stream with stream_run, a reader whose own
# timeouts never end a test's read, retry_ms=1000, and an async authorize
# that answers what the X-Verdict header says (none: allowed).

READER = """
import os
from sse_redis import AsyncStreamReader
reader = AsyncStreamReader(os.environ["APP_REDIS_URL"], backend=os.environ.get("APP_BACKEND") or None,
                           idle_timeout=60, missing_timeout=60, ping_interval=15)

async def authorize(request, run_id):
    verdict = request.headers.get("x-verdict")
    return True if verdict is None else False if verdict == "false" else int(verdict)
"""

APPS = {
    "django": READER
    + """
from django.conf import settings
from django.core.asgi import get_asgi_application
from django.urls import path
from sse_redis.django import stream_run

settings.configure(ROOT_URLCONF=__name__, ALLOWED_HOSTS=["*"])

async def stream(request, run_id):
    return await stream_run(request, reader, run_id, authorize=authorize, retry_ms=1000)

urlpatterns = [path("runs/<str:run_id>/stream", stream)]
app = get_asgi_application()
""",
    "litestar": READER
    + """
from litestar import Litestar, Request, Response, get
from sse_redis.litestar import stream_run

@get("/runs/{run_id:str}/stream")
async def stream(request: Request, run_id: str) -> Response:
    return await stream_run(request, reader, run_id, authorize=authorize, retry_ms=1000)

app = Litestar([stream])
""",
    "quart": READER
    + """
from quart import Quart, request
from sse_redis.quart import stream_run

app = Quart(__name__)

@app.get("/runs/<run_id>/stream")
async def stream(run_id):
    return await stream_run(request, reader, run_id, authorize=authorize, retry_ms=1000)
""",
}


def command(framework: str, module: str, port: int, *options: str) -> list[str]:
    """How the framework's app is served: by uvicorn, or by hypercorn in its
    own process (``--workers 0``, as ``sse_redis.quart`` says)."""
    if framework == "quart":
        bind = ["--bind", f"127.0.0.1:{port}"]
        return [sys.executable, "-m", "hypercorn", "--workers", "0", *options, *bind, f"{module}:app"]
    return [sys.executable, "-m", "uvicorn", *options, f"{module}:app", "--host", "127.0.0.1", "--port", str(port)]


class Server:
    """An app served by a server process of its own, on a free port."""

    def __init__(self, directory: Path, argv: list[str], port: int, env: dict[str, str]) -> None:
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.log = directory / f"server-{port}.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(argv, cwd=directory, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not self._accepts():
            if self.process.poll() is not None:
                pytest.fail(f"the server exited while starting: {self.output()}")
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"the server did not start within 30 s: {self.output()}")
            time.sleep(0.05)

    def _accepts(self) -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def start_server(
    directory: Path, framework: str, source: str, redis_url: str, backend: str | None, *options: str
) -> Server:
    """``source`` written as a module in ``directory`` and served
    (``options``: the server's command-line options)."""
    for package in PACKAGES[framework]:
        pytest.importorskip(package)
    module = f"fw_{framework}_{os.urandom(4).hex()}"
    (directory / f"{module}.py").write_text(source)
    port = free_port()
    env = dict(os.environ, APP_REDIS_URL=redis_url, APP_BACKEND=backend or "", PYTHONPATH=str(directory))
    return Server(directory, command(framework, module, port, *options), port, env)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Callable[[str, str], Server]]:
    """``servers(framework, backend)``: one server per pair for the module (speed)."""
    directory = tmp_path_factory.mktemp("apps")
    started: dict[tuple[str, str], Server] = {}

    def get(framework: str, backend: str) -> Server:
        key = (framework, backend)
        if key not in started:
            started[key] = start_server(directory, framework, APPS[framework], redis_url, backend)
        return started[key]

    yield get
    for server in started.values():
        server.stop()


@pytest.fixture(params=FRAMEWORKS)
def framework(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def client(servers: Callable[[str, str], Server], framework: str, backend: str) -> Iterator[httpx.Client]:
    """An httpx client of the framework's app (served with the test's backend)."""
    server = servers(framework, backend)
    with httpx.Client(base_url=server.base, timeout=TIMEOUT) as client:
        yield client


# ----------------------------------------------------------------- helpers


def payload(i: int) -> str:
    return f'data: {{"i":{i},"run_id":null,"seq_id":null}}\n\n'


def url(run: str) -> str:
    return f"/runs/{run}/stream"


def check_event(event: Any, run: str, seq: int, done: bool = False) -> None:
    """``event`` is seq ``seq`` of ``run``: its id, and its data with run_id/seq_id filled in."""
    assert event.id == str(seq)
    assert event.event == "message"
    if done:
        assert event.data == "[DONE]"
    else:
        assert event.data == f'{{"i":{seq},"run_id":"{run}","seq_id":{seq}}}'


def check_stream_headers(response: Any) -> None:
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"


# ----------------------------------------------------------------- the responses


def test_a_full_run_streams_live_with_ids(
    client: httpx.Client, redis_url: str, run_id: RunIds, make_writer: Writers
) -> None:
    """Chunks written before and while the client is connected arrive once,
    in order, with ``id: <seq>``; ``retry:`` rides on the first event (no
    empty event for it); ``[DONE]`` ends the response."""
    run = run_id()
    writer = make_writer(redis_url)
    writer.write(run, payload(1))
    writer.write(run, payload(2))
    writer.flush()
    events = []
    with httpx_sse.connect_sse(client, "GET", url(run)) as source:
        check_stream_headers(source.response)
        it = source.iter_sse()
        events += [next(it), next(it)]
        for i in range(3, 21):
            writer.write(run, payload(i))
        writer.complete(run)
        events += list(it)
    assert events[0].retry == 1000
    assert all(event.retry is None for event in events[1:])
    for seq, event in enumerate(events, start=1):
        check_event(event, run, seq, done=seq == 21)
    assert len(events) == 21


def test_resume_with_last_event_id_after_a_dropped_connection(
    client: httpx.Client, redis_url: str, run_id: RunIds, make_writer: Writers
) -> None:
    """The client drops its connection mid-run; the run goes on; a new
    connection with ``Last-Event-ID`` gets the rest: every event exactly
    once across both connections."""
    run = run_id()
    writer = make_writer(redis_url)
    for i in range(1, 4):
        writer.write(run, payload(i))
    writer.flush()
    first: list[Any] = []
    with httpx_sse.connect_sse(client, "GET", url(run)) as source:
        it = source.iter_sse()
        first += [next(it), next(it), next(it)]
        writer.write(run, payload(4))  # may or may not reach this connection before the drop
        writer.flush()
    # Dropped: leaving the block closes the connection mid-stream.
    for i in range(5, 10):
        writer.write(run, payload(i))
    writer.complete(run)
    last = first[-1].id
    with httpx_sse.connect_sse(client, "GET", url(run), headers={"Last-Event-ID": last}) as source:
        check_stream_headers(source.response)
        second = list(source.iter_sse())
    events = first + second
    assert [int(event.id) for event in events] == list(range(1, 11))
    for seq, event in enumerate(events, start=1):
        check_event(event, run, seq, done=seq == 10)
    # The ended run, asked from its last event: 204, so EventSource stops.
    assert client.get(url(run), headers={"Last-Event-ID": "10"}).status_code == 204


@pytest.mark.parametrize(
    ("headers", "query", "after"),
    [
        ({"Last-Event-ID": "4"}, "", 4),
        ({}, "?last_event_id=2", 2),
        ({}, "?starting_after=5", 5),
        ({"Last-Event-ID": "3"}, "?starting_after=1", 3),  # the header wins
    ],
)
def test_the_cursor_from_the_header_or_the_query(
    client: httpx.Client,
    redis_url: str,
    run_id: RunIds,
    make_writer: Writers,
    headers: dict[str, str],
    query: str,
    after: int,
) -> None:
    run = run_id()
    writer = make_writer(redis_url)
    for i in range(1, 7):
        writer.write(run, payload(i))
    writer.complete(run)
    with httpx_sse.connect_sse(client, "GET", url(run) + query, headers=headers) as source:
        events = list(source.iter_sse())
    assert [int(event.id) for event in events] == list(range(after + 1, 8))


def test_an_unknown_run_gets_204_at_once(client: httpx.Client, run_id: RunIds) -> None:
    """Not a 200 that waits for the reader's ``missing_timeout`` (60 s here)."""
    started = time.monotonic()
    response = client.get(url(run_id()))
    assert response.status_code == 204
    assert response.content == b""
    assert time.monotonic() - started < 3.0


def test_a_registered_run_without_chunks_gets_200_and_waits(
    client: httpx.Client, redis_url: str, run_id: RunIds, make_writer: Writers, backend: str
) -> None:
    """``start`` (as ``process_stream`` does), then the first chunk arrives later."""
    run = run_id()
    with RunControl(redis_url, backend=backend) as control:
        assert control.start(run)
    writer = make_writer(redis_url)
    with httpx_sse.connect_sse(client, "GET", url(run)) as source:
        check_stream_headers(source.response)
        writer.write(run, payload(1))
        writer.complete(run)
        events = list(source.iter_sse())
    assert [event.id for event in events] == ["1", "2"]


@pytest.mark.parametrize("cursor", ["abc", "-1", "1.5", "9" * 5000])
def test_a_malformed_last_event_id_gets_400(
    client: httpx.Client, redis_url: str, run_id: RunIds, make_writer: Writers, cursor: str
) -> None:
    run = run_id()
    writer = make_writer(redis_url)
    writer.write(run, payload(1))
    writer.flush()
    response = client.get(url(run), headers={"Last-Event-ID": cursor})
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/plain")
    assert "cursor" in response.text
    assert len(response.text) < 200  # a long value is not echoed back whole


@pytest.mark.parametrize(("verdict", "status"), [("false", 403), ("404", 404), ("401", 401)])
def test_authorize_refuses(
    client: httpx.Client, redis_url: str, run_id: RunIds, make_writer: Writers, verdict: str, status: int
) -> None:
    run = run_id()
    writer = make_writer(redis_url)
    writer.write(run, payload(1))
    writer.complete(run)
    response = client.get(url(run), headers={"X-Verdict": verdict})
    assert response.status_code == status
    assert "data:" not in response.text


# ----------------------------------------------------------------- server shutdown


def sigterm_with_a_stream_open(server: Server, redis_url: str, run: str) -> tuple[list[Any], bool, float, float]:
    """SIGTERM to ``server`` while a client reads ``run`` (one chunk written,
    not complete): the events the client got after it, whether the stream
    was cut (the chunked body never ended), and the seconds until it ended
    and until the server exited."""
    with StreamWriter(redis_url) as writer:
        writer.write(run, payload(1))
        writer.flush()
    rest: list[Any] = []
    cut = False
    with (
        httpx.Client(base_url=server.base, timeout=TIMEOUT) as client,
        httpx_sse.connect_sse(client, "GET", url(run)) as source,
    ):
        it = source.iter_sse()
        check_event(next(it), run, 1)
        server.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        try:
            rest += it
        except httpx.RemoteProtocolError:
            cut = True
        ended = time.monotonic() - signalled
    try:
        server.process.wait(15)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server did not exit within 15 s of SIGTERM: {server.output()}")
    return rest, cut, ended, time.monotonic() - signalled


@pytest.mark.parametrize("framework_", FRAMEWORKS)
def test_sigterm_ends_open_streams_and_the_server_exits(
    tmp_path: Path, framework_: str, redis_url: str, run_id: RunIds
) -> None:
    """A real server process (the default backend) with one open stream,
    sent SIGTERM: the client's stream ends cleanly, without ``[DONE]`` or an
    error event (so a browser reconnects and resumes elsewhere), and the
    process exits; the goal is 1 s, the bounds are generous for shared CI
    machines."""
    server = start_server(tmp_path, framework_, APPS[framework_], redis_url, None)
    try:
        rest, cut, ended, exited = sigterm_with_a_stream_open(server, redis_url, run_id())
    finally:
        server.stop()
    assert rest == [], f"events after SIGTERM: {rest}"
    assert not cut, "the stream was cut, not ended"
    assert ended < 3.0, f"the stream ended {ended:.1f} s after SIGTERM"
    assert exited < 6.0, f"the server exited {exited:.1f} s after SIGTERM"


def test_sigterm_to_hypercorn_with_worker_processes(tmp_path: Path, redis_url: str, run_id: RunIds) -> None:
    """What ``sse_redis.quart`` says of hypercorn's worker processes: nothing
    in the worker hears the shutdown in time, and hypercorn cuts the stream
    after its ``--graceful-timeout`` (1 s here), without a terminal event."""
    options = ("--workers", "1", "--graceful-timeout", "1")
    server = start_server(tmp_path, "quart", APPS["quart"], redis_url, None, *options)
    try:
        rest, cut, ended, exited = sigterm_with_a_stream_open(server, redis_url, run_id())
    finally:
        server.stop()
    assert rest == []
    assert cut, "hypercorn cancels the response: the chunked body never ends"
    assert 0.8 < ended < 5.0, f"the stream was cut {ended:.1f} s after SIGTERM"
    assert exited < 8.0


# ----------------------------------------------------------------- the README's snippets


def readme_snippet(framework: str) -> str:
    """The README's ``<!-- test: serve FRAMEWORK -->`` python block."""
    mark = f"<!-- test: serve {framework} -->"
    blocks = re.findall(re.escape(mark) + r"\s*\n```python\n(.*?)\n```", README.read_text(), flags=re.DOTALL)
    assert len(blocks) == 1, f"one {mark} block in README.md"
    return str(blocks[0])


def readme_token(run: str) -> str:
    """The snippets' ``token_for`` (their SECRET is b"change me")."""
    return hmac.new(b"change me", run.encode(), hashlib.sha256).hexdigest()


# The command each README section serves its app.py with, and what runs it here.
README_COMMANDS = {
    "django": ("uvicorn app:application", ["-m", "uvicorn", "app:application", "--host", "127.0.0.1", "--port"]),
    "litestar": ("uvicorn app:app", ["-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port"]),
    "quart": ("hypercorn --workers 0 app:app", ["-m", "hypercorn", "--workers", "0", "app:app", "--bind"]),
}


def readme_section(framework: str) -> str:
    """The README's section holding the framework's snippet."""
    text = README.read_text()
    before, after = text.split(f"<!-- test: serve {framework} -->", 1)
    return "## " + before.rsplit("\n## ", 1)[1] + after.split("\n## ", 1)[0]


@pytest.mark.parametrize("framework_", FRAMEWORKS)
def test_the_readme_snippet_serves_as_written(tmp_path: Path, framework_: str, redis_url: str, run_id: RunIds) -> None:
    """The README's section for the framework: its ``app.py`` served with the
    command it names, on the suite's Redis, streams a run to the holder of
    its token, resumes, and hides the run from anyone else."""
    for package in PACKAGES[framework_]:
        pytest.importorskip(package)
    section = readme_section(framework_)
    shell, argv = README_COMMANDS[framework_]
    assert f"`{shell}`" in section
    assert "without `authorize`, every run is readable by whoever knows its id" in " ".join(section.split()).lower()
    source = readme_snippet(framework_)
    assert PLACEHOLDER in source
    (tmp_path / "app.py").write_text(source.replace(PLACEHOLDER, redis_url))
    port = free_port()
    address = f"127.0.0.1:{port}" if framework_ == "quart" else str(port)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    server = Server(tmp_path, [sys.executable, *argv, address], port, env)
    try:
        run = run_id()
        with StreamWriter(redis_url) as writer:
            for i in range(1, 4):
                writer.write(run, payload(i))
            writer.complete(run)
        token = readme_token(run)
        with httpx.Client(base_url=server.base, timeout=TIMEOUT) as client:
            with httpx_sse.connect_sse(client, "GET", f"{url(run)}?token={token}") as source_:
                check_stream_headers(source_.response)
                events = list(source_.iter_sse())
            assert [int(event.id) for event in events] == [1, 2, 3, 4]
            assert events[0].retry == 1000
            check_event(events[0], run, 1)
            check_event(events[-1], run, 4, done=True)
            resumed = client.get(f"{url(run)}?token={token}", headers={"Last-Event-ID": "2"})
            assert [line for line in resumed.text.splitlines() if line.startswith("id:")] == ["id: 3", "id: 4"]
            assert client.get(url(run)).status_code == 404  # no token: hidden
            assert client.get(f"{url(run)}?token={readme_token('other')}").status_code == 404
            assert client.get(f"{url(run)}?token=%C3%A9").status_code == 404  # not ASCII: refused, not a 500
    finally:
        server.stop()
