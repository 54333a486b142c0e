"""OpenTelemetry for sse-redis (optional: ``pip install 'sse-redis[otel]'``,
i.e. ``opentelemetry-api``; an SDK or distro of yours exports).

Off until ``enable()`` is called, whatever is installed: a disabled
``process_stream`` reads one module global per run and nothing per chunk.
Enabled::

    from sse_redis import telemetry
    telemetry.enable()                      # the global tracer and meter providers
    telemetry.register(writer, reader)      # whose stats() the metrics observe

- **Spans:** one ``process_stream`` span (kind ``CONSUMER``, i.e. the run's
  chunks are consumed from its source and sent on) per ``process_stream`` /
  ``aprocess_stream`` call, current while the source is drained (so the
  source's own spans are its children), with ``messaging.system`` =
  ``redis``, ``messaging.operation.name`` = ``process``,
  ``messaging.operation.type`` = ``process``, ``sse_redis.run_id``,
  ``sse_redis.status`` (``completed``/``failed``/``cancelled``),
  ``sse_redis.stop_reason`` when one was seen; a failed run records its
  exception and sets the span status to ERROR (``error.type`` its class).
  Write batches get no span: they are sent by the engines' own threads (the
  Rust one without the GIL), and a span per batch would cost per batch what
  the writer saves by batching.
- **Metrics** (the messaging semantic conventions, asynchronous instruments
  read from the registered objects' ``stats()`` at collection time, so no
  per-chunk work): ``messaging.client.sent.messages`` (writers' stored
  chunks, ``messaging.operation.name`` = ``send``),
  ``messaging.client.consumed.messages`` (chunks delivered to readers' reads,
  ``receive``), both ``{message}`` counters with ``messaging.system`` =
  ``redis``; and ``messaging.process.duration`` (histogram, seconds, one
  record per processed run, with ``sse_redis.status``).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # opentelemetry-api is optional: its types only for checkers
    from contextvars import Token

    from opentelemetry.context import Context
    from opentelemetry.metrics import Histogram
    from opentelemetry.trace import Span, Tracer

__all__ = ["disable", "enable", "enabled", "register", "unregister"]

SYSTEM = "redis"


class _Telemetry:
    """The tracer and instruments of an ``enable()``d process."""

    def __init__(self, tracer_provider: Any, meter_provider: Any) -> None:
        from opentelemetry import metrics, trace
        from opentelemetry.metrics import CallbackOptions, Observation

        from . import __version__

        self.trace = trace
        self.tracer: Tracer = trace.get_tracer("sse_redis", __version__, tracer_provider=tracer_provider)
        meter = metrics.get_meter("sse_redis", __version__, meter_provider=meter_provider)

        def observe(kind: str, key: str, operation: str) -> Any:
            def callback(_options: CallbackOptions) -> Iterable[Observation]:
                for obj in list(_objects):
                    if _kind(obj) != kind:
                        continue
                    try:
                        value = obj.stats()[key]
                    except Exception:  # closed: nothing to report
                        continue
                    attributes = {
                        "messaging.system": SYSTEM,
                        "messaging.operation.name": operation,
                        "sse_redis.backend": obj.backend,
                    }
                    yield Observation(value, attributes)

            return callback

        meter.create_observable_counter(
            "messaging.client.sent.messages",
            callbacks=[observe("writer", "chunks", "send")],
            unit="{message}",
            description="Number of messages producer attempted to send to the broker (chunks stored).",
        )
        meter.create_observable_counter(
            "messaging.client.consumed.messages",
            callbacks=[observe("reader", "chunks", "receive")],
            unit="{message}",
            description="Number of messages that were delivered to the application (chunks read).",
        )
        self.process_duration: Histogram = meter.create_histogram(
            "messaging.process.duration", unit="s", description="Duration of processing operation (one run)."
        )


_active: _Telemetry | None = None  # read once per run by the processors
_lock = threading.Lock()
_objects: weakref.WeakSet[Any] = weakref.WeakSet()


def _kind(obj: Any) -> str:
    from .reader import AsyncStreamReader, StreamReader

    return "reader" if isinstance(obj, (StreamReader, AsyncStreamReader)) else "writer"


def enable(tracer_provider: Any = None, meter_provider: Any = None) -> None:
    """Turn spans and metrics on, on the given providers (default: the
    global ones ``opentelemetry`` hands out).  Raises ``ImportError`` when
    ``opentelemetry-api`` is not installed.  Calling it again replaces the
    providers (instruments are made again on the new meter)."""
    global _active
    with _lock:
        _active = _Telemetry(tracer_provider, meter_provider)


def disable() -> None:
    """Turn spans and metrics off (the default)."""
    global _active
    _active = None


def enabled() -> bool:
    """Whether ``enable()`` is in force."""
    return _active is not None


def register(*objects: Any) -> None:
    """Writers and readers whose ``stats()`` the metrics observe (held weakly)."""
    from .reader import AsyncStreamReader, StreamReader
    from .writer import AsyncStreamWriter, StreamWriter

    for obj in objects:
        if not isinstance(obj, (StreamWriter, AsyncStreamWriter, StreamReader, AsyncStreamReader)):
            raise TypeError(f"register takes writers and readers, not {type(obj).__name__}")
        _objects.add(obj)


def unregister(*objects: Any) -> None:
    """Stop observing these writers and readers."""
    for obj in objects:
        _objects.discard(obj)


class RunSpan:
    """One run's span and clock, made by the processors only when enabled."""

    def __init__(self, telemetry: _Telemetry, run_id: str) -> None:
        from opentelemetry import context

        self.telemetry = telemetry
        self.context = context
        trace = telemetry.trace
        self.span: Span = telemetry.tracer.start_span(
            "process_stream",
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.name": "process",
                "messaging.operation.type": "process",
                "sse_redis.run_id": run_id,
            },
        )
        self.token: Token[Context] = context.attach(trace.set_span_in_context(self.span))
        self.started: float = time.monotonic()

    def end(self, status: str, stop_reason: str | None, error: BaseException | None) -> None:
        from opentelemetry.trace import Status, StatusCode

        span = self.span
        self.context.detach(self.token)  # logs (never raises) if the context moved meanwhile
        span.set_attribute("sse_redis.status", status)
        if stop_reason is not None:
            span.set_attribute("sse_redis.stop_reason", stop_reason)
        attributes = {"messaging.system": SYSTEM, "messaging.operation.name": "process", "sse_redis.status": status}
        if error is not None:
            span.record_exception(error)
            span.set_attribute("error.type", type(error).__qualname__)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
            attributes["error.type"] = type(error).__qualname__
        span.end()
        self.telemetry.process_duration.record(time.monotonic() - self.started, attributes)


def start_run(run_id: str) -> RunSpan | None:
    """A run's span when telemetry is enabled, else ``None`` (one global read)."""
    telemetry = _active
    return None if telemetry is None else RunSpan(telemetry, run_id)
