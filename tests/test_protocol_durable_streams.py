"""``sse_redis.protocols.durable_streams`` over real HTTP: the routes served by
uvicorn on a free loopback port, read with the official ``durable-streams``
client (0.1.0: catch-up, long-poll, SSE, resume from an offset, HEAD) and,
where that client has no support (stream closure, 204s, cursors, ETags, the
answers to writes), with raw httpx against the protocol's text.  Runs are
written to the session Valkey by a real writer, on both backends."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
ds = pytest.importorskip("durable_streams")

from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402

from fixtures_http import Served, serve_app  # noqa: E402
from sse_redis import AsyncStreamReader, RunControl, StreamWriter  # noqa: E402
from sse_redis._pure import SSEParser  # noqa: E402
from sse_redis.protocols import durable_streams  # noqa: E402
from sse_redis.protocols.durable_streams import OFFSET_WIDTH, offset_of  # noqa: E402

TIMEOUT = httpx.Timeout(10.0)  # a read that hangs fails the test instead of the suite
QUIET = dict(idle_timeout=30.0, missing_timeout=5.0)  # timeouts that must not end a read


# ----------------------------------------------------------------- helpers


def payload(i: int) -> str:
    return f'data: {{"i":{i},"run_id":null,"seq_id":null}}\n\n'


def write_run(writer: StreamWriter, run: str, first: int, last: int, complete: bool = False) -> None:
    """``payload(first..last)`` as seqs ``first..last``, then ``[DONE]`` when ``complete``."""
    for i in range(first, last + 1):
        assert writer.write(run, payload(i)) == i
    if complete:
        assert writer.complete(run) == last + 1
    writer.flush()


def check_messages(messages: list[Any], run: str, after: int, last: int, done: bool = True) -> None:
    """``messages`` are exactly seqs ``after+1 .. last``, once each, in order,
    nulls patched; the last is ``[DONE]`` when ``done``."""
    assert [m["id"] for m in messages] == [str(seq) for seq in range(after + 1, last + 1)]
    for seq, message in zip(range(after + 1, last + 1), messages, strict=True):
        assert "event" not in message
        if done and seq == last:
            assert message["data"] == "[DONE]"
        else:
            assert json.loads(message["data"]) == {"i": seq, "run_id": run, "seq_id": seq}


def sse_events(body: str) -> list[tuple[str, Any]]:
    """``(event type, decoded JSON data)`` of an SSE body."""
    return [(event.event, json.loads(event.data)) for event in SSEParser().feed(body)]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def app(served: Served, redis_url: str, backend: str) -> Iterator[Callable[..., tuple[str, httpx.Client]]]:
    """``app(reader_options, **routes_options)``: the base URL of a fresh app
    serving ``durable_streams.routes`` with its own reader, and an httpx client."""
    clients: list[httpx.Client] = []

    def start(reader_options: dict[str, Any] | None = None, **options: Any) -> tuple[str, httpx.Client]:
        reader = AsyncStreamReader(redis_url, backend=backend, **(reader_options or QUIET))
        served.readers.append(reader)
        base = serve_app(served, Starlette(routes=durable_streams.routes(reader, **options)))
        client = httpx.Client(base_url=base, timeout=TIMEOUT)
        clients.append(client)
        return base, client

    yield start
    for client in clients:
        client.close()


@pytest.fixture
def writer(make_writer: Callable[..., StreamWriter], redis_url: str) -> StreamWriter:
    return make_writer(redis_url)


# ----------------------------------------------------------------- offsets


def test_offsets_sort_as_strings_the_way_seq_ids_sort() -> None:
    seqs = [0, 1, 2, 9, 10, 99, 100, 12345, 2**63 - 1, 2**64 - 1]
    offsets = [offset_of(seq) for seq in seqs]
    assert all(len(offset) == OFFSET_WIDTH == 20 for offset in offsets)
    assert sorted(offsets) == offsets
    assert offsets[0] > "-1"  # the start sentinel sorts before every offset too
    assert durable_streams.cursor_of_offset("-1") == 0
    assert durable_streams.cursor_of_offset(None) == 0
    assert durable_streams.cursor_of_offset("now") is None
    assert durable_streams.cursor_of_offset(offset_of(17)) == 17
    assert durable_streams.cursor_of_offset("17") == 17  # a plain seq id is taken too
    for bad in ("", "-2", "1_2", "x", "1" * 21, str(2**63), "١٢"):
        with pytest.raises(ValueError, match="offset"):
            durable_streams.cursor_of_offset(bad)


def test_cursor_never_goes_back() -> None:
    now = durable_streams.CURSOR_EPOCH + 1000 * durable_streams.CURSOR_INTERVAL + 5
    assert durable_streams.response_cursor(None, now) == "1000"
    assert durable_streams.response_cursor("999", now) == "1000"
    assert durable_streams.response_cursor("junk", now) == "1000"
    for echoed in ("1000", "1500"):
        advanced = int(durable_streams.response_cursor(echoed, now))
        assert int(echoed) < advanced <= int(echoed) + 180  # 1 s .. 3600 s of jitter, in 20 s intervals


# ----------------------------------------------------------------- catch-up


def test_catch_up_with_the_client(app, writer, run_id) -> None:
    run = run_id()
    write_run(writer, run, 1, 5, complete=True)
    base, _client = app()
    with ds.stream(f"{base}/streams/{run}", offset="-1", live=False) as res:
        messages = res.read_json()
        assert res.offset == offset_of(6)
        assert res.up_to_date
        assert res.content_type == "application/json"
    check_messages(messages, run, 0, 6)


def test_resume_from_an_offset_with_the_client(app, writer, run_id) -> None:
    run = run_id()
    write_run(writer, run, 1, 5, complete=True)
    base, _client = app()
    for after in (0, 3, 5):
        with ds.stream(f"{base}/streams/{run}", offset=offset_of(after), live=False) as res:
            check_messages(res.read_json(), run, after, 6)
            assert res.offset == offset_of(6)
    with ds.stream(f"{base}/streams/{run}", offset=offset_of(6), live=False) as res:
        assert res.read_json() == []


def test_catch_up_headers_closure_and_etag(app, writer, run_id) -> None:
    """The protocol's text, where the client has no support: Stream-Closed at
    the final offset, the EOF answer at the tail, ETag and 304."""
    run = run_id()
    write_run(writer, run, 1, 3, complete=True)
    _base, client = app()
    response = client.get(f"/streams/{run}", params={"offset": "-1"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["stream-next-offset"] == offset_of(4)
    assert response.headers["stream-up-to-date"] == "true"
    assert response.headers["stream-closed"] == "true"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"
    check_messages(response.json(), run, 0, 4)
    etag = response.headers["etag"]
    assert etag.endswith(':c"')
    again = client.get(f"/streams/{run}", params={"offset": "-1"}, headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    # No offset at all is the start too.
    assert client.get(f"/streams/{run}").json() == response.json()
    # At the tail of a closed stream: the canonical EOF, 200 [] with Stream-Closed.
    eof = client.get(f"/streams/{run}", params={"offset": offset_of(4)})
    assert eof.status_code == 200
    assert eof.json() == []
    assert eof.headers["stream-next-offset"] == offset_of(4)
    assert eof.headers["stream-closed"] == "true"
    assert eof.headers["stream-up-to-date"] == "true"
    # offset=now: the tail, closed, no data, no ETag.
    now = client.get(f"/streams/{run}", params={"offset": "now"})
    assert (now.status_code, now.json(), now.headers["stream-next-offset"]) == (200, [], offset_of(4))
    assert now.headers["stream-closed"] == "true"
    assert "etag" not in now.headers


def test_catch_up_of_a_live_run(app, writer, run_id) -> None:
    run = run_id()
    write_run(writer, run, 1, 3)
    _base, client = app()
    response = client.get(f"/streams/{run}", params={"offset": offset_of(1)})
    assert response.status_code == 200
    check_messages(response.json(), run, 1, 3, done=False)
    assert response.headers["stream-next-offset"] == offset_of(3)
    assert response.headers["stream-up-to-date"] == "true"
    assert "stream-closed" not in response.headers
    assert not response.headers["etag"].endswith(':c"')
    tail = client.get(f"/streams/{run}", params={"offset": offset_of(3)})
    assert (tail.status_code, tail.json()) == (200, [])
    assert tail.headers["stream-up-to-date"] == "true"
    assert "stream-closed" not in tail.headers
    now = client.get(f"/streams/{run}", params={"offset": "now"})
    assert (now.json(), now.headers["stream-next-offset"]) == ([], offset_of(3))
    assert "stream-closed" not in now.headers


def test_partial_answers_then_up_to_date(app, writer, run_id) -> None:
    """``max_chunks`` cuts an answer short: no Stream-Up-To-Date until the tail,
    and the client reads on until it has it all."""
    run = run_id()
    write_run(writer, run, 1, 6, complete=True)
    base, client = app(max_chunks=2)
    first = client.get(f"/streams/{run}", params={"offset": "-1"})
    check_messages(first.json(), run, 0, 2, done=False)
    assert first.headers["stream-next-offset"] == offset_of(2)
    assert "stream-up-to-date" not in first.headers
    assert "stream-closed" not in first.headers
    with ds.stream(f"{base}/streams/{run}", offset="-1", live=False) as res:
        check_messages(list(res.iter_json()), run, 0, 7)  # read_json stops after one answer when live=False
        assert res.offset == offset_of(7)


def test_cancelled_run_ends_with_its_cancel_event(app, writer, redis_url, backend, run_id) -> None:
    run = run_id()
    write_run(writer, run, 1, 2)
    with RunControl(redis_url, backend=backend) as control:
        assert control.cancel(run, reason="user pressed stop")
    _base, client = app()
    response = client.get(f"/streams/{run}", params={"offset": offset_of(2)})
    assert response.headers["stream-closed"] == "true"
    [cancel] = response.json()
    assert cancel["id"] == "3"
    assert cancel["event"] == "cancelled"
    assert json.loads(cancel["data"]) == {"reason": "user pressed stop"}


# ----------------------------------------------------------------- long-poll


def test_long_poll_answers(app, writer, run_id) -> None:
    """204 at the timeout (offset, up-to-date, cursor), 200 at once when data is
    stored after the offset, and 204 with Stream-Closed at once at a closed tail."""
    run = run_id()
    write_run(writer, run, 1, 2)
    _base, client = app(long_poll_timeout=0.5)
    url = f"/streams/{run}"
    started = time.monotonic()
    idle = client.get(url, params={"offset": offset_of(2), "live": "long-poll"})
    assert time.monotonic() - started >= 0.45
    assert idle.status_code == 204
    assert idle.headers["stream-next-offset"] == offset_of(2)
    assert idle.headers["stream-up-to-date"] == "true"
    cursor = idle.headers["stream-cursor"]
    echoed = client.get(url, params={"offset": offset_of(2), "live": "long-poll", "cursor": cursor})
    assert int(echoed.headers["stream-cursor"]) > int(cursor)  # never the same cache key twice
    stored = client.get(url, params={"offset": "-1", "live": "long-poll"})
    assert stored.status_code == 200
    check_messages(stored.json(), run, 0, 2, done=False)
    assert stored.headers["stream-cursor"]
    assert stored.headers["stream-up-to-date"] == "true"
    writer.complete(run)
    last = client.get(url, params={"offset": offset_of(2), "live": "long-poll"})
    assert last.status_code == 200
    check_messages(last.json(), run, 2, 3)
    assert last.headers["stream-closed"] == "true"
    started = time.monotonic()
    eof = client.get(url, params={"offset": offset_of(3), "live": "long-poll"})
    assert time.monotonic() - started < 0.4  # no waiting at a closed tail
    assert eof.status_code == 204
    assert eof.headers["stream-closed"] == "true"
    assert eof.headers["stream-up-to-date"] == "true"
    assert eof.headers["stream-next-offset"] == offset_of(3)


def test_long_poll_with_the_client_follows_a_live_run(app, writer, run_id) -> None:
    """The client's long-poll loop, from the tail of a live run, gets every
    chunk written meanwhile; 0.1.0 knows no closure, so it stops at [DONE]."""
    run = run_id()
    write_run(writer, run, 1, 2)
    base, _client = app(long_poll_timeout=1.0)

    async def follow() -> list[Any]:
        got: list[Any] = []
        async with ds.astream(f"{base}/streams/{run}", offset=offset_of(2), live="long-poll") as res:
            async for message in res.iter_json():
                got.append(message)
                if message["data"] == "[DONE]":
                    assert res.offset == offset_of(13)
                    return got
        return got

    def produce() -> None:
        for i in range(3, 13):
            time.sleep(0.05)
            write_run(writer, run, i, i)
        time.sleep(1.2)  # one long-poll times out (204) on the way
        writer.complete(run)

    async def main() -> list[Any]:
        producer = asyncio.create_task(asyncio.to_thread(produce))
        got = await asyncio.wait_for(follow(), 20)
        await producer
        return got

    check_messages(asyncio.run(main()), run, 2, 13)


# ----------------------------------------------------------------- SSE


def test_sse_with_the_client_catch_up_and_live(app, writer, run_id) -> None:
    """From ``-1`` of a run half written: the stored chunks, then the live ones,
    then the server closes at the terminal and the client's iteration ends."""
    run = run_id()
    write_run(writer, run, 1, 3)
    base, _client = app()
    offsets: list[str] = []

    async def follow() -> list[Any]:
        got: list[Any] = []
        async with ds.astream(f"{base}/streams/{run}", offset="-1", live="sse") as res:
            async for event in res.iter_events(mode="json"):
                got.extend(event.data)
                offsets.append(event.next_offset)
                if len(got) == 3:
                    threading.Thread(target=write_run, args=(writer, run, 4, 8, True)).start()
        return got

    check_messages(asyncio.run(asyncio.wait_for(follow(), 20)), run, 0, 9)
    assert offsets == [offset_of(seq) for seq in range(1, 10)]


