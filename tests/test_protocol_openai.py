"""``sse_redis.protocols.openai`` with the official ``openai`` client: runs of
Responses stream events stored by a real writer in the session Valkey, served
by uvicorn on a loopback port, read back with ``client.responses.retrieve(id,
stream=True, starting_after=N)`` and cancelled with ``client.responses.cancel``,
on both backends."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from openai.types.responses import (  # noqa: E402
    ResponseCompletedEvent,
    ResponseCreatedEvent,
    ResponseErrorEvent,
    ResponseIncompleteEvent,
    ResponseTextDeltaEvent,
)
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402

from fixtures_http import Served, serve_app  # noqa: E402
from sse_redis import AsyncStreamReader, AsyncStreamWriter, RunControl, StreamWriter, aprocess_stream  # noqa: E402
from sse_redis.protocols import openai as protocol  # noqa: E402

TIMEOUT = 10.0  # a read that hangs fails the test instead of the suite
WORDS = ["Hel", "lo", ", ", "wor", "ld", "!"]

# ----------------------------------------------------------------- a realistic run


def response_json(response_id: str, status: str, text: str | None = None) -> dict[str, Any]:
    """A Response object as the API streams it (output only once there is some)."""
    output: list[dict[str, Any]] = []
    if text is not None:
        output = [
            {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ]
    return {
        "id": response_id,
        "object": "response",
        "created_at": 1_760_000_000,
        "status": status,
        "background": True,
        "model": "gpt-test",
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "error": None,
        "incomplete_details": None,
    }


def responses_events(response_id: str, words: list[str] = WORDS, *, end: str = "completed") -> list[dict[str, Any]]:
    """The events of one text answer, numbered as an upstream numbers them (from 0)."""
    text = "".join(words)
    item = {"id": "msg_1", "type": "message", "role": "assistant", "status": "in_progress", "content": []}
    part = {"type": "output_text", "text": "", "annotations": []}
    where = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": response_json(response_id, "in_progress")},
        {"type": "response.in_progress", "response": response_json(response_id, "in_progress")},
        {"type": "response.output_item.added", "output_index": 0, "item": item},
        {"type": "response.content_part.added", **where, "part": part},
        *({"type": "response.output_text.delta", **where, "delta": word, "logprobs": []} for word in words),
        {"type": "response.output_text.done", **where, "text": text, "logprobs": []},
        {"type": "response.content_part.done", **where, "part": {**part, "text": text}},
        {"type": "response.output_item.done", "output_index": 0, "item": {**item, "status": "completed"}},
    ]
    if end:
        events.append({"type": f"response.{end}", "response": response_json(response_id, end, text)})
    return [{**event, "sequence_number": n} for n, event in enumerate(events)]


def sse(event: dict[str, Any]) -> str:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"


def write_run(url: str, backend: str, run: str, events: list[dict[str, Any]], *, complete: bool = True) -> int:
    """Stores ``events`` (seq 1..n), then ``[DONE]`` (seq n + 1) when ``complete``; the top seq."""
    with StreamWriter(url, backend=backend) as writer:
        for n, event in enumerate(events, 1):
            assert writer.write(run, sse(event)) == n
        top = writer.complete(run) if complete else len(events)
        writer.flush()
    return top


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


# ----------------------------------------------------------------- fixtures


@pytest.fixture
def base_url(served: Served, redis_url: str, backend: str) -> Callable[..., str]:
    """``base_url(**routes_options)``: the ``/v1`` base URL of a fresh app serving ``openai.routes``."""

    def start(reader_options: dict[str, Any] | None = None, **options: Any) -> str:
        quiet = dict(idle_timeout=30.0, missing_timeout=5.0)
        reader = AsyncStreamReader(redis_url, backend=backend, **{**quiet, **(reader_options or {})})
        served.readers.append(reader)
        return serve_app(served, Starlette(routes=protocol.routes(reader, **options))) + "/v1"

    return start


@pytest.fixture
def client(base_url: Callable[..., str]) -> Any:
    with openai.OpenAI(base_url=base_url(), api_key="x", timeout=TIMEOUT, max_retries=0) as c:
        yield c


# ----------------------------------------------------------------- resume


def test_from_zero_yields_every_event_typed_and_numbered(
    client: Any, redis_url: str, backend: str, run_id: Any
) -> None:
    run = run_id()
    stored = responses_events(run)
    top = write_run(redis_url, backend, run, stored)
    assert top == len(stored) + 1  # [DONE] after response.completed
    events = list(client.responses.retrieve(run, stream=True, starting_after=0))
    assert [e.type for e in events] == [e["type"] for e in stored]
    assert [e.sequence_number for e in events] == list(range(1, len(stored) + 1))  # upstream's 0.. overwritten
    assert isinstance(events[0], ResponseCreatedEvent)
    assert isinstance(events[-1], ResponseCompletedEvent)
    deltas = [e for e in events if isinstance(e, ResponseTextDeltaEvent)]
    assert [d.delta for d in deltas] == WORDS
    assert events[-1].response.status == "completed"
    assert events[-1].response.output[0].content[0].text == "".join(WORDS)
    # Without starting_after: the same, from the start.
    again = list(client.responses.retrieve(run, stream=True))
    assert [e.sequence_number for e in again] == [e.sequence_number for e in events]


@pytest.mark.parametrize("after", [1, 2, 5, 10, 12])
def test_starting_after_yields_exactly_the_events_after_it(
    client: Any, redis_url: str, backend: str, run_id: Any, after: int
) -> None:
    run = run_id()
    stored = responses_events(run)
    write_run(redis_url, backend, run, stored)
    events = list(client.responses.retrieve(run, stream=True, starting_after=after))
    expected = list(range(after + 1, len(stored) + 1))
    assert [e.sequence_number for e in events] == expected
    assert [e.type for e in events] == [stored[n - 1]["type"] for n in expected]
    for event in events:  # each the stored event, renumbered
        want = {**stored[event.sequence_number - 1], "sequence_number": event.sequence_number}
        assert event.to_dict() == want


def test_past_the_final_event_the_stream_is_empty(client: Any, redis_url: str, backend: str, run_id: Any) -> None:
    run = run_id()
    stored = responses_events(run)
    top = write_run(redis_url, backend, run, stored)
    for after in (len(stored), top, top + 5):  # response.completed, [DONE], past the end
        assert list(client.responses.retrieve(run, stream=True, starting_after=after)) == []


def test_the_stream_ends_at_the_final_event_without_a_terminal(
    client: Any, redis_url: str, backend: str, run_id: Any
) -> None:
    """A producer that never calls complete(): the stream still ends after response.completed."""
    run = run_id()
    stored = responses_events(run)
    write_run(redis_url, backend, run, stored, complete=False)
    started = time.monotonic()
    events = list(client.responses.retrieve(run, stream=True, starting_after=3))
    assert events[-1].type == "response.completed"
    assert time.monotonic() - started < 5.0


def test_follows_a_live_run(client: Any, redis_url: str, backend: str, run_id: Any) -> None:
    run = run_id()
    stored = responses_events(run)
    seen: list[Any] = []
    writer = StreamWriter(redis_url, backend=backend)
    try:
        writer.write(run, sse(stored[0]))
        writer.flush()
        stream = client.responses.retrieve(run, stream=True)
        seen.append(next(iter(stream)))
        for event in stored[1:]:
            writer.write(run, sse(event))
            writer.flush()
            seen.append(next(iter(stream)))
            assert seen[-1].sequence_number == len(seen)
        writer.complete(run)
        assert list(stream) == []  # ended after response.completed
    finally:
        writer.close()
    assert [e.type for e in seen] == [e["type"] for e in stored]


def test_keep_alive_pings_never_reach_the_client(
    base_url: Callable[..., str], redis_url: str, backend: str, run_id: Any
) -> None:
    """The reader's pings are SSE comments, and no event has an ``id:``: the
    client's decoder (which keeps the last id) sees no empty event between them."""
    run = run_id()
    stored = responses_events(run)
    url = base_url(reader_options=dict(ping_interval=0.05))
    with (
        openai.OpenAI(base_url=url, api_key="x", timeout=TIMEOUT, max_retries=0) as pinged,
        StreamWriter(redis_url, backend=backend) as writer,
    ):
        writer.write(run, sse(stored[0]))
        writer.flush()
        stream = pinged.responses.retrieve(run, stream=True)
        first = next(iter(stream))
        time.sleep(0.4)  # several pings
        for event in stored[1:]:
            writer.write(run, sse(event))
        writer.complete(run)
        writer.flush()
        events = [first, *stream]
    assert [e.sequence_number for e in events] == list(range(1, len(stored) + 1))
    # The pings were there, between events that carry no id:.
    done = run_id()
    with StreamWriter(redis_url, backend=backend) as writer:
        writer.write(done, sse(stored[0]))
        writer.flush()
        with httpx.stream("GET", f"{url}/responses/{done}", params={"stream": "true"}, timeout=TIMEOUT) as answer:
            body, parts = "", answer.iter_text()
            while ": ping" not in body:
                body += next(parts)
            writer.write(done, sse(stored[-1]))
            writer.flush()
            body += "".join(parts)
    assert "\nid:" not in body
    assert not body.startswith("id:")
    assert body.rstrip().endswith('"sequence_number":2}')


