"""The demo: one simulated LLM run streamed through the writer while a reader
follows it, drops its connection half-way, and resumes from its last event
id, exactly as a browser's ``EventSource`` would.  It counts what was lost or
repeated (both must be 0) and measures delivery latency and throughput."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..processor import process_stream
from ..reader import StreamReader
from ..writer import StreamWriter
from .corpus import llm_run_chunks


@dataclass
class DemoReport:
    backend: str
    run_id: str
    written: int = 0
    read: int = 0
    lost: int = 0
    duplicated: int = 0
    resumed_after: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0
    status: str = ""

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.read == self.written

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def lines(self) -> list[str]:
        return [
            f"backend          {self.backend}",
            f"run              {self.run_id} ({self.status})",
            f"chunks written   {self.written}",
            f"chunks read      {self.read} (reader dropped and resumed after seq {self.resumed_after})",
            f"lost             {self.lost}",
            f"duplicated       {self.duplicated}",
            f"latency p50      {self.percentile(0.50):.3f} ms (write -> reader yields)",
            f"latency p99      {self.percentile(0.99):.3f} ms",
            f"throughput       {self.written / self.seconds:,.0f} chunks/s" if self.seconds else "throughput       -",
        ]


def _event_id(chunk: str) -> int:
    """The ``id:`` the reader stamped on a chunk."""
    for line in reversed(chunk.splitlines()):
        if line.startswith("id: "):
            return int(line[4:])
    raise ValueError(f"chunk without an id line: {chunk!r}")


def check_reachable(redis_url: str, timeout: float = 3.0) -> None:
    """Fail at once, in one line naming the server and the cause, when there
    is no Redis to use at ``redis_url`` (one PING, ``timeout`` seconds at most
    to connect and as long for the answer)."""
    import redis

    from ..connection import redact
    from ..errors import RedisUnavailable

    try:
        client = redis.Redis.from_url(redis_url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, OSError) as exc:
        raise RedisUnavailable(f"cannot reach Redis at {redact(redis_url)}: {exc}") from None


def run_demo(
    redis_url: str,
    *,
    backend: str | None = None,
    chunks: int = 400,
    token_delay: float = 0.002,
    progress: Callable[[str], None] = lambda _: None,
) -> DemoReport:
    """Stream one run of ``chunks`` chunks and follow it with a reader that
    reconnects half-way; returns what happened."""
    check_reachable(redis_url)
    run_id = f"demo-{uuid.uuid4().hex[:12]}"
    source = llm_run_chunks(chunks, seed=7)
    sent_at: dict[int, float] = {}
    writer = StreamWriter(redis_url, backend=backend)
    reader = StreamReader(redis_url, backend=backend, missing_timeout=10.0, idle_timeout=30.0)
    report = DemoReport(backend=writer.backend, run_id=run_id)

    def llm() -> Iterator[str]:
        for seq, chunk in enumerate(source, start=1):
            sent_at[seq] = time.perf_counter()
            yield chunk
            if token_delay:
                time.sleep(token_delay)

    def finished(_run: str, status: str, _reason: object, _error: object) -> None:
        report.status = status

    started = time.perf_counter()
    producer = threading.Thread(
        target=process_stream, args=(llm(), writer, run_id), kwargs={"on_finish": finished}, daemon=True
    )
    producer.start()
    seen: list[int] = []
    try:
        # First connection: read half the run, then "lose the connection".
        first = reader.read(run_id)
        for chunk in first:
            seq = _event_id(chunk)
            report.latencies_ms.append((time.perf_counter() - sent_at[seq]) * 1000)
            seen.append(seq)
            if len(seen) >= len(source) // 2:
                break
        first.close()  # type: ignore[attr-defined]
        report.resumed_after = seen[-1] if seen else 0
        progress(f"reader dropped after seq {report.resumed_after}; resuming with Last-Event-ID")
        # Second connection: resume with the last event id, as EventSource does.
        for chunk in reader.read(run_id, last_event_id=str(report.resumed_after)):
            seq = _event_id(chunk)
            if seq in sent_at:
                report.latencies_ms.append((time.perf_counter() - sent_at[seq]) * 1000)
            seen.append(seq)
        producer.join(timeout=30)
        report.seconds = time.perf_counter() - started
    finally:
        writer.close()
        reader.close()
    report.written = len(source)
    report.read = len(set(seen))
    report.duplicated = len(seen) - len(set(seen))
    report.lost = len(set(range(1, len(source) + 1)) - set(seen))
    return report
