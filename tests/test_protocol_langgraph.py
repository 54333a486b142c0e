"""``sse_redis.protocols.langgraph`` with the official ``langgraph-sdk`` client:
its routes served by uvicorn on a loopback port, runs of LangGraph stream
parts stored in the session Valkey by real writers and processors, read with
``client.runs.join_stream`` (sync and async), cancelled with
``client.runs.cancel`` and by ``cancel_on_disconnect``."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
langgraph_sdk = pytest.importorskip("langgraph_sdk")

from langgraph_sdk import get_client, get_sync_client  # noqa: E402
from langgraph_sdk.errors import (  # noqa: E402
    BadRequestError,
    NotFoundError,
    PermissionDeniedError,
    UnprocessableEntityError,
)
from langgraph_sdk.schema import StreamPart  # noqa: E402
from starlette.applications import Starlette  # noqa: E402

from fixtures_http import Served, serve_app  # noqa: E402
from sse_redis import AsyncRunControl, AsyncStreamReader, RunControl, StreamWriter, aprocess_stream  # noqa: E402
from sse_redis.protocols import langgraph  # noqa: E402
from sse_redis.protocols.langgraph import stream_part  # noqa: E402

QUIET = dict(idle_timeout=30.0, missing_timeout=5.0)  # timeouts that must not end a read
TIMEOUT = 15.0  # a read that hangs fails the test instead of the suite


# ----------------------------------------------------------------- a realistic run


def parts_of(run: str) -> list[tuple[str, Any]]:
    """The parts of a small agent run with ``stream_mode=["values", "messages",
    "updates"]``, as LangGraph Server streams them: ``metadata`` first."""
    human = {"type": "human", "content": "What is 2+2?", "id": "h1"}
    ai = {"type": "ai", "content": "2+2 is 4.", "id": "ai1", "tool_calls": []}
    return [
        ("metadata", {"run_id": run, "attempt": 1}),
        ("values", {"messages": [human]}),
        ("messages/metadata", {"ai1": {"metadata": {"langgraph_node": "agent", "langgraph_step": 1}}}),
        ("messages/partial", [{**ai, "type": "AIMessageChunk", "content": "2+2"}]),
        ("messages/partial", [{**ai, "type": "AIMessageChunk", "content": "2+2 is"}]),
        ("messages/partial", [{**ai, "type": "AIMessageChunk", "content": "2+2 is 4."}]),
        ("messages/complete", [ai]),
        ("updates", {"agent": {"messages": [ai]}}),
        ("values|agent:1f0", {"messages": [human, ai]}),  # a subgraph's part
        ("values", {"messages": [human, ai]}),
    ]


def stored(run: str) -> list[str]:
    """The chunks stored for ``parts_of(run)``: the metadata with ``"run_id": null``,
    which the reader fills in."""
    parts = parts_of(run)
    return [stream_part("metadata", {"run_id": None, "attempt": 1})] + [stream_part(e, d) for e, d in parts[1:]]


def expected(run: str, after: int = 0, modes: Callable[[str], bool] = lambda _e: True) -> list[StreamPart]:
    """What ``join_stream`` yields for a complete run from cursor ``after``:
    the parts after it with their seq ids, then ``end`` with the terminal's."""
    parts = parts_of(run)
    out = [StreamPart(e, d, str(seq)) for seq, (e, d) in enumerate(parts, 1) if seq > after and modes(e)]
    return [*out, StreamPart("end", None, str(len(parts) + 1))]


def write_run(writer: StreamWriter, run: str, *, end: str = "complete") -> None:
    for chunk in stored(run):
        writer.write(run, chunk)
    if end == "complete":
        writer.complete(run)
    elif end == "fail":
        writer.fail(run, public_message="the model is down")
    writer.flush()


def new_ids() -> tuple[str, str]:
    return str(uuid.uuid4()), str(uuid.uuid4())


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


# ----------------------------------------------------------------- the server


@pytest.fixture
def serve(served: Served, redis_url: str, backend: str) -> Callable[..., str]:
    """``serve(reader_options=None, **routes_options)``: the base URL of a fresh
    app serving ``langgraph.routes`` over its own reader."""

    def start(reader_options: dict[str, Any] | None = None, **options: Any) -> str:
        reader = AsyncStreamReader(redis_url, backend=backend, **(reader_options or QUIET))
        served.readers.append(reader)
        return serve_app(served, Starlette(routes=langgraph.routes(reader, **options)))

    return start


@pytest.fixture
def client(serve: Callable[..., str]) -> Iterator[Any]:
    """A sync ``langgraph-sdk`` client of a default app."""
    sdk = get_sync_client(url=serve(), api_key=None, timeout=TIMEOUT)
    yield sdk
    sdk.http.client.close()


@pytest.fixture
def writer(redis_url: str, make_writer: Callable[..., StreamWriter]) -> StreamWriter:
    return make_writer(redis_url)


@pytest.fixture
def control(redis_url: str, backend: str) -> Iterator[RunControl]:
    with RunControl(redis_url, backend=backend) as ctl:
        yield ctl


# ----------------------------------------------------------------- join_stream: replay and resume


def test_minus_one_replays_every_part_then_end(client, writer):
    thread, run = new_ids()
    write_run(writer, run)
    got = list(client.runs.join_stream(thread, run, last_event_id="-1"))
    assert got == expected(run)
    assert got[0] == StreamPart("metadata", {"run_id": run, "attempt": 1}, "1"), "the reader fills in the run id"


def test_no_last_event_id_replays_from_the_start(client, writer):
    """Without a cursor the whole stored run is sent (LangGraph Server sends
    only what comes next: the log can give more, and the SDK asks for no less)."""
    thread, run = new_ids()
    write_run(writer, run)
    assert list(client.runs.join_stream(thread, run)) == expected(run)


@pytest.mark.parametrize("after", [1, 2, 5, 9, 10])
def test_last_event_id_resumes_after_it_exactly(serve, writer, after):
    """The async client: exactly the parts after the cursor, in order, each
    once, with its seq id, then ``end``."""
    thread, run = new_ids()
    write_run(writer, run)

    async def join() -> list[StreamPart]:
        sdk = get_client(url=serve(), api_key=None, timeout=TIMEOUT)
        try:
            return [part async for part in sdk.runs.join_stream(thread, run, last_event_id=str(after))]
        finally:
            await sdk.aclose()

    assert asyncio.run(join()) == expected(run, after)


def test_resume_chain_from_each_part_id(client, writer):
    """Reading one part at a time, rejoining from the id of the last one read,
    gives the whole run once."""
    thread, run = new_ids()
    write_run(writer, run)
    got: list[StreamPart] = []
    cursor = "-1"
    while not got or got[-1].event != "end":
        stream = client.runs.join_stream(thread, run, last_event_id=cursor)
        part = next(stream)
        stream.close()
        got.append(part)
        cursor = part.id
    assert got == expected(run)


def test_ended_run_at_the_cursor_is_200_and_end_never_204(client, writer):
    thread, run = new_ids()
    write_run(writer, run)
    n = len(parts_of(run))
    for cursor in (str(n + 1), str(n + 50)):
        assert list(client.runs.join_stream(thread, run, last_event_id=cursor)) == [StreamPart("end", None, None)]


def test_unknown_run_is_not_found(client):
    thread, run = new_ids()
    with pytest.raises(NotFoundError, match="not found"):
        list(client.runs.join_stream(thread, run, last_event_id="-1"))


def test_malformed_cursor_is_a_bad_request(client, writer):
    thread, run = new_ids()
    write_run(writer, run)
    with pytest.raises(BadRequestError, match="seq id"):
        list(client.runs.join_stream(thread, run, last_event_id="1712345678901-0"))


# ----------------------------------------------------------------- ends other than [DONE]