def test_stream_helper_gets_the_final_response(client: Any, redis_url: str, backend: str, run_id: Any) -> None:
    """``responses.stream(response_id=...)`` accumulates the resumed events into the final Response."""
    run = run_id()
    write_run(redis_url, backend, run, responses_events(run))
    with client.responses.stream(response_id=run) as stream:
        final = stream.get_final_response()
    assert final.id == run
    assert final.output_text == "".join(WORDS)


# ----------------------------------------------------------------- ends other than completed


def test_error_terminal_becomes_an_error_event(client: Any, redis_url: str, backend: str, run_id: Any) -> None:
    run = run_id()
    stored = responses_events(run, end="")
    with StreamWriter(redis_url, backend=backend) as writer:
        for event in stored:
            writer.write(run, sse(event))
        writer.fail(run, RuntimeError("secret"), public_message="the model went away")
        writer.flush()
    events = list(client.responses.retrieve(run, stream=True, starting_after=len(stored) - 1))
    assert [e.type for e in events] == [stored[-1]["type"], "error"]
    error = events[-1]
    assert isinstance(error, ResponseErrorEvent)
    assert error.message == "the model went away"
    assert error.sequence_number == len(stored) + 1
    final = client.responses.retrieve(run)
    assert final.status == "failed"
    assert final.error.message == "the model went away"


