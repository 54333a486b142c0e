"""``process_stream`` / ``aprocess_stream``: drain a run's chunk source into a
writer, always ending the stream with exactly one terminal entry and telling
``on_finish`` how the run ended, exactly once, whatever happened."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncIterable, Callable, Iterable, Optional

from .writer import AsyncStreamWriter, StreamWriter

log = logging.getLogger("sse_redis")

OnFinish = Callable[[str, str, Optional[str], Optional[BaseException]], Any]


class _Run:
    """The bookkeeping both processors share: the stop reason seen so far and
    the final status."""

    def __init__(self, writer: StreamWriter, run_id: str) -> None:
        self.codec = writer._module
        self.run_id = run_id
        self.stop_reason: str | None = None
        self.status = "completed"
        self.error: BaseException | None = None

    def chunk_of(self, item: Any) -> tuple[str, bool]:
        """The chunk of a source item (``(chunk, ...)`` tuples are unwrapped)
        and whether it ends the run; notes a stop reason on the way."""
        chunk = item[0] if isinstance(item, tuple) else item
        reason = self.codec.sniff_stop_reason(chunk) if isinstance(chunk, str) else None
        if reason is not None:
            self.stop_reason = reason
        terminal = isinstance(chunk, str) and self.codec.is_terminal(chunk)
        return chunk, terminal

    def failed(self, exc: BaseException) -> None:
        self.status, self.error = "failed", exc

    def finishing_failed(self, exc: BaseException) -> None:
        """Writing the end of the stream failed (Redis down): report it, never hide it."""
        log.error("run %s: could not close its stream: %s", self.run_id, exc)
        if self.error is None:
            self.status, self.error = "failed", exc

    def outcome(self) -> tuple[str, str, str | None, BaseException | None]:
        status = "cancelled" if self.status == "completed" and self.stop_reason == "cancelled" else self.status
        return self.run_id, status, self.stop_reason, self.error


def process_stream(
    chunks: Iterable[Any],
    writer: StreamWriter,
    run_id: str,
    *,
    on_finish: OnFinish | None = None,
) -> str:
    """Write every chunk of ``chunks`` to ``run_id`` until a terminal chunk or
    the end, then make sure the stream is closed.  Returns the final status:
    ``completed``, ``failed`` or ``cancelled``."""
    run = _Run(writer, run_id)
    interrupted: BaseException | None = None
    try:
        ended = False
        try:
            for item in chunks:
                chunk, terminal = run.chunk_of(item)
                writer.write(run_id, chunk, terminal=terminal)
                if terminal:
                    ended = True
                    break
        except Exception as exc:
            run.failed(exc)
        except BaseException as exc:  # KeyboardInterrupt, SystemExit: close, report, re-raise
            interrupted = exc
            run.status = "cancelled"
        try:
            if run.error is not None:
                writer.fail(run_id, run.error)
            elif ended:
                writer.flush(run_id=run_id)
            else:
                writer.complete(run_id)
        except Exception as exc:
            run.finishing_failed(exc)
    finally:
        if on_finish is not None:
            on_finish(*run.outcome())
    if interrupted is not None:
        raise interrupted
    return run.outcome()[1]


async def aprocess_stream(
    chunks: AsyncIterable[Any],
    writer: AsyncStreamWriter,
    run_id: str,
    *,
    on_finish: OnFinish | None = None,
) -> str:
    """``process_stream`` for an async source and an ``AsyncStreamWriter``.

    Cancelling the task marks the run ``cancelled``, closes its stream with
    ``[DONE]``, calls ``on_finish``, and re-raises ``CancelledError``.
    ``on_finish`` may be a coroutine function.
    """
    run = _Run(writer.sync, run_id)
    cancelled: asyncio.CancelledError | None = None
    try:
        ended = False
        try:
            async for item in chunks:
                chunk, terminal = run.chunk_of(item)
                await writer.write(run_id, chunk, terminal=terminal)
                if terminal:
                    ended = True
                    break
        except asyncio.CancelledError as exc:
            cancelled = exc
            run.status = "cancelled"
        except Exception as exc:
            run.failed(exc)
        # Closing the stream must finish even when the task is being cancelled.
        try:
            if run.error is not None:
                await _shielded(writer.fail(run_id, run.error))
            elif ended:
                await _shielded(writer.flush(run_id=run_id))
            else:
                await _shielded(writer.complete(run_id))
        except asyncio.CancelledError as exc:
            cancelled = cancelled or exc
            run.status = "cancelled"
        except Exception as exc:
            run.finishing_failed(exc)
    finally:
        if on_finish is not None:
            result = on_finish(*run.outcome())
            if asyncio.iscoroutine(result):
                await _shielded(result)
    if cancelled is not None:
        raise cancelled
    return run.outcome()[1]


async def _shielded(awaitable: Any) -> Any:
    """Run ``awaitable`` to the end even if our task is cancelled meanwhile,
    then let the cancellation through."""
    task = asyncio.ensure_future(awaitable)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise
