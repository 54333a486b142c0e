"""``process_stream`` / ``aprocess_stream``: drain a run's chunk source into a
writer, always ending the stream with exactly one terminal entry and telling
``on_finish`` how the run ended, exactly once, whatever happened.

The policy hooks (``public_error``, ``cancels``, ``on_failure``) are what a
caller with other conventions needs, so that no one writes this loop again:
the Letta drop-in (``compat/letta.py``) is a thin call with its own.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from typing import Any

from . import telemetry
from .writer import AsyncStreamWriter, StreamWriter

log: logging.Logger = logging.getLogger("sse_redis.processor")

# on_finish(run_id, status, stop_reason, error); on_failure takes the same.
OnFinish = Callable[[str, str, str | None, BaseException | None], Any]
PublicError = Callable[[BaseException], str]
Cancels = Callable[[BaseException], bool]


class _Processing:
    """What both processors track: the stop reason seen so far, the status,
    the error, and a hook's failure to raise once the run is closed."""

    def __init__(self, writer: StreamWriter, run_id: str, cancels: Cancels | None) -> None:
        self.codec = writer._module
        self.run_id = run_id
        self.cancels = cancels
        self.stop_reason: str | None = None
        self.status = "completed"
        self.error: BaseException | None = None
        self.ended = False  # the source's own terminal chunk is written
        self.hook_failure: BaseException | None = None

    def chunk_of(self, item: Any) -> tuple[str, bool]:
        """The chunk of a source item (``(chunk, ...)`` tuples are unwrapped)
        and whether it ends the run; notes a stop reason on the way."""
        chunk = item[0] if isinstance(item, tuple) else item
        reason = self.codec.sniff_stop_reason(chunk) if isinstance(chunk, str) else None
        if reason is not None:
            self.stop_reason = reason
        terminal = isinstance(chunk, str) and self.codec.is_terminal(chunk)
        self.ended = terminal
        return chunk, terminal

    def source_failed(self, exc: BaseException) -> None:
        if self.cancels is not None and self.cancels(exc):
            log.info("run %s: cancelled (%s)", self.run_id, type(exc).__name__)
            self.status = "cancelled"
        else:
            self.status, self.error = "failed", exc

    def finishing_failed(self, exc: BaseException) -> None:
        """Writing the end of the stream failed (Redis down): report it, never hide it."""
        log.error("run %s: could not close its stream: %s", self.run_id, exc, exc_info=exc)
        if self.error is None:
            self.status, self.error = "failed", exc

    def hook_failed(self, name: str, exc: BaseException) -> None:
        log.error("run %s: %s failed: %s", self.run_id, name, exc, exc_info=exc)
        self.hook_failure = self.hook_failure or exc

    def outcome(self) -> tuple[str, str, str | None, BaseException | None]:
        status = "cancelled" if self.status == "completed" and self.stop_reason == "cancelled" else self.status
        return self.run_id, status, self.stop_reason, self.error

    def public_message(self, public_error: PublicError | None) -> str | None:
        return public_error(self.error) if public_error is not None and self.error is not None else None


def process_stream(
    chunks: Iterable[Any],
    writer: StreamWriter,
    run_id: str,
    *,
    on_finish: OnFinish | None = None,
    on_failure: OnFinish | None = None,
    public_error: PublicError | None = None,
    cancels: Cancels | None = None,
) -> str:
    """Write every chunk of ``chunks`` to ``run_id`` until a terminal chunk or
    the end, then make sure the stream is closed.  Returns the final status:
    ``completed``, ``failed`` or ``cancelled``.

    ``on_finish(run_id, status, stop_reason, error)`` is called exactly once,
    after the stream is closed.  Policy: ``public_error(exc)`` is the text the
    browser sees in the error event when the source raised (default: a
    generic text; the exception is only logged); ``cancels(exc)`` says which
    of the source's exceptions mean "cancelled" rather than "failed";
    ``on_failure`` (same arguments as ``on_finish``) is called before the
    error event is stored.  A hook's exception is logged and raised once the
    run is closed and ``on_finish`` was called.
    """
    run = _Processing(writer, run_id, cancels)
    interrupted: BaseException | None = None
    span = telemetry.start_run(run_id)  # None unless telemetry.enable(): no per-chunk work either way
    try:
        try:
            for item in chunks:
                chunk, terminal = run.chunk_of(item)
                writer.write(run_id, chunk, terminal=terminal)
                if terminal:
                    break
        except Exception as exc:
            run.source_failed(exc)
        except BaseException as exc:  # KeyboardInterrupt, SystemExit: close, report, re-raise
            interrupted = exc
            run.status = "cancelled"
        if run.error is not None and on_failure is not None:
            _call(run, "on_failure", on_failure)
        try:
            if run.error is not None:
                writer.fail(run_id, run.error, run.public_message(public_error))
            elif run.ended:
                writer.flush(run_id=run_id)
            else:
                writer.complete(run_id)
        except Exception as exc:
            run.finishing_failed(exc)
    finally:
        if span is not None:
            span.end(*run.outcome()[1:])
        if on_finish is not None:
            _call(run, "on_finish", on_finish)
    if interrupted is not None:
        raise interrupted
    if run.hook_failure is not None:
        raise run.hook_failure
    return run.outcome()[1]