def test_failed_and_incomplete_end_the_stream(client: Any, redis_url: str, backend: str, run_id: Any) -> None:
    for end in ("failed", "incomplete"):
        run = run_id()
        stored = responses_events(run, end=end)
        write_run(redis_url, backend, run, stored)
        events = list(client.responses.retrieve(run, stream=True, starting_after=len(stored) - 2))
        assert [e.type for e in events] == ["response.output_item.done", f"response.{end}"]
        assert client.responses.retrieve(run).status == end


# ----------------------------------------------------------------- retrieve without stream


def test_retrieve_without_stream_answers_the_response_object(
    client: Any, redis_url: str, backend: str, run_id: Any
) -> None:
    run = run_id()
    stored = responses_events(run)
    with StreamWriter(redis_url, backend=backend) as writer:
        for event in stored[:5]:
            writer.write(run, sse(event))
        writer.flush()
        running = client.responses.retrieve(run)
        assert running.id == run
        assert running.status == "in_progress"
        assert running.output == []
        for event in stored[5:]:
            writer.write(run, sse(event))
        writer.complete(run)
        writer.flush()
    final = client.responses.retrieve(run)
    assert final.status == "completed"
    assert final.output_text == "".join(WORDS)


def test_unknown_response_is_404(client: Any, run_id: Any) -> None:
    run = run_id()
    with pytest.raises(openai.NotFoundError, match="not found"):
        list(client.responses.retrieve(run, stream=True))
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(run)
    with pytest.raises(openai.NotFoundError):
        client.responses.cancel(run)