def test_sse_resume_from_an_offset_with_the_client(app, writer, run_id) -> None:
    run = run_id()
    write_run(writer, run, 1, 5, complete=True)
    base, _client = app()

    async def follow() -> list[Any]:
        async with ds.astream(f"{base}/streams/{run}", offset=offset_of(4), live="sse") as res:
            return [message async for message in res.iter_json()]

    check_messages(asyncio.run(asyncio.wait_for(follow(), 20)), run, 4, 6)


def test_sse_event_shape_and_closure(app, writer, run_id) -> None:
    """``event: data`` (a JSON array) then ``event: control`` per chunk; the
    last control has ``streamClosed`` and no cursor; a closed tail gets the
    closing control alone."""
    run = run_id()
    write_run(writer, run, 1, 2, complete=True)
    _base, client = app()
    response = client.get(f"/streams/{run}", params={"offset": "-1", "live": "sse"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert [kind for kind, _ in events] == ["data", "control"] * 3
    check_messages([m for kind, data in events if kind == "data" for m in data], run, 0, 3)
    controls = [data for kind, data in events if kind == "control"]
    assert [c["streamNextOffset"] for c in controls] == [offset_of(seq) for seq in (1, 2, 3)]
    assert all("streamCursor" in c and "streamClosed" not in c for c in controls[:-1])
    assert [c.get("upToDate") for c in controls[:-1]] == [None, None]  # the tail (3) not reached yet
    assert controls[-1] == {"streamNextOffset": offset_of(3), "streamClosed": True, "upToDate": True}
    at_tail = client.get(f"/streams/{run}", params={"offset": offset_of(3), "live": "sse"})
    assert sse_events(at_tail.text) == [("control", controls[-1])]


def test_sse_lifetime_ends_without_closure(app, writer, run_id) -> None:
    """An open stream's connection ends after ``sse_lifetime``, with no
    ``streamClosed``: the client reconnects from the last offset."""
    run = run_id()
    write_run(writer, run, 1, 1)
    _base, client = app(sse_lifetime=0.5)
    started = time.monotonic()
    response = client.get(f"/streams/{run}", params={"offset": offset_of(1), "live": "sse"})
    assert 0.45 <= time.monotonic() - started < 5
    [(kind, control)] = sse_events(response.text)
    assert kind == "control"
    assert control["streamNextOffset"] == offset_of(1)
    assert control["upToDate"] is True
    assert "streamClosed" not in control
    assert control["streamCursor"]


# ----------------------------------------------------------------- both live modes at once


def test_long_poll_and_sse_readers_wait_while_a_run_is_written(app, served, writer, run_id) -> None:
    """A long-poll reader and an SSE reader both wait at the tail of a live
    run; the run is written while they wait; each gets every chunk, once, in
    order, and the SSE one is closed at the terminal."""
    run = run_id()
    writer.write(run, payload(1))
    writer.flush()
    base, client = app(long_poll_timeout=5.0)
    reader = served.readers[-1]
    url = f"{base}/streams/{run}"

    async def long_poll() -> list[Any]:
        got: list[Any] = []
        async with ds.astream(url, offset=offset_of(1), live="long-poll") as res:
            async for message in res.iter_json():
                got.append(message)
                if message["data"] == "[DONE]":
                    break
        return got

    async def sse() -> tuple[list[Any], str]:
        async with ds.astream(url, offset=offset_of(1), live="sse") as res:
            got = [message async for message in res.iter_json()]
            return got, res.offset

    def produce() -> None:
        # Both requests wait at the tail once the app's reader holds two reads open.
        wait_for(lambda: reader.stats()["active_reads"] >= 2, 10, "both readers waiting")
        write_run(writer, run, 2, 30, complete=True)

    async def main() -> tuple[list[Any], tuple[list[Any], str]]:
        producer = asyncio.create_task(asyncio.to_thread(produce))
        polled, streamed = await asyncio.wait_for(asyncio.gather(long_poll(), sse()), 30)
        await producer
        return polled, streamed

    polled, (streamed, sse_offset) = asyncio.run(main())
    check_messages(polled, run, 1, 31)
    check_messages(streamed, run, 1, 31)
    assert sse_offset == offset_of(31)
    closed = client.get(f"/streams/{run}", params={"offset": sse_offset, "live": "long-poll"})
    assert (closed.status_code, closed.headers["stream-closed"]) == (204, "true")


# ----------------------------------------------------------------- HEAD, writes, errors


def test_head(app, writer, run_id) -> None:
    run = run_id()
    write_run(writer, run, 1, 2)
    base, client = app()
    result = ds.DurableStream.head_static(f"{base}/streams/{run}")
    assert result.offset == offset_of(2)
    assert result.content_type == "application/json"
    head = client.head(f"/streams/{run}")
    assert head.status_code == 200
    assert head.headers["stream-next-offset"] == offset_of(2)
    assert "stream-closed" not in head.headers
    assert head.headers["cache-control"] == "no-store"
    writer.complete(run)
    closed = client.head(f"/streams/{run}")
    assert (closed.headers["stream-next-offset"], closed.headers["stream-closed"]) == (offset_of(3), "true")
    with pytest.raises(ds.StreamNotFoundError):
        ds.DurableStream.head_static(f"{base}/streams/{run_id()}")


def test_writes_are_refused(app, writer, run_id) -> None:
    run = run_id()
    write_run(writer, run, 1, 1)
    _base, client = app()
    for method in ("POST", "PUT", "DELETE"):
        response = client.request(method, f"/streams/{run}", headers={"Stream-Closed": "true"}, content=b"[1]")
        assert response.status_code == 405, method
        assert response.headers["allow"] == "GET, HEAD"
    assert client.get(f"/streams/{run}").headers["stream-next-offset"] == offset_of(1)  # nothing changed


def test_errors(app, writer, run_id) -> None:
    run = run_id()
    write_run(writer, run, 1, 2)
    base, client = app()
    url = f"/streams/{run}"
    assert client.get(f"/streams/{run_id()}").status_code == 404
    assert client.get(f"/streams/{run_id()}", params={"offset": "-1", "live": "sse"}).status_code == 404
    for params in (
        {"offset": "abc"},
        {"offset": ""},
        {"offset": offset_of(2) + "0"},
        {"offset": "-1", "live": "poll"},
        {"live": "long-poll"},  # live modes need an offset
        {"live": "sse"},
        {"offset": offset_of(3)},  # past the tail
        {"offset": "x" * 500},
    ):
        response = client.get(url, params=params)
        assert response.status_code == 400, params
        assert len(response.text) < 200
    assert client.get(url, params=[("offset", "-1"), ("offset", "1")]).status_code == 400
    with pytest.raises(ds.StreamNotFoundError):
        ds.stream(f"{base}/streams/{run_id()}", offset="-1", live=False)


def test_authorize(served, redis_url, backend, writer, run_id) -> None:
    run = run_id()
    write_run(writer, run, 1, 1)
    seen: list[tuple[str, str]] = []

    async def authorize(request: Request, asked: str) -> bool | int:
        seen.append((request.method, asked))
        return {"yes": True, "no": False, "hide": 404}[request.headers.get("x-user", "no")]

    reader = AsyncStreamReader(redis_url, backend=backend, **QUIET)
    served.readers.append(reader)
    base = serve_app(served, Starlette(routes=durable_streams.routes(reader, authorize=authorize, path="/ds/{run_id}")))
    with httpx.Client(base_url=base, timeout=TIMEOUT) as client:
        assert client.get(f"/ds/{run}", headers={"x-user": "yes"}).status_code == 200
        assert client.get(f"/ds/{run}").status_code == 403
        assert client.head(f"/ds/{run}", headers={"x-user": "hide"}).status_code == 404
        assert client.get(f"/ds/{run}", params={"offset": "-1", "live": "sse"}).status_code == 403
    assert seen[0] == ("GET", run)
    assert ("HEAD", run) in seen
    with pytest.raises(ValueError, match="run_id"):
        durable_streams.routes(reader, path="/ds/{id}")
    with pytest.raises(ValueError, match="long_poll_timeout"):
        durable_streams.routes(reader, long_poll_timeout=0)
    with pytest.raises(ValueError, match="max_chunks"):
        durable_streams.routes(reader, max_chunks=0)
