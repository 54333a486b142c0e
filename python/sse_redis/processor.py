"""``process_stream`` / ``aprocess_stream``: drain a run's chunk source into a
writer, always ending the stream with exactly one terminal entry and telling
``on_finish`` how the run ended, exactly once, whatever happened.

The policy hooks (``public_error``, ``cancels``, ``on_failure``) are what a
caller with other conventions needs, so that no one writes this loop again:
the Letta drop-in (``compat/letta.py``) is a thin call with its own.

Run control (issue 13): both register the run (status ``running``) at their
start and watch it for a cancel from any process (``RunControl.cancel``),
pushed on the run's notice channel (``_cancels``).  The async one then
cancels its source's pending ``__anext__`` and ``aclose()``s it; the sync
one closes its source at the next chunk, and a source may poll
``cancelled()`` or wait on ``cancel_event()`` meanwhile.  The cancel's
terminal is already stored: nothing more is written, and ``on_finish`` is
called once with status ``cancelled`` and the cancel's reason.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import threading
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from typing import Any

from . import _cancels, telemetry
from .errors import RunCancelled
from .writer import AsyncStreamWriter, StreamWriter

log: logging.Logger = logging.getLogger("sse_redis.processor")

# on_finish(run_id, status, stop_reason, error); on_failure takes the same.
OnFinish = Callable[[str, str, str | None, BaseException | None], Any]
PublicError = Callable[[BaseException], str]
Cancels = Callable[[BaseException], bool]


# The watch of the run the current process_stream drives (its source runs in
# that context: a sync generator in the same thread, an async one in a task
# whose context is copied from the processor's).
_current: contextvars.ContextVar[_cancels.Watch | None] = contextvars.ContextVar("sse_redis_run_watch", default=None)


def cancelled() -> bool:
    """``True`` when the run that the calling ``process_stream`` or
    ``aprocess_stream`` drives was cancelled (``RunControl.cancel``, from
    any process).  For a source to poll while it waits for its model."""
    watch = _current.get()
    return watch is not None and watch.cancelled


def cancel_event() -> threading.Event | None:
    """The ``threading.Event`` set when the run that the calling processor
    drives is cancelled (``None`` outside a processor's source); a sync
    source may ``wait()`` on it instead of sleeping."""
    watch = _current.get()
    return None if watch is None else watch.event


def _watch(writer: StreamWriter, run_id: str) -> _cancels.Watch:
    """Watch the run for a cancel (never waits: the listener's thread
    subscribes, then reads the run's top once the subscription took, so a
    cancel stored at any time is seen)."""
    try:
        key = writer._key(run_id)
    except Exception:  # a bad run id: its first write says so, in the run's usual way
        return _cancels.Watch(None, "")
    return _cancels.watch(writer._url, writer.cluster, key)


def _register(writer: StreamWriter, run_id: str) -> None:
    """Register the run (status ``running``) before its first chunk, so a
    cancel before the first token works.  A failure is logged, never the
    run's end (its writes report Redis on their own)."""
    try:
        writer.engine.start(writer._key(run_id))
    except Exception as exc:
        log.warning("run %s: could not register its status: %s", run_id, exc)


def _cancel_reason(writer: StreamWriter, run_id: str, watch: _cancels.Watch, exc: RunCancelled | None) -> str | None:
    """The cancel's reason: pushed, carried, else read from the run's status."""
    if watch.reason is not None:
        return watch.reason
    if exc is not None and exc.reason is not None:
        return exc.reason
    try:
        found = writer.engine.status(writer._key(run_id))
    except Exception:
        return None
    return None if found is None else found[2]


def _close_source(source: Any) -> None:
    close = getattr(source, "close", None)
    if callable(close):
        close()


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
        self.remote_cancel = False  # ended by a cancel's terminal (RunControl.cancel)

    def cancelled_remotely(self, reason: str | None) -> None:
        log.info("run %s: cancelled (%s)", self.run_id, reason)
        self.remote_cancel = True
        self.status, self.error, self.stop_reason = "cancelled", None, reason or "cancelled"

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
    watch = _cancels.Watch(None, "")  # detached until the run is registered
    token = _current.set(watch)
    source = iter(chunks)
    try:
        try:
            watch = _watch(writer, run_id)
            _current.set(watch)
            _register(writer, run_id)
            for item in source:
                if watch.cancelled:
                    break
                chunk, terminal = run.chunk_of(item)
                writer.write(run_id, chunk, terminal=terminal)
                if terminal:
                    break
            if watch.cancelled and not run.ended:
                run.cancelled_remotely(_cancel_reason(writer, run_id, watch, None))
        except RunCancelled as exc:  # stored before the push came: the writer was told
            run.cancelled_remotely(_cancel_reason(writer, run_id, watch, exc))
        except Exception as exc:
            run.source_failed(exc)
        except BaseException as exc:  # KeyboardInterrupt, SystemExit: close, report, re-raise
            interrupted = exc
            run.status = "cancelled"
        if run.remote_cancel:
            try:
                _close_source(source)
            except Exception as exc:
                run.hook_failed("closing the source", exc)
        if run.error is not None and on_failure is not None:
            _call(run, "on_failure", on_failure)
        try:
            if run.remote_cancel:
                writer.flush(run_id=run_id)  # its terminal is stored: what we sent is refused, not an error
            elif run.error is not None:
                writer.fail(run_id, run.error, run.public_message(public_error))
            elif run.ended:
                writer.flush(run_id=run_id)
            else:
                writer.complete(run_id)
        except RunCancelled as exc:  # cancelled from elsewhere meanwhile: that is how it ended
            run.cancelled_remotely(_cancel_reason(writer, run_id, watch, exc))
        except Exception as exc:
            run.finishing_failed(exc)
    finally:
        _current.reset(token)
        watch.close()
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
    watch = _cancels.Watch(None, "")  # detached until the run is registered
    token = _current.set(watch)
    loop = asyncio.get_running_loop()
    step: asyncio.Future[Any] | None = None  # the source's pending __anext__

    def stop_source() -> None:  # on the loop, when the cancel is seen
        if step is not None and not step.done():
            step.cancel()

    def pushed() -> None:  # on the listener's thread
        loop.call_soon_threadsafe(stop_source)

    source = aiter(chunks)

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
            watch = _watch(writer.sync, run_id)
            _current.set(watch)
            watch.on_cancel(pushed)
            await asyncio.to_thread(_register, writer.sync, run_id)
            while not watch.cancelled:
                # The pending __anext__ is a task of its own, so a cancel can
                # stop a source that waits (for its model) without touching ours.
                step = asyncio.ensure_future(anext(source))
                try:
                    item = await step
                except StopAsyncIteration:
                    break
                except asyncio.CancelledError:
                    if watch.event.is_set() and not _cancelling():
                        break  # our own stop_source: the run was cancelled
                    raise
                finally:
                    step = None
                chunk, terminal = run.chunk_of(item)
                await writer.write(run_id, chunk, terminal=terminal)
                if terminal:
                    break
            if watch.cancelled and not run.ended:
                run.cancelled_remotely(await asyncio.to_thread(_cancel_reason, writer.sync, run_id, watch, None))
        except RunCancelled as exc:  # stored before the push came: the writer was told
            run.cancelled_remotely(await asyncio.to_thread(_cancel_reason, writer.sync, run_id, watch, exc))
        except asyncio.CancelledError as exc:
            interrupted = exc
            run.status = "cancelled"
        except Exception as exc:
            run.source_failed(exc)
        except BaseException as exc:  # KeyboardInterrupt, SystemExit
            interrupted = exc
            run.status = "cancelled"
        if run.remote_cancel:
            aclose = getattr(source, "aclose", None)
            if aclose is not None:
                failure, stop = await settle(aclose())
                interrupted = interrupted or stop
                if isinstance(failure, Exception):
                    run.hook_failed("closing the source", failure)
        if run.error is not None and on_failure is not None:
            await call("on_failure", on_failure)
        # Closing the stream must finish even when the task is being cancelled.
        closing: Awaitable[Any]
        if run.remote_cancel:
            closing = writer.flush(run_id=run_id)  # its terminal is stored: what we sent is refused
        elif run.error is not None:
            closing = writer.fail(run_id, run.error, run.public_message(public_error))
        elif run.ended:
            closing = writer.flush(run_id=run_id)
        else:
            closing = writer.complete(run_id)
        failure, stop = await settle(closing)
        interrupted = interrupted or stop
        if isinstance(failure, RunCancelled):  # cancelled from elsewhere meanwhile: that is how it ended
            lookup = asyncio.ensure_future(asyncio.to_thread(_cancel_reason, writer.sync, run_id, watch, failure))
            missed, stop = await settle(lookup)
            interrupted = interrupted or stop
            run.cancelled_remotely(None if missed is not None or lookup.cancelled() else lookup.result())
        elif isinstance(failure, Exception):
            run.finishing_failed(failure)
        elif failure is not None:  # the closing itself was cancelled
            interrupted = interrupted or failure
            run.status = "cancelled"
    finally:
        _current.reset(token)
        watch.close()
        if span is not None:
            span.end(*run.outcome()[1:])
        if on_finish is not None:
            await call("on_finish", on_finish)
    if interrupted is not None:
        raise interrupted
    if run.hook_failure is not None:
        raise run.hook_failure
    return run.outcome()[1]


def _cancelling() -> bool:
    """Whether our own task is being cancelled (from 3.11; before, a cancel
    racing a task cancellation counts as the cancel)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling()) if cancelling is not None else False


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
