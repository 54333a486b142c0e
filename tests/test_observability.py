"""Observability (issue 15): loggers and exc_info, readers' stats(), the
Prometheus collector and OpenTelemetry, on both backends against a real server."""

from __future__ import annotations

import asyncio
import logging
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

from sse_redis import AsyncStreamReader, StreamReader, StreamWriter, aprocess_stream, metrics, process_stream, telemetry

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

    async def main() -> dict[str, int]:
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
