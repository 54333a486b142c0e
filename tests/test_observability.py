"""Observability (issue 15): loggers and exc_info, readers' stats(), the
Prometheus collector and OpenTelemetry, on both backends against a real server."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sse_redis import (
    AsyncStreamReader,
    RedisUnavailable,
    StreamReader,
    StreamWriter,
    aprocess_stream,
    metrics,
    process_stream,
    telemetry,
)

READER_KEYS = {
    "reads",
    "active_reads",
    "chunks",
    "errors",
    "subscriptions",
    "catchup_reads",
    "reconnects",
    "xreads",
    "connections",
    "lag_max_s",
    "lag_p99_s",
}


def chunks(n: int) -> list[str]:
    return [f'data: {{"n":{i}}}\n\n' for i in range(n)]


def test_reader_stats_count_reads_and_chunks(
    redis_url: str, backend: str, make_writer: Callable[..., StreamWriter], run_id: Callable[[], str]
) -> None:
    writer = make_writer(redis_url)
    run = run_id()
    for chunk in chunks(5):
        writer.write(run, chunk)
    writer.complete(run)
    with StreamReader(redis_url, backend=backend) as reader:
        assert reader.stats() == dict.fromkeys(READER_KEYS, 0)  # no hub started by asking
        assert len(list(reader.read(run))) == 6
        stats = reader.stats()
        assert set(stats) == READER_KEYS
        assert stats["reads"] == 1
        assert stats["chunks"] == 6
        assert stats["active_reads"] == 0
        assert stats["errors"] == 0
        assert stats["subscriptions"] == 0
        assert stats["catchup_reads"] >= 1
        assert stats["reconnects"] == 0
        assert stats["connections"] >= 1
        # A read stopped early is not an error (its batch, 3..6, counts whole); one of a missing run is.
        stream = reader.read(run, starting_after=2)
        next(stream)
        stream.close()
        with pytest.raises(Exception, match="no stream"):
            list(reader.read(run_id(), missing_timeout=0.2))
        stats = reader.stats()
        assert (stats["reads"], stats["chunks"], stats["errors"], stats["active_reads"]) == (3, 10, 1, 0)
    assert reader.stats()["connections"] == 0  # closed: the hub's part is zeros


def test_async_reader_stats(
    redis_url: str, backend: str, make_writer: Callable[..., StreamWriter], run_id: Callable[[], str]
) -> None:
    writer = make_writer(redis_url)
    run = run_id()
    for chunk in chunks(3):
        writer.write(run, chunk)
    writer.complete(run)

    async def main() -> dict[str, float]:
        async with AsyncStreamReader(redis_url, backend=backend) as reader:
            got = [c async for c in reader.read(run, starting_after=1)]
            assert len(got) == 3
            return reader.stats()

    stats = asyncio.run(main())
    assert set(stats) == READER_KEYS
    assert (stats["reads"], stats["chunks"], stats["active_reads"], stats["errors"]) == (1, 3, 0, 0)


def test_failed_run_logs_its_traceback(
    redis_url: str, make_writer: Callable[..., StreamWriter], run_id: Callable[[], str], caplog: Any
) -> None:
    writer = make_writer(redis_url)

    def source() -> Iterator[str]:
        yield "data: 1\n\n"
        raise ValueError("the model broke")

    run = run_id()
    with caplog.at_level(logging.ERROR, logger="sse_redis"):
        assert process_stream(source(), writer, run) == "failed"
    [record] = [r for r in caplog.records if r.name == "sse_redis.writer"]
    assert record.levelno == logging.ERROR
    assert run in record.getMessage()
    assert record.exc_info is not None
    assert record.exc_info[0] is ValueError
    assert "the model broke" in caplog.text
    assert "Traceback" in caplog.text
    assert "in source" in caplog.text


def test_prometheus_exposition(
    redis_url: str, backend: str, make_writer: Callable[..., StreamWriter], run_id: Callable[[], str]
) -> None:
    registry = CollectorRegistry()
    writer = make_writer(redis_url)
    reader = StreamReader(redis_url, backend=backend)
    try:
        metrics.register(writer, reader, name="api", registry=registry)
        run = run_id()
        assert process_stream(chunks(4), writer, run) == "completed"
        assert len(list(reader.read(run))) == 5
        text = generate_latest(registry).decode()
    finally:
        reader.close()
    samples = {
        (s.name, s.labels.get("name"), s.labels.get("backend")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("sse_redis_writer_chunks_total", "api", backend)] == 5
    assert samples[("sse_redis_writer_batches_total", "api", backend)] >= 1
    assert samples[("sse_redis_writer_retries_total", "api", backend)] == 0
    assert samples[("sse_redis_writer_pending_chunks", "api", backend)] == 0
    assert samples[("sse_redis_reader_reads_total", "api", backend)] == 1
    assert samples[("sse_redis_reader_chunks_total", "api", backend)] == 5
    assert samples[("sse_redis_reader_active_reads", "api", backend)] == 0
    assert "# TYPE sse_redis_writer_chunks_total counter" in text
    assert "# TYPE sse_redis_reader_connections gauge" in text
    metrics.unregister(writer, reader, registry=registry)
    assert "sse_redis_writer_chunks_total{" not in generate_latest(registry).decode()


@pytest.fixture
def otel() -> Iterator[tuple[InMemorySpanExporter, InMemoryMetricReader]]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    metric_reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[metric_reader])
    telemetry.enable(tracer_provider=tracer_provider, meter_provider=meter_provider)
    try:
        yield exporter, metric_reader
    finally:
        telemetry.disable()


def metric_points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    out: dict[str, list[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                out.setdefault(metric.name, []).extend(metric.data.data_points)
    return out


def test_otel_spans_and_metrics(
    redis_url: str,
    backend: str,
    make_writer: Callable[..., StreamWriter],
    make_async_writer: Callable[..., Any],
    run_id: Callable[[], str],
    otel: tuple[InMemorySpanExporter, InMemoryMetricReader],
) -> None:
    exporter, metric_reader = otel
    writer = make_writer(redis_url)
    reader = StreamReader(redis_url, backend=backend)
    telemetry.register(writer, reader)
    ok, bad = run_id(), run_id()

    def failing() -> Iterator[str]:
        yield "data: 1\n\n"
        raise RuntimeError("boom")

    try:
        assert (
            process_stream(
                [*chunks(2), 'data: {"message_type":"stop_reason","stop_reason":"end_turn"}\n\n'], writer, ok
            )
            == "completed"
        )
        assert process_stream(failing(), writer, bad) == "failed"
        assert len(list(reader.read(ok))) == 4

        async def run_async() -> str:
            return await aprocess_stream(_agen(chunks(2)), make_async_writer(redis_url), run_id())

        assert asyncio.run(run_async()) == "completed"
        points = metric_points(metric_reader)
    finally:
        telemetry.unregister(writer, reader)
        reader.close()

    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["process_stream"] * 3
    first, failed, third = spans
    attrs = dict(first.attributes or {})
    assert attrs["sse_redis.run_id"] == ok
    assert attrs["sse_redis.status"] == "completed"
    assert attrs["messaging.system"] == "redis"
    assert attrs["messaging.operation.name"] == "process"
    assert attrs["sse_redis.stop_reason"] == "end_turn"
    assert first.kind == SpanKind.CONSUMER
    assert failed.status.status_code == StatusCode.ERROR
    assert dict(failed.attributes or {})["sse_redis.status"] == "failed"
    assert [e.name for e in failed.events] == ["exception"]
    assert dict(failed.events[0].attributes or {})["exception.type"].endswith("RuntimeError")
    assert dict(third.attributes or {})["sse_redis.status"] == "completed"

    [sent] = points["messaging.client.sent.messages"]
    assert sent.value == 4 + 2  # ok: 3 chunks + [DONE]; bad: 1 chunk + its error event
    assert dict(sent.attributes)["messaging.operation.name"] == "send"
    [consumed] = points["messaging.client.consumed.messages"]
    assert consumed.value == 4
    assert dict(consumed.attributes)["messaging.operation.name"] == "receive"
    durations = points["messaging.process.duration"]
    assert sum(p.count for p in durations) == 3


async def _agen(items: list[str]) -> Any:
    for item in items:
        yield item


def test_telemetry_is_off_by_default(redis_url: str, make_writer: Callable[..., StreamWriter]) -> None:
    assert not telemetry.enabled()
    assert telemetry.start_run("r") is None  # the processors' only telemetry cost: one global read per run


# -- engine events: retries and reconnects logged at WARNING with their cause --

CAUSES = {"connection refused", "connection lost", "the blocker's link went silent"}


def events(caplog: Any, logger: str) -> list[tuple[str, str]]:
    """``(kind, cause)`` of the WARNINGs the engines' events made on ``logger``."""
    return [
        (r.sse_redis_event, r.sse_redis_cause)
        for r in caplog.records
        if r.name == logger and r.levelno == logging.WARNING and hasattr(r, "sse_redis_event")
    ]


