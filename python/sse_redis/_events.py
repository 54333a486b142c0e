"""Engine events logged at WARNING: what the engines retried or remade, with
its cause in words that read the same on both backends.

An engine keeps its latest events under its own lock (an engine thread never
waits on the GIL); the faces drain them with ``take_events()`` and log each
one: in ``flush``, ``complete``, ``close`` and ``stats()``, and from one daemon
thread per process that drains every watched face about once a second, so a
retry is logged even when the application never calls those.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Protocol

# How often the drain thread looks, in seconds.
INTERVAL = 1.0

# What each kind of event says, before its cause.
_WORDS = {
    "retry": "Redis pipeline retried",
    "gave_up": "Redis pipeline failed for retry_timeout; its chunks are not stored",
    "reconnect": "reader hub link to Redis remade",
    "notices_refused": "reader hub may not subscribe to notices",
    "notices_missed": "reader hub found notices missing",
    "dropped": "engine events not logged",
}


class _Source(Protocol):
    def _log_events(self) -> None: ...


class _Engine(Protocol):
    def take_events(self) -> list[tuple[str, str]]: ...


_sources: weakref.WeakSet[_Source] = weakref.WeakSet()
_lock = threading.Lock()
_thread: threading.Thread | None = None


def log(logger: logging.Logger, engine: _Engine | None) -> None:
    """Log the engine's events since the last drain, one WARNING each."""
    if engine is None:
        return
    for kind, cause in engine.take_events():
        logger.warning(
            "%s: %s", _WORDS.get(kind, kind), cause, extra={"sse_redis_event": kind, "sse_redis_cause": cause}
        )


def watch(source: _Source) -> None:
    """Have the drain thread log ``source``'s events while it lives (called
    when a face builds its engine: a forked child starts its own thread)."""
    global _thread
    with _lock:
        _sources.add(source)
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_run, name="sse-redis-events", daemon=True)
            _thread.start()


def _run() -> None:
    while True:
        time.sleep(INTERVAL)
        with _lock:
            sources = list(_sources)
        for source in sources:
            try:
                source._log_events()
            except Exception:  # a face closing meanwhile: logging must never end the thread
                continue
        del sources
