"""An event loop's wake-up (twin of ``src/io/hub/waker.rs``): the write end of
its socket pair, which the hub writes one byte to, and the subscriptions that
became ready since the loop last looked."""

from __future__ import annotations

import contextlib
import os


class Waker:
    __slots__ = ("fd", "ready")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.ready: list[int] = []

    def mark_ready(self, sid: int) -> None:
        """Note ``sid`` as ready; the first one since the loop looked wakes it."""
        self.ready.append(sid)
        if len(self.ready) == 1:
            wake(self.fd)

    def forget(self, sid: int) -> None:
        if sid in self.ready:
            self.ready.remove(sid)

    def take(self) -> list[int]:
        ready, self.ready = self.ready, []
        return ready


def wake(fd: int) -> None:
    """Write one byte to the loop's socket; a full or closed socket means the
    loop is awake already."""
    with contextlib.suppress(BlockingIOError, OSError):
        os.write(fd, b"\0")
