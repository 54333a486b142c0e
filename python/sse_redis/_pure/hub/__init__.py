"""The reader hub, pure-Python twin of ``src/io/hub/`` (module for module:
``subscription``, ``fetcher``, ``listener``, ``blocker``, ``waker``; the
words are in ``docs/glossary.md``).

Many readers, few connections.  Each reader *subscribes* to a stream key
from a cursor and then only consumes its own bounded queue; all I/O is the
hub's, on its threads:

* the **fetcher** (query connection) catches subscriptions up with
  ``XRANGE (last +`` (O(log n) for ``0-<seq>`` IDs), many per pipeline, only
  as far as each queue has room, then hands them on ("live"); it also runs
  the safety check of the keys followed by notice;
* a **listener** (a subscriber connection) follows the keys this library's
  writers write: they publish a notice per stored batch, and a notice has the
  fetcher range-read the notified subscriptions (``delivery="notify"``);
* a **blocker** (a dedicated connection) waits on every other watched key of
  its group (streams written by anything else, or not written yet; every
  key with ``delivery="xread"``) with one ``XREAD BLOCK`` and fans entries out
  to the live subscriptions of each key.  One server has one listener and
  one blocker; a cluster has a listener per node owning followed slots, and
  a blocker per slot group (hash tag) on the slot's owner, following MOVED.

A slow reader whose queue is full stops being live: it is fed by the fetcher
again as it drains (notify-then-fetch), so it never makes the hub buffer
without bound nor delays anyone else.  A new key restarts the blocking read at
once with ``CLIENT UNBLOCK`` where the ACL allows it, and within ``block_ms``
(short) where it does not.

Liveness: a link can go silent (no FIN, no RST: a NAT entry dropped, a VIP
moved) behind a middlebox that keeps ACKing, so TCP cannot tell.  The
blocker's reads time out at its longest block plus ``LIVENESS_MARGIN``: a
reply that late means the link is dead, and it reconnects and reads on from
the positions it keeps.  The fetcher's reads time out at ``socket_timeout``,
and it drops its link too when the blocker found its own silent (same route,
likely the same fate).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from ..._options import DELIVERIES
from ..._states import SubState
from ...errors import SSERedisError
from ...keys import notice_channel
from .. import links
from . import fetcher
from .subscription import Entry, Group, Listen, Sub, parse_id
from .waker import Waker


class Shared:
    """What the readers' side and the hub's threads share (twin of the Rust
    hub's ``Shared`` and its ``Table``); every field is guarded by ``lock``."""

    def __init__(
        self,
        url: str,
        queue_size: int,
        batch_size: int,
        block_ms: int | None,
        check_interval: float,
        retry_timeout: float,
        connect_timeout: float,
        socket_timeout: float,
        cluster: bool,
        delivery: str,
    ) -> None:
        self.url = url
        self.delivery = delivery
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.check_interval = check_interval
        self.retry_timeout = retry_timeout
        self.connect_timeout = connect_timeout
        self.socket_timeout = socket_timeout
        self.cluster = cluster
        self.query = links.connect(url, connect_timeout, socket_timeout, cluster=cluster)
        self.tops: Any = None  # tops.lua, registered on first use

        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)  # wakes the hub's threads
        self.subs: dict[int, Sub] = {}
        self.by_key: dict[str, list[Sub]] = {}
        self.groups: dict[str, Group] = {}
        self.listeners: dict[str, Listen] = {}  # by node ('' on one server)
        self.listening_on: dict[str, str] = {}  # key -> the listen set following it
        # Whether each followed key's stream was written by this library (its
        # newest entry seen has a ``writer`` field): only those get notices.
        self.ours: dict[str, bool] = {}
        self.notices_refused = False  # this user may not subscribe: XREAD for every key
        self.missed_checks = 0  # safety checks in a row that found a stream grown without a notice
        self.fetch_queue: deque[Sub] = deque()
        self.wakers: dict[int, Waker] = {}
        self.next_id = 0
        self.unblock_wanted = False
        # A blocker found its link silent: the fetcher's link, on the same
        # route, is remade before its next command rather than waited out.
        self.relink_query = False
        # Bumped when a link timed out or a notice was missed: each listener
        # then proves its own link at once (a probe) rather than at its next.
        self.probe_asked = 0
        self.can_unblock: bool | None = None  # learned by probing
        self.down_since: float | None = None  # when Redis stopped answering
        self.closed = False
        self.stats = dict.fromkeys(
            ("xreads", "fetches", "unblocks", "checks", "reconnects", "notices", "probes", "missed"), 0
        )
        self.events = links.Events()  # reconnects with their cause, until the face logs them

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def group_of(self, key: str) -> str:
        """The blocker group of ``key``: all keys on one server, its slot on a cluster."""
        return links.slot_group(key) if self.cluster else ""

    def owner_of(self, key: str) -> str | None:
        """The listen set of ``key``: '' on one server, the node owning its
        slot on a cluster (a listener per node: sharded channels live on
        their slot's node); ``None`` when no node owns it in the slot map
        (mid-failover)."""
        try:
            return links.owner(self.query, key) if self.cluster else ""
        except links.LINK_ERRORS:
            return None

    def listen_set(self, key: str) -> Listen | None:
        name = self.listening_on.get(key)
        return None if name is None else self.listeners.get(name)

    def stop_listening(self, key: str) -> None:
        """``key`` leaves its listen set (if in one). Caller holds the lock."""
        name = self.listening_on.pop(key, None)
        listen = None if name is None else self.listeners.get(name)
        if listen is not None and listen.keys.pop(key, None) is not None:
            listen.channels.pop(notice_channel(key), None)
            listen.version += 1

    def watched(self, key: str) -> tuple[int, int] | None:
        group = self.groups.get(self.group_of(key))
        return None if group is None else group.keys.get(key)

    # -- caller holds the lock -------------------------------------------------

    def queue_fetch(self, sub: Sub) -> None:
        if not sub.fetching and not sub.closed and len(sub.queue) < self.queue_size:
            sub.fetching = True
            self.fetch_queue.append(sub)
            self.changed.notify_all()

    def followed(self, key: str) -> bool:
        """Whether a read follows ``key`` with Redis answering (state ``ok``):
        the keys a check of tops is about."""
        return any(sub.state == SubState.OK for sub in self.by_key.get(key, ()))

    def refeed(self, key: str) -> None:
        """``key``'s live subscriptions go back to the fetcher, which catches
        them up and hands them on (a slot moving, notices refused, a key
        changing hands)."""
        for sub in self.by_key.get(key, ()):
            if sub.live:
                sub.live = False
                self.queue_fetch(sub)

    def refetch_key(self, key: str) -> None:
        """``refetch`` every subscription of ``key``."""
        for sub in self.by_key.get(key, ()):
            self.refetch(sub)

    def refetch(self, sub: Sub) -> None:
        """Have a live subscription fetched (a notice, a subscribe, a safety
        check); one being fetched is fetched once more after."""
        if sub.fetching:
            sub.again = True
        elif sub.live:
            if len(sub.queue) < self.queue_size:
                self.queue_fetch(sub)
            else:
                sub.live = False  # a slow reader: fed again as it drains

    def set_state(self, sub: Sub, state: SubState) -> None:
        """Change the subscription's state and tell its reader: a reader's wait
        is timed for the state it last saw (``retry_timeout`` while pending,
        its idle clock once Redis answered), so every change must wake it."""
        if sub.state != state:
            sub.state = state
            self.signal(sub)

    def signal(self, sub: Sub) -> None:
        """Tell the subscription's reader there is something to poll."""
        sub.cond.notify_all()
        if sub.notified:
            return
        sub.notified = True
        waker = self.wakers.get(sub.waker) if sub.waker is not None else None
        if waker is not None:
            waker.mark_ready(sub.id)

    def push(self, sub: Sub, entries: list[Entry]) -> bool:
        """Queue what is newer than the subscription has; ``False`` when it does not fit."""
        fresh = [e for e in entries if parse_id(e[0]) > sub.last]
        if not fresh:
            return True
        if len(sub.queue) + len(fresh) > self.queue_size:
            return False
        sub.queue.extend(fresh)
        sub.last = parse_id(fresh[-1][0])
        if sub.state in (SubState.MISSING, SubState.PENDING):
            sub.state = SubState.OK
        self.signal(sub)  # the entries, and the state change if any
        return True

    # -- takes the lock ------------------------------------------------------------

    def link_ok(self) -> None:
        self.down_since = None

    def link_failed(self) -> None:
        """After ``retry_timeout`` without Redis, every reader is told (state ``down``)."""
        with self.lock:
            now = time.monotonic()
            if self.down_since is None:
                self.down_since = now
            elif now - self.down_since > self.retry_timeout:
                for sub in self.subs.values():
                    self.set_state(sub, SubState.DOWN)

    def count(self, name: str) -> None:
        with self.lock:
            self.stats[name] += 1