def test_malformed_starting_after_is_400(base_url: Callable[..., str], run_id: Any) -> None:
    url = base_url()
    answer = httpx.get(f"{url}/responses/{run_id()}", params={"stream": "true", "starting_after": "x"}, timeout=TIMEOUT)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "starting_after"


def test_authorize_guards_all_routes(base_url: Callable[..., str], redis_url: str, backend: str, run_id: Any) -> None:
    run, hidden = run_id(), run_id()
    write_run(redis_url, backend, run, responses_events(run))
    write_run(redis_url, backend, hidden, responses_events(hidden))

    def may_read(request: Request, response_id: str) -> bool | int:
        if response_id == hidden:
            return 404
        return request.headers.get("authorization") == "Bearer good"

    url = base_url(authorize=may_read)
    with openai.OpenAI(base_url=url, api_key="good", timeout=TIMEOUT, max_retries=0) as good:
        assert len(list(good.responses.retrieve(run, stream=True))) == len(responses_events(run))
        with pytest.raises(openai.NotFoundError):
            list(good.responses.retrieve(hidden, stream=True))
        with pytest.raises(openai.NotFoundError):
            good.responses.cancel(hidden)
    with openai.OpenAI(base_url=url, api_key="bad", timeout=TIMEOUT, max_retries=0) as bad:
        with pytest.raises(openai.PermissionDeniedError):
            list(bad.responses.retrieve(run, stream=True))
        with pytest.raises(openai.PermissionDeniedError):
            bad.responses.retrieve(run)
        with pytest.raises(openai.PermissionDeniedError):
            bad.responses.cancel(run)


# ----------------------------------------------------------------- cancel


class SlowProducer:
    """``aprocess_stream`` of a run's events, one every ``pause`` seconds, in a
    thread of its own (its own loop), recording what ``on_finish`` was told."""

    def __init__(self, url: str, backend: str, run: str, pause: float = 0.05) -> None:
        self.url, self.backend, self.run, self.pause = url, backend, run, pause
        self.finished: tuple[str, str | None] | None = None
        self.yielded = 0
        self.thread = threading.Thread(target=lambda: asyncio.run(self.main()), daemon=True)

    async def events(self) -> AsyncIterator[str]:
        for event in responses_events(self.run, WORDS * 200):
            yield sse(event)
            self.yielded += 1
            await asyncio.sleep(self.pause)

    def on_finish(self, _run: str, status: str, stop_reason: str | None, _error: BaseException | None) -> None:
        self.finished = (status, stop_reason)

    async def main(self) -> None:
        writer = AsyncStreamWriter(self.url, backend=self.backend)
        try:
            await aprocess_stream(self.events(), writer, self.run, on_finish=self.on_finish)
        finally:
            await writer.aclose()

    def start(self) -> SlowProducer:
        self.thread.start()
        return self