def _call(run: _Processing, name: str, hook: OnFinish) -> None:
    try:
        hook(*run.outcome())
    except Exception as exc:
        run.hook_failed(name, exc)


async def aprocess_stream(
    chunks: AsyncIterable[Any],
    writer: AsyncStreamWriter,
    run_id: str,
    *,
    on_finish: OnFinish | None = None,
    on_failure: OnFinish | None = None,
    public_error: PublicError | None = None,
    cancels: Cancels | None = None,
) -> str:
    """``process_stream`` for an async source and an ``AsyncStreamWriter``;
    the hooks may be coroutine functions.

    Cancelling the task marks the run ``cancelled``, closes its stream with
    ``[DONE]``, calls ``on_finish``, and re-raises ``CancelledError``.  A
    cancellation that arrives while the stream is being closed or a hook
    runs lets that finish first, keeps the outcome, and is re-raised.
    """
    run = _Processing(writer.sync, run_id, cancels)
    interrupted: BaseException | None = None
    span = telemetry.start_run(run_id)

    async def call(name: str, hook: OnFinish) -> None:
        nonlocal interrupted
        try:
            result = hook(*run.outcome())
            failure, stop = await settle(result) if inspect.isawaitable(result) else (None, None)
        except Exception as exc:  # the hook raised before returning an awaitable
            failure, stop = exc, None
        interrupted = interrupted or stop
        if failure is not None:
            run.hook_failed(name, failure)

    try:
        try:
            async for item in chunks:
                chunk, terminal = run.chunk_of(item)
                await writer.write(run_id, chunk, terminal=terminal)
                if terminal:
                    break
        except asyncio.CancelledError as exc:
            interrupted = exc
            run.status = "cancelled"
        except Exception as exc:
            run.source_failed(exc)
        except BaseException as exc:  # KeyboardInterrupt, SystemExit
            interrupted = exc
            run.status = "cancelled"
        if run.error is not None and on_failure is not None:
            await call("on_failure", on_failure)
        # Closing the stream must finish even when the task is being cancelled.
        if run.error is not None:
            closing = writer.fail(run_id, run.error, run.public_message(public_error))
        elif run.ended:
            closing = writer.flush(run_id=run_id)
        else:
            closing = writer.complete(run_id)
        failure, stop = await settle(closing)
        interrupted = interrupted or stop
        if isinstance(failure, Exception):
            run.finishing_failed(failure)
        elif failure is not None:  # the closing itself was cancelled
            interrupted = interrupted or failure
            run.status = "cancelled"
    finally:
        if span is not None:
            span.end(*run.outcome()[1:])
        if on_finish is not None:
            await call("on_finish", on_finish)
    if interrupted is not None:
        raise interrupted
    if run.hook_failure is not None:
        raise run.hook_failure
    return run.outcome()[1]


async def settle(awaitable: Awaitable[Any]) -> tuple[BaseException | None, BaseException | None]:
    """Run ``awaitable`` to its end even if our task is cancelled meanwhile.
    Returns ``(its exception or None, the cancellation that arrived or None)``."""
    task = asyncio.ensure_future(awaitable)
    interrupted: BaseException | None = None
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError as exc:
            if not task.cancelled():
                interrupted = exc  # ours, not the task's: finish it first
        except BaseException:
            pass  # the task's own failure, read below
    if task.cancelled():
        return asyncio.CancelledError(), interrupted
    return task.exception(), interrupted