class ReaderHub:
    def __init__(
        self,
        url: str,
        *,
        queue_size: int = 256,
        batch_size: int = 100,
        block_ms: int | None = None,
        check_interval: float = 10.0,
        retry_timeout: float = 30.0,
        connect_timeout: float = 5.0,
        socket_timeout: float = 10.0,
        cluster: bool = False,
        delivery: str = "notify",
    ) -> None:
        # The twin of the binding's checks (``src/py/hub.rs``).
        if queue_size < 1 or batch_size < 1:
            raise ValueError("queue_size and batch_size must be positive")
        if delivery not in DELIVERIES:
            raise ValueError(f"delivery must be one of {', '.join(DELIVERIES)}, not {delivery!r}")
        self._shared = Shared(
            url,
            queue_size,
            batch_size,
            block_ms,
            check_interval,
            retry_timeout,
            connect_timeout,
            socket_timeout,
            cluster,
            delivery,
        )
        threading.Thread(target=fetcher.run, args=(self._shared,), name="sse-redis-fetch", daemon=True).start()

    def subscribe(self, key: str, after_seq: int, waker: int | None = None) -> int:
        """Follow ``key`` from just after seq ``after_seq``; never does I/O."""
        shared = self._shared
        with shared.lock:
            self._check_open()
            sid = shared.new_id()
            sub = Sub(sid, key, after_seq, waker, shared.lock)
            shared.subs[sid] = sub
            shared.by_key.setdefault(key, []).append(sub)
            shared.queue_fetch(sub)
            return sid

    def unsubscribe(self, sid: int) -> None:
        shared = self._shared
        with shared.lock:
            sub = shared.subs.pop(sid, None)
            if sub is None:
                return
            sub.closed = True
            subs = shared.by_key.get(sub.key, [])
            if sub in subs:
                subs.remove(sub)
            if not subs:
                shared.by_key.pop(sub.key, None)
                shared.ours.pop(sub.key, None)
                group = shared.groups.get(shared.group_of(sub.key))
                if group is not None:
                    group.keys.pop(sub.key, None)
                shared.stop_listening(sub.key)
            waker = shared.wakers.get(sub.waker) if sub.waker is not None else None
            if waker is not None:
                waker.forget(sid)

    def poll(self, sid: int) -> tuple[list[Entry], SubState]:
        """Entries queued for the subscription (drained) and its state; never waits."""
        with self._shared.lock:
            return self._drain(self._sub(sid))

    def wait(self, sid: int, timeout: float | None) -> tuple[list[Entry], SubState]:
        """``poll`` that waits up to ``timeout`` for an entry or a state change."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._shared.lock:
            sub = self._sub(sid)
            while not sub.queue and not sub.notified and not sub.closed:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                sub.cond.wait(left)
            return self._drain(sub)

    def _sub(self, sid: int) -> Sub:
        self._check_open()
        sub = self._shared.subs.get(sid)
        if sub is None:
            raise SSERedisError(f"no subscription {sid} (unsubscribed?)")
        return sub

    def _drain(self, sub: Sub) -> tuple[list[Entry], SubState]:
        entries = list(sub.queue)
        sub.queue.clear()
        sub.notified = False
        if not sub.live:
            self._shared.queue_fetch(sub)  # room again: the fetcher feeds it
        return entries, sub.state

    def add_waker(self, fd: int) -> int:
        """Register the write end of an event loop's socket pair."""
        shared = self._shared
        with shared.lock:
            wid = shared.new_id()
            shared.wakers[wid] = Waker(fd)
            return wid

    def remove_waker(self, wid: int) -> None:
        with self._shared.lock:
            self._shared.wakers.pop(wid, None)

    def take_ready(self, wid: int) -> list[int]:
        """Subscriptions of this waker that have something to poll."""
        with self._shared.lock:
            waker = self._shared.wakers.get(wid)
            return [] if waker is None else waker.take()

    def stats(self) -> dict[str, int]:
        shared = self._shared
        with shared.lock:
            listened = sum(len(listen.keys) for listen in shared.listeners.values())
            return dict(
                shared.stats,
                subscriptions=len(shared.subs),
                # keys followed live, by XREAD or by notice; and by notice alone
                watched=sum(len(g.keys) for g in shared.groups.values()) + listened,
                listened=listened,
                blockers=len(shared.groups),
                listeners=len(shared.listeners),
                connections=1 + len(shared.groups) + len(shared.listeners),
            )

    def take_events(self) -> list[tuple[str, str]]:
        """The hub's events since the last call, oldest first, as ``(kind,
        cause)``: ``reconnect``, ``notices_refused``, ``notices_missed``,
        ``dropped`` (events not kept)."""
        with self._shared.lock:
            return self._shared.events.take()

    def close(self) -> None:
        shared = self._shared
        with shared.lock:
            if shared.closed:
                return
            shared.closed = True
            for sub in shared.subs.values():
                sub.closed = True
                shared.signal(sub)  # wakes sync waiters and event loops alike
            shared.changed.notify_all()  # the fetcher lets the blockers go, then leaves

    def _check_open(self) -> None:
        if self._shared.closed:
            raise SSERedisError("the reader hub is closed")


__all__ = ["ReaderHub"]