def test_link_error_causes_read_the_same_on_both_backends() -> None:
    """The pure twin's words; the Rust core's are pinned to the same table in
    ``src/io/links.rs`` (its unit test ``causes``)."""
    import redis

    from sse_redis._pure import links

    refused = redis.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")
    assert links.cause(refused, 10.0) == "connection refused"
    assert links.cause(redis.TimeoutError("Timeout reading from socket"), 10.0) == "timed out (no reply within 10.0s)"
    assert links.cause(redis.ConnectionError("Connection closed by server."), 10.0) == "connection lost"
    assert links.cause(ConnectionResetError(104, "Connection reset by peer"), 10.0) == "connection lost"
    assert links.cause(redis.exceptions.BusyLoadingError("LOADING"), 10.0) == "loading"
    assert links.cause(redis.exceptions.OutOfMemoryError("OOM"), 10.0) == "out of memory"
    assert links.cause(redis.exceptions.TryAgainError("TRYAGAIN"), 10.0) == "try again"
    assert links.cause(redis.exceptions.MasterDownError("MASTERDOWN"), 10.0) == "master down"
    assert links.cause(redis.exceptions.ClusterDownError("CLUSTERDOWN"), 10.0) == "cluster down"
    assert links.cause(redis.exceptions.ReadOnlyError("READONLY"), 10.0) == "read only replica"