def test_failed_run_ends_with_its_error_part(client, writer):
    thread, run = new_ids()
    write_run(writer, run, end="fail")
    got = list(client.runs.join_stream(thread, run, last_event_id="-1"))
    n = len(parts_of(run))
    assert got[:-1] == expected(run)[:-1]
    assert got[-1].event == "error"
    assert got[-1].id == str(n + 1)
    assert got[-1].data["error"] == "the model is down"


def test_cancelled_run_ends_with_end(client, writer, control):
    thread, run = new_ids()
    write_run(writer, run, end="none")
    assert control.cancel(run, reason="stop")
    assert list(client.runs.join_stream(thread, run, last_event_id="-1")) == expected(run)


def test_trimmed_stream_ends_with_an_error_part(client, redis_url, make_writer):
    """The serving core's ``sse-redis-error`` becomes LangGraph's ``error`` part."""
    thread, run = new_ids()
    trimming = make_writer(redis_url, max_len=5)
    for i in range(500):
        trimming.write(run, stream_part("values", {"i": i}))
    trimming.complete(run)
    got = list(client.runs.join_stream(thread, run, last_event_id="2"))
    assert len(got) == 1, got[:3]
    assert got[0].event == "error"
    assert got[0].data["error"] == "StreamTrimmed"
    assert "trimmed" in got[0].data["message"]


# ----------------------------------------------------------------- stream_mode


@pytest.mark.parametrize(
    ("modes", "passes"),
    [
        (["values"], lambda e: e == "values" or e.startswith("values|")),
        ("updates", lambda e: e == "updates"),
        (["messages"], lambda e: e.startswith("messages")),
        (["metadata", "updates"], lambda e: e in ("metadata", "updates")),
    ],
)
def test_stream_mode_keeps_those_parts(client, writer, modes, passes):
    thread, run = new_ids()
    write_run(writer, run)
    got = list(client.runs.join_stream(thread, run, last_event_id="-1", stream_mode=modes))
    assert got == expected(run, modes=passes)


# ----------------------------------------------------------------- live runs, cancels


class Producer:
    """A run produced live by ``aprocess_stream`` in a thread of its own: its
    parts, ``delay`` seconds apart, then ``[DONE]``."""

    def __init__(self, writer: Any, run: str, delay: float, count: int = 40) -> None:
        self.run, self.finished, self.url = run, threading.Event(), writer.sync._url
        self.calls: list[tuple[str, str, str | None]] = []

        async def source() -> Any:
            yield stream_part("metadata", {"run_id": None, "attempt": 1})
            for i in range(count):
                await asyncio.sleep(delay)
                yield stream_part("messages/partial", [{"type": "AIMessageChunk", "content": "x" * i, "id": "a"}])

        def finish(run_id: str, status: str, stop_reason: str | None, _error: BaseException | None) -> None:
            self.calls.append((run_id, status, stop_reason))
            self.finished.set()

        self.thread = threading.Thread(
            target=lambda: asyncio.run(aprocess_stream(source(), writer, run, on_finish=finish))
        )
        self.thread.start()
        # A run is known once its processor registered it (LangGraph: once created).
        with RunControl(self.url) as control:
            wait_for(lambda: control.status(run) is not None, 5.0, "the run to start")

    def join(self) -> None:
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive()


def first_parts(stream: Iterator[StreamPart], n: int) -> list[StreamPart]:
    return [next(stream) for _ in range(n)]


def test_live_run_streams_as_written(client, redis_url, make_async_writer):
    thread, run = new_ids()
    producer = Producer(make_async_writer(redis_url), run, delay=0.01, count=20)
    got = list(client.runs.join_stream(thread, run, last_event_id="-1"))
    producer.join()
    assert [p.id for p in got] == [str(i) for i in range(1, 23)]
    assert got[-1] == StreamPart("end", None, "22")
    assert producer.calls == [(run, "completed", None)]


