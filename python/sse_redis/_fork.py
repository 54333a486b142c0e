"""Engines do not survive ``fork()``: their threads stay in the parent.  Each
face remembers the generation its engine was built in and builds a new one
in a child; comparing an int is cheaper than ``os.getpid()`` (a system call)
on every write."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

generation = 0  # bumped in every forked child

# Engines inherited across fork(): their threads are gone and their locks may
# be held, so they are kept alive (never dropped, never used).
forked_away: list[Any] = []


def _after_fork_in_child() -> None:
    global generation
    generation += 1


if hasattr(os, "register_at_fork"):  # Windows has no fork(), so nothing to follow
    os.register_at_fork(after_in_child=_after_fork_in_child)


class PerProcess:
    """One engine per process, built on first use (once, however many threads
    race to it) and built anew in a forked child."""

    def __init__(self, build: Callable[[], Any]) -> None:
        self._build = build
        self._value: Any = None
        self._generation = -1
        self._lock = threading.Lock()

    def get(self) -> Any:
        if self._generation != generation:
            with self._lock:
                if self._generation != generation:
                    if self._value is not None:
                        forked_away.append(self._value)  # the parent's: never touched
                    self._value = self._build()
                    self._generation = generation
        return self._value

    def built(self) -> Any:
        """This process's engine if it was built, else ``None``: never builds one
        (what stats and event logging look at)."""
        return self._value if self._generation == generation else None

    def take(self) -> Any:
        """This process's engine, if built, forgetting it (to close it); ``None`` otherwise."""
        value, self._value = self._value, None
        return value if self._generation == generation else None