def test_events_are_bounded_and_say_what_was_dropped() -> None:
    from sse_redis._pure import links

    kept = links.Events()
    for i in range(links.MAX_EVENTS + 5):
        kept.push("retry", f"cause {i}")
    got = kept.take()
    assert got[0] == ("dropped", "5 older events not kept")
    assert got[1:] == [("retry", f"cause {i}") for i in range(5, links.MAX_EVENTS + 5)]
    assert kept.take() == []


def test_writer_retries_are_logged_with_their_cause(
    backend: str,
    dedicated_server: Callable[..., Any],
    make_writer: Callable[..., StreamWriter],
    run_id: Callable[[], str],
    caplog: Any,
) -> None:
    caplog.set_level(logging.WARNING, logger="sse_redis")
    server = dedicated_server()
    writer = make_writer(server.url, retry_timeout=20.0)
    writer.write(run_id(), "data: 1\n\n")
    writer.flush()
    server.stop()
    # A new run (the restarted server keeps no data): its open waits for the server.
    thread = threading.Thread(target=writer.write, args=(run_id(), "data: 2\n\n"), daemon=True)
    thread.start()
    time.sleep(0.5)  # a few retries against the stopped server
    server.start()
    thread.join(20.0)
    writer.flush(timeout=20.0)
    got = events(caplog, "sse_redis.writer")
    assert got, "no retry was logged"
    assert {kind for kind, _ in got} == {"retry"}
    assert {cause for _, cause in got} <= CAUSES
    assert ("retry", "connection refused") in got
    assert len(got) == writer.stats()["retries"]  # one WARNING per retry
    assert all("Redis pipeline retried: " in r.getMessage() for r in caplog.records if r.name == "sse_redis.writer")


def test_writer_giving_up_is_logged(
    backend: str,
    dedicated_server: Callable[..., Any],
    make_writer: Callable[..., StreamWriter],
    run_id: Callable[[], str],
    caplog: Any,
) -> None:
    caplog.set_level(logging.WARNING, logger="sse_redis")
    server = dedicated_server()
    writer = make_writer(server.url, retry_timeout=0.5)
    run = run_id()
    writer.write(run, "data: 1\n\n")
    writer.flush()
    server.stop()
    writer.write(run, "data: 2\n\n")
    with pytest.raises(RedisUnavailable):
        writer.flush(timeout=10.0)
    got = events(caplog, "sse_redis.writer")
    assert got[-1] == ("gave_up", "connection refused")
    assert [kind for kind, _ in got].count("gave_up") == 1
    assert {cause for _, cause in got} <= CAUSES
    assert len(got) == writer.stats()["retries"]  # the last try counts as a retry, logged as the give-up