def test_disconnect_with_cancel_on_disconnect_cancels_the_run(client, redis_url, make_async_writer, control):
    thread, run = new_ids()
    producer = Producer(make_async_writer(redis_url), run, delay=0.2)
    stream = client.runs.join_stream(thread, run, last_event_id="-1", cancel_on_disconnect=True)
    assert [p.event for p in first_parts(stream, 2)] == ["metadata", "messages/partial"]
    stream.close()  # the client goes
    assert producer.finished.wait(TIMEOUT), "the producer was not stopped"
    producer.join()
    assert producer.calls[0][:2] == (run, "cancelled")
    info = control.status(run)
    assert info is not None
    assert info.state == "cancelled"
    assert info.last_seq < 40, "the producer ran to its end"


def test_disconnect_without_cancel_on_disconnect_leaves_the_run(client, redis_url, make_async_writer, control):
    thread, run = new_ids()
    producer = Producer(make_async_writer(redis_url), run, delay=0.02, count=30)
    stream = client.runs.join_stream(thread, run, last_event_id="-1")
    first_parts(stream, 2)
    stream.close()
    producer.join()
    assert producer.calls == [(run, "completed", None)]
    info = control.status(run)
    assert info is not None
    assert (info.state, info.last_seq) == ("completed", 32)


def test_reading_to_the_end_with_cancel_on_disconnect_cancels_nothing(client, writer, control):
    thread, run = new_ids()
    write_run(writer, run)
    assert list(client.runs.join_stream(thread, run, last_event_id="-1", cancel_on_disconnect=True)) == expected(run)
    time.sleep(0.2)
    info = control.status(run)
    assert info is not None
    assert info.state == "completed"


def test_client_cancel_stops_the_producer(client, redis_url, make_async_writer):
    thread, run = new_ids()
    producer = Producer(make_async_writer(redis_url), run, delay=0.2)
    stream = client.runs.join_stream(thread, run, last_event_id="-1")
    first_parts(stream, 2)
    assert client.runs.get(thread, run)["status"] == "running"
    client.runs.cancel(thread, run)
    rest = list(stream)  # the joined stream ends at the cancel, with `end`
    assert rest[-1].event == "end"
    assert producer.finished.wait(TIMEOUT)
    producer.join()
    assert producer.calls[0][:2] == (run, "cancelled")
    assert client.runs.get(thread, run)["status"] == "interrupted"
    client.runs.cancel(thread, run, wait=True)  # an ended run: nothing to do, no error


def test_cancel_and_get_of_unknown_runs_and_rollback(client, writer):
    thread, run = new_ids()
    with pytest.raises(NotFoundError):
        client.runs.cancel(thread, run)
    with pytest.raises(NotFoundError):
        client.runs.get(thread, run)
    write_run(writer, run, end="none")
    with pytest.raises(UnprocessableEntityError, match="rolled back"):
        client.runs.cancel(thread, run, action="rollback")
    run_info = client.runs.get(thread, run)
    assert (run_info["run_id"], run_info["thread_id"], run_info["status"]) == (run, thread, "running")
    assert run_info["created_at"] is not None


def test_a_stream_closed_while_running_is_rejoined_by_the_sdk(serve, redis_url, make_async_writer):
    """The body ends without ``end`` when the run goes quiet for the reader's
    ``idle_timeout`` while its status says running (as after a server restart):
    the SDK asks the run at ``Content-Location``, sees ``running``, and rejoins
    ``Location`` with its ``Last-Event-ID``: every part once, in order."""
    joins: list[str | None] = []

    def count(request: Any, _run_id: str) -> bool:
        if request.url.path.endswith("/stream"):
            joins.append(request.headers.get("last-event-id"))
        return True

    base = serve(reader_options=dict(idle_timeout=0.5, missing_timeout=5.0), authorize=count)
    sdk = get_sync_client(url=base, api_key=None, timeout=TIMEOUT)
    thread, run = new_ids()
    writer = make_async_writer(redis_url)

    async def source() -> Any:
        for i in range(6):
            await asyncio.sleep(1.2 if i == 3 else 0.01)
            yield stream_part("values", {"i": i})

    producer = threading.Thread(target=lambda: asyncio.run(aprocess_stream(source(), writer, run)))
    producer.start()
    with RunControl(redis_url) as control:
        wait_for(lambda: control.status(run) is not None, 5.0, "the run to start")
    got = list(sdk.runs.join_stream(thread, run, last_event_id="-1"))
    producer.join(TIMEOUT)
    sdk.http.client.close()
    assert [(p.event, p.data, p.id) for p in got[:-1]] == [("values", {"i": i}, str(i + 1)) for i in range(6)]
    assert got[-1] == StreamPart("end", None, "7")
    assert joins[0] == "-1", joins
    assert len(joins) >= 2, joins
    assert joins[1] in {"3", "4"}, f"the SDK rejoined from {joins[1]!r}, not from the last part it had"


