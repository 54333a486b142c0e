"""How a producer learns that its run was cancelled from another process: by
push, on the run's notice channel (``keys.notice_channel``), where
``append.lua``'s cancel publishes ``cancel`` after storing the terminal.

One listener per process per Redis target, for both backends (it carries a
few messages per run, so it lives in Python): one thread, one subscriber
connection (``SUBSCRIBE``; on a cluster one per node owning a watched
channel, ``SSUBSCRIBE``), woken by the sockets and by a pipe when a watch
comes or goes.  A push is a hint: the thread reads the run's top entry and
fires the run's watches only when it is a cancel terminal (``cancelled``
field), with the reason from its data.  The same read follows every
(re)subscription, so a cancel stored before the subscription took, or while
the link was down, is not missed.  A link that breaks is remade at once; one
silent for ``PING_AFTER`` seconds is pinged and remade when no answer comes
within ``PING_TIMEOUT``.  When the server refuses the subscription (ACL:
no channel rights), the listener logs once and polls the watched runs' tops
every ``POLL_INTERVAL`` instead.

Fork-safe like the engines: a forked child gets listeners of its own (the
parent's are never touched there, see ``_fork``).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.cluster import RedisCluster

from . import _fork
from . import keys as _keys
from ._pure import links

log: logging.Logger = logging.getLogger("sse_redis.control")

PING_AFTER = 3.0  # seconds of silence on a subscriber link before a PING
PING_TIMEOUT = 2.0  # no answer to it within this: the link is remade
POLL_INTERVAL = 0.1  # seconds between reads of the watched runs' tops when SUBSCRIBE is refused
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 5.0  # of the checks' link


class Watch:
    """One run watched for a cancel.  ``event`` is set (once) when the run's
    cancel terminal is seen; ``reason`` is then the cancel's reason."""

    __slots__ = ("_callbacks", "_listener", "channel", "event", "key", "reason")

    def __init__(self, listener: Listener | None, key: str) -> None:
        self._listener = listener
        self.key = key
        self.channel = _keys.notice_channel(key)
        self.event = threading.Event()
        self.reason: str | None = None
        self._callbacks: list[Callable[[], object]] = []

    @property
    def cancelled(self) -> bool:
        return self.event.is_set()

    def on_cancel(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` (from the listener's thread) when the cancel is
        seen; at once, here, if it already was."""
        with _callbacks_lock:
            if not self.event.is_set():
                self._callbacks.append(callback)
                return
        _call(callback)

    def fire(self, reason: str | None) -> None:
        with _callbacks_lock:
            if self.event.is_set():
                return
            self.reason = reason
            self.event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            _call(callback)

    def close(self) -> None:
        """Stop watching (idempotent)."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.unwatch(self)


_callbacks_lock = threading.Lock()


def _call(callback: Callable[[], object]) -> None:
    try:
        callback()
    except Exception as exc:  # a closed event loop, a failing hook: never the listener's end
        log.debug("cancel callback failed: %s", exc)


def cancel_reason(data: bytes | str | None) -> str | None:
    """The ``reason`` of a cancel terminal's JSON data, if it has one."""
    if data is None:
        return None
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    values = [line[5:].removeprefix(" ") for line in text.replace("\r\n", "\n").split("\n") if line.startswith("data:")]
    try:
        reason = json.loads("\n".join(values)).get("reason")
    except (ValueError, AttributeError):
        return None
    return reason if isinstance(reason, str) else None


class _Link:
    """One subscriber connection (to the server, or to one cluster node) and
    the channels subscribed on it."""

    def __init__(self, client: redis.Redis, sharded: bool) -> None:
        self.client = client
        self.sharded = sharded
        self.connection: Any = None
        self.channels: set[str] = set()  # asked for on this connection
        self.last_heard = time.monotonic()
        self.pinged = False

    def open(self) -> None:
        pool = self.client.connection_pool
        self.connection = pool.get_connection("SUBSCRIBE") if _OLD_POOL else pool.get_connection()
        self.connection.connect()
        self.last_heard = time.monotonic()
        self.pinged = False

    def send(self, *args: object) -> None:
        if self.connection is None:
            self.open()
        self.connection.send_command(*args)

    def socket(self) -> Any:
        return None if self.connection is None else getattr(self.connection, "_sock", None)

    def replies(self) -> list[Any]:
        """Every reply readable now, without waiting."""
        out = []
        while self.connection is not None and self.connection.can_read(timeout=0):
            try:
                out.append(self.connection.read_response(**_PUSH))
            except redis.ResponseError as exc:  # a refused command: the caller decides
                out.append(exc)
            self.last_heard, self.pinged = time.monotonic(), False
        return out

    def close(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.disconnect()
        with contextlib.suppress(Exception):
            self.client.close()


_OLD_POOL = tuple(int(p) for p in redis.__version__.split(".")[:2]) < (5, 3)
# Newer redis-py hands a pubsub message to its push handler unless the read
# asks for it (push_request): ask, where the parameter exists.
_PUSH = (
    {"push_request": True}
    if "push_request" in inspect.signature(redis.connection.Connection.read_response).parameters
    else {}
)


class Listener:
    """The process's subscriber to one Redis target (see the module doc)."""

    def __init__(self, url: str, cluster: bool) -> None:
        self._url = url
        self._cluster = cluster
        self._lock = threading.Lock()
        self._watches: dict[str, list[Watch]] = {}  # channel -> watches
        self._keys: dict[str, str] = {}  # channel -> stream key
        self._dirty = True  # watched channels changed: subscribe/unsubscribe
        self._to_check: set[str] = set()  # channels whose run's top to read now
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._client: links.Client | None = None
        self._links: dict[str | None, _Link] = {}  # node (None on one server) -> link
        self._polling = False
        self._thread: threading.Thread | None = None

    # -- the callers' side ---------------------------------------------------

    def watch(self, key: str) -> Watch:
        watch = Watch(self, key)
        with self._lock:
            self._watches.setdefault(watch.channel, []).append(watch)
            self._keys[watch.channel] = key
            self._dirty = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="sse-redis-cancels", daemon=True)
                self._thread.start()
        self._wake()
        return watch

    def unwatch(self, watch: Watch) -> None:
        with self._lock:
            watches = self._watches.get(watch.channel, [])
            if watch in watches:
                watches.remove(watch)
            if not watches:
                self._watches.pop(watch.channel, None)
                self._keys.pop(watch.channel, None)
                self._dirty = True
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")

    # -- the listener thread ---------------------------------------------------

    def _run(self) -> None:
        delay = 0.05
        while True:
            try:
                self._round()
                delay = 0.05
            except Exception as exc:  # a broken link (or anything else): remake, check, go on
                log.debug("cancel listener: %s; reconnecting", exc)
                self._reset()
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _reset(self) -> None:
        for link in self._links.values():
            link.close()
        self._links = {}
        with self._lock:
            self._dirty = True
            self._to_check |= set(self._watches)  # pushes may have been lost meanwhile

    def _round(self) -> None:
        if self._client is None:
            self._client = links.connect(self._url, CONNECT_TIMEOUT, READ_TIMEOUT, cluster=self._cluster)
        with self._lock:
            dirty, self._dirty = self._dirty, False
            wanted = set(self._watches)
        if dirty and not self._polling:
            self._subscribe(wanted)
        for link in list(self._links.values()):
            self._handle(link, link.replies())
        self._health()
        with self._lock:
            check, self._to_check = self._to_check & set(self._watches), set()
            if self._polling:
                check = set(self._watches)
        if check:
            self._check(check)
        self._wait()

    def _wait(self) -> None:
        sockets = [s for s in (link.socket() for link in self._links.values()) if s is not None]
        timeout = POLL_INTERVAL if self._polling else (PING_AFTER / 2 if self._links else None)
        with self._lock:
            if self._to_check or self._dirty:
                timeout = 0
        readable, _, _ = select.select([self._wake_r, *sockets], [], [], timeout)
        if self._wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)

    def _node_of(self, channel: str) -> str | None:
        if isinstance(self._client, RedisCluster):
            return links.cluster_calls(self._client).get_node_from_key(channel).name
        return None

    def _link(self, node: str | None) -> _Link:
        link = self._links.get(node)
        if link is None:
            client = links.connect_node(self._url, node, CONNECT_TIMEOUT, READ_TIMEOUT)
            link = self._links[node] = _Link(client, sharded=node is not None)
        return link

    def _subscribe(self, wanted: set[str]) -> None:
        by_node: dict[str | None, set[str]] = {}
        for channel in wanted:
            by_node.setdefault(self._node_of(channel), set()).add(channel)
        for node in set(self._links) | set(by_node):
            link = self._link(node)
            want = by_node.get(node, set())
            new, gone = want - link.channels, link.channels - want
            # A sharded (un)subscribe names channels of one slot: one per command.
            for command, channels in (("SUBSCRIBE", new), ("UNSUBSCRIBE", gone)):
                if link.sharded:
                    for channel in sorted(channels):
                        link.send("S" + command, channel)
                elif channels:
                    link.send(command, *sorted(channels))
            link.channels = set(want)
            if not link.channels and not new and not gone and link.connection is not None:
                link.close()
                del self._links[node]

    def _handle(self, link: _Link, replies: list[Any]) -> None:
        for reply in replies:
            if isinstance(reply, redis.ResponseError):
                self._refused(reply)
                return
            if not isinstance(reply, list) or len(reply) < 2:
                continue
            kind = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
            channel = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
            if kind in ("subscribe", "ssubscribe"):
                with self._lock:
                    self._to_check.add(channel)  # a cancel stored before it took
            elif kind in ("message", "smessage") and len(reply) > 2 and reply[2] == b"cancel":
                with self._lock:
                    self._to_check.add(channel)
            elif kind == "sunsubscribe" and channel in link.channels:
                # Not asked for: the slot moved to another node. Subscribe again where it is now.
                link.channels.discard(channel)
                if isinstance(self._client, RedisCluster):
                    with contextlib.suppress(Exception):
                        self._client.nodes_manager.initialize()
                with self._lock:
                    self._dirty = True
                    self._to_check.add(channel)

    def _refused(self, error: BaseException) -> None:
        text = str(error)
        if "NOPERM" in text or "permission" in text.lower() or "unknown command" in text.lower():
            if not self._polling:
                log.warning(
                    "sse-redis: the server refused SUBSCRIBE for run cancels (%s); "
                    "polling the watched runs every %.2fs instead",
                    text,
                    POLL_INTERVAL,
                )
            self._polling = True
            for link in self._links.values():
                link.close()
            self._links = {}
            return
        raise error

    def _health(self) -> None:
        now = time.monotonic()
        for link in self._links.values():
            if link.connection is None or not link.channels:
                continue
            if link.pinged and now - link.last_heard > PING_AFTER + PING_TIMEOUT:
                raise redis.ConnectionError("the cancel subscriber link went silent")
            if not link.pinged and now - link.last_heard > PING_AFTER:
                link.send("PING")
                link.pinged = True

    def _check(self, channels: set[str]) -> None:
        """Read each run's top; fire the watches of the runs a cancel ended."""
        with self._lock:
            keys = {channel: self._keys[channel] for channel in channels if channel in self._keys}
        if not keys or self._client is None:
            return
        calls: list[links.Call] = [(key, ("XREVRANGE", key, "+", "-", "COUNT", 1)) for key in keys.values()]
        replies, _ = links.pipeline(self._client, calls)
        for channel, reply in zip(keys, replies, strict=True):
            if isinstance(reply, BaseException):
                if isinstance(reply, links.LINK_ERRORS):
                    raise reply
                continue  # (no rights, not a stream): nothing to learn here
            entries: list[Any] = reply if isinstance(reply, list) else []
            fields = entries[0][1] if entries else {}
            if fields.get(b"complete") == b"true" and fields.get(b"cancelled") == b"true":
                with self._lock:
                    watches = list(self._watches.get(channel, []))
                for watch in watches:
                    watch.fire(cancel_reason(fields.get(b"data")))


_listeners: dict[tuple[str, bool], Listener] = {}
_listeners_generation = -1
_listeners_lock = threading.Lock()


def watch(url: str, cluster: bool, key: str) -> Watch:
    """Watch the run whose stream key is ``key`` for a cancel (close the
    watch when done with the run)."""
    global _listeners_generation
    with _listeners_lock:
        if _listeners_generation != _fork.generation:
            _fork.forked_away.extend(_listeners.values())  # the parent's: never touched here
            _listeners.clear()
            _listeners_generation = _fork.generation
        listener = _listeners.get((url, cluster))
        if listener is None:
            listener = _listeners[(url, cluster)] = Listener(url, cluster)
    return listener.watch(key)