def test_retries_are_logged_without_any_call(
    backend: str,
    dedicated_server: Callable[..., Any],
    make_writer: Callable[..., StreamWriter],
    run_id: Callable[[], str],
    caplog: Any,
) -> None:
    """The drain thread logs what the engine retried though the application
    never calls flush, complete, close or stats."""
    caplog.set_level(logging.WARNING, logger="sse_redis")
    server = dedicated_server()
    writer = make_writer(server.url, retry_timeout=30.0)
    run = run_id()
    writer.write(run, "data: 1\n\n")
    writer.flush()
    server.stop()
    writer.write(run, "data: 2\n\n")
    deadline = time.monotonic() + 5.0
    while not events(caplog, "sse_redis.writer") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ("retry", "connection refused") in events(caplog, "sse_redis.writer")


def test_reader_reconnects_are_logged_with_their_cause(
    backend: str,
    dedicated_server: Callable[..., Any],
    fault_proxy: Callable[..., Any],
    make_writer: Callable[..., StreamWriter],
    run_id: Callable[[], str],
    caplog: Any,
) -> None:
    caplog.set_level(logging.WARNING, logger="sse_redis")
    server = dedicated_server()
    proxy = fault_proxy(server)
    writer = make_writer(server.url)
    run = run_id()
    writer.write(run, "data: 1\n\n")
    writer.flush()
    got: list[str] = []
    with StreamReader(proxy.url, backend=backend) as reader:
        first = threading.Event()

        def read() -> None:
            for chunk in reader.read(run, idle_timeout=20.0):
                got.append(chunk)
                first.set()

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        assert first.wait(10.0)
        time.sleep(0.3)  # the read is live: its blocker waits in XREAD
        proxy.drop_all()
        time.sleep(0.3)
        writer.write(run, "data: 2\n\n")
        writer.complete(run)
        thread.join(20.0)
        assert not thread.is_alive()
        stats = reader.stats()
    assert len(got) == 3
    logged = events(caplog, "sse_redis.reader")
    assert logged, "no reconnect was logged"
    assert {kind for kind, _ in logged} == {"reconnect"}
    assert ("reconnect", "connection lost") in logged
    assert {cause for _, cause in logged} <= CAUSES
    assert len(logged) == stats["reconnects"]  # one WARNING per reconnect


# -- reader lag ------------------------------------------------------------------


def test_reader_lag_is_measured_from_the_stored_timestamp(
    redis_url: str,
    backend: str,
    make_writer: Callable[..., StreamWriter],
    plain_client: Callable[[str], Any],
    run_id: Callable[[], str],
) -> None:
    writer = make_writer(redis_url)
    run = run_id()
    for chunk in chunks(20):
        writer.write(run, chunk)
    writer.complete(run)
    with StreamReader(redis_url, backend=backend) as reader:
        assert len(list(reader.read(run))) == 21
        stats = reader.stats()
        assert 0.0 <= stats["lag_p99_s"] <= stats["lag_max_s"] < 5.0
        # An entry stored 5 s ago (a timestamp in ms, as append.lua and Letta's module write it).
        old = run_id()
        client = plain_client(redis_url)
        stamp = int(time.time() * 1000) - 5000
        client.xadd(f"sse:run:{old}", {"seq_id": 1, "data": "data: old\n\n", "timestamp": stamp}, id="0-1")
        client.xadd(
            f"sse:run:{old}",
            {"seq_id": 2, "data": "data: [DONE]\n\n", "timestamp": f"{stamp}.5", "complete": "true"},
            id="0-2",
        )
        assert len(list(reader.read(old))) == 2
        stats = reader.stats()
        assert 4.5 <= stats["lag_max_s"] < 15.0


def test_a_missing_or_unparsable_timestamp_is_left_out_of_lag(
    redis_url: str, backend: str, plain_client: Callable[[str], Any], run_id: Callable[[], str]
) -> None:
    run = run_id()
    client = plain_client(redis_url)
    key = f"sse:run:{run}"
    client.xadd(key, {"seq_id": 1, "data": "data: 1\n\n"}, id="0-1")
    for seq, stamp in enumerate(["yesterday", "", "-5", "1e3", "nan", "1."], start=2):
        client.xadd(key, {"seq_id": seq, "data": f"data: {seq}\n\n", "timestamp": stamp}, id=f"0-{seq}")
    client.xadd(key, {"seq_id": 8, "data": "data: [DONE]\n\n", "complete": "true"}, id="0-8")
    with StreamReader(redis_url, backend=backend) as reader:
        assert len(list(reader.read(run))) == 8
        stats = reader.stats()
        assert (stats["chunks"], stats["lag_max_s"], stats["lag_p99_s"]) == (8, 0.0, 0.0)
