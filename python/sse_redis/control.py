"""``RunControl`` and ``AsyncRunControl``: cancel a run and ask its status
from any process (issue 13).

A cancel is one ``append.lua`` call (mode ``c``) from the cancelling
process: the ``event: cancelled`` terminal is stored after whatever the
run's top is, fenced like every write, so readers end at once and nothing a
producer sends afterwards is stored; the script then publishes ``cancel`` on
the run's notice channel, which the producer's ``process_stream`` listens to
(``_cancels``).  The status lives in a hash beside the stream
(``keys.status_key``), written by the same script calls that append.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from . import _backend, _fork
from . import keys as _keys
from ._binding import bind
from ._options import engine_seconds, optional_count, same_parameters, seconds
from .connection import redact
from .errors import SSERedisError

if TYPE_CHECKING:
    from typing_extensions import Self

    from ._core import WriterEngine

RunState = Literal["running", "completed", "failed", "cancelled"]


class RunInfo(NamedTuple):
    """A run's status.  ``last_seq`` counts every stored entry, the terminal
    included; ``stop_reason`` is the sniffed stop reason or the cancel's
    reason; the timestamps are float seconds since the epoch (the writers'
    clocks), ``None`` when unknown."""

    state: RunState
    last_seq: int
    stop_reason: str | None
    started_at: float | None
    updated_at: float | None


def cancelled_chunk(reason: str | None) -> str:
    """The terminal a cancel stores: ``event: cancelled`` with JSON ``{"reason": ...}``."""
    chunk: str = _backend.module().encode_event(json.dumps({"reason": reason}), event="cancelled")
    return chunk


def _seconds(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000.0


class RunControl:
    """Cancel runs and read their status, from any process.

    Takes the writer's ``redis``, ``keys``, ``cluster`` and ``backend``
    (they must match the producer's and readers'), and its ``ttl`` (for the
    status ``start`` registers; a cancel keeps the stream's own TTL),
    ``max_len``, ``retry_timeout`` and ``connect_timeout``.  Thread-safe; one
    per process is enough.
    """

    def __init__(
        self,
        redis: Any = "redis://127.0.0.1:6379/0",
        *,
        keys: _keys.Layout | str | None = None,
        ttl: int | None = 10800,
        max_len: int | None = 10000,
        retry_timeout: float = 30.0,
        connect_timeout: float = 5.0,
        cluster: bool | None = None,
        backend: str | None = None,
    ) -> None:
        options = dict(
            ttl=optional_count("ttl", ttl),
            max_len=optional_count("max_len", max_len),
            retry_timeout=engine_seconds(seconds("retry_timeout", retry_timeout, zero=False, unlimited=True)),
            connect_timeout=seconds("connect_timeout", connect_timeout, zero=False),
        )
        bound = bind(redis, cluster=cluster, keys=keys, backend=backend)
        self._url, self._key, self._module = bound.url, bound.key, bound.module
        self.cluster: bool = bound.cluster
        self.backend: str = bound.backend
        self._options: dict[str, Any] = dict(options, cluster=self.cluster)
        self._engine = _fork.PerProcess(self._build_engine)
        self._closed = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({redact(self._url)!r}, backend={self.backend!r})"

    def _build_engine(self) -> WriterEngine:
        engine: WriterEngine = self._module.WriterEngine(self._url, **self._options)
        return engine

    @property
    def engine(self) -> WriterEngine:
        if self._closed:
            raise SSERedisError("this RunControl is closed")
        engine: WriterEngine = self._engine.get()
        return engine

    def cancel(self, run_id: str, reason: str | None = None) -> bool:
        """Cancel the run: store its ``event: cancelled`` terminal (data
        ``{"reason": reason}``) after its last stored chunk and tell its
        producer.  ``True`` if the run was live and is now cancelled;
        ``False`` if it had already ended or never existed (no stream and no
        status).  Of many concurrent cancels exactly one returns ``True``."""
        if reason is not None and not isinstance(reason, str):
            raise TypeError(f"reason must be a str or None, not {type(reason).__name__}")
        key = self._key(run_id)
        return self.engine.cancel(key, cancelled_chunk(reason)) is not None

    def start(self, run_id: str) -> bool:
        """Register the run (status ``running``) before its first chunk, so a
        cancel before the first token works.  ``False`` when the run already
        ended.  ``process_stream``/``aprocess_stream`` call this themselves."""
        return self.engine.start(self._key(run_id))

    def status(self, run_id: str) -> RunInfo | None:
        """The run's ``RunInfo``, or ``None`` when it has no status and no
        stream (unknown, or expired).  For a stream without a status (one the
        reference module wrote) the state comes from its last entry
        (``running`` until a ``complete`` entry, then ``completed``,
        ``failed`` for an ``event: error`` terminal), ``last_seq`` from its
        ``seq_id``, the times from its first and last entries' timestamps,
        and ``stop_reason`` is ``None``."""
        found = self.engine.status(self._key(run_id))
        if found is None:
            return None
        state, last_seq, stop_reason, started, updated = found
        if state not in ("running", "completed", "failed", "cancelled"):
            raise SSERedisError(f"run {run_id!r} has an unknown state {state!r}")
        return RunInfo(state, last_seq, stop_reason, _seconds(started), _seconds(updated))  # type: ignore[arg-type]

    def close(self) -> None:
        """Drop the connections; idempotent."""
        if self._closed:
            return
        self._closed = True
        engine = self._engine.take()
        if engine is not None:
            engine.close(1.0)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRunControl:
    """``RunControl`` for asyncio: the same methods as coroutines, each
    waiting in a worker thread, so the event loop never blocks."""

    @same_parameters(RunControl.__init__)
    def __init__(self, *args: Any, **options: Any) -> None:
        self.sync: RunControl = RunControl(*args, **options)

    def __repr__(self) -> str:
        return f"Async{self.sync!r}"

    @property
    def backend(self) -> str:
        return self.sync.backend

    async def cancel(self, run_id: str, reason: str | None = None) -> bool:
        """``RunControl.cancel``."""
        return await asyncio.to_thread(self.sync.cancel, run_id, reason)

    async def start(self, run_id: str) -> bool:
        """``RunControl.start``."""
        return await asyncio.to_thread(self.sync.start, run_id)

    async def status(self, run_id: str) -> RunInfo | None:
        """``RunControl.status``."""
        return await asyncio.to_thread(self.sync.status, run_id)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.sync.close)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