# ----------------------------------------------------------------- authorization, run key


def test_authorize_is_asked_with_the_stored_run_id(serve, writer):
    asked: list[tuple[str, str, str]] = []

    def may(request: Any, run_id: str) -> bool | int:
        asked.append((request.method, request.path_params["thread_id"], run_id))
        return request.path_params["thread_id"] == "mine" or 404

    sdk = get_sync_client(url=serve(authorize=may), api_key=None, timeout=TIMEOUT)
    _thread, run = new_ids()
    write_run(writer, run)
    assert list(sdk.runs.join_stream("mine", run, last_event_id="-1")) == expected(run)
    with pytest.raises(NotFoundError):
        list(sdk.runs.join_stream("theirs", run, last_event_id="-1"))
    with pytest.raises(NotFoundError):
        sdk.runs.cancel("theirs", run)
    assert asked == [("GET", "mine", run), ("GET", "theirs", run), ("POST", "theirs", run)]
    denied = get_sync_client(url=serve(authorize=lambda _r, _id: False), api_key=None, timeout=TIMEOUT)
    with pytest.raises(PermissionDeniedError):
        list(denied.runs.join_stream("mine", run))
    sdk.http.client.close()
    denied.http.client.close()


def test_run_key_over_thread_and_run(serve, writer):
    """Runs stored under ``<thread>.<run>``: the same run id in two threads is two runs."""
    sdk = get_sync_client(url=serve(run_key=lambda t, r: f"{t}.{r}"), api_key=None, timeout=TIMEOUT)
    thread, run = new_ids()
    write_run(writer, f"{thread}.{run}")
    got = list(sdk.runs.join_stream(thread, run, last_event_id="-1"))
    assert [p.event for p in got] == [e for e, _ in parts_of(run)] + ["end"]
    with pytest.raises(NotFoundError):
        list(sdk.runs.join_stream(str(uuid.uuid4()), run))
    sdk.http.client.close()


def test_async_control_given_is_used(serve, redis_url, backend, writer):
    control = AsyncRunControl(redis_url, backend=backend)
    sdk = get_sync_client(url=serve(control=control), api_key=None, timeout=TIMEOUT)
    thread, run = new_ids()
    write_run(writer, run, end="none")
    sdk.runs.cancel(thread, run)
    assert sdk.runs.get(thread, run)["status"] == "interrupted"
    assert list(sdk.runs.join_stream(thread, run, last_event_id="-1")) == expected(run)
    sdk.http.client.close()
    control.sync.close()


def test_stream_part_and_mode_helpers():
    assert stream_part("values", {"a": "é"}) == 'event: values\ndata: {"a":"é"}\n\n'
    with pytest.raises(ValueError, match="line breaks"):
        stream_part("values\ndata: x", {})
    assert langgraph.stream_modes(["", '["values","updates"]', "messages", "[bad"]) == [
        "values",
        "updates",
        "messages",
        "[bad",
    ]
    assert langgraph.mode_matches("messages/partial", ["messages-tuple"])
    assert langgraph.mode_matches("end", ["values"])
    assert langgraph.mode_matches("error", ["values"])
    assert not langgraph.mode_matches("updates", ["values"])
