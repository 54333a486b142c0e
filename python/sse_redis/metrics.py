"""Prometheus metrics over writers' and readers' ``stats()`` (optional:
``pip install 'sse-redis[metrics]'``, i.e. ``prometheus_client``).

Nothing is counted for Prometheus: a scrape calls ``stats()`` on every
registered writer and reader (no I/O, a lock taken per object) and reports
the numbers, so registering costs nothing between scrapes::

    from sse_redis import metrics
    metrics.register(writer, reader, name="api")   # REGISTRY, prometheus_client's default
    # or metrics.register(writer, registry=my_registry)

Every metric has the labels ``name`` (given at ``register``, default
``"default"``) and ``backend`` (``rust`` or ``python``).  Counters (``_total``)
and gauges:

- writers: ``sse_redis_writer_chunks_total``, ``sse_redis_writer_batches_total``,
  ``sse_redis_writer_pipelines_total``, ``sse_redis_writer_retries_total``,
  ``sse_redis_writer_errors_total``; ``sse_redis_writer_pending_chunks``,
  ``sse_redis_writer_open_runs``;
- readers: ``sse_redis_reader_reads_total``, ``sse_redis_reader_chunks_total``,
  ``sse_redis_reader_errors_total``, ``sse_redis_reader_catchup_reads_total``,
  ``sse_redis_reader_xreads_total``, ``sse_redis_reader_reconnects_total``;
  ``sse_redis_reader_active_reads``, ``sse_redis_reader_subscriptions``,
  ``sse_redis_reader_connections``.

Objects are held weakly: a writer or reader that is garbage collected leaves
the exposition; a closed one reports its last numbers until ``unregister``.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from typing import Any, Final

from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from .reader import AsyncStreamReader, StreamReader
from .writer import AsyncStreamWriter, StreamWriter

__all__ = ["SSERedisCollector", "register", "unregister"]

# (stats key, metric name without the prefix, is a counter, help)
Table = tuple[tuple[str, str, bool, str], ...]
WRITER_METRICS: Final[Table] = (
    ("chunks", "chunks", True, "Chunks stored in Redis."),
    ("batches", "batches", True, "Batches (one run's chunks, all or nothing) stored."),
    ("pipelines", "pipelines", True, "Round trips sent to Redis."),
    ("retries", "retries", True, "Pipelines sent again after a link error or a 'not now' reply."),
    ("errors", "errors", True, "Batches that failed (their run is broken)."),
    ("pending", "pending_chunks", False, "Chunks queued, not yet stored."),
    ("runs", "open_runs", False, "Runs the writer holds state for."),
)
READER_METRICS: Final[Table] = (
    ("reads", "reads", True, "Reads started."),
    ("chunks", "chunks", True, "Chunks delivered to reads (pings not counted)."),
    ("errors", "errors", True, "Reads that ended with an error."),
    ("catchup_reads", "catchup_reads", True, "XRANGE rounds that caught reads up."),
    ("xreads", "xreads", True, "Blocking XREAD calls."),
    ("reconnects", "reconnects", True, "Links to Redis made again after a failure."),
    ("active_reads", "active_reads", False, "Reads not over yet."),
    ("subscriptions", "subscriptions", False, "Subscriptions in the reader's hub."),
    ("connections", "connections", False, "The reader hub's connections to Redis."),
)
LABELS: Final = ["name", "backend"]


class SSERedisCollector(Collector):
    """A ``prometheus_client`` collector over registered writers and readers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()

    def add(self, obj: Any, name: str) -> None:
        if not isinstance(obj, (StreamWriter, AsyncStreamWriter, StreamReader, AsyncStreamReader)):
            raise TypeError(f"register takes writers and readers, not {type(obj).__name__}")
        with self._lock:
            self._objects[obj] = name

    def remove(self, obj: Any) -> None:
        with self._lock:
            self._objects.pop(obj, None)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            objects = list(self._objects.items())
        yield from self._families("writer", WRITER_METRICS, objects, (StreamWriter, AsyncStreamWriter))
        yield from self._families("reader", READER_METRICS, objects, (StreamReader, AsyncStreamReader))

    @staticmethod
    def _families(kind: str, table: Table, objects: list[tuple[Any, str]], types: tuple[type, ...]) -> Iterator[Metric]:
        rows: list[tuple[list[str], dict[str, int]]] = []
        for obj, name in objects:
            if not isinstance(obj, types):
                continue
            face: Any = obj  # a writer or reader face: stats() and backend
            try:
                stats = face.stats()
            except Exception:  # a closed writer: nothing to report
                continue
            rows.append(([name, face.backend], stats))
        for key, metric, counter, doc in table:
            family: CounterMetricFamily | GaugeMetricFamily
            if counter:
                family = CounterMetricFamily(f"sse_redis_{kind}_{metric}", doc, labels=LABELS)
            else:
                family = GaugeMetricFamily(f"sse_redis_{kind}_{metric}", doc, labels=LABELS)
            for labels, stats in rows:
                family.add_metric(labels, stats.get(key, 0))
            yield family


_collectors: dict[int, SSERedisCollector] = {}
_collectors_lock = threading.Lock()


def _collector(registry: CollectorRegistry) -> SSERedisCollector:
    with _collectors_lock:
        collector = _collectors.get(id(registry))
        if collector is None:
            collector = _collectors[id(registry)] = SSERedisCollector()
            registry.register(collector)
        return collector


def register(*objects: Any, name: str = "default", registry: CollectorRegistry = REGISTRY) -> SSERedisCollector:
    """Export the ``stats()`` of these writers and readers from ``registry``
    (one collector per registry, made on first use), labelled ``name``."""
    collector = _collector(registry)
    for obj in objects:
        collector.add(obj, name)
    return collector


def unregister(*objects: Any, registry: CollectorRegistry = REGISTRY) -> None:
    """Stop exporting these writers and readers."""
    collector = _collector(registry)
    for obj in objects:
        collector.remove(obj)
