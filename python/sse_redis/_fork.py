"""Engines do not survive ``fork()``: their threads stay in the parent.  Each
face remembers the generation its engine was built in and builds a new one
in a child; comparing an int is cheaper than ``os.getpid()`` (a system call)
on every write."""

from __future__ import annotations

import os
from typing import Any

generation = 0  # bumped in every forked child

# Engines inherited across fork(): their threads are gone and their locks may
# be held, so they are kept alive (never dropped, never used).
forked_away: list[Any] = []


def _after_fork_in_child() -> None:
    global generation
    generation += 1


os.register_at_fork(after_in_child=_after_fork_in_child)