def test_cancel_through_the_client_stops_a_live_producer(
    client: Any, redis_url: str, backend: str, run_id: Any
) -> None:
    run = run_id()
    producer = SlowProducer(redis_url, backend, run).start()
    wait_for(lambda: producer.yielded >= 3, TIMEOUT, "the producer's first events")
    stream = client.responses.retrieve(run, stream=True)
    events = [next(iter(stream)) for _ in range(5)]
    assert [e.sequence_number for e in events] == [1, 2, 3, 4, 5]

    cancelled = client.responses.cancel(run)
    assert cancelled.id == run
    assert cancelled.status == "cancelled"
    assert cancelled.model == "gpt-test"  # the Response object response.created stored

    producer.thread.join(TIMEOUT)
    assert not producer.thread.is_alive(), "the producer did not stop"
    assert producer.finished is not None
    assert producer.finished[0] == "cancelled"
    assert producer.finished[1] == protocol.CANCEL_REASON
    yielded = producer.yielded
    assert yielded < len(WORDS) * 200  # stopped long before its end

    rest = list(stream)  # the stream ends, with the cancel as its last event
    last = rest[-1]
    assert isinstance(last, ResponseIncompleteEvent)
    assert last.response.status == "cancelled"
    assert last.response.id == run
    numbers = [e.sequence_number for e in events + rest]
    assert numbers == list(range(1, len(numbers) + 1))
    assert all(e.type != "response.completed" for e in rest)

    # Idempotent: a second cancel answers the same final object; status and retrieve agree.
    assert client.responses.cancel(run).status == "cancelled"
    assert client.responses.retrieve(run).status == "cancelled"
    with RunControl(redis_url, backend=backend) as control:
        info = control.status(run)
    assert info is not None
    assert info.state == "cancelled"
    assert info.last_seq == numbers[-1]
    # A resume after the cancel's event is empty; one before it ends with it.
    assert list(client.responses.retrieve(run, stream=True, starting_after=numbers[-1])) == []
    tail = list(client.responses.retrieve(run, stream=True, starting_after=numbers[-1] - 2))
    assert [e.type for e in tail] == [(events + rest)[-2].type, "response.incomplete"]


def test_cancel_of_an_ended_run_answers_its_final_object(
    client: Any, redis_url: str, backend: str, run_id: Any
) -> None:
    run = run_id()
    write_run(redis_url, backend, run, responses_events(run))
    final = client.responses.cancel(run)
    assert final.status == "completed"
    assert final.output_text == "".join(WORDS)


def test_cancel_of_a_registered_run_before_its_first_event(
    client: Any, redis_url: str, backend: str, run_id: Any
) -> None:
    run = run_id()
    with RunControl(redis_url, backend=backend) as control:
        assert control.start(run)
    cancelled = client.responses.cancel(run)
    assert cancelled.id == run
    assert cancelled.status == "cancelled"
    events = list(client.responses.retrieve(run, stream=True))
    assert [(e.type, e.sequence_number, e.response.status) for e in events] == [("response.incomplete", 1, "cancelled")]


# ----------------------------------------------------------------- the async client


def test_async_client_resumes_and_cancels(
    base_url: Callable[..., str], redis_url: str, backend: str, run_id: Any
) -> None:
    done, live = run_id(), run_id()
    stored = responses_events(done)
    write_run(redis_url, backend, done, stored)
    url = base_url()

    async def main() -> None:
        async with openai.AsyncOpenAI(base_url=url, api_key="x", timeout=TIMEOUT, max_retries=0) as aclient:
            stream = await aclient.responses.retrieve(done, stream=True, starting_after=4)
            numbers = [event.sequence_number async for event in stream]
            assert numbers == list(range(5, len(stored) + 1))

            async with AsyncStreamWriter(redis_url, backend=backend) as writer:
                task = asyncio.create_task(aprocess_stream(slow(live), writer, live))
                await asyncio.wait_for(started.wait(), TIMEOUT)
                stream = await aclient.responses.retrieve(live, stream=True)
                first = await stream.__anext__()
                assert first.type == "response.created"
                assert (await aclient.responses.cancel(live)).status == "cancelled"
                rest = [event async for event in stream]
                assert rest[-1].type == "response.incomplete"
                assert await asyncio.wait_for(task, TIMEOUT) == "cancelled"

    started = asyncio.Event()

    async def slow(run: str) -> AsyncIterator[str]:
        for event in responses_events(run, WORDS * 200):
            yield sse(event)
            started.set()
            await asyncio.sleep(0.05)

    asyncio.run(main())
