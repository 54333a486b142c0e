"""The reader hub, pure-Python twin of ``src/io/hub.rs``.

Many readers, few connections.  Each reader *subscribes* to a stream key
from a cursor and then only consumes its own bounded queue; all I/O is the
hub's, on two threads:

* the **fetcher** (query connection) catches a subscription up with
  ``XRANGE (last +`` (O(log n) for ``0-<seq>`` IDs), only as far as the
  subscription's queue has room, then hands it to the blocker ("live");
* a **blocker** (a dedicated connection) waits on every watched key of its
  group at once with one ``XREAD BLOCK`` and fans entries out to the live
  subscriptions of each key.  One server has one group; a cluster has one per
  slot group (hash tag), because one ``XREAD`` may only name keys of one
  slot, each blocking on the slot's owner and following MOVED there.

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

import os
import threading
import time
from collections import deque
from importlib import resources
from typing import Any

import redis

from ..errors import SSERedisError
from . import links
from .links import LINK_ERRORS

# Subscription states a poll reports.
PENDING, OK, MISSING, DONE, GONE, DOWN = "pending", "ok", "missing", "done", "gone", "down"
MIGRATING = (redis.exceptions.AskError, redis.exceptions.TryAgainError)
XREAD_COUNT = 1000
TOPS_SCRIPT = resources.files("sse_redis").joinpath("tops.lua").read_text()
SHORT_BLOCK_MS = 250  # without CLIENT UNBLOCK a new key waits at most this long
MIGRATING_POLL = 0.02  # while a slot migrates, its keys are read by the fetcher this often
LIVENESS_MARGIN = 5.0  # a blocking read's reply this late (past its block time) means a dead link


def parse_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def drop_connections(client: links.Client) -> None:
    """Close every connection of ``client``; its next command makes a new one."""
    if isinstance(client, redis.Redis):
        client.connection_pool.disconnect()
    else:
        client.disconnect_connection_pools()


def to_entry(entry_id: bytes, fields: dict[bytes, bytes]) -> tuple[str, int, str, bool, bool]:
    """``(id, seq_id, data, complete, broken)`` of a raw stream entry (broken:
    the error terminal of a run its writer broke off, after seqs that may be
    missing because they were never stored)."""
    try:
        seq = int(fields.get(b"seq_id", b"0"))
    except ValueError:
        seq = 0
    data = fields.get(b"data", b"").decode("utf-8", "replace")
    return entry_id.decode(), seq, data, fields.get(b"complete") == b"true", fields.get(b"broken") == b"true"


class _Sub:
    __slots__ = (
        "id", "key", "last", "queue", "live", "fetching", "fetched_once",
        "status", "waker", "notified", "cond", "closed",
    )

    def __init__(self, sid: int, key: str, after_seq: int, waker: int | None, lock: threading.Lock):
        self.id = sid
        self.key = key
        self.last = (0, after_seq)  # the newest entry ID this subscription has
        self.queue: deque[tuple[str, int, str, bool]] = deque()
        self.live = False  # fed by the blocker (else by the fetcher)
        self.fetching = False  # queued for the fetcher
        self.fetched_once = False
        self.status = PENDING  # until the first fetch has reached Redis
        self.waker = waker
        self.notified = False
        self.cond = threading.Condition(lock)
        self.closed = False


class _Group:
    """The keys one blocker waits on, with the newest entry ID it has of each."""

    __slots__ = ("keys", "version", "blocking_version", "client_id", "node")

    def __init__(self) -> None:
        self.keys: dict[str, tuple[int, int]] = {}
        self.version = 0  # bumped when a key joins
        self.blocking_version = 0  # the key set the blocker's XREAD covers
        self.client_id: int | None = None
        self.node: str | None = None  # the cluster node it blocks on, or should reach


class _Waker:
    """An event loop's wake-up: a socket the hub writes one byte to, and the
    subscriptions that became ready since the loop last looked."""

    __slots__ = ("fd", "ready")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.ready: list[int] = []


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
    ) -> None:
        if queue_size < 1 or batch_size < 1:
            raise ValueError("queue_size and batch_size must be positive")
        self._url = url
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._block_ms = block_ms
        self._check_interval = check_interval
        self._retry_timeout = retry_timeout
        self._down_since: float | None = None  # when Redis stopped answering
        self._tops: Any = None  # tops.lua, registered on first use
        self._connect_timeout = connect_timeout
        self._cluster = cluster
        self._query = links.connect(url, connect_timeout, socket_timeout, cluster=cluster)

        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # wakes the two hub threads
        self._subs: dict[int, _Sub] = {}
        self._by_key: dict[str, list[_Sub]] = {}
        self._groups: dict[str, _Group] = {}
        self._fetch_queue: deque[_Sub] = deque()
        self._wakers: dict[int, _Waker] = {}
        self._next_id = 1
        self._unblock_wanted = False
        # A blocker found its link silent: the fetcher's link, on the same
        # route, is remade before its next command rather than waited out.
        self._relink_query = False
        self._can_unblock: bool | None = None  # learned by probing
        self._closed = False
        self._stats = {"xreads": 0, "fetches": 0, "unblocks": 0, "checks": 0, "reconnects": 0}
        threading.Thread(target=self._fetcher, name="sse-redis-fetch", daemon=True).start()

    def _group_of(self, key: str) -> str:
        """The blocker group of ``key``: all keys on one server, its slot on a cluster."""
        return links.slot_group(key) if self._cluster else ""

    def _watched(self, key: str) -> tuple[int, int] | None:
        group = self._groups.get(self._group_of(key))
        return None if group is None else group.keys.get(key)

    # -- readers' side ---------------------------------------------------------

    def subscribe(self, key: str, after_seq: int, waker: int | None = None) -> int:
        """Follow ``key`` from just after seq ``after_seq``; never does I/O."""
        with self._lock:
            self._check_open()
            sid = self._next_id
            self._next_id += 1
            sub = _Sub(sid, key, after_seq, waker, self._lock)
            self._subs[sid] = sub
            self._by_key.setdefault(key, []).append(sub)
            self._queue_fetch(sub)
            return sid

    def unsubscribe(self, sid: int) -> None:
        with self._lock:
            sub = self._subs.pop(sid, None)
            if sub is None:
                return
            sub.closed = True
            subs = self._by_key.get(sub.key, [])
            if sub in subs:
                subs.remove(sub)
            if not subs:
                self._by_key.pop(sub.key, None)
                group = self._groups.get(self._group_of(sub.key))
                if group is not None:
                    group.keys.pop(sub.key, None)
            waker = self._wakers.get(sub.waker) if sub.waker is not None else None
            if waker is not None and sid in waker.ready:
                waker.ready.remove(sid)

    def poll(self, sid: int) -> tuple[list[tuple[str, int, str, bool]], str]:
        """Entries queued for the subscription (drained) and its state; never waits."""
        with self._lock:
            return self._drain(self._sub(sid))

    def wait(self, sid: int, timeout: float | None) -> tuple[list[tuple[str, int, str, bool]], str]:
        """``poll`` that waits up to ``timeout`` for an entry or a state change."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            sub = self._sub(sid)
            while not sub.queue and not sub.notified and not sub.closed:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                sub.cond.wait(left)
            return self._drain(sub)

    def _sub(self, sid: int) -> _Sub:
        self._check_open()
        sub = self._subs.get(sid)
        if sub is None:
            raise SSERedisError(f"no subscription {sid} (unsubscribed?)")
        return sub

    def _drain(self, sub: _Sub) -> tuple[list[tuple[str, int, str, bool]], str]:
        entries = list(sub.queue)
        sub.queue.clear()
        sub.notified = False
        if not sub.live:
            self._queue_fetch(sub)  # room again: the fetcher feeds it
        return entries, sub.status

    def add_waker(self, fd: int) -> int:
        """Register the write end of an event loop's socket pair."""
        with self._lock:
            wid = self._next_id
            self._next_id += 1
            self._wakers[wid] = _Waker(fd)
            return wid

    def remove_waker(self, wid: int) -> None:
        with self._lock:
            self._wakers.pop(wid, None)

    def take_ready(self, wid: int) -> list[int]:
        """Subscriptions of this waker that have something to poll."""
        with self._lock:
            waker = self._wakers.get(wid)
            if waker is None:
                return []
            ready, waker.ready = waker.ready, []
            return ready

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(
                self._stats,
                subscriptions=len(self._subs),
                watched=sum(len(g.keys) for g in self._groups.values()),
                blockers=len(self._groups),
                connections=1 + len(self._groups),
            )

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for sub in self._subs.values():
                sub.closed = True
                self._signal(sub)  # wakes sync waiters and event loops alike
            self._changed.notify_all()  # the fetcher lets the blocker go, then leaves

    def _check_open(self) -> None:
        if self._closed:
            raise SSERedisError("the reader hub is closed")

    # -- shared by the two threads (caller holds the lock) ------------------------

    def _queue_fetch(self, sub: _Sub) -> None:
        if not sub.fetching and not sub.closed and len(sub.queue) < self._queue_size:
            sub.fetching = True
            self._fetch_queue.append(sub)
            self._changed.notify_all()

    def _set_status(self, sub: _Sub, status: str) -> None:
        """Change the subscription's state and tell its reader: a reader's wait
        is timed for the state it last saw (``retry_timeout`` while pending,
        its idle clock once Redis answered), so every change must wake it."""
        if sub.status != status:
            sub.status = status
            self._signal(sub)

    def _signal(self, sub: _Sub) -> None:
        """Tell the subscription's reader there is something to poll."""
        sub.cond.notify_all()
        if sub.notified:
            return
        sub.notified = True
        waker = self._wakers.get(sub.waker) if sub.waker is not None else None
        if waker is not None:
            waker.ready.append(sub.id)
            if len(waker.ready) == 1:
                try:
                    os.write(waker.fd, b"\0")
                except (BlockingIOError, OSError):
                    pass  # the socket is full or gone: the loop is awake already

    def _push(self, sub: _Sub, entries: list[tuple[str, int, str, bool]]) -> bool:
        """Queue what is newer than the subscription has; ``False`` when it does not fit."""
        fresh = [e for e in entries if parse_id(e[0]) > sub.last]
        if not fresh:
            return True
        if len(sub.queue) + len(fresh) > self._queue_size:
            return False
        sub.queue.extend(fresh)
        sub.last = parse_id(fresh[-1][0])
        if sub.status in (MISSING, PENDING):
            sub.status = OK
        self._signal(sub)  # the entries, and the state change if any
        return True

    # -- the fetcher thread ------------------------------------------------------

    def _fetcher(self) -> None:
        while True:
            with self._lock:
                while not self._fetch_queue and not self._unblock_wanted and not self._closed:
                    self._changed.wait()
                if self._closed:
                    break
                relink, self._relink_query = self._relink_query, False
                sub = self._fetch_queue.popleft() if self._fetch_queue else None
            if relink:
                self._count("reconnects")
                drop_connections(self._query)
            try:
                if sub is not None:
                    self._catch_up(sub)
                # Catch-ups first, then one unblock for all the keys they added
                # (an unblock per key would re-send a growing XREAD each time).
                with self._lock:
                    unblock = self._unblock_wanted and not self._fetch_queue
                if unblock:
                    self._unblock()
                self._link_ok()
            except LINK_ERRORS:
                # redis-py has dropped the connection (a timeout may leave a
                # reply half read): the next command makes a new one.
                self._count("reconnects")
                self._link_failed()
                if sub is not None:
                    with self._lock:
                        sub.fetching = False
                        self._queue_fetch(sub)
                time.sleep(0.05)
            except redis.ResponseError:
                if sub is not None:
                    with self._lock:
                        sub.fetching = False
                        self._set_status(sub, GONE)  # not a stream any more (WRONGTYPE): nothing to follow

        # Let blocked XREADs go now rather than at their timeout.
        with self._lock:
            blocked = [(g.client_id, g.node) for g in self._groups.values() if g.client_id is not None]
            can = self._can_unblock
        for client_id, node in blocked if can else ():
            try:
                links.on_node(self._query, node, "CLIENT UNBLOCK", client_id)
            except (redis.RedisError, *LINK_ERRORS):
                pass  # best effort: a blocker also leaves at its block's end
        self._query.close()

    def _catch_up(self, sub: _Sub) -> None:
        with self._lock:
            room = self._queue_size - len(sub.queue)
            start = "({}-{}".format(*sub.last)
            first = not sub.fetched_once
        count = min(self._batch_size, room)
        raw = self._query.xrange(sub.key, min=start, count=count) if count > 0 else []
        self._count("fetches")
        top = None
        if first and not raw:
            newest = self._query.xrevrange(sub.key, "+", "-", count=1)
            top = to_entry(*newest[0]) if newest else None
        with self._lock:
            sub.fetching = False
            if sub.closed:
                return
            sub.fetched_once = True
            if sub.status == PENDING:
                # Redis answered: the reader's wait, timed for the pending
                # state (retry_timeout), goes back to its idle clock.
                self._set_status(sub, OK)
            if first and not raw:
                if top is None:
                    self._set_status(sub, MISSING)
                elif parse_id(top[0]) < sub.last:
                    # The cursor is past everything the stream holds: not the
                    # stream the reader read (it was lost, then written again).
                    self._set_status(sub, GONE)
                    return
                elif top[3] and parse_id(top[0]) == sub.last:
                    # Only at the cursor: a top past it arrived after the range
                    # read (the blocker gets it), and is no reason to end the read.
                    self._set_status(sub, DONE)  # complete, and the cursor is at its end
                    return
            entries = [to_entry(i, f) for i, f in raw]
            if not self._push(sub, entries):
                return  # cannot happen (fetched no more than the room), but never overfill
            if any(entry[3] for entry in entries):
                return  # the terminal entry is queued: the read ends, nothing to watch
            if len(raw) == count:
                self._queue_fetch(sub)  # more to read, when there is room
                return
            watched = self._watched(sub.key)
            if watched is not None and watched > sub.last:
                self._queue_fetch(sub)  # the blocker saw newer entries meanwhile
                return
            sub.live = True
            if watched is None:
                name = self._group_of(sub.key)
                group = self._groups.get(name)
                if group is None:
                    group = self._groups[name] = _Group()
                    threading.Thread(
                        target=self._blocker, args=(name,), name="sse-redis-hub", daemon=True
                    ).start()
                group.keys[sub.key] = sub.last
                group.version += 1
                self._unblock_wanted = True
                self._changed.notify_all()

    def _unblock(self) -> None:
        """Restart the XREAD of each blocker whose group has new keys, so that it covers them."""
        deadline = time.monotonic() + 0.05
        while True:
            with self._lock:
                if self._closed or not self._can_unblock:
                    self._unblock_wanted = False
                    return  # the blockers' short blocks pick the keys up
                # A blocker not yet connected (no id) reads its keys when it starts.
                behind = [
                    (g.client_id, g.node)
                    for g in self._groups.values()
                    if g.blocking_version < g.version and g.keys and g.client_id is not None
                ]
                if not behind:
                    self._unblock_wanted = False
                    return
            all_woke = True
            for client_id, node in behind:
                woke = links.on_node(self._query, node, "CLIENT UNBLOCK", client_id)
                self._count("unblocks")
                all_woke = all_woke and bool(woke)
            if all_woke or time.monotonic() > deadline:
                with self._lock:
                    self._unblock_wanted = False
                return
            time.sleep(0.0005)  # a blocker is between reads; it will see the keys

    # -- the blocker threads -----------------------------------------------------

    def _blocker(self, name: str) -> None:
        client: redis.Redis | None = None
        next_check = time.monotonic() + self._check_interval
        delay = 0.01
        attempt = 0  # which known cluster node to try when the owner is unknown
        while True:
            with self._lock:
                while True:
                    group = self._groups.get(name)
                    if self._closed:
                        break
                    if group is not None and group.keys:
                        break
                    if self._cluster:
                        # A cluster may have a group per run: an idle one leaves no thread.
                        self._groups.pop(name, None)
                        break
                    self._changed.wait()
                if self._closed or group is None or not group.keys:
                    break
            try:
                if client is None:
                    node = group.node
                    if node is None and self._cluster:
                        nodes = links.known_nodes(self._query)
                        node = nodes[attempt % len(nodes)] if nodes else None
                    timeout = self._blocker_read_timeout()
                    client = links.connect_node(self._url, node, self._connect_timeout, timeout)
                    client_id = self._learn_unblock(client)
                    with self._lock:
                        group.client_id, group.node = client_id, node
                # The key set is read only now, after connecting: a key added
                # while the blocker's id was still unknown (so that no one could
                # unblock it) is in this XREAD.
                with self._lock:
                    streams = {key: "{}-{}".format(*last) for key, last in group.keys.items()}
                    group.blocking_version = group.version
                if not streams:
                    continue
                reply = client.xread(streams, count=XREAD_COUNT, block=self._block_time())
                self._count("xreads")
                if reply:
                    self._deliver(group, reply)
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + self._check_interval
                    self._check_streams(group, client)
                delay = 0.01
                self._link_ok()
            except redis.exceptions.MovedError as exc:
                client = self._drop(client)  # the slot has a new owner: block there
                with self._lock:
                    group.client_id, group.node = None, links.redirect(exc)[1]  # type: ignore[index]
            except MIGRATING:
                self._migrating(group)
            except LINK_ERRORS as exc:
                # Never reused after a timeout: a late reply would pass for the next one.
                client = self._drop(client)
                with self._lock:
                    group.client_id, group.node = None, None  # any live node redirects to the owner
                    if isinstance(exc, redis.TimeoutError):
                        self._relink_query = True  # silent, not closed: the fetcher's link likely is too
                attempt += 1
                self._count("reconnects")
                self._link_failed()
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
            except redis.ResponseError:
                time.sleep(0.1)  # e.g. a watched key is not a stream; the fetcher reports it
        self._drop(client)

    @staticmethod
    def _drop(client: redis.Redis | None) -> None:
        if client is not None:
            client.close()

    def _migrating(self, group: _Group) -> None:
        """The group's slot is being migrated, so one XREAD cannot see all its
        keys: its live readers go back to the fetcher, whose cluster client
        follows each key (ASK), until the blocker's next try."""
        with self._lock:
            for key in group.keys:
                for sub in self._by_key.get(key, ()):
                    if sub.live:
                        sub.live = False
                        self._queue_fetch(sub)
        time.sleep(MIGRATING_POLL)

    def _blocker_read_timeout(self) -> float:
        """The blocker link's read timeout: the longest block it may ask for,
        plus ``LIVENESS_MARGIN`` (15 s with the defaults: ``check_interval``
        10 s).  Fixed per link, so that the commands before its first block
        are bounded too."""
        longest = self._block_ms if self._block_ms is not None else max(self._check_interval * 1000, SHORT_BLOCK_MS)
        return longest / 1000 + LIVENESS_MARGIN

    def _block_time(self) -> int:
        if self._block_ms is not None:
            return self._block_ms
        if self._can_unblock:
            return max(1, int(self._check_interval * 1000))
        return SHORT_BLOCK_MS

    def _learn_unblock(self, client: redis.Redis) -> int:
        """The connection's client id; learns whether this user may CLIENT UNBLOCK."""
        client_id = client.client_id()
        try:
            client.client_unblock(0)  # no such client: a no-op when permitted
            can = True
        except redis.ResponseError:
            can = False  # NOPERM: a least-privilege user; fall back to short blocks
        with self._lock:
            self._can_unblock = can
        return client_id

    def _deliver(self, group: _Group, reply: list) -> None:
        with self._lock:
            for raw_key, raw_entries in reply:
                key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
                if key not in group.keys or not raw_entries:
                    continue
                entries = [to_entry(i, f) for i, f in raw_entries]
                group.keys[key] = parse_id(entries[-1][0])
                for sub in self._by_key.get(key, ()):
                    if sub.live and not self._push(sub, entries):
                        sub.live = False  # a slow reader: the fetcher feeds it as it drains
                        self._queue_fetch(sub)

    def _check_streams(self, group: _Group, client: redis.Redis) -> None:
        """Notice followed streams that expired (expiry does not wake XREAD) or
        were lost and written again below a reader's cursor (new entries there
        do not wake it either): one read-only script call per check (tops.lua)."""
        with self._lock:
            keys = [k for k in group.keys if any(s.status == OK for s in self._by_key.get(k, ()))]
        if not keys:
            return
        self._count("checks")
        if self._tops is None:
            self._tops = client.register_script(TOPS_SCRIPT)  # EVALSHA, loaded again on NOSCRIPT
        tops = self._tops(keys=keys, client=client)
        with self._lock:
            for key, top in zip(keys, tops):
                newest = parse_id(top.decode()) if top else None
                for sub in self._by_key.get(key, ()):
                    if sub.status == OK and (newest is None or newest < sub.last):
                        self._set_status(sub, GONE)

    def _link_ok(self) -> None:
        self._down_since = None

    def _link_failed(self) -> None:
        """After ``retry_timeout`` without Redis, every reader is told (state ``down``)."""
        with self._lock:
            now = time.monotonic()
            if self._down_since is None:
                self._down_since = now
            elif now - self._down_since > self._retry_timeout:
                for sub in self._subs.values():
                    self._set_status(sub, DOWN)

    def _count(self, name: str) -> None:
        with self._lock:
            self._stats[name] += 1
