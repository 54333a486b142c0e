"""A TCP fault proxy of our own, on loopback, between the library and Redis.

It forwards bytes both ways until told to misbehave the way real networks
do, on the links it holds now and, independently, on links made later:

* ``freeze``: sockets stay open, nothing is forwarded either way (a server
  that hangs, a frozen VM); on ``heal`` the held bytes flow again;
* ``blackhole``: bytes are read and dropped, no FIN, no RST (a NAT or
  conntrack entry that vanished, a VIP that moved): nothing ever arrives;
* ``half_close``: the client side gets a FIN (EOF) while its own writes are
  still read (and dropped);
* ``delay``: every forwarded read waits that long first;
* ``cut_after``: a link is reset (RST) once that many more bytes went through.

``new=False`` leaves links made afterwards healthy, which is what a dropped
NAT entry looks like: old connections are silent, a reconnect works.  The
proxy keeps ACKing at the TCP level (it is a userland endpoint), so TCP
keepalive cannot see any of this: only an application-level bound can.

Runs its own event loop on a daemon thread; every control call returns once
the change is in force.  Used by the fault tests through ``fixtures_io``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from typing import Any

PASS, FREEZE, BLACKHOLE = "pass", "freeze", "blackhole"


class _Link:
    """One client connection and its upstream, with the fault in force."""

    def __init__(self, proxy: FaultProxy, client: asyncio.StreamWriter, server: asyncio.StreamWriter) -> None:
        self.proxy = proxy
        self.client = client
        self.server = server
        self.flowing = asyncio.Event()
        self.mode = PASS
        self.delay = 0.0
        self.cut_left: int | None = None
        self.set(proxy.new_mode, proxy.new_delay, proxy.new_cut)

    def set(self, mode: str, delay: float, cut: int | None) -> None:
        self.mode, self.delay, self.cut_left = mode, delay, cut
        if mode == FREEZE:
            self.flowing.clear()
        else:
            self.flowing.set()

    async def pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await self.flowing.wait()
                data = await reader.read(65536)
                if not data:
                    break
                await self.flowing.wait()  # frozen while reading: hold the bytes
                if self.mode == BLACKHOLE or writer.is_closing():
                    continue
                if self.delay:
                    await asyncio.sleep(self.delay)
                if self.cut_left is not None:
                    if len(data) >= self.cut_left:
                        writer.write(data[: self.cut_left])
                        self.reset()
                        return
                    self.cut_left -= len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        if self.mode == PASS:
            self.close()  # a clean end on one side ends the pair, as a router would
        # A faulty link stays open: silence is the fault being simulated.

    def half_close(self) -> None:
        if self.client.can_write_eof() and not self.client.is_closing():
            self.client.write_eof()
        self.mode = BLACKHOLE
        self.flowing.set()

    def reset(self) -> None:
        """Close both sides with RST (SO_LINGER 0), not FIN."""
        for writer in (self.client, self.server):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close()

    def close(self) -> None:
        for writer in (self.client, self.server):
            if not writer.is_closing():
                writer.close()
        self.proxy.links.discard(self)


class FaultProxy:
    """``FaultProxy(host, port)``: a proxy to that server; ``.url`` reaches it."""

    def __init__(self, host: str, port: int, *, db: int = 0) -> None:
        self.upstream = (host, port)
        self.db = db
        self.links: set[_Link] = set()
        self.new_mode, self.new_delay, self.new_cut = PASS, 0.0, None
        self.accepted = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/{self.db}"

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        link = _Link(self, writer, up_writer)
        self.links.add(link)
        # The proxy is closing: asyncio's accept callback must not see a cancelled task.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(link.pump(reader, up_writer), link.pump(up_reader, writer))

    async def _apply(self, mode: str, delay: float, cut: int | None, existing: bool, new: bool) -> None:
        if existing:
            for link in list(self.links):
                link.set(mode, delay, cut)
        if new:
            self.new_mode, self.new_delay, self.new_cut = mode, delay, cut

    def _set(self, mode: str, *, delay: float = 0.0, cut: int | None = None, new: bool = True) -> None:
        self._call(self._apply(mode, delay, cut, True, new))

    def freeze(self, *, new: bool = True) -> None:
        """Forward nothing on the links held now (and on new ones unless ``new=False``)."""
        self._set(FREEZE, new=new)

    def blackhole(self, *, new: bool = True) -> None:
        """Drop every byte silently on the links held now (and new ones unless ``new=False``)."""
        self._set(BLACKHOLE, new=new)

    def delay(self, seconds: float, *, new: bool = True) -> None:
        """Hold each forwarded read ``seconds`` first."""
        self._set(PASS, delay=seconds, new=new)

    def cut_after(self, nbytes: int, *, new: bool = False) -> None:
        """Reset each link held now once ``nbytes`` more bytes went through it."""
        self._set(PASS, cut=nbytes, new=new)

    def half_close(self) -> None:
        """Send the client side of each link held now a FIN; drop what it still sends."""

        async def apply() -> None:
            for link in list(self.links):
                link.half_close()

        self._call(apply())

    def heal(self) -> None:
        """Forward everything again, held bytes first; new links pass too."""
        self._set(PASS)

    def drop_all(self) -> None:
        """Close every link held now (FIN), as a restarted proxy would."""

        async def apply() -> None:
            for link in list(self.links):
                link.close()

        self._call(apply())

    def close(self) -> None:
        async def stop() -> None:
            self._server.close()
            for link in list(self.links):
                link.close()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        try:
            self._call(stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
