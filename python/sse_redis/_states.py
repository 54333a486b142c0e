"""The states a hub subscription can be in, as ``ReaderHub.poll``/``wait``
report them: one vocabulary for both engines (``_pure.hub`` uses these members;
``_core`` returns them too) and the reader (see ``docs/glossary.md``).

A ``str`` enum: each member equals its value (``SubState.OK == "ok"``)."""

from __future__ import annotations

from enum import Enum


class SubState(str, Enum):
    PENDING = "pending"  # Redis has not answered the first fetch yet
    OK = "ok"  # following the stream
    MISSING = "missing"  # the stream does not exist (yet)
    DONE = "done"  # the cursor is at the end of a complete run: nothing more comes
    GONE = "gone"  # not the stream the cursor came from (expired, lost and rewritten), or no stream
    DOWN = "down"  # Redis has not answered for retry_timeout

    def __str__(self) -> str:
        return self.value


__all__ = ["SubState"]
